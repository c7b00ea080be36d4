//! How identities, free texts and journal records are shown outside the
//! proxy (`repair.incident_identity`): every admin answer, the incidents
//! page, `incidents export` and support bundles go through [`Privacy`], and
//! so does the incident the workflow records (in "hash" mode nothing plain
//! is stored in it).

use sha2::Digest;

use crate::config::IdentityRecord;
use crate::store::{Incident, RepairRecord, UserSnapshot};

/// How identities and journal records are shown outside the proxy: admin
/// answers and `incidents export` (`repair.incident_identity`).
#[derive(Debug, Clone, Copy)]
pub struct Privacy {
    identity: IdentityRecord,
}

impl Privacy {
    pub fn new(identity: IdentityRecord) -> Privacy {
        Privacy { identity }
    }

    pub fn hashing(&self) -> bool {
        self.identity == IdentityRecord::Hash
    }

    /// An identity as it may be shown: itself, or its hash. One already in
    /// the hashed form (recorded by the workflow in "hash" mode) is kept.
    pub fn identity(&self, identity: &str) -> String {
        if !self.hashing() || is_hashed(identity) {
            identity.to_string()
        } else {
            hash_identity(identity)
        }
    }

    /// A free text (incident detail, journal note) with every
    /// `/Users/<identity>` and `/Participants/<identity>` path segment
    /// hashed when hashing (SIDs, `US…`/`MB…`, are left as they are).
    pub fn text(&self, text: &str) -> String {
        const MARKS: [&str; 2] = ["/Users/", "/Participants/"];
        if !self.hashing() {
            return text.to_string();
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some((i, mark)) = MARKS
            .iter()
            .filter_map(|m| rest.find(m).map(|i| (i, *m)))
            .min_by_key(|(i, _)| *i)
        {
            let (head, tail) = rest.split_at(i + mark.len());
            out.push_str(head);
            // A segment already hashed (by [`Privacy::text_naming`]): the
            // whole segment, so an identity that merely starts like a hash
            // (`sha256:0123456789abcdefkim`) is hashed, not kept.
            let whole = |h: &&str| {
                let unreserved =
                    |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~');
                let mut after = tail[HASHED_LEN..].chars();
                is_hashed(h)
                    && match after.next() {
                        None => true,
                        Some(c) if c.is_ascii_alphanumeric() || c == '%' => false,
                        // Punctuation after a hash ends the sentence, unless
                        // the segment goes on (`sha256:….kim`).
                        Some(c) if unreserved(c) => {
                            !after.next().is_some_and(|d| unreserved(d) || d == '%')
                        }
                        Some(_) => true,
                    }
            };
            if let Some(h) = tail.get(..HASHED_LEN).filter(whole) {
                out.push_str(h);
                rest = &tail[HASHED_LEN..];
                continue;
            }
            // A segment the workflow built: unreserved characters and %XX;
            // one that starts like a hash but is none (written raw, so its
            // `:` would end it early), up to the path's next delimiter.
            let end = if let Some(after) = tail.strip_prefix("sha256:") {
                after
                    .find(|c: char| {
                        c.is_whitespace()
                            || matches!(c, '/' | '?' | '#' | '"' | '\'' | ',' | ';' | ':')
                    })
                    .map(|e| e + "sha256:".len())
            } else {
                tail.find(|c: char| {
                    !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~' | '%'))
                })
            }
            .unwrap_or(tail.len());
            let segment = &tail[..end];
            let is_sid = crate::sid::is_sid(segment, "US") || crate::sid::is_sid(segment, "MB");
            if !segment.is_empty() && !is_sid {
                let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
                out.push_str(&self.identity(&decoded));
            } else {
                out.push_str(segment);
            }
            rest = &tail[end..];
        }
        out.push_str(rest);
        out
    }

    /// A free text that may name `identity` (an error read back from
    /// Twilio, a refusal, a plan) as it may be shown, logged or stored:
    /// when hashing, every occurrence of the identity, plain or
    /// percent-encoded (as a path segment, wholly, or as a form value), is
    /// replaced by its hash, then [`Privacy::text`] hashes any other
    /// `/Users/…` or `/Participants/…` segment. An occurrence counts when
    /// no letter or digit stands right beside it (a short identity leaves
    /// the words that merely contain it alone).
    pub fn text_naming(&self, text: &str, identity: &str) -> String {
        if !self.hashing() || identity.is_empty() || is_hashed(identity) {
            return self.text(text);
        }
        let hashed = hash_identity(identity);
        let mut forms: Vec<String> = vec![
            identity.to_string(),
            percent_encoding::utf8_percent_encode(identity, PATH_SEGMENT).to_string(),
            percent_encoding::utf8_percent_encode(identity, percent_encoding::NON_ALPHANUMERIC)
                .to_string(),
            form_urlencoded::byte_serialize(identity.as_bytes()).collect(),
        ];
        // Percent-escapes in lower case are the same bytes.
        let lower: Vec<String> = forms
            .iter()
            .filter(|f| f.contains('%'))
            .map(|f| lower_escapes(f))
            .collect();
        forms.extend(lower);
        forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
        forms.dedup();
        let mut out = String::with_capacity(text.len());
        let mut i = 0;
        'scan: while i < text.len() {
            let before = text[..i].chars().next_back();
            if !before.is_some_and(char::is_alphanumeric) {
                for f in &forms {
                    if text[i..].starts_with(f.as_str()) {
                        let after = text[i + f.len()..].chars().next();
                        if !after.is_some_and(char::is_alphanumeric) {
                            out.push_str(&hashed);
                            i += f.len();
                            continue 'scan;
                        }
                    }
                }
            }
            let c = text[i..].chars().next().unwrap_or_default();
            out.push(c);
            i += c.len_utf8().max(1);
        }
        self.text(&out)
    }

    /// [`Privacy::incident`], for the workflow's own record, which knows
    /// the identity it acted on: its detail, step paths and step messages
    /// also lose every plain or percent-encoded occurrence of it
    /// ([`Privacy::text_naming`]).
    pub fn incident_naming(&self, mut i: Incident, identity: Option<&str>) -> Incident {
        if let (true, Some(who)) = (self.hashing(), identity) {
            // The app may address a conversation by a unique name of its
            // own, which can name the identity.
            i.conversation_sid = self.text_naming(&i.conversation_sid, who);
            i.detail = i.detail.as_deref().map(|v| self.text_naming(v, who));
            for s in &mut i.steps {
                s.path = s.path.as_deref().map(|v| self.text_naming(v, who));
                s.error_message = s.error_message.as_deref().map(|v| self.text_naming(v, who));
            }
        }
        self.incident(i)
    }

    /// An incident as it may be shown (or, in "hash" mode, stored): the
    /// identity, and every `/Users/…` and `/Participants/…` segment of its
    /// detail, step paths and step messages.
    pub fn incident(&self, mut i: Incident) -> Incident {
        if !self.hashing() {
            return i;
        }
        // One recorded before the switch to "hash" still names its
        // identity plainly: every form of it goes, wherever it stands.
        let plain = i.identity.clone().filter(|w| !is_hashed(w));
        let text = |v: &str| match &plain {
            Some(who) => self.text_naming(v, who),
            None => self.text(v),
        };
        if let Some(who) = &plain {
            i.conversation_sid = self.text_naming(&i.conversation_sid, who);
        }
        i.detail = i.detail.as_deref().map(text);
        for s in &mut i.steps {
            s.path = s.path.as_deref().map(text);
            s.error_message = s.error_message.as_deref().map(text);
        }
        i.identity = i.identity.as_deref().map(|v| self.identity(v));
        i
    }

    /// The setting's name and value, as a support bundle names it.
    pub fn setting(&self) -> &'static str {
        if self.hashing() {
            "repair.incident_identity = \"hash\""
        } else {
            "repair.incident_identity = \"plain\""
        }
    }

    /// A journal record as it may be shown: an allow-list of fields, the
    /// snapshot only when asked for (the caller checks who asks).
    pub fn repair(&self, r: &RepairRecord, with_snapshot: bool) -> serde_json::Value {
        let mut v = serde_json::json!({
            "id": r.id,
            "created_at": r.created_at,
            "updated_at": r.updated_at,
            "account_sid": r.account_sid,
            "credential_user": r.credential_user,
            "upstream": r.upstream,
            "service_base": r.service_base,
            "service_sid": r.service_sid,
            "identity": self.identity(&r.identity),
            "state": r.state,
            "webhook": r.webhook,
            "note": r.note.as_deref().map(|n| self.text(n)),
        });
        if with_snapshot {
            v["snapshot"] = self.snapshot(&r.snapshot);
        }
        v
    }

    /// A snapshot as it may be shown to an operator: whole, or with
    /// hashing, what is needed to act on it (SIDs) without who the person
    /// is (identity hashed; friendly name and attributes left out).
    pub fn snapshot(&self, s: &UserSnapshot) -> serde_json::Value {
        if !self.hashing() {
            return serde_json::to_value(s).unwrap_or_default();
        }
        let memberships: Vec<serde_json::Value> = s
            .memberships
            .iter()
            .map(|m| {
                serde_json::json!({
                    "conversation_sid": m.conversation_sid,
                    "participant_sid": m.participant_sid,
                    "role_sid": m.role_sid,
                    "date_created": m.date_created,
                })
            })
            .collect();
        serde_json::json!({
            "user_sid": s.user_sid,
            "identity": self.identity(&s.identity),
            "role_sid": s.role_sid,
            "memberships": memberships,
            "redacted": ["friendly_name", "attributes"],
        })
    }
}

/// `sha256:` + the first 16 hex characters of the identity's SHA-256: the
/// form the workflow records with `repair.incident_identity = "hash"`.
pub fn hash_identity(identity: &str) -> String {
    let digest = sha2::Sha256::digest(identity.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{}", &hex[..16])
}

/// `%2b` for `%2B`: the escapes of a percent-encoded text in lower case.
fn lower_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let esc = rest.get(at..at + 3).unwrap_or(&rest[at..]);
        out.push_str(&esc.to_ascii_lowercase());
        rest = &rest[at + esc.len()..];
    }
    out.push_str(rest);
    out
}

/// What a path segment percent-encodes: all but RFC 3986's unreserved
/// characters, as `crate::twilio_api::encode_segment` builds the paths of
/// the repair's calls (not imported: `twilio_api` leans on `repair`, which
/// leans on this module).
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The length of [`hash_identity`]'s form: `sha256:` and 16 hex.
const HASHED_LEN: usize = 7 + 16;

pub(crate) fn is_hashed(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 16
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_covers_identities_and_user_paths() {
        let p = Privacy::new(IdentityRecord::Hash);
        let h = hash_identity("kim k");
        assert_eq!(p.identity("kim k"), h);
        assert_eq!(p.identity(&h), h, "never hashed twice");
        assert_eq!(
            p.text("GET /v1/Services/IS1/Users/kim%20k/Conversations: timeout"),
            format!("GET /v1/Services/IS1/Users/{h}/Conversations: timeout")
        );
        assert_eq!(p.text("no user path"), "no user path");
        let plain = Privacy::new(IdentityRecord::Plain);
        assert_eq!(plain.text_naming("kim k: 403", "kim k"), "kim k: 403");
        assert_eq!(plain.identity("kim"), "kim");
        assert_eq!(plain.text("/Users/kim"), "/Users/kim");
    }

    /// An incident recorded in "plain" and shown after the switch to
    /// "hash": its conversation's unique name and Twilio's messages lose
    /// the identity too, and its hash is the one later incidents carry.
    #[test]
    fn an_incident_recorded_before_the_switch_is_shown_without_its_identity() {
        let p = Privacy::new(IdentityRecord::Hash);
        let mut step =
            crate::store::StepRecord::bare(crate::store::StepKind::FetchUser, Some(403), false);
        step.error_message = Some("User 'kim k' may not be read".into());
        let shown = p.incident(Incident {
            id: 1,
            at: "2025-01-01T00:00:00Z".into(),
            account_sid: None,
            service_sid: None,
            conversation_sid: "support-kim k".into(),
            identity: Some("kim k".into()),
            outcome: crate::store::Outcome::Failed,
            detail: Some("add kim k: GET /Users/kim%20k: 403".into()),
            repair_id: None,
            steps: vec![step],
            request_id: None,
        });
        let json = serde_json::to_string(&shown).unwrap();
        assert!(!json.contains("kim"), "{json}");
        let h = hash_identity("kim k");
        assert_eq!(shown.identity.as_deref(), Some(h.as_str()));
        assert_eq!(shown.conversation_sid, format!("support-{h}"));
        assert_eq!(
            p.incident(shown.clone()).detail,
            shown.detail,
            "shown twice, the same"
        );
    }

    /// An identity that starts like a hash is no hash: hashed whole, in a
    /// workflow's (percent-encoded) path and in a text naming it raw.
    #[test]
    fn an_identity_shaped_like_a_hash_is_still_hashed() {
        let p = Privacy::new(IdentityRecord::Hash);
        let who = "sha256:0123456789abcdefkim@x.com";
        let h = hash_identity(who);
        let path = format!(
            "GET /v1/Services/IS1/Users/{}: timeout",
            crate::twilio_api::encode_segment(who)
        );
        assert_eq!(
            p.text(&path),
            format!("GET /v1/Services/IS1/Users/{h}: timeout")
        );
        let raw = format!("403 for /Users/{who}/Conversations");
        let shown = p.text_naming(&raw, who);
        assert!(!shown.contains("kim"), "{shown}");
        assert!(shown.contains(&h), "{shown}");
        // A hash that ends a sentence is kept: incidents of one identity
        // keep one hash, however often a text passes through.
        let kim = hash_identity("kim");
        let once = p.text_naming("GET /Users/kim. Then /Users/kim-", "kim");
        assert_eq!(once, format!("GET /Users/{kim}. Then /Users/{kim}-"));
        assert_eq!(p.text(&once), once);
        // Raw, where the identity is not known to the text.
        let shown = p.text(&format!("GET /Users/{who}/Conversations: 404"));
        assert_eq!(shown, format!("GET /Users/{h}/Conversations: 404"));
        assert_eq!(
            p.text(&format!("GET /Users/{who}: 404")),
            format!("GET /Users/{h}: 404")
        );
        let dotted = p.text("/Users/sha256:0123456789abcdef.kim/x");
        assert!(!dotted.contains("kim"), "{dotted}");
        // A hash written by text_naming is kept as it is, not hashed again.
        assert_eq!(p.text(&format!("/Users/{h}/x")), format!("/Users/{h}/x"));
    }

    #[test]
    fn a_text_naming_the_identity_loses_every_form_of_it() {
        let p = Privacy::new(IdentityRecord::Hash);
        let who = "kim k+1@example.com";
        let h = hash_identity(who);
        for text in [
            "the snapshot cannot be read with SK1: fetch-user: GET /v1/Services/IS1/Users/kim%20k%2B1%40example.com: no answer",
            "User 'kim k+1@example.com' was not found",
            "identity=kim+k%2B1%40example.com refused",
            "lower: kim%20k%2b1%40example%2ecom",
        ] {
            let shown = p.text_naming(text, who);
            assert!(shown.contains(&h), "{shown}");
            for form in ["kim k", "kim%20k", "kim+k", "example"] {
                assert!(!shown.contains(form), "{form} in {shown}");
            }
        }
        // Only where it stands alone: a short identity inside a word stays.
        assert_eq!(
            p.text_naming("a repair of a: Kamala", "a"),
            format!(
                "{} repair of {}: Kamala",
                hash_identity("a"),
                hash_identity("a")
            )
        );
        assert_eq!(p.text_naming(&h, who), h, "never hashed twice");
    }
}
