//! The command line. `serve` is the default subcommand, so
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
    CheckConfig(ServeArgs),
    /// Run the Twilio Conversations emulator.
    Emulator(crate::emulator::EmulatorArgs),
    /// Exit 0 if the admin listener's /healthz answers 200 (for container HEALTHCHECKs).
    Healthcheck(HealthcheckArgs),
    /// Run the emulator with the fault armed and the proxy in front of it: no Twilio account needed.
    Demo(crate::ops::DemoArgs),
    /// Read recorded incidents.
    #[command(subcommand)]
    Incidents(crate::ops::IncidentsCommand),
    /// Run Twilio's workaround for one identity now (journaled), with the operator repair credential.
    Repair(crate::ops::RepairArgs),
}

/// Flags of `serve` and `check-config`.
#[derive(Debug, Clone, Args, Default)]
pub struct ServeArgs {
    /// Proxy listen address [default: 127.0.0.1:8080]
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Admin listen address [default: 127.0.0.1:9090]
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    /// Send every request to this origin instead of the routing table.
    #[arg(long)]
    pub upstream: Option<String>,
    /// Journal store URL [default: sqlite://data/journal.db]
    #[arg(long)]
    pub store: Option<String>,
    /// A TOML configuration file (see config/default.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
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
    /// Admin address to query [default: admin_listen from the configuration]
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 3)]
    pub timeout: u64,
}

/// `GET /healthz` over a plain TCP connection; true on a 200.
pub async fn healthcheck(addr: SocketAddr, timeout: std::time::Duration) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .ok()?;
        let mut buf = [0u8; 32];
        let n = s.read(&mut buf).await.ok()?;
        let head = std::str::from_utf8(&buf[..n]).ok()?;
        Some(head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"))
    };
    matches!(tokio::time::timeout(timeout, probe).await, Ok(Some(true)))
}
