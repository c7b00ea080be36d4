//! One proxy instance: everything [`crate::run`] used to do, in two steps.
//!
//! [`App::build`] opens what can fail at start-up (routing table, journal,
//! repair credential) and builds every shared part once: the metrics, the
//! [`Repairer`], the admin plane's state. [`App::serve`] starts the
//! recovery sweeper, the admin listener and one single-threaded runtime
//! per worker, accepts connections until `shutdown` completes, then drains
//! in-flight requests and repairs within `limits.shutdown_grace_ms`.
//!
//! Nothing is patched after construction: a worker's
//! [`ProxyState`] is built whole from the parts here. A reloaded
//! configuration is applied by [`Live::apply`], which swaps whole
//! snapshots (each worker's [`proxy::Settings`], the repair's policy and
//! shield, the admin token) and nothing else.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::admin::{self, AdminState};
use crate::config::{self, Config};
use crate::forward;
use crate::metrics::{Listener, Metrics};
use crate::proxy::{self, ProxyState};
use crate::reload::Reload;
use crate::repair::{self, Repairer};
use crate::routing::Routes;
use crate::server::{self, Drain, ServeOptions};
use crate::shield::Shield;
use crate::store;

/// The two listeners of a proxy instance, bound by the caller (so tests can
/// bind port 0 and read the address).
pub struct Listeners {
    pub proxy: TcpListener,
    pub admin: TcpListener,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Credential(#[from] repair::credential::CredentialError),
    #[error("proxy listener: {0}")]
    Io(#[source] std::io::Error),
    #[error(transparent)]
    Tls(#[from] server::tls::TlsError),
}

/// The parts a reloaded configuration changes for the next request or
/// repair (`config::reload::LIVE`): each worker's [`proxy::Settings`]
/// (routes and hosts, per-request timeouts, link rewriting, the shield),
/// the repair's mode, policy and shield, the operator repairs' origin, the
/// admin token, the log level. Every other setting keeps its start-up
/// value and a reload names it (`config::reload::needs_restart`).
#[derive(Clone)]
pub struct Live {
    workers: Vec<Arc<ProxyState>>,
    repair: Option<Arc<Repairer>>,
    admin: Arc<AdminState>,
    metrics: Arc<Metrics>,
    /// The shield in force (what the next one may keep parts of).
    shield: Arc<arc_swap::ArcSwapOption<Shield>>,
    /// The address the proxy listens on (restart-only): routing's "this
    /// proxy" keeps it whatever a new file says.
    listen: std::net::SocketAddr,
    /// The proxy listener serves TLS (link rewriting's `https`).
    tls_listener: bool,
    /// `[metrics]` as it started (restart-only): a reloaded shield keeps
    /// its `account_labels`, so a file that flips only them keeps the cap.
    metrics_config: config::MetricsConfig,
    /// The admin listener's address (restart-only): a reload that leaves
    /// it without a token is warned about as at start-up.
    admin_addr: Option<std::net::SocketAddr>,
}

impl Live {
    /// Apply a valid new configuration: everything that can fail is built
    /// first, then each snapshot is swapped whole. An `Err` changed nothing.
    pub fn apply(&self, _old: &Config, new: &Config) -> Result<(), AppError> {
        let routes = Routes::from_config(&Config {
            listen: self.listen,
            ..new.clone()
        })?;
        let links = crate::rewrite::LinkBase::from_config(&new.public_base_url)
            .on_tls_listener(self.tls_listener);
        let current = self.shield.load_full();
        let shield = Shield::reconfigured(
            current.as_ref(),
            &new.shield,
            &self.metrics_config,
            self.metrics.clone(),
        );
        let settings: Vec<proxy::Settings> = self
            .workers
            .iter()
            .map(|w| w.settings().reconfigured(new, &routes, &links, &shield))
            .collect();
        // Nothing below can fail: swap.
        for (worker, settings) in self.workers.iter().zip(settings) {
            worker.set_settings(settings);
        }
        if let Some(r) = &self.repair {
            r.set_policy(new.repair.clone());
            r.set_shield(shield.clone());
        }
        self.shield.store(shield);
        self.admin
            .set_repair_origin(routes.table_origin("/v1/Services").clone());
        self.admin.set_token(new.admin.token.clone());
        if let Some(addr) = self.admin_addr {
            admin::warn_if_exposed(addr, new.admin.token.is_some());
        }
        if let Err(e) = crate::telemetry::set_level(&new.log.level) {
            tracing::warn!(error = %e, "log.level not reloaded");
        }
        Ok(())
    }
}

/// A proxy instance, built and not yet serving.
pub struct App {
    config: Config,
    listeners: Listeners,
    metrics: Arc<Metrics>,
    repair: Option<Arc<Repairer>>,
    admin: Arc<AdminState>,
    /// The shield in force, swapped by [`Live::apply`].
    shield: Arc<arc_swap::ArcSwapOption<Shield>>,
    /// One state per worker thread, each with its own upstream pool.
    workers: Vec<Arc<ProxyState>>,
    /// TLS on the proxy listener (`[tls]`), when configured.
    listener_tls: Option<server::tls::TlsListener>,
    /// Reload notices (SIGHUP once `serve` installs it): the listener's
    /// certificate follows them.
    reload: Reload,
}

impl App {
    /// Open the journal, check the routing table and the repair
    /// credential, and build the shared parts.
    pub async fn build(config: Config, listeners: Listeners) -> Result<App, AppError> {
        let metrics = Arc::new(Metrics::default());
        let routes = Routes::from_config(&config)?;
        let shield = Shield::new(&config.shield, &config.metrics, metrics.clone());
        let tls = forward::UpstreamTls::from_config(&config)?;
        let listener_tls = match (&config.tls.cert_file, &config.tls.key_file) {
            (Some(cert), Some(key)) => {
                Some(server::tls::TlsListener::new(server::tls::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: config.tls.client_ca_file.clone(),
                })?)
            }
            _ => None,
        };
        let store = store::open(&config.store, &config.store_options).await?;
        let repair = if config.repair.mode == config::RepairMode::Off {
            None
        } else {
            let credential = repair::RepairCredential::from_env_or_file(
                config.repair.credentials_file.as_deref(),
            )?;
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
            Some(Repairer::new(repair::RepairerParts {
                config: config.repair.clone(),
                client: forward::build_client_with(&config.limits, &tls),
                store: store.clone(),
                metrics: metrics.clone(),
                credential,
                mark_forwarded: config.add_forwarded_headers,
                runtime: None,
                exchange: None,
                shield: shield.clone(),
                tap: None,
            }))
        };
        let admin = Arc::new(
            AdminState::new(&config, metrics.clone(), store)
                .with_repairer(repair.clone(), routes.table_origin("/v1/Services").clone()),
        );
        // One single-threaded runtime per worker thread (see `serve`).
        let workers = match config.limits.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let workers = (0..workers)
            .map(|_| {
                worker_state(
                    &config,
                    &tls,
                    &routes,
                    &metrics,
                    &repair,
                    &shield,
                    listener_tls.is_some(),
                )
            })
            .collect();
        Ok(App {
            config,
            listeners,
            metrics,
            repair,
            admin,
            shield: Arc::new(arc_swap::ArcSwapOption::new(shield)),
            workers,
            listener_tls,
            reload: Reload::new(),
        })
    }

    /// What a configuration reload changes live (`config::reload`).
    pub fn live(&self) -> Live {
        Live {
            workers: self.workers.clone(),
            repair: self.repair.clone(),
            admin: self.admin.clone(),
            metrics: self.metrics.clone(),
            shield: self.shield.clone(),
            listen: self.config.listen,
            tls_listener: self.listener_tls.is_some(),
            metrics_config: self.config.metrics.clone(),
            admin_addr: self.listeners.admin.local_addr().ok(),
        }
    }

    /// Follow `reload`'s notices (the `serve` command's SIGHUP) instead of
    /// a channel nobody notifies.
    pub fn with_reload(mut self, reload: Reload) -> App {
        self.reload = reload;
        self
    }

    /// Serve until `shutdown` completes, then drain in-flight requests for
    /// at most `limits.shutdown_grace_ms` and return.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), AppError> {
        let App {
            config,
            listeners,
            metrics,
            repair,
            admin,
            shield: _,
            workers,
            listener_tls,
            reload,
        } = self;
        if let Some(t) = &listener_tls {
            tokio::spawn(t.clone().follow(reload.subscribe()));
        }
        if let Some(r) = &repair {
            // Fence what an earlier run left open before the first request
            // is accepted, then finish it and sweep in the background.
            r.refresh().await;
            r.spawn_sweeper();
        }
        let config = &config;
        if let Ok(addr) = listeners.admin.local_addr() {
            admin::warn_if_exposed(addr, config.admin.token.is_some());
        }
        let opts = ServeOptions {
            max_connections: config.limits.max_connections,
            header_read_timeout: config.limits.header_read_timeout(),
            keepalive_timeout: config.limits.keepalive_timeout(),
            http2_keepalive_interval: config.limits.http2_keepalive_interval(),
            http2_keepalive_timeout: config.limits.http2_keepalive_timeout(),
            shutdown_grace: config.limits.shutdown_grace(),
            max_request_head_bytes: config.limits.max_request_head_bytes,
            idle_park: config.limits.idle_park(),
            park_at_once_above_connections: config.limits.park_at_once_above_connections,
        };
        let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
        let admin_svc = admin::router(admin.clone());
        // The admin listener has its own slots (probes never queue behind
        // proxy clients) and the same connection timeouts (idle sockets are
        // reaped).
        let admin_opts = ServeOptions {
            max_connections: config.admin.max_connections,
            ..opts
        };
        let Listeners {
            proxy: proxy_listener,
            admin: admin_listener,
        } = listeners;
        let admin_task = tokio::spawn(server::serve(
            admin_listener,
            server::Tower(admin_svc),
            admin_opts,
            metrics.connections(Listener::Admin),
            async move {
                let _ = admin_stop_rx.await;
            },
        ));

        tracing::info!(
            listen = %proxy_listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            tls = listener_tls.is_some(),
            upstream = config.upstream.as_deref().unwrap_or("routing table"),
            store = %config::mask_url_password(&config.store),
            "proxy listening"
        );
        // One single-threaded runtime per worker thread, each with its own
        // upstream pool: a request and its upstream exchange stay on one
        // thread, with no cross-thread wake-ups. One accept loop hands
        // connections to the workers in turn.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut senders = Vec::with_capacity(workers.len());
        let mut done = Vec::with_capacity(workers.len());
        for (i, state) in workers.into_iter().enumerate() {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            senders.push(tx);
            let gauges = metrics.connections(Listener::Proxy);
            let worker_tls = listener_tls.clone();
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
                        gauges,
                        worker_tls,
                        async move {
                            let _ = stop.wait_for(|s| *s).await;
                        },
                    ));
                    let _ = done_tx.send(drain);
                })
                .map_err(AppError::Io)?;
            done.push(done_rx);
        }
        admin.set_listening();
        server::accept_loop(proxy_listener, opts.max_connections, senders, shutdown).await;
        // The listener is closed: no new connections. Drain the workers.
        admin.set_draining();
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
            Drain::GraceElapsed => {
                tracing::warn!("grace period elapsed with requests still in flight")
            }
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
        // A selftest run through the admin plane was interrupted when the
        // draining began: its service delete gets what is left too.
        admin
            .drain(
                config
                    .limits
                    .shutdown_grace()
                    .saturating_sub(drain_started.elapsed()),
            )
            .await;
        let _ = admin_stop_tx.send(());
        let _ = admin_task.await;
        Ok(())
    }
}

/// The state of one worker: its own upstream pool, everything else shared
/// (`tls_listener`: the proxy listener serves TLS, so link rewriting's
/// request origin is `https`).
fn worker_state(
    config: &Config,
    tls: &forward::UpstreamTls,
    routes: &Routes,
    metrics: &Arc<Metrics>,
    repair: &Option<Arc<Repairer>>,
    shield: &Option<Arc<Shield>>,
    tls_listener: bool,
) -> Arc<ProxyState> {
    let settings = proxy::Settings::new(
        routes.clone(),
        forward::Forwarder::new(
            forward::build_client_with(&config.limits, tls),
            metrics.clone(),
            &config.limits,
            config.add_forwarded_headers,
            routes.class_by(),
        ),
        crate::rewrite::LinkBase::from_config(&config.public_base_url)
            .on_tls_listener(tls_listener),
        shield.clone(),
    );
    Arc::new(ProxyState::new(settings, metrics.clone(), repair.clone()))
}
