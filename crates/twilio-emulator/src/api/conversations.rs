//! `.../Conversations[/{CH or UniqueName}]`.

use http::Method;

use super::params::{
    MAX_PAGE_SIZE_LARGE, attributes_param, check_capacity, date_param, envelope, paginate,
    sid_param, state_param,
};
use super::{ApiResult, Call, EmulatorError, Reply, Svc};
use crate::model::{self, Conversation, MAX_ITEMS_PER_COLLECTION, Scope};

pub(super) fn list_conversations(ctx: &Call<'_>, scope: Scope<'_>, service: &Svc) -> ApiResult {
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

pub(super) fn create_conversation(
    ctx: &Call<'_>,
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
            return Err(EmulatorError::conflict(
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

pub(super) fn conversation_item(
    ctx: &Call<'_>,
    scope: Scope<'_>,
    service: &mut Svc,
    key: &str,
) -> ApiResult {
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
                    return Err(EmulatorError::conflict(
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
        _ => Err(EmulatorError::method_not_allowed()),
    }
}
