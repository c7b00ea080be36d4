//! `emulator`: run the Twilio Conversations emulator (see
//! [`crate::emulator`]).

use super::CommandError;
use crate::emulator::{self, EmulatorArgs};

pub async fn run(args: EmulatorArgs) -> Result<(), CommandError> {
    emulator::main(args)
        .await
        .map_err(|e| CommandError::Emulator(e.into()))
}
