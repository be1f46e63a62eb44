//! Shared informers (upstream's `SharedInformerFactory`): ONE watch and ONE reflector
//! store per resource type for every consumer (controllers of a leadership term, the
//! scheduler), instead of a watch (and a full copy of every object) per consumer.
//!
//! [`SharedInformers::store`] gives the shared [`Store`] once it holds its first complete
//! list; [`SharedInformers::index`] a secondary index of it ([`by_namespace`],
//! [`by_controller_uid`], [`pods_by_node`], ...); [`SharedInformers::subscribe`] a stream
//! of the changed objects (the `Arc`s held by the store, so no copies) and
//! [`SharedInformers::subscribe_all`] the same after every object of the store;
//! [`SharedInformers::changes`] the changes with their kind (applied, deleted, resync);
//! [`SharedInformers::events`] the changes as `watcher::Event`s (a list, then changes,
//! a new list after a lag) for consumers that mirror a kind (the scheduler);
//! [`SharedInformers::shared_events`] the same with the store's own `Arc`s. Objects are
//! stored without `metadata.managedFields` (as upstream's components strip them).
//!
//! Invariants: a store, its indexes and its subscribers see the same events in the same
//! order; an index registered late is filled from the store under the lock that the
//! watch task takes to update indexes, so it misses nothing; a subscriber that falls
//! behind gets the whole store again ([`Change::Resync`]) instead of silently missing
//! changes; objects a relist finds gone are announced as deleted.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use futures_util::{Stream, StreamExt, TryStreamExt};
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;

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
    /// The writer side while no watch task has started (registries fed by hand).
    idle: Mutex<Option<Idle<K>>>,
}

/// What a watch task needs to feed an informer.
struct Idle<K: InformerResource> {
    writer: reflector::store::Writer<K>,
    synced: tokio::sync::watch::Sender<bool>,
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
    /// The objects in `ns` controlled by the object of `uid` that `keep` accepts (e.g.
    /// whose labels the owner's selector matches), as copies (for the pure planning
    /// functions), sorted by name.
    pub fn owned_where(&self, uid: &str, ns: &str, keep: impl Fn(&K) -> bool) -> Vec<K> {
        let mut v: Vec<K> = self
            .by_owner
            .get(uid)
            .into_iter()
            .filter(|o| o.meta().namespace.as_deref() == Some(ns))
            .filter(|o| keep(o))
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
    /// `None` for a registry fed by hand ([`Self::fake`], tests).
    client: Option<kube::Client>,
    inner: Arc<Inner>,
}

impl Debug for SharedInformers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedInformers")
            .field("fake", &self.client.is_none())
            .finish_non_exhaustive()
    }
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
        Self::with_client(Some(client))
    }

    /// A registry without an API client: each informer reads the events a test hands
    /// to [`Self::feed`] (no store is synced before its stream says `InitDone`).
    pub fn fake() -> Self {
        Self::with_client(None)
    }

    fn with_client(client: Option<kube::Client>) -> Self {
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
        let (synced_tx, synced) = tokio::sync::watch::channel(false);
        let indexes: Indexes<K> = Arc::new(Mutex::new(Vec::new()));
        let idle = match &self.client {
            Some(client) => {
                let events = watcher(Api::<K>::all(client.clone()), watcher::Config::default())
                    .default_backoff();
                self.spawn(run_informer(
                    events,
                    writer,
                    store.clone(),
                    tx.clone(),
                    synced_tx,
                    indexes.clone(),
                ));
                None
            }
            None => Some(Idle {
                writer,
                synced: synced_tx,
            }),
        };
        map.insert(
            TypeId::of::<K>(),
            Box::new(Informer {
                store: store.clone(),
                tx: tx.clone(),
                synced: synced.clone(),
                indexes: indexes.clone(),
                idle: Mutex::new(idle),
            }),
        );
        (store, tx, synced, indexes)
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(task);
        match self.inner.tasks.lock() {
            Ok(mut t) => t.push(handle),
            Err(poisoned) => poisoned.into_inner().push(handle),
        }
    }

    /// Feeds the informer of `K` of a [`Self::fake`] registry from `events` (as a
    /// watch would: `Init`, `InitApply`..., `InitDone`, then `Apply`/`Delete`). A no-op
    /// when the informer already has a source (a watch, or an earlier feed).
    pub fn feed<K: InformerResource>(
        &self,
        events: impl Stream<Item = watcher::Event<K>> + Send + 'static,
    ) {
        let (store, tx, _, indexes) = self.informer::<K>();
        let idle = {
            let map = match self.inner.informers.lock() {
                Ok(m) => m,
                Err(poisoned) => poisoned.into_inner(),
            };
            map.get(&TypeId::of::<K>())
                .and_then(|b| b.downcast_ref::<Informer<K>>())
                .and_then(|inf| match inf.idle.lock() {
                    Ok(mut i) => i.take(),
                    Err(poisoned) => poisoned.into_inner().take(),
                })
        };
        let Some(idle) = idle else {
            tracing::debug!(kind = %K::kind(&()), "informer already has a source; feed ignored");
            return;
        };
        self.spawn(run_informer(
            events.map(Ok),
            idle.writer,
            store,
            tx,
            idle.synced,
            indexes,
        ));
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

    /// Every object of `K`'s shared store once it is synced, then (as
    /// [`Self::subscribe`]) every object that changes: what a controller needs to look at
    /// everything once and then follow changes. Nothing is missed in between (the
    /// subscription starts before the store is read, once it is synced).
    pub fn subscribe_all<K: InformerResource>(
        &self,
    ) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let (store, tx, synced, _) = self.informer::<K>();
        futures_util::stream::once(async move {
            let mut synced = synced;
            let _ = synced.wait_for(|s| *s).await;
            // Subscribed before the store is read: a change in between comes twice
            // (never older than the list), none is missed.
            let rx = tx.subscribe();
            futures_util::stream::iter(store.state()).chain(subscription(store, rx))
        })
        .flatten()
    }

    /// The objects of `K` as a watch would deliver them: `Init`, `InitApply` of every
    /// object of the synced store, `InitDone`, then `Apply`/`Delete` per change; after a
    /// lag the whole store again as a new `Init` ... `InitDone` (so a mirror drops what it
    /// missed being deleted). Objects are copies (the consumer owns them).
    pub fn events<K: InformerResource>(
        &self,
    ) -> impl Stream<Item = watcher::Event<K>> + Send + 'static {
        self.shared_events::<K>().map(owned)
    }

    /// As [`Self::events`], with the shared store's own `Arc`s instead of copies: for a
    /// consumer that keeps the objects (a mirror such as the scheduler's snapshot), one
    /// copy of each object in the process instead of two.
    pub fn shared_events<K: InformerResource>(
        &self,
    ) -> impl Stream<Item = watcher::Event<Arc<K>>> + Send + 'static {
        let (store, tx, synced, _) = self.informer::<K>();
        futures_util::stream::once(async move {
            let mut synced = synced;
            let _ = synced.wait_for(|s| *s).await;
            let rx = tx.subscribe();
            futures_util::stream::iter(relist_shared(store.state())).chain(
                change_subscription(store, rx)
                    .flat_map(|c| futures_util::stream::iter(as_shared_events(c))),
            )
        })
        .flatten()
    }

    /// A stream of the changes of `K` from now on, each saying whether the object was
    /// applied or deleted; a subscriber that falls too far behind gets
    /// [`Change::Resync`] with the whole store. Subscribe before reading the store (e.g.
    /// with [`Self::store`]) so that no change in between is missed.
    pub fn changes<K: InformerResource>(&self) -> impl Stream<Item = Change<K>> + Send + 'static {
        let (store, tx, _, _) = self.informer::<K>();
        change_subscription(store, tx.subscribe())
    }
}

/// A watch event of the store's `Arc` as an owned copy.
fn owned<K: Clone>(ev: watcher::Event<Arc<K>>) -> watcher::Event<K> {
    match ev {
        watcher::Event::Apply(o) => watcher::Event::Apply((*o).clone()),
        watcher::Event::Delete(o) => watcher::Event::Delete((*o).clone()),
        watcher::Event::InitApply(o) => watcher::Event::InitApply((*o).clone()),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// A change as watch events of the store's `Arc`s (a resync as a whole new list).
fn as_shared_events<K>(c: Change<K>) -> Vec<watcher::Event<Arc<K>>> {
    match c {
        Change::Applied(o) => vec![watcher::Event::Apply(o)],
        Change::Deleted(o) => vec![watcher::Event::Delete(o)],
        Change::Resync(all) => relist_shared(all),
    }
}

/// A whole list as watch events (`Init`, `InitApply` of each object, `InitDone`) of the
/// store's `Arc`s.
fn relist_shared<K>(all: Vec<Arc<K>>) -> Vec<watcher::Event<Arc<K>>> {
    let mut v = Vec::with_capacity(all.len() + 2);
    v.push(watcher::Event::Init);
    v.extend(all.into_iter().map(watcher::Event::InitApply));
    v.push(watcher::Event::InitDone);
    v
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
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
    writer: reflector::store::Writer<K>,
    store: Store<K>,
    tx: broadcast::Sender<Change<K>>,
    synced: tokio::sync::watch::Sender<bool>,
    indexes: Indexes<K>,
) {
    tracing::debug!(kind = %K::kind(&()), "shared informer started");
    // As upstream's kube-scheduler and controller manager (TransformStripManagedFields):
    // no consumer reads field ownership, and it is a large part of every object. An
    // update sent without it keeps the server's (a dropped `managedFields` is unchanged).
    let events = events.map_ok(|ev| ev.modify(|o| o.meta_mut().managed_fields = None));
    let mut stream = std::pin::pin!(events.reflect(writer));
    // The store's content when a (re)list began, to find what it dropped.
    let mut before: Vec<Arc<K>> = Vec::new();
    while let Some(ev) = stream.next().await {
        match ev {
            // A (re)list is buffered by the reflector and swapped in at `InitDone`: the
            // store still holds the previous objects, so its changes go out then.
            Ok(watcher::Event::InitApply(_)) => {}
            Ok(watcher::Event::Apply(o)) => {
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
                // A relist replaced the store: the indexes are rebuilt, objects deleted
                // meanwhile (or replaced by a new uid) are announced as deleted, then
                // every listed object as applied (the store's new `Arc`s).
                let now = store.state();
                for i in lock(&indexes).iter() {
                    i.rebuild(now.clone());
                }
                for o in vanished(std::mem::take(&mut before), &store) {
                    let _ = tx.send(Change::Deleted(o));
                }
                for o in now {
                    let _ = tx.send(Change::Applied(o));
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

    fn name_of(e: &watcher::Event<Pod>) -> String {
        match e {
            watcher::Event::Init => "init".into(),
            watcher::Event::InitDone => "done".into(),
            watcher::Event::InitApply(p) => {
                format!("list {}", p.metadata.name.clone().unwrap_or_default())
            }
            watcher::Event::Apply(p) => format!("+{}", p.metadata.name.clone().unwrap_or_default()),
            watcher::Event::Delete(p) => {
                format!("-{}", p.metadata.name.clone().unwrap_or_default())
            }
        }
    }

    #[tokio::test]
    async fn a_fed_informer_fills_store_indexes_and_subscribers() {
        let informers = SharedInformers::fake();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<watcher::Event<Pod>>();
        let rx =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|e| (e, rx)) },
            );
        // Subscribed before the list: sees the list, then the changes.
        let mut all = std::pin::pin!(informers.subscribe_all::<Pod>());
        let mut events = std::pin::pin!(informers.events::<Pod>());
        informers.feed(rx);
        let send = |e| tx.send(e).ok();
        send(watcher::Event::Init);
        send(watcher::Event::InitApply(
            (*owned_pod("a", Some("u1"), Some("n1"))).clone(),
        ));
        send(watcher::Event::InitApply(
            (*owned_pod("b", None, Some("n2"))).clone(),
        ));
        send(watcher::Event::InitDone);
        let store = informers.store::<Pod>().await;
        assert_eq!(store.len(), 2);
        let by_node = informers.index::<Pod>(pods_by_node).await;
        let again = informers.index::<Pod>(pods_by_node).await;
        assert!(Arc::ptr_eq(&by_node, &again), "one index per function");
        assert_eq!(names(by_node.get("n1")), ["a"]);
        let mut first: Vec<String> = Vec::new();
        for _ in 0..2 {
            if let Some(p) = all.next().await {
                first.push(p.metadata.name.clone().unwrap_or_default());
            }
        }
        first.sort();
        assert_eq!(first, ["a", "b"]);
        let mut seen: Vec<String> = Vec::new();
        for _ in 0..4 {
            if let Some(e) = events.next().await {
                seen.push(name_of(&e));
            }
        }
        // The list's order is the store's: sort its two items.
        seen[1..3].sort();
        assert_eq!(seen, ["init", "list a", "list b", "done"]);
        // b moves to n1; a is deleted.
        send(watcher::Event::Apply(
            (*owned_pod("b", None, Some("n1"))).clone(),
        ));
        send(watcher::Event::Delete(
            (*owned_pod("a", Some("u1"), Some("n1"))).clone(),
        ));
        let next: Vec<String> = all
            .by_ref()
            .take(2)
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect()
            .await;
        assert_eq!(next, ["b", "a"]);
        assert_eq!(names(by_node.get("n1")), ["b"]);
        assert!(by_node.get("n2").is_empty());
        let next: Vec<String> = events.by_ref().take(2).map(|e| name_of(&e)).collect().await;
        assert_eq!(next, ["+b", "-a"]);
        // A second feed of a fed informer is ignored (the store keeps its source).
        informers.feed(futures_util::stream::iter([watcher::Event::<Pod>::Init]));
        assert_eq!(informers.store::<Pod>().await.len(), 1);
    }

    #[tokio::test]
    async fn shared_events_carry_the_stores_own_objects() {
        let informers = SharedInformers::fake();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<watcher::Event<Pod>>();
        let rx =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|e| (e, rx)) },
            );
        let mut events = std::pin::pin!(informers.shared_events::<Pod>());
        informers.feed(rx);
        let send = |e| tx.send(e).ok();
        send(watcher::Event::Init);
        send(watcher::Event::InitApply((*pod("a")).clone()));
        send(watcher::Event::InitDone);
        let mut b = (*pod("b")).clone();
        b.metadata.managed_fields = Some(vec![Default::default()]);
        send(watcher::Event::Apply(b));
        let store = informers.store::<Pod>().await;
        let mut got = Vec::new();
        for _ in 0..4 {
            match events.next().await {
                Some(watcher::Event::InitApply(p)) | Some(watcher::Event::Apply(p)) => got.push(p),
                Some(_) => {}
                None => break,
            }
        }
        assert_eq!(got.len(), 2);
        for p in got {
            let held = store.get(&ObjectRef::from_obj(&*p)).expect("in the store");
            assert!(Arc::ptr_eq(&held, &p), "the store's Arc, not a copy");
            assert_eq!(
                p.metadata.managed_fields, None,
                "managed fields are stripped"
            );
        }
    }

    #[tokio::test]
    async fn a_relist_announces_the_new_objects_after_the_deleted_ones() {
        let versioned = |name: &str, uid: &str, rv: &str| {
            let mut p = (*pod(name)).clone();
            p.metadata.uid = Some(uid.into());
            p.metadata.resource_version = Some(rv.into());
            p
        };
        let informers = SharedInformers::fake();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<watcher::Event<Pod>>();
        informers.feed(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|e| (e, rx))
        }));
        let send = |e| tx.send(e).ok();
        send(watcher::Event::Init);
        send(watcher::Event::InitApply(versioned("a", "1", "1")));
        send(watcher::Event::InitApply(versioned("b", "2", "1")));
        send(watcher::Event::InitDone);
        informers.store::<Pod>().await;
        let mut changes = std::pin::pin!(informers.changes::<Pod>());
        // The watch broke; the relist finds a newer "a" and "b" replaced (new uid).
        send(watcher::Event::Init);
        send(watcher::Event::InitApply(versioned("a", "1", "5")));
        send(watcher::Event::InitApply(versioned("b", "3", "6")));
        send(watcher::Event::InitDone);
        let mut seen = Vec::new();
        for _ in 0..3 {
            match changes.next().await {
                Some(Change::Applied(p)) => seen.push(format!(
                    "+{}@{}",
                    p.metadata.name.clone().unwrap_or_default(),
                    p.metadata.resource_version.clone().unwrap_or_default()
                )),
                Some(Change::Deleted(p)) => seen.push(format!(
                    "-{}/{}",
                    p.metadata.name.clone().unwrap_or_default(),
                    p.metadata.uid.clone().unwrap_or_default()
                )),
                other => panic!("unexpected {other:?}"),
            }
        }
        seen[1..].sort();
        assert_eq!(seen, ["-b/2", "+a@5", "+b@6"]);
    }

    #[tokio::test]
    async fn a_lagging_event_subscriber_gets_a_new_list() {
        let (store, mut writer) = reflector::store::<Pod>();
        writer.apply_watcher_event(&watcher::Event::Apply((*pod("x")).clone()));
        let (tx, rx) = broadcast::channel(1);
        tx.send(Change::Applied(pod("1"))).ok();
        tx.send(Change::Applied(pod("2"))).ok();
        drop(tx);
        let seen: Vec<String> = change_subscription(store, rx)
            .flat_map(|c| futures_util::stream::iter(as_shared_events(c)))
            .map(|e| name_of(&owned(e)))
            .collect()
            .await;
        assert_eq!(seen, ["init", "list x", "done", "+2"]);
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
