//! The PostgreSQL store, shared by a fleet of replicas.
//!
//! - Migrations are versioned and run at start-up under a global advisory
//!   lock, so replicas starting together apply each exactly once.
//! - The per-(account, service, identity) repair lock is a session-level
//!   advisory lock on a dedicated connection: held for the repair's
//!   duration, released when the guard drops, and released by the server
//!   when the holder dies (its connection drops).
//! - Every statement runs under `statement_timeout`.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection};

use super::{
    Incident, NewRepair, RepairRecord, RepairState, Store, StoreError, StoreLock,
    incident_from_row, now_rfc3339, repair_from_row,
};
use crate::config::StoreOptions;

/// Advisory lock key serialising migrations across replicas.
const MIGRATION_LOCK: i64 = 0x0074_7270_5f6d_6967; // "trp_mig"

const MIGRATIONS: &[&str] = &[
    // 1: journal and incidents
    "CREATE TABLE repairs (
        id BIGSERIAL PRIMARY KEY,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        account_sid TEXT NOT NULL,
        credential_user TEXT NOT NULL,
        upstream TEXT NOT NULL,
        service_base TEXT NOT NULL,
        service_sid TEXT NOT NULL,
        identity TEXT NOT NULL,
        state TEXT NOT NULL,
        snapshot TEXT NOT NULL,
        webhook TEXT,
        note TEXT
    );
    CREATE INDEX repairs_state ON repairs(state);
    CREATE INDEX repairs_identity ON repairs(service_sid, identity, created_at);
    CREATE TABLE incidents (
        id BIGSERIAL PRIMARY KEY,
        at TEXT NOT NULL,
        account_sid TEXT,
        service_sid TEXT,
        conversation_sid TEXT NOT NULL,
        identity TEXT,
        outcome TEXT NOT NULL,
        detail TEXT,
        repair_id BIGINT,
        steps TEXT NOT NULL
    );",
    // 2: the readiness write probe
    "CREATE TABLE health (id INTEGER PRIMARY KEY, at TEXT NOT NULL)",
];

pub struct PgStore {
    pool: PgPool,
    options: PgConnectOptions,
    connect_timeout: Duration,
    /// The schema is in place (migrations ran).
    migrated: AtomicBool,
}

/// How often start-up migrations are retried while the database is down.
const MIGRATE_RETRY: Duration = Duration::from_secs(2);

impl PgStore {
    pub async fn open(url: &str, opts: &StoreOptions) -> Result<Arc<PgStore>, StoreError> {
        let options = PgConnectOptions::from_str(url)?
            .options([("statement_timeout", opts.statement_timeout_ms.to_string())])
            .disable_statement_logging();
        let connect_timeout = Duration::from_millis(opts.connect_timeout_ms);
        // Lazy: a database outage at start-up must not keep the proxy (and
        // every unrelated Twilio call) down. Until the schema is in place the
        // store reports itself unreachable and repairs run check-only.
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections)
            .acquire_timeout(connect_timeout)
            .test_before_acquire(true)
            .connect_lazy_with(options.clone());
        let store = Arc::new(PgStore {
            pool,
            options,
            connect_timeout,
            migrated: AtomicBool::new(false),
        });
        match store.migrate().await {
            Ok(()) => store.migrated.store(true, Ordering::SeqCst),
            Err(e) => {
                tracing::warn!(error = %e, "PostgreSQL store unavailable at start-up; retrying in the background");
                let s = store.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(MIGRATE_RETRY).await;
                        match s.migrate().await {
                            Ok(()) => {
                                s.migrated.store(true, Ordering::SeqCst);
                                tracing::info!("PostgreSQL store available; schema up to date");
                                return;
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "PostgreSQL store still unavailable")
                            }
                        }
                    }
                });
            }
        }
        Ok(store)
    }

    fn ready(&self) -> Result<(), StoreError> {
        if self.migrated.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(StoreError::NotReady)
        }
    }

    fn migrate(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            // A dedicated session: the advisory lock lives as long as it.
            let mut conn = tokio::time::timeout(
                self.connect_timeout,
                PgConnection::connect_with(&self.options),
            )
            .await
            .map_err(|_| StoreError::Db(sqlx::Error::PoolTimedOut))??;
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(MIGRATION_LOCK)
                .execute(&mut conn)
                .await?;
            // The statements run on the pool; the lock session serialises
            // replicas.
            sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                .execute(&self.pool)
                .await?;
            let current: Option<i32> =
                sqlx::query_scalar("SELECT MAX(version) FROM schema_version")
                    .fetch_one(&self.pool)
                    .await?;
            let current = current.unwrap_or(0) as usize;
            for (i, m) in MIGRATIONS.iter().enumerate().skip(current) {
                let script = format!(
                    "BEGIN; {m}; INSERT INTO schema_version (version) VALUES ({}); COMMIT;",
                    i + 1
                );
                sqlx::raw_sql(&script).execute(&self.pool).await?;
            }
            // Closing the session releases the migration lock.
            conn.close().await?;
            Ok(())
        })
    }
}

/// A held advisory lock: the dedicated connection. Dropping it closes the
/// session, which releases the lock on the server.
struct PgLock {
    _conn: PgConnection,
}
impl StoreLock for PgLock {}

impl Store for PgStore {
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.ready()?;
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            Ok(())
        })
    }

    fn probe_write(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.ready()?;
            sqlx::query(
                "INSERT INTO health (id, at) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET at = EXCLUDED.at",
            )
            .bind(now_rfc3339())
            .execute(&self.pool)
            .await?;
            Ok(())
        })
    }

    fn has_open_repair<'a>(&'a self, identity: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            self.ready()?;
            let states: Vec<String> = RepairState::ALL
                .into_iter()
                .filter(|s| s.is_open())
                .map(|s| s.as_str().to_string())
                .collect();
            let open: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM repairs WHERE identity = $1 AND state = ANY($2))",
            )
            .bind(identity)
            .bind(states)
            .fetch_one(&self.pool)
            .await?;
            Ok(open)
        })
    }

    fn shared(&self) -> bool {
        true
    }

    fn try_lock<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Box<dyn StoreLock>>, StoreError>> {
        Box::pin(async move {
            self.ready()?;
            let mut conn = tokio::time::timeout(
                self.connect_timeout,
                PgConnection::connect_with(&self.options),
            )
            .await
            .map_err(|_| StoreError::Db(sqlx::Error::PoolTimedOut))??;
            let got: bool =
                sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                    .bind(key)
                    .fetch_one(&mut conn)
                    .await?;
            if got {
                Ok(Some(Box::new(PgLock { _conn: conn }) as Box<dyn StoreLock>))
            } else {
                let _ = conn.close().await;
                Ok(None)
            }
        })
    }

    fn insert_repair<'a>(&'a self, r: &'a NewRepair) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(async move {
            self.ready()?;
            let now = now_rfc3339();
            let snapshot = serde_json::to_string(&r.snapshot).unwrap_or_default();
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO repairs (created_at, updated_at, account_sid, credential_user, upstream,
                   service_base, service_sid, identity, state, snapshot, webhook)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
            )
            .bind(&now)
            .bind(&now)
            .bind(&r.account_sid)
            .bind(&r.credential_user)
            .bind(&r.upstream)
            .bind(&r.service_base)
            .bind(&r.service_sid)
            .bind(&r.identity)
            .bind(RepairState::Deleting.as_str())
            .bind(snapshot)
            .bind(&r.webhook)
            .fetch_one(&self.pool)
            .await?;
            Ok(id)
        })
    }

    fn set_repair_state<'a>(
        &'a self,
        id: i64,
        state: RepairState,
        note: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.ready()?;
            sqlx::query(
                "UPDATE repairs SET state = $1, updated_at = $2, note = COALESCE($3, note) WHERE id = $4",
            )
            .bind(state.as_str())
            .bind(now_rfc3339())
            .bind(note)
            .bind(id)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
    }

    fn get_repair(&self, id: i64) -> BoxFuture<'_, Result<Option<RepairRecord>, StoreError>> {
        Box::pin(async move {
            self.ready()?;
            let row = sqlx::query("SELECT * FROM repairs WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map(repair_from_row).transpose()
        })
    }

    fn pending_repairs(&self) -> BoxFuture<'_, Result<Vec<RepairRecord>, StoreError>> {
        Box::pin(async move {
            self.ready()?;
            let mut q =
                sqlx::query("SELECT * FROM repairs WHERE state NOT IN ($1, $2, $3) ORDER BY id");
            for s in RepairState::finals() {
                q = q.bind(s);
            }
            let rows = q.fetch_all(&self.pool).await?;
            rows.iter().map(repair_from_row).collect()
        })
    }

    fn count_repairs_since<'a>(
        &'a self,
        service_sid: &'a str,
        identity: &'a str,
        since: &'a str,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(async move {
            self.ready()?;
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM repairs WHERE service_sid = $1 AND identity = $2 AND created_at >= $3",
            )
            .bind(service_sid)
            .bind(identity)
            .bind(since)
            .fetch_one(&self.pool)
            .await?;
            Ok(n)
        })
    }

    fn insert_incident<'a>(&'a self, i: &'a Incident) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(async move {
            self.ready()?;
            let steps = serde_json::to_string(&i.steps).unwrap_or_else(|_| "[]".into());
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO incidents (at, account_sid, service_sid, conversation_sid, identity,
                   outcome, detail, repair_id, steps) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 RETURNING id",
            )
            .bind(&i.at)
            .bind(&i.account_sid)
            .bind(&i.service_sid)
            .bind(&i.conversation_sid)
            .bind(&i.identity)
            .bind(i.outcome.as_str())
            .bind(&i.detail)
            .bind(i.repair_id)
            .bind(steps)
            .fetch_one(&self.pool)
            .await?;
            Ok(id)
        })
    }

    fn incidents(&self, limit: i64) -> BoxFuture<'_, Result<Vec<Incident>, StoreError>> {
        Box::pin(async move {
            self.ready()?;
            let rows = sqlx::query("SELECT * FROM incidents ORDER BY id DESC LIMIT $1")
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
            rows.iter().map(incident_from_row).collect()
        })
    }
}
