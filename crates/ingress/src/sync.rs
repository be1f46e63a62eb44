//! What the controller writes to the API (pure parts first, tested; the calls last):
//! - the node's EndpointSlice of the `kube-system/rk3s-ingress` Service: one slice per
//!   node and address family, named after the node, owned by the Service, with the
//!   node's IPs as ready endpoints and the ports `web` and `websecure`, so the Service's
//!   endpoints show where the ingress listens (and the Service proxy sends LoadBalancer
//!   and ClusterIP traffic of that Service to a node's listener);
//! - `status.loadBalancer.ingress` of each served Ingress = the Service's
//!   `status.loadBalancer.ingress` (every node computes the same value; written only
//!   when different);
//! - Warning Events on Ingresses that could not be served whole.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{LoadBalancerIngress, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::{Ingress, IngressLoadBalancerIngress, IngressPortStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams};

use crate::routes::SERVICE_NAME_LABEL;

/// The field manager (and `managed-by` label value) of what the controller writes.
pub const MANAGER: &str = "rk3s-ingress";
/// The EndpointSlice label naming the controller that manages a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// The value of that label on the ingress's slices.
pub const MANAGED_BY: &str = "rk3s-ingress.rk3s.io";
/// The name of the HTTP port of the Service and its slices (Traefik's entrypoint name).
pub const WEB_PORT_NAME: &str = "web";
/// The name of the HTTPS port.
pub const WEBSECURE_PORT_NAME: &str = "websecure";

/// The name of a node's slice for one address family (`rk3s-ingress-<node>`, `-v6` for
/// IPv6), within the 253 characters of a name.
pub fn slice_name(service: &str, node: &str, v6: bool) -> String {
    let suffix = if v6 { "-v6" } else { "" };
    let mut name = format!("{service}-{node}");
    if name.len() + suffix.len() > 253 {
        name.truncate(253 - suffix.len());
        while name.ends_with(['-', '.']) {
            name.pop();
        }
    }
    name.push_str(suffix);
    name
}

/// The slices this node keeps for the Service `svc`: one per address family of
/// `node_ips`, endpoints = those IPs.
pub fn desired_slices(
    svc: &Service,
    node: &str,
    node_ips: &[IpAddr],
    web_port: u16,
    websecure_port: u16,
) -> Vec<EndpointSlice> {
    let (Some(ns), Some(name), Some(uid)) = (
        svc.metadata.namespace.as_deref(),
        svc.metadata.name.as_deref(),
        svc.metadata.uid.as_deref(),
    ) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for v6 in [false, true] {
        let ips: Vec<&IpAddr> = node_ips.iter().filter(|ip| ip.is_ipv6() == v6).collect();
        if ips.is_empty() {
            continue;
        }
        let labels: BTreeMap<String, String> = [
            (SERVICE_NAME_LABEL.to_string(), name.to_string()),
            (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
        ]
        .into();
        out.push(EndpointSlice {
            metadata: ObjectMeta {
                name: Some(slice_name(name, node, v6)),
                namespace: Some(ns.to_string()),
                labels: Some(labels),
                owner_references: Some(vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Service".into(),
                    name: name.to_string(),
                    uid: uid.to_string(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]),
                ..Default::default()
            },
            address_type: if v6 { "IPv6" } else { "IPv4" }.into(),
            endpoints: ips
                .iter()
                .map(|ip| Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        serving: Some(true),
                        terminating: Some(false),
                    }),
                    node_name: Some(node.to_string()),
                    ..Default::default()
                })
                .collect(),
            ports: Some(vec![
                EndpointPort {
                    name: Some(WEB_PORT_NAME.into()),
                    port: Some(i32::from(web_port)),
                    protocol: Some("TCP".into()),
                    app_protocol: None,
                },
                EndpointPort {
                    name: Some(WEBSECURE_PORT_NAME.into()),
                    port: Some(i32::from(websecure_port)),
                    protocol: Some("TCP".into()),
                    app_protocol: None,
                },
            ]),
        });
    }
    out
}

/// Whether `current` already holds what `desired` sets (fields the server defaults are
/// not compared).
pub fn slice_up_to_date(current: &EndpointSlice, desired: &EndpointSlice) -> bool {
    let labels_ok = desired
        .metadata
        .labels
        .iter()
        .flatten()
        .all(|(k, v)| current.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v));
    let owners = |s: &EndpointSlice| -> Vec<String> {
        s.metadata
            .owner_references
            .iter()
            .flatten()
            .map(|o| o.uid.clone())
            .collect()
    };
    let eps = |s: &EndpointSlice| -> Vec<(Vec<String>, Option<String>, Option<bool>)> {
        s.endpoints
            .iter()
            .map(|e| {
                (
                    e.addresses.clone(),
                    e.node_name.clone(),
                    e.conditions.as_ref().and_then(|c| c.ready),
                )
            })
            .collect()
    };
    let ports = |s: &EndpointSlice| -> Vec<(Option<String>, Option<i32>, String)> {
        s.ports
            .iter()
            .flatten()
            .map(|p| {
                (
                    p.name.clone(),
                    p.port,
                    p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                )
            })
            .collect()
    };
    labels_ok
        && owners(current) == owners(desired)
        && current.address_type == desired.address_type
        && eps(current) == eps(desired)
        && ports(current) == ports(desired)
}

/// The load-balancer status every served Ingress gets: the Service's.
pub fn desired_status(svc: Option<&Service>) -> Vec<IngressLoadBalancerIngress> {
    let lbs: &[LoadBalancerIngress] = svc
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_deref())
        .unwrap_or(&[]);
    lbs.iter()
        .map(|l| IngressLoadBalancerIngress {
            hostname: l.hostname.clone(),
            ip: l.ip.clone(),
            ports: l.ports.as_ref().map(|ps| {
                ps.iter()
                    .map(|p| IngressPortStatus {
                        port: p.port,
                        protocol: p.protocol.clone(),
                        error: p.error.clone(),
                    })
                    .collect()
            }),
        })
        .collect()
}

/// Whether an Ingress's status differs from `desired` (unset and empty are equal).
pub fn status_differs(ing: &Ingress, desired: &[IngressLoadBalancerIngress]) -> bool {
    let current: &[IngressLoadBalancerIngress] = ing
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_deref())
        .unwrap_or(&[]);
    current != desired
}

/// What a status write is remembered by: the Ingress's generation and the value
/// written.
pub type StatusMark = (Option<i64>, Vec<IngressLoadBalancerIngress>);

/// Whether to write `desired` into an Ingress's status, given the mark of the last
/// write (`None`: never written). Only when it differs and either nothing was written
/// yet, the Ingress's spec changed (generation) or `desired` changed: a status someone
/// else wrote since is not overwritten again and again (no fight with other writers,
/// as upstream's controllers, which write on their own changes).
pub fn should_write_status(
    ing: &Ingress,
    desired: &[IngressLoadBalancerIngress],
    last: Option<&StatusMark>,
) -> bool {
    status_differs(ing, desired)
        && last.is_none_or(|(generation, written)| {
            *generation != ing.metadata.generation || written.as_slice() != desired
        })
}

/// Writes an Ingress's `status.loadBalancer.ingress` (merge patch on `/status`).
pub async fn patch_status(
    client: &kube::Client,
    ns: &str,
    name: &str,
    desired: &[IngressLoadBalancerIngress],
) -> Result<(), kube::Error> {
    let api: Api<Ingress> = Api::namespaced(client.clone(), ns);
    let value = if desired.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::to_value(desired).unwrap_or(serde_json::Value::Null)
    };
    let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": value}}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

/// Creates or updates a slice (server-side apply, forced: the slice is this node's).
pub async fn apply_slice(client: &kube::Client, slice: &EndpointSlice) -> Result<(), kube::Error> {
    let ns = slice.metadata.namespace.as_deref().unwrap_or("default");
    let name = slice.metadata.name.as_deref().unwrap_or_default();
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let mut body = serde_json::to_value(slice).map_err(kube::Error::SerdeError)?;
    if let Some(o) = body.as_object_mut() {
        o.insert("apiVersion".into(), "discovery.k8s.io/v1".into());
        o.insert("kind".into(), "EndpointSlice".into());
    }
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{LoadBalancerStatus, PortStatus, ServiceStatus};
    use k8s_openapi::api::networking::v1::{IngressLoadBalancerStatus, IngressStatus};

    fn service() -> Service {
        Service {
            metadata: ObjectMeta {
                namespace: Some("kube-system".into()),
                name: Some("rk3s-ingress".into()),
                uid: Some("u1".into()),
                ..Default::default()
            },
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(vec![LoadBalancerIngress {
                        ip: Some("192.0.2.1".into()),
                        ip_mode: Some("VIP".into()),
                        ports: Some(vec![PortStatus {
                            port: 80,
                            protocol: "TCP".into(),
                            error: None,
                        }]),
                        ..Default::default()
                    }]),
                }),
                conditions: None,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn slices_per_family() {
        let ips: Vec<IpAddr> = vec![
            "192.0.2.1".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
            "192.0.2.2".parse().unwrap(),
        ];
        let s = desired_slices(&service(), "node-a", &ips, 80, 443);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].metadata.name.as_deref(), Some("rk3s-ingress-node-a"));
        assert_eq!(s[0].address_type, "IPv4");
        assert_eq!(s[0].endpoints.len(), 2);
        assert_eq!(s[0].endpoints[1].addresses, vec!["192.0.2.2".to_string()]);
        assert_eq!(s[0].endpoints[0].node_name.as_deref(), Some("node-a"));
        assert_eq!(
            s[0].metadata.labels.as_ref().unwrap()[SERVICE_NAME_LABEL],
            "rk3s-ingress"
        );
        assert_eq!(
            s[0].metadata.owner_references.as_ref().unwrap()[0].uid,
            "u1"
        );
        let ports: Vec<_> = s[0]
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| (p.name.clone().unwrap(), p.port.unwrap()))
            .collect();
        assert_eq!(
            ports,
            vec![("web".to_string(), 80), ("websecure".to_string(), 443)]
        );
        assert_eq!(
            s[1].metadata.name.as_deref(),
            Some("rk3s-ingress-node-a-v6")
        );
        assert_eq!(s[1].address_type, "IPv6");
        // A Service without uid (not created yet) gets no slice.
        let mut svc = service();
        svc.metadata.uid = None;
        assert!(desired_slices(&svc, "n", &ips, 80, 443).is_empty());
        let long = "n".repeat(260);
        assert!(slice_name("rk3s-ingress", &long, true).len() <= 253);
    }

    #[test]
    fn slice_comparison_ignores_server_defaults() {
        let ips: Vec<IpAddr> = vec!["192.0.2.1".parse().unwrap()];
        let want = desired_slices(&service(), "n", &ips, 80, 443).remove(0);
        let mut cur = want.clone();
        cur.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("extra".into(), "1".into());
        cur.metadata.resource_version = Some("5".into());
        assert!(slice_up_to_date(&cur, &want));
        cur.endpoints[0].addresses = vec!["192.0.2.9".into()];
        assert!(!slice_up_to_date(&cur, &want));
        let mut cur = want.clone();
        cur.ports.as_mut().unwrap()[0].port = Some(8080);
        assert!(!slice_up_to_date(&cur, &want));
    }

    #[test]
    fn status_writes_do_not_fight_other_writers() {
        let lb = |ip: &str| IngressLoadBalancerIngress {
            ip: Some(ip.into()),
            ..Default::default()
        };
        let mut ing = Ingress::default();
        ing.metadata.generation = Some(1);
        let desired = vec![lb("192.0.2.2")];
        assert!(should_write_status(&ing, &desired, None), "first write");
        let mark: StatusMark = (Some(1), desired.clone());
        // Someone else set another address: left alone...
        ing.status = Some(IngressStatus {
            load_balancer: Some(IngressLoadBalancerStatus {
                ingress: Some(vec![lb("203.0.113.1")]),
            }),
        });
        assert!(!should_write_status(&ing, &desired, Some(&mark)));
        // ... until the spec or the load balancer's addresses change.
        let moved = vec![lb("192.0.2.3")];
        assert!(should_write_status(&ing, &moved, Some(&mark)));
        ing.metadata.generation = Some(2);
        assert!(should_write_status(&ing, &desired, Some(&mark)));
        // Equal already: nothing to write.
        ing.status = Some(IngressStatus {
            load_balancer: Some(IngressLoadBalancerStatus {
                ingress: Some(desired.clone()),
            }),
        });
        assert!(!should_write_status(&ing, &desired, None));
    }

    #[test]
    fn status_from_service() {
        let svc = service();
        let want = desired_status(Some(&svc));
        assert_eq!(want.len(), 1);
        assert_eq!(want[0].ip.as_deref(), Some("192.0.2.1"));
        assert_eq!(want[0].ports.as_ref().unwrap()[0].port, 80);
        let mut ing = Ingress::default();
        assert!(status_differs(&ing, &want));
        assert!(!status_differs(&ing, &desired_status(None)));
        ing.status = Some(IngressStatus {
            load_balancer: Some(IngressLoadBalancerStatus {
                ingress: Some(want.clone()),
            }),
        });
        assert!(!status_differs(&ing, &want));
        assert!(status_differs(&ing, &[]));
    }
}
