//! The per-key work queue (upstream's `workqueue` `RateLimitingInterface` with the
//! `DefaultControllerRateLimiter`'s per-item exponential back-off).
//!
//! Guarantees:
//! - a key is queued at most once however many events name it before a worker takes it;
//! - a key is never handed to two workers at once: an event while it is processed queues
//!   it again for after [`WorkQueue::done`] (so the change is never lost);
//! - a key that failed comes back after `base · 2ⁿ` (5 ms, 10 ms, 20 ms, ... at most
//!   1000 s by default), counted per key and forgotten on success ([`WorkQueue::forget`]).
//!
//! Workers wait on the queue: an idle controller does no work at all.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

/// First retry delay of a failing key (upstream's default item back-off base, 5 ms).
pub const BASE_DELAY: Duration = Duration::from_millis(5);
/// Longest retry delay of a failing key (upstream's default item back-off cap, 1000 s).
pub const MAX_DELAY: Duration = Duration::from_secs(1000);

/// Per-key exponential back-off: retry `n` (1 = first retry) waits `base · 2ⁿ⁻¹`, at
/// most `max` (upstream's `ItemExponentialFailureRateLimiter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry.
    pub base: Duration,
    /// Upper bound of the delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: BASE_DELAY,
            max: MAX_DELAY,
        }
    }
}

impl Backoff {
    /// The delay before retry number `failures` (1 = first retry; 0 is treated as 1).
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(31);
        self.base.saturating_mul(1u32 << exp).min(self.max)
    }
}

/// The default back-off before retry number `failures` of a key (see [`Backoff`]).
pub fn backoff(failures: u32) -> Duration {
    Backoff::default().delay(failures)
}

struct State<T> {
    queue: VecDeque<T>,
    dirty: HashSet<T>,
    processing: HashSet<T>,
    failures: HashMap<T, u32>,
    /// Keys waiting for a delayed add, by when they are due (the earliest wins).
    delayed: HashMap<T, tokio::time::Instant>,
}

/// A keyed, de-duplicating work queue. Cloning is cheap (clones share the queue).
pub struct WorkQueue<T> {
    state: Arc<Mutex<State<T>>>,
    notify: Arc<Notify>,
    backoff: Backoff,
}

impl<T> Clone for WorkQueue<T> {
    fn clone(&self) -> Self {
        WorkQueue {
            state: self.state.clone(),
            notify: self.notify.clone(),
            backoff: self.backoff,
        }
    }
}

impl<T: Hash + Eq + Clone + Send + 'static> Default for WorkQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Hash + Eq + Clone + Send + 'static> WorkQueue<T> {
    /// An empty queue with the default back-off (5 ms doubling, at most 1000 s).
    pub fn new() -> Self {
        Self::with_backoff(Backoff::default())
    }

    /// An empty queue retrying failed keys with `backoff`.
    pub fn with_backoff(backoff: Backoff) -> Self {
        WorkQueue {
            state: Arc::new(Mutex::new(State {
                queue: VecDeque::new(),
                dirty: HashSet::new(),
                processing: HashSet::new(),
                failures: HashMap::new(),
                delayed: HashMap::new(),
            })),
            notify: Arc::new(Notify::new()),
            backoff,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Queues `key` (a no-op when it is already waiting; after [`Self::done`] when a
    /// worker holds it).
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

    /// Queues `key` after `delay` (at once for a zero delay). A key already waiting
    /// for an earlier (or the same) time keeps it: one timer per key, the earliest wins
    /// (upstream's delaying queue).
    pub fn add_after(&self, key: T, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let due = tokio::time::Instant::now() + delay;
        {
            let mut st = self.lock();
            if st.delayed.get(&key).is_some_and(|d| *d <= due) {
                return;
            }
            st.delayed.insert(key.clone(), due);
        }
        let q = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(due).await;
            let mine = {
                let mut st = q.lock();
                let mine = st.delayed.get(&key) == Some(&due);
                if mine {
                    st.delayed.remove(&key);
                }
                mine
            };
            // Superseded by an earlier timer (which already queued the key): nothing.
            if mine {
                q.add(key);
            }
        });
    }

    /// Counts one more failure of `key` and queues it after its back-off; returns the
    /// delay chosen.
    pub fn add_rate_limited(&self, key: T) -> Duration {
        let n = {
            let mut st = self.lock();
            let n = st.failures.entry(key.clone()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        let delay = self.backoff.delay(n);
        self.add_after(key, delay);
        delay
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_queued_twice_while_waiting_runs_once() {
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
    async fn a_key_requeued_while_running_runs_again_after_done() {
        let q = WorkQueue::new();
        q.add("a");
        let k = q.get().await;
        // Events during processing: not handed out twice at once, nor lost.
        q.add("a");
        q.add("a");
        assert!(q.is_empty());
        q.done(&k);
        assert_eq!(q.len(), 1);
        assert_eq!(q.get().await, "a");
        q.done(&"a");
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_adds_keep_the_earliest_time_per_key() {
        let q: WorkQueue<&str> = WorkQueue::new();
        let t0 = tokio::time::Instant::now();
        q.add_after("a", Duration::from_millis(50));
        q.add_after("a", Duration::from_millis(10));
        q.add_after("a", Duration::from_millis(30));
        let k = q.get().await;
        assert_eq!(t0.elapsed(), Duration::from_millis(10));
        q.done(&k);
        // The later timers were superseded: nothing more comes.
        let more = tokio::time::timeout(Duration::from_millis(100), q.get()).await;
        assert!(more.is_err(), "a superseded timer queued the key again");
        // After it fired, a new delay starts a new timer.
        q.add_after("a", Duration::from_millis(20));
        let start = tokio::time::Instant::now();
        assert_eq!(q.get().await, "a");
        assert_eq!(start.elapsed(), Duration::from_millis(20));
    }

    #[test]
    fn backoff_is_5ms_doubling_up_to_the_cap() {
        let seq: Vec<Duration> = (1..=5).map(backoff).collect();
        assert_eq!(seq, [5, 10, 20, 40, 80].map(Duration::from_millis).to_vec());
        // 5 ms · 2¹⁷ = 655 s < 1000 s; 5 ms · 2¹⁸ = 1310 s is capped.
        assert_eq!(backoff(18), Duration::from_millis(5 << 17));
        assert_eq!(backoff(19), MAX_DELAY);
        assert_eq!(backoff(u32::MAX), MAX_DELAY);
        let small = Backoff {
            base: Duration::from_millis(5),
            max: Duration::from_millis(30),
        };
        let seq: Vec<u128> = (1..=5).map(|n| small.delay(n).as_millis()).collect();
        assert_eq!(seq, [5, 10, 20, 30, 30]);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_come_back_after_their_backoff_and_success_forgets() {
        let q: WorkQueue<&str> = WorkQueue::new();
        let t0 = tokio::time::Instant::now();
        let mut waits = Vec::new();
        for _ in 0..4 {
            q.add_rate_limited("a");
            assert!(q.is_empty(), "not before its back-off");
            let start = tokio::time::Instant::now();
            let k = q.get().await;
            waits.push(start.elapsed().as_millis());
            q.done(&k);
        }
        assert_eq!(waits, [5, 10, 20, 40]);
        assert!(t0.elapsed() >= Duration::from_millis(75));
        assert_eq!(q.failures(&"a"), 4);
        q.forget(&"a");
        assert_eq!(q.failures(&"a"), 0);
        assert_eq!(q.add_rate_limited("a"), Duration::from_millis(5));
    }
}
