//! Twilio SIDs: a two-letter prefix and 32 hex digits (written once, in the
//! `twilio-wire` crate the emulator shares), and the SID a request's Basic
//! credentials name (an account `AC…` or an API key `SK…`): one parser,
//! used by the repair's tenancy rules and the shield's per-account cap.

pub use twilio_wire::sid::is_sid;

use base64::Engine;
use http::HeaderValue;

/// The Basic-auth user name of an `Authorization` header (an AC or SK SID).
/// The secret after the colon is never returned.
pub fn basic_user(authorization: &HeaderValue) -> Option<String> {
    let v = authorization.to_str().ok()?;
    let b64 = v
        .strip_prefix("Basic ")
        .or_else(|| v.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let s = String::from_utf8(decoded).ok()?;
    Some(s.split_once(':')?.0.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_user_is_the_sid_never_the_secret() {
        let v = HeaderValue::from_static("Basic QUMxMjM6c2VjcmV0");
        assert_eq!(basic_user(&v).as_deref(), Some("AC123"));
        assert_eq!(basic_user(&HeaderValue::from_static("Bearer x")), None);
    }
}
