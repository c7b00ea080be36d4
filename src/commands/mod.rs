//! The subcommands, one file each; each has a `run` function that takes
//! its parsed arguments (and, where it prints, the writer to print to), so
//! a test can call it without a process.
//!
//! The command line itself (clap types only) is [`crate::cli`]; `main.rs`
//! is one `match` from a [`crate::cli::Command`] to a `run` here, and the
//! only place errors become text. Errors here are [`CommandError`]s.

pub mod check_config;
pub mod demo;
pub mod emulator;
pub mod healthcheck;
pub mod incidents;
pub mod repair;
pub mod selftest;
pub mod serve;

use std::net::SocketAddr;

/// Why a subcommand failed. `main` prints it with its chain of sources.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    App(#[from] crate::app::AppError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Credential(#[from] crate::repair::credential::CredentialError),
    #[error(transparent)]
    Api(#[from] crate::twilio_api::ApiError),
    #[error(transparent)]
    Step(#[from] crate::repair::step::StepError),
    #[error(transparent)]
    Snapshot(#[from] crate::repair::user::SnapshotError),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// Arguments that parse but cannot be used; the text says what to do.
    #[error("{0}")]
    Usage(&'static str),
    #[error("invalid {what} {origin}")]
    Origin { what: &'static str, origin: String },
    #[error("cannot read service {service}: status {status}")]
    ServiceUnreadable {
        service: String,
        status: http::StatusCode,
    },
    #[error("journal record {repair_id} stays open for recovery")]
    RepairOpen {
        repair_id: i64,
        #[source]
        source: Box<crate::repair::user::ConvergeError>,
    },
    #[error("a repair of this identity is running right now (its lock is held): try again later")]
    RepairRunning,
    #[error(
        "journal record {repair_id} of this identity is unfinished ({state}): let recovery finish it, or abandon it (POST /repairs/{repair_id}/abandon) first"
    )]
    RepairUnfinished {
        repair_id: i64,
        state: crate::store::RepairState,
    },
    #[error(
        "no User `{identity}` in service {service}: nothing to repair, nothing changed (a typo? pass --create-missing to create it)"
    )]
    NoUser { identity: String, service: String },
    #[error(
        "the journal {path} is held by a running proxy: ask it to run the repair with --admin http://<its admin_listen> (and TRP_ADMIN_TOKEN)"
    )]
    JournalHeld { path: String },
    #[error(
        "refused: {0} (the proxy's own rule for operator repairs; see repair.mode, repair.allow_services, repair.deny_services, repair.max_repairs_per_window)"
    )]
    Refused(String),
    #[error("admin plane: {0}")]
    Admin(String),
    #[error("no incident {id} in this store (see `incidents export` or the incidents page)")]
    NoIncident { id: i64 },
    #[error(transparent)]
    Selftest(crate::selftest::SelftestError),
    #[error("selftest: {failed} of {total} checks did not hold")]
    SelftestFailed { failed: usize, total: usize },
    #[error(transparent)]
    Emulator(Box<dyn std::error::Error + Send + Sync>),
}

/// Bind a listener, naming the address when it cannot be.
pub(crate) async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, CommandError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| CommandError::Listen { addr, source })
}

/// Completes on SIGINT, SIGTERM or SIGQUIT (one handler, shared with the emulator).
pub use twilio_wire::shutdown_signal;
