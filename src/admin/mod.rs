//! The admin plane, on its own listener so that no admin path can collide
//! with a Twilio path, and what it may show to whom.
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /healthz` | 200 `ok` while the process runs |
//! | `GET /readyz` | 200 `ready` when the proxy listener is up, the journal accepts a write (and, for SQLite, is still the file opened at start-up) and the proxy is not draining; else 503 with the reason |
//! | `GET /metrics` | Prometheus text (see [`crate::metrics`]) |
//! | `GET /incidents?limit=N` | intercepted 20404s, newest first (JSON) |
//! | `GET /repairs?state=pending[&include=snapshot]` | journal records not yet finished (JSON) |
//! | `POST /repairs` | an authenticated operator's repair of one identity (`{"service_sid", "identity", "dry_run", "create_missing"}`), run by this proxy: see `crate::repair::operator` |
//! | `GET /rehearsals` | the "Ready for repair mode?" panel's figures as JSON ([`rehearsal`]): the mode, faults seen, check-only plans made, failing, skipped (`repair.rehearsal_max_in_flight`), in flight, the newest plans with their incidents; 503 when repair is off |
//! | `POST /selftest` | an authenticated operator runs [`crate::selftest`] with the repair credential against the Conversations origin (a throwaway service, made and deleted); the report as JSON, kept for `/ui`'s "Ready for repair mode?" panel ([`rehearsal`]); one at a time (409), bounded by `admin.selftest_deadline_ms`, interrupted by shutdown, its service deleted either way |
//! | `POST /repairs/{id}/abandon` | an authenticated operator gives up on an unfinished record (`abandoned`; the User is left as it is); 409 when already final |
//! | `GET /` → `/ui`, `/ui/…` | the incidents page for a browser ([`ui`]: HTML, sign-in form, support bundles) |
//!
//! The files: this one (routes, the token check, the JSON answers),
//! `privacy.rs` ([`Privacy`]), `ui.rs` (the page's handlers), `views.rs`
//! (its templates) and `bundle.rs` (the support bundle, shared with
//! `incidents bundle`).
//!
//! Privacy, in one place (here), for every admin answer and for
//! `incidents export` ([`Privacy`]):
//! - With `admin.token` set, every path but the probes (`/healthz`,
//!   `/readyz`, which the kubelet calls without credentials) needs
//!   `Authorization: Bearer <token>` or the session cookie a browser gets
//!   from `POST /ui/login` (`trp_admin_session`: a SHA-256 of the token
//!   under a fixed label, `HttpOnly; SameSite=Strict`), each compared in
//!   constant time. The cookie only reads (GET, HEAD): a change such as
//!   `POST /repairs/{id}/abandon` needs the bearer header (403 otherwise),
//!   so that no page of the same site can make a signed-in browser act.
//!   Without valid credentials: 401 with a JSON body and
//!   `WWW-Authenticate: Bearer` (under `/ui`, the sign-in form).
//! - With `repair.incident_identity = "hash"`, no identity leaves in plain
//!   text: not in incidents (even those recorded before the switch), not in
//!   journal records (which keep the plain identity, needed to recover),
//!   not in `/Users/<identity>` paths inside details and notes.
//! - Journal snapshots (friendly names, attributes that may hold phone
//!   numbers) are left out of `/repairs` unless an operator who presented
//!   the token asks with `?include=snapshot`; with "hash", even then without
//!   friendly names and attributes. Records are shown through an allow-list
//!   of fields, so a field added to the journal is not published by default.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::Digest;

use crate::config::{AdminToken, Config};
use crate::metrics::Metrics;
use crate::store::{Incident, Store};

pub mod bundle;
pub mod clusters;
pub mod rehearsal;
pub mod ui;
mod views;

pub use crate::privacy::{Privacy, hash_identity};

/// The incidents page's session cookie: a browser that signed in with the
/// admin token (`POST /ui/login`) sends it instead of a bearer header.
pub const SESSION_COOKIE: &str = "trp_admin_session";

/// Shared state of the admin plane. Built once by [`AdminState::new`];
/// the proxy's lifecycle is reported through [`AdminState::set_listening`]
/// and [`AdminState::set_draining`] (then [`AdminState::drain`] waits for
/// a selftest's cleanup), nothing else changes.
pub struct AdminState {
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
    /// Set once the proxy listener accepts connections.
    listening: AtomicBool,
    /// Set when shutdown begins.
    draining: AtomicBool,
    /// When set, required on every path but the probes; swapped whole on
    /// reload ([`AdminState::set_token`]).
    token: arc_swap::ArcSwap<Option<AdminToken>>,
    /// How identities are shown.
    privacy: Privacy,
    /// The proxy's repairer and the origin its operator repairs talk to
    /// (`POST /repairs`), when repair is on; the origin follows a reloaded
    /// routing table ([`AdminState::set_repair_origin`]).
    repair: Option<(
        Arc<crate::repair::Repairer>,
        arc_swap::ArcSwap<crate::routing::Origin>,
    )>,
    /// The configuration it started with (`POST /selftest`'s timeouts and
    /// bound; its repair settings are the repairer's, a reload's included).
    config: Config,
    /// The last selftest run through `POST /selftest`.
    selftest: rehearsal::SelftestSlot,
}

/// The answer of a repair endpoint while repair is off.
fn repair_off() -> Response {
    admin_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "repair is off on this proxy (repair.mode = \"off\")",
    )
}

impl AdminState {
    /// The repairer and its origin, when repair is on: not when it is off
    /// at start-up (no repairer was built) or by a reload. Every repair
    /// endpoint then answers [`repair_off`], before anything is read or
    /// written.
    fn repair_on(
        &self,
    ) -> Option<&(
        Arc<crate::repair::Repairer>,
        arc_swap::ArcSwap<crate::routing::Origin>,
    )> {
        self.repair.as_ref().filter(|(r, _)| !r.is_off())
    }

    pub fn new(config: &Config, metrics: Arc<Metrics>, store: Arc<dyn Store>) -> AdminState {
        AdminState {
            metrics,
            store,
            listening: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            token: arc_swap::ArcSwap::from_pointee(config.admin.token.clone()),
            privacy: Privacy::new(config.repair.incident_identity),
            repair: None,
            config: config.clone(),
            selftest: rehearsal::SelftestSlot::default(),
        }
    }

    /// Operator repairs (`POST /repairs`) run on this repairer, against
    /// `origin` (the routing table's Conversations origin).
    pub fn with_repairer(
        mut self,
        repair: Option<Arc<crate::repair::Repairer>>,
        origin: crate::routing::Origin,
    ) -> AdminState {
        self.repair = repair.map(|r| (r, arc_swap::ArcSwap::from_pointee(origin)));
        self
    }

    /// A reloaded routing table's Conversations origin: the next operator
    /// repair talks to it.
    pub fn set_repair_origin(&self, origin: crate::routing::Origin) {
        if let Some((_, o)) = &self.repair {
            o.store(Arc::new(origin));
        }
    }

    /// The admin token now in force.
    fn token(&self) -> Arc<Option<AdminToken>> {
        self.token.load_full()
    }

    /// A reloaded `admin.token`: every request from now on needs the new
    /// one (or none).
    pub fn set_token(&self, token: Option<AdminToken>) {
        self.token.store(Arc::new(token));
    }

    /// The proxy listener accepts connections: `/readyz` may say ready.
    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::SeqCst);
    }

    /// Shutdown has begun: `/readyz` says `draining` from now on, and a
    /// selftest in flight (`POST /selftest`) is interrupted (it goes on to
    /// delete its service) and no new one starts.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.selftest.stop();
    }

    /// Wait (at most `grace`) for the selftest interrupted by
    /// [`AdminState::set_draining`] to delete its service (a warning when
    /// the grace ran out first).
    pub async fn drain(&self, grace: std::time::Duration) {
        self.selftest.drain(grace).await;
    }
}

/// Log a warning when the admin listener is reachable beyond loopback with
/// no token: whoever can connect reads metrics, incidents and the journal.
pub fn warn_if_exposed(addr: SocketAddr, has_token: bool) {
    if !has_token && !addr.ip().is_loopback() {
        tracing::warn!(
            admin_listen = %addr,
            "admin plane is reachable beyond loopback without a token: anyone who can connect \
             reads /metrics, /incidents and /repairs; set admin.token (TRP_ADMIN_TOKEN) or bind \
             admin_listen to a loopback address"
        );
    }
}

mod repairs;

pub fn router(state: Arc<AdminState>) -> Router {
    let guarded = Router::new()
        .route("/metrics", get(metrics))
        .route("/incidents", get(incidents))
        .route("/repairs", get(repairs).post(repairs::start))
        .route("/repairs/{id}/abandon", axum::routing::post(abandon))
        .route("/rehearsals", get(rehearsal::view))
        .route("/selftest", axum::routing::post(rehearsal::run))
        .route("/ui", get(ui::list))
        .route("/ui/incidents/{id}", get(ui::detail))
        .route("/ui/incidents/{id}/bundle", get(ui::bundle))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/", get(|| async { axum::response::Redirect::to("/ui") }))
        .route("/ui/login", get(ui::login_form).post(ui::login))
        .route("/ui/logout", axum::routing::post(ui::logout))
        .merge(guarded)
        .with_state(state)
}

/// Marks a request whose bearer token matched: an authenticated operator.
#[derive(Clone, Copy)]
struct Operator;

async fn require_token(State(s): State<Arc<AdminState>>, mut req: Request, next: Next) -> Response {
    let token = s.token();
    let Some(token) = token.as_ref() else {
        return next.run(req).await;
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| bearer_credentials(v.as_bytes()));
    let by_cookie = presented.is_none();
    let authenticated = match presented {
        Some(p) => token_matches(token.expose().as_bytes(), p),
        None => session_from(req.headers()).is_some_and(|c| {
            token_matches(session_cookie(token.expose().as_bytes()).as_bytes(), c)
        }),
    };
    // The cookie only reads. A browser attaches it to any request from the
    // same site (SameSite=Strict stops cross-site ones only), so a change
    // needs the bearer header, which no other page can make it send.
    if authenticated && by_cookie && !req.method().is_safe() {
        return admin_error(
            StatusCode::FORBIDDEN,
            "the session cookie only reads: a change needs `Authorization: Bearer <admin.token>`",
        );
    }
    match authenticated {
        true => {
            req.extensions_mut().insert(Operator);
            let mut resp = next.run(req).await;
            // Identities, journal records, snapshots: never kept by a
            // browser (or any cache) that read them with the credentials.
            resp.headers_mut()
                .entry(header::CACHE_CONTROL)
                .or_insert(HeaderValue::from_static("no-store"));
            resp
        }
        false if req.uri().path().starts_with("/ui") => ui::unauthorized(),
        false => {
            let mut resp = admin_error(
                StatusCode::UNAUTHORIZED,
                "this admin path needs the admin token: send `Authorization: Bearer <admin.token>`",
            );
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"twilio-repair-proxy admin\""),
            );
            resp
        }
    }
}

/// The credentials of `Bearer <token>` (scheme name case-insensitive,
/// RFC 9110 §11.1), or `None` for any other scheme.
fn bearer_credentials(value: &[u8]) -> Option<&[u8]> {
    let scheme = value.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let rest = &value[7..];
    let start = rest.iter().position(|&b| b != b' ')?;
    let end = rest.iter().rposition(|&b| b != b' ')? + 1;
    Some(&rest[start..end])
}

/// The session cookie's value for a token: a SHA-256 of it under a fixed
/// label (hex), so the browser never holds the token itself, and a new
/// token ends every session.
fn session_cookie(token: &[u8]) -> String {
    let mut h = sha2::Sha256::new();
    h.update(b"twilio-repair-proxy admin session\0");
    h.update(token);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The value of the session cookie in a request's `Cookie` headers.
fn session_from(headers: &axum::http::HeaderMap) -> Option<&[u8]> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let (name, value) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
            (name == SESSION_COOKIE.as_bytes()).then_some(&value[1..])
        })
}

/// Constant-time comparison: both sides are hashed first (equal lengths
/// whatever was presented), then every byte of the digests is compared.
fn token_matches(expected: &[u8], presented: &[u8]) -> bool {
    let a = sha2::Sha256::digest(expected);
    let b = sha2::Sha256::digest(presented);
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// A JSON error body: `{"status": 401, "message": "..."}`.
fn admin_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({ "status": status.as_u16(), "message": message })),
    )
        .into_response()
}

/// Why the replica is not ready, or `Ok` (what `/readyz` answers).
async fn readiness(s: &AdminState) -> Result<(), &'static str> {
    if s.draining.load(Ordering::SeqCst) {
        return Err("draining");
    }
    if !s.listening.load(Ordering::SeqCst) {
        return Err("proxy listener not up");
    }
    // A real write, not `SELECT 1`: a full disk, a read-only or deleted
    // journal file, or a database that refuses writes must take the
    // replica out of rotation before a repair needs the journal.
    if let Err(e) = s.store.probe_write().await {
        tracing::warn!(error = %e, "journal does not accept writes");
        return Err("journal does not accept writes");
    }
    Ok(())
}

async fn readyz(State(s): State<Arc<AdminState>>) -> Response {
    match readiness(&s).await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

/// The registry's series, with two gauges set at scrape time: whether the
/// journal accepts a write now (`trp_store_ready`) and whether `/readyz`
/// would say ready (`trp_ready`), so that an alert sees a store outage and
/// a replica out of rotation in the metrics it already scrapes.
async fn metrics(State(s): State<Arc<AdminState>>) -> Response {
    let ready = readiness(&s).await;
    let store_ok = match ready {
        Err("draining") | Err("proxy listener not up") => s.store.probe_write().await.is_ok(),
        other => other.is_ok(),
    };
    s.metrics.set_readiness(store_ok, ready.is_ok());
    let (applied, invalid) = crate::telemetry::reloads();
    s.metrics
        .sync_outside(crate::telemetry::trace::spans_dropped(), applied, invalid);
    match s.metrics.render() {
        Ok(text) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the metrics");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the metrics\n",
            )
                .into_response()
        }
    }
}

#[derive(serde::Deserialize)]
struct IncidentsQuery {
    limit: Option<i64>,
}

/// Most incidents returned by one `GET /incidents`.
const MAX_INCIDENTS_PAGE: i64 = 1000;

async fn incidents(State(s): State<Arc<AdminState>>, Query(q): Query<IncidentsQuery>) -> Response {
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_INCIDENTS_PAGE);
    match s.store.incidents(limit).await {
        Ok(list) => {
            let list: Vec<Incident> = list.into_iter().map(|i| s.privacy.incident(i)).collect();
            Json(serde_json::json!({ "incidents": list })).into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read incidents");
            admin_error(StatusCode::SERVICE_UNAVAILABLE, "store unreachable")
        }
    }
}

#[derive(serde::Deserialize)]
struct RepairsQuery {
    state: Option<String>,
    include: Option<String>,
}

async fn repairs(
    State(s): State<Arc<AdminState>>,
    operator: Option<axum::Extension<Operator>>,
    Query(q): Query<RepairsQuery>,
) -> Response {
    match q.state.as_deref() {
        None | Some("pending") => {}
        Some(_) => return admin_error(StatusCode::BAD_REQUEST, "state must be `pending`"),
    }
    let with_snapshot = match q.include.as_deref() {
        None => false,
        Some("snapshot") => true,
        Some(_) => return admin_error(StatusCode::BAD_REQUEST, "include must be `snapshot`"),
    };
    if with_snapshot && operator.is_none() {
        return admin_error(
            StatusCode::FORBIDDEN,
            "journal snapshots are shown only to an authenticated operator: set admin.token \
             (TRP_ADMIN_TOKEN) and send `Authorization: Bearer <admin.token>`",
        );
    }
    match s.store.pending_repairs().await {
        Ok(list) => {
            let list: Vec<serde_json::Value> = list
                .iter()
                .map(|r| s.privacy.repair(r, with_snapshot))
                .collect();
            Json(serde_json::json!({ "repairs": list })).into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the journal");
            admin_error(StatusCode::SERVICE_UNAVAILABLE, "store unreachable")
        }
    }
}

/// A change on the admin plane is an authenticated operator's (a token set
/// and presented as the bearer): otherwise the 403 naming what to do.
fn refuse_unless_operator(operator: bool, what: &str) -> Option<Response> {
    if operator {
        return None;
    }
    Some(admin_error(
        StatusCode::FORBIDDEN,
        &format!(
            "{what} needs an authenticated operator: set admin.token (TRP_ADMIN_TOKEN) and \
             send `Authorization: Bearer <admin.token>`"
        ),
    ))
}

/// `POST /repairs/{id}/abandon`: an operator gives up on an unfinished
/// record (it leaves the fence and recovery; the User is left as it is).
/// Only an authenticated operator (a token set and presented) may.
async fn abandon(
    State(s): State<Arc<AdminState>>,
    operator: Option<axum::Extension<Operator>>,
    axum::extract::Path(id): axum::extract::Path<i64>,
) -> Response {
    if let Some(refused) = refuse_unless_operator(operator.is_some(), "abandoning a repair") {
        return refused;
    }
    match s.store.get_repair(id).await {
        Ok(Some(r)) if r.state.is_final() => admin_error(
            StatusCode::CONFLICT,
            &format!("repair {id} is already {}", r.state),
        ),
        Ok(Some(r)) => {
            let note = format!("abandoned by an operator in state {}", r.state);
            match s
                .store
                .set_repair_state(id, crate::store::RepairState::Abandoned, Some(&note))
                .await
            {
                Ok(()) => {
                    tracing::warn!(repair_id = id, from = %r.state, "repair abandoned by an operator");
                    Json(serde_json::json!({ "id": id, "state": crate::store::RepairState::Abandoned }))
                        .into_response()
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot write the journal");
                    admin_error(StatusCode::SERVICE_UNAVAILABLE, "store unreachable")
                }
            }
        }
        Ok(None) => admin_error(StatusCode::NOT_FOUND, &format!("no repair {id}")),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the journal");
            admin_error(StatusCode::SERVICE_UNAVAILABLE, "store unreachable")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_nothing_else_passes() {
        assert_eq!(bearer_credentials(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_credentials(b"bEaReR   abc  "), Some(&b"abc"[..]));
        assert_eq!(bearer_credentials(b"Bearer "), None);
        assert_eq!(bearer_credentials(b"Bearer"), None);
        assert_eq!(bearer_credentials(b"Basic abc"), None);
        assert_eq!(bearer_credentials(b"Bearerabc"), None);
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = axum::http::HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; trp_admin_session=abc ; b=2"),
        );
        assert_eq!(session_from(&h), Some(&b"abc"[..]));
        let mut h = axum::http::HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("trp_admin_sessionx=abc"),
        );
        assert_eq!(session_from(&h), None);
        assert_ne!(session_cookie(b"t1"), session_cookie(b"t2"));
        assert_eq!(session_cookie(b"t1").len(), 64);
    }

    #[test]
    fn token_comparison() {
        assert!(token_matches(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!token_matches(b"0123456789abcdef", b"0123456789abcdeg"));
        assert!(!token_matches(b"0123456789abcdef", b"0123456789abcdef0"));
        assert!(!token_matches(b"0123456789abcdef", b""));
    }
}
