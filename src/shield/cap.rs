//! The per-account concurrency cap (`shield.max_concurrent_per_account`):
//! at most N requests of one account in flight to Twilio from this replica;
//! the others wait in line, first come first served per account, at most
//! `shield.max_queue_length_per_account` of them and each for at most its
//! own bound (`shield.max_queue_wait_ms` for a client's request, the
//! workflow deadline for a repair call).
//!
//! A [`Slot`] is held from the moment a request may go until Twilio's
//! response head has arrived (Twilio's concurrency is the requests it is
//! processing; the emulator counts the same way). A freed slot is handed to
//! the first waiter directly, so a newcomer never overtakes the line. A
//! waiter that gives up (its client went away, its bound passed) leaves the
//! line, and a slot handed to it in that same instant is passed on: no slot
//! is ever lost or counted twice.
//!
//! Accounts are independent: each has its own line and count, and an
//! account's entry exists only while it has requests in flight or waiting.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
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

struct Waiter {
    id: u64,
    tx: oneshot::Sender<()>,
}

#[derive(Default)]
struct Line {
    in_flight: usize,
    waiting: VecDeque<Waiter>,
}

#[derive(Default)]
struct State {
    lines: HashMap<String, Line>,
    next_id: u64,
}

/// See the module doc.
pub struct Cap {
    limit: usize,
    max_queue: usize,
    metrics: Arc<Metrics>,
    /// `metrics.account_labels`: per-account series.
    labels: bool,
    state: Mutex<State>,
}

impl Cap {
    pub fn new(limit: usize, max_queue: usize, metrics: Arc<Metrics>, labels: bool) -> Arc<Cap> {
        Arc::new(Cap {
            limit: limit.max(1),
            max_queue,
            metrics,
            labels,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves counts that are still
        // consistent (every change is one statement): keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn label<'a>(&self, key: &'a AccountKey) -> Option<&'a str> {
        self.labels.then_some(key.sid.as_str())
    }

    /// A slot for `key`, waiting in line at most `wait`.
    pub async fn acquire(
        self: &Arc<Self>,
        key: &AccountKey,
        wait: Duration,
    ) -> Result<Slot, CapError> {
        let rx = {
            let mut st = self.lock();
            let id = st.next_id;
            st.next_id += 1;
            let line = st.lines.entry(key.sid.clone()).or_default();
            if line.in_flight < self.limit && line.waiting.is_empty() {
                line.in_flight += 1;
                self.metrics.shield_in_flight_add(key.class, 1);
                return Ok(self.slot(key));
            }
            if line.waiting.len() >= self.max_queue || wait.is_zero() {
                if line.in_flight == 0 && line.waiting.is_empty() {
                    st.lines.remove(&key.sid);
                }
                self.metrics.shield_queue_full(key.class, self.label(key));
                return Err(CapError::QueueFull);
            }
            let (tx, rx) = oneshot::channel();
            line.waiting.push_back(Waiter { id, tx });
            self.metrics.shield_queue_enter(key.class, self.label(key));
            Pending {
                cap: self.clone(),
                key: key.clone(),
                id,
                rx,
                started: Instant::now(),
                granted: false,
            }
        };
        let mut pending = rx;
        let handed = tokio::time::timeout(wait, &mut pending.rx).await;
        if matches!(handed, Ok(Ok(()))) || pending.take_if_handed() {
            pending.granted = true;
            return Ok(self.slot(key));
        }
        self.metrics.shield_queue_full(key.class, self.label(key));
        Err(CapError::Timeout)
    }

    fn slot(self: &Arc<Self>, key: &AccountKey) -> Slot {
        Slot {
            cap: self.clone(),
            key: key.clone(),
        }
    }

    /// Give a slot back: to the first waiter still waiting, else to the
    /// account's count.
    fn release(&self, key: &AccountKey) {
        let mut st = self.lock();
        let Some(line) = st.lines.get_mut(&key.sid) else {
            return;
        };
        while let Some(w) = line.waiting.pop_front() {
            if w.tx.send(()).is_ok() {
                return;
            }
        }
        line.in_flight = line.in_flight.saturating_sub(1);
        self.metrics.shield_in_flight_add(key.class, -1);
        if line.in_flight == 0 {
            st.lines.remove(&key.sid);
        }
    }

    /// Requests of `key` in flight and waiting (tests, admin).
    pub fn load(&self, key: &AccountKey) -> (usize, usize) {
        let st = self.lock();
        st.lines
            .get(&key.sid)
            .map_or((0, 0), |l| (l.in_flight, l.waiting.len()))
    }
}

/// One request's place in line. Dropped without a slot (timed out, or the
/// request's future was dropped): leaves the line, and passes on a slot
/// handed to it meanwhile.
struct Pending {
    cap: Arc<Cap>,
    key: AccountKey,
    id: u64,
    rx: oneshot::Receiver<()>,
    started: Instant,
    granted: bool,
}

impl Pending {
    /// After a timeout: still in line (leave it, `false`), or handed a
    /// slot in the same instant (`true`).
    fn take_if_handed(&mut self) -> bool {
        let mut st = self.cap.lock();
        if let Some(line) = st.lines.get_mut(&self.key.sid) {
            if let Some(i) = line.waiting.iter().position(|w| w.id == self.id) {
                line.waiting.remove(i);
                if line.in_flight == 0 && line.waiting.is_empty() {
                    st.lines.remove(&self.key.sid);
                }
                return false;
            }
        }
        // Not in line: the releaser took us out and sent under the lock.
        self.rx.try_recv().is_ok()
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let label = self.cap.label(&self.key);
        self.cap
            .metrics
            .shield_queue_leave(self.key.class, label, self.started.elapsed());
        if self.granted {
            return;
        }
        if self.take_if_handed() {
            // A slot arrived for a request that is gone: pass it on.
            self.cap.release(&self.key);
        }
    }
}

/// A slot of the cap; given back when dropped.
pub struct Slot {
    cap: Arc<Cap>,
    key: AccountKey,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.cap.release(&self.key);
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("class", &self.key.class)
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
        assert_eq!(c.load(&a), (0, 0), "the entry is gone when idle");
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
