//! The proxy service: routing, the repair interception point, forwarding,
//! access logging, and the tower middleware stack, assembled in
//! [`service`] and nowhere else.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use tower::ServiceBuilder;
use tower::util::BoxCloneService;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::map_response_body::MapResponseBodyLayer;

use crate::forward::{Direction, ForwardError, Forwarder, MeteredBody};
use crate::metrics::Metrics;
use crate::repair::Repairer;
use crate::routing::{RouteClass, Routes};
use crate::server::PeerAddr;
use crate::twilio_error;

/// Response header naming why the proxy itself answered with an error.
pub const ERROR_HEADER: &str = "x-repair-proxy-error";
/// Where proxy-generated error codes are documented.
pub const ERRORS_DOC: &str =
    "https://github.com/twilio-repair-proxy/twilio-repair-proxy/blob/main/docs/errors.md";

/// Everything a request handler needs.
pub struct ProxyState {
    pub routes: Routes,
    pub forwarder: Forwarder,
    pub metrics: Arc<Metrics>,
    pub repair: Option<Arc<Repairer>>,
    /// Link rewriting target (`public_base_url`), when enabled.
    pub public_base_url: Option<String>,
}

/// The proxy's HTTP service with its whole middleware stack.
pub type ProxyService = BoxCloneService<Request<Incoming>, Response<Body>, Infallible>;

/// Assemble the middleware stack around the handler: the one place where
/// layers are added. Outermost first:
/// 1. `MapResponseBodyLayer`: one body type for every answer.
/// 2. `CatchPanicLayer`: a bug answers a Twilio-shaped 500, never a dropped
///    connection (and the panic message never reaches the client).
/// 3. the handler: routing, repair interception, forwarding, access log.
pub fn service(state: Arc<ProxyState>) -> ProxyService {
    let svc = ServiceBuilder::new()
        .layer(MapResponseBodyLayer::new(Body::new))
        .layer(CatchPanicLayer::custom(
            |_panic: Box<dyn std::any::Any + Send>| {
                tracing::error!("request handler panicked");
                proxy_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal-error",
                    "twilio-repair-proxy failed while handling this request",
                )
            },
        ))
        .service_fn(move |req: Request<Incoming>| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(handle(state, req).await) }
        });
    BoxCloneService::new(svc)
}

/// A Twilio-shaped error answered by the proxy itself, with
/// `X-Repair-Proxy-Error: <token>`. Codes are `20000 + status`.
pub fn proxy_error(status: StatusCode, token: &'static str, message: &str) -> Response<Body> {
    let code = 20000 + u32::from(status.as_u16());
    let more_info = format!("{ERRORS_DOC}#{code}");
    let mut resp: Response<Body> = twilio_error::error_response(status, code, message, &more_info);
    resp.headers_mut()
        .insert(ERROR_HEADER, HeaderValue::from_static(token));
    resp
}

/// Decrements the in-flight gauge however the request ends.
struct InFlight(Arc<Metrics>);
impl InFlight {
    fn new(m: &Arc<Metrics>) -> Self {
        m.in_flight_inc();
        InFlight(m.clone())
    }
}
impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight_dec();
    }
}

async fn handle(state: Arc<ProxyState>, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let in_flight = InFlight::new(&state.metrics);
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let peer = req.extensions().get::<PeerAddr>().map(|p| p.0);
    if let Some(repair) = &state.repair {
        repair.maybe_recover(req.headers());
    }

    let target = match state.routes.route(
        req.method(),
        req.uri(),
        req.version(),
        req.headers().get(http::header::HOST),
    ) {
        Ok(t) => t,
        Err(refusal) => {
            state
                .metrics
                .record_request(RouteClass::Rejected, &method, refusal.status().as_u16());
            tracing::warn!(
                target: "twilio_repair_proxy::access",
                %method, path = %path, status = refusal.status().as_u16(),
                refused = refusal.token(), "request refused"
            );
            return proxy_error(refusal.status(), refusal.token(), &refusal.to_string());
        }
    };

    let idle = state.forwarder.idle_timeout();
    let (parts, incoming) = req.into_parts();

    let (result, outcome) = match &state.repair {
        Some(repair) if repair.intercepts(&parts.method, parts.uri.path()) => {
            let (resp, outcome) = repair
                .handle(parts, incoming, &target.origin, peer, &state.forwarder)
                .await;
            (resp, outcome)
        }
        _ => {
            let body = Body::new(MeteredBody::new(
                incoming,
                idle,
                Direction::Request,
                state.metrics.clone(),
            ));
            let req = Request::from_parts(parts, body);
            (
                state
                    .forwarder
                    .forward(req, &target.origin, peer)
                    .await
                    .map(|r| r.map(Body::new)),
                None,
            )
        }
    };

    let resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            forward_failure_log(&e);
            let status = e.status();
            state
                .metrics
                .record_request(target.class, &method, status.as_u16());
            tracing::warn!(
                target: "twilio_repair_proxy::access",
                %method, path = %path, status = status.as_u16(),
                upstream = %target.origin.as_string(),
                latency_ms = started.elapsed().as_millis() as u64,
                error = e.token(), "upstream failure"
            );
            return proxy_error(status, e.token(), &e.client_message());
        }
    };

    let resp = match &state.public_base_url {
        Some(public) if crate::rewrite::is_json(resp.headers()) => {
            rewrite_links(resp, public, &target.origin, &state.routes).await
        }
        _ => resp,
    };
    let status = resp.status().as_u16();
    state.metrics.record_request(target.class, &method, status);
    let request_id = resp
        .headers()
        .get("twilio-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let upstream = target.origin.as_string();
    let (parts, body) = resp.into_parts();
    let body = MeteredBody::new(body, idle, Direction::Response, state.metrics.clone()).on_end(
        move |bytes| {
            drop(in_flight);
            tracing::info!(
                target: "twilio_repair_proxy::access",
                %method, path = %path, status, upstream = %upstream,
                latency_ms = started.elapsed().as_millis() as u64,
                bytes, twilio_request_id = %request_id,
                repair_outcome = outcome.unwrap_or(""),
                "request"
            );
        },
    );
    Response::from_parts(parts, Body::new(body))
}

fn forward_failure_log(e: &ForwardError) {
    // The error chain may name hosts and OS errors; it never holds headers
    // or bodies, so it is safe to log.
    tracing::debug!(error = %e, "forwarding failed");
}

/// Rewrite Twilio's absolute URLs in a JSON answer (see [`crate::rewrite`]).
/// Bodies over the bound, or with a `Content-Length` over it, pass untouched;
/// gzip/deflate bodies are decoded and sent uncompressed.
async fn rewrite_links(
    resp: Response<Body>,
    public: &str,
    answered_by: &crate::routing::Origin,
    routes: &Routes,
) -> Response<Body> {
    use http_body_util::BodyExt;
    let cap = crate::rewrite::MAX_REWRITE_BODY_BYTES;
    let declared = resp
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_none_or(|n| n > cap) {
        // Unknown length means a stream: never buffered.
        return resp;
    }
    let encoding = resp.headers().get(http::header::CONTENT_ENCODING).cloned();
    let (mut parts, body) = resp.into_parts();
    let raw = match http_body_util::Limited::new(body, cap).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return proxy_error(
                StatusCode::BAD_GATEWAY,
                "upstream-failed",
                "twilio-repair-proxy could not read Twilio's answer",
            );
        }
    };
    let Some(plain) = crate::repair::decode_body(encoding.as_ref(), &raw) else {
        return Response::from_parts(parts, Body::from(raw));
    };
    match crate::rewrite::rewrite_json(&plain, answered_by, public, routes) {
        Some(new) => {
            parts.headers.remove(http::header::CONTENT_LENGTH);
            parts.headers.remove(http::header::CONTENT_ENCODING);
            if let Ok(v) = HeaderValue::from_str(&new.len().to_string()) {
                parts.headers.insert(http::header::CONTENT_LENGTH, v);
            }
            Response::from_parts(parts, Body::from(new))
        }
        None => Response::from_parts(parts, Body::from(raw)),
    }
}
