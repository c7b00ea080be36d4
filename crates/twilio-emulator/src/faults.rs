//! Fault settings: the participant fault and general injection rules.

use std::cell::Cell;

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};
use time::Date;

/// Compiled size limit of a client-supplied regex (bytes).
const MAX_REGEX_SIZE: usize = 1 << 20;
/// Longest delay a rule may ask for (latency, hang), in milliseconds.
pub const MAX_FAULT_DELAY_MS: u64 = 120_000;
/// Most injection rules held at once.
pub const MAX_FAULT_RULES: usize = 1_000;
/// Largest `Retry-After` a `too_many_requests` rule may send (one day).
pub const MAX_RETRY_AFTER_SECS: u64 = 86_400;
/// Most identities in `identities`.
pub const MAX_FAULT_IDENTITIES: usize = 10_000;

/// What happens when an affected identity is re-added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FaultMode {
    /// 404/20404, but the participant is created anyway (the common case).
    #[default]
    Ghost,
    /// 404/20404 and nothing is created, until the User is recreated.
    Block,
    /// The fault never fires.
    Off,
}

/// Which identities suffer the participant fault (any criterion matches).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ParticipantFault {
    pub mode: FaultMode,
    pub identities: Vec<String>,
    pub identity_pattern: Option<String>,
    /// `YYYY-MM-DD` (UTC creation day of the User).
    pub user_created_on: Option<String>,
    /// Reads lag writes (any identity, any mode): a participant GET
    /// (`.../Participants/{MB or identity}`) answers 404/20404 for this many
    /// milliseconds after the participant's create (0: no lag; at most
    /// [`MAX_FAULT_DELAY_MS`]).
    #[serde(skip_serializing_if = "is_zero")]
    pub read_lag_ms: u64,
    /// A User create ignores its `RoleSid` (any identity): the User gets
    /// the service's default role, and the answer says so; so does a User
    /// update (the role cannot be put right afterwards). A double of an
    /// account where the role does not survive a recreate (`selftest`
    /// must name the field).
    #[serde(skip_serializing_if = "is_false")]
    pub drop_user_role_sid: bool,
    /// With `drop_user_role_sid`: how many User writes (creates and
    /// updates) with a `RoleSid` keep it before it strikes, counted from
    /// when these settings were set (0: from the first). `1` spares a
    /// scene's create and strikes a repair's recreate and every update
    /// after it. `GET` shows the value as set.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub drop_user_role_sid_after: u32,
    /// A participant create or update keeps no `Attributes` (any
    /// identity): the participant's attributes stay `{}`.
    #[serde(skip_serializing_if = "is_false")]
    pub lose_participant_attributes: bool,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// [`ParticipantFault`] ready to evaluate.
#[derive(Debug, Clone)]
pub(crate) struct CompiledParticipantFault {
    pub(crate) settings: ParticipantFault,
    pattern: Option<Regex>,
    created_on: Option<Date>,
    /// User writes `drop_user_role_sid_after` has let pass so far (the
    /// settings live behind the state's lock: a `Cell` is enough).
    user_creates_spared: Cell<u32>,
}

fn compile_regex(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(pattern)
        .size_limit(MAX_REGEX_SIZE)
        .build()
        .map_err(|e| format!("invalid regex {pattern:?}: {e}"))
}

impl ParticipantFault {
    pub(crate) fn compile(&self) -> Result<CompiledParticipantFault, String> {
        if self.identities.len() > MAX_FAULT_IDENTITIES {
            return Err(format!("at most {MAX_FAULT_IDENTITIES} identities"));
        }
        if self.read_lag_ms > MAX_FAULT_DELAY_MS {
            return Err(format!("read_lag_ms above {MAX_FAULT_DELAY_MS} ms"));
        }
        let pattern = self
            .identity_pattern
            .as_deref()
            .map(compile_regex)
            .transpose()?;
        let created_on = match self.user_created_on.as_deref() {
            None => None,
            Some(day) => {
                let format = time::macros::format_description!("[year]-[month]-[day]");
                Some(
                    Date::parse(day, &format)
                        .map_err(|e| format!("user_created_on {day:?} is not YYYY-MM-DD: {e}"))?,
                )
            }
        };
        Ok(CompiledParticipantFault {
            settings: self.clone(),
            pattern,
            created_on,
            user_creates_spared: Cell::new(0),
        })
    }
}

impl CompiledParticipantFault {
    /// Settings under which the fault never fires.
    pub(crate) fn off() -> Self {
        Self {
            settings: ParticipantFault {
                mode: FaultMode::Off,
                ..ParticipantFault::default()
            },
            pattern: None,
            created_on: None,
            user_creates_spared: Cell::new(0),
        }
    }

    /// Does the User create or update being made now lose its `RoleSid`?
    /// Counts the writes `drop_user_role_sid_after` spares; call it once
    /// per write with a `RoleSid` that is about to be made.
    pub(crate) fn drops_user_role_sid(&self) -> bool {
        if !self.settings.drop_user_role_sid {
            return false;
        }
        let spared = self.user_creates_spared.get();
        if spared < self.settings.drop_user_role_sid_after {
            self.user_creates_spared.set(spared + 1);
            return false;
        }
        true
    }

    /// Does the fault apply to this identity, whose User was created on
    /// `user_created`?
    pub(crate) fn affects(&self, identity: &str, user_created: time::OffsetDateTime) -> bool {
        if self.settings.mode == FaultMode::Off {
            return false;
        }
        self.settings.identities.iter().any(|i| i == identity)
            || self
                .pattern
                .as_ref()
                .is_some_and(|re| re.is_match(identity))
            || self
                .created_on
                .is_some_and(|day| user_created.date() == day)
    }

    pub(crate) fn mode(&self) -> FaultMode {
        self.settings.mode
    }

    /// When a participant created now becomes readable (`None`: at once).
    pub(crate) fn readable_at(&self) -> Option<std::time::Instant> {
        (self.settings.read_lag_ms > 0).then(|| {
            std::time::Instant::now() + std::time::Duration::from_millis(self.settings.read_lag_ms)
        })
    }
}

/// A general fault-injection rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// HTTP method to match (any when absent), case-insensitive.
    #[serde(default)]
    pub method: Option<String>,
    /// Regex matched against the request path (without the query).
    pub path: String,
    /// How many more times the rule fires (unlimited when absent).
    #[serde(default)]
    pub times: Option<u32>,
    /// Only requests of this account (`AC...`) match (any account when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_sid: Option<String>,
    /// How many more matching requests the rule lets pass before it starts
    /// firing (counts down; absent = fires from the first match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u32>,
    /// The rule fires only while the request's account has more than this
    /// many `/v1` requests in flight, this one included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight_above: Option<u64>,
    pub action: FaultAction,
}

/// What a matching rule does.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultAction {
    /// Wait `ms` before handling the request (combines with other rules).
    Latency { ms: u64 },
    /// Answer with this 4xx/5xx status and a Twilio error body.
    Status {
        status: u16,
        #[serde(default)]
        code: Option<u32>,
        #[serde(default)]
        message: Option<String>,
    },
    /// 429 / 20429 with `Retry-After` (seconds; `null` sends no header).
    TooManyRequests {
        #[serde(default = "default_retry_after")]
        retry_after: Option<u64>,
    },
    /// Close the connection without a response.
    Reset {
        #[serde(default)]
        processed: bool,
    },
    /// Wait `ms`, then close the connection without a response.
    HangThenDrop {
        ms: u64,
        #[serde(default)]
        processed: bool,
    },
    /// Process the request, then send a truncated JSON body.
    MalformedJson,
    /// Wait `ms`, then process the request and answer normally; the wait and
    /// the processing run in their own task, so the request is processed
    /// even if the client closed the connection meanwhile.
    DelayThenProcess { ms: u64 },
    /// Park the request until `POST /__emulator/release`; then process it
    /// (`process_on_release`, the default, even if the client is gone) or
    /// close the connection without processing it.
    Hold {
        #[serde(default = "default_process_on_release")]
        process_on_release: bool,
    },
}

fn default_retry_after() -> Option<u64> {
    Some(1)
}

fn default_process_on_release() -> bool {
    true
}

impl FaultAction {
    /// Does this action run the request in a task of its own, so that it
    /// outlives the client's connection?
    pub(crate) fn detached(&self) -> bool {
        matches!(self, Self::DelayThenProcess { .. } | Self::Hold { .. })
    }
}

/// A rule with its regex compiled.
#[derive(Debug, Clone)]
pub(crate) struct CompiledRule {
    pub(crate) id: u64,
    pub(crate) rule: FaultRule,
    path: Regex,
}

impl FaultRule {
    pub(crate) fn compile(&self) -> Result<Regex, String> {
        if let Some(method) = &self.method {
            if http::Method::from_bytes(method.as_bytes()).is_err() {
                return Err(format!("invalid method {method:?}"));
            }
        }
        if let Some(sid) = &self.account_sid {
            if !twilio_wire::is_sid(sid, "AC") {
                return Err(format!(
                    "account_sid {sid:?} is not AC followed by 32 hex digits"
                ));
            }
        }
        match &self.action {
            FaultAction::Latency { ms }
            | FaultAction::HangThenDrop { ms, .. }
            | FaultAction::DelayThenProcess { ms }
                if *ms > MAX_FAULT_DELAY_MS =>
            {
                return Err(format!("delay above {MAX_FAULT_DELAY_MS} ms"));
            }
            FaultAction::Status { status, .. } if !(400..=599).contains(status) => {
                return Err(format!("status {status} is not 4xx/5xx"));
            }
            FaultAction::TooManyRequests {
                retry_after: Some(secs),
            } if *secs > MAX_RETRY_AFTER_SECS => {
                return Err(format!("retry_after above {MAX_RETRY_AFTER_SECS} s"));
            }
            _ => {}
        }
        compile_regex(&self.path)
    }

    pub(crate) fn compiled(&self, id: u64) -> Result<CompiledRule, String> {
        Ok(CompiledRule {
            id,
            rule: self.clone(),
            path: self.compile()?,
        })
    }
}

/// The faults chosen for one request.
#[derive(Debug, Default)]
pub(crate) struct Chosen {
    pub(crate) delay_ms: u64,
    pub(crate) action: Option<FaultAction>,
    /// Id of the rule that supplied `action`.
    pub(crate) rule_id: Option<u64>,
}

/// What [`choose`] knows about the request.
pub(crate) struct Incoming<'a> {
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) account_sid: &'a str,
    /// `/v1` requests of the account in flight, this one included.
    pub(crate) in_flight: u64,
}

/// Pick the faults for a request, counting down `after` and consuming `times`.
pub(crate) fn choose(rules: &mut Vec<CompiledRule>, req: &Incoming<'_>) -> Chosen {
    let mut chosen = Chosen::default();
    for rule in rules.iter_mut() {
        let method_ok = rule
            .rule
            .method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(req.method));
        let account_ok = rule
            .rule
            .account_sid
            .as_deref()
            .is_none_or(|a| a == req.account_sid);
        if !method_ok || !account_ok || !rule.path.is_match(req.path) || rule.rule.times == Some(0)
        {
            continue;
        }
        if let Some(after) = rule.rule.after.as_mut() {
            if *after > 0 {
                *after -= 1;
                continue;
            }
        }
        if rule
            .rule
            .in_flight_above
            .is_some_and(|limit| req.in_flight <= limit)
        {
            continue;
        }
        match &rule.rule.action {
            FaultAction::Latency { ms } => {
                chosen.delay_ms = chosen.delay_ms.saturating_add(*ms);
            }
            other => {
                if chosen.action.is_some() {
                    continue;
                }
                chosen.action = Some(other.clone());
                chosen.rule_id = Some(rule.id);
            }
        }
        if let Some(times) = rule.rule.times.as_mut() {
            *times = times.saturating_sub(1);
        }
    }
    rules.retain(|r| r.rule.times != Some(0));
    chosen
}
