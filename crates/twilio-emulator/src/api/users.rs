//! `.../Users[/{US or identity}]` and `.../Users/{US}/Conversations[/{CH}]`,
//! and the control API's way to set a User's creation date.

use http::Method;
use serde_json::Value;

use super::params::{
    MAX_PAGE_SIZE_USERS, attributes_param, check_capacity, date_param, envelope, paginate,
    sid_param,
};
use super::{ApiResult, Call, EmulatorError, MAX_IDENTITY_CHARS, Reply, Svc};
use crate::model::{
    self, Conversation, MAX_ITEMS_PER_COLLECTION, Participant, Scope, Shared, User, parse_date,
};
use twilio_wire::is_sid;

pub(super) fn list_users(ctx: &Call<'_>, scope: Scope<'_>, service: &Svc) -> ApiResult {
    let keys: Vec<&str> = service.users.iter().map(|u| u.sid.as_str()).collect();
    let (range, meta) = paginate(ctx, &keys, MAX_PAGE_SIZE_USERS, "users")?;
    let items = service.users[range]
        .iter()
        .map(|u| model::render_user(scope, u, None))
        .collect();
    Ok(Reply::ok(envelope("users", items, meta)))
}

pub(super) fn create_user(ctx: &Call<'_>, scope: Scope<'_>, service: &mut Svc) -> ApiResult {
    let Some(identity) = ctx.form("Identity").filter(|s| !s.is_empty()) else {
        return Err(EmulatorError::invalid_code(50204, "Identity not provided"));
    };
    if is_sid(identity, "US") {
        return Err(EmulatorError::invalid_code(
            50206,
            "Identity should not match user SID pattern",
        ));
    }
    if identity.chars().count() > MAX_IDENTITY_CHARS {
        return Err(EmulatorError::invalid_code(50207, "Identity too long"));
    }
    let attributes = attributes_param(ctx)?;
    let role_sid = sid_param(ctx, "RoleSid", "RL")?;
    // Emulator extension so tests can exercise the creation-date fault.
    let created = date_param(ctx, "DateCreated")?;
    if service.user_by_identity(identity).is_some() {
        return Err(EmulatorError::conflict(50201, "User already exists"));
    }
    check_capacity(service.users.len(), MAX_ITEMS_PER_COLLECTION)?;
    // The lost-field fault, counted on the writes that are made.
    let role_sid = role_sid.filter(|_| !ctx.fault.drops_user_role_sid());
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

pub(super) fn user_item(
    ctx: &Call<'_>,
    scope: Scope<'_>,
    service: &mut Svc,
    key: &str,
) -> ApiResult {
    let idx = service.user_index(key).ok_or_else(|| ctx.not_found())?;
    match *ctx.req.method {
        Method::GET => Ok(Reply::ok(model::render_user(
            scope,
            &service.users[idx],
            Some(false),
        ))),
        Method::POST => {
            let attributes = attributes_param(ctx)?;
            let role_sid =
                sid_param(ctx, "RoleSid", "RL")?.filter(|_| !ctx.fault.drops_user_role_sid());
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
        _ => Err(EmulatorError::method_not_allowed()),
    }
}

pub(super) fn list_user_conversations(
    ctx: &Call<'_>,
    scope: Scope<'_>,
    service: &Svc,
    key: &str,
) -> ApiResult {
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

pub(super) fn fetch_user_conversation(
    ctx: &Call<'_>,
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
