//! Upgrades: a journal made before sqlx's migrator (versions recorded in a
//! `schema_version` table, no `_sqlx_migrations`) opens with every record
//! in place and is from then on migrated by sqlx.

use sqlx::{Connection, Executor};

use super::{Incident, NewRepair, RepairState, StepKind, StepRecord, Store, UserSnapshot};
use crate::config::Config;

/// The DDL of the old in-code migrations, verbatim (`{PK}` and `{BIGINT}`
/// per backend), as the code before the migrator applied it.
const OLD_MIGRATIONS: [&str; 2] = [
    "CREATE TABLE repairs (
        id {PK},
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        account_sid TEXT NOT NULL,
        credential_user TEXT NOT NULL,
        upstream TEXT NOT NULL,
        service_base TEXT NOT NULL,
        service_sid TEXT NOT NULL,
        identity TEXT NOT NULL,
        state TEXT NOT NULL,
        snapshot TEXT NOT NULL,
        webhook TEXT,
        note TEXT
    );
    CREATE INDEX repairs_state ON repairs(state);
    CREATE INDEX repairs_identity ON repairs(service_sid, identity, created_at);
    CREATE TABLE incidents (
        id {PK},
        at TEXT NOT NULL,
        account_sid TEXT,
        service_sid TEXT,
        conversation_sid TEXT NOT NULL,
        identity TEXT,
        outcome TEXT NOT NULL,
        detail TEXT,
        repair_id {BIGINT},
        steps TEXT NOT NULL
    );",
    "CREATE TABLE health (id INTEGER PRIMARY KEY, at TEXT NOT NULL)",
];

/// Build a journal the way the old code did, with one unfinished repair
/// and one incident in it.
async fn build_old_journal<C>(conn: &mut C, pk: &str, bigint: &str)
where
    for<'c> &'c mut C: Executor<'c>,
{
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .await
        .unwrap();
    for (i, m) in OLD_MIGRATIONS.iter().enumerate() {
        let m = m.replace("{PK}", pk).replace("{BIGINT}", bigint);
        let script = format!(
            "BEGIN; {m}; INSERT INTO schema_version (version) VALUES ({}); COMMIT;",
            i + 1
        );
        conn.execute(script.as_str()).await.unwrap();
    }
    let snapshot = serde_json::to_string(&UserSnapshot {
        user_sid: Some("US00000000000000000000000000000001".into()),
        identity: "kim".into(),
        friendly_name: Some("Kim K".into()),
        attributes: Some("{\"team\":\"blue\"}".into()),
        role_sid: None,
        memberships: vec![],
    })
    .unwrap();
    conn.execute(
        format!(
            "INSERT INTO repairs (created_at, updated_at, account_sid, credential_user, upstream,
               service_base, service_sid, identity, state, snapshot, webhook, note)
             VALUES ('2026-01-02T03:04:05Z', '2026-01-02T03:04:06Z', 'AC1', 'SK1',
               'https://conversations.twilio.com', '/v1', 'IS1', 'kim', 'recreating',
               '{snapshot}', NULL, 'from the old code')"
        )
        .as_str(),
    )
    .await
    .unwrap();
    conn.execute(
        "INSERT INTO incidents (at, account_sid, service_sid, conversation_sid, identity,
           outcome, detail, repair_id, steps)
         VALUES ('2026-01-02T03:04:07Z', 'AC1', 'IS1', 'CH1', 'kim', 'repaired', NULL, 1, '[]')",
    )
    .await
    .unwrap();
}

/// The old records read back, the migrator's table records versions 1
/// and 2, and new records land after the old ones.
async fn assert_adopted(store: &dyn Store, applied: Vec<i64>) {
    let pending = store.pending_repairs().await.unwrap();
    assert_eq!(
        pending.len(),
        1,
        "the unfinished repair survives the upgrade"
    );
    let r = &pending[0];
    assert_eq!((r.id, r.identity.as_str()), (1, "kim"));
    assert_eq!(r.state, RepairState::Recreating);
    assert_eq!(r.snapshot.friendly_name.as_deref(), Some("Kim K"));
    assert_eq!(r.note.as_deref(), Some("from the old code"));
    assert!(store.has_open_repair("kim").await.unwrap());
    let incidents = store.incidents(10).await.unwrap();
    assert_eq!(incidents.len(), 1);
    assert_eq!(incidents[0].repair_id, Some(1));
    assert_eq!(
        applied,
        vec![1, 2, 3, 4, 5],
        "sqlx's migrator adopted versions 1 and 2, then applied 3 to 5"
    );

    store.probe_write().await.unwrap();
    let id = store
        .insert_repair(&NewRepair {
            account_sid: "AC1".into(),
            credential_user: "SK1".into(),
            upstream: "https://conversations.twilio.com".into(),
            service_base: "/v1".into(),
            service_sid: "IS1".into(),
            identity: "lee".into(),
            snapshot: r.snapshot.clone(),
            webhook: Some("false".into()),
        })
        .await
        .unwrap();
    assert_eq!(id, 2);
    store
        .set_repair_state(
            1,
            RepairState::Recovered,
            Some("finished after the upgrade"),
        )
        .await
        .unwrap();
    let old = store.get_repair(1).await.unwrap().unwrap();
    assert_eq!(old.state, RepairState::Recovered);
    let new = store.get_repair(2).await.unwrap().unwrap();
    assert_eq!(new.webhook.as_deref(), Some("false"));
    // A re-snapshot: the new record written and the old one closed, in one
    // transaction.
    let fresh = NewRepair {
        identity: "ann".into(),
        ..NewRepair {
            account_sid: "AC1".into(),
            credential_user: "SK1".into(),
            upstream: "https://conversations.twilio.com".into(),
            service_base: "/v1".into(),
            service_sid: "IS1".into(),
            identity: String::new(),
            snapshot: r.snapshot.clone(),
            webhook: None,
        }
    };
    let stale = store.insert_repair(&fresh).await.unwrap();
    let third = store
        .supersede_repair(stale, "re-snapshotted as record", &fresh)
        .await
        .unwrap();
    let (old, new) = (
        store.get_repair(stale).await.unwrap().unwrap(),
        store.get_repair(third).await.unwrap().unwrap(),
    );
    assert_eq!(
        (old.state, old.note),
        (
            RepairState::Recovered,
            Some(format!("re-snapshotted as record {third}"))
        )
    );
    assert_eq!(
        (new.state, new.identity.as_str()),
        (RepairState::Deleting, "ann")
    );
    let incident = Incident {
        id: 0,
        at: super::now_rfc3339(),
        account_sid: None,
        service_sid: None,
        conversation_sid: "CH2".into(),
        identity: None,
        outcome: super::Outcome::Repaired,
        detail: None,
        repair_id: Some(2),
        steps: vec![StepRecord::bare(StepKind::DeleteUser, Some(204), true)],
        request_id: None,
    };
    assert_eq!(store.insert_incident(&incident).await.unwrap(), 2);
    // A rehearsal a stop cut: only the text's end is replaced (its `%` and
    // `_` are no pattern), only up to the given second.
    const UNDER_WAY: &str = "; rehearsal under way";
    let cut = Incident {
        detail: Some(format!("100%_ refused{UNDER_WAY}")),
        ..incident.clone()
    };
    let cut_id = store.insert_incident(&cut).await.unwrap();
    let later_id = store
        .insert_incident(&Incident {
            at: "2999-01-01T00:00:00Z".into(),
            ..cut.clone()
        })
        .await
        .unwrap();
    let other_id = store
        .insert_incident(&Incident {
            detail: Some(format!("{UNDER_WAY} and then")),
            ..incident.clone()
        })
        .await
        .unwrap();
    let until = super::now_rfc3339();
    assert_eq!(
        store
            .close_unfinished_rehearsals(&until, UNDER_WAY, "; cut short")
            .await
            .unwrap(),
        1
    );
    let detail = |id| async move { store.incident(id).await.unwrap().unwrap().detail.unwrap() };
    assert_eq!(detail(cut_id).await, "100%_ refused; cut short");
    assert_eq!(detail(later_id).await, format!("100%_ refused{UNDER_WAY}"));
    assert_eq!(detail(other_id).await, format!("{UNDER_WAY} and then"));
    assert_eq!(
        store
            .count_repairs_since("IS1", "lee", "2000-01-01T00:00:00Z")
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn an_sqlite_journal_from_before_the_migrator_keeps_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    let url = format!("sqlite://{}", path.display());
    {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let mut conn = sqlx::SqliteConnection::connect_with(&options)
            .await
            .unwrap();
        build_old_journal(&mut conn, "INTEGER PRIMARY KEY AUTOINCREMENT", "INTEGER").await;
        conn.close().await.unwrap();
    }
    let opts = Config::defaults().store_options;
    let applied = |store: &super::sqlite::SqliteStore| {
        let pool = store.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
            )
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    let store = super::sqlite::SqliteStore::open(&url, &opts).await.unwrap();
    assert_adopted(&store, applied(&store).await).await;
    drop(store);
    // A second start finds everything applied, checksums matching.
    let store = super::sqlite::SqliteStore::open(&url, &opts).await.unwrap();
    assert_eq!(applied(&store).await, vec![1, 2, 3, 4, 5]);
    let pending: Vec<i64> = store
        .pending_repairs()
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    // 2, and the re-snapshot (4) that closed 3.
    assert_eq!(pending, vec![2, 4]);
}

#[tokio::test]
async fn a_postgres_journal_from_before_the_migrator_keeps_its_records() {
    let Ok(admin) = std::env::var("TRP_TEST_PG_URL") else {
        eprintln!("skipped: TRP_TEST_PG_URL is not set (scripts/test.sh sets it)");
        return;
    };
    let name = format!("trp_upgrade_{}", rand::random::<u64>());
    let mut admin_conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    admin_conn
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
    {
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        build_old_journal(&mut conn, "BIGSERIAL PRIMARY KEY", "BIGINT").await;
        conn.close().await.unwrap();
    }
    let opts = Config::defaults().store_options;
    let store = super::postgres::PgStore::open(&url, &opts).await.unwrap();
    let applied = sqlx::query_scalar::<_, i64>(
        "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
    )
    .fetch_all(&store.pool)
    .await
    .unwrap();
    assert_adopted(store.as_ref(), applied).await;
    store.pool.close().await;
    drop(store);
    // A second start (another replica) finds everything applied.
    let store = super::postgres::PgStore::open(&url, &opts).await.unwrap();
    let pending: Vec<i64> = store
        .pending_repairs()
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    // 2, and the re-snapshot (4) that closed 3.
    assert_eq!(pending, vec![2, 4]);
    store.pool.close().await;
    drop(store);
    admin_conn
        .execute(format!("DROP DATABASE {name} WITH (FORCE)").as_str())
        .await
        .unwrap();
}

/// Replicas starting together on an empty database: every one opens, and
/// each migration is applied once (the migration lock serialises them).
#[tokio::test]
async fn postgres_replicas_starting_together_migrate_once() {
    let Ok(admin) = std::env::var("TRP_TEST_PG_URL") else {
        eprintln!("skipped: TRP_TEST_PG_URL is not set (scripts/test.sh sets it)");
        return;
    };
    let name = format!("trp_together_{}", rand::random::<u64>());
    let mut admin_conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    admin_conn
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
    let opts = Config::defaults().store_options;
    let opens = (0..4).map(|_| super::postgres::PgStore::open(&url, &opts));
    let stores = futures_util::future::join_all(opens).await;
    let stores: Vec<_> = stores.into_iter().map(Result::unwrap).collect();
    for s in &stores {
        s.ping()
            .await
            .expect("every replica has its schema in place");
    }
    let applied =
        sqlx::query_scalar::<_, i64>("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&stores[0].pool)
            .await
            .unwrap();
    assert_eq!(applied, vec![1, 2, 3, 4, 5]);
    for s in stores {
        s.pool.close().await;
    }
    admin_conn
        .execute(format!("DROP DATABASE {name} WITH (FORCE)").as_str())
        .await
        .unwrap();
}
