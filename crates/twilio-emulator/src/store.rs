//! One account's resources, as the emulator keeps them in memory: its
//! services with their conversations, participants and users
//! ([`EmulatorStore`]), and how new ones get their SIDs and dates. Plain
//! data: nothing here knows of accounts' credentials, traffic, faults or
//! rendering (`model` renders these types; `accounts` gives each account
//! one store), so those can all use it without pointing at each other.

use std::sync::atomic::{AtomicU64, Ordering};

use time::OffsetDateTime;

use crate::EmulatorConfig;

pub(crate) struct EmulatorStore {
    pub(crate) default_service_sid: String,
    pub(crate) default_messaging_service_sid: String,
    pub(crate) services: Vec<Service>,
}

pub(crate) struct Service {
    pub(crate) sid: String,
    pub(crate) friendly_name: String,
    pub(crate) created: OffsetDateTime,
    pub(crate) updated: OffsetDateTime,
    /// Default conversation-scoped role given to participants.
    pub(crate) participant_role_sid: String,
    /// Default service-scoped role given to users.
    pub(crate) user_role_sid: String,
    pub(crate) conversations: Vec<Conversation>,
    pub(crate) users: Vec<User>,
    /// Twilio's default roles of a new service (`.../Roles`).
    pub(crate) roles: Vec<Role>,
}

/// A role of a service (`service` or `conversation` scoped).
pub(crate) struct Role {
    pub(crate) sid: String,
    pub(crate) friendly_name: &'static str,
    /// `service` or `conversation`.
    pub(crate) kind: &'static str,
    pub(crate) permissions: &'static [&'static str],
    pub(crate) created: OffsetDateTime,
}

/// The roles Twilio gives a new Conversation Service, with their
/// permissions: (name, type, permissions). The second of each type is the
/// default one.
const DEFAULT_ROLES: [(&str, &str, &[&str]); 4] = [
    (
        "service admin",
        "service",
        &[
            "addMember",
            "createChannel",
            "deleteAnyMessage",
            "destroyChannel",
            "editAnyMessage",
            "editAnyMessageAttributes",
            "editAnyUserInfo",
            "editChannelAttributes",
            "editChannelName",
            "editOwnMessage",
            "editOwnMessageAttributes",
            "editOwnUserInfo",
            "inviteMember",
            "joinChannel",
            "removeMember",
        ],
    ),
    (
        "service user",
        "service",
        &[
            "createChannel",
            "deleteOwnMessage",
            "destroyChannel",
            "editOwnMessage",
            "editOwnMessageAttributes",
            "editOwnUserInfo",
            "joinChannel",
        ],
    ),
    (
        "channel admin",
        "conversation",
        &[
            "addMember",
            "deleteAnyMessage",
            "editAnyMessage",
            "editAnyMessageAttributes",
            "editChannelAttributes",
            "editChannelName",
            "editOwnMessage",
            "editOwnMessageAttributes",
            "editOwnUserInfo",
            "inviteMember",
            "leaveChannel",
            "removeMember",
            "sendMediaMessage",
            "sendMessage",
        ],
    ),
    (
        "channel user",
        "conversation",
        &[
            "deleteOwnMessage",
            "editOwnMessage",
            "editOwnMessageAttributes",
            "editOwnUserInfo",
            "leaveChannel",
            "sendMediaMessage",
            "sendMessage",
        ],
    ),
];

pub(crate) struct Conversation {
    pub(crate) sid: String,
    pub(crate) friendly_name: Option<String>,
    pub(crate) unique_name: Option<String>,
    pub(crate) attributes: String,
    pub(crate) state: String,
    pub(crate) messaging_service_sid: String,
    pub(crate) created: OffsetDateTime,
    pub(crate) updated: OffsetDateTime,
    pub(crate) participants: Vec<Participant>,
}

#[derive(Clone)]
pub(crate) enum Binding {
    Pair {
        kind: &'static str,
        address: String,
        proxy_address: String,
    },
    Projected {
        projected_address: String,
    },
}

pub(crate) struct Participant {
    pub(crate) sid: String,
    pub(crate) identity: Option<String>,
    pub(crate) binding: Option<Binding>,
    pub(crate) attributes: String,
    pub(crate) role_sid: Option<String>,
    pub(crate) created: OffsetDateTime,
    pub(crate) updated: OffsetDateTime,
    pub(crate) last_read_message_index: Option<i64>,
    pub(crate) last_read_timestamp: Option<String>,
    /// SID of the User this chat participant was mapped to when created.
    pub(crate) user_sid: Option<String>,
    /// Until then, a GET of it answers 404 (the `read_lag_ms` fault).
    pub(crate) readable_at: Option<std::time::Instant>,
}

pub(crate) struct User {
    pub(crate) sid: String,
    pub(crate) identity: String,
    pub(crate) friendly_name: Option<String>,
    pub(crate) attributes: String,
    pub(crate) role_sid: Option<String>,
    pub(crate) created: OffsetDateTime,
    pub(crate) updated: OffsetDateTime,
    /// One of this User's participants was deleted: the fault may fire.
    pub(crate) stale_mapping: bool,
}

impl EmulatorStore {
    pub(crate) fn new(config: &EmulatorConfig, default_sid: Option<String>) -> Self {
        let mut store = EmulatorStore {
            default_service_sid: String::new(),
            default_messaging_service_sid: String::new(),
            services: Vec::new(),
        };
        store.default_messaging_service_sid = new_sid("MG");
        let sid = default_sid.unwrap_or_else(|| new_sid("IS"));
        let service = new_service(sid.clone(), config.default_service_friendly_name.clone());
        store.services.push(service);
        store.default_service_sid = sid;
        store
    }

    pub(crate) fn service_index(&self, sid: &str) -> Option<usize> {
        self.services.iter().position(|s| s.sid == sid)
    }
}

pub(crate) fn new_service(sid: String, friendly_name: String) -> Service {
    let now = now();
    let roles: Vec<Role> = DEFAULT_ROLES
        .iter()
        .map(|(friendly_name, kind, permissions)| Role {
            sid: new_sid("RL"),
            friendly_name,
            kind,
            permissions,
            created: now,
        })
        .collect();
    Service {
        sid,
        friendly_name,
        created: now,
        updated: now,
        participant_role_sid: roles[3].sid.clone(),
        user_role_sid: roles[1].sid.clone(),
        conversations: Vec::new(),
        users: Vec::new(),
        roles,
    }
}

impl Service {
    pub(crate) fn conversation_index(&self, key: &str) -> Option<usize> {
        self.conversations
            .iter()
            .position(|c| c.sid == key)
            .or_else(|| {
                self.conversations
                    .iter()
                    .position(|c| c.unique_name.as_deref() == Some(key))
            })
    }

    pub(crate) fn user_index(&self, key: &str) -> Option<usize> {
        self.users
            .iter()
            .position(|u| u.sid == key)
            .or_else(|| self.users.iter().position(|u| u.identity == key))
    }

    pub(crate) fn user_by_identity(&self, identity: &str) -> Option<usize> {
        self.users.iter().position(|u| u.identity == identity)
    }
}

impl Conversation {
    pub(crate) fn participant_index(&self, key: &str) -> Option<usize> {
        self.participants
            .iter()
            .position(|p| p.sid == key)
            .or_else(|| {
                self.participants
                    .iter()
                    .position(|p| p.identity.as_deref() == Some(key))
            })
    }
}

/// `prefix` + 12 hex digits of a process-wide creation counter + 20 random
/// hex digits: SIDs sort in creation order, which keeps `PageToken=PT<sid>`
/// valid even after that item is deleted.
pub(crate) fn new_sid(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let random: u128 = rand::random::<u128>() & ((1u128 << 80) - 1);
    format!("{prefix}{n:012x}{random:020x}")
}

pub(crate) fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    // Second precision, like Twilio.
    now.replace_nanosecond(0).unwrap_or(now)
}
