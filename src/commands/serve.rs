//! `serve` (the default): run the proxy until SIGINT/SIGTERM; SIGHUP and a
//! change of the `--config` file reload it (`config::reload`).

use super::{CommandError, bind, shutdown_signal};
use crate::app::{App, Listeners};
use crate::cli::ServeArgs;
use crate::telemetry;

pub async fn run(args: ServeArgs) -> Result<(), CommandError> {
    let config = args.load()?;
    let _log = telemetry::init(&config.log);
    let proxy = bind(config.listen).await?;
    let admin = bind(config.admin_listen).await?;
    let app = App::build(config.clone(), Listeners { proxy, admin }).await?;
    let live = app.live();
    let reloader = tokio::spawn(crate::config::reload::watch(
        args.config.clone(),
        config,
        move || args.load(),
        move |old, new| live.apply(old, new),
        |result| crate::telemetry::count_reload(result.as_str()),
    ));
    let served = app.serve(shutdown_signal()).await;
    reloader.abort();
    served?;
    Ok(())
}
