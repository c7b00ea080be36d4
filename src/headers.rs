//! Header hygiene: what a proxy must not forward (RFC 9110 §7.6.1).
//!
//! Hop-by-hop fields describe one connection, not the message: `Connection`,
//! every field `Connection` names, `Keep-Alive`, `Proxy-Connection`, `TE`,
//! `Trailer`, `Transfer-Encoding` and `Upgrade`. They are removed in both
//! directions. Everything else is end-to-end and passes untouched, every
//! value of a repeated field in its original order.
//!
//! Also here: which request framing the proxy accepts at all. The only
//! transfer coding it can forward faithfully is `chunked` (hyper decodes it,
//! the upstream client re-frames the body): any other coding would be
//! silently dropped, so such a request is refused (501, RFC 9112 §6.1).

use http::HeaderMap;
use http::header::{self, HeaderName};

const KEEP_ALIVE: &str = "keep-alive";
const PROXY_CONNECTION: &str = "proxy-connection";

/// Remove every hop-by-hop field from `headers`, including the ones listed
/// in `Connection`.
///
/// `Proxy-Authorization`/`Proxy-Authenticate` are consumed by a proxy hop too
/// (RFC 9110 §11.7) and are never passed on.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names first, noting which hop-by-hop fields are
    // present: most messages carry none, or only `Connection: keep-alive`,
    // and then only what is there is looked up and removed. (The check is
    // by name, so it also covers every field a `Connection` header could
    // list: there is nothing to list without a `Connection` header.)
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name.as_str()) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // A message with both Transfer-Encoding and Content-Length is framed by
    // Transfer-Encoding (RFC 9112 §6.3); forwarding the stale Content-Length
    // without it would let the two sides disagree on where the body ends.
    if present & (1 << TRANSFER_ENCODING_INDEX) != 0 {
        headers.remove(header::CONTENT_LENGTH);
    }
    // Fields `Connection` lists beyond the fixed ones (rare: allocated then
    // only). A listed fixed name is removed below if present.
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|name| !name.is_empty() && hop_by_hop_index_ignore_case(name).is_none())
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for (i, name) in HOP_BY_HOP_NAMES.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(*name);
        }
    }
}

/// Every fixed hop-by-hop name, lower case as `HeaderName`s are.
const HOP_BY_HOP_NAMES: [&str; 9] = [
    "connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    KEEP_ALIVE,
    PROXY_CONNECTION,
];
const TRANSFER_ENCODING_INDEX: usize = 3;

/// The index of a (lower-case) name in [`HOP_BY_HOP_NAMES`].
fn hop_by_hop_index(name: &str) -> Option<usize> {
    HOP_BY_HOP_NAMES.iter().position(|n| *n == name)
}

/// [`hop_by_hop_index`] for a name as a `Connection` value spells it.
fn hop_by_hop_index_ignore_case(name: &str) -> Option<usize> {
    HOP_BY_HOP_NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(name))
}

/// Whether a request's `Transfer-Encoding` names anything but a single
/// `chunked` coding (`gzip, chunked`, `chunked, chunked`, `identity`...).
/// No `Transfer-Encoding` at all is fine.
pub fn has_unsupported_transfer_coding(headers: &HeaderMap) -> bool {
    let mut codings = 0usize;
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        let Ok(v) = value.to_str() else { return true };
        for coding in v.split(',') {
            let coding = coding.trim();
            if coding.is_empty() {
                continue;
            }
            codings += 1;
            if codings > 1 || !coding.eq_ignore_ascii_case("chunked") {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn strips_fixed_and_listed_names_keeps_the_rest() {
        let mut h = HeaderMap::new();
        h.append(
            "connection",
            HeaderValue::from_static("close, X-Secret-Hop"),
        );
        h.append("connection", HeaderValue::from_static("x-other"));
        h.append("x-secret-hop", HeaderValue::from_static("1"));
        h.append("x-other", HeaderValue::from_static("1"));
        h.append("keep-alive", HeaderValue::from_static("timeout=5"));
        h.append("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.append("te", HeaderValue::from_static("trailers"));
        h.append("trailer", HeaderValue::from_static("x-t"));
        h.append("transfer-encoding", HeaderValue::from_static("chunked"));
        h.append("upgrade", HeaderValue::from_static("h2c"));
        h.append("x-twilio-webhook-enabled", HeaderValue::from_static("true"));
        h.append("x-multi", HeaderValue::from_static("a"));
        h.append("x-multi", HeaderValue::from_static("b"));
        strip_hop_by_hop(&mut h);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-twilio-webhook-enabled", "x-multi"]);
        let mut both = HeaderMap::new();
        both.append("transfer-encoding", HeaderValue::from_static("chunked"));
        both.append("content-length", HeaderValue::from_static("5"));
        strip_hop_by_hop(&mut both);
        assert!(
            both.is_empty(),
            "a Content-Length beside Transfer-Encoding must not be forwarded"
        );
        let multi: Vec<&str> = h
            .get_all("x-multi")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(multi, vec!["a", "b"]);
    }

    #[test]
    fn only_a_single_chunked_coding_is_supported() {
        let te = |values: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append("transfer-encoding", HeaderValue::from_static(v));
            }
            has_unsupported_transfer_coding(&h)
        };
        assert!(!te(&[]));
        assert!(!te(&["chunked"]));
        assert!(!te(&["Chunked"]));
        assert!(!te(&[" chunked "]));
        assert!(te(&["gzip, chunked"]));
        assert!(te(&["gzip", "chunked"]));
        assert!(te(&["chunked, chunked"]));
        assert!(te(&["identity"]));
        assert!(te(&["deflate"]));
    }
}
