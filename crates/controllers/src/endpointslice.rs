//! The EndpointSlice controller (upstream's `pkg/controller/endpointslice`): every Service
//! with a selector gets `discovery.k8s.io/v1` EndpointSlices (address type IPv4, at most
//! 100 endpoints each, one group per distinct port set) listing the selected pods with
//! their ready/serving/terminating conditions, node, zone and `targetRef`; labelled
//! `kubernetes.io/service-name` and managed-by `endpointslice-controller.k8s.io`, owned by
//! the Service, named `<service>-<random>`. A Service selecting nothing keeps one empty
//! placeholder slice, as upstream.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};

use crate::endpoints::{
    endpoint_hostname, find_port, is_headless, key_of, manages, pod_ip, pod_ref, selected_pods,
    should_pod_be_in_endpoints, PodServiceMapper, HEADLESS_LABEL, LAST_CHANGE_TRIGGER_TIME,
};
use crate::expectations::{Expectations, MetaOf};
use crate::informers::Index;
use crate::workload_util::{ignore_not_found, rfc3339};
use crate::ControllerError;
use rk3s_runtime::{run_controller, Action, Trigger, WorkQueue};

/// Label naming the Service of an EndpointSlice.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming the controller managing an EndpointSlice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's `managed-by` value.
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
/// Most endpoints per slice (upstream's `--max-endpoints-per-slice` default).
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// Node label with the zone an endpoint is in.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The ports of a slice (sorted, as compared between desired and existing slices).
type PortSet = Vec<EndpointPort>;
/// A port set as comparable tuples.
type PortKey = Vec<(Option<String>, Option<i32>, Option<String>)>;

fn port_key(p: &EndpointPort) -> (Option<String>, Option<i32>, Option<String>) {
    (p.name.clone(), p.port, p.protocol.clone())
}

/// The endpoint of a pod for a Service, given the node zones (`node -> zone`).
pub fn pod_endpoint(
    svc: &Service,
    pod: &Pod,
    zones: &BTreeMap<String, String>,
) -> Option<Endpoint> {
    let ip = pod_ip(pod)?;
    let publish = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let serving = publish || crate::podutil::is_pod_ready(pod);
    let ready = serving && (publish || !terminating);
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty());
    Some(Endpoint {
        addresses: vec![ip.to_string()],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        hostname: endpoint_hostname(pod, svc),
        zone: node.as_ref().and_then(|n| zones.get(n).cloned()),
        node_name: node,
        target_ref: Some(pod_ref(pod)),
        ..Default::default()
    })
}

/// The endpoints of a Service grouped by port set (each group sorted by address).
pub fn desired_groups(
    svc: &Service,
    pods: &[&Pod],
    zones: &BTreeMap<String, String>,
) -> Vec<(PortSet, Vec<Endpoint>)> {
    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or(&[]);
    let mut groups: BTreeMap<PortKey, (PortSet, Vec<Endpoint>)> = BTreeMap::new();
    for pod in pods {
        if !should_pod_be_in_endpoints(pod, true) {
            continue;
        }
        let Some(ep) = pod_endpoint(svc, pod, zones) else {
            continue;
        };
        let mut set: PortSet = ports
            .iter()
            .filter_map(|sp| {
                find_port(pod, sp).map(|p| EndpointPort {
                    name: Some(sp.name.clone().unwrap_or_default()),
                    port: Some(p),
                    protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".into())),
                    app_protocol: sp.app_protocol.clone(),
                })
            })
            .collect();
        if set.is_empty() && !ports.is_empty() {
            continue;
        }
        set.sort_by_key(port_key);
        let key = set.iter().map(port_key).collect();
        groups
            .entry(key)
            .or_insert_with(|| (set, Vec::new()))
            .1
            .push(ep);
    }
    groups
        .into_values()
        .map(|(ports, mut eps)| {
            eps.sort_by(|a, b| a.addresses.cmp(&b.addresses));
            (ports, eps)
        })
        .collect()
}

/// The labels of a Service's slices: the Service's labels plus the service-name,
/// managed-by and (headless Services) headless labels.
pub fn slice_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    labels.remove(HEADLESS_LABEL);
    labels.insert(
        SERVICE_NAME_LABEL.into(),
        svc.metadata.name.clone().unwrap_or_default(),
    );
    labels.insert(MANAGED_BY_LABEL.into(), CONTROLLER_NAME.into());
    if is_headless(svc) {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    }
    labels
}

/// A new slice of a Service (generateName `<service>-`, owned by the Service).
pub fn new_slice(svc: &Service, ports: PortSet, endpoints: Vec<Endpoint>) -> EndpointSlice {
    let name = svc.metadata.name.clone().unwrap_or_default();
    EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: svc.metadata.namespace.clone(),
            labels: Some(slice_labels(svc)),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Service".into(),
                name,
                uid: svc.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints,
        ports: (!ports.is_empty()).then_some(ports),
    }
}

/// What to do with a Service's slices.
#[derive(Debug, Default)]
pub struct SlicePlan {
    /// Slices to create.
    pub create: Vec<EndpointSlice>,
    /// Existing slices with new endpoints/labels, to replace.
    pub update: Vec<EndpointSlice>,
    /// Names of slices to delete.
    pub delete: Vec<String>,
}

fn sorted_ports(s: &EndpointSlice) -> Vec<(Option<String>, Option<i32>, Option<String>)> {
    let mut v: Vec<_> = s.ports.iter().flatten().map(port_key).collect();
    v.sort();
    v
}

/// Plans the slices of a Service from the desired endpoint groups and its existing
/// slices: existing slices with the same port set are reused (updated only when they
/// differ), missing ones created, the rest deleted; with no endpoints at all one empty
/// placeholder slice remains.
pub fn plan_slices(
    svc: &Service,
    mut groups: Vec<(PortSet, Vec<Endpoint>)>,
    existing: &[Arc<EndpointSlice>],
) -> SlicePlan {
    let mut plan = SlicePlan::default();
    if groups.is_empty() {
        groups.push((Vec::new(), Vec::new()));
    }
    let labels = slice_labels(svc);
    let mut used: HashSet<usize> = HashSet::new();
    for (ports, eps) in groups {
        let key: Vec<_> = ports.iter().map(port_key).collect();
        let chunks: Vec<Vec<Endpoint>> = if eps.is_empty() {
            vec![Vec::new()]
        } else {
            eps.chunks(MAX_ENDPOINTS_PER_SLICE)
                .map(|c| c.to_vec())
                .collect()
        };
        for chunk in chunks {
            let found = existing.iter().enumerate().find(|(i, s)| {
                !used.contains(i) && sorted_ports(s) == key && s.address_type == "IPv4"
            });
            match found {
                Some((i, s)) => {
                    used.insert(i);
                    if s.endpoints != chunk || s.metadata.labels.as_ref() != Some(&labels) {
                        let mut s2 = (**s).clone();
                        s2.endpoints = chunk;
                        s2.metadata.labels = Some(labels.clone());
                        plan.update.push(s2);
                    }
                }
                None => plan.create.push(new_slice(svc, ports.clone(), chunk)),
            }
        }
    }
    for (i, s) in existing.iter().enumerate() {
        if !used.contains(&i) {
            plan.delete
                .push(s.metadata.name.clone().unwrap_or_default());
        }
    }
    plan
}

fn zones(nodes: &Store<Node>) -> BTreeMap<String, String> {
    nodes
        .state()
        .iter()
        .filter_map(|n| {
            Some((
                n.metadata.name.clone()?,
                n.metadata.labels.as_ref()?.get(ZONE_LABEL)?.clone(),
            ))
        })
        .collect()
}

/// Index function: the `namespace/service` of a slice this controller manages.
pub fn slices_by_service(s: &EndpointSlice) -> Vec<String> {
    let labels = s.metadata.labels.as_ref();
    if labels
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .map(String::as_str)
        != Some(CONTROLLER_NAME)
    {
        return Vec::new();
    }
    labels
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

/// The caches the EndpointSlice controller reads.
struct Ctx {
    client: kube::Client,
    services: Store<Service>,
    pods_by_ns: Arc<Index<Pod>>,
    slices: Store<EndpointSlice>,
    slices_by_service: Arc<Index<EndpointSlice>>,
    nodes: Store<Node>,
    /// Slices created or deleted and not yet in the cache (upstream's slice tracker).
    expectations: Expectations,
}

/// Brings the slices of the Service `ns/name` up to date (upstream's `syncService`):
/// planned from its pods while it has a selector, deleted once it is gone or has none.
async fn sync_service(ctx: &Ctx, key: &str) -> Result<Option<Duration>, ControllerError> {
    let (ns, name) = key.split_once('/').unwrap_or(("", key));
    if !ctx.expectations.satisfied(key, |n| {
        ctx.slices.get(&ObjectRef::new(n).within(ns)).map(MetaOf)
    }) {
        // The slice events will queue the Service again; this is the fallback.
        return Ok(ctx.expectations.time_left(key));
    }
    let mut existing = ctx.slices_by_service.get(key);
    existing.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), ns);
    let svc = ctx
        .services
        .get(&ObjectRef::new(name).within(ns))
        .filter(|s| manages(s));
    let Some(svc) = svc else {
        // A Service that is gone or has no selector keeps no slices.
        let mut deleted = Vec::new();
        for s in existing {
            let n = s.metadata.name.clone().unwrap_or_default();
            ignore_not_found(api.delete(&n, &DeleteParams::default()).await.map(|_| ()))?;
            deleted.push((n, s.metadata.uid.clone().unwrap_or_default()));
        }
        ctx.expectations.expect_deletions(key, deleted);
        return Ok(None);
    };
    let zones = zones(&ctx.nodes);
    let now = rfc3339(jiff::Timestamp::now());
    // Only the Service's namespace (no scan of every pod).
    let pods = ctx.pods_by_ns.get(ns);
    let groups = desired_groups(&svc, &selected_pods(&svc, &pods), &zones);
    let plan = plan_slices(&svc, groups, &existing);
    for mut s in plan.create {
        s.metadata.annotations = Some([(LAST_CHANGE_TRIGGER_TIME.to_string(), now.clone())].into());
        let created = api.create(&PostParams::default(), &s).await?;
        ctx.expectations.expect_creations(
            key,
            [(
                created.metadata.name.clone().unwrap_or_default(),
                created.metadata.uid.clone().unwrap_or_default(),
            )],
        );
    }
    for mut s in plan.update {
        s.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(LAST_CHANGE_TRIGGER_TIME.into(), now.clone());
        let n = s.metadata.name.clone().unwrap_or_default();
        api.replace(&n, &PostParams::default(), &s).await?;
    }
    for n in plan.delete {
        ignore_not_found(api.delete(&n, &DeleteParams::default()).await.map(|_| ()))?;
        let uid = existing
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(n.as_str()))
            .and_then(|s| s.metadata.uid.clone())
            .unwrap_or_default();
        ctx.expectations.expect_deletions(key, [(n, uid)]);
    }
    Ok(None)
}

/// Runs the EndpointSlice controller forever: a work queue of Service keys, fed by
/// Service, slice and pod changes (a pod change queues only the Services that select
/// it; a node change queues every Service only when node zones changed).
pub async fn run(
    client: kube::Client,
    informers: crate::informers::SharedInformers,
) -> Result<(), ControllerError> {
    // Subscribe before reading the stores: no change after the first list is missed.
    let svc_changes = informers.subscribe::<Service>();
    let pod_changes = informers.subscribe::<Pod>();
    let slice_changes = informers.subscribe::<EndpointSlice>();
    let node_changes = informers.subscribe::<Node>();
    let services = informers.store::<Service>().await;
    let pods = informers.store::<Pod>().await;
    let slices = informers.store::<EndpointSlice>().await;
    let nodes = informers.store::<Node>().await;
    let pods_by_ns = informers.index::<Pod>(crate::informers::by_namespace).await;
    let services_by_ns = informers
        .index::<Service>(crate::informers::by_namespace)
        .await;
    let slices_by_service = informers.index::<EndpointSlice>(slices_by_service).await;
    let queue: WorkQueue<String> = WorkQueue::new();
    for s in services.state() {
        queue.add(key_of(&s.metadata));
    }
    for s in slices.state() {
        for k in crate::endpointslice::slices_by_service(&s) {
            queue.add(k);
        }
    }
    let mut last_zones = zones(&nodes);
    let ctx = Arc::new(Ctx {
        client,
        services: services.clone(),
        pods_by_ns,
        slices,
        slices_by_service,
        nodes: nodes.clone(),
        expectations: Expectations::new(),
    });
    let mut mapper = PodServiceMapper::new(services_by_ns, pods);
    let triggers = vec![
        Trigger::map(svc_changes, |s: Arc<Service>| Some(key_of(&s.metadata))),
        Trigger::map(slice_changes, |s: Arc<EndpointSlice>| {
            crate::endpointslice::slices_by_service(&s)
        }),
        Trigger::map(pod_changes, move |p: Arc<Pod>| mapper.services_of(&p)),
        Trigger::map(node_changes, move |_: Arc<Node>| {
            // Heartbeats change nothing here: only a change of node zones resyncs.
            let z = zones(&nodes);
            if z == last_zones {
                return Vec::new();
            }
            last_zones = z;
            services
                .state()
                .iter()
                .map(|s| key_of(&s.metadata))
                .collect()
        }),
    ];
    run_controller("endpointslice", 4, queue, triggers, move |key: String| {
        let ctx = ctx.clone();
        async move { sync_service(&ctx, &key).await.map(Action::requeue_after) }
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::tests::{named_port, pod, service};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn endpoint_conditions() {
        let mut svc = service(vec![named_port()]);
        let zones: BTreeMap<String, String> = [("n1".to_string(), "z1".to_string())].into();
        let ready_pod = pod("a", Some("10.0.0.1"), true);
        let e = pod_endpoint(&svc, &ready_pod, &zones).unwrap();
        assert_eq!(
            e.conditions,
            Some(EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false)
            })
        );
        assert_eq!(e.zone.as_deref(), Some("z1"));
        assert_eq!(e.node_name.as_deref(), Some("n1"));
        let mut term = ready_pod.clone();
        term.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
        let e = pod_endpoint(&svc, &term, &zones).unwrap();
        assert_eq!(
            e.conditions,
            Some(EndpointConditions {
                ready: Some(false),
                serving: Some(true),
                terminating: Some(true)
            })
        );
        let unready = pod("b", Some("10.0.0.2"), false);
        let e = pod_endpoint(&svc, &unready, &zones).unwrap();
        assert_eq!(
            e.conditions,
            Some(EndpointConditions {
                ready: Some(false),
                serving: Some(false),
                terminating: Some(false)
            })
        );
        svc.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let e = pod_endpoint(&svc, &term, &zones).unwrap();
        assert_eq!(e.conditions.unwrap().ready, Some(true));
        assert!(pod_endpoint(&svc, &pod("c", None, true), &zones).is_none());
    }

    #[test]
    fn slices_are_planned_created_reused_and_deleted() {
        let svc = service(vec![named_port()]);
        let a = pod("a", Some("10.0.0.1"), true);
        let mut term = pod("t", Some("10.0.0.5"), true);
        term.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
        let groups = desired_groups(&svc, &[&a, &term], &BTreeMap::new());
        assert_eq!(groups.len(), 1);
        assert_eq!(
            groups[0].1.len(),
            2,
            "terminating pods are listed in slices"
        );
        let plan = plan_slices(&svc, groups.clone(), &[]);
        assert_eq!(plan.create.len(), 1);
        let s = &plan.create[0];
        assert_eq!(s.metadata.generate_name.as_deref(), Some("web-"));
        assert_eq!(s.address_type, "IPv4");
        let labels = s.metadata.labels.clone().unwrap();
        assert_eq!(
            labels.get(SERVICE_NAME_LABEL).map(String::as_str),
            Some("web")
        );
        assert_eq!(
            labels.get(MANAGED_BY_LABEL).map(String::as_str),
            Some(CONTROLLER_NAME)
        );
        assert_eq!(labels.get("team").map(String::as_str), Some("a"));
        assert_eq!(
            s.metadata.owner_references.as_ref().unwrap()[0].kind,
            "Service"
        );
        assert_eq!(s.ports.as_ref().unwrap()[0].port, Some(8080));
        // The same slice existing: nothing to do.
        let mut existing = s.clone();
        existing.metadata.name = Some("web-abcde".into());
        let plan = plan_slices(&svc, groups, &[Arc::new(existing.clone())]);
        assert!(plan.create.is_empty() && plan.update.is_empty() && plan.delete.is_empty());
        // A pod gone: update in place.
        let groups = desired_groups(&svc, &[&a], &BTreeMap::new());
        let plan = plan_slices(&svc, groups, &[Arc::new(existing.clone())]);
        assert_eq!(plan.update.len(), 1);
        assert_eq!(plan.update[0].endpoints.len(), 1);
        // No pods: the slice becomes an empty placeholder... with no ports, so a new
        // placeholder is created and the ported slice deleted.
        let plan = plan_slices(&svc, Vec::new(), &[Arc::new(existing)]);
        assert_eq!(plan.create.len(), 1);
        assert!(plan.create[0].endpoints.is_empty() && plan.create[0].ports.is_none());
        assert_eq!(plan.delete, vec!["web-abcde".to_string()]);
    }

    #[test]
    fn large_services_split_into_slices_of_100() {
        let svc = service(vec![named_port()]);
        let pods: Vec<Pod> = (0..250)
            .map(|i| {
                pod(
                    &format!("p{i}"),
                    Some(&format!("10.1.{}.{}", i / 200, i % 200)),
                    true,
                )
            })
            .collect();
        let refs: Vec<&Pod> = pods.iter().collect();
        let plan = plan_slices(&svc, desired_groups(&svc, &refs, &BTreeMap::new()), &[]);
        let sizes: Vec<usize> = plan.create.iter().map(|s| s.endpoints.len()).collect();
        assert_eq!(sizes, vec![100, 100, 50]);
    }
}
