//! Per-pod cycle state ("PreFilter"), filters and scores of the default plugins.

use std::borrow::Cow;
use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Pod, Toleration};

use crate::resources::{pod_non_zero_requests, pod_requests, Resources};
use crate::selectors::{
    first_untolerated_hard_taint, tolerations_tolerate, Labels, NodeSelectorMatcher, NodeTerm,
    Selector,
};
use crate::snapshot::{pod_host_ports, HostPort, NodeInfo, PodAffinity, PodEntry, Snapshot};

/// Highest score a plugin gives a node.
pub const MAX_NODE_SCORE: i64 = 100;

/// Why a node was filtered out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    NodeName,
    Unschedulable,
    Taint,
    NodeAffinity,
    Ports,
    Resources(Vec<Cow<'static, str>>),
    VolumeNodeAffinity,
    VolumeBindConflict,
    VolumeZone,
    SpreadMissingLabel,
    Spread,
    PodAffinity,
    PodAntiAffinity,
    ExistingAntiAffinity,
    /// Free-form (preemption messages).
    Other {
        msg: String,
        resolvable: bool,
    },
}

impl Failure {
    /// The reasons, as upstream prints them.
    pub fn reasons(&self) -> Vec<Cow<'static, str>> {
        let s: &'static str = match self {
            Failure::NodeName => "node(s) didn't match the requested node name",
            Failure::Unschedulable => "node(s) were unschedulable",
            Failure::Taint => "node(s) had untolerated taint(s)",
            Failure::NodeAffinity => "node(s) didn't match Pod's node affinity/selector",
            Failure::Ports => "node(s) didn't have free ports for the requested pod ports",
            Failure::Resources(r) => return r.clone(),
            Failure::VolumeNodeAffinity => "node(s) had volume node affinity conflict",
            Failure::VolumeBindConflict => {
                "node(s) didn't find available persistent volumes to bind"
            }
            Failure::VolumeZone => "node(s) had no available volume zone",
            Failure::SpreadMissingLabel => {
                "node(s) didn't match pod topology spread constraints (missing required label)"
            }
            Failure::Spread => "node(s) didn't match pod topology spread constraints",
            Failure::PodAffinity => "node(s) didn't match pod affinity rules",
            Failure::PodAntiAffinity => "node(s) didn't match pod anti-affinity rules",
            Failure::ExistingAntiAffinity => {
                "node(s) didn't satisfy existing pods anti-affinity rules"
            }
            Failure::Other { msg, .. } => return vec![Cow::Owned(msg.clone())],
        };
        vec![Cow::Borrowed(s)]
    }

    /// Whether removing pods (preemption) could help: upstream's `Unschedulable`
    /// as opposed to `UnschedulableAndUnresolvable`.
    pub fn resolvable(&self) -> bool {
        match self {
            Failure::Resources(_)
            | Failure::Ports
            | Failure::Spread
            | Failure::PodAntiAffinity
            | Failure::ExistingAntiAffinity => true,
            Failure::Other { resolvable, .. } => *resolvable,
            _ => false,
        }
    }
}

/// Counts per topology value (`key -> value -> count`).
pub(crate) type TopoCounts = HashMap<String, HashMap<String, i64>>;

fn bump(m: &mut TopoCounts, key: &str, value: &str, by: i64) {
    if let Some(inner) = m.get_mut(key) {
        if let Some(c) = inner.get_mut(value) {
            *c += by;
            return;
        }
        inner.insert(value.to_string(), by);
        return;
    }
    m.entry(key.to_string())
        .or_default()
        .insert(value.to_string(), by);
}

fn get_count(m: &TopoCounts, key: &str, value: &str) -> i64 {
    m.get(key).and_then(|i| i.get(value)).copied().unwrap_or(0)
}

/// A topology spread constraint of the incoming pod.
#[derive(Debug, Clone)]
pub(crate) struct SpreadConstraint {
    pub max_skew: i64,
    pub key: String,
    pub selector: Selector,
    pub min_domains: i64,
    pub honor_affinity: bool,
    pub honor_taints: bool,
    pub self_match: bool,
}

/// Hard (DoNotSchedule) spread state: matching pod counts per domain.
#[derive(Debug, Clone)]
pub(crate) struct HardSpread {
    pub constraints: Vec<SpreadConstraint>,
    pub counts: Vec<HashMap<String, i64>>,
}

impl HardSpread {
    fn min_match(&self, i: usize) -> i64 {
        let c = &self.counts[i];
        if (c.len() as i64) < self.constraints[i].min_domains {
            return 0;
        }
        c.values().copied().min().unwrap_or(0)
    }
}

/// Inter-pod affinity state for the filter.
#[derive(Debug, Clone, Default)]
pub(crate) struct InterPodState {
    pub existing_anti: TopoCounts,
    pub affinity_counts: TopoCounts,
    pub anti_counts: TopoCounts,
}

/// The compiled view of the incoming pod plus cross-node state: upstream's PreFilter output.
#[derive(Clone)]
pub(crate) struct PodCtx<'a> {
    pub pod: &'a Pod,
    pub ns: &'a str,
    pub labels: Option<&'a Labels>,
    pub requests: Resources,
    pub non_zero: (i64, i64),
    pub node_name: Option<&'a str>,
    pub tolerations: &'a [Toleration],
    pub tolerates_unschedulable: bool,
    pub node_selector: Option<&'a Labels>,
    pub required_node: Option<NodeSelectorMatcher>,
    pub preferred_node: Vec<(i32, NodeTerm)>,
    pub ports: Vec<HostPort>,
    pub volume_affinity: Vec<NodeSelectorMatcher>,
    /// Nodes already selected for unbound `WaitForFirstConsumer` claims.
    pub selected_nodes: Vec<String>,
    pub volume_zones: Vec<(String, Vec<String>)>,
    pub spread: Option<HardSpread>,
    pub soft_spread: Vec<SpreadConstraint>,
    pub affinity: PodAffinity,
    pub interpod: Option<InterPodState>,
    pub images: Vec<String>,
    pub num_containers: usize,
}

const ZONE_LABELS: [&str; 4] = [
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
];

fn normalized_image(name: &str) -> String {
    let colon = name.rfind(':');
    let slash = name.rfind('/');
    let has_tag = match (colon, slash) {
        (Some(c), Some(s)) => c > s,
        (Some(_), None) => true,
        _ => false,
    };
    if has_tag || name.contains('@') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

/// What PreFilter can decide for all nodes at once.
pub(crate) struct PreFilterFailure {
    pub msg: String,
    pub resolvable: bool,
}

static NO_TOLERATIONS: Vec<Toleration> = Vec::new();

impl<'a> PodCtx<'a> {
    pub fn new(snap: &Snapshot, pod: &'a Pod) -> Result<Self, PreFilterFailure> {
        let spec = pod.spec.as_ref();
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let tolerations = spec
            .and_then(|s| s.tolerations.as_deref())
            .unwrap_or(&NO_TOLERATIONS);
        let unsched_taint = k8s_openapi::api::core::v1::Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        let node_aff = spec
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref());
        let required_node = node_aff
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(NodeSelectorMatcher::new);
        let preferred_node = node_aff
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(|v| {
                v.iter()
                    .filter(|p| p.weight != 0)
                    .map(|p| (p.weight, NodeTerm::new(&p.preference)))
                    .collect()
            })
            .unwrap_or_default();
        let mut images = Vec::new();
        let mut num_containers = 0;
        if let Some(s) = spec {
            for c in s
                .init_containers
                .iter()
                .flatten()
                .chain(s.containers.iter())
            {
                num_containers += 1;
                if let Some(img) = c.image.as_deref() {
                    let n = normalized_image(img);
                    if snap.image_nodes.contains_key(&n) {
                        images.push(n);
                    }
                }
            }
        }
        let mut ctx = PodCtx {
            pod,
            ns,
            labels: pod.metadata.labels.as_ref(),
            requests: pod_requests(pod),
            non_zero: pod_non_zero_requests(pod),
            node_name: spec
                .and_then(|s| s.node_name.as_deref())
                .filter(|n| !n.is_empty()),
            tolerations,
            tolerates_unschedulable: tolerations_tolerate(tolerations, &unsched_taint),
            node_selector: spec
                .and_then(|s| s.node_selector.as_ref())
                .filter(|m| !m.is_empty()),
            required_node,
            preferred_node,
            ports: pod_host_ports(pod),
            volume_affinity: Vec::new(),
            selected_nodes: Vec::new(),
            volume_zones: Vec::new(),
            spread: None,
            soft_spread: Vec::new(),
            affinity: PodAffinity::new(pod),
            interpod: None,
            images,
            num_containers,
        };
        ctx.prefilter_volumes(snap)?;
        ctx.prefilter_spread(snap);
        ctx.prefilter_interpod(snap);
        Ok(ctx)
    }

    fn prefilter_volumes(&mut self, snap: &Snapshot) -> Result<(), PreFilterFailure> {
        let Some(vols) = self.pod.spec.as_ref().and_then(|s| s.volumes.as_ref()) else {
            return Ok(());
        };
        let mut unbound_immediate = false;
        for v in vols {
            let Some(claim) = v.persistent_volume_claim.as_ref() else {
                continue;
            };
            let key = format!("{}/{}", self.ns, claim.claim_name);
            let Some(pvc) = snap.pvcs.get(&key) else {
                return Err(PreFilterFailure {
                    msg: format!("persistentvolumeclaim \"{}\" not found", claim.claim_name),
                    resolvable: true,
                });
            };
            if pvc.metadata.deletion_timestamp.is_some() {
                return Err(PreFilterFailure {
                    msg: format!(
                        "persistentvolumeclaim \"{}\" is being deleted",
                        claim.claim_name
                    ),
                    resolvable: false,
                });
            }
            let volume_name = pvc
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.as_deref())
                .filter(|s| !s.is_empty());
            match volume_name {
                Some(pv_name) => {
                    let Some(pv) = snap.pvs.get(pv_name) else {
                        return Err(PreFilterFailure {
                            msg: format!("persistentvolume \"{pv_name}\" not found"),
                            resolvable: false,
                        });
                    };
                    if let Some(req) = pv
                        .spec
                        .as_ref()
                        .and_then(|s| s.node_affinity.as_ref())
                        .and_then(|a| a.required.as_ref())
                    {
                        self.volume_affinity.push(NodeSelectorMatcher::new(req));
                    }
                    for key in ZONE_LABELS {
                        if let Some(v) = pv.metadata.labels.as_ref().and_then(|l| l.get(key)) {
                            self.volume_zones.push((
                                key.to_string(),
                                v.split("__").map(str::to_string).collect(),
                            ));
                        }
                    }
                }
                None => {
                    let class = pvc
                        .spec
                        .as_ref()
                        .and_then(|s| s.storage_class_name.as_deref())
                        .unwrap_or("");
                    let delayed = snap
                        .classes
                        .get(class)
                        .and_then(|c| c.volume_binding_mode.as_deref())
                        .is_some_and(|m| m == "WaitForFirstConsumer");
                    if !delayed {
                        unbound_immediate = true;
                    } else if let Some(n) = pvc
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get("volume.kubernetes.io/selected-node"))
                    {
                        // being provisioned there: only that node fits
                        self.selected_nodes.push(n.clone());
                    }
                }
            }
        }
        if unbound_immediate {
            return Err(PreFilterFailure {
                msg: "pod has unbound immediate PersistentVolumeClaims".into(),
                resolvable: false,
            });
        }
        Ok(())
    }

    fn spread_constraints(&self, hard: bool) -> Vec<SpreadConstraint> {
        let Some(list) = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.topology_spread_constraints.as_ref())
        else {
            return Vec::new();
        };
        list.iter()
            .filter(|c| (c.when_unsatisfiable == "DoNotSchedule") == hard)
            .map(|c| {
                let mut selector = Selector::from_label_selector(c.label_selector.as_ref());
                if c.label_selector.is_some() {
                    for k in c.match_label_keys.iter().flatten() {
                        if let Some(v) = self.labels.and_then(|l| l.get(k)) {
                            selector.add_in(k, v);
                        }
                    }
                }
                SpreadConstraint {
                    max_skew: i64::from(c.max_skew),
                    key: c.topology_key.clone(),
                    self_match: selector.matches(self.labels),
                    selector,
                    min_domains: if hard {
                        i64::from(c.min_domains.unwrap_or(1))
                    } else {
                        1
                    },
                    honor_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
                    honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
                }
            })
            .collect()
    }

    /// Whether the node passes the pod's nodeSelector and required node affinity.
    pub fn matches_node_affinity(&self, n: &NodeInfo) -> bool {
        let labels = n.labels();
        if let Some(sel) = self.node_selector {
            if !sel
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            {
                return false;
            }
        }
        if let Some(req) = &self.required_node {
            if !req.matches(&n.name, labels) {
                return false;
            }
        }
        true
    }

    pub fn node_included(&self, c: &SpreadConstraint, n: &NodeInfo) -> bool {
        if c.honor_affinity && !self.matches_node_affinity(n) {
            return false;
        }
        if c.honor_taints && first_untolerated_hard_taint(n.taints(), self.tolerations).is_some() {
            return false;
        }
        true
    }

    fn count_matching(&self, c: &SpreadConstraint, n: &NodeInfo) -> i64 {
        n.pods
            .iter()
            .filter(|p| !p.terminating && p.namespace == self.ns && c.selector.matches(p.labels()))
            .count() as i64
    }

    fn prefilter_spread(&mut self, snap: &Snapshot) {
        self.soft_spread = self.spread_constraints(false);
        let constraints = self.spread_constraints(true);
        if constraints.is_empty() {
            return;
        }
        let mut counts = vec![HashMap::new(); constraints.len()];
        for n in &snap.nodes {
            if !constraints.iter().all(|c| n.label(&c.key).is_some()) {
                continue;
            }
            for (i, c) in constraints.iter().enumerate() {
                if !self.node_included(c, n) {
                    continue;
                }
                let Some(v) = n.label(&c.key) else { continue };
                let cnt = self.count_matching(c, n);
                *counts[i].entry(v.to_string()).or_insert(0) += cnt;
            }
        }
        self.spread = Some(HardSpread {
            constraints,
            counts,
        });
    }

    fn prefilter_interpod(&mut self, snap: &Snapshot) {
        let has_required =
            !self.affinity.required_affinity.is_empty() || !self.affinity.required_anti.is_empty();
        let any_existing_anti = snap.nodes.iter().any(|n| n.pods_with_required_anti > 0);
        if !has_required && !any_existing_anti {
            return;
        }
        let mut st = InterPodState::default();
        for n in &snap.nodes {
            if n.pods_with_required_anti == 0 && !has_required {
                continue;
            }
            for p in &n.pods {
                self.account_pod(&mut st, p, n, snap, 1);
            }
        }
        self.interpod = Some(st);
    }

    /// Adds (`by = 1`) or removes (`by = -1`) an existing pod's contribution to the inter-pod state.
    fn account_pod(
        &self,
        st: &mut InterPodState,
        p: &PodEntry,
        n: &NodeInfo,
        snap: &Snapshot,
        by: i64,
    ) {
        for t in &p.affinity.required_anti {
            if let Some(v) = n.label(&t.topology_key) {
                if t.matches(self.ns, self.labels, &snap.ns_labels) {
                    bump(&mut st.existing_anti, &t.topology_key, v, by);
                }
            }
        }
        for t in &self.affinity.required_affinity {
            if let Some(v) = n.label(&t.topology_key) {
                if t.matches(&p.namespace, p.labels(), &snap.ns_labels) {
                    bump(&mut st.affinity_counts, &t.topology_key, v, by);
                }
            }
        }
        for t in &self.affinity.required_anti {
            if let Some(v) = n.label(&t.topology_key) {
                if t.matches(&p.namespace, p.labels(), &snap.ns_labels) {
                    bump(&mut st.anti_counts, &t.topology_key, v, by);
                }
            }
        }
    }

    /// Updates cross-node state when `p` is removed from (or added back to) node `n` (preemption dry run).
    pub fn on_pod_change(&mut self, snap: &Snapshot, p: &PodEntry, n: &NodeInfo, by: i64) {
        if let Some(mut st) = self.interpod.take() {
            self.account_pod(&mut st, p, n, snap, by);
            st.affinity_counts.retain(|_, m| {
                m.retain(|_, c| *c != 0);
                !m.is_empty()
            });
            self.interpod = Some(st);
        }
        if let Some(mut sp) = self.spread.take() {
            if !p.terminating
                && p.namespace == self.ns
                && sp.constraints.iter().all(|c| n.label(&c.key).is_some())
            {
                for i in 0..sp.constraints.len() {
                    let c = &sp.constraints[i];
                    if !self.node_included(c, n) || !c.selector.matches(p.labels()) {
                        continue;
                    }
                    if let Some(v) = n.label(&c.key) {
                        *sp.counts[i].entry(v.to_string()).or_insert(0) += by;
                    }
                }
            }
            self.spread = Some(sp);
        }
    }

    /// Runs the filters in upstream's default order; the first failure wins.
    pub fn filter(&self, snap: &Snapshot, n: &NodeInfo) -> Result<(), Failure> {
        // NodeUnschedulable
        if n.unschedulable && !self.tolerates_unschedulable {
            return Err(Failure::Unschedulable);
        }
        // NodeName
        if let Some(name) = self.node_name {
            if name != n.name {
                return Err(Failure::NodeName);
            }
        }
        // TaintToleration
        if first_untolerated_hard_taint(n.taints(), self.tolerations).is_some() {
            return Err(Failure::Taint);
        }
        // NodeAffinity
        if !self.matches_node_affinity(n) {
            return Err(Failure::NodeAffinity);
        }
        // NodePorts
        if !self.ports.is_empty()
            && self
                .ports
                .iter()
                .any(|p| n.used_ports.iter().any(|u| u.conflicts(p)))
        {
            return Err(Failure::Ports);
        }
        // NodeResourcesFit
        self.fits_resources(n)?;
        // VolumeBinding (bound PVs' node affinity)
        if self
            .volume_affinity
            .iter()
            .any(|m| !m.matches(&n.name, n.labels()))
        {
            return Err(Failure::VolumeNodeAffinity);
        }
        if self.selected_nodes.iter().any(|s| *s != n.name) {
            return Err(Failure::VolumeBindConflict);
        }
        // VolumeZone
        for (key, values) in &self.volume_zones {
            match n.label(key) {
                Some(v) if values.iter().any(|x| x == v) => {}
                _ => return Err(Failure::VolumeZone),
            }
        }
        // PodTopologySpread
        if let Some(sp) = &self.spread {
            self.filter_spread(sp, n)?;
        }
        // InterPodAffinity
        if let Some(st) = &self.interpod {
            self.filter_interpod(snap, st, n)?;
        }
        Ok(())
    }

    fn fits_resources(&self, n: &NodeInfo) -> Result<(), Failure> {
        let mut reasons: Vec<Cow<'static, str>> = Vec::new();
        if n.pods.len() as i64 + 1 > n.allocatable.allowed_pods {
            reasons.push(Cow::Borrowed("Too many pods"));
        }
        let r = &self.requests;
        if r.is_zero() {
            return if reasons.is_empty() {
                Ok(())
            } else {
                Err(Failure::Resources(reasons))
            };
        }
        let a = &n.allocatable;
        let u = &n.requested;
        if r.milli_cpu > 0 && r.milli_cpu > a.milli_cpu.saturating_sub(u.milli_cpu) {
            reasons.push(Cow::Borrowed("Insufficient cpu"));
        }
        if r.memory > 0 && r.memory > a.memory.saturating_sub(u.memory) {
            reasons.push(Cow::Borrowed("Insufficient memory"));
        }
        if r.ephemeral_storage > 0
            && r.ephemeral_storage > a.ephemeral_storage.saturating_sub(u.ephemeral_storage)
        {
            reasons.push(Cow::Borrowed("Insufficient ephemeral-storage"));
        }
        for (name, q) in &r.scalar {
            if *q == 0 {
                continue;
            }
            let avail = a
                .scalar
                .get(name)
                .copied()
                .unwrap_or(0)
                .saturating_sub(u.scalar.get(name).copied().unwrap_or(0));
            if *q > avail {
                reasons.push(Cow::Owned(format!("Insufficient {name}")));
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(Failure::Resources(reasons))
        }
    }

    fn filter_spread(&self, sp: &HardSpread, n: &NodeInfo) -> Result<(), Failure> {
        for c in &sp.constraints {
            if n.label(&c.key).is_none() {
                return Err(Failure::SpreadMissingLabel);
            }
        }
        for (i, c) in sp.constraints.iter().enumerate() {
            let Some(v) = n.label(&c.key) else { continue };
            let matched = sp.counts[i].get(v).copied().unwrap_or(0);
            let skew = matched + i64::from(c.self_match) - sp.min_match(i);
            if skew > c.max_skew {
                return Err(Failure::Spread);
            }
        }
        Ok(())
    }

    fn filter_interpod(
        &self,
        snap: &Snapshot,
        st: &InterPodState,
        n: &NodeInfo,
    ) -> Result<(), Failure> {
        // required affinity
        if !self.affinity.required_affinity.is_empty() {
            let mut pods_exist = true;
            for t in &self.affinity.required_affinity {
                match n.label(&t.topology_key) {
                    Some(v) => {
                        if get_count(&st.affinity_counts, &t.topology_key, v) <= 0 {
                            pods_exist = false;
                        }
                    }
                    None => return Err(Failure::PodAffinity),
                }
            }
            if !pods_exist {
                let self_match = self
                    .affinity
                    .required_affinity
                    .iter()
                    .all(|t| t.matches(self.ns, self.labels, &snap.ns_labels));
                let none = st
                    .affinity_counts
                    .values()
                    .all(|m| m.values().all(|c| *c <= 0));
                if !(none && self_match) {
                    return Err(Failure::PodAffinity);
                }
            }
        }
        for t in &self.affinity.required_anti {
            if let Some(v) = n.label(&t.topology_key) {
                if get_count(&st.anti_counts, &t.topology_key, v) > 0 {
                    return Err(Failure::PodAntiAffinity);
                }
            }
        }
        if !st.existing_anti.is_empty() {
            for (k, m) in &st.existing_anti {
                if let Some(v) = n.label(k) {
                    if m.get(v).copied().unwrap_or(0) > 0 {
                        return Err(Failure::ExistingAntiAffinity);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Upstream's `DefaultNormalizeScore`.
pub(crate) fn default_normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    if max == 0 {
        if reverse {
            scores.iter_mut().for_each(|s| *s = MAX_NODE_SCORE);
        }
        return;
    }
    for s in scores.iter_mut() {
        *s = MAX_NODE_SCORE * *s / max;
        if reverse {
            *s = MAX_NODE_SCORE - *s;
        }
    }
}

/// Plugin weights (upstream defaults in [`Weights::default`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weights {
    /// TaintToleration (PreferNoSchedule taints): 3.
    pub taint_toleration: i64,
    /// NodeAffinity (preferred terms): 2.
    pub node_affinity: i64,
    /// NodeResourcesFit (LeastAllocated over cpu and memory): 1.
    pub node_resources_fit: i64,
    /// PodTopologySpread (ScheduleAnyway constraints): 2.
    pub pod_topology_spread: i64,
    /// InterPodAffinity (preferred terms): 2.
    pub inter_pod_affinity: i64,
    /// NodeResourcesBalancedAllocation: 1.
    pub balanced_allocation: i64,
    /// ImageLocality: 1.
    pub image_locality: i64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            taint_toleration: 3,
            node_affinity: 2,
            node_resources_fit: 1,
            pod_topology_spread: 2,
            inter_pod_affinity: 2,
            balanced_allocation: 1,
            image_locality: 1,
        }
    }
}

fn least_requested(requested: i64, capacity: i64) -> i64 {
    if capacity == 0 || requested > capacity {
        return 0;
    }
    (capacity - requested) * MAX_NODE_SCORE / capacity
}

impl PodCtx<'_> {
    /// Sums the weighted, normalized scores of every score plugin over `feasible` nodes.
    pub fn score(&self, snap: &Snapshot, feasible: &[usize], w: &Weights) -> Vec<i64> {
        let nodes = &snap.nodes;
        let mut total = vec![0i64; feasible.len()];
        let mut buf = vec![0i64; feasible.len()];
        // NodeResourcesFit (LeastAllocated, cpu+memory weight 1 each) and BalancedAllocation.
        let (pc, pm) = self.non_zero;
        let (rc, rm) = (self.requests.milli_cpu, self.requests.memory);
        let best_effort = rc == 0 && rm == 0;
        for (k, &i) in feasible.iter().enumerate() {
            let n = &nodes[i];
            let (ac, am) = (n.allocatable.milli_cpu, n.allocatable.memory);
            // least allocated
            let mut sum = 0;
            let mut wsum = 0;
            if ac != 0 {
                sum += least_requested(n.non_zero_cpu + pc, ac);
                wsum += 1;
            }
            if am != 0 {
                sum += least_requested(n.non_zero_mem + pm, am);
                wsum += 1;
            }
            let least = if wsum == 0 { 0 } else { sum / wsum };
            // balanced allocation (actual requests)
            let mut fr = [0f64; 2];
            let mut nf = 0;
            if ac != 0 {
                fr[nf] = ((n.requested.milli_cpu + rc) as f64 / ac as f64).min(1.0);
                nf += 1;
            }
            if am != 0 {
                fr[nf] = ((n.requested.memory + rm) as f64 / am as f64).min(1.0);
                nf += 1;
            }
            let std = if nf == 2 {
                ((fr[0] - fr[1]) / 2.0).abs()
            } else {
                0.0
            };
            // Best-effort pods skip BalancedAllocation (upstream issue 129138).
            let balanced = if best_effort {
                0
            } else {
                ((1.0 - std) * MAX_NODE_SCORE as f64) as i64
            };
            total[k] = least * w.node_resources_fit + balanced * w.balanced_allocation;
        }
        // TaintToleration: count of intolerable PreferNoSchedule taints, reversed.
        let prefer_tols: Vec<&Toleration> = self
            .tolerations
            .iter()
            .filter(|t| {
                t.effect
                    .as_deref()
                    .is_none_or(|e| e.is_empty() || e == "PreferNoSchedule")
            })
            .collect();
        let mut any = false;
        for (k, &i) in feasible.iter().enumerate() {
            let c = nodes[i]
                .taints()
                .iter()
                .filter(|t| {
                    t.effect == "PreferNoSchedule"
                        && !prefer_tols
                            .iter()
                            .any(|tol| crate::selectors::tolerates(tol, t))
                })
                .count() as i64;
            any |= c > 0;
            buf[k] = c;
        }
        if any {
            default_normalize(&mut buf, true);
            add_weighted(&mut total, &buf, w.taint_toleration);
        }
        // NodeAffinity: preferred terms.
        if !self.preferred_node.is_empty() {
            for (k, &i) in feasible.iter().enumerate() {
                let n = &nodes[i];
                buf[k] = self
                    .preferred_node
                    .iter()
                    .filter(|(_, t)| t.matches(&n.name, n.labels()))
                    .map(|(wt, _)| i64::from(*wt))
                    .sum();
            }
            default_normalize(&mut buf, false);
            add_weighted(&mut total, &buf, w.node_affinity);
        }
        // PodTopologySpread (soft constraints).
        if !self.soft_spread.is_empty() {
            self.score_spread(snap, feasible, &mut buf);
            add_weighted(&mut total, &buf, w.pod_topology_spread);
        }
        // InterPodAffinity.
        if self.score_interpod(snap, feasible, &mut buf) {
            add_weighted(&mut total, &buf, w.inter_pod_affinity);
        }
        // ImageLocality.
        if !self.images.is_empty() {
            let total_nodes = nodes.len().max(1) as f64;
            const MB: i64 = 1024 * 1024;
            let min_t = 23 * MB;
            let max_t = 1000 * MB * self.num_containers.max(1) as i64;
            for (k, &i) in feasible.iter().enumerate() {
                let n = &nodes[i];
                let mut sum: i64 = 0;
                for img in &self.images {
                    if let Some(size) = n.images.get(img) {
                        let spread =
                            snap.image_nodes.get(img).copied().unwrap_or(0) as f64 / total_nodes;
                        sum = sum.saturating_add((*size as f64 * spread) as i64);
                    }
                }
                let s = sum.clamp(min_t, max_t);
                buf[k] = MAX_NODE_SCORE * (s - min_t) / (max_t - min_t);
            }
            add_weighted(&mut total, &buf, w.image_locality);
        }
        total
    }

    fn score_spread(&self, snap: &Snapshot, feasible: &[usize], out: &mut [i64]) {
        let nodes = &snap.nodes;
        let cs = &self.soft_spread;
        // Nodes lacking any topology key are ignored (score 0).
        let ignored: Vec<bool> = feasible
            .iter()
            .map(|&i| !cs.iter().all(|c| nodes[i].label(&c.key).is_some()))
            .collect();
        let mut pair_counts: Vec<HashMap<String, i64>> = vec![HashMap::new(); cs.len()];
        let mut weights = vec![0f64; cs.len()];
        for (ci, c) in cs.iter().enumerate() {
            if c.key == "kubernetes.io/hostname" {
                let size = ignored.iter().filter(|x| !**x).count();
                weights[ci] = ((size + 2) as f64).ln();
                continue;
            }
            for (k, &i) in feasible.iter().enumerate() {
                if ignored[k] {
                    continue;
                }
                if let Some(v) = nodes[i].label(&c.key) {
                    pair_counts[ci].entry(v.to_string()).or_insert(0);
                }
            }
            weights[ci] = ((pair_counts[ci].len() + 2) as f64).ln();
        }
        for n in nodes {
            if !cs.iter().all(|c| n.label(&c.key).is_some()) {
                continue;
            }
            for (ci, c) in cs.iter().enumerate() {
                if c.key == "kubernetes.io/hostname" || !self.node_included(c, n) {
                    continue;
                }
                let Some(v) = n.label(&c.key) else { continue };
                if let Some(cnt) = pair_counts[ci].get_mut(v) {
                    *cnt += self.count_matching(c, n);
                }
            }
        }
        let mut min = i64::MAX;
        let mut max = i64::MIN;
        for (k, &i) in feasible.iter().enumerate() {
            if ignored[k] {
                out[k] = 0;
                continue;
            }
            let n = &nodes[i];
            let mut score = 0f64;
            for (ci, c) in cs.iter().enumerate() {
                let Some(v) = n.label(&c.key) else { continue };
                let cnt = if c.key == "kubernetes.io/hostname" {
                    self.count_matching(c, n)
                } else {
                    pair_counts[ci].get(v).copied().unwrap_or(0)
                };
                score += cnt as f64 * weights[ci] + (c.max_skew - 1) as f64;
            }
            let s = score.round() as i64;
            out[k] = s;
            min = min.min(s);
            max = max.max(s);
        }
        for (k, _) in feasible.iter().enumerate() {
            if ignored[k] {
                out[k] = 0;
            } else if max == 0 {
                out[k] = MAX_NODE_SCORE;
            } else {
                out[k] = MAX_NODE_SCORE * (max + min - out[k]) / max;
            }
        }
    }

    /// Returns false when the plugin has nothing to say (skipped).
    fn score_interpod(&self, snap: &Snapshot, feasible: &[usize], out: &mut [i64]) -> bool {
        let has_pref = !self.affinity.preferred_affinity.is_empty()
            || !self.affinity.preferred_anti.is_empty();
        let any_aff = snap.nodes.iter().any(|n| n.pods_with_affinity > 0);
        if !has_pref && !any_aff {
            return false;
        }
        const HARD_POD_AFFINITY_WEIGHT: i64 = 1;
        let mut topo: TopoCounts = HashMap::new();
        let nsl = &snap.ns_labels;
        for n in &snap.nodes {
            if !has_pref && n.pods_with_affinity == 0 {
                continue;
            }
            for p in &n.pods {
                for (wt, t) in &self.affinity.preferred_affinity {
                    if let Some(v) = n.label(&t.topology_key) {
                        if t.matches(&p.namespace, p.labels(), nsl) {
                            bump(&mut topo, &t.topology_key, v, i64::from(*wt));
                        }
                    }
                }
                for (wt, t) in &self.affinity.preferred_anti {
                    if let Some(v) = n.label(&t.topology_key) {
                        if t.matches(&p.namespace, p.labels(), nsl) {
                            bump(&mut topo, &t.topology_key, v, -i64::from(*wt));
                        }
                    }
                }
                if p.affinity.is_empty() {
                    continue;
                }
                for t in &p.affinity.required_affinity {
                    if let Some(v) = n.label(&t.topology_key) {
                        if t.matches(self.ns, self.labels, nsl) {
                            bump(&mut topo, &t.topology_key, v, HARD_POD_AFFINITY_WEIGHT);
                        }
                    }
                }
                for (wt, t) in &p.affinity.preferred_affinity {
                    if let Some(v) = n.label(&t.topology_key) {
                        if t.matches(self.ns, self.labels, nsl) {
                            bump(&mut topo, &t.topology_key, v, i64::from(*wt));
                        }
                    }
                }
                for (wt, t) in &p.affinity.preferred_anti {
                    if let Some(v) = n.label(&t.topology_key) {
                        if t.matches(self.ns, self.labels, nsl) {
                            bump(&mut topo, &t.topology_key, v, -i64::from(*wt));
                        }
                    }
                }
            }
        }
        if topo.is_empty() {
            return false;
        }
        let (mut min, mut max) = (i64::MAX, i64::MIN);
        for (k, &i) in feasible.iter().enumerate() {
            let n = &snap.nodes[i];
            let s: i64 = topo
                .iter()
                .filter_map(|(key, m)| n.label(key).and_then(|v| m.get(v)))
                .sum();
            out[k] = s;
            min = min.min(s);
            max = max.max(s);
        }
        let diff = max - min;
        for s in out.iter_mut() {
            *s = if diff > 0 {
                MAX_NODE_SCORE * (*s - min) / diff
            } else {
                0
            };
        }
        true
    }
}

fn add_weighted(total: &mut [i64], scores: &[i64], w: i64) {
    for (t, s) in total.iter_mut().zip(scores) {
        *t += s * w;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_are_normalized() {
        assert_eq!(normalized_image("nginx"), "nginx:latest");
        assert_eq!(normalized_image("nginx:1.25"), "nginx:1.25");
        assert_eq!(
            normalized_image("localhost:5000/app"),
            "localhost:5000/app:latest"
        );
        assert_eq!(normalized_image("app@sha256:abc"), "app@sha256:abc");
    }

    #[test]
    fn normalize_reverse_and_plain() {
        let mut s = vec![0, 1, 2];
        default_normalize(&mut s, true);
        assert_eq!(s, vec![100, 50, 0]);
        let mut s = vec![0, 0];
        default_normalize(&mut s, true);
        assert_eq!(s, vec![100, 100]);
        let mut s = vec![3, 6];
        default_normalize(&mut s, false);
        assert_eq!(s, vec![50, 100]);
    }
}
