//! `check-config`: print the effective configuration (secrets masked), or
//! why it is invalid (exit status 2).

use std::io::Write;
use std::process::ExitCode;

use super::CommandError;
use crate::cli::ServeArgs;

pub fn run(
    args: ServeArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<ExitCode, CommandError> {
    match args.load() {
        Ok(config) => {
            write!(out, "{}", config.to_masked_toml())?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            writeln!(err, "invalid configuration: {e}")?;
            Ok(ExitCode::from(2))
        }
    }
}
