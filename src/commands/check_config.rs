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

/// `--probe-store`: open the configured journal changing nothing (see
/// `store::probe`) and say on one line whether it could; exit 3 when not.
pub async fn probe_store(args: ServeArgs, err: &mut dyn Write) -> Result<ExitCode, CommandError> {
    let config = args.load()?;
    let masked = crate::config::mask_url_password(&config.store);
    match crate::store::probe(&config.store, &config.store_options).await {
        Ok(_) => {
            writeln!(err, "store {masked}: can be opened")?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            writeln!(err, "store {masked}: cannot be opened: {e}")?;
            Ok(ExitCode::from(3))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_file_is_exit_2_with_the_reason_on_stderr() {
        let args = ServeArgs {
            config: Some("/nonexistent/trp-check-config.toml".into()),
            ..ServeArgs::default()
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run(args, &mut out, &mut err).unwrap();
        assert_eq!(code, ExitCode::from(2));
        assert!(out.is_empty());
        let err = String::from_utf8(err).unwrap();
        assert!(
            err.starts_with(
                "invalid configuration: cannot read config file /nonexistent/trp-check-config.toml"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_valid_configuration_is_printed_on_stdout() {
        let dir = std::env::temp_dir().join(format!("trp-check-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "[limits]\nmax_connections = 777\n").unwrap();
        let args = ServeArgs {
            config: Some(file),
            ..ServeArgs::default()
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run(args, &mut out, &mut err).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let out = String::from_utf8(out).unwrap();
        assert_eq!(code, ExitCode::SUCCESS, "{}", String::from_utf8_lossy(&err));
        assert!(err.is_empty());
        assert!(out.contains("max_connections = 777"), "{out}");
    }
}
