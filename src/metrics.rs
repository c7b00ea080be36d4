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

use std::fmt::Write as _;
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

/// A fixed-bucket histogram.
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
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                self.buckets[i].load(Relaxed)
            );
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
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
