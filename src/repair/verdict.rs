//! What the workflow decides and what it is asked: the one early exit
//! ([`Verdict`]) and the intercepted create ([`CreateRequest`]), shared by
//! [`super::intercept`] (which turns a verdict into the response) and
//! [`super::workflow`] (which reaches it).

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};

use super::check::Conversation;
use super::lock::LockError;
use super::request::CreatePath;
use super::request::RepairTarget;
use crate::routing::Origin;
use crate::store::{Incident, NewRepair, Outcome, SidAlias, StepRecord, UserSnapshot, now_rfc3339};
use crate::twilio_api::ApiResponse;

/// What the caller is answered.
pub enum Answer {
    /// Twilio's participant JSON, answered as 201.
    Created(Box<ApiResponse>),
    /// Twilio's 409 "participant already exists" (the participant existed
    /// before the request).
    AlreadyExists,
    /// Twilio's own 409 answer to the create, unchanged: the participant
    /// exists, but no read showed it within `repair.read_lag_grace_ms`.
    Conflict(Box<ApiResponse>),
    /// The original 404, untouched.
    Original,
}

/// The workflow's one way out: the answer, the outcome and why.
pub struct Verdict {
    pub answer: Answer,
    pub outcome: Outcome,
    pub detail: Option<String>,
    pub repair_id: Option<i64>,
    /// The SIDs this repair changed, told to the caller in the answer's
    /// `X-Repair-User-Sid` and `X-Repair-Sid-Alias` headers.
    pub aliases: Vec<SidAlias>,
}

impl Verdict {
    pub fn original(outcome: Outcome, detail: impl Into<Option<String>>) -> Verdict {
        Verdict {
            answer: Answer::Original,
            outcome,
            detail: detail.into(),
            repair_id: None,
            aliases: Vec::new(),
        }
    }
    pub fn failed(e: impl std::fmt::Display) -> Verdict {
        Verdict::original(Outcome::Failed, Some(e.to_string()))
    }
    /// Twilio's answer after all (a participant found or created).
    pub fn answered(answer: Answer, outcome: Outcome) -> Verdict {
        Verdict {
            answer,
            outcome,
            detail: None,
            repair_id: None,
            aliases: Vec::new(),
        }
    }
    /// The same verdict, naming the journal record it left.
    pub fn of_repair(mut self, repair_id: i64) -> Verdict {
        self.repair_id = Some(repair_id);
        self
    }
}

/// One intercepted create: what it asked and where.
pub struct CreateRequest {
    pub path: CreatePath,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub origin: Origin,
    /// The request's 429 shield (`crate::proxy::Settings`, loaded when it
    /// arrived): its repair's calls take their slots here, so a reload
    /// meanwhile changes nothing for it.
    pub shield: Option<std::sync::Arc<crate::shield::Shield>>,
    pub requested_at: time::OffsetDateTime,
    /// The `Twilio-Request-Id` of the 404/20404 the create got.
    pub original_request_id: Option<String>,
}

impl CreateRequest {
    /// The caller's `Authorization` header, as sent.
    pub fn authorization(&self) -> Option<&HeaderValue> {
        self.headers.get(http::header::AUTHORIZATION)
    }

    /// What a repair of `identity` in the conversation `conv` touches.
    pub fn repair_target(&self, conv: &Conversation, identity: &str) -> RepairTarget {
        RepairTarget {
            account_sid: conv.account_sid.clone(),
            service_base: self.path.service_base(),
            service_sid: conv.service_sid.clone(),
            identity: identity.to_string(),
            exclude_conversation: Some(self.path.conversation.clone()),
        }
    }

    /// The journal record of a repair of `target` by `credential_user`.
    pub fn new_repair(
        &self,
        target: &RepairTarget,
        credential_user: String,
        snapshot: UserSnapshot,
    ) -> NewRepair {
        NewRepair {
            account_sid: target.account_sid.clone(),
            credential_user,
            upstream: self.origin.as_string(),
            service_base: target.service_base.clone(),
            service_sid: target.service_sid.clone(),
            identity: target.identity.clone(),
            snapshot,
            webhook: self.webhook(),
        }
    }

    /// The caller's `X-Twilio-Webhook-Enabled` choice, journaled so that
    /// recovery's calls carry it too.
    pub fn webhook(&self) -> Option<String> {
        self.headers
            .get("x-twilio-webhook-enabled")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

impl From<LockError> for Verdict {
    /// A lock that cannot be had: a timeout fails the create; a store that
    /// cannot lock makes the workflow check-only.
    fn from(e: LockError) -> Verdict {
        match e {
            LockError::Timeout => Verdict::failed(e),
            LockError::Store(e) => {
                tracing::warn!(error = %e, "store unavailable: running check-only");
                Verdict::original(
                    Outcome::Disabled,
                    Some("store unavailable: check-only, the User was not touched".into()),
                )
            }
        }
    }
}

impl CreateRequest {
    /// The incident of this create: what the verdict says, the identity as
    /// it may be recorded, the conversation's (account, service) once read,
    /// and every step's record.
    pub fn incident(
        &self,
        verdict: &Verdict,
        identity: Option<String>,
        conversation: Option<(String, String)>,
        steps: Vec<StepRecord>,
    ) -> Incident {
        let (account_sid, service_sid) = match conversation {
            Some((account, service)) => (Some(account), Some(service)),
            None => (None, self.path.service_sid.clone()),
        };
        Incident {
            id: 0,
            at: now_rfc3339(),
            account_sid,
            service_sid,
            conversation_sid: self.path.conversation.clone(),
            identity,
            outcome: verdict.outcome,
            detail: verdict.detail.clone(),
            repair_id: verdict.repair_id,
            steps,
            request_id: self.original_request_id.clone(),
        }
    }
}
