//! The latency histogram of every `*_seconds` series: fixed buckets
//! ([`LATENCY_BUCKETS`]), one relaxed atomic add per bucket observed and one
//! for the sum, no lock (the crate's own `Histogram` takes a mutex per
//! observation, and every request observes two). Encoded by the crate's
//! encoder, as any of its metrics; the cumulative `le` series are summed
//! when scraped.
//!
//! [`Cached`] keeps the series of a family with a small, fixed label
//! space (or its common part) in slots, so that counting in one needs no
//! lookup (no lock, no hash) once it exists.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Bucket upper bounds of every latency histogram, in seconds: from 5 ms
/// (a call to Twilio takes longer) past the workflow deadline (30 s) and
/// the response header timeout (60 s).
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Buckets with the `+Inf` one.
const SLOTS: usize = LATENCY_BUCKETS.len() + 1;

#[derive(Debug, Default)]
struct Inner {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; SLOTS],
    /// Sum in microseconds (an integer, so that it can be atomic).
    sum_micros: AtomicU64,
}

/// A latency histogram with [`LATENCY_BUCKETS`], observed as a
/// [`Duration`]. Clones share their counts.
#[derive(Debug, Clone, Default)]
pub struct Seconds(Arc<Inner>);

impl Seconds {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        if let Some(b) = self.0.buckets.get(i) {
            b.fetch_add(1, Relaxed);
        }
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.0.sum_micros.fetch_add(micros, Relaxed);
    }
}

impl TypedMetric for Seconds {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Seconds {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets = [(f64::INFINITY, 0u64); SLOTS];
        let mut count = 0u64;
        for (i, slot) in buckets.iter_mut().enumerate() {
            let n = self.0.buckets[i].load(Relaxed);
            count += n;
            *slot = (LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY), n);
        }
        let sum = self.0.sum_micros.load(Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A family whose label sets map to `N` slots (or to none: a rare label
/// set): each slot is filled from the family the first time its series is
/// used (so a series is exported only once used), and read without a lock
/// after. A label set without a slot is looked up in the family.
#[derive(Debug)]
pub struct Cached<S, M, const N: usize> {
    family: Family<S, M>,
    slots: [OnceLock<M>; N],
}

impl<S, M, const N: usize> Default for Cached<S, M, N>
where
    S: Clone + std::hash::Hash + Eq,
    M: Default,
{
    fn default() -> Self {
        Cached {
            family: Family::default(),
            slots: std::array::from_fn(|_| OnceLock::new()),
        }
    }
}

impl<S, M, const N: usize> Cached<S, M, N>
where
    S: Clone + std::hash::Hash + Eq,
    M: Default + Clone,
{
    /// The family, to register.
    pub fn family(&self) -> &Family<S, M> {
        &self.family
    }

    /// Run `f` on the series of `labels`, whose slot is `slot`.
    pub fn with(&self, slot: Option<usize>, labels: &S, f: impl FnOnce(&M)) {
        match slot.and_then(|i| self.slots.get(i)) {
            Some(s) => f(s.get_or_init(|| self.family.get_or_create_owned(labels))),
            None => f(&self.family.get_or_create(labels)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    fn text(r: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, r).unwrap();
        out
    }

    #[test]
    fn buckets_are_cumulative_when_encoded() {
        let h = Seconds::default();
        for ms in [0.5, 3.0, 7.0, 200_000.0] {
            h.observe(Duration::from_secs_f64(ms / 1000.0));
        }
        let mut r = Registry::default();
        r.register("t_seconds", "t", h.clone());
        let t = text(&r);
        for line in [
            r#"t_seconds_bucket{le="0.005"} 2"#,
            r#"t_seconds_bucket{le="0.01"} 3"#,
            r#"t_seconds_bucket{le="120"} 3"#,
            r#"t_seconds_bucket{le="+Inf"} 4"#,
            "t_seconds_sum 200.0105",
            "t_seconds_count 4",
        ] {
            assert!(t.lines().any(|l| l == line), "{line} missing in\n{t}");
        }
        assert_eq!(t.matches("le=\"+Inf\"").count(), 1, "{t}");
    }

    #[derive(Debug, Clone, PartialEq, Eq, Hash, prometheus_client::encoding::EncodeLabelSet)]
    struct L {
        n: u8,
    }

    #[test]
    fn a_cached_series_is_the_family_series_and_appears_once_used() {
        let c: Cached<L, Seconds, 2> = Cached::default();
        let mut r = Registry::default();
        r.register("c_seconds", "c", c.family().clone());
        assert!(!text(&r).contains("c_seconds_count"), "{}", text(&r));
        let ms = Duration::from_millis(1);
        c.with(Some(0), &L { n: 0 }, |h| h.observe(ms));
        c.with(Some(0), &L { n: 0 }, |h| h.observe(ms));
        // Without a slot, or out of the slots: through the family.
        c.with(Some(7), &L { n: 7 }, |h| h.observe(ms));
        c.with(None, &L { n: 7 }, |h| h.observe(ms));
        let t = text(&r);
        assert!(t.contains("c_seconds_count{n=\"0\"} 2\n"), "{t}");
        assert!(t.contains("c_seconds_count{n=\"7\"} 2\n"), "{t}");
        assert!(!t.contains("n=\"1\""), "{t}");
    }
}
