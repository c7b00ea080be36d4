//! Forwarding: one request to one upstream origin, streamed both ways.
//!
//! The upstream client is the worker's own connection pool
//! ([`crate::pool`]) over rustls (webpki and system roots plus the
//! `upstream_ca_file` certificates, see [`UpstreamTls`]; certificate and
//! host name checks always on; HTTP/2 or HTTP/1.1 by ALPN). The request line's path and query are forwarded byte
//! for byte, end-to-end headers in their order, and bodies as frames (never
//! buffered whole). Failures become [`ForwardError`]s that the proxy turns
//! into Twilio-shaped answers: 502/504 when the upstream failed, 400/408
//! when the client's own request body did (a malformed chunk, a stall).
//!
//! `limits.response_header_timeout_ms` is the time the upstream has to
//! answer once it has the request: it starts when the request body has been
//! handed over whole, and is restarted while the body is still moving, so a
//! slow upload is never a 504. A body the upstream stops taking (no frame
//! handed over for that long while the client has data) is a 504; a body
//! the client stops sending is bounded by the body's idle timeout (408).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use axum::body::Body;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body::Body as HttpBody;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::body::{ClientFault, Direction, MeteredBody, SendProgress};
use crate::config::Limits;
use crate::headers::strip_hop_by_hop;
use crate::metrics::{Metrics, UpstreamErrorKind};
use crate::routing::{ClassBy, Origin};

pub use crate::pool::{ClientError, UpstreamBody, UpstreamClient};

/// Why a request could not be forwarded. The `Display` text is for logs;
/// clients get [`ForwardError::client_message`] only.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("cannot connect to upstream {origin}: {source}")]
    Connect { origin: String, source: ClientError },
    #[error("upstream {origin} sent no response headers within {timeout:?}")]
    Timeout { origin: String, timeout: Duration },
    #[error("upstream {origin} failed: {source}")]
    Upstream { origin: String, source: ClientError },
    #[error(
        "upstream {origin} answered 101 Switching Protocols to a request that asked for no upgrade"
    )]
    UnsolicitedUpgrade { origin: String },
    #[error("cannot build the upstream request: {0}")]
    Build(#[from] http::Error),
    #[error("the client's request body stalled for {0:?}")]
    ClientBodyTimeout(Duration),
    #[error("the client's request body could not be read (malformed chunk or cut short)")]
    ClientBodyInvalid,
}

impl ForwardError {
    pub fn status(&self) -> http::StatusCode {
        match self {
            ForwardError::Timeout { .. } => http::StatusCode::GATEWAY_TIMEOUT,
            ForwardError::Build(_) | ForwardError::ClientBodyInvalid => {
                http::StatusCode::BAD_REQUEST
            }
            ForwardError::ClientBodyTimeout(_) => http::StatusCode::REQUEST_TIMEOUT,
            _ => http::StatusCode::BAD_GATEWAY,
        }
    }
    /// Token for the `X-Repair-Proxy-Error` header.
    pub fn token(&self) -> &'static str {
        match self {
            ForwardError::Connect { .. } => "upstream-unreachable",
            ForwardError::Timeout { .. } => "upstream-timeout",
            ForwardError::Upstream { .. } | ForwardError::UnsolicitedUpgrade { .. } => {
                "upstream-failed"
            }
            ForwardError::Build(_) => "bad-request-target",
            ForwardError::ClientBodyTimeout(_) => "request-body-timeout",
            ForwardError::ClientBodyInvalid => "request-body-unreadable",
        }
    }
    /// What the client is told: why, without internal error text.
    pub fn client_message(&self) -> String {
        match self {
            ForwardError::Connect { origin, .. } => format!(
                "twilio-repair-proxy could not reach Twilio at {origin}: the connection could not be established"
            ),
            ForwardError::Timeout { origin, timeout } => format!(
                "twilio-repair-proxy could not reach Twilio at {origin}: no response within {} ms",
                timeout.as_millis()
            ),
            ForwardError::Upstream { origin, .. } => format!(
                "twilio-repair-proxy could not reach Twilio at {origin}: the connection failed before a complete response"
            ),
            ForwardError::UnsolicitedUpgrade { origin } => format!(
                "twilio-repair-proxy could not reach Twilio at {origin}: it switched protocols unasked"
            ),
            ForwardError::Build(_) => {
                "twilio-repair-proxy could not forward this request: invalid request target"
                    .to_string()
            }
            ForwardError::ClientBodyTimeout(idle) => format!(
                "twilio-repair-proxy received no request body data for {} ms",
                idle.as_millis()
            ),
            ForwardError::ClientBodyInvalid => {
                "twilio-repair-proxy could not read the request body: malformed chunked encoding or cut short"
                    .to_string()
            }
        }
    }
    /// Whether the client, not the upstream, is at fault (counted as a
    /// client error, never in `trp_upstream_errors_total`).
    pub fn is_client_fault(&self) -> bool {
        matches!(
            self,
            ForwardError::Build(_)
                | ForwardError::ClientBodyTimeout(_)
                | ForwardError::ClientBodyInvalid
        )
    }
    fn metric_kind(&self) -> UpstreamErrorKind {
        match self {
            ForwardError::Connect { .. } => UpstreamErrorKind::Connect,
            ForwardError::Timeout { .. } => UpstreamErrorKind::Timeout,
            _ => UpstreamErrorKind::Other,
        }
    }
}

/// The TLS settings of upstream connections: the built-in (webpki) and
/// system roots, plus the `upstream_ca_file` certificates when set.
/// Certificate and host name checks are always on. Built once and shared by
/// every client (the system roots are read from disk once).
#[derive(Clone)]
pub struct UpstreamTls(Arc<rustls::ClientConfig>);

impl UpstreamTls {
    /// The built-in and system roots plus `extra_roots` (already checked by
    /// [`crate::config::Config::upstream_ca_certs`]).
    pub fn new(extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>) -> UpstreamTls {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
        for cert in extra_roots {
            let _ = roots.add(cert);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            .unwrap_or_else(|_| {
                // The ring provider supports the safe defaults; unreachable in practice.
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            });
        UpstreamTls(Arc::new(tls))
    }

    /// The configuration's upstream TLS: `upstream_ca_file` read and checked.
    pub fn from_config(
        config: &crate::config::Config,
    ) -> Result<UpstreamTls, crate::config::ConfigError> {
        Ok(UpstreamTls::new(config.upstream_ca_certs()?))
    }
}

/// Build the upstream client from the configured bounds, trusting the
/// built-in and system roots only.
pub fn build_client(limits: &Limits) -> UpstreamClient {
    build_client_with(limits, &UpstreamTls::new(Vec::new()))
}

/// Build the upstream client from the configured bounds and TLS settings.
#[expect(
    clippy::disallowed_methods,
    reason = "the one place that makes the upstream connector"
)]
pub fn build_client_with(limits: &Limits, tls: &UpstreamTls) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(limits.connect_timeout()));
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(60)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*tls.0).clone())
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(crate::egress::EgressConnector::from_env(http));
    UpstreamClient::new(https, crate::pool::PoolBounds::from_limits(limits))
}

/// Sends requests upstream and accounts for them.
#[derive(Clone)]
pub struct Forwarder {
    client: UpstreamClient,
    metrics: Arc<Metrics>,
    response_header_timeout: Duration,
    idle_timeout: Duration,
    add_forwarded_headers: bool,
    /// The `route` label of the upstream latency.
    class_by: ClassBy,
}

impl Forwarder {
    pub fn new(
        client: UpstreamClient,
        metrics: Arc<Metrics>,
        limits: &Limits,
        add_forwarded_headers: bool,
        class_by: ClassBy,
    ) -> Self {
        Forwarder {
            client,
            metrics,
            response_header_timeout: limits.response_header_timeout(),
            idle_timeout: limits.idle_timeout(),
            add_forwarded_headers,
            class_by,
        }
    }

    /// The same client (its pool kept) with a reloaded configuration's
    /// per-request timeouts and routing table's latency labels: what the
    /// next request uses (`crate::proxy::Settings`).
    pub fn reconfigured(&self, limits: &Limits, class_by: ClassBy) -> Forwarder {
        Forwarder {
            response_header_timeout: limits.response_header_timeout(),
            idle_timeout: limits.idle_timeout(),
            class_by,
            ..self.clone()
        }
    }

    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Forward a request whose body is already a [`Body`]. The request's URI
    /// must be origin-form; the upstream URI is built from `origin`. A body
    /// with data is tracked (see the module documentation) without being
    /// counted in the byte metrics: callers count what they buffered.
    pub async fn forward(
        &self,
        req: Request<Body>,
        origin: &Origin,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<Response<UpstreamBody>, ForwardError> {
        if req.body().is_end_stream() {
            return self.forward_tracked(req, origin, peer, None).await;
        }
        let progress = Arc::new(SendProgress::default());
        let idle = self.idle_timeout;
        let metrics = self.metrics.clone();
        let tracked = progress.clone();
        let req = req.map(|b| {
            Body::new(
                MeteredBody::new(b, idle, Direction::Request, metrics)
                    .uncounted()
                    .with_progress(tracked),
            )
        });
        self.forward_tracked(req, origin, peer, Some(progress))
            .await
    }

    /// [`Forwarder::forward`] for a body the caller already wrapped in a
    /// [`MeteredBody`] with [`MeteredBody::with_progress`] (`progress`), or
    /// an empty body (`None`): no second wrapper.
    ///
    /// Returns an `async move` block, not an `async fn`'s future: an `async
    /// fn` keeps each argument twice, and this future is part of every
    /// request's.
    pub fn forward_tracked<'a>(
        &'a self,
        req: Request<Body>,
        origin: &'a Origin,
        peer: Option<std::net::SocketAddr>,
        progress: Option<Arc<SendProgress>>,
    ) -> impl std::future::Future<Output = Result<Response<UpstreamBody>, ForwardError>> + Send + 'a
    {
        let route = self.class_by.class(origin, req.uri().path());
        let prepared = self.upstream_request(req, origin, peer);
        async move {
            let req = prepared?;
            let started = Instant::now();
            // Pinned where it is made: moved into the timeout (or passed by
            // value) it would be stored twice in this future.
            let mut send = std::pin::pin!(self.client.request(req));
            let result = match &progress {
                None => tokio::time::timeout(self.response_header_timeout, send.as_mut())
                    .await
                    .ok(),
                Some(p) => self.await_answer(send.as_mut(), p).await,
            };
            let outcome = match result {
                None => Err(ForwardError::Timeout {
                    origin: origin.as_string(),
                    timeout: self.response_header_timeout,
                }),
                Some(Err(e)) => Err(match progress.as_deref().and_then(SendProgress::fault) {
                    // The body failed on the client's side: the upstream error
                    // is only its consequence.
                    Some(ClientFault::Stalled) => {
                        ForwardError::ClientBodyTimeout(self.idle_timeout)
                    }
                    Some(ClientFault::Invalid) => ForwardError::ClientBodyInvalid,
                    None if e.is_connect() => ForwardError::Connect {
                        origin: origin.as_string(),
                        source: e,
                    },
                    None => ForwardError::Upstream {
                        origin: origin.as_string(),
                        source: e,
                    },
                }),
                Some(Ok(resp)) if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
                    // We never ask for an upgrade (Upgrade is hop-by-hop and
                    // stripped): relaying a 101 would leave the client with a
                    // connection in an unknown protocol.
                    Err(ForwardError::UnsolicitedUpgrade {
                        origin: origin.as_string(),
                    })
                }
                Some(Ok(mut resp)) => {
                    strip_hop_by_hop(resp.headers_mut());
                    Ok(resp)
                }
            };
            match &outcome {
                Err(e) if e.is_client_fault() => {}
                Err(e) => {
                    self.metrics.upstream_latency(route, started.elapsed());
                    self.metrics.upstream_error(e.metric_kind());
                }
                Ok(_) => self.metrics.upstream_latency(route, started.elapsed()),
            }
            outcome
        }
    }

    /// The request as the upstream gets it: absolute URI on `origin`,
    /// hop-by-hop headers stripped, `Host` set, and the forwarding headers
    /// when configured.
    fn upstream_request(
        &self,
        mut req: Request<Body>,
        origin: &Origin,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<Request<Body>, ForwardError> {
        let uri = std::mem::take(req.uri_mut());
        *req.uri_mut() = origin.rebase(uri)?;
        // The client speaks HTTP/1.1 or h2 upstream as ALPN decides.
        *req.version_mut() = http::Version::HTTP_11;
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        headers.insert(header::HOST, origin.host_header.clone());
        if self.add_forwarded_headers {
            if let Some(peer) = peer {
                if let Ok(v) = HeaderValue::from_str(&peer.ip().to_string()) {
                    headers.append("x-forwarded-for", v);
                }
            }
            headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
            headers.append(
                header::VIA,
                HeaderValue::from_static("1.1 twilio-repair-proxy"),
            );
        }
        Ok(req)
    }

    /// Wait for the upstream's answer to a request whose body is still
    /// being sent; `None` when `response_header_timeout` passed since the
    /// body was handed over whole, or since the upstream last took a frame
    /// while the client had one ready.
    async fn await_answer<F: std::future::Future>(
        &self,
        mut send: std::pin::Pin<&mut F>,
        progress: &SendProgress,
    ) -> Option<F::Output> {
        let timeout = self.response_header_timeout;
        let timer = tokio::time::sleep(timeout);
        tokio::pin!(timer);
        let mut frames = progress.frames.load(Relaxed);
        let mut sent = false;
        loop {
            tokio::select! {
                biased;
                out = send.as_mut() => return Some(out),
                () = progress.sent.notified(), if !sent => {
                    sent = true;
                    timer.as_mut().reset(tokio::time::Instant::now() + timeout);
                }
                () = &mut timer => {
                    if sent {
                        return None;
                    }
                    let now = progress.frames.load(Relaxed);
                    if now == frames && !progress.waiting_on_client.load(Relaxed) {
                        // The upstream took no frame for a whole period.
                        return None;
                    }
                    // Moving, or waiting on the client (whose stalls the
                    // body's idle timeout bounds).
                    frames = now;
                    timer.as_mut().reset(tokio::time::Instant::now() + timeout);
                }
            }
        }
    }
}
