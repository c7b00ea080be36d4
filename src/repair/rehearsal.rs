//! The check-only rehearsal: in `check-only` mode the workflow stops before
//! it touches a User; here it also reads what a repair would start from
//! (the snapshot, with the credential the repair would act with), writes
//! down the plan it would have run ([`super::operator::plan`], the same
//! plan as the dry run's) and whether it could be completed, and keeps the
//! newest [`MAX_REHEARSALS`] of them for the admin plane's "Ready for
//! repair mode?" panel.
//!
//! A rehearsal runs off the caller's answer path: the caller has its 404
//! first, then the workflow's task hands the reads to a task of their own
//! (`workflow::rehearse`, on the repairer's task tracker), at most
//! `repair.rehearsal_max_in_flight` at once ([`Rehearsals::admit`]); a
//! fault beyond them is not rehearsed, only counted as skipped. When the
//! reads end, the plan is kept here and the fault's incident is updated
//! with what they read back.
//!
//! Every text a rehearsal shows (why not, the plan) passes
//! [`crate::privacy::Privacy::text_naming`] first ([`Rehearsal::shown`]):
//! with `repair.incident_identity = "hash"` an error read back from Twilio
//! names the identity, plain or percent-encoded in a path.
//!
//! What belongs here: that judgement, its record and its bound. What does
//! not: any write (a rehearsal only reads, as the dry run does), the steps
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::credential::Source;
use crate::privacy::Privacy;
use crate::store::UserSnapshot;

/// Most rehearsals kept in memory (the newest).
pub const MAX_REHEARSALS: usize = 100;

/// How a check-only incident's detail ends while its rehearsal reads.
pub const UNDER_WAY: &str = "; rehearsal under way";

/// What replaces [`UNDER_WAY`] when the process stopped before the
/// rehearsal reported (marked by the next start's recovery).
pub const CUT_SHORT: &str =
    "; rehearsal cut short: the proxy stopped before its reads ended (nothing was written)";

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

impl Rehearsal {
    /// As it may be kept, shown and logged: the identity and every text
    /// that may name it (why not, the plan) through `privacy`, which hashes
    /// `identity` in plain and percent-encoded forms when hashing.
    pub fn shown(mut self, privacy: &Privacy, identity: &str) -> Rehearsal {
        self.identity = privacy.identity(identity);
        // A unique name the app addresses the conversation by may name it.
        self.conversation_sid = privacy.text_naming(&self.conversation_sid, identity);
        self.why_not = self
            .why_not
            .as_deref()
            .map(|w| privacy.text_naming(w, identity));
        for text in self.plan.iter_mut().chain(self.restore.iter_mut()) {
            *text = privacy.text_naming(text, identity);
        }
        self
    }
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

/// The rehearsals since start, the counts the panel shows, and the bound
/// on those in flight.
pub struct Rehearsals {
    recent: Mutex<VecDeque<Rehearsal>>,
    /// Intercepted 20404s the workflow ran for (any mode).
    faults: AtomicU64,
    plans: AtomicU64,
    failing: AtomicU64,
    /// Check-only faults not rehearsed: the bound was reached (or is 0).
    skipped: AtomicU64,
    /// One permit a rehearsal in flight (`repair.rehearsal_max_in_flight`).
    slots: Arc<Semaphore>,
    max_in_flight: usize,
}

/// The panel's copy of [`Rehearsals`].
#[derive(Debug, Clone, Serialize)]
pub struct RehearsalView {
    pub faults_seen: u64,
    pub plans_made: u64,
    pub plans_failing: u64,
    /// Check-only faults not rehearsed (`repair.rehearsal_max_in_flight`).
    pub skipped: u64,
    /// Rehearsals running now.
    pub in_flight: usize,
    pub max_in_flight: usize,
    /// Newest first.
    pub recent: Vec<Rehearsal>,
}

impl Rehearsals {
    /// At most `max_in_flight` rehearsals at once (0: none).
    pub fn new(max_in_flight: usize) -> Rehearsals {
        Rehearsals {
            recent: Mutex::default(),
            faults: AtomicU64::default(),
            plans: AtomicU64::default(),
            failing: AtomicU64::default(),
            skipped: AtomicU64::default(),
            slots: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
        }
    }

    /// A slot for one more rehearsal, held until it ends; `None` (and
    /// counted as skipped) when `max_in_flight` run already: the fault is
    /// not rehearsed, never queued.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        let permit = self.slots.clone().try_acquire_owned().ok();
        if permit.is_none() {
            self.skipped.fetch_add(1, Ordering::Relaxed);
        }
        permit
    }

    /// The bound, as the incident of a skipped fault names it.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

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
            skipped: self.skipped.load(Ordering::Relaxed),
            in_flight: self
                .max_in_flight
                .saturating_sub(self.slots.available_permits()),
            max_in_flight: self.max_in_flight,
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
        let rs = Rehearsals::new(2);
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

    #[test]
    fn past_the_bound_a_rehearsal_is_skipped_and_counted_never_queued() {
        let rs = Rehearsals::new(2);
        let (a, b) = (rs.admit(), rs.admit());
        assert!(a.is_some() && b.is_some());
        assert!(rs.admit().is_none(), "a third while two run");
        let v = rs.view();
        assert_eq!((v.skipped, v.in_flight, v.max_in_flight), (1, 2, 2));
        drop(a);
        assert!(rs.admit().is_some(), "a slot is free again");
        let off = Rehearsals::new(0);
        assert!(off.admit().is_none(), "0: no rehearsals");
        assert_eq!(off.view().skipped, 1);
    }

    #[test]
    fn what_a_rehearsal_shows_never_names_the_identity_when_hashing() {
        let hash = Privacy::new(crate::config::IdentityRecord::Hash);
        let r = Rehearsal {
            at: String::new(),
            incident_id: None,
            service_sid: "IS1".into(),
            conversation_sid: "support-kim k".into(),
            identity: "kim k".into(),
            snapshot: None,
            plan: vec![],
            restore: vec![],
            acting: "SK1".into(),
            would_complete: false,
            why_not: Some(
                "the snapshot cannot be read with SK1: fetch-user: GET /v1/Services/IS1/Users/kim%20k: \
                 transport failure; User kim k"
                    .into(),
            ),
        }
        .shown(&hash, "kim k");
        let shown = serde_json::to_string(&r).unwrap();
        assert!(!shown.contains("kim"), "{shown}");
        assert_eq!(r.identity, crate::privacy::hash_identity("kim k"));
        assert_eq!(
            r.why_not.as_deref().unwrap().matches(&r.identity).count(),
            2,
            "{shown}"
        );
    }
}
