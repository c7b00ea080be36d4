//! Link rewriting: the cases users met (each rewrote app data before the
//! structural scan), and a property over generated Twilio-shaped answers.

use proptest::prelude::*;

use super::*;
use crate::config::Config;

fn routes(upstream: Option<&str>) -> Routes {
    let mut c = Config::defaults();
    c.upstream = upstream.map(str::to_string);
    Routes::from_config(&c).unwrap()
}

fn proxy() -> Public {
    Public::Host {
        host: HeaderValue::from_static("127.0.0.1:8080"),
        https: false,
    }
}

fn rewritten(body: &str, upstream: Option<&str>) -> String {
    match rewrite_json(body.as_bytes(), &proxy(), &routes(upstream)) {
        Some(b) => String::from_utf8(b.to_vec()).unwrap(),
        None => body.to_string(),
    }
}

#[test]
fn a_users_attributes_holding_twilio_urls_are_left_as_twilio_stored_them() {
    let body = r#"{"sid":"USa","attributes":"{\"avatar\":\"https://media.twilio.com/v1/Avatars/ME1\",\"doc\":\"https://conversations.twilio.com/v1/Services/ISa/Users\"}","friendly_name":"https://conversations.twilio.com/v1/Users","url":"https://conversations.twilio.com/v1/Services/ISa/Users/USa","links":{"user_conversations":"https://conversations.twilio.com/v1/Services/ISa/Users/USa/Conversations"}}"#;
    let out = rewritten(body, None);
    assert_eq!(
        out,
        body.replace(
            r#""url":"https://conversations.twilio.com"#,
            r#""url":"http://127.0.0.1:8080"#
        )
        .replace(
            r#""user_conversations":"https://conversations.twilio.com"#,
            r#""user_conversations":"http://127.0.0.1:8080"#
        )
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["attributes"],
        r#"{"avatar":"https://media.twilio.com/v1/Avatars/ME1","doc":"https://conversations.twilio.com/v1/Services/ISa/Users"}"#
    );
    assert_eq!(
        v["friendly_name"],
        "https://conversations.twilio.com/v1/Users"
    );
}

#[test]
fn an_errors_more_info_keeps_twilios_docs_link() {
    let body = r#"{"code": 20404, "message": "The requested resource /Users/x was not found", "more_info": "https://www.twilio.com/docs/errors/20404", "status": 404}"#;
    assert!(rewrite_json(body.as_bytes(), &proxy(), &routes(None)).is_none());
    // Even when the fixed upstream stands in for every Twilio host.
    assert!(
        rewrite_json(
            body.as_bytes(),
            &proxy(),
            &routes(Some("http://127.0.0.1:4010"))
        )
        .is_none()
    );
}

#[test]
fn links_and_url_inside_a_conversations_attributes_or_other_objects_stay() {
    let body = r#"{"sid":"CHa","attributes":"{\"links\":{\"a\":\"https://conversations.twilio.com/v1/Conversations/CHb\"},\"url\":\"https://conversations.twilio.com/v1/Conversations/CHb\"}","bindings":{"url":"https://conversations.twilio.com/v1/Conversations/CHz","links":{"x":"https://conversations.twilio.com/v1/Conversations/CHz"}},"url":"https://conversations.twilio.com/v1/Conversations/CHa"}"#;
    let out = rewritten(body, Some("http://127.0.0.1:4010"));
    assert_eq!(
        out,
        body.replace(
            r#""url":"https://conversations.twilio.com/v1/Conversations/CHa""#,
            r#""url":"http://127.0.0.1:8080/v1/Conversations/CHa""#
        )
    );
}

#[test]
fn a_list_rewrites_meta_and_each_items_links_and_no_other_array() {
    let body = r#"{"participants": [{"sid": "MBa", "url": "https://conversations.twilio.com/v1/Conversations/CHa/Participants/MBa", "links": {"conversation": "https://conversations.twilio.com/v1/Conversations/CHa"}, "attributes": "{\"url\":\"https://conversations.twilio.com/v1/Users\"}", "n": 1.50e3}], "decoy": [{"url": "https://conversations.twilio.com/v1/Conversations/CHd"}], "meta": {"page": 0, "page_size": 2, "first_page_url": "https://conversations.twilio.com/v1/Conversations/CHa/Participants?PageSize=2&Page=0", "previous_page_url": null, "url": "https://conversations.twilio.com/v1/Conversations/CHa/Participants?PageSize=2&Page=0", "next_page_url": "https://conversations.twilio.com/v1/Conversations/CHa/Participants?PageSize=2&Page=1&PageToken=PTMBa", "key": "participants"}}"#;
    let out = rewritten(body, None);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let p = "http://127.0.0.1:8080";
    assert_eq!(
        v["participants"][0]["url"],
        format!("{p}/v1/Conversations/CHa/Participants/MBa")
    );
    assert_eq!(
        v["participants"][0]["links"]["conversation"],
        format!("{p}/v1/Conversations/CHa")
    );
    assert_eq!(
        v["meta"]["next_page_url"],
        format!("{p}/v1/Conversations/CHa/Participants?PageSize=2&Page=1&PageToken=PTMBa")
    );
    assert!(v["meta"]["first_page_url"].as_str().unwrap().starts_with(p));
    assert!(v["meta"]["url"].as_str().unwrap().starts_with(p));
    assert_eq!(
        v["decoy"][0]["url"],
        "https://conversations.twilio.com/v1/Conversations/CHd"
    );
    assert!(
        out.contains(r#""attributes": "{\"url\":\"https://conversations.twilio.com/v1/Users\"}""#)
    );
    assert!(out.contains(r#""n": 1.50e3"#), "numbers are Twilio's bytes");
    assert_eq!(out.matches(p).count(), 5);
}

#[test]
fn only_links_that_route_back_to_the_host_they_name_are_rewritten() {
    let body = r#"{"url":"https://conversations.twilio.com/v1/Conversations/CH1","links":{"verify":"https://verify.twilio.com/v2/Services","media":"https://media.twilio.com/v1/Avatars/ME1","other":"https://example.com/v1/Conversations","v2":"https://conversations.twilio.com/v2/Profiles"}}"#;
    let out = rewritten(body, None);
    assert_eq!(
        out,
        body.replacen(
            "https://conversations.twilio.com/v1",
            "http://127.0.0.1:8080/v1",
            1
        )
    );
    // A fixed upstream stands in for every Twilio host (not example.com).
    let out = rewritten(body, Some("http://127.0.0.1:4010"));
    assert_eq!(out.matches("http://127.0.0.1:8080/").count(), 4);
    assert!(out.contains("https://example.com/v1/Conversations"));
}

#[test]
fn escapes_in_a_links_path_are_kept_and_an_escaped_origin_is_left_alone() {
    let body = r#"{"url":"https://conversations.twilio.com\/v1\/Conversations\/CH\u00e91","links":{"a":"https:\/\/conversations.twilio.com\/v1\/Conversations","b":"https://conversations.twilio.c\u006fm/v1/Conversations"}}"#;
    assert_eq!(
        rewritten(body, None),
        r#"{"url":"http://127.0.0.1:8080\/v1\/Conversations\/CH\u00e91","links":{"a":"https:\/\/conversations.twilio.com\/v1\/Conversations","b":"https://conversations.twilio.c\u006fm/v1/Conversations"}}"#
    );
}

#[test]
fn bodies_that_are_not_one_json_object_are_not_rewritten() {
    for body in [
        r#"["https://conversations.twilio.com/v1/Users"]"#,
        r#"{"url":"https://conversations.twilio.com/v1/Users""#,
        r#"{"url":"https://conversations.twilio.com/v1/Users"} trailing"#,
        r#"{"url":"https://conversations.twilio.com/v1/Users",}"#,
        "\"https://conversations.twilio.com/v1/Users\"",
        "",
        "{\"url\":\"https://conversations.twilio.com/v1/Users\\",
    ] {
        assert!(
            rewrite_json(body.as_bytes(), &proxy(), &routes(None)).is_none(),
            "{body}"
        );
    }
    // Deep nesting is skipped by counting, not recursion: no limit, no
    // stack to overflow.
    let deep = format!(
        "{{\"a\":{}1{},\"url\":\"https://conversations.twilio.com/v1/Users\"}}",
        "[{\"x\":".repeat(100_000),
        "}]".repeat(100_000)
    );
    assert_eq!(link_spans(deep.as_bytes()).unwrap().len(), 1);
}

#[test]
fn a_fixed_upstream_that_is_twilio_keeps_other_products_links() {
    let body = r#"{"url":"https://conversations.twilio.com/v1/Conversations/CH1","links":{"m":"https://media.twilio.com/v1/Avatars/ME1"}}"#;
    let out = rewritten(body, Some("https://conversations.twilio.com"));
    assert_eq!(
        out,
        body.replacen(
            "https://conversations.twilio.com",
            "http://127.0.0.1:8080",
            1
        )
    );
}

fn target(host_routed: bool) -> Target {
    Target {
        origin: crate::routing::Origin::parse("https://conversations.twilio.com").unwrap(),
        class: crate::metrics::RouteClass::Conversations,
        host_routed,
    }
}

fn origin_for(headers: &[(&str, &str)], uri: &str, host_routed: bool) -> Option<String> {
    let mut h = http::HeaderMap::new();
    for (k, v) in headers {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let public = LinkBase::Request.for_request(&target(host_routed), &h, &uri.parse().unwrap())?;
    let mut out = Vec::new();
    public.write_origin(&mut out);
    Some(String::from_utf8(out).unwrap())
}

#[test]
fn request_mode_links_to_the_origin_the_client_used() {
    assert_eq!(
        origin_for(&[("host", "twilio-proxy:8080")], "/v1/Users", false).as_deref(),
        Some("http://twilio-proxy:8080")
    );
    // Behind a TLS-terminating ingress.
    assert_eq!(
        origin_for(
            &[
                ("host", "10.0.0.7:8080"),
                ("x-forwarded-host", "twilio-proxy.corp.example, inner"),
                ("x-forwarded-proto", "https")
            ],
            "/v1/Users",
            false
        )
        .as_deref(),
        Some("https://twilio-proxy.corp.example")
    );
    // A forwarded host that is no host is ignored; an odd proto too.
    assert_eq!(
        origin_for(
            &[
                ("host", "proxy:8080"),
                ("x-forwarded-host", "a\"b"),
                ("x-forwarded-proto", "gopher")
            ],
            "/v1/Users",
            false
        )
        .as_deref(),
        Some("http://proxy:8080")
    );
    // HTTP/2 without Host: the :authority, only when a plain host[:port].
    assert_eq!(
        origin_for(&[], "http://localhost:8080/v1/Users", false).as_deref(),
        Some("http://localhost:8080")
    );
    assert_eq!(
        origin_for(&[], "http://user:pw@localhost:8080/v1/Users", false),
        None
    );
    // Host-routing keeps Twilio's links.
    assert_eq!(
        origin_for(&[("host", "conversations.twilio.com")], "/v1/Users", true),
        None
    );
    assert!(
        LinkBase::Off
            .for_request(
                &target(false),
                &http::HeaderMap::new(),
                &"/".parse().unwrap()
            )
            .is_none()
    );
}

#[test]
fn a_fixed_public_url_and_a_request_host_are_written_as_origins() {
    let body = r#"{"meta":{"url":"http://127.0.0.1:4010/v1/Users?PageSize=50"}}"#;
    let r = routes(Some("http://127.0.0.1:4010"));
    let fixed = Public::Fixed("https://proxy.example:8443".into());
    assert_eq!(
        &rewrite_json(body.as_bytes(), &fixed, &r).unwrap()[..],
        br#"{"meta":{"url":"https://proxy.example:8443/v1/Users?PageSize=50"}}"#
    );
    let host = Public::Host {
        host: HeaderValue::from_static("twilio-proxy:8080"),
        https: false,
    };
    assert_eq!(
        &rewrite_json(body.as_bytes(), &host, &r).unwrap()[..],
        br#"{"meta":{"url":"http://twilio-proxy:8080/v1/Users?PageSize=50"}}"#
    );
    assert!(rewrite_json(br#"{"a":1}"#, &host, &r).is_none());
}

// ---------------------------------------------------------------------------
// The property: for generated Twilio-shaped answers, with arbitrary strings
// in every field an app writes, the rewritten body is byte for byte the
// original with the origins of the routable link fields replaced, and
// nothing else.
// ---------------------------------------------------------------------------

const TWILIO: &str = "https://conversations.twilio.com";

/// A value of a generated answer.
#[derive(Debug, Clone)]
enum V {
    /// Any string the app or Twilio wrote that is not a link field, whatever
    /// it holds: never changed.
    Str(String),
    /// A link field: `origin` + `path`; rewritten iff `routes_back`.
    Link {
        origin: &'static str,
        path: String,
        routes_back: bool,
    },
    Raw(&'static str),
    Obj(Vec<(String, V)>),
    Arr(Vec<V>),
}

/// How the generated text is laid out.
#[derive(Debug, Clone, Copy)]
struct Style {
    ws: &'static str,
    /// `\uXXXX` for every non-ASCII character, `\/` for `/` (as some JSON
    /// writers do).
    escape_all: bool,
}

fn quote(s: &str, style: Style) -> String {
    let plain = serde_json::to_string(s).unwrap();
    if !style.escape_all {
        return plain;
    }
    let mut out = String::new();
    for c in plain.chars() {
        match c {
            '/' => out.push_str("\\/"),
            c if c.is_ascii() => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
    }
    out
}

fn render(v: &V, style: Style, public: Option<&str>, out: &mut String) {
    let ws = style.ws;
    match v {
        V::Str(s) => out.push_str(&quote(s, style)),
        V::Link {
            origin,
            path,
            routes_back,
        } => {
            let origin = match public {
                Some(p) if *routes_back => p,
                _ => origin,
            };
            // The origin is written plainly (Twilio never escapes it); the
            // path in the answer's style.
            let path = quote(path, style);
            out.push('"');
            out.push_str(origin);
            out.push_str(&path[1..]);
        }
        V::Raw(r) => out.push_str(r),
        V::Obj(members) => {
            out.push('{');
            for (i, (k, v)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(ws);
                out.push_str(&quote(k, style));
                out.push(':');
                out.push_str(ws);
                render(v, style, public, out);
            }
            out.push_str(ws);
            out.push('}');
        }
        V::Arr(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                    out.push_str(ws);
                }
                render(v, style, public, out);
            }
            out.push(']');
        }
    }
}

fn twilio_url() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(format!("{TWILIO}/v1/Conversations/CH1")),
        Just("https://media.twilio.com/v1/Avatars/ME1".to_string()),
        Just("https://www.twilio.com/docs/errors/20404".to_string()),
        "[a-z]{1,8}".prop_map(|s| format!("{TWILIO}/v1/Services/IS1/Users/{s}")),
    ]
}

/// What an app may write into attributes, bodies and names.
fn free_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ -~]{0,24}",
        twilio_url(),
        twilio_url().prop_map(|u| format!("see \"{u}\" \\ here")),
        (twilio_url(), twilio_url()).prop_map(|(a, b)| {
            serde_json::json!({"url": a, "links": {"self": b}, "meta": {"next_page_url": a}})
                .to_string()
        }),
        "[\u{e9}\u{4e16}\u{1f600}a-z]{0,6}",
    ]
}

fn link() -> impl Strategy<Value = V> {
    let paths = prop_oneof![
        Just("/v1/Conversations/CH1/Participants/MB1".to_string()),
        Just("/v1/Services/IS1/Users/US1?PageSize=2&Page=1&PageToken=PT\u{e9}".to_string()),
        "[A-Za-z0-9]{1,10}".prop_map(|s| format!("/v1/Users/{s}")),
    ];
    prop_oneof![
        paths.prop_map(|path| V::Link {
            origin: TWILIO,
            path,
            routes_back: true
        }),
        Just(V::Link {
            origin: "https://verify.twilio.com",
            path: "/v2/Services/VA1".into(),
            routes_back: false
        }),
        Just(V::Link {
            origin: "https://example.com",
            path: "/v1/Conversations/CH1".into(),
            routes_back: false
        }),
        Just(V::Link {
            origin: TWILIO,
            path: "/v2/Profiles".into(),
            routes_back: false
        }),
    ]
}

/// App-written and other non-link fields of a resource, some of them shaped
/// like links (a nested `url`, a `links` object inside another object).
fn other_fields() -> impl Strategy<Value = Vec<(String, V)>> {
    let name = prop_oneof![
        Just("attributes"),
        Just("friendly_name"),
        Just("identity"),
        Just("body"),
        Just("unique_name"),
        Just("more_info"),
        Just("author"),
    ];
    let plain = (name, free_text()).prop_map(|(k, v)| (k.to_string(), V::Str(v)));
    let decoy = (twilio_url(), twilio_url()).prop_map(|(a, b)| {
        (
            "messaging_binding".to_string(),
            V::Obj(vec![
                ("url".into(), V::Str(a)),
                ("links".into(), V::Obj(vec![("x".into(), V::Str(b))])),
                ("n".into(), V::Raw("-0.5e-3")),
            ]),
        )
    });
    prop::collection::vec(prop_oneof![3 => plain, 1 => decoy], 0..5)
}

fn resource() -> impl Strategy<Value = V> {
    (
        other_fields(),
        prop::option::of(link()),
        prop::collection::vec(("[a-z_]{1,12}", link()), 0..3),
    )
        .prop_map(|(mut fields, url, links)| {
            fields.insert(0, ("sid".into(), V::Str("MB1".into())));
            if let Some(u) = url {
                fields.push(("url".into(), u));
            }
            if !links.is_empty() {
                fields.push(("links".into(), V::Obj(links)));
            }
            V::Obj(fields)
        })
}

fn answer() -> impl Strategy<Value = V> {
    let list = (
        prop_oneof![Just("participants"), Just("conversations"), Just("users")],
        prop::collection::vec(resource(), 0..4),
        link(),
        link(),
        prop::option::of(link()),
        prop::collection::vec(twilio_url(), 0..2),
        any::<bool>(),
    )
        .prop_map(|(key, items, first, url, next, decoys, meta_first)| {
            let meta = V::Obj(vec![
                ("page".into(), V::Raw("0")),
                ("page_size".into(), V::Raw("2")),
                ("first_page_url".into(), first),
                ("previous_page_url".into(), V::Raw("null")),
                ("url".into(), url),
                ("next_page_url".into(), next.unwrap_or(V::Raw("null"))),
                ("key".into(), V::Str(key.into())),
            ]);
            let decoy = V::Arr(
                decoys
                    .into_iter()
                    .map(|u| V::Obj(vec![("url".into(), V::Str(u))]))
                    .collect(),
            );
            let mut members = vec![
                (key.to_string(), V::Arr(items)),
                ("not_the_list".into(), decoy),
            ];
            let meta = ("meta".to_string(), meta);
            if meta_first {
                members.insert(0, meta);
            } else {
                members.push(meta);
            }
            V::Obj(members)
        });
    prop_oneof![resource(), list]
}

fn style() -> impl Strategy<Value = Style> {
    (
        prop_oneof![Just(""), Just(" "), Just("\n  ")],
        any::<bool>(),
    )
        .prop_map(|(ws, escape_all)| Style { ws, escape_all })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn only_the_origins_of_routable_link_fields_change(doc in answer(), style in style()) {
        let r = routes(None);
        let mut original = String::new();
        render(&doc, style, None, &mut original);
        let mut expected = String::new();
        render(&doc, style, Some("http://127.0.0.1:8080"), &mut expected);
        let out = rewrite_json(original.as_bytes(), &proxy(), &r);
        let got = out.as_deref().unwrap_or(original.as_bytes());
        prop_assert_eq!(std::str::from_utf8(got).unwrap(), expected.as_str());
        prop_assert_eq!(out.is_some(), original != expected);
        // Still JSON, and every rewritten link routes back to the upstream
        // its original named.
        serde_json::from_slice::<serde_json::Value>(got).unwrap();
        for span in link_spans(got).unwrap() {
            let raw = std::str::from_utf8(&got[span]).unwrap();
            if let Some(path) = raw.strip_prefix("http://127.0.0.1:8080") {
                let path = decode_json_string(path.as_bytes()).unwrap();
                let path = path.split('?').next().unwrap();
                prop_assert_eq!(r.table_origin(path).as_string(), TWILIO);
            }
        }
    }
}

#[test]
fn a_tls_listener_links_to_https_whatever_the_headers_say() {
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::HOST,
        HeaderValue::from_static("proxy.payments:8443"),
    );
    h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    let uri = "/v1/Users".parse().unwrap();
    let origin = |links: LinkBase| {
        let public = links.for_request(&target(false), &h, &uri)?;
        let mut out = Vec::new();
        public.write_origin(&mut out);
        Some(String::from_utf8(out).unwrap())
    };
    assert_eq!(
        origin(LinkBase::Request.on_tls_listener(true)).as_deref(),
        Some("https://proxy.payments:8443")
    );
    assert_eq!(
        origin(LinkBase::Request.on_tls_listener(false)).as_deref(),
        Some("http://proxy.payments:8443")
    );
    // Host-routing and the other settings are unchanged by TLS.
    assert!(
        LinkBase::Request
            .on_tls_listener(true)
            .for_request(&target(true), &h, &uri)
            .is_none()
    );
    assert!(origin(LinkBase::Off.on_tls_listener(true)).is_none());
}

#[test]
fn json_answers_are_known_by_their_content_type_in_any_case() {
    let with = |ct: &[u8]| {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_bytes(ct).unwrap(),
        );
        is_json(&h)
    };
    for yes in [
        &b"application/json"[..],
        b"application/json; charset=utf-8",
        b"Application/JSON;charset=UTF-8",
        b"  application/json  ",
        b"application/problem+json",
        b"application/vnd.twilio+JSON; v=1",
    ] {
        assert!(with(yes), "{}", String::from_utf8_lossy(yes));
    }
    for no in [
        &b"application/xml"[..],
        b"text/plain; charset=utf-8",
        b"application/jso",
        b"",
        b"application/json\xff",
    ] {
        assert!(!with(no), "{}", String::from_utf8_lossy(no));
    }
    assert!(!is_json(&http::HeaderMap::new()), "no Content-Type");
}
