//! Snapshots of the SQLite datastore (`rk3s etcd-snapshot` on the embedded datastore).
//!
//! A snapshot is a complete, compact SQLite database file written with `VACUUM INTO`:
//! one read transaction, so it holds exactly the writes committed before it started and
//! none after — a consistent cut at one revision, taken while the server keeps writing (in
//! WAL mode readers never block the writer). The file is written beside its final name,
//! flushed and renamed, so a crash never leaves a half-written snapshot under that name.
//!
//! Restoring replaces the database file (and its `-wal`/`-shm` companions) with a copy of
//! the snapshot after checking that it is an rk3s store; the replaced files are kept beside
//! it under a dated name, as k3s keeps the old etcd data directory on a cluster reset.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::db_err;
use crate::{Revision, StoreError};

/// What a snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The snapshot file.
    pub path: PathBuf,
    /// The store revision the snapshot is a cut at: every write up to it is in the file,
    /// none after it.
    pub revision: Revision,
    /// The file's size in bytes.
    pub size: u64,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("{what} {}: {e}", path.display()))
}

/// The revision of the store in `conn`: the newest row, or the autoincrement sequence when
/// compaction removed rows above it.
fn store_revision(conn: &Connection) -> Result<Revision, StoreError> {
    conn.query_row(
        "SELECT MAX(COALESCE((SELECT MAX(id) FROM kv), 0), \
         COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'kv'), 0))",
        [],
        |row| row.get(0),
    )
    .map_err(db_err)
}

/// Checks that `path` is an rk3s SQLite store that passes SQLite's quick integrity check;
/// returns its revision.
pub fn verify(path: &Path) -> Result<Revision, StoreError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |row| row.get(0))
        .map_err(|e| {
            StoreError::Backend(format!("{} is not an SQLite database: {e}", path.display()))
        })?;
    if check != "ok" {
        return Err(StoreError::Backend(format!(
            "{} is damaged: {check}",
            path.display()
        )));
    }
    let tables: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('kv', 'meta')",
            [],
            |row| row.get(0),
        )
        .map_err(db_err)?;
    if tables != 2 {
        return Err(StoreError::Backend(format!(
            "{} is not an rk3s datastore (no kv and meta tables)",
            path.display()
        )));
    }
    store_revision(&conn)
}

/// Writes a consistent snapshot of the store at `db` to `out` (which must not exist),
/// while the store may be open and written to by this or another process.
pub fn save(db: &Path, out: &Path) -> Result<SnapshotInfo, StoreError> {
    if out.exists() {
        return Err(StoreError::Backend(format!(
            "snapshot {} exists already",
            out.display()
        )));
    }
    if !db.exists() {
        return Err(StoreError::Backend(format!(
            "no datastore at {}",
            db.display()
        )));
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io_err("creating", dir, e))?;
    }
    let tmp = out.with_extension("partial");
    let _ = std::fs::remove_file(&tmp);
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(db_err)?;
    conn.busy_timeout(Duration::from_secs(30)).map_err(db_err)?;
    let target = tmp
        .to_str()
        .ok_or_else(|| StoreError::Backend(format!("{} is not UTF-8", tmp.display())))?;
    if let Err(e) = conn.execute("VACUUM INTO ?1", [target]) {
        let _ = std::fs::remove_file(&tmp);
        return Err(db_err(e));
    }
    drop(conn);
    let file = std::fs::File::open(&tmp).map_err(|e| io_err("opening", &tmp, e))?;
    file.sync_all().map_err(|e| io_err("flushing", &tmp, e))?;
    let size = file
        .metadata()
        .map_err(|e| io_err("reading", &tmp, e))?
        .len();
    let revision = match verify(&tmp) {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, out).map_err(|e| io_err("renaming to", out, e))?;
    sync_dir(out);
    Ok(SnapshotInfo {
        path: out.to_path_buf(),
        revision,
        size,
    })
}

/// Replaces the store at `db` (which must not be open) with the snapshot at `snapshot`;
/// the files it replaces are renamed to `<db>.old-<suffix>` (returned, when there were
/// any). Returns the restored revision.
pub fn restore(
    snapshot: &Path,
    db: &Path,
    suffix: &str,
) -> Result<(Revision, Option<PathBuf>), StoreError> {
    let revision = verify(snapshot)?;
    if let Some(dir) = db.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io_err("creating", dir, e))?;
    }
    let tmp = db.with_extension("restoring");
    std::fs::copy(snapshot, &tmp).map_err(|e| io_err("copying the snapshot to", &tmp, e))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_err("flushing", &tmp, e))?;
    let mut kept = None;
    for ext in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{ext}", db.display()));
        if from.exists() {
            let to = PathBuf::from(format!("{}.old-{suffix}{ext}", db.display()));
            std::fs::rename(&from, &to).map_err(|e| io_err("moving aside", &from, e))?;
            if ext.is_empty() {
                kept = Some(to);
            }
        }
    }
    std::fs::rename(&tmp, db).map_err(|e| io_err("renaming to", db, e))?;
    sync_dir(db);
    Ok((revision, kept))
}

/// Flushes the directory entry of `path` (best effort: a rename is durable once its
/// directory is).
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::SqliteStore;
    use crate::Store;

    #[tokio::test]
    async fn snapshot_is_a_cut_at_one_revision_and_restores() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("state.db");
        let store = SqliteStore::open(&db).expect("open");
        for i in 0..20 {
            store
                .create(&format!("/registry/a/{i}"), vec![b'x'; 100])
                .await
                .expect("create");
        }
        let snap = dir.path().join("snaps/s1");
        let info = save(&db, &snap).expect("save");
        assert_eq!(info.revision, 20);
        assert!(info.size > 0);
        assert!(
            save(&db, &snap).is_err(),
            "an existing snapshot is not overwritten"
        );
        // Writes after the snapshot are not in it.
        store
            .create("/registry/a/late", b"y".to_vec())
            .await
            .expect("create");
        drop(store);

        let (rev, kept) = restore(&snap, &db, "test").expect("restore");
        assert_eq!(rev, 20);
        assert!(kept.expect("old db kept").exists());
        let store = SqliteStore::open(&db).expect("reopen");
        assert_eq!(store.current_revision().await.expect("rev"), 20);
        let list = store
            .list("/registry/a/", Default::default())
            .await
            .expect("list");
        assert_eq!(list.items.len(), 20);
        assert!(store.get("/registry/a/late").await.expect("get").is_none());
        // The restored store goes on from the snapshot's revision.
        let kv = store
            .create("/registry/a/new", b"z".to_vec())
            .await
            .expect("create");
        assert_eq!(kv.mod_revision, 21);
    }

    #[test]
    fn refuses_what_is_not_a_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let junk = dir.path().join("junk");
        std::fs::write(&junk, b"not a database at all, just text").expect("write");
        assert!(verify(&junk).is_err());
        let other = dir.path().join("other.db");
        Connection::open(&other)
            .and_then(|c| c.execute_batch("CREATE TABLE t (x INTEGER);"))
            .expect("other db");
        let e = verify(&other).expect_err("not a store");
        assert!(e.to_string().contains("not an rk3s datastore"), "{e}");
        let db = dir.path().join("state.db");
        assert!(restore(&junk, &db, "x").is_err());
        assert!(!db.exists(), "a refused snapshot changes nothing");
    }
}
