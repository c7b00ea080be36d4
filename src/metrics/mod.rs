//! Prometheus metrics, on the `prometheus-client` crate: every family is a
//! field of [`Metrics`], registered once in its one [`Registry`], and
//! `/metrics` is that registry encoded in the Prometheus text format
//! (0.0.4) by [`Metrics::render`].
//!
//! Every series has a small, bounded label set (route class, method,
//! status code or class, outcome, step, listener): no SID, identity or
//! path is ever a label (except the shield's `account`, only with
//! `metrics.account_labels`), so the series count is bounded whatever the
//! traffic. Labels are enums and integers ([`labels`]): once a series
//! exists, counting in it allocates nothing. The series every request
//! touches (the request counter for the common codes, the duration and
//! upstream latency histograms) are kept in slots after their first use
//! (`histogram::Cached`), so a request takes no lock and hashes nothing;
//! other series are a read-locked lookup in their family.
//!
//! | metric | type | labels / meaning |
//! |---|---|---|
//! | `trp_requests_total` | counter | `route`, `method`, `code` (the exact status code answered) |
//! | `trp_request_duration_seconds` | histogram | `route`, `method`, `status` (`2xx`...): from the request's arrival to the end of its answer's body |
//! | `trp_upstream_latency_seconds` | histogram | `route`: time from sending a request upstream to its response headers |
//! | `trp_in_flight_requests` | gauge | requests being served |
//! | `trp_request_bytes_total` | counter | body bytes sent upstream |
//! | `trp_response_bytes_total` | counter | body bytes sent to clients |
//! | `trp_upstream_errors_total` | counter | `kind` (`connect`, `timeout`, `other`) |
//! | `trp_open_connections` | gauge | `listener` (`proxy`, `admin`): client connections open |
//! | `trp_parked_connections` | gauge | `listener`: idle HTTP/1 connections parked (their hyper state dropped) |
//! | `trp_repair_intercepted_total` | counter | 20404s on Participant create |
//! | `trp_repair_outcomes_total` | counter | `outcome` |
//! | `trp_repair_step_failures_total` | counter | `step` (`fetch-participant`, `fetch-conversation`, ...): the workflow's checks that failed it (after their retries, or with a body that is not the resource) |
//! | `trp_repair_workflow_seconds` | histogram | duration of the check-and-repair workflow |
//! | `trp_repair_pending_journal` | gauge | unfinished journal records |
//! | `trp_repair_fence_waits_total` | counter | writes held back while their identity was under repair |
//! | `trp_journal_write_failures_total` | counter | journal state changes that did not land (the repair went on from memory) |
//! | `trp_store_ready` | gauge | the journal accepted a write when `/metrics` was served |
//! | `trp_ready` | gauge | `/readyz` would answer ready |
//! | `trp_shield_retries_total` | counter | `class`: 429s re-sent by the shield |
//! | `trp_shield_budget_exhausted_total` | counter | `class`: 429s passed through because the retry budget was spent |
//! | `trp_shield_queue_full_total` | counter | `class`: requests answered `shield-queue-full` |
//! | `trp_shield_queue_length` | gauge | `class`: requests waiting for a slot of the per-account cap |
//! | `trp_shield_in_flight` | gauge | `class`: slots of the per-account cap held |
//! | `trp_shield_queue_wait_seconds` | histogram | `class`: time spent waiting for a slot |
//! | `trp_shield_account_*` | as above | `account`: only with `metrics.account_labels = true` |
//! | `trp_otlp_spans_dropped_total` | counter | trace spans dropped by the OTLP exporter (queue full, export failed) |
//! | `trp_rehearsals_total` | counter | `result` (`would_complete`, `would_fail`, `skipped`): check-only faults' rehearsals (the "Ready for repair mode?" panel's figures, since start) |
//! | `trp_config_reloads_total` | counter | `result` (`applied`, `invalid`): configuration reloads |
//! | `trp_build_info` | gauge (1) | `version`, `commit` |
//! | `process_*` | | resident memory, CPU seconds, open and max fds, start time, threads ([`process`]; Linux) |
//!
//! `class` is the [`AccountClass`] of the request's credential (`account`,
//! `key`, `unknown`), never a SID. The latency histograms share
//! [`LATENCY_BUCKETS`] (5 ms to 120 s: past the workflow deadline and the
//! response header timeout).

mod accounts;
mod histogram;
pub mod labels;
pub mod process;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::vocabulary::{Outcome, StepKind};
pub use accounts::MAX_LABELLED_ACCOUNTS;
use accounts::{AccountEvent, AccountSeries};
use histogram::Cached;
pub use histogram::{LATENCY_BUCKETS, Seconds};
pub use labels::{AccountClass, Listener, RehearsalResult, RouteClass, UpstreamErrorKind};
use labels::{
    AnswerLabels, BuildLabels, ClassLabels, KindLabels, ListenerLabels, MethodLabel, OutcomeLabels,
    RequestLabels, RouteLabels, StatusClass, StepLabels,
};

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The commit the binary was built from (`build.rs`), `unknown` when the
/// build knew none (outside a git checkout, or without `build.rs`, as in
/// the container image's build).
pub const BUILD_COMMIT: &str = match option_env!("TWILIO_REPAIR_PROXY_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// Slots of the duration histograms: route class × method × status class.
const ANSWER_SLOTS: usize = 4 * 8 * 5;

fn answer_slot(l: &AnswerLabels) -> Option<usize> {
    Some((l.route.index() * 8 + l.method.index()) * 5 + l.status.index())
}

/// The status codes the request counter keeps in slots (the codes Twilio
/// and the proxy answer most); any other code is looked up.
const COMMON_CODES: [u16; 16] = [
    200, 201, 204, 400, 401, 403, 404, 405, 408, 409, 429, 500, 501, 502, 503, 504,
];

/// Slots of the request counter: route class × method × common code.
const REQUEST_SLOTS: usize = 4 * 8 * COMMON_CODES.len();

fn request_slot(l: &RequestLabels) -> Option<usize> {
    let code = COMMON_CODES.iter().position(|c| *c == l.code)?;
    Some((l.route.index() * 8 + l.method.index()) * COMMON_CODES.len() + code)
}

/// All metrics of one proxy instance, and the registry that exports them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Cached<RequestLabels, Counter, REQUEST_SLOTS>,
    request_duration: Cached<AnswerLabels, Seconds, ANSWER_SLOTS>,
    upstream_latency: Cached<RouteLabels, Seconds, 4>,
    in_flight: Gauge,
    request_bytes: Counter,
    response_bytes: Counter,
    upstream_errors: Family<KindLabels, Counter>,
    open_connections: Family<ListenerLabels, Gauge>,
    parked_connections: Family<ListenerLabels, Gauge>,
    repair_intercepted: Counter,
    repair_outcomes: Family<OutcomeLabels, Counter>,
    repair_fence_waits: Counter,
    journal_write_failures: Counter,
    repair_step_failures: Family<StepLabels, Counter>,
    pub repair_workflow: Seconds,
    repair_pending: Gauge,
    store_ready: Gauge,
    ready: Gauge,
    shield_retries: Family<ClassLabels, Counter>,
    shield_budget_exhausted: Family<ClassLabels, Counter>,
    shield_queue_full: Family<ClassLabels, Counter>,
    shield_queue_length: Family<ClassLabels, Gauge>,
    shield_in_flight: Family<ClassLabels, Gauge>,
    shield_queue_wait: Family<ClassLabels, Seconds>,
    shield_accounts: AccountSeries,
    otlp_spans_dropped: Counter,
    config_reloads: Family<labels::ReloadLabels, Counter>,
    rehearsals: Family<labels::RehearsalLabels, Counter>,
    /// What [`Metrics::sync_outside`] last saw: OTLP drops, reloads
    /// applied, reloads refused.
    synced: [std::sync::atomic::AtomicU64; 3],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every family, registered; the series of fixed label values
    /// (outcomes, steps, upstream error kinds, shield classes, listeners)
    /// start at zero, so that a rate over them exists before the first
    /// event.
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::default(),
            requests: Cached::default(),
            request_duration: Cached::default(),
            upstream_latency: Cached::default(),
            in_flight: Gauge::default(),
            request_bytes: Counter::default(),
            response_bytes: Counter::default(),
            upstream_errors: Family::default(),
            open_connections: Family::default(),
            parked_connections: Family::default(),
            repair_intercepted: Counter::default(),
            repair_outcomes: Family::default(),
            repair_fence_waits: Counter::default(),
            journal_write_failures: Counter::default(),
            repair_step_failures: Family::default(),
            repair_workflow: Seconds::default(),
            repair_pending: Gauge::default(),
            store_ready: Gauge::default(),
            ready: Gauge::default(),
            shield_retries: Family::default(),
            shield_budget_exhausted: Family::default(),
            shield_queue_full: Family::default(),
            shield_queue_length: Family::default(),
            shield_in_flight: Family::default(),
            shield_queue_wait: Family::default(),
            shield_accounts: AccountSeries::default(),
            otlp_spans_dropped: Counter::default(),
            config_reloads: Family::default(),
            rehearsals: Family::default(),
            synced: Default::default(),
        };
        // Series looked up once to exist (the guard is dropped at once).
        for kind in UpstreamErrorKind::ALL {
            drop(m.upstream_errors.get_or_create(&KindLabels { kind }));
        }
        for result in RehearsalResult::ALL {
            drop(
                m.rehearsals
                    .get_or_create(&labels::RehearsalLabels { result }),
            );
        }
        for listener in Listener::ALL {
            let l = ListenerLabels { listener };
            drop(m.open_connections.get_or_create(&l));
            drop(m.parked_connections.get_or_create(&l));
        }
        for outcome in Outcome::ALL {
            drop(m.repair_outcomes.get_or_create(&OutcomeLabels { outcome }));
        }
        for step in StepKind::ALL {
            drop(m.repair_step_failures.get_or_create(&StepLabels { step }));
        }
        for class in AccountClass::ALL {
            let c = ClassLabels { class };
            drop(m.shield_retries.get_or_create(&c));
            drop(m.shield_budget_exhausted.get_or_create(&c));
            drop(m.shield_queue_full.get_or_create(&c));
            drop(m.shield_queue_length.get_or_create(&c));
            drop(m.shield_in_flight.get_or_create(&c));
            drop(m.shield_queue_wait.get_or_create(&c));
        }
        m.register()
    }

    fn register(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register(
            "trp_requests",
            "Requests answered, by route class, method and status code",
            self.requests.family().clone(),
        );
        r.register(
            "trp_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by route class, method and status class",
            self.request_duration.family().clone(),
        );
        r.register(
            "trp_upstream_latency_seconds",
            "Time from sending a request upstream to its response headers, by route class",
            self.upstream_latency.family().clone(),
        );
        r.register(
            "trp_in_flight_requests",
            "Requests being served",
            self.in_flight.clone(),
        );
        r.register(
            "trp_request_bytes",
            "Request body bytes sent upstream",
            self.request_bytes.clone(),
        );
        r.register(
            "trp_response_bytes",
            "Response body bytes sent to clients",
            self.response_bytes.clone(),
        );
        r.register(
            "trp_upstream_errors",
            "Upstream failures answered with 502/504",
            self.upstream_errors.clone(),
        );
        r.register(
            "trp_open_connections",
            "Client connections open, by listener",
            self.open_connections.clone(),
        );
        r.register(
            "trp_parked_connections",
            "Idle HTTP/1 client connections parked (hyper state dropped), by listener",
            self.parked_connections.clone(),
        );
        r.register(
            "trp_repair_intercepted",
            "404/20404 answers to Participant create intercepted",
            self.repair_intercepted.clone(),
        );
        r.register(
            "trp_repair_outcomes",
            "Outcomes of intercepted creates",
            self.repair_outcomes.clone(),
        );
        r.register(
            "trp_repair_step_failures",
            "Workflow checks that failed the repair (after their retries, or answering something else than the resource), by step",
            self.repair_step_failures.clone(),
        );
        r.register(
            "trp_repair_workflow_seconds",
            "Duration of the check-and-repair workflow",
            self.repair_workflow.clone(),
        );
        r.register(
            "trp_repair_pending_journal",
            "Unfinished repair journal records",
            self.repair_pending.clone(),
        );
        r.register(
            "trp_repair_fence_waits",
            "Participant/User writes held back while their identity was under repair",
            self.repair_fence_waits.clone(),
        );
        r.register(
            "trp_journal_write_failures",
            "Journal state changes that did not land; the repair went on from memory",
            self.journal_write_failures.clone(),
        );
        r.register(
            "trp_store_ready",
            "Whether the journal accepted a write when this scrape was served",
            self.store_ready.clone(),
        );
        r.register(
            "trp_ready",
            "Whether /readyz answers ready (listening, not draining, journal writable)",
            self.ready.clone(),
        );
        r.register(
            "trp_shield_retries",
            "Requests answered 429 re-sent by the shield",
            self.shield_retries.clone(),
        );
        r.register(
            "trp_shield_budget_exhausted",
            "429s passed through because the shield's retry budget was spent",
            self.shield_budget_exhausted.clone(),
        );
        r.register(
            "trp_shield_queue_full",
            "Requests answered 429 shield-queue-full by the per-account cap",
            self.shield_queue_full.clone(),
        );
        r.register(
            "trp_shield_queue_length",
            "Requests waiting for a slot of the per-account cap",
            self.shield_queue_length.clone(),
        );
        r.register(
            "trp_shield_in_flight",
            "Slots of the per-account cap held",
            self.shield_in_flight.clone(),
        );
        r.register(
            "trp_shield_queue_wait_seconds",
            "Time spent waiting for a slot of the per-account cap",
            self.shield_queue_wait.clone(),
        );
        self.shield_accounts.register(r);
        r.register(
            "trp_otlp_spans_dropped",
            "Trace spans the OTLP exporter dropped (queue full or export failed)",
            self.otlp_spans_dropped.clone(),
        );
        r.register(
            "trp_config_reloads",
            "Configuration reloads (SIGHUP or a changed --config file), by result",
            self.config_reloads.clone(),
        );
        r.register(
            "trp_rehearsals",
            "Check-only faults' rehearsals: plans that would complete, would fail, or were skipped (repair.rehearsal_max_in_flight)",
            self.rehearsals.clone(),
        );
        r.register(
            "trp_build",
            "The proxy's version and the commit it was built from",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                commit: BUILD_COMMIT,
            }),
        );
        r.register_collector(Box::new(process::ProcessCollector));
        self
    }

    /// The Prometheus text exposition (format 0.0.4, [`CONTENT_TYPE`]).
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// Count an answer in `trp_requests_total`.
    pub fn record_request(&self, route: RouteClass, method: &Method, status: u16) {
        let labels = RequestLabels {
            route,
            method: MethodLabel::of(method),
            code: status,
        };
        self.requests.with(request_slot(&labels), &labels, |c| {
            c.inc();
        });
    }

    /// Count an answer and observe its duration (an answer complete when
    /// it is made: a proxy error).
    pub fn record_answer(&self, route: RouteClass, method: &Method, status: u16, took: Duration) {
        self.record_request(route, method, status);
        self.observe_duration(&answer_labels(route, method, status), took);
    }

    fn observe_duration(&self, labels: &AnswerLabels, took: Duration) {
        (self.request_duration).with(answer_slot(labels), labels, |h| h.observe(took));
    }

    /// Time to an upstream's response headers, by route class.
    pub fn upstream_latency(&self, route: RouteClass, took: Duration) {
        let labels = RouteLabels { route };
        (self.upstream_latency).with(Some(route.index()), &labels, |h| h.observe(took));
    }
    pub fn in_flight(&self) -> i64 {
        self.in_flight.get()
    }
    pub fn add_request_bytes(&self, n: u64) {
        self.request_bytes.inc_by(n);
    }
    pub fn add_response_bytes(&self, n: u64) {
        self.response_bytes.inc_by(n);
    }
    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors
            .get_or_create(&KindLabels { kind })
            .inc();
    }
    pub fn repair_intercepted(&self) {
        self.repair_intercepted.inc();
    }
    pub fn repair_outcome(&self, outcome: Outcome) {
        self.repair_outcomes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }
    /// One check-only fault's rehearsal ended (or was skipped).
    pub fn rehearsal(&self, result: labels::RehearsalResult) {
        self.rehearsals
            .get_or_create(&labels::RehearsalLabels { result })
            .inc();
    }
    pub fn repair_fence_wait(&self) {
        self.repair_fence_waits.inc();
    }
    pub fn journal_write_failed(&self) {
        self.journal_write_failures.inc();
    }
    /// A workflow step that failed after its retries.
    pub fn repair_step_failure(&self, step: StepKind) {
        self.repair_step_failures
            .get_or_create(&StepLabels { step })
            .inc();
    }
    pub fn set_repair_pending(&self, n: i64) {
        self.repair_pending.set(n);
    }
    /// What the admin plane found when serving `/metrics`: whether the
    /// journal accepted a write, and whether `/readyz` would answer ready.
    pub fn set_readiness(&self, store_ready: bool, ready: bool) {
        self.store_ready.set(i64::from(store_ready));
        self.ready.set(i64::from(ready));
    }
    /// Bring in the counts kept outside the registry (the OTLP exporter's
    /// drops, the configuration reloads: both counted before any
    /// `Metrics` exists), as the increase since the last call.
    pub fn sync_outside(&self, otlp_dropped: u64, reloads_applied: u64, reloads_invalid: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let delta = |i: usize, now: u64| now.saturating_sub(self.synced[i].swap(now, Relaxed));
        self.otlp_spans_dropped.inc_by(delta(0, otlp_dropped));
        for (i, result, now) in [
            (1, "applied", reloads_applied),
            (2, "invalid", reloads_invalid),
        ] {
            let d = delta(i, now);
            let series = self
                .config_reloads
                .get_or_create(&labels::ReloadLabels { result });
            series.inc_by(d);
        }
    }

    /// Spans the OTLP exporter dropped (`trp_otlp_spans_dropped_total`).
    pub fn otlp_spans_dropped(&self, n: u64) {
        self.otlp_spans_dropped.inc_by(n);
    }
    /// The connection gauges of one listener, for `crate::server`.
    pub fn connections(&self, listener: Listener) -> ConnectionGauges {
        let l = ListenerLabels { listener };
        ConnectionGauges {
            open: self.open_connections.get_or_create_owned(&l),
            parked: self.parked_connections.get_or_create_owned(&l),
        }
    }
    /// A 429 re-sent by the shield. `account` is `Some` only with
    /// `metrics.account_labels`.
    pub fn shield_retry(&self, class: AccountClass, account: Option<&str>) {
        self.shield_retries
            .get_or_create(&ClassLabels { class })
            .inc();
        self.shield_account(account, AccountEvent::Retry);
    }
    pub fn shield_budget_exhausted(&self, class: AccountClass, account: Option<&str>) {
        self.shield_budget_exhausted
            .get_or_create(&ClassLabels { class })
            .inc();
        self.shield_account(account, AccountEvent::BudgetExhausted);
    }
    pub fn shield_queue_full(&self, class: AccountClass, account: Option<&str>) {
        self.shield_queue_full
            .get_or_create(&ClassLabels { class })
            .inc();
        self.shield_account(account, AccountEvent::QueueFull);
    }
    /// A request starts waiting for a slot of the per-account cap.
    pub fn shield_queue_enter(&self, class: AccountClass, account: Option<&str>) {
        self.shield_queue_length
            .get_or_create(&ClassLabels { class })
            .inc();
        self.shield_account(account, AccountEvent::QueueEnter);
    }
    /// A request stops waiting (with a slot or without), after `waited`.
    pub fn shield_queue_leave(&self, class: AccountClass, account: Option<&str>, waited: Duration) {
        let c = ClassLabels { class };
        self.shield_queue_length.get_or_create(&c).dec();
        self.shield_queue_wait.get_or_create(&c).observe(waited);
        self.shield_account(account, AccountEvent::QueueLeave);
    }
    /// Slots of the per-account cap taken (`+1`) or given back (`-1`).
    pub fn shield_in_flight_add(&self, class: AccountClass, delta: i64) {
        self.shield_in_flight
            .get_or_create(&ClassLabels { class })
            .inc_by(delta);
    }
    fn shield_account(&self, account: Option<&str>, event: AccountEvent) {
        if let Some(account) = account {
            self.shield_accounts.record(account, event);
        }
    }
}

fn answer_labels(route: RouteClass, method: &Method, status: u16) -> AnswerLabels {
    AnswerLabels {
        route,
        method: MethodLabel::of(method),
        status: StatusClass::of(status),
    }
}

/// Counts a request in `trp_in_flight_requests` until dropped (when its
/// response body ends or is dropped); once [`InFlightGuard::answered`],
/// its duration is observed in `trp_request_duration_seconds` then too.
pub struct InFlightGuard {
    metrics: Arc<Metrics>,
    started: Instant,
    answer: Option<AnswerLabels>,
}

impl InFlightGuard {
    /// A request that arrived at `started`.
    pub fn new(m: &Arc<Metrics>, started: Instant) -> Self {
        m.in_flight.inc();
        InFlightGuard {
            metrics: m.clone(),
            started,
            answer: None,
        }
    }

    /// The request is answered `status`: counted in `trp_requests_total`
    /// now, timed when the guard drops.
    pub fn answered(&mut self, route: RouteClass, method: &Method, status: u16) {
        self.metrics.record_request(route, method, status);
        self.answer = Some(answer_labels(route, method, status));
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
        if let Some(labels) = &self.answer {
            self.metrics
                .observe_duration(labels, self.started.elapsed());
        }
    }
}

/// The connection gauges of one listener (`trp_open_connections`,
/// `trp_parked_connections`). The default is a pair of gauges no registry
/// exports.
#[derive(Debug, Clone, Default)]
pub struct ConnectionGauges {
    open: Gauge,
    parked: Gauge,
}

impl ConnectionGauges {
    /// Count a connection as open until the guard drops.
    pub fn open(&self) -> GaugeGuard {
        GaugeGuard::new(&self.open)
    }
    /// Count a connection as parked until the guard drops.
    pub fn parked(&self) -> GaugeGuard {
        GaugeGuard::new(&self.parked)
    }
}

/// Adds one to a gauge while it lives.
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    fn new(g: &Gauge) -> GaugeGuard {
        g.inc();
        GaugeGuard(g.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests;
