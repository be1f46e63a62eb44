//! The SQLite datastore's schema version (`meta.schema_version`) and its migrations.
//!
//! A binary knows the schema versions up to [`SCHEMA_VERSION`]. On open it refuses a
//! store whose version is newer (written by a newer rk3s: its rows may mean something
//! this binary does not know), and upgrades an older store by running each missing
//! migration in order, each in its own transaction together with the new version
//! number, so a crash leaves the store at the last completed version.

use rusqlite::{Connection, OptionalExtension};

use crate::StoreError;

/// The newest schema version this binary reads and writes.
pub const SCHEMA_VERSION: i64 = 2;

/// One migration: the version it upgrades to and the SQL that does it.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The schema version after this migration.
    pub to: i64,
    /// What it does (logged).
    pub description: &'static str,
    /// The statements (empty for a marker that changes no table).
    pub sql: &'static str,
}

/// Every migration, in order; the last one's `to` is [`SCHEMA_VERSION`].
pub const MIGRATIONS: &[Migration] = &[Migration {
    to: 2,
    description: "version check: binaries from here on refuse newer stores",
    sql: "",
}];

/// The store's schema version: `None` for a file without the `meta` table (a new store).
pub fn stored_version(conn: &Connection) -> Result<Option<i64>, rusqlite::Error> {
    let has_meta: i64 = conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
        [],
        |row| row.get(0),
    )?;
    if has_meta == 0 {
        return Ok(None);
    }
    conn.query_row(
        "SELECT value FROM meta WHERE name = 'schema_version'",
        [],
        |row| row.get(0),
    )
    .optional()
}

/// The error for a store written by a newer binary.
pub fn too_new(stored: i64, supported: i64) -> StoreError {
    StoreError::Backend(format!(
        "the datastore was written by a newer rk3s (schema {stored}); this binary supports up to {supported}"
    ))
}

/// Fails when the store's version is newer than `supported` (before anything touches it);
/// else the store's version (`None`: a new store).
pub fn check_not_newer(conn: &Connection, supported: i64) -> Result<Option<i64>, StoreError> {
    match stored_version(conn).map_err(super::db_err)? {
        Some(v) if v > supported => Err(too_new(v, supported)),
        v => Ok(v),
    }
}

/// Records `version` as the store's (a new store is created at the current version: it
/// needs no migration).
pub fn set_version(conn: &Connection, version: i64) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO meta (name, value) VALUES ('schema_version', ?1) \
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        [version],
    )
    .map_err(super::db_err)?;
    Ok(())
}

/// Runs the migrations of `migrations` the store has not had, up to `target`; returns
/// the version the store is at afterwards. The `meta` table must exist.
pub fn migrate(
    conn: &mut Connection,
    migrations: &[Migration],
    target: i64,
) -> Result<i64, StoreError> {
    let mut version = stored_version(conn).map_err(super::db_err)?.unwrap_or(0);
    if version > target {
        return Err(too_new(version, target));
    }
    let start = version;
    for m in migrations.iter().filter(|m| m.to > start && m.to <= target) {
        tracing::info!(
            from = version,
            to = m.to,
            migration = m.description,
            "upgrading the datastore schema"
        );
        let tx = conn.transaction().map_err(super::db_err)?;
        if !m.sql.is_empty() {
            tx.execute_batch(m.sql).map_err(super::db_err)?;
        }
        tx.execute(
            "INSERT INTO meta (name, value) VALUES ('schema_version', ?1) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            [m.to],
        )
        .map_err(super::db_err)?;
        tx.commit().map_err(super::db_err)?;
        version = m.to;
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_at(dir: &std::path::Path, version: i64) -> std::path::PathBuf {
        let path = dir.join("state.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(super::super::SCHEMA).unwrap();
        conn.execute(
            "UPDATE meta SET value = ?1 WHERE name = 'schema_version'",
            [version],
        )
        .unwrap();
        path
    }

    #[test]
    fn migrations_end_at_the_current_version_in_order() {
        let last = MIGRATIONS.last().map(|m| m.to);
        assert_eq!(last, Some(SCHEMA_VERSION));
        assert!(MIGRATIONS.windows(2).all(|w| w[0].to < w[1].to));
    }

    #[test]
    fn an_older_store_is_upgraded_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_at(dir.path(), 1);
        drop(crate::sqlite::SqliteStore::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        assert_eq!(stored_version(&conn).unwrap(), Some(SCHEMA_VERSION));
    }

    #[test]
    fn a_new_store_starts_at_the_current_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        drop(crate::sqlite::SqliteStore::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        assert_eq!(stored_version(&conn).unwrap(), Some(SCHEMA_VERSION));
    }

    #[test]
    fn a_newer_store_is_refused_with_a_clear_message_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_at(dir.path(), SCHEMA_VERSION + 1);
        let err = crate::sqlite::SqliteStore::open(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "storage backend: the datastore was written by a newer rk3s (schema {}); this binary supports up to {SCHEMA_VERSION}",
                SCHEMA_VERSION + 1
            )
        );
        let conn = Connection::open(&path).unwrap();
        assert_eq!(stored_version(&conn).unwrap(), Some(SCHEMA_VERSION + 1));
    }

    #[test]
    fn migrations_run_in_order_and_only_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_at(dir.path(), 1);
        let mut conn = Connection::open(&path).unwrap();
        const TEST: &[Migration] = &[
            Migration {
                to: 2,
                description: "marker",
                sql: "",
            },
            Migration {
                to: 3,
                description: "a table",
                sql: "CREATE TABLE extra (n INTEGER); INSERT INTO extra VALUES (3);",
            },
            Migration {
                to: 4,
                description: "a row",
                sql: "INSERT INTO extra VALUES (4);",
            },
        ];
        assert_eq!(migrate(&mut conn, TEST, 3).unwrap(), 3);
        assert_eq!(stored_version(&conn).unwrap(), Some(3));
        assert_eq!(migrate(&mut conn, TEST, 4).unwrap(), 4);
        assert_eq!(migrate(&mut conn, TEST, 4).unwrap(), 4);
        let rows: Vec<i64> = conn
            .prepare("SELECT n FROM extra ORDER BY n")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows, [3, 4]);
        assert!(migrate(&mut conn, TEST, 3)
            .unwrap_err()
            .to_string()
            .contains("newer rk3s (schema 4); this binary supports up to 3"));
    }

    #[test]
    fn a_failed_migration_leaves_the_previous_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_at(dir.path(), 1);
        let mut conn = Connection::open(&path).unwrap();
        const BAD: &[Migration] = &[Migration {
            to: 2,
            description: "broken",
            sql: "CREATE TABLE t (n INTEGER); NOT SQL;",
        }];
        assert!(migrate(&mut conn, BAD, 2).is_err());
        assert_eq!(stored_version(&conn).unwrap(), Some(1));
        let t: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 't'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(t, 0);
    }
}
