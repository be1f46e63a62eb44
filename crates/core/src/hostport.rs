//! Host ports of pods and upstream's conflict rule between them (`HostPortInfo`), one
//! implementation for the scheduler's `NodePorts` filter and the node's admission.

use k8s_openapi::api::core::v1::Pod;

/// One host port a pod asks for: `hostIP` (`0.0.0.0`, every address, when empty), the
/// protocol (`TCP` when empty) and the port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// Host address, `0.0.0.0` for all.
    pub ip: String,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// The port (> 0).
    pub port: i32,
}

impl HostPort {
    /// Upstream's conflict rule: same protocol and port, and the same address or either
    /// of them on every address.
    pub fn conflicts(&self, other: &HostPort) -> bool {
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip == other.ip || self.ip == "0.0.0.0" || other.ip == "0.0.0.0")
    }
}

/// The host ports of a pod's containers and init containers, as upstream's
/// `GetHostPorts` (ports without a `hostPort` take none).
pub fn pod_host_ports(pod: &Pod) -> Vec<HostPort> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let or = |v: &Option<String>, d: &str| {
        v.clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| d.to_string())
    };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|h| *h > 0)?;
            Some(HostPort {
                ip: or(&p.host_ip, "0.0.0.0"),
                protocol: or(&p.protocol, "TCP"),
                port,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodSpec};

    fn hp(ip: &str, protocol: &str, port: i32) -> HostPort {
        HostPort {
            ip: ip.into(),
            protocol: protocol.into(),
            port,
        }
    }

    #[test]
    fn conflicts_as_upstream() {
        assert!(hp("0.0.0.0", "TCP", 80).conflicts(&hp("10.0.0.1", "TCP", 80)));
        assert!(hp("10.0.0.1", "TCP", 80).conflicts(&hp("10.0.0.1", "TCP", 80)));
        assert!(!hp("10.0.0.1", "TCP", 80).conflicts(&hp("10.0.0.2", "TCP", 80)));
        assert!(!hp("0.0.0.0", "TCP", 80).conflicts(&hp("0.0.0.0", "UDP", 80)));
        assert!(!hp("0.0.0.0", "TCP", 80).conflicts(&hp("0.0.0.0", "TCP", 81)));
    }

    #[test]
    fn ports_of_containers_and_init_containers_with_defaults() {
        let port = |host: Option<i32>, ip: Option<&str>, proto: Option<&str>| ContainerPort {
            container_port: 8080,
            host_port: host,
            host_ip: ip.map(String::from),
            protocol: proto.map(String::from),
            ..Default::default()
        };
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(vec![port(Some(80), None, None), port(None, None, None)]),
                    ..Default::default()
                }],
                init_containers: Some(vec![Container {
                    name: "i".into(),
                    ports: Some(vec![port(Some(53), Some("10.0.0.1"), Some("UDP"))]),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            pod_host_ports(&pod),
            vec![hp("0.0.0.0", "TCP", 80), hp("10.0.0.1", "UDP", 53)]
        );
        assert!(pod_host_ports(&Pod::default()).is_empty());
    }
}
