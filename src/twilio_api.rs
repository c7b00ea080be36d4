//! A small Twilio REST client for the repair workflow's own calls.
//!
//! It reuses the proxy's pooled upstream client and origin, and the
//! caller's own `Authorization` (or the operator's repair credential): the
//! proxy never holds a Twilio secret of its own. One call is one attempt,
//! bounded by the step timeout and the deadline it is given; which answers
//! are retried, and how, is the workflow's business
//! (`crate::repair::step`).
//!
//! A [`Tap`] (off unless given: the selftest's, never the proxy's) sees
//! each call as it goes on the wire: the final headers handed to the
//! upstream client, then the answer. It belongs here, at the one layer
//! that sends, so what it records cannot differ from what was sent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::HeaderMap;
use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use tokio::time::Instant;

use crate::forward::UpstreamClient;
use crate::routing::Origin;

/// Largest response body the workflow reads from Twilio (a page of
/// participants is far smaller).
pub const MAX_API_BODY_BYTES: usize = 1024 * 1024;

/// Characters percent-encoded in a path segment: everything but RFC 3986
/// unreserved characters, so `/`, `?`, `#`, `%`, space and non-ASCII can
/// never change the path's shape.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encode one path segment (an identity, a SID). A segment that
/// would be a dot segment (`.`, `..`) has its dots encoded too, so that no
/// value can make a path-normalising hop drop or climb a segment.
pub fn encode_segment(s: &str) -> String {
    if s == "." || s == ".." {
        return "%2E".repeat(s.len());
    }
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

/// An answer from Twilio, body read in full.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
    pub request_id: Option<String>,
    /// `Retry-After` in seconds, when Twilio sent one.
    pub retry_after: Option<Duration>,
}

impl ApiResponse {
    /// A bodiless 429 (the shield's cap had no slot in time).
    pub fn too_many_requests() -> ApiResponse {
        ApiResponse {
            status: StatusCode::TOO_MANY_REQUESTS,
            content_type: None,
            body: Bytes::new(),
            request_id: None,
            retry_after: None,
        }
    }
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
    /// The Twilio error `code` of a JSON error body.
    pub fn code(&self) -> Option<u64> {
        self.json()?.get("code")?.as_u64()
    }
}

/// Why a call produced no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{method} {path}: no answer within the step timeout")]
    Timeout { method: Method, path: String },
    #[error("{method} {path}: transport failure: {source}")]
    Transport {
        method: Method,
        path: String,
        #[source]
        source: TransportError,
    },
    #[error("{method} {path}: response body over {MAX_API_BODY_BYTES} bytes or unreadable")]
    Body {
        method: Method,
        path: String,
        #[source]
        source: axum::BoxError,
    },
    #[error("the workflow deadline passed")]
    Deadline,
}

/// What failed underneath an [`ApiError::Transport`].
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The request could not be built (a path that is no URI).
    #[error(transparent)]
    Request(#[from] http::Error),
    /// The connection failed (connect, TLS, reset, protocol).
    #[error(transparent)]
    Client(#[from] crate::forward::ClientError),
    /// An I/O failure reported by an exchange that is not hyper's (the
    /// workflow's unit tests script a connection reset with it).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Retry policy of one workflow.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub max_attempts: u32,
    pub step_timeout: Duration,
}

/// Most calls one [`Tap`] keeps; later ones are counted, not kept
/// ([`Tap::dropped`]). A selftest's repair makes a few dozen.
pub const MAX_TAPPED_CALLS: usize = 10_000;

/// One call as [`TwilioApi`] sent it: what the final headers handed to the
/// upstream client said, and what came back. Never a secret: of the
/// credential, only its Basic user name.
#[derive(Debug, Clone)]
pub struct TappedCall {
    pub method: Method,
    /// The path and query, as joined to the origin.
    pub path: String,
    /// `X-Twilio-Webhook-Enabled` as sent (`None`: not sent).
    pub webhook: Option<HeaderValue>,
    /// `Via` as sent (several values joined with `, `; `None`: not sent).
    pub via: Option<String>,
    /// The Basic user name of the `Authorization` sent (`AC…`/`SK…`;
    /// empty when it is no Basic credential).
    pub user: String,
    /// The answer's status and `Twilio-Request-Id`, or why there was none.
    pub answer: Result<(StatusCode, Option<String>), String>,
}

/// An observer of every call a [`TwilioApi`] sends ([`TwilioApi::with_tap`]):
/// the records, in the order the answers came, up to [`MAX_TAPPED_CALLS`].
/// Clones share the records.
#[derive(Debug, Clone, Default)]
pub struct Tap {
    calls: Arc<Mutex<TapState>>,
}

#[derive(Debug, Default)]
struct TapState {
    calls: Vec<TappedCall>,
    dropped: usize,
}

impl Tap {
    fn record(&self, call: TappedCall) {
        let mut s = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        if s.calls.len() < MAX_TAPPED_CALLS {
            s.calls.push(call);
        } else {
            s.dropped += 1;
        }
    }

    /// The calls recorded so far.
    pub fn calls(&self) -> Vec<TappedCall> {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .calls
            .clone()
    }

    /// Calls made past [`MAX_TAPPED_CALLS`], not kept.
    pub fn dropped(&self) -> usize {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).dropped
    }
}

/// A client bound to one origin and one credential.
#[derive(Clone)]
pub struct TwilioApi {
    client: UpstreamClient,
    origin: Origin,
    authorization: HeaderValue,
    webhook: Option<HeaderValue>,
    step_timeout: Duration,
    via: bool,
    /// `None` (the proxy): nothing is recorded.
    tap: Option<Tap>,
}

impl TwilioApi {
    pub fn new(
        client: UpstreamClient,
        origin: Origin,
        authorization: HeaderValue,
        webhook: Option<HeaderValue>,
        step_timeout: Duration,
    ) -> Self {
        TwilioApi {
            client,
            origin,
            authorization,
            webhook,
            step_timeout,
            via: false,
            tap: None,
        }
    }

    /// The same client with another credential.
    pub fn with_authorization(&self, authorization: HeaderValue) -> Self {
        TwilioApi {
            authorization,
            ..self.clone()
        }
    }

    /// Mark every call with `Via: 1.1 twilio-repair-proxy (repair)` (when
    /// the proxy is configured with `add_forwarded_headers`): the comment
    /// tells the workflow's own calls from forwarded ones.
    pub fn with_via(mut self, via: bool) -> Self {
        self.via = via;
        self
    }

    /// Record every call in `tap` (see [`Tap`]); `None`: record nothing.
    pub fn with_tap(mut self, tap: Option<Tap>) -> Self {
        self.tap = tap;
        self
    }

    /// One attempt with the workflow's own headers.
    pub async fn once(
        &self,
        method: Method,
        path: &str,
        form: Option<&str>,
        deadline: Instant,
    ) -> Result<ApiResponse, ApiError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("twilio-repair-proxy/", env!("CARGO_PKG_VERSION"))),
        );
        // Twilio invokes webhooks only when asked; every call made on the
        // caller's behalf carries the caller's choice.
        if method != Method::GET {
            if let Some(w) = &self.webhook {
                headers.insert("x-twilio-webhook-enabled", w.clone());
            }
        }
        if form.is_some() {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
        }
        let body = form.map(|f| Bytes::from(f.to_string())).unwrap_or_default();
        self.send(method, path, headers, body, deadline).await
    }

    /// One attempt with the caller's own end-to-end headers (a replay).
    /// `Authorization` and `Host` are set here; `Content-Length` follows the
    /// body; `Accept-Encoding` is dropped so the answer can be read.
    pub async fn replay(
        &self,
        method: Method,
        path: &str,
        original: &HeaderMap,
        body: Bytes,
        deadline: Instant,
    ) -> Result<ApiResponse, ApiError> {
        let mut headers = original.clone();
        crate::headers::strip_hop_by_hop(&mut headers);
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::ACCEPT_ENCODING);
        self.send(method, path, headers, body, deadline).await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        mut headers: HeaderMap,
        body: Bytes,
        deadline: Instant,
    ) -> Result<ApiResponse, ApiError> {
        let uri = self.origin.join(path).map_err(|e| ApiError::Transport {
            method: method.clone(),
            path: path.to_string(),
            source: e.into(),
        })?;
        if let Ok(host) = HeaderValue::from_str(self.origin.authority.as_str()) {
            headers.insert(header::HOST, host);
        }
        headers.insert(header::AUTHORIZATION, self.authorization.clone());
        // The current span's trace context (a repair step's client span),
        // replacing a replayed create's own `traceparent`.
        crate::telemetry::trace::inject(&mut headers);
        if self.via {
            headers.append(
                header::VIA,
                HeaderValue::from_static("1.1 twilio-repair-proxy (repair)"),
            );
        }
        let mut req = Request::builder()
            .method(method.clone())
            .uri(uri)
            .body(Body::from(body))
            .map_err(|e| ApiError::Transport {
                method: method.clone(),
                path: path.to_string(),
                source: e.into(),
            })?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ApiError::Deadline);
        }
        // The headers exactly as handed to the upstream client.
        let tapped = self.tap.as_ref().map(|_| TappedCall {
            method: method.clone(),
            path: path.to_string(),
            webhook: headers.get("x-twilio-webhook-enabled").cloned(),
            via: joined(&headers, header::VIA),
            user: headers
                .get(header::AUTHORIZATION)
                .and_then(crate::sid::basic_user)
                .unwrap_or_default(),
            answer: Err(String::new()),
        });
        *req.headers_mut() = headers;
        let timeout = self.step_timeout.min(remaining);
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| ApiError::Transport {
                    method: method.clone(),
                    path: path.to_string(),
                    source: e.into(),
                })?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_API_BODY_BYTES)
                .collect()
                .await
                .map_err(|source| ApiError::Body {
                    method: method.clone(),
                    path: path.to_string(),
                    source,
                })?
                .to_bytes();
            Ok(ApiResponse {
                status: parts.status,
                content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
                request_id: parts
                    .headers
                    .get("twilio-request-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                retry_after: parts
                    .headers
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs),
                body,
            })
        };
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(ApiError::Timeout {
                method,
                path: path.to_string(),
            }),
        };
        if let (Some(tap), Some(mut call)) = (&self.tap, tapped) {
            call.answer = match &result {
                Ok(r) => Ok((r.status, r.request_id.clone())),
                Err(e) => Err(e.to_string()),
            };
            tap.record(call);
        }
        result
    }
}

/// Every value of header `name`, joined with `, ` (`None`: not present).
fn joined(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    let values: Vec<String> = headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// Build a form body from pairs.
pub fn form(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_tap_keeps_its_bound_and_counts_the_rest() {
        let tap = super::Tap::default();
        let call = super::TappedCall {
            method: http::Method::GET,
            path: "/v1/Services".into(),
            webhook: None,
            via: None,
            user: "AC1".into(),
            answer: Ok((http::StatusCode::OK, None)),
        };
        for _ in 0..=super::MAX_TAPPED_CALLS {
            tap.clone().record(call.clone());
        }
        assert_eq!(tap.calls().len(), super::MAX_TAPPED_CALLS);
        assert_eq!(tap.dropped(), 1);
    }

    #[test]
    fn identity_segments_cannot_change_the_path() {
        assert_eq!(super::encode_segment("alice"), "alice");
        assert_eq!(super::encode_segment("a/b?c#d"), "a%2Fb%3Fc%23d");
        assert_eq!(super::encode_segment("a b+c@x.io"), "a%20b%2Bc%40x.io");
        assert_eq!(super::encode_segment("ü%"), "%C3%BC%25");
        assert_eq!(super::encode_segment(".."), "%2E%2E");
        assert_eq!(super::encode_segment("a.b"), "a.b");
    }
}
