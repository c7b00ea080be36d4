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
//! An HTTP/1 keep-alive connection idle for `idle_park` is parked: its
//! hyper connection (~16 KiB of buffers) is dropped and only the bare socket
//! is watched until the next request, which a fresh hyper connection serves
//! (nginx frees idle keep-alive buffers the same way). A parked connection
//! is an idle one for every rule above.
//!
//! Each listener gauges its client connections open and parked
//! ([`crate::metrics::ConnectionGauges`]: an increment when a connection
//! starts or parks, a decrement when it ends or resumes).
//!
//! # Layout
//! - this file: the listener entry points ([`serve`], [`accept_loop`],
//!   [`serve_accepted`]) and the per-runtime connection set (hyper builders,
//!   drain on shutdown);
//! - `conn`: one connection's task: protocol detection, the hyper
//!   connection driven under the watchdog, parking and resuming HTTP/1;
//! - `gate`: a future polled only when its own waker fired (how `conn`
//!   waits for eviction pressure, shutdown and the watchdog's tick without
//!   polling them at every wake-up hyper makes);
//! - `park`: when an idle HTTP/1 connection is parked;
//! - `slots`: the connection limit and the eviction of idle connections when
//!   a new client waits;
//! - `watchdog`: per-connection activity counters and the rules that decide
//!   when an idle connection is closed;
//! - [`tls`]: TLS on the proxy listener (the acceptor, the handshake, the
//!   certificate swapped on reload); its connections are served by `conn`
//!   like plain ones, with the protocol ALPN chose, and never parked.

mod conn;
mod gate;
mod park;
mod slots;
pub mod tls;
mod watchdog;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tower::Service;

use crate::metrics::ConnectionGauges;
use conn::Protocols;
pub use slots::EVICTION_MIN_AGE;
use slots::{Conn, Slots};

/// What a listener serves: an answer to every request of a connection,
/// given the connection's peer. Cloned once per connection; its futures
/// may move between tasks.
///
/// Not a tower `Service`: the proxy's answer needs no readiness and no
/// error channel, and taking the peer as an argument spares every request
/// an extensions map (two allocations). A tower service (the admin
/// plane's axum router) is served through [`Tower`].
pub trait ConnService: Clone + Send + 'static {
    /// The answer to `req`, which came in on a connection from `peer`
    /// (called on a clone: one `Arc` increment for the proxy).
    fn answer(
        self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<Body>> + Send + 'static;
}

/// A tower service (an axum router) served as a [`ConnService`]; the peer
/// is not passed on.
#[derive(Clone)]
pub struct Tower<S>(pub S);

impl<S> ConnService for Tower<S>
where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    fn answer(
        self,
        req: Request<Incoming>,
        _peer: SocketAddr,
    ) -> impl Future<Output = Response<Body>> + Send + 'static {
        use futures_util::FutureExt;
        use tower::ServiceExt;
        self.0.oneshot(req).map(|answer| match answer {
            Ok(response) => response,
            Err(never) => match never {},
        })
    }
}

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
    /// How long an HTTP/1 keep-alive connection stays idle before its hyper
    /// state is dropped and its bare socket parked (zero: as soon as the
    /// response is sent).
    pub idle_park: Duration,
    /// While more client connections than this are open, an idle HTTP/1
    /// connection is parked as soon as it is idle (0: never, `idle_park`
    /// only).
    pub park_at_once_above_connections: usize,
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
            idle_park: Duration::from_secs(1),
            park_at_once_above_connections: 1000,
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
    gauges: ConnectionGauges,
    shutdown: impl Future<Output = ()>,
) -> Drain
where
    S: ConnService,
{
    let slots = Slots::new(opts.max_connections);
    let conns = Connections::new(opts, gauges);
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

/// Serve the connections a worker receives until `stop`, then drain. With
/// `tls`, each connection's TLS handshake is done first (on this worker).
pub async fn serve_accepted<S>(
    mut incoming: mpsc::UnboundedReceiver<Accepted>,
    service: S,
    opts: ServeOptions,
    gauges: ConnectionGauges,
    tls: Option<tls::TlsListener>,
    stop: impl Future<Output = ()>,
) -> Drain
where
    S: ConnService,
{
    let conns = Connections::new(opts, gauges);
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
        let c = Conn {
            stream,
            peer: a.peer,
            permit: a.permit,
            pressure: a.pressure,
        };
        match &tls {
            None => conns.spawn(c, service.clone()),
            Some(tls) => conns.spawn_tls(c, tls, service.clone()),
        }
    }
    conns.drain().await
}

/// The connections of one runtime: protocol settings, and the graceful
/// drain.
struct Connections {
    protocols: Arc<Protocols>,
    /// `true` once shutdown begins; every connection task holds a receiver,
    /// so `closed()` completes when the last connection ends.
    shutdown: watch::Sender<bool>,
}

impl Connections {
    fn new(opts: ServeOptions, gauges: ConnectionGauges) -> Self {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            // The watchdog bounds request heads: hyper's own timer would
            // also run between keep-alive requests and cut them at
            // header_read_timeout instead of keepalive_timeout.
            .header_read_timeout(None)
            // One contiguous write per answer (head and body copied into
            // one buffer) instead of a vectored one: cheaper for the kernel
            // than a two-part `writev` for the small answers Twilio sends
            // (about 1 µs per request in bench/run.sh). The buffer takes
            // whole frames and keeps its capacity while the connection
            // lives, so the proxy's frames are bounded: upstream reads by
            // `pool::UPSTREAM_READ_BUFFER_BYTES`, buffered answers by the
            // proxy's `BUFFERED_FRAME_BYTES`.
            .writev(false)
            // hyper's minimum buffer is 8 KiB.
            .max_buf_size(opts.max_request_head_bytes.max(8192))
            // No half-close: the end of a client's stream means it is gone,
            // so its request's work (a queued shield slot, a forward) is
            // dropped at once. A client that shuts down its write side
            // after its request therefore gets no answer (as with hyper's
            // default); the shield's hang-up tests depend on this.
            .half_close(false)
            .keep_alive(true);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(opts.http2_keepalive_interval))
            .keep_alive_timeout(opts.http2_keepalive_timeout);
        Connections {
            protocols: Arc::new(Protocols {
                http1,
                http2,
                opts,
                gauges,
            }),
            shutdown: watch::Sender::new(false),
        }
    }

    fn spawn<S>(&self, c: Conn, service: S)
    where
        S: ConnService,
    {
        tokio::spawn(conn::run(
            self.protocols.clone(),
            c,
            service,
            self.shutdown.subscribe(),
        ));
    }

    /// Handshake, then serve like [`Connections::spawn`] (`tls`).
    fn spawn_tls<S>(&self, c: Conn, tls: &tls::TlsListener, service: S)
    where
        S: ConnService,
    {
        tokio::spawn(tls::handshake_then_serve(
            self.protocols.clone(),
            tls.clone(),
            c,
            service,
            self.shutdown.subscribe(),
        ));
    }

    /// Let in-flight requests finish (idle keep-alive connections, parked or
    /// not, close at once), for at most the grace period.
    async fn drain(self) -> Drain {
        self.shutdown.send_replace(true);
        tokio::select! {
            _ = self.shutdown.closed() => Drain::Complete,
            _ = tokio::time::sleep(self.protocols.opts.shutdown_grace) => Drain::GraceElapsed,
        }
    }
}
