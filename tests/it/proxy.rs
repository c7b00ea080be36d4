//! The transparent proxy core, over real sockets on 127.0.0.1: what the
//! upstream receives, what the client gets back, and how failures look.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;

fn echo_ok() -> Responder {
    Arc::new(|_s: &Seen| json(200, r#"{"ok":true}"#))
}

#[tokio::test]
async fn method_path_raw_query_headers_and_body_pass_unchanged() {
    let up = upstream(echo_ok()).await;
    let proxy = start_proxy(test_config(&up.url())).await;
    let client = reqwest::Client::new();

    let target = "/v1/Services/IS0123456789abcdef0123456789abcdef/Conversations?PageSize=2&Friendly%20Name=a+b%2Fc&x=%7E~&empty=&dup=1&dup=2";
    let binary: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let resp = client
        .patch(proxy.url(target))
        .header("authorization", "Basic QUMxMjM6dG9rZW4=")
        .header("x-twilio-webhook-enabled", "true")
        .header("x-multi", "first")
        .header("x-multi", "second")
        .header("x-multi", "third")
        .header("content-type", "application/octet-stream")
        .body(binary.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["twilio-request-id"],
        "RQ0123456789abcdef0123456789abcdef"
    );
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.method, "PATCH");
    assert_eq!(s.target, target);
    assert_eq!(s.body, binary);
    assert_eq!(
        s.header_values("authorization"),
        vec!["Basic QUMxMjM6dG9rZW4="]
    );
    assert_eq!(s.header_values("x-twilio-webhook-enabled"), vec!["true"]);
    assert_eq!(s.header_values("x-multi"), vec!["first", "second", "third"]);
    assert_eq!(s.header_values("host"), vec![up.addr.to_string()]);
    // Nothing added on the way.
    for added in ["x-forwarded-for", "x-forwarded-proto", "via", "forwarded"] {
        assert!(s.header_values(added).is_empty(), "{added} was added");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn chunked_request_body_streams_through() {
    let up = upstream(echo_ok()).await;
    let proxy = start_proxy(test_config(&up.url())).await;
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..50)
        .map(|i| Ok(Bytes::from(format!("chunk-{i};"))))
        .collect();
    let expected: String = (0..50).map(|i| format!("chunk-{i};")).collect();
    let resp = reqwest::Client::new()
        .post(proxy.url("/v1/Conversations"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let s = &up.requests()[0];
    assert_eq!(String::from_utf8_lossy(&s.body), expected);
    assert!(
        s.header_values("content-length").is_empty()
            || s.header_values("content-length") == vec![expected.len().to_string()]
    );
    proxy.stop().await;
}

#[tokio::test]
async fn status_codes_and_their_headers_pass_unchanged() {
    let up = upstream(Arc::new(|s: &Seen| {
        let code: u16 = s.target.trim_start_matches("/status/").parse().unwrap();
        let mut b = Response::builder().status(code);
        if code == 429 {
            b = b.header("retry-after", "7");
        }
        if code == 304 || code == 204 {
            return b
                .header("etag", "\"v1\"")
                .body(Full::new(Bytes::new()))
                .unwrap();
        }
        b.header("content-type", "application/json")
            .body(Full::new(Bytes::from(format!(
                r#"{{"code":{},"message":"m","more_info":"x","status":{code}}}"#,
                20000 + code as u32
            ))))
            .unwrap()
    }))
    .await;
    let proxy = start_proxy(test_config(&up.url())).await;
    let client = reqwest::Client::new();
    for code in [200u16, 201, 204, 304, 400, 401, 404, 409, 429, 500] {
        let resp = client
            .get(proxy.url(&format!("/status/{code}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), code);
        assert!(resp.headers().get("x-repair-proxy-error").is_none());
        if code == 429 {
            assert_eq!(resp.headers()["retry-after"], "7");
        }
        let body = resp.text().await.unwrap();
        if code == 204 || code == 304 {
            assert!(body.is_empty());
        } else {
            assert!(
                body.contains(&format!("\"status\":{code}")),
                "{code}: {body}"
            );
        }
    }
    proxy.stop().await;
}

/// A raw upstream that answers every request with fixed bytes.
async fn raw_upstream(
    response: &'static [u8],
) -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<u8>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let got2 = got.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let got = got2.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                got.lock().unwrap().extend_from_slice(&head);
                let _ = s.write_all(response).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, got)
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let (addr, got) = raw_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: keep-alive, X-Resp-Hop\r\nKeep-Alive: timeout=5\r\nX-Resp-Hop: secret\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\nTrailer: X-T\r\nX-End-To-End: kept\r\nContent-Length: 2\r\n\r\n{}",
    )
    .await;
    let proxy = start_proxy(test_config(&format!("http://{addr}"))).await;
    let req = format!(
        "GET /v1/Users HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: X-Req-Hop, close\r\nX-Req-Hop: secret\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nUpgrade: websocket\r\nX-Keep: yes\r\n\r\n",
        proxy.addr.port()
    );
    let answer = raw_exchange(proxy.addr, req.as_bytes(), Duration::from_secs(2)).await;
    let lower = answer.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 200"), "{answer}");
    assert!(lower.contains("x-end-to-end: kept"));
    for hop in [
        "x-resp-hop",
        "keep-alive:",
        "proxy-connection",
        "upgrade",
        "trailer",
    ] {
        assert!(!lower.contains(hop), "response kept {hop}: {answer}");
    }
    let sent = String::from_utf8_lossy(&got.lock().unwrap()).to_ascii_lowercase();
    assert!(sent.contains("x-keep: yes"), "{sent}");
    for hop in [
        "x-req-hop",
        "keep-alive:",
        "proxy-connection",
        "te:",
        "upgrade",
    ] {
        assert!(!sent.contains(hop), "request kept {hop}: {sent}");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn refused_connection_answers_502_in_twilio_shape() {
    let port = free_port();
    let proxy = start_proxy(test_config(&format!("http://127.0.0.1:{port}"))).await;
    let resp = reqwest::Client::new()
        .post(proxy.url("/v1/Conversations"))
        .header("authorization", "Basic c2VjcmV0LXRva2Vu")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(
        resp.headers()["x-repair-proxy-error"],
        "upstream-unreachable"
    );
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v: serde_json::Value = resp.json().await.unwrap();
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys, vec!["code", "message", "more_info", "status"]);
    assert_eq!(v["status"], 502);
    let msg = v["message"].as_str().unwrap();
    assert!(msg.contains("could not reach Twilio"), "{msg}");
    assert!(
        !msg.contains("os error"),
        "internal error text leaked: {msg}"
    );
    assert!(!msg.contains("c2VjcmV0"));
    proxy.stop().await;
}

#[tokio::test]
async fn stalled_upstream_answers_504() {
    // Accepts connections, reads, never answers.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    let mut config = test_config(&format!("http://{addr}"));
    config.limits.response_header_timeout_ms = 300;
    let proxy = start_proxy(config).await;
    let resp = reqwest::Client::new()
        .get(proxy.url("/v1/Conversations"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
    assert_eq!(resp.headers()["x-repair-proxy-error"], "upstream-timeout");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["status"], 504);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("no response within 300 ms")
    );
    proxy.stop().await;
}

#[tokio::test]
async fn ssrf_attempts_are_refused_before_any_upstream_is_contacted() {
    let up = upstream(echo_ok()).await;
    let proxy = start_proxy(test_config(&up.url())).await;
    let wait = Duration::from_secs(2);

    let abs = raw_exchange(
        proxy.addr,
        b"GET http://169.254.169.254/latest/meta-data HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n",
        wait,
    )
    .await;
    assert!(abs.starts_with("HTTP/1.1 400"), "{abs}");
    assert!(abs.contains("absolute-form-refused"));

    let connect = raw_exchange(
        proxy.addr,
        b"CONNECT internal.example:443 HTTP/1.1\r\nHost: internal.example:443\r\n\r\n",
        wait,
    )
    .await;
    assert!(connect.starts_with("HTTP/1.1 405"), "{connect}");

    let client = reqwest::Client::new();
    for host in ["evil.example.com", "twilio.com.evil.example", "10.0.0.1"] {
        let r = client
            .get(proxy.url("/v1/Conversations"))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 421, "{host}");
        assert_eq!(r.headers()["x-repair-proxy-error"], "host-not-allowed");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["status"], 421);
    }
    let r = client
        .get(proxy.url("/__emulator/requests"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        up.requests().len(),
        0,
        "a refused request reached the upstream"
    );

    // A Twilio host and the proxy's own names are fine.
    for host in [
        "conversations.twilio.com",
        "localhost:8080",
        "twilio-proxy:8080",
    ] {
        let r = client
            .get(proxy.url("/v1/Conversations"))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{host}");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn admin_plane_health_readiness_and_metrics() {
    let up = upstream(echo_ok()).await;
    let proxy = start_proxy(test_config(&up.url())).await;
    let c = reqwest::Client::new();
    assert_eq!(
        c.get(proxy.admin_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(proxy.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    for _ in 0..3 {
        c.get(proxy.url("/v1/Conversations")).send().await.unwrap();
    }
    c.post(proxy.url("/2010-04-01/Accounts/AC1/Messages.json"))
        .send()
        .await
        .unwrap();
    let m = c
        .get(proxy.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains(r#"trp_requests_total{route="conversations",method="GET",code="200"} 3"#),
        "{m}"
    );
    assert!(
        m.contains(r#"trp_requests_total{route="api",method="POST",code="200"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"trp_upstream_latency_seconds_count{route="conversations"} 3"#),
        "{m}"
    );
    assert!(
        m.contains(r#"trp_upstream_latency_seconds_count{route="api"} 1"#),
        "{m}"
    );
    // Timed end to end too, once each answer's body has ended.
    let timed =
        r#"trp_request_duration_seconds_count{route="conversations",method="GET",status="2xx"}"#;
    metric_becomes(proxy.admin, timed, 3.0).await;
    assert!(m.contains("# TYPE trp_in_flight_requests gauge"), "{m}");
    // The admin paths do not exist on the proxy listener: they go upstream.
    c.get(proxy.url("/metrics")).send().await.unwrap();
    assert_eq!(up.requests().last().unwrap().target, "/metrics");
    proxy.stop().await;
}

#[tokio::test]
async fn oversized_heads_and_ambiguous_framing_are_handled() {
    let up = upstream(echo_ok()).await;
    let mut config = test_config(&up.url());
    config.limits.max_request_head_bytes = 16 * 1024;
    let proxy = start_proxy(config).await;
    let wait = Duration::from_secs(2);

    // A request head over the bound: 431, nothing forwarded.
    let mut big = b"GET /v1/Services HTTP/1.1\r\nHost: localhost\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 64 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    let answer = raw_exchange(proxy.addr, &big, wait).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(up.requests().is_empty());

    // Transfer-Encoding and Content-Length together: the body is framed by
    // Transfer-Encoding and the stale Content-Length is not forwarded.
    let answer = raw_exchange(
        proxy.addr,
        b"POST /v1/Services HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        wait,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, b"abc");
    assert_ne!(seen[0].header_values("content-length"), vec!["5"]);
    proxy.stop().await;
}

/// A TLS upstream on 127.0.0.1 whose certificate is signed by a CA made
/// here: answers `json(200, {"tls":true})`. Returns its port and the CA in
/// PEM.
async fn tls_upstream_with_private_ca() -> (u16, String) {
    let ca = private_ca(&[b"h2", b"http/1.1"]);
    let acceptor = tokio_rustls::TlsAcceptor::from(ca.server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that does not trust the CA fails the handshake.
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(json(200, r#"{"tls":true}"#))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            });
        }
    });
    (port, ca.pem)
}

#[tokio::test]
async fn upstream_ca_file_adds_a_trusted_ca_and_without_it_tls_fails_as_502() {
    let (port, ca_pem) = tls_upstream_with_private_ca().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let upstream = format!("https://127.0.0.1:{port}");
    let client = reqwest::Client::new();

    // With the CA: the request goes through, over TLS, checked.
    let mut config = test_config(&upstream);
    config.upstream_ca_file = Some(ca_file);
    let proxy = start_proxy(config).await;
    let resp = client
        .get(proxy.url("/v1/Conversations"))
        .header("authorization", "Basic QUMxMjM6dG9rZW4=")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), r#"{"tls":true}"#);
    proxy.stop().await;

    // Without it: the certificate is not trusted, and the client gets the
    // proxy's Twilio-shaped 502, never the upstream's answer.
    let proxy = start_proxy(test_config(&upstream)).await;
    let resp = client
        .get(proxy.url("/v1/Conversations"))
        .header("authorization", "Basic QUMxMjM6dG9rZW4=")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(
        resp.headers()["x-repair-proxy-error"],
        "upstream-unreachable"
    );
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["status"], 502);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("could not reach Twilio")
    );
    proxy.stop().await;
}

#[tokio::test]
async fn cluster_names_and_ip_ranges_in_proxy_hosts_are_served() {
    let up = upstream(echo_ok()).await;
    let mut c = test_config(&up.url());
    c.proxy_hosts = vec![
        "twilio-repair-proxy.payments".into(),
        "twilio-repair-proxy.payments.svc".into(),
        "10.96.0.0/12".into(),
        "fd00:10::/64".into(),
    ];
    let proxy = start_proxy(c).await;
    let client = reqwest::Client::new();
    let status = |host: &'static str| {
        let req = client
            .get(proxy.url("/v1/Conversations"))
            .header("host", host);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    for host in [
        "twilio-repair-proxy.payments",
        "twilio-repair-proxy.payments.svc:8443",
        "10.96.0.10",
        "10.111.22.33:8080",
        "[fd00:10::1]",
    ] {
        assert_eq!(status(host).await, 200, "{host}");
    }
    for host in ["twilio-repair-proxy.billing", "10.112.0.1", "[fd00:11::1]"] {
        assert_eq!(status(host).await, 421, "{host}");
    }
    assert_eq!(up.requests().len(), 5);
    proxy.stop().await;
}
