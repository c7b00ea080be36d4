//! The incidents page's handlers: sign-in, the list, one incident, its
//! support bundle. They read the store, put everything through the admin
//! plane's [`Privacy`] and hand the result to `views`.
//!
//! | path | answer |
//! |---|---|
//! | `GET /ui?outcome=&service=&identity=&page=` | the "Ready for repair mode?" panel (`rehearsal.rs`), summary, clusters and one page of incidents (HTML) |
//! | `GET /ui/incidents/{id}[?show=attributes]` | one incident: steps, snapshot summary, bundle link |
//! | `GET /ui/incidents/{id}/bundle` | the support bundle (text file) |
//! | `GET /ui/login`, `POST /ui/login` | the sign-in form; a right token sets the session cookie |
//! | `POST /ui/logout` | clears the cookie |
//!
//! A bad parameter is a 400 page naming it; an unknown incident a 404.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use maud::Markup;

use super::bundle;
use super::clusters::{self, CLUSTER_WINDOW};
use super::views::{self, Filter, SnapshotView, Summary};
use super::{AdminState, Operator, Privacy, session_cookie, token_matches};
use crate::store::{Incident, IncidentFilter, Outcome, Store, StoreError, now_rfc3339, rfc3339};

/// Incidents on one page of the list.
pub const PAGE_SIZE: i64 = 50;
/// Highest page number accepted (with [`PAGE_SIZE`], the newest 5 million).
pub const MAX_PAGE: i64 = 100_000;
/// Longest identity filter accepted, in bytes (Twilio identities are far
/// shorter).
pub const MAX_IDENTITY_FILTER_BYTES: usize = 1024;

/// An HTML answer with the page's security headers: no script may run,
/// nothing is fetched from elsewhere, no framing, no caching.
pub fn page(status: StatusCode, markup: Markup) -> Response {
    let mut resp = (status, markup.into_string()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn bad_request(message: &str, signed_in: bool) -> Response {
    page(
        StatusCode::BAD_REQUEST,
        views::error("bad request", message, signed_in),
    )
}

fn store_down(e: &StoreError, signed_in: bool) -> Response {
    tracing::warn!(error = %e, "incidents page: cannot read the store");
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        views::error(
            "store unreachable",
            "The journal store did not answer; see /readyz and the proxy's log.",
            signed_in,
        ),
    )
}

/// The 401 a browser gets on a guarded page without a valid session.
pub fn unauthorized() -> Response {
    page(StatusCode::UNAUTHORIZED, views::login(None))
}

/// A query string as (name, value) pairs, refusing names not in `allowed`
/// and names given twice.
fn params(
    query: Option<&str>,
    allowed: &[&'static str],
) -> Result<Vec<(&'static str, String)>, String> {
    let mut out: Vec<(&'static str, String)> = Vec::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let Some(name) = allowed.iter().find(|a| **a == k) else {
            return Err(format!(
                "unknown parameter `{k}`: this page takes {}",
                allowed.join(", ")
            ));
        };
        if out.iter().any(|(n, _)| n == name) {
            return Err(format!("parameter `{name}` is given more than once"));
        }
        out.push((name, v.into_owned()));
    }
    Ok(out)
}

/// The list page's filter from its query string; empty values mean "any".
pub fn parse_filter(query: Option<&str>) -> Result<Filter, String> {
    let mut f = Filter {
        page: 1,
        ..Filter::default()
    };
    for (k, v) in params(query, &["outcome", "service", "identity", "page"])? {
        if v.is_empty() {
            continue;
        }
        match k {
            "outcome" => {
                f.outcome = Some(Outcome::parse(&v).ok_or_else(|| {
                    let names: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
                    format!("outcome must be one of {}", names.join(", "))
                })?)
            }
            "service" => {
                if !crate::sid::is_sid(&v, "IS") {
                    return Err(
                        "service must be a Conversation Service SID (IS and 32 hex digits)".into(),
                    );
                }
                f.service = Some(v);
            }
            "identity" => {
                if v.len() > MAX_IDENTITY_FILTER_BYTES {
                    return Err(format!(
                        "identity is longer than {MAX_IDENTITY_FILTER_BYTES} bytes"
                    ));
                }
                f.identity = Some(v);
            }
            _ => {
                f.page = v
                    .parse::<i64>()
                    .ok()
                    .filter(|p| (1..=MAX_PAGE).contains(p))
                    .ok_or_else(|| format!("page must be a whole number from 1 to {MAX_PAGE}"))?;
            }
        }
    }
    Ok(f)
}

/// The store query of a page filter: an identity matches as given and as
/// its hash (records made with "hash" keep only the hash).
fn store_filter(f: &Filter, limit: i64, offset: i64) -> IncidentFilter {
    let identities = match &f.identity {
        Some(i) => {
            let hashed = super::hash_identity(i);
            if crate::privacy::is_hashed(i) {
                vec![i.clone()]
            } else {
                vec![i.clone(), hashed]
            }
        }
        None => Vec::new(),
    };
    IncidentFilter {
        outcome: f.outcome,
        service_sid: f.service.clone(),
        identities,
        limit,
        offset,
    }
}

fn ago(secs: i64) -> String {
    rfc3339(time::OffsetDateTime::now_utc() - time::Duration::seconds(secs))
}

async fn summary(store: &dyn Store) -> Summary {
    let counts = async {
        let hour = store.outcome_counts(&ago(3600)).await?;
        let day = store.outcome_counts(&ago(86_400)).await?;
        let of = |list: &[(Outcome, i64)], o| {
            list.iter()
                .find(|(x, _)| *x == o)
                .map(|(_, n)| *n)
                .unwrap_or(0)
        };
        Ok::<_, StoreError>(
            Outcome::ALL
                .into_iter()
                .map(|o| (o, of(&hour, o), of(&day, o)))
                .collect(),
        )
    }
    .await
    .inspect_err(|e| tracing::warn!(error = %e, "incidents page: cannot count outcomes"))
    .ok();
    let in_progress = store.pending_repairs().await.ok().map(|l| l.len());
    let store_ok = store.probe_write().await.is_ok();
    Summary {
        counts,
        in_progress,
        store_ok,
    }
}

fn shown(privacy: &Privacy, list: Vec<Incident>) -> Vec<Incident> {
    list.into_iter().map(|i| privacy.incident(i)).collect()
}

pub(super) async fn list(
    State(s): State<Arc<AdminState>>,
    operator: Option<axum::Extension<Operator>>,
    RawQuery(query): RawQuery,
) -> Response {
    let signed_in = operator.is_some() && s.token().is_some();
    let filter = match parse_filter(query.as_deref()) {
        Ok(f) => f,
        Err(m) => return bad_request(&m, signed_in),
    };
    let store = s.store.as_ref();
    let page_query = store_filter(&filter, PAGE_SIZE + 1, (filter.page - 1) * PAGE_SIZE);
    let mut incidents = match store.find_incidents(&page_query).await {
        Ok(l) => shown(&s.privacy, l),
        Err(e) => return store_down(&e, signed_in),
    };
    let has_more = incidents.len() as i64 > PAGE_SIZE;
    incidents.truncate(PAGE_SIZE as usize);
    let window = match store
        .find_incidents(&store_filter(&filter, CLUSTER_WINDOW, 0))
        .await
    {
        Ok(l) => shown(&s.privacy, l),
        Err(e) => return store_down(&e, signed_in),
    };
    let clusters = clusters::clusters(&window);
    let summary = summary(store).await;
    let list = views::list(
        &summary, &clusters, &filter, &incidents, has_more, signed_in,
    );
    page(
        StatusCode::OK,
        with_panel(list, super::rehearsal::panel(&s)),
    )
}

/// The "Ready for repair mode?" panel at the top of the page's `main`.
fn with_panel(list: Markup, panel: Markup) -> Markup {
    const MAIN: &str = "<main id=\"main\">";
    let html = list.into_string();
    maud::PreEscaped(html.replacen(MAIN, &format!("{MAIN}{}", panel.into_string()), 1))
}

fn parse_id(raw: &str) -> Result<i64, String> {
    raw.parse::<i64>()
        .ok()
        .filter(|i| *i > 0)
        .ok_or_else(|| format!("`{raw}` is not an incident number"))
}

pub(super) async fn detail(
    State(s): State<Arc<AdminState>>,
    operator: Option<axum::Extension<Operator>>,
    Path(raw): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let signed_in = operator.is_some() && s.token().is_some();
    let id = match parse_id(&raw) {
        Ok(id) => id,
        Err(m) => return bad_request(&m, signed_in),
    };
    let show_attributes = match params(query.as_deref(), &["show"]) {
        Ok(p) => match p.first().map(|(_, v)| v.as_str()) {
            None => false,
            Some("attributes") => true,
            Some(_) => return bad_request("show must be `attributes`", signed_in),
        },
        Err(m) => return bad_request(&m, signed_in),
    };
    // Like `/repairs?include=snapshot`: only an operator who presented
    // the token (so never on a plane without one).
    if show_attributes && operator.is_none() {
        return page(
            StatusCode::FORBIDDEN,
            views::error(
                "forbidden",
                "Friendly names and attributes are shown only to an authenticated operator: \
                 set admin.token (TRP_ADMIN_TOKEN) and sign in.",
                signed_in,
            ),
        );
    }
    let incident = match s.store.incident(id).await {
        Ok(Some(i)) => s.privacy.incident(i),
        Ok(None) => {
            return page(
                StatusCode::NOT_FOUND,
                views::error("not found", &format!("No incident {id}."), signed_in),
            );
        }
        Err(e) => return store_down(&e, signed_in),
    };
    let repair = match incident.repair_id {
        Some(r) => match s.store.get_repair(r).await {
            Ok(r) => r,
            Err(e) => return store_down(&e, signed_in),
        },
        None => None,
    };
    let aliases = match incident.repair_id {
        Some(r) => match s.store.repair_aliases(r).await {
            Ok(a) => a,
            Err(e) => return store_down(&e, signed_in),
        },
        None => Vec::new(),
    };
    let snapshot = match &repair {
        None => SnapshotView::None,
        Some(r) if show_attributes => SnapshotView::Full(r, s.privacy.snapshot(&r.snapshot)),
        Some(r) => SnapshotView::Summary(r),
    };
    page(
        StatusCode::OK,
        views::detail(&incident, snapshot, &aliases, signed_in),
    )
}

pub(super) async fn bundle(
    State(s): State<Arc<AdminState>>,
    operator: Option<axum::Extension<Operator>>,
    Path(raw): Path<String>,
) -> Response {
    let signed_in = operator.is_some() && s.token().is_some();
    let id = match parse_id(&raw) {
        Ok(id) => id,
        Err(m) => return bad_request(&m, signed_in),
    };
    match bundle::build(s.store.as_ref(), &s.privacy, id).await {
        Ok(Some(text)) => {
            let disposition = format!("attachment; filename=\"{}\"", bundle::file_name(id));
            (
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; charset=utf-8"),
                    ),
                    (
                        header::CONTENT_DISPOSITION,
                        HeaderValue::from_str(&disposition)
                            .unwrap_or(HeaderValue::from_static("attachment")),
                    ),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                    // Its texts are Twilio's messages and the client's
                    // identifiers: a browser must never sniff them as markup.
                    (
                        header::X_CONTENT_TYPE_OPTIONS,
                        HeaderValue::from_static("nosniff"),
                    ),
                ],
                text,
            )
                .into_response()
        }
        Ok(None) => page(
            StatusCode::NOT_FOUND,
            views::error("not found", &format!("No incident {id}."), signed_in),
        ),
        Err(e) => store_down(&e, signed_in),
    }
}

pub(super) async fn login_form(State(s): State<Arc<AdminState>>) -> Response {
    if s.token().is_none() {
        return see_other("/ui", None);
    }
    page(StatusCode::OK, views::login(None))
}

/// `POST /ui/login` with `token=…`: the right token sets the session
/// cookie and goes to the list; a wrong one is refused (401, no cookie).
pub(super) async fn login(State(s): State<Arc<AdminState>>, body: Bytes) -> Response {
    let token = s.token();
    let Some(token) = token.as_ref() else {
        return see_other("/ui", None);
    };
    let presented = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    if !token_matches(token.expose().as_bytes(), presented.as_bytes()) {
        tracing::warn!("incidents page: sign-in with a wrong token");
        return page(
            StatusCode::UNAUTHORIZED,
            views::login(Some("That is not the admin token.")),
        );
    }
    let cookie = format!(
        "{}={}; HttpOnly; SameSite=Strict; Path=/",
        super::SESSION_COOKIE,
        session_cookie(token.expose().as_bytes())
    );
    see_other("/ui", Some(cookie))
}

pub(super) async fn logout() -> Response {
    let cookie = format!(
        "{}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
        super::SESSION_COOKIE
    );
    see_other("/ui/login", Some(cookie))
}

fn see_other(to: &'static str, cookie: Option<String>) -> Response {
    let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response();
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        resp.headers_mut().insert(header::SET_COOKIE, c);
    }
    resp
}

/// The bundle's timestamp.
pub fn generated_at() -> String {
    now_rfc3339()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_bad_ones_are_named() {
        let f = parse_filter(Some("outcome=failed&service=&identity=kim&page=2")).unwrap();
        assert_eq!(f.outcome, Some(Outcome::Failed));
        assert_eq!(f.service, None);
        assert_eq!(f.identity.as_deref(), Some("kim"));
        assert_eq!(f.page, 2);
        assert_eq!(parse_filter(None).unwrap().page, 1);
        for (q, says) in [
            ("outcome=broken", "outcome must be one of"),
            ("service=IS1", "service must be"),
            ("page=0", "page must be"),
            ("page=x", "page must be"),
            ("limit=5", "unknown parameter `limit`"),
            ("page=1&page=2", "more than once"),
        ] {
            let e = parse_filter(Some(q)).unwrap_err();
            assert!(e.contains(says), "{q}: {e}");
        }
    }
}
