//! An operator's repair of one identity, run by the running proxy
//! (`POST /repairs` on the admin plane): the same lock, fence, snapshot,
//! journal and convergence as a fault-triggered repair, with the operator
//! repair credential, recorded as an incident like any repair.
//!
//! What belongs here: the order of those steps for a request that names an
//! identity instead of a failed create, and the refusals that come before
//! any write (no operator credential, a service it cannot read, a policy
//! that forbids the identity, an identity with no User). The steps
//! themselves are `user`'s and `lock`'s; nothing is repeated here.

use http::{HeaderMap, StatusCode};
use serde::Serialize;

use super::Repairer;
use super::credential::{Acting, Source};
use super::lock::{KeyLock, RepairKey, SharedFence};
use super::step::StepKind;
use super::user::{self, RepairTarget};
use crate::routing::Origin;
use crate::store::{Incident, NewRepair, Outcome, RepairState, StepRecord, UserSnapshot};

/// What an operator asks for.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct OperatorRequest {
    pub service_sid: String,
    pub identity: String,
    #[serde(default)]
    pub dry_run: bool,
    /// Create the User when the identity has none (otherwise refused).
    #[serde(default)]
    pub create_missing: bool,
}

/// What an operator repair did (or, dry, would do).
#[derive(Debug, Serialize)]
pub struct OperatorReport {
    pub dry_run: bool,
    pub repair_id: Option<i64>,
    pub incident_id: Option<i64>,
    pub outcome: Option<Outcome>,
    pub snapshot: UserSnapshot,
    pub plan: Vec<String>,
    pub steps: Vec<StepRecord>,
    pub error: Option<String>,
}

/// Why an operator repair was refused before any write.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("service_sid must be a Conversation Service SID (IS + 32 hex)")]
    BadService,
    #[error("identity must be 1 to 256 characters")]
    BadIdentity,
    #[error(
        "no operator repair credential: set TRP_REPAIR_API_KEY_SID, TRP_REPAIR_API_KEY_SECRET and TRP_REPAIR_ACCOUNT_SID (or repair.credentials_file)"
    )]
    NoCredential,
    #[error("cannot read service {service}: {detail}")]
    ServiceUnreadable { service: String, detail: String },
    #[error("{0}")]
    Refused(String),
    #[error(
        "no User `{identity}` in service {service}: nothing to repair, nothing changed (create_missing: true to create it)"
    )]
    NoUser { identity: String, service: String },
    #[error("a repair of this identity is running: {0}")]
    Busy(String),
    #[error("cannot read the User: {0}")]
    Snapshot(String),
}

impl OperatorError {
    /// The admin plane's status for this refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            OperatorError::BadService | OperatorError::BadIdentity => StatusCode::BAD_REQUEST,
            OperatorError::NoCredential => StatusCode::SERVICE_UNAVAILABLE,
            OperatorError::ServiceUnreadable { .. } | OperatorError::Snapshot(_) => {
                StatusCode::BAD_GATEWAY
            }
            OperatorError::Refused(_) => StatusCode::FORBIDDEN,
            OperatorError::NoUser { .. } => StatusCode::NOT_FOUND,
            OperatorError::Busy(_) => StatusCode::CONFLICT,
        }
    }
}

/// What a repair of this snapshot will do, step by step (the dry run's
/// answer, the operator's and the `repair` command's alike); `None` when
/// the identity has no User and `create_missing` is not set: a repair
/// never creates a User that was not there.
pub fn plan(snap: &UserSnapshot, create_missing: bool) -> Option<Vec<String>> {
    match &snap.user_sid {
        None if !create_missing => None,
        None => Some(vec![
            "journal the snapshot (no User)".to_string(),
            "create the User (create_missing), read back".to_string(),
        ]),
        Some(sid) => Some(vec![
            "journal the snapshot".to_string(),
            format!("DELETE the User {sid}"),
            "recreate it with the same fields, read back".to_string(),
            format!(
                "restore its {} membership(s), read back",
                snap.memberships.len()
            ),
        ]),
    }
}

impl Repairer {
    /// [`Repairer::operator_repair`] on the repair runtime, tracked like a
    /// fault's workflow: an operator who hangs up (or a drained worker)
    /// never cuts a repair between two of its steps; shutdown waits for it.
    pub async fn operator_repair_detached(
        self: &std::sync::Arc<Self>,
        origin: Origin,
        req: OperatorRequest,
    ) -> Result<OperatorReport, OperatorError> {
        let me = self.clone();
        let task = self.tasks.spawn_on(
            async move { me.operator_repair(&origin, &req).await },
            &self.rt,
        );
        task.await
            .unwrap_or_else(|_| Err(OperatorError::Busy("the repair task failed".into())))
    }

    /// Repair `req.identity` in `req.service_sid` now, on `origin`, with
    /// the operator credential: fenced and locked like a fault's repair,
    /// journaled, converged and read back, recorded as an incident.
    pub async fn operator_repair(
        &self,
        origin: &Origin,
        req: &OperatorRequest,
    ) -> Result<OperatorReport, OperatorError> {
        if !crate::sid::is_sid(&req.service_sid, "IS") {
            return Err(OperatorError::BadService);
        }
        if req.identity.is_empty() || req.identity.len() > 256 {
            return Err(OperatorError::BadIdentity);
        }
        let credential = self
            .credential
            .as_ref()
            .ok_or(OperatorError::NoCredential)?;
        let mut api = self.api(origin, credential.authorization.clone(), &HeaderMap::new());
        let deadline = api.deadline();
        // The service, read with the credential: proves it may act there,
        // and names the account.
        let svc_path = format!("/v1/Services/{}", req.service_sid);
        let svc = api
            .step(StepKind::FetchConversation, &svc_path, None)
            .await
            .map_err(|e| OperatorError::ServiceUnreadable {
                service: req.service_sid.clone(),
                detail: e.to_string(),
            })?;
        let account_sid = match (svc.status, svc.json()) {
            (StatusCode::OK, Some(v)) => v["account_sid"].as_str().map(str::to_string),
            _ => None,
        }
        .ok_or_else(|| OperatorError::ServiceUnreadable {
            service: req.service_sid.clone(),
            detail: format!("status {}", svc.status),
        })?;
        if let Some(reason) = super::policy::refusal(
            &self.policy(),
            self.store.as_ref(),
            &req.service_sid,
            &req.identity,
        )
        .await
        {
            return Err(OperatorError::Refused(reason));
        }
        let target = RepairTarget {
            account_sid: account_sid.clone(),
            service_base: svc_path,
            service_sid: req.service_sid.clone(),
            identity: req.identity.clone(),
            exclude_conversation: None,
        };
        // Beside fault-triggered repairs: the identity's lock (its open
        // records finished first) and the fence, as theirs. A repair that
        // ran while this request waited for the lock is the repair asked
        // for: none is run on top of it (one delete, not two).
        let asked_at = crate::store::now_rfc3339();
        let busy_at_ask = self.locks.fence().is_raised(&req.identity)
            || (self.store.has_open_repair(&req.identity).await).unwrap_or(false);
        let _lock: Option<KeyLock> = if req.dry_run {
            None
        } else {
            let key = RepairKey {
                account_sid: account_sid.clone(),
                service_sid: req.service_sid.clone(),
                identity: req.identity.clone(),
            };
            let lock = self
                .locks
                .acquire(self.store.as_ref(), &key, deadline)
                .await
                .map_err(|e| OperatorError::Busy(e.to_string()))?;
            if !self
                .finish_open_records(&key, Some(&credential.authorization), deadline)
                .await
            {
                return Err(OperatorError::Busy(
                    "an earlier repair of this identity is unfinished and could not be completed now"
                        .into(),
                ));
            }
            match self
                .store
                .count_repairs_since(&req.service_sid, &req.identity, &asked_at)
                .await
            {
                Ok(0) if !busy_at_ask => {}
                Ok(_) => {
                    return Err(OperatorError::Busy(
                        "a repair of this identity ran while this request waited for its lock: \
                         nothing done (ask again to repair it once more)"
                            .into(),
                    ));
                }
                Err(e) => return Err(OperatorError::Busy(format!("cannot read the journal: {e}"))),
            }
            Some(lock)
        };
        let _fence = match req.dry_run {
            true => None,
            false => SharedFence::raise(&self.store, &req.identity, deadline).await,
        };
        let snap = user::snapshot(&mut api, &target)
            .await
            .map_err(|e| OperatorError::Snapshot(e.to_string()))?;
        let plan = plan(&snap, req.create_missing).ok_or_else(|| OperatorError::NoUser {
            identity: req.identity.clone(),
            service: req.service_sid.clone(),
        })?;
        if req.dry_run {
            return Ok(OperatorReport {
                dry_run: true,
                repair_id: None,
                incident_id: None,
                outcome: None,
                snapshot: snap,
                plan,
                steps: std::mem::take(&mut api.steps),
                error: None,
            });
        }
        let record = NewRepair {
            account_sid: account_sid.clone(),
            credential_user: credential.user.clone(),
            upstream: origin.as_string(),
            service_base: target.service_base.clone(),
            service_sid: target.service_sid.clone(),
            identity: target.identity.clone(),
            snapshot: snap.clone(),
            webhook: Some("false".into()),
        };
        let until = self.memberships_until(deadline);
        let journaled = user::journaled(
            &mut api,
            self.store.as_ref(),
            self.metrics.as_ref(),
            &record,
            &target,
            until,
        )
        .await;
        let (repair_id, error) = match journaled {
            Ok((mut journal, result)) => {
                match &result {
                    Ok(()) => {
                        journal
                            .set(
                                RepairState::Done,
                                Some("repaired by an operator (POST /repairs)"),
                            )
                            .await;
                        // Verified from memory while the journal refused
                        // the news: never converged again from its stale
                        // state (that would undo what the app changes next).
                        if journal.lost {
                            self.closed_despite_journal(
                                journal.id,
                                RepairState::Done,
                                super::journal::VERIFIED,
                            );
                        }
                    }
                    // The delete refused: closed `done`, the User as it was.
                    Err(e) if e.left_the_user_untouched() => {
                        self.close_untouched(&mut journal).await;
                    }
                    // As a fault's repair: a refusal waits for a person
                    // (`needs-operator`), anything else is finished in the
                    // background.
                    Err(e) => {
                        let acting = Acting {
                            authorization: credential.authorization.clone(),
                            user: credential.user.clone(),
                            source: Source::Operator,
                        };
                        self.after_unfinished(journal.id, e, acting, &mut journal)
                            .await;
                    }
                }
                (Some(journal.id), result.err().map(|e| e.to_string()))
            }
            Err(e) => (None, Some(format!("cannot journal the snapshot: {e}"))),
        };
        let outcome = if error.is_none() {
            Outcome::Repaired
        } else {
            Outcome::Failed
        };
        self.metrics.repair_outcome(outcome);
        self.aliases.refresh().await;
        let steps = std::mem::take(&mut api.steps);
        let incident_id = self
            .record_incident(
                Incident {
                    id: 0,
                    at: crate::store::now_rfc3339(),
                    account_sid: Some(account_sid),
                    service_sid: Some(req.service_sid.clone()),
                    conversation_sid: String::new(),
                    identity: Some(req.identity.clone()),
                    outcome,
                    detail: Some(match &error {
                        None => "operator repair (POST /repairs)".to_string(),
                        Some(e) => format!("operator repair (POST /repairs): {e}"),
                    }),
                    repair_id,
                    steps: steps.clone(),
                    request_id: None,
                },
                Some(&req.identity),
            )
            .await;
        Ok(OperatorReport {
            dry_run: false,
            repair_id,
            incident_id,
            outcome: Some(outcome),
            snapshot: snap,
            plan,
            steps,
            error,
        })
    }
}
