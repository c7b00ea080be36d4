//! Transparency of answers with the shipped defaults (link rewriting
//! `"request"`): only the link fields Twilio writes point at the proxy;
//! everything an app wrote (attributes, names), every error body, and every
//! answer to a request that named a Twilio host is Twilio's, byte for byte;
//! only v1's Participant creates are intercepted.

use serde_json::Value;

use crate::common::*;
use twilio_repair_proxy::config::PublicBaseUrl;

/// GET `path` through the proxy and straight from the emulator: the two
/// raw bodies.
async fn both(st: &Stack, path: &str) -> (u16, String, String) {
    let via = st
        .http
        .get(st.proxy.url(path))
        .basic_auth(ACCOUNT, Some(TOKEN))
        .send()
        .await
        .unwrap();
    let direct = st
        .emu
        .http
        .get(st.emu.url(path))
        .basic_auth(ACCOUNT, Some(TOKEN))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    (via.status().as_u16(), via.text().await.unwrap(), direct)
}

/// The origin in the emulator's answers (its own, standing in for
/// `https://conversations.twilio.com`), and the proxy's as the test client
/// reached it (`Host: 127.0.0.1:PORT`).
fn origins(st: &Stack) -> (String, String) {
    (st.emu.origin(), format!("http://{}", st.proxy.addr))
}

#[tokio::test]
async fn a_users_attributes_and_name_holding_twilio_urls_come_back_as_stored() {
    let attributes = r#"{"avatar":"https://media.twilio.com/v1/Avatars/ME1","doc":"https://conversations.twilio.com/v1/Services/IS0/Users"}"#;
    let friendly = "https://conversations.twilio.com/v1/Users";
    let (st, kim) = Scene::new()
        .user("kim")
        .friendly(friendly)
        .attributes(attributes)
        .rewriting_links()
        .start()
        .await;
    let path = format!("{}/Users/{}", kim.base, kim.user_sid.clone().unwrap());
    let (_, via, direct) = both(&st, &path).await;
    let (twilio, proxy) = origins(&st);
    let v: Value = serde_json::from_str(&via).unwrap();
    assert_eq!(v["attributes"], attributes, "{via}");
    assert_eq!(v["friendly_name"], friendly, "{via}");
    // The User's own links do point at the proxy (and only those).
    assert!(v["url"].as_str().unwrap().starts_with(&proxy), "{via}");
    assert!(
        v["links"]["user_conversations"]
            .as_str()
            .unwrap()
            .starts_with(&proxy),
        "{via}"
    );
    let expected = direct
        .replace(
            &format!("\"url\":\"{twilio}"),
            &format!("\"url\":\"{proxy}"),
        )
        .replace(
            &format!("\"user_conversations\":\"{twilio}"),
            &format!("\"user_conversations\":\"{proxy}"),
        );
    assert_ne!(
        expected, direct,
        "the emulator's links are Twilio's: {direct}"
    );
    assert_eq!(via, expected);
    st.proxy.stop().await;
}

#[tokio::test]
async fn an_errors_body_and_more_info_are_twilios_bytes() {
    // With the default (`request`) and with an explicit `public_base_url`.
    for explicit in [false, true] {
        let scene = Scene::new();
        let scene = if explicit {
            scene.rewriting_links()
        } else {
            scene
        };
        let (st, kim) = scene.start().await;
        let path = format!("{}/Users/nobody-here", kim.base);
        let (status, via, direct) = both(&st, &path).await;
        assert_eq!(status, 404);
        assert_eq!(via, direct);
        let v: Value = serde_json::from_str(&via).unwrap();
        assert_eq!(v["code"], 20404);
        assert_eq!(v["more_info"], "https://www.twilio.com/docs/errors/20404");
        st.proxy.stop().await;
    }
}

#[tokio::test]
async fn a_conversations_attributes_shaped_like_links_are_untouched() {
    let (st, kim) = Scene::new().start().await;
    let attributes = r#"{"links":{"participants":"https://conversations.twilio.com/v1/Conversations/CHx/Participants"},"url":"https://conversations.twilio.com/v1/Conversations/CHx"}"#;
    let r = st
        .http
        .post(st.proxy.url(&format!("{}/Conversations", kim.base)))
        .basic_auth(ACCOUNT, Some(TOKEN))
        .form(&[("FriendlyName", "links"), ("Attributes", attributes)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["attributes"], attributes);
    let ch = created["sid"].as_str().unwrap();
    let (_, via, _) = both(&st, &format!("{}/Conversations/{ch}", kim.base)).await;
    let v: Value = serde_json::from_str(&via).unwrap();
    assert_eq!(v["attributes"], attributes);
    let (_, proxy) = origins(&st);
    assert!(v["url"].as_str().unwrap().starts_with(&proxy), "{via}");
    // And in a list answer: each item's attributes too.
    let (_, via, _) = both(&st, &format!("{}/Conversations?PageSize=50", kim.base)).await;
    let v: Value = serde_json::from_str(&via).unwrap();
    let item = v["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["sid"] == ch)
        .unwrap();
    assert_eq!(item["attributes"], attributes);
    assert!(item["url"].as_str().unwrap().starts_with(&proxy));
    assert!(
        v["meta"]["url"].as_str().unwrap().starts_with(&proxy),
        "{via}"
    );
    st.proxy.stop().await;
}

#[tokio::test]
async fn a_request_naming_a_twilio_host_gets_twilios_links_and_off_turns_rewriting_off() {
    let (st, kim) = Scene::new().user("kim").friendly("K").start().await;
    let path = format!("{}/Users/{}", kim.base, kim.user_sid.clone().unwrap());
    let direct = both(&st, &path).await.2;
    // Host-routing: the app kept Twilio's host name (sidecar DNS).
    let raw = raw_exchange(
        st.proxy.addr,
        format!(
            "GET {path} HTTP/1.1\r\nHost: conversations.twilio.com\r\nAuthorization: Basic {}\r\nConnection: close\r\n\r\n",
            basic(ACCOUNT, TOKEN)
        )
        .as_bytes(),
        std::time::Duration::from_secs(10),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.ends_with(&direct), "{raw}\n---\n{direct}");
    // The name a sidecar's app uses reaches it as its Host.
    let raw = raw_exchange(
        st.proxy.addr,
        format!(
            "GET {path} HTTP/1.1\r\nHost: twilio-proxy:8080\r\nAuthorization: Basic {}\r\nConnection: close\r\n\r\n",
            basic(ACCOUNT, TOKEN)
        )
        .as_bytes(),
        std::time::Duration::from_secs(10),
    )
    .await;
    assert!(
        raw.contains("\"url\":\"http://twilio-proxy:8080/v1/"),
        "{raw}"
    );
    st.proxy.stop().await;

    let (st, kim) = Scene::new()
        .user("kim")
        .friendly("K")
        .proxy(|c| c.public_base_url = PublicBaseUrl::Off)
        .start()
        .await;
    let path = format!("{}/Users/{}", kim.base, kim.user_sid.clone().unwrap());
    let (_, via, direct) = both(&st, &path).await;
    assert_eq!(via, direct);
    st.proxy.stop().await;
}

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
}

/// Conversations v2 lives on the same host: its 404/20404 on a path shaped
/// like a v1 Participant create is Twilio's answer, not the fault.
#[tokio::test]
async fn only_v1_participant_creates_are_intercepted() {
    let not_found = |s: &Seen| {
        json(
            404,
            &format!(
                r#"{{"code":20404,"message":"The requested resource {} was not found","more_info":"https://www.twilio.com/docs/errors/20404","status":404}}"#,
                s.target
            ),
        )
    };
    let up = upstream(std::sync::Arc::new(not_found)).await;
    let proxy = start_proxy(fast_config(&up.url())).await;
    let http = reqwest::Client::new();
    for path in [
        "/v2/Services/IS00000000000000000000000000000000/Conversations/CH00000000000000000000000000000000/Participants",
        "/v2/Conversations/CH00000000000000000000000000000000/Participants",
    ] {
        let before = up.requests().len();
        let r = http
            .post(proxy.url(path))
            .basic_auth(ACCOUNT, Some(TOKEN))
            .form(&[("Identity", "kim")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        assert!(r.headers().get("x-repair-outcome").is_none(), "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], 20404);
        assert_eq!(up.requests().len(), before + 1, "{path}: one upstream call");
    }
    // The same shape on v1 is intercepted (the test can fail).
    let before = up.requests().len();
    let r = http
        .post(proxy.url("/v1/Conversations/CH00000000000000000000000000000000/Participants"))
        .basic_auth(ACCOUNT, Some(TOKEN))
        .form(&[("Identity", "kim")])
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("x-repair-outcome").is_some());
    assert!(up.requests().len() > before + 1);
    proxy.stop().await;
}

fn gzip(body: &str) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(body.as_bytes()).unwrap();
    e.finish().unwrap()
}

/// A gzip answer with a link is sent decoded with the link rewritten; one
/// without a link is Twilio's compressed bytes, untouched.
#[tokio::test]
async fn a_gzip_answer_is_rewritten_decoded_or_passed_compressed() {
    const WITH_LINK: &str = r#"{"sid":"USa","attributes":"{\"u\":\"https://conversations.twilio.com/v1/Users\"}","url":"https://conversations.twilio.com/v1/Users/USa"}"#;
    const WITHOUT: &str = r#"{"code":20404,"message":"not found","more_info":"https://www.twilio.com/docs/errors/20404","status":404}"#;
    let answer = |s: &Seen| {
        let body = if s.target.ends_with("/USa") {
            WITH_LINK
        } else {
            WITHOUT
        };
        hyper::Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(http_body_util::Full::new(bytes::Bytes::from(gzip(body))))
            .unwrap()
    };
    let up = upstream(std::sync::Arc::new(answer)).await;
    let proxy = start_proxy(fast_config(&up.url())).await;
    let http = reqwest::Client::builder().no_gzip().build().unwrap();
    let r = http
        .get(proxy.url("/v1/Users/USa"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("content-encoding").is_none());
    let declared: usize = r.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = r.text().await.unwrap();
    assert_eq!(declared, body.len());
    assert_eq!(
        body,
        WITH_LINK.replace(
            r#""url":"https://conversations.twilio.com"#,
            &format!(r#""url":"http://{}"#, proxy.addr)
        )
    );
    let r = http
        .get(proxy.url("/v1/Users/other"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert_eq!(r.bytes().await.unwrap().to_vec(), gzip(WITHOUT));
    proxy.stop().await;
}

/// A JSON answer whose body stalls is cut after `limits.idle_timeout_ms`
/// (a 504 from the proxy, the answer was not sent yet), never held open.
#[tokio::test]
async fn a_stalled_json_body_is_a_504_not_a_hang() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"url\":")
                .await;
            keep.lock().await.push(s);
        }
    });
    let mut config = fast_config(&format!("http://{addr}"));
    config.limits.idle_timeout_ms = 300;
    let proxy = start_proxy(config).await;
    let r = reqwest::Client::new()
        .get(proxy.url("/v1/Users/USa"))
        .timeout(std::time::Duration::from_secs(20))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(r.headers()["x-repair-proxy-error"], "upstream-timeout");
    drop(held);
    proxy.stop().await;
}
