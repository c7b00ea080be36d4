//! `POST /repairs`: an operator's repair through the running proxy (the
//! binary, with the operator credential and an admin token), against the
//! emulator: refused without the token, a typo refused with nothing
//! created, a dry run that only reads, a repair that puts everything back
//! and shows as an incident, one delete when a fault's repair of the
//! same identity runs at the same time, and a repair cut by SIGKILL that
//! the restarted proxy finishes.

use serde_json::{Value, json};

use crate::common::*;
use twilio_repair_proxy::emulator::FaultMode;

const ADMIN_TOKEN: &str = "operator-token-0123456789";

async fn proxy_for(emu: &Emu) -> Running {
    let dir = tempfile::tempdir().unwrap().keep();
    spawn_proxy_in(
        &dir,
        &emu.origin(),
        &[
            ("TRP_ADMIN_TOKEN", ADMIN_TOKEN),
            ("TRP_REPAIR_API_KEY_SID", ACCOUNT),
            ("TRP_REPAIR_API_KEY_SECRET", TOKEN),
            ("TRP_REPAIR_ACCOUNT_SID", ACCOUNT),
            ("TRP_REPAIR_RETRY_INITIAL_BACKOFF_MS", "10"),
            ("TRP_REPAIR_RETRY_MAX_BACKOFF_MS", "50"),
        ],
    )
    .await
}

async fn post_repair(proxy: &Running, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut r = reqwest::Client::new()
        .post(format!("http://{}/repairs", proxy.admin))
        .json(&body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `POST /repairs` for kim, sent in its own task (the test cuts it).
fn spawn_operator_repair(
    proxy: &Running,
    service_sid: String,
) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    let admin = proxy.admin.clone();
    tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("http://{admin}/repairs"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"service_sid": service_sid, "identity": "kim"}))
            .send()
            .await
    })
}

/// The event the mid-repair tests wait for: kim's User back under its
/// friendly name and its other membership back, polled every 20 ms at most
/// `tries` times; the User as read, or `None`.
async fn until_kim_is_back(emu: &Emu, kim: &Built, tries: usize) -> Option<Value> {
    let user_path = format!("{}/Users/kim", kim.base);
    let member = format!(
        "{}/Conversations/{}/Participants/kim",
        kim.base,
        kim.other()
    );
    for _ in 0..tries {
        let (s, user) = emu.get(&user_path).await;
        if s == 200 && user["friendly_name"] == "Kim K" && emu.get(&member).await.0 == 200 {
            return Some(user);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    None
}

fn writes(log: &[Value]) -> Vec<String> {
    log.iter()
        .filter(|r| r["method"] != "GET")
        .map(|r| format!("{} {}", r["method"], r["path"]))
        .collect()
}

#[tokio::test]
async fn an_operator_repair_goes_through_the_running_proxy_and_never_creates_a_user() {
    let (emu, kim) = Scene::new()
        .user("kim")
        .friendly("Kim K")
        .attributes(r#"{"tier":"gold"}"#)
        .member_of_another()
        .build()
        .await;
    let is = kim.is.clone().unwrap();
    let proxy = proxy_for(&emu).await;
    emu.clear_requests().await;

    // Without the admin token: refused.
    let (s, _) = post_repair(&proxy, None, json!({"service_sid": is, "identity": "kim"})).await;
    assert_eq!(s, 401);
    // A typo: refused, nothing written, no User made.
    let (s, v) = post_repair(
        &proxy,
        Some(ADMIN_TOKEN),
        json!({"service_sid": is, "identity": "typo-kim"}),
    )
    .await;
    assert_eq!(s, 404, "{v}");
    assert!(v.to_string().contains("typo-kim"), "{v}");
    let (s, v) = post_repair(
        &proxy,
        Some(ADMIN_TOKEN),
        json!({"service_sid": is, "identity": "typo-kim", "dry_run": true}),
    )
    .await;
    assert_eq!(s, 404, "{v}");
    assert!(writes(&emu.log_json().await).is_empty());
    assert_eq!(
        emu.get(&format!("{}/Users/typo-kim", kim.base)).await.0,
        404
    );
    // Bad input: a clear 400.
    let (s, _) = post_repair(&proxy, Some(ADMIN_TOKEN), json!({"identity": "kim"})).await;
    assert_eq!(s, 400);
    let (s, _) = post_repair(
        &proxy,
        Some(ADMIN_TOKEN),
        json!({"service_sid": "IS1/../x", "identity": "kim"}),
    )
    .await;
    assert_eq!(s, 400);

    // The command line's way to it: `repair --admin`.
    let (proxy_admin, is2) = (format!("http://{}", proxy.admin), is.clone());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin())
            .args([
                "repair",
                "--service",
                &is2,
                "--identity",
                "kim",
                "--dry-run",
                "--admin",
                &proxy_admin,
            ])
            .env("TRP_ADMIN_TOKEN", ADMIN_TOKEN)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["dry_run"], true, "{plan}");
    assert_eq!(plan["snapshot"]["friendly_name"], "Kim K");

    // A dry run reads and plans.
    let (s, v) = post_repair(
        &proxy,
        Some(ADMIN_TOKEN),
        json!({"service_sid": is, "identity": "kim", "dry_run": true}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let user_sid = kim.user_sid.clone().unwrap();
    assert!(v["plan"].to_string().contains(&user_sid), "{v}");
    assert!(writes(&emu.log_json().await).is_empty());

    // For real: one delete, the User back with its fields, its membership
    // back, an incident on the admin plane.
    let (s, v) = post_repair(
        &proxy,
        Some(ADMIN_TOKEN),
        json!({"service_sid": is, "identity": "kim"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["outcome"], "repaired", "{v}");
    let log = emu.log_json().await;
    let deletes: Vec<String> = writes(&log)
        .into_iter()
        .filter(|w| w.starts_with("\"DELETE\"") && w.contains("/Users/"))
        .collect();
    assert_eq!(deletes.len(), 1, "{:#?}", writes(&log));
    let (s, user) = emu.get(&format!("{}/Users/kim", kim.base)).await;
    assert_eq!(s, 200);
    assert_eq!(user["friendly_name"], "Kim K");
    assert_eq!(user["attributes"], r#"{"tier":"gold"}"#);
    assert_eq!(
        emu.get(&format!(
            "{}/Conversations/{}/Participants/kim",
            kim.base,
            kim.other()
        ))
        .await
        .0,
        200
    );
    let incidents = admin_json_with(&proxy.admin, "/incidents", ADMIN_TOKEN).await;
    let id = v["incident_id"].as_i64().unwrap();
    assert!(
        incidents["incidents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["id"] == id && i["outcome"] == "repaired"),
        "{incidents}"
    );
}

#[tokio::test]
async fn an_operator_repair_beside_a_faults_repair_of_the_same_identity_deletes_once() {
    let (emu, kim) = Scene::new()
        .user("kim")
        .friendly("Kim K")
        .member_of_another()
        .armed(FaultMode::Block)
        .build()
        .await;
    let is = kim.is.clone().unwrap();
    let proxy = proxy_for(&emu).await;
    emu.clear_requests().await;
    // The fault's repair takes a while to recreate the User, so the
    // operator's request arrives while it is under way.
    emu.add_rule(json!({"method": "POST", "path": "/Users$",
        "action": {"kind": "latency", "ms": 400}}))
        .await;
    let proxy_addr = proxy.addr.clone();
    let path = format!("{}/Conversations/{}/Participants", kim.base, kim.target());
    let create = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("http://{proxy_addr}{path}"))
            .basic_auth(ACCOUNT, Some(TOKEN))
            .form(&[("Identity", "kim")])
            .send()
            .await
            .unwrap()
    });
    // The event: the repair has deleted the User.
    emu.until_user_deleted().await;
    let (s, v) = post_repair(
        &proxy,
        Some(ADMIN_TOKEN),
        json!({"service_sid": is, "identity": "kim"}),
    )
    .await;
    assert_eq!(s, 409, "the repair under way is the one asked for: {v}");
    let created = create.await.unwrap();
    assert_eq!(created.status(), 201);
    let log = emu.log_json().await;
    let deletes = writes(&log)
        .into_iter()
        .filter(|w| w.starts_with("\"DELETE\"") && w.contains("/Users/US"))
        .count();
    assert_eq!(deletes, 1, "{:#?}", writes(&log));
    let (s, user) = emu.get(&format!("{}/Users/kim", kim.base)).await;
    assert_eq!(s, 200);
    assert_eq!(user["friendly_name"], "Kim K");
}

async fn admin_json_with(admin: &str, path: &str, token: &str) -> Value {
    reqwest::Client::new()
        .get(format!("http://{admin}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The operator hangs up in the middle: the repair goes on to the end
/// (the User back with its fields and membership), never cut between steps.
#[tokio::test]
async fn an_operator_who_hangs_up_mid_repair_does_not_cut_it() {
    let (emu, kim) = Scene::new()
        .user("kim")
        .friendly("Kim K")
        .attributes(r#"{"tier":"gold"}"#)
        .member_of_another()
        .build()
        .await;
    let is = kim.is.clone().unwrap();
    let proxy = proxy_for(&emu).await;
    emu.add_rule(json!({"method": "POST", "path": "/Users$",
        "action": {"kind": "latency", "ms": 400}}))
        .await;
    let asked = spawn_operator_repair(&proxy, is);
    emu.until_user_deleted().await;
    asked.abort();
    let user = until_kim_is_back(&emu, &kim, 300)
        .await
        .expect("the repair finished without its caller");
    assert_eq!(user["attributes"], r#"{"tier":"gold"}"#);
}

/// `repair.mode = "off"` by a reload refuses `POST /repairs` exactly as
/// `off` at start-up does (same status, same body), before anything is
/// read or written at Twilio; back to `repair`, the same request repairs.
#[tokio::test]
async fn repair_mode_off_by_reload_refuses_operator_repairs_like_off_at_start_up() {
    let (emu, kim) = Scene::new()
        .user("kim")
        .friendly("Kim K")
        .member_of_another()
        .build()
        .await;
    let is = kim.is.clone().unwrap();
    let ask = json!({"service_sid": is, "identity": "kim"});
    let credential = [
        ("TRP_ADMIN_TOKEN", ADMIN_TOKEN),
        ("TRP_REPAIR_API_KEY_SID", ACCOUNT),
        ("TRP_REPAIR_API_KEY_SECRET", TOKEN),
        ("TRP_REPAIR_ACCOUNT_SID", ACCOUNT),
    ];
    // Off at start-up: what the reloaded off must answer.
    let dir = tempfile::tempdir().unwrap().keep();
    let mut env = credential.to_vec();
    env.push(("TRP_REPAIR_MODE", "off"));
    let off_at_start = spawn_proxy_in(&dir, &emu.origin(), &env).await;
    let at_start = post_repair(&off_at_start, Some(ADMIN_TOKEN), ask.clone()).await;
    assert_eq!(at_start.0, 503, "{}", at_start.1);
    drop(off_at_start);

    let dir = tempfile::tempdir().unwrap().keep();
    let file = dir.join("proxy.toml");
    std::fs::write(&file, "[repair]\nmode = \"repair\"\n").unwrap();
    let mut env = credential.to_vec();
    env.push(("TRP_CONFIG", file.to_str().unwrap()));
    let proxy = spawn_proxy_in(&dir, &emu.origin(), &env).await;
    // A new file renamed over the old one: noticed once, one reload.
    let reload = |text: &str, n: usize| {
        let tmp = file.with_extension("new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        until_reloaded(&proxy, n)
    };
    reload("[repair]\nmode = \"off\"\n", 1).await;
    emu.clear_requests().await;
    let reloaded = post_repair(&proxy, Some(ADMIN_TOKEN), ask.clone()).await;
    assert_eq!(
        reloaded, at_start,
        "off by reload answers as off at start-up"
    );
    let seen = emu.log_json().await;
    assert!(seen.is_empty(), "nothing read or written: {seen:#?}");

    reload("[repair]\nmode = \"repair\"\n", 2).await;
    let (s, v) = post_repair(&proxy, Some(ADMIN_TOKEN), ask).await;
    assert_eq!((s, &v["outcome"]), (200, &json!("repaired")), "{v}");
}

/// Wait (bounded: 10 s) until the proxy has logged `n` applied reloads.
async fn until_reloaded(proxy: &Running, n: usize) {
    for _ in 0..500 {
        if proxy.stderr().matches("configuration reloaded").count() >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("not reloaded {n} times:\n{}", proxy.stderr());
}

/// The proxy is killed (SIGKILL) in the middle of an operator's repair,
/// between the User's delete and its recreate: the restarted proxy
/// finishes the journaled repair (the User back with its fields and its
/// membership), and the User is deleted once, never twice.
#[tokio::test]
async fn an_operator_repair_cut_by_kill_9_is_finished_by_the_restarted_proxy() {
    let (emu, kim) = Scene::new()
        .user("kim")
        .friendly("Kim K")
        .attributes(r#"{"tier":"gold"}"#)
        .member_of_another()
        .build()
        .await;
    let is = kim.is.clone().unwrap();
    let dir = tempfile::tempdir().unwrap().keep();
    let env = [
        ("TRP_ADMIN_TOKEN", ADMIN_TOKEN),
        ("TRP_REPAIR_API_KEY_SID", ACCOUNT),
        ("TRP_REPAIR_API_KEY_SECRET", TOKEN),
        ("TRP_REPAIR_ACCOUNT_SID", ACCOUNT),
        ("TRP_REPAIR_RETRY_INITIAL_BACKOFF_MS", "10"),
        ("TRP_REPAIR_RETRY_MAX_BACKOFF_MS", "50"),
        ("TRP_REPAIR_RECOVERY_INTERVAL_MS", "100"),
    ];
    let mut proxy = spawn_proxy_in(&dir, &emu.origin(), &env).await;
    // The recreate is slow: the kill lands after the delete, before the
    // proxy has read the new User back.
    emu.add_rule(json!({"method": "POST", "path": "/Users$",
        "action": {"kind": "latency", "ms": 1000}}))
        .await;
    let asked = spawn_operator_repair(&proxy, is);
    emu.until_user_deleted().await;
    proxy.child.kill().unwrap();
    proxy.child.wait().unwrap();
    let _ = asked.await;
    drop(proxy);
    let _restarted = spawn_proxy_in(&dir, &emu.origin(), &env).await;
    let user = until_kim_is_back(&emu, &kim, 500)
        .await
        .expect("the restarted proxy finished the operator's repair");
    assert_eq!(user["attributes"], r#"{"tier":"gold"}"#);
    let deletes = emu
        .requests()
        .await
        .iter()
        .filter(|(m, p)| m == "DELETE" && p.contains("/Users/US"))
        .count();
    assert_eq!(deletes, 1, "the User was deleted once");
}
