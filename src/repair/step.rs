//! One workflow step: one Twilio call, its rules and its record.
//!
//! Each [`StepKind`] owns three rules, written once here:
//! - its **method**;
//! - which statuses are an **answer** the workflow reads (a `404` is an
//!   answer to "does this participant exist?", a `409` to "create this
//!   User");
//! - its **retry safety**: a `429` is always retried (Twilio never
//!   processed it, honouring `Retry-After`); a `5xx` or a transport failure
//!   is retried only for a `GET`. A write (`POST`, the User's `DELETE`) that
//!   may have reached Twilio is never sent again blindly: the step reports
//!   [`StepError::Unsure`] and the caller reads back whether it landed
//!   before trying again.
//!
//! [`Api::step`] makes the call, records it in the incident (step name,
//! status, Twilio request id) and classifies the result. Retries are
//! bounded by `repair.retry_max_attempts` per call and by the workflow
//! deadline; loops that read back and try again (in [`super::user`]) are
//! bounded by the deadline alone.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use tokio::time::Instant;
use tracing::Instrument;

use crate::backoff::{Backoff, PastLimit};
use crate::store::{MAX_STEP_MESSAGE_CHARS, StepRecord};
use crate::twilio_api::{ApiError, ApiResponse, RetryPolicy, TwilioApi};
pub use crate::vocabulary::StepKind;

/// How a step may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetrySafety {
    /// Reads: the same call again is harmless.
    Idempotent,
    /// A write (create, update, the User's delete): retried on 429 only;
    /// otherwise its caller reads back first. A DELETE by SID sent again
    /// could remove nothing else, but it would reach Twilio twice.
    ReadBackFirst,
}

impl StepKind {
    pub fn method(self) -> Method {
        use StepKind::*;
        match self {
            FetchParticipant
            | ListParticipants
            | FetchConversation
            | FetchUser
            | ListUserConversations
            | FetchMembership
            | CheckMembership => Method::GET,
            DeleteUser => Method::DELETE,
            RetryCreate | CreateUser | UpdateUser | RestoreMembership | UpdateMembership
            | ReplayCreate => Method::POST,
        }
    }

    /// Statuses that answer the step's question (anything else is an
    /// error the step reports).
    pub fn is_answer(self, status: StatusCode) -> bool {
        use StepKind::*;
        let s = status.as_u16();
        match self {
            FetchParticipant | FetchConversation | FetchUser | CheckMembership => {
                s == 200 || s == 404
            }
            ListParticipants | ListUserConversations | FetchMembership => s == 200,
            DeleteUser => s == 204 || s == 404,
            CreateUser | RestoreMembership => s == 201 || s == 409,
            UpdateUser | UpdateMembership => s == 200,
            // The workflow reads every 201, 409 and 404 of a create.
            RetryCreate | ReplayCreate => s == 201 || s == 409 || s == 404,
        }
    }

    pub fn retry_safety(self) -> RetrySafety {
        if self.method() == Method::GET {
            RetrySafety::Idempotent
        } else {
            RetrySafety::ReadBackFirst
        }
    }
}

/// Why a step produced no answer.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Twilio refused the call for good (a 4xx that is not an answer).
    #[error("{step}: Twilio answered {status}{}", code.map(|c| format!(" (code {c})")).unwrap_or_default())]
    Refused {
        step: StepKind,
        status: StatusCode,
        code: Option<u64>,
    },
    /// A write got a 5xx or no answer: it may or may not have landed.
    #[error("{step}: unsure whether it landed: {last}")]
    Unsure {
        step: StepKind,
        #[source]
        last: AttemptError,
    },
    /// Still failing after the attempts allowed for one call.
    #[error("{step}: still failing after {attempts} attempts: {last}")]
    Exhausted {
        step: StepKind,
        attempts: u32,
        #[source]
        last: AttemptError,
    },
    /// The workflow deadline passed.
    #[error("{step}: the workflow deadline passed")]
    Deadline { step: StepKind },
}

/// How one attempt failed in a way worth another try (or, for a POST,
/// a check): a 429/5xx answer, or no usable answer at all.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error("status {}", .0.as_u16())]
    Status(StatusCode),
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl StepError {
    /// Worth trying again (after reading back), as opposed to a refusal.
    pub fn is_transient(&self) -> bool {
        matches!(self, StepError::Unsure { .. } | StepError::Exhausted { .. })
    }

    /// The step that failed (the `step` label of its metric).
    pub fn step(&self) -> StepKind {
        match self {
            StepError::Refused { step, .. }
            | StepError::Unsure { step, .. }
            | StepError::Exhausted { step, .. }
            | StepError::Deadline { step } => *step,
        }
    }
}

/// What a step sends.
pub enum Sent<'a> {
    /// The workflow's own form (or none).
    Form(Option<&'a str>),
    /// The caller's create, with its own end-to-end headers.
    Replay(&'a HeaderMap, Bytes),
}

/// One attempt at one call: [`TwilioApi`] in production, a scripted fake
/// in the workflow's unit tests.
pub trait Exchange: Send + Sync {
    fn send<'a>(
        &'a self,
        method: Method,
        path: &'a str,
        sent: &'a Sent<'a>,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<ApiResponse, ApiError>>;
    /// The same exchange acting with another credential.
    fn with_authorization(&self, authorization: HeaderValue) -> Arc<dyn Exchange>;
}

impl Exchange for TwilioApi {
    fn send<'a>(
        &'a self,
        method: Method,
        path: &'a str,
        sent: &'a Sent<'a>,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<ApiResponse, ApiError>> {
        Box::pin(async move {
            match sent {
                Sent::Form(form) => self.once(method, path, *form, deadline).await,
                Sent::Replay(headers, body) => {
                    self.replay(method, path, headers, body.clone(), deadline)
                        .await
                }
            }
        })
    }
    fn with_authorization(&self, authorization: HeaderValue) -> Arc<dyn Exchange> {
        Arc::new(TwilioApi::with_authorization(self, authorization))
    }
}

/// An [`Exchange`] whose every attempt holds a slot of its account's
/// concurrency cap (`shield.max_concurrent_per_account`), waiting in line
/// up to the call's deadline: a repair never pushes an account over the
/// limit. No slot in time answers like Twilio's own 429 would (retried by
/// the step's rules, within the deadline).
pub struct Capped {
    pub inner: Arc<dyn Exchange>,
    pub cap: crate::shield::CapHandle,
}

impl Exchange for Capped {
    fn send<'a>(
        &'a self,
        method: Method,
        path: &'a str,
        sent: &'a Sent<'a>,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<ApiResponse, ApiError>> {
        Box::pin(async move {
            let Ok(_slot) = self.cap.acquire_until(deadline).await else {
                return Ok(ApiResponse::too_many_requests());
            };
            self.inner.send(method, path, sent, deadline).await
        })
    }
    /// The same account's cap: another credential acts for the caller's
    /// own account only (see [`super::credential`]).
    fn with_authorization(&self, authorization: HeaderValue) -> Arc<dyn Exchange> {
        Arc::new(Capped {
            inner: self.inner.with_authorization(authorization),
            cap: self.cap.clone(),
        })
    }
}

/// The workflow's view of Twilio: one origin, one credential, one
/// deadline, and the record of every call made.
pub struct Api {
    inner: Arc<dyn Exchange>,
    policy: RetryPolicy,
    deadline: Instant,
    pub steps: Vec<StepRecord>,
    /// Attempts of the step last run (its span's retry count).
    attempts: u32,
}

impl Api {
    pub fn new(inner: TwilioApi, policy: RetryPolicy, deadline: Instant) -> Api {
        Api::over(Arc::new(inner), policy, deadline)
    }

    /// An `Api` over any [`Exchange`].
    pub fn over(inner: Arc<dyn Exchange>, policy: RetryPolicy, deadline: Instant) -> Api {
        Api {
            inner,
            policy,
            deadline,
            steps: Vec::new(),
            attempts: 0,
        }
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The same origin and deadline with another credential (the repair
    /// steps may act with the operator's; see [`super::credential`]).
    pub fn with_authorization(&self, authorization: HeaderValue) -> Api {
        Api {
            inner: self.inner.with_authorization(authorization),
            policy: self.policy,
            deadline: self.deadline,
            steps: Vec::new(),
            attempts: 0,
        }
    }

    /// The same `Api` with a deadline no later than `deadline`.
    pub fn limit_deadline(mut self, deadline: Instant) -> Api {
        self.deadline = self.deadline.min(deadline);
        self
    }

    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    /// The retry policy's backoff ([`crate::backoff`]):
    /// `retry_initial_backoff_ms` doubling up to `retry_max_backoff_ms`,
    /// with upward jitter (never shorter: a step retries at least as long
    /// as it always did, and concurrent repairs spread apart). The
    /// one backoff of a step's retries and of the workflow's read-back
    /// loops ([`super::user`]'s ensures).
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.policy.initial_backoff, self.policy.max_backoff).upward_jitter()
    }

    /// Make one step's call with the workflow's own headers.
    pub async fn step(
        &mut self,
        kind: StepKind,
        path: &str,
        form: Option<&str>,
    ) -> Result<ApiResponse, StepError> {
        self.traced(kind, path, Sent::Form(form)).await
    }

    /// Replay the caller's create with its own end-to-end headers.
    pub async fn replay(
        &mut self,
        kind: StepKind,
        path: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<ApiResponse, StepError> {
        self.traced(kind, path, Sent::Replay(headers, body)).await
    }

    /// One step as a client span named after it (`fetch-user`, ...), a
    /// child of the repair's: its calls carry the span's `traceparent`
    /// (`crate::twilio_api`), and it records its status and retries.
    async fn traced(
        &mut self,
        kind: StepKind,
        path: &str,
        sent: Sent<'_>,
    ) -> Result<ApiResponse, StepError> {
        let span = tracing::info_span!(
            "step",
            otel.name = %kind,
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            trp.step = %kind,
            trp.retries = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
        );
        self.attempts = 0;
        let result = self.run(kind, path, sent).instrument(span.clone()).await;
        span.record("trp.retries", self.attempts.saturating_sub(1));
        match &result {
            Ok(r) => {
                span.record("http.response.status_code", r.status.as_u16());
                span.record("otel.status_code", "OK");
            }
            Err(_) => {
                span.record("otel.status_code", "ERROR");
            }
        }
        result
    }

    async fn run(
        &mut self,
        kind: StepKind,
        path: &str,
        sent: Sent<'_>,
    ) -> Result<ApiResponse, StepError> {
        let method = kind.method();
        let idempotent = kind.retry_safety() == RetrySafety::Idempotent;
        let mut backoff = self.backoff();
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.attempts = attempt;
            let (at, started) = (step_time(), Instant::now());
            let result = self
                .inner
                .send(method.clone(), path, &sent, self.deadline)
                .await;
            self.record(kind, path, at, started.elapsed(), &result);
            let (retry, hint, last) = match result {
                Ok(r) if kind.is_answer(r.status) => return Ok(r),
                Ok(r) if r.status == StatusCode::TOO_MANY_REQUESTS => {
                    (true, r.retry_after, AttemptError::Status(r.status))
                }
                Ok(r) if r.status.is_server_error() => {
                    let last = AttemptError::Status(r.status);
                    if !idempotent {
                        return Err(StepError::Unsure { step: kind, last });
                    }
                    (true, None, last)
                }
                Ok(r) => {
                    return Err(StepError::Refused {
                        step: kind,
                        status: r.status,
                        code: r.code(),
                    });
                }
                Err(ApiError::Deadline) => return Err(StepError::Deadline { step: kind }),
                Err(e) => {
                    if !idempotent {
                        return Err(StepError::Unsure {
                            step: kind,
                            last: e.into(),
                        });
                    }
                    (true, None, e.into())
                }
            };
            debug_assert!(retry);
            if attempt >= self.policy.max_attempts {
                return Err(StepError::Exhausted {
                    step: kind,
                    attempts: attempt,
                    last,
                });
            }
            let next = backoff.next_wait();
            let wait = hint.unwrap_or(next).min(self.policy.max_backoff);
            if Instant::now() + wait >= self.deadline {
                return Err(StepError::Deadline { step: kind });
            }
            tracing::debug!(step = %kind, attempt, wait_ms = wait.as_millis() as u64, "retrying Twilio call");
            tokio::time::sleep(wait).await;
        }
    }

    fn record(
        &mut self,
        kind: StepKind,
        path: &str,
        at: String,
        took: Duration,
        r: &Result<ApiResponse, ApiError>,
    ) {
        let json = r.as_ref().ok().and_then(ApiResponse::json);
        let field = |name: &str| {
            json.as_ref()
                .and_then(|v| v.get(name))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let success = matches!(r, Ok(x) if x.status.is_success());
        let error_message = match r {
            Ok(_) if success => None,
            Ok(_) => field("message"),
            Err(e) => Some(e.to_string()),
        }
        .map(|m| m.chars().take(MAX_STEP_MESSAGE_CHARS).collect());
        self.steps.push(StepRecord {
            step: kind,
            status: r.as_ref().ok().map(|r| r.status.as_u16()),
            ok: matches!(r, Ok(x) if kind.is_answer(x.status)),
            twilio_request_id: r.as_ref().ok().and_then(|r| r.request_id.clone()),
            method: Some(kind.method().to_string()),
            path: Some(path.to_string()),
            at: Some(at),
            duration_ms: Some(u64::try_from(took.as_millis()).unwrap_or(u64::MAX)),
            error_code: if success {
                None
            } else {
                json.as_ref()
                    .and_then(|v| v.get("code"))
                    .and_then(|c| c.as_u64())
            },
            error_message,
            date_created: if success { field("date_created") } else { None },
        });
    }
}

/// A [`Backoff`] wait that would pass its limit, as `step`'s deadline.
pub fn past(step: StepKind) -> impl Fn(PastLimit) -> StepError {
    move |PastLimit| StepError::Deadline { step }
}

/// When a step's call is sent: RFC 3339 UTC with microseconds, so that
/// the steps of one incident sort into the order they were made in.
fn step_time() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{}.{:06}Z",
        crate::store::rfc3339(t).trim_end_matches('Z'),
        t.microsecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reads_are_sent_again_without_a_read_back() {
        for k in [
            StepKind::DeleteUser,
            StepKind::CreateUser,
            StepKind::UpdateUser,
            StepKind::RestoreMembership,
            StepKind::UpdateMembership,
            StepKind::ReplayCreate,
            StepKind::RetryCreate,
        ] {
            assert_eq!(k.retry_safety(), RetrySafety::ReadBackFirst, "{k}");
        }
        assert_eq!(StepKind::FetchUser.retry_safety(), RetrySafety::Idempotent);
        assert!(StepKind::DeleteUser.is_answer(StatusCode::NOT_FOUND));
        assert!(!StepKind::ListUserConversations.is_answer(StatusCode::NOT_FOUND));
        assert!(!StepKind::CreateUser.is_answer(StatusCode::INTERNAL_SERVER_ERROR));
    }
}
