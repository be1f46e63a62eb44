//! Real nftables tests: rendered transactions are loaded with `nft -f -` inside network
//! namespaces these tests create (and delete, also on failure), and checked with
//! `nft list table` and real connections. Skipped (with "SKIP") when not root or when
//! `nft` / `ip` are missing.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    ClientIPConfig, Service, ServicePort, ServiceSpec, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rk3s_proxy::model::{
    proxied_service, Cidr, IpFamily, ProxiedService, ServiceKey, SERVICE_NAME_LABEL,
};
use rk3s_proxy::render::RenderConfig;
use rk3s_proxy::sync::{FamilyProxier, SyncKind};
use rk3s_proxy::{Nft, NftRunner};

const TABLE: &str = "rk3s-proxy-test";

fn skip() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: not root");
        return true;
    }
    if !Nft::host().available()
        || Command::new("ip")
            .arg("-V")
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
    {
        eprintln!("SKIP: nft or ip missing");
        return true;
    }
    false
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A network namespace deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!(
            "rk3sh-proxy-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns(name);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.0];
        full.extend_from_slice(args);
        sh(&full)
    }

    fn nft(&self) -> Nft {
        Nft::in_netns(&self.0)
    }

    fn list(&self) -> String {
        self.exec(&["nft", "list", "table", "ip", TABLE])
    }

    /// Runs `f` on a thread inside this namespace (sockets it creates live there).
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a valid namespace fd affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("netns thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run command");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn service(name: &str, cluster_ip: &str, port: i32, node_port: Option<i32>) -> Service {
    Service {
        metadata: ObjectMeta {
            namespace: Some("ns".into()),
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some(
                if node_port.is_some() {
                    "NodePort"
                } else {
                    "ClusterIP"
                }
                .into(),
            ),
            cluster_ip: Some(cluster_ip.into()),
            cluster_ips: Some(vec![cluster_ip.into()]),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                protocol: Some("TCP".into()),
                port,
                node_port,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn slice(service: &str, ips: &[&str], port: i32) -> Arc<EndpointSlice> {
    Arc::new(EndpointSlice {
        metadata: ObjectMeta {
            namespace: Some("ns".into()),
            name: Some(format!("{service}-abc")),
            labels: Some([(SERVICE_NAME_LABEL.to_string(), service.to_string())].into()),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: ips
            .iter()
            .map(|ip| Endpoint {
                addresses: vec![ip.to_string()],
                node_name: Some("node-a".into()),
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                ..Default::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            protocol: Some("TCP".into()),
            port: Some(port),
            ..Default::default()
        }]),
    })
}

fn model(svc: &Service, slices: &[Arc<EndpointSlice>]) -> ProxiedService {
    proxied_service(svc, slices, "node-a", IpFamily::V4)
        .unwrap()
        .unwrap()
}

fn proxier(immediate: bool) -> FamilyProxier {
    let cfg = RenderConfig {
        family: IpFamily::V4,
        cluster_cidr: Cidr::parse("10.42.0.0/16"),
        node_ips: vec![],
        service_cidr: None,
    };
    let mut p = FamilyProxier::new(TABLE, cfg);
    p.set_immediate_chain_delete(immediate);
    p
}

fn full(p: &mut FamilyProxier, nft: &Nft, svcs: &[&ProxiedService]) -> String {
    let plan = p.plan_full(svcs.iter().copied(), Instant::now());
    nft.apply(&plan.script)
        .unwrap_or_else(|e| panic!("{e}\n{}", plan.script));
    let s = plan.script.clone();
    p.commit(plan, Instant::now());
    s
}

fn incremental(
    p: &mut FamilyProxier,
    nft: &Nft,
    changes: &[(ServiceKey, Option<&ProxiedService>)],
) -> String {
    let plan = p.plan_incremental(changes, Instant::now());
    if !plan.script.is_empty() {
        nft.apply(&plan.script)
            .unwrap_or_else(|e| panic!("{e}\n{}", plan.script));
    }
    let s = plan.script.clone();
    p.commit(plan, Instant::now());
    s
}

/// `nft list table` split into its chains/sets/maps: header line -> body.
fn blocks(listing: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut cur: Option<(String, String)> = None;
    for line in listing.lines() {
        let t = line.trim();
        if line.starts_with("\tchain ") || line.starts_with("\tmap ") || line.starts_with("\tset ")
        {
            cur = Some((t.trim_end_matches(" {").to_string(), String::new()));
        } else if line == "\t}" {
            if let Some((k, v)) = cur.take() {
                out.insert(k, v);
            }
        } else if let Some((_, v)) = cur.as_mut() {
            v.push_str(t);
            v.push('\n');
        }
    }
    out
}

#[test]
fn full_then_incremental_changes_only_what_changed() {
    if skip() {
        return;
    }
    let ns = Netns::new();
    let nft = ns.nft();
    let mut p = proxier(true);
    let (sa, sb, sc) = (
        service("a", "10.43.0.1", 80, None),
        service("b", "10.43.0.2", 80, Some(30080)),
        service("c", "10.43.0.3", 53, None),
    );
    let a = model(&sa, &[slice("a", &["10.42.1.1", "10.42.1.2"], 8080)]);
    let b = model(&sb, &[slice("b", &["10.42.2.1"], 8080)]);
    let c = model(&sc, &[]);
    full(&mut p, &nft, &[&a, &b, &c]);
    let before = blocks(&ns.list());
    assert!(
        before
            .keys()
            .any(|k| k.starts_with("chain service-") && k.ends_with("-ns/a/tcp/http")),
        "{before:#?}"
    );
    assert_eq!(
        before
            .keys()
            .filter(|k| k.starts_with("chain endpoint-"))
            .count(),
        3
    );
    let ips = &before["map service-ips"];
    assert!(
        ips.contains("10.43.0.1 . tcp . 80 : goto service-")
            && ips.contains("10.43.0.2 . tcp . 80 : goto service-"),
        "{ips}"
    );
    assert!(before["map service-nodeports"].contains("tcp . 30080 : goto external-"));
    assert!(before["map no-endpoint-services"]
        .contains("10.43.0.3 . tcp . 53 comment \"ns/c:http\" : goto reject-chain"));

    // a gets a third endpoint and c gets its first: only their chains and elements change.
    let a2 = model(
        &sa,
        &[slice("a", &["10.42.1.1", "10.42.1.2", "10.42.1.3"], 8080)],
    );
    let c2 = model(&sc, &[slice("c", &["10.42.3.1"], 5353)]);
    let script = incremental(
        &mut p,
        &nft,
        &[(a.key.clone(), Some(&a2)), (c.key.clone(), Some(&c2))],
    );
    assert!(!script.contains("/b/"), "b untouched:\n{script}");
    let after = blocks(&ns.list());
    for (k, v) in &before {
        if k.contains("-ns/b/") || (k.starts_with("chain endpoint-") && k.contains("-ns/a/")) {
            assert_eq!(after.get(k), Some(v), "{k} changed");
        }
    }
    let a_chain = after
        .iter()
        .find(|(k, _)| k.starts_with("chain service-") && k.ends_with("-ns/a/tcp/http"))
        .unwrap()
        .1;
    assert!(
        a_chain.contains("numgen random mod 3 0 goto endpoint-")
            || a_chain.contains("numgen random mod 3 == 0 goto"),
        "{a_chain}"
    );
    assert!(!after["map no-endpoint-services"].contains("10.43.0.3"));
    assert!(after["map service-ips"].contains("10.43.0.3 . tcp . 53 : goto service-"));
    assert_eq!(
        after
            .keys()
            .filter(|k| k.starts_with("chain endpoint-"))
            .count(),
        5
    );

    // b deleted: all its chains and elements go, in one transaction.
    incremental(&mut p, &nft, &[(b.key.clone(), None)]);
    let after = ns.list();
    assert!(!after.contains("/b/"), "{after}");
    assert!(
        !after.contains("10.43.0.2") && !after.contains("30080"),
        "{after}"
    );
    assert_eq!(p.service_count(), 2);
}

#[test]
fn delayed_stale_chain_deletion_and_failed_transactions() {
    if skip() {
        return;
    }
    let ns = Netns::new();
    let nft = ns.nft();
    let mut p = proxier(false);
    let sa = service("a", "10.43.0.1", 80, None);
    let a = model(&sa, &[slice("a", &["10.42.1.1", "10.42.1.2"], 8080)]);
    full(&mut p, &nft, &[&a]);
    let a1 = model(&sa, &[slice("a", &["10.42.1.1"], 8080)]);
    incremental(&mut p, &nft, &[(a.key.clone(), Some(&a1))]);
    // The endpoint chain of 10.42.1.2 is flushed but still exists for now.
    let listing = ns.list();
    let stale = blocks(&listing)
        .into_iter()
        .find(|(k, _)| k.contains("__10.42.1.2/8080"))
        .expect("stale chain kept");
    assert_eq!(stale.1, "", "stale chain is flushed");
    let deadline = p.next_stale_deadline().unwrap();
    std::thread::sleep(
        deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(10),
    );
    let script = incremental(&mut p, &nft, &[]);
    assert!(script.contains("delete chain"), "{script}");
    assert!(!ns.list().contains("__10.42.1.2/8080"));

    // Someone removes an element behind our back: the next incremental transaction fails
    // as a whole (the kernel keeps the old rules), and the full resync repairs the table.
    ns.exec(&[
        "nft",
        "delete",
        "element",
        "ip",
        TABLE,
        "service-ips",
        "{ 10.43.0.1 . tcp . 80 }",
    ]);
    let before = ns.list();
    let a0 = model(&sa, &[]);
    let plan = p.plan_incremental(&[(a.key.clone(), Some(&a0))], Instant::now());
    assert!(nft.apply(&plan.script).is_err());
    p.failed(&plan);
    assert_eq!(ns.list(), before, "a failed transaction changes nothing");
    assert_eq!(p.next_kind(), SyncKind::Full);
    full(&mut p, &nft, &[&a1]);
    assert!(blocks(&ns.list())["map service-ips"].contains("10.43.0.1 . tcp . 80 : goto service-"));
}

#[test]
fn full_resync_keeps_affinity_entries_and_rebuild_replaces_everything() {
    if skip() {
        return;
    }
    let ns = Netns::new();
    let nft = ns.nft();
    let mut p = proxier(true);
    let mut sa = service("a", "10.43.0.1", 80, None);
    let spec = sa.spec.as_mut().unwrap();
    spec.session_affinity = Some("ClientIP".into());
    spec.session_affinity_config = Some(SessionAffinityConfig {
        client_ip: Some(ClientIPConfig {
            timeout_seconds: Some(600),
        }),
    });
    let a = model(&sa, &[slice("a", &["10.42.1.1"], 8080)]);
    full(&mut p, &nft, &[&a]);
    let listing = ns.list();
    let set = listing
        .lines()
        .find(|l| l.trim_start().starts_with("set affinity-"))
        .expect("affinity set")
        .trim()
        .trim_end_matches(" {")
        .trim_start_matches("set ")
        .to_string();
    assert!(listing.contains("timeout 10m"), "{listing}");
    ns.exec(&["nft", "add", "element", "ip", TABLE, &set, "{ 10.42.9.9 }"]);
    p.request_full();
    full(&mut p, &nft, &[&a]);
    assert!(
        ns.list().contains("10.42.9.9"),
        "a full resync keeps affinity state"
    );

    // A stray chain from an earlier run disappears with a rebuild.
    ns.exec(&["nft", "add", "chain", "ip", TABLE, "leftover"]);
    let mut fresh = proxier(true);
    full(&mut fresh, &nft, &[&a]);
    let listing = ns.list();
    assert!(
        !listing.contains("leftover") && !listing.contains("10.42.9.9"),
        "{listing}"
    );
    rk3s_proxy::cleanup_with(&nft, TABLE).unwrap();
    assert!(!ns.exec(&["nft", "list", "tables"]).contains(TABLE));
    rk3s_proxy::cleanup_with(&nft, TABLE).unwrap();
}

/// Two namespaces joined by a veth pair: `cli` (10.42.0.1, runs the proxy table) and
/// `srv` (10.42.0.2 and 10.42.0.3, runs the backends).
struct Pair {
    cli: Netns,
    srv: Netns,
}

/// A short interface name unique to this process (at most 15 bytes).
fn veth_name(tag: &str) -> String {
    format!(
        "rk{}{tag}{}",
        std::process::id() % 1_000_000,
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

fn pair() -> Pair {
    let cli = Netns::new();
    let srv = Netns::new();
    let veth_cli = veth_name("c");
    let veth_srv = format!("{veth_cli}s");
    sh(&[
        "ip", "link", "add", &veth_cli, "netns", &cli.0, "type", "veth", "peer", "name", &veth_srv,
        "netns", &srv.0,
    ]);
    cli.exec(&["ip", "addr", "add", "10.42.0.1/24", "dev", &veth_cli]);
    cli.exec(&["ip", "link", "set", &veth_cli, "up"]);
    // Service addresses need a route before DNAT (the node's default route in real life).
    cli.exec(&["ip", "route", "add", "default", "via", "10.42.0.2"]);
    srv.exec(&["ip", "addr", "add", "10.42.0.2/24", "dev", &veth_srv]);
    srv.exec(&["ip", "addr", "add", "10.42.0.3/24", "dev", &veth_srv]);
    srv.exec(&["ip", "link", "set", &veth_srv, "up"]);
    Pair { cli, srv }
}

/// Backends answering every connection with their own address (and, with `peer`, the
/// client address they see), until the test ends.
fn backends_with(srv: &Netns, addrs: &[&str], peer: bool) {
    let addrs: Vec<SocketAddr> = addrs.iter().map(|a| a.parse().unwrap()).collect();
    let listeners: Vec<TcpListener> = srv.run(move || {
        addrs
            .iter()
            .map(|a| TcpListener::bind(a).unwrap())
            .collect()
    });
    for l in listeners {
        std::thread::spawn(move || {
            let me = l.local_addr().unwrap().to_string();
            for mut s in l.incoming().flatten() {
                let msg = match s.peer_addr() {
                    Ok(p) if peer => format!("{me} from {}", p.ip()),
                    _ => me.clone(),
                };
                let _ = s.write_all(msg.as_bytes());
            }
        });
    }
}

fn backends(srv: &Netns, addrs: &[&str]) {
    backends_with(srv, addrs, false)
}

/// Connects from `ns` to `addr` (from `source` if given): the backend's answer, or the
/// connect error.
fn connect_from(
    ns: &Netns,
    source: Option<&str>,
    addr: &str,
    timeout: Duration,
) -> Result<String, std::io::Error> {
    let addr: SocketAddr = addr.parse().unwrap();
    let source: Option<std::net::IpAddr> = source.map(|s| s.parse().unwrap());
    ns.run(move || {
        let mut s = match source {
            None => TcpStream::connect_timeout(&addr, timeout)?,
            Some(ip) => {
                // std cannot bind before connecting: do it with libc.
                let sock = socket_bound_to(ip)?;
                connect_socket(sock, addr, timeout)?
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
}

fn connect(cli: &Netns, addr: &str) -> Result<String, std::io::Error> {
    connect_from(cli, None, addr, Duration::from_secs(2))
}

fn socket_bound_to(ip: std::net::IpAddr) -> std::io::Result<i32> {
    let std::net::IpAddr::V4(v4) = ip else {
        return Err(std::io::Error::other("IPv4 only"));
    };
    // SAFETY: plain socket(2)/bind(2) calls on a fresh descriptor with a valid sockaddr_in.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(v4).to_be(),
            },
            sin_zero: [0; 8],
        };
        if libc::bind(
            fd,
            &sa as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        ) != 0
        {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        Ok(fd)
    }
}

fn connect_socket(fd: i32, addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(a) = addr else {
        return Err(std::io::Error::other("IPv4 only"));
    };
    // SAFETY: fd is an open TCP socket we own; the timeval and sockaddr_in are valid.
    unsafe {
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let stream = TcpStream::from_raw_fd(fd);
        if libc::connect(
            fd,
            &sa as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

#[test]
fn traffic_cluster_ip_node_port_reject_and_affinity() {
    if skip() {
        return;
    }
    let Pair { cli, srv } = pair();
    backends(&srv, &["10.42.0.2:8080", "10.42.0.3:8080"]);
    let nft = cli.nft();
    let mut p = proxier(true);
    let sw = service("web", "10.43.0.10", 80, Some(30080));
    let web = model(&sw, &[slice("web", &["10.42.0.2", "10.42.0.3"], 8080)]);
    full(&mut p, &nft, &[&web]);

    // ClusterIP and NodePort (on the node's own address) reach both backends.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        seen.insert(connect(&cli, "10.43.0.10:80").expect("ClusterIP connect"));
    }
    assert_eq!(
        seen.len(),
        2,
        "random choice reaches every endpoint: {seen:?}"
    );
    let np = connect(&cli, "10.42.0.1:30080").expect("NodePort connect");
    assert!(np.ends_with(":8080"), "{np}");

    // No endpoints: refused at once (TCP reset), not a time-out; also on the NodePort.
    let none = model(&sw, &[]);
    incremental(&mut p, &nft, &[(web.key.clone(), Some(&none))]);
    let t = Instant::now();
    let err = connect(&cli, "10.43.0.10:80").expect_err("no endpoints");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert!(t.elapsed() < Duration::from_secs(1));
    let err = connect(&cli, "10.42.0.1:30080").expect_err("no endpoints on NodePort");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    // An undefined port of the ClusterIP is rejected too.
    let err = connect(&cli, "10.43.0.10:81").expect_err("undefined port");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");

    // Session affinity: every connection from one client lands on one backend.
    let mut sticky = sw.clone();
    let spec = sticky.spec.as_mut().unwrap();
    spec.session_affinity = Some("ClientIP".into());
    spec.session_affinity_config = Some(SessionAffinityConfig {
        client_ip: Some(ClientIPConfig {
            timeout_seconds: Some(60),
        }),
    });
    let sticky = model(&sticky, &[slice("web", &["10.42.0.2", "10.42.0.3"], 8080)]);
    incremental(&mut p, &nft, &[(web.key.clone(), Some(&sticky))]);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        seen.insert(connect(&cli, "10.43.0.10:80").expect("affinity connect"));
    }
    assert_eq!(seen.len(), 1, "ClientIP affinity: {seen:?}");
}

/// `ext` (192.168.77.2, an outside client) <-> `cli` (the node: 10.42.0.1 and
/// 192.168.77.1, forwarding) <-> `srv` (backends 10.42.0.2/.3).
#[test]
fn traffic_from_outside_masquerade_local_policy_firewall_and_hairpin() {
    if skip() {
        return;
    }
    let Pair { cli, srv } = pair();
    let ext = Netns::new();
    let (a, b) = (veth_name("e"), veth_name("x"));
    sh(&[
        "ip", "link", "add", &a, "netns", &cli.0, "type", "veth", "peer", "name", &b, "netns",
        &ext.0,
    ]);
    cli.exec(&["ip", "addr", "add", "192.168.77.1/24", "dev", &a]);
    cli.exec(&["ip", "link", "set", &a, "up"]);
    ext.exec(&["ip", "addr", "add", "192.168.77.2/24", "dev", &b]);
    ext.exec(&["ip", "link", "set", &b, "up"]);
    ext.exec(&["ip", "route", "add", "default", "via", "192.168.77.1"]);
    srv.exec(&["ip", "route", "add", "default", "via", "10.42.0.1"]);
    // Forwarding inside our own namespace only.
    cli.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    backends_with(&srv, &["10.42.0.2:8080", "10.42.0.3:8080"], true);

    let nft = cli.nft();
    let mut p = proxier(true);
    let mut sw = service("web", "10.43.0.10", 80, Some(30080));
    let spec = sw.spec.as_mut().unwrap();
    spec.type_ = Some("LoadBalancer".into());
    spec.load_balancer_source_ranges = Some(vec!["192.168.77.0/24".into()]);
    sw.status = Some(k8s_openapi::api::core::v1::ServiceStatus {
        load_balancer: Some(k8s_openapi::api::core::v1::LoadBalancerStatus {
            ingress: Some(vec![k8s_openapi::api::core::v1::LoadBalancerIngress {
                ip: Some("192.0.2.50".into()),
                ..Default::default()
            }]),
        }),
        ..Default::default()
    });
    let web = model(&sw, &[slice("web", &["10.42.0.3"], 8080)]);
    full(&mut p, &nft, &[&web]);
    let long = Duration::from_secs(2);

    // NodePort from outside, Cluster policy: the backend sees the node (masquerade).
    let r = connect_from(&ext, None, "192.168.77.1:30080", long).expect("NodePort from outside");
    assert_eq!(r, "10.42.0.3:8080 from 10.42.0.1");
    // LoadBalancer IP from an allowed source range.
    let r = connect_from(&ext, None, "192.0.2.50:80", long).expect("LoadBalancer IP from outside");
    assert_eq!(r, "10.42.0.3:8080 from 10.42.0.1");

    // externalTrafficPolicy: Local with a local endpoint: the client address is kept.
    sw.spec.as_mut().unwrap().external_traffic_policy = Some("Local".into());
    let local = model(&sw, &[slice("web", &["10.42.0.3"], 8080)]);
    incremental(&mut p, &nft, &[(web.key.clone(), Some(&local))]);
    let r = connect_from(&ext, None, "192.168.77.1:30080", long).expect("ETP Local NodePort");
    assert_eq!(r, "10.42.0.3:8080 from 192.168.77.2");

    // Source ranges that exclude the client: the LoadBalancer IP drops it (a time-out),
    // while the NodePort (not subject to source ranges) still answers.
    sw.spec.as_mut().unwrap().load_balancer_source_ranges = Some(vec!["198.51.100.0/24".into()]);
    let fw = model(&sw, &[slice("web", &["10.42.0.3"], 8080)]);
    incremental(&mut p, &nft, &[(web.key.clone(), Some(&fw))]);
    let err = connect_from(&ext, None, "192.0.2.50:80", Duration::from_millis(500))
        .expect_err("firewalled");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
        ),
        "{err}"
    );
    assert!(connect_from(&ext, None, "192.168.77.1:30080", long).is_ok());

    // Hairpin: the endpoint reaches itself through its own ClusterIP (masqueraded by its
    // endpoint chain, or its reply would bypass the node).
    let r = connect_from(&srv, Some("10.42.0.3"), "10.43.0.10:80", long).expect("hairpin");
    assert_eq!(r, "10.42.0.3:8080 from 10.42.0.1");
}

#[test]
fn ipv6_and_udp_sctp_services_load() {
    if skip() {
        return;
    }
    let ns = Netns::new();
    let nft = ns.nft();
    let mut svc = service("dns6", "fd00:43::a", 53, Some(30053));
    let spec = svc.spec.as_mut().unwrap();
    spec.ports.as_mut().unwrap()[0].protocol = Some("UDP".into());
    spec.ports.as_mut().unwrap().push(ServicePort {
        name: Some("sctp".into()),
        protocol: Some("SCTP".into()),
        port: 9,
        ..Default::default()
    });
    spec.external_ips = Some(vec!["fd00:99::1".into()]);
    spec.session_affinity = Some("ClientIP".into());
    let mut slice6 = (*slice("dns6", &["fd00:42::5"], 5353)).clone();
    slice6.address_type = "IPv6".into();
    slice6.ports.as_mut().unwrap()[0].protocol = Some("UDP".into());
    slice6.ports.as_mut().unwrap().push(EndpointPort {
        name: Some("sctp".into()),
        protocol: Some("SCTP".into()),
        port: Some(9),
        ..Default::default()
    });
    let m = proxied_service(&svc, &[Arc::new(slice6)], "node-a", IpFamily::V6)
        .unwrap()
        .unwrap();
    let cfg = RenderConfig {
        family: IpFamily::V6,
        cluster_cidr: Cidr::parse("fd00:42::/56"),
        node_ips: vec![],
        service_cidr: None,
    };
    let mut p = FamilyProxier::new(TABLE, cfg);
    full(&mut p, &nft, &[&m]);
    let listing = ns.exec(&["nft", "list", "table", "ip6", TABLE]);
    assert!(
        listing.contains("fd00:43::a . udp . 53 : goto service-"),
        "{listing}"
    );
    assert!(
        listing.contains("fd00:43::a . sctp . 9 : goto service-"),
        "{listing}"
    );
    assert!(listing.contains("dnat to [fd00:42::5]:5353"), "{listing}");
    assert!(
        listing.contains("udp . 30053 : goto external-"),
        "{listing}"
    );
    assert!(
        listing.contains("type ipv6_addr") && listing.contains("timeout 3h"),
        "{listing}"
    );
    // Endpoints gone: UDP gets ICMP port unreachable through reject-chain.
    let empty = proxied_service(&svc, &[], "node-a", IpFamily::V6)
        .unwrap()
        .unwrap();
    incremental(&mut p, &nft, &[(m.key.clone(), Some(&empty))]);
    let listing = ns.exec(&["nft", "list", "table", "ip6", TABLE]);
    assert!(
        listing.contains("fd00:43::a . udp . 53 comment \"ns/dns6:http\" : goto reject-chain"),
        "{listing}"
    );
    assert!(!listing.contains("chain endpoint-"), "{listing}");
}
