//! The opt-in 429 shield: what the proxy does about Twilio's `429 Too Many
//! Requests` (20429) when asked to, and nothing at all when not.
//!
//! Off by default (`[shield] retry_429 = false`,
//! `max_concurrent_per_account = 0`): no [`Shield`] is built and every
//! request takes the proxy's plain forwarding path, byte for byte as
//! without this module. On, every request to Twilio (forwarded ones and the
//! repair workflow's own calls) goes through here:
//!
//! - [`retry`]: a 429 is re-sent, for every method (Twilio answers 429
//!   before processing anything), after its `Retry-After` or a capped
//!   exponential backoff with jitter, until `shield.max_wait_ms` from the
//!   first attempt (a re-send's wait in the cap's line included); a body over `shield.max_replay_body_bytes` is streamed
//!   and its 429 passed through. A `5xx` is never retried here. A retried
//!   answer carries `X-Repair-Proxy-Retries: N`.
//! - [`budget`]: retries may add at most `shield.budget_percent` % to the
//!   requests of a sliding window (plus a small floor), so an outage is not
//!   amplified.
//! - [`cap`]: at most `shield.max_concurrent_per_account` requests of one
//!   account in flight from this replica; the rest wait in line (FIFO per
//!   account) up to `shield.max_queue_wait_ms`, then get a Twilio-shaped
//!   429/20429 from the proxy with `X-Repair-Proxy-Error: shield-queue-full`.
//!
//! Whose account a request counts against is [`AccountKey::of`]: the Basic
//! user when it is an account SID (`AC…`); for an API key (`SK…`), the
//! account of a `/2010-04-01/Accounts/AC…/` path; otherwise the key
//! itself (a key belongs to one account, so its requests are still capped
//! together, but an account whose apps use k keys on `/v1` paths may have
//! (k + 1) x N in flight). A request without Basic credentials is not
//! capped (Twilio refuses it with 401). The Basic user is read by
//! [`crate::sid::basic_user`], the proxy's one parser of it. Credentials
//! are not checked here (Twilio checks them): whoever reaches the proxy
//! can queue in any account's line by naming it, so the cap protects
//! Twilio's limit, not one caller from another.
//!
//! The cap is per replica: a fleet of R replicas sharing an account keeps at
//! most R x N in flight (README, "Rate limits").
//!
//! Entry points: [`Shield::forward`] (the pass-through path in
//! `crate::proxy`), [`forward_request`] (the repair's interception of a
//! Participant create, which buffers the body itself) and
//! [`Shield::cap_for`] (a slot per call of the repair workflow,
//! `crate::repair::step::Capped`).

pub mod budget;
pub mod cap;
pub mod retry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::body::{Direction, MeteredBody, ReadCapped, SendProgress, prefixed, read_capped};
use crate::config::{MetricsConfig, ShieldConfig};
use crate::forward::{ForwardError, Forwarder};
use crate::metrics::{AccountClass, Metrics};
use crate::routing::Origin;
use crate::twilio_error::proxy_error;

pub use budget::RetryBudget;
pub use cap::{Cap, CapError, Slot};

/// Response header: how many times the shield re-sent the request.
pub const RETRIES_HEADER: &str = "x-repair-proxy-retries";
/// `X-Repair-Proxy-Error` of the proxy's own 429 when the line is full.
pub const QUEUE_FULL: &str = "shield-queue-full";
/// Largest 429 body read (and dropped) before a retry; a larger one is
/// dropped unread with its connection.
pub const MAX_DRAINED_BODY_BYTES: usize = 64 * 1024;

/// Whose concurrency a request counts against (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountKey {
    /// The account SID, or the API key SID when the account is not known.
    pub sid: String,
    pub class: AccountClass,
}

impl AccountKey {
    /// The account of a request: its `Authorization` and its path.
    pub fn of(headers: &HeaderMap, path: &str) -> Option<AccountKey> {
        Self::from_authorization(headers.get(header::AUTHORIZATION)?, path)
    }

    pub fn from_authorization(authorization: &HeaderValue, path: &str) -> Option<AccountKey> {
        let user = crate::sid::basic_user(authorization)?;
        Self::from_user(&user, path)
    }

    /// `AC…` is the account; `SK…` is the account its path names
    /// (`/2010-04-01/Accounts/AC…/`), else the key; anything else: none.
    pub fn from_user(user: &str, path: &str) -> Option<AccountKey> {
        use crate::sid::is_sid;
        if is_sid(user, "AC") {
            return Some(AccountKey::account(user));
        }
        if !is_sid(user, "SK") {
            return None;
        }
        let mut segs = path.split('/').skip(1);
        if let (Some("2010-04-01"), Some("Accounts"), Some(ac)) =
            (segs.next(), segs.next(), segs.next())
        {
            let ac = ac.strip_suffix(".json").unwrap_or(ac);
            if is_sid(ac, "AC") {
                return Some(AccountKey::account(ac));
            }
        }
        Some(AccountKey {
            sid: user.to_string(),
            class: AccountClass::Key,
        })
    }

    pub fn account(sid: &str) -> AccountKey {
        AccountKey {
            sid: sid.to_string(),
            class: AccountClass::Account,
        }
    }
}

/// See the module doc. Built once per proxy instance, shared by every
/// worker and the repair runtime; a reload that changes its settings
/// builds the next one ([`Shield::reconfigured`]) for new requests.
pub struct Shield {
    settings: ShieldConfig,
    budget: Arc<RetryBudget>,
    cap: Option<Arc<Cap>>,
    metrics: Arc<Metrics>,
    labels: bool,
}

/// What one request sends upstream.
enum Payload {
    /// Kept, so it can be re-sent on a 429 (counted in the request bytes
    /// at each attempt when `count`).
    Replay { bytes: Bytes, count: bool },
    /// Sent once, already metered with its progress (`None`: empty).
    Tracked(Body, Option<Arc<SendProgress>>),
    /// Sent once through [`Forwarder::forward`] (the caller counted it).
    Plain(Body),
}

impl Shield {
    /// The shield, or `None` when every part of it is off.
    pub fn new(
        settings: &ShieldConfig,
        metrics_config: &MetricsConfig,
        metrics: Arc<Metrics>,
    ) -> Option<Arc<Shield>> {
        Self::reconfigured(None, settings, metrics_config, metrics)
    }

    /// The shield of a reloaded configuration, for the requests from now
    /// on: `old` itself when nothing of it changed; otherwise a new one
    /// that keeps `old`'s retry budget (its window of requests and
    /// retries) when the budget's settings are the same, and its cap (who
    /// is in flight and in line) when the cap's are. A request that
    /// started under `old` finishes under it, slot and line included: for
    /// as long as those last, an account whose cap changed may have the
    /// old cap's requests in flight beside the new cap's.
    pub fn reconfigured(
        old: Option<&Arc<Shield>>,
        settings: &ShieldConfig,
        metrics_config: &MetricsConfig,
        metrics: Arc<Metrics>,
    ) -> Option<Arc<Shield>> {
        if !settings.enabled() {
            return None;
        }
        let labels = metrics_config.account_labels;
        if let Some(old) = old.filter(|o| o.settings == *settings && o.labels == labels) {
            return Some(old.clone());
        }
        let budget_of = |s: &ShieldConfig| {
            (
                s.budget_percent,
                s.budget_window_ms,
                s.budget_min_retries_per_second,
            )
        };
        let cap_of =
            |s: &ShieldConfig| (s.max_concurrent_per_account, s.max_queue_length_per_account);
        let budget = match old.filter(|o| budget_of(&o.settings) == budget_of(settings)) {
            Some(o) => o.budget.clone(),
            None => Arc::new(RetryBudget::new(
                settings.budget_percent,
                Duration::from_millis(settings.budget_window_ms),
                settings.budget_min_retries_per_second,
            )),
        };
        let kept_cap =
            old.filter(|o| cap_of(&o.settings) == cap_of(settings) && o.labels == labels);
        let cap = match kept_cap {
            Some(o) => o.cap.clone(),
            None => (settings.max_concurrent_per_account > 0).then(|| {
                Cap::new(
                    settings.max_concurrent_per_account,
                    settings.max_queue_length_per_account,
                    metrics.clone(),
                    labels,
                )
            }),
        };
        Some(Arc::new(Shield {
            budget,
            settings: settings.clone(),
            cap,
            metrics,
            labels,
        }))
    }

    fn max_wait(&self) -> Duration {
        Duration::from_millis(self.settings.max_wait_ms)
    }

    fn queue_wait(&self) -> Duration {
        Duration::from_millis(self.settings.max_queue_wait_ms)
    }

    /// A pass-through request: its body buffered for replay when
    /// `retry_429` is on and it fits `max_replay_body_bytes` (each read
    /// bounded by the forwarder's idle timeout), else streamed once.
    pub async fn forward(
        &self,
        fwd: &Forwarder,
        parts: http::request::Parts,
        body: Incoming,
        origin: &Origin,
        peer: Option<SocketAddr>,
    ) -> Result<Response<Body>, ForwardError> {
        let idle = fwd.idle_timeout();
        let cap = self.settings.max_replay_body_bytes;
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let payload = if http_body::Body::is_end_stream(&body) {
            Payload::Replay {
                bytes: Bytes::new(),
                count: true,
            }
        } else if !self.settings.retry_429 || declared.is_some_and(|n| n > cap as u64) {
            self.tracked(body, idle)
        } else {
            match read_capped(body, cap, idle).await {
                Ok(bytes) => Payload::Replay { bytes, count: true },
                Err(ReadCapped::TooLarge(prefix, rest)) => {
                    self.tracked(prefixed(prefix, rest), idle)
                }
                Err(ReadCapped::Unreadable) => return Err(ForwardError::ClientBodyInvalid),
                Err(ReadCapped::Stalled) => return Err(ForwardError::ClientBodyTimeout(idle)),
            }
        };
        self.send(fwd, &parts, payload, origin, peer).await
    }

    fn tracked<B>(&self, body: B, idle: Duration) -> Payload
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let progress = Arc::new(SendProgress::default());
        let body = MeteredBody::new(body, idle, Direction::Request, self.metrics.clone())
            .with_progress(progress.clone());
        Payload::Tracked(Body::new(body), Some(progress))
    }

    /// Send `payload`, re-sending it on a 429 while the deadline and the
    /// budget allow; each attempt holds a slot of the account's cap.
    async fn send(
        &self,
        fwd: &Forwarder,
        parts: &http::request::Parts,
        payload: Payload,
        origin: &Origin,
        peer: Option<SocketAddr>,
    ) -> Result<Response<Body>, ForwardError> {
        let key = AccountKey::of(&parts.headers, parts.uri.path());
        let class = key.as_ref().map_or(AccountClass::Unknown, |k| k.class);
        let label = key.as_ref().filter(|_| self.labels).map(|k| k.sid.as_str());
        let replay = self.settings.retry_429 && matches!(payload, Payload::Replay { .. });
        if replay {
            self.budget.record_request();
        }
        let deadline = Instant::now() + self.max_wait();
        let mut backoff = Backoff::new(
            Duration::from_millis(self.settings.initial_backoff_ms),
            Duration::from_millis(self.settings.max_backoff_ms),
        );
        let mut retries = 0u32;
        let mut once = Some(payload);
        loop {
            // A re-send waits in line no longer than the request's deadline.
            let mut wait = self.queue_wait();
            if retries > 0 {
                wait = wait.min(deadline.saturating_duration_since(Instant::now()));
            }
            let slot = match (&self.cap, &key) {
                (Some(cap), Some(k)) => match cap.acquire(k, wait).await {
                    Ok(s) => Some(s),
                    Err(_) => return Ok(with_retries(queue_full(), retries)),
                },
                _ => None,
            };
            let mut req = Request::builder()
                .method(parts.method.clone())
                .uri(parts.uri.clone())
                .version(parts.version)
                .body(Body::empty())?;
            *req.headers_mut() = parts.headers.clone();
            let answer = match once.take() {
                Some(Payload::Replay { bytes, count }) => {
                    if count {
                        self.metrics.add_request_bytes(bytes.len() as u64);
                    }
                    if replay {
                        once = Some(Payload::Replay {
                            bytes: bytes.clone(),
                            count,
                        });
                    }
                    if !bytes.is_empty() {
                        *req.body_mut() = Body::from(bytes);
                    }
                    fwd.forward(req, origin, peer).await
                }
                Some(Payload::Tracked(body, progress)) => {
                    *req.body_mut() = body;
                    fwd.forward_tracked(req, origin, peer, progress).await
                }
                Some(Payload::Plain(body)) => {
                    *req.body_mut() = body;
                    fwd.forward(req, origin, peer).await
                }
                // Unreachable: a payload that is not kept is sent once.
                None => return Ok(with_retries(queue_full(), retries)),
            };
            drop(slot);
            let resp = answer?;
            if replay && retry::is_retryable(resp.status()) {
                let after = retry::retry_after(resp.headers(), SystemTime::now());
                match retry::plan(after, &mut backoff, Instant::now(), deadline) {
                    Some(wait) if self.budget.try_retry() => {
                        drain(resp.into_body(), fwd.idle_timeout()).await;
                        self.metrics.shield_retry(class, label);
                        retries += 1;
                        tracing::debug!(
                            retries,
                            wait_ms = wait.as_millis() as u64,
                            "shield: 429 from Twilio, re-sending"
                        );
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    Some(_) => self.metrics.shield_budget_exhausted(class, label),
                    None => {}
                }
            }
            return Ok(with_retries(resp.map(Body::new), retries));
        }
    }

    /// The cap for one account's calls (the repair workflow's), if capped.
    pub fn cap_for(&self, key: Option<AccountKey>) -> Option<CapHandle> {
        Some(CapHandle {
            cap: self.cap.clone()?,
            key: key?,
        })
    }
}

/// Forward an intercepted request through the shield (`None`: plainly).
/// `replay` is its body when the caller buffered it (re-sent on a 429 when
/// it fits `shield.max_replay_body_bytes`); otherwise the body streams once.
/// The caller has counted the body's bytes.
pub async fn forward_request(
    shield: Option<&Shield>,
    fwd: &Forwarder,
    req: Request<Body>,
    replay: Option<Bytes>,
    origin: &Origin,
    peer: Option<SocketAddr>,
) -> Result<Response<Body>, ForwardError> {
    let Some(shield) = shield else {
        return fwd
            .forward(req, origin, peer)
            .await
            .map(|r| r.map(Body::new));
    };
    let (parts, body) = req.into_parts();
    let payload = match replay {
        Some(bytes) if bytes.len() <= shield.settings.max_replay_body_bytes => Payload::Replay {
            bytes,
            count: false,
        },
        _ => Payload::Plain(body),
    };
    shield.send(fwd, &parts, payload, origin, peer).await
}

/// One account's cap, for calls made outside the forwarding path.
#[derive(Clone)]
pub struct CapHandle {
    cap: Arc<Cap>,
    key: AccountKey,
}

impl CapHandle {
    /// A slot, waiting in line until `deadline` at most.
    pub async fn acquire_until(&self, deadline: Instant) -> Result<Slot, CapError> {
        let wait = deadline.saturating_duration_since(Instant::now());
        self.cap.acquire(&self.key, wait).await
    }
}

/// The proxy's own 429 when a request found no slot in time.
fn queue_full() -> Response<Body> {
    let mut r = proxy_error(
        StatusCode::TOO_MANY_REQUESTS,
        QUEUE_FULL,
        "twilio-repair-proxy: too many requests of this account are waiting for Twilio \
         (shield.max_concurrent_per_account); retry later",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

fn with_retries(mut resp: Response<Body>, retries: u32) -> Response<Body> {
    if retries > 0 {
        resp.headers_mut()
            .insert(RETRIES_HEADER, HeaderValue::from(retries));
    }
    resp
}

/// Read and drop a 429's body (bounded), so its connection can be reused.
async fn drain(body: crate::forward::UpstreamBody, idle: Duration) {
    let limited = http_body_util::Limited::new(body, MAX_DRAINED_BODY_BYTES);
    let _ = tokio::time::timeout(idle, limited.collect()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const AC: &str = "AC0123456789abcdef0123456789abcdef";
    const AC2: &str = "ACfedcba9876543210fedcba9876543210";
    const SK: &str = "SK0123456789abcdef0123456789abcdef";

    #[test]
    fn the_account_is_the_basic_user_or_the_keys_path_account() {
        assert_eq!(
            AccountKey::from_user(AC, "/v1/Conversations"),
            Some(AccountKey::account(AC))
        );
        // An account SID user is its own account, whatever the path says.
        assert_eq!(
            AccountKey::from_user(AC, &format!("/2010-04-01/Accounts/{AC2}/Messages.json")),
            Some(AccountKey::account(AC))
        );
        assert_eq!(
            AccountKey::from_user(SK, &format!("/2010-04-01/Accounts/{AC2}/Messages.json")),
            Some(AccountKey::account(AC2))
        );
        assert_eq!(
            AccountKey::from_user(SK, &format!("/2010-04-01/Accounts/{AC2}.json")),
            Some(AccountKey::account(AC2))
        );
        let k = AccountKey::from_user(SK, "/v1/Conversations").unwrap();
        assert_eq!((k.sid.as_str(), k.class), (SK, AccountClass::Key));
        assert_eq!(AccountKey::from_user("someone", "/v1/Users"), None);
        assert_eq!(AccountKey::from_user("ACnothex", "/v1/Users"), None);
    }

    #[test]
    fn a_reload_keeps_the_parts_whose_settings_did_not_change() {
        let c = crate::config::Config::defaults();
        let metrics = Arc::new(Metrics::default());
        let mut on = c.shield.clone();
        on.retry_429 = true;
        on.max_concurrent_per_account = 2;
        let a = Shield::new(&on, &c.metrics, metrics.clone()).unwrap();
        let same = Shield::reconfigured(Some(&a), &on, &c.metrics, metrics.clone()).unwrap();
        assert!(Arc::ptr_eq(&a, &same), "nothing changed: the same shield");

        let mut waits = on.clone();
        waits.max_queue_wait_ms = 10;
        let b = Shield::reconfigured(Some(&a), &waits, &c.metrics, metrics.clone()).unwrap();
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(b.queue_wait(), Duration::from_millis(10));
        assert!(
            Arc::ptr_eq(&a.budget, &b.budget),
            "the budget's window kept"
        );
        assert!(Arc::ptr_eq(
            a.cap.as_ref().unwrap(),
            b.cap.as_ref().unwrap()
        ));

        let mut capped = waits.clone();
        capped.max_concurrent_per_account = 5;
        capped.budget_percent = 50;
        let d = Shield::reconfigured(Some(&b), &capped, &c.metrics, metrics.clone()).unwrap();
        assert!(!Arc::ptr_eq(
            b.cap.as_ref().unwrap(),
            d.cap.as_ref().unwrap()
        ));
        assert!(!Arc::ptr_eq(&b.budget, &d.budget));

        let mut labelled = c.metrics.clone();
        labelled.account_labels = true;
        let e = Shield::reconfigured(Some(&d), &capped, &labelled, metrics.clone()).unwrap();
        assert!(e.labels);
        assert!(!Arc::ptr_eq(
            d.cap.as_ref().unwrap(),
            e.cap.as_ref().unwrap()
        ));

        assert!(Shield::reconfigured(Some(&e), &c.shield, &c.metrics, metrics).is_none());
    }

    #[test]
    fn off_by_default_builds_no_shield() {
        let c = crate::config::Config::defaults();
        assert!(!c.shield.enabled());
        assert!(Shield::new(&c.shield, &c.metrics, Arc::new(Metrics::default())).is_none());
        assert!(!c.metrics.account_labels);
    }
}
