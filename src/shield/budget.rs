//! The retry budget, as Linkerd and Envoy keep one: over a sliding window
//! (`shield.budget_window_ms`), retries may add at most
//! `shield.budget_percent` % to the requests that arrived, plus a small
//! floor of `shield.budget_min_retries_per_second` x the window's seconds so
//! that a quiet replica can still retry. Past it a 429 is passed through:
//! when Twilio refuses most of what it gets (an outage, a limit far below
//! the load), the shield must not multiply the load it sends.
//!
//! One budget per replica, shared by every account: it bounds what this
//! replica adds to Twilio's load as a whole, not what each account gets
//! (one account's 429 storm can spend it, and another account's 429 is
//! then passed through, as without the shield; README, "Rate limits").
//! The window is kept in
//! [`BUCKETS`] time slices (counts of the slice that fell out of the window
//! are forgotten at once), on tokio's clock so paused-time tests drive it.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Time slices of one window.
pub const BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Slice {
    /// Which slice of time (since `start`) this holds.
    epoch: u64,
    requests: u64,
    retries: u64,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    slices: [Slice; BUCKETS],
}

/// See the module doc.
#[derive(Debug)]
pub struct RetryBudget {
    percent: u64,
    window: Duration,
    slice: Duration,
    min_retries: u64,
    state: Mutex<Window>,
}

impl RetryBudget {
    pub fn new(percent: u32, window: Duration, min_retries_per_second: u32) -> RetryBudget {
        let window = window.max(Duration::from_millis(BUCKETS as u64));
        let min_retries = (u128::from(min_retries_per_second) * window.as_millis() / 1000) as u64;
        RetryBudget {
            percent: u64::from(percent),
            window,
            slice: window / BUCKETS as u32,
            min_retries,
            state: Mutex::new(Window {
                start: Instant::now(),
                slices: [Slice::default(); BUCKETS],
            }),
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// Count a request's first attempt.
    pub fn record_request(&self) {
        self.with_current(|s| s.requests += 1);
    }

    /// Take one retry from the budget; `false` when it is spent.
    pub fn try_retry(&self) -> bool {
        let Ok(mut w) = self.state.lock() else {
            return false;
        };
        let epoch = self.epoch(&w);
        let (mut requests, mut retries) = (0u64, 0u64);
        for s in &w.slices {
            if s.epoch + (BUCKETS as u64) > epoch {
                requests += s.requests;
                retries += s.retries;
            }
        }
        let allowed = requests.saturating_mul(self.percent) / 100 + self.min_retries;
        if retries >= allowed {
            return false;
        }
        current(&mut w, epoch).retries += 1;
        true
    }

    fn epoch(&self, w: &Window) -> u64 {
        let since = Instant::now().saturating_duration_since(w.start);
        (since.as_nanos() / self.slice.as_nanos().max(1)) as u64
    }

    fn with_current(&self, f: impl FnOnce(&mut Slice)) {
        if let Ok(mut w) = self.state.lock() {
            let epoch = self.epoch(&w);
            f(current(&mut w, epoch));
        }
    }
}

/// The slice for `epoch`, emptied if it held an older one.
fn current(w: &mut Window, epoch: u64) -> &mut Slice {
    let s = &mut w.slices[(epoch % BUCKETS as u64) as usize];
    if s.epoch != epoch {
        *s = Slice {
            epoch,
            ..Slice::default()
        };
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retries_allowed(b: &RetryBudget) -> u32 {
        let mut n = 0;
        while b.try_retry() {
            n += 1;
            assert!(n < 1_000_000, "unbounded");
        }
        n
    }

    #[tokio::test(start_paused = true)]
    async fn retries_add_at_most_the_percentage_of_requests() {
        let b = RetryBudget::new(20, Duration::from_secs(10), 0);
        assert_eq!(retries_allowed(&b), 0, "no requests, no floor: no retry");
        for _ in 0..50 {
            b.record_request();
        }
        assert_eq!(retries_allowed(&b), 10);
        for _ in 0..5 {
            b.record_request();
        }
        // 55 requests allow 11 retries, 10 of which are taken.
        assert_eq!(retries_allowed(&b), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_allows_retries_on_a_quiet_replica() {
        let b = RetryBudget::new(20, Duration::from_secs(10), 1);
        assert_eq!(retries_allowed(&b), 10, "1/s over a 10 s window");
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_slides() {
        let b = RetryBudget::new(100, Duration::from_secs(10), 0);
        for _ in 0..10 {
            b.record_request();
        }
        assert_eq!(retries_allowed(&b), 10);
        // Half a window later the same requests and retries still count.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(retries_allowed(&b), 0);
        for _ in 0..4 {
            b.record_request();
        }
        assert_eq!(retries_allowed(&b), 4);
        // A whole window after the first slice, only the later ones count.
        tokio::time::advance(Duration::from_millis(5_500)).await;
        assert_eq!(
            retries_allowed(&b),
            0,
            "4 requests, 4 retries still in the window"
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        for _ in 0..3 {
            b.record_request();
        }
        assert_eq!(retries_allowed(&b), 3, "everything older fell out");
    }
}
