//! The User's snapshot: everything needed to put it back (identity,
//! friendly name, attributes, role, and each other conversation it is a
//! participant of, with that participant's attributes, role and creation
//! date), read before anything is touched.

use http::StatusCode;

use super::request::RepairTarget;
use super::request::user_path;
use super::step::{Api, StepError, StepKind};
use crate::store::{Membership, UserSnapshot};
use crate::twilio_api::encode_segment;

/// Most pages of User Conversations read for the snapshot.
pub const MAX_MEMBERSHIP_PAGES: usize = 20;

/// Why the snapshot could not be taken (nothing was touched).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read the User before repairing: {0}")]
    Step(#[from] StepError),
    #[error(
        "cannot read the User before repairing: {0} answered a body that is not the expected JSON"
    )]
    Body(StepKind),
    #[error(
        "cannot read the User before repairing: more than {MAX_MEMBERSHIP_PAGES} pages of User Conversations"
    )]
    TooManyPages,
}

/// Read the User and its memberships.
pub async fn snapshot(api: &mut Api, target: &RepairTarget) -> Result<UserSnapshot, SnapshotError> {
    let user_path = user_path(&target.service_base, &target.identity);
    let r = api.step(StepKind::FetchUser, &user_path, None).await?;
    if r.status == StatusCode::NOT_FOUND {
        return Ok(UserSnapshot {
            user_sid: None,
            identity: target.identity.clone(),
            friendly_name: None,
            attributes: None,
            role_sid: None,
            memberships: Vec::new(),
        });
    }
    let user = r
        .json()
        .filter(|v| str_field(v, "identity").as_deref() == Some(target.identity.as_str()))
        .ok_or(SnapshotError::Body(StepKind::FetchUser))?;
    let mut memberships = Vec::new();
    let mut next = Some(format!("{user_path}/Conversations?PageSize=50"));
    let mut pages = 0;
    while let Some(path) = next.take() {
        pages += 1;
        if pages > MAX_MEMBERSHIP_PAGES {
            return Err(SnapshotError::TooManyPages);
        }
        let r = api
            .step(StepKind::ListUserConversations, &path, None)
            .await?;
        let page = r
            .json()
            .ok_or(SnapshotError::Body(StepKind::ListUserConversations))?;
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
            let mut m = Membership {
                conversation_sid: conversation_sid.clone(),
                participant_sid: participant_sid.clone(),
                attributes: None,
                role_sid: None,
                date_created: None,
            };
            if let Some(mb) = &participant_sid {
                let p = api
                    .step(
                        StepKind::FetchMembership,
                        &format!(
                            "{}/Conversations/{}/Participants/{}",
                            target.service_base,
                            encode_segment(&conversation_sid),
                            encode_segment(mb)
                        ),
                        None,
                    )
                    .await?;
                let v = p
                    .json()
                    .ok_or(SnapshotError::Body(StepKind::FetchMembership))?;
                m.attributes = str_field(&v, "attributes");
                m.role_sid = str_field(&v, "role_sid");
                m.date_created = str_field(&v, "date_created");
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

pub(super) fn str_field(v: &serde_json::Value, k: &str) -> Option<String> {
    v.get(k).and_then(|x| x.as_str()).map(str::to_string)
}
