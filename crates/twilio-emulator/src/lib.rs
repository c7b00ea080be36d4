//! A stateful, in-memory emulator of Twilio Conversations v1, including the
//! "404/20404 on Participant create after that identity's participant was
//! deleted" fault that the proxy repairs.
//!
//! # Twilio API served
//!
//! Both the service-scoped paths (`/v1/Services/{IS}/...`) and the default
//! service paths (`/v1/...`):
//!
//! * `GET|POST /v1/Configuration` (`DefaultChatServiceSid` can be updated)
//! * `GET|POST /v1/Services`, `GET|DELETE /v1/Services/{IS}` (a delete
//!   removes everything in the service with it)
//! * `GET .../Roles`, `GET .../Roles/{RL}`: every service has Twilio's four
//!   default roles (`service admin`, `service user`, `channel admin`,
//!   `channel user`); Users get `service user`, participants `channel user`
//! * `GET|POST .../Conversations`, `GET|POST|DELETE .../Conversations/{CH or UniqueName}`
//! * `GET|POST .../Conversations/{CH}/Participants`,
//!   `GET|POST|DELETE .../Conversations/{CH}/Participants/{MB or identity}`
//! * `GET|POST .../Users`, `GET|POST|DELETE .../Users/{US or identity}`
//! * `GET .../Users/{US or identity}/Conversations[/{CH or UniqueName}]`
//!
//! and one call outside Conversations, a message send:
//! `POST /2010-04-01/Accounts/{AC}/Messages.json` (`To`, `From` or
//! `MessagingServiceSid`, `Body`) answers 201 with a `queued` message; it is
//! not kept (no fetch, no list) and another account's path answers 404.
//!
//! HTTP Basic auth with an account SID + auth token (or API key SID +
//! secret) is required on every `/v1/...` path. Every response carries
//! `Twilio-Request-Id: RQ<32 hex>`.
//!
//! # Accounts
//!
//! Besides the configured account (`account_sid`, `auth_token`, optional
//! `api_key_sid`/`api_key_secret`) the emulator serves the accounts of
//! `extra_accounts` and those added with `POST /__emulator/accounts` (at most
//! [`MAX_ACCOUNTS`] in all). The credentials of a request decide its
//! account; an API key (`SK...`) belongs to exactly one account, and a key or
//! token authenticates only together with its own account's partner
//! credential. Each account owns its own resources: services (with its own
//! default service and `/v1/Configuration`), conversations, users and
//! participants. A request of account B never sees or changes account A's
//! resources: a SID (or unique name, or identity) of A's answers
//! 404/20404 to B, as Twilio answers for a SID that is not yours, and
//! `account_sid` in every JSON is the owning account. The participant fault
//! settings and the injection rules apply to every account (a rule's
//! optional `account_sid` narrows it to one).
//!
//! # Control API (no auth; the proxy's default `reserved_prefixes` keeps `/__emulator/` from being forwarded)
//!
//! | method + path | body | effect |
//! |---|---|---|
//! | `GET /__emulator/health` | | `200 {"status":"ok"}` |
//! | `GET /__emulator/requests` | | `{"requests":[{seq, request_id, method, path (with raw query), headers, auth_user, account_sid, form, status, outcome, fault, held_seq?}], "dropped": n}` |
//! | `DELETE /__emulator/requests` | | clears the request log (204) |
//! | `POST /__emulator/reset` | | wipes all resources, the request log, and restores the start-up fault settings, injection rules and accounts (the default services keep their SID) and drops held requests (204; see below) |
//! | `GET /__emulator/fault` | | current participant fault settings |
//! | `PUT /__emulator/fault` | `{"mode":"ghost"\|"block"\|"off","identities":[..],"identity_pattern":"re"\|null,"user_created_on":"YYYY-MM-DD"\|null,"read_lag_ms":n,"drop_user_role_sid":bool,"drop_user_role_sid_after":n,"lose_participant_attributes":bool}` | replaces them |
//! | `GET /__emulator/faults` | | injection rules with their ids and remaining counts |
//! | `POST /__emulator/faults` | a [`FaultRule`] as JSON | adds a rule (201 `{"id":n}`) |
//! | `DELETE /__emulator/faults` | | removes all rules (204) |
//! | `PUT /__emulator/users/date-created` | `{"identity":"alice","service_sid":"IS.."(optional, default service),"account_sid":"AC.."(optional, the configured account),"date_created":"2024-05-01T10:00:00Z"}` | sets a User's creation date (200, the user JSON) |
//! | `GET /__emulator/accounts` | | `{"accounts":[{account_sid, api_key_sid, default_chat_service_sid, configured}]}` (never a secret) |
//! | `POST /__emulator/accounts` | `{"account_sid":"AC..","auth_token":"..","api_key_sid":"SK.."(optional),"api_key_secret":".."(with the key)}` | adds an account with empty resources (201, its `accounts` entry); 409 if the SID or the key is already in use, 400 if malformed or beyond [`MAX_ACCOUNTS`] |
//! | `GET /__emulator/held` | | `{"held":[{seq, rule_id, method, path (with raw query), account_sid, held_ms}], "max_held": n}`: requests parked by `hold` rules |
//! | `POST /__emulator/release` | none (all), `{"id": rule_id}` or `{"seq": n}` | releases held requests (200 `{"released": n}`) |
//! | `GET /__emulator/stats` | | `{"in_flight": n, "max_in_flight": m, "accounts": {"AC..": {"in_flight": n, "max_in_flight": m}}}` |
//! | `DELETE /__emulator/stats` | | every `max_in_flight` restarts from the current `in_flight` (204) |
//!
//! The request log's `auth_user` is the Basic username as sent (`AC...` or
//! `SK...`), `account_sid` the account it resolved to (`null` when refused
//! with 401); a request held by a `hold` rule also has `held_seq`. `outcome`
//! is `responded`, or the fault that shaped the answer: `injected_status`,
//! `reset`, `hang_then_drop`, `malformed_json`, `delay_then_process`, `held`
//! (processed on release), `held_dropped`, `hold_full`. `reset`
//! also removes the accounts added at run time (the configured ones keep
//! their default service SID) and drops held requests unprocessed; it
//! leaves the in-flight statistics alone. A request authenticated before a
//! reset is not written to the new log (a delayed one still runs, against
//! the state after the reset).
//!
//! `in_flight` counts `/v1` requests (any non-control request) from arrival
//! until they are answered or, for requests whose client went away while
//! delayed or held, processed; per account from authentication on (a 401
//! counts only overall). Held and delayed requests are in flight.
//!
//! Example fault rules (`POST /__emulator/faults`):
//!
//! ```json
//! {"method":"POST","path":"/Participants$","times":1,"action":{"kind":"status","status":503}}
//! {"path":"^/v1/Users","action":{"kind":"too_many_requests","retry_after":2}}
//! {"path":"/Participants$","action":{"kind":"reset","processed":true}}
//! {"path":".","action":{"kind":"hang_then_drop","ms":500}}
//! {"path":".","action":{"kind":"latency","ms":200}}
//! {"method":"GET","path":"/Users/","action":{"kind":"malformed_json"}}
//! {"method":"DELETE","path":"/Users/","action":{"kind":"delay_then_process","ms":2000}}
//! {"method":"POST","path":"/Users$","action":{"kind":"hold","process_on_release":true}}
//! {"path":"^/v1/","in_flight_above":5,"action":{"kind":"too_many_requests","retry_after":null}}
//! {"method":"POST","path":"/Participants$","after":2,"times":1,"action":{"kind":"reset"}}
//! {"account_sid":"ACbb..","path":".","action":{"kind":"status","status":500}}
//! ```
//!
//! Semantics: every matching `latency` rule adds its delay; then the first
//! matching rule of another kind applies. `times` (optional) is how many
//! more requests a rule may fire on; it is removed when it reaches zero.
//! A rule matches a request by `method` (optional), `path` (regex on the
//! path without the query) and `account_sid` (optional). `after: N`
//! (optional) lets the first N matching requests pass (whatever other rules
//! do with them) and counts down; `in_flight_above: N` (optional) makes the
//! rule fire only while the request's account has more than N `/v1`
//! requests in flight, this one included (combine it with
//! `too_many_requests` to model Twilio's concurrency limit). A request that
//! `after` or `in_flight_above` lets pass does not use up `times`.
//! `status` and `too_many_requests` answer without processing the request;
//! `too_many_requests` sends `Retry-After: retry_after` (default 1, `null`
//! for none, at most [`MAX_RETRY_AFTER_SECS`]).
//! `reset` and `hang_then_drop` close the TCP connection without any response,
//! before processing the request or (with `"processed": true`) after it.
//! `malformed_json` processes the request and then sends a truncated body.
//! `delay_then_process` waits `ms` (at most [`MAX_FAULT_DELAY_MS`]), then
//! processes the request and answers normally; the wait and the processing
//! run in their own task, so the request is processed even if the client
//! closed its connection or was killed meanwhile (a plain `latency` request
//! is abandoned with its connection). `hold` parks the request (listed by
//! `GET /__emulator/held`) until `POST /__emulator/release`; then, with
//! `process_on_release` (default true), it is processed and answered
//! normally, also when its client went away meanwhile (it runs in its own
//! task too); with `false`, the connection is closed and nothing is
//! processed. At most `max_held_requests` (default
//! [`DEFAULT_MAX_HELD_REQUESTS`]) are held at once; one more answers
//! 503/20503 unprocessed. A request held for [`MAX_HOLD`], or held when the
//! emulator is reset or shut down, is dropped unprocessed.
//! Connection drops only happen through [`serve`]; when [`router`] is used
//! in-process the dropped response is an empty `500` carrying the
//! [`DropConnection`] extension.
//!
//! # The participant fault
//!
//! For an *affected* identity (exact list, regex, or User creation date)
//! whose User had one of its participants deleted (from any conversation of
//! the service), every later `POST .../Participants` with that `Identity`
//! (to any conversation of the service) answers `404` / `20404` with the
//! message `The requested resource {path} was not found`, where `{path}` is
//! the request path. In `ghost` mode the participant is created anyway; in
//! `block` mode it is not. The "stale mapping" belongs to the User SID:
//! deleting and recreating the User clears it. A duplicate identity in the
//! conversation still answers 50433 first (choice: the duplicate check runs
//! before the fault).
//!
//! Read lag (`read_lag_ms`, off by default): Twilio's reads may lag its
//! writes. With it, a `GET .../Participants/{MB or identity}` answers
//! 404/20404 for that many milliseconds after the participant's create
//! (every participant, whatever the mode; the list is not lagged), while
//! a second create of it already answers 409/50433.
//!
//! Lost fields (off by default; any identity, any mode): with
//! `drop_user_role_sid` a User create or update ignores its `RoleSid` (the
//! User gets or keeps the service's default role, and the answer shows it;
//! with `drop_user_role_sid_after: N` the first N such writes from when the
//! settings are put keep it, so a repair's recreate can be struck and not
//! the User it replaces); with
//! `lose_participant_attributes` a participant create or update keeps no
//! `Attributes` (they stay `{}`). They make a double of an account on which
//! a field does not survive the repair's recreate, which `selftest` must
//! catch and name.
//!
//! # Choices where the spec and research notes are silent
//!
//! * 50433 (participant exists), 50416 (address pair in use), 50201 (user
//!   exists) and 50353 (conversation unique name in use) are sent with HTTP 409.
//! * 50416 is checked across all conversations of the service.
//! * Deleting a User removes its participants from every conversation of the
//!   service by default (`user_delete_removes_participants = true`).
//! * A missing participant/user/conversation answers 404/20404 (not 50432/50200).
//! * Bad parameters (`PageSize`, `Attributes` not JSON, `RoleSid` shape,
//!   dates, `PageToken`) answer 400/20001; a wrong method answers 405/20004; a
//!   body over [`MAX_BODY_BYTES`] answers 413/20001.
//! * List order is creation order; SIDs embed a creation counter so that
//!   `PageToken=PT<sid>` stays valid when that item is deleted.
//! * `PageToken=PB<sid>` (used in `previous_page_url`) pages backwards.
//! * Deleting the default service answers 409/20409.
//! * `is_online`/`is_notifiable` are `false` on fetch and `null` elsewhere.
//! * Creating a participant with a new `Identity` creates the User.

#![forbid(unsafe_code)]

mod accounts;
mod api;
mod control;
mod faults;
mod model;
mod pipeline;
mod store;
mod traffic;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use serde::Deserialize;

pub use accounts::{AccountConfig, AccountError, MAX_ACCOUNTS};
pub use faults::{
    FaultAction, FaultMode, FaultRule, MAX_FAULT_DELAY_MS, MAX_RETRY_AFTER_SECS, ParticipantFault,
};
pub use traffic::{DEFAULT_MAX_HELD_REQUESTS, MAX_HELD_REQUESTS_LIMIT, MAX_HOLD};

/// Maximum size of a request body (form or control-API JSON), in bytes.
/// Twilio's own form bodies are a few hundred bytes; 64 KiB leaves room for
/// large `Attributes` without letting a client exhaust memory.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Default account SID (the placeholder the OpenAPI spec uses).
pub const DEFAULT_ACCOUNT_SID: &str = "ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
/// Default auth token: alphanumeric, because twilio-go rejects anything else.
pub const DEFAULT_AUTH_TOKEN: &str = "emulatortoken0000000000000000000";
/// Default public base URL used in `url`, `links` and `meta.*_url` fields.
pub const DEFAULT_PUBLIC_URL: &str = "https://conversations.twilio.com";
/// Default friendly name of the default conversation service.
pub const DEFAULT_SERVICE_NAME: &str = "Default Conversations Service";
/// Default bound of the request log; the oldest entries are dropped first.
pub const DEFAULT_MAX_REQUEST_LOG: usize = 10_000;
/// How long [`serve`] waits for open connections after shutdown is signalled.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Command-line flags of `twilio-repair-proxy emulator`.
#[derive(clap::Args, Debug, Clone)]
pub struct EmulatorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4010")]
    pub listen: SocketAddr,
    /// Account SID accepted as Basic username and echoed as `account_sid`
    /// (default ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa).
    #[arg(long)]
    pub account_sid: Option<String>,
    /// Auth token accepted as Basic password (default
    /// emulatortoken0000000000000000000).
    #[arg(long)]
    pub auth_token: Option<String>,
    /// Base URL written into `url`, `links` and pagination fields (default
    /// <https://conversations.twilio.com>).
    #[arg(long)]
    pub public_url: Option<String>,
    /// TOML file with emulator settings (flat keys, see module docs).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// All emulator settings. Loaded from a flat TOML file; command-line flags
/// override `account_sid`, `auth_token` and `public_url`.
///
/// ```toml
/// account_sid = "ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
/// auth_token = "emulatortoken0000000000000000000"
/// api_key_sid = "SKbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
/// api_key_secret = "emulatorsecret"
/// public_url = "http://127.0.0.1:4010"
/// default_service_friendly_name = "Default Conversations Service"
/// user_delete_removes_participants = true
/// max_request_log = 10000
/// max_held_requests = 256
/// fault_mode = "ghost"                 # ghost | block | off
/// fault_identities = ["alice"]
/// fault_identity_pattern = "^legacy-"
/// fault_user_created_on = "2024-05-01"
/// fault_read_lag_ms = 0                # participant GETs lag creates by this
///
/// [[extra_accounts]]                   # more accounts, each with its own resources
/// account_sid = "ACbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
/// auth_token = "othertoken"
/// api_key_sid = "SKcccccccccccccccccccccccccccccccc"   # optional
/// api_key_secret = "othersecret"
///
/// [[faults]]
/// method = "POST"
/// path = "/Participants$"
/// times = 1
/// action = { kind = "status", status = 503 }
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmulatorConfig {
    pub account_sid: String,
    pub auth_token: String,
    /// Optional API key (`SK...`) accepted as Basic username with `api_key_secret`.
    pub api_key_sid: Option<String>,
    pub api_key_secret: Option<String>,
    pub public_url: String,
    pub default_service_friendly_name: String,
    /// Deleting a User removes its participants from every conversation of
    /// the service (the real behaviour is undocumented; default true).
    pub user_delete_removes_participants: bool,
    /// Bound of the request log.
    pub max_request_log: usize,
    /// Most requests parked by `hold` rules at once (1 to
    /// [`MAX_HELD_REQUESTS_LIMIT`]); one more answers 503/20503.
    pub max_held_requests: usize,
    /// Accounts besides `account_sid`, each with its own resources.
    pub extra_accounts: Vec<AccountConfig>,
    pub fault_mode: FaultMode,
    pub fault_identities: Vec<String>,
    pub fault_identity_pattern: Option<String>,
    /// `YYYY-MM-DD`: identities whose User was created that day (UTC).
    pub fault_user_created_on: Option<String>,
    /// A participant GET answers 404 for this many ms after its create.
    pub fault_read_lag_ms: u64,
    /// General fault-injection rules active from start-up.
    pub faults: Vec<FaultRule>,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            account_sid: DEFAULT_ACCOUNT_SID.to_owned(),
            auth_token: DEFAULT_AUTH_TOKEN.to_owned(),
            api_key_sid: None,
            api_key_secret: None,
            public_url: DEFAULT_PUBLIC_URL.to_owned(),
            default_service_friendly_name: DEFAULT_SERVICE_NAME.to_owned(),
            user_delete_removes_participants: true,
            max_request_log: DEFAULT_MAX_REQUEST_LOG,
            max_held_requests: DEFAULT_MAX_HELD_REQUESTS,
            extra_accounts: Vec::new(),
            fault_mode: FaultMode::Ghost,
            fault_identities: Vec::new(),
            fault_identity_pattern: None,
            fault_user_created_on: None,
            fault_read_lag_ms: 0,
            faults: Vec::new(),
        }
    }
}

/// Invalid emulator configuration.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("account_sid must be AC followed by 32 hex digits")]
    AccountSid,
    #[error("auth_token must be non-empty and alphanumeric")]
    AuthToken,
    #[error("api_key_sid and api_key_secret must be set together; api_key_sid must start with SK")]
    ApiKey,
    #[error("public_url must start with http:// or https://")]
    PublicUrl,
    #[error("extra_accounts[{index}]: {source}")]
    ExtraAccount { index: usize, source: AccountError },
    #[error("max_held_requests must be between 1 and {MAX_HELD_REQUESTS_LIMIT}")]
    MaxHeldRequests,
    #[error("invalid fault settings: {0}")]
    Fault(String),
}

impl EmulatorConfig {
    /// Load `--config` (if any), apply the flag overrides, and validate.
    pub fn from_args(args: &EmulatorArgs) -> anyhow::Result<Self> {
        let mut config = match &args.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| EmulatorConfigError::Read {
                        path: path.clone(),
                        source,
                    })?;
                toml::from_str::<EmulatorConfig>(&text).map_err(|source| {
                    EmulatorConfigError::Parse {
                        path: path.clone(),
                        source,
                    }
                })?
            }
            None => EmulatorConfig::default(),
        };
        if let Some(sid) = &args.account_sid {
            config.account_sid = sid.clone();
        }
        if let Some(token) = &args.auth_token {
            config.auth_token = token.clone();
        }
        if let Some(url) = &args.public_url {
            config.public_url = url.clone();
        }
        config.validate()?;
        Ok(config)
    }

    /// Check every setting ([`router`] skips invalid fault settings instead).
    pub fn validate(&self) -> Result<(), EmulatorConfigError> {
        if !twilio_wire::is_sid(&self.account_sid, "AC") {
            return Err(EmulatorConfigError::AccountSid);
        }
        if self.auth_token.is_empty() || !self.auth_token.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(EmulatorConfigError::AuthToken);
        }
        match (&self.api_key_sid, &self.api_key_secret) {
            (None, None) => {}
            (Some(sid), Some(secret)) if sid.starts_with("SK") && !secret.is_empty() => {}
            _ => return Err(EmulatorConfigError::ApiKey),
        }
        if !(self.public_url.starts_with("http://") || self.public_url.starts_with("https://")) {
            return Err(EmulatorConfigError::PublicUrl);
        }
        if !(1..=MAX_HELD_REQUESTS_LIMIT).contains(&self.max_held_requests) {
            return Err(EmulatorConfigError::MaxHeldRequests);
        }
        let all = self.accounts();
        for (index, creds) in self.extra_accounts.iter().enumerate() {
            // Index 0 of `all` is the configured account, checked above.
            creds
                .check_joins(all[..=index].iter(), index + 1)
                .map_err(|source| EmulatorConfigError::ExtraAccount { index, source })?;
        }
        self.participant_fault()
            .compile()
            .map_err(EmulatorConfigError::Fault)?;
        for rule in &self.faults {
            rule.compile().map_err(EmulatorConfigError::Fault)?;
        }
        Ok(())
    }

    /// The configured account followed by `extra_accounts`.
    pub fn accounts(&self) -> Vec<AccountConfig> {
        let main = AccountConfig {
            account_sid: self.account_sid.clone(),
            auth_token: self.auth_token.clone(),
            api_key_sid: self.api_key_sid.clone(),
            api_key_secret: self.api_key_secret.clone(),
        };
        std::iter::once(main)
            .chain(self.extra_accounts.iter().cloned())
            .collect()
    }

    /// The participant-fault part of the settings.
    pub fn participant_fault(&self) -> ParticipantFault {
        ParticipantFault {
            mode: self.fault_mode,
            identities: self.fault_identities.clone(),
            identity_pattern: self.fault_identity_pattern.clone(),
            user_created_on: self.fault_user_created_on.clone(),
            read_lag_ms: self.fault_read_lag_ms,
            ..ParticipantFault::default()
        }
    }
}

/// Response extension asking [`serve`] to drop the connection without
/// sending the response.
#[derive(Debug, Clone, Copy)]
pub struct DropConnection;

/// Error returned to hyper to abort a connection (see [`DropConnection`]).
#[derive(Debug, thiserror::Error)]
#[error("emulator fault injection: connection dropped")]
struct ConnectionDropped;

/// The whole emulator as an axum app.
pub fn router(config: EmulatorConfig) -> Router {
    app(Arc::new(model::Shared::new(config)))
}

fn app(shared: Arc<model::Shared>) -> Router {
    Router::new()
        .route("/__emulator/health", get(control::health))
        .route(
            "/__emulator/requests",
            get(control::get_requests).delete(control::clear_requests),
        )
        .route("/__emulator/reset", post(control::reset))
        .route(
            "/__emulator/fault",
            get(control::get_fault).put(control::put_fault),
        )
        .route(
            "/__emulator/faults",
            get(control::get_faults)
                .post(control::add_fault)
                .delete(control::clear_faults),
        )
        .route(
            "/__emulator/users/date-created",
            put(control::set_user_date_created),
        )
        .route(
            "/__emulator/accounts",
            get(control::list_accounts).post(control::add_account),
        )
        .route(
            "/__emulator/stats",
            get(control::get_stats).delete(control::reset_stats),
        )
        .route("/__emulator/held", get(control::get_held))
        .route("/__emulator/release", post(control::release))
        .fallback(pipeline::handle)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(pipeline::ensure_request_id))
        .with_state(shared)
}

/// Serve the emulator on `listener` until `shutdown` resolves.
///
/// Its own accept loop, not the proxy's (`twilio_repair_proxy::server`): an
/// injected fault must be able to close a connection without any answer
/// ([`DropConnection`]), which the proxy's loop, built for bounded,
/// never-failing services, does not allow; and the emulator wants none of its
/// connection limits and watchdogs.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: EmulatorConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tower::ServiceExt;

    let shared = Arc::new(model::Shared::new(config));
    let app = app(shared.clone());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Transient accept errors (EMFILE, ECONNABORTED): back off briefly.
                    tracing::warn!(error = %err, "emulator accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let app = app.clone();
        let service =
            hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let app = app.clone();
                async move {
                    let response = match app.oneshot(req.map(axum::body::Body::new)).await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    };
                    if response.extensions().get::<DropConnection>().is_some() {
                        Err(ConnectionDropped)
                    } else {
                        Ok::<_, ConnectionDropped>(response)
                    }
                }
            });
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(err) = watcher.watch(conn).await {
                tracing::debug!(error = %err, "emulator connection ended with an error");
            }
        });
    }
    drop(listener);
    // Held requests end now (connection closed, not processed).
    shared.traffic.cancel_all();
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("emulator shutdown: connections still open after grace period");
    }
    Ok(())
}

/// `twilio-repair-proxy emulator`: bind, log, serve until Ctrl-C or SIGTERM.
pub async fn main(args: EmulatorArgs) -> anyhow::Result<()> {
    // Logging to stderr unless the caller already installed a subscriber.
    // Not the proxy's `telemetry::init`: that one is driven by the proxy's
    // configuration (`log.format`, `log.level`), which the emulator has not.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let config = EmulatorConfig::from_args(&args)?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let local = listener.local_addr()?;
    // The auth token and API key secret are never logged.
    tracing::info!(
        listen = %local,
        account_sid = %config.account_sid,
        api_key_sid = config.api_key_sid.as_deref().unwrap_or("-"),
        extra_accounts = config.extra_accounts.len(),
        public_url = %config.public_url,
        fault_mode = ?config.fault_mode,
        "Twilio Conversations emulator listening (control API under /__emulator/)"
    );
    serve(listener, config, twilio_wire::shutdown_signal()).await?;
    tracing::info!("emulator stopped");
    Ok(())
}
