//! `incidents export`: every recorded incident as JSON or CSV (or how the
//! affected identities cluster by their User's creation date), and
//! `incidents bundle`: one incident's support bundle, both for Twilio
//! Support and under the admin plane's privacy rule.

use std::io::Write;

use super::CommandError;
use crate::admin::{Privacy, bundle, clusters};
use crate::cli::{BundleArgs, ExportArgs, ExportFormat, IncidentsCommand};
use crate::store;

pub async fn run(cmd: IncidentsCommand, out: &mut dyn Write) -> Result<(), CommandError> {
    match cmd {
        IncidentsCommand::Export(args) => export(args, out).await,
        IncidentsCommand::Bundle(args) => write_bundle(args, out).await,
    }
}

async fn export(args: ExportArgs, out: &mut dyn Write) -> Result<(), CommandError> {
    let config = args.serve.load()?;
    let store = store::open_reader(&config.store, &config.store_options).await?;
    // The same privacy rule as the admin plane: with
    // `repair.incident_identity = "hash"`, no plain identity leaves.
    let privacy = Privacy::new(config.repair.incident_identity);
    let list: Vec<_> = store
        .incidents(args.limit)
        .await?
        .into_iter()
        .map(|i| privacy.incident(i))
        .collect();
    match args.format {
        ExportFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?,
        ExportFormat::Csv => {
            writeln!(
                out,
                "id,at,account_sid,service_sid,conversation_sid,identity,outcome,detail,repair_id,twilio_request_ids,request_id,user_date_created"
            )?;
            for i in &list {
                let ids: Vec<String> = i
                    .steps
                    .iter()
                    .filter_map(|s| s.twilio_request_id.clone())
                    .collect();
                writeln!(
                    out,
                    "{},{},{},{},{},{},{},{},{},{},{},{}",
                    i.id,
                    csv(&i.at),
                    csv(i.account_sid.as_deref().unwrap_or("")),
                    csv(i.service_sid.as_deref().unwrap_or("")),
                    csv(&i.conversation_sid),
                    csv(i.identity.as_deref().unwrap_or("")),
                    csv(i.outcome.as_str()),
                    csv(i.detail.as_deref().unwrap_or("")),
                    i.repair_id.map(|r| r.to_string()).unwrap_or_default(),
                    csv(&ids.join(" ")),
                    csv(i.request_id.as_deref().unwrap_or("")),
                    csv(i.user_date_created().unwrap_or("")),
                )?;
            }
        }
        ExportFormat::Clusters => {
            writeln!(out, "user_created_on,identities,incidents")?;
            for c in clusters::clusters(&list) {
                writeln!(
                    out,
                    "{},{},{}",
                    csv(&c.user_created_on),
                    c.identities,
                    c.incidents
                )?;
            }
        }
    }
    Ok(())
}

async fn write_bundle(args: BundleArgs, out: &mut dyn Write) -> Result<(), CommandError> {
    let config = args.serve.load()?;
    let store = store::open_reader(&config.store, &config.store_options).await?;
    let privacy = Privacy::new(config.repair.incident_identity);
    let text = bundle::build(store.as_ref(), &privacy, args.id)
        .await?
        .ok_or(CommandError::NoIncident { id: args.id })?;
    match args.output {
        Some(path) => {
            std::fs::write(&path, text)?;
            writeln!(out, "{}", path.display())?;
        }
        None => out.write_all(text.as_bytes())?,
    }
    Ok(())
}

/// RFC 4180 quoting.
fn csv(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
