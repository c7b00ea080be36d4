//! `repair`: Twilio's workaround for one identity, now, journaled, with the
//! operator repair credential (`--dry-run`: the snapshot and the plan).

use std::io::Write;
use std::time::Duration;

use http::{HeaderValue, StatusCode};

use super::CommandError;
use crate::cli::RepairArgs;
use crate::config::Config;
use crate::forward;
use crate::metrics::Metrics;
use crate::repair::RepairCredential;
use crate::repair::policy;
use crate::repair::step::{Api, StepKind};
use crate::repair::user::{self, RepairTarget, snapshot};
use crate::routing::Origin;
use crate::sid;
use crate::store::{self, NewRepair, RepairState};
use crate::telemetry;
use crate::twilio_api::{RetryPolicy, TwilioApi};

/// Upstream used by `repair` when neither `--upstream` nor the
/// configuration pins one.
const CONVERSATIONS_ORIGIN: &str = "https://conversations.twilio.com";

/// Run Twilio's workaround for one identity, journaled, with the operator
/// repair credential (`TRP_REPAIR_API_KEY_SID`/`_SECRET`).
pub async fn run(args: RepairArgs, out: &mut dyn Write) -> Result<(), CommandError> {
    if let Some(admin) = &args.admin {
        return through_admin(admin, &args, out).await;
    }
    let _log = telemetry::init(&Config::defaults().log);
    let config = args.serve.load()?;
    if !sid::is_sid(&args.service, "IS") {
        return Err(CommandError::Usage(
            "--service must be a Conversation Service SID (IS + 32 hex)",
        ));
    }
    // The rule the running proxy applies to `POST /repairs`: the mode and
    // the service lists refuse before any call, dry run or not.
    if let Some(reason) = policy::by_config(&config.repair, &args.service) {
        return Err(CommandError::Refused(reason));
    }
    let credential = RepairCredential::from_env_or_file(config.repair.credentials_file.as_deref())?
        .ok_or_else(|| {
            CommandError::Usage(
                "set TRP_REPAIR_API_KEY_SID and TRP_REPAIR_API_KEY_SECRET (or repair.credentials_file)",
            )
        })?;
    // The journal first: a repair is never started without it (and an
    // SQLite journal a running proxy owns is refused here, before any call).
    let store = match args.dry_run {
        true => None,
        false => Some(
            store::open(&config.store, &config.store_options)
                .await
                .map_err(|e| match e {
                    store::StoreError::Locked { path } => CommandError::JournalHeld { path },
                    e => e.into(),
                })?,
        ),
    };
    let origin_s = config
        .upstream
        .clone()
        .unwrap_or_else(|| CONVERSATIONS_ORIGIN.to_string());
    let origin = Origin::parse(&origin_s).ok_or_else(|| CommandError::Origin {
        what: "upstream",
        origin: origin_s.clone(),
    })?;
    let policy = RetryPolicy {
        initial_backoff: Duration::from_millis(config.repair.retry_initial_backoff_ms),
        max_backoff: Duration::from_millis(config.repair.retry_max_backoff_ms),
        max_attempts: config.repair.retry_max_attempts,
        step_timeout: Duration::from_millis(config.repair.step_timeout_ms),
    };
    let mut api = Api::new(
        TwilioApi::new(
            forward::build_client_with(
                &config.limits,
                &forward::UpstreamTls::from_config(&config)?,
            ),
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
        return Err(CommandError::ServiceUnreadable {
            service: args.service,
            status: svc.status,
        });
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
        _held = Some(
            store
                .try_lock(&key.to_string())
                .await?
                .ok_or(CommandError::RepairRunning)?,
        );
        if let Some(open) = store
            .pending_repairs()
            .await?
            .into_iter()
            .find(|r| r.identity == target.identity && r.service_sid == target.service_sid)
        {
            return Err(CommandError::RepairUnfinished {
                repair_id: open.id,
                state: open.state,
            });
        }
    }
    // The loop guard, as the proxy's: too many repairs of this identity
    // within the window are refused before any write.
    if let Some(store) = &store {
        if let Some(reason) = policy::refusal(
            &config.repair,
            store.as_ref(),
            &target.service_sid,
            &target.identity,
        )
        .await
        {
            return Err(CommandError::Refused(reason));
        }
    }
    let snap = snapshot(&mut api, &target).await?;
    // A repair never creates a User that was not there: a missing one (a
    // typo, a User already gone) is refused before any write, dry run or
    // not, unless the operator says so.
    let plan = crate::repair::operator::plan(&snap, args.create_missing).ok_or_else(|| {
        CommandError::NoUser {
            identity: target.identity.clone(),
            service: target.service_sid.clone(),
        }
    })?;
    let Some(store) = store else {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "dry_run": true,
                "snapshot": snap,
                "plan": plan,
            }))?
        )?;
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
    let metrics = Metrics::default();
    let until = api.deadline();
    let (mut journal, result) =
        user::journaled(&mut api, store.as_ref(), &metrics, &record, &target, until).await?;
    let repair_id = journal.id;
    if result.is_ok() {
        journal
            .set(RepairState::Done, Some("repaired by the operator command"))
            .await;
    }
    writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "repair_id": repair_id,
            "snapshot": snap,
            "steps": api.steps,
            "error": result.as_ref().err().map(|e| e.to_string()),
        }))?
    )?;
    if let Err(source) = result {
        return Err(CommandError::RepairOpen {
            repair_id,
            source: Box::new(source),
        });
    }
    Ok(())
}

/// `repair --admin URL`: the running proxy runs the repair (`POST /repairs`
/// on its admin listener); its JSON answer is printed as it came.
async fn through_admin(
    admin: &str,
    args: &RepairArgs,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    use http_body_util::BodyExt;
    let url = format!("{}/repairs", admin.trim_end_matches('/'));
    let uri: http::Uri = url.parse().map_err(|_| CommandError::Origin {
        what: "--admin",
        origin: admin.to_string(),
    })?;
    let body = serde_json::json!({
        "service_sid": args.service,
        "identity": args.identity,
        "dry_run": args.dry_run,
        "create_missing": args.create_missing,
    })
    .to_string();
    let mut req = http::Request::post(uri).header(http::header::CONTENT_TYPE, "application/json");
    if let Some(token) = &args.admin_token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .map_err(|_| CommandError::Usage("the --admin URL cannot carry a request"))?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let resp = client
        .request(req)
        .await
        .map_err(|e| CommandError::Admin(format!("cannot reach {url}: {e}")))?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| CommandError::Admin(format!("{url}: {e}")))?
        .to_bytes();
    out.write_all(&bytes)?;
    writeln!(out)?;
    if status.is_success() {
        Ok(())
    } else {
        let message = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        Err(CommandError::Admin(format!("{status}: {message}")))
    }
}
