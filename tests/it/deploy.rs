//! What `deploy/` ships for operators is checked against the real thing:
//! the alert rules pass `promtool check rules` and their unit tests
//! (`promtool test rules`), every alert's `runbook_url` names a section of
//! `docs/runbook.md`, every metric the alert rules and the Grafana
//! dashboard query is exported by a running proxy's `/metrics` after real
//! traffic (a pass-through call and a repair), and that exposition passes
//! `promtool check metrics` (its parser and its naming lint).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::common::*;
use twilio_repair_proxy::emulator::FaultMode;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// promtool, from `TRP_TEST_PROMTOOL` (set by `scripts/test-setup.sh`) or
/// the PATH; a clear failure when there is none.
fn promtool() -> String {
    let p = std::env::var("TRP_TEST_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let found = std::process::Command::new(&p)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "promtool not found ({p}): run `eval \"$(bash scripts/test-setup.sh)\"`, which installs \
         Debian's prometheus package, or set TRP_TEST_PROMTOOL"
    );
    p
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let promtool = promtool();
    for args in [
        ["check", "rules", "alerts.yaml"],
        ["test", "rules", "alerts.test.yaml"],
    ] {
        let out = std::process::Command::new(&promtool)
            .args(args)
            .current_dir(repo("deploy/prometheus"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The anchors of a Markdown file's headings, as GitHub makes them
/// (lower case, spaces to `-`, other punctuation dropped).
fn anchors(markdown: &str) -> BTreeSet<String> {
    markdown
        .lines()
        .filter_map(|l| {
            l.trim_start_matches('#')
                .strip_prefix(' ')
                .filter(|_| l.starts_with('#'))
        })
        .map(|h| {
            h.trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

#[test]
fn every_alert_has_a_runbook_url_naming_a_section_of_the_runbook() {
    let alerts = std::fs::read_to_string(repo("deploy/prometheus/alerts.yaml")).unwrap();
    let runbook = anchors(&std::fs::read_to_string(repo("docs/runbook.md")).unwrap());
    let rules = alerts
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    let urls: Vec<&str> = alerts
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook_url:"))
        .map(|v| v.trim().trim_matches('"'))
        .collect();
    assert_eq!(urls.len(), rules, "one runbook_url per alert");
    assert!(
        !alerts.contains("runbook:"),
        "the annotation is runbook_url"
    );
    for url in urls {
        let anchor = url
            .strip_prefix("docs/runbook.md#")
            .unwrap_or_else(|| panic!("{url}: not a section of docs/runbook.md"));
        assert!(
            runbook.contains(anchor),
            "{url}: no such section in {runbook:?}"
        );
    }
}

/// Every `trp_…` and `process_…` name in a text (PromQL expressions of a
/// file); `up` is Prometheus's own.
fn metric_names(text: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"\b(trp|process)_[a-z_]+\b").unwrap();
    re.find_iter(text).map(|m| m.as_str().to_string()).collect()
}

/// The `expr` values of the alert rules and the dashboard's targets.
fn queried_names() -> BTreeSet<String> {
    let alerts = std::fs::read_to_string(repo("deploy/prometheus/alerts.yaml")).unwrap();
    let exprs: String = alerts
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut names = metric_names(&exprs);
    assert!(
        names.len() >= 5,
        "too few metrics in alerts.yaml: {names:?}"
    );
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("deploy/grafana/dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut n = 0;
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            names.extend(metric_names(t["expr"].as_str().unwrap()));
            n += 1;
        }
    }
    assert!(n >= 10, "the dashboard has {n} queries");
    names
}

#[tokio::test]
async fn every_metric_the_alerts_and_dashboard_query_is_exported() {
    let st = Scene::new()
        .user("mia")
        .faulty(FaultMode::Block)
        .stack()
        .await;
    let is = st.emu.service().await;
    let ch = st.emu.conversation(Some(&is)).await;
    st.emu.add_and_remove(Some(&is), &ch, "mia").await;
    let (status, outcome, _) = st.create(Some(&is), &ch, &[("Identity", "mia")]).await;
    assert_eq!((status, outcome.as_deref()), (201, Some("repaired")));
    let text = reqwest::get(st.proxy.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let exported: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect();
    let missing: Vec<String> = queried_names()
        .into_iter()
        .filter(|n| !exported.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "queried but not exported: {missing:?}\nexported: {exported:?}"
    );
    assert!(text.contains("trp_store_ready 1"), "{text}");
    assert!(text.contains("trp_ready 1"), "{text}");
    // The exposition parses, and follows Prometheus's naming conventions
    // (promtool's lint: counters end in _total, units in base units, ...).
    let mut lint = std::process::Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    lint.stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    st.proxy.stop().await;
}
