//! The check-and-repair workflow, as named steps in the order of the table
//! in `docs/request-lifecycle.md`. Each step is an `async fn` returning
//! `Result<T, Verdict>`: a [`Verdict`] is the one early exit, and the
//! incident is recorded once, in [`run`], whatever the exit.
//!
//! 1. `Workflow::who`: whom the create names (ambiguous → `disabled`).
//! 2. `Workflow::landed`: did the create land after all? (`existing`)
//! 3. `Workflow::genuine`: does the conversation exist? (`genuine`)
//! 4. `Workflow::allowed`: mode, service lists, loop guard (`disabled`;
//!    in check-only mode, the repair is rehearsed after the caller's
//!    answer, on a task of its own: [`super::rehearsal`]).
//! 5. `Workflow::lock`: the identity's repair lock (and fence).
//! 6. `Workflow::retry_create`: repaired meanwhile? (`repaired`)
//! 7. `Workflow::repair_user`: snapshot, journal, converge ([`super::user`]).
//! 8. `Workflow::replay`: the caller's create again; the final verdict.

use super::check::{self, Conversation, Landed, Posted};
use super::credential::{self, Acting};
use super::journal::VERIFIED;
use super::lock::{KeyLock, RepairKey, SharedFence};
use super::rehearsal::{self, Rehearsal};
use super::request::Who;
use super::step::{Api, StepKind};
use super::user::{self, ConvergeError, Journal};
pub use super::verdict::{Answer, CreateRequest, Verdict};
use super::{Repairer, policy};
use crate::config::RepairMode;
use crate::metrics::RehearsalResult;
use crate::store::{Outcome, RepairState, SidAlias, StepRecord};
use crate::twilio_api::ApiResponse;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

/// The incident's detail when Twilio's 409 is answered unchanged.
const CONFLICT_UNSEEN: &str = "Twilio answered 409 (the participant exists) but no read showed it within repair.read_lag_grace_ms: its 409 was answered, and no User was deleted for it";

/// The User is back (and, when `complete`, every membership too).
struct Repaired {
    repair_id: i64,
    complete: bool,
    detail: Option<String>,
    /// A state change did not reach the journal.
    journal_lost: bool,
    /// The SIDs the repair changed (User, restored memberships).
    aliases: Vec<SidAlias>,
}

/// Run the workflow for one intercepted 20404 and record its incident.
pub async fn run(rep: &Repairer, req: &CreateRequest) -> Verdict {
    run_with(rep, req, false).await
}

/// The same workflow for a create that is taken to have met the fault
/// (`selftest`, on an account that cannot produce the 20404 at will):
/// every step but 6, the retried create, which on a healthy account would
/// simply succeed and end the workflow before the repair.
pub async fn run_as_faulted(rep: &Repairer, req: &CreateRequest) -> Verdict {
    run_with(rep, req, true).await
}

async fn run_with(rep: &Repairer, req: &CreateRequest, as_faulted: bool) -> Verdict {
    let mut w = Workflow {
        rep,
        req,
        steps: Vec::new(),
        api: None,
        conversation: None,
        as_faulted,
        rehearsal: None,
    };
    let (verdict, who) = match w.who() {
        Ok(who) => (w.steps(&who).await.unwrap_or_else(|v| v), Some(who)),
        Err(v) => (v, None),
    };
    w.finish(verdict, who.as_ref()).await
}

struct Workflow<'a> {
    rep: &'a Repairer,
    req: &'a CreateRequest,
    steps: Vec<StepRecord>,
    /// The caller's credential, bound to the request's origin.
    api: Option<Api>,
    /// The conversation's account and service, once read.
    conversation: Option<(String, String)>,
    /// [`run_as_faulted`]: no retried create before the repair.
    as_faulted: bool,
    /// In check-only mode: the rehearsal admitted, started by `finish`.
    rehearsal: Option<Pending>,
}

impl Workflow<'_> {
    async fn steps(&mut self, who: &Who) -> Result<Verdict, Verdict> {
        self.api = Some(self.caller_api()?);
        self.landed(who, Outcome::Existing).await?;
        let conv = self.genuine().await?;
        let identity = who.identity().ok_or_else(|| {
            Verdict::failed("messaging-binding participants have no User to repair")
        })?;
        self.allowed(&conv, identity).await?;
        let _lock = self.lock(&conv, identity).await?;
        let _fence = SharedFence::raise(&self.rep.store, identity, self.api().deadline()).await;
        if !self.as_faulted {
            self.retry_create(who).await?;
        }
        let repaired = self.repair_user(&conv, identity).await?;
        Ok(self.replay(who, repaired).await)
    }

    fn api(&mut self) -> &mut Api {
        self.api
            .as_mut()
            .expect("the caller's Api is set before any step")
    }

    /// 1. Whom the create names; an ambiguous body is never acted on.
    fn who(&self) -> Result<Who, Verdict> {
        Who::from_form(&self.req.body).map_err(|e| match e {
            super::request::WhoError::Nobody => Verdict::failed(e),
            _ => Verdict::original(Outcome::Disabled, Some(e.to_string())),
        })
    }

    fn caller_api(&self) -> Result<Api, Verdict> {
        let auth = (self.req.authorization())
            .ok_or_else(|| Verdict::failed("no credentials to check with"))?;
        Ok(self.rep.request_api(self.req, auth.clone()))
    }

    /// 2. Did the create land after all? The answer is Twilio's own JSON.
    async fn landed(&mut self, who: &Who, outcome: Outcome) -> Result<(), Verdict> {
        let path = self.req.path.clone();
        match check::participant(self.api(), &path, who).await {
            Ok(Landed::Found(p)) => Err(Verdict::answered(self.created_or_exists(p), outcome)),
            Ok(Landed::Missing) => Ok(()),
            Err(e) => Err(self.step_failed(e)),
        }
    }

    /// 3. A missing conversation (or service) makes the 404 genuine.
    async fn genuine(&mut self) -> Result<Conversation, Verdict> {
        let path = self.req.path.clone();
        match check::conversation(self.api(), &path).await {
            Ok(Some(c)) => {
                self.conversation = Some((c.account_sid.clone(), c.service_sid.clone()));
                Ok(c)
            }
            Ok(None) => Err(Verdict::original(Outcome::Genuine, None)),
            Err(e) => Err(self.step_failed(e)),
        }
    }

    /// Step 4: may this identity be repaired here and now? In check-only
    /// mode the repair is rehearsed ([`super::rehearsal`]), off the
    /// caller's answer path: here it only takes a slot (or is skipped) and
    /// builds its client; [`Workflow::finish`] starts it once the incident
    /// is recorded.
    async fn allowed(&mut self, conv: &Conversation, identity: &str) -> Result<(), Verdict> {
        let r = &self.rep;
        let config = r.policy();
        match policy::refusal(&config, r.store.as_ref(), &conv.service_sid, identity).await {
            Some(reason) if config.mode == RepairMode::CheckOnly => {
                let detail = match self.rep.rehearsals.admit() {
                    Some(slot) => {
                        let detail = format!("{reason}{}", rehearsal::UNDER_WAY);
                        self.rehearsal = Some(self.pending(conv, identity, slot, reason));
                        detail
                    }
                    None => {
                        self.rep.metrics.rehearsal(RehearsalResult::Skipped);
                        match self.rep.rehearsals.max_in_flight() {
                            0 => format!(
                                "{reason}; not rehearsed: rehearsals are off \
                                 (repair.rehearsal_max_in_flight = 0)"
                            ),
                            n => format!(
                                "{reason}; not rehearsed: {n} rehearsal(s) in flight already \
                                 (repair.rehearsal_max_in_flight)"
                            ),
                        }
                    }
                };
                Err(Verdict::original(Outcome::Disabled, Some(detail)))
            }
            Some(reason) => Err(Verdict::original(Outcome::Disabled, Some(reason))),
            None => Ok(()),
        }
    }

    /// What a rehearsal needs to run on its own: the client step 7 would
    /// use (the caller's, under the request's shield and its cap, with the
    /// credential the repair would act with), what it would touch.
    fn pending(
        &mut self,
        conv: &Conversation,
        identity: &str,
        slot: OwnedSemaphorePermit,
        refusal: String,
    ) -> Pending {
        let none = http::HeaderValue::from_static("");
        let caller = self.req.authorization().unwrap_or(&none);
        let acting =
            credential::for_repair(self.rep.credential.as_ref(), caller, &conv.account_sid);
        Pending {
            api: self.api().with_authorization(acting.authorization.clone()),
            acting,
            target: self.req.repair_target(conv, identity),
            refusal,
            slot,
        }
    }

    /// 5. The identity's lock; open journal records of it are finished first.
    async fn lock(&mut self, conv: &Conversation, identity: &str) -> Result<KeyLock, Verdict> {
        let key = RepairKey {
            account_sid: conv.account_sid.clone(),
            service_sid: conv.service_sid.clone(),
            identity: identity.to_string(),
        };
        let deadline = self.api().deadline();
        let store = self.rep.store.as_ref();
        let lock = self.rep.locks.acquire(store, &key, deadline).await?;
        let caller = self.req.authorization().cloned();
        if !(self
            .rep
            .finish_open_records(&key, caller.as_ref(), deadline))
        .await
        {
            return Err(Verdict::failed(
                "an earlier repair of this identity is unfinished and could not be completed now",
            ));
        }
        Ok(lock)
    }

    /// 6. Another request may have repaired meanwhile: create once more.
    ///
    /// Twilio's 409 says the participant exists: never a repair.
    async fn retry_create(&mut self, who: &Who) -> Result<(), Verdict> {
        let posted = match self.create(StepKind::RetryCreate, who).await {
            Ok(posted) => posted,
            Err(e) => return Err(self.step_failed(e)),
        };
        let outcome = match posted {
            Posted::Missing => return Ok(()),
            Posted::Created(_) => Outcome::Repaired,
            Posted::Found(_) | Posted::Exists(_) | Posted::Conflict(_) => Outcome::Existing,
        };
        let detail = matches!(posted, Posted::Conflict(_)).then(|| CONFLICT_UNSEEN.to_string());
        let answer = self.answer(posted).unwrap_or(Answer::Original);
        Err(Verdict {
            detail,
            ..Verdict::answered(answer, outcome)
        })
    }

    /// 7. Twilio's workaround: snapshot, journal, then converge.
    async fn repair_user(
        &mut self,
        conv: &Conversation,
        identity: &str,
    ) -> Result<Repaired, Verdict> {
        let none = http::HeaderValue::from_static("");
        let caller = self.req.authorization().unwrap_or(&none);
        let acting: Acting =
            credential::for_repair(self.rep.credential.as_ref(), caller, &conv.account_sid);
        let mut api = self.api().with_authorization(acting.authorization.clone());
        let target = self.req.repair_target(conv, identity);
        let snap = user::snapshot(&mut api, &target).await;
        self.steps.append(&mut api.steps);
        let snap = snap.map_err(|e| Verdict::failed(format!("{e}; nothing was touched")))?;
        let record = self.req.new_repair(&target, acting.user.clone(), snap);
        let until = self.rep.memberships_until(api.deadline());
        let (store, metrics) = (self.rep.store.as_ref(), self.rep.metrics.as_ref());
        let journaled = user::journaled(&mut api, store, metrics, &record, &target, until).await;
        let (mut journal, result) = journaled.map_err(|e| {
            tracing::warn!(error = %e, "cannot journal the snapshot: not repairing");
            Verdict::original(
                Outcome::Disabled,
                Some("journal unavailable: the User was not touched".into()),
            )
        })?;
        let repair_id = journal.id;
        // On the repair's span: every later line of it names its record.
        tracing::Span::current().record("repair_id", repair_id);
        self.steps.append(&mut api.steps);
        match result {
            Ok(()) => Ok(Repaired {
                repair_id,
                complete: true,
                detail: (journal.lost).then(|| {
                    "the journal lost a state change; the repair went on from memory".into()
                }),
                journal_lost: journal.lost,
                aliases: std::mem::take(&mut journal.aliases),
            }),
            Err(e) if e.left_the_user_untouched() => {
                self.rep.close_untouched(&mut journal).await;
                Err(Verdict::failed(e).of_repair(repair_id))
            }
            Err(e) => {
                self.rep
                    .after_unfinished(repair_id, &e, acting, &mut journal)
                    .await;
                let detail = format!(
                    "{e}; journal record {repair_id} stays open and is completed in the background"
                );
                match e {
                    // The User is back: the caller's create may go ahead.
                    ConvergeError::Memberships { .. } => Ok(Repaired {
                        repair_id,
                        complete: false,
                        journal_lost: journal.lost,
                        aliases: std::mem::take(&mut journal.aliases),
                        detail: Some(detail),
                    }),
                    _ => Err(Verdict::failed(detail).of_repair(repair_id)),
                }
            }
        }
    }

    /// 8. Replay the caller's create on the repaired User.
    async fn replay(&mut self, who: &Who, repaired: Repaired) -> Verdict {
        let mut journal = Journal::new(
            self.rep.store.as_ref(),
            &self.rep.metrics,
            repaired.repair_id,
        );
        if repaired.complete {
            journal.set(RepairState::Replaying, None).await;
        }
        let created = self.create(StepKind::ReplayCreate, who).await;
        if repaired.complete {
            journal.set(RepairState::Done, None).await;
            if journal.lost || repaired.journal_lost {
                self.rep
                    .closed_despite_journal(repaired.repair_id, RepairState::Done, VERIFIED);
            }
        }
        let (answer, mut detail) = match created {
            Ok(Posted::Conflict(r)) => (
                Answer::Conflict(Box::new(r)),
                Some(CONFLICT_UNSEEN.to_string()),
            ),
            Ok(posted) => match self.answer(posted) {
                Some(answer) => (answer, repaired.detail.clone()),
                None => (
                    Answer::Original,
                    Some("the create still answers 20404 after the User was recreated".into()),
                ),
            },
            Err(e) => (Answer::Original, Some(e.to_string())),
        };
        let outcome = match (&answer, repaired.complete) {
            (Answer::Original, _) | (_, false) => Outcome::Failed,
            _ => Outcome::Repaired,
        };
        if outcome == Outcome::Failed && detail.is_none() {
            detail = repaired.detail;
        }
        Verdict {
            answer,
            outcome,
            detail,
            repair_id: Some(repaired.repair_id),
            aliases: repaired.aliases,
        }
    }

    /// POST the caller's create, read back when the answer leaves it
    /// open, and read again within the read-lag grace after a 409.
    async fn create(&mut self, kind: StepKind, who: &Who) -> Result<Posted, check::CheckError> {
        let req = self.req;
        let grace = std::time::Duration::from_millis(self.rep.config.read_lag_grace_ms);
        check::create(
            self.api(),
            kind,
            &req.path,
            &req.headers,
            &req.body,
            who,
            grace,
        )
        .await
    }

    /// What the caller is answered for a create's result; `None`: still
    /// 20404, and not there.
    fn answer(&self, posted: Posted) -> Option<Answer> {
        match posted {
            Posted::Created(p) => Some(Answer::Created(Box::new(p))),
            Posted::Found(p) | Posted::Exists(p) => Some(self.created_or_exists(p)),
            Posted::Conflict(r) => Some(Answer::Conflict(Box::new(r))),
            Posted::Missing => None,
        }
    }

    fn created_or_exists(&self, p: ApiResponse) -> Answer {
        if super::existed_before(&p, self.req.requested_at, self.rep.config.clock_skew_ms) {
            Answer::AlreadyExists
        } else {
            Answer::Created(Box::new(p))
        }
    }

    fn step_failed(&mut self, e: check::CheckError) -> Verdict {
        self.rep.metrics.repair_step_failure(e.step());
        Verdict::failed(e)
    }

    /// Record the incident, once, whatever the exit; then, in check-only
    /// mode, start the rehearsal (the caller's answer does not wait for it).
    async fn finish(mut self, verdict: Verdict, who: Option<&Who>) -> Verdict {
        if let Some(api) = self.api.as_mut() {
            self.steps.append(&mut api.steps);
        }
        let identity = who.map(|w| self.rep.record_identity(w.label()));
        let steps = std::mem::take(&mut self.steps);
        let incident = self
            .req
            .incident(&verdict, identity, self.conversation.take(), steps);
        let pending = self.rehearsal.take();
        let kept = pending.as_ref().map(|_| incident.clone());
        let plain = who.map(|w| w.label());
        let id = self.rep.record_incident(incident, plain).await;
        self.rep.rehearsals.fault_seen();
        if let (Some(p), Some(rep)) = (pending, self.rep.me.upgrade()) {
            let run = rehearse(rep.clone(), p, id.zip(kept));
            rep.tasks.spawn_on(run.in_current_span(), &rep.rt);
        }
        verdict
    }
}

/// A check-only rehearsal admitted by [`Workflow::allowed`], to run once
/// its incident is recorded.
struct Pending {
    api: Api,
    acting: Acting,
    target: super::request::RepairTarget,
    /// Why check-only (and the policy) refused the repair.
    refusal: String,
    /// Its slot of `repair.rehearsal_max_in_flight`, held to the end.
    slot: OwnedSemaphorePermit,
}

/// The check-only rehearsal, on its own task (tracked by the repairer's
/// task tracker): the snapshot read with the credential the repair would
/// act with, the plan, the judgement; reads only. Its result is kept for
/// the panel and written into its incident, `incident` (recorded with
/// the refusal: the detail is completed and the reads' steps added),
/// every text through the privacy rule.
async fn rehearse(
    rep: std::sync::Arc<Repairer>,
    mut p: Pending,
    incident: Option<(i64, crate::store::Incident)>,
) {
    let identity = p.target.identity.clone();
    let snap = user::snapshot(&mut p.api, &p.target).await;
    // Would repair mode refuse it for another reason?
    let mut as_repair = (*rep.policy()).clone();
    as_repair.mode = RepairMode::Repair;
    let refusal = policy::refusal(
        &as_repair,
        rep.store.as_ref(),
        &p.target.service_sid,
        &identity,
    )
    .await;
    let conversation_sid = p.target.exclude_conversation.clone().unwrap_or_default();
    let read = rehearsal::Read {
        snapshot: snap.as_ref().map_err(|e| e.to_string()),
        conversation_sid: &conversation_sid,
        acting_user: &p.acting.user,
        acting_source: p.acting.source,
        account_sid: &p.target.account_sid,
        refusal,
    };
    let (plan, restore, why_not) = rehearsal::judge(&read);
    let shown = Rehearsal {
        at: crate::store::now_rfc3339(),
        incident_id: incident.as_ref().map(|(id, _)| *id),
        service_sid: p.target.service_sid.clone(),
        conversation_sid,
        identity: String::new(),
        snapshot: snap.as_ref().ok().map(rehearsal::SnapshotSummary::of),
        plan,
        restore,
        acting: p.acting.user.clone(),
        would_complete: why_not.is_none(),
        why_not,
    }
    .shown(&rep.privacy(), &identity);
    if let Some((id, mut incident)) = incident {
        incident.detail = Some(match &shown.why_not {
            None => format!("{}; rehearsed: the repair would complete", p.refusal),
            Some(why) => format!("{}; rehearsed: the repair would fail: {why}", p.refusal),
        });
        incident.steps.append(&mut p.api.steps);
        rep.update_incident(id, incident, &identity).await;
    }
    rep.metrics.rehearsal(match shown.would_complete {
        true => RehearsalResult::WouldComplete,
        false => RehearsalResult::WouldFail,
    });
    rep.rehearsals.record(shown);
    drop(p.slot);
}
