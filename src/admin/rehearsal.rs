//! "Ready for repair mode?": the `/ui` panel that reads the check-only
//! rehearsals (`crate::repair::rehearsal`) and the last selftest, and
//! `POST /selftest`, which runs [`crate::selftest`] with the proxy's
//! repair credential against its Conversations origin (an authenticated
//! operator only: it creates and deletes a service on the account).
//!
//! What belongs here: the panel's markup and that one handler. What does
//! not: the judgement of a plan (`repair::rehearsal`), the selftest itself
//! (`crate::selftest`), the rest of the page (`views`).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use maud::{Markup, html};

use super::{AdminState, Operator, admin_error};
use crate::config::RepairMode;
use crate::repair::rehearsal::RehearsalView;
use crate::selftest::{Caller, Options, Report};

/// Plans listed on the panel (the newest).
pub const PANEL_PLANS: usize = 10;

/// The last selftest run through the admin plane, and the one in flight.
#[derive(Default)]
pub struct SelftestSlot {
    last: std::sync::Mutex<Option<Report>>,
    /// Held while one runs: a second `POST /selftest` meanwhile is a 409.
    running: tokio::sync::Mutex<()>,
}

impl SelftestSlot {
    fn last(&self) -> Option<Report> {
        self.last.lock().ok().and_then(|l| l.clone())
    }
}

/// The panel, for the top of `/ui`.
pub(super) fn panel(s: &AdminState) -> Markup {
    let mode = s.repair.as_ref().map(|(r, _)| r.mode());
    let view: Option<RehearsalView> = s.repair.as_ref().map(|(r, _)| r.rehearsals());
    let last = s.selftest.last();
    html! {
        section #ready aria-labelledby="ready-h" {
            h2 #ready-h { "Ready for repair mode?" }
            p {
                "Mode now: " strong { (mode.map(mode_name).unwrap_or("off")) } ". "
                "Before you switch to " code { "repair" } ": run " code { "selftest" }
                ", run in " code { "check-only" } " for a while, and read this panel."
            }
            div.cards {
                div.card {
                    @match &view {
                        None => p.muted { "Repair is off: no fault is checked, no plan is made." }
                        Some(v) => {
                            dl {
                                dt { "Faults seen" } dd { (v.faults_seen) }
                                dt { "Plans made (check-only)" } dd { (v.plans_made) }
                                dt { "Plans that would fail" }
                                dd class=(if v.plans_failing > 0 { "status-bad" } else { "status-ok" }) { (v.plans_failing) }
                                dt { "Rehearsals skipped" }
                                dd { (v.skipped) " (at most " (v.max_in_flight) " at once, "
                                    code { "repair.rehearsal_max_in_flight" } "; " (v.in_flight) " running now)" }
                            }
                            p {
                                @if v.plans_made == 0 {
                                    span.muted { "No check-only fault yet: nothing to judge by." }
                                } @else if v.plans_failing == 0 {
                                    span.status-ok { "Every plan so far would have completed." }
                                } @else {
                                    span.status-bad { "Not yet: " (v.plans_failing) " of " (v.plans_made) " plans would have failed (why, below)." }
                                }
                            }
                            p.muted { "Counted since this process started." }
                        }
                    }
                }
                div.card {
                    @match &last {
                        None => p.muted { "No selftest run through the admin plane yet ("
                            code { "POST /selftest" } " with the admin token, or "
                            code { "twilio-repair-proxy selftest" } " from a shell)." }
                        Some(r) => {
                            p {
                                "Last selftest (" (r.at) "): "
                                @if r.ok { span.status-ok { "passed" } } @else { span.status-bad { "FAILED" } }
                                ", " (r.checks.len()) " checks on " (r.base_url)
                                @if r.cleaned_up { ", service deleted" } @else if r.kept { ", service kept" } @else { ", " span.status-bad { "service not deleted" } }
                            }
                            @let failed: Vec<_> = r.checks.iter().filter(|c| !c.ok).collect();
                            @if !failed.is_empty() {
                                ul {
                                    @for c in failed {
                                        li { strong { (c.step) } ": " (c.detail)
                                            @if let Some(rq) = &c.request_id { " (" code { (rq) } ")" } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if let Some(v) = &view {
                @if !v.recent.is_empty() {
                    table.stack {
                        caption { "Newest plans (check-only)" }
                        thead { tr {
                            th scope="col" { "incident" }
                            th scope="col" { "identity" }
                            th scope="col" { "snapshot" }
                            th scope="col" { "calls it would make" }
                            th scope="col" { "memberships to restore" }
                            th scope="col" { "would complete?" }
                        } }
                        tbody {
                            @for p in v.recent.iter().take(PANEL_PLANS) {
                                tr {
                                    td data-label="incident" {
                                        @match p.incident_id {
                                            Some(id) => a href=(format!("/ui/incidents/{id}")) { "#" (id) },
                                            None => span.muted { "—" },
                                        }
                                    }
                                    td data-label="identity" { (p.identity) }
                                    td data-label="snapshot" {
                                        @match &p.snapshot {
                                            Some(s) => {
                                                (s.user_sid.as_deref().unwrap_or("no User")) ", "
                                                (s.memberships) " membership(s)"
                                                @if let Some(r) = &s.role_sid { ", role " (r) }
                                            }
                                            None => span.status-bad { "not read" },
                                        }
                                    }
                                    td data-label="calls" { ol { @for c in &p.plan { li { (c) } } } }
                                    td data-label="restore" { (p.restore.join(", ")) }
                                    td data-label="would complete?" {
                                        @match &p.why_not {
                                            None => span.status-ok { "yes, with " (p.acting) },
                                            Some(why) => { span.status-bad { "no" } ": " (why) },
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /rehearsals`: the panel's figures as JSON (every identity and
/// text in them went through the privacy rule when recorded, see
/// `repair::rehearsal::Rehearsal::shown`).
pub(super) async fn view(State(s): State<Arc<AdminState>>) -> Response {
    let Some((repairer, _)) = &s.repair else {
        return admin_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "repair is off on this proxy (repair.mode = \"off\")",
        );
    };
    let mut view = repairer.rehearsals();
    for r in &mut view.recent {
        r.identity = s.privacy.identity(&r.identity);
    }
    let mode = mode_name(repairer.mode());
    Json(serde_json::json!({ "mode": mode, "rehearsals": view })).into_response()
}

/// `POST /selftest`: run the selftest with the proxy's repair credential
/// against its Conversations origin; the report as JSON (200 whether or
/// not every check held: `ok` says), kept for the panel.
pub(super) async fn run(
    State(s): State<Arc<AdminState>>,
    operator: Option<axum::Extension<Operator>>,
) -> Response {
    if let Some(refused) = super::refuse_unless_operator(operator.is_some(), "a selftest") {
        return refused;
    }
    let Some((repairer, origin)) = &s.repair else {
        return admin_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "repair is off on this proxy (repair.mode = \"off\")",
        );
    };
    let Some(credential) = repairer.credential().cloned() else {
        return admin_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "POST /selftest acts with the repair credential, and none is set: set \
             TRP_REPAIR_API_KEY_SID, TRP_REPAIR_API_KEY_SECRET and TRP_REPAIR_ACCOUNT_SID (or \
             repair.credentials_file), or run `twilio-repair-proxy selftest` with your own",
        );
    };
    let opts = Options {
        config: s.config.clone(),
        base_url: origin.load().as_string(),
        caller: Caller {
            credential: credential.clone(),
            variables: "the repair credential (TRP_REPAIR_API_KEY_SID/_SECRET or repair.credentials_file)",
        },
        operator: Some(credential),
        webhook: Some(HeaderValue::from_static("false")),
        keep: false,
    };
    // Its own task, which holds the slot and keeps the report: an operator
    // who hangs up neither leaves the service behind nor frees the slot
    // while the run goes on.
    let state = s.clone();
    let task = tokio::spawn(async move {
        let Ok(_running) = state.selftest.running.try_lock() else {
            return None;
        };
        let result = crate::selftest::selftest(opts).await;
        if let (Ok(report), Ok(mut last)) = (&result, state.selftest.last.lock()) {
            *last = Some(report.clone());
        }
        Some(result)
    });
    match task.await {
        Ok(None) => admin_error(StatusCode::CONFLICT, "a selftest is running already"),
        Ok(Some(Ok(report))) => (StatusCode::OK, Json(report)).into_response(),
        Ok(Some(Err(e))) => admin_error(StatusCode::BAD_GATEWAY, &e.to_string()),
        Err(_) => admin_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the selftest task failed",
        ),
    }
}

/// A mode as the configuration spells it.
fn mode_name(m: RepairMode) -> &'static str {
    match m {
        RepairMode::Repair => "repair",
        RepairMode::CheckOnly => "check-only",
        RepairMode::Off => "off",
    }
}
