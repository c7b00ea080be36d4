//! `kill -9` of the proxy between the User delete and its recreate: the
//! journal brings the User back once the proxy runs again, with the
//! operator's repair credential at start-up, or with the first caller's.

use std::time::Duration;

use crate::common::*;
use twilio_repair_proxy::emulator::FaultMode;

/// A repair cut short by `kill -9`.
struct Crashed {
    emu: Emu,
    kim: Built,
    create: tokio::task::JoinHandle<()>,
    first: Running,
}

/// Run a block-mode repair through a proxy process and kill it while the
/// User is deleted and its recreate hangs.
async fn crash_mid_repair() -> Crashed {
    let (emu, kim) = Scene::new()
        .user("kim")
        .friendly("Kim K")
        .attributes(r#"{"vip":true}"#)
        .member_of_another_with(r#"{"seat":1}"#)
        .armed(FaultMode::Block)
        .build()
        .await;
    // The recreate hangs (unprocessed), so the proxy can be killed while
    // the User is gone.
    emu.add_rule(serde_json::json!({"method":"POST","path":"/Users$",
        "action":{"kind":"hang_then_drop","ms":60000}}))
        .await;
    emu.clear_requests().await;

    let first = spawn_proxy(&emu.origin(), &[]).await;
    let url = format!("http://{}{}", first.addr, kim.participants(kim.target()));
    let create = tokio::spawn(async move {
        let _ = reqwest::Client::new()
            .post(url)
            .basic_auth(ACCOUNT, Some(TOKEN))
            .form(&[("Identity", "kim")])
            .send()
            .await;
    });
    // Wait until the User is deleted and the journal says the recreate is
    // under way (it hangs in the emulator).
    let mut seen = false;
    for _ in 0..400 {
        let deleted = emu
            .requests()
            .await
            .iter()
            .any(|(m, p)| m == "DELETE" && p.contains("/Users/US"));
        let pending: serde_json::Value = admin_json(&first.admin, "/repairs?state=pending").await;
        if deleted && pending["repairs"][0]["state"] == "recreating" {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        seen,
        "the repair never reached the recreate: {:?}",
        emu.requests().await
    );
    first.signal("KILL");
    Crashed {
        emu,
        kim,
        create,
        first,
    }
}

async fn assert_restored(emu: &Emu, kim: &Built) {
    let (b, other) = (&kim.base, kim.other());
    let mut user = serde_json::Value::Null;
    for _ in 0..200 {
        let (s, v) = emu.get(&format!("{b}/Users/kim")).await;
        let (ps, _) = emu
            .get(&format!("{b}/Conversations/{other}/Participants/kim"))
            .await;
        if s == 200 && ps == 200 {
            user = v;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(user["friendly_name"], "Kim K", "User not restored: {user}");
    assert_eq!(user["attributes"], r#"{"vip":true}"#);
    let (_, p) = emu
        .get(&format!("{b}/Conversations/{other}/Participants/kim"))
        .await;
    assert_eq!(p["attributes"], r#"{"seat":1}"#);
    let creates = emu
        .requests()
        .await
        .iter()
        .filter(|(m, p)| m == "POST" && p.ends_with("/Users"))
        .count();
    assert!(creates >= 1);
}

#[tokio::test]
async fn kill_between_delete_and_recreate_then_operator_credential_restores_at_start_up() {
    let scene = crash_mid_repair().await;
    let _ = scene.create.await;
    let (s, _) = scene.emu.get(&scene.kim.user_path()).await;
    assert_eq!(
        s, 404,
        "the crash must have left the User deleted for this test to mean anything"
    );
    scene
        .emu
        .http
        .delete(scene.emu.url("/__emulator/faults"))
        .send()
        .await
        .unwrap();

    let dir = scene.first.store_dir.clone();
    drop(scene.first);
    let second = spawn_proxy_in(
        &dir,
        &scene.emu.origin(),
        &[
            ("TRP_REPAIR_API_KEY_SID", ACCOUNT),
            ("TRP_REPAIR_API_KEY_SECRET", TOKEN),
        ],
    )
    .await;
    assert_restored(&scene.emu, &scene.kim).await;
    // The journal record is closed right after the memberships are back.
    let mut pending = serde_json::Value::Null;
    for _ in 0..100 {
        pending = admin_json(&second.admin, "/repairs?state=pending").await;
        if pending["repairs"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pending["repairs"].as_array().unwrap().len(), 0, "{pending}");
    assert!(
        second.log_with("operator").await.contains("operator"),
        "recovery must say which credential it used"
    );
    assert!(
        !second.stderr().contains(TOKEN),
        "the token leaked into the log"
    );
}

#[tokio::test]
async fn kill_between_delete_and_recreate_then_first_caller_restores() {
    let scene = crash_mid_repair().await;
    let _ = scene.create.await;
    scene
        .emu
        .http
        .delete(scene.emu.url("/__emulator/faults"))
        .send()
        .await
        .unwrap();
    let dir = scene.first.store_dir.clone();
    drop(scene.first);
    let second = spawn_proxy_in(&dir, &scene.emu.origin(), &[]).await;
    // Without a credential the record waits, reported as pending.
    let pending: serde_json::Value = admin_json(&second.admin, "/repairs?state=pending").await;
    assert_eq!(pending["repairs"].as_array().unwrap().len(), 1, "{pending}");
    assert_eq!(pending["repairs"][0]["identity"], "kim");
    // The snapshot (friendly name, attributes) is journaled but not shown
    // without an operator's token and `?include=snapshot` (tests/it/admin.rs).
    assert!(pending["repairs"][0].get("snapshot").is_none(), "{pending}");
    let journal = serde_json::to_string(&pending).unwrap();
    assert!(!journal.contains(TOKEN), "the journal holds a secret");
    let (s, _) = scene.emu.get(&scene.kim.user_path()).await;
    assert_eq!(s, 404);
    // Any request with credentials for that account finishes it.
    let r = reqwest::Client::new()
        .get(format!("http://{}{}", second.addr, scene.kim.base))
        .basic_auth(ACCOUNT, Some(TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_restored(&scene.emu, &scene.kim).await;
}

/// `incidents export` and `repair` as an operator runs them.
#[tokio::test]
async fn operator_commands_export_incidents_and_repair_on_demand() {
    let (emu, olga) = Scene::new()
        .user("olga")
        .friendly("Olga O")
        .member_of_another()
        .armed(FaultMode::Block)
        .build()
        .await;
    let (is, b, other, ch) = (olga.is().unwrap(), &olga.base, olga.other(), olga.target());
    let proxy = spawn_proxy(&emu.origin(), &[]).await;
    let r = reqwest::Client::new()
        .post(format!(
            "http://{}{b}/Conversations/{ch}/Participants",
            proxy.addr
        ))
        .basic_auth(ACCOUNT, Some(TOKEN))
        .form(&[("Identity", "olga")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let store = format!("sqlite://{}/journal.db", proxy.store_dir.display());

    // tokio's Command: the in-process emulator must keep serving meanwhile.
    async fn run(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        let mut c = tokio::process::Command::new(bin());
        c.args(args).env_remove("RUST_LOG");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().await.unwrap()
    }
    let out = run(
        &["incidents", "export", "--format", "json", "--store", &store],
        &[],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["outcome"], "repaired");
    assert_eq!(list[0]["identity"], "olga");
    assert!(list[0]["steps"].as_array().unwrap().iter().all(|s| {
        s["twilio_request_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("RQ"))
    }));
    let out = run(
        &["incidents", "export", "--format", "csv", "--store", &store],
        &[],
    )
    .await;
    let csv = String::from_utf8_lossy(&out.stdout);
    let mut lines = csv.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("id,at,account_sid,service_sid,conversation_sid,identity,outcome")
    );
    let row = lines.next().unwrap();
    assert!(row.contains(&format!(",{is},{ch},olga,repaired,")), "{row}");

    let origin = emu.origin();
    let repair = [
        "repair",
        "--service",
        is,
        "--identity",
        "olga",
        "--upstream",
        origin.as_str(),
        "--store",
        store.as_str(),
    ];
    // One process owns an SQLite journal: beside the running proxy,
    // `repair` is refused with a clear error, and runs once it is stopped.
    let cred_env = [
        ("TRP_REPAIR_API_KEY_SID", ACCOUNT),
        ("TRP_REPAIR_API_KEY_SECRET", TOKEN),
    ];
    emu.clear_requests().await;
    let out = run(&repair, &cred_env).await;
    assert!(!out.status.success());
    assert!(emu.requests().await.is_empty(), "refused before any call");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("journal.db is held by a running proxy") && err.contains("--admin"),
        "{err}"
    );

    let dir = proxy.store_dir.clone();
    drop(proxy);
    assert!(dir.exists());
    // `repair` without the operator credential refuses, naming what to set.
    let out = run(&repair, &[]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("TRP_REPAIR_API_KEY_SID"));
    let cred = [
        ("TRP_REPAIR_API_KEY_SID", ACCOUNT),
        ("TRP_REPAIR_API_KEY_SECRET", TOKEN),
    ];
    // The running proxy's rule for operator repairs holds offline too: with
    // repair.mode off or check-only, refused before any call, dry run or not.
    for mode in ["off", "check-only"] {
        for dry in [false, true] {
            emu.clear_requests().await;
            let args = if dry {
                [&repair[..], &["--dry-run"]].concat()
            } else {
                repair.to_vec()
            };
            let out = run(&args, &[&cred[..], &[("TRP_REPAIR_MODE", mode)]].concat()).await;
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "mode {mode}: {err}");
            assert!(
                err.contains(&format!("mode {mode}")) && err.contains("repair.mode"),
                "{err}"
            );
            assert!(emu.requests().await.is_empty(), "mode {mode}: no call");
        }
    }
    // The loop guard too, read from the journal (the proxy's repair of olga
    // above is its one repair in the window): refused before any write.
    emu.clear_requests().await;
    let out = run(
        &repair,
        &[&cred[..], &[("TRP_REPAIR_MAX_REPAIRS_PER_WINDOW", "1")]].concat(),
    )
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("repair limit reached: 1 repairs"), "{err}");
    assert!(emu.requests().await.iter().all(|(m, _)| m == "GET"));
    // --dry-run: the snapshot, nothing touched.
    emu.clear_requests().await;
    let out = run(&[&repair[..], &["--dry-run"]].concat(), &cred).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["snapshot"]["friendly_name"], "Olga O");
    assert_eq!(plan["snapshot"]["memberships"].as_array().unwrap().len(), 2);
    let user_sid = plan["snapshot"]["user_sid"].as_str().unwrap();
    assert!(
        plan["plan"]
            .as_array()
            .unwrap()
            .iter()
            .any(|step| step.as_str().unwrap().contains(user_sid)),
        "the plan names the User it would delete: {plan}"
    );
    assert!(emu.requests().await.iter().all(|(m, _)| m == "GET"));
    // A typo: no User, so nothing to repair and nothing created, dry run
    // or not.
    for dry in [true, false] {
        let typo = [
            "repair",
            "--service",
            is,
            "--identity",
            "typo-olga",
            "--upstream",
            origin.as_str(),
            "--store",
            store.as_str(),
        ];
        let args = if dry {
            [&typo[..], &["--dry-run"]].concat()
        } else {
            typo.to_vec()
        };
        emu.clear_requests().await;
        let out = run(&args, &cred).await;
        assert!(!out.status.success(), "dry run {dry}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("no User `typo-olga`") && err.contains(is),
            "{err}"
        );
        assert!(
            emu.requests().await.iter().all(|(m, _)| m == "GET"),
            "nothing written"
        );
        assert_eq!(emu.get(&format!("{b}/Users/typo-olga")).await.0, 404);
    }
    // For real: the User is recreated with its fields and memberships.
    let out = run(&repair, &cred).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reqs = emu.requests().await;
    assert_eq!(
        reqs.iter()
            .filter(|(m, p)| m == "DELETE" && p.contains("/Users/US"))
            .count(),
        1
    );
    let (s, user) = emu.get(&format!("{b}/Users/olga")).await;
    assert_eq!(s, 200);
    assert_eq!(user["friendly_name"], "Olga O");
    assert_eq!(
        emu.get(&format!("{b}/Conversations/{other}/Participants/olga"))
            .await
            .0,
        200
    );
    assert_eq!(
        emu.get(&format!("{b}/Conversations/{ch}/Participants/olga"))
            .await
            .0,
        200
    );
}
