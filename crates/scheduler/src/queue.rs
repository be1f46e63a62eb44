//! The scheduling queue, as upstream's PriorityQueue: an active queue ordered by
//! priority (highest first) then creation time, a backoff queue of pods waiting out
//! their per-pod exponential backoff, and the unschedulable pods that wait for a
//! cluster event (or at most [`QueueConfig::max_unschedulable`]) before retrying.
//!
//! Time is passed in explicitly (`now`), so the queue is deterministic in tests.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

use crate::snapshot::{pod_key, pod_priority};

/// Backoff and flush settings (upstream defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// Backoff after the first failed attempt (`podInitialBackoffSeconds`, 1 s).
    pub initial_backoff: Duration,
    /// Upper bound of the doubling backoff (`podMaxBackoffSeconds`, 10 s).
    pub max_backoff: Duration,
    /// How long a pod stays unschedulable without a cluster event before it is
    /// retried anyway (`podMaxInUnschedulablePodsDuration`, 5 min).
    pub max_unschedulable: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            max_unschedulable: Duration::from_secs(300),
        }
    }
}

/// Where a queued pod is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodState {
    /// Waiting in the active queue.
    Active,
    /// Waiting out its backoff until the given instant.
    Backoff(Instant),
    /// Failed to schedule at the given instant; waits for a cluster event.
    Unschedulable(Instant),
    /// Popped for a scheduling attempt (or being bound).
    InFlight,
}

/// A pod taken from the queue for a scheduling attempt.
#[derive(Debug, Clone)]
pub struct QueuedPod {
    /// The pod as last seen.
    pub pod: Arc<Pod>,
    /// `namespace/name`.
    pub key: String,
    /// Scheduling attempts so far, this one included.
    pub attempts: u32,
}

type ActiveKey = (Reverse<i32>, i64, u64, String);

#[derive(Debug)]
struct Entry {
    pod: Arc<Pod>,
    seq: u64,
    attempts: u32,
    state: PodState,
    last_failure: Option<Instant>,
    popped_in_move_cycle: u64,
}

impl Entry {
    fn active_key(&self, key: &str) -> ActiveKey {
        let created = self
            .pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_millisecond())
            .unwrap_or(i64::MAX);
        (
            Reverse(pod_priority(&self.pod)),
            created,
            self.seq,
            key.to_string(),
        )
    }
}

/// The scheduling queue of unassigned pods.
#[derive(Debug, Default)]
pub struct SchedulingQueue {
    config: QueueConfig,
    entries: HashMap<String, Entry>,
    active: BTreeSet<ActiveKey>,
    backoff: BTreeSet<(Instant, u64, String)>,
    /// Unschedulable pods by the time they failed.
    unschedulable: BTreeSet<(Instant, u64, String)>,
    seq: u64,
    move_cycle: u64,
}

/// Whether an update of a pod could make it schedulable (upstream `isPodUpdated`:
/// anything but status and bookkeeping metadata changed).
fn pod_updated(old: &Pod, new: &Pod) -> bool {
    old.spec != new.spec
        || old.metadata.labels != new.metadata.labels
        || old.metadata.annotations != new.metadata.annotations
        || old.metadata.owner_references != new.metadata.owner_references
        || old.metadata.finalizers != new.metadata.finalizers
}

impl SchedulingQueue {
    /// An empty queue.
    pub fn new(config: QueueConfig) -> Self {
        SchedulingQueue {
            config,
            ..Default::default()
        }
    }

    /// The backoff after `attempts` failed attempts: initial, doubling, capped.
    pub fn backoff_duration(&self, attempts: u32) -> Duration {
        let mut d = self.config.initial_backoff;
        for _ in 1..attempts {
            if d >= self.config.max_backoff / 2 {
                return self.config.max_backoff;
            }
            d *= 2;
        }
        d.min(self.config.max_backoff)
    }

    fn backoff_expiry(&self, e: &Entry) -> Option<Instant> {
        e.last_failure
            .map(|t| t + self.backoff_duration(e.attempts))
    }

    fn detach(&mut self, key: &str) {
        let Some(e) = self.entries.get(key) else {
            return;
        };
        match e.state {
            PodState::Active => {
                let k = e.active_key(key);
                self.active.remove(&k);
            }
            PodState::Backoff(t) => {
                self.backoff.remove(&(t, e.seq, key.to_string()));
            }
            PodState::Unschedulable(t) => {
                self.unschedulable.remove(&(t, e.seq, key.to_string()));
            }
            PodState::InFlight => {}
        }
    }

    fn set_state(&mut self, key: &str, state: PodState) {
        self.detach(key);
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        e.state = state;
        match state {
            PodState::Active => {
                let k = e.active_key(key);
                self.active.insert(k);
            }
            PodState::Backoff(t) => {
                self.backoff.insert((t, e.seq, key.to_string()));
            }
            PodState::Unschedulable(t) => {
                self.unschedulable.insert((t, e.seq, key.to_string()));
            }
            PodState::InFlight => {}
        }
    }

    /// Moves an entry to the backoff queue if its backoff has not expired yet, else
    /// to the active queue.
    fn activate_or_backoff(&mut self, key: &str, now: Instant) {
        let Some(e) = self.entries.get(key) else {
            return;
        };
        match self.backoff_expiry(e) {
            Some(t) if t > now => self.set_state(key, PodState::Backoff(t)),
            _ => self.set_state(key, PodState::Active),
        }
    }

    /// Adds a new unassigned pod (to the active queue) or updates a queued one; an
    /// unschedulable pod whose spec or labels changed is retried (after its backoff).
    pub fn add(&mut self, pod: impl Into<Arc<Pod>>, now: Instant) {
        let pod: Arc<Pod> = pod.into();
        let key = pod_key(&pod);
        match self.entries.get_mut(&key) {
            Some(e) => {
                let updated = pod_updated(&e.pod, &pod);
                let state = e.state;
                if state == PodState::Active {
                    // the sort key may change (e.g. priority): re-insert
                    self.detach(&key);
                    if let Some(e) = self.entries.get_mut(&key) {
                        e.pod = pod;
                    }
                    self.set_state(&key, PodState::Active);
                    return;
                }
                e.pod = pod;
                if updated && matches!(state, PodState::Unschedulable(_)) {
                    self.activate_or_backoff(&key, now);
                }
            }
            None => {
                self.seq += 1;
                self.entries.insert(
                    key.clone(),
                    Entry {
                        pod,
                        seq: self.seq,
                        attempts: 0,
                        state: PodState::Active,
                        last_failure: None,
                        popped_in_move_cycle: 0,
                    },
                );
                self.set_state(&key, PodState::Active);
            }
        }
    }

    /// Forgets a pod (deleted, assigned, or no longer ours). Returns whether it was queued.
    pub fn delete(&mut self, key: &str) -> bool {
        self.detach(key);
        self.entries.remove(key).is_some()
    }

    /// Takes the highest-priority, oldest pod of the active queue; it stays known
    /// ([`PodState::InFlight`]) until [`SchedulingQueue::done`],
    /// [`SchedulingQueue::unschedulable`] or [`SchedulingQueue::requeue_after_error`].
    pub fn pop(&mut self) -> Option<QueuedPod> {
        let first = self.active.pop_first()?;
        let key = first.3;
        let move_cycle = self.move_cycle;
        let e = self.entries.get_mut(&key)?;
        e.state = PodState::InFlight;
        e.attempts += 1;
        e.popped_in_move_cycle = move_cycle;
        Some(QueuedPod {
            pod: e.pod.clone(),
            key,
            attempts: e.attempts,
        })
    }

    /// The pod was bound: forget it.
    pub fn done(&mut self, key: &str) {
        self.delete(key);
    }

    /// A scheduling attempt found no node. The pod waits for a cluster event — unless
    /// one came while it was in flight, then it only waits out its backoff.
    pub fn unschedulable(&mut self, key: &str, now: Instant) {
        let move_cycle = self.move_cycle;
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        if e.state != PodState::InFlight {
            return;
        }
        e.last_failure = Some(now);
        if e.popped_in_move_cycle < move_cycle {
            self.activate_or_backoff(key, now);
        } else {
            self.set_state(key, PodState::Unschedulable(now));
        }
    }

    /// An attempt failed for another reason (e.g. binding): retry after the backoff.
    pub fn requeue_after_error(&mut self, key: &str, now: Instant) {
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        if e.state != PodState::InFlight {
            return;
        }
        e.last_failure = Some(now);
        self.activate_or_backoff(key, now);
    }

    /// A cluster event that may make pods schedulable (node added or changed, pod
    /// deleted, volume added, ...): every unschedulable pod goes back to the active
    /// queue, or to the backoff queue while its backoff lasts.
    pub fn move_all_to_active_or_backoff(&mut self, now: Instant) {
        self.move_cycle += 1;
        let keys: Vec<String> = self.unschedulable.iter().map(|u| u.2.clone()).collect();
        for k in keys {
            self.activate_or_backoff(&k, now);
        }
    }

    /// Moves pods whose backoff expired to the active queue, and pods unschedulable
    /// for longer than [`QueueConfig::max_unschedulable`] back to active/backoff.
    pub fn flush(&mut self, now: Instant) {
        while let Some(first) = self.backoff.first() {
            if first.0 > now {
                break;
            }
            let key = first.2.clone();
            self.set_state(&key, PodState::Active);
        }
        let max = self.config.max_unschedulable;
        while let Some(first) = self.unschedulable.first() {
            if first.0 + max > now {
                break;
            }
            let key = first.2.clone();
            self.activate_or_backoff(&key, now);
        }
    }

    /// When [`SchedulingQueue::flush`] next has something to do.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let backoff = self.backoff.first().map(|b| b.0);
        let unsched = self
            .unschedulable
            .first()
            .map(|u| u.0 + self.config.max_unschedulable);
        match (backoff, unsched) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the active queue has a pod.
    pub fn has_active(&self) -> bool {
        !self.active.is_empty()
    }

    /// Where a pod is, if queued.
    pub fn state(&self, key: &str) -> Option<PodState> {
        self.entries.get(key).map(|e| e.state)
    }

    /// Number of pods (active, backoff, unschedulable, in flight).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let queued = self.active.len() + self.backoff.len() + self.unschedulable.len();
        (
            self.active.len(),
            self.backoff.len(),
            self.unschedulable.len(),
            self.entries.len() - queued,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn pod(name: &str, priority: i32, created: i64) -> Pod {
        let mut p = crate::test_util::pod(name, "100m", "");
        if let Some(s) = p.spec.as_mut() {
            s.priority = Some(priority);
        }
        p.metadata.creation_timestamp = Some(Time(
            Timestamp::from_second(created).unwrap_or(Timestamp::UNIX_EPOCH),
        ));
        p
    }

    fn pop_name(q: &mut SchedulingQueue) -> Option<String> {
        q.pop().and_then(|p| p.pod.metadata.name.clone())
    }

    #[test]
    fn active_queue_orders_by_priority_then_creation_then_arrival() {
        let now = Instant::now();
        let mut q = SchedulingQueue::new(QueueConfig::default());
        q.add(pod("low-old", 0, 100), now);
        q.add(pod("high-new", 1000, 300), now);
        q.add(pod("low-new", 0, 200), now);
        q.add(pod("high-old", 1000, 50), now);
        q.add(pod("low-new-2", 0, 200), now);
        let order: Vec<String> = std::iter::from_fn(|| pop_name(&mut q)).collect();
        assert_eq!(
            order,
            ["high-old", "high-new", "low-old", "low-new", "low-new-2"]
        );
    }

    #[test]
    fn backoff_doubles_to_ten_seconds() {
        let q = SchedulingQueue::new(QueueConfig::default());
        let secs: Vec<u64> = (1..=6).map(|a| q.backoff_duration(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn error_requeue_waits_out_backoff() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::new(QueueConfig::default());
        q.add(pod("a", 0, 1), t0);
        let p = q.pop().map(|p| p.key);
        assert_eq!(p.as_deref(), Some("default/a"));
        q.requeue_after_error("default/a", t0);
        assert_eq!(
            q.state("default/a"),
            Some(PodState::Backoff(t0 + Duration::from_secs(1)))
        );
        assert_eq!(q.next_wakeup(), Some(t0 + Duration::from_secs(1)));
        q.flush(t0 + Duration::from_millis(999));
        assert!(!q.has_active());
        q.flush(t0 + Duration::from_secs(1));
        assert!(q.has_active());
        // second failure: 2 s
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(q.pop().map(|p| p.attempts), Some(2));
        q.requeue_after_error("default/a", t1);
        assert_eq!(
            q.state("default/a"),
            Some(PodState::Backoff(t1 + Duration::from_secs(2)))
        );
    }

    #[test]
    fn unschedulable_pods_wait_for_a_cluster_event() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::new(QueueConfig::default());
        q.add(pod("a", 0, 1), t0);
        q.add(pod("b", 0, 2), t0);
        q.pop();
        q.unschedulable("default/a", t0);
        assert_eq!(q.state("default/a"), Some(PodState::Unschedulable(t0)));
        // without an event it stays there (only the 5-minute flush would retry it)
        q.flush(t0 + Duration::from_secs(30));
        assert_eq!(q.state("default/a"), Some(PodState::Unschedulable(t0)));
        assert_eq!(q.next_wakeup(), Some(t0 + Duration::from_secs(300)));
        // event after the backoff: straight to active
        q.move_all_to_active_or_backoff(t0 + Duration::from_secs(30));
        assert_eq!(q.state("default/a"), Some(PodState::Active));
        assert_eq!(pop_name(&mut q).as_deref(), Some("a"));
        // event during the backoff: backoff queue
        let t1 = t0 + Duration::from_secs(30);
        q.unschedulable("default/a", t1);
        q.move_all_to_active_or_backoff(t1 + Duration::from_millis(500));
        assert_eq!(
            q.state("default/a"),
            Some(PodState::Backoff(t1 + Duration::from_secs(2)))
        );
        q.flush(t1 + Duration::from_secs(2));
        assert_eq!(q.state("default/a"), Some(PodState::Active));
    }

    #[test]
    fn unschedulable_pods_are_retried_after_five_minutes() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::new(QueueConfig::default());
        q.add(pod("a", 0, 1), t0);
        q.pop();
        q.unschedulable("default/a", t0);
        q.flush(t0 + Duration::from_secs(299));
        assert!(!q.has_active());
        q.flush(t0 + Duration::from_secs(300));
        assert_eq!(q.state("default/a"), Some(PodState::Active));
    }

    #[test]
    fn event_during_attempt_sends_failed_pod_to_backoff() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::new(QueueConfig::default());
        q.add(pod("a", 0, 1), t0);
        q.pop();
        q.move_all_to_active_or_backoff(t0);
        q.unschedulable("default/a", t0);
        assert_eq!(
            q.state("default/a"),
            Some(PodState::Backoff(t0 + Duration::from_secs(1)))
        );
    }

    #[test]
    fn spec_update_retries_unschedulable_pod_but_status_update_does_not() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::new(QueueConfig::default());
        q.add(pod("a", 0, 1), t0);
        q.pop();
        q.unschedulable("default/a", t0);
        let mut p = pod("a", 0, 1);
        p.status = Some(Default::default());
        p.metadata.resource_version = Some("7".into());
        q.add(p.clone(), t0 + Duration::from_secs(5));
        assert!(matches!(
            q.state("default/a"),
            Some(PodState::Unschedulable(_))
        ));
        p.metadata.labels = Some([("x".to_string(), "y".to_string())].into());
        q.add(p, t0 + Duration::from_secs(5));
        assert_eq!(q.state("default/a"), Some(PodState::Active));
    }

    #[test]
    fn delete_removes_from_every_queue() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::new(QueueConfig::default());
        q.add(pod("a", 0, 1), t0);
        q.add(pod("b", 0, 2), t0);
        q.pop();
        q.requeue_after_error("default/a", t0);
        assert!(q.delete("default/a"));
        assert!(q.delete("default/b"));
        assert!(!q.delete("default/b"));
        assert_eq!(q.counts(), (0, 0, 0, 0));
        assert_eq!(q.next_wakeup(), None);
        assert!(q.pop().is_none());
    }
}
