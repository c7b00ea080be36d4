//! May the workflow repair this identity at all? Mode, service lists and
//! the loop guard (at most `repair.max_repairs_per_window` repairs of one
//! identity per window). A refusal is `disabled`, with the reason.

use crate::config::{RepairConfig, RepairMode};
use crate::store::Store;

/// Why this identity may not be repaired now: the configuration's refusal
/// ([`by_config`]), then the loop guard (read from the journal).
pub async fn refusal(
    config: &RepairConfig,
    store: &dyn Store,
    service_sid: &str,
    identity: &str,
) -> Option<String> {
    if let Some(reason) = by_config(config, service_sid) {
        return Some(reason);
    }
    let window =
        time::Duration::seconds(i64::try_from(config.repair_window_secs).unwrap_or(i64::MAX));
    let since = time::OffsetDateTime::now_utc()
        .checked_sub(window)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    match store
        .count_repairs_since(service_sid, identity, &crate::store::rfc3339(since))
        .await
    {
        Ok(n) if n >= i64::from(config.max_repairs_per_window) => Some(format!(
            "repair limit reached: {n} repairs of this identity within {} s; reported, not repaired",
            config.repair_window_secs
        )),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %e, "journal unavailable: not repairing");
            Some("journal unavailable: the User was not touched".into())
        }
    }
}

/// The refusal the configuration alone decides (mode, service lists): no
/// journal needed, so the offline `repair --dry-run` can say it too.
pub fn by_config(config: &RepairConfig, service_sid: &str) -> Option<String> {
    // Read once, before a repair's first write: a reload to `off` or
    // `check-only` stops every repair that has not got that far (a
    // workflow that intercepted its create before the reload, an operator
    // repair), and none that has (its journal record is finished, so the
    // User is back).
    match config.mode {
        RepairMode::Repair => {}
        RepairMode::CheckOnly => {
            return Some("mode check-only: the User was not repaired".into());
        }
        RepairMode::Off => return Some("mode off: the User was not repaired".into()),
    }
    if !config.allow_services.is_empty() && !config.allow_services.iter().any(|s| s == service_sid)
    {
        return Some("service not in repair.allow_services".into());
    }
    if config.deny_services.iter().any(|s| s == service_sid) {
        return Some("service in repair.deny_services".into());
    }
    None
}
