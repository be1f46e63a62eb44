//! Stale UDP flows (upstream kube-proxy's conntrack cleanup). A UDP "connection" through
//! a Service is a conntrack entry whose reply comes from the endpoint it was DNATed to;
//! while packets keep flowing it never expires, so a client (a resolver reusing its
//! socket) would keep talking to an endpoint that is gone. When an endpoint leaves a UDP
//! service port, the entries from the port's virtual IPs (and NodePort) to that endpoint
//! are deleted, so the next packet is balanced again.
//!
//! [`udp_flows`] and [`removed`] are pure; [`delete`] runs `conntrack -D` (from Debian's
//! `conntrack` package; when it is missing nothing is deleted and one warning says so).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use crate::model::{Protocol, ProxiedService};

/// Where a UDP flow enters a service port and the endpoint it is sent to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UdpFlow {
    /// To a virtual IP (ClusterIP, external IP, LoadBalancer IP) and port.
    Vip {
        /// The virtual IP.
        vip: IpAddr,
        /// The service port.
        port: u16,
        /// The endpoint's address.
        endpoint: IpAddr,
    },
    /// To the NodePort on any local address.
    NodePort {
        /// The node port.
        port: u16,
        /// The endpoint's address.
        endpoint: IpAddr,
    },
}

/// Every UDP flow target a Service's rules can create.
pub fn udp_flows(svc: &ProxiedService) -> BTreeSet<UdpFlow> {
    let mut out = BTreeSet::new();
    for p in svc.ports.iter().filter(|p| p.protocol == Protocol::Udp) {
        let vips = std::iter::once(p.cluster_ip)
            .chain(p.external_ips.iter().copied())
            .chain(p.load_balancer_vips.iter().copied());
        let vips: Vec<IpAddr> = vips.collect();
        for e in &p.endpoints {
            for vip in &vips {
                out.insert(UdpFlow::Vip {
                    vip: *vip,
                    port: p.port,
                    endpoint: e.ip,
                });
            }
            if p.node_port != 0 {
                out.insert(UdpFlow::NodePort {
                    port: p.node_port,
                    endpoint: e.ip,
                });
            }
        }
    }
    out
}

/// The flows of `before` that `after` no longer has (an endpoint left, or the port or
/// Service went away).
pub fn removed(before: &BTreeSet<UdpFlow>, after: &BTreeSet<UdpFlow>) -> Vec<UdpFlow> {
    before.difference(after).cloned().collect()
}

/// The `conntrack` arguments that delete one flow's entries.
pub fn delete_args(flow: &UdpFlow) -> Vec<String> {
    let family = |ip: &IpAddr| if ip.is_ipv6() { "ipv6" } else { "ipv4" };
    match flow {
        UdpFlow::Vip {
            vip,
            port,
            endpoint,
        } => vec![
            "-D".into(),
            "-f".into(),
            family(vip).into(),
            "-p".into(),
            "udp".into(),
            "--orig-dst".into(),
            vip.to_string(),
            "--dport".into(),
            port.to_string(),
            "--reply-src".into(),
            endpoint.to_string(),
        ],
        UdpFlow::NodePort { port, endpoint } => vec![
            "-D".into(),
            "-f".into(),
            family(endpoint).into(),
            "-p".into(),
            "udp".into(),
            "--dport".into(),
            port.to_string(),
            "--reply-src".into(),
            endpoint.to_string(),
        ],
    }
}

/// Deletes the conntrack entries of `flows` (blocking: call it off the async threads).
/// "No entries" is not an error; a missing `conntrack` binary is reported once.
pub fn delete(flows: &[UdpFlow]) {
    static MISSING: std::sync::Once = std::sync::Once::new();
    for f in flows {
        let status = Command::new("conntrack")
            .args(delete_args(f))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() || s.code() == Some(1) => {
                tracing::debug!(flow = ?f, "deleted stale UDP conntrack entries")
            }
            Ok(s) => tracing::warn!(flow = ?f, code = ?s.code(), "conntrack -D failed"),
            Err(e) => {
                MISSING.call_once(|| tracing::warn!(error = %e, "cannot run conntrack (apt-get install conntrack): stale UDP flows to removed endpoints are not cleared"));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, ServiceKey, ServicePort};

    fn port(protocol: Protocol, eps: &[&str], node_port: u16) -> ServicePort {
        ServicePort {
            service: ServiceKey {
                namespace: "kube-system".into(),
                name: "dns".into(),
            },
            port_name: "dns".into(),
            protocol,
            cluster_ip: "10.43.0.10".parse().unwrap(),
            port: 53,
            node_port,
            external_ips: vec!["192.0.2.9".parse().unwrap()],
            load_balancer_vips: vec![],
            load_balancer_source_ranges: vec![],
            affinity_timeout: None,
            external_policy_local: false,
            internal_policy_local: false,
            endpoints: eps
                .iter()
                .map(|ip| Endpoint {
                    ip: ip.parse().unwrap(),
                    port: 53,
                    local: true,
                    ready: true,
                    serving: true,
                    terminating: false,
                })
                .collect(),
        }
    }

    fn svc(ports: Vec<ServicePort>) -> ProxiedService {
        ProxiedService {
            key: ServiceKey {
                namespace: "kube-system".into(),
                name: "dns".into(),
            },
            ports,
            health_check_node_port: None,
        }
    }

    #[test]
    fn a_removed_udp_endpoint_is_cleared_from_every_vip_and_the_node_port() {
        let before = udp_flows(&svc(vec![
            port(Protocol::Udp, &["10.42.0.5", "10.42.0.6"], 30053),
            port(Protocol::Tcp, &["10.42.0.5"], 0),
        ]));
        let after = udp_flows(&svc(vec![
            port(Protocol::Udp, &["10.42.0.6"], 30053),
            port(Protocol::Tcp, &[], 0),
        ]));
        let gone = removed(&before, &after);
        let e: IpAddr = "10.42.0.5".parse().unwrap();
        assert_eq!(
            gone,
            vec![
                UdpFlow::Vip {
                    vip: "10.43.0.10".parse().unwrap(),
                    port: 53,
                    endpoint: e
                },
                UdpFlow::Vip {
                    vip: "192.0.2.9".parse().unwrap(),
                    port: 53,
                    endpoint: e
                },
                UdpFlow::NodePort {
                    port: 30053,
                    endpoint: e
                },
            ],
            "TCP endpoints are never cleared (conntrack follows TCP state)"
        );
        assert_eq!(
            delete_args(&gone[0]).join(" "),
            "-D -f ipv4 -p udp --orig-dst 10.43.0.10 --dport 53 --reply-src 10.42.0.5"
        );
        assert_eq!(
            delete_args(&gone[2]).join(" "),
            "-D -f ipv4 -p udp --dport 30053 --reply-src 10.42.0.5"
        );
        assert!(removed(&after, &after).is_empty());
        assert_eq!(
            removed(&after, &BTreeSet::new()).len(),
            after.len(),
            "a deleted Service clears all its flows"
        );
    }
}
