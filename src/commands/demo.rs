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
    // Link rewriting (`public_base_url = "request"`, the default): the
    // `url`, `links` and `meta.*_url` fields of every answer point at the
    // proxy, so that what the demo shows (and a helper library's pagination)
    // goes through the product, not the emulator.
    println!("{}", steps(&proxy_url, &admin_url, &parts, &ch));
    App::build(config, Listeners { proxy, admin })
        .await?
        .serve(shutdown_signal())
        .await?;
    let _ = emu_stop_tx.send(());
    let _ = emu_task.await;
    Ok(())
}

/// What the demo prints: every link goes through the proxy (the API) or
/// its admin listener, and the last one is the incidents page.
pub fn steps(proxy_url: &str, admin_url: &str, parts: &str, ch: &str) -> String {
    let (account, token) = (emulator::DEFAULT_ACCOUNT_SID, emulator::DEFAULT_AUTH_TOKEN);
    format!(
        "\ntwilio-repair-proxy demo: the proxy at {proxy_url}, in front of a local Twilio emulator\n\
         (no Twilio account needed). The identity demo-alice was added to conversation {ch} and\n\
         removed again, so Twilio's fault is armed for it: without the proxy, adding demo-alice\n\
         back answers 404 with error 20404 until her User is deleted and recreated.\n\n\
         1. Add demo-alice through the proxy: 201 and X-Repair-Outcome: repaired\n\
         \x20  curl -si -u {account}:{token} {proxy_url}{parts} -d Identity=demo-alice\n\n\
         2. The participants, with links that point at the proxy:\n\
         \x20  curl -s -u {account}:{token} {proxy_url}{parts}\n\n\
         3. Re-arm: remove the participant again, then repeat step 1:\n\
         \x20  curl -s -u {account}:{token} -X DELETE {proxy_url}{parts}/demo-alice\n\n\
         4. The metrics:\n\
         \x20  curl -s {admin_url}/metrics | grep trp_repair\n\n\
         5. What the proxy recorded, step by step, with a support bundle for Twilio (open in a browser):\n\
         \x20  {admin_url}/ui\n\n\
         Ctrl-C stops the demo.\n"
    )
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
