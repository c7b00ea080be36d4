//! What one request reads of the configuration, as one snapshot: the
//! routing table and hosts, the forwarder's per-request timeouts, link
//! rewriting and the 429 shield. A reload builds a whole new [`Settings`]
//! per worker and swaps it in ([`crate::proxy::ProxyState::set_settings`]);
//! a request loads the snapshot once, when it arrives, and keeps it to its
//! end, so it never sees half of one configuration and half of another,
//! and a request in flight finishes under the settings it started with.
//!
//! What does not belong here: what the reload reads or checks
//! (`crate::config::reload`), and settings the repair workflow reads (its
//! policy is swapped in `crate::repair::Repairer`).

use std::sync::Arc;

use crate::config::Config;
use crate::forward::Forwarder;
use crate::rewrite::LinkBase;
use crate::routing::Routes;
use crate::shield::Shield;

/// One worker's request settings, built whole from one configuration.
pub struct Settings {
    pub(super) routes: Routes,
    /// The worker's upstream pool with this configuration's timeouts.
    pub(super) forwarder: Forwarder,
    /// Link rewriting (`public_base_url`).
    pub(super) links: LinkBase,
    /// The 429 shield, when any part of it is on.
    pub(super) shield: Option<Arc<Shield>>,
}

impl Settings {
    pub fn new(
        routes: Routes,
        forwarder: Forwarder,
        links: LinkBase,
        shield: Option<Arc<Shield>>,
    ) -> Settings {
        Settings {
            routes,
            forwarder,
            links,
            shield,
        }
    }

    /// The same worker (its upstream pool, its listener's TLS) under a
    /// reloaded configuration: `routes`, `links` and `shield` are built
    /// once per reload and shared by every worker's snapshot.
    pub fn reconfigured(
        &self,
        config: &Config,
        routes: &Routes,
        links: &LinkBase,
        shield: &Option<Arc<Shield>>,
    ) -> Settings {
        Settings {
            forwarder: self
                .forwarder
                .reconfigured(&config.limits, routes.class_by()),
            routes: routes.clone(),
            links: links.clone(),
            shield: shield.clone(),
        }
    }
}
