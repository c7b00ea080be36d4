//! `incidents export`: every recorded incident as JSON or CSV, for Twilio
//! Support, under the admin plane's privacy rule.

use std::io::Write;

use super::CommandError;
use crate::admin::Privacy;
use crate::cli::{ExportFormat, IncidentsCommand};
use crate::store;

pub async fn run(cmd: IncidentsCommand, out: &mut dyn Write) -> Result<(), CommandError> {
    let IncidentsCommand::Export(args) = cmd;
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
                "id,at,account_sid,service_sid,conversation_sid,identity,outcome,detail,repair_id,twilio_request_ids"
            )?;
            for i in &list {
                let ids: Vec<String> = i
                    .steps
                    .iter()
                    .filter_map(|s| s.twilio_request_id.clone())
                    .collect();
                writeln!(
                    out,
                    "{},{},{},{},{},{},{},{},{},{}",
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
                )?;
            }
        }
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
