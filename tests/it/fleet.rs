//! A fleet: three proxy processes sharing one PostgreSQL journal and one
//! emulator (the sidecar-per-pod deployment).

use std::time::Duration;

use crate::common::*;
use twilio_repair_proxy::emulator::FaultMode;

fn count(log: &[serde_json::Value], method: &str, suffix: &str, status: Option<u64>) -> usize {
    log.iter()
        .filter(|r| {
            r["method"] == method
                && r["path"].as_str().unwrap().ends_with(suffix)
                && status.is_none_or(|s| r["status"].as_u64() == Some(s))
        })
        .count()
}

async fn fleet(emu: &Emu, store: &str, env: &[(&str, &str)]) -> Vec<Running> {
    let dir = tempfile::tempdir().unwrap().keep();
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(spawn_proxy_with_store(&dir, store, &emu.origin(), env).await);
    }
    replicas
}

#[tokio::test]
async fn thirty_concurrent_creates_over_three_replicas_cause_one_user_delete() {
    // Stale in the first conversation; the creates go to the 30 others.
    let (emu, lena) = Scene::new()
        .user("lena")
        .friendly("Lena L")
        .attributes(r#"{"team":"ops"}"#)
        .creating_into(31)
        .armed(FaultMode::Block)
        .build()
        .await;
    let (is, b) = (lena.is().unwrap(), &lena.base);
    let convs = &lena.targets[1..];
    let store = fresh_pg_database().await;
    let replicas = fleet(&emu, &store, &[]).await;
    emu.clear_requests().await;

    let client = reqwest::Client::new();
    let tasks: Vec<_> = convs
        .iter()
        .enumerate()
        .map(|(i, ch)| {
            let url = format!(
                "http://{}/v1/Services/{is}/Conversations/{ch}/Participants",
                replicas[i % 3].addr
            );
            let client = client.clone();
            tokio::spawn(async move {
                let r = client
                    .post(url)
                    .basic_auth(ACCOUNT, Some(TOKEN))
                    .form(&[("Identity", "lena")])
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            })
        })
        .collect();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 201, "{body}");
    }
    let l = emu.log_json().await;
    assert_eq!(
        l.iter().filter(|r| r["method"] == "DELETE" && r["path"].as_str().unwrap().contains("/Users/US")).count(),
        1,
        "exactly one User delete across the fleet"
    );
    let (s, user) = emu.get(&format!("{b}/Users/lena")).await;
    assert_eq!(s, 200);
    assert_eq!(user["friendly_name"], "Lena L");
    assert_eq!(user["attributes"], r#"{"team":"ops"}"#);
    for ch in convs {
        assert_eq!(
            emu.get(&format!("{b}/Conversations/{ch}/Participants/lena"))
                .await
                .0,
            200
        );
    }
    // Every replica shows the fleet-wide incidents: the same list, with at
    // least the repair's. (A create the fence held back while the repair
    // ran reached Twilio afterwards and got its own 201: no incident.)
    let mut seen = Vec::new();
    for r in &replicas {
        let inc: serde_json::Value = admin_json(&r.admin, "/incidents?limit=1000").await;
        let ids: Vec<i64> = inc["incidents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_i64().unwrap())
            .collect();
        seen.push(ids);
    }
    assert!(!seen[0].is_empty(), "the repair's incident is recorded");
    assert!(seen.iter().all(|ids| *ids == seen[0]), "{seen:?}");
}

#[tokio::test]
async fn a_replica_killed_mid_repair_is_finished_by_another_exactly_once() {
    let (emu, mona) = Scene::new()
        .user("mona")
        .friendly("Mona M")
        .member_of_another()
        .armed(FaultMode::Block)
        .build()
        .await;
    let (b, other) = (&mona.base, mona.other());
    // The first recreate hangs: the replica doing it gets killed meanwhile.
    emu.add_rule(
        serde_json::json!({"method":"POST","path":"/Users$","times":1,
        "action":{"kind":"hang_then_drop","ms":60000}}),
    )
    .await;
    let store = fresh_pg_database().await;
    let env = [
        ("TRP_REPAIR_API_KEY_SID", ACCOUNT),
        ("TRP_REPAIR_API_KEY_SECRET", TOKEN),
        ("TRP_REPAIR_RECOVERY_INTERVAL_MS", "200"),
    ];
    let mut replicas = fleet(&emu, &store, &env).await;
    emu.clear_requests().await;
    let url = format!(
        "http://{}{}",
        replicas[0].addr,
        mona.participants(mona.target())
    );
    tokio::spawn(async move {
        let _ = reqwest::Client::new()
            .post(url)
            .basic_auth(ACCOUNT, Some(TOKEN))
            .form(&[("Identity", "mona")])
            .send()
            .await;
    });
    // Fleet-wide view: another replica's admin shows the record recreating.
    let mut reached = false;
    for _ in 0..400 {
        let p: serde_json::Value = admin_json(&replicas[1].admin, "/repairs?state=pending").await;
        if p["repairs"][0]["state"] == "recreating" {
            reached = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(reached, "the repair never reached the recreate");
    replicas[0].signal("KILL");
    let _dead = replicas.remove(0);

    let mut restored = false;
    for _ in 0..200 {
        let (s, _) = emu.get(&format!("{b}/Users/mona")).await;
        let p: serde_json::Value = admin_json(&replicas[0].admin, "/repairs?state=pending").await;
        if s == 200 && p["repairs"].as_array().unwrap().is_empty() {
            restored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(restored, "no live replica completed the repair");
    let l = emu.log_json().await;
    assert_eq!(
        count(&l, "POST", "/Users", Some(201)),
        1,
        "the User must be recreated exactly once"
    );
    let (_, user) = emu.get(&format!("{b}/Users/mona")).await;
    assert_eq!(user["friendly_name"], "Mona M");
    assert_eq!(
        emu.get(&format!("{b}/Conversations/{other}/Participants/mona"))
            .await
            .0,
        200
    );
}
