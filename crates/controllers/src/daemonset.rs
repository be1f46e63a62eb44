//! The DaemonSet controller (upstream's `pkg/controller/daemon`): one pod per eligible
//! node (the template's nodeSelector, required node affinity, and the node's taints
//! against the pod's tolerations plus the daemon defaults). As upstream, a pod is made
//! for its node with a required node affinity on the `metadata.name` field
//! (`matchFields`) and is bound by the scheduler, not by setting `spec.nodeName`.
//! RollingUpdate (`maxUnavailable`, `maxSurge`) or OnDelete updates, ControllerRevisions
//! for template history in upstream's encoding ([`crate::workload_util::revision_data`]:
//! the bytes `kubectl rollout history|undo` and upstream's `daemon.Match` compare, with
//! the set's annotations), and upstream's status counters.
//!
//! The decisions are in the pure [`plan`] and [`compute_status`]; [`run`] applies them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodTemplateSpec, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use rk3s_runtime::{for_objects, run_controller, Action, Trigger, WorkQueue};

use crate::expectations::{Expectations, MetaOf};
use crate::informers::{OwnedCache, OwnedMatching};
use crate::workload_util::{self as wu, Events, CONTROLLER_REVISION_HASH};
use crate::ControllerError;

/// Deprecated label with the DaemonSet generation a pod was made from (still set upstream).
pub const POD_TEMPLATE_GENERATION: &str = "pod-template-generation";

/// The tolerations upstream adds to every daemon pod (and `network-unavailable` for
/// host-network pods).
pub fn default_tolerations(host_network: bool) -> Vec<Toleration> {
    let t = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    let mut v = vec![
        t("node.kubernetes.io/not-ready", "NoExecute"),
        t("node.kubernetes.io/unreachable", "NoExecute"),
        t("node.kubernetes.io/disk-pressure", "NoSchedule"),
        t("node.kubernetes.io/memory-pressure", "NoSchedule"),
        t("node.kubernetes.io/pid-pressure", "NoSchedule"),
        t("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if host_network {
        v.push(t("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    v
}

/// Whether a toleration tolerates a taint (upstream's `ToleratesTaint`).
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if t.effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != taint.effect)
    {
        return false;
    }
    let key = t.key.as_deref().unwrap_or("");
    let exists = t.operator.as_deref() == Some("Exists");
    if key.is_empty() {
        return exists;
    }
    if key != taint.key {
        return false;
    }
    exists || t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
}

/// Whether a node matches a node selector (with [`rk3s_core::selector::NodeSelectorMatcher`]:
/// terms ORed; expressions on labels and fields on `metadata.name` ANDed within a term;
/// an empty or invalid term matches nothing).
pub fn node_selector_matches(sel: &NodeSelector, node: &Node) -> bool {
    rk3s_core::selector::NodeSelectorMatcher::new(sel).matches(
        node.metadata.name.as_deref().unwrap_or(""),
        node.metadata.labels.as_ref(),
    )
}

/// Whether a daemon pod should run on a node, and whether one already there should keep
/// running (upstream's `NodeShouldRunDaemonPod`): nodeSelector and required node affinity
/// must match; taints with effect NoSchedule/NoExecute must be tolerated to run, and
/// NoExecute ones to keep running.
pub fn node_should_run(node: &Node, template: &PodTemplateSpec) -> (bool, bool) {
    let spec = template.spec.clone().unwrap_or_default();
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let affinity_ok = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_none_or(|sel| node_selector_matches(sel, node));
    if !selector_ok || !affinity_ok {
        return (false, false);
    }
    let mut tolerations = spec.tolerations.clone().unwrap_or_default();
    tolerations.extend(default_tolerations(spec.host_network == Some(true)));
    let mut run = true;
    let mut keep = true;
    for taint in node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
    {
        if taint.effect != "NoSchedule" && taint.effect != "NoExecute" {
            continue;
        }
        if !tolerations.iter().any(|t| tolerates(t, taint)) {
            run = false;
            if taint.effect == "NoExecute" {
                keep = false;
            }
        }
    }
    (run, keep)
}

/// The node a daemon pod is for: `spec.nodeName`, else the `metadata.name` of its
/// required node affinity.
pub fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    let sel = spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?;
    sel.node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find_map(|r| {
            (r.key == "metadata.name" && r.operator == "In")
                .then(|| {
                    r.values
                        .as_ref()
                        .and_then(|v| (v.len() == 1).then(|| v[0].clone()))
                })
                .flatten()
        })
}

/// A daemon pod for a node: the template, its revision hash and generation labels, the
/// daemon tolerations, and a required node affinity on the node's name.
pub fn new_pod(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let spec = ds.spec.clone().unwrap_or_default();
    let tmeta = spec.template.metadata.clone().unwrap_or_default();
    let mut labels = tmeta.labels.unwrap_or_default();
    labels.insert(CONTROLLER_REVISION_HASH.into(), hash.to_string());
    if let Some(g) = ds.metadata.generation {
        labels.insert(POD_TEMPLATE_GENERATION.into(), g.to_string());
    }
    let mut pspec = spec.template.spec.clone().unwrap_or_default();
    let mut tolerations = pspec.tolerations.take().unwrap_or_default();
    for t in default_tolerations(pspec.host_network == Some(true)) {
        if !tolerations
            .iter()
            .any(|x| x.key == t.key && x.effect == t.effect)
        {
            tolerations.push(t);
        }
    }
    pspec.tolerations = Some(tolerations);
    let term = NodeSelectorTerm {
        match_expressions: None,
        match_fields: Some(vec![NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(vec![node.to_string()]),
        }]),
    };
    let affinity = pspec.affinity.get_or_insert_with(Affinity::default);
    let na = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    na.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![term],
    });
    let name = ds.metadata.name.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: ds.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: tmeta.annotations,
            finalizers: tmeta.finalizers,
            owner_references: Some(vec![wu::controller_ref(
                &ds.metadata,
                "apps/v1",
                "DaemonSet",
            )]),
            ..Default::default()
        },
        spec: Some(pspec),
        status: None,
    }
}

/// What the controller does for a DaemonSet in one pass.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DsPlan {
    /// Nodes to create a pod for.
    pub create: Vec<String>,
    /// Names of pods to delete.
    pub delete: Vec<String>,
    /// Nodes with a failed daemon pod (for the FailedDaemonPod event).
    pub failed_on: Vec<(String, String)>,
}

/// A percentage or number scaled against `total`, rounding up.
pub fn scaled(v: Option<&IntOrString>, total: i32, default: i32) -> i32 {
    match v {
        None => default,
        Some(IntOrString::Int(i)) => *i,
        Some(IntOrString::String(s)) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            i32::try_from((pct * i64::from(total) + 99) / 100).unwrap_or(i32::MAX)
        }
    }
}

fn hash_of(p: &Pod) -> Option<&str> {
    p.metadata
        .labels
        .as_ref()?
        .get(CONTROLLER_REVISION_HASH)
        .map(String::as_str)
}

fn by_node(pods: &[Pod]) -> BTreeMap<String, Vec<&Pod>> {
    let mut m: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for p in pods {
        if let Some(n) = target_node(p) {
            m.entry(n).or_default().push(p);
        }
    }
    for v in m.values_mut() {
        v.sort_by_key(|p| {
            (
                p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                p.metadata.name.clone(),
            )
        });
    }
    m
}

/// Decides what to do for a DaemonSet given the nodes, its pods and the current template
/// hash, at `now`.
pub fn plan(ds: &DaemonSet, nodes: &[Node], pods: &[Pod], hash: &str, now: Timestamp) -> DsPlan {
    let mut out = DsPlan::default();
    let spec = ds.spec.clone().unwrap_or_default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    let rolling = strategy.type_.as_deref() != Some("OnDelete");
    let ru = strategy.rolling_update.clone().unwrap_or_default();
    let map = by_node(pods);
    let pname = |p: &Pod| p.metadata.name.clone().unwrap_or_default();
    let mut desired: Vec<(&str, Vec<&Pod>)> = Vec::new();
    for node in nodes {
        let nname = node.metadata.name.as_deref().unwrap_or("");
        let all_on = map.get(nname).cloned().unwrap_or_default();
        // As upstream: a node with any daemon pod left (one being deleted or a failed one
        // deleted now included) gets its new pod on a later sync, once those are gone.
        let any_on = !all_on.is_empty();
        let on: Vec<&Pod> = all_on
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        let (run, keep) = node_should_run(node, &spec.template);
        if !keep {
            out.delete.extend(on.iter().map(|p| pname(p)));
            continue;
        }
        let mut running = Vec::new();
        for p in on {
            if wu::pod_phase(p) == "Failed" {
                out.failed_on.push((nname.to_string(), pname(p)));
                out.delete.push(pname(p));
            } else {
                running.push(p);
            }
        }
        if run && running.is_empty() && !any_on {
            out.create.push(nname.to_string());
        }
        if run {
            desired.push((nname, running));
        }
    }
    // Pods for nodes that no longer exist and were never bound.
    for (n, ps) in &map {
        if !nodes.iter().any(|x| x.metadata.name.as_deref() == Some(n)) {
            out.delete.extend(
                ps.iter()
                    .filter(|p| {
                        p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none()
                            && p.metadata.deletion_timestamp.is_none()
                    })
                    .map(|p| pname(p)),
            );
        }
    }
    let total = i32::try_from(desired.len()).unwrap_or(i32::MAX);
    let max_surge = if rolling {
        scaled(ru.max_surge.as_ref(), total, 0)
    } else {
        0
    };
    // Duplicate pods on a node (no surge in use): keep the oldest.
    if max_surge == 0 {
        for (_, running) in desired.iter_mut() {
            if running.len() > 1 {
                out.delete.extend(running.iter().skip(1).map(|p| pname(p)));
                running.truncate(1);
            }
        }
    }
    if !rolling {
        return out;
    }
    let available = |p: &Pod| wu::is_pod_available(p, min_ready, now);
    if max_surge == 0 {
        let mut max_unavailable = scaled(ru.max_unavailable.as_ref(), total, 1);
        if max_unavailable == 0 {
            max_unavailable = 1;
        }
        let mut unavailable = desired
            .iter()
            .filter(|(_, r)| r.first().is_none_or(|p| !available(p)))
            .count();
        for (_, running) in &desired {
            let Some(p) = running.first() else { continue };
            if hash_of(p) == Some(hash) {
                continue;
            }
            if !available(p) {
                out.delete.push(pname(p));
            } else if unavailable < usize::try_from(max_unavailable).unwrap_or(0) {
                out.delete.push(pname(p));
                unavailable += 1;
            }
        }
    } else {
        let mut in_use = 0;
        let mut candidates = Vec::new();
        for (node, running) in &desired {
            let new = running.iter().find(|p| hash_of(p) == Some(hash));
            let old: Vec<&&Pod> = running
                .iter()
                .filter(|p| hash_of(p) != Some(hash))
                .collect();
            if old.is_empty() {
                continue;
            }
            match new {
                Some(n) if available(n) => out.delete.extend(old.iter().map(|p| pname(p))),
                Some(_) => in_use += 1,
                None if old.iter().all(|p| !available(p)) => {
                    out.delete.extend(old.iter().map(|p| pname(p)));
                    out.create.push(node.to_string());
                }
                None => candidates.push(node.to_string()),
            }
        }
        let room = usize::try_from((max_surge - in_use).max(0)).unwrap_or(0);
        out.create.extend(candidates.into_iter().take(room));
    }
    out.delete.sort();
    out.delete.dedup();
    out
}

/// The status of a DaemonSet (upstream's counters).
pub fn compute_status(
    ds: &DaemonSet,
    nodes: &[Node],
    pods: &[Pod],
    hash: &str,
    collision_count: i32,
    now: Timestamp,
) -> DaemonSetStatus {
    let spec = ds.spec.clone().unwrap_or_default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let map = by_node(pods);
    let mut st = DaemonSetStatus {
        observed_generation: ds.metadata.generation,
        collision_count: Some(collision_count),
        ..Default::default()
    };
    let (mut available, mut updated) = (0, 0);
    for node in nodes {
        let nname = node.metadata.name.as_deref().unwrap_or("");
        let on: Vec<&Pod> = map
            .get(nname)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        let (run, _) = node_should_run(node, &spec.template);
        if run {
            st.desired_number_scheduled += 1;
            if let Some(p) = on.iter().find(|p| wu::is_pod_ready(p)).or(on.first()) {
                st.current_number_scheduled += 1;
                if wu::is_pod_ready(p) {
                    st.number_ready += 1;
                    if wu::is_pod_available(p, min_ready, now) {
                        available += 1;
                    }
                }
                if on.iter().any(|p| hash_of(p) == Some(hash)) {
                    updated += 1;
                }
            }
        } else if !on.is_empty() {
            st.number_misscheduled += 1;
        }
    }
    st.number_available = Some(available);
    st.number_unavailable = Some(st.desired_number_scheduled - available);
    st.updated_number_scheduled = Some(updated);
    st.conditions = ds.status.as_ref().and_then(|s| s.conditions.clone());
    st
}

struct Ctx {
    client: kube::Client,
    events: Events,
    /// Pods from the shared informer, by controller.
    pods: OwnedCache<Pod>,
    /// ControllerRevisions from the shared informer, by controller.
    revs: OwnedCache<ControllerRevision>,
    /// Pod creations and deletions not yet seen in `pods`.
    expectations: Expectations,
    /// The shared Node store (no LIST of every node per sync).
    nodes: kube::runtime::reflector::Store<Node>,
}

/// What of a Node matters to DaemonSets (labels, taints, spec.unschedulable, the Ready
/// condition): only a change of it resyncs the sets, as upstream's `shouldIgnoreNodeUpdate`
/// (status heartbeats of many nodes would otherwise resync every set all the time).
pub fn node_fingerprint(node: &Node) -> String {
    let spec = node.spec.as_ref();
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.as_str());
    serde_json::json!([
        node.metadata.labels,
        spec.and_then(|s| s.taints.as_ref()),
        spec.and_then(|s| s.unschedulable),
        ready,
        node.metadata.deletion_timestamp.is_some()
    ])
    .to_string()
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Ctx>) -> Result<Action, ControllerError> {
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = ds.namespace().unwrap_or_default();
    let name = ds.name_any();
    let uid = ds.metadata.uid.clone().unwrap_or_default();
    let spec = ds.spec.clone().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let revs_api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    let dss: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ns);
    let nodes: Vec<Node> = ctx.nodes.state().iter().map(|n| (**n).clone()).collect();
    let key = format!("{ns}/{name}");
    // Decide only from a cache that shows this set's own earlier pod writes.
    if !ctx
        .expectations
        .satisfied(&key, |n| ctx.pods.get(&ns, n).map(MetaOf))
    {
        let left = ctx.expectations.time_left(&key).unwrap_or_default();
        return Ok(Action::requeue(left + Duration::from_millis(100)));
    }
    let pods: Vec<Pod> = ctx.pods.owned_matching(&uid, &ns, &spec.selector);
    let revs = wu::owned_revisions(ctx.revs.owned_matching(&uid, &ns, &spec.selector), &uid);
    let owner = wu::controller_ref(&ds.metadata, "apps/v1", "DaemonSet");
    let collision = ds
        .status
        .as_ref()
        .and_then(|s| s.collision_count)
        .unwrap_or(0);
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let (rev, collision) = wu::ensure_revision(
        &revs_api,
        &owner,
        labels,
        ds.metadata.annotations.clone(),
        &spec.template,
        collision,
        &revs,
    )
    .await?;
    let hash = rev
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(CONTROLLER_REVISION_HASH).cloned())
        .unwrap_or_default();
    let now = Timestamp::now();
    let p = plan(&ds, &nodes, &pods, &hash, now);
    let oref = ds.object_ref(&());
    for (node, pod) in &p.failed_on {
        ctx.events
            .record(
                &oref,
                true,
                "FailedDaemonPod",
                format!("Found failed daemon pod {ns}/{pod} on node {node}, will try to kill it"),
            )
            .await;
    }
    for n in &p.delete {
        match pods_api.delete(n, &Default::default()).await {
            Ok(_) => {
                let uid = pods
                    .iter()
                    .find(|x| x.metadata.name.as_deref() == Some(n))
                    .and_then(|x| x.metadata.uid.clone())
                    .unwrap_or_default();
                ctx.expectations.expect_deletions(&key, [(n.clone(), uid)]);
                ctx.events
                    .record(
                        &oref,
                        false,
                        "SuccessfulDelete",
                        format!("Deleted pod: {n}"),
                    )
                    .await
            }
            Err(e) if wu::is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    for node in &p.create {
        match pods_api
            .create(&PostParams::default(), &new_pod(&ds, node, &hash))
            .await
        {
            Ok(pod) => {
                ctx.expectations.expect_creations(
                    &key,
                    [(pod.name_any(), pod.metadata.uid.clone().unwrap_or_default())],
                );
                ctx.events
                    .record(
                        &oref,
                        false,
                        "SuccessfulCreate",
                        format!("Created pod: {}", pod.name_any()),
                    )
                    .await
            }
            Err(e) => {
                ctx.events
                    .record(&oref, true, "FailedCreate", format!("Error creating: {e}"))
                    .await;
                return Err(e.into());
            }
        }
    }
    let status = compute_status(&ds, &nodes, &pods, &hash, collision, now);
    if ds.status.as_ref() != Some(&status) {
        let mut d = (*ds).clone();
        d.status = Some(status.clone());
        dss.replace_status(&name, &PostParams::default(), &d)
            .await?;
    }
    let mut live = vec![rev.metadata.name.clone().unwrap_or_default()];
    live.extend(
        pods.iter()
            .filter_map(|p| hash_of(p).map(|h| format!("{name}-{h}"))),
    );
    let mut revs = wu::owned_revisions(ctx.revs.owned_matching(&uid, &ns, &spec.selector), &uid);
    // The cache may not show the revision just created yet.
    if !revs.iter().any(|r| r.metadata.name == rev.metadata.name) {
        revs.push(rev.clone());
        revs.sort_by_key(|r| r.revision);
    }
    wu::truncate_history(
        &revs_api,
        &revs,
        &live,
        spec.revision_history_limit.unwrap_or(10),
    )
    .await?;
    if spec.min_ready_seconds.unwrap_or(0) > 0
        && status.number_available != Some(status.number_ready)
    {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    Ok(Action::await_change())
}

/// Runs the DaemonSet controller until the watch ends (node changes resync every set).
pub async fn run(
    client: kube::Client,
    informers: crate::informers::SharedInformers,
) -> Result<(), ControllerError> {
    // Subscribe before reading the stores: no change after the first list is missed.
    let ds_changes = informers.subscribe::<DaemonSet>();
    let pod_changes = informers.subscribe::<Pod>();
    let rev_changes = informers.subscribe::<ControllerRevision>();
    let node_changes = informers.subscribe::<Node>();
    let dss = informers.store::<DaemonSet>().await;
    let nodes = informers.store::<Node>().await;
    let pods = informers.owned_cache::<Pod>().await;
    let revs = informers.owned_cache::<ControllerRevision>().await;
    let expectations = Expectations::new();
    let pod_changes = pod_changes.inspect(crate::statefulset::observe_gone_pods(
        pods.store.clone(),
        "DaemonSet",
        expectations.clone(),
    ));
    let seen: std::sync::Mutex<std::collections::HashMap<String, String>> = std::sync::Mutex::new(
        nodes
            .state()
            .iter()
            .map(|n| (n.name_any(), node_fingerprint(n)))
            .collect(),
    );
    let node_store = nodes.clone();
    let ctx = Arc::new(Ctx {
        events: Events::new(client.clone(), "daemonset-controller"),
        client,
        nodes,
        pods,
        revs,
        expectations,
    });
    let store = dss.clone();
    let all = Trigger::all_in(&dss);
    let triggers = vec![
        Trigger::for_each(ds_changes),
        Trigger::owners(pod_changes),
        Trigger::owners(rev_changes),
        all,
        Trigger::map(node_changes, move |node: Arc<Node>| {
            let fp = node_fingerprint(&node);
            // A deleted node is no longer in the store (the stream gives it as last seen).
            let deleted = node_store.get(&ObjectRef::from_obj(&*node)).is_none();
            let changed = match seen.lock() {
                Ok(mut m) if deleted => m.remove(&node.name_any()).is_some(),
                Ok(mut m) => m
                    .insert(node.name_any(), fp.clone())
                    .is_none_or(|old| old != fp),
                Err(_) => true,
            };
            if changed {
                store
                    .state()
                    .into_iter()
                    .map(|ds| ObjectRef::from_obj(&*ds))
                    .collect::<Vec<_>>()
            } else {
                Vec::new()
            }
        }),
    ];
    run_controller(
        "daemonset",
        4,
        WorkQueue::new(),
        triggers,
        for_objects(dss, ctx, reconcile),
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{
        DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet,
    };
    use k8s_openapi::api::core::v1::{NodeSpec, PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};

    fn node(name: &str, labels: &[(&str, &str)], taints: Vec<Taint>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: Some(taints),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn taint(key: &str, value: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: Some(value.into()),
            effect: effect.into(),
            time_added: None,
        }
    }

    fn ds() -> DaemonSet {
        DaemonSet {
            metadata: ObjectMeta {
                name: Some("agent".into()),
                namespace: Some("kube-system".into()),
                uid: Some("ds-uid".into()),
                generation: Some(1),
                ..Default::default()
            },
            spec: Some(DaemonSetSpec {
                selector: LabelSelector {
                    match_labels: Some([("app".to_string(), "agent".to_string())].into()),
                    match_expressions: None,
                },
                template: PodTemplateSpec {
                    metadata: None,
                    spec: Some(PodSpec::default()),
                },
                ..Default::default()
            }),
            status: None,
        }
    }

    fn tmpl(f: impl FnOnce(&mut PodSpec)) -> PodTemplateSpec {
        let mut s = PodSpec::default();
        f(&mut s);
        PodTemplateSpec {
            metadata: None,
            spec: Some(s),
        }
    }

    fn pod(d: &DaemonSet, name: &str, node: &str, hash: &str, ready: bool) -> Pod {
        let mut p = new_pod(d, node, hash);
        p.metadata.name = Some(name.into());
        p.status = Some(PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                last_transition_time: Some(Time(Timestamp::UNIX_EPOCH)),
                ..Default::default()
            }]),
            ..Default::default()
        });
        p
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_000_000).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn node_fingerprint_ignores_heartbeats() {
        let mut n = node("n", &[("a", "b")], vec![]);
        let fp = node_fingerprint(&n);
        n.metadata.resource_version = Some("42".into());
        n.status = Some(k8s_openapi::api::core::v1::NodeStatus {
            conditions: Some(vec![k8s_openapi::api::core::v1::NodeCondition {
                type_: "MemoryPressure".into(),
                status: "False".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert_eq!(node_fingerprint(&n), fp);
        let mut ready = n.clone();
        ready.status = Some(k8s_openapi::api::core::v1::NodeStatus {
            conditions: Some(vec![k8s_openapi::api::core::v1::NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert_ne!(node_fingerprint(&ready), fp);
        assert_ne!(node_fingerprint(&node("n", &[("a", "c")], vec![])), fp);
        assert_ne!(
            node_fingerprint(&node(
                "n",
                &[("a", "b")],
                vec![taint("x", "", "NoSchedule")]
            )),
            fp
        );
    }

    #[test]
    fn taints_and_tolerations() {
        let plain = tmpl(|_| {});
        assert_eq!(
            node_should_run(&node("n", &[], vec![]), &plain),
            (true, true)
        );
        assert_eq!(
            node_should_run(
                &node("n", &[], vec![taint("dedicated", "gpu", "NoSchedule")]),
                &plain
            ),
            (false, true)
        );
        assert_eq!(
            node_should_run(
                &node("n", &[], vec![taint("dedicated", "gpu", "NoExecute")]),
                &plain
            ),
            (false, false)
        );
        assert_eq!(
            node_should_run(
                &node("n", &[], vec![taint("x", "y", "PreferNoSchedule")]),
                &plain
            ),
            (true, true)
        );
        // The daemon defaults: not-ready, unschedulable, ... are tolerated.
        assert_eq!(
            node_should_run(
                &node(
                    "n",
                    &[],
                    vec![taint("node.kubernetes.io/not-ready", "", "NoExecute")]
                ),
                &plain
            ),
            (true, true)
        );
        assert_eq!(
            node_should_run(
                &node(
                    "n",
                    &[],
                    vec![taint("node.kubernetes.io/unschedulable", "", "NoSchedule")]
                ),
                &plain
            ),
            (true, true)
        );
        assert!(
            !node_should_run(
                &node(
                    "n",
                    &[],
                    vec![taint(
                        "node.kubernetes.io/network-unavailable",
                        "",
                        "NoSchedule"
                    )]
                ),
                &plain
            )
            .0
        );
        let hostnet = tmpl(|s| s.host_network = Some(true));
        assert!(
            node_should_run(
                &node(
                    "n",
                    &[],
                    vec![taint(
                        "node.kubernetes.io/network-unavailable",
                        "",
                        "NoSchedule"
                    )]
                ),
                &hostnet
            )
            .0
        );
        let tolerant = tmpl(|s| {
            s.tolerations = Some(vec![Toleration {
                key: Some("dedicated".into()),
                operator: Some("Equal".into()),
                value: Some("gpu".into()),
                effect: Some("NoSchedule".into()),
                ..Default::default()
            }])
        });
        assert!(
            node_should_run(
                &node("n", &[], vec![taint("dedicated", "gpu", "NoSchedule")]),
                &tolerant
            )
            .0
        );
        assert!(
            !node_should_run(
                &node("n", &[], vec![taint("dedicated", "cpu", "NoSchedule")]),
                &tolerant
            )
            .0
        );
        let all = tmpl(|s| {
            s.tolerations = Some(vec![Toleration {
                operator: Some("Exists".into()),
                ..Default::default()
            }])
        });
        assert_eq!(
            node_should_run(&node("n", &[], vec![taint("a", "b", "NoExecute")]), &all),
            (true, true)
        );
    }

    #[test]
    fn node_selector_and_affinity() {
        let sel =
            tmpl(|s| s.node_selector = Some([("disk".to_string(), "ssd".to_string())].into()));
        assert!(node_should_run(&node("n", &[("disk", "ssd")], vec![]), &sel).0);
        assert!(!node_should_run(&node("n", &[("disk", "hdd")], vec![]), &sel).0);
        let aff = tmpl(|s| {
            s.affinity = Some(Affinity {
                node_affinity: Some(NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                        node_selector_terms: vec![
                            NodeSelectorTerm {
                                match_expressions: Some(vec![NodeSelectorRequirement {
                                    key: "zone".into(),
                                    operator: "In".into(),
                                    values: Some(vec!["a".into()]),
                                }]),
                                match_fields: None,
                            },
                            NodeSelectorTerm {
                                match_expressions: Some(vec![NodeSelectorRequirement {
                                    key: "cpus".into(),
                                    operator: "Gt".into(),
                                    values: Some(vec!["8".into()]),
                                }]),
                                match_fields: None,
                            },
                        ],
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
        });
        assert!(node_should_run(&node("n", &[("zone", "a")], vec![]), &aff).0);
        assert!(node_should_run(&node("n", &[("cpus", "16")], vec![]), &aff).0);
        assert!(!node_should_run(&node("n", &[("zone", "b"), ("cpus", "4")], vec![]), &aff).0);
    }

    #[test]
    fn pods_target_their_node_by_affinity() {
        let d = ds();
        let p = new_pod(&d, "node-1", "abc");
        assert_eq!(target_node(&p).as_deref(), Some("node-1"));
        assert!(p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none());
        assert_eq!(
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(CONTROLLER_REVISION_HASH))
                .map(String::as_str),
            Some("abc")
        );
        assert_eq!(
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(POD_TEMPLATE_GENERATION))
                .map(String::as_str),
            Some("1")
        );
        let tols = p
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.clone())
            .unwrap_or_default();
        assert!(tols.iter().any(
            |t| t.key.as_deref() == Some("node.kubernetes.io/unreachable")
                && t.effect.as_deref() == Some("NoExecute")
        ));
        assert_eq!(p.metadata.generate_name.as_deref(), Some("agent-"));
    }

    #[test]
    fn one_pod_per_eligible_node() {
        let d = ds();
        let nodes = vec![
            node("a", &[], vec![]),
            node("b", &[], vec![]),
            node("c", &[], vec![taint("k", "v", "NoExecute")]),
        ];
        let pods = vec![
            pod(&d, "agent-1", "a", "h1", true),
            pod(&d, "agent-2", "c", "h1", true),
            pod(&d, "agent-3", "gone", "h1", true),
        ];
        let p = plan(&d, &nodes, &pods, "h1", now());
        assert_eq!(p.create, vec!["b".to_string()]);
        assert_eq!(p.delete, vec!["agent-2".to_string(), "agent-3".to_string()]);
        let st = compute_status(&d, &nodes, &pods, "h1", 0, now());
        assert_eq!(
            (
                st.desired_number_scheduled,
                st.current_number_scheduled,
                st.number_ready,
                st.number_misscheduled
            ),
            (2, 1, 1, 1)
        );
        assert_eq!(
            (
                st.number_available,
                st.number_unavailable,
                st.updated_number_scheduled
            ),
            (Some(1), Some(1), Some(1))
        );
    }

    #[test]
    fn rolling_update_respects_max_unavailable_and_surge() {
        let mut d = ds();
        let nodes: Vec<Node> = (0..4)
            .map(|i| node(&format!("n{i}"), &[], vec![]))
            .collect();
        let old: Vec<Pod> = (0..4)
            .map(|i| pod(&d, &format!("old{i}"), &format!("n{i}"), "h1", true))
            .collect();
        // Default maxUnavailable 1: one old pod at a time.
        assert_eq!(plan(&d, &nodes, &old, "h2", now()).delete.len(), 1);
        if let Some(s) = d.spec.as_mut() {
            s.update_strategy = Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDaemonSet {
                    max_unavailable: Some(IntOrString::String("50%".into())),
                    max_surge: None,
                }),
            });
        }
        assert_eq!(plan(&d, &nodes, &old, "h2", now()).delete.len(), 2);
        // An unavailable old pod is replaced without using the budget.
        let mut mixed = old.clone();
        mixed[3] = pod(&d, "old3", "n3", "h1", false);
        let p = plan(&d, &nodes, &mixed, "h2", now());
        assert_eq!(
            p.delete.len(),
            2,
            "unavailable old3 plus one more (1 + 1 = 50%)"
        );
        assert!(p.delete.contains(&"old3".to_string()));
        // maxSurge 1: create one new pod beside an old one, then delete the old one once available.
        if let Some(s) = d.spec.as_mut() {
            s.update_strategy = Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDaemonSet {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            });
        }
        let p = plan(&d, &nodes, &old, "h2", now());
        assert_eq!((p.create.len(), p.delete.len()), (1, 0));
        let mut surging = old.clone();
        surging.push(pod(&d, "new0", "n0", "h2", false));
        let p = plan(&d, &nodes, &surging, "h2", now());
        assert!(
            p.create.is_empty() && p.delete.is_empty(),
            "surge budget in use"
        );
        surging.pop();
        surging.push(pod(&d, "new0", "n0", "h2", true));
        let p = plan(&d, &nodes, &surging, "h2", now());
        assert_eq!(p.delete, vec!["old0".to_string()]);
        assert_eq!(p.create.len(), 1);
        // OnDelete: nothing is replaced.
        if let Some(s) = d.spec.as_mut() {
            s.update_strategy = Some(DaemonSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                rolling_update: None,
            });
        }
        assert_eq!(plan(&d, &nodes, &old, "h2", now()), DsPlan::default());
    }

    #[test]
    fn failed_pods_are_deleted_and_replaced() {
        let d = ds();
        let nodes = vec![node("a", &[], vec![])];
        let mut f = pod(&d, "agent-x", "a", "h1", false);
        if let Some(s) = f.status.as_mut() {
            s.phase = Some("Failed".into());
        }
        let p = plan(&d, &nodes, &[f.clone()], "h1", now());
        assert_eq!(p.delete, vec!["agent-x".to_string()]);
        assert!(p.create.is_empty(), "replaced once it is gone: {p:?}");
        // Being deleted: still no new pod on the node (upstream waits for it to go).
        f.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        let p = plan(&d, &nodes, &[f], "h1", now());
        assert!(p.create.is_empty() && p.delete.is_empty(), "{p:?}");
        // Gone: created.
        let p = plan(&d, &nodes, &[], "h1", now());
        assert_eq!(p.create, vec!["a".to_string()]);
    }

    #[test]
    fn scaled_rounds_up() {
        assert_eq!(scaled(Some(&IntOrString::String("25%".into())), 3, 1), 1);
        assert_eq!(scaled(Some(&IntOrString::String("50%".into())), 3, 1), 2);
        assert_eq!(scaled(Some(&IntOrString::Int(3)), 10, 1), 3);
        assert_eq!(scaled(None, 10, 1), 1);
    }
}
