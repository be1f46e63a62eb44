//! Shared informers (upstream's `SharedInformerFactory`): ONE watch and ONE reflector
//! store per resource type for every controller of a leadership term, instead of a watch
//! (and a full copy of every object) per controller.
//!
//! [`SharedInformers::store`] gives the shared [`Store`]; [`SharedInformers::subscribe`]
//! gives a stream of the changed objects (the `Arc`s held by the store, so no copies), for
//! `Controller::owns_shared_stream`/`watches_shared_stream`; [`SharedInformers::cache`]
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
pub trait InformerResource: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static {}
impl<K> InformerResource for K where K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static {}

/// One shared informer: the store and the channel of its changes.
struct Informer<K: InformerResource> {
    store: Store<K>,
    tx: broadcast::Sender<Arc<K>>,
    synced: tokio::sync::watch::Receiver<bool>,
}

/// What [`SharedInformers::informer`] hands out.
type Parts<K> = (Store<K>, broadcast::Sender<Arc<K>>, tokio::sync::watch::Receiver<bool>);

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
        SharedInformers { client, inner: Arc::new(Inner { informers: Mutex::new(HashMap::new()), tasks: Mutex::new(Vec::new()) }) }
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
        if let Some(inf) = map.get(&TypeId::of::<K>()).and_then(|b| b.downcast_ref::<Informer<K>>()) {
            return (inf.store.clone(), inf.tx.clone(), inf.synced.clone());
        }
        let (store, writer) = reflector::store::<K>();
        let (tx, _) = broadcast::channel(CHANNEL_CAPACITY);
        let api: Api<K> = Api::all(self.client.clone());
        let (synced_tx, synced) = tokio::sync::watch::channel(false);
        let handle = tokio::spawn(run_informer(api, writer, store.clone(), tx.clone(), synced_tx));
        match self.inner.tasks.lock() {
            Ok(mut t) => t.push(handle),
            Err(poisoned) => poisoned.into_inner().push(handle),
        }
        map.insert(TypeId::of::<K>(), Box::new(Informer { store: store.clone(), tx: tx.clone(), synced: synced.clone() }));
        (store, tx, synced)
    }

    /// The shared store of `K`, once it holds its first complete list. (Not kube's
    /// `Store::wait_until_ready`: that wakes only one of several concurrent waiters.)
    pub async fn store<K: InformerResource>(&self) -> Store<K> {
        let (store, _, mut synced) = self.informer::<K>();
        // An error means the informer stopped: the store stays as it is.
        let _ = synced.wait_for(|s| *s).await;
        store
    }

    /// A stream of the objects of `K` that change from now on (deleted ones included, as
    /// last seen). A subscriber that falls too far behind gets every object of the store
    /// again instead of the changes it missed.
    pub fn subscribe<K: InformerResource>(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let (store, tx, _) = self.informer::<K>();
        subscription(store, tx.subscribe())
    }

    /// The shared store of `K` once it holds its first complete list; every change of it
    /// wakes `notify` (through a task of `tasks`, which stops when `tasks` is aborted).
    pub async fn cache<K: InformerResource>(&self, notify: &Arc<Notify>, tasks: &mut tokio::task::JoinSet<()>) -> Store<K> {
        let (store, tx, mut synced) = self.informer::<K>();
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

/// A subscriber's stream: the changes, or the whole store after a lag.
fn subscription<K: InformerResource>(store: Store<K>, rx: broadcast::Receiver<Arc<K>>) -> impl Stream<Item = Arc<K>> + Send + 'static {
    futures_util::stream::unfold((store, rx), |(store, mut rx)| async move {
        loop {
            match rx.recv().await {
                Ok(obj) => return Some((futures_util::stream::iter(vec![obj]), (store, rx))),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(kind = %K::kind(&()), missed = n, "informer subscriber lagged; resyncing from the store");
                    let all = store.state();
                    if !all.is_empty() {
                        return Some((futures_util::stream::iter(all), (store, rx)));
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .flatten()
}

/// The one watch of an informer: reflects into the store and broadcasts every change
/// (the store's own `Arc` for added/modified objects).
async fn run_informer<K: InformerResource>(api: Api<K>, writer: reflector::store::Writer<K>, store: Store<K>, tx: broadcast::Sender<Arc<K>>, synced: tokio::sync::watch::Sender<bool>) {
    tracing::debug!(kind = %K::kind(&()), "shared informer started");
    let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff().reflect(writer));
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                let obj = store.get(&ObjectRef::from_obj(&o)).unwrap_or_else(|| Arc::new(o));
                let _ = tx.send(obj);
            }
            Ok(watcher::Event::Delete(o)) => {
                let _ = tx.send(Arc::new(o));
            }
            Ok(watcher::Event::Init) => {}
            Ok(watcher::Event::InitDone) => {
                tracing::debug!(kind = %K::kind(&()), objects = store.len(), "shared informer synced");
                synced.send_replace(true);
            }
            Err(e) => tracing::debug!(kind = %K::kind(&()), error = %e, "shared informer watch error"),
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

    #[tokio::test]
    async fn subscription_yields_changes_in_order() {
        let (store, _writer) = reflector::store::<Pod>();
        let (tx, rx) = broadcast::channel(8);
        let mut s = std::pin::pin!(subscription(store, rx));
        tx.send(pod("a")).ok();
        tx.send(pod("b")).ok();
        drop(tx);
        let names: Vec<String> = s.by_ref().map(|p| p.metadata.name.clone().unwrap_or_default()).collect().await;
        assert_eq!(names, vec!["a".to_string(), "b".to_string()]);
    }

    #[tokio::test]
    async fn lagged_subscriber_resyncs_from_store() {
        let (store, mut writer) = reflector::store::<Pod>();
        for n in ["x", "y"] {
            writer.apply_watcher_event(&watcher::Event::Apply((*pod(n)).clone()));
        }
        let (tx, rx) = broadcast::channel(2);
        for n in ["1", "2", "3", "4"] {
            tx.send(pod(n)).ok();
        }
        drop(tx);
        let s = subscription(store, rx);
        let mut names: Vec<String> = s.map(|p| p.metadata.name.clone().unwrap_or_default()).collect().await;
        // The lag yields the whole store, then the two changes still buffered.
        let tail = names.split_off(2);
        names.sort();
        assert_eq!(names, vec!["x".to_string(), "y".to_string()]);
        assert_eq!(tail, vec!["3".to_string(), "4".to_string()]);
    }
}
