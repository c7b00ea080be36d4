//! Thin entry point: parse the command line, load configuration, start
//! logging, and hand over to the library.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use twilio_repair_proxy::cli::{Cli, Command, ServeArgs};
use twilio_repair_proxy::{Listeners, run, shutdown_signal, telemetry};

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
    let result = rt.block_on(async move {
        match cli.command {
            None => serve(cli.serve).await,
            Some(Command::Serve(args)) => serve(args).await,
            Some(Command::CheckConfig(args)) => check_config(args),
            Some(Command::Emulator(args)) => twilio_repair_proxy::emulator::main(args)
                .await
                .map(|()| ExitCode::SUCCESS),
            Some(Command::Healthcheck(args)) => healthcheck(args).await,
            Some(Command::Demo(args)) => twilio_repair_proxy::ops::demo(args)
                .await
                .map(|()| ExitCode::SUCCESS),
            Some(Command::Incidents(cmd)) => twilio_repair_proxy::ops::incidents(cmd)
                .await
                .map(|()| ExitCode::SUCCESS),
            Some(Command::Repair(args)) => {
                let _log = telemetry::init(&twilio_repair_proxy::config::Config::defaults().log);
                twilio_repair_proxy::ops::repair(args)
                    .await
                    .map(|()| ExitCode::SUCCESS)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = args.load()?;
    let _log = telemetry::init(&config.log);
    let proxy = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let admin = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.admin_listen))?;
    run(Listeners { proxy, admin }, config, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

fn check_config(args: ServeArgs) -> anyhow::Result<ExitCode> {
    match args.load() {
        Ok(config) => {
            print!("{}", config.to_masked_toml());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("invalid configuration: {e}");
            Ok(ExitCode::from(2))
        }
    }
}

async fn healthcheck(args: twilio_repair_proxy::cli::HealthcheckArgs) -> anyhow::Result<ExitCode> {
    let addr = match args.admin {
        Some(a) => a,
        None => ServeArgs::default().load()?.admin_listen,
    };
    let ok =
        twilio_repair_proxy::cli::healthcheck(addr, std::time::Duration::from_secs(args.timeout))
            .await;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
