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

/// A new id: a UUIDv7 (its millisecond timestamp first, so ids sort by
/// arrival to the millisecond), hyphenated. Built by `uuid`'s builder from
/// the clock and 74 random bits of the thread's generator: no lock shared by
/// the workers and no system call per request (`Uuid::now_v7` takes a
/// process-wide lock and reads the OS's generator each time).
pub fn generate() -> HeaderValue {
    use rand::RngCore;
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut random = [0u8; 10];
    rand::thread_rng().fill_bytes(&mut random);
    let id = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let s = id.hyphenated().encode_lower(&mut buf);
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
        // None sent: one made, unique, a UUIDv7 of now.
        let (a, b) = (ensure(&mut HeaderMap::new()), ensure(&mut HeaderMap::new()));
        assert_ne!(a, b);
        let u = uuid::Uuid::parse_str(a.to_str().unwrap()).unwrap();
        assert_eq!(u.get_version_num(), 7);
        let (secs, _) = u.get_timestamp().unwrap().to_unix();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(now.abs_diff(secs) <= 2, "{secs} vs {now}");
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
