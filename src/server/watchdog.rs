//! What one connection is doing, and when an idle one is closed.
//!
//! The socket wrapper counts reads, request guards count requests in flight
//! (until their response body ends), and the [`Watchdog`] reads both at each
//! tick to apply the deadlines in the parent module's documentation. All
//! bookkeeping is relaxed atomics: no allocation, no clock read per request.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::Version;
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::ServeOptions;
use super::slots::EVICTION_MIN_AGE;

/// What one connection is doing, shared by its socket wrapper, its request
/// guards and its watchdog.
#[derive(Debug, Default)]
pub(super) struct Activity {
    /// Requests between their head's arrival and their response body's end.
    pub(super) in_flight: AtomicUsize,
    /// Requests started on this connection.
    pub(super) requests: AtomicU64,
    /// Socket reads that returned data.
    pub(super) reads: AtomicU64,
    /// `reads` when `in_flight` last dropped to zero.
    pub(super) reads_when_idle: AtomicU64,
    /// The connection speaks HTTP/2 (known from its first request).
    pub(super) http2: AtomicBool,
    /// Socket read and write calls (ready or not): a parked HTTP/1
    /// connection checks that hyper made none while it closed its state,
    /// i.e. that hyper was idle (see `park`). Written by the connection's
    /// own task only, so a plain load and store.
    pub(super) io_calls: AtomicU64,
    /// The last socket write returned `Pending`: hyper holds unsent bytes,
    /// the connection is not parked.
    pub(super) write_blocked: AtomicBool,
}

impl Activity {
    fn io_call(&self) {
        self.io_calls
            .store(self.io_calls.load(Relaxed).wrapping_add(1), Relaxed);
    }

    fn wrote<T>(&self, polled: &Poll<T>) {
        self.io_call();
        self.write_blocked.store(polled.is_pending(), Relaxed);
    }
}

/// Counts one request in flight until dropped (with its response body).
pub(super) struct RequestGuard(Arc<Activity>);

impl RequestGuard {
    pub(super) fn new(a: &Arc<Activity>, version: Version) -> Self {
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
    pub(super) struct ConnBody {
        #[pin]
        pub(super) inner: Body,
        pub(super) guard: Option<RequestGuard>,
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

/// The client socket, counting reads that return data, with the bytes read
/// before hyper took the socket (`prefix`: the protocol detection's, or the
/// unparsed bytes a parked hyper connection handed back) replayed first.
pub(super) struct Watched<S = TcpStream> {
    pub(super) prefix: Bytes,
    pub(super) inner: S,
    pub(super) activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            // Already counted in `reads` when it came off the socket.
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.activity.io_call();
        if buf.filled().len() > before {
            this.activity.reads.fetch_add(1, Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.activity.wrote(&polled);
        polled
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.activity.wrote(&polled);
        polled
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
pub(super) struct Watchdog {
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
    pub(super) fn new(opts: &ServeOptions, now: Instant) -> Self {
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
    pub(super) fn tick(opts: &ServeOptions) -> Duration {
        (opts.header_read_timeout.min(opts.keepalive_timeout) / 4).max(Duration::from_millis(5))
    }

    /// Whether the connection may be closed to make room for a new client:
    /// nothing in flight, and not brand new.
    pub(super) fn evictable(&self, a: &Activity, now: Instant) -> bool {
        a.in_flight.load(Relaxed) == 0 && now >= self.accepted + EVICTION_MIN_AGE
    }

    /// Whether the connection is idle past its deadline at `now`.
    pub(super) fn expired(&mut self, a: &Activity, now: Instant) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn opts() -> ServeOptions {
        ServeOptions {
            header_read_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            ..ServeOptions::default()
        }
    }

    #[tokio::test]
    pub(super) async fn watchdog_deadlines_by_phase() {
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
