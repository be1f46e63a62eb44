//! The node IPAM controller (upstream's `pkg/controller/nodeipam` with the range
//! allocator): every Node without `spec.podCIDR` gets the lowest free subnet (prefix length
//! `node_cidr_mask_size`) of the cluster CIDR in `spec.podCIDR` and `spec.podCIDRs`. The
//! allocation is rebuilt from the existing Nodes on every pass, so deleted Nodes free their
//! range and restarts never hand out a range twice.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::Resource;
use rk3s_core::Cidr;
use serde_json::json;

use crate::workload_util::Events;
use crate::ControllerError;
use rk3s_runtime::{run_controller, Action, Trigger, WorkQueue};

/// A cluster CIDR split into equal per-node subnets (on [`rk3s_core::Cidr`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CidrSet {
    cluster: Cidr,
    node_prefix: u8,
}

impl CidrSet {
    /// The subnets of prefix length `node_prefix` of `cidr` (`a.b.c.d/len`); `None` when
    /// the CIDR is invalid or the node prefix does not fit in it.
    pub fn new(cidr: &str, node_prefix: u8) -> Option<CidrSet> {
        let cluster = Cidr::parse(cidr).ok()?;
        cluster.subnet_count(node_prefix).ok()?;
        Some(CidrSet {
            cluster,
            node_prefix,
        })
    }

    /// How many node subnets there are (saturating).
    pub fn len(&self) -> u64 {
        let n = self.cluster.subnet_count(self.node_prefix).unwrap_or(0);
        u64::try_from(n).unwrap_or(u64::MAX)
    }

    /// Always false: a set has at least one subnet.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The subnet with this index, as `a.b.c.d/len`.
    pub fn subnet(&self, index: u64) -> Option<String> {
        let sub = self
            .cluster
            .subnet(self.node_prefix, u128::from(index))
            .ok()??;
        Some(sub.to_string())
    }

    /// The index of a subnet of this set (`None` for anything else).
    pub fn index_of(&self, cidr: &str) -> Option<u64> {
        let (addr, sub) = Cidr::parse_with_addr(cidr).ok()?;
        if sub.prefix() != self.node_prefix || addr != sub.addr() {
            return None;
        }
        u64::try_from(self.cluster.subnet_index(&sub)?).ok()
    }

    /// The lowest index not in `used`.
    pub fn next_free(&self, used: &BTreeSet<u64>) -> Option<u64> {
        (0..self.len()).find(|i| !used.contains(i))
    }
}

/// The pod CIDRs of a node.
pub fn node_cidrs(node: &Node) -> Vec<String> {
    let spec = node.spec.as_ref();
    let mut v: Vec<String> = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
    if let Some(c) = spec
        .and_then(|s| s.pod_cidr.clone())
        .filter(|c| !c.is_empty())
    {
        if !v.contains(&c) {
            v.insert(0, c);
        }
    }
    v
}

/// Plans the allocation: for each node without a pod CIDR (in name order), the subnet it
/// gets; nodes left without one when the range is exhausted map to `None`.
pub fn plan(
    set: &CidrSet,
    nodes: &[&Node],
    pending: &HashMap<String, u64>,
) -> Vec<(String, Option<String>)> {
    let mut used: BTreeSet<u64> = nodes
        .iter()
        .flat_map(|n| node_cidrs(n))
        .filter_map(|c| set.index_of(&c))
        .collect();
    let names: BTreeSet<&str> = nodes
        .iter()
        .filter_map(|n| n.metadata.name.as_deref())
        .collect();
    used.extend(
        pending
            .iter()
            .filter(|(n, _)| names.contains(n.as_str()))
            .map(|(_, i)| *i),
    );
    let mut out = Vec::new();
    let mut todo: Vec<&Node> = nodes
        .iter()
        .copied()
        .filter(|n| node_cidrs(n).is_empty() && n.metadata.deletion_timestamp.is_none())
        .collect();
    todo.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for n in todo {
        let name = n.metadata.name.clone().unwrap_or_default();
        if let Some(i) = pending.get(&name) {
            out.push((name, set.subnet(*i)));
            continue;
        }
        match set.next_free(&used) {
            Some(i) => {
                used.insert(i);
                out.push((name, set.subnet(i)));
            }
            None => out.push((name, None)),
        }
    }
    out
}

/// Runs the node IPAM controller forever (returns at once when the cluster CIDR is
/// invalid, after logging it).
pub async fn run(
    client: kube::Client,
    cluster_cidr: String,
    mask: u8,
    informers: crate::informers::SharedInformers,
) -> Result<(), ControllerError> {
    let Some(set) = CidrSet::new(&cluster_cidr, mask) else {
        tracing::error!(cidr = %cluster_cidr, mask, "node IPAM: invalid cluster CIDR or mask; not allocating pod CIDRs");
        std::future::pending::<()>().await;
        return Ok(());
    };
    // The shared Node informer; every change queues a pass.
    let changes = Trigger::changes(&informers, |_: &Node| Some(()));
    let nodes = informers.store::<Node>().await;
    let events = Events::new(client.clone(), "node-controller");
    let api: Api<Node> = Api::all(client.clone());
    // Subnets patched but possibly not yet in the cache.
    let pending = Arc::new(tokio::sync::Mutex::new(HashMap::<String, u64>::new()));
    let set = Arc::new(set);
    // One key: a pass over every node, on a change or every 30 s.
    let triggers = vec![changes, Trigger::every(Duration::from_secs(30), ())];
    run_controller("nodeipam", 1, WorkQueue::new(), triggers, move |()| {
        let (api, set, nodes, pending, events) = (
            api.clone(),
            set.clone(),
            nodes.clone(),
            pending.clone(),
            events.clone(),
        );
        async move {
            let mut pending = pending.lock().await;
            sync(&api, &set, &nodes, &mut pending, &events)
                .await
                .map(Action::requeue_after)
        }
    })
    .await;
    Ok(())
}

async fn sync(
    api: &Api<Node>,
    set: &CidrSet,
    nodes: &Store<Node>,
    pending: &mut HashMap<String, u64>,
    events: &Events,
) -> Result<Option<Duration>, ControllerError> {
    let state = nodes.state();
    let list: Vec<&Node> = state.iter().map(|n| n.as_ref()).collect();
    // Forget pending allocations the cache now shows (or whose node is gone).
    pending.retain(|name, _| {
        list.iter()
            .any(|n| n.metadata.name.as_deref() == Some(name.as_str()) && node_cidrs(n).is_empty())
    });
    for (name, cidr) in plan(set, &list, pending) {
        match cidr {
            Some(c) => {
                let patch = json!({"spec": {"podCIDR": c, "podCIDRs": [c]}});
                api.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await?;
                if let Some(i) = set.index_of(&c) {
                    pending.insert(name.clone(), i);
                }
                tracing::info!(node = %name, cidr = %c, "allocated pod CIDR");
            }
            None => {
                if let Some(n) = list
                    .iter()
                    .find(|n| n.metadata.name.as_deref() == Some(name.as_str()))
                {
                    events
                        .record(
                            &n.object_ref(&()),
                            false,
                            "CIDRNotAvailable",
                            format!("Node {name} status is now: CIDRNotAvailable"),
                        )
                        .await;
                }
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str, cidr: Option<&str>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: cidr.map(String::from),
                pod_cidrs: cidr.map(|c| vec![c.to_string()]),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn subnets_and_indices() {
        let s = CidrSet::new("10.42.0.0/16", 24).unwrap();
        assert_eq!(s.len(), 256);
        assert_eq!(s.subnet(0).as_deref(), Some("10.42.0.0/24"));
        assert_eq!(s.subnet(5).as_deref(), Some("10.42.5.0/24"));
        assert_eq!(s.subnet(256), None);
        assert_eq!(s.index_of("10.42.7.0/24"), Some(7));
        assert_eq!(s.index_of("10.43.0.0/24"), None);
        assert_eq!(s.index_of("10.42.7.0/25"), None);
        assert_eq!(s.index_of("10.42.7.1/24"), None);
        let s26 = CidrSet::new("10.0.0.0/24", 26).unwrap();
        assert_eq!(s26.subnet(3).as_deref(), Some("10.0.0.192/26"));
        assert!(CidrSet::new("10.0.0.0/24", 16).is_none());
        assert!(CidrSet::new("nonsense", 24).is_none());
        assert!(CidrSet::new("10.0.0.0/24", 33).is_none());
        let v6 = CidrSet::new("fd00:42::/56", 64).unwrap();
        assert_eq!(v6.len(), 256);
        assert_eq!(v6.subnet(1).as_deref(), Some("fd00:42:0:1::/64"));
        assert_eq!(v6.index_of("fd00:42:0:9::/64"), Some(9));
    }

    #[test]
    fn allocation_skips_used_and_reuses_freed() {
        let s = CidrSet::new("10.42.0.0/16", 24).unwrap();
        let a = node("a", Some("10.42.0.0/24"));
        let b = node("b", Some("10.42.2.0/24"));
        let c = node("c", None);
        let d = node("d", None);
        let p = plan(&s, &[&a, &b, &c, &d], &HashMap::new());
        assert_eq!(
            p,
            vec![
                ("c".into(), Some("10.42.1.0/24".into())),
                ("d".into(), Some("10.42.3.0/24".into()))
            ]
        );
        // Node a deleted: its range is free again.
        let p = plan(&s, &[&b, &c], &HashMap::new());
        assert_eq!(p, vec![("c".into(), Some("10.42.0.0/24".into()))]);
        // A pending allocation is not handed out twice.
        let e = node("e", None);
        let pending: HashMap<String, u64> = [("c".to_string(), 0u64)].into();
        let p = plan(&s, &[&b, &c, &e], &pending);
        assert_eq!(
            p,
            vec![
                ("c".into(), Some("10.42.0.0/24".into())),
                ("e".into(), Some("10.42.1.0/24".into()))
            ]
        );
    }

    #[test]
    fn exhaustion() {
        let s = CidrSet::new("10.0.0.0/24", 25).unwrap();
        let a = node("a", None);
        let b = node("b", None);
        let c = node("c", None);
        let p = plan(&s, &[&a, &b, &c], &HashMap::new());
        assert_eq!(p[2], ("c".into(), None));
        assert_eq!(p[1], ("b".into(), Some("10.0.0.128/25".into())));
    }
}
