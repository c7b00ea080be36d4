//! The access log line, written straight to the log output.
//!
//! One line per answered request is the one log event on the pass-through
//! path, and going through `tracing`'s formatter costs about a microsecond
//! a line (a field visitor per field, `core::fmt` for every value, the
//! timestamp). Once [`super::init`] has installed the output, [`write()`]
//! formats the line itself into a per-thread buffer, with the bytes
//! `tracing-subscriber` would have written (pretty or JSON, see the test
//! that compares the two), and appends it to the same [`BatchWriter`], so
//! lines stay whole and in order with every other event. Before that (the
//! in-process tests), or for another output, it is a `tracing` event.
//!
//! Whether the line is wanted at all is still `tracing`'s decision: the
//! caller checks `tracing::enabled!` for [`TARGET`] at `INFO`, so
//! `TRP_LOG_LEVEL` and `RUST_LOG` directives apply to it as to any event.

use std::cell::RefCell;
use std::io::Write;
use std::sync::OnceLock;
use std::time::SystemTime;

use super::BatchWriter;
use crate::config::LogFormat;

/// The access log's `tracing` target.
pub const TARGET: &str = "twilio_repair_proxy::access";

/// What the access log records of one answered request. Never a header
/// value other than `User-Agent`, `X-Request-Id` and `Twilio-Request-Id`,
/// never the query string or a body.
pub struct AccessLine<'a> {
    pub method: &'a str,
    /// The path, without the query string.
    pub path: &'a str,
    pub status: u16,
    pub upstream_scheme: &'a str,
    pub upstream_authority: &'a str,
    /// Microseconds; written as fractional milliseconds (`latency_ms=0.412`).
    pub latency_us: u64,
    pub bytes: u64,
    /// The client's address (the TCP peer).
    pub client: Option<std::net::IpAddr>,
    /// The client's `User-Agent` (visible ASCII: `HeaderValue::to_str`).
    pub user_agent: &'a str,
    /// The request's `X-Request-Id` (see `super::request_id`).
    pub request_id: &'a str,
    /// The W3C trace id of the request's trace, when it has one.
    pub trace_id: &'a str,
    pub twilio_request_id: &'a str,
    pub repair_outcome: &'a str,
}

/// `latency_us` as the fractional milliseconds of the line: the digits of
/// `f64`'s shortest form (`0.412`, `1.5`, `2.0`).
fn latency_ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The bytes `{:?}` writes for `latency_ms(us)`, without `core::fmt`: an
/// integer part, a dot and one to three decimals (trailing zeros dropped,
/// at least one kept). Exact while the value stays below 2^53 µs.
fn push_ms(buf: &mut Vec<u8>, us: u64) {
    let mut n = itoa::Buffer::new();
    buf.extend_from_slice(n.format(us / 1000).as_bytes());
    buf.push(b'.');
    let frac = us % 1000;
    let digits = [frac / 100, frac / 10 % 10, frac % 10];
    let keep = match (digits[1], digits[2]) {
        (_, d) if d != 0 => 3,
        (d, _) if d != 0 => 2,
        _ => 1,
    };
    for d in &digits[..keep] {
        buf.push(b'0' + *d as u8);
    }
}

/// An address as `Display` writes it (IPv4 without `core::fmt`).
fn push_ip(buf: &mut Vec<u8>, ip: Option<std::net::IpAddr>) {
    match ip {
        Some(std::net::IpAddr::V4(v4)) => {
            let mut n = itoa::Buffer::new();
            for (i, o) in v4.octets().iter().enumerate() {
                if i > 0 {
                    buf.push(b'.');
                }
                buf.extend_from_slice(n.format(*o).as_bytes());
            }
        }
        Some(ip) => {
            let _ = write!(buf, "{ip}");
        }
        None => {}
    }
}

/// A `&str` as `{:?}` writes it: quoted, `"` and `\` escaped (and the
/// rest by `core::fmt` when there is anything else to escape).
fn push_debug_str(buf: &mut Vec<u8>, s: &str) {
    if !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        let _ = write!(buf, "{s:?}");
        return;
    }
    buf.push(b'"');
    for b in s.bytes() {
        if b == b'"' || b == b'\\' {
            buf.push(b'\\');
        }
        buf.push(b);
    }
    buf.push(b'"');
}

struct Output {
    writer: BatchWriter,
    format: LogFormat,
}

static OUTPUT: OnceLock<Output> = OnceLock::new();

/// Write access lines to `writer` in `format` from now on (by
/// [`super::init`], once).
pub(super) fn install(writer: BatchWriter, format: LogFormat) {
    let _ = OUTPUT.set(Output { writer, format });
}

thread_local! {
    /// The line being formatted: its capacity is kept between lines.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

/// Log one access line.
pub fn write(line: &AccessLine<'_>) {
    let Some(out) = OUTPUT.get() else {
        return as_event(line);
    };
    LINE.with(|buf| {
        let Ok(mut buf) = buf.try_borrow_mut() else {
            return as_event(line);
        };
        buf.clear();
        format(&mut buf, line, out.format, SystemTime::now());
        // The writer never fails short of stderr failing: nowhere to report.
        let _ = out.writer.append(&buf);
    });
}

/// The line as a `tracing` event (no output installed).
fn as_event(line: &AccessLine<'_>) {
    tracing::info!(
        target: TARGET,
        method = %line.method,
        path = %line.path,
        status = line.status,
        upstream = %format_args!("{}://{}", line.upstream_scheme, line.upstream_authority),
        latency_ms = latency_ms(line.latency_us),
        bytes = line.bytes,
        client = %Client(line.client),
        user_agent = line.user_agent,
        request_id = %line.request_id,
        trace_id = %line.trace_id,
        twilio_request_id = %line.twilio_request_id,
        repair_outcome = line.repair_outcome,
        "request"
    );
}

/// An optional address, `Display`ed as nothing when absent.
struct Client(Option<std::net::IpAddr>);

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ip) => write!(f, "{ip}"),
            None => Ok(()),
        }
    }
}

/// The bytes `tracing-subscriber` writes for the event of [`as_event`]
/// (ANSI off), stamped `now`.
fn format(buf: &mut Vec<u8>, l: &AccessLine<'_>, format: LogFormat, now: SystemTime) {
    let mut n = itoa::Buffer::new();
    match format {
        LogFormat::Pretty => {
            timestamp(buf, now);
            buf.extend_from_slice(b"  INFO ");
            buf.extend_from_slice(TARGET.as_bytes());
            buf.extend_from_slice(b": request method=");
            buf.extend_from_slice(l.method.as_bytes());
            buf.extend_from_slice(b" path=");
            buf.extend_from_slice(l.path.as_bytes());
            buf.extend_from_slice(b" status=");
            buf.extend_from_slice(n.format(l.status).as_bytes());
            buf.extend_from_slice(b" upstream=");
            buf.extend_from_slice(l.upstream_scheme.as_bytes());
            buf.extend_from_slice(b"://");
            buf.extend_from_slice(l.upstream_authority.as_bytes());
            buf.extend_from_slice(b" latency_ms=");
            push_ms(buf, l.latency_us);
            buf.extend_from_slice(b" bytes=");
            buf.extend_from_slice(n.format(l.bytes).as_bytes());
            buf.extend_from_slice(b" client=");
            push_ip(buf, l.client);
            buf.extend_from_slice(b" user_agent=");
            push_debug_str(buf, l.user_agent);
            buf.extend_from_slice(b" request_id=");
            buf.extend_from_slice(l.request_id.as_bytes());
            buf.extend_from_slice(b" trace_id=");
            buf.extend_from_slice(l.trace_id.as_bytes());
            buf.extend_from_slice(b" twilio_request_id=");
            buf.extend_from_slice(l.twilio_request_id.as_bytes());
            buf.extend_from_slice(b" repair_outcome=");
            // A `&str` field is written with `Debug`: quoted, escaped.
            let _ = write!(buf, "{:?}", l.repair_outcome);
            buf.push(b'\n');
        }
        LogFormat::Json => {
            buf.extend_from_slice(b"{\"timestamp\":\"");
            timestamp(buf, now);
            buf.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"method\":");
            json_str(buf, l.method);
            buf.extend_from_slice(b",\"path\":");
            json_str(buf, l.path);
            buf.extend_from_slice(b",\"status\":");
            buf.extend_from_slice(n.format(l.status).as_bytes());
            buf.extend_from_slice(b",\"upstream\":\"");
            // Scheme and authority are URI characters: nothing to escape
            // but what `json_str` would, checked by the parser that made
            // them (no `"`, `\` or control character).
            buf.extend_from_slice(l.upstream_scheme.as_bytes());
            buf.extend_from_slice(b"://");
            buf.extend_from_slice(l.upstream_authority.as_bytes());
            buf.extend_from_slice(b"\",\"latency_ms\":");
            push_ms(buf, l.latency_us);
            buf.extend_from_slice(b",\"bytes\":");
            buf.extend_from_slice(n.format(l.bytes).as_bytes());
            buf.extend_from_slice(b",\"client\":\"");
            push_ip(buf, l.client);
            buf.extend_from_slice(b"\",\"user_agent\":");
            json_str(buf, l.user_agent);
            buf.extend_from_slice(b",\"request_id\":");
            json_str(buf, l.request_id);
            buf.extend_from_slice(b",\"trace_id\":");
            json_str(buf, l.trace_id);
            buf.extend_from_slice(b",\"twilio_request_id\":");
            json_str(buf, l.twilio_request_id);
            buf.extend_from_slice(b",\"repair_outcome\":");
            json_str(buf, l.repair_outcome);
            buf.extend_from_slice(b",\"target\":\"");
            buf.extend_from_slice(TARGET.as_bytes());
            buf.extend_from_slice(b"\"}\n");
        }
    }
}

/// A JSON string, escaped as `serde_json` escapes it.
fn json_str(buf: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *buf, s);
}

/// `now` as `tracing-subscriber` prints it: RFC 3339, UTC, microseconds
/// (`2026-11-27T08:46:54.060692Z`). The calendar is the `time` crate's;
/// only the digits are written by hand (no `core::fmt`).
fn timestamp(buf: &mut Vec<u8>, now: SystemTime) {
    let t = time::OffsetDateTime::from(now);
    let two = |buf: &mut Vec<u8>, v: u8| {
        buf.push(b'0' + v / 10);
        buf.push(b'0' + v % 10);
    };
    let mut y = itoa::Buffer::new();
    buf.extend_from_slice(y.format(t.year()).as_bytes());
    buf.push(b'-');
    two(buf, u8::from(t.month()));
    buf.push(b'-');
    two(buf, t.day());
    buf.push(b'T');
    two(buf, t.hour());
    buf.push(b':');
    two(buf, t.minute());
    buf.push(b':');
    two(buf, t.second());
    buf.push(b'.');
    let micros = t.microsecond();
    for div in [100_000, 10_000, 1_000, 100, 10, 1] {
        buf.push(b'0' + (micros / div % 10) as u8);
    }
    buf.push(b'Z');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, UNIX_EPOCH};

    /// What `tracing-subscriber`, set up as [`super::super::init`] sets it
    /// up (ANSI off), writes for [`as_event`].
    fn by_tracing(line: &AccessLine<'_>, format: LogFormat) -> String {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let builder = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || out.clone());
        match format {
            LogFormat::Json => tracing::subscriber::with_default(
                builder.json().flatten_event(true).finish(),
                || as_event(line),
            ),
            LogFormat::Pretty => {
                tracing::subscriber::with_default(builder.finish(), || as_event(line))
            }
        }
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    fn ours(line: &AccessLine<'_>, format: LogFormat, now: SystemTime) -> String {
        let mut buf = Vec::new();
        super::format(&mut buf, line, format, now);
        String::from_utf8(buf).unwrap()
    }

    /// The line without its timestamp (the two are made at different
    /// instants), which is checked on its own.
    fn untimed(s: &str) -> String {
        let re = regex::Regex::new(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z").unwrap();
        assert!(re.is_match(s), "no timestamp in {s}");
        re.replace(s, "TS").into_owned()
    }

    #[test]
    fn the_line_is_the_one_tracing_would_write_in_both_formats() {
        let lines = [
            AccessLine {
                method: "GET",
                path: "/v1/Services",
                status: 200,
                upstream_scheme: "https",
                upstream_authority: "conversations.twilio.com",
                latency_us: 12_345,
                bytes: 470,
                client: Some("203.0.113.9".parse().unwrap()),
                user_agent: "twilio-python/9.13.0 (Linux x86_64) Python/3.11",
                request_id: "0193f8a2-b7c4-7d2e-9a1b-3c4d5e6f7a8b",
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
                twilio_request_id: "RQ0123456789abcdef0123456789abcdef",
                repair_outcome: "",
            },
            AccessLine {
                method: "POST",
                path: "/v1/Conversations/CH00/Participants",
                status: 201,
                upstream_scheme: "http",
                upstream_authority: "127.0.0.1:19001",
                latency_us: 0,
                bytes: 0,
                client: Some("::1".parse().unwrap()),
                user_agent: "",
                request_id: "app-1",
                trace_id: "",
                twilio_request_id: "",
                repair_outcome: "repaired",
            },
            AccessLine {
                // Characters JSON and `Debug` escape.
                method: "PATCH",
                path: "/v1/a\\b\"c\u{1}d",
                status: 404,
                upstream_scheme: "https",
                upstream_authority: "[::1]:8443",
                latency_us: 2_000,
                bytes: 18_446_744_073_709_551_615,
                client: None,
                user_agent: "ua \"quoted\" \\ back\tslash",
                request_id: "x",
                trace_id: "",
                twilio_request_id: "RQ\"x\\",
                repair_outcome: "a\"b\n",
            },
        ];
        for line in &lines {
            for format in [LogFormat::Pretty, LogFormat::Json] {
                let theirs = by_tracing(line, format);
                let mine = ours(line, format, SystemTime::now());
                assert_eq!(untimed(&mine), untimed(&theirs), "{format:?}");
                if format == LogFormat::Json {
                    let v: serde_json::Value = serde_json::from_str(&mine).unwrap();
                    assert_eq!(v["path"], line.path);
                    assert_eq!(v["repair_outcome"], line.repair_outcome);
                }
            }
        }
    }

    #[test]
    fn latency_is_written_as_f64_writes_it() {
        for us in [
            0,
            1,
            10,
            100,
            999,
            1_000,
            1_500,
            1_050,
            1_005,
            412,
            60_000_123,
            1 << 40,
        ] {
            let mut buf = Vec::new();
            push_ms(&mut buf, us);
            assert_eq!(
                String::from_utf8(buf).unwrap(),
                format!("{:?}", latency_ms(us)),
                "{us}"
            );
        }
    }

    #[test]
    fn the_timestamp_is_rfc3339_utc_with_microseconds() {
        let at = |secs: u64, micros: u32| {
            let mut buf = Vec::new();
            timestamp(
                &mut buf,
                UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros.into()),
            );
            String::from_utf8(buf).unwrap()
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(at(1_795_682_814, 60_692), "2026-11-26T08:46:54.060692Z");
        assert_eq!(at(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z");
        // Against the `time` crate, over many days.
        for day in (0..80_000u64).step_by(37) {
            let secs = day * 86_400 + 3_723;
            let t = time::OffsetDateTime::from_unix_timestamp(secs as i64).unwrap();
            let want = format!(
                "{:04}-{:02}-{:02}T01:02:03.000000Z",
                t.year(),
                u8::from(t.month()),
                t.day()
            );
            assert_eq!(at(secs, 0), want);
        }
    }
}
