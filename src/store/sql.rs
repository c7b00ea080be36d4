//! The journal's queries, written once for both backends.
//!
//! The SQL is the same on SQLite and PostgreSQL: `$N` placeholders (which
//! sqlx's SQLite driver binds by number too), `RETURNING id`, and
//! `ON CONFLICT … DO UPDATE` are understood by both. [`SqlStore`] runs it
//! over either pool; what differs between the backends lives in their
//! [`Backend`] (`sqlite.rs`: the locked journal file and its inode check;
//! `postgres.rs`: the lazy start, the `ready()` gate, the advisory locks)
//! and in their migration files.

use futures_util::future::BoxFuture;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Type};

use super::{
    Incident, IncidentFilter, LocalLock, NewRepair, Outcome, RepairRecord, RepairState, RowExt,
    SidAlias, Store, StoreError, StoreLock, alias_from_row, incident_from_row, now_rfc3339,
    repair_from_row,
};

/// What one backend adds around the shared queries.
pub trait Backend: Send + Sync + 'static {
    type Db: Database;

    /// Before any statement (PostgreSQL: the schema is in place).
    fn before_statement(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Before a journal write, after [`Backend::before_statement`]
    /// (SQLite: the path still names the file opened at start-up).
    fn before_write(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// See [`Store::shared`].
    fn shared(&self) -> bool {
        false
    }

    /// See [`Store::try_lock`]; the default is the in-process lock only.
    fn try_lock<'a>(
        &'a self,
        _key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Box<dyn StoreLock>>, StoreError>> {
        Box::pin(async { Ok(Some(Box::new(LocalLock) as Box<dyn StoreLock>)) })
    }
}

/// A journal on one backend: its pool and its specifics.
pub struct SqlStore<B: Backend> {
    pub(super) pool: Pool<B::Db>,
    pub(super) backend: B,
}

impl<B: Backend> SqlStore<B> {
    fn read(&self) -> Result<(), StoreError> {
        self.backend.before_statement()
    }

    fn write(&self) -> Result<(), StoreError> {
        self.backend.before_statement()?;
        self.backend.before_write()
    }
}

/// `$1, $2, …, $n` shifted by `from`: a bind list for `IN (…)`.
fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl<B, Db> SqlStore<B>
where
    B: Backend<Db = Db>,
    Db: Database,
    for<'c> &'c mut Db::Connection: Executor<'c, Database = Db>,
    for<'q> Db::Arguments<'q>: IntoArguments<'q, Db>,
    for<'q> &'q str: Encode<'q, Db> + Type<Db>,
    for<'q> String: Encode<'q, Db> + Decode<'q, Db> + Type<Db>,
    for<'q> i64: Encode<'q, Db> + Decode<'q, Db> + Type<Db>,
    for<'q> Option<&'q str>: Encode<'q, Db>,
    for<'q> Option<i64>: Encode<'q, Db>,
    for<'c> &'c str: ColumnIndex<Db::Row>,
    usize: ColumnIndex<Db::Row>,
{
    /// Insert a new record in `deleting` on `conn` (the pool's, or a
    /// transaction's); its id.
    async fn insert_on(conn: &mut Db::Connection, r: &NewRepair) -> Result<i64, StoreError> {
        let now = now_rfc3339();
        let snapshot = serde_json::to_string(&r.snapshot).unwrap_or_default();
        let id = sqlx::query_scalar::<_, i64>(
            "INSERT INTO repairs (created_at, updated_at, account_sid, credential_user, upstream,
               service_base, service_sid, identity, state, snapshot, webhook)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
        )
        .bind(now.as_str())
        .bind(now.as_str())
        .bind(r.account_sid.as_str())
        .bind(r.credential_user.as_str())
        .bind(r.upstream.as_str())
        .bind(r.service_base.as_str())
        .bind(r.service_sid.as_str())
        .bind(r.identity.as_str())
        .bind(RepairState::Deleting.as_str())
        .bind(snapshot)
        .bind(r.webhook.as_deref())
        .fetch_one(&mut *conn)
        .await?;
        Ok(id)
    }
}

impl<B, Db> Store for SqlStore<B>
where
    B: Backend<Db = Db>,
    Db: Database,
    for<'c> &'c mut Db::Connection: Executor<'c, Database = Db>,
    for<'q> Db::Arguments<'q>: IntoArguments<'q, Db>,
    for<'q> &'q str: Encode<'q, Db> + Type<Db>,
    for<'q> String: Encode<'q, Db> + Decode<'q, Db> + Type<Db>,
    for<'q> i64: Encode<'q, Db> + Decode<'q, Db> + Type<Db>,
    for<'q> Option<&'q str>: Encode<'q, Db>,
    for<'q> Option<i64>: Encode<'q, Db>,
    for<'c> &'c str: ColumnIndex<Db::Row>,
    usize: ColumnIndex<Db::Row>,
{
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.read()?;
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            Ok(())
        })
    }

    fn probe_write(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.write()?;
            sqlx::query(
                "INSERT INTO health (id, at) VALUES (1, $1)
                 ON CONFLICT (id) DO UPDATE SET at = EXCLUDED.at",
            )
            .bind(now_rfc3339())
            .execute(&self.pool)
            .await?;
            Ok(())
        })
    }

    fn has_open_repair<'a>(&'a self, identity: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            self.read()?;
            let states: Vec<&str> = RepairState::ALL
                .into_iter()
                .filter(|s| s.is_open())
                .map(RepairState::as_str)
                .collect();
            let sql = format!(
                "SELECT COUNT(*) FROM repairs WHERE identity = $1 AND state IN ({})",
                placeholders(2, states.len())
            );
            let mut q = sqlx::query_scalar::<_, i64>(&sql).bind(identity);
            for s in states {
                q = q.bind(s);
            }
            if q.fetch_one(&self.pool).await? > 0 {
                return Ok(true);
            }
            let fenced: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM fences WHERE identity = $1 AND until > $2",
            )
            .bind(identity)
            .bind(now_rfc3339())
            .fetch_one(&self.pool)
            .await?;
            Ok(fenced > 0)
        })
    }

    fn raise_fence<'a>(
        &'a self,
        identity: &'a str,
        until: &'a str,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(async move {
            self.write()?;
            // Rows whose holder died are only clutter past their `until`.
            sqlx::query("DELETE FROM fences WHERE until <= $1")
                .bind(now_rfc3339())
                .execute(&self.pool)
                .await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO fences (identity, until) VALUES ($1, $2) RETURNING id",
            )
            .bind(identity)
            .bind(until)
            .fetch_one(&self.pool)
            .await?;
            Ok(id)
        })
    }

    fn lower_fence(&self, id: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.write()?;
            sqlx::query("DELETE FROM fences WHERE id = $1")
                .bind(id)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }

    fn shared(&self) -> bool {
        self.backend.shared()
    }

    fn try_lock<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Box<dyn StoreLock>>, StoreError>> {
        self.backend.try_lock(key)
    }

    fn insert_repair<'a>(&'a self, r: &'a NewRepair) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(async move {
            self.write()?;
            let mut conn = self.pool.acquire().await?;
            Self::insert_on(&mut conn, r).await
        })
    }

    fn supersede_repair<'a>(
        &'a self,
        old: i64,
        note: &'a str,
        new: &'a NewRepair,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(async move {
            self.write()?;
            let mut tx = self.pool.begin().await?;
            let id = Self::insert_on(&mut tx, new).await?;
            sqlx::query("UPDATE repairs SET state = $1, updated_at = $2, note = $3 WHERE id = $4")
                .bind(RepairState::Recovered.as_str())
                .bind(now_rfc3339())
                .bind(format!("{note} {id}"))
                .bind(old)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(id)
        })
    }

    fn set_repair_state<'a>(
        &'a self,
        id: i64,
        state: RepairState,
        note: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.write()?;
            sqlx::query(
                "UPDATE repairs SET state = $1, updated_at = $2, note = COALESCE($3, note)
                 WHERE id = $4",
            )
            .bind(state.as_str())
            .bind(now_rfc3339())
            .bind(note)
            .bind(id)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
    }

    fn get_repair(&self, id: i64) -> BoxFuture<'_, Result<Option<RepairRecord>, StoreError>> {
        Box::pin(async move {
            self.read()?;
            let row = sqlx::query("SELECT * FROM repairs WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map(repair_from_row).transpose()
        })
    }

    fn pending_repairs(&self) -> BoxFuture<'_, Result<Vec<RepairRecord>, StoreError>> {
        Box::pin(async move {
            self.read()?;
            let finals: Vec<&str> = RepairState::finals().collect();
            let sql = format!(
                "SELECT * FROM repairs WHERE state NOT IN ({}) ORDER BY id",
                placeholders(1, finals.len())
            );
            let mut q = sqlx::query(&sql);
            for s in finals {
                q = q.bind(s);
            }
            let rows = q.fetch_all(&self.pool).await?;
            rows.iter().map(repair_from_row).collect()
        })
    }

    fn count_repairs_since<'a>(
        &'a self,
        service_sid: &'a str,
        identity: &'a str,
        since: &'a str,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(async move {
            self.read()?;
            let n = sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM repairs
                 WHERE service_sid = $1 AND identity = $2 AND created_at >= $3",
            )
            .bind(service_sid)
            .bind(identity)
            .bind(since)
            .fetch_one(&self.pool)
            .await?;
            Ok(n)
        })
    }

    fn insert_incident<'a>(&'a self, i: &'a Incident) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(async move {
            self.write()?;
            let steps = serde_json::to_string(&i.steps).unwrap_or_else(|_| "[]".into());
            let id = sqlx::query_scalar::<_, i64>(
                "INSERT INTO incidents (at, account_sid, service_sid, conversation_sid, identity,
                   outcome, detail, repair_id, steps, request_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 RETURNING id",
            )
            .bind(i.at.as_str())
            .bind(i.account_sid.as_deref())
            .bind(i.service_sid.as_deref())
            .bind(i.conversation_sid.as_str())
            .bind(i.identity.as_deref())
            .bind(i.outcome.as_str())
            .bind(i.detail.as_deref())
            .bind(i.repair_id)
            .bind(steps)
            .bind(i.request_id.as_deref())
            .fetch_one(&self.pool)
            .await?;
            Ok(id)
        })
    }

    fn update_incident<'a>(
        &'a self,
        id: i64,
        i: &'a Incident,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.write()?;
            let steps = serde_json::to_string(&i.steps).unwrap_or_else(|_| "[]".into());
            sqlx::query("UPDATE incidents SET detail = $1, steps = $2 WHERE id = $3")
                .bind(i.detail.as_deref())
                .bind(steps)
                .bind(id)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }

    fn close_unfinished_rehearsals<'a>(
        &'a self,
        until: &'a str,
        under_way: &'a str,
        cut: &'a str,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            self.write()?;
            // A suffix compare (not LIKE: the text is data, its `%` or `_`
            // no pattern); both engines have SUBSTR, LENGTH and ||.
            let done = sqlx::query_scalar::<_, i64>(
                "UPDATE incidents
                 SET detail = SUBSTR(detail, 1, LENGTH(detail) - LENGTH(CAST($2 AS TEXT)))
                              || CAST($3 AS TEXT)
                 WHERE at <= $1 AND LENGTH(detail) >= LENGTH(CAST($2 AS TEXT))
                   AND SUBSTR(detail, LENGTH(detail) - LENGTH(CAST($2 AS TEXT)) + 1)
                       = CAST($2 AS TEXT)
                 RETURNING id",
            )
            .bind(until)
            .bind(under_way)
            .bind(cut)
            .fetch_all(&self.pool)
            .await?;
            Ok(done.len() as u64)
        })
    }

    fn insert_alias<'a>(&'a self, a: &'a SidAlias) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.write()?;
            sqlx::query(
                "INSERT INTO sid_aliases (created_at, repair_id, account_sid, service_sid,
                   service_base, conversation_sid, old_sid, new_sid)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (account_sid, old_sid, new_sid) DO NOTHING",
            )
            .bind(a.created_at.as_str())
            .bind(a.repair_id)
            .bind(a.account_sid.as_str())
            .bind(a.service_sid.as_str())
            .bind(a.service_base.as_str())
            .bind(a.conversation_sid.as_deref())
            .bind(a.old_sid.as_str())
            .bind(a.new_sid.as_str())
            .execute(&self.pool)
            .await?;
            Ok(())
        })
    }

    fn find_alias<'a>(
        &'a self,
        account_sid: &'a str,
        old_sid: &'a str,
        since: &'a str,
    ) -> BoxFuture<'a, Result<Option<SidAlias>, StoreError>> {
        Box::pin(async move {
            self.read()?;
            let row = sqlx::query(
                "SELECT a.* FROM sid_aliases a JOIN repairs r ON r.id = a.repair_id
                  WHERE a.account_sid = $1 AND a.old_sid = $2 AND a.created_at >= $3
                    AND r.state = 'done'
                  ORDER BY a.id DESC LIMIT 1",
            )
            .bind(account_sid)
            .bind(old_sid)
            .bind(since)
            .fetch_optional(&self.pool)
            .await?;
            row.as_ref().map(alias_from_row).transpose()
        })
    }

    fn alias_old_sids<'a>(
        &'a self,
        since: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        Box::pin(async move {
            self.read()?;
            Ok(sqlx::query_scalar::<_, String>(
                "SELECT DISTINCT old_sid FROM sid_aliases WHERE created_at >= $1",
            )
            .bind(since)
            .fetch_all(&self.pool)
            .await?)
        })
    }

    fn repair_aliases(&self, repair_id: i64) -> BoxFuture<'_, Result<Vec<SidAlias>, StoreError>> {
        Box::pin(async move {
            self.read()?;
            let rows = sqlx::query("SELECT * FROM sid_aliases WHERE repair_id = $1 ORDER BY id")
                .bind(repair_id)
                .fetch_all(&self.pool)
                .await?;
            rows.iter().map(alias_from_row).collect()
        })
    }

    fn incidents(&self, limit: i64) -> BoxFuture<'_, Result<Vec<Incident>, StoreError>> {
        Box::pin(async move {
            self.read()?;
            let rows = sqlx::query("SELECT * FROM incidents ORDER BY id DESC LIMIT $1")
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
            rows.iter().map(incident_from_row).collect()
        })
    }

    fn incident(&self, id: i64) -> BoxFuture<'_, Result<Option<Incident>, StoreError>> {
        Box::pin(async move {
            self.read()?;
            let row = sqlx::query("SELECT * FROM incidents WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map(incident_from_row).transpose()
        })
    }

    fn find_incidents<'a>(
        &'a self,
        f: &'a IncidentFilter,
    ) -> BoxFuture<'a, Result<Vec<Incident>, StoreError>> {
        Box::pin(async move {
            self.read()?;
            // Built from fixed fragments only; every value is bound.
            let mut clauses = Vec::new();
            let mut n = 0;
            let mut next = || {
                n += 1;
                format!("${n}")
            };
            if f.outcome.is_some() {
                clauses.push(format!("outcome = {}", next()));
            }
            if f.service_sid.is_some() {
                clauses.push(format!("service_sid = {}", next()));
            }
            if !f.identities.is_empty() {
                let list: Vec<String> = f.identities.iter().map(|_| next()).collect();
                clauses.push(format!("identity IN ({})", list.join(", ")));
            }
            let filter = if clauses.is_empty() {
                String::new()
            } else {
                format!("WHERE {}", clauses.join(" AND "))
            };
            let (limit, offset) = (next(), next());
            let sql = format!(
                "SELECT * FROM incidents {filter} ORDER BY id DESC LIMIT {limit} OFFSET {offset}"
            );
            let mut q = sqlx::query(&sql);
            if let Some(o) = f.outcome {
                q = q.bind(o.as_str());
            }
            if let Some(s) = &f.service_sid {
                q = q.bind(s.as_str());
            }
            for i in &f.identities {
                q = q.bind(i.as_str());
            }
            let rows = q.bind(f.limit).bind(f.offset).fetch_all(&self.pool).await?;
            rows.iter().map(incident_from_row).collect()
        })
    }

    fn outcome_counts<'a>(
        &'a self,
        since: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(Outcome, i64)>, StoreError>> {
        Box::pin(async move {
            self.read()?;
            let rows = sqlx::query(
                "SELECT outcome, COUNT(*) AS n FROM incidents WHERE at >= $1 GROUP BY outcome",
            )
            .bind(since)
            .fetch_all(&self.pool)
            .await?;
            let mut out = Vec::new();
            for row in &rows {
                let name = row.text("outcome")?;
                // An outcome this build does not know is left out of the sum.
                if let Some(o) = Outcome::parse(&name) {
                    out.push((o, row.int("n")?));
                }
            }
            Ok(out)
        })
    }
}
