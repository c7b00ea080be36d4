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

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response, Version};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

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

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    /// Changes when a new client waits for a slot.
    pressure: watch::Receiver<u64>,
}

/// A connection accepted at least this long ago with no request in flight
/// is closed when every slot is taken and a new client waits (as nginx
/// reuses idle keep-alive connections): idle sockets can delay a new client
/// by about this much, never lock it out. A real client's first request
/// arrives with its connection, long before this.
pub const EVICTION_MIN_AGE: Duration = Duration::from_millis(250);
/// While a new client waits for a slot, idle connections are asked again
/// this often.
const EVICTION_RETRY: Duration = Duration::from_millis(100);

/// The connection slots of one listener.
struct Slots {
    limit: Arc<Semaphore>,
    pressure: watch::Sender<u64>,
}

impl Slots {
    fn new(max_connections: usize) -> Self {
        Slots {
            limit: Arc::new(Semaphore::new(max_connections.max(1))),
            pressure: watch::Sender::new(0),
        }
    }

    /// Accept, then take a slot; when none is free, ask idle connections to
    /// make room until one is. `None` on an accept error (after a short
    /// back-off: EMFILE and friends must not spin).
    async fn accept(&self, listener: &TcpListener) -> Option<Conn> {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                return None;
            }
        };
        let permit = match self.limit.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => loop {
                self.pressure.send_modify(|n| *n = n.wrapping_add(1));
                tokio::select! {
                    p = self.limit.clone().acquire_owned() => break p.ok()?,
                    () = tokio::time::sleep(EVICTION_RETRY) => {}
                }
            },
        };
        Some(Conn {
            stream,
            peer,
            permit,
            pressure: self.pressure.subscribe(),
        })
    }
}

/// What one connection is doing, shared by its socket wrapper, its request
/// guards and its watchdog.
#[derive(Debug, Default)]
struct Activity {
    /// Requests between their head's arrival and their response body's end.
    in_flight: AtomicUsize,
    /// Requests started on this connection.
    requests: AtomicU64,
    /// Socket reads that returned data.
    reads: AtomicU64,
    /// `reads` when `in_flight` last dropped to zero.
    reads_when_idle: AtomicU64,
    /// The connection speaks HTTP/2 (known from its first request).
    http2: AtomicBool,
}

/// Counts one request in flight until dropped (with its response body).
struct RequestGuard(Arc<Activity>);

impl RequestGuard {
    fn new(a: &Arc<Activity>, version: Version) -> Self {
        if version == Version::HTTP_2 {
            a.http2.store(true, Relaxed);
        }
        a.requests.fetch_add(1, Relaxed);
        a.in_flight.fetch_add(1, Relaxed);
        RequestGuard(a.clone())
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let a = &self.0;
        if a.in_flight.fetch_sub(1, Relaxed) == 1 {
            a.reads_when_idle.store(a.reads.load(Relaxed), Relaxed);
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted in flight until it
    /// ends or is dropped. A plain wrapper: no allocation.
    struct ConnBody {
        #[pin]
        inner: Body,
        guard: Option<RequestGuard>,
    }
}

impl http_body::Body for ConnBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(None) = polled {
            this.guard.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client socket, counting reads that return data.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.reads.fetch_add(1, Relaxed);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Decides, at each tick, whether an idle connection has outstayed its
/// welcome (see the module documentation for the rules).
#[derive(Debug)]
struct Watchdog {
    header_read_timeout: Duration,
    keepalive_timeout: Duration,
    accepted: Instant,
    /// First tick that saw the connection idle since its last activity.
    idle_since: Option<Instant>,
    /// First tick that saw bytes of a next HTTP/1 request head.
    head_since: Option<Instant>,
    last_requests: u64,
}

impl Watchdog {
    fn new(opts: &ServeOptions, now: Instant) -> Self {
        Watchdog {
            header_read_timeout: opts.header_read_timeout,
            keepalive_timeout: opts.keepalive_timeout,
            accepted: now,
            idle_since: None,
            head_since: None,
            last_requests: 0,
        }
    }

    /// How often the watchdog looks: a quarter of the shorter timeout, so a
    /// connection is closed at most 25% past its deadline.
    fn tick(opts: &ServeOptions) -> Duration {
        (opts.header_read_timeout.min(opts.keepalive_timeout) / 4).max(Duration::from_millis(5))
    }

    /// Whether the connection may be closed to make room for a new client:
    /// nothing in flight, and not brand new.
    fn evictable(&self, a: &Activity, now: Instant) -> bool {
        a.in_flight.load(Relaxed) == 0 && now >= self.accepted + EVICTION_MIN_AGE
    }

    /// Whether the connection is idle past its deadline at `now`.
    fn expired(&mut self, a: &Activity, now: Instant) -> bool {
        let requests = a.requests.load(Relaxed);
        if a.in_flight.load(Relaxed) > 0 || requests != self.last_requests {
            self.last_requests = requests;
            self.idle_since = None;
            self.head_since = None;
            return false;
        }
        let idle_since = *self.idle_since.get_or_insert(now);
        let deadline = if requests == 0 {
            self.accepted + self.header_read_timeout
        } else if a.http2.load(Relaxed) {
            idle_since + self.keepalive_timeout
        } else {
            if self.head_since.is_none() && a.reads.load(Relaxed) != a.reads_when_idle.load(Relaxed)
            {
                self.head_since = Some(now);
            }
            match self.head_since {
                Some(t) => t + self.header_read_timeout,
                None => idle_since + self.keepalive_timeout,
            }
        };
        now >= deadline
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> ServeOptions {
        ServeOptions {
            header_read_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            ..ServeOptions::default()
        }
    }

    #[tokio::test]
    async fn watchdog_deadlines_by_phase() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let a = Arc::new(Activity::default());
        let mut dog = Watchdog::new(&opts(), t0);
        // No first request: header_read_timeout from the accept, even if
        // bytes (a partial preface or head) arrived.
        a.reads.fetch_add(3, Relaxed);
        assert!(!dog.expired(&a, s(9)));
        assert!(dog.expired(&a, s(10)));
        // A request in flight is never expired.
        let g = RequestGuard::new(&a, Version::HTTP_11);
        assert!(!dog.expired(&a, s(500)));
        drop(g);
        // Idle HTTP/1 keep-alive: keepalive_timeout from the first idle tick.
        assert!(!dog.expired(&a, s(501)));
        assert!(!dog.expired(&a, s(560)));
        assert!(dog.expired(&a, s(561)));
        // Bytes of a next head: header_read_timeout from when they were seen.
        a.reads.fetch_add(1, Relaxed);
        assert!(!dog.expired(&a, s(562)));
        assert!(!dog.expired(&a, s(571)));
        assert!(dog.expired(&a, s(572)));
        // HTTP/2: control frames (reads) never count as a head.
        let h2 = Arc::new(Activity::default());
        let mut dog = Watchdog::new(&opts(), t0);
        drop(RequestGuard::new(&h2, Version::HTTP_2));
        assert!(!dog.expired(&h2, s(1)));
        assert!(!dog.expired(&h2, s(2)));
        h2.reads.fetch_add(5, Relaxed);
        assert!(!dog.expired(&h2, s(61)));
        assert!(dog.expired(&h2, s(62)));
    }
}
