//! The watch cache: one store watch feeds an in-memory copy of every object and a window
//! of recent events, from which lists and watches are served (so N watchers cost one
//! store watch, as upstream's cacher).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use rk3s_store::{EventKind, Revision, Store, StoreError};
use serde_json::Value;
use tokio::sync::{broadcast, watch};

/// How many recent events the cache keeps for watches that start in the past.
const HISTORY: usize = 20_000;

/// A cached object: its key, revision and parsed JSON (with `metadata.resourceVersion`).
#[derive(Clone, Debug)]
pub struct CachedObject {
    /// Store key.
    pub key: String,
    /// Mod revision.
    pub revision: Revision,
    /// The object, with `metadata.resourceVersion` set.
    pub object: Arc<Value>,
    /// `object` serialized (JSON), so lists are answered without re-encoding.
    pub raw: bytes::Bytes,
}

impl CachedObject {
    fn new(key: String, revision: Revision, object: Arc<Value>) -> CachedObject {
        let raw = bytes::Bytes::from(serde_json::to_vec(&*object).unwrap_or_default());
        CachedObject { key, revision, object, raw }
    }
}

/// The kind of a cache event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheEventKind {
    /// Created.
    Added,
    /// Updated.
    Modified,
    /// Deleted.
    Deleted,
}

/// One change seen by the cache.
#[derive(Clone, Debug)]
pub struct CacheEvent {
    /// What happened.
    pub kind: CacheEventKind,
    /// The store key.
    pub key: String,
    /// Revision of the change.
    pub revision: Revision,
    /// The object after the change (for a delete: the last state, with the delete's
    /// resourceVersion).
    pub object: Arc<Value>,
    /// The object before the change, if any.
    pub prev: Option<Arc<Value>>,
    /// `object` serialized once (JSON), shared by every watcher.
    pub raw: bytes::Bytes,
}

struct State {
    objects: BTreeMap<String, CachedObject>,
    history: VecDeque<Arc<CacheEvent>>,
    revision: Revision,
    /// Events older than this revision are no longer in `history`.
    oldest: Revision,
}

/// The watch cache over all of `/registry/`.
pub struct WatchCache {
    store: Arc<dyn Store>,
    state: RwLock<State>,
    events: broadcast::Sender<Arc<CacheEvent>>,
    progress: watch::Sender<Revision>,
    /// Bumped whenever an RBAC object changes (the authorizer rebuilds on change).
    pub rbac_generation: std::sync::atomic::AtomicU64,
}

/// Parses stored bytes and sets `metadata.resourceVersion`.
pub fn decode(value: &[u8], revision: Revision) -> Option<Value> {
    let mut v: Value = serde_json::from_slice(value).ok()?;
    set_resource_version(&mut v, revision);
    Some(v)
}

/// Sets `metadata.resourceVersion` to the given revision.
pub fn set_resource_version(v: &mut Value, revision: Revision) {
    if let Some(obj) = v.as_object_mut() {
        let meta = obj.entry("metadata").or_insert_with(|| Value::Object(Default::default()));
        if let Some(m) = meta.as_object_mut() {
            m.insert("resourceVersion".into(), Value::String(revision.to_string()));
        }
    }
}

/// What a watcher gets when it subscribes: the events it missed, then a live receiver.
pub struct Subscription {
    /// Events after the requested revision that already happened.
    pub backlog: Vec<Arc<CacheEvent>>,
    /// Live events (may repeat some of `backlog`: skip revisions ≤ the last one seen).
    pub live: broadcast::Receiver<Arc<CacheEvent>>,
}

impl WatchCache {
    /// Loads everything under `/registry/` and starts following the store.
    pub async fn start(store: Arc<dyn Store>) -> Result<Arc<WatchCache>, StoreError> {
        let list = store.list("/registry/", Default::default()).await?;
        let mut objects = BTreeMap::new();
        for kv in list.items {
            if let Some(v) = decode(&kv.value, kv.mod_revision) {
                objects.insert(
                    kv.key.clone(),
                    CachedObject::new(kv.key, kv.mod_revision, Arc::new(v)),
                );
            }
        }
        let (events, _) = broadcast::channel(HISTORY);
        let (progress, _) = watch::channel(list.revision);
        let cache = Arc::new(WatchCache {
            store: store.clone(),
            state: RwLock::new(State { objects, history: VecDeque::new(), revision: list.revision, oldest: list.revision }),
            events,
            progress,
            rbac_generation: std::sync::atomic::AtomicU64::new(1),
        });
        let c = cache.clone();
        tokio::spawn(async move { c.follow(list.revision).await });
        Ok(cache)
    }

    async fn follow(self: Arc<Self>, mut from: Revision) {
        loop {
            match self.store.watch("/registry/", from).await {
                Ok(mut stream) => {
                    while let Some(ev) = stream.next().await {
                        match ev {
                            Ok(ev) => {
                                from = ev.revision();
                                self.apply(ev);
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "watch cache: store watch ended");
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "watch cache: cannot watch the store");
                    if let StoreError::Compacted { .. } = e {
                        // We fell behind compaction: reload everything.
                        if let Ok(r) = self.reload().await {
                            from = r;
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn reload(&self) -> Result<Revision, StoreError> {
        let list = self.store.list("/registry/", Default::default()).await?;
        let mut objects = BTreeMap::new();
        for kv in list.items {
            if let Some(v) = decode(&kv.value, kv.mod_revision) {
                objects.insert(kv.key.clone(), CachedObject::new(kv.key, kv.mod_revision, Arc::new(v)));
            }
        }
        if let Ok(mut st) = self.state.write() {
            st.objects = objects;
            st.history.clear();
            st.revision = list.revision;
            st.oldest = list.revision;
        }
        self.rbac_generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.progress.send_replace(list.revision);
        Ok(list.revision)
    }

    fn apply(&self, ev: rk3s_store::Event) {
        let rev = ev.revision();
        let Some(object) = decode(&ev.kv.value, rev) else {
            tracing::warn!(key = %ev.kv.key, "watch cache: undecodable value");
            return;
        };
        let object = Arc::new(object);
        let raw = bytes::Bytes::from(serde_json::to_vec(&*object).unwrap_or_default());
        let mut st = match self.state.write() {
            Ok(s) => s,
            Err(_) => return,
        };
        let prev = st.objects.get(&ev.kv.key).map(|o| o.object.clone());
        let kind = match ev.kind {
            EventKind::Delete => {
                st.objects.remove(&ev.kv.key);
                CacheEventKind::Deleted
            }
            EventKind::Put => {
                st.objects.insert(
                    ev.kv.key.clone(),
                    CachedObject { key: ev.kv.key.clone(), revision: rev, object: object.clone(), raw: raw.clone() },
                );
                if prev.is_some() {
                    CacheEventKind::Modified
                } else {
                    CacheEventKind::Added
                }
            }
        };
        if ev.kv.key.starts_with("/registry/rbac.authorization.k8s.io/") {
            self.rbac_generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        let cev = Arc::new(CacheEvent { kind, key: ev.kv.key, revision: rev, object, prev, raw });
        st.history.push_back(cev.clone());
        while st.history.len() > HISTORY {
            if let Some(old) = st.history.pop_front() {
                st.oldest = old.revision;
            }
        }
        st.revision = rev;
        // Broadcast while still holding the write lock: whoever reads `revision() >= rev`
        // (or subscribes under the read lock) then knows event `rev` is already in the
        // channel or in `history`. A watcher can therefore drain its receiver and send
        // a bookmark at the revision it read without running ahead of its events, and
        // `subscribe` splits history and live events without a gap.
        let _ = self.events.send(cev);
        drop(st);
        self.progress.send_replace(rev);
    }

    /// The newest revision the cache has seen.
    pub fn revision(&self) -> Revision {
        self.state.read().map(|s| s.revision).unwrap_or(0)
    }

    /// Waits until the cache has caught up with the store's current revision (a
    /// consistent read), at most `timeout`. Returns that store revision: when the wait
    /// timed out the cache is still older than it (compare with [`WatchCache::revision`]),
    /// and nothing read from the cache may be labelled with it.
    pub async fn wait_fresh(&self, timeout: Duration) -> Result<Revision, StoreError> {
        let want = self.store.current_revision().await?;
        self.wait_for(want, timeout).await;
        Ok(want)
    }

    /// Waits until the cache has seen revision `rev` (or the timeout passes).
    pub async fn wait_for(&self, rev: Revision, timeout: Duration) {
        let mut rx = self.progress.subscribe();
        let _ = tokio::time::timeout(timeout, async {
            loop {
                if *rx.borrow_and_update() >= rev {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    /// Every object under `prefix`, in key order, with the cache's revision.
    pub fn list(&self, prefix: &str) -> (Vec<CachedObject>, Revision) {
        let st = match self.state.read() {
            Ok(s) => s,
            Err(_) => return (Vec::new(), 0),
        };
        let items = st
            .objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect();
        (items, st.revision)
    }

    /// How many objects the cache holds.
    pub fn len(&self) -> usize {
        self.state.read().map(|s| s.objects.len()).unwrap_or(0)
    }

    /// Whether the cache holds no object.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One object by key.
    pub fn get(&self, key: &str) -> Option<CachedObject> {
        self.state.read().ok()?.objects.get(key).cloned()
    }

    /// Subscribes to events after `after` (`None`: after the current revision).
    /// `Err(oldest)` if `after` is older than the cache's history.
    pub fn subscribe(&self, after: Option<Revision>) -> Result<(Subscription, Revision), Revision> {
        let st = match self.state.read() {
            Ok(s) => s,
            Err(_) => return Err(0),
        };
        let live = self.events.subscribe();
        let after = after.unwrap_or(st.revision);
        if after < st.oldest {
            return Err(st.oldest);
        }
        let backlog: Vec<Arc<CacheEvent>> =
            st.history.iter().filter(|e| e.revision > after).cloned().collect();
        Ok((Subscription { backlog, live }, st.revision))
    }

    /// A snapshot of `prefix` plus a subscription to everything after it, atomically.
    pub fn snapshot_and_subscribe(&self, prefix: &str) -> (Vec<CachedObject>, Revision, broadcast::Receiver<Arc<CacheEvent>>) {
        let st = match self.state.read() {
            Ok(s) => s,
            Err(_) => return (Vec::new(), 0, self.events.subscribe()),
        };
        let live = self.events.subscribe();
        let items = st
            .objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect();
        (items, st.revision, live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn consistent_read_sees_the_latest_write_without_waiting_for_another() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(rk3s_store::sqlite::SqliteStore::open(&dir.path().join("db")).expect("open"));
        let cache = WatchCache::start(store.clone()).await.expect("cache");
        for i in 0..5 {
            let kv = store.create(&format!("/registry/core/configmaps/default/c{i}"), br#"{"metadata":{"name":"x"}}"#.to_vec()).await.expect("create");
            // The cache must notice each revision on its own (no later write needed):
            // wait_for with a very long timeout must return well before it.
            let waited = tokio::time::timeout(Duration::from_secs(30), cache.wait_for(kv.mod_revision, Duration::from_secs(3600))).await;
            assert!(waited.is_ok(), "cache never reported revision {}", kv.mod_revision);
            assert!(cache.get(&kv.key).is_some());
        }
        let (items, rev) = cache.list("/registry/core/configmaps/");
        assert_eq!(items.len(), 5);
        assert_eq!(items[0].object["metadata"]["resourceVersion"], "1");
        assert!(rev >= 5);
        let (sub, _) = cache.subscribe(Some(2)).map_err(|_| "expired").expect("subscribe");
        assert_eq!(sub.backlog.iter().map(|e| e.revision).collect::<Vec<_>>(), vec![3, 4, 5]);
    }

    const KEY: &str = "/registry/core/configmaps/default/x";

    fn cm(uid: &str, data: &str) -> Vec<u8> {
        format!(r#"{{"metadata":{{"name":"x","namespace":"default","uid":"{uid}"}},"data":{{"v":"{data}"}}}}"#).into_bytes()
    }

    async fn open() -> (tempfile::TempDir, Arc<dyn Store>, Arc<WatchCache>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(rk3s_store::sqlite::SqliteStore::open(&dir.path().join("db")).expect("open"));
        let cache = WatchCache::start(store.clone()).await.expect("cache");
        (dir, store, cache)
    }

    fn uid(v: &Value) -> String {
        v["metadata"]["uid"].as_str().unwrap_or_default().to_string()
    }

    /// What a watcher from `after` delivers for keys under `prefix`, up to revision
    /// `until`, deduplicated exactly as `watch.rs` does (skip revisions already seen).
    async fn drain(sub: Subscription, after: Revision, prefix: &str, until: Revision) -> Vec<(CacheEventKind, Revision, String)> {
        let mut out = Vec::new();
        let mut last = after;
        let take = |ev: &CacheEvent, last: &mut Revision, out: &mut Vec<_>| {
            if ev.revision > *last {
                *last = ev.revision;
                if ev.key.starts_with(prefix) {
                    out.push((ev.kind, ev.revision, uid(&ev.object)));
                }
            }
        };
        for ev in &sub.backlog {
            take(ev, &mut last, &mut out);
        }
        let mut live = sub.live;
        while last < until {
            let ev = tokio::time::timeout(Duration::from_secs(10), live.recv()).await.expect("event in time").expect("live event");
            take(&ev, &mut last, &mut out);
        }
        out
    }

    #[tokio::test]
    async fn list_then_watch_from_its_revision_sees_delete_and_recreate_exactly_once() {
        let (_dir, store, cache) = open().await;
        let kv = store.create(KEY, cm("old", "1")).await.expect("create");
        cache.wait_for(kv.mod_revision, Duration::from_secs(10)).await;
        let (items, r) = cache.list("/registry/core/configmaps/default/");
        assert_eq!(r, kv.mod_revision, "the list is labelled with the state it shows");
        assert_eq!(items.iter().map(|o| uid(&o.object)).collect::<Vec<_>>(), vec!["old"]);

        // A watcher that subscribes before the changes (all live), one in the middle
        // (history + live), one after (all history).
        let before = cache.subscribe(Some(r)).map_err(|_| "expired").expect("subscribe").0;
        let del = store.delete(KEY, None).await.expect("delete");
        assert_eq!(del.mod_revision, r + 1);
        cache.wait_for(r + 1, Duration::from_secs(10)).await;
        let middle = cache.subscribe(Some(r)).map_err(|_| "expired").expect("subscribe").0;
        let new = store.create(KEY, cm("new", "1")).await.expect("recreate");
        assert_eq!(new.mod_revision, r + 2);
        let upd = store.update(KEY, cm("new", "2"), r + 2).await.expect("update");
        cache.wait_for(upd.mod_revision, Duration::from_secs(10)).await;
        let after = cache.subscribe(Some(r)).map_err(|_| "expired").expect("subscribe").0;

        let want = vec![
            (CacheEventKind::Deleted, r + 1, "old".to_string()),
            (CacheEventKind::Added, r + 2, "new".to_string()),
            (CacheEventKind::Modified, r + 3, "new".to_string()),
        ];
        for (name, sub) in [("before", before), ("middle", middle), ("after", after)] {
            assert_eq!(drain(sub, r, KEY, r + 3).await, want, "watcher subscribed {name} the changes");
        }
        // The DELETED event carries the object's last state at the delete's revision.
        let (sub, _) = cache.subscribe(Some(r)).map_err(|_| "expired").expect("subscribe");
        let d = &sub.backlog[0];
        assert_eq!(d.kind, CacheEventKind::Deleted);
        assert_eq!(d.object["metadata"]["resourceVersion"], (r + 1).to_string());
        assert_eq!(d.object["metadata"]["name"], "x");
        assert_eq!(d.prev.as_ref().map(|p| uid(p)), Some("old".to_string()));
        // A watch from r + 1 (a list taken after the delete) starts at the re-creation.
        let (sub, _) = cache.subscribe(Some(r + 1)).map_err(|_| "expired").expect("subscribe");
        assert_eq!(drain(sub, r + 1, KEY, r + 3).await, want[1..].to_vec());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lists_taken_during_delete_recreate_churn_resume_into_watches_without_gaps() {
        let (_dir, store, cache) = open().await;
        let prefix = "/registry/core/configmaps/default/";
        let kv = store.create(KEY, cm("u0", "0")).await.expect("create");
        cache.wait_for(kv.mod_revision, Duration::from_secs(10)).await;
        // The writer deletes and re-creates x (as a kubelet re-creates a mirror pod),
        // with unrelated writes in between; readers list and then subscribe from the
        // list's revision while it runs, as a client's LIST then WATCH.
        const ROUNDS: usize = 150;
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                let mut last = 0;
                for i in 1..=ROUNDS {
                    store.delete(KEY, None).await.expect("delete");
                    last = store.create(KEY, cm(&format!("u{i}"), "0")).await.expect("create").mod_revision;
                    store.create(&format!("/registry/core/configmaps/other/n{i}"), cm("n", "0")).await.expect("noise");
                }
                last
            })
        };
        let mut taken = Vec::new();
        while !writer.is_finished() {
            let (items, r) = cache.list(prefix);
            tokio::task::yield_now().await;
            let sub = cache.subscribe(Some(r)).map_err(|_| "expired").expect("subscribe").0;
            taken.push((items.first().map(|o| uid(&o.object)), r, sub));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let end = writer.await.expect("writer");
        assert!(taken.len() >= 5, "only {} lists during the churn", taken.len());
        for (listed, r, sub) in taken {
            let events = drain(sub, r, prefix, end).await;
            // Ground truth: the store's own history after r.
            let mut truth = Vec::new();
            let mut stream = store.watch(prefix, r).await.expect("store watch");
            while truth.last().map(|(_, rev, _)| *rev).unwrap_or(r) < end {
                let ev = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("store event in time").expect("stream open").expect("store event");
                let kind = if ev.kind == EventKind::Delete { CacheEventKind::Deleted } else if ev.prev.is_some() { CacheEventKind::Modified } else { CacheEventKind::Added };
                let v: Value = serde_json::from_slice(&ev.kv.value).expect("json");
                truth.push((kind, ev.revision(), uid(&v)));
            }
            assert_eq!(events, truth, "watch from list revision {r}");
            // Replaying the events on the listed state is consistent: every DELETED
            // removes the object the client holds, every ADDED finds none.
            let mut have = listed;
            for (kind, rev, u) in &events {
                match kind {
                    CacheEventKind::Deleted => assert_eq!(have.take().as_deref(), Some(u.as_str()), "DELETED at {rev} of an object the client does not hold"),
                    CacheEventKind::Added => assert!(have.replace(u.clone()).is_none(), "ADDED at {rev} over a held object"),
                    CacheEventKind::Modified => assert_eq!(have.as_deref(), Some(u.as_str())),
                }
            }
            assert_eq!(have, Some(format!("u{ROUNDS}")));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revision_the_cache_reports_is_already_in_every_subscribers_channel() {
        // What a bookmark relies on: once `revision()` says r, a subscriber can drain
        // its receiver and will have received every event up to r.
        let (_dir, store, cache) = open().await;
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..300 {
                    store.create(&format!("/registry/core/configmaps/default/c{i}"), cm("u", "0")).await.expect("create");
                }
            })
        };
        let (sub, start) = cache.subscribe(None).map_err(|_| "expired").expect("subscribe");
        let mut live = sub.live;
        let mut last = start;
        let mut checks = 0;
        while !writer.is_finished() {
            let seen = cache.revision();
            loop {
                match live.try_recv() {
                    Ok(ev) => last = last.max(ev.revision),
                    Err(broadcast::error::TryRecvError::Empty) => break,
                    Err(e) => panic!("receiver failed: {e}"),
                }
            }
            assert!(last >= seen, "cache reported revision {seen} but the subscriber had only received up to {last}");
            checks += 1;
            tokio::task::yield_now().await;
        }
        writer.await.expect("writer");
        assert!(checks > 10, "only {checks} checks");
    }
}
