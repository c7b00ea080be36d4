//! The emulator's test client: an emulator on 127.0.0.1 port 0 and helpers
//! that speak Twilio's API and the control API to it directly.
//!
//! Shared with the proxy's tests, which include this file
//! (`tests/common/mod.rs` at the repository root), so that there is one
//! emulator client for every test.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;

/// Poll a URL until it answers 200 (start-up is asynchronous).
pub async fn wait_ready(url: &str) {
    let c = reqwest::Client::new();
    // 20 s: a bound on "it never came up", generous for a loaded CI machine.
    for _ in 0..800 {
        if let Ok(r) = c.get(url).send().await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{url} never became ready");
}

/// An emulator on a real socket, with helpers that speak Twilio's API to it
/// directly (not through the proxy).
pub struct Emu {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

pub const ACCOUNT: &str = twilio_emulator::DEFAULT_ACCOUNT_SID;
pub const TOKEN: &str = twilio_emulator::DEFAULT_AUTH_TOKEN;

impl Drop for Emu {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub async fn start_emulator(tweak: impl FnOnce(&mut twilio_emulator::EmulatorConfig)) -> Emu {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = twilio_emulator::EmulatorConfig {
        public_url: format!("http://{addr}"),
        ..Default::default()
    };
    tweak(&mut cfg);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(twilio_emulator::serve(listener, cfg, async move {
        let _ = rx.await;
    }));
    let emu = Emu {
        addr,
        http: reqwest::Client::new(),
        stop: Some(tx),
    };
    wait_ready(&emu.url("/__emulator/health")).await;
    emu
}

impl Emu {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// POST a form to Twilio's API (directly); returns status and JSON.
    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(self.url(path))
            .basic_auth(ACCOUNT, Some(TOKEN))
            .form(form)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(serde_json::Value::Null))
    }
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self
            .http
            .get(self.url(path))
            .basic_auth(ACCOUNT, Some(TOKEN))
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(serde_json::Value::Null))
    }
    pub async fn delete(&self, path: &str) -> u16 {
        self.http
            .delete(self.url(path))
            .basic_auth(ACCOUNT, Some(TOKEN))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
    pub async fn service(&self) -> String {
        let (s, v) = self.post("/v1/Services", &[("FriendlyName", "test")]).await;
        assert_eq!(s, 201, "{v}");
        v["sid"].as_str().unwrap().to_string()
    }
    /// Create a conversation under `/v1/Services/{is}` or, with `None`, on the default service.
    pub async fn conversation(&self, is: Option<&str>) -> String {
        let base = base(is);
        let (s, v) = self
            .post(&format!("{base}/Conversations"), &[("FriendlyName", "c")])
            .await;
        assert_eq!(s, 201, "{v}");
        v["sid"].as_str().unwrap().to_string()
    }
    pub async fn put_fault(&self, mode: &str, identities: &[&str]) {
        let r = self
            .http
            .put(self.url("/__emulator/fault"))
            .json(&serde_json::json!({"mode": mode, "identities": identities}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
    pub async fn add_rule(&self, rule: serde_json::Value) {
        let r = self
            .http
            .post(self.url("/__emulator/faults"))
            .json(&rule)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }
    /// The request log as the emulator reports it (method, path, status,
    /// headers, ... per request).
    pub async fn log_json(&self) -> Vec<serde_json::Value> {
        let v: serde_json::Value = self
            .http
            .get(self.url("/__emulator/requests"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            v["dropped"].as_u64().unwrap_or(0),
            0,
            "request log overflowed"
        );
        v["requests"].as_array().unwrap().clone()
    }

    /// The request log: (method, path-with-query).
    pub async fn requests(&self) -> Vec<(String, String)> {
        self.log_json()
            .await
            .iter()
            .map(|r| {
                (
                    r["method"].as_str().unwrap().to_string(),
                    r["path"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
    pub async fn clear_requests(&self) {
        self.http
            .delete(self.url("/__emulator/requests"))
            .send()
            .await
            .unwrap();
    }
    /// Make `identity` a participant of `ch`, delete it, so that the fault
    /// (if the identity is affected) hits the next create.
    pub async fn add_and_remove(&self, is: Option<&str>, ch: &str, identity: &str) {
        let base = base(is);
        let (s, v) = self
            .post(
                &format!("{base}/Conversations/{ch}/Participants"),
                &[("Identity", identity)],
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let mb = v["sid"].as_str().unwrap();
        assert_eq!(
            self.delete(&format!("{base}/Conversations/{ch}/Participants/{mb}"))
                .await,
            204
        );
    }
}

/// Control-API helpers for several accounts, held requests and in-flight
/// statistics (see the module docs of `emulator`).
impl Emu {
    /// Add an account at run time (`POST /__emulator/accounts`); its public
    /// description (`account_sid`, `api_key_sid`, `default_chat_service_sid`).
    pub async fn add_account(
        &self,
        account_sid: &str,
        auth_token: &str,
        api_key: Option<(&str, &str)>,
    ) -> serde_json::Value {
        let r = self
            .http
            .post(self.url("/__emulator/accounts"))
            .json(&serde_json::json!({
                "account_sid": account_sid,
                "auth_token": auth_token,
                "api_key_sid": api_key.map(|k| k.0),
                "api_key_secret": api_key.map(|k| k.1),
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "add account");
        r.json().await.unwrap()
    }
    /// Call Twilio's API (directly) with other Basic credentials; `form` is
    /// sent as the body when not empty. Status and JSON.
    pub async fn call_as(
        &self,
        (user, pass): (&str, &str),
        method: reqwest::Method,
        path: &str,
        form: &[(&str, &str)],
    ) -> (u16, serde_json::Value) {
        let mut req = self
            .http
            .request(method, self.url(path))
            .basic_auth(user, Some(pass));
        if !form.is_empty() {
            req = req.form(form);
        }
        let r = req.send().await.unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(serde_json::Value::Null))
    }
    /// Add a fault rule; its id (for `release_rule`).
    pub async fn add_rule_id(&self, rule: serde_json::Value) -> u64 {
        let r = self
            .http
            .post(self.url("/__emulator/faults"))
            .json(&rule)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "add rule");
        let v: serde_json::Value = r.json().await.unwrap();
        v["id"].as_u64().unwrap()
    }
    /// Requests parked by `hold` rules (`seq`, `rule_id`, `method`, `path`,
    /// `account_sid`, `held_ms` each).
    pub async fn held(&self) -> Vec<serde_json::Value> {
        let v: serde_json::Value = self
            .http
            .get(self.url("/__emulator/held"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["held"].as_array().unwrap().clone()
    }
    /// Wait (up to 10 s, then panic) until at least `n` requests are held.
    pub async fn wait_held(&self, n: usize) -> Vec<serde_json::Value> {
        for _ in 0..1000 {
            let held = self.held().await;
            if held.len() >= n {
                return held;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("fewer than {n} requests held after 10 s");
    }
    /// `POST /__emulator/release` with `filter` (`{"id": rule}`,
    /// `{"seq": n}`) or none (all); how many were released.
    pub async fn release(&self, filter: Option<serde_json::Value>) -> u64 {
        let mut req = self.http.post(self.url("/__emulator/release"));
        if let Some(f) = filter {
            req = req.json(&f);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200, "release");
        let v: serde_json::Value = r.json().await.unwrap();
        v["released"].as_u64().unwrap()
    }
    /// Release the requests held by rule `id`.
    pub async fn release_rule(&self, id: u64) -> u64 {
        self.release(Some(serde_json::json!({ "id": id }))).await
    }
    /// `GET /__emulator/stats`: `in_flight`, `max_in_flight`, and the same
    /// per account under `accounts`.
    pub async fn stats(&self) -> serde_json::Value {
        self.http
            .get(self.url("/__emulator/stats"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
    /// `DELETE /__emulator/stats`: the maxima restart from the current counts.
    pub async fn reset_stats(&self) {
        let r = self
            .http
            .delete(self.url("/__emulator/stats"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
}

pub fn base(is: Option<&str>) -> String {
    match is {
        Some(is) => format!("/v1/Services/{is}"),
        None => "/v1".to_string(),
    }
}
