//! The pod network across nodes, compatible with flannel: each node's podCIDR is
//! reachable from every other node, over VXLAN (flannel's `vxlan` backend, the
//! default) or plain routes (`host-gw`, nodes on one L2 segment); `none` leaves the
//! pod network to the user's own CNI.
//!
//! Runs beside the node agent as a Kubernetes API client acting as the node: it
//! publishes this node's flannel annotations (`flannel.alpha.coreos.com/*`, as
//! flannel's kube subnet manager writes them, so flannel nodes and rk3s nodes peer),
//! watches every Node, and keeps the kernel's per-peer entries equal to what the Nodes
//! say: for VXLAN, the device `flannel.1` (VNI 1, UDP 8472, learning off, MTU = uplink
//! MTU - 50, tx checksum offload off, the podCIDR's network address /32) and per peer a
//! route `<podCIDR> via <peer VTEP> onlink dev flannel.1`, a permanent neighbour entry
//! and a permanent FDB entry; for host-gw, a route `<podCIDR> via <peer node IP>`.
//! Pod traffic leaving the cluster CIDR is masqueraded (table `ip rk3s-flannel`);
//! pod -> pod keeps its source address.
//!
//! Invariants: planning ([`plan`]) is pure and owns every rule; the I/O ([`kernel`],
//! [`masq`]) only carries plans out. Entries of peers that are gone (also those left
//! from before a restart) are removed; entries the kernel holds that are not ours
//! (other devices' routes, routes outside the cluster CIDR) are never touched.
//! Depends on `rk3s-core` (CIDRs) only among our crates.

pub mod ethtool;
pub mod kernel;
pub mod masq;
pub mod plan;
mod runner;

#[cfg(test)]
mod netns_tests;
#[cfg(test)]
mod run_tests;

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

pub use kernel::Kernel;
pub use plan::{Ipv4Net, Mac, NetworkState, Peer, Plan};
pub use runner::{run, run_with};

/// The pod network backend (`--flannel-backend`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Backend {
    /// VXLAN tunnels between nodes (flannel's default).
    #[default]
    Vxlan,
    /// Routes to each peer's podCIDR via its node IP (nodes on one L2 segment).
    HostGw,
    /// No pod network across nodes: the user brings a CNI.
    None,
}

impl Backend {
    /// The name used in `--flannel-backend` and the `backend-type` annotation.
    pub fn as_str(&self) -> &'static str {
        match self {
            Backend::Vxlan => "vxlan",
            Backend::HostGw => "host-gw",
            Backend::None => "none",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Backend {
    type Err = FlannelError;
    fn from_str(s: &str) -> Result<Self, FlannelError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "vxlan" => Ok(Backend::Vxlan),
            "host-gw" => Ok(Backend::HostGw),
            "none" => Ok(Backend::None),
            _ => Err(FlannelError::InvalidBackend(s.to_string())),
        }
    }
}

/// How the pod network runs on this node.
#[derive(Clone, Debug)]
pub struct FlannelOptions {
    /// This node's name.
    pub node_name: String,
    /// The node IP: the VXLAN local address and the `public-ip` annotation peers use.
    pub node_ip: Ipv4Addr,
    /// Published as `public-ip-overwrite` (k3s sets it from `--node-external-ip` with
    /// `--flannel-external-ip`): peers tunnel to it instead of `node_ip`.
    pub public_ip_overwrite: Option<Ipv4Addr>,
    /// The cluster's pod network (`--cluster-cidr`; the first IPv4 entry is used).
    pub cluster_cidr: String,
    /// The backend.
    pub backend: Backend,
    /// The uplink interface (`--flannel-iface`); default: the one holding `node_ip`.
    pub iface: Option<String>,
    /// Masquerade pod traffic leaving the cluster CIDR (flannel's `--ip-masq`, on in
    /// k3s). When on, the node's CNI bridge must not masquerade itself (`ipMasq:
    /// false`), or pod -> pod traffic across nodes loses its source address.
    pub masquerade: bool,
    /// How often the kernel entries are re-read and repaired with no Node change.
    pub resync_period: Duration,
}

impl FlannelOptions {
    /// Options with k3s's defaults (VXLAN, masquerade on, resync every minute).
    pub fn new(node_name: &str, node_ip: Ipv4Addr, cluster_cidr: &str) -> Self {
        FlannelOptions {
            node_name: node_name.to_string(),
            node_ip,
            public_ip_overwrite: None,
            cluster_cidr: cluster_cidr.to_string(),
            backend: Backend::Vxlan,
            iface: None,
            masquerade: true,
            resync_period: Duration::from_secs(60),
        }
    }
}

/// The MTU pods should use on a node whose uplink has `uplink_mtu` (what flannel
/// hands its CNI plugin as `FLANNEL_MTU`): VXLAN takes 50 bytes.
pub fn pod_mtu(backend: Backend, uplink_mtu: u32) -> u32 {
    match backend {
        Backend::Vxlan => uplink_mtu.saturating_sub(plan::VXLAN_OVERHEAD),
        Backend::HostGw | Backend::None => uplink_mtu,
    }
}

/// Removes what the pod network put on this host, for `rk3s killall`: the VXLAN device
/// `flannel.1` (its routes, neighbour and FDB entries go with it) and the masquerade
/// table. host-gw routes stay (they die with the peers' podCIDRs' next hops being
/// unused; k3s's killall leaves them too). Blocking; call outside a Tokio runtime or
/// from `spawn_blocking`. Absent pieces are success.
pub fn cleanup() -> Result<(), FlannelError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let k = Kernel::new()?;
        k.delete_link(plan::VXLAN_DEVICE).await
    })?;
    masq::cleanup()
}

/// Errors of the pod network.
#[derive(Debug, thiserror::Error)]
pub enum FlannelError {
    /// An unknown backend name.
    #[error("unsupported flannel backend {0:?}: use vxlan, host-gw or none")]
    InvalidBackend(String),
    /// A CIDR that is not IPv4 `a.b.c.d/len`.
    #[error("invalid IPv4 CIDR {0:?}")]
    InvalidCidr(String),
    /// A MAC address that is not `xx:xx:xx:xx:xx:xx`.
    #[error("invalid MAC address {0:?}")]
    InvalidMac(String),
    /// The uplink interface could not be found.
    #[error("flannel uplink: {0}")]
    Uplink(String),
    /// A netlink request failed.
    #[error("netlink: {0}")]
    Netlink(String),
    /// The ethtool ioctl failed.
    #[error("ethtool: {0}")]
    Ethtool(String),
    /// `nft` failed.
    #[error("nft: {0}")]
    Nft(String),
    /// A system call failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The API server refused or failed a request.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// This node's podCIDR changed while running (start again to take the new one).
    #[error("the node's podCIDR changed from {old} to {new}")]
    PodCidrChanged {
        /// The podCIDR at start.
        old: String,
        /// The podCIDR now.
        new: String,
    },
    /// The Node watch ended.
    #[error("the Node watch ended")]
    WatchEnded,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names() {
        assert_eq!("vxlan".parse::<Backend>().unwrap(), Backend::Vxlan);
        assert_eq!("host-gw".parse::<Backend>().unwrap(), Backend::HostGw);
        assert_eq!("none".parse::<Backend>().unwrap(), Backend::None);
        assert_eq!("VXLAN".parse::<Backend>().unwrap(), Backend::Vxlan);
        let e = "wireguard-native".parse::<Backend>().unwrap_err();
        assert!(e.to_string().contains("use vxlan, host-gw or none"));
        assert_eq!(Backend::default(), Backend::Vxlan);
        for b in [Backend::Vxlan, Backend::HostGw, Backend::None] {
            assert_eq!(b.to_string().parse::<Backend>().unwrap(), b);
        }
    }

    #[test]
    fn mtu() {
        assert_eq!(pod_mtu(Backend::Vxlan, 1500), 1450);
        assert_eq!(pod_mtu(Backend::HostGw, 1500), 1500);
        assert_eq!(pod_mtu(Backend::Vxlan, 10), 0);
    }
}
