//! Logging setup: `tracing` with pretty or JSON output.
//!
//! What is logged never includes the `Authorization` header, auth tokens or
//! request/response bodies, at any level: the access log records method,
//! path (without the query string), status, upstream, latency, bytes and
//! `Twilio-Request-Id` only, and no code path formats headers or bodies into
//! an event.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Install the global subscriber (once, at start-up). `RUST_LOG` overrides
/// the configured level when set.
pub fn init(log: &LogConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(&log.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    // Colour only on a terminal: `docker logs` and files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}
