//! Reload: SIGHUP, or a change of the `--config` file on disk, re-reads
//! the configuration with the same layering as at start-up (file, the
//! process's environment, its flags), validates it whole, and hands it to
//! the proxy's `apply` only when it is valid. An invalid one changes
//! nothing: one line names the file and the error, and the last good
//! configuration stays. `apply` builds everything it can fail on before it
//! swaps anything, so its refusal also changes nothing and counts as
//! `invalid`. SIGHUP never ends the process (`crate::reload`
//! turns it into a notice this module, and the TLS listener, follow).
//!
//! What belongs here: when to reload (a notice, the file's fingerprint
//! polled every [`WATCH_INTERVAL`], which also catches the atomic symlink
//! swap Kubernetes makes of a mounted ConfigMap), loading and validating,
//! and which settings change live ([`LIVE`]) and which need a restart
//! ([`needs_restart`]). What a new
//! configuration changes is the caller's (`crate::app`): this module knows
//! no consumer.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::{Config, ConfigError};

/// How often the `--config` file is looked at (a change is noticed within
/// this, well under the 2 s an operator expects).
pub const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// What a reload came to, for the log and `trp_config_reloads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    Applied,
    Invalid,
}

impl ReloadResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Applied => "applied",
            ReloadResult::Invalid => "invalid",
        }
    }
}

/// The settings a running proxy changes for its next request or repair
/// (README, "Changing settings while it runs"): a key here, or any key
/// below one here (`shield` covers `shield.max_wait_ms`). Every other key
/// needs a restart ([`needs_restart`]), so a setting added later is
/// restart-only until its consumer reads a reloaded value.
pub const LIVE: &[&str] = &[
    // The routing table and the hosts (`crate::routing::Routes`).
    "upstream",
    "default_upstream",
    "route",
    "allowed_hosts",
    "proxy_hosts",
    "reserved_prefixes",
    // Link rewriting (`crate::rewrite::LinkBase`).
    "public_base_url",
    // The timeouts of one request (`crate::forward::Forwarder`).
    "limits.response_header_timeout_ms",
    "limits.idle_timeout_ms",
    // The 429 shield (`crate::shield::Shield`). Not `metrics.account_labels`:
    // a cap's series are labelled when it is built, so flipping them would
    // build a second cap beside the one whose slots are held.
    "shield",
    // The repair's mode and policy (`Repairer::set_policy`).
    "repair.mode",
    "repair.allow_services",
    "repair.deny_services",
    "repair.max_repairs_per_window",
    "repair.repair_window_secs",
    "admin.token",
    "log.level",
];

/// Whether `key` (dotted) changes live: see [`LIVE`].
pub fn is_live(key: &str) -> bool {
    LIVE.iter().any(|live| {
        key.strip_prefix(live)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
    })
}

/// The settings of `new` that differ from the `running` ones and cannot
/// change live: each is named in one "needs a restart" line and otherwise
/// ignored. Compared key by key on the configurations' TOML form, so no
/// key can be forgotten here.
pub fn needs_restart(running: &Config, new: &Config) -> Vec<String> {
    let (Ok(a), Ok(b)) = (toml::Value::try_from(running), toml::Value::try_from(new)) else {
        return vec!["(the configuration cannot be compared)".to_string()];
    };
    let mut keys = Vec::new();
    differing(&a, &b, "", &mut keys);
    keys.retain(|k| !is_live(k));
    let off = |c: &Config| c.repair.mode == super::RepairMode::Off;
    if off(running) && !off(new) {
        // No repairer was built: turning the repair on needs one.
        keys.push("repair.mode (from off)".to_string());
    }
    keys
}

/// The dotted keys whose values differ between two tables (an array is
/// one value; a key present on one side only differs).
fn differing(a: &toml::Value, b: &toml::Value, prefix: &str, out: &mut Vec<String>) {
    let path = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match (a, b) {
        (toml::Value::Table(a), toml::Value::Table(b)) => {
            for (k, va) in a {
                match b.get(k) {
                    Some(vb) => differing(va, vb, &path(k), out),
                    None => out.push(path(k)),
                }
            }
            for k in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(path(k));
            }
        }
        (a, b) if a != b => out.push(prefix.to_string()),
        _ => {}
    }
}

/// A file's identity and age: a replaced file (a new inode behind the
/// same path, a symlink pointing elsewhere) or a rewritten one differ.
fn fingerprint(path: &std::path::Path) -> Option<(u64, u64, SystemTime, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.modified().ok()?, m.len()))
}

/// Watch the reload notices (`crate::reload`: each SIGHUP) and changes
/// of `file`, reloading with `load` and handing each valid new
/// configuration to `apply` (with the one before it; an `Err` from it
/// means nothing was changed); `on_result` learns every outcome. Runs
/// until the task is dropped.
pub async fn watch<E: std::fmt::Display>(
    file: Option<PathBuf>,
    mut current: Config,
    mut notices: tokio::sync::watch::Receiver<u64>,
    load: impl Fn() -> Result<Config, ConfigError> + Send,
    apply: impl Fn(&Config, &Config) -> Result<(), E> + Send,
    on_result: impl Fn(ReloadResult) + Send,
) {
    // What the process started with: the restart-only settings keep these
    // values whatever the later files say.
    let running = current.clone();
    let mut notices_open = true;
    let mut seen = file.as_deref().and_then(fingerprint);
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let why = tokio::select! {
            changed = notices.changed(), if notices_open => {
                if changed.is_err() {
                    notices_open = false;
                    continue;
                }
                "SIGHUP"
            }
            _ = tick.tick() => {
                let now = file.as_deref().and_then(fingerprint);
                if file.is_none() || now == seen || now.is_none() {
                    continue;
                }
                seen = now;
                "the configuration file changed"
            }
        };
        let loaded = load().map_err(|e| e.to_string()).and_then(|new| {
            apply(&current, &new)
                .map(|()| new)
                .map_err(|e| e.to_string())
        });
        let result = match loaded {
            Err(e) => {
                tracing::warn!(
                    file = %file.as_deref().map(|p| p.display().to_string()).unwrap_or_else(|| "-".into()),
                    error = %e,
                    trigger = why,
                    "configuration not reloaded: the last good one stays"
                );
                ReloadResult::Invalid
            }
            Ok(new) => {
                let restart = needs_restart(&running, &new);
                if !restart.is_empty() {
                    tracing::warn!(
                        keys = %restart.join(", "),
                        "configuration reload: needs a restart: these settings keep their running values"
                    );
                }
                current = new;
                tracing::info!(trigger = why, "configuration reloaded");
                ReloadResult::Applied
            }
        };
        on_result(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_store_workers_and_log_format_need_a_restart() {
        let old = Config::defaults();
        let mut new = old.clone();
        assert!(needs_restart(&old, &new).is_empty());
        new.repair.mode = super::super::RepairMode::CheckOnly;
        new.log.level = "debug".into();
        new.proxy_hosts.push("proxy.example".into());
        new.public_base_url = super::super::PublicBaseUrl::Off;
        new.limits.response_header_timeout_ms = 5;
        new.shield.max_concurrent_per_account = 3;
        new.route.push(super::super::Route {
            prefix: "/v2".into(),
            upstream: "https://example.com".into(),
        });
        new.admin.token = Some(super::super::AdminToken::new("added-0123456789abcdef"));
        assert!(needs_restart(&old, &new).is_empty(), "all live");
        new.listen = "127.0.0.1:1".parse().unwrap();
        new.store = "sqlite://elsewhere.db".into();
        new.limits.connect_timeout_ms = 7;
        new.repair.step_timeout_ms = 9;
        new.log.format = super::super::LogFormat::Json;
        new.upstream_ca_file = Some("/ca.pem".into());
        new.metrics.account_labels = true;
        let mut keys = needs_restart(&old, &new);
        keys.sort();
        assert_eq!(
            keys,
            [
                "limits.connect_timeout_ms",
                "listen",
                "log.format",
                "metrics.account_labels",
                "repair.step_timeout_ms",
                "store",
                "upstream_ca_file"
            ]
        );
    }

    #[test]
    fn turning_the_repair_on_from_off_needs_a_restart() {
        let mut old = Config::defaults();
        old.repair.mode = super::super::RepairMode::Off;
        let new = Config::defaults();
        assert_eq!(needs_restart(&old, &new), ["repair.mode (from off)"]);
        assert!(needs_restart(&new, &old).is_empty(), "off is live");
    }

    #[test]
    fn a_live_key_covers_its_subkeys_only() {
        assert!(is_live("shield.max_wait_ms"));
        assert!(is_live("route"));
        assert!(!is_live("routes"));
        assert!(!is_live("limits.idle_park_ms"));
        assert!(!is_live("admin.max_connections"));
    }

    #[test]
    fn a_replaced_file_has_another_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.toml");
        std::fs::write(&a, "x = 1\n").unwrap();
        let before = fingerprint(&a).unwrap();
        let b = dir.path().join("b.toml");
        std::fs::write(&b, "x = 1\n").unwrap();
        std::fs::rename(&b, &a).unwrap();
        assert_ne!(fingerprint(&a).unwrap(), before, "a new inode");
        assert!(fingerprint(&dir.path().join("none")).is_none());
    }
}
