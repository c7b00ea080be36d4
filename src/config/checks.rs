//! Every check a setting's value must pass at load time, each giving a
//! one-line error that names the key: the integer ranges ([`RANGES`], the
//! `# Allowed:` lines of `config/default.toml`), URL settings (scheme, host,
//! no credentials, a port in 1..=65535), host patterns, reserved path
//! prefixes, the store URL, the admin token and the upstream CA bundle. Loading and layering live
//! in the parent module; this one only says yes or no.

use toml::Value;

use super::{ConfigError, invalid, mask_url_password};

/// The allowed range (inclusive) of every integer setting, documented next
/// to each key in `config/default.toml` as `# Allowed: MIN to MAX`. Checked
/// on the merged layers before anything is typed, so that no value can
/// overflow the time arithmetic that uses it (`Instant + Duration`). An
/// integer setting missing here is refused at load (the defaults included),
/// so a new one cannot go unchecked.
pub const RANGES: &[(&str, i64, i64)] = &[
    ("limits.connect_timeout_ms", 1, 300_000),
    ("limits.response_header_timeout_ms", 1, 3_600_000),
    ("limits.idle_timeout_ms", 1, 3_600_000),
    ("limits.pool_idle_timeout_ms", 1, 3_600_000),
    ("limits.pool_max_idle_per_host", 0, 65_536),
    ("limits.max_connections", 1, 1_000_000),
    ("limits.header_read_timeout_ms", 1, 600_000),
    ("limits.keepalive_timeout_ms", 1, 86_400_000),
    ("limits.idle_park_ms", 0, 86_400_000),
    ("limits.park_at_once_above_connections", 0, 1_000_000),
    ("limits.http2_keepalive_interval_ms", 1, 86_400_000),
    ("limits.http2_keepalive_timeout_ms", 1, 86_400_000),
    ("admin.max_connections", 1, 1_000_000),
    ("admin.selftest_deadline_ms", 1, 3_600_000),
    ("limits.max_request_head_bytes", 8192, 1_048_576),
    ("limits.shutdown_grace_ms", 0, 3_600_000),
    ("limits.worker_threads", 0, 1024),
    ("repair.max_body_bytes", 1024, 16_777_216),
    ("repair.clock_skew_ms", 0, 600_000),
    ("repair.workflow_deadline_ms", 1, 600_000),
    ("repair.retry_initial_backoff_ms", 1, 60_000),
    ("repair.retry_max_backoff_ms", 1, 300_000),
    ("repair.retry_max_attempts", 1, 100),
    ("repair.read_lag_grace_ms", 0, 60_000),
    ("repair.sid_alias_retention_secs", 0, 31_536_000),
    ("repair.step_timeout_ms", 1, 600_000),
    ("repair.max_repairs_per_window", 0, 1_000_000),
    ("repair.repair_window_secs", 1, 31_536_000),
    ("repair.recovery_interval_ms", 100, 86_400_000),
    ("repair.rehearsal_max_in_flight", 0, 64),
    ("store_options.max_connections", 1, 1000),
    ("store_options.connect_timeout_ms", 1, 300_000),
    ("store_options.statement_timeout_ms", 1, 3_600_000),
    ("shield.max_replay_body_bytes", 0, 16_777_216),
    ("shield.max_wait_ms", 1, 600_000),
    ("shield.initial_backoff_ms", 1, 60_000),
    ("shield.max_backoff_ms", 1, 300_000),
    ("shield.budget_percent", 0, 1000),
    ("shield.budget_window_ms", 1000, 3_600_000),
    ("shield.budget_min_retries_per_second", 0, 100_000),
    ("shield.max_concurrent_per_account", 0, 100_000),
    ("shield.max_queue_wait_ms", 0, 600_000),
    ("shield.max_queue_length_per_account", 0, 1_000_000),
];

/// The allowed range of an integer setting (dotted key, arrays unindexed).
pub fn range_of(key: &str) -> Option<(i64, i64)> {
    RANGES
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|&(_, min, max)| (min, max))
}

/// Bounds of `admin.token`'s length, in characters.
pub(super) const ADMIN_TOKEN_LEN: (usize, usize) = (16, 1024);

/// `scheme://host[:port]`, http or https, a valid host, no credentials, a
/// port (if any) in 1..=65535, no path or query: every upstream setting's
/// check, and the selftest's `--base-url`'s (`key` names it in the error).
pub fn check_origin(key: &str, value: &str) -> Result<(), ConfigError> {
    let uri: http::Uri = value
        .parse()
        .map_err(|_| invalid(key, format!("`{}` is not a URL", mask_url_password(value))))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(invalid(key, "scheme must be http or https")),
    }
    let Some(authority) = uri.authority() else {
        return Err(invalid(key, "missing host"));
    };
    if authority.as_str().contains('@') {
        return Err(invalid(
            key,
            "must not contain a user name or password (they would be sent as the Host header)",
        ));
    }
    let (host, port) = split_host_port(authority.as_str());
    check_host(key, host)?;
    if let Some(port) = port {
        check_port(key, port)?;
    }
    if uri.path() != "/" && !uri.path().is_empty() || uri.query().is_some() {
        return Err(invalid(
            key,
            "must be an origin (scheme://host[:port]) without a path",
        ));
    }
    Ok(())
}

/// `host[:port]` or `[v6][:port]` → host and the text after its `:`, if any.
pub(super) fn split_host_port(authority: &str) -> (&str, Option<&str>) {
    let host_end = if authority.starts_with('[') {
        authority.find(']').map_or(authority.len(), |i| i + 1)
    } else {
        authority.find(':').unwrap_or(authority.len())
    };
    let (host, rest) = authority.split_at(host_end);
    (host, rest.strip_prefix(':'))
}

pub(super) fn check_port(key: &str, port: &str) -> Result<(), ConfigError> {
    match port.parse::<u16>() {
        Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
        _ => Err(invalid(
            key,
            format!("port `{port}` is not a number between 1 and 65535"),
        )),
    }
}

/// A DNS name (letters, digits, `-`, `_`, dot-separated, optional final
/// dot), an IPv4 address or a bracketed IPv6 address.
pub(super) fn check_host(key: &str, host: &str) -> Result<(), ConfigError> {
    if is_host(host) {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("`{host}` is not a host name or address"),
        ))
    }
}

pub(super) fn is_host(host: &str) -> bool {
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// An `allowed_hosts`/`proxy_hosts` entry: `HOST` or `*.SUFFIX`, matched
/// against the Host header's name, so never with a scheme, port or path.
/// With `ranges` (`proxy_hosts`), also an IP range in CIDR notation
/// (`10.0.0.0/8`, `fd00::/8`) or a bare IPv6 address, matched against an
/// IP-literal Host ([`crate::routing::cidr`]).
pub(super) fn check_host_pattern(
    key: &str,
    pattern: &str,
    ranges: bool,
) -> Result<(), ConfigError> {
    let p = pattern.trim();
    if ranges && (p.contains('/') || p.contains(':')) {
        return crate::routing::cidr::IpNet::parse(p)
            .map(|_| ())
            .map_err(|e| invalid(key, format!("`{pattern}` is not an IP range: {e}")));
    }
    let host = p.strip_prefix("*.").unwrap_or(p);
    if is_host(host) {
        Ok(())
    } else {
        let forms = if ranges {
            "HOST, *.SUFFIX or an IP range such as 10.0.0.0/8, without scheme, port or path"
        } else {
            "HOST or *.SUFFIX, without scheme, port or path"
        };
        Err(invalid(
            key,
            format!("`{pattern}` is not a host pattern ({forms})"),
        ))
    }
}

/// A `reserved_prefixes` entry: a path of at least one segment (`/x`),
/// matched against request paths, so never with a query, a fragment or
/// white space; a lone `/` (which would refuse every request) is refused.
pub(super) fn check_reserved_prefix(key: &str, prefix: &str) -> Result<(), ConfigError> {
    let ok = prefix.starts_with('/')
        && !prefix.trim_end_matches('/').is_empty()
        && !prefix
            .chars()
            .any(|c| c == '?' || c == '#' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("`{prefix}` is not a path prefix (/SEGMENT..., without query or white space)"),
        ))
    }
}

/// `sqlite:PATH` / `sqlite://PATH` with a path, or a `postgres://` URL whose
/// port (if any) is in 1..=65535. The password is never shown.
pub(super) fn check_store(key: &str, url: &str) -> Result<(), ConfigError> {
    const EXPECTED: &str = "expected sqlite://PATH or postgres://USER@HOST:PORT/DB";
    if let Some(path) = url.strip_prefix("sqlite:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() {
            return Err(invalid(key, format!("missing path: {EXPECTED}")));
        }
        return Ok(());
    }
    let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    else {
        return Err(invalid(key, EXPECTED));
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    // An empty host is allowed: the socket directory may come from `?host=`.
    if let (_, Some(port)) = split_host_port(host_port) {
        check_port(key, port)?;
    }
    Ok(())
}

pub(super) fn check_admin_token(key: &str, token: &str) -> Result<(), ConfigError> {
    let (min, max) = ADMIN_TOKEN_LEN;
    if (min..=max).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        // Never echo the value: it is a secret.
        Err(invalid(
            key,
            format!("must be {min} to {max} visible ASCII characters without spaces"),
        ))
    }
}

/// Every integer in the merged layers against [`RANGES`]. `path` names the
/// value as the user wrote it (`route[2].x`), `key` as [`RANGES`] does.
pub(super) fn check_ranges(v: &Value, path: &str, key: &str) -> Result<(), ConfigError> {
    let join = |a: &str, b: &str| {
        if a.is_empty() {
            b.to_string()
        } else {
            format!("{a}.{b}")
        }
    };
    match v {
        Value::Table(t) => {
            for (k, child) in t {
                check_ranges(child, &join(path, k), &join(key, k))?;
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_ranges(item, &format!("{path}[{i}]"), key)?;
            }
        }
        Value::Integer(n) => {
            let Some((min, max)) = range_of(key) else {
                return Err(invalid(
                    path,
                    "has no allowed range (add it to RANGES in src/config/checks.rs and document it in config/default.toml)",
                ));
            };
            if !(min..=max).contains(n) {
                return Err(out_of_range(path, min, max, &n.to_string()));
            }
        }
        _ => {}
    }
    Ok(())
}

pub(super) fn out_of_range(key: &str, min: i64, max: i64, got: &str) -> ConfigError {
    invalid(key, format!("must be between {min} and {max} (got {got})"))
}

/// A TOML parser message, on one line, with the line and the dotted key
/// where it happened (never the value: it may be a secret).
pub(super) fn syntax_message(text: &str, e: &toml::de::Error) -> String {
    let message = one_line(e.message());
    let Some(span) = e.span() else {
        return message;
    };
    let before = text.get(..span.start).unwrap_or(text);
    let line_no = before.matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("");
    let section = text
        .lines()
        .take(line_no - 1)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    match line.split_once('=') {
        Some((k, _)) if !k.trim().is_empty() && !k.trim().starts_with('#') => {
            let k = k.trim();
            let key = section.map_or_else(|| k.to_string(), |s| format!("{s}.{k}"));
            match range_of(&key) {
                Some((min, max)) => format!(
                    "{message} (line {line_no}, key `{key}`: must be between {min} and {max})"
                ),
                None => format!("{message} (line {line_no}, key `{key}`)"),
            }
        }
        _ => format!("{message} (line {line_no})"),
    }
}

pub(super) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Largest `upstream_ca_file` read (a whole system bundle is ~220 KB).
pub const MAX_CA_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Read a PEM bundle of trust anchors: every `CERTIFICATE` block must parse
/// as an X.509 certificate usable as a root; other blocks (a key left in the
/// file) are ignored; a file with no certificate is refused.
pub fn load_ca_file(
    key: &str,
    path: &std::path::Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, ConfigError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use std::io::Read;
    let shown = path.display();
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CA_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| invalid(key, format!("cannot read {shown}: {e}")))?;
    if bytes.len() as u64 > MAX_CA_FILE_BYTES {
        return Err(invalid(
            key,
            format!("{shown} is larger than {MAX_CA_FILE_BYTES} bytes"),
        ));
    }
    let mut certs = Vec::new();
    for (i, cert) in CertificateDer::pem_slice_iter(&bytes).enumerate() {
        let cert = cert.map_err(|e| {
            invalid(
                key,
                format!("{shown}: PEM block {} is malformed: {e}", i + 1),
            )
        })?;
        let mut probe = rustls::RootCertStore::empty();
        probe.add(cert.clone()).map_err(|e| {
            invalid(
                key,
                format!(
                    "{shown}: certificate {} is not a usable CA certificate: {e}",
                    i + 1
                ),
            )
        })?;
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err(invalid(
            key,
            format!("{shown} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
        ));
    }
    Ok(certs)
}

/// The unit of a duration setting, from its key's suffix (`*_ms`, `*_secs`).
pub(super) fn duration_unit(key: &str) -> Option<std::time::Duration> {
    if key.ends_with("_ms") {
        Some(std::time::Duration::from_millis(1))
    } else if key.ends_with("_secs") {
        Some(std::time::Duration::from_secs(1))
    } else {
        None
    }
}

/// A duration setting written as text (`"5s"`, `"250ms"`, `"1h 30m"`,
/// humantime's forms) as the integer count of its key's unit; a value that
/// is not a whole number of units is refused, never rounded.
pub(super) fn duration_in_units(key: &str, text: &str) -> Result<i64, ConfigError> {
    let unit = duration_unit(key).ok_or_else(|| invalid(key, "is not a duration"))?;
    let expected = || {
        invalid(
            key,
            format!(
                "expected an integer or a duration such as \"5s\" or \"250ms\" (got {:?})",
                one_line(text)
            ),
        )
    };
    let trimmed = text.trim();
    if let Ok(n) = trimmed.parse::<i64>() {
        return Ok(n);
    }
    let d = humantime::parse_duration(trimmed).map_err(|_| expected())?;
    let (n, rest) = (
        d.as_nanos() / unit.as_nanos(),
        d.as_nanos() % unit.as_nanos(),
    );
    if rest != 0 {
        return Err(invalid(
            key,
            format!(
                "{trimmed:?} is not a whole number of {}",
                if unit.as_secs() == 1 {
                    "seconds"
                } else {
                    "milliseconds"
                }
            ),
        ));
    }
    i64::try_from(n).map_err(|_| expected())
}

/// Every duration setting given as text in `v` (a file's table) turned into
/// the integer its key's unit counts, so the range checks and the typed
/// configuration see integers only.
pub(super) fn durations_to_units(v: &mut Value, path: &str) -> Result<(), ConfigError> {
    if let Value::Table(t) = v {
        for (k, child) in t.iter_mut() {
            let key = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            match child {
                Value::String(text) if duration_unit(&key).is_some() => {
                    *child = Value::Integer(duration_in_units(&key, text)?);
                }
                Value::Table(_) => durations_to_units(child, &key)?,
                _ => {}
            }
        }
    }
    Ok(())
}
