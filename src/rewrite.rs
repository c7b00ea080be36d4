//! Link rewriting (`public_base_url`, off by default).
//!
//! Twilio's JSON carries absolute URLs (`url`, `links`, `meta.*_page_url`)
//! and the helper libraries follow `meta.next_page_url` verbatim, so from a
//! sidecar without other egress page 2 onward would bypass the proxy. With
//! `public_base_url` set, JSON answers have those origins replaced by the
//! proxy's public base URL, and such URLs route back to the same upstream:
//! only origins that the routing maps back are rewritten (the origin that
//! answered, and allowlisted Twilio hosts whose paths the routing table
//! sends to that same host). The replacement works on the JSON text, so key
//! order and formatting stay Twilio's; `Content-Length` follows the new
//! body. Bodies that are not JSON, are compressed with an unknown encoding,
//! or are larger than [`MAX_REWRITE_BODY_BYTES`] pass untouched.

use bytes::Bytes;

use crate::routing::{Origin, Routes};

/// Largest JSON body rewritten (a page of 100 participants is ~70 KiB).
pub const MAX_REWRITE_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Whether a response with these headers is a candidate for rewriting.
pub fn is_json(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.trim().to_ascii_lowercase();
            ct.starts_with("application/json") || ct.contains("+json")
        })
}

/// Rewrite the origins in a JSON text. Returns `None` when nothing changed.
pub fn rewrite_json(
    body: &[u8],
    answered_by: &Origin,
    public: &str,
    routes: &Routes,
) -> Option<Bytes> {
    let text = std::str::from_utf8(body).ok()?;
    let public = public.trim_end_matches('/');
    let mut out = String::with_capacity(text.len() + 256);
    let mut changed = false;
    let mut rest = text;
    // Every JSON string that starts with http:// or https://.
    while let Some(pos) = find_url_start(rest) {
        out.push_str(&rest[..pos]);
        let url_and_more = &rest[pos..];
        let end = url_and_more.find('"').unwrap_or(url_and_more.len());
        let url = &url_and_more[..end];
        match split_origin(url) {
            Some((origin, path)) if maps_back(origin, path, answered_by, routes) => {
                out.push_str(public);
                out.push_str(path);
                changed = true;
            }
            _ => out.push_str(url),
        }
        rest = &url_and_more[end..];
    }
    out.push_str(rest);
    changed.then(|| Bytes::from(out))
}

fn find_url_start(s: &str) -> Option<usize> {
    let a = s.find("\"http://").map(|p| p + 1);
    let b = s.find("\"https://").map(|p| p + 1);
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

/// `https://host:port/path?q` → (`https://host:port`, `/path?q`).
fn split_origin(url: &str) -> Option<(&str, &str)> {
    let after_scheme = url.find("://")? + 3;
    let path_start = url[after_scheme..]
        .find('/')
        .map(|p| p + after_scheme)
        .unwrap_or(url.len());
    Some((&url[..path_start], &url[path_start..]))
}

fn maps_back(origin: &str, path: &str, answered_by: &Origin, routes: &Routes) -> bool {
    if origin.eq_ignore_ascii_case(&answered_by.as_string()) {
        return true;
    }
    let Some(o) = Origin::parse(origin) else {
        return false;
    };
    if !routes.is_allowed_twilio_host(o.authority.host()) || o.scheme != http::uri::Scheme::HTTPS {
        return false;
    }
    // A fixed upstream stands in for every Twilio host; otherwise the
    // table must send this path back to this very host.
    routes.fixed().is_some() || *routes.table_origin(path.split('?').next().unwrap_or("/")) == o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn routes(upstream: Option<&str>) -> Routes {
        let mut c = Config::defaults();
        c.upstream = upstream.map(str::to_string);
        Routes::from_config(&c).unwrap()
    }

    #[test]
    fn rewrites_twilio_origins_that_route_back_and_nothing_else() {
        let r = routes(None);
        let answered = Origin::parse("https://conversations.twilio.com").unwrap();
        let body = br#"{"url":"https://conversations.twilio.com/v1/Conversations/CH1","links":{"x":"https://verify.twilio.com/v2/Services"},"other":"https://example.com/a","meta":{"next_page_url":"https://conversations.twilio.com/v1/Conversations?PageSize=2&Page=1&PageToken=PTCH1","previous_page_url":null},"text":"see https://conversations.twilio.com/v1"}"#;
        let out = rewrite_json(body, &answered, "http://proxy:8080/", &r).unwrap();
        let s = std::str::from_utf8(&out).unwrap();
        assert!(
            s.contains(r#""url":"http://proxy:8080/v1/Conversations/CH1""#),
            "{s}"
        );
        assert!(s.contains(r#""next_page_url":"http://proxy:8080/v1/Conversations?PageSize=2&Page=1&PageToken=PTCH1""#));
        // /v2/Services would not route back to verify.twilio.com: untouched.
        assert!(s.contains("https://verify.twilio.com/v2/Services"));
        assert!(s.contains("https://example.com/a"));
        // Not at the start of a JSON string: untouched.
        assert!(s.contains("see https://conversations.twilio.com/v1"));
        serde_json::from_slice::<serde_json::Value>(&out).unwrap();
    }

    #[test]
    fn fixed_upstream_rewrites_its_own_origin() {
        let r = routes(Some("http://127.0.0.1:4010"));
        let answered = Origin::parse("http://127.0.0.1:4010").unwrap();
        let body = br#"{"meta":{"url":"http://127.0.0.1:4010/v1/Users?PageSize=50"}}"#;
        let out = rewrite_json(body, &answered, "http://127.0.0.1:8080", &r).unwrap();
        assert_eq!(
            &out[..],
            br#"{"meta":{"url":"http://127.0.0.1:8080/v1/Users?PageSize=50"}}"#
        );
        assert!(rewrite_json(br#"{"a":1}"#, &answered, "http://x", &r).is_none());
    }
}
