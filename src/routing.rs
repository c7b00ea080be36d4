//! Routing: which upstream origin a request goes to, and which requests are
//! refused before any upstream is chosen.
//!
//! Order of decisions:
//! 1. `CONNECT` and absolute-form HTTP/1 targets (`GET http://x/ HTTP/1.1`)
//!    are refused: this is a reverse proxy, never a forward proxy. `TRACE`
//!    is refused (405, as nginx does: it would echo Cookie and
//!    Authorization), and so is the asterisk form (`GET *`, 400; `OPTIONS *`
//!    is routed like any request, then answered by the proxy itself).
//! 2. Framing and Host the proxy cannot forward faithfully are refused: a
//!    transfer coding other than `chunked` (501), an HTTP/1.1 request
//!    without `Host`, or any request with two `Host` lines (400, RFC 9112
//!    §3.2: which one would the upstream believe?).
//! 3. A path at or below one of the configured `reserved_prefixes` (whole
//!    segments) is never forwarded (404).
//! 4. A `Host` naming an allowlisted Twilio host (`*.twilio.com` by default)
//!    goes to `https://` that host, unless `--upstream` pins one origin.
//! 5. A `Host` naming this proxy (loopback, `localhost`, a single-label name,
//!    the listen address, or a `proxy_hosts` pattern: a name, `*.suffix`, or
//!    for an IP literal a CIDR range) uses the routing table:
//!    `--upstream` if set, else the longest matching `[[route]]` prefix, else
//!    `default_upstream`.
//! 6. Any other `Host` is refused with 421: a Host value never picks an
//!    upstream outside the allowlist.

use std::net::{IpAddr, SocketAddr};

use http::uri::{Authority, Scheme};
use http::{HeaderMap, Method, Uri, Version, header};

use crate::config::Config;
use crate::metrics::RouteClass;

pub mod cidr;
use cidr::IpNet;

/// A scheme + authority to send requests to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub scheme: Scheme,
    pub authority: Authority,
    /// `Host` header value for this origin, built once.
    pub host_header: http::HeaderValue,
}

impl Origin {
    /// Parse `https://host[:port]`. The configuration is validated at load,
    /// so a failure here is reported, not unwrapped.
    pub fn parse(s: &str) -> Option<Origin> {
        let uri: Uri = s.parse().ok()?;
        let authority = uri.authority()?.clone();
        Some(Origin {
            scheme: uri.scheme()?.clone(),
            host_header: http::HeaderValue::from_str(authority.as_str()).ok()?,
            authority,
        })
    }

    /// Point an origin-form URI at this origin, reusing its parsed path and
    /// query.
    pub fn rebase(&self, uri: Uri) -> Result<Uri, http::Error> {
        let mut parts = uri.into_parts();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        Ok(Uri::from_parts(parts)?)
    }

    /// The full upstream URI for a request path and query.
    pub fn join(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }

    pub fn as_string(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }
}

/// Where one request goes.
#[derive(Debug, Clone)]
pub struct Target {
    pub origin: Origin,
    pub class: RouteClass,
    /// The `Host` named an allowlisted Twilio host (Host-routing), not this
    /// proxy: the answer's links keep Twilio's names (`crate::rewrite`).
    pub host_routed: bool,
}

/// Why a request was refused before choosing an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("CONNECT is not supported: this is a reverse proxy for Twilio's REST API")]
    Connect,
    #[error(
        "absolute-form request targets are not accepted: send origin-form (a path) to this proxy"
    )]
    AbsoluteForm,
    #[error("the Host header names neither a Twilio host nor this proxy")]
    HostNotAllowed,
    #[error("the Host header is malformed")]
    BadHost,
    #[error("this path is reserved and is never forwarded")]
    Reserved,
    #[error("TRACE is not supported")]
    Trace,
    #[error("the asterisk-form request target (*) is only valid with OPTIONS")]
    AsteriskForm,
    #[error("an HTTP/1.1 request must carry a Host header")]
    MissingHost,
    #[error("the request carries more than one Host header")]
    DuplicateHost,
    #[error("transfer codings other than chunked are not supported")]
    TransferCoding,
}

impl Refusal {
    /// Short machine-readable token for the `X-Repair-Proxy-Error` header.
    pub fn token(self) -> &'static str {
        match self {
            Refusal::Connect => "connect-refused",
            Refusal::AbsoluteForm => "absolute-form-refused",
            Refusal::HostNotAllowed => "host-not-allowed",
            Refusal::BadHost => "bad-host",
            Refusal::Reserved => "reserved-path",
            Refusal::Trace => "trace-refused",
            Refusal::AsteriskForm => "asterisk-form-refused",
            Refusal::MissingHost => "missing-host",
            Refusal::DuplicateHost => "duplicate-host",
            Refusal::TransferCoding => "transfer-coding-unsupported",
        }
    }
    pub fn status(self) -> http::StatusCode {
        match self {
            Refusal::Connect | Refusal::Trace => http::StatusCode::METHOD_NOT_ALLOWED,
            Refusal::AbsoluteForm
            | Refusal::BadHost
            | Refusal::AsteriskForm
            | Refusal::MissingHost
            | Refusal::DuplicateHost => http::StatusCode::BAD_REQUEST,
            Refusal::TransferCoding => http::StatusCode::NOT_IMPLEMENTED,
            Refusal::HostNotAllowed => http::StatusCode::MISDIRECTED_REQUEST,
            Refusal::Reserved => http::StatusCode::NOT_FOUND,
        }
    }
}

/// A host pattern: an exact name (`twilio-repair-proxy.payments`,
/// `twilio-repair-proxy.payments.svc`), `*.suffix`, or an IP range
/// (`10.0.0.0/8`, `fd00::/8`, a bare address) that an IP-literal `Host`
/// is matched against.
#[derive(Debug, Clone)]
enum HostPattern {
    Exact(String),
    Suffix(String),
    Range(IpNet),
}

impl HostPattern {
    /// Entries are validated at load (`crate::config`); an IP-looking entry
    /// that does not parse as a range stays an exact name (and so never
    /// matches an IP literal).
    fn parse(s: &str) -> HostPattern {
        let s = s.trim().to_ascii_lowercase();
        if let Ok(net) = IpNet::parse(&s) {
            return HostPattern::Range(net);
        }
        match s.strip_prefix("*.") {
            Some(rest) => HostPattern::Suffix(format!(".{rest}")),
            None => HostPattern::Exact(s.strip_suffix('.').unwrap_or(&s).to_string()),
        }
    }
    /// Case-insensitive (patterns are stored lower-case), no allocation
    /// for names. A name ending in the root dot (`name.ns.svc.cluster.local.`) is the
    /// same name without it.
    fn matches(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host);
        match self {
            HostPattern::Exact(h) => h.eq_ignore_ascii_case(host),
            HostPattern::Suffix(s) => host.len() > s.len() && ends_with_ignore_case(host, s),
            HostPattern::Range(net) => host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok_and(|ip| net.contains(ip)),
        }
    }
    /// Whether an IP-literal `Host` lies in this pattern's range.
    fn matches_ip(&self, ip: IpAddr) -> bool {
        match self {
            HostPattern::Range(net) => net.contains(ip),
            HostPattern::Exact(_) | HostPattern::Suffix(_) => false,
        }
    }
}

/// The routing decision table, built once from the configuration.
#[derive(Debug, Clone)]
pub struct Routes {
    fixed: Option<Origin>,
    routes: Vec<(String, Origin, RouteClass)>,
    default: Origin,
    allowed_hosts: Vec<HostPattern>,
    proxy_hosts: Vec<HostPattern>,
    /// `reserved_prefixes`, without a trailing `/`.
    reserved: Vec<String>,
    listen: SocketAddr,
}

fn class_of(origin: &Origin) -> RouteClass {
    match origin.authority.host() {
        "conversations.twilio.com" => RouteClass::Conversations,
        "api.twilio.com" => RouteClass::Api,
        _ => RouteClass::Other,
    }
}

impl Routes {
    pub fn from_config(config: &Config) -> Result<Routes, crate::config::ConfigError> {
        let bad = |key: &str| crate::config::ConfigError::Invalid {
            key: key.to_string(),
            reason: "not a valid origin".into(),
        };
        let fixed = match &config.upstream {
            Some(u) => Some(Origin::parse(u).ok_or_else(|| bad("upstream"))?),
            None => None,
        };
        let mut routes = Vec::new();
        for (i, r) in config.route.iter().enumerate() {
            let o =
                Origin::parse(&r.upstream).ok_or_else(|| bad(&format!("route[{i}].upstream")))?;
            let class = class_of(&o);
            routes.push((r.prefix.trim_end_matches('/').to_string(), o, class));
        }
        // Longest prefix first, so the first match is the best one.
        routes.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        let default =
            Origin::parse(&config.default_upstream).ok_or_else(|| bad("default_upstream"))?;
        Ok(Routes {
            fixed,
            routes,
            default,
            allowed_hosts: config
                .allowed_hosts
                .iter()
                .map(|s| HostPattern::parse(s))
                .collect(),
            proxy_hosts: config
                .proxy_hosts
                .iter()
                .map(|s| HostPattern::parse(s))
                .collect(),
            reserved: config
                .reserved_prefixes
                .iter()
                .map(|p| p.trim_end_matches('/').to_string())
                .collect(),
            listen: config.listen,
        })
    }

    /// How [`Routes::route`] classes a request, for the forwarder's
    /// `route` label: by path with a fixed upstream, else by origin.
    pub fn class_by(&self) -> ClassBy {
        match self.fixed {
            Some(_) => ClassBy::Path,
            None => ClassBy::Origin,
        }
    }

    /// The fixed upstream, when `--upstream` is set.
    pub fn fixed(&self) -> Option<&Origin> {
        self.fixed.as_ref()
    }

    /// Whether `host` is an allowlisted Twilio host.
    pub fn is_allowed_twilio_host(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.allowed_hosts.iter().any(|p| p.matches(&host))
    }

    /// The origin the routing table (not the Host header) picks for a path.
    pub fn table_origin(&self, path: &str) -> &Origin {
        if let Some(f) = &self.fixed {
            return f;
        }
        self.routes
            .iter()
            .find(|(prefix, _, _)| path_has_prefix(path, prefix))
            .map(|(_, o, _)| o)
            .unwrap_or(&self.default)
    }

    /// Decide where a request goes.
    pub fn route(
        &self,
        method: &Method,
        uri: &Uri,
        version: Version,
        headers: &HeaderMap,
    ) -> Result<Target, Refusal> {
        if method == Method::CONNECT {
            return Err(Refusal::Connect);
        }
        if method == Method::TRACE {
            return Err(Refusal::Trace);
        }
        // HTTP/2 always carries :authority in the URI; for HTTP/1 a scheme or
        // authority in the target means absolute-form.
        if version < Version::HTTP_2 && (uri.scheme().is_some() || uri.authority().is_some()) {
            return Err(Refusal::AbsoluteForm);
        }
        let path = uri.path();
        if path == "*" && method != Method::OPTIONS {
            return Err(Refusal::AsteriskForm);
        }
        let mut hosts = headers.get_all(header::HOST).iter();
        let host_header = hosts.next();
        if hosts.next().is_some() {
            return Err(Refusal::DuplicateHost);
        }
        if host_header.is_none() && version == Version::HTTP_11 {
            return Err(Refusal::MissingHost);
        }
        if crate::headers::has_unsupported_transfer_coding(headers) {
            return Err(Refusal::TransferCoding);
        }
        if self.reserved.iter().any(|p| path_has_prefix(path, p)) {
            return Err(Refusal::Reserved);
        }
        let host = match host_header {
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(host_name)
                    .ok_or(Refusal::BadHost)?,
            ),
            None => uri.authority().map(|a| a.host()),
        };
        if let Some(name) = host {
            if self.allowed_hosts.iter().any(|p| p.matches(name)) {
                if let Some(f) = &self.fixed {
                    return Ok(Target {
                        origin: f.clone(),
                        class: class_of_path(path),
                        host_routed: true,
                    });
                }
                let authority: Authority = name
                    .to_ascii_lowercase()
                    .parse()
                    .map_err(|_| Refusal::BadHost)?;
                let origin = Origin {
                    scheme: Scheme::HTTPS,
                    host_header: http::HeaderValue::from_str(authority.as_str())
                        .map_err(|_| Refusal::BadHost)?,
                    authority,
                };
                let class = class_of(&origin);
                return Ok(Target {
                    origin,
                    class,
                    host_routed: true,
                });
            }
            if !self.is_own_name(name) {
                return Err(Refusal::HostNotAllowed);
            }
        }
        if let Some(f) = &self.fixed {
            return Ok(Target {
                origin: f.clone(),
                class: class_of_path(path),
                host_routed: false,
            });
        }
        for (prefix, origin, class) in &self.routes {
            if path_has_prefix(path, prefix) {
                return Ok(Target {
                    origin: origin.clone(),
                    class: *class,
                    host_routed: false,
                });
            }
        }
        Ok(Target {
            origin: self.default.clone(),
            class: class_of(&self.default),
            host_routed: false,
        })
    }

    fn is_own_name(&self, host: &str) -> bool {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return ip.is_loopback()
                || ip == self.listen.ip()
                || self.proxy_hosts.iter().any(|p| p.matches_ip(ip));
        }
        if host.eq_ignore_ascii_case("localhost") || ends_with_ignore_case(host, ".localhost") {
            return true;
        }
        if !host.contains('.') {
            return true; // a single-label name: a sidecar or compose service
        }
        self.proxy_hosts.iter().any(|p| p.matches(host))
    }
}

fn ends_with_ignore_case(s: &str, suffix: &str) -> bool {
    s.len() >= suffix.len()
        && s.as_bytes()[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

/// Whether `value` is a valid `host[:port]` (what routing accepts in
/// `Host`): host name characters, IP literals, a port of digits.
pub fn is_host_and_port(value: &str) -> bool {
    host_name(value).is_some()
}

/// The host part of a `Host` header value (`name`, `name:port`, `[v6]`,
/// `[v6]:port`), or `None` when it is not a valid host.
fn host_name(value: &str) -> Option<&str> {
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let end = rest.find(']')?;
        let after = &rest[end + 1..];
        let port = if after.is_empty() {
            None
        } else {
            Some(after.strip_prefix(':')?)
        };
        (&value[..end + 2], port)
    } else {
        match value.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (value, None),
        }
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|v6| v6.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    };
    (port_ok && host_ok).then_some(host)
}

/// Whole-segment prefix match: `/v1/Users` matches `/v1/Users` and
/// `/v1/Users/US..`, not `/v1/UsersX`.
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'))
}

/// How a request's [`RouteClass`] is found from where it is sent: the same
/// class [`Routes::route`] gave its [`Target`] (for the upstream latency's
/// `route` label, where only the origin and the path are at hand).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassBy {
    /// A fixed upstream: the path says (`/v1/` or `/2010-04-01`).
    Path,
    /// A routing table: the origin's host says.
    Origin,
}

impl ClassBy {
    pub fn class(self, origin: &Origin, path: &str) -> RouteClass {
        match self {
            ClassBy::Path => class_of_path(path),
            ClassBy::Origin => class_of(origin),
        }
    }
}

/// With a fixed upstream the class comes from the path (for metrics).
fn class_of_path(path: &str) -> RouteClass {
    if path.starts_with("/2010-04-01") {
        RouteClass::Api
    } else if path.starts_with("/v1/") {
        RouteClass::Conversations
    } else {
        RouteClass::Other
    }
}

#[cfg(test)]
mod tests;
