//! The check-only rehearsal and `/ui`'s "Ready for repair mode?" panel: a
//! check-only fault gets the plan a repair would have run (and nothing is
//! written); without a repair credential for the account the plan is shown
//! as failing, with why; `POST /selftest` (the admin token) runs the
//! selftest with the repair credential and the panel shows its result.

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

    let page = ui(&st).await;
    let p = panel(&page);
    assert!(p.contains("Plans made (check-only)"), "{p}");
    assert!(p.contains("Every plan so far would have completed"), "{p}");
    assert!(p.contains("DELETE the User US"), "{p}");
    assert!(p.contains("restore its 1 membership(s)"), "{p}");
    assert!(p.contains(kim.other()), "the membership to restore: {p}");
    assert!(p.contains(&format!("yes, with {ACCOUNT}")), "{p}");
    assert!(p.contains("Mode now: <strong>check-only"), "{p}");
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
    let (st, kim) = Scene::new()
        .user("kim")
        .friendly("Kim K")
        .member_of_another()
        .armed(FaultMode::Block)
        .proxy(check_only(false))
        .start()
        .await;
    let (status, _, _) = st
        .create(kim.is(), kim.target(), &[("Identity", "kim")])
        .await;
    assert_eq!(status, 404);
    let page = ui(&st).await;
    let p = panel(&page);
    assert!(p.contains("Not yet: 1 of 1 plans would have failed"), "{p}");
    assert!(
        p.contains(&format!("no repair credential for account {ACCOUNT}")),
        "{p}"
    );
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
