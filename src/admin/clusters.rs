//! The clustering of affected identities by their User's creation date
//! that the support bundle ([`super::bundle`]), the incidents page
//! ([`super::ui`]) and `incidents export --format clusters` show. A leaf of
//! the admin plane: it reads incidents and knows nothing of pages or
//! bundles, so each of them can use it without pointing at the other.

use std::collections::{BTreeMap, BTreeSet};

use crate::store::{Incident, Outcome};

/// Newest incidents the clustering by User creation date looks at.
pub const CLUSTER_WINDOW: i64 = 1000;

/// Identities affected on one User creation day.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Cluster {
    /// `YYYY-MM-DD` of the User's `date_created`, or `unknown` when the
    /// workflow did not read the User (it stopped before its snapshot).
    pub user_created_on: String,
    /// Distinct identities (as shown: hashed with "hash").
    pub identities: usize,
    pub incidents: usize,
}

/// The label of incidents whose User's creation date was not read.
pub const UNKNOWN_DAY: &str = "unknown";

/// Group the incidents of the fault (every outcome but `genuine`, whose
/// 404 was true) by the day their User was created, most identities first.
pub fn clusters(incidents: &[Incident]) -> Vec<Cluster> {
    let mut days: BTreeMap<String, (BTreeSet<String>, usize)> = BTreeMap::new();
    for i in incidents.iter().filter(|i| i.outcome != Outcome::Genuine) {
        let day = i
            .user_date_created()
            .and_then(|d| d.get(..10))
            .unwrap_or(UNKNOWN_DAY)
            .to_string();
        let e = days.entry(day).or_default();
        e.0.insert(i.identity.clone().unwrap_or_default());
        e.1 += 1;
    }
    let mut out: Vec<Cluster> = days
        .into_iter()
        .map(|(day, (ids, n))| Cluster {
            user_created_on: day,
            identities: ids.len(),
            incidents: n,
        })
        .collect();
    out.sort_by(|a, b| {
        (b.identities, b.incidents)
            .cmp(&(a.identities, a.incidents))
            .then_with(|| a.user_created_on.cmp(&b.user_created_on))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{StepKind, StepRecord};

    fn incident(identity: &str, outcome: Outcome, created: Option<&str>) -> Incident {
        let mut fetch = StepRecord::bare(StepKind::FetchUser, Some(200), true);
        fetch.date_created = created.map(str::to_string);
        Incident {
            id: 1,
            at: "2025-01-01T00:00:00Z".into(),
            account_sid: None,
            service_sid: None,
            conversation_sid: "CH1".into(),
            identity: Some(identity.into()),
            outcome,
            detail: None,
            repair_id: None,
            steps: vec![fetch],
            request_id: None,
        }
    }

    #[test]
    fn identities_cluster_by_the_day_their_user_was_created() {
        let list = [
            incident("a", Outcome::Repaired, Some("2024-05-01T10:00:00Z")),
            incident("a", Outcome::Repaired, Some("2024-05-01T10:00:00Z")),
            incident("b", Outcome::Failed, Some("2024-05-01T23:59:59Z")),
            incident("c", Outcome::Repaired, Some("2024-06-02T00:00:00Z")),
            incident("d", Outcome::Genuine, Some("2024-06-02T00:00:00Z")),
            incident("e", Outcome::Existing, None),
        ];
        let c = clusters(&list);
        assert_eq!(
            c,
            vec![
                Cluster {
                    user_created_on: "2024-05-01".into(),
                    identities: 2,
                    incidents: 3
                },
                Cluster {
                    user_created_on: "2024-06-02".into(),
                    identities: 1,
                    incidents: 1
                },
                Cluster {
                    user_created_on: UNKNOWN_DAY.into(),
                    identities: 1,
                    incidents: 1
                },
            ]
        );
    }
}
