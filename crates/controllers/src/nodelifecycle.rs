//! The node lifecycle controller (upstream's `pkg/controller/nodelifecycle`) and the taint
//! eviction controller (upstream's `pkg/controller/tainteviction`).
//!
//! A node whose kubelet stopped renewing its Lease in `kube-node-lease` (and stopped
//! posting status) for the node monitor grace period gets its conditions set to
//! `Unknown` (reason `NodeStatusUnknown`), its pods marked not ready, and the
//! `node.kubernetes.io/unreachable` taints; a node reporting `Ready=False` gets the
//! `node.kubernetes.io/not-ready` taints; pressure conditions and `spec.unschedulable` get
//! their `NoSchedule` taints (TaintNodesByCondition). Taints go away when the condition
//! clears. Pods on a node with a `NoExecute` taint they don't tolerate are deleted at once;
//! pods tolerating it for `tolerationSeconds` are deleted when that time has passed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, PodCondition, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::Resource;
use serde_json::json;

use crate::informers::Index;
use crate::workload_util::{ignore_not_found, Events};
use crate::ControllerError;
use rk3s_runtime::{run_controller, Action, Trigger, WorkQueue};

/// Taint of nodes whose Ready condition is False.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// Taint of nodes whose Ready condition is Unknown.
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// Taint of nodes with `spec.unschedulable`.
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
/// Reason of conditions set Unknown by this controller.
pub const REASON_STATUS_UNKNOWN: &str = "NodeStatusUnknown";
/// Message of conditions set Unknown by this controller.
pub const MESSAGE_STATUS_UNKNOWN: &str = "Kubelet stopped posting node status.";
/// Conditions the kubelet posts, set Unknown together with Ready.
pub const KUBELET_CONDITIONS: [&str; 4] =
    ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

/// Settings of the node controllers.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// How long a node may go without renewing its Lease or posting status before it is
    /// considered unreachable (upstream's `--node-monitor-grace-period`, 40 s).
    pub node_monitor_grace_period: Duration,
    /// The cluster's pod CIDR, split into per-node ranges by the node IPAM controller.
    pub cluster_cidr: String,
    /// Prefix length of each node's pod CIDR (upstream's `--node-cidr-mask-size`, 24).
    pub node_cidr_mask_size: u8,
    /// Terminated pods kept before the pod GC deletes the oldest
    /// (upstream's `--terminated-pod-gc-threshold`, 12500).
    pub terminated_pod_gc_threshold: usize,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            node_monitor_grace_period: Duration::from_secs(40),
            cluster_cidr: "10.42.0.0/16".into(),
            node_cidr_mask_size: 24,
            terminated_pod_gc_threshold: 12500,
        }
    }
}

/// The last sign of life of a node: the latest of its Lease's `renewTime`, its Ready
/// condition's `lastHeartbeatTime`, and `not_before` (when this controller started, so a
/// restarted controller grants every node a full grace period as upstream does).
pub fn probe_time(node: &Node, lease: Option<&Lease>, not_before: Timestamp) -> Timestamp {
    let renew = lease
        .and_then(|l| l.spec.as_ref()?.renew_time.as_ref())
        .map(|t| t.0);
    let heartbeat = ready_condition(node)
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| t.0);
    [renew, heartbeat, Some(not_before)]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(not_before)
}

/// Whether a node last seen at `probe` is past the grace period at `now`.
pub fn is_stale(probe: Timestamp, now: Timestamp, grace: Duration) -> bool {
    let grace =
        jiff::SignedDuration::try_from(grace).unwrap_or(jiff::SignedDuration::from_secs(40));
    probe
        .checked_add(grace)
        .map(|deadline| now > deadline)
        .unwrap_or(false)
}

fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// The node's Ready status (`True`, `False`, `Unknown`), if it has a Ready condition.
pub fn ready_status(node: &Node) -> Option<&str> {
    ready_condition(node).map(|c| c.status.as_str())
}

/// The conditions of a node that stopped posting status: the kubelet's conditions set to
/// Unknown (existing ones keep their heartbeat; missing ones are added with reason
/// `NodeStatusNeverUpdated`). `None` when they are all Unknown already.
pub fn unknown_conditions(node: &Node, now: Timestamp) -> Option<Vec<NodeCondition>> {
    let mut conds = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let mut changed = false;
    for t in KUBELET_CONDITIONS {
        match conds.iter_mut().find(|c| c.type_ == t) {
            Some(c) if c.status == "Unknown" => {}
            Some(c) => {
                c.status = "Unknown".into();
                c.reason = Some(REASON_STATUS_UNKNOWN.into());
                c.message = Some(MESSAGE_STATUS_UNKNOWN.into());
                c.last_transition_time = Some(Time(now));
                changed = true;
            }
            None => {
                conds.push(NodeCondition {
                    type_: t.into(),
                    status: "Unknown".into(),
                    reason: Some("NodeStatusNeverUpdated".into()),
                    message: Some("Kubelet never posted node status.".into()),
                    last_heartbeat_time: Some(Time(now)),
                    last_transition_time: Some(Time(now)),
                });
                changed = true;
            }
        }
    }
    changed.then_some(conds)
}

fn condition_true(node: &Node, t: &str) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == t && c.status == "True"))
}

/// Whether a taint is one this controller manages (so it may add or remove it).
pub fn is_managed_taint(t: &Taint) -> bool {
    match t.key.as_str() {
        TAINT_NOT_READY | TAINT_UNREACHABLE => t.effect == "NoSchedule" || t.effect == "NoExecute",
        "node.kubernetes.io/memory-pressure"
        | "node.kubernetes.io/disk-pressure"
        | "node.kubernetes.io/pid-pressure"
        | "node.kubernetes.io/network-unavailable"
        | TAINT_UNSCHEDULABLE => t.effect == "NoSchedule",
        _ => false,
    }
}

/// The taints a node should have given its effective Ready status (`None`: no Ready
/// condition yet, so the not-ready/unreachable taints are left as they are): the node's
/// other taints unchanged, the managed ones added (with `timeAdded` = `now`, or kept
/// from the existing taint) or removed.
pub fn desired_taints(node: &Node, ready: Option<&str>, now: Timestamp) -> Vec<Taint> {
    let existing: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let mut want: Vec<(&str, &str)> = Vec::new();
    match ready {
        Some("False") => want.extend([
            (TAINT_NOT_READY, "NoSchedule"),
            (TAINT_NOT_READY, "NoExecute"),
        ]),
        Some("True") => {}
        Some(_) => want.extend([
            (TAINT_UNREACHABLE, "NoSchedule"),
            (TAINT_UNREACHABLE, "NoExecute"),
        ]),
        None => {
            for t in existing
                .iter()
                .filter(|t| t.key == TAINT_NOT_READY || t.key == TAINT_UNREACHABLE)
            {
                if is_managed_taint(t) {
                    want.push((t.key.as_str(), t.effect.as_str()));
                }
            }
        }
    }
    for (cond, key) in [
        ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
        ("DiskPressure", "node.kubernetes.io/disk-pressure"),
        ("PIDPressure", "node.kubernetes.io/pid-pressure"),
        (
            "NetworkUnavailable",
            "node.kubernetes.io/network-unavailable",
        ),
    ] {
        if condition_true(node, cond) {
            want.push((key, "NoSchedule"));
        }
    }
    if node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
    {
        want.push((TAINT_UNSCHEDULABLE, "NoSchedule"));
    }
    let mut out: Vec<Taint> = existing
        .iter()
        .filter(|t| !is_managed_taint(t))
        .cloned()
        .collect();
    for (key, effect) in want {
        let kept = existing
            .iter()
            .find(|t| t.key == key && t.effect == effect)
            .cloned();
        out.push(kept.unwrap_or_else(|| Taint {
            key: key.into(),
            effect: effect.into(),
            time_added: Some(Time(now)),
            value: None,
        }));
    }
    out
}

/// Whether a toleration tolerates a taint (upstream's `ToleratesTaint`).
pub fn tolerates(tol: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = tol.effect.as_deref().filter(|e| !e.is_empty()) {
        if e != taint.effect {
            return false;
        }
    }
    let key = tol.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match tol.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => {
            key == taint.key
                && tol.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

/// When a pod on a node with the given taints is to be evicted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Eviction {
    /// The pod stays (no NoExecute taints, or it tolerates them forever).
    Never,
    /// Delete now.
    Now,
    /// Delete at this time.
    At(Timestamp),
}

/// The eviction of a pod on a node with `taints` at `now` (upstream's taint eviction): a
/// NoExecute taint no toleration tolerates evicts at once; otherwise the smallest
/// `tolerationSeconds` of the tolerations used, counted from the later of the taints'
/// earliest `timeAdded` and the pod's creation.
pub fn eviction_for(pod: &Pod, taints: &[Taint], now: Timestamp) -> Eviction {
    let no_execute: Vec<&Taint> = taints.iter().filter(|t| t.effect == "NoExecute").collect();
    if no_execute.is_empty() {
        return Eviction::Never;
    }
    let tolerations: &[Toleration] = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or(&[]);
    let mut min_secs: Option<i64> = None;
    for taint in &no_execute {
        let Some(tol) = tolerations.iter().find(|tol| tolerates(tol, taint)) else {
            return Eviction::Now;
        };
        if let Some(s) = tol.toleration_seconds {
            if s <= 0 {
                return Eviction::Now;
            }
            min_secs = Some(min_secs.map_or(s, |m| m.min(s)));
        }
    }
    let Some(secs) = min_secs else {
        return Eviction::Never;
    };
    let tainted_at = no_execute
        .iter()
        .filter_map(|t| t.time_added.as_ref().map(|t| t.0))
        .min()
        .unwrap_or(now);
    let created = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(tainted_at);
    let start = tainted_at.max(created);
    let at = start
        .checked_add(jiff::SignedDuration::from_secs(secs))
        .unwrap_or(start);
    if at <= now {
        Eviction::Now
    } else {
        Eviction::At(at)
    }
}

/// The pod's conditions with Ready set False (as upstream's `MarkPodsNotReady`), or `None`
/// when it is not Ready=True.
pub fn not_ready_conditions(pod: &Pod, now: Timestamp) -> Option<Vec<PodCondition>> {
    let mut conds = pod.status.as_ref()?.conditions.clone()?;
    let c = conds
        .iter_mut()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    c.status = "False".into();
    c.last_transition_time = Some(Time(now));
    Some(conds)
}

struct State {
    started: Timestamp,
    last_ready: HashMap<String, String>,
    node_events: Events,
    pod_events: Events,
    evict_events: Events,
}

fn to_std(d: jiff::SignedDuration) -> Duration {
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}

async fn sync(
    client: &kube::Client,
    opts: &NodeOptions,
    nodes: &Store<Node>,
    leases: &Store<Lease>,
    pods_by_node: &Index<Pod>,
    st: &mut State,
) -> Result<Option<Duration>, ControllerError> {
    let now = Timestamp::now();
    let node_api: Api<Node> = Api::all(client.clone());
    let mut next: Option<Duration> = None;
    let mut soonest = |d: Duration| next = Some(next.map_or(d, |n: Duration| n.min(d)));
    let mut taints_by_node: BTreeMap<String, Vec<Taint>> = BTreeMap::new();
    for node in nodes.state() {
        let name = node.metadata.name.clone().unwrap_or_default();
        let lease = leases.get(&ObjectRef::new(&name).within("kube-node-lease"));
        let probe = probe_time(&node, lease.as_deref(), st.started);
        let stale = is_stale(probe, now, opts.node_monitor_grace_period);
        let mut effective = ready_status(&node).map(String::from);
        if stale {
            if let Some(conds) = unknown_conditions(&node, now) {
                tracing::info!(node = %name, "node stopped posting status; marking Unknown");
                node_api
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": {"conditions": conds}})),
                    )
                    .await?;
            }
            effective = Some("Unknown".into());
            // Mark its pods not ready, as upstream.
            for pod in pods_by_node.get(&name).iter() {
                if let Some(conds) = not_ready_conditions(pod, now) {
                    let api: Api<Pod> = Api::namespaced(
                        client.clone(),
                        pod.metadata.namespace.as_deref().unwrap_or(""),
                    );
                    let r = api
                        .patch_status(
                            pod.metadata.name.as_deref().unwrap_or(""),
                            &PatchParams::default(),
                            &Patch::Merge(json!({"status": {"conditions": conds}})),
                        )
                        .await;
                    ignore_not_found(r)?;
                    st.pod_events
                        .record(
                            &pod.object_ref(&()),
                            true,
                            "NodeNotReady",
                            "Node is not ready".into(),
                        )
                        .await;
                }
            }
        } else {
            // Check again when the grace period would run out.
            let deadline = probe
                .checked_add(
                    jiff::SignedDuration::try_from(opts.node_monitor_grace_period)
                        .unwrap_or_default(),
                )
                .unwrap_or(now);
            soonest(to_std(now.duration_until(deadline)) + Duration::from_millis(10));
        }
        if let Some(status) = &effective {
            let before = st.last_ready.insert(name.clone(), status.clone());
            if before.as_deref().is_some_and(|b| b == "True") && status != "True" {
                st.node_events
                    .record(
                        &node.object_ref(&()),
                        false,
                        "NodeNotReady",
                        format!("Node {name} status is now: NodeNotReady"),
                    )
                    .await;
            }
        }
        let taints = desired_taints(&node, effective.as_deref(), now);
        let current = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        if taints != current {
            tracing::info!(node = %name, ?taints, "updating node taints");
            let patch = json!({"metadata": {"resourceVersion": node.metadata.resource_version}, "spec": {"taints": taints}});
            node_api
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await?;
        }
        taints_by_node.insert(name, taints);
    }
    // Taint-based eviction.
    // Only pods on nodes with a NoExecute taint can be evicted (no scan of every pod).
    let tainted: Vec<Arc<Pod>> = taints_by_node
        .iter()
        .filter(|(_, t)| t.iter().any(|t| t.effect == "NoExecute"))
        .flat_map(|(n, _)| pods_by_node.get(n))
        .collect();
    for pod in tainted
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
            continue;
        };
        let Some(taints) = taints_by_node.get(node) else {
            continue;
        };
        match eviction_for(pod, taints, now) {
            Eviction::Never => {}
            Eviction::At(t) => soonest(to_std(now.duration_until(t))),
            Eviction::Now => {
                let ns = pod.metadata.namespace.clone().unwrap_or_default();
                let name = pod.metadata.name.clone().unwrap_or_default();
                tracing::info!(pod = %name, namespace = %ns, node, "evicting pod from tainted node");
                st.evict_events
                    .record(
                        &pod.object_ref(&()),
                        false,
                        "TaintManagerEviction",
                        format!("Marking for deletion Pod {ns}/{name}"),
                    )
                    .await;
                let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                let mut conds = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.clone())
                    .unwrap_or_default();
                conds.retain(|c| c.type_ != "DisruptionTarget");
                conds.push(PodCondition {
                    type_: "DisruptionTarget".into(),
                    status: "True".into(),
                    reason: Some("DeletionByTaintManager".into()),
                    message: Some("Taint manager: deleting due to NoExecute taint".into()),
                    last_transition_time: Some(Time(now)),
                    ..Default::default()
                });
                ignore_not_found(
                    api.patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": {"conditions": conds}})),
                    )
                    .await,
                )?;
                ignore_not_found(
                    api.delete(&name, &DeleteParams::default())
                        .await
                        .map(|_| ()),
                )?;
            }
        }
    }
    Ok(next)
}

/// Runs the node lifecycle and taint eviction controllers forever.
pub async fn run(
    client: kube::Client,
    opts: NodeOptions,
    informers: crate::informers::SharedInformers,
) -> Result<(), ControllerError> {
    let node_changes = Trigger::changes(&informers, |_: &Node| Some(()));
    let nodes = informers.store::<Node>().await;
    // Node Leases (the shared Lease informer also sees leader-election Leases, which
    // must not queue a pass).
    let lease_changes = informers.subscribe::<Lease>();
    let pod_changes = informers.subscribe::<Pod>();
    let leases = informers.store::<Lease>().await;
    // A renewal only matters at once for a node not Ready (it may recover); for a Ready
    // node it moves the deadline that the periodic monitor checks anyway.
    let lease_changes = {
        let nodes = nodes.clone();
        Trigger::map(lease_changes, move |l: Arc<Lease>| {
            let node_lease = l.metadata.namespace.as_deref() == Some("kube-node-lease");
            let node = l
                .metadata
                .name
                .as_deref()
                .and_then(|n| nodes.get(&ObjectRef::new(n)));
            (node_lease && node.is_none_or(|n| ready_status(&n) != Some("True"))).then_some(())
        })
    };
    // A pod change matters only on a node with a NoExecute taint (taint eviction);
    // everything else is the periodic node monitor's business.
    let pod_changes = {
        let nodes = nodes.clone();
        Trigger::map(pod_changes, move |p: Arc<Pod>| {
            let node = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .and_then(|n| nodes.get(&ObjectRef::new(n)));
            node.is_some_and(|n| {
                n.spec
                    .as_ref()
                    .and_then(|s| s.taints.as_ref())
                    .is_some_and(|t| t.iter().any(|t| t.effect == "NoExecute"))
            })
            .then_some(())
        })
    };
    let pods_by_node = informers.index::<Pod>(crate::informers::pods_by_node).await;
    let node_events = Events::new(client.clone(), "node-controller");
    let pod_events = Events::new(client.clone(), "node-controller");
    let evict_events = Events::new(client.clone(), "taint-eviction-controller");
    let st = State {
        started: Timestamp::now(),
        last_ready: HashMap::new(),
        node_events,
        pod_events,
        evict_events,
    };
    // Upstream's node monitor period is 5 s; a short grace period (tests) checks sooner.
    let period = (opts.node_monitor_grace_period / 8)
        .clamp(Duration::from_millis(100), Duration::from_secs(5));
    let st = Arc::new(tokio::sync::Mutex::new((st, None::<std::time::Instant>)));
    // One key: a pass over every node, on a change that matters or every monitor period.
    let triggers = vec![
        node_changes,
        lease_changes,
        pod_changes,
        Trigger::every(period, ()),
    ];
    run_controller("nodelifecycle", 1, WorkQueue::new(), triggers, move |()| {
        let (client, opts, nodes, leases, pods_by_node, st) = (
            client.clone(),
            opts.clone(),
            nodes.clone(),
            leases.clone(),
            pods_by_node.clone(),
            st.clone(),
        );
        async move {
            let mut guard = st.lock().await;
            let (st, last) = &mut *guard;
            // Lease renewals wake the controller often; don't pass faster than half
            // the monitor period.
            let started = std::time::Instant::now();
            if let Some(wait) = last.and_then(|l| (period / 2).checked_sub(l.elapsed())) {
                return Ok(Action::requeue(wait));
            }
            *last = Some(started);
            let r = sync(&client, &opts, &nodes, &leases, &pods_by_node, st).await;
            // A pass reads the shared stores only (no LIST); its cost, for idle-CPU checks.
            tracing::trace!(
                elapsed_us = started.elapsed().as_micros() as u64,
                nodes = nodes.len(),
                "node lifecycle: pass"
            );
            r.map(|d| Action::requeue(d.unwrap_or(period).max(period / 2)))
        }
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::api::core::v1::{NodeSpec, NodeStatus, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn node(ready: Option<&str>, heartbeat: i64) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: Some(vec![Taint {
                    key: "dedicated".into(),
                    value: Some("x".into()),
                    effect: "NoSchedule".into(),
                    time_added: None,
                }]),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                conditions: ready.map(|r| {
                    vec![
                        NodeCondition {
                            type_: "Ready".into(),
                            status: r.into(),
                            last_heartbeat_time: Some(Time(ts(heartbeat))),
                            ..Default::default()
                        },
                        NodeCondition {
                            type_: "MemoryPressure".into(),
                            status: "False".into(),
                            ..Default::default()
                        },
                    ]
                }),
                ..Default::default()
            }),
        }
    }

    fn lease(renew: i64) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                renew_time: Some(MicroTime(ts(renew))),
                lease_duration_seconds: Some(40),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn stale_lease_detection() {
        let n = node(Some("True"), 0);
        let grace = Duration::from_secs(40);
        // The lease renewed at 30 keeps the node fresh until 70.
        let probe = probe_time(&n, Some(&lease(30)), ts(-100));
        assert_eq!(probe, ts(30));
        assert!(!is_stale(probe, ts(69), grace));
        assert!(is_stale(probe, ts(71), grace));
        // Without a lease, the heartbeat counts.
        assert_eq!(probe_time(&n, None, ts(-100)), ts(0));
        // A controller that just started grants a full grace period.
        assert_eq!(probe_time(&n, Some(&lease(30)), ts(500)), ts(500));
    }

    #[test]
    fn conditions_become_unknown() {
        let n = node(Some("True"), 0);
        let conds = unknown_conditions(&n, ts(100)).unwrap();
        let ready = conds.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "Unknown");
        assert_eq!(ready.reason.as_deref(), Some(REASON_STATUS_UNKNOWN));
        assert_eq!(ready.message.as_deref(), Some(MESSAGE_STATUS_UNKNOWN));
        assert_eq!(ready.last_heartbeat_time, Some(Time(ts(0))));
        assert_eq!(ready.last_transition_time, Some(Time(ts(100))));
        let disk = conds.iter().find(|c| c.type_ == "DiskPressure").unwrap();
        assert_eq!(disk.reason.as_deref(), Some("NodeStatusNeverUpdated"));
        let mut n2 = n.clone();
        n2.status.as_mut().unwrap().conditions = Some(conds);
        assert!(unknown_conditions(&n2, ts(200)).is_none());
    }

    #[test]
    fn taints_follow_readiness() {
        let n = node(Some("True"), 0);
        let t = desired_taints(&n, Some("Unknown"), ts(5));
        let keys: Vec<(&str, &str)> = t
            .iter()
            .map(|t| (t.key.as_str(), t.effect.as_str()))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("dedicated", "NoSchedule"),
                (TAINT_UNREACHABLE, "NoSchedule"),
                (TAINT_UNREACHABLE, "NoExecute")
            ]
        );
        assert_eq!(t[2].time_added, Some(Time(ts(5))));
        // Applied: a later pass keeps timeAdded; Ready=False swaps to not-ready.
        let mut n2 = n.clone();
        n2.spec.as_mut().unwrap().taints = Some(t.clone());
        assert_eq!(desired_taints(&n2, Some("Unknown"), ts(9)), t);
        let nr = desired_taints(&n2, Some("False"), ts(9));
        assert!(nr
            .iter()
            .any(|t| t.key == TAINT_NOT_READY && t.effect == "NoExecute"));
        assert!(!nr.iter().any(|t| t.key == TAINT_UNREACHABLE));
        // Healthy again: only the user's taint remains.
        let healthy = desired_taints(&n2, Some("True"), ts(9));
        assert_eq!(healthy.len(), 1);
        assert_eq!(healthy[0].key, "dedicated");
        // Pressure and cordon.
        let mut n3 = n.clone();
        n3.status.as_mut().unwrap().conditions.as_mut().unwrap()[1].status = "True".into();
        n3.spec.as_mut().unwrap().unschedulable = Some(true);
        let t3 = desired_taints(&n3, Some("True"), ts(1));
        assert!(t3
            .iter()
            .any(|t| t.key == "node.kubernetes.io/memory-pressure"));
        assert!(t3.iter().any(|t| t.key == TAINT_UNSCHEDULABLE));
    }

    fn pod_with(tols: Vec<Toleration>, created: i64) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                creation_timestamp: Some(Time(ts(created))),
                ..Default::default()
            },
            spec: Some(PodSpec {
                tolerations: Some(tols),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn unreachable_taints(added: i64) -> Vec<Taint> {
        vec![
            Taint {
                key: TAINT_UNREACHABLE.into(),
                effect: "NoSchedule".into(),
                time_added: Some(Time(ts(added))),
                value: None,
            },
            Taint {
                key: TAINT_UNREACHABLE.into(),
                effect: "NoExecute".into(),
                time_added: Some(Time(ts(added))),
                value: None,
            },
        ]
    }

    fn tol(key: &str, secs: Option<i64>) -> Toleration {
        Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: secs,
            value: None,
        }
    }

    #[test]
    fn toleration_timing() {
        let taints = unreachable_taints(10);
        // Not tolerated: now.
        assert_eq!(
            eviction_for(
                &pod_with(vec![tol(TAINT_NOT_READY, Some(300))], 0),
                &taints,
                ts(11)
            ),
            Eviction::Now
        );
        // Tolerated for 2 s: at timeAdded + 2.
        let p = pod_with(
            vec![
                tol(TAINT_NOT_READY, Some(300)),
                tol(TAINT_UNREACHABLE, Some(2)),
            ],
            0,
        );
        assert_eq!(eviction_for(&p, &taints, ts(11)), Eviction::At(ts(12)));
        assert_eq!(eviction_for(&p, &taints, ts(12)), Eviction::Now);
        // Forever.
        let forever = pod_with(vec![tol(TAINT_UNREACHABLE, None)], 0);
        assert_eq!(eviction_for(&forever, &taints, ts(1000)), Eviction::Never);
        // Operator Exists without a key tolerates everything.
        let all = pod_with(
            vec![Toleration {
                operator: Some("Exists".into()),
                ..Default::default()
            }],
            0,
        );
        assert_eq!(eviction_for(&all, &taints, ts(1000)), Eviction::Never);
        // A pod created after the taint counts from its creation.
        let late = pod_with(vec![tol(TAINT_UNREACHABLE, Some(5))], 20);
        assert_eq!(eviction_for(&late, &taints, ts(21)), Eviction::At(ts(25)));
        // NoSchedule-only taints evict nobody.
        assert_eq!(
            eviction_for(&pod_with(vec![], 0), &taints[..1], ts(100)),
            Eviction::Never
        );
    }

    #[test]
    fn equal_operator_matches_value() {
        let taint = Taint {
            key: "k".into(),
            value: Some("v".into()),
            effect: "NoExecute".into(),
            time_added: None,
        };
        let mut t = Toleration {
            key: Some("k".into()),
            operator: Some("Equal".into()),
            value: Some("v".into()),
            ..Default::default()
        };
        assert!(tolerates(&t, &taint));
        t.value = Some("w".into());
        assert!(!tolerates(&t, &taint));
        t.value = Some("v".into());
        t.effect = Some("NoSchedule".into());
        assert!(!tolerates(&t, &taint));
    }

    #[test]
    fn pods_marked_not_ready() {
        let mut p = pod_with(vec![], 0);
        p.status = Some(k8s_openapi::api::core::v1::PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let c = not_ready_conditions(&p, ts(3)).unwrap();
        assert_eq!(c[0].status, "False");
        p.status.as_mut().unwrap().conditions = Some(c);
        assert!(not_ready_conditions(&p, ts(4)).is_none());
    }
}
