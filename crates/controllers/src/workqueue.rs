//! A keyed work queue with rate-limited requeue (upstream's `workqueue`
//! `RateLimitingInterface`): a key is queued at most once however many events name it
//! before a worker takes it; a key being processed is not handed to a second worker
//! (an event meanwhile queues it again for after [`WorkQueue::done`]); a failed key comes
//! back after an exponential back-off per key (5 ms · 2ⁿ, at most 1000 s), forgotten on
//! success. Workers wait on the queue: an idle controller does no work at all.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

/// First retry delay of a failing key (upstream's default item back-off base).
pub const BASE_DELAY: Duration = Duration::from_millis(5);
/// Longest retry delay of a failing key.
pub const MAX_DELAY: Duration = Duration::from_secs(1000);

struct State<T> {
    queue: VecDeque<T>,
    dirty: HashSet<T>,
    processing: HashSet<T>,
    failures: HashMap<T, u32>,
}

/// A keyed, de-duplicating work queue. Cloning is cheap (clones share the queue).
pub struct WorkQueue<T> {
    state: Arc<Mutex<State<T>>>,
    notify: Arc<Notify>,
}

impl<T> Clone for WorkQueue<T> {
    fn clone(&self) -> Self {
        WorkQueue {
            state: self.state.clone(),
            notify: self.notify.clone(),
        }
    }
}

impl<T: Hash + Eq + Clone + Send + 'static> Default for WorkQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// The back-off before retry number `failures` (1 = first retry) of a key.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(31);
    BASE_DELAY.saturating_mul(1u32 << exp).min(MAX_DELAY)
}

impl<T: Hash + Eq + Clone + Send + 'static> WorkQueue<T> {
    /// An empty queue.
    pub fn new() -> Self {
        WorkQueue {
            state: Arc::new(Mutex::new(State {
                queue: VecDeque::new(),
                dirty: HashSet::new(),
                processing: HashSet::new(),
                failures: HashMap::new(),
            })),
            notify: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Queues `key` (a no-op when it is already waiting).
    pub fn add(&self, key: T) {
        let mut st = self.lock();
        if !st.dirty.insert(key.clone()) {
            return;
        }
        if !st.processing.contains(&key) {
            st.queue.push_back(key);
            drop(st);
            self.notify.notify_one();
        }
    }

    /// Queues `key` after `delay` (at once for a zero delay).
    pub fn add_after(&self, key: T, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let q = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            q.add(key);
        });
    }

    /// Queues `key` after its per-key exponential back-off (one more failure).
    pub fn add_rate_limited(&self, key: T) {
        let n = {
            let mut st = self.lock();
            let n = st.failures.entry(key.clone()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        self.add_after(key, backoff(n));
    }

    /// Clears the failure count of `key` (it succeeded).
    pub fn forget(&self, key: &T) {
        self.lock().failures.remove(key);
    }

    /// How many times `key` failed in a row.
    pub fn failures(&self, key: &T) -> u32 {
        self.lock().failures.get(key).copied().unwrap_or(0)
    }

    /// How many keys wait for a worker.
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// Whether no key waits for a worker.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the next key, waiting for one; the caller must call [`Self::done`] with it.
    pub async fn get(&self) -> T {
        loop {
            let notified = self.notify.notified();
            {
                let mut st = self.lock();
                if let Some(k) = st.queue.pop_front() {
                    st.dirty.remove(&k);
                    st.processing.insert(k.clone());
                    let more = !st.queue.is_empty();
                    drop(st);
                    if more {
                        // Wake another worker for the rest.
                        self.notify.notify_one();
                    }
                    return k;
                }
            }
            notified.await;
        }
    }

    /// Marks `key` processed; queues it again if an event named it meanwhile.
    pub fn done(&self, key: &T) {
        let mut st = self.lock();
        st.processing.remove(key);
        if st.dirty.contains(key) {
            st.queue.push_back(key.clone());
            drop(st);
            self.notify.notify_one();
        }
    }

    /// Runs `workers` workers forever, each taking keys and calling `sync`: `Ok(None)` is
    /// done, `Ok(Some(d))` looks again after `d`, `Err` retries after the key's back-off.
    pub async fn run<F, Fut, E>(&self, workers: usize, name: &'static str, sync: F)
    where
        F: Fn(T) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<Option<Duration>, E>> + Send,
        E: std::fmt::Display,
        T: std::fmt::Debug + Sync,
    {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..workers.max(1) {
            let q = self.clone();
            let sync = sync.clone();
            set.spawn(async move {
                loop {
                    let key = q.get().await;
                    match sync(key.clone()).await {
                        Ok(again) => {
                            q.forget(&key);
                            if let Some(d) = again {
                                q.add_after(key.clone(), d);
                            }
                        }
                        Err(e) => {
                            let failures = q.failures(&key) + 1;
                            // Transient conflicts are normal; a key that keeps failing is not.
                            if failures % 10 == 3 {
                                tracing::warn!(controller = name, key = ?key, error = %e, failures, "sync keeps failing; requeued with back-off");
                            } else {
                                tracing::debug!(controller = name, key = ?key, error = %e, failures, "sync failed; requeued with back-off");
                            }
                            q.add_rate_limited(key.clone());
                        }
                    }
                    q.done(&key);
                }
            });
        }
        while set.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_key_is_queued_once() {
        let q = WorkQueue::new();
        q.add("a");
        q.add("b");
        q.add("a");
        assert_eq!(q.len(), 2);
        assert_eq!(q.get().await, "a");
        assert_eq!(q.get().await, "b");
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn a_key_in_progress_waits_for_done() {
        let q = WorkQueue::new();
        q.add("a");
        let k = q.get().await;
        // An event during processing: not handed out twice at once.
        q.add("a");
        q.add("a");
        assert!(q.is_empty());
        q.done(&k);
        assert_eq!(q.len(), 1);
        assert_eq!(q.get().await, "a");
        q.done(&"a");
        assert!(q.is_empty());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(1), Duration::from_millis(5));
        assert_eq!(backoff(2), Duration::from_millis(10));
        assert_eq!(backoff(4), Duration::from_millis(40));
        assert_eq!(backoff(100), MAX_DELAY);
    }

    #[tokio::test]
    async fn failures_come_back_after_backoff_and_success_forgets() {
        let q: WorkQueue<&str> = WorkQueue::new();
        q.add_rate_limited("a");
        q.add_rate_limited("a");
        assert_eq!(q.failures(&"a"), 2);
        assert!(q.is_empty());
        let got = tokio::time::timeout(Duration::from_secs(5), q.get()).await;
        assert_eq!(got.ok(), Some("a"));
        q.forget(&"a");
        assert_eq!(q.failures(&"a"), 0);
    }

    #[tokio::test]
    async fn workers_retry_failures_and_reschedule() {
        let q: WorkQueue<&'static str> = WorkQueue::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let runner = q.clone();
        let task = tokio::spawn(async move {
            runner
                .run(2, "test", move |_k| {
                    let c = c.clone();
                    async move {
                        // Fails twice, then succeeds once and stops.
                        match c.fetch_add(1, Ordering::SeqCst) {
                            0 | 1 => Err("boom"),
                            _ => Ok(None),
                        }
                    }
                })
                .await
        });
        q.add("a");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while calls.load(Ordering::SeqCst) < 3 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "a successful key is not retried"
        );
        assert_eq!(q.failures(&"a"), 0);
        task.abort();
    }
}
