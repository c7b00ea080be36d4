//! The check-and-repair workflow against the emulator, over real sockets.
//! Every test counts the exact upstream calls in the emulator's request log.
//! The whole suite runs once per journal store (SQLite and PostgreSQL).

use crate::common::*;
use twilio_repair_proxy::config::RepairMode;
use twilio_repair_proxy::emulator::FaultMode;

/// The fault's 20404 message: it names the create's own Participants path.
fn fault_message(is: Option<&str>, ch: &str) -> String {
    format!(
        "The requested resource {}/Conversations/{ch}/Participants was not found",
        base(is)
    )
}

/// User deletes (the workflow deletes by the User's SID).
fn user_deletes(reqs: &[(String, String)], base: &str) -> usize {
    reqs.iter()
        .filter(|(m, p)| m == "DELETE" && p.starts_with(&format!("{base}/Users/US")))
        .count()
}

fn count(reqs: &[(String, String)], method: &str, needle: &str) -> usize {
    reqs.iter()
        .filter(|(m, p)| m == method && p.contains(needle))
        .count()
}

async fn ghost_mode_costs_one_extra_call_and_touches_no_user(store: StoreKind) {
    let (st, alice) = Scene::new()
        .user("alice")
        .armed(FaultMode::Ghost)
        .on(store)
        .start()
        .await;
    let (is, ch) = (alice.is.clone().unwrap(), alice.target().to_string());
    st.emu.clear_requests().await;

    let (status, outcome, body) = st.create(Some(&is), &ch, &[("Identity", "alice")]).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(outcome.as_deref(), Some("existing"));
    assert_eq!(body["identity"], "alice");
    assert_eq!(body["conversation_sid"], ch.as_str());
    assert_eq!(body["chat_service_sid"], is.as_str());
    assert!(body["sid"].as_str().unwrap().starts_with("MB"));

    let reqs = st.emu.requests().await;
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0].0, "POST");
    assert_eq!(
        reqs[1],
        (
            "GET".to_string(),
            format!("/v1/Services/{is}/Conversations/{ch}/Participants/alice")
        )
    );
    assert_eq!(count(&reqs, "DELETE", "/Users"), 0);
    st.proxy.stop().await;
}

/// Ghost mode, with Twilio's participant reads lagging its writes by
/// `lag_ms`, and the proxy's `repair.read_lag_grace_ms` at `grace_ms`:
/// the caller's create through the proxy, and the upstream calls it made.
async fn ghost_create_with_read_lag(
    lag_ms: u64,
    grace_ms: u64,
) -> (
    Stack,
    u16,
    Option<String>,
    serde_json::Value,
    Vec<(String, String)>,
) {
    let (st, alice) = Scene::new()
        .user("alice")
        .friendly("Alice A")
        .member_of_another()
        .armed(FaultMode::Ghost)
        .emulator_with(move |c| c.fault_read_lag_ms = lag_ms)
        .proxy(move |c| c.repair.read_lag_grace_ms = grace_ms)
        .start()
        .await;
    let (is, ch) = (alice.is.clone().unwrap(), alice.target().to_string());
    st.emu.clear_requests().await;
    let (status, outcome, body) = st.create(Some(&is), &ch, &[("Identity", "alice")]).await;
    let reqs = st.emu.requests().await;
    (st, status, outcome, body, reqs)
}

#[tokio::test]
async fn a_409_behind_lagging_reads_answers_201_existing_and_never_deletes_the_user() {
    // 1 s with the default grace (2 s); 3 s with a grace that covers it.
    for (lag, grace) in [(1_000, 2_000), (3_000, 5_000)] {
        let (st, status, outcome, body, reqs) = ghost_create_with_read_lag(lag, grace).await;
        assert_eq!(status, 201, "lag {lag}: {body}");
        assert_eq!(outcome.as_deref(), Some("existing"), "lag {lag}");
        assert_eq!(body["identity"], "alice");
        assert_eq!(
            user_deletes(&reqs, "/v1/Services"),
            0,
            "lag {lag}: {reqs:?}"
        );
        assert_eq!(count(&reqs, "POST", "/Users"), 0, "lag {lag}: {reqs:?}");
        assert!(
            (3..=6).contains(&reqs.len()),
            "lag {lag}: {} upstream calls: {reqs:?}",
            reqs.len()
        );
        st.proxy.stop().await;
    }
}

#[tokio::test]
async fn a_409_never_readable_within_the_grace_answers_twilios_409_and_deletes_nothing() {
    let (st, status, outcome, body, reqs) = ghost_create_with_read_lag(10_000, 1_000).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], 50433, "Twilio's own 409");
    assert_eq!(outcome.as_deref(), Some("existing"));
    assert_eq!(user_deletes(&reqs, "/v1/Services"), 0, "{reqs:?}");
    assert_eq!(count(&reqs, "POST", "/Users"), 0, "{reqs:?}");
    let inc: serde_json::Value = admin_json(&st.proxy.admin, "/incidents").await;
    assert_eq!(inc["incidents"][0]["outcome"], "existing");
    assert!(
        inc["incidents"][0]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("409"),
        "{inc}"
    );
    st.proxy.stop().await;
}

async fn block_mode_recreates_the_user_identically_and_keeps_other_memberships(store: StoreKind) {
    // Bob is also in another conversation, with attributes of his own there.
    let (st, bob) = Scene::new()
        .user("bob@example.com")
        .friendly("Bob B")
        .attributes(r#"{"tier":"gold"}"#)
        .member_of_another_with(r#"{"seat":7}"#)
        .armed(FaultMode::Block)
        .on(store)
        .start()
        .await;
    let (is, b, other, ch) = (bob.is().unwrap(), &bob.base, bob.other(), bob.target());
    let old_user_sid = bob.user_sid.clone().unwrap();
    st.emu.clear_requests().await;

    let (status, outcome, body) = st
        .create(Some(is), ch, &[("Identity", "bob@example.com")])
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(outcome.as_deref(), Some("repaired"));
    assert_eq!(body["identity"], "bob@example.com");

    let reqs = st.emu.requests().await;
    assert_eq!(count(&reqs, "DELETE", "/Users/"), 1, "{reqs:?}");
    assert_eq!(count(&reqs, "POST", &format!("{b}/Users")), 1, "{reqs:?}");
    // Every call made on the caller's behalf carried its webhook choice.
    for r in st.emu.log_json().await {
        if r["method"] != "GET" {
            assert_eq!(r["headers"]["x-twilio-webhook-enabled"], "true", "{r}");
        }
    }
    // The identity went into every path percent-encoded.
    assert!(
        reqs.iter()
            .any(|(_, p)| p.ends_with("/Users/bob%40example.com")),
        "{reqs:?}"
    );

    let (s, user) = st.emu.get(&format!("{b}/Users/bob%40example.com")).await;
    assert_eq!(s, 200);
    assert_ne!(
        user["sid"].as_str().unwrap(),
        old_user_sid,
        "the User was recreated"
    );
    assert_eq!(user["friendly_name"], "Bob B");
    assert_eq!(user["attributes"], r#"{"tier":"gold"}"#);
    let (s, p) = st
        .emu
        .get(&format!(
            "{b}/Conversations/{other}/Participants/bob%40example.com"
        ))
        .await;
    assert_eq!(s, 200, "membership in the other conversation was lost");
    assert_eq!(p["attributes"], r#"{"seat":7}"#);
    let (s, _) = st
        .emu
        .get(&format!(
            "{b}/Conversations/{ch}/Participants/bob%40example.com"
        ))
        .await;
    assert_eq!(s, 200);

    // Visible to operators.
    let inc: serde_json::Value = admin_json(&st.proxy.admin, "/incidents").await;
    assert_eq!(inc["incidents"][0]["outcome"], "repaired");
    assert_eq!(inc["incidents"][0]["conversation_sid"], ch);
    let pending: serde_json::Value = admin_json(&st.proxy.admin, "/repairs?state=pending").await;
    assert_eq!(pending["repairs"].as_array().unwrap().len(), 0);
    let m = st
        .http
        .get(st.proxy.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("trp_repair_intercepted_total 1"), "{m}");
    assert!(
        m.contains(r#"trp_repair_outcomes_total{outcome="repaired"} 1"#),
        "{m}"
    );
    st.proxy.stop().await;
}

async fn default_service_path_repairs_through_v1_users(store: StoreKind) {
    let (st, carol) = Scene::new()
        .user("carol")
        .in_default_service()
        .armed(FaultMode::Block)
        .on(store)
        .start()
        .await;
    let ch = carol.target();
    st.emu.clear_requests().await;
    let (status, outcome, body) = st.create(None, ch, &[("Identity", "carol")]).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(outcome.as_deref(), Some("repaired"));
    assert!(
        body.get("chat_service_sid").is_none(),
        "default-path shape: {body}"
    );
    let reqs = st.emu.requests().await;
    assert_eq!(user_deletes(&reqs, "/v1"), 1, "{reqs:?}");
    assert_eq!(
        st.emu
            .get(&format!("/v1/Conversations/{ch}/Participants/carol"))
            .await
            .0,
        200
    );
    st.proxy.stop().await;
}

async fn genuine_404s_are_returned_untouched(store: StoreKind) {
    let (st, dave) = Scene::new()
        .user("dave")
        .faulty(FaultMode::Block)
        .creating_into(0)
        .on(store)
        .start()
        .await;
    let is = dave.is.unwrap();
    // Missing conversation.
    st.emu.clear_requests().await;
    let missing_ch = "CH00000000000000000000000000000000";
    let direct = st
        .emu
        .post(
            &format!("/v1/Services/{is}/Conversations/{missing_ch}/Participants"),
            &[("Identity", "dave")],
        )
        .await;
    let (status, outcome, body) = st
        .create(Some(&is), missing_ch, &[("Identity", "dave")])
        .await;
    assert_eq!(status, 404);
    assert_eq!(outcome.as_deref(), Some("genuine"));
    assert_eq!(body, direct.1, "the original 404 body must pass unchanged");
    // Missing service.
    let missing_is = "IS00000000000000000000000000000000";
    let (status, outcome, body) = st
        .create(Some(missing_is), missing_ch, &[("Identity", "dave")])
        .await;
    assert_eq!(status, 404);
    assert_eq!(outcome.as_deref(), Some("genuine"));
    assert_eq!(body["code"], 20404);
    let reqs = st.emu.requests().await;
    assert_eq!(count(&reqs, "GET", "/Users"), 0, "{reqs:?}");
    assert_eq!(count(&reqs, "DELETE", ""), 0, "{reqs:?}");
    st.proxy.stop().await;
}

async fn participant_that_existed_before_the_request_answers_twilios_409(store: StoreKind) {
    let (st, erin) = Scene::new()
        .user("erin")
        .on(store)
        .proxy(|c| c.repair.clock_skew_ms = 0)
        .start()
        .await;
    let (is, ch) = (erin.is.clone().unwrap(), erin.target().to_string());
    let (s, _) = st
        .emu
        .post(
            &format!("/v1/Services/{is}/Conversations/{ch}/Participants"),
            &[
                ("Identity", "erin"),
                ("DateCreated", "2020-01-01T00:00:00Z"),
            ],
        )
        .await;
    assert_eq!(s, 201);
    // Twilio answers the create with a bogus 20404 (injected once).
    st.emu
        .add_rule(serde_json::json!({"method":"POST","path":"/Participants$","times":1,
            "action":{"kind":"status","status":404,"code":20404,"message":fault_message(Some(&is), &ch)}}))
        .await;
    let (status, outcome, body) = st.create(Some(&is), &ch, &[("Identity", "erin")]).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(outcome.as_deref(), Some("existing"));
    assert_eq!(body["code"], 50433);
    assert_eq!(body["status"], 409);
    st.proxy.stop().await;
}

async fn messaging_binding_participants_are_found_in_the_list_and_never_repaired(store: StoreKind) {
    let (st, scene) = Scene::new().on(store).start().await;
    let (is, ch) = (scene.is.clone().unwrap(), scene.target().to_string());
    let binding = [
        ("MessagingBinding.Address", "+15550001111"),
        ("MessagingBinding.ProxyAddress", "+15550002222"),
    ];
    // Absent: a 20404 that was not processed ends at step 3.
    st.emu
        .add_rule(
            serde_json::json!({"method":"POST","path":"/Participants$","times":1,
            "action":{"kind":"status","status":404,"code":20404,"message":fault_message(Some(&is), &ch)}}),
        )
        .await;
    st.emu.clear_requests().await;
    let (status, outcome, _) = st.create(Some(&is), &ch, &binding).await;
    assert_eq!(status, 404);
    assert_eq!(outcome.as_deref(), Some("failed"));
    let reqs = st.emu.requests().await;
    assert_eq!(
        count(&reqs, "GET", "/Participants?PageSize=100"),
        1,
        "{reqs:?}"
    );
    assert_eq!(count(&reqs, "GET", "/Users"), 0, "{reqs:?}");
    // Present (created, then a bogus 20404): found by address in the list.
    let (s, created) = st
        .emu
        .post(
            &format!("/v1/Services/{is}/Conversations/{ch}/Participants"),
            &binding,
        )
        .await;
    assert_eq!(s, 201);
    st.emu
        .delete(&format!(
            "/v1/Services/{is}/Conversations/{ch}/Participants/{}",
            created["sid"].as_str().unwrap()
        ))
        .await;
    let (s, created) = st
        .emu
        .post(
            &format!("/v1/Services/{is}/Conversations/{ch}/Participants"),
            &binding,
        )
        .await;
    assert_eq!(s, 201);
    st.emu
        .add_rule(
            serde_json::json!({"method":"POST","path":"/Participants$","times":1,
            "action":{"kind":"status","status":404,"code":20404,"message":fault_message(Some(&is), &ch)}}),
        )
        .await;
    let (status, outcome, body) = st.create(Some(&is), &ch, &binding).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(outcome.as_deref(), Some("existing"));
    assert_eq!(body["sid"], created["sid"]);
    assert_eq!(body["messaging_binding"]["address"], "+15550001111");
    st.proxy.stop().await;
}

async fn check_only_and_off_modes_never_delete(store: StoreKind) {
    for (mode, expected_outcome) in [
        (RepairMode::CheckOnly, Some("disabled")),
        (RepairMode::Off, None),
    ] {
        let (st, frank) = Scene::new()
            .user("frank")
            .armed(FaultMode::Block)
            .on(store)
            .proxy(move |c| c.repair.mode = mode)
            .start()
            .await;
        st.emu.clear_requests().await;
        let (status, outcome, body) = st
            .create(frank.is(), frank.target(), &[("Identity", "frank")])
            .await;
        assert_eq!(status, 404);
        assert_eq!(body["code"], 20404);
        assert_eq!(outcome.as_deref(), expected_outcome, "{mode:?}");
        let reqs = st.emu.requests().await;
        assert_eq!(count(&reqs, "DELETE", ""), 0, "{mode:?}: {reqs:?}");
        if mode == RepairMode::Off {
            assert_eq!(reqs.len(), 1, "off is pure pass-through: {reqs:?}");
        }
        st.proxy.stop().await;
    }
}

async fn concurrent_creates_for_one_identity_cause_exactly_one_user_delete(store: StoreKind) {
    // Stale in the first conversation; the creates go to the 20 others.
    let (st, gina) = Scene::new()
        .user("gina")
        .creating_into(21)
        .armed(FaultMode::Block)
        .on(store)
        .start()
        .await;
    let is = gina.is.clone().unwrap();
    let convs = gina.targets[1..].to_vec();
    st.emu.clear_requests().await;
    let st = std::sync::Arc::new(st);
    let tasks: Vec<_> = convs
        .iter()
        .map(|ch| {
            let st = st.clone();
            let is = is.clone();
            let ch = ch.clone();
            tokio::spawn(async move { st.create(Some(&is), &ch, &[("Identity", "gina")]).await })
        })
        .collect();
    for t in tasks {
        let (status, outcome, body) = t.await.unwrap();
        assert_eq!(status, 201, "{body}");
        // A create that met the 20404 is `repaired`; one held back by the
        // fence while the repair ran reaches Twilio afterwards and gets
        // Twilio's own 201, untouched (no outcome header).
        assert!(
            matches!(outcome.as_deref(), Some("repaired") | None),
            "{outcome:?}"
        );
    }
    let reqs = st.emu.requests().await;
    assert_eq!(user_deletes(&reqs, &base(Some(&is))), 1, "{reqs:?}");
    for ch in &convs {
        assert_eq!(
            st.emu
                .get(&format!(
                    "/v1/Services/{is}/Conversations/{ch}/Participants/gina"
                ))
                .await
                .0,
            200
        );
    }
}

async fn transient_upstream_errors_at_every_step_are_retried(store: StoreKind) {
    // Each step's path answers one 429 and (where flagged) one 503 first.
    // A 503 on POST /Users or on the User's DELETE (by SID) is not retried
    // blindly: the User is looked up first. On POST /Participants the
    // forwarded create itself takes the 429, which passes back untouched
    // (Twilio never processed it). Last, a DELETE whose answer is lost
    // after Twilio processed it is read back, never sent twice.
    let steps: &[(&str, &str, bool)] = &[
        ("GET", "/Participants/henry$", true),
        ("GET", "/Conversations/CH[0-9a-f]{32}$", true),
        ("GET", "/Users/henry$", true),
        ("GET", "/Users/henry/Conversations$", true),
        ("DELETE", "/Users/US[0-9a-f]{32}$", true),
        ("POST", "/Users$", true),
        ("POST", "/Participants$", false),
    ];
    for (method, path, idempotent) in steps {
        let (st, henry) = Scene::new()
            .user("henry")
            .friendly("H")
            .armed(FaultMode::Block)
            .on(store)
            .start()
            .await;
        let (is, b, ch) = (henry.is().unwrap(), &henry.base, henry.target());
        let skip_first_post = *path == "/Participants$";
        st.emu
            .add_rule(serde_json::json!({"method":method,"path":path,"times":1,
            "action":{"kind":"too_many_requests","retry_after":0}}))
            .await;
        if *idempotent {
            st.emu
                .add_rule(serde_json::json!({"method":method,"path":path,"times":1,
                "action":{"kind":"status","status":503}}))
                .await;
        }
        let (status, outcome, body) = st.create(Some(is), ch, &[("Identity", "henry")]).await;
        if skip_first_post {
            // The forwarded create got the 429 itself and passes it back
            // untouched: Twilio never processed it, the client may retry.
            assert!(
                status == 429 || status == 201,
                "{method} {path}: {status} {body}"
            );
            if status == 429 {
                assert_eq!(outcome, None);
                let (status, outcome, _) = st.create(Some(is), ch, &[("Identity", "henry")]).await;
                assert_eq!((status, outcome.as_deref()), (201, Some("repaired")));
            }
        } else {
            assert_eq!(status, 201, "{method} {path}: {body}");
            assert_eq!(outcome.as_deref(), Some("repaired"), "{method} {path}");
        }
        let (s, user) = st.emu.get(&format!("{b}/Users/henry")).await;
        assert_eq!(s, 200, "{method} {path}: User lost");
        assert_eq!(user["friendly_name"], "H");
        if *method == "DELETE" {
            let log = st.emu.log_json().await;
            let read_back = log.iter().any(|r| {
                r["method"] == "GET" && r["path"].as_str().is_some_and(|p| p.contains("/Users/US"))
            });
            assert!(read_back, "the SID was read before the DELETE went again");
        }
        st.proxy.stop().await;
    }
    let (st, henry) = Scene::new()
        .user("henry")
        .friendly("H")
        .armed(FaultMode::Block)
        .on(store)
        .start()
        .await;
    let (is, b, ch) = (henry.is().unwrap(), &henry.base, henry.target());
    st.emu
        .add_rule(
            serde_json::json!({"method":"DELETE","path":"/Users/US[0-9a-f]{32}$",
        "times":1,"action":{"kind":"reset","processed":true}}),
        )
        .await;
    let (status, outcome, body) = st.create(Some(is), ch, &[("Identity", "henry")]).await;
    assert_eq!(
        (status, outcome.as_deref()),
        (201, Some("repaired")),
        "{body}"
    );
    let (s, user) = st.emu.get(&format!("{b}/Users/henry")).await;
    assert_eq!((s, &user["friendly_name"]), (200, &serde_json::json!("H")));
    let reqs = st.emu.requests().await;
    assert_eq!(
        user_deletes(&reqs, b),
        1,
        "one DELETE reached Twilio: {reqs:?}"
    );
    st.proxy.stop().await;
}

async fn a_permanently_broken_identity_is_reported_not_deleted_in_a_loop(store: StoreKind) {
    let (st, ivan) = Scene::new()
        .user("ivan")
        .armed(FaultMode::Block)
        .on(store)
        .proxy(|c| c.repair.max_repairs_per_window = 1)
        .start()
        .await;
    let (is, ch) = (ivan.is.clone().unwrap(), ivan.target().to_string());
    let (status, outcome, _) = st.create(Some(&is), &ch, &[("Identity", "ivan")]).await;
    assert_eq!((status, outcome.as_deref()), (201, Some("repaired")));
    // The fault comes back (a new stale mapping), the limit holds.
    let mb = st
        .emu
        .get(&format!(
            "/v1/Services/{is}/Conversations/{ch}/Participants/ivan"
        ))
        .await
        .1["sid"]
        .as_str()
        .unwrap()
        .to_string();
    st.emu
        .delete(&format!(
            "/v1/Services/{is}/Conversations/{ch}/Participants/{mb}"
        ))
        .await;
    st.emu.clear_requests().await;
    let (status, outcome, _) = st.create(Some(&is), &ch, &[("Identity", "ivan")]).await;
    assert_eq!((status, outcome.as_deref()), (404, Some("disabled")));
    assert_eq!(count(&st.emu.requests().await, "DELETE", "/Users"), 0);
    st.proxy.stop().await;
}

/// Every scenario above, once per store.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            use super::StoreKind;
            $( #[tokio::test] async fn $name() { super::$name(StoreKind::Sqlite).await } )*
        }
        mod postgres {
            use super::StoreKind;
            $( #[tokio::test] async fn $name() { super::$name(StoreKind::Postgres).await } )*
        }
    };
}

on_both_stores!(
    ghost_mode_costs_one_extra_call_and_touches_no_user,
    block_mode_recreates_the_user_identically_and_keeps_other_memberships,
    default_service_path_repairs_through_v1_users,
    genuine_404s_are_returned_untouched,
    participant_that_existed_before_the_request_answers_twilios_409,
    messaging_binding_participants_are_found_in_the_list_and_never_repaired,
    check_only_and_off_modes_never_delete,
    concurrent_creates_for_one_identity_cause_exactly_one_user_delete,
    transient_upstream_errors_at_every_step_are_retried,
    a_permanently_broken_identity_is_reported_not_deleted_in_a_loop,
);
