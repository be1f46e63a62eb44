//! ServiceLB, built in (k3s's `pkg/cloudprovider/servicelb.go`, klipper-lb, without the
//! svclb pods): every Service of `type: LoadBalancer` without a `loadBalancerClass` gets
//! in `status.loadBalancer.ingress` the addresses of the nodes that serve it; the proxy of
//! each node then answers on those addresses.
//!
//! Which nodes serve a Service is decided exactly as k3s's svclb DaemonSet would place and
//! ready its pods, computed here instead of running them:
//! - node selection: when ANY node carries the label `svccontroller.k3s.cattle.io/enablelb`
//!   (whatever its value), only nodes with `enablelb=true` are used, and a Service labelled
//!   `svccontroller.k3s.cattle.io/lbpool=<pool>` only uses nodes with the same label; with
//!   no node labelled, every node is used (and `lbpool` is ignored, as in k3s);
//! - taints: the svclb pod tolerates what k3s gives it (`node-role.kubernetes.io/master`
//!   and `.../control-plane` NoSchedule, `CriticalAddonsOnly`) plus the DaemonSet
//!   defaults (so a cordoned node still serves); any other NoSchedule/NoExecute taint
//!   keeps the node out;
//! - host ports: an svclb pod binds every Service port as a host port, so on one node a
//!   `(protocol, port)` belongs to the first Service (by creation time, then
//!   namespace/name) that claims it there; a later Service wanting it does not run on that
//!   node (k3s: its pod stays Pending and the LoadBalancer stays pending when no node is
//!   left);
//! - readiness: only nodes whose Ready condition is True (pods of other nodes are not
//!   ready); with `externalTrafficPolicy: Local` only nodes with a ready Pod endpoint of
//!   the Service in its EndpointSlices.
//!
//! The addresses: the ExternalIPs of those nodes if ANY of them has one, else their
//! InternalIPs; per family in the order of `spec.ipFamilies`, each family sorted (k3s's
//! `podIPs` + `filterByIPFamily`). Entries carry `ipMode: VIP` (what the API server
//! defaults them to upstream).
//!
//! Invariants: the status is written through the `/status` subresource only when it
//! differs (guarded by the Service's resourceVersion), with k3s's Events
//! (`UpdatedLoadBalancer` / `UnAvailableLoadBalancer`); a Service with a foreign
//! `loadBalancerClass` or being deleted is never touched; a Service that stopped being a
//! LoadBalancer has its ingress cleared (`DeletedLoadBalancer`, as the cloud service
//! controller). Two Services never get the same node address for the same port and
//! protocol.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    LoadBalancerIngress, Node, PodSpec, PodTemplateSpec, Service, Toleration,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;

use crate::endpoints::{key_of, service_ref};
use crate::endpointslice::SERVICE_NAME_LABEL;
use crate::informers::{Change, Index, SharedInformers};
use crate::workload_util::{is_conflict, is_not_found, Events, PlannedEvent};
use crate::ControllerError;
use rk3s_runtime::{run_controller, Action, Trigger, WorkQueue};

/// Node label that opts nodes in (k3s): once any node has it, only `=true` nodes serve.
pub const ENABLE_LB_LABEL: &str = "svccontroller.k3s.cattle.io/enablelb";
/// Node and Service label naming a pool of nodes (k3s): a labelled Service only uses
/// nodes of its pool (when node selection is on).
pub const LB_POOL_LABEL: &str = "svccontroller.k3s.cattle.io/lbpool";
/// The component Events are reported as (k3s's recorder: the cloud service controller's
/// client name).
pub const EVENT_COMPONENT: &str = "service-controller";
/// Event reason when the ingress addresses changed.
pub const REASON_UPDATED: &str = "UpdatedLoadBalancer";
/// Event reason (Warning) when no node serves the Service any more.
pub const REASON_UNAVAILABLE: &str = "UnAvailableLoadBalancer";
/// Event reason when the ingress of a Service that is no LoadBalancer any more is cleared.
pub const REASON_DELETED: &str = "DeletedLoadBalancer";
/// The `ipMode` of the ingress entries.
pub const IP_MODE_VIP: &str = "VIP";

/// Whether ServiceLB provides the load balancer of a Service (upstream's
/// `wantsLoadBalancer`: type LoadBalancer without a `loadBalancerClass`), and it is not
/// being deleted.
pub fn wants_load_balancer(svc: &Service) -> bool {
    let Some(spec) = svc.spec.as_ref() else {
        return false;
    };
    spec.type_.as_deref() == Some("LoadBalancer")
        && spec.load_balancer_class.is_none()
        && svc.metadata.deletion_timestamp.is_none()
}

fn is_load_balancer(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
}

fn current_ingress(svc: &Service) -> &[LoadBalancerIngress] {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_deref())
        .unwrap_or(&[])
}

/// Whether node selection is on: some node carries the `enablelb` label.
pub fn node_selection_enabled<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> bool {
    nodes.into_iter().any(|n| {
        n.metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(ENABLE_LB_LABEL))
    })
}

/// The node selector k3s gives a Service's svclb pods: none, or `enablelb=true` plus the
/// Service's `lbpool` when node selection is on.
pub fn svclb_node_selector(svc: &Service, selection_enabled: bool) -> BTreeMap<String, String> {
    let mut sel = BTreeMap::new();
    if selection_enabled {
        sel.insert(ENABLE_LB_LABEL.to_string(), "true".to_string());
        if let Some(pool) = svc
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LB_POOL_LABEL))
            .filter(|p| !p.is_empty())
        {
            sel.insert(LB_POOL_LABEL.to_string(), pool.clone());
        }
    }
    sel
}

/// The tolerations k3s puts on svclb pods (the DaemonSet defaults come on top).
pub fn svclb_tolerations() -> Vec<Toleration> {
    let t = |key: &str, effect: Option<&str>| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: effect.map(String::from),
        ..Default::default()
    };
    vec![
        t("node-role.kubernetes.io/master", Some("NoSchedule")),
        t("node-role.kubernetes.io/control-plane", Some("NoSchedule")),
        t("CriticalAddonsOnly", None),
    ]
}

/// Whether a Service's svclb pod would run on a node (selector and taints, as the
/// DaemonSet controller decides).
pub fn svclb_runs_on(node: &Node, node_selector: &BTreeMap<String, String>) -> bool {
    let template = PodTemplateSpec {
        metadata: None,
        spec: Some(PodSpec {
            node_selector: Some(node_selector.clone()),
            tolerations: Some(svclb_tolerations()),
            ..Default::default()
        }),
    };
    crate::daemonset::node_should_run(node, &template).0
}

/// The host ports a Service's svclb pod binds: `(protocol, port)` of every Service port.
pub fn host_ports(svc: &Service) -> Vec<(String, i32)> {
    let mut v: Vec<(String, i32)> = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .map(|p| (p.protocol.clone().unwrap_or_else(|| "TCP".into()), p.port))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The order in which Services claim host ports: creation time, then namespace/name.
fn claim_order(svc: &Service) -> (Option<jiff::Timestamp>, String) {
    (
        svc.metadata.creation_timestamp.as_ref().map(|t| t.0),
        key_of(&svc.metadata),
    )
}

/// Where the svclb pod of every ServiceLB Service would run (`namespace/name` -> node
/// names): nodes matching its selector whose taints it tolerates, where none of its host
/// ports is taken by a Service that claimed it earlier.
pub fn place(services: &[&Service], nodes: &[&Node]) -> HashMap<String, BTreeSet<String>> {
    let selection = node_selection_enabled(nodes.iter().copied());
    let mut lbs: Vec<&Service> = services
        .iter()
        .copied()
        .filter(|s| wants_load_balancer(s))
        .collect();
    lbs.sort_by_key(|s| claim_order(s));
    let mut taken: HashMap<&str, HashSet<(String, i32)>> = HashMap::new();
    let mut out = HashMap::new();
    for svc in lbs {
        let selector = svclb_node_selector(svc, selection);
        let ports = host_ports(svc);
        let mut on = BTreeSet::new();
        for node in nodes {
            let Some(name) = node.metadata.name.as_deref() else {
                continue;
            };
            if !svclb_runs_on(node, &selector) {
                continue;
            }
            let used = taken.entry(name).or_default();
            if ports.iter().any(|p| used.contains(p)) {
                continue;
            }
            used.extend(ports.iter().cloned());
            on.insert(name.to_string());
        }
        out.insert(key_of(&svc.metadata), on);
    }
    out
}

/// Whether a node's Ready condition is True.
pub fn node_ready(node: &Node) -> bool {
    crate::nodelifecycle::ready_status(node) == Some("True")
}

/// Whether a Service sends external traffic only to node-local endpoints.
pub fn requests_only_local_traffic(svc: &Service) -> bool {
    let Some(spec) = svc.spec.as_ref() else {
        return false;
    };
    matches!(spec.type_.as_deref(), Some("LoadBalancer" | "NodePort"))
        && spec.external_traffic_policy.as_deref() == Some("Local")
}

/// The nodes with a ready Pod endpoint in these EndpointSlices.
pub fn nodes_with_ready_endpoints(slices: &[&EndpointSlice]) -> BTreeSet<String> {
    slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.target_ref.as_ref().and_then(|r| r.kind.as_deref()) == Some("Pod"))
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .filter_map(|e| e.node_name.clone())
        .collect()
}

/// The ingress addresses of serving `nodes`: their ExternalIPs if any has one, else
/// their InternalIPs; IPv4 and IPv6 each sorted, in the order of `spec.ipFamilies`
/// (IPv4 when unset).
pub fn ingress_ips(svc: &Service, nodes: &[&Node]) -> Vec<String> {
    let mut external: BTreeSet<String> = BTreeSet::new();
    let mut internal: BTreeSet<String> = BTreeSet::new();
    for n in nodes {
        for a in n
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
        {
            match a.type_.as_str() {
                "ExternalIP" => external.insert(a.address.clone()),
                "InternalIP" => internal.insert(a.address.clone()),
                _ => false,
            };
        }
    }
    let chosen = if external.is_empty() {
        internal
    } else {
        external
    };
    // BTreeSet order is byte order: Go's sort.Strings.
    let (v4, v6): (Vec<String>, Vec<String>) = chosen
        .into_iter()
        .filter(|a| a.parse::<IpAddr>().is_ok())
        .partition(|a| a.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv4()));
    let families: Vec<String> = svc
        .spec
        .as_ref()
        .and_then(|s| s.ip_families.clone())
        .filter(|f| !f.is_empty())
        .unwrap_or_else(|| vec!["IPv4".into()]);
    let mut out = Vec::new();
    for f in families {
        match f.as_str() {
            "IPv4" => out.extend(v4.iter().cloned()),
            "IPv6" => out.extend(v6.iter().cloned()),
            _ => {}
        }
    }
    out
}

/// The ingress entries of a ServiceLB Service: one `{ip, ipMode: VIP}` per address of
/// the nodes that serve it.
pub fn desired_ingress(
    svc: &Service,
    placed_on: &BTreeSet<String>,
    nodes: &[&Node],
    slices: &[&EndpointSlice],
) -> Vec<LoadBalancerIngress> {
    let local = requests_only_local_traffic(svc).then(|| nodes_with_ready_endpoints(slices));
    let serving: Vec<&Node> = nodes
        .iter()
        .copied()
        .filter(|n| {
            n.metadata.name.as_ref().is_some_and(|name| {
                placed_on.contains(name) && local.as_ref().is_none_or(|l| l.contains(name))
            })
        })
        .filter(|n| node_ready(n))
        .collect();
    ingress_ips(svc, &serving)
        .into_iter()
        .map(|ip| LoadBalancerIngress {
            ip: Some(ip),
            ip_mode: Some(IP_MODE_VIP.into()),
            ..Default::default()
        })
        .collect()
}

/// Whether two ingress lists are the same (order matters; an unset `ipMode` of an IP
/// entry is `VIP`, as the API server defaults it).
pub fn ingress_equal(a: &[LoadBalancerIngress], b: &[LoadBalancerIngress]) -> bool {
    fn norm(
        i: &LoadBalancerIngress,
    ) -> (
        &str,
        &str,
        Option<&str>,
        &[k8s_openapi::api::core::v1::PortStatus],
    ) {
        let ip = i.ip.as_deref().unwrap_or("");
        let mode = i
            .ip_mode
            .as_deref()
            .or((!ip.is_empty()).then_some(IP_MODE_VIP));
        (
            ip,
            i.hostname.as_deref().unwrap_or(""),
            mode,
            i.ports.as_deref().unwrap_or(&[]),
        )
    }
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| norm(x) == norm(y))
}

/// An ingress list as k3s prints it in Events (Go's `%v` of the IPs or hostnames).
pub fn ingress_to_string(ingress: &[LoadBalancerIngress]) -> String {
    let parts: Vec<&str> = ingress
        .iter()
        .map(|i| {
            i.ip.as_deref()
                .filter(|s| !s.is_empty())
                .or(i.hostname.as_deref())
                .unwrap_or("")
        })
        .collect();
    format!("[{}]", parts.join(" "))
}

/// A status write decided by [`plan`].
#[derive(Clone, Debug, PartialEq)]
pub struct StatusUpdate {
    /// The new `status.loadBalancer.ingress` (empty: cleared).
    pub ingress: Vec<LoadBalancerIngress>,
    /// The Event to record once written.
    pub event: PlannedEvent,
}

/// What to write to a Service's status, given every Service, Node and the Service's
/// EndpointSlices; `None` when nothing changes or the Service is not ours.
pub fn plan(
    svc: &Service,
    services: &[&Service],
    nodes: &[&Node],
    slices: &[&EndpointSlice],
) -> Option<StatusUpdate> {
    let current = current_ingress(svc);
    if !is_load_balancer(svc) {
        // No load balancer any more: its addresses go (as the cloud service controller).
        return (!current.is_empty()).then(|| StatusUpdate {
            ingress: Vec::new(),
            event: PlannedEvent::normal(REASON_DELETED, "Deleted load balancer"),
        });
    }
    if !wants_load_balancer(svc) {
        return None;
    }
    let key = key_of(&svc.metadata);
    let mut placement = place(services, nodes);
    let placed_on = placement.remove(&key).unwrap_or_default();
    let desired = desired_ingress(svc, &placed_on, nodes, slices);
    if ingress_equal(current, &desired) {
        return None;
    }
    let event = if desired.is_empty() {
        PlannedEvent::warning(
            REASON_UNAVAILABLE,
            "There are no available nodes for LoadBalancer",
        )
    } else {
        PlannedEvent::normal(
            REASON_UPDATED,
            format!(
                "Updated LoadBalancer with new IPs: {} -> {}",
                ingress_to_string(current),
                ingress_to_string(&desired)
            ),
        )
    };
    Some(StatusUpdate {
        ingress: desired,
        event,
    })
}

/// Index function: the `namespace/service` of any EndpointSlice (by its
/// `kubernetes.io/service-name` label, whoever manages it).
pub fn slices_by_service_name(s: &EndpointSlice) -> Vec<String> {
    s.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .map(|svc| {
            format!(
                "{}/{}",
                s.metadata.namespace.as_deref().unwrap_or_default(),
                svc
            )
        })
        .into_iter()
        .collect()
}

/// What of a Service matters to the placement of the others (its host-port claims and
/// pool); empty for Services ServiceLB does not serve.
fn claim_fingerprint(svc: &Service) -> String {
    if !wants_load_balancer(svc) {
        return String::new();
    }
    let pool = svc
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LB_POOL_LABEL));
    json!([
        claim_order(svc).0.map(|t| t.to_string()),
        host_ports(svc),
        pool
    ])
    .to_string()
}

/// What of a Node matters here: labels, taints, unschedulable, Ready, deletion (as for
/// DaemonSets) and its addresses. Heartbeats change none of it.
fn node_fingerprint(node: &Node) -> String {
    let addrs = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    format!(
        "{}{}",
        crate::daemonset::node_fingerprint(node),
        json!(addrs)
    )
}

/// Whether a Service may need a status write when nodes or other Services change.
fn concerned(svc: &Service) -> bool {
    wants_load_balancer(svc) || (!is_load_balancer(svc) && !current_ingress(svc).is_empty())
}

/// The keys of the Services that may need a status write ([`concerned`]).
fn concerned_keys(services: &Store<Service>) -> Vec<String> {
    services
        .state()
        .iter()
        .filter(|s| concerned(s))
        .map(|s| key_of(&s.metadata))
        .collect()
}

struct Ctx {
    client: kube::Client,
    services: Store<Service>,
    nodes: Store<Node>,
    slices_by_service: Arc<Index<EndpointSlice>>,
    events: Events,
}

/// Brings the status of the Service `ns/name` up to date.
async fn sync(ctx: &Ctx, key: &str) -> Result<Option<Duration>, ControllerError> {
    let (ns, name) = key.split_once('/').unwrap_or(("", key));
    let Some(svc) = ctx.services.get(&ObjectRef::new(name).within(ns)) else {
        return Ok(None);
    };
    let services = ctx.services.state();
    let nodes = ctx.nodes.state();
    let slices = ctx.slices_by_service.get(key);
    let update = {
        let services: Vec<&Service> = services.iter().map(|s| s.as_ref()).collect();
        let nodes: Vec<&Node> = nodes.iter().map(|n| n.as_ref()).collect();
        let slices: Vec<&EndpointSlice> = slices.iter().map(|s| s.as_ref()).collect();
        plan(&svc, &services, &nodes, &slices)
    };
    let Some(update) = update else {
        return Ok(None);
    };
    let ingress = if update.ingress.is_empty() {
        serde_json::Value::Null
    } else {
        json!(update.ingress)
    };
    let mut patch = json!({"status": {"loadBalancer": {"ingress": ingress}}});
    if let Some(rv) = &svc.metadata.resource_version {
        // Decided from this version: a newer one is looked at again.
        patch["metadata"] = json!({"resourceVersion": rv});
    }
    let api: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {}
        Err(e) if is_not_found(&e) => return Ok(None),
        Err(e) if is_conflict(&e) => return Ok(Some(Duration::from_millis(100))),
        Err(e) => return Err(e.into()),
    }
    tracing::info!(service = %key, ingress = %ingress_to_string(&update.ingress), "servicelb: updated LoadBalancer status");
    ctx.events
        .record(
            &service_ref(&svc),
            update.event.warning,
            &update.event.reason,
            update.event.message,
        )
        .await;
    Ok(None)
}

/// Runs ServiceLB forever: a work queue of Service keys fed by Service changes (all
/// LoadBalancer Services when one's host-port claims or pool change), EndpointSlice
/// changes (their Service) and Node changes that matter (all LoadBalancer Services).
pub async fn run(client: kube::Client, informers: SharedInformers) -> Result<(), ControllerError> {
    // Subscribe before reading the stores: no change after the first list is missed.
    let svc_changes = informers.changes::<Service>();
    let node_changes = informers.changes::<Node>();
    let slice_changes = informers.subscribe::<EndpointSlice>();
    let services = informers.store::<Service>().await;
    let nodes = informers.store::<Node>().await;
    let slices_by_service = informers
        .index::<EndpointSlice>(slices_by_service_name)
        .await;
    let queue: WorkQueue<String> = WorkQueue::new();
    for k in concerned_keys(&services) {
        queue.add(k);
    }
    let mut claims: HashMap<String, String> = services
        .state()
        .iter()
        .map(|s| (key_of(&s.metadata), claim_fingerprint(s)))
        .collect();
    let mut node_fps: HashMap<String, String> = nodes
        .state()
        .iter()
        .map(|n| {
            (
                n.metadata.name.clone().unwrap_or_default(),
                node_fingerprint(n),
            )
        })
        .collect();
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        services: services.clone(),
        nodes,
        slices_by_service,
        events: Events::new(client, EVENT_COMPONENT),
    });
    let (services1, services2) = (services.clone(), services);
    let triggers = vec![
        Trigger::map(svc_changes, move |c: Change<Service>| {
            let mut keys = Vec::new();
            let (changed, claims_changed): (Vec<Arc<Service>>, bool) = match c {
                Change::Applied(s) => {
                    let fp = claim_fingerprint(&s);
                    let moved = claims
                        .insert(key_of(&s.metadata), fp.clone())
                        .unwrap_or_default()
                        != fp;
                    (vec![s], moved)
                }
                Change::Deleted(s) => (
                    Vec::new(),
                    claims
                        .remove(&key_of(&s.metadata))
                        .is_some_and(|fp| !fp.is_empty()),
                ),
                Change::Resync(all) => {
                    let now: HashMap<String, String> = all
                        .iter()
                        .map(|s| (key_of(&s.metadata), claim_fingerprint(s)))
                        .collect();
                    let moved = now != claims;
                    claims = now;
                    (all, moved)
                }
            };
            keys.extend(changed.iter().map(|s| key_of(&s.metadata)));
            if claims_changed {
                // Host ports freed or taken: the placement of the others may move.
                keys.extend(concerned_keys(&services1));
            }
            keys
        }),
        Trigger::map(node_changes, move |c: Change<Node>| {
            let changed = match c {
                Change::Applied(n) => {
                    let fp = node_fingerprint(&n);
                    node_fps
                        .insert(n.metadata.name.clone().unwrap_or_default(), fp.clone())
                        .is_none_or(|old| old != fp)
                }
                Change::Deleted(n) => node_fps
                    .remove(n.metadata.name.as_deref().unwrap_or_default())
                    .is_some(),
                Change::Resync(all) => {
                    let now: HashMap<String, String> = all
                        .iter()
                        .map(|n| {
                            (
                                n.metadata.name.clone().unwrap_or_default(),
                                node_fingerprint(n),
                            )
                        })
                        .collect();
                    let changed = now != node_fps;
                    node_fps = now;
                    changed
                }
            };
            if changed {
                concerned_keys(&services2)
            } else {
                Vec::new()
            }
        }),
        Trigger::map(slice_changes, |s: Arc<EndpointSlice>| {
            slices_by_service_name(&s)
        }),
    ];
    run_controller("servicelb", 2, queue, triggers, move |key: String| {
        let ctx = ctx.clone();
        async move { sync(&ctx, &key).await.map(Action::requeue_after) }
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        LoadBalancerStatus, NodeAddress, NodeCondition, NodeSpec, NodeStatus, ObjectReference,
        ServicePort, ServiceSpec, ServiceStatus, Taint,
    };
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn node(name: &str, ready: bool, addrs: &[(&str, &str)], labels: &[(&str, &str)]) -> Node {
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
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                addresses: Some(
                    addrs
                        .iter()
                        .map(|(t, a)| NodeAddress {
                            type_: t.to_string(),
                            address: a.to_string(),
                        })
                        .collect(),
                ),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn lb(name: &str, created: i64, ports: &[(i32, &str)]) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                creation_timestamp: Some(Time(jiff::Timestamp::from_second(created).unwrap())),
                resource_version: Some("1".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("LoadBalancer".into()),
                ip_families: Some(vec!["IPv4".into()]),
                external_traffic_policy: Some("Cluster".into()),
                ports: Some(
                    ports
                        .iter()
                        .map(|(p, proto)| ServicePort {
                            port: *p,
                            protocol: Some(proto.to_string()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn with_ingress(mut svc: Service, ips: &[&str], mode: Option<&str>) -> Service {
        svc.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(
                    ips.iter()
                        .map(|ip| LoadBalancerIngress {
                            ip: Some(ip.to_string()),
                            ip_mode: mode.map(String::from),
                            ..Default::default()
                        })
                        .collect(),
                ),
            }),
            ..Default::default()
        });
        svc
    }

    fn ips(ingress: &[LoadBalancerIngress]) -> Vec<String> {
        ingress
            .iter()
            .map(|i| i.ip.clone().unwrap_or_default())
            .collect()
    }

    fn status_of(
        svc: &Service,
        services: &[&Service],
        nodes: &[&Node],
        slices: &[&EndpointSlice],
    ) -> Vec<String> {
        let mut placement = place(services, nodes);
        ips(&desired_ingress(
            svc,
            &placement.remove(&key_of(&svc.metadata)).unwrap_or_default(),
            nodes,
            slices,
        ))
    }

    #[test]
    fn internal_ips_of_ready_nodes_sorted() {
        let a = node(
            "a",
            true,
            &[("InternalIP", "10.0.0.9"), ("Hostname", "a")],
            &[],
        );
        let b = node("b", true, &[("InternalIP", "10.0.0.10")], &[]);
        let c = node("c", false, &[("InternalIP", "10.0.0.2")], &[]);
        let svc = lb("web", 1, &[(80, "TCP")]);
        // String order, as k3s sorts.
        assert_eq!(
            status_of(&svc, &[&svc], &[&a, &b, &c], &[]),
            ["10.0.0.10", "10.0.0.9"]
        );
    }

    #[test]
    fn external_ips_win_over_internal_ips_across_nodes() {
        let a = node(
            "a",
            true,
            &[("InternalIP", "10.0.0.1"), ("ExternalIP", "203.0.113.1")],
            &[],
        );
        let b = node("b", true, &[("InternalIP", "10.0.0.2")], &[]);
        let svc = lb("web", 1, &[(80, "TCP")]);
        // k3s: once any serving node has an ExternalIP, only ExternalIPs are listed.
        assert_eq!(status_of(&svc, &[&svc], &[&a, &b], &[]), ["203.0.113.1"]);
        assert_eq!(status_of(&svc, &[&svc], &[&b], &[]), ["10.0.0.2"]);
    }

    #[test]
    fn ip_families_filter_and_order() {
        let a = node(
            "a",
            true,
            &[("InternalIP", "10.0.0.1"), ("InternalIP", "fd00::1")],
            &[],
        );
        let mut svc = lb("web", 1, &[(80, "TCP")]);
        assert_eq!(status_of(&svc, &[&svc], &[&a], &[]), ["10.0.0.1"]);
        svc.spec.as_mut().unwrap().ip_families = Some(vec!["IPv6".into(), "IPv4".into()]);
        assert_eq!(
            status_of(&svc, &[&svc], &[&a], &[]),
            ["fd00::1", "10.0.0.1"]
        );
    }

    #[test]
    fn enablelb_label_restricts_nodes_once_any_node_has_it() {
        let a = node(
            "a",
            true,
            &[("InternalIP", "10.0.0.1")],
            &[(ENABLE_LB_LABEL, "true")],
        );
        let b = node("b", true, &[("InternalIP", "10.0.0.2")], &[]);
        let c = node(
            "c",
            true,
            &[("InternalIP", "10.0.0.3")],
            &[(ENABLE_LB_LABEL, "false")],
        );
        let svc = lb("web", 1, &[(80, "TCP")]);
        assert_eq!(status_of(&svc, &[&svc], &[&a, &b, &c], &[]), ["10.0.0.1"]);
        // Only "false" labels: selection is on and no node qualifies.
        assert!(status_of(&svc, &[&svc], &[&b, &c], &[]).is_empty());
        // No label anywhere: every node.
        assert_eq!(status_of(&svc, &[&svc], &[&b], &[]), ["10.0.0.2"]);
    }

    #[test]
    fn lbpool_label_selects_the_pool_only_with_node_selection_on() {
        let a = node(
            "a",
            true,
            &[("InternalIP", "10.0.0.1")],
            &[(ENABLE_LB_LABEL, "true"), (LB_POOL_LABEL, "blue")],
        );
        let b = node(
            "b",
            true,
            &[("InternalIP", "10.0.0.2")],
            &[(ENABLE_LB_LABEL, "true"), (LB_POOL_LABEL, "green")],
        );
        let mut svc = lb("web", 1, &[(80, "TCP")]);
        svc.metadata.labels = Some([(LB_POOL_LABEL.to_string(), "green".to_string())].into());
        assert_eq!(status_of(&svc, &[&svc], &[&a, &b], &[]), ["10.0.0.2"]);
        let plain = lb("other", 2, &[(81, "TCP")]);
        assert_eq!(
            status_of(&plain, &[&svc, &plain], &[&a, &b], &[]),
            ["10.0.0.1", "10.0.0.2"]
        );
        // Without any enablelb label the pool label is ignored (k3s adds no selector).
        let a2 = node(
            "a",
            true,
            &[("InternalIP", "10.0.0.1")],
            &[(LB_POOL_LABEL, "blue")],
        );
        assert_eq!(status_of(&svc, &[&svc], &[&a2], &[]), ["10.0.0.1"]);
    }

    #[test]
    fn taints_exclude_nodes_but_cordon_and_control_plane_do_not() {
        let mut tainted = node("t", true, &[("InternalIP", "10.0.0.1")], &[]);
        tainted.spec.as_mut().unwrap().taints = Some(vec![Taint {
            key: "dedicated".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        }]);
        let mut cordoned = node("c", true, &[("InternalIP", "10.0.0.2")], &[]);
        cordoned.spec.as_mut().unwrap().unschedulable = Some(true);
        cordoned.spec.as_mut().unwrap().taints = Some(vec![Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        }]);
        let mut cp = node("cp", true, &[("InternalIP", "10.0.0.3")], &[]);
        cp.spec.as_mut().unwrap().taints = Some(vec![
            Taint {
                key: "node-role.kubernetes.io/control-plane".into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            },
            Taint {
                key: "CriticalAddonsOnly".into(),
                value: Some("true".into()),
                effect: "NoExecute".into(),
                ..Default::default()
            },
        ]);
        let svc = lb("web", 1, &[(80, "TCP")]);
        assert_eq!(
            status_of(&svc, &[&svc], &[&tainted, &cordoned, &cp], &[]),
            ["10.0.0.2", "10.0.0.3"]
        );
    }

    #[test]
    fn host_ports_go_to_the_first_service() {
        let a = node("a", true, &[("InternalIP", "10.0.0.1")], &[]);
        let first = lb("first", 1, &[(80, "TCP")]);
        let second = lb("second", 2, &[(80, "TCP"), (443, "TCP")]);
        let third = lb("third", 3, &[(443, "TCP")]);
        let udp = lb("udp", 4, &[(80, "UDP")]);
        let all = [&first, &second, &third, &udp];
        let nodes = [&a];
        assert_eq!(status_of(&first, &all, &nodes, &[]), ["10.0.0.1"]);
        // 80/TCP is taken: the second stays pending and so claims no 443 either.
        assert!(status_of(&second, &all, &nodes, &[]).is_empty());
        assert_eq!(status_of(&third, &all, &nodes, &[]), ["10.0.0.1"]);
        assert_eq!(
            status_of(&udp, &all, &nodes, &[]),
            ["10.0.0.1"],
            "another protocol does not conflict"
        );
        // A foreign class claims nothing.
        let mut foreign = lb("foreign", 0, &[(80, "TCP")]);
        foreign.spec.as_mut().unwrap().load_balancer_class = Some("example.com/lb".into());
        assert_eq!(
            status_of(&first, &[&foreign, &first], &nodes, &[]),
            ["10.0.0.1"]
        );
    }

    fn slice(eps: &[(&str, bool, &str)]) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some("web-x".into()),
                namespace: Some("default".into()),
                labels: Some([(SERVICE_NAME_LABEL.to_string(), "web".to_string())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: eps
                .iter()
                .map(|(node, ready, kind)| Endpoint {
                    addresses: vec!["10.42.0.5".into()],
                    conditions: Some(EndpointConditions {
                        ready: Some(*ready),
                        serving: Some(*ready),
                        terminating: Some(false),
                    }),
                    node_name: Some(node.to_string()),
                    target_ref: Some(ObjectReference {
                        kind: Some(kind.to_string()),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ports: None,
        }
    }

    #[test]
    fn external_traffic_policy_local_lists_nodes_with_ready_pods() {
        let a = node("a", true, &[("InternalIP", "10.0.0.1")], &[]);
        let b = node("b", true, &[("InternalIP", "10.0.0.2")], &[]);
        let c = node("c", true, &[("InternalIP", "10.0.0.3")], &[]);
        let mut svc = lb("web", 1, &[(80, "TCP")]);
        svc.spec.as_mut().unwrap().external_traffic_policy = Some("Local".into());
        let s = slice(&[("a", true, "Pod"), ("b", false, "Pod"), ("c", true, "Node")]);
        assert_eq!(status_of(&svc, &[&svc], &[&a, &b, &c], &[&s]), ["10.0.0.1"]);
        assert!(status_of(&svc, &[&svc], &[&a, &b, &c], &[]).is_empty());
        svc.spec.as_mut().unwrap().external_traffic_policy = Some("Cluster".into());
        assert_eq!(status_of(&svc, &[&svc], &[&a, &b, &c], &[&s]).len(), 3);
    }

    #[test]
    fn plan_writes_only_changes_with_k3s_events() {
        let a = node("a", true, &[("InternalIP", "10.0.0.1")], &[]);
        let b = node("b", true, &[("InternalIP", "10.0.0.2")], &[]);
        let svc = lb("web", 1, &[(80, "TCP")]);
        let u = plan(&svc, &[&svc], &[&a, &b], &[]).expect("a new LoadBalancer gets addresses");
        assert_eq!(ips(&u.ingress), ["10.0.0.1", "10.0.0.2"]);
        assert!(u
            .ingress
            .iter()
            .all(|i| i.ip_mode.as_deref() == Some("VIP")));
        assert_eq!(
            u.event,
            PlannedEvent::normal(
                "UpdatedLoadBalancer",
                "Updated LoadBalancer with new IPs: [] -> [10.0.0.1 10.0.0.2]"
            )
        );
        // Already there (ipMode defaulted or not): nothing to write.
        let done = with_ingress(svc.clone(), &["10.0.0.1", "10.0.0.2"], None);
        assert_eq!(plan(&done, &[&done], &[&a, &b], &[]), None);
        let done = with_ingress(svc.clone(), &["10.0.0.1", "10.0.0.2"], Some("VIP"));
        assert_eq!(plan(&done, &[&done], &[&a, &b], &[]), None);
        // A node gone.
        let u = plan(&done, &[&done], &[&a], &[]).unwrap();
        assert_eq!(
            u.event.message,
            "Updated LoadBalancer with new IPs: [10.0.0.1 10.0.0.2] -> [10.0.0.1]"
        );
        // No node left: cleared with a Warning.
        let a_down = node("a", false, &[("InternalIP", "10.0.0.1")], &[]);
        let u = plan(&done, &[&done], &[&a_down], &[]).unwrap();
        assert!(u.ingress.is_empty());
        assert_eq!(
            u.event,
            PlannedEvent::warning(
                "UnAvailableLoadBalancer",
                "There are no available nodes for LoadBalancer"
            )
        );
        // Never had addresses and still none: nothing.
        assert_eq!(plan(&svc, &[&svc], &[&a_down], &[]), None);
    }

    #[test]
    fn plan_leaves_foreign_classes_and_clears_former_load_balancers() {
        let a = node("a", true, &[("InternalIP", "10.0.0.1")], &[]);
        let mut foreign = with_ingress(lb("web", 1, &[(80, "TCP")]), &["198.51.100.7"], None);
        foreign.spec.as_mut().unwrap().load_balancer_class = Some("example.com/lb".into());
        assert_eq!(plan(&foreign, &[&foreign], &[&a], &[]), None);
        let mut deleting = lb("web", 1, &[(80, "TCP")]);
        deleting.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
        assert_eq!(plan(&deleting, &[&deleting], &[&a], &[]), None);
        let mut former = with_ingress(lb("web", 1, &[(80, "TCP")]), &["10.0.0.1"], None);
        former.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
        let u = plan(&former, &[&former], &[&a], &[]).unwrap();
        assert!(u.ingress.is_empty());
        assert_eq!(u.event.reason, "DeletedLoadBalancer");
        let mut plain = lb("web", 1, &[(80, "TCP")]);
        plain.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
        assert_eq!(plan(&plain, &[&plain], &[&a], &[]), None);
    }

    #[test]
    fn fingerprints_ignore_heartbeats_and_status() {
        let a = node("a", true, &[("InternalIP", "10.0.0.1")], &[]);
        let mut beat = a.clone();
        beat.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].last_heartbeat_time =
            Some(Time(jiff::Timestamp::now()));
        assert_eq!(node_fingerprint(&a), node_fingerprint(&beat));
        let moved = node("a", true, &[("InternalIP", "10.0.0.2")], &[]);
        assert_ne!(node_fingerprint(&a), node_fingerprint(&moved));
        let svc = lb("web", 1, &[(80, "TCP")]);
        assert_eq!(
            claim_fingerprint(&svc),
            claim_fingerprint(&with_ingress(svc.clone(), &["10.0.0.1"], None))
        );
        assert_ne!(
            claim_fingerprint(&svc),
            claim_fingerprint(&lb("web", 1, &[(81, "TCP")]))
        );
        let mut cip = svc.clone();
        cip.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
        assert_eq!(claim_fingerprint(&cip), "");
    }

    #[test]
    fn ingress_strings_as_go_prints_them() {
        assert_eq!(ingress_to_string(&[]), "[]");
        let i = vec![
            LoadBalancerIngress {
                hostname: Some("lb.example.com".into()),
                ..Default::default()
            },
            LoadBalancerIngress {
                ip: Some("10.0.0.1".into()),
                ..Default::default()
            },
        ];
        assert_eq!(ingress_to_string(&i), "[lb.example.com 10.0.0.1]");
    }
}
