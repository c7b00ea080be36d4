//! What `/metrics` says after real traffic on real sockets (issue 21): the
//! exact status code of a request (a 429 passed through is `code="429"`,
//! not hidden in `4xx`), the end-to-end duration, the connection gauges of
//! each listener, build info and the process metrics. Values that change
//! after the client has its answer (a body's end, a connection parked or
//! closed) are polled for with a bound on "never", not timed.

use std::sync::Arc;

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Twilio's answer to too many requests, and 200 to the rest.
fn too_many_for_posts() -> Responder {
    Arc::new(|s: &Seen| {
        if s.method == "POST" {
            json(
                429,
                r#"{"code":20429,"message":"Too Many Requests","status":429}"#,
            )
        } else {
            json(200, r#"{"conversations":[]}"#)
        }
    })
}

#[tokio::test]
async fn a_429_passed_through_is_counted_with_its_exact_code() {
    let up = upstream(too_many_for_posts()).await;
    let proxy = start_proxy(test_config(&up.url())).await;
    let c = reqwest::Client::new();
    for _ in 0..2 {
        let r = c
            .post(proxy.url("/v1/Conversations"))
            .form(&[("FriendlyName", "x")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 429, "passed through (the shield is off)");
        r.bytes().await.unwrap();
    }
    let r = c.get(proxy.url("/v1/Conversations")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();

    let series = r#"trp_requests_total{route="conversations",method="POST",code="429"}"#;
    let m = metrics_text(proxy.admin).await;
    assert_eq!(sample(&m, series), Some(2.0), "{m}");
    let ok = r#"trp_requests_total{route="conversations",method="GET",code="200"}"#;
    assert_eq!(sample(&m, ok), Some(1.0), "{m}");
    assert!(
        !m.lines()
            .any(|l| l.starts_with("trp_requests_total{") && l.contains("status=")),
        "the request counter has no status class label: {m}"
    );
    // The duration histogram keeps the class: both 429s are 4xx there.
    let timed =
        r#"trp_request_duration_seconds_count{route="conversations",method="POST",status="4xx"}"#;
    metric_becomes(proxy.admin, timed, 2.0).await;
    proxy.stop().await;
}

#[tokio::test]
async fn build_info_and_process_metrics_are_exported() {
    let up = upstream(too_many_for_posts()).await;
    let proxy = start_proxy(test_config(&up.url())).await;
    let r = reqwest::get(proxy.admin_url("/metrics")).await.unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let m = r.text().await.unwrap();
    let info = m
        .lines()
        .find(|l| l.starts_with("trp_build_info{"))
        .unwrap_or_else(|| panic!("no trp_build_info in\n{m}"));
    let version = format!(r#"version="{}""#, env!("CARGO_PKG_VERSION"));
    assert!(info.contains(&version), "{info}");
    let commit = info
        .split("commit=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no commit in {info}"));
    assert!(
        commit == "unknown" || (commit.len() >= 7 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{info}"
    );
    assert!(info.ends_with("} 1"), "{info}");
    // The process metrics of the process serving /metrics (this test's,
    // which runs the proxy in process).
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        let v = sample(&m, name).unwrap_or_else(|| panic!("no {name} in\n{m}"));
        assert!(v >= 0.0, "{name} {v}");
    }
    // Sockets are open (the listeners at least): more than stdio.
    assert!(sample(&m, "process_open_fds").unwrap() > 3.0, "{m}");
    assert!(sample(&m, "process_resident_memory_bytes").unwrap() > 0.0);
    assert!(
        sample(&m, "trp_otlp_spans_dropped_total") == Some(0.0),
        "{m}"
    );
    proxy.stop().await;
}

const OPEN: &str = r#"trp_open_connections{listener="proxy"}"#;
const PARKED: &str = r#"trp_parked_connections{listener="proxy"}"#;

/// Read one small answer (head and its Content-Length body) whole.
async fn read_answer(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "closed before the answer: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
    }
}

#[tokio::test]
async fn open_and_parked_connections_follow_a_client_connection() {
    let up = upstream(too_many_for_posts()).await;
    let mut c = test_config(&up.url());
    // Parked as soon as the answer is sent.
    c.limits.idle_park_ms = 0;
    let proxy = start_proxy(c).await;
    let m = metrics_text(proxy.admin).await;
    assert_eq!(sample(&m, OPEN), Some(0.0), "{m}");
    assert_eq!(sample(&m, PARKED), Some(0.0), "{m}");
    // The scrape's own connection is open on the admin listener.
    let admin = sample(&m, r#"trp_open_connections{listener="admin"}"#).unwrap();
    assert!(admin >= 1.0, "{m}");

    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let get = b"GET /v1/Conversations HTTP/1.1\r\nHost: localhost\r\n\r\n";
    s.write_all(get).await.unwrap();
    let answer = read_answer(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Idle keep-alive: open and parked.
    let m = metric_becomes(proxy.admin, PARKED, 1.0).await;
    assert_eq!(sample(&m, OPEN), Some(1.0), "{m}");
    // The next request unparks it; once answered it parks again.
    s.write_all(get).await.unwrap();
    let answer = read_answer(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    metric_becomes(proxy.admin, PARKED, 1.0).await;
    // The client leaves: neither open nor parked.
    drop(s);
    let m = metric_becomes(proxy.admin, OPEN, 0.0).await;
    assert_eq!(sample(&m, PARKED), Some(0.0), "{m}");
    proxy.stop().await;
}
