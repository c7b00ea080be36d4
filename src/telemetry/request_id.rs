//! `X-Request-Id`: one id per request, the client's when it sent a usable
//! one, else a new UUIDv7.
//!
//! The id is set on the request before anything else looks at it, so the
//! app's own request carries it to Twilio (forwarded like any header), the
//! access line and the repair's log lines name it, and every answer the
//! proxy gives or forwards returns it ([`set_on`]). A client's value is kept
//! when it is 1 to [`MAX_REQUEST_ID_BYTES`] visible ASCII characters (what
//! nginx's `$request_id` users and Heroku's router accept); anything else,
//! or a second `X-Request-Id` line, is replaced, so no log line or answer
//! ever carries a client's control characters or an unbounded value.

use http::{HeaderMap, HeaderValue, header::HeaderName};

/// The header.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-sent id kept (bytes); a longer one is replaced.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// Whether a client's `X-Request-Id` value is kept as it is.
pub fn is_usable(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= MAX_REQUEST_ID_BYTES && b.iter().all(|c| c.is_ascii_graphic())
}

/// A new id: a UUIDv7 (time-ordered, so ids sort by arrival), hyphenated.
pub fn generate() -> HeaderValue {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let s = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static("-"))
}

/// The request's id: the client's when usable, else a new one, which then
/// replaces whatever the client sent (so Twilio sees the same id).
pub fn ensure(headers: &mut HeaderMap) -> HeaderValue {
    let mut sent = headers.get_all(&X_REQUEST_ID).iter();
    if let (Some(v), None) = (sent.next(), sent.next()) {
        if is_usable(v) {
            return v.clone();
        }
    }
    let id = generate();
    headers.insert(X_REQUEST_ID.clone(), id.clone());
    id
}

/// Return the id on an answer (replacing one an upstream may have set).
pub fn set_on(headers: &mut HeaderMap, id: HeaderValue) {
    headers.insert(X_REQUEST_ID.clone(), id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usable_client_id_is_kept_and_anything_else_replaced_by_a_uuidv7() {
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("app-42.abc_DEF"));
        assert_eq!(ensure(&mut h), "app-42.abc_DEF");
        assert_eq!(h.get_all(&X_REQUEST_ID).iter().count(), 1);

        let long = "x".repeat(MAX_REQUEST_ID_BYTES + 1);
        for bad in ["", "has space", "tab\there", long.as_str()] {
            let mut h = HeaderMap::new();
            h.insert(&X_REQUEST_ID, HeaderValue::from_str(bad).unwrap());
            let id = ensure(&mut h);
            assert_ne!(id, bad);
            assert_eq!(h[&X_REQUEST_ID], id, "the request carries the new id");
            let u = uuid::Uuid::parse_str(id.to_str().unwrap()).unwrap();
            assert_eq!(u.get_version_num(), 7);
        }
        // Two lines: which one would Twilio log? Replaced by one.
        let mut h = HeaderMap::new();
        h.append(&X_REQUEST_ID, HeaderValue::from_static("a"));
        h.append(&X_REQUEST_ID, HeaderValue::from_static("b"));
        let id = ensure(&mut h);
        assert_eq!(h.get_all(&X_REQUEST_ID).iter().collect::<Vec<_>>(), [&id]);
        // None sent: one made, and ids are unique and time-ordered.
        let (a, b) = (ensure(&mut HeaderMap::new()), ensure(&mut HeaderMap::new()));
        assert!(a.to_str().unwrap() < b.to_str().unwrap());
        assert_eq!(
            ensure(&mut HeaderMap::new()).len(),
            MAX_REQUEST_ID_BYTES.min(36)
        );
        let exact = "y".repeat(MAX_REQUEST_ID_BYTES);
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_str(&exact).unwrap());
        assert_eq!(ensure(&mut h), exact.as_str());
    }
}
