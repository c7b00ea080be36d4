//! The accept loop shared by the proxy and admin listeners.
//!
//! One task per connection, HTTP/1.1 and HTTP/2 (prior knowledge) on the same
//! port, a semaphore bounding concurrent connections, and graceful shutdown:
//! when the shutdown future completes the listener is closed, open
//! connections finish their in-flight requests (idle keep-alive connections
//! are closed at once), and after the grace period whatever is left is
//! dropped.
//!
//! A connection slot is only held by a client that uses it. Each connection
//! has a watchdog that closes it when no request is in flight and:
//! - no first request arrived within `header_read_timeout` of the accept
//!   (a silent socket, a partial HTTP/2 preface, an HTTP/2 connection that
//!   opens no stream, a slow first request head);
//! - an HTTP/1 client started its next request head more than
//!   `header_read_timeout` ago without finishing it;
//! - it has been idle for `keepalive_timeout` (an HTTP/1 keep-alive
//!   connection between requests, an HTTP/2 connection without open streams).
//!
//! When every slot is taken and a new client waits, connections with no
//! request in flight that are older than [`EVICTION_MIN_AGE`] are closed at
//! once to make room (nginx does the same with idle keep-alive
//! connections), so idle sockets delay a new client, never lock it out.
//!
//! A connection with a request in flight is never cut by the watchdog: its
//! bodies have their own idle timeout (`limits.idle_timeout_ms`, in
//! [`crate::forward`]) and its upstream exchange its own deadlines. HTTP/2
//! connections are also pinged (`http2_keepalive_interval`) and closed when a
//! ping goes unanswered (`http2_keepalive_timeout`), so a dead peer frees its
//! slot even while a stream is open. The watchdog's bookkeeping is a few
//! relaxed atomic operations per request and per socket read: no allocation,
//! no clock read on the request path.
//!
//! # Layout
//! - this file: the listener entry points ([`serve`], [`accept_loop`],
//!   [`serve_accepted`]) and the per-runtime connection set that builds
//!   hyper's connection and drains it on shutdown;
//! - `slots`: the connection limit and the eviction of idle connections when
//!   a new client waits;
//! - `watchdog`: per-connection activity counters and the rules that decide
//!   when an idle connection is closed.

mod slots;
mod watchdog;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

pub use slots::EVICTION_MIN_AGE;
use slots::{Conn, Slots};
use watchdog::{Activity, ConnBody, RequestGuard, Watchdog, Watched};

/// The peer address of the connection a request came in on.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Bounds of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Most concurrent connections; more wait in the accept queue.
    pub max_connections: usize,
    /// Time a new connection has to send its first complete request (any
    /// protocol), and an HTTP/1 client to finish a request head it started.
    pub header_read_timeout: Duration,
    /// How long a connection without a request in flight stays open.
    pub keepalive_timeout: Duration,
    /// Interval of the HTTP/2 keep-alive pings.
    pub http2_keepalive_interval: Duration,
    /// Time an HTTP/2 peer has to acknowledge a keep-alive ping.
    pub http2_keepalive_timeout: Duration,
    /// How long in-flight requests may take after shutdown begins.
    pub shutdown_grace: Duration,
    /// Largest HTTP/1 request head (request line and headers); a larger one
    /// is answered 431.
    pub max_request_head_bytes: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(75),
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(20),
            shutdown_grace: Duration::from_secs(30),
            max_request_head_bytes: 64 * 1024,
        }
    }
}

/// Whether shutdown drained everything in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    Complete,
    GraceElapsed,
}

/// Serve `service` on `listener` until `shutdown` completes, then drain.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Drain
where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let slots = Slots::new(opts.max_connections);
    let conns = Connections::new(opts);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = slots.accept(&listener) => a,
            _ = &mut shutdown => break,
        };
        if let Some(a) = accepted {
            conns.spawn(a, service.clone());
        }
    }
    drop(listener);
    conns.drain().await
}

/// A connection accepted by [`accept_loop`], handed to a worker.
pub struct Accepted {
    pub stream: std::net::TcpStream,
    pub peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    pressure: watch::Receiver<u64>,
}

/// Accept on `listener` and hand connections to `workers` in turn (exact
/// balance, unlike several loops racing on one socket), until `shutdown`.
/// The listener is closed when this returns.
pub async fn accept_loop(
    listener: TcpListener,
    max_connections: usize,
    workers: Vec<mpsc::UnboundedSender<Accepted>>,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Slots::new(max_connections);
    tokio::pin!(shutdown);
    let mut next = 0usize;
    loop {
        let accepted = tokio::select! {
            a = slots.accept(&listener) => a,
            _ = &mut shutdown => break,
        };
        let Some(a) = accepted else { continue };
        let Ok(stream) = a.stream.into_std() else {
            continue;
        };
        let handoff = Accepted {
            stream,
            peer: a.peer,
            permit: a.permit,
            pressure: a.pressure,
        };
        if workers.is_empty() {
            break;
        }
        if workers[next % workers.len()].send(handoff).is_err() {
            tracing::error!("a proxy worker stopped; closing the listener");
            break;
        }
        next = next.wrapping_add(1);
    }
}

/// Serve the connections a worker receives until `stop`, then drain.
pub async fn serve_accepted<S>(
    mut incoming: mpsc::UnboundedReceiver<Accepted>,
    service: S,
    opts: ServeOptions,
    stop: impl Future<Output = ()>,
) -> Drain
where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conns = Connections::new(opts);
    tokio::pin!(stop);
    loop {
        let next = tokio::select! {
            n = incoming.recv() => n,
            _ = &mut stop => break,
        };
        let Some(a) = next else { break };
        if a.stream.set_nonblocking(true).is_err() {
            continue;
        }
        let Ok(stream) = TcpStream::from_std(a.stream) else {
            continue;
        };
        conns.spawn(
            Conn {
                stream,
                peer: a.peer,
                permit: a.permit,
                pressure: a.pressure,
            },
            service.clone(),
        );
    }
    conns.drain().await
}

/// The connections of one runtime: protocol settings, watchdogs and
/// graceful drain.
struct Connections {
    builder: auto::Builder<TokioExecutor>,
    opts: ServeOptions,
    /// `true` once shutdown begins; every connection task holds a receiver,
    /// so `closed()` completes when the last connection ends.
    shutdown: watch::Sender<bool>,
}

impl Connections {
    fn new(opts: ServeOptions) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            // The watchdog bounds request heads: hyper's own timer would
            // also run between keep-alive requests and cut them at
            // header_read_timeout instead of keepalive_timeout.
            .header_read_timeout(None)
            // hyper's minimum buffer is 8 KiB.
            .max_buf_size(opts.max_request_head_bytes.max(8192))
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(opts.http2_keepalive_interval))
            .keep_alive_timeout(opts.http2_keepalive_timeout);
        Connections {
            builder,
            opts,
            shutdown: watch::Sender::new(false),
        }
    }

    fn spawn<S>(&self, c: Conn, service: S)
    where
        S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let _ = c.stream.set_nodelay(true);
        let peer = c.peer;
        let activity = Arc::new(Activity::default());
        let io = Watched {
            inner: c.stream,
            activity: activity.clone(),
        };
        let seen = activity.clone();
        let hyper_svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(PeerAddr(peer));
            let guard = RequestGuard::new(&seen, req.version());
            let answer = service.clone().oneshot(req);
            async move {
                let resp = answer.await?;
                Ok::<_, Infallible>(resp.map(|inner| ConnBody {
                    inner,
                    guard: Some(guard),
                }))
            }
        });
        let conn = self
            .builder
            .serve_connection(TokioIo::new(io), hyper_svc)
            .into_owned();
        let mut shutdown = self.shutdown.subscribe();
        let mut pressure = c.pressure;
        let permit = c.permit;
        let tick = Watchdog::tick(&self.opts);
        let mut dog = Watchdog::new(&self.opts, Instant::now());
        tokio::spawn(async move {
            tokio::pin!(conn);
            let sleep = tokio::time::sleep(tick);
            tokio::pin!(sleep);
            let mut stopping = false;
            let mut closing = false;
            let mut listening = true;
            loop {
                tokio::select! {
                    ended = conn.as_mut() => {
                        if let Err(e) = ended {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    changed = pressure.changed(), if listening => {
                        // Err: the listener is gone, nobody will wait again.
                        listening = changed.is_ok();
                        if listening && dog.evictable(&activity, Instant::now()) {
                            tracing::debug!("closing an idle connection for a waiting client");
                            break;
                        }
                    }
                    _ = shutdown.changed(), if !stopping => {
                        stopping = true;
                        if !closing {
                            closing = true;
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                    () = &mut sleep => {
                        let now = Instant::now();
                        sleep.as_mut().reset(now + tick);
                        if dog.expired(&activity, now) {
                            if closing {
                                // Still open a tick after a graceful close
                                // with nothing in flight (a peer that never
                                // answers a GOAWAY, a head never finished).
                                tracing::debug!("closing an idle connection");
                                break;
                            }
                            closing = true;
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
            drop(permit);
        });
    }

    /// Let in-flight requests finish (idle keep-alive connections close at
    /// once), for at most the grace period.
    async fn drain(self) -> Drain {
        self.shutdown.send_replace(true);
        tokio::select! {
            _ = self.shutdown.closed() => Drain::Complete,
            _ = tokio::time::sleep(self.opts.shutdown_grace) => Drain::GraceElapsed,
        }
    }
}
