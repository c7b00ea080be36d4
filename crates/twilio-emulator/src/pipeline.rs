//! The request pipeline in front of the Twilio resource handlers of
//! `api.rs`: request id, body limit, authentication (which account the
//! credentials belong to), in-flight counting, fault injection and the
//! request log.
//!
//! A request whose chosen fault is `delay_then_process` or `hold` continues
//! in a spawned task: hyper drops the handler future when the client closes
//! its connection, and those faults exist precisely to process a request
//! after its client (the proxy) is gone.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;

use crate::accounts;
use crate::api::{self, EmulatorError, Params, Req};
use crate::faults::{self, Chosen, FaultAction, Incoming};
use crate::model::Shared;
use crate::traffic::{InFlight, Release, Traffic};
use crate::{DropConnection, MAX_BODY_BYTES};
use twilio_wire::twilio_more_info;

/// Name of the request-id header on every response.
const REQUEST_ID_HEADER: &str = "twilio-request-id";
/// Headers never written to the request log.
const SECRET_HEADERS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

pub(crate) fn new_request_id() -> String {
    format!("RQ{:032x}", rand::random::<u128>())
}

/// Adds `Twilio-Request-Id` to responses that lack one (control API).
pub(crate) async fn ensure_request_id(mut response: Response) -> Response {
    if !response.headers().contains_key(REQUEST_ID_HEADER) {
        if let Ok(v) = HeaderValue::from_str(&new_request_id()) {
            response.headers_mut().insert(REQUEST_ID_HEADER, v);
        }
    }
    response
}

/// `(username, password)` of a Basic `Authorization` header.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_owned(), pass.to_owned()))
}

pub(crate) fn unauthorized() -> Response {
    let body = json!({
        "code": 20003,
        "detail": "",
        "message": "Authenticate",
        "more_info": twilio_more_info(20003),
        "status": 401,
    });
    let mut response = api::json_response(StatusCode::UNAUTHORIZED, Some(&body));
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"Twilio API\""),
    );
    response
}

fn drop_response() -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response.extensions_mut().insert(DropConnection);
    response
}

/// Headers for the request log: everything except credentials.
fn loggable_headers(secrets: &[String], headers: &HeaderMap) -> Value {
    let mut map = Map::new();
    for (name, value) in headers {
        let name = name.as_str();
        if SECRET_HEADERS.contains(&name) {
            continue;
        }
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        if secrets.iter().any(|s| value.contains(s.as_str())) {
            continue;
        }
        match map.get_mut(name) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&value);
            }
            _ => {
                map.insert(name.to_owned(), Value::String(value));
            }
        }
    }
    Value::Object(map)
}

/// The fallback handler: every non-control request.
pub(crate) async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let request_id = new_request_id();
    let (parts, body) = request.into_parts();
    let mut response =
        if parts.uri.path() == "/__emulator" || parts.uri.path().starts_with("/__emulator/") {
            // Unknown control path: not logged, no auth.
            EmulatorError::not_found(parts.uri.path()).into_response()
        } else {
            api_request(shared, &request_id, parts, body).await
        };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    response
}

/// One authenticated API request with its faults chosen.
struct Job {
    /// `State::generation` when the request was authenticated.
    generation: u64,
    method: Method,
    path: String,
    path_and_query: String,
    query: Option<String>,
    form: Params,
    account_sid: String,
    chosen: Chosen,
}

/// What happened, for the request log.
struct Outcome {
    /// None when the connection is dropped.
    status: Option<u16>,
    outcome: &'static str,
    fault: Option<&'static str>,
}

impl Outcome {
    fn new(status: Option<u16>, outcome: &'static str) -> Self {
        Self {
            status,
            outcome,
            fault: None,
        }
    }
}

/// Log a finished request, unless the emulator was reset since it began
/// (`generation`): the reset wiped the log it belongs to.
fn finish(shared: &Shared, generation: u64, mut entry: Value, outcome: &Outcome) {
    if let Some(obj) = entry.as_object_mut() {
        obj.insert("status".into(), json!(outcome.status));
        obj.insert("outcome".into(), json!(outcome.outcome));
        obj.insert("fault".into(), json!(outcome.fault));
    }
    let max = shared.config.max_request_log;
    let mut state = shared.lock();
    if state.generation == generation {
        state.push_log(max, entry);
    }
}

fn set_entry(entry: &mut Value, key: &str, value: Value) {
    if let Some(obj) = entry.as_object_mut() {
        obj.insert(key.to_owned(), value);
    }
}

/// Body, auth, fault choice; then [`run`], inline or in its own task.
async fn api_request(
    shared: Arc<Shared>,
    request_id: &str,
    parts: http::request::Parts,
    body: Body,
) -> Response {
    let (overall, _) = Traffic::enter(&shared.traffic, None);
    let generation = shared.lock().generation;
    let path = parts.uri.path().to_owned();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or_else(|| path.clone(), |pq| pq.as_str().to_owned());
    let creds = basic_credentials(&parts.headers);
    let mut entry = json!({
        "request_id": request_id,
        "method": parts.method.as_str(),
        "path": path_and_query,
        "headers": loggable_headers(&shared.secrets(), &parts.headers),
        "auth_user": creds.as_ref().map(|(u, _)| u.clone()),
    });
    let body: Bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            let e = EmulatorError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                20001,
                format!("Request body larger than {MAX_BODY_BYTES} bytes or unreadable"),
            );
            set_entry(&mut entry, "account_sid", Value::Null);
            finish(
                &shared,
                generation,
                entry,
                &Outcome::new(Some(413), "responded"),
            );
            return e.into_response();
        }
    };
    let form = Params::parse(&body);
    set_entry(&mut entry, "form", form.to_json());
    let (account, generation) = {
        let state = shared.lock();
        let account = accounts::resolve(&state.accounts, creds.as_ref());
        (account, state.generation)
    };
    set_entry(&mut entry, "account_sid", json!(account));
    let Some(account_sid) = account else {
        finish(
            &shared,
            generation,
            entry,
            &Outcome::new(Some(401), "responded"),
        );
        return unauthorized();
    };
    let (account_guard, in_flight) = Traffic::enter(&shared.traffic, Some(&account_sid));
    let chosen = {
        let mut state = shared.lock();
        faults::choose(
            &mut state.rules,
            &Incoming {
                method: parts.method.as_str(),
                path: &path,
                account_sid: &account_sid,
                in_flight,
            },
        )
    };
    let detached = chosen.action.as_ref().is_some_and(FaultAction::detached);
    let job = Job {
        generation,
        method: parts.method,
        path,
        path_and_query,
        query: parts.uri.query().map(str::to_owned),
        form,
        account_sid,
        chosen,
    };
    if !detached {
        return run(&shared, job, entry, [overall, account_guard]).await;
    }
    // Processed even if this future is dropped (the client went away).
    let (tx, rx) = oneshot::channel();
    let task_shared = shared.clone();
    tokio::spawn(async move {
        let response = run(&task_shared, job, entry, [overall, account_guard]).await;
        let _ = tx.send(response);
    });
    rx.await.unwrap_or_else(|_| {
        EmulatorError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            20500,
            "Emulator task failed",
        )
        .into_response()
    })
}

/// Apply the chosen faults, process, log. The in-flight guards are dropped
/// when the request is finished (logged).
async fn run(shared: &Shared, job: Job, mut entry: Value, guards: [InFlight; 2]) -> Response {
    let (response, outcome) = apply(shared, &job, &mut entry).await;
    finish(shared, job.generation, entry, &outcome);
    drop(guards);
    response
}

/// Fault injection and the operation itself.
async fn apply(shared: &Shared, job: &Job, entry: &mut Value) -> (Response, Outcome) {
    let chosen = &job.chosen;
    if chosen.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(chosen.delay_ms)).await;
    }
    let mut drop_after: Option<(&'static str, u64)> = None;
    let mut malformed = false;
    let mut outcome_name = "responded";
    match chosen.action.clone() {
        None | Some(FaultAction::Latency { .. }) => {}
        Some(FaultAction::Status {
            status,
            code,
            message,
        }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let code = code.unwrap_or(match status.as_u16() {
                503 => 20503,
                500..=599 => 20500,
                404 => 20404,
                429 => 20429,
                _ => 20001,
            });
            let message = message.unwrap_or_else(|| {
                status
                    .canonical_reason()
                    .unwrap_or("Injected error")
                    .to_owned()
            });
            let e = EmulatorError::new(status, code, message);
            return (
                e.into_response(),
                Outcome::new(Some(status.as_u16()), "injected_status"),
            );
        }
        Some(FaultAction::TooManyRequests { retry_after }) => {
            let mut response =
                EmulatorError::new(StatusCode::TOO_MANY_REQUESTS, 20429, "Too Many Requests")
                    .into_response();
            if let Some(secs) = retry_after {
                if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                    response.headers_mut().insert(header::RETRY_AFTER, v);
                }
            }
            return (response, Outcome::new(Some(429), "injected_status"));
        }
        Some(FaultAction::Reset { processed }) => {
            if !processed {
                return (drop_response(), Outcome::new(None, "reset"));
            }
            drop_after = Some(("reset", 0));
        }
        Some(FaultAction::HangThenDrop { ms, processed }) => {
            if !processed {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                return (drop_response(), Outcome::new(None, "hang_then_drop"));
            }
            drop_after = Some(("hang_then_drop", ms));
        }
        Some(FaultAction::MalformedJson) => malformed = true,
        Some(FaultAction::DelayThenProcess { ms }) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            outcome_name = "delay_then_process";
        }
        Some(FaultAction::Hold { process_on_release }) => {
            let ticket = match shared.traffic.hold(
                chosen.rule_id,
                job.method.as_str(),
                &job.path_and_query,
                &job.account_sid,
            ) {
                Ok(t) => t,
                Err(full) => {
                    let e = EmulatorError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        20503,
                        full.to_string(),
                    );
                    return (e.into_response(), Outcome::new(Some(503), "hold_full"));
                }
            };
            set_entry(entry, "held_seq", json!(ticket.seq));
            let release = ticket.wait(&shared.traffic).await;
            if release == Release::Cancelled || !process_on_release {
                return (drop_response(), Outcome::new(None, "held_dropped"));
            }
            outcome_name = "held";
        }
    }

    let req = Req {
        method: &job.method,
        path: &job.path,
        query: Params::parse(job.query.as_deref().unwrap_or("").as_bytes()),
        form: &job.form,
    };
    let (mut response, status, fault) = match api::dispatch(shared, &req, &job.account_sid) {
        Ok(reply) => {
            let status = reply.status.as_u16();
            (reply.into_response(), status, None)
        }
        Err(e) => {
            let status = e.status.as_u16();
            let fault = e.fault;
            (e.into_response(), status, fault)
        }
    };
    if let Some((outcome, ms)) = drop_after {
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let mut o = Outcome::new(None, outcome);
        o.fault = fault;
        return (drop_response(), o);
    }
    if malformed {
        let bytes =
            match axum::body::to_bytes(std::mem::take(response.body_mut()), MAX_BODY_BYTES * 64)
                .await
            {
                Ok(b) => b,
                Err(_) => Bytes::new(),
            };
        let cut = if bytes.is_empty() {
            Bytes::from_static(b"{\"")
        } else {
            bytes.slice(..bytes.len() / 2)
        };
        *response.body_mut() = Body::from(cut);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let mut o = Outcome::new(Some(status), "malformed_json");
        o.fault = fault;
        return (response, o);
    }
    let mut o = Outcome::new(Some(status), outcome_name);
    o.fault = fault;
    (response, o)
}
