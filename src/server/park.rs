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
//! setting is 0, or while more than
//! `limits.park_at_once_above_connections` client connections are open
//! (a crowd of connections arriving faster than they would park would
//! otherwise all hold their buffers at once, and the allocator keeps that
//! peak). A busy keep-alive connection never parks.
//!
//! How the hand-back stays lossless is in the parent module's `conn`: hyper
//! gives back the bytes it read but did not parse, which are replayed first,
//! and a hyper connection that still had work to do is closed after it, not
//! parked.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::Semaphore;

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

/// How many client connections the listener has open: its connection
/// slots (one semaphore permit each) taken.
#[derive(Debug)]
pub(super) struct Crowd {
    slots: Arc<Semaphore>,
    max_connections: usize,
    /// `limits.park_at_once_above_connections` (0: never).
    park_at_once_above: usize,
}

impl Crowd {
    pub(super) fn new(
        slots: Arc<Semaphore>,
        max_connections: usize,
        park_at_once_above: usize,
    ) -> Crowd {
        Crowd {
            slots,
            max_connections,
            park_at_once_above,
        }
    }

    /// More connections are open than idle ones may keep their buffers
    /// for `idle_park`.
    fn crowded(&self) -> bool {
        self.park_at_once_above > 0
            && self
                .max_connections
                .saturating_sub(self.slots.available_permits())
                > self.park_at_once_above
    }
}

/// Decides when a served HTTP/1 connection is parked.
#[derive(Debug)]
pub(super) struct Parker {
    idle_park: Duration,
    crowd: Crowd,
    /// `(requests, reads)` at the previous tick, when it was parkable then.
    seen: Option<(u64, u64)>,
}

impl Parker {
    pub(super) fn new(idle_park: Duration, crowd: Crowd) -> Self {
        Parker {
            idle_park,
            crowd,
            seen: None,
        }
    }

    /// Park as soon as the connection is parkable (checked after each poll
    /// of its hyper connection) rather than at ticks: when `idle_park` is
    /// zero, or while the listener is crowded (decided per hyper
    /// connection, when it starts).
    pub(super) fn immediate(&self) -> bool {
        self.idle_park.is_zero() || self.crowd.crowded()
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

    /// One connection open of ten, the rule at 1000.
    fn uncrowded() -> Crowd {
        Crowd::new(Arc::new(Semaphore::new(9)), 10, 1000)
    }

    #[test]
    fn a_crowded_listener_parks_at_once_and_an_uncrowded_one_waits_idle_park() {
        let slots = Arc::new(Semaphore::new(10));
        let parker =
            |above| Parker::new(Duration::from_secs(1), Crowd::new(slots.clone(), 10, above));
        let held: Vec<_> = (0..3)
            .map(|_| slots.clone().try_acquire_owned().unwrap())
            .collect();
        // Three open, at most three before parking at once: wait.
        assert!(!parker(3).immediate());
        let fourth = slots.clone().try_acquire_owned().unwrap();
        assert!(parker(3).immediate(), "four open is over three");
        // 0 turns the crowd rule off.
        assert!(!parker(0).immediate());
        drop(fourth);
        assert!(!parker(3).immediate(), "back to three");
        drop(held);
        // idle_park = 0 parks at once, crowd or not.
        assert!(Parker::new(Duration::ZERO, Crowd::new(slots.clone(), 10, 3)).immediate());
    }

    #[test]
    fn parks_only_an_idle_connection_after_a_full_period() {
        let a = Arc::new(Activity::default());
        let mut p = Parker::new(Duration::from_secs(1), uncrowded());
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
        let p = Parker::new(Duration::ZERO, uncrowded());
        assert!(p.immediate());
        assert_eq!(p.tick(), MIN_TICK);
    }
}
