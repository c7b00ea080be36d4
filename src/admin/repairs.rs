//! `POST /repairs`: an operator's repair of one identity through the
//! running proxy (`{"service_sid", "identity", "dry_run", "create_missing"}`),
//! run by the proxy's own [`crate::repair::Repairer`]
//! (`Repairer::operator_repair`): fenced against its fault-triggered
//! repairs, journaled in its journal, shown on `/ui` and `/incidents`.
//! Needs an authenticated operator (the admin token), like abandoning one.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;

use super::{AdminState, Operator, admin_error};
use crate::repair::operator::OperatorRequest;

pub(super) async fn start(
    State(s): State<Arc<AdminState>>,
    operator: Option<axum::Extension<Operator>>,
    body: Result<Json<OperatorRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Some(refused) = super::refuse_unless_operator(operator.is_some(), "an operator repair") {
        return refused;
    }
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => {
            return admin_error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "expected JSON {{\"service_sid\", \"identity\", \"dry_run\", \"create_missing\"}}: {}",
                    e.body_text()
                ),
            );
        }
    };
    let Some((repairer, origin)) = s.repair_on() else {
        return super::repair_off();
    };
    match repairer
        .operator_repair_detached(crate::routing::Origin::clone(&origin.load()), req.clone())
        .await
    {
        Ok(report) => {
            let status = if report.error.is_some() {
                StatusCode::BAD_GATEWAY
            } else {
                StatusCode::OK
            };
            (status, Json(report)).into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, service = %req.service_sid, "operator repair refused");
            admin_error(e.status(), &e.to_string())
        }
    }
}
