//! Twilio's published workaround, made convergent: snapshot the User and
//! its memberships, delete it, recreate it with the same friendly name,
//! attributes and role, and put back every membership the delete removed.
//!
//! Each phase is an *ensure*, not a call: it reads what Twilio has, acts
//! only on the difference, and is done only when what it reads back equals
//! the snapshot. So the same code serves the live repair and recovery after
//! a crash at any point, and running it twice changes nothing:
//!
//! - [`ensure_deleted`] deletes the User **by its original SID**, so a
//!   delete that lands late (sent before a crash, processed after) can only
//!   ever remove that User, never the one put back in its place. A delete
//!   that may have landed (5xx, reset) is read back by SID, and sent again
//!   only once the SID reads 200.
//! - [`ensure_user`] reads the identity: missing → create it; the original
//!   SID still there → the delete has not landed, delete again; another
//!   User (a *bare* one Twilio made for a participant create in the gap,
//!   or ours) → update it in place until its fields equal the snapshot.
//!   "A User exists" never counts as "the User is back".
//! - [`ensure_membership`] reads the participant: missing → create it with
//!   the snapshot's attributes and role; present with other fields → update
//!   it; a create that may have landed (5xx, reset) is read back before it
//!   is tried again.
//!
//! Reads are retried per [`super::step`]; the read-back loops
//! run until the workflow deadline (memberships until a budget that leaves
//! the caller's replayed create its turn).

use http::StatusCode;
use tokio::time::Instant;

use super::request::user_path;
use super::snapshot::str_field;
use super::step::{Api, StepError, StepKind, past};
use crate::metrics::Metrics;
use crate::store::{Membership, NewRepair, RepairState, Store, StoreError, UserSnapshot};
use crate::twilio_api::{encode_segment, form};

pub use super::journal::Journal;
pub use super::request::RepairTarget;
pub use super::snapshot::{SnapshotError, snapshot};

/// Why a repair did not converge (yet).
#[derive(Debug, thiserror::Error)]
pub enum ConvergeError {
    #[error("deleting the User: {0}")]
    Delete(#[source] StepError),
    #[error("putting the User back: {0}")]
    Recreate(#[source] StepError),
    #[error("the original User is still there, and it could not be snapshotted afresh: {0}")]
    Resnapshot(#[source] SnapshotError),
    #[error("the fresh snapshot could not be journaled: {0}")]
    Journal(#[source] StoreError),
    #[error("memberships not restored ({}): {last}", conversations.join(", "))]
    Memberships {
        conversations: Vec<String>,
        #[source]
        last: StepError,
    },
}

impl ConvergeError {
    /// Twilio refused the User's DELETE itself, and no attempt of it may
    /// have landed (one that might have was read back as still there): the
    /// User is as it was, and the record is closed `done`.
    pub fn left_the_user_untouched(&self) -> bool {
        matches!(
            self,
            ConvergeError::Delete(StepError::Refused {
                step: StepKind::DeleteUser,
                ..
            })
        )
    }

    /// Twilio refused a step for good: trying again will not help. A 401
    /// or 403 is not: it says the *credential* may not act (a caller's
    /// wrong password, a restricted key), and another credential may.
    pub fn is_refusal(&self) -> bool {
        let e = match self {
            ConvergeError::Delete(e) | ConvergeError::Recreate(e) => e,
            ConvergeError::Memberships { last, .. } => last,
            ConvergeError::Resnapshot(_) | ConvergeError::Journal(_) => return false,
        };
        matches!(e, StepError::Refused { status, .. }
            if *status != StatusCode::UNAUTHORIZED && *status != StatusCode::FORBIDDEN)
    }
}

/// Two attribute strings equal as JSON (Twilio may re-serialise them).
fn same_attributes(a: &str, b: &str) -> bool {
    match (
        serde_json::from_str::<serde_json::Value>(a),
        serde_json::from_str::<serde_json::Value>(b),
    ) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// A field the snapshot has must be read back equal; a field it lacks
/// (Twilio did not return it) cannot be compared.
fn field_matches(want: &Option<String>, got: Option<String>, json: bool) -> bool {
    match want {
        None => true,
        Some(w) => got.is_some_and(|g| {
            if json {
                same_attributes(w, &g)
            } else {
                *w == g
            }
        }),
    }
}

/// Does this User JSON carry the snapshot's fields?
pub fn user_matches(snap: &UserSnapshot, v: &serde_json::Value) -> bool {
    str_field(v, "identity").as_deref() == Some(snap.identity.as_str())
        && field_matches(&snap.friendly_name, str_field(v, "friendly_name"), false)
        && field_matches(&snap.attributes, str_field(v, "attributes"), true)
        && field_matches(&snap.role_sid, str_field(v, "role_sid"), false)
}

/// Does this participant JSON carry the membership's fields?
fn membership_matches(identity: &str, m: &Membership, v: &serde_json::Value) -> bool {
    str_field(v, "identity").as_deref() == Some(identity)
        && field_matches(&m.attributes, str_field(v, "attributes"), true)
        && field_matches(&m.role_sid, str_field(v, "role_sid"), false)
}

/// Run the repair from `from` until the User and its memberships equal
/// the snapshot. `memberships_until` bounds the membership phase.
pub async fn converge(
    api: &mut Api,
    target: &RepairTarget,
    snap: &UserSnapshot,
    from: RepairState,
    journal: &mut Journal<'_>,
    memberships_until: Instant,
) -> Result<(), ConvergeError> {
    debug_assert!(from.is_open(), "only an open record converges: {from}");
    let mut just_deleted = false;
    if from <= RepairState::Deleting {
        ensure_deleted(api, target, snap)
            .await
            .map_err(ConvergeError::Delete)?;
        just_deleted = true;
        journal.set(RepairState::Recreating, None).await;
    }
    if from <= RepairState::Recreating {
        let sid = ensure_user(api, target, snap, just_deleted)
            .await
            .map_err(ConvergeError::Recreate)?;
        if let Some(old) = &snap.user_sid {
            journal.alias(target, None, old, &sid).await;
        }
        journal.set(RepairState::Restoring, None).await;
    }
    if from <= RepairState::Restoring {
        let mut missing = Vec::new();
        let mut last = None;
        for m in &snap.memberships {
            if target.exclude_conversation.as_deref() == Some(m.conversation_sid.as_str()) {
                continue;
            }
            match ensure_membership(api, target, snap, m, memberships_until).await {
                Ok(Some(sid)) => {
                    if let Some(old) = &m.participant_sid {
                        journal
                            .alias(target, Some(&m.conversation_sid), old, &sid)
                            .await;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(conversation = %m.conversation_sid, error = %e, "membership not restored yet");
                    missing.push(m.conversation_sid.clone());
                    last = Some(e);
                }
            }
        }
        if let Some(last) = last {
            return Err(ConvergeError::Memberships {
                conversations: missing,
                last,
            });
        }
    }
    Ok(())
}

/// Journal the snapshot (when that fails, nothing was touched), then
/// converge from `deleting`. The journal is returned for the caller's last
/// state changes (a delete Twilio refused left the User as it was: the
/// caller closes that record at once, `Repairer::close_untouched`).
pub async fn journaled<'a>(
    api: &mut Api,
    store: &'a dyn Store,
    metrics: &'a Metrics,
    record: &NewRepair,
    target: &RepairTarget,
    memberships_until: Instant,
) -> Result<(Journal<'a>, Result<(), ConvergeError>), StoreError> {
    let id = store.insert_repair(record).await?;
    tracing::info!(
        repair_id = id,
        memberships = record.snapshot.memberships.len(),
        credential_user = %record.credential_user,
        "journaled User snapshot; deleting the User"
    );
    let mut journal = Journal::new(store, metrics, id);
    let result = converge(
        api,
        target,
        &record.snapshot,
        RepairState::Deleting,
        &mut journal,
        memberships_until,
    )
    .await;
    Ok((journal, result))
}

/// Make sure the User with the snapshot's SID is gone.
pub async fn ensure_deleted(
    api: &mut Api,
    target: &RepairTarget,
    snap: &UserSnapshot,
) -> Result<(), StepError> {
    let Some(sid) = &snap.user_sid else {
        return Ok(()); // there was no User to delete
    };
    let path = user_path(&target.service_base, sid);
    let mut backoff = api.backoff();
    loop {
        match api.step(StepKind::DeleteUser, &path, None).await {
            // 204: deleted now; 404: that SID is gone already.
            Ok(_) => return Ok(()),
            // A 5xx or a lost answer: the delete may have landed. Read the
            // SID until it says, and send the delete again only once it
            // reads 200 (so a later refusal does mean "left as it was").
            // Past the deadline, or on a refused read, the delete stays
            // unsure and the record open for recovery.
            Err(e) if e.is_transient() => loop {
                if backoff.wait(api.deadline()).await.is_err() {
                    return Err(e);
                }
                match api.step(StepKind::FetchUser, &path, None).await {
                    Ok(r) if r.status == StatusCode::NOT_FOUND => return Ok(()),
                    Ok(_) => break,
                    Err(read) if read.is_transient() => {}
                    Err(_) => return Err(e),
                }
            },
            Err(e) => return Err(e),
        }
    }
}

fn user_form(snap: &UserSnapshot, with_identity: bool) -> String {
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    if with_identity {
        pairs.push(("Identity", &snap.identity));
    }
    if let Some(v) = &snap.friendly_name {
        pairs.push(("FriendlyName", v));
    }
    if let Some(v) = &snap.attributes {
        pairs.push(("Attributes", v));
    }
    if let Some(v) = &snap.role_sid {
        pairs.push(("RoleSid", v));
    }
    form(&pairs)
}

/// Make sure a User with the snapshot's identity and fields exists; its
/// SID. `known_absent`: the caller just deleted it (saves one read).
pub async fn ensure_user(
    api: &mut Api,
    target: &RepairTarget,
    snap: &UserSnapshot,
    mut known_absent: bool,
) -> Result<String, StepError> {
    let identity_path = user_path(&target.service_base, &snap.identity);
    let users = format!("{}/Users", target.service_base);
    let mut backoff = api.backoff();
    let deadline = api.deadline();
    loop {
        let current = if known_absent {
            None
        } else {
            match api.step(StepKind::FetchUser, &identity_path, None).await {
                Ok(r) if r.status == StatusCode::NOT_FOUND => None,
                Ok(r) => match r.json().filter(|v| str_field(v, "sid").is_some()) {
                    Some(v) => Some(v),
                    None => {
                        backoff
                            .wait(deadline)
                            .await
                            .map_err(past(StepKind::FetchUser))?;
                        continue;
                    }
                },
                Err(e) if e.is_transient() => {
                    backoff
                        .wait(deadline)
                        .await
                        .map_err(past(StepKind::FetchUser))?;
                    continue;
                }
                Err(e) => return Err(e),
            }
        };
        known_absent = false;
        match current {
            None => match api
                .step(StepKind::CreateUser, &users, Some(&user_form(snap, true)))
                .await
            {
                Ok(r) if r.status == StatusCode::CREATED => {
                    if let Some(v) = r.json().filter(|v| user_matches(snap, v)) {
                        return Ok(str_field(&v, "sid").unwrap_or_default());
                    }
                    // Read it back and put the fields right.
                }
                Err(e) if !e.is_transient() => return Err(e),
                // 409 (someone made one meanwhile) or unsure: read it after
                // a pause, so a 409-then-404 flip-flop cannot spin.
                _ => backoff
                    .wait(deadline)
                    .await
                    .map_err(past(StepKind::CreateUser))?,
            },
            Some(v) if str_field(&v, "sid") == snap.user_sid => {
                // The original User: our delete has not landed.
                ensure_deleted(api, target, snap).await?;
                backoff
                    .wait(deadline)
                    .await
                    .map_err(past(StepKind::DeleteUser))?;
            }
            Some(v) if user_matches(snap, &v) => {
                return Ok(str_field(&v, "sid").unwrap_or_default());
            }
            Some(v) => {
                let sid = str_field(&v, "sid").unwrap_or_default();
                match api
                    .step(
                        StepKind::UpdateUser,
                        &user_path(&target.service_base, &sid),
                        Some(&user_form(snap, false)),
                    )
                    .await
                {
                    Ok(r) if r.json().is_some_and(|v| user_matches(snap, &v)) => return Ok(sid),
                    Err(e) if !e.is_transient() => return Err(e),
                    // Not read back equal, or unsure: look again after a pause.
                    _ => backoff
                        .wait(deadline)
                        .await
                        .map_err(past(StepKind::UpdateUser))?,
                }
            }
        }
    }
}

/// Make sure the identity is a participant of `m`'s conversation with the
/// snapshot's attributes and role; its participant SID (`None`: the
/// conversation is gone, nothing to restore).
pub async fn ensure_membership(
    api: &mut Api,
    target: &RepairTarget,
    snap: &UserSnapshot,
    m: &Membership,
    until: Instant,
) -> Result<Option<String>, StepError> {
    let participants = format!(
        "{}/Conversations/{}/Participants",
        target.service_base,
        encode_segment(&m.conversation_sid)
    );
    let own = format!("{participants}/{}", encode_segment(&snap.identity));
    let mut backoff = api.backoff();
    loop {
        match api.step(StepKind::CheckMembership, &own, None).await {
            Ok(r) if r.status == StatusCode::OK => {
                let Some(v) = r.json() else {
                    backoff
                        .wait(until)
                        .await
                        .map_err(past(StepKind::CheckMembership))?;
                    continue;
                };
                let sid = str_field(&v, "sid").unwrap_or_default();
                if membership_matches(&snap.identity, m, &v) {
                    return Ok(Some(sid));
                }
                let mut pairs: Vec<(&str, &str)> = Vec::new();
                if let Some(a) = &m.attributes {
                    pairs.push(("Attributes", a));
                }
                if let Some(r) = &m.role_sid {
                    pairs.push(("RoleSid", r));
                }
                match api
                    .step(
                        StepKind::UpdateMembership,
                        &format!("{participants}/{}", encode_segment(&sid)),
                        Some(&form(&pairs)),
                    )
                    .await
                {
                    Ok(r)
                        if r.json()
                            .is_some_and(|v| membership_matches(&snap.identity, m, &v)) =>
                    {
                        return Ok(Some(sid));
                    }
                    Err(e) if !e.is_transient() => return Err(e),
                    // Not read back equal, or unsure: look again after a pause.
                    _ => backoff
                        .wait(until)
                        .await
                        .map_err(past(StepKind::UpdateMembership))?,
                }
            }
            Ok(_) => {
                // 404: missing; put it back.
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
                match api
                    .step(
                        StepKind::RestoreMembership,
                        &participants,
                        Some(&form(&pairs)),
                    )
                    .await
                {
                    Ok(r)
                        if r.status == StatusCode::CREATED
                            && r.json()
                                .is_some_and(|v| membership_matches(&snap.identity, m, &v)) =>
                    {
                        return Ok(r.json().and_then(|v| str_field(&v, "sid")));
                    }
                    // 409, or a 201 whose fields differ: read it back.
                    Ok(_) => backoff
                        .wait(until)
                        .await
                        .map_err(past(StepKind::RestoreMembership))?,
                    Err(StepError::Refused { status, .. }) if status == StatusCode::NOT_FOUND => {
                        // The conversation may be gone: nothing to restore.
                        let conv = format!(
                            "{}/Conversations/{}",
                            target.service_base,
                            encode_segment(&m.conversation_sid)
                        );
                        if let Ok(r) = api.step(StepKind::FetchConversation, &conv, None).await {
                            if r.status == StatusCode::NOT_FOUND {
                                tracing::info!(conversation = %m.conversation_sid, "membership's conversation no longer exists; nothing to restore");
                                return Ok(None);
                            }
                        }
                        backoff
                            .wait(until)
                            .await
                            .map_err(past(StepKind::RestoreMembership))?
                    }
                    Err(e) if e.is_transient() => backoff
                        .wait(until)
                        .await
                        .map_err(past(StepKind::RestoreMembership))?,
                    Err(e) => return Err(e),
                }
            }
            Err(e) if e.is_transient() => backoff
                .wait(until)
                .await
                .map_err(past(StepKind::CheckMembership))?,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_user_is_not_the_user_back() {
        let snap = UserSnapshot {
            user_sid: Some("US1".into()),
            identity: "kim".into(),
            friendly_name: Some("Kim K".into()),
            attributes: Some(r#"{"vip":true,"tier":"gold"}"#.into()),
            role_sid: Some("RL1".into()),
            memberships: vec![],
        };
        let bare = serde_json::json!({"sid":"US2","identity":"kim","friendly_name":null,"attributes":"{}","role_sid":"RL1"});
        assert!(!user_matches(&snap, &bare));
        let back = serde_json::json!({"sid":"US2","identity":"kim","friendly_name":"Kim K","attributes":"{\"tier\": \"gold\", \"vip\": true}","role_sid":"RL1"});
        assert!(
            user_matches(&snap, &back),
            "re-serialised attributes are equal"
        );
        let other_role = serde_json::json!({"sid":"US2","identity":"kim","friendly_name":"Kim K","attributes":"{\"vip\":true,\"tier\":\"gold\"}","role_sid":"RL2"});
        assert!(!user_matches(&snap, &other_role));
    }
}
