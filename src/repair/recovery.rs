//! Finishing journal records that a crash, a deadline or a fault left
//! open. A record is recovered under its identity's repair lock, by
//! whichever comes first:
//!
//! - **start-up** and the **periodic sweep** (`repair.recovery_interval_ms`,
//!   started by [`Repairer::spawn_sweeper`]), with the operator repair
//!   credential, for records of its own account;
//! - the **next request that needs the identity** (a fenced create or User
//!   write, or a new repair of the same identity), with that caller's
//!   credential when its Basic user name ran the record or is its account;
//! - the **background completion** a live repair starts when it has to
//!   answer its caller before it has converged, with the credential it ran
//!   with (held in memory only, never journaled);
//! - any request whose credential matches a waiting record
//!   ([`Repairer::maybe_recover`]).
//!
//! Recovery is [`super::user::converge`] from the record's state, so it is
//! idempotent and verified; a record is closed `recovered` only on what was
//! read back. Twilio refusing a step for good leaves it `needs-operator`.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::HeaderValue;
use http::header::{self, HeaderMap};
use tokio::time::Instant;

use super::Repairer;
use super::credential::{self, Acting};
use super::journal::{UNTOUCHED, VERIFIED};
use super::lock::RepairKey;
use super::step::{Api, StepError, StepKind};
use super::user::{self, ConvergeError, Journal, RepairTarget};
use crate::routing::Origin;
use crate::sid::basic_user;
use crate::store::{NewRepair, RepairRecord, RepairState};

/// How many rounds (one per `repair.recovery_interval_ms`) a live repair's
/// background completion tries before leaving the record to the sweep and
/// the next request.
pub const BACKGROUND_ROUNDS: u32 = 30;

/// Least time between two recovery passes set off by requests.
pub const MIN_CALLER_PASS_INTERVAL: Duration = Duration::from_secs(1);

/// What a record left in `deleting` finds when it reads its original User
/// by SID before going on.
enum Original {
    /// Still there (the delete never landed): snapshotted afresh into this
    /// new record.
    Alive(Box<RepairRecord>),
    /// The SID reads 404: the delete landed, so it is not sent again.
    Gone,
    /// No SID to read, or an answer that settles nothing: the delete is
    /// sent (by SID, so it cannot touch another User).
    Unread,
}

/// Fast-path state: which credential user names have pending repairs, and
/// which records this process verified closed although the journal did not
/// take the news.
#[derive(Default)]
pub struct Recovery {
    waiting: std::sync::RwLock<HashSet<String>>,
    any: AtomicBool,
    pub(super) running: tokio::sync::Mutex<()>,
    /// Verified closed here; the journal write is retried in the
    /// background. Recovery in this process never converges them again
    /// (that would revert whatever the app changed since).
    closed: std::sync::Mutex<HashSet<i64>>,
    last_caller_pass: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Recovery {
    fn is_closed(&self, id: i64) -> bool {
        self.closed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
    }
}

impl Recovery {
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

fn key_of(r: &RepairRecord) -> RepairKey {
    RepairKey {
        account_sid: r.account_sid.clone(),
        service_sid: r.service_sid.clone(),
        identity: r.identity.clone(),
    }
}

impl Repairer {
    /// Reload what is pending: the gauge, the fence's journaled
    /// identities and the credentials that may finish them.
    pub async fn refresh(&self) {
        match self.store.pending_repairs().await {
            Ok(pending) => {
                // Records closed here while the journal lagged are done.
                let pending: Vec<_> = pending
                    .into_iter()
                    .filter(|r| !self.recovery.is_closed(r.id))
                    .collect();
                self.metrics.set_repair_pending(pending.len() as i64);
                self.locks.fence().set_journaled(
                    pending
                        .iter()
                        .filter(|r| r.state.is_open())
                        .map(|r| r.identity.clone()),
                );
                let mut set = self
                    .recovery
                    .waiting
                    .write()
                    .unwrap_or_else(|p| p.into_inner());
                set.clear();
                for r in &pending {
                    set.insert(r.credential_user.clone());
                    set.insert(r.account_sid.clone());
                }
                self.recovery.any.store(!set.is_empty(), Ordering::SeqCst);
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the journal"),
        }
    }

    /// Start-up recovery, then the periodic sweep, on the repair runtime.
    pub fn spawn_sweeper(self: &Arc<Self>) {
        self.aliases
            .spawn_refresh(Arc::downgrade(self), Repairer::aliases);
        let me = self.clone();
        let interval = Duration::from_millis(self.config.recovery_interval_ms);
        self.rt.spawn(async move {
            me.refresh().await;
            let n = me.recover_pending(None).await;
            if n > 0 {
                tracing::info!(completed = n, "start-up recovery finished");
            }
            me.close_cut_rehearsals_later();
            let mut tick = tokio::time::interval(interval);
            tick.tick().await;
            loop {
                tick.tick().await;
                me.refresh().await;
                if me.recovery.any.load(Ordering::SeqCst) {
                    me.recover_pending(None).await;
                }
            }
        });
    }

    /// Check-only incidents a stop left `rehearsal under way` say they were
    /// cut short. Once per start, two workflow deadlines and a second after
    /// it: every rehearsal recorded by then in the second of this start or
    /// before (by this process's predecessor or by another replica) has
    /// ended, since its reads end within one deadline; one UPDATE, not a
    /// sweep per interval.
    fn close_cut_rehearsals_later(self: &Arc<Self>) {
        let started = crate::store::now_rfc3339();
        let wait =
            Duration::from_millis(self.config.workflow_deadline_ms) * 2 + Duration::from_secs(1);
        let me = Arc::downgrade(self);
        self.rt.spawn(async move {
            tokio::time::sleep(wait).await;
            let Some(me) = me.upgrade() else { return };
            match me
                .store
                .close_unfinished_rehearsals(
                    &started,
                    super::rehearsal::UNDER_WAY,
                    super::rehearsal::CUT_SHORT,
                )
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    incidents = n,
                    "check-only rehearsals a stop cut short are marked in their incidents"
                ),
                Err(e) => tracing::warn!(error = %e, "cannot mark the rehearsals a stop cut short"),
            }
        });
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
        {
            let mut last = self
                .recovery
                .last_caller_pass
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < MIN_CALLER_PASS_INTERVAL) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        let me = self.clone();
        let auth = auth.clone();
        // Not tracked for shutdown: the record is journaled, and the next
        // start finishes it.
        self.rt.spawn(async move {
            me.recover_pending(Some(&auth)).await;
        });
    }

    /// Complete every pending record this credential (or the operator's)
    /// may act on. Returns how many were completed.
    pub fn recover_pending<'a>(&'a self, caller: Option<&'a HeaderValue>) -> BoxFuture<'a, usize> {
        Box::pin(async move {
            // One pass at a time. A periodic pass finding one under way
            // skips (the next tick comes); a pass a caller set off waits for
            // it, or that caller's credential would never be used: the
            // caller passes are rate-limited, so no second one may come.
            let _running = match caller {
                Some(_) => self.recovery.running.lock().await,
                None => match self.recovery.running.try_lock() {
                    Ok(running) => running,
                    Err(_) => return 0,
                },
            };
            let pending = match self.store.pending_repairs().await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the journal for recovery");
                    return 0;
                }
            };
            let mut done = 0;
            for record in pending {
                // `needs-operator` waits for an operator; a record verified
                // closed here is not converged again.
                if !record.state.is_open() || self.recovery.is_closed(record.id) {
                    continue;
                }
                let Some(acting) = self.acting_for(&record, caller) else {
                    tracing::warn!(
                        repair_id = record.id,
                        account = %record.account_sid,
                        "unfinished repair waits for a request with credentials for its account"
                    );
                    continue;
                };
                let Ok(Some(_lock)) = self
                    .locks
                    .try_acquire(self.store.as_ref(), &key_of(&record))
                    .await
                else {
                    continue; // a live repair or another replica has it
                };
                if self
                    .recover_locked(record.id, acting, self.deadline())
                    .await
                {
                    done += 1;
                }
            }
            self.refresh().await;
            done
        })
    }

    fn acting_for(&self, r: &RepairRecord, caller: Option<&HeaderValue>) -> Option<Acting> {
        credential::for_record(
            self.credential.as_ref(),
            caller,
            &r.account_sid,
            &r.credential_user,
        )
    }

    /// Re-read a record (its lock held) and, if still open, converge it.
    /// Returns whether recovery is done with it: closed now, or waiting
    /// for an operator (`needs-operator` is never converged: from that
    /// state `user::converge` has no phase left to run, and closing it
    /// `recovered` would claim a User back that nobody read).
    async fn recover_locked(&self, id: i64, acting: Acting, deadline: Instant) -> bool {
        if self.recovery.is_closed(id) {
            return true;
        }
        let record = match self.store.get_repair(id).await {
            Ok(Some(r)) if r.state.is_open() => r,
            Ok(_) => return true, // finished, or refused for good, meanwhile
            Err(e) => {
                tracing::warn!(repair_id = id, error = %e, "cannot read the journal record");
                return false;
            }
        };
        match self.converge_record(&record, &acting, deadline).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(repair_id = id, error = %e, "unfinished repair not completed yet");
                false
            }
        }
    }

    /// Converge a record from its state and close it `recovered`, within
    /// `deadline`.
    ///
    /// A record still in `deleting` whose original User is alive (the
    /// delete never landed) is re-snapshotted first: that User is the
    /// truth now, and a stale snapshot would undo what changed since. The
    /// new snapshot goes into a new record, which this one points to.
    async fn converge_record(
        &self,
        record: &RepairRecord,
        acting: &Acting,
        deadline: Instant,
    ) -> Result<(), ConvergeError> {
        let Some(origin) = Origin::parse(&record.upstream) else {
            tracing::error!(
                repair_id = record.id,
                "journal record names an invalid upstream"
            );
            return Err(ConvergeError::Delete(StepError::Deadline {
                step: StepKind::DeleteUser,
            }));
        };
        let webhook = record
            .webhook
            .as_deref()
            .and_then(|w| HeaderValue::from_str(w).ok());
        let mut api = self
            .api_with(&origin, acting.authorization.clone(), webhook)
            .limit_deadline(deadline);
        let target = RepairTarget {
            account_sid: record.account_sid.clone(),
            service_base: record.service_base.clone(),
            service_sid: record.service_sid.clone(),
            identity: record.identity.clone(),
            exclude_conversation: None,
        };
        let mut record = record.clone();
        let mut from = record.state;
        let mut delete_read_back = false;
        if record.state == RepairState::Deleting {
            match self.resnapshot(&mut api, &target, &record).await? {
                Original::Alive(fresh) => record = *fresh,
                Original::Gone => {
                    from = RepairState::Recreating;
                    delete_read_back = true;
                }
                Original::Unread => {}
            }
        }
        let mut journal = Journal::new(self.store.as_ref(), &self.metrics, record.id);
        if delete_read_back {
            // The delete landed before the process died: its SID reads
            // 404. Sending it again would be a second DELETE of that User.
            journal
                .set(
                    RepairState::Recreating,
                    Some("the User's delete had landed (read back): not sent again"),
                )
                .await;
        }
        let until = api.deadline();
        let result = user::converge(
            &mut api,
            &target,
            &record.snapshot,
            from,
            &mut journal,
            until,
        )
        .await;
        match result {
            Ok(()) => {
                let note = format!("recovered with {}", acting.source.describe());
                journal.set(RepairState::Recovered, Some(&note)).await;
                if journal.lost {
                    self.closed_despite_journal(record.id, RepairState::Recovered, VERIFIED);
                }
                tracing::info!(
                    repair_id = record.id,
                    credential = acting.source.describe(),
                    "completed an unfinished repair"
                );
                Ok(())
            }
            // A re-snapshotted User whose delete Twilio refused: as it was.
            Err(e) if e.left_the_user_untouched() => {
                self.close_untouched(&mut journal).await;
                tracing::warn!(repair_id = record.id, error = %e, "the delete was refused; the User was left as it was");
                Ok(())
            }
            Err(e) => {
                if e.is_refusal() {
                    journal
                        .set(RepairState::NeedsOperator, Some(&e.to_string()))
                        .await;
                }
                Err(e)
            }
        }
    }

    /// Read the record's original User by its SID. Still there: snapshot
    /// it afresh into a new record (the old one is closed, pointing to
    /// it). A 404 says the delete landed.
    async fn resnapshot(
        &self,
        api: &mut Api,
        target: &RepairTarget,
        record: &RepairRecord,
    ) -> Result<Original, ConvergeError> {
        let Some(sid) = &record.snapshot.user_sid else {
            return Ok(Original::Unread);
        };
        let path = super::request::user_path(&record.service_base, sid);
        match Self::read_original(api, &path).await? {
            Some(true) => {}
            Some(false) => return Ok(Original::Gone),
            None => return Ok(Original::Unread),
        }
        let snapshot = user::snapshot(api, target)
            .await
            .map_err(ConvergeError::Resnapshot)?;
        // The killed process's DELETE may still be on the wire and land
        // while the snapshot reads: a snapshot of another User (or of
        // none), or one whose memberships were listed as the User went,
        // is not the truth. The SID read again settles it; a delete that
        // landed meanwhile leaves the journaled snapshot in force.
        if snapshot.user_sid.as_deref() != Some(sid.as_str()) {
            return Ok(Original::Gone);
        }
        match Self::read_original(api, &path).await? {
            Some(true) => {}
            Some(false) => return Ok(Original::Gone),
            None => return Ok(Original::Unread),
        }
        let new = NewRepair {
            account_sid: record.account_sid.clone(),
            credential_user: record.credential_user.clone(),
            upstream: record.upstream.clone(),
            service_base: record.service_base.clone(),
            service_sid: record.service_sid.clone(),
            identity: record.identity.clone(),
            snapshot,
            webhook: record.webhook.clone(),
        };
        // One transaction: were the new record written and the old one
        // left open (a refused write, a crash in between), two snapshots of
        // one identity would be open and the older could be converged
        // after the newer; were the old one closed first, a late DELETE
        // landing after a crash in between would find no record at all.
        let id = self
            .store
            .supersede_repair(
                record.id,
                "the User was never deleted; re-snapshotted as record",
                &new,
            )
            .await
            .map_err(ConvergeError::Journal)?;
        tracing::info!(
            old = record.id,
            new = id,
            "original User still there: re-snapshotted before the delete"
        );
        let mut fresh = record.clone();
        fresh.id = id;
        fresh.snapshot = new.snapshot;
        Ok(Original::Alive(Box::new(fresh)))
    }

    /// Read the original User by SID: whether it is there (200) or gone
    /// (404); `None` for an answer that settles neither.
    async fn read_original(api: &mut Api, path: &str) -> Result<Option<bool>, ConvergeError> {
        let read = api
            .step(StepKind::FetchUser, path, None)
            .await
            .map_err(ConvergeError::Delete)?;
        Ok(match read.status {
            http::StatusCode::OK => Some(true),
            http::StatusCode::NOT_FOUND => Some(false),
            _ => None,
        })
    }

    /// Close a record whose User's DELETE Twilio refused
    /// ([`ConvergeError::left_the_user_untouched`]) `done`: the User is as
    /// it was. Were that write lost, the record would be converged again
    /// from `deleting` over the untouched User: this process never does.
    pub(super) async fn close_untouched(&self, journal: &mut Journal<'_>) {
        journal.set(RepairState::Done, Some(UNTOUCHED)).await;
        if journal.lost {
            self.closed_despite_journal(journal.id, RepairState::Done, UNTOUCHED);
        }
    }

    /// A repair verified complete whose journal write did not land: never
    /// converge it again in this process, and keep retrying the write.
    pub(super) fn closed_despite_journal(&self, id: i64, state: RepairState, why: &'static str) {
        self.recovery
            .closed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
        let Some(me) = self.me.upgrade() else { return };
        let interval = Duration::from_millis(self.config.recovery_interval_ms);
        self.rt.spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let note = format!("{why}; written once the journal took writes again");
                if me.store.set_repair_state(id, state, Some(&note)).await.is_ok() {
                    tracing::info!(repair_id = id, state = %state, "journal caught up with a repair finished from memory");
                    me.refresh().await;
                    return;
                }
            }
        });
    }

    /// Under the lock of `key` (held by the caller, whose account Twilio
    /// confirmed is the key's): finish every open record of that key before
    /// a new repair snapshots the User. Returns
    /// false when one is left open (a new repair must not start over it).
    pub(super) async fn finish_open_records(
        &self,
        key: &RepairKey,
        caller: Option<&HeaderValue>,
        deadline: Instant,
    ) -> bool {
        let pending = match self.store.pending_repairs().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the journal");
                return false;
            }
        };
        let mut all = true;
        let mine = pending
            .iter()
            .filter(|r| key_of(r) == *key && !self.recovery.is_closed(r.id));
        let mut any = false;
        for record in mine {
            any = true;
            // A record waiting for an operator blocks new repairs of the
            // identity: repairing over it could lose what it holds. The
            // caller's account is proven here (Twilio showed it the
            // conversation of this key's account), so any key of it may act.
            let acting = credential::for_record(
                self.credential.as_ref(),
                None,
                &record.account_sid,
                &record.credential_user,
            )
            .or_else(|| {
                caller.map(|c| Acting {
                    authorization: c.clone(),
                    user: basic_user(c).unwrap_or_default(),
                    source: credential::Source::Caller,
                })
            });
            let closed = match (record.state.is_open(), acting) {
                (true, Some(acting)) => self.recover_locked(record.id, acting, deadline).await,
                _ => false,
            };
            all &= closed;
        }
        if any {
            self.refresh().await;
        }
        all
    }

    /// For a fenced request: finish the open records of this identity that
    /// its caller (or the operator) may act on, waiting for their locks
    /// until `deadline`.
    pub(super) async fn recover_identity(
        &self,
        identity: &str,
        caller: Option<&HeaderValue>,
        deadline: Instant,
    ) {
        let Ok(pending) = self.store.pending_repairs().await else {
            return;
        };
        let mut any = false;
        let open = pending.iter().filter(|r| {
            r.identity == identity && r.state.is_open() && !self.recovery.is_closed(r.id)
        });
        for record in open {
            any = true;
            // Wait for the record's lock in any case: a live repair (of
            // this or another replica) holds it until it is done.
            match self
                .locks
                .acquire(self.store.as_ref(), &key_of(record), deadline)
                .await
            {
                Ok(_lock) => {
                    if let Some(acting) = self.acting_for(record, caller) {
                        self.recover_locked(record.id, acting, deadline).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(repair_id = record.id, error = %e, "cannot lock for recovery")
                }
            }
        }
        if any {
            self.refresh().await;
        }
    }

    /// A live repair had to answer before it converged: record why, and
    /// keep completing it in the background with the same credential.
    pub(super) async fn after_unfinished(
        &self,
        id: i64,
        error: &ConvergeError,
        acting: Acting,
        journal: &mut Journal<'_>,
    ) {
        if error.is_refusal() {
            journal
                .set(RepairState::NeedsOperator, Some(&error.to_string()))
                .await;
        }
        self.refresh().await;
        let Some(me) = self.me.upgrade() else { return };
        let interval = Duration::from_millis(self.config.recovery_interval_ms)
            .min(Duration::from_millis(self.config.workflow_deadline_ms));
        // Not tracked for shutdown (its record is journaled, and the next
        // start finishes it): a drain need not wait out its rounds.
        self.rt.spawn(async move {
            for _ in 0..BACKGROUND_ROUNDS {
                tokio::time::sleep(interval).await;
                let Ok(Some(record)) = me.store.get_repair(id).await else {
                    continue;
                };
                if !record.state.is_open() {
                    break;
                }
                let Ok(Some(_lock)) = me
                    .locks
                    .try_acquire(me.store.as_ref(), &key_of(&record))
                    .await
                else {
                    continue;
                };
                if me.recover_locked(id, acting.clone(), me.deadline()).await {
                    break;
                }
            }
            me.refresh().await;
        });
    }
}
