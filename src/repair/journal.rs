//! The journal of one repair, as the workflow and recovery write it.

use crate::metrics::Metrics;
use crate::store::{RepairState, Store};

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
}

impl<'a> Journal<'a> {
    pub fn new(store: &'a dyn Store, metrics: &'a Metrics, id: i64) -> Self {
        Journal {
            store,
            metrics,
            id,
            lost: false,
        }
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
