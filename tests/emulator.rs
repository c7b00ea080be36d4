//! Scenario tests of the Twilio Conversations emulator over real sockets.

use std::collections::HashSet;

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use twilio_repair_proxy::emulator::{self, EmulatorConfig};

const SID: &str = emulator::DEFAULT_ACCOUNT_SID;
const TOKEN: &str = emulator::DEFAULT_AUTH_TOKEN;

struct Emu {
    base: String,
    client: reqwest::Client,
    _stop: oneshot::Sender<()>,
}

struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }
}

async fn start(mut config: EmulatorConfig) -> Emu {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    config.public_url = base.clone();
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(emulator::serve(listener, config, async move {
        let _ = rx.await;
    }));
    Emu {
        base,
        client: reqwest::Client::new(),
        _stop: tx,
    }
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

fn form(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

impl Emu {
    async fn send(&self, req: reqwest::RequestBuilder) -> Resp {
        let r = req.send().await.expect("request failed");
        Resp {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            text: r.text().await.unwrap(),
        }
    }
    fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }
    async fn get(&self, path: &str) -> Resp {
        self.send(self.client.get(self.url(path)).basic_auth(SID, Some(TOKEN)))
            .await
    }
    async fn post(&self, path: &str, pairs: &[(&str, &str)]) -> Resp {
        self.post_raw(path, form(pairs)).await
    }
    async fn post_raw(&self, path: &str, body: String) -> Resp {
        self.send(
            self.client
                .post(self.url(path))
                .basic_auth(SID, Some(TOKEN))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body),
        )
        .await
    }
    async fn delete(&self, path: &str) -> Resp {
        self.send(
            self.client
                .delete(self.url(path))
                .basic_auth(SID, Some(TOKEN)),
        )
        .await
    }
    async fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Resp {
        let mut req = self.client.request(method, self.url(path));
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.send(req).await
    }
    async fn set_fault(&self, fault: Value) {
        let r = self
            .control(reqwest::Method::PUT, "/__emulator/fault", Some(fault))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    async fn add_rule(&self, rule: Value) {
        let r = self
            .control(reqwest::Method::POST, "/__emulator/faults", Some(rule))
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    async fn requests(&self) -> Vec<Value> {
        let r = self
            .control(reqwest::Method::GET, "/__emulator/requests", None)
            .await;
        r.json()["requests"].as_array().unwrap().clone()
    }
    async fn new_service(&self) -> String {
        let r = self.post("/v1/Services", &[("FriendlyName", "test")]).await;
        assert_eq!(r.status, 201, "{}", r.text);
        r.json()["sid"].as_str().unwrap().to_owned()
    }
    /// Creates a conversation under `prefix` (`/v1` or `/v1/Services/IS..`).
    async fn new_conversation(&self, prefix: &str) -> String {
        let r = self
            .post(
                &format!("{prefix}/Conversations"),
                &[("FriendlyName", "chat")],
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        r.json()["sid"].as_str().unwrap().to_owned()
    }
}

/// The fault scenario on one path style and mode.
async fn fault_scenario(scoped: bool, mode: &str) {
    let emu = start(EmulatorConfig::default()).await;
    emu.set_fault(json!({"mode": mode, "identities": ["alice"]}))
        .await;
    let prefix = if scoped {
        format!("/v1/Services/{}", emu.new_service().await)
    } else {
        "/v1".to_owned()
    };
    let ch1 = emu.new_conversation(&prefix).await;
    let ch2 = emu.new_conversation(&prefix).await;
    let parts1 = format!("{prefix}/Conversations/{ch1}/Participants");
    let parts2 = format!("{prefix}/Conversations/{ch2}/Participants");

    let r = emu.post(&parts1, &[("Identity", "alice")]).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json()["identity"], "alice");
    assert_eq!(r.json()["chat_service_sid"].is_string(), scoped);
    let r = emu.delete(&format!("{parts1}/alice")).await;
    assert_eq!(r.status, 204);
    assert!(r.text.is_empty());

    // Re-adding (to another conversation of the same service) hits the fault.
    let r = emu
        .post(&parts2, &[("Identity", "alice"), ("Attributes", "{}")])
        .await;
    assert_eq!(r.status, 404, "{}", r.text);
    let expected = format!(
        "{{\"code\":20404,\"message\":\"The requested resource {parts2} was not found\",\"more_info\":\"https://www.twilio.com/docs/errors/20404\",\"status\":404}}"
    );
    assert_eq!(r.text, expected);

    let fetched = emu.get(&format!("{parts2}/alice")).await;
    if mode == "ghost" {
        assert_eq!(fetched.status, 200, "ghost participant must exist");
        assert_eq!(fetched.json()["identity"], "alice");
    } else {
        assert_eq!(fetched.status, 404, "block mode must not create");
        // ...and it keeps failing.
        let again = emu.post(&parts2, &[("Identity", "alice")]).await;
        assert_eq!(again.status, 404);
    }
    let log = emu.requests().await;
    let faulted = log
        .iter()
        .filter(|e| e["fault"].as_str().is_some_and(|f| f.contains("20404")))
        .count();
    assert!(faulted >= 1);

    // The documented workaround: delete and recreate the User, re-add.
    let r = emu.delete(&format!("{prefix}/Users/alice")).await;
    assert_eq!(r.status, 204);
    let r = emu
        .post(&format!("{prefix}/Users"), &[("Identity", "alice")])
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = emu.post(&parts2, &[("Identity", "alice")]).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = emu.get(&format!("{parts2}/alice")).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn fault_ghost_service_path() {
    fault_scenario(true, "ghost").await;
}

#[tokio::test]
async fn fault_ghost_default_path() {
    fault_scenario(false, "ghost").await;
}

#[tokio::test]
async fn fault_block_service_path() {
    fault_scenario(true, "block").await;
}

#[tokio::test]
async fn fault_block_default_path() {
    fault_scenario(false, "block").await;
}

#[tokio::test]
async fn unaffected_identity_re_add_works() {
    let emu = start(EmulatorConfig {
        fault_identities: vec!["alice".into()],
        ..EmulatorConfig::default()
    })
    .await;
    let ch = emu.new_conversation("/v1").await;
    let parts = format!("/v1/Conversations/{ch}/Participants");
    assert_eq!(emu.post(&parts, &[("Identity", "bob")]).await.status, 201);
    assert_eq!(emu.delete(&format!("{parts}/bob")).await.status, 204);
    let r = emu.post(&parts, &[("Identity", "bob")]).await;
    assert_eq!(r.status, 201, "{}", r.text);
    // An affected identity configured from the config file does fail.
    assert_eq!(emu.post(&parts, &[("Identity", "alice")]).await.status, 201);
    assert_eq!(emu.delete(&format!("{parts}/alice")).await.status, 204);
    assert_eq!(emu.post(&parts, &[("Identity", "alice")]).await.status, 404);
}

#[tokio::test]
async fn fault_by_pattern_and_creation_date() {
    let emu = start(EmulatorConfig::default()).await;
    emu.set_fault(json!({
        "mode": "block",
        "identity_pattern": "^legacy-",
        "user_created_on": "2024-05-01"
    }))
    .await;
    let ch = emu.new_conversation("/v1").await;
    let parts = format!("/v1/Conversations/{ch}/Participants");
    // Users created on the affected day (form param and control API).
    let r = emu
        .post(
            "/v1/Users",
            &[("Identity", "old"), ("DateCreated", "2024-05-01T10:00:00Z")],
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["date_created"], "2024-05-01T10:00:00Z");
    assert_eq!(
        emu.post("/v1/Users", &[("Identity", "old2")]).await.status,
        201
    );
    let r = emu
        .control(
            reqwest::Method::PUT,
            "/__emulator/users/date-created",
            Some(json!({"identity": "old2", "date_created": "2024-05-01T23:59:59Z"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    for id in ["legacy-1", "old", "old2", "fresh"] {
        assert_eq!(emu.post(&parts, &[("Identity", id)]).await.status, 201);
        assert_eq!(
            emu.delete(&format!("{parts}/{}", enc(id))).await.status,
            204
        );
    }
    for (id, want) in [
        ("legacy-1", 404),
        ("old", 404),
        ("old2", 404),
        ("fresh", 201),
    ] {
        let r = emu.post(&parts, &[("Identity", id)]).await;
        assert_eq!(r.status, want, "{id}: {}", r.text);
    }
    // The fault settings read back.
    let r = emu
        .control(reqwest::Method::GET, "/__emulator/fault", None)
        .await;
    assert_eq!(r.json()["mode"], "block");
    // An invalid regex is refused.
    let r = emu
        .control(
            reqwest::Method::PUT,
            "/__emulator/fault",
            Some(json!({"identity_pattern": "("})),
        )
        .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn auth_required() {
    let emu = start(EmulatorConfig {
        api_key_sid: Some("SKbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb".into()),
        api_key_secret: Some("keysecret".into()),
        ..EmulatorConfig::default()
    })
    .await;
    let none = emu.send(emu.client.get(emu.url("/v1/Conversations"))).await;
    assert_eq!(none.status, 401);
    assert_eq!(
        none.headers["www-authenticate"].to_str().unwrap(),
        "Basic realm=\"Twilio API\""
    );
    assert_eq!(
        none.json(),
        json!({"code":20003,"detail":"","message":"Authenticate","more_info":"https://www.twilio.com/docs/errors/20003","status":401})
    );
    let wrong = emu
        .send(
            emu.client
                .get(emu.url("/v1/Conversations"))
                .basic_auth(SID, Some("wrongtoken")),
        )
        .await;
    assert_eq!(wrong.status, 401);
    let key = emu
        .send(
            emu.client
                .get(emu.url("/v1/Conversations"))
                .basic_auth("SKbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", Some("keysecret")),
        )
        .await;
    assert_eq!(key.status, 200, "{}", key.text);
    let ok = emu.get("/v1/Conversations").await;
    assert_eq!(ok.status, 200);
    let rid = ok.headers["twilio-request-id"].to_str().unwrap().to_owned();
    assert!(rid.starts_with("RQ") && rid.len() == 34, "{rid}");
    assert!(rid[2..].bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(none.headers.contains_key("twilio-request-id"));
}

#[tokio::test]
async fn conflicts_and_validation() {
    let emu = start(EmulatorConfig::default()).await;
    let ch = emu.new_conversation("/v1").await;
    let parts = format!("/v1/Conversations/{ch}/Participants");
    assert_eq!(emu.post(&parts, &[("Identity", "dup")]).await.status, 201);
    let r = emu.post(&parts, &[("Identity", "dup")]).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["code"], 50433);

    let sms = [
        ("MessagingBinding.Address", "+15551230000"),
        ("MessagingBinding.ProxyAddress", "+15559990000"),
    ];
    let r = emu.post(&parts, &sms).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let p = r.json();
    assert_eq!(p["identity"], Value::Null);
    assert_eq!(
        p["messaging_binding"],
        json!({"type":"sms","address":"+15551230000","proxy_address":"+15559990000"})
    );
    assert_eq!(p["attributes"], "{}");
    let r = emu.post(&parts, &sms).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["code"], 50416);
    let r = emu
        .post(
            &parts,
            &[
                ("MessagingBinding.Address", "whatsapp:+15551230000"),
                ("MessagingBinding.ProxyAddress", "whatsapp:+15559990000"),
            ],
        )
        .await;
    assert_eq!(r.json()["messaging_binding"]["type"], "whatsapp");

    let r = emu.post("/v1/Users", &[("FriendlyName", "x")]).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], 50204);
    assert_eq!(
        emu.post("/v1/Users", &[("Identity", "u1")]).await.status,
        201
    );
    let r = emu.post("/v1/Users", &[("Identity", "u1")]).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["code"], 50201);
    assert_eq!(r.json()["message"], "User already exists");
    // `dup` was created implicitly by its participant.
    assert_eq!(emu.get("/v1/Users/dup").await.status, 200);

    let r = emu
        .post(&parts, &[("Identity", "z"), ("Attributes", "{not json")])
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], 20001);
    let r = emu
        .post(&parts, &[("Identity", "z"), ("RoleSid", "nope")])
        .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn not_found_errors() {
    let emu = start(EmulatorConfig::default()).await;
    let path = "/v1/Conversations/CH00000000000000000000000000000000/Participants";
    let r = emu.post(path, &[("Identity", "a")]).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json(),
        json!({"code":20404,"message":format!("The requested resource {path} was not found"),"more_info":"https://www.twilio.com/docs/errors/20404","status":404})
    );
    let path = "/v1/Services/IS00000000000000000000000000000000/Conversations";
    let r = emu.get(path).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json()["message"],
        format!("The requested resource {path} was not found")
    );
    let r = emu.get("/v1/NoSuchThing").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["code"], 20404);
    let ch = emu.new_conversation("/v1").await;
    let r = emu
        .get(&format!("/v1/Conversations/{ch}/Participants/nobody"))
        .await;
    assert_eq!(r.status, 404);
    // Configuration names the default service, which serves scoped paths too.
    let cfg = emu.get("/v1/Configuration").await.json();
    let is = cfg["default_chat_service_sid"].as_str().unwrap().to_owned();
    let r = emu
        .get(&format!("/v1/Services/{is}/Conversations/{ch}"))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["chat_service_sid"], is.as_str());
}

#[tokio::test]
async fn pagination_follows_next_page_url() {
    let emu = start(EmulatorConfig::default()).await;
    let is = emu.new_service().await;
    let prefix = format!("/v1/Services/{is}");
    let ch = emu.new_conversation(&prefix).await;
    let parts = format!("{prefix}/Conversations/{ch}/Participants");
    let mut created = Vec::new();
    for i in 0..7 {
        let r = emu.post(&parts, &[("Identity", &format!("user{i}"))]).await;
        created.push(r.json()["sid"].as_str().unwrap().to_owned());
    }
    let mut url = format!("{parts}?PageSize=3");
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let r = emu.get(&url).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let body = r.json();
        let meta = &body["meta"];
        assert_eq!(meta["key"], "participants");
        assert_eq!(meta["page"], pages);
        assert_eq!(meta["page_size"], 3);
        assert!(
            meta["first_page_url"]
                .as_str()
                .unwrap()
                .starts_with(&emu.base)
        );
        if pages > 0 {
            assert!(meta["previous_page_url"].is_string());
        } else {
            assert!(meta["previous_page_url"].is_null());
        }
        for p in body["participants"].as_array().unwrap() {
            seen.push(p["sid"].as_str().unwrap().to_owned());
        }
        pages += 1;
        match meta["next_page_url"].as_str() {
            Some(next) => {
                assert!(next.starts_with(&emu.base), "{next}");
                assert!(next.contains("PageToken=PT"));
                url = next.to_owned();
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, created);

    // previous_page_url of the second page leads back to the first page.
    let first = emu.get(&format!("{parts}?PageSize=3")).await.json();
    let second = emu
        .get(first["meta"]["next_page_url"].as_str().unwrap())
        .await
        .json();
    let back = emu
        .get(second["meta"]["previous_page_url"].as_str().unwrap())
        .await
        .json();
    assert_eq!(back["participants"], first["participants"]);

    assert_eq!(emu.get(&format!("{parts}?PageSize=100")).await.status, 200);
    let r = emu.get(&format!("{parts}?PageSize=101")).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], 20001);
    assert_eq!(
        emu.get(&format!("{prefix}/Users?PageSize=51")).await.status,
        400
    );
    assert_eq!(emu.get(&format!("{parts}?PageSize=0")).await.status, 400);
    let users = emu.get(&format!("{prefix}/Users?PageSize=50")).await.json();
    assert_eq!(users["users"].as_array().unwrap().len(), 7);
    assert!(users["users"][0]["is_online"].is_null());
}

async fn cascade_case(cascade: bool) {
    let emu = start(EmulatorConfig {
        user_delete_removes_participants: cascade,
        ..EmulatorConfig::default()
    })
    .await;
    let ch1 = emu.new_conversation("/v1").await;
    let ch2 = emu.new_conversation("/v1").await;
    for ch in [&ch1, &ch2] {
        let r = emu
            .post(
                &format!("/v1/Conversations/{ch}/Participants"),
                &[("Identity", "carol")],
            )
            .await;
        assert_eq!(r.status, 201);
    }
    let uc = emu.get("/v1/Users/carol/Conversations").await.json();
    assert_eq!(uc["conversations"].as_array().unwrap().len(), 2);
    assert_eq!(uc["meta"]["key"], "conversations");
    assert_eq!(emu.delete("/v1/Users/carol").await.status, 204);
    assert_eq!(emu.get("/v1/Users/carol").await.status, 404);
    for ch in [&ch1, &ch2] {
        let r = emu
            .get(&format!("/v1/Conversations/{ch}/Participants/carol"))
            .await;
        assert_eq!(r.status, if cascade { 404 } else { 200 });
    }
}

#[tokio::test]
async fn user_delete_cascade_on() {
    cascade_case(true).await;
}

#[tokio::test]
async fn user_delete_cascade_off() {
    cascade_case(false).await;
}

#[tokio::test]
async fn fetch_by_identity_with_special_characters() {
    let emu = start(EmulatorConfig::default()).await;
    let is = emu.new_service().await;
    let prefix = format!("/v1/Services/{is}");
    let ch = emu.new_conversation(&prefix).await;
    let parts = format!("{prefix}/Conversations/{ch}/Participants");
    for id in ["john smith", "a.b@example.com", "+15551234567", "Zoë 東京"] {
        let r = emu.post(&parts, &[("Identity", id)]).await;
        assert_eq!(r.status, 201, "{id}: {}", r.text);
        let sid = r.json()["sid"].as_str().unwrap().to_owned();
        let p = emu.get(&format!("{parts}/{}", enc(id))).await;
        assert_eq!(p.status, 200, "{id}");
        assert_eq!(p.json()["identity"], id);
        assert_eq!(p.json()["sid"], sid.as_str());
        let u = emu.get(&format!("{prefix}/Users/{}", enc(id))).await;
        assert_eq!(u.status, 200, "{id}");
        assert_eq!(u.json()["identity"], id);
        assert_eq!(u.json()["is_online"], false);
        let user_sid = u.json()["sid"].as_str().unwrap().to_owned();
        assert_eq!(
            emu.get(&format!("{prefix}/Users/{user_sid}")).await.status,
            200
        );
        let uc = emu
            .get(&format!("{prefix}/Users/{}/Conversations/{ch}", enc(id)))
            .await;
        assert_eq!(uc.json()["participant_sid"], sid.as_str());
    }
    // `+` in a form body is a space; `%20` too.
    let r = emu.post_raw(&parts, "Identity=mary+jane".into()).await;
    assert_eq!(r.json()["identity"], "mary jane");
    let r = emu.get(&format!("{parts}/mary%20jane")).await;
    assert_eq!(r.status, 200);
    let r = emu.post_raw(&parts, "Identity=x%20y".into()).await;
    assert_eq!(r.json()["identity"], "x y");
    // Update and delete by identity.
    let r = emu
        .post(
            &format!("{parts}/mary%20jane"),
            &[("Attributes", "{\"a\":1}")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["attributes"], "{\"a\":1}");
    assert_eq!(
        emu.delete(&format!("{parts}/mary%20jane")).await.status,
        204
    );
    assert_eq!(emu.get(&format!("{parts}/mary%20jane")).await.status, 404);
}

#[tokio::test]
async fn injected_faults() {
    let emu = start(EmulatorConfig::default()).await;
    let ch = emu.new_conversation("/v1").await;
    let parts = format!("/v1/Conversations/{ch}/Participants");

    emu.add_rule(json!({"method":"GET","path":"^/v1/Users$","times":1,
        "action":{"kind":"too_many_requests","retry_after":7}}))
        .await;
    let r = emu.get("/v1/Users").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.headers["retry-after"], "7");
    assert_eq!(r.json()["code"], 20429);
    assert_eq!(emu.get("/v1/Users").await.status, 200, "times=1 is used up");

    emu.add_rule(json!({"method":"POST","path":"/Participants$","times":1,
        "action":{"kind":"status","status":500}}))
        .await;
    let r = emu.post(&parts, &[("Identity", "e1")]).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["code"], 20500);
    assert_eq!(
        emu.get(&format!("{parts}/e1")).await.status,
        404,
        "not processed"
    );

    emu.add_rule(json!({"path":"/Participants$","times":1,"action":{"kind":"reset"}}))
        .await;
    let err = emu
        .client
        .post(emu.url(&parts))
        .basic_auth(SID, Some(TOKEN))
        .body(form(&[("Identity", "e2")]))
        .send()
        .await;
    assert!(err.is_err(), "connection must be dropped: {err:?}");
    assert_eq!(emu.get(&format!("{parts}/e2")).await.status, 404);

    emu.add_rule(json!({"path":"/Participants$","times":1,
        "action":{"kind":"hang_then_drop","ms":50,"processed":true}}))
        .await;
    let err = emu
        .client
        .post(emu.url(&parts))
        .basic_auth(SID, Some(TOKEN))
        .body(form(&[("Identity", "e3")]))
        .send()
        .await;
    assert!(err.is_err());
    assert_eq!(
        emu.get(&format!("{parts}/e3")).await.status,
        200,
        "processed"
    );

    emu.add_rule(json!({"method":"GET","path":"/Participants/","times":1,
        "action":{"kind":"malformed_json"}}))
        .await;
    let r = emu.get(&format!("{parts}/e3")).await;
    assert_eq!(r.status, 200);
    assert!(
        serde_json::from_str::<Value>(&r.text).is_err(),
        "{}",
        r.text
    );
    assert!(!r.text.is_empty());

    emu.add_rule(json!({"path":".","times":1,"action":{"kind":"latency","ms":10}}))
        .await;
    assert_eq!(emu.get("/v1/Users").await.status, 200);

    let r = emu
        .control(reqwest::Method::GET, "/__emulator/faults", None)
        .await;
    assert_eq!(r.json()["faults"].as_array().unwrap().len(), 0);
    let r = emu
        .control(
            reqwest::Method::POST,
            "/__emulator/faults",
            Some(json!({"path":"(","action":{"kind":"reset"}})),
        )
        .await;
    assert_eq!(r.status, 400);
    emu.add_rule(json!({"path":".","action":{"kind":"status","status":503}}))
        .await;
    assert_eq!(emu.get("/v1/Users").await.status, 503);
    let r = emu
        .control(reqwest::Method::DELETE, "/__emulator/faults", None)
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(emu.get("/v1/Users").await.status, 200);
}

#[tokio::test]
async fn request_log_records_without_secrets() {
    let emu = start(EmulatorConfig::default()).await;
    let ch = emu.new_conversation("/v1").await;
    let r = emu
        .send(
            emu.client
                .post(emu.url(&format!("/v1/Conversations/{ch}/Participants")))
                .basic_auth(SID, Some(TOKEN))
                .header("X-Twilio-Webhook-Enabled", "true")
                .header("content-type", "application/x-www-form-urlencoded")
                .body("Identity=logme&Attributes=%7B%7D"),
        )
        .await;
    assert_eq!(r.status, 201);
    emu.get("/v1/Users?PageSize=5").await;
    emu.send(emu.client.get(emu.url("/v1/Users"))).await; // 401
    let log = emu.requests().await;
    assert_eq!(log.len(), 4);
    let p = &log[1];
    assert_eq!(p["method"], "POST");
    assert_eq!(p["status"], 201);
    assert_eq!(p["headers"]["x-twilio-webhook-enabled"], "true");
    assert_eq!(p["form"]["Identity"], "logme");
    assert_eq!(p["form"]["Attributes"], "{}");
    assert_eq!(p["auth_user"], SID);
    assert_eq!(log[2]["path"], "/v1/Users?PageSize=5");
    assert_eq!(log[3]["status"], 401);
    let dump = serde_json::to_string(&log).unwrap();
    assert!(!dump.contains(TOKEN));
    assert!(!dump.to_ascii_lowercase().contains("authorization"));
    let r = emu
        .control(reqwest::Method::DELETE, "/__emulator/requests", None)
        .await;
    assert_eq!(r.status, 204);
    assert!(emu.requests().await.is_empty());
    // Control calls are not logged.
    emu.control(reqwest::Method::GET, "/__emulator/fault", None)
        .await;
    assert!(emu.requests().await.is_empty());
}

#[tokio::test]
async fn reset_wipes_state_but_keeps_default_service() {
    let emu = start(EmulatorConfig::default()).await;
    let cfg = emu.get("/v1/Configuration").await.json();
    let ch = emu.new_conversation("/v1").await;
    let r = emu
        .control(reqwest::Method::POST, "/__emulator/reset", None)
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        emu.get(&format!("/v1/Conversations/{ch}")).await.status,
        404
    );
    let after = emu.get("/v1/Configuration").await.json();
    assert_eq!(
        after["default_chat_service_sid"],
        cfg["default_chat_service_sid"]
    );
    // The log was wiped too: only the two requests after the reset remain.
    assert_eq!(emu.requests().await.len(), 2);
}

#[tokio::test]
async fn conversations_crud_and_services() {
    let emu = start(EmulatorConfig::default()).await;
    let r = emu
        .post(
            "/v1/Conversations",
            &[("FriendlyName", "f"), ("UniqueName", "uniq")],
        )
        .await;
    assert_eq!(r.status, 201);
    let ch = r.json()["sid"].as_str().unwrap().to_owned();
    assert_eq!(
        emu.get("/v1/Conversations/uniq").await.json()["sid"],
        ch.as_str()
    );
    let r = emu
        .post("/v1/Conversations/uniq", &[("FriendlyName", "g")])
        .await;
    assert_eq!(r.json()["friendly_name"], "g");
    let r = emu
        .post("/v1/Conversations", &[("UniqueName", "uniq")])
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(
        emu.delete(&format!("/v1/Conversations/{ch}")).await.status,
        204
    );
    assert_eq!(emu.get("/v1/Conversations/uniq").await.status, 404);

    let is = emu.new_service().await;
    let list = emu.get("/v1/Services").await.json();
    assert_eq!(list["services"].as_array().unwrap().len(), 2);
    assert_eq!(emu.delete(&format!("/v1/Services/{is}")).await.status, 204);
    assert_eq!(emu.get(&format!("/v1/Services/{is}")).await.status, 404);
    let default = emu.get("/v1/Configuration").await.json()["default_chat_service_sid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        emu.delete(&format!("/v1/Services/{default}")).await.status,
        409
    );
}

#[tokio::test]
async fn config_file_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("emu.toml");
    std::fs::write(
        &path,
        r#"
auth_token = "filetoken"
user_delete_removes_participants = false
fault_mode = "block"
fault_identities = ["alice"]

[[faults]]
method = "POST"
path = "/Participants$"
times = 1
action = { kind = "status", status = 503 }
"#,
    )
    .unwrap();
    let args = emulator::EmulatorArgs {
        listen: "127.0.0.1:0".parse().unwrap(),
        account_sid: None,
        auth_token: None,
        public_url: Some("http://example.test".into()),
        config: Some(path.clone()),
    };
    let config = EmulatorConfig::from_args(&args).unwrap();
    assert_eq!(config.auth_token, "filetoken");
    assert_eq!(config.public_url, "http://example.test");
    assert!(!config.user_delete_removes_participants);
    assert_eq!(config.faults.len(), 1);

    let flagged = emulator::EmulatorArgs {
        auth_token: Some("flagtoken".into()),
        ..args.clone()
    };
    assert_eq!(
        EmulatorConfig::from_args(&flagged).unwrap().auth_token,
        "flagtoken"
    );

    std::fs::write(&path, "no_such_key = 1\n").unwrap();
    assert!(EmulatorConfig::from_args(&args).is_err());
    let bad_sid = emulator::EmulatorArgs {
        account_sid: Some("XX123".into()),
        config: None,
        ..args.clone()
    };
    assert!(EmulatorConfig::from_args(&bad_sid).is_err());
    let bad_token = emulator::EmulatorArgs {
        auth_token: Some("not alnum!".into()),
        config: None,
        ..args
    };
    assert!(EmulatorConfig::from_args(&bad_token).is_err());
}

#[tokio::test]
async fn body_limit_is_enforced() {
    let emu = start(EmulatorConfig::default()).await;
    let ch = emu.new_conversation("/v1").await;
    let huge = format!(
        "Identity=a&Attributes={}",
        "x".repeat(emulator::MAX_BODY_BYTES)
    );
    let r = emu
        .post_raw(&format!("/v1/Conversations/{ch}/Participants"), huge)
        .await;
    assert_eq!(r.status, 413);
    let ids: HashSet<String> = emu
        .get(&format!("/v1/Conversations/{ch}/Participants"))
        .await
        .json()["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["identity"].to_string())
        .collect();
    assert!(ids.is_empty());
}
