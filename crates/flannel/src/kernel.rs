//! The kernel side, over rtnetlink: the VXLAN device, what per-peer entries the kernel
//! holds ([`NetworkState`]) and applying a [`Plan`]. A [`Kernel`] is bound to the
//! network namespace it was opened in (its sockets are), so tests open one per
//! namespace and drive several "nodes" from one process.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};

use crate::ethtool;
use crate::plan::{
    classify_route, FdbEntry, Ipv4Net, Mac, NeighbourEntry, NetworkState, Plan, RouteEntry,
    VXLAN_DEVICE, VXLAN_PORT, VXLAN_VNI,
};
use crate::FlannelError;

/// rtnetlink and ioctl sockets in one network namespace.
pub struct Kernel {
    handle: Handle,
    ioctl: OwnedFd,
}

/// What the VXLAN device is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanConfig {
    /// The uplink's interface index (`dev` of the device).
    pub uplink_index: u32,
    /// The node IP: the tunnels' local address.
    pub local_ip: Ipv4Addr,
    /// The device MTU (uplink MTU - 50).
    pub mtu: u32,
    /// The device's address (/32): the node's podCIDR's network address.
    pub address: Ipv4Addr,
}

/// The uplink: the interface peers are reached through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uplink {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// MTU.
    pub mtu: u32,
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> FlannelError {
    let what = what.into();
    move |e| FlannelError::Netlink(format!("{what}: {e}"))
}

/// The errno of a netlink error (positive), if it is one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

fn ioctl_socket() -> Result<OwnedFd, FlannelError> {
    // SAFETY: socket(2) with constant arguments; the fd is owned from here on.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(FlannelError::Io(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Kernel {
    /// Opens the sockets in the calling thread's network namespace. Must be called
    /// inside a Tokio runtime (the netlink connection runs as a task on it).
    pub fn new() -> Result<Kernel, FlannelError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(FlannelError::Io)?;
        tokio::spawn(conn);
        Ok(Kernel {
            handle,
            ioctl: ioctl_socket()?,
        })
    }

    /// Opens the sockets in the network namespace at `netns` (e.g.
    /// `/run/netns/NAME`), from a short-lived thread that enters it; the caller's
    /// namespace is untouched. Must be called inside a Tokio runtime.
    pub fn in_netns(netns: &Path) -> Result<Kernel, FlannelError> {
        let rt = tokio::runtime::Handle::current();
        let path = netns.to_path_buf();
        let t = std::thread::spawn(move || -> Result<Kernel, FlannelError> {
            let f = File::open(&path)?;
            // SAFETY: setns(2) on this thread only, with a namespace fd we hold open.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(FlannelError::Io(std::io::Error::last_os_error()));
            }
            let _rt = rt.enter();
            Kernel::new()
        });
        t.join()
            .map_err(|_| FlannelError::Netlink("netns thread panicked".into()))?
    }

    /// The interface index of `name`, if it exists.
    pub async fn link_index(&self, name: &str) -> Result<Option<u32>, FlannelError> {
        Ok(self.link_by_name(name).await?.map(|l| l.header.index))
    }

    async fn link_by_name(&self, name: &str) -> Result<Option<LinkMessage>, FlannelError> {
        let mut s = self.handle.link().get().match_name(name).execute();
        match s.try_next().await {
            Ok(l) => Ok(l),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(nl(format!("get link {name}"))(e)),
        }
    }

    async fn link_by_index(&self, index: u32) -> Result<Option<LinkMessage>, FlannelError> {
        let mut s = self.handle.link().get().match_index(index).execute();
        match s.try_next().await {
            Ok(l) => Ok(l),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(nl(format!("get link {index}"))(e)),
        }
    }

    /// The uplink: the interface named `iface` (`--flannel-iface`), else the one that
    /// holds `node_ip`.
    pub async fn uplink(
        &self,
        node_ip: Ipv4Addr,
        iface: Option<&str>,
    ) -> Result<Uplink, FlannelError> {
        let link = match iface {
            Some(name) => self
                .link_by_name(name)
                .await?
                .ok_or_else(|| FlannelError::Uplink(format!("no interface named {name:?}")))?,
            None => {
                let mut addrs = self.handle.address().get().execute();
                let mut index = None;
                while let Some(a) = addrs.try_next().await.map_err(nl("list addresses"))? {
                    let holds = a.attributes.iter().any(|at| {
                        matches!(at, AddressAttribute::Address(IpAddr::V4(ip)) | AddressAttribute::Local(IpAddr::V4(ip)) if *ip == node_ip)
                    });
                    if holds {
                        index = Some(a.header.index);
                        break;
                    }
                }
                let index = index.ok_or_else(|| {
                    FlannelError::Uplink(format!("no interface holds the node IP {node_ip}"))
                })?;
                self.link_by_index(index)
                    .await?
                    .ok_or_else(|| FlannelError::Uplink(format!("interface {index} went away")))?
            }
        };
        let mut name = String::new();
        let mut mtu = 1500;
        for a in &link.attributes {
            match a {
                LinkAttribute::IfName(n) => name = n.clone(),
                LinkAttribute::Mtu(m) => mtu = *m,
                _ => {}
            }
        }
        Ok(Uplink {
            index: link.header.index,
            name,
            mtu,
        })
    }

    /// Creates or repairs the VXLAN device `flannel.1` (VNI 1, UDP 8472, learning
    /// off, tx checksum offload off, `cfg.address`/32, up) and returns its index and
    /// MAC. A device whose VNI, local address, port, uplink or learning differ is
    /// deleted and created anew (its MAC changes).
    pub async fn ensure_vxlan(&self, cfg: &VxlanConfig) -> Result<(u32, Mac), FlannelError> {
        if let Some(link) = self.link_by_name(VXLAN_DEVICE).await? {
            if !vxlan_matches(&link, cfg) {
                tracing::info!(
                    device = VXLAN_DEVICE,
                    "VXLAN device has other settings; recreating it"
                );
                self.handle
                    .link()
                    .del(link.header.index)
                    .execute()
                    .await
                    .map_err(nl("delete flannel.1"))?;
            }
        }
        if self.link_by_name(VXLAN_DEVICE).await?.is_none() {
            let msg = LinkVxlan::new(VXLAN_DEVICE, VXLAN_VNI)
                .dev(cfg.uplink_index)
                .local(cfg.local_ip)
                .port(VXLAN_PORT)
                .learning(false)
                .mtu(cfg.mtu)
                .build();
            self.handle
                .link()
                .add(msg)
                .execute()
                .await
                .map_err(nl("create flannel.1"))?;
            tracing::info!(device = VXLAN_DEVICE, vni = VXLAN_VNI, port = VXLAN_PORT, local = %cfg.local_ip, mtu = cfg.mtu, "created the VXLAN device");
        }
        let link = self
            .link_by_name(VXLAN_DEVICE)
            .await?
            .ok_or_else(|| FlannelError::Netlink("flannel.1 vanished after creation".into()))?;
        let index = link.header.index;
        let mtu = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        });
        if mtu != Some(cfg.mtu) {
            self.handle
                .link()
                .change(LinkUnspec::new_with_index(index).mtu(cfg.mtu).build())
                .execute()
                .await
                .map_err(nl("set flannel.1 mtu"))?;
        }
        self.ensure_only_address(index, cfg.address).await?;
        ethtool::set_tx_checksum(&self.ioctl, VXLAN_DEVICE, false)?;
        if !link.header.flags.contains(LinkFlags::Up) {
            self.handle
                .link()
                .change(LinkUnspec::new_with_index(index).up().build())
                .execute()
                .await
                .map_err(nl("set flannel.1 up"))?;
        }
        let link = self
            .link_by_index(index)
            .await?
            .ok_or_else(|| FlannelError::Netlink("flannel.1 vanished".into()))?;
        let mac = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Address(b) => Mac::from_slice(b),
                _ => None,
            })
            .ok_or_else(|| FlannelError::Netlink("flannel.1 has no MAC".into()))?;
        Ok((index, mac))
    }

    /// Whether tx checksum offload is on for `device` (ethtool's `tx-checksumming`).
    pub fn tx_checksum(&self, device: &str) -> Result<bool, FlannelError> {
        ethtool::tx_checksum(&self.ioctl, device)
    }

    async fn ensure_only_address(&self, index: u32, want: Ipv4Addr) -> Result<(), FlannelError> {
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut have = false;
        let mut stale = Vec::new();
        while let Some(a) = s.try_next().await.map_err(nl("list flannel.1 addresses"))? {
            if a.header.family != AddressFamily::Inet {
                continue;
            }
            let ip = a.attributes.iter().find_map(|at| match at {
                AddressAttribute::Local(IpAddr::V4(ip))
                | AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            if ip == Some(want) && a.header.prefix_len == 32 {
                have = true;
            } else {
                stale.push(a);
            }
        }
        for a in stale {
            self.handle
                .address()
                .del(a)
                .execute()
                .await
                .map_err(nl("delete a stale flannel.1 address"))?;
        }
        if !have {
            self.handle
                .address()
                .add(index, IpAddr::V4(want), 32)
                .execute()
                .await
                .map_err(nl("add the flannel.1 address"))?;
        }
        Ok(())
    }

    /// Deletes the link `name` if it exists (the VXLAN device when the backend is not
    /// VXLAN: its routes, neighbours and FDB entries go with it).
    pub async fn delete_link(&self, name: &str) -> Result<bool, FlannelError> {
        let Some(index) = self.link_index(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(nl(format!("delete {name}"))(e)),
        }
    }

    /// The per-peer entries the kernel holds: our routes (see [`classify_route`]) and,
    /// with a VXLAN device `vxlan_index`, its permanent neighbour and FDB entries.
    pub async fn current_state(
        &self,
        vxlan_index: Option<u32>,
        cluster_cidr: Ipv4Net,
        own_cidr: Ipv4Net,
    ) -> Result<NetworkState, FlannelError> {
        let mut st = NetworkState::default();
        let mut routes = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(r) = routes.try_next().await.map_err(nl("list routes"))? {
            if let Some(e) = route_entry(&r, vxlan_index, cluster_cidr, own_cidr) {
                st.routes.insert(e);
            }
        }
        let Some(vx) = vxlan_index else {
            return Ok(st);
        };
        let mut neigh = self.handle.neighbours().get().execute();
        while let Some(n) = neigh.try_next().await.map_err(nl("list neighbours"))? {
            if n.header.ifindex != vx
                || n.header.family != AddressFamily::Inet
                || n.header.state != NeighbourState::Permanent
            {
                continue;
            }
            let (ip, mac) = neighbour_parts(&n);
            if let (Some(IpAddr::V4(ip)), Some(mac)) = (ip, mac) {
                st.neighbours.insert(NeighbourEntry { ip, mac });
            }
        }
        let mut fdb = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute();
        while let Some(n) = fdb.try_next().await.map_err(nl("list fdb"))? {
            if n.header.ifindex != vx || n.header.state != NeighbourState::Permanent {
                continue;
            }
            let (ip, mac) = neighbour_parts(&n);
            if let (Some(IpAddr::V4(dst)), Some(mac)) = (ip, mac) {
                if !mac.is_zero() {
                    st.fdb.insert(FdbEntry { mac, dst });
                }
            }
        }
        Ok(st)
    }

    /// Applies `plan` in its order. Deleting an entry already gone is success. Every
    /// step is tried; the first error is returned after the rest ran.
    pub async fn apply(&self, plan: &Plan, vxlan_index: Option<u32>) -> Result<(), FlannelError> {
        let mut first: Option<FlannelError> = None;
        let mut note = |r: Result<(), FlannelError>| {
            if let Err(e) = r {
                tracing::warn!(error = %e, "pod network: a kernel change failed");
                first.get_or_insert(e);
            }
        };
        for r in &plan.delete_routes {
            note(self.delete_route(r, vxlan_index).await);
        }
        let needs_vx = |what: &str| {
            vxlan_index.ok_or_else(|| FlannelError::Netlink(format!("{what}: no VXLAN device")))
        };
        for n in &plan.delete_neighbours {
            note(match needs_vx("delete neighbour") {
                Ok(vx) => self.delete_neighbour(vx, n).await,
                Err(e) => Err(e),
            });
        }
        for f in &plan.delete_fdb {
            note(match needs_vx("delete fdb") {
                Ok(vx) => self.delete_fdb(vx, f).await,
                Err(e) => Err(e),
            });
        }
        for f in &plan.add_fdb {
            note(match needs_vx("add fdb") {
                Ok(vx) => self
                    .handle
                    .neighbours()
                    .add_bridge(vx, &f.mac.0)
                    .flags(NeighbourFlags::Own)
                    .destination(IpAddr::V4(f.dst))
                    .replace()
                    .execute()
                    .await
                    .map_err(nl(format!("fdb add {} dst {}", f.mac, f.dst))),
                Err(e) => Err(e),
            });
        }
        for n in &plan.add_neighbours {
            note(match needs_vx("add neighbour") {
                Ok(vx) => self
                    .handle
                    .neighbours()
                    .add(vx, IpAddr::V4(n.ip))
                    .link_layer_address(&n.mac.0)
                    .replace()
                    .execute()
                    .await
                    .map_err(nl(format!("neighbour add {} lladdr {}", n.ip, n.mac))),
                Err(e) => Err(e),
            });
        }
        for r in &plan.add_routes {
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(r.dst.network(), r.dst.prefix())
                .gateway(r.gateway);
            if r.via_vxlan {
                match needs_vx("add route") {
                    Ok(vx) => b = b.output_interface(vx).onlink(),
                    Err(e) => {
                        note(Err(e));
                        continue;
                    }
                }
            }
            // proto boot, as `ip route add` and flannel make them.
            let mut m = b.build();
            m.header.protocol = RouteProtocol::Boot;
            note(
                self.handle
                    .route()
                    .add(m)
                    .replace()
                    .execute()
                    .await
                    .map_err(nl(format!("route add {} via {}", r.dst, r.gateway))),
            );
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn delete_route(&self, r: &RouteEntry, vx: Option<u32>) -> Result<(), FlannelError> {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(r.dst.network(), r.dst.prefix())
            .gateway(r.gateway);
        if let (true, Some(vx)) = (r.via_vxlan, vx) {
            b = b.output_interface(vx);
        }
        let mut m = b.build();
        m.header.protocol = RouteProtocol::Unspec;
        m.header.scope = RouteScope::NoWhere;
        match self.handle.route().del(m).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ESRCH) => Ok(()),
            Err(e) => Err(nl(format!("route del {} via {}", r.dst, r.gateway))(e)),
        }
    }

    async fn delete_neighbour(&self, vx: u32, n: &NeighbourEntry) -> Result<(), FlannelError> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.ifindex = vx;
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                n.ip,
            )));
        match self.handle.neighbours().del(m).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(nl(format!("neighbour del {}", n.ip))(e)),
        }
    }

    async fn delete_fdb(&self, vx: u32, f: &FdbEntry) -> Result<(), FlannelError> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = vx;
        m.header.flags = NeighbourFlags::Own;
        m.header.state = NeighbourState::Permanent;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(f.mac.0.to_vec()));
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                f.dst,
            )));
        match self.handle.neighbours().del(m).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(nl(format!("fdb del {} dst {}", f.mac, f.dst))(e)),
        }
    }
}

fn neighbour_parts(n: &NeighbourMessage) -> (Option<IpAddr>, Option<Mac>) {
    let mut ip = None;
    let mut mac = None;
    for a in &n.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                ip = Some(IpAddr::V4(*v4))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                ip = Some(IpAddr::V6(*v6))
            }
            // In AF_BRIDGE (FDB) dumps the VXLAN remote comes as raw bytes.
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                if let Ok(o) = <[u8; 4]>::try_from(b.as_slice()) {
                    ip = Some(IpAddr::V4(Ipv4Addr::from(o)));
                }
            }
            NeighbourAttribute::LinkLayerAddress(b) => mac = Mac::from_slice(b),
            _ => {}
        }
    }
    (ip, mac)
}

fn route_entry(
    r: &RouteMessage,
    vxlan_index: Option<u32>,
    cluster_cidr: Ipv4Net,
    own_cidr: Ipv4Net,
) -> Option<RouteEntry> {
    if r.header.address_family != AddressFamily::Inet || r.header.kind != RouteType::Unicast {
        return None;
    }
    let mut table = u32::from(r.header.table);
    let mut dst = None;
    let mut gw = None;
    let mut oif = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(*ip),
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gw = Some(*ip),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let dst = Ipv4Net::new(dst?, r.header.destination_prefix_length)?;
    let on_vx = vxlan_index.is_some() && oif == vxlan_index;
    classify_route(dst, gw, on_vx, cluster_cidr, own_cidr)
}

fn vxlan_matches(link: &LinkMessage, cfg: &VxlanConfig) -> bool {
    let mut is_vxlan = false;
    let mut data: &[InfoVxlan] = &[];
    for a in &link.attributes {
        if let LinkAttribute::LinkInfo(infos) = a {
            for i in infos {
                match i {
                    LinkInfo::Kind(InfoKind::Vxlan) => is_vxlan = true,
                    LinkInfo::Data(InfoData::Vxlan(d)) => data = d,
                    _ => {}
                }
            }
        }
    }
    let has = |want: &InfoVxlan| data.contains(want);
    is_vxlan
        && has(&InfoVxlan::Id(VXLAN_VNI))
        && has(&InfoVxlan::Local(cfg.local_ip))
        && has(&InfoVxlan::Port(VXLAN_PORT))
        && has(&InfoVxlan::Link(cfg.uplink_index))
        && has(&InfoVxlan::Learning(false))
}
