//! The journal of one repair, as the workflow and recovery write it.

use super::request::RepairTarget;
use crate::metrics::Metrics;
use crate::store::{RepairState, SidAlias, Store, now_rfc3339};

/// The final note of a record verified complete.
pub(super) const VERIFIED: &str = "verified complete";
/// The final note of a record whose User's DELETE Twilio refused.
pub(super) const UNTOUCHED: &str = "the delete was refused; the User was left as it was";

/// The journal of one repair: write-ahead state changes that never stop
/// the repair. With the snapshot in memory, a journal that fails after
/// the delete (disk full, file gone, database down) must not leave the
/// User deleted: the write is logged as lost, counted, and the repair goes
/// on; readiness reports the journal down through its own write probe.
pub struct Journal<'a> {
    store: &'a dyn Store,
    metrics: &'a Metrics,
    pub id: i64,
    /// A state change did not reach the journal.
    pub lost: bool,
    /// The SIDs this repair changed, as recorded (see [`Journal::alias`]).
    pub aliases: Vec<SidAlias>,
}

impl<'a> Journal<'a> {
    pub fn new(store: &'a dyn Store, metrics: &'a Metrics, id: i64) -> Self {
        Journal {
            store,
            metrics,
            id,
            lost: false,
            aliases: Vec::new(),
        }
    }

    /// Record that the repair changed `old` to `new` (the User's SID, or a
    /// membership's in `conversation`), for `crate::repair::alias`. Like a
    /// state change, a failed write never stops the repair: it is logged,
    /// and the alias is still answered to the caller of this repair.
    pub async fn alias(
        &mut self,
        target: &RepairTarget,
        conversation: Option<&str>,
        old: &str,
        new: &str,
    ) {
        if !super::alias::is_sid_change(old, new) {
            return;
        }
        let alias = SidAlias {
            created_at: now_rfc3339(),
            repair_id: self.id,
            account_sid: target.account_sid.clone(),
            service_sid: target.service_sid.clone(),
            service_base: target.service_base.clone(),
            conversation_sid: conversation.map(str::to_string),
            old_sid: old.to_string(),
            new_sid: new.to_string(),
        };
        if let Err(e) = self.store.insert_alias(&alias).await {
            self.metrics.journal_write_failed();
            tracing::error!(
                repair_id = self.id,
                error = %e,
                "cannot journal a SID alias; requests naming the old SID will not be rewritten"
            );
        }
        self.aliases.push(alias);
    }

    pub async fn set(&mut self, state: RepairState, note: Option<&str>) {
        if let Err(e) = self.store.set_repair_state(self.id, state, note).await {
            self.lost = true;
            self.metrics.journal_write_failed();
            tracing::error!(
                repair_id = self.id,
                state = %state,
                error = %e,
                "journal write failed; the repair goes on from the snapshot in memory"
            );
        }
    }
}
