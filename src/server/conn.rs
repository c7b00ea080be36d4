//! The task of one client connection: protocol detection, then HTTP/2 served
//! by one hyper connection for the connection's life, or HTTP/1 served by a
//! hyper connection that is parked when idle (see `park`) and replaced by a
//! fresh one when the client's next request arrives. A TLS connection
//! (`super::tls`, handshake done) enters at [`run_tls`] with the protocol
//! ALPN chose, under the same watchdog, and is never parked.
//!
//! Parking an HTTP/1 connection: `graceful_shutdown` on an idle hyper
//! connection closes its state at once, without a socket call, and
//! `without_shutdown` hands back the socket and the bytes hyper read but did
//! not parse (replayed first to the next hyper connection, so a pipelined or
//! split request is never lost). Should hyper still have had work to do
//! (a request body to drain, a response to flush: it then makes socket calls,
//! counted by [`Watched`]), graceful shutdown lets it finish that exchange and
//! the connection is closed after it, as hyper would have closed it, never
//! parked: nothing is answered twice or dropped half-way. A parked socket
//! costs its task and the [`Watched`] wrapper; the watchdog, the slots'
//! eviction and shutdown apply to it exactly as to a served idle connection.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::ConnService;
use super::ServeOptions;
use super::gate::Gate;
use super::park::{Crowd, Parker, parkable};
use super::slots::Conn;
use super::watchdog::{Activity, ConnBody, RequestGuard, Watchdog, Watched};

/// The first bytes of every HTTP/2 (prior knowledge) connection.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The hyper builders and bounds shared by one runtime's connections.
pub(super) struct Protocols {
    pub(super) http1: http1::Builder,
    pub(super) http2: http2::Builder<TokioExecutor>,
    pub(super) opts: ServeOptions,
    /// `trp_open_connections`, `trp_parked_connections` of the listener.
    pub(super) gauges: crate::metrics::ConnectionGauges,
}

/// What woke [`Life::drive`]: the hyper connection ended, it may be parked
/// now (`idle_park` 0 or a crowded listener), or a rare event.
enum Turn {
    Ended(hyper::Result<()>),
    Park,
    Rare(Rare),
}

/// A rare event beside a served hyper connection.
enum Rare {
    /// The listener's eviction pressure changed (`false`: it is gone).
    Pressure(bool),
    /// Shutdown began.
    Shutdown,
    /// The watchdog's (and the parker's) tick.
    Tick,
}

/// How a served hyper connection's turn ended.
enum Served {
    /// Closed (by the client, by hyper, or by the watchdog, eviction or
    /// shutdown): the task ends.
    Ended,
    /// Idle and parkable: hand the socket back.
    Park,
}

/// What outlives the hyper connections of one client connection.
struct Life {
    activity: Arc<Activity>,
    dog: Watchdog,
    parker: Parker,
    pressure: watch::Receiver<u64>,
    /// Err from `pressure`: the listener is gone, nobody will wait again.
    listening: bool,
    shutdown: watch::Receiver<bool>,
    stopping: bool,
    tick: Duration,
    /// Most time a hyper connection asked to park may take to hand back.
    handback: Duration,
}

/// The hyper service of one connection: `service`'s answer to each request,
/// its body counted by the connection's [`Activity`] until it is sent.
macro_rules! hyper_service {
    ($service:expr, $peer:expr, $activity:expr) => {{
        let (service, peer, seen) = ($service, $peer, $activity);
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let guard = RequestGuard::new(&seen, req.version());
            service.clone().answer(req, peer).map(move |resp| {
                Ok::<_, Infallible>(resp.map(|inner| ConnBody {
                    inner,
                    guard: Some(guard),
                }))
            })
        })
    }};
}

/// A connection whose TLS handshake is done, as `super::tls` hands it over.
pub(super) struct TlsConn<T> {
    pub(super) stream: T,
    /// ALPN chose `h2`.
    pub(super) h2: bool,
    pub(super) peer: std::net::SocketAddr,
    pub(super) permit: tokio::sync::OwnedSemaphorePermit,
    pub(super) pressure: watch::Receiver<u64>,
}

/// Serve one connection whose TLS handshake is done, with the protocol
/// ALPN chose (`h2`: HTTP/2; anything else: HTTP/1.1), under the same
/// watchdog, eviction and shutdown as a plain one. Never parked: a parked
/// socket is watched for readability, which says nothing about plaintext
/// rustls may already hold; the TLS session's buffers stay with it.
pub(super) async fn run_tls<S, T>(
    p: Arc<Protocols>,
    c: TlsConn<T>,
    service: S,
    shutdown: watch::Receiver<bool>,
) where
    S: ConnService,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let _open = p.gauges.open();
    let TlsConn {
        stream,
        h2,
        peer,
        permit,
        pressure,
    } = c;
    let (mut life, activity) = Life::new(&p, &permit, pressure, shutdown);
    let io = Watched {
        prefix: Bytes::new(),
        inner: stream,
        activity: activity.clone(),
    };
    let svc = hyper_service!(service, peer, activity);
    if h2 {
        let mut conn = Box::pin(p.http2.serve_connection(TokioIo::new(io), svc));
        life.drive(conn.as_mut(), |c| c.graceful_shutdown(), false)
            .await;
    } else {
        let mut conn = Box::pin(p.http1.serve_connection(TokioIo::new(io), svc));
        life.drive(conn.as_mut(), |c| c.graceful_shutdown(), false)
            .await;
    }
    drop(permit);
}

/// Serve one accepted connection until it closes.
pub(super) async fn run<S>(p: Arc<Protocols>, c: Conn, service: S, shutdown: watch::Receiver<bool>)
where
    S: ConnService,
{
    let _open = p.gauges.open();
    let _ = c.stream.set_nodelay(true);
    let permit = c.permit;
    let peer = c.peer;
    let (mut life, activity) = Life::new(&p, &permit, c.pressure, shutdown);
    let mut io = Watched {
        prefix: Bytes::new(),
        inner: c.stream,
        activity: activity.clone(),
    };
    let mut svc = hyper_service!(service, peer, activity);
    match life.detect(&mut io).await {
        None => return,
        Some(true) => {
            let conn = p.http2.serve_connection(TokioIo::new(io), svc);
            let mut conn = Box::pin(conn);
            life.drive(conn.as_mut(), |c| c.graceful_shutdown(), false)
                .await;
            drop(permit);
            return;
        }
        Some(false) => {}
    }
    loop {
        let mut conn = Box::new(p.http1.serve_connection(TokioIo::new(io), svc));
        life.parker.reset();
        match life
            .drive(Pin::new(&mut *conn), |c| c.graceful_shutdown(), true)
            .await
        {
            Served::Ended => break,
            Served::Park => {}
        }
        let before = life.activity.io_calls.load(Relaxed);
        Pin::new(&mut *conn).graceful_shutdown();
        let parts = match tokio::time::timeout(life.handback, conn.without_shutdown()).await {
            Ok(Ok(parts)) => parts,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "connection ended with an error");
                break;
            }
            Err(_) => break,
        };
        // Taken apart field by field: a field left in `parts` would live
        // (and the read buffer's ~16 KiB with it) until the end of this
        // iteration, across the parked wait.
        let read_buf = parts.read_buf;
        io = parts.io.into_inner();
        svc = parts.service;
        if life.activity.io_calls.load(Relaxed) != before {
            // hyper was not idle: it finished its exchange with keep-alive
            // disabled, so the client may have been told `Connection: close`.
            let _ = io.inner.shutdown().await;
            break;
        }
        if !read_buf.is_empty() {
            // Copied: the frozen buffer would keep hyper's whole
            // allocation alive.
            let mut prefix = BytesMut::with_capacity(read_buf.len() + io.prefix.len());
            prefix.extend_from_slice(&read_buf);
            prefix.extend_from_slice(&io.prefix);
            io.prefix = prefix.freeze();
            // Bytes of a next head: counted as a read, so the connection
            // is not parkable until that request is answered and the
            // watchdog bounds the head by header_read_timeout.
            life.activity.reads.fetch_add(1, Relaxed);
        }
        drop(read_buf);
        if io.prefix.is_empty() {
            let _parked = p.gauges.parked();
            if !life.wait_readable(&io.inner).await {
                break;
            }
        }
    }
    drop(permit);
}

impl Life {
    /// A connection's life from its accept, and the activity its socket
    /// and requests report to.
    fn new(
        p: &Protocols,
        permit: &tokio::sync::OwnedSemaphorePermit,
        pressure: watch::Receiver<u64>,
        shutdown: watch::Receiver<bool>,
    ) -> (Life, Arc<Activity>) {
        let activity = Arc::new(Activity::default());
        let life = Life {
            activity: activity.clone(),
            dog: Watchdog::new(&p.opts, Instant::now()),
            parker: Parker::new(
                p.opts.idle_park,
                Crowd::new(
                    permit.semaphore().clone(),
                    p.opts.max_connections,
                    p.opts.park_at_once_above_connections,
                ),
            ),
            pressure,
            listening: true,
            shutdown,
            stopping: false,
            tick: Watchdog::tick(&p.opts),
            handback: p.opts.keepalive_timeout,
        };
        (life, activity)
    }

    /// Read the first bytes: `Some(true)` for the HTTP/2 preface, `Some(false)`
    /// for anything else (HTTP/1), `None` when the connection is to close.
    /// The bytes read go to `io.prefix`.
    async fn detect(&mut self, io: &mut Watched) -> Option<bool> {
        let mut got = [0u8; 24];
        let mut filled = 0;
        loop {
            if !self.wait_readable(&io.inner).await {
                return None;
            }
            match io.inner.try_read(&mut got[filled..]) {
                Ok(0) => return None,
                Ok(n) => {
                    self.activity.reads.fetch_add(1, Relaxed);
                    filled += n;
                    if got[..filled] != H2_PREFACE[..filled] {
                        io.prefix = Bytes::copy_from_slice(&got[..filled]);
                        return Some(false);
                    }
                    if filled == H2_PREFACE.len() {
                        io.prefix = Bytes::copy_from_slice(&got[..filled]);
                        return Some(true);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return None,
            }
        }
    }

    /// Wait, without hyper, for the socket to become readable (request
    /// bytes or end of stream): `false` when the watchdog, eviction or
    /// shutdown closes it first.
    async fn wait_readable(&mut self, stream: &TcpStream) -> bool {
        let Life {
            activity,
            dog,
            pressure,
            listening,
            shutdown,
            stopping,
            tick,
            ..
        } = self;
        if *stopping {
            return false;
        }
        let sleep = tokio::time::sleep(*tick);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                ready = stream.readable() => return ready.is_ok(),
                changed = pressure.changed(), if *listening => {
                    *listening = changed.is_ok();
                    if *listening && dog.evictable(activity, Instant::now()) {
                        tracing::debug!("closing an idle connection for a waiting client");
                        return false;
                    }
                }
                _ = shutdown.changed() => {
                    *stopping = true;
                    return false;
                }
                () = &mut sleep => {
                    let now = Instant::now();
                    sleep.as_mut().reset(now + *tick);
                    if dog.expired(activity, now) {
                        tracing::debug!("closing an idle connection");
                        return false;
                    }
                }
            }
        }
    }

    /// Drive a hyper connection under the watchdog, eviction and shutdown
    /// until it ends, or (`parks`: HTTP/1) until the [`Parker`] parks it.
    async fn drive<F>(
        &mut self,
        mut conn: Pin<&mut F>,
        graceful: fn(Pin<&mut F>),
        parks: bool,
    ) -> Served
    where
        F: Future<Output = hyper::Result<()>>,
    {
        let Life {
            activity,
            dog,
            parker,
            pressure,
            listening,
            shutdown,
            stopping,
            tick,
            ..
        } = self;
        let immediate = parks && parker.immediate();
        let tick = if parks && !immediate {
            (*tick).min(parker.tick())
        } else {
            *tick
        };
        let sleep = tokio::time::sleep(tick);
        tokio::pin!(sleep);
        let mut closing = false;
        if *stopping {
            closing = true;
            graceful(conn.as_mut());
        }
        // The rare events are polled only when their own waker fired, not
        // at each of the several wake-ups hyper makes per request (`gate`).
        let gate = Gate::new();
        loop {
            let event = {
                let (listening, stopping) = (*listening, *stopping);
                let mut rare = pin!(async {
                    tokio::select! {
                        changed = pressure.changed(), if listening => Rare::Pressure(changed.is_ok()),
                        _ = shutdown.changed(), if !stopping => Rare::Shutdown,
                        () = &mut sleep => Rare::Tick,
                    }
                });
                gate.open();
                poll_fn(|cx| match conn.as_mut().poll(cx) {
                    Poll::Ready(r) => Poll::Ready(Turn::Ended(r)),
                    Poll::Pending if immediate && !closing && parkable(activity) => {
                        Poll::Ready(Turn::Park)
                    }
                    Poll::Pending => gate.poll(cx, rare.as_mut()).map(Turn::Rare),
                })
                .await
            };
            match event {
                Turn::Ended(Err(e)) => {
                    tracing::debug!(error = %e, "connection ended with an error");
                    return Served::Ended;
                }
                Turn::Ended(Ok(())) => return Served::Ended,
                Turn::Park => return Served::Park,
                Turn::Rare(Rare::Pressure(open)) => {
                    *listening = open;
                    if *listening && dog.evictable(activity, Instant::now()) {
                        tracing::debug!("closing an idle connection for a waiting client");
                        return Served::Ended;
                    }
                }
                Turn::Rare(Rare::Shutdown) => {
                    *stopping = true;
                    if !closing {
                        closing = true;
                        graceful(conn.as_mut());
                    }
                }
                Turn::Rare(Rare::Tick) => {
                    let now = Instant::now();
                    sleep.as_mut().reset(now + tick);
                    if dog.expired(activity, now) {
                        if closing {
                            // Still open a tick after a graceful close
                            // with nothing in flight (a peer that never
                            // answers a GOAWAY, a head never finished).
                            tracing::debug!("closing an idle connection");
                            return Served::Ended;
                        }
                        closing = true;
                        graceful(conn.as_mut());
                    } else if parks && !closing && !immediate && parker.due(activity) {
                        return Served::Park;
                    }
                }
            }
        }
    }
}
