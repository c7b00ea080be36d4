//! In-memory state of the emulator and JSON rendering in spec field order.

use std::collections::VecDeque;

use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::EmulatorConfig;
use crate::accounts::Account;
use crate::faults::{CompiledParticipantFault, CompiledRule};
use crate::traffic::Traffic;

pub(crate) use crate::store::{
    Binding, Conversation, EmulatorStore, Participant, Role, Service, User, new_service, new_sid,
    now,
};

/// Most services, conversations per service and users per service.
pub(crate) const MAX_ITEMS_PER_COLLECTION: usize = 100_000;
/// Most participants in one conversation (Twilio's documented limit is 1000).
pub(crate) const MAX_PARTICIPANTS_PER_CONVERSATION: usize = 1_000;

/// Everything behind one lock (never held across an `.await`), and the
/// traffic counters and held requests behind another (they outlive `reset`).
pub(crate) struct Shared {
    pub(crate) config: EmulatorConfig,
    state: Mutex<State>,
    pub(crate) traffic: Arc<Traffic>,
}

pub(crate) struct State {
    /// How many resets happened before this state was made: a request that
    /// began under another generation is not written to the log.
    pub(crate) generation: u64,
    /// The configured account first, then `extra_accounts`, then accounts
    /// added at run time.
    pub(crate) accounts: Vec<Account>,
    pub(crate) fault: CompiledParticipantFault,
    pub(crate) rules: Vec<CompiledRule>,
    pub(crate) next_rule_id: u64,
    pub(crate) log: VecDeque<Value>,
    pub(crate) log_seq: u64,
    pub(crate) log_dropped: u64,
}

impl Shared {
    pub(crate) fn new(config: EmulatorConfig) -> Self {
        let mut config = config;
        while config.public_url.ends_with('/') {
            config.public_url.pop();
        }
        let accounts = configured_accounts(&config, &[]);
        let state = State::initial(&config, accounts, 0);
        let traffic = Arc::new(Traffic::new(config.max_held_requests));
        Self {
            config,
            state: Mutex::new(state),
            traffic,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the data structurally
        // invalid (every mutation is a single push/remove), so keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wipe resources and the log; restore start-up fault settings and
    /// accounts (configured accounts keep their default service SID).
    pub(crate) fn reset(&self) {
        let mut state = self.lock();
        let kept: Vec<(String, String)> = state
            .accounts
            .iter()
            .map(|a| {
                (
                    a.creds.account_sid.clone(),
                    a.store.default_service_sid.clone(),
                )
            })
            .collect();
        let accounts = configured_accounts(&self.config, &kept);
        let generation = state.generation.wrapping_add(1);
        *state = State::initial(&self.config, accounts, generation);
    }

    /// Every secret of every account (kept out of the request log).
    pub(crate) fn secrets(&self) -> Vec<String> {
        let state = self.lock();
        state
            .accounts
            .iter()
            .flat_map(|a| a.creds.secrets().map(str::to_owned))
            .collect()
    }
}

/// Fresh stores for the configured accounts; `kept` maps an account SID to
/// the default service SID it keeps across a reset.
fn configured_accounts(config: &EmulatorConfig, kept: &[(String, String)]) -> Vec<Account> {
    let mut accounts: Vec<Account> = Vec::new();
    for creds in config.accounts() {
        // `validate` refuses duplicates; `router` skips them instead.
        if accounts.iter().any(|a| a.creds.clash(&creds).is_some()) {
            tracing::warn!(account_sid = %creds.account_sid, "emulator: duplicate account ignored");
            continue;
        }
        let default_sid = kept
            .iter()
            .find(|(sid, _)| *sid == creds.account_sid)
            .map(|(_, is)| is.clone());
        accounts.push(Account {
            store: EmulatorStore::new(config, default_sid),
            creds,
            configured: true,
        });
    }
    accounts
}

impl State {
    fn initial(config: &EmulatorConfig, accounts: Vec<Account>, generation: u64) -> Self {
        let fault = match config.participant_fault().compile() {
            Ok(f) => f,
            Err(err) => {
                tracing::warn!(error = %err, "emulator: invalid participant fault settings ignored");
                CompiledParticipantFault::off()
            }
        };
        let mut rules = Vec::new();
        let mut next_rule_id = 1;
        for rule in &config.faults {
            match rule.compiled(next_rule_id) {
                Ok(r) => {
                    rules.push(r);
                    next_rule_id += 1;
                }
                Err(err) => tracing::warn!(error = %err, "emulator: invalid fault rule ignored"),
            }
        }
        Self {
            generation,
            accounts,
            fault,
            rules,
            next_rule_id,
            log: VecDeque::new(),
            log_seq: 0,
            log_dropped: 0,
        }
    }

    pub(crate) fn push_log(&mut self, max: usize, mut entry: Value) {
        self.log_seq += 1;
        if let Some(obj) = entry.as_object_mut() {
            obj.insert("seq".to_owned(), json!(self.log_seq));
        }
        while self.log.len() >= max.max(1) {
            self.log.pop_front();
            self.log_dropped += 1;
        }
        self.log.push_back(entry);
    }
}

impl State {
    /// The account with this SID.
    pub(crate) fn account_mut(&mut self, account_sid: &str) -> Option<&mut Account> {
        self.accounts
            .iter_mut()
            .find(|a| a.creds.account_sid == account_sid)
    }
}

/// `2015-12-16T22:18:37Z`
pub(crate) fn fmt_date(t: OffsetDateTime) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    t.to_offset(time::UtcOffset::UTC)
        .format(&format)
        .unwrap_or_default()
}

/// Parse an ISO-8601 / RFC 3339 date-time parameter.
pub(crate) fn parse_date(value: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.to_offset(time::UtcOffset::UTC))
        .map(|t| t.replace_nanosecond(0).unwrap_or(t))
}

/// How a resource is addressed: through `/v1/Services/{IS}` or `/v1`.
#[derive(Clone, Copy)]
pub(crate) struct Scope<'a> {
    pub(crate) base: &'a str,
    pub(crate) account_sid: &'a str,
    pub(crate) service_sid: &'a str,
    pub(crate) scoped: bool,
}

impl Scope<'_> {
    /// Absolute URL prefix up to and including `/v1` or `/v1/Services/{IS}`.
    pub(crate) fn prefix(&self) -> String {
        if self.scoped {
            format!("{}/v1/Services/{}", self.base, self.service_sid)
        } else {
            format!("{}/v1", self.base)
        }
    }
}

pub(crate) fn render_service(base: &str, account_sid: &str, s: &Service) -> Value {
    let url = format!("{base}/v1/Services/{}", s.sid);
    json!({
        "account_sid": account_sid,
        "sid": s.sid,
        "friendly_name": s.friendly_name,
        "date_created": fmt_date(s.created),
        "date_updated": fmt_date(s.updated),
        "url": url,
        "links": {
            "conversations": format!("{url}/Conversations"),
            "users": format!("{url}/Users"),
            "roles": format!("{url}/Roles"),
            "bindings": format!("{url}/Bindings"),
            "configuration": format!("{url}/Configuration"),
            "participant_conversations": format!("{url}/ParticipantConversations"),
            "conversation_with_participants": format!("{url}/ConversationWithParticipants"),
        }
    })
}

pub(crate) fn render_role(base: &str, account_sid: &str, service_sid: &str, r: &Role) -> Value {
    json!({
        "sid": r.sid,
        "account_sid": account_sid,
        "chat_service_sid": service_sid,
        "friendly_name": r.friendly_name,
        "type": r.kind,
        "permissions": r.permissions,
        "date_created": fmt_date(r.created),
        "date_updated": fmt_date(r.created),
        "url": format!("{base}/v1/Services/{service_sid}/Roles/{}", r.sid),
    })
}

pub(crate) fn render_conversation(scope: Scope<'_>, c: &Conversation) -> Value {
    let url = format!("{}/Conversations/{}", scope.prefix(), c.sid);
    json!({
        "account_sid": scope.account_sid,
        "chat_service_sid": scope.service_sid,
        "messaging_service_sid": c.messaging_service_sid,
        "sid": c.sid,
        "friendly_name": c.friendly_name,
        "unique_name": c.unique_name,
        "attributes": c.attributes,
        "state": c.state,
        "date_created": fmt_date(c.created),
        "date_updated": fmt_date(c.updated),
        "timers": {},
        "url": url,
        "links": {
            "participants": format!("{url}/Participants"),
            "messages": format!("{url}/Messages"),
            "webhooks": format!("{url}/Webhooks"),
        },
        "bindings": null,
    })
}

fn render_binding(b: &Option<Binding>) -> Value {
    match b {
        None => Value::Null,
        Some(Binding::Pair {
            kind,
            address,
            proxy_address,
        }) => json!({"type": kind, "address": address, "proxy_address": proxy_address}),
        Some(Binding::Projected { projected_address }) => {
            json!({"type": "sms", "projected_address": projected_address})
        }
    }
}

pub(crate) fn render_participant(
    scope: Scope<'_>,
    conversation_sid: &str,
    p: &Participant,
) -> Value {
    let url = format!(
        "{}/Conversations/{conversation_sid}/Participants/{}",
        scope.prefix(),
        p.sid
    );
    let mut obj = serde_json::Map::new();
    obj.insert("account_sid".into(), json!(scope.account_sid));
    if scope.scoped {
        obj.insert("chat_service_sid".into(), json!(scope.service_sid));
    }
    obj.insert("conversation_sid".into(), json!(conversation_sid));
    obj.insert("sid".into(), json!(p.sid));
    obj.insert("identity".into(), json!(p.identity));
    obj.insert("attributes".into(), json!(p.attributes));
    obj.insert("messaging_binding".into(), render_binding(&p.binding));
    obj.insert("role_sid".into(), json!(p.role_sid));
    obj.insert("date_created".into(), json!(fmt_date(p.created)));
    obj.insert("date_updated".into(), json!(fmt_date(p.updated)));
    obj.insert("url".into(), json!(url));
    obj.insert(
        "last_read_message_index".into(),
        json!(p.last_read_message_index),
    );
    obj.insert("last_read_timestamp".into(), json!(p.last_read_timestamp));
    Value::Object(obj)
}

/// `presence`: `Some(false)` on fetch, `None` (null) on list/create/update.
pub(crate) fn render_user(scope: Scope<'_>, u: &User, presence: Option<bool>) -> Value {
    let url = format!("{}/Users/{}", scope.prefix(), u.sid);
    json!({
        "sid": u.sid,
        "account_sid": scope.account_sid,
        "chat_service_sid": scope.service_sid,
        "role_sid": u.role_sid,
        "identity": u.identity,
        "friendly_name": u.friendly_name,
        "attributes": u.attributes,
        "is_online": presence,
        "is_notifiable": presence,
        "date_created": fmt_date(u.created),
        "date_updated": fmt_date(u.updated),
        "url": url,
        "links": {
            "user_conversations": format!("{url}/Conversations"),
        }
    })
}

pub(crate) fn render_user_conversation(
    scope: Scope<'_>,
    user: &User,
    c: &Conversation,
    p: &Participant,
) -> Value {
    let prefix = scope.prefix();
    let conversation_url = format!("{prefix}/Conversations/{}", c.sid);
    json!({
        "account_sid": scope.account_sid,
        "chat_service_sid": scope.service_sid,
        "conversation_sid": c.sid,
        "unread_messages_count": null,
        "last_read_message_index": p.last_read_message_index,
        "participant_sid": p.sid,
        "user_sid": user.sid,
        "friendly_name": c.friendly_name,
        "conversation_state": c.state,
        "timers": {},
        "attributes": c.attributes,
        "date_created": fmt_date(c.created),
        "date_updated": fmt_date(c.updated),
        "created_by": null,
        "notification_level": "default",
        "unique_name": c.unique_name,
        "url": format!("{prefix}/Users/{}/Conversations/{}", user.sid, c.sid),
        "links": {
            "participant": format!("{conversation_url}/Participants/{}", p.sid),
            "conversation": conversation_url,
        }
    })
}

pub(crate) fn render_configuration(base: &str, account_sid: &str, store: &EmulatorStore) -> Value {
    json!({
        "account_sid": account_sid,
        "default_chat_service_sid": store.default_service_sid,
        "default_messaging_service_sid": store.default_messaging_service_sid,
        "default_inactive_timer": null,
        "default_closed_timer": null,
        "url": format!("{base}/v1/Configuration"),
        "links": {
            "service": format!("{base}/v1/Services/{}/Configuration", store.default_service_sid),
            "webhooks": format!("{base}/v1/Configuration/Webhooks"),
        }
    })
}
