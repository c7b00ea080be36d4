//! The schema migrations of both backends: the SQL files under
//! `migrations/sqlite/` and `migrations/postgres/`, embedded in the binary
//! at compile time and applied in order by sqlx's migrator (which records
//! each in its `_sqlx_migrations` table with a checksum).
//!
//! The files are listed here by hand rather than through `sqlx::migrate!`:
//! that macro needs sqlx's proc-macro crate (a second build of sqlx and
//! SQLite for the host) for what is a list of `include_str!`s. A unit test
//! checks that the list and the directories agree.
//!
//! An applied migration is never edited (its checksum is on record in
//! every journal): a schema change is a new file in both directories.
//!
//! Journals made before the migrator recorded their versions in a
//! `schema_version` table. Migrations 1 and 2 are idempotent
//! (`IF NOT EXISTS`), so on such a journal they change nothing and are
//! recorded as applied; `schema_version` is left in place, unused.

use std::borrow::Cow;

use futures_util::future::BoxFuture;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

/// One migration file: version, description (as sqlx spells it from the
/// file name), SQL.
type File = (i64, &'static str, &'static str);

/// The SQLite journal's migrations, in order.
pub(crate) const SQLITE: &[File] = &[
    (
        1,
        "journal and incidents",
        include_str!("../../migrations/sqlite/0001_journal_and_incidents.sql"),
    ),
    (
        2,
        "health",
        include_str!("../../migrations/sqlite/0002_health.sql"),
    ),
    (
        3,
        "fences",
        include_str!("../../migrations/sqlite/0003_fences.sql"),
    ),
    (
        4,
        "incident request id",
        include_str!("../../migrations/sqlite/0004_incident_request_id.sql"),
    ),
    (
        5,
        "sid aliases",
        include_str!("../../migrations/sqlite/0005_sid_aliases.sql"),
    ),
];

/// The PostgreSQL journal's migrations, in order.
pub(crate) const POSTGRES: &[File] = &[
    (
        1,
        "journal and incidents",
        include_str!("../../migrations/postgres/0001_journal_and_incidents.sql"),
    ),
    (
        2,
        "health",
        include_str!("../../migrations/postgres/0002_health.sql"),
    ),
    (
        3,
        "fences",
        include_str!("../../migrations/postgres/0003_fences.sql"),
    ),
    (
        4,
        "incident request id",
        include_str!("../../migrations/postgres/0004_incident_request_id.sql"),
    ),
    (
        5,
        "sid aliases",
        include_str!("../../migrations/postgres/0005_sid_aliases.sql"),
    ),
];

/// A migration list embedded in the binary, as a source for sqlx's migrator.
#[derive(Debug)]
struct Embedded(&'static [File]);

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|&(version, description, sql)| {
                    Migration::new(
                        version,
                        Cow::Borrowed(description),
                        MigrationType::Simple,
                        Cow::Borrowed(sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// The migrator for one backend's list.
pub(crate) async fn migrator(
    files: &'static [File],
) -> Result<Migrator, sqlx::migrate::MigrateError> {
    Migrator::new(Embedded(files)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file in `migrations/<backend>/` is embedded, in version order,
    /// and both backends have the same versions.
    #[test]
    fn the_embedded_lists_match_the_migration_directories() {
        for (dir, files) in [("sqlite", SQLITE), ("postgres", POSTGRES)] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(dir);
            let mut names: Vec<String> = std::fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.ends_with(".sql"))
                .collect();
            names.sort();
            let listed: Vec<String> = files
                .iter()
                .map(|(v, d, _)| format!("{v:04}_{}.sql", d.replace(' ', "_")))
                .collect();
            assert_eq!(names, listed, "migrations/{dir}/ and migrations.rs differ");
            for (name, (_, _, sql)) in names.iter().zip(files.iter()) {
                assert_eq!(
                    std::fs::read_to_string(path.join(name)).unwrap(),
                    *sql,
                    "{dir}/{name}"
                );
            }
        }
        let versions = |f: &[File]| f.iter().map(|m| m.0).collect::<Vec<_>>();
        assert_eq!(versions(SQLITE), versions(POSTGRES));
    }
}
