//! The scheduler's state machine, free of I/O: watch events in, scheduling outcomes
//! out. The runner feeds it and carries out what it decides (bind, patch, events).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::runtime::watcher::Event;

use crate::queue::{QueueConfig, SchedulingQueue};
use crate::{pod_key, FitError, Scheduler, Snapshot};

/// A watch event of one of the kinds the scheduler follows.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // moved once through a channel; boxing buys nothing
pub enum WatchMsg {
    /// Nodes.
    Node(Event<Node>),
    /// Pods of every namespace (the shared informer's own objects).
    Pod(Event<Arc<Pod>>),
    /// PersistentVolumes.
    Pv(Event<PersistentVolume>),
    /// PersistentVolumeClaims.
    Pvc(Event<PersistentVolumeClaim>),
    /// StorageClasses.
    Class(Event<StorageClass>),
    /// PodDisruptionBudgets.
    Pdb(Event<PodDisruptionBudget>),
    /// Namespaces.
    Namespace(Event<Namespace>),
}

/// The kinds whose initial list must be complete before scheduling starts.
const KINDS: usize = 7;

/// What a scheduling attempt decided.
#[derive(Debug)]
pub enum Outcome {
    /// Bind `pod` to `node` (the pod is already assumed in the snapshot).
    Bind {
        /// The pod, as queued (without `nodeName`).
        pod: Arc<Pod>,
        /// The chosen node.
        node: String,
    },
    /// No node fits.
    Unschedulable {
        /// The pod, as queued.
        pod: Arc<Pod>,
        /// Why (with a preemption to carry out, if any).
        err: FitError,
    },
}

/// A list-and-watch mirror of one kind, keyed by `namespace/name` or name.
#[derive(Debug)]
struct Mirror<K> {
    items: HashMap<String, K>,
    relist: Option<HashMap<String, K>>,
}

impl<K> Default for Mirror<K> {
    fn default() -> Self {
        Mirror {
            items: HashMap::new(),
            relist: None,
        }
    }
}

fn obj_key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    match &meta.namespace {
        Some(ns) => format!("{ns}/{}", meta.name.as_deref().unwrap_or("")),
        None => meta.name.clone().unwrap_or_default(),
    }
}

impl<K: kube::Resource> Mirror<K> {
    /// Applies an event; true when the set of objects changed in a way that was applied
    /// (always true except for `Init`/`InitApply`, which only buffer).
    fn apply(&mut self, ev: Event<K>) -> bool {
        match ev {
            Event::Apply(o) => {
                self.items.insert(obj_key(o.meta()), o);
                true
            }
            Event::Delete(o) => {
                self.items.remove(&obj_key(o.meta()));
                true
            }
            Event::Init => {
                self.relist = Some(HashMap::new());
                false
            }
            Event::InitApply(o) => {
                self.relist
                    .get_or_insert_with(HashMap::new)
                    .insert(obj_key(o.meta()), o);
                false
            }
            Event::InitDone => {
                self.items = self.relist.take().unwrap_or_default();
                true
            }
        }
    }

    fn values(&self) -> Vec<K>
    where
        K: Clone,
    {
        self.items.values().cloned().collect()
    }
}

/// Whether this scheduler is responsible for a pod and the pod waits for a node.
pub fn wants_scheduling(pod: &Pod, scheduler_name: &str) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    let name_ok = match spec.scheduler_name.as_deref() {
        None | Some("") => scheduler_name == "default-scheduler",
        Some(n) => n == scheduler_name,
    };
    let terminal = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    );
    name_ok
        && spec.node_name.as_deref().unwrap_or("").is_empty()
        && pod.metadata.deletion_timestamp.is_none()
        && spec.scheduling_gates.as_ref().is_none_or(|g| g.is_empty())
        && !terminal
}

/// Whether a node change may make pods schedulable (upstream
/// `nodeSchedulingPropertiesChange`): schedulability, allocatable, labels, taints,
/// or conditions (type/status) changed.
pub fn node_scheduling_properties_changed(old: &Node, new: &Node) -> bool {
    let unsched = |n: &Node| {
        n.spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false)
    };
    let taints = |n: &Node| {
        n.spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default()
    };
    let alloc = |n: &Node| n.status.as_ref().and_then(|s| s.allocatable.clone());
    let conds = |n: &Node| -> Vec<(String, String)> {
        n.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .map(|c| {
                c.iter()
                    .map(|c| (c.type_.clone(), c.status.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    unsched(old) != unsched(new)
        || alloc(old) != alloc(new)
        || old.metadata.labels != new.metadata.labels
        || taints(old) != taints(new)
        || conds(old) != conds(new)
}

/// The scheduler's cluster view and queue.
#[derive(Debug)]
pub struct Core {
    /// Nodes with their assigned (and assumed) pods.
    pub snap: Snapshot,
    /// Unassigned pods waiting for a node.
    pub queue: SchedulingQueue,
    /// The algorithm.
    pub sched: Scheduler,
    scheduler_name: String,
    /// Pods bound (or being bound) by us that the watch has not shown assigned yet: key -> node.
    assumed: HashMap<String, String>,
    /// Unassigned pods nominated to a node by preemption: key -> (node, pod).
    nominated: HashMap<String, (String, Arc<Pod>)>,
    /// Every pod key seen (assigned or queued), to resolve relists.
    pods: HashSet<String>,
    pod_relist: Option<HashSet<String>>,
    node_relist: Option<HashSet<String>>,
    pvs: Mirror<PersistentVolume>,
    pvcs: Mirror<PersistentVolumeClaim>,
    classes: Mirror<StorageClass>,
    pdbs: Mirror<PodDisruptionBudget>,
    namespaces: Mirror<Namespace>,
    synced: [bool; KINDS],
}

impl Core {
    /// An empty state.
    pub fn new(sched: Scheduler, scheduler_name: &str, queue: QueueConfig) -> Self {
        Core {
            snap: Snapshot::default(),
            queue: SchedulingQueue::new(queue),
            sched,
            scheduler_name: scheduler_name.to_string(),
            assumed: HashMap::new(),
            nominated: HashMap::new(),
            pods: HashSet::new(),
            pod_relist: None,
            node_relist: None,
            pvs: Mirror::default(),
            pvcs: Mirror::default(),
            classes: Mirror::default(),
            pdbs: Mirror::default(),
            namespaces: Mirror::default(),
            synced: [false; KINDS],
        }
    }

    /// Whether every watch delivered its initial list.
    pub fn synced(&self) -> bool {
        self.synced.iter().all(|s| *s)
    }

    /// Number of pods bound by us but not yet seen assigned.
    pub fn assumed(&self) -> usize {
        self.assumed.len()
    }

    /// Applies a watch event.
    pub fn handle(&mut self, msg: WatchMsg, now: Instant) {
        match msg {
            WatchMsg::Node(ev) => self.on_node(ev, now),
            WatchMsg::Pod(ev) => self.on_pod(ev, now),
            WatchMsg::Pv(ev) => {
                let done = matches!(ev, Event::InitDone);
                if self.pvs.apply(ev) {
                    self.refresh_volumes(now);
                }
                self.synced[2] |= done;
            }
            WatchMsg::Pvc(ev) => {
                let done = matches!(ev, Event::InitDone);
                if self.pvcs.apply(ev) {
                    self.refresh_volumes(now);
                }
                self.synced[3] |= done;
            }
            WatchMsg::Class(ev) => {
                let done = matches!(ev, Event::InitDone);
                if self.classes.apply(ev) {
                    self.refresh_volumes(now);
                }
                self.synced[4] |= done;
            }
            WatchMsg::Pdb(ev) => {
                let done = matches!(ev, Event::InitDone);
                if self.pdbs.apply(ev) {
                    self.snap.set_pdbs(self.pdbs.values());
                }
                self.synced[5] |= done;
            }
            WatchMsg::Namespace(ev) => {
                let done = matches!(ev, Event::InitDone);
                if self.namespaces.apply(ev) {
                    self.snap.set_namespaces(self.namespaces.values());
                    // namespace labels feed affinity namespaceSelectors
                    self.queue.move_all_to_active_or_backoff(now);
                }
                self.synced[6] |= done;
            }
        }
    }

    fn refresh_volumes(&mut self, now: Instant) {
        self.snap
            .set_volumes(self.pvs.values(), self.pvcs.values(), self.classes.values());
        self.queue.move_all_to_active_or_backoff(now);
    }

    fn on_node(&mut self, ev: Event<Node>, now: Instant) {
        match ev {
            Event::Apply(n) => self.apply_node(n, now),
            Event::Delete(n) => {
                if let Some(name) = n.metadata.name.as_deref() {
                    self.snap.remove_node(name);
                }
            }
            Event::Init => self.node_relist = Some(HashSet::new()),
            Event::InitApply(n) => {
                if let Some(name) = n.metadata.name.clone() {
                    self.node_relist
                        .get_or_insert_with(HashSet::new)
                        .insert(name);
                }
                self.apply_node(n, now);
            }
            Event::InitDone => {
                let seen = self.node_relist.take().unwrap_or_default();
                let gone: Vec<String> = self
                    .snap
                    .node_names()
                    .filter(|n| !seen.contains(*n))
                    .map(String::from)
                    .collect();
                for n in gone {
                    self.snap.remove_node(&n);
                }
                self.synced[0] = true;
            }
        }
    }

    fn apply_node(&mut self, n: Node, now: Instant) {
        let Some(name) = n.metadata.name.clone() else {
            return;
        };
        let relevant = match self.snap.node_index(&name) {
            Some(i) => node_scheduling_properties_changed(&self.snap.nodes[i].node, &n),
            None => true,
        };
        self.snap.update_node(n);
        if relevant {
            self.queue.move_all_to_active_or_backoff(now);
        }
    }

    fn on_pod(&mut self, ev: Event<Arc<Pod>>, now: Instant) {
        match ev {
            Event::Apply(p) => self.apply_pod(p, now),
            Event::Delete(p) => self.delete_pod(&pod_key(&p), now),
            Event::Init => self.pod_relist = Some(HashSet::new()),
            Event::InitApply(p) => {
                self.pod_relist
                    .get_or_insert_with(HashSet::new)
                    .insert(pod_key(&p));
                self.apply_pod(p, now);
            }
            Event::InitDone => {
                let seen = self.pod_relist.take().unwrap_or_default();
                let gone: Vec<String> = self
                    .pods
                    .iter()
                    .filter(|k| !seen.contains(*k))
                    .cloned()
                    .collect();
                for k in gone {
                    self.delete_pod(&k, now);
                }
                self.synced[1] = true;
            }
        }
    }

    fn apply_pod(&mut self, p: Arc<Pod>, now: Instant) {
        let key = pod_key(&p);
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty());
        match node {
            Some(node) => {
                self.queue.delete(&key);
                self.nominated.remove(&key);
                let was_assumed = self.assumed.remove(&key).is_some();
                let known = self.snap.node_of(&key).is_some();
                let frees = p.metadata.deletion_timestamp.is_some()
                    || matches!(
                        p.status.as_ref().and_then(|s| s.phase.as_deref()),
                        Some("Succeeded") | Some("Failed")
                    );
                self.pods.insert(key);
                // add_pod_owned drops finished pods (their resources are free)
                self.snap.add_pod_owned(p, &node);
                if frees || (!was_assumed && !known) {
                    // resources freed, or a pod placed by someone else (affinity may now match)
                    self.queue.move_all_to_active_or_backoff(now);
                }
            }
            None => {
                if self.assumed.contains_key(&key) {
                    // an older, unassigned version while our binding is in flight
                    return;
                }
                if self.snap.node_of(&key).is_some() {
                    // never un-assign: a stale event
                    return;
                }
                if wants_scheduling(&p, &self.scheduler_name) {
                    match p
                        .status
                        .as_ref()
                        .and_then(|s| s.nominated_node_name.clone())
                        .filter(|n| !n.is_empty())
                    {
                        Some(n) => {
                            self.nominated.insert(key.clone(), (n, p.clone()));
                        }
                        None => {
                            self.nominated.remove(&key);
                        }
                    }
                    self.pods.insert(key);
                    self.queue.add(p, now);
                } else {
                    // gated, terminating, finished or not ours
                    self.queue.delete(&key);
                    self.nominated.remove(&key);
                    self.pods.insert(key);
                }
            }
        }
    }

    fn delete_pod(&mut self, key: &str, now: Instant) {
        self.pods.remove(key);
        self.nominated.remove(key);
        self.queue.delete(key);
        self.assumed.remove(key);
        if self.snap.remove_pod(key) {
            self.queue.move_all_to_active_or_backoff(now);
        }
    }

    /// Runs one scheduling attempt for the first pod of the active queue. On success
    /// the pod is assumed on its node at once (the snapshot counts it) until the
    /// binding's outcome is known.
    pub fn schedule_next(&mut self, now: Instant) -> Option<Outcome> {
        let qp = self.queue.pop()?;
        // As upstream, pods nominated to a node (by preemption) with at least this
        // pod's priority hold their place there while this pod is filtered.
        let priority = crate::pod_priority(&qp.pod);
        let holds: Vec<String> = self
            .nominated
            .iter()
            .filter(|(k, (_, p))| **k != qp.key && crate::pod_priority(p) >= priority)
            .map(|(k, (node, p))| {
                let mut held = (**p).clone();
                if let Some(s) = held.spec.as_mut() {
                    s.node_name = Some(node.clone());
                }
                self.snap.add_pod_owned(held, node);
                k.clone()
            })
            .collect();
        let result = self.sched.schedule(&self.snap, &qp.pod);
        for k in &holds {
            self.snap.remove_pod(k);
        }
        match result {
            Ok(node) => {
                self.nominated.remove(&qp.key);
                let mut assumed = (*qp.pod).clone();
                if let Some(s) = assumed.spec.as_mut() {
                    s.node_name = Some(node.clone());
                }
                self.snap.add_pod_owned(assumed, &node);
                self.assumed.insert(qp.key.clone(), node.clone());
                Some(Outcome::Bind { pod: qp.pod, node })
            }
            Err(err) => {
                self.queue.unschedulable(&qp.key, now);
                if let Some(p) = &err.preemption {
                    self.nominated
                        .insert(qp.key.clone(), (p.node.clone(), qp.pod.clone()));
                }
                Some(Outcome::Unschedulable { pod: qp.pod, err })
            }
        }
    }

    /// The binding of `key` succeeded.
    pub fn bind_succeeded(&mut self, key: &str) {
        self.queue.done(key);
    }

    /// The binding of `key` to `node` failed: forget the assumption; retry after the
    /// backoff unless `retry` is false (the pod is gone or already assigned).
    pub fn bind_failed(&mut self, key: &str, node: &str, retry: bool, now: Instant) {
        if self.assumed.get(key).map(String::as_str) == Some(node) {
            self.assumed.remove(key);
            if self.snap.node_of(key) == Some(node) {
                self.snap.remove_pod(key);
                self.queue.move_all_to_active_or_backoff(now);
            }
        }
        if retry {
            self.queue.requeue_after_error(key, now);
        } else {
            self.queue.delete(key);
        }
    }
}

#[cfg(test)]
mod tests {
    /// A watch event of owned pods as the shared informer delivers it.
    fn shared(ev: Event<Pod>) -> Event<Arc<Pod>> {
        match ev {
            Event::Apply(p) => Event::Apply(Arc::new(p)),
            Event::Delete(p) => Event::Delete(Arc::new(p)),
            Event::InitApply(p) => Event::InitApply(Arc::new(p)),
            Event::Init => Event::Init,
            Event::InitDone => Event::InitDone,
        }
    }
    use super::*;
    use crate::test_util::{node, pod, taint_node};

    fn synced_core(nodes: Vec<Node>) -> Core {
        let now = Instant::now();
        let mut c = Core::new(
            Scheduler::default(),
            "default-scheduler",
            QueueConfig::default(),
        );
        c.handle(WatchMsg::Node(Event::Init), now);
        for n in nodes {
            c.handle(WatchMsg::Node(Event::InitApply(n)), now);
        }
        c.handle(WatchMsg::Node(Event::InitDone), now);
        c.handle(WatchMsg::Pod(shared(Event::Init)), now);
        c.handle(WatchMsg::Pod(shared(Event::InitDone)), now);
        c.handle(WatchMsg::Pv(Event::InitDone), now);
        c.handle(WatchMsg::Pvc(Event::InitDone), now);
        c.handle(WatchMsg::Class(Event::InitDone), now);
        c.handle(WatchMsg::Pdb(Event::InitDone), now);
        assert!(!c.synced());
        c.handle(WatchMsg::Namespace(Event::InitDone), now);
        assert!(c.synced());
        c
    }

    fn bound(mut p: Pod, node: &str) -> Pod {
        if let Some(s) = p.spec.as_mut() {
            s.node_name = Some(node.into());
        }
        p
    }

    #[test]
    fn assumed_pods_count_before_the_watch_confirms() {
        let now = Instant::now();
        let mut c = synced_core(vec![node("n1", "1", "4Gi")]);
        c.handle(
            WatchMsg::Pod(shared(Event::Apply(pod("a", "600m", "")))),
            now,
        );
        c.handle(
            WatchMsg::Pod(shared(Event::Apply(pod("b", "600m", "")))),
            now,
        );
        let Some(Outcome::Bind { node, .. }) = c.schedule_next(now) else {
            panic!("a should bind")
        };
        assert_eq!(node, "n1");
        assert_eq!(c.snap.requested("n1").map(|r| r.milli_cpu), Some(600));
        // b does not fit next to the assumed a
        match c.schedule_next(now) {
            Some(Outcome::Unschedulable { err, .. }) => {
                assert!(
                    err.to_string()
                        .starts_with("0/1 nodes are available: 1 Insufficient cpu."),
                    "{err}"
                );
            }
            o => panic!("unexpected {o:?}"),
        }
        // a late unassigned event for a is ignored; the assigned one confirms it
        c.handle(
            WatchMsg::Pod(shared(Event::Apply(pod("a", "600m", "")))),
            now,
        );
        assert!(!c.queue.has_active());
        c.bind_succeeded("default/a");
        c.handle(
            WatchMsg::Pod(shared(Event::Apply(bound(pod("a", "600m", ""), "n1")))),
            now,
        );
        assert_eq!(c.assumed(), 0);
        assert_eq!(c.snap.requested("n1").map(|r| r.milli_cpu), Some(600));
    }

    #[test]
    fn pod_deletion_retries_unschedulable_pods() {
        let t0 = Instant::now();
        let mut c = synced_core(vec![node("n1", "1", "4Gi")]);
        c.handle(
            WatchMsg::Pod(shared(Event::Apply(bound(pod("big", "800m", ""), "n1")))),
            t0,
        );
        c.handle(
            WatchMsg::Pod(shared(Event::Apply(pod("p", "500m", "")))),
            t0,
        );
        assert!(matches!(
            c.schedule_next(t0),
            Some(Outcome::Unschedulable { .. })
        ));
        assert!(!c.queue.has_active());
        let t1 = t0 + std::time::Duration::from_secs(2);
        c.handle(
            WatchMsg::Pod(shared(Event::Delete(bound(pod("big", "800m", ""), "n1")))),
            t1,
        );
        assert!(c.queue.has_active());
        assert!(matches!(c.schedule_next(t1), Some(Outcome::Bind { .. })));
    }

    #[test]
    fn node_changes_retry_only_when_relevant() {
        let t0 = Instant::now();
        let mut c = synced_core(vec![taint_node(
            node("n1", "1", "4Gi"),
            "k",
            "v",
            "NoSchedule",
        )]);
        c.handle(
            WatchMsg::Pod(shared(Event::Apply(pod("p", "100m", "")))),
            t0,
        );
        match c.schedule_next(t0) {
            Some(Outcome::Unschedulable { err, .. }) => {
                assert!(
                    err.to_string()
                        .contains("1 node(s) had untolerated taint(s)"),
                    "{err}"
                )
            }
            o => panic!("unexpected {o:?}"),
        }
        let t1 = t0 + std::time::Duration::from_secs(2);
        // a heartbeat-like update (same properties): stays unschedulable
        let mut same = taint_node(node("n1", "1", "4Gi"), "k", "v", "NoSchedule");
        same.metadata.resource_version = Some("9".into());
        c.handle(WatchMsg::Node(Event::Apply(same)), t1);
        assert!(!c.queue.has_active());
        // taint removed: retried and bound
        c.handle(WatchMsg::Node(Event::Apply(node("n1", "1", "4Gi"))), t1);
        assert!(matches!(c.schedule_next(t1), Some(Outcome::Bind { .. })));
    }

    #[test]
    fn only_our_unassigned_ungated_pods_are_queued() {
        let now = Instant::now();
        let mut c = synced_core(vec![node("n1", "1", "4Gi")]);
        let mut other = pod("other", "", "");
        if let Some(s) = other.spec.as_mut() {
            s.scheduler_name = Some("my-scheduler".into());
        }
        let mut gated = pod("gated", "", "");
        if let Some(s) = gated.spec.as_mut() {
            s.scheduling_gates = Some(vec![k8s_openapi::api::core::v1::PodSchedulingGate {
                name: "g".into(),
            }]);
        }
        let mut explicit = pod("explicit", "", "");
        if let Some(s) = explicit.spec.as_mut() {
            s.scheduler_name = Some("default-scheduler".into());
        }
        for p in [other, gated.clone(), explicit] {
            c.handle(WatchMsg::Pod(shared(Event::Apply(p))), now);
        }
        assert_eq!(c.queue.counts().0, 1);
        assert!(c.queue.state("default/explicit").is_some());
        // gate removed: queued
        if let Some(s) = gated.spec.as_mut() {
            s.scheduling_gates = None;
        }
        c.handle(WatchMsg::Pod(shared(Event::Apply(gated))), now);
        assert_eq!(c.queue.counts().0, 2);
    }

    #[test]
    fn nominated_pods_keep_their_place_from_lower_priority_pods() {
        let t0 = Instant::now();
        let mut c = synced_core(vec![node("n1", "1", "4Gi")]);
        c.handle(
            WatchMsg::Pod(shared(Event::Apply(bound(pod("victim", "800m", ""), "n1")))),
            t0,
        );
        let mut hi = pod("hi", "800m", "");
        if let Some(s) = hi.spec.as_mut() {
            s.priority = Some(100);
        }
        c.handle(WatchMsg::Pod(shared(Event::Apply(hi))), t0);
        match c.schedule_next(t0) {
            Some(Outcome::Unschedulable { err, .. }) => {
                assert_eq!(err.preemption.as_ref().map(|p| p.node.as_str()), Some("n1"))
            }
            o => panic!("unexpected {o:?}"),
        }
        // the victim goes away while hi backs off; a low-priority pod must not take the room
        let t1 = t0 + std::time::Duration::from_millis(500);
        c.handle(
            WatchMsg::Pod(shared(Event::Delete(bound(
                pod("victim", "800m", ""),
                "n1",
            )))),
            t1,
        );
        c.handle(
            WatchMsg::Pod(shared(Event::Apply(pod("low", "500m", "")))),
            t1,
        );
        let name = |o: Option<Outcome>| match o {
            Some(Outcome::Bind { pod, node }) => format!(
                "{} -> {node}",
                pod.metadata.name.clone().unwrap_or_default()
            ),
            Some(Outcome::Unschedulable { pod, .. }) => format!(
                "{} unschedulable",
                pod.metadata.name.clone().unwrap_or_default()
            ),
            None => "none".into(),
        };
        assert_eq!(name(c.schedule_next(t1)), "low unschedulable");
        assert_eq!(name(c.schedule_next(t1)), "none");
        c.queue.flush(t0 + std::time::Duration::from_secs(1));
        assert_eq!(
            name(c.schedule_next(t0 + std::time::Duration::from_secs(1))),
            "hi -> n1"
        );
        assert_eq!(c.snap.requested("n1").map(|r| r.milli_cpu), Some(800));
    }

    #[test]
    fn bind_failure_forgets_the_assumption_and_backs_off() {
        let t0 = Instant::now();
        let mut c = synced_core(vec![node("n1", "1", "4Gi")]);
        c.handle(
            WatchMsg::Pod(shared(Event::Apply(pod("a", "600m", "")))),
            t0,
        );
        assert!(matches!(c.schedule_next(t0), Some(Outcome::Bind { .. })));
        c.bind_failed("default/a", "n1", true, t0);
        assert_eq!(c.snap.requested("n1").map(|r| r.milli_cpu), Some(0));
        assert_eq!(
            c.queue.state("default/a"),
            Some(crate::queue::PodState::Backoff(
                t0 + std::time::Duration::from_secs(1)
            ))
        );
    }

    #[test]
    fn relist_drops_vanished_pods_and_nodes() {
        let now = Instant::now();
        let mut c = synced_core(vec![node("n1", "1", "4Gi"), node("n2", "1", "4Gi")]);
        c.handle(
            WatchMsg::Pod(shared(Event::Apply(bound(pod("a", "500m", ""), "n1")))),
            now,
        );
        c.handle(WatchMsg::Pod(shared(Event::Apply(pod("q", "", "")))), now);
        c.handle(WatchMsg::Pod(shared(Event::Init)), now);
        c.handle(WatchMsg::Pod(shared(Event::InitDone)), now);
        assert_eq!(c.snap.requested("n1").map(|r| r.milli_cpu), Some(0));
        assert!(c.queue.state("default/q").is_none());
        c.handle(WatchMsg::Node(Event::Init), now);
        c.handle(
            WatchMsg::Node(Event::InitApply(node("n2", "1", "4Gi"))),
            now,
        );
        c.handle(WatchMsg::Node(Event::InitDone), now);
        assert_eq!(c.snap.node_names().collect::<Vec<_>>(), ["n2"]);
    }
}
