//! `POST /2010-04-01/Accounts/{AC}/Messages.json`: a message send, so that
//! tests and demos have a Twilio call outside Conversations (the proxy's
//! 429 shield retries it like any other). Accepted and answered like
//! Twilio's (201, `status: queued`), and not kept: nothing is delivered and
//! the message cannot be fetched back.

use serde_json::{Value, json};

use super::{ApiResult, Call, EmulatorError, Reply};
use crate::model;

pub(super) fn create_message(ctx: &Call<'_>) -> ApiResult {
    let Some(to) = ctx.form("To").filter(|s| !s.is_empty()) else {
        return Err(EmulatorError::invalid_code(
            21604,
            "A 'To' phone number is required.",
        ));
    };
    let from = ctx.form("From").filter(|s| !s.is_empty());
    let service = ctx.form("MessagingServiceSid").filter(|s| !s.is_empty());
    if from.is_none() && service.is_none() {
        return Err(EmulatorError::invalid_code(
            21603,
            "A 'From' phone number is required.",
        ));
    }
    let body = ctx.form("Body").unwrap_or("");
    if body.is_empty() && ctx.form("MediaUrl").is_none() {
        return Err(EmulatorError::invalid_code(
            21602,
            "Message body is required.",
        ));
    }
    let sid = model::new_sid("SM");
    let date = rfc2822(model::now());
    let account = ctx.account_sid;
    let message: Value = json!({
        "sid": sid,
        "account_sid": account,
        "messaging_service_sid": service,
        "to": to,
        "from": from,
        "body": body,
        "status": "queued",
        "direction": "outbound-api",
        "num_segments": "1",
        "num_media": "0",
        "price": null,
        "price_unit": "USD",
        "error_code": null,
        "error_message": null,
        "api_version": "2010-04-01",
        "date_created": date,
        "date_updated": date,
        "date_sent": null,
        "uri": format!("/2010-04-01/Accounts/{account}/Messages/{sid}.json"),
        "subresource_uris": {
            "media": format!("/2010-04-01/Accounts/{account}/Messages/{sid}/Media.json"),
        },
    });
    Ok(Reply::created(message))
}

/// `Thu, 30 Jul 2015 20:12:31 +0000`, as the 2010 API writes dates.
fn rfc2822(t: time::OffsetDateTime) -> String {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] +0000"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(&format)
        .unwrap_or_default()
}
