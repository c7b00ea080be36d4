//! The control API under `/__emulator/` (see the module docs of `emulator`).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::faults::{FaultRule, MAX_FAULT_RULES, ParticipantFault};
use crate::model::Shared;

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
