//! Build script: the commit the binary is built from, for the
//! `trp_build_info{commit}` metric (`TWILIO_REPAIR_PROXY_COMMIT` at compile
//! time; not `TRP_…`, which the configuration reads, and cargo also sets
//! this variable when it runs the tests).
//!
//! Taken from `TWILIO_REPAIR_PROXY_COMMIT` in the build's environment when
//! set (a build without `.git`), else from `git rev-parse --short=12 HEAD`,
//! else `unknown` (a source tarball, no git installed). Only 7 to 40 hex
//! digits are ever used.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?;
    Some(s.trim().to_string())
}

/// A commit id as a label value: 7 to 40 hex digits, nothing else.
fn commit_id(s: &str) -> Option<String> {
    let ok = (7..=40).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| s.to_ascii_lowercase())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=TWILIO_REPAIR_PROXY_COMMIT");
    let from_env = std::env::var("TWILIO_REPAIR_PROXY_COMMIT")
        .ok()
        .and_then(|s| commit_id(s.trim()));
    let commit = from_env.or_else(|| {
        // Rebuild when HEAD moves: HEAD itself (a checkout) and the branch
        // it names (a commit), wherever this checkout keeps them (a
        // worktree's HEAD is not under `.git/`). Only paths that exist: a
        // missing one would rerun this script on every build.
        let branch = git(&["symbolic-ref", "-q", "HEAD"]);
        for path in ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
            if let Some(p) = git(&["rev-parse", "--git-path", path]) {
                if std::path::Path::new(&p).exists() {
                    println!("cargo:rerun-if-changed={p}");
                }
            }
        }
        git(&["rev-parse", "--short=12", "HEAD"]).and_then(|s| commit_id(&s))
    });
    let commit = commit.unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=TWILIO_REPAIR_PROXY_COMMIT={commit}");
}
