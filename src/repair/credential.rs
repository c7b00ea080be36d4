//! Whose credential a workflow call carries, and the tenancy rule.
//!
//! The proxy holds no Twilio secret of its own: it acts with the caller's
//! `Authorization`, or, where allowed, with an operator repair credential
//! (`TRP_REPAIR_API_KEY_SID`/`_SECRET`, `TRP_REPAIR_ACCOUNT_SID`). The rule:
//!
//! - Every step that *decides* (did the create land, is the 404 genuine, the
//!   create retried and replayed) runs with the **caller's** credential, so a
//!   caller can never learn or do through us what it cannot itself.
//! - The User delete, recreate and membership restores run with the
//!   operator credential only when the conversation's `account_sid` (read
//!   with the caller's credential, so it is the caller's own account) is the
//!   operator credential's account; otherwise with the caller's.
//! - Recovery without a caller uses the operator credential only for
//!   records of its own account, and a caller's credential only for records
//!   its Basic user name (the account SID or the very key) ran.
//!
//! The operator credential's account is `TRP_REPAIR_ACCOUNT_SID`, or its key
//! SID itself when that is an account SID (`AC…`); a key (`SK…`) with no
//! account named is never used for a live repair.

use crate::sid::basic_user;
use base64::Engine;
use http::HeaderValue;

/// Why the operator credential could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot read repair.credentials_file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Text, not the parser's error as a source: `toml::de::Error` quotes
    /// the offending line, which may be the secret; `message` is the
    /// parser's message alone.
    #[error("invalid repair.credentials_file {path}: {message}")]
    Invalid { path: String, message: String },
    #[error("the repair credential contains characters not allowed in a header")]
    Header(#[source] http::header::InvalidHeaderValue),
}

/// An operator-provided credential for repair and recovery calls.
#[derive(Clone)]
pub struct RepairCredential {
    /// The key or account SID (Basic user name). Not a secret.
    pub user: String,
    /// The account the credential acts for (see the module doc).
    pub account_sid: Option<String>,
    pub authorization: HeaderValue,
}

impl std::fmt::Debug for RepairCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepairCredential")
            .field("user", &self.user)
            .field("account_sid", &self.account_sid)
            .field("authorization", &"****")
            .finish()
    }
}

impl RepairCredential {
    pub fn new(
        user: &str,
        secret: &str,
        account_sid: Option<String>,
    ) -> Result<Self, CredentialError> {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"));
        let mut authorization =
            HeaderValue::from_str(&format!("Basic {token}")).map_err(CredentialError::Header)?;
        authorization.set_sensitive(true);
        let account_sid = account_sid.or_else(|| user.starts_with("AC").then(|| user.to_string()));
        Ok(RepairCredential {
            user: user.to_string(),
            account_sid,
            authorization,
        })
    }

    /// From `TRP_REPAIR_API_KEY_SID`/`_SECRET`/`TRP_REPAIR_ACCOUNT_SID`, or
    /// else from `repair.credentials_file` (TOML: `api_key_sid`,
    /// `api_key_secret`, `account_sid`).
    pub fn from_env_or_file(
        file: Option<&std::path::Path>,
    ) -> Result<Option<Self>, CredentialError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let (Some(sid), Some(secret)) = (
            env("TRP_REPAIR_API_KEY_SID"),
            env("TRP_REPAIR_API_KEY_SECRET"),
        ) {
            return Self::new(&sid, &secret, env("TRP_REPAIR_ACCOUNT_SID")).map(Some);
        }
        let Some(path) = file else { return Ok(None) };
        let text = std::fs::read_to_string(path).map_err(|source| CredentialError::Read {
            path: path.display().to_string(),
            source,
        })?;
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct F {
            api_key_sid: String,
            api_key_secret: String,
            account_sid: Option<String>,
        }
        let f: F = toml::from_str(&text).map_err(|e| CredentialError::Invalid {
            path: path.display().to_string(),
            message: e.message().to_string(),
        })?;
        Self::new(&f.api_key_sid, &f.api_key_secret, f.account_sid).map(Some)
    }

    /// May this credential act on `account_sid`'s resources?
    pub fn acts_for(&self, account_sid: &str) -> bool {
        self.account_sid.as_deref() == Some(account_sid)
    }
}

/// The credential a repair acts with, chosen once per workflow.
#[derive(Clone)]
pub struct Acting {
    pub authorization: HeaderValue,
    /// The Basic user name journaled with the record (never a secret).
    pub user: String,
    pub source: Source,
}

/// Which credential acted (for the log and the journal note).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Operator,
    Caller,
}

impl Source {
    pub fn describe(self) -> &'static str {
        match self {
            Source::Operator => "the operator repair credential",
            Source::Caller => "the caller's credential",
        }
    }
}

/// The tenancy rule for the repair steps of a live workflow: the
/// operator's credential for its own account, else the caller's.
pub fn for_repair(
    operator: Option<&RepairCredential>,
    caller: &HeaderValue,
    account_sid: &str,
) -> Acting {
    match operator {
        Some(op) if op.acts_for(account_sid) => Acting {
            authorization: op.authorization.clone(),
            user: op.user.clone(),
            source: Source::Operator,
        },
        _ => Acting {
            authorization: caller.clone(),
            user: basic_user(caller).unwrap_or_default(),
            source: Source::Caller,
        },
    }
}

/// The tenancy rule for recovering a journal record. Without a caller (the
/// start-up recovery and the sweep): the operator's credential, for its own
/// account only. With a caller: only a caller whose Basic user name ran the
/// record or is its account may set it off (another tenant never causes a
/// call for this record); it then runs with the operator's credential when
/// that acts for the account, else with the caller's own.
pub fn for_record(
    operator: Option<&RepairCredential>,
    caller: Option<&HeaderValue>,
    record_account: &str,
    record_user: &str,
) -> Option<Acting> {
    let operator = operator.filter(|op| op.acts_for(record_account));
    let by_operator = |op: &RepairCredential| Acting {
        authorization: op.authorization.clone(),
        user: op.user.clone(),
        source: Source::Operator,
    };
    let Some(caller) = caller else {
        return operator.map(by_operator);
    };
    let user = basic_user(caller)?;
    if user != record_user && user != record_account {
        return None;
    }
    Some(match operator {
        Some(op) => by_operator(op),
        None => Acting {
            authorization: caller.clone(),
            user,
            source: Source::Caller,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str) -> HeaderValue {
        let t = base64::engine::general_purpose::STANDARD.encode(format!("{user}:pw"));
        HeaderValue::from_str(&format!("Basic {t}")).unwrap()
    }

    #[test]
    fn the_operator_credential_acts_only_for_its_own_account() {
        let op = RepairCredential::new("SKop", "secret", Some("ACa".into())).unwrap();
        let caller_b = basic("ACb");
        let a = for_repair(Some(&op), &caller_b, "ACb");
        assert_eq!(a.source, Source::Caller);
        assert_eq!(a.authorization, caller_b);
        let a = for_repair(Some(&op), &caller_b, "ACa");
        assert_eq!(a.source, Source::Operator);
        // A key with no account named is never used.
        let anon = RepairCredential::new("SKop", "secret", None).unwrap();
        assert_eq!(
            for_repair(Some(&anon), &caller_b, "ACa").source,
            Source::Caller
        );
        // An account SID is its own account.
        let acct = RepairCredential::new("ACa", "token", None).unwrap();
        assert!(acct.acts_for("ACa"));
    }

    #[test]
    fn a_record_is_recovered_only_by_its_account_or_its_key() {
        let op = RepairCredential::new("SKop", "secret", Some("ACa".into())).unwrap();
        assert!(for_record(Some(&op), None, "ACb", "ACb").is_none());
        assert_eq!(
            for_record(Some(&op), None, "ACa", "SKx").unwrap().source,
            Source::Operator
        );
        // Another tenant's request never sets off a record of account A,
        // not even with A's operator credential.
        assert!(for_record(Some(&op), Some(&basic("ACb")), "ACa", "SKx").is_none());
        assert!(for_record(None, Some(&basic("ACb")), "ACa", "SKx").is_none());
        assert!(for_record(None, Some(&basic("SKx")), "ACa", "SKx").is_some());
        assert!(for_record(None, Some(&basic("ACa")), "ACa", "SKx").is_some());
        assert_eq!(
            for_record(Some(&op), Some(&basic("ACa")), "ACa", "ACa")
                .unwrap()
                .source,
            Source::Operator
        );
    }
}
