//! Regression tests for issue 10, items 1–5 and 9: what the repair may act
//! on, with whose credential, and what an intercepted create is answered
//! when Twilio's answers are not what the workflow expects.
//!
//! Each test asserts what a user (or another tenant) notices, read from the
//! emulator's own request log or from a recording fake Twilio: which
//! requests were made, with which account, and what the caller got back.

use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use http_body_util::Full;
use serde_json::{Value, json};
use twilio_repair_proxy::emulator::{AccountConfig, FaultMode};

/// Account A's API key: the operator repair credential acts for A.
const A_KEY: &str = "SKaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const A_KEY_SECRET: &str = "akeysecret";
/// Another tenant on the same Twilio (and the same proxy).
const B: &str = "ACbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const B_TOKEN: &str = "btoken0000000000000000000000000b";

/// Short timeouts for the binary.
const FAST: &[(&str, &str)] = &[
    ("TRP_REPAIR_RETRY_INITIAL_BACKOFF_MS", "10"),
    ("TRP_REPAIR_RETRY_MAX_BACKOFF_MS", "100"),
    ("TRP_REPAIR_STEP_TIMEOUT_MS", "3000"),
    ("TRP_REPAIR_WORKFLOW_DEADLINE_MS", "10000"),
];

/// A create through the proxy at `addr` with these Basic credentials and
/// this raw form body: status, outcome header, body bytes.
async fn create_raw(
    addr: &str,
    (user, pass): (&str, &str),
    path: &str,
    body: &str,
) -> (u16, Option<String>, Bytes) {
    let r = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .basic_auth(user, Some(pass))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    let outcome = r
        .headers()
        .get("x-repair-outcome")
        .map(|v| v.to_str().unwrap().to_string());
    (s, outcome, r.bytes().await.unwrap())
}

fn as_json(b: &Bytes) -> Value {
    serde_json::from_slice(b).unwrap_or(Value::Null)
}

/// Requests in the emulator's log that touched a User (`.../Users...`).
fn user_requests(log: &[Value]) -> Vec<String> {
    log.iter()
        .filter(|r| r["path"].as_str().is_some_and(|p| p.contains("/Users")))
        .map(|r| format!("{} {} {}", r["method"], r["path"], r["status"]))
        .collect()
}

fn summary(log: &[Value]) -> String {
    log.iter()
        .map(|r| {
            format!(
                "{} {} {} as {}",
                r["method"].as_str().unwrap_or(""),
                r["path"].as_str().unwrap_or(""),
                r["status"],
                r["account_sid"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------
// Item 1: tenancy.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_account_can_never_act_through_the_operator_key() {
    let emu = start_emulator(|c| {
        c.api_key_sid = Some(A_KEY.into());
        c.api_key_secret = Some(A_KEY_SECRET.into());
        c.extra_accounts = vec![AccountConfig {
            account_sid: B.into(),
            auth_token: B_TOKEN.into(),
            api_key_sid: None,
            api_key_secret: None,
        }];
        affected(FaultMode::Block, &["bea", "ada"])(c);
    })
    .await;
    let b_auth = (B, B_TOKEN);
    let call_b = |method: reqwest::Method, path: String, form: Vec<(&'static str, String)>| {
        let emu = &emu;
        async move {
            let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            emu.call_as(b_auth, method, &path, &form).await
        }
    };
    // A's conversation with its member amy.
    let amy = Scene::new()
        .user("amy")
        .in_default_service()
        .member_of_another()
        .creating_into(0)
        .build_in(&emu)
        .await;
    let a_conv = amy.other();
    // B's stale identity bea: a User with fields, another membership, and
    // a conversation where her next create answers 20404.
    let bea = Scene::new()
        .of_account(B, B_TOKEN)
        .in_default_service()
        .user("bea")
        .friendly("Bea B")
        .attributes(r#"{"tenant":"b"}"#)
        .member_of_another_with(r#"{"seat":2}"#)
        .armed(FaultMode::Block)
        .build_in(&emu)
        .await;
    let (b_other, b_armed) = (bea.other(), bea.target());

    // A's own stale identity ada, to show the operator key is live.
    let ada = Scene::new()
        .in_default_service()
        .user("ada")
        .friendly("Ada A")
        .armed(FaultMode::Block)
        .build_in(&emu)
        .await;
    let a_armed = ada.target();

    let dir = tempfile::tempdir().unwrap().keep();
    let mut env = FAST.to_vec();
    env.extend_from_slice(&[
        ("TRP_REPAIR_API_KEY_SID", A_KEY),
        ("TRP_REPAIR_API_KEY_SECRET", A_KEY_SECRET),
        ("TRP_REPAIR_ACCOUNT_SID", ACCOUNT),
    ]);
    let proxy = spawn_proxy_in(&dir, &emu.origin(), &env).await;
    emu.clear_requests().await;

    // B's own repair runs, with B's credential only.
    let (s, outcome, body) = create_raw(
        &proxy.addr,
        b_auth,
        &format!("/v1/Conversations/{b_armed}/Participants"),
        "Identity=bea",
    )
    .await;
    assert_eq!(
        (s, outcome.as_deref()),
        (201, Some("repaired")),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let log = emu.log_json().await;
    let as_a: Vec<&Value> = log.iter().filter(|r| r["account_sid"] == ACCOUNT).collect();
    assert!(
        as_a.is_empty(),
        "B's request caused calls as account A:\n{}",
        summary(&log)
    );
    assert!(
        log.iter().all(|r| r["auth_user"] == B),
        "every call made for B carries B's own credential:\n{}",
        summary(&log)
    );
    let (s, u) = call_b(reqwest::Method::GET, "/v1/Users/bea".into(), vec![]).await;
    assert_eq!(s, 200);
    assert_eq!(u["friendly_name"], "Bea B");
    assert_eq!(u["attributes"], r#"{"tenant":"b"}"#);
    let (s, m) = call_b(
        reqwest::Method::GET,
        format!("/v1/Conversations/{b_other}/Participants/bea"),
        vec![],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(m["attributes"], r#"{"seat":2}"#);

    // B probing A's conversation learns nothing: A's member and a stranger
    // get the same answer, and nothing is done as A.
    emu.clear_requests().await;
    let path = format!("/v1/Conversations/{a_conv}/Participants");
    let member = create_raw(&proxy.addr, b_auth, &path, "Identity=amy").await;
    let stranger = create_raw(&proxy.addr, b_auth, &path, "Identity=nobody-at-all").await;
    assert_eq!(
        (member.0, &member.1, &member.2),
        (stranger.0, &stranger.1, &stranger.2),
        "A's member: {:?}; a stranger: {:?}",
        String::from_utf8_lossy(&member.2),
        String::from_utf8_lossy(&stranger.2)
    );
    assert_ne!(member.0, 201);
    assert_ne!(member.0, 409);
    let log = emu.log_json().await;
    assert!(
        log.iter().all(|r| r["account_sid"] != ACCOUNT),
        "B's probe caused calls as account A:\n{}",
        summary(&log)
    );
    // amy is untouched in A's conversation.
    let (s, _) = emu
        .get(&format!("/v1/Conversations/{a_conv}/Participants/amy"))
        .await;
    assert_eq!(s, 200);

    // The operator key is live: A's own repair acts with it.
    emu.clear_requests().await;
    let (s, outcome, body) = create_raw(
        &proxy.addr,
        (ACCOUNT, TOKEN),
        &format!("/v1/Conversations/{a_armed}/Participants"),
        "Identity=ada",
    )
    .await;
    assert_eq!(
        (s, outcome.as_deref()),
        (201, Some("repaired")),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let log = emu.log_json().await;
    assert!(
        log.iter()
            .any(|r| r["method"] == "DELETE" && r["auth_user"] == A_KEY),
        "A's repair used the operator key:\n{}",
        summary(&log)
    );
    assert!(!proxy.stderr().contains(A_KEY_SECRET));
}

// ---------------------------------------------------------------------------
// Items 2 and 3: ambiguous bodies and dot segments.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_identity_keys_disable_the_repair() {
    let emu = start_emulator(affected(FaultMode::Block, &["victim", "bystander"])).await;
    let victim = Scene::new()
        .user("victim")
        .friendly("Keep Me")
        .armed(FaultMode::Block)
        .build_in(&emu)
        .await;
    // bystander is stale too, so whichever value Twilio uses, the fault fires.
    let bystander = Scene::new()
        .user("bystander")
        .friendly("Innocent")
        .armed(FaultMode::Block)
        .next_to(&victim)
        .build_in(&emu)
        .await;
    let (b, ch) = (&victim.base, victim.target());
    let victim_sid = victim.user_sid.clone().unwrap();
    let bystander_sid = bystander.user_sid.unwrap();
    let proxy = start_proxy(fast_config(&emu.origin())).await;
    emu.clear_requests().await;

    let path = format!("{b}/Conversations/{ch}/Participants");
    let addr = proxy.addr.to_string();
    for body in [
        "Identity=victim&Identity=bystander",
        "Identity=victim&Attributes=%7B%7D&Identity=bystander",
    ] {
        let (s, outcome, resp) = create_raw(&addr, (ACCOUNT, TOKEN), &path, body).await;
        assert_eq!(s, 404, "{}", String::from_utf8_lossy(&resp));
        assert_eq!(as_json(&resp)["code"], 20404, "the original 404");
        assert_eq!(outcome.as_deref(), Some("disabled"), "{body}");
    }
    let log = emu.log_json().await;
    assert_eq!(
        log.iter()
            .filter(|r| r["method"] == "POST" && r["path"] == path.as_str())
            .count(),
        2,
        "each create reached Twilio once:\n{}",
        summary(&log)
    );
    assert!(
        user_requests(&log).is_empty(),
        "no User may be touched:\n{}",
        summary(&log)
    );
    for (identity, sid, name) in [
        ("victim", &victim_sid, "Keep Me"),
        ("bystander", &bystander_sid, "Innocent"),
    ] {
        let (s, u) = emu.get(&format!("{b}/Users/{identity}")).await;
        assert_eq!((s, u["sid"].as_str()), (200, Some(sid.as_str())));
        assert_eq!(u["friendly_name"], name);
    }
    proxy.stop().await;
}

fn has_dot_segment(path: &str) -> bool {
    let path = path.split('?').next().unwrap_or("");
    path.split('/').any(|seg| {
        let d = percent_encoding::percent_decode_str(seg).decode_utf8_lossy();
        d == "." || d == ".."
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segment_identities_are_never_put_in_a_path() {
    let emu = start_emulator(affected(FaultMode::Block, &[".", ".."])).await;
    // The participant create makes the User; removing it arms the fault.
    let mut scenes = Vec::new();
    for identity in [".", ".."] {
        let scene = Scene::new().user(identity).armed(FaultMode::Block);
        scenes.push(scene.build_in(&emu).await);
    }
    let proxy = start_proxy(fast_config(&emu.origin())).await;
    emu.clear_requests().await;
    let addr = proxy.addr.to_string();
    for (scene, body) in [
        (&scenes[0], "Identity=."),
        (&scenes[0], "Identity=%2E"),
        (&scenes[1], "Identity=.."),
        (&scenes[1], "Identity=%2e%2E"),
    ] {
        let path = scene.participants(scene.target());
        let (s, outcome, resp) = create_raw(&addr, (ACCOUNT, TOKEN), &path, body).await;
        assert_eq!(s, 404, "{body}: {}", String::from_utf8_lossy(&resp));
        assert_eq!(as_json(&resp)["code"], 20404, "{body}: the original 404");
        assert_eq!(outcome.as_deref(), Some("disabled"), "{body}");
    }
    let log = emu.log_json().await;
    let dotted: Vec<&str> = log
        .iter()
        .filter_map(|r| r["path"].as_str())
        .filter(|p| has_dot_segment(p))
        .collect();
    assert!(dotted.is_empty(), "paths with a dot segment: {dotted:?}");
    assert!(
        user_requests(&log).is_empty(),
        "no User may be touched:\n{}",
        summary(&log)
    );
    assert!(log.iter().all(|r| r["method"] != "DELETE"));
    proxy.stop().await;
}

// ---------------------------------------------------------------------------
// Item 4: a 20404 about another resource.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20404_naming_another_resource_is_passed_through() {
    let (Stack { emu, proxy, .. }, rita) = Scene::new()
        .user("rita")
        .friendly("Rita R")
        .member_of_another()
        .start()
        .await;
    let (b, other, ch) = (&rita.base, rita.other(), rita.target());
    let message =
        "The requested resource /v1/Roles/RL33333333333333333333333333333333 was not found";
    emu.add_rule(json!({
        "method": "POST",
        "path": format!("^{b}/Conversations/{ch}/Participants$"),
        "times": 1,
        "action": {"kind": "status", "status": 404, "code": 20404, "message": message},
    }))
    .await;
    emu.clear_requests().await;
    let (s, outcome, resp) = create_raw(
        &proxy.addr.to_string(),
        (ACCOUNT, TOKEN),
        &format!("{b}/Conversations/{ch}/Participants"),
        "Identity=rita",
    )
    .await;
    assert_eq!(s, 404, "{}", String::from_utf8_lossy(&resp));
    let v = as_json(&resp);
    assert_eq!(v["code"], 20404);
    assert_eq!(v["message"], message, "the original 404, untouched");
    assert!(
        outcome.is_none() || outcome.as_deref() == Some("genuine"),
        "no repair: {outcome:?}"
    );
    let log = emu.log_json().await;
    assert_eq!(log.len(), 1, "only the create itself:\n{}", summary(&log));
    let (s, u) = emu.get(&format!("{b}/Users/rita")).await;
    assert_eq!((s, &u["friendly_name"]), (200, &json!("Rita R")));
    let (s, _) = emu
        .get(&format!("{b}/Conversations/{other}/Participants/rita"))
        .await;
    assert_eq!(s, 200);
    proxy.stop().await;
}

// ---------------------------------------------------------------------------
// Items 5 and 9: a fake Twilio with answers the emulator cannot give.
// ---------------------------------------------------------------------------

const IS: &str = "IS44444444444444444444444444444444";
const CH: &str = "CH55555555555555555555555555555555";

fn own_20404() -> String {
    json!({
        "code": 20404,
        "message": format!("The requested resource /v1/Services/{IS}/Conversations/{CH}/Participants was not found"),
        "more_info": "https://www.twilio.com/docs/errors/20404",
        "status": 404,
    })
    .to_string()
}

fn create_path() -> String {
    format!("/v1/Services/{IS}/Conversations/{CH}/Participants")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_html_check_is_not_a_201() {
    let html = "<html><body><h1>Maintenance</h1></body></html>";
    let up = upstream(std::sync::Arc::new(move |s: &Seen| {
        let path = s.target.split('?').next().unwrap_or("").to_string();
        if s.method == "POST" && path == create_path() {
            return json(404, &own_20404());
        }
        if s.method == "GET" && path.starts_with(&format!("{}/", create_path())) {
            return hyper::Response::builder()
                .status(200)
                .header("content-type", "text/html")
                .body(Full::new(Bytes::from_static(html.as_bytes())))
                .unwrap();
        }
        if s.method == "GET" && path == format!("/v1/Services/{IS}/Conversations/{CH}") {
            return json(
                200,
                &json!({"sid": CH, "account_sid": ACCOUNT, "chat_service_sid": IS}).to_string(),
            );
        }
        json(
            404,
            &json!({"code": 20404, "message": "not found", "status": 404}).to_string(),
        )
    }))
    .await;
    let proxy = start_proxy(fast_config(&up.url())).await;
    let (s, outcome, resp) = create_raw(
        &proxy.addr.to_string(),
        (ACCOUNT, TOKEN),
        &create_path(),
        "Identity=kim",
    )
    .await;
    let text = String::from_utf8_lossy(&resp).into_owned();
    assert_ne!(s, 201, "a made-up 201: {text}");
    assert!(
        !text.contains("<html>"),
        "the check's HTML reached the caller"
    );
    assert_eq!(s, 404, "the original 404: {text}");
    assert_eq!(as_json(&resp)["code"], 20404);
    assert_eq!(outcome.as_deref(), Some("failed"));
    let seen = up.requests();
    assert!(
        seen.iter()
            .all(|r| r.method != "DELETE" && !r.target.contains("/Users")),
        "no User may be touched after a check that told nothing: {:?}",
        seen.iter()
            .map(|r| format!("{} {}", r.method, r.target))
            .collect::<Vec<_>>()
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_body_over_64_kib_passes_through_untouched() {
    // Looks like the fault's 20404 in its first bytes, then runs on to
    // 100 KiB: too large to be Twilio's, so it is passed through as is.
    let mut big = own_20404();
    big.pop(); // the closing brace
    big.push_str(",\"padding\":\"");
    while big.len() < 100 * 1024 {
        big.push_str("0123456789abcdef");
    }
    big.push_str("\"}");
    let body = Bytes::from(big);
    let b2 = body.clone();
    let up = upstream(std::sync::Arc::new(move |s: &Seen| {
        if s.method == "POST" {
            return hyper::Response::builder()
                .status(404)
                .header("content-type", "application/json")
                .body(Full::new(b2.clone()))
                .unwrap();
        }
        json(500, "{}")
    }))
    .await;
    let proxy = start_proxy(test_config(&up.url())).await;
    let (s, outcome, resp) = create_raw(
        &proxy.addr.to_string(),
        (ACCOUNT, TOKEN),
        &create_path(),
        "Identity=kim",
    )
    .await;
    assert_eq!(s, 404, "never a 5xx for an intercepted create");
    assert_eq!(resp.len(), body.len());
    assert!(resp == body, "the 404 body must pass through byte for byte");
    assert!(outcome.is_none() || outcome.as_deref() == Some("genuine"));
    let seen = up.requests();
    assert_eq!(seen.len(), 1, "no workflow call after an unreadable 404");
    proxy.stop().await;
}

// ---------------------------------------------------------------------------
// Item 6 (the create-body part): a stalled body is a 408.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_create_body_gets_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (Stack { emu, proxy, .. }, scene) = Scene::new()
        .proxy(|c| c.limits.idle_timeout_ms = 300)
        .start()
        .await;
    let (is, ch) = (scene.is().unwrap(), scene.target());
    emu.clear_requests().await;
    let auth = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("{ACCOUNT}:{TOKEN}"))
    };
    let head = format!(
        "POST /v1/Services/{is}/Conversations/{ch}/Participants HTTP/1.1\r\n\
         Host: {}\r\n\
         Authorization: Basic {auth}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: 100\r\n\r\nIdentity=k",
        proxy.addr
    );
    let mut sock = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    sock.write_all(head.as_bytes()).await.unwrap();
    // Then nothing: read what the proxy answers (bounded: it must not hang).
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got);
                    if let Some((h, b)) = text.split_once("\r\n\r\n") {
                        let len = h
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if b.len() >= len {
                            break;
                        }
                    }
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("a stalled body must not hold the exchange open forever");
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {text}"));
    assert_eq!(v["status"], 408, "Twilio-shaped: {v}");
    assert!(v["code"].is_u64() && v["message"].is_string() && v["more_info"].is_string());
    let log = emu.log_json().await;
    assert!(
        log.is_empty(),
        "a body never completed is never forwarded:\n{}",
        summary(&log)
    );
    proxy.stop().await;
}
