//! Scenario tests of the Twilio Conversations emulator over real sockets.

use std::collections::HashSet;

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use twilio_emulator::{self as emulator, EmulatorConfig};

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
async fn read_lag_hides_a_new_participant_from_gets_but_not_from_the_duplicate_check() {
    let emu = start(EmulatorConfig::default()).await;
    emu.set_fault(json!({"mode": "off", "read_lag_ms": 500}))
        .await;
    let ch = emu.new_conversation("/v1").await;
    let parts = format!("/v1/Conversations/{ch}/Participants");
    let r = emu.post(&parts, &[("Identity", "alice")]).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let mb = serde_json::from_str::<Value>(&r.text).unwrap()["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(emu.get(&format!("{parts}/alice")).await.status, 404);
    assert_eq!(emu.get(&format!("{parts}/{mb}")).await.status, 404);
    assert_eq!(
        emu.post(&parts, &[("Identity", "alice")]).await.status,
        409,
        "the write is there"
    );
    // Readable once the lag has passed (polled, bounded).
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while emu.get(&format!("{parts}/alice")).await.status != 200 {
        assert!(std::time::Instant::now() < until, "never readable");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Out of range.
    let r = emu
        .control(
            reqwest::Method::PUT,
            "/__emulator/fault",
            Some(json!({"read_lag_ms": 120_001})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
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

// ---- several accounts, detached processing, hold, in-flight counts ----

mod common;

use std::time::Duration;

use common::Emu as Emulator;

const B_SID: &str = "ACbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const B_TOKEN: &str = "btoken";
const B_KEY: &str = "SKbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const B_SECRET: &str = "bsecret";
const C_SID: &str = "ACcccccccccccccccccccccccccccccccc";
const C_TOKEN: &str = "ctoken";

fn account_b() -> emulator::AccountConfig {
    emulator::AccountConfig {
        account_sid: B_SID.into(),
        auth_token: B_TOKEN.into(),
        api_key_sid: Some(B_KEY.into()),
        api_key_secret: Some(B_SECRET.into()),
    }
}

async fn two_accounts() -> Emulator {
    common::start_emulator(|c| c.extra_accounts = vec![account_b()]).await
}

/// Raw HTTP/1.1 request bytes with Basic auth as account A.
fn raw_request(method: &str, path: &str, body: &str) -> Vec<u8> {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{SID}:{TOKEN}"));
    format!(
        "{method} {path} HTTP/1.1\r\nHost: emulator\r\nAuthorization: Basic {auth}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Send a request, then close the connection after `after` without reading
/// the answer (a proxy that died mid-call).
async fn send_and_vanish(emu: &Emulator, request: &[u8], after: Duration) {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(emu.addr).await.unwrap();
    s.write_all(request).await.unwrap();
    tokio::time::sleep(after).await;
    drop(s);
}

/// Poll `GET path` as account A until it answers `status` (10 s at most).
async fn wait_status(emu: &Emulator, path: &str, status: u16) {
    for _ in 0..1000 {
        if emu.get(path).await.0 == status {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{path} never answered {status}");
}

#[tokio::test]
async fn delay_then_process_lands_after_the_client_left() {
    let emu = common::start_emulator(|_| {}).await;
    let (s, _) = emu.post("/v1/Users", &[("Identity", "slow")]).await;
    assert_eq!(s, 201);

    // A plain latency rule: the client leaves, the DELETE is never processed.
    emu.add_rule(json!({"method":"DELETE","path":"/Users/","times":1,
        "action":{"kind":"latency","ms":300}}))
        .await;
    send_and_vanish(
        &emu,
        &raw_request("DELETE", "/v1/Users/slow", ""),
        Duration::from_millis(50),
    )
    .await;
    // Past the latency (300 ms): a delete that went on would have landed (a
    // fixed wait that proves an absence).
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        emu.get("/v1/Users/slow").await.0,
        200,
        "latency: dropped with its client"
    );

    // delay_then_process: the DELETE lands although its client is gone.
    emu.add_rule(json!({"method":"DELETE","path":"/Users/","times":1,
        "action":{"kind":"delay_then_process","ms":300}}))
        .await;
    send_and_vanish(
        &emu,
        &raw_request("DELETE", "/v1/Users/slow", ""),
        Duration::from_millis(50),
    )
    .await;
    wait_status(&emu, "/v1/Users/slow", 404).await;
    let log = emu.log_json().await;
    let delete = log
        .iter()
        .find(|e| e["method"] == "DELETE" && e["outcome"] == "delay_then_process")
        .expect("the delayed DELETE is logged");
    assert_eq!(delete["status"], 204);

    // A client that stays gets the normal answer.
    let (s, _) = emu.post("/v1/Users", &[("Identity", "slow")]).await;
    assert_eq!(s, 201);
    emu.add_rule(json!({"method":"DELETE","path":"/Users/","times":1,
        "action":{"kind":"delay_then_process","ms":50}}))
        .await;
    assert_eq!(emu.delete("/v1/Users/slow").await, 204);
    assert_eq!(emu.get("/v1/Users/slow").await.0, 404);
}

#[tokio::test]
async fn accounts_own_their_resources() {
    use reqwest::Method;
    let emu = two_accounts().await;
    let b = (B_SID, B_TOKEN);
    let b_key = (B_KEY, B_SECRET);

    // Account A: a conversation with alice, whose User has a friendly name.
    let ch = emu.conversation(None).await;
    let (s, _) = emu
        .post(
            "/v1/Users",
            &[("Identity", "alice"), ("FriendlyName", "Alice A")],
        )
        .await;
    assert_eq!(s, 201);
    let parts = format!("/v1/Conversations/{ch}/Participants");
    let (s, _) = emu.post(&parts, &[("Identity", "alice")]).await;
    assert_eq!(s, 201);
    let a_default = emu.get("/v1/Configuration").await.1["default_chat_service_sid"].clone();

    // B sees none of it and changes none of it: 404/20404, as for any SID
    // that is not yours.
    for (method, path, form) in [
        (Method::GET, format!("/v1/Conversations/{ch}"), vec![]),
        (Method::GET, format!("{parts}/alice"), vec![]),
        (Method::POST, parts.clone(), vec![("Identity", "mallory")]),
        (Method::DELETE, format!("{parts}/alice"), vec![]),
        (Method::DELETE, "/v1/Users/alice".to_owned(), vec![]),
        (
            Method::POST,
            "/v1/Users/alice".to_owned(),
            vec![("FriendlyName", "x")],
        ),
        (
            Method::GET,
            format!("/v1/Services/{}", a_default.as_str().unwrap()),
            vec![],
        ),
    ] {
        for creds in [b, b_key] {
            let (s, v) = emu.call_as(creds, method.clone(), &path, &form).await;
            assert_eq!(
                (s, &v["code"]),
                (404, &json!(20404)),
                "{method} {path}: {v}"
            );
        }
    }
    let (s, v) = emu.call_as(b, Method::GET, "/v1/Users", &[]).await;
    assert_eq!(s, 200);
    assert_eq!(v["users"], json!([]));
    let (_, v) = emu.call_as(b, Method::GET, "/v1/Configuration", &[]).await;
    assert_eq!(v["account_sid"], B_SID);
    assert_ne!(
        v["default_chat_service_sid"], a_default,
        "own default service"
    );
    let (_, v) = emu.call_as(b, Method::GET, "/v1/Services", &[]).await;
    assert_eq!(v["services"].as_array().unwrap().len(), 1);
    assert_eq!(v["services"][0]["account_sid"], B_SID);

    // B has its own alice; created with B's API key, seen with B's token.
    let (s, v) = emu
        .call_as(b_key, Method::POST, "/v1/Users", &[("Identity", "alice")])
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["account_sid"], B_SID);
    let (s, v) = emu.call_as(b, Method::GET, "/v1/Users/alice", &[]).await;
    assert_eq!(s, 200);
    assert_eq!(v["friendly_name"], Value::Null);
    let b_ch = {
        let (s, v) = emu
            .call_as(
                b,
                Method::POST,
                "/v1/Conversations",
                &[("FriendlyName", "b")],
            )
            .await;
        assert_eq!(s, 201);
        assert_eq!(v["account_sid"], B_SID);
        v["sid"].as_str().unwrap().to_owned()
    };
    let (s, v) = emu
        .call_as(
            b,
            Method::POST,
            &format!("/v1/Conversations/{b_ch}/Participants"),
            &[("Identity", "alice")],
        )
        .await;
    assert_eq!(s, 201);
    assert_eq!(v["account_sid"], B_SID);
    // ...and A's conversation and User are untouched.
    assert_eq!(emu.get(&format!("/v1/Conversations/{b_ch}")).await.0, 404);
    let (_, v) = emu.get("/v1/Users/alice").await;
    assert_eq!(v["friendly_name"], "Alice A");
    assert_eq!(v["account_sid"], SID);
    assert_eq!(emu.get(&format!("{parts}/alice")).await.0, 200);

    // A key or token authenticates only with its own account's partner.
    for creds in [
        (B_SID, TOKEN),
        (SID, B_TOKEN),
        (B_KEY, TOKEN),
        (SID, B_SECRET),
    ] {
        let (s, _) = emu.call_as(creds, Method::GET, "/v1/Users", &[]).await;
        assert_eq!(s, 401, "{creds:?}");
    }

    // The participant fault applies to every account.
    emu.put_fault("block", &["bob"]).await;
    let b_parts = format!("/v1/Conversations/{b_ch}/Participants");
    let (s, _) = emu
        .call_as(b, Method::POST, &b_parts, &[("Identity", "bob")])
        .await;
    assert_eq!(s, 201);
    let (s, _) = emu
        .call_as(b, Method::DELETE, &format!("{b_parts}/bob"), &[])
        .await;
    assert_eq!(s, 204);
    let (s, v) = emu
        .call_as(b, Method::POST, &b_parts, &[("Identity", "bob")])
        .await;
    assert_eq!((s, &v["code"]), (404, &json!(20404)));

    // The log names the Basic user and the account it resolved to.
    let log = emu.log_json().await;
    let by_key = log
        .iter()
        .find(|e| e["auth_user"] == B_KEY)
        .expect("a request with B's key");
    assert_eq!(by_key["account_sid"], B_SID);
    assert!(
        log.iter()
            .any(|e| e["auth_user"] == SID && e["account_sid"] == SID)
    );
    let refused = log.iter().find(|e| e["status"] == 401).unwrap();
    assert_eq!(refused["account_sid"], Value::Null);
    let dump = serde_json::to_string(&log).unwrap();
    assert!(!dump.contains(B_SECRET) && !dump.contains(B_TOKEN));
}

#[tokio::test]
async fn accounts_added_at_run_time() {
    use reqwest::Method;
    let emu = two_accounts().await;
    let c = emu.add_account(C_SID, C_TOKEN, None).await;
    assert_eq!(c["account_sid"], C_SID);
    let c_default = c["default_chat_service_sid"].clone();
    let (s, v) = emu
        .call_as((C_SID, C_TOKEN), Method::GET, "/v1/Configuration", &[])
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["default_chat_service_sid"], c_default);
    let (s, _) = emu
        .call_as(
            (C_SID, C_TOKEN),
            Method::POST,
            "/v1/Users",
            &[("Identity", "carol")],
        )
        .await;
    assert_eq!(s, 201);
    assert_eq!(
        emu.get("/v1/Users/carol").await.0,
        404,
        "A does not see C's User"
    );

    // Refused: a SID or API key already in use (409), bad shapes (400).
    let post = |body: Value| {
        emu.http
            .post(emu.url("/__emulator/accounts"))
            .json(&body)
            .send()
    };
    for (body, status) in [
        (json!({"account_sid": C_SID, "auth_token": "x1"}), 409),
        (json!({"account_sid": SID, "auth_token": "x1"}), 409),
        (
            json!({"account_sid": "ACdddddddddddddddddddddddddddddddd", "auth_token": "x1",
                   "api_key_sid": B_KEY, "api_key_secret": "y"}),
            409,
        ),
        (json!({"account_sid": "AC12", "auth_token": "x1"}), 400),
        (
            json!({"account_sid": "ACdddddddddddddddddddddddddddddddd", "auth_token": "not ok"}),
            400,
        ),
        (
            json!({"account_sid": "ACdddddddddddddddddddddddddddddddd", "auth_token": "x1",
                   "api_key_sid": "SKd"}),
            400,
        ),
    ] {
        let r = post(body.clone()).await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{body}");
    }

    // Listed without secrets.
    let list: Value = emu
        .http
        .get(emu.url("/__emulator/accounts"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sids: Vec<&str> = list["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["account_sid"].as_str().unwrap())
        .collect();
    assert_eq!(sids, [SID, B_SID, C_SID]);
    let dump = list.to_string();
    assert!(!dump.contains(TOKEN) && !dump.contains(B_SECRET) && !dump.contains(C_TOKEN));

    // Reset: back to the configured accounts, which keep their default service.
    let (_, before) = emu
        .call_as((B_SID, B_TOKEN), Method::GET, "/v1/Configuration", &[])
        .await;
    let r = emu
        .http
        .post(emu.url("/__emulator/reset"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (s, _) = emu
        .call_as((C_SID, C_TOKEN), Method::GET, "/v1/Users", &[])
        .await;
    assert_eq!(s, 401, "accounts added at run time are gone");
    let (_, after) = emu
        .call_as((B_SID, B_TOKEN), Method::GET, "/v1/Configuration", &[])
        .await;
    assert_eq!(
        after["default_chat_service_sid"],
        before["default_chat_service_sid"]
    );
}

#[tokio::test]
async fn extra_accounts_config_is_validated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("emu.toml");
    std::fs::write(
        &path,
        format!(
            "[[extra_accounts]]\naccount_sid = \"{B_SID}\"\nauth_token = \"{B_TOKEN}\"\n\
             api_key_sid = \"{B_KEY}\"\napi_key_secret = \"{B_SECRET}\"\n\n\
             [[extra_accounts]]\naccount_sid = \"{C_SID}\"\nauth_token = \"{C_TOKEN}\"\n"
        ),
    )
    .unwrap();
    let args = emulator::EmulatorArgs {
        listen: "127.0.0.1:0".parse().unwrap(),
        account_sid: None,
        auth_token: None,
        public_url: None,
        config: Some(path),
    };
    let config = EmulatorConfig::from_args(&args).unwrap();
    assert_eq!(
        config.extra_accounts,
        vec![
            account_b(),
            emulator::AccountConfig {
                account_sid: C_SID.into(),
                auth_token: C_TOKEN.into(),
                api_key_sid: None,
                api_key_secret: None,
            }
        ]
    );
    assert!(
        !format!("{config:?}").contains(B_SECRET),
        "Debug hides secrets"
    );

    let with = |extra: Vec<emulator::AccountConfig>| EmulatorConfig {
        api_key_sid: Some(B_KEY.into()),
        api_key_secret: Some("main".into()),
        extra_accounts: extra,
        ..EmulatorConfig::default()
    };
    let err = |config: EmulatorConfig| config.validate().unwrap_err().to_string();
    let plain = |sid: &str| emulator::AccountConfig {
        account_sid: sid.into(),
        auth_token: C_TOKEN.into(),
        api_key_sid: None,
        api_key_secret: None,
    };
    assert!(err(with(vec![plain(SID)])).contains("extra_accounts[0]: account"));
    assert!(err(with(vec![plain(C_SID), plain(C_SID)])).contains("extra_accounts[1]"));
    assert!(
        err(with(vec![account_b()])).contains("API key"),
        "the key is A's"
    );
    assert!(err(with(vec![plain("ACnothex")])).contains("AC followed by 32 hex"));
    let too_many: Vec<_> = (0..emulator::MAX_ACCOUNTS)
        .map(|i| plain(&format!("AC{i:032x}")))
        .collect();
    assert!(err(with(too_many)).contains(&format!("at most {}", emulator::MAX_ACCOUNTS)));
    let held = EmulatorConfig {
        max_held_requests: 0,
        ..EmulatorConfig::default()
    };
    assert!(err(held).contains("max_held_requests"));
}

#[tokio::test]
async fn hold_parks_requests_until_released() {
    let emu = common::start_emulator(|_| {}).await;
    let ch = emu.conversation(None).await;
    let parts = format!("/v1/Conversations/{ch}/Participants");
    let create = |identity: &'static str| {
        let http = emu.http.clone();
        let url = emu.url(&parts);
        tokio::spawn(async move {
            let r = http
                .post(url)
                .basic_auth(SID, Some(TOKEN))
                .form(&[("Identity", identity)])
                .send()
                .await?;
            Ok::<_, reqwest::Error>(r.status().as_u16())
        })
    };

    // Held, listed, not processed; released by rule id: processed, 201.
    let rule = emu
        .add_rule_id(json!({"method":"POST","path":"/Participants$",
            "action":{"kind":"hold"}}))
        .await;
    let task = create("h1");
    let held = emu.wait_held(1).await;
    assert_eq!(held[0]["method"], "POST");
    assert_eq!(held[0]["path"], parts.as_str());
    assert_eq!(held[0]["rule_id"], rule);
    assert_eq!(held[0]["account_sid"], SID);
    assert!(held[0]["seq"].as_u64().is_some());
    assert_eq!(
        emu.get(&format!("{parts}/h1")).await.0,
        404,
        "not yet processed"
    );
    assert_eq!(emu.release_rule(rule + 1).await, 0, "another rule's id");
    assert_eq!(emu.release_rule(rule).await, 1);
    assert_eq!(task.await.unwrap().unwrap(), 201);
    assert_eq!(emu.get(&format!("{parts}/h1")).await.0, 200);
    assert!(emu.held().await.is_empty());

    // The client is killed while its request is held: processed on release.
    send_and_vanish(
        &emu,
        &raw_request("POST", &parts, "Identity=h2"),
        Duration::ZERO,
    )
    .await;
    let held = emu.wait_held(1).await;
    // Not processed while held (a fixed wait that proves an absence).
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(emu.get(&format!("{parts}/h2")).await.0, 404);
    assert_eq!(emu.release(Some(json!({"seq": held[0]["seq"]}))).await, 1);
    wait_status(&emu, &format!("{parts}/h2"), 200).await;
    let log = emu.log_json().await;
    let entry = log.iter().find(|e| e["form"]["Identity"] == "h2").unwrap();
    assert_eq!(entry["outcome"], "held");
    assert_eq!(entry["status"], 201);
    assert_eq!(entry["held_seq"], held[0]["seq"]);

    // process_on_release = false: the connection closes, nothing is created.
    emu.http
        .delete(emu.url("/__emulator/faults"))
        .send()
        .await
        .unwrap();
    emu.add_rule(json!({"method":"POST","path":"/Participants$",
        "action":{"kind":"hold","process_on_release":false}}))
        .await;
    let task = create("h3");
    emu.wait_held(1).await;
    assert_eq!(emu.release(None).await, 1);
    assert!(task.await.unwrap().is_err(), "connection closed");
    assert_eq!(emu.get(&format!("{parts}/h3")).await.0, 404);

    // A reset drops held requests unprocessed.
    let task = create("h4");
    emu.wait_held(1).await;
    emu.http
        .post(emu.url("/__emulator/reset"))
        .send()
        .await
        .unwrap();
    assert!(task.await.unwrap().is_err());
    assert!(emu.held().await.is_empty());
    assert!(
        emu.log_json().await.is_empty(),
        "a request from before the reset is not logged after it"
    );
}

#[tokio::test]
async fn held_requests_are_bounded() {
    let emu = common::start_emulator(|c| c.max_held_requests = 1).await;
    emu.add_rule(json!({"method":"GET","path":"^/v1/Users$","action":{"kind":"hold"}}))
        .await;
    let http = emu.http.clone();
    let url = emu.url("/v1/Users");
    let first = tokio::spawn(async move {
        http.get(url)
            .basic_auth(SID, Some(TOKEN))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    emu.wait_held(1).await;
    let (s, v) = emu.get("/v1/Users").await;
    assert_eq!((s, &v["code"]), (503, &json!(20503)), "{v}");
    assert_eq!(emu.held().await.len(), 1);
    emu.release(None).await;
    assert_eq!(first.await.unwrap(), 200);
}

/// Start `n` GETs of `path` as `creds` in the background; their statuses.
fn spawn_gets(
    emu: &Emulator,
    creds: (&'static str, &'static str),
    path: &str,
    n: usize,
) -> Vec<tokio::task::JoinHandle<u16>> {
    (0..n)
        .map(|_| {
            let http = emu.http.clone();
            let url = emu.url(path);
            tokio::spawn(async move {
                http.get(url)
                    .basic_auth(creds.0, Some(creds.1))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect()
}

#[tokio::test]
async fn stats_count_requests_in_flight_per_account() {
    let emu = two_accounts().await;
    emu.add_rule(json!({"method":"GET","path":"^/v1/Users$","action":{"kind":"hold"}}))
        .await;
    let mut tasks = spawn_gets(&emu, (SID, TOKEN), "/v1/Users", 3);
    tasks.extend(spawn_gets(&emu, (B_SID, B_TOKEN), "/v1/Users", 2));
    emu.wait_held(5).await;
    let stats = emu.stats().await;
    assert_eq!(stats["in_flight"], 5, "{stats}");
    assert_eq!(stats["max_in_flight"], 5);
    assert_eq!(
        stats["accounts"][SID],
        json!({"in_flight": 3, "max_in_flight": 3})
    );
    assert_eq!(
        stats["accounts"][B_SID],
        json!({"in_flight": 2, "max_in_flight": 2})
    );

    assert_eq!(emu.release(None).await, 5);
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let stats = emu.stats().await;
    assert_eq!(stats["in_flight"], 0, "{stats}");
    assert_eq!(stats["max_in_flight"], 5);
    assert_eq!(
        stats["accounts"][SID],
        json!({"in_flight": 0, "max_in_flight": 3})
    );
    emu.reset_stats().await;
    let stats = emu.stats().await;
    assert_eq!(stats["max_in_flight"], 0);
    assert_eq!(
        stats["accounts"][B_SID],
        json!({"in_flight": 0, "max_in_flight": 0})
    );
}

#[tokio::test]
async fn too_many_requests_above_a_concurrency_level() {
    let emu = two_accounts().await;
    emu.add_rule(json!({"path":"^/v1/","in_flight_above":2,
        "action":{"kind":"too_many_requests","retry_after":null}}))
        .await;
    emu.add_rule(json!({"method":"GET","path":"^/v1/Users$","action":{"kind":"hold"}}))
        .await;
    let tasks = spawn_gets(&emu, (SID, TOKEN), "/v1/Users", 2);
    emu.wait_held(2).await;

    // A third request of A is refused, without Retry-After.
    let r = emu
        .http
        .get(emu.url("/v1/Conversations"))
        .basic_auth(SID, Some(TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_none());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], 20429);
    // B's requests are counted apart.
    let (s, _) = emu
        .call_as(
            (B_SID, B_TOKEN),
            reqwest::Method::GET,
            "/v1/Conversations",
            &[],
        )
        .await;
    assert_eq!(s, 200);

    // With Retry-After.
    emu.http
        .delete(emu.url("/__emulator/faults"))
        .send()
        .await
        .unwrap();
    emu.add_rule(json!({"path":"^/v1/Services","in_flight_above":2,
        "action":{"kind":"too_many_requests","retry_after":3}}))
        .await;
    let r = emu
        .http
        .get(emu.url("/v1/Services"))
        .basic_auth(SID, Some(TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "3");

    emu.release(None).await;
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200, "held requests were admitted");
    }
    assert_eq!(
        emu.get("/v1/Services").await.0,
        200,
        "below the level again"
    );
}

#[tokio::test]
async fn rules_fire_from_the_nth_match_and_per_account() {
    let emu = two_accounts().await;
    let ch = emu.conversation(None).await;
    let parts = format!("/v1/Conversations/{ch}/Participants");
    emu.add_rule(
        json!({"method":"POST","path":"/Participants$","after":2,"times":1,
        "action":{"kind":"status","status":503}}),
    )
    .await;
    for id in ["n1", "n2"] {
        assert_eq!(emu.post(&parts, &[("Identity", id)]).await.0, 201);
    }
    let rules: Value = emu
        .http
        .get(emu.url("/__emulator/faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rules["faults"][0]["rule"]["after"], 0, "{rules}");
    assert_eq!(rules["faults"][0]["rule"]["times"], 1);
    assert_eq!(emu.post(&parts, &[("Identity", "n3")]).await.0, 503);
    assert_eq!(emu.get(&format!("{parts}/n3")).await.0, 404);
    assert_eq!(emu.post(&parts, &[("Identity", "n4")]).await.0, 201);

    // A rule for one account leaves the others alone.
    emu.add_rule(json!({"account_sid": B_SID, "path":".","action":{"kind":"status","status":500}}))
        .await;
    assert_eq!(emu.get("/v1/Users").await.0, 200);
    let (s, _) = emu
        .call_as((B_KEY, B_SECRET), reqwest::Method::GET, "/v1/Users", &[])
        .await;
    assert_eq!(s, 500);
    let r = emu
        .http
        .post(emu.url("/__emulator/faults"))
        .json(&json!({"account_sid":"AC1","path":".","action":{"kind":"reset"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn a_message_send_is_accepted_for_the_callers_own_account_only() {
    use reqwest::Method;
    let emu = two_accounts().await;
    let path = format!("/2010-04-01/Accounts/{SID}/Messages.json");
    let send = [
        ("To", "+15005550006"),
        ("From", "+15005550001"),
        ("Body", "hi"),
    ];
    let (s, m) = emu.post(&path, &send).await;
    assert_eq!(s, 201, "{m}");
    assert!(m["sid"].as_str().unwrap().starts_with("SM"), "{m}");
    assert_eq!(m["account_sid"], SID);
    assert_eq!(
        (m["to"].as_str(), m["body"].as_str()),
        (Some("+15005550006"), Some("hi"))
    );
    assert_eq!(m["status"], "queued");
    // No To, no From: Twilio's 400s.
    let (s, e) = emu
        .post(&path, &[("From", "+15005550001"), ("Body", "hi")])
        .await;
    assert_eq!((s, e["code"].as_u64()), (400, Some(21604)));
    let (s, e) = emu
        .post(&path, &[("To", "+15005550006"), ("Body", "hi")])
        .await;
    assert_eq!((s, e["code"].as_u64()), (400, Some(21603)));
    // Another account's path: not found, by key or by token.
    let (s, _) = emu
        .call_as((B_SID, B_TOKEN), Method::POST, &path, &send)
        .await;
    assert_eq!(s, 404);
    let (s, _) = emu
        .call_as((B_KEY, B_SECRET), Method::POST, &path, &send)
        .await;
    assert_eq!(s, 404);
    let own = format!("/2010-04-01/Accounts/{B_SID}/Messages.json");
    let (s, m) = emu
        .call_as((B_KEY, B_SECRET), Method::POST, &own, &send)
        .await;
    assert_eq!((s, m["account_sid"].as_str()), (201, Some(B_SID)));
    // Not kept: no list.
    let (s, _) = emu.get(&path).await;
    assert_eq!(s, 405);
}

#[tokio::test]
async fn lost_field_switches_drop_a_users_role_and_a_participants_attributes() {
    let emu = start(EmulatorConfig::default()).await;
    let is = emu.new_service().await;
    let prefix = format!("/v1/Services/{is}");
    let roles = emu.get(&format!("{prefix}/Roles")).await.json();
    let role = |name: &str| {
        roles["roles"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["friendly_name"] == name)
            .unwrap()["sid"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (admin, user_default) = (role("service admin"), role("service user"));
    let ch = emu.new_conversation(&prefix).await;
    let parts = format!("{prefix}/Conversations/{ch}/Participants");

    // Off: both fields are kept.
    let r = emu
        .post(
            &format!("{prefix}/Users"),
            &[("Identity", "kept"), ("RoleSid", &admin)],
        )
        .await;
    assert_eq!(r.json()["role_sid"], admin.as_str());
    let r = emu
        .post(
            &parts,
            &[("Identity", "kept"), ("Attributes", r#"{"a":1}"#)],
        )
        .await;
    assert_eq!(r.json()["attributes"], r#"{"a":1}"#);

    emu.set_fault(
        json!({"mode": "off", "drop_user_role_sid": true, "lose_participant_attributes": true}),
    )
    .await;
    let fault = emu
        .control(reqwest::Method::GET, "/__emulator/fault", None)
        .await
        .json();
    assert_eq!(fault["drop_user_role_sid"], true, "{fault}");
    let r = emu
        .post(
            &format!("{prefix}/Users"),
            &[("Identity", "dropped"), ("RoleSid", &admin)],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        r.json()["role_sid"],
        user_default.as_str(),
        "the default role"
    );
    let r = emu
        .post(
            &parts,
            &[("Identity", "lost"), ("Attributes", r#"{"a":1}"#)],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json()["attributes"], "{}");
    let r = emu
        .post(&format!("{parts}/kept"), &[("Attributes", r#"{"b":2}"#)])
        .await;
    assert_eq!(
        r.json()["attributes"],
        r#"{"a":1}"#,
        "an update keeps none either"
    );

    // Off again (a reset restores the start-up settings).
    emu.control(reqwest::Method::POST, "/__emulator/reset", None)
        .await;
    let fault = emu
        .control(reqwest::Method::GET, "/__emulator/fault", None)
        .await
        .json();
    assert!(fault.get("drop_user_role_sid").is_none(), "{fault}");
}

/// `drop_user_role_sid_after: 1` spares the first User write with a
/// `RoleSid` and strikes every one after it, creates and updates alike
/// (a repair's recreate, and the update that would put the role right).
#[tokio::test]
async fn a_dropped_role_can_spare_the_first_user_writes() {
    let emu = start(EmulatorConfig::default()).await;
    let is = emu.new_service().await;
    let prefix = format!("/v1/Services/{is}");
    let roles = emu.get(&format!("{prefix}/Roles")).await.json();
    let role = |name: &str| {
        roles["roles"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["friendly_name"] == name)
            .unwrap()["sid"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (admin, user_default) = (role("service admin"), role("service user"));
    emu.set_fault(
        json!({"mode": "off", "drop_user_role_sid": true, "drop_user_role_sid_after": 1}),
    )
    .await;
    let fault = emu
        .control(reqwest::Method::GET, "/__emulator/fault", None)
        .await
        .json();
    assert_eq!(fault["drop_user_role_sid_after"], 1, "{fault}");
    // A write without a RoleSid is not counted.
    let r = emu
        .post(&format!("{prefix}/Users"), &[("Identity", "bare")])
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = emu
        .post(
            &format!("{prefix}/Users"),
            &[("Identity", "spared"), ("RoleSid", &admin)],
        )
        .await;
    assert_eq!(r.json()["role_sid"], admin.as_str(), "the first is spared");
    let r = emu
        .post(
            &format!("{prefix}/Users"),
            &[("Identity", "struck"), ("RoleSid", &admin)],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json()["role_sid"], user_default.as_str());
    let r = emu
        .post(&format!("{prefix}/Users/struck"), &[("RoleSid", &admin)])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.json()["role_sid"],
        user_default.as_str(),
        "an update cannot put it right"
    );
}

#[tokio::test]
async fn a_service_delete_takes_everything_in_it() {
    let emu = start(EmulatorConfig::default()).await;
    let is = emu.new_service().await;
    let prefix = format!("/v1/Services/{is}");
    let ch = emu.new_conversation(&prefix).await;
    let r = emu
        .post(
            &format!("{prefix}/Conversations/{ch}/Participants"),
            &[("Identity", "kim")],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(emu.get(&format!("{prefix}/Users/kim")).await.status, 200);
    assert_eq!(emu.get(&format!("{prefix}/Roles")).await.status, 200);
    assert_eq!(emu.delete(&prefix).await.status, 204);
    for path in [
        format!("{prefix}/Users/kim"),
        format!("{prefix}/Conversations/{ch}"),
        format!("{prefix}/Roles"),
    ] {
        assert_eq!(emu.get(&path).await.status, 404, "{path}");
    }
    // Roles have no default-service path.
    assert_eq!(emu.get("/v1/Roles").await.status, 404);
}
