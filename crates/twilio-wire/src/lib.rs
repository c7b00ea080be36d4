//! What twilio-repair-proxy and its emulator both speak, written once:
//!
//! - [`error`]: Twilio's JSON error body (`{"code", "message", "more_info",
//!   "status"}`) and the response that carries it.
//! - [`sid`]: Twilio SIDs (a two-letter prefix and 32 hex digits).
//! - [`signal`]: the shutdown signal both servers stop on (SIGINT, SIGTERM).
//!
//! Nothing here knows the proxy or the emulator: both depend on this crate,
//! it depends on neither.
#![forbid(unsafe_code)]

pub mod error;
pub mod sid;
pub mod signal;

pub use error::{TwilioErrorBody, error_bytes, error_response, twilio_more_info};
pub use sid::is_sid;
pub use signal::shutdown_signal;
