//! Who may touch an identity's User, and when: the repair lock and the
//! repair fence.
//!
//! - The **lock** of a [`RepairKey`] (account, service, identity) is held by
//!   whoever changes that User: a live repair, or recovery completing a
//!   journal record. It is an in-process mutex plus, with a shared store,
//!   the store's cross-replica lock (a PostgreSQL advisory lock that dies
//!   with its holder's connection).
//! - The **fence** holds back the *caller's* writes for an identity while it
//!   is under repair: a Participant create or a User create/update/delete
//!   forwarded in the gap between the repair's delete and its recreate would
//!   make Twilio create a bare User. An identity is fenced in this process
//!   from the moment a repair takes its lock until it lets go, and, through
//!   the journal, while any open record names it (left by a crash, or by
//!   another replica). Pass-through that cannot be involved never looks:
//!   the check is one read of an in-memory map, plus one store query for
//!   Participant/User writes when the store is shared.
//!
//! [`RepairKey`]'s `Display` is the one place the lock key is spelt, for
//! both stores and for recovery.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::store::{Store, StoreError, StoreLock};

/// How often a waiter polls the store's cross-replica lock or fence.
pub const LOCK_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// What a repair lock is taken on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepairKey {
    pub account_sid: String,
    pub service_sid: String,
    pub identity: String,
}

impl std::fmt::Display for RepairKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.account_sid, self.service_sid, self.identity
        )
    }
}

/// Both locks of one key, and the fence they raise; dropping releases all.
pub struct KeyLock {
    _local: tokio::sync::OwnedMutexGuard<()>,
    _store: Box<dyn StoreLock>,
    _fence: FenceGuard,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("timed out waiting for a concurrent repair of this identity")]
    Timeout,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The locks and the in-process fence of one proxy process.
#[derive(Default)]
pub struct Locks {
    local: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    fence: Arc<Fence>,
}

impl Locks {
    fn local(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.local.lock().unwrap_or_else(|p| p.into_inner());
        // Drop locks nobody holds or waits for, so the map stays small.
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(key.to_string()).or_default().clone()
    }

    pub fn fence(&self) -> &Arc<Fence> {
        &self.fence
    }

    /// Take both locks of a key (in-process, then the store's), waiting
    /// until `deadline`.
    pub async fn acquire(
        &self,
        store: &dyn Store,
        key: &RepairKey,
        deadline: Instant,
    ) -> Result<KeyLock, LockError> {
        let name = key.to_string();
        let local = self.local(&name);
        let remaining = deadline.saturating_duration_since(Instant::now());
        let local = tokio::time::timeout(remaining, local.lock_owned())
            .await
            .map_err(|_| LockError::Timeout)?;
        loop {
            if let Some(held) = store.try_lock(&name).await? {
                return Ok(KeyLock {
                    _local: local,
                    _store: held,
                    _fence: self.fence.raise(&key.identity),
                });
            }
            if Instant::now() + LOCK_POLL_INTERVAL >= deadline {
                return Err(LockError::Timeout);
            }
            tokio::time::sleep(LOCK_POLL_INTERVAL).await;
        }
    }

    /// Take both locks of a key if nobody holds them.
    pub async fn try_acquire(
        &self,
        store: &dyn Store,
        key: &RepairKey,
    ) -> Result<Option<KeyLock>, StoreError> {
        let name = key.to_string();
        let Ok(local) = self.local(&name).try_lock_owned() else {
            return Ok(None);
        };
        Ok(store.try_lock(&name).await?.map(|held| KeyLock {
            _local: local,
            _store: held,
            _fence: self.fence.raise(&key.identity),
        }))
    }
}

/// The cross-replica half of a live repair's fence: a row in the shared
/// journal naming the identity, raised as soon as the repair holds the
/// lock (before its journal record exists, while it reads the snapshot),
/// and lowered when this guard drops. A holder that dies leaves a row that
/// stops counting at its `until` (the workflow deadline).
pub struct SharedFence {
    store: Arc<dyn Store>,
    id: i64,
}

impl SharedFence {
    /// Raise the fence if the store is shared; `None` otherwise (this
    /// process's own fence is all the exclusion an unshared store needs).
    pub async fn raise(
        store: &Arc<dyn Store>,
        identity: &str,
        deadline: Instant,
    ) -> Option<SharedFence> {
        if !store.shared() {
            return None;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let until = time::OffsetDateTime::now_utc()
            + time::Duration::try_from(left).unwrap_or(time::Duration::ZERO)
            + time::Duration::seconds(1);
        match store
            .raise_fence(identity, &crate::store::rfc3339(until))
            .await
        {
            Ok(id) => Some(SharedFence {
                store: store.clone(),
                id,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot raise the shared fence; other replicas see the repair once it is journaled");
                None
            }
        }
    }
}

impl Drop for SharedFence {
    fn drop(&mut self) {
        let (store, id) = (self.store.clone(), self.id);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = store.lower_fence(id).await {
                    tracing::warn!(error = %e, "cannot lower the shared fence; it lapses at its deadline");
                }
            });
        }
    }
}

/// Identities under repair in this process (by live repairs and by open
/// journal records), with a signal when one is let go.
#[derive(Default)]
pub struct Fence {
    raised: Mutex<HashMap<String, usize>>,
    /// Identities of open journal records (reloaded from the journal).
    journaled: Mutex<std::collections::HashSet<String>>,
    changed: tokio::sync::Notify,
    /// Live raises plus journaled identities: the pass-through fast path
    /// reads this one atomic, never the maps.
    size: std::sync::atomic::AtomicUsize,
}

impl Fence {
    /// Fence an identity until the guard drops.
    pub fn raise(self: &Arc<Self>, identity: &str) -> FenceGuard {
        self.size.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        *self
            .raised
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(identity.to_string())
            .or_default() += 1;
        FenceGuard {
            fence: self.clone(),
            identity: identity.to_string(),
        }
    }

    /// Replace the set of identities that open journal records name.
    pub fn set_journaled(&self, identities: impl IntoIterator<Item = String>) {
        let mut j = self.journaled.lock().unwrap_or_else(|p| p.into_inner());
        let before = j.len();
        j.clear();
        j.extend(identities);
        // Under the lock, add before subtracting: the count never dips
        // below what is fenced.
        self.size
            .fetch_add(j.len(), std::sync::atomic::Ordering::SeqCst);
        self.size
            .fetch_sub(before, std::sync::atomic::Ordering::SeqCst);
        drop(j);
        self.changed.notify_waiters();
    }

    /// Whether a live repair in this process holds the identity.
    pub fn held_live(&self, identity: &str) -> bool {
        self.raised
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(identity)
    }

    /// Whether this process knows of any reason to hold the identity back.
    pub fn is_raised(&self, identity: &str) -> bool {
        self.held_live(identity)
            || self
                .journaled
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(identity)
    }

    /// Nothing is fenced at all: the pass-through fast path (one atomic
    /// load).
    pub fn is_empty(&self) -> bool {
        self.size.load(std::sync::atomic::Ordering::SeqCst) == 0
    }

    /// Wait until no live repair in this process holds the identity, or
    /// until `deadline`. Returns whether it was let go in time.
    pub async fn wait_live(&self, identity: &str, deadline: Instant) -> bool {
        loop {
            let notified = self.changed.notified();
            if !self.held_live(identity) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            // The poll bound covers a notification lost between the check
            // and the wait.
            let _ = tokio::time::timeout(LOCK_POLL_INTERVAL.min(deadline - now), notified).await;
        }
    }
}

/// Lets an identity go when dropped.
pub struct FenceGuard {
    fence: Arc<Fence>,
    identity: String,
}

impl Drop for FenceGuard {
    fn drop(&mut self) {
        let mut raised = self.fence.raised.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = raised.get_mut(&self.identity) {
            *n -= 1;
            if *n == 0 {
                raised.remove(&self.identity);
            }
        }
        drop(raised);
        self.fence
            .size
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.fence.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_waiter_is_let_go_when_the_repair_ends_not_before() {
        let fence = Arc::new(Fence::default());
        let guard = fence.raise("kim");
        assert!(fence.is_raised("kim") && !fence.is_raised("lee"));
        let f = fence.clone();
        let waiter = tokio::spawn(async move {
            f.wait_live("kim", Instant::now() + Duration::from_secs(30))
                .await
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiter.is_finished());
        drop(guard);
        assert!(waiter.await.unwrap());
        assert!(fence.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gives_up_at_the_deadline() {
        let fence = Arc::new(Fence::default());
        let _guard = fence.raise("kim");
        let ok = fence
            .wait_live("kim", Instant::now() + Duration::from_secs(2))
            .await;
        assert!(!ok);
    }
}
