//! The integration tests: one binary, one module per area, sharing the
//! harness in `tests/common`. A test that must own its process (or a
//! resource every other test uses) lives in its own binary under `tests/`
//! instead, with a comment at its top saying why: `tests/fleet_outage.rs`
//! and `tests/repair_crash_matrix.rs` stop the shared PostgreSQL cluster.

#[path = "../common/mod.rs"]
mod common;

mod admin;
mod deploy;
mod fleet;
mod hardening;
mod hardening_repair;
mod kustomize;
mod metrics;
mod module_graph;
mod operator;
mod parking;
mod pool;
mod process;
mod proxy;
mod rehearsal;
mod reload;
mod repair;
mod repair_crash;
mod repair_invariant;
mod sdk;
mod selftest;
mod shield;
mod sid_alias;
mod tls_listener;
mod tracing;
mod transparency;
mod ui;
