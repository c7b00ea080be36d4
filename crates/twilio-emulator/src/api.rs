//! The Twilio Conversations v1 API surface of the emulator.

use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, Method, StatusCode, header};
use serde_json::{Map, Value, json};

use crate::EmulatorConfig;
use crate::faults::{CompiledParticipantFault, FaultMode};
use crate::model::{
    self, Binding, Conversation, MAX_ITEMS_PER_COLLECTION, MAX_PARTICIPANTS_PER_CONVERSATION,
    Participant, Scope, Shared, Store, User, parse_date,
};
use twilio_wire::{error_response, is_sid, twilio_more_info};

/// Longest identity accepted (Twilio: "Limited to 256 characters").
const MAX_IDENTITY_CHARS: usize = 256;
/// Default `PageSize`.
const DEFAULT_PAGE_SIZE: u32 = 50;
/// Maximum `PageSize` of participant, conversation and service lists.
const MAX_PAGE_SIZE_LARGE: u32 = 100;
/// Maximum `PageSize` of user and user-conversation lists.
const MAX_PAGE_SIZE_USERS: u32 = 50;

/// A Twilio error answer.
#[derive(Debug, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    code: u32,
    message: String,
    /// Set when the participant fault produced this error (request log).
    pub(crate) fault: Option<&'static str>,
}

impl ApiError {
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

type ApiResult = Result<Reply, ApiError>;

/// Decoded form body or query string.
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    pub(crate) fn parse(bytes: &[u8]) -> Self {
        Self(form_urlencoded::parse(bytes).into_owned().collect())
    }
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub(crate) fn to_json(&self) -> Value {
        // Repeated keys: the last value wins in the log.
        let mut map = Map::new();
        for (k, v) in &self.0 {
            map.insert(k.clone(), Value::String(v.clone()));
        }
        Value::Object(map)
    }
}

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
            Err(_) => return Err(ApiError::not_found(req.path)),
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
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            20003,
            "Authenticate",
        ));
    };
    let ctx = Ctx {
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
                .ok_or_else(|| ApiError::not_found(req.path))?;
            scoped(&ctx, store, idx, true, tail)
        }
        ["v1", tail @ ..] if !tail.is_empty() => {
            let idx = store
                .service_index(&store.default_service_sid.clone())
                .ok_or_else(|| ApiError::not_found(req.path))?;
            scoped(&ctx, store, idx, false, tail)
        }
        _ => Err(ApiError::not_found(req.path)),
    }
}

struct Ctx<'a> {
    config: &'a EmulatorConfig,
    /// The account the request authenticated as (owner of `store`).
    account_sid: &'a str,
    req: &'a Req<'a>,
    fault: &'a CompiledParticipantFault,
}

impl Ctx<'_> {
    fn scope<'s>(&'s self, service_sid: &'s str, scoped: bool) -> Scope<'s> {
        Scope {
            base: &self.config.public_url,
            account_sid: self.account_sid,
            service_sid,
            scoped,
        }
    }
    fn not_found(&self) -> ApiError {
        ApiError::not_found(self.req.path)
    }
    fn form(&self, name: &str) -> Option<&str> {
        self.req.form.get(name)
    }
}

// ---- parameter helpers ----

fn attributes_param(ctx: &Ctx<'_>) -> Result<Option<String>, ApiError> {
    match ctx.form("Attributes") {
        None => Ok(None),
        Some(v) => match serde_json::from_str::<Value>(v) {
            Ok(_) => Ok(Some(v.to_owned())),
            Err(_) => Err(ApiError::invalid(
                "Invalid Attributes: the value must be valid JSON",
            )),
        },
    }
}

fn sid_param(ctx: &Ctx<'_>, name: &str, prefix: &str) -> Result<Option<String>, ApiError> {
    match ctx.form(name) {
        None => Ok(None),
        Some(v) if is_sid(v, prefix) => Ok(Some(v.to_owned())),
        Some(v) => Err(ApiError::invalid(format!(
            "Invalid {name}: {v:?} is not a valid {prefix} SID"
        ))),
    }
}

fn date_param(ctx: &Ctx<'_>, name: &str) -> Result<Option<time::OffsetDateTime>, ApiError> {
    match ctx.form(name) {
        None => Ok(None),
        Some(v) => parse_date(v)
            .map(Some)
            .ok_or_else(|| ApiError::invalid(format!("Invalid {name}: {v:?} is not ISO 8601"))),
    }
}

fn state_param(ctx: &Ctx<'_>) -> Result<Option<String>, ApiError> {
    match ctx.form("State") {
        None => Ok(None),
        Some(v @ ("initializing" | "inactive" | "active" | "closed")) => Ok(Some(v.to_owned())),
        Some(v) => Err(ApiError::invalid(format!("Invalid State: {v:?}"))),
    }
}

fn check_capacity(len: usize, max: usize) -> Result<(), ApiError> {
    if len >= max {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            20001,
            format!("Emulator limit of {max} resources reached"),
        ));
    }
    Ok(())
}

/// Slice `keys` (sorted ascending) into the requested page; returns the
/// index range and the `meta` object.
fn paginate(
    ctx: &Ctx<'_>,
    keys: &[&str],
    max: u32,
    key: &str,
) -> Result<(std::ops::Range<usize>, Value), ApiError> {
    let query = &ctx.req.query;
    let page_size = match query.get("PageSize") {
        None => DEFAULT_PAGE_SIZE.min(max),
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=max).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid(format!(
                    "Invalid PageSize: must be between 1 and {max}"
                )));
            }
        },
    };
    let page = match query.get("Page") {
        None => 0,
        Some(v) => v
            .parse::<u32>()
            .map_err(|_| ApiError::invalid("Invalid Page: must be a non-negative integer"))?,
    };
    let token = query.get("PageToken");
    let n = keys.len();
    let ps = page_size as usize;
    let (start, end) = match token {
        None => {
            let start = (page as usize).saturating_mul(ps).min(n);
            (start, start.saturating_add(ps).min(n))
        }
        Some(t) if t.starts_with("PT") => {
            let after = &t[2..];
            let start = keys.partition_point(|k| *k <= after);
            (start, start.saturating_add(ps).min(n))
        }
        Some(t) if t.starts_with("PB") => {
            let before = &t[2..];
            let end = keys.partition_point(|k| *k < before);
            (end.saturating_sub(ps), end)
        }
        Some(_) => return Err(ApiError::invalid("Invalid PageToken")),
    };
    let base = &ctx.config.public_url;
    let path = ctx.req.path;
    let url_of = |page: u32, token: Option<&str>| {
        let mut url = format!("{base}{path}?PageSize={page_size}&Page={page}");
        if let Some(t) = token {
            url.push_str("&PageToken=");
            url.push_str(t);
        }
        url
    };
    let next = (end > start && end < n).then(|| {
        let t = format!("PT{}", keys[end - 1]);
        url_of(page.saturating_add(1), Some(&t))
    });
    let previous = (start > 0 && start < n).then(|| {
        let t = format!("PB{}", keys[start]);
        url_of(page.saturating_sub(1), Some(&t))
    });
    let meta = json!({
        "page": page,
        "page_size": page_size,
        "first_page_url": url_of(0, None),
        "previous_page_url": previous,
        "url": url_of(page, token),
        "next_page_url": next,
        "key": key,
    });
    Ok((start..end, meta))
}

fn envelope(key: &str, items: Vec<Value>, meta: Value) -> Value {
    let mut map = Map::new();
    map.insert(key.to_owned(), Value::Array(items));
    map.insert("meta".to_owned(), meta);
    Value::Object(map)
}

// ---- Configuration and Services ----

fn configuration(ctx: &Ctx<'_>, store: &mut Store) -> ApiResult {
    let render =
        |store: &Store| model::render_configuration(&ctx.config.public_url, ctx.account_sid, store);
    match *ctx.req.method {
        Method::GET => Ok(Reply::ok(render(store))),
        Method::POST => {
            if let Some(sid) = ctx.form("DefaultChatServiceSid") {
                if store.service_index(sid).is_none() {
                    return Err(ApiError::invalid(format!(
                        "Invalid DefaultChatServiceSid: service {sid} not found"
                    )));
                }
                store.default_service_sid = sid.to_owned();
            }
            if let Some(sid) = sid_param(ctx, "DefaultMessagingServiceSid", "MG")? {
                store.default_messaging_service_sid = sid;
            }
            Ok(Reply::ok(render(store)))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn services(ctx: &Ctx<'_>, store: &mut Store) -> ApiResult {
    let (base, account) = (&ctx.config.public_url, ctx.account_sid);
    match *ctx.req.method {
        Method::GET => {
            let keys: Vec<&str> = store.services.iter().map(|s| s.sid.as_str()).collect();
            let (range, meta) = paginate(ctx, &keys, MAX_PAGE_SIZE_LARGE, "services")?;
            let items = store.services[range]
                .iter()
                .map(|s| model::render_service(base, account, s))
                .collect();
            Ok(Reply::ok(envelope("services", items, meta)))
        }
        Method::POST => {
            let Some(name) = ctx.form("FriendlyName") else {
                return Err(ApiError::invalid(
                    "Missing required parameter FriendlyName in the post body",
                ));
            };
            check_capacity(store.services.len(), MAX_ITEMS_PER_COLLECTION)?;
            let sid = model::new_sid("IS");
            let service = model::new_service(sid, name.to_owned());
            let body = model::render_service(base, account, &service);
            store.services.push(service);
            Ok(Reply::created(body))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn service(ctx: &Ctx<'_>, store: &mut Store, sid: &str) -> ApiResult {
    let idx = store.service_index(sid).ok_or_else(|| ctx.not_found())?;
    match *ctx.req.method {
        Method::GET => Ok(Reply::ok(model::render_service(
            &ctx.config.public_url,
            ctx.account_sid,
            &store.services[idx],
        ))),
        Method::DELETE => {
            if store.services[idx].sid == store.default_service_sid {
                return Err(ApiError::conflict(
                    20409,
                    "The default conversation service cannot be deleted",
                ));
            }
            store.services.remove(idx);
            Ok(Reply::no_content())
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

// ---- service-scoped resources ----

fn scoped(ctx: &Ctx<'_>, store: &mut Store, idx: usize, scoped: bool, tail: &[&str]) -> ApiResult {
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
        (["Conversations"], _) => Err(ApiError::method_not_allowed()),
        (["Conversations", c], _) => conversation_item(ctx, scope, service, c),
        (["Conversations", c, "Participants"], &Method::GET) => {
            list_participants(ctx, scope, service, c)
        }
        (["Conversations", c, "Participants"], &Method::POST) => {
            create_participant(ctx, scope, service, c)
        }
        (["Conversations", _, "Participants"], _) => Err(ApiError::method_not_allowed()),
        (["Conversations", c, "Participants", p], _) => participant_item(ctx, scope, service, c, p),
        (["Users"], &Method::GET) => list_users(ctx, scope, service),
        (["Users"], &Method::POST) => create_user(ctx, scope, service),
        (["Users"], _) => Err(ApiError::method_not_allowed()),
        (["Users", u], _) => user_item(ctx, scope, service, u),
        (["Users", u, "Conversations"], &Method::GET) => {
            list_user_conversations(ctx, scope, service, u)
        }
        (["Users", u, "Conversations", c], &Method::GET) => {
            fetch_user_conversation(ctx, scope, service, u, c)
        }
        (["Users", _, "Conversations", ..], _) => Err(ApiError::method_not_allowed()),
        _ => Err(ctx.not_found()),
    }
}

type Svc = model::Service;

// ---- Conversations ----

fn list_conversations(ctx: &Ctx<'_>, scope: Scope<'_>, service: &Svc) -> ApiResult {
    let keys: Vec<&str> = service
        .conversations
        .iter()
        .map(|c| c.sid.as_str())
        .collect();
    let (range, meta) = paginate(ctx, &keys, MAX_PAGE_SIZE_LARGE, "conversations")?;
    let items = service.conversations[range]
        .iter()
        .map(|c| model::render_conversation(scope, c))
        .collect();
    Ok(Reply::ok(envelope("conversations", items, meta)))
}

fn unique_name_taken(service: &Svc, name: &str, except: Option<&str>) -> bool {
    service
        .conversations
        .iter()
        .any(|c| c.unique_name.as_deref() == Some(name) && Some(c.sid.as_str()) != except)
}

fn create_conversation(
    ctx: &Ctx<'_>,
    scope: Scope<'_>,
    service: &mut Svc,
    default_mg: String,
) -> ApiResult {
    let attributes = attributes_param(ctx)?;
    let state = state_param(ctx)?;
    let mg = sid_param(ctx, "MessagingServiceSid", "MG")?;
    let created = date_param(ctx, "DateCreated")?;
    let updated = date_param(ctx, "DateUpdated")?;
    let unique_name = ctx.form("UniqueName").map(str::to_owned);
    if let Some(name) = &unique_name {
        if unique_name_taken(service, name, None) {
            return Err(ApiError::conflict(
                50353,
                format!("Conversation with provided unique name already exists: {name}"),
            ));
        }
    }
    check_capacity(service.conversations.len(), MAX_ITEMS_PER_COLLECTION)?;
    let now = model::now();
    let created = created.unwrap_or(now);
    let sid = model::new_sid("CH");
    let conversation = Conversation {
        sid,
        friendly_name: ctx.form("FriendlyName").map(str::to_owned),
        unique_name,
        attributes: attributes.unwrap_or_else(|| "{}".to_owned()),
        state: state.unwrap_or_else(|| "active".to_owned()),
        messaging_service_sid: mg.unwrap_or(default_mg),
        created,
        updated: updated.unwrap_or(created),
        participants: Vec::new(),
    };
    let body = model::render_conversation(scope, &conversation);
    service.conversations.push(conversation);
    Ok(Reply::created(body))
}

fn conversation_item(ctx: &Ctx<'_>, scope: Scope<'_>, service: &mut Svc, key: &str) -> ApiResult {
    let idx = service
        .conversation_index(key)
        .ok_or_else(|| ctx.not_found())?;
    match *ctx.req.method {
        Method::GET => Ok(Reply::ok(model::render_conversation(
            scope,
            &service.conversations[idx],
        ))),
        Method::POST => {
            let attributes = attributes_param(ctx)?;
            let state = state_param(ctx)?;
            let mg = sid_param(ctx, "MessagingServiceSid", "MG")?;
            let created = date_param(ctx, "DateCreated")?;
            let updated = date_param(ctx, "DateUpdated")?;
            if let Some(name) = ctx.form("UniqueName") {
                let own = service.conversations[idx].sid.clone();
                if unique_name_taken(service, name, Some(&own)) {
                    return Err(ApiError::conflict(
                        50353,
                        format!("Conversation with provided unique name already exists: {name}"),
                    ));
                }
            }
            let c = &mut service.conversations[idx];
            if let Some(v) = ctx.form("FriendlyName") {
                c.friendly_name = Some(v.to_owned());
            }
            if let Some(v) = ctx.form("UniqueName") {
                c.unique_name = Some(v.to_owned());
            }
            if let Some(v) = attributes {
                c.attributes = v;
            }
            if let Some(v) = state {
                c.state = v;
            }
            if let Some(v) = mg {
                c.messaging_service_sid = v;
            }
            if let Some(v) = created {
                c.created = v;
            }
            c.updated = updated.unwrap_or_else(model::now);
            Ok(Reply::ok(model::render_conversation(scope, c)))
        }
        Method::DELETE => {
            service.conversations.remove(idx);
            Ok(Reply::no_content())
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

// ---- Participants ----

fn list_participants(ctx: &Ctx<'_>, scope: Scope<'_>, service: &Svc, key: &str) -> ApiResult {
    let idx = service
        .conversation_index(key)
        .ok_or_else(|| ctx.not_found())?;
    let c = &service.conversations[idx];
    let keys: Vec<&str> = c.participants.iter().map(|p| p.sid.as_str()).collect();
    let (range, meta) = paginate(ctx, &keys, MAX_PAGE_SIZE_LARGE, "participants")?;
    let items = c.participants[range]
        .iter()
        .map(|p| model::render_participant(scope, &c.sid, p))
        .collect();
    Ok(Reply::ok(envelope("participants", items, meta)))
}

fn create_participant(ctx: &Ctx<'_>, scope: Scope<'_>, service: &mut Svc, key: &str) -> ApiResult {
    let c_idx = service
        .conversation_index(key)
        .ok_or_else(|| ctx.not_found())?;
    let attributes = attributes_param(ctx)?.unwrap_or_else(|| "{}".to_owned());
    let role_sid = sid_param(ctx, "RoleSid", "RL")?;
    let created = date_param(ctx, "DateCreated")?;
    let updated = date_param(ctx, "DateUpdated")?;
    let identity = ctx.form("Identity").filter(|s| !s.is_empty());
    let address = ctx
        .form("MessagingBinding.Address")
        .filter(|s| !s.is_empty());
    let proxy = ctx
        .form("MessagingBinding.ProxyAddress")
        .filter(|s| !s.is_empty());
    let projected = ctx
        .form("MessagingBinding.ProjectedAddress")
        .filter(|s| !s.is_empty());
    if service.conversations[c_idx].participants.len() >= MAX_PARTICIPANTS_PER_CONVERSATION {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            50418,
            "Participant limit of the conversation exceeded",
        ));
    }
    let now = model::now();
    let created = created.unwrap_or(now);
    let mut participant = Participant {
        sid: model::new_sid("MB"),
        identity: None,
        binding: None,
        attributes,
        role_sid: Some(role_sid.unwrap_or_else(|| service.participant_role_sid.clone())),
        created,
        updated: updated.unwrap_or(created),
        last_read_message_index: None,
        last_read_timestamp: None,
        user_sid: None,
    };

    if let Some(identity) = identity {
        if address.is_some() || proxy.is_some() {
            return Err(ApiError::invalid_code(
                50211,
                "Identity parameter not acceptable for this Participant",
            ));
        }
        if identity.chars().count() > MAX_IDENTITY_CHARS {
            return Err(ApiError::invalid_code(50207, "Identity too long"));
        }
        let conversation = &service.conversations[c_idx];
        if conversation
            .participants
            .iter()
            .any(|p| p.identity.as_deref() == Some(identity))
        {
            return Err(ApiError::conflict(50433, "Participant already exists"));
        }
        participant.identity = Some(identity.to_owned());
        // The fault: a stale identity mapping left by a deleted participant.
        if let Some(u_idx) = service.user_by_identity(identity) {
            let user = &service.users[u_idx];
            if user.stale_mapping && ctx.fault.affects(identity, user.created) {
                let mut err = ApiError::not_found(ctx.req.path);
                match ctx.fault.mode() {
                    FaultMode::Block => {
                        err.fault = Some("participant_20404_block");
                        return Err(err);
                    }
                    FaultMode::Ghost | FaultMode::Off => {
                        err.fault = Some("participant_20404_ghost");
                        participant.user_sid = Some(user.sid.clone());
                        service.conversations[c_idx].participants.push(participant);
                        return Err(err);
                    }
                }
            }
            participant.user_sid = Some(user.sid.clone());
        } else {
            // A new identity creates its User in the service.
            check_capacity(service.users.len(), MAX_ITEMS_PER_COLLECTION)?;
            let user = User {
                sid: model::new_sid("US"),
                identity: identity.to_owned(),
                friendly_name: None,
                attributes: "{}".to_owned(),
                role_sid: Some(service.user_role_sid.clone()),
                created: now,
                updated: now,
                stale_mapping: false,
            };
            participant.user_sid = Some(user.sid.clone());
            service.users.push(user);
        }
    } else if let Some(address) = address {
        let Some(proxy) = proxy else {
            return Err(ApiError::invalid_code(
                50412,
                "MessagingBinding.ProxyAddress is required",
            ));
        };
        if address == proxy {
            return Err(ApiError::invalid_code(
                50409,
                "Participant address and proxy address must differ",
            ));
        }
        // Choice: the pair must be unique across the service's conversations.
        let existing = service.conversations.iter().find(|c| {
            c.participants.iter().any(|p| {
                matches!(&p.binding, Some(Binding::Pair { address: a, proxy_address: pa, .. })
                    if a == address && pa == proxy)
            })
        });
        if let Some(c) = existing {
            return Err(ApiError::conflict(
                50416,
                format!(
                    "A binding for this participant and proxy address already exists in Conversation {}",
                    c.sid
                ),
            ));
        }
        let kind = if address.starts_with("whatsapp:") {
            "whatsapp"
        } else {
            "sms"
        };
        participant.binding = Some(Binding::Pair {
            kind,
            address: address.to_owned(),
            proxy_address: proxy.to_owned(),
        });
    } else if let Some(projected) = projected {
        participant.binding = Some(Binding::Projected {
            projected_address: projected.to_owned(),
        });
    } else {
        return Err(ApiError::invalid(
            "Either Identity or MessagingBinding.Address (with MessagingBinding.ProxyAddress) is required",
        ));
    }
    let conversation = &mut service.conversations[c_idx];
    let body = model::render_participant(scope, &conversation.sid, &participant);
    conversation.participants.push(participant);
    Ok(Reply::created(body))
}

impl ApiError {
    fn invalid_code(code: u32, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

fn participant_item(
    ctx: &Ctx<'_>,
    scope: Scope<'_>,
    service: &mut Svc,
    c_key: &str,
    p_key: &str,
) -> ApiResult {
    let c_idx = service
        .conversation_index(c_key)
        .ok_or_else(|| ctx.not_found())?;
    let p_idx = service.conversations[c_idx]
        .participant_index(p_key)
        .ok_or_else(|| ctx.not_found())?;
    match *ctx.req.method {
        Method::GET => {
            let c = &service.conversations[c_idx];
            Ok(Reply::ok(model::render_participant(
                scope,
                &c.sid,
                &c.participants[p_idx],
            )))
        }
        Method::POST => {
            let attributes = attributes_param(ctx)?;
            let role_sid = sid_param(ctx, "RoleSid", "RL")?;
            let created = date_param(ctx, "DateCreated")?;
            let updated = date_param(ctx, "DateUpdated")?;
            let index = match ctx.form("LastReadMessageIndex") {
                None => None,
                Some(v) => Some(v.parse::<i64>().map_err(|_| {
                    ApiError::invalid("Invalid LastReadMessageIndex: must be an integer")
                })?),
            };
            let c = &mut service.conversations[c_idx];
            let p = &mut c.participants[p_idx];
            if let Some(v) = attributes {
                p.attributes = v;
            }
            if let Some(v) = role_sid {
                p.role_sid = Some(v);
            }
            if let Some(v) = created {
                p.created = v;
            }
            if index.is_some() {
                p.last_read_message_index = index;
            }
            if let Some(v) = ctx.form("LastReadTimestamp") {
                p.last_read_timestamp = Some(v.to_owned());
            }
            p.updated = updated.unwrap_or_else(model::now);
            Ok(Reply::ok(model::render_participant(scope, &c.sid, p)))
        }
        Method::DELETE => {
            let removed = service.conversations[c_idx].participants.remove(p_idx);
            // Deleting a chat participant leaves the stale mapping that the
            // fault needs; it is tied to the User SID of the participant.
            if let Some(user_sid) = removed.user_sid {
                if let Some(user) = service.users.iter_mut().find(|u| u.sid == user_sid) {
                    user.stale_mapping = true;
                }
            }
            Ok(Reply::no_content())
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

// ---- Users ----

fn list_users(ctx: &Ctx<'_>, scope: Scope<'_>, service: &Svc) -> ApiResult {
    let keys: Vec<&str> = service.users.iter().map(|u| u.sid.as_str()).collect();
    let (range, meta) = paginate(ctx, &keys, MAX_PAGE_SIZE_USERS, "users")?;
    let items = service.users[range]
        .iter()
        .map(|u| model::render_user(scope, u, None))
        .collect();
    Ok(Reply::ok(envelope("users", items, meta)))
}

fn create_user(ctx: &Ctx<'_>, scope: Scope<'_>, service: &mut Svc) -> ApiResult {
    let Some(identity) = ctx.form("Identity").filter(|s| !s.is_empty()) else {
        return Err(ApiError::invalid_code(50204, "Identity not provided"));
    };
    if is_sid(identity, "US") {
        return Err(ApiError::invalid_code(
            50206,
            "Identity should not match user SID pattern",
        ));
    }
    if identity.chars().count() > MAX_IDENTITY_CHARS {
        return Err(ApiError::invalid_code(50207, "Identity too long"));
    }
    let attributes = attributes_param(ctx)?;
    let role_sid = sid_param(ctx, "RoleSid", "RL")?;
    // Emulator extension so tests can exercise the creation-date fault.
    let created = date_param(ctx, "DateCreated")?;
    if service.user_by_identity(identity).is_some() {
        return Err(ApiError::conflict(50201, "User already exists"));
    }
    check_capacity(service.users.len(), MAX_ITEMS_PER_COLLECTION)?;
    let created = created.unwrap_or_else(model::now);
    let user = User {
        sid: model::new_sid("US"),
        identity: identity.to_owned(),
        friendly_name: ctx.form("FriendlyName").map(str::to_owned),
        attributes: attributes.unwrap_or_else(|| "{}".to_owned()),
        role_sid: Some(role_sid.unwrap_or_else(|| service.user_role_sid.clone())),
        created,
        updated: created,
        stale_mapping: false,
    };
    let body = model::render_user(scope, &user, None);
    service.users.push(user);
    Ok(Reply::created(body))
}

fn user_item(ctx: &Ctx<'_>, scope: Scope<'_>, service: &mut Svc, key: &str) -> ApiResult {
    let idx = service.user_index(key).ok_or_else(|| ctx.not_found())?;
    match *ctx.req.method {
        Method::GET => Ok(Reply::ok(model::render_user(
            scope,
            &service.users[idx],
            Some(false),
        ))),
        Method::POST => {
            let attributes = attributes_param(ctx)?;
            let role_sid = sid_param(ctx, "RoleSid", "RL")?;
            let user = &mut service.users[idx];
            if let Some(v) = ctx.form("FriendlyName") {
                user.friendly_name = Some(v.to_owned());
            }
            if let Some(v) = attributes {
                user.attributes = v;
            }
            if let Some(v) = role_sid {
                user.role_sid = Some(v);
            }
            user.updated = model::now();
            Ok(Reply::ok(model::render_user(scope, user, None)))
        }
        Method::DELETE => {
            let user = service.users.remove(idx);
            if ctx.config.user_delete_removes_participants {
                for c in &mut service.conversations {
                    c.participants
                        .retain(|p| p.identity.as_deref() != Some(user.identity.as_str()));
                }
            }
            Ok(Reply::no_content())
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn list_user_conversations(ctx: &Ctx<'_>, scope: Scope<'_>, service: &Svc, key: &str) -> ApiResult {
    let idx = service.user_index(key).ok_or_else(|| ctx.not_found())?;
    let user = &service.users[idx];
    let mut rows: Vec<(&Conversation, &Participant)> = service
        .conversations
        .iter()
        .filter_map(|c| {
            c.participants
                .iter()
                .find(|p| p.identity.as_deref() == Some(user.identity.as_str()))
                .map(|p| (c, p))
        })
        .collect();
    rows.sort_by(|a, b| a.1.sid.cmp(&b.1.sid));
    let keys: Vec<&str> = rows.iter().map(|(_, p)| p.sid.as_str()).collect();
    let (range, meta) = paginate(ctx, &keys, MAX_PAGE_SIZE_USERS, "conversations")?;
    let items = rows[range]
        .iter()
        .map(|(c, p)| model::render_user_conversation(scope, user, c, p))
        .collect();
    Ok(Reply::ok(envelope("conversations", items, meta)))
}

fn fetch_user_conversation(
    ctx: &Ctx<'_>,
    scope: Scope<'_>,
    service: &Svc,
    u_key: &str,
    c_key: &str,
) -> ApiResult {
    let u_idx = service.user_index(u_key).ok_or_else(|| ctx.not_found())?;
    let c_idx = service
        .conversation_index(c_key)
        .ok_or_else(|| ctx.not_found())?;
    let user = &service.users[u_idx];
    let c = &service.conversations[c_idx];
    let p = c
        .participants
        .iter()
        .find(|p| p.identity.as_deref() == Some(user.identity.as_str()))
        .ok_or_else(|| ctx.not_found())?;
    Ok(Reply::ok(model::render_user_conversation(
        scope, user, c, p,
    )))
}

/// Used by the control API: set a User's creation date.
pub(crate) fn set_user_date_created(
    shared: &Shared,
    account_sid: Option<&str>,
    service_sid: Option<&str>,
    identity: &str,
    date_created: &str,
) -> Result<Value, String> {
    let when = parse_date(date_created)
        .ok_or_else(|| format!("date_created {date_created:?} is not RFC 3339"))?;
    let config = &shared.config;
    let mut state = shared.lock();
    let account_sid = account_sid.unwrap_or(&config.account_sid);
    let store = &mut state
        .account_mut(account_sid)
        .ok_or_else(|| format!("account {account_sid} not found"))?
        .store;
    let sid = service_sid
        .map(str::to_owned)
        .unwrap_or_else(|| store.default_service_sid.clone());
    let scoped = service_sid.is_some();
    let idx = store
        .service_index(&sid)
        .ok_or_else(|| format!("service {sid} not found"))?;
    let service = &mut store.services[idx];
    let u_idx = service
        .user_index(identity)
        .ok_or_else(|| format!("user {identity:?} not found"))?;
    let user = &mut service.users[u_idx];
    user.created = when;
    let scope = Scope {
        base: &config.public_url,
        account_sid,
        service_sid: &sid,
        scoped,
    };
    Ok(model::render_user(scope, user, None))
}
