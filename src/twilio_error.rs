//! Twilio's error body: `{"code", "message", "more_info", "status"}`.
//!
//! Every error this crate produces itself (the proxy's 4xx/502/504) uses this
//! one shape, so that every helper library maps it onto its usual exception
//! type (`TwilioRestException`, `RestException`, ...). The body and its
//! response are written once, in the `twilio-wire` crate the emulator shares.

pub use twilio_wire::error::{TwilioErrorBody, error_bytes, error_response, twilio_more_info};
