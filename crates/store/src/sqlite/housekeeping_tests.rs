//! Housekeeping: compaction hands free pages back, so the file shrinks after churn.

use super::SqliteStore;
use crate::Store;

fn file_size(path: &std::path::Path) -> u64 {
    let wal = std::path::PathBuf::from(format!("{}-wal", path.display()));
    std::fs::metadata(path).map_or(0, |m| m.len()) + std::fs::metadata(wal).map_or(0, |m| m.len())
}

#[tokio::test]
async fn the_file_shrinks_after_deletes_and_compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.db");
    let store = SqliteStore::open(&path).expect("open");
    let value = vec![b'v'; 8 << 10];
    for i in 0..600 {
        store
            .create(&format!("/registry/big/{i:04}"), value.clone())
            .await
            .expect("create");
    }
    for i in 0..600 {
        store
            .delete(&format!("/registry/big/{i:04}"), None)
            .await
            .expect("delete");
    }
    let full = std::fs::metadata(&path).expect("db").len();
    assert!(
        full > 4 << 20,
        "600 values of 8 KiB are in the file: {full}"
    );
    let rev = store.current_revision().await.expect("rev");
    store.compact(rev).await.expect("compact");
    // Pages are returned in bounded rounds; a few more compactions finish the job.
    for i in 0..4 {
        store
            .create(&format!("/registry/small/{i}"), b"x".to_vec())
            .await
            .expect("create");
        let rev = store.current_revision().await.expect("rev");
        store.compact(rev).await.expect("compact");
    }
    let after = std::fs::metadata(&path).expect("db").len();
    assert!(
        after < full / 4,
        "the database file shrank after compaction: {full} -> {after} bytes"
    );
    assert!(
        file_size(&path) < full,
        "the WAL did not take the freed space"
    );
}

#[tokio::test]
async fn an_older_store_is_converted_to_incremental_vacuum() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.db");
    {
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE old (x INTEGER);")
            .expect("old db");
        let av: i64 = conn
            .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
            .expect("pragma");
        assert_eq!(av, 0);
    }
    drop(SqliteStore::open(&path).expect("open"));
    let conn = rusqlite::Connection::open(&path).expect("reopen");
    let av: i64 = conn
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .expect("pragma");
    assert_eq!(av, 2, "incremental");
}
