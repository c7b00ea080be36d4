//! The embedded SQLite store (the default).
//!
//! One process owns an SQLite journal, and this is enforced: the file is
//! held under an exclusive OS lock (`flock`) for the life of the store, so a
//! second proxy on the same file refuses to start with a one-line error
//! instead of running the repair's lock-free half against a journal it
//! cannot see into. Readiness probes a real write, and checks that the path
//! still names the file opened at start-up (same device and inode): a
//! journal whose directory was deleted would otherwise go on accepting
//! writes into a file nobody will ever open again.

use std::str::FromStr;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::{
    Incident, NewRepair, RepairRecord, RepairState, Store, StoreError, incident_from_row,
    now_rfc3339, repair_from_row,
};
use crate::config::StoreOptions;

/// Versioned schema migrations, applied in order, once each.
const MIGRATIONS: &[&str] = &[
    // 1: journal and incidents
    "CREATE TABLE repairs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
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
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        account_sid TEXT,
        service_sid TEXT,
        conversation_sid TEXT NOT NULL,
        identity TEXT,
        outcome TEXT NOT NULL,
        detail TEXT,
        repair_id INTEGER,
        steps TEXT NOT NULL
    );",
    // 2: the readiness write probe
    "CREATE TABLE health (id INTEGER PRIMARY KEY, at TEXT NOT NULL)",
];

/// The journal file as opened: held under an exclusive lock, and
/// identified by device and inode.
struct JournalFile {
    path: std::path::PathBuf,
    /// Holds the `flock` until the store is dropped.
    _lock: std::fs::File,
    identity: (u64, u64),
}

impl JournalFile {
    fn open(path: &str) -> Result<JournalFile, StoreError> {
        use std::os::unix::fs::MetadataExt;
        let file_err = |source| StoreError::File {
            path: path.to_string(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(file_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    path: path.to_string(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(file_err(e)),
        }
        let meta = file.metadata().map_err(file_err)?;
        Ok(JournalFile {
            path: path.into(),
            _lock: file,
            identity: (meta.dev(), meta.ino()),
        })
    }

    /// The path still names the file that was opened (and locked).
    fn still_in_place(&self) -> Result<(), StoreError> {
        use std::os::unix::fs::MetadataExt;
        let replaced = || StoreError::FileReplaced {
            path: self.path.display().to_string(),
        };
        let meta = std::fs::metadata(&self.path).map_err(|_| replaced())?;
        if (meta.dev(), meta.ino()) != self.identity {
            return Err(replaced());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// The one process that writes the journal.
    Owner,
    /// A reader beside it.
    Reader,
}

pub struct SqliteStore {
    pool: SqlitePool,
    /// `None` for `:memory:`.
    file: Option<JournalFile>,
}

impl SqliteStore {
    /// Open (creating file and parent directory if missing) and migrate.
    pub async fn open(url: &str, opts: &StoreOptions) -> Result<SqliteStore, StoreError> {
        Self::open_as(url, opts, Access::Owner).await
    }

    /// Open an existing journal to read it (`incidents export` beside a
    /// running proxy): no lock, no migrations, no writes.
    pub async fn open_reader(url: &str, opts: &StoreOptions) -> Result<SqliteStore, StoreError> {
        Self::open_as(url, opts, Access::Reader).await
    }

    async fn open_as(
        url: &str,
        opts: &StoreOptions,
        access: Access,
    ) -> Result<SqliteStore, StoreError> {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| StoreError::UnknownScheme {
                url: url.to_string(),
            })?;
        let mut file = None;
        if path != ":memory:" && access == Access::Owner {
            if let Some(parent) = std::path::Path::new(path).parent() {
                if !parent.as_os_str().is_empty() {
                    std::fs::create_dir_all(parent).map_err(|source| StoreError::Directory {
                        url: url.to_string(),
                        source,
                    })?;
                }
            }
            file = Some(JournalFile::open(path)?);
        }
        let options = SqliteConnectOptions::from_str(&format!("sqlite:{path}"))?
            .create_if_missing(access == Access::Owner)
            .read_only(access == Access::Reader)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a journal step is on disk before the upstream call it announces.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_millis(opts.statement_timeout_ms));
        let pool = SqlitePoolOptions::new()
            .max_connections(opts.max_connections)
            .acquire_timeout(Duration::from_millis(opts.connect_timeout_ms))
            .connect_with(options)
            .await?;
        let store = SqliteStore { pool, file };
        if access == Access::Owner {
            store.migrate().await?;
        }
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        // One process owns an SQLite file; each migration and its version
        // row are applied in one script so they land together.
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            .execute(&self.pool)
            .await?;
        let current: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM schema_version")
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
        Ok(())
    }
}

impl SqliteStore {
    /// Before a journal write: the path must still name the file opened at
    /// start-up. A write into a deleted file would succeed and be lost at
    /// the next start; failing it lets the repair say so (and go on from
    /// memory).
    fn writable(&self) -> Result<(), StoreError> {
        match &self.file {
            Some(f) => f.still_in_place(),
            None => Ok(()),
        }
    }
}

impl Store for SqliteStore {
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            Ok(())
        })
    }

    fn probe_write(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.writable()?;
            sqlx::query("INSERT OR REPLACE INTO health (id, at) VALUES (1, ?)")
                .bind(now_rfc3339())
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }

    fn has_open_repair<'a>(&'a self, identity: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let states: Vec<&str> = RepairState::ALL
                .into_iter()
                .filter(|s| s.is_open())
                .map(RepairState::as_str)
                .collect();
            let sql = format!(
                "SELECT COUNT(*) FROM repairs WHERE identity = ? AND state IN ({})",
                vec!["?"; states.len()].join(", ")
            );
            let mut q = sqlx::query_scalar::<_, i64>(&sql).bind(identity);
            for s in states {
                q = q.bind(s);
            }
            let n = q.fetch_one(&self.pool).await?;
            Ok(n > 0)
        })
    }

    fn insert_repair<'a>(&'a self, r: &'a NewRepair) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(async move {
            self.writable()?;
            let now = now_rfc3339();
            let snapshot = serde_json::to_string(&r.snapshot).unwrap_or_default();
            let id = sqlx::query(
                "INSERT INTO repairs (created_at, updated_at, account_sid, credential_user, upstream,
                   service_base, service_sid, identity, state, snapshot, webhook)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            .execute(&self.pool)
            .await?
            .last_insert_rowid();
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
            self.writable()?;
            sqlx::query("UPDATE repairs SET state = ?, updated_at = ?, note = COALESCE(?, note) WHERE id = ?")
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
            let row = sqlx::query("SELECT * FROM repairs WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map(repair_from_row).transpose()
        })
    }

    fn pending_repairs(&self) -> BoxFuture<'_, Result<Vec<RepairRecord>, StoreError>> {
        Box::pin(async move {
            let mut q =
                sqlx::query("SELECT * FROM repairs WHERE state NOT IN (?, ?, ?) ORDER BY id");
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
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM repairs WHERE service_sid = ? AND identity = ? AND created_at >= ?",
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
            self.writable()?;
            let steps = serde_json::to_string(&i.steps).unwrap_or_else(|_| "[]".into());
            let id = sqlx::query(
                "INSERT INTO incidents (at, account_sid, service_sid, conversation_sid, identity,
                   outcome, detail, repair_id, steps) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            .execute(&self.pool)
            .await?
            .last_insert_rowid();
            Ok(id)
        })
    }

    fn incidents(&self, limit: i64) -> BoxFuture<'_, Result<Vec<Incident>, StoreError>> {
        Box::pin(async move {
            let rows = sqlx::query("SELECT * FROM incidents ORDER BY id DESC LIMIT ?")
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
            rows.iter().map(incident_from_row).collect()
        })
    }
}
