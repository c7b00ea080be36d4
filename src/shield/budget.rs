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
//!
//! The budget is tower's [`TpsBudget`] (Finagle's, in ten time slices on
//! tokio's clock, so paused-time tests drive it); this file only maps the
//! settings onto it. Its window is 1 to 60 s: a longer
//! `budget_window_ms` counts as 60 s, and the floor counts the window's
//! whole seconds. A percentage is kept as "one retry per k requests"
//! (k = 100 / percent, rounded down below 100 %).

use std::time::Duration;

use tower::retry::budget::{Budget, TpsBudget};

/// The longest window [`TpsBudget`] keeps.
pub const MAX_WINDOW: Duration = Duration::from_secs(60);
/// The shortest window [`TpsBudget`] keeps.
pub const MIN_WINDOW: Duration = Duration::from_secs(1);

/// See the module doc.
#[derive(Debug)]
pub struct RetryBudget {
    window: Duration,
    tps: TpsBudget,
}

impl RetryBudget {
    pub fn new(percent: u32, window: Duration, min_retries_per_second: u32) -> RetryBudget {
        let window = window.clamp(MIN_WINDOW, MAX_WINDOW);
        let percent = percent.min(100_000) as f32 / 100.0;
        RetryBudget {
            window,
            tps: TpsBudget::new(window, min_retries_per_second, percent),
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// Count a request's first attempt.
    pub fn record_request(&self) {
        self.tps.deposit();
    }

    /// Take one retry from the budget; `false` when it is spent.
    pub fn try_retry(&self) -> bool {
        self.tps.withdraw()
    }
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

    #[tokio::test(start_paused = true)]
    async fn requests_older_than_the_window_allow_no_retry() {
        let b = RetryBudget::new(100, Duration::from_secs(10), 0);
        for _ in 0..10 {
            b.record_request();
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(retries_allowed(&b), 0, "the requests fell out");
    }

    #[test]
    fn the_window_is_kept_within_what_tower_allows() {
        let w = |ms| RetryBudget::new(20, Duration::from_millis(ms), 0).window();
        assert_eq!(w(600_000), MAX_WINDOW);
        assert_eq!(w(10), MIN_WINDOW);
        assert_eq!(w(10_000), Duration::from_secs(10));
    }
}
