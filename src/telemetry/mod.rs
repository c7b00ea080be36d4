//! Logging setup: `tracing` with pretty or JSON output, written in batches.
//!
//! What is logged never includes the `Authorization` header, auth tokens or
//! request/response bodies, at any level: the access log records method,
//! path (without the query string), status, upstream, latency, bytes and
//! `Twilio-Request-Id` only, and no code path formats headers or bodies into
//! an event.
//!
//! The access log line, the one event of every request, is formatted by
//! [`access`] itself into the same output (the bytes `tracing`'s formatter
//! would write, without its per-field cost).
//!
//! Output goes through a [`BatchWriter`]: each event's formatted line is
//! appended to one shared buffer (a copy under a short lock), and a
//! dedicated thread writes whatever has accumulated to stderr every
//! [`LOG_FLUSH_INTERVAL`]. At tens of thousands of requests per second that
//! is one `write` per interval instead of one per access-log line, which is
//! what the line used to cost (a channel message, a wake-up and a `write`
//! each). A request never wakes the thread while lines keep coming: only
//! after a second without a line does the thread stop ticking and wait to
//! be woken by the next one. Nothing is dropped: when [`LOG_BUFFER_BYTES`]
//! are waiting, logging waits for the writer. Lines are whole and in order
//! within the buffer.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{LogConfig, LogFormat};

pub mod access;
pub mod request_id;
pub mod trace;

/// Bytes of log output held for the writer thread. When that much is
/// waiting, logging waits for the thread (no line is dropped).
pub const LOG_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// Longest time a line waits in the buffer before the writer thread writes
/// it (and everything that arrived meanwhile) to stderr.
pub const LOG_FLUSH_INTERVAL: Duration = Duration::from_millis(10);

/// Install the global subscriber (once, at start-up). `RUST_LOG` overrides
/// the configured level when set. Events are written to stderr by a
/// dedicated thread, so a request never waits on a write to stderr; keep
/// the returned guard alive until exit, dropping it flushes what is left.
#[must_use = "dropping the guard stops the log writer"]
pub fn init(log: &LogConfig) -> Guards {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(&log.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    // Colour only on a terminal: `docker logs` and files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = BatchWriter::stderr();
    if !ansi {
        // On a terminal, access lines stay `tracing` events, coloured like
        // the rest.
        access::install(writer.clone(), log.format);
    }
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(writer);
    // The level can change on reload ([`set_level`]).
    let (filter, level) = tracing_subscriber::reload::Layer::new(filter);
    let _ = LEVEL.set(level);
    let fmt = match log.format {
        LogFormat::Json => fmt.json().flatten_event(true).with_filter(filter).boxed(),
        LogFormat::Pretty => fmt.with_filter(filter).boxed(),
    };
    // Spans for OTLP have their own filter: the log level never hides a
    // span, and the access line (written by `access` itself) is no event
    // of a span.
    let (otel, trace_guard, trace_error) = match trace::init() {
        Ok(Some((layer, guard))) => {
            let targets = tracing_subscriber::filter::Targets::new()
                .with_target("twilio_repair_proxy", tracing::Level::INFO)
                .with_target(access::TARGET, tracing::level_filters::LevelFilter::OFF);
            (Some(layer.with_filter(targets)), Some(guard), None)
        }
        Ok(None) => (None, None, None),
        Err(e) => (None, None, Some(e)),
    };
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    if let Some(e) = trace_error {
        tracing::warn!(error = %e, "tracing export is off");
    } else if trace::enabled() {
        tracing::info!("tracing: spans exported over OTLP/HTTP (OTEL_EXPORTER_OTLP_* settings)");
    }
    Guards {
        _trace: trace_guard,
        _log: guard,
    }
}

static LEVEL: std::sync::OnceLock<
    tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>,
> = std::sync::OnceLock::new();

/// A reloaded `log.level` (`RUST_LOG`, when set, still wins): from now on
/// events are filtered by it. `Err` names why it was not applied.
pub fn set_level(level: &str) -> Result<(), String> {
    if std::env::var_os("RUST_LOG").is_some() {
        return Ok(());
    }
    let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
    LEVEL
        .get()
        .ok_or_else(|| "logging is not set up".to_string())?
        .reload(filter)
        .map_err(|e| e.to_string())
}

static RELOADS: [std::sync::atomic::AtomicU64; 2] = [
    std::sync::atomic::AtomicU64::new(0),
    std::sync::atomic::AtomicU64::new(0),
];

/// Count a configuration reload by its result (`applied`, `invalid`):
/// `trp_config_reloads_total{result}`.
pub fn count_reload(result: &str) {
    let i = usize::from(result != "applied");
    RELOADS[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Reloads so far: (applied, invalid).
pub fn reloads() -> (u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    (RELOADS[0].load(Relaxed), RELOADS[1].load(Relaxed))
}

/// What [`init`] started; dropping it flushes the spans still queued, then
/// the log lines.
pub struct Guards {
    _trace: Option<trace::TraceGuard>,
    _log: LogGuard,
}

struct State {
    buf: Vec<u8>,
    /// The writer thread has stopped: write straight to stderr.
    closed: bool,
    /// The writer thread waits for a wake-up (it has been quiet for
    /// [`QUIET_TICKS`] intervals); otherwise it looks every interval.
    asleep: bool,
}

/// Intervals without a line after which the writer thread stops looking
/// every [`LOG_FLUSH_INTERVAL`] and waits to be woken: while lines keep
/// coming (one a second is enough) no request wakes the thread, and an idle
/// proxy's writer does not tick.
const QUIET_TICKS: u32 = 100;

struct Shared {
    state: Mutex<State>,
    /// The writer thread waits here for data (or for the close).
    data: Condvar,
    /// Loggers wait here for room when the buffer is full.
    space: Condvar,
}

impl Shared {
    fn new() -> Arc<Shared> {
        Arc::new(Shared {
            state: Mutex::new(State {
                buf: Vec::new(),
                closed: false,
                asleep: false,
            }),
            data: Condvar::new(),
            space: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves only bytes behind: go on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The log output: a buffer shared by every thread that logs, written to
/// stderr in batches by one thread (see the module documentation).
#[derive(Clone)]
pub struct BatchWriter(Arc<Shared>);

/// Stops the writer thread when dropped, after it wrote everything.
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BatchWriter {
    /// A writer to stderr and the guard of its thread. Without a thread
    /// (it could not be started), lines are written to stderr at once.
    pub fn stderr() -> (BatchWriter, LogGuard) {
        let shared = Shared::new();
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("trp-log-writer".into())
            .spawn(move || write_batches(&worker, &mut std::io::stderr()))
            .ok();
        if thread.is_none() {
            shared.lock().closed = true;
        }
        (BatchWriter(shared.clone()), LogGuard { shared, thread })
    }

    fn append(&self, line: &[u8]) -> std::io::Result<()> {
        let shared = &*self.0;
        let mut st = shared.lock();
        while !st.closed && !st.buf.is_empty() && st.buf.len() + line.len() > LOG_BUFFER_BYTES {
            // Full: have the writer flush now, and wait for it.
            shared.data.notify_one();
            st = shared.space.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        if st.closed {
            drop(st);
            return std::io::stderr().lock().write_all(line);
        }
        let wake = st.asleep && st.buf.is_empty();
        st.buf.extend_from_slice(line);
        drop(st);
        if wake {
            // The writer stopped ticking: one wake-up, and it lingers for
            // the rest of the batch.
            shared.data.notify_one();
        }
        Ok(())
    }
}

/// The writer thread: every [`LOG_FLUSH_INTERVAL`], write what has
/// accumulated. After [`QUIET_TICKS`] intervals without a line it waits to
/// be woken by the next one instead, and then lingers an interval for more
/// before writing. On close, it writes what is left.
fn write_batches(shared: &Shared, out: &mut impl Write) {
    let mut batch: Vec<u8> = Vec::new();
    let mut quiet = 0u32;
    loop {
        let mut st = shared.lock();
        if st.buf.is_empty() && !st.closed && quiet >= QUIET_TICKS {
            st.asleep = true;
            while st.buf.is_empty() && !st.closed {
                st = shared.data.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            st.asleep = false;
        }
        if !st.closed && st.buf.len() < LOG_BUFFER_BYTES / 2 {
            // One interval: the tick, or the linger after a wake-up (a
            // full buffer cuts it short).
            st = shared
                .data
                .wait_timeout(st, LOG_FLUSH_INTERVAL)
                .map_or_else(|e| e.into_inner().0, |(st, _)| st);
        }
        quiet = if st.buf.is_empty() { quiet + 1 } else { 0 };
        std::mem::swap(&mut st.buf, &mut batch);
        let closing = st.closed;
        drop(st);
        shared.space.notify_all();
        if !batch.is_empty() {
            // Nowhere to report a failed write to stderr.
            let _ = out.write_all(&batch);
            let _ = out.flush();
            batch.clear();
        }
        if closing {
            // Lines appended after the swap went to stderr directly (closed).
            let rest = std::mem::take(&mut shared.lock().buf);
            let _ = out.write_all(&rest);
            let _ = out.flush();
            return;
        }
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.data.notify_one();
        self.shared.space.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One event's writer: tracing's formatter writes each event whole.
pub struct EventWriter<'a>(&'a BatchWriter);

impl Write for EventWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.append(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = EventWriter<'a>;
    fn make_writer(&'a self) -> Self::Writer {
        EventWriter(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test can read after the writer thread is done.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Waits (a generous bound on "it happened") until `cond` holds.
    #[expect(
        clippy::disallowed_methods,
        reason = "a plain #[test] thread, no runtime: it polls the writer thread"
    )]
    fn eventually(what: &str, cond: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(std::time::Instant::now() < deadline, "never: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_line_is_written_both_while_the_writer_ticks_and_after_it_fell_asleep() {
        let shared = Shared::new();
        let sink = Sink::default();
        let (worker, mut out) = (shared.clone(), sink.clone());
        let thread = std::thread::spawn(move || write_batches(&worker, &mut out));
        let guard = LogGuard {
            shared: shared.clone(),
            thread: Some(thread),
        };
        let writer = BatchWriter(shared.clone());
        let written = |line: &str| String::from_utf8_lossy(&sink.0.lock().unwrap()).contains(line);
        // Ticking: nobody wakes the writer, its next tick writes the line.
        assert!(!shared.lock().asleep);
        writer.make_writer().write_all(b"while ticking\n").unwrap();
        eventually("the ticking writer wrote the line", || {
            written("while ticking")
        });
        // Quiet for a while: it waits to be woken, and the next line does.
        eventually("the writer fell asleep", || shared.lock().asleep);
        writer
            .make_writer()
            .write_all(b"after a quiet second\n")
            .unwrap();
        eventually("the woken writer wrote the line", || {
            written("after a quiet second")
        });
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text, "while ticking\nafter a quiet second\n");
    }

    #[test]
    fn every_line_is_written_whole_and_in_order_from_many_threads() {
        let shared = Shared::new();
        let sink = Sink::default();
        let (worker, mut out) = (shared.clone(), sink.clone());
        let thread = std::thread::spawn(move || write_batches(&worker, &mut out));
        let guard = LogGuard {
            shared: shared.clone(),
            thread: Some(thread),
        };
        let writer = BatchWriter(shared);
        let producers: Vec<_> = (0..4)
            .map(|t| {
                let w = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000 {
                        let line = format!("thread {t} line {i} {}\n", "x".repeat(i % 300));
                        w.make_writer().write_all(line.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let mut next = [0usize; 4];
        let mut lines = 0;
        for line in text.lines() {
            let mut f = line.split(' ');
            assert_eq!(f.next(), Some("thread"));
            let t: usize = f.next().unwrap().parse().unwrap();
            assert_eq!(f.next(), Some("line"));
            let i: usize = f.next().unwrap().parse().unwrap();
            assert_eq!(i, next[t], "thread {t}: lines out of order or missing");
            assert_eq!(f.next().unwrap(), "x".repeat(i % 300), "a line was cut");
            next[t] += 1;
            lines += 1;
        }
        assert_eq!(lines, 80_000, "every line written, none twice");
    }
}
