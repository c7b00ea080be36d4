//! The embedded SQLite store (the default).

use std::str::FromStr;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use super::{Store, StoreError};
use crate::config::StoreOptions;

pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Open (creating file and parent directory if missing) and migrate.
    pub async fn open(url: &str, opts: &StoreOptions) -> Result<SqliteStore, StoreError> {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| StoreError::Url(url.to_string()))?;
        if path != ":memory:" {
            if let Some(parent) = std::path::Path::new(path).parent() {
                if !parent.as_os_str().is_empty() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| StoreError::Url(format!("{url}: {e}")))?;
                }
            }
        }
        let options = SqliteConnectOptions::from_str(&format!("sqlite:{path}"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a journal step is on disk before the upstream call it announces.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_millis(opts.statement_timeout_ms));
        let pool = SqlitePoolOptions::new()
            .max_connections(opts.max_connections)
            .acquire_timeout(Duration::from_millis(opts.connect_timeout_ms))
            .connect_with(options)
            .await?;
        Ok(SqliteStore { pool })
    }
}

impl Store for SqliteStore {
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            Ok(())
        })
    }
}
