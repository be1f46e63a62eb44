//! [`run_controller`]: the one loop every controller runs. Triggers map object changes
//! to keys and queue them on a [`WorkQueue`]; `workers` workers take keys and call the
//! reconcile function. A reconcile error retries the key after its per-key exponential
//! back-off; success forgets the failures and, with [`Action::RequeueAfter`], looks at
//! the key again later.

use std::fmt::{Debug, Display};
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};

use kube::runtime::reflector::{ObjectRef, Store};

use crate::informers::{Change, InformerResource, SharedInformers};
use crate::queue::WorkQueue;

/// What a successful reconcile asks for next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing until a trigger names the key again.
    AwaitChange,
    /// Reconcile the key again after this delay (a deadline, a periodic resync).
    RequeueAfter(Duration),
}

impl Action {
    /// Reconcile the key again after `d` (as kube-runtime's `Action::requeue`).
    pub fn requeue(d: Duration) -> Self {
        Action::RequeueAfter(d)
    }

    /// Nothing until a trigger names the key again (as kube-runtime's
    /// `Action::await_change`).
    pub fn await_change() -> Self {
        Action::AwaitChange
    }

    /// [`Action::RequeueAfter`] when `d` is set, else [`Action::AwaitChange`].
    pub fn requeue_after(d: Option<Duration>) -> Self {
        match d {
            Some(d) => Action::RequeueAfter(d),
            None => Action::AwaitChange,
        }
    }
}

/// A source of keys for a controller: a stream whose every item is queued.
pub struct Trigger<T> {
    keys: BoxStream<'static, T>,
}

impl<T: Send + 'static> Trigger<T> {
    /// A trigger queuing every key `keys` yields.
    pub fn from_stream(keys: impl Stream<Item = T> + Send + 'static) -> Self {
        Trigger { keys: keys.boxed() }
    }

    /// A trigger on the objects of `K`: every object of the shared store once it is
    /// synced, then every changed (or deleted) object, each mapped to keys by `map`
    /// (e.g. the object's own key, or its owner's).
    pub fn objects<K, I, F>(informers: &SharedInformers, map: F) -> Self
    where
        K: InformerResource,
        I: IntoIterator<Item = T>,
        I::IntoIter: Send + 'static,
        F: FnMut(&K) -> I + Send + 'static,
    {
        Self::from_objects(informers.subscribe_all::<K>(), map)
    }

    /// A trigger on the changes of `K` from now on (no initial pass over the store),
    /// mapped to keys by `map`.
    pub fn changes<K, I, F>(informers: &SharedInformers, map: F) -> Self
    where
        K: InformerResource,
        I: IntoIterator<Item = T>,
        I::IntoIter: Send + 'static,
        F: FnMut(&K) -> I + Send + 'static,
    {
        Self::from_objects(informers.subscribe::<K>(), map)
    }

    /// A trigger on the changes of `K` that need to tell deletions apart: `map` sees
    /// every [`Change`] (a lagging subscriber gets [`Change::Resync`]).
    pub fn on_change<K, I, F>(informers: &SharedInformers, mut map: F) -> Self
    where
        K: InformerResource,
        I: IntoIterator<Item = T>,
        I::IntoIter: Send + 'static,
        F: FnMut(&Change<K>) -> I + Send + 'static,
    {
        Self::from_stream(
            informers
                .changes::<K>()
                .flat_map(move |c| futures_util::stream::iter(map(&c))),
        )
    }

    /// A trigger queuing the keys `map` gives for each item of `items`.
    pub fn map<X, I, F>(items: impl Stream<Item = X> + Send + 'static, mut map: F) -> Self
    where
        I: IntoIterator<Item = T>,
        I::IntoIter: Send + 'static,
        F: FnMut(X) -> I + Send + 'static,
    {
        Self::from_stream(items.flat_map(move |x| futures_util::stream::iter(map(x))))
    }

    fn from_objects<K, I, F>(objs: impl Stream<Item = Arc<K>> + Send + 'static, mut map: F) -> Self
    where
        K: Send + Sync + 'static,
        I: IntoIterator<Item = T>,
        I::IntoIter: Send + 'static,
        F: FnMut(&K) -> I + Send + 'static,
    {
        Self::from_stream(objs.flat_map(move |o| futures_util::stream::iter(map(&o))))
    }

    /// A trigger queuing `key` each time `notify` is notified (one permit: notifications
    /// while nobody waits fold into one).
    pub fn notified(notify: Arc<tokio::sync::Notify>, key: T) -> Self
    where
        T: Clone + Sync,
    {
        Self::from_stream(futures_util::stream::unfold(
            (notify, key),
            |(notify, key)| async move {
                notify.notified().await;
                Some((key.clone(), (notify, key)))
            },
        ))
    }

    /// A trigger queuing `key` every `period` (the first time at once).
    pub fn every(period: Duration, key: T) -> Self
    where
        T: Clone + Sync,
    {
        let period = period.max(Duration::from_millis(1));
        Self::from_stream(futures_util::stream::unfold(
            (true, key),
            move |(first, key)| async move {
                if !first {
                    tokio::time::sleep(period).await;
                }
                Some((key.clone(), (false, key)))
            },
        ))
    }
}

impl<K: InformerResource> Trigger<ObjectRef<K>> {
    /// A trigger queuing each object of `objs` itself (e.g. a subscription of `K`).
    pub fn for_each(objs: impl Stream<Item = Arc<K>> + Send + 'static) -> Self {
        Self::from_stream(objs.map(|o| ObjectRef::from_obj(&*o)))
    }

    /// A trigger queuing every object `store` holds now, once (the objects listed
    /// before a controller subscribed).
    pub fn all_in(store: &Store<K>) -> Self {
        let all: Vec<ObjectRef<K>> = store
            .state()
            .iter()
            .map(|o| ObjectRef::from_obj(&**o))
            .collect();
        Self::from_stream(futures_util::stream::iter(all))
    }

    /// A trigger queuing, for each object of `children`, its owners of kind `K`
    /// (owner references of `K`'s kind and apiVersion, in the child's namespace).
    pub fn owners<C>(children: impl Stream<Item = Arc<C>> + Send + 'static) -> Self
    where
        C: kube::Resource + Send + Sync + 'static,
    {
        Self::map(children, |c: Arc<C>| owners_of::<K>(c.meta()))
    }
}

/// The owners of kind `K` named by the owner references of `meta` (in its namespace).
pub fn owners_of<K: InformerResource>(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Vec<ObjectRef<K>> {
    let (kind, api_version) = (K::kind(&()), K::api_version(&()));
    meta.owner_references
        .iter()
        .flatten()
        .filter(|r| r.kind == kind && r.api_version == api_version)
        .map(|r| {
            let o = ObjectRef::new(&r.name);
            match &meta.namespace {
                Some(ns) => o.within(ns),
                None => o,
            }
        })
        .collect()
}

/// Adapts a reconcile function of objects to one of keys: the key `ObjectRef` is looked
/// up in `store` (the shared informer's), and `reconcile(object, ctx)` runs on the cached
/// object; a key whose object is gone needs nothing ([`Action::AwaitChange`]).
pub fn for_objects<K, C, F, Fut, E>(
    store: Store<K>,
    ctx: Arc<C>,
    reconcile: F,
) -> impl Fn(ObjectRef<K>) -> BoxFuture<'static, Result<Action, E>> + Clone + Send + Sync + 'static
where
    K: InformerResource,
    C: Send + Sync + 'static,
    F: Fn(Arc<K>, Arc<C>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
    E: Send + 'static,
{
    move |key: ObjectRef<K>| {
        let obj = store.get(&key);
        let (ctx, reconcile) = (ctx.clone(), reconcile.clone());
        Box::pin(async move {
            match obj {
                Some(o) => reconcile(o, ctx).await,
                None => Ok(Action::AwaitChange),
            }
        })
    }
}

/// Runs controller `name` forever: every key the `triggers` yield is queued on `queue`
/// (deduplicated), and `workers` workers (at least one) reconcile the keys, never one
/// key in two workers at once. `Ok(action)` forgets the key's failures (and requeues it
/// after the delay of [`Action::RequeueAfter`]); `Err` requeues it after its per-key
/// back-off. Keys may also be queued directly on (a clone of) `queue`.
pub async fn run_controller<T, F, Fut, E>(
    name: &'static str,
    workers: usize,
    queue: WorkQueue<T>,
    triggers: Vec<Trigger<T>>,
    reconcile: F,
) where
    T: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    F: Fn(T) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
    E: Display + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for t in triggers {
        let q = queue.clone();
        set.spawn(async move {
            let mut keys = t.keys;
            while let Some(k) = keys.next().await {
                q.add(k);
            }
            tracing::debug!(controller = name, "a trigger ended");
        });
    }
    tracing::debug!(controller = name, workers, "controller started");
    for _ in 0..workers.max(1) {
        let q = queue.clone();
        let reconcile = reconcile.clone();
        set.spawn(async move {
            loop {
                let key = q.get().await;
                let r = reconcile(key.clone()).await;
                handle_result(name, &q, &key, r);
                q.done(&key);
            }
        });
    }
    // Workers never end; triggers may (a finished stream): keep running.
    while set.join_next().await.is_some() {}
}

/// Applies a reconcile's outcome to `key`'s place in the queue.
fn handle_result<T, E>(name: &'static str, q: &WorkQueue<T>, key: &T, r: Result<Action, E>)
where
    T: Hash + Eq + Clone + Debug + Send + 'static,
    E: Display,
{
    match r {
        Ok(action) => {
            q.forget(key);
            if let Action::RequeueAfter(d) = action {
                q.add_after(key.clone(), d);
            }
        }
        Err(e) => {
            let failures = q.failures(key) + 1;
            let delay = q.add_rate_limited(key.clone());
            // Transient conflicts are normal; a key that keeps failing is not.
            if failures % 10 == 3 {
                tracing::warn!(controller = name, key = ?key, error = %e, failures, ?delay, "reconcile keeps failing; requeued with back-off");
            } else {
                tracing::debug!(controller = name, key = ?key, error = %e, failures, ?delay, "reconcile failed; requeued with back-off");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    #[tokio::test(start_paused = true)]
    async fn errors_back_off_per_key_and_success_resets() {
        let q: WorkQueue<&'static str> = WorkQueue::new();
        let calls: Arc<Mutex<Vec<(&'static str, Duration)>>> = Arc::default();
        let t0 = tokio::time::Instant::now();
        let c = calls.clone();
        let task = tokio::spawn(run_controller(
            "test",
            2,
            q.clone(),
            vec![Trigger::from_stream(futures_util::stream::iter(["a", "b"]))],
            move |k| {
                let c = c.clone();
                async move {
                    let mut v = c.lock().unwrap_or_else(|p| p.into_inner());
                    v.push((k, t0.elapsed()));
                    let n = v.iter().filter(|(x, _)| *x == k).count();
                    // "a" fails 5 times then succeeds; "b" succeeds at once.
                    if k == "a" && n <= 5 {
                        Err("boom")
                    } else {
                        Ok(Action::AwaitChange)
                    }
                }
            },
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let v = calls.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let a: Vec<u128> = v
            .iter()
            .filter(|(k, _)| *k == "a")
            .map(|(_, t)| t.as_millis())
            .collect();
        // Attempts at 0, then after 5, 10, 20, 40, 80 ms of back-off.
        assert_eq!(a, [0, 5, 15, 35, 75, 155]);
        assert_eq!(v.iter().filter(|(k, _)| *k == "b").count(), 1);
        assert_eq!(q.failures(&"a"), 0, "success forgets the failures");
        task.abort();
    }

    #[tokio::test]
    async fn triggers_on_shared_informers_queue_existing_and_changed_objects() {
        use k8s_openapi::api::core::v1::ConfigMap;
        use kube::runtime::watcher::Event;
        let cm = |name: &str| {
            let mut c = ConfigMap::default();
            c.metadata.name = Some(name.into());
            c.metadata.namespace = Some("ns".into());
            c
        };
        let informers = SharedInformers::fake();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Event<ConfigMap>>();
        informers.feed(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|e| (e, rx))
        }));
        for e in [
            Event::Init,
            Event::InitApply(cm("a")),
            Event::InitApply(cm("b")),
            Event::InitDone,
        ] {
            tx.send(e).ok();
        }
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let s = seen.clone();
        let store = informers.store::<ConfigMap>().await;
        let task = tokio::spawn(run_controller(
            "test",
            2,
            WorkQueue::new(),
            vec![Trigger::objects(&informers, |c: &ConfigMap| {
                c.metadata.name.clone()
            })],
            move |name: String| {
                let (s, store) = (s.clone(), store.clone());
                async move {
                    let here = store.get(&ObjectRef::new(&name).within("ns")).is_some();
                    s.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(format!("{name}:{here}"));
                    Ok::<_, String>(Action::AwaitChange)
                }
            },
        ));
        let wait_for = |n: usize| {
            let seen = seen.clone();
            async move {
                for _ in 0..500 {
                    if seen.lock().unwrap_or_else(|p| p.into_inner()).len() >= n {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        };
        wait_for(2).await;
        tx.send(Event::Apply(cm("c"))).ok();
        wait_for(3).await;
        tx.send(Event::Delete(cm("a"))).ok();
        wait_for(4).await;
        let mut v = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        v[..2].sort();
        assert_eq!(v, ["a:true", "b:true", "c:true", "a:false"]);
        task.abort();
    }

    #[test]
    fn owners_of_names_owners_of_the_kind_in_the_namespace() {
        use k8s_openapi::api::apps::v1::ReplicaSet;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
        let owner = |kind: &str, api: &str, name: &str| OwnerReference {
            kind: kind.into(),
            api_version: api.into(),
            name: name.into(),
            ..Default::default()
        };
        let meta = ObjectMeta {
            namespace: Some("ns".into()),
            owner_references: Some(vec![
                owner("ReplicaSet", "apps/v1", "rs1"),
                owner("ReplicaSet", "extensions/v1beta1", "old"),
                owner("Job", "batch/v1", "j"),
            ]),
            ..Default::default()
        };
        assert_eq!(
            owners_of::<ReplicaSet>(&meta),
            vec![ObjectRef::new("rs1").within("ns")]
        );
    }

    #[tokio::test]
    async fn for_objects_reconciles_cached_objects_and_skips_gone_ones() {
        use k8s_openapi::api::core::v1::ConfigMap;
        let (store, mut writer) = kube::runtime::reflector::store::<ConfigMap>();
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some("here".into());
        cm.metadata.namespace = Some("ns".into());
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(cm));
        let f = for_objects(
            store,
            Arc::new(7u32),
            |o: Arc<ConfigMap>, ctx: Arc<u32>| async move {
                assert_eq!(*ctx, 7);
                Ok::<_, String>(Action::requeue(Duration::from_secs(
                    o.metadata.name.as_deref().map_or(0, |n| n.len() as u64),
                )))
            },
        );
        assert_eq!(
            f(ObjectRef::new("here").within("ns")).await,
            Ok(Action::RequeueAfter(Duration::from_secs(4)))
        );
        assert_eq!(
            f(ObjectRef::new("gone").within("ns")).await,
            Ok(Action::AwaitChange)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_is_never_reconciled_by_two_workers_at_once() {
        let q: WorkQueue<u32> = WorkQueue::new();
        let running = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let calls = Arc::new(AtomicUsize::new(0));
        let (r, m, c) = (running.clone(), max.clone(), calls.clone());
        let task = tokio::spawn(run_controller(
            "test",
            4,
            q.clone(),
            Vec::new(),
            move |_k: u32| {
                let (r, m, c) = (r.clone(), m.clone(), c.clone());
                async move {
                    let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                    m.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    r.fetch_sub(1, Ordering::SeqCst);
                    c.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, String>(Action::AwaitChange)
                }
            },
        ));
        q.add(7);
        tokio::time::sleep(Duration::from_millis(1)).await;
        // Queued again (three times) while running: runs once more, after.
        q.add(7);
        q.add(7);
        q.add(7);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(max.load(Ordering::SeqCst), 1);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        task.abort();
    }

    #[tokio::test]
    async fn notified_triggers_fold_into_one_key() {
        let notify = Arc::new(tokio::sync::Notify::new());
        let mut t = Trigger::notified(notify.clone(), "k").keys;
        notify.notify_one();
        notify.notify_one();
        assert_eq!(t.next().await, Some("k"));
        let again = tokio::time::timeout(Duration::from_millis(20), t.next()).await;
        assert!(again.is_err(), "two notifications without a waiter are one");
        notify.notify_one();
        assert_eq!(t.next().await, Some("k"));
    }

    #[tokio::test(start_paused = true)]
    async fn requeue_after_looks_again_and_every_ticks() {
        let q: WorkQueue<()> = WorkQueue::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let task = tokio::spawn(run_controller(
            "test",
            1,
            q.clone(),
            vec![Trigger::every(Duration::from_secs(10), ())],
            move |()| {
                let c = c.clone();
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, String>(Action::requeue_after(Some(Duration::from_secs(3))))
                }
            },
        ));
        // t=0 (tick), 3, 6, 9, 10 (tick; the 9 s requeue's next is 12), 12 ... at 11.5 s:
        tokio::time::sleep(Duration::from_millis(11_500)).await;
        assert!(calls.load(Ordering::SeqCst) >= 5, "{calls:?}");
        task.abort();
    }
}
