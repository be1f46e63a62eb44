use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::*;

fn open_temp() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("state.db")).expect("open store");
    (dir, store)
}

async fn next_event(stream: &mut WatchStream) -> Result<Event, StoreError> {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("watch event within 10s")
        .expect("watch stream still open")
}

/// Asserts no event arrives within a short time.
async fn assert_quiet(stream: &mut WatchStream) {
    let res = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
    assert!(res.is_err(), "unexpected watch item: {res:?}");
}

/// Revisions of all rows in the log, read with a raw connection.
fn log_revisions(path: &Path) -> Vec<i64> {
    let conn = Connection::open(path).expect("raw open");
    let mut stmt = conn
        .prepare("SELECT id FROM kv ORDER BY id")
        .expect("prepare");
    let ids = stmt
        .query_map([], |row| row.get(0))
        .expect("query")
        .collect::<Result<Vec<i64>, _>>()
        .expect("rows");
    ids
}

#[test]
fn prefix_upper_bound_is_exact() {
    assert_eq!(prefix_upper_bound(b"/a/"), Some(b"/a0".to_vec()));
    assert_eq!(prefix_upper_bound(b"a\xff\xff"), Some(b"b".to_vec()));
    assert_eq!(prefix_upper_bound(b"\xff"), None);
    assert_eq!(prefix_upper_bound(b""), None);
    assert_eq!(prefix_range(""), (Vec::new(), vec![0xff]));
}

#[tokio::test]
async fn create_get_and_already_exists() {
    let (_dir, store) = open_temp();
    assert_eq!(store.current_revision().await.unwrap(), 0);
    let kv = store.create("/r/a", b"one".to_vec()).await.unwrap();
    assert_eq!(kv.key, "/r/a");
    assert_eq!(kv.value, b"one");
    assert_eq!((kv.create_revision, kv.mod_revision), (1, 1));
    assert_eq!(store.get("/r/a").await.unwrap(), Some(kv.clone()));
    assert_eq!(store.get("/r/b").await.unwrap(), None);
    let err = store.create("/r/a", b"two".to_vec()).await.unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyExists(ref k) if k == "/r/a"),
        "{err:?}"
    );
    // The failed create used no revision and changed nothing.
    assert_eq!(store.current_revision().await.unwrap(), 1);
    assert_eq!(store.get("/r/a").await.unwrap(), Some(kv));
    let b = store.create("/r/b", b"b".to_vec()).await.unwrap();
    assert_eq!(b.mod_revision, 2);
}

#[tokio::test]
async fn update_is_compare_and_swap() {
    let (_dir, store) = open_temp();
    let a = store.create("/r/a", b"1".to_vec()).await.unwrap();
    let a2 = store
        .update("/r/a", b"2".to_vec(), a.mod_revision)
        .await
        .unwrap();
    assert_eq!(a2.value, b"2");
    assert_eq!(a2.create_revision, a.create_revision);
    assert!(a2.mod_revision > a.mod_revision);
    // Stale revision: conflict with the current one, nothing written.
    let err = store
        .update("/r/a", b"3".to_vec(), a.mod_revision)
        .await
        .unwrap_err();
    match err {
        StoreError::Conflict {
            key,
            expected,
            current,
        } => {
            assert_eq!(key, "/r/a");
            assert_eq!(expected, a.mod_revision);
            assert_eq!(current, a2.mod_revision);
        }
        other => panic!("expected conflict, got {other:?}"),
    }
    assert_eq!(store.get("/r/a").await.unwrap(), Some(a2.clone()));
    let err = store
        .update("/r/missing", b"x".to_vec(), 1)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    store.delete("/r/a", None).await.unwrap();
    let err = store
        .update("/r/a", b"x".to_vec(), a2.mod_revision)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

#[tokio::test]
async fn delete_with_and_without_expected_revision() {
    let (_dir, store) = open_temp();
    let a = store.create("/r/a", b"a".to_vec()).await.unwrap();
    let a2 = store
        .update("/r/a", b"a2".to_vec(), a.mod_revision)
        .await
        .unwrap();
    let err = store
        .delete("/r/a", Some(a.mod_revision))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { current, .. } if current == a2.mod_revision),
        "{err:?}"
    );
    assert!(store.get("/r/a").await.unwrap().is_some());
    let deleted = store.delete("/r/a", Some(a2.mod_revision)).await.unwrap();
    assert_eq!(deleted.value, b"a2");
    assert_eq!(deleted.create_revision, a.create_revision);
    assert_eq!(deleted.mod_revision, a2.mod_revision + 1);
    assert_eq!(
        store.current_revision().await.unwrap(),
        deleted.mod_revision
    );
    assert_eq!(store.get("/r/a").await.unwrap(), None);
    let err = store.delete("/r/a", None).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");

    let b = store.create("/r/b", b"b".to_vec()).await.unwrap();
    let deleted = store.delete("/r/b", None).await.unwrap();
    assert_eq!(deleted.value, b"b");
    assert_eq!(deleted.mod_revision, b.mod_revision + 1);

    // A re-created key starts a new life.
    let again = store.create("/r/a", b"new".to_vec()).await.unwrap();
    assert_eq!(again.create_revision, again.mod_revision);
    assert!(again.create_revision > deleted.mod_revision);
}

#[tokio::test]
async fn list_matches_exact_byte_prefixes() {
    let (_dir, store) = open_temp();
    for key in [
        "/a/b", "/a/b2", "/a/c", "/a%", "/a_x", "/ab", "/a", "/b/x", "/a/é",
    ] {
        store.create(key, key.as_bytes().to_vec()).await.unwrap();
    }
    store.create("/a/gone", b"x".to_vec()).await.unwrap();
    store.delete("/a/gone", None).await.unwrap();
    let keys = |r: &ListResult| r.items.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>();

    let r = store.list("/a/", ListOptions::default()).await.unwrap();
    assert_eq!(keys(&r), ["/a/b", "/a/b2", "/a/c", "/a/é"]);
    assert_eq!(r.items[0].value, b"/a/b");
    assert_eq!(r.revision, store.current_revision().await.unwrap());
    assert!(!r.more);
    let r = store.list("/a_", ListOptions::default()).await.unwrap();
    assert_eq!(keys(&r), ["/a_x"]);
    let r = store.list("/a%", ListOptions::default()).await.unwrap();
    assert_eq!(keys(&r), ["/a%"]);
    let r = store.list("/a/é", ListOptions::default()).await.unwrap();
    assert_eq!(keys(&r), ["/a/é"]);
    let r = store.list("", ListOptions::default()).await.unwrap();
    assert_eq!(r.items.len(), 9);
    let r = store.list("/zzz", ListOptions::default()).await.unwrap();
    assert!(r.items.is_empty());
}

#[tokio::test]
async fn list_pages_with_limit_and_start_after() {
    let (_dir, store) = open_temp();
    for i in 0..10 {
        store.create(&format!("/p/k{i:02}"), vec![i]).await.unwrap();
    }
    store.create("/q/other", vec![]).await.unwrap();
    let current = store.current_revision().await.unwrap();
    let first = store
        .list(
            "/p/",
            ListOptions {
                limit: Some(3),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(first.items.len(), 3);
    assert!(first.more);
    assert_eq!(first.remaining, 7);
    assert_eq!(first.revision, current);

    let mut seen = Vec::new();
    let mut start_after = None;
    loop {
        let page = store
            .list(
                "/p/",
                ListOptions {
                    limit: Some(4),
                    start_after: start_after.clone(),
                    revision: None,
                },
            )
            .await
            .unwrap();
        seen.extend(page.items.iter().map(|kv| kv.key.clone()));
        if !page.more {
            assert_eq!(page.remaining, 0);
            break;
        }
        assert_eq!(page.remaining, 10 - seen.len());
        start_after = page.items.last().map(|kv| kv.key.clone());
    }
    let expected: Vec<String> = (0..10).map(|i| format!("/p/k{i:02}")).collect();
    assert_eq!(seen, expected);

    // start_after is strict; limit 0 means no limit.
    let r = store
        .list(
            "/p/",
            ListOptions {
                limit: Some(0),
                start_after: Some("/p/k04".into()),
                revision: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(r.items.first().map(|kv| kv.key.as_str()), Some("/p/k05"));
    assert_eq!(r.items.len(), 5);
    // A start_after before the prefix does not widen it.
    let r = store
        .list(
            "/p/",
            ListOptions {
                start_after: Some("/a".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r.items.len(), 10);
}

#[tokio::test]
async fn list_at_revision() {
    let (_dir, store) = open_temp();
    let a = store.create("/r/a", b"a1".to_vec()).await.unwrap();
    let b = store.create("/r/b", b"b1".to_vec()).await.unwrap();
    let at = b.mod_revision;
    store
        .update("/r/a", b"a2".to_vec(), a.mod_revision)
        .await
        .unwrap();
    store.delete("/r/b", None).await.unwrap();
    store.create("/r/c", b"c1".to_vec()).await.unwrap();

    let old = store
        .list(
            "/r/",
            ListOptions {
                revision: Some(at),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(old.revision, at);
    assert_eq!(old.items, vec![a.clone(), b.clone()]);
    let first = store
        .list(
            "/r/",
            ListOptions {
                revision: Some(a.mod_revision),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(first.items, vec![a.clone()]);

    let latest = store.list("/r/", ListOptions::default()).await.unwrap();
    let got: Vec<(&str, &[u8])> = latest
        .items
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.as_slice()))
        .collect();
    assert_eq!(got, [("/r/a", &b"a2"[..]), ("/r/c", &b"c1"[..])]);

    let current = store.current_revision().await.unwrap();
    let err = store
        .list(
            "/r/",
            ListOptions {
                revision: Some(current + 1),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::FutureRevision { requested, current: c } if requested == current + 1 && c == current),
        "{err:?}"
    );
    // Paging at a revision.
    let page = store
        .list(
            "/r/",
            ListOptions {
                revision: Some(at),
                limit: Some(1),
                start_after: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(page.items, vec![a]);
    assert!(page.more);
    assert_eq!(page.remaining, 1);
}

#[tokio::test]
async fn revisions_increase_across_reopen_and_writes_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/dir/state.db");
    let last;
    {
        let store = SqliteStore::open(&path).unwrap();
        let a = store.create("/r/a", b"a".to_vec()).await.unwrap();
        store
            .update("/r/a", b"a2".to_vec(), a.mod_revision)
            .await
            .unwrap();
        store.create("/r/b", b"b".to_vec()).await.unwrap();
        // The newest row is a tombstone.
        last = store.delete("/r/b", None).await.unwrap().mod_revision;
        assert_eq!(last, 4);
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.current_revision().await.unwrap(), last);
    let a = store.get("/r/a").await.unwrap().unwrap();
    assert_eq!(
        (a.value.as_slice(), a.create_revision, a.mod_revision),
        (&b"a2"[..], 1, 2)
    );
    assert_eq!(store.get("/r/b").await.unwrap(), None);
    let c = store.create("/r/c", b"c".to_vec()).await.unwrap();
    assert_eq!(c.mod_revision, last + 1);
}

#[tokio::test]
async fn watch_delivers_history_then_live() {
    let (_dir, store) = open_temp();
    let a = store.create("/w/a", b"1".to_vec()).await.unwrap();
    store.create("/other/x", b"x".to_vec()).await.unwrap();
    let a2 = store
        .update("/w/a", b"2".to_vec(), a.mod_revision)
        .await
        .unwrap();

    let mut all = store.watch("/w/", 0).await.unwrap();
    let e = next_event(&mut all).await.unwrap();
    assert_eq!(
        (e.kind, e.kv.clone(), e.prev.clone()),
        (EventKind::Put, a.clone(), None)
    );
    let e = next_event(&mut all).await.unwrap();
    assert_eq!(e.kind, EventKind::Put);
    assert_eq!(e.kv, a2);
    assert_eq!(e.prev, Some(a.clone()));

    // From a revision: only later events.
    let mut later = store.watch("/w/", a.mod_revision).await.unwrap();
    assert_eq!(next_event(&mut later).await.unwrap().kv, a2);

    assert_quiet(&mut all).await;
    store.create("/other/y", b"y".to_vec()).await.unwrap();
    let b = store.create("/w/b", b"b".to_vec()).await.unwrap();
    assert_eq!(next_event(&mut all).await.unwrap().kv, b);
    assert_eq!(next_event(&mut later).await.unwrap().kv, b);
    assert_quiet(&mut all).await;

    // A watch from the current revision sees only live events.
    let current = store.current_revision().await.unwrap();
    let mut live = store.watch("/w/", current).await.unwrap();
    assert_quiet(&mut live).await;
    let c = store.create("/w/c", b"c".to_vec()).await.unwrap();
    assert_eq!(next_event(&mut live).await.unwrap().kv, c);

    // A watch from a future revision waits for it.
    let mut future = store.watch("/w/", c.mod_revision + 1).await.unwrap();
    store.create("/w/d", b"d".to_vec()).await.unwrap();
    let e = store.create("/w/e", b"e".to_vec()).await.unwrap();
    assert_eq!(next_event(&mut future).await.unwrap().kv, e);
}

#[tokio::test]
async fn watch_delete_events() {
    let (_dir, store) = open_temp();
    let a = store.create("/w/a", b"v1".to_vec()).await.unwrap();
    let a2 = store
        .update("/w/a", b"v2".to_vec(), a.mod_revision)
        .await
        .unwrap();
    let mut live = store.watch("/w/", a2.mod_revision).await.unwrap();
    let deleted = store.delete("/w/a", None).await.unwrap();

    let check = |e: &Event| {
        assert_eq!(e.kind, EventKind::Delete);
        assert_eq!(e.kv.key, "/w/a");
        assert_eq!(e.kv.value, b"v2");
        assert_eq!(e.kv.create_revision, a.create_revision);
        assert_eq!(e.kv.mod_revision, deleted.mod_revision);
        assert_eq!(e.revision(), deleted.mod_revision);
        assert_eq!(e.prev, Some(a2.clone()));
    };
    check(&next_event(&mut live).await.unwrap());
    // The same event read back from history.
    let mut history = store.watch("/w/", a2.mod_revision).await.unwrap();
    check(&next_event(&mut history).await.unwrap());
    // A re-create after a delete carries no prev.
    let again = store.create("/w/a", b"v3".to_vec()).await.unwrap();
    let e = next_event(&mut live).await.unwrap();
    assert_eq!(
        (e.kind, e.kv, e.prev),
        (EventKind::Put, again.clone(), None)
    );
    let e = next_event(&mut history).await.unwrap();
    assert_eq!((e.kind, e.kv, e.prev), (EventKind::Put, again, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_started_during_writes_has_no_gap_and_no_duplicate() {
    let (_dir, store) = open_temp();
    let store = Arc::new(store);
    const TOTAL: usize = 600;
    let writer = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            // Several concurrent writers, so that batches of many events are published.
            let mut tasks = Vec::new();
            for t in 0..4 {
                let store = Arc::clone(&store);
                tasks.push(tokio::spawn(async move {
                    for i in 0..TOTAL / 4 {
                        store
                            .create(&format!("/race/{t}-{i}"), vec![1])
                            .await
                            .unwrap();
                    }
                }));
            }
            for task in tasks {
                task.await.unwrap();
            }
        })
    };
    // Start several watches at different points of the write stream.
    let mut watches = Vec::new();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(15)).await;
        let from = store.current_revision().await.unwrap();
        watches.push((from, store.watch("/race/", from).await.unwrap()));
    }
    writer.await.unwrap();
    let last = store.current_revision().await.unwrap();
    assert_eq!(last, TOTAL as i64);
    for (from, mut stream) in watches {
        let mut expected = from + 1;
        while expected <= last {
            let e = next_event(&mut stream).await.unwrap();
            assert_eq!(
                e.revision(),
                expected,
                "watch from {from}: gap or duplicate"
            );
            expected += 1;
        }
        assert_quiet(&mut stream).await;
    }
}

#[tokio::test]
async fn watch_filters_by_prefix_in_history_and_live() {
    let (_dir, store) = open_temp();
    store.create("/a_b", vec![]).await.unwrap();
    store.create("/a/1", vec![]).await.unwrap();
    store.create("/a0", vec![]).await.unwrap();
    let mut w = store.watch("/a/", 0).await.unwrap();
    assert_eq!(next_event(&mut w).await.unwrap().kv.key, "/a/1");
    store.create("/a%", vec![]).await.unwrap();
    store.create("/ab", vec![]).await.unwrap();
    store.create("/a/2", vec![]).await.unwrap();
    assert_eq!(next_event(&mut w).await.unwrap().kv.key, "/a/2");
    assert_quiet(&mut w).await;
}

#[tokio::test]
async fn lagging_watcher_gets_lagged_and_ends() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_with_event_capacity(&dir.path().join("s.db"), 4).unwrap();
    let mut w = store.watch("/l/", 0).await.unwrap();
    for i in 0..20 {
        store.create(&format!("/l/{i}"), vec![]).await.unwrap();
    }
    let mut got = Vec::new();
    loop {
        match next_event(&mut w).await {
            Ok(e) => got.push(e.revision()),
            Err(StoreError::Lagged) => break,
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert!(got.len() < 20);
    let end = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .unwrap();
    assert!(end.is_none(), "stream must end after Lagged");
}

#[tokio::test]
async fn compaction_removes_history_and_keeps_latest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = SqliteStore::open(&path).unwrap();
    let k1 = store.create("/c/k", b"1".to_vec()).await.unwrap(); // 1
    let k2 = store
        .update("/c/k", b"2".to_vec(), k1.mod_revision)
        .await
        .unwrap(); // 2
    let k3 = store
        .update("/c/k", b"3".to_vec(), k2.mod_revision)
        .await
        .unwrap(); // 3
    store.create("/c/o", b"o".to_vec()).await.unwrap(); // 4
    store.delete("/c/o", None).await.unwrap(); // 5
    let z = store.create("/c/z", b"z".to_vec()).await.unwrap(); // 6
    assert_eq!(z.mod_revision, 6);

    let err = store.compact(7).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::FutureRevision {
                requested: 7,
                current: 6
            }
        ),
        "{err:?}"
    );
    store.compact(3).await.unwrap();
    assert_eq!(store.compacted_revision().await.unwrap(), 3);
    assert_eq!(log_revisions(&path), [3, 4, 5, 6]);
    // Compacting again at or below is a no-op.
    store.compact(2).await.unwrap();
    assert_eq!(store.compacted_revision().await.unwrap(), 3);

    let err = store
        .list(
            "/c/",
            ListOptions {
                revision: Some(2),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Compacted {
                requested: 2,
                compacted: 3
            }
        ),
        "{err:?}"
    );
    let at3 = store
        .list(
            "/c/",
            ListOptions {
                revision: Some(3),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(at3.items, vec![k3.clone()]);
    let at4 = store
        .list(
            "/c/",
            ListOptions {
                revision: Some(4),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(at4.items.len(), 2);
    let err = store
        .watch("/c/", 2)
        .await
        .err()
        .expect("watch below compacted");
    assert!(
        matches!(
            err,
            StoreError::Compacted {
                requested: 2,
                compacted: 3
            }
        ),
        "{err:?}"
    );
    let mut w = store.watch("/c/", 3).await.unwrap();
    let revs = [
        next_event(&mut w).await.unwrap(),
        next_event(&mut w).await.unwrap(),
        next_event(&mut w).await.unwrap(),
    ]
    .map(|e| (e.revision(), e.kind));
    assert_eq!(
        revs,
        [
            (4, EventKind::Put),
            (5, EventKind::Delete),
            (6, EventKind::Put)
        ]
    );

    // The prev value of a later update survives compaction.
    let k7 = store
        .update("/c/k", b"7".to_vec(), k3.mod_revision)
        .await
        .unwrap();
    let e = next_event(&mut w).await.unwrap();
    assert_eq!(
        (e.kv.clone(), e.prev.clone()),
        (k7.clone(), Some(k3.clone()))
    );
    let mut from6 = store.watch("/c/", 6).await.unwrap();
    let e = next_event(&mut from6).await.unwrap();
    assert_eq!((e.kv, e.prev), (k7.clone(), Some(k3.clone())));

    // The newest row of the log survives even when it is a tombstone.
    let zdel = store.delete("/c/z", None).await.unwrap(); // 8
    store.compact(8).await.unwrap();
    assert_eq!(log_revisions(&path), [7, 8]);
    let latest = store.list("/c/", ListOptions::default()).await.unwrap();
    assert_eq!(latest.items, vec![k7.clone()]);
    assert_eq!(latest.revision, zdel.mod_revision);
    drop((w, from6));
    drop(store);

    // Revisions and the compacted revision survive a restart.
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.current_revision().await.unwrap(), 8);
    assert_eq!(store.compacted_revision().await.unwrap(), 8);
    let n = store.create("/c/n", vec![]).await.unwrap();
    assert_eq!(n.mod_revision, 9);
    assert_eq!(store.get("/c/k").await.unwrap(), Some(k7));
}

#[tokio::test]
async fn compaction_never_reuses_revisions_after_removing_the_newest_tombstone() {
    // Even if a tombstone at the top of the log is gone (e.g. an older version of the
    // schema), AUTOINCREMENT keeps the revision counter.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        store.create("/x", vec![]).await.unwrap();
        store.delete("/x", None).await.unwrap();
    }
    Connection::open(&path)
        .unwrap()
        .execute("DELETE FROM kv", [])
        .unwrap();
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.current_revision().await.unwrap(), 2);
    assert_eq!(store.create("/y", vec![]).await.unwrap().mod_revision, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compaction_in_chunks_with_concurrent_writes() {
    let (_dir, store) = open_temp();
    let store = Arc::new(store);
    // History: 50 keys updated 100 times each (5,000 revisions, more than one chunk).
    for k in 0..50 {
        store
            .create(&format!("/h/{k}"), b"0".to_vec())
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for t in 0..5 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            for round in 1..100 {
                for k in (t * 10)..(t * 10 + 10) {
                    let key = format!("/h/{k}");
                    let cur = store.get(&key).await.unwrap().unwrap();
                    store
                        .update(&key, round.to_string().into_bytes(), cur.mod_revision)
                        .await
                        .unwrap();
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let target = store.current_revision().await.unwrap();
    let compactor = {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.compact(target).await })
    };
    for task in tasks {
        task.await.unwrap();
    }
    compactor.await.unwrap().unwrap();
    let all = store.list("/h/", ListOptions::default()).await.unwrap();
    assert_eq!(all.items.len(), 50);
    assert!(all.items.iter().all(|kv| kv.value == b"99"));
    let err = store
        .list(
            "/h/",
            ListOptions {
                revision: Some(target - 1),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Compacted { .. }));
    let at = store
        .list(
            "/h/",
            ListOptions {
                revision: Some(target),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(at.items.len(), 50);
}

#[tokio::test]
async fn spawn_compactor_keeps_a_window() {
    let (_dir, store) = open_temp();
    let store = Arc::new(store);
    let k = store.create("/s/k", vec![0]).await.unwrap();
    let mut rev = k.mod_revision;
    for i in 1..=20u8 {
        rev = store
            .update("/s/k", vec![i], rev)
            .await
            .unwrap()
            .mod_revision;
    }
    let handle = store.spawn_compactor(Duration::from_millis(50), 5);
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.compacted_revision().await.unwrap() != rev - 5 {
        assert!(Instant::now() < deadline, "compactor did not run");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The compactor holds no strong reference: dropping the store ends it.
    drop(store);
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cas_increments_lose_no_update() {
    let (_dir, store) = open_temp();
    let store = Arc::new(store);
    store.create("/counter", b"0".to_vec()).await.unwrap();
    const TASKS: usize = 8;
    const EACH: usize = 25;
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0;
            for _ in 0..EACH {
                loop {
                    let cur = store.get("/counter").await.unwrap().unwrap();
                    let n: usize = std::str::from_utf8(&cur.value).unwrap().parse().unwrap();
                    match store
                        .update(
                            "/counter",
                            (n + 1).to_string().into_bytes(),
                            cur.mod_revision,
                        )
                        .await
                    {
                        Ok(_) => break,
                        Err(StoreError::Conflict { .. }) => conflicts += 1,
                        Err(other) => panic!("unexpected {other:?}"),
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for task in tasks {
        conflicts += task.await.unwrap();
    }
    let last = store.get("/counter").await.unwrap().unwrap();
    assert_eq!(last.value, (TASKS * EACH).to_string().into_bytes());
    // One create plus one revision per successful increment: failed CAS used none.
    assert_eq!(last.mod_revision, 1 + (TASKS * EACH) as i64);
    println!("conflicts retried: {conflicts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_are_batched() {
    let (_dir, store) = open_temp();
    let store = Arc::new(store);
    let before = store.writer_stats();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..250 {
                revs.push(
                    store
                        .create(&format!("/b/{t}/{i}"), vec![0; 100])
                        .await
                        .unwrap()
                        .mod_revision,
                );
            }
            // One failing create per task inside the same batches: it must not affect
            // the others.
            assert!(matches!(
                store.create(&format!("/b/{t}/0"), vec![]).await,
                Err(StoreError::AlreadyExists(_))
            ));
            revs
        }));
    }
    let mut all = BTreeSet::new();
    for task in tasks {
        for rev in task.await.unwrap() {
            assert!(all.insert(rev), "revision {rev} given twice");
        }
    }
    let after = store.writer_stats();
    let writes = after.writes - before.writes;
    let commits = after.commits - before.commits;
    assert_eq!(writes, 8 * 251);
    assert!(
        commits < writes,
        "no batching: {commits} commits for {writes} writes"
    );
    assert_eq!(all.len(), 2000);
    assert_eq!(*all.iter().next_back().unwrap(), 2000);
    let listed = store.list("/b/", ListOptions::default()).await.unwrap();
    assert_eq!(listed.items.len(), 2000);
    println!("{writes} writes in {commits} commits");
}

#[tokio::test]
async fn reads_do_not_wait_for_the_writer() {
    let (_dir, store) = open_temp();
    store.create("/r/a", b"a".to_vec()).await.unwrap();
    // Hold a write lock with another connection: the writer blocks, reads go on.
    let blocker = Connection::open(&store.readers.path).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let store = Arc::new(store);
    let pending = {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.create("/r/b", b"b".to_vec()).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = Instant::now();
    assert!(store.get("/r/a").await.unwrap().is_some());
    assert_eq!(
        store
            .list("/r/", ListOptions::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert!(t.elapsed() < Duration::from_secs(1));
    assert!(
        !pending.is_finished(),
        "the write cannot commit while the lock is held"
    );
    blocker.execute_batch("COMMIT").unwrap();
    let b = pending.await.unwrap().unwrap();
    assert_eq!(b.mod_revision, 2);
}

#[test]
fn query_plans_use_the_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    drop(SqliteStore::open(&path).unwrap());
    let conn = Connection::open(&path).unwrap();
    let plan = |sql: &str| -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt
            .query_map(
                params![b"/a".to_vec(), b"/b".to_vec(), 5i64, 10i64],
                |row| row.get::<_, String>(3),
            )
            .unwrap();
        rows.map(|r| r.unwrap()).collect::<Vec<_>>().join("; ")
    };
    let latest = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {SQL_LATEST}"))
        .unwrap()
        .query_row([b"/a".to_vec()], |row| row.get::<_, String>(3))
        .unwrap();
    assert!(latest.contains("kv_key_id"), "{latest}");
    let list = plan(SQL_LIST);
    assert!(list.contains("USING COVERING INDEX kv_key_id"), "{list}");
    let history = plan(SQL_HISTORY);
    assert!(
        history.contains("INTEGER PRIMARY KEY (rowid>?)"),
        "{history}"
    );
    assert!(!history.contains("kv_key_id"), "{history}");
}

const CRASH_ENV: &str = "RK3S_STORE_CRASH_CHILD";
const CRASH_TEST: &str = "sqlite::tests::kill_9_loses_no_acknowledged_write";

/// The child side of the crash test: writes until killed, printing each acknowledged key.
fn crash_child(path: &Path) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Arc::new(SqliteStore::open(path).unwrap());
        let mut tasks = Vec::new();
        for t in 0..4 {
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut i = 0;
                while Instant::now() < deadline {
                    let key = format!("/crash/{t}/{i}");
                    store.create(&key, vec![7; 200]).await.unwrap();
                    println!("ACK {key}");
                    i += 1;
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
}

#[test]
fn kill_9_loses_no_acknowledged_write() {
    if let Some(path) = std::env::var_os(CRASH_ENV) {
        crash_child(Path::new(&path));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", CRASH_TEST, "--nocapture", "--test-threads=1"])
        .env(CRASH_ENV, &path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut acked = Vec::new();
    let mut line = String::new();
    let read_ack = |out: &mut BufReader<_>, line: &mut String, acked: &mut Vec<String>| -> bool {
        line.clear();
        let n = out.read_line(line).unwrap();
        if n == 0 {
            return false;
        }
        // Only complete lines: a key is acknowledged once its whole line is out.
        if let Some(key) = line.strip_prefix("ACK ").and_then(|l| l.strip_suffix('\n')) {
            acked.push(key.to_string());
        }
        true
    };
    while acked.len() < 400 {
        if !read_ack(&mut out, &mut line, &mut acked) {
            break;
        }
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    // The rest of what the child printed before it died.
    while read_ack(&mut out, &mut line, &mut acked) {}
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(9),
            "child was not killed mid-way: {status:?}"
        );
    }
    assert!(
        acked.len() >= 400,
        "child acknowledged only {} writes",
        acked.len()
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = SqliteStore::open(&path).unwrap();
        for key in &acked {
            assert!(
                store.get(key).await.unwrap().is_some(),
                "acknowledged {key} lost"
            );
        }
        // Revisions go on after the crash.
        let current = store.current_revision().await.unwrap();
        assert!(current >= acked.len() as i64);
        let next = store.create("/after-crash", vec![]).await.unwrap();
        assert_eq!(next.mod_revision, current + 1);
    });
}

/// Prints rough figures (debug build): creates/s from 8 clients, list and get latency
/// with 10,000 keys. `cargo test -p rk3s-store -- --ignored --nocapture bench_figures`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_figures() {
    let (_dir, store) = open_temp();
    let store = Arc::new(store);
    let value = vec![b'x'; 500];
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = Arc::clone(&store);
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            for i in 0..1250 {
                let t0 = Instant::now();
                store
                    .create(
                        &format!("/registry/configmaps/ns{t}/cm-{i:05}"),
                        value.clone(),
                    )
                    .await
                    .unwrap();
                lat.push(t0.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for task in tasks {
        lat.extend(task.await.unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort();
    let stats = store.writer_stats();
    println!(
        "creates: {:.0}/s from 8 clients (10,000 in {secs:.2}s), p50 {:?}, p99 {:?}, {} commits",
        10_000.0 / secs,
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100],
        stats.commits
    );
    for _ in 0..3 {
        let t0 = Instant::now();
        let r = store
            .list("/registry/configmaps/", ListOptions::default())
            .await
            .unwrap();
        assert_eq!(r.items.len(), 10_000);
        println!("list 10k: {:?}", t0.elapsed());
    }
    let t0 = Instant::now();
    let r = store
        .list(
            "/registry/configmaps/",
            ListOptions {
                limit: Some(500),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r.remaining, 9_500);
    println!("list 10k limit 500: {:?}", t0.elapsed());
    let t0 = Instant::now();
    for i in 0..1000 {
        store
            .get(&format!("/registry/configmaps/ns3/cm-{i:05}"))
            .await
            .unwrap()
            .unwrap();
    }
    println!("get: {:?} each", t0.elapsed() / 1000);
    let t0 = Instant::now();
    let mut w = store
        .watch("/registry/configmaps/ns1/", 9_000)
        .await
        .unwrap();
    let e = next_event(&mut w).await.unwrap();
    assert!(e.revision() > 9_000);
    println!("watch start near head: {:?}", t0.elapsed());
}

/// The backend-independent conformance suite, on a fresh SQLite store per check.
mod conformance {
    use std::sync::Arc;

    use crate::Store;

    async fn open_store() -> (Arc<dyn Store>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = super::SqliteStore::open(&dir.path().join("state.db")).expect("open store");
        (Arc::new(store), dir)
    }

    crate::store_conformance_tests!(open_store);
}
