//! Fault settings: the participant fault and general injection rules.

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};
use time::Date;

/// Compiled size limit of a client-supplied regex (bytes).
const MAX_REGEX_SIZE: usize = 1 << 20;
/// Longest delay a rule may ask for (latency, hang), in milliseconds.
pub const MAX_FAULT_DELAY_MS: u64 = 120_000;
/// Most injection rules held at once.
pub const MAX_FAULT_RULES: usize = 1_000;
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
}

/// [`ParticipantFault`] ready to evaluate.
#[derive(Debug, Clone)]
pub(crate) struct CompiledParticipantFault {
    pub(crate) settings: ParticipantFault,
    pattern: Option<Regex>,
    created_on: Option<Date>,
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
        }
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
    /// 429 / 20429 with `Retry-After` (seconds).
    TooManyRequests {
        #[serde(default = "default_retry_after")]
        retry_after: u64,
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
}

fn default_retry_after() -> u64 {
    1
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
        match &self.action {
            FaultAction::Latency { ms } | FaultAction::HangThenDrop { ms, .. }
                if *ms > MAX_FAULT_DELAY_MS =>
            {
                return Err(format!("delay above {MAX_FAULT_DELAY_MS} ms"));
            }
            FaultAction::Status { status, .. } if !(400..=599).contains(status) => {
                return Err(format!("status {status} is not 4xx/5xx"));
            }
            FaultAction::TooManyRequests { retry_after } if *retry_after > 86_400 => {
                return Err("retry_after above one day".to_owned());
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
}

/// Pick the faults for `method path`, consuming `times`.
pub(crate) fn choose(rules: &mut Vec<CompiledRule>, method: &str, path: &str) -> Chosen {
    let mut chosen = Chosen::default();
    for rule in rules.iter_mut() {
        let method_ok = rule
            .rule
            .method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method));
        if !method_ok || !rule.path.is_match(path) || rule.rule.times == Some(0) {
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
            }
        }
        if let Some(times) = rule.rule.times.as_mut() {
            *times = times.saturating_sub(1);
        }
    }
    rules.retain(|r| r.rule.times != Some(0));
    chosen
}
