//! # twilio-repair-proxy
//!
//! A transparent reverse proxy for Twilio's REST API that repairs one known
//! Twilio Conversations fault on the fly: a `404`/`20404` answer to a
//! Participant create after that identity's participant was deleted.
//! Everything else passes through unchanged.
//!
//! # Layout
//!
//! One concern a module, listed top-down. Modules point one way: a module
//! uses only modules below it in this list (the spine is `main → commands
//! → app → proxy → repair → twilio_api → forward`; the modules after
//! `server` are leaves, using nothing above them).
//!
//! - `main.rs`: parse the command line and run one subcommand; the only
//!   place errors become text, and the only user of `anyhow`.
//! - [`commands`]: one file per subcommand (`serve`, `check-config`,
//!   `healthcheck`, `emulator`, `demo`, `incidents`, `repair`, `selftest`), each with a
//!   `run` function, and their error type.
//! - [`cli`]: the command line as clap types, nothing else.
//! - [`emulator`]: a stateful Twilio Conversations emulator that reproduces
//!   the fault, for tests and demos: its own crate (`crates/twilio-emulator`),
//!   re-exported here.
//! - [`app`]: one proxy instance: [`App::build`] opens the journal and
//!   builds every shared part once, [`App::serve`] runs the listeners and
//!   worker runtimes and drains on shutdown; [`app::Live::apply`] applies a
//!   reloaded configuration by swapping whole snapshots.
//! - [`admin`]: the admin listener (probes, metrics, incidents, journal)
//!   and what it may show to whom.
//! - [`selftest`]: the repair proven on an operator's own account (a
//!   throwaway service, the repair's own workflow, every field read back,
//!   the service deleted): for `selftest` and the admin's `POST /selftest`.
//! - [`proxy`]: the request handler and what wraps it (a panic guard; no
//!   tower layers, which would box the body or the future per request).
//!   A request reads one [`proxy::Settings`] snapshot (routes and hosts,
//!   per-request timeouts, link rewriting, the shield) when it arrives and
//!   keeps it to its end; a reload swaps it whole for the next request.
//! - [`repair`]: the check-and-repair workflow for Participant creates,
//!   and SID continuity after it (requests naming a SID a repair changed
//!   are sent with the new one).
//! - [`twilio_api`]: the small Twilio client the workflow uses (and its
//!   tap: the selftest's record of what that client put on the wire).
//! - [`shield`]: the opt-in 429 shield (retries on 429, a retry budget, a
//!   per-account concurrency cap) around every forward and every workflow
//!   call; off, it is not built at all. It reads the Basic user with
//!   `sid::basic_user`, the one parser of it.
//! - [`forward`]: one request to one upstream over the rustls client, and
//!   why it failed.
//! - [`pool`]: the upstream connections, one pool per worker, HTTP/1.1
//!   and HTTP/2.
//! - [`egress`]: `HTTPS_PROXY`/`NO_PROXY` egress through `CONNECT` tunnels.
//! - [`rewrite`]: link rewriting: the link fields of Twilio's JSON answers
//!   (found by structure, never by text search) point back at the proxy.
//! - [`routing`]: which upstream a request goes to; SSRF refusals.
//! - [`headers`]: hop-by-hop header hygiene.
//! - [`server`]: the accept loop with connection bounds, idle-connection
//!   watchdog and parking, and graceful drain.
//! - [`reload`]: SIGHUP as a reload notice (never the end of the process),
//!   followed by the configuration reload and the listener's certificate.
//! - [`telemetry`]: logging, pretty or JSON.
//! - [`backoff`]: the one capped exponential backoff with jitter, for the
//!   shield's re-sends and the repair's retries and read-backs.
//! - [`body`]: streamed, metered bodies, and the bounded reading and
//!   decoding of the bodies the proxy looks into.
//! - [`metrics`]: Prometheus metrics and their label sets.
//! - [`privacy`]: how identities and journal records are shown outside
//!   the proxy (`repair.incident_identity`), for the admin plane, exports
//!   and the incidents the workflow records.
//! - [`store`]: the repair journal and incidents (SQLite, or PostgreSQL
//!   for fleets).
//! - [`vocabulary`]: the repair's outcomes, journal states and step kinds.
//! - [`twilio_error`]: Twilio's error body, and the proxy's own errors in
//!   that shape.
//! - [`config`]: the typed configuration and its four layers (defaults in
//!   `config/default.toml`, file, `TRP_*` environment, flags), and when it
//!   is reloaded, which keys change live and which need a restart
//!   (`config::reload`).
//! - [`sid`]: Twilio SID shapes.
//!
//! The Twilio error body and the SID shapes the emulator shares with the
//! proxy ([`twilio_error`], [`sid`]) are written once, in `crates/twilio-wire`.
//!
//! [`run`] builds an [`App`] on listeners it is given and serves it (the
//! integration tests' in-process proxy).
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod backoff;
pub mod body;
pub mod cli;
pub mod commands;
pub mod config;
pub mod egress;
pub mod forward;
pub mod headers;
pub mod metrics;
pub mod pool;
pub mod privacy;
pub mod proxy;
pub mod reload;
pub mod repair;
pub mod rewrite;
pub mod routing;
pub mod selftest;
pub mod server;
pub mod shield;
pub mod sid;
pub mod store;
pub mod telemetry;
pub mod twilio_api;
pub mod twilio_error;
pub mod vocabulary;

/// The emulator (its own crate, `crates/twilio-emulator`), under its old path.
pub use twilio_emulator as emulator;
/// Completes on SIGINT, SIGTERM or SIGQUIT (shared with the emulator).
pub use twilio_wire::shutdown_signal;

use std::future::Future;

pub use app::{App, AppError, Listeners};

/// Build a proxy on `listeners` and serve until `shutdown` completes
/// ([`App::build`], then [`App::serve`]): what `serve` and the tests run.
pub async fn run(
    listeners: Listeners,
    config: config::Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AppError> {
    App::build(config, listeners).await?.serve(shutdown).await
}
