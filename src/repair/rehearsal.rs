//! The check-only rehearsal: in `check-only` mode the workflow stops before
//! it touches a User; here it also reads what a repair would start from
//! (the snapshot, with the credential the repair would act with), writes
//! down the plan it would have run ([`super::operator::plan`], the same
//! plan as the dry run's) and whether it could be completed, and keeps the
//! newest [`MAX_REHEARSALS`] of them for the admin plane's "Ready for
//! repair mode?" panel.
//!
//! What belongs here: that judgement and its record. What does not: any
//! write (a rehearsal only reads, as the dry run does), the steps
//! themselves (`user`'s), the panel (`crate::admin`).
//!
//! A plan "would fail" when, with this configuration, the repair could not
//! be carried through:
//! - the snapshot cannot be read with the credential that would act;
//! - the service lists or the loop guard would refuse it in repair mode;
//! - no repair credential acts for the account (`TRP_REPAIR_*` or
//!   `repair.credentials_file`): the steps would run with the caller's
//!   credential, and a repair cut short (a crash, a deadline) could not be
//!   finished by recovery in the background, only by that identity's next
//!   create.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::credential::Source;
use crate::store::UserSnapshot;

/// Most rehearsals kept in memory (the newest).
pub const MAX_REHEARSALS: usize = 100;

/// One check-only fault's rehearsed repair.
#[derive(Debug, Clone, Serialize)]
pub struct Rehearsal {
    pub at: String,
    /// The incident it belongs to (once recorded).
    pub incident_id: Option<i64>,
    pub service_sid: String,
    pub conversation_sid: String,
    /// As incidents show it (`repair.incident_identity`).
    pub identity: String,
    /// What the snapshot found (no friendly name or attributes: those stay
    /// in Twilio).
    pub snapshot: Option<SnapshotSummary>,
    /// The calls the repair would have made, in order.
    pub plan: Vec<String>,
    /// The conversations whose membership it would restore.
    pub restore: Vec<String>,
    /// The Basic user name of the credential the steps would act with.
    pub acting: String,
    pub would_complete: bool,
    /// Why not, when it would not.
    pub why_not: Option<String>,
}

/// The shape of a snapshot, without its values.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotSummary {
    pub user_sid: Option<String>,
    pub has_friendly_name: bool,
    pub has_attributes: bool,
    pub role_sid: Option<String>,
    pub memberships: usize,
}

impl SnapshotSummary {
    pub fn of(snap: &UserSnapshot) -> SnapshotSummary {
        SnapshotSummary {
            user_sid: snap.user_sid.clone(),
            has_friendly_name: snap.friendly_name.is_some(),
            has_attributes: snap.attributes.is_some(),
            role_sid: snap.role_sid.clone(),
            memberships: snap.memberships.len(),
        }
    }
}

/// What the workflow read for a rehearsal.
pub struct Read<'a> {
    pub snapshot: Result<&'a UserSnapshot, String>,
    /// The conversation of the create (restored by the replayed create,
    /// not by the repair).
    pub conversation_sid: &'a str,
    pub acting_user: &'a str,
    pub acting_source: Source,
    pub account_sid: &'a str,
    /// Why repair mode would refuse it anyway (service lists, loop guard).
    pub refusal: Option<String>,
}

/// The plan and the judgement (see the module doc): a pure function.
pub fn judge(read: &Read<'_>) -> (Vec<String>, Vec<String>, Option<String>) {
    let (plan, restore) = match read.snapshot {
        Ok(snap) => {
            // A fault's repair makes the User when there is none.
            let mut plan = super::operator::plan(snap, true).unwrap_or_default();
            plan.push(format!(
                "replay the caller's create in {}",
                read.conversation_sid
            ));
            let restore = snap
                .memberships
                .iter()
                .filter(|m| m.conversation_sid != read.conversation_sid)
                .map(|m| m.conversation_sid.clone())
                .collect();
            (plan, restore)
        }
        Err(_) => (Vec::new(), Vec::new()),
    };
    let why_not = match (&read.snapshot, &read.refusal) {
        (Err(e), _) => Some(format!(
            "the snapshot cannot be read with {}: {e}",
            read.acting_user
        )),
        (_, Some(reason)) => Some(format!("repair mode would refuse it: {reason}")),
        _ if read.acting_source == Source::Caller => Some(format!(
            "no repair credential for account {}: the steps would run with the caller's \
             credential ({}), and a repair cut short could not be finished by recovery \
             (set TRP_REPAIR_API_KEY_SID, TRP_REPAIR_API_KEY_SECRET and TRP_REPAIR_ACCOUNT_SID, \
             or repair.credentials_file)",
            read.account_sid, read.acting_user
        )),
        _ => None,
    };
    (plan, restore, why_not)
}

/// The rehearsals since start, and the counts the panel shows.
#[derive(Default)]
pub struct Rehearsals {
    recent: Mutex<VecDeque<Rehearsal>>,
    /// Intercepted 20404s the workflow ran for (any mode).
    faults: AtomicU64,
    plans: AtomicU64,
    failing: AtomicU64,
}

/// The panel's copy of [`Rehearsals`].
#[derive(Debug, Clone, Serialize)]
pub struct RehearsalView {
    pub faults_seen: u64,
    pub plans_made: u64,
    pub plans_failing: u64,
    /// Newest first.
    pub recent: Vec<Rehearsal>,
}

impl Rehearsals {
    pub fn fault_seen(&self) {
        self.faults.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record(&self, r: Rehearsal) {
        self.plans.fetch_add(1, Ordering::Relaxed);
        if !r.would_complete {
            self.failing.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() == MAX_REHEARSALS {
                recent.pop_back();
            }
            recent.push_front(r);
        }
    }

    pub fn view(&self) -> RehearsalView {
        RehearsalView {
            faults_seen: self.faults.load(Ordering::Relaxed),
            plans_made: self.plans.load(Ordering::Relaxed),
            plans_failing: self.failing.load(Ordering::Relaxed),
            recent: self
                .recent
                .lock()
                .map(|r| r.iter().cloned().collect())
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Membership;

    fn snap() -> UserSnapshot {
        let m = |ch: &str| Membership {
            conversation_sid: ch.into(),
            participant_sid: Some("MB1".into()),
            attributes: None,
            role_sid: None,
            date_created: None,
        };
        UserSnapshot {
            user_sid: Some("US1".into()),
            identity: "kim".into(),
            friendly_name: Some("Kim".into()),
            attributes: None,
            role_sid: Some("RL1".into()),
            memberships: vec![m("CH1"), m("CH2")],
        }
    }

    fn read<'a>(s: Result<&'a UserSnapshot, String>, source: Source) -> Read<'a> {
        Read {
            snapshot: s,
            conversation_sid: "CH2",
            acting_user: "SK1",
            acting_source: source,
            account_sid: "AC1",
            refusal: None,
        }
    }

    #[test]
    fn a_plan_with_the_repair_credential_would_complete() {
        let s = snap();
        let (plan, restore, why) = judge(&read(Ok(&s), Source::Operator));
        assert_eq!(why, None);
        assert_eq!(
            restore,
            ["CH1"],
            "the create's own conversation is the replay's"
        );
        assert!(
            plan.iter().any(|p| p.contains("DELETE the User US1")),
            "{plan:?}"
        );
        assert!(plan.last().unwrap().contains("replay"), "{plan:?}");
    }

    #[test]
    fn without_a_repair_credential_or_a_readable_snapshot_it_would_not() {
        let s = snap();
        let (_, _, why) = judge(&read(Ok(&s), Source::Caller));
        assert!(
            why.unwrap()
                .contains("no repair credential for account AC1")
        );
        let (plan, _, why) = judge(&read(Err("403".into()), Source::Operator));
        assert!(plan.is_empty());
        assert!(why.unwrap().contains("cannot be read with SK1: 403"));
        let mut r = read(Ok(&s), Source::Operator);
        r.refusal = Some("service in repair.deny_services".into());
        assert!(judge(&r).2.unwrap().contains("deny_services"));
    }

    #[test]
    fn the_newest_are_kept_and_counted() {
        let rs = Rehearsals::default();
        for i in 0..(MAX_REHEARSALS + 5) {
            rs.fault_seen();
            rs.record(Rehearsal {
                at: String::new(),
                incident_id: Some(i as i64),
                service_sid: String::new(),
                conversation_sid: String::new(),
                identity: String::new(),
                snapshot: None,
                plan: vec![],
                restore: vec![],
                acting: String::new(),
                would_complete: i % 2 == 0,
                why_not: None,
            });
        }
        let v = rs.view();
        assert_eq!(v.plans_made, (MAX_REHEARSALS + 5) as u64);
        assert_eq!(v.plans_failing, ((MAX_REHEARSALS + 5) / 2) as u64);
        assert_eq!(v.recent.len(), MAX_REHEARSALS);
        assert_eq!(v.recent[0].incident_id, Some((MAX_REHEARSALS + 4) as i64));
    }
}
