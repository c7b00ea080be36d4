//! Storage of the repair journal and incidents, behind the small [`Store`]
//! trait: embedded SQLite (one process) or PostgreSQL (a fleet of replicas
//! sharing the journal, the incidents and the per-identity repair lock).
//!
//! The journal is written *before* each step it announces (write-ahead):
//! a repair record carries the User snapshot (identity, friendly name,
//! attributes, role, and the memberships a delete may remove) and the state
//! the workflow is about to enter. Recovery reads unfinished records and
//! completes them. No secret is ever stored: only the Basic-auth *user name*
//! (an `AC`/`SK` SID) that ran the repair, so that a later request with
//! credentials for the same account can finish it.
//!
//! # Layout
//!
//! - `mod.rs`: the [`Store`] trait, the records, and row decoding.
//! - `sql.rs`: every query, written once for both backends (`SqlStore`).
//! - `sqlite.rs`, `postgres.rs`: what only one backend does (the locked
//!   journal file; the lazy start, `ready()` gate and advisory locks).
//! - `migrations.rs`: the schema files under `migrations/<backend>/`,
//!   embedded and applied with sqlx's migrator.

mod migrations;
pub mod postgres;
pub mod sql;
pub mod sqlite;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::config::StoreOptions;
pub use crate::vocabulary::{Outcome, RepairState, StepKind};

/// Each message states its cause once: a variant whose text includes its
/// cause does not also chain it as a `source` (or `{:#}` would repeat it).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("journal database error: {0}")]
    Db(sqlx::Error),
    #[error("journal schema migration failed: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    /// The URL names no store this proxy knows (shown with its password
    /// masked).
    #[error("invalid store URL: {url}: expected sqlite://PATH or postgres://USER@HOST:PORT/DB")]
    UnknownScheme { url: String },
    #[error("cannot open the journal at {url}: cannot create its directory: {cause}")]
    Directory { url: String, cause: std::io::Error },
    #[error("corrupt journal record {id}")]
    Corrupt {
        id: i64,
        /// Why a JSON column did not parse (`None`: an unknown state or
        /// outcome name).
        #[source]
        source: Option<serde_json::Error>,
    },
    #[error("the store's schema is not in place yet (database unreachable since start-up)")]
    NotReady,
    #[error(
        "the journal {path} is locked by another process; one process owns an SQLite journal: run one proxy per journal file, or share a PostgreSQL store (--store postgres://...) between replicas"
    )]
    Locked { path: String },
    #[error("no answer from the journal database within {0} ms")]
    Timeout(u64),
    #[error("the journal file {path} was removed or replaced since start-up")]
    FileReplaced { path: String },
    #[error("cannot open the journal at {path}: {cause}")]
    File { path: String, cause: std::io::Error },
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        StoreError::Db(e)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> StoreError {
        StoreError::Migrate(e)
    }
}

/// One membership of the User, restorable with a Participant create.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Membership {
    pub conversation_sid: String,
    pub participant_sid: Option<String>,
    pub attributes: Option<String>,
    pub role_sid: Option<String>,
    pub date_created: Option<String>,
}

/// Everything needed to put a User back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UserSnapshot {
    pub user_sid: Option<String>,
    pub identity: String,
    pub friendly_name: Option<String>,
    pub attributes: Option<String>,
    pub role_sid: Option<String>,
    pub memberships: Vec<Membership>,
}

/// A journal record of one repair.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepairRecord {
    pub id: i64,
    pub created_at: String,
    pub updated_at: String,
    pub account_sid: String,
    /// Basic-auth user name (AC or SK SID) that ran the repair. Never a secret.
    pub credential_user: String,
    /// Origin the repair talked to.
    pub upstream: String,
    /// `/v1/Services/IS...` or `/v1` (default service).
    pub service_base: String,
    pub service_sid: String,
    pub identity: String,
    pub state: RepairState,
    pub snapshot: UserSnapshot,
    /// The caller's `X-Twilio-Webhook-Enabled` value, replayed on each step.
    pub webhook: Option<String>,
    pub note: Option<String>,
}

/// A new repair record (id and times are assigned by the store).
#[derive(Debug, Clone)]
pub struct NewRepair {
    pub account_sid: String,
    pub credential_user: String,
    pub upstream: String,
    pub service_base: String,
    pub service_sid: String,
    pub identity: String,
    pub snapshot: UserSnapshot,
    pub webhook: Option<String>,
}

/// One SID a repair changed: the User's (`US…`) or a restored
/// membership's participant (`MB…`), old and new, in one account and
/// service. See `crate::repair::alias`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SidAlias {
    pub created_at: String,
    pub repair_id: i64,
    pub account_sid: String,
    pub service_sid: String,
    /// `/v1/Services/IS...` or `/v1` (the repair went through the
    /// account's default service).
    pub service_base: String,
    /// A membership's conversation (`None` for the User).
    pub conversation_sid: Option<String>,
    pub old_sid: String,
    pub new_sid: String,
}

/// One workflow step (one attempt at one Twilio call) as shown in an
/// incident and in a support bundle. Incidents are stored with their steps
/// as JSON: the fields after `twilio_request_id` came later and are absent
/// (`None`) on steps recorded before them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: StepKind,
    /// Twilio's status, or `None` when no answer came (timeout, transport).
    pub status: Option<u16>,
    pub ok: bool,
    pub twilio_request_id: Option<String>,
    /// `GET`, `POST`, `DELETE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Path and query of the call (an identity in it is hashed in the
    /// record with `repair.incident_identity = "hash"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// When the call was sent (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// From sending the call to having its whole answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Twilio's error `code` of a non-2xx JSON answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<u64>,
    /// Twilio's error `message` (or why no answer came), at most
    /// [`MAX_STEP_MESSAGE_CHARS`] characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// The `date_created` of the resource a 2xx answer returned (for
    /// `fetch-user`, the affected User's creation date).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_created: Option<String>,
}

/// Longest error message kept in a [`StepRecord`] (longer ones are cut):
/// Twilio's messages are one sentence; the bound keeps a misbehaving
/// upstream from filling the incident table.
pub const MAX_STEP_MESSAGE_CHARS: usize = 500;

impl StepRecord {
    /// A step with only its kind, status and outcome known (the rest
    /// `None`), as recorded before the fuller records.
    pub fn bare(step: StepKind, status: Option<u16>, ok: bool) -> StepRecord {
        StepRecord {
            step,
            status,
            ok,
            twilio_request_id: None,
            method: None,
            path: None,
            at: None,
            duration_ms: None,
            error_code: None,
            error_message: None,
            date_created: None,
        }
    }
}

/// An intercepted 20404 and what came of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Incident {
    pub id: i64,
    pub at: String,
    pub account_sid: Option<String>,
    pub service_sid: Option<String>,
    pub conversation_sid: String,
    /// The identity or binding address, plain or hashed per configuration.
    pub identity: Option<String>,
    pub outcome: Outcome,
    pub detail: Option<String>,
    pub repair_id: Option<i64>,
    pub steps: Vec<StepRecord>,
    /// The `Twilio-Request-Id` of the intercepted 404/20404 itself (the
    /// caller's create, forwarded by the proxy). `None` on incidents
    /// recorded before migration 0004.
    #[serde(default)]
    pub request_id: Option<String>,
}

impl Incident {
    /// The affected User's `date_created` as read before the repair (the
    /// first `fetch-user` step that returned it), when the workflow read it.
    pub fn user_date_created(&self) -> Option<&str> {
        self.steps
            .iter()
            .find(|s| s.step == StepKind::FetchUser && s.date_created.is_some())
            .and_then(|s| s.date_created.as_deref())
    }
}

/// Which incidents a page lists: newest first, every given filter applied.
#[derive(Debug, Clone, Default)]
pub struct IncidentFilter {
    pub outcome: Option<Outcome>,
    pub service_sid: Option<String>,
    /// Any of these identity values (the plain value and its hash, so
    /// that records made before a switch to "hash" are found too).
    pub identities: Vec<String>,
    pub limit: i64,
    pub offset: i64,
}

/// A held cross-replica repair lock; dropping it releases the lock.
pub trait StoreLock: Send {}

/// The lock of a store that is not shared between processes: the
/// in-process mutex of the repair workflow is all the exclusion needed.
pub struct LocalLock;
impl StoreLock for LocalLock {}

/// The storage interface.
pub trait Store: Send + Sync {
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Whether the journal really accepts a durable write now (readiness):
    /// a write to its `health` row and, for SQLite, the file still being
    /// the one opened at start-up.
    fn probe_write(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Whether an open repair record (see [`RepairState::is_open`]) or a
    /// live fence row names this identity: the cross-replica half of the
    /// repair fence.
    fn has_open_repair<'a>(&'a self, identity: &'a str) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Whether several proxy processes share this store (a fleet).
    fn shared(&self) -> bool {
        false
    }
    /// Try to take the cross-replica lock of one (account, service,
    /// identity) key without waiting; `None` when another replica holds it.
    fn try_lock<'a>(
        &'a self,
        _key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Box<dyn StoreLock>>, StoreError>> {
        Box::pin(async { Ok(Some(Box::new(LocalLock) as Box<dyn StoreLock>)) })
    }
    /// Fence an identity for other replicas until `until` (RFC 3339) or
    /// until [`Store::lower_fence`]; only called when [`Store::shared`].
    fn raise_fence<'a>(
        &'a self,
        _identity: &'a str,
        _until: &'a str,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(async { Ok(0) })
    }
    fn lower_fence(&self, _id: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
    fn get_repair(&self, id: i64) -> BoxFuture<'_, Result<Option<RepairRecord>, StoreError>>;
    fn insert_repair<'a>(&'a self, r: &'a NewRepair) -> BoxFuture<'a, Result<i64, StoreError>>;
    /// A re-snapshot: insert `new` and close record `old` as `recovered`,
    /// its note `note` followed by the new record's id, in one transaction
    /// (exactly one of the two is open at any moment, whatever fails or
    /// dies in between); the new record's id.
    fn supersede_repair<'a>(
        &'a self,
        old: i64,
        note: &'a str,
        new: &'a NewRepair,
    ) -> BoxFuture<'a, Result<i64, StoreError>>;
    fn set_repair_state<'a>(
        &'a self,
        id: i64,
        state: RepairState,
        note: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Records not in a final state, oldest first.
    fn pending_repairs(&self) -> BoxFuture<'_, Result<Vec<RepairRecord>, StoreError>>;
    /// Repairs of one identity started at or after `since` (RFC 3339).
    fn count_repairs_since<'a>(
        &'a self,
        service_sid: &'a str,
        identity: &'a str,
        since: &'a str,
    ) -> BoxFuture<'a, Result<i64, StoreError>>;
    fn insert_incident<'a>(&'a self, i: &'a Incident) -> BoxFuture<'a, Result<i64, StoreError>>;
    /// Replace the detail and steps of incident `id` (what a check-only
    /// rehearsal read after the incident was recorded); the rest stays.
    fn update_incident<'a>(
        &'a self,
        id: i64,
        i: &'a Incident,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Incidents recorded at or before `until` (RFC 3339, to the second)
    /// whose detail still
    /// ends with `under_way` (a check-only rehearsal that never reported:
    /// its process stopped) get `cut` in its place. Returns how many.
    fn close_unfinished_rehearsals<'a>(
        &'a self,
        until: &'a str,
        under_way: &'a str,
        cut: &'a str,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;
    /// Record that a repair changed `old_sid` to `new_sid` (the same pair
    /// again changes nothing).
    fn insert_alias<'a>(&'a self, a: &'a SidAlias) -> BoxFuture<'a, Result<(), StoreError>>;
    /// The newest alias of `old_sid` in `account_sid` recorded at or after
    /// `since` (RFC 3339); one hop (`crate::repair::alias` follows chains).
    fn find_alias<'a>(
        &'a self,
        account_sid: &'a str,
        old_sid: &'a str,
        since: &'a str,
    ) -> BoxFuture<'a, Result<Option<SidAlias>, StoreError>>;
    /// The aliases one repair recorded, oldest first.
    fn repair_aliases(&self, repair_id: i64) -> BoxFuture<'_, Result<Vec<SidAlias>, StoreError>>;
    /// Every old SID an alias recorded at or after `since` names (the
    /// proxy's in-memory index: a request naming any other SID never asks
    /// the store).
    fn alias_old_sids<'a>(
        &'a self,
        since: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;
    /// Most recent first.
    fn incidents(&self, limit: i64) -> BoxFuture<'_, Result<Vec<Incident>, StoreError>>;
    /// One incident by id. (The default scans [`Store::incidents`]; the
    /// SQL stores answer it with one query, as the next two.)
    fn incident(&self, id: i64) -> BoxFuture<'_, Result<Option<Incident>, StoreError>> {
        Box::pin(async move {
            Ok(self
                .incidents(i64::MAX)
                .await?
                .into_iter()
                .find(|i| i.id == id))
        })
    }
    /// Incidents matching a filter, most recent first.
    fn find_incidents<'a>(
        &'a self,
        f: &'a IncidentFilter,
    ) -> BoxFuture<'a, Result<Vec<Incident>, StoreError>> {
        Box::pin(async move {
            Ok(self
                .incidents(i64::MAX)
                .await?
                .into_iter()
                .filter(|i| f.outcome.is_none_or(|o| i.outcome == o))
                .filter(|i| f.service_sid.is_none() || i.service_sid == f.service_sid)
                .filter(|i| {
                    f.identities.is_empty()
                        || i.identity
                            .as_ref()
                            .is_some_and(|v| f.identities.contains(v))
                })
                .skip(usize::try_from(f.offset).unwrap_or(0))
                .take(usize::try_from(f.limit).unwrap_or(0))
                .collect())
        })
    }
    /// How many incidents of each outcome were recorded at or after
    /// `since` (RFC 3339); outcomes with none are left out.
    fn outcome_counts<'a>(
        &'a self,
        since: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(Outcome, i64)>, StoreError>> {
        Box::pin(async move {
            let list = self.incidents(i64::MAX).await?;
            Ok(Outcome::ALL
                .into_iter()
                .map(|o| {
                    let n = list
                        .iter()
                        .filter(|i| i.outcome == o && i.at.as_str() >= since)
                        .count();
                    (o, n as i64)
                })
                .filter(|(_, n)| *n > 0)
                .collect())
        })
    }
}

/// Open the store named by a `--store` URL.
pub async fn open(url: &str, opts: &StoreOptions) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::open(url, opts).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(postgres::PgStore::open(url, opts).await?)
    } else {
        Err(StoreError::UnknownScheme {
            url: crate::config::mask_url_password(url),
        })
    }
}

/// Open a store only to read it (operator commands beside a running
/// proxy). An SQLite journal is opened read-only, without its lock.
pub async fn open_reader(url: &str, opts: &StoreOptions) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::open_reader(url, opts).await?))
    } else {
        open(url, opts).await
    }
}

/// Whether the store can be opened, changing nothing: an SQLite journal
/// opened read-only without its lock, a PostgreSQL database connected to
/// once (`SELECT 1`, within `store_options.connect_timeout_ms`), no
/// migration run.
pub async fn probe(url: &str, opts: &StoreOptions) -> Result<(), StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        postgres::probe(url, opts).await
    } else {
        open_reader(url, opts).await.map(drop)
    }
}

/// Now, as RFC 3339 UTC with second precision (Twilio's own format).
pub fn now_rfc3339() -> String {
    rfc3339(time::OffsetDateTime::now_utc())
}

pub fn rfc3339(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Column types both backends decode the same way.
pub(crate) trait RowExt: sqlx::Row {
    fn text(&self, col: &str) -> Result<String, StoreError>;
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError>;
    fn int(&self, col: &str) -> Result<i64, StoreError>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError>;
}

impl<R> RowExt for R
where
    R: sqlx::Row,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn text(&self, col: &str) -> Result<String, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn int(&self, col: &str) -> Result<i64, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.try_get(col)?)
    }
}

/// A `repairs` row, from either backend.
pub(crate) fn repair_from_row(row: &impl RowExt) -> Result<RepairRecord, StoreError> {
    let id = row.int("id")?;
    Ok(RepairRecord {
        id,
        created_at: row.text("created_at")?,
        updated_at: row.text("updated_at")?,
        account_sid: row.text("account_sid")?,
        credential_user: row.text("credential_user")?,
        upstream: row.text("upstream")?,
        service_base: row.text("service_base")?,
        service_sid: row.text("service_sid")?,
        identity: row.text("identity")?,
        state: RepairState::parse(&row.text("state")?)
            .ok_or(StoreError::Corrupt { id, source: None })?,
        snapshot: serde_json::from_str(&row.text("snapshot")?).map_err(|e| {
            StoreError::Corrupt {
                id,
                source: Some(e),
            }
        })?,
        webhook: row.opt_text("webhook")?,
        note: row.opt_text("note")?,
    })
}

/// An `incidents` row, from either backend.
pub(crate) fn alias_from_row(row: &impl RowExt) -> Result<SidAlias, StoreError> {
    Ok(SidAlias {
        created_at: row.text("created_at")?,
        repair_id: row.int("repair_id")?,
        account_sid: row.text("account_sid")?,
        service_sid: row.text("service_sid")?,
        service_base: row.text("service_base")?,
        conversation_sid: row.opt_text("conversation_sid")?,
        old_sid: row.text("old_sid")?,
        new_sid: row.text("new_sid")?,
    })
}

pub(crate) fn incident_from_row(row: &impl RowExt) -> Result<Incident, StoreError> {
    let id = row.int("id")?;
    Ok(Incident {
        id,
        at: row.text("at")?,
        account_sid: row.opt_text("account_sid")?,
        service_sid: row.opt_text("service_sid")?,
        conversation_sid: row.text("conversation_sid")?,
        identity: row.opt_text("identity")?,
        outcome: Outcome::parse(&row.text("outcome")?)
            .ok_or(StoreError::Corrupt { id, source: None })?,
        detail: row.opt_text("detail")?,
        repair_id: row.opt_int("repair_id")?,
        steps: serde_json::from_str(&row.text("steps")?).map_err(|e| StoreError::Corrupt {
            id,
            source: Some(e),
        })?,
        request_id: row.opt_text("request_id")?,
    })
}
