//! Hostile and unlucky clients and upstreams (issue 10): connection slots
//! and timeouts on both listeners, client faults answered as client errors,
//! framing and request-target refusals. Real sockets on 127.0.0.1; every
//! timeout is configured short and every wall-clock assertion is a generous
//! "it did not hang" bound.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use twilio_repair_proxy::config::Config;

/// How many sockets each lock-out test holds: the configured limit.
const SLOTS: usize = 8;
/// Upper bound on "the ninth client got through" (the timeouts are 300 ms).
const NINTH_CLIENT_BOUND: Duration = Duration::from_secs(10);
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty HTTP/2 SETTINGS frame (length 0, type 4, no flags, stream 0).
const EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

fn echo_ok() -> Responder {
    Arc::new(|_s: &Seen| json(200, r#"{"ok":true}"#))
}

/// Eight connection slots on each listener and short connection timeouts.
fn tight(c: &mut Config) {
    c.limits.max_connections = SLOTS;
    c.admin.max_connections = SLOTS;
    c.limits.header_read_timeout_ms = 300;
    c.limits.keepalive_timeout_ms = 300;
    c.limits.idle_timeout_ms = 300;
    c.limits.http2_keepalive_interval_ms = 200;
    c.limits.http2_keepalive_timeout_ms = 200;
}

async fn tight_proxy(upstream: &str) -> Proxy {
    let mut c = test_config(upstream);
    tight(&mut c);
    start_proxy(c).await
}

/// What a slot-holding socket does after connecting.
#[derive(Debug, Clone, Copy)]
enum Hog {
    /// Sends nothing at all.
    Silent,
    /// Sends the first half of the HTTP/2 connection preface.
    PartialPreface,
    /// Completes the HTTP/2 preface and SETTINGS, opens no stream.
    IdleHttp2,
    /// Sends a request head announcing 100 body bytes, then 10 of them.
    StalledBody,
    /// The same on a Participant create (the body the repair buffers).
    StalledCreate,
    /// Completes one HTTP/1.1 request and keeps the connection open.
    IdleKeepAlive,
}

/// Open one `kind` socket to `addr`; `path` is what an idle keep-alive
/// socket requests first (it must answer 200).
async fn hog(addr: SocketAddr, kind: Hog, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    match kind {
        Hog::Silent => {}
        Hog::PartialPreface => s.write_all(&PREFACE[..12]).await.unwrap(),
        Hog::IdleHttp2 => {
            s.write_all(PREFACE).await.unwrap();
            s.write_all(EMPTY_SETTINGS).await.unwrap();
        }
        Hog::StalledBody => s
            .write_all(
                b"POST /v1/Conversations HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nFriendlyNa",
            )
            .await
            .unwrap(),
        Hog::StalledCreate => s
            .write_all(
                b"POST /v1/Services/IS0123456789abcdef0123456789abcdef/Conversations/CH0123456789abcdef0123456789abcdef/Participants HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nIdentity=a",
            )
            .await
            .unwrap(),
        Hog::IdleKeepAlive => {
            let head = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
            s.write_all(head.as_bytes()).await.unwrap();
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        }
    }
    s
}

/// Hold every slot of `addr` with `kind` sockets, then check that a ninth
/// client gets `url` answered 200 within the bound.
async fn ninth_client_gets_through(addr: SocketAddr, url: &str, kind: Hog) {
    let mut held = Vec::new();
    for _ in 0..SLOTS {
        let path = url.split_once(&addr.to_string()).unwrap().1;
        held.push(hog(addr, kind, path).await);
    }
    let client = reqwest::Client::builder()
        .timeout(NINTH_CLIENT_BOUND)
        .build()
        .unwrap();
    let r = client.get(url).send().await;
    match r {
        Ok(r) => assert_eq!(r.status(), 200, "{kind:?}: {url}"),
        Err(e) => panic!("{kind:?}: the ninth client was locked out of {url}: {e}"),
    }
    drop(held);
}

#[tokio::test]
async fn silent_sockets_do_not_lock_out_a_ninth_client() {
    let up = upstream(echo_ok()).await;
    let proxy = tight_proxy(&up.url()).await;
    ninth_client_gets_through(proxy.addr, &proxy.url("/v1/Conversations"), Hog::Silent).await;
    proxy.stop().await;
}

#[tokio::test]
async fn partial_http2_prefaces_do_not_lock_out_a_ninth_client() {
    let up = upstream(echo_ok()).await;
    let proxy = tight_proxy(&up.url()).await;
    let url = proxy.url("/v1/Conversations");
    ninth_client_gets_through(proxy.addr, &url, Hog::PartialPreface).await;
    proxy.stop().await;
}

#[tokio::test]
async fn idle_http2_connections_do_not_lock_out_a_ninth_client() {
    let up = upstream(echo_ok()).await;
    let proxy = tight_proxy(&up.url()).await;
    let url = proxy.url("/v1/Conversations");
    ninth_client_gets_through(proxy.addr, &url, Hog::IdleHttp2).await;
    proxy.stop().await;
}

#[tokio::test]
async fn stalled_request_bodies_do_not_lock_out_a_ninth_client() {
    let up = upstream(echo_ok()).await;
    let proxy = tight_proxy(&up.url()).await;
    let url = proxy.url("/v1/Conversations");
    ninth_client_gets_through(proxy.addr, &url, Hog::StalledBody).await;
    proxy.stop().await;
}

#[tokio::test]
async fn stalled_create_bodies_do_not_lock_out_a_ninth_client() {
    let up = upstream(echo_ok()).await;
    let proxy = tight_proxy(&up.url()).await;
    let url = proxy.url("/v1/Conversations");
    ninth_client_gets_through(proxy.addr, &url, Hog::StalledCreate).await;
    let mut s = hog(proxy.addr, Hog::StalledCreate, "").await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let answer = String::from_utf8_lossy(&out).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request-body-timeout"), "{answer}");
    proxy.stop().await;
}

#[tokio::test]
async fn idle_keepalive_connections_do_not_lock_out_a_ninth_client() {
    let up = upstream(echo_ok()).await;
    let proxy = tight_proxy(&up.url()).await;
    let url = proxy.url("/v1/Conversations");
    ninth_client_gets_through(proxy.addr, &url, Hog::IdleKeepAlive).await;
    proxy.stop().await;
}

#[tokio::test]
async fn admin_listener_is_not_locked_out_by_idle_sockets() {
    let up = upstream(echo_ok()).await;
    let proxy = tight_proxy(&up.url()).await;
    let healthz = proxy.admin_url("/healthz");
    for kind in [
        Hog::Silent,
        Hog::PartialPreface,
        Hog::IdleHttp2,
        Hog::IdleKeepAlive,
    ] {
        ninth_client_gets_through(proxy.admin, &healthz, kind).await;
    }
    proxy.stop().await;
}

#[tokio::test]
async fn admin_connection_limit_is_its_own_setting() {
    // The admin listener used to share a fixed limit of 64 connections:
    // with admin.max_connections = 100, 70 open sockets leave room for a probe
    // at once, whatever the timeouts.
    let up = upstream(echo_ok()).await;
    let mut c = test_config(&up.url());
    c.admin.max_connections = 100;
    let proxy = start_proxy(c).await;
    let mut held = Vec::new();
    for _ in 0..70 {
        held.push(TcpStream::connect(proxy.admin).await.unwrap());
    }
    let r = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .get(proxy.admin_url("/healthz"))
        .send()
        .await
        .expect("a probe must get a slot below admin.max_connections");
    assert_eq!(r.status(), 200);
    drop(held);
    proxy.stop().await;
}

/// Read until the peer closes; `true` when it closed within `bound`.
async fn closed_within(s: &mut TcpStream, bound: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn idle_sockets_are_closed_after_the_configured_timeouts_on_both_listeners() {
    // Without any competing client (no slot pressure), each kind of idle
    // socket is closed by header_read_timeout or keepalive_timeout alone.
    let up = upstream(echo_ok()).await;
    let proxy = tight_proxy(&up.url()).await;
    for (addr, path) in [(proxy.addr, "/v1/Conversations"), (proxy.admin, "/healthz")] {
        for kind in [
            Hog::Silent,
            Hog::PartialPreface,
            Hog::IdleHttp2,
            Hog::IdleKeepAlive,
        ] {
            let mut s = hog(addr, kind, path).await;
            assert!(
                closed_within(&mut s, Duration::from_secs(10)).await,
                "{kind:?} on {addr} ({path}) was never closed"
            );
        }
    }
    proxy.stop().await;
}

#[tokio::test]
async fn idle_keepalive_connection_closes_after_keepalive_timeout() {
    // keepalive_timeout, not the (long) header_read_timeout, bounds an idle
    // HTTP/1.1 keep-alive connection.
    let up = upstream(echo_ok()).await;
    let mut c = test_config(&up.url());
    c.limits.header_read_timeout_ms = 60_000;
    c.limits.keepalive_timeout_ms = 300;
    let proxy = start_proxy(c).await;
    let mut s = hog(proxy.addr, Hog::IdleKeepAlive, "/v1/Conversations").await;
    assert!(
        closed_within(&mut s, Duration::from_secs(10)).await,
        "an idle keep-alive connection was kept past keepalive_timeout"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn idle_http2_connection_after_a_request_closes_after_keepalive_timeout() {
    let up = upstream(echo_ok()).await;
    let mut c = test_config(&up.url());
    c.limits.keepalive_timeout_ms = 300;
    let proxy = start_proxy(c).await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = hyper::Request::get(format!("http://{}/v1/Conversations", proxy.addr))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp);
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(
        ended.is_ok(),
        "an HTTP/2 connection without streams was kept past keepalive_timeout"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_slow_head_is_closed_after_header_read_timeout() {
    // A keep-alive connection that starts its next request head and never
    // finishes it is closed after header_read_timeout, not keepalive_timeout.
    let up = upstream(echo_ok()).await;
    let mut c = test_config(&up.url());
    c.limits.header_read_timeout_ms = 300;
    c.limits.keepalive_timeout_ms = 60_000;
    let proxy = start_proxy(c).await;
    let mut s = hog(proxy.addr, Hog::IdleKeepAlive, "/v1/Conversations").await;
    s.write_all(b"GET /v1/Conversations HTTP/1.1\r\nHost: loc")
        .await
        .unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(10)).await,
        "a partial request head was kept past header_read_timeout"
    );
    proxy.stop().await;
}

async fn metrics(proxy: &Proxy) -> String {
    reqwest::get(proxy.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn assert_no_upstream_errors(m: &str) {
    for kind in ["connect", "timeout", "other"] {
        assert!(
            m.contains(&format!("trp_upstream_errors_total{{kind=\"{kind}\"}} 0")),
            "a client fault was counted as an upstream error: {m}"
        );
    }
}

/// The JSON body of a raw HTTP/1.1 answer.
fn body_json(answer: &str) -> serde_json::Value {
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {answer}"))
}

#[tokio::test]
async fn invalid_chunk_size_is_a_client_error() {
    let up = upstream(echo_ok()).await;
    let proxy = start_proxy(test_config(&up.url())).await;
    let answer = raw_exchange(
        proxy.addr,
        b"POST /v1/Conversations HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("request-body-unreadable"), "{answer}");
    assert_eq!(body_json(&answer)["status"], 400);
    let m = metrics(&proxy).await;
    assert_no_upstream_errors(&m);
    assert!(
        m.contains(r#"trp_requests_total{route="conversations",method="POST",code="400"} 1"#),
        "{m}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn stalled_client_body_is_answered_408() {
    let up = upstream(echo_ok()).await;
    let mut c = test_config(&up.url());
    c.limits.idle_timeout_ms = 300;
    let proxy = start_proxy(c).await;
    let mut s = hog(proxy.addr, Hog::StalledBody, "").await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let answer = String::from_utf8_lossy(&out).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request-body-timeout"), "{answer}");
    assert_eq!(body_json(&answer)["status"], 408);
    assert_no_upstream_errors(&metrics(&proxy).await);
    proxy.stop().await;
}

#[tokio::test]
async fn an_upload_slower_than_the_response_header_timeout_is_not_a_504() {
    let up = upstream(echo_ok()).await;
    let mut c = test_config(&up.url());
    c.limits.response_header_timeout_ms = 300;
    let proxy = start_proxy(c).await;
    // Ten chunks 100 ms apart: the upload takes about a second.
    let chunks = futures_util::stream::unfold(0u32, |i| async move {
        if i == 10 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((
            Ok::<_, std::io::Error>(Bytes::from(format!("part-{i};"))),
            i + 1,
        ))
    });
    let resp = reqwest::Client::new()
        .post(proxy.url("/v1/Conversations"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let expected: String = (0..10).map(|i| format!("part-{i};")).collect();
    assert_eq!(String::from_utf8_lossy(&up.requests()[0].body), expected);
    proxy.stop().await;
}

#[tokio::test]
async fn an_upstream_that_never_reads_the_body_still_times_out() {
    // The response-header timer starts once the body is sent; an upstream
    // that stops reading it must not hold the request forever either.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    let mut c = test_config(&format!("http://{addr}"));
    c.limits.response_header_timeout_ms = 300;
    // The upstream connection stays stuck behind unread bytes (hyper flushes
    // before closing it): do not wait the default 30 s for it at stop.
    c.limits.shutdown_grace_ms = 500;
    let proxy = start_proxy(c).await;
    // 32 MiB announced and sent while the answer is read: far more than
    // the socket buffers between the proxy and the upstream hold.
    let (mut rd, mut wr) = TcpStream::connect(proxy.addr).await.unwrap().into_split();
    let writer = tokio::spawn(async move {
        wr.write_all(
            b"POST /v1/Conversations HTTP/1.1\r\nHost: localhost\r\nContent-Length: 33554432\r\n\r\n",
        )
        .await
        .unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..512 {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), rd.read(&mut buf))
            .await
            .expect("the proxy must answer while the upload is stuck")
            .unwrap();
        assert!(n > 0, "closed without an answer");
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    assert!(head.contains("upstream-timeout"), "{head}");
    writer.abort();
    proxy.stop().await;
}

#[tokio::test]
async fn transfer_codings_other_than_chunked_are_501() {
    let up = upstream(echo_ok()).await;
    let proxy = start_proxy(test_config(&up.url())).await;
    for te in ["gzip, chunked", "deflate,chunked", "x-custom, chunked"] {
        let req = format!(
            "POST /v1/Conversations HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nTransfer-Encoding: {te}\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        );
        let answer = raw_exchange(proxy.addr, req.as_bytes(), Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 501"), "{te}: {answer}");
        assert!(answer.contains("transfer-coding-unsupported"), "{answer}");
        assert_eq!(body_json(&answer)["status"], 501);
    }
    assert!(up.requests().is_empty(), "a gzip-coded body was forwarded");
    proxy.stop().await;
}

#[tokio::test]
async fn an_unsolicited_101_from_upstream_is_502() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                    .await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            });
        }
    });
    let proxy = start_proxy(test_config(&format!("http://{addr}"))).await;
    let answer = raw_exchange(
        proxy.addr,
        b"GET /v1/Conversations HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert!(answer.contains("upstream-failed"), "{answer}");
    assert_eq!(body_json(&answer)["status"], 502);
    proxy.stop().await;
}

#[tokio::test]
async fn host_must_appear_exactly_once_in_http11() {
    let up = upstream(echo_ok()).await;
    let proxy = start_proxy(test_config(&up.url())).await;
    let wait = Duration::from_secs(5);
    let none = raw_exchange(
        proxy.addr,
        b"GET /v1/Conversations HTTP/1.1\r\nConnection: close\r\n\r\n",
        wait,
    )
    .await;
    assert!(none.starts_with("HTTP/1.1 400"), "{none}");
    assert!(none.contains("missing-host"), "{none}");
    let two = raw_exchange(
        proxy.addr,
        b"GET /v1/Conversations HTTP/1.1\r\nHost: localhost\r\nHost: conversations.twilio.com\r\nConnection: close\r\n\r\n",
        wait,
    )
    .await;
    assert!(two.starts_with("HTTP/1.1 400"), "{two}");
    assert!(two.contains("duplicate-host"), "{two}");
    assert_eq!(body_json(&two)["status"], 400);
    assert!(up.requests().is_empty());
    // HTTP/1.0 has no Host requirement.
    let old = raw_exchange(proxy.addr, b"GET /v1/Conversations HTTP/1.0\r\n\r\n", wait).await;
    assert!(old.starts_with("HTTP/1.0 200"), "{old}");
    proxy.stop().await;
}

#[tokio::test]
async fn asterisk_form_trace_and_max_forwards_are_answered_locally() {
    let up = upstream(echo_ok()).await;
    let proxy = start_proxy(test_config(&up.url())).await;
    let wait = Duration::from_secs(5);
    let star = raw_exchange(
        proxy.addr,
        b"GET * HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        wait,
    )
    .await;
    assert!(star.starts_with("HTTP/1.1 400"), "{star}");
    assert!(star.contains("asterisk-form-refused"), "{star}");

    let trace = raw_exchange(
        proxy.addr,
        b"TRACE /v1/Conversations HTTP/1.1\r\nHost: localhost\r\nCookie: c=secret\r\nAuthorization: Basic QUMxOnRva2Vu\r\nConnection: close\r\n\r\n",
        wait,
    )
    .await;
    assert!(trace.starts_with("HTTP/1.1 405"), "{trace}");
    assert!(trace.contains("trace-refused"), "{trace}");
    assert!(!trace.contains("QUMxOnRva2Vu") && !trace.contains("secret"));

    for target in ["/v1/Conversations", "*"] {
        let req = format!(
            "OPTIONS {target} HTTP/1.1\r\nHost: localhost\r\nMax-Forwards: 0\r\nAuthorization: Basic QUMxOnRva2Vu\r\nConnection: close\r\n\r\n"
        );
        let opts = raw_exchange(proxy.addr, req.as_bytes(), wait).await;
        assert!(opts.starts_with("HTTP/1.1 200"), "{target}: {opts}");
        let lower = opts.to_ascii_lowercase();
        assert!(lower.contains("\r\nallow: "), "{opts}");
        assert!(!opts.contains("QUMxOnRva2Vu"));
    }
    assert!(
        up.requests().is_empty(),
        "a request that must be answered locally was forwarded: {:?}",
        up.requests()
    );
    // Routing refusals still come first.
    let foreign = raw_exchange(
        proxy.addr,
        b"OPTIONS * HTTP/1.1\r\nHost: evil.example.com\r\nMax-Forwards: 0\r\nConnection: close\r\n\r\n",
        wait,
    )
    .await;
    assert!(foreign.starts_with("HTTP/1.1 421"), "{foreign}");
    // OPTIONS without Max-Forwards: 0 is an ordinary request.
    let fwd = raw_exchange(
        proxy.addr,
        b"OPTIONS /v1/Conversations HTTP/1.1\r\nHost: localhost\r\nMax-Forwards: 3\r\nConnection: close\r\n\r\n",
        wait,
    )
    .await;
    assert!(fwd.starts_with("HTTP/1.1 200"), "{fwd}");
    assert_eq!(up.requests().len(), 1);
    assert_eq!(up.requests()[0].method, "OPTIONS");
    // RFC 9110 §7.6.2: an intermediary decrements Max-Forwards.
    assert_eq!(up.requests()[0].header_values("max-forwards"), vec!["2"]);
    proxy.stop().await;
}

#[tokio::test]
async fn a_waiting_client_makes_idle_sockets_give_up_their_slots() {
    // With the default (long) timeouts, idle sockets holding every slot are
    // closed as soon as a new client waits: probes have headroom on the
    // admin listener, new clients on the proxy listener.
    let up = upstream(echo_ok()).await;
    let mut c = test_config(&up.url());
    c.limits.max_connections = SLOTS;
    c.admin.max_connections = SLOTS;
    let proxy = start_proxy(c).await;
    let bound = Duration::from_secs(5);
    for (addr, path) in [(proxy.addr, "/v1/Conversations"), (proxy.admin, "/healthz")] {
        for kind in [
            Hog::Silent,
            Hog::PartialPreface,
            Hog::IdleHttp2,
            Hog::IdleKeepAlive,
        ] {
            let mut held = Vec::new();
            for _ in 0..SLOTS {
                held.push(hog(addr, kind, path).await);
            }
            let r = reqwest::Client::builder()
                .timeout(bound)
                .build()
                .unwrap()
                .get(format!("http://{addr}{path}"))
                .send()
                .await;
            match r {
                Ok(r) => assert_eq!(r.status(), 200),
                Err(e) => panic!("{kind:?} sockets kept a client out of {addr}{path}: {e}"),
            }
        }
    }
    proxy.stop().await;
}

#[tokio::test]
async fn requests_in_flight_are_never_evicted() {
    // Eight slow requests hold every slot: a ninth client waits for one of
    // them to finish instead of cutting it.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        if req.uri().path() == "/slow" {
                            tokio::time::sleep(Duration::from_millis(1500)).await;
                        }
                        Ok::<_, std::convert::Infallible>(json(200, r#"{"ok":true}"#))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                .await;
            });
        }
    });
    let mut c = test_config(&format!("http://{addr}"));
    c.limits.max_connections = SLOTS;
    let proxy = start_proxy(c).await;
    let slow: Vec<_> = (0..SLOTS)
        .map(|_| {
            let url = proxy.url("/slow");
            tokio::spawn(async move {
                // One connection each.
                reqwest::Client::new()
                    .get(url)
                    .send()
                    .await
                    .map(|r| r.status())
            })
        })
        .collect();
    // Every slot is held by a request in flight.
    metric_becomes(proxy.admin, "trp_in_flight_requests", SLOTS as f64).await;
    let ninth = reqwest::Client::builder()
        .timeout(NINTH_CLIENT_BOUND)
        .build()
        .unwrap()
        .get(proxy.url("/v1/Conversations"))
        .send()
        .await
        .expect("the ninth client must get the first freed slot");
    assert_eq!(ninth.status(), 200);
    for s in slow {
        assert_eq!(s.await.unwrap().expect("an in-flight request was cut"), 200);
    }
    proxy.stop().await;
}
