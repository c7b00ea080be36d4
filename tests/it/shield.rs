//! The opt-in 429 shield (`[shield]`), over real sockets against the
//! emulator's 429 rules (`too_many_requests`, `after`, `in_flight_above`,
//! `hold`) and its in-flight statistics. Attempts are counted in the
//! emulator's request log; no test asserts a wall-clock duration.

use std::time::Duration;

use crate::common::*;
use futures_util::FutureExt;
use serde_json::{Value, json};
use twilio_repair_proxy::config::Config;

/// A second account of the emulator (for "another account is unaffected").
const ACCOUNT_B: &str = "ACbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const TOKEN_B: &str = "tokenofaccountb";

/// The shield's retries with short backoffs (test speed; Retry-After from
/// the emulator is honoured as sent).
/// An emulator and a proxy with these shield settings in front of it.
async fn shielded(tweak: impl FnOnce(&mut Config) + Send + 'static) -> Stack {
    Scene::new().proxy(tweak).stack().await
}

/// A GET as [`ACCOUNT`] through the proxy, in the background: its status.
fn spawn_get(st: &Stack, path: &str) -> tokio::task::JoinHandle<reqwest::StatusCode> {
    let request = st
        .http
        .get(st.proxy.url(path))
        .basic_auth(ACCOUNT, Some(TOKEN));
    tokio::spawn(async move { request.send().await.unwrap().status() })
}

fn retrying(c: &mut Config) {
    c.shield.retry_429 = true;
    c.shield.initial_backoff_ms = 5;
    c.shield.max_backoff_ms = 20;
}

fn too_many(method: &str, path: &str, times: Option<u32>, retry_after: Option<u64>) -> Value {
    let mut rule = json!({
        "method": method,
        "path": path,
        "action": {"kind": "too_many_requests", "retry_after": retry_after},
    });
    if let Some(t) = times {
        rule["times"] = json!(t);
    }
    rule
}

/// (status, retries header, JSON body) of an answer.
async fn answer(r: reqwest::Response) -> (u16, Option<String>, Value) {
    let status = r.status().as_u16();
    let retries = r
        .headers()
        .get("x-repair-proxy-retries")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retries, r.json().await.unwrap_or(Value::Null))
}

/// (status, retries header) of every logged call to a path ending so.
async fn attempts(emu: &Emu, method: &str, suffix: &str) -> Vec<u64> {
    emu.log_json()
        .await
        .iter()
        .filter(|r| r["method"] == method && r["path"].as_str().unwrap().ends_with(suffix))
        .map(|r| r["status"].as_u64().unwrap_or(0))
        .collect()
}

fn messages_path(account: &str) -> String {
    format!("/2010-04-01/Accounts/{account}/Messages.json")
}

fn message_form(body: &str) -> Vec<(&'static str, String)> {
    vec![
        ("To", "+15005550006".to_string()),
        ("From", "+15005550001".to_string()),
        ("Body", body.to_string()),
    ]
}

/// The status line, the end-to-end headers in order and the body: the
/// `date` and `connection` lines are each server's own (hop-by-hop).
/// The answer without its hop-by-hop and per-hop lines: `Date`,
/// `Connection`, and the `X-Request-Id` the proxy adds to every answer (the
/// README's table of changes).
fn end_to_end(raw: &str) -> String {
    raw.split("\r\n")
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            !l.starts_with("date:")
                && !l.starts_with("connection:")
                && !l.starts_with("x-request-id:")
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

#[tokio::test]
async fn off_by_default_a_429_passes_through_byte_for_byte() {
    let body = r#"{"code":20429,"message":"Too Many Requests","more_info":"https://www.twilio.com/docs/errors/20429","status":429}"#;
    let up = upstream(std::sync::Arc::new(move |_| {
        let mut r = json(429, body);
        r.headers_mut()
            .insert("retry-after", http::HeaderValue::from_static("1"));
        r
    }))
    .await;
    let config = test_config(&up.url());
    assert!(!config.shield.retry_429, "the shield is off by default");
    assert_eq!(config.shield.max_concurrent_per_account, 0);
    let proxy = start_proxy(config).await;
    let req = format!(
        "POST /2010-04-01/Accounts/{ACCOUNT}/Messages.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Authorization: Basic QUMxMjM6c2VjcmV0\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: 7\r\nConnection: close\r\n\r\nBody=hi"
    );
    let wait = Duration::from_secs(5);
    let direct = raw_exchange(up.addr, req.as_bytes(), wait).await;
    let through = raw_exchange(proxy.addr, req.as_bytes(), wait).await;
    assert!(through.starts_with("HTTP/1.1 429 "), "{through}");
    assert!(through.contains("\r\nx-request-id: "), "{through}");
    assert_eq!(end_to_end(&through), end_to_end(&direct));
    assert!(!through.to_ascii_lowercase().contains("x-repair-proxy"));
    // Sent once by us, once through the proxy: never re-sent.
    assert_eq!(up.requests().len(), 2);
    proxy.stop().await;
}

#[tokio::test]
async fn a_429_on_participant_create_is_retried_and_the_create_succeeds() {
    let st = shielded(retrying).await;
    let is = st.emu.service().await;
    let ch = st.emu.conversation(Some(&is)).await;
    st.emu
        .add_rule(too_many("POST", "/Participants$", Some(1), None))
        .await;
    st.emu.clear_requests().await;
    let r = st
        .http
        .post(st.proxy.url(&format!(
            "/v1/Services/{is}/Conversations/{ch}/Participants"
        )))
        .basic_auth(ACCOUNT, Some(TOKEN))
        .form(&[("Identity", "alice")])
        .send()
        .await
        .unwrap();
    let (status, retries, body) = answer(r).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["identity"], "alice");
    assert_eq!(retries.as_deref(), Some("1"));
    assert_eq!(attempts(&st.emu, "POST", "/Participants").await, [429, 201]);
    st.proxy.stop().await;
}

#[tokio::test]
async fn a_429_on_a_get_is_retried_until_it_succeeds() {
    let st = shielded(retrying).await;
    let ch = st.emu.conversation(None).await;
    st.emu
        .add_rule(too_many(
            "GET",
            "/Conversations/CH[0-9a-f]+$",
            Some(2),
            Some(0),
        ))
        .await;
    st.emu.clear_requests().await;
    let r = st
        .http
        .get(st.proxy.url(&format!("/v1/Conversations/{ch}")))
        .basic_auth(ACCOUNT, Some(TOKEN))
        .send()
        .await
        .unwrap();
    let (status, retries, body) = answer(r).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sid"], ch.as_str());
    assert_eq!(retries.as_deref(), Some("2"));
    assert_eq!(attempts(&st.emu, "GET", &ch).await, [429, 429, 200]);
    st.proxy.stop().await;
}

#[tokio::test]
async fn a_429_on_a_message_send_is_retried_with_its_body() {
    let st = shielded(retrying).await;
    st.emu
        .add_rule(too_many("POST", "/Messages.json$", Some(1), None))
        .await;
    let r = st
        .http
        .post(st.proxy.url(&messages_path(ACCOUNT)))
        .basic_auth(ACCOUNT, Some(TOKEN))
        .form(&message_form("hello through the shield"))
        .send()
        .await
        .unwrap();
    let (status, retries, body) = answer(r).await;
    assert_eq!(status, 201, "{body}");
    assert!(body["sid"].as_str().unwrap().starts_with("SM"), "{body}");
    assert_eq!(body["body"], "hello through the shield");
    assert_eq!(retries.as_deref(), Some("1"));
    let log = st.emu.log_json().await;
    let sends: Vec<&Value> = log
        .iter()
        .filter(|r| r["path"].as_str().unwrap().ends_with("/Messages.json"))
        .collect();
    assert_eq!(sends.len(), 2);
    // The re-sent request carried the same form.
    assert_eq!(sends[0]["form"], sends[1]["form"]);
    assert_eq!(sends[1]["form"]["Body"], "hello through the shield");
    st.proxy.stop().await;
}

/// Retry-After is read: a wait of 2 s does not fit a 1 s `max_wait_ms`,
/// so the 429 goes back untouched after one attempt (the backoff alone,
/// 5 to 20 ms, would have fitted); 1 s fits 3 s, and the retry succeeds.
#[tokio::test]
async fn retry_after_is_honoured_and_bounded_by_the_deadline() {
    let st = shielded(|c| {
        retrying(c);
        c.shield.max_wait_ms = 1000;
    })
    .await;
    st.emu
        .add_rule(too_many("POST", "/Messages.json$", Some(1), Some(2)))
        .await;
    let r = st
        .http
        .post(st.proxy.url(&messages_path(ACCOUNT)))
        .basic_auth(ACCOUNT, Some(TOKEN))
        .form(&message_form("late"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["retry-after"], "2", "Twilio's own Retry-After");
    let (status, retries, body) = answer(r).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["code"], 20429);
    assert_eq!(retries, None);
    assert_eq!(attempts(&st.emu, "POST", "/Messages.json").await, [429]);
    st.proxy.stop().await;

    let st = shielded(|c| {
        retrying(c);
        c.shield.max_wait_ms = 3000;
    })
    .await;
    st.emu
        .add_rule(too_many("POST", "/Messages.json$", Some(1), Some(1)))
        .await;
    let r = st
        .http
        .post(st.proxy.url(&messages_path(ACCOUNT)))
        .basic_auth(ACCOUNT, Some(TOKEN))
        .form(&message_form("in time"))
        .send()
        .await
        .unwrap();
    let (status, retries, body) = answer(r).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(retries.as_deref(), Some("1"));
    assert_eq!(
        attempts(&st.emu, "POST", "/Messages.json").await,
        [429, 201]
    );
    st.proxy.stop().await;
}

#[tokio::test]
async fn a_body_over_the_replay_bound_passes_its_429_through() {
    let st = shielded(|c| {
        retrying(c);
        c.shield.max_replay_body_bytes = 1024;
    })
    .await;
    st.emu
        .add_rule(too_many("POST", "/Messages.json$", Some(2), None))
        .await;
    let big = "x".repeat(2000);
    let r = st
        .http
        .post(st.proxy.url(&messages_path(ACCOUNT)))
        .basic_auth(ACCOUNT, Some(TOKEN))
        .form(&message_form(&big))
        .send()
        .await
        .unwrap();
    let (status, retries, body) = answer(r).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["code"], 20429);
    assert_eq!(retries, None);
    // The same 429 for a body under the bound is retried.
    let r = st
        .http
        .post(st.proxy.url(&messages_path(ACCOUNT)))
        .basic_auth(ACCOUNT, Some(TOKEN))
        .form(&message_form("small"))
        .send()
        .await
        .unwrap();
    let (status, retries, body) = answer(r).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(retries.as_deref(), Some("1"));
    let log = st.emu.log_json().await;
    let big_sends = log
        .iter()
        .filter(|r| r["form"]["Body"].as_str() == Some(big.as_str()))
        .count();
    assert_eq!(big_sends, 1, "the big body was sent once");
    assert_eq!(
        attempts(&st.emu, "POST", "/Messages.json").await,
        [429, 429, 201]
    );
    st.proxy.stop().await;
}

/// Under a storm (every request 429), retries add at most 20 % to the
/// requests of the window: 50 requests make 60 attempts, not the hundreds
/// their deadlines would allow.
#[tokio::test]
async fn the_budget_stops_retries_under_a_sustained_429_storm() {
    let st = shielded(|c| {
        retrying(c);
        c.shield.max_wait_ms = 2000;
        c.shield.budget_percent = 20;
        c.shield.budget_window_ms = 600_000;
        c.shield.budget_min_retries_per_second = 0;
    })
    .await;
    st.emu
        .add_rule(too_many("GET", "^/v1/Conversations$", None, Some(0)))
        .await;
    for _ in 0..50 {
        let r = st
            .http
            .get(st.proxy.url("/v1/Conversations"))
            .basic_auth(ACCOUNT, Some(TOKEN))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 429);
    }
    let tries = attempts(&st.emu, "GET", "/v1/Conversations").await;
    assert!(tries.iter().all(|s| *s == 429));
    assert_eq!(tries.len(), 60, "50 requests + 20 % retries");
    let metrics = reqwest::get(st.proxy.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("trp_shield_retries_total{class=\"account\"} 10"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("trp_shield_budget_exhausted_total{class=\"account\"} 0"),
        "{metrics}"
    );
    assert!(!metrics.contains(ACCOUNT), "no SID in a label by default");
    st.proxy.stop().await;
}

async fn get_as(st: &Stack, (user, pass): (&str, &str), path: &str) -> reqwest::Response {
    st.http
        .get(st.proxy.url(path))
        .basic_auth(user, Some(pass))
        .send()
        .await
        .unwrap()
}

/// 200 concurrent requests of one account: the emulator never sees more
/// than the cap in flight for it, while another account's requests go
/// through as the first account's line waits.
#[tokio::test]
async fn the_cap_holds_under_200_concurrent_requests_and_spares_other_accounts() {
    const CAP: usize = 5;
    let st = shielded(|c| {
        c.shield.max_concurrent_per_account = CAP;
        c.shield.max_queue_wait_ms = 60_000;
    })
    .await;
    st.emu.add_account(ACCOUNT_B, TOKEN_B, None).await;
    // A's first CAP requests are parked: its line stands still.
    let hold = st
        .emu
        .add_rule_id(
            json!({"account_sid": ACCOUNT, "path": "^/v1/Conversations$",
            "times": CAP, "action": {"kind": "hold"}}),
        )
        .await;
    st.emu
        .add_rule(
            json!({"account_sid": ACCOUNT, "path": "^/v1/Conversations$",
            "action": {"kind": "latency", "ms": 5}}),
        )
        .await;
    let mut a = Vec::new();
    for _ in 0..200 {
        let http = st.http.clone();
        let url = st.proxy.url("/v1/Conversations");
        a.push(tokio::spawn(async move {
            http.get(url)
                .basic_auth(ACCOUNT, Some(TOKEN))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    st.emu.wait_held(CAP).await;
    // B is not in A's line.
    let b: Vec<_> = (0..20)
        .map(|_| get_as(&st, (ACCOUNT_B, TOKEN_B), "/v1/Conversations"))
        .collect();
    for r in futures_util::future::join_all(b).await {
        assert_eq!(r.status(), 200);
    }
    assert_eq!(st.emu.held().await.len(), CAP, "A's line still waits");
    assert_eq!(st.emu.release_rule(hold).await, CAP as u64);
    for t in a {
        assert_eq!(t.await.unwrap(), 200);
    }
    let stats = st.emu.stats().await;
    let max_a = stats["accounts"][ACCOUNT]["max_in_flight"]
        .as_u64()
        .unwrap();
    assert_eq!(max_a, CAP as u64, "{stats}");
    let a_calls = st
        .emu
        .log_json()
        .await
        .iter()
        .filter(|r| r["account_sid"] == ACCOUNT)
        .count();
    assert_eq!(a_calls, 200);
    st.proxy.stop().await;
}

#[tokio::test]
async fn a_full_line_gets_the_proxys_own_twilio_shaped_429() {
    let st = shielded(|c| {
        c.shield.max_concurrent_per_account = 1;
        c.shield.max_queue_wait_ms = 100;
    })
    .await;
    let hold = st
        .emu
        .add_rule_id(json!({"path": "^/v1/Conversations$", "times": 1,
            "action": {"kind": "hold"}}))
        .await;
    let first = spawn_get(&st, "/v1/Conversations");
    st.emu.wait_held(1).await;
    let r = get_as(&st, (ACCOUNT, TOKEN), "/v1/Conversations").await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-repair-proxy-error"], "shield-queue-full");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], 20429, "{body}");
    assert_eq!(body["status"], 429);
    assert!(
        body["message"].as_str().unwrap().contains("waiting"),
        "{body}"
    );
    st.emu.release_rule(hold).await;
    assert_eq!(first.await.unwrap(), 200);
    // The refused request never reached Twilio.
    assert_eq!(attempts(&st.emu, "GET", "/v1/Conversations").await, [200]);
    st.proxy.stop().await;
}

/// A repair under a cap of 1, with the account's other traffic queued
/// around it: the repair completes, and the account never had two
/// requests in flight at Twilio.
#[tokio::test]
async fn a_repair_under_the_cap_completes_and_keeps_the_account_under_it() {
    let (Stack { emu, proxy, .. }, alice) = Scene::new()
        .user("alice")
        .friendly("Alice A")
        .member_of_another()
        .armed(twilio_repair_proxy::emulator::FaultMode::Block)
        .proxy(|c| {
            c.shield.max_concurrent_per_account = 1;
            c.shield.max_queue_wait_ms = 60_000;
        })
        .start()
        .await;
    emu.add_rule(json!({"path": "^/v1/Services$", "action": {"kind": "latency", "ms": 20}}))
        .await;
    emu.reset_stats().await;
    let http = reqwest::Client::new();
    let load: Vec<_> = (0..20)
        .map(|_| {
            let http = http.clone();
            let url = proxy.url("/v1/Services");
            tokio::spawn(async move {
                http.get(url)
                    .basic_auth(ACCOUNT, Some(TOKEN))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let r = http
        .post(proxy.url(&alice.participants(alice.target())))
        .basic_auth(ACCOUNT, Some(TOKEN))
        .form(&[("Identity", "alice")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-repair-outcome"], "repaired");
    for t in load {
        assert_eq!(t.await.unwrap(), 200);
    }
    // The User is back with its other membership.
    let (s, user) = emu.get(&alice.user_path()).await;
    assert_eq!(s, 200);
    assert_eq!(user["friendly_name"], "Alice A");
    let (s, _) = emu.get(&alice.participant(alice.other())).await;
    assert_eq!(s, 200);
    let stats = emu.stats().await;
    assert_eq!(
        stats["accounts"][ACCOUNT]["max_in_flight"].as_u64(),
        Some(1),
        "{stats}"
    );
    proxy.stop().await;
}

/// The helper libraries, whose first Participant create Twilio answers
/// 429: straight to the emulator they raise (twilio-python has no retry,
/// twilio-node's `autoRetry` is off by default); through the shield they
/// get the participant.
async fn a_library_sees_success_where_it_would_raise_on_429(lib: crate::sdk::Lib) {
    use crate::sdk::{ok, run, sids};
    let first_create_429 = too_many("POST", "/Participants$", Some(1), Some(0));
    let emu = start_emulator(|_| {}).await;
    emu.add_rule(first_create_429.clone()).await;
    // The scenario stops when its first create raises: `run` fails, with
    // the library's error on its stderr.
    let origin = emu.origin();
    let direct = tokio::spawn(async move { run(lib, &origin, &["--identity", "alice"]).await });
    let panic = direct.await.unwrap_err().into_panic();
    let why = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(why.contains("first create failed"), "{why}");
    assert!(why.contains(lib.error_class()), "{why}");
    assert!(why.contains("20429"), "{why}");

    let st = shielded(retrying).await;
    st.emu.add_rule(first_create_429).await;
    let out = run(lib, &st.proxy.url(""), &["--identity", "alice"]).await;
    let (is, ch) = sids(&out);
    let p = ok(&out, "create");
    assert_eq!(p["identity"], "alice", "{p}");
    assert_eq!(p["conversation_sid"], ch.as_str());
    assert_eq!(p["chat_service_sid"], is.as_str());
    let creates = attempts(&st.emu, "POST", "/Participants").await;
    assert_eq!(creates[..2], [429, 201], "{creates:?}");
    st.proxy.stop().await;
}

#[tokio::test]
async fn python_sees_success_through_the_shield() {
    a_library_sees_success_where_it_would_raise_on_429(crate::sdk::Lib::Python).await;
}

#[tokio::test]
async fn node_sees_success_through_the_shield() {
    a_library_sees_success_where_it_would_raise_on_429(crate::sdk::Lib::Node).await;
}

/// The value of a `trp_shield_*{class="account"}` series.
async fn account_gauge(st: &Stack, name: &str) -> i64 {
    let text = reqwest::get(st.proxy.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("{name}{{class=\"account\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// Poll `f` until it holds (bounded: "it did not hang forever").
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never: {what}");
}

/// A raw request of `ACCOUNT` on a socket the test then drops.
async fn send_and_hang_up(st: &Stack, method: &str, path: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(st.proxy.addr).await.unwrap();
    let auth = base64_user(ACCOUNT, TOKEN);
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    s
}

fn base64_user(user: &str, pass: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
}

/// A client that hangs up while its request waits in line gives its place
/// back: the line empties, no slot is lost, and the next request of the
/// account goes through at once when the slot is freed.
#[tokio::test]
async fn a_client_that_hangs_up_in_line_loses_no_slot() {
    let st = shielded(|c| {
        c.shield.max_concurrent_per_account = 1;
        c.shield.max_queue_wait_ms = 60_000;
    })
    .await;
    let hold = st
        .emu
        .add_rule_id(json!({"path": "^/v1/Conversations$", "times": 1,
            "action": {"kind": "hold"}}))
        .await;
    let first = spawn_get(&st, "/v1/Conversations");
    st.emu.wait_held(1).await;
    let gone = send_and_hang_up(&st, "GET", "/v1/Conversations").await;
    eventually("the second request waits in line", || {
        account_gauge(&st, "trp_shield_queue_length").map(|n| n == 1)
    })
    .await;
    drop(gone);
    eventually("the line is empty once its client left", || {
        account_gauge(&st, "trp_shield_queue_length").map(|n| n == 0)
    })
    .await;
    assert_eq!(account_gauge(&st, "trp_shield_in_flight").await, 1);
    st.emu.release_rule(hold).await;
    assert_eq!(first.await.unwrap(), 200);
    eventually("no slot is held", || {
        account_gauge(&st, "trp_shield_in_flight").map(|n| n == 0)
    })
    .await;
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        get_as(&st, (ACCOUNT, TOKEN), "/v1/Conversations"),
    )
    .await
    .expect("the next request found a free slot");
    assert_eq!(r.status(), 200);
    // The request whose client left never reached Twilio.
    assert_eq!(
        attempts(&st.emu, "GET", "/v1/Conversations").await,
        [200, 200]
    );
    st.proxy.stop().await;
}

/// A client that hangs up while the shield sleeps out a `Retry-After` is
/// not re-sent for: a POST nobody waits for any more must not reach
/// Twilio (the client may well send it again itself).
#[tokio::test]
async fn a_client_that_hangs_up_during_retry_after_is_not_re_sent() {
    let st = shielded(|c| {
        retrying(c);
        c.shield.max_concurrent_per_account = 1;
    })
    .await;
    st.emu
        .add_rule(too_many("GET", "^/v1/Conversations$", Some(1), Some(1)))
        .await;
    let gone = send_and_hang_up(&st, "GET", "/v1/Conversations").await;
    eventually("the first attempt was answered 429", || async {
        attempts(&st.emu, "GET", "/v1/Conversations").await == [429]
    })
    .await;
    drop(gone);
    // Past the Retry-After (1 s): a re-send would have been logged by now
    // (a fixed wait that proves an absence).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(attempts(&st.emu, "GET", "/v1/Conversations").await, [429]);
    assert_eq!(account_gauge(&st, "trp_shield_in_flight").await, 0);
    st.proxy.stop().await;
}

/// An upstream that answers `first()` to the first request of each
/// (method, target, body) and 200 `{"len": <body length>}` to the next.
async fn first_429(
    first: impl Fn() -> http::Response<http_body_util::Full<bytes::Bytes>> + Send + Sync + 'static,
) -> Upstream {
    let seen = std::sync::Mutex::new(std::collections::HashSet::new());
    upstream(std::sync::Arc::new(move |s: &Seen| {
        let key = (s.method.clone(), s.target.clone(), s.body.clone());
        if seen.lock().unwrap().insert(key) {
            first()
        } else {
            json(200, &format!("{{\"len\":{}}}", s.body.len()))
        }
    }))
    .await
}

fn plain_429(
    retry_after: Option<&'static str>,
) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let mut r = json(
        429,
        r#"{"code":20429,"message":"Too Many Requests","status":429}"#,
    );
    if let Some(v) = retry_after {
        r.headers_mut()
            .insert("retry-after", http::HeaderValue::from_static(v));
    }
    r
}

async fn shield_before(up: &Upstream, tweak: impl FnOnce(&mut Config)) -> Proxy {
    let mut c = test_config(&up.url());
    retrying(&mut c);
    tweak(&mut c);
    start_proxy(c).await
}

fn raw(method: &str, path: &str, extra: &str, body: &str) -> String {
    let auth = base64_user(ACCOUNT, TOKEN);
    format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\n\
         {extra}Connection: close\r\n\r\n{body}"
    )
}

fn chunked(body: &str) -> String {
    let half = body.len() / 2;
    format!(
        "{:x}\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        half,
        &body[..half],
        body.len() - half,
        &body[half..]
    )
}

/// The replay bound is inclusive: a body of exactly
/// `max_replay_body_bytes` is re-sent, one byte more passes its 429
/// through, with a `Content-Length` or chunked alike; a chunked body is
/// re-sent whole.
#[tokio::test]
async fn the_replay_bound_is_exact_with_a_length_or_chunked() {
    const BOUND: usize = 100;
    let up = first_429(|| plain_429(Some("0"))).await;
    let proxy = shield_before(&up, |c| c.shield.max_replay_body_bytes = BOUND).await;
    let wait = Duration::from_secs(10);
    let path = messages_path(ACCOUNT);
    for (n, retried) in [(BOUND, true), (BOUND + 1, false)] {
        for (i, te) in [false, true].into_iter().enumerate() {
            // A distinct body per case (the upstream's 429 is per body).
            let body = format!("{}{}", i, "x".repeat(n - 1));
            let req = if te {
                raw(
                    "POST",
                    &path,
                    "Transfer-Encoding: chunked\r\n",
                    &chunked(&body),
                )
            } else {
                raw("POST", &path, &format!("Content-Length: {n}\r\n"), &body)
            };
            let got = raw_exchange(proxy.addr, req.as_bytes(), wait).await;
            let lower = got.to_ascii_lowercase();
            if retried {
                assert!(got.starts_with("HTTP/1.1 200 "), "{n} chunked={te}: {got}");
                assert!(lower.contains("x-repair-proxy-retries: 1"), "{got}");
                assert!(got.ends_with(&format!("{{\"len\":{n}}}")), "{got}");
            } else {
                assert!(got.starts_with("HTTP/1.1 429 "), "{n} chunked={te}: {got}");
                assert!(!lower.contains("x-repair-proxy-retries"), "{got}");
            }
        }
    }
    let sent: Vec<usize> = up.requests().iter().map(|s| s.body.len()).collect();
    assert_eq!(sent, [BOUND, BOUND, BOUND, BOUND, BOUND + 1, BOUND + 1]);
    proxy.stop().await;
}

/// HEAD and OPTIONS are retried like any method, and their answers keep
/// their framing (a HEAD's 200 has no body).
#[tokio::test]
async fn head_and_options_are_retried() {
    let up = first_429(|| plain_429(Some("0"))).await;
    let proxy = shield_before(&up, |_| {}).await;
    let wait = Duration::from_secs(10);
    for m in ["HEAD", "OPTIONS"] {
        let got = raw_exchange(proxy.addr, raw(m, "/v1/Services", "", "").as_bytes(), wait).await;
        assert!(got.starts_with("HTTP/1.1 200 "), "{m}: {got}");
        assert!(
            got.to_ascii_lowercase()
                .contains("x-repair-proxy-retries: 1"),
            "{got}"
        );
        if m == "HEAD" {
            assert!(
                got.ends_with("\r\n\r\n"),
                "no body after a HEAD's head: {got}"
            );
        }
    }
    assert_eq!(up.requests().len(), 4);
    proxy.stop().await;
}

/// A 429 whose body is large, or not JSON at all, is read (bounded) and
/// dropped before the re-send; the client gets the success.
#[tokio::test]
async fn a_429_with_a_large_or_non_json_body_is_retried() {
    for size in [10, 1024 * 1024] {
        let up = first_429(move || {
            http::Response::builder()
                .status(429)
                .header("content-type", "text/html")
                .body(http_body_util::Full::new(bytes::Bytes::from(
                    "<html>slow down</html>".repeat(size / 10),
                )))
                .unwrap()
        })
        .await;
        let proxy = shield_before(&up, |_| {}).await;
        let r = tokio::time::timeout(
            Duration::from_secs(20),
            reqwest::Client::new()
                .get(proxy.url("/v1/Services"))
                .basic_auth(ACCOUNT, Some(TOKEN))
                .send(),
        )
        .await
        .expect("did not hang")
        .unwrap();
        let (status, retries, _) = answer(r).await;
        assert_eq!((status, retries.as_deref()), (200, Some("1")), "{size}");
        proxy.stop().await;
    }
}

/// `Retry-After` as an HTTP date (past: re-sent at once), and one too far
/// away to wait for within `max_wait_ms` (as a date, as seconds, and as a
/// number of seconds beyond any clock): the 429 goes back untouched.
#[tokio::test]
async fn retry_after_dates_and_waits_too_long_to_take() {
    for (v, retried) in [
        ("Sun, 06 Nov 1994 08:49:37 GMT", true),
        ("Fri, 31 Dec 9999 23:59:59 GMT", false),
        ("86400", false),
        ("99999999999999999999999999", false),
    ] {
        let up = first_429(move || plain_429(Some(v))).await;
        let proxy = shield_before(&up, |c| c.shield.max_wait_ms = 60_000).await;
        let r = tokio::time::timeout(
            Duration::from_secs(20),
            reqwest::Client::new()
                .get(proxy.url("/v1/Services"))
                .basic_auth(ACCOUNT, Some(TOKEN))
                .send(),
        )
        .await
        .expect("did not hang")
        .unwrap();
        let (status, retries, _) = answer(r).await;
        if retried {
            assert_eq!((status, retries.as_deref()), (200, Some("1")), "{v}");
        } else {
            assert_eq!((status, retries.as_deref()), (429, None), "{v}");
            assert_eq!(up.requests().len(), 1, "{v}");
        }
        proxy.stop().await;
    }
}

/// The budget is one per replica (README, "Rate limits"): one account's
/// 429 storm spends it, and another account's 429 on the same replica is
/// then passed through, as it would be without the shield.
#[tokio::test]
async fn one_accounts_storm_spends_the_shared_budget() {
    let st = shielded(|c| {
        retrying(c);
        c.shield.budget_percent = 20;
        c.shield.budget_window_ms = 600_000;
        c.shield.budget_min_retries_per_second = 0;
    })
    .await;
    st.emu.add_account(ACCOUNT_B, TOKEN_B, None).await;
    st.emu
        .add_rule(
            json!({"account_sid": ACCOUNT, "path": "^/v1/Conversations$",
            "action": {"kind": "too_many_requests", "retry_after": 0}}),
        )
        .await;
    for _ in 0..10 {
        let r = get_as(&st, (ACCOUNT, TOKEN), "/v1/Conversations").await;
        assert_eq!(r.status(), 429);
    }
    // 10 requests, 2 retries (20 %): the budget is spent.
    assert_eq!(
        attempts(&st.emu, "GET", "/v1/Conversations").await.len(),
        12
    );
    st.emu
        .add_rule(
            json!({"account_sid": ACCOUNT_B, "path": "^/v1/Services$", "times": 1,
            "action": {"kind": "too_many_requests", "retry_after": 0}}),
        )
        .await;
    let r = get_as(&st, (ACCOUNT_B, TOKEN_B), "/v1/Services").await;
    let (status, retries, _) = answer(r).await;
    assert_eq!((status, retries), (429, None));
    assert_eq!(attempts(&st.emu, "GET", "/v1/Services").await, [429]);
    st.proxy.stop().await;
}

/// `max_wait_ms` bounds a retried request's wait in line too: after a
/// 429, a re-send that finds the account's slots taken waits for one no
/// longer than the request's deadline (then the proxy's own 429), not a
/// whole `max_queue_wait_ms` more.
#[tokio::test]
async fn a_retry_waits_in_line_no_longer_than_the_deadline() {
    let st = shielded(|c| {
        retrying(c);
        c.shield.max_wait_ms = 1500;
        c.shield.max_concurrent_per_account = 1;
        c.shield.max_queue_wait_ms = 600_000;
    })
    .await;
    st.emu
        .add_rule(too_many("GET", "^/v1/Conversations$", Some(1), Some(1)))
        .await;
    let hold = st
        .emu
        .add_rule_id(json!({"path": "^/v1/Services$", "times": 1, "action": {"kind": "hold"}}))
        .await;
    let retried = {
        let http = st.http.clone();
        let url = st.proxy.url("/v1/Conversations");
        tokio::spawn(async move {
            http.get(url)
                .basic_auth(ACCOUNT, Some(TOKEN))
                .send()
                .await
                .unwrap()
        })
    };
    eventually("the first attempt was answered 429", || async {
        attempts(&st.emu, "GET", "/v1/Conversations").await == [429]
    })
    .await;
    // While it sleeps out its Retry-After, another request takes the slot.
    let holder = spawn_get(&st, "/v1/Services");
    st.emu.wait_held(1).await;
    let r = tokio::time::timeout(Duration::from_secs(10), retried)
        .await
        .expect("the retry gave up in line at its deadline")
        .unwrap();
    let (status, retries, body) = answer(r).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(retries.as_deref(), Some("1"));
    assert_eq!(attempts(&st.emu, "GET", "/v1/Conversations").await, [429]);
    st.emu.release_rule(hold).await;
    assert_eq!(holder.await.unwrap(), 200);
    st.proxy.stop().await;
}
