//! The incidents page (`/ui` on the admin listener) and the support
//! bundle, against incidents the workflow really recorded from the
//! emulator: a repaired one, a failed one (Twilio refuses the User delete)
//! and a repaired one whose identity and friendly name are markup.
//!
//! Headless Chromium renders the page (`--dump-dom`, `--screenshot`): the
//! incidents are listed, a filter narrows them, an incident shows its
//! steps. Plain HTTP checks the sign-in, privacy, escaping and bad
//! parameters; the bundle is checked for every Twilio request id and for
//! the absence of the auth token and of attribute values.

use std::time::Duration;

use crate::common::*;
use twilio_repair_proxy::config::{Config, IdentityRecord};
use twilio_repair_proxy::emulator::FaultMode;

const ADMIN_TOKEN: &str = "ui-test-admin-token-0123456789";
const MARKUP_ID: &str = "<b>eve</b>";
const MARKUP_NAME: &str = "<script>alert('fn')</script>";
/// Attribute values that must never leave through a page or a bundle.
const SECRET_ATTRS: [&str; 2] = ["alice-attr-value-4711", "+15550001111"];

/// A stack with three real incidents, newest last: `alice` repaired,
/// `bob` failed (the User delete refused 403), [`MARKUP_ID`] repaired.
/// Users were created on 2024-05-01 (alice, bob) and 2024-06-02 (eve).
struct Recorded {
    st: Stack,
    is: String,
    store: String,
}

async fn scene(tweak: impl FnOnce(&mut Config) + Send + 'static) -> Recorded {
    scene_on(StoreKind::Sqlite, tweak).await
}

async fn scene_on(kind: StoreKind, tweak: impl FnOnce(&mut Config) + Send + 'static) -> Recorded {
    let store = store_url(kind).await;
    let store2 = store.clone();
    let st = Scene::new()
        .emulator_with(|c| {
            c.fault_mode = FaultMode::Block;
            c.fault_identities = vec!["alice".into(), "bob".into(), MARKUP_ID.into()];
        })
        .proxy(move |c| {
            c.store = store2;
            tweak(c);
        })
        .stack()
        .await;
    let is = st.emu.service().await;
    let b = base(Some(&is));
    for (identity, name, attrs, created) in [
        (
            "alice",
            "Alice A",
            format!(r#"{{"note":"{}"}}"#, SECRET_ATTRS[0]),
            "2024-05-01T09:00:00Z",
        ),
        (
            "bob",
            "Bob B",
            format!(r#"{{"phone":"{}"}}"#, SECRET_ATTRS[1]),
            "2024-05-01T17:30:00Z",
        ),
        (
            MARKUP_ID,
            MARKUP_NAME,
            "{}".to_string(),
            "2024-06-02T08:00:00Z",
        ),
    ] {
        let (s, v) = st
            .emu
            .post(
                &format!("{b}/Users"),
                &[
                    ("Identity", identity),
                    ("FriendlyName", name),
                    ("Attributes", &attrs),
                ],
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let r = st
            .emu
            .http
            .put(st.emu.url("/__emulator/users/date-created"))
            .json(&serde_json::json!({"identity": identity, "service_sid": is, "date_created": created}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    for identity in ["alice", "bob", MARKUP_ID] {
        let ch = st.emu.conversation(Some(&is)).await;
        st.emu.add_and_remove(Some(&is), &ch, identity).await;
        if identity == "bob" {
            st.emu
                .add_rule(
                    serde_json::json!({"method": "DELETE", "path": "/Users/", "times": 1,
                    "action": {"kind": "status", "status": 403}}),
                )
                .await;
        }
        let (_, outcome, body) = st.create(Some(&is), &ch, &[("Identity", identity)]).await;
        let want = if identity == "bob" {
            "failed"
        } else {
            "repaired"
        };
        assert_eq!(outcome.as_deref(), Some(want), "{identity}: {body}");
    }
    Recorded { st, is, store }
}

impl Recorded {
    async fn get(&self, path: &str, auth: Auth<'_>) -> (u16, String, reqwest::header::HeaderMap) {
        let mut req = no_redirects().get(self.st.proxy.admin_url(path));
        req = match auth {
            Auth::None => req,
            Auth::Bearer(t) => req.bearer_auth(t),
            Auth::Cookie(c) => req.header("cookie", c),
        };
        let r = req.send().await.unwrap();
        let (s, h) = (r.status().as_u16(), r.headers().clone());
        (s, r.text().await.unwrap(), h)
    }
    /// The incidents as `/incidents` (JSON) has them, oldest first.
    async fn incidents(&self, auth: Option<&str>) -> Vec<serde_json::Value> {
        let mut req = reqwest::Client::new().get(self.st.proxy.admin_url("/incidents"));
        if let Some(t) = auth {
            req = req.bearer_auth(t);
        }
        let v: serde_json::Value = req.send().await.unwrap().json().await.unwrap();
        let mut l = v["incidents"].as_array().unwrap().clone();
        l.reverse();
        l
    }
}

#[derive(Clone, Copy)]
enum Auth<'a> {
    None,
    Bearer(&'a str),
    Cookie(&'a str),
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Chromium, from `TRP_TEST_CHROMIUM` (set by `scripts/test-setup.sh`) or
/// the PATH; a clear failure when there is none.
fn chromium() -> String {
    let c = std::env::var("TRP_TEST_CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let found = std::process::Command::new(&c)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "chromium not found ({c}): run `eval \"$(bash scripts/test-setup.sh)\"`, which installs \
         Debian's chromium package, or set TRP_TEST_CHROMIUM"
    );
    c
}

/// Run headless Chromium on `url` with `args` (its own profile directory);
/// its standard output.
async fn headless(url: &str, args: &[String]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .arg(url)
    .kill_on_drop(true)
    .stdin(std::process::Stdio::null());
    // 120 s: a bound on "Chromium hung", generous for a loaded machine.
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("chromium did not finish within 120 s")
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn dump_dom(url: &str) -> String {
    headless(url, &["--dump-dom".to_string()]).await
}

/// The `data-id`s of the incident rows of a rendered list.
fn listed_ids(dom: &str) -> Vec<i64> {
    let re = regex::Regex::new(r#"<tr class="incident" data-id="(\d+)""#).unwrap();
    re.captures_iter(dom)
        .map(|c| c[1].parse().unwrap())
        .collect()
}

#[tokio::test]
async fn chromium_renders_the_incidents_the_filter_narrows_them_and_an_incident_shows_its_steps() {
    let sc = scene(|_| {}).await;
    let recorded = sc.incidents(None).await;
    let ids: Vec<i64> = recorded.iter().map(|i| i["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 3);

    let dom = dump_dom(&sc.st.proxy.admin_url("/ui")).await;
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(listed_ids(&dom), newest_first, "{dom}");
    assert!(dom.contains(">alice<") && dom.contains(">bob<"), "{dom}");
    // The summary counts what was recorded, and the clusters show the day
    // alice's and bob's Users were created.
    assert!(
        regex::Regex::new(
            r#"outcome-repaired">repaired</th><td class="num">2</td><td class="num">2</td>"#
        )
        .unwrap()
        .is_match(&dom),
        "{dom}"
    );
    assert!(
        dom.contains(r#"<td data-label="created on">2024-05-01</td><td class="num" data-label="identities">2</td>"#),
        "{dom}"
    );

    // The filter narrows the list: failed ones only, then one identity.
    let failed = dump_dom(&sc.st.proxy.admin_url("/ui?outcome=failed")).await;
    assert_eq!(listed_ids(&failed), vec![ids[1]], "{failed}");
    let by_service = dump_dom(
        &sc.st
            .proxy
            .admin_url(&format!("/ui?service={}&identity=alice", sc.is)),
    )
    .await;
    assert_eq!(listed_ids(&by_service), vec![ids[0]], "{by_service}");

    // An incident page shows every step with its Twilio request id.
    let page = dump_dom(&sc.st.proxy.admin_url(&format!("/ui/incidents/{}", ids[1]))).await;
    let steps = recorded[1]["steps"].as_array().unwrap();
    assert!(steps.len() >= 4, "{steps:?}");
    assert_eq!(
        page.matches(r#"<tr class="step">"#).count(),
        steps.len(),
        "{page}"
    );
    for s in steps {
        let rq = s["twilio_request_id"].as_str().unwrap();
        assert!(page.contains(rq), "{rq} missing from {page}");
    }
    assert!(page.contains("delete-user"), "{page}");
    assert!(page.contains(r#"id="bundle""#), "{page}");

    // The screenshots are test artefacts under target/.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, path, size) in [
        ("incidents.png", "/ui".to_string(), "1280,1100"),
        ("incidents-phone.png", "/ui".to_string(), "412,1400"),
        (
            "incident.png",
            format!("/ui/incidents/{}", ids[1]),
            "1280,1100",
        ),
    ] {
        let file = dir.join(name);
        let _ = std::fs::remove_file(&file);
        headless(
            &sc.st.proxy.admin_url(&path),
            &[
                format!("--screenshot={}", file.display()),
                format!("--window-size={size}"),
            ],
        )
        .await;
        let png = std::fs::read(&file).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{name}");
    }
    sc.st.proxy.stop().await;
}

#[tokio::test]
async fn the_page_needs_the_token_and_a_browser_signs_in_with_a_cookie() {
    let sc =
        scene(|c| c.admin.token = Some(twilio_repair_proxy::config::AdminToken::new(ADMIN_TOKEN)))
            .await;
    // No credentials, a wrong bearer, a forged cookie: 401 and the form.
    for auth in [
        Auth::None,
        Auth::Bearer("not-the-admin-token-0000"),
        Auth::Cookie("trp_admin_session=0123456789abcdef"),
    ] {
        let (s, body, _) = sc.get("/ui", auth).await;
        assert_eq!(s, 401);
        assert!(body.contains(r#"action="/ui/login""#), "{body}");
        assert!(!body.contains("alice"), "{body}");
        let (s, _, _) = sc.get("/ui/incidents/1/bundle", auth).await;
        assert_eq!(s, 401);
    }
    let login = |token: &'static str| {
        no_redirects()
            .post(sc.st.proxy.admin_url("/ui/login"))
            .form(&[("token", token)])
            .send()
    };
    // A wrong token is refused and sets no cookie.
    let r = login("not-the-admin-token-0000").await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none());
    // The right one sets an HttpOnly, SameSite=Strict cookie without the token in it.
    let r = login(ADMIN_TOKEN).await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui");
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains(ADMIN_TOKEN), "{set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let (s, body, h) = sc.get("/ui", Auth::Cookie(&cookie)).await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains(">alice<"), "{body}");
    assert!(body.contains("Sign out"), "{body}");
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    // The cookie opens the JSON admin paths too; the bearer token still works.
    let (s, _, _) = sc.get("/incidents", Auth::Cookie(&cookie)).await;
    assert_eq!(s, 200);
    let (s, _, _) = sc.get("/ui", Auth::Bearer(ADMIN_TOKEN)).await;
    assert_eq!(s, 200);
    // Signing out clears the cookie.
    let r = no_redirects()
        .post(sc.st.proxy.admin_url("/ui/logout"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    sc.st.proxy.stop().await;
}

#[tokio::test]
async fn hashed_identities_stay_hashed_and_attributes_need_an_authenticated_ask() {
    let sc = scene(|c| {
        c.admin.token = Some(twilio_repair_proxy::config::AdminToken::new(ADMIN_TOKEN));
        c.repair.incident_identity = IdentityRecord::Hash;
    })
    .await;
    let auth = Auth::Bearer(ADMIN_TOKEN);
    let alice = twilio_repair_proxy::admin::hash_identity("alice");
    let (s, list, _) = sc.get("/ui", auth).await;
    assert_eq!(s, 200);
    assert!(list.contains(&alice), "{list}");
    // A plain identity filter finds the hashed records; nothing plain is shown.
    let (_, filtered, _) = sc.get("/ui?identity=alice", auth).await;
    assert_eq!(
        filtered.matches(r#"<tr class="incident""#).count(),
        1,
        "{filtered}"
    );
    let ids: Vec<i64> = sc
        .incidents(Some(ADMIN_TOKEN))
        .await
        .iter()
        .map(|i| i["id"].as_i64().unwrap())
        .collect();
    for path in [
        "/ui".to_string(),
        "/ui?identity=alice".to_string(),
        format!("/ui/incidents/{}", ids[0]),
        format!("/ui/incidents/{}?show=attributes", ids[0]),
        format!("/ui/incidents/{}/bundle", ids[0]),
        format!("/ui/incidents/{}/bundle", ids[1]),
    ] {
        let (s, body, _) = sc.get(&path, auth).await;
        assert_eq!(s, 200, "{path}");
        // The operator's own filter input is echoed back in the form.
        let shown = body
            .replace("identity=alice", "")
            .replace(r#"value="alice""#, "");
        assert!(
            !shown.contains("alice") && !shown.contains(">bob<"),
            "{path}: {body}"
        );
        assert!(!shown.contains("Alice A"), "{path}: {body}");
        for secret in SECRET_ATTRS {
            assert!(!body.contains(secret), "{path}: {body}");
        }
    }
    sc.st.proxy.stop().await;
}

#[tokio::test]
async fn attributes_are_shown_only_on_an_authenticated_ask_and_markup_is_escaped() {
    // No token configured: nobody is an authenticated operator.
    let open = scene(|_| {}).await;
    let ids: Vec<i64> = open
        .incidents(None)
        .await
        .iter()
        .map(|i| i["id"].as_i64().unwrap())
        .collect();
    let (s, page, _) = open
        .get(&format!("/ui/incidents/{}", ids[0]), Auth::None)
        .await;
    assert_eq!(s, 200);
    assert!(
        !page.contains(SECRET_ATTRS[0]) && !page.contains("Alice A"),
        "{page}"
    );
    let (s, _, _) = open
        .get(
            &format!("/ui/incidents/{}?show=attributes", ids[0]),
            Auth::None,
        )
        .await;
    assert_eq!(s, 403);
    // The identity `<b>eve</b>` is text, never markup, in the list and its page.
    let (_, list, _) = open.get("/ui", Auth::None).await;
    assert!(list.contains("&lt;b&gt;eve&lt;/b&gt;"), "{list}");
    assert!(!list.contains(MARKUP_ID), "{list}");
    let (_, page, _) = open
        .get(&format!("/ui/incidents/{}", ids[2]), Auth::None)
        .await;
    assert!(
        page.contains("&lt;b&gt;eve&lt;/b&gt;") && !page.contains(MARKUP_ID),
        "{page}"
    );
    open.st.proxy.stop().await;

    // With the token, the operator who asks sees them (escaped).
    let sc =
        scene(|c| c.admin.token = Some(twilio_repair_proxy::config::AdminToken::new(ADMIN_TOKEN)))
            .await;
    let ids: Vec<i64> = sc
        .incidents(Some(ADMIN_TOKEN))
        .await
        .iter()
        .map(|i| i["id"].as_i64().unwrap())
        .collect();
    let auth = Auth::Bearer(ADMIN_TOKEN);
    let (_, page, _) = sc.get(&format!("/ui/incidents/{}", ids[0]), auth).await;
    assert!(!page.contains(SECRET_ATTRS[0]), "{page}");
    let (s, page, _) = sc
        .get(&format!("/ui/incidents/{}?show=attributes", ids[0]), auth)
        .await;
    assert_eq!(s, 200);
    assert!(
        page.contains(SECRET_ATTRS[0]) && page.contains("Alice A"),
        "{page}"
    );
    let (_, page, _) = sc
        .get(&format!("/ui/incidents/{}?show=attributes", ids[2]), auth)
        .await;
    assert!(page.contains("&lt;script&gt;alert("), "{page}");
    assert!(!page.contains(MARKUP_NAME), "{page}");
    sc.st.proxy.stop().await;
}

#[tokio::test]
async fn bad_parameters_get_a_clear_400_and_unknown_incidents_a_404() {
    let sc = scene(|_| {}).await;
    for (path, says) in [
        (
            "/ui?outcome=broken",
            "outcome must be one of existing, repaired",
        ),
        ("/ui?page=0", "page must be a whole number"),
        ("/ui?page=abc", "page must be a whole number"),
        (
            "/ui?service=not-a-sid",
            "service must be a Conversation Service SID",
        ),
        ("/ui?limit=5", "unknown parameter"),
        ("/ui?page=1&page=2", "more than once"),
        ("/ui/incidents/abc", "is not an incident number"),
        ("/ui/incidents/1?show=everything", "show must be"),
        ("/ui/incidents/-3/bundle", "is not an incident number"),
    ] {
        let (s, body, _) = sc.get(path, Auth::None).await;
        assert_eq!(s, 400, "{path}: {body}");
        assert!(body.contains(says), "{path}: {body}");
    }
    for path in ["/ui/incidents/999999", "/ui/incidents/999999/bundle"] {
        let (s, _, _) = sc.get(path, Auth::None).await;
        assert_eq!(s, 404, "{path}");
    }
    // An empty filter value means "any"; the root goes to the page.
    let (s, _, _) = sc.get("/ui?outcome=&service=&identity=", Auth::None).await;
    assert_eq!(s, 200);
    let (s, _, h) = sc.get("/", Auth::None).await;
    assert_eq!((s, h["location"].to_str().unwrap()), (303, "/ui"));
    sc.st.proxy.stop().await;
}

/// `incidents bundle --id N` as an operator runs it beside the proxy.
fn bundle_cli(store: &str, id: i64) -> String {
    let out = std::process::Command::new(bin())
        .args([
            "incidents",
            "bundle",
            "--id",
            &id.to_string(),
            "--store",
            store,
        ])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn a_support_bundle_names_every_twilio_call_and_holds_no_secret() {
    let sc = scene(|_| {}).await;
    let recorded = sc.incidents(None).await;
    for (incident, outcome) in [(&recorded[0], "repaired"), (&recorded[1], "failed")] {
        assert_eq!(incident["outcome"], outcome);
        let id = incident["id"].as_i64().unwrap();
        let text = bundle_cli(&sc.store, id);
        // The page's download is the same file (but for its timestamp).
        let (s, page, h) = sc
            .get(&format!("/ui/incidents/{id}/bundle"), Auth::None)
            .await;
        assert_eq!(s, 200);
        assert!(
            h["content-disposition"]
                .to_str()
                .unwrap()
                .contains("attachment")
        );
        // Its texts are Twilio's and the client's: never sniffed as markup.
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["cache-control"], "no-store");
        let no_stamp = |t: &str| {
            t.lines()
                .filter(|l| !l.starts_with("bundle generated at:"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(no_stamp(&text), no_stamp(&page));

        let steps = incident["steps"].as_array().unwrap();
        assert!(!steps.is_empty());
        for s in steps {
            let rq = s["twilio_request_id"].as_str().unwrap();
            assert!(rq.starts_with("RQ"), "{s}");
            assert!(text.contains(rq), "{outcome}: {rq} missing:\n{text}");
            let line = format!(
                "{} {}",
                s["method"].as_str().unwrap(),
                s["path"].as_str().unwrap()
            );
            assert!(text.contains(&line), "{outcome}: {line} missing:\n{text}");
        }
        let original = incident["request_id"].as_str().unwrap();
        assert!(
            field_is(&text, "20404 Twilio-Request-Id", original),
            "{text}"
        );
        for field in [
            ACCOUNT,
            incident["service_sid"].as_str().unwrap(),
            incident["conversation_sid"].as_str().unwrap(),
            env!("CARGO_PKG_VERSION"),
            "repair.incident_identity = \"plain\"",
        ] {
            assert!(text.contains(field), "{field} missing:\n{text}");
        }
        assert!(
            field_is(&text, "User date_created", "2024-05-01T"),
            "{text}"
        );
        assert!(text.contains("2024-05-01: 2 identities"), "{text}");
        // No secret: the auth token (plain or inside Basic credentials),
        // attribute values, friendly names.
        let basic = base64_basic();
        for secret in [TOKEN, basic.as_str(), "Alice A", "Bob B"]
            .into_iter()
            .chain(SECRET_ATTRS)
        {
            assert!(
                !text.contains(secret),
                "{outcome}: {secret} in the bundle:\n{text}"
            );
        }
    }
    // The failed one names Twilio's refusal.
    let failed = bundle_cli(&sc.store, recorded[1]["id"].as_i64().unwrap());
    assert!(field_is(&failed, "outcome", "failed"), "{failed}");
    assert!(failed.contains("status 403"), "{failed}");
    sc.st.proxy.stop().await;
}

/// Whether a bundle has the line `name: value…` (aligned with spaces).
fn field_is(text: &str, name: &str, value: &str) -> bool {
    text.lines().any(|l| {
        l.strip_prefix(name)
            .and_then(|r| r.strip_prefix(':'))
            .is_some_and(|r| r.trim_start().starts_with(value))
    })
}

/// The emulator credentials as a Basic `Authorization` value carries them.
fn base64_basic() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{ACCOUNT}:{TOKEN}"))
}

/// The page's queries (filters, pages, counts) on the shared store too.
#[tokio::test]
async fn the_page_and_the_bundle_read_a_postgres_store() {
    let sc = scene_on(StoreKind::Postgres, |_| {}).await;
    let (s, list, _) = sc.get("/ui?outcome=failed", Auth::None).await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list.matches(r#"<tr class="incident""#).count(), 1, "{list}");
    assert!(list.contains(">bob<"), "{list}");
    assert!(
        list.contains(r#"outcome-repaired">repaired</th><td class="num">2</td>"#),
        "{list}"
    );
    let (s, list, _) = sc
        .get(&format!("/ui?service={}&identity=alice", sc.is), Auth::None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(list.matches(r#"<tr class="incident""#).count(), 1, "{list}");
    let (s, list, _) = sc.get("/ui?page=2", Auth::None).await;
    assert_eq!(s, 200);
    assert!(list.contains("No incident matches."), "{list}");
    let id = sc.incidents(None).await[1]["id"].as_i64().unwrap();
    let text = bundle_cli(&sc.store, id);
    assert!(field_is(&text, "outcome", "failed"), "{text}");
    sc.st.proxy.stop().await;
}

/// `demo`, the README's first command: every link it prints goes through
/// the proxy or its admin listener, the last one is the incidents page,
/// and the answers' own links point at the proxy (link rewriting).
#[tokio::test]
async fn the_demo_prints_links_through_the_proxy_ending_with_the_incidents_page() {
    use tokio::io::AsyncBufReadExt;
    let (p, a, e) = (free_port(), free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(bin())
        .arg("demo")
        .args(["--listen", &format!("127.0.0.1:{p}")])
        .args(["--admin-listen", &format!("127.0.0.1:{a}")])
        .args(["--emulator-listen", &format!("127.0.0.1:{e}")])
        .args([
            "--store",
            &format!("sqlite://{}/demo.db", dir.path().display()),
        ])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = String::new();
    // 30 s: a bound on "the demo never printed its steps".
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            printed.push_str(&l);
            printed.push('\n');
            if l.contains("Ctrl-C") {
                break;
            }
        }
    })
    .await
    .expect("the demo printed no steps");
    let (proxy, admin) = (
        format!("http://127.0.0.1:{p}"),
        format!("http://127.0.0.1:{a}"),
    );
    let links: Vec<&str> = printed
        .split_whitespace()
        .filter(|w| w.starts_with("http://"))
        .map(|w| w.trim_end_matches([',', '.']))
        .collect();
    assert!(links.len() >= 5, "{printed}");
    for l in &links {
        assert!(
            l.starts_with(&proxy) || l.starts_with(&admin),
            "{l} in:\n{printed}"
        );
    }
    assert_eq!(links.last().unwrap(), &format!("{admin}/ui"), "{printed}");
    // Step 1 as printed: the repair, and links in the answer on the proxy.
    let create = *links.iter().find(|l| l.ends_with("/Participants")).unwrap();
    wait_ready(&format!("{admin}/readyz")).await;
    let r = reqwest::Client::new()
        .post(create)
        .basic_auth(ACCOUNT, Some(TOKEN))
        .form(&[("Identity", "demo-alice")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-repair-outcome"], "repaired");
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["url"].as_str().unwrap().starts_with(&proxy), "{body}");
    let (s, page, _) = {
        let r = reqwest::get(format!("{admin}/ui")).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap(), ())
    };
    assert_eq!(s, 200);
    assert!(page.contains(">demo-alice<"), "{page}");
    child.kill().await.unwrap();
}

/// The session cookie only reads: a change (`POST /repairs/{id}/abandon`)
/// needs the bearer token. `SameSite=Strict` keeps the cookie off
/// cross-site requests only; another origin of the same site (another port
/// of the admin host, a sibling host name) could otherwise make a signed-in
/// browser abandon a repair with a plain form post.
#[tokio::test]
async fn the_session_cookie_reads_but_changes_nothing() {
    let up = upstream(std::sync::Arc::new(|_| json(200, "{}"))).await;
    let mut c = test_config(&up.url());
    c.admin.token = Some(twilio_repair_proxy::config::AdminToken::new(ADMIN_TOKEN));
    let proxy = start_proxy(c).await;
    let r = no_redirects()
        .post(proxy.admin_url("/ui/login"))
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let set = r.headers()["set-cookie"].to_str().unwrap();
    let cookie = set.split(';').next().unwrap().to_string();
    let r = no_redirects()
        .get(proxy.admin_url("/repairs?state=pending"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the cookie reads");
    // What a browser reads with it (identities, snapshots) is never cached.
    assert_eq!(r.headers()["cache-control"], "no-store");
    // A form post from a page of the same site carries the cookie, and
    // nothing else.
    let r = no_redirects()
        .post(proxy.admin_url("/repairs/999/abandon"))
        .header("cookie", &cookie)
        .header("origin", "http://127.0.0.1:1")
        .header("content-type", "application/x-www-form-urlencoded")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "the cookie alone changes nothing");
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("Bearer"),
        "{body}"
    );
    // The bearer token reaches the handler (no such repair here).
    let r = no_redirects()
        .post(proxy.admin_url("/repairs/999/abandon"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    proxy.stop().await;
}
