//! The proxy as an operator runs it: the real binary as a child process.
//! Memory under a 100 MB stream, SIGTERM draining, logs free of secrets,
//! `check-config`.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// An upstream that drains request bodies (counting bytes) and can answer
/// with a large streamed body or slowly.
async fn sink_upstream() -> (String, Arc<AtomicU64>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let rec = received.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let rec = rec.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let rec = rec.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let mut body = req.into_body();
                        let mut n = 0u64;
                        while let Some(Ok(f)) = body.frame().await {
                            if let Some(d) = f.data_ref() {
                                n += d.len() as u64;
                            }
                        }
                        rec.fetch_add(n, Ordering::SeqCst);
                        if path == "/slow" {
                            tokio::time::sleep(Duration::from_millis(1500)).await;
                        }
                        let resp: Response<
                            http_body_util::combinators::BoxBody<Bytes, std::io::Error>,
                        > = if path == "/download" {
                            // 100 MiB in 64 KiB frames, generated lazily.
                            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                            let stream = futures_util::stream::iter((0..1600).map(move |_| {
                                Ok::<_, std::io::Error>(hyper::body::Frame::data(chunk.clone()))
                            }));
                            Response::new(http_body_util::StreamBody::new(stream).boxed())
                        } else {
                            Response::new(
                                Full::new(Bytes::from(format!("{{\"received\":{n}}}")))
                                    .map_err(|never| match never {})
                                    .boxed(),
                            )
                        };
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), received)
}

const HUNDRED_MIB: u64 = 100 * 1024 * 1024;
/// Ceiling on the proxy's peak resident memory while 100 MiB stream through
/// each way: far below the body size, so the body cannot have been buffered.
const RSS_CEILING_KIB: u64 = 48 * 1024;

#[tokio::test]
async fn hundred_megabytes_stream_both_ways_with_flat_memory() {
    let (up, received) = sink_upstream().await;
    let proxy = spawn_proxy(&up, &[]).await;
    let client = reqwest::Client::new();

    let chunk = Bytes::from(vec![b'u'; 64 * 1024]);
    let chunks = (0..1600).map(move |_| Ok::<_, std::io::Error>(chunk.clone()));
    let resp = client
        .post(format!("http://{}/v1/Services/IS0/Media", proxy.addr))
        .header("content-length", HUNDRED_MIB.to_string())
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.text().await.unwrap(),
        format!("{{\"received\":{HUNDRED_MIB}}}")
    );
    assert_eq!(received.load(Ordering::SeqCst), HUNDRED_MIB);

    let mut resp = client
        .get(format!("http://{}/download", proxy.addr))
        .send()
        .await
        .unwrap();
    let mut got = 0u64;
    while let Some(c) = resp.chunk().await.unwrap() {
        got += c.len() as u64;
    }
    assert_eq!(got, HUNDRED_MIB);
    let peak = proxy.peak_rss_kib();
    assert!(peak < RSS_CEILING_KIB, "peak RSS {peak} KiB");
}

#[tokio::test]
async fn sigterm_drains_in_flight_request_and_exits_zero() {
    let (up, _) = sink_upstream().await;
    let mut proxy = spawn_proxy(&up, &[]).await;
    let url = format!("http://{}/slow", proxy.addr);
    let slow = tokio::spawn(async move { reqwest::Client::new().get(url).send().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Draining: not ready any more, no new connections.
    let ready = reqwest::Client::new()
        .get(format!("http://{}/readyz", proxy.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert!(tokio::net::TcpStream::connect(&proxy.addr).await.is_err());
    let resp = slow.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let status = tokio::task::spawn_blocking(move || proxy.child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn secrets_and_bodies_never_reach_the_logs() {
    let (up, _) = sink_upstream().await;
    let proxy = spawn_proxy(
        &up,
        &[("TRP_LOG_LEVEL", "trace"), ("TRP_LOG_FORMAT", "json")],
    )
    .await;
    let token = "Zm9vLXN1cGVyLXNlY3JldC10b2tlbg";
    let client = reqwest::Client::new();
    for path in ["/v1/Conversations", "/slow"] {
        let r = client
            .post(format!("http://{}{path}?PageSize=5", proxy.addr))
            .header("authorization", format!("Basic {token}"))
            .body("Identity=body-marker-7731&Attributes=%7B%7D")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // An error path too: an unreachable upstream.
    let dead = spawn_proxy(
        &format!("http://127.0.0.1:{}", free_port()),
        &[("TRP_LOG_LEVEL", "trace"), ("TRP_LOG_FORMAT", "json")],
    )
    .await;
    let r = client
        .post(format!("http://{}/v1/Conversations", dead.addr))
        .header("authorization", format!("Basic {token}"))
        .body("Identity=body-marker-7731")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for log in [proxy.stderr(), dead.stderr()] {
        assert!(
            log.contains("\"status\":200") || log.contains("\"status\":502"),
            "access log missing: {log}"
        );
        assert!(!log.contains(token), "token leaked");
        assert!(!log.contains("body-marker-7731"), "body leaked");
        assert!(
            !log.to_ascii_lowercase().contains("authorization"),
            "auth header named in logs"
        );
    }
    assert!(proxy.stderr().contains("\"path\":\"/v1/Conversations\""));
}

#[test]
fn check_config_prints_masked_config_and_names_bad_keys() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "store = \"postgres://trp:hunter2@db:5432/trp\"\n").unwrap();
    let out = Command::new(bin())
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("postgres://trp:****@db:5432/trp"), "{text}");
    assert!(!text.contains("hunter2"));
    assert!(text.contains("connect_timeout_ms"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[limits]\nconect_timeout_ms = 3\n").unwrap();
    let out = Command::new(bin())
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("limits.conect_timeout_ms"), "{err}");

    let out = Command::new(bin())
        .arg("check-config")
        .env("TRP_LIMITS_IDLE_TIMEOUT_MS", "-5")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("limits.idle_timeout_ms"));
}

/// A minimal HTTP `CONNECT` proxy that records the targets it tunnels to.
async fn connect_proxy() -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = l.accept().await {
            let seen = seen2.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
                assert!(head.starts_with("CONNECT "), "{head}");
                seen.lock().unwrap().push(target.clone());
                let Ok(mut upstream) = tokio::net::TcpStream::connect(&target).await else {
                    return;
                };
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (format!("http://{addr}"), seen)
}

#[tokio::test]
async fn egress_honours_http_proxy_and_no_proxy() {
    let (up, received) = sink_upstream().await;
    let up_authority = up.trim_start_matches("http://").to_string();
    let (egress, tunnels) = connect_proxy().await;
    let via_proxy = spawn_proxy(
        &up,
        &[
            ("HTTP_PROXY", egress.as_str()),
            ("HTTPS_PROXY", egress.as_str()),
            ("NO_PROXY", ""),
            ("no_proxy", ""),
        ],
    )
    .await;
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/Conversations", via_proxy.addr))
        .body("FriendlyName=x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "{\"received\":14}");
    assert_eq!(*tunnels.lock().unwrap(), vec![up_authority.clone()]);
    assert!(via_proxy.stderr().contains("egress through an HTTP proxy"));

    // NO_PROXY bypasses the egress proxy.
    let direct = spawn_proxy(
        &up,
        &[
            ("HTTP_PROXY", egress.as_str()),
            ("NO_PROXY", "127.0.0.1"),
            ("no_proxy", "127.0.0.1"),
        ],
    )
    .await;
    let r = reqwest::Client::new()
        .get(format!("http://{}/v1/Conversations", direct.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        tunnels.lock().unwrap().len(),
        1,
        "NO_PROXY must bypass the egress proxy"
    );
    assert_eq!(received.load(Ordering::SeqCst), 14);
}
