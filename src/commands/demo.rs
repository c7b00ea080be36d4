//! `demo`: the emulator with the fault armed and the proxy in front of it,
//! seeded with an affected identity: no Twilio account needed.

use std::time::Duration;

use http::Method;

use super::{CommandError, bind, shutdown_signal};
use crate::app::{App, Listeners};
use crate::cli::{DemoArgs, ServeArgs};
use crate::config::{Config, RepairMode};
use crate::emulator::{self, EmulatorConfig, FaultMode};
use crate::forward;
use crate::repair::RepairCredential;
use crate::routing::Origin;
use crate::telemetry;
use crate::twilio_api::TwilioApi;

/// Run the emulator (fault armed) and the proxy in front of it, seed a
/// service, a conversation and an affected identity, and print the curl
/// commands that show the fault and its repair.
pub async fn run(args: DemoArgs) -> Result<(), CommandError> {
    let emu_listener = bind(args.emulator_listen).await?;
    let emu_origin = format!("http://{}", emu_listener.local_addr()?);
    let emu_config = EmulatorConfig {
        public_url: emu_origin.clone(),
        fault_mode: FaultMode::Block,
        fault_identity_pattern: Some("^demo-".into()),
        ..Default::default()
    };
    let (emu_stop_tx, emu_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let emu_task = tokio::spawn(emulator::serve(emu_listener, emu_config, async move {
        let _ = emu_stop_rx.await;
    }));

    let mut config = ServeArgs {
        listen: Some(args.listen),
        admin_listen: Some(args.admin_listen),
        upstream: Some(emu_origin.clone()),
        store: Some(args.store.clone()),
        config: None,
    }
    .load()?;
    config.repair.mode = RepairMode::Repair;
    let _log = telemetry::init(&config.log);

    // Seed through the emulator's API.
    let account = emulator::DEFAULT_ACCOUNT_SID;
    let token = emulator::DEFAULT_AUTH_TOKEN;
    let api = direct_api(&emu_origin, account, token)?;
    let seed = Duration::from_secs(30);
    let deadline = || tokio::time::Instant::now() + seed;
    let svc = api
        .once(
            Method::POST,
            "/v1/Services",
            Some("FriendlyName=demo"),
            deadline(),
        )
        .await?
        .json()
        .unwrap_or_default();
    let is = svc["sid"].as_str().unwrap_or_default().to_string();
    let conv = api
        .once(
            Method::POST,
            &format!("/v1/Services/{is}/Conversations"),
            Some("FriendlyName=support"),
            deadline(),
        )
        .await?
        .json()
        .unwrap_or_default();
    let ch = conv["sid"].as_str().unwrap_or_default().to_string();
    let parts = format!("/v1/Services/{is}/Conversations/{ch}/Participants");
    let p = api
        .once(
            Method::POST,
            &parts,
            Some("Identity=demo-alice"),
            deadline(),
        )
        .await?
        .json()
        .unwrap_or_default();
    let mb = p["sid"].as_str().unwrap_or_default();
    api.once(Method::DELETE, &format!("{parts}/{mb}"), None, deadline())
        .await?;

    let proxy = bind(config.listen).await?;
    let admin = bind(config.admin_listen).await?;
    let proxy_url = format!("http://{}", proxy.local_addr()?);
    let admin_url = format!("http://{}", admin.local_addr()?);
    println!(
        "\ntwilio-repair-proxy demo: proxy {proxy_url} -> emulator {emu_origin} (no Twilio account needed)\n\
         The identity demo-alice was added to conversation {ch} and removed again,\n\
         so Twilio's fault is armed for it (block mode: the re-add fails until the User is recreated).\n\n\
         1. The fault, straight from the emulator (what your app sees without the proxy):\n\
         \x20  curl -s -u {account}:{token} {emu_origin}{parts} -d Identity=demo-alice\n\n\
         2. The same call through the proxy: 201 and X-Repair-Outcome: repaired\n\
         \x20  curl -si -u {account}:{token} {proxy_url}{parts} -d Identity=demo-alice\n\n\
         3. Re-arm: remove the participant again, then repeat step 2:\n\
         \x20  curl -s -u {account}:{token} -X DELETE {proxy_url}{parts}/demo-alice\n\n\
         4. What the proxy recorded:\n\
         \x20  curl -s {admin_url}/incidents\n\
         \x20  curl -s {admin_url}/metrics | grep trp_repair\n\n\
         Ctrl-C stops the demo.\n"
    );
    App::build(config, Listeners { proxy, admin })
        .await?
        .serve(shutdown_signal())
        .await?;
    let _ = emu_stop_tx.send(());
    let _ = emu_task.await;
    Ok(())
}

fn direct_api(origin: &str, user: &str, secret: &str) -> Result<TwilioApi, CommandError> {
    let origin = Origin::parse(origin).ok_or_else(|| CommandError::Origin {
        what: "origin",
        origin: origin.to_string(),
    })?;
    let cred = RepairCredential::new(user, secret, None)?;
    let limits = Config::defaults().limits;
    Ok(TwilioApi::new(
        forward::build_client(&limits),
        origin,
        cred.authorization,
        None,
        Duration::from_secs(10),
    ))
}
