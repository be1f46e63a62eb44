//! The agent configuration the server hands out at `/v1-rk3s/config`.

use serde::{Deserialize, Serialize};

/// What an agent must know of the cluster to run its node: the field names are k3s's
/// (`config.Control`, encoded by Go with its field names), so tools that read k3s's
/// `/v1-k3s/config` read ours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AgentConfig {
    /// The pod network (`--cluster-cidr`), e.g. `10.42.0.0/16`.
    #[serde(rename = "ClusterIPRange")]
    pub cluster_cidr: String,
    /// The Service network (`--service-cidr`), e.g. `10.43.0.0/16`.
    #[serde(rename = "ServiceIPRange")]
    pub service_cidr: String,
    /// The cluster DNS Service IP, e.g. `10.43.0.10`.
    #[serde(rename = "ClusterDNS")]
    pub cluster_dns: String,
    /// The cluster domain, e.g. `cluster.local`.
    #[serde(rename = "ClusterDomain")]
    pub cluster_domain: String,
    /// The pod network backend between nodes: `vxlan`, `host-gw` or `none`.
    #[serde(rename = "FlannelBackend")]
    pub flannel_backend: String,
    /// `--disable-kube-proxy`: agents run no Service proxy.
    #[serde(rename = "DisableKubeProxy")]
    pub disable_kube_proxy: bool,
    /// `--disable-network-policy`: agents enforce no NetworkPolicy.
    #[serde(rename = "DisableNPC")]
    pub disable_network_policy: bool,
    /// `--disable coredns`: agents answer no cluster DNS.
    #[serde(rename = "DisableClusterDNS", default)]
    pub disable_cluster_dns: bool,
    /// The NodePort range (`--service-node-port-range`), e.g. `30000-32767`.
    #[serde(rename = "ServiceNodePortRange", default)]
    pub service_node_port_range: String,
    /// `--disable traefik` / `--disable ingress`: agents serve no Ingress (rk3s's own).
    #[serde(rename = "DisableIngress", default)]
    pub disable_ingress: bool,
    /// `--disable local-storage`: agents provision no local-path volumes (rk3s's own).
    #[serde(rename = "DisableLocalStorage", default)]
    pub disable_local_storage: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_with_k3s_field_names_and_reads_them_back() {
        let c = AgentConfig {
            cluster_cidr: "10.42.0.0/16".into(),
            service_cidr: "10.43.0.0/16".into(),
            cluster_dns: "10.43.0.10".into(),
            cluster_domain: "cluster.local".into(),
            flannel_backend: "vxlan".into(),
            disable_kube_proxy: false,
            disable_network_policy: true,
            disable_cluster_dns: false,
            service_node_port_range: "30000-32767".into(),
            disable_ingress: false,
            disable_local_storage: true,
        };
        let v = serde_json::to_value(&c).expect("encode");
        assert_eq!(v["ClusterIPRange"], "10.42.0.0/16");
        assert_eq!(v["ServiceIPRange"], "10.43.0.0/16");
        assert_eq!(v["ClusterDNS"], "10.43.0.10");
        assert_eq!(v["DisableNPC"], true);
        let back: AgentConfig = serde_json::from_value(v).expect("decode");
        assert_eq!(back, c);
        // Fields rk3s added later default when an older server leaves them out.
        let old: AgentConfig = serde_json::from_str(
            r#"{"ClusterIPRange":"a","ServiceIPRange":"b","ClusterDNS":"c","ClusterDomain":"d",
                "FlannelBackend":"vxlan","DisableKubeProxy":false,"DisableNPC":false}"#,
        )
        .expect("decode old");
        assert!(!old.disable_cluster_dns);
    }
}
