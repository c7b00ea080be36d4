//! Traffic bookkeeping: how many `/v1` requests are in flight (overall and
//! per account, with their maxima) and the requests parked by `hold` rules,
//! with what the control API (`control`) reads and releases of them.
//!
//! Kept apart from the resource state (`model`'s `State`) because it describes
//! requests rather than resources: `POST /__emulator/reset` wipes resources
//! but cannot make requests that are still running disappear.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::oneshot;

/// Default bound of the requests held at once (`max_held_requests`).
pub const DEFAULT_MAX_HELD_REQUESTS: usize = 256;
/// Largest accepted `max_held_requests`.
pub const MAX_HELD_REQUESTS_LIMIT: usize = 10_000;
/// A held request not released within this time is dropped unprocessed
/// (connection closed), so a forgotten hold cannot park a task forever.
pub const MAX_HOLD: Duration = Duration::from_secs(600);

#[derive(Debug, Default, Clone, Copy)]
struct Counter {
    in_flight: u64,
    max_in_flight: u64,
}

impl Counter {
    fn enter(&mut self) -> u64 {
        self.in_flight += 1;
        self.max_in_flight = self.max_in_flight.max(self.in_flight);
        self.in_flight
    }
    fn leave(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }
    fn to_json(self) -> Value {
        json!({"in_flight": self.in_flight, "max_in_flight": self.max_in_flight})
    }
}

struct HeldRequest {
    seq: u64,
    rule_id: Option<u64>,
    method: String,
    path: String,
    account_sid: String,
    since: Instant,
    /// Sending releases the request; dropping the sender drops it unprocessed.
    release: oneshot::Sender<()>,
}

#[derive(Default)]
struct Inner {
    overall: Counter,
    accounts: BTreeMap<String, Counter>,
    held: Vec<HeldRequest>,
    next_held_seq: u64,
}

/// In-flight counters and held requests.
pub(crate) struct Traffic {
    inner: Mutex<Inner>,
    max_held: usize,
}

/// The hold registry is full (`max_held_requests`).
#[derive(Debug, thiserror::Error)]
#[error("at most {0} requests can be held at once")]
pub(crate) struct HoldFull(pub(crate) usize);

/// A request parked by a `hold` rule.
pub(crate) struct Ticket {
    pub(crate) seq: u64,
    receiver: oneshot::Receiver<()>,
}

/// How a held request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Release {
    /// `POST /__emulator/release`.
    Released,
    /// Reset, shutdown or [`MAX_HOLD`]: drop it unprocessed.
    Cancelled,
}

impl Ticket {
    pub(crate) async fn wait(self, traffic: &Traffic) -> Release {
        match tokio::time::timeout(MAX_HOLD, self.receiver).await {
            Ok(Ok(())) => Release::Released,
            Ok(Err(_)) => Release::Cancelled,
            Err(_) => {
                traffic.lock().held.retain(|h| h.seq != self.seq);
                Release::Cancelled
            }
        }
    }
}

impl Traffic {
    pub(crate) fn new(max_held: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            max_held,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every mutation is a single counter step or push/remove.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Count one request in flight (overall, or for `account_sid`) until the
    /// guard is dropped; returns the count including it.
    pub(crate) fn enter(traffic: &Arc<Traffic>, account_sid: Option<&str>) -> (InFlight, u64) {
        let mut inner = traffic.lock();
        let count = match account_sid {
            None => inner.overall.enter(),
            Some(sid) => inner.accounts.entry(sid.to_owned()).or_default().enter(),
        };
        let guard = InFlight {
            traffic: traffic.clone(),
            account_sid: account_sid.map(str::to_owned),
        };
        (guard, count)
    }

    /// Park a request until it is released or cancelled.
    pub(crate) fn hold(
        &self,
        rule_id: Option<u64>,
        method: &str,
        path: &str,
        account_sid: &str,
    ) -> Result<Ticket, HoldFull> {
        let mut inner = self.lock();
        if inner.held.len() >= self.max_held {
            return Err(HoldFull(self.max_held));
        }
        inner.next_held_seq += 1;
        let seq = inner.next_held_seq;
        let (release, receiver) = oneshot::channel();
        inner.held.push(HeldRequest {
            seq,
            rule_id,
            method: method.to_owned(),
            path: path.to_owned(),
            account_sid: account_sid.to_owned(),
            since: Instant::now(),
            release,
        });
        Ok(Ticket { seq, receiver })
    }

    /// Drop every held request unprocessed (reset, shutdown).
    pub(crate) fn cancel_all(&self) {
        self.lock().held.clear();
    }
}

/// Counts a request in flight while alive.
pub(crate) struct InFlight {
    traffic: Arc<Traffic>,
    account_sid: Option<String>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut inner = self.traffic.lock();
        match &self.account_sid {
            None => inner.overall.leave(),
            Some(sid) => {
                if let Some(c) = inner.accounts.get_mut(sid) {
                    c.leave();
                }
            }
        }
    }
}

impl Traffic {
    /// `GET /__emulator/stats`: the counts overall and per account.
    pub(crate) fn stats(&self) -> Value {
        let inner = self.lock();
        let accounts: serde_json::Map<String, Value> = inner
            .accounts
            .iter()
            .map(|(sid, c)| (sid.clone(), c.to_json()))
            .collect();
        let mut body = inner.overall.to_json();
        if let Some(obj) = body.as_object_mut() {
            obj.insert("accounts".to_owned(), Value::Object(accounts));
        }
        body
    }

    /// `DELETE /__emulator/stats`: every maximum becomes the current count.
    pub(crate) fn reset_maxima(&self) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        for c in std::iter::once(&mut inner.overall).chain(inner.accounts.values_mut()) {
            c.max_in_flight = c.in_flight;
        }
    }

    /// `GET /__emulator/held`.
    pub(crate) fn held(&self) -> Value {
        let inner = self.lock();
        let held: Vec<Value> = inner
            .held
            .iter()
            .map(|h| {
                json!({
                    "seq": h.seq,
                    "rule_id": h.rule_id,
                    "method": h.method,
                    "path": h.path,
                    "account_sid": h.account_sid,
                    "held_ms": u64::try_from(h.since.elapsed().as_millis()).unwrap_or(u64::MAX),
                })
            })
            .collect();
        json!({"held": held, "max_held": self.max_held})
    }

    /// Release the held requests of rule `id` and/or with `seq` (all when
    /// both are `None`); how many were released.
    pub(crate) fn release(&self, id: Option<u64>, seq: Option<u64>) -> usize {
        let chosen: Vec<HeldRequest> = {
            let mut inner = self.lock();
            let (chosen, kept) = std::mem::take(&mut inner.held).into_iter().partition(|h| {
                id.is_none_or(|id| h.rule_id == Some(id)) && seq.is_none_or(|seq| h.seq == seq)
            });
            inner.held = kept;
            chosen
        };
        let released = chosen.len();
        for h in chosen {
            // The request's task may have ended (MAX_HOLD) meanwhile: nothing to do.
            let _ = h.release.send(());
        }
        released
    }
}
