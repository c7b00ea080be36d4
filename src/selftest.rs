//! The selftest: prove the repair on the operator's own account before it
//! touches production (`twilio-repair-proxy selftest`, and `POST /selftest`
//! on the admin plane, which is why it lives below both and not in
//! `commands`). Orchestration only: make a throwaway Conversation
//! Service and what a stale identity has to lose, run the repair's own
//! workflow on it (`crate::repair::workflow::run_as_faulted`: the same
//! steps, the same journal code, against an in-memory journal, and the
//! same client: a `Repairer` with the default exchange, so `Via` and the
//! shield's cap as `serve` sets them), read back every field the invariant
//! names, check what the repair's client put on the wire (its
//! [`crate::twilio_api::Tap`]'s records, not what it was handed), and
//! delete the service whatever happened.
//!
//! What belongs here: the order of the scene, the comparisons and the
//! report. What does not: any repair step (they are `repair`'s; a copy here
//! would prove nothing about them) and any write outside the service this
//! run created (every write's path starts with its `/v1/Services/{IS}`, and
//! the service is read back and its friendly name compared before the
//! delete).

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde::Serialize;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::config::{Config, RepairMode, StoreOptions};
use crate::forward::{self, UpstreamClient};
use crate::metrics::Metrics;
use crate::repair::request::CreatePath;
use crate::repair::workflow::{self, Answer, CreateRequest};
use crate::repair::{RepairCredential, Repairer, RepairerParts};
use crate::routing::Origin;
use crate::shield::Shield;
use crate::store::Outcome;
use crate::twilio_api::{
    ApiError, ApiResponse, MAX_TAPPED_CALLS, RetryPolicy, Tap, TappedCall, TwilioApi,
    encode_segment, form,
};

/// Twilio's Conversations host: `--base-url`'s default.
pub const CONVERSATIONS_ORIGIN: &str = "https://conversations.twilio.com";
/// Every throwaway service's friendly name starts with this (then a
/// timestamp), so one left behind (`--keep`, a killed run) is recognised.
pub const SERVICE_NAME_PREFIX: &str = "trp-selftest";
/// The longest one selftest call may take (a wrong host or a silent
/// network ends here, not at the repair's deadline).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest the throwaway service's cleanup keeps trying, all its calls
/// together (the read that checks the service is ours, the delete, the
/// read-back of the 404). Each of them is retried on a transient failure
/// (no answer in time, a broken exchange, a 5xx, a 429) with the repair's
/// own backoff and at most `repair.retry_max_attempts` attempts, honouring
/// a `Retry-After` that ends within this bound; past it the report says
/// "not deleted" and names the service. Long enough for a Twilio blip,
/// short enough that a run against a Twilio that keeps failing ends.
const CLEANUP_WITHIN: Duration = Duration::from_secs(60);

/// One line of the report: a step and whether it held.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub step: &'static str,
    pub ok: bool,
    /// `ok`'s detail (what was made), or what differed.
    pub detail: String,
    /// Twilio's `Twilio-Request-Id` of the call that showed it.
    pub request_id: Option<String>,
}

/// What a selftest found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Every check held (the exit status).
    pub ok: bool,
    pub base_url: String,
    /// The throwaway service (`None`: it could not be made).
    pub service_sid: Option<String>,
    pub service_name: String,
    /// `--keep`: the service was left for inspection.
    pub kept: bool,
    /// The throwaway service is gone (read back as 404 after the delete).
    pub cleaned_up: bool,
    pub checks: Vec<Check>,
    /// Every call the repair's workflow made, as its client sent it (empty
    /// when the run ended before the repair).
    pub repair_calls: Vec<RepairCall>,
    /// When it ran (RFC 3339).
    pub at: String,
}

impl Report {
    /// The report as lines: one per step, then the summary.
    pub fn lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .checks
            .iter()
            .map(|c| {
                let rq = c
                    .request_id
                    .as_deref()
                    .map(|r| format!(" [{r}]"))
                    .unwrap_or_default();
                let verdict = if c.ok { "ok" } else { "FAILED" };
                format!("{:<23} {verdict:<6} {}{rq}", c.step, c.detail)
            })
            .collect();
        let failed = self.checks.iter().filter(|c| !c.ok).count();
        out.push(if self.ok {
            format!(
                "selftest passed: {} checks held on {}; the repair did the right thing on this account",
                self.checks.len(),
                self.base_url
            )
        } else {
            format!(
                "selftest FAILED: {failed} of {} checks did not hold on {}: do not turn repair mode on until they do",
                self.checks.len(),
                self.base_url
            )
        });
        out
    }
}

/// Why a selftest could not run at all (one line; nothing was made).
#[derive(Debug, thiserror::Error)]
pub enum SelftestError {
    #[error(
        "selftest: Twilio refused the credential {user} ({status}{code}): check {variables}; nothing was created"
    )]
    Credential {
        user: String,
        variables: &'static str,
        status: u16,
        code: String,
    },
    /// The first call (the service create) got no service: the host
    /// cannot be reached, or answered something else.
    #[error("selftest: cannot create a service on {base_url}: {detail}; nothing was created")]
    NoService { base_url: String, detail: String },
    /// The service create got no clear answer (no answer in time, a
    /// broken exchange, a 5xx, a 201 without a SID): it may have landed,
    /// and the selftest cannot know which service to delete.
    #[error(
        "selftest: the service create on {base_url} got no clear answer ({detail}); a service named \"{name}\" may have been created: look for it (Conversations > Services) and delete it"
    )]
    MaybeService {
        base_url: String,
        name: String,
        detail: String,
    },
    /// `--base-url` fails the check every upstream setting passes
    /// ([`crate::config::check_origin`]); found before any call.
    #[error(
        "selftest: invalid --base-url {url}: {reason} (an origin such as https://conversations.twilio.com); nothing was sent"
    )]
    BaseUrl { url: String, reason: String },
    /// The upstream TLS settings (`upstream_ca_file`) cannot be used.
    #[error("selftest: the upstream TLS settings: {0}; nothing was sent")]
    Tls(String),
    #[error(
        "selftest: no credential: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN, or TWILIO_API_KEY and TWILIO_API_SECRET (with TWILIO_ACCOUNT_SID), or the repair credential (TRP_REPAIR_API_KEY_SID/_SECRET or repair.credentials_file)"
    )]
    NoCredential,
    /// Interrupted before its first call (a signal, a shutdown, the time
    /// bound already spent).
    #[error("selftest: interrupted before any call ({0}); nothing was created")]
    InterruptedBeforeAnyCall(Interruption),
    #[error(transparent)]
    CredentialFile(#[from] crate::repair::credential::CredentialError),
}

/// The credential selftest acts with as the "caller", and where it came
/// from (named in a refusal: `variables`).
pub struct Caller {
    pub credential: RepairCredential,
    pub variables: &'static str,
}

/// What one selftest run needs.
pub struct Options {
    pub config: Config,
    pub base_url: String,
    pub caller: Caller,
    /// The operator repair credential, as the proxy would hold it.
    pub operator: Option<RepairCredential>,
    /// `X-Twilio-Webhook-Enabled` as the caller would send it (`None`: not sent).
    pub webhook: Option<HeaderValue>,
    pub keep: bool,
    /// The 429 shield the repair's calls take their slots from.
    pub shield: ShieldFrom,
}

/// Where a selftest's repair gets its 429 shield.
pub enum ShieldFrom {
    /// One built from `config.shield` (the command: no proxy runs).
    Config,
    /// The running proxy's, as a reload last set it (`POST /selftest`: its
    /// calls take their slots beside live traffic's; `None`: the shield is
    /// off there now).
    Live(Option<Arc<Shield>>),
}

/// One call of the repair, as its client put it on the wire (the record
/// of the client's [`Tap`]: the headers it handed to the upstream client,
/// then the answer). In the JSON report, so that what the checks read can
/// be held against what Twilio received.
#[derive(Debug, Clone, Serialize)]
pub struct RepairCall {
    pub method: String,
    /// The path and query.
    pub path: String,
    /// `X-Twilio-Webhook-Enabled` as sent (`None`: not sent).
    pub webhook: Option<String>,
    /// `Via` as sent (`None`: not sent; `add_forwarded_headers` marks the
    /// repair's calls).
    pub via: Option<String>,
    /// Its credential's Basic user name (`AC…`/`SK…`; never the secret).
    pub user: String,
    /// The answer's status (`None`: no answer, see `error`).
    pub status: Option<u16>,
    /// Twilio's `Twilio-Request-Id` of the answer.
    pub request_id: Option<String>,
    /// Why there was no answer (a timeout, a broken exchange).
    pub error: Option<String>,
}

impl From<TappedCall> for RepairCall {
    fn from(c: TappedCall) -> Self {
        let text = |v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
        let (status, request_id, error) = match c.answer {
            Ok((status, rq)) => (Some(status.as_u16()), rq, None),
            Err(e) => (None, None, Some(e)),
        };
        RepairCall {
            method: c.method.to_string(),
            path: c.path,
            webhook: c.webhook.as_ref().map(text),
            via: c.via,
            user: c.user,
            status,
            request_id,
            error,
        }
    }
}

/// The fields the scene gives the identity (what the invariant must bring back).
struct Wanted {
    identity: String,
    friendly_name: String,
    attributes: String,
    user_role: String,
    member_attributes: [String; 2],
    member_role: String,
}

/// The selftest's own calls (the scene and the reads that verify it):
/// the same client type as the repair's, with the caller's credential.
struct Calls {
    api: TwilioApi,
    /// The repair's retry settings (the cleanup's retries: [`CLEANUP_WITHIN`]).
    retry: RetryPolicy,
}

impl Calls {
    /// A call of the cleanup: retried while its answer is transient
    /// ([`retry_wait`]), within `until`. The last result, and how many
    /// attempts it took.
    async fn retrying(
        &self,
        method: Method,
        path: &str,
        until: Instant,
    ) -> (Result<ApiResponse, ApiError>, u32) {
        let mut backoff =
            Backoff::new(self.retry.initial_backoff, self.retry.max_backoff).upward_jitter();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let deadline = (Instant::now() + CALL_TIMEOUT).min(until);
            let r = self.api.once(method.clone(), path, None, deadline).await;
            if attempt >= self.retry.max_attempts {
                return (r, attempt);
            }
            let now = Instant::now();
            match retry_wait(
                &r,
                backoff.next_wait(),
                until.saturating_duration_since(now),
            ) {
                Some(wait) => tokio::time::sleep(wait).await,
                None => return (r, attempt),
            }
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
    ) -> Result<ApiResponse, ApiError> {
        self.api
            .once(method, path, body, Instant::now() + CALL_TIMEOUT)
            .await
    }
}

/// How long to wait before the cleanup tries a call again (`None`: it
/// does not): only after a transient failure (no answer in time, a broken
/// exchange or body, a 5xx, a 429), for the backoff's `wait` or the
/// answer's `Retry-After` if longer, and only if that ends within `left`.
fn retry_wait(
    r: &Result<ApiResponse, ApiError>,
    wait: Duration,
    left: Duration,
) -> Option<Duration> {
    let hint = match r {
        Ok(a) if a.status == StatusCode::TOO_MANY_REQUESTS || a.status.is_server_error() => {
            a.retry_after
        }
        Ok(_) | Err(ApiError::Deadline) => return None,
        Err(ApiError::Timeout { .. } | ApiError::Transport { .. } | ApiError::Body { .. }) => None,
    };
    let wait = hint.map_or(wait, |h| h.max(wait));
    (wait < left).then_some(wait)
}

/// What went wrong with one call, for a report line.
fn differed(r: &ApiResponse) -> String {
    let message = r
        .json()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_default();
    match r.code() {
        Some(code) => format!(
            "Twilio answered {} (code {code}) {message}",
            r.status.as_u16()
        ),
        None => format!("Twilio answered {} {message}", r.status.as_u16()),
    }
    .trim_end()
    .to_string()
}

fn same_json(a: &str, b: &str) -> bool {
    match (
        serde_json::from_str::<serde_json::Value>(a),
        serde_json::from_str::<serde_json::Value>(b),
    ) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

fn field(v: &serde_json::Value, k: &str) -> Option<String> {
    v.get(k).and_then(|x| x.as_str()).map(str::to_string)
}

/// The fields of `v` that differ from what was sent: `name: want W, got G`.
fn differences(v: &serde_json::Value, want: &[(&str, &str, bool)]) -> Vec<String> {
    want.iter()
        .filter_map(|(name, w, json)| {
            let got = field(v, name);
            let same = match &got {
                Some(g) if *json => same_json(w, g),
                Some(g) => g == w,
                None => false,
            };
            (!same).then(|| {
                format!(
                    "{name}: want {w}, got {}",
                    got.unwrap_or_else(|| "nothing".into())
                )
            })
        })
        .collect()
}

/// The run in progress: its report's lines so far, and the repair's calls.
struct Run {
    checks: Vec<Check>,
    repair_calls: Vec<RepairCall>,
}

impl Run {
    fn ok(&mut self, step: &'static str, detail: impl Into<String>, rq: Option<String>) {
        self.checks.push(Check {
            step,
            ok: true,
            detail: detail.into(),
            request_id: rq,
        });
    }
    fn failed(&mut self, step: &'static str, detail: impl Into<String>, rq: Option<String>) {
        self.checks.push(Check {
            step,
            ok: false,
            detail: detail.into(),
            request_id: rq,
        });
    }
    /// A write of the scene: its JSON when it answered `want`, else a
    /// failed line and `None`.
    fn expect(
        &mut self,
        step: &'static str,
        r: Result<ApiResponse, ApiError>,
        want: StatusCode,
    ) -> Option<(serde_json::Value, Option<String>)> {
        match r {
            Ok(r) if r.status == want => Some((r.json().unwrap_or_default(), r.request_id)),
            Ok(r) => {
                self.failed(step, differed(&r), r.request_id.clone());
                None
            }
            Err(e) => {
                self.failed(step, e.to_string(), None);
                None
            }
        }
    }
}

/// Why a run was cut short: its report's `interrupted` line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interruption {
    /// SIGINT, SIGTERM or SIGQUIT: the command's, or the proxy's shutdown.
    Signal,
    /// The run's time bound elapsed (`admin.selftest_deadline_ms`).
    Deadline(Duration),
}

impl std::fmt::Display for Interruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Interruption::Signal => f.write_str("a signal or the proxy's shutdown"),
            Interruption::Deadline(d) => write!(
                f,
                "the run's time bound, {}, admin.selftest_deadline_ms",
                humantime::format_duration(*d)
            ),
        }
    }
}

impl Interruption {
    /// The `interrupted` line's detail.
    fn detail(self) -> String {
        match self {
            Interruption::Signal => {
                "a signal ended the run here: the step under way was abandoned".into()
            }
            Interruption::Deadline(d) => format!(
                "the run's time bound ({}, admin.selftest_deadline_ms) ended it here: the step under way was abandoned",
                humantime::format_duration(d)
            ),
        }
    }
}

/// Run the selftest (see the module doc). `Err` only when nothing could
/// be made at all (a refused credential, an unreachable host): one line.
pub async fn selftest(opts: Options) -> Result<Report, SelftestError> {
    selftest_until(opts, std::future::pending()).await
}

/// [`selftest`], cut short when `interrupted` completes (the command's
/// SIGINT, SIGTERM or SIGQUIT, the proxy's shutdown, a time bound): the scene or
/// the repair under way is abandoned, and the service is still deleted
/// (unless `--keep`).
pub async fn selftest_until(
    opts: Options,
    interrupted: impl std::future::Future<Output = Interruption>,
) -> Result<Report, SelftestError> {
    // Polled once now: a signal future installs its handlers when first
    // polled, and until then SIGINT, SIGTERM or SIGQUIT would end the process in the
    // middle of the service create, leaving that service behind unsaid.
    // A signal from here on ends the run after the create, then deletes.
    let interrupted = interrupted;
    tokio::pin!(interrupted);
    let signalled_early = tokio::select! {
        biased;
        why = &mut interrupted => Some(why),
        () = std::future::ready(()) => None,
    };
    // Cut before the first call (a shutdown that began as the run was
    // admitted): nothing is made on the account at all.
    if let Some(why) = signalled_early {
        return Err(SelftestError::InterruptedBeforeAnyCall(why));
    }
    let at = crate::store::now_rfc3339();
    let origin = base_origin(&opts.base_url)?;
    let client = forward::build_client_with(
        &opts.config.limits,
        &forward::UpstreamTls::from_config(&opts.config)
            .map_err(|e| SelftestError::Tls(e.to_string()))?,
    );
    let step_timeout = Duration::from_millis(opts.config.repair.step_timeout_ms);
    let calls = Calls {
        api: TwilioApi::new(
            client.clone(),
            origin.clone(),
            opts.caller.credential.authorization.clone(),
            opts.webhook.clone(),
            step_timeout.min(CALL_TIMEOUT),
        ),
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(opts.config.repair.retry_initial_backoff_ms),
            max_backoff: Duration::from_millis(opts.config.repair.retry_max_backoff_ms),
            max_attempts: opts.config.repair.retry_max_attempts,
            step_timeout,
        },
    };
    let service_name = format!(
        "{SERVICE_NAME_PREFIX} {}",
        at.split('.').next().unwrap_or(&at)
    );
    // 1. The service: the first call, so a wrong credential ends here.
    let created = calls
        .call(
            Method::POST,
            "/v1/Services",
            Some(&form(&[("FriendlyName", &service_name)])),
        )
        .await;
    let (service_sid, rq) = match created {
        Ok(r) if r.status == StatusCode::CREATED => match r.json().and_then(|v| field(&v, "sid")) {
            Some(sid) if crate::sid::is_sid(&sid, "IS") => (sid, r.request_id),
            _ => {
                return Err(SelftestError::MaybeService {
                    base_url: origin.as_string(),
                    name: service_name.clone(),
                    detail: "201 without a service SID".into(),
                });
            }
        },
        Ok(r) if r.status == StatusCode::UNAUTHORIZED || r.status == StatusCode::FORBIDDEN => {
            return Err(SelftestError::Credential {
                user: opts.caller.credential.user.clone(),
                variables: opts.caller.variables,
                status: r.status.as_u16(),
                code: r.code().map(|c| format!(", code {c}")).unwrap_or_default(),
            });
        }
        Ok(r) if r.status.is_server_error() => {
            return Err(SelftestError::MaybeService {
                base_url: origin.as_string(),
                name: service_name.clone(),
                detail: format!("creating a service: {}", differed(&r)),
            });
        }
        Ok(r) => {
            return Err(SelftestError::NoService {
                base_url: origin.as_string(),
                detail: format!("creating a service: {}", differed(&r)),
            });
        }
        Err(e) => {
            return Err(SelftestError::MaybeService {
                base_url: origin.as_string(),
                name: service_name.clone(),
                detail: e.to_string(),
            });
        }
    };
    let mut run = Run {
        checks: Vec::new(),
        repair_calls: Vec::new(),
    };
    // In the proxy's log (`POST /selftest`): the service to delete by hand
    // should the process stop before its cleanup ends.
    tracing::info!(service = %service_sid, name = %service_name, "selftest: throwaway service created");
    run.ok(
        "create service",
        format!("{service_sid} \"{service_name}\""),
        rq,
    );
    let base = format!("/v1/Services/{service_sid}");
    // Not finished yet (that returned above), so it may be polled here.
    let cut = tokio::select! {
        () = scene_and_repair(&mut run, &opts, &calls, client, &origin, &base) => None,
        why = &mut interrupted => Some(why),
    };
    if let Some(why) = cut {
        run.failed("interrupted", why.detail(), None);
    }

    // Last: the service goes, whatever happened (unless --keep).
    let cleaned_up = if opts.keep {
        run.ok(
            "keep service",
            format!("{service_sid} left for inspection (--keep): delete it with DELETE {base}"),
            None,
        );
        false
    } else {
        delete_service(&mut run, &calls, &base, &service_name).await
    };
    let ok = run.checks.iter().all(|c| c.ok);
    Ok(Report {
        ok,
        base_url: origin.as_string(),
        service_sid: Some(service_sid),
        service_name,
        kept: opts.keep,
        cleaned_up,
        checks: run.checks,
        repair_calls: run.repair_calls,
        at,
    })
}

/// `--base-url` as an origin, if it passes the proxy's own check of an
/// upstream ([`crate::config::check_origin`]: http or https, a host, no
/// user name or password, no path or query). The URL in the error has its
/// password masked.
fn base_origin(base_url: &str) -> Result<Origin, SelftestError> {
    let refused = |reason: String| SelftestError::BaseUrl {
        url: crate::config::mask_url_password(base_url),
        reason,
    };
    crate::config::check_origin("--base-url", base_url).map_err(|e| {
        refused(match e {
            crate::config::ConfigError::Invalid { reason, .. } => reason,
            other => other.to_string(),
        })
    })?;
    Origin::parse(base_url).ok_or_else(|| refused("not a URL".into()))
}

/// Delete the throwaway service (after reading back that it is ours) and
/// read back that it is gone; each call retried on a transient failure,
/// all within [`CLEANUP_WITHIN`]. A line that says "not deleted" names the
/// service and how to delete it.
async fn delete_service(run: &mut Run, calls: &Calls, base: &str, name: &str) -> bool {
    let until = Instant::now() + CLEANUP_WITHIN;
    let sid = base.rsplit('/').next().unwrap_or(base);
    let not_deleted =
        |why: String| format!("not deleted: {sid} \"{name}\": {why}; delete it with DELETE {base}");
    let unconfirmed = |why: String| {
        format!(
            "the delete was answered, {why}: check that {sid} \"{name}\" is gone, or delete it with DELETE {base}"
        )
    };
    let tries = |n: u32| {
        if n > 1 {
            format!(" after {n} attempts")
        } else {
            String::new()
        }
    };
    match calls.retrying(Method::GET, base, until).await {
        (Ok(r), _) if r.status == StatusCode::OK => {
            let got = r.json().and_then(|v| field(&v, "friendly_name"));
            if got.as_deref() != Some(name) {
                run.failed(
                    "delete service",
                    format!("not deleted: its friendly name reads {got:?}, not \"{name}\""),
                    r.request_id,
                );
                return false;
            }
        }
        (Ok(r), _) if r.status == StatusCode::NOT_FOUND => {}
        (Ok(r), n) => {
            let why = format!("reading it{}: {}", tries(n), differed(&r));
            run.failed("delete service", not_deleted(why), r.request_id);
            return false;
        }
        (Err(e), n) => {
            let why = format!("reading it{}: {e}", tries(n));
            run.failed("delete service", not_deleted(why), None);
            return false;
        }
    }
    let (rq, deleted_after) = match calls.retrying(Method::DELETE, base, until).await {
        (Ok(r), n) if r.status == StatusCode::NO_CONTENT || r.status == StatusCode::NOT_FOUND => {
            (r.request_id, n)
        }
        (Ok(r), n) => {
            let why = format!("{}{}", differed(&r), tries(n));
            run.failed("delete service", not_deleted(why), r.request_id);
            return false;
        }
        (Err(e), n) => {
            run.failed(
                "delete service",
                not_deleted(format!("{e}{}", tries(n))),
                None,
            );
            return false;
        }
    };
    match calls.retrying(Method::GET, base, until).await {
        (Ok(r), _) if r.status == StatusCode::NOT_FOUND => {
            run.ok(
                "delete service",
                format!(
                    "deleted with everything in it{} (read back: 404)",
                    tries(deleted_after)
                ),
                rq,
            );
            true
        }
        (Ok(r), _) if r.status == StatusCode::OK => {
            let why = format!("still there after the delete ({})", r.status.as_u16());
            run.failed("delete service", not_deleted(why), r.request_id);
            false
        }
        (Ok(r), n) => {
            let why = format!("not read back{}: {}", tries(n), differed(&r));
            run.failed("delete service", unconfirmed(why), r.request_id);
            false
        }
        (Err(e), n) => {
            let why = format!("not read back{}: {e}", tries(n));
            run.failed("delete service", unconfirmed(why), rq);
            false
        }
    }
}

/// Pick a role of `kind` that is not Twilio's default for it (`service
/// user`, `channel user`): a User re-made with defaults must show.
fn non_default_role(roles: &[serde_json::Value], kind: &str, default: &str) -> Option<String> {
    roles
        .iter()
        .filter(|r| r["type"] == kind && r["friendly_name"] != default)
        .find_map(|r| field(r, "sid"))
}

/// Steps 2 to 4 in the throwaway service at `base`: the scene, the
/// repair, the read-back. Each pushes its lines; a scene step that fails
/// ends the run (the service is deleted by the caller).
async fn scene_and_repair(
    run: &mut Run,
    opts: &Options,
    calls: &Calls,
    client: UpstreamClient,
    origin: &Origin,
    base: &str,
) {
    // 2. Roles: non-default ones, so a User re-made with defaults shows.
    let Some((roles, rq)) = run.expect(
        "read roles",
        calls
            .call(Method::GET, &format!("{base}/Roles?PageSize=50"), None)
            .await,
        StatusCode::OK,
    ) else {
        return;
    };
    let roles = roles["roles"].as_array().cloned().unwrap_or_default();
    let (Some(user_role), Some(member_role)) = (
        non_default_role(&roles, "service", "service user"),
        non_default_role(&roles, "conversation", "channel user"),
    ) else {
        run.failed(
            "read roles",
            format!(
                "no non-default service and conversation role among {} roles",
                roles.len()
            ),
            rq,
        );
        return;
    };
    run.ok(
        "read roles",
        format!("User role {user_role}, member role {member_role}"),
        rq,
    );
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    let want = Wanted {
        identity: format!("{SERVICE_NAME_PREFIX}-{stamp}"),
        friendly_name: "Selftest User (twilio-repair-proxy)".into(),
        attributes: r#"{"selftest":true,"tier":"gold","tags":["a","b"],"nested":{"n":1}}"#.into(),
        user_role,
        member_attributes: [
            r#"{"seat":"kept","n":1}"#.into(),
            r#"{"seat":"re-added","n":2}"#.into(),
        ],
        member_role,
    };

    // The User.
    let Some((user, rq)) = run.expect(
        "create user",
        calls
            .call(
                Method::POST,
                &format!("{base}/Users"),
                Some(&form(&[
                    ("Identity", &want.identity),
                    ("FriendlyName", &want.friendly_name),
                    ("Attributes", &want.attributes),
                    ("RoleSid", &want.user_role),
                ])),
            )
            .await,
        StatusCode::CREATED,
    ) else {
        return;
    };
    let user_fields = [
        ("friendly_name", want.friendly_name.as_str(), false),
        ("attributes", want.attributes.as_str(), true),
        ("role_sid", want.user_role.as_str(), false),
    ];
    let diff = differences(&user, &user_fields);
    let old_user_sid = field(&user, "sid").unwrap_or_default();
    if diff.is_empty() {
        run.ok(
            "create user",
            format!("{old_user_sid} `{}`", want.identity),
            rq,
        );
    } else {
        run.failed(
            "create user",
            format!("Twilio kept other fields: {}", diff.join("; ")),
            rq,
        );
        return;
    }

    // Two conversations, a participant in each, then one removed.
    let mut conversations = Vec::new();
    for i in 0..2 {
        let Some((c, rq)) = run.expect(
            "create conversation",
            calls
                .call(
                    Method::POST,
                    &format!("{base}/Conversations"),
                    Some(&form(&[(
                        "FriendlyName",
                        &format!("{SERVICE_NAME_PREFIX} conversation {}", i + 1),
                    )])),
                )
                .await,
            StatusCode::CREATED,
        ) else {
            return;
        };
        let sid = field(&c, "sid").unwrap_or_default();
        run.ok("create conversation", sid.clone(), rq);
        conversations.push(sid);
    }
    let participants = |ch: &str| format!("{base}/Conversations/{ch}/Participants");
    let mut member_sids = Vec::new();
    for (ch, attributes) in conversations.iter().zip(&want.member_attributes) {
        let Some((p, rq)) = run.expect(
            "add participant",
            calls
                .call(
                    Method::POST,
                    &participants(ch),
                    Some(&form(&[
                        ("Identity", &want.identity),
                        ("Attributes", attributes),
                        ("RoleSid", &want.member_role),
                    ])),
                )
                .await,
            StatusCode::CREATED,
        ) else {
            return;
        };
        let diff = differences(
            &p,
            &[
                ("attributes", attributes, true),
                ("role_sid", &want.member_role, false),
            ],
        );
        let sid = field(&p, "sid").unwrap_or_default();
        if !diff.is_empty() {
            run.failed(
                "add participant",
                format!(
                    "{sid} in {ch}: Twilio kept other fields: {}",
                    diff.join("; ")
                ),
                rq,
            );
            return;
        }
        run.ok("add participant", format!("{sid} in {ch}"), rq);
        member_sids.push(sid);
    }
    let (kept_ch, faulted_ch) = (&conversations[0], &conversations[1]);
    let Some((_, rq)) = run.expect(
        "remove participant",
        calls
            .call(
                Method::DELETE,
                &format!("{}/{}", participants(faulted_ch), member_sids[1]),
                None,
            )
            .await,
        StatusCode::NO_CONTENT,
    ) else {
        return;
    };
    run.ok(
        "remove participant",
        format!(
            "{} from {faulted_ch} (its re-add is the create the fault strikes)",
            member_sids[1]
        ),
        rq,
    );

    // 3. The repair's own workflow, as if the re-add had met the fault.
    let tap = Tap::default();
    let verdict_line = repair(opts, client, origin, base, faulted_ch, &want, &tap).await;
    // What the repair's client sent, whatever the verdict.
    run.repair_calls = tap.calls().into_iter().map(RepairCall::from).collect();
    let unrecorded = tap.dropped();
    if unrecorded > 0 {
        run.failed(
            "repair calls",
            format!(
                "{unrecorded} calls past the first {MAX_TAPPED_CALLS} were not recorded: the webhook and credential checks saw only those"
            ),
            None,
        );
    }
    let Some(verdict_line) = verdict_line else {
        run.failed("repair", "the in-memory journal could not be opened", None);
        return;
    };
    let calls_made = run.repair_calls.clone();
    let last_rq = calls_made.iter().rev().find_map(|c| c.request_id.clone());
    match verdict_line {
        Ok(detail) => run.ok("repair", detail, last_rq),
        Err(detail) => run.failed("repair", detail, last_rq),
    }

    // 4. Read back every field the invariant names.
    verify(
        run,
        calls,
        base,
        &want,
        &old_user_sid,
        kept_ch,
        faulted_ch,
        &calls_made,
    )
    .await;
    verify_webhook(run, opts.webhook.as_ref(), &calls_made);
    verify_credential(run, &calls_made);
}

/// Run the workflow for the re-add of `want.identity` to `faulted_ch`;
/// `None` if the journal could not be opened, else the verdict as a line.
async fn repair(
    opts: &Options,
    client: UpstreamClient,
    origin: &Origin,
    base: &str,
    faulted_ch: &str,
    want: &Wanted,
    tap: &Tap,
) -> Option<Result<String, String>> {
    // The proxy's repair settings, in repair mode, for this service alone.
    let mut config = opts.config.repair.clone();
    config.mode = RepairMode::Repair;
    config.allow_services.clear();
    config.deny_services.clear();
    // A journal of its own (in memory: one connection, or each would be a
    // database of its own): a selftest is no incident of the proxy's.
    let store = crate::store::open(
        "sqlite::memory:",
        &StoreOptions {
            max_connections: 1,
            ..opts.config.store_options.clone()
        },
    )
    .await
    .ok()?;
    // The proxy's own client, built as `serve` builds it (`crate::app`):
    // the default exchange (`TwilioApi` over `client`, `Via` when
    // `add_forwarded_headers`), the shield's per-account cap from the
    // configuration, and the tap that records what it sends.
    let metrics = Arc::new(Metrics::default());
    let shield = match &opts.shield {
        ShieldFrom::Live(live) => live.clone(),
        ShieldFrom::Config => {
            Shield::new(&opts.config.shield, &opts.config.metrics, metrics.clone())
        }
    };
    let repairer = Repairer::new(RepairerParts {
        config,
        client,
        store,
        metrics,
        credential: opts.operator.clone(),
        mark_forwarded: opts.config.add_forwarded_headers,
        runtime: None,
        exchange: None,
        shield: shield.clone(),
        tap: Some(tap.clone()),
    });
    let path = format!(
        "{base}/Conversations/{}/Participants",
        encode_segment(faulted_ch)
    );
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        opts.caller.credential.authorization.clone(),
    );
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    if let Some(w) = &opts.webhook {
        headers.insert("x-twilio-webhook-enabled", w.clone());
    }
    let create = CreateRequest {
        path: CreatePath::parse(&path)?,
        headers,
        body: form(&[
            ("Identity", &want.identity),
            ("Attributes", &want.member_attributes[1]),
            ("RoleSid", &want.member_role),
        ])
        .into(),
        origin: origin.clone(),
        // The workflow's calls take their slots from the request's shield,
        // as an intercepted create's do.
        shield,
        requested_at: time::OffsetDateTime::now_utc(),
        original_request_id: None,
    };
    let verdict = workflow::run_as_faulted(&repairer, &create).await;
    let by = tap
        .calls()
        .into_iter()
        .find(|c| c.method == Method::DELETE)
        .map(|c| c.user)
        .unwrap_or_else(|| "nobody".into());
    let detail = verdict.detail.clone().unwrap_or_default();
    Some(match (verdict.outcome, &verdict.answer) {
        (Outcome::Repaired, Answer::Created(_)) => Ok(format!(
            "repaired (journal record {}): User deleted by SID and recreated with {by}, memberships restored, the re-add answered 201",
            verdict.repair_id.unwrap_or_default()
        )),
        (outcome, _) => Err(format!(
            "outcome {outcome}{}",
            if detail.is_empty() {
                String::new()
            } else {
                format!(": {detail}")
            }
        )),
    })
}

#[allow(clippy::too_many_arguments)]
async fn verify(
    run: &mut Run,
    calls: &Calls,
    base: &str,
    want: &Wanted,
    old_user_sid: &str,
    kept_ch: &str,
    faulted_ch: &str,
    made: &[RepairCall],
) {
    let identity = encode_segment(&want.identity);
    // The User: its fields, by identity.
    match calls
        .call(Method::GET, &format!("{base}/Users/{identity}"), None)
        .await
    {
        Ok(r) if r.status == StatusCode::OK => {
            let v = r.json().unwrap_or_default();
            let diff = differences(
                &v,
                &[
                    ("friendly_name", &want.friendly_name, false),
                    ("attributes", &want.attributes, true),
                    ("role_sid", &want.user_role, false),
                ],
            );
            let sid = field(&v, "sid").unwrap_or_default();
            if !diff.is_empty() {
                run.failed("check user", diff.join("; "), r.request_id);
            } else if sid == old_user_sid {
                run.failed(
                    "check user",
                    format!("still the original User {sid}: the repair did not recreate it"),
                    r.request_id,
                );
            } else {
                run.ok(
                    "check user",
                    format!(
                        "{sid} (was {old_user_sid}): friendly_name, attributes (as JSON), role_sid as before"
                    ),
                    r.request_id,
                );
            }
        }
        Ok(r) => run.failed("check user", differed(&r), r.request_id),
        Err(e) => run.failed("check user", e.to_string(), None),
    }
    let deletes = made
        .iter()
        .filter(|c| c.method == "DELETE" && c.path.contains("/Users/"))
        .count();
    if deletes == 1 {
        run.ok("check user deleted once", "one DELETE of the User", None);
    } else {
        run.failed(
            "check user deleted once",
            format!("{deletes} DELETEs of the User"),
            None,
        );
    }
    // Both memberships: fields, and the identity exactly once.
    for (step, ch, attributes) in [
        ("check membership", kept_ch, &want.member_attributes[0]),
        ("check participant", faulted_ch, &want.member_attributes[1]),
    ] {
        let list = format!("{base}/Conversations/{ch}/Participants?PageSize=100");
        match calls.call(Method::GET, &list, None).await {
            Ok(r) if r.status == StatusCode::OK => {
                let v = r.json().unwrap_or_default();
                let mine: Vec<&serde_json::Value> = v["participants"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter(|p| p["identity"] == want.identity.as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                if mine.len() != 1 {
                    run.failed(
                        step,
                        format!("the identity is in {ch} {} times, not once", mine.len()),
                        r.request_id,
                    );
                    continue;
                }
                let diff = differences(
                    mine[0],
                    &[
                        ("attributes", attributes, true),
                        ("role_sid", &want.member_role, false),
                    ],
                );
                if diff.is_empty() {
                    run.ok(
                        step,
                        format!(
                            "{} in {ch} exactly once: attributes (as JSON), role_sid as before",
                            field(mine[0], "sid").unwrap_or_default()
                        ),
                        r.request_id,
                    );
                } else {
                    run.failed(step, format!("in {ch}: {}", diff.join("; ")), r.request_id);
                }
            }
            Ok(r) => run.failed(step, differed(&r), r.request_id),
            Err(e) => run.failed(step, e.to_string(), None),
        }
    }
}

/// Every write of the repair carried `X-Twilio-Webhook-Enabled` as the
/// caller sent it (Twilio fires webhooks for a write only when asked).
fn verify_webhook(run: &mut Run, want: Option<&HeaderValue>, made: &[RepairCall]) {
    let want = want.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let writes: Vec<&RepairCall> = made.iter().filter(|c| c.method != "GET").collect();
    let wrong: Vec<String> = writes
        .iter()
        .filter(|c| c.webhook != want)
        .map(|c| {
            format!(
                "{} {} sent {}",
                c.method,
                c.path,
                c.webhook.as_deref().unwrap_or("(not sent)")
            )
        })
        .collect();
    let shown = want.as_deref().unwrap_or("(not sent)");
    if writes.is_empty() {
        run.failed("check webhook header", "the repair made no write", None);
    } else if wrong.is_empty() {
        run.ok(
            "check webhook header",
            format!(
                "X-Twilio-Webhook-Enabled: {shown} on all {} writes of the repair",
                writes.len()
            ),
            None,
        );
    } else {
        run.failed(
            "check webhook header",
            format!("want {shown}: {}", wrong.join("; ")),
            writes.iter().find_map(|c| c.request_id.clone()),
        );
    }
}

/// Every call of the repair was accepted for its credential: a 401 or 403
/// is named on its own line, whatever the other checks say.
fn verify_credential(run: &mut Run, made: &[RepairCall]) {
    let refused = made
        .iter()
        .find(|c| c.status.is_some_and(|s| s == 401 || s == 403));
    if let Some(c) = refused {
        run.failed(
            "check credential",
            format!(
                "{} {} was refused ({})",
                c.method,
                c.path,
                c.status.unwrap_or_default()
            ),
            c.request_id.clone(),
        );
    } else if !made.is_empty() {
        let mut users: Vec<&str> = made.iter().map(|c| c.user.as_str()).collect();
        users.dedup();
        users.sort_unstable();
        users.dedup();
        run.ok(
            "check credential",
            format!(
                "all {} calls of the repair accepted (made with {})",
                made.len(),
                users.join(", ")
            ),
            None,
        );
    } else {
        run.failed(
            "check credential",
            "the repair made no call: nothing to check",
            None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run interrupted before its first call (a shutdown that began as it
    /// was admitted) makes nothing: no connection reaches Twilio at all.
    #[tokio::test]
    async fn a_run_interrupted_before_its_first_call_makes_nothing() {
        let twilio = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        twilio.set_nonblocking(true).unwrap();
        let credential =
            RepairCredential::new(&format!("AC{}", "a".repeat(32)), "t", None).unwrap();
        let opts = Options {
            config: Config::defaults(),
            base_url: format!("http://{}", twilio.local_addr().unwrap()),
            caller: Caller {
                credential,
                variables: "TWILIO_*",
            },
            operator: None,
            webhook: None,
            keep: false,
            shield: ShieldFrom::Config,
        };
        let got = selftest_until(opts, std::future::ready(Interruption::Signal)).await;
        assert!(
            matches!(got, Err(SelftestError::InterruptedBeforeAnyCall(_))),
            "{:?}",
            got.map(|r| r.checks.len())
        );
        // The run has returned: a connection it made would be queued by now.
        assert_eq!(
            twilio.accept().map(|_| ()).map_err(|e| e.kind()),
            Err(std::io::ErrorKind::WouldBlock)
        );
    }

    #[test]
    fn differences_compare_attributes_as_json_and_name_the_field() {
        let v = serde_json::json!({"attributes": "{\"b\": 2, \"a\": 1}", "role_sid": "RL2"});
        let d = differences(
            &v,
            &[
                ("attributes", r#"{"a":1,"b":2}"#, true),
                ("role_sid", "RL1", false),
                ("friendly_name", "K", false),
            ],
        );
        assert_eq!(
            d,
            vec![
                "role_sid: want RL1, got RL2".to_string(),
                "friendly_name: want K, got nothing".to_string()
            ]
        );
    }

    fn answer(status: u16, retry_after: Option<u64>) -> Result<ApiResponse, ApiError> {
        Ok(ApiResponse {
            status: StatusCode::from_u16(status).unwrap(),
            content_type: None,
            body: bytes::Bytes::new(),
            request_id: None,
            retry_after: retry_after.map(Duration::from_secs),
        })
    }

    #[test]
    fn the_cleanup_retries_transient_failures_only_and_within_its_bound() {
        let (wait, left) = (Duration::from_millis(100), Duration::from_secs(10));
        // Transient: a 5xx, a 429, no answer in time, a broken exchange.
        assert_eq!(retry_wait(&answer(503, None), wait, left), Some(wait));
        assert_eq!(retry_wait(&answer(500, None), wait, left), Some(wait));
        assert_eq!(retry_wait(&answer(429, None), wait, left), Some(wait));
        let timeout = Err(ApiError::Timeout {
            method: Method::DELETE,
            path: "/v1/Services/IS1".into(),
        });
        assert_eq!(retry_wait(&timeout, wait, left), Some(wait));
        let broken = Err(ApiError::Transport {
            method: Method::DELETE,
            path: "/v1/Services/IS1".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionReset).into(),
        });
        assert_eq!(retry_wait(&broken, wait, left), Some(wait));
        // A short Retry-After is honoured (never shorter than the backoff).
        assert_eq!(
            retry_wait(&answer(429, Some(2)), wait, left),
            Some(Duration::from_secs(2))
        );
        assert_eq!(retry_wait(&answer(503, Some(0)), wait, left), Some(wait));
        // One that ends past the bound, or a wait that does: no retry.
        assert_eq!(retry_wait(&answer(429, Some(30)), wait, left), None);
        assert_eq!(retry_wait(&answer(503, None), left, left), None);
        // An answer: no retry.
        for status in [200, 204, 401, 403, 404] {
            assert_eq!(retry_wait(&answer(status, None), wait, left), None);
        }
        assert_eq!(retry_wait(&Err(ApiError::Deadline), wait, left), None);
    }

    #[test]
    fn base_url_must_be_an_origin_as_an_upstream_must() {
        assert!(base_origin("https://conversations.twilio.com").is_ok());
        assert!(base_origin("http://127.0.0.1:4711/").is_ok());
        for bad in [
            "http://127.0.0.1:4711/v1",
            "http://127.0.0.1:4711?x=1",
            "ftp://127.0.0.1:4711",
            "127.0.0.1:4711",
            "http://127.0.0.1:0",
        ] {
            let e = base_origin(bad).unwrap_err().to_string();
            assert!(
                e.contains("invalid --base-url") && e.lines().count() == 1,
                "{e}"
            );
        }
        let e = base_origin("https://AC1:s3cret@conversations.twilio.com")
            .unwrap_err()
            .to_string();
        assert!(e.contains("user name or password"), "{e}");
        assert!(!e.contains("s3cret"), "the secret: {e}");
    }

    #[test]
    fn a_non_default_role_is_picked_by_type() {
        let roles = vec![
            serde_json::json!({"sid": "RL1", "type": "service", "friendly_name": "service user"}),
            serde_json::json!({"sid": "RL2", "type": "conversation", "friendly_name": "channel user"}),
            serde_json::json!({"sid": "RL3", "type": "service", "friendly_name": "service admin"}),
        ];
        assert_eq!(
            non_default_role(&roles, "service", "service user").as_deref(),
            Some("RL3")
        );
        assert_eq!(
            non_default_role(&roles, "conversation", "channel user"),
            None
        );
    }
}
