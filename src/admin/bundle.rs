//! The support bundle: one plain-text file about one incident that an
//! operator attaches to a Twilio Support ticket (`incidents bundle --id N`
//! and the incidents page's download link write the same text), with the
//! clusters of [`super::clusters`].
//!
//! What a bundle holds is an allow-list, written out field by field below:
//! account, service, conversation, identity (or its hash, the setting
//! named), timestamps, every call's method, path, status,
//! `Twilio-Request-Id`, error code and message, the proxy version, the
//! User's `date_created` and the SIDs the repair changed (old -> new). Never a credential (not even the acting
//! credential's SID), never a friendly name or attributes: the journal's
//! snapshot is not read here beyond its SIDs.

use std::fmt::Write;

use super::Privacy;
use super::clusters::{CLUSTER_WINDOW, Cluster, clusters};
use crate::store::{
    Incident, IncidentFilter, RepairRecord, SidAlias, Store, StoreError, now_rfc3339,
};

/// The bundle of incident `id` as [`render`] writes it, with the
/// clusters of the newest incidents of its service; `None`: no such
/// incident.
pub async fn build(
    store: &dyn Store,
    privacy: &Privacy,
    id: i64,
) -> Result<Option<String>, StoreError> {
    let Some(incident) = store.incident(id).await? else {
        return Ok(None);
    };
    let incident = privacy.incident(incident);
    let repair = match incident.repair_id {
        Some(r) => store.get_repair(r).await?,
        None => None,
    };
    let aliases = match incident.repair_id {
        Some(r) => store.repair_aliases(r).await?,
        None => Vec::new(),
    };
    let recent = store
        .find_incidents(&IncidentFilter {
            service_sid: incident.service_sid.clone(),
            limit: CLUSTER_WINDOW,
            ..IncidentFilter::default()
        })
        .await?;
    let recent: Vec<Incident> = recent.into_iter().map(|i| privacy.incident(i)).collect();
    Ok(Some(render(
        &incident,
        repair.as_ref(),
        &aliases,
        privacy,
        &clusters(&recent),
        &now_rfc3339(),
    )))
}

/// The file name a bundle is downloaded as.
pub fn file_name(id: i64) -> String {
    format!("twilio-repair-proxy-incident-{id}.txt")
}

/// The bundle of one incident (already shown through `privacy`), with its
/// journal record when it has one and the clusters of recent incidents.
pub fn render(
    incident: &Incident,
    repair: Option<&RepairRecord>,
    aliases: &[SidAlias],
    privacy: &Privacy,
    clusters: &[Cluster],
    generated_at: &str,
) -> String {
    let i = incident;
    let dash = |v: Option<&str>| v.filter(|s| !s.is_empty()).unwrap_or("-").to_string();
    let mut o = String::new();
    let _ = writeln!(o, "twilio-repair-proxy support bundle");
    let _ = writeln!(
        o,
        "About: a Twilio Conversations Participant create answered 404 with error 20404,\n\
         intercepted by twilio-repair-proxy (a reverse proxy in front of the Twilio REST API)."
    );
    let _ = writeln!(o);
    let field = |o: &mut String, k: &str, v: &str| {
        let _ = writeln!(o, "{k:<28} {v}");
    };
    field(&mut o, "proxy version:", env!("CARGO_PKG_VERSION"));
    field(&mut o, "bundle generated at:", generated_at);
    field(&mut o, "incident:", &i.id.to_string());
    field(&mut o, "intercepted at:", &i.at);
    field(&mut o, "outcome:", i.outcome.as_str());
    field(&mut o, "account SID:", &dash(i.account_sid.as_deref()));
    field(&mut o, "service SID:", &dash(i.service_sid.as_deref()));
    field(&mut o, "conversation SID:", &i.conversation_sid);
    let identity_label = if privacy.hashing() {
        "identity (hashed):"
    } else {
        "identity:"
    };
    field(&mut o, identity_label, &dash(i.identity.as_deref()));
    field(&mut o, "identity setting:", privacy.setting());
    field(
        &mut o,
        "20404 Twilio-Request-Id:",
        &dash(i.request_id.as_deref()),
    );
    field(
        &mut o,
        "User date_created:",
        i.user_date_created()
            .unwrap_or("not read (no fetch-user step)"),
    );
    if let Some(d) = &i.detail {
        field(&mut o, "detail:", d);
    }
    if let Some(r) = repair {
        field(
            &mut o,
            "repair journal record:",
            &format!(
                "{} ({}; created {}, updated {})",
                r.id, r.state, r.created_at, r.updated_at
            ),
        );
        field(
            &mut o,
            "User SID before repair:",
            &dash(r.snapshot.user_sid.as_deref()),
        );
        field(
            &mut o,
            "other memberships restored:",
            &r.snapshot.memberships.len().to_string(),
        );
    }
    if !aliases.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(o, "SIDs the repair changed (old -> new):");
        for a in aliases {
            let _ = writeln!(
                o,
                "  {} -> {}  ({}, recorded {})",
                a.old_sid,
                a.new_sid,
                a.conversation_sid
                    .as_deref()
                    .map_or_else(|| "the User".to_string(), |c| format!("in {c}")),
                a.created_at
            );
        }
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "Calls the proxy made to Twilio for this incident ({}):",
        i.steps.len()
    );
    for (n, s) in i.steps.iter().enumerate() {
        let status = s
            .status
            .map(|c| c.to_string())
            .unwrap_or_else(|| "no answer".into());
        let _ = writeln!(
            o,
            "{:>3}. {} {} {}",
            n + 1,
            s.step,
            dash(s.method.as_deref()),
            dash(s.path.as_deref())
        );
        let _ = writeln!(
            o,
            "     status {status}  Twilio-Request-Id {}  at {}  took {}",
            dash(s.twilio_request_id.as_deref()),
            dash(s.at.as_deref()),
            s.duration_ms
                .map(|d| format!("{d} ms"))
                .unwrap_or_else(|| "-".into()),
        );
        if s.error_code.is_some() || s.error_message.is_some() {
            let _ = writeln!(
                o,
                "     error {}: {}",
                s.error_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into()),
                dash(s.error_message.as_deref())
            );
        }
        if let Some(d) = &s.date_created {
            let _ = writeln!(o, "     date_created {d}");
        }
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "Affected identities by their User's creation date (recent incidents of this service):"
    );
    if clusters.is_empty() {
        let _ = writeln!(o, "  none recorded");
    }
    for c in clusters {
        let _ = writeln!(
            o,
            "  {}: {} identit{} ({} incident{})",
            c.user_created_on,
            c.identities,
            if c.identities == 1 { "y" } else { "ies" },
            c.incidents,
            if c.incidents == 1 { "" } else { "s" }
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "This file holds no credential and no User or participant attributes or friendly names."
    );
    o
}
