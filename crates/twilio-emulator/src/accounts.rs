//! Accounts: credentials, resolving a request's credentials to the account
//! that owns it (the `/__emulator/accounts` handlers are in `control`).
//!
//! Every account owns its own resources (an [`EmulatorStore`]: services, default
//! service, conversations, users, participants); a request only ever sees
//! the store of the account its credentials resolve to. An API key (`SK...`)
//! belongs to exactly one account. Kept apart from `api.rs` so that the
//! Twilio resource handlers never deal with credentials.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::store::EmulatorStore;
use twilio_wire::is_sid;

/// Most accounts the emulator holds at once (configured and added at run
/// time together); each starts with one default service.
pub const MAX_ACCOUNTS: usize = 100;

/// One account's credentials: the account SID and auth token, and an
/// optional API key (`SK...` + secret) that authenticates as this account.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    pub account_sid: String,
    pub auth_token: String,
    #[serde(default)]
    pub api_key_sid: Option<String>,
    #[serde(default)]
    pub api_key_secret: Option<String>,
}

/// Secrets are never printed.
impl fmt::Debug for AccountConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountConfig")
            .field("account_sid", &self.account_sid)
            .field("auth_token", &"<redacted>")
            .field("api_key_sid", &self.api_key_sid)
            .field(
                "api_key_secret",
                &self.api_key_secret.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Why an account cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("account_sid must be AC followed by 32 hex digits")]
    AccountSid,
    #[error("auth_token must be non-empty and alphanumeric")]
    AuthToken,
    #[error("api_key_sid and api_key_secret must be set together; api_key_sid must start with SK")]
    ApiKey,
    #[error("account {0} is already configured")]
    DuplicateAccount(String),
    #[error("API key {0} already belongs to an account")]
    DuplicateApiKey(String),
    #[error("at most {MAX_ACCOUNTS} accounts")]
    TooMany,
}

impl AccountConfig {
    /// Check the shape of each credential (not uniqueness).
    pub fn validate(&self) -> Result<(), AccountError> {
        if !is_sid(&self.account_sid, "AC") {
            return Err(AccountError::AccountSid);
        }
        if self.auth_token.is_empty() || !self.auth_token.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(AccountError::AuthToken);
        }
        match (&self.api_key_sid, &self.api_key_secret) {
            (None, None) => Ok(()),
            (Some(sid), Some(secret)) if sid.starts_with("SK") && !secret.is_empty() => Ok(()),
            _ => Err(AccountError::ApiKey),
        }
    }

    /// `self` may join `existing`: valid, new SID, new API key, room left.
    pub(crate) fn check_joins<'a>(
        &self,
        mut existing: impl Iterator<Item = &'a AccountConfig>,
        count: usize,
    ) -> Result<(), AccountError> {
        self.validate()?;
        if count >= MAX_ACCOUNTS {
            return Err(AccountError::TooMany);
        }
        existing.try_for_each(|other| self.clash(other).map_or(Ok(()), Err))
    }

    /// Why `self` and `other` cannot both exist: same account SID, or the
    /// same API key (a key belongs to exactly one account).
    pub(crate) fn clash(&self, other: &AccountConfig) -> Option<AccountError> {
        if other.account_sid == self.account_sid {
            return Some(AccountError::DuplicateAccount(self.account_sid.clone()));
        }
        match (&self.api_key_sid, &other.api_key_sid) {
            (Some(mine), Some(theirs)) if mine == theirs => {
                Some(AccountError::DuplicateApiKey(mine.clone()))
            }
            _ => None,
        }
    }

    /// Do these Basic credentials authenticate as this account?
    fn accepts(&self, user: &str, pass: &str) -> bool {
        let account = ct_eq(user, &self.account_sid) & ct_eq(pass, &self.auth_token);
        let key = match (&self.api_key_sid, &self.api_key_secret) {
            (Some(sid), Some(secret)) => ct_eq(user, sid) & ct_eq(pass, secret),
            _ => false,
        };
        account || key
    }

    /// The secrets of this account (kept out of the request log).
    pub(crate) fn secrets(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.auth_token.as_str()).chain(self.api_key_secret.as_deref())
    }

    /// The public part, for control-API answers.
    pub(crate) fn public(&self, store: &EmulatorStore, configured: bool) -> Value {
        json!({
            "account_sid": self.account_sid,
            "api_key_sid": self.api_key_sid,
            "default_chat_service_sid": store.default_service_sid,
            "configured": configured,
        })
    }
}

/// An account and everything it owns.
pub(crate) struct Account {
    pub(crate) creds: AccountConfig,
    pub(crate) store: EmulatorStore,
    /// From the configuration (kept by `reset`) rather than added at run time.
    pub(crate) configured: bool,
}

fn ct_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The SID of the account that `(user, pass)` authenticates as.
pub(crate) fn resolve(accounts: &[Account], creds: Option<&(String, String)>) -> Option<String> {
    let (user, pass) = creds?;
    accounts
        .iter()
        .find(|a| a.creds.accepts(user, pass))
        .map(|a| a.creds.account_sid.clone())
}
