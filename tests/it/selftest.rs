//! `selftest` (the binary) against the emulator: it passes and leaves no
//! service behind (nor touches one it did not make); with the emulator
//! dropping a User's `RoleSid` or a participant's attributes it fails
//! naming the field and still deletes its service, as when Twilio refuses
//! the repair's delete or a SIGINT cuts the run mid-repair; a wrong token
//! ends with one line and makes nothing; `--keep` keeps the service.

use std::process::Output;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

const KEY: &str = "SKbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const SECRET: &str = "emulator-key-secret";

/// Run `selftest` against `emu` with the account's credential, for a
/// repair that cannot succeed: it keeps trying until its deadline, so a
/// short one (2 s).
async fn selftest_failing_repair(emu: &Emu) -> Output {
    let mut env = ACCOUNT_ENV.to_vec();
    env.push(("TRP_REPAIR_WORKFLOW_DEADLINE_MS", "2000"));
    selftest(emu, &[], &env).await
}

/// Run `selftest` against `emu` with `env` (and no repair credential or
/// other TWILIO_* setting from the outer environment).
async fn selftest(emu: &Emu, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(bin());
    cmd.arg("selftest")
        .arg("--base-url")
        .arg(emu.origin())
        .args(args)
        .env("NO_PROXY", "127.0.0.1")
        .env("TRP_REPAIR_RETRY_INITIAL_BACKOFF_MS", "10")
        .env("TRP_REPAIR_RETRY_MAX_BACKOFF_MS", "50");
    for k in [
        "TWILIO_ACCOUNT_SID",
        "TWILIO_AUTH_TOKEN",
        "TWILIO_API_KEY",
        "TWILIO_API_SECRET",
        "TRP_REPAIR_API_KEY_SID",
        "TRP_REPAIR_API_KEY_SECRET",
        "TRP_REPAIR_ACCOUNT_SID",
        "TRP_CONFIG",
        "TRP_SELFTEST_WEBHOOK_ENABLED",
    ] {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    // A guard against a hang only; nothing here is timed.
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("selftest did not end within 60 s")
        .unwrap()
}

const ACCOUNT_ENV: [(&str, &str); 2] = [
    ("TWILIO_ACCOUNT_SID", ACCOUNT),
    ("TWILIO_AUTH_TOKEN", TOKEN),
];

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The line of `step` in the report (the first one).
fn line<'a>(out: &'a str, step: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(&format!("{step} ")))
        .unwrap_or_else(|| panic!("no `{step}` line in:\n{out}"))
}

async fn set_fault(emu: &Emu, fault: Value) {
    let r = emu
        .http
        .put(emu.url("/__emulator/fault"))
        .json(&fault)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

#[tokio::test]
async fn selftest_passes_against_the_emulator_and_leaves_no_service_behind() {
    let emu = start_emulator(|c| {
        c.api_key_sid = Some(KEY.into());
        c.api_key_secret = Some(SECRET.into());
    })
    .await;
    // A service it did not make, with a User in it: never touched.
    let theirs = emu.service().await;
    let (s, v) = emu
        .post(
            &format!("/v1/Services/{theirs}/Users"),
            &[("Identity", "bystander")],
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let before = service_names(&emu).await;
    emu.clear_requests().await;

    // The caller: the account's token; the repair steps: the operator key,
    // as in the proxy.
    let mut env = ACCOUNT_ENV.to_vec();
    env.extend([
        ("TRP_REPAIR_API_KEY_SID", KEY),
        ("TRP_REPAIR_API_KEY_SECRET", SECRET),
        ("TRP_REPAIR_ACCOUNT_SID", ACCOUNT),
    ]);
    let out = selftest(&emu, &[], &env).await;
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    for l in text.lines().filter(|l| !l.starts_with("selftest ")) {
        assert!(l.contains(" ok "), "a step did not hold: {l}\n{text}");
    }
    for step in [
        "create service",
        "read roles",
        "create user",
        "remove participant",
        "repair",
        "check user",
        "check membership",
        "check participant",
        "check webhook header",
        "delete service",
    ] {
        line(&text, step);
    }
    assert!(line(&text, "repair").contains(KEY), "{text}");
    assert!(line(&text, "check credential").contains(KEY), "{text}");
    assert!(text.contains("selftest passed"), "{text}");
    assert!(
        line(&text, "create user").contains("[RQ"),
        "Twilio's request id: {text}"
    );

    let log = emu.log_json().await;
    // No service left; the other one as it was.
    assert_eq!(service_names(&emu).await, before);
    let (s, _) = emu
        .get(&format!("/v1/Services/{theirs}/Users/bystander"))
        .await;
    assert_eq!(s, 200);
    let mine = text
        .split_whitespace()
        .find(|w| w.starts_with("IS"))
        .unwrap()
        .to_string();
    for r in &log {
        let path = r["path"].as_str().unwrap();
        assert!(
            !path.contains(&theirs),
            "touched a service it did not make: {path}"
        );
        if r["method"] != "GET" && path != "/v1/Services" {
            assert!(path.starts_with(&format!("/v1/Services/{mine}")), "{path}");
        }
    }
    // The repair (the operator key's calls) sent the webhook choice on
    // every write, on the wire; its User delete was one, by SID.
    let repair_writes: Vec<&Value> = log
        .iter()
        .filter(|r| r["auth_user"] == KEY && r["method"] != "GET")
        .collect();
    assert!(repair_writes.len() >= 3, "{log:#?}");
    for r in &repair_writes {
        assert_eq!(r["headers"]["x-twilio-webhook-enabled"], "false", "{r}");
    }
    let deletes: Vec<&&Value> = repair_writes
        .iter()
        .filter(|r| r["method"] == "DELETE")
        .collect();
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert!(deletes[0]["path"].as_str().unwrap().contains("/Users/US"));
}

#[tokio::test]
async fn a_dropped_user_role_fails_naming_role_sid_and_still_cleans_up() {
    let emu = start_emulator(|_| {}).await;
    set_fault(&emu, json!({"mode": "off", "drop_user_role_sid": true})).await;
    let out = selftest(&emu, &[], &ACCOUNT_ENV).await;
    let text = stdout(&out);
    assert!(!out.status.success(), "{text}");
    let user = line(&text, "create user");
    assert!(
        user.contains("FAILED") && user.contains("role_sid"),
        "{text}"
    );
    assert!(line(&text, "delete service").contains(" ok "), "{text}");
    assert!(text.contains("selftest FAILED"), "{text}");
    assert_eq!(
        service_names(&emu).await,
        [twilio_emulator::DEFAULT_SERVICE_NAME]
    );
}

#[tokio::test]
async fn lost_participant_attributes_fail_naming_attributes_and_still_clean_up() {
    let emu = start_emulator(|_| {}).await;
    set_fault(
        &emu,
        json!({"mode": "off", "lose_participant_attributes": true}),
    )
    .await;
    let out = selftest(&emu, &["--json"], &ACCOUNT_ENV).await;
    assert!(!out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!(report["ok"], false);
    assert_eq!(report["cleaned_up"], true, "{report:#}");
    let failed: Vec<&Value> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .collect();
    assert!(!failed.is_empty(), "{report:#}");
    assert!(
        failed[0]["detail"].as_str().unwrap().contains("attributes"),
        "{report:#}"
    );
    assert!(failed[0]["request_id"].as_str().unwrap().starts_with("RQ"));
    assert_eq!(
        service_names(&emu).await,
        [twilio_emulator::DEFAULT_SERVICE_NAME]
    );
}

#[tokio::test]
async fn a_repair_twilio_refuses_fails_on_the_repair_line_and_still_cleans_up() {
    let emu = start_emulator(|_| {}).await;
    // The User's delete is refused (a key without the permission, say):
    // the scene is made, the repair is not.
    emu.add_rule(json!({"method": "DELETE", "path": "/Users/US",
        "action": {"kind": "status", "status": 403, "code": 20003, "message": "Forbidden"}}))
        .await;
    let out = selftest_failing_repair(&emu).await;
    let text = stdout(&out);
    assert!(!out.status.success(), "{text}");
    assert!(line(&text, "create user").contains(" ok "), "{text}");
    let repair = line(&text, "repair");
    assert!(
        repair.contains("FAILED") && repair.contains("403"),
        "{text}"
    );
    assert!(
        line(&text, "check user").contains("still the original User"),
        "{text}"
    );
    let refused = line(&text, "check credential");
    assert!(
        refused.contains("FAILED") && refused.contains("/Users/US"),
        "{text}"
    );
    assert!(line(&text, "delete service").contains(" ok "), "{text}");
    assert_eq!(
        service_names(&emu).await,
        [twilio_emulator::DEFAULT_SERVICE_NAME]
    );
}

#[tokio::test]
async fn an_interrupted_selftest_still_deletes_its_service() {
    let emu = start_emulator(|_| {}).await;
    // The repair's User delete is parked: the run is mid-repair when the
    // signal comes.
    emu.add_rule(json!({"method": "DELETE", "path": "/Users/US",
        "action": {"kind": "hold", "process_on_release": false}}))
        .await;
    interrupted_while_held(&emu, false).await;
}

/// SIGINT while the service create itself is held at Twilio (before the
/// signal handlers were first polled, the signal ended the process and the
/// service it was making stayed behind, unsaid): the create finishes, the
/// run ends with its report, and the service is deleted.
#[tokio::test]
async fn a_signal_during_the_service_create_still_deletes_the_service() {
    let emu = start_emulator(|_| {}).await;
    emu.add_rule(json!({"method": "POST", "path": "^/v1/Services$",
        "action": {"kind": "hold", "process_on_release": true}}))
        .await;
    interrupted_while_held(&emu, true).await;
}

/// Start a selftest, wait until a request of it is held at the emulator,
/// send SIGINT (then release the held request when `release`), and check
/// the run ended with `interrupted` and its service deleted.
async fn interrupted_while_held(emu: &Emu, release: bool) {
    let mut cmd = tokio::process::Command::new(bin());
    cmd.arg("selftest")
        .arg("--base-url")
        .arg(emu.origin())
        .env("NO_PROXY", "127.0.0.1")
        .env_remove("TRP_REPAIR_API_KEY_SID")
        .env_remove("TRP_REPAIR_API_KEY_SECRET")
        .env_remove("TRP_CONFIG")
        .env("TWILIO_ACCOUNT_SID", ACCOUNT)
        .env("TWILIO_AUTH_TOKEN", TOKEN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    let pid = child.id().unwrap();
    // An event (at most 10 s): the selftest's request is held.
    emu.wait_held(1).await;
    let sent = std::process::Command::new("kill")
        .arg("-INT")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(sent.success());
    if release {
        emu.release(None).await;
    }
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("selftest did not end after SIGINT")
        .unwrap();
    let text = stdout(&out);
    assert!(!out.status.success(), "{text}");
    assert!(line(&text, "interrupted").contains("FAILED"), "{text}");
    assert!(line(&text, "delete service").contains(" ok "), "{text}");
    assert_eq!(
        service_names(emu).await,
        [twilio_emulator::DEFAULT_SERVICE_NAME]
    );
}

#[tokio::test]
async fn a_wrong_token_ends_with_one_line_naming_it_and_makes_nothing() {
    let emu = start_emulator(|_| {}).await;
    let out = selftest(
        &emu,
        &[],
        &[
            ("TWILIO_ACCOUNT_SID", ACCOUNT),
            ("TWILIO_AUTH_TOKEN", "not-the-token"),
        ],
    )
    .await;
    assert!(!out.status.success());
    assert_eq!(stdout(&out), "", "no report");
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(ACCOUNT) && err.contains("TWILIO_AUTH_TOKEN") && err.contains("401"),
        "{err}"
    );
    assert!(!err.contains("not-the-token"), "the secret: {err}");
    assert_eq!(
        service_names(&emu).await,
        [twilio_emulator::DEFAULT_SERVICE_NAME]
    );
    // One write, the refused create.
    let writes: Vec<(String, String)> = emu
        .requests()
        .await
        .into_iter()
        .filter(|(m, _)| m != "GET")
        .collect();
    assert_eq!(writes, [("POST".to_string(), "/v1/Services".to_string())]);
}

#[tokio::test]
async fn keep_leaves_the_service_and_what_is_in_it() {
    let emu = start_emulator(|_| {}).await;
    let out = selftest(
        &emu,
        &["--keep", "--json", "--webhook-enabled", "true"],
        &ACCOUNT_ENV,
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["kept"], true);
    assert_eq!(report["cleaned_up"], false);
    let is = report["service_sid"].as_str().unwrap();
    let (s, v) = emu.get(&format!("/v1/Services/{is}")).await;
    assert_eq!(s, 200);
    assert!(
        v["friendly_name"]
            .as_str()
            .unwrap()
            .starts_with("trp-selftest "),
        "{v}"
    );
    let (_, users) = emu.get(&format!("/v1/Services/{is}/Users")).await;
    assert_eq!(users["users"].as_array().unwrap().len(), 1, "{users}");
    // The webhook choice, as configured, on the repair's writes.
    let webhook = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["step"] == "check webhook header")
        .unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        webhook.contains("X-Twilio-Webhook-Enabled: true"),
        "{webhook}"
    );
}

/// A service create with no clear answer (a 503 here; a timeout or a cut
/// connection alike) may have landed: the selftest never says "nothing was
/// created" then, and names the service to look for.
#[tokio::test]
async fn an_unclear_service_create_names_the_service_it_may_have_made() {
    let emu = start_emulator(|_| {}).await;
    emu.add_rule(json!({"method": "POST", "path": "^/v1/Services$",
        "action": {"kind": "status", "status": 503}}))
        .await;
    let out = selftest(&emu, &[], &ACCOUNT_ENV).await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("may have been created") && err.contains("\"trp-selftest "),
        "{err}"
    );
    assert!(!err.contains("nothing was created"), "{err}");
}

/// What the report says the repair sent is what Twilio received, call for
/// call: each call the repair's client recorded (its tap, at the layer
/// that sends) is in the emulator's log under its request id with the
/// same method, path, credential, `X-Twilio-Webhook-Enabled` and `Via`;
/// and every call the emulator saw marked as the repair's is among them.
/// With `add_forwarded_headers` on, the repair's own client (as the proxy
/// builds it) marks each of its calls with `Via`.
#[tokio::test]
async fn the_repair_calls_reported_are_what_the_emulator_received() {
    let emu = start_emulator(|c| {
        c.api_key_sid = Some(KEY.into());
        c.api_key_secret = Some(SECRET.into());
    })
    .await;
    let mut env = ACCOUNT_ENV.to_vec();
    env.extend([
        ("TRP_REPAIR_API_KEY_SID", KEY),
        ("TRP_REPAIR_API_KEY_SECRET", SECRET),
        ("TRP_REPAIR_ACCOUNT_SID", ACCOUNT),
        ("TRP_ADD_FORWARDED_HEADERS", "true"),
        // The shield's per-account cap on, as `serve` would build it: the
        // repair's calls go through it (its calls are one at a time, so
        // this shows the capped client works, not that it caps).
        ("TRP_SHIELD_MAX_CONCURRENT_PER_ACCOUNT", "1"),
    ]);
    let out = selftest(&emu, &["--json", "--webhook-enabled", "true"], &env).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    let calls = report["repair_calls"].as_array().unwrap();
    assert!(calls.len() >= 8, "{report:#}");
    let log = emu.log_json().await;
    let mark = "1.1 twilio-repair-proxy (repair)";
    for c in calls {
        let rq = c["request_id"].as_str().expect("every call answered");
        let seen = log
            .iter()
            .find(|r| r["request_id"] == rq)
            .unwrap_or_else(|| panic!("{c} never reached the emulator"));
        assert_eq!(seen["method"], c["method"], "{c} vs {seen}");
        assert_eq!(seen["path"], c["path"], "{c} vs {seen}");
        assert_eq!(seen["auth_user"], c["user"], "{c} vs {seen}");
        assert_eq!(seen["status"], c["status"], "{c} vs {seen}");
        assert_eq!(
            seen["headers"].get("x-twilio-webhook-enabled"),
            c.get("webhook").filter(|w| !w.is_null()),
            "{c} vs {seen}"
        );
        assert_eq!(seen["headers"]["via"], mark, "{c} vs {seen}");
        assert_eq!(c["via"], mark, "{c}");
        if c["method"] != "GET" {
            assert_eq!(c["webhook"], "true", "{c}");
        }
    }
    // The other way round: every call Twilio saw with the repair's mark.
    let marked = log
        .iter()
        .filter(|r| r["headers"]["via"].as_str() == Some(mark))
        .count();
    assert_eq!(marked, calls.len(), "{log:#?}");
    // Both credentials acted, as in the proxy: the caller's reads, the
    // operator key's repair steps.
    let users: std::collections::BTreeSet<&str> =
        calls.iter().map(|c| c["user"].as_str().unwrap()).collect();
    assert!(users.contains(KEY), "{users:?}");
}

/// The service DELETE of a run, as the emulator's fault rules match it.
const SERVICE_DELETE: &str = "^/v1/Services/IS[0-9a-fA-F]{32}$";

/// A transient failure of the service's delete (a 503 once) is retried
/// with the repair's backoff: the service is gone and the report says so.
#[tokio::test]
async fn a_service_delete_that_fails_once_is_retried_and_the_service_is_gone() {
    let emu = start_emulator(|_| {}).await;
    emu.add_rule(
        json!({"method": "DELETE", "path": SERVICE_DELETE, "times": 1,
        "action": {"kind": "status", "status": 503}}),
    )
    .await;
    let out = selftest(&emu, &[], &ACCOUNT_ENV).await;
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    let deleted = line(&text, "delete service");
    assert!(
        deleted.contains(" ok ") && deleted.contains("after 2 attempts"),
        "{text}"
    );
    let statuses: Vec<Value> = emu
        .log_json()
        .await
        .into_iter()
        .filter(|r| {
            r["method"] == "DELETE"
                && r["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("/v1/Services/IS") && p.split('/').count() == 4)
        })
        .map(|r| r["status"].clone())
        .collect();
    assert_eq!(statuses, [json!(503), json!(204)]);
    assert_eq!(
        service_names(&emu).await,
        [twilio_emulator::DEFAULT_SERVICE_NAME]
    );
}

/// A delete that keeps failing is retried up to the repair's attempts,
/// then the report says "not deleted" and names the service to delete.
#[tokio::test]
async fn a_service_delete_that_keeps_failing_names_the_service_left_behind() {
    let emu = start_emulator(|_| {}).await;
    emu.add_rule(json!({"method": "DELETE", "path": SERVICE_DELETE,
        "action": {"kind": "status", "status": 503}}))
        .await;
    let mut env = ACCOUNT_ENV.to_vec();
    env.push(("TRP_REPAIR_RETRY_MAX_ATTEMPTS", "3"));
    let out = selftest(&emu, &["--json"], &env).await;
    assert!(!out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!(report["cleaned_up"], false, "{report:#}");
    let is = report["service_sid"].as_str().unwrap();
    let name = report["service_name"].as_str().unwrap();
    let check = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["step"] == "delete service")
        .unwrap();
    let detail = check["detail"].as_str().unwrap();
    assert_eq!(check["ok"], false, "{check}");
    assert!(
        detail.contains("not deleted")
            && detail.contains(is)
            && detail.contains(name)
            && detail.contains("503")
            && detail.contains("after 3 attempts"),
        "{detail}"
    );
    let deletes = emu
        .requests()
        .await
        .into_iter()
        .filter(|(m, p)| m == "DELETE" && *p == format!("/v1/Services/{is}"))
        .count();
    assert_eq!(deletes, 3);
    let (s, _) = emu.get(&format!("/v1/Services/{is}")).await;
    assert_eq!(s, 200, "the service is still there, as the report says");
}

/// `--base-url` passes the check every upstream setting passes (an
/// origin: http or https, a host, no user name or password, no path): a
/// bad one ends with one line naming it, before any call.
#[tokio::test]
async fn a_base_url_that_is_no_origin_ends_with_one_line_before_any_call() {
    let emu = start_emulator(|_| {}).await;
    let port = emu.origin().rsplit(':').next().unwrap().to_string();
    for (bad, why) in [
        (format!("http://127.0.0.1:{port}/v1"), "without a path"),
        (
            format!("http://{ACCOUNT}:{TOKEN}@127.0.0.1:{port}"),
            "user name or password",
        ),
        (format!("ftp://127.0.0.1:{port}"), "http or https"),
    ] {
        let out = tokio::process::Command::new(bin())
            .args(["selftest", "--base-url", &bad])
            .env("NO_PROXY", "127.0.0.1")
            .env_remove("TRP_CONFIG")
            .env_remove("TRP_REPAIR_API_KEY_SID")
            .env_remove("TRP_REPAIR_API_KEY_SECRET")
            .envs(ACCOUNT_ENV)
            .output()
            .await
            .unwrap();
        assert!(!out.status.success(), "{bad}");
        assert_eq!(stdout(&out), "", "no report for {bad}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("invalid --base-url") && err.contains(why),
            "{bad}: {err}"
        );
        assert!(!err.contains(TOKEN), "the secret: {err}");
    }
    assert_eq!(emu.requests().await, [], "the emulator saw a call");
}

/// A check that fails *after* the repair: the scene's User keeps its
/// role, the repair's recreate loses it and so does every update that
/// would put it right (the emulator spares the first User write only):
/// the run fails on "check user" naming `role_sid`, and the service is
/// still deleted. (With the role lost on the recreate alone, the repair
/// reads it back and puts it right with an update: the run passes.)
#[tokio::test]
async fn a_role_lost_by_the_repairs_recreate_fails_check_user_and_still_cleans_up() {
    let emu = start_emulator(|_| {}).await;
    set_fault(
        &emu,
        json!({"mode": "off", "drop_user_role_sid": true, "drop_user_role_sid_after": 1}),
    )
    .await;
    let out = selftest_failing_repair(&emu).await;
    let text = stdout(&out);
    assert!(!out.status.success(), "{text}");
    assert!(line(&text, "create user").contains(" ok "), "{text}");
    let check = line(&text, "check user");
    assert!(
        check.contains("FAILED") && check.contains("role_sid"),
        "{text}"
    );
    assert!(line(&text, "delete service").contains(" ok "), "{text}");
    assert!(text.contains("selftest FAILED"), "{text}");
    // The recreate was the repair's: the second User create of the run.
    let creates = emu
        .requests()
        .await
        .into_iter()
        .filter(|(m, p)| m == "POST" && p.ends_with("/Users"))
        .count();
    assert_eq!(creates, 2, "{text}");
    assert_eq!(
        service_names(&emu).await,
        [twilio_emulator::DEFAULT_SERVICE_NAME]
    );
}
