//! SID continuity after a repair: the SIDs the app stored keep working.
//!
//! Twilio's workaround recreates the User, so its SID (`US…`) changes, and
//! every membership the delete removed comes back with a new participant
//! SID (`MB…`). The repair journals each old → new pair as it reads the new
//! resource back ([`super::journal::Journal::alias`], table `sid_aliases`),
//! and tells the caller of the repaired create at once
//! (`X-Repair-User-Sid`, `X-Repair-Sid-Alias`: [`tell`]).
//!
//! What belongs here: which request paths may name such a SID
//! ([`Named::parse`], a shape check that touches nothing), resolving an
//! old SID to the newest one within `repair.sid_alias_retention_secs`
//! ([`Aliases::resolve`], following chains), and rewriting the
//! request ([`Aliases::alias_request`]). [`Aliases`] is that concern's own
//! type: it owns exactly what those need (the in-memory [`AliasIndex`],
//! the store, the retention, the runtime its refresher runs on); the
//! `Repairer` builds it and hands it out (`Repairer::aliases`), and
//! nothing here knows the `Repairer`. Forms served, each with the
//! service named (`/v1/Services/{IS}/…`) or the default service's (`/v1/…`):
//!
//! - `…/Users/{US}` and `…/Users/{US}/…` (the User's conversations);
//! - `…/Conversations/{CH}/Participants/{MB}`.
//!
//! Rules: the account is the request's Basic-auth user name (an `AC…`
//! SID; a request authenticated with an API key is never rewritten, its
//! account being unknown without asking Twilio); an alias applies only in
//! its own account and service (a service-scoped path: that service; a
//! default-service path: aliases recorded through a default-service path)
//! and, for a membership, its own conversation; everything else goes to
//! Twilio as sent. The journal is the only source, so every replica on a
//! shared PostgreSQL store honours the aliases any of them wrote, and they
//! survive restarts; a store that cannot answer leaves the request as sent.

use std::sync::{Arc, Weak};
use std::time::Duration;

use http::header::{HeaderMap, HeaderValue};
use http::uri::{PathAndQuery, Uri};

use crate::sid::is_sid;
use crate::store::{SidAlias, Store, rfc3339};

/// The repaired create's answer: the User's SID change, `{old}={new}`.
pub const USER_SID_HEADER: &str = "x-repair-user-sid";
/// A SID change: on the repaired create's answer, one per restored
/// membership; on an aliased request's answer, the SID it was sent with.
pub const SID_ALIAS_HEADER: &str = "x-repair-sid-alias";

/// Most aliases followed from one old SID (an identity repaired that many
/// times within the retention).
pub const MAX_CHAIN: usize = 16;

/// Longest wait for the journal when resolving an alias: past it the
/// request goes to Twilio as sent (a slow or partitioned database never
/// holds ordinary requests).
pub const ALIAS_LOOKUP_TIMEOUT: Duration = Duration::from_millis(250);

/// How often the in-memory index of aliased SIDs ([`AliasIndex`]) is
/// reloaded from the journal: an alias another replica wrote applies here
/// within this (this replica's own repairs reload it at once).
pub const ALIAS_INDEX_REFRESH: Duration = Duration::from_secs(2);

/// The old SIDs any alias within the retention names, held in memory so
/// that a request naming a SID no repair changed (nearly all of them: every
/// `GET …/Participants/MB…` an app makes) never waits on the journal.
/// Until the first load it knows nothing, and every candidate asks the
/// journal; a failed reload keeps the last good set.
#[derive(Default)]
pub struct AliasIndex {
    sids: std::sync::RwLock<Option<std::collections::HashSet<String>>>,
    /// Loaded, and no SID has an alias (the usual case: no repair within
    /// the retention). Read before the path is even parsed: measured with
    /// `bench/instructions.sh`, the shape check of a `…/Participants/MB…`
    /// path costs about 1,500 instructions, a third of what this change
    /// series added to a pass-through request.
    none: std::sync::atomic::AtomicBool,
}

impl AliasIndex {
    /// The index is loaded and holds no SID: no request can be aliased.
    fn knows_none(&self) -> bool {
        self.none.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether `sid` may have an alias (asking the journal is needed).
    fn might_name(&self, sid: &str) -> bool {
        match &*self.sids.read().unwrap_or_else(|e| e.into_inner()) {
            None => true,
            Some(set) => set.contains(sid),
        }
    }

    fn replace(&self, sids: Vec<String>) {
        let mut guard = self.sids.write().unwrap_or_else(|e| e.into_inner());
        self.none
            .store(sids.is_empty(), std::sync::atomic::Ordering::Release);
        *guard = Some(sids.into_iter().collect());
    }
}

/// Most `X-Repair-Sid-Alias` lines on a repaired create's answer: an
/// identity in hundreds of conversations must not push the answer past the
/// header limits of clients and proxies in front (Python's 100 headers,
/// nginx's 4-8 KiB buffer). The rest still apply as aliases and are listed
/// on the incident page.
pub const MAX_ALIAS_HEADERS: usize = 20;

/// Add the SID changes of a repair to the answer of its create (the User's,
/// then at most [`MAX_ALIAS_HEADERS`] memberships').
pub fn tell(headers: &mut HeaderMap, aliases: &[SidAlias]) {
    let users = aliases.iter().filter(|a| a.conversation_sid.is_none());
    let members = aliases
        .iter()
        .filter(|a| a.conversation_sid.is_some())
        .take(MAX_ALIAS_HEADERS);
    for a in users.chain(members) {
        let Ok(v) = HeaderValue::from_str(&format!("{}={}", a.old_sid, a.new_sid)) else {
            continue;
        };
        let name = if a.conversation_sid.is_none() {
            USER_SID_HEADER
        } else {
            SID_ALIAS_HEADER
        };
        headers.append(name, v);
    }
}

/// Mark the answer to a request [`Aliases::alias_request`] rewrote: only
/// a successful one (a 401 or 404 tells nobody another SID).
pub fn mark(status: http::StatusCode, headers: &mut HeaderMap, alias: Option<HeaderValue>) {
    if let Some(v) = alias {
        if status.is_success() {
            headers.append(SID_ALIAS_HEADER, v);
        }
    }
}

/// Whether `old` → `new` is a SID change an alias may record and apply:
/// two SID-shaped values of the same kind (`US…` or `MB…`, then ASCII
/// letters and digits, at most 64 bytes), so nothing but a SID is ever
/// spliced into a path (no `/`, `?`, `%` or `..`).
pub fn is_sid_change(old: &str, new: &str) -> bool {
    let shaped = |s: &str, prefix: &str| {
        s.len() > 2
            && s.len() <= 64
            && s.starts_with(prefix)
            && s.bytes().all(|b| b.is_ascii_alphanumeric())
    };
    old != new
        && ["US", "MB"]
            .iter()
            .any(|p| shaped(old, p) && shaped(new, p))
}

/// Where an old SID may be named: the service of the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// `/v1/Services/{IS}/…`.
    Service(&'a str),
    /// `/v1/…`: the account's default service.
    Default,
}

/// A request path that names a User or participant SID an alias may
/// replace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named<'a> {
    pub scope: Scope<'a>,
    /// The SID named (`US…` or `MB…`).
    pub sid: &'a str,
    /// The participant's conversation (`None` for a User).
    pub conversation: Option<&'a str>,
    /// Where `sid` starts in the path.
    at: usize,
}

impl<'a> Named<'a> {
    /// The SID a path names, by its shape alone (nothing is looked up).
    pub fn parse(path: &'a str) -> Option<Named<'a>> {
        let rest = path.strip_prefix("/v1/")?;
        let (scope, rest, offset) = match rest.strip_prefix("Services/") {
            Some(r) => {
                let (is, after) = r.split_once('/')?;
                if !is_sid(is, "IS") {
                    return None;
                }
                let offset = path.len() - after.len();
                (Scope::Service(is), after, offset)
            }
            None => (Scope::Default, rest, "/v1/".len()),
        };
        // No allocation: this runs for every `/v1/` request.
        let mut segs = rest.split('/');
        match segs.next()? {
            "Users" => {
                let us = segs.next().filter(|us| is_sid(us, "US"))?;
                Some(Named {
                    scope,
                    sid: us,
                    conversation: None,
                    at: offset + "Users/".len(),
                })
            }
            "Conversations" => {
                let ch = segs.next()?;
                segs.next().filter(|s| *s == "Participants")?;
                let mb = segs.next().filter(|mb| is_sid(mb, "MB"))?;
                if segs.next().is_some() {
                    return None;
                }
                Some(Named {
                    scope,
                    sid: mb,
                    conversation: Some(ch),
                    at: path.len() - mb.len(),
                })
            }
            _ => None,
        }
    }

    /// Does `a` apply to what this path names?
    fn admits(&self, a: &SidAlias) -> bool {
        let service_ok = match self.scope {
            Scope::Service(is) => a.service_sid == is,
            Scope::Default => a.service_base == "/v1",
        };
        service_ok && a.conversation_sid.as_deref() == self.conversation
    }

    /// The path with `new` in place of the SID.
    fn with(&self, path: &str, new: &str) -> String {
        format!(
            "{}{new}{}",
            &path[..self.at],
            &path[self.at + self.sid.len()..]
        )
    }
}

/// The request's account: its Basic-auth user name when that is an
/// account SID.
fn account_of(headers: &HeaderMap) -> Option<String> {
    let user = crate::sid::basic_user(headers.get(http::header::AUTHORIZATION)?)?;
    is_sid(&user, "AC").then_some(user)
}

/// SID continuity for the proxy's requests: the alias index, and the
/// journal's `sid_aliases` behind it. Built once by `Repairer::new`, held
/// by the `Repairer` (`Repairer::aliases`).
pub struct Aliases {
    /// The SIDs aliases name, in memory.
    index: AliasIndex,
    /// The journal (`sid_aliases`).
    store: Arc<dyn Store>,
    /// `repair.sid_alias_retention_secs` at start-up (0: off).
    retention_secs: u64,
    /// Where the index's refresher runs (the repair runtime).
    rt: tokio::runtime::Handle,
}

impl Aliases {
    /// Aliases read from `store`, honoured for `retention_secs` (0: none
    /// is ever applied); the refresher runs on `rt`.
    pub(crate) fn new(
        store: Arc<dyn Store>,
        retention_secs: u64,
        rt: tokio::runtime::Handle,
    ) -> Aliases {
        Aliases {
            index: AliasIndex::default(),
            store,
            retention_secs,
            rt,
        }
    }

    /// Could this request be aliased at all? A shape check only: `false`
    /// for every path that cannot name a repaired SID, so that those
    /// requests never touch the store. While the index is known empty
    /// this is one atomic load.
    pub fn may_alias(&self, path: &str) -> bool {
        self.retention_secs > 0
            && !self.index.knows_none()
            && Named::parse(path).is_some_and(|n| self.index.might_name(n.sid))
    }

    /// Reload the `AliasIndex` from the journal (at most
    /// `ALIAS_LOOKUP_TIMEOUT` × 4; a failure keeps the last good set).
    pub async fn refresh(&self) {
        let Some(since) = self.since() else {
            return;
        };
        match tokio::time::timeout(ALIAS_LOOKUP_TIMEOUT * 4, self.store.alias_old_sids(&since))
            .await
        {
            Ok(Ok(sids)) => self.index.replace(sids),
            Ok(Err(e)) => tracing::debug!(error = %e, "cannot reload the SID alias index"),
            Err(_) => tracing::debug!("reloading the SID alias index timed out"),
        }
    }

    /// Keep the `AliasIndex` fresh, every `ALIAS_INDEX_REFRESH`, for as
    /// long as `owner` (what holds these aliases; `of` reaches them from
    /// it) lives.
    pub(crate) fn spawn_refresh<O: Send + Sync + 'static>(
        &self,
        owner: Weak<O>,
        of: fn(&O) -> &Aliases,
    ) {
        if self.retention_secs == 0 {
            return;
        }
        self.rt.spawn(async move {
            let mut tick = tokio::time::interval(ALIAS_INDEX_REFRESH);
            loop {
                tick.tick().await;
                let Some(o) = owner.upgrade() else { return };
                of(&o).refresh().await;
            }
        });
    }

    /// The oldest alias time within the retention (RFC 3339).
    fn since(&self) -> Option<String> {
        let retention = Duration::from_secs(self.retention_secs);
        time::OffsetDateTime::now_utc()
            .checked_sub(time::Duration::try_from(retention).ok()?)
            .map(rfc3339)
    }

    /// The newest SID `named` stands for in `account_sid`, when a repair
    /// within the retention changed it (following a chain of repairs).
    pub async fn resolve(&self, account_sid: &str, named: &Named<'_>) -> Option<String> {
        let since = self.since()?;
        let mut current = named.sid.to_string();
        let mut changed = false;
        for _ in 0..MAX_CHAIN {
            match self.store.find_alias(account_sid, &current, &since).await {
                Ok(Some(a)) if named.admits(&a) && is_sid_change(&current, &a.new_sid) => {
                    current = a.new_sid;
                    changed = true;
                }
                // A later hop this path may not take: the SID reached so
                // far is no longer the newest, and may be deleted. All hops
                // or none: the request goes as sent.
                Ok(Some(_)) if changed => return None,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read SID aliases; the request goes as sent");
                    return None;
                }
            }
        }
        (changed && current != named.sid).then_some(current)
    }

    /// Send a request naming a repaired SID with the newest one instead:
    /// the `X-Repair-Sid-Alias` value (`{old}={new}`) for its answer, or
    /// `None` (the request is left as it was).
    pub async fn alias_request(&self, parts: &mut http::request::Parts) -> Option<HeaderValue> {
        let account = account_of(&parts.headers)?;
        let path = parts.uri.path();
        let named = Named::parse(path)?;
        let new = match tokio::time::timeout(ALIAS_LOOKUP_TIMEOUT, self.resolve(&account, &named))
            .await
        {
            Ok(new) => new?,
            Err(_) => {
                tracing::debug!("SID alias lookup timed out; the request goes as sent");
                return None;
            }
        };
        if !is_sid_change(named.sid, &new) {
            return None;
        }
        let mut pq = named.with(path, &new);
        if let Some(q) = parts.uri.query() {
            pq.push('?');
            pq.push_str(q);
        }
        let header = HeaderValue::from_str(&format!("{}={new}", named.sid)).ok()?;
        let mut uri = parts.uri.clone().into_parts();
        uri.path_and_query = Some(PathAndQuery::try_from(pq).ok()?);
        parts.uri = Uri::from_parts(uri).ok()?;
        tracing::debug!(alias = ?header, "request names a SID a repair changed; sent with the new one");
        Some(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IS: &str = "IS00000000000000000000000000000001";
    const US: &str = "US00000000000000000000000000000001";
    const CH: &str = "CH00000000000000000000000000000001";
    const MB: &str = "MB00000000000000000000000000000001";

    #[test]
    fn the_index_knows_none_only_once_loaded_empty() {
        let index = AliasIndex::default();
        assert!(!index.knows_none(), "not loaded: every candidate asks");
        assert!(index.might_name(MB));
        index.replace(vec![]);
        assert!(index.knows_none(), "loaded and empty: nothing is parsed");
        index.replace(vec![MB.to_string()]);
        assert!(!index.knows_none());
        assert!(index.might_name(MB));
        assert!(!index.might_name(US));
        index.replace(vec![]);
        assert!(index.knows_none(), "the last alias aged out");
    }

    #[test]
    fn only_paths_naming_a_user_or_participant_sid_are_candidates() {
        fn named(p: &str) -> Option<(Scope<'_>, &str, Option<&str>)> {
            Named::parse(p).map(|n| (n.scope, n.sid, n.conversation))
        }
        assert_eq!(
            named(&format!("/v1/Services/{IS}/Users/{US}")),
            Some((Scope::Service(IS), US, None))
        );
        assert_eq!(
            named(&format!("/v1/Services/{IS}/Users/{US}/Conversations")),
            Some((Scope::Service(IS), US, None))
        );
        assert_eq!(
            named(&format!("/v1/Users/{US}/Conversations/{CH}")),
            Some((Scope::Default, US, None))
        );
        assert_eq!(
            named(&format!("/v1/Conversations/{CH}/Participants/{MB}")),
            Some((Scope::Default, MB, Some(CH)))
        );
        assert_eq!(
            named(&format!(
                "/v1/Services/{IS}/Conversations/{CH}/Participants/{MB}"
            )),
            Some((Scope::Service(IS), MB, Some(CH)))
        );
        for p in [
            "/v1/Users/kim".to_string(),
            "/v1/Users".to_string(),
            format!("/v1/Conversations/{CH}/Participants/kim"),
            format!("/v1/Conversations/{CH}/Participants"),
            format!("/v1/Conversations/{CH}/Participants/{MB}/x"),
            format!("/v2/Users/{US}"),
            format!("/v1/Services/ISnope/Users/{US}"),
            format!("/2010-04-01/Accounts/AC1/Users/{US}"),
            "/".to_string(),
        ] {
            assert_eq!(Named::parse(&p), None, "{p}");
        }
    }

    #[test]
    fn the_new_sid_takes_the_old_ones_place_and_nothing_else_changes() {
        let new = "US00000000000000000000000000000002";
        let p = format!("/v1/Services/{IS}/Users/{US}/Conversations");
        let n = Named::parse(&p).unwrap();
        assert_eq!(
            n.with(&p, new),
            format!("/v1/Services/{IS}/Users/{new}/Conversations")
        );
        let p = format!("/v1/Conversations/{CH}/Participants/{MB}");
        let n = Named::parse(&p).unwrap();
        let mb2 = "MB00000000000000000000000000000002";
        assert_eq!(
            n.with(&p, mb2),
            format!("/v1/Conversations/{CH}/Participants/{mb2}")
        );
    }
}
