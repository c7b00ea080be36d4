//! The Twilio Conversations v1 API surface of the emulator: the error and
//! reply types, the request as the handlers see it, and [`dispatch`], which
//! routes a request to its resource. One file per resource:
//!
//! - [`services`]: `/v1/Configuration`, `/v1/Services[/{IS}]`, a service's
//!   `.../Roles[/{RL}]`;
//! - [`conversations`], [`participants`], [`users`]: the service-scoped
//!   resources (under `/v1/Services/{IS}/...` or the default service's
//!   `/v1/...`);
//! - [`messages`]: `POST /2010-04-01/Accounts/{AC}/Messages.json`, a
//!   message send outside Conversations (accepted, not kept);
//! - [`params`]: form and query parameters, pagination.

mod conversations;
mod messages;
mod params;
mod participants;
mod services;
mod users;

use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, Method, StatusCode, header};
use serde_json::Value;

use crate::EmulatorConfig;
use crate::faults::CompiledParticipantFault;
use crate::model::{self, EmulatorStore, Scope, Shared};
use twilio_wire::{error_response, twilio_more_info};

use conversations::{conversation_item, create_conversation, list_conversations};
pub(crate) use params::Params;
use participants::{create_participant, list_participants, participant_item};
use services::{configuration, role, roles, service, services};
pub(crate) use users::set_user_date_created;
use users::{create_user, fetch_user_conversation, list_user_conversations, list_users, user_item};

/// Longest identity accepted (Twilio: "Limited to 256 characters").
const MAX_IDENTITY_CHARS: usize = 256;

/// A Twilio error answer.
#[derive(Debug, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub(crate) struct EmulatorError {
    pub(crate) status: StatusCode,
    code: u32,
    message: String,
    /// Set when the participant fault produced this error (request log).
    pub(crate) fault: Option<&'static str>,
}

impl EmulatorError {
    pub(crate) fn new(status: StatusCode, code: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            fault: None,
        }
    }

    pub(crate) fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            20404,
            format!("The requested resource {path} was not found"),
        )
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, 20001, message)
    }

    fn conflict(code: u32, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    fn invalid_code(code: u32, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    fn method_not_allowed() -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, 20004, "Method not allowed")
    }

    pub(crate) fn into_response(self) -> Response {
        error_response::<Body>(
            self.status,
            self.code,
            &self.message,
            &twilio_more_info(self.code),
        )
    }
}

/// A successful answer.
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    body: Option<Value>,
}

impl Reply {
    pub(crate) fn into_response(self) -> Response {
        json_response(self.status, self.body.as_ref())
    }
    fn ok(body: Value) -> Self {
        Self {
            status: StatusCode::OK,
            body: Some(body),
        }
    }
    fn created(body: Value) -> Self {
        Self {
            status: StatusCode::CREATED,
            body: Some(body),
        }
    }
    fn no_content() -> Self {
        Self {
            status: StatusCode::NO_CONTENT,
            body: None,
        }
    }
}

type ApiResult = Result<Reply, EmulatorError>;

/// One API request as the handlers see it.
pub(crate) struct Req<'a> {
    pub(crate) method: &'a Method,
    /// Raw (still percent-encoded) path, used in messages and page URLs.
    pub(crate) path: &'a str,
    pub(crate) query: Params,
    pub(crate) form: &'a Params,
}

pub(crate) fn json_response(status: StatusCode, body: Option<&Value>) -> Response {
    let mut response = match body {
        Some(v) => {
            let mut r = Response::new(Body::from(serde_json::to_vec(v).unwrap_or_default()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        None => Response::new(Body::empty()),
    };
    *response.status_mut() = status;
    response
}

/// Route one API request authenticated as `account_sid`.
pub(crate) fn dispatch(shared: &Shared, req: &Req<'_>, account_sid: &str) -> ApiResult {
    let mut decoded: Vec<String> = Vec::new();
    for raw in req.path.split('/').skip(1) {
        match percent_encoding::percent_decode_str(raw).decode_utf8() {
            Ok(s) => decoded.push(s.into_owned()),
            Err(_) => return Err(EmulatorError::not_found(req.path)),
        }
    }
    let segs: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let config = &shared.config;
    let mut guard = shared.lock();
    let state = &mut *guard;
    let Some(account) = state
        .accounts
        .iter_mut()
        .find(|a| a.creds.account_sid == account_sid)
    else {
        // Removed by a reset while this request was waiting.
        return Err(EmulatorError::new(
            StatusCode::UNAUTHORIZED,
            20003,
            "Authenticate",
        ));
    };
    let ctx = Call {
        config,
        account_sid,
        req,
        fault: &state.fault,
    };
    let store = &mut account.store;
    match segs.as_slice() {
        ["v1", "Configuration"] => configuration(&ctx, store),
        ["v1", "Services"] => services(&ctx, store),
        ["v1", "Services", sid] => service(&ctx, store, sid),
        ["v1", "Services", sid, tail @ ..] => {
            let idx = store
                .service_index(sid)
                .ok_or_else(|| EmulatorError::not_found(req.path))?;
            scoped(&ctx, store, idx, true, tail)
        }
        ["v1", tail @ ..] if !tail.is_empty() => {
            let idx = store
                .service_index(&store.default_service_sid.clone())
                .ok_or_else(|| EmulatorError::not_found(req.path))?;
            scoped(&ctx, store, idx, false, tail)
        }
        ["2010-04-01", "Accounts", ac, "Messages.json"] if *ac == account_sid => {
            match *req.method {
                Method::POST => messages::create_message(&ctx),
                _ => Err(EmulatorError::method_not_allowed()),
            }
        }
        _ => Err(EmulatorError::not_found(req.path)),
    }
}

/// What every resource handler reads: the settings, the account the request
/// authenticated as, the request, the participant fault settings.
struct Call<'a> {
    config: &'a EmulatorConfig,
    /// The account the request authenticated as (owner of `store`).
    account_sid: &'a str,
    req: &'a Req<'a>,
    fault: &'a CompiledParticipantFault,
}

impl Call<'_> {
    fn scope<'s>(&'s self, service_sid: &'s str, scoped: bool) -> Scope<'s> {
        Scope {
            base: &self.config.public_url,
            account_sid: self.account_sid,
            service_sid,
            scoped,
        }
    }
    fn not_found(&self) -> EmulatorError {
        EmulatorError::not_found(self.req.path)
    }
    fn form(&self, name: &str) -> Option<&str> {
        self.req.form.get(name)
    }
}

// ---- service-scoped resources ----

/// Route a request under a service (`scoped`: named by `/v1/Services/{IS}`,
/// else the default service's `/v1/...`) to its resource.
fn scoped(
    ctx: &Call<'_>,
    store: &mut EmulatorStore,
    idx: usize,
    scoped: bool,
    tail: &[&str],
) -> ApiResult {
    let default_mg = store.default_messaging_service_sid.clone();
    let Some(service) = store.services.get_mut(idx) else {
        return Err(ctx.not_found());
    };
    let service_sid = service.sid.clone();
    let scope = ctx.scope(&service_sid, scoped);
    let method = ctx.req.method;
    match (tail, method) {
        (["Conversations"], &Method::GET) => list_conversations(ctx, scope, service),
        (["Conversations"], &Method::POST) => create_conversation(ctx, scope, service, default_mg),
        (["Conversations"], _) => Err(EmulatorError::method_not_allowed()),
        (["Conversations", c], _) => conversation_item(ctx, scope, service, c),
        (["Conversations", c, "Participants"], &Method::GET) => {
            list_participants(ctx, scope, service, c)
        }
        (["Conversations", c, "Participants"], &Method::POST) => {
            create_participant(ctx, scope, service, c)
        }
        (["Conversations", _, "Participants"], _) => Err(EmulatorError::method_not_allowed()),
        (["Conversations", c, "Participants", p], _) => participant_item(ctx, scope, service, c, p),
        (["Users"], &Method::GET) => list_users(ctx, scope, service),
        (["Users"], &Method::POST) => create_user(ctx, scope, service),
        (["Users"], _) => Err(EmulatorError::method_not_allowed()),
        (["Users", u], _) => user_item(ctx, scope, service, u),
        (["Users", u, "Conversations"], &Method::GET) => {
            list_user_conversations(ctx, scope, service, u)
        }
        (["Users", u, "Conversations", c], &Method::GET) => {
            fetch_user_conversation(ctx, scope, service, u, c)
        }
        (["Users", _, "Conversations", ..], _) => Err(EmulatorError::method_not_allowed()),
        (["Roles"], _) if scoped => roles(ctx, service),
        (["Roles", r], _) if scoped => role(ctx, service, r),
        _ => Err(ctx.not_found()),
    }
}

type Svc = model::Service;
