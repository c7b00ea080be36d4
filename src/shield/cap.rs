//! The per-account concurrency cap (`shield.max_concurrent_per_account`):
//! at most N requests of one account in flight to Twilio from this replica;
//! the others wait in line, first come first served per account, at most
//! `shield.max_queue_length_per_account` of them and each for at most its
//! own bound (`shield.max_queue_wait_ms` for a client's request, the
//! workflow deadline for a repair call).
//!
//! A [`Slot`] is held from the moment a request may go until Twilio's
//! response head has arrived (Twilio's concurrency is the requests it is
//! processing; the emulator counts the same way). Each account's line is a
//! `tokio::sync::Semaphore` of N permits: fair (a freed permit goes to the
//! first waiter, so a newcomer never overtakes the line) and cancel-safe (a
//! waiter that gives up, its client gone or its bound passed, leaves the
//! line and a permit assigned to it meanwhile goes back), so no slot is ever
//! lost or counted twice. The length of the line is an atomic count beside
//! it, for the queue limit.
//!
//! Accounts are independent: each has its own line and count, and an
//! account's entry exists only while it has requests in flight or waiting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::AccountKey;
use crate::metrics::Metrics;

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CapError {
    #[error("the account's line is full")]
    QueueFull,
    #[error("no slot within the wait allowed")]
    Timeout,
}

/// One account's line: its permits and how many wait for one.
struct Line {
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
}

/// See the module doc.
pub struct Cap {
    limit: usize,
    max_queue: usize,
    metrics: Arc<Metrics>,
    /// `metrics.account_labels`: per-account series.
    labels: bool,
    lines: Mutex<HashMap<String, Arc<Line>>>,
}

impl Cap {
    pub fn new(limit: usize, max_queue: usize, metrics: Arc<Metrics>, labels: bool) -> Arc<Cap> {
        Arc::new(Cap {
            limit: limit.max(1),
            max_queue,
            metrics,
            labels,
            lines: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Line>>> {
        // A panic while holding the lock leaves the map consistent (every
        // change is one statement): keep going.
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn label<'a>(&self, key: &'a AccountKey) -> Option<&'a str> {
        self.labels.then_some(key.sid.as_str())
    }

    /// The account's line, made if it has none; dropped idle by [`Entry`].
    fn entry(self: &Arc<Self>, key: &AccountKey) -> Entry {
        let mut lines = self.lock();
        let line = match lines.get(&key.sid) {
            Some(line) => line.clone(),
            None => {
                let line = Arc::new(Line {
                    permits: Arc::new(Semaphore::new(self.limit)),
                    waiting: AtomicUsize::new(0),
                });
                lines.insert(key.sid.clone(), line.clone());
                line
            }
        };
        Entry {
            cap: self.clone(),
            key: key.clone(),
            line,
        }
    }

    /// A slot for `key`, waiting in line at most `wait`.
    pub async fn acquire(
        self: &Arc<Self>,
        key: &AccountKey,
        wait: Duration,
    ) -> Result<Slot, CapError> {
        let entry = self.entry(key);
        if let Ok(permit) = entry.line.permits.clone().try_acquire_owned() {
            return Ok(Slot::new(entry, permit));
        }
        if wait.is_zero() || entry.line.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_queue {
            if !wait.is_zero() {
                entry.line.waiting.fetch_sub(1, Ordering::SeqCst);
            }
            self.metrics.shield_queue_full(key.class, self.label(key));
            return Err(CapError::QueueFull);
        }
        let in_line = InLine::enter(&entry);
        let permits = entry.line.permits.clone();
        let granted = tokio::time::timeout(wait, permits.acquire_owned()).await;
        drop(in_line);
        match granted {
            Ok(Ok(permit)) => Ok(Slot::new(entry, permit)),
            // The semaphore is never closed; a timeout is the only way here.
            _ => {
                self.metrics.shield_queue_full(key.class, self.label(key));
                Err(CapError::Timeout)
            }
        }
    }

    /// Requests of `key` in flight and waiting (tests, admin).
    pub fn load(&self, key: &AccountKey) -> (usize, usize) {
        let lines = self.lock();
        lines.get(&key.sid).map_or((0, 0), |l| {
            (
                self.limit - l.permits.available_permits(),
                l.waiting.load(Ordering::SeqCst),
            )
        })
    }
}

/// A use of an account's line (a waiter's or a slot's); the last one
/// dropped removes the idle line from the map.
struct Entry {
    cap: Arc<Cap>,
    key: AccountKey,
    line: Arc<Line>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        let mut lines = self.cap.lock();
        // Uses are cloned from the map under this lock: the map's and this
        // one are the last two.
        if Arc::strong_count(&self.line) == 2 {
            lines.remove(&self.key.sid);
        }
    }
}

/// One request's place in line, counted (and timed) while it waits; its
/// future dropped, it leaves the line.
struct InLine<'a> {
    entry: &'a Entry,
    started: Instant,
}

impl<'a> InLine<'a> {
    fn enter(entry: &'a Entry) -> Self {
        let cap = &entry.cap;
        cap.metrics
            .shield_queue_enter(entry.key.class, cap.label(&entry.key));
        InLine {
            entry,
            started: Instant::now(),
        }
    }
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        let (cap, key) = (&self.entry.cap, &self.entry.key);
        self.entry.line.waiting.fetch_sub(1, Ordering::SeqCst);
        cap.metrics
            .shield_queue_leave(key.class, cap.label(key), self.started.elapsed());
    }
}

/// A slot of the cap; given back when dropped.
pub struct Slot {
    // Dropped before `entry`: the permit goes back before the line may go.
    _permit: OwnedSemaphorePermit,
    entry: Entry,
}

impl Slot {
    fn new(entry: Entry, permit: OwnedSemaphorePermit) -> Slot {
        entry.cap.metrics.shield_in_flight_add(entry.key.class, 1);
        Slot {
            _permit: permit,
            entry,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let e = &self.entry;
        e.cap.metrics.shield_in_flight_add(e.key.class, -1);
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("class", &self.entry.key.class)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::AccountClass;

    fn key(sid: &str) -> AccountKey {
        AccountKey {
            sid: sid.to_string(),
            class: AccountClass::Account,
        }
    }

    fn cap(limit: usize, queue: usize) -> Arc<Cap> {
        Cap::new(limit, queue, Arc::new(Metrics::default()), false)
    }

    #[tokio::test(start_paused = true)]
    async fn slots_go_first_come_first_served_and_accounts_are_apart() {
        let c = cap(2, 10);
        let (a, b) = (key("ACa"), key("ACb"));
        let s1 = c.acquire(&a, Duration::ZERO).await.unwrap();
        let s2 = c.acquire(&a, Duration::ZERO).await.unwrap();
        // Full for A, with no wait allowed: refused at once.
        assert_eq!(
            c.acquire(&a, Duration::ZERO).await.unwrap_err(),
            CapError::QueueFull
        );
        // B is unaffected.
        let _b1 = c.acquire(&b, Duration::ZERO).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for i in 0..3 {
            let (c, a, order) = (c.clone(), a.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let s = c.acquire(&a, Duration::from_secs(60)).await.unwrap();
                order.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(s);
            }));
            // Let each one join the line before the next.
            tokio::task::yield_now().await;
        }
        assert_eq!(c.load(&a), (2, 3));
        drop(s1);
        drop(s2);
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 2]);
        assert_eq!(c.load(&a), (0, 0));
        assert!(
            !c.lock().contains_key(&a.sid),
            "the entry is gone when idle"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_bounded_wait_and_a_bounded_line() {
        let c = cap(1, 1);
        let a = key("ACa");
        let _held = c.acquire(&a, Duration::ZERO).await.unwrap();
        let c2 = c.clone();
        let a2 = a.clone();
        let waiting =
            tokio::spawn(async move { c2.acquire(&a2, Duration::from_secs(5)).await.map(|_| ()) });
        tokio::task::yield_now().await;
        // The line holds one: the next is refused at once.
        assert_eq!(
            c.acquire(&a, Duration::from_secs(5)).await.unwrap_err(),
            CapError::QueueFull
        );
        assert_eq!(waiting.await.unwrap().unwrap_err(), CapError::Timeout);
        assert_eq!(c.load(&a), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_goes_away_loses_no_slot() {
        let c = cap(1, 10);
        let a = key("ACa");
        let held = c.acquire(&a, Duration::ZERO).await.unwrap();
        let c2 = c.clone();
        let a2 = a.clone();
        let gone = tokio::spawn(async move {
            let _ = c2.acquire(&a2, Duration::from_secs(60)).await;
        });
        tokio::task::yield_now().await;
        gone.abort();
        let _ = gone.await;
        assert_eq!(c.load(&a), (1, 0), "the line is empty again");
        drop(held);
        assert_eq!(c.load(&a), (0, 0));
        let _again = c.acquire(&a, Duration::ZERO).await.unwrap();
    }
}
