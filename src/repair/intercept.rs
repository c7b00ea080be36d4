//! The only place the repair touches the HTTP exchange.
//!
//! - A **Participant create** is buffered (up to `repair.max_body_bytes`,
//!   each read bounded by `limits.idle_timeout_ms`: a stalled body is a 408),
//!   held back while its identity is fenced, and forwarded. A 404 whose
//!   JSON says 20404 *and* names the request's own Participants resource
//!   runs the workflow; every other answer goes back untouched (a 404 body
//!   over `MAX_ERROR_BODY_BYTES` streams through as it came).
//! - A **User create/update/delete** is held back while its identity is
//!   fenced, then forwarded untouched.
//!
//! Every forward here goes through the request's 429 shield when it is on
//! (the proxy passes the one of the request's settings;
//! [`crate::shield::forward_request`]; the buffered create may be re-sent
//! on a 429), and plainly when it is off.
//!
//! The workflow runs as a task on the repair runtime, not inside the
//! request's future: a client that hangs up, or a worker that drains,
//! cannot cancel a repair half-way. The caller's answer is the task's
//! [`Verdict`], turned into a response here: 201 with Twilio's participant,
//! Twilio's 409, or the original 404 — never a 5xx.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;
use tracing::Instrument;

use super::Repairer;
use super::check::{self, Landed};
use super::request::{CreatePath, UserWrite, Who, form_identity};
use super::workflow::{self, Answer, CreateRequest, Verdict};
use crate::body::{Direction, MeteredBody, ReadCapped, decode_body, prefixed, read_capped};
use crate::forward::{ForwardError, Forwarder};
use crate::routing::Origin;
use crate::shield::Shield;
use crate::store::Outcome;
use crate::twilio_api::ApiResponse;
use crate::twilio_error::proxy_error;

/// Response header carrying the outcome of an intercepted create.
pub const OUTCOME_HEADER: &str = "x-repair-outcome";
/// Largest 404 body read to look for code 20404 (Twilio's is ~200 bytes);
/// a larger one is passed through untouched.
pub const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// How an intercepted request reaches Twilio: the worker's forwarder and
/// the request's 429 shield (both from the settings the request started
/// with, `crate::proxy::Settings`).
#[derive(Clone, Copy)]
pub struct Via<'a> {
    pub forwarder: &'a Forwarder,
    /// An `Arc`, cloned once for an intercepted create's workflow (never
    /// on the pass-through path): its steps take their slots here too.
    pub shield: Option<&'a Arc<Shield>>,
}

/// Which requests the repair handles.
#[derive(Debug, Clone)]
pub enum Interception {
    ParticipantCreate(CreatePath),
    UserWrite(UserWrite),
}

/// The answer to an intercepted request, and its outcome when the
/// workflow ran.
pub struct Intercepted {
    pub response: Result<Response<Body>, ForwardError>,
    pub outcome: Option<Outcome>,
}

impl From<Result<Response<Body>, ForwardError>> for Intercepted {
    fn from(response: Result<Response<Body>, ForwardError>) -> Self {
        Intercepted {
            response,
            outcome: None,
        }
    }
}

impl Repairer {
    /// Whether (and how) the repair handles this request. Costs a path
    /// parse; a User write is looked at only while something is fenced or
    /// the store is shared.
    pub fn intercepts(&self, method: &http::Method, path: &str) -> Option<Interception> {
        if method == http::Method::POST {
            if let Some(p) = CreatePath::parse(path) {
                // `repair.mode = "off"` by reload: pass-through again.
                if self.is_off() {
                    return None;
                }
                return Some(Interception::ParticipantCreate(p));
            }
        }
        if self.locks.fence().is_empty() && !self.store.shared() {
            return None;
        }
        UserWrite::parse(method, path).map(Interception::UserWrite)
    }

    /// Handle an intercepted request (see the module doc).
    pub async fn handle(
        self: &Arc<Self>,
        what: Interception,
        parts: http::request::Parts,
        body: Incoming,
        origin: &Origin,
        peer: Option<SocketAddr>,
        via: Via<'_>,
    ) -> Intercepted {
        let forwarder = via.forwarder;
        let requested_at = time::OffsetDateTime::now_utc();
        let idle = forwarder.idle_timeout();
        let stream = |body: Incoming| {
            Body::new(MeteredBody::new(
                body,
                idle,
                Direction::Request,
                self.metrics.clone(),
            ))
        };
        if let Interception::UserWrite(UserWrite::Existing(identity)) = &what {
            // By identity only: a write naming a User SID is not fenced.
            self.hold_back(identity, parts.headers.get(header::AUTHORIZATION))
                .await;
            let req = Request::from_parts(parts, stream(body));
            return self.forward(via, req, None, origin, peer).await.into();
        }
        let cap = self.config.max_body_bytes;
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > cap as u64) {
            // Too big to replay: plain pass-through.
            let req = Request::from_parts(parts, stream(body));
            return self.forward(via, req, None, origin, peer).await.into();
        }
        let buffered = match read_capped(body, cap, idle).await {
            Ok(b) => b,
            Err(ReadCapped::TooLarge(prefix, rest)) => {
                let req = Request::from_parts(parts, prefixed(prefix, rest));
                return self.forward(via, req, None, origin, peer).await.into();
            }
            Err(ReadCapped::Unreadable) => {
                return Ok(proxy_error(
                    StatusCode::BAD_REQUEST,
                    "request-body-unreadable",
                    "twilio-repair-proxy could not read the request body",
                ))
                .into();
            }
            Err(ReadCapped::Stalled) => {
                return Ok(proxy_error(
                    StatusCode::REQUEST_TIMEOUT,
                    "request-body-timeout",
                    "the request body stalled for longer than limits.idle_timeout_ms",
                ))
                .into();
            }
        };
        self.metrics.add_request_bytes(buffered.len() as u64);
        let auth = parts.headers.get(header::AUTHORIZATION);
        let identity = match &what {
            Interception::ParticipantCreate(_) => Who::from_form(&buffered)
                .ok()
                .and_then(|w| w.identity().map(str::to_string)),
            Interception::UserWrite(_) => form_identity(&buffered),
        };
        let fenced = match &identity {
            Some(i) => self.hold_back(i, auth).await,
            None => false,
        };

        let mut head = Request::builder()
            .method(parts.method.clone())
            .uri(parts.uri.clone())
            .version(parts.version)
            .body(Body::from(buffered.clone()))
            .unwrap_or_default();
        *head.headers_mut() = parts.headers.clone();
        let replay = Some(buffered.clone());
        let resp = match self.forward(via, head, replay, origin, peer).await {
            Ok(r) => r,
            Err(e) => return Err(e).into(),
        };
        let Interception::ParticipantCreate(path) = what else {
            return Ok(resp.map(Body::new)).into();
        };
        let req = CreateRequest {
            path,
            headers: parts.headers,
            body: buffered,
            origin: origin.clone(),
            shield: via.shield.cloned(),
            requested_at,
            original_request_id: resp
                .headers()
                .get("twilio-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        };
        match resp.status() {
            StatusCode::NOT_FOUND => self.after_404(resp, req).await,
            StatusCode::CONFLICT if fenced => self.after_fenced_conflict(resp, req).await,
            _ => Ok(resp.map(Body::new)).into(),
        }
    }

    /// Forward through the request's 429 shield when it is on (`replay`:
    /// the buffered body, re-sent on a 429), else plainly.
    async fn forward(
        &self,
        via: Via<'_>,
        req: Request<Body>,
        replay: Option<Bytes>,
        origin: &Origin,
        peer: Option<SocketAddr>,
    ) -> Result<Response<Body>, ForwardError> {
        let shield = via.shield.map(|s| &**s);
        crate::shield::forward_request(shield, via.forwarder, req, replay, origin, peer).await
    }

    /// While an identity is fenced, wait for its live repair to end and
    /// finish its open journal records (when this caller may), bounded by
    /// the workflow deadline. Returns whether it was fenced.
    async fn hold_back(self: &Arc<Self>, identity: &str, auth: Option<&HeaderValue>) -> bool {
        // A store that cannot say counts as "fenced": the wait then costs
        // one failed query, a slipped write could cost a User.
        let fenced = self.locks.fence().is_raised(identity)
            || (self.store.shared() && self.store.has_open_repair(identity).await.unwrap_or(true));
        if !fenced {
            return false;
        }
        self.metrics.repair_fence_wait();
        let deadline = Instant::now() + Duration::from_millis(self.config.workflow_deadline_ms);
        // On the repair runtime: a recovery set off here must not be cut
        // short by the client hanging up or the worker draining.
        let me = self.clone();
        let (identity, auth) = (identity.to_string(), auth.cloned());
        let wait = self.tasks.spawn_on(
            async move {
                loop {
                    me.locks.fence().wait_live(&identity, deadline).await;
                    me.recover_identity(&identity, auth.as_ref(), deadline)
                        .await;
                    // Another replica's repair may still hold its fence row
                    // (it has not journaled its snapshot yet), or keep a
                    // record open this caller may not finish: poll until it
                    // lets go, within the deadline.
                    if !me.store.shared()
                        || matches!(me.store.has_open_repair(&identity).await, Ok(false))
                        || Instant::now() + super::lock::LOCK_POLL_INTERVAL >= deadline
                    {
                        break;
                    }
                    tokio::time::sleep(super::lock::LOCK_POLL_INTERVAL).await;
                }
            }
            .in_current_span(),
            &self.rt,
        );
        let _ = wait.await;
        true
    }

    async fn after_404<B>(self: &Arc<Self>, resp: Response<B>, req: CreateRequest) -> Intercepted
    where
        B: http_body::Body<Data = Bytes, Error: Into<axum::BoxError>> + Send + Unpin + 'static,
    {
        let (rparts, mut rbody) = resp.into_parts();
        // Read up to the bound; a larger body is not the fault's and goes
        // back untouched, streamed.
        let mut chunks = Vec::new();
        let mut len = 0;
        loop {
            match rbody.frame().await {
                None => break,
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        len += d.len();
                        chunks.push(d);
                        if len > MAX_ERROR_BODY_BYTES {
                            return Ok(Response::from_parts(rparts, prefixed(chunks, rbody)))
                                .into();
                        }
                    }
                }
                Some(Err(_)) => {
                    return Ok(proxy_error(
                        StatusCode::BAD_GATEWAY,
                        "upstream-failed",
                        "twilio-repair-proxy could not read Twilio's answer",
                    ))
                    .into();
                }
            }
        }
        let raw: Bytes = chunks.concat().into();
        let error = decode_body(rparts.headers.get(header::CONTENT_ENCODING), &raw)
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        let is_fault = error.as_ref().is_some_and(|v| req.path.is_fault(v));
        let original = Response::from_parts(rparts, raw);
        if !is_fault {
            return Ok(original.map(Body::from)).into();
        }
        self.metrics.repair_intercepted();
        let started = StdInstant::now();
        let rep = self.clone();
        // The repair's span (a child of the request's): its log lines and
        // its steps' spans and `traceparent`s belong to it.
        // A conversation addressed by the app's unique name (which may name
        // the identity) is hashed like an identity when hashing.
        let conversation = match crate::sid::is_sid(&req.path.conversation, "CH") {
            true => req.path.conversation.clone(),
            false => self.privacy().identity(&req.path.conversation),
        };
        let span = tracing::info_span!(
            "repair",
            otel.name = "repair",
            repair_id = tracing::field::Empty,
            trp.outcome = tracing::field::Empty,
            trp.conversation = %conversation,
        );
        let task = self.tasks.spawn_on(
            async move { workflow::run(&rep, &req).await }.instrument(span.clone()),
            &self.rt,
        );
        let verdict = task.await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "the workflow task failed");
            Verdict::original(Outcome::Failed, Some("the workflow task failed".into()))
        });
        span.record("trp.outcome", verdict.outcome.as_str());
        // The aliases this repair wrote apply to the next request at once.
        if verdict.outcome == Outcome::Repaired {
            self.aliases.refresh().await;
        }
        self.metrics.repair_workflow.observe(started.elapsed());
        let outcome = verdict.outcome;
        self.metrics.repair_outcome(outcome);
        Intercepted {
            response: Ok(respond(verdict, original.map(Body::from))),
            outcome: Some(outcome),
        }
    }

    /// A create held back by the fence may find its participant made by
    /// the repair it waited for (the same create, sent twice): Twilio says
    /// 409, the caller is told 201 with that participant, as the ghost
    /// case is — unless it existed before this request.
    async fn after_fenced_conflict<B>(&self, resp: Response<B>, req: CreateRequest) -> Intercepted
    where
        B: http_body::Body<Data = Bytes, Error: Into<axum::BoxError>> + Send + 'static,
    {
        let Ok(who) = Who::from_form(&req.body) else {
            return Ok(resp.map(Body::new)).into();
        };
        let Some(auth) = req.headers.get(header::AUTHORIZATION) else {
            return Ok(resp.map(Body::new)).into();
        };
        let mut api = self.request_api(&req, auth.clone());
        let path = req.path.clone();
        let look = self.tasks.spawn_on(
            async move { check::participant(&mut api, &path, &who).await }.in_current_span(),
            &self.rt,
        );
        let Ok(looked) = look.await else {
            return Ok(resp.map(Body::new)).into();
        };
        match looked {
            Ok(Landed::Found(p))
                if !super::existed_before(&p, req.requested_at, self.config.clock_skew_ms) =>
            {
                self.metrics.repair_outcome(Outcome::Existing);
                let v = Verdict {
                    answer: Answer::Created(Box::new(p)),
                    outcome: Outcome::Existing,
                    detail: None,
                    repair_id: None,
                    aliases: Vec::new(),
                };
                Intercepted {
                    response: Ok(respond(v, Response::new(Body::empty()))),
                    outcome: Some(Outcome::Existing),
                }
            }
            _ => Ok(resp.map(Body::new)).into(),
        }
    }
}

/// Turn a verdict into the caller's response, telling the SIDs its repair
/// changed.
fn respond(verdict: Verdict, original: Response<Body>) -> Response<Body> {
    let mut r = answer(verdict.answer, verdict.outcome, original);
    super::alias::tell(r.headers_mut(), &verdict.aliases);
    r
}

fn answer(answer: Answer, outcome: Outcome, original: Response<Body>) -> Response<Body> {
    let outcome = HeaderValue::from_static(outcome.as_str());
    match answer {
        Answer::Created(p) => twilio_answer(StatusCode::CREATED, *p, outcome),
        Answer::Conflict(r) => twilio_answer(StatusCode::CONFLICT, *r, outcome),
        Answer::AlreadyExists => {
            let mut r: Response<Body> = crate::twilio_error::error_response(
                StatusCode::CONFLICT,
                50433,
                "Participant already exists",
                &crate::twilio_error::twilio_more_info(50433),
            );
            r.headers_mut().insert(OUTCOME_HEADER, outcome);
            r
        }
        Answer::Original => {
            let mut r = original;
            r.headers_mut().insert(OUTCOME_HEADER, outcome);
            r
        }
    }
}

/// Twilio's own answer (its body, type and request id) with `status`.
fn twilio_answer(status: StatusCode, p: ApiResponse, outcome: HeaderValue) -> Response<Body> {
    // A declared length: link rewriting (`public_base_url`) only
    // buffers bodies whose length is known.
    let len = HeaderValue::from(p.body.len());
    let mut r = Response::new(Body::from(p.body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_LENGTH, len);
    h.insert(
        header::CONTENT_TYPE,
        p.content_type
            .unwrap_or(HeaderValue::from_static("application/json")),
    );
    if let Some(id) = p.request_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        h.insert("twilio-request-id", id);
    }
    h.insert(OUTCOME_HEADER, outcome);
    r
}
