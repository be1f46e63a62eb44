//! Shared informers (upstream's `SharedInformerFactory`): ONE watch and ONE reflector
//! store per resource type for every controller of a leadership term, instead of a watch
//! (and a full copy of every object) per controller.
//!
//! [`SharedInformers::store`] gives the shared [`Store`]; [`SharedInformers::subscribe`]
//! gives a stream of the changed objects (the `Arc`s held by the store, so no copies), for
//! `Controller::owns_shared_stream`/`watches_shared_stream`; [`SharedInformers::changes`]
//! gives the same with the kind of each change (applied or deleted), for consumers that
//! must tell deletions apart (the garbage collector's graph); [`SharedInformers::cache`]
//! is the shared counterpart of [`crate::endpoints::cache`] (a store whose changes wake a
//! `Notify`).

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use futures_util::{Stream, StreamExt};
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, Notify};

/// How many change notifications a slow subscriber may fall behind before it resyncs
/// from the store.
const CHANNEL_CAPACITY: usize = 1024;

/// The bounds of a resource type an informer can serve.
pub trait InformerResource:
    kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
}
impl<K> InformerResource for K where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
}

/// A change of a shared informer's store, as [`SharedInformers::changes`] yields it.
#[derive(Debug)]
pub enum Change<K> {
    /// The object was added or modified (the store's own `Arc`).
    Applied(Arc<K>),
    /// The object was deleted (as last seen), including objects found gone by a relist.
    Deleted(Arc<K>),
    /// The subscriber fell behind and missed changes: this is the whole store now.
    Resync(Vec<Arc<K>>),
}

impl<K> Clone for Change<K> {
    fn clone(&self) -> Self {
        match self {
            Change::Applied(o) => Change::Applied(o.clone()),
            Change::Deleted(o) => Change::Deleted(o.clone()),
            Change::Resync(v) => Change::Resync(v.clone()),
        }
    }
}

/// One shared informer: the store and the channel of its changes.
struct Informer<K: InformerResource> {
    store: Store<K>,
    tx: broadcast::Sender<Change<K>>,
    synced: tokio::sync::watch::Receiver<bool>,
    indexes: Indexes<K>,
}

/// What [`SharedInformers::informer`] hands out.
type Parts<K> = (
    Store<K>,
    broadcast::Sender<Change<K>>,
    tokio::sync::watch::Receiver<bool>,
    Indexes<K>,
);

/// The indexes registered on one informer (kept up to date by its watch task).
type Indexes<K> = Arc<Mutex<Vec<Arc<Index<K>>>>>;

/// The keys an object is indexed under (upstream's `IndexFunc`).
pub type IndexFn<K> = fn(&K) -> Vec<String>;

/// A secondary index of an informer's store (upstream's `cache.Indexer`): objects by the
/// keys an [`IndexFn`] gives them, so a controller looks up "pods of owner X" or "pods
/// on node Y" without scanning the whole store.
pub struct Index<K: InformerResource> {
    func: IndexFn<K>,
    state: std::sync::RwLock<IndexState<K>>,
}

struct IndexState<K: InformerResource> {
    by_key: HashMap<String, HashMap<ObjectRef<K>, Arc<K>>>,
    keys_of: HashMap<ObjectRef<K>, Vec<String>>,
}

impl<K: InformerResource> Index<K> {
    /// An empty index computing keys with `func`.
    pub fn new(func: IndexFn<K>) -> Self {
        Index {
            func,
            state: std::sync::RwLock::new(IndexState {
                by_key: HashMap::new(),
                keys_of: HashMap::new(),
            }),
        }
    }

    /// The objects indexed under `key` (in no particular order).
    pub fn get(&self, key: &str) -> Vec<Arc<K>> {
        let st = match self.state.read() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        st.by_key
            .get(key)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// How many objects are indexed under `key`.
    pub fn count(&self, key: &str) -> usize {
        let st = match self.state.read() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        st.by_key.get(key).map_or(0, |m| m.len())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, IndexState<K>> {
        match self.state.write() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Indexes (or re-indexes) an added or changed object.
    pub fn apply(&self, obj: Arc<K>) {
        let r = ObjectRef::from_obj(&*obj);
        let keys = (self.func)(&obj);
        let mut st = self.write();
        Self::remove_locked(&mut st, &r);
        for k in &keys {
            st.by_key
                .entry(k.clone())
                .or_default()
                .insert(r.clone(), obj.clone());
        }
        if !keys.is_empty() {
            st.keys_of.insert(r, keys);
        }
    }

    /// Drops a deleted object.
    pub fn delete(&self, obj: &K) {
        let r = ObjectRef::from_obj(obj);
        Self::remove_locked(&mut self.write(), &r);
    }

    /// Replaces the whole content (after a relist).
    pub fn rebuild(&self, objs: Vec<Arc<K>>) {
        let mut st = self.write();
        st.by_key.clear();
        st.keys_of.clear();
        drop(st);
        for o in objs {
            self.apply(o);
        }
    }

    fn remove_locked(st: &mut IndexState<K>, r: &ObjectRef<K>) {
        if let Some(old) = st.keys_of.remove(r) {
            for k in old {
                if let Some(m) = st.by_key.get_mut(&k) {
                    m.remove(r);
                    if m.is_empty() {
                        st.by_key.remove(&k);
                    }
                }
            }
        }
    }
}

/// Index function: the UID of the object's controller (owner reference with
/// `controller: true`), for "pods of this ReplicaSet/Job/StatefulSet/DaemonSet".
pub fn by_controller_uid<K: kube::Resource>(obj: &K) -> Vec<String> {
    obj.meta()
        .owner_references
        .iter()
        .flatten()
        .filter(|r| r.controller == Some(true))
        .map(|r| r.uid.clone())
        .take(1)
        .collect()
}

/// Index function: the namespace of objects without a controller (orphans a controller
/// may adopt).
pub fn orphans_by_namespace<K: kube::Resource>(obj: &K) -> Vec<String> {
    let controlled = obj
        .meta()
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true));
    if controlled {
        return Vec::new();
    }
    vec![obj.meta().namespace.clone().unwrap_or_default()]
}

/// Index function: the namespace of an object.
pub fn by_namespace<K: kube::Resource>(obj: &K) -> Vec<String> {
    vec![obj.meta().namespace.clone().unwrap_or_default()]
}

/// Index function: the node a pod is bound to (`spec.nodeName`).
pub fn pods_by_node(pod: &k8s_openapi::api::core::v1::Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty())
        .into_iter()
        .collect()
}

/// A shared store with its index by controller UID: what a workload controller needs to
/// find "the objects I control" (pods, ControllerRevisions) without an API call.
pub struct OwnedCache<K: InformerResource> {
    /// The shared store.
    pub store: Store<K>,
    /// Objects by the UID of their controller.
    pub by_owner: Arc<Index<K>>,
}

impl<K: InformerResource> Clone for OwnedCache<K> {
    fn clone(&self) -> Self {
        OwnedCache {
            store: self.store.clone(),
            by_owner: self.by_owner.clone(),
        }
    }
}

impl<K: InformerResource> OwnedCache<K> {
    /// The objects in `ns` controlled by the object of `uid` whose labels `sel` matches,
    /// as copies (for the pure planning functions), sorted by name.
    pub fn owned_matching(
        &self,
        uid: &str,
        ns: &str,
        sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    ) -> Vec<K> {
        let mut v: Vec<K> = self
            .by_owner
            .get(uid)
            .into_iter()
            .filter(|o| o.meta().namespace.as_deref() == Some(ns))
            .filter(|o| {
                crate::workload_util::selector_matches(
                    sel,
                    o.meta()
                        .labels
                        .as_ref()
                        .unwrap_or(&std::collections::BTreeMap::new()),
                )
            })
            .map(|o| (*o).clone())
            .collect();
        v.sort_by(|a, b| a.meta().name.cmp(&b.meta().name));
        v
    }

    /// The cached object `ns/name`.
    pub fn get(&self, ns: &str, name: &str) -> Option<Arc<K>> {
        self.store.get(&ObjectRef::new(name).within(ns))
    }
}

/// The registry of shared informers of one leadership term. Cloning is cheap (all clones
/// share the informers); the watches stop when the last clone is dropped (or [`Self::stop`]).
#[derive(Clone)]
pub struct SharedInformers {
    client: kube::Client,
    inner: Arc<Inner>,
}

struct Inner {
    informers: Mutex<HashMap<TypeId, Box<dyn Any + Send + Sync>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.get_mut() {
            for t in tasks.drain(..) {
                t.abort();
            }
        }
    }
}

impl SharedInformers {
    /// A registry whose informers watch through `client` (cluster-wide).
    pub fn new(client: kube::Client) -> Self {
        SharedInformers {
            client,
            inner: Arc::new(Inner {
                informers: Mutex::new(HashMap::new()),
                tasks: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Stops every watch of this registry (the stores stay readable but go stale).
    pub fn stop(&self) {
        if let Ok(mut tasks) = self.inner.tasks.lock() {
            for t in tasks.drain(..) {
                t.abort();
            }
        }
    }

    /// The informer of `K`, started (one cluster-wide watch) on first use.
    fn informer<K: InformerResource>(&self) -> Parts<K> {
        let mut map = match self.inner.informers.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(inf) = map
            .get(&TypeId::of::<K>())
            .and_then(|b| b.downcast_ref::<Informer<K>>())
        {
            return (
                inf.store.clone(),
                inf.tx.clone(),
                inf.synced.clone(),
                inf.indexes.clone(),
            );
        }
        let (store, writer) = reflector::store::<K>();
        let (tx, _) = broadcast::channel(CHANNEL_CAPACITY);
        let api: Api<K> = Api::all(self.client.clone());
        let (synced_tx, synced) = tokio::sync::watch::channel(false);
        let indexes: Indexes<K> = Arc::new(Mutex::new(Vec::new()));
        let handle = tokio::spawn(run_informer(
            api,
            writer,
            store.clone(),
            tx.clone(),
            synced_tx,
            indexes.clone(),
        ));
        match self.inner.tasks.lock() {
            Ok(mut t) => t.push(handle),
            Err(poisoned) => poisoned.into_inner().push(handle),
        }
        map.insert(
            TypeId::of::<K>(),
            Box::new(Informer {
                store: store.clone(),
                tx: tx.clone(),
                synced: synced.clone(),
                indexes: indexes.clone(),
            }),
        );
        (store, tx, synced, indexes)
    }

    /// A secondary index of `K`'s shared store by `func` (one per function for every
    /// controller), once the store holds its first complete list.
    pub async fn index<K: InformerResource>(&self, func: IndexFn<K>) -> Arc<Index<K>> {
        let (store, _, mut synced, indexes) = self.informer::<K>();
        let _ = synced.wait_for(|s| *s).await;
        let mut list = match indexes.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(i) = list.iter().find(|i| std::ptr::fn_addr_eq(i.func, func)) {
            return i.clone();
        }
        // Under the lock the watch task cannot update indexes: fill from the store, then
        // every later event (including ones already in the store) is applied on top.
        let idx = Arc::new(Index::new(func));
        idx.rebuild(store.state());
        list.push(idx.clone());
        idx
    }

    /// The shared store of `K` with its controller-UID index, once synced.
    pub async fn owned_cache<K: InformerResource>(&self) -> OwnedCache<K> {
        let by_owner = self.index::<K>(by_controller_uid::<K>).await;
        OwnedCache {
            store: self.store::<K>().await,
            by_owner,
        }
    }

    /// The shared store of `K`, once it holds its first complete list. (Not kube's
    /// `Store::wait_until_ready`: that wakes only one of several concurrent waiters.)
    pub async fn store<K: InformerResource>(&self) -> Store<K> {
        let (store, _, mut synced, _) = self.informer::<K>();
        // An error means the informer stopped: the store stays as it is.
        let _ = synced.wait_for(|s| *s).await;
        store
    }

    /// A stream of the objects of `K` that change from now on (deleted ones included, as
    /// last seen). A subscriber that falls too far behind gets every object of the store
    /// again instead of the changes it missed.
    pub fn subscribe<K: InformerResource>(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let (store, tx, _, _) = self.informer::<K>();
        subscription(store, tx.subscribe())
    }

    /// A stream of the changes of `K` from now on, each saying whether the object was
    /// applied or deleted; a subscriber that falls too far behind gets
    /// [`Change::Resync`] with the whole store. Subscribe before reading the store (e.g.
    /// with [`Self::store`]) so that no change in between is missed.
    pub fn changes<K: InformerResource>(&self) -> impl Stream<Item = Change<K>> + Send + 'static {
        let (store, tx, _, _) = self.informer::<K>();
        change_subscription(store, tx.subscribe())
    }

    /// The shared store of `K` once it holds its first complete list; every change of it
    /// wakes `notify` (through a task of `tasks`, which stops when `tasks` is aborted).
    pub async fn cache<K: InformerResource>(
        &self,
        notify: &Arc<Notify>,
        tasks: &mut tokio::task::JoinSet<()>,
    ) -> Store<K> {
        let (store, tx, mut synced, _) = self.informer::<K>();
        let mut rx = tx.subscribe();
        let notify = notify.clone();
        tasks.spawn(async move {
            while let Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) = rx.recv().await {
                notify.notify_one();
            }
        });
        let _ = synced.wait_for(|s| *s).await;
        store
    }
}

/// A subscriber's stream: the changed objects, or the whole store after a lag.
fn subscription<K: InformerResource>(
    store: Store<K>,
    rx: broadcast::Receiver<Change<K>>,
) -> impl Stream<Item = Arc<K>> + Send + 'static {
    change_subscription(store, rx)
        .map(|c| match c {
            Change::Applied(o) | Change::Deleted(o) => futures_util::stream::iter(vec![o]),
            Change::Resync(all) => futures_util::stream::iter(all),
        })
        .flatten()
}

/// A subscriber's stream of changes, with [`Change::Resync`] after a lag.
fn change_subscription<K: InformerResource>(
    store: Store<K>,
    rx: broadcast::Receiver<Change<K>>,
) -> impl Stream<Item = Change<K>> + Send + 'static {
    futures_util::stream::unfold((store, rx), |(store, mut rx)| async move {
        match rx.recv().await {
            Ok(c) => Some((c, (store, rx))),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::debug!(kind = %K::kind(&()), missed = n, "informer subscriber lagged; resyncing from the store");
                Some((Change::Resync(store.state()), (store, rx)))
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    })
}

fn lock<K: InformerResource>(
    indexes: &Indexes<K>,
) -> std::sync::MutexGuard<'_, Vec<Arc<Index<K>>>> {
    match indexes.lock() {
        Ok(l) => l,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// The objects of `before` that `store` no longer holds (same name, same uid): what a
/// relist found deleted while the watch was down.
fn vanished<K: InformerResource>(before: Vec<Arc<K>>, store: &Store<K>) -> Vec<Arc<K>> {
    before
        .into_iter()
        .filter(|o| match store.get(&ObjectRef::from_obj(&**o)) {
            Some(now) => now.meta().uid != o.meta().uid,
            None => true,
        })
        .collect()
}

/// The one watch of an informer: reflects into the store and broadcasts every change
/// (the store's own `Arc` for added/modified objects).
async fn run_informer<K: InformerResource>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    store: Store<K>,
    tx: broadcast::Sender<Change<K>>,
    synced: tokio::sync::watch::Sender<bool>,
    indexes: Indexes<K>,
) {
    tracing::debug!(kind = %K::kind(&()), "shared informer started");
    let mut stream = std::pin::pin!(watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer));
    // The store's content when a (re)list began, to find what it dropped.
    let mut before: Vec<Arc<K>> = Vec::new();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                let obj = store
                    .get(&ObjectRef::from_obj(&o))
                    .unwrap_or_else(|| Arc::new(o));
                for i in lock(&indexes).iter() {
                    i.apply(obj.clone());
                }
                let _ = tx.send(Change::Applied(obj));
            }
            Ok(watcher::Event::Delete(o)) => {
                for i in lock(&indexes).iter() {
                    i.delete(&o);
                }
                let _ = tx.send(Change::Deleted(Arc::new(o)));
            }
            Ok(watcher::Event::Init) => before = store.state(),
            Ok(watcher::Event::InitDone) => {
                tracing::debug!(kind = %K::kind(&()), objects = store.len(), "shared informer synced");
                // A relist replaced the store: objects deleted meanwhile leave the indexes
                // and are announced as deleted.
                for i in lock(&indexes).iter() {
                    i.rebuild(store.state());
                }
                for o in vanished(std::mem::take(&mut before), &store) {
                    let _ = tx.send(Change::Deleted(o));
                }
                synced.send_replace(true);
            }
            Err(e) => {
                tracing::debug!(kind = %K::kind(&()), error = %e, "shared informer watch error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    fn pod(name: &str) -> Arc<Pod> {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some("default".into());
        Arc::new(p)
    }

    fn owned_pod(name: &str, owner: Option<&str>, node: Option<&str>) -> Arc<Pod> {
        let mut p = (*pod(name)).clone();
        p.metadata.owner_references = owner.map(|uid| {
            vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    uid: uid.into(),
                    controller: Some(true),
                    ..Default::default()
                },
            ]
        });
        p.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            node_name: node.map(String::from),
            ..Default::default()
        });
        Arc::new(p)
    }

    fn names(v: Vec<Arc<Pod>>) -> Vec<String> {
        let mut n: Vec<String> = v
            .iter()
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect();
        n.sort();
        n
    }

    #[test]
    fn index_follows_changes_and_deletes() {
        let by_owner = Index::new(by_controller_uid::<Pod>);
        let orphans = Index::new(orphans_by_namespace::<Pod>);
        let by_node = Index::new(pods_by_node);
        for i in [&by_owner, &orphans, &by_node] {
            i.rebuild(vec![
                owned_pod("a", Some("u1"), Some("n1")),
                owned_pod("b", Some("u1"), None),
                owned_pod("c", None, Some("n1")),
            ]);
        }
        assert_eq!(names(by_owner.get("u1")), ["a", "b"]);
        assert_eq!(names(orphans.get("default")), ["c"]);
        assert_eq!(names(by_node.get("n1")), ["a", "c"]);
        // An orphan adopted by u2 moves between keys; a bound pod joins its node.
        for i in [&by_owner, &orphans, &by_node] {
            i.apply(owned_pod("c", Some("u2"), Some("n1")));
            i.apply(owned_pod("b", Some("u1"), Some("n2")));
        }
        assert_eq!(names(by_owner.get("u2")), ["c"]);
        assert!(orphans.get("default").is_empty());
        assert_eq!(names(by_node.get("n2")), ["b"]);
        assert_eq!(by_node.count("n1"), 2);
        for i in [&by_owner, &orphans, &by_node] {
            i.delete(&owned_pod("a", Some("u1"), Some("n1")));
        }
        assert_eq!(names(by_owner.get("u1")), ["b"]);
        assert_eq!(names(by_node.get("n1")), ["c"]);
        assert!(by_owner.get("nobody").is_empty());
    }

    #[tokio::test]
    async fn subscription_yields_changes_in_order() {
        let (store, _writer) = reflector::store::<Pod>();
        let (tx, rx) = broadcast::channel(8);
        let mut s = std::pin::pin!(subscription(store, rx));
        tx.send(Change::Applied(pod("a"))).ok();
        tx.send(Change::Deleted(pod("b"))).ok();
        drop(tx);
        let names: Vec<String> = s
            .by_ref()
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect()
            .await;
        assert_eq!(names, vec!["a".to_string(), "b".to_string()]);
    }

    #[tokio::test]
    async fn changes_tell_deletions_apart_and_resync_after_a_lag() {
        let (store, mut writer) = reflector::store::<Pod>();
        writer.apply_watcher_event(&watcher::Event::Apply((*pod("x")).clone()));
        let (tx, rx) = broadcast::channel(2);
        let s = change_subscription(store.clone(), rx);
        tx.send(Change::Applied(pod("a"))).ok();
        tx.send(Change::Deleted(pod("b"))).ok();
        let first: Vec<String> = s
            .take(2)
            .map(|c| match c {
                Change::Applied(o) => format!("+{}", o.metadata.name.clone().unwrap_or_default()),
                Change::Deleted(o) => format!("-{}", o.metadata.name.clone().unwrap_or_default()),
                Change::Resync(v) => format!("resync {}", v.len()),
            })
            .collect()
            .await;
        assert_eq!(first, ["+a", "-b"]);
        let rx = tx.subscribe();
        for n in ["1", "2", "3"] {
            tx.send(Change::Applied(pod(n))).ok();
        }
        drop(tx);
        let mut s = std::pin::pin!(change_subscription(store, rx));
        match s.next().await {
            Some(Change::Resync(v)) => assert_eq!(names(v), ["x"]),
            other => panic!("expected a resync, got {other:?}"),
        }
    }

    #[test]
    fn relist_finds_deleted_and_replaced_objects() {
        let (store, mut writer) = reflector::store::<Pod>();
        let with_uid = |name: &str, uid: &str| {
            let mut p = (*pod(name)).clone();
            p.metadata.uid = Some(uid.into());
            p
        };
        for p in [
            with_uid("kept", "1"),
            with_uid("gone", "2"),
            with_uid("replaced", "3"),
        ] {
            writer.apply_watcher_event(&watcher::Event::Apply(p));
        }
        let before = store.state();
        // The relist: "gone" is missing, "replaced" came back with another uid.
        writer.apply_watcher_event(&watcher::Event::Init);
        for p in [with_uid("kept", "1"), with_uid("replaced", "4")] {
            writer.apply_watcher_event(&watcher::Event::InitApply(p));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let gone: Vec<String> = vanished(before, &store)
            .iter()
            .map(|p| {
                format!(
                    "{}/{}",
                    p.metadata.name.clone().unwrap_or_default(),
                    p.metadata.uid.clone().unwrap_or_default()
                )
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(gone, ["gone/2", "replaced/3"]);
    }

    #[tokio::test]
    async fn lagged_subscriber_resyncs_from_store() {
        let (store, mut writer) = reflector::store::<Pod>();
        for n in ["x", "y"] {
            writer.apply_watcher_event(&watcher::Event::Apply((*pod(n)).clone()));
        }
        let (tx, rx) = broadcast::channel(2);
        for n in ["1", "2", "3", "4"] {
            tx.send(Change::Applied(pod(n))).ok();
        }
        drop(tx);
        let s = subscription(store, rx);
        let mut names: Vec<String> = s
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect()
            .await;
        // The lag yields the whole store, then the two changes still buffered.
        let tail = names.split_off(2);
        names.sort();
        assert_eq!(names, vec!["x".to_string(), "y".to_string()]);
        assert_eq!(tail, vec!["3".to_string(), "4".to_string()]);
    }
}
