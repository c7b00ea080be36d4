//! The incidents page's HTML, as maud templates: pure functions from what
//! the handlers in [`super::ui`] read to markup. maud escapes every
//! interpolated value, so an identity, a friendly name or a Twilio message
//! can never become markup.
//!
//! Self-contained on purpose: one inline style sheet, no script, no font,
//! image or anything else fetched (the page works in an air-gapped
//! cluster). Readable on a phone (tables turn into labelled cards on narrow
//! screens) and accessible: a language, landmarks, a skip link, labelled
//! controls, table captions and header scopes, visible focus, and colours
//! of at least 4.5:1 contrast.

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::clusters::Cluster;
use crate::store::{Incident, Outcome, RepairRecord, SidAlias};

const STYLE: &str = r#"
:root{color-scheme:light;--fg:#1b1b1b;--muted:#4a4a4a;--line:#c8c8c8;--bg:#fff;--accent:#0b4f9c;--bad:#8a1111;--good:#0d5a25}
*{box-sizing:border-box}
body{font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg);margin:0;padding:0 1rem 2rem;max-width:72rem;margin-inline:auto}
a{color:var(--accent)}
a:focus,button:focus,input:focus,select:focus{outline:3px solid #e08e00;outline-offset:2px}
.skip{position:absolute;left:-999px}.skip:focus{left:1rem;top:1rem;background:#fff;padding:.5rem}
header{display:flex;flex-wrap:wrap;gap:.5rem 1rem;align-items:baseline;justify-content:space-between;border-bottom:2px solid var(--line);padding:.75rem 0}
header h1{font-size:1.25rem;margin:0}
h2{font-size:1.1rem;margin:1.5rem 0 .5rem}
table{border-collapse:collapse;width:100%;margin:.5rem 0}
caption{text-align:left;font-weight:600;padding:.25rem 0}
th,td{border-bottom:1px solid var(--line);padding:.4rem .5rem;text-align:left;vertical-align:top;overflow-wrap:anywhere}
th{background:#f0f0f0;white-space:nowrap}
.nowrap{white-space:nowrap}
.num{text-align:right;font-variant-numeric:tabular-nums}
.outcome-failed,.status-bad{color:var(--bad);font-weight:600}
.outcome-repaired,.status-ok{color:var(--good);font-weight:600}
form.filters{display:flex;flex-wrap:wrap;gap:.75rem;align-items:flex-end}
form.filters div{display:flex;flex-direction:column}
label{font-weight:600}
input,select,button{font:inherit;padding:.35rem .5rem;border:1px solid #767676;border-radius:4px;min-height:2.5rem}
button{background:var(--accent);color:#fff;border-color:var(--accent);cursor:pointer}
.muted{color:var(--muted)}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(14rem,1fr));gap:.75rem}
.card{border:1px solid var(--line);border-radius:6px;padding:.75rem}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem}
dt{font-weight:600}dd{margin:0;overflow-wrap:anywhere}
nav.pages{display:flex;gap:1rem;margin:1rem 0}
.error{border-left:4px solid var(--bad);padding:.5rem 1rem;background:#fdf0f0}
code{font-size:.95em}
@media (max-width:40rem){
 table.stack thead{position:absolute;left:-999px}
 table.stack tr{display:block;border:1px solid var(--line);border-radius:6px;margin:.5rem 0;padding:.25rem}
 table.stack td{display:grid;grid-template-columns:8rem 1fr;border:0}
 table.stack td::before{content:attr(data-label);font-weight:600}
 dl{grid-template-columns:1fr}
}
"#;

/// What the list page shows above the incidents.
pub struct Summary {
    /// Per outcome: (last hour, last day); `None` when the store did not answer.
    pub counts: Option<Vec<(Outcome, i64, i64)>>,
    /// Repair journal records not yet finished; `None` when unknown.
    pub in_progress: Option<usize>,
    /// Whether the journal accepted a write just now.
    pub store_ok: bool,
}

/// The list page's filter, as given (values already validated).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub outcome: Option<Outcome>,
    pub service: Option<String>,
    pub identity: Option<String>,
    pub page: i64,
}

impl Filter {
    /// The query string of this filter on another page.
    pub fn query(&self, page: i64) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        if let Some(o) = self.outcome {
            q.append_pair("outcome", o.as_str());
        }
        if let Some(s) = &self.service {
            q.append_pair("service", s);
        }
        if let Some(i) = &self.identity {
            q.append_pair("identity", i);
        }
        if page > 1 {
            q.append_pair("page", &page.to_string());
        }
        q.finish()
    }
}

fn layout(title: &str, signed_in: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) " · twilio-repair-proxy" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    h1 { a href="/ui" { "twilio-repair-proxy" } " · " (title) }
                    @if signed_in {
                        form method="post" action="/ui/logout" {
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main #main { (body) }
            }
        }
    }
}

fn outcome_class(o: Outcome) -> String {
    format!("outcome-{}", o.as_str())
}

/// The sign-in form (`message`: why it is shown again).
pub fn login(message: Option<&str>) -> Markup {
    layout(
        "sign in",
        false,
        html! {
            h2 { "Sign in" }
            @if let Some(m) = message {
                p.error role="alert" { (m) }
            }
            p { "This admin plane needs its token (" code { "admin.token" } " or "
                code { "TRP_ADMIN_TOKEN" } "). Signing in keeps it in an HttpOnly cookie for this browser." }
            form method="post" action="/ui/login" {
                div {
                    label for="token" { "Admin token" }
                    br;
                    input #token type="password" name="token" autocomplete="current-password" required;
                }
                p { button type="submit" { "Sign in" } }
            }
        },
    )
}

/// An error page (bad parameters, an unknown incident, a store down).
pub fn error(title: &str, message: &str, signed_in: bool) -> Markup {
    layout(
        title,
        signed_in,
        html! {
            p.error role="alert" { (message) }
            p { a href="/ui" { "Back to the incidents" } }
        },
    )
}

/// The incidents page: summary, clusters, filter, one page of incidents.
pub fn list(
    summary: &Summary,
    clusters: &[Cluster],
    filter: &Filter,
    incidents: &[Incident],
    has_more: bool,
    signed_in: bool,
) -> Markup {
    layout(
        "incidents",
        signed_in,
        html! {
            section aria-labelledby="summary" {
                h2 #summary { "Summary" }
                div.cards {
                    div.card {
                        @match &summary.counts {
                            Some(rows) => {
                                table {
                                    caption { "Outcomes of intercepted 20404s" }
                                    thead { tr { th scope="col" { "outcome" } th scope="col" .num { "last hour" } th scope="col" .num { "last day" } } }
                                    tbody {
                                        @for (o, h, d) in rows {
                                            tr {
                                                th scope="row" class=(outcome_class(*o)) { (o.as_str()) }
                                                td.num { (h) }
                                                td.num { (d) }
                                            }
                                        }
                                    }
                                }
                            }
                            None => p.error { "The store did not answer: no counts." }
                        }
                    }
                    div.card {
                        dl {
                            dt { "Repairs in progress" }
                            dd #in-progress {
                                @match summary.in_progress {
                                    Some(n) => { (n) " " a href="/repairs?state=pending" { "(journal records, JSON)" } }
                                    None => "unknown (store did not answer)",
                                }
                            }
                            dt { "Store" }
                            dd #store-health {
                                @if summary.store_ok {
                                    span.status-ok { "accepts writes" }
                                } @else {
                                    span.status-bad { "does not accept writes (see /readyz)" }
                                }
                            }
                        }
                    }
                }
            }
            section aria-labelledby="clusters" {
                h2 #clusters { "Affected identities by their User's creation date" }
                @if clusters.is_empty() {
                    p.muted { "No affected identity among these incidents." }
                } @else {
                    table.stack {
                        caption.muted { "Over the newest incidents matching the filter; Twilio notes affected Users were often all created on one day." }
                        thead { tr { th scope="col" { "User created on" } th scope="col" .num { "identities" } th scope="col" .num { "incidents" } } }
                        tbody {
                            @for c in clusters {
                                tr {
                                    td data-label="created on" { (c.user_created_on) }
                                    td.num data-label="identities" { (c.identities) }
                                    td.num data-label="incidents" { (c.incidents) }
                                }
                            }
                        }
                    }
                }
            }
            section aria-labelledby="list" {
                h2 #list { "Incidents, newest first" }
                form.filters method="get" action="/ui" role="search" {
                    div {
                        label for="outcome" { "Outcome" }
                        select #outcome name="outcome" {
                            option value="" selected[filter.outcome.is_none()] { "any" }
                            @for o in Outcome::ALL {
                                option value=(o.as_str()) selected[filter.outcome == Some(o)] { (o.as_str()) }
                            }
                        }
                    }
                    div {
                        label for="service" { "Service SID" }
                        input #service name="service" placeholder="IS…" value=(filter.service.as_deref().unwrap_or(""));
                    }
                    div {
                        label for="identity" { "Identity (or its sha256: hash)" }
                        input #identity name="identity" value=(filter.identity.as_deref().unwrap_or(""));
                    }
                    div { button type="submit" { "Filter" } }
                }
                @if incidents.is_empty() {
                    p #no-incidents { "No incident matches." }
                } @else {
                    table.stack #incidents {
                        caption.muted { "Page " (filter.page) }
                        thead {
                            tr {
                                th scope="col" { "#" }
                                th scope="col" { "at (UTC)" }
                                th scope="col" { "outcome" }
                                th scope="col" { "service" }
                                th scope="col" { "conversation" }
                                th scope="col" { "identity" }
                                th scope="col" .num { "steps" }
                                th scope="col" { "detail" }
                            }
                        }
                        tbody {
                            @for i in incidents {
                                tr.incident data-id=(i.id) data-outcome=(i.outcome.as_str()) {
                                    td.nowrap data-label="#" { a href={ "/ui/incidents/" (i.id) } { "incident " (i.id) } }
                                    td.nowrap data-label="at" { (i.at) }
                                    td data-label="outcome" class=(outcome_class(i.outcome)) { (i.outcome.as_str()) }
                                    td data-label="service" { (i.service_sid.as_deref().unwrap_or("-")) }
                                    td data-label="conversation" { (i.conversation_sid) }
                                    td.identity data-label="identity" { (i.identity.as_deref().unwrap_or("-")) }
                                    td.num data-label="steps" { (i.steps.len()) }
                                    td data-label="detail" { (i.detail.as_deref().unwrap_or("")) }
                                }
                            }
                        }
                    }
                }
                nav.pages aria-label="pages" {
                    @if filter.page > 1 {
                        a rel="prev" href={ "/ui?" (filter.query(filter.page - 1)) } { "← Newer" }
                    }
                    @if has_more {
                        a rel="next" href={ "/ui?" (filter.query(filter.page + 1)) } { "Older →" }
                    }
                }
            }
        },
    )
}

/// What the detail page shows of the journal's snapshot.
pub enum SnapshotView<'a> {
    /// No journal record (the workflow stopped before its snapshot).
    None,
    /// SIDs and counts only (the default).
    Summary(&'a RepairRecord),
    /// As [`super::Privacy::snapshot`] shows it to an authenticated
    /// operator who asked (`?show=attributes`).
    Full(&'a RepairRecord, serde_json::Value),
}

/// One incident: its fields, every step as a timeline, the snapshot
/// summary and the support bundle link.
pub fn detail(
    i: &Incident,
    snapshot: SnapshotView<'_>,
    aliases: &[SidAlias],
    signed_in: bool,
) -> Markup {
    let title = format!("incident {}", i.id);
    layout(
        &title,
        signed_in,
        html! {
            p { a href="/ui" { "← All incidents" } }
            h2 { "Incident " (i.id) }
            dl #incident {
                dt { "intercepted at" } dd { (i.at) }
                dt { "outcome" } dd class=(outcome_class(i.outcome)) { (i.outcome.as_str()) }
                dt { "account" } dd { (i.account_sid.as_deref().unwrap_or("-")) }
                dt { "service" } dd { (i.service_sid.as_deref().unwrap_or("-")) }
                dt { "conversation" } dd { (i.conversation_sid) }
                dt { "identity" } dd.identity { (i.identity.as_deref().unwrap_or("-")) }
                dt { "20404 Twilio-Request-Id" } dd { (i.request_id.as_deref().unwrap_or("-")) }
                dt { "User date_created" } dd { (i.user_date_created().unwrap_or("not read")) }
                @if let Some(d) = &i.detail { dt { "detail" } dd { (d) } }
                @if let Some(r) = i.repair_id { dt { "journal record" } dd { (r) } }
            }
            p {
                a #bundle href={ "/ui/incidents/" (i.id) "/bundle" } download { "Download support bundle" }
                span.muted { " (one text file for a Twilio Support ticket: no credential, no attributes)" }
            }
            h2 { "Steps" }
            @if i.steps.is_empty() {
                p { "No call was made to Twilio." }
            } @else {
                table.stack #steps {
                    caption.muted { "Every call the proxy made to Twilio, in order" }
                    thead {
                        tr {
                            th scope="col" .num { "#" }
                            th scope="col" { "step" }
                            th scope="col" { "call" }
                            th scope="col" { "status" }
                            th scope="col" .num { "duration" }
                            th scope="col" { "Twilio request id" }
                            th scope="col" { "error" }
                        }
                    }
                    tbody {
                        @for (n, s) in i.steps.iter().enumerate() {
                            tr.step {
                                td.num data-label="#" { (n + 1) }
                                td data-label="step" { (s.step) }
                                td data-label="call" { code { (s.method.as_deref().unwrap_or("")) " " (s.path.as_deref().unwrap_or("")) } }
                                td data-label="status" class=(if s.ok { "nowrap status-ok" } else { "nowrap status-bad" }) {
                                    @match s.status { Some(c) => (c), None => "no answer" }
                                }
                                td.num.nowrap data-label="duration" {
                                    @if let Some(d) = s.duration_ms { (d) " ms" } @else { "-" }
                                }
                                td data-label="request id" { code { (s.twilio_request_id.as_deref().unwrap_or("-")) } }
                                td data-label="error" {
                                    @if let Some(c) = s.error_code { (c) ": " }
                                    (s.error_message.as_deref().unwrap_or(""))
                                }
                            }
                        }
                    }
                }
            }
            h2 { "User snapshot" }
            (snapshot_section(i.id, snapshot))
            h2 { "SIDs the repair changed" }
            @if aliases.is_empty() {
                p.muted { "None: no User or membership was recreated." }
            } @else {
                table #aliases {
                    caption.muted { "Requests naming an old SID are sent with the new one (repair.sid_alias_retention_secs)" }
                    thead { tr { th scope="col" { "old SID" } th scope="col" { "new SID" } th scope="col" { "conversation" } th scope="col" { "recorded at" } } }
                    tbody {
                        @for a in aliases {
                            tr.alias {
                                td { code { (a.old_sid) } }
                                td { code { (a.new_sid) } }
                                td { code { (a.conversation_sid.as_deref().unwrap_or("- (the User)")) } }
                                td.nowrap { (a.created_at) }
                            }
                        }
                    }
                }
            }
        },
    )
}

fn snapshot_section(id: i64, snapshot: SnapshotView<'_>) -> Markup {
    match snapshot {
        SnapshotView::None => {
            html! { p.muted { "No journal record: the User was not read before a repair." } }
        }
        SnapshotView::Summary(r) => html! {
            dl #snapshot {
                dt { "journal state" } dd { (r.state) }
                dt { "User SID before repair" } dd { (r.snapshot.user_sid.as_deref().unwrap_or("-")) }
                dt { "role" } dd { (r.snapshot.role_sid.as_deref().unwrap_or("-")) }
                dt { "other memberships" } dd {
                    (r.snapshot.memberships.len())
                    @for m in &r.snapshot.memberships { br; code { (m.conversation_sid) } }
                }
            }
            p { a href={ "/ui/incidents/" (id) "?show=attributes" } { "Show friendly name and attributes" }
                span.muted { " (authenticated operators only; never with identity hashing)" } }
        },
        SnapshotView::Full(r, shown) => html! {
            p { "Journal record " (r.id) " (" (r.state) "), as stored:" }
            pre #snapshot-full { (serde_json::to_string_pretty(&shown).unwrap_or_default()) }
            p { a href={ "/ui/incidents/" (id) } { "Hide" } }
        },
    }
}
