//! Operator commands: `demo`, `incidents export`, `repair`.

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderValue, Method, StatusCode};
use tokio::net::TcpListener;

use crate::cli::ServeArgs;
use crate::config::RepairMode;
use crate::emulator::{self, EmulatorConfig, FaultMode};
use crate::repair::RepairCredential;
use crate::repair::step::{Api, StepKind};
use crate::repair::user::{self, RepairTarget, snapshot};
use crate::routing::Origin;
use crate::store::{NewRepair, RepairState};
use crate::twilio_api::{RetryPolicy, TwilioApi};

/// Upstream used by `repair` when neither `--upstream` nor the
/// configuration pins one.
const CONVERSATIONS_ORIGIN: &str = "https://conversations.twilio.com";

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Proxy listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Admin listen address.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,
    /// Emulator listen address.
    #[arg(long, default_value = "127.0.0.1:4010")]
    pub emulator_listen: SocketAddr,
    /// Journal store.
    #[arg(long, default_value = "sqlite://data/demo.db")]
    pub store: String,
}

/// Run the emulator (fault armed) and the proxy in front of it, seed a
/// service, a conversation and an affected identity, and print the curl
/// commands that show the fault and its repair.
pub async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let emu_listener = TcpListener::bind(args.emulator_listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.emulator_listen))?;
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
    let _log = crate::telemetry::init(&config.log);

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

    let proxy = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let admin = TcpListener::bind(config.admin_listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.admin_listen))?;
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
    crate::run(
        crate::Listeners { proxy, admin },
        config,
        crate::shutdown_signal(),
    )
    .await?;
    let _ = emu_stop_tx.send(());
    let _ = emu_task.await;
    Ok(())
}

fn direct_api(origin: &str, user: &str, secret: &str) -> anyhow::Result<TwilioApi> {
    let origin = Origin::parse(origin).ok_or_else(|| anyhow::anyhow!("invalid origin {origin}"))?;
    let cred = RepairCredential::new(user, secret, None)?;
    let limits = crate::config::Config::defaults().limits;
    Ok(TwilioApi::new(
        crate::forward::build_client(&limits),
        origin,
        cred.authorization,
        None,
        Duration::from_secs(10),
    ))
}

#[derive(Debug, clap::Subcommand)]
pub enum IncidentsCommand {
    /// Print every recorded incident, for Twilio Support (identities hashed
    /// when `repair.incident_identity = "hash"`).
    Export(ExportArgs),
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    Json,
    Csv,
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    #[arg(long, value_enum, default_value = "json")]
    pub format: ExportFormat,
    /// Most incidents to export, newest first.
    #[arg(long, default_value_t = 100_000)]
    pub limit: i64,
    #[command(flatten)]
    pub serve: ServeArgs,
}

pub async fn incidents(cmd: IncidentsCommand) -> anyhow::Result<()> {
    let IncidentsCommand::Export(args) = cmd;
    let config = args.serve.load()?;
    let store = crate::store::open_reader(&config.store, &config.store_options).await?;
    // The same privacy rule as the admin plane: with
    // `repair.incident_identity = "hash"`, no plain identity leaves.
    let privacy = crate::admin::Privacy::new(config.repair.incident_identity);
    let list: Vec<_> = store
        .incidents(args.limit)
        .await?
        .into_iter()
        .map(|i| privacy.incident(i))
        .collect();
    match args.format {
        ExportFormat::Json => println!("{}", serde_json::to_string_pretty(&list)?),
        ExportFormat::Csv => {
            println!(
                "id,at,account_sid,service_sid,conversation_sid,identity,outcome,detail,repair_id,twilio_request_ids"
            );
            for i in &list {
                let ids: Vec<String> = i
                    .steps
                    .iter()
                    .filter_map(|s| s.twilio_request_id.clone())
                    .collect();
                println!(
                    "{},{},{},{},{},{},{},{},{},{}",
                    i.id,
                    csv(&i.at),
                    csv(i.account_sid.as_deref().unwrap_or("")),
                    csv(i.service_sid.as_deref().unwrap_or("")),
                    csv(&i.conversation_sid),
                    csv(i.identity.as_deref().unwrap_or("")),
                    csv(i.outcome.as_str()),
                    csv(i.detail.as_deref().unwrap_or("")),
                    i.repair_id.map(|r| r.to_string()).unwrap_or_default(),
                    csv(&ids.join(" ")),
                );
            }
        }
    }
    Ok(())
}

/// RFC 4180 quoting.
fn csv(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[derive(Debug, clap::Args)]
pub struct RepairArgs {
    /// The Conversation Service (IS...).
    #[arg(long)]
    pub service: String,
    /// The User identity to repair.
    #[arg(long)]
    pub identity: String,
    /// Show the snapshot and the planned steps; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Run Twilio's workaround for one identity, journaled, with the operator
/// repair credential (`TRP_REPAIR_API_KEY_SID`/`_SECRET`).
pub async fn repair(args: RepairArgs) -> anyhow::Result<()> {
    let config = args.serve.load()?;
    if !crate::sid::is_sid(&args.service, "IS") {
        anyhow::bail!("--service must be a Conversation Service SID (IS + 32 hex)");
    }
    let credential = RepairCredential::from_env_or_file(config.repair.credentials_file.as_deref())?
        .ok_or_else(|| {
            anyhow::anyhow!("set TRP_REPAIR_API_KEY_SID and TRP_REPAIR_API_KEY_SECRET (or repair.credentials_file)")
        })?;
    // The journal first: a repair is never started without it (and an
    // SQLite journal a running proxy owns is refused here, before any call).
    let store = match args.dry_run {
        true => None,
        false => Some(crate::store::open(&config.store, &config.store_options).await?),
    };
    let origin_s = config
        .upstream
        .clone()
        .unwrap_or_else(|| CONVERSATIONS_ORIGIN.to_string());
    let origin =
        Origin::parse(&origin_s).ok_or_else(|| anyhow::anyhow!("invalid upstream {origin_s}"))?;
    let policy = RetryPolicy {
        initial_backoff: Duration::from_millis(config.repair.retry_initial_backoff_ms),
        max_backoff: Duration::from_millis(config.repair.retry_max_backoff_ms),
        max_attempts: config.repair.retry_max_attempts,
        step_timeout: Duration::from_millis(config.repair.step_timeout_ms),
    };
    let mut api = Api::new(
        TwilioApi::new(
            crate::forward::build_client(&config.limits),
            origin,
            credential.authorization.clone(),
            Some(HeaderValue::from_static("false")),
            policy.step_timeout,
        ),
        policy,
        tokio::time::Instant::now() + Duration::from_millis(config.repair.workflow_deadline_ms),
    );
    // The service, read with the credential: proves it may act there.
    let svc_path = format!("/v1/Services/{}", args.service);
    let svc = api
        .step(StepKind::FetchConversation, &svc_path, None)
        .await?;
    if svc.status != StatusCode::OK {
        anyhow::bail!(
            "cannot read service {}: status {}",
            args.service,
            svc.status
        );
    }
    let account_sid = svc
        .json()
        .and_then(|v| v["account_sid"].as_str().map(str::to_string))
        .or(credential.account_sid.clone())
        .unwrap_or_default();
    let target = RepairTarget {
        account_sid,
        service_base: svc_path,
        service_sid: args.service.clone(),
        identity: args.identity.clone(),
        exclude_conversation: None,
    };
    // Beside a fleet: never over a live repair (its lock) or an unfinished
    // record of the same identity.
    let mut _held = None;
    if let Some(store) = &store {
        let key = crate::repair::lock::RepairKey {
            account_sid: target.account_sid.clone(),
            service_sid: target.service_sid.clone(),
            identity: target.identity.clone(),
        };
        _held = Some(store.try_lock(&key.to_string()).await?.ok_or_else(|| {
            anyhow::anyhow!(
                "a repair of this identity is running right now (its lock is held): try again later"
            )
        })?);
        if let Some(open) = store
            .pending_repairs()
            .await?
            .into_iter()
            .find(|r| r.identity == target.identity && r.service_sid == target.service_sid)
        {
            anyhow::bail!(
                "journal record {} of this identity is unfinished ({}): let recovery finish it, or abandon it (POST /repairs/{}/abandon) first",
                open.id,
                open.state,
                open.id
            );
        }
    }
    let snap = snapshot(&mut api, &target).await?;
    let Some(store) = store else {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "dry_run": true,
                "snapshot": snap,
                "plan": ["journal the snapshot", "DELETE the User (by its SID)", "recreate it with the same fields, read back", "restore every membership the delete removed, read back"],
            }))?
        );
        return Ok(());
    };
    let record = NewRepair {
        account_sid: target.account_sid.clone(),
        credential_user: credential.user.clone(),
        upstream: origin_s,
        service_base: target.service_base.clone(),
        service_sid: target.service_sid.clone(),
        identity: target.identity.clone(),
        snapshot: snap.clone(),
        webhook: Some("false".into()),
    };
    let metrics = crate::metrics::Metrics::default();
    let until = api.deadline();
    let (mut journal, result) =
        user::journaled(&mut api, store.as_ref(), &metrics, &record, &target, until).await?;
    let repair_id = journal.id;
    if result.is_ok() {
        journal
            .set(RepairState::Done, Some("repaired by the operator command"))
            .await;
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "repair_id": repair_id,
            "snapshot": snap,
            "steps": api.steps,
            "error": result.as_ref().err().map(|e| e.to_string()),
        }))?
    );
    if let Err(e) = result {
        anyhow::bail!("journal record {repair_id} stays open for recovery: {e}");
    }
    Ok(())
}
