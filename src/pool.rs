//! The upstream connection pool: hyper's connection-level client
//! (`hyper::client::conn::http1` and `http2`) over the rustls connector,
//! with the pooling kept here, small and on the request's own task.
//!
//! What belongs here is how a request gets a connection and how the
//! connection comes back; what the request carries, its deadlines and what
//! its failures mean to a client stay in [`crate::forward`].
//!
//! - **One pool per worker.** Every proxy worker runtime builds its own
//!   [`UpstreamClient`] (see [`crate::app`]), so a request and its upstream
//!   connection stay on one thread. The pool's lock is only ever taken by
//!   that worker (and never held across an `.await`).
//! - **HTTP/1.1 connections** are taken out of the pool for one exchange
//!   and put back when the response body has ended ([`UpstreamBody`]),
//!   newest first; a body dropped before its end takes its connection with
//!   it (hyper closes a connection with an unread answer on it). Nothing
//!   is spawned per request: one task per connection drives it.
//! - **Only a ready connection is taken**, never waited on: an answer can
//!   end before its request does (an upstream refusing an upload answers
//!   before reading it), and that connection is back in the pool while the
//!   request body is still being sent on it. It stays there, skipped, until
//!   hyper says it can carry another request (or it closes, or expires),
//!   and the request that finds no ready one opens a new connection rather
//!   than wait on another client's upload.
//! - **HTTP/2 connections** (when ALPN picks `h2`) are shared: one per
//!   origin, taken by every request until it closes. They are pinged
//!   (`limits.http2_keepalive_*`), so one whose peer went silent (a dead path, a
//!   middlebox that dropped it) is closed and replaced within the ping
//!   timeout rather than holding every later request until its deadline.
//!   With `pool_max_idle_per_host = 0` nothing is pooled, HTTP/2 included.
//! - **A request is retried on another connection** only when hyper hands
//!   it back unsent because a reused connection was closed under it (an
//!   upstream closing an idle keep-alive connection as the request left):
//!   nothing of it reached the upstream, so nothing can be applied twice.
//! - **Idle connections** are closed after `limits.pool_idle_timeout_ms`
//!   (checked when one is taken, and by one sweeping task per pool, which
//!   runs every timeout: an unused connection is closed between one and two
//!   timeouts after its last use; an HTTP/2 one when no request took it for
//!   a whole sweep period); at most `limits.pool_max_idle_per_host` HTTP/1.1
//!   connections are kept per origin, the oldest closed first.
//!
//! Connection errors (DNS, TCP connect and its timeout, an egress proxy's
//! refusal, TLS) are [`ClientError::Connect`]; everything after the
//! connection is up is [`ClientError::Send`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::client::legacy::connect::Connection;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::Service;

/// The connector every pool connects with: direct or through an egress
/// `CONNECT` tunnel, then TLS (or plain HTTP for an `http://` upstream).
pub type Connector = hyper_rustls::HttpsConnector<crate::egress::EgressConnector>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection could be set up: DNS, TCP connect (or its timeout),
    /// an egress proxy's refusal, TLS, or the HTTP/2 handshake.
    #[error("connect: {0}")]
    Connect(#[source] BoxError),
    /// The connection failed during the exchange (reset, protocol error,
    /// cut short).
    #[error(transparent)]
    Send(hyper::Error),
    /// The request has no scheme and authority to connect to.
    #[error("the upstream request has no absolute URI")]
    NoOrigin,
}

impl ClientError {
    /// Whether no connection could be made (nothing was sent).
    pub fn is_connect(&self) -> bool {
        matches!(self, ClientError::Connect(_) | ClientError::NoOrigin)
    }
}

/// Largest read buffer of an upstream HTTP/1.1 connection (hyper's
/// default is ~400 KiB), so the largest frame of an answer's body, and the
/// largest response head accepted (Twilio's are under 2 KiB).
pub const UPSTREAM_READ_BUFFER_BYTES: usize = 64 * 1024;

/// The pool bounds, from `limits`.
#[derive(Debug, Clone, Copy)]
pub struct PoolBounds {
    /// `limits.pool_idle_timeout_ms`: an idle connection older than this is
    /// closed.
    pub idle_timeout: Duration,
    /// `limits.pool_max_idle_per_host`: idle HTTP/1.1 connections kept per
    /// origin; 0: nothing is pooled, HTTP/2 connections included.
    pub max_idle_per_host: usize,
    /// `limits.http2_keepalive_interval_ms`: an HTTP/2 connection is
    /// pinged this often, also while no request is open.
    pub h2_ping_interval: Duration,
    /// `limits.http2_keepalive_timeout_ms`: an HTTP/2 connection whose peer
    /// does not answer a ping within this is closed, and replaced.
    pub h2_ping_timeout: Duration,
}

impl PoolBounds {
    /// The bounds `limits` sets.
    pub fn from_limits(limits: &crate::config::Limits) -> PoolBounds {
        PoolBounds {
            idle_timeout: limits.pool_idle_timeout(),
            max_idle_per_host: limits.pool_max_idle_per_host,
            h2_ping_interval: limits.http2_keepalive_interval(),
            h2_ping_timeout: limits.http2_keepalive_timeout(),
        }
    }
}

/// A pooled upstream client; cheap to clone (clones share the pool).
#[derive(Clone)]
pub struct UpstreamClient {
    pool: Arc<Pool>,
}

struct Pool {
    connector: Connector,
    bounds: PoolBounds,
    origins: Mutex<Vec<OriginConns>>,
    /// Whether the sweeping task has been started.
    sweeping: AtomicBool,
}

/// The connections of one origin.
struct OriginConns {
    key: Key,
    /// Idle HTTP/1.1 connections, oldest first.
    idle: Vec<Idle>,
    /// The shared HTTP/2 connection, when ALPN chose it.
    h2: Option<http2::SendRequest<Body>>,
    /// Whether a request took `h2` since the last sweep.
    h2_used: bool,
}

struct Idle {
    sender: http1::SendRequest<Body>,
    since: Instant,
}

/// An origin: scheme and authority.
#[derive(Clone, PartialEq, Eq)]
struct Key {
    scheme: Scheme,
    authority: Authority,
}

impl Key {
    fn of(uri: &Uri) -> Option<Key> {
        Some(Key {
            scheme: uri.scheme()?.clone(),
            authority: uri.authority()?.clone(),
        })
    }
    fn uri(&self) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        Uri::from_parts(parts).unwrap_or_default()
    }
}

/// A connection ready for one request.
enum Sender {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

impl UpstreamClient {
    /// A pool connecting with `connector`, within `bounds`.
    pub fn new(connector: Connector, bounds: PoolBounds) -> UpstreamClient {
        UpstreamClient {
            pool: Arc::new(Pool {
                connector,
                bounds,
                origins: Mutex::new(Vec::new()),
                sweeping: AtomicBool::new(false),
            }),
        }
    }

    /// Send `req` (its URI absolute: the origin is its scheme and
    /// authority) on a pooled connection, or a new one.
    ///
    /// An `async move` block, not an `async fn`: an `async fn` keeps each
    /// argument twice, and this future is part of every request's.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn stores its arguments twice in its future"
    )]
    pub fn request(
        &self,
        mut req: Request<Body>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, ClientError>> + Send + '_ {
        async move {
            let key = Key::of(req.uri()).ok_or(ClientError::NoOrigin)?;
            loop {
                let (sender, reused) = match self.pool.take(&key) {
                    Some(s) => (s, true),
                    None => {
                        // Boxed (DNS, TCP, TLS, the handshake: a large future),
                        // so that the request's own future stays small.
                        let connecting = Box::pin(self.connect(&key));
                        (connecting.await?, false)
                    }
                };
                // A request hyper hands back unsent (the connection closed
                // under it) is retried on another connection only if this
                // one had served before: a fresh one failing is the
                // upstream's answer.
                let error = match sender {
                    Sender::H1(mut s) => {
                        // A pooled connection was ready when taken (never
                        // waited on: if it closed since, hyper hands the
                        // request back below). A new one is ready once its
                        // task has run, or has failed.
                        if !reused && s.ready().await.is_err() {
                            return Err(ClientError::Connect("the new connection closed".into()));
                        }
                        origin_form(req.uri_mut());
                        match s.try_send_request(req).await {
                            Ok(resp) => {
                                let back = Some(Back {
                                    pool: self.pool.clone(),
                                    key,
                                    sender: s,
                                });
                                return Ok(resp.map(|inner| UpstreamBody::new(inner, back)));
                            }
                            Err(mut e) => match e.take_message() {
                                Some(mut unsent) if reused => {
                                    absolute_form(unsent.uri_mut(), &key);
                                    req = unsent;
                                    e.into_error()
                                }
                                _ => return Err(ClientError::Send(e.into_error())),
                            },
                        }
                    }
                    Sender::H2(mut s) => {
                        if s.ready().await.is_err() {
                            self.pool.forget_h2(&key);
                            if reused {
                                continue;
                            }
                            return Err(ClientError::Connect("the new connection closed".into()));
                        }
                        match s.try_send_request(req).await {
                            Ok(resp) => return Ok(resp.map(|inner| UpstreamBody::new(inner, None))),
                            Err(mut e) => {
                                self.pool.forget_h2(&key);
                                match e.take_message() {
                                    Some(unsent) if reused => {
                                        req = unsent;
                                        e.into_error()
                                    }
                                    _ => return Err(ClientError::Send(e.into_error())),
                                }
                            }
                        }
                    }
                };
                tracing::debug!(%error, "pooled connection closed before the request was sent; retrying on another");
            }
        }
    }

    /// Open a connection to `key` and start its task.
    async fn connect(&self, key: &Key) -> Result<Sender, ClientError> {
        let mut connector = self.pool.connector.clone();
        let io = connector
            .call(key.uri())
            .await
            .map_err(ClientError::Connect)?;
        let h2 = io.connected().is_negotiated_h2();
        if h2 {
            let bounds = &self.pool.bounds;
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(bounds.h2_ping_interval)
                .keep_alive_timeout(bounds.h2_ping_timeout)
                .keep_alive_while_idle(true)
                .handshake(io)
                .await
                .map_err(|e| ClientError::Connect(e.into()))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
                }
            });
            self.pool.share_h2(key, &sender);
            self.start_sweeping();
            Ok(Sender::H2(sender))
        } else {
            let (sender, conn) = http1::Builder::new()
                // One contiguous write per request, as the server side
                // (see `crate::server`).
                .writev(false)
                // Reads, and so the frames of an answer's body, of at most
                // this much: the server side copies each frame into its
                // client connection's write buffer (flattened writes), whose
                // capacity a keep-alive connection keeps.
                .max_buf_size(UPSTREAM_READ_BUFFER_BYTES)
                .handshake(io)
                .await
                .map_err(|e| ClientError::Connect(e.into()))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream connection ended with an error");
                }
            });
            self.start_sweeping();
            Ok(Sender::H1(sender))
        }
    }

    /// Start the task that closes idle connections past the idle timeout,
    /// once per pool; it ends with the pool.
    fn start_sweeping(&self) {
        if self.pool.sweeping.swap(true, Relaxed) {
            return;
        }
        let pool: Weak<Pool> = Arc::downgrade(&self.pool);
        let every = self
            .pool
            .bounds
            .idle_timeout
            .max(Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = pool.upgrade() else { return };
                pool.sweep(Instant::now());
            }
        });
    }

    /// Idle HTTP/1.1 connections in the pool now (tests and metrics).
    pub fn idle_connections(&self) -> usize {
        self.pool.lock().iter().map(|o| o.idle.len()).sum()
    }
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<OriginConns>> {
        // A panic while holding it leaves plain data behind: still usable.
        self.origins.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection to `key`: the shared HTTP/2 one, else the newest idle
    /// HTTP/1.1 one younger than the idle timeout and ready for a request.
    /// Closed and expired ones are dropped; open ones not ready yet (still
    /// sending the request of an answer that ended first) stay.
    fn take(&self, key: &Key) -> Option<Sender> {
        let mut origins = self.lock();
        let conns = origins.iter_mut().find(|o| o.key == *key)?;
        if let Some(h2) = &conns.h2 {
            if !h2.is_closed() {
                conns.h2_used = true;
                return Some(Sender::H2(h2.clone()));
            }
            conns.h2 = None;
        }
        let now = Instant::now();
        let mut i = conns.idle.len();
        while i > 0 {
            i -= 1;
            let idle = &conns.idle[i];
            if now.duration_since(idle.since) > self.bounds.idle_timeout {
                // Oldest first: this one and all before it have expired.
                conns.idle.drain(..=i);
                return None;
            }
            if idle.sender.is_closed() {
                conns.idle.remove(i);
            } else if idle.sender.is_ready() {
                return Some(Sender::H1(conns.idle.remove(i).sender));
            }
        }
        None
    }

    /// Put an HTTP/1.1 connection back after its exchange ended.
    fn put(&self, key: Key, sender: http1::SendRequest<Body>) {
        if self.bounds.max_idle_per_host == 0 || sender.is_closed() {
            return;
        }
        let mut origins = self.lock();
        // Read under the lock: the list stays oldest first even when
        // threads (the main runtime's pool) put back at once.
        let idle = Idle {
            sender,
            since: Instant::now(),
        };
        let conns = match origins.iter().position(|o| o.key == key) {
            Some(i) => &mut origins[i],
            None => {
                origins.push(OriginConns {
                    key,
                    idle: Vec::new(),
                    h2: None,
                    h2_used: false,
                });
                let last = origins.len() - 1;
                &mut origins[last]
            }
        };
        if conns.idle.len() >= self.bounds.max_idle_per_host {
            // The oldest goes (closed when dropped, after the lock).
            let oldest = conns.idle.remove(0);
            conns.idle.push(idle);
            drop(origins);
            drop(oldest);
        } else {
            conns.idle.push(idle);
        }
    }

    /// Share a new HTTP/2 connection to `key` (unless nothing is pooled).
    fn share_h2(&self, key: &Key, sender: &http2::SendRequest<Body>) {
        if self.bounds.max_idle_per_host == 0 {
            return;
        }
        let sender = Some(sender.clone());
        let mut origins = self.lock();
        let replaced = match origins.iter_mut().find(|o| o.key == *key) {
            Some(o) => {
                o.h2_used = true;
                std::mem::replace(&mut o.h2, sender)
            }
            None => {
                origins.push(OriginConns {
                    key: key.clone(),
                    idle: Vec::new(),
                    h2: sender,
                    h2_used: true,
                });
                None
            }
        };
        drop(origins);
        drop(replaced);
    }

    /// Forget `key`'s shared HTTP/2 connection if it has closed (another
    /// request may have replaced it already).
    fn forget_h2(&self, key: &Key) {
        let mut origins = self.lock();
        if let Some(o) = origins.iter_mut().find(|o| o.key == *key) {
            if o.h2.as_ref().is_some_and(|h| h.is_closed()) {
                o.h2 = None;
            }
        }
    }

    /// Close the idle connections past the idle timeout, and the HTTP/2
    /// ones no request took since the last sweep.
    fn sweep(&self, now: Instant) {
        let mut expired = Vec::new();
        let mut expired_h2 = Vec::new();
        {
            let mut origins = self.lock();
            for o in origins.iter_mut() {
                if std::mem::take(&mut o.h2_used) {
                    // In use: kept.
                } else if let Some(h2) = o.h2.take() {
                    expired_h2.push(h2);
                }
                let timeout = self.bounds.idle_timeout;
                let keep = o
                    .idle
                    .iter()
                    .position(|i| now.duration_since(i.since) <= timeout && !i.sender.is_closed())
                    .unwrap_or(o.idle.len());
                expired.extend(o.idle.drain(..keep));
                o.idle.retain(|i| !i.sender.is_closed());
            }
        }
        drop(expired);
        drop(expired_h2);
    }
}

/// Where an HTTP/1.1 connection goes back when its answer has been read.
struct Back {
    pool: Arc<Pool>,
    key: Key,
    sender: http1::SendRequest<Body>,
}

pin_project_lite::pin_project! {
    /// An upstream response body: hyper's, which puts its HTTP/1.1
    /// connection back in the pool when it ends.
    pub struct UpstreamBody {
        #[pin]
        inner: Incoming,
        back: Option<Back>,
    }
}

impl UpstreamBody {
    fn new(inner: Incoming, back: Option<Back>) -> UpstreamBody {
        let mut body = UpstreamBody { inner, back };
        if hyper::body::Body::is_end_stream(&body.inner) {
            // No body (HEAD, 204, 304, an empty answer): free at once.
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some(b) = self.back.take() {
            b.pool.put(b.key, b.sender);
        }
    }
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        let ended = match &frame {
            None => true,
            Some(Ok(_)) => this.inner.is_end_stream(),
            Some(Err(_)) => {
                // The connection failed: it is not put back.
                this.back.take();
                false
            }
        };
        if ended {
            if let Some(b) = this.back.take() {
                b.pool.put(b.key, b.sender);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The request target an HTTP/1.1 upstream gets: path and query only
/// (the parts are moved, not copied).
fn origin_form(uri: &mut Uri) {
    let mut parts = std::mem::take(uri).into_parts();
    parts.scheme = None;
    parts.authority = None;
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *uri = Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"));
}

/// Back to the absolute form on `key` (an unsent request, to be retried).
fn absolute_form(uri: &mut Uri, key: &Key) {
    let mut parts = std::mem::take(uri).into_parts();
    parts.scheme = Some(key.scheme.clone());
    parts.authority = Some(key.authority.clone());
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *uri = Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"));
}
