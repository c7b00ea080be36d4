//! "Ready for repair mode?": the `/ui` panel that reads the check-only
//! rehearsals (`crate::repair::rehearsal`) and the last selftest, and
//! `POST /selftest`, which runs [`crate::selftest`] with the proxy's
//! repair credential against its Conversations origin (an authenticated
//! operator only: it creates and deletes a service on the account). A run
//! is a task of [`SelftestSlot`], not of the request: the proxy's shutdown
//! interrupts it and waits for its service delete.
//!
//! What belongs here: the panel's markup, that one handler and its slot
//! (one run at a time, its bound, its report). What does
//! not: the judgement of a plan (`repair::rehearsal`), the selftest itself
//! (`crate::selftest`), the rest of the page (`views`).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use maud::{Markup, html};

use super::{AdminState, Operator, admin_error};
use crate::config::RepairMode;
use crate::repair::rehearsal::RehearsalView;
use crate::selftest::{Caller, Interruption, Options, Report, SERVICE_NAME_PREFIX, ShieldFrom};

/// Plans listed on the panel (the newest).
pub const PANEL_PLANS: usize = 10;

/// The last selftest run through the admin plane, and the one in flight:
/// its own task, owned by the proxy's shutdown (not by the request that
/// started it), which interrupts it and waits for its cleanup.
#[derive(Default)]
pub struct SelftestSlot {
    last: std::sync::Mutex<Option<Report>>,
    /// Held by the run in flight (taken before it starts): a second
    /// `POST /selftest` meanwhile is a 409.
    running: Arc<tokio::sync::Mutex<()>>,
    /// The run in flight, so shutdown can wait for its service delete.
    tasks: tokio_util::task::TaskTracker,
    /// Cancelled when shutdown begins: the run in flight is interrupted
    /// (its service still deleted) and no new one starts.
    stop: tokio_util::sync::CancellationToken,
    /// Cancelled when shutdown's grace ran out with the run still going:
    /// its request is answered at once (503), so the admin server's own
    /// drain does not wait a second grace for it.
    given_up: tokio_util::sync::CancellationToken,
}

impl SelftestSlot {
    fn last(&self) -> Option<Report> {
        self.last.lock().ok().and_then(|l| l.clone())
    }

    /// Shutdown has begun: interrupt the run in flight, start no other.
    pub(super) fn stop(&self) {
        if !self.stop.is_cancelled() && !self.tasks.is_empty() {
            tracing::info!("shutdown: interrupting the selftest in flight; it deletes its service");
        }
        self.stop.cancel();
        self.tasks.close();
    }

    /// Wait (at most `grace`) for the run in flight to end, its service
    /// deleted; a warning naming what to look for when it did not.
    pub(super) async fn drain(&self, grace: Duration) {
        self.stop();
        let ended = async {
            self.tasks.wait().await;
            // A request that took the slot before the stop and has not
            // spawned its run yet: wait for it too.
            let _slot = self.running.lock().await;
        };
        if tokio::time::timeout(grace, ended).await.is_err() {
            self.given_up.cancel();
            tracing::warn!(
                "grace period elapsed while a selftest was deleting its throwaway service: look \
                 for a Conversations service named \"{SERVICE_NAME_PREFIX} <time>\" on the \
                 account (its SID is on the log line 'selftest: throwaway service created') and \
                 delete it"
            );
        }
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
                                @if v.max_in_flight == 0 {
                                    dd { (v.skipped) " (rehearsals are off: "
                                        code { "repair.rehearsal_max_in_flight = 0" } ")" }
                                } @else {
                                    dd { (v.skipped) " (at most " (v.max_in_flight) " at once, "
                                        code { "repair.rehearsal_max_in_flight" } "; " (v.in_flight) " running now)" }
                                }
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
    let Some((repairer, _)) = s.repair_on() else {
        return super::repair_off();
    };
    let mut view = repairer.rehearsals();
    for r in &mut view.recent {
        r.identity = s.privacy.identity(&r.identity);
    }
    let mode = mode_name(repairer.mode());
    Json(serde_json::json!({ "mode": mode, "rehearsals": view })).into_response()
}

/// `POST /selftest`: run the selftest with the proxy's repair credential
/// against its Conversations origin, with the repair settings in force now
/// (a reload's too); the report as JSON (200 whether or not every check
/// held: `ok` says), kept for the panel. The run is bounded by
/// `admin.selftest_deadline_ms` and interrupted by the proxy's shutdown;
/// either way its service is still deleted.
pub(super) async fn run(
    State(s): State<Arc<AdminState>>,
    operator: Option<axum::Extension<Operator>>,
) -> Response {
    if let Some(refused) = super::refuse_unless_operator(operator.is_some(), "a selftest") {
        return refused;
    }
    let Some((repairer, origin)) = s.repair_on() else {
        return super::repair_off();
    };
    let Some(credential) = repairer.credential().cloned() else {
        return admin_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "POST /selftest acts with the repair credential, and none is set: set \
             TRP_REPAIR_API_KEY_SID, TRP_REPAIR_API_KEY_SECRET and TRP_REPAIR_ACCOUNT_SID (or \
             repair.credentials_file), or run `twilio-repair-proxy selftest` with your own",
        );
    };
    // Taken here, before the run: the second of two requests is refused at
    // once, whatever the scheduler does with the first one's task.
    let Ok(running) = s.selftest.running.clone().try_lock_owned() else {
        return admin_error(StatusCode::CONFLICT, "a selftest is running already");
    };
    // Asked with the slot held: shutdown waits for the slot after it stops
    // (`SelftestSlot::drain`), so no run can start unseen by it.
    if s.selftest.stop.is_cancelled() {
        return admin_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the proxy is shutting down: no selftest starts now",
        );
    }
    let opts = Options {
        // The repair settings a repair started now would run with: the
        // mode and policy a reload changed, the start-up timeouts.
        config: crate::config::Config {
            repair: (*repairer.policy()).clone(),
            ..s.config.clone()
        },
        base_url: origin.load().as_string(),
        caller: Caller {
            credential: credential.clone(),
            variables: "the repair credential (TRP_REPAIR_API_KEY_SID/_SECRET or repair.credentials_file)",
        },
        operator: Some(credential),
        webhook: Some(HeaderValue::from_static("false")),
        keep: false,
        shield: ShieldFrom::Live(repairer.shield()),
    };
    let deadline = s.config.admin.selftest_deadline();
    let stop = s.selftest.stop.clone();
    // Its own task, tracked by the shutdown, which holds the slot and
    // keeps the report: an operator who hangs up neither leaves the
    // service behind nor frees the slot while the run goes on.
    let state = s.clone();
    let task = s.selftest.tasks.spawn(async move {
        let _running = running;
        let interrupted = async move {
            tokio::select! {
                () = stop.cancelled() => Interruption::Signal,
                () = tokio::time::sleep(deadline) => Interruption::Deadline(deadline),
            }
        };
        let result = crate::selftest::selftest_until(opts, interrupted).await;
        if let (Ok(report), Ok(mut last)) = (&result, state.selftest.last.lock()) {
            *last = Some(report.clone());
        }
        result
    });
    let given_up = s.selftest.given_up.clone();
    let result = tokio::select! {
        // A run that ended as the grace ran out is answered its report.
        biased;
        r = task => r,
        () = given_up.cancelled() => {
            return admin_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the proxy shut down before the selftest's service delete ended: see its log for the service to delete",
            );
        }
    };
    match result {
        Ok(Ok(report)) => (StatusCode::OK, Json(report)).into_response(),
        Ok(Err(e @ crate::selftest::SelftestError::InterruptedBeforeAnyCall(_))) => {
            admin_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
        Ok(Err(e)) => admin_error(StatusCode::BAD_GATEWAY, &e.to_string()),
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
