//! The control API under `/__emulator/` (see the module docs of `emulator`):
//! every axum handler of it, requests, faults, accounts, traffic and held
//! requests alike. The state they read and change lives in `model`,
//! `accounts` and `traffic`, which know nothing of HTTP.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::accounts::{Account, AccountConfig, AccountError};
use crate::faults::{FaultRule, MAX_FAULT_RULES, ParticipantFault};
use crate::model::Shared;
use crate::store::EmulatorStore;

type AppState = State<Arc<Shared>>;

fn bad_request(message: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": message.into()})),
    )
        .into_response()
}

pub(crate) async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub(crate) async fn get_requests(State(shared): AppState) -> Json<Value> {
    let state = shared.lock();
    let requests: Vec<Value> = state.log.iter().cloned().collect();
    Json(json!({"requests": requests, "dropped": state.log_dropped}))
}

pub(crate) async fn clear_requests(State(shared): AppState) -> StatusCode {
    let mut state = shared.lock();
    state.log.clear();
    state.log_dropped = 0;
    StatusCode::NO_CONTENT
}

pub(crate) async fn reset(State(shared): AppState) -> StatusCode {
    shared.reset();
    shared.traffic.cancel_all();
    StatusCode::NO_CONTENT
}

pub(crate) async fn get_fault(State(shared): AppState) -> Json<ParticipantFault> {
    Json(shared.lock().fault.settings.clone())
}

pub(crate) async fn put_fault(
    State(shared): AppState,
    Json(settings): Json<ParticipantFault>,
) -> Response {
    match settings.compile() {
        Ok(compiled) => {
            shared.lock().fault = compiled;
            (StatusCode::OK, Json(settings)).into_response()
        }
        Err(e) => bad_request(e),
    }
}

pub(crate) async fn get_faults(State(shared): AppState) -> Json<Value> {
    let state = shared.lock();
    let rules: Vec<Value> = state
        .rules
        .iter()
        .map(|r| json!({"id": r.id, "rule": r.rule}))
        .collect();
    Json(json!({"faults": rules}))
}

pub(crate) async fn add_fault(State(shared): AppState, Json(rule): Json<FaultRule>) -> Response {
    let mut state = shared.lock();
    if state.rules.len() >= MAX_FAULT_RULES {
        return bad_request(format!("at most {MAX_FAULT_RULES} rules"));
    }
    let id = state.next_rule_id;
    match rule.compiled(id) {
        Ok(compiled) => {
            state.next_rule_id += 1;
            state.rules.push(compiled);
            (StatusCode::CREATED, Json(json!({"id": id}))).into_response()
        }
        Err(e) => bad_request(e),
    }
}

pub(crate) async fn clear_faults(State(shared): AppState) -> StatusCode {
    shared.lock().rules.clear();
    StatusCode::NO_CONTENT
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserDate {
    identity: String,
    /// The owning account (default: the configured `account_sid`).
    #[serde(default)]
    account_sid: Option<String>,
    #[serde(default)]
    service_sid: Option<String>,
    date_created: String,
}

pub(crate) async fn set_user_date_created(
    State(shared): AppState,
    Json(body): Json<UserDate>,
) -> Response {
    match crate::api::set_user_date_created(
        &shared,
        body.account_sid.as_deref(),
        body.service_sid.as_deref(),
        &body.identity,
        &body.date_created,
    ) {
        Ok(user) => (StatusCode::OK, Json(user)).into_response(),
        Err(e) => bad_request(e),
    }
}

/// `GET /__emulator/accounts`: every account, without secrets.
pub(crate) async fn list_accounts(State(shared): AppState) -> Json<Value> {
    let state = shared.lock();
    let accounts: Vec<Value> = state
        .accounts
        .iter()
        .map(|a| a.creds.public(&a.store, a.configured))
        .collect();
    Json(json!({"accounts": accounts}))
}

/// `POST /__emulator/accounts`: add an account with empty resources.
pub(crate) async fn add_account(
    State(shared): AppState,
    Json(creds): Json<AccountConfig>,
) -> Response {
    let mut state = shared.lock();
    let count = state.accounts.len();
    if let Err(e) = creds.check_joins(state.accounts.iter().map(|a| &a.creds), count) {
        let status = match e {
            AccountError::DuplicateAccount(_) | AccountError::DuplicateApiKey(_) => {
                StatusCode::CONFLICT
            }
            _ => StatusCode::BAD_REQUEST,
        };
        return (status, Json(json!({"error": e.to_string()}))).into_response();
    }
    let store = EmulatorStore::new(&shared.config, None);
    let body = creds.public(&store, false);
    state.accounts.push(Account {
        creds,
        store,
        configured: false,
    });
    (StatusCode::CREATED, Json(body)).into_response()
}

/// `GET /__emulator/stats`.
pub(crate) async fn get_stats(State(shared): AppState) -> Json<Value> {
    Json(shared.traffic.stats())
}

/// `DELETE /__emulator/stats`: every maximum becomes the current count.
pub(crate) async fn reset_stats(State(shared): AppState) -> StatusCode {
    shared.traffic.reset_maxima();
    StatusCode::NO_CONTENT
}

/// `GET /__emulator/held`.
pub(crate) async fn get_held(State(shared): AppState) -> Json<Value> {
    Json(shared.traffic.held())
}

/// Which held requests to release (all when both are absent).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseFilter {
    /// Id of the rule that held them.
    #[serde(default)]
    id: Option<u64>,
    /// The `seq` of one held request.
    #[serde(default)]
    seq: Option<u64>,
}

/// `POST /__emulator/release` with no body (all), `{"id": rule}` or
/// `{"seq": n}`.
pub(crate) async fn release(State(shared): AppState, body: Bytes) -> Response {
    let filter = if body.iter().all(u8::is_ascii_whitespace) {
        ReleaseFilter::default()
    } else {
        match serde_json::from_slice::<ReleaseFilter>(&body) {
            Ok(f) => f,
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(json!({"error": format!("invalid release filter: {e}")})),
                )
                    .into_response();
            }
        }
    };
    let released = shared.traffic.release(filter.id, filter.seq);
    (StatusCode::OK, Json(json!({"released": released}))).into_response()
}
