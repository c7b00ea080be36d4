//! Configuration: one typed [`Config`], built from four layers.
//!
//! Precedence, lowest to highest: the defaults in `config/default.toml`
//! (compiled in, so the documented defaults and the real ones cannot drift),
//! an optional `--config FILE`, `TRP_*` environment variables, command-line
//! flags. Unknown keys are an error naming the key, in a file and in the
//! environment alike.
//!
//! Everything is checked once, at load time, so that a running proxy never
//! meets a value it cannot use: every integer setting against its documented
//! range ([`RANGES`], the `# Allowed:` lines of `config/default.toml`), every
//! URL setting for its scheme, host and port, every host pattern, the admin
//! token's shape. Each refusal is one line naming the key, and never shows a
//! secret (passwords in URLs are masked, the admin token is never echoed).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Value;

/// The documented defaults, compiled in.
mod checks;
pub mod reload;
pub use checks::{RANGES, check_origin, range_of};
use checks::{
    check_admin_token, check_host_pattern, check_ranges, check_reserved_prefix, check_store,
    durations_to_units, one_line, out_of_range, syntax_message,
};

pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Keys that are valid but have no default (absent from `default.toml`).
const OPTIONAL_KEYS: &[&str] = &[
    "upstream",
    "upstream_ca_file",
    "repair.credentials_file",
    "admin.token",
    "tls.cert_file",
    "tls.key_file",
    "tls.client_ca_file",
];

/// `TRP_*` variables that are not configuration keys: the repair credential
/// (secrets never live in the configuration) and the test harness's own.
const NON_CONFIG_ENV: &[&str] = &[
    // `--config`'s variable (the file itself, not a key in it).
    "TRP_CONFIG",
    "TRP_REPAIR_API_KEY_SID",
    "TRP_REPAIR_API_KEY_SECRET",
    "TRP_REPAIR_ACCOUNT_SID",
];
const NON_CONFIG_ENV_PREFIXES: &[&str] = &["TRP_TEST_"];

/// A configuration problem, always naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Text, not the parser's error as a source: `toml::de::Error` quotes
    /// the offending line, which may hold a secret; `message` is built by
    /// `syntax_message` without the value.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("unknown key `{0}`")]
    UnknownKey(String),
    #[error("invalid value for `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

/// Upper bound of the connection timeouts (`limits.header_read_timeout_ms`,
/// `keepalive_timeout_ms`, `http2_keepalive_*`): one day.
pub const MAX_CONNECTION_TIMEOUT_MS: u64 = 24 * 3600 * 1000;
/// Upper bound of `limits.max_connections` and `admin.max_connections`.
pub const MAX_CONNECTIONS: usize = 1_000_000;

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// The whole effective configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    pub store: String,
    pub default_upstream: String,
    pub allowed_hosts: Vec<String>,
    pub proxy_hosts: Vec<String>,
    /// Path prefixes never forwarded (404 `reserved-path`), whole segments.
    pub reserved_prefixes: Vec<String>,
    pub add_forwarded_headers: bool,
    /// Link rewriting: `"request"`, `"off"` or an origin.
    pub public_base_url: PublicBaseUrl,
    /// Extra trusted CA certificates (PEM) for upstream TLS, added to the
    /// built-in and system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_ca_file: Option<PathBuf>,
    /// TLS on the proxy listener (`crate::server::tls`); off unless both
    /// files are set.
    #[serde(default)]
    pub tls: TlsConfig,
    pub admin: AdminConfig,
    pub limits: Limits,
    pub log: LogConfig,
    pub repair: RepairConfig,
    pub store_options: StoreOptions,
    pub shield: ShieldConfig,
    pub metrics: MetricsConfig,
    pub route: Vec<Route>,
}

/// `public_base_url`: the origin written into the link fields of Twilio's
/// JSON answers (see `crate::rewrite`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicBaseUrl {
    /// `"request"` (the default): the scheme and `Host` the client used to
    /// reach the proxy; Twilio's links untouched for a request that named a
    /// Twilio host.
    Request,
    /// `"off"`: answers pass untouched.
    Off,
    /// An explicit origin, `http(s)://host[:port]`, for every answer.
    Fixed(String),
}

impl PublicBaseUrl {
    pub fn parse(s: &str) -> PublicBaseUrl {
        match s.trim() {
            v if v.eq_ignore_ascii_case("request") => PublicBaseUrl::Request,
            v if v.eq_ignore_ascii_case("off") => PublicBaseUrl::Off,
            v => PublicBaseUrl::Fixed(v.to_string()),
        }
    }
    pub fn as_str(&self) -> &str {
        match self {
            PublicBaseUrl::Request => "request",
            PublicBaseUrl::Off => "off",
            PublicBaseUrl::Fixed(url) => url,
        }
    }
}

impl Serialize for PublicBaseUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for PublicBaseUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| PublicBaseUrl::parse(&s))
    }
}

/// `[tls]`: the proxy listener's certificate chain and key (PEM files).
/// Both or neither; read (and re-read on SIGHUP) by `crate::server::tls`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// CA certificates (PEM) a client certificate must chain to: mutual
    /// TLS. Only with `cert_file` and `key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
}

/// The admin plane's settings; see `config/default.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer token required on every admin path but the probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<AdminToken>,
    /// Most concurrent connections on the admin listener.
    pub max_connections: usize,
    /// Longest one `POST /selftest` run may take before it is interrupted
    /// (its service is still deleted).
    pub selftest_deadline_ms: u64,
}

impl AdminConfig {
    pub fn selftest_deadline(&self) -> Duration {
        Duration::from_millis(self.selftest_deadline_ms)
    }
}

/// The admin bearer token. A secret: its `Debug` and its serialised form
/// (`check-config`) show `****`, never the value.
/// No `PartialEq`: compare with `admin::token_matches` (constant time).
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct AdminToken(String);

impl AdminToken {
    pub fn new(token: impl Into<String>) -> AdminToken {
        AdminToken(token.into())
    }
    /// The token itself, for the comparison with a presented one.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(****)")
    }
}

impl Serialize for AdminToken {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("****")
    }
}

/// Named bounds of the proxy; see `config/default.toml` for each meaning.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub connect_timeout_ms: u64,
    pub response_header_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub pool_idle_timeout_ms: u64,
    pub pool_max_idle_per_host: usize,
    pub max_connections: usize,
    pub header_read_timeout_ms: u64,
    pub shutdown_grace_ms: u64,
    pub worker_threads: usize,
    pub max_request_head_bytes: usize,
    pub keepalive_timeout_ms: u64,
    pub idle_park_ms: u64,
    pub park_at_once_above_connections: usize,
    pub http2_keepalive_interval_ms: u64,
    pub http2_keepalive_timeout_ms: u64,
}

impl Limits {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn response_header_timeout(&self) -> Duration {
        Duration::from_millis(self.response_header_timeout_ms)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    pub fn pool_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.pool_idle_timeout_ms)
    }
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
    pub fn keepalive_timeout(&self) -> Duration {
        Duration::from_millis(self.keepalive_timeout_ms)
    }
    pub fn idle_park(&self) -> Duration {
        Duration::from_millis(self.idle_park_ms)
    }
    pub fn http2_keepalive_interval(&self) -> Duration {
        Duration::from_millis(self.http2_keepalive_interval_ms)
    }
    pub fn http2_keepalive_timeout(&self) -> Duration {
        Duration::from_millis(self.http2_keepalive_timeout_ms)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

/// What the proxy does with a 20404 on Participant create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RepairMode {
    /// Check, and delete/recreate the User when the check says so.
    Repair,
    /// Check and report; never delete a User.
    CheckOnly,
    /// Pure pass-through.
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityRecord {
    Plain,
    Hash,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepairConfig {
    pub mode: RepairMode,
    pub max_body_bytes: usize,
    pub clock_skew_ms: u64,
    pub workflow_deadline_ms: u64,
    pub retry_initial_backoff_ms: u64,
    pub retry_max_backoff_ms: u64,
    pub retry_max_attempts: u32,
    /// How long a 404 that contradicts a create's 409 is read again.
    pub read_lag_grace_ms: u64,
    /// How long a request naming a SID a repair changed is sent with the
    /// new one (`crate::repair::alias`; 0: never).
    pub sid_alias_retention_secs: u64,
    pub step_timeout_ms: u64,
    pub max_repairs_per_window: u32,
    pub repair_window_secs: u64,
    pub allow_services: Vec<String>,
    pub deny_services: Vec<String>,
    pub incident_identity: IdentityRecord,
    /// Check-only rehearsals running at once, past which a fault is not
    /// rehearsed (`crate::repair::rehearsal`; 0: none).
    pub rehearsal_max_in_flight: u32,
    pub recovery_interval_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreOptions {
    pub max_connections: u32,
    pub connect_timeout_ms: u64,
    pub statement_timeout_ms: u64,
}

/// The opt-in 429 shield (`crate::shield`); see `config/default.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShieldConfig {
    pub retry_429: bool,
    pub max_replay_body_bytes: usize,
    pub max_wait_ms: u64,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub budget_percent: u32,
    pub budget_window_ms: u64,
    pub budget_min_retries_per_second: u32,
    /// 0: no cap.
    pub max_concurrent_per_account: usize,
    pub max_queue_wait_ms: u64,
    pub max_queue_length_per_account: usize,
}

impl ShieldConfig {
    /// Whether any part of the shield is on (off: pure pass-through).
    pub fn enabled(&self) -> bool {
        self.retry_429 || self.max_concurrent_per_account > 0
    }
}

/// Metric label choices; see `config/default.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub account_labels: bool,
}

/// One row of the routing table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub prefix: String,
    pub upstream: String,
}

/// Flag-level overrides (the top layer).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub upstream: Option<String>,
    pub store: Option<String>,
}

impl Config {
    /// The compiled-in defaults alone.
    pub fn defaults() -> Config {
        // The embedded file is checked by a unit test; it always parses.
        Self::load(None, std::iter::empty(), &Overrides::default())
            .unwrap_or_else(|e| panic!("config/default.toml is invalid: {e}"))
    }

    /// Build the effective configuration from all four layers. `env` is
    /// passed in (rather than read here) so tests can supply their own.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut base: Value =
            DEFAULT_TOML
                .parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: PathBuf::from("config/default.toml"),
                    message: e.message().to_string(),
                })?;
        let known = known_keys(&base);

        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let user: Value = text
                .parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: path.to_path_buf(),
                    message: syntax_message(&text, &e),
                })?;
            check_unknown(&user, "", &known)?;
            let mut user = user;
            durations_to_units(&mut user, "")?;
            merge(&mut base, user);
        }

        apply_env(&mut base, &known, env)?;
        check_ranges(&base, "", "")?;

        let table = base;
        let mut config: Config = serde_path_to_error::deserialize(table).map_err(|e| {
            let key = e.path().to_string();
            invalid(&key, one_line(&e.inner().to_string()))
        })?;

        if let Some(v) = overrides.listen {
            config.listen = v;
        }
        if let Some(v) = overrides.admin_listen {
            config.admin_listen = v;
        }
        if let Some(v) = &overrides.upstream {
            config.upstream = Some(v.clone());
        }
        if let Some(v) = &overrides.store {
            config.store = v.clone();
        }
        config.validate()?;
        Ok(config)
    }

    /// Semantic checks that types alone cannot express (integer ranges are
    /// checked on the raw layers, before typing: [`RANGES`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(up) = &self.upstream {
            check_origin("upstream", up)?;
        }
        check_origin("default_upstream", &self.default_upstream)?;
        if let PublicBaseUrl::Fixed(p) = &self.public_base_url {
            check_origin("public_base_url", p.trim_end_matches('/'))?;
        }
        for (i, r) in self.route.iter().enumerate() {
            if !r.prefix.starts_with('/') {
                return Err(invalid(&format!("route[{i}].prefix"), "must start with /"));
            }
            check_origin(&format!("route[{i}].upstream"), &r.upstream)?;
        }
        for (key, list, ranges) in [
            ("allowed_hosts", &self.allowed_hosts, false),
            ("proxy_hosts", &self.proxy_hosts, true),
        ] {
            for pattern in list {
                check_host_pattern(key, pattern, ranges)?;
            }
        }
        for prefix in &self.reserved_prefixes {
            check_reserved_prefix("reserved_prefixes", prefix)?;
        }
        check_store("store", &self.store)?;
        match (&self.tls.cert_file, &self.tls.key_file) {
            (Some(_), None) => {
                return Err(invalid("tls.key_file", "is required with tls.cert_file"));
            }
            (None, Some(_)) => {
                return Err(invalid("tls.cert_file", "is required with tls.key_file"));
            }
            (None, None) if self.tls.client_ca_file.is_some() => {
                return Err(invalid(
                    "tls.client_ca_file",
                    "needs tls.cert_file and tls.key_file",
                ));
            }
            _ => {}
        }
        self.upstream_ca_certs()?;
        if let Some(token) = &self.admin.token {
            check_admin_token("admin.token", token.expose())?;
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(invalid("log.level", one_line(&e.to_string())));
        }
        for (key, list) in [
            ("repair.allow_services", &self.repair.allow_services),
            ("repair.deny_services", &self.repair.deny_services),
        ] {
            for sid in list {
                if !crate::sid::is_sid(sid, "IS") {
                    return Err(invalid(
                        key,
                        format!("`{sid}` is not a Service SID (IS + 32 hex)"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The certificates of `upstream_ca_file` (none when unset), each
    /// checked to be usable as a trust anchor: a file that cannot be read,
    /// holds no PEM certificate or a malformed one is an error naming the key.
    pub fn upstream_ca_certs(
        &self,
    ) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, ConfigError> {
        match &self.upstream_ca_file {
            None => Ok(Vec::new()),
            Some(path) => checks::load_ca_file("upstream_ca_file", path),
        }
    }

    /// The effective configuration as TOML, with secrets masked.
    pub fn to_masked_toml(&self) -> String {
        let mut shown = self.clone();
        shown.store = mask_url_password(&self.store);
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:****@host/db`.
pub fn mask_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:****@{host}"),
        None => url.to_string(),
    }
}

/// Dotted paths of every key in the defaults (tables of arrays count as a
/// leaf, `route`), plus the optional keys.
fn known_keys(base: &Value) -> BTreeSet<String> {
    fn walk(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
        if let Value::Table(t) = v {
            for (k, child) in t {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if matches!(child, Value::Table(_)) {
                    walk(child, &path, out);
                }
                out.insert(path);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(base, "", &mut out);
    out.extend(OPTIONAL_KEYS.iter().map(|s| s.to_string()));
    out
}

fn check_unknown(v: &Value, prefix: &str, known: &BTreeSet<String>) -> Result<(), ConfigError> {
    if let Value::Table(t) = v {
        for (k, child) in t {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            if !known.contains(&path) {
                return Err(ConfigError::UnknownKey(path));
            }
            if matches!(child, Value::Table(_)) {
                check_unknown(child, &path, known)?;
            }
        }
    }
    Ok(())
}

fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Table(b), Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing @ Value::Table(_)) if v.is_table() => merge(existing, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

fn env_name(path: &str) -> String {
    format!("TRP_{}", path.replace('.', "_").to_uppercase())
}

fn apply_env(
    base: &mut Value,
    known: &BTreeSet<String>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let by_env: std::collections::HashMap<String, &String> = known
        .iter()
        .filter(|k| k.as_str() != "route")
        .map(|k| (env_name(k), k))
        .collect();
    for (name, raw) in env {
        if !name.starts_with("TRP_")
            || NON_CONFIG_ENV.contains(&name.as_str())
            || NON_CONFIG_ENV_PREFIXES.iter().any(|p| name.starts_with(p))
        {
            continue;
        }
        let Some(path) = by_env.get(&name) else {
            return Err(ConfigError::UnknownKey(format!("{name} (environment)")));
        };
        let existing = lookup(base, path);
        if matches!(existing, Some(Value::Table(_))) {
            return Err(ConfigError::UnknownKey(format!("{name} (environment)")));
        }
        let value = match existing {
            Some(Value::Integer(_)) if checks::duration_unit(path).is_some() => {
                Value::Integer(checks::duration_in_units(path, &raw)?)
            }
            Some(Value::Integer(_)) => Value::Integer(raw.trim().parse().map_err(|_| {
                // An integer too large for any setting gets its range.
                match (raw.trim().parse::<i128>(), range_of(path)) {
                    (Ok(_), Some((min, max))) => out_of_range(path, min, max, raw.trim()),
                    _ => invalid(path, format!("{name}: expected an integer")),
                }
            })?),
            Some(Value::Boolean(_)) => Value::Boolean(match raw.trim() {
                "true" | "1" | "yes" | "on" => true,
                "false" | "0" | "no" | "off" => false,
                _ => return Err(invalid(path, format!("{name}: expected true or false"))),
            }),
            Some(Value::Array(_)) => Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::String(s.to_string()))
                    .collect(),
            ),
            _ => Value::String(raw),
        };
        set(base, path, value);
    }
    Ok(())
}

fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |cur, k| cur.get(k))
}

fn set(v: &mut Value, path: &str, value: Value) {
    let mut parts: Vec<&str> = path.split('.').collect();
    let Some(last) = parts.pop() else { return };
    let mut cur = v;
    for p in parts {
        let Value::Table(t) = cur else { return };
        cur = t
            .entry(p.to_string())
            .or_insert_with(|| Value::Table(Default::default()));
    }
    if let Value::Table(t) = cur {
        t.insert(last.to_string(), value);
    }
}

#[cfg(test)]
mod tests;
