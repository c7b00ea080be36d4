//! A small Twilio REST client for the repair workflow's own calls.
//!
//! It reuses the proxy's pooled upstream client and origin, and the
//! caller's own `Authorization` (or the operator's repair credential): the
//! proxy never holds a Twilio secret of its own. One call is one attempt,
//! bounded by the step timeout and the deadline it is given; which answers
//! are retried, and how, is the workflow's business
//! (`crate::repair::step`).

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

/// A client bound to one origin and one credential.
#[derive(Clone)]
pub struct TwilioApi {
    client: UpstreamClient,
    origin: Origin,
    authorization: HeaderValue,
    webhook: Option<HeaderValue>,
    step_timeout: Duration,
    via: bool,
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
        *req.headers_mut() = headers;
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ApiError::Deadline);
        }
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
        match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(ApiError::Timeout {
                method,
                path: path.to_string(),
            }),
        }
    }
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
    fn identity_segments_cannot_change_the_path() {
        assert_eq!(super::encode_segment("alice"), "alice");
        assert_eq!(super::encode_segment("a/b?c#d"), "a%2Fb%3Fc%23d");
        assert_eq!(super::encode_segment("a b+c@x.io"), "a%20b%2Bc%40x.io");
        assert_eq!(super::encode_segment("ü%"), "%C3%BC%25");
        assert_eq!(super::encode_segment(".."), "%2E%2E");
        assert_eq!(super::encode_segment("a.b"), "a.b");
    }
}
