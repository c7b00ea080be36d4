//! What the workflow reads from a request and from Twilio's 404, and
//! nothing else: the Participant-create path, the create's form body, the
//! 20404 signature of the fault, and the User-write paths the repair fence
//! watches.
//!
//! These are the parsers that decide whether we act on a User, so each
//! refuses anything ambiguous instead of guessing: a repeated form key, an
//! identity that is a dot segment (`.`/`..`), a 20404 that names another
//! resource. Every value taken from user data and put into a path goes
//! through [`encode_segment`], which cannot produce a separator, a query, a
//! fragment or a dot segment. Property tests at the bottom state these as
//! invariants.

use crate::twilio_api::encode_segment;

/// Is this percent-encoded path segment a dot segment once decoded
/// (`.`, `..`, `%2E`, `%2e%2E`, ...)? RFC 3986 §5.2.4 removes those, so
/// one normalising hop would change the path's shape.
fn is_dot_segment(seg: &str) -> bool {
    let decoded = percent_encoding::percent_decode_str(seg).decode_utf8_lossy();
    decoded == "." || decoded == ".."
}

/// The Participant-create path, parsed. Segments are kept as the client
/// sent them (already percent-encoded) so they can be reused verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatePath {
    /// `Some(IS...)` for `/v1/Services/{IS}/...`, `None` for the default service.
    pub service_sid: Option<String>,
    pub conversation: String,
}

impl CreatePath {
    pub fn parse(path: &str) -> Option<CreatePath> {
        let segs: Vec<&str> = path.strip_prefix("/v1/")?.split('/').collect();
        let usable = |s: &&str| !s.is_empty() && !is_dot_segment(s);
        match segs.as_slice() {
            ["Services", is, "Conversations", ch, "Participants"] if usable(is) && usable(ch) => {
                Some(CreatePath {
                    service_sid: Some(is.to_string()),
                    conversation: ch.to_string(),
                })
            }
            ["Conversations", ch, "Participants"] if usable(ch) => Some(CreatePath {
                service_sid: None,
                conversation: ch.to_string(),
            }),
            _ => None,
        }
    }
    /// `/v1/Services/IS...` or `/v1`: the base of Users and Conversations.
    pub fn service_base(&self) -> String {
        match &self.service_sid {
            Some(is) => format!("/v1/Services/{is}"),
            None => "/v1".to_string(),
        }
    }
    pub fn conversation_path(&self) -> String {
        format!(
            "{}/Conversations/{}",
            self.service_base(),
            self.conversation
        )
    }
    pub fn participants_path(&self) -> String {
        format!("{}/Participants", self.conversation_path())
    }

    /// Is this error body the fault's signature: code 20404 with a
    /// message naming this create's own Participants resource
    /// ([`CreatePath::is_named_by`])? The one place the signature lives.
    pub fn is_fault(&self, error: &serde_json::Value) -> bool {
        is_fault_code(error.get("code").and_then(|c| c.as_u64()))
            && error
                .get("message")
                .and_then(|m| m.as_str())
                .is_some_and(|m| self.is_named_by(m))
    }

    /// Does a 20404's message name this create's own Participants
    /// resource? That is the fault's signature ("The requested resource
    /// /v1/Services/IS…/Conversations/CH…/Participants was not found");
    /// a 20404 about anything else (a role, a binding) is passed through.
    /// The default-service path may be named with or without its service.
    pub fn is_named_by(&self, message: &str) -> bool {
        let tail = format!("/Conversations/{}/Participants", self.conversation);
        message.match_indices(&tail).any(|(at, _)| {
            let before = &message[..at];
            let start = before
                .rfind(|c: char| c.is_whitespace())
                .map_or(0, |i| i + 1);
            let named = &before[start..];
            let after = message[at + tail.len()..].chars().next();
            let ends = after.is_none_or(|c| !(c.is_alphanumeric() || c == '/' || c == '%'));
            let base_ok = match &self.service_sid {
                Some(is) => named == format!("/v1/Services/{is}"),
                None => {
                    named == "/v1"
                        || named
                            .strip_prefix("/v1/Services/")
                            .is_some_and(|s| !s.contains('/'))
                }
            };
            ends && base_ok
        })
    }
}

/// Which User to repair, and where.
#[derive(Debug, Clone)]
pub struct RepairTarget {
    pub account_sid: String,
    /// `/v1/Services/IS...` or `/v1`.
    pub service_base: String,
    pub service_sid: String,
    pub identity: String,
    /// The conversation whose create is being repaired (not restored here:
    /// the replayed create puts the participant there).
    pub exclude_conversation: Option<String>,
}

/// Is this Twilio error code the fault's (20404)? The signature's code
/// part, for an answer whose message was already matched or need not be
/// ([`CreatePath::is_fault`] checks both).
pub fn is_fault_code(code: Option<u64>) -> bool {
    code == Some(20404)
}

/// Who the new participant is, from the form body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    Identity(String),
    Binding {
        address: String,
        proxy_address: Option<String>,
    },
}

/// Why a create body names nobody the workflow may act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WhoError {
    #[error("the create names neither Identity nor MessagingBinding.Address")]
    Nobody,
    #[error(
        "the create repeats the form key {0}: which value Twilio used is unknown, so nothing is repaired"
    )]
    Repeated(&'static str),
    #[error("the identity is a dot segment (`.` or `..`), which no path may carry")]
    DotSegment,
}

impl Who {
    /// Parse the form body (both `+` and `%20` spaces), decoding once.
    pub fn from_form(body: &[u8]) -> Result<Who, WhoError> {
        const KEYS: [&str; 3] = [
            "Identity",
            "MessagingBinding.Address",
            "MessagingBinding.ProxyAddress",
        ];
        let mut found: [Option<String>; 3] = [None, None, None];
        for (k, v) in form_urlencoded::parse(body) {
            if let Some(i) = KEYS.iter().position(|key| *key == k) {
                if found[i].is_some() {
                    return Err(WhoError::Repeated(KEYS[i]));
                }
                found[i] = Some(v.into_owned());
            }
        }
        let [identity, address, proxy] = found;
        match (identity, address) {
            (Some(i), _) if !i.is_empty() => {
                if i == "." || i == ".." {
                    return Err(WhoError::DotSegment);
                }
                Ok(Who::Identity(i))
            }
            (_, Some(a)) if !a.is_empty() => Ok(Who::Binding {
                address: a,
                proxy_address: proxy,
            }),
            _ => Err(WhoError::Nobody),
        }
    }

    pub fn label(&self) -> &str {
        match self {
            Who::Identity(i) => i,
            Who::Binding { address, .. } => address,
        }
    }

    pub fn identity(&self) -> Option<&str> {
        match self {
            Who::Identity(i) => Some(i),
            Who::Binding { .. } => None,
        }
    }
}

/// A request that writes a User, which the repair fence must hold back
/// while that identity is under repair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserWrite {
    /// `POST .../Users`: the identity is in the body.
    Create,
    /// `POST|DELETE .../Users/{identity or US…}` (the segment, decoded).
    Existing(String),
}

impl UserWrite {
    pub fn parse(method: &http::Method, path: &str) -> Option<UserWrite> {
        if method != http::Method::POST && method != http::Method::DELETE {
            return None;
        }
        let rest = path.strip_prefix("/v1/")?;
        let rest = match rest.strip_prefix("Services/") {
            Some(r) => r.split_once('/')?.1,
            None => rest,
        };
        let segs: Vec<&str> = rest.split('/').collect();
        match segs.as_slice() {
            ["Users"] if method == http::Method::POST => Some(UserWrite::Create),
            ["Users", who] if !who.is_empty() => Some(UserWrite::Existing(
                percent_encoding::percent_decode_str(who)
                    .decode_utf8_lossy()
                    .into_owned(),
            )),
            _ => None,
        }
    }
}

/// The `Identity` of a User-create form body (the first one: only used to
/// decide whether to wait, never to act).
pub fn form_identity(body: &[u8]) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(k, _)| k == "Identity")
        .map(|(_, v)| v.into_owned())
}

/// `{base}/Users/{identity}`, encoded.
pub fn user_path(service_base: &str, identity_or_sid: &str) -> String {
    format!("{service_base}/Users/{}", encode_segment(identity_or_sid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_both_create_paths_only() {
        let s = CreatePath::parse("/v1/Services/IS1/Conversations/CH1/Participants").unwrap();
        assert_eq!(s.service_sid.as_deref(), Some("IS1"));
        assert_eq!(s.service_base(), "/v1/Services/IS1");
        let d = CreatePath::parse("/v1/Conversations/CH1/Participants").unwrap();
        assert_eq!(d.service_sid, None);
        assert_eq!(d.participants_path(), "/v1/Conversations/CH1/Participants");
        assert!(CreatePath::parse("/v1/Conversations/CH1/Participants/MB1").is_none());
        assert!(CreatePath::parse("/v1/Conversations//Participants").is_none());
        assert!(CreatePath::parse("/v1/Conversations/CH1/Messages").is_none());
        assert!(CreatePath::parse("/v1/Conversations/../Participants").is_none());
        assert!(CreatePath::parse("/v1/Conversations/%2e%2E/Participants").is_none());
        assert!(CreatePath::parse("/v1/Services/./Conversations/CH1/Participants").is_none());
    }

    #[test]
    fn form_decoding_accepts_both_space_styles() {
        assert_eq!(
            Who::from_form(b"Identity=a+b%40c"),
            Ok(Who::Identity("a b@c".into()))
        );
        assert_eq!(
            Who::from_form(b"Identity=a%20b"),
            Ok(Who::Identity("a b".into()))
        );
        assert_eq!(
            Who::from_form(
                b"MessagingBinding.Address=%2B1555&MessagingBinding.ProxyAddress=%2B1666"
            ),
            Ok(Who::Binding {
                address: "+1555".into(),
                proxy_address: Some("+1666".into())
            })
        );
        assert_eq!(Who::from_form(b"Attributes=%7B%7D"), Err(WhoError::Nobody));
    }

    #[test]
    fn ambiguous_bodies_name_nobody() {
        assert_eq!(
            Who::from_form(b"Identity=victim&Identity=bystander"),
            Err(WhoError::Repeated("Identity"))
        );
        assert_eq!(
            Who::from_form(b"Identity=a&MessagingBinding.Address=x&MessagingBinding.Address=y"),
            Err(WhoError::Repeated("MessagingBinding.Address"))
        );
        assert_eq!(Who::from_form(b"Identity=.."), Err(WhoError::DotSegment));
        assert_eq!(Who::from_form(b"Identity=%2E"), Err(WhoError::DotSegment));
    }

    #[test]
    fn the_signature_names_the_requests_own_participants_resource() {
        let p = CreatePath::parse("/v1/Services/IS1/Conversations/CH1/Participants").unwrap();
        assert!(p.is_named_by(
            "The requested resource /v1/Services/IS1/Conversations/CH1/Participants was not found"
        ));
        assert!(!p.is_named_by("The requested resource /v1/Roles/RL1 was not found"));
        assert!(!p.is_named_by(
            "The requested resource /v1/Services/IS2/Conversations/CH1/Participants was not found"
        ));
        assert!(!p.is_named_by(
            "The requested resource /v1/Services/IS1/Conversations/CH1/Participants/MB1 was not found"
        ));
        assert!(!p.is_named_by(
            "The requested resource /v1/Services/IS1/Conversations/CH12/Participants was not found"
        ));
        let d = CreatePath::parse("/v1/Conversations/CH1/Participants").unwrap();
        assert!(d.is_named_by(
            "The requested resource /v1/Conversations/CH1/Participants was not found"
        ));
        assert!(d.is_named_by(
            "The requested resource /v1/Services/IS9/Conversations/CH1/Participants was not found"
        ));
        assert!(!d.is_named_by(""));
    }

    #[test]
    fn user_writes_are_recognised_on_both_path_styles() {
        use http::Method;
        assert_eq!(
            UserWrite::parse(&Method::POST, "/v1/Services/IS1/Users"),
            Some(UserWrite::Create)
        );
        assert_eq!(
            UserWrite::parse(&Method::DELETE, "/v1/Users/a%40b"),
            Some(UserWrite::Existing("a@b".into()))
        );
        assert_eq!(UserWrite::parse(&Method::GET, "/v1/Users/a"), None);
        assert_eq!(
            UserWrite::parse(&Method::POST, "/v1/Users/a/Conversations"),
            None
        );
    }

    proptest! {
        /// A built workflow path always has exactly the expected segments:
        /// no identity can add a separator, a query, a fragment or a dot
        /// segment.
        #[test]
        fn built_user_paths_have_exactly_the_expected_segments(identity in "\\PC{1,40}") {
            let path = user_path("/v1/Services/IS1", &identity);
            let segs: Vec<&str> = path.split('/').collect();
            prop_assert_eq!(segs.len(), 6, "{}", path);
            prop_assert_eq!(segs[..5].to_vec(), vec!["", "v1", "Services", "IS1", "Users"]);
            prop_assert!(!path.contains('?') && !path.contains('#'));
            let last = segs[5];
            prop_assert!(last.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)));
            let decoded = percent_encoding::percent_decode_str(last).decode_utf8_lossy().into_owned();
            prop_assert_eq!(&decoded, &identity, "{}", path);
            if identity != "." && identity != ".." {
                prop_assert!(!is_dot_segment(last));
            }
        }

        /// The identity the workflow acts on is the one Twilio used: any
        /// repeated key refuses, and a single key decodes to its value.
        #[test]
        fn the_identity_acted_on_is_unambiguous(
            a in "[a-zA-Z0-9@+. %&=]{1,20}",
            b in "[a-zA-Z0-9@+. %&=]{1,20}",
            other in "[a-zA-Z]{1,8}",
        ) {
            let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let one = format!("{other}=x&Identity={}", enc(&a));
            match Who::from_form(one.as_bytes()) {
                Ok(Who::Identity(i)) => prop_assert_eq!(i, a.clone()),
                Err(WhoError::DotSegment) => prop_assert!(a == "." || a == ".."),
                other => prop_assert!(false, "{:?}", other),
            }
            let two = format!("Identity={}&{other}=y&Identity={}", enc(&a), enc(&b));
            prop_assert_eq!(Who::from_form(two.as_bytes()), Err(WhoError::Repeated("Identity")));
        }

        /// Only the request's own Participants path is the fault's
        /// signature, whatever surrounds it.
        #[test]
        fn the_signature_is_never_matched_by_another_resource(
            ch in "CH[0-9a-f]{4}",
            other in "CH[0-9a-f]{4}",
            suffix in "(/MB[0-9a-f]{2}|/Messages|[0-9a-f])",
        ) {
            let p = CreatePath::parse(&format!("/v1/Services/IS1/Conversations/{ch}/Participants")).unwrap();
            let own = format!("The requested resource /v1/Services/IS1/Conversations/{ch}/Participants was not found");
            prop_assert!(p.is_named_by(&own));
            let longer = format!("The requested resource /v1/Services/IS1/Conversations/{ch}/Participants{suffix} was not found");
            prop_assert!(!p.is_named_by(&longer));
            if other != ch {
                let theirs = format!("The requested resource /v1/Services/IS1/Conversations/{other}/Participants was not found");
                prop_assert!(!p.is_named_by(&theirs));
            }
        }

        /// A parsed create path never carries an empty or dot segment.
        #[test]
        fn parsed_create_paths_have_no_dot_or_empty_segments(seg in "(\\.|\\.\\.|%2[eE]|%2[eE]%2[eE]|CH[0-9a-f]{3}|)") {
            let parsed = CreatePath::parse(&format!("/v1/Conversations/{seg}/Participants"));
            let bad = seg.is_empty() || is_dot_segment(&seg);
            prop_assert_eq!(parsed.is_none(), bad);
        }
    }
}
