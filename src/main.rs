//! Thin entry point: parse the command line, start the runtime, run the
//! subcommand (one `match`), and turn its error into text and an exit
//! status: the only place `anyhow` is used.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use twilio_repair_proxy::cli::{Cli, Command};
use twilio_repair_proxy::commands;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let done = |r: Result<(), commands::CommandError>| r.map(|()| ExitCode::SUCCESS);
    let result = rt.block_on(async move {
        match cli.command.unwrap_or(Command::Serve(cli.serve)) {
            Command::Serve(args) => done(commands::serve::run(args).await),
            Command::CheckConfig(args) => {
                let probe = args.probe_store;
                let code = commands::check_config::run(
                    args.serve.clone(),
                    &mut std::io::stdout(),
                    &mut std::io::stderr(),
                );
                match code {
                    Ok(c) if c == ExitCode::SUCCESS && probe => {
                        commands::check_config::probe_store(args.serve, &mut std::io::stderr())
                            .await
                    }
                    other => other,
                }
            }
            Command::Emulator(args) => done(commands::emulator::run(args).await),
            Command::Healthcheck(args) => commands::healthcheck::run(args).await,
            Command::Demo(args) => done(commands::demo::run(args).await),
            Command::Incidents(cmd) => {
                done(commands::incidents::run(cmd, &mut std::io::stdout()).await)
            }
            Command::Repair(args) => {
                done(commands::repair::run(args, &mut std::io::stdout()).await)
            }
            Command::Selftest(args) => {
                done(commands::selftest::run(args, &mut std::io::stdout()).await)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {:#}", anyhow::Error::from(e));
            ExitCode::FAILURE
        }
    }
}
