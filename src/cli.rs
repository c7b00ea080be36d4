//! The command line, as clap types and nothing else (what each subcommand
//! does is in [`crate::commands`]). `serve` is the default subcommand, so
//! `twilio-repair-proxy --listen ...` and `twilio-repair-proxy serve --listen ...`
//! are the same. The flags `--listen --admin-listen --upstream --store
//! --config` are a fixed interface.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError, Overrides};

#[derive(Debug, Parser)]
#[command(
    name = "twilio-repair-proxy",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (the default).
    Serve(ServeArgs),
    /// Print the effective configuration (secrets masked) or why it is invalid.
    CheckConfig(CheckConfigArgs),
    /// Run the Twilio Conversations emulator.
    Emulator(crate::emulator::EmulatorArgs),
    /// Exit 0 if the admin listener's /healthz answers 200 (for container HEALTHCHECKs).
    Healthcheck(HealthcheckArgs),
    /// Run the emulator with the fault armed and the proxy in front of it: no Twilio account needed.
    Demo(DemoArgs),
    /// Read recorded incidents.
    #[command(subcommand)]
    Incidents(IncidentsCommand),
    /// Run Twilio's workaround for one identity now (journaled), with the operator repair credential.
    Repair(RepairArgs),
    /// Prove the repair on your own account: a throwaway service, a repair of a User in it, every field read back, the service deleted.
    Selftest(SelftestArgs),
}

/// Flags of `check-config`.
#[derive(Debug, Clone, Args, Default)]
pub struct CheckConfigArgs {
    /// Also open the journal store read-only and say whether it can be
    /// opened (a PostgreSQL database reachable, an SQLite file readable).
    #[arg(long)]
    pub probe_store: bool,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Flags of `serve` and `check-config`. Each names the `TRP_*` variable
/// that sets it too (the configuration's own layering: flags win).
#[derive(Debug, Clone, Args, Default)]
pub struct ServeArgs {
    /// Proxy listen address [default: 127.0.0.1:8080]
    #[arg(long, env = "TRP_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Admin listen address [default: 127.0.0.1:9090]
    #[arg(long, env = "TRP_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Send every request to this origin instead of the routing table.
    #[arg(long, env = "TRP_UPSTREAM")]
    pub upstream: Option<String>,
    /// Journal store URL [default: sqlite://data/journal.db]
    #[arg(long, env = "TRP_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// A TOML configuration file (see config/default.toml).
    #[arg(long, env = "TRP_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Flags of the offline commands (`incidents`, `repair`): the journal and
/// the upstream, never listeners (they open none).
#[derive(Debug, Clone, Args, Default)]
pub struct JournalArgs {
    /// Send every request to this origin instead of the routing table.
    #[arg(long, env = "TRP_UPSTREAM")]
    pub upstream: Option<String>,
    /// Journal store URL [default: sqlite://data/journal.db]
    #[arg(long, env = "TRP_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// A TOML configuration file (see config/default.toml).
    #[arg(long, env = "TRP_CONFIG")]
    pub config: Option<PathBuf>,
}

impl JournalArgs {
    /// The effective configuration: defaults < file < environment < flags.
    pub fn load(&self) -> Result<Config, ConfigError> {
        ServeArgs {
            upstream: self.upstream.clone(),
            store: self.store.clone(),
            config: self.config.clone(),
            ..ServeArgs::default()
        }
        .load()
    }
}

impl ServeArgs {
    /// The effective configuration: defaults < file < environment < flags.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let overrides = Overrides {
            listen: self.listen,
            admin_listen: self.admin_listen,
            upstream: self.upstream.clone(),
            store: self.store.clone(),
        };
        Config::load(self.config.as_deref(), std::env::vars(), &overrides)
    }
}

#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// Admin address to query, `host:port` (`localhost:9090`, `127.0.0.1:9090`)
    /// [default: admin_listen from the configuration]
    #[arg(long)]
    pub admin: Option<String>,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 3)]
    pub timeout: u64,
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Proxy listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Admin listen address.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,
    /// Emulator listen address.
    #[arg(long, default_value = "127.0.0.1:4010")]
    pub emulator_listen: SocketAddr,
    /// Journal store.
    #[arg(long, default_value = "sqlite://data/demo.db")]
    pub store: String,
}

#[derive(Debug, clap::Subcommand)]
pub enum IncidentsCommand {
    /// Print every recorded incident, for Twilio Support (identities hashed
    /// when `repair.incident_identity = "hash"`).
    Export(ExportArgs),
    /// Write one incident's support bundle (a text file for a Twilio Support
    /// ticket: SIDs, timestamps, every call with its Twilio-Request-Id,
    /// the User's date_created; never a credential or attributes).
    Bundle(BundleArgs),
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    Json,
    Csv,
    /// Affected identities grouped by the day their User was created (CSV).
    Clusters,
}

#[derive(Debug, clap::Args)]
pub struct BundleArgs {
    /// The incident's number (as on /incidents and the incidents page).
    #[arg(long)]
    pub id: i64,
    /// Write the bundle to this file instead of standard output.
    #[arg(long)]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub serve: JournalArgs,
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    #[arg(long, value_enum, default_value = "json")]
    pub format: ExportFormat,
    /// Most incidents to export, newest first.
    #[arg(long, default_value_t = 100_000)]
    pub limit: i64,
    #[command(flatten)]
    pub serve: JournalArgs,
}

#[derive(Debug, clap::Args)]
pub struct RepairArgs {
    /// The Conversation Service (IS...).
    #[arg(long)]
    pub service: String,
    /// The User identity to repair.
    #[arg(long)]
    pub identity: String,
    /// Show the snapshot and the planned steps; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Create the User when the identity has none (without it, a missing
    /// User is refused before any write: a typo never makes a new User).
    #[arg(long)]
    pub create_missing: bool,
    /// Ask the running proxy to run the repair (`POST /repairs` on its
    /// admin listener, e.g. `http://127.0.0.1:9090`): fenced against its
    /// own repairs, in its journal, shown on its incidents page.
    #[arg(long, value_name = "URL")]
    pub admin: Option<String>,
    /// The running proxy's admin token, for `--admin`.
    #[arg(long, env = "TRP_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    #[command(flatten)]
    pub serve: JournalArgs,
}

/// Flags of `selftest`. The credential: `TWILIO_API_KEY`/`TWILIO_API_SECRET`
/// (with `TWILIO_ACCOUNT_SID`), else `TWILIO_ACCOUNT_SID`/`TWILIO_AUTH_TOKEN`,
/// else the repair credential the proxy reads (`TRP_REPAIR_API_KEY_SID`/
/// `_SECRET`/`TRP_REPAIR_ACCOUNT_SID` or `repair.credentials_file`), which
/// is also the operator credential the repair steps use, as in the proxy.
#[derive(Debug, Clone, clap::Args)]
pub struct SelftestArgs {
    /// The Conversations API origin to test against.
    #[arg(
        long,
        env = "TRP_SELFTEST_BASE_URL",
        default_value = crate::selftest::CONVERSATIONS_ORIGIN
    )]
    pub base_url: String,
    /// Leave the throwaway service for inspection (its SID is printed).
    #[arg(long)]
    pub keep: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// `X-Twilio-Webhook-Enabled` the test's creates send (`true`, `false`,
    /// or `omit`); every write of the repair must carry the same.
    #[arg(long, env = "TRP_SELFTEST_WEBHOOK_ENABLED", default_value = "false")]
    pub webhook_enabled: String,
    #[arg(long, env = "TWILIO_ACCOUNT_SID")]
    pub account_sid: Option<String>,
    #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    #[arg(long, env = "TWILIO_API_KEY")]
    pub api_key: Option<String>,
    #[arg(long, env = "TWILIO_API_SECRET", hide_env_values = true)]
    pub api_secret: Option<String>,
    /// A TOML configuration file (see config/default.toml): the repair's
    /// timeouts and backoffs, `repair.credentials_file`.
    #[arg(long, env = "TRP_CONFIG")]
    pub config: Option<PathBuf>,
}
