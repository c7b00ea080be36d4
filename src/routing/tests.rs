//! Tests of the route table: every Conversations path class, the reserved
//! prefixes, and property tests that no path panics or escapes its class.

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

fn with_proxy_hosts(patterns: &[&str]) -> Routes {
    let mut c = Config::defaults();
    c.proxy_hosts = patterns.iter().map(|p| p.to_string()).collect();
    c.validate().unwrap();
    Routes::from_config(&c).unwrap()
}

#[test]
fn cluster_names_are_own_names_when_configured() {
    let none = with_proxy_hosts(&[]);
    let r = with_proxy_hosts(&[
        "twilio-repair-proxy.payments",
        "twilio-repair-proxy.payments.svc",
    ]);
    let api = Ok("https://api.twilio.com".to_string());
    for host in [
        "twilio-repair-proxy.payments",
        "twilio-repair-proxy.payments:8443",
        "Twilio-Repair-Proxy.Payments.SVC",
        "twilio-repair-proxy.payments.svc.",
    ] {
        assert_eq!(go(&r, "/2010-04-01/x", Some(host)), api, "{host}");
        assert_eq!(
            go(&none, "/2010-04-01/x", Some(host)),
            Err(Refusal::HostNotAllowed),
            "{host} without the pattern"
        );
    }
    // Exact: neither another namespace nor a longer name.
    for host in [
        "twilio-repair-proxy.billing",
        "twilio-repair-proxy.payments.svc.cluster.local",
        "x.twilio-repair-proxy.payments",
    ] {
        assert_eq!(
            go(&r, "/2010-04-01/x", Some(host)),
            Err(Refusal::HostNotAllowed),
            "{host}"
        );
    }
}

#[test]
fn ip_literals_are_own_names_inside_a_configured_range() {
    let r = with_proxy_hosts(&["10.0.0.0/8", "fd00:1::/32", "192.168.1.7"]);
    let api = Ok("https://api.twilio.com".to_string());
    for host in [
        "10.96.0.12",
        "10.255.255.255:8080",
        "[fd00:1:2::3]",
        "[fd00:1::1]:8443",
        "[::ffff:10.1.2.3]",
        "192.168.1.7",
    ] {
        assert_eq!(go(&r, "/2010-04-01/x", Some(host)), api, "{host}");
    }
    for host in ["11.0.0.1", "192.168.1.8", "[fd00:2::1]", "172.16.0.1:80"] {
        assert_eq!(
            go(&r, "/2010-04-01/x", Some(host)),
            Err(Refusal::HostNotAllowed),
            "{host}"
        );
    }
    // Without a range only loopback and the listen address are own IPs.
    let none = with_proxy_hosts(&[]);
    assert_eq!(
        go(&none, "/2010-04-01/x", Some("10.96.0.12")),
        Err(Refusal::HostNotAllowed)
    );
    assert_eq!(go(&none, "/2010-04-01/x", Some("127.0.0.1:8080")), api);
}

#[test]
fn ranges_parse_strictly() {
    use super::cidr::{CidrError, IpNet};
    let net = IpNet::parse("0.0.0.0/0").unwrap();
    assert!(net.contains("203.0.113.9".parse().unwrap()));
    assert!(
        !net.contains("::1".parse().unwrap()),
        "v4 range, v6 address"
    );
    assert!(
        IpNet::parse("::/0")
            .unwrap()
            .contains("fd00::1".parse().unwrap())
    );
    assert!(
        IpNet::parse("10.0.0.7/32")
            .unwrap()
            .contains("10.0.0.7".parse().unwrap())
    );
    assert_eq!(
        IpNet::parse("10.0.0.1/8"),
        Err(CidrError::HostBits {
            network: "10.0.0.0".parse().unwrap(),
            prefix: 8
        })
    );
    assert_eq!(
        IpNet::parse("10.0.0.0/33"),
        Err(CidrError::Prefix { max: 32 })
    );
    assert_eq!(
        IpNet::parse("fd00::/129"),
        Err(CidrError::Prefix { max: 128 })
    );
    assert_eq!(
        IpNet::parse("10.0.0.0/+8"),
        Err(CidrError::Prefix { max: 32 })
    );
    assert_eq!(
        IpNet::parse("10.0.0.0/"),
        Err(CidrError::Prefix { max: 32 })
    );
    assert_eq!(IpNet::parse("10.0.0/8"), Err(CidrError::Address));
    assert_eq!(IpNet::parse("example/8"), Err(CidrError::Address));
}

#[test]
fn validation_accepts_cluster_forms_and_names_a_bad_range() {
    let check = |key: &str, patterns: &[&str]| {
        let mut c = Config::defaults();
        let list = patterns.iter().map(|p| p.to_string()).collect();
        match key {
            "proxy_hosts" => c.proxy_hosts = list,
            _ => c.allowed_hosts = list,
        }
        c.validate().map_err(|e| e.to_string())
    };
    check(
        "proxy_hosts",
        &[
            "twilio-repair-proxy.payments",
            "twilio-repair-proxy.payments.svc",
            "10.0.0.0/8",
            "fd00::/8",
            "[fd00::1]",
            "10.0.0.7",
        ],
    )
    .unwrap();
    let e = check("proxy_hosts", &["10.0.0.1/8"]).unwrap_err();
    assert!(e.contains("proxy_hosts") && e.contains("10.0.0.0/8"), "{e}");
    let e = check("proxy_hosts", &["10.0.0.0/40"]).unwrap_err();
    assert!(e.contains("prefix length"), "{e}");
    let e = check("proxy_hosts", &["http://x.payments"]).unwrap_err();
    assert!(e.contains("proxy_hosts"), "{e}");
    // A range never picks an upstream: not an `allowed_hosts` form.
    let e = check("allowed_hosts", &["10.0.0.0/8"]).unwrap_err();
    assert!(e.contains("allowed_hosts"), "{e}");
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
