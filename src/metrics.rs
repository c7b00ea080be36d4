//! Prometheus metrics, lock-free on the request path.
//!
//! Every series has a fixed, small label set (route class, method, status
//! class, outcome kind): no SID, identity or path is ever a label, so the
//! series count is bounded whatever the traffic.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `trp_requests_total` | counter | `route`, `method`, `status` (`2xx`...) |
//! | `trp_upstream_latency_seconds` | histogram | time to upstream response headers |
//! | `trp_in_flight_requests` | gauge | |
//! | `trp_request_bytes_total` | counter | body bytes sent upstream |
//! | `trp_response_bytes_total` | counter | body bytes sent to clients |
//! | `trp_upstream_errors_total` | counter | `kind` (`connect`, `timeout`, `other`) |
//! | `trp_repair_intercepted_total` | counter | 20404s on Participant create |
//! | `trp_repair_outcomes_total` | counter | `outcome` |
//! | `trp_repair_step_failures_total` | counter | |
//! | `trp_repair_workflow_seconds` | histogram | |
//! | `trp_repair_pending_journal` | gauge | unfinished journal records |
//! | `trp_repair_fence_waits_total` | counter | writes held back while their identity was under repair |
//! | `trp_journal_write_failures_total` | counter | journal state changes that did not land (the repair went on from memory) |
//! | `trp_shield_retries_total` | counter | `class`: 429s re-sent by the shield |
//! | `trp_shield_budget_exhausted_total` | counter | `class`: 429s passed through because the retry budget was spent |
//! | `trp_shield_queue_full_total` | counter | `class`: requests answered `shield-queue-full` |
//! | `trp_shield_queue_length` | gauge | `class`: requests waiting for a slot of the per-account cap |
//! | `trp_shield_in_flight` | gauge | `class`: slots of the per-account cap held |
//! | `trp_shield_queue_wait_seconds` | histogram | `class`: time spent waiting for a slot |
//! | `trp_shield_account_*` | as above | `account`: only with `metrics.account_labels = true` |
//!
//! `class` is the [`AccountClass`] of the request's credential (`account`,
//! `key`, `unknown`), never a SID. With `metrics.account_labels = true` the
//! shield also keeps per-account series (retries, budget exhausted, queue
//! full, queue length) for the first [`MAX_LABELLED_ACCOUNTS`] accounts it
//! sees; the operator chose to see SIDs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use http::Method;

use crate::vocabulary::Outcome;

/// The coarse class of a request, the `route` label of `trp_requests_total`
/// (never a SID). Routing decides it (`crate::routing::Target::class`); it
/// lives here so that the metrics need nothing from routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    Conversations,
    Api,
    Other,
    Rejected,
}

impl RouteClass {
    pub const ALL: [RouteClass; 4] = [
        RouteClass::Conversations,
        RouteClass::Api,
        RouteClass::Other,
        RouteClass::Rejected,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            RouteClass::Conversations => "conversations",
            RouteClass::Api => "api",
            RouteClass::Other => "other",
            RouteClass::Rejected => "rejected",
        }
    }
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Whose credential a request carried, the `class` label of the shield's
/// metrics (never the SID itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountClass {
    /// An account SID (`AC...`): the Basic user, or named by the path.
    Account,
    /// An API key (`SK...`) whose account the request does not name.
    Key,
    /// No Basic credential.
    Unknown,
}

impl AccountClass {
    pub const ALL: [AccountClass; 3] = [
        AccountClass::Account,
        AccountClass::Key,
        AccountClass::Unknown,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            AccountClass::Account => "account",
            AccountClass::Key => "key",
            AccountClass::Unknown => "unknown",
        }
    }
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Most accounts given series of their own with `metrics.account_labels`;
/// later ones are counted in the `class` series only.
pub const MAX_LABELLED_ACCOUNTS: usize = 1000;

/// The per-account series of the shield (`metrics.account_labels`).
#[derive(Debug, Default, Clone, Copy)]
struct AccountSeries {
    retries: u64,
    budget_exhausted: u64,
    queue_full: u64,
    queue_length: i64,
}

/// One per-account counter of [`AccountSeries`].
#[derive(Debug, Clone, Copy)]
enum AccountEvent {
    Retry,
    BudgetExhausted,
    QueueFull,
    QueueEnter,
    QueueLeave,
}

const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "OTHER",
];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Histogram bucket upper bounds, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
const UPSTREAM_ERRORS: [&str; 3] = ["connect", "timeout", "other"];

fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::PATCH => 3,
        Method::DELETE => 4,
        Method::HEAD => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

/// A fixed-bucket histogram. Each bucket counts only the observations that
/// fall in it (one atomic add per observation, not one per bucket: the
/// latency histograms are updated by every request on every worker, and a
/// shared cache line bounced between cores costs more than the add); the
/// cumulative `le` series Prometheus expects is summed when rendered.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// Sum in microseconds (integer, so it can be atomic).
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
    }

    /// The bucket, sum and count lines of one series; `labels` without
    /// braces, with a trailing comma when not empty.
    fn write_lines(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{b}\"}} {cumulative}");
        }
        // Never below the last bucket, even if an observation landed
        // between the reads.
        let count = self.count.load(Relaxed).max(cumulative);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let bare = labels.trim_end_matches(',');
        if bare.is_empty() {
            let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
        } else {
            let _ = writeln!(
                out,
                "{name}_sum{{{bare}}} {sum}\n{name}_count{{{bare}}} {count}"
            );
        }
    }

    /// The bucket, sum and count lines of one labelled series (`labels`
    /// without braces); the caller writes HELP and TYPE once.
    fn render_series(&self, out: &mut String, name: &str, labels: &str) {
        self.write_lines(out, name, &format!("{labels},"));
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        self.write_lines(out, name, "");
    }
}

/// All metrics of one proxy instance.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: [[[AtomicU64; STATUS_CLASSES.len()]; METHODS.len()]; RouteClass::ALL.len()],
    pub upstream_latency: Histogram,
    in_flight: AtomicI64,
    request_bytes: AtomicU64,
    response_bytes: AtomicU64,
    upstream_errors: [AtomicU64; UPSTREAM_ERRORS.len()],
    repair_intercepted: AtomicU64,
    repair_outcomes: [AtomicU64; Outcome::ALL.len()],
    repair_fence_waits: AtomicU64,
    journal_write_failures: AtomicU64,
    repair_step_failures: AtomicU64,
    pub repair_workflow: Histogram,
    repair_pending: AtomicI64,
    shield_retries: [AtomicU64; AccountClass::ALL.len()],
    shield_budget_exhausted: [AtomicU64; AccountClass::ALL.len()],
    shield_queue_full: [AtomicU64; AccountClass::ALL.len()],
    shield_queue_length: [AtomicI64; AccountClass::ALL.len()],
    shield_in_flight: [AtomicI64; AccountClass::ALL.len()],
    shield_queue_wait: [Histogram; AccountClass::ALL.len()],
    /// Filled only when the shield passes an account (account_labels).
    shield_accounts: Mutex<BTreeMap<String, AccountSeries>>,
}

/// Which kind of upstream failure to count.
#[derive(Debug, Clone, Copy)]
pub enum UpstreamErrorKind {
    Connect,
    Timeout,
    Other,
}

impl Metrics {
    pub fn record_request(&self, class: RouteClass, method: &Method, status: u16) {
        let s = ((status / 100).clamp(1, 5) - 1) as usize;
        self.requests[class.index()][method_index(method)][s].fetch_add(1, Relaxed);
    }
    pub fn in_flight_inc(&self) {
        self.in_flight.fetch_add(1, Relaxed);
    }
    pub fn in_flight_dec(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
    }
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Relaxed)
    }
    pub fn add_request_bytes(&self, n: u64) {
        self.request_bytes.fetch_add(n, Relaxed);
    }
    pub fn add_response_bytes(&self, n: u64) {
        self.response_bytes.fetch_add(n, Relaxed);
    }
    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors[kind as usize].fetch_add(1, Relaxed);
    }
    pub fn repair_intercepted(&self) {
        self.repair_intercepted.fetch_add(1, Relaxed);
    }
    pub fn repair_outcome(&self, outcome: Outcome) {
        self.repair_outcomes[outcome.index()].fetch_add(1, Relaxed);
    }
    pub fn repair_fence_wait(&self) {
        self.repair_fence_waits.fetch_add(1, Relaxed);
    }
    pub fn journal_write_failed(&self) {
        self.journal_write_failures.fetch_add(1, Relaxed);
    }
    pub fn repair_step_failure(&self) {
        self.repair_step_failures.fetch_add(1, Relaxed);
    }
    pub fn set_repair_pending(&self, n: i64) {
        self.repair_pending.store(n, Relaxed);
    }
    /// A 429 re-sent by the shield. `account` is `Some` only with
    /// `metrics.account_labels`.
    pub fn shield_retry(&self, class: AccountClass, account: Option<&str>) {
        self.shield_retries[class.index()].fetch_add(1, Relaxed);
        self.shield_account(account, AccountEvent::Retry);
    }
    pub fn shield_budget_exhausted(&self, class: AccountClass, account: Option<&str>) {
        self.shield_budget_exhausted[class.index()].fetch_add(1, Relaxed);
        self.shield_account(account, AccountEvent::BudgetExhausted);
    }
    pub fn shield_queue_full(&self, class: AccountClass, account: Option<&str>) {
        self.shield_queue_full[class.index()].fetch_add(1, Relaxed);
        self.shield_account(account, AccountEvent::QueueFull);
    }
    /// A request starts waiting for a slot of the per-account cap.
    pub fn shield_queue_enter(&self, class: AccountClass, account: Option<&str>) {
        self.shield_queue_length[class.index()].fetch_add(1, Relaxed);
        self.shield_account(account, AccountEvent::QueueEnter);
    }
    /// A request stops waiting (with a slot or without), after `waited`.
    pub fn shield_queue_leave(&self, class: AccountClass, account: Option<&str>, waited: Duration) {
        self.shield_queue_length[class.index()].fetch_sub(1, Relaxed);
        self.shield_queue_wait[class.index()].observe(waited);
        self.shield_account(account, AccountEvent::QueueLeave);
    }
    /// Slots of the per-account cap taken (`+1`) or given back (`-1`).
    pub fn shield_in_flight_add(&self, class: AccountClass, delta: i64) {
        self.shield_in_flight[class.index()].fetch_add(delta, Relaxed);
    }
    fn shield_account(&self, account: Option<&str>, event: AccountEvent) {
        let Some(account) = account else { return };
        let Ok(mut map) = self.shield_accounts.lock() else {
            return;
        };
        if !map.contains_key(account) && map.len() >= MAX_LABELLED_ACCOUNTS {
            return;
        }
        let s = map.entry(account.to_string()).or_default();
        match event {
            AccountEvent::Retry => s.retries += 1,
            AccountEvent::BudgetExhausted => s.budget_exhausted += 1,
            AccountEvent::QueueFull => s.queue_full += 1,
            AccountEvent::QueueEnter => s.queue_length += 1,
            AccountEvent::QueueLeave => s.queue_length -= 1,
        }
    }

    fn render_shield(&self, out: &mut String) {
        for (name, help, values) in [
            (
                "trp_shield_retries_total",
                "Requests answered 429 re-sent by the shield.",
                &self.shield_retries,
            ),
            (
                "trp_shield_budget_exhausted_total",
                "429s passed through because the shield's retry budget was spent.",
                &self.shield_budget_exhausted,
            ),
            (
                "trp_shield_queue_full_total",
                "Requests answered 429 shield-queue-full by the per-account cap.",
                &self.shield_queue_full,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for c in AccountClass::ALL {
                let _ = writeln!(
                    out,
                    "{name}{{class=\"{}\"}} {}",
                    c.as_str(),
                    values[c.index()].load(Relaxed)
                );
            }
        }
        for (name, help, values) in [
            (
                "trp_shield_queue_length",
                "Requests waiting for a slot of the per-account cap.",
                &self.shield_queue_length,
            ),
            (
                "trp_shield_in_flight",
                "Slots of the per-account cap held.",
                &self.shield_in_flight,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for c in AccountClass::ALL {
                let _ = writeln!(
                    out,
                    "{name}{{class=\"{}\"}} {}",
                    c.as_str(),
                    values[c.index()].load(Relaxed)
                );
            }
        }
        let name = "trp_shield_queue_wait_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time spent waiting for a slot of the per-account cap.\n# TYPE {name} histogram"
        );
        for c in AccountClass::ALL {
            self.shield_queue_wait[c.index()].render_series(
                out,
                name,
                &format!("class=\"{}\"", c.as_str()),
            );
        }
        let Ok(map) = self.shield_accounts.lock() else {
            return;
        };
        if map.is_empty() {
            return;
        }
        type Pick = fn(&AccountSeries) -> i64;
        let series: [(&str, &str, Pick); 4] = [
            ("trp_shield_account_retries_total", "counter", |s| {
                s.retries as i64
            }),
            (
                "trp_shield_account_budget_exhausted_total",
                "counter",
                |s| s.budget_exhausted as i64,
            ),
            ("trp_shield_account_queue_full_total", "counter", |s| {
                s.queue_full as i64
            }),
            ("trp_shield_account_queue_length", "gauge", |s| {
                s.queue_length
            }),
        ];
        for (name, kind, pick) in series {
            let _ = writeln!(
                out,
                "# HELP {name} Per-account shield series (metrics.account_labels).\n# TYPE {name} {kind}"
            );
            for (account, s) in map.iter() {
                let _ = writeln!(out, "{name}{{account=\"{account}\"}} {}", pick(s));
            }
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        out.push_str("# HELP trp_requests_total Requests answered, by route class, method and status class.\n# TYPE trp_requests_total counter\n");
        for class in RouteClass::ALL {
            for (mi, m) in METHODS.iter().enumerate() {
                for (si, s) in STATUS_CLASSES.iter().enumerate() {
                    let v = self.requests[class.index()][mi][si].load(Relaxed);
                    if v > 0 {
                        let _ = writeln!(
                            out,
                            "trp_requests_total{{route=\"{}\",method=\"{m}\",status=\"{s}\"}} {v}",
                            class.as_str()
                        );
                    }
                }
            }
        }
        self.upstream_latency.render(
            &mut out,
            "trp_upstream_latency_seconds",
            "Time from sending a request upstream to its response headers.",
        );
        let _ = writeln!(
            out,
            "# HELP trp_in_flight_requests Requests being served.\n# TYPE trp_in_flight_requests gauge\ntrp_in_flight_requests {}",
            self.in_flight()
        );
        let _ = writeln!(
            out,
            "# HELP trp_request_bytes_total Request body bytes sent upstream.\n# TYPE trp_request_bytes_total counter\ntrp_request_bytes_total {}",
            self.request_bytes.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP trp_response_bytes_total Response body bytes sent to clients.\n# TYPE trp_response_bytes_total counter\ntrp_response_bytes_total {}",
            self.response_bytes.load(Relaxed)
        );
        out.push_str("# HELP trp_upstream_errors_total Upstream failures answered with 502/504.\n# TYPE trp_upstream_errors_total counter\n");
        for (i, k) in UPSTREAM_ERRORS.iter().enumerate() {
            let _ = writeln!(
                out,
                "trp_upstream_errors_total{{kind=\"{k}\"}} {}",
                self.upstream_errors[i].load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP trp_repair_intercepted_total 404/20404 answers to Participant create intercepted.\n# TYPE trp_repair_intercepted_total counter\ntrp_repair_intercepted_total {}",
            self.repair_intercepted.load(Relaxed)
        );
        out.push_str("# HELP trp_repair_outcomes_total Outcomes of intercepted creates.\n# TYPE trp_repair_outcomes_total counter\n");
        for o in Outcome::ALL {
            let _ = writeln!(
                out,
                "trp_repair_outcomes_total{{outcome=\"{o}\"}} {}",
                self.repair_outcomes[o.index()].load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP trp_repair_step_failures_total Workflow steps that failed after retries.\n# TYPE trp_repair_step_failures_total counter\ntrp_repair_step_failures_total {}",
            self.repair_step_failures.load(Relaxed)
        );
        self.repair_workflow.render(
            &mut out,
            "trp_repair_workflow_seconds",
            "Duration of the check-and-repair workflow.",
        );
        let _ = writeln!(
            out,
            "# HELP trp_repair_pending_journal Unfinished repair journal records.\n# TYPE trp_repair_pending_journal gauge\ntrp_repair_pending_journal {}",
            self.repair_pending.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP trp_repair_fence_waits_total Participant/User writes held back while their identity was under repair.\n# TYPE trp_repair_fence_waits_total counter\ntrp_repair_fence_waits_total {}",
            self.repair_fence_waits.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP trp_journal_write_failures_total Journal state changes that did not land; the repair went on from memory.\n# TYPE trp_journal_write_failures_total counter\ntrp_journal_write_failures_total {}",
            self.journal_write_failures.load(Relaxed)
        );
        self.render_shield(&mut out);
        out
    }
}

/// Counts a request in `trp_in_flight_requests` until dropped (when its
/// response body ends or is dropped).
pub struct InFlightGuard(std::sync::Arc<Metrics>);

impl InFlightGuard {
    pub fn new(m: &std::sync::Arc<Metrics>) -> Self {
        m.in_flight_inc();
        InFlightGuard(m.clone())
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight_dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_render_cumulative() {
        let h = Histogram::default();
        for ms in [0.5, 3.0, 3.0, 20_000.0] {
            h.observe(Duration::from_secs_f64(ms / 1000.0));
        }
        let mut out = String::new();
        h.render(&mut out, "t", "help");
        for line in [
            "t_bucket{le=\"0.001\"} 1",
            "t_bucket{le=\"0.0025\"} 1",
            "t_bucket{le=\"0.005\"} 3",
            "t_bucket{le=\"10\"} 3",
            "t_bucket{le=\"+Inf\"} 4",
            "t_count 4",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing in\n{out}");
        }
        let mut out = String::new();
        h.render_series(&mut out, "t", "class=\"x\"");
        assert!(
            out.contains("t_bucket{class=\"x\",le=\"0.005\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("t_count{class=\"x\"} 4\n"), "{out}");
        assert!(out.contains("t_sum{class=\"x\"} 20.0065\n"), "{out}");
    }
}
