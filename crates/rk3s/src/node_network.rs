//! The per-node services that run beside the node agent: the pod network across
//! nodes (`rk3s-flannel`), the Service proxy (`rk3s-proxy`), the cluster DNS server
//! (`rk3s-dns`), the NetworkPolicy enforcer (`rk3s-netpol`), the Ingress controller
//! (`rk3s-ingress`, ports 80/443) and the local-path volume provisioner (`rk3s-local-path`). Each is a Kubernetes API client acting as the node; each is
//! restarted with back-off when it stops with an error, and one failing never stops the
//! others.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// The nftables table of the Service proxy (`ip` and `ip6` families).
pub const PROXY_TABLE: &str = "rk3s-proxy";
/// The nftables table of the NetworkPolicy enforcer.
pub const NETPOL_TABLE: &str = "rk3s-netpol";

/// What runs on this node and how.
#[derive(Clone, Debug)]
pub struct NodeNetworkOptions {
    /// The node's name.
    pub node_name: String,
    /// The node's IP: DNS listens on it (port 53), NodePorts and LoadBalancer IPs answer on it.
    pub node_ip: IpAddr,
    /// The cluster's pod network (`--cluster-cidr`).
    pub cluster_cidr: String,
    /// The Service network (`--service-cidr`).
    pub service_cidr: String,
    /// The cluster domain (`--cluster-domain`).
    pub cluster_domain: String,
    /// Run the Service proxy (no `--disable-kube-proxy`).
    pub proxy: bool,
    /// Run the DNS server (no `--disable coredns`).
    pub dns: bool,
    /// Enforce NetworkPolicies (no `--disable-network-policy`).
    pub network_policy: bool,
    /// Upstream resolvers of the DNS server (`--resolv-conf`).
    pub resolv_conf: Option<PathBuf>,
    /// The pod network backend between nodes (`--flannel-backend`).
    pub flannel_backend: rk3s_flannel::Backend,
    /// The uplink of the pod network (`--flannel-iface`).
    pub flannel_iface: Option<String>,
    /// Serve Ingresses on ports 80/443 (no `--disable traefik`/`ingress`).
    pub ingress: bool,
    /// Provision local-path volumes under this folder (`<data-dir>/storage`; None with
    /// `--disable local-storage`).
    pub local_storage: Option<PathBuf>,
}

/// The settings of the node's pod bridge that go with the pod network: with flannel, the
/// bridge does not masquerade (flannel masquerades only what leaves the cluster CIDR) and
/// pods get the uplink's MTU less the tunnel's overhead.
pub async fn pod_network(opts: &NodeNetworkOptions) -> rk3s_kubelet::cni::PodNetwork {
    let IpAddr::V4(ip) = opts.node_ip else {
        return Default::default();
    };
    if opts.flannel_backend == rk3s_flannel::Backend::None {
        return Default::default();
    }
    let uplink_mtu = match rk3s_flannel::Kernel::new() {
        Ok(k) => match k.uplink(ip, opts.flannel_iface.as_deref()).await {
            Ok(u) => u.mtu,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the uplink's MTU; assuming 1500");
                1500
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "netlink unavailable; assuming an MTU of 1500");
            1500
        }
    };
    rk3s_kubelet::cni::PodNetwork {
        ip_masq: false,
        mtu: Some(rk3s_flannel::pod_mtu(opts.flannel_backend, uplink_mtu)),
    }
}

/// The API identities the node's network services act as (k3s's): the Service proxy as
/// `system:kube-proxy` (ClusterRole `system:node-proxier`), DNS and the NetworkPolicy
/// enforcer as `system:rk3s-controller` (ClusterRole `system:rk3s-controller`).
#[derive(Clone)]
pub struct NodeNetworkClients {
    /// The Service proxy's client.
    pub proxy: kube::Client,
    /// The client of cluster DNS, NetworkPolicy and the pod network.
    pub controller: kube::Client,
}

/// Starts the enabled services as background tasks.
pub fn spawn(clients: NodeNetworkClients, opts: NodeNetworkOptions) {
    if let (IpAddr::V4(ip), false) = (
        opts.node_ip,
        opts.flannel_backend == rk3s_flannel::Backend::None,
    ) {
        let mut fopts = rk3s_flannel::FlannelOptions::new(&opts.node_name, ip, &opts.cluster_cidr);
        fopts.backend = opts.flannel_backend;
        fopts.iface = opts.flannel_iface.clone();
        let c = clients.controller.clone();
        supervise("pod network", move || {
            rk3s_flannel::run(c.clone(), fopts.clone())
        });
    }
    if opts.proxy {
        let popts = rk3s_proxy::ProxyOptions {
            node_name: opts.node_name.clone(),
            node_ips: vec![opts.node_ip],
            cluster_cidr: Some(opts.cluster_cidr.clone()),
            service_cidr: Some(opts.service_cidr.clone()),
            table: PROXY_TABLE.to_string(),
            full_resync_period: Duration::from_secs(3600),
            min_sync_interval: Duration::from_millis(10),
        };
        let c = clients.proxy.clone();
        supervise("service proxy", move || {
            rk3s_proxy::run(c.clone(), popts.clone())
        });
    }
    if opts.dns {
        let dopts = rk3s_dns::DnsOptions {
            listen: vec![SocketAddr::new(opts.node_ip, 53)],
            cluster_domain: opts.cluster_domain.clone(),
            resolv_conf: opts.resolv_conf.clone(),
            ttl: 5,
            custom_config: Some(("kube-system".to_string(), "coredns-custom".to_string())),
        };
        let c = clients.controller.clone();
        supervise("cluster DNS", move || {
            rk3s_dns::run(c.clone(), dopts.clone())
        });
    }
    if opts.ingress {
        let iopts = rk3s_ingress::IngressOptions::new(opts.node_name.clone(), vec![opts.node_ip]);
        let c = clients.controller.clone();
        supervise("ingress", move || {
            rk3s_ingress::run(c.clone(), iopts.clone())
        });
    }
    if let Some(path) = &opts.local_storage {
        let lopts = rk3s_local_path::LocalPathOptions::new(&opts.node_name, path.clone());
        let c = clients.controller.clone();
        supervise("local-path provisioner", move || {
            rk3s_local_path::run(c.clone(), lopts.clone())
        });
    }
    if opts.network_policy {
        let nopts = rk3s_netpol::NetpolOptions {
            node_name: opts.node_name.clone(),
            table: NETPOL_TABLE.to_string(),
            full_resync_period: Duration::from_secs(3600),
            min_sync_interval: Duration::from_millis(10),
            builtin_dns_ips: if opts.dns {
                vec![opts.node_ip]
            } else {
                Vec::new()
            },
        };
        let c = clients.controller.clone();
        supervise("network policy", move || {
            rk3s_netpol::run(c.clone(), nopts.clone())
        });
    }
}

/// Runs `start()` until it returns Ok, restarting it after an error with a growing delay.
fn supervise<F, Fut, E>(what: &'static str, start: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    tokio::spawn(async move {
        let mut delay = Duration::from_secs(1);
        loop {
            match start().await {
                Ok(()) => return,
                Err(e) => {
                    tracing::error!(component = what, error = %e, retry_in_s = delay.as_secs(), "stopped; restarting");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    });
}
