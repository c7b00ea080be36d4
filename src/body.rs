//! Bodies, in one place: how the proxy streams them and how it reads the
//! ones it must look into.
//!
//! - [`MeteredBody`]: a streamed body that counts its bytes, ends after an
//!   idle timeout, reports a request body's progress to the forwarder
//!   ([`SendProgress`]) and closes the access log when it ends.
//! - [`read_capped`]: buffer a request body up to a bound (the intercepted
//!   create), each frame within the idle timeout; [`prefixed`] sends what
//!   was read followed by the rest, when it was over the bound.
//! - [`decode_body`]: bounded gzip/deflate decoding of a body the proxy
//!   inspects (a 404 from Twilio, a JSON answer whose links are rewritten).
//!
//! A leaf: it knows the metrics it feeds, nothing of forwarding or repair.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures_util::StreamExt as _;
use http::HeaderValue;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::Notify;
use tokio::time::Sleep;

use crate::metrics::{InFlightGuard, Metrics};

/// Largest decoded body inspected (a Twilio error body is ~200 bytes; a
/// page of JSON is far below this).
pub const MAX_DECODED_BYTES: u64 = 1024 * 1024;

/// Decode a gzip/deflate body for inspection, at most [`MAX_DECODED_BYTES`]
/// of it; see [`decode_body_capped`].
pub fn decode_body<'a>(
    encoding: Option<&HeaderValue>,
    raw: &'a Bytes,
) -> Option<std::borrow::Cow<'a, [u8]>> {
    decode_body_capped(encoding, raw, MAX_DECODED_BYTES)
}

/// Decode a gzip/deflate body (an identity body is borrowed, not copied);
/// `None` when the encoding is unknown, the data is corrupt, or it decodes
/// to more than `cap` bytes (never a truncated body).
pub fn decode_body_capped<'a>(
    encoding: Option<&HeaderValue>,
    raw: &'a Bytes,
    cap: u64,
) -> Option<std::borrow::Cow<'a, [u8]>> {
    use std::io::Read;
    let enc = encoding
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_ascii_lowercase());
    let mut out = Vec::new();
    let limit = cap.saturating_add(1);
    match enc.as_deref() {
        None | Some("identity") | Some("") => return Some(std::borrow::Cow::Borrowed(&raw[..])),
        Some("gzip") | Some("x-gzip") => {
            flate2::read::GzDecoder::new(&raw[..])
                .take(limit)
                .read_to_end(&mut out)
                .ok()?;
        }
        Some("deflate") => {
            flate2::read::ZlibDecoder::new(&raw[..])
                .take(limit)
                .read_to_end(&mut out)
                .ok()?;
        }
        _ => return None,
    }
    (out.len() as u64 <= cap).then_some(std::borrow::Cow::Owned(out))
}

/// Why [`read_capped`] returned no body.
pub enum ReadCapped {
    /// Over the cap: what was read, and the rest of the body.
    TooLarge(Vec<Bytes>, Incoming),
    Unreadable,
    Stalled,
}

/// Read a body up to `cap` bytes, each frame within `idle`.
pub async fn read_capped(
    mut body: Incoming,
    cap: usize,
    idle: Duration,
) -> Result<Bytes, ReadCapped> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len = 0usize;
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(ReadCapped::Stalled),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(ReadCapped::Unreadable),
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            len += data.len();
            chunks.push(data);
            if len > cap {
                return Err(ReadCapped::TooLarge(chunks, body));
            }
        }
    }
    let mut out = bytes::BytesMut::with_capacity(len);
    for c in chunks {
        out.extend_from_slice(&c);
    }
    Ok(out.freeze())
}

/// A body that sends `prefix` (chunks already read) and then `rest`.
pub fn prefixed(
    prefix: Vec<Bytes>,
    rest: impl http_body::Body<Data = Bytes, Error: Into<axum::BoxError>> + Send + 'static,
) -> Body {
    let stream = futures_util::stream::iter(prefix.into_iter().map(Ok::<_, axum::Error>))
        .chain(http_body_util::BodyDataStream::new(Body::new(rest)));
    Body::from_stream(stream)
}

/// How a request body failed on the client's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// No data for the idle timeout.
    Stalled,
    /// Malformed framing (an invalid chunk size) or a connection cut short.
    Invalid,
}

/// How far a request body has gone upstream, shared between the body
/// (inside the upstream client) and the forwarding future.
#[derive(Debug, Default)]
pub struct SendProgress {
    /// Frames handed to the upstream connection.
    pub(crate) frames: AtomicU64,
    /// The body's last poll waited for the client.
    pub(crate) waiting_on_client: AtomicBool,
    /// 0: none, else a [`ClientFault`] + 1.
    pub(crate) fault: AtomicU8,
    /// Notified once the body has been handed over whole.
    pub(crate) sent: Notify,
}

impl SendProgress {
    /// Why the body failed on the client's side, if it did.
    pub fn fault(&self) -> Option<ClientFault> {
        match self.fault.load(Relaxed) {
            1 => Some(ClientFault::Stalled),
            2 => Some(ClientFault::Invalid),
            _ => None,
        }
    }
    pub(crate) fn set_fault(&self, f: ClientFault) {
        let v = match f {
            ClientFault::Stalled => 1,
            ClientFault::Invalid => 2,
        };
        self.fault.store(v, Relaxed);
    }
}

/// Which way a [`MeteredBody`] flows, for the byte counters.
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    /// Client → upstream.
    Request,
    /// Upstream → client.
    Response,
}

/// Error of a [`MeteredBody`].
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("no body data for {0:?}")]
    Idle(Duration),
    #[error("body stream failed: {0}")]
    Inner(#[from] Box<dyn std::error::Error + Send + Sync>),
}

pin_project_lite::pin_project! {
    /// A streaming body that counts its bytes, aborts after `idle` without a
    /// frame, and runs `on_end` exactly once when it ends or is dropped.
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        // The idle timer, made at the body's first wait: a body that is
        // ready whenever it is polled (a small answer read whole with its
        // head) never reads the clock or touches the timer wheel.
        sleep: Option<Pin<Box<Sleep>>>,
        idle: Duration,
        direction: Direction,
        metrics: Arc<Metrics>,
        bytes: u64,
        // A frame arrived since the idle timer was last armed.
        active: bool,
        on_end: Option<Box<dyn FnOnce(u64) + Send + Sync>>,
        guard: Option<InFlightGuard>,
        // Byte counters updated (false: the caller counts).
        counted: bool,
        progress: Option<Arc<SendProgress>>,
    }

    impl<B> PinnedDrop for MeteredBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(f) = this.on_end.take() {
                f(*this.bytes);
            }
        }
    }
}

impl<B> MeteredBody<B> {
    pub fn new(inner: B, idle: Duration, direction: Direction, metrics: Arc<Metrics>) -> Self {
        MeteredBody {
            inner,
            sleep: None,
            idle,
            direction,
            metrics,
            bytes: 0,
            active: false,
            on_end: None,
            guard: None,
            counted: true,
            progress: None,
        }
    }

    /// Leave the byte counters alone (the caller counted the body).
    pub fn uncounted(mut self) -> Self {
        self.counted = false;
        self
    }

    /// Report a request body's progress to its forwarder (see
    /// `Forwarder::forward_tracked`).
    pub fn with_progress(mut self, progress: Arc<SendProgress>) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Keep `guard` alive until the body ends or is dropped.
    pub fn with_guard(mut self, guard: InFlightGuard) -> Self {
        self.guard = Some(guard);
        self
    }

    /// Run `f(bytes)` once the body has ended or been dropped.
    pub fn on_end(mut self, f: impl FnOnce(u64) + Send + Sync + 'static) -> Self {
        self.on_end = Some(Box::new(f));
        self
    }
}

impl<B> HttpBody for MeteredBody<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut this = self.project();
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    *this.bytes += n;
                    if *this.counted {
                        match this.direction {
                            Direction::Request => this.metrics.add_request_bytes(n),
                            Direction::Response => this.metrics.add_response_bytes(n),
                        }
                    }
                }
                if let Some(p) = this.progress {
                    p.frames.fetch_add(1, Relaxed);
                    p.waiting_on_client.store(false, Relaxed);
                    // The upstream client may stop polling once the body
                    // says it has ended: this frame was the last one.
                    if this.inner.is_end_stream() {
                        p.sent.notify_one();
                    }
                }
                // The timer is re-armed lazily, on the next Pending: no
                // clock read or timer-wheel update per frame.
                *this.active = true;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(p) = this.progress {
                    p.set_fault(ClientFault::Invalid);
                }
                Poll::Ready(Some(Err(BodyError::Inner(e.into()))))
            }
            Poll::Ready(None) => {
                if let Some(f) = this.on_end.take() {
                    f(*this.bytes);
                }
                this.guard.take();
                if let Some(p) = this.progress {
                    p.waiting_on_client.store(false, Relaxed);
                    p.sent.notify_one();
                }
                Poll::Ready(None)
            }
            Poll::Pending => {
                let active = std::mem::take(this.active);
                let sleep = match this.sleep {
                    Some(sleep) => {
                        if active {
                            let deadline = tokio::time::Instant::now() + *this.idle;
                            sleep.as_mut().reset(deadline);
                        }
                        sleep
                    }
                    None => this.sleep.insert(Box::pin(tokio::time::sleep(*this.idle))),
                };
                if let Some(p) = this.progress {
                    p.waiting_on_client.store(true, Relaxed);
                }
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        if let Some(p) = this.progress {
                            p.set_fault(ClientFault::Stalled);
                        }
                        Poll::Ready(Some(Err(BodyError::Idle(*this.idle))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
