//! `serve` (the default): run the proxy until SIGINT/SIGTERM.

use super::{CommandError, bind, shutdown_signal};
use crate::app::{App, Listeners};
use crate::cli::ServeArgs;
use crate::telemetry;

pub async fn run(args: ServeArgs) -> Result<(), CommandError> {
    let config = args.load()?;
    let _log = telemetry::init(&config.log);
    let proxy = bind(config.listen).await?;
    let admin = bind(config.admin_listen).await?;
    App::build(config, Listeners { proxy, admin })
        .await?
        .serve(shutdown_signal())
        .await?;
    Ok(())
}
