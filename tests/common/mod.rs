//! Test harness shared by the integration tests: an in-process proxy on
//! 127.0.0.1 port 0, a recording upstream, a proxy as a child process.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use twilio_repair_proxy::config::Config;

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query exactly as on the request line.
    pub target: String,
    /// Headers in arrival order (names lower-cased by hyper).
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }
}

pub type Responder = Arc<dyn Fn(&Seen) -> Response<Full<Bytes>> + Send + Sync>;

/// A recording upstream built on hyper (HTTP/1.1).
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

pub async fn upstream(responder: Responder) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let seen = seen2.clone();
            let responder = responder.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    let responder = responder.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let s = Seen {
                            method: parts.method.to_string(),
                            target: parts
                                .uri
                                .path_and_query()
                                .map(|p| p.as_str().to_string())
                                .unwrap_or_default(),
                            headers: parts
                                .headers
                                .iter()
                                .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
                                .collect(),
                            body: body.to_vec(),
                        };
                        let resp = responder(&s);
                        seen.lock().unwrap().push(s);
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream { addr, seen }
}

/// A JSON response with Twilio's usual headers.
pub fn json(status: u16, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("twilio-request-id", "RQ0123456789abcdef0123456789abcdef")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// A proxy running in this process.
pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

/// A configuration for tests: fixed upstream, an SQLite journal in a fresh
/// temporary directory (leaked for the test's lifetime).
pub fn test_config(upstream: &str) -> Config {
    let mut c = Config::defaults();
    c.upstream = Some(upstream.to_string());
    let dir = tempfile::tempdir().unwrap().keep();
    c.store = format!("sqlite://{}/journal.db", dir.display());
    c
}

pub async fn start_proxy(config: Config) -> Proxy {
    let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = proxy.local_addr().unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        twilio_repair_proxy::run(
            twilio_repair_proxy::Listeners { proxy, admin },
            config,
            async move {
                let _ = rx.await;
            },
        )
        .await
        .expect("proxy run failed");
    });
    let p = Proxy {
        addr,
        admin: admin_addr,
        stop: Some(tx),
        task: Some(task),
    };
    wait_ready(&p.admin_url("/readyz")).await;
    p
}

/// Poll a URL until it answers 200 (start-up is asynchronous).
pub async fn wait_ready(url: &str) {
    let c = reqwest::Client::new();
    for _ in 0..200 {
        if let Ok(r) = c.get(url).send().await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{url} never became ready");
}

/// A free port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The built binary.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_twilio-repair-proxy")
}

/// Send raw bytes and read the whole answer (until the server closes or
/// `wait` passes without data).
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
