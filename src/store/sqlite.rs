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

use sqlx::Sqlite;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::StoreError;
use super::migrations;
use super::sql::{Backend, SqlStore};
use crate::config::StoreOptions;

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
        let file_err = |cause| StoreError::File {
            path: path.to_string(),
            cause,
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

/// SQLite's part of a [`SqlStore`]: the journal file, locked and
/// checked before each write.
pub struct SqliteBackend {
    /// `None` for `:memory:` and for a reader.
    file: Option<JournalFile>,
}

impl Backend for SqliteBackend {
    type Db = Sqlite;

    /// Before a journal write: the path must still name the file opened at
    /// start-up. A write into a deleted file would succeed and be lost at
    /// the next start; failing it lets the repair say so (and go on from
    /// memory).
    fn before_write(&self) -> Result<(), StoreError> {
        match &self.file {
            Some(f) => f.still_in_place(),
            None => Ok(()),
        }
    }
}

/// The SQLite journal.
pub type SqliteStore = SqlStore<SqliteBackend>;

impl SqlStore<SqliteBackend> {
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
                    std::fs::create_dir_all(parent).map_err(|cause| StoreError::Directory {
                        url: url.to_string(),
                        cause,
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
        if access == Access::Owner {
            // One process owns an SQLite file (the lock above): no
            // migration lock is needed; each migration and its
            // `_sqlx_migrations` row land in one transaction.
            migrations::migrator(migrations::SQLITE)
                .await?
                .run(&pool)
                .await?;
        }
        Ok(SqlStore {
            pool,
            backend: SqliteBackend { file },
        })
    }
}
