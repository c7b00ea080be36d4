//! The proxy service: routing, the repair interception point, forwarding,
//! access logging and the panic guard, assembled in [`service`] and
//! nowhere else (no tower layers: see [`ProxyService`]). What a request
//! reads of the configuration is one [`Settings`] snapshot, loaded when it
//! arrives (see [`settings`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Either};
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use std::future::Ready;

use crate::body::{Direction, MeteredBody, SendProgress};
use crate::forward::ForwardError;
use crate::metrics::{InFlightGuard, Metrics, RouteClass};
use crate::repair::Repairer;
use crate::rewrite::Public;
use crate::routing::Routes;
use crate::server::ConnService;
use crate::telemetry::access::AccessLine;
use crate::telemetry::request_id;
use crate::twilio_error::proxy_error;
use tracing::Instrument;

pub mod settings;
pub use settings::Settings;

/// Everything a request handler needs; one per worker, built by
/// [`ProxyState::new`]. Only its [`Settings`] change, swapped whole by a
/// reload ([`ProxyState::set_settings`]).
pub struct ProxyState {
    metrics: Arc<Metrics>,
    repair: Option<Arc<Repairer>>,
    /// Routing, timeouts, link rewriting, the shield: loaded once per
    /// request.
    settings: arc_swap::ArcSwap<Settings>,
}

impl ProxyState {
    pub fn new(
        settings: Settings,
        metrics: Arc<Metrics>,
        repair: Option<Arc<Repairer>>,
    ) -> ProxyState {
        ProxyState {
            metrics,
            repair,
            settings: arc_swap::ArcSwap::from_pointee(settings),
        }
    }

    /// The settings a request arriving now gets.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// A reloaded configuration's settings: every request from now on uses
    /// them; requests in flight keep theirs.
    pub fn set_settings(&self, settings: Settings) {
        self.settings.store(Arc::new(settings));
    }
}

/// The proxy's answer to every request: the one place where the request
/// path is wrapped. No tower layers: each would box the response body or the
/// future on every request. Outermost first:
/// 1. `answer_panics`: a bug answers a Twilio-shaped 500, never a dropped
///    connection (and the panic message never reaches the client).
/// 2. the handler: routing, repair interception, forwarding, access log.
///
/// Concrete, not boxed: cloning it is an `Arc` increment.
#[derive(Clone)]
pub struct ProxyService {
    state: Arc<ProxyState>,
}

/// The proxy service of one worker.
pub fn service(state: Arc<ProxyState>) -> ProxyService {
    ProxyService { state }
}

impl ConnService for ProxyService {
    fn answer(
        self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<Body>> + Send + 'static {
        // The id goes on the request first (Twilio, the repair's log lines
        // and the access line see it) and on whatever answer comes back,
        // the proxy's own errors and a panic's 500 included.
        let id = request_id::ensure(req.headers_mut());
        let tag = move |mut resp: Response<Body>| {
            request_id::set_on(resp.headers_mut(), id);
            resp
        };
        if crate::telemetry::trace::enabled() {
            let span = server_span(&req, peer);
            let on_answer = span.clone();
            let traced = answer_panics(handle(self.state, req, Some(peer)))
                .map(move |resp| {
                    record_answer(&on_answer, &resp);
                    resp
                })
                .instrument(span);
            Either::Left(traced.map(tag))
        } else {
            Either::Right(answer_panics(handle(self.state, req, Some(peer))).map(tag))
        }
    }
}

/// The server span of one request (export on): a child of the caller's
/// `traceparent`, with the HTTP semantic conventions' attributes.
fn server_span(req: &Request<Incoming>, peer: SocketAddr) -> tracing::Span {
    let h = req.headers();
    let text = |name: &http::HeaderName| h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{} {}", req.method(), req.uri().path()),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %req.method(),
        url.path = req.uri().path(),
        client.address = %peer.ip(),
        user_agent.original = text(&http::header::USER_AGENT),
        http.request.header.x_request_id = text(&request_id::X_REQUEST_ID),
        http.response.status_code = tracing::field::Empty,
        twilio.request_id = tracing::field::Empty,
        trp.repair_outcome = tracing::field::Empty,
    );
    crate::telemetry::trace::set_parent(&span, h);
    span
}

/// What the answer says, on the request's span.
fn record_answer(span: &tracing::Span, resp: &Response<Body>) {
    let status = resp.status().as_u16();
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
    let h = resp.headers();
    if let Some(v) = h.get("twilio-request-id").and_then(|v| v.to_str().ok()) {
        span.record("twilio.request_id", v);
    }
    if let Some(v) = h
        .get(crate::repair::OUTCOME_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        span.record("trp.repair_outcome", v);
    }
}

/// Run the handler; a panic in it becomes the proxy's Twilio-shaped 500.
///
/// A combinator, not an `async fn`: an `async fn` keeps its argument and
/// the future it awaits as two copies of the handler's state, and this
/// future is moved (copied) on every request.
fn answer_panics(
    handler: impl Future<Output = Response<Body>>,
) -> impl Future<Output = Response<Body>> {
    std::panic::AssertUnwindSafe(handler)
        .catch_unwind()
        .map(|answer| match answer {
            Ok(response) => response,
            Err(_panic) => {
                tracing::error!("request handler panicked");
                proxy_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal-error",
                    "twilio-repair-proxy failed while handling this request",
                )
            }
        })
}

/// Target of the access log events.
const ACCESS: &str = crate::telemetry::access::TARGET;

// A function returning an `async move` block, not an `async fn`: an
// `async fn` keeps each argument twice (as passed, and rebound), and this
// future is moved on every request.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice in its future"
)]
fn handle(
    state: Arc<ProxyState>,
    mut req: Request<Incoming>,
    peer: Option<SocketAddr>,
) -> impl Future<Output = Response<Body>> + Send {
    async move {
        let started = Instant::now();
        let mut in_flight = InFlightGuard::new(&state.metrics, started);
        let method = req.method().clone();
        if let Some(repair) = &state.repair {
            repair.maybe_recover(req.headers());
        }
        // This request's settings, kept to its end (a reload meanwhile is
        // for the next request): one clone of the `Arc` per request, not
        // an arc-swap guard: a guard held across the upstream exchange
        // would occupy one of the thread's few fast-path debt slots, and
        // with more requests in flight on this worker than there are
        // slots, every load on the thread (these settings, the repair's
        // policy) would take arc-swap's slow path.
        let settings = state.settings.load_full();
        let settings: &Settings = &settings;

        let target =
            match settings
                .routes
                .route(req.method(), req.uri(), req.version(), req.headers())
            {
                Ok(t) => t,
                Err(refusal) => {
                    let status = refusal.status();
                    in_flight.answered(RouteClass::Rejected, &method, status.as_u16());
                    // The Host is named (at most 100 characters, `Debug`-escaped)
                    // so an operator knows what to add to `proxy_hosts`.
                    let host = req.headers().get(http::header::HOST).map(|h| {
                        String::from_utf8_lossy(&h.as_bytes()[..h.len().min(100)]).into_owned()
                    });
                    tracing::warn!(
                        target: ACCESS,
                        %method, path = %req.uri().path(), status = status.as_u16(),
                        host = ?host.as_deref().unwrap_or(""),
                        request_id = req
                            .headers()
                            .get(&request_id::X_REQUEST_ID)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or(""),
                        refused = refusal.token(), "request refused"
                    );
                    return proxy_error(status, refusal.token(), &refusal.to_string());
                }
            };
        if req.method() == http::Method::OPTIONS {
            if let Some(answer) = options_locally(&state, &mut req) {
                return answer;
            }
        }
        // Only what the access log needs, and only when it is on: the path and
        // header values are reference-counted clones of the request's, not
        // copies.
        let logged = if tracing::enabled!(target: ACCESS, tracing::Level::INFO) {
            Some(Logged::of(&req, peer))
        } else {
            None
        };

        let public = settings
            .links
            .for_request(&target, req.headers(), req.uri());
        let forwarder = &settings.forwarder;
        let idle = forwarder.idle_timeout();
        let (mut parts, incoming) = req.into_parts();
        // SID continuity (`crate::repair::alias`): a path that names a SID
        // a repair changed goes with the new one. A shape check first: no
        // other request touches the store.
        let alias = match &state.repair {
            Some(r) if r.aliases().may_alias(parts.uri.path()) => {
                Box::pin(r.aliases().alias_request(&mut parts)).await
            }
            _ => None,
        };
        let access = Access {
            started,
            method,
            logged,
            target: &target,
            public,
        };
        let intercepted = state.repair.as_ref().and_then(|r| {
            r.intercepts(&parts.method, parts.uri.path())
                .map(|what| (r, what))
        });
        // Every upstream exchange below is awaited in a statement of its own,
        // boxed when it is large and rare: a future awaited inside a `match`
        // scrutinee would keep its storage beside the `respond` that follows,
        // and this future is moved on every request.
        let (answer, outcome) = match (intercepted, &settings.shield) {
            (Some((repair, what)), _) => {
                // The intercepted request's span: every line the repair
                // logs for it names the request (and, once journaled, the
                // repair record), and its spans hang below it.
                let span = tracing::info_span!(
                    "intercept",
                    request_id = parts
                        .headers
                        .get(&request_id::X_REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or(""),
                );
                let r = Box::pin(
                    repair
                        .handle(
                            what,
                            parts,
                            incoming,
                            &target.origin,
                            peer,
                            crate::repair::Via {
                                forwarder,
                                shield: settings.shield.as_ref(),
                            },
                        )
                        .instrument(span),
                )
                .await;
                (r.response, r.outcome.map(|o| o.as_str()))
            }
            (None, Some(shield)) => {
                let shielded =
                    Box::pin(shield.forward(forwarder, parts, incoming, &target.origin, peer));
                (shielded.await, None)
            }
            (None, None) => {
                // The pass-through: the upstream's body type is kept (boxed
                // once, in `respond`). A request without a body (GET, DELETE)
                // needs no metering.
                let (body, progress) = if http_body::Body::is_end_stream(&incoming) {
                    (Body::empty(), None)
                } else {
                    let progress = Arc::new(SendProgress::default());
                    let body =
                        MeteredBody::new(incoming, idle, Direction::Request, state.metrics.clone())
                            .with_progress(progress.clone());
                    (Body::new(body), Some(progress))
                };
                let req = Request::from_parts(parts, body);
                // Awaited where it is made: a future bound to a variable
                // first would be stored twice in this one.
                let answer = forwarder
                    .forward_tracked(req, &target.origin, peer, progress)
                    .await;
                return match answer {
                    Ok(mut resp) => {
                        crate::repair::alias::mark(resp.status(), resp.headers_mut(), alias);
                        respond(&state, settings, resp, access, in_flight, None, idle).await
                    }
                    Err(e) => forward_failure(&state, e, &access),
                };
            }
        };
        match answer {
            Ok(mut resp) => {
                crate::repair::alias::mark(resp.status(), resp.headers_mut(), alias);
                respond(&state, settings, resp, access, in_flight, outcome, idle).await
            }
            Err(e) => forward_failure(&state, e, &access),
        }
    }
}

/// What the access log records of one request.
struct Access<'a> {
    started: Instant,
    method: http::Method,
    /// `Some` only when the access log is enabled.
    logged: Option<Logged>,
    target: &'a crate::routing::Target,
    /// Where this answer's links point (`crate::rewrite`), if anywhere.
    public: Option<Public>,
}

/// The request's side of its access line.
struct Logged {
    /// The query is never logged.
    path: http::uri::PathAndQuery,
    client: Option<std::net::IpAddr>,
    user_agent: Option<HeaderValue>,
    request_id: Option<HeaderValue>,
    /// The trace the request belongs to: its span's (export on) or the
    /// caller's `traceparent` (export off).
    trace_id: Option<String>,
}

impl Logged {
    fn of<B>(req: &Request<B>, peer: Option<SocketAddr>) -> Logged {
        let h = req.headers();
        let trace_id = if crate::telemetry::trace::enabled() {
            crate::telemetry::trace::trace_id(&tracing::Span::current())
        } else {
            crate::telemetry::trace::caller_trace_id(h)
        };
        Logged {
            path: req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
            client: peer.map(|p| p.ip()),
            user_agent: h.get(http::header::USER_AGENT).cloned(),
            request_id: h.get(&request_id::X_REQUEST_ID).cloned(),
            trace_id,
        }
    }

    fn line<'a>(&'a self, status: u16, upstream: &'a crate::routing::Origin) -> AccessLine<'a> {
        let text =
            |v: &'a Option<HeaderValue>| v.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("");
        AccessLine {
            method: "",
            path: self.path.path(),
            status,
            upstream_scheme: upstream.scheme.as_str(),
            upstream_authority: upstream.authority.as_str(),
            latency_us: 0,
            bytes: 0,
            client: self.client,
            user_agent: text(&self.user_agent),
            request_id: text(&self.request_id),
            trace_id: self.trace_id.as_deref().unwrap_or(""),
            twilio_request_id: "",
            repair_outcome: "",
        }
    }
}

/// The answer to a request that could not be forwarded: a 502/504 when the
/// upstream failed, a 400/408 when the client's own body did (counted as a
/// 4xx, never as an upstream error).
fn forward_failure(state: &ProxyState, e: ForwardError, access: &Access<'_>) -> Response<Body> {
    forward_failure_log(&e);
    let status = e.status();
    let took = access.started.elapsed();
    let (route, method) = (access.target.class, &access.method);
    state
        .metrics
        .record_answer(route, method, status.as_u16(), took);
    let (path, request_id) = access.logged.as_ref().map_or(("", ""), |l| {
        (
            l.path.path(),
            l.request_id
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        )
    });
    let latency_ms = took.as_secs_f64() * 1000.0;
    if e.is_client_fault() {
        tracing::info!(
            target: ACCESS,
            %method, path, status = status.as_u16(), latency_ms, request_id,
            error = e.token(), "client fault"
        );
    } else {
        tracing::warn!(
            target: ACCESS,
            %method, path, status = status.as_u16(),
            upstream = %Upstream(&access.target.origin), latency_ms, request_id,
            error = e.token(), "upstream failure"
        );
    }
    proxy_error(status, e.token(), &e.client_message())
}

/// Methods the proxy forwards, as announced by a locally answered OPTIONS.
const ALLOW: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// `OPTIONS *` and `OPTIONS` with `Max-Forwards: 0` are addressed to this
/// proxy itself (RFC 9110 §9.3.7, §7.6.2): answered here, never forwarded.
/// Any other `OPTIONS` with a `Max-Forwards` is forwarded with the value
/// decremented. Only called for OPTIONS: nothing on the common path.
fn options_locally(state: &ProxyState, req: &mut Request<Incoming>) -> Option<Response<Body>> {
    let max_forwards = req
        .headers()
        .get(http::header::MAX_FORWARDS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u32>().ok());
    if req.uri().path() != "*" && max_forwards != Some(0) {
        if let Some(n) = max_forwards {
            req.headers_mut()
                .insert(http::header::MAX_FORWARDS, HeaderValue::from(n - 1));
        }
        return None;
    }
    state
        .metrics
        .record_request(RouteClass::Rejected, req.method(), 200);
    let mut resp = Response::new(Body::empty());
    resp.headers_mut()
        .insert(http::header::ALLOW, HeaderValue::from_static(ALLOW));
    resp.headers_mut()
        .insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    Some(resp)
}

/// Turn an upstream answer into the client's: optional link rewriting,
/// metrics, and a streaming body that closes the access log when it ends.
///
/// Not an `async fn`: without link rewriting (the common case) nothing is
/// awaited and the answer is ready at once, while an `async fn` would keep
/// two copies of its arguments in every request's future. The rewrite,
/// which buffers and parses, is boxed.
fn respond<'a, B>(
    state: &'a ProxyState,
    settings: &'a Settings,
    resp: Response<B>,
    mut access: Access<'a>,
    in_flight: InFlightGuard,
    outcome: Option<&'static str>,
    idle: std::time::Duration,
) -> Either<Ready<Response<Body>>, BoxFuture<'a, Response<Body>>>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match access.public.take() {
        Some(public) if crate::rewrite::is_json(resp.headers()) => {
            Either::Right(Box::pin(async move {
                let resp =
                    rewrite_links(resp.map(Body::new), &public, &settings.routes, idle).await;
                respond_body(state, resp, access, in_flight, outcome, idle)
            }))
        }
        _ => Either::Left(std::future::ready(respond_body(
            state, resp, access, in_flight, outcome, idle,
        ))),
    }
}

fn respond_body<B>(
    state: &ProxyState,
    resp: Response<B>,
    access: Access<'_>,
    mut in_flight: InFlightGuard,
    outcome: Option<&'static str>,
    idle: std::time::Duration,
) -> Response<Body>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let status = resp.status().as_u16();
    in_flight.answered(access.target.class, &access.method, status);
    let (parts, body) = resp.into_parts();
    let mut body = MeteredBody::new(body, idle, Direction::Response, state.metrics.clone())
        .with_guard(in_flight);
    if let Some(logged) = access.logged {
        // Reference-counted clones (no copy of the text); formatted only
        // when the line is written.
        let twilio_request_id = parts.headers.get("twilio-request-id").cloned();
        let upstream = access.target.origin.clone();
        let (method, started) = (access.method, access.started);
        body = body.on_end(move |bytes| {
            crate::telemetry::access::write(&AccessLine {
                method: method.as_str(),
                latency_us: started.elapsed().as_micros() as u64,
                bytes,
                twilio_request_id: twilio_request_id
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(""),
                repair_outcome: outcome.unwrap_or(""),
                ..logged.line(status, &upstream)
            });
        });
    }
    Response::from_parts(parts, Body::new(body))
}

/// An origin as the access log shows it (`https://host`), formatted in
/// place.
struct Upstream<'a>(&'a crate::routing::Origin);

impl std::fmt::Display for Upstream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.0.scheme, self.0.authority)
    }
}

fn forward_failure_log(e: &ForwardError) {
    // The error chain may name hosts and OS errors; it never holds headers
    // or bodies, so it is safe to log.
    tracing::debug!(error = %e, "forwarding failed");
}

/// Rewrite the link fields of a JSON answer (see [`crate::rewrite`]).
/// Bodies without a `Content-Length`, or with one over the bound, pass
/// untouched; gzip/deflate bodies are decoded and, only when a link changed,
/// sent uncompressed. The body is read with the same `idle` bound as a
/// streamed one: an upstream that stalls mid-body is a 504, never a hang.
async fn rewrite_links(
    resp: Response<Body>,
    public: &Public,
    routes: &Routes,
    idle: std::time::Duration,
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
    let (mut parts, mut body) = resp.into_parts();
    let mut buf = bytes::BytesMut::new();
    loop {
        match tokio::time::timeout(idle, body.frame()).await {
            Ok(None) => break,
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > cap {
                        return read_failure(StatusCode::BAD_GATEWAY, "upstream-failed");
                    }
                    buf.extend_from_slice(&data);
                }
            }
            Ok(Some(Err(_))) => return read_failure(StatusCode::BAD_GATEWAY, "upstream-failed"),
            Err(_) => return read_failure(StatusCode::GATEWAY_TIMEOUT, "upstream-timeout"),
        }
    }
    let raw = buf.freeze();
    let Some(plain) = crate::body::decode_body_capped(encoding.as_ref(), &raw, cap as u64) else {
        return Response::from_parts(parts, in_frames(raw));
    };
    match crate::rewrite::rewrite_json(&plain, public, routes) {
        Some(new) => {
            parts.headers.remove(http::header::CONTENT_LENGTH);
            parts.headers.remove(http::header::CONTENT_ENCODING);
            if let Ok(v) = HeaderValue::from_str(&new.len().to_string()) {
                parts.headers.insert(http::header::CONTENT_LENGTH, v);
            }
            Response::from_parts(parts, in_frames(new))
        }
        None => Response::from_parts(parts, in_frames(raw)),
    }
}

/// The proxy's answer when Twilio's body could not be read whole.
fn read_failure(status: StatusCode, token: &'static str) -> Response<Body> {
    proxy_error(
        status,
        token,
        "twilio-repair-proxy could not read Twilio's answer",
    )
}

/// Largest frame of a body the proxy buffered (a rewritten answer): HTTP/1
/// writes are flattened (`writev` off, see `crate::server`), so hyper
/// copies each frame into the connection's write buffer, whose capacity a
/// keep-alive connection keeps; frames of this size keep that buffer near
/// `limits.max_request_head_bytes` instead of growing it to a whole body.
const BUFFERED_FRAME_BYTES: usize = 16 * 1024;

/// `bytes` as a body of frames of at most [`BUFFERED_FRAME_BYTES`] (slices
/// of the same buffer, no copy).
fn in_frames(bytes: Bytes) -> Body {
    if bytes.len() <= BUFFERED_FRAME_BYTES {
        return Body::from(bytes);
    }
    let frames = (0..bytes.len())
        .step_by(BUFFERED_FRAME_BYTES)
        .map(move |at| {
            let end = (at + BUFFERED_FRAME_BYTES).min(bytes.len());
            Ok::<_, Infallible>(http_body::Frame::data(bytes.slice(at..end)))
        });
    Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(
        frames,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// The size of what `f` returns, from its type alone (nothing is
    /// called or built).
    fn output_size<F, A, B, C, Fut>(_: F) -> usize
    where
        F: FnOnce(A, B, C) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// The request's future is made and moved on every request: it was
    /// 9.3 KB until `handle` became an `async move` block, `answer_panics` a
    /// combinator and the rare branches boxed (commits 4f849a2, c416fb1:
    /// 2.3 KB, the pool's part 624 B). One innocent `async fn`, or a large
    /// local held across an `.await`, undoes that unseen; this test sees it.
    /// The bounds leave room for the unoptimized test build.
    #[test]
    fn the_request_future_and_the_pools_stay_small() {
        const REQUEST_MAX: usize = 4 * 1024;
        const POOL_MAX: usize = 1024;
        let request = output_size(<ProxyService as ConnService>::answer);
        let handled = output_size(handle);
        assert!(
            request <= REQUEST_MAX && handled <= REQUEST_MAX,
            "the request future is {request} B (handle: {handled} B), over {REQUEST_MAX} B: \
             every request moves it; keep proxy::handle an async block, box rare branches \
             (it was 9.3 KB before commit 4f849a2)"
        );
        fn pool_request_size<'a, Fut>(
            _: impl FnOnce(&'a crate::pool::UpstreamClient, Request<Body>) -> Fut,
        ) -> usize {
            std::mem::size_of::<Fut>()
        }
        let pool = pool_request_size(crate::pool::UpstreamClient::request);
        assert!(
            pool <= POOL_MAX,
            "the pool's request future is {pool} B, over {POOL_MAX} B: it is part of every \
             request's future; keep UpstreamClient::request an async block with connect boxed \
             (624 B in release at commit c416fb1)"
        );
        eprintln!("request future {request} B, handle {handled} B, pool {pool} B");
    }

    #[tokio::test]
    async fn a_buffered_body_is_sent_in_bounded_frames_whole_and_in_order() {
        let whole: Vec<u8> = (0..(3 * BUFFERED_FRAME_BYTES + 123))
            .map(|i| (i % 251) as u8)
            .collect();
        let mut body = in_frames(Bytes::from(whole.clone()));
        assert_eq!(
            http_body::Body::size_hint(&body).exact(),
            None,
            "streamed: the answer keeps its own Content-Length header"
        );
        let mut got = Vec::new();
        let mut frames = 0;
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            assert!(data.len() <= BUFFERED_FRAME_BYTES);
            got.extend_from_slice(&data);
            frames += 1;
        }
        assert_eq!(frames, 4);
        assert_eq!(got, whole);
        // A small body stays one frame.
        let small = in_frames(Bytes::from_static(b"{}"));
        assert_eq!(small.collect().await.unwrap().to_bytes(), "{}");
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_a_twilio_shaped_500_without_its_message() {
        let resp = answer_panics(async {
            if true {
                panic!("secret detail of a bug");
            }
            Response::new(Body::empty())
        })
        .await;
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            resp.headers()[crate::twilio_error::ERROR_HEADER],
            "internal-error"
        );
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["status"], 500, "{v}");
        assert!(!String::from_utf8_lossy(&body).contains("secret detail"));
    }
}
