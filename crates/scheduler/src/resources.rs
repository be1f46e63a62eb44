//! Resource arithmetic: what a pod requests and what a node offers.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::quantity::{parse_milli_value, parse_value};

/// Default CPU request (millicores) the scorer assumes for a container without one.
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// Default memory request (bytes) the scorer assumes for a container without one.
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// A set of resource amounts, as upstream's `framework.Resource`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU in millicores.
    pub milli_cpu: i64,
    /// Memory in bytes.
    pub memory: i64,
    /// Ephemeral storage in bytes.
    pub ephemeral_storage: i64,
    /// Number of pods (only meaningful for node allocatable).
    pub allowed_pods: i64,
    /// Extended, hugepages and other scalar resources, in whole units.
    pub scalar: BTreeMap<String, i64>,
}

impl Resources {
    /// Reads a `ResourceList` (requests, limits, overhead or allocatable).
    pub fn from_list(list: &BTreeMap<String, Quantity>) -> Self {
        let mut r = Resources::default();
        for (name, q) in list {
            r.set(name, q);
        }
        r
    }

    fn set(&mut self, name: &str, q: &Quantity) {
        match name {
            "cpu" => self.milli_cpu = parse_milli_value(&q.0).unwrap_or(0),
            "memory" => self.memory = parse_value(&q.0).unwrap_or(0),
            "ephemeral-storage" => self.ephemeral_storage = parse_value(&q.0).unwrap_or(0),
            "pods" => self.allowed_pods = parse_value(&q.0).unwrap_or(0),
            other => {
                if is_scalar_resource_name(other) {
                    self.scalar
                        .insert(other.to_string(), parse_value(&q.0).unwrap_or(0));
                }
            }
        }
    }

    /// Adds `other` to `self` (saturating).
    pub fn add(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_add(other.milli_cpu);
        self.memory = self.memory.saturating_add(other.memory);
        self.ephemeral_storage = self
            .ephemeral_storage
            .saturating_add(other.ephemeral_storage);
        self.allowed_pods = self.allowed_pods.saturating_add(other.allowed_pods);
        for (k, v) in &other.scalar {
            let e = self.scalar.entry(k.clone()).or_insert(0);
            *e = e.saturating_add(*v);
        }
    }

    /// Subtracts `other` from `self` (saturating).
    pub fn sub(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_sub(other.milli_cpu);
        self.memory = self.memory.saturating_sub(other.memory);
        self.ephemeral_storage = self
            .ephemeral_storage
            .saturating_sub(other.ephemeral_storage);
        self.allowed_pods = self.allowed_pods.saturating_sub(other.allowed_pods);
        for (k, v) in &other.scalar {
            let e = self.scalar.entry(k.clone()).or_insert(0);
            *e = e.saturating_sub(*v);
        }
        self.scalar.retain(|_, v| *v != 0);
    }

    /// Sets every field to the maximum of `self` and `other`.
    pub fn max_with(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.max(other.milli_cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        self.allowed_pods = self.allowed_pods.max(other.allowed_pods);
        for (k, v) in &other.scalar {
            let e = self.scalar.entry(k.clone()).or_insert(*v);
            *e = (*e).max(*v);
        }
    }

    /// True when nothing is requested.
    pub fn is_zero(&self) -> bool {
        self.milli_cpu == 0
            && self.memory == 0
            && self.ephemeral_storage == 0
            && self.scalar.values().all(|v| *v == 0)
    }
}

/// Scalar resources: everything besides cpu/memory/ephemeral-storage/pods
/// (extended resources such as `example.com/gpu`, `hugepages-*`, `attachable-volumes-*`).
fn is_scalar_resource_name(name: &str) -> bool {
    !name.is_empty()
}

fn container_requests(c: &Container) -> Resources {
    c.resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .map(Resources::from_list)
        .unwrap_or_default()
}

/// (cpu, memory) requests of a container, with upstream's defaults for the ones missing.
fn container_non_zero(c: &Container) -> (i64, i64) {
    let req = c.resources.as_ref().and_then(|r| r.requests.as_ref());
    let cpu = req
        .and_then(|r| r.get("cpu"))
        .map(|q| parse_milli_value(&q.0).unwrap_or(0))
        .unwrap_or(DEFAULT_MILLI_CPU_REQUEST);
    let mem = req
        .and_then(|r| r.get("memory"))
        .map(|q| parse_value(&q.0).unwrap_or(0))
        .unwrap_or(DEFAULT_MEMORY_REQUEST);
    (cpu, mem)
}

fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

/// The resources a pod requests, computed as upstream does: the sum over regular
/// containers and restartable (sidecar) init containers, then the maximum with each
/// regular init container (plus the sidecars started before it), plus `spec.overhead`.
pub fn pod_requests(pod: &Pod) -> Resources {
    let Some(spec) = pod.spec.as_ref() else {
        return Resources::default();
    };
    let mut reqs = Resources::default();
    for c in &spec.containers {
        reqs.add(&container_requests(c));
    }
    let mut sidecars = Resources::default();
    let mut init_max = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let r = container_requests(c);
        if is_sidecar(c) {
            reqs.add(&r);
            sidecars.add(&r);
            init_max.max_with(&sidecars);
        } else {
            let mut tmp = r;
            tmp.add(&sidecars);
            init_max.max_with(&tmp);
        }
    }
    reqs.max_with(&init_max);
    if let Some(overhead) = spec.overhead.as_ref() {
        reqs.add(&Resources::from_list(overhead));
    }
    reqs
}

/// (cpu millicores, memory bytes) requested by a pod where every container without a
/// cpu/memory request counts as 100m / 200Mi (upstream's `NonMissingContainerRequests`,
/// used by the LeastAllocated scorer).
pub fn pod_non_zero_requests(pod: &Pod) -> (i64, i64) {
    let Some(spec) = pod.spec.as_ref() else {
        return (0, 0);
    };
    let (mut cpu, mut mem) = (0i64, 0i64);
    for c in &spec.containers {
        let (a, b) = container_non_zero(c);
        cpu = cpu.saturating_add(a);
        mem = mem.saturating_add(b);
    }
    let (mut sc_cpu, mut sc_mem) = (0i64, 0i64);
    let (mut init_cpu, mut init_mem) = (0i64, 0i64);
    for c in spec.init_containers.iter().flatten() {
        let (a, b) = container_non_zero(c);
        if is_sidecar(c) {
            cpu = cpu.saturating_add(a);
            mem = mem.saturating_add(b);
            sc_cpu = sc_cpu.saturating_add(a);
            sc_mem = sc_mem.saturating_add(b);
            init_cpu = init_cpu.max(sc_cpu);
            init_mem = init_mem.max(sc_mem);
        } else {
            init_cpu = init_cpu.max(a.saturating_add(sc_cpu));
            init_mem = init_mem.max(b.saturating_add(sc_mem));
        }
    }
    cpu = cpu.max(init_cpu);
    mem = mem.max(init_mem);
    if let Some(o) = spec.overhead.as_ref() {
        if let Some(q) = o.get("cpu") {
            cpu = cpu.saturating_add(parse_milli_value(&q.0).unwrap_or(0));
        }
        if let Some(q) = o.get("memory") {
            mem = mem.saturating_add(parse_value(&q.0).unwrap_or(0));
        }
    }
    (cpu, mem)
}

/// A node's allocatable resources (`status.allocatable`, falling back to `status.capacity`).
pub fn node_allocatable(node: &Node) -> Resources {
    let status = node.status.as_ref();
    status
        .and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()))
        .map(Resources::from_list)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};

    fn c(cpu: Option<&str>, mem: Option<&str>, sidecar: bool) -> Container {
        let mut req = BTreeMap::new();
        if let Some(v) = cpu {
            req.insert("cpu".to_string(), Quantity(v.to_string()));
        }
        if let Some(v) = mem {
            req.insert("memory".to_string(), Quantity(v.to_string()));
        }
        Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                requests: Some(req),
                ..Default::default()
            }),
            restart_policy: sidecar.then(|| "Always".to_string()),
            ..Default::default()
        }
    }

    fn pod(containers: Vec<Container>, init: Vec<Container>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                containers,
                init_containers: Some(init),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn init_containers_take_the_max() {
        let p = pod(
            vec![
                c(Some("100m"), Some("1Gi"), false),
                c(Some("200m"), None, false),
            ],
            vec![c(Some("500m"), Some("100Mi"), false)],
        );
        let r = pod_requests(&p);
        assert_eq!(r.milli_cpu, 500);
        assert_eq!(r.memory, 1 << 30);
    }

    #[test]
    fn sidecars_add_up_and_overhead_counts() {
        // sidecar 100m runs alongside containers (300m); a later init of 250m sees 350m.
        let mut p = pod(
            vec![c(Some("300m"), None, false)],
            vec![c(Some("100m"), None, true), c(Some("250m"), None, false)],
        );
        assert_eq!(pod_requests(&p).milli_cpu, 400);
        if let Some(spec) = p.spec.as_mut() {
            spec.overhead = Some(BTreeMap::from([(
                "cpu".to_string(),
                Quantity("50m".into()),
            )]));
        }
        assert_eq!(pod_requests(&p).milli_cpu, 450);
    }

    #[test]
    fn regular_init_with_sidecar_before_it() {
        let p = pod(
            vec![c(Some("100m"), None, false)],
            vec![c(Some("200m"), None, true), c(Some("1"), None, false)],
        );
        // max(100+200, 1000+200) = 1200
        assert_eq!(pod_requests(&p).milli_cpu, 1200);
    }

    #[test]
    fn non_zero_defaults_apply_per_container() {
        let p = pod(
            vec![c(None, None, false), c(Some("1"), None, false)],
            vec![],
        );
        assert_eq!(
            pod_non_zero_requests(&p),
            (1100, 2 * DEFAULT_MEMORY_REQUEST)
        );
        assert_eq!(pod_requests(&p).milli_cpu, 1000);
        assert_eq!(pod_requests(&p).memory, 0);
    }
}
