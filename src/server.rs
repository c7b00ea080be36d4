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
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
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
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
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
    serve_limited(listener, service, opts, limit, shutdown).await
}

/// [`serve`] with a connection limit shared by several listeners' loops.
pub async fn serve_limited<S>(
    listener: TcpListener,
    service: S,
    opts: ServeOptions,
    limit: Arc<Semaphore>,
    shutdown: impl Future<Output = ()>,
) -> Drain
where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);

    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let svc = service.clone();
        let hyper_svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(PeerAddr(peer));
            svc.clone().oneshot(req)
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), hyper_svc)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => Drain::Complete,
        _ = tokio::time::sleep(opts.shutdown_grace) => Drain::GraceElapsed,
    }
}
