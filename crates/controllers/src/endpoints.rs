//! The endpoints controller (upstream's `pkg/controller/endpoint`): every Service with a
//! selector gets an Endpoints object of the same name whose subsets list the IPs of the
//! selected pods — ready ones in `addresses`, others in `notReadyAddresses` — with the
//! ports resolved from the Service's `targetPort` (a number, or a container port name).
//!
//! Its loop is the controller runtime's (`rk3s_runtime::run_controller`): a queue of
//! Service keys fed by Service, Endpoints and pod changes.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
    ServicePort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::Resource;

use crate::informers::Index;
use crate::workload_util::{ignore_not_found, is_conflict, rfc3339};
use crate::ControllerError;
use rk3s_runtime::{run_controller, Action, Trigger, WorkQueue};

/// Annotation with the time of the last pod or service change reflected in an Endpoints.
pub const LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";
/// Label set on the Endpoints/EndpointSlices of headless Services.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// `namespace/name` of an object.
pub fn key_of(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or("")
    )
}

/// Whether a Service is headless (`clusterIP: None`).
pub fn is_headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

/// The Service's selector, when it has a non-empty one (only those get endpoints).
pub fn service_selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    svc.spec
        .as_ref()?
        .selector
        .as_ref()
        .filter(|s| !s.is_empty())
}

/// Whether endpoints are managed for this Service: it has a selector and is not the API
/// server's own `default/kubernetes` Service.
pub fn manages(svc: &Service) -> bool {
    let is_kubernetes = svc.metadata.namespace.as_deref() == Some("default")
        && svc.metadata.name.as_deref() == Some("kubernetes");
    !is_kubernetes && service_selector(svc).is_some() && svc.metadata.deletion_timestamp.is_none()
}

/// The pods of `pods` a Service selects (same namespace, labels matching).
pub fn selected_pods<'a>(svc: &Service, pods: &'a [Arc<Pod>]) -> Vec<&'a Pod> {
    let Some(sel) = service_selector(svc) else {
        return Vec::new();
    };
    let ns = svc.metadata.namespace.as_deref();
    pods.iter()
        .map(|p| p.as_ref())
        .filter(|p| p.metadata.namespace.as_deref() == ns)
        .filter(|p| {
            let labels = p.metadata.labels.as_ref();
            sel.iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        })
        .collect()
}

/// The port a pod serves a Service port on: a numeric `targetPort`, or the container port
/// (also of restartable init containers) of that name and protocol; `None` when a named
/// port is not declared by the pod.
pub fn find_port(pod: &Pod, sp: &ServicePort) -> Option<i32> {
    match &sp.target_port {
        None => Some(sp.port),
        Some(IntOrString::Int(p)) => Some(*p),
        Some(IntOrString::String(name)) => {
            if let Ok(n) = name.parse::<i32>() {
                return Some(n);
            }
            let proto = sp.protocol.as_deref().unwrap_or("TCP");
            let spec = pod.spec.as_ref()?;
            let sidecars = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            spec.containers
                .iter()
                .chain(sidecars)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == proto
                })
                .map(|p| p.container_port)
        }
    }
}

/// The pod's IP, when it has one.
pub fn pod_ip(pod: &Pod) -> Option<&str> {
    pod.status
        .as_ref()?
        .pod_ip
        .as_deref()
        .filter(|ip| !ip.is_empty())
}

/// Upstream's `ShouldPodBeInEndpoints`: the pod has an IP, is not terminal for its restart
/// policy, and is not terminating unless `include_terminating`.
pub fn should_pod_be_in_endpoints(pod: &Pod, include_terminating: bool) -> bool {
    if pod_ip(pod).is_none() {
        return false;
    }
    if !include_terminating && pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("");
    match pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
    {
        "Never" => phase != "Failed" && phase != "Succeeded",
        "OnFailure" => phase != "Succeeded",
        _ => true,
    }
}

/// A `targetRef` to a pod.
pub fn pod_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
}

/// The hostname an endpoint of `pod` carries for `svc` (pod `hostname` when its
/// `subdomain` names the Service).
pub fn endpoint_hostname(pod: &Pod, svc: &Service) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let host = spec.hostname.as_ref().filter(|h| !h.is_empty())?;
    (spec.subdomain.as_deref() == svc.metadata.name.as_deref()
        && pod.metadata.namespace == svc.metadata.namespace)
        .then(|| host.clone())
}

/// The Endpoints subsets of a Service given the pods it selects: one subset per distinct
/// set of resolved ports, addresses sorted by IP.
pub fn desired_subsets(svc: &Service, pods: &[&Pod]) -> Vec<EndpointSubset> {
    let tolerate_unready = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let ports: &[ServicePort] = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or(&[]);
    // Port set (as sorted tuples) -> (ready, not ready) addresses.
    type PortKey = Vec<(String, i32, String, Option<String>)>;
    let mut groups: BTreeMap<PortKey, (Vec<EndpointAddress>, Vec<EndpointAddress>)> =
        BTreeMap::new();
    for pod in pods {
        if !should_pod_be_in_endpoints(pod, tolerate_unready) {
            continue;
        }
        let Some(ip) = pod_ip(pod) else { continue };
        let mut key: PortKey = Vec::new();
        for sp in ports {
            if let Some(p) = find_port(pod, sp) {
                key.push((
                    sp.name.clone().unwrap_or_default(),
                    p,
                    sp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    sp.app_protocol.clone(),
                ));
            }
        }
        if key.is_empty() && !(ports.is_empty() && is_headless(svc)) {
            continue;
        }
        key.sort();
        let addr = EndpointAddress {
            ip: ip.to_string(),
            hostname: endpoint_hostname(pod, svc),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(pod_ref(pod)),
        };
        let g = groups.entry(key).or_default();
        if tolerate_unready || crate::podutil::is_pod_ready(pod) {
            g.0.push(addr);
        } else {
            g.1.push(addr);
        }
    }
    let mut subsets: Vec<EndpointSubset> = groups
        .into_iter()
        .map(|(key, (mut ready, mut not_ready))| {
            let by_ip = |a: &EndpointAddress, b: &EndpointAddress| {
                a.ip.cmp(&b.ip).then_with(|| {
                    a.target_ref
                        .as_ref()
                        .map(|r| &r.uid)
                        .cmp(&b.target_ref.as_ref().map(|r| &r.uid))
                })
            };
            ready.sort_by(by_ip);
            not_ready.sort_by(by_ip);
            let ports: Vec<EndpointPort> = key
                .into_iter()
                .map(|(name, port, protocol, app_protocol)| EndpointPort {
                    name: (!name.is_empty()).then_some(name),
                    port,
                    protocol: Some(protocol),
                    app_protocol,
                })
                .collect();
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: (!ports.is_empty()).then_some(ports),
            }
        })
        .collect();
    subsets.sort_by(|a, b| first_ip(a).cmp(first_ip(b)));
    subsets
}

fn first_ip(s: &EndpointSubset) -> &str {
    s.addresses
        .iter()
        .chain(s.not_ready_addresses.iter())
        .flatten()
        .map(|a| a.ip.as_str())
        .next()
        .unwrap_or("")
}

/// The labels of a Service's Endpoints: the Service's labels, plus the headless label.
pub fn endpoints_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    if is_headless(svc) {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    } else {
        labels.remove(HEADLESS_LABEL);
    }
    labels
}

/// Whether an existing Endpoints already holds the wanted subsets and labels.
pub fn endpoints_up_to_date(
    ep: &Endpoints,
    subsets: &[EndpointSubset],
    labels: &BTreeMap<String, String>,
) -> bool {
    ep.subsets.as_deref().unwrap_or(&[]) == subsets
        && ep.metadata.labels.clone().unwrap_or_default() == *labels
}

/// The caches the endpoints controller reads.
struct Ctx {
    client: kube::Client,
    services: Store<Service>,
    pods_by_ns: Arc<Index<Pod>>,
    endpoints: Store<Endpoints>,
    /// Services whose Endpoints this controller manages (so it deletes them when the
    /// Service goes away or loses its selector).
    seen: std::sync::Mutex<HashSet<String>>,
}

impl Ctx {
    fn seen(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        match self.seen.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// Brings the Endpoints of the Service `ns/name` up to date (upstream's `syncService`):
/// written from the Service's pods when it has a selector, deleted when the Service went
/// away (or lost its selector) and the Endpoints were ours.
async fn sync_service(ctx: &Ctx, key: &str) -> Result<Option<Duration>, ControllerError> {
    let (ns, name) = key.split_once('/').unwrap_or(("", key));
    let oref = reflector::ObjectRef::new(name).within(ns);
    let existing = ctx
        .endpoints
        .get(&reflector::ObjectRef::new(name).within(ns));
    let api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), ns);
    let svc = ctx.services.get(&oref);
    let Some(svc) = svc.filter(|s| manages(s)) else {
        let was_ours = ctx.seen().remove(key);
        let service_gone = ctx.services.get(&oref).is_none();
        let annotated = existing.as_ref().is_some_and(|ep| {
            ep.metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(LAST_CHANGE_TRIGGER_TIME))
        });
        if existing.is_some() && (was_ours || (service_gone && annotated)) {
            ignore_not_found(api.delete(name, &Default::default()).await.map(|_| ()))?;
        }
        return Ok(None);
    };
    ctx.seen().insert(key.to_string());
    // Only the Service's namespace (no scan of every pod).
    let pods = ctx.pods_by_ns.get(ns);
    let selected = selected_pods(&svc, &pods);
    let subsets = desired_subsets(&svc, &selected);
    let labels = endpoints_labels(&svc);
    if existing
        .as_ref()
        .is_some_and(|e| endpoints_up_to_date(e, &subsets, &labels))
    {
        return Ok(None);
    }
    let mut ep = existing.as_deref().cloned().unwrap_or_else(|| Endpoints {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(ns.to_string()),
            ..Default::default()
        },
        subsets: None,
    });
    ep.metadata.labels = Some(labels);
    ep.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(LAST_CHANGE_TRIGGER_TIME.into(), seen_now());
    ep.subsets = (!subsets.is_empty()).then_some(subsets);
    if existing.is_some() {
        api.replace(name, &PostParams::default(), &ep).await?;
    } else {
        match api.create(&PostParams::default(), &ep).await {
            Ok(_) => {}
            // Created meanwhile (the cache did not show it yet): look again.
            Err(e) if is_conflict(&e) => return Ok(Some(Duration::from_millis(100))),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// The Services of `ns` (from `services_by_ns`) whose selector matches a pod's labels.
pub fn services_selecting(pod: &Pod, services_by_ns: &Index<Service>) -> HashSet<String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let labels = pod.metadata.labels.as_ref();
    services_by_ns
        .get(ns)
        .iter()
        .filter(|s| {
            service_selector(s).is_some_and(|sel| {
                sel.iter()
                    .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            })
        })
        .map(|s| key_of(&s.metadata))
        .collect()
}

/// Maps each pod change to the Services it concerns: the ones selecting it now and the
/// ones that selected it before (upstream's old/new pod comparison), then queues them.
pub struct PodServiceMapper {
    services_by_ns: Arc<Index<Service>>,
    pods: Store<Pod>,
    last: std::collections::HashMap<String, HashSet<String>>,
}

impl PodServiceMapper {
    /// A mapper over the shared Service index and pod store.
    pub fn new(services_by_ns: Arc<Index<Service>>, pods: Store<Pod>) -> Self {
        PodServiceMapper {
            services_by_ns,
            pods,
            last: std::collections::HashMap::new(),
        }
    }

    /// The Service keys a change of `pod` concerns.
    pub fn services_of(&mut self, pod: &Pod) -> HashSet<String> {
        let pkey = key_of(&pod.metadata);
        let deleted = self
            .pods
            .get(&reflector::ObjectRef::from_obj(pod))
            .is_none();
        let now = services_selecting(pod, &self.services_by_ns);
        let mut all = if deleted {
            self.last.remove(&pkey).unwrap_or_default()
        } else {
            self.last.insert(pkey, now.clone()).unwrap_or_default()
        };
        all.extend(now);
        all
    }
}

fn seen_now() -> String {
    rfc3339(jiff::Timestamp::now())
}

/// Runs the endpoints controller forever: a work queue of Service keys, fed by Service,
/// pod and Endpoints changes (a pod change queues only the Services that select it).
pub async fn run(
    client: kube::Client,
    informers: crate::informers::SharedInformers,
) -> Result<(), ControllerError> {
    // Subscribe before reading the stores: no change after the first list is missed.
    let svc_changes = informers.subscribe::<Service>();
    let pod_changes = informers.subscribe::<Pod>();
    let ep_changes = informers.subscribe::<Endpoints>();
    let services = informers.store::<Service>().await;
    let pods = informers.store::<Pod>().await;
    let endpoints = informers.store::<Endpoints>().await;
    let pods_by_ns = informers.index::<Pod>(crate::informers::by_namespace).await;
    let services_by_ns = informers
        .index::<Service>(crate::informers::by_namespace)
        .await;
    let queue: WorkQueue<String> = WorkQueue::new();
    // Every Service, and every Endpoints (leftovers of Services deleted meanwhile).
    for s in services.state() {
        queue.add(key_of(&s.metadata));
    }
    for e in endpoints.state() {
        queue.add(key_of(&e.metadata));
    }
    let ctx = Arc::new(Ctx {
        client,
        services,
        pods_by_ns,
        endpoints,
        seen: std::sync::Mutex::new(HashSet::new()),
    });
    let mut mapper = PodServiceMapper::new(services_by_ns, pods);
    let triggers = vec![
        Trigger::from_stream(svc_changes.map(|s| key_of(&s.metadata))),
        Trigger::from_stream(ep_changes.map(|e| key_of(&e.metadata))),
        Trigger::from_stream(
            pod_changes.flat_map(move |p| futures_util::stream::iter(mapper.services_of(&p))),
        ),
    ];
    run_controller("endpoints", 4, queue, triggers, move |key: String| {
        let ctx = ctx.clone();
        async move { sync_service(&ctx, &key).await.map(Action::requeue_after) }
    })
    .await;
    Ok(())
}

/// A reference to a Service for events.
pub fn service_ref(svc: &Service) -> ObjectReference {
    svc.object_ref(&())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, PodCondition, PodSpec, PodStatus, ServiceSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    pub(crate) fn pod(name: &str, ip: Option<&str>, ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(vec![ContainerPort {
                        name: Some("http".into()),
                        container_port: 8080,
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: ip.map(String::from),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    pub(crate) fn service(ports: Vec<ServicePort>) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                uid: Some("svc-uid".into()),
                labels: Some([("team".to_string(), "a".to_string())].into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: Some([("app".to_string(), "web".to_string())].into()),
                ports: Some(ports),
                ..Default::default()
            }),
            status: None,
        }
    }

    pub(crate) fn named_port() -> ServicePort {
        ServicePort {
            name: Some("web".into()),
            port: 80,
            target_port: Some(IntOrString::String("http".into())),
            protocol: Some("TCP".into()),
            ..Default::default()
        }
    }

    #[test]
    fn pod_changes_queue_services_selecting_it_before_and_after() {
        use kube::runtime::watcher;
        let svc_index = Arc::new(Index::new(crate::informers::by_namespace::<Service>));
        let mut other = service(vec![]);
        other.metadata.name = Some("other".into());
        if let Some(s) = other.spec.as_mut() {
            s.selector = Some([("app".to_string(), "db".to_string())].into());
        }
        svc_index.rebuild(vec![Arc::new(service(vec![])), Arc::new(other)]);
        let (store, mut writer) = reflector::store::<Pod>();
        let mut mapper = PodServiceMapper::new(svc_index, store);
        let p = pod("a", Some("10.0.0.1"), true);
        writer.apply_watcher_event(&watcher::Event::Apply(p.clone()));
        assert_eq!(
            mapper.services_of(&p),
            HashSet::from(["default/web".to_string()])
        );
        // Relabelled: the Service that selected it before is queued too.
        let mut moved = p.clone();
        moved.metadata.labels = Some([("app".to_string(), "db".to_string())].into());
        writer.apply_watcher_event(&watcher::Event::Apply(moved.clone()));
        assert_eq!(
            mapper.services_of(&moved),
            HashSet::from(["default/web".to_string(), "default/other".to_string()])
        );
        writer.apply_watcher_event(&watcher::Event::Delete(moved.clone()));
        assert_eq!(
            mapper.services_of(&moved),
            HashSet::from(["default/other".to_string()])
        );
    }

    #[test]
    fn named_and_numeric_target_ports() {
        let p = pod("a", Some("10.0.0.1"), true);
        assert_eq!(find_port(&p, &named_port()), Some(8080));
        let num = ServicePort {
            port: 80,
            target_port: Some(IntOrString::Int(9000)),
            ..Default::default()
        };
        assert_eq!(find_port(&p, &num), Some(9000));
        let none = ServicePort {
            port: 81,
            ..Default::default()
        };
        assert_eq!(find_port(&p, &none), Some(81));
        let missing = ServicePort {
            port: 80,
            target_port: Some(IntOrString::String("grpc".into())),
            ..Default::default()
        };
        assert_eq!(find_port(&p, &missing), None);
        let udp = ServicePort {
            port: 80,
            target_port: Some(IntOrString::String("http".into())),
            protocol: Some("UDP".into()),
            ..Default::default()
        };
        assert_eq!(find_port(&p, &udp), None);
    }

    #[test]
    fn subsets_split_ready_and_not_ready() {
        let svc = service(vec![named_port()]);
        let a = pod("a", Some("10.0.0.2"), true);
        let b = pod("b", Some("10.0.0.1"), true);
        let c = pod("c", Some("10.0.0.3"), false);
        let no_ip = pod("d", None, true);
        let subsets = desired_subsets(&svc, &[&a, &b, &c, &no_ip]);
        assert_eq!(subsets.len(), 1);
        let s = &subsets[0];
        let ips: Vec<&str> = s
            .addresses
            .iter()
            .flatten()
            .map(|a| a.ip.as_str())
            .collect();
        assert_eq!(ips, vec!["10.0.0.1", "10.0.0.2"]);
        let nr: Vec<&str> = s
            .not_ready_addresses
            .iter()
            .flatten()
            .map(|a| a.ip.as_str())
            .collect();
        assert_eq!(nr, vec!["10.0.0.3"]);
        let ports = s.ports.clone().unwrap_or_default();
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].port, 8080);
        assert_eq!(ports[0].name.as_deref(), Some("web"));
        let first = &s.addresses.as_ref().unwrap()[0];
        assert_eq!(first.node_name.as_deref(), Some("n1"));
        assert_eq!(
            first.target_ref.as_ref().and_then(|r| r.name.as_deref()),
            Some("b")
        );
    }

    #[test]
    fn publish_not_ready_and_terminating() {
        let mut svc = service(vec![named_port()]);
        let mut term = pod("t", Some("10.0.0.9"), true);
        term.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
        let unready = pod("u", Some("10.0.0.8"), false);
        let subsets = desired_subsets(&svc, &[&term, &unready]);
        assert_eq!(subsets.len(), 1);
        assert!(subsets[0].addresses.is_none());
        assert_eq!(
            subsets[0].not_ready_addresses.as_ref().map(|a| a.len()),
            Some(1)
        );
        svc.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let subsets = desired_subsets(&svc, &[&term, &unready]);
        assert_eq!(subsets[0].addresses.as_ref().map(|a| a.len()), Some(2));
        assert!(subsets[0].not_ready_addresses.is_none());
    }

    #[test]
    fn pods_lacking_a_named_port_are_left_out_and_port_sets_group() {
        let svc = service(vec![
            named_port(),
            ServicePort {
                name: Some("raw".into()),
                port: 90,
                target_port: Some(IntOrString::Int(9090)),
                ..Default::default()
            },
        ]);
        let a = pod("a", Some("10.0.0.1"), true);
        let mut b = pod("b", Some("10.0.0.2"), true);
        b.spec.as_mut().unwrap().containers[0].ports = None;
        let subsets = desired_subsets(&svc, &[&a, &b]);
        assert_eq!(subsets.len(), 2);
        let with_both = subsets
            .iter()
            .find(|s| s.ports.as_ref().map(|p| p.len()) == Some(2))
            .unwrap();
        assert_eq!(with_both.addresses.as_ref().unwrap()[0].ip, "10.0.0.1");
        let only_raw = subsets
            .iter()
            .find(|s| s.ports.as_ref().map(|p| p.len()) == Some(1))
            .unwrap();
        assert_eq!(only_raw.addresses.as_ref().unwrap()[0].ip, "10.0.0.2");
        assert_eq!(only_raw.ports.as_ref().unwrap()[0].port, 9090);
    }

    #[test]
    fn terminal_pods_follow_restart_policy() {
        let mut p = pod("a", Some("10.0.0.1"), false);
        p.status.as_mut().unwrap().phase = Some("Failed".into());
        assert!(should_pod_be_in_endpoints(&p, false));
        p.spec.as_mut().unwrap().restart_policy = Some("Never".into());
        assert!(!should_pod_be_in_endpoints(&p, false));
        p.spec.as_mut().unwrap().restart_policy = Some("OnFailure".into());
        assert!(should_pod_be_in_endpoints(&p, false));
    }

    #[test]
    fn kubernetes_service_and_selectorless_are_skipped() {
        let mut svc = service(vec![named_port()]);
        assert!(manages(&svc));
        svc.metadata.name = Some("kubernetes".into());
        assert!(!manages(&svc));
        let mut svc2 = service(vec![]);
        svc2.spec.as_mut().unwrap().selector = None;
        assert!(!manages(&svc2));
    }

    #[test]
    fn headless_label_and_hostname() {
        let mut svc = service(vec![]);
        svc.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        assert_eq!(
            endpoints_labels(&svc)
                .get(HEADLESS_LABEL)
                .map(String::as_str),
            Some("")
        );
        let mut p = pod("a", Some("10.0.0.1"), true);
        p.spec.as_mut().unwrap().hostname = Some("h0".into());
        p.spec.as_mut().unwrap().subdomain = Some("web".into());
        let subsets = desired_subsets(&svc, &[&p]);
        assert_eq!(subsets.len(), 1);
        assert!(subsets[0].ports.is_none());
        assert_eq!(
            subsets[0].addresses.as_ref().unwrap()[0]
                .hostname
                .as_deref(),
            Some("h0")
        );
    }
}
