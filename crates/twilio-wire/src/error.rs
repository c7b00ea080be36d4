//! Twilio's error body: `{"code", "message", "more_info", "status"}`.
//!
//! Every error the proxy or the emulator produces itself (the proxy's
//! 4xx/502/504, the emulator's errors) uses this one shape, so that every
//! helper library maps it onto its usual exception type
//! (`TwilioRestException`, `RestException`, ...).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;

/// The JSON body Twilio sends with a 4xx/5xx.
#[derive(Debug, Clone, Serialize)]
pub struct TwilioErrorBody<'a> {
    pub code: u32,
    pub message: &'a str,
    pub more_info: &'a str,
    pub status: u16,
}

/// `more_info` link of a Twilio error code, as Twilio writes it.
pub fn twilio_more_info(code: u32) -> String {
    format!("https://www.twilio.com/docs/errors/{code}")
}

/// Serialise an error body.
pub fn error_bytes(status: StatusCode, code: u32, message: &str, more_info: &str) -> Bytes {
    let body = TwilioErrorBody {
        code,
        message,
        more_info,
        status: status.as_u16(),
    };
    // Serialising a struct of plain strings and integers cannot fail.
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// A complete `application/json` error response.
pub fn error_response<B: From<Bytes>>(
    status: StatusCode,
    code: u32,
    message: &str,
    more_info: &str,
) -> Response<B> {
    let bytes = error_bytes(status, code, message, more_info);
    let mut resp = Response::new(B::from(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
