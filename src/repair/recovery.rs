//! Completing repairs that an interruption (crash, `kill -9`, deadline)
//! left unfinished in the journal.
//!
//! At start-up with an operator repair credential, every pending record is
//! completed at once. Without one, a record waits for the first request
//! whose Basic-auth user name is the record's account SID or the key that
//! ran it; that request's credential completes it (in the background; the
//! request itself is not delayed). Completion is idempotent: recreate the
//! User from the snapshot if it is missing, restore every membership that
//! is missing, mark the record `recovered`. The log says which credential
//! was used.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use tokio::time::Instant;

use super::user::{RepairTarget, recreate, restore_memberships};
use super::{Repairer, basic_user};
use crate::metrics::Metrics;
use crate::routing::Origin;
use crate::store::{RepairRecord, Store, state};
use crate::twilio_api::{TwilioApi, encode_segment};

/// Fast-path state: which credential user names have pending repairs.
#[derive(Default)]
pub struct Recovery {
    waiting: std::sync::RwLock<HashSet<String>>,
    any: AtomicBool,
    running: tokio::sync::Mutex<()>,
}

impl Recovery {
    /// Reload the pending set from the journal and update the gauge.
    pub async fn refresh_gauge(&self, store: &dyn Store, metrics: &Metrics) {
        match store.pending_repairs().await {
            Ok(pending) => {
                metrics.set_repair_pending(pending.len() as i64);
                let mut set = self.waiting.write().unwrap_or_else(|p| p.into_inner());
                set.clear();
                for r in &pending {
                    set.insert(r.credential_user.clone());
                    set.insert(r.account_sid.clone());
                }
                self.any.store(!set.is_empty(), Ordering::SeqCst);
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the journal"),
        }
    }

    fn matches(&self, authorization: &HeaderValue) -> bool {
        if !self.any.load(Ordering::Relaxed) {
            return false;
        }
        let Some(user) = basic_user(authorization) else {
            return false;
        };
        self.waiting
            .read()
            .map(|s| s.contains(&user))
            .unwrap_or(false)
    }
}

/// Which credential recovery used (for the log).
#[derive(Debug, Clone, Copy)]
pub enum CredentialSource {
    Operator,
    Caller,
}

impl Repairer {
    /// The periodic sweep: refresh what is pending (records left by any
    /// replica) and, with an operator credential, complete them.
    pub fn recovery_sweep(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.recovery
                .refresh_gauge(self.store.as_ref(), &self.metrics)
                .await;
            if self.credential.is_some() && self.recovery.any.load(Ordering::SeqCst) {
                self.recover_pending(None).await;
            }
        })
    }

    /// On any request: if its credential can finish a pending repair, do so
    /// in the background. Costs one atomic load when nothing is pending.
    pub fn maybe_recover(self: &Arc<Self>, headers: &HeaderMap) {
        let Some(auth) = headers.get(header::AUTHORIZATION) else {
            return;
        };
        if !self.recovery.matches(auth) {
            return;
        }
        let me = self.clone();
        let auth = auth.clone();
        tokio::spawn(async move {
            me.recover_pending(Some(&auth)).await;
        });
    }

    /// Complete every pending record this credential (or the operator's)
    /// may act on. Returns how many were completed.
    pub fn recover_pending<'a>(&'a self, caller: Option<&'a HeaderValue>) -> BoxFuture<'a, usize> {
        Box::pin(async move {
            let Ok(_running) = self.recovery.running.try_lock() else {
                return 0;
            };
            let pending = match self.store.pending_repairs().await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the journal for recovery");
                    return 0;
                }
            };
            let caller_user = caller.and_then(basic_user);
            let mut done = 0;
            for record in pending {
                let (auth, source) = match (&self.credential, caller, &caller_user) {
                    (Some(c), _, _) => (c.authorization.clone(), CredentialSource::Operator),
                    (None, Some(a), Some(u))
                        if *u == record.credential_user || *u == record.account_sid =>
                    {
                        (a.clone(), CredentialSource::Caller)
                    }
                    _ => {
                        tracing::warn!(
                            repair_id = record.id,
                            account = %record.account_sid,
                            "unfinished repair waits for a request with credentials for its account"
                        );
                        continue;
                    }
                };
                if self.recover_one(&record, auth, source).await {
                    done += 1;
                }
            }
            self.recovery
                .refresh_gauge(self.store.as_ref(), &self.metrics)
                .await;
            done
        })
    }

    async fn recover_one(
        &self,
        record: &RepairRecord,
        auth: HeaderValue,
        source: CredentialSource,
    ) -> bool {
        let Some(origin) = Origin::parse(&record.upstream) else {
            tracing::error!(
                repair_id = record.id,
                "journal record names an invalid upstream"
            );
            return false;
        };
        let key = format!(
            "{}:{}:{}",
            record.account_sid, record.service_sid, record.identity
        );
        // Claim the record with the same lock a live repair of this identity
        // holds (in this process or, with a shared store, in any replica; a
        // dead replica's lock goes with its connection).
        let _guard = match self.try_acquire(&key).await {
            Ok(Some(g)) => g,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(repair_id = record.id, error = %e, "cannot lock for recovery");
                return false;
            }
        };
        match self.store.get_repair(record.id).await {
            Ok(Some(r)) if !state::FINAL.contains(&r.state.as_str()) => {}
            _ => return false, // finished meanwhile
        }
        let deadline = Instant::now() + Duration::from_millis(self.config.workflow_deadline_ms);
        let api = TwilioApi::new(
            self.client.clone(),
            origin,
            auth,
            record
                .webhook
                .as_ref()
                .and_then(|w| HeaderValue::from_str(w).ok()),
            self.retry_policy(),
            deadline,
        )
        .with_via(self.mark_forwarded);
        let target = RepairTarget {
            account_sid: record.account_sid.clone(),
            credential_user: record.credential_user.clone(),
            upstream: record.upstream.clone(),
            service_base: record.service_base.clone(),
            service_sid: record.service_sid.clone(),
            identity: record.identity.clone(),
            exclude_conversation: None,
        };
        let mut steps = Vec::new();
        let user_path = format!(
            "{}/Users/{}",
            record.service_base,
            encode_segment(&record.identity)
        );
        let probe = api.call(Method::GET, &user_path, None).await;
        let exists = match &probe {
            Ok(x) if x.status == StatusCode::OK => true,
            Ok(x) if x.status == StatusCode::NOT_FOUND => false,
            other => {
                tracing::warn!(repair_id = record.id, error = ?other.as_ref().err(), "recovery cannot read the User; will retry later");
                return false;
            }
        };
        if !exists && record.snapshot.user_sid.is_some() {
            if let Err(detail) = recreate(&api, &target, &record.snapshot, &mut steps).await {
                tracing::warn!(
                    repair_id = record.id,
                    detail,
                    "recovery cannot recreate the User; will retry later"
                );
                return false;
            }
        }
        let failures = restore_memberships(&api, &target, &record.snapshot, &mut steps).await;
        let note = match (source, failures.is_empty()) {
            (CredentialSource::Operator, true) => {
                "recovered with the operator repair credential".to_string()
            }
            (CredentialSource::Caller, true) => "recovered with a caller's credential".to_string(),
            (_, false) => format!(
                "recovered; memberships not restored: {}",
                failures.join(", ")
            ),
        };
        if let Err(e) = self
            .store
            .set_repair_state(record.id, state::RECOVERED, Some(&note))
            .await
        {
            tracing::warn!(repair_id = record.id, error = %e, "cannot close the journal record");
            return false;
        }
        tracing::info!(
            repair_id = record.id,
            credential = ?source,
            user_recreated = !exists,
            "completed an unfinished repair"
        );
        true
    }
}
