//! The check-and-repair workflow on `POST .../Conversations/{CH}/Participants`.
//!
//! 1. The request body (up to `repair.max_body_bytes`) is buffered so it can
//!    be replayed, then forwarded. Any answer but a 404 with JSON `code`
//!    20404 goes back untouched (`X-Repair-Outcome` absent).
//! 2. **Check**: fetch the participant by identity (or find a
//!    `MessagingBinding.Address` in the list). Present → the create landed:
//!    201 with Twilio's own JSON (`existing`), or Twilio's 409/50433 when it
//!    existed before our request. The ghost case costs one extra call.
//! 3. **Genuine?** Fetch the conversation. Missing (or its service missing)
//!    → the original 404, nothing touched (`genuine`).
//! 4. **Repair** (identity participants, mode `repair`, service allowed, under
//!    the per-identity rate limit), under a lock on (account, service,
//!    identity): retry the create once; still 20404 → snapshot the User and
//!    its memberships into the journal, delete, recreate, restore
//!    memberships, replay the create (`repaired`). See [`user`].
//! 5. Every intercepted create answers 201/409/the original 404, never a 5xx
//!    (the Java helper library re-sends POSTs on 5xx), with
//!    `X-Repair-Outcome: existing | repaired | genuine | failed | disabled`.

pub mod recovery;
pub mod user;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use sha2::Digest;
use tokio::time::Instant;

use crate::config::{IdentityRecord, RepairConfig, RepairMode};
use crate::forward::{Direction, ForwardError, Forwarder, MeteredBody, UpstreamClient};
use crate::metrics::Metrics;
use crate::routing::Origin;
use crate::store::{Incident, Step, Store, now_rfc3339};
use crate::twilio_api::{ApiResponse, RetryPolicy, TwilioApi, encode_segment};

/// Response header carrying the outcome of an intercepted create.
pub const OUTCOME_HEADER: &str = "x-repair-outcome";
/// Largest 404 body read to look for code 20404 (Twilio's is ~200 bytes).
pub const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
/// Most pages of participants scanned to find a messaging binding.
pub const MAX_LIST_PAGES: usize = 50;

/// How often a waiter polls the store's cross-replica lock.
pub const LOCK_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Both locks of one (account, service, identity); dropping releases them.
pub struct KeyLock {
    _local: tokio::sync::OwnedMutexGuard<()>,
    _store: Box<dyn crate::store::StoreLock>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("timed out waiting for the lock")]
    Timeout,
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// What an intercepted create came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Existing,
    Repaired,
    Genuine,
    Failed,
    Disabled,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Existing => "existing",
            Outcome::Repaired => "repaired",
            Outcome::Genuine => "genuine",
            Outcome::Failed => "failed",
            Outcome::Disabled => "disabled",
        }
    }
}

/// The Participant-create path, parsed. Segments are kept as the client
/// sent them (already percent-encoded) so they can be reused verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatePath {
    /// `Some(IS...)` for `/v1/Services/{IS}/...`, `None` for the default service.
    pub service_sid: Option<String>,
    pub conversation: String,
}

impl CreatePath {
    pub fn parse(path: &str) -> Option<CreatePath> {
        let segs: Vec<&str> = path.strip_prefix("/v1/")?.split('/').collect();
        match segs.as_slice() {
            ["Services", is, "Conversations", ch, "Participants"]
                if !is.is_empty() && !ch.is_empty() =>
            {
                Some(CreatePath {
                    service_sid: Some(is.to_string()),
                    conversation: ch.to_string(),
                })
            }
            ["Conversations", ch, "Participants"] if !ch.is_empty() => Some(CreatePath {
                service_sid: None,
                conversation: ch.to_string(),
            }),
            _ => None,
        }
    }
    /// `/v1/Services/IS...` or `/v1`: the base of Users and Conversations.
    pub fn service_base(&self) -> String {
        match &self.service_sid {
            Some(is) => format!("/v1/Services/{is}"),
            None => "/v1".to_string(),
        }
    }
    pub fn conversation_path(&self) -> String {
        format!(
            "{}/Conversations/{}",
            self.service_base(),
            self.conversation
        )
    }
    pub fn participants_path(&self) -> String {
        format!("{}/Participants", self.conversation_path())
    }
}

/// Who the new participant is, from the form body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    Identity(String),
    Binding {
        address: String,
        proxy_address: Option<String>,
    },
}

impl Who {
    /// Parse the form body (both `+` and `%20` spaces), decoding once.
    pub fn from_form(body: &[u8]) -> Option<Who> {
        let mut identity = None;
        let mut address = None;
        let mut proxy = None;
        for (k, v) in form_urlencoded::parse(body) {
            match k.as_ref() {
                "Identity" => identity = Some(v.into_owned()),
                "MessagingBinding.Address" => address = Some(v.into_owned()),
                "MessagingBinding.ProxyAddress" => proxy = Some(v.into_owned()),
                _ => {}
            }
        }
        match (identity, address) {
            (Some(i), _) if !i.is_empty() => Some(Who::Identity(i)),
            (_, Some(a)) if !a.is_empty() => Some(Who::Binding {
                address: a,
                proxy_address: proxy,
            }),
            _ => None,
        }
    }
    fn label(&self) -> &str {
        match self {
            Who::Identity(i) => i,
            Who::Binding { address, .. } => address,
        }
    }
}

/// An operator-provided credential for repair and recovery calls.
#[derive(Clone)]
pub struct RepairCredential {
    /// The key or account SID (Basic user name). Not a secret.
    pub user: String,
    pub account_sid: Option<String>,
    pub authorization: HeaderValue,
}

impl std::fmt::Debug for RepairCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepairCredential")
            .field("user", &self.user)
            .field("account_sid", &self.account_sid)
            .field("authorization", &"****")
            .finish()
    }
}

impl RepairCredential {
    pub fn new(user: &str, secret: &str, account_sid: Option<String>) -> Option<Self> {
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"));
        let mut authorization = HeaderValue::from_str(&format!("Basic {token}")).ok()?;
        authorization.set_sensitive(true);
        Some(RepairCredential {
            user: user.to_string(),
            account_sid,
            authorization,
        })
    }

    /// From `TRP_REPAIR_API_KEY_SID`/`_SECRET`/`TRP_REPAIR_ACCOUNT_SID`, or
    /// else from `repair.credentials_file` (TOML: `api_key_sid`,
    /// `api_key_secret`, `account_sid`).
    pub fn from_env_or_file(file: Option<&std::path::Path>) -> Result<Option<Self>, String> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let (Some(sid), Some(secret)) = (
            env("TRP_REPAIR_API_KEY_SID"),
            env("TRP_REPAIR_API_KEY_SECRET"),
        ) {
            return Ok(Self::new(&sid, &secret, env("TRP_REPAIR_ACCOUNT_SID")));
        }
        let Some(path) = file else { return Ok(None) };
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "cannot read repair.credentials_file {}: {e}",
                path.display()
            )
        })?;
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct F {
            api_key_sid: String,
            api_key_secret: String,
            account_sid: Option<String>,
        }
        let f: F = toml::from_str(&text).map_err(|e| {
            format!(
                "invalid repair.credentials_file {}: {}",
                path.display(),
                e.message()
            )
        })?;
        Ok(Self::new(&f.api_key_sid, &f.api_key_secret, f.account_sid))
    }
}

/// The Basic-auth user name of an `Authorization` header (an AC or SK SID).
pub fn basic_user(authorization: &HeaderValue) -> Option<String> {
    use base64::Engine;
    let v = authorization.to_str().ok()?;
    let b64 = v
        .strip_prefix("Basic ")
        .or_else(|| v.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let s = String::from_utf8(decoded).ok()?;
    Some(s.split_once(':')?.0.to_string())
}

/// The interceptor: configuration, shared client, journal, locks.
pub struct Repairer {
    pub config: RepairConfig,
    pub client: UpstreamClient,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub credential: Option<RepairCredential>,
    /// `add_forwarded_headers`: the workflow's calls carry `Via` too.
    pub mark_forwarded: bool,
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pub recovery: recovery::Recovery,
}

/// The answer to an intercepted create, before it becomes a response.
enum Answer {
    /// Twilio's participant JSON, answered as 201.
    Created(ApiResponse),
    /// Twilio's 409 "participant already exists".
    AlreadyExists,
    /// The original 404, untouched.
    Original,
}

/// What the workflow knows about one intercepted create.
struct Ctx<'a> {
    path: &'a CreatePath,
    who: Who,
    headers: &'a HeaderMap,
    body: Bytes,
    requested_at: time::OffsetDateTime,
    api: TwilioApi,
    incident: Incident,
}

impl Ctx<'_> {
    fn step(&mut self, name: &str, r: &Result<ApiResponse, crate::twilio_api::ApiError>, ok: bool) {
        self.incident.steps.push(Step {
            step: name.to_string(),
            status: r.as_ref().ok().map(|r| r.status.as_u16()),
            ok,
            twilio_request_id: r.as_ref().ok().and_then(|r| r.request_id.clone()),
        });
    }
}

impl Repairer {
    pub fn new(
        config: RepairConfig,
        client: UpstreamClient,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        credential: Option<RepairCredential>,
    ) -> Self {
        Repairer {
            config,
            client,
            store,
            metrics,
            credential,
            mark_forwarded: false,
            locks: Default::default(),
            recovery: recovery::Recovery::default(),
        }
    }

    /// Whether a request is a Participant create this interceptor handles.
    pub fn intercepts(&self, method: &Method, path: &str) -> bool {
        self.config.mode != RepairMode::Off
            && method == Method::POST
            && CreatePath::parse(path).is_some()
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            initial_backoff: Duration::from_millis(self.config.retry_initial_backoff_ms),
            max_backoff: Duration::from_millis(self.config.retry_max_backoff_ms),
            max_attempts: self.config.retry_max_attempts,
            step_timeout: Duration::from_millis(self.config.step_timeout_ms),
        }
    }

    /// The in-process lock of one (account, service, identity).
    fn local_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        // Drop locks nobody holds or waits for, so the map stays small.
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(key.to_string()).or_default().clone()
    }

    /// Take both locks of a key (in-process, then the store's cross-replica
    /// one), waiting until `deadline`.
    pub async fn acquire(&self, key: &str, deadline: Instant) -> Result<KeyLock, LockError> {
        let local = self.local_lock(key);
        let remaining = deadline.saturating_duration_since(Instant::now());
        let local = tokio::time::timeout(remaining, local.lock_owned())
            .await
            .map_err(|_| LockError::Timeout)?;
        loop {
            if let Some(store) = self.store.try_lock(key).await? {
                return Ok(KeyLock {
                    _local: local,
                    _store: store,
                });
            }
            if Instant::now() + LOCK_POLL_INTERVAL >= deadline {
                return Err(LockError::Timeout);
            }
            tokio::time::sleep(LOCK_POLL_INTERVAL).await;
        }
    }

    /// Take both locks of a key if nobody holds them.
    pub async fn try_acquire(
        &self,
        key: &str,
    ) -> Result<Option<KeyLock>, crate::store::StoreError> {
        let Ok(local) = self.local_lock(key).try_lock_owned() else {
            return Ok(None);
        };
        Ok(self.store.try_lock(key).await?.map(|store| KeyLock {
            _local: local,
            _store: store,
        }))
    }

    /// Handle a Participant create: forward, and on a 20404 run the workflow.
    pub async fn handle(
        &self,
        parts: http::request::Parts,
        body: Incoming,
        origin: &Origin,
        peer: Option<SocketAddr>,
        forwarder: &Forwarder,
    ) -> (Result<Response<Body>, ForwardError>, Option<&'static str>) {
        let requested_at = time::OffsetDateTime::now_utc();
        let cap = self.config.max_body_bytes;
        let idle = forwarder.idle_timeout();
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > cap as u64) {
            // Too big to replay: plain pass-through.
            let body = Body::new(MeteredBody::new(
                body,
                idle,
                Direction::Request,
                self.metrics.clone(),
            ));
            let req = Request::from_parts(parts, body);
            return (
                forwarder
                    .forward(req, origin, peer)
                    .await
                    .map(|r| r.map(Body::new)),
                None,
            );
        }
        let buffered = match read_capped(body, cap).await {
            Ok(b) => b,
            Err(ReadCapped::TooLarge(prefix, rest)) => {
                let stream =
                    futures_util::stream::iter(prefix.into_iter().map(Ok::<_, axum::Error>))
                        .chain(http_body_util::BodyDataStream::new(Body::new(rest)));
                let req = Request::from_parts(parts, Body::from_stream(stream));
                return (
                    forwarder
                        .forward(req, origin, peer)
                        .await
                        .map(|r| r.map(Body::new)),
                    None,
                );
            }
            Err(ReadCapped::Failed) => {
                return (
                    Ok(crate::proxy::proxy_error(
                        StatusCode::BAD_REQUEST,
                        "request-body-unreadable",
                        "twilio-repair-proxy could not read the request body",
                    )),
                    None,
                );
            }
        };
        self.metrics.add_request_bytes(buffered.len() as u64);

        let mut head = Request::builder()
            .method(parts.method.clone())
            .uri(parts.uri.clone())
            .version(parts.version)
            .body(Body::from(buffered.clone()))
            .unwrap_or_default();
        *head.headers_mut() = parts.headers.clone();
        let resp = match forwarder.forward(head, origin, peer).await {
            Ok(r) => r,
            Err(e) => return (Err(e), None),
        };
        if resp.status() != StatusCode::NOT_FOUND {
            return (Ok(resp.map(Body::new)), None);
        }
        let (rparts, rbody) = resp.into_parts();
        let raw = match Limited::new(rbody, MAX_ERROR_BODY_BYTES).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return (
                    Ok(crate::proxy::proxy_error(
                        StatusCode::BAD_GATEWAY,
                        "upstream-failed",
                        "twilio-repair-proxy could not read Twilio's answer",
                    )),
                    None,
                );
            }
        };
        let decoded = decode_body(rparts.headers.get(header::CONTENT_ENCODING), &raw);
        let is_20404 = decoded
            .as_deref()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
            .and_then(|v| v.get("code").and_then(|c| c.as_u64()))
            == Some(20404);
        let original = Response::from_parts(rparts, raw);
        if !is_20404 {
            return (Ok(original.map(Body::from)), None);
        }

        self.metrics.repair_intercepted();
        let started = StdInstant::now();
        let (answer, outcome) = self
            .workflow(
                &parts.headers,
                buffered,
                parts.uri.path(),
                origin,
                requested_at,
            )
            .await;
        self.metrics.repair_workflow.observe(started.elapsed());
        self.metrics.repair_outcome(outcome.as_str());
        let outcome_value = HeaderValue::from_static(outcome.as_str());
        let resp = match answer {
            Answer::Created(p) => {
                let mut r = Response::new(Body::from(p.body));
                *r.status_mut() = StatusCode::CREATED;
                let h = r.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    p.content_type
                        .unwrap_or(HeaderValue::from_static("application/json")),
                );
                if let Some(id) = p.request_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
                    h.insert("twilio-request-id", id);
                }
                h.insert(OUTCOME_HEADER, outcome_value);
                r
            }
            Answer::AlreadyExists => {
                let mut r: Response<Body> = crate::twilio_error::error_response(
                    StatusCode::CONFLICT,
                    50433,
                    "Participant already exists",
                    &crate::twilio_error::twilio_more_info(50433),
                );
                r.headers_mut().insert(OUTCOME_HEADER, outcome_value);
                r
            }
            Answer::Original => {
                let mut r = original.map(Body::from);
                r.headers_mut().insert(OUTCOME_HEADER, outcome_value);
                r
            }
        };
        (Ok(resp), Some(outcome.as_str()))
    }

    /// Steps 2–4. Never fails: every error becomes an [`Outcome`].
    async fn workflow(
        &self,
        headers: &HeaderMap,
        body: Bytes,
        path: &str,
        origin: &Origin,
        requested_at: time::OffsetDateTime,
    ) -> (Answer, Outcome) {
        let Some(cpath) = CreatePath::parse(path) else {
            return (Answer::Original, Outcome::Failed);
        };
        let mut incident = Incident {
            id: 0,
            at: now_rfc3339(),
            account_sid: None,
            service_sid: cpath.service_sid.clone(),
            conversation_sid: cpath.conversation.clone(),
            identity: None,
            outcome: String::new(),
            detail: None,
            repair_id: None,
            steps: Vec::new(),
        };
        let Some(who) = Who::from_form(&body) else {
            incident.detail =
                Some("the create names neither Identity nor MessagingBinding.Address".into());
            return self
                .finish(incident, Answer::Original, Outcome::Failed)
                .await;
        };
        incident.identity = Some(self.record_identity(who.label()));
        let authorization = match (&self.credential, headers.get(header::AUTHORIZATION)) {
            (Some(c), _) => c.authorization.clone(),
            (None, Some(a)) => a.clone(),
            (None, None) => {
                incident.detail = Some("no credentials to check with".into());
                return self
                    .finish(incident, Answer::Original, Outcome::Failed)
                    .await;
            }
        };
        let deadline = Instant::now() + Duration::from_millis(self.config.workflow_deadline_ms);
        let api = TwilioApi::new(
            self.client.clone(),
            origin.clone(),
            authorization,
            headers.get("x-twilio-webhook-enabled").cloned(),
            self.retry_policy(),
            deadline,
        )
        .with_via(self.mark_forwarded);
        let mut ctx = Ctx {
            path: &cpath,
            who,
            headers,
            body,
            requested_at,
            api,
            incident,
        };

        // Step 2: did the create land after all?
        match self.check(&mut ctx).await {
            Ok(Some(answer)) => return self.finish(ctx.incident, answer, Outcome::Existing).await,
            Ok(None) => {}
            Err(detail) => {
                ctx.incident.detail = Some(detail);
                return self
                    .finish(ctx.incident, Answer::Original, Outcome::Failed)
                    .await;
            }
        }

        // Step 3: is the 404 genuine?
        let conv = ctx
            .api
            .call(Method::GET, &cpath.conversation_path(), None)
            .await;
        let conv_ok = matches!(&conv, Ok(r) if r.status == StatusCode::OK);
        ctx.step(
            "fetch-conversation",
            &conv,
            conv_ok || matches!(&conv, Ok(r) if r.status == StatusCode::NOT_FOUND),
        );
        let conversation = match conv {
            Ok(r) if r.status == StatusCode::OK => r.json().unwrap_or_default(),
            Ok(r) if r.status == StatusCode::NOT_FOUND => {
                return self
                    .finish(ctx.incident, Answer::Original, Outcome::Genuine)
                    .await;
            }
            other => {
                self.metrics.repair_step_failure();
                ctx.incident.detail = Some(describe("fetch conversation", &other));
                return self
                    .finish(ctx.incident, Answer::Original, Outcome::Failed)
                    .await;
            }
        };
        let account_sid = conversation
            .get("account_sid")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        let service_sid = conversation
            .get("chat_service_sid")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .or_else(|| cpath.service_sid.clone())
            .unwrap_or_default();
        ctx.incident.account_sid = Some(account_sid.clone());
        ctx.incident.service_sid = Some(service_sid.clone());

        // Step 4: repair, if allowed.
        let Who::Identity(identity) = ctx.who.clone() else {
            ctx.incident.detail =
                Some("messaging-binding participants have no User to repair".into());
            return self
                .finish(ctx.incident, Answer::Original, Outcome::Failed)
                .await;
        };
        if let Some(reason) = self.policy_refusal(&service_sid, &identity).await {
            ctx.incident.detail = Some(reason);
            return self
                .finish(ctx.incident, Answer::Original, Outcome::Disabled)
                .await;
        }
        let key = format!("{account_sid}:{service_sid}:{identity}");
        let _guard = match self.acquire(&key, deadline).await {
            Ok(g) => g,
            Err(LockError::Timeout) => {
                ctx.incident.detail =
                    Some("timed out waiting for a concurrent repair of this identity".into());
                return self
                    .finish(ctx.incident, Answer::Original, Outcome::Failed)
                    .await;
            }
            Err(LockError::Store(e)) => {
                tracing::warn!(error = %e, "store unavailable: running check-only");
                ctx.incident.detail =
                    Some("store unavailable: check-only, the User was not repaired".into());
                return self
                    .finish(ctx.incident, Answer::Original, Outcome::Disabled)
                    .await;
            }
        };

        // Another request may have repaired meanwhile: retry once.
        match self.replay_create(&mut ctx, "retry-create").await {
            Replay::Created(p) => {
                return self
                    .finish(ctx.incident, Answer::Created(p), Outcome::Repaired)
                    .await;
            }
            Replay::Exists => return self.after_exists(ctx, Outcome::Repaired).await,
            Replay::Still20404 => {}
            Replay::Other(detail) => {
                ctx.incident.detail = Some(detail);
                return self
                    .finish(ctx.incident, Answer::Original, Outcome::Failed)
                    .await;
            }
        }

        // Who runs the repair (a SID, never a secret): the operator's key,
        // else the caller's Basic user name.
        let credential_user = match &self.credential {
            Some(c) => c.user.clone(),
            None => ctx
                .headers
                .get(header::AUTHORIZATION)
                .and_then(basic_user)
                .unwrap_or_default(),
        };
        let target = user::RepairTarget {
            account_sid: account_sid.clone(),
            credential_user,
            upstream: origin.as_string(),
            service_base: cpath.service_base(),
            service_sid: service_sid.clone(),
            identity: identity.clone(),
            exclude_conversation: Some(cpath.conversation.clone()),
        };
        let report = user::repair_user(
            &ctx.api,
            self.store.as_ref(),
            &target,
            &mut ctx.incident.steps,
        )
        .await;
        self.recovery
            .refresh_gauge(self.store.as_ref(), &self.metrics)
            .await;
        let repair_id = match report {
            Ok(r) => r.repair_id,
            Err(e) => {
                self.metrics.repair_step_failure();
                ctx.incident.repair_id = e.repair_id();
                ctx.incident.detail = Some(e.to_string());
                return self
                    .finish(ctx.incident, Answer::Original, Outcome::Failed)
                    .await;
            }
        };
        ctx.incident.repair_id = repair_id;

        // Replay the original create on the repaired User.
        let outcome = match self.replay_create(&mut ctx, "replay-create").await {
            Replay::Created(p) => (Answer::Created(p), Outcome::Repaired),
            Replay::Exists => return self.after_exists(ctx, Outcome::Repaired).await,
            Replay::Still20404 => match self.check(&mut ctx).await {
                Ok(Some(a)) => (a, Outcome::Repaired),
                _ => {
                    ctx.incident.detail =
                        Some("the create still answers 20404 after the User was recreated".into());
                    (Answer::Original, Outcome::Failed)
                }
            },
            Replay::Other(detail) => {
                ctx.incident.detail = Some(detail);
                (Answer::Original, Outcome::Failed)
            }
        };
        self.finish(ctx.incident, outcome.0, outcome.1).await
    }

    /// After a create answered "already exists": fetch it and answer 201.
    async fn after_exists(&self, mut ctx: Ctx<'_>, outcome: Outcome) -> (Answer, Outcome) {
        match self.check(&mut ctx).await {
            Ok(Some(a)) => self.finish(ctx.incident, a, outcome).await,
            Ok(None) | Err(_) => {
                ctx.incident.detail =
                    Some("Twilio reported the participant exists but it cannot be fetched".into());
                self.finish(ctx.incident, Answer::Original, Outcome::Failed)
                    .await
            }
        }
    }

    /// Step 2. `Ok(Some)` when the participant exists.
    async fn check(&self, ctx: &mut Ctx<'_>) -> Result<Option<Answer>, String> {
        let found = match ctx.who.clone() {
            Who::Identity(identity) => {
                let path = format!(
                    "{}/{}",
                    ctx.path.participants_path(),
                    encode_segment(&identity)
                );
                let r = ctx.api.call(Method::GET, &path, None).await;
                let ok = matches!(&r, Ok(x) if x.status == StatusCode::OK || x.status == StatusCode::NOT_FOUND);
                ctx.step("fetch-participant", &r, ok);
                match r {
                    Ok(x) if x.status == StatusCode::OK => Some(x),
                    Ok(x) if x.status == StatusCode::NOT_FOUND => None,
                    other => {
                        self.metrics.repair_step_failure();
                        return Err(describe("fetch participant", &other));
                    }
                }
            }
            Who::Binding {
                address,
                proxy_address,
            } => {
                self.find_binding(ctx, &address, proxy_address.as_deref())
                    .await?
            }
        };
        let Some(p) = found else { return Ok(None) };
        let created = p
            .json()
            .and_then(|v| {
                v.get("date_created")
                    .and_then(|d| d.as_str())
                    .map(str::to_string)
            })
            .and_then(|d| {
                time::OffsetDateTime::parse(&d, &time::format_description::well_known::Rfc3339).ok()
            });
        let skew = time::Duration::milliseconds(self.config.clock_skew_ms as i64);
        match created {
            Some(c) if c < ctx.requested_at - skew => Ok(Some(Answer::AlreadyExists)),
            _ => Ok(Some(Answer::Created(p))),
        }
    }

    async fn find_binding(
        &self,
        ctx: &mut Ctx<'_>,
        address: &str,
        proxy_address: Option<&str>,
    ) -> Result<Option<ApiResponse>, String> {
        let mut next = Some(format!("{}?PageSize=100", ctx.path.participants_path()));
        let mut pages = 0;
        while let Some(path) = next.take() {
            pages += 1;
            if pages > MAX_LIST_PAGES {
                break;
            }
            let r = ctx.api.call(Method::GET, &path, None).await;
            let ok = matches!(&r, Ok(x) if x.status == StatusCode::OK);
            ctx.step("list-participants", &r, ok);
            let page = match r {
                Ok(x) if x.status == StatusCode::OK => x,
                other => {
                    self.metrics.repair_step_failure();
                    return Err(describe("list participants", &other));
                }
            };
            let v = page.json().unwrap_or_default();
            if let Some(list) = v.get("participants").and_then(|l| l.as_array()) {
                for p in list {
                    let b = p.get("messaging_binding");
                    let addr = b.and_then(|b| b.get("address")).and_then(|a| a.as_str());
                    let proxy = b
                        .and_then(|b| b.get("proxy_address"))
                        .and_then(|a| a.as_str());
                    if addr == Some(address) && (proxy_address.is_none() || proxy == proxy_address)
                    {
                        let body = Bytes::from(serde_json::to_vec(p).unwrap_or_default());
                        return Ok(Some(ApiResponse {
                            status: StatusCode::OK,
                            content_type: Some(HeaderValue::from_static("application/json")),
                            body,
                            request_id: page.request_id.clone(),
                            retry_after: None,
                        }));
                    }
                }
            }
            next = v
                .pointer("/meta/next_page_url")
                .and_then(|u| u.as_str())
                .and_then(|u| u.parse::<http::Uri>().ok())
                .and_then(|u| u.path_and_query().map(|pq| pq.as_str().to_string()));
        }
        Ok(None)
    }

    async fn replay_create(&self, ctx: &mut Ctx<'_>, step: &str) -> Replay {
        // A 429 was never processed: safe to retry. A 5xx or timeout may have
        // landed: the caller's check (step 2) settles it instead.
        let mut attempts = 0;
        let r = loop {
            attempts += 1;
            let r = ctx
                .api
                .replay(
                    Method::POST,
                    &ctx.path.participants_path(),
                    ctx.headers,
                    ctx.body.clone(),
                )
                .await;
            match &r {
                Ok(x)
                    if x.status == StatusCode::TOO_MANY_REQUESTS
                        && attempts < self.config.retry_max_attempts =>
                {
                    let wait = x
                        .retry_after
                        .unwrap_or(Duration::from_millis(self.config.retry_initial_backoff_ms))
                        .min(Duration::from_millis(self.config.retry_max_backoff_ms));
                    tokio::time::sleep(wait).await;
                }
                _ => break r,
            }
        };
        let ok = matches!(&r, Ok(x) if x.status == StatusCode::CREATED);
        ctx.step(step, &r, ok);
        match r {
            Ok(x) if x.status == StatusCode::CREATED => Replay::Created(x),
            Ok(x) if x.status == StatusCode::CONFLICT => Replay::Exists,
            Ok(x) if x.status == StatusCode::NOT_FOUND && x.code() == Some(20404) => {
                Replay::Still20404
            }
            Ok(x) if x.status.is_server_error() => {
                // It may have landed: look.
                match self.check(ctx).await {
                    Ok(Some(Answer::Created(p))) => Replay::Created(p),
                    Ok(Some(_)) => Replay::Exists,
                    Ok(None) => Replay::Still20404,
                    Err(d) => Replay::Other(d),
                }
            }
            other => Replay::Other(describe(step, &other)),
        }
    }

    async fn policy_refusal(&self, service_sid: &str, identity: &str) -> Option<String> {
        if self.config.mode == RepairMode::CheckOnly {
            return Some("mode check-only: the User was not repaired".into());
        }
        if !self.config.allow_services.is_empty()
            && !self.config.allow_services.iter().any(|s| s == service_sid)
        {
            return Some("service not in repair.allow_services".into());
        }
        if self.config.deny_services.iter().any(|s| s == service_sid) {
            return Some("service in repair.deny_services".into());
        }
        let since = time::OffsetDateTime::now_utc()
            - time::Duration::seconds(self.config.repair_window_secs as i64);
        match self
            .store
            .count_repairs_since(service_sid, identity, &crate::store::rfc3339(since))
            .await
        {
            Ok(n) if n >= i64::from(self.config.max_repairs_per_window) => Some(format!(
                "repair limit reached: {n} repairs of this identity within {} s; reported, not repaired",
                self.config.repair_window_secs
            )),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "journal unavailable: not repairing");
                Some("journal unavailable: the User was not repaired".into())
            }
        }
    }

    fn record_identity(&self, identity: &str) -> String {
        match self.config.incident_identity {
            IdentityRecord::Plain => identity.to_string(),
            IdentityRecord::Hash => {
                let digest = sha2::Sha256::digest(identity.as_bytes());
                let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                format!("sha256:{}", &hex[..16])
            }
        }
    }

    async fn finish(
        &self,
        mut incident: Incident,
        answer: Answer,
        outcome: Outcome,
    ) -> (Answer, Outcome) {
        incident.outcome = outcome.as_str().to_string();
        tracing::info!(
            outcome = outcome.as_str(),
            conversation = %incident.conversation_sid,
            service = incident.service_sid.as_deref().unwrap_or(""),
            steps = incident.steps.len(),
            detail = incident.detail.as_deref().unwrap_or(""),
            "intercepted 20404 on participant create"
        );
        if let Err(e) = self.store.insert_incident(&incident).await {
            tracing::warn!(error = %e, "cannot record incident");
        }
        (answer, outcome)
    }
}

enum Replay {
    Created(ApiResponse),
    Exists,
    Still20404,
    Other(String),
}

fn describe(what: &str, r: &Result<ApiResponse, crate::twilio_api::ApiError>) -> String {
    match r {
        Ok(x) => format!("{what}: unexpected status {}", x.status.as_u16()),
        Err(e) => format!("{what}: {e}"),
    }
}

enum ReadCapped {
    /// Over the cap: what was read, and the rest of the body.
    TooLarge(Vec<Bytes>, Incoming),
    Failed,
}

/// Read a body up to `cap` bytes.
async fn read_capped(mut body: Incoming, cap: usize) -> Result<Bytes, ReadCapped> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(ReadCapped::Failed);
        };
        if let Ok(data) = frame.into_data() {
            len += data.len();
            chunks.push(data);
            if len > cap {
                return Err(ReadCapped::TooLarge(chunks, body));
            }
        }
    }
    let mut out = bytes::BytesMut::with_capacity(len);
    for c in chunks {
        out.extend_from_slice(&c);
    }
    Ok(out.freeze())
}

/// Decode a gzip/deflate body for inspection (bounded); `None` when the
/// encoding is unknown or the data is corrupt.
pub fn decode_body(encoding: Option<&HeaderValue>, raw: &Bytes) -> Option<Vec<u8>> {
    use std::io::Read;
    let enc = encoding
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_ascii_lowercase());
    let mut out = Vec::new();
    let limit = MAX_ERROR_BODY_BYTES as u64;
    match enc.as_deref() {
        None | Some("identity") | Some("") => return Some(raw.to_vec()),
        Some("gzip") | Some("x-gzip") => {
            flate2::read::GzDecoder::new(&raw[..])
                .take(limit)
                .read_to_end(&mut out)
                .ok()?;
        }
        Some("deflate") => {
            flate2::read::ZlibDecoder::new(&raw[..])
                .take(limit)
                .read_to_end(&mut out)
                .ok()?;
        }
        _ => return None,
    }
    Some(out)
}

use futures_util::StreamExt as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_create_paths_only() {
        let s = CreatePath::parse("/v1/Services/IS1/Conversations/CH1/Participants").unwrap();
        assert_eq!(s.service_sid.as_deref(), Some("IS1"));
        assert_eq!(s.service_base(), "/v1/Services/IS1");
        let d = CreatePath::parse("/v1/Conversations/CH1/Participants").unwrap();
        assert_eq!(d.service_sid, None);
        assert_eq!(d.participants_path(), "/v1/Conversations/CH1/Participants");
        assert!(CreatePath::parse("/v1/Conversations/CH1/Participants/MB1").is_none());
        assert!(CreatePath::parse("/v1/Conversations//Participants").is_none());
        assert!(CreatePath::parse("/v1/Conversations/CH1/Messages").is_none());
    }

    #[test]
    fn form_decoding_accepts_both_space_styles() {
        assert_eq!(
            Who::from_form(b"Identity=a+b%40c"),
            Some(Who::Identity("a b@c".into()))
        );
        assert_eq!(
            Who::from_form(b"Identity=a%20b"),
            Some(Who::Identity("a b".into()))
        );
        assert_eq!(
            Who::from_form(
                b"MessagingBinding.Address=%2B1555&MessagingBinding.ProxyAddress=%2B1666"
            ),
            Some(Who::Binding {
                address: "+1555".into(),
                proxy_address: Some("+1666".into())
            })
        );
        assert_eq!(Who::from_form(b"Attributes=%7B%7D"), None);
    }

    #[test]
    fn basic_user_is_the_sid_never_the_secret() {
        let v = HeaderValue::from_static("Basic QUMxMjM6c2VjcmV0");
        assert_eq!(basic_user(&v).as_deref(), Some("AC123"));
    }
}
