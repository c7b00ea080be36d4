//! The label values of the proxy's series: small enums and integers, never
//! a string made per request, so that looking a series up allocates
//! nothing once it exists. No SID, identity or path is ever a label
//! (the shield's `account` label, only with `metrics.account_labels`, is
//! in `accounts`).

use std::fmt::Write as _;

use http::Method;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

use crate::vocabulary::{Outcome, StepKind};

/// The coarse class of a request, the `route` label (never a SID).
/// Routing decides it (`crate::routing::Target::class`); it lives here so
/// that the metrics need nothing from routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteClass {
    Conversations,
    Api,
    Other,
    Rejected,
}

impl RouteClass {
    pub const ALL: [RouteClass; 4] = [
        RouteClass::Conversations,
        RouteClass::Api,
        RouteClass::Other,
        RouteClass::Rejected,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            RouteClass::Conversations => "conversations",
            RouteClass::Api => "api",
            RouteClass::Other => "other",
            RouteClass::Rejected => "rejected",
        }
    }
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Whose credential a request carried, the `class` label of the shield's
/// metrics (never the SID itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccountClass {
    /// An account SID (`AC...`): the Basic user, or named by the path.
    Account,
    /// An API key (`SK...`) whose account the request does not name.
    Key,
    /// No Basic credential.
    Unknown,
}

impl AccountClass {
    pub const ALL: [AccountClass; 3] = [
        AccountClass::Account,
        AccountClass::Key,
        AccountClass::Unknown,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            AccountClass::Account => "account",
            AccountClass::Key => "key",
            AccountClass::Unknown => "unknown",
        }
    }
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Which kind of upstream failure to count (`trp_upstream_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamErrorKind {
    Connect,
    Timeout,
    Other,
}

impl UpstreamErrorKind {
    pub const ALL: [UpstreamErrorKind; 3] = [
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::Other,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Other => "other",
        }
    }
}

/// The listener a client connection came in on (`listener` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Listener {
    Proxy,
    Admin,
}

impl Listener {
    pub const ALL: [Listener; 2] = [Listener::Proxy, Listener::Admin];
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Proxy => "proxy",
            Listener::Admin => "admin",
        }
    }
}

/// What became of a check-only fault's rehearsal (`result` label of
/// `trp_rehearsals_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RehearsalResult {
    /// The plan could have been completed with the configured credential.
    WouldComplete,
    /// It could not (the why is on the panel and in the incident).
    WouldFail,
    /// Not rehearsed: `repair.rehearsal_max_in_flight` ran already.
    Skipped,
}

impl RehearsalResult {
    pub const ALL: [RehearsalResult; 3] = [
        RehearsalResult::WouldComplete,
        RehearsalResult::WouldFail,
        RehearsalResult::Skipped,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            RehearsalResult::WouldComplete => "would_complete",
            RehearsalResult::WouldFail => "would_fail",
            RehearsalResult::Skipped => "skipped",
        }
    }
}

/// `trp_rehearsals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RehearsalLabels {
    pub result: RehearsalResult,
}

/// A request's method as a label: the methods Twilio's API uses, anything
/// else `OTHER` (an extension method must not make a series of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MethodLabel {
    Get,
    Post,
    Put,
    Patch,
    Delete,
    Head,
    Options,
    Other,
}

impl MethodLabel {
    pub fn of(m: &Method) -> MethodLabel {
        match *m {
            Method::GET => MethodLabel::Get,
            Method::POST => MethodLabel::Post,
            Method::PUT => MethodLabel::Put,
            Method::PATCH => MethodLabel::Patch,
            Method::DELETE => MethodLabel::Delete,
            Method::HEAD => MethodLabel::Head,
            Method::OPTIONS => MethodLabel::Options,
            _ => MethodLabel::Other,
        }
    }
    pub fn index(self) -> usize {
        self as usize
    }
    pub fn as_str(self) -> &'static str {
        match self {
            MethodLabel::Get => "GET",
            MethodLabel::Post => "POST",
            MethodLabel::Put => "PUT",
            MethodLabel::Patch => "PATCH",
            MethodLabel::Delete => "DELETE",
            MethodLabel::Head => "HEAD",
            MethodLabel::Options => "OPTIONS",
            MethodLabel::Other => "OTHER",
        }
    }
}

/// The class of a status code (`2xx`...), the `status` label of the
/// duration histogram. Codes outside 100..=599 count in the nearest class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatusClass(u8);

impl StatusClass {
    pub fn of(code: u16) -> StatusClass {
        StatusClass((code / 100).clamp(1, 5) as u8)
    }
    /// 0 for `1xx` to 4 for `5xx`.
    pub fn index(self) -> usize {
        usize::from(self.0 - 1)
    }
}

/// The `code` label: an HTTP status code, as hyper bounds it (100..=999).
pub type Code = u16;

macro_rules! label_value_as_str {
    ($($t:ty),*) => {$(
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                encoder.write_str(self.as_str())
            }
        }
    )*};
}

label_value_as_str!(
    RouteClass,
    AccountClass,
    UpstreamErrorKind,
    Listener,
    MethodLabel,
    Outcome,
    StepKind,
    RehearsalResult
);

impl EncodeLabelValue for StatusClass {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_char(char::from(b'0' + self.0))?;
        encoder.write_str("xx")
    }
}

/// `trp_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: RouteClass,
    pub method: MethodLabel,
    pub code: Code,
}

/// `trp_request_duration_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AnswerLabels {
    pub route: RouteClass,
    pub method: MethodLabel,
    pub status: StatusClass,
}

/// `trp_upstream_latency_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: RouteClass,
}

/// `trp_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: UpstreamErrorKind,
}

/// `trp_repair_outcomes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: Outcome,
}

/// `trp_repair_step_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StepLabels {
    pub step: StepKind,
}

/// The shield's `class` series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ClassLabels {
    pub class: AccountClass,
}

/// `trp_open_connections`, `trp_parked_connections`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: Listener,
}

/// `trp_config_reloads_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: &'static str,
}

/// `trp_build_info`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
    pub commit: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes_and_methods() {
        let classes: Vec<u8> = [100, 199, 200, 429, 503, 599, 999, 42]
            .into_iter()
            .map(|c| StatusClass::of(c).0)
            .collect();
        assert_eq!(classes, [1, 1, 2, 4, 5, 5, 5, 1]);
        assert_eq!(MethodLabel::of(&Method::PATCH).as_str(), "PATCH");
        let ext = Method::from_bytes(b"PROPFIND").unwrap();
        assert_eq!(MethodLabel::of(&ext), MethodLabel::Other);
    }
}
