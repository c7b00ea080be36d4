//! When an idle HTTP/1 connection is *parked*: its hyper connection (read
//! and write buffers, parser state: ~16 KiB) handed back and dropped, and
//! the bare socket watched for readiness until the client's next request,
//! as nginx frees its buffers on idle keep-alive connections.
//!
//! A connection is parkable when hyper can hold nothing of value: no request
//! in flight (every response body has ended), no response bytes waiting for
//! the socket, and no byte of a next request received since the last
//! response ended (a started head stays with its hyper connection, bounded
//! by `header_read_timeout`). [`Parker`] parks a connection that stayed
//! parkable for `limits.idle_park_ms` (sampled at ticks of that period, so
//! between one and two periods), or as soon as it is parkable when the
//! setting is 0. A busy keep-alive connection never parks.
//!
//! How the hand-back stays lossless is in the parent module's `conn`: hyper
//! gives back the bytes it read but did not parse, which are replayed first,
//! and a hyper connection that still had work to do is closed after it, not
//! parked.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::watchdog::Activity;

/// Shortest tick of the park check, whatever `idle_park` says.
const MIN_TICK: Duration = Duration::from_millis(5);

/// Whether hyper holds nothing of value for this connection (see the module
/// documentation).
pub(super) fn parkable(a: &Activity) -> bool {
    a.in_flight.load(Relaxed) == 0
        && a.requests.load(Relaxed) > 0
        && !a.write_blocked.load(Relaxed)
        && a.reads.load(Relaxed) == a.reads_when_idle.load(Relaxed)
}

/// Decides when a served HTTP/1 connection is parked.
#[derive(Debug)]
pub(super) struct Parker {
    idle_park: Duration,
    /// `(requests, reads)` at the previous tick, when it was parkable then.
    seen: Option<(u64, u64)>,
}

impl Parker {
    pub(super) fn new(idle_park: Duration) -> Self {
        Parker {
            idle_park,
            seen: None,
        }
    }

    /// Park as soon as the connection is parkable (checked after each poll
    /// of its hyper connection) rather than at ticks.
    pub(super) fn immediate(&self) -> bool {
        self.idle_park.is_zero()
    }

    /// The period of the park check in tick mode.
    pub(super) fn tick(&self) -> Duration {
        self.idle_park.max(MIN_TICK)
    }

    /// A fresh hyper connection starts a fresh count.
    pub(super) fn reset(&mut self) {
        self.seen = None;
    }

    /// At a tick: park when the connection was parkable at the previous
    /// tick and still is, with no request and no read in between.
    pub(super) fn due(&mut self, a: &Activity) -> bool {
        if !parkable(a) {
            self.seen = None;
            return false;
        }
        let now = (a.requests.load(Relaxed), a.reads.load(Relaxed));
        if self.seen == Some(now) {
            self.seen = None;
            return true;
        }
        self.seen = Some(now);
        false
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::Version;

    use super::super::watchdog::RequestGuard;
    use super::*;

    #[test]
    fn parks_only_an_idle_connection_after_a_full_period() {
        let a = Arc::new(Activity::default());
        let mut p = Parker::new(Duration::from_secs(1));
        assert!(!p.immediate());
        assert_eq!(p.tick(), Duration::from_secs(1));
        // Before the first request: never (header_read_timeout bounds it).
        a.reads.fetch_add(1, Relaxed);
        assert!(!p.due(&a) && !p.due(&a) && !parkable(&a));
        // A request in flight: never.
        let g = RequestGuard::new(&a, Version::HTTP_11);
        assert!(!p.due(&a) && !p.due(&a));
        drop(g);
        // Idle: the first tick only notes it, the second parks.
        assert!(!p.due(&a));
        assert!(p.due(&a));
        // A request between two ticks restarts the count.
        assert!(!p.due(&a));
        drop(RequestGuard::new(&a, Version::HTTP_11));
        assert!(!p.due(&a));
        assert!(p.due(&a));
        // Bytes of a next head: not parkable (the head stays with hyper).
        a.reads.fetch_add(1, Relaxed);
        assert!(!parkable(&a) && !p.due(&a) && !p.due(&a));
        drop(RequestGuard::new(&a, Version::HTTP_11));
        // Response bytes stuck in hyper's write buffer: not parkable.
        a.write_blocked.store(true, Relaxed);
        assert!(!p.due(&a) && !p.due(&a));
        a.write_blocked.store(false, Relaxed);
        assert!(!p.due(&a));
        assert!(p.due(&a));
        // reset() forgets the previous tick.
        assert!(!p.due(&a));
        p.reset();
        assert!(!p.due(&a));
        assert!(p.due(&a));
    }

    #[test]
    fn zero_means_park_as_soon_as_parkable() {
        let p = Parker::new(Duration::ZERO);
        assert!(p.immediate());
        assert_eq!(p.tick(), MIN_TICK);
    }
}
