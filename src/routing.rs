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
//!    the listen address, or a `proxy_hosts` pattern) uses the routing table:
//!    `--upstream` if set, else the longest matching `[[route]]` prefix, else
//!    `default_upstream`.
//! 6. Any other `Host` is refused with 421: a Host value never picks an
//!    upstream outside the allowlist.

use std::net::{IpAddr, SocketAddr};

use http::uri::{Authority, Scheme};
use http::{HeaderMap, Method, Uri, Version, header};

use crate::config::Config;
use crate::metrics::RouteClass;

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

/// A host pattern: exact name, or `*.suffix`.
#[derive(Debug, Clone)]
enum HostPattern {
    Exact(String),
    Suffix(String),
}

impl HostPattern {
    fn parse(s: &str) -> HostPattern {
        let s = s.trim().to_ascii_lowercase();
        match s.strip_prefix("*.") {
            Some(rest) => HostPattern::Suffix(format!(".{rest}")),
            None => HostPattern::Exact(s),
        }
    }
    /// Case-insensitive (patterns are stored lower-case), no allocation.
    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h.eq_ignore_ascii_case(host),
            HostPattern::Suffix(s) => host.len() > s.len() && ends_with_ignore_case(host, s),
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
                return Ok(Target { origin, class });
            }
            if !self.is_own_name(name) {
                return Err(Refusal::HostNotAllowed);
            }
        }
        if let Some(f) = &self.fixed {
            return Ok(Target {
                origin: f.clone(),
                class: class_of_path(path),
            });
        }
        for (prefix, origin, class) in &self.routes {
            if path_has_prefix(path, prefix) {
                return Ok(Target {
                    origin: origin.clone(),
                    class: *class,
                });
            }
        }
        Ok(Target {
            origin: self.default.clone(),
            class: class_of(&self.default),
        })
    }

    fn is_own_name(&self, host: &str) -> bool {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return ip.is_loopback() || ip == self.listen.ip();
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
mod tests {
    use super::*;
    use http::HeaderValue;

    fn routes(upstream: Option<&str>) -> Routes {
        let mut c = Config::defaults();
        c.upstream = upstream.map(str::to_string);
        Routes::from_config(&c).unwrap()
    }

    fn headers(host: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(host) = host {
            h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        }
        h
    }

    fn go(r: &Routes, path: &str, host: Option<&str>) -> Result<String, Refusal> {
        let uri: Uri = path.parse().unwrap();
        r.route(&Method::GET, &uri, Version::HTTP_11, &headers(host))
            .map(|t| t.origin.as_string())
    }

    #[test]
    fn table_routes_by_prefix() {
        let r = routes(None);
        let local = Some("127.0.0.1:8080");
        assert_eq!(
            go(&r, "/v1/Services/IS1/Conversations", local).unwrap(),
            "https://conversations.twilio.com"
        );
        assert_eq!(
            go(&r, "/v1/Conversations", local).unwrap(),
            "https://conversations.twilio.com"
        );
        assert_eq!(
            go(&r, "/2010-04-01/Accounts/AC1/Messages.json", local).unwrap(),
            "https://api.twilio.com"
        );
        assert_eq!(
            go(&r, "/v1/Whatever", Some("twilio-proxy:8080")).unwrap(),
            "https://api.twilio.com"
        );
        assert_eq!(
            go(&r, "/v1/UsersX", local).unwrap(),
            "https://api.twilio.com"
        );
    }

    #[test]
    fn twilio_host_picks_itself() {
        let r = routes(None);
        assert_eq!(
            go(&r, "/v2/Services", Some("verify.twilio.com")).unwrap(),
            "https://verify.twilio.com"
        );
        assert_eq!(
            go(
                &r,
                "/v1/Conversations",
                Some("conversations.dublin.ie1.twilio.com:443")
            )
            .unwrap(),
            "https://conversations.dublin.ie1.twilio.com"
        );
    }

    #[test]
    fn foreign_hosts_and_forms_are_refused() {
        let r = routes(None);
        assert_eq!(
            go(&r, "/v1/Conversations", Some("evil.example.com")),
            Err(Refusal::HostNotAllowed)
        );
        assert_eq!(
            go(&r, "/v1/Conversations", Some("twilio.com.evil.example")),
            Err(Refusal::HostNotAllowed)
        );
        assert_eq!(
            go(&r, "/v1/Conversations", Some("169.254.169.254")),
            Err(Refusal::HostNotAllowed)
        );
        assert_eq!(go(&r, "/v1/x", Some("a b")), Err(Refusal::BadHost));
        assert_eq!(
            go(&r, "/v1/x", Some("localhost:80:80")),
            Err(Refusal::BadHost)
        );
        assert_eq!(
            go(&r, "/v1/x", Some("evil.com@localhost")),
            Err(Refusal::BadHost)
        );
        assert!(go(&r, "/v1/x", Some("[::1]:8080")).is_ok());
        assert!(go(&r, "/v1/Services", Some("LOCALHOST:8080")).is_ok());
        assert_eq!(
            go(&r, "/v1/Services", Some("Conversations.Twilio.com")).unwrap(),
            "https://conversations.twilio.com"
        );
        let abs: Uri = "http://169.254.169.254/latest".parse().unwrap();
        let none = HeaderMap::new();
        assert_eq!(
            r.route(&Method::GET, &abs, Version::HTTP_11, &none)
                .unwrap_err(),
            Refusal::AbsoluteForm
        );
        let auth: Uri = "evil.example.com:443".parse().unwrap();
        assert_eq!(
            r.route(&Method::CONNECT, &auth, Version::HTTP_11, &none)
                .unwrap_err(),
            Refusal::Connect
        );
        assert_eq!(
            go(&r, "/__emulator/fault", Some("localhost")),
            Err(Refusal::Reserved)
        );
        let star: Uri = "*".parse().unwrap();
        let local = headers(Some("localhost"));
        assert_eq!(
            r.route(&Method::GET, &star, Version::HTTP_11, &local)
                .unwrap_err(),
            Refusal::AsteriskForm
        );
        // OPTIONS * is routed, then answered by the proxy itself.
        assert!(
            r.route(&Method::OPTIONS, &star, Version::HTTP_11, &local)
                .is_ok()
        );
        let trace: Uri = "/v1/Users".parse().unwrap();
        assert_eq!(
            r.route(&Method::TRACE, &trace, Version::HTTP_11, &local)
                .unwrap_err(),
            Refusal::Trace
        );
    }

    #[test]
    fn reserved_prefixes_come_from_the_configuration() {
        let mut c = Config::defaults();
        c.reserved_prefixes = vec!["/internal/".into()];
        let r = Routes::from_config(&c).unwrap();
        let local = Some("localhost");
        assert_eq!(go(&r, "/internal", local), Err(Refusal::Reserved));
        assert_eq!(go(&r, "/internal/x/y", local), Err(Refusal::Reserved));
        assert!(go(&r, "/internalX", local).is_ok());
        // Not reserved any more: routed like any path.
        assert!(go(&r, "/__emulator/fault", local).is_ok());
        c.reserved_prefixes.clear();
        let r = Routes::from_config(&c).unwrap();
        assert!(go(&r, "/internal/x", local).is_ok());
    }

    #[test]
    fn fixed_upstream_wins_but_still_refuses_foreign_hosts() {
        let r = routes(Some("http://127.0.0.1:4010"));
        assert_eq!(
            go(&r, "/v1/Conversations", Some("localhost:8080")).unwrap(),
            "http://127.0.0.1:4010"
        );
        assert_eq!(
            go(&r, "/v1/Conversations", Some("conversations.twilio.com")).unwrap(),
            "http://127.0.0.1:4010"
        );
        assert_eq!(
            go(&r, "/v1/Conversations", Some("evil.example.com")),
            Err(Refusal::HostNotAllowed)
        );
    }

    mod properties {
        //! Invariants of the routing decision, over generated Host values,
        //! paths, methods and versions.
        use super::*;
        use proptest::prelude::*;

        /// Host header values an attacker, a client library or a typo
        /// could send: Twilio names, look-alikes, IPs, the proxy's own
        /// names, ports, odd case and arbitrary printable junk.
        fn host() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-z]{1,10}(\\.[a-z0-9]{1,6}){0,2}\\.twilio\\.com(:[0-9]{1,5})?",
                "[A-Za-z]{1,10}\\.TwIlIo\\.CoM",
                "[a-z]{1,10}\\.twilio\\.com\\.[a-z]{1,10}(:[0-9]{1,5})?",
                "[a-z]{0,6}twilio\\.com",
                "(127\\.0\\.0\\.1|10\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}|169\\.254\\.169\\.254|\\[::1\\]|\\[fe80::1\\])(:[0-9]{1,5})?",
                "(localhost|[a-z][a-z0-9-]{0,12})(:[0-9]{1,5})?",
                "[a-z]{1,8}\\.(svc|local|internal|example|com)(:[0-9]{1,5})?",
                "[!-~]{1,40}",
            ]
        }

        fn path() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("/v1/Services/IS0123456789abcdef0123456789abcdef/Conversations".to_string()),
                Just("/2010-04-01/Accounts/AC1/Messages.json".to_string()),
                "/[A-Za-z0-9_.~-]{0,12}(/[A-Za-z0-9_.%~-]{0,12}){0,4}",
                Just("/__emulator/fault".to_string()),
            ]
        }

        fn method() -> impl Strategy<Value = Method> {
            prop_oneof![
                Just(Method::GET),
                Just(Method::POST),
                Just(Method::DELETE),
                Just(Method::OPTIONS),
                Just(Method::TRACE),
                Just(Method::CONNECT),
            ]
        }

        fn version() -> impl Strategy<Value = Version> {
            prop_oneof![
                Just(Version::HTTP_10),
                Just(Version::HTTP_11),
                Just(Version::HTTP_2)
            ]
        }

        /// Every origin the configuration names (routing table, default,
        /// fixed upstream).
        fn configured(r: &Routes) -> Vec<Origin> {
            let mut v: Vec<Origin> = r.routes.iter().map(|(_, o, _)| o.clone()).collect();
            v.push(r.default.clone());
            v.extend(r.fixed.clone());
            v
        }

        fn with_host(host: &str) -> Option<HeaderMap> {
            let v = HeaderValue::from_str(host).ok()?;
            let mut h = HeaderMap::new();
            h.insert(header::HOST, v);
            Some(h)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// The SSRF invariant: a request goes to a configured origin, or
            /// to `https://` + the very Host it named when (and only when)
            /// that Host is allowlisted. No Host value reaches anything else.
            #[test]
            fn only_configured_or_allowlisted_origins_are_ever_chosen(
                host in host(),
                path in path(),
                method in method(),
                version in version(),
            ) {
                let r = routes(None);
                let Some(headers) = with_host(&host) else { return Ok(()) };
                let uri: Uri = match path.parse() { Ok(u) => u, Err(_) => return Ok(()) };
                if let Ok(t) = r.route(&method, &uri, version, &headers) {
                    if !configured(&r).contains(&t.origin) {
                        let name = host_name(&host).expect("routed with an invalid Host");
                        prop_assert_eq!(t.origin.scheme.as_str(), "https");
                        prop_assert!(r.is_allowed_twilio_host(name), "{} is not allowlisted", host);
                        prop_assert_eq!(t.origin.authority.as_str(), name.to_ascii_lowercase());
                        prop_assert!(t.origin.authority.port().is_none());
                    }
                    // A routed request is never a refused shape.
                    prop_assert!(method != Method::CONNECT && method != Method::TRACE);
                    prop_assert!(!path.starts_with("/__emulator"));
                }
            }

            /// With `--upstream`, every routed request goes there, whatever
            /// its Host.
            #[test]
            fn a_fixed_upstream_is_the_only_destination(
                host in host(),
                path in path(),
            ) {
                let r = routes(Some("http://127.0.0.1:4010"));
                let Some(headers) = with_host(&host) else { return Ok(()) };
                let uri: Uri = path.parse().unwrap();
                if let Ok(t) = r.route(&Method::POST, &uri, Version::HTTP_11, &headers) {
                    prop_assert_eq!(t.origin.as_string(), "http://127.0.0.1:4010");
                }
            }

            /// A Host that names neither an allowlisted Twilio host nor this
            /// proxy is refused, never routed.
            #[test]
            fn foreign_hosts_are_refused(host in host(), path in path()) {
                let r = routes(None);
                let Some(headers) = with_host(&host) else { return Ok(()) };
                let uri: Uri = path.parse().unwrap();
                let name = host_name(&host);
                let foreign = name.is_some_and(|n| !r.is_allowed_twilio_host(n) && !r.is_own_name(n));
                let result = r.route(&Method::GET, &uri, Version::HTTP_11, &headers);
                if name.is_none() && !path.starts_with("/__emulator") {
                    prop_assert_eq!(result.unwrap_err(), Refusal::BadHost);
                } else if foreign && !path.starts_with("/__emulator") {
                    prop_assert_eq!(result.unwrap_err(), Refusal::HostNotAllowed);
                }
            }

            /// Host names are case-insensitive: the decision never depends
            /// on the case of the Host value.
            #[test]
            fn host_case_never_changes_the_decision(host in host(), path in path()) {
                let r = routes(None);
                let (Some(lower), Some(upper)) = (
                    with_host(&host.to_ascii_lowercase()),
                    with_host(&host.to_ascii_uppercase()),
                ) else { return Ok(()) };
                let uri: Uri = path.parse().unwrap();
                let a = r.route(&Method::GET, &uri, Version::HTTP_11, &lower).map(|t| t.origin);
                let b = r.route(&Method::GET, &uri, Version::HTTP_11, &upper).map(|t| t.origin);
                prop_assert_eq!(a, b);
            }

            /// Two Host lines are refused whatever they say; HTTP/1.1
            /// without Host is refused; HTTP/1.0 without Host is routed by
            /// the table.
            #[test]
            fn host_must_be_unambiguous(a in host(), b in host(), path in path()) {
                let r = routes(None);
                let (Ok(va), Ok(vb)) = (HeaderValue::from_str(&a), HeaderValue::from_str(&b)) else {
                    return Ok(())
                };
                let uri: Uri = path.parse().unwrap();
                let mut two = HeaderMap::new();
                two.append(header::HOST, va);
                two.append(header::HOST, vb);
                for v in [Version::HTTP_10, Version::HTTP_11, Version::HTTP_2] {
                    prop_assert_eq!(
                        r.route(&Method::GET, &uri, v, &two).unwrap_err(),
                        Refusal::DuplicateHost
                    );
                }
                let none = HeaderMap::new();
                prop_assert_eq!(
                    r.route(&Method::GET, &uri, Version::HTTP_11, &none).unwrap_err(),
                    Refusal::MissingHost
                );
                if let Ok(t) = r.route(&Method::GET, &uri, Version::HTTP_10, &none) {
                    prop_assert!(configured(&r).contains(&t.origin));
                }
            }

            /// Absolute-form targets are never routed over HTTP/1, whatever
            /// host they name.
            #[test]
            fn absolute_form_is_never_routed(host in "[a-z0-9.-]{1,30}", path in path()) {
                let r = routes(None);
                let Ok(uri) = format!("http://{host}{path}").parse::<Uri>() else { return Ok(()) };
                let headers = with_host("localhost").unwrap();
                for v in [Version::HTTP_10, Version::HTTP_11] {
                    prop_assert_eq!(
                        r.route(&Method::GET, &uri, v, &headers).unwrap_err(),
                        Refusal::AbsoluteForm
                    );
                }
            }

            /// Whatever `host_name` accepts is a plain host (name, IPv4 or a
            /// bracketed IPv6 literal): no userinfo, path, space or second
            /// port can ride along into an upstream authority.
            #[test]
            fn accepted_host_names_are_plain(value in "[!-~]{0,40}") {
                if let Some(name) = host_name(&value) {
                    prop_assert!(!name.is_empty());
                    prop_assert!(value.starts_with(name));
                    if let Some(v6) = name.strip_prefix('[') {
                        prop_assert!(v6.trim_end_matches(']').parse::<std::net::Ipv6Addr>().is_ok());
                    } else {
                        prop_assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
                    }
                }
            }
        }
    }
}
