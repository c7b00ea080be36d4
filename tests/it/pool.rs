//! The upstream connection pool (`src/pool.rs`) over real sockets: which
//! upstream connection a request lands on, as a raw TCP upstream sees it.
//!
//! The upstream here is written by hand on a `TcpListener` (not hyper), so
//! it can misbehave per connection the way real servers do (close a
//! keep-alive connection after answering without saying so, answer before
//! reading the request body, stream a long body) and count what a user of
//! the pool cannot see from the client side: connections accepted, requests
//! received, connections the proxy closed. Every proxy here runs one worker
//! (`limits.worker_threads = 1`), so every client connection shares one
//! pool and "a new upstream connection" means the pool chose to open one.
//!
//! HTTP/2, at the end of the file, is driven on the pool directly against a
//! hyper TLS upstream signed by a test CA (`common::private_ca`): ALPN only
//! offers `h2` over TLS.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use twilio_repair_proxy::config::Config;
use twilio_repair_proxy::pool::UpstreamClient;

use crate::common::*;

/// A generous bound on "it did not hang": never a performance assertion.
const PATIENCE: Duration = Duration::from_secs(10);

/// One request as the raw upstream read it.
#[derive(Debug, Clone)]
struct Got {
    /// Which accepted connection it came on (0 for the first).
    conn: usize,
    method: String,
    target: String,
    body: Vec<u8>,
}

/// What the raw upstream does after answering.
#[derive(Clone, Copy)]
enum Then {
    /// Wait for the next request on the connection.
    KeepAlive,
    /// Close the socket at once, without having said `Connection: close`.
    Close,
    /// Close the socket after this long (a server's keep-alive timeout).
    CloseAfter(Duration),
}

/// The raw upstream's answer to one request.
struct Reply {
    /// Status line and headers, without the final empty line.
    head: String,
    body: Vec<u8>,
    /// Wait this long before answering.
    delay: Duration,
    /// Answer as soon as the request head is read, then read its body.
    early: bool,
    then: Then,
}

impl Reply {
    /// 200 with `body` and its `Content-Length`, keep-alive.
    fn ok(body: impl Into<Vec<u8>>) -> Reply {
        let body = body.into();
        Reply {
            head: format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}",
                body.len()
            ),
            body,
            delay: Duration::ZERO,
            early: false,
            then: Then::KeepAlive,
        }
    }
    fn then(mut self, then: Then) -> Reply {
        self.then = then;
        self
    }
    fn delay(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

type Plan = Arc<dyn Fn(&Got) -> Reply + Send + Sync>;

/// A hand-written HTTP/1.1 upstream that counts what it sees.
struct RawUpstream {
    addr: SocketAddr,
    /// Connections accepted.
    accepts: Arc<AtomicUsize>,
    /// Connections the proxy ended (end of stream or reset while the
    /// upstream waited for a request, or a write that failed).
    closed_by_proxy: Arc<AtomicUsize>,
    /// Connections the upstream chose to close (its plan said so).
    closed_by_upstream: Arc<AtomicUsize>,
    got: Arc<Mutex<Vec<Got>>>,
}

impl RawUpstream {
    async fn start(plan: Plan) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = RawUpstream {
            addr: listener.local_addr().unwrap(),
            accepts: Arc::default(),
            closed_by_proxy: Arc::default(),
            closed_by_upstream: Arc::default(),
            got: Arc::default(),
        };
        let (accepts, closed, got) = (
            up.accepts.clone(),
            up.closed_by_proxy.clone(),
            up.got.clone(),
        );
        let closed_here = up.closed_by_upstream.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let conn = accepts.fetch_add(1, SeqCst);
                let (plan, closed, got) = (plan.clone(), closed.clone(), got.clone());
                let closed_here = closed_here.clone();
                tokio::spawn(async move {
                    match serve_raw(stream, conn, &plan, &got).await {
                        Ok(()) => closed_here.fetch_add(1, SeqCst),
                        Err(ProxyClosed) => closed.fetch_add(1, SeqCst),
                    };
                });
            }
        });
        up
    }
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    fn accepts(&self) -> usize {
        self.accepts.load(SeqCst)
    }
    fn closed_by_proxy(&self) -> usize {
        self.closed_by_proxy.load(SeqCst)
    }
    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
    /// Wait (at most [`PATIENCE`]) until the upstream has closed `n`
    /// connections itself; false if it never did.
    async fn wait_upstream_closed(&self, n: usize) -> bool {
        let until = Instant::now() + PATIENCE;
        while self.closed_by_upstream.load(SeqCst) < n {
            if Instant::now() > until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
    /// Wait (at most [`PATIENCE`]) until the proxy has closed `n`
    /// connections; false if it never did.
    async fn wait_closed(&self, n: usize) -> bool {
        let until = Instant::now() + PATIENCE;
        while self.closed_by_proxy() < n {
            if Instant::now() > until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

/// The proxy ended the connection.
struct ProxyClosed;

/// Serve one connection: `Ok` when the upstream chose to close it.
async fn serve_raw(
    mut s: TcpStream,
    conn: usize,
    plan: &Plan,
    got: &Mutex<Vec<Got>>,
) -> Result<(), ProxyClosed> {
    let mut buf = Vec::new();
    loop {
        // The request head.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            read_more(&mut s, &mut buf).await?;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split(' ');
        let method = first.next().unwrap_or("").to_string();
        let target = first.next().unwrap_or("").to_string();
        let mut length = 0usize;
        let mut chunked = false;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            if name == "content-length" {
                length = value.parse().unwrap_or(0);
            } else if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
        }
        let mut req = Got {
            conn,
            method,
            target,
            body: Vec::new(),
        };
        // The plan sees the body unless it answers early.
        let mut reply = plan(&req);
        if reply.early {
            write_reply(&mut s, &req, &reply).await?;
        }
        req.body = read_body(&mut s, &mut buf, length, chunked).await?;
        got.lock().unwrap().push(req.clone());
        if !reply.early {
            reply = plan(&req);
            tokio::time::sleep(reply.delay).await;
            write_reply(&mut s, &req, &reply).await?;
        }
        match reply.then {
            Then::KeepAlive => {}
            Then::Close => return Ok(()),
            Then::CloseAfter(after) => {
                // Unless a request arrives first (it would be answered by
                // a real server; here it is a test failure to look for).
                tokio::time::sleep(after).await;
                return Ok(());
            }
        }
    }
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), ProxyClosed> {
    let mut chunk = [0u8; 16 * 1024];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => Err(ProxyClosed),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
    }
}

async fn read_body(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    length: usize,
    chunked: bool,
) -> Result<Vec<u8>, ProxyClosed> {
    if !chunked {
        while buf.len() < length {
            read_more(s, buf).await?;
        }
        return Ok(buf.drain(..length).collect());
    }
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            read_more(s, buf).await?;
        };
        let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| ProxyClosed)?;
        buf.drain(..line_end + 2);
        while buf.len() < size + 2 {
            read_more(s, buf).await?;
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
        if size == 0 {
            // No trailers are sent by the proxy in these tests.
            return Ok(body);
        }
    }
}

async fn write_reply(s: &mut TcpStream, req: &Got, reply: &Reply) -> Result<(), ProxyClosed> {
    let mut out = Vec::with_capacity(reply.head.len() + 4 + reply.body.len());
    out.extend_from_slice(reply.head.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    if req.method != "HEAD" {
        out.extend_from_slice(&reply.body);
    }
    s.write_all(&out).await.map_err(|_| ProxyClosed)?;
    s.flush().await.map_err(|_| ProxyClosed)
}

/// A proxy with one worker (so one pool) in front of `up`.
async fn proxy_for(up: &RawUpstream, tune: impl FnOnce(&mut Config)) -> Proxy {
    let mut config = test_config(&up.url());
    config.limits.worker_threads = 1;
    tune(&mut config);
    start_proxy(config).await
}

/// GET `path` through the proxy: status and body.
async fn get(client: &reqwest::Client, proxy: &Proxy, path: &str) -> (u16, String) {
    let resp = tokio::time::timeout(PATIENCE, client.get(proxy.url(path)).send())
        .await
        .unwrap_or_else(|_| panic!("GET {path} hung"))
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// The targets the upstream received, in order.
fn targets(up: &RawUpstream) -> Vec<String> {
    up.got().into_iter().map(|g| g.target).collect()
}

#[tokio::test]
async fn sequential_requests_reuse_one_upstream_connection() {
    let up = RawUpstream::start(Arc::new(|g: &Got| {
        Reply::ok(format!("answer to {}", g.target))
    }))
    .await;
    let proxy = proxy_for(&up, |_| {}).await;
    let client = reqwest::Client::new();
    for i in 0..20 {
        let path = format!("/v1/Services/{i}");
        assert_eq!(
            get(&client, &proxy, &path).await,
            (200, format!("answer to {path}"))
        );
    }
    assert_eq!(up.got().len(), 20);
    assert_eq!(
        up.accepts(),
        1,
        "every request after the first reused the pooled connection"
    );
    assert!(up.got().iter().all(|g| g.conn == 0));
    proxy.stop().await;
}

#[tokio::test]
async fn an_upstream_closing_keep_alive_connections_unannounced_costs_no_502_and_no_duplicate() {
    // No `Connection: close`: the pool learns of each close from the socket.
    let up = RawUpstream::start(Arc::new(|g: &Got| {
        Reply::ok(format!("answer to {}", g.target)).then(Then::Close)
    }))
    .await;
    let proxy = proxy_for(&up, |_| {}).await;
    let client = reqwest::Client::new();
    let n = 30;
    for i in 0..n {
        let path = format!("/v1/Services/once-{i}");
        assert_eq!(
            get(&client, &proxy, &path).await,
            (200, format!("answer to {path}")),
            "request {i}"
        );
    }
    let seen = targets(&up);
    let expected: Vec<String> = (0..n).map(|i| format!("/v1/Services/once-{i}")).collect();
    assert_eq!(
        seen, expected,
        "each request reached the upstream exactly once, in order"
    );
    assert_eq!(
        up.accepts(),
        n,
        "one connection per request: none was reused after its close"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_client_hanging_up_mid_body_leaves_no_half_read_connection_in_the_pool() {
    const BIG: usize = 16 * 1024 * 1024;
    let up = RawUpstream::start(Arc::new(|g: &Got| {
        if g.target == "/big" {
            Reply::ok(vec![b'x'; BIG])
        } else {
            Reply::ok(format!("answer to {}", g.target))
        }
    }))
    .await;
    let proxy = proxy_for(&up, |_| {}).await;

    // A raw client reads the head and some of the long body, then hangs up.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: proxy\r\n\r\n")
        .await
        .unwrap();
    let mut read = 0;
    let mut chunk = [0u8; 16 * 1024];
    while read < 256 * 1024 {
        let n = tokio::time::timeout(PATIENCE, s.read(&mut chunk))
            .await
            .expect("the long body stalled")
            .unwrap();
        assert!(n > 0, "the proxy closed before the body");
        read += n;
    }
    drop(s);
    // The proxy gives up the upstream connection with its unread answer.
    assert!(
        up.wait_closed(1).await,
        "the half-read upstream connection stayed open"
    );

    let client = reqwest::Client::new();
    assert_eq!(
        get(&client, &proxy, "/small").await,
        (200, "answer to /small".to_string())
    );
    assert_eq!(up.accepts(), 2, "the next request went on a new connection");
    assert_eq!(up.got().last().unwrap().conn, 1);
    proxy.stop().await;
}

#[tokio::test]
async fn with_max_idle_one_three_of_four_connections_are_closed_after_a_burst() {
    let up = RawUpstream::start(Arc::new(|g: &Got| {
        Reply::ok(format!("answer to {}", g.target)).delay(Duration::from_millis(300))
    }))
    .await;
    let proxy = proxy_for(&up, |c| c.limits.pool_max_idle_per_host = 1).await;
    let client = reqwest::Client::new();
    let answers = futures_util::future::join_all((0..4).map(|i| {
        let (client, proxy) = (&client, &proxy);
        async move { get(client, proxy, &format!("/slow/{i}")).await }
    }))
    .await;
    for (i, a) in answers.into_iter().enumerate() {
        assert_eq!(a, (200, format!("answer to /slow/{i}")));
    }
    assert_eq!(
        up.accepts(),
        4,
        "four concurrent requests, four connections"
    );
    assert!(
        up.wait_closed(3).await,
        "the pool kept more than one idle connection"
    );
    // And one stays open (pooled): it is not closed later either (a fixed
    // wait that proves an absence).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        up.closed_by_proxy(),
        3,
        "the one idle connection allowed was closed too"
    );
    // The kept one serves the next request.
    assert_eq!(get(&client, &proxy, "/after").await.0, 200);
    assert_eq!(up.accepts(), 4);
    proxy.stop().await;
}

#[tokio::test]
async fn an_idle_pooled_connection_is_closed_after_the_pool_idle_timeout() {
    let up = RawUpstream::start(Arc::new(|g: &Got| {
        Reply::ok(format!("answer to {}", g.target))
    }))
    .await;
    let proxy = proxy_for(&up, |c| c.limits.pool_idle_timeout_ms = 500).await;
    let client = reqwest::Client::new();
    assert_eq!(get(&client, &proxy, "/first").await.0, 200);
    assert_eq!(get(&client, &proxy, "/again").await.0, 200);
    assert_eq!(up.accepts(), 1, "pooled until it expires");
    assert!(
        up.wait_closed(1).await,
        "the idle connection was never closed"
    );
    assert_eq!(
        get(&client, &proxy, "/second").await,
        (200, "answer to /second".to_string())
    );
    assert_eq!(up.accepts(), 2, "a new connection after the expired one");
    proxy.stop().await;
}

#[tokio::test]
async fn answers_without_a_body_give_their_connection_back_at_once() {
    let up = RawUpstream::start(Arc::new(|g: &Got| match g.target.as_str() {
        // A HEAD answer announces a length it does not send.
        "/head" => Reply {
            head: "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1234"
                .to_string(),
            ..Reply::ok("")
        },
        "/empty" => Reply {
            head: "HTTP/1.1 204 No Content".to_string(),
            ..Reply::ok("")
        },
        t => Reply::ok(format!("answer to {t}")),
    }))
    .await;
    let proxy = proxy_for(&up, |_| {}).await;
    let client = reqwest::Client::new();
    let head = tokio::time::timeout(PATIENCE, client.head(proxy.url("/head")).send())
        .await
        .expect("HEAD hung")
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], "1234");
    assert_eq!(get(&client, &proxy, "/empty").await, (204, String::new()));
    assert_eq!(
        get(&client, &proxy, "/get").await,
        (200, "answer to /get".to_string())
    );
    assert_eq!(targets(&up), ["/head", "/empty", "/get"]);
    assert_eq!(
        up.accepts(),
        1,
        "HEAD, 204 and GET on one upstream connection"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_post_after_the_upstream_closed_the_idle_connection_arrives_once_and_whole() {
    let up = RawUpstream::start(Arc::new(|g: &Got| {
        Reply::ok(format!("{} bytes", g.body.len()))
            .then(Then::CloseAfter(Duration::from_millis(100)))
    }))
    .await;
    let proxy = proxy_for(&up, |_| {}).await;
    let client = reqwest::Client::new();
    assert_eq!(get(&client, &proxy, "/first").await.0, 200);
    // The upstream closes the pooled connection while it is idle.
    assert!(
        up.wait_upstream_closed(1).await,
        "the upstream never closed its idle connection"
    );
    let body: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let resp = tokio::time::timeout(
        PATIENCE,
        client.post(proxy.url("/v1/Post")).body(body.clone()).send(),
    )
    .await
    .expect("POST hung")
    .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), format!("{} bytes", body.len()));
    let posts: Vec<Got> = up
        .got()
        .into_iter()
        .filter(|g| g.method == "POST")
        .collect();
    assert_eq!(posts.len(), 1, "the POST reached the upstream once");
    assert_eq!(posts[0].body, body);
    assert_eq!(posts[0].conn, 1, "on a new connection");
    proxy.stop().await;
}

#[tokio::test]
async fn a_request_does_not_wait_on_a_pooled_connection_still_sending_an_earlier_body() {
    // The upstream answers a POST as soon as its head arrives (as a server
    // refusing an upload does), then reads the body the client is still
    // sending. The answer ends first: its connection is back in the pool
    // but cannot carry another request until that body is sent.
    let up = RawUpstream::start(Arc::new(|g: &Got| Reply {
        early: g.method == "POST",
        ..Reply::ok(format!("answer to {}", g.target))
    }))
    .await;
    let proxy = proxy_for(&up, |_| {}).await;

    let mut a = TcpStream::connect(proxy.addr).await.unwrap();
    a.write_all(b"POST /upload HTTP/1.1\r\nHost: proxy\r\nContent-Length: 10\r\n\r\n12345")
        .await
        .unwrap();
    let answer = read_answer(&mut a).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("answer to /upload"), "{answer}");

    // Meanwhile another client's request is served at once.
    let client = reqwest::Client::new();
    assert_eq!(
        get(&client, &proxy, "/other").await,
        (200, "answer to /other".to_string())
    );

    // The first body still arrives whole, once.
    a.write_all(b"67890").await.unwrap();
    let until = Instant::now() + PATIENCE;
    while !up.got().iter().any(|g| g.target == "/upload") {
        assert!(Instant::now() < until, "the upload never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let uploads: Vec<Got> = up
        .got()
        .into_iter()
        .filter(|g| g.target == "/upload")
        .collect();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].body, b"1234567890");
    proxy.stop().await;
}

#[tokio::test]
async fn with_max_idle_zero_no_connection_is_kept() {
    let up = RawUpstream::start(Arc::new(|g: &Got| {
        Reply::ok(format!("answer to {}", g.target))
    }))
    .await;
    let proxy = proxy_for(&up, |c| c.limits.pool_max_idle_per_host = 0).await;
    let client = reqwest::Client::new();
    for i in 0..3 {
        assert_eq!(get(&client, &proxy, &format!("/n/{i}")).await.0, 200);
    }
    assert_eq!(up.accepts(), 3, "no pooling: a connection per request");
    assert!(up.wait_closed(3).await, "a connection was kept open");
    proxy.stop().await;
}

/// Read one HTTP/1.1 answer with a `Content-Length` body from a raw socket.
async fn read_answer(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(i) = text.find("\r\n\r\n") {
            let length = text[..i]
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= i + 4 + length {
                return text;
            }
        }
        let n = tokio::time::timeout(PATIENCE, s.read(&mut chunk))
            .await
            .expect("the answer never came")
            .unwrap();
        assert!(n > 0, "closed before the answer: {text}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

// HTTP/2 through the pool, straight (no proxy in front): over TLS on
// 127.0.0.1, since ALPN only offers `h2` over TLS.

/// A TLS upstream offering `h2`: answers `ok`. `freeze` stops it serving
/// the connections it already has (it keeps them open but reads and
/// answers nothing, PINGs included), as a dead path looks; later ones
/// are served.
struct H2Upstream {
    port: u16,
    ca: rustls::pki_types::CertificateDer<'static>,
    accepts: Arc<AtomicUsize>,
    /// Connections that ended.
    ended: Arc<AtomicUsize>,
    freeze: watch::Sender<bool>,
}

async fn h2_upstream() -> H2Upstream {
    let ca = private_ca(&[b"h2"]);
    let acceptor = tokio_rustls::TlsAcceptor::from(ca.server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (freeze, frozen) = watch::channel(false);
    let up = H2Upstream {
        port: listener.local_addr().unwrap().port(),
        ca: ca.der.clone(),
        accepts: Arc::default(),
        ended: Arc::default(),
        freeze,
    };
    let (accepts, ended) = (up.accepts.clone(), up.ended.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            accepts.fetch_add(1, SeqCst);
            let (acceptor, ended, mut frozen) = (acceptor.clone(), ended.clone(), frozen.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                        Bytes::from_static(b"ok"),
                    )))
                });
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                tokio::pin!(conn);
                if *frozen.borrow_and_update() {
                    // Accepted after the freeze: served.
                    let _ = conn.await;
                    ended.fetch_add(1, SeqCst);
                    return;
                }
                tokio::select! {
                    _ = &mut conn => {}
                    _ = async { frozen.wait_for(|f| *f).await.is_ok() } => {
                        // Holds the connection, never polls it again.
                        std::future::pending::<()>().await;
                    }
                }
                ended.fetch_add(1, SeqCst);
            });
        }
    });
    up
}

fn client(
    up: &H2Upstream,
    tune: impl FnOnce(&mut twilio_repair_proxy::config::Limits),
) -> UpstreamClient {
    let mut limits = Config::defaults().limits;
    tune(&mut limits);
    let tls = twilio_repair_proxy::forward::UpstreamTls::new(vec![up.ca.clone()]);
    twilio_repair_proxy::forward::build_client_with(&limits, &tls)
}

/// GET through `client`: the body, or why not (an answer is given 2 s).
async fn h2_get(client: &UpstreamClient, up: &H2Upstream) -> Result<String, String> {
    let req = Request::get(format!("https://127.0.0.1:{}/v1/x", up.port))
        .body(Body::empty())
        .unwrap();
    let resp = match tokio::time::timeout(Duration::from_secs(2), client.request(req)).await {
        Err(_) => return Err("no answer within 2 s".into()),
        Ok(Err(e)) => return Err(format!("{e:?}")),
        Ok(Ok(r)) => r,
    };
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
}

#[tokio::test]
async fn concurrent_requests_share_one_http2_connection() {
    let up = h2_upstream().await;
    let client = client(&up, |_| {});
    assert_eq!(h2_get(&client, &up).await.as_deref(), Ok("ok"));
    let answers = futures_util::future::join_all((0..10).map(|_| h2_get(&client, &up))).await;
    assert!(
        answers.iter().all(|a| a.as_deref() == Ok("ok")),
        "{answers:?}"
    );
    assert_eq!(up.accepts.load(SeqCst), 1);
}

#[tokio::test]
async fn a_silent_http2_connection_is_replaced() {
    let up = h2_upstream().await;
    let client = client(&up, |l| {
        l.http2_keepalive_interval_ms = 100;
        l.http2_keepalive_timeout_ms = 100;
    });
    assert_eq!(h2_get(&client, &up).await.as_deref(), Ok("ok"));
    up.freeze.send_replace(true);
    // Requests on the silent connection fail (or time out) until its
    // unanswered PING closes it; then one goes on a new connection.
    let until = Instant::now() + PATIENCE;
    let mut last = h2_get(&client, &up).await;
    while last.is_err() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        last = h2_get(&client, &up).await;
    }
    assert_eq!(
        last.as_deref(),
        Ok("ok"),
        "the silent connection was never replaced"
    );
    assert_eq!(up.accepts.load(SeqCst), 2);
}

#[tokio::test]
async fn an_unused_http2_connection_is_closed_after_the_idle_timeout() {
    let up = h2_upstream().await;
    let client = client(&up, |l| l.pool_idle_timeout_ms = 300);
    assert_eq!(h2_get(&client, &up).await.as_deref(), Ok("ok"));
    let until = Instant::now() + PATIENCE;
    while up.ended.load(SeqCst) == 0 {
        assert!(
            Instant::now() < until,
            "the idle HTTP/2 connection was never closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h2_get(&client, &up).await.as_deref(), Ok("ok"));
    assert_eq!(up.accepts.load(SeqCst), 2);
}

#[tokio::test]
async fn with_max_idle_zero_http2_is_not_pooled_either() {
    let up = h2_upstream().await;
    let client = client(&up, |l| l.pool_max_idle_per_host = 0);
    for _ in 0..3 {
        assert_eq!(h2_get(&client, &up).await.as_deref(), Ok("ok"));
    }
    assert_eq!(up.accepts.load(SeqCst), 3);
}
