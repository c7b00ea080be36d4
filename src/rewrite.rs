//! Link rewriting (`public_base_url`, `"request"` by default): the link
//! fields Twilio writes into its JSON answers point back at the proxy, so
//! that the helper libraries' pagination (which follows
//! `meta.next_page_url` verbatim) never leaves it.
//!
//! # What is rewritten, and what never is
//!
//! Only the link fields Twilio itself writes, found by the answer's
//! *structure*, never by searching its text ([`link_spans`]):
//! - a resource's top-level `url`, and the string values of its top-level
//!   `links` object;
//! - the `meta` object's `url`, `first_page_url`, `previous_page_url` and
//!   `next_page_url`;
//! - in a list answer, the same `url` and `links` values of each item of the
//!   array that `meta.key` names (`"key": "participants"`).
//!
//! Everything else is never touched, whatever it contains: `attributes`,
//! `body`, `friendly_name`, `identity`, messaging bindings, an error's
//! `more_info`, a `url` nested anywhere else. Of a link, only its origin
//! (`https://conversations.twilio.com`) is replaced ([`rewrite_json`]), and
//! only when its path routes back to that same upstream; every other byte of
//! the body, key order, spacing, escapes and numbers included, is Twilio's
//! (the splice copies the bytes around the origins, nothing is re-serialised).
//!
//! # What does not belong here
//!
//! Which origin an answer's links get (the client's `Host`, a fixed URL, or
//! none for a request that named a Twilio host) is [`Public`], decided per
//! request by [`LinkBase::for_request`]; buffering and `Content-Length` are
//! the proxy's (`crate::proxy`). Bodies that are not JSON, are compressed
//! with an unknown encoding, have no declared length, or are larger than
//! [`MAX_REWRITE_BODY_BYTES`] pass untouched.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;

use crate::config::PublicBaseUrl;
use crate::routing::{Origin, Routes, Target};

/// Largest JSON body rewritten (a page of 100 participants is ~70 KiB).
pub const MAX_REWRITE_BODY_BYTES: usize = 4 * 1024 * 1024;

/// The link rewriting setting, as the proxy applies it.
#[derive(Debug, Clone)]
pub enum LinkBase {
    /// `public_base_url = "off"`: answers pass untouched.
    Off,
    /// `public_base_url = "request"`: the origin the client used.
    Request,
    /// `public_base_url = "request"` on a TLS listener
    /// (`crate::server::tls`): the client's host, always with `https`.
    RequestTls,
    /// An explicit origin (no trailing `/`).
    Fixed(Arc<str>),
}

impl LinkBase {
    pub fn from_config(setting: &PublicBaseUrl) -> LinkBase {
        match setting {
            PublicBaseUrl::Off => LinkBase::Off,
            PublicBaseUrl::Request => LinkBase::Request,
            PublicBaseUrl::Fixed(url) => LinkBase::Fixed(url.trim_end_matches('/').into()),
        }
    }

    /// The same setting for a listener that serves TLS: the request's
    /// origin is `https` whatever `X-Forwarded-Proto` says. Decided once
    /// per worker, so the request path pays nothing for it.
    pub fn on_tls_listener(self, tls: bool) -> LinkBase {
        match self {
            LinkBase::Request if tls => LinkBase::RequestTls,
            other => other,
        }
    }

    /// The origin this request's answer links to, if any.
    ///
    /// With `request`: the scheme and host the client used. The host is the
    /// first `X-Forwarded-Host` (set by an ingress or load balancer in
    /// front), else the `Host` routing accepted as a name of this proxy,
    /// else the HTTP/2 `:authority`; the scheme is the first
    /// `X-Forwarded-Proto` when it is `http` or `https`, else `http`; on a
    /// TLS listener ([`LinkBase::RequestTls`]) always `https`. Every host value must be a valid
    /// `host[:port]` (routing's own check), so nothing else ever reaches an
    /// answer. A request whose `Host` named a Twilio host (Host-routing)
    /// gets Twilio's links untouched: it reached Twilio's name, and so will
    /// its next page.
    pub fn for_request(
        &self,
        target: &Target,
        headers: &http::HeaderMap,
        uri: &http::Uri,
    ) -> Option<Public> {
        match self {
            LinkBase::Off => None,
            LinkBase::Fixed(origin) => Some(Public::Fixed(origin.clone())),
            LinkBase::Request | LinkBase::RequestTls if target.host_routed => None,
            LinkBase::Request | LinkBase::RequestTls => {
                let valid = |v: &str| crate::routing::is_host_and_port(v);
                static X_FORWARDED_HOST: http::HeaderName =
                    http::HeaderName::from_static("x-forwarded-host");
                static X_FORWARDED_PROTO: http::HeaderName =
                    http::HeaderName::from_static("x-forwarded-proto");
                let first = |name: &http::HeaderName| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.split(',').next())
                        .map(str::trim)
                };
                let host = first(&X_FORWARDED_HOST)
                    .filter(|h| valid(h))
                    .and_then(|h| HeaderValue::from_str(h).ok())
                    .or_else(|| headers.get(http::header::HOST).cloned())
                    .or_else(|| {
                        uri.authority()
                            .map(|a| a.as_str())
                            .filter(|a| valid(a))
                            .and_then(|a| HeaderValue::from_str(a).ok())
                    })?;
                let https = matches!(self, LinkBase::RequestTls)
                    || first(&X_FORWARDED_PROTO).is_some_and(|p| p.eq_ignore_ascii_case("https"));
                Some(Public::Host { host, https })
            }
        }
    }
}

/// The origin one answer's links are rewritten to.
#[derive(Debug, Clone)]
pub enum Public {
    /// `public_base_url` as configured.
    Fixed(Arc<str>),
    /// A host value routing's check accepted (host and port characters
    /// only), with the scheme the client used.
    Host { host: HeaderValue, https: bool },
}

impl Public {
    fn write_origin(&self, out: &mut Vec<u8>) {
        match self {
            Public::Fixed(origin) => out.extend_from_slice(origin.as_bytes()),
            Public::Host { host, https } => {
                out.extend_from_slice(if *https { b"https://" } else { b"http://" });
                out.extend_from_slice(host.as_bytes());
            }
        }
    }
}

/// Whether a response with these headers is a candidate for rewriting.
/// Compared without changing case in a copy: this runs for every answer
/// while links are rewritten (the shipped default), and a lowercased copy
/// cost an allocation and ~400 instructions per non-JSON answer
/// (`bench/instructions.sh`, mode `xml`).
pub fn is_json(headers: &http::HeaderMap) -> bool {
    const JSON: &[u8] = b"application/json";
    const SUFFIX: &[u8] = b"+json";
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.trim().as_bytes();
            ct.get(..JSON.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(JSON))
                || ct
                    .windows(SUFFIX.len())
                    .any(|w| w.eq_ignore_ascii_case(SUFFIX))
        })
}

/// Rewrite the origins of the link fields of a JSON answer (see the module
/// doc). Returns `None` when nothing changed (or the body is not a JSON
/// object).
pub fn rewrite_json(body: &[u8], public: &Public, routes: &Routes) -> Option<Bytes> {
    let spans = link_spans(body)?;
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    for span in spans {
        let Some(origin_len) = routable_origin(&body[span.clone()], routes) else {
            continue;
        };
        let out = out.get_or_insert_with(|| Vec::with_capacity(body.len() + 256));
        out.extend_from_slice(&body[copied..span.start]);
        public.write_origin(out);
        copied = span.start + origin_len;
    }
    let mut out = out?;
    out.extend_from_slice(&body[copied..]);
    Some(Bytes::from(out))
}

/// The length of the origin at the start of a link's raw (still escaped)
/// text, when the link routes back to the upstream it names: through the
/// routing table to that very origin; with a fixed `--upstream`, when it
/// names that upstream, or an allowlisted Twilio host over https while the
/// fixed upstream is no Twilio host itself (an emulator or test double,
/// which stands in for all of them).
fn routable_origin(raw: &[u8], routes: &Routes) -> Option<usize> {
    let after_scheme = if raw.starts_with(b"https://") {
        8
    } else if raw.starts_with(b"http://") {
        7
    } else {
        return None;
    };
    let origin_len = raw[after_scheme..]
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#' | b'\\'))
        .map_or(raw.len(), |p| p + after_scheme);
    // An escape ends the origin (`\/`, the path's first slash escaped);
    // one inside the origin makes it unparsable, and the link is left alone.
    let rest = &raw[origin_len..];
    if rest.starts_with(b"\\") && !rest.starts_with(b"\\/") {
        return None;
    }
    let origin = Origin::parse(std::str::from_utf8(&raw[..origin_len]).ok()?)?;
    let decoded;
    let path_and_query = if rest.contains(&b'\\') {
        decoded = decode_json_string(rest)?;
        decoded.as_str()
    } else {
        std::str::from_utf8(rest).ok()?
    };
    let path = path_and_query
        .split(['?', '#'])
        .next()
        .filter(|p| !p.is_empty())
        .unwrap_or("/");
    let same = |a: &Origin, b: &Origin| a.scheme == b.scheme && a.authority == b.authority;
    let routes_back = match routes.fixed() {
        Some(fixed) => {
            same(&origin, fixed)
                || (origin.scheme == http::uri::Scheme::HTTPS
                    && routes.is_allowed_twilio_host(origin.authority.host())
                    && !routes.is_allowed_twilio_host(fixed.authority.host()))
        }
        None => same(&origin, routes.table_origin(path)),
    };
    routes_back.then_some(origin_len)
}

/// The text of a JSON string's raw content (between its quotes).
fn decode_json_string(raw: &[u8]) -> Option<String> {
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    serde_json::from_slice(&quoted).ok()
}

/// The byte ranges (inside the quotes, still escaped) of the string values
/// that are Twilio's link fields, in body order; `None` when the body is not
/// one JSON object.
pub fn link_spans(body: &[u8]) -> Option<Vec<Range<usize>>> {
    let mut s = Scan { b: body, i: 0 };
    let mut spans = Vec::new();
    // Links of items of each top-level array, kept until `meta.key` says
    // which array is the list.
    let mut items: Vec<(Range<usize>, Vec<Range<usize>>)> = Vec::new();
    let mut list_key: Option<Range<usize>> = None;
    s.object(|s, key| match &body[key.clone()] {
        b"url" => s.link(&mut spans),
        b"links" => s.links(&mut spans),
        b"meta" if s.peek() == Some(b'{') => s.object(|s, k| match &body[k] {
            b"url" | b"first_page_url" | b"previous_page_url" | b"next_page_url" => {
                s.link(&mut spans)
            }
            b"key" if s.peek() == Some(b'"') => {
                list_key = Some(s.string()?);
                Some(())
            }
            _ => s.skip_value(),
        }),
        _ if s.peek() == Some(b'[') => {
            let mut found = Vec::new();
            s.array(|s| {
                if s.peek() == Some(b'{') {
                    s.object(|s, k| match &body[k] {
                        b"url" => s.link(&mut found),
                        b"links" => s.links(&mut found),
                        _ => s.skip_value(),
                    })
                } else {
                    s.skip_value()
                }
            })?;
            items.push((key, found));
            Some(())
        }
        _ => s.skip_value(),
    })?;
    s.ws();
    if s.i != body.len() {
        return None;
    }
    if let Some(list) = list_key {
        let name = &body[list];
        for (key, found) in items {
            if &body[key] == name {
                spans.extend(found);
            }
        }
        spans.sort_by_key(|r| r.start);
    }
    Some(spans)
}

/// A forward-only JSON scanner over raw bytes: just enough structure to
/// find link fields, nothing decoded.
struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl Scan<'_> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// A string; returns the range of its raw content.
    fn string(&mut self) -> Option<Range<usize>> {
        self.eat(b'"')?;
        let start = self.i;
        loop {
            let at = self.i + memchr::memchr2(b'"', b'\\', &self.b[self.i..])?;
            if self.b[at] == b'\\' {
                self.i = at + 2;
                if self.i > self.b.len() {
                    return None;
                }
            } else {
                self.i = at + 1;
                return Some(start..at);
            }
        }
    }

    /// A link field's value: its span when it is a string.
    fn link(&mut self, spans: &mut Vec<Range<usize>>) -> Option<()> {
        if self.peek() == Some(b'"') {
            spans.push(self.string()?);
            Some(())
        } else {
            self.skip_value()
        }
    }

    /// A `links` value: the spans of its string members when an object.
    fn links(&mut self, spans: &mut Vec<Range<usize>>) -> Option<()> {
        if self.peek() == Some(b'{') {
            self.object(|s, _| s.link(spans))
        } else {
            self.skip_value()
        }
    }

    /// An object, calling `member` with each key's range and the scanner at
    /// the value, which `member` must consume.
    fn object(
        &mut self,
        mut member: impl FnMut(&mut Self, Range<usize>) -> Option<()>,
    ) -> Option<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            let key = self.string()?;
            self.eat(b':')?;
            self.ws();
            member(self, key)?;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
            self.ws();
        }
    }

    /// An array, calling `item` with the scanner at each element.
    fn array(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        if self.peek()? == b']' {
            self.i += 1;
            return Some(());
        }
        loop {
            self.ws();
            item(self)?;
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Any value, nested ones by counting brackets (no recursion, so no
    /// depth limit is needed).
    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match *self.b.get(self.i)? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
            }
            _ => {
                let start = self.i;
                while let Some(&c) = self.b.get(self.i) {
                    if matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.i += 1;
                }
                (self.i > start).then_some(())
            }
        }
    }
}

#[cfg(test)]
mod tests;
