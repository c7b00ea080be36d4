//! The official helper libraries (twilio-python 9.13.0, twilio-node 6.2.0)
//! against the emulator directly and through the proxy.
//!
//! Each test runs `tests/sdk/python/conversations.py` or
//! `tests/sdk/node/conversations.js`, which point the library at a base URL
//! the way a user would (`client.conversations.base_url` / `baseUrl`), run a
//! scenario and print what the library returned or raised as JSON. The test
//! asserts on that JSON and on the emulator's request log.
//!
//! `scripts/test.sh` installs the libraries and exports `TRP_TEST_PYTHON`
//! (the venv's python) and `TRP_TEST_NODE_DIR` (`tests/sdk/node`, with its
//! `node_modules`). Without them these tests fail rather than skip.
//!
//! Pagination is tested against the emulator directly and through the
//! proxy with its default settings, where link rewriting
//! (`public_base_url = "request"`) keeps page 2 onward on the proxy.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::common::*;
use serde_json::Value;
use twilio_repair_proxy::emulator::FaultMode;

const PYTHON_VERSION: &str = "9.13.0";
const NODE_VERSION: &str = "6.2.0";
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
const MISSING_CONVERSATION: &str = "CH00000000000000000000000000000000";

#[derive(Clone, Copy, Debug)]
pub(crate) enum Lib {
    Python,
    Node,
}

impl Lib {
    /// User-Agent prefix the library sends on every request.
    fn user_agent(self) -> &'static str {
        match self {
            Lib::Python => "twilio-python/9.13.0 ",
            Lib::Node => "twilio-node/6.2.0 ",
        }
    }
    /// Class name of the library's REST error.
    pub(crate) fn error_class(self) -> &'static str {
        match self {
            Lib::Python => "TwilioRestException",
            Lib::Node => "RestException",
        }
    }
    /// What the library makes of the server's `message` on a failed create.
    fn create_error_message(self, server: &str) -> String {
        match self {
            Lib::Python => format!("Unable to create record: {server}"),
            Lib::Node => server.to_string(),
        }
    }
}

fn required_env(name: &str, what: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: run the tests with scripts/test.sh, which installs {what} and \
             exports {name} (or export it yourself)"
        ),
    }
}

fn python() -> String {
    required_env("TRP_TEST_PYTHON", "twilio==9.13.0 into tests/sdk/.venv")
}

fn node_dir() -> PathBuf {
    let dir = PathBuf::from(required_env(
        "TRP_TEST_NODE_DIR",
        "twilio@6.2.0 into tests/sdk/node/node_modules",
    ));
    assert!(
        dir.join("node_modules/twilio/package.json").is_file(),
        "{}/node_modules/twilio is missing: run scripts/test.sh (or `npm ci` in tests/sdk/node)",
        dir.display()
    );
    dir
}

/// Run a scenario script against `base_url`; its stdout as JSON.
pub(crate) async fn run(lib: Lib, base_url: &str, args: &[&str]) -> Value {
    let mut cmd = match lib {
        Lib::Python => {
            let mut c = tokio::process::Command::new(python());
            c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/python/conversations.py"))
                .env("PYTHONDONTWRITEBYTECODE", "1");
            c
        }
        Lib::Node => {
            let dir = node_dir();
            let mut c = tokio::process::Command::new("node");
            c.arg(dir.join("conversations.js"))
                .env("NODE_PATH", dir.join("node_modules"))
                .current_dir(&dir);
            c
        }
    };
    cmd.args(args)
        .env("TRP_BASE_URL", base_url)
        .env("TRP_ACCOUNT_SID", ACCOUNT)
        .env("TRP_AUTH_TOKEN", TOKEN)
        // Loopback only: no region/edge host rewriting, no HTTP proxy.
        .env_remove("TWILIO_EDGE")
        .env_remove("TWILIO_REGION")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the {lib:?} scenario ({cmd:?}): {e}"));
    let out = tokio::time::timeout(SCRIPT_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the {lib:?} scenario did not finish in {SCRIPT_TIMEOUT:?}"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the {lib:?} scenario failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    let v: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{lib:?} printed no JSON ({e}):\n{stdout}\nstderr: {stderr}"));
    let want = match lib {
        Lib::Python => PYTHON_VERSION,
        Lib::Node => NODE_VERSION,
    };
    assert_eq!(v["version"], want, "wrong {lib:?} library installed");
    v
}

fn step<'a>(out: &'a Value, name: &str) -> &'a Value {
    let s = &out["steps"][name];
    assert!(!s.is_null(), "no step {name} in {out}");
    s
}

/// The participant a step returned; panics with the step if it raised.
pub(crate) fn ok<'a>(out: &'a Value, name: &str) -> &'a Value {
    let s = step(out, name);
    assert!(s.get("ok").is_some(), "step {name} raised: {s}");
    &s["ok"]
}

/// The error a step raised; panics if it returned normally.
pub(crate) fn err<'a>(out: &'a Value, name: &str) -> &'a Value {
    let s = step(out, name);
    assert!(s.get("error").is_some(), "step {name} did not raise: {s}");
    &s["error"]
}

fn assert_error(lib: Lib, out: &Value, name: &str, status: u16, code: u32) {
    let e = err(out, name);
    assert_eq!(e["class"], lib.error_class(), "{name}: {e}");
    assert_eq!(e["status"], status, "{name}: {e}");
    assert_eq!(e["code"], code, "{name}: {e}");
}

/// The library saw the emulator's 20404 for a create under `ch`.
fn assert_create_20404(lib: Lib, out: &Value, name: &str, is: &str, ch: &str) {
    assert_error(lib, out, name, 404, 20404);
    let server = format!(
        "The requested resource /v1/Services/{is}/Conversations/{ch}/Participants was not found"
    );
    assert_eq!(err(out, name)["message"], lib.create_error_message(&server));
}

fn assert_participant(p: &Value, identity: &str, is: &str, ch: &str) {
    assert!(
        p["sid"].as_str().is_some_and(|s| s.starts_with("MB")),
        "{p}"
    );
    assert_eq!(p["identity"], identity, "{p}");
    assert_eq!(p["conversation_sid"], ch, "{p}");
    assert_eq!(p["chat_service_sid"], is, "{p}");
    assert_eq!(p["account_sid"], ACCOUNT, "{p}");
}

pub(crate) fn sids(out: &Value) -> (String, String) {
    (
        out["service_sid"].as_str().unwrap().to_string(),
        out["conversation_sid"].as_str().unwrap().to_string(),
    )
}

/// The identity suffers the fault; the library makes everything else.
fn faulted(mode: FaultMode, identity: &str) -> Scene {
    Scene::new().user(identity).faulty(mode)
}

/// One entry of the emulator's request log.
#[derive(Debug)]
struct Logged {
    method: String,
    path: String,
    status: u64,
    user_agent: String,
    via: Option<String>,
}

async fn request_log(emu: &Emu) -> Vec<Logged> {
    emu.log_json()
        .await
        .iter()
        .map(|r| Logged {
            method: r["method"].as_str().unwrap().to_string(),
            path: r["path"].as_str().unwrap().to_string(),
            status: r["status"].as_u64().unwrap_or(0),
            user_agent: r["headers"]["user-agent"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            via: r["headers"]["via"].as_str().map(str::to_string),
        })
        .collect()
}

fn from_library(log: &[Logged], lib: Lib) -> Vec<&Logged> {
    log.iter()
        .filter(|r| r.user_agent.starts_with(lib.user_agent()))
        .collect()
}

fn count(log: &[Logged], method: &str, needle: &str) -> usize {
    log.iter()
        .filter(|r| r.method == method && r.path.contains(needle))
        .count()
}

// ---------------------------------------------------------------------------
// Directly against the emulator: the fault as the libraries see it, and the
// rest of the API surface they use.
// ---------------------------------------------------------------------------

async fn direct_block_scenario(lib: Lib) {
    let emu = faulted(FaultMode::Block, "alice").emulator().await;
    let out = run(
        lib,
        &emu.origin(),
        &[
            "--identity",
            "alice",
            "--duplicate",
            "dave",
            "--missing-conversation",
            "--extra",
            "5",
            "--page-size",
            "2",
        ],
    )
    .await;
    let (is, ch) = sids(&out);
    assert!(is.starts_with("IS") && ch.starts_with("CH"), "{out}");

    assert_participant(ok(&out, "create"), "alice", &is, &ch);
    // The fault: the re-add of the deleted identity raises 20404 ...
    assert_create_20404(lib, &out, "readd", &is, &ch);
    assert_create_20404(lib, &out, "readd_again", &is, &ch);
    // ... and in block mode nothing was created.
    assert_error(lib, &out, "fetch", 404, 20404);
    // A duplicate identity is a 409/50433.
    assert_participant(ok(&out, "duplicate_first"), "dave", &is, &ch);
    assert_error(lib, &out, "duplicate", 409, 50433);
    // A genuinely missing conversation is the same 20404.
    assert_create_20404(lib, &out, "missing_conversation", &is, MISSING_CONVERSATION);

    // list(page_size=2) walks every page through the absolute next_page_url.
    let listed: Vec<&str> = ok(&out, "list")
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["identity"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        [
            "dave", "extra-0", "extra-1", "extra-2", "extra-3", "extra-4"
        ]
    );
    for (i, p) in ok(&out, "list").as_array().unwrap().iter().enumerate() {
        let created = if i == 0 {
            ok(&out, "duplicate_first")
        } else {
            ok(&out, &format!("extra_{}", i - 1))
        };
        assert_eq!(p, created, "list entry {i}");
    }

    let log = request_log(&emu).await;
    assert_eq!(
        from_library(&log, lib).len(),
        log.len(),
        "every request came from the library: {log:#?}"
    );
    assert!(log.iter().all(|r| r.via.is_none()), "{log:#?}");
    let list_path = format!("/v1/Services/{is}/Conversations/{ch}/Participants?");
    let pages: Vec<&str> = log
        .iter()
        .filter(|r| r.method == "GET" && r.path.starts_with(&list_path))
        .map(|r| &r.path[list_path.len()..])
        .collect();
    assert_eq!(pages.len(), 3, "3 pages of 2: {pages:?}");
    assert_eq!(pages[0], "PageSize=2");
    for (n, page) in pages[1..].iter().enumerate() {
        assert!(
            page.starts_with(&format!("PageSize=2&Page={}&PageToken=PT", n + 1)),
            "{pages:?}"
        );
    }
    assert!(log.iter().all(|r| r.status < 500), "{log:#?}");
}

#[tokio::test]
async fn python_direct_block_fault_raises_20404_and_lists_all_pages() {
    direct_block_scenario(Lib::Python).await;
}

#[tokio::test]
async fn node_direct_block_fault_raises_20404_and_lists_all_pages() {
    direct_block_scenario(Lib::Node).await;
}

#[tokio::test]
async fn python_direct_ghost_fault_raises_20404_but_creates() {
    let emu = faulted(FaultMode::Ghost, "alice").emulator().await;
    let out = run(Lib::Python, &emu.origin(), &["--identity", "alice"]).await;
    let (is, ch) = sids(&out);
    assert_create_20404(Lib::Python, &out, "readd", &is, &ch);
    // The ghost: the participant exists despite the 404.
    assert_error(Lib::Python, &out, "readd_again", 409, 50433);
    let fetched = ok(&out, "fetch");
    assert_participant(fetched, "alice", &is, &ch);
    assert_ne!(fetched["sid"], ok(&out, "create")["sid"]);
}

// ---------------------------------------------------------------------------
// Through the proxy: the same library calls succeed.
// ---------------------------------------------------------------------------

async fn proxied(mode: FaultMode, identity: &str) -> Stack {
    faulted(mode, identity)
        .proxy(|c| c.add_forwarded_headers = true)
        .stack()
        .await
}

/// Every request the library made reached the emulator through the proxy:
/// forwarded requests carry the proxy's `Via` (forwarded headers are on in
/// these tests), and there are exactly `expected` of them, all from the
/// library. The rest is the proxy's own check/repair traffic, marked
/// `Via: 1.1 twilio-repair-proxy (repair)`: its own User-Agent, or the
/// library's on a replayed Participant create.
fn assert_all_through_proxy(log: &[Logged], lib: Lib, expected: usize) {
    let (forwarded, own): (Vec<&Logged>, Vec<&Logged>) = log
        .iter()
        .partition(|r| r.via.as_deref() == Some("1.1 twilio-repair-proxy"));
    assert_eq!(forwarded.len(), expected, "forwarded requests: {log:#?}");
    for r in &forwarded {
        assert!(
            r.user_agent.starts_with(lib.user_agent()),
            "forwarded, but not from the library: {r:?}"
        );
    }
    for r in &own {
        assert_eq!(
            r.via.as_deref(),
            Some("1.1 twilio-repair-proxy (repair)"),
            "{r:?}"
        );
        let replay = r.method == "POST" && r.path.ends_with("/Participants");
        assert!(
            r.user_agent.starts_with("twilio-repair-proxy/")
                || (replay && r.user_agent.starts_with(lib.user_agent())),
            "neither forwarded nor made by the proxy: {r:?}"
        );
    }
    assert!(log.iter().all(|r| r.status < 500), "{log:#?}");
}

async fn incident_outcomes(st: &Stack) -> Vec<String> {
    let v: Value = admin_json(&st.proxy.admin, "/incidents").await;
    let mut o: Vec<String> = v["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["outcome"].as_str().unwrap_or("").to_string())
        .collect();
    o.sort();
    o
}

/// Python through the proxy: the faulted re-add returns a participant; a
/// duplicate and a genuinely missing conversation raise exactly what they
/// raise without the proxy. Returns the log and the script output.
async fn python_through_proxy(mode: FaultMode) -> (Stack, Value, Vec<Logged>) {
    let st = proxied(mode, "alice").await;
    let out = run(
        Lib::Python,
        &format!("http://{}", st.proxy.addr),
        &[
            "--identity",
            "alice",
            "--duplicate",
            "dave",
            "--missing-conversation",
        ],
    )
    .await;
    let (is, ch) = sids(&out);
    let first = ok(&out, "create");
    assert_participant(first, "alice", &is, &ch);
    let readd = ok(&out, "readd");
    assert_participant(readd, "alice", &is, &ch);
    assert_ne!(readd["sid"], first["sid"], "a new participant");
    // It really exists: a second add is the usual duplicate, and a fetch
    // by identity finds the same participant.
    assert_error(Lib::Python, &out, "readd_again", 409, 50433);
    assert_eq!(ok(&out, "fetch"), readd);
    assert_error(Lib::Python, &out, "duplicate", 409, 50433);
    assert_eq!(
        err(&out, "duplicate")["message"],
        "Unable to create record: Participant already exists"
    );
    assert_create_20404(
        Lib::Python,
        &out,
        "missing_conversation",
        &is,
        MISSING_CONVERSATION,
    );

    let log = request_log(&st.emu).await;
    // services.create, conversations.create, create, delete, readd,
    // readd_again, duplicate x2, missing_conversation, fetch.
    assert_all_through_proxy(&log, Lib::Python, 10);
    (st, out, log)
}

#[tokio::test]
async fn python_through_proxy_block_mode_readd_returns_the_participant() {
    let (st, _out, log) = python_through_proxy(FaultMode::Block).await;
    assert_eq!(count(&log, "DELETE", "/Users/"), 1, "{log:#?}");
    // The missing conversation was checked and judged genuine.
    assert_eq!(incident_outcomes(&st).await, ["genuine", "repaired"]);
    st.proxy.stop().await;
}

#[tokio::test]
async fn python_through_proxy_ghost_mode_readd_returns_the_participant() {
    let (st, _out, log) = python_through_proxy(FaultMode::Ghost).await;
    assert_eq!(count(&log, "DELETE", "/Users/"), 0, "{log:#?}");
    assert_eq!(incident_outcomes(&st).await, ["existing", "genuine"]);
    st.proxy.stop().await;
}

#[tokio::test]
async fn node_through_proxy_block_mode_readd_returns_the_participant() {
    // Service and conversation made directly; the library gets their SIDs.
    let (st, alice) = faulted(FaultMode::Block, "alice")
        .proxy(|c| c.add_forwarded_headers = true)
        .start()
        .await;
    let (is, ch) = (alice.is.clone().unwrap(), alice.target().to_string());
    st.emu.clear_requests().await;
    let out = run(
        Lib::Node,
        &format!("http://{}", st.proxy.addr),
        &[
            "--identity",
            "alice",
            "--service",
            &is,
            "--conversation",
            &ch,
        ],
    )
    .await;
    assert_eq!(sids(&out), (is.clone(), ch.clone()));
    let first = ok(&out, "create");
    assert_participant(first, "alice", &is, &ch);
    let readd = ok(&out, "readd");
    assert_participant(readd, "alice", &is, &ch);
    assert_ne!(readd["sid"], first["sid"]);
    assert_error(Lib::Node, &out, "readd_again", 409, 50433);
    assert_eq!(ok(&out, "fetch"), readd);

    let log = request_log(&st.emu).await;
    // create, delete, readd, readd_again, fetch.
    assert_all_through_proxy(&log, Lib::Node, 5);
    assert_eq!(count(&log, "DELETE", "/Users/"), 1, "{log:#?}");
    assert_eq!(incident_outcomes(&st).await, ["repaired"]);
    st.proxy.stop().await;
}

// ---------------------------------------------------------------------------
// Link rewriting with the shipped default (`public_base_url = "request"`,
// nothing configured): the libraries' pagination (which follows the absolute
// `meta.next_page_url`) stays on the proxy. `Via` (add_forwarded_headers)
// marks every request the proxy forwarded, so a request that reached the
// emulator without it went around the proxy.
// ---------------------------------------------------------------------------

async fn pagination_stays_on_the_proxy(lib: Lib) {
    let st = faulted(FaultMode::Ghost, "nobody-affected")
        .proxy(|c| c.add_forwarded_headers = true)
        .stack()
        .await;
    let out = run(
        lib,
        &format!("http://{}", st.proxy.addr),
        &["--identity", "pat", "--extra", "5", "--page-size", "2"],
    )
    .await;
    let (is, ch) = sids(&out);
    let listed: Vec<&str> = ok(&out, "list")
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["identity"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        ["pat", "extra-0", "extra-1", "extra-2", "extra-3", "extra-4"]
    );
    // Resource URLs point at the proxy too, and the rewritten body is
    // still Twilio's JSON with a matching Content-Length.
    let r = st
        .http
        .get(st.proxy.url(&format!(
            "/v1/Services/{is}/Conversations/{ch}/Participants/pat"
        )))
        .basic_auth(ACCOUNT, Some(TOKEN))
        .send()
        .await
        .unwrap();
    let declared: usize = r.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = r.bytes().await.unwrap();
    assert_eq!(declared, body.len());
    let p: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        p["url"].as_str().unwrap(),
        format!(
            "http://{}/v1/Services/{is}/Conversations/{ch}/Participants/{}",
            st.proxy.addr,
            p["sid"].as_str().unwrap()
        )
    );
    let log = request_log(&st.emu).await;
    let list_path = format!("/v1/Services/{is}/Conversations/{ch}/Participants?");
    let pages: Vec<&Logged> = log
        .iter()
        .filter(|r| r.method == "GET" && r.path.starts_with(&list_path))
        .collect();
    assert_eq!(pages.len(), 3, "{log:#?}");
    assert!(
        pages.iter().all(|r| r.via.is_some()),
        "every page went through the proxy: {pages:#?}"
    );
    assert!(
        from_library(&log, lib).iter().all(|r| r.via.is_some()),
        "{log:#?}"
    );
    st.proxy.stop().await;
}

#[tokio::test]
async fn python_pagination_stays_on_the_proxy_with_default_settings() {
    pagination_stays_on_the_proxy(Lib::Python).await;
}

#[tokio::test]
async fn node_pagination_stays_on_the_proxy_with_default_settings() {
    pagination_stays_on_the_proxy(Lib::Node).await;
}

// ---------------------------------------------------------------------------
// The whole surface an app uses, through a link-rewriting proxy, in both
// fault modes: what the README tells users to do, end to end.
// ---------------------------------------------------------------------------

async fn full_surface_through_the_proxy(lib: Lib, mode: FaultMode) {
    let st = faulted(mode, "ivy").rewriting_links().stack().await;
    let out = run(
        lib,
        &format!("http://{}", st.proxy.addr),
        &[
            "--identity",
            "ivy",
            "--duplicate",
            "dave",
            "--missing-conversation",
            "--extra",
            "3",
            "--page-size",
            "2",
            "--user",
            "uma",
        ],
    )
    .await;
    let (is, ch) = sids(&out);
    // The affected identity's re-add is a normal participant object.
    assert_participant(ok(&out, "readd"), "ivy", &is, &ch);
    // Twilio's own errors come through as the same exceptions.
    assert_error(lib, &out, "readd_again", 409, 50433);
    assert_error(lib, &out, "duplicate", 409, 50433);
    assert_create_20404(lib, &out, "missing_conversation", &is, MISSING_CONVERSATION);
    // Pagination across three pages, all on the proxy.
    let mut listed: Vec<&str> = ok(&out, "list")
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["identity"].as_str().unwrap())
        .collect();
    listed.sort();
    assert_eq!(listed, ["dave", "extra-0", "extra-1", "extra-2", "ivy"]);
    assert_participant(ok(&out, "fetch"), "ivy", &is, &ch);
    // Users: create, update, fetch, delete; participant update.
    assert_eq!(ok(&out, "user_create")["friendly_name"], "SDK User");
    assert_eq!(ok(&out, "user_update")["friendly_name"], "Renamed User");
    let fetched = ok(&out, "user_fetch");
    assert_eq!(fetched["identity"], "uma");
    assert_eq!(fetched["friendly_name"], "Renamed User");
    assert_eq!(fetched["attributes"], r#"{"tier":1}"#);
    assert_eq!(
        ok(&out, "participant_update")["attributes"],
        r#"{"seat":3}"#
    );
    ok(&out, "user_delete");

    let log = request_log(&st.emu).await;
    let from_lib = from_library(&log, lib);
    assert!(from_lib.len() >= 20, "{log:#?}");
    // Every library request went through the proxy: forwarded ones carry
    // its Via, its replays of a create the repair-marked Via.
    assert!(from_lib.iter().all(|r| r.via.is_some()), "{log:#?}");
    assert!(
        log.iter()
            .filter(|r| r.via.as_deref() == Some("1.1 twilio-repair-proxy (repair)"))
            .all(|r| r.user_agent.starts_with("twilio-repair-proxy/")
                || (r.method == "POST" && r.path.ends_with("/Participants"))),
        "{log:#?}"
    );
    let user_deletes = count(&log, "DELETE", "/Users/US");
    match mode {
        FaultMode::Block => assert_eq!(user_deletes, 1, "{log:#?}"),
        _ => assert_eq!(user_deletes, 0, "{log:#?}"),
    }
    st.proxy.stop().await;
}

#[tokio::test]
async fn python_full_surface_through_the_proxy_ghost_mode() {
    full_surface_through_the_proxy(Lib::Python, FaultMode::Ghost).await;
}

#[tokio::test]
async fn python_full_surface_through_the_proxy_block_mode() {
    full_surface_through_the_proxy(Lib::Python, FaultMode::Block).await;
}

#[tokio::test]
async fn node_full_surface_through_the_proxy_ghost_mode() {
    full_surface_through_the_proxy(Lib::Node, FaultMode::Ghost).await;
}

#[tokio::test]
async fn node_full_surface_through_the_proxy_block_mode() {
    full_surface_through_the_proxy(Lib::Node, FaultMode::Block).await;
}
