//! Paused-time unit tests of the workflow's decisions and retries, against
//! a scripted Twilio ([`FakeTwilio`]: a small model of Users, participants
//! and the fault, plus one-shot faults per call) and an in-memory journal
//! that can refuse writes on command ([`MemStore`]). They run in well under
//! a second; the same behaviours over real sockets are in `tests/`.

mod fake;

use fake::*;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use tokio::time::Instant;

use super::step::Exchange;
use super::workflow::{self, Answer, CreateRequest};
use super::{Repairer, RepairerParts};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::routing::Origin;
use crate::store::{NewRepair, Outcome, RepairState, Store};

struct Bench {
    fake: FakeTwilio,
    store: Arc<MemStore>,
    metrics: Arc<Metrics>,
    rep: Arc<Repairer>,
}

fn bench(fake: FakeTwilio) -> Bench {
    bench_with(fake, None)
}

/// With the operator repair credential for ACCOUNT.
fn bench_operator(fake: FakeTwilio) -> Bench {
    let op = super::RepairCredential::new("SKop", "secret", Some(ACCOUNT.into())).unwrap();
    bench_with(fake, Some(op))
}

fn bench_with(fake: FakeTwilio, credential: Option<super::RepairCredential>) -> Bench {
    bench_config(fake, credential, |_| {})
}

fn bench_config(
    fake: FakeTwilio,
    credential: Option<super::RepairCredential>,
    set: impl FnOnce(&mut crate::config::RepairConfig),
) -> Bench {
    let mut config = Config::defaults().repair;
    config.retry_initial_backoff_ms = 100;
    config.retry_max_backoff_ms = 2_000;
    config.workflow_deadline_ms = 30_000;
    set(&mut config);
    let store = Arc::new(MemStore::default());
    let metrics = Arc::new(Metrics::default());
    let f = fake.clone();
    let rep = Repairer::new(RepairerParts {
        config,
        client: crate::forward::build_client(&Config::defaults().limits),
        store: store.clone(),
        metrics: metrics.clone(),
        credential,
        mark_forwarded: false,
        runtime: None,
        exchange: Some(Arc::new(move |_, _, _| {
            Arc::new(f.clone()) as Arc<dyn Exchange>
        })),
        shield: None,
        tap: None,
    });
    Bench {
        fake,
        store,
        metrics,
        rep,
    }
}

fn kim_create() -> CreateRequest {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_static("Basic QUMwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMTp0b2tlbg=="),
    );
    CreateRequest {
        path: super::request::CreatePath::parse(&format!(
            "/v1/Services/{IS}/Conversations/{CH}/Participants"
        ))
        .unwrap(),
        headers,
        body: Bytes::from_static(b"Identity=kim"),
        origin: Origin::parse("http://127.0.0.1:9").unwrap(),
        shield: None,
        requested_at: time::OffsetDateTime::now_utc(),
        original_request_id: None,
    }
}

fn is_created(a: &Answer) -> bool {
    matches!(a, Answer::Created(_))
}

#[tokio::test(start_paused = true)]
async fn the_repair_reads_back_everything_it_puts_back() {
    let b = bench(FakeTwilio::with_kim(3));
    let v = workflow::run(&b.rep, &kim_create()).await;
    assert_eq!(v.outcome, Outcome::Repaired, "{:?}", v.detail);
    assert!(is_created(&v.answer));
    b.fake.assert_kim_back(3);
    assert_eq!(
        b.fake.count(Method::DELETE, "/Users/USkim"),
        1,
        "deleted by SID, once"
    );
    let repairs = b.store.repairs.lock().unwrap();
    assert_eq!(repairs[0].state, RepairState::Done);
}

/// `repair.mode` set to `off` (or `check-only`) by a reload after the
/// create was intercepted: the workflow reads the mode before its first
/// write and stops there (`disabled`, Twilio's answer), nothing journaled,
/// no User deleted.
#[tokio::test(start_paused = true)]
async fn a_reload_to_off_or_check_only_stops_a_workflow_before_its_first_write() {
    for mode in [
        crate::config::RepairMode::Off,
        crate::config::RepairMode::CheckOnly,
    ] {
        let b = bench(FakeTwilio::with_kim(1));
        let mut reloaded = Config::defaults().repair;
        reloaded.mode = mode;
        b.rep.set_policy(reloaded);
        let v = workflow::run(&b.rep, &kim_create()).await;
        assert_eq!(v.outcome, Outcome::Disabled, "{mode:?}: {:?}", v.detail);
        assert!(matches!(v.answer, Answer::Original), "{mode:?}");
        assert_eq!(b.fake.count(Method::DELETE, "/Users/USkim"), 0, "{mode:?}");
        assert!(b.store.repairs.lock().unwrap().is_empty(), "{mode:?}");
    }
}

/// A check-only rehearsal whose journal refuses the incident's update:
/// the incident never claims a result it could not record (it still says
/// `rehearsal under way`, nothing was written to Twilio), the panel still
/// gets the plan, and the next start's recovery marks it cut short.
#[tokio::test(start_paused = true)]
async fn a_rehearsal_whose_incident_update_is_refused_claims_no_result() {
    let b = bench_config(FakeTwilio::with_kim(1), None, |c| {
        c.mode = crate::config::RepairMode::CheckOnly;
    });
    let v = workflow::run(&b.rep, &kim_create()).await;
    assert_eq!(v.outcome, Outcome::Disabled, "{:?}", v.detail);
    assert!(matches!(v.answer, Answer::Original));
    // The journal stops taking writes before the rehearsal's reads end.
    b.store.fail_writes.store(true, Ordering::SeqCst);
    assert!(b.rep.drain(Duration::from_secs(60)).await);
    assert_eq!(b.rep.rehearsals().plans_made, 1, "the panel has the plan");
    let detail = |b: &Bench| b.store.incidents.lock().unwrap()[0].detail.clone().unwrap();
    assert!(
        detail(&b).ends_with(super::rehearsal::UNDER_WAY),
        "{}",
        detail(&b)
    );
    assert_eq!(b.fake.count(Method::DELETE, "/Users/USkim"), 0);
    assert!(b.store.repairs.lock().unwrap().is_empty());
    // The journal back, the next start closes it on what is known.
    b.store.fail_writes.store(false, Ordering::SeqCst);
    let until = crate::store::now_rfc3339();
    let n = b
        .store
        .close_unfinished_rehearsals(
            &until,
            super::rehearsal::UNDER_WAY,
            super::rehearsal::CUT_SHORT,
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert!(
        detail(&b).ends_with(super::rehearsal::CUT_SHORT),
        "{}",
        detail(&b)
    );
}

/// A reloaded `[repair]` changes the mode and policy only: a restart-only
/// key of the new file (its timeouts, backoffs) never shows in the policy
/// a repair (or `POST /selftest`) reads as the settings in force.
#[tokio::test]
async fn a_reloaded_policy_keeps_the_start_up_value_of_every_restart_only_key() {
    let b = bench(FakeTwilio::with_kim(1));
    let started = b.rep.policy();
    let mut reloaded = Config::defaults().repair;
    reloaded.mode = crate::config::RepairMode::CheckOnly;
    reloaded.max_repairs_per_window = 0;
    reloaded.deny_services = vec![IS.to_string()];
    reloaded.step_timeout_ms = 1;
    reloaded.retry_max_attempts = 99;
    reloaded.workflow_deadline_ms = 1;
    b.rep.set_policy(reloaded);
    let now = b.rep.policy();
    assert_eq!(now.mode, crate::config::RepairMode::CheckOnly);
    assert_eq!(now.max_repairs_per_window, 0);
    assert_eq!(now.deny_services, [IS.to_string()]);
    assert_eq!(now.step_timeout_ms, started.step_timeout_ms);
    assert_eq!(now.retry_max_attempts, started.retry_max_attempts);
    assert_eq!(now.workflow_deadline_ms, 30_000);
}

#[tokio::test(start_paused = true)]
async fn a_429_is_retried_after_its_retry_after_and_nothing_else_changes() {
    let b = bench(FakeTwilio::with_kim(1));
    b.fake.fault(
        Method::GET,
        &format!("/Conversations/{CH}"),
        0,
        Reply::TooMany(2),
        false,
    );
    let started = Instant::now();
    let v = workflow::run(&b.rep, &kim_create()).await;
    assert_eq!(v.outcome, Outcome::Repaired, "{:?}", v.detail);
    // Retry-After (2 s) honoured, capped by retry_max_backoff_ms (2 s).
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(
        b.fake
            .count_ending(Method::GET, &format!("/Conversations/{CH}")),
        2,
        "one 429, one retry"
    );
    b.fake.assert_kim_back(1);
}

#[tokio::test(start_paused = true)]
async fn a_5xx_after_the_replayed_post_is_read_back_never_posted_twice() {
    let b = bench(FakeTwilio::with_kim(0));
    // The first create (retry under the lock) gets the fault's 20404; the
    // replay lands at Twilio but its answer is a 500.
    b.fake
        .fault(Method::POST, "/Participants", 1, Reply::Status(500), true);
    let v = workflow::run(&b.rep, &kim_create()).await;
    assert_eq!(v.outcome, Outcome::Repaired, "{:?}", v.detail);
    assert!(is_created(&v.answer));
    assert_eq!(
        b.fake
            .count(Method::POST, &format!("/Conversations/{CH}/Participants")),
        2,
        "retry + one replay, no blind second replay"
    );
    b.fake.assert_kim_back(0);
}

#[tokio::test(start_paused = true)]
async fn a_recreate_reset_after_it_landed_is_read_back_not_created_twice() {
    let b = bench(FakeTwilio::with_kim(1));
    b.fake.fault(Method::POST, "/Users", 0, Reply::Reset, true);
    let v = workflow::run(&b.rep, &kim_create()).await;
    assert_eq!(v.outcome, Outcome::Repaired, "{:?}", v.detail);
    assert_eq!(b.fake.count(Method::POST, &format!("{IS}/Users")), 1);
    b.fake.assert_kim_back(1);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_ends_a_workflow_that_never_gets_an_answer() {
    let b = bench(FakeTwilio::with_kim(0));
    for _ in 0..1000 {
        b.fake.fault(
            Method::GET,
            "/Participants/kim",
            0,
            Reply::Status(503),
            false,
        );
    }
    let started = Instant::now();
    let v = workflow::run(&b.rep, &kim_create()).await;
    assert_eq!(v.outcome, Outcome::Failed);
    assert!(
        matches!(v.answer, Answer::Original),
        "never a 5xx or a made-up 201"
    );
    assert!(started.elapsed() <= Duration::from_secs(31));
    assert_eq!(
        b.fake.count(Method::DELETE, "/Users/"),
        0,
        "nothing touched"
    );
    // Counted as a failure of the step that failed, and of no other.
    let m = b.metrics.render().unwrap();
    assert!(
        m.contains("trp_repair_step_failures_total{step=\"fetch-participant\"} 1\n"),
        "{m}"
    );
    assert!(m.contains("trp_repair_step_failures_total{step=\"fetch-conversation\"} 0\n"));
}

#[tokio::test(start_paused = true)]
async fn a_bare_user_made_in_the_gap_is_updated_in_place_never_deleted() {
    let b = bench(FakeTwilio::with_kim(1));
    b.fake.0.lock().unwrap().bare_after_delete = true;
    let v = workflow::run(&b.rep, &kim_create()).await;
    assert_eq!(v.outcome, Outcome::Repaired, "{:?}", v.detail);
    assert_eq!(b.fake.count(Method::DELETE, "/Users/"), 1);
    assert!(
        b.fake.count(Method::POST, "/Users/US") >= 1,
        "updated in place"
    );
    b.fake.assert_kim_back(1);
}

#[tokio::test(start_paused = true)]
async fn a_journal_lost_after_the_delete_does_not_abandon_the_user() {
    let b = bench(FakeTwilio::with_kim(1));
    b.store.fail_after_insert.store(true, Ordering::SeqCst);
    let v = workflow::run(&b.rep, &kim_create()).await;
    assert_eq!(v.outcome, Outcome::Repaired, "{:?}", v.detail);
    b.fake.assert_kim_back(1);
    // Recreating, Restoring, Replaying and Done did not land, nor the two
    // SID aliases (User, membership); the record stays `deleting` for
    // recovery to verify again later.
    let m = b.metrics.render().unwrap();
    assert!(m.contains("trp_journal_write_failures_total 6"), "{m}");
    assert_eq!(
        b.store.repairs.lock().unwrap()[0].state,
        RepairState::Deleting
    );
}

#[tokio::test(start_paused = true)]
async fn a_membership_not_restored_in_time_is_never_reported_repaired() {
    let b = bench(FakeTwilio::with_kim(1));
    for _ in 0..1000 {
        b.fake.fault(
            Method::POST,
            &format!("/Conversations/{OTHER}/Participants"),
            0,
            Reply::Status(500),
            false,
        );
    }
    let v = workflow::run(&b.rep, &kim_create()).await;
    assert_eq!(v.outcome, Outcome::Failed, "{:?}", v.detail);
    assert!(
        is_created(&v.answer),
        "the caller's participant exists: 201, not 404"
    );
    assert!(
        v.detail
            .as_deref()
            .unwrap_or("")
            .contains("memberships not restored"),
        "{:?}",
        v.detail
    );
    let repairs = b.store.repairs.lock().unwrap();
    assert_eq!(
        repairs[0].state,
        RepairState::Restoring,
        "left open for recovery"
    );
}

#[tokio::test(start_paused = true)]
async fn an_ambiguous_body_touches_nobody() {
    let b = bench(FakeTwilio::with_kim(0));
    let mut req = kim_create();
    req.body = Bytes::from_static(b"Identity=kim&Identity=bystander");
    let v = workflow::run(&b.rep, &req).await;
    assert_eq!(v.outcome, Outcome::Disabled);
    assert!(b.fake.0.lock().unwrap().calls.is_empty(), "no call at all");
}

/// A journal record as a crash in `deleting` leaves it, with the snapshot
/// taken then.
async fn journal_stale_record(b: &Bench, friendly: &str, state: RepairState) -> i64 {
    let snapshot = crate::store::UserSnapshot {
        user_sid: Some("USkim".into()),
        identity: "kim".into(),
        friendly_name: Some(friendly.into()),
        attributes: Some(r#"{"vip":true}"#.into()),
        role_sid: Some("RLadmin".into()),
        memberships: vec![],
    };
    let id = b
        .store
        .insert_repair(&NewRepair {
            account_sid: ACCOUNT.into(),
            credential_user: ACCOUNT.into(),
            upstream: "http://127.0.0.1:9".into(),
            service_base: format!("/v1/Services/{IS}"),
            service_sid: IS.into(),
            identity: "kim".into(),
            snapshot,
            webhook: None,
        })
        .await
        .unwrap();
    b.store.set_repair_state(id, state, None).await.unwrap();
    id
}

#[tokio::test(start_paused = true)]
async fn a_delete_that_never_landed_is_resnapshotted_not_reverted_to_the_old_snapshot() {
    // Crash in `deleting` before the DELETE reached Twilio; since then the
    // app renamed Kim. Recovery must not put the old name back.
    let b = bench_operator(FakeTwilio::with_kim(1));
    let old = journal_stale_record(&b, "Old Name", RepairState::Deleting).await;
    let done = b.rep.recover_pending(None).await;
    assert_eq!(done, 1);
    let m = b.fake.0.lock().unwrap();
    let u = m.users.get("kim").expect("kim is back");
    assert_eq!(
        u.friendly_name.as_deref(),
        Some("Kim K"),
        "the current name, not the stale one"
    );
    assert_ne!(u.sid, "USkim", "the workaround did run: a new User");
    let p = m
        .participants
        .get(&(OTHER.to_string(), "kim".to_string()))
        .expect("membership kept");
    assert_eq!(p.attributes, r#"{"seat":0}"#);
    drop(m);
    let repairs = b.store.repairs.lock().unwrap();
    assert_eq!(repairs.len(), 2, "a new record holds the fresh snapshot");
    assert!(
        repairs.iter().all(|r| r.state == RepairState::Recovered),
        "{old}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_delete_that_landed_before_the_crash_is_read_back_not_sent_again() {
    // Crash in `deleting` after Twilio deleted the User, before the
    // journal heard of it: the SID reads 404, so no second DELETE goes
    // out; the User comes back from the journaled snapshot.
    let b = bench_operator(FakeTwilio::with_kim(1));
    let id = journal_stale_record(&b, "Kim K", RepairState::Deleting).await;
    b.fake.0.lock().unwrap().users.remove("kim");
    assert_eq!(b.rep.recover_pending(None).await, 1);
    assert_eq!(
        b.fake.count(Method::DELETE, "/Users/"),
        0,
        "no second DELETE"
    );
    assert_kim_back(&b, "Kim K");
    let repairs = b.store.repairs.lock().unwrap();
    assert_eq!(repairs.len(), 1, "no new record: nothing to re-snapshot");
    assert_eq!(repairs[0].id, id);
    assert_eq!(repairs[0].state, RepairState::Recovered);
}

#[tokio::test(start_paused = true)]
async fn a_refused_recreate_waits_for_an_operator_and_is_never_closed_recovered() {
    // Twilio refuses the recreate for good (400): the User stays deleted,
    // and nothing in the background may close the record as if it were
    // back (from `needs-operator` no phase is left to run).
    let b = bench_operator(FakeTwilio::with_kim(1));
    b.fake
        .fault(Method::POST, "/Users", 0, Reply::Status(400), false);
    let v = workflow::run(&b.rep, &kim_create()).await;
    assert_eq!(v.outcome, Outcome::Failed, "{:?}", v.detail);
    let calls = b.fake.0.lock().unwrap().calls.len();
    // Well past every background round and sweep.
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(b.rep.recover_pending(None).await, 0);
    let repairs = b.store.repairs.lock().unwrap().clone();
    assert_eq!(repairs.len(), 1);
    assert_eq!(repairs[0].state, RepairState::NeedsOperator);
    assert!(!b.fake.0.lock().unwrap().users.contains_key("kim"));
    assert_eq!(
        b.fake.0.lock().unwrap().calls.len(),
        calls,
        "no call after the refusal"
    );
}

#[tokio::test(start_paused = true)]
async fn an_operator_repair_refused_for_good_waits_for_an_operator() {
    let b = bench_operator(FakeTwilio::with_kim(1));
    b.fake
        .fault(Method::POST, "/Users", 0, Reply::Status(400), false);
    let r = operator_repair_kim(&b).await;
    assert_eq!(r.outcome, Some(Outcome::Failed), "{:?}", r.error);
    let calls = b.fake.0.lock().unwrap().calls.len();
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(
        b.store.repairs.lock().unwrap()[0].state,
        RepairState::NeedsOperator
    );
    assert_eq!(
        b.fake.0.lock().unwrap().calls.len(),
        calls,
        "the refused write is not sent again"
    );
}

#[tokio::test(start_paused = true)]
async fn an_operator_repair_verified_while_the_journal_is_down_is_not_converged_again() {
    let b = bench_operator(FakeTwilio::with_kim(1));
    b.store.fail_after_insert.store(true, Ordering::SeqCst);
    let r = operator_repair_kim(&b).await;
    assert_eq!(r.outcome, Some(Outcome::Repaired), "{:?}", r.error);
    // The app renames Kim; the journal (back now) still says `deleting`.
    b.fake
        .0
        .lock()
        .unwrap()
        .users
        .get_mut("kim")
        .unwrap()
        .friendly_name = Some("Kimberly".into());
    b.store.fail_writes.store(false, Ordering::SeqCst);
    b.rep.recover_pending(None).await;
    assert_eq!(
        b.fake.0.lock().unwrap().users["kim"]
            .friendly_name
            .as_deref(),
        Some("Kimberly"),
        "the app's rename stands"
    );
}

#[tokio::test(start_paused = true)]
async fn a_late_delete_landing_during_the_resnapshot_leaves_the_journaled_snapshot_in_force() {
    // Left in `deleting`; the killed process's DELETE is still on the
    // wire. Recovery reads the SID (200), then the DELETE lands before the
    // re-snapshot reads the identity: a snapshot of nobody must not
    // replace the journaled one (Kim would come back bare).
    let b = bench_operator(FakeTwilio::with_kim(1));
    let id = journal_stale_record(&b, "Kim K", RepairState::Deleting).await;
    b.fake
        .fault(Method::GET, "/Users/USkim", 0, Reply::Status(200), false);
    b.fake.0.lock().unwrap().users.remove("kim");
    assert_eq!(b.rep.recover_pending(None).await, 1);
    let m = b.fake.0.lock().unwrap();
    let u = m.users.get("kim").expect("kim is back");
    assert_eq!(u.friendly_name.as_deref(), Some("Kim K"), "not bare");
    assert_eq!(u.attributes, r#"{"vip":true}"#);
    assert_eq!(u.role_sid, "RLadmin");
    drop(m);
    assert_kim_back(&b, "Kim K");
    assert_eq!(b.fake.count(Method::DELETE, "/Users/"), 0);
    let repairs = b.store.repairs.lock().unwrap();
    assert_eq!(repairs.len(), 1, "no snapshot of nobody journaled");
    assert_eq!(
        (repairs[0].id, repairs[0].state),
        (id, RepairState::Recovered)
    );
}

#[tokio::test(start_paused = true)]
async fn a_user_delete_whose_answer_is_lost_is_read_back_not_sent_again() {
    let b = bench_operator(FakeTwilio::with_kim(1));
    b.fake
        .fault(Method::DELETE, "/Users/USkim", 0, Reply::Reset, true);
    let v = workflow::run(&b.rep, &kim_create()).await;
    assert_eq!(v.outcome, Outcome::Repaired, "{:?}", v.detail);
    assert_eq!(b.fake.count(Method::DELETE, "/Users/"), 1, "one DELETE");
    assert_kim_back(&b, "Kim K");
    // And a 5xx after which the User is still there is sent again.
    let b = bench_operator(FakeTwilio::with_kim(1));
    b.fake
        .fault(Method::DELETE, "/Users/USkim", 0, Reply::Status(503), false);
    let v = workflow::run(&b.rep, &kim_create()).await;
    assert_eq!(v.outcome, Outcome::Repaired, "{:?}", v.detail);
    assert_eq!(b.fake.count(Method::DELETE, "/Users/"), 2);
}

#[tokio::test(start_paused = true)]
async fn a_resnapshot_whose_journal_fails_never_leaves_two_open_records() {
    // Left in `deleting`, the User alive (the delete never landed): the
    // re-snapshot goes into a new record, and the journal refuses every
    // write after that insert. Two open records of one identity (two
    // snapshots, the older converged after the newer) must never be left.
    let b = bench_operator(FakeTwilio::with_kim(1));
    journal_stale_record(&b, "Old Name", RepairState::Deleting).await;
    b.store.fail_after_insert.store(true, Ordering::SeqCst);
    b.rep.recover_pending(None).await;
    let repairs = b.store.repairs.lock().unwrap().clone();
    let open: Vec<_> = repairs.iter().filter(|r| r.state.is_open()).collect();
    assert!(open.len() <= 1, "two open records: {repairs:#?}");
    let m = b.fake.0.lock().unwrap();
    assert_eq!(
        m.users["kim"].friendly_name.as_deref(),
        Some("Kim K"),
        "the current name, not the stale one"
    );
}

#[tokio::test(start_paused = true)]
async fn an_operator_repair_whose_delete_is_refused_is_done_and_blocks_nothing() {
    let b = bench_operator(FakeTwilio::with_kim(1));
    b.fake
        .fault(Method::DELETE, "/Users/USkim", 0, Reply::Status(400), false);
    let r = operator_repair_kim(&b).await;
    assert_eq!(r.outcome, Some(Outcome::Failed), "{:?}", r.error);
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(
        b.store.repairs.lock().unwrap()[0].state,
        RepairState::Done,
        "the User was left as it was: nothing waits for an operator"
    );
    assert_eq!(b.fake.0.lock().unwrap().users["kim"].sid, "USkim");
    // The identity can be repaired again.
    let v = workflow::run(&b.rep, &kim_create()).await;
    assert_eq!(v.outcome, Outcome::Repaired, "{:?}", v.detail);
}

#[tokio::test(start_paused = true)]
async fn a_delete_that_may_have_landed_is_never_closed_as_refused() {
    // The DELETE lands but its answer is lost; the read-back of the SID is
    // refused (401). Whether Kim is gone is unknown: the record must not
    // be closed "delete refused, User as it was"; recovery brings Kim back.
    let b = bench_operator(FakeTwilio::with_kim(1));
    b.fake
        .fault(Method::DELETE, "/Users/USkim", 0, Reply::Reset, true);
    b.fake
        .fault(Method::GET, "/Users/USkim", 0, Reply::Status(401), false);
    let v = workflow::run(&b.rep, &kim_create()).await;
    assert_ne!(v.outcome, Outcome::Disabled, "{:?}", v.detail);
    assert_ne!(
        b.store.repairs.lock().unwrap()[0].state,
        RepairState::Done,
        "closed as if the delete were refused"
    );
    tokio::time::sleep(Duration::from_secs(600)).await;
    let m = b.fake.0.lock().unwrap();
    let u = m.users.get("kim").expect("kim is back");
    assert_eq!(u.friendly_name.as_deref(), Some("Kim K"));
    drop(m);
    assert_kim_back(&b, "Kim K");
    assert!(!b.store.repairs.lock().unwrap()[0].state.is_open());
    assert_eq!(b.fake.count(Method::DELETE, "/Users/"), 1, "one DELETE");
}

#[tokio::test(start_paused = true)]
async fn a_late_delete_landing_after_the_resnapshots_listing_is_read_back() {
    // As above, but the late DELETE lands once the re-snapshot has listed
    // the memberships: the SID read after the snapshot sees it gone, so no
    // new record is written and no second DELETE is sent.
    let b = bench_operator(FakeTwilio::with_kim(1));
    let id = journal_stale_record(&b, "Old Name", RepairState::Deleting).await;
    b.fake.0.lock().unwrap().delete_after_listing = true;
    assert_eq!(b.rep.recover_pending(None).await, 1);
    assert_eq!(b.fake.count(Method::DELETE, "/Users/"), 0);
    let repairs = b.store.repairs.lock().unwrap().clone();
    assert_eq!(repairs.len(), 1, "no re-snapshot journaled: {repairs:#?}");
    assert_eq!(
        (repairs[0].id, repairs[0].state),
        (id, RepairState::Recovered)
    );
    let m = b.fake.0.lock().unwrap();
    let u = m.users.get("kim").expect("kim is back");
    assert_eq!(
        u.friendly_name.as_deref(),
        Some("Old Name"),
        "the journaled snapshot"
    );
    drop(m);
    assert_kim_back(&b, "Old Name");
}

#[tokio::test(start_paused = true)]
async fn a_delete_that_may_have_landed_is_sent_again_only_once_its_sid_reads_200() {
    // The DELETE lands, its answer is lost, and the SID's read-back fails
    // over and over (5xx past every attempt of a read): the SID is read
    // again until it says, never the DELETE sent again meanwhile.
    let b = bench_operator(FakeTwilio::with_kim(1));
    b.fake
        .fault(Method::DELETE, "/Users/USkim", 0, Reply::Reset, true);
    for _ in 0..12 {
        b.fake
            .fault(Method::GET, "/Users/USkim", 0, Reply::Status(503), false);
    }
    let v = workflow::run(&b.rep, &kim_create()).await;
    assert_eq!(v.outcome, Outcome::Repaired, "{:?}", v.detail);
    assert_eq!(b.fake.count(Method::DELETE, "/Users/"), 1, "one DELETE");
    assert_kim_back(&b, "Kim K");
}

#[tokio::test(start_paused = true)]
async fn a_refused_delete_whose_done_write_is_lost_is_not_converged_again() {
    // Twilio refuses the DELETE (the User untouched), and the journal
    // refuses the `done` that says so: the record, still `deleting` in the
    // journal, must not be converged again over the untouched User.
    for operator in [false, true] {
        let b = bench_operator(FakeTwilio::with_kim(1));
        b.fake
            .fault(Method::DELETE, "/Users/USkim", 0, Reply::Status(400), false);
        b.store.fail_after_insert.store(true, Ordering::SeqCst);
        if operator {
            operator_repair_kim(&b).await;
        } else {
            workflow::run(&b.rep, &kim_create()).await;
        }
        b.store.fail_writes.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(600)).await;
        b.rep.recover_pending(None).await;
        assert_eq!(
            b.fake.count(Method::DELETE, "/Users/"),
            1,
            "operator: {operator}"
        );
        assert_eq!(b.fake.0.lock().unwrap().users["kim"].sid, "USkim");
        let r = b.store.repairs.lock().unwrap()[0].clone();
        assert_eq!(r.state, RepairState::Done, "operator: {operator}");
        assert!(
            r.note.as_deref().is_some_and(|n| n
                .starts_with("the delete was refused; the User was left as it was; written once")),
            "the note says why: {:?}",
            r.note
        );
    }
}

#[tokio::test(start_paused = true)]
async fn recovery_whose_delete_is_refused_closes_done_and_blocks_nothing() {
    // Left in `deleting`, the User alive: recovery re-snapshots it and its
    // DELETE is refused. The User is as it was: the new record is `done`,
    // not `needs-operator` (which would block every later repair of Kim).
    let b = bench_operator(FakeTwilio::with_kim(1));
    journal_stale_record(&b, "Kim K", RepairState::Deleting).await;
    b.fake
        .fault(Method::DELETE, "/Users/USkim", 0, Reply::Status(400), false);
    assert_eq!(b.rep.recover_pending(None).await, 1);
    let states: Vec<_> = b
        .store
        .repairs
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.state)
        .collect();
    assert_eq!(states, [RepairState::Recovered, RepairState::Done]);
    assert_eq!(b.fake.0.lock().unwrap().users["kim"].sid, "USkim");
    let v = workflow::run(&b.rep, &kim_create()).await;
    assert_eq!(v.outcome, Outcome::Repaired, "{:?}", v.detail);
}

/// An operator's `POST /repairs` for kim, run by the bench's repairer.
async fn operator_repair_kim(b: &Bench) -> super::operator::OperatorReport {
    let req = super::operator::OperatorRequest {
        service_sid: IS.into(),
        identity: "kim".into(),
        dry_run: false,
        create_missing: false,
    };
    b.rep
        .operator_repair(&Origin::parse("http://127.0.0.1:9").unwrap(), &req)
        .await
        .expect("the operator repair ran")
}

#[tokio::test(start_paused = true)]
async fn a_record_waiting_for_an_operator_is_never_retried_by_the_sweep() {
    let b = bench_operator(FakeTwilio::with_kim(1));
    journal_stale_record(&b, "Kim K", RepairState::NeedsOperator).await;
    assert_eq!(b.rep.recover_pending(None).await, 0);
    assert!(b.fake.0.lock().unwrap().calls.is_empty(), "no call at all");
    // And a new repair of the identity does not start over it.
    let v = workflow::run(&b.rep, &kim_create()).await;
    assert_eq!(v.outcome, Outcome::Failed, "{:?}", v.detail);
    assert_eq!(b.fake.count(Method::DELETE, "/Users/"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_repair_finished_from_memory_is_not_converged_again_while_the_journal_is_down() {
    let b = bench_operator(FakeTwilio::with_kim(1));
    b.store.fail_after_insert.store(true, Ordering::SeqCst);
    let v = workflow::run(&b.rep, &kim_create()).await;
    assert_eq!(v.outcome, Outcome::Repaired, "{:?}", v.detail);
    // The app renames Kim; the journal still says `deleting`.
    b.fake
        .0
        .lock()
        .unwrap()
        .users
        .get_mut("kim")
        .unwrap()
        .friendly_name = Some("Kimberly".into());
    let calls = b.fake.0.lock().unwrap().calls.len();
    assert_eq!(b.rep.recover_pending(None).await, 0);
    assert_eq!(
        b.fake.0.lock().unwrap().calls.len(),
        calls,
        "recovery left it alone"
    );
    assert_eq!(
        b.fake.0.lock().unwrap().users["kim"]
            .friendly_name
            .as_deref(),
        Some("Kimberly")
    );
    // Once the journal takes writes again, the record is closed.
    b.store.fail_writes.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert!(b.store.repairs.lock().unwrap()[0].state.is_final());
}

#[tokio::test(start_paused = true)]
async fn a_callers_recovery_pass_waits_for_a_pass_under_way_instead_of_being_lost() {
    // No operator credential: only a caller's can finish the record, and
    // caller passes are rate-limited, so the one set off must not be
    // dropped because the sweep happens to be reading the journal.
    let b = bench(FakeTwilio::with_kim(1));
    journal_stale_record(&b, "Kim K", RepairState::Deleting).await;
    let sweep = b.rep.recovery.running.lock().await;
    let caller = kim_create().authorization().unwrap().clone();
    let rep = b.rep.clone();
    let pass = tokio::spawn(async move { rep.recover_pending(Some(&caller)).await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!pass.is_finished(), "the caller's pass waits for the sweep");
    drop(sweep);
    assert_eq!(
        pass.await.unwrap(),
        1,
        "the caller's pass finished the record"
    );
    assert!(b.fake.0.lock().unwrap().users.contains_key("kim"));
}

/// Kim's create lands ("ghost") but answers 20404, and Twilio's reads of the
/// participant lag the write by `lag`: what the workflow then sees.
fn ghost_with_read_lag(lag: Duration, grace_ms: u64) -> Bench {
    let fake = FakeTwilio::with_kim(1);
    {
        let mut m = fake.0.lock().unwrap();
        m.ghost = true;
        m.read_lag = lag;
        // The caller's own create, which the proxy intercepted.
        let form = [("Identity".to_string(), "kim".to_string())].into();
        let r = m.handle(
            &Method::POST,
            &format!("/v1/Services/{IS}/Conversations/{CH}/Participants"),
            &form,
        );
        assert_eq!(r.unwrap().status, 404, "the fault's 20404");
    }
    bench_config(fake, None, |c| c.read_lag_grace_ms = grace_ms)
}

#[tokio::test(start_paused = true)]
async fn a_409_is_proof_of_existence_read_again_within_the_grace_never_a_delete() {
    for (lag, grace) in [(1_000, 2_000), (3_000, 5_000)] {
        let b = ghost_with_read_lag(Duration::from_millis(lag), grace);
        let started = Instant::now();
        let v = workflow::run(&b.rep, &kim_create()).await;
        assert_eq!(v.outcome, Outcome::Existing, "lag {lag}: {:?}", v.detail);
        assert!(is_created(&v.answer), "lag {lag}: 201 with the participant");
        assert_eq!(b.fake.count(Method::DELETE, "/Users/"), 0, "lag {lag}");
        assert!(b.store.repairs.lock().unwrap().is_empty(), "lag {lag}");
        assert!(
            started.elapsed() <= Duration::from_millis(grace),
            "lag {lag}: within the grace"
        );
        // landed (404), conversation, retry (409), then at most two reads.
        let calls = b.fake.0.lock().unwrap().calls.len();
        assert!((4..=5).contains(&calls), "lag {lag}: {calls} calls");
    }
}

#[tokio::test(start_paused = true)]
async fn a_409_never_readable_within_the_grace_is_answered_unchanged() {
    let b = ghost_with_read_lag(Duration::from_secs(10), 2_000);
    let started = Instant::now();
    let v = workflow::run(&b.rep, &kim_create()).await;
    let Answer::Conflict(r) = &v.answer else {
        panic!("Twilio's 409, not {:?}", v.outcome);
    };
    assert_eq!(r.status, http::StatusCode::CONFLICT);
    assert_eq!(r.code(), Some(50433), "Twilio's own body");
    assert_eq!(v.outcome, Outcome::Existing);
    assert!(
        v.detail
            .as_deref()
            .unwrap_or("")
            .contains("read_lag_grace_ms"),
        "{:?}",
        v.detail
    );
    // The last read is at the grace's end, none after it.
    assert!(
        started.elapsed() <= Duration::from_millis(2_050),
        "the grace bounds it: {:?}",
        started.elapsed()
    );
    assert_eq!(b.fake.count(Method::DELETE, "/Users/"), 0);
    let incidents = b.store.incidents.lock().unwrap();
    assert_eq!(incidents[0].outcome, Outcome::Existing);
}

#[tokio::test(start_paused = true)]
async fn a_zero_grace_answers_the_409_at_once_and_still_never_deletes() {
    let b = ghost_with_read_lag(Duration::from_secs(1), 0);
    let v = workflow::run(&b.rep, &kim_create()).await;
    assert!(matches!(v.answer, Answer::Conflict(_)));
    assert_eq!(b.fake.count(Method::DELETE, "/Users/"), 0);
    assert_eq!(
        b.fake.count(Method::GET, "/Participants/kim"),
        1,
        "only the landed check read it"
    );
}

#[tokio::test(start_paused = true)]
async fn a_repair_journals_and_tells_every_sid_it_changed() {
    let b = bench(FakeTwilio::with_kim(2));
    let v = workflow::run(&b.rep, &kim_create()).await;
    assert_eq!(v.outcome, Outcome::Repaired, "{:?}", v.detail);
    let m = b.fake.0.lock().unwrap();
    let mut want = vec![(None, "USkim".to_string(), m.users["kim"].sid.clone())];
    for i in 0..2 {
        let conv = if i == 0 {
            OTHER.to_string()
        } else {
            format!("CH{:032}", 100 + i)
        };
        let new = m.participants[&(conv.clone(), "kim".to_string())]
            .sid
            .clone();
        want.push((Some(conv), format!("MBkim{i}"), new));
    }
    drop(m);
    let mut told: Vec<_> = (v.aliases.iter())
        .map(|a| {
            (
                a.conversation_sid.clone(),
                a.old_sid.clone(),
                a.new_sid.clone(),
            )
        })
        .collect();
    told.sort();
    want.sort();
    assert_eq!(told, want);
    let journaled = b.store.aliases.lock().unwrap().clone();
    assert_eq!(journaled, v.aliases, "journaled as told");
    assert!(journaled.iter().all(|a| a.account_sid == ACCOUNT
        && a.service_sid == IS
        && a.repair_id == v.repair_id.unwrap()));
    // The caller's answer says so.
    let mut h = http::HeaderMap::new();
    super::alias::tell(&mut h, &v.aliases);
    assert_eq!(h.get_all(super::alias::USER_SID_HEADER).iter().count(), 1);
    assert_eq!(h.get_all(super::alias::SID_ALIAS_HEADER).iter().count(), 2);
}

/// An alias as a repair records it, `age` ago.
fn alias(
    old: &str,
    new: &str,
    conversation: Option<&str>,
    age: Duration,
) -> crate::store::SidAlias {
    let at = time::OffsetDateTime::now_utc() - age;
    crate::store::SidAlias {
        created_at: crate::store::rfc3339(at),
        repair_id: 1,
        account_sid: ACCOUNT.into(),
        service_sid: IS.into(),
        service_base: format!("/v1/Services/{IS}"),
        conversation_sid: conversation.map(str::to_string),
        old_sid: old.into(),
        new_sid: new.into(),
    }
}

#[tokio::test]
async fn an_alias_applies_in_its_account_service_and_conversation_within_the_retention() {
    use super::alias::Named;
    let b = bench_config(FakeTwilio::default(), None, |c| {
        c.sid_alias_retention_secs = 3600
    });
    let us = |n: u32| format!("US{n:032}");
    let mb = |n: u32| format!("MB{n:032}");
    let hour = Duration::from_secs(3600);
    {
        let mut list = b.store.aliases.lock().unwrap();
        // A chain: 1 -> 2 (old, still within) -> 3.
        list.push(alias(&us(1), &us(2), None, hour / 2));
        list.push(alias(&us(2), &us(3), None, Duration::ZERO));
        // Past the retention.
        list.push(alias(&us(7), &us(8), None, hour * 2));
        list.push(alias(&mb(1), &mb(2), Some(OTHER), Duration::ZERO));
    }
    let resolve = |path: String, account: &'static str| {
        let rep = b.rep.clone();
        async move {
            let named = Named::parse(&path).expect("a candidate path");
            rep.aliases().resolve(account, &named).await
        }
    };
    let base = format!("/v1/Services/{IS}");
    assert_eq!(
        resolve(format!("{base}/Users/{}", us(1)), ACCOUNT).await,
        Some(us(3)),
        "the newest of the chain"
    );
    assert_eq!(
        resolve(format!("{base}/Users/{}/Conversations", us(2)), ACCOUNT).await,
        Some(us(3))
    );
    assert_eq!(
        resolve(format!("{base}/Users/{}", us(3)), ACCOUNT).await,
        None
    );
    assert_eq!(
        resolve(format!("{base}/Users/{}", us(7)), ACCOUNT).await,
        None,
        "past the retention"
    );
    let other_account = "AC00000000000000000000000000000009";
    assert_eq!(
        resolve(format!("{base}/Users/{}", us(1)), other_account).await,
        None
    );
    let other_service = "IS00000000000000000000000000000009";
    assert_eq!(
        resolve(
            format!("/v1/Services/{other_service}/Users/{}", us(1)),
            ACCOUNT
        )
        .await,
        None
    );
    assert_eq!(
        resolve(format!("/v1/Users/{}", us(1)), ACCOUNT).await,
        None,
        "recorded through the service path: not the default service's"
    );
    assert_eq!(
        resolve(
            format!("{base}/Conversations/{OTHER}/Participants/{}", mb(1)),
            ACCOUNT
        )
        .await,
        Some(mb(2))
    );
    assert_eq!(
        resolve(
            format!("{base}/Conversations/{CH}/Participants/{}", mb(1)),
            ACCOUNT
        )
        .await,
        None,
        "another conversation"
    );
    // Retention 0: nothing is even a candidate.
    let off = bench_config(FakeTwilio::default(), None, |c| {
        c.sid_alias_retention_secs = 0
    });
    assert!(
        !off.rep
            .aliases()
            .may_alias(&format!("{base}/Users/{}", us(1)))
    );
    assert!(
        b.rep
            .aliases()
            .may_alias(&format!("{base}/Users/{}", us(1)))
    );
    assert!(!b.rep.aliases().may_alias(&format!("{base}/Users/kim")));
}

/// Review findings: an alias applies only once its repair is closed, a
/// chain is followed whole or not at all, and nothing but a SID is ever
/// spliced into a path.
#[tokio::test]
async fn an_alias_of_an_open_repair_a_broken_chain_or_a_non_sid_never_applies() {
    use super::alias::Named;
    let b = bench_config(FakeTwilio::default(), None, |c| {
        c.sid_alias_retention_secs = 3600
    });
    let us = |n: u32| format!("US{n:032}");
    let now = Duration::ZERO;
    b.store
        .repairs
        .lock()
        .unwrap()
        .push(crate::store::RepairRecord {
            id: 2,
            created_at: crate::store::now_rfc3339(),
            updated_at: crate::store::now_rfc3339(),
            account_sid: ACCOUNT.into(),
            credential_user: ACCOUNT.into(),
            upstream: "http://127.0.0.1:1".into(),
            service_base: format!("/v1/Services/{IS}"),
            service_sid: IS.into(),
            identity: "kim".into(),
            state: RepairState::Restoring,
            snapshot: crate::store::UserSnapshot {
                user_sid: Some(us(10)),
                identity: "kim".into(),
                friendly_name: None,
                attributes: None,
                role_sid: None,
                memberships: Vec::new(),
            },
            webhook: None,
            note: None,
        });
    {
        let mut list = b.store.aliases.lock().unwrap();
        // Repair 2 is still restoring: its alias must not apply yet.
        let mut open = alias(&us(10), &us(11), None, now);
        open.repair_id = 2;
        list.push(open);
        // A chain whose second hop belongs to another service.
        list.push(alias(&us(20), &us(21), None, now));
        let mut elsewhere = alias(&us(21), &us(22), None, now);
        elsewhere.service_sid = "IS00000000000000000000000000000009".into();
        list.push(elsewhere);
        // Not a SID.
        list.push(alias(&us(30), "US1/../../Users/x", None, now));
    }
    let resolve = |path: String| {
        let rep = b.rep.clone();
        async move {
            let named = Named::parse(&path).expect("a candidate path");
            rep.aliases().resolve(ACCOUNT, &named).await
        }
    };
    let base = format!("/v1/Services/{IS}");
    assert_eq!(
        resolve(format!("{base}/Users/{}", us(10))).await,
        None,
        "open repair"
    );
    assert_eq!(
        resolve(format!("{base}/Users/{}", us(20))).await,
        None,
        "broken chain"
    );
    assert_eq!(
        resolve(format!("{base}/Users/{}", us(30))).await,
        None,
        "not a SID"
    );
    b.store.repairs.lock().unwrap()[0].state = RepairState::Done;
    assert_eq!(
        resolve(format!("{base}/Users/{}", us(10))).await,
        Some(us(11)),
        "closed: applies"
    );
}

#[test]
fn the_repaired_creates_answer_names_the_user_and_at_most_twenty_memberships() {
    let us = |n: u32| format!("US{n:032}");
    let mb = |n: u32| format!("MB{n:032}");
    let mut aliases = vec![alias(&us(1), &us(2), None, Duration::ZERO)];
    for i in 0..100 {
        aliases.push(alias(&mb(i), &mb(1000 + i), Some(CH), Duration::ZERO));
    }
    let mut h = http::HeaderMap::new();
    super::alias::tell(&mut h, &aliases);
    assert_eq!(h.get_all(super::alias::USER_SID_HEADER).iter().count(), 1);
    assert_eq!(
        h.get_all(super::alias::SID_ALIAS_HEADER).iter().count(),
        super::alias::MAX_ALIAS_HEADERS
    );
}

/// The in-memory index: before its first load every candidate path asks
/// the journal; once loaded, only a SID an alias names does (the bench's
/// `GET …/Participants/MB…` never waits on the store).
#[tokio::test]
async fn only_a_sid_an_alias_names_asks_the_journal_once_the_index_is_loaded() {
    let b = bench_config(FakeTwilio::default(), None, |c| {
        c.sid_alias_retention_secs = 3600
    });
    let us = |n: u32| format!("US{n:032}");
    let path = |n: u32| format!("/v1/Services/{IS}/Users/{}", us(n));
    assert!(
        b.rep.aliases().may_alias(&path(1)) && b.rep.aliases().may_alias(&path(5)),
        "not loaded yet"
    );
    b.store
        .aliases
        .lock()
        .unwrap()
        .push(alias(&us(1), &us(2), None, Duration::ZERO));
    b.rep.aliases().refresh().await;
    assert!(b.rep.aliases().may_alias(&path(1)));
    assert!(
        !b.rep.aliases().may_alias(&path(5)),
        "no alias names it: no lookup"
    );
    assert!(
        !b.rep.aliases().may_alias("/v1/Services/x/Conversations"),
        "not a candidate"
    );
}

/// Kim as the invariant wants her after a repair: the User with
/// `friendly`, the snapshot's attributes and role, and her other membership
/// with its attributes and role (not just "a User exists").
fn assert_kim_back(b: &Bench, friendly: &str) {
    let m = b.fake.0.lock().unwrap();
    let u = m.users.get("kim").expect("kim is back");
    assert_eq!(u.friendly_name.as_deref(), Some(friendly));
    assert_eq!(u.attributes, r#"{"vip":true}"#);
    assert_eq!(u.role_sid, "RLadmin");
    let p = m
        .participants
        .get(&(OTHER.to_string(), "kim".to_string()))
        .expect("her other membership is back");
    assert_eq!(
        (p.attributes.as_str(), p.role_sid.as_str()),
        (r#"{"seat":0}"#, "RLmod")
    );
}
