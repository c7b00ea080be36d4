//! The admin plane, on its own listener so that no admin path can collide
//! with a Twilio path.
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /healthz` | 200 `ok` while the process runs |
//! | `GET /readyz` | 200 `ready` when the proxy listener is up, the store answers and the proxy is not draining; else 503 with the reason |
//! | `GET /metrics` | Prometheus text (see [`crate::metrics`]) |

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
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
        .with_state(state)
}

async fn readyz(State(s): State<Arc<AdminState>>) -> Response {
    if s.draining.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    if !s.listening.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "proxy listener not up\n").into_response();
    }
    if let Err(e) = s.store.ping().await {
        tracing::warn!(error = %e, "store unreachable");
        return (StatusCode::SERVICE_UNAVAILABLE, "store unreachable\n").into_response();
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
