//! The check-and-repair workflow on `POST .../Conversations/{CH}/Participants`.
//!
//! # Layout
//!
//! One concern a file, pointing one way (`intercept → workflow → check,
//! policy, lock, user → step → twilio_api`):
//!
//! - `intercept`: the HTTP exchange: buffer, fence, forward, detect the
//!   fault's 20404, run the workflow as a task, answer its [`Verdict`].
//! - `request`: parsers of what we act on (path, form, 20404 signature).
//! - `workflow`: the decision, as named steps; [`Verdict`] is its one exit.
//! - `verdict`: the verdict and the intercepted create, shared by both.
//! - `check`: did the create land; is the 404 genuine.
//! - `policy`: modes, service lists, the loop guard.
//! - `lock`: the per-identity repair lock and the fence.
//! - `credential`: whose credential acts, and the tenancy rule.
//! - `user`: the convergent delete / recreate / restore.
//! - `snapshot`: reading the User and its memberships before anything is
//!   touched; `journal`: a repair's write-ahead state changes.
//! - `step`: one Twilio call with its success and retry rules.
//! - `alias`: SID continuity: the SIDs a repair changed, told to the
//!   caller and rewritten in later requests that name the old ones.
//! - `recovery`: finishing journal records at start-up, by the sweep,
//!   and for the next request that needs the identity.
//! - `rehearsal`: in `check-only` mode, the repair each fault would
//!   have had, and whether it could have been completed (read after the
//!   caller's answer, on a tracked task, a bounded number at once).
//!
//! Only what other modules of the crate call is `pub(crate)` (`alias`,
//! `credential`, `lock`, `operator`, `rehearsal`, `request`, `step`,
//! `user`, `workflow`: the selftest runs the workflow itself); the rest is private
//! to the workflow, and what the proxy's callers need is re-exported here.
//!
//! Concerns that need only a few of the repairer's parts are their own
//! types, built by [`Repairer::new`] and held as fields: SID continuity
//! (`alias::Aliases`: the alias index, the store, the retention, the
//! runtime; the proxy reaches it through [`Repairer::aliases`]), the
//! per-identity locks and the fence (`lock::Locks`), the recovery fast
//! path (`recovery::Recovery`: who has records waiting, which were closed
//! here) and the check-only rehearsals (`rehearsal::Rehearsals`).
//!
//! The rest is [`Repairer`] itself, whose `impl` is split into one block a
//! file, each beside the code it drives: here its construction, settings,
//! the calls it makes and the incidents it records; in `intercept` the
//! intercepted create (`intercepts`, `handle`); in `recovery` finishing the
//! journal's open records (`refresh`, `spawn_sweeper`, `maybe_recover`,
//! `recover_pending`); in `operator` the operator's repair. These stay
//! `impl Repairer` blocks rather than types of their own because each
//! drives the workflow with most of the repairer's fields (the policy and
//! settings, the store, the metrics, the locks, the credential, the
//! client or scripted exchange and its shield, the runtime and its task
//! tracker): a type of their own would hold the same parts again. No other
//! file adds to it.
//!
//! The invariant every part serves (and every repair test asserts): after
//! any fault, timing, retry or restart, every affected identity's User
//! exists with its original friendly name, attributes and role, its other
//! memberships are back with their attributes and role, the requested
//! participant exists exactly once, no User is deleted twice for one
//! repair, and an intercepted create never gets a 5xx once Twilio has
//! answered it.

pub(crate) mod alias;
mod check;
pub(crate) mod credential;
mod intercept;
mod journal;
pub(crate) mod lock;
pub(crate) mod operator;
pub(crate) mod policy;
mod recovery;
pub(crate) mod rehearsal;
pub(crate) mod request;
mod snapshot;
pub(crate) mod step;
pub(crate) mod user;
mod verdict;
pub(crate) mod workflow;

#[cfg(test)]
mod tests;

use std::sync::{Arc, Weak};
use std::time::Duration;

use http::HeaderValue;
use http::header::HeaderMap;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::config::RepairConfig;
use crate::forward::UpstreamClient;
use crate::metrics::Metrics;
use crate::routing::Origin;
use crate::store::{Incident, Store};
use crate::twilio_api::{ApiResponse, RetryPolicy, TwilioApi};

pub use credential::RepairCredential;
pub use intercept::{Intercepted, Interception, OUTCOME_HEADER, Via};
pub use workflow::Verdict;

/// The interceptor: configuration, the repair runtime's client, journal,
/// locks. Built once by [`Repairer::new`]; shared as an `Arc`.
pub struct Repairer {
    /// The settings it started with: timeouts, backoffs, the deadline.
    config: RepairConfig,
    /// The settings a reload may change for the next repair: `mode`
    /// (`check-only`, `off`), the allow/deny lists and the budget
    /// ([`Repairer::set_policy`]). A repair reads them once, before its
    /// first write (`policy::refusal`); past that it goes on to the end.
    policy: arc_swap::ArcSwap<RepairConfig>,
    /// SID continuity: the alias index and its lookups
    /// (`alias::Aliases`, reached through [`Repairer::aliases`]).
    aliases: alias::Aliases,
    /// Pooled on the repair runtime: its connections outlive the workers.
    client: UpstreamClient,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    credential: Option<RepairCredential>,
    /// `add_forwarded_headers`: the workflow's calls carry `Via` too.
    mark_forwarded: bool,
    locks: lock::Locks,
    pub(super) recovery: recovery::Recovery,
    /// The runtime repairs run on (the process's main runtime, which
    /// outlives every worker's).
    rt: tokio::runtime::Handle,
    /// Every live workflow task (and check-only rehearsal), so shutdown
    /// can wait for them.
    tasks: TaskTracker,
    me: Weak<Repairer>,
    exchange: Option<ExchangeFactory>,
    /// The 429 shield of operator repairs and recovery: each of their
    /// calls takes a slot of its per-account cap (one keeps the shield it
    /// started with; a reload swaps it for the next one,
    /// [`Repairer::set_shield`]). An intercepted create and its
    /// workflow's calls go through the request's own shield
    /// ([`verdict::CreateRequest::shield`]).
    shield: arc_swap::ArcSwapOption<crate::shield::Shield>,
    /// The check-only rehearsals since start.
    rehearsals: rehearsal::Rehearsals,
    /// [`RepairerParts::tap`].
    tap: Option<crate::twilio_api::Tap>,
}

/// Builds the `step::Exchange` of one workflow (origin, credential,
/// webhook choice): the unit tests' scripted Twilio.
pub type ExchangeFactory =
    Arc<dyn Fn(&Origin, HeaderValue, Option<HeaderValue>) -> Arc<dyn step::Exchange> + Send + Sync>;

/// What [`Repairer::new`] needs.
pub struct RepairerParts {
    pub config: RepairConfig,
    pub client: UpstreamClient,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub credential: Option<RepairCredential>,
    pub mark_forwarded: bool,
    /// Where repair tasks run; `None`: the current runtime.
    pub runtime: Option<tokio::runtime::Handle>,
    /// `None`: the real Twilio client over `client`.
    pub exchange: Option<ExchangeFactory>,
    /// The 429 shield, when on (`crate::shield`).
    pub shield: Option<Arc<crate::shield::Shield>>,
    /// An observer of every call the repair's own client sends
    /// ([`crate::twilio_api::Tap`]: the headers as they went on the wire,
    /// the answer): the selftest's, to check what the repair really sent.
    /// `None` in the proxy (nothing recorded). Reaches the default client
    /// only (`exchange: None`); a scripted exchange has its own.
    pub tap: Option<crate::twilio_api::Tap>,
}

impl Repairer {
    /// A reloaded `[repair]`: its mode and policy apply to the next repair.
    /// Every other key keeps its start-up value (`config::reload::LIVE`),
    /// so `Repairer::policy` reads as what a repair started now runs with.
    pub fn set_policy(&self, config: RepairConfig) {
        self.policy.store(Arc::new(RepairConfig {
            mode: config.mode,
            allow_services: config.allow_services,
            deny_services: config.deny_services,
            max_repairs_per_window: config.max_repairs_per_window,
            repair_window_secs: config.repair_window_secs,
            ..self.config.clone()
        }));
    }

    /// The shield in force now (what a reload last set; `None`: off):
    /// `POST /selftest`'s repair takes its slots beside live traffic's.
    pub fn shield(&self) -> Option<Arc<crate::shield::Shield>> {
        self.shield.load_full()
    }

    /// A reloaded `[shield]`: the next workflow's calls take their slots
    /// from it.
    pub fn set_shield(&self, shield: Option<Arc<crate::shield::Shield>>) {
        self.shield.store(shield);
    }

    /// `repair.mode = "off"` by a reload: no new repair, no operator
    /// repair (as when it was off at start-up and no repairer was built).
    pub fn is_off(&self) -> bool {
        self.policy.load().mode == crate::config::RepairMode::Off
    }

    /// The `[repair]` settings in force now: the mode and policy a reload
    /// may have changed, the start-up value of every other key.
    pub(crate) fn policy(&self) -> Arc<RepairConfig> {
        self.policy.load_full()
    }

    pub fn new(p: RepairerParts) -> Arc<Repairer> {
        let rt = p.runtime.unwrap_or_else(tokio::runtime::Handle::current);
        let rehearsals = rehearsal::Rehearsals::new(p.config.rehearsal_max_in_flight as usize);
        Arc::new_cyclic(|me| Repairer {
            policy: arc_swap::ArcSwap::from_pointee(p.config.clone()),
            aliases: alias::Aliases::new(
                p.store.clone(),
                p.config.sid_alias_retention_secs,
                rt.clone(),
            ),
            config: p.config,
            client: p.client,
            store: p.store,
            metrics: p.metrics,
            credential: p.credential,
            mark_forwarded: p.mark_forwarded,
            locks: lock::Locks::default(),
            recovery: recovery::Recovery::default(),
            rt,
            tasks: TaskTracker::new(),
            me: me.clone(),
            exchange: p.exchange,
            shield: arc_swap::ArcSwapOption::new(p.shield),
            rehearsals,
            tap: p.tap,
        })
    }

    /// SID continuity: resolving and rewriting the SIDs a repair changed
    /// (the proxy asks it of every request that may name one).
    pub fn aliases(&self) -> &alias::Aliases {
        &self.aliases
    }

    /// The check-only rehearsals since start (the admin plane's panel).
    pub fn rehearsals(&self) -> rehearsal::RehearsalView {
        self.rehearsals.view()
    }

    /// The mode in force now.
    pub fn mode(&self) -> crate::config::RepairMode {
        self.policy().mode
    }

    /// The operator repair credential it holds, if any.
    pub fn credential(&self) -> Option<&RepairCredential> {
        self.credential.as_ref()
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            initial_backoff: Duration::from_millis(self.config.retry_initial_backoff_ms),
            max_backoff: Duration::from_millis(self.config.retry_max_backoff_ms),
            max_attempts: self.config.retry_max_attempts,
            step_timeout: Duration::from_millis(self.config.step_timeout_ms),
        }
    }

    fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.config.workflow_deadline_ms)
    }

    /// A Twilio client for one workflow: the origin, a credential, the
    /// caller's webhook choice, a fresh deadline.
    fn api(&self, origin: &Origin, auth: HeaderValue, headers: &HeaderMap) -> step::Api {
        self.api_with(
            origin,
            auth,
            headers.get("x-twilio-webhook-enabled").cloned(),
        )
    }

    fn api_with(
        &self,
        origin: &Origin,
        auth: HeaderValue,
        webhook: Option<HeaderValue>,
    ) -> step::Api {
        let shield = self.shield.load_full();
        self.api_under(origin, auth, webhook, shield.as_deref())
    }

    /// A Twilio client for the workflow of an intercepted create: under
    /// the shield the request arrived with, whatever a reload swapped in
    /// since.
    fn request_api(&self, req: &verdict::CreateRequest, auth: HeaderValue) -> step::Api {
        let webhook = req.headers.get("x-twilio-webhook-enabled").cloned();
        self.api_under(&req.origin, auth, webhook, req.shield.as_deref())
    }

    fn api_under(
        &self,
        origin: &Origin,
        auth: HeaderValue,
        webhook: Option<HeaderValue>,
        shield: Option<&crate::shield::Shield>,
    ) -> step::Api {
        let policy = self.retry_policy();
        // The operator credential counts against the account it acts for.
        let account = match &self.credential {
            Some(op) if op.authorization == auth => op
                .account_sid
                .as_deref()
                .map(crate::shield::AccountKey::account),
            _ => crate::shield::AccountKey::from_authorization(&auth, ""),
        };
        let cap = shield.and_then(|s| s.cap_for(account));
        let inner: Arc<dyn step::Exchange> = match &self.exchange {
            Some(make) => make(origin, auth, webhook),
            None => Arc::new(
                TwilioApi::new(
                    self.client.clone(),
                    origin.clone(),
                    auth,
                    webhook,
                    policy.step_timeout,
                )
                .with_via(self.mark_forwarded)
                .with_tap(self.tap.clone()),
            ),
        };
        let inner = match cap {
            Some(cap) => Arc::new(step::Capped { inner, cap }),
            None => inner,
        };
        step::Api::over(inner, policy, self.deadline())
    }

    /// The memberships' share of a workflow: up to the deadline less one
    /// step timeout (at most a quarter of the deadline), kept for the
    /// caller's replayed create.
    fn memberships_until(&self, deadline: Instant) -> Instant {
        let reserve = Duration::from_millis(self.config.step_timeout_ms)
            .min(Duration::from_millis(self.config.workflow_deadline_ms / 4));
        deadline.checked_sub(reserve).unwrap_or(deadline)
    }

    fn record_identity(&self, identity: &str) -> String {
        self.privacy().identity(identity)
    }

    /// How identities are shown and stored (`repair.incident_identity`).
    fn privacy(&self) -> crate::privacy::Privacy {
        crate::privacy::Privacy::new(self.config.incident_identity)
    }

    /// An incident as it is stored and logged: with "hash", no identity in
    /// plain text, not in its detail, a step's path or message either, in
    /// any form (`identity`: the one the workflow acted on, plain); the
    /// steps of its credentials in the order they were made.
    fn as_recorded(&self, incident: Incident, identity: Option<&str>) -> Incident {
        let mut incident = self.privacy().incident_naming(incident, identity);
        incident.steps.sort_by(|a, b| a.at.cmp(&b.at));
        incident
    }

    async fn record_incident(&self, incident: Incident, identity: Option<&str>) -> Option<i64> {
        let incident = self.as_recorded(incident, identity);
        // Logged once recorded, naming the incident: with the request's
        // span (its `request_id`), the line an app's failure is matched by.
        let id = match self.store.insert_incident(&incident).await {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::warn!(error = %e, "cannot record incident");
                None
            }
        };
        tracing::info!(
            incident = id,
            outcome = %incident.outcome,
            conversation = %incident.conversation_sid,
            service = incident.service_sid.as_deref().unwrap_or(""),
            steps = incident.steps.len(),
            detail = incident.detail.as_deref().unwrap_or(""),
            "intercepted 20404 on participant create"
        );
        id
    }

    /// Incident `id` again, with what a check-only rehearsal read after it
    /// was recorded (its detail and steps; recorded as
    /// [`Repairer::record_incident`] records).
    async fn update_incident(&self, id: i64, incident: Incident, identity: &str) {
        let incident = self.as_recorded(incident, Some(identity));
        if let Err(e) = self.store.update_incident(id, &incident).await {
            tracing::warn!(incident = id, error = %e, "cannot record the rehearsal in its incident");
            return;
        }
        tracing::info!(
            incident = id,
            steps = incident.steps.len(),
            detail = incident.detail.as_deref().unwrap_or(""),
            "check-only rehearsal done"
        );
    }

    /// Wait (at most `grace`) for every repair and recovery task to end.
    /// Returns whether they all did.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }

    /// Repairs in flight (for logs at shutdown).
    pub fn in_flight(&self) -> usize {
        self.tasks.len()
    }
}

/// Did this participant exist before the request (less the clock-skew
/// allowance)? Then the caller is answered Twilio's 409, not a 201.
fn existed_before(p: &ApiResponse, requested_at: time::OffsetDateTime, skew_ms: u64) -> bool {
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
    // Twilio's `date_created` has whole seconds: compare with the second
    // the request arrived in, or a participant created in that same second
    // would look older than the request.
    let arrived = requested_at.replace_nanosecond(0).unwrap_or(requested_at);
    let skew = time::Duration::milliseconds(i64::try_from(skew_ms).unwrap_or(i64::MAX));
    match (created, arrived.checked_sub(skew)) {
        (Some(c), Some(earliest)) => c < earliest,
        _ => false,
    }
}

#[cfg(test)]
mod existed_before_tests {
    use super::*;

    fn participant(created: &str) -> ApiResponse {
        ApiResponse {
            status: http::StatusCode::OK,
            content_type: None,
            body: bytes::Bytes::from(format!(r#"{{"date_created":"{created}"}}"#)),
            request_id: None,
            retry_after: None,
        }
    }

    #[test]
    fn a_participant_created_in_the_requests_own_second_is_new_even_without_skew() {
        let at = time::macros::datetime!(2026-01-01 10:00:00.900 UTC);
        assert!(!existed_before(&participant("2026-01-01T10:00:00Z"), at, 0));
        assert!(existed_before(&participant("2026-01-01T09:59:59Z"), at, 0));
        assert!(!existed_before(
            &participant("2026-01-01T09:59:59Z"),
            at,
            2000
        ));
    }
}
