//! The admin plane, on its own listener so that no admin path can collide
//! with a Twilio path.
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /healthz` | 200 `ok` while the process runs |
//! | `GET /readyz` | 200 `ready` when the proxy listener is up, the journal accepts a write (and, for SQLite, is still the file opened at start-up) and the proxy is not draining; else 503 with the reason |
//! | `GET /metrics` | Prometheus text (see [`crate::metrics`]) |
//! | `GET /incidents?limit=N` | intercepted 20404s, newest first (JSON) |
//! | `GET /repairs?state=pending` | journal records not yet finished (JSON) |

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::metrics::Metrics;
use crate::store::Store;

/// Shared state of the admin plane.
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub store: Arc<dyn Store>,
    /// Set once the proxy listener accepts connections.
    pub listening: AtomicBool,
    /// Set when shutdown begins.
    pub draining: AtomicBool,
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/incidents", get(incidents))
        .route("/repairs", get(repairs))
        .with_state(state)
}

async fn readyz(State(s): State<Arc<AdminState>>) -> Response {
    if s.draining.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    if !s.listening.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "proxy listener not up\n").into_response();
    }
    // A real write, not `SELECT 1`: a full disk, a read-only or deleted
    // journal file, or a database that refuses writes must take the
    // replica out of rotation before a repair needs the journal.
    if let Err(e) = s.store.probe_write().await {
        tracing::warn!(error = %e, "journal does not accept writes");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "journal does not accept writes\n",
        )
            .into_response();
    }
    (StatusCode::OK, "ready\n").into_response()
}

async fn metrics(State(s): State<Arc<AdminState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
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
        Ok(list) => Json(serde_json::json!({ "incidents": list })).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read incidents");
            (StatusCode::SERVICE_UNAVAILABLE, "store unreachable\n").into_response()
        }
    }
}

#[derive(serde::Deserialize)]
struct RepairsQuery {
    state: Option<String>,
}

async fn repairs(State(s): State<Arc<AdminState>>, Query(q): Query<RepairsQuery>) -> Response {
    match q.state.as_deref() {
        None | Some("pending") => {}
        Some(_) => return (StatusCode::BAD_REQUEST, "state must be `pending`\n").into_response(),
    }
    match s.store.pending_repairs().await {
        Ok(list) => Json(serde_json::json!({ "repairs": list })).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the journal");
            (StatusCode::SERVICE_UNAVAILABLE, "store unreachable\n").into_response()
        }
    }
}
