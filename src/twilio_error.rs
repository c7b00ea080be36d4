//! Twilio's error body: `{"code", "message", "more_info", "status"}`.
//!
//! Every error this crate produces itself (the proxy's 4xx/502/504) uses this
//! one shape, so that every helper library maps it onto its usual exception
//! type (`TwilioRestException`, `RestException`, ...). The body and its
//! response are written once, in the `twilio-wire` crate the emulator shares;
//! [`proxy_error`] is that shape for an answer the proxy gives itself,
//! marked with [`ERROR_HEADER`]. A leaf: it knows nothing of the proxy.

use axum::body::Body;
use http::{HeaderValue, Response, StatusCode};

pub use twilio_wire::error::{TwilioErrorBody, error_bytes, error_response, twilio_more_info};

/// Response header naming why the proxy itself answered with an error.
pub const ERROR_HEADER: &str = "x-repair-proxy-error";
/// Where proxy-generated error codes are documented.
pub const ERRORS_DOC: &str =
    "https://github.com/twilio-repair-proxy/twilio-repair-proxy/blob/main/docs/errors.md";

/// A Twilio-shaped error answered by the proxy itself, with
/// `X-Repair-Proxy-Error: <token>`. Codes are `20000 + status`.
pub fn proxy_error(status: StatusCode, token: &'static str, message: &str) -> Response<Body> {
    let code = 20000 + u32::from(status.as_u16());
    let more_info = format!("{ERRORS_DOC}#{code}");
    let mut resp: Response<Body> = error_response(status, code, message, &more_info);
    resp.headers_mut()
        .insert(ERROR_HEADER, HeaderValue::from_static(token));
    resp
}
