//! Parked HTTP/1 keep-alive connections (issue 12): an idle connection's
//! hyper state is dropped after `limits.idle_park_ms` and a fresh one serves
//! the client's next request on the same socket. Each test lets connections
//! park (it waits until `trp_parked_connections` shows the park, so with
//! parking broken every test fails) and checks what the client sees: every answer byte-exact and in order, none lost or doubled, split
//! and pipelined heads served, `Connection: close` honoured, and the
//! watchdog, eviction and shutdown applying to parked sockets. Real sockets
//! on 127.0.0.1; wall-clock assertions are generous "it did not hang"
//! bounds only.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use twilio_repair_proxy::config::Config;

/// The park periods tried: at once after each response, and after an idle
/// period.
const PARK_MS: [u64; 2] = [0, 20];
/// Upper bound on anything that should happen at once.
const BOUND: Duration = Duration::from_secs(10);

/// An upstream answering each request with its own target, so that every
/// answer says which request it belongs to.
fn echo_target() -> Responder {
    Arc::new(|s: &Seen| json(200, &format!(r#"{{"target":"{}"}}"#, s.target)))
}

fn expected_body(n: u32) -> String {
    format!(r#"{{"target":"/v1/Conversations?n={n}"}}"#)
}

fn get(n: u32) -> String {
    format!("GET /v1/Conversations?n={n} HTTP/1.1\r\nHost: localhost\r\n\r\n")
}

async fn parking_proxy(upstream: &str, park_ms: u64, tweak: impl FnOnce(&mut Config)) -> Proxy {
    let mut c = test_config(upstream);
    c.limits.idle_park_ms = park_ms;
    tweak(&mut c);
    start_proxy(c).await
}

/// The proxy listener's parked connections.
const PARKED: &str = "trp_parked_connections{listener=\"proxy\"}";

/// How many of `proxy`'s connections are parked now.
async fn parked_now(proxy: &Proxy) -> f64 {
    sample(&metrics_text(proxy.admin).await, PARKED).unwrap_or_else(|| panic!("no {PARKED}"))
}

/// Wait until `n` connections of `proxy` are parked: the gauge is polled
/// with a deadline ([`metric_becomes`]); a park that never happens fails
/// the test. A woken connection leaves the gauge before it is served, so
/// after an answer the count is reached only by a park after it.
async fn let_it_park(proxy: &Proxy, n: f64) {
    metric_becomes(proxy.admin, PARKED, n).await;
}

/// What would have been another park period passes while a head is half
/// sent (the connection is not idle, so nothing parks). A fixed wait that
/// proves an absence: the half head is neither answered early nor lost.
async fn a_park_period_passes(park_ms: u64) {
    tokio::time::sleep(Duration::from_millis(2 * park_ms + 150)).await;
}

/// Read one answer (head and Content-Length body) from `s`, keeping bytes
/// beyond it in `buf` for the next call.
async fn read_answer(s: &mut TcpStream, buf: &mut Vec<u8>) -> (String, Vec<u8>) {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().unwrap())
                })
                .unwrap_or_else(|| panic!("no Content-Length in {head}"));
            if buf.len() >= end + 4 + len {
                let body = buf[end + 4..end + 4 + len].to_vec();
                buf.drain(..end + 4 + len);
                return (head, body);
            }
        }
        let n = tokio::time::timeout(BOUND, s.read(&mut chunk))
            .await
            .expect("no answer in time")
            .unwrap();
        assert!(n > 0, "closed before a whole answer: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The answer to `get(n)`, checked byte for byte.
async fn expect_answer(s: &mut TcpStream, buf: &mut Vec<u8>, n: u32) {
    let (head, body) = read_answer(s, buf).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(String::from_utf8(body).unwrap(), expected_body(n));
}

/// Nothing more arrives on `s` for a while (no doubled answer).
async fn expect_silence(s: &mut TcpStream, buf: &[u8]) {
    assert!(buf.is_empty(), "stray bytes: {buf:?}");
    let mut chunk = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_millis(200), s.read(&mut chunk)).await;
    assert!(r.is_err(), "unexpected bytes or close: {r:?}");
}

fn targets(up: &Upstream) -> Vec<String> {
    up.requests().into_iter().map(|s| s.target).collect()
}

fn expected_targets(ns: std::ops::RangeInclusive<u32>) -> Vec<String> {
    ns.map(|n| format!("/v1/Conversations?n={n}")).collect()
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

/// A connection that got one answer and was left to park.
async fn parked(proxy: &Proxy) -> TcpStream {
    let before = parked_now(proxy).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(get(1).as_bytes()).await.unwrap();
    expect_answer(&mut s, &mut buf, 1).await;
    let_it_park(proxy, before + 1.0).await;
    s
}

#[tokio::test]
async fn a_parked_connection_serves_its_next_requests_byte_exact() {
    for park_ms in PARK_MS {
        let up = upstream(echo_target()).await;
        let proxy = parking_proxy(&up.url(), park_ms, |_| {}).await;
        let mut s = parked(&proxy).await;
        let mut buf = Vec::new();
        for n in 2..=3 {
            s.write_all(get(n).as_bytes()).await.unwrap();
            expect_answer(&mut s, &mut buf, n).await;
            let_it_park(&proxy, 1.0).await;
        }
        expect_silence(&mut s, &buf).await;
        assert_eq!(targets(&up), expected_targets(1..=3), "park {park_ms} ms");
        proxy.stop().await;
    }
}

#[tokio::test]
async fn a_request_head_split_around_the_park_is_served() {
    for park_ms in PARK_MS {
        let up = upstream(echo_target()).await;
        let proxy = parking_proxy(&up.url(), park_ms, |_| {}).await;
        let mut s = parked(&proxy).await;
        let mut buf = Vec::new();
        // The first half wakes the parked socket; the second comes after
        // what would have been another park period.
        let head = get(2);
        let (a, b) = head.split_at(20);
        s.write_all(a.as_bytes()).await.unwrap();
        a_park_period_passes(park_ms).await;
        s.write_all(b.as_bytes()).await.unwrap();
        expect_answer(&mut s, &mut buf, 2).await;
        // Split in the middle of the line ending, on a connection parked
        // again.
        let_it_park(&proxy, 1.0).await;
        let head = get(3);
        let (a, b) = head.split_at(head.len() - 3);
        s.write_all(a.as_bytes()).await.unwrap();
        a_park_period_passes(park_ms).await;
        s.write_all(b.as_bytes()).await.unwrap();
        expect_answer(&mut s, &mut buf, 3).await;
        expect_silence(&mut s, &buf).await;
        assert_eq!(targets(&up), expected_targets(1..=3), "park {park_ms} ms");
        proxy.stop().await;
    }
}

#[tokio::test]
async fn pipelined_requests_around_the_park_are_each_answered_once_in_order() {
    for park_ms in PARK_MS {
        let up = upstream(echo_target()).await;
        let proxy = parking_proxy(&up.url(), park_ms, |_| {}).await;
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        let mut buf = Vec::new();
        // Two at once on a fresh connection, then parked.
        s.write_all(format!("{}{}", get(1), get(2)).as_bytes())
            .await
            .unwrap();
        expect_answer(&mut s, &mut buf, 1).await;
        expect_answer(&mut s, &mut buf, 2).await;
        let_it_park(&proxy, 1.0).await;
        // Three at once on the parked socket.
        s.write_all(format!("{}{}{}", get(3), get(4), get(5)).as_bytes())
            .await
            .unwrap();
        for n in 3..=5 {
            expect_answer(&mut s, &mut buf, n).await;
        }
        let_it_park(&proxy, 1.0).await;
        // A whole request and the start of the next, the rest later.
        let next = get(7);
        let (a, b) = next.split_at(10);
        s.write_all(format!("{}{a}", get(6)).as_bytes())
            .await
            .unwrap();
        expect_answer(&mut s, &mut buf, 6).await;
        a_park_period_passes(park_ms).await;
        s.write_all(b.as_bytes()).await.unwrap();
        expect_answer(&mut s, &mut buf, 7).await;
        expect_silence(&mut s, &buf).await;
        assert_eq!(targets(&up), expected_targets(1..=7), "park {park_ms} ms");
        proxy.stop().await;
    }
}

#[tokio::test]
async fn connection_close_on_a_parked_connection_still_closes() {
    for park_ms in PARK_MS {
        let up = upstream(echo_target()).await;
        let proxy = parking_proxy(&up.url(), park_ms, |_| {}).await;
        let mut s = parked(&proxy).await;
        let mut buf = Vec::new();
        s.write_all(
            b"GET /v1/Conversations?n=2 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let (head, body) = read_answer(&mut s, &mut buf).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert_eq!(String::from_utf8(body).unwrap(), expected_body(2));
        assert!(buf.is_empty(), "stray bytes: {buf:?}");
        assert!(
            closed_within(&mut s, BOUND).await,
            "Connection: close left the connection open (park {park_ms} ms)"
        );
        proxy.stop().await;
    }
}

#[tokio::test]
async fn a_parked_connection_closes_after_keepalive_timeout_or_an_unfinished_head() {
    let up = upstream(echo_target()).await;
    let proxy = parking_proxy(&up.url(), 0, |c| {
        c.limits.header_read_timeout_ms = 60_000;
        c.limits.keepalive_timeout_ms = 300;
    })
    .await;
    let mut s = parked(&proxy).await;
    assert!(
        closed_within(&mut s, BOUND).await,
        "a parked connection was kept past keepalive_timeout"
    );
    proxy.stop().await;
    // A head started on a parked socket is bounded by header_read_timeout.
    let proxy = parking_proxy(&up.url(), 0, |c| {
        c.limits.header_read_timeout_ms = 300;
        c.limits.keepalive_timeout_ms = 60_000;
    })
    .await;
    let mut s = parked(&proxy).await;
    s.write_all(b"GET /v1/Conversations HTTP/1.1\r\nHost: loc")
        .await
        .unwrap();
    assert!(
        closed_within(&mut s, BOUND).await,
        "a partial head on a parked connection was kept past header_read_timeout"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn parked_connections_give_up_their_slots_to_a_waiting_client() {
    const SLOTS: usize = 8;
    let up = upstream(echo_target()).await;
    let proxy = parking_proxy(&up.url(), 0, |c| c.limits.max_connections = SLOTS).await;
    let mut held = Vec::new();
    for _ in 0..SLOTS {
        held.push(parked(&proxy).await);
    }
    let r = reqwest::Client::builder()
        .timeout(BOUND)
        .build()
        .unwrap()
        .get(proxy.url("/v1/Conversations?n=9"))
        .send()
        .await
        .expect("parked sockets locked a waiting client out");
    assert_eq!(r.status(), 200);
    drop(held);
    proxy.stop().await;
}

#[tokio::test]
async fn shutdown_closes_parked_connections_at_once() {
    // A long grace period: only parked (idle) connections are open, so the
    // drain must end as soon as they are closed, not when the grace ends.
    let up = upstream(echo_target()).await;
    let proxy = parking_proxy(&up.url(), 0, |c| {
        c.limits.shutdown_grace_ms = 600_000;
        c.limits.keepalive_timeout_ms = 600_000;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(parked(&proxy).await);
    }
    tokio::time::timeout(BOUND, proxy.stop())
        .await
        .expect("shutdown waited for parked connections");
    for s in &mut held {
        assert!(closed_within(s, BOUND).await, "a parked socket stayed open");
    }
}

/// An upstream for the tests below: `?s=204` / `?s=304` answer that status without a body,
/// `?big=N` answers N bytes, else echo target and body length.
fn probe_responder() -> Responder {
    Arc::new(|s: &Seen| {
        if s.target.ends_with("s=204") || s.target.ends_with("s=304") {
            let code: u16 = s.target[s.target.len() - 3..].parse().unwrap();
            return http::Response::builder()
                .status(code)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
        }
        if let Some(n) = s.target.split("big=").nth(1) {
            let n: usize = n.parse().unwrap();
            return json(200, &"x".repeat(n));
        }
        if s.body.is_empty() {
            return json(200, &format!(r#"{{"target":"{}"}}"#, s.target));
        }
        json(
            200,
            &format!(r#"{{"target":"{}","len":{}}}"#, s.target, s.body.len()),
        )
    })
}

/// Read until `needle` is in `buf`.
async fn read_until(s: &mut TcpStream, buf: &mut Vec<u8>, needle: &[u8]) {
    let mut chunk = [0u8; 4096];
    while !buf.windows(needle.len()).any(|w| w == needle) {
        let n = tokio::time::timeout(BOUND, s.read(&mut chunk))
            .await
            .expect("hang")
            .unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
/// Bodies arriving slowly after their head (Content-Length, chunked),
/// `Expect: 100-continue`, and bodyless answers (HEAD, 204, 304) followed
/// by another request, all on a connection parked between them.
async fn slow_bodies_expect_continue_and_bodyless_answers_around_the_park() {
    let up = upstream(probe_responder()).await;
    let proxy = parking_proxy(&up.url(), 0, |_| {}).await;
    let mut s = parked(&proxy).await;
    let mut buf = Vec::new();
    // CL body slow.
    s.write_all(b"POST /v1/Conversations?n=2 HTTP/1.1\r\nHost: l\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 7\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(b"a=b").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(b"&c=d").await.unwrap();
    let (h, b) = read_answer(&mut s, &mut buf).await;
    assert!(
        h.starts_with("HTTP/1.1 200"),
        "{h} {}",
        String::from_utf8_lossy(&b)
    );
    assert!(
        String::from_utf8_lossy(&b).contains(r#""len":7"#),
        "{}",
        String::from_utf8_lossy(&b)
    );
    let_it_park(&proxy, 1.0).await;
    // chunked slow
    s.write_all(b"POST /v1/Conversations?n=3 HTTP/1.1\r\nHost: l\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(b"3\r\na=b\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(b"0\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(b"\r\n").await.unwrap();
    let (h, b) = read_answer(&mut s, &mut buf).await;
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    assert!(
        String::from_utf8_lossy(&b).contains(r#""len":3"#),
        "{}",
        String::from_utf8_lossy(&b)
    );
    let_it_park(&proxy, 1.0).await;
    // Expect 100-continue
    s.write_all(b"POST /v1/Conversations?n=4 HTTP/1.1\r\nHost: l\r\nContent-Type: application/x-www-form-urlencoded\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n").await.unwrap();
    read_until(&mut s, &mut buf, b"100 Continue\r\n\r\n").await;
    buf.clear();
    s.write_all(b"a=b").await.unwrap();
    let (h, b) = read_answer(&mut s, &mut buf).await;
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    assert!(String::from_utf8_lossy(&b).contains(r#""len":3"#));
    let_it_park(&proxy, 1.0).await;
    // HEAD then GET
    s.write_all(b"HEAD /v1/Conversations?n=5 HTTP/1.1\r\nHost: l\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut s, &mut buf, b"\r\n\r\n").await;
    assert!(
        buf.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    buf.drain(..end + 4);
    s.write_all(get(6).as_bytes()).await.unwrap();
    let (h, b) = read_answer(&mut s, &mut buf).await;
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    assert!(String::from_utf8_lossy(&b).contains("n=6"));
    for code in ["204", "304"] {
        let_it_park(&proxy, 1.0).await;
        s.write_all(
            format!(
                "GET /v1/Conversations?s={code} HTTP/1.1\r\nHost: l\r\n\r\n{}",
                get(7)
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        read_until(&mut s, &mut buf, b"\r\n\r\n").await;
        assert!(
            buf.starts_with(format!("HTTP/1.1 {code}").as_bytes()),
            "{}",
            String::from_utf8_lossy(&buf)
        );
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        buf.drain(..end + 4);
        let (h, b) = read_answer(&mut s, &mut buf).await;
        assert!(h.starts_with("HTTP/1.1 200"), "{h}");
        assert!(String::from_utf8_lossy(&b).contains("n=7"));
    }
    expect_silence(&mut s, &buf).await;
    proxy.stop().await;
}

#[tokio::test]
/// A 4 MiB answer read slowly while the client pipelines its next request.
async fn a_big_answer_to_a_slow_reader_then_a_pipelined_request() {
    let up = upstream(probe_responder()).await;
    let proxy = parking_proxy(&up.url(), 0, |_| {}).await;
    let mut s = parked(&proxy).await;
    let n = 4 * 1024 * 1024;
    s.write_all(format!("GET /v1/Conversations?big={n} HTTP/1.1\r\nHost: l\r\n\r\n").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 65536];
    let mut got = 0;
    let mut sent_next = false;
    let mut s2 = s;
    // read slowly
    loop {
        let r = tokio::time::timeout(BOUND, s2.read(&mut chunk))
            .await
            .expect("hang")
            .unwrap();
        assert!(r > 0, "closed after {got}");
        buf.extend_from_slice(&chunk[..r]);
        got += r;
        if got > 1_000_000 && !sent_next {
            s2.write_all(get(9).as_bytes()).await.unwrap();
            sent_next = true;
        }
        if got % (512 * 1024) < 65536 {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        if buf.windows(3).any(|w| w == b"n=9") {
            break;
        }
    }
    let (h, b) = read_answer(&mut s2, &mut buf).await;
    assert!(h.starts_with("HTTP/1.1 200"));
    assert_eq!(b.len(), n);
    let (h, b) = read_answer(&mut s2, &mut buf).await;
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    assert!(String::from_utf8_lossy(&b).contains("n=9"));
    proxy.stop().await;
}

/// Sockets the proxy on `port` still holds open: the accepted side of its
/// connections (local port `port`) in any state but LISTEN and TIME_WAIT
/// (which holds no descriptor). A connection the client closed but the
/// proxy did not stays in CLOSE_WAIT here. Read from the kernel's table,
/// not from this process's descriptor count, which every other test in this
/// binary moves at the same time.
fn proxy_side_sockets(port: u16) -> usize {
    let mut open = 0;
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (f.get(1), f.get(3)) else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            // 0A: LISTEN, 06: TIME_WAIT.
            if local_port == Some(port) && *state != "0A" && *state != "06" {
                open += 1;
            }
        }
    }
    open
}

#[tokio::test]
/// 1000 park/unpark cycles and 200 parked-then-closed connections leave
/// no file descriptor behind.
async fn park_cycles_leak_no_file_descriptors() {
    let up = upstream(probe_responder()).await;
    let proxy = parking_proxy(&up.url(), 0, |c| c.limits.max_connections = 4).await;
    // warm
    let mut s = parked(&proxy).await;
    let mut buf = Vec::new();
    for n in 0..1000u32 {
        s.write_all(get(n).as_bytes()).await.unwrap();
        let (h, _) = read_answer(&mut s, &mut buf).await;
        assert!(h.starts_with("HTTP/1.1 200"));
        if n % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The table does show the proxy's side of an open connection.
    assert!(proxy_side_sockets(proxy.addr.port()) >= 1);
    drop(s);
    // many connections open/park/close
    for _ in 0..200 {
        // The previous socket's close has reached the proxy (it is no
        // longer counted parked), so the next park is this one's.
        metric_becomes(proxy.admin, PARKED, 0.0).await;
        let s = parked(&proxy).await;
        drop(s);
    }
    // Every connection was closed by its client: the proxy closes its side
    // of each (a generous bound on "it did, eventually").
    let port = proxy.addr.port();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut open = proxy_side_sockets(port);
    while open > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        open = proxy_side_sockets(port);
    }
    assert_eq!(open, 0, "the proxy still holds {open} client sockets open");
    proxy.stop().await;
}
