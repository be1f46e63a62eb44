//! Pure planning: Nodes -> peers -> the entries the kernel should hold -> the changes
//! that take the kernel from what it holds to that. No I/O here, so every rule is
//! unit-tested without privileges.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use k8s_openapi::api::core::v1::Node;

use crate::{Backend, FlannelError};

/// Annotation: the backend a node runs (`vxlan`, `host-gw`).
pub const ANNOTATION_BACKEND_TYPE: &str = "flannel.alpha.coreos.com/backend-type";
/// Annotation: the backend's data (`{"VNI":1,"VtepMAC":"..."}` for VXLAN, `null` for host-gw).
pub const ANNOTATION_BACKEND_DATA: &str = "flannel.alpha.coreos.com/backend-data";
/// Annotation: `"true"` on nodes whose subnet comes from `spec.podCIDR` (flannel's kube
/// subnet manager); nodes without it are not peers.
pub const ANNOTATION_KUBE_SUBNET_MANAGER: &str = "flannel.alpha.coreos.com/kube-subnet-manager";
/// Annotation: the node's address peers tunnel or route to.
pub const ANNOTATION_PUBLIC_IP: &str = "flannel.alpha.coreos.com/public-ip";
/// Annotation: an address that overrides `public-ip` (set from the node's external IP).
pub const ANNOTATION_PUBLIC_IP_OVERWRITE: &str = "flannel.alpha.coreos.com/public-ip-overwrite";

/// The VXLAN device (flannel's `flannel.<VNI>`).
pub const VXLAN_DEVICE: &str = "flannel.1";
/// The VXLAN network identifier.
pub const VXLAN_VNI: u32 = 1;
/// The VXLAN UDP port (the Linux default, flannel's default).
pub const VXLAN_PORT: u16 = 8472;
/// Bytes VXLAN adds to each packet over IPv4 (outer IP 20 + UDP 8 + VXLAN 8 + Ethernet 14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// An IPv4 network: a network address (host bits zero) and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Net {
    network: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Net {
    /// The network containing `ip` with `prefix` bits (host bits are cleared).
    /// `None` when `prefix` is over 32.
    pub fn new(ip: Ipv4Addr, prefix: u8) -> Option<Self> {
        (prefix <= 32).then(|| Ipv4Net {
            network: Ipv4Addr::from(u32::from(ip) & mask(prefix)),
            prefix,
        })
    }

    /// The network address (`10.42.1.0` of `10.42.1.0/24`): flannel's VTEP address of
    /// the node owning the subnet, and the gateway peers route the subnet through.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// True when `ip` is inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.network)
    }

    /// True when all of `other` is inside.
    pub fn contains_net(&self, other: &Ipv4Net) -> bool {
        other.prefix >= self.prefix && self.contains(other.network)
    }

    /// True when the two networks share an address.
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        self.contains_net(other) || other.contains_net(self)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

impl FromStr for Ipv4Net {
    type Err = FlannelError;
    fn from_str(s: &str) -> Result<Self, FlannelError> {
        let bad = || FlannelError::InvalidCidr(s.to_string());
        let cidr = rk3s_core::Cidr::parse(s.trim()).map_err(|_| bad())?;
        match cidr.addr() {
            std::net::IpAddr::V4(ip) => Ipv4Net::new(ip, cidr.prefix()).ok_or_else(bad),
            std::net::IpAddr::V6(_) => Err(bad()),
        }
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// An Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// From the bytes a netlink attribute holds (`None` unless exactly 6).
    pub fn from_slice(b: &[u8]) -> Option<Mac> {
        <[u8; 6]>::try_from(b).ok().map(Mac)
    }

    /// True for 00:00:00:00:00:00 (the VXLAN "default destination" FDB key).
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
}

impl FromStr for Mac {
    type Err = FlannelError;
    fn from_str(s: &str) -> Result<Self, FlannelError> {
        let bad = || FlannelError::InvalidMac(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in out.iter_mut() {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// Another node as the pod network sees it (flannel's "lease").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The Node's name.
    pub node_name: String,
    /// Its `spec.podCIDR`.
    pub pod_cidr: Ipv4Net,
    /// The address tunnels (VXLAN) or routes (host-gw) go to: `public-ip-overwrite`,
    /// else `public-ip`.
    pub public_ip: Ipv4Addr,
    /// Its VXLAN device's MAC (VXLAN backend only).
    pub vtep_mac: Option<Mac>,
}

/// The `backend-data` of a VXLAN node, as flannel writes it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct VxlanData {
    #[serde(rename = "VNI")]
    vni: u32,
    #[serde(rename = "VtepMAC")]
    vtep_mac: String,
}

/// The Node's peer entry for `backend`, or why it is not a peer (no podCIDR, not
/// managed by the kube subnet manager, another backend, bad annotations).
pub fn peer_from_node(node: &Node, backend: Backend) -> Result<Peer, String> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let ann = node.metadata.annotations.as_ref();
    let get = |k: &str| ann.and_then(|a| a.get(k)).map(String::as_str);
    if get(ANNOTATION_KUBE_SUBNET_MANAGER) != Some("true") {
        return Err(format!(
            "no {ANNOTATION_KUBE_SUBNET_MANAGER}=true annotation"
        ));
    }
    let cidr = node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_deref())
        .ok_or("no spec.podCIDR")?;
    let pod_cidr: Ipv4Net = cidr.parse().map_err(|e: FlannelError| e.to_string())?;
    let ip = get(ANNOTATION_PUBLIC_IP_OVERWRITE)
        .filter(|s| !s.is_empty())
        .or(get(ANNOTATION_PUBLIC_IP))
        .ok_or("no public-ip annotation")?;
    let public_ip: Ipv4Addr = ip
        .parse()
        .map_err(|_| format!("public-ip {ip:?} is not an IPv4 address"))?;
    let btype = get(ANNOTATION_BACKEND_TYPE).unwrap_or_default();
    if btype != backend.as_str() {
        return Err(format!(
            "backend-type {btype:?}, this node runs {:?}",
            backend.as_str()
        ));
    }
    let vtep_mac = match backend {
        Backend::Vxlan => {
            let data = get(ANNOTATION_BACKEND_DATA).ok_or("no backend-data annotation")?;
            let d: VxlanData =
                serde_json::from_str(data).map_err(|e| format!("backend-data {data:?}: {e}"))?;
            if d.vni != VXLAN_VNI {
                return Err(format!("VNI {} (this node uses {VXLAN_VNI})", d.vni));
            }
            Some(d.vtep_mac.parse::<Mac>().map_err(|e| e.to_string())?)
        }
        Backend::HostGw | Backend::None => None,
    };
    Ok(Peer {
        node_name: name,
        pod_cidr,
        public_ip,
        vtep_mac,
    })
}

/// The peers among `nodes` for `backend`: every node but `own_node` that
/// [`peer_from_node`] accepts, whose podCIDR lies in `cluster_cidr` and overlaps neither
/// `own_cidr` nor an earlier peer's (by name). Sorted by node name.
pub fn peers<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    own_node: &str,
    own_cidr: Ipv4Net,
    cluster_cidr: Ipv4Net,
    backend: Backend,
) -> Vec<Peer> {
    let mut all: Vec<Peer> = Vec::new();
    for n in nodes {
        let name = n.metadata.name.as_deref().unwrap_or_default();
        if name == own_node {
            continue;
        }
        match peer_from_node(n, backend) {
            Ok(p) => all.push(p),
            Err(why) => tracing::debug!(node = name, %why, "not a pod network peer"),
        }
    }
    all.sort_by(|a, b| a.node_name.cmp(&b.node_name));
    let mut out: Vec<Peer> = Vec::new();
    for p in all {
        if !cluster_cidr.contains_net(&p.pod_cidr) {
            tracing::warn!(node = %p.node_name, pod_cidr = %p.pod_cidr, %cluster_cidr, "peer podCIDR outside the cluster CIDR; ignored");
            continue;
        }
        if p.pod_cidr.overlaps(&own_cidr) || out.iter().any(|q| q.pod_cidr.overlaps(&p.pod_cidr)) {
            tracing::warn!(node = %p.node_name, pod_cidr = %p.pod_cidr, "peer podCIDR overlaps another node's; ignored");
            continue;
        }
        out.push(p);
    }
    out
}

/// The annotations this node publishes, as flannel's kube subnet manager writes them.
/// `vtep_mac` is the VXLAN device's MAC (VXLAN backend).
pub fn own_annotations(
    backend: Backend,
    vtep_mac: Option<Mac>,
    public_ip: Ipv4Addr,
    public_ip_overwrite: Option<Ipv4Addr>,
) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    a.insert(
        ANNOTATION_BACKEND_TYPE.to_string(),
        backend.as_str().to_string(),
    );
    let data = match (backend, vtep_mac) {
        (Backend::Vxlan, Some(mac)) => serde_json::to_string(&VxlanData {
            vni: VXLAN_VNI,
            vtep_mac: mac.to_string(),
        })
        .unwrap_or_else(|_| "null".to_string()),
        _ => "null".to_string(),
    };
    a.insert(ANNOTATION_BACKEND_DATA.to_string(), data);
    a.insert(
        ANNOTATION_KUBE_SUBNET_MANAGER.to_string(),
        "true".to_string(),
    );
    a.insert(ANNOTATION_PUBLIC_IP.to_string(), public_ip.to_string());
    if let Some(ip) = public_ip_overwrite {
        a.insert(ANNOTATION_PUBLIC_IP_OVERWRITE.to_string(), ip.to_string());
    }
    a
}

/// The annotations among `wanted` whose value on `node` differs (what to patch).
pub fn annotations_to_patch(
    node: &Node,
    wanted: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let have = node.metadata.annotations.as_ref();
    wanted
        .iter()
        .filter(|(k, v)| have.and_then(|h| h.get(*k)) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A route to a peer's podCIDR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteEntry {
    /// The peer's podCIDR.
    pub dst: Ipv4Net,
    /// VXLAN: the peer's VTEP address (its podCIDR's network address); host-gw: the
    /// peer's node IP.
    pub gateway: Ipv4Addr,
    /// True for `onlink dev flannel.1` (VXLAN); false for a route the kernel resolves
    /// through the gateway's link (host-gw).
    pub via_vxlan: bool,
}

/// A permanent neighbour (ARP) entry on the VXLAN device: peer VTEP IP -> VTEP MAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NeighbourEntry {
    /// The peer's VTEP address.
    pub ip: Ipv4Addr,
    /// The peer's VTEP MAC.
    pub mac: Mac,
}

/// A permanent forwarding entry on the VXLAN device: VTEP MAC -> the peer's node IP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FdbEntry {
    /// The peer's VTEP MAC.
    pub mac: Mac,
    /// The peer's node (public) IP: the outer destination of the tunnel.
    pub dst: Ipv4Addr,
}

/// The per-peer entries of the pod network (wanted, or what the kernel holds).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkState {
    /// Routes to peers' podCIDRs.
    pub routes: BTreeSet<RouteEntry>,
    /// Neighbour entries on the VXLAN device.
    pub neighbours: BTreeSet<NeighbourEntry>,
    /// FDB entries on the VXLAN device.
    pub fdb: BTreeSet<FdbEntry>,
}

/// The entries `peers` need under `backend`.
pub fn desired_state(backend: Backend, peers: &[Peer]) -> NetworkState {
    let mut s = NetworkState::default();
    for p in peers {
        match backend {
            Backend::Vxlan => {
                let Some(mac) = p.vtep_mac else { continue };
                let vtep = p.pod_cidr.network();
                s.routes.insert(RouteEntry {
                    dst: p.pod_cidr,
                    gateway: vtep,
                    via_vxlan: true,
                });
                s.neighbours.insert(NeighbourEntry { ip: vtep, mac });
                s.fdb.insert(FdbEntry {
                    mac,
                    dst: p.public_ip,
                });
            }
            Backend::HostGw => {
                s.routes.insert(RouteEntry {
                    dst: p.pod_cidr,
                    gateway: p.public_ip,
                    via_vxlan: false,
                });
            }
            Backend::None => {}
        }
    }
    s
}

/// Whether a route the kernel holds is one of ours: in the main table, to a network
/// inside `cluster_cidr` other than `own_cidr`, through a gateway, and either on the
/// VXLAN device or (host-gw) on another link. Our VXLAN routes are recognised by their
/// device, host-gw routes by their destination. Returns the entry it stands for.
pub fn classify_route(
    dst: Ipv4Net,
    gateway: Option<Ipv4Addr>,
    on_vxlan_device: bool,
    cluster_cidr: Ipv4Net,
    own_cidr: Ipv4Net,
) -> Option<RouteEntry> {
    let gateway = gateway?;
    if dst == own_cidr || dst.overlaps(&own_cidr) || !cluster_cidr.contains_net(&dst) {
        return None;
    }
    if dst == cluster_cidr {
        return None;
    }
    Some(RouteEntry {
        dst,
        gateway,
        via_vxlan: on_vxlan_device,
    })
}

/// The changes from one [`NetworkState`] to another, in the order they are applied:
/// deletions (routes first, so no route points at a missing neighbour), then additions
/// (FDB and neighbour before the route that uses them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Routes to delete.
    pub delete_routes: Vec<RouteEntry>,
    /// Neighbour entries to delete.
    pub delete_neighbours: Vec<NeighbourEntry>,
    /// FDB entries to delete.
    pub delete_fdb: Vec<FdbEntry>,
    /// FDB entries to add.
    pub add_fdb: Vec<FdbEntry>,
    /// Neighbour entries to add.
    pub add_neighbours: Vec<NeighbourEntry>,
    /// Routes to add.
    pub add_routes: Vec<RouteEntry>,
}

impl Plan {
    /// True when nothing changes.
    pub fn is_empty(&self) -> bool {
        self.delete_routes.is_empty()
            && self.delete_neighbours.is_empty()
            && self.delete_fdb.is_empty()
            && self.add_fdb.is_empty()
            && self.add_neighbours.is_empty()
            && self.add_routes.is_empty()
    }
}

/// What to delete and add so the kernel's `current` entries become `desired`. An entry
/// that changed (a peer's new MAC, node IP or podCIDR) is deleted and added again; a
/// neighbour whose IP stays but whose MAC changes is only added (replaced), as the
/// kernel keys neighbours by IP.
pub fn diff(desired: &NetworkState, current: &NetworkState) -> Plan {
    let add_neighbours: Vec<NeighbourEntry> = desired
        .neighbours
        .difference(&current.neighbours)
        .copied()
        .collect();
    Plan {
        delete_routes: current
            .routes
            .difference(&desired.routes)
            .copied()
            .collect(),
        delete_neighbours: current
            .neighbours
            .difference(&desired.neighbours)
            .filter(|n| !add_neighbours.iter().any(|a| a.ip == n.ip))
            .copied()
            .collect(),
        delete_fdb: current.fdb.difference(&desired.fdb).copied().collect(),
        add_fdb: desired.fdb.difference(&current.fdb).copied().collect(),
        add_neighbours,
        add_routes: desired
            .routes
            .difference(&current.routes)
            .copied()
            .collect(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;
    use kube::api::ObjectMeta;

    pub(crate) fn node(name: &str, cidr: Option<&str>, ann: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                annotations: Some(
                    ann.iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: cidr.map(str::to_string),
                ..Default::default()
            }),
            status: None,
        }
    }

    /// A VXLAN node as flannel annotates it.
    pub(crate) fn vxlan_node(name: &str, cidr: &str, ip: &str, mac: &str) -> Node {
        let data = format!("{{\"VNI\":1,\"VtepMAC\":\"{mac}\"}}");
        node(
            name,
            Some(cidr),
            &[
                (ANNOTATION_BACKEND_TYPE, "vxlan"),
                (ANNOTATION_BACKEND_DATA, &data),
                (ANNOTATION_KUBE_SUBNET_MANAGER, "true"),
                (ANNOTATION_PUBLIC_IP, ip),
            ],
        )
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_contain() {
        let n = net("10.42.1.7/24");
        assert_eq!(n.to_string(), "10.42.1.0/24");
        assert_eq!(n.network(), ip("10.42.1.0"));
        assert!(n.contains(ip("10.42.1.255")));
        assert!(!n.contains(ip("10.42.2.0")));
        assert!(net("10.42.0.0/16").contains_net(&n));
        assert!(!n.contains_net(&net("10.42.0.0/16")));
        assert!(n.overlaps(&net("10.42.0.0/16")));
        assert!(!n.overlaps(&net("10.42.2.0/24")));
        assert!("10.42.0.0".parse::<Ipv4Net>().is_err());
        assert!("10.42.0.0/33".parse::<Ipv4Net>().is_err());
        assert!("fd00::/64".parse::<Ipv4Net>().is_err());
        assert_eq!(net("0.0.0.0/0").to_string(), "0.0.0.0/0");
    }

    #[test]
    fn macs_round_trip() {
        let m: Mac = "0a:1B:2c:3d:4e:5f".parse().unwrap();
        assert_eq!(m.0, [0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]);
        assert_eq!(m.to_string(), "0a:1b:2c:3d:4e:5f");
        assert!("0a:1b:2c:3d:4e".parse::<Mac>().is_err());
        assert!("0a:1b:2c:3d:4e:5f:00".parse::<Mac>().is_err());
        assert!("0a:1b:2c:3d:4e:zz".parse::<Mac>().is_err());
        assert!("0a:1b:2c:3d:4e:5".parse::<Mac>().is_err());
        assert!(Mac([0; 6]).is_zero());
        assert_eq!(Mac::from_slice(&[1, 2, 3]), None);
    }

    #[test]
    fn annotations_match_flannel() {
        let m: Mac = "ae:11:22:33:44:55".parse().unwrap();
        let a = own_annotations(Backend::Vxlan, Some(m), ip("192.0.2.1"), None);
        assert_eq!(
            a.get("flannel.alpha.coreos.com/backend-data").unwrap(),
            r#"{"VNI":1,"VtepMAC":"ae:11:22:33:44:55"}"#
        );
        assert_eq!(
            a.get("flannel.alpha.coreos.com/backend-type").unwrap(),
            "vxlan"
        );
        assert_eq!(
            a.get("flannel.alpha.coreos.com/kube-subnet-manager")
                .unwrap(),
            "true"
        );
        assert_eq!(
            a.get("flannel.alpha.coreos.com/public-ip").unwrap(),
            "192.0.2.1"
        );
        assert!(!a.contains_key(ANNOTATION_PUBLIC_IP_OVERWRITE));
        let h = own_annotations(
            Backend::HostGw,
            None,
            ip("192.0.2.1"),
            Some(ip("198.51.100.1")),
        );
        assert_eq!(h.get(ANNOTATION_BACKEND_TYPE).unwrap(), "host-gw");
        assert_eq!(h.get(ANNOTATION_BACKEND_DATA).unwrap(), "null");
        assert_eq!(
            h.get(ANNOTATION_PUBLIC_IP_OVERWRITE).unwrap(),
            "198.51.100.1"
        );

        // What to patch: only what differs.
        let n = vxlan_node("a", "10.42.0.0/24", "192.0.2.1", "ae:11:22:33:44:55");
        assert!(annotations_to_patch(&n, &a).is_empty());
        let other = own_annotations(Backend::Vxlan, Some(m), ip("192.0.2.9"), None);
        let p = annotations_to_patch(&n, &other);
        assert_eq!(p.len(), 1);
        assert_eq!(p.get(ANNOTATION_PUBLIC_IP).unwrap(), "192.0.2.9");
    }

    #[test]
    fn peers_from_nodes() {
        let own = net("10.42.0.0/24");
        let cluster = net("10.42.0.0/16");
        let mut overwritten = vxlan_node("d", "10.42.3.0/24", "192.0.2.4", "02:00:00:00:00:04");
        overwritten
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(ANNOTATION_PUBLIC_IP_OVERWRITE.into(), "203.0.113.4".into());
        let nodes = vec![
            vxlan_node("me", "10.42.0.0/24", "192.0.2.1", "02:00:00:00:00:01"),
            vxlan_node("c", "10.42.2.0/24", "192.0.2.3", "02:00:00:00:00:03"),
            vxlan_node("b", "10.42.1.0/24", "192.0.2.2", "02:00:00:00:00:02"),
            overwritten,
            // not managed by the kube subnet manager
            node(
                "e",
                Some("10.42.4.0/24"),
                &[(ANNOTATION_PUBLIC_IP, "192.0.2.5")],
            ),
            // no podCIDR yet
            node("f", None, &[(ANNOTATION_KUBE_SUBNET_MANAGER, "true")]),
            // podCIDR taken by b
            vxlan_node("g", "10.42.1.0/24", "192.0.2.7", "02:00:00:00:00:07"),
            // outside the cluster CIDR
            vxlan_node("h", "10.99.0.0/24", "192.0.2.8", "02:00:00:00:00:08"),
            // bad MAC
            vxlan_node("i", "10.42.9.0/24", "192.0.2.9", "nope"),
        ];
        let p = peers(&nodes, "me", own, cluster, Backend::Vxlan);
        let names: Vec<&str> = p.iter().map(|p| p.node_name.as_str()).collect();
        assert_eq!(names, ["b", "c", "d"]);
        assert_eq!(p[0].pod_cidr, net("10.42.1.0/24"));
        assert_eq!(p[0].public_ip, ip("192.0.2.2"));
        assert_eq!(p[0].vtep_mac, Some("02:00:00:00:00:02".parse().unwrap()));
        assert_eq!(p[2].public_ip, ip("203.0.113.4"));
        // A host-gw node is no peer of a VXLAN node and the other way round.
        assert!(peers(&nodes, "me", own, cluster, Backend::HostGw).is_empty());
        let hg = node(
            "x",
            Some("10.42.5.0/24"),
            &[
                (ANNOTATION_BACKEND_TYPE, "host-gw"),
                (ANNOTATION_BACKEND_DATA, "null"),
                (ANNOTATION_KUBE_SUBNET_MANAGER, "true"),
                (ANNOTATION_PUBLIC_IP, "192.0.2.10"),
            ],
        );
        let p = peers([&hg], "me", own, cluster, Backend::HostGw);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].vtep_mac, None);
    }

    #[test]
    fn desired_entries_per_backend() {
        let peer = Peer {
            node_name: "b".into(),
            pod_cidr: net("10.42.1.0/24"),
            public_ip: ip("192.0.2.2"),
            vtep_mac: Some(Mac([2, 0, 0, 0, 0, 2])),
        };
        let v = desired_state(Backend::Vxlan, std::slice::from_ref(&peer));
        assert_eq!(
            v.routes.iter().copied().collect::<Vec<_>>(),
            [RouteEntry {
                dst: net("10.42.1.0/24"),
                gateway: ip("10.42.1.0"),
                via_vxlan: true
            }]
        );
        assert_eq!(
            v.neighbours.iter().copied().collect::<Vec<_>>(),
            [NeighbourEntry {
                ip: ip("10.42.1.0"),
                mac: Mac([2, 0, 0, 0, 0, 2])
            }]
        );
        assert_eq!(
            v.fdb.iter().copied().collect::<Vec<_>>(),
            [FdbEntry {
                mac: Mac([2, 0, 0, 0, 0, 2]),
                dst: ip("192.0.2.2")
            }]
        );
        let h = desired_state(Backend::HostGw, std::slice::from_ref(&peer));
        assert!(h.neighbours.is_empty() && h.fdb.is_empty());
        assert_eq!(
            h.routes.iter().copied().collect::<Vec<_>>(),
            [RouteEntry {
                dst: net("10.42.1.0/24"),
                gateway: ip("192.0.2.2"),
                via_vxlan: false
            }]
        );
        assert_eq!(
            desired_state(Backend::None, &[peer]),
            NetworkState::default()
        );
    }

    #[test]
    fn diff_adds_removes_and_replaces() {
        let b = Peer {
            node_name: "b".into(),
            pod_cidr: net("10.42.1.0/24"),
            public_ip: ip("192.0.2.2"),
            vtep_mac: Some(Mac([2, 0, 0, 0, 0, 2])),
        };
        let c = Peer {
            node_name: "c".into(),
            pod_cidr: net("10.42.2.0/24"),
            public_ip: ip("192.0.2.3"),
            vtep_mac: Some(Mac([2, 0, 0, 0, 0, 3])),
        };
        let both = desired_state(Backend::Vxlan, &[b.clone(), c.clone()]);
        // From nothing: everything is added, nothing deleted.
        let p = diff(&both, &NetworkState::default());
        assert_eq!(p.add_routes.len(), 2);
        assert_eq!(p.add_neighbours.len(), 2);
        assert_eq!(p.add_fdb.len(), 2);
        assert!(p.delete_routes.is_empty());
        // Same state: nothing to do.
        assert!(diff(&both, &both).is_empty());
        // c leaves: its three entries go.
        let only_b = desired_state(Backend::Vxlan, std::slice::from_ref(&b));
        let p = diff(&only_b, &both);
        assert!(p.add_routes.is_empty() && p.add_fdb.is_empty() && p.add_neighbours.is_empty());
        assert_eq!(p.delete_routes[0].dst, c.pod_cidr);
        assert_eq!(p.delete_neighbours[0].ip, ip("10.42.2.0"));
        assert_eq!(p.delete_fdb[0].dst, ip("192.0.2.3"));
        // b's VTEP MAC and node IP change (its agent recreated the device, moved):
        // the FDB entry is replaced, the neighbour replaced in place, the route kept.
        let b2 = Peer {
            public_ip: ip("192.0.2.20"),
            vtep_mac: Some(Mac([2, 0, 0, 0, 0, 0x20])),
            ..b.clone()
        };
        let p = diff(&desired_state(Backend::Vxlan, &[b2]), &only_b);
        assert!(p.delete_routes.is_empty() && p.add_routes.is_empty());
        assert!(p.delete_neighbours.is_empty());
        assert_eq!(p.add_neighbours[0].mac, Mac([2, 0, 0, 0, 0, 0x20]));
        assert_eq!(p.delete_fdb[0].dst, ip("192.0.2.2"));
        assert_eq!(p.add_fdb[0].dst, ip("192.0.2.20"));
        // Its podCIDR changes: old route deleted, new one added.
        let b3 = Peer {
            pod_cidr: net("10.42.7.0/24"),
            ..b
        };
        let p = diff(&desired_state(Backend::Vxlan, &[b3]), &only_b);
        assert_eq!(p.delete_routes[0].dst, net("10.42.1.0/24"));
        assert_eq!(p.add_routes[0].dst, net("10.42.7.0/24"));
        assert_eq!(p.delete_neighbours[0].ip, ip("10.42.1.0"));
        // Switching backend: every VXLAN route goes, host-gw routes come.
        let p = diff(
            &desired_state(Backend::HostGw, std::slice::from_ref(&c)),
            &both,
        );
        assert_eq!(p.delete_routes.len(), 2);
        assert_eq!(p.add_routes.len(), 1);
        assert!(!p.add_routes[0].via_vxlan);
    }

    #[test]
    fn only_our_routes_are_classified() {
        let cluster = net("10.42.0.0/16");
        let own = net("10.42.0.0/24");
        // A VXLAN route of a peer.
        assert_eq!(
            classify_route(
                net("10.42.1.0/24"),
                Some(ip("10.42.1.0")),
                true,
                cluster,
                own
            ),
            Some(RouteEntry {
                dst: net("10.42.1.0/24"),
                gateway: ip("10.42.1.0"),
                via_vxlan: true
            })
        );
        // A host-gw route.
        assert!(classify_route(
            net("10.42.1.0/24"),
            Some(ip("192.0.2.2")),
            false,
            cluster,
            own
        )
        .is_some_and(|r| !r.via_vxlan));
        // The node's own podCIDR (cni0's connected route), routes without a gateway,
        // routes outside the cluster CIDR, the cluster CIDR itself: never ours.
        assert_eq!(
            classify_route(own, Some(ip("10.42.0.1")), false, cluster, own),
            None
        );
        assert_eq!(
            classify_route(net("10.42.1.0/24"), None, true, cluster, own),
            None
        );
        assert_eq!(
            classify_route(
                net("0.0.0.0/0"),
                Some(ip("192.0.2.254")),
                false,
                cluster,
                own
            ),
            None
        );
        assert_eq!(
            classify_route(
                net("10.43.0.0/16"),
                Some(ip("192.0.2.254")),
                false,
                cluster,
                own
            ),
            None
        );
        assert_eq!(
            classify_route(cluster, Some(ip("10.42.0.1")), true, cluster, own),
            None
        );
    }
}
