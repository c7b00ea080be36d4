//! Tracing: W3C trace context in and out, and OpenTelemetry spans exported
//! over OTLP/HTTP, off unless asked.
//!
//! # Configured the standard way
//!
//! Export is on when `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (a collector's OTLP/HTTP
//! endpoint, e.g. `http://otel-collector:4318`). The OpenTelemetry SDK then
//! reads the rest itself: `OTEL_EXPORTER_OTLP_HEADERS` (and `_TRACES_`
//! forms), `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_SERVICE_NAME` and
//! `OTEL_RESOURCE_ATTRIBUTES` (the service is `twilio-repair-proxy` unless
//! named), `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (default
//! `parentbased_always_on`), `OTEL_BSP_SCHEDULE_DELAY`,
//! `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`,
//! `OTEL_BSP_EXPORT_TIMEOUT`.
//!
//! # What is a span
//!
//! With export on, every request on the proxy listener is a server span
//! (`crate::proxy`), a child of the caller's `traceparent` when it sent
//! one; a repair is a span below it (`crate::repair`), and each of the
//! repair's calls to Twilio a client span named after its step
//! (`fetch-user`, `delete-user`, ...; `crate::repair::step`), whose context
//! the call carries as `traceparent` ([`inject`]). With export off, no span
//! is made on the request path ([`enabled`] is one relaxed load), so the
//! pass-through costs what it did.
//!
//! # An export failure never affects traffic
//!
//! Spans go through the SDK's batch processor (its own thread, a bounded
//! queue) behind `Counted`, which drops a span itself rather than let the
//! queue overflow, and counts every span dropped or lost in a failed export
//! in `trp_otlp_spans_dropped_total`.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use http::HeaderMap;
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, SdkTracerProvider, Span, SpanData, SpanExporter, SpanProcessor,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The service name when `OTEL_SERVICE_NAME` names none.
pub const SERVICE_NAME: &str = "twilio-repair-proxy";

/// The batch processor's queue bound when `OTEL_BSP_MAX_QUEUE_SIZE` sets
/// none (the SDK's default).
const DEFAULT_MAX_QUEUE: u64 = 2048;

static ENABLED: AtomicBool = AtomicBool::new(false);
static DROPPED: OnceLock<Arc<AtomicU64>> = OnceLock::new();

/// Whether spans are made and exported (OTLP configured).
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Relaxed)
}

/// Spans dropped so far (the queue was full, or their export failed).
pub fn spans_dropped() -> u64 {
    DROPPED.get().map_or(0, |d| d.load(Relaxed))
}

/// Why export could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up OTLP export: {0}")]
pub struct TraceInitError(String);

/// Whether the environment asks for export.
pub fn requested(env: impl Fn(&str) -> Option<String>) -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|k| env(k).is_some_and(|v| !v.trim().is_empty()))
}

/// The provider behind the exported spans; dropping it (at exit) flushes
/// what is queued, within the SDK's export timeout.
pub struct TraceGuard(SdkTracerProvider);

impl Drop for TraceGuard {
    fn drop(&mut self) {
        let _ = self.0.shutdown_with_timeout(Duration::from_secs(5));
    }
}

/// The `tracing` layer that turns spans into OpenTelemetry spans.
pub type OtelLayer<S> =
    tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>;

/// Set up export when the environment asks for it: returns the
/// `tracing` layer to install and the guard to keep until exit.
pub fn init<S>() -> Result<Option<(OtelLayer<S>, TraceGuard)>, TraceInitError>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    // The propagator is W3C trace context whether or not spans are
    // exported: `inject` then continues the caller's trace as it is.
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    if !requested(|k| std::env::var(k).ok()) {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| TraceInitError(e.to_string()))?;
    let dropped = DROPPED.get_or_init(Default::default).clone();
    let max_queue = std::env::var("OTEL_BSP_MAX_QUEUE_SIZE")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_MAX_QUEUE);
    let pending = Arc::new(AtomicU64::new(0));
    let batch = BatchSpanProcessor::builder(Exporting {
        inner: exporter,
        pending: pending.clone(),
        dropped: dropped.clone(),
    })
    .build();
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(SERVICE_NAME);
    }
    let provider = SdkTracerProvider::builder()
        .with_span_processor(Counted {
            inner: batch,
            pending,
            dropped,
            max_queue,
        })
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer(SERVICE_NAME);
    ENABLED.store(true, Relaxed);
    Ok(Some((
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_error_records_to_exceptions(false),
        TraceGuard(provider),
    )))
}

/// The caller's trace context from a request's `traceparent`/`tracestate`
/// (an empty context when it sent none or an invalid one).
pub fn extract(headers: &HeaderMap) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

/// Make `span` a child of the caller's trace (when it sent one).
pub fn set_parent(span: &tracing::Span, headers: &HeaderMap) {
    if headers.contains_key("traceparent") {
        let _ = span.set_parent(extract(headers));
    }
}

/// Write the current span's context (`traceparent`, `tracestate`) into an
/// outgoing call's headers, replacing what was there (a replayed create's
/// own). Nothing is written without a valid current context.
pub fn inject(headers: &mut HeaderMap) {
    if !enabled() {
        return;
    }
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return;
    }
    headers.remove("traceparent");
    headers.remove("tracestate");
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut HeaderInjector(headers))
    });
}

/// The trace id of `span` (32 hex digits), when it belongs to a trace.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// The trace id a request names in its `traceparent` (export off: the
/// caller's trace, for the access line), when valid.
pub fn caller_trace_id(headers: &HeaderMap) -> Option<String> {
    if !headers.contains_key("traceparent") {
        return None;
    }
    let cx = extract(headers);
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The batch processor, kept from overflowing: a span that would not fit
/// in its queue (`pending` spans handed to it and not yet to the exporter)
/// is dropped here and counted, and so is every span of a failed export.
#[derive(Debug)]
struct Counted {
    inner: BatchSpanProcessor,
    pending: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
    max_queue: u64,
}

impl SpanProcessor for Counted {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }
    fn on_end(&self, span: SpanData) {
        if self.pending.fetch_add(1, Relaxed) >= self.max_queue {
            self.pending.fetch_sub(1, Relaxed);
            self.dropped.fetch_add(1, Relaxed);
            return;
        }
        self.inner.on_end(span);
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, counting what leaves the queue and what is lost.
#[derive(Debug)]
struct Exporting<E> {
    inner: E,
    pending: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
}

impl<E: SpanExporter> SpanExporter for Exporting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        self.pending
            .fetch_sub(n.min(self.pending.load(Relaxed)), Relaxed);
        let result = self.inner.export(batch).await;
        if result.is_err() {
            self.dropped.fetch_add(n, Relaxed);
        }
        result
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_is_asked_for_by_either_endpoint_variable() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert!(!requested(env(&[])));
        assert!(!requested(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])));
        assert!(requested(env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://collector:4318"
        )])));
        assert!(requested(env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://collector:4318/v1/traces"
        )])));
        assert!(!requested(env(&[("OTEL_SERVICE_NAME", "x")])));
    }

    #[test]
    fn a_callers_traceparent_is_read_and_a_bad_one_ignored() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let mut h = HeaderMap::new();
        assert_eq!(caller_trace_id(&h), None);
        h.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        );
        assert_eq!(
            caller_trace_id(&h).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        h.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            ),
        );
        assert_eq!(caller_trace_id(&h), None);
        h.insert("traceparent", http::HeaderValue::from_static("garbage"));
        assert_eq!(caller_trace_id(&h), None);
    }
}
