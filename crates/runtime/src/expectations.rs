//! Controller expectations (upstream's `ControllerExpectations` /
//! `UIDTrackingControllerExpectations`): per controller key, the writes a sync made
//! (pods created, deleted, finalizers removed) that the shared informer has not shown
//! yet. While any is outstanding the controller must not decide again from its cache
//! (it would create the same pods twice, or count a finished pod twice); once the
//! informer shows every one of them, or after [`EXPECTATIONS_TIMEOUT`], the key is
//! satisfied.
//!
//! Unlike upstream's counters, each write is recorded by name and UID, and
//! [`Expectations::satisfied`] checks it against the cache itself, so no event can be
//! missed between the write and its recording. [`Expectations::observe_gone`] settles
//! a created object that was deleted again before the cache showed it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// How long unmet expectations block a controller key (upstream's
/// `ExpectationsTimeout`, 5 minutes): a write the informer never shows (a missed
/// event) stops blocking after this.
pub const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(300);

/// One write whose effect the cache must show.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    /// The object was created: the cache must hold it (or a newer object of that name).
    Create,
    /// The object was deleted: the cache must not hold it, or hold it terminating.
    Delete,
    /// This finalizer was removed: the cache must show the object without it (or gone).
    RemoveFinalizer(String),
}

#[derive(Clone, Debug)]
struct Item {
    name: String,
    uid: String,
    op: Op,
}

#[derive(Debug)]
struct Entry {
    items: Vec<Item>,
    since: Instant,
}

/// The outstanding writes of every key of one controller. Cheap to share (`Arc`
/// inside); all methods take `&self`.
#[derive(Clone, Debug)]
pub struct Expectations {
    inner: Arc<Mutex<HashMap<String, Entry>>>,
    timeout: Duration,
}

impl Default for Expectations {
    fn default() -> Self {
        Self::new()
    }
}

fn meta_matches(meta: &ObjectMeta, uid: &str) -> bool {
    meta.uid.as_deref() == Some(uid)
}

impl Item {
    /// Whether the cached object of this item's name shows the write.
    fn observed(&self, cached: Option<&ObjectMeta>) -> bool {
        match (&self.op, cached) {
            // Another object of that name may be an older one the cache still holds.
            (Op::Create, Some(m)) => meta_matches(m, &self.uid),
            (Op::Create, None) => false,
            (Op::Delete, Some(m)) => !meta_matches(m, &self.uid) || m.deletion_timestamp.is_some(),
            (Op::Delete, None) => true,
            (Op::RemoveFinalizer(f), Some(m)) => {
                !meta_matches(m, &self.uid) || !m.finalizers.iter().flatten().any(|x| x == f)
            }
            (Op::RemoveFinalizer(_), None) => true,
        }
    }
}

impl Expectations {
    /// No expectations, with upstream's timeout.
    pub fn new() -> Self {
        Self::with_timeout(EXPECTATIONS_TIMEOUT)
    }

    /// No expectations, with a custom timeout (tests).
    pub fn with_timeout(timeout: Duration) -> Self {
        Expectations {
            inner: Arc::new(Mutex::new(HashMap::new())),
            timeout,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        match self.inner.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn add(&self, key: &str, items: impl IntoIterator<Item = Item>) {
        let mut items = items.into_iter().peekable();
        if items.peek().is_none() {
            return;
        }
        let mut map = self.lock();
        let e = map.entry(key.to_string()).or_insert_with(|| Entry {
            items: Vec::new(),
            since: Instant::now(),
        });
        e.items.extend(items);
        e.since = Instant::now();
    }

    /// Records created objects `(name, uid)` of `key` (as the API returned them).
    pub fn expect_creations(&self, key: &str, created: impl IntoIterator<Item = (String, String)>) {
        self.add(
            key,
            created.into_iter().map(|(name, uid)| Item {
                name,
                uid,
                op: Op::Create,
            }),
        );
    }

    /// Records deleted objects `(name, uid)` of `key`.
    pub fn expect_deletions(&self, key: &str, deleted: impl IntoIterator<Item = (String, String)>) {
        self.add(
            key,
            deleted.into_iter().map(|(name, uid)| Item {
                name,
                uid,
                op: Op::Delete,
            }),
        );
    }

    /// Records objects `(name, uid)` of `key` whose `finalizer` was removed.
    pub fn expect_finalizer_removals(
        &self,
        key: &str,
        finalizer: &str,
        objs: impl IntoIterator<Item = (String, String)>,
    ) {
        self.add(
            key,
            objs.into_iter().map(|(name, uid)| Item {
                name,
                uid,
                op: Op::RemoveFinalizer(finalizer.to_string()),
            }),
        );
    }

    /// Settles the expectations of `key` about the object of `uid`, which the informer
    /// showed deleted (a created object deleted before the cache showed it).
    pub fn observe_gone(&self, key: &str, uid: &str) {
        let mut map = self.lock();
        if let Some(e) = map.get_mut(key) {
            e.items.retain(|i| i.uid != uid);
            if e.items.is_empty() {
                map.remove(key);
            }
        }
    }

    /// Whether every write of `key` shows in the cache, looked up by name with `cached`
    /// (or the expectations timed out). Settled writes are forgotten.
    pub fn satisfied<F, M>(&self, key: &str, cached: F) -> bool
    where
        F: Fn(&str) -> Option<M>,
        M: std::ops::Deref<Target = ObjectMeta>,
    {
        let mut map = self.lock();
        let Some(e) = map.get_mut(key) else {
            return true;
        };
        if e.since.elapsed() > self.timeout {
            tracing::debug!(key, outstanding = e.items.len(), "expectations timed out");
            map.remove(key);
            return true;
        }
        e.items.retain(|i| !i.observed(cached(&i.name).as_deref()));
        let done = e.items.is_empty();
        if done {
            map.remove(key);
        }
        done
    }

    /// How many writes of `key` are outstanding (as of the last check).
    pub fn pending(&self, key: &str) -> usize {
        self.lock().get(key).map_or(0, |e| e.items.len())
    }

    /// How long until the expectations of `key` time out (None when it has none).
    pub fn time_left(&self, key: &str) -> Option<Duration> {
        self.lock()
            .get(key)
            .map(|e| self.timeout.saturating_sub(e.since.elapsed()))
    }

    /// Forgets `key` (its controller object was deleted).
    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }
}

/// A metadata wrapper to hand [`Expectations::satisfied`] a cached object's metadata.
pub struct MetaOf<K>(pub Arc<K>);

impl<K: kube::Resource> std::ops::Deref for MetaOf<K> {
    type Target = ObjectMeta;
    fn deref(&self) -> &ObjectMeta {
        self.0.meta()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn meta(name: &str, uid: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            uid: Some(uid.into()),
            ..Default::default()
        }
    }

    fn cache(objs: &[ObjectMeta]) -> impl Fn(&str) -> Option<Box<ObjectMeta>> + '_ {
        move |n: &str| {
            objs.iter()
                .find(|m| m.name.as_deref() == Some(n))
                .cloned()
                .map(Box::new)
        }
    }

    #[test]
    fn creations_wait_for_the_cache() {
        let e = Expectations::new();
        assert!(e.satisfied("ns/a", cache(&[])));
        e.expect_creations(
            "ns/a",
            [("p1".into(), "u1".into()), ("p2".into(), "u2".into())],
        );
        assert!(!e.satisfied("ns/a", cache(&[])));
        assert!(!e.satisfied("ns/a", cache(&[meta("p1", "u1")])));
        assert_eq!(e.pending("ns/a"), 1);
        // Other keys are not affected.
        assert!(e.satisfied("ns/b", cache(&[])));
        assert!(e.satisfied("ns/a", cache(&[meta("p2", "u2")])));
        assert_eq!(e.pending("ns/a"), 0);
        assert!(e.time_left("ns/a").is_none());
    }

    #[test]
    fn deletions_wait_until_gone_or_terminating() {
        let e = Expectations::new();
        e.expect_deletions(
            "k",
            [("p1".into(), "u1".into()), ("p2".into(), "u2".into())],
        );
        let mut terminating = meta("p2", "u2");
        assert!(!e.satisfied("k", cache(&[meta("p1", "u1"), terminating.clone()])));
        terminating.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        assert!(!e.satisfied("k", cache(&[meta("p1", "u1"), terminating.clone()])));
        // p1 gone, or replaced by another object of that name.
        assert!(e.satisfied("k", cache(&[meta("p1", "other"), terminating])));
    }

    #[test]
    fn finalizer_removals_wait_for_the_update() {
        let e = Expectations::new();
        e.expect_finalizer_removals("k", "f", [("p".into(), "u".into())]);
        let mut m = meta("p", "u");
        m.finalizers = Some(vec!["f".into(), "g".into()]);
        assert!(!e.satisfied("k", cache(std::slice::from_ref(&m))));
        m.finalizers = Some(vec!["g".into()]);
        assert!(e.satisfied("k", cache(&[m])));
        e.expect_finalizer_removals("k", "f", [("p".into(), "u".into())]);
        assert!(e.satisfied("k", cache(&[])));
    }

    #[test]
    fn gone_settles_a_creation_never_cached() {
        let e = Expectations::new();
        e.expect_creations("k", [("p".into(), "u".into())]);
        e.observe_gone("k", "other");
        assert!(!e.satisfied("k", cache(&[])));
        e.observe_gone("k", "u");
        assert!(e.satisfied("k", cache(&[])));
    }

    #[test]
    fn timeout_and_forget_release_a_key() {
        let e = Expectations::with_timeout(Duration::ZERO);
        e.expect_creations("k", [("p".into(), "u".into())]);
        std::thread::sleep(Duration::from_millis(2));
        assert!(e.satisfied("k", cache(&[])));
        let e = Expectations::new();
        e.expect_creations("k", [("p".into(), "u".into())]);
        assert!(e
            .time_left("k")
            .is_some_and(|d| d > Duration::from_secs(200)));
        e.forget("k");
        assert!(e.satisfied("k", cache(&[])));
    }
}
