//! The `Store` contract, checked against a real database. Each scenario uses a database
//! of its own (created by the store on connect).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rk3s_store::{EventKind, ListOptions, Revision, Store, StoreError, WatchStream};
use rk3s_store_sql::SqlStore;

/// The longest a test waits for a watch event.
const EVENT_DEADLINE: Duration = Duration::from_secs(20);

pub async fn connect(endpoint: &str) -> SqlStore {
    SqlStore::connect(endpoint)
        .await
        .unwrap_or_else(|e| panic!("connecting to {endpoint}: {e}"))
}

async fn next_event(watch: &mut WatchStream) -> rk3s_store::Event {
    match tokio::time::timeout(EVENT_DEADLINE, watch.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(other) => panic!("watch ended: {other:?}"),
        Err(_) => panic!("no watch event within {EVENT_DEADLINE:?}"),
    }
}

fn keys(result: &rk3s_store::ListResult) -> Vec<&str> {
    result.items.iter().map(|kv| kv.key.as_str()).collect()
}

/// Create, get, compare-and-swap updates and deletes, lists with paging and revisions.
pub async fn crud_and_list(endpoint: &str) {
    let store = connect(endpoint).await;
    assert_eq!(store.current_revision().await.unwrap(), 0);
    let a = store.create("/r/a", b"1".to_vec()).await.unwrap();
    assert_eq!((a.create_revision, a.mod_revision), (1, 1));
    assert!(matches!(
        store.create("/r/a", b"x".to_vec()).await,
        Err(StoreError::AlreadyExists(_))
    ));
    let b = store.create("/r/b", b"2".to_vec()).await.unwrap();
    let c = store.create("/r/c", b"3".to_vec()).await.unwrap();
    store.create("/s/x", b"other".to_vec()).await.unwrap();
    assert_eq!(b.mod_revision, 2);
    let a2 = store.update("/r/a", b"1b".to_vec(), 1).await.unwrap();
    assert_eq!((a2.create_revision, a2.mod_revision), (1, 5));
    match store.update("/r/a", b"lost".to_vec(), 1).await {
        Err(StoreError::Conflict {
            expected: 1,
            current: 5,
            ..
        }) => {}
        other => panic!("stale update: {other:?}"),
    }
    assert!(matches!(
        store.update("/r/nope", b"x".to_vec(), 1).await,
        Err(StoreError::NotFound(_))
    ));
    let got = store.get("/r/a").await.unwrap().unwrap();
    assert_eq!(got.value, b"1b");
    assert_eq!(got.mod_revision, 5);
    assert!(matches!(
        store.delete("/r/b", Some(1)).await,
        Err(StoreError::Conflict { .. })
    ));
    let deleted = store.delete("/r/b", Some(2)).await.unwrap();
    assert_eq!(
        (deleted.mod_revision, deleted.value.as_slice()),
        (6, &b"2"[..])
    );
    assert!(store.get("/r/b").await.unwrap().is_none());
    assert!(matches!(
        store.delete("/r/b", None).await,
        Err(StoreError::NotFound(_))
    ));
    // Re-creation starts a new life of the key.
    let b2 = store.create("/r/b", b"2b".to_vec()).await.unwrap();
    assert_eq!((b2.create_revision, b2.mod_revision), (7, 7));
    assert_eq!(store.current_revision().await.unwrap(), 7);

    let all = store.list("/r/", ListOptions::default()).await.unwrap();
    assert_eq!(keys(&all), ["/r/a", "/r/b", "/r/c"]);
    assert_eq!(all.revision, 7);
    assert!(!all.more);
    let page = store
        .list(
            "/r/",
            ListOptions {
                limit: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (keys(&page), page.more, page.remaining),
        (vec!["/r/a"], true, 2)
    );
    let page2 = store
        .list(
            "/r/",
            ListOptions {
                limit: Some(1),
                start_after: Some("/r/a".into()),
                revision: Some(page.revision),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (keys(&page2), page2.more, page2.remaining),
        (vec!["/r/b"], true, 1)
    );
    // As of revision 4: a (first value), b (first life), c.
    let old = store
        .list(
            "/r/",
            ListOptions {
                revision: Some(4),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(keys(&old), ["/r/a", "/r/b", "/r/c"]);
    assert_eq!(old.items[0].value, b"1");
    assert_eq!(old.items[2].mod_revision, c.mod_revision);
    let at6 = store
        .list(
            "/r/",
            ListOptions {
                revision: Some(6),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(keys(&at6), ["/r/a", "/r/c"]);
    assert!(matches!(
        store
            .list(
                "/r/",
                ListOptions {
                    revision: Some(8),
                    ..Default::default()
                }
            )
            .await,
        Err(StoreError::FutureRevision {
            requested: 8,
            current: 7
        })
    ));
    // Keys are compared as bytes; a prefix of all 0xFF-free keys.
    let everything = store.list("", ListOptions::default()).await.unwrap();
    assert_eq!(everything.items.len(), 4);
    // A second connection to the same database sees the same state (durable writes).
    drop(store);
    let again = connect(endpoint).await;
    assert_eq!(again.current_revision().await.unwrap(), 7);
    assert_eq!(again.get("/r/b").await.unwrap().unwrap().value, b"2b");
    let next = again.create("/r/d", Vec::new()).await.unwrap();
    assert_eq!(next.mod_revision, 8);
}

/// History then live events, with previous values, filtered by prefix.
pub async fn watch_history_and_live(endpoint: &str) {
    let store = connect(endpoint).await;
    store.create("/w/a", b"1".to_vec()).await.unwrap(); // 1
    store.create("/x/ignored", b"x".to_vec()).await.unwrap(); // 2
    store.update("/w/a", b"2".to_vec(), 1).await.unwrap(); // 3
    let mut watch = store.watch("/w/", 0).await.unwrap();
    let e1 = next_event(&mut watch).await;
    assert_eq!(
        (e1.kind, e1.revision(), e1.prev.is_none()),
        (EventKind::Put, 1, true)
    );
    let e3 = next_event(&mut watch).await;
    assert_eq!(e3.revision(), 3);
    let prev = e3.prev.clone().unwrap();
    assert_eq!((prev.value.as_slice(), prev.mod_revision), (&b"1"[..], 1));
    // Live.
    store.delete("/w/a", None).await.unwrap(); // 4
    store.create("/x/ignored2", b"x".to_vec()).await.unwrap(); // 5
    store.create("/w/a", b"3".to_vec()).await.unwrap(); // 6
    let e4 = next_event(&mut watch).await;
    assert_eq!((e4.kind, e4.revision()), (EventKind::Delete, 4));
    assert_eq!(e4.kv.value, b"2");
    assert_eq!(e4.prev.as_ref().map(|p| p.mod_revision), Some(3));
    let e6 = next_event(&mut watch).await;
    assert_eq!(
        (e6.kind, e6.revision(), e6.kv.create_revision),
        (EventKind::Put, 6, 6)
    );
    assert!(e6.prev.is_none(), "a re-creation has no previous value");
    // A watch from the middle, and one from the future.
    let mut from3 = store.watch("/w/", 3).await.unwrap();
    assert_eq!(next_event(&mut from3).await.revision(), 4);
    assert_eq!(next_event(&mut from3).await.revision(), 6);
    let mut future = store.watch("", 7).await.unwrap();
    store.create("/w/b", Vec::new()).await.unwrap(); // 7
    store.create("/w/c", Vec::new()).await.unwrap(); // 8
    assert_eq!(next_event(&mut future).await.revision(), 8);
    // Many writes while a watcher does not read: it catches up from the database.
    let mut slow = store.watch("/w/", 8).await.unwrap();
    let writes: Vec<_> = (0..300)
        .map(|i| {
            let store = &store;
            async move { store.create(&format!("/w/many/{i:03}"), Vec::new()).await }
        })
        .collect();
    for result in futures_util::future::join_all(writes).await {
        result.unwrap();
    }
    let mut last = 8;
    for _ in 0..300 {
        let event = next_event(&mut slow).await;
        assert_eq!(event.revision(), last + 1, "no gap, no duplicate");
        last = event.revision();
    }
    // Dropping the store ends its watches.
    drop(store);
    match tokio::time::timeout(EVENT_DEADLINE, slow.next()).await {
        Ok(None) => {}
        other => panic!("watch after the store was dropped: {other:?}"),
    }
}

/// Compaction: reads below fail, the latest state is intact, the table shrinks.
pub async fn compaction(endpoint: &str) {
    let store = connect(endpoint).await;
    store.create("/c/keep", b"0".to_vec()).await.unwrap(); // 1
    let mut rev = 1;
    for i in 1..=50 {
        rev = store
            .update("/c/keep", format!("{i}").into_bytes(), rev)
            .await
            .unwrap()
            .mod_revision;
    } // 51
    store.create("/c/gone", b"g".to_vec()).await.unwrap(); // 52
    store.delete("/c/gone", None).await.unwrap(); // 53
    store.create("/c/late", b"l".to_vec()).await.unwrap(); // 54
    assert_eq!(store.log_len().await.unwrap(), 54);
    assert!(matches!(
        store.compact(55).await,
        Err(StoreError::FutureRevision { .. })
    ));
    store.compact(53).await.unwrap();
    assert_eq!(store.compacted_revision().await.unwrap(), 53);
    // Left: /c/keep's row 51 and /c/late's row 54.
    assert_eq!(store.log_len().await.unwrap(), 2);
    let at53 = store
        .list(
            "/c/",
            ListOptions {
                revision: Some(53),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(keys(&at53), ["/c/keep"]);
    assert_eq!(at53.items[0].value, b"50");
    assert!(matches!(
        store
            .list(
                "/c/",
                ListOptions {
                    revision: Some(52),
                    ..Default::default()
                }
            )
            .await,
        Err(StoreError::Compacted {
            requested: 52,
            compacted: 53
        })
    ));
    assert!(matches!(
        store.watch("/c/", 10).await,
        Err(StoreError::Compacted { .. })
    ));
    let mut watch = store.watch("/c/", 53).await.unwrap();
    assert_eq!(next_event(&mut watch).await.revision(), 54);
    store.compact(20).await.unwrap(); // no-op
    assert_eq!(store.compacted_revision().await.unwrap(), 53);
    // Writes go on from the counter, never reusing a revision.
    let next = store.update("/c/keep", b"x".to_vec(), 51).await.unwrap();
    assert_eq!(next.mod_revision, 55);
    let e = next_event(&mut watch).await;
    assert_eq!(e.revision(), 55);
    assert_eq!(e.prev.map(|p| p.value), Some(b"50".to_vec()));
    // A compaction larger than one chunk.
    let mut rev = 55;
    for _ in 0..1100 {
        rev = store
            .update("/c/keep", Vec::new(), rev)
            .await
            .unwrap()
            .mod_revision;
    }
    store.compact(rev).await.unwrap();
    assert_eq!(store.log_len().await.unwrap(), 2);
}

/// Two stores (two "servers") on one database: concurrent compare-and-swap increments
/// from both lose no update; watchers on both see every revision once, in order.
pub async fn two_servers(endpoint: &str) {
    const WORKERS: usize = 4;
    const INCREMENTS: usize = 25;
    let one = Arc::new(connect(endpoint).await);
    let two = Arc::new(connect(endpoint).await);
    one.create("/n/counter", b"0".to_vec()).await.unwrap(); // revision 1
    let mut watch_one = one.watch("/n/", 0).await.unwrap();
    let mut watch_two = two.watch("/n/", 0).await.unwrap();
    let mut tasks = Vec::new();
    for worker in 0..2 * WORKERS {
        let store = if worker % 2 == 0 {
            Arc::clone(&one)
        } else {
            Arc::clone(&two)
        };
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0;
            for _ in 0..INCREMENTS {
                loop {
                    let current = store.get("/n/counter").await.unwrap().unwrap();
                    let n: u64 = String::from_utf8(current.value).unwrap().parse().unwrap();
                    match store
                        .update(
                            "/n/counter",
                            (n + 1).to_string().into_bytes(),
                            current.mod_revision,
                        )
                        .await
                    {
                        Ok(_) => break,
                        Err(StoreError::Conflict { .. }) => conflicts += 1,
                        Err(e) => panic!("increment: {e}"),
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
    let total = (2 * WORKERS * INCREMENTS) as u64;
    let last = one.get("/n/counter").await.unwrap().unwrap();
    assert_eq!(String::from_utf8(last.value).unwrap(), total.to_string());
    let final_revision = 1 + total as Revision;
    assert_eq!(last.mod_revision, final_revision);
    assert_eq!(two.current_revision().await.unwrap(), final_revision);
    eprintln!("{total} increments from two stores, {conflicts} conflicts retried");
    for watch in [&mut watch_one, &mut watch_two] {
        for revision in 1..=final_revision {
            let event = next_event(watch).await;
            assert_eq!(event.revision(), revision, "every revision once, in order");
            assert_eq!(
                event.kv.value,
                (revision - 1).to_string().into_bytes(),
                "values in order"
            );
            if revision > 1 {
                let prev = event.prev.unwrap();
                assert_eq!(prev.mod_revision, revision - 1);
            }
        }
    }
    // Live events written by one server reach the other's watcher promptly (PostgreSQL:
    // by NOTIFY, well before the 5 s safety poll; MySQL: by the 100 ms poll).
    let sent = std::time::Instant::now();
    two.create("/n/late", Vec::new()).await.unwrap();
    assert_eq!(
        next_event(&mut watch_one).await.revision(),
        final_revision + 1
    );
    let latency = sent.elapsed();
    assert!(
        latency < Duration::from_millis(2500),
        "cross-server latency {latency:?}"
    );
    eprintln!("cross-server watch latency {latency:?}");
    assert_eq!(
        next_event(&mut watch_two).await.revision(),
        final_revision + 1
    );
}

/// A write that the database rejects (a key too long to index) fails alone, not the
/// writes batched with it.
pub async fn bad_write_fails_alone(endpoint: &str) {
    let store = connect(endpoint).await;
    // Incompressible, so that PostgreSQL cannot squeeze it into an index entry either.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let long: String = (0..100_000)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            char::from(b'!' + (seed % 90) as u8)
        })
        .collect();
    let bad_key = format!("/b/{long}");
    let bad = store.create(&bad_key, Vec::new());
    let good: Vec<_> = (0..5)
        .map(|i| {
            let store = &store;
            async move { store.create(&format!("/b/good{i}"), Vec::new()).await }
        })
        .collect();
    let (bad, good) = futures_util::future::join(bad, futures_util::future::join_all(good)).await;
    assert!(
        matches!(bad, Err(StoreError::Backend(_))),
        "{:?}",
        bad.map(|kv| kv.mod_revision)
    );
    let mut revisions: Vec<Revision> = good.into_iter().map(|r| r.unwrap().mod_revision).collect();
    revisions.sort();
    assert_eq!(
        revisions,
        [1, 2, 3, 4, 5],
        "no revision lost to the failed write"
    );
    assert_eq!(store.current_revision().await.unwrap(), 5);
}

/// The periodic compactor keeps the last revisions only.
pub async fn compactor(endpoint: &str) {
    let store = Arc::new(connect(endpoint).await);
    let mut rev = store.create("/p/k", Vec::new()).await.unwrap().mod_revision;
    for _ in 0..20 {
        rev = store
            .update("/p/k", Vec::new(), rev)
            .await
            .unwrap()
            .mod_revision;
    }
    let task = store.spawn_compactor(Duration::from_millis(50), 5);
    let deadline = std::time::Instant::now() + EVENT_DEADLINE;
    while store.compacted_revision().await.unwrap() != rev - 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "compactor did not run"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(store);
    // The compactor ends with the store.
    tokio::time::timeout(EVENT_DEADLINE, task)
        .await
        .expect("compactor ended")
        .unwrap();
}

/// Connects with `files`, writes, reads and watches (the PostgreSQL listener connects
/// with the same TLS settings).
pub async fn tls_round_trip(endpoint: &str, files: &rk3s_store_sql::TlsFiles) {
    let store = SqlStore::connect_with(endpoint, files)
        .await
        .unwrap_or_else(|e| panic!("connecting to {endpoint}: {e}"));
    let start = store.current_revision().await.unwrap();
    let mut watch = store.watch("/tls/", start).await.unwrap();
    let kv = store
        .create(&format!("/tls/{start}"), b"v".to_vec())
        .await
        .unwrap();
    assert_eq!(store.get(&kv.key).await.unwrap(), Some(kv.clone()));
    assert_eq!(next_event(&mut watch).await.kv, kv);
}

/// The stores ride out a restart of the database: writes during the outage fail with
/// `Backend`, later ones succeed, and a watch on another store started before the restart
/// goes on without a gap (its poller and, for PostgreSQL, its listener reconnect).
pub async fn survives_restart(server: &mut super::servers::Server, endpoint: &str) {
    let one = connect(endpoint).await;
    let two = connect(endpoint).await;
    let a = one.create("/r/a", b"a".to_vec()).await.unwrap();
    let mut watch = two.watch("/r/", 0).await.unwrap();
    assert_eq!(next_event(&mut watch).await.kv, a);
    tokio::task::block_in_place(|| server.restart());
    let deadline = std::time::Instant::now() + EVENT_DEADLINE;
    let mut failures = 0;
    let b = loop {
        match one.create("/r/b", b"b".to_vec()).await {
            Ok(kv) => break kv,
            // An attempt whose commit failed may have been applied after all.
            Err(StoreError::AlreadyExists(_)) => break one.get("/r/b").await.unwrap().unwrap(),
            Err(StoreError::Backend(e)) if std::time::Instant::now() < deadline => {
                failures += 1;
                eprintln!("write after restart failed ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("write after restart: {e}"),
        }
    };
    eprintln!("{failures} writes failed after the restart");
    assert_eq!(b.mod_revision, a.mod_revision + 1);
    assert_eq!(next_event(&mut watch).await.kv, b);
    assert_eq!(two.get("/r/b").await.unwrap(), Some(b.clone()));
    let c = two
        .update("/r/b", b"c".to_vec(), b.mod_revision)
        .await
        .unwrap();
    assert_eq!(next_event(&mut watch).await.kv, c);
}
