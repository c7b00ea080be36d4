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
//! - [`store`]: the repair journal and incidents (SQLite).
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
pub mod cli;
pub mod config;
pub mod egress;
pub mod emulator;
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

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
    #[error("{0}")]
    Credential(String),
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
            repair::RepairCredential::from_env_or_file(config.repair.credentials_file.as_deref())
                .map_err(RunError::Credential)?;
        if let Some(c) = &credential {
            tracing::info!(key = %c.user, "repair calls use the operator repair credential");
        }
        let mut r = repair::Repairer::new(
            config.repair.clone(),
            forward::build_client(&config.limits),
            store.clone(),
            metrics.clone(),
            credential,
        );
        r.mark_forwarded = config.add_forwarded_headers;
        let r = Arc::new(r);
        r.recovery.refresh_gauge(store.as_ref(), &metrics).await;
        // Finish what an earlier run left unfinished (needs a credential:
        // the operator's now, or the first matching caller's later).
        let rec = r.clone();
        let interval = std::time::Duration::from_millis(config.repair.recovery_interval_ms);
        tokio::spawn(async move {
            let n = rec.recover_pending(None).await;
            if n > 0 {
                tracing::info!(completed = n, "start-up recovery finished");
            }
            // Then sweep periodically: another replica may die mid-repair.
            let mut tick = tokio::time::interval(interval);
            tick.tick().await;
            loop {
                tick.tick().await;
                rec.recovery_sweep().await;
            }
        });
        Some(r)
    };
    let admin_state = Arc::new(admin::AdminState {
        metrics: metrics.clone(),
        store: store.clone(),
        listening: AtomicBool::new(false),
        draining: AtomicBool::new(false),
    });
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
    let _ = admin_stop_tx.send(());
    let _ = admin_task.await;
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
