//! The PostgreSQL store, shared by a fleet of replicas.
//!
//! - Migrations (`migrations/postgres/`) run at start-up under a global
//!   advisory lock, so replicas starting together apply each exactly once;
//!   until they have run (the database may be down at start-up: the pool
//!   is lazy and they are retried in the background) every statement
//!   fails with [`StoreError::NotReady`].
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
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, Postgres};

use super::migrations;
use super::sql::{Backend, SqlStore};
use super::{StoreError, StoreLock};
use crate::config::StoreOptions;

/// Advisory lock key serialising migrations across replicas.
const MIGRATION_LOCK: i64 = 0x0074_7270_5f6d_6967; // "trp_mig"

/// PostgreSQL's part of a [`SqlStore`]: what the advisory-lock sessions
/// connect with, and the gate that holds every statement back until the
/// schema is in place.
pub struct PgBackend {
    options: PgConnectOptions,
    connect_timeout: Duration,
    /// The schema is in place (migrations ran).
    migrated: AtomicBool,
}

impl PgBackend {
    /// A dedicated session (not from the pool): an advisory lock lives as
    /// long as it.
    async fn session(&self) -> Result<PgConnection, StoreError> {
        tokio::time::timeout(
            self.connect_timeout,
            PgConnection::connect_with(&self.options),
        )
        .await
        .map_err(|_| StoreError::Db(sqlx::Error::PoolTimedOut))?
        .map_err(StoreError::from)
    }
}

impl Backend for PgBackend {
    type Db = Postgres;

    fn before_statement(&self) -> Result<(), StoreError> {
        if self.migrated.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(StoreError::NotReady)
        }
    }

    fn shared(&self) -> bool {
        true
    }

    fn try_lock<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Box<dyn StoreLock>>, StoreError>> {
        Box::pin(async move {
            self.before_statement()?;
            let mut conn = self.session().await?;
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
}

/// The PostgreSQL journal.
pub type PgStore = SqlStore<PgBackend>;

/// Connect once and run `SELECT 1` (`check-config --probe-store`).
pub async fn probe(url: &str, opts: &StoreOptions) -> Result<(), StoreError> {
    use sqlx::{ConnectOptions, Connection};
    let options = PgConnectOptions::from_str(url)?.disable_statement_logging();
    let connect = async {
        let mut c = options.connect().await?;
        sqlx::query("SELECT 1").execute(&mut c).await?;
        c.close().await?;
        Ok::<(), sqlx::Error>(())
    };
    match tokio::time::timeout(Duration::from_millis(opts.connect_timeout_ms), connect).await {
        Ok(r) => r.map_err(StoreError::from),
        Err(_) => Err(StoreError::Timeout(opts.connect_timeout_ms)),
    }
}

/// How often start-up migrations are retried while the database is down.
const MIGRATE_RETRY: Duration = Duration::from_secs(2);

impl SqlStore<PgBackend> {
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
        let store = Arc::new(SqlStore {
            pool,
            backend: PgBackend {
                options,
                connect_timeout,
                migrated: AtomicBool::new(false),
            },
        });
        match store.migrate().await {
            Ok(()) => store.backend.migrated.store(true, Ordering::SeqCst),
            Err(e) => {
                tracing::warn!(error = %e, "PostgreSQL store unavailable at start-up; retrying in the background");
                let s = store.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(MIGRATE_RETRY).await;
                        match s.migrate().await {
                            Ok(()) => {
                                s.backend.migrated.store(true, Ordering::SeqCst);
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

    fn migrate(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut conn = self.backend.session().await?;
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(MIGRATION_LOCK)
                .execute(&mut conn)
                .await?;
            // The migrations run on the pool; the lock session serialises
            // replicas. sqlx's own advisory lock is off: taken on a pooled
            // connection, it would outlive a failed migration there and
            // block every retry, while this session's lock goes when the
            // session does. Each migration lands with its
            // `_sqlx_migrations` row in one transaction.
            let mut migrator = migrations::migrator(migrations::POSTGRES).await?;
            migrator.set_locking(false);
            migrator.run(&self.pool).await?;
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
