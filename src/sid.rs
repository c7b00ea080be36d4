//! Twilio SIDs: a two-letter prefix and 32 hex digits (written once, in the
//! `twilio-wire` crate the emulator shares).

pub use twilio_wire::sid::is_sid;
