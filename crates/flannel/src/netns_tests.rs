//! Real network tests (root): three "nodes", each a network namespace
//! `rk3sh-flannel-<n>` with an uplink `eth0` (veth into a bridge in the namespace
//! `rk3sh-flannel-sw`) and a "pod" namespace `rk3sh-flannel-p<n>` behind a veth on the
//! node's podCIDR (as cni0 would hold it). The crate's planning and kernel code
//! programs each node; TCP between the pod namespaces proves the path, over VXLAN and
//! over host-gw. Every namespace is deleted by a Drop guard, also on failure. Skipped
//! with "SKIP" when not root or `ip`/`nft` is missing.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, NodeSpec};
use kube::api::ObjectMeta;

use crate::kernel::{Kernel, VxlanConfig};
use crate::plan::{self, Ipv4Net, Mac, VXLAN_DEVICE};
use crate::{masq, Backend};

const SW: &str = "rk3sh-flannel-sw";
const NODES: u8 = 3;

fn node_ns(n: u8) -> String {
    format!("rk3sh-flannel-{n}")
}
fn pod_ns(n: u8) -> String {
    format!("rk3sh-flannel-p{n}")
}
fn node_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 99, 0, n)
}
fn pod_cidr(n: u8) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 42, n - 1, 0), 24).unwrap()
}
fn pod_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 42, n - 1, 5)
}
fn cluster() -> Ipv4Net {
    "10.42.0.0/16".parse().unwrap()
}

pub(crate) fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub(crate) fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn ns_sh(ns: &str, args: &[&str]) -> String {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    sh(&v)
}

/// Deletes every namespace of the test when dropped.
struct Namespaces;

impl Namespaces {
    fn all() -> Vec<String> {
        let mut v = vec![SW.to_string()];
        for n in 1..=NODES {
            v.push(node_ns(n));
            v.push(pod_ns(n));
        }
        v
    }
    fn delete_all() {
        for ns in Self::all() {
            let _ = Command::new("ip")
                .args(["netns", "del", &ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        Self::delete_all();
    }
}

fn build_topology() -> Namespaces {
    Namespaces::delete_all();
    for ns in Namespaces::all() {
        sh(&["ip", "netns", "add", &ns]);
    }
    let guard = Namespaces;
    for ns in Namespaces::all() {
        ns_sh(&ns, &["ip", "link", "set", "lo", "up"]);
    }
    ns_sh(SW, &["ip", "link", "add", "br0", "type", "bridge"]);
    ns_sh(SW, &["ip", "link", "set", "br0", "up"]);
    for n in 1..=NODES {
        let node = node_ns(n);
        let pod = pod_ns(n);
        let sw_end = format!("vn{n}");
        sh(&[
            "ip", "-n", SW, "link", "add", &sw_end, "type", "veth", "peer", "name", "eth0",
            "netns", &node,
        ]);
        ns_sh(SW, &["ip", "link", "set", &sw_end, "master", "br0", "up"]);
        ns_sh(
            &node,
            &[
                "ip",
                "addr",
                "add",
                &format!("{}/24", node_ip(n)),
                "dev",
                "eth0",
            ],
        );
        ns_sh(&node, &["ip", "link", "set", "eth0", "up"]);
        ns_sh(&node, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        sh(&[
            "ip", "-n", &node, "link", "add", "vpod", "type", "veth", "peer", "name", "eth0",
            "netns", &pod,
        ]);
        let gw = Ipv4Addr::from(u32::from(pod_cidr(n).network()) + 1);
        ns_sh(
            &node,
            &["ip", "addr", "add", &format!("{gw}/24"), "dev", "vpod"],
        );
        ns_sh(&node, &["ip", "link", "set", "vpod", "up"]);
        ns_sh(
            &pod,
            &[
                "ip",
                "addr",
                "add",
                &format!("{}/24", pod_ip(n)),
                "dev",
                "eth0",
            ],
        );
        ns_sh(&pod, &["ip", "link", "set", "eth0", "up"]);
        ns_sh(
            &pod,
            &["ip", "route", "add", "default", "via", &gw.to_string()],
        );
    }
    guard
}

/// Runs `f` on a thread inside the named namespace (sockets it creates stay there).
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = PathBuf::from("/run/netns").join(ns);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: setns on this thread only.
        assert_eq!(
            unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        f()
    })
    .join()
    .unwrap()
}

/// Connects from namespace `from` to `to:port` where a listener in namespace `at`
/// waits; returns the source address the listener saw, or None when unreachable.
fn tcp_source(from: &str, at: &str, to: Ipv4Addr, port: u16) -> Option<SocketAddr> {
    let addr = SocketAddr::from((to, port));
    let listener = in_netns(at, move || TcpListener::bind(addr).unwrap());
    let conn = in_netns(from, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2))
    });
    let _c = conn.ok()?;
    let (_s, peer) = listener.accept().unwrap();
    Some(peer)
}

fn tx_packets(ns: &str, dev: &str) -> u64 {
    ns_sh(
        ns,
        &[
            "cat",
            &format!("/sys/class/net/{dev}/statistics/tx_packets"),
        ],
    )
    .trim()
    .parse()
    .unwrap()
}

fn kernel(n: u8) -> Kernel {
    Kernel::in_netns(&PathBuf::from("/run/netns").join(node_ns(n))).unwrap()
}

fn node_object(n: u8, ann: BTreeMap<String, String>) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(format!("node{n}")),
            annotations: Some(ann),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(pod_cidr(n).to_string()),
            ..Default::default()
        }),
        status: None,
    }
}

/// Plans and applies node `n`'s entries for `nodes`; returns the applied desired state
/// after checking the kernel holds exactly it.
async fn program(
    k: &Kernel,
    n: u8,
    nodes: &[Node],
    backend: Backend,
    vx: Option<u32>,
) -> plan::NetworkState {
    let peers = plan::peers(nodes, &format!("node{n}"), pod_cidr(n), cluster(), backend);
    let desired = plan::desired_state(backend, &peers);
    let current = k.current_state(vx, cluster(), pod_cidr(n)).await.unwrap();
    k.apply(&plan::diff(&desired, &current), vx).await.unwrap();
    let after = k.current_state(vx, cluster(), pod_cidr(n)).await.unwrap();
    assert_eq!(after, desired, "node{n}: kernel state after apply");
    desired
}

#[tokio::test]
async fn pods_reach_each_other_over_vxlan_and_host_gw() {
    if !is_root() || !have("ip") || !have("nft") {
        eprintln!("SKIP pods_reach_each_other_over_vxlan_and_host_gw: needs root, ip and nft");
        return;
    }
    let _ns = build_topology();

    // Before any programming: no route to another node's pods.
    assert_eq!(tcp_source(&pod_ns(1), &pod_ns(2), pod_ip(2), 7001), None);

    // VXLAN: each node's device, then its annotations, then every node's peers.
    let kernels: Vec<Kernel> = (1..=NODES).map(kernel).collect();
    let mut devices: Vec<(u32, Mac)> = Vec::new();
    let mut nodes = Vec::new();
    for n in 1..=NODES {
        let k = &kernels[usize::from(n - 1)];
        let up = k.uplink(node_ip(n), None).await.unwrap();
        assert_eq!((up.name.as_str(), up.mtu), ("eth0", 1500));
        let cfg = VxlanConfig {
            uplink_index: up.index,
            local_ip: node_ip(n),
            mtu: crate::pod_mtu(Backend::Vxlan, up.mtu),
            address: pod_cidr(n).network(),
        };
        let dev = k.ensure_vxlan(&cfg).await.unwrap();
        // Idempotent: the same device (index and MAC) the second time.
        assert_eq!(k.ensure_vxlan(&cfg).await.unwrap(), dev);
        assert!(
            !k.tx_checksum(VXLAN_DEVICE).unwrap(),
            "tx checksum offload is off"
        );
        let details = ns_sh(
            &node_ns(n),
            &["ip", "-d", "addr", "show", "dev", VXLAN_DEVICE],
        );
        assert!(details.contains("vxlan id 1 "), "{details}");
        assert!(
            details.contains(&format!("local {}", node_ip(n))),
            "{details}"
        );
        assert!(details.contains("dstport 8472"), "{details}");
        assert!(details.contains("nolearning"), "{details}");
        assert!(details.contains("mtu 1450"), "{details}");
        assert!(
            details.contains(&format!("inet {}/32", pod_cidr(n).network())),
            "{details}"
        );
        devices.push(dev);
        nodes.push(node_object(
            n,
            plan::own_annotations(Backend::Vxlan, Some(dev.1), node_ip(n), None),
        ));
    }
    for n in 1..=NODES {
        let i = usize::from(n - 1);
        let st = program(&kernels[i], n, &nodes, Backend::Vxlan, Some(devices[i].0)).await;
        assert_eq!(st.routes.len(), usize::from(NODES - 1));
    }
    let routes = ns_sh(&node_ns(1), &["ip", "route", "show", "dev", VXLAN_DEVICE]);
    assert!(
        routes.contains("10.42.1.0/24 via 10.42.1.0 onlink"),
        "{routes}"
    );
    let fdb = ns_sh(&node_ns(1), &["bridge", "fdb", "show", "dev", VXLAN_DEVICE]);
    assert!(
        fdb.contains(&format!("{} dst 10.99.0.2 self permanent", devices[1].1)),
        "{fdb}"
    );
    let neigh = ns_sh(&node_ns(1), &["ip", "neigh", "show", "dev", VXLAN_DEVICE]);
    assert!(
        neigh.contains(&format!("10.42.1.0 lladdr {} PERMANENT", devices[1].1)),
        "{neigh}"
    );

    // Masquerade on node 1: pod -> outside the cluster CIDR is masqueraded, pod -> pod
    // keeps the pod's address.
    let prefix: Vec<String> = ["ip", "netns", "exec", &node_ns(1)]
        .iter()
        .map(|s| s.to_string())
        .collect();
    masq::apply(&prefix, &masq::render(cluster(), pod_cidr(1))).unwrap();
    masq::apply(&prefix, &masq::render(cluster(), pod_cidr(1))).unwrap();

    let before = tx_packets(&node_ns(1), VXLAN_DEVICE);
    let src = tcp_source(&pod_ns(1), &pod_ns(2), pod_ip(2), 7002);
    assert_eq!(
        src.map(|s| s.ip()),
        Some(pod_ip(1).into()),
        "pod 1 -> pod 2 over VXLAN, source kept"
    );
    let src = tcp_source(&pod_ns(1), &pod_ns(3), pod_ip(3), 7003);
    assert_eq!(
        src.map(|s| s.ip()),
        Some(pod_ip(1).into()),
        "pod 1 -> pod 3 over VXLAN"
    );
    let src = tcp_source(&pod_ns(3), &pod_ns(2), pod_ip(2), 7004);
    assert_eq!(
        src.map(|s| s.ip()),
        Some(pod_ip(3).into()),
        "pod 3 -> pod 2 over VXLAN"
    );
    assert!(
        tx_packets(&node_ns(1), VXLAN_DEVICE) > before,
        "traffic went through flannel.1"
    );
    let src = tcp_source(&pod_ns(1), &node_ns(2), node_ip(2), 7005);
    assert_eq!(
        src.map(|s| s.ip()),
        Some(node_ip(1).into()),
        "pod -> outside is masqueraded"
    );

    // Node 3 leaves; node 1 restarts (a fresh Kernel) and reconciles: node 3's entries
    // are gone, node 2's stay.
    let k1 = kernel(1);
    let (idx, mac) = devices[0];
    let up = k1.uplink(node_ip(1), Some("eth0")).await.unwrap();
    let cfg = VxlanConfig {
        uplink_index: up.index,
        local_ip: node_ip(1),
        mtu: 1450,
        address: pod_cidr(1).network(),
    };
    assert_eq!(
        k1.ensure_vxlan(&cfg).await.unwrap(),
        (idx, mac),
        "restart keeps the device"
    );
    let st = program(&k1, 1, &nodes[..2], Backend::Vxlan, Some(idx)).await;
    assert_eq!(st.routes.len(), 1);
    let fdb = ns_sh(&node_ns(1), &["bridge", "fdb", "show", "dev", VXLAN_DEVICE]);
    assert!(!fdb.contains("10.99.0.3"), "{fdb}");
    let neigh = ns_sh(&node_ns(1), &["ip", "neigh", "show", "dev", VXLAN_DEVICE]);
    assert!(!neigh.contains("10.42.2.0"), "{neigh}");
    assert_eq!(tcp_source(&pod_ns(1), &pod_ns(3), pod_ip(3), 7006), None);
    assert!(tcp_source(&pod_ns(1), &pod_ns(2), pod_ip(2), 7007).is_some());

    // host-gw: the VXLAN device goes (with its entries), routes via node IPs come.
    let mut hg_nodes = Vec::new();
    for n in 1..=NODES {
        assert!(kernels[usize::from(n - 1)]
            .delete_link(VXLAN_DEVICE)
            .await
            .unwrap());
        hg_nodes.push(node_object(
            n,
            plan::own_annotations(Backend::HostGw, None, node_ip(n), None),
        ));
    }
    for n in 1..=NODES {
        program(
            &kernels[usize::from(n - 1)],
            n,
            &hg_nodes,
            Backend::HostGw,
            None,
        )
        .await;
    }
    let routes = ns_sh(&node_ns(1), &["ip", "route"]);
    assert!(
        routes.contains("10.42.1.0/24 via 10.99.0.2 dev eth0"),
        "{routes}"
    );
    let src = tcp_source(&pod_ns(1), &pod_ns(2), pod_ip(2), 7008);
    assert_eq!(
        src.map(|s| s.ip()),
        Some(pod_ip(1).into()),
        "pod 1 -> pod 2 over host-gw"
    );
    let src = tcp_source(&pod_ns(2), &pod_ns(3), pod_ip(3), 7009);
    assert_eq!(
        src.map(|s| s.ip()),
        Some(pod_ip(2).into()),
        "pod 2 -> pod 3 over host-gw"
    );
    // Node 2 leaves: its route goes from node 1.
    program(
        &kernels[0],
        1,
        &[hg_nodes[0].clone(), hg_nodes[2].clone()],
        Backend::HostGw,
        None,
    )
    .await;
    let routes = ns_sh(&node_ns(1), &["ip", "route"]);
    assert!(!routes.contains("10.42.1.0/24"), "{routes}");
    assert_eq!(tcp_source(&pod_ns(1), &pod_ns(2), pod_ip(2), 7010), None);
}
