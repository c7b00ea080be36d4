//! # twilio-repair-proxy
//!
//! A transparent reverse proxy for Twilio's REST API that repairs one known
//! Twilio Conversations fault on the fly: a `404`/`20404` answer to a
//! Participant create after that identity's participant was deleted.
//! Everything else passes through unchanged.
//!
//! Components, one module each:
//! - [`config`]: the typed configuration and its four layers (defaults in
//!   `config/default.toml`, file, `TRP_*` environment, flags).
//! - [`cli`]: the command line (`serve`, `check-config`, `emulator`,
//!   `healthcheck`).
//! - [`routing`]: which upstream a request goes to; SSRF refusals.
//! - [`headers`]: hop-by-hop header hygiene.
//! - [`rewrite`]: optional link rewriting of Twilio's absolute URLs.
//! - [`forward`]: the pooled rustls upstream client and streaming bodies.
//! - [`egress`]: `HTTPS_PROXY`/`NO_PROXY` egress through `CONNECT` tunnels.
//! - [`proxy`]: the request handler and the whole tower middleware stack.
//! - [`repair`]: the check-and-repair workflow for Participant creates.
//! - [`store`]: the repair journal and incidents (SQLite, or PostgreSQL
//!   for fleets).
//! - [`vocabulary`]: the repair's outcomes, journal states and step kinds.
//! - [`body`]: bounded decoding of bodies the proxy looks into.
//! - [`admin`], [`metrics`], [`telemetry`]: the admin listener, Prometheus
//!   metrics, logging.
//! - [`server`]: the accept loop with connection bounds and graceful drain.
//! - [`ops`]: operator commands (`demo`, `incidents export`, `repair`).
//! - [`twilio_api`]: the small Twilio client the workflow uses.
//! - [`emulator`]: a stateful Twilio Conversations emulator that reproduces
//!   the fault, for tests and demos.
//!
//! [`run`] starts a proxy on listeners it is given; `main` and the tests both
//! call it.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod body;
pub mod cli;
pub mod commands;
pub mod config;
pub mod egress;
pub mod emulator;
pub mod forward;
pub mod headers;
pub mod metrics;
pub mod proxy;
pub mod repair;
pub mod rewrite;
pub mod routing;
pub mod server;
pub mod sid;
pub mod store;
pub mod telemetry;
pub mod twilio_api;
pub mod twilio_error;
pub mod vocabulary;

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
