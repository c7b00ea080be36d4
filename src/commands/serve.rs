//! `serve` (the default): run the proxy until SIGINT, SIGTERM or SIGQUIT (all drain alike). SIGHUP never
//! ends it: it is a reload notice ([`crate::reload`]) that reloads the
//! configuration (`config::reload`, which also follows the `--config` file)
//! and re-reads the listener's TLS certificate.

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
    let app = App::build(config.clone(), Listeners { proxy, admin })
        .await?
        .with_reload(reload.clone());
    let live = app.live();
    let reloader = tokio::spawn(crate::config::reload::watch(
        args.config.clone(),
        config,
        reload.subscribe(),
        move || args.load(),
        move |old, new| live.apply(old, new),
        |result| crate::telemetry::count_reload(result.as_str()),
    ));
    let served = app.serve(shutdown_signal()).await;
    reloader.abort();
    served?;
    Ok(())
}
