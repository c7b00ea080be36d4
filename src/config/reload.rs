//! Reload: SIGHUP, or a change of the `--config` file on disk, re-reads
//! the configuration with the same layering as at start-up (file, the
//! process's environment, its flags), validates it whole, and hands it to
//! the proxy's `apply` only when it is valid. An invalid one changes
//! nothing: one line names the file and the error, and the last good
//! configuration stays. SIGHUP never ends the process (`crate::reload`
//! turns it into a notice this module, and the TLS listener, follow).
//!
//! What belongs here: when to reload (a notice, the file's fingerprint
//! polled every [`WATCH_INTERVAL`], which also catches the atomic symlink
//! swap Kubernetes makes of a mounted ConfigMap), loading and validating,
//! and which settings cannot change live ([`needs_restart`]). What a new
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

/// The settings a running proxy cannot change: each is named in one
/// "needs a restart" line and otherwise ignored.
pub fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut differ = |key: &'static str, a: String, b: String| {
        if a != b {
            keys.push(key);
        }
    };
    differ("listen", old.listen.to_string(), new.listen.to_string());
    differ(
        "admin_listen",
        old.admin_listen.to_string(),
        new.admin_listen.to_string(),
    );
    differ("store", old.store.clone(), new.store.clone());
    differ(
        "limits.worker_threads",
        format!("{:?}", old.limits.worker_threads),
        format!("{:?}", new.limits.worker_threads),
    );
    differ(
        "log.format",
        format!("{:?}", old.log.format),
        format!("{:?}", new.log.format),
    );
    let off = |c: &Config| c.repair.mode == super::RepairMode::Off;
    if off(old) && !off(new) {
        keys.push("repair.mode (from off)");
    }
    keys
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
/// configuration to `apply` (with the one before it); `on_result` learns
/// every outcome. Runs until the task is dropped.
pub async fn watch(
    file: Option<PathBuf>,
    mut current: Config,
    mut notices: tokio::sync::watch::Receiver<u64>,
    load: impl Fn() -> Result<Config, ConfigError> + Send,
    apply: impl Fn(&Config, &Config) + Send,
    on_result: impl Fn(ReloadResult) + Send,
) {
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
        let result = match load() {
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
                let restart = needs_restart(&current, &new);
                if !restart.is_empty() {
                    tracing::warn!(keys = ?restart, "configuration reload: these settings need a restart; the running values stay");
                }
                apply(&current, &new);
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
        assert!(needs_restart(&old, &new).is_empty(), "both live");
        new.listen = "127.0.0.1:1".parse().unwrap();
        new.store = "sqlite://elsewhere.db".into();
        assert_eq!(needs_restart(&old, &new), ["listen", "store"]);
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
