//! `selftest`: the command line's way to [`crate::selftest`]: which
//! credential, which options, the report printed as lines or JSON, and
//! the exit status (0 only if every check held).

use http::HeaderValue;

use super::CommandError;
use crate::cli::SelftestArgs;
use crate::config::Config;
use crate::repair::RepairCredential;
use crate::selftest::{Caller, Interruption, Options, SelftestError, ShieldFrom, selftest_until};

/// `TWILIO_API_KEY`/`_SECRET`, else `TWILIO_ACCOUNT_SID`/`_AUTH_TOKEN`,
/// else the operator repair credential.
fn pick(args: &SelftestArgs, operator: Option<&RepairCredential>) -> Result<Caller, SelftestError> {
    let set = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
    if let (Some(key), Some(secret)) = (set(&args.api_key), set(&args.api_secret)) {
        return Ok(Caller {
            credential: RepairCredential::new(&key, &secret, set(&args.account_sid))?,
            variables: "TWILIO_API_KEY and TWILIO_API_SECRET",
        });
    }
    if let (Some(sid), Some(token)) = (set(&args.account_sid), set(&args.auth_token)) {
        return Ok(Caller {
            credential: RepairCredential::new(&sid, &token, None)?,
            variables: "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN",
        });
    }
    match operator {
        Some(op) => Ok(Caller {
            credential: op.clone(),
            variables: "the repair credential (TRP_REPAIR_API_KEY_SID/_SECRET or repair.credentials_file)",
        }),
        None => Err(SelftestError::NoCredential),
    }
}

/// `twilio-repair-proxy selftest`: print the report; exit 0 only if every
/// check held.
pub async fn run(args: SelftestArgs, out: &mut dyn std::io::Write) -> Result<(), CommandError> {
    // Warnings only: the report is the output (the repair's own info
    // lines would speak of an intercepted 20404 that never was).
    let mut log = Config::defaults().log;
    log.level = "warn".into();
    let _log = crate::telemetry::init(&log);
    let config = crate::cli::JournalArgs {
        config: args.config.clone(),
        ..Default::default()
    }
    .load()?;
    let operator = RepairCredential::from_env_or_file(config.repair.credentials_file.as_deref())?;
    let caller = pick(&args, operator.as_ref()).map_err(CommandError::Selftest)?;
    let webhook =
        match args.webhook_enabled.as_str() {
            "" | "omit" => None,
            v => Some(HeaderValue::from_str(v).map_err(|_| {
                CommandError::Usage("--webhook-enabled must be true, false or omit")
            })?),
        };
    // SIGINT, SIGTERM and SIGQUIT end the run, not the process: the service is still
    // deleted (each of those calls bounded, as every call).
    let report = selftest_until(
        Options {
            config,
            base_url: args.base_url.clone(),
            caller,
            operator,
            webhook,
            keep: args.keep,
            shield: ShieldFrom::Config,
        },
        async {
            super::shutdown_signal().await;
            Interruption::Signal
        },
    )
    .await
    .map_err(CommandError::Selftest)?;
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        for line in report.lines() {
            writeln!(out, "{line}")?;
        }
    }
    if report.ok {
        Ok(())
    } else {
        Err(CommandError::SelftestFailed {
            failed: report.checks.iter().filter(|c| !c.ok).count(),
            total: report.checks.len(),
        })
    }
}
