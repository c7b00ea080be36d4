//! Changing settings while it runs: SIGHUP and a replaced `--config` file
//! reload the proxy binary; an invalid file keeps the last good
//! configuration; SIGHUP never ends the process.

use std::time::Duration;

use crate::common::*;
use twilio_repair_proxy::emulator::FaultMode;

/// Wait (bounded) until `needle` appears `n` times in the proxy's log.
async fn until_logged(proxy: &Running, needle: &str, n: usize) -> String {
    for _ in 0..500 {
        let log = proxy.stderr();
        if log.matches(needle).count() >= n {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("`{needle}` not logged {n} times:\n{}", proxy.stderr());
}

/// Replace the file the way a ConfigMap update does: a new file renamed
/// over the old one (a new inode behind the same path).
fn replace(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn admin_status(proxy: &Running, token: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("http://{}/metrics", proxy.admin))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn sighup_and_a_replaced_file_reload_and_a_broken_file_changes_nothing() {
    let (emu, kim) = Scene::new()
        .user("kim")
        .friendly("Kim K")
        .armed(FaultMode::Block)
        .build()
        .await;
    let dir = tempfile::tempdir().unwrap().keep();
    let file = dir.join("proxy.toml");
    let token_a = "token-a-0123456789abcdef";
    let token_b = "token-b-0123456789abcdef";
    replace(&file, &format!("[admin]\ntoken = \"{token_a}\"\n"));
    let proxy = spawn_proxy_in(
        &dir,
        &emu.origin(),
        &[("TRP_CONFIG", file.to_str().unwrap())],
    )
    .await;
    assert_eq!(admin_status(&proxy, token_a).await, 200);

    // SIGHUP: reloaded, alive.
    proxy.signal("HUP");
    until_logged(&proxy, "configuration reloaded", 1).await;
    assert_eq!(admin_status(&proxy, token_a).await, 200, "still serving");

    // The file replaced, no signal: check-only, and the token rotated.
    replace(
        &file,
        &format!("[admin]\ntoken = \"{token_b}\"\n[repair]\nmode = \"check-only\"\n"),
    );
    until_logged(&proxy, "configuration reloaded", 2).await;
    assert_eq!(
        admin_status(&proxy, token_a).await,
        401,
        "the old token is gone"
    );
    assert_eq!(admin_status(&proxy, token_b).await, 200);
    emu.clear_requests().await;
    let r = proxy.create_in(&kim, "kim").await;
    assert_eq!(r.status(), 404, "only checked: Twilio's 404");
    assert_eq!(r.headers()["x-repair-outcome"], "disabled");
    let deletes = emu
        .requests()
        .await
        .iter()
        .filter(|(m, p)| m == "DELETE" && p.contains("/Users/"))
        .count();
    assert_eq!(deletes, 0);

    // A broken file: logged, nothing changes, alive.
    replace(&file, "[admin\ntoken = ");
    until_logged(&proxy, "configuration not reloaded", 1).await;
    proxy.signal("HUP");
    until_logged(&proxy, "configuration not reloaded", 2).await;
    assert_eq!(
        admin_status(&proxy, token_b).await,
        200,
        "the last good one"
    );
    // A setting that cannot change live is named, the rest applied; the
    // token removed (a key the running configuration has and the new one
    // has not, so it is compared: a rotated token never is, both sides
    // read `****`) is live, not named.
    replace(
        &file,
        "[limits]\nworker_threads = 1\nconnect_timeout_ms = \"2s\"\n",
    );
    let log = until_logged(&proxy, "needs a restart", 1).await;
    let line = log.lines().find(|l| l.contains("needs a restart")).unwrap();
    assert!(line.contains("limits.worker_threads"), "{line}");
    assert!(line.contains("limits.connect_timeout_ms"), "{line}");
    assert!(!line.contains("admin.token"), "{line}");
    until_logged(&proxy, "configuration reloaded", 3).await;
    let open = reqwest::get(format!("http://{}/metrics", proxy.admin))
        .await
        .unwrap();
    assert_eq!(open.status(), 200, "no token any more");
}

/// SIGHUP in the middle of a repair, with a changed configuration (mode
/// `check-only`) while the User's recreate is held at Twilio: the mode is
/// read before a repair's first write, so this one, past its delete, goes
/// on to the end: 201 repaired, the User and its membership back; the
/// proxy stays up, and the next fault is only checked.
#[tokio::test]
async fn sighup_during_a_repair_lets_it_finish() {
    let (emu, kim) = Scene::new()
        .user("kim")
        .friendly("Kim K")
        .member_of_another()
        .armed(FaultMode::Block)
        .build()
        .await;
    let dir = tempfile::tempdir().unwrap().keep();
    let file = dir.join("proxy.toml");
    replace(&file, "[repair]\nmode = \"repair\"\n");
    let proxy = spawn_proxy_in(
        &dir,
        &emu.origin(),
        &[("TRP_CONFIG", file.to_str().unwrap())],
    )
    .await;
    let recreate = emu
        .add_rule_id(
            serde_json::json!({"method": "POST", "path": "/Users$", "times": 1,
            "action": {"kind": "hold"}}),
        )
        .await;
    let create = spawn_create(&proxy, &kim);
    // The event: the User is deleted and its recreate held at Twilio.
    emu.wait_held(1).await;
    replace(&file, "[repair]\nmode = \"check-only\"\n");
    proxy.signal("HUP");
    until_applied(&proxy, 1).await;
    emu.release_rule(recreate).await;
    let r = create.await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-repair-outcome"], "repaired");
    let (s, user) = emu.get(&format!("{}/Users/kim", kim.base)).await;
    assert_eq!((s, user["friendly_name"].as_str()), (200, Some("Kim K")));
    let membership = format!(
        "{}/Conversations/{}/Participants/kim",
        kim.base,
        kim.other()
    );
    assert_eq!(emu.get(&membership).await.0, 200, "its membership is back");
    let health = reqwest::get(format!("http://{}/healthz", proxy.admin))
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "still up");
}

/// Kim's Participant create through the proxy, sent in its own task (the
/// test holds a step of it at the emulator meanwhile).
fn spawn_create(proxy: &Running, kim: &Built) -> tokio::task::JoinHandle<reqwest::Response> {
    let addr = proxy.addr.clone();
    let path = format!("{}/Conversations/{}/Participants", kim.base, kim.target());
    tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("http://{addr}{path}"))
            .basic_auth(ACCOUNT, Some(TOKEN))
            .form(&[("Identity", "kim")])
            .send()
            .await
            .unwrap()
    })
}

/// `trp_config_reloads_total{result="applied"}` reads at least `n` (a
/// replaced file and a SIGHUP may be one reload or two): the event a test
/// waits for after changing the configuration (bounded: 10 s).
async fn until_applied(proxy: &Running, n: u32) {
    let series = r#"trp_config_reloads_total{result="applied"}"#;
    for _ in 0..400 {
        let text = metrics_text(&proxy.admin).await;
        if sample(&text, series).is_some_and(|v| v >= f64::from(n)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{series} never reached {n}:\n{}", proxy.stderr());
}

/// A GET of the account's conversations through the proxy, as `host`
/// names it (`None`: the proxy's own address).
async fn list_through(proxy: &Running, host: Option<&str>) -> reqwest::Response {
    // A bound on "never answered" (a reload that did not apply), well
    // under the 60 s default timeout; not a measurement.
    let mut req = reqwest::Client::new()
        .get(format!("http://{}/v1/Conversations", proxy.addr))
        .timeout(Duration::from_secs(20))
        .basic_auth(ACCOUNT, Some(TOKEN));
    if let Some(h) = host {
        req = req.header(reqwest::header::HOST, h);
    }
    req.send().await.unwrap()
}

/// Hold every list of conversations at `emu` until released.
async fn hold_lists(emu: &Emu) {
    emu.add_rule(
        serde_json::json!({"method": "GET", "path": "^/v1/Conversations$",
        "action": {"kind": "hold"}}),
    )
    .await;
}

/// A reloaded `limits.response_header_timeout_ms` is the next request's:
/// one held at Twilio before the reload is answered when released (the
/// old, long timeout), one sent after it is a 504 (the new, short one).
#[tokio::test]
async fn a_request_in_flight_keeps_its_timeout_and_the_next_gets_the_reloaded_one() {
    let emu = start_emulator(|_| {}).await;
    let dir = tempfile::tempdir().unwrap().keep();
    let file = dir.join("proxy.toml");
    replace(&file, "[limits]\nresponse_header_timeout_ms = \"60s\"\n");
    let proxy = spawn_proxy_in(
        &dir,
        &emu.origin(),
        &[("TRP_CONFIG", file.to_str().unwrap())],
    )
    .await;
    hold_lists(&emu).await;
    let before = {
        let proxy_addr = proxy.addr.clone();
        tokio::spawn(async move {
            reqwest::Client::new()
                .get(format!("http://{proxy_addr}/v1/Conversations"))
                .basic_auth(ACCOUNT, Some(TOKEN))
                .send()
                .await
                .unwrap()
        })
    };
    emu.wait_held(1).await;

    replace(&file, "[limits]\nresponse_header_timeout_ms = \"300ms\"\n");
    proxy.signal("HUP");
    until_applied(&proxy, 1).await;
    let after = list_through(&proxy, None).await;
    assert_eq!(after.status(), 504, "the reloaded timeout");
    assert_eq!(after.headers()["x-repair-proxy-error"], "upstream-timeout");
    assert!(
        !before.is_finished(),
        "the request sent before the reload is still waiting"
    );

    emu.release(None).await;
    let before = before.await.unwrap();
    assert_eq!(before.status(), 200, "finished under its own timeout");
}

/// The ConfigMap way: the mounted file is a symlink into `..data`, and an
/// update points `..data` at a new directory (one rename), no signal.
/// The upstream, the proxy's host names and the answers' link origin
/// change for the next request; a request held at the old upstream
/// finishes there, with the old links.
#[tokio::test]
async fn routes_hosts_and_links_follow_a_configmap_symlink_swap() {
    let old_twilio = start_emulator(|_| {}).await;
    let new_twilio = start_emulator(|_| {}).await;
    let dir = tempfile::tempdir().unwrap().keep();
    let config = |upstream: &str, link: &str, hosts: &str| {
        format!(
            "upstream = \"{upstream}\"\npublic_base_url = \"{link}\"\nproxy_hosts = [{hosts}]\n"
        )
    };
    // `dir/proxy.toml -> ..data/proxy.toml`, `..data -> ..v1`.
    let version = |name: &str, text: &str| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("proxy.toml"), text).unwrap();
        let tmp = dir.join("..data_tmp");
        std::os::unix::fs::symlink(name, &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
    };
    version(
        "..v1",
        &config(&old_twilio.origin(), "https://old.example", ""),
    );
    let file = dir.join("proxy.toml");
    std::os::unix::fs::symlink("..data/proxy.toml", &file).unwrap();
    let proxy = spawn_proxy_configured(&dir, &[("TRP_CONFIG", file.to_str().unwrap())]).await;

    let refused = list_through(&proxy, Some("proxy.example")).await;
    assert_eq!(refused.status(), 421, "not a name of this proxy yet");
    hold_lists(&old_twilio).await;
    let before = {
        let proxy_addr = proxy.addr.clone();
        tokio::spawn(async move {
            reqwest::Client::new()
                .get(format!("http://{proxy_addr}/v1/Conversations"))
                .basic_auth(ACCOUNT, Some(TOKEN))
                .send()
                .await
                .unwrap()
        })
    };
    old_twilio.wait_held(1).await;

    version(
        "..v2",
        &config(
            &new_twilio.origin(),
            "https://new.example",
            "\"proxy.example\"",
        ),
    );
    until_applied(&proxy, 1).await;
    new_twilio.clear_requests().await;
    let after = list_through(&proxy, Some("proxy.example")).await;
    assert_eq!(after.status(), 200, "a name of this proxy now");
    let page: serde_json::Value = after.json().await.unwrap();
    let url = page["meta"]["url"].as_str().unwrap();
    assert!(url.starts_with("https://new.example/v1/"), "{page}");
    let seen = new_twilio.requests().await;
    assert!(
        seen.iter()
            .any(|(m, p)| m == "GET" && p == "/v1/Conversations"),
        "sent to the new upstream: {seen:?}"
    );

    old_twilio.release(None).await;
    let before = before.await.unwrap();
    assert_eq!(before.status(), 200);
    let page: serde_json::Value = before.json().await.unwrap();
    let url = page["meta"]["url"].as_str().unwrap();
    assert!(
        url.starts_with("https://old.example/v1/"),
        "answered by the old upstream, with the old links: {page}"
    );
}

/// A reloaded shield caps the requests that arrive after it: with one
/// slot per account, the first new request takes it and the next is the
/// proxy's 429 at once; the request sent before the reload (no cap then)
/// holds no slot and finishes.
#[tokio::test]
async fn a_reloaded_concurrency_cap_holds_new_requests_only() {
    let emu = start_emulator(|_| {}).await;
    let dir = tempfile::tempdir().unwrap().keep();
    let file = dir.join("proxy.toml");
    replace(&file, "[shield]\nmax_concurrent_per_account = 0\n");
    let proxy = spawn_proxy_in(
        &dir,
        &emu.origin(),
        &[("TRP_CONFIG", file.to_str().unwrap())],
    )
    .await;
    hold_lists(&emu).await;
    let send = || {
        let proxy_addr = proxy.addr.clone();
        tokio::spawn(async move {
            reqwest::Client::new()
                .get(format!("http://{proxy_addr}/v1/Conversations"))
                .basic_auth(ACCOUNT, Some(TOKEN))
                .send()
                .await
                .unwrap()
        })
    };
    let before = send();
    emu.wait_held(1).await;

    replace(
        &file,
        "[shield]\nmax_concurrent_per_account = 1\nmax_queue_wait_ms = 0\n",
    );
    until_applied(&proxy, 1).await;
    let first = send();
    emu.wait_held(2).await;
    let second = list_through(&proxy, None).await;
    assert_eq!(second.status(), 429, "the account's one slot is taken");
    assert_eq!(
        second.headers()["x-repair-proxy-error"],
        "shield-queue-full"
    );

    emu.release(None).await;
    assert_eq!(first.await.unwrap().status(), 200);
    assert_eq!(before.await.unwrap().status(), 200);
}

/// The repair of a create held at Twilio across a reload that turns a
/// one-slot cap on: its workflow's calls run under the shield the create
/// arrived with (no cap), not in the new cap's line, whose one slot a
/// later request of the account holds: 201 repaired.
#[tokio::test]
async fn a_repair_of_a_request_from_before_a_reload_keeps_the_shield_it_arrived_with() {
    let (emu, kim) = Scene::new()
        .user("kim")
        .friendly("Kim K")
        .armed(FaultMode::Block)
        .build()
        .await;
    let dir = tempfile::tempdir().unwrap().keep();
    let file = dir.join("proxy.toml");
    replace(&file, "[shield]\nmax_concurrent_per_account = 0\n");
    let proxy = spawn_proxy_in(
        &dir,
        &emu.origin(),
        &[
            ("TRP_CONFIG", file.to_str().unwrap()),
            // A repair waiting in the new cap's line fails within this.
            ("TRP_REPAIR_WORKFLOW_DEADLINE_MS", "3000"),
        ],
    )
    .await;
    let create_rule = emu
        .add_rule_id(
            serde_json::json!({"method": "POST", "path": "/Participants$",
            "times": 1, "action": {"kind": "hold"}}),
        )
        .await;
    let create = spawn_create(&proxy, &kim);
    emu.wait_held(1).await;

    replace(
        &file,
        "[shield]\nmax_concurrent_per_account = 1\nmax_queue_wait_ms = 0\n",
    );
    until_applied(&proxy, 1).await;
    let list_rule = emu
        .add_rule_id(
            serde_json::json!({"method": "GET", "path": "^/v1/Conversations$",
            "times": 1, "action": {"kind": "hold"}}),
        )
        .await;
    let list = {
        let addr = proxy.addr.clone();
        tokio::spawn(async move {
            reqwest::Client::new()
                .get(format!("http://{addr}/v1/Conversations"))
                .basic_auth(ACCOUNT, Some(TOKEN))
                .send()
                .await
                .unwrap()
        })
    };
    // The new cap's one slot is held by the list.
    emu.wait_held(2).await;
    emu.release_rule(create_rule).await;
    let r = create.await.unwrap();
    let outcome = r.headers().get("x-repair-outcome").cloned();
    assert_eq!(
        (
            r.status().as_u16(),
            outcome.as_ref().and_then(|v| v.to_str().ok())
        ),
        (201, Some("repaired")),
        "the repair of a request from before the reload waited in the new cap's line"
    );
    emu.release_rule(list_rule).await;
    assert_eq!(list.await.unwrap().status(), 200);
}

/// `metrics.account_labels` needs a restart: a file that flips only it
/// is named in the "needs a restart" line and keeps the account's cap
/// (one slot, held): the next request of the account is the proxy's 429,
/// not a second request in flight at Twilio.
#[tokio::test]
async fn a_metrics_label_flip_needs_a_restart_and_keeps_the_accounts_cap() {
    let emu = start_emulator(|_| {}).await;
    let dir = tempfile::tempdir().unwrap().keep();
    let file = dir.join("proxy.toml");
    let shield = "[shield]\nmax_concurrent_per_account = 1\nmax_queue_wait_ms = 0\n";
    replace(&file, shield);
    let proxy = spawn_proxy_in(
        &dir,
        &emu.origin(),
        &[("TRP_CONFIG", file.to_str().unwrap())],
    )
    .await;
    hold_lists(&emu).await;
    let first = {
        let addr = proxy.addr.clone();
        tokio::spawn(async move {
            reqwest::Client::new()
                .get(format!("http://{addr}/v1/Conversations"))
                .basic_auth(ACCOUNT, Some(TOKEN))
                .send()
                .await
                .unwrap()
        })
    };
    emu.wait_held(1).await;
    replace(
        &file,
        &format!("{shield}[metrics]\naccount_labels = true\n"),
    );
    until_applied(&proxy, 1).await;
    let log = until_logged(&proxy, "needs a restart", 1).await;
    let line = log.lines().find(|l| l.contains("needs a restart")).unwrap();
    assert!(line.contains("metrics.account_labels"), "{line}");
    // Under the kept cap: the proxy's 429 at once (a second cap would let
    // it through to Twilio, where it would be held).
    let second = list_through(&proxy, None).await;
    assert_eq!(second.status(), 429, "the account's one slot is taken");
    assert_eq!(
        second.headers()["x-repair-proxy-error"],
        "shield-queue-full"
    );
    emu.release(None).await;
    assert_eq!(first.await.unwrap().status(), 200);
}

/// `GET /metrics` with the admin token.
async fn metrics_with(proxy: &Running, token: &str) -> String {
    reqwest::Client::new()
        .get(format!("http://{}/metrics", proxy.admin))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The repair side of a reloaded shield (`Repairer::set_shield`): an
/// operator repair after a reload that turns a one-slot cap on takes its
/// calls' slots in the new cap: it waits in the account's line (the queue
/// gauge reads 1) while a request of the account holds the slot, and
/// repairs once it is released.
#[tokio::test]
async fn an_operator_repair_after_a_shield_reload_waits_in_the_new_caps_line() {
    let (emu, kim) = Scene::new()
        .user("kim")
        .friendly("Kim K")
        .member_of_another()
        .build()
        .await;
    let is = kim.is.clone().unwrap();
    let token = "operator-token-0123456789";
    let dir = tempfile::tempdir().unwrap().keep();
    let file = dir.join("proxy.toml");
    replace(&file, "[shield]\nmax_concurrent_per_account = 0\n");
    let proxy = spawn_proxy_in(
        &dir,
        &emu.origin(),
        &[
            ("TRP_CONFIG", file.to_str().unwrap()),
            ("TRP_ADMIN_TOKEN", token),
            ("TRP_REPAIR_API_KEY_SID", ACCOUNT),
            ("TRP_REPAIR_API_KEY_SECRET", TOKEN),
            ("TRP_REPAIR_ACCOUNT_SID", ACCOUNT),
        ],
    )
    .await;
    replace(&file, "[shield]\nmax_concurrent_per_account = 1\n");
    until_logged(&proxy, "configuration reloaded", 1).await;
    hold_lists(&emu).await;
    let list = {
        let addr = proxy.addr.clone();
        tokio::spawn(async move {
            reqwest::Client::new()
                .get(format!("http://{addr}/v1/Conversations"))
                .basic_auth(ACCOUNT, Some(TOKEN))
                .send()
                .await
                .unwrap()
        })
    };
    emu.wait_held(1).await;
    let repair = {
        let admin = proxy.admin.clone();
        tokio::spawn(async move {
            let r = reqwest::Client::new()
                .post(format!("http://{admin}/repairs"))
                .bearer_auth(token)
                .json(&serde_json::json!({"service_sid": is, "identity": "kim"}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap())
        })
    };
    // The event: the repair's first call waits in the new cap's line.
    let series = r#"trp_shield_queue_length{class="account"}"#;
    let mut queued = None;
    for _ in 0..400 {
        queued = sample(&metrics_with(&proxy, token).await, series);
        if queued == Some(1.0) || repair.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        queued,
        Some(1.0),
        "the operator repair is not in the new cap's line"
    );
    assert!(!repair.is_finished());
    emu.release(None).await;
    let (s, v) = repair.await.unwrap();
    assert_eq!(
        (s, &v["outcome"]),
        (200, &serde_json::json!("repaired")),
        "{v}"
    );
    assert_eq!(list.await.unwrap().status(), 200);
}
