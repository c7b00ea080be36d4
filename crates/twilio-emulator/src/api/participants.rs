//! `.../Conversations/{CH}/Participants[/{MB or identity}]`, and the
//! participant fault: a create for an affected identity whose User has a
//! stale mapping answers 404/20404.

use http::{Method, StatusCode};

use super::params::{
    MAX_PAGE_SIZE_LARGE, attributes_param, check_capacity, date_param, envelope, paginate,
    sid_param,
};
use super::{ApiResult, Call, EmulatorError, MAX_IDENTITY_CHARS, Reply, Svc};
use crate::faults::FaultMode;
use crate::model::{
    self, Binding, MAX_ITEMS_PER_COLLECTION, MAX_PARTICIPANTS_PER_CONVERSATION, Participant, Scope,
    User,
};

pub(super) fn list_participants(
    ctx: &Call<'_>,
    scope: Scope<'_>,
    service: &Svc,
    key: &str,
) -> ApiResult {
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

pub(super) fn create_participant(
    ctx: &Call<'_>,
    scope: Scope<'_>,
    service: &mut Svc,
    key: &str,
) -> ApiResult {
    let c_idx = service
        .conversation_index(key)
        .ok_or_else(|| ctx.not_found())?;
    let attributes = attributes_param(ctx)?
        .filter(|_| !ctx.fault.settings.lose_participant_attributes)
        .unwrap_or_else(|| "{}".to_owned());
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
        return Err(EmulatorError::new(
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
        readable_at: ctx.fault.readable_at(),
    };

    if let Some(identity) = identity {
        if address.is_some() || proxy.is_some() {
            return Err(EmulatorError::invalid_code(
                50211,
                "Identity parameter not acceptable for this Participant",
            ));
        }
        if identity.chars().count() > MAX_IDENTITY_CHARS {
            return Err(EmulatorError::invalid_code(50207, "Identity too long"));
        }
        let conversation = &service.conversations[c_idx];
        if conversation
            .participants
            .iter()
            .any(|p| p.identity.as_deref() == Some(identity))
        {
            return Err(EmulatorError::conflict(50433, "Participant already exists"));
        }
        participant.identity = Some(identity.to_owned());
        // The fault: a stale identity mapping left by a deleted participant.
        if let Some(u_idx) = service.user_by_identity(identity) {
            let user = &service.users[u_idx];
            if user.stale_mapping && ctx.fault.affects(identity, user.created) {
                let mut err = EmulatorError::not_found(ctx.req.path);
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
            return Err(EmulatorError::invalid_code(
                50412,
                "MessagingBinding.ProxyAddress is required",
            ));
        };
        if address == proxy {
            return Err(EmulatorError::invalid_code(
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
            return Err(EmulatorError::conflict(
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
        return Err(EmulatorError::invalid(
            "Either Identity or MessagingBinding.Address (with MessagingBinding.ProxyAddress) is required",
        ));
    }
    let conversation = &mut service.conversations[c_idx];
    let body = model::render_participant(scope, &conversation.sid, &participant);
    conversation.participants.push(participant);
    Ok(Reply::created(body))
}

pub(super) fn participant_item(
    ctx: &Call<'_>,
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
            // The read-lag fault: Twilio's reads may lag its writes.
            if c.participants[p_idx]
                .readable_at
                .is_some_and(|at| std::time::Instant::now() < at)
            {
                return Err(ctx.not_found());
            }
            Ok(Reply::ok(model::render_participant(
                scope,
                &c.sid,
                &c.participants[p_idx],
            )))
        }
        Method::POST => {
            let attributes =
                attributes_param(ctx)?.filter(|_| !ctx.fault.settings.lose_participant_attributes);
            let role_sid = sid_param(ctx, "RoleSid", "RL")?;
            let created = date_param(ctx, "DateCreated")?;
            let updated = date_param(ctx, "DateUpdated")?;
            let index = match ctx.form("LastReadMessageIndex") {
                None => None,
                Some(v) => Some(v.parse::<i64>().map_err(|_| {
                    EmulatorError::invalid("Invalid LastReadMessageIndex: must be an integer")
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
        _ => Err(EmulatorError::method_not_allowed()),
    }
}
