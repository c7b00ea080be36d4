//! Twilio's published workaround, journaled: snapshot the User and its
//! memberships, delete it, recreate it with the same identity, friendly
//! name, attributes and role, and put back the memberships the delete
//! removed. Each state is written to the journal *before* the step it names,
//! so an interruption at any point leaves a record that recovery completes.

use http::{Method, StatusCode};

use crate::store::{Membership, NewRepair, Step, Store, UserSnapshot, state};
use crate::twilio_api::{ApiResponse, TwilioApi, encode_segment, form};

/// Most pages of User Conversations read for the snapshot.
pub const MAX_MEMBERSHIP_PAGES: usize = 20;

/// Which User to repair, and where.
#[derive(Debug, Clone)]
pub struct RepairTarget {
    pub account_sid: String,
    pub credential_user: String,
    pub upstream: String,
    /// `/v1/Services/IS...` or `/v1`.
    pub service_base: String,
    pub service_sid: String,
    pub identity: String,
    /// The conversation whose create is being repaired (not restored here:
    /// the replayed create puts the participant there).
    pub exclude_conversation: Option<String>,
}

#[derive(Debug)]
pub struct RepairReport {
    pub repair_id: Option<i64>,
    pub snapshot: UserSnapshot,
}

#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error("cannot read the User before repairing: {0}")]
    Snapshot(String),
    #[error("cannot write the journal, so the User was not touched: {0}")]
    Journal(String),
    #[error("deleting the User failed; the User was left as it was: {detail}")]
    Delete { repair_id: i64, detail: String },
    #[error(
        "recreating the User failed; the journal record {repair_id} is pending for recovery: {detail}"
    )]
    Recreate { repair_id: i64, detail: String },
}

impl RepairError {
    pub fn repair_id(&self) -> Option<i64> {
        match self {
            RepairError::Delete { repair_id, .. } | RepairError::Recreate { repair_id, .. } => {
                Some(*repair_id)
            }
            _ => None,
        }
    }
}

fn push(
    steps: &mut Vec<Step>,
    name: &str,
    r: &Result<ApiResponse, crate::twilio_api::ApiError>,
    ok: bool,
) {
    steps.push(Step {
        step: name.to_string(),
        status: r.as_ref().ok().map(|r| r.status.as_u16()),
        ok,
        twilio_request_id: r.as_ref().ok().and_then(|r| r.request_id.clone()),
    });
}

fn status_of(r: &Result<ApiResponse, crate::twilio_api::ApiError>) -> String {
    match r {
        Ok(x) => format!("status {}", x.status.as_u16()),
        Err(e) => e.to_string(),
    }
}

fn str_field(v: &serde_json::Value, k: &str) -> Option<String> {
    v.get(k).and_then(|x| x.as_str()).map(str::to_string)
}

/// Read the User and its memberships.
pub async fn snapshot(
    api: &TwilioApi,
    target: &RepairTarget,
    steps: &mut Vec<Step>,
) -> Result<UserSnapshot, RepairError> {
    let user_path = format!(
        "{}/Users/{}",
        target.service_base,
        encode_segment(&target.identity)
    );
    let r = api.call(Method::GET, &user_path, None).await;
    let ok = matches!(&r, Ok(x) if x.status == StatusCode::OK || x.status == StatusCode::NOT_FOUND);
    push(steps, "fetch-user", &r, ok);
    let user = match &r {
        Ok(x) if x.status == StatusCode::OK => x.json().unwrap_or_default(),
        Ok(x) if x.status == StatusCode::NOT_FOUND => {
            return Ok(UserSnapshot {
                user_sid: None,
                identity: target.identity.clone(),
                friendly_name: None,
                attributes: None,
                role_sid: None,
                memberships: Vec::new(),
            });
        }
        _ => return Err(RepairError::Snapshot(status_of(&r))),
    };
    let mut memberships = Vec::new();
    let mut next = Some(format!("{user_path}/Conversations?PageSize=50"));
    let mut pages = 0;
    while let Some(path) = next.take() {
        pages += 1;
        if pages > MAX_MEMBERSHIP_PAGES {
            return Err(RepairError::Snapshot(
                "too many User Conversations pages".into(),
            ));
        }
        let r = api.call(Method::GET, &path, None).await;
        let ok = matches!(&r, Ok(x) if x.status == StatusCode::OK);
        push(steps, "list-user-conversations", &r, ok);
        let page = match &r {
            Ok(x) if x.status == StatusCode::OK => x.json().unwrap_or_default(),
            _ => return Err(RepairError::Snapshot(status_of(&r))),
        };
        for c in page
            .get("conversations")
            .and_then(|l| l.as_array())
            .into_iter()
            .flatten()
        {
            let Some(conversation_sid) = str_field(c, "conversation_sid") else {
                continue;
            };
            if target.exclude_conversation.as_deref() == Some(conversation_sid.as_str()) {
                continue;
            }
            let participant_sid = str_field(c, "participant_sid");
            // The participant's own fields (attributes, role, creation date).
            let mut m = Membership {
                conversation_sid: conversation_sid.clone(),
                participant_sid: participant_sid.clone(),
                attributes: None,
                role_sid: None,
                date_created: None,
            };
            if let Some(mb) = &participant_sid {
                let p = api
                    .call(
                        Method::GET,
                        &format!(
                            "{}/Conversations/{}/Participants/{}",
                            target.service_base,
                            encode_segment(&conversation_sid),
                            encode_segment(mb)
                        ),
                        None,
                    )
                    .await;
                let ok = matches!(&p, Ok(x) if x.status == StatusCode::OK);
                push(steps, "fetch-membership", &p, ok);
                match &p {
                    Ok(x) if x.status == StatusCode::OK => {
                        let v = x.json().unwrap_or_default();
                        m.attributes = str_field(&v, "attributes");
                        m.role_sid = str_field(&v, "role_sid");
                        m.date_created = str_field(&v, "date_created");
                    }
                    _ => return Err(RepairError::Snapshot(status_of(&p))),
                }
            }
            memberships.push(m);
        }
        next = page
            .pointer("/meta/next_page_url")
            .and_then(|u| u.as_str())
            .and_then(|u| u.parse::<http::Uri>().ok())
            .and_then(|u| u.path_and_query().map(|pq| pq.as_str().to_string()));
    }
    Ok(UserSnapshot {
        user_sid: str_field(&user, "sid"),
        identity: target.identity.clone(),
        friendly_name: str_field(&user, "friendly_name"),
        attributes: str_field(&user, "attributes"),
        role_sid: str_field(&user, "role_sid"),
        memberships,
    })
}

/// Snapshot, journal, delete, recreate, restore. On success the journal
/// record is left in `replaying` for the caller to close (or closed here
/// when there is nothing to replay).
pub async fn repair_user(
    api: &TwilioApi,
    store: &dyn Store,
    target: &RepairTarget,
    steps: &mut Vec<Step>,
) -> Result<RepairReport, RepairError> {
    let snap = snapshot(api, target, steps).await?;
    let repair_id = store
        .insert_repair(&NewRepair {
            account_sid: target.account_sid.clone(),
            credential_user: target.credential_user.clone(),
            upstream: target.upstream.clone(),
            service_base: target.service_base.clone(),
            service_sid: target.service_sid.clone(),
            identity: target.identity.clone(),
            snapshot: snap.clone(),
            webhook: None,
        })
        .await
        .map_err(|e| RepairError::Journal(e.to_string()))?;
    tracing::info!(
        repair_id,
        memberships = snap.memberships.len(),
        "journaled User snapshot; deleting the User"
    );

    let user_path = format!(
        "{}/Users/{}",
        target.service_base,
        encode_segment(&target.identity)
    );
    let r = api.call(Method::DELETE, &user_path, None).await;
    let deleted = matches!(&r, Ok(x) if x.status == StatusCode::NO_CONTENT || x.status == StatusCode::NOT_FOUND);
    push(steps, "delete-user", &r, deleted);
    if !deleted {
        // Did the delete land anyway? If the User is still there, nothing
        // was lost: close the record. If unsure, leave it for recovery.
        let check = api.call(Method::GET, &user_path, None).await;
        if matches!(&check, Ok(x) if x.status == StatusCode::OK) {
            let _ = store
                .set_repair_state(
                    repair_id,
                    state::DONE,
                    Some("delete failed; User untouched"),
                )
                .await;
            return Err(RepairError::Delete {
                repair_id,
                detail: status_of(&r),
            });
        }
    }
    journal(store, repair_id, state::RECREATING, None).await?;
    recreate(api, target, &snap, steps)
        .await
        .map_err(|detail| RepairError::Recreate { repair_id, detail })?;
    journal(store, repair_id, state::RESTORING, None).await?;
    let failures = restore_memberships(api, target, &snap, steps).await;
    let note = (!failures.is_empty())
        .then(|| format!("memberships not restored: {}", failures.join(", ")));
    journal(store, repair_id, state::DONE, note.as_deref()).await?;
    Ok(RepairReport {
        repair_id: Some(repair_id),
        snapshot: snap,
    })
}

async fn journal(
    store: &dyn Store,
    id: i64,
    s: &str,
    note: Option<&str>,
) -> Result<(), RepairError> {
    store
        .set_repair_state(id, s, note)
        .await
        .map_err(|e| RepairError::Journal(e.to_string()))
}

/// Recreate the User from the snapshot. A 409 (50201) means it is back
/// already. A 5xx or timeout may have landed: look before trying again.
pub async fn recreate(
    api: &TwilioApi,
    target: &RepairTarget,
    snap: &UserSnapshot,
    steps: &mut Vec<Step>,
) -> Result<(), String> {
    let mut pairs: Vec<(&str, &str)> = vec![("Identity", &snap.identity)];
    if let Some(v) = &snap.friendly_name {
        pairs.push(("FriendlyName", v));
    }
    if let Some(v) = &snap.attributes {
        pairs.push(("Attributes", v));
    }
    if let Some(v) = &snap.role_sid {
        pairs.push(("RoleSid", v));
    }
    let body = form(&pairs);
    let users = format!("{}/Users", target.service_base);
    let user_path = format!("{users}/{}", encode_segment(&snap.identity));
    let mut last = String::new();
    for _ in 0..4 {
        let r = api.call(Method::POST, &users, Some(&body)).await;
        let ok = matches!(&r, Ok(x) if x.status == StatusCode::CREATED || x.status == StatusCode::CONFLICT);
        push(steps, "create-user", &r, ok);
        if ok {
            return Ok(());
        }
        last = status_of(&r);
        if matches!(&r, Err(crate::twilio_api::ApiError::Deadline)) {
            break;
        }
        let check = api.call(Method::GET, &user_path, None).await;
        if matches!(&check, Ok(x) if x.status == StatusCode::OK) {
            return Ok(());
        }
        if matches!(&r, Ok(x) if x.status.is_client_error() && x.status != StatusCode::TOO_MANY_REQUESTS)
        {
            break;
        }
    }
    Err(last)
}

/// Put back memberships the delete removed. Returns the conversations that
/// could not be restored.
pub async fn restore_memberships(
    api: &TwilioApi,
    target: &RepairTarget,
    snap: &UserSnapshot,
    steps: &mut Vec<Step>,
) -> Vec<String> {
    let mut failed = Vec::new();
    for m in &snap.memberships {
        let participants = format!(
            "{}/Conversations/{}/Participants",
            target.service_base,
            encode_segment(&m.conversation_sid)
        );
        let probe = api
            .call(
                Method::GET,
                &format!("{participants}/{}", encode_segment(&snap.identity)),
                None,
            )
            .await;
        if matches!(&probe, Ok(x) if x.status == StatusCode::OK) {
            continue; // survived the delete
        }
        let mut pairs: Vec<(&str, &str)> = vec![("Identity", &snap.identity)];
        if let Some(v) = &m.attributes {
            pairs.push(("Attributes", v));
        }
        if let Some(v) = &m.role_sid {
            pairs.push(("RoleSid", v));
        }
        if let Some(v) = &m.date_created {
            pairs.push(("DateCreated", v));
        }
        let r = api
            .call(Method::POST, &participants, Some(&form(&pairs)))
            .await;
        let ok = matches!(&r, Ok(x) if x.status == StatusCode::CREATED || x.status == StatusCode::CONFLICT);
        push(steps, "restore-membership", &r, ok);
        if !ok {
            failed.push(m.conversation_sid.clone());
        }
    }
    failed
}
