//! Validates emulator responses against the Twilio Conversations v1 OpenAPI
//! response schemas (field names, types, nullability) and field order.

use serde_json::{Map, Value, json};
use tokio::sync::oneshot;
use twilio_emulator::{self as emulator, EmulatorConfig};

const SPEC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/twilio-oai/twilio_conversations_v1.json"
);
const SID: &str = emulator::DEFAULT_ACCOUNT_SID;
const TOKEN: &str = emulator::DEFAULT_AUTH_TOKEN;

/// OpenAPI 3.0 `nullable: true` → JSON Schema `type: [T, "null"]`.
fn convert_nullable(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.get("nullable") == Some(&Value::Bool(true)) {
                map.remove("nullable");
                if let Some(Value::String(t)) = map.get("type").cloned() {
                    map.insert("type".into(), json!([t, "null"]));
                } else if let Some(r) = map.remove("$ref") {
                    map.insert("anyOf".into(), json!([{"$ref": r}, {"type": "null"}]));
                }
                // Without a type (e.g. `messaging_binding`) anything goes anyway.
            }
            for child in map.values_mut() {
                convert_nullable(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(convert_nullable),
        _ => {}
    }
}

struct Spec {
    doc: Value,
}

impl Spec {
    fn load() -> Self {
        let text = std::fs::read_to_string(SPEC).expect("spec file");
        let mut doc: Value = serde_json::from_str(&text).unwrap();
        convert_nullable(&mut doc);
        Self { doc }
    }

    fn components(&self) -> Value {
        self.doc["components"].clone()
    }

    /// Schema `name` with `additionalProperties: false`, so an extra or
    /// misspelt field fails.
    fn strict_schema(&self, name: &str) -> Value {
        let mut components = self.components();
        let s = &mut components["schemas"][name];
        assert!(s.is_object(), "no schema {name}");
        s["additionalProperties"] = json!(false);
        json!({"components": components, "$ref": format!("#/components/schemas/{name}")})
    }

    fn property_order(&self, name: &str) -> Vec<String> {
        self.doc["components"]["schemas"][name]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }

    /// The 200 response schema of `GET path` (a list envelope).
    fn list_schema(&self, path: &str) -> Value {
        let mut schema = self.doc["paths"][path]["get"]["responses"]["200"]["content"]
            ["application/json"]["schema"]
            .clone();
        assert!(schema.is_object(), "no list schema for {path}");
        schema["additionalProperties"] = json!(false);
        schema["properties"]["meta"]["additionalProperties"] = json!(false);
        let mut obj = schema.as_object().unwrap().clone();
        obj.insert("components".into(), self.components());
        Value::Object(obj)
    }
}

fn validate(schema: &Value, instance: &Value, what: &str) {
    let validator = jsonschema::validator_for(schema).expect("schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} does not match the spec: {errors:#?}\n{instance:#}"
    );
}

fn check_resource(spec: &Spec, name: &str, instance: &Value, skip_order: &[&str]) {
    validate(&spec.strict_schema(name), instance, name);
    let want: Vec<String> = spec
        .property_order(name)
        .into_iter()
        .filter(|k| !skip_order.contains(&k.as_str()))
        .collect();
    let got: Vec<String> = instance.as_object().unwrap().keys().cloned().collect();
    assert_eq!(got, want, "{name}: field order");
}

struct Emu {
    base: String,
    client: reqwest::Client,
    _stop: oneshot::Sender<()>,
}

impl Emu {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let config = EmulatorConfig {
            public_url: base.clone(),
            ..EmulatorConfig::default()
        };
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(emulator::serve(listener, config, async move {
            let _ = rx.await;
        }));
        Self {
            base,
            client: reqwest::Client::new(),
            _stop: tx,
        }
    }
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        form: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut body = form_urlencoded::Serializer::new(String::new());
        for (k, v) in form {
            body.append_pair(k, v);
        }
        let r = self
            .client
            .request(method, format!("{}{path}", self.base))
            .basic_auth(SID, Some(TOKEN))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.finish())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
    async fn get(&self, path: &str) -> Value {
        let (status, v) = self.call(reqwest::Method::GET, path, &[]).await;
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }
    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Value {
        let (status, v) = self.call(reqwest::Method::POST, path, form).await;
        assert!(status == 201 || status == 200, "POST {path}: {status} {v}");
        v
    }
}

#[tokio::test]
async fn responses_match_openapi_schemas() {
    let spec = Spec::load();
    let emu = Emu::start().await;

    let config = emu.get("/v1/Configuration").await;
    check_resource(&spec, "conversations.v1.configuration", &config, &[]);

    let service = emu.post("/v1/Services", &[("FriendlyName", "svc")]).await;
    check_resource(&spec, "conversations.v1.service", &service, &[]);
    let is = service["sid"].as_str().unwrap().to_owned();
    check_resource(
        &spec,
        "conversations.v1.service",
        &emu.get(&format!("/v1/Services/{is}")).await,
        &[],
    );
    validate(
        &spec.list_schema("/v1/Services"),
        &emu.get("/v1/Services").await,
        "service list",
    );

    // Default-service path.
    let conv = emu
        .post(
            "/v1/Conversations",
            &[("FriendlyName", "c"), ("UniqueName", "u1")],
        )
        .await;
    check_resource(&spec, "conversations.v1.conversation", &conv, &[]);
    let ch = conv["sid"].as_str().unwrap().to_owned();
    let part = emu
        .post(
            &format!("/v1/Conversations/{ch}/Participants"),
            &[("Identity", "alice"), ("Attributes", "{\"a\":1}")],
        )
        .await;
    check_resource(
        &spec,
        "conversations.v1.conversation.conversation_participant",
        &part,
        &[],
    );
    assert!(part.get("chat_service_sid").is_none());
    let sms = emu
        .post(
            &format!("/v1/Conversations/{ch}/Participants"),
            &[
                ("MessagingBinding.Address", "+15550001111"),
                ("MessagingBinding.ProxyAddress", "+15550002222"),
            ],
        )
        .await;
    check_resource(
        &spec,
        "conversations.v1.conversation.conversation_participant",
        &sms,
        &[],
    );
    validate(
        &spec.list_schema("/v1/Conversations/{ConversationSid}/Participants"),
        &emu.get(&format!("/v1/Conversations/{ch}/Participants"))
            .await,
        "participant list",
    );
    validate(
        &spec.list_schema("/v1/Conversations"),
        &emu.get("/v1/Conversations").await,
        "conversation list",
    );
    let user = emu.get("/v1/Users/alice").await;
    check_resource(&spec, "conversations.v1.user", &user, &[]);
    validate(
        &spec.list_schema("/v1/Users"),
        &emu.get("/v1/Users").await,
        "user list",
    );
    let uc = emu
        .get(&format!("/v1/Users/alice/Conversations/{ch}"))
        .await;
    check_resource(&spec, "conversations.v1.user.user_conversation", &uc, &[]);
    validate(
        &spec.list_schema("/v1/Users/{UserSid}/Conversations"),
        &emu.get("/v1/Users/alice/Conversations").await,
        "user conversation list",
    );

    // Service-scoped path.
    let prefix = format!("/v1/Services/{is}");
    let conv = emu
        .post(&format!("{prefix}/Conversations"), &[("FriendlyName", "c")])
        .await;
    check_resource(
        &spec,
        "conversations.v1.service.service_conversation",
        &conv,
        &[],
    );
    let ch = conv["sid"].as_str().unwrap().to_owned();
    let part = emu
        .post(
            &format!("{prefix}/Conversations/{ch}/Participants"),
            &[("Identity", "bob")],
        )
        .await;
    let scoped_participant =
        "conversations.v1.service.service_conversation.service_conversation_participant";
    check_resource(&spec, scoped_participant, &part, &[]);
    assert_eq!(part["chat_service_sid"], is.as_str());
    check_resource(
        &spec,
        scoped_participant,
        &emu.get(&format!("{prefix}/Conversations/{ch}/Participants/bob"))
            .await,
        &[],
    );
    validate(
        &spec.list_schema(
            "/v1/Services/{ChatServiceSid}/Conversations/{ConversationSid}/Participants",
        ),
        &emu.get(&format!("{prefix}/Conversations/{ch}/Participants"))
            .await,
        "service participant list",
    );
    let user = emu
        .post(
            &format!("{prefix}/Users"),
            &[("Identity", "carol"), ("FriendlyName", "C")],
        )
        .await;
    check_resource(&spec, "conversations.v1.service.service_user", &user, &[]);
    validate(
        &spec.list_schema("/v1/Services/{ChatServiceSid}/Users"),
        &emu.get(&format!("{prefix}/Users")).await,
        "service user list",
    );
    let roles = emu.get(&format!("{prefix}/Roles")).await;
    validate(
        &spec.list_schema("/v1/Services/{ChatServiceSid}/Roles"),
        &roles,
        "service role list",
    );
    let listed = roles["roles"].as_array().unwrap();
    let kinds: Vec<(&str, &str)> = listed
        .iter()
        .map(|r| {
            (
                r["friendly_name"].as_str().unwrap(),
                r["type"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("service admin", "service"),
            ("service user", "service"),
            ("channel admin", "conversation"),
            ("channel user", "conversation"),
        ]
    );
    for r in listed {
        check_resource(&spec, "conversations.v1.service.service_role", r, &[]);
    }
    let rl = listed[0]["sid"].as_str().unwrap();
    check_resource(
        &spec,
        "conversations.v1.service.service_role",
        &emu.get(&format!("{prefix}/Roles/{rl}")).await,
        &[],
    );
    // The defaults are the listed `service user` and `channel user`.
    assert_eq!(user["role_sid"], listed[1]["sid"]);
    assert_eq!(part["role_sid"], listed[3]["sid"]);
    let uc = emu
        .get(&format!("{prefix}/Users/bob/Conversations/{ch}"))
        .await;
    check_resource(
        &spec,
        "conversations.v1.service.service_user.service_user_conversation",
        &uc,
        &[],
    );
    validate(
        &spec.list_schema("/v1/Services/{ChatServiceSid}/Users/{UserSid}/Conversations"),
        &emu.get(&format!("{prefix}/Users/bob/Conversations")).await,
        "service user conversation list",
    );
}

#[tokio::test]
async fn schema_check_rejects_a_wrong_instance() {
    // Guards against a vacuous validator: a wrongly typed field must fail.
    let spec = Spec::load();
    let schema = spec.strict_schema("conversations.v1.conversation.conversation_participant");
    let validator = jsonschema::validator_for(&schema).unwrap();
    let sid = format!("MB{}", "a".repeat(32));
    assert!(validator.is_valid(&json!({"sid": sid, "identity": null})));
    assert!(!validator.is_valid(&json!({"sid": "MB1"})), "sid pattern");
    assert!(!validator.is_valid(&json!({"sid": 5})));
    assert!(!validator.is_valid(&json!({"attributes": null, "last_read_message_index": "x"})));
    assert!(!validator.is_valid(&json!({"unknown_field": 1})));
}

#[tokio::test]
async fn error_body_has_exactly_the_twilio_fields() {
    let emu = Emu::start().await;
    let (status, body) = emu
        .call(
            reqwest::Method::POST,
            "/v1/Conversations/CHnope/Participants",
            &[("Identity", "x")],
        )
        .await;
    assert_eq!(status, 404);
    let keys: Vec<&str> = body
        .as_object()
        .map(Map::keys)
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["code", "message", "more_info", "status"]);
    assert_eq!(body["code"], 20404);
    assert_eq!(body["status"], 404);
    assert_eq!(
        body["more_info"],
        "https://www.twilio.com/docs/errors/20404"
    );
}
