//! The pure renderer: [`ProxiedService`]s become nftables objects laid out as upstream
//! kube-proxy's nftables mode lays out its own, and [`Script`] writes them as an
//! `nft -f -` transaction.
//!
//! Layout of the table (`ip <table>`; `ip6 <table>` for IPv6 ClusterIPs):
//! - base chains `filter-prerouting`, `filter-input`, `filter-forward`, `filter-output`
//!   (priority dstnat-10, before DNAT so they see Service addresses),
//!   `filter-output-post-dnat` (dstnat+10), `nat-prerouting`, `nat-output` (dstnat),
//!   `nat-postrouting` (srcnat);
//! - `services`: `daddr . l4proto . dport vmap @service-ips` (ClusterIPs, externalIPs,
//!   LoadBalancer ingress IPs) and, for local non-loopback destinations (`fib daddr type
//!   local`), `l4proto . dport vmap @service-nodeports`;
//! - `service-endpoints-check` / `nodeport-endpoints-check` (filter chains, new
//!   connections): `@no-endpoint-services` / `@no-endpoint-nodeports` send Services without
//!   endpoints to `reject-chain` (TCP reset, else ICMP port unreachable) or drop them
//!   (Local policy without local endpoints);
//! - `firewall-check`: `@firewall-ips` sends LoadBalancer IPs with
//!   `loadBalancerSourceRanges` to a per-port `firewall-…` chain that drops other sources;
//! - `cluster-ips-check`: rejects ClusterIP traffic to ports no Service defines, and drops
//!   traffic to unallocated addresses of the Service network;
//! - per service port: `service-…` (Cluster policy endpoints), `local-…` (Local policy
//!   endpoints), `external-…` (NodePort/externalIP/LoadBalancer traffic: masquerade or the
//!   Local-policy short-circuits), `firewall-…`; per endpoint: `endpoint-…` (hairpin
//!   masquerade, session affinity, DNAT) and, with `sessionAffinity: ClientIP`, a set
//!   `affinity-…` with the affinity timeout;
//! - `mark-for-masquerade` sets bit 0x4000 of the packet mark; `masquerading`
//!   (postrouting) masquerades marked packets.
//!
//! One deliberate difference from upstream: the endpoint choice of a `service-…`/`local-…`
//! chain is a cascade `numgen random mod (N-i) == 0 goto endpoint-i` (the last endpoint
//! unconditionally), which picks each endpoint with probability 1/N as upstream's
//! `numgen random mod N vmap { 0 : goto …, … }` does, but without one anonymous set per
//! chain: the kernel allocates anonymous set names by scanning every set of the table,
//! which made a 10,000-Service transaction quadratic (minutes instead of seconds).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use crate::model::{Cidr, Endpoint, IpFamily, ProxiedService, ServicePort};

/// The packet-mark bit that asks `masquerading` to masquerade (kube-proxy's default bit 14).
pub const MASQUERADE_MARK: u32 = 0x4000;

/// Dispatch chain (jumped to from `nat-prerouting` and `nat-output`).
pub const SERVICES_CHAIN: &str = "services";
/// Chain marking a packet for masquerade.
pub const MARK_MASQ_CHAIN: &str = "mark-for-masquerade";
/// Postrouting chain masquerading marked packets.
pub const MASQUERADING_CHAIN: &str = "masquerading";
/// Filter chain rejecting or dropping new connections to Services without endpoints.
pub const SERVICE_ENDPOINTS_CHECK_CHAIN: &str = "service-endpoints-check";
/// Filter chain rejecting or dropping new connections to NodePorts without endpoints.
pub const NODEPORT_ENDPOINTS_CHECK_CHAIN: &str = "nodeport-endpoints-check";
/// Helper chain the no-endpoint maps jump to.
pub const REJECT_CHAIN: &str = "reject-chain";
/// Filter chain applying `loadBalancerSourceRanges`.
pub const FIREWALL_CHECK_CHAIN: &str = "firewall-check";
/// Filter chain rejecting traffic to ClusterIP ports no Service defines.
pub const CLUSTER_IPS_CHECK_CHAIN: &str = "cluster-ips-check";

/// Base chains: name, type, hook, priority.
pub const BASE_CHAINS: [(&str, &str, &str, i32); 8] = [
    ("filter-prerouting", "filter", "prerouting", -110),
    ("filter-input", "filter", "input", -110),
    ("filter-forward", "filter", "forward", -110),
    ("filter-output", "filter", "output", -110),
    ("filter-output-post-dnat", "filter", "output", -90),
    ("nat-prerouting", "nat", "prerouting", -100),
    ("nat-output", "nat", "output", -100),
    ("nat-postrouting", "nat", "postrouting", 100),
];

/// Jumps from base chains to our top-level chains: (destination, source, condition).
pub const JUMP_CHAINS: [(&str, &str, &str); 11] = [
    (
        NODEPORT_ENDPOINTS_CHECK_CHAIN,
        "filter-input",
        "ct state new",
    ),
    (
        SERVICE_ENDPOINTS_CHECK_CHAIN,
        "filter-input",
        "ct state new",
    ),
    (
        SERVICE_ENDPOINTS_CHECK_CHAIN,
        "filter-forward",
        "ct state new",
    ),
    (
        SERVICE_ENDPOINTS_CHECK_CHAIN,
        "filter-output",
        "ct state new",
    ),
    (FIREWALL_CHECK_CHAIN, "filter-prerouting", "ct state new"),
    (FIREWALL_CHECK_CHAIN, "filter-output", "ct state new"),
    (SERVICES_CHAIN, "nat-output", ""),
    (SERVICES_CHAIN, "nat-prerouting", ""),
    (MASQUERADING_CHAIN, "nat-postrouting", ""),
    (CLUSTER_IPS_CHECK_CHAIN, "filter-forward", "ct state new"),
    (
        CLUSTER_IPS_CHECK_CHAIN,
        "filter-output-post-dnat",
        "ct state new",
    ),
];

/// The sets and verdict maps of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MapName {
    /// `service-ips`: ClusterIP, externalIP and LoadBalancer IP dispatch.
    ServiceIps,
    /// `service-nodeports`: NodePort dispatch.
    ServiceNodePorts,
    /// `no-endpoint-services`: reject/drop for Service IPs without usable endpoints.
    NoEndpointServices,
    /// `no-endpoint-nodeports`: reject/drop for NodePorts without usable endpoints.
    NoEndpointNodePorts,
    /// `firewall-ips`: LoadBalancer IPs with source ranges.
    FirewallIps,
    /// `cluster-ips`: the set of active ClusterIPs.
    ClusterIps,
}

impl MapName {
    /// Every map and set, in creation order.
    pub const ALL: [MapName; 6] = [
        MapName::ServiceIps,
        MapName::ServiceNodePorts,
        MapName::NoEndpointServices,
        MapName::NoEndpointNodePorts,
        MapName::FirewallIps,
        MapName::ClusterIps,
    ];

    /// The nftables name.
    pub fn as_str(self) -> &'static str {
        match self {
            MapName::ServiceIps => "service-ips",
            MapName::ServiceNodePorts => "service-nodeports",
            MapName::NoEndpointServices => "no-endpoint-services",
            MapName::NoEndpointNodePorts => "no-endpoint-nodeports",
            MapName::FirewallIps => "firewall-ips",
            MapName::ClusterIps => "cluster-ips",
        }
    }

    /// Whether this is a set (no values) rather than a verdict map.
    pub fn is_set(self) -> bool {
        matches!(self, MapName::ClusterIps)
    }

    fn key_type(self, family: IpFamily) -> String {
        let addr = addr_type(family);
        match self {
            MapName::ServiceIps | MapName::NoEndpointServices | MapName::FirewallIps => {
                format!("{addr} . inet_proto . inet_service : verdict")
            }
            MapName::ServiceNodePorts | MapName::NoEndpointNodePorts => {
                "inet_proto . inet_service : verdict".to_string()
            }
            MapName::ClusterIps => addr.to_string(),
        }
    }

    fn comment(self) -> &'static str {
        match self {
            MapName::ServiceIps => "ClusterIP, ExternalIP and LoadBalancer IP traffic",
            MapName::ServiceNodePorts => "NodePort traffic",
            MapName::NoEndpointServices => {
                "vmap to drop or reject packets to services with no endpoints"
            }
            MapName::NoEndpointNodePorts => {
                "vmap to drop or reject packets to service nodeports with no endpoints"
            }
            MapName::FirewallIps => "destinations that are subject to LoadBalancerSourceRanges",
            MapName::ClusterIps => "Active ClusterIPs",
        }
    }
}

/// One element of a map or set.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Element {
    /// The map or set.
    pub map: MapName,
    /// The key, e.g. `10.43.0.10 . tcp . 80`.
    pub key: String,
    /// The verdict, e.g. `goto service-…` (empty for sets).
    pub value: String,
    /// A comment (the service port's name) or empty.
    pub comment: String,
}

/// A regular chain and its rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// The chain's name.
    pub name: String,
    /// Its rules, in order.
    pub rules: Vec<String>,
}

/// A session-affinity set (`flags dynamic,timeout`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct AffinitySet {
    /// The set's name.
    pub name: String,
    /// Its element timeout in seconds.
    pub timeout: u32,
}

/// Everything one Service contributes to the table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceRules {
    /// Its chains (service, local, external, firewall and endpoint chains).
    pub chains: Vec<Chain>,
    /// Its affinity sets.
    pub sets: Vec<AffinitySet>,
    /// Its map and set elements (deduplicated).
    pub elements: Vec<Element>,
}

/// What the renderer needs to know about the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderConfig {
    /// The family rendered.
    pub family: IpFamily,
    /// The pod network of this family: traffic to a ClusterIP from outside it is
    /// masqueraded, and pods reaching an `externalTrafficPolicy: Local` Service from
    /// inside it are short-circuited to all endpoints.
    pub cluster_cidr: Option<Cidr>,
    /// The node's addresses of this family (source ranges that contain one also admit
    /// the LoadBalancer IPs, for VIPs that loop back through the node).
    pub node_ips: Vec<IpAddr>,
    /// The Service network of this family: traffic to an address in it that no Service
    /// holds is dropped here instead of being routed off the node (upstream's "drop
    /// traffic to unallocated ClusterIPs").
    pub service_cidr: Option<Cidr>,
}

/// `ip` or `ip6`.
pub fn family_keyword(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ip",
        IpFamily::V6 => "ip6",
    }
}

fn addr_type(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ipv4_addr",
        IpFamily::V6 => "ipv6_addr",
    }
}

fn no_localhost(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ip daddr != 127.0.0.0/8",
        IpFamily::V6 => "ip6 daddr != ::1",
    }
}

/// Longest name nftables accepts (NFT_NAME_MAXLEN less the terminating NUL).
const NAME_LENGTH_MAX: usize = 255;
/// Longest chain-name prefix we use, with its hyphen.
const PREFIX_LENGTH_MAX: usize = 16;

fn base32_prefix(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(8);
    let mut bits: u64 = 0;
    let mut nbits = 0;
    for &b in data {
        bits = (bits << 8) | u64::from(b);
        nbits += 8;
        while nbits >= 5 && out.len() < 8 {
            let idx = ((bits >> (nbits - 5)) & 0x1f) as usize;
            out.push(char::from(ALPHABET[idx]));
            nbits -= 5;
        }
        if out.len() == 8 {
            break;
        }
    }
    out
}

/// Prefixes `name` with 8 characters of its SHA-256 (so truncated or near-identical names
/// stay distinct and are easy to tell apart) and truncates it to fit a chain name.
fn hash_and_truncate(name: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    let mut out = format!("{}-{}", base32_prefix(digest.as_ref()), name);
    let max = NAME_LENGTH_MAX - PREFIX_LENGTH_MAX;
    if out.len() > max {
        // Names are ASCII (validated by the model), so any byte index is a boundary.
        out.truncate(max - 3);
        out.push_str("...");
    }
    out
}

/// The base of a service port's chain names: `HASH-namespace/name/protocol/portname`.
pub fn service_port_chain_base(port: &ServicePort) -> String {
    hash_and_truncate(&format!(
        "{}/{}/{}/{}",
        port.service.namespace,
        port.service.name,
        port.protocol.as_str(),
        port.port_name
    ))
}

/// The base of an endpoint's chain and affinity-set names:
/// `HASH-namespace/name/protocol/portname__ip/port` (`:` of IPv6 replaced by `.`).
pub fn endpoint_chain_base(port: &ServicePort, ep: &Endpoint) -> String {
    let ip = ep.ip.to_string().replace(':', ".");
    hash_and_truncate(&format!(
        "{}/{}/{}/{}__{}/{}",
        port.service.namespace,
        port.service.name,
        port.protocol.as_str(),
        port.port_name,
        ip,
        ep.port
    ))
}

/// Builds [`ServiceRules`] keeping chains in creation order.
#[derive(Default)]
struct RulesBuilder {
    chains: Vec<Chain>,
    index: BTreeMap<String, usize>,
    sets: BTreeMap<String, u32>,
    elements: BTreeMap<(MapName, String), (String, String)>,
}

impl RulesBuilder {
    fn ensure_chain(&mut self, name: &str) {
        if !self.index.contains_key(name) {
            self.index.insert(name.to_string(), self.chains.len());
            self.chains.push(Chain {
                name: name.to_string(),
                rules: Vec::new(),
            });
        }
    }

    fn rule(&mut self, chain: &str, rule: String) {
        self.ensure_chain(chain);
        if let Some(&i) = self.index.get(chain) {
            self.chains[i].rules.push(rule);
        }
    }

    fn element(&mut self, map: MapName, key: String, value: String, comment: &str) {
        self.elements
            .entry((map, key))
            .or_insert((value, comment.to_string()));
    }

    fn finish(self) -> ServiceRules {
        ServiceRules {
            chains: self.chains,
            sets: self
                .sets
                .into_iter()
                .map(|(name, timeout)| AffinitySet { name, timeout })
                .collect(),
            elements: self
                .elements
                .into_iter()
                .map(|((map, key), (value, comment))| Element {
                    map,
                    key,
                    value,
                    comment,
                })
                .collect(),
        }
    }
}

/// Renders every port of a Service (upstream's per-service-port body of
/// `syncProxyRules`).
pub fn render_service(cfg: &RenderConfig, svc: &ProxiedService) -> ServiceRules {
    let mut b = RulesBuilder::default();
    for port in &svc.ports {
        render_port(cfg, port, &mut b);
    }
    b.finish()
}

fn render_port(cfg: &RenderConfig, port: &ServicePort, b: &mut RulesBuilder) {
    let ipx = family_keyword(cfg.family);
    let proto = port.protocol.as_str();
    let name = port.display_name();
    let cat = port.categorize();
    let base = service_port_chain_base(port);
    let cluster_chain = format!("service-{base}");
    let local_chain = format!("local-{base}");
    let external_chain = format!("external-{base}");
    let fw_chain = format!("firewall-{base}");
    let ep_chain = |ep: &Endpoint| format!("endpoint-{}", endpoint_chain_base(port, ep));
    let ep_set = |ep: &Endpoint| format!("affinity-{}", endpoint_chain_base(port, ep));

    // Endpoint chains first, so that every chain a rule jumps to is created before it.
    for ep in &cat.all_reachable {
        b.ensure_chain(&ep_chain(ep));
    }
    let uses_cluster_chain = !cat.cluster.is_empty() && port.uses_cluster_endpoints();
    if uses_cluster_chain {
        b.ensure_chain(&cluster_chain);
    }
    let uses_local_chain = !cat.local.is_empty() && port.uses_local_endpoints();
    if uses_local_chain {
        b.ensure_chain(&local_chain);
    }

    let (internal_chain, has_internal) = if port.internal_policy_local {
        (&local_chain, cat.has_any && !cat.local.is_empty())
    } else {
        (&cluster_chain, cat.has_any)
    };
    let (external_policy_chain, has_external) = if port.external_policy_local {
        (&local_chain, cat.has_any && !cat.local.is_empty())
    } else {
        (&cluster_chain, cat.has_any)
    };
    let uses_external_chain = cat.has_any && port.externally_accessible();
    if uses_external_chain {
        b.ensure_chain(&external_chain);
    }
    let reject = format!("goto {REJECT_CHAIN}");
    let (internal_verdict, external_verdict) = if !cat.has_any {
        (reject.clone(), reject)
    } else {
        ("drop".to_string(), "drop".to_string())
    };

    let svc_key = |ip: &IpAddr| format!("{ip} . {proto} . {}", port.port);

    // ClusterIP.
    b.element(
        MapName::ClusterIps,
        port.cluster_ip.to_string(),
        String::new(),
        "",
    );
    if has_internal {
        b.element(
            MapName::ServiceIps,
            svc_key(&port.cluster_ip),
            format!("goto {internal_chain}"),
            "",
        );
    } else {
        b.element(
            MapName::NoEndpointServices,
            svc_key(&port.cluster_ip),
            internal_verdict,
            &name,
        );
    }

    // externalIPs.
    for ip in &port.external_ips {
        if cat.has_any {
            b.element(
                MapName::ServiceIps,
                svc_key(ip),
                format!("goto {external_chain}"),
                "",
            );
        }
        if !has_external {
            b.element(
                MapName::NoEndpointServices,
                svc_key(ip),
                external_verdict.clone(),
                &name,
            );
        }
    }

    // LoadBalancer ingress IPs, with their source-range firewall.
    let uses_fw =
        !port.load_balancer_vips.is_empty() && !port.load_balancer_source_ranges.is_empty();
    if uses_fw {
        b.ensure_chain(&fw_chain);
    }
    for ip in &port.load_balancer_vips {
        if cat.has_any {
            b.element(
                MapName::ServiceIps,
                svc_key(ip),
                format!("goto {external_chain}"),
                "",
            );
        }
        if uses_fw {
            b.element(
                MapName::FirewallIps,
                svc_key(ip),
                format!("goto {fw_chain}"),
                &name,
            );
        }
        if !has_external {
            b.element(
                MapName::NoEndpointServices,
                svc_key(ip),
                external_verdict.clone(),
                &name,
            );
        }
    }

    // NodePort.
    if port.node_port != 0 {
        let key = format!("{proto} . {}", port.node_port);
        if cat.has_any {
            b.element(
                MapName::ServiceNodePorts,
                key.clone(),
                format!("goto {external_chain}"),
                "",
            );
        }
        if !has_external {
            b.element(MapName::NoEndpointNodePorts, key, external_verdict, &name);
        }
    }

    // Internal traffic: masquerade what comes from outside the pod network.
    if has_internal {
        if let Some(cidr) = cfg.cluster_cidr.filter(|c| c.family() == cfg.family) {
            b.rule(
                internal_chain,
                format!(
                    "{ipx} daddr {} {proto} dport {} {ipx} saddr != {cidr} jump {MARK_MASQ_CHAIN}",
                    port.cluster_ip, port.port
                ),
            );
        }
    }

    // External traffic.
    if uses_external_chain {
        if !port.external_policy_local {
            b.rule(&external_chain, format!("jump {MARK_MASQ_CHAIN}"));
        } else {
            if let Some(cidr) = cfg.cluster_cidr.filter(|c| c.family() == cfg.family) {
                b.rule(&external_chain, format!("{ipx} saddr {cidr} goto {cluster_chain} comment \"short-circuit pod traffic\""));
            }
            b.rule(&external_chain, format!("fib saddr type local jump {MARK_MASQ_CHAIN} comment \"masquerade local traffic\""));
            b.rule(&external_chain, format!("fib saddr type local goto {cluster_chain} comment \"short-circuit local traffic\""));
        }
        if has_external {
            b.rule(&external_chain, format!("goto {external_policy_chain}"));
        }
    }

    // loadBalancerSourceRanges.
    if uses_fw {
        let mut sources: Vec<String> = port
            .load_balancer_source_ranges
            .iter()
            .map(|c| c.to_string())
            .collect();
        let allow_from_node = port
            .load_balancer_source_ranges
            .iter()
            .any(|c| cfg.node_ips.iter().any(|ip| c.contains(ip)));
        if allow_from_node {
            sources.extend(port.load_balancer_vips.iter().map(|ip| ip.to_string()));
        }
        b.rule(
            &fw_chain,
            format!("{ipx} saddr != {{ {} }} drop", sources.join(", ")),
        );
    }

    // Session affinity sets.
    if let Some(timeout) = port.affinity_timeout {
        for ep in &cat.all_reachable {
            b.sets.insert(ep_set(ep), timeout);
        }
    }

    if uses_cluster_chain {
        endpoint_choice(
            b,
            ipx,
            port,
            &cluster_chain,
            &cat.cluster,
            &ep_chain,
            &ep_set,
        );
    }
    if uses_local_chain {
        endpoint_choice(b, ipx, port, &local_chain, &cat.local, &ep_chain, &ep_set);
    }

    // Endpoint chains: hairpin masquerade, affinity, DNAT.
    for ep in &cat.all_reachable {
        let chain = ep_chain(ep);
        b.rule(
            &chain,
            format!("{ipx} saddr {} jump {MARK_MASQ_CHAIN}", ep.ip),
        );
        if port.affinity_timeout.is_some() {
            b.rule(&chain, format!("update @{} {{ {ipx} saddr }}", ep_set(ep)));
        }
        b.rule(
            &chain,
            format!("meta l4proto {proto} dnat to {}", ep.addr_port()),
        );
    }
}

fn endpoint_choice(
    b: &mut RulesBuilder,
    ipx: &str,
    port: &ServicePort,
    chain: &str,
    endpoints: &[Endpoint],
    ep_chain: &dyn Fn(&Endpoint) -> String,
    ep_set: &dyn Fn(&Endpoint) -> String,
) {
    if port.affinity_timeout.is_some() {
        for ep in endpoints {
            b.rule(
                chain,
                format!("{ipx} saddr @{} goto {}", ep_set(ep), ep_chain(ep)),
            );
        }
    }
    let n = endpoints.len();
    for (i, ep) in endpoints.iter().enumerate() {
        if i + 1 == n {
            b.rule(chain, format!("goto {}", ep_chain(ep)));
        } else {
            b.rule(
                chain,
                format!("numgen random mod {} == 0 goto {}", n - i, ep_chain(ep)),
            );
        }
    }
}

/// An `nft -f` script for one table, built command by command.
#[derive(Clone, Debug)]
pub struct Script {
    prefix: String,
    buf: String,
}

impl Script {
    /// An empty script for `<family> <table>`.
    pub fn new(family: IpFamily, table: &str) -> Self {
        Script {
            prefix: format!("{} {}", family_keyword(family), table),
            buf: String::new(),
        }
    }

    /// The script text.
    pub fn as_str(&self) -> &str {
        &self.buf
    }

    /// Whether no command was written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The script's length in bytes.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    fn line(&mut self, verb: &str, what: &str, rest: std::fmt::Arguments<'_>) {
        let _ = writeln!(self.buf, "{verb} {what} {} {rest}", self.prefix);
    }

    /// `add table` (with a comment).
    pub fn add_table(&mut self) {
        let _ = writeln!(
            self.buf,
            "add table {} {{ comment \"rules for the rk3s service proxy\" ; }}",
            self.prefix
        );
    }

    /// `delete table` (must exist: precede with [`Script::add_table`] to make it
    /// unconditional).
    pub fn delete_table(&mut self) {
        let _ = writeln!(self.buf, "delete table {}", self.prefix);
    }

    /// `add chain` for a regular chain.
    pub fn add_chain(&mut self, name: &str) {
        self.line("add", "chain", format_args!("{name}"));
    }

    /// `add chain` for a base chain.
    pub fn add_base_chain(&mut self, name: &str, kind: &str, hook: &str, priority: i32) {
        self.line(
            "add",
            "chain",
            format_args!("{name} {{ type {kind} hook {hook} priority {priority} ; }}"),
        );
    }

    /// `flush chain`.
    pub fn flush_chain(&mut self, name: &str) {
        self.line("flush", "chain", format_args!("{name}"));
    }

    /// `delete chain`.
    pub fn delete_chain(&mut self, name: &str) {
        self.line("delete", "chain", format_args!("{name}"));
    }

    /// `add rule`.
    pub fn add_rule(&mut self, chain: &str, rule: &str) {
        self.line("add", "rule", format_args!("{chain} {rule}"));
    }

    /// `add map`/`add set` for one of the table's maps.
    pub fn add_map(&mut self, map: MapName, family: IpFamily) {
        let kind = if map.is_set() { "set" } else { "map" };
        self.line(
            "add",
            kind,
            format_args!(
                "{} {{ type {} ; comment \"{}\" ; }}",
                map.as_str(),
                map.key_type(family),
                map.comment()
            ),
        );
    }

    /// `flush map`/`flush set`.
    pub fn flush_map(&mut self, map: MapName) {
        let kind = if map.is_set() { "set" } else { "map" };
        self.line("flush", kind, format_args!("{}", map.as_str()));
    }

    /// `add set` for an affinity set.
    pub fn add_affinity_set(&mut self, set: &AffinitySet, family: IpFamily) {
        self.line(
            "add",
            "set",
            format_args!(
                "{} {{ type {} ; flags dynamic,timeout ; timeout {}s ; }}",
                set.name,
                addr_type(family),
                set.timeout
            ),
        );
    }

    /// `delete set`.
    pub fn delete_set(&mut self, name: &str) {
        self.line("delete", "set", format_args!("{name}"));
    }

    /// `add element`.
    pub fn add_element(&mut self, e: &Element) {
        let comment = if e.comment.is_empty() {
            String::new()
        } else {
            format!(" comment \"{}\"", e.comment)
        };
        if e.map.is_set() {
            self.line(
                "add",
                "element",
                format_args!("{} {{ {}{comment} }}", e.map.as_str(), e.key),
            );
        } else {
            self.line(
                "add",
                "element",
                format_args!("{} {{ {}{comment} : {} }}", e.map.as_str(), e.key, e.value),
            );
        }
    }

    /// `delete element` (by key).
    pub fn delete_element(&mut self, map: MapName, key: &str) {
        self.line(
            "delete",
            "element",
            format_args!("{} {{ {key} }}", map.as_str()),
        );
    }

    /// The fixed part of the table: base chains, top-level chains and their rules, maps.
    /// Every chain written here is flushed first, and the maps are flushed: a full sync
    /// re-adds every element.
    pub fn setup(&mut self, family: IpFamily, service_cidr: Option<Cidr>) {
        let ipx = family_keyword(family);
        self.add_table();
        for (name, kind, hook, prio) in BASE_CHAINS {
            self.add_base_chain(name, kind, hook, prio);
            self.flush_chain(name);
        }
        let mut created: Vec<&str> = Vec::new();
        let mut ensure = |s: &mut Script, c: &'static str| {
            if !created.contains(&c) {
                created.push(c);
                s.add_chain(c);
                s.flush_chain(c);
            }
        };
        for (dst, src, cond) in JUMP_CHAINS {
            ensure(self, dst);
            let rule = if cond.is_empty() {
                format!("jump {dst}")
            } else {
                format!("{cond} jump {dst}")
            };
            self.add_rule(src, &rule);
        }
        for c in [MARK_MASQ_CHAIN, REJECT_CHAIN] {
            ensure(self, c);
        }
        self.add_rule(
            MARK_MASQ_CHAIN,
            &format!("meta mark set meta mark | {MASQUERADE_MARK:#x}"),
        );
        self.add_rule(
            MASQUERADING_CHAIN,
            &format!("meta mark & {MASQUERADE_MARK:#x} == 0 return"),
        );
        self.add_rule(
            MASQUERADING_CHAIN,
            &format!("meta mark set meta mark ^ {MASQUERADE_MARK:#x}"),
        );
        self.add_rule(MASQUERADING_CHAIN, "masquerade fully-random");
        self.add_rule(REJECT_CHAIN, "meta l4proto tcp reject with tcp reset");
        self.add_rule(REJECT_CHAIN, "reject");

        for map in MapName::ALL {
            self.add_map(map, family);
            self.flush_map(map);
        }
        self.add_rule(
            CLUSTER_IPS_CHECK_CHAIN,
            &format!(
                "{ipx} daddr @{} goto {REJECT_CHAIN}",
                MapName::ClusterIps.as_str()
            ),
        );
        if let Some(cidr) = service_cidr.filter(|c| c.family() == family) {
            self.add_rule(CLUSTER_IPS_CHECK_CHAIN, &format!("{ipx} daddr {cidr} drop"));
        }
        self.add_rule(
            SERVICE_ENDPOINTS_CHECK_CHAIN,
            &format!(
                "{ipx} daddr . meta l4proto . th dport vmap @{}",
                MapName::NoEndpointServices.as_str()
            ),
        );
        self.add_rule(
            NODEPORT_ENDPOINTS_CHECK_CHAIN,
            &format!(
                "{} meta l4proto . th dport vmap @{}",
                no_localhost(family),
                MapName::NoEndpointNodePorts.as_str()
            ),
        );
        self.add_rule(
            FIREWALL_CHECK_CHAIN,
            &format!(
                "{ipx} daddr . meta l4proto . th dport vmap @{}",
                MapName::FirewallIps.as_str()
            ),
        );
        self.add_rule(
            SERVICES_CHAIN,
            &format!(
                "{ipx} daddr . meta l4proto . th dport vmap @{}",
                MapName::ServiceIps.as_str()
            ),
        );
        self.add_rule(
            SERVICES_CHAIN,
            &format!(
                "fib daddr type local {} meta l4proto . th dport vmap @{}",
                no_localhost(family),
                MapName::ServiceNodePorts.as_str()
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Protocol, ServiceKey};

    fn cfg() -> RenderConfig {
        RenderConfig {
            family: IpFamily::V4,
            cluster_cidr: Cidr::parse("10.42.0.0/16"),
            node_ips: vec!["192.168.1.5".parse().unwrap()],
            service_cidr: None,
        }
    }

    fn ep(last: u8, local: bool) -> Endpoint {
        Endpoint {
            ip: IpAddr::V4([10, 42, 0, last].into()),
            port: 8080,
            local,
            ready: true,
            serving: true,
            terminating: false,
        }
    }

    fn port(eps: Vec<Endpoint>) -> ServicePort {
        ServicePort {
            service: ServiceKey::new("ns", "web"),
            port_name: "http".into(),
            protocol: Protocol::Tcp,
            cluster_ip: "10.43.0.10".parse().unwrap(),
            port: 80,
            node_port: 0,
            external_ips: vec![],
            load_balancer_vips: vec![],
            load_balancer_source_ranges: vec![],
            affinity_timeout: None,
            external_policy_local: false,
            internal_policy_local: false,
            endpoints: eps,
        }
    }

    fn svc(p: ServicePort) -> ProxiedService {
        ProxiedService {
            key: p.service.clone(),
            ports: vec![p],
            health_check_node_port: None,
        }
    }

    fn chain<'a>(r: &'a ServiceRules, prefix: &str) -> &'a Chain {
        r.chains
            .iter()
            .find(|c| c.name.starts_with(prefix))
            .unwrap_or_else(|| panic!("no chain {prefix} in {r:#?}"))
    }

    fn elems(r: &ServiceRules, map: MapName) -> Vec<(String, String)> {
        r.elements
            .iter()
            .filter(|e| e.map == map)
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect()
    }

    #[test]
    fn chain_names_follow_upstream_shape() {
        let p = port(vec![ep(1, false)]);
        let base = service_port_chain_base(&p);
        assert_eq!(base.len(), 8 + 1 + "ns/web/tcp/http".len());
        assert!(base.ends_with("-ns/web/tcp/http"), "{base}");
        assert!(base[..8]
            .bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)));
        let e = endpoint_chain_base(&p, &ep(1, false));
        assert!(e.ends_with("-ns/web/tcp/http__10.42.0.1/8080"), "{e}");
        let mut v6 = ep(1, false);
        v6.ip = "fd00::1".parse().unwrap();
        assert!(endpoint_chain_base(&p, &v6).ends_with("__fd00..1/8080"));
        let long = hash_and_truncate(&"x".repeat(400));
        assert_eq!(long.len(), NAME_LENGTH_MAX - PREFIX_LENGTH_MAX);
        assert!(long.ends_with("..."));
    }

    #[test]
    fn cluster_ip_with_endpoints() {
        let r = render_service(
            &cfg(),
            &svc(port(vec![ep(1, false), ep(2, false), ep(3, true)])),
        );
        let svc_chain = chain(&r, "service-");
        assert_eq!(
            elems(&r, MapName::ServiceIps),
            vec![(
                "10.43.0.10 . tcp . 80".into(),
                format!("goto {}", svc_chain.name)
            )]
        );
        assert_eq!(
            elems(&r, MapName::ClusterIps),
            vec![("10.43.0.10".into(), String::new())]
        );
        assert!(elems(&r, MapName::NoEndpointServices).is_empty());
        assert_eq!(svc_chain.rules.len(), 4);
        assert_eq!(
            svc_chain.rules[0],
            "ip daddr 10.43.0.10 tcp dport 80 ip saddr != 10.42.0.0/16 jump mark-for-masquerade"
        );
        assert!(
            svc_chain.rules[1].starts_with("numgen random mod 3 == 0 goto endpoint-"),
            "{}",
            svc_chain.rules[1]
        );
        assert!(svc_chain.rules[2].starts_with("numgen random mod 2 == 0 goto endpoint-"));
        assert!(
            svc_chain.rules[3].starts_with("goto endpoint-")
                && svc_chain.rules[3].ends_with("__10.42.0.3/8080")
        );
        let ep_chains: Vec<&Chain> = r
            .chains
            .iter()
            .filter(|c| c.name.starts_with("endpoint-"))
            .collect();
        assert_eq!(ep_chains.len(), 3);
        assert_eq!(
            ep_chains[0].rules,
            vec![
                "ip saddr 10.42.0.1 jump mark-for-masquerade".to_string(),
                "meta l4proto tcp dnat to 10.42.0.1:8080".to_string()
            ]
        );
        // Endpoint chains are created before the chains that jump to them.
        let pos = |p: &str| r.chains.iter().position(|c| c.name.starts_with(p)).unwrap();
        assert!(pos("endpoint-") < pos("service-"));
        assert!(r.sets.is_empty());
    }

    #[test]
    fn no_endpoints_rejects() {
        let mut p = port(vec![]);
        p.node_port = 30080;
        p.external_ips = vec!["192.0.2.1".parse().unwrap()];
        let r = render_service(&cfg(), &svc(p));
        assert!(r.chains.is_empty());
        assert!(elems(&r, MapName::ServiceIps).is_empty());
        assert_eq!(
            elems(&r, MapName::NoEndpointServices),
            vec![
                ("10.43.0.10 . tcp . 80".into(), "goto reject-chain".into()),
                ("192.0.2.1 . tcp . 80".into(), "goto reject-chain".into())
            ]
        );
        assert_eq!(
            elems(&r, MapName::NoEndpointNodePorts),
            vec![("tcp . 30080".into(), "goto reject-chain".into())]
        );
        assert!(r
            .elements
            .iter()
            .filter(|e| e.map == MapName::NoEndpointServices)
            .all(|e| e.comment == "ns/web:http"));
    }

    #[test]
    fn node_port_external_ip_and_load_balancer_masquerade() {
        let mut p = port(vec![ep(1, false)]);
        p.node_port = 30080;
        p.external_ips = vec!["192.0.2.1".parse().unwrap()];
        p.load_balancer_vips = vec!["192.0.2.2".parse().unwrap()];
        let r = render_service(&cfg(), &svc(p));
        let ext = chain(&r, "external-");
        let svc_chain = chain(&r, "service-");
        assert_eq!(
            ext.rules,
            vec![
                "jump mark-for-masquerade".to_string(),
                format!("goto {}", svc_chain.name)
            ]
        );
        let goto_ext = format!("goto {}", ext.name);
        assert_eq!(
            elems(&r, MapName::ServiceIps),
            vec![
                (
                    "10.43.0.10 . tcp . 80".into(),
                    format!("goto {}", svc_chain.name)
                ),
                ("192.0.2.1 . tcp . 80".into(), goto_ext.clone()),
                ("192.0.2.2 . tcp . 80".into(), goto_ext.clone()),
            ]
        );
        assert_eq!(
            elems(&r, MapName::ServiceNodePorts),
            vec![("tcp . 30080".into(), goto_ext)]
        );
        assert!(elems(&r, MapName::FirewallIps).is_empty());
    }

    #[test]
    fn external_traffic_policy_local() {
        let mut p = port(vec![ep(1, true), ep(2, false)]);
        p.node_port = 30080;
        p.external_policy_local = true;
        let r = render_service(&cfg(), &svc(p.clone()));
        let ext = chain(&r, "external-");
        let svc_chain = chain(&r, "service-");
        let local = chain(&r, "local-");
        assert_eq!(
            ext.rules,
            vec![
                format!("ip saddr 10.42.0.0/16 goto {} comment \"short-circuit pod traffic\"", svc_chain.name),
                "fib saddr type local jump mark-for-masquerade comment \"masquerade local traffic\"".to_string(),
                format!("fib saddr type local goto {} comment \"short-circuit local traffic\"", svc_chain.name),
                format!("goto {}", local.name),
            ]
        );
        // The local chain has only the local endpoint, and no masquerade.
        assert_eq!(local.rules.len(), 1);
        assert!(
            local.rules[0].starts_with("goto endpoint-")
                && local.rules[0].ends_with("__10.42.0.1/8080")
        );
        assert!(!ext.rules.iter().any(|r| r == "jump mark-for-masquerade"));

        // Without local endpoints: external traffic is dropped, pods still short-circuit.
        p.endpoints = vec![ep(2, false)];
        let r = render_service(&cfg(), &svc(p));
        assert!(!r.chains.iter().any(|c| c.name.starts_with("local-")));
        let ext = chain(&r, "external-");
        assert_eq!(ext.rules.len(), 3);
        assert_eq!(
            elems(&r, MapName::NoEndpointNodePorts),
            vec![("tcp . 30080".into(), "drop".into())]
        );
        assert_eq!(elems(&r, MapName::ServiceNodePorts).len(), 1);
    }

    #[test]
    fn internal_traffic_policy_local() {
        let mut p = port(vec![ep(1, true), ep(2, false)]);
        p.internal_policy_local = true;
        let r = render_service(&cfg(), &svc(p.clone()));
        let local = chain(&r, "local-");
        assert_eq!(
            elems(&r, MapName::ServiceIps),
            vec![(
                "10.43.0.10 . tcp . 80".into(),
                format!("goto {}", local.name)
            )]
        );
        assert!(!r.chains.iter().any(|c| c.name.starts_with("service-")));
        assert_eq!(
            r.chains
                .iter()
                .filter(|c| c.name.starts_with("endpoint-"))
                .count(),
            1
        );
        // No local endpoint: ClusterIP traffic is dropped (not rejected).
        p.endpoints = vec![ep(2, false)];
        let r = render_service(&cfg(), &svc(p));
        assert_eq!(
            elems(&r, MapName::NoEndpointServices),
            vec![("10.43.0.10 . tcp . 80".into(), "drop".into())]
        );
        assert!(r.chains.is_empty());
    }

    #[test]
    fn session_affinity_sets_and_rules() {
        let mut p = port(vec![ep(1, false), ep(2, false)]);
        p.affinity_timeout = Some(600);
        let r = render_service(&cfg(), &svc(p));
        assert_eq!(r.sets.len(), 2);
        assert!(r
            .sets
            .iter()
            .all(|s| s.timeout == 600 && s.name.starts_with("affinity-")));
        let svc_chain = chain(&r, "service-");
        assert!(
            svc_chain.rules[1].starts_with("ip saddr @affinity-")
                && svc_chain.rules[1].contains(" goto endpoint-")
        );
        assert!(svc_chain.rules[2].starts_with("ip saddr @affinity-"));
        assert!(svc_chain.rules[3].starts_with("numgen random mod 2 == 0 goto "));
        let e = chain(&r, "endpoint-");
        assert_eq!(e.rules.len(), 3);
        assert!(
            e.rules[1].starts_with("update @affinity-") && e.rules[1].ends_with(" { ip saddr }")
        );
        let mut s = Script::new(IpFamily::V4, "t");
        s.add_affinity_set(&r.sets[0], IpFamily::V4);
        assert!(s
            .as_str()
            .ends_with("{ type ipv4_addr ; flags dynamic,timeout ; timeout 600s ; }\n"));
    }

    #[test]
    fn load_balancer_source_ranges_firewall() {
        let mut p = port(vec![ep(1, false)]);
        p.load_balancer_vips = vec!["192.0.2.2".parse().unwrap()];
        p.load_balancer_source_ranges = vec![Cidr::parse("198.51.100.0/24").unwrap()];
        let r = render_service(&cfg(), &svc(p.clone()));
        let fw = chain(&r, "firewall-");
        assert_eq!(
            fw.rules,
            vec!["ip saddr != { 198.51.100.0/24 } drop".to_string()]
        );
        assert_eq!(
            elems(&r, MapName::FirewallIps),
            vec![("192.0.2.2 . tcp . 80".into(), format!("goto {}", fw.name))]
        );
        // A range containing the node admits the LoadBalancer IP itself.
        p.load_balancer_source_ranges
            .push(Cidr::parse("192.168.0.0/16").unwrap());
        let r = render_service(&cfg(), &svc(p));
        assert_eq!(
            chain(&r, "firewall-").rules,
            vec!["ip saddr != { 198.51.100.0/24, 192.168.0.0/16, 192.0.2.2 } drop".to_string()]
        );
    }

    #[test]
    fn protocols_and_ipv6() {
        let mut p = port(vec![Endpoint {
            ip: "fd00:42::5".parse().unwrap(),
            port: 53,
            local: false,
            ready: true,
            serving: true,
            terminating: false,
        }]);
        p.protocol = Protocol::Sctp;
        p.cluster_ip = "fd00:43::a".parse().unwrap();
        let c6 = RenderConfig {
            family: IpFamily::V6,
            cluster_cidr: Cidr::parse("fd00:42::/56"),
            node_ips: vec![],
            service_cidr: None,
        };
        let r = render_service(&c6, &svc(p));
        let e = chain(&r, "endpoint-");
        assert_eq!(
            e.rules,
            vec![
                "ip6 saddr fd00:42::5 jump mark-for-masquerade".to_string(),
                "meta l4proto sctp dnat to [fd00:42::5]:53".to_string()
            ]
        );
        assert_eq!(
            chain(&r, "service-").rules[0],
            "ip6 daddr fd00:43::a sctp dport 80 ip6 saddr != fd00:42::/56 jump mark-for-masquerade"
        );
        assert_eq!(
            elems(&r, MapName::ServiceIps)[0].0,
            "fd00:43::a . sctp . 80"
        );
        let mut s = Script::new(IpFamily::V6, "t");
        s.setup(IpFamily::V6, None);
        assert!(s.as_str().contains(
            "add map ip6 t service-ips { type ipv6_addr . inet_proto . inet_service : verdict ;"
        ));
        assert!(s
            .as_str()
            .contains("ip6 daddr != ::1 meta l4proto . th dport vmap @no-endpoint-nodeports"));
    }

    #[test]
    fn terminating_endpoints_used_only_without_ready_ones() {
        let mut t = ep(2, false);
        t.ready = false;
        t.terminating = true;
        let r = render_service(&cfg(), &svc(port(vec![ep(1, false), t.clone()])));
        assert_eq!(
            r.chains
                .iter()
                .filter(|c| c.name.starts_with("endpoint-"))
                .count(),
            1
        );
        let r = render_service(&cfg(), &svc(port(vec![t])));
        assert_eq!(
            r.chains
                .iter()
                .filter(|c| c.name.starts_with("endpoint-"))
                .count(),
            1
        );
        assert_eq!(elems(&r, MapName::ServiceIps).len(), 1);
    }

    #[test]
    fn setup_script_layout() {
        let mut s = Script::new(IpFamily::V4, "rk3s-proxy");
        s.setup(IpFamily::V4, Cidr::parse("10.43.0.0/16"));
        let text = s.as_str();
        for needle in [
            "add chain ip rk3s-proxy nat-prerouting { type nat hook prerouting priority -100 ; }",
            "add chain ip rk3s-proxy filter-output-post-dnat { type filter hook output priority -90 ; }",
            "add rule ip rk3s-proxy filter-input ct state new jump nodeport-endpoints-check",
            "add rule ip rk3s-proxy nat-postrouting jump masquerading",
            "add rule ip rk3s-proxy services ip daddr . meta l4proto . th dport vmap @service-ips",
            "add rule ip rk3s-proxy services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports",
            "add rule ip rk3s-proxy mark-for-masquerade meta mark set meta mark | 0x4000",
            "add rule ip rk3s-proxy masquerading masquerade fully-random",
            "add rule ip rk3s-proxy reject-chain meta l4proto tcp reject with tcp reset",
            "add rule ip rk3s-proxy cluster-ips-check ip daddr @cluster-ips goto reject-chain",
            "add rule ip rk3s-proxy cluster-ips-check ip daddr 10.43.0.0/16 drop",
            "flush map ip rk3s-proxy no-endpoint-services",
            "add set ip rk3s-proxy cluster-ips { type ipv4_addr ;",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        // Every top-level chain is flushed exactly once before its rules.
        assert_eq!(
            text.matches("flush chain ip rk3s-proxy services\n").count(),
            1
        );
        let mut e = Script::new(IpFamily::V4, "t");
        e.add_element(&Element {
            map: MapName::NoEndpointNodePorts,
            key: "udp . 30053".into(),
            value: "drop".into(),
            comment: "a/b:dns".into(),
        });
        e.add_element(&Element {
            map: MapName::ClusterIps,
            key: "10.43.0.1".into(),
            value: String::new(),
            comment: String::new(),
        });
        e.delete_element(MapName::ServiceIps, "10.43.0.1 . tcp . 443");
        assert_eq!(
            e.as_str(),
            "add element ip t no-endpoint-nodeports { udp . 30053 comment \"a/b:dns\" : drop }\nadd element ip t cluster-ips { 10.43.0.1 }\ndelete element ip t service-ips { 10.43.0.1 . tcp . 443 }\n"
        );
    }
}
