//! Form and query parameters shared by the resources: their checks (each
//! answers 400/20001 when malformed) and Twilio's pagination (`PageSize`,
//! `Page`, `PageToken`, the `meta` object).

use http::StatusCode;
use serde_json::{Map, Value, json};

use super::{Call, EmulatorError};
use crate::model::parse_date;
use twilio_wire::is_sid;

/// Default `PageSize`.
const DEFAULT_PAGE_SIZE: u32 = 50;
/// Maximum `PageSize` of participant, conversation and service lists.
pub(super) const MAX_PAGE_SIZE_LARGE: u32 = 100;
/// Maximum `PageSize` of user and user-conversation lists.
pub(super) const MAX_PAGE_SIZE_USERS: u32 = 50;

/// Decoded form body or query string.
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    pub(crate) fn parse(bytes: &[u8]) -> Self {
        Self(form_urlencoded::parse(bytes).into_owned().collect())
    }
    pub(super) fn get(&self, name: &str) -> Option<&str> {
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

pub(super) fn attributes_param(ctx: &Call<'_>) -> Result<Option<String>, EmulatorError> {
    match ctx.form("Attributes") {
        None => Ok(None),
        Some(v) => match serde_json::from_str::<Value>(v) {
            Ok(_) => Ok(Some(v.to_owned())),
            Err(_) => Err(EmulatorError::invalid(
                "Invalid Attributes: the value must be valid JSON",
            )),
        },
    }
}

pub(super) fn sid_param(
    ctx: &Call<'_>,
    name: &str,
    prefix: &str,
) -> Result<Option<String>, EmulatorError> {
    match ctx.form(name) {
        None => Ok(None),
        Some(v) if is_sid(v, prefix) => Ok(Some(v.to_owned())),
        Some(v) => Err(EmulatorError::invalid(format!(
            "Invalid {name}: {v:?} is not a valid {prefix} SID"
        ))),
    }
}

pub(super) fn date_param(
    ctx: &Call<'_>,
    name: &str,
) -> Result<Option<time::OffsetDateTime>, EmulatorError> {
    match ctx.form(name) {
        None => Ok(None),
        Some(v) => parse_date(v).map(Some).ok_or_else(|| {
            EmulatorError::invalid(format!("Invalid {name}: {v:?} is not ISO 8601"))
        }),
    }
}

pub(super) fn state_param(ctx: &Call<'_>) -> Result<Option<String>, EmulatorError> {
    match ctx.form("State") {
        None => Ok(None),
        Some(v @ ("initializing" | "inactive" | "active" | "closed")) => Ok(Some(v.to_owned())),
        Some(v) => Err(EmulatorError::invalid(format!("Invalid State: {v:?}"))),
    }
}

pub(super) fn check_capacity(len: usize, max: usize) -> Result<(), EmulatorError> {
    if len >= max {
        return Err(EmulatorError::new(
            StatusCode::FORBIDDEN,
            20001,
            format!("Emulator limit of {max} resources reached"),
        ));
    }
    Ok(())
}

/// Slice `keys` (sorted ascending) into the requested page; returns the
/// index range and the `meta` object.
pub(super) fn paginate(
    ctx: &Call<'_>,
    keys: &[&str],
    max: u32,
    key: &str,
) -> Result<(std::ops::Range<usize>, Value), EmulatorError> {
    let query = &ctx.req.query;
    let page_size = match query.get("PageSize") {
        None => DEFAULT_PAGE_SIZE.min(max),
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=max).contains(&n) => n,
            _ => {
                return Err(EmulatorError::invalid(format!(
                    "Invalid PageSize: must be between 1 and {max}"
                )));
            }
        },
    };
    let page = match query.get("Page") {
        None => 0,
        Some(v) => v
            .parse::<u32>()
            .map_err(|_| EmulatorError::invalid("Invalid Page: must be a non-negative integer"))?,
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
        Some(_) => return Err(EmulatorError::invalid("Invalid PageToken")),
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

pub(super) fn envelope(key: &str, items: Vec<Value>, meta: Value) -> Value {
    let mut map = Map::new();
    map.insert(key.to_owned(), Value::Array(items));
    map.insert("meta".to_owned(), meta);
    Value::Object(map)
}
