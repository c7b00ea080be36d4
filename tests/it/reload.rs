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
    let r = reqwest::Client::new()
        .post(format!(
            "http://{}{}/Conversations/{}/Participants",
            proxy.addr,
            kim.base,
            kim.target()
        ))
        .basic_auth(ACCOUNT, Some(TOKEN))
        .form(&[("Identity", "kim")])
        .send()
        .await
        .unwrap();
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
    // A setting that cannot change live is named, the rest applied.
    replace(
        &file,
        &format!("[admin]\ntoken = \"{token_a}\"\n[limits]\nworker_threads = 1\n"),
    );
    let log = until_logged(&proxy, "need a restart", 1).await;
    assert!(log.contains("worker_threads"), "{log}");
    until_logged(&proxy, "configuration reloaded", 3).await;
    assert_eq!(admin_status(&proxy, token_a).await, 200);
}

/// SIGHUP in the middle of a repair: the repair finishes under the
/// settings it started with, the proxy stays up.
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
    let proxy = spawn_proxy_in(&dir, &emu.origin(), &[]).await;
    // The User's recreate takes a while: the signal lands mid-repair.
    emu.add_rule(serde_json::json!({"method": "POST", "path": "/Users$",
        "action": {"kind": "latency", "ms": 400}}))
        .await;
    let (addr, path) = (
        proxy.addr.clone(),
        format!("{}/Conversations/{}/Participants", kim.base, kim.target()),
    );
    let create = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("http://{addr}{path}"))
            .basic_auth(ACCOUNT, Some(TOKEN))
            .form(&[("Identity", "kim")])
            .send()
            .await
            .unwrap()
    });
    // The event: the repair has deleted the User.
    emu.until_user_deleted().await;
    proxy.signal("HUP");
    let r = create.await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-repair-outcome"], "repaired");
    until_logged(&proxy, "configuration reloaded", 1).await;
    let (s, user) = emu.get(&format!("{}/Users/kim", kim.base)).await;
    assert_eq!((s, user["friendly_name"].as_str()), (200, Some("Kim K")));
    let health = reqwest::get(format!("http://{}/healthz", proxy.admin))
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "still up");
}
