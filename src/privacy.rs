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
            // A segment the workflow built: unreserved characters and %XX.
            let end = tail
                .find(|c: char| {
                    !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~' | '%'))
                })
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

    /// An incident as it may be shown (or, in "hash" mode, stored): the
    /// identity, and every `/Users/…` and `/Participants/…` segment of its
    /// detail, step paths and step messages.
    pub fn incident(&self, mut i: Incident) -> Incident {
        if !self.hashing() {
            return i;
        }
        i.identity = i.identity.as_deref().map(|v| self.identity(v));
        i.detail = i.detail.as_deref().map(|v| self.text(v));
        for s in &mut i.steps {
            s.path = s.path.as_deref().map(|v| self.text(v));
            s.error_message = s.error_message.as_deref().map(|v| self.text(v));
        }
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
        assert_eq!(plain.identity("kim"), "kim");
        assert_eq!(plain.text("/Users/kim"), "/Users/kim");
    }
}
