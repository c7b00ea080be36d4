//! `/v1/Configuration`, `/v1/Services[/{IS}]` and a service's
//! `.../Roles[/{RL}]`: the account's services, its default service, and
//! each service's roles (read-only: Twilio's default four).

use http::Method;

use super::params::{
    MAX_PAGE_SIZE_LARGE, MAX_PAGE_SIZE_USERS, check_capacity, envelope, paginate, sid_param,
};
use super::{ApiResult, Call, EmulatorError, Reply};
use crate::model::{self, EmulatorStore, MAX_ITEMS_PER_COLLECTION};

pub(super) fn configuration(ctx: &Call<'_>, store: &mut EmulatorStore) -> ApiResult {
    let render = |store: &EmulatorStore| {
        model::render_configuration(&ctx.config.public_url, ctx.account_sid, store)
    };
    match *ctx.req.method {
        Method::GET => Ok(Reply::ok(render(store))),
        Method::POST => {
            if let Some(sid) = ctx.form("DefaultChatServiceSid") {
                if store.service_index(sid).is_none() {
                    return Err(EmulatorError::invalid(format!(
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
        _ => Err(EmulatorError::method_not_allowed()),
    }
}

pub(super) fn services(ctx: &Call<'_>, store: &mut EmulatorStore) -> ApiResult {
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
                return Err(EmulatorError::invalid(
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
        _ => Err(EmulatorError::method_not_allowed()),
    }
}

pub(super) fn service(ctx: &Call<'_>, store: &mut EmulatorStore, sid: &str) -> ApiResult {
    let idx = store.service_index(sid).ok_or_else(|| ctx.not_found())?;
    match *ctx.req.method {
        Method::GET => Ok(Reply::ok(model::render_service(
            &ctx.config.public_url,
            ctx.account_sid,
            &store.services[idx],
        ))),
        Method::DELETE => {
            if store.services[idx].sid == store.default_service_sid {
                return Err(EmulatorError::conflict(
                    20409,
                    "The default conversation service cannot be deleted",
                ));
            }
            store.services.remove(idx);
            Ok(Reply::no_content())
        }
        _ => Err(EmulatorError::method_not_allowed()),
    }
}

/// `GET .../Roles` (only on `/v1/Services/{IS}`: Twilio has no
/// default-service path for roles).
pub(super) fn roles(ctx: &Call<'_>, service: &super::Svc) -> ApiResult {
    if *ctx.req.method != Method::GET {
        return Err(EmulatorError::method_not_allowed());
    }
    let keys: Vec<&str> = service.roles.iter().map(|r| r.sid.as_str()).collect();
    let (range, meta) = paginate(ctx, &keys, MAX_PAGE_SIZE_USERS, "roles")?;
    let items = service.roles[range]
        .iter()
        .map(|r| model::render_role(&ctx.config.public_url, ctx.account_sid, &service.sid, r))
        .collect();
    Ok(Reply::ok(envelope("roles", items, meta)))
}

/// `GET .../Roles/{RL}`.
pub(super) fn role(ctx: &Call<'_>, service: &super::Svc, sid: &str) -> ApiResult {
    if *ctx.req.method != Method::GET {
        return Err(EmulatorError::method_not_allowed());
    }
    let r = service
        .roles
        .iter()
        .find(|r| r.sid == sid)
        .ok_or_else(|| ctx.not_found())?;
    Ok(Reply::ok(model::render_role(
        &ctx.config.public_url,
        ctx.account_sid,
        &service.sid,
        r,
    )))
}
