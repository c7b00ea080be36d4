//! The shield's per-account series (`metrics.account_labels = true`): an
//! `account` label holding a SID, which the operator chose to see, for the
//! first [`MAX_LABELLED_ACCOUNTS`] accounts seen; later ones are counted in
//! the `class` series only.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Most accounts given series of their own with `metrics.account_labels`;
/// later ones are counted in the `class` series only.
pub const MAX_LABELLED_ACCOUNTS: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AccountLabels {
    account: String,
}

/// One per-account event.
#[derive(Debug, Clone, Copy)]
pub(super) enum AccountEvent {
    Retry,
    BudgetExhausted,
    QueueFull,
    QueueEnter,
    QueueLeave,
}

/// One account's series, looked up once when the account is first seen.
#[derive(Debug)]
struct Series {
    retries: Counter,
    budget_exhausted: Counter,
    queue_full: Counter,
    queue_length: Gauge,
}

#[derive(Debug, Default)]
pub(super) struct AccountSeries {
    retries: Family<AccountLabels, Counter>,
    budget_exhausted: Family<AccountLabels, Counter>,
    queue_full: Family<AccountLabels, Counter>,
    queue_length: Family<AccountLabels, Gauge>,
    /// The accounts given series, by SID (looked up by `&str`: no
    /// allocation for an account already seen).
    seen: Mutex<HashMap<String, Series>>,
}

impl AccountSeries {
    pub(super) fn register(&self, r: &mut Registry) {
        const HELP: &str = "Per-account shield series (metrics.account_labels)";
        r.register("trp_shield_account_retries", HELP, self.retries.clone());
        r.register(
            "trp_shield_account_budget_exhausted",
            HELP,
            self.budget_exhausted.clone(),
        );
        r.register(
            "trp_shield_account_queue_full",
            HELP,
            self.queue_full.clone(),
        );
        r.register(
            "trp_shield_account_queue_length",
            HELP,
            self.queue_length.clone(),
        );
    }

    pub(super) fn record(&self, account: &str, event: AccountEvent) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        if !seen.contains_key(account) {
            if seen.len() >= MAX_LABELLED_ACCOUNTS {
                return;
            }
            let labels = AccountLabels {
                account: account.to_string(),
            };
            let series = Series {
                retries: self.retries.get_or_create_owned(&labels),
                budget_exhausted: self.budget_exhausted.get_or_create_owned(&labels),
                queue_full: self.queue_full.get_or_create_owned(&labels),
                queue_length: self.queue_length.get_or_create_owned(&labels),
            };
            seen.insert(labels.account, series);
        }
        let Some(s) = seen.get(account) else { return };
        match event {
            AccountEvent::Retry => {
                s.retries.inc();
            }
            AccountEvent::BudgetExhausted => {
                s.budget_exhausted.inc();
            }
            AccountEvent::QueueFull => {
                s.queue_full.inc();
            }
            AccountEvent::QueueEnter => {
                s.queue_length.inc();
            }
            AccountEvent::QueueLeave => {
                s.queue_length.dec();
            }
        }
    }
}
