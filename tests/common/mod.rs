//! Test harness shared by the integration tests: an in-process proxy on
//! 127.0.0.1 port 0, a recording upstream, a proxy as a child process, and
//! the scene builder every repair test sets up its Twilio with
//! ([`scene::Scene`]). The emulator's test client (`Emu`, `start_emulator`,
//! `wait_ready`, ...) is the emulator crate's own, included from there.
#![allow(dead_code)]

#[path = "../../crates/twilio-emulator/tests/common/mod.rs"]
mod emulator_client;
pub use emulator_client::*;

mod scene;
pub use scene::*;

mod tls;
// Only the `it` binary makes TLS upstreams.
#[allow(unused_imports)]
pub use tls::*;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
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
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen2.clone();
            let responder = responder.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    let responder = responder.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
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

/// [`test_config`] with short repair backoffs (10 ms, at most 50 ms).
pub fn fast_config(upstream: &str) -> Config {
    let mut c = test_config(upstream);
    c.repair.retry_initial_backoff_ms = 10;
    c.repair.retry_max_backoff_ms = 50;
    c
}

pub async fn start_proxy(config: Config) -> Proxy {
    let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    start_proxy_on(proxy, config).await
}

/// Start a proxy on a listener the caller bound (to know its address first).
pub async fn start_proxy_on(proxy: TcpListener, config: Config) -> Proxy {
    let p = start_proxy_unready(proxy, config).await;
    wait_ready(&p.admin_url("/readyz")).await;
    p
}

/// Start a proxy without waiting for `/readyz` (it may stay unready): wait
/// for its admin listener to answer `/healthz` only.
pub async fn start_proxy_unready(proxy: TcpListener, config: Config) -> Proxy {
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
    wait_ready(&p.admin_url("/healthz")).await;
    p
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

/// A proxy in front of an emulator, and a client that talks to the proxy
/// with the emulator's credentials.
pub struct Stack {
    pub emu: Emu,
    pub proxy: Proxy,
    pub http: reqwest::Client,
}

impl Stack {
    /// Create a participant through the proxy: status, outcome header, JSON.
    pub async fn create(
        &self,
        is: Option<&str>,
        ch: &str,
        form: &[(&str, &str)],
    ) -> (u16, Option<String>, serde_json::Value) {
        let r = self
            .http
            .post(
                self.proxy
                    .url(&format!("{}/Conversations/{ch}/Participants", base(is))),
            )
            .basic_auth(ACCOUNT, Some(TOKEN))
            .header("x-twilio-webhook-enabled", "true")
            .form(form)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        let outcome = r
            .headers()
            .get("x-repair-outcome")
            .map(|v| v.to_str().unwrap().to_string());
        (
            s,
            outcome,
            r.json().await.unwrap_or(serde_json::Value::Null),
        )
    }
}

/// The proxy binary as a child process.
pub struct Running {
    pub store_dir: std::path::PathBuf,
    pub child: Child,
    pub addr: String,
    pub admin: String,
    stderr_path: std::path::PathBuf,
}

impl Running {
    /// Create `identity` as a participant of `built`'s target conversation
    /// through this proxy (the account's own credential); Twilio's answer.
    pub async fn create_in(&self, built: &Built, identity: &str) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!(
                "http://{}{}/Conversations/{}/Participants",
                self.addr,
                built.base,
                built.target()
            ))
            .basic_auth(ACCOUNT, Some(TOKEN))
            .form(&[("Identity", identity)])
            .send()
            .await
            .unwrap()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
    /// The log once it contains `needle` (the proxy writes its log in
    /// batches, a few milliseconds after the event), or as it is after 10 s.
    pub async fn log_with(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.stderr();
            if log.contains(needle) || std::time::Instant::now() > deadline {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn spawn_proxy(upstream: &str, extra_env: &[(&str, &str)]) -> Running {
    spawn_proxy_in(&tempfile::tempdir().unwrap().keep(), upstream, extra_env).await
}

/// Start the binary with its journal in `dir` (reuse `dir` to restart).
pub async fn spawn_proxy_in(
    dir: &std::path::Path,
    upstream: &str,
    extra_env: &[(&str, &str)],
) -> Running {
    let store = format!("sqlite://{}/journal.db", dir.display());
    spawn_proxy_with_store(dir, &store, upstream, extra_env).await
}

/// Start the binary on a given store (e.g. a shared PostgreSQL database);
/// `dir` holds its log.
pub async fn spawn_proxy_with_store(
    dir: &std::path::Path,
    store: &str,
    upstream: &str,
    extra_env: &[(&str, &str)],
) -> Running {
    spawn_binary(dir, store, Some(upstream), extra_env).await
}

/// Start the binary without `--upstream`: its upstream comes from its
/// configuration (`extra_env`, a `TRP_CONFIG` file), which a reload may
/// change. An SQLite journal in `dir`.
pub async fn spawn_proxy_configured(dir: &std::path::Path, extra_env: &[(&str, &str)]) -> Running {
    let store = format!("sqlite://{}/journal.db", dir.display());
    spawn_binary(dir, &store, None, extra_env).await
}

async fn spawn_binary(
    dir: &std::path::Path,
    store: &str,
    upstream: Option<&str>,
    extra_env: &[(&str, &str)],
) -> Running {
    let dir = dir.to_path_buf();
    // A port picked by `free_port` may be taken by another test before the
    // child binds it: such a start is retried on new ports.
    for _ in 0..5 {
        let port = free_port();
        let admin = free_port();
        let stderr_path = dir.join(format!("stderr-{port}.log"));
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{admin}"))
            .args(upstream.map(|u| ["--upstream", u]).into_iter().flatten())
            .arg("--store")
            .arg(store)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let mut r = Running {
            child,
            addr: format!("127.0.0.1:{port}"),
            admin: format!("127.0.0.1:{admin}"),
            stderr_path,
            store_dir: dir.clone(),
        };
        let url = format!("http://{}/readyz", r.admin);
        let c = reqwest::Client::new();
        // 20 s: a bound on "it never came up", generous for a loaded machine.
        for _ in 0..800 {
            if let Ok(resp) = c.get(&url).send().await {
                if resp.status() == 200 {
                    return r;
                }
            }
            if let Ok(Some(status)) = r.child.try_wait() {
                let err = r.stderr();
                if err.contains("cannot listen") {
                    break; // a port race: try new ports
                }
                panic!("the proxy exited ({status}) before it was ready:\n{err}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        if r.child.try_wait().ok().flatten().is_none() {
            panic!("{url} never became ready:\n{}", r.stderr());
        }
    }
    panic!("no free ports for the proxy after 5 attempts");
}

/// Which journal store a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

/// The throwaway PostgreSQL cluster `scripts/test.sh` starts.
pub fn pg_admin_url() -> String {
    std::env::var("TRP_TEST_PG_URL").unwrap_or_else(|_| {
        panic!("TRP_TEST_PG_URL is not set: run the suite with `bash scripts/test.sh`, which starts PostgreSQL")
    })
}

/// The suite's one policy for a missing PostgreSQL: the test fails, with
/// how to run it, and never returns early (a green run cannot hide a
/// skipped suite; CI always has PostgreSQL).
pub fn require_pg() {
    pg_admin_url();
    if std::env::var("TRP_TEST_PG_CTL").is_err() {
        panic!(
            "TRP_TEST_PG_CTL is not set: run the suite with `bash scripts/test.sh`, which starts PostgreSQL"
        );
    }
}

/// A fresh, empty database on the test cluster; its URL.
pub async fn fresh_pg_database() -> String {
    use sqlx::Connection;
    let admin = pg_admin_url();
    let name = format!("trp_{}", rand::random::<u64>());
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let base = admin.rsplit_once('/').unwrap().0;
    format!("{base}/{name}")
}

/// A store URL of the given kind, private to the calling test.
pub async fn store_url(kind: StoreKind) -> String {
    match kind {
        StoreKind::Sqlite => {
            let dir = tempfile::tempdir().unwrap().keep();
            format!("sqlite://{}/journal.db", dir.display())
        }
        StoreKind::Postgres => fresh_pg_database().await,
    }
}

/// Stop or start the test PostgreSQL cluster.
pub fn pg_ctl(action: &str) {
    let script = std::env::var("TRP_TEST_PG_CTL")
        .unwrap_or_else(|_| panic!("TRP_TEST_PG_CTL is not set: run `bash scripts/test.sh`"));
    let mut cmd = Command::new(script);
    cmd.arg(action);
    if action == "stop" {
        cmd.args(["-m", "fast"]);
    }
    let ok = cmd.stdout(Stdio::null()).status().unwrap().success();
    assert!(ok, "pg_ctl {action} failed");
}

/// GET a JSON document from an admin listener (`host:port`), e.g.
/// `/incidents` or `/repairs?state=pending`.
pub async fn admin_json(admin: impl std::fmt::Display, path: &str) -> serde_json::Value {
    reqwest::get(format!("http://{admin}{path}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The text of `/metrics` on an admin listener (`host:port`).
pub async fn metrics_text(admin: impl std::fmt::Display) -> String {
    reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one sample of a `/metrics` text: `series` is the name and
/// labels exactly as exposed (`trp_ready`, `trp_requests_total{...}`).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Poll `/metrics` until `series` reads `want` (bounded: 10 s, a bound on
/// "never", not a measurement), and return that text. For values set when
/// an answer's body ends or a connection changes state, which happens just
/// after the client has what it waited for.
pub async fn metric_becomes(admin: impl std::fmt::Display, series: &str, want: f64) -> String {
    let mut text = String::new();
    for _ in 0..400 {
        text = metrics_text(&admin).await;
        if sample(&text, series) == Some(want) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{series} never became {want}:\n{text}");
}

/// The friendly names of the services on the emulator's account (what a
/// selftest made and left, or not).
pub async fn service_names(emu: &Emu) -> Vec<String> {
    let (s, v) = emu.get("/v1/Services?PageSize=100").await;
    assert_eq!(s, 200, "{v}");
    v["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["friendly_name"].as_str().unwrap().to_string())
        .collect()
}
