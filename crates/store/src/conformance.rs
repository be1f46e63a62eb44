//! The conformance suite of the [`Store`] contract: one list of checks that every
//! backend runs unchanged, so SQLite, etcd, PostgreSQL and MySQL behave the same for the
//! API server.
//!
//! Each check is an `async fn(Arc<dyn Store>)` that panics (with a message) when the
//! backend breaks the contract. A backend's tests instantiate all of them with
//! [`store_conformance_tests!`](crate::store_conformance_tests), given a factory that
//! opens a fresh, empty store:
//!
//! ```ignore
//! async fn open_store() -> (Arc<dyn Store>, tempfile::TempDir) { ... }
//! rk3s_store::store_conformance_tests!(open_store);
//! ```
//!
//! The checks assume only what the trait documents: revisions are compared, never
//! predicted (an empty etcd is at revision 1, an empty SQLite store at 0). Compiled for
//! this crate's tests and, for other crates' tests, with the `conformance` feature; it
//! adds no dependency.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use crate::{Event, EventKind, KeyValue, ListOptions, Revision, Store, StoreError, WatchStream};

/// How long a check waits for one watch event.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// Instantiates every check of [`crate::conformance`] as a `#[tokio::test]` in the
/// calling module. `$factory` is an async function (no arguments) returning
/// `(Arc<dyn Store>, G)`: a fresh, empty store and a guard kept alive for the test (a
/// temp dir, a server process).
#[macro_export]
macro_rules! store_conformance_tests {
    ($factory:path) => {
        $crate::store_conformance_tests!(@each $factory;
            revisions_are_global_and_strictly_increasing,
            create_fails_on_an_existing_key,
            update_is_compare_and_swap,
            delete_is_compare_and_swap,
            list_pages_with_limit_and_start_after,
            list_at_a_past_revision,
            list_at_a_future_revision_fails,
            prefixes_are_exact_bytes,
            watch_delivers_history_then_live,
            watch_delete_events_carry_the_last_value,
            watch_during_writes_has_no_gap_and_no_duplicate,
            compaction_fails_old_reads_and_keeps_latest,
            concurrent_cas_writers_lose_no_update,
            large_values_round_trip);
    };
    (@each $factory:path; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let (store, guard) = $factory().await;
                $crate::conformance::$check(store).await;
                drop(guard);
            }
        )*
    };
}

/// The next watch item, within [`EVENT_TIMEOUT`].
async fn next_item(stream: &mut WatchStream) -> Result<Event, StoreError> {
    match tokio::time::timeout(EVENT_TIMEOUT, stream.next()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("watch stream ended early"),
        Err(_) => panic!("no watch event within {EVENT_TIMEOUT:?}"),
    }
}

/// The next watch event, which must not be an error.
async fn next_event(stream: &mut WatchStream) -> Event {
    match next_item(stream).await {
        Ok(event) => event,
        Err(e) => panic!("watch error: {e}"),
    }
}

/// Asserts that no watch item arrives for a while.
async fn assert_quiet(stream: &mut WatchStream) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(300), stream.next()).await {
        panic!("unexpected watch item: {item:?}");
    }
}

/// Asserts `watch(prefix, after)` fails with `Compacted`, either from `watch` itself or
/// as the stream's first item.
async fn assert_watch_compacted(store: &dyn Store, prefix: &str, after: Revision, at: Revision) {
    let err = match store.watch(prefix, after).await {
        Err(e) => e,
        Ok(mut stream) => match next_item(&mut stream).await {
            Err(e) => e,
            Ok(event) => panic!("watch after {after} delivered {event:?}, not Compacted"),
        },
    };
    assert!(
        matches!(err, StoreError::Compacted { requested, compacted } if requested == after && compacted == at),
        "watch after {after}: {err:?}"
    );
}

fn keys(items: &[KeyValue]) -> Vec<&str> {
    items.iter().map(|kv| kv.key.as_str()).collect()
}

fn opts(limit: usize, start_after: Option<&str>, revision: Option<Revision>) -> ListOptions {
    ListOptions {
        revision,
        limit: Some(limit),
        start_after: start_after.map(str::to_string),
    }
}

/// Every write takes a new revision, greater than every earlier one, across keys; the
/// store's current revision is the last write's; failed writes take none.
pub async fn revisions_are_global_and_strictly_increasing(store: Arc<dyn Store>) {
    let start = store.current_revision().await.expect("current revision");
    let a = store
        .create("/c/a", b"a1".to_vec())
        .await
        .expect("create a");
    assert!(a.mod_revision > start, "{a:?} after {start}");
    assert_eq!(a.create_revision, a.mod_revision);
    assert_eq!((a.key.as_str(), a.value.as_slice()), ("/c/a", &b"a1"[..]));
    let b = store
        .create("/c/b", b"b1".to_vec())
        .await
        .expect("create b");
    assert!(b.mod_revision > a.mod_revision);
    let a2 = store
        .update("/c/a", b"a2".to_vec(), a.mod_revision)
        .await
        .expect("update a");
    assert!(a2.mod_revision > b.mod_revision);
    assert_eq!(a2.create_revision, a.create_revision);
    let del = store.delete("/c/b", None).await.expect("delete b");
    assert!(del.mod_revision > a2.mod_revision);
    assert_eq!(
        store.current_revision().await.expect("current"),
        del.mod_revision
    );
    // Failed writes change nothing.
    assert!(store.create("/c/a", b"x".to_vec()).await.is_err());
    assert!(store
        .update("/c/a", b"x".to_vec(), a.mod_revision)
        .await
        .is_err());
    assert!(store.delete("/c/missing", None).await.is_err());
    assert_eq!(
        store.current_revision().await.expect("current"),
        del.mod_revision
    );
    // A key created again starts a new life.
    let b2 = store
        .create("/c/b", b"b2".to_vec())
        .await
        .expect("create b again");
    assert!(b2.mod_revision > del.mod_revision);
    assert_eq!(b2.create_revision, b2.mod_revision);
    assert_eq!(store.get("/c/b").await.expect("get b"), Some(b2.clone()));
    assert_eq!(store.get("/c/a").await.expect("get a"), Some(a2));
    assert_eq!(store.get("/c/zzz").await.expect("get missing"), None);
}

/// `create` of an existing key fails with `AlreadyExists` and leaves it unchanged.
pub async fn create_fails_on_an_existing_key(store: Arc<dyn Store>) {
    let kv = store.create("/x/k", b"one".to_vec()).await.expect("create");
    let err = store.create("/x/k", b"two".to_vec()).await.unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyExists(ref k) if k == "/x/k"),
        "{err:?}"
    );
    assert_eq!(store.get("/x/k").await.expect("get"), Some(kv));
}

/// `update` succeeds only at the key's mod revision: `Conflict` (with the current
/// revision) otherwise, `NotFound` for a missing or deleted key, whatever the revision.
pub async fn update_is_compare_and_swap(store: Arc<dyn Store>) {
    let v1 = store.create("/u/k", b"1".to_vec()).await.expect("create");
    let v2 = store
        .update("/u/k", b"2".to_vec(), v1.mod_revision)
        .await
        .expect("update");
    assert_eq!(v2.value, b"2");
    assert_eq!(v2.create_revision, v1.create_revision);
    assert!(v2.mod_revision > v1.mod_revision);
    let err = store
        .update("/u/k", b"3".to_vec(), v1.mod_revision)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { ref key, expected, current }
            if key == "/u/k" && expected == v1.mod_revision && current == v2.mod_revision),
        "{err:?}"
    );
    assert_eq!(store.get("/u/k").await.expect("get"), Some(v2.clone()));
    for expected in [0, 1, v2.mod_revision] {
        let err = store
            .update("/u/missing", b"x".to_vec(), expected)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::NotFound(ref k) if k == "/u/missing"),
            "update of a missing key at {expected}: {err:?}"
        );
    }
    assert_eq!(store.get("/u/missing").await.expect("get"), None);
    store.delete("/u/k", None).await.expect("delete");
    let err = store
        .update("/u/k", b"4".to_vec(), v2.mod_revision)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

/// `delete` with an expected revision is compare-and-swap; it returns the last value
/// with the delete's revision.
pub async fn delete_is_compare_and_swap(store: Arc<dyn Store>) {
    let v1 = store.create("/d/k", b"1".to_vec()).await.expect("create");
    let v2 = store
        .update("/d/k", b"2".to_vec(), v1.mod_revision)
        .await
        .expect("update");
    let err = store
        .delete("/d/k", Some(v1.mod_revision))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { expected, current, .. }
            if expected == v1.mod_revision && current == v2.mod_revision),
        "{err:?}"
    );
    let gone = store
        .delete("/d/k", Some(v2.mod_revision))
        .await
        .expect("delete at the current revision");
    assert_eq!(gone.key, "/d/k");
    assert_eq!(gone.value, b"2");
    assert_eq!(gone.create_revision, v1.create_revision);
    assert!(gone.mod_revision > v2.mod_revision);
    assert_eq!(store.get("/d/k").await.expect("get"), None);
    for expected in [None, Some(gone.mod_revision), Some(0)] {
        let err = store.delete("/d/k", expected).await.unwrap_err();
        assert!(
            matches!(err, StoreError::NotFound(ref k) if k == "/d/k"),
            "{expected:?}: {err:?}"
        );
    }
    // Unconditional delete.
    let w = store.create("/d/w", b"w".to_vec()).await.expect("create w");
    let gone = store.delete("/d/w", None).await.expect("delete w");
    assert_eq!(gone.value, b"w");
    assert_eq!(gone.create_revision, w.create_revision);
    assert_eq!(
        gone.mod_revision,
        store.current_revision().await.expect("current")
    );
}

/// Lists are in key order; `limit` cuts them with `more` and `remaining`; `start_after`
/// continues after a key; the result's revision is the read revision.
pub async fn list_pages_with_limit_and_start_after(store: Arc<dyn Store>) {
    let names: Vec<String> = (0..10).map(|i| format!("/p/k{i:02}")).collect();
    // Written out of order, plus neighbours that must never match.
    for name in names.iter().rev() {
        store
            .create(name, name.as_bytes().to_vec())
            .await
            .expect("create");
    }
    store.create("/p", b"x".to_vec()).await.expect("create /p");
    store
        .create("/p0", b"x".to_vec())
        .await
        .expect("create /p0");
    store
        .create("/o/z", b"x".to_vec())
        .await
        .expect("create /o/z");
    let current = store.current_revision().await.expect("current");

    let all = store
        .list("/p/", ListOptions::default())
        .await
        .expect("list");
    assert_eq!(
        keys(&all.items),
        names.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert!(all.items.iter().all(|kv| kv.value == kv.key.as_bytes()));
    assert_eq!((all.revision, all.more, all.remaining), (current, false, 0));
    let unlimited = store
        .list("/p/", opts(0, None, None))
        .await
        .expect("limit 0");
    assert_eq!(unlimited.items.len(), 10);
    assert!(!unlimited.more);

    let page = store
        .list("/p/", opts(3, None, None))
        .await
        .expect("page 1");
    assert_eq!(keys(&page.items), ["/p/k00", "/p/k01", "/p/k02"]);
    assert_eq!(
        (page.revision, page.more, page.remaining),
        (current, true, 7)
    );
    let page = store
        .list("/p/", opts(3, Some("/p/k02"), Some(current)))
        .await
        .expect("page 2");
    assert_eq!(keys(&page.items), ["/p/k03", "/p/k04", "/p/k05"]);
    assert_eq!((page.more, page.remaining), (true, 4));
    // A start key that is not stored continues after it.
    let page = store
        .list("/p/", opts(3, Some("/p/k055"), None))
        .await
        .expect("page from a gap");
    assert_eq!(keys(&page.items), ["/p/k06", "/p/k07", "/p/k08"]);
    assert_eq!((page.more, page.remaining), (true, 1));
    let page = store
        .list("/p/", opts(3, Some("/p/k08"), None))
        .await
        .expect("last page");
    assert_eq!(keys(&page.items), ["/p/k09"]);
    assert_eq!((page.more, page.remaining), (false, 0));
    let page = store
        .list("/p/", opts(10, None, None))
        .await
        .expect("exact limit");
    assert_eq!(page.items.len(), 10);
    assert!(!page.more, "a limit equal to the count leaves nothing more");
    let page = store
        .list("/p/", opts(3, Some("/p/k09"), None))
        .await
        .expect("after the end");
    assert!(page.items.is_empty() && !page.more);
    // A start key before the prefix does not widen the range.
    let page = store
        .list("/p/", opts(2, Some("/a"), None))
        .await
        .expect("start before prefix");
    assert_eq!(keys(&page.items), ["/p/k00", "/p/k01"]);
    // An empty prefix lists every key.
    let everything = store
        .list("", ListOptions::default())
        .await
        .expect("all keys");
    assert_eq!(everything.items.len(), 13);
    assert_eq!(everything.items[0].key, "/o/z");
}

/// A list at a past revision sees the state of that revision (deleted keys back,
/// updates undone, later keys absent), with paging.
pub async fn list_at_a_past_revision(store: Arc<dyn Store>) {
    let a = store.create("/h/a", b"a1".to_vec()).await.expect("a");
    let b = store.create("/h/b", b"b1".to_vec()).await.expect("b");
    let c = store.create("/h/c", b"c1".to_vec()).await.expect("c");
    let then = c.mod_revision;
    store
        .update("/h/a", b"a2".to_vec(), a.mod_revision)
        .await
        .expect("update a");
    store
        .delete("/h/b", Some(b.mod_revision))
        .await
        .expect("delete b");
    store.create("/h/d", b"d1".to_vec()).await.expect("d");

    let past = store
        .list(
            "/h/",
            ListOptions {
                revision: Some(then),
                ..Default::default()
            },
        )
        .await
        .expect("list at past revision");
    assert_eq!(past.revision, then);
    assert_eq!(past.items, vec![a.clone(), b.clone(), c.clone()]);
    let page = store
        .list("/h/", opts(2, None, Some(then)))
        .await
        .expect("page at past revision");
    assert_eq!(page.items, vec![a.clone(), b.clone()]);
    assert_eq!((page.revision, page.more, page.remaining), (then, true, 1));
    let page = store
        .list("/h/", opts(2, Some("/h/b"), Some(then)))
        .await
        .expect("second page at past revision");
    assert_eq!(page.items, vec![c.clone()]);
    assert!(!page.more);

    let now = store
        .list("/h/", ListOptions::default())
        .await
        .expect("list now");
    assert_eq!(keys(&now.items), ["/h/a", "/h/c", "/h/d"]);
    assert_eq!(now.items[0].value, b"a2");
    // Reading at the current revision is the same as reading the latest state.
    let current = store.current_revision().await.expect("current");
    let at_current = store
        .list("/h/", opts(0, None, Some(current)))
        .await
        .expect("list at current");
    assert_eq!(at_current.items, now.items);
    assert_eq!(at_current.revision, current);
}

/// A list above the current revision fails with `FutureRevision`.
pub async fn list_at_a_future_revision_fails(store: Arc<dyn Store>) {
    store.create("/f/a", b"a".to_vec()).await.expect("create");
    let current = store.current_revision().await.expect("current");
    let err = store
        .list("/f/", opts(0, None, Some(current + 100)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::FutureRevision { requested, current: c }
            if requested == current + 100 && c == current),
        "{err:?}"
    );
}

/// Prefixes match bytes exactly: `/a/b/` is not `/a/bc`; keys with punctuation,
/// spaces and multi-byte characters are stored and ordered by their UTF-8 bytes.
pub async fn prefixes_are_exact_bytes(store: Arc<dyn Store>) {
    let before = store.current_revision().await.expect("current");
    let odd = [
        "/a/b",
        "/a/b/",
        "/a/b/c",
        "/a/b/c d",
        "/a/b/c%2Fd",
        "/a/b/c:d@e",
        "/a/b/\u{7f}",
        "/a/b/é",
        "/a/b/\u{10ffff}",
        "/a/bc",
        "/a/b0",
        "/a/b.",
    ];
    for key in odd {
        store.create(key, key.as_bytes().to_vec()).await.expect(key);
    }
    let mut sorted: Vec<&str> = odd.to_vec();
    sorted.sort_by(|x, y| x.as_bytes().cmp(y.as_bytes()));

    let under = store
        .list("/a/b/", ListOptions::default())
        .await
        .expect("list /a/b/");
    let expected: Vec<&str> = sorted
        .iter()
        .copied()
        .filter(|k| k.starts_with("/a/b/"))
        .collect();
    assert_eq!(keys(&under.items), expected);
    let all = store
        .list("/a/b", ListOptions::default())
        .await
        .expect("list /a/b");
    assert_eq!(keys(&all.items), sorted);
    let exact = store
        .list("/a/bc", ListOptions::default())
        .await
        .expect("list /a/bc");
    assert_eq!(keys(&exact.items), ["/a/bc"]);
    for key in odd {
        let kv = store.get(key).await.expect("get").expect(key);
        assert_eq!(kv.value, key.as_bytes());
    }
    // Paging through multi-byte keys.
    let page = store
        .list("/a/b/", opts(1, Some("/a/b/é"), None))
        .await
        .expect("page after é");
    assert_eq!(keys(&page.items), ["/a/b/\u{10ffff}"]);

    // A watch on `/a/b/` sees none of `/a/bc`'s changes, in history or live.
    let mut watch = store.watch("/a/b/", before).await.expect("watch");
    for key in &expected {
        let event = next_event(&mut watch).await;
        assert_eq!(event.kv.key, *key);
    }
    let bc = store.get("/a/bc").await.expect("get").expect("/a/bc");
    store
        .update("/a/bc", b"2".to_vec(), bc.mod_revision)
        .await
        .expect("update");
    store.delete("/a/b0", None).await.expect("delete");
    assert_quiet(&mut watch).await;
    store
        .create("/a/b/z", b"z".to_vec())
        .await
        .expect("create z");
    assert_eq!(next_event(&mut watch).await.kv.key, "/a/b/z");
}

/// A watch from a revision delivers the stored history after it, then live changes, in
/// revision order, with previous values, and only under its prefix.
pub async fn watch_delivers_history_then_live(store: Arc<dyn Store>) {
    let start = store.current_revision().await.expect("current");
    let a1 = store.create("/w/a", b"a1".to_vec()).await.expect("a");
    store
        .create("/other/x", b"x".to_vec())
        .await
        .expect("other");
    let a2 = store
        .update("/w/a", b"a2".to_vec(), a1.mod_revision)
        .await
        .expect("update a");
    let b1 = store.create("/w/b", b"b1".to_vec()).await.expect("b");

    let mut watch = store.watch("/w/", start).await.expect("watch");
    let e = next_event(&mut watch).await;
    assert_eq!(
        e,
        Event {
            kind: EventKind::Put,
            kv: a1.clone(),
            prev: None
        }
    );
    let e = next_event(&mut watch).await;
    assert_eq!(
        e,
        Event {
            kind: EventKind::Put,
            kv: a2.clone(),
            prev: Some(a1.clone())
        }
    );
    let e = next_event(&mut watch).await;
    assert_eq!(
        e,
        Event {
            kind: EventKind::Put,
            kv: b1.clone(),
            prev: None
        }
    );

    // Live.
    let a3 = store
        .update("/w/a", b"a3".to_vec(), a2.mod_revision)
        .await
        .expect("update a live");
    store
        .create("/other/y", b"y".to_vec())
        .await
        .expect("other");
    let c1 = store.create("/w/c", b"c1".to_vec()).await.expect("c");
    let e = next_event(&mut watch).await;
    assert_eq!(
        e,
        Event {
            kind: EventKind::Put,
            kv: a3.clone(),
            prev: Some(a2.clone())
        }
    );
    let e = next_event(&mut watch).await;
    assert_eq!(
        e,
        Event {
            kind: EventKind::Put,
            kv: c1.clone(),
            prev: None
        }
    );
    assert_eq!(e.revision(), c1.mod_revision);
    assert_quiet(&mut watch).await;

    // A watch from the middle of history starts after that revision.
    let mut later = store
        .watch("/w/", a2.mod_revision)
        .await
        .expect("watch later");
    assert_eq!(next_event(&mut later).await.kv, b1);
    assert_eq!(next_event(&mut later).await.kv, a3);
    assert_eq!(next_event(&mut later).await.kv, c1);
    // A watch from the current revision sees only new changes.
    let now = store.current_revision().await.expect("current");
    let mut fresh = store.watch("/w/", now).await.expect("watch now");
    assert_quiet(&mut fresh).await;
    let d1 = store.create("/w/d", b"d1".to_vec()).await.expect("d");
    assert_eq!(next_event(&mut fresh).await.kv, d1);
    assert_eq!(next_event(&mut watch).await.kv, d1);
    assert_eq!(next_event(&mut later).await.kv, d1);
}

/// A delete event carries the last value with the delete's revision as `kv`, and the
/// last value with its own revision as `prev`, in history and live.
pub async fn watch_delete_events_carry_the_last_value(store: Arc<dyn Store>) {
    let start = store.current_revision().await.expect("current");
    let k1 = store
        .create("/del/k", b"v1".to_vec())
        .await
        .expect("create");
    let k2 = store
        .update("/del/k", b"v2".to_vec(), k1.mod_revision)
        .await
        .expect("update");
    let gone = store.delete("/del/k", None).await.expect("delete");
    let check = |e: Event, gone: &KeyValue, last: &KeyValue| {
        assert_eq!(e.kind, EventKind::Delete, "{e:?}");
        assert_eq!(e.kv.key, gone.key);
        assert_eq!(e.kv.mod_revision, gone.mod_revision);
        assert_eq!(e.revision(), gone.mod_revision);
        assert_eq!(
            e.kv.value, last.value,
            "a delete event carries the last value"
        );
        assert_eq!(e.prev.as_ref(), Some(last));
    };
    let mut watch = store.watch("/del/", start).await.expect("watch");
    assert_eq!(next_event(&mut watch).await.kv, k1);
    assert_eq!(next_event(&mut watch).await.kv, k2);
    check(next_event(&mut watch).await, &gone, &k2);
    // Live, and a key created again after its deletion.
    let again = store
        .create("/del/k", b"v3".to_vec())
        .await
        .expect("create again");
    let e = next_event(&mut watch).await;
    assert_eq!(
        e,
        Event {
            kind: EventKind::Put,
            kv: again.clone(),
            prev: None
        }
    );
    let gone = store
        .delete("/del/k", Some(again.mod_revision))
        .await
        .expect("delete again");
    check(next_event(&mut watch).await, &gone, &again);
}

/// A watch started while writers run delivers every change after its start revision
/// exactly once, in revision order.
pub async fn watch_during_writes_has_no_gap_and_no_duplicate(store: Arc<dyn Store>) {
    const WRITERS: usize = 4;
    const WRITES: usize = 100;
    for i in 0..20 {
        store
            .create(&format!("/g/pre{i}"), b"x".to_vec())
            .await
            .expect("create");
    }
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut revisions = Vec::new();
                for i in 0..WRITES {
                    let kv = store
                        .create(&format!("/g/w{w}-{i}"), b"v".to_vec())
                        .await
                        .expect("create");
                    revisions.push(kv.mod_revision);
                }
                revisions
            })
        })
        .collect();
    // Start while the writers run.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let from = store.current_revision().await.expect("current");
    let mut watch = store.watch("/g/", from).await.expect("watch");
    let mut written = BTreeSet::new();
    for writer in writers {
        written.extend(writer.await.expect("writer"));
    }
    let last = *written.iter().next_back().expect("writes");
    let expected: Vec<Revision> = written.into_iter().filter(|r| *r > from).collect();
    let mut seen = Vec::new();
    let mut previous = from;
    while previous < last {
        let event = next_event(&mut watch).await;
        assert!(
            event.revision() > previous,
            "out of order or duplicate: {event:?} after {previous}"
        );
        previous = event.revision();
        seen.push(previous);
    }
    assert_eq!(seen, expected, "every write after {from}, once each");
    assert_quiet(&mut watch).await;
}

/// After `compact(r)`: `compacted_revision` is `r`; lists below `r` and watches from
/// before `r` fail with `Compacted`; reads at `r` and the latest values still work;
/// compacting again lower is a no-op; compacting above the current revision fails.
pub async fn compaction_fails_old_reads_and_keeps_latest(store: Arc<dyn Store>) {
    let a1 = store.create("/k/a", b"a1".to_vec()).await.expect("a");
    let b1 = store.create("/k/b", b"b1".to_vec()).await.expect("b");
    let a2 = store
        .update("/k/a", b"a2".to_vec(), a1.mod_revision)
        .await
        .expect("update a");
    let gone = store.delete("/k/b", None).await.expect("delete b");
    let c1 = store.create("/k/c", b"c1".to_vec()).await.expect("c");
    let at = c1.mod_revision;
    let a3 = store
        .update("/k/a", b"a3".to_vec(), a2.mod_revision)
        .await
        .expect("update a again");

    assert_eq!(store.compacted_revision().await.expect("compacted"), 0);
    store.compact(at).await.expect("compact");
    assert_eq!(store.compacted_revision().await.expect("compacted"), at);

    let err = store
        .list("/k/", opts(0, None, Some(b1.mod_revision)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Compacted { requested, compacted }
            if requested == b1.mod_revision && compacted == at),
        "{err:?}"
    );
    let err = store
        .list("/k/", opts(0, None, Some(at - 1)))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Compacted { .. }), "{err:?}");
    let at_compacted = store
        .list("/k/", opts(0, None, Some(at)))
        .await
        .expect("list at the compacted revision");
    assert_eq!(at_compacted.items, vec![a2.clone(), c1.clone()]);
    let now = store
        .list("/k/", ListOptions::default())
        .await
        .expect("list");
    assert_eq!(now.items, vec![a3.clone(), c1.clone()]);
    assert_eq!(store.get("/k/a").await.expect("get"), Some(a3.clone()));

    assert_watch_compacted(&*store, "/k/", a1.mod_revision, at).await;
    assert_watch_compacted(&*store, "/k/", gone.mod_revision - 1, at).await;
    let mut watch = store
        .watch("/k/", at)
        .await
        .expect("watch from the compacted revision");
    let e = next_event(&mut watch).await;
    assert_eq!(e.kv, a3);
    assert_eq!(
        e.prev.as_ref().map(|p| p.mod_revision),
        Some(a2.mod_revision)
    );

    store
        .compact(at - 1)
        .await
        .expect("compacting lower is a no-op");
    store
        .compact(at)
        .await
        .expect("compacting again is a no-op");
    assert_eq!(store.compacted_revision().await.expect("compacted"), at);
    let current = store.current_revision().await.expect("current");
    let err = store.compact(current + 10).await.unwrap_err();
    assert!(
        matches!(err, StoreError::FutureRevision { requested, .. } if requested == current + 10),
        "{err:?}"
    );
    assert_eq!(store.compacted_revision().await.expect("compacted"), at);
    // Writes go on with new revisions.
    let d = store
        .create("/k/d", b"d".to_vec())
        .await
        .expect("create after compaction");
    assert!(d.mod_revision > current);
    assert_eq!(next_event(&mut watch).await.kv, d);
}

/// Writers racing on shared keys with read-then-CAS loops lose no update, and every
/// successful write has its own revision.
pub async fn concurrent_cas_writers_lose_no_update(store: Arc<dyn Store>) {
    const TASKS: usize = 8;
    const INCREMENTS: usize = 200;
    const KEYS: usize = 3;
    for k in 0..KEYS {
        store
            .create(&format!("/n/counter{k}"), b"0".to_vec())
            .await
            .expect("create counter");
    }
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut revisions = Vec::with_capacity(INCREMENTS);
                let mut conflicts = 0usize;
                for i in 0..INCREMENTS {
                    let key = format!("/n/counter{}", (t + i) % KEYS);
                    loop {
                        let kv = store.get(&key).await.expect("get").expect("counter");
                        let n: u64 = std::str::from_utf8(&kv.value)
                            .expect("utf-8")
                            .parse()
                            .expect("number");
                        match store
                            .update(&key, (n + 1).to_string().into_bytes(), kv.mod_revision)
                            .await
                        {
                            Ok(new) => {
                                revisions.push(new.mod_revision);
                                break;
                            }
                            Err(StoreError::Conflict { .. }) => conflicts += 1,
                            Err(e) => panic!("update {key}: {e}"),
                        }
                    }
                }
                (revisions, conflicts)
            })
        })
        .collect();
    let mut revisions = BTreeSet::new();
    let mut count = 0;
    for task in tasks {
        let (mine, _conflicts) = task.await.expect("task");
        count += mine.len();
        revisions.extend(mine);
    }
    assert_eq!(count, TASKS * INCREMENTS);
    assert_eq!(
        revisions.len(),
        count,
        "every successful write has its own revision"
    );
    let mut per_key = BTreeMap::new();
    for t in 0..TASKS {
        for i in 0..INCREMENTS {
            *per_key
                .entry(format!("/n/counter{}", (t + i) % KEYS))
                .or_insert(0u64) += 1;
        }
    }
    let list = store
        .list("/n/", ListOptions::default())
        .await
        .expect("list");
    for kv in &list.items {
        let n: u64 = std::str::from_utf8(&kv.value)
            .expect("utf-8")
            .parse()
            .expect("number");
        assert_eq!(Some(&n), per_key.get(&kv.key), "{}", kv.key);
    }
    assert_eq!(list.items.len(), KEYS);
    let last = *revisions.iter().next_back().expect("revisions");
    assert_eq!(store.current_revision().await.expect("current"), last);
}

/// Values of 1.5 MB are stored, read, listed and watched whole.
pub async fn large_values_round_trip(store: Arc<dyn Store>) {
    let big = |seed: u8| -> Vec<u8> { (0..1_500_000u32).map(|i| (i % 251) as u8 ^ seed).collect() };
    let start = store.current_revision().await.expect("current");
    let v1 = store.create("/big/a", big(1)).await.expect("create big");
    assert_eq!(v1.value.len(), 1_500_000);
    let v2 = store
        .update("/big/a", big(2), v1.mod_revision)
        .await
        .expect("update big");
    store
        .create("/big/b", big(3))
        .await
        .expect("create second big");
    assert_eq!(
        store.get("/big/a").await.expect("get").map(|kv| kv.value),
        Some(big(2))
    );
    let list = store
        .list("/big/", ListOptions::default())
        .await
        .expect("list");
    assert_eq!(list.items.len(), 2);
    assert_eq!(list.items[0].value, big(2));
    assert_eq!(list.items[1].value, big(3));
    let mut watch = store.watch("/big/", start).await.expect("watch");
    assert_eq!(next_event(&mut watch).await.kv, v1);
    let e = next_event(&mut watch).await;
    assert_eq!(e.kv, v2);
    assert_eq!(e.prev, Some(v1));
    assert_eq!(next_event(&mut watch).await.kv.value, big(3));
    let gone = store.delete("/big/a", None).await.expect("delete big");
    let e = next_event(&mut watch).await;
    assert_eq!(e.kind, EventKind::Delete);
    assert_eq!(e.kv.mod_revision, gone.mod_revision);
    assert_eq!(e.kv.value, big(2));
}
