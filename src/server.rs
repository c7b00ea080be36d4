//! The accept loop shared by the proxy, admin and emulator listeners.
//!
//! One task per connection, HTTP/1.1 and HTTP/2 (prior knowledge) on the same
//! port, a semaphore bounding concurrent connections, a bound on how long a
//! client may take to send its request head, and graceful shutdown: when the
//! shutdown future completes the listener is closed, open connections finish
//! their in-flight requests (idle keep-alive connections are closed at once),
//! and after the grace period whatever is left is dropped.

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
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tower::{Service, ServiceExt};

/// The peer address of the connection a request came in on.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Bounds of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Most concurrent connections; more wait in the accept queue.
    pub max_connections: usize,
    /// Time a client has to send a complete HTTP/1 request head.
    pub header_read_timeout: Duration,
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
    let limit = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    let conns = Connections::new(opts);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = accept(&listener, &limit) => a,
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
    let limit = Arc::new(Semaphore::new(max_connections.max(1)));
    tokio::pin!(shutdown);
    let mut next = 0usize;
    loop {
        let accepted = tokio::select! {
            a = accept(&listener, &limit) => a,
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
}

/// Take a connection slot, then accept. `None` on an accept error (after a
/// short back-off: EMFILE and friends must not spin).
async fn accept(listener: &TcpListener, limit: &Arc<Semaphore>) -> Option<Conn> {
    let permit = limit.clone().acquire_owned().await.ok()?;
    match listener.accept().await {
        Ok((stream, peer)) => Some(Conn {
            stream,
            peer,
            permit,
        }),
        Err(e) => {
            tracing::warn!(error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}

/// The connections of one runtime: protocol settings and graceful drain.
struct Connections {
    builder: auto::Builder<TokioExecutor>,
    graceful: GracefulShutdown,
    grace: Duration,
}

impl Connections {
    fn new(opts: ServeOptions) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(opts.header_read_timeout)
            // hyper's minimum buffer is 8 KiB.
            .max_buf_size(opts.max_request_head_bytes.max(8192))
            .keep_alive(true);
        builder.http2().timer(TokioTimer::new());
        Connections {
            builder,
            graceful: GracefulShutdown::new(),
            grace: opts.shutdown_grace,
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
        let hyper_svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(PeerAddr(peer));
            service.clone().oneshot(req)
        });
        let conn = self
            .builder
            .serve_connection(TokioIo::new(c.stream), hyper_svc)
            .into_owned();
        let conn = self.graceful.watch(conn);
        let permit = c.permit;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }

    /// Let in-flight requests finish (idle keep-alive connections close at
    /// once), for at most the grace period.
    async fn drain(self) -> Drain {
        tokio::select! {
            _ = self.graceful.shutdown() => Drain::Complete,
            _ = tokio::time::sleep(self.grace) => Drain::GraceElapsed,
        }
    }
}
