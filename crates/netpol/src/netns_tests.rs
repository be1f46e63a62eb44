//! Tests against the real nftables: `nft -c` (check mode: the kernel validates the
//! transaction and aborts it, changing nothing) of rendered scripts, and real traffic in
//! network namespaces the tests create (a "node" with a bridge and two "pod"
//! namespaces on veths). The namespaces are anonymous (`unshare --net`), held by
//! processes a Drop guard kills. Skipped with "SKIP" when not root or a tool is missing.

use std::process::{Child, Command, Stdio};

use serde_json::json;

use crate::model::tests::{np, ns, pod, NODE};
use crate::model::{compute, NamedPort, NamespaceInfo, PodInfo, Protocol};
use crate::nft;
use crate::render::{self, Family};
use crate::sync::Syncer;

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn can_run(what: &str, tools: &[&str]) -> bool {
    if !is_root() {
        eprintln!("SKIP {what}: not root");
        return false;
    }
    for t in tools {
        if !have(t) {
            eprintln!("SKIP {what}: {t} not found");
            return false;
        }
    }
    true
}

fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Anonymous network namespaces, each held by a `cat` process (`unshare --net cat`
/// reading a pipe from this test), plus processes running in them. Dropping kills
/// everything, and the namespaces vanish with their last process; should the test
/// process die, the pipes close and the holders exit by themselves. Nothing appears in
/// `/run/netns`, so other tests that sweep named namespaces never see or delete ours.
struct Netns {
    holders: Vec<Child>,
    children: Vec<Child>,
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in self.children.iter_mut().chain(self.holders.iter_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Netns {
    fn new(count: usize) -> Netns {
        let mut g = Netns {
            holders: Vec::new(),
            children: Vec::new(),
        };
        for _ in 0..count {
            let child = Command::new("unshare")
                .args(["--net", "cat"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            g.holders.push(child);
        }
        // wait until each holder runs in its own namespace
        let own = std::fs::read_link("/proc/self/ns/net").ok();
        for h in &g.holders {
            let path = format!("/proc/{}/ns/net", h.id());
            for _ in 0..200 {
                if std::fs::read_link(&path)
                    .ok()
                    .is_some_and(|ns| Some(&ns) != own.as_ref())
                {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        g
    }

    /// `nsenter --net=<namespace i> --`: the prefix running a command in namespace `i`.
    fn prefix(&self, i: usize) -> Vec<String> {
        vec![
            "nsenter".into(),
            format!("--net=/proc/{}/ns/net", self.holders[i].id()),
            "--".into(),
        ]
    }

    /// The holder's pid, for `ip link ... netns <pid>`.
    fn pid(&self, i: usize) -> String {
        self.holders[i].id().to_string()
    }

    fn nft(&self, i: usize, script: &str) -> Result<(), crate::NetpolError> {
        let p = self.prefix(i);
        let p: Vec<&str> = p.iter().map(String::as_str).collect();
        nft::apply_with(&p, script, false)
    }

    fn exec(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let p = self.prefix(i);
        let mut v: Vec<&str> = p.iter().map(String::as_str).collect();
        v.extend_from_slice(args);
        sh(&v)
    }

    fn spawn(&mut self, i: usize, args: &[&str]) {
        let p = self.prefix(i);
        let child = Command::new(&p[0])
            .args(&p[1..])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.children.push(child);
    }
}

fn world() -> (Vec<PodInfo>, Vec<NamespaceInfo>) {
    let mut web = pod("default", "web", NODE, "10.42.0.2", &[("app", "web")]);
    web.ips.push("fd00:42::2".parse().unwrap());
    web.named_ports = vec![NamedPort {
        name: "http".into(),
        protocol: Protocol::Tcp,
        port: 8080,
    }];
    let mut db = pod("prod", "db", "node-b", "10.42.1.5", &[("app", "db")]);
    db.named_ports = vec![NamedPort {
        name: "sql".into(),
        protocol: Protocol::Tcp,
        port: 5432,
    }];
    let pods = vec![
        web,
        pod("default", "client", NODE, "10.42.0.3", &[("app", "client")]),
        db,
    ];
    (
        pods,
        vec![ns("default", &[]), ns("prod", &[("env", "prod")])],
    )
}

fn rich_policies() -> Vec<k8s_openapi::api::networking::v1::NetworkPolicy> {
    vec![
        np(
            "default",
            "web",
            json!({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"app": "client"}}}, {"namespaceSelector": {"matchLabels": {"env": "prod"}}, "podSelector": {}}], "ports": [{"port": "http"}, {"port": 9000, "endPort": 9100}]},
                {"from": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}, {"ipBlock": {"cidr": "fd00::/8", "except": ["fd00:1::/32"]}}]}
            ],
            "egress": [
                {"to": [{"namespaceSelector": {}}], "ports": [{"port": "sql"}, {"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}, {"protocol": "SCTP", "port": 7}]},
                {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}]}
            ]}),
        ),
        np(
            "default",
            "deny-all",
            json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        ),
    ]
}

#[test]
fn rendered_scripts_pass_nft_check_mode() {
    if !can_run("nft check", &["nft"]) {
        return;
    }
    let (pods, nss) = world();
    let plan = compute(NODE, &rich_policies(), &pods, &nss);
    for family in [Family::V4, Family::V6] {
        let st = render::desired(&plan, family);
        assert!(!st.chains.is_empty());
        let script = render::render_full(&st, "rk3s-netpol-check");
        nft::apply_blocking(&script, true).unwrap_or_else(|e| panic!("{e}\n{script}"));
    }
    nft::apply_blocking(
        &render::render_delete(Family::V4, "rk3s-netpol-check"),
        true,
    )
    .unwrap();
}

#[test]
fn full_and_incremental_syncs_apply_in_a_netns() {
    if !can_run("netns sync", &["nft", "unshare", "nsenter"]) {
        return;
    }
    let g = Netns::new(1);
    let (mut pods, mut nss) = world();
    let mut s = Syncer::new(NODE, "rk3s-netpol");
    let mut policies = rich_policies();
    let step = |s: &mut Syncer, policies: &[_], pods: &[PodInfo], nss: &[NamespaceInfo]| {
        let (d, script) = s.plan(policies, pods, nss);
        let r = g.nft(0, &script);
        s.applied(d, r.is_ok());
        r.unwrap_or_else(|e| panic!("{e}\n{script}"));
        script
    };
    step(&mut s, &policies, &pods, &nss);
    let listing = g
        .exec(0, &["nft", "list", "table", "ip", "rk3s-netpol"])
        .unwrap();
    assert!(listing.contains("10.42.0.2 : jump ing-"), "{listing}");
    assert!(listing.contains("10.42.1.5 . tcp . 5432"), "{listing}");
    assert!(g
        .exec(0, &["nft", "list", "table", "ip6", "rk3s-netpol"])
        .unwrap()
        .contains("fd00:42::2 : jump egr-"));
    // a new peer pod, a namespace label change, a new policy, a removed policy: all
    // incremental, all accepted by the kernel
    pods.push(pod(
        "default",
        "client2",
        "node-c",
        "10.42.2.7",
        &[("app", "client")],
    ));
    assert!(step(&mut s, &policies, &pods, &nss).starts_with("add element ip rk3s-netpol pods-"));
    nss[0].labels.insert("env".into(), "prod".into());
    step(&mut s, &policies, &pods, &nss);
    policies.push(np("default", "more", json!({"podSelector": {"matchLabels": {"app": "client"}}, "ingress": [{"ports": [{"port": 22}]}]})));
    step(&mut s, &policies, &pods, &nss);
    policies.remove(0);
    step(&mut s, &policies, &pods, &nss);
    let listing = g
        .exec(0, &["nft", "list", "table", "ip", "rk3s-netpol"])
        .unwrap();
    assert!(
        !listing.contains("egr-"),
        "web's egress chain is gone: {listing}"
    );
    assert!(!listing.contains("set port-"), "{listing}");
    // the IPv6 pod gone: the ip6 table goes
    pods.remove(0);
    step(&mut s, &policies, &pods, &nss);
    assert!(g
        .exec(0, &["nft", "list", "table", "ip6", "rk3s-netpol"])
        .is_err());
    // a failing transaction changes nothing; the next sync rebuilds
    let before = g
        .exec(0, &["nft", "list", "table", "ip", "rk3s-netpol"])
        .unwrap();
    assert!(g
        .nft(
            0,
            "add element ip rk3s-netpol ingress-pods { 10.42.0.3 : jump no-such-chain }\n"
        )
        .is_err());
    assert_eq!(
        g.exec(0, &["nft", "list", "table", "ip", "rk3s-netpol"])
            .unwrap(),
        before
    );
    // cleanup removes everything
    let del = format!(
        "{}{}",
        render::render_delete(Family::V4, "rk3s-netpol"),
        render::render_delete(Family::V6, "rk3s-netpol")
    );
    g.nft(0, &del).unwrap();
    assert_eq!(g.exec(0, &["nft", "list", "tables"]).unwrap().trim(), "");
}

/// The "node" namespace 0 with bridge br0 (10.99.0.1/24) and pods in namespaces 1
/// (10.99.0.2, app=client) and 2 (10.99.0.3, app=web) on veths, br_netfilter on.
fn node_with_two_pods() -> Option<Netns> {
    let g = Netns::new(3);
    if g.exec(
        0,
        &[
            "sh",
            "-c",
            "test -e /proc/sys/net/bridge/bridge-nf-call-iptables",
        ],
    )
    .is_err()
    {
        eprintln!("SKIP traffic test: br_netfilter not available in a netns");
        return None;
    }
    let run = |i: usize, args: &[&str]| g.exec(i, args).unwrap();
    run(
        0,
        &["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"],
    );
    run(0, &["ip", "link", "set", "lo", "up"]);
    run(0, &["ip", "link", "add", "br0", "type", "bridge"]);
    run(0, &["ip", "addr", "add", "10.99.0.1/24", "dev", "br0"]);
    run(0, &["ip", "link", "set", "br0", "up"]);
    for (i, ip) in [(1usize, "10.99.0.2/24"), (2, "10.99.0.3/24")] {
        let veth = format!("veth{i}");
        run(
            0,
            &[
                "ip",
                "link",
                "add",
                &veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &g.pid(i),
            ],
        );
        run(0, &["ip", "link", "set", &veth, "master", "br0", "up"]);
        run(i, &["ip", "link", "set", "lo", "up"]);
        run(i, &["ip", "addr", "add", ip, "dev", "eth0"]);
        run(i, &["ip", "link", "set", "eth0", "up"]);
        run(i, &["ip", "route", "add", "default", "via", "10.99.0.1"]);
    }
    Some(g)
}

/// Whether an HTTP GET from namespace `from` to `url` answers "hello" (2 s time-out).
fn reaches(g: &Netns, from: usize, url: &str) -> bool {
    match g.exec(
        from,
        &["timeout", "2", "busybox", "wget", "-q", "-O", "-", url],
    ) {
        Ok(body) => body.trim() == "hello",
        Err(e) => {
            eprintln!("{url} from netns {from}: {e}");
            false
        }
    }
}

/// Whether an HTTP GET from namespace `from` to the web pod succeeds (2 s time-out;
/// not wget's own `-T`, which crashes some busybox builds).
fn reaches_web(g: &Netns, from: usize) -> bool {
    reaches(g, from, "http://10.99.0.3:8080/index.html")
}

#[test]
fn traffic_is_blocked_and_allowed_in_namespaces() {
    if !can_run(
        "traffic test",
        &[
            "nft", "ip", "unshare", "nsenter", "busybox", "timeout", "sysctl",
        ],
    ) {
        return;
    }
    let Some(mut g) = node_with_two_pods() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("rk3sh-netpol-www-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), "hello\n").unwrap();
    let www = dir.to_string_lossy().into_owned();
    g.spawn(2, &["busybox", "httpd", "-f", "-p", "8080", "-h", &www]);
    // the "DNS server" on the node itself (TCP 53 on the bridge address)
    g.spawn(
        0,
        &["busybox", "httpd", "-f", "-p", "10.99.0.1:53", "-h", &www],
    );
    const DNS_URL: &str = "http://10.99.0.1:53/index.html";
    // wait for the server (no policy yet)
    let mut up = false;
    for _ in 0..50 {
        if reaches_web(&g, 1) {
            up = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(up, "web pod never answered without any policy");

    let mut web = pod("default", "web", "node", "10.99.0.3", &[("app", "web")]);
    web.named_ports = vec![NamedPort {
        name: "http".into(),
        protocol: Protocol::Tcp,
        port: 8080,
    }];
    let client = pod(
        "default",
        "client",
        "node",
        "10.99.0.2",
        &[("app", "client")],
    );
    let mut pods = vec![web, client];
    pods.extend(crate::model::builtin_dns_pod(&["10.99.0.1"
        .parse()
        .unwrap()]));
    let nss = vec![ns("default", &[]), ns("kube-system", &[])];
    let mut s = Syncer::new("node", "rk3s-netpol");
    let mut sync = |policies: &[k8s_openapi::api::networking::v1::NetworkPolicy]| {
        let (d, script) = s.plan(policies, &pods, &nss);
        g.nft(0, &script)
            .unwrap_or_else(|e| panic!("{e}\n{script}"));
        s.applied(d, true);
    };
    // default deny ingress for web: blocked from the client pod, still open from the node
    sync(&[np(
        "default",
        "deny",
        json!({"podSelector": {"matchLabels": {"app": "web"}}}),
    )]);
    assert!(!reaches_web(&g, 1), "default-deny must block the client");
    assert!(reaches_web(&g, 0), "the node always reaches its pods");
    // an allow rule for the client's label on the named port
    let allow = np(
        "default",
        "allow",
        json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}], "ports": [{"port": "http"}]}]}),
    );
    sync(&[
        np(
            "default",
            "deny",
            json!({"podSelector": {"matchLabels": {"app": "web"}}}),
        ),
        allow.clone(),
    ]);
    assert!(
        reaches_web(&g, 1),
        "the allow rule re-opens web for the client"
    );
    // egress deny on the client (except DNS): blocked again; allowing TCP 8080 re-opens
    let egress_dns = np(
        "default",
        "client-egress",
        json!({"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}]}),
    );
    sync(&[allow.clone(), egress_dns]);
    assert!(
        !reaches_web(&g, 1),
        "egress without port 8080 blocks the client"
    );
    assert!(
        !reaches(&g, 1, DNS_URL),
        "egress to the node's TCP 53 is checked on the input hook"
    );
    let egress_kube_dns = np(
        "default",
        "client-egress",
        json!({"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"], "egress": [{"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}], "ports": [{"port": "dns-tcp"}]}]}),
    );
    sync(&[allow.clone(), egress_kube_dns]);
    assert!(
        reaches(&g, 1, DNS_URL),
        "egress to the kube-dns pods reaches the built-in DNS server"
    );
    assert!(!reaches_web(&g, 1));
    let egress_web = np(
        "default",
        "client-egress",
        json!({"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"], "egress": [{"to": [{"ipBlock": {"cidr": "10.99.0.0/24", "except": ["10.99.0.128/25"]}}], "ports": [{"port": 8080}]}]}),
    );
    sync(&[allow, egress_web]);
    assert!(reaches_web(&g, 1), "egress allow to the web pod's port");
    assert!(!reaches(&g, 1, DNS_URL));
    // no policies: everything open again
    sync(&[]);
    assert!(reaches_web(&g, 1));
    assert!(reaches(&g, 1, DNS_URL));
    let counters = g
        .exec(0, &["nft", "list", "table", "ip", "rk3s-netpol"])
        .unwrap();
    assert!(counters.contains("chain forward"), "{counters}");
    drop(g);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cleanup_rejects_bad_table_names() {
    assert!(crate::cleanup("bad name; flush ruleset").is_err());
}
