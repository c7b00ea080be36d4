//! The admin plane's privacy (issue 10 #8): an optional bearer token on
//! everything but the probes, `repair.incident_identity = "hash"` applied to
//! every admin answer and to `incidents export`, and journal snapshots
//! (friendly names, attributes) shown only to an authenticated operator who
//! asks for them.

use std::process::Command;

use crate::common::*;
use sha2::Digest;
use twilio_repair_proxy::config::{Config, Overrides};
use twilio_repair_proxy::store::{
    Incident, Membership, NewRepair, Outcome, StepKind, StepRecord, UserSnapshot,
};

const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";
/// Same length as [`ADMIN_TOKEN`], one character different.
const WRONG_TOKEN: &str = "admin-token-for-tests-0123456780";
const SERVICE: &str = "IS0123456789abcdef0123456789abcdef";
const CONVERSATION: &str = "CH0123456789abcdef0123456789abcdef";
/// What must never leave the admin plane unless an operator asks: the
/// friendly name, and attributes with a phone number.
const FRIENDLY: &str = "Kim Kowalski";
const PHONE: &str = "+15551230000";

/// `sha256:` + the first 16 hex characters, as documented.
fn hashed(identity: &str) -> String {
    let digest = sha2::Sha256::digest(identity.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{}", &hex[..16])
}

/// A journal with one unfinished repair of `kim` and one incident about
/// her, both recorded in plain text (as with `incident_identity = "plain"`,
/// before an operator switched to "hash").
async fn seeded_store() -> String {
    let url = store_url(StoreKind::Sqlite).await;
    let store = twilio_repair_proxy::store::open(&url, &Config::defaults().store_options)
        .await
        .unwrap();
    let attributes = format!(r#"{{"phone":"{PHONE}"}}"#);
    let repair_id = store
        .insert_repair(&NewRepair {
            account_sid: ACCOUNT.into(),
            credential_user: ACCOUNT.into(),
            upstream: "http://127.0.0.1:9".into(),
            service_base: format!("/v1/Services/{SERVICE}"),
            service_sid: SERVICE.into(),
            identity: "kim".into(),
            snapshot: UserSnapshot {
                user_sid: Some("US0123456789abcdef0123456789abcdef".into()),
                identity: "kim".into(),
                friendly_name: Some(FRIENDLY.into()),
                attributes: Some(attributes.clone()),
                role_sid: None,
                memberships: vec![Membership {
                    conversation_sid: CONVERSATION.into(),
                    participant_sid: Some("MB0123456789abcdef0123456789abcdef".into()),
                    attributes: Some(attributes),
                    role_sid: None,
                    date_created: None,
                }],
            },
            webhook: None,
        })
        .await
        .unwrap();
    store
        .insert_incident(&Incident {
            id: 0,
            at: twilio_repair_proxy::store::now_rfc3339(),
            account_sid: Some(ACCOUNT.into()),
            service_sid: Some(SERVICE.into()),
            conversation_sid: CONVERSATION.into(),
            identity: Some("kim".into()),
            outcome: Outcome::Failed,
            detail: Some(format!(
                "recreate user: POST /v1/Services/{SERVICE}/Users/kim: no answer within the step timeout"
            )),
            repair_id: Some(repair_id),
            steps: vec![StepRecord::bare(StepKind::CreateUser, None, false)],
            request_id: None,
        })
        .await
        .unwrap();
    url
}

/// A proxy (repair off: nothing touches the seeded journal) on `store`,
/// configured through the environment layer as an operator would.
async fn admin_proxy(store: &str, extra_env: &[(&str, &str)]) -> Proxy {
    let mut env = vec![
        ("TRP_UPSTREAM".to_string(), "http://127.0.0.1:9".to_string()),
        ("TRP_STORE".to_string(), store.to_string()),
        ("TRP_REPAIR_MODE".to_string(), "off".to_string()),
    ];
    env.extend(
        extra_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let config = Config::load(None, env, &Overrides::default()).unwrap();
    start_proxy(config).await
}

/// GET an admin path with an optional `Authorization` value: status,
/// headers, body.
async fn get(
    proxy: &Proxy,
    path: &str,
    authorization: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = reqwest::Client::new().get(proxy.admin_url(path));
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn admin_token_guards_everything_but_the_probes() {
    let store = seeded_store().await;
    let proxy = admin_proxy(&store, &[("TRP_ADMIN_TOKEN", ADMIN_TOKEN)]).await;
    // Probes stay open: the kubelet has no token.
    for path in ["/healthz", "/readyz"] {
        let (s, _, body) = get(&proxy, path, None).await;
        assert_eq!(s, 200, "{path}: {body}");
    }
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("admin:{ADMIN_TOKEN}")
        )
    );
    for path in [
        "/metrics",
        "/incidents",
        "/repairs",
        "/repairs?state=pending",
        "/repairs?include=snapshot",
    ] {
        for auth in [
            None,
            Some(bearer(WRONG_TOKEN)),
            Some(bearer(&format!("{ADMIN_TOKEN}x"))),
            Some(bearer(&ADMIN_TOKEN[..20])),
            Some("Bearer".to_string()),
            Some(basic.clone()),
        ] {
            let (s, headers, body) = get(&proxy, path, auth.as_deref()).await;
            assert_eq!(s, 401, "{path} with {auth:?}: {body}");
            assert_eq!(headers["content-type"], "application/json", "{path}");
            assert!(
                headers["www-authenticate"]
                    .to_str()
                    .unwrap()
                    .starts_with("Bearer"),
                "{headers:?}"
            );
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["status"], 401, "{body}");
            assert!(v["message"].as_str().unwrap().contains("token"), "{body}");
            assert!(
                !body.contains("kim") && !body.contains(ADMIN_TOKEN),
                "{body}"
            );
        }
        // The right token (the scheme name is case-insensitive) opens it.
        for auth in [bearer(ADMIN_TOKEN), format!("bearer {ADMIN_TOKEN}")] {
            let (s, _, body) = get(&proxy, path, Some(&auth)).await;
            assert_eq!(s, 200, "{path}: {body}");
        }
    }
    let (_, _, metrics) = get(&proxy, "/metrics", Some(&bearer(ADMIN_TOKEN))).await;
    // A series that exists before any request (trp_requests_total has
    // none until a request is answered).
    assert!(metrics.contains("trp_in_flight_requests 0"), "{metrics}");
    proxy.stop().await;
}

#[tokio::test]
async fn snapshots_are_shown_only_to_an_authenticated_operator_who_asks() {
    let store = seeded_store().await;

    // No token configured: the plane is open, but a journal answer never
    // carries the snapshot, and asking for it is refused.
    let open = admin_proxy(&store, &[]).await;
    let (s, _, body) = get(&open, "/repairs?state=pending", None).await;
    assert_eq!(s, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["repairs"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(v["repairs"][0]["identity"], "kim");
    assert_eq!(v["repairs"][0]["state"], "deleting");
    assert!(v["repairs"][0].get("snapshot").is_none(), "{body}");
    assert!(
        !body.contains(FRIENDLY) && !body.contains(PHONE),
        "snapshot leaked: {body}"
    );
    let (s, headers, body) = get(&open, "/repairs?include=snapshot", None).await;
    assert_eq!(s, 403, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    assert!(
        body.contains("admin.token") && !body.contains(FRIENDLY),
        "{body}"
    );
    open.stop().await;

    // With a token: only an operator presenting it and asking sees it.
    let guarded = admin_proxy(&store, &[("TRP_ADMIN_TOKEN", ADMIN_TOKEN)]).await;
    let auth = bearer(ADMIN_TOKEN);
    let (s, _, body) = get(&guarded, "/repairs", Some(&auth)).await;
    assert_eq!(s, 200, "{body}");
    assert!(!body.contains(FRIENDLY) && !body.contains(PHONE), "{body}");
    let (s, _, body) = get(&guarded, "/repairs?include=snapshot", Some(&auth)).await;
    assert_eq!(s, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let snap = &v["repairs"][0]["snapshot"];
    assert_eq!(snap["friendly_name"], FRIENDLY, "{body}");
    assert!(
        snap["attributes"].as_str().unwrap().contains(PHONE),
        "{body}"
    );
    assert_eq!(snap["memberships"][0]["conversation_sid"], CONVERSATION);
    let (s, _, body) = get(&guarded, "/repairs?include=everything", Some(&auth)).await;
    assert_eq!(s, 400, "{body}");
    guarded.stop().await;
}

#[tokio::test]
async fn hash_mode_hides_identities_in_every_admin_answer() {
    let store = seeded_store().await;
    let proxy = admin_proxy(
        &store,
        &[
            ("TRP_ADMIN_TOKEN", ADMIN_TOKEN),
            ("TRP_REPAIR_INCIDENT_IDENTITY", "hash"),
        ],
    )
    .await;
    let auth = bearer(ADMIN_TOKEN);
    let h = hashed("kim");
    for path in [
        "/incidents",
        "/repairs",
        "/repairs?state=pending",
        "/repairs?include=snapshot",
        "/metrics",
    ] {
        let (s, _, body) = get(&proxy, path, Some(&auth)).await;
        assert_eq!(s, 200, "{path}: {body}");
        // "kim" is not hex: no hash can contain it.
        for secret in ["kim", FRIENDLY, PHONE] {
            assert!(!body.contains(secret), "{path} shows {secret}: {body}");
        }
    }
    let (_, _, body) = get(&proxy, "/incidents", Some(&auth)).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["incidents"][0]["identity"], h.as_str(), "{body}");
    assert!(
        v["incidents"][0]["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("/Users/{h}")),
        "{body}"
    );
    let (_, _, body) = get(&proxy, "/repairs?include=snapshot", Some(&auth)).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let r = &v["repairs"][0];
    assert_eq!(r["identity"], h.as_str(), "{body}");
    // Even an operator's snapshot keeps what it needs to act on, not who
    // the person is.
    assert_eq!(r["snapshot"]["identity"], h.as_str(), "{body}");
    assert_eq!(
        r["snapshot"]["memberships"][0]["conversation_sid"],
        CONVERSATION
    );
    assert!(r["snapshot"].get("friendly_name").is_none(), "{body}");
    proxy.stop().await;
}

#[tokio::test]
async fn hash_mode_admin_shows_the_workflows_hash_unchanged() {
    // An incident the workflow itself recorded hashed is shown as recorded
    // (not hashed twice), and matches the documented form.
    let (st, olga) = Scene::new()
        .user("olga")
        .friendly("Olga O")
        .member_of_another()
        .armed(twilio_repair_proxy::emulator::FaultMode::Block)
        .proxy(|c| c.repair.incident_identity = twilio_repair_proxy::config::IdentityRecord::Hash)
        .start()
        .await;
    let proxy = &st.proxy;
    let r = reqwest::Client::new()
        .post(proxy.url(&olga.participants(olga.target())))
        .basic_auth(ACCOUNT, Some(TOKEN))
        .form(&[("Identity", "olga")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v = admin_json(proxy.admin, "/incidents").await;
    assert_eq!(v["incidents"][0]["outcome"], "repaired", "{v}");
    assert_eq!(
        v["incidents"][0]["identity"],
        hashed("olga").as_str(),
        "{v}"
    );
    assert!(!v.to_string().contains("olga") && !v.to_string().contains("Olga O"));
    st.proxy.stop().await;
}

/// `incidents export` as an operator runs it: (stdout, stderr).
fn export(store: &str, format: &str, env: &[(&str, &str)]) -> (String, String) {
    let mut cmd = Command::new(bin());
    cmd.args(["incidents", "export", "--format", format, "--store", store]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn incidents_export_follows_the_identity_privacy_setting() {
    let store = seeded_store().await;
    let h = hashed("kim");
    for format in ["json", "csv"] {
        // Plain: the operator's own export shows what was recorded.
        let (out, _) = export(&store, format, &[]);
        assert!(out.contains("kim"), "{format}: {out}");
        // Hash: no plain identity, not even one recorded before the switch.
        let (out, _) = export(&store, format, &[("TRP_REPAIR_INCIDENT_IDENTITY", "hash")]);
        assert!(!out.contains("kim"), "{format}: {out}");
        assert!(out.contains(&h), "{format}: {out}");
    }
}

#[tokio::test]
async fn an_operator_can_abandon_an_unfinished_repair_and_nobody_else_can() {
    let store = seeded_store().await;
    let guarded = admin_proxy(&store, &[("TRP_ADMIN_TOKEN", ADMIN_TOKEN)]).await;
    let post = |auth: Option<String>, path: &str| {
        let mut req = reqwest::Client::new().post(guarded.admin_url(path));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    let (_, _, body) = get(&guarded, "/repairs", Some(&bearer(ADMIN_TOKEN))).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = v["repairs"][0]["id"].as_i64().unwrap();
    let path = format!("/repairs/{id}/abandon");
    // Without the token: refused, the record stays pending.
    let r = post(None, &path).await.unwrap();
    assert_eq!(r.status(), 401);
    let (_, _, body) = get(&guarded, "/repairs", Some(&bearer(ADMIN_TOKEN))).await;
    assert!(body.contains("deleting"), "{body}");
    // The operator abandons it: it leaves the pending list, once.
    let r = post(Some(bearer(ADMIN_TOKEN)), &path).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["state"], "abandoned");
    let (_, _, body) = get(&guarded, "/repairs", Some(&bearer(ADMIN_TOKEN))).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["repairs"].as_array().unwrap().len(), 0, "{body}");
    let r = post(Some(bearer(ADMIN_TOKEN)), &path).await.unwrap();
    assert_eq!(r.status(), 409);
    let r = post(Some(bearer(ADMIN_TOKEN)), "/repairs/999999/abandon")
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    guarded.stop().await;

    // With no token configured there is no authenticated operator.
    let open = admin_proxy(&store, &[]).await;
    let r = reqwest::Client::new()
        .post(open.admin_url(&path))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    open.stop().await;
}
