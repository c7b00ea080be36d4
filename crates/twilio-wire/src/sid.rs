//! Twilio SIDs: a two-letter prefix and 32 hex digits.

/// Whether `s` is a SID with the given prefix (`IS`, `CH`, `MB`, `US`, ...).
pub fn is_sid(s: &str, prefix: &str) -> bool {
    s.len() == 34 && s.starts_with(prefix) && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    #[test]
    fn recognises_sids() {
        assert!(super::is_sid("IS0123456789abcdef0123456789abcdef", "IS"));
        assert!(!super::is_sid("IS0123456789abcdef0123456789abcde", "IS"));
        assert!(!super::is_sid("CH0123456789abcdef0123456789abcdef", "IS"));
        assert!(!super::is_sid("ISzz23456789abcdef0123456789abcdef", "IS"));
    }
}
