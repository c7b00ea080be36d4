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
//!   the fault, for tests and demos: its own crate (`crates/twilio-emulator`),
//!   re-exported here. The Twilio error body and SIDs it shares with the
//!   proxy ([`twilio_error`], [`sid`]) are written once in `crates/twilio-wire`.
//!
//! [`run`] starts a proxy on listeners it is given; `main` and the tests both
//! call it.
#![forbid(unsafe_code)]

pub mod admin;
pub mod body;
pub mod cli;
pub mod config;
pub mod egress;
pub mod forward;
pub mod headers;
pub mod metrics;
pub mod ops;
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

/// The emulator (its own crate, `crates/twilio-emulator`), under its old path.
pub use twilio_emulator as emulator;
/// Completes on SIGINT or SIGTERM (shared with the emulator).
pub use twilio_wire::shutdown_signal;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::server::{Drain, ServeOptions};

/// The two listeners of a proxy instance, bound by the caller (so tests can
/// bind port 0 and read the address).
pub struct Listeners {
    pub proxy: TcpListener,
    pub admin: TcpListener,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Credential(#[from] repair::credential::CredentialError),
    #[error("proxy listener: {0}")]
    Io(std::io::Error),
}

/// Run a proxy until `shutdown` completes, then drain in-flight requests for
/// at most `limits.shutdown_grace_ms` and return.
pub async fn run(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let metrics = Arc::new(metrics::Metrics::default());
    let routes = routing::Routes::from_config(&config)?;
    let store = store::open(&config.store, &config.store_options).await?;
    let repair = if config.repair.mode == config::RepairMode::Off {
        None
    } else {
        let credential =
            repair::RepairCredential::from_env_or_file(config.repair.credentials_file.as_deref())?;
        if let Some(c) = &credential {
            match &c.account_sid {
                Some(account) => {
                    tracing::info!(key = %c.user, %account, "repair calls for this account use the operator repair credential")
                }
                None => {
                    tracing::warn!(key = %c.user, "the operator repair credential names no account (set TRP_REPAIR_ACCOUNT_SID): it is never used")
                }
            }
        }
        // Repairs run on this (the main) runtime, with a client pooled
        // here: they outlive every worker's runtime and its connections.
        let r = repair::Repairer::new(repair::RepairerParts {
            config: config.repair.clone(),
            client: forward::build_client(&config.limits),
            store: store.clone(),
            metrics: metrics.clone(),
            credential,
            mark_forwarded: config.add_forwarded_headers,
            runtime: None,
            exchange: None,
        });
        // Finish what an earlier run left unfinished, then sweep.
        r.spawn_sweeper();
        Some(r)
    };
    if let Ok(addr) = listeners.admin.local_addr() {
        admin::warn_if_exposed(addr, config.admin.token.is_some());
    }
    let admin_state = Arc::new(admin::AdminState::new(
        &config,
        metrics.clone(),
        store.clone(),
    ));
    let opts = ServeOptions {
        max_connections: config.limits.max_connections,
        header_read_timeout: config.limits.header_read_timeout(),
        keepalive_timeout: config.limits.keepalive_timeout(),
        http2_keepalive_interval: config.limits.http2_keepalive_interval(),
        http2_keepalive_timeout: config.limits.http2_keepalive_timeout(),
        shutdown_grace: config.limits.shutdown_grace(),
        max_request_head_bytes: config.limits.max_request_head_bytes,
    };
    let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let admin_svc = admin::router(admin_state.clone());
    // The admin listener has its own slots (probes never queue behind proxy
    // clients) and the same connection timeouts (idle sockets are reaped).
    let admin_opts = ServeOptions {
        max_connections: config.admin.max_connections,
        ..opts
    };
    let admin_task = tokio::spawn(server::serve(
        listeners.admin,
        admin_svc,
        admin_opts,
        async move {
            let _ = admin_stop_rx.await;
        },
    ));

    tracing::info!(
        listen = %listeners.proxy.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        upstream = config.upstream.as_deref().unwrap_or("routing table"),
        store = %config::mask_url_password(&config.store),
        "proxy listening"
    );
    // One single-threaded runtime per worker thread, each with its own
    // upstream pool: a request and its upstream exchange stay on one thread,
    // with no cross-thread wake-ups. One accept loop hands connections to
    // the workers in turn.
    let workers = match config.limits.worker_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut senders = Vec::with_capacity(workers);
    let mut done = Vec::with_capacity(workers);
    for i in 0..workers {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        senders.push(tx);
        let state = Arc::new(proxy::ProxyState {
            routes: routes.clone(),
            forwarder: forward::Forwarder::new(
                forward::build_client(&config.limits),
                metrics.clone(),
                &config.limits,
                config.add_forwarded_headers,
            ),
            metrics: metrics.clone(),
            repair: repair.clone(),
            public_base_url: config.public_base_url.clone(),
        });
        let mut stop = stop_rx.clone();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Drain>();
        std::thread::Builder::new()
            .name(format!("trp-proxy-{i}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start a proxy worker runtime");
                        return;
                    }
                };
                let drain = rt.block_on(server::serve_accepted(
                    rx,
                    proxy::service(state),
                    opts,
                    async move {
                        let _ = stop.wait_for(|s| *s).await;
                    },
                ));
                let _ = done_tx.send(drain);
            })
            .map_err(RunError::Io)?;
        done.push(done_rx);
    }
    admin_state.listening.store(true, Ordering::SeqCst);
    server::accept_loop(listeners.proxy, opts.max_connections, senders, shutdown).await;
    // The listener is closed: no new connections. Drain the workers.
    admin_state.draining.store(true, Ordering::SeqCst);
    let drain_started = std::time::Instant::now();
    tracing::info!("shutdown requested: draining in-flight requests");
    let _ = stop_tx.send(true);
    let mut drain = Drain::Complete;
    for d in done {
        if d.await.unwrap_or(Drain::Complete) == Drain::GraceElapsed {
            drain = Drain::GraceElapsed;
        }
    }
    match drain {
        Drain::Complete => tracing::info!("drained; exiting"),
        Drain::GraceElapsed => tracing::warn!("grace period elapsed with requests still in flight"),
    }
    // Repairs (and their background completions) outlive their callers:
    // give them what is left of the grace period.
    if let Some(r) = &repair {
        if r.in_flight() > 0 {
            tracing::info!(repairs = r.in_flight(), "waiting for in-flight repairs");
        }
        let left = config
            .limits
            .shutdown_grace()
            .saturating_sub(drain_started.elapsed());
        if !r.drain(left).await {
            tracing::warn!(
                repairs = r.in_flight(),
                "grace period elapsed with repairs in flight; their journal records are completed at the next start"
            );
        }
    }
    let _ = admin_stop_tx.send(());
    let _ = admin_task.await;
    Ok(())
}
