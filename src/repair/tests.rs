//! Paused-time unit tests of the workflow's decisions and retries, against
//! a scripted Twilio ([`FakeTwilio`]: a small model of Users, participants
//! and the fault, plus one-shot faults per call) and an in-memory journal
//! that can refuse writes on command ([`MemStore`]). They run in well under
//! a second; the same behaviours over real sockets are in `tests/`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use tokio::time::Instant;

use super::step::{Exchange, Sent};
use super::workflow::{self, Answer, CreateRequest};
use super::{Repairer, RepairerParts};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::routing::Origin;
use crate::store::{Incident, NewRepair, Outcome, RepairRecord, RepairState, Store, StoreError};
use crate::twilio_api::{ApiError, ApiResponse};

const IS: &str = "IS00000000000000000000000000000001";
const CH: &str = "CH00000000000000000000000000000001";
const OTHER: &str = "CH00000000000000000000000000000002";
const ACCOUNT: &str = "AC00000000000000000000000000000001";

#[derive(Clone, Debug, PartialEq)]
struct User {
    sid: String,
    friendly_name: Option<String>,
    attributes: String,
    role_sid: String,
}

#[derive(Clone, Debug)]
struct Participant {
    sid: String,
    attributes: String,
    role_sid: String,
}

/// A one-shot fault: the `n`th matching call gets `reply` (after doing the
/// real thing when `processed`).
struct Fault {
    method: Method,
    path_ends: String,
    skip: usize,
    reply: Reply,
    processed: bool,
}

#[derive(Clone)]
enum Reply {
    Status(u16),
    TooMany(u64),
    Reset,
}

#[derive(Default)]
struct Model {
    users: HashMap<String, User>,
    participants: HashMap<(String, String), Participant>,
    /// The fault: a create for this identity answers 20404 until the User
    /// is recreated.
    stale: Option<String>,
    faults: Vec<Fault>,
    calls: Vec<(Method, String)>,
    next: u32,
    /// A bare User appears right after the delete (a create in the gap).
    bare_after_delete: bool,
}

/// A scripted Twilio Conversations service.
#[derive(Clone, Default)]
struct FakeTwilio(Arc<Mutex<Model>>);

fn json(status: u16, v: serde_json::Value) -> Result<ApiResponse, ApiError> {
    Ok(ApiResponse {
        status: StatusCode::from_u16(status).unwrap(),
        content_type: Some(HeaderValue::from_static("application/json")),
        body: Bytes::from(v.to_string()),
        request_id: Some("RQ0".into()),
        retry_after: None,
    })
}

fn not_found(path: &str) -> Result<ApiResponse, ApiError> {
    json(
        404,
        serde_json::json!({"code":20404,"message":format!("The requested resource {path} was not found"),"status":404}),
    )
}

fn user_json(identity: &str, u: &User) -> serde_json::Value {
    serde_json::json!({"sid":u.sid,"identity":identity,"friendly_name":u.friendly_name,"attributes":u.attributes,"role_sid":u.role_sid,"account_sid":ACCOUNT})
}

fn participant_json(conv: &str, identity: &str, p: &Participant) -> serde_json::Value {
    serde_json::json!({"sid":p.sid,"identity":identity,"conversation_sid":conv,"attributes":p.attributes,"role_sid":p.role_sid,"date_created":"2099-01-01T00:00:00Z"})
}

impl Model {
    fn sid(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}{:032}", self.next)
    }

    fn handle(
        &mut self,
        method: &Method,
        path: &str,
        form: &HashMap<String, String>,
    ) -> Result<ApiResponse, ApiError> {
        let base = format!("/v1/Services/{IS}");
        let rest = path.strip_prefix(&base).unwrap_or(path);
        let rest = rest.split('?').next().unwrap_or(rest);
        let segs: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
        match (method.as_str(), segs.as_slice()) {
            ("GET", ["Conversations", c]) if *c == CH || *c == OTHER => json(
                200,
                serde_json::json!({"sid":c,"account_sid":ACCOUNT,"chat_service_sid":IS}),
            ),
            ("GET", ["Users", who]) => {
                let found = self
                    .users
                    .iter()
                    .find(|(i, u)| *i == who || u.sid == *who)
                    .map(|(i, u)| user_json(i, u));
                found.map_or_else(|| not_found(path), |v| json(200, v))
            }
            ("GET", ["Users", who, "Conversations"]) => {
                let list: Vec<_> = self
                    .participants
                    .iter()
                    .filter(|((_, i), _)| i == who)
                    .map(|((c, _), p)| serde_json::json!({"conversation_sid":c,"participant_sid":p.sid}))
                    .collect();
                json(
                    200,
                    serde_json::json!({"conversations":list,"meta":{"next_page_url":null}}),
                )
            }
            ("DELETE", ["Users", sid]) => {
                let Some(identity) = self
                    .users
                    .iter()
                    .find(|(_, u)| u.sid == *sid)
                    .map(|(i, _)| i.clone())
                else {
                    return not_found(path);
                };
                self.users.remove(&identity);
                // The stale mapping belonged to the deleted User.
                if self.stale.as_deref() == Some(identity.as_str()) {
                    self.stale = None;
                }
                self.participants.retain(|(_, i), _| *i != identity);
                if self.bare_after_delete {
                    let sid = self.sid("US");
                    self.users.insert(
                        identity,
                        User {
                            sid,
                            friendly_name: None,
                            attributes: "{}".into(),
                            role_sid: "RLdefault".into(),
                        },
                    );
                }
                json(204, serde_json::json!({}))
            }
            ("POST", ["Users"]) => {
                let identity = form.get("Identity").cloned().unwrap_or_default();
                if self.users.contains_key(&identity) {
                    return json(409, serde_json::json!({"code":50201,"status":409}));
                }
                let u = User {
                    sid: self.sid("US"),
                    friendly_name: form.get("FriendlyName").cloned(),
                    attributes: form.get("Attributes").cloned().unwrap_or("{}".into()),
                    role_sid: form.get("RoleSid").cloned().unwrap_or("RLdefault".into()),
                };
                if self.stale.as_deref() == Some(identity.as_str()) {
                    self.stale = None;
                }
                let v = user_json(&identity, &u);
                self.users.insert(identity, u);
                json(201, v)
            }
            ("POST", ["Users", sid]) => {
                let Some((identity, u)) = self.users.iter_mut().find(|(_, u)| u.sid == *sid) else {
                    return not_found(path);
                };
                if let Some(v) = form.get("FriendlyName") {
                    u.friendly_name = Some(v.clone())
                }
                if let Some(v) = form.get("Attributes") {
                    u.attributes = v.clone()
                }
                if let Some(v) = form.get("RoleSid") {
                    u.role_sid = v.clone()
                }
                json(200, user_json(identity, u))
            }
            ("GET", ["Conversations", _, "Participants", mb]) if mb.starts_with("MB") => {
                let found = self
                    .participants
                    .iter()
                    .find(|(_, p)| p.sid == *mb)
                    .map(|((c2, i), p)| participant_json(c2, i, p));
                found.map_or_else(|| not_found(path), |v| json(200, v))
            }
            ("GET", ["Conversations", c, "Participants", who]) => {
                match self.participants.get(&(c.to_string(), who.to_string())) {
                    Some(p) => json(200, participant_json(c, who, p)),
                    None => not_found(path),
                }
            }
            ("POST", ["Conversations", c, "Participants"]) => {
                let identity = form.get("Identity").cloned().unwrap_or_default();
                if self
                    .participants
                    .contains_key(&(c.to_string(), identity.clone()))
                {
                    return json(409, serde_json::json!({"code":50433,"status":409}));
                }
                if self.stale.as_deref() == Some(identity.as_str()) {
                    return not_found(path);
                }
                if !self.users.contains_key(&identity) {
                    let sid = self.sid("US");
                    self.users.insert(
                        identity.clone(),
                        User {
                            sid,
                            friendly_name: None,
                            attributes: "{}".into(),
                            role_sid: "RLdefault".into(),
                        },
                    );
                }
                let p = Participant {
                    sid: self.sid("MB"),
                    attributes: form.get("Attributes").cloned().unwrap_or("{}".into()),
                    role_sid: form
                        .get("RoleSid")
                        .cloned()
                        .unwrap_or("RLparticipant".into()),
                };
                let v = participant_json(c, &identity, &p);
                self.participants.insert((c.to_string(), identity), p);
                json(201, v)
            }
            _ => not_found(path),
        }
    }
}

impl Exchange for FakeTwilio {
    fn send<'a>(
        &'a self,
        method: Method,
        path: &'a str,
        sent: &'a Sent<'a>,
        _deadline: Instant,
    ) -> BoxFuture<'a, Result<ApiResponse, ApiError>> {
        Box::pin(async move {
            let body = match sent {
                Sent::Form(f) => f.map(|f| f.as_bytes().to_vec()).unwrap_or_default(),
                Sent::Replay(_, b) => b.to_vec(),
            };
            let form: HashMap<String, String> =
                form_urlencoded::parse(&body).into_owned().collect();
            let mut m = self.0.lock().unwrap();
            m.calls.push((method.clone(), path.to_string()));
            let hit = m.faults.iter_mut().position(|f| {
                if f.method == method
                    && path
                        .split('?')
                        .next()
                        .unwrap_or("")
                        .ends_with(f.path_ends.as_str())
                {
                    if f.skip == 0 {
                        return true;
                    }
                    f.skip -= 1;
                }
                false
            });
            if let Some(i) = hit {
                let f = m.faults.remove(i);
                if f.processed {
                    let _ = m.handle(&method, path, &form);
                }
                return match f.reply {
                    Reply::Status(s) => json(s, serde_json::json!({"code":20500,"status":s})),
                    Reply::TooMany(secs) => {
                        let mut r = json(429, serde_json::json!({"code":20429,"status":429}))?;
                        r.retry_after = Some(Duration::from_secs(secs));
                        Ok(r)
                    }
                    Reply::Reset => Err(ApiError::Transport {
                        method,
                        path: path.to_string(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::ConnectionReset,
                            "connection reset",
                        )
                        .into(),
                    }),
                };
            }
            m.handle(&method, path, &form)
        })
    }
    fn with_authorization(&self, _authorization: HeaderValue) -> Arc<dyn Exchange> {
        Arc::new(self.clone())
    }
}

impl FakeTwilio {
    /// Kim, with fields of her own, in `others` other conversations, stale.
    fn with_kim(others: usize) -> FakeTwilio {
        let fake = FakeTwilio::default();
        {
            let mut m = fake.0.lock().unwrap();
            m.users.insert(
                "kim".into(),
                User {
                    sid: "USkim".into(),
                    friendly_name: Some("Kim K".into()),
                    attributes: r#"{"vip":true}"#.into(),
                    role_sid: "RLadmin".into(),
                },
            );
            for i in 0..others {
                let conv = if i == 0 {
                    OTHER.to_string()
                } else {
                    format!("CH{:032}", 100 + i)
                };
                m.participants.insert(
                    (conv, "kim".into()),
                    Participant {
                        sid: format!("MBkim{i}"),
                        attributes: format!(r#"{{"seat":{i}}}"#),
                        role_sid: "RLmod".into(),
                    },
                );
            }
            m.stale = Some("kim".into());
        }
        fake
    }
    fn fault(&self, method: Method, path_ends: &str, skip: usize, reply: Reply, processed: bool) {
        let path_ends = path_ends.to_string();
        self.0.lock().unwrap().faults.push(Fault {
            method,
            path_ends,
            skip,
            reply,
            processed,
        });
    }
    fn count(&self, method: Method, path_has: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|(m, p)| *m == method && p.contains(path_has))
            .count()
    }
    fn count_ending(&self, method: Method, path_end: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|(m, p)| *m == method && p.ends_with(path_end))
            .count()
    }
    /// The invariant, read from the model.
    fn assert_kim_back(&self, others: usize) {
        let m = self.0.lock().unwrap();
        let u = m.users.get("kim").expect("kim's User exists");
        assert_eq!(
            (
                u.friendly_name.as_deref(),
                u.attributes.as_str(),
                u.role_sid.as_str()
            ),
            (Some("Kim K"), r#"{"vip":true}"#, "RLadmin")
        );
        for i in 0..others {
            let conv = if i == 0 {
                OTHER.to_string()
            } else {
                format!("CH{:032}", 100 + i)
            };
            let p = m
                .participants
                .get(&(conv, "kim".to_string()))
                .expect("membership back");
            assert_eq!(
                (p.attributes.as_str(), p.role_sid.as_str()),
                (format!(r#"{{"seat":{i}}}"#).as_str(), "RLmod")
            );
        }
        assert!(
            m.participants
                .contains_key(&(CH.to_string(), "kim".to_string())),
            "the requested participant exists"
        );
        let deletes = m
            .calls
            .iter()
            .filter(|(me, p)| *me == Method::DELETE && p.contains("/Users/"))
            .count();
        assert!(deletes <= 1, "deleted {deletes} times");
    }
}

/// An in-memory journal that can refuse writes on command.
#[derive(Default)]
struct MemStore {
    repairs: Mutex<Vec<RepairRecord>>,
    incidents: Mutex<Vec<Incident>>,
    fail_writes: AtomicBool,
    /// Refuse every write once a repair record exists (the disk filled up
    /// right after the snapshot was journaled).
    fail_after_insert: AtomicBool,
    next: AtomicI64,
}

impl MemStore {
    fn check(&self) -> Result<(), StoreError> {
        if self.fail_writes.load(Ordering::SeqCst) {
            Err(StoreError::NotReady)
        } else {
            Ok(())
        }
    }
}

impl Store for MemStore {
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
    fn probe_write(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { self.check() })
    }
    fn has_open_repair<'a>(&'a self, identity: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            Ok(self
                .repairs
                .lock()
                .unwrap()
                .iter()
                .any(|r| r.identity == identity && r.state.is_open()))
        })
    }
    fn get_repair(&self, id: i64) -> BoxFuture<'_, Result<Option<RepairRecord>, StoreError>> {
        Box::pin(async move {
            Ok(self
                .repairs
                .lock()
                .unwrap()
                .iter()
                .find(|r| r.id == id)
                .cloned())
        })
    }
    fn insert_repair<'a>(&'a self, r: &'a NewRepair) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(async move {
            self.check()?;
            let id = self.next.fetch_add(1, Ordering::SeqCst) + 1;
            self.repairs.lock().unwrap().push(RepairRecord {
                id,
                created_at: String::new(),
                updated_at: String::new(),
                account_sid: r.account_sid.clone(),
                credential_user: r.credential_user.clone(),
                upstream: r.upstream.clone(),
                service_base: r.service_base.clone(),
                service_sid: r.service_sid.clone(),
                identity: r.identity.clone(),
                state: RepairState::Deleting,
                snapshot: r.snapshot.clone(),
                webhook: r.webhook.clone(),
                note: None,
            });
            if self.fail_after_insert.load(Ordering::SeqCst) {
                self.fail_writes.store(true, Ordering::SeqCst);
            }
            Ok(id)
        })
    }
    fn set_repair_state<'a>(
        &'a self,
        id: i64,
        state: RepairState,
        _note: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.check()?;
            if let Some(r) = self.repairs.lock().unwrap().iter_mut().find(|r| r.id == id) {
                r.state = state
            }
            Ok(())
        })
    }
    fn pending_repairs(&self) -> BoxFuture<'_, Result<Vec<RepairRecord>, StoreError>> {
        Box::pin(async move {
            Ok(self
                .repairs
                .lock()
                .unwrap()
                .iter()
                .filter(|r| !r.state.is_final())
                .cloned()
                .collect())
        })
    }
    fn count_repairs_since<'a>(
        &'a self,
        _s: &'a str,
        _i: &'a str,
        _since: &'a str,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(async { Ok(0) })
    }
    fn insert_incident<'a>(&'a self, i: &'a Incident) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(async move {
            self.incidents.lock().unwrap().push(i.clone());
            Ok(1)
        })
    }
    fn incidents(&self, _limit: i64) -> BoxFuture<'_, Result<Vec<Incident>, StoreError>> {
        Box::pin(async move { Ok(self.incidents.lock().unwrap().clone()) })
    }
}

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
    let mut config = Config::defaults().repair;
    config.retry_initial_backoff_ms = 100;
    config.retry_max_backoff_ms = 2_000;
    config.workflow_deadline_ms = 30_000;
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
        requested_at: time::OffsetDateTime::now_utc(),
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
    // Recreating, Restoring, Replaying and Done did not land; the record
    // stays `deleting` for recovery to verify again later.
    let m = b.metrics.render();
    assert!(m.contains("trp_journal_write_failures_total 4"), "{m}");
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
