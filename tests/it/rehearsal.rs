//! The check-only rehearsal and `/ui`'s "Ready for repair mode?" panel: a
//! check-only fault gets the plan a repair would have run (and nothing is
//! written); without a repair credential for the account the plan is shown
//! as failing, with why; `POST /selftest` (the admin token) runs the
//! selftest with the repair credential and the panel shows its result. A
//! run is its own task: the proxy's shutdown interrupts it and waits for
//! its service delete, `admin.selftest_deadline_ms` bounds it, a second
//! one meanwhile is a 409, an operator who hangs up leaves it running, and
//! it runs with the repair settings a reload put in force.
//! The rehearsal's reads run after the caller's 404, bounded by
//! `repair.rehearsal_max_in_flight` (skipped and counted beyond it), on a
//! task shutdown waits for; with `repair.incident_identity = "hash"` no
//! text it leaves names the identity.

use std::time::Duration;

use serde_json::{Value, json};
use twilio_repair_proxy::config::{AdminToken, Config, RepairMode};
use twilio_repair_proxy::emulator::FaultMode;

use crate::common::*;

const ADMIN_TOKEN: &str = "rehearsal-admin-token-0123456789";

/// A repair credential file naming the emulator's account.
fn credentials_file() -> std::path::PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    let path = dir.join("repair-credential.toml");
    std::fs::write(
        &path,
        format!("api_key_sid = \"{ACCOUNT}\"\napi_key_secret = \"{TOKEN}\"\naccount_sid = \"{ACCOUNT}\"\n"),
    )
    .unwrap();
    path
}

fn check_only(with_credential: bool) -> impl FnOnce(&mut Config) + Send + 'static {
    move |c| {
        c.repair.mode = RepairMode::CheckOnly;
        c.admin.token = Some(AdminToken::new(ADMIN_TOKEN));
        if with_credential {
            c.repair.credentials_file = Some(credentials_file());
        }
    }
}

async fn ui(st: &Stack) -> String {
    let r = st
        .http
        .get(st.proxy.admin_url("/ui"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// The panel's part of the page.
fn panel(page: &str) -> &str {
    let start = page.find("Ready for repair mode?").expect("the panel");
    let end = page[start..].find("</section>").map(|e| start + e).unwrap();
    &page[start..end]
}

#[tokio::test]
async fn a_check_only_fault_gets_the_plan_it_would_have_run_and_nothing_is_written() {
    let (st, kim) = Scene::new()
        .user("kim")
        .friendly("Kim K")
        .attributes(r#"{"tier":"gold"}"#)
        .member_of_another()
        .armed(FaultMode::Block)
        .proxy(check_only(true))
        .start()
        .await;
    st.emu.clear_requests().await;
    let (status, outcome, _) = st
        .create(kim.is(), kim.target(), &[("Identity", "kim")])
        .await;
    assert_eq!(status, 404);
    assert_eq!(outcome.as_deref(), Some("disabled"));
    let writes: Vec<(String, String)> = st
        .emu
        .requests()
        .await
        .into_iter()
        .filter(|(m, _)| m != "GET")
        .collect();
    assert_eq!(writes.len(), 1, "only the caller's create: {writes:?}");

    until_plans(&st.http, &st.proxy.admin_url("/rehearsals"), 1).await;
    let page = ui(&st).await;
    let p = panel(&page);
    assert!(p.contains("Plans made (check-only)"), "{p}");
    assert!(p.contains("Every plan so far would have completed"), "{p}");
    assert!(p.contains("DELETE the User US"), "{p}");
    assert!(p.contains("restore its 1 membership(s)"), "{p}");
    assert!(p.contains(kim.other()), "the membership to restore: {p}");
    assert!(p.contains(&format!("yes, with {ACCOUNT}")), "{p}");
    assert!(p.contains("Mode now: <strong>check-only"), "{p}");
    assert_rehearsals(
        &st,
        &[("would_complete", 1), ("would_fail", 0), ("skipped", 0)],
    )
    .await;
    // The incident says so too.
    let incidents = admin_json_with(&st, "/incidents").await;
    let detail = incidents["incidents"][0]["detail"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        detail.contains("rehearsed: the repair would complete"),
        "{incidents}"
    );
    st.proxy.stop().await;
}

#[tokio::test]
async fn without_a_repair_credential_the_plan_is_shown_failing_with_why() {
    let (st, kim) = faulty_kim().proxy(check_only(false)).start().await;
    let (status, _, _) = st
        .create(kim.is(), kim.target(), &[("Identity", "kim")])
        .await;
    assert_eq!(status, 404);
    until_plans(&st.http, &st.proxy.admin_url("/rehearsals"), 1).await;
    let page = ui(&st).await;
    let p = panel(&page);
    assert!(p.contains("Not yet: 1 of 1 plans would have failed"), "{p}");
    assert!(
        p.contains(&format!("no repair credential for account {ACCOUNT}")),
        "{p}"
    );
    assert_rehearsals(
        &st,
        &[("would_complete", 0), ("would_fail", 1), ("skipped", 0)],
    )
    .await;
    assert!(
        p.contains("No selftest run through the admin plane yet"),
        "{p}"
    );
    st.proxy.stop().await;
}

#[tokio::test]
async fn post_selftest_runs_with_the_repair_credential_and_the_panel_shows_it() {
    let (st, _) = Scene::new()
        .user("kim")
        .friendly("Kim K")
        .proxy(check_only(true))
        .start()
        .await;
    let before = st.emu.get("/v1/Services?PageSize=100").await.1["services"]
        .as_array()
        .unwrap()
        .len();
    // Not without the token.
    let r = st
        .http
        .post(st.proxy.admin_url("/selftest"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = st
        .http
        .post(st.proxy.admin_url("/selftest"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let report: serde_json::Value = r.json().await.unwrap();
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["cleaned_up"], true);
    let after = st.emu.get("/v1/Services?PageSize=100").await.1["services"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(after, before, "no service left behind");
    let page = ui(&st).await;
    let p = panel(&page);
    assert!(p.contains("Last selftest"), "{p}");
    assert!(p.contains("passed"), "{p}");
    assert!(p.contains("service deleted"), "{p}");
    st.proxy.stop().await;
}

/// `trp_rehearsals_total` by result, as `/metrics` (with the token) shows
/// it once the panel has counted the plans.
async fn assert_rehearsals(st: &Stack, want: &[(&str, u64)]) {
    let text = metrics_with_token(st).await;
    for (result, n) in want {
        let series = format!("trp_rehearsals_total{{result=\"{result}\"}}");
        assert_eq!(sample(&text, &series), Some(*n as f64), "{series}:\n{text}");
    }
}

/// `/metrics` with the admin token (every admin path needs it here).
async fn metrics_with_token(st: &Stack) -> String {
    st.http
        .get(st.proxy.admin_url("/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn admin_json_with(st: &Stack, path: &str) -> serde_json::Value {
    st.http
        .get(st.proxy.admin_url(path))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The throwaway services left on the emulator's account.
async fn selftest_services(emu: &Emu) -> Vec<String> {
    let mut names = service_names(emu).await;
    names.retain(|n| n.starts_with("trp-selftest"));
    names
}

/// Hold the selftest's first scene call (its roles read, right after the
/// service create) at the emulator, once; `process` on release or not.
async fn hold_the_roles_read(emu: &Emu, process: bool) {
    emu.add_rule(json!({"method": "GET", "path": "/Roles", "times": 1,
        "action": {"kind": "hold", "process_on_release": process}}))
        .await;
}

/// `POST /selftest` in the background, once its roles read is held at the
/// emulator (processed on release); its status and JSON body.
async fn post_selftest_held(st: &Stack) -> tokio::task::JoinHandle<(u16, Value)> {
    hold_the_roles_read(&st.emu, true).await;
    let (http, admin) = (st.http.clone(), st.proxy.admin.to_string());
    let run = tokio::spawn(async move { post_selftest(&http, &admin).await });
    st.emu.wait_held(1).await;
    run
}

/// `POST /selftest` with the token: status and JSON body.
async fn post_selftest(http: &reqwest::Client, admin: &str) -> (u16, Value) {
    let r = http
        .post(format!("http://{admin}/selftest"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn check<'a>(report: &'a Value, step: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["step"] == step)
        .unwrap_or_else(|| panic!("no `{step}` check in {report:#}"))
}

/// Wait (at most 10 s) until the emulator has seen `method` on a path
/// starting with `prefix`.
async fn until_seen(emu: &Emu, method: &str, prefix: &str) -> bool {
    for _ in 0..500 {
        if emu
            .requests()
            .await
            .iter()
            .any(|(m, p)| m == method && p.starts_with(prefix))
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// The proxy binary in check-only mode in front of `emu`, with the admin
/// token and the repair credential (plus `extra`).
async fn spawn_check_only(emu: &Emu, extra: &[(&str, &str)]) -> Running {
    let mut env = vec![
        ("TRP_REPAIR_MODE", "check-only"),
        ("TRP_ADMIN_TOKEN", ADMIN_TOKEN),
        ("TRP_REPAIR_API_KEY_SID", ACCOUNT),
        ("TRP_REPAIR_API_KEY_SECRET", TOKEN),
        ("TRP_REPAIR_ACCOUNT_SID", ACCOUNT),
    ];
    env.extend_from_slice(extra);
    spawn_proxy(&emu.origin(), &env).await
}

/// Wait (at most 30 s) for the process to exit; its status.
async fn until_exited(proxy: &mut Running) -> std::process::ExitStatus {
    for _ in 0..1500 {
        if let Some(status) = proxy.child.try_wait().unwrap() {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the proxy did not exit after SIGTERM:\n{}", proxy.stderr());
}

/// SIGTERM while a `POST /selftest` is mid-run (a call of it held at
/// Twilio): the run is interrupted at once (its service delete reaches
/// Twilio while the call is still held), the process exits cleanly only
/// after that delete, and no throwaway service is left on the account.
/// Without the shutdown owning the run, the process exited with the
/// service behind (`hung_up`), or waited on the held call.
async fn sigterm_mid_selftest(hung_up: bool) {
    let emu = start_emulator(|_| {}).await;
    let mut proxy = spawn_check_only(&emu, &[]).await;
    hold_the_roles_read(&emu, false).await;
    let admin = proxy.admin.clone();
    let operator =
        tokio::spawn(async move { post_selftest(&reqwest::Client::new(), &admin).await });
    emu.wait_held(1).await;
    assert_eq!(
        selftest_services(&emu).await.len(),
        1,
        "the run made its service"
    );
    let operator = if hung_up {
        operator.abort();
        let _ = operator.await;
        None
    } else {
        Some(operator)
    };
    proxy.signal("TERM");
    assert!(
        until_seen(&emu, "DELETE", "/v1/Services/IS").await,
        "the run was not interrupted: no service delete while its call is held\n{}",
        proxy.stderr()
    );
    emu.release(None).await;
    let status = until_exited(&mut proxy).await;
    assert!(status.success(), "{status}\n{}", proxy.stderr());
    assert_eq!(selftest_services(&emu).await, Vec::<String>::new());
    if let Some(operator) = operator {
        let (status, report) = operator.await.unwrap();
        assert_eq!(status, 200, "{report}");
        assert_eq!(report["ok"], false, "{report:#}");
        assert_eq!(report["cleaned_up"], true, "{report:#}");
        let line = check(&report, "interrupted");
        assert!(
            line["detail"].as_str().unwrap().contains("signal"),
            "{line}"
        );
    }
}

/// Shutdown's grace runs out while the interrupted run's service delete
/// is still held at Twilio: the operator is answered at once (503, the log
/// names the service to delete), not left to the admin server's own drain,
/// and the process exits.
#[tokio::test]
async fn a_selftest_delete_outlasting_the_grace_is_answered_503_and_the_log_names_the_service() {
    let emu = start_emulator(|_| {}).await;
    let mut proxy = spawn_check_only(&emu, &[("TRP_LIMITS_SHUTDOWN_GRACE_MS", "300")]).await;
    hold_the_roles_read(&emu, false).await;
    emu.add_rule(
        json!({"method": "DELETE", "path": "^/v1/Services/IS[0-9a-f]+$",
        "action": {"kind": "hold", "process_on_release": true}}),
    )
    .await;
    let admin = proxy.admin.clone();
    let operator =
        tokio::spawn(async move { post_selftest(&reqwest::Client::new(), &admin).await });
    emu.wait_held(1).await;
    proxy.signal("TERM");
    // The interrupted run's delete, held: the grace runs out meanwhile.
    emu.wait_held(2).await;
    let (status, body) = operator.await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("see its log"),
        "{body}"
    );
    let exit = until_exited(&mut proxy).await;
    assert!(exit.success(), "{exit}\n{}", proxy.stderr());
    let log = proxy.stderr();
    assert!(
        log.contains("look for a Conversations service named"),
        "{log}"
    );
    // The log names the service itself.
    let (status, services) = emu.get("/v1/Services?PageSize=100").await;
    assert_eq!(status, 200);
    let sid = services["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| {
            s["friendly_name"]
                .as_str()
                .unwrap()
                .starts_with("trp-selftest")
        })
        .and_then(|s| s["sid"].as_str())
        .unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("selftest: throwaway service created") && l.contains(sid)),
        "{log}"
    );
    emu.release(None).await;
}

#[tokio::test]
async fn sigterm_mid_post_selftest_interrupts_it_and_deletes_its_service_before_exit() {
    sigterm_mid_selftest(false).await;
}

#[tokio::test]
async fn sigterm_mid_post_selftest_whose_operator_hung_up_still_deletes_its_service() {
    sigterm_mid_selftest(true).await;
}

/// A run past `admin.selftest_deadline_ms` (its roles read held at Twilio)
/// is interrupted: the report says so, with `ok: false`, and the service
/// is still deleted.
#[tokio::test]
async fn a_post_selftest_past_its_deadline_is_interrupted_and_deletes_its_service() {
    let st = Scene::new()
        .proxy(|c| {
            check_only(true)(c);
            c.admin.selftest_deadline_ms = 300;
        })
        .stack()
        .await;
    hold_the_roles_read(&st.emu, false).await;
    let (status, report) = post_selftest(&st.http, &st.proxy.admin.to_string()).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["ok"], false, "{report:#}");
    let line = check(&report, "interrupted");
    assert_eq!(line["ok"], false);
    assert!(
        line["detail"]
            .as_str()
            .unwrap()
            .contains("admin.selftest_deadline_ms"),
        "{line}"
    );
    assert_eq!(report["cleaned_up"], true, "{report:#}");
    assert_eq!(check(&report, "delete service")["ok"], true);
    assert_eq!(selftest_services(&st.emu).await, Vec::<String>::new());
    st.emu.release(None).await;
    st.proxy.stop().await;
}

/// A second `POST /selftest` while one runs (held at Twilio) is a 409 in
/// the admin plane's JSON shape; the first's report is whole.
#[tokio::test]
async fn a_second_post_selftest_while_one_runs_is_409_and_the_first_is_unaffected() {
    let st = Scene::new().proxy(check_only(true)).stack().await;
    let first = post_selftest_held(&st).await;
    let (status, body) = post_selftest(&st.http, &st.proxy.admin.to_string()).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["status"], 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("running already"),
        "{body}"
    );
    st.emu.release(None).await;
    let (status, report) = first.await.unwrap();
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["cleaned_up"], true, "{report:#}");
    assert_eq!(selftest_services(&st.emu).await, Vec::<String>::new());
    st.proxy.stop().await;
}

/// `POST /selftest`'s repair is the proxy's: its calls take their slots
/// from the running proxy's 429 shield, beside live traffic of the same
/// account. With the cap at 1 and a live request holding that slot, the
/// repair waits in the cap's line (the proxy's own gauge shows it) and runs
/// once the live request ends.
#[tokio::test]
async fn post_selftest_takes_its_slots_from_the_proxys_live_shield() {
    let st = Scene::new()
        .proxy(|c| {
            check_only(true)(c);
            c.shield.max_concurrent_per_account = 1;
        })
        .stack()
        .await;
    // A live request of the account, held at Twilio: it holds the slot.
    st.emu
        .add_rule(
            json!({"method": "GET", "path": "/v1/Configuration$", "times": 1,
            "action": {"kind": "hold", "process_on_release": true}}),
        )
        .await;
    let live = {
        let (http, url) = (st.http.clone(), st.proxy.url("/v1/Configuration"));
        tokio::spawn(async move {
            http.get(url)
                .basic_auth(ACCOUNT, Some(TOKEN))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    st.emu.wait_held(1).await;
    let (http, admin) = (st.http.clone(), st.proxy.admin.to_string());
    let run = tokio::spawn(async move { post_selftest(&http, &admin).await });
    // The repair's first call waits for the live request's slot.
    let series = "trp_shield_queue_length{class=\"account\"}";
    let mut text = String::new();
    for _ in 0..500 {
        text = metrics_with_token(&st).await;
        if sample(&text, series) == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sample(&text, series), Some(1.0), "{text}");
    assert!(!run.is_finished(), "the repair waits for the slot");
    st.emu.release(None).await;
    assert_eq!(live.await.unwrap(), 200);
    let (status, report) = run.await.unwrap();
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(selftest_services(&st.emu).await, Vec::<String>::new());
    st.proxy.stop().await;
}

/// An operator who hangs up mid-run: the run goes on to the end, deletes
/// its service, and the panel shows its report.
#[tokio::test]
async fn an_operator_who_hangs_up_leaves_the_selftest_running_and_the_panel_keeps_it() {
    let st = Scene::new().proxy(check_only(true)).stack().await;
    let operator = post_selftest_held(&st).await;
    operator.abort();
    let _ = operator.await;
    st.emu.release(None).await;
    let mut shown = String::new();
    for _ in 0..500 {
        shown = panel(&ui(&st).await).to_string();
        if shown.contains("Last selftest") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(shown.contains("Last selftest"), "{shown}");
    assert!(shown.contains("passed"), "{shown}");
    assert!(shown.contains("service deleted"), "{shown}");
    assert_eq!(selftest_services(&st.emu).await, Vec::<String>::new());
    st.proxy.stop().await;
}

/// `POST /selftest` runs with the repair settings in force, a reload's
/// included: started with `repair.max_repairs_per_window = 0` (no repair
/// may run: the selftest's repair is refused), reloaded to 3, it passes;
/// reloaded to `repair.mode = "off"`, it is refused (503).
#[tokio::test]
async fn post_selftest_runs_with_the_repair_settings_a_reload_put_in_force() {
    let emu = start_emulator(|_| {}).await;
    let dir = tempfile::tempdir().unwrap().keep();
    let file = dir.join("proxy.toml");
    let write = |mode: &str, budget: u32| {
        let tmp = file.with_extension("new");
        std::fs::write(
            &tmp,
            format!(
                "[admin]\ntoken = \"{ADMIN_TOKEN}\"\n[repair]\nmode = \"{mode}\"\nmax_repairs_per_window = {budget}\n"
            ),
        )
        .unwrap();
        std::fs::rename(&tmp, &file).unwrap();
    };
    write("check-only", 0);
    // The mode from the file alone (no TRP_REPAIR_MODE), so a reload sets it.
    let proxy = spawn_proxy(
        &emu.origin(),
        &[
            ("TRP_CONFIG", file.to_str().unwrap()),
            ("TRP_REPAIR_API_KEY_SID", ACCOUNT),
            ("TRP_REPAIR_API_KEY_SECRET", TOKEN),
            ("TRP_REPAIR_ACCOUNT_SID", ACCOUNT),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let (status, report) = post_selftest(&http, &proxy.admin).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["ok"], false, "{report:#}");
    let repair = check(&report, "repair");
    assert!(
        repair["detail"]
            .as_str()
            .unwrap()
            .contains("repair limit reached"),
        "{repair}"
    );

    write("check-only", 3);
    proxy.signal("HUP");
    let log = proxy.log_with("configuration reloaded").await;
    assert!(log.contains("configuration reloaded"), "{log}");
    let (status, report) = post_selftest(&http, &proxy.admin).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(selftest_services(&emu).await, Vec::<String>::new());

    // Reloaded to off: no selftest, as when it started off.
    write("off", 3);
    let mut page = String::new();
    for _ in 0..500 {
        page = http
            .get(format!("http://{}/ui", proxy.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if page.contains("Mode now: <strong>off") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(page.contains("Mode now: <strong>off"), "{}", panel(&page));
    let (status, body) = post_selftest(&http, &proxy.admin).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("repair is off"),
        "{body}"
    );
    // The panel's JSON as when the proxy started off.
    let r = http
        .get(format!("http://{}/rehearsals", proxy.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
}

/// The panel's figures (`GET /rehearsals`) once `plans_made` reaches `n`
/// (an event, waited for at most 20 s; then whatever they are).
async fn until_plans(http: &reqwest::Client, admin_url: &str, n: u64) -> serde_json::Value {
    let mut v = serde_json::Value::Null;
    for _ in 0..2000 {
        v = http
            .get(admin_url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["rehearsals"]["plans_made"].as_u64() >= Some(n) {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("fewer than {n} plans after 20 s: {v:#}");
}

/// The user read a rehearsal's snapshot starts with.
const USER_READ: &str = "/Users/[^/]+$";

/// A check-only rehearsal's reads run after the caller is answered: with
/// the snapshot's user read held at Twilio, the caller (over a socket) has
/// its 404 while the read is still held; once released, the panel shows
/// the plan and the incident the rehearsal's result and reads.
#[tokio::test]
async fn the_caller_has_its_404_while_the_rehearsals_read_is_still_held() {
    let (st, kim) = faulty_kim().proxy(check_only(true)).start().await;
    let rule = st
        .emu
        .add_rule_id(serde_json::json!({"method": "GET", "path": USER_READ,
            "action": {"kind": "hold", "process_on_release": true}}))
        .await;
    let create = {
        let (http, url) = (
            st.http.clone(),
            st.proxy.url(&format!(
                "{}/Conversations/{}/Participants",
                kim.base,
                kim.target()
            )),
        );
        tokio::spawn(async move {
            let r = http
                .post(url)
                .basic_auth(ACCOUNT, Some(TOKEN))
                .form(&[("Identity", "kim")])
                .send()
                .await
                .unwrap();
            let outcome = r.headers().get("x-repair-outcome").cloned();
            (r.status().as_u16(), outcome, r.text().await.unwrap())
        })
    };
    st.emu.wait_held(1).await;
    // A bound on "never answered while the read is held", not a timing.
    let (status, outcome, body) = tokio::time::timeout(std::time::Duration::from_secs(30), create)
        .await
        .expect("the caller waited for the rehearsal's read")
        .unwrap();
    assert_eq!(status, 404, "{body}");
    assert_eq!(outcome.unwrap(), "disabled");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], 20404, "Twilio's own 404");
    assert_eq!(st.emu.held().await.len(), 1, "still held when answered");
    let before = until_plans(&st.http, &st.proxy.admin_url("/rehearsals"), 0).await;
    assert_eq!(before["rehearsals"]["plans_made"], 0, "{before:#}");
    assert_eq!(before["rehearsals"]["in_flight"], 1, "{before:#}");

    assert_eq!(st.emu.release_rule(rule).await, 1);
    let v = until_plans(&st.http, &st.proxy.admin_url("/rehearsals"), 1).await;
    let plan = &v["rehearsals"]["recent"][0];
    assert_eq!(plan["would_complete"], true, "{v:#}");
    assert_eq!(plan["restore"][0], kim.other(), "{v:#}");
    let id = plan["incident_id"]
        .as_i64()
        .expect("linked to its incident");
    let incidents = admin_json_with(&st, "/incidents").await;
    let incident = &incidents["incidents"][0];
    assert_eq!(incident["id"], id, "{incidents:#}");
    assert!(
        incident["detail"]
            .as_str()
            .unwrap()
            .ends_with("rehearsed: the repair would complete"),
        "{incidents:#}"
    );
    let steps: Vec<&str> = incident["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert!(
        steps.contains(&"fetch-user"),
        "the rehearsal's reads: {steps:?}"
    );
    st.proxy.stop().await;
}

/// `repair.rehearsal_max_in_flight = 0`: rehearsals are off, and the
/// incident says so (not "0 in flight already"); no read is made.
#[tokio::test]
async fn with_rehearsals_off_the_incident_says_so_and_nothing_is_read() {
    let (st, kim) = Scene::new()
        .user("kim")
        .member_of_another()
        .armed(FaultMode::Block)
        .proxy(|c| {
            check_only(true)(c);
            c.repair.rehearsal_max_in_flight = 0;
        })
        .start()
        .await;
    st.emu.clear_requests().await;
    let (status, outcome, _) = st
        .create(kim.is(), kim.target(), &[("Identity", "kim")])
        .await;
    assert_eq!((status, outcome.as_deref()), (404, Some("disabled")));
    let incidents = admin_json_with(&st, "/incidents").await;
    let detail = incidents["incidents"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("not rehearsed: rehearsals are off (repair.rehearsal_max_in_flight = 0)"),
        "{detail}"
    );
    assert_rehearsals(&st, &[("skipped", 1), ("would_complete", 0)]).await;
    assert!(panel(&ui(&st).await).contains("rehearsals are off"));
    let reads: Vec<_> = st
        .emu
        .requests()
        .await
        .into_iter()
        .filter(|(_, p)| p.contains("/Users/"))
        .collect();
    assert!(reads.is_empty(), "no snapshot read: {reads:?}");
    st.proxy.stop().await;
}

/// Past `repair.rehearsal_max_in_flight` a fault is not rehearsed: counted
/// as skipped, said in its incident, never queued (nothing runs for it
/// once the slot frees).
#[tokio::test]
async fn past_the_bound_a_fault_is_not_rehearsed_and_is_counted_skipped() {
    let (st, kim) = faulty_kim()
        .proxy(|c| {
            check_only(true)(c);
            c.repair.rehearsal_max_in_flight = 1;
        })
        .start()
        .await;
    let rule = st
        .emu
        .add_rule_id(serde_json::json!({"method": "GET", "path": USER_READ,
            "action": {"kind": "hold", "process_on_release": true}}))
        .await;
    for _ in 0..2 {
        let (status, outcome, _) = st
            .create(kim.is(), kim.target(), &[("Identity", "kim")])
            .await;
        assert_eq!((status, outcome.as_deref()), (404, Some("disabled")));
    }
    st.emu.wait_held(1).await;
    let v = until_plans(&st.http, &st.proxy.admin_url("/rehearsals"), 0).await;
    let r = &v["rehearsals"];
    assert_eq!(
        (
            &r["skipped"],
            &r["in_flight"],
            &r["max_in_flight"],
            &r["faults_seen"]
        ),
        (
            &serde_json::json!(1),
            &serde_json::json!(1),
            &serde_json::json!(1),
            &serde_json::json!(2)
        ),
        "{v:#}"
    );
    let incidents = admin_json_with(&st, "/incidents").await;
    assert!(
        incidents["incidents"][0]["detail"]
            .as_str()
            .unwrap()
            .contains(
                "not rehearsed: 1 rehearsal(s) in flight already (repair.rehearsal_max_in_flight)"
            ),
        "{incidents:#}"
    );
    assert_eq!(st.emu.release_rule(rule).await, 1);
    let v = until_plans(&st.http, &st.proxy.admin_url("/rehearsals"), 1).await;
    assert_eq!(v["rehearsals"]["skipped"], 1, "{v:#}");
    assert_eq!(v["rehearsals"]["in_flight"], 0, "{v:#}");
    assert_eq!(
        v["rehearsals"]["recent"].as_array().unwrap().len(),
        1,
        "the skipped fault was never queued: {v:#}"
    );
    assert!(panel(&ui(&st).await).contains("Rehearsals skipped"));
    assert_rehearsals(&st, &[("skipped", 1), ("would_complete", 1)]).await;
    st.proxy.stop().await;
}

/// An identity whose plain and percent-encoded forms differ.
const MAIL: &str = "kim k@example.com";

/// With `repair.incident_identity = "hash"`, a rehearsal whose snapshot
/// read fails (Twilio's 403 naming the identity in its message; then no
/// answer at all, whose error names the read's path) shows the identity
/// nowhere: not on the panel (`/rehearsals`, `/ui`), not in the incidents,
/// not in the proxy's log, in plain or percent-encoded form; the hashed
/// form is what appears.
#[tokio::test]
async fn with_hash_privacy_a_failed_rehearsal_never_shows_the_identity() {
    let (emu, kim) = Scene::new()
        .user(MAIL)
        .friendly("Kim K")
        .member_of_another()
        .armed(FaultMode::Block)
        .build()
        .await;
    let proxy = spawn_proxy(
        &emu.origin(),
        &[
            ("TRP_REPAIR_MODE", "check-only"),
            ("TRP_REPAIR_INCIDENT_IDENTITY", "hash"),
            ("TRP_ADMIN_TOKEN", ADMIN_TOKEN),
            ("TRP_REPAIR_API_KEY_SID", ACCOUNT),
            ("TRP_REPAIR_API_KEY_SECRET", TOKEN),
            ("TRP_REPAIR_ACCOUNT_SID", ACCOUNT),
            ("TRP_REPAIR_RETRY_INITIAL_BACKOFF_MS", "10"),
            ("TRP_REPAIR_RETRY_MAX_BACKOFF_MS", "50"),
        ],
    )
    .await;
    let encoded = "kim%20k%40example.com";
    emu.add_rule(
        serde_json::json!({"method": "GET", "path": USER_READ, "times": 1,
        "action": {"kind": "status", "status": 403, "code": 20003,
            "message": format!("User {MAIL} ({encoded}) may not be read")}}),
    )
    .await;
    let http = reqwest::Client::new();
    let create = || proxy.create_in(&kim, MAIL);
    let admin = |path: &str| format!("http://{}{path}", proxy.admin);
    assert_eq!(create().await.status(), 404);
    until_plans(&http, &admin("/rehearsals"), 1).await;
    emu.add_rule(serde_json::json!({"method": "GET", "path": USER_READ,
        "action": {"kind": "reset"}}))
        .await;
    assert_eq!(create().await.status(), 404);
    let v = until_plans(&http, &admin("/rehearsals"), 2).await;
    let why = v["rehearsals"]["recent"][0]["why_not"].as_str().unwrap();
    assert!(
        why.contains("/Users/sha256:"),
        "the read's path, hashed: {v:#}"
    );

    let hashed = twilio_repair_proxy::admin::hash_identity(MAIL);
    let read = |path: String| {
        let http = http.clone();
        async move {
            http.get(path)
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let shown = [
        ("/rehearsals", serde_json::to_string(&v).unwrap()),
        ("/ui", read(admin("/ui")).await),
        ("/incidents", read(admin("/incidents")).await),
        ("the log", proxy.log_with("check-only rehearsal done").await),
    ];
    for (place, text) in &shown {
        for form in [MAIL, encoded, "kim k", "kim%20k", "kim+k", "example.com"] {
            assert!(!text.contains(form), "{form:?} in {place}:\n{text}");
        }
        assert!(
            text.contains(&hashed),
            "the hashed form in {place}:\n{text}"
        );
    }
    let incidents: serde_json::Value = serde_json::from_str(&shown[2].1).unwrap();
    assert!(
        incidents["incidents"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["detail"]
                .as_str()
                .unwrap()
                .contains("rehearsed: the repair would fail")),
        "{incidents:#}"
    );
}

/// A rehearsal in flight is one of the repairer's tasks: a SIGTERM while
/// its read is held at Twilio waits for it (it is counted among the
/// repairs in flight), and once the read is released it ends, is logged,
/// and only then does the process exit.
#[tokio::test]
async fn shutdown_waits_for_a_rehearsal_in_flight() {
    let (emu, kim) = Scene::new()
        .user("kim")
        .friendly("Kim K")
        .armed(FaultMode::Block)
        .build()
        .await;
    let mut proxy = spawn_proxy(
        &emu.origin(),
        &[
            ("TRP_REPAIR_MODE", "check-only"),
            ("TRP_REPAIR_API_KEY_SID", ACCOUNT),
            ("TRP_REPAIR_API_KEY_SECRET", TOKEN),
            ("TRP_REPAIR_ACCOUNT_SID", ACCOUNT),
        ],
    )
    .await;
    let rule = emu
        .add_rule_id(serde_json::json!({"method": "GET", "path": USER_READ,
            "action": {"kind": "hold", "process_on_release": true}}))
        .await;
    let r = proxy.create_in(&kim, "kim").await;
    assert_eq!(r.status(), 404);
    emu.wait_held(1).await;
    proxy.signal("TERM");
    let log = proxy.log_with("waiting for in-flight repairs").await;
    assert!(
        log.contains("waiting for in-flight repairs"),
        "the rehearsal is not among the tasks shutdown waits for:\n{log}"
    );
    assert!(!log.contains("check-only rehearsal done"), "{log}");
    assert_eq!(emu.release_rule(rule).await, 1);
    // A bound on "never exits", not a timing.
    let mut status = None;
    for _ in 0..3000 {
        status = proxy.child.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(status.is_some(), "still running:\n{}", proxy.stderr());
    let log = proxy.stderr();
    assert!(log.contains("check-only rehearsal done"), "{log}");
    assert!(!log.contains("grace period elapsed"), "{log}");
}

/// A rehearsal a stop cut (kill -9 while its read is held) leaves its
/// incident `rehearsal under way`; the next start marks it cut short, once
/// every rehearsal recorded before it must have ended (two workflow
/// deadlines).
#[tokio::test]
async fn a_rehearsal_cut_by_kill_9_is_marked_cut_short_by_the_next_start() {
    let (emu, kim) = Scene::new()
        .user("kim")
        .friendly("Kim K")
        .armed(FaultMode::Block)
        .build()
        .await;
    let dir = tempfile::tempdir().unwrap().keep();
    let store = format!("sqlite://{}/journal.db", dir.display());
    let env = [
        ("TRP_REPAIR_MODE", "check-only"),
        ("TRP_ADMIN_TOKEN", ADMIN_TOKEN),
        ("TRP_REPAIR_API_KEY_SID", ACCOUNT),
        ("TRP_REPAIR_API_KEY_SECRET", TOKEN),
        ("TRP_REPAIR_ACCOUNT_SID", ACCOUNT),
        ("TRP_REPAIR_WORKFLOW_DEADLINE_MS", "2000"),
    ];
    let http = reqwest::Client::new();
    let detail = |admin: String| {
        let http = http.clone();
        async move {
            let v: Value = http
                .get(format!("http://{admin}/incidents"))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["incidents"][0]["detail"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        }
    };
    let first = spawn_proxy_with_store(&dir, &store, &emu.origin(), &env).await;
    let rule = emu
        .add_rule_id(json!({"method": "GET", "path": USER_READ,
            "action": {"kind": "hold", "process_on_release": false}}))
        .await;
    let r = first.create_in(&kim, "kim").await;
    assert_eq!(r.status(), 404);
    emu.wait_held(1).await;
    let before = detail(first.admin.to_string()).await;
    assert!(before.ends_with("; rehearsal under way"), "{before}");
    first.signal("KILL");
    drop(first);
    emu.release_rule(rule).await;

    let second = spawn_proxy_with_store(&dir, &store, &emu.origin(), &env).await;
    let mut now = String::new();
    for _ in 0..1000 {
        now = detail(second.admin.to_string()).await;
        if now.contains("rehearsal cut short") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        now.ends_with(
            "; rehearsal cut short: the proxy stopped before its reads ended (nothing was written)"
        ),
        "{now}\n{}",
        second.stderr()
    );
    assert!(
        now.starts_with(before.trim_end_matches("; rehearsal under way")),
        "{now}"
    );
    let log = second.log_with("rehearsals a stop cut short").await;
    assert!(
        log.contains("incidents=1") || log.contains("\"incidents\":1"),
        "{log}"
    );
}

/// Kim, named "Kim K", with another membership, struck by the fault.
fn faulty_kim() -> Scene {
    Scene::new()
        .user("kim")
        .friendly("Kim K")
        .member_of_another()
        .armed(FaultMode::Block)
}
