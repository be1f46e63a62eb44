//! The cluster DNS Service and its endpoints. rk3s answers DNS inside the rk3s process of
//! every node, on the node's own address, port 53; this controller publishes that as k3s
//! publishes CoreDNS, so tools that look for `kube-system/kube-dns` find it:
//! - the Service `kube-system/kube-dns` with k3s's labels and annotations, `clusterIP` =
//!   the cluster DNS address, ports `dns` 53/UDP and `dns-tcp` 53/TCP (no `metrics`: we do
//!   not serve it), NO selector, and `internalTrafficPolicy: Local` so that each node's
//!   proxy sends a pod's queries to its own node; created when missing, its ports, type,
//!   traffic policy, selector, labels and annotations repaired when changed, re-created
//!   when its ClusterIP is not the configured one (it is immutable);
//! - ONE EndpointSlice `kube-system/kube-dns-rk3s` (managed-by `cluster-dns.rk3s.io`,
//!   owned by the Service) with one endpoint per node: the node's first InternalIP of the
//!   DNS address's family, `nodeName`, the node's zone, ready = serving = the node's Ready
//!   condition is True, terminating = false; written only when it differs.
//!
//! The EndpointSlice controller leaves both alone: it manages only Services with a
//! selector and only slices managed by `endpointslice-controller.k8s.io`.
//!
//! Disabled (`--disable coredns`: no [`ClusterDnsOptions`]) nothing is created, and what
//! this controller made before is removed so that a user's own DNS can take its place:
//! the slice it manages, and the Service if it still carries this controller's
//! annotation and has no selector (a user's Service, which has one, is never deleted).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::{json, Value};

use crate::endpointslice::{MANAGED_BY_LABEL, SERVICE_NAME_LABEL, ZONE_LABEL};
use crate::informers::{Change, SharedInformers};
use crate::workload_util::{ignore_not_found, is_conflict, is_not_found};
use crate::ControllerError;
use rk3s_runtime::{run_controller, Action, Trigger, WorkQueue};

/// Namespace of the DNS Service and its slice.
pub const NAMESPACE: &str = "kube-system";
/// Name of the DNS Service.
pub const SERVICE_NAME: &str = "kube-dns";
/// Name of the one EndpointSlice listing every node's DNS server.
pub const SLICE_NAME: &str = "kube-dns-rk3s";
/// `endpointslice.kubernetes.io/managed-by` of that slice, and the value of
/// [`MANAGED_ANNOTATION`] on the Service.
pub const MANAGED_BY: &str = "cluster-dns.rk3s.io";
/// Annotation marking the Service as made by this controller (removed when disabled).
pub const MANAGED_ANNOTATION: &str = "rk3s.io/managed-by";
/// The DNS port.
pub const DNS_PORT: i32 = 53;

/// Settings of the cluster DNS (the binary's `--cluster-dns` / `--cluster-domain`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterDnsOptions {
    /// The ClusterIP of `kube-system/kube-dns` (k3s's default 10.43.0.10).
    pub ip: IpAddr,
    /// The cluster domain (e.g. `cluster.local`), served by the node DNS servers.
    pub domain: String,
}

fn family(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// The labels of the DNS Service (k3s's CoreDNS manifest).
pub fn service_labels() -> BTreeMap<String, String> {
    [
        ("k8s-app", "kube-dns"),
        ("kubernetes.io/cluster-service", "true"),
        ("kubernetes.io/name", "CoreDNS"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The annotations of the DNS Service: k3s's Prometheus ones and this controller's mark.
pub fn service_annotations() -> BTreeMap<String, String> {
    [
        ("prometheus.io/port", "9153"),
        ("prometheus.io/scrape", "true"),
        (MANAGED_ANNOTATION, MANAGED_BY),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The ports of the DNS Service: `dns` 53/UDP and `dns-tcp` 53/TCP.
pub fn service_ports() -> Vec<ServicePort> {
    [("dns", "UDP"), ("dns-tcp", "TCP")]
        .into_iter()
        .map(|(name, proto)| ServicePort {
            name: Some(name.into()),
            port: DNS_PORT,
            protocol: Some(proto.into()),
            target_port: Some(IntOrString::Int(DNS_PORT)),
            ..Default::default()
        })
        .collect()
}

/// The DNS Service as this controller creates it.
pub fn desired_service(opts: &ClusterDnsOptions) -> Service {
    let ip = opts.ip.to_string();
    Service {
        metadata: ObjectMeta {
            name: Some(SERVICE_NAME.into()),
            namespace: Some(NAMESPACE.into()),
            labels: Some(service_labels()),
            annotations: Some(service_annotations()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some(ip.clone()),
            cluster_ips: Some(vec![ip]),
            ip_families: Some(vec![family(&opts.ip).into()]),
            ip_family_policy: Some("SingleStack".into()),
            internal_traffic_policy: Some("Local".into()),
            session_affinity: Some("None".into()),
            ports: Some(service_ports()),
            selector: None,
            ..Default::default()
        }),
        status: None,
    }
}

/// What to do with the DNS Service.
#[derive(Clone, Debug, PartialEq)]
pub enum ServiceAction {
    /// It is as it should be.
    Keep,
    /// It is missing: create this.
    Create(Box<Service>),
    /// Repair it with this JSON merge patch.
    Patch(Value),
    /// Its ClusterIP is wrong (immutable): delete it (this UID), then create it again.
    Recreate(String),
    /// It is being deleted: wait.
    Wait,
}

/// A Service port as compared: name, port, protocol, target port (defaults applied).
fn port_key(
    p: &ServicePort,
) -> (
    String,
    i32,
    String,
    IntOrString,
    Option<i32>,
    Option<String>,
) {
    (
        p.name.clone().unwrap_or_default(),
        p.port,
        p.protocol.clone().unwrap_or_else(|| "TCP".into()),
        p.target_port
            .clone()
            .filter(|t| *t != IntOrString::Int(0) && *t != IntOrString::String(String::new()))
            .unwrap_or(IntOrString::Int(p.port)),
        p.node_port,
        p.app_protocol.clone(),
    )
}

fn has_all(have: Option<&BTreeMap<String, String>>, want: &BTreeMap<String, String>) -> bool {
    want.iter()
        .all(|(k, v)| have.and_then(|h| h.get(k)) == Some(v))
}

/// Decides what the existing DNS Service (from the cache) needs.
pub fn plan_service(existing: Option<&Service>, opts: &ClusterDnsOptions) -> ServiceAction {
    let Some(svc) = existing else {
        return ServiceAction::Create(Box::new(desired_service(opts)));
    };
    if svc.metadata.deletion_timestamp.is_some() {
        return ServiceAction::Wait;
    }
    let spec = svc.spec.clone().unwrap_or_default();
    let ip_ok = spec
        .cluster_ip
        .as_deref()
        .and_then(|ip| ip.parse::<IpAddr>().ok())
        == Some(opts.ip);
    if !ip_ok {
        return ServiceAction::Recreate(svc.metadata.uid.clone().unwrap_or_default());
    }
    let type_ok = spec.type_.as_deref().is_none_or(|t| t == "ClusterIP");
    let have_ports: Vec<_> = spec.ports.iter().flatten().map(port_key).collect();
    let want_ports: Vec<_> = service_ports().iter().map(port_key).collect();
    let ok = type_ok
        && have_ports == want_ports
        && spec.internal_traffic_policy.as_deref() == Some("Local")
        && spec.selector.as_ref().is_none_or(|s| s.is_empty())
        && has_all(svc.metadata.labels.as_ref(), &service_labels())
        && has_all(svc.metadata.annotations.as_ref(), &service_annotations());
    if ok {
        return ServiceAction::Keep;
    }
    let mut spec_patch = json!({"type": "ClusterIP", "ports": service_ports(), "internalTrafficPolicy": "Local", "selector": null});
    if !type_ok {
        // Fields only externally reachable Services may have.
        for f in [
            "externalTrafficPolicy",
            "healthCheckNodePort",
            "allocateLoadBalancerNodePorts",
            "loadBalancerClass",
            "loadBalancerIP",
            "loadBalancerSourceRanges",
            "externalName",
        ] {
            spec_patch[f] = Value::Null;
        }
    }
    let mut patch = json!({"metadata": {"labels": service_labels(), "annotations": service_annotations()}, "spec": spec_patch});
    if let Some(rv) = &svc.metadata.resource_version {
        patch["metadata"]["resourceVersion"] = json!(rv);
    }
    ServiceAction::Patch(patch)
}

fn node_is_ready(node: &Node) -> bool {
    crate::nodelifecycle::ready_status(node) == Some("True")
}

/// A node's endpoint of the DNS Service: its first InternalIP of `family` (`IPv4` or
/// `IPv6`), ready and serving when the node is Ready; `None` without such an address.
pub fn node_endpoint(node: &Node, family: &str) -> Option<Endpoint> {
    let name = node.metadata.name.clone()?;
    let address = node
        .status
        .as_ref()?
        .addresses
        .iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .find(|a| {
            a.address
                .parse::<IpAddr>()
                .is_ok_and(|ip| (family == "IPv4") == ip.is_ipv4())
        })?
        .address
        .clone();
    let ready = node_is_ready(node);
    Some(Endpoint {
        addresses: vec![address],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(ready),
            terminating: Some(false),
        }),
        node_name: Some(name),
        zone: node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(ZONE_LABEL))
            .cloned(),
        ..Default::default()
    })
}

/// The labels of the slice.
pub fn slice_labels() -> BTreeMap<String, String> {
    [
        (SERVICE_NAME_LABEL, SERVICE_NAME),
        (MANAGED_BY_LABEL, MANAGED_BY),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The ports of the slice: `dns` 53/UDP and `dns-tcp` 53/TCP.
pub fn slice_ports() -> Vec<EndpointPort> {
    [("dns", "UDP"), ("dns-tcp", "TCP")]
        .into_iter()
        .map(|(name, proto)| EndpointPort {
            name: Some(name.into()),
            port: Some(DNS_PORT),
            protocol: Some(proto.into()),
            app_protocol: None,
        })
        .collect()
}

/// The slice as it should be: one endpoint per node with an address of the DNS family
/// (sorted by node name), owned by the Service when it has a UID.
pub fn desired_slice(
    nodes: &[&Node],
    opts: &ClusterDnsOptions,
    svc: Option<&Service>,
) -> EndpointSlice {
    let fam = family(&opts.ip);
    let mut endpoints: Vec<Endpoint> = nodes.iter().filter_map(|n| node_endpoint(n, fam)).collect();
    endpoints.sort_by(|a, b| a.node_name.cmp(&b.node_name));
    let owner = svc.and_then(|s| {
        Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Service".into(),
            name: SERVICE_NAME.into(),
            uid: s.metadata.uid.clone().filter(|u| !u.is_empty())?,
            controller: Some(true),
            block_owner_deletion: Some(true),
        }])
    });
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(SLICE_NAME.into()),
            namespace: Some(NAMESPACE.into()),
            labels: Some(slice_labels()),
            owner_references: owner,
            ..Default::default()
        },
        address_type: fam.into(),
        endpoints,
        ports: Some(slice_ports()),
    }
}

/// What to do with the slice.
#[derive(Clone, Debug, PartialEq)]
pub enum SliceAction {
    /// It is as it should be.
    Keep,
    /// It is missing: create this.
    Create(Box<EndpointSlice>),
    /// Replace it with this (the existing object's metadata, our labels, endpoints,
    /// ports and owner).
    Replace(Box<EndpointSlice>),
    /// Its address type is wrong (immutable): delete it (this UID), then create it again.
    Recreate(String),
    /// It is being deleted: wait.
    Wait,
}

/// Decides what the existing slice (from the cache) needs to become `desired`.
pub fn plan_slice(existing: Option<&EndpointSlice>, desired: EndpointSlice) -> SliceAction {
    let Some(s) = existing else {
        return SliceAction::Create(Box::new(desired));
    };
    if s.metadata.deletion_timestamp.is_some() {
        return SliceAction::Wait;
    }
    if s.address_type != desired.address_type {
        return SliceAction::Recreate(s.metadata.uid.clone().unwrap_or_default());
    }
    let want_labels = desired.metadata.labels.clone().unwrap_or_default();
    let same = s.endpoints == desired.endpoints
        && s.ports == desired.ports
        && has_all(s.metadata.labels.as_ref(), &want_labels)
        && s.metadata.owner_references.as_deref().unwrap_or(&[])
            == desired.metadata.owner_references.as_deref().unwrap_or(&[]);
    if same {
        return SliceAction::Keep;
    }
    let mut next = s.clone();
    next.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .extend(want_labels);
    next.metadata.owner_references = desired.metadata.owner_references;
    next.endpoints = desired.endpoints;
    next.ports = desired.ports;
    SliceAction::Replace(Box::new(next))
}

/// What of a Node matters to the slice: name, Ready, addresses, zone.
fn node_fingerprint(node: &Node) -> String {
    let addrs = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    let zone = node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(ZONE_LABEL));
    json!([node_is_ready(node), addrs, zone]).to_string()
}

fn uid_precondition(uid: String) -> DeleteParams {
    DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid).filter(|u| !u.is_empty()),
            resource_version: None,
        }),
        ..Default::default()
    }
}

struct Ctx {
    opts: ClusterDnsOptions,
    services: Api<Service>,
    slices: Api<EndpointSlice>,
    service_cache: Store<Service>,
    slice_cache: Store<EndpointSlice>,
    nodes: Store<Node>,
}

/// One pass: the Service first (the slice is owned by it), then the slice.
async fn sync(ctx: &Ctx) -> Result<Option<Duration>, ControllerError> {
    let cached = ctx
        .service_cache
        .get(&ObjectRef::new(SERVICE_NAME).within(NAMESPACE));
    let svc: Option<Service> = match plan_service(cached.as_deref(), &ctx.opts) {
        ServiceAction::Keep => cached.as_deref().cloned(),
        ServiceAction::Wait => return Ok(Some(Duration::from_secs(1))),
        ServiceAction::Create(s) => match ctx.services.create(&PostParams::default(), &s).await {
            Ok(created) => {
                tracing::info!(ip = %ctx.opts.ip, domain = %ctx.opts.domain, "cluster DNS: created Service kube-system/kube-dns");
                Some(created)
            }
            // Created meanwhile (the cache did not show it yet): look again.
            Err(e) if is_conflict(&e) => return Ok(Some(Duration::from_millis(200))),
            // Rejected (e.g. the address is another Service's): its deletion queues nothing
            // here, so look again regularly instead of backing off for long.
            Err(kube::Error::Api(s)) if s.code == 422 => {
                tracing::warn!(ip = %ctx.opts.ip, error = %s.message, "cluster DNS: cannot create Service kube-system/kube-dns; retrying in 30s");
                return Ok(Some(Duration::from_secs(30)));
            }
            Err(e) => return Err(e.into()),
        },
        ServiceAction::Patch(p) => match ctx
            .services
            .patch(SERVICE_NAME, &PatchParams::default(), &Patch::Merge(&p))
            .await
        {
            Ok(s) => {
                tracing::info!("cluster DNS: repaired Service kube-system/kube-dns");
                Some(s)
            }
            Err(e) if is_conflict(&e) || is_not_found(&e) => {
                return Ok(Some(Duration::from_millis(200)))
            }
            Err(e) => return Err(e.into()),
        },
        ServiceAction::Recreate(uid) => {
            tracing::info!(ip = %ctx.opts.ip, "cluster DNS: Service kube-system/kube-dns has another ClusterIP; re-creating it");
            match ctx
                .services
                .delete(SERVICE_NAME, &uid_precondition(uid))
                .await
            {
                Ok(_) => {}
                Err(e) if is_conflict(&e) || is_not_found(&e) => {}
                Err(e) => return Err(e.into()),
            }
            return Ok(Some(Duration::from_millis(200)));
        }
    };
    let nodes = ctx.nodes.state();
    let nodes: Vec<&Node> = nodes.iter().map(|n| n.as_ref()).collect();
    let desired = desired_slice(&nodes, &ctx.opts, svc.as_ref());
    let cached = ctx
        .slice_cache
        .get(&ObjectRef::new(SLICE_NAME).within(NAMESPACE));
    match plan_slice(cached.as_deref(), desired) {
        SliceAction::Keep => {}
        SliceAction::Wait => return Ok(Some(Duration::from_secs(1))),
        SliceAction::Create(s) => match ctx.slices.create(&PostParams::default(), &s).await {
            Ok(_) => tracing::debug!(
                endpoints = s.endpoints.len(),
                "cluster DNS: created EndpointSlice kube-system/kube-dns-rk3s"
            ),
            Err(e) if is_conflict(&e) => return Ok(Some(Duration::from_millis(200))),
            Err(e) => return Err(e.into()),
        },
        SliceAction::Replace(s) => match ctx
            .slices
            .replace(SLICE_NAME, &PostParams::default(), &s)
            .await
        {
            Ok(_) => tracing::debug!(
                endpoints = s.endpoints.len(),
                "cluster DNS: updated EndpointSlice kube-system/kube-dns-rk3s"
            ),
            Err(e) if is_conflict(&e) || is_not_found(&e) => {
                return Ok(Some(Duration::from_millis(200)))
            }
            Err(e) => return Err(e.into()),
        },
        SliceAction::Recreate(uid) => {
            match ctx.slices.delete(SLICE_NAME, &uid_precondition(uid)).await {
                Ok(_) => {}
                Err(e) if is_conflict(&e) || is_not_found(&e) => {}
                Err(e) => return Err(e.into()),
            }
            return Ok(Some(Duration::from_millis(200)));
        }
    }
    Ok(None)
}

/// Removes what this controller made (the cluster DNS is disabled): its slice, and the
/// Service if still marked as ours and without a selector.
async fn cleanup(client: &kube::Client) -> Result<(), ControllerError> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    if let Some(s) = slices.get_opt(SLICE_NAME).await? {
        if s.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(MANAGED_BY_LABEL))
            .map(String::as_str)
            == Some(MANAGED_BY)
        {
            ignore_not_found(
                slices
                    .delete(
                        SLICE_NAME,
                        &uid_precondition(s.metadata.uid.clone().unwrap_or_default()),
                    )
                    .await
                    .map(|_| ()),
            )?;
            tracing::info!("cluster DNS disabled: deleted EndpointSlice kube-system/kube-dns-rk3s");
        }
    }
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    if let Some(s) = services.get_opt(SERVICE_NAME).await? {
        let ours = s
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(MANAGED_ANNOTATION))
            .map(String::as_str)
            == Some(MANAGED_BY);
        let selectorless = s
            .spec
            .as_ref()
            .and_then(|sp| sp.selector.as_ref())
            .is_none_or(|sel| sel.is_empty());
        if ours && selectorless {
            ignore_not_found(
                services
                    .delete(
                        SERVICE_NAME,
                        &uid_precondition(s.metadata.uid.clone().unwrap_or_default()),
                    )
                    .await
                    .map(|_| ()),
            )?;
            tracing::info!("cluster DNS disabled: deleted Service kube-system/kube-dns");
        }
    }
    Ok(())
}

/// Runs the cluster DNS controller forever. With `opts`, keeps the Service and the slice
/// (one work-queue key, queued by changes of the Service, the slice, and nodes where it
/// matters); without, removes what it made before, then idles.
pub async fn run(
    client: kube::Client,
    opts: Option<ClusterDnsOptions>,
    informers: SharedInformers,
) -> Result<(), ControllerError> {
    let Some(opts) = opts else {
        let mut failures = 0u32;
        while let Err(e) = cleanup(&client).await {
            failures = failures.saturating_add(1);
            tracing::debug!(error = %e, "cluster DNS cleanup failed; retrying");
            tokio::time::sleep(
                rk3s_runtime::queue::backoff(failures)
                    .max(Duration::from_millis(500))
                    .min(Duration::from_secs(60)),
            )
            .await;
        }
        std::future::pending::<()>().await;
        return Ok(());
    };
    // Subscribe before reading the stores: no change after the first list is missed.
    let svc_changes = informers.subscribe::<Service>();
    let slice_changes = informers.subscribe::<EndpointSlice>();
    let node_changes = informers.changes::<Node>();
    let service_cache = informers.store::<Service>().await;
    let slice_cache = informers.store::<EndpointSlice>().await;
    let nodes = informers.store::<Node>().await;
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
        opts,
        services: Api::namespaced(client.clone(), NAMESPACE),
        slices: Api::namespaced(client, NAMESPACE),
        service_cache,
        slice_cache,
        nodes,
    });
    let queue: WorkQueue<()> = WorkQueue::new();
    queue.add(());
    fn is(meta: &ObjectMeta, name: &str) -> bool {
        meta.namespace.as_deref() == Some(NAMESPACE) && meta.name.as_deref() == Some(name)
    }
    let triggers = vec![
        Trigger::map(svc_changes, |s: Arc<Service>| {
            is(&s.metadata, SERVICE_NAME).then_some(())
        }),
        Trigger::map(slice_changes, |s: Arc<EndpointSlice>| {
            is(&s.metadata, SLICE_NAME).then_some(())
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
                    node_fps = all
                        .iter()
                        .map(|n| {
                            (
                                n.metadata.name.clone().unwrap_or_default(),
                                node_fingerprint(n),
                            )
                        })
                        .collect();
                    true
                }
            };
            changed.then_some(())
        }),
    ];
    run_controller("clusterdns", 1, queue, triggers, move |_: ()| {
        let ctx = ctx.clone();
        async move { sync(&ctx).await.map(Action::requeue_after) }
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeCondition, NodeStatus};

    fn opts() -> ClusterDnsOptions {
        ClusterDnsOptions {
            ip: "10.43.0.10".parse().unwrap(),
            domain: "cluster.local".into(),
        }
    }

    fn node(name: &str, ready: Option<bool>, addrs: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([(ZONE_LABEL.to_string(), "z1".to_string())].into()),
                ..Default::default()
            },
            spec: None,
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
                conditions: ready.map(|r| {
                    vec![NodeCondition {
                        type_: "Ready".into(),
                        status: if r { "True" } else { "False" }.into(),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
        }
    }

    fn existing(svc: Service) -> Service {
        let mut s = svc;
        s.metadata.uid = Some("uid-1".into());
        s.metadata.resource_version = Some("7".into());
        s
    }

    #[test]
    fn the_service_is_k3s_kube_dns_without_selector_and_node_local() {
        let s = desired_service(&opts());
        assert_eq!(s.metadata.namespace.as_deref(), Some("kube-system"));
        assert_eq!(s.metadata.name.as_deref(), Some("kube-dns"));
        let labels = s.metadata.labels.clone().unwrap();
        assert_eq!(labels.get("k8s-app").map(String::as_str), Some("kube-dns"));
        assert_eq!(
            labels
                .get("kubernetes.io/cluster-service")
                .map(String::as_str),
            Some("true")
        );
        assert_eq!(
            labels.get("kubernetes.io/name").map(String::as_str),
            Some("CoreDNS")
        );
        let spec = s.spec.clone().unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.43.0.10"));
        assert_eq!(spec.cluster_ips, Some(vec!["10.43.0.10".to_string()]));
        assert_eq!(spec.ip_families, Some(vec!["IPv4".to_string()]));
        assert_eq!(spec.internal_traffic_policy.as_deref(), Some("Local"));
        assert!(spec.selector.is_none());
        let ports: Vec<(String, i32, String)> = spec
            .ports
            .unwrap()
            .iter()
            .map(|p| (p.name.clone().unwrap(), p.port, p.protocol.clone().unwrap()))
            .collect();
        assert_eq!(
            ports,
            [
                ("dns".to_string(), 53, "UDP".to_string()),
                ("dns-tcp".to_string(), 53, "TCP".to_string())
            ]
        );
        assert!(matches!(
            plan_service(None, &opts()),
            ServiceAction::Create(_)
        ));
    }

    #[test]
    fn the_service_is_repaired_or_recreated() {
        let good = existing(desired_service(&opts()));
        assert_eq!(plan_service(Some(&good), &opts()), ServiceAction::Keep);
        // Server defaults (targetPort unset, extra labels) are fine.
        let mut defaulted = good.clone();
        defaulted.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].target_port = None;
        defaulted
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("extra".into(), "x".into());
        assert_eq!(plan_service(Some(&defaulted), &opts()), ServiceAction::Keep);
        // A user changed the ports, the policy and added a selector: one patch fixes all.
        let mut changed = good.clone();
        let spec = changed.spec.as_mut().unwrap();
        spec.ports = Some(vec![ServicePort {
            name: Some("dns".into()),
            port: 5353,
            protocol: Some("UDP".into()),
            ..Default::default()
        }]);
        spec.internal_traffic_policy = Some("Cluster".into());
        spec.selector = Some([("k8s-app".to_string(), "kube-dns".to_string())].into());
        let ServiceAction::Patch(p) = plan_service(Some(&changed), &opts()) else {
            panic!("expected a patch")
        };
        assert_eq!(p["spec"]["internalTrafficPolicy"], "Local");
        assert_eq!(p["spec"]["selector"], Value::Null);
        assert_eq!(p["spec"]["ports"].as_array().map(Vec::len), Some(2));
        assert_eq!(p["spec"]["ports"][0]["port"], 53);
        assert_eq!(p["metadata"]["resourceVersion"], "7");
        assert!(
            p["spec"].get("externalTrafficPolicy").is_none(),
            "type unchanged: no type-dependent fields cleared"
        );
        // Made a NodePort: back to ClusterIP, node-port fields dropped.
        let mut np = good.clone();
        np.spec.as_mut().unwrap().type_ = Some("NodePort".into());
        np.spec.as_mut().unwrap().external_traffic_policy = Some("Cluster".into());
        let ServiceAction::Patch(p) = plan_service(Some(&np), &opts()) else {
            panic!("expected a patch")
        };
        assert_eq!(p["spec"]["type"], "ClusterIP");
        assert!(
            p["spec"]["externalTrafficPolicy"].is_null()
                && p["spec"].get("externalTrafficPolicy").is_some()
        );
        // Another ClusterIP: delete (then create) it.
        let mut other_ip = good.clone();
        other_ip.spec.as_mut().unwrap().cluster_ip = Some("10.43.0.99".into());
        assert_eq!(
            plan_service(Some(&other_ip), &opts()),
            ServiceAction::Recreate("uid-1".into())
        );
        let mut deleting = good;
        deleting.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
        assert_eq!(plan_service(Some(&deleting), &opts()), ServiceAction::Wait);
    }

    #[test]
    fn one_endpoint_per_node_with_readiness() {
        let a = node(
            "b-node",
            Some(true),
            &[
                ("Hostname", "b"),
                ("InternalIP", "fd00::2"),
                ("InternalIP", "10.0.0.2"),
                ("InternalIP", "10.0.0.22"),
            ],
        );
        let b = node(
            "a-node",
            Some(false),
            &[("ExternalIP", "203.0.113.1"), ("InternalIP", "10.0.0.1")],
        );
        let c = node("c-node", None, &[("InternalIP", "10.0.0.3")]);
        let d = node("d-node", Some(true), &[("ExternalIP", "203.0.113.4")]);
        let svc = existing(desired_service(&opts()));
        let s = desired_slice(&[&a, &b, &c, &d], &opts(), Some(&svc));
        assert_eq!(s.metadata.name.as_deref(), Some("kube-dns-rk3s"));
        assert_eq!(s.address_type, "IPv4");
        let labels = s.metadata.labels.clone().unwrap();
        assert_eq!(
            labels.get("kubernetes.io/service-name").map(String::as_str),
            Some("kube-dns")
        );
        assert_eq!(
            labels
                .get("endpointslice.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("cluster-dns.rk3s.io")
        );
        assert_eq!(
            s.metadata.owner_references.as_ref().unwrap()[0].uid,
            "uid-1"
        );
        let got: Vec<(String, String, bool, bool, bool)> = s
            .endpoints
            .iter()
            .map(|e| {
                let c = e.conditions.clone().unwrap();
                (
                    e.node_name.clone().unwrap(),
                    e.addresses[0].clone(),
                    c.ready.unwrap(),
                    c.serving.unwrap(),
                    c.terminating.unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "a-node".to_string(),
                    "10.0.0.1".to_string(),
                    false,
                    false,
                    false
                ),
                (
                    "b-node".to_string(),
                    "10.0.0.2".to_string(),
                    true,
                    true,
                    false
                ),
                (
                    "c-node".to_string(),
                    "10.0.0.3".to_string(),
                    false,
                    false,
                    false
                ),
            ],
            "sorted by node, first IPv4 InternalIP, nodes without one left out"
        );
        assert_eq!(s.endpoints[0].zone.as_deref(), Some("z1"));
        let ports: Vec<(String, i32, String)> = s
            .ports
            .clone()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p.name.clone().unwrap(),
                    p.port.unwrap(),
                    p.protocol.clone().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            ports,
            [
                ("dns".to_string(), 53, "UDP".to_string()),
                ("dns-tcp".to_string(), 53, "TCP".to_string())
            ]
        );
        // IPv6 cluster DNS: IPv6 addresses.
        let v6 = ClusterDnsOptions {
            ip: "fd00:43::a".parse().unwrap(),
            domain: "cluster.local".into(),
        };
        let s6 = desired_slice(&[&a, &b], &v6, None);
        assert_eq!(s6.address_type, "IPv6");
        assert_eq!(s6.endpoints.len(), 1);
        assert_eq!(s6.endpoints[0].addresses, ["fd00::2"]);
        assert!(s6.metadata.owner_references.is_none());
    }

    #[test]
    fn the_slice_is_written_only_when_it_differs() {
        let a = node("a", Some(true), &[("InternalIP", "10.0.0.1")]);
        let svc = existing(desired_service(&opts()));
        let want = desired_slice(&[&a], &opts(), Some(&svc));
        assert!(matches!(
            plan_slice(None, want.clone()),
            SliceAction::Create(_)
        ));
        let mut have = want.clone();
        have.metadata.uid = Some("s1".into());
        have.metadata.resource_version = Some("3".into());
        have.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("extra".into(), "kept".into());
        assert_eq!(plan_slice(Some(&have), want.clone()), SliceAction::Keep);
        // The node went NotReady.
        let a_down = node("a", Some(false), &[("InternalIP", "10.0.0.1")]);
        let SliceAction::Replace(next) =
            plan_slice(Some(&have), desired_slice(&[&a_down], &opts(), Some(&svc)))
        else {
            panic!("expected a replace")
        };
        assert_eq!(next.metadata.resource_version.as_deref(), Some("3"));
        assert_eq!(
            next.metadata
                .labels
                .as_ref()
                .unwrap()
                .get("extra")
                .map(String::as_str),
            Some("kept")
        );
        assert_eq!(
            next.endpoints[0].conditions.as_ref().unwrap().ready,
            Some(false)
        );
        // A node joined.
        let b = node("b", Some(true), &[("InternalIP", "10.0.0.2")]);
        let SliceAction::Replace(next) =
            plan_slice(Some(&have), desired_slice(&[&a, &b], &opts(), Some(&svc)))
        else {
            panic!("expected a replace")
        };
        assert_eq!(next.endpoints.len(), 2);
        // The Service was re-created: the owner follows.
        let mut svc2 = svc.clone();
        svc2.metadata.uid = Some("uid-2".into());
        assert!(matches!(
            plan_slice(Some(&have), desired_slice(&[&a], &opts(), Some(&svc2))),
            SliceAction::Replace(_)
        ));
        // Wrong address type (immutable): re-create.
        let mut v6 = have.clone();
        v6.address_type = "IPv6".into();
        assert_eq!(
            plan_slice(Some(&v6), want),
            SliceAction::Recreate("s1".into())
        );
    }

    #[test]
    fn node_fingerprint_ignores_heartbeats() {
        let a = node("a", Some(true), &[("InternalIP", "10.0.0.1")]);
        let mut beat = a.clone();
        beat.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].last_heartbeat_time = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
        assert_eq!(node_fingerprint(&a), node_fingerprint(&beat));
        assert_ne!(
            node_fingerprint(&a),
            node_fingerprint(&node("a", Some(false), &[("InternalIP", "10.0.0.1")]))
        );
    }

    #[test]
    fn the_endpointslice_controller_leaves_the_dns_objects_alone() {
        // It manages Services with a selector only, and slices it manages only.
        assert!(!crate::endpoints::manages(&desired_service(&opts())));
        let s = desired_slice(
            &[&node("a", Some(true), &[("InternalIP", "10.0.0.1")])],
            &opts(),
            None,
        );
        assert!(crate::endpointslice::slices_by_service(&s).is_empty());
    }
}
