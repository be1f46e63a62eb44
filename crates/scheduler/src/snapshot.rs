//! The cluster state the scheduler works on: nodes with their pods and
//! precomputed aggregates, kept up to date incrementally.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod, PodAffinityTerm, Taint,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;

use crate::resources::{node_allocatable, pod_non_zero_requests, pod_requests, Resources};
use crate::selectors::{Labels, Selector};

pub(crate) use rk3s_core::hostport::{pod_host_ports, HostPort};

/// A compiled pod (anti-)affinity term.
#[derive(Debug, Clone)]
pub(crate) struct AffinityTerm {
    pub namespaces: Vec<String>,
    pub ns_selector: Option<Selector>,
    pub selector: Selector,
    pub topology_key: String,
}

impl AffinityTerm {
    pub fn new(t: &PodAffinityTerm, own_ns: &str) -> Self {
        let mut namespaces = t.namespaces.clone().unwrap_or_default();
        let ns_selector = t
            .namespace_selector
            .as_ref()
            .map(|s| Selector::from_label_selector(Some(s)));
        if namespaces.is_empty() && ns_selector.is_none() {
            namespaces.push(own_ns.to_string());
        }
        AffinityTerm {
            namespaces,
            ns_selector,
            selector: Selector::from_label_selector(t.label_selector.as_ref()),
            topology_key: t.topology_key.clone(),
        }
    }

    /// Whether a pod in `ns` with `labels` is selected by this term.
    pub fn matches(
        &self,
        ns: &str,
        labels: Option<&Labels>,
        ns_labels: &HashMap<String, Labels>,
    ) -> bool {
        let ns_ok = self.namespaces.iter().any(|n| n == ns)
            || self
                .ns_selector
                .as_ref()
                .is_some_and(|s| s.is_everything() || s.matches(ns_labels.get(ns)));
        ns_ok && self.selector.matches(labels)
    }
}

/// The compiled affinity of a pod.
#[derive(Debug, Clone, Default)]
pub(crate) struct PodAffinity {
    pub required_affinity: Vec<AffinityTerm>,
    pub required_anti: Vec<AffinityTerm>,
    pub preferred_affinity: Vec<(i32, AffinityTerm)>,
    pub preferred_anti: Vec<(i32, AffinityTerm)>,
}

impl PodAffinity {
    pub fn new(pod: &Pod) -> Self {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let mut out = PodAffinity::default();
        let Some(aff) = pod.spec.as_ref().and_then(|s| s.affinity.as_ref()) else {
            return out;
        };
        if let Some(a) = aff.pod_affinity.as_ref() {
            out.required_affinity = a
                .required_during_scheduling_ignored_during_execution
                .iter()
                .flatten()
                .map(|t| AffinityTerm::new(t, ns))
                .collect();
            out.preferred_affinity = a
                .preferred_during_scheduling_ignored_during_execution
                .iter()
                .flatten()
                .map(|w| (w.weight, AffinityTerm::new(&w.pod_affinity_term, ns)))
                .collect();
        }
        if let Some(a) = aff.pod_anti_affinity.as_ref() {
            out.required_anti = a
                .required_during_scheduling_ignored_during_execution
                .iter()
                .flatten()
                .map(|t| AffinityTerm::new(t, ns))
                .collect();
            out.preferred_anti = a
                .preferred_during_scheduling_ignored_during_execution
                .iter()
                .flatten()
                .map(|w| (w.weight, AffinityTerm::new(&w.pod_affinity_term, ns)))
                .collect();
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.required_affinity.is_empty()
            && self.required_anti.is_empty()
            && self.preferred_affinity.is_empty()
            && self.preferred_anti.is_empty()
    }
}

/// A pod placed on a node, with what the scheduler needs precomputed.
#[derive(Debug)]
pub(crate) struct PodEntry {
    pub pod: Arc<Pod>,
    pub key: String,
    pub namespace: String,
    pub requests: Resources,
    pub non_zero: (i64, i64),
    pub ports: Vec<HostPort>,
    pub priority: i32,
    pub affinity: PodAffinity,
    pub terminating: bool,
}

impl PodEntry {
    pub fn new(pod: Arc<Pod>) -> Self {
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        PodEntry {
            key: pod_key(&pod),
            namespace,
            requests: pod_requests(&pod),
            non_zero: pod_non_zero_requests(&pod),
            ports: pod_host_ports(&pod),
            priority: pod_priority(&pod),
            affinity: PodAffinity::new(&pod),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            pod,
        }
    }

    pub fn labels(&self) -> Option<&Labels> {
        self.pod.metadata.labels.as_ref()
    }
}

/// `namespace/name` of a pod.
pub fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

/// A pod's priority (`spec.priority`, 0 when unset).
pub fn pod_priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// A node and the aggregates of the pods on it.
#[derive(Debug, Clone)]
pub(crate) struct NodeInfo {
    pub node: Arc<Node>,
    pub name: String,
    pub allocatable: Resources,
    pub requested: Resources,
    pub non_zero_cpu: i64,
    pub non_zero_mem: i64,
    pub pods: Vec<Arc<PodEntry>>,
    pub used_ports: Vec<HostPort>,
    pub images: Arc<HashMap<String, i64>>,
    pub pods_with_affinity: usize,
    pub pods_with_required_anti: usize,
    pub unschedulable: bool,
}

static NO_TAINTS: Vec<Taint> = Vec::new();

impl NodeInfo {
    fn new(node: Node) -> Self {
        let name = node.metadata.name.clone().unwrap_or_default();
        let mut images = HashMap::new();
        for img in node.status.iter().flat_map(|s| s.images.iter().flatten()) {
            for n in img.names.iter().flatten() {
                images.insert(n.clone(), img.size_bytes.unwrap_or(0));
            }
        }
        NodeInfo {
            allocatable: node_allocatable(&node),
            unschedulable: node
                .spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false),
            node: Arc::new(node),
            name,
            requested: Resources::default(),
            non_zero_cpu: 0,
            non_zero_mem: 0,
            pods: Vec::new(),
            used_ports: Vec::new(),
            images: Arc::new(images),
            pods_with_affinity: 0,
            pods_with_required_anti: 0,
        }
    }

    pub fn labels(&self) -> Option<&Labels> {
        self.node.metadata.labels.as_ref()
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels().and_then(|l| l.get(key)).map(String::as_str)
    }

    pub fn taints(&self) -> &[Taint] {
        self.node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_deref())
            .unwrap_or(&NO_TAINTS)
    }

    pub fn add_entry(&mut self, e: Arc<PodEntry>) {
        self.requested.add(&e.requests);
        self.non_zero_cpu = self.non_zero_cpu.saturating_add(e.non_zero.0);
        self.non_zero_mem = self.non_zero_mem.saturating_add(e.non_zero.1);
        self.used_ports.extend(e.ports.iter().cloned());
        if !e.affinity.is_empty() {
            self.pods_with_affinity += 1;
        }
        if !e.affinity.required_anti.is_empty() {
            self.pods_with_required_anti += 1;
        }
        self.pods.push(e);
    }

    pub fn remove_entry(&mut self, key: &str) -> Option<Arc<PodEntry>> {
        let idx = self.pods.iter().position(|p| p.key == key)?;
        let e = self.pods.swap_remove(idx);
        self.requested.sub(&e.requests);
        self.non_zero_cpu = self.non_zero_cpu.saturating_sub(e.non_zero.0);
        self.non_zero_mem = self.non_zero_mem.saturating_sub(e.non_zero.1);
        for p in &e.ports {
            if let Some(i) = self.used_ports.iter().position(|u| u == p) {
                self.used_ports.swap_remove(i);
            }
        }
        if !e.affinity.is_empty() {
            self.pods_with_affinity -= 1;
        }
        if !e.affinity.required_anti.is_empty() {
            self.pods_with_required_anti -= 1;
        }
        Some(e)
    }
}

/// Whether a pod is finished (its resources are free again).
fn is_terminated(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

/// The cluster as the scheduler sees it: nodes with their assigned pods and
/// precomputed requested resources, ports, images and affinity counters; plus
/// the volume objects, PodDisruptionBudgets and namespace labels the plugins read.
///
/// Build it once with [`Snapshot::new`] and keep it current with
/// [`Snapshot::add_pod`] (after each bind), [`Snapshot::remove_pod`],
/// [`Snapshot::update_node`] and [`Snapshot::remove_node`].
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub(crate) nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    /// pod key -> node name
    pod_nodes: HashMap<String, String>,
    /// pods bound to nodes not (yet) in the snapshot
    orphans: HashMap<String, Vec<Arc<PodEntry>>>,
    /// image name -> number of nodes that have it
    pub(crate) image_nodes: HashMap<String, usize>,
    pub(crate) pvs: HashMap<String, PersistentVolume>,
    pub(crate) pvcs: HashMap<String, PersistentVolumeClaim>,
    pub(crate) classes: HashMap<String, StorageClass>,
    pub(crate) pdbs: Vec<PodDisruptionBudget>,
    pub(crate) ns_labels: HashMap<String, Labels>,
}

impl Snapshot {
    /// Builds a snapshot from nodes and pods. Pods without `spec.nodeName` and
    /// finished pods (phase Succeeded/Failed) are ignored.
    pub fn new(nodes: Vec<Node>, pods: Vec<Pod>) -> Self {
        let mut s = Snapshot::default();
        for n in nodes {
            s.update_node(n);
        }
        for p in pods {
            if let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
                s.add_pod_owned(p, &node);
            }
        }
        s
    }

    /// Number of nodes.
    pub fn num_nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Names of the nodes, in snapshot order.
    pub fn node_names(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().map(|n| n.name.as_str())
    }

    /// The node a pod (`namespace/name`) is placed on, if known.
    pub fn node_of(&self, pod_key: &str) -> Option<&str> {
        self.pod_nodes.get(pod_key).map(String::as_str)
    }

    /// Requested resources on a node (sum of its pods' requests).
    pub fn requested(&self, node: &str) -> Option<&Resources> {
        self.index.get(node).map(|&i| &self.nodes[i].requested)
    }

    /// Sets the PersistentVolumes, PersistentVolumeClaims and StorageClasses
    /// that the volume plugins consult.
    pub fn set_volumes(
        &mut self,
        pvs: Vec<PersistentVolume>,
        pvcs: Vec<PersistentVolumeClaim>,
        classes: Vec<StorageClass>,
    ) {
        self.pvs = pvs
            .into_iter()
            .filter_map(|p| Some((p.metadata.name.clone()?, p)))
            .collect();
        self.pvcs = pvcs
            .into_iter()
            .filter_map(|p| {
                let key = format!(
                    "{}/{}",
                    p.metadata.namespace.as_deref().unwrap_or("default"),
                    p.metadata.name.as_deref()?
                );
                Some((key, p))
            })
            .collect();
        self.classes = classes
            .into_iter()
            .filter_map(|c| Some((c.metadata.name.clone()?, c)))
            .collect();
    }

    /// The claims (`(namespace, name)`) of `pod` that are unbound with a
    /// `WaitForFirstConsumer` class: binding the pod first selects its node for them
    /// (upstream's VolumeBinding PreBind sets `volume.kubernetes.io/selected-node`).
    pub fn delayed_claims(&self, pod: &Pod) -> Vec<(String, String)> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let vols = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
        vols.into_iter()
            .flatten()
            .filter_map(|v| v.persistent_volume_claim.as_ref())
            .filter(|c| {
                let Some(pvc) = self.pvcs.get(&format!("{ns}/{}", c.claim_name)) else {
                    return false;
                };
                let spec = pvc.spec.as_ref();
                let unbound = spec
                    .and_then(|s| s.volume_name.as_deref())
                    .is_none_or(str::is_empty);
                let class = spec
                    .and_then(|s| s.storage_class_name.as_deref())
                    .unwrap_or_default();
                unbound
                    && self
                        .classes
                        .get(class)
                        .and_then(|c| c.volume_binding_mode.as_deref())
                        == Some("WaitForFirstConsumer")
            })
            .map(|c| (ns.to_string(), c.claim_name.clone()))
            .collect()
    }

    /// Sets the PodDisruptionBudgets that preemption respects.
    pub fn set_pdbs(&mut self, pdbs: Vec<PodDisruptionBudget>) {
        self.pdbs = pdbs;
    }

    /// Sets the namespaces (their labels are used by affinity `namespaceSelector`).
    pub fn set_namespaces(&mut self, namespaces: Vec<Namespace>) {
        self.ns_labels = namespaces
            .into_iter()
            .filter_map(|n| Some((n.metadata.name?, n.metadata.labels.unwrap_or_default())))
            .collect();
    }

    /// Records that `pod` runs on `node` (call after binding). Replaces an
    /// earlier record of the same pod.
    pub fn add_pod(&mut self, pod: &Pod, node: &str) {
        self.add_pod_owned(pod.clone(), node);
    }

    /// As [`Snapshot::add_pod`], taking the pod by value or shared (no clone).
    pub fn add_pod_owned(&mut self, pod: impl Into<Arc<Pod>>, node: &str) {
        let pod: Arc<Pod> = pod.into();
        if is_terminated(&pod) {
            self.remove_pod(&pod_key(&pod));
            return;
        }
        let entry = Arc::new(PodEntry::new(pod));
        self.remove_pod(&entry.key);
        self.pod_nodes.insert(entry.key.clone(), node.to_string());
        match self.index.get(node) {
            Some(&i) => self.nodes[i].add_entry(entry),
            None => self
                .orphans
                .entry(node.to_string())
                .or_default()
                .push(entry),
        }
    }

    /// Forgets a pod by `namespace/name`. Returns whether it was known.
    pub fn remove_pod(&mut self, pod_key: &str) -> bool {
        let Some(node) = self.pod_nodes.remove(pod_key) else {
            return false;
        };
        match self.index.get(&node) {
            Some(&i) => {
                self.nodes[i].remove_entry(pod_key);
            }
            None => {
                if let Some(v) = self.orphans.get_mut(&node) {
                    v.retain(|e| e.key != pod_key);
                    if v.is_empty() {
                        self.orphans.remove(&node);
                    }
                }
            }
        }
        true
    }

    fn image_counts(&mut self, images: &HashMap<String, i64>, add: bool) {
        for name in images.keys() {
            if add {
                *self.image_nodes.entry(name.clone()).or_insert(0) += 1;
            } else if let Some(c) = self.image_nodes.get_mut(name) {
                *c -= 1;
                if *c == 0 {
                    self.image_nodes.remove(name);
                }
            }
        }
    }

    /// Adds or replaces a node, keeping the pods already placed on it.
    pub fn update_node(&mut self, node: Node) {
        let mut info = NodeInfo::new(node);
        let name = info.name.clone();
        let new_images = info.images.clone();
        self.image_counts(&new_images, true);
        match self.index.get(&name) {
            Some(&i) => {
                let old = std::mem::replace(&mut self.nodes[i], info);
                self.image_counts(&old.images.clone(), false);
                for e in old.pods {
                    self.nodes[i].add_entry(e);
                }
            }
            None => {
                for e in self.orphans.remove(&name).unwrap_or_default() {
                    info.add_entry(e);
                }
                self.index.insert(name, self.nodes.len());
                self.nodes.push(info);
            }
        }
    }

    /// Removes a node. Its pods are kept aside and come back if the node does.
    pub fn remove_node(&mut self, name: &str) -> bool {
        let Some(i) = self.index.remove(name) else {
            return false;
        };
        let old = self.nodes.swap_remove(i);
        if i < self.nodes.len() {
            self.index.insert(self.nodes[i].name.clone(), i);
        }
        self.image_counts(&old.images.clone(), false);
        if !old.pods.is_empty() {
            self.orphans.insert(old.name.clone(), old.pods);
        }
        true
    }

    pub(crate) fn node_index(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;

    #[test]
    fn incremental_updates_keep_aggregates() {
        let mut s = Snapshot::new(vec![node("n1", "4", "8Gi"), node("n2", "4", "8Gi")], vec![]);
        s.add_pod(&pod("a", "1", "1Gi"), "n1");
        s.add_pod(&pod("b", "500m", "1Gi"), "n1");
        assert_eq!(s.requested("n1").map(|r| r.milli_cpu), Some(1500));
        // re-adding moves it
        s.add_pod(&pod("b", "500m", "1Gi"), "n2");
        assert_eq!(s.requested("n1").map(|r| r.milli_cpu), Some(1000));
        assert_eq!(s.requested("n2").map(|r| r.milli_cpu), Some(500));
        assert!(s.remove_pod("default/a"));
        assert_eq!(s.requested("n1").map(|r| r.milli_cpu), Some(0));
        // node update keeps pods
        s.update_node(node("n2", "8", "8Gi"));
        assert_eq!(s.requested("n2").map(|r| r.milli_cpu), Some(500));
        // remove + re-add node keeps pods aside
        assert!(s.remove_node("n2"));
        assert_eq!(s.num_nodes(), 1);
        s.update_node(node("n2", "8", "8Gi"));
        assert_eq!(s.requested("n2").map(|r| r.milli_cpu), Some(500));
        assert_eq!(s.node_of("default/b"), Some("n2"));
    }
}
