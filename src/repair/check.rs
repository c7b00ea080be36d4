//! The checks that decide whether the workflow acts at all: did the create
//! land after all (the "ghost" case), and is the 404 genuine?
//!
//! Both run with the caller's own credential (see [`super::credential`]),
//! and both believe only what they can read: a check counts when Twilio's
//! answer is the JSON of the very resource asked for (a participant with
//! this identity, a conversation with a SID); an HTML page or an empty body
//! with a 200 is a failed step, never a made-up 201.

use bytes::Bytes;
use http::header::HeaderValue;
use http::{HeaderMap, StatusCode};
use std::time::Duration;
use tokio::time::Instant;

use super::request::{CreatePath, Who, is_fault_code};
use super::step::{Api, StepError, StepKind, past};
use crate::backoff::Backoff;
use crate::twilio_api::{ApiResponse, encode_segment};

/// Most pages of participants scanned to find a messaging binding.
pub const MAX_LIST_PAGES: usize = 50;

/// What the participant check found.
pub enum Landed {
    /// The participant exists: Twilio's own JSON.
    Found(ApiResponse),
    Missing,
}

/// Why a check could not tell.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Step(#[from] StepError),
    #[error("{0} answered 200 with a body that is not the resource asked for")]
    NotTheResource(StepKind),
}

impl CheckError {
    /// The step that failed.
    pub fn step(&self) -> StepKind {
        match self {
            CheckError::Step(e) => e.step(),
            CheckError::NotTheResource(step) => *step,
        }
    }
}

fn is_participant_of(v: &serde_json::Value, who: &Who) -> bool {
    let sid_ok = v
        .get("sid")
        .and_then(|s| s.as_str())
        .is_some_and(|s| s.starts_with("MB"));
    let who_ok = match who {
        Who::Identity(i) => v.get("identity").and_then(|x| x.as_str()) == Some(i.as_str()),
        Who::Binding { address, .. } => {
            v.pointer("/messaging_binding/address")
                .and_then(|x| x.as_str())
                == Some(address.as_str())
        }
    };
    sid_ok && who_ok
}

/// Does the participant the create asked for exist?
pub async fn participant(
    api: &mut Api,
    path: &CreatePath,
    who: &Who,
) -> Result<Landed, CheckError> {
    match who {
        Who::Identity(identity) => {
            let p = format!("{}/{}", path.participants_path(), encode_segment(identity));
            let r = api.step(StepKind::FetchParticipant, &p, None).await?;
            if r.status == StatusCode::NOT_FOUND {
                return Ok(Landed::Missing);
            }
            if r.json().is_some_and(|v| is_participant_of(&v, who)) {
                Ok(Landed::Found(r))
            } else {
                Err(CheckError::NotTheResource(StepKind::FetchParticipant))
            }
        }
        Who::Binding {
            address,
            proxy_address,
        } => find_binding(api, path, who, address, proxy_address.as_deref()).await,
    }
}

async fn find_binding(
    api: &mut Api,
    path: &CreatePath,
    who: &Who,
    address: &str,
    proxy_address: Option<&str>,
) -> Result<Landed, CheckError> {
    let mut next = Some(format!("{}?PageSize=100", path.participants_path()));
    let mut pages = 0;
    while let Some(p) = next.take() {
        pages += 1;
        if pages > MAX_LIST_PAGES {
            break;
        }
        let page = api.step(StepKind::ListParticipants, &p, None).await?;
        let v = page
            .json()
            .filter(|v| v.get("participants").is_some_and(|l| l.is_array()))
            .ok_or(CheckError::NotTheResource(StepKind::ListParticipants))?;
        for p in v["participants"].as_array().into_iter().flatten() {
            let b = p.get("messaging_binding");
            let addr = b.and_then(|b| b.get("address")).and_then(|a| a.as_str());
            let proxy = b
                .and_then(|b| b.get("proxy_address"))
                .and_then(|a| a.as_str());
            if addr == Some(address)
                && (proxy_address.is_none() || proxy == proxy_address)
                && is_participant_of(p, who)
            {
                return Ok(Landed::Found(ApiResponse {
                    status: StatusCode::OK,
                    content_type: Some(HeaderValue::from_static("application/json")),
                    body: Bytes::from(serde_json::to_vec(p).unwrap_or_default()),
                    request_id: page.request_id.clone(),
                    retry_after: None,
                }));
            }
        }
        next = v
            .pointer("/meta/next_page_url")
            .and_then(|u| u.as_str())
            .and_then(|u| u.parse::<http::Uri>().ok())
            .and_then(|u| u.path_and_query().map(|pq| pq.as_str().to_string()));
    }
    Ok(Landed::Missing)
}

/// The conversation the create names, as the caller may see it.
pub struct Conversation {
    pub account_sid: String,
    pub service_sid: String,
}

/// Is the 404 genuine? `Ok(None)` when the conversation (or its service)
/// does not exist for this caller.
pub async fn conversation(
    api: &mut Api,
    path: &CreatePath,
) -> Result<Option<Conversation>, CheckError> {
    let r = api
        .step(StepKind::FetchConversation, &path.conversation_path(), None)
        .await?;
    if r.status == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let v = r
        .json()
        .filter(|v| {
            v.get("sid")
                .and_then(|s| s.as_str())
                .is_some_and(|s| s.starts_with("CH"))
        })
        .ok_or(CheckError::NotTheResource(StepKind::FetchConversation))?;
    let account_sid = v
        .get("account_sid")
        .and_then(|v| v.as_str())
        .filter(|s| s.starts_with("AC"))
        .ok_or(CheckError::NotTheResource(StepKind::FetchConversation))?
        .to_string();
    let service_sid = v
        .get("chat_service_sid")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .or_else(|| path.service_sid.clone())
        .unwrap_or_default();
    Ok(Some(Conversation {
        account_sid,
        service_sid,
    }))
}

/// What posting the caller's create came to.
pub enum Posted {
    /// Twilio answered 201: its participant JSON.
    Created(ApiResponse),
    /// The answer left it open (20404, 5xx, reset) and the read-back found
    /// the participant.
    Found(ApiResponse),
    /// Twilio answered 409 (the participant exists) and a read within the
    /// read-lag grace saw it: its JSON.
    Exists(ApiResponse),
    /// Twilio answered 409, and no read within the grace saw the
    /// participant: Twilio's 409, to answer unchanged.
    Conflict(ApiResponse),
    /// Still 20404, and the read-back found nothing.
    Missing,
}

/// POST the caller's create (its own body and end-to-end headers), and read
/// back whether it landed whenever the answer leaves that open: a create
/// that may have reached Twilio is never posted again before a read says
/// it did not land. A 409 is proof that the participant exists: it is
/// never [`Posted::Missing`] (see [`after_conflict`]). Bounded by the
/// workflow deadline.
pub async fn create(
    api: &mut Api,
    kind: StepKind,
    path: &CreatePath,
    headers: &HeaderMap,
    body: &Bytes,
    who: &Who,
    read_lag_grace: Duration,
) -> Result<Posted, CheckError> {
    let participants = path.participants_path();
    // Re-reads after an unsure create, `retry_initial_backoff_ms` apart.
    let first = api.policy().initial_backoff;
    let mut backoff = Backoff::new(first, first).upward_jitter();
    loop {
        let unsure = match api.replay(kind, &participants, headers, body.clone()).await {
            Ok(x) if x.status == StatusCode::CREATED => return Ok(Posted::Created(x)),
            Ok(x) if x.status == StatusCode::CONFLICT => {
                return Ok(after_conflict(api, path, who, x, read_lag_grace).await);
            }
            Ok(x) if x.status == StatusCode::NOT_FOUND && !is_fault_code(x.code()) => {
                return Err(StepError::Refused {
                    step: kind,
                    status: x.status,
                    code: x.code(),
                }
                .into());
            }
            // 20404: look once.
            Ok(_) => false,
            // 5xx or no answer: look, and post again only if it is not there.
            Err(StepError::Unsure { .. }) => true,
            Err(e) => return Err(e.into()),
        };
        match participant(api, path, who).await? {
            Landed::Found(p) => return Ok(Posted::Found(p)),
            Landed::Missing if !unsure => return Ok(Posted::Missing),
            Landed::Missing => {
                let limit = api.deadline();
                backoff.wait(limit).await.map_err(past(kind))?;
            }
        }
    }
}

/// Twilio answered the create `409`: the participant exists, whatever a
/// read says. Twilio's reads may lag its writes, so a 404 read contradicts
/// the write's answer and is not believed: the participant is read again
/// with the one backoff ([`Backoff::within`] the grace, and within the
/// workflow deadline) until it is visible. Never seen (or a read that
/// fails): Twilio's `409`, unchanged. Nothing here leads to a delete.
pub async fn after_conflict(
    api: &mut Api,
    path: &CreatePath,
    who: &Who,
    conflict: ApiResponse,
    grace: Duration,
) -> Posted {
    let limit = (Instant::now() + grace).min(api.deadline());
    let mut backoff = Backoff::within(grace).upward_jitter();
    // The read just before the create said 404 (or there was none): wait
    // before the first read.
    while backoff.wait_to(limit).await.is_ok() {
        match participant(api, path, who).await {
            Ok(Landed::Found(p)) => return Posted::Exists(p),
            Ok(Landed::Missing) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "reading a participant Twilio says exists failed");
                break;
            }
        }
    }
    Posted::Conflict(conflict)
}
