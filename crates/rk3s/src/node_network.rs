//! The per-node network services that run beside the node agent: the Service proxy
//! (`rk3s-proxy`), the cluster DNS server (`rk3s-dns`) and the NetworkPolicy enforcer
//! (`rk3s-netpol`). Each is a Kubernetes API client acting as the node; each is
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
}

/// Starts the enabled services as background tasks.
pub fn spawn(client: kube::Client, opts: NodeNetworkOptions) {
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
        let c = client.clone();
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
        let c = client.clone();
        supervise("cluster DNS", move || {
            rk3s_dns::run(c.clone(), dopts.clone())
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
        let c = client;
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
