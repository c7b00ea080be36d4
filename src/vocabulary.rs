//! The repair's vocabulary: what an intercepted create came to
//! ([`Outcome`]), where a journaled repair stands ([`RepairState`]) and
//! which Twilio call a workflow step makes ([`StepKind`]).
//!
//! A leaf module: the workflow, the journal, the metrics and the admin
//! plane all speak these types, so none of them spells a state or an
//! outcome by hand. The wire names (`kebab-case`) are what the journal
//! stores, what `/incidents` and `/repairs` show and what the docs list;
//! they change only with a journal migration.

use serde::{Deserialize, Serialize};

/// What an intercepted create came to; the `X-Repair-Outcome` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The create had landed after all (the "ghost" case): Twilio's own
    /// participant, answered 201; or Twilio's own 409 when it says the
    /// participant exists but no read showed it within the read-lag grace.
    Existing,
    /// The User was repaired and the create replayed.
    Repaired,
    /// The 404 was true (missing conversation or service): passed through.
    Genuine,
    /// Something did not work out; the original 404 (or a 201 the checks
    /// proved) went back, and the incident says why.
    Failed,
    /// The workflow was not allowed to act (mode, service lists, loop
    /// guard, journal down, an ambiguous request).
    Disabled,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Existing,
        Outcome::Repaired,
        Outcome::Genuine,
        Outcome::Failed,
        Outcome::Disabled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Existing => "existing",
            Outcome::Repaired => "repaired",
            Outcome::Genuine => "genuine",
            Outcome::Failed => "failed",
            Outcome::Disabled => "disabled",
        }
    }

    /// Position in [`Outcome::ALL`] (metrics index their counters by it).
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a journaled repair stands. Each state is written *before* the
/// step it names (write-ahead), and each names the recovery action that is
/// safe to run again after a crash at any point inside it:
///
/// | state | written before | recovery action (idempotent, verified) |
/// |---|---|---|
/// | `deleting` | the User `DELETE` (by its SID) | read the original SID: gone → as `recreating` (no second `DELETE`); still there → snapshot it afresh into a new record (written in one transaction with this one's close) and delete it, unless a late delete lands meanwhile (the journaled snapshot then stays in force); no SID → nothing to delete; then as `recreating` |
/// | `recreating` | the User create | ensure a User whose friendly name, attributes and role equal the snapshot: create it, update a bare one in place, or delete the original SID again if it is still there |
/// | `restoring` | the membership restores | ensure every snapshot membership exists with its attributes and role |
/// | `replaying` | the caller's create is replayed | nothing: the create is the caller's to retry |
/// | `done` | | final: closed by the workflow after reading back every step |
/// | `recovered` | | final: closed by recovery after reading back every step |
/// | `needs-operator` | | Twilio refused a step for good (e.g. a 400; a 401/403 is not, as another credential may act); never converged again, shown on `/repairs` |
/// | `abandoned` | | final: an operator gave up on the record (`POST /repairs/{id}/abandon` on the admin plane) |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RepairState {
    Deleting,
    Recreating,
    Restoring,
    Replaying,
    Done,
    Recovered,
    NeedsOperator,
    Abandoned,
}

impl RepairState {
    pub const ALL: [RepairState; 8] = [
        RepairState::Deleting,
        RepairState::Recreating,
        RepairState::Restoring,
        RepairState::Replaying,
        RepairState::Done,
        RepairState::Recovered,
        RepairState::NeedsOperator,
        RepairState::Abandoned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RepairState::Deleting => "deleting",
            RepairState::Recreating => "recreating",
            RepairState::Restoring => "restoring",
            RepairState::Replaying => "replaying",
            RepairState::Done => "done",
            RepairState::Recovered => "recovered",
            RepairState::NeedsOperator => "needs-operator",
            RepairState::Abandoned => "abandoned",
        }
    }

    pub fn parse(s: &str) -> Option<RepairState> {
        RepairState::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// Finished: recovery never looks at it again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RepairState::Done | RepairState::Recovered | RepairState::Abandoned
        )
    }

    /// The User may be deleted or not yet back: the identity is fenced
    /// and recovery completes the record.
    pub fn is_open(self) -> bool {
        !self.is_final() && self != RepairState::NeedsOperator
    }

    /// The final states, as the journal spells them (for SQL).
    pub fn finals() -> impl Iterator<Item = &'static str> {
        RepairState::ALL
            .into_iter()
            .filter(|s| s.is_final())
            .map(RepairState::as_str)
    }
}

impl std::fmt::Display for RepairState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The Twilio calls a workflow makes, as shown in an incident's steps.
/// The rules for each (method, what counts as an answer, whether a retry
/// is safe) live on `crate::repair::step`'s `StepKind` methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepKind {
    /// `GET .../Participants/{identity}`: did the create land?
    FetchParticipant,
    /// `GET .../Participants?PageSize=100`: a messaging binding's participant.
    ListParticipants,
    /// `GET .../Conversations/{CH}`: is the 404 genuine?
    FetchConversation,
    /// `POST .../Participants` once more under the lock.
    RetryCreate,
    /// `GET .../Users/{identity}`: snapshot and read-back.
    FetchUser,
    /// `GET .../Users/{identity}/Conversations`: the memberships to keep.
    ListUserConversations,
    /// `GET .../Participants/{MB}`: one membership's fields.
    FetchMembership,
    /// `DELETE .../Users/{US}`: the workaround's delete, by SID.
    DeleteUser,
    /// `POST .../Users`: the workaround's recreate.
    CreateUser,
    /// `POST .../Users/{US}`: a bare or changed User put back in place.
    UpdateUser,
    /// `GET .../Participants/{identity}` of a membership being restored.
    CheckMembership,
    /// `POST .../Participants`: a membership the delete removed.
    RestoreMembership,
    /// `POST .../Participants/{MB}`: a membership's fields put back.
    UpdateMembership,
    /// `POST .../Participants`: the caller's create, replayed.
    ReplayCreate,
}

impl StepKind {
    /// Every step, in workflow order (the metrics start a series for each).
    pub const ALL: [StepKind; 14] = [
        StepKind::FetchParticipant,
        StepKind::ListParticipants,
        StepKind::FetchConversation,
        StepKind::RetryCreate,
        StepKind::FetchUser,
        StepKind::ListUserConversations,
        StepKind::FetchMembership,
        StepKind::DeleteUser,
        StepKind::CreateUser,
        StepKind::UpdateUser,
        StepKind::CheckMembership,
        StepKind::RestoreMembership,
        StepKind::UpdateMembership,
        StepKind::ReplayCreate,
    ];

    /// The wire (serde) name.
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::FetchParticipant => "fetch-participant",
            StepKind::ListParticipants => "list-participants",
            StepKind::FetchConversation => "fetch-conversation",
            StepKind::RetryCreate => "retry-create",
            StepKind::FetchUser => "fetch-user",
            StepKind::ListUserConversations => "list-user-conversations",
            StepKind::FetchMembership => "fetch-membership",
            StepKind::DeleteUser => "delete-user",
            StepKind::CreateUser => "create-user",
            StepKind::UpdateUser => "update-user",
            StepKind::CheckMembership => "check-membership",
            StepKind::RestoreMembership => "restore-membership",
            StepKind::UpdateMembership => "update-membership",
            StepKind::ReplayCreate => "replay-create",
        }
    }
}

impl std::fmt::Display for StepKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip_through_serde_and_parse() {
        for o in Outcome::ALL {
            let j = serde_json::to_string(&o).unwrap();
            assert_eq!(j, format!("\"{}\"", o.as_str()));
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
            assert_eq!(Outcome::ALL[o.index()], o);
        }
        for s in RepairState::ALL {
            let j = serde_json::to_string(&s).unwrap();
            assert_eq!(j, format!("\"{}\"", s.as_str()));
            assert_eq!(RepairState::parse(s.as_str()), Some(s));
        }
        let distinct: std::collections::HashSet<_> = StepKind::ALL.into_iter().collect();
        assert_eq!(distinct.len(), StepKind::ALL.len(), "a step listed twice");
        for k in StepKind::ALL {
            let j = serde_json::to_string(&k).unwrap();
            assert_eq!(j, format!("\"{k}\""));
            assert_eq!(serde_json::from_str::<StepKind>(&j).unwrap(), k);
        }
    }

    #[test]
    fn only_done_recovered_and_abandoned_are_final() {
        let finals: Vec<_> = RepairState::finals().collect();
        assert_eq!(finals, ["done", "recovered", "abandoned"]);
        assert!(!RepairState::NeedsOperator.is_open());
        assert!(RepairState::Deleting.is_open());
    }
}
