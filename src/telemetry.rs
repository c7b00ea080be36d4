//! Logging setup: `tracing` with pretty or JSON output.
//!
//! What is logged never includes the `Authorization` header, auth tokens or
//! request/response bodies, at any level: the access log records method,
//! path (without the query string), status, upstream, latency, bytes and
//! `Twilio-Request-Id` only, and no code path formats headers or bodies into
//! an event.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Lines of log output buffered for the writer thread. When it is full,
/// logging waits for the thread (no line is dropped).
pub const LOG_BUFFER_LINES: usize = 64 * 1024;

/// Install the global subscriber (once, at start-up). `RUST_LOG` overrides
/// the configured level when set. Events are written to stderr by a
/// dedicated thread, so a request never waits on a write to stderr; keep
/// the returned guard alive until exit, dropping it flushes what is left.
#[must_use = "dropping the guard stops the log writer"]
pub fn init(log: &LogConfig) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(&log.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    // Colour only on a terminal: `docker logs` and files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .lossy(false)
        .thread_name("trp-log-writer")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    let _ = match log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    guard
}
