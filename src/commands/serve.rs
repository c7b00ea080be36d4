//! `serve` (the default): run the proxy until SIGINT/SIGTERM. SIGHUP never
//! ends it: it is a reload notice ([`crate::reload`]; the listener's TLS
//! certificate is re-read).

use super::{CommandError, bind, shutdown_signal};
use crate::app::{App, Listeners};
use crate::cli::ServeArgs;
use crate::reload::Reload;
use crate::telemetry;

pub async fn run(args: ServeArgs) -> Result<(), CommandError> {
    let config = args.load()?;
    let _log = telemetry::init(&config.log);
    let reload = Reload::new();
    reload.on_sighup().map_err(CommandError::Io)?;
    let proxy = bind(config.listen).await?;
    let admin = bind(config.admin_listen).await?;
    App::build(config, Listeners { proxy, admin })
        .await?
        .with_reload(reload)
        .serve(shutdown_signal())
        .await?;
    Ok(())
}
