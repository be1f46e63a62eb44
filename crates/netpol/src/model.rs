//! The pure model: NetworkPolicies + Pods + Namespaces -> a [`Plan`] saying, for every
//! local pod, which traffic each direction allows, plus the peer sets the rules refer to.
//!
//! Semantics follow `networking.k8s.io/v1` NetworkPolicy:
//! - a pod is restricted in a direction only when some policy of its namespace selects
//!   it (`spec.podSelector`) and lists that direction in `policyTypes` (defaulted as the
//!   API server does: `Ingress`, plus `Egress` when `egress` has rules); what it may do
//!   then is the union of the rules of all such policies (no rule = nothing allowed);
//! - a rule allows a packet when one of its peers (`from`/`to`; none = everyone) AND one
//!   of its ports (none = every port) match;
//! - a peer is a `podSelector` (pods of the policy's namespace), a `namespaceSelector`
//!   (every pod of the matching namespaces), both (pods matching the pod selector in the
//!   matching namespaces) or an `ipBlock` (its CIDR minus its `except` CIDRs);
//! - a port is a number (with `endPort`, a range), a name (resolved per destination pod
//!   from its containers' ports with the same name and protocol) or absent (every port of
//!   the protocol); the protocol defaults to TCP.
//!
//! Host-network pods, pods without an IP and pods in a terminal phase (their IP may be
//! reused) are not in the model: never selected, never peers. A policy that cannot be
//! used (bad selector, CIDR, port or protocol) is reported in [`Plan::skipped`] and
//! ignored; it never affects the others.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::selector::{Selector, SelectorError};

/// The label every namespace carries with its own name (set by the API server; added
/// here when missing so selectors on it always work).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A transport protocol a NetworkPolicy port can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP (the default).
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// Parses an API protocol name (case-sensitive, as the API); `None` is TCP.
    pub fn parse(s: Option<&str>) -> Option<Protocol> {
        match s {
            None | Some("TCP") => Some(Protocol::Tcp),
            Some("UDP") => Some(Protocol::Udp),
            Some("SCTP") => Some(Protocol::Sctp),
            Some(_) => None,
        }
    }

    /// The protocol's name in nftables (`meta l4proto`).
    pub fn nft_name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// A named container port of a pod.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NamedPort {
    /// The port's name (`containers[].ports[].name`).
    pub name: String,
    /// Its protocol.
    pub protocol: Protocol,
    /// Its number (`containerPort`).
    pub port: u16,
}

/// What the model needs of a Pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's labels.
    pub labels: BTreeMap<String, String>,
    /// `spec.nodeName` (empty when not scheduled).
    pub node_name: String,
    /// `status.podIPs` (or `status.podIP`), IPv4 and/or IPv6.
    pub ips: Vec<IpAddr>,
    /// The named ports of its containers.
    pub named_ports: Vec<NamedPort>,
}

impl PodInfo {
    /// The model's view of `pod`; `None` for pods the model ignores: host-network pods,
    /// pods in phase Succeeded or Failed, pods without a (parseable) IP.
    pub fn from_pod(pod: &Pod) -> Option<PodInfo> {
        let spec = pod.spec.as_ref()?;
        if spec.host_network == Some(true) {
            return None;
        }
        let status = pod.status.as_ref()?;
        if matches!(status.phase.as_deref(), Some("Succeeded") | Some("Failed")) {
            return None;
        }
        let mut ips: Vec<IpAddr> = Vec::new();
        for s in status
            .pod_ips
            .iter()
            .flatten()
            .map(|p| p.ip.as_str())
            .chain(status.pod_ip.as_deref())
        {
            if let Ok(ip) = s.parse::<IpAddr>() {
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
        }
        if ips.is_empty() {
            return None;
        }
        let mut named_ports = Vec::new();
        for c in &spec.containers {
            for p in c.ports.iter().flatten() {
                let (Some(name), Some(protocol), Ok(port)) = (
                    p.name.as_ref(),
                    Protocol::parse(p.protocol.as_deref()),
                    u16::try_from(p.container_port),
                ) else {
                    continue;
                };
                if name.is_empty() || port == 0 {
                    continue;
                }
                named_ports.push(NamedPort {
                    name: name.clone(),
                    protocol,
                    port,
                });
            }
        }
        Some(PodInfo {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            node_name: spec.node_name.clone().unwrap_or_default(),
            ips,
            named_ports,
        })
    }

    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The pod standing for rk3s's built-in cluster DNS server, which answers on `ips` (the
/// node's addresses): `kube-system/rk3s-dns`, labelled `k8s-app: kube-dns`, with
/// CoreDNS's named ports. It is never local (never selected), only a peer.
pub fn builtin_dns_pod(ips: &[IpAddr]) -> Option<PodInfo> {
    if ips.is_empty() {
        return None;
    }
    Some(PodInfo {
        namespace: String::from("kube-system"),
        name: String::from("rk3s-dns"),
        labels: [(String::from("k8s-app"), String::from("kube-dns"))]
            .into_iter()
            .collect(),
        node_name: String::new(),
        ips: ips.to_vec(),
        named_ports: vec![
            NamedPort {
                name: String::from("dns"),
                protocol: Protocol::Udp,
                port: 53,
            },
            NamedPort {
                name: String::from("dns-tcp"),
                protocol: Protocol::Tcp,
                port: 53,
            },
            NamedPort {
                name: String::from("metrics"),
                protocol: Protocol::Tcp,
                port: 9153,
            },
        ],
    })
}

/// What the model needs of a Namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceInfo {
    /// The namespace's name.
    pub name: String,
    /// Its labels, always including `kubernetes.io/metadata.name`.
    pub labels: BTreeMap<String, String>,
}

impl NamespaceInfo {
    /// A namespace with `labels` (the name label is added when missing).
    pub fn new(name: &str, labels: BTreeMap<String, String>) -> Self {
        let mut labels = labels;
        labels
            .entry(NAMESPACE_NAME_LABEL.to_string())
            .or_insert_with(|| name.to_string());
        NamespaceInfo {
            name: name.to_string(),
            labels,
        }
    }

    /// The model's view of `ns`.
    pub fn from_namespace(ns: &Namespace) -> Option<Self> {
        let name = ns.metadata.name.as_deref()?;
        Some(Self::new(
            name,
            ns.metadata.labels.clone().unwrap_or_default(),
        ))
    }
}

/// A range of ports of one protocol (a single port has `first == last`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    /// The protocol.
    pub protocol: Protocol,
    /// The first port.
    pub first: u16,
    /// The last port (inclusive).
    pub last: u16,
}

/// A reference to a peer set of the [`Plan`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerRef {
    /// A set of pod IPs ([`Plan::pod_sets`]).
    Pods(String),
    /// A set of address ranges ([`Plan::cidr_sets`]).
    Cidr(String),
}

/// The ports a rule allows (when the rule has ports).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortSpec {
    /// Numeric ports and ranges (named ports of ingress rules, resolved on the pod itself,
    /// end up here too).
    pub ranges: Vec<PortRange>,
    /// Named ports of egress rules: names of [`Plan::port_sets`] holding the
    /// `(pod IP, protocol, port)` of every pod that has the named port.
    pub named_sets: Vec<String>,
}

impl PortSpec {
    /// Whether no port can match.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty() && self.named_sets.is_empty()
    }
}

/// One allow rule as it applies to one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleMatch {
    /// `namespace/name` of the policy the rule comes from.
    pub policy: String,
    /// The peers (`None`: every address).
    pub peers: Option<Vec<PeerRef>>,
    /// The ports (`None`: every port and protocol; never an empty spec).
    pub ports: Option<PortSpec>,
}

/// What one local pod may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPolicy {
    /// The pod's IPs.
    pub ips: Vec<IpAddr>,
    /// Allowed ingress (`None`: not restricted; empty: nothing allowed).
    pub ingress: Option<Vec<RuleMatch>>,
    /// Allowed egress (`None`: not restricted; empty: nothing allowed).
    pub egress: Option<Vec<RuleMatch>>,
}

/// A set of address ranges made from an `ipBlock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrSet {
    /// Whether the ranges are IPv6.
    pub ipv6: bool,
    /// Disjoint, sorted, non-adjacent inclusive ranges.
    pub ranges: Vec<(IpAddr, IpAddr)>,
}

/// A policy the model had to ignore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedPolicy {
    /// `namespace/name`.
    pub policy: String,
    /// Why.
    pub reason: String,
}

/// The model's result: everything the renderer needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Local pods restricted in at least one direction, by `namespace/name`.
    pub pods: BTreeMap<String, PodPolicy>,
    /// Pod IP sets by name (only those the rules use).
    pub pod_sets: BTreeMap<String, BTreeSet<IpAddr>>,
    /// Address range sets by name (only those the rules use).
    pub cidr_sets: BTreeMap<String, CidrSet>,
    /// Named port sets by name: `(pod IP, protocol, port)` (only those the rules use).
    pub port_sets: BTreeMap<String, BTreeSet<(IpAddr, Protocol, u16)>>,
    /// Policies that were ignored, with the reason.
    pub skipped: Vec<SkippedPolicy>,
}

/// Why a policy cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A bad label selector.
    #[error("{0}")]
    Selector(#[from] SelectorError),
    /// A bad CIDR.
    #[error("invalid CIDR {0:?}")]
    Cidr(String),
    /// An `except` not inside its CIDR or of the other family.
    #[error("except {except:?} is not inside {cidr:?}")]
    Except {
        /// The block's CIDR.
        cidr: String,
        /// The offending except.
        except: String,
    },
    /// A peer with nothing or with an ipBlock and selectors.
    #[error("a peer must set exactly one of ipBlock or podSelector/namespaceSelector")]
    Peer,
    /// An unknown protocol.
    #[error("unknown protocol {0:?}")]
    Protocol(String),
    /// A bad port number or range.
    #[error("invalid port {0}")]
    Port(String),
    /// An unknown policy type.
    #[error("unknown policy type {0:?}")]
    PolicyType(String),
}

/// A 64-bit FNV-1a hash as 16 hex digits: stable names for sets and chains.
pub(crate) fn short_hash(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// A compiled peer: a set name and what fills it.
#[derive(Debug, Clone)]
enum PeerDef {
    Pods {
        name: String,
        namespace: Option<String>,
        ns_sel: Option<Selector>,
        pod_sel: Selector,
    },
    Cidr {
        name: String,
        set: CidrSet,
    },
}

/// A compiled port.
#[derive(Debug, Clone)]
enum PortDef {
    Range(PortRange),
    Named(Protocol, String),
}

#[derive(Debug, Clone)]
struct RuleDef {
    peers: Option<Vec<PeerDef>>,
    ports: Option<Vec<PortDef>>,
}

#[derive(Debug, Clone)]
struct PolicyDef {
    key: String,
    namespace: String,
    pod_sel: Selector,
    ingress: Option<Vec<RuleDef>>,
    egress: Option<Vec<RuleDef>>,
}

fn selector_json(sel: &LabelSelector) -> String {
    serde_json::to_string(sel).unwrap_or_default()
}

/// Parses `a.b.c.d/n` or `x::/n` (with [`rk3s_core::Cidr`]) into an inclusive range
/// (host bits ignored, as upstream's ParseCIDR masks them).
fn parse_cidr(s: &str) -> Option<(bool, u128, u128)> {
    let c = rk3s_core::Cidr::parse(s.trim()).ok()?;
    let (lo, hi) = c.range();
    Some((c.is_ipv6(), lo, hi))
}

fn to_ip(v6: bool, x: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(x.into())
    } else {
        IpAddr::V4(u32::try_from(x).unwrap_or(u32::MAX).into())
    }
}

/// `ipBlock` -> disjoint ranges: the CIDR minus every except.
fn ip_block_ranges(b: &IPBlock) -> Result<CidrSet, PolicyError> {
    let (v6, lo, hi) = parse_cidr(&b.cidr).ok_or_else(|| PolicyError::Cidr(b.cidr.clone()))?;
    let mut ranges: Vec<(u128, u128)> = vec![(lo, hi)];
    for e in b.except.iter().flatten() {
        let (ev6, elo, ehi) = parse_cidr(e).ok_or_else(|| PolicyError::Cidr(e.clone()))?;
        if ev6 != v6 || elo < lo || ehi > hi {
            return Err(PolicyError::Except {
                cidr: b.cidr.clone(),
                except: e.clone(),
            });
        }
        let mut next = Vec::with_capacity(ranges.len() + 1);
        for (a, z) in ranges {
            if ehi < a || elo > z {
                next.push((a, z));
                continue;
            }
            if elo > a {
                next.push((a, elo - 1));
            }
            if ehi < z {
                next.push((ehi + 1, z));
            }
        }
        ranges = next;
    }
    ranges.sort_unstable();
    let mut merged: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for (a, z) in ranges {
        match merged.last_mut() {
            Some(last) if last.1.checked_add(1).is_some_and(|n| n >= a) => last.1 = last.1.max(z),
            _ => merged.push((a, z)),
        }
    }
    Ok(CidrSet {
        ipv6: v6,
        ranges: merged
            .into_iter()
            .map(|(a, z)| (to_ip(v6, a), to_ip(v6, z)))
            .collect(),
    })
}

fn compile_peer(p: &NetworkPolicyPeer, policy_ns: &str) -> Result<PeerDef, PolicyError> {
    match (&p.ip_block, &p.pod_selector, &p.namespace_selector) {
        (Some(b), None, None) => {
            let set = ip_block_ranges(b)?;
            let mut except: Vec<&str> = b.except.iter().flatten().map(|s| s.trim()).collect();
            except.sort_unstable();
            let name = format!(
                "cidr-{}",
                short_hash(&format!("{}|{}", b.cidr.trim(), except.join(",")))
            );
            Ok(PeerDef::Cidr { name, set })
        }
        (None, None, None) | (Some(_), _, _) => Err(PolicyError::Peer),
        (None, pod_sel, ns_sel) => {
            let pod = Selector::compile(&pod_sel.clone().unwrap_or_default())?;
            let pod_json = selector_json(&pod_sel.clone().unwrap_or_default());
            match ns_sel {
                None => Ok(PeerDef::Pods {
                    name: format!(
                        "pods-{}",
                        short_hash(&format!("ns={policy_ns}|pod={pod_json}"))
                    ),
                    namespace: Some(policy_ns.to_string()),
                    ns_sel: None,
                    pod_sel: pod,
                }),
                Some(ns) => {
                    let nss = Selector::compile(ns)?;
                    Ok(PeerDef::Pods {
                        name: format!(
                            "pods-{}",
                            short_hash(&format!("nssel={}|pod={pod_json}", selector_json(ns)))
                        ),
                        namespace: None,
                        ns_sel: Some(nss),
                        pod_sel: pod,
                    })
                }
            }
        }
    }
}

fn compile_port(p: &NetworkPolicyPort) -> Result<PortDef, PolicyError> {
    let protocol = Protocol::parse(p.protocol.as_deref())
        .ok_or_else(|| PolicyError::Protocol(p.protocol.clone().unwrap_or_default()))?;
    match &p.port {
        None => Ok(PortDef::Range(PortRange {
            protocol,
            first: 0,
            last: u16::MAX,
        })),
        Some(IntOrString::Int(n)) => {
            let first = u16::try_from(*n)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| PolicyError::Port(n.to_string()))?;
            let last = match p.end_port {
                None => first,
                Some(e) => u16::try_from(e)
                    .ok()
                    .filter(|e| *e >= first)
                    .ok_or_else(|| PolicyError::Port(format!("{n}-{e}")))?,
            };
            Ok(PortDef::Range(PortRange {
                protocol,
                first,
                last,
            }))
        }
        Some(IntOrString::String(name)) if name.is_empty() => {
            Err(PolicyError::Port(String::from("\"\"")))
        }
        Some(IntOrString::String(name)) => Ok(PortDef::Named(protocol, name.clone())),
    }
}

fn compile_rule(
    peers: Option<&Vec<NetworkPolicyPeer>>,
    ports: Option<&Vec<NetworkPolicyPort>>,
    ns: &str,
) -> Result<RuleDef, PolicyError> {
    let peers = match peers {
        Some(v) if !v.is_empty() => Some(
            v.iter()
                .map(|p| compile_peer(p, ns))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        _ => None,
    };
    let ports = match ports {
        Some(v) if !v.is_empty() => {
            Some(v.iter().map(compile_port).collect::<Result<Vec<_>, _>>()?)
        }
        _ => None,
    };
    Ok(RuleDef { peers, ports })
}

fn compile_policy(np: &NetworkPolicy) -> Result<PolicyDef, PolicyError> {
    let namespace = np.metadata.namespace.clone().unwrap_or_default();
    let key = format!(
        "{}/{}",
        namespace,
        np.metadata.name.as_deref().unwrap_or_default()
    );
    let spec = np.spec.clone().unwrap_or_default();
    let pod_sel = Selector::compile(&spec.pod_selector.unwrap_or_default())?;
    let types: Vec<String> = match spec.policy_types.as_ref().filter(|t| !t.is_empty()) {
        Some(t) => t.clone(),
        None => {
            // the API server's defaulting
            let mut t = vec![String::from("Ingress")];
            if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) {
                t.push(String::from("Egress"));
            }
            t
        }
    };
    let (mut has_in, mut has_out) = (false, false);
    for t in &types {
        match t.as_str() {
            "Ingress" => has_in = true,
            "Egress" => has_out = true,
            other => return Err(PolicyError::PolicyType(other.to_string())),
        }
    }
    let ingress = if has_in {
        Some(
            spec.ingress
                .iter()
                .flatten()
                .map(|r| compile_rule(r.from.as_ref(), r.ports.as_ref(), &namespace))
                .collect::<Result<Vec<_>, _>>()?,
        )
    } else {
        None
    };
    let egress = if has_out {
        Some(
            spec.egress
                .iter()
                .flatten()
                .map(|r| compile_rule(r.to.as_ref(), r.ports.as_ref(), &namespace))
                .collect::<Result<Vec<_>, _>>()?,
        )
    } else {
        None
    };
    Ok(PolicyDef {
        key,
        namespace,
        pod_sel,
        ingress,
        egress,
    })
}

/// An ingress rule with its peers resolved; its ports still to resolve per pod.
type ResolvedIngressRule<'a> = (Option<Vec<PeerRef>>, &'a Option<Vec<PortDef>>);

/// Fills the plan's sets on demand.
struct SetBuilder<'a> {
    pods: &'a [PodInfo],
    namespaces: BTreeMap<&'a str, &'a NamespaceInfo>,
}

impl SetBuilder<'_> {
    fn namespace_matches(&self, ns: &str, sel: &Selector) -> bool {
        match self.namespaces.get(ns) {
            Some(n) => sel.matches(&n.labels),
            None => sel.matches(&NamespaceInfo::new(ns, BTreeMap::new()).labels),
        }
    }

    fn peer(&self, plan: &mut Plan, def: &PeerDef) -> PeerRef {
        match def {
            PeerDef::Cidr { name, set } => {
                plan.cidr_sets
                    .entry(name.clone())
                    .or_insert_with(|| set.clone());
                PeerRef::Cidr(name.clone())
            }
            PeerDef::Pods {
                name,
                namespace,
                ns_sel,
                pod_sel,
            } => {
                if !plan.pod_sets.contains_key(name) {
                    let mut ips = BTreeSet::new();
                    for p in self.pods {
                        let ns_ok = match (namespace, ns_sel) {
                            (Some(ns), _) => p.namespace == *ns,
                            (None, Some(sel)) => self.namespace_matches(&p.namespace, sel),
                            (None, None) => true,
                        };
                        if ns_ok && pod_sel.matches(&p.labels) {
                            ips.extend(p.ips.iter().copied());
                        }
                    }
                    plan.pod_sets.insert(name.clone(), ips);
                }
                PeerRef::Pods(name.clone())
            }
        }
    }

    fn named_port_set(&self, plan: &mut Plan, protocol: Protocol, port_name: &str) -> String {
        let name = format!(
            "port-{}",
            short_hash(&format!("{}|{port_name}", protocol.nft_name()))
        );
        if !plan.port_sets.contains_key(&name) {
            let mut set = BTreeSet::new();
            for p in self.pods {
                for np in p
                    .named_ports
                    .iter()
                    .filter(|np| np.name == port_name && np.protocol == protocol)
                {
                    for ip in &p.ips {
                        set.insert((*ip, protocol, np.port));
                    }
                }
            }
            plan.port_sets.insert(name.clone(), set);
        }
        name
    }
}

/// Computes the plan for node `node_name`: which local pods are restricted and how.
pub fn compute(
    node_name: &str,
    policies: &[NetworkPolicy],
    pods: &[PodInfo],
    namespaces: &[NamespaceInfo],
) -> Plan {
    let mut plan = Plan::default();
    let builder = SetBuilder {
        pods,
        namespaces: namespaces.iter().map(|n| (n.name.as_str(), n)).collect(),
    };
    let mut local: Vec<&PodInfo> = pods
        .iter()
        .filter(|p| !node_name.is_empty() && p.node_name == node_name)
        .collect();
    local.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

    let mut defs = Vec::new();
    for np in policies {
        match compile_policy(np) {
            Ok(d) => defs.push(d),
            Err(e) => plan.skipped.push(SkippedPolicy {
                policy: format!(
                    "{}/{}",
                    np.metadata.namespace.as_deref().unwrap_or_default(),
                    np.metadata.name.as_deref().unwrap_or_default()
                ),
                reason: e.to_string(),
            }),
        }
    }
    defs.sort_by(|a, b| a.key.cmp(&b.key));

    for def in &defs {
        let selected: Vec<&PodInfo> = local
            .iter()
            .copied()
            .filter(|p| p.namespace == def.namespace && def.pod_sel.matches(&p.labels))
            .collect();
        if selected.is_empty() {
            continue;
        }
        // peers and egress ports do not depend on the selected pod: resolve once
        let ingress: Option<Vec<ResolvedIngressRule>> = def.ingress.as_ref().map(|rules| {
            rules
                .iter()
                .map(|r| {
                    (
                        r.peers
                            .as_ref()
                            .map(|ps| ps.iter().map(|p| builder.peer(&mut plan, p)).collect()),
                        &r.ports,
                    )
                })
                .collect()
        });
        let egress: Option<Vec<RuleMatch>> = def.egress.as_ref().map(|rules| {
            rules
                .iter()
                .filter_map(|r| {
                    let peers = r
                        .peers
                        .as_ref()
                        .map(|ps| ps.iter().map(|p| builder.peer(&mut plan, p)).collect());
                    let ports = r.ports.as_ref().map(|ports| {
                        let mut spec = PortSpec::default();
                        for p in ports {
                            match p {
                                PortDef::Range(r) => spec.ranges.push(*r),
                                PortDef::Named(proto, name) => spec
                                    .named_sets
                                    .push(builder.named_port_set(&mut plan, *proto, name)),
                            }
                        }
                        spec
                    });
                    if ports.as_ref().is_some_and(PortSpec::is_empty) {
                        return None;
                    }
                    Some(RuleMatch {
                        policy: def.key.clone(),
                        peers,
                        ports,
                    })
                })
                .collect()
        });
        for pod in selected {
            let entry = plan.pods.entry(pod.key()).or_insert_with(|| PodPolicy {
                ips: pod.ips.clone(),
                ingress: None,
                egress: None,
            });
            if let Some(rules) = &ingress {
                let v = entry.ingress.get_or_insert_with(Vec::new);
                for (peers, ports) in rules {
                    let ports = ports.as_ref().map(|ports| {
                        let mut spec = PortSpec::default();
                        for p in ports {
                            match p {
                                PortDef::Range(r) => spec.ranges.push(*r),
                                PortDef::Named(proto, name) => spec.ranges.extend(
                                    pod.named_ports
                                        .iter()
                                        .filter(|np| np.name == *name && np.protocol == *proto)
                                        .map(|np| PortRange {
                                            protocol: *proto,
                                            first: np.port,
                                            last: np.port,
                                        }),
                                ),
                            }
                        }
                        spec
                    });
                    if ports.as_ref().is_some_and(PortSpec::is_empty) {
                        continue; // a named port the pod does not have: the rule allows nothing here
                    }
                    v.push(RuleMatch {
                        policy: def.key.clone(),
                        peers: peers.clone(),
                        ports,
                    });
                }
            }
            if let Some(rules) = &egress {
                entry
                    .egress
                    .get_or_insert_with(Vec::new)
                    .extend(rules.iter().cloned());
            }
        }
    }
    plan
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) const NODE: &str = "node-a";

    pub(crate) fn pod(
        ns: &str,
        name: &str,
        node: &str,
        ip: &str,
        labels: &[(&str, &str)],
    ) -> PodInfo {
        PodInfo {
            namespace: ns.into(),
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            node_name: node.into(),
            ips: vec![ip.parse().unwrap()],
            named_ports: vec![],
        }
    }

    pub(crate) fn ns(name: &str, labels: &[(&str, &str)]) -> NamespaceInfo {
        NamespaceInfo::new(
            name,
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    pub(crate) fn np(ns: &str, name: &str, spec: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(json!({"metadata": {"namespace": ns, "name": name}, "spec": spec}))
            .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn set<'a>(plan: &'a Plan, r: &PeerRef) -> &'a BTreeSet<IpAddr> {
        match r {
            PeerRef::Pods(n) => &plan.pod_sets[n],
            PeerRef::Cidr(_) => panic!("cidr"),
        }
    }

    fn world() -> (Vec<PodInfo>, Vec<NamespaceInfo>) {
        let pods = vec![
            pod("default", "web", NODE, "10.42.0.2", &[("app", "web")]),
            pod("default", "client", NODE, "10.42.0.3", &[("app", "client")]),
            pod(
                "default",
                "remote-client",
                "node-b",
                "10.42.1.3",
                &[("app", "client")],
            ),
            pod(
                "other",
                "client",
                "node-b",
                "10.42.1.4",
                &[("app", "client")],
            ),
            pod("other", "db", NODE, "10.42.0.5", &[("app", "db")]),
            pod("prod", "api", "node-b", "10.42.1.6", &[("app", "api")]),
        ];
        let nss = vec![
            ns("default", &[]),
            ns("other", &[("team", "x")]),
            ns("prod", &[("team", "x"), ("env", "prod")]),
        ];
        (pods, nss)
    }

    #[test]
    fn unselected_pods_are_not_restricted() {
        let (pods, nss) = world();
        let plan = compute(
            NODE,
            &[np(
                "default",
                "p",
                json!({"podSelector": {"matchLabels": {"app": "web"}}}),
            )],
            &pods,
            &nss,
        );
        assert_eq!(plan.pods.keys().collect::<Vec<_>>(), vec!["default/web"]);
        let web = &plan.pods["default/web"];
        assert_eq!(web.ingress, Some(vec![]), "no ingress rules = deny all");
        assert_eq!(web.egress, None, "egress not in policyTypes");
        assert_eq!(web.ips, vec![ip("10.42.0.2")]);
    }

    #[test]
    fn policy_only_selects_pods_of_its_namespace_on_this_node() {
        let (pods, nss) = world();
        let plan = compute(
            NODE,
            &[np("default", "all", json!({"podSelector": {}}))],
            &pods,
            &nss,
        );
        assert_eq!(
            plan.pods.keys().collect::<Vec<_>>(),
            vec!["default/client", "default/web"]
        );
        let plan = compute(
            "node-b",
            &[np("default", "all", json!({"podSelector": {}}))],
            &pods,
            &nss,
        );
        assert_eq!(
            plan.pods.keys().collect::<Vec<_>>(),
            vec!["default/remote-client"]
        );
    }

    #[test]
    fn policy_types_defaulting() {
        let (pods, nss) = world();
        // egress rules and no policyTypes: both directions
        let p = np(
            "default",
            "p",
            json!({"podSelector": {"matchLabels": {"app": "web"}}, "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}]}),
        );
        let plan = compute(NODE, &[p], &pods, &nss);
        let web = &plan.pods["default/web"];
        assert_eq!(web.ingress, Some(vec![]));
        assert_eq!(web.egress.as_ref().map(Vec::len), Some(1));
        // explicit Egress only: ingress not restricted, empty egress = deny all
        let p = np(
            "default",
            "p",
            json!({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"]}),
        );
        let plan = compute(NODE, &[p], &pods, &nss);
        assert_eq!(plan.pods["default/web"].ingress, None);
        assert_eq!(plan.pods["default/web"].egress, Some(vec![]));
        // an empty egress list without policyTypes: only Ingress (as the API server)
        let p = np(
            "default",
            "p",
            json!({"podSelector": {"matchLabels": {"app": "web"}}, "egress": []}),
        );
        let plan = compute(NODE, &[p], &pods, &nss);
        assert_eq!(plan.pods["default/web"].egress, None);
        // unknown type: skipped
        let p = np(
            "default",
            "p",
            json!({"podSelector": {}, "policyTypes": ["Sideways"]}),
        );
        let plan = compute(NODE, &[p], &pods, &nss);
        assert!(plan.pods.is_empty());
        assert_eq!(plan.skipped.len(), 1);
    }

    #[test]
    fn empty_from_and_ports_allow_everything() {
        let (pods, nss) = world();
        let p = np(
            "default",
            "p",
            json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{}]}),
        );
        let plan = compute(NODE, &[p], &pods, &nss);
        assert_eq!(
            plan.pods["default/web"].ingress,
            Some(vec![RuleMatch {
                policy: "default/p".into(),
                peers: None,
                ports: None
            }])
        );
        let p = np(
            "default",
            "p",
            json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"from": [], "ports": []}]}),
        );
        let plan = compute(NODE, &[p], &pods, &nss);
        assert_eq!(
            plan.pods["default/web"].ingress,
            Some(vec![RuleMatch {
                policy: "default/p".into(),
                peers: None,
                ports: None
            }])
        );
    }

    #[test]
    fn pod_selector_peer_is_namespace_local() {
        let (pods, nss) = world();
        let p = np(
            "default",
            "p",
            json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}]}),
        );
        let plan = compute(NODE, &[p], &pods, &nss);
        let rules = plan.pods["default/web"].ingress.clone().unwrap();
        let peers = rules[0].peers.clone().unwrap();
        assert_eq!(
            set(&plan, &peers[0]),
            &[ip("10.42.0.3"), ip("10.42.1.3")].into_iter().collect(),
            "clients of default on both nodes, not other/client"
        );
    }

    #[test]
    fn namespace_selector_alone_and_with_pod_selector() {
        let (pods, nss) = world();
        let alone = np(
            "default",
            "a",
            json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "x"}}}]}]}),
        );
        let plan = compute(NODE, &[alone], &pods, &nss);
        let peers = plan.pods["default/web"].ingress.clone().unwrap()[0]
            .peers
            .clone()
            .unwrap();
        assert_eq!(
            set(&plan, &peers[0]),
            &[ip("10.42.1.4"), ip("10.42.0.5"), ip("10.42.1.6")]
                .into_iter()
                .collect()
        );

        // both in one peer: AND
        let both = np(
            "default",
            "b",
            json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "x"}}, "podSelector": {"matchLabels": {"app": "client"}}}]}]}),
        );
        let plan = compute(NODE, &[both], &pods, &nss);
        let peers = plan.pods["default/web"].ingress.clone().unwrap()[0]
            .peers
            .clone()
            .unwrap();
        assert_eq!(
            set(&plan, &peers[0]),
            &[ip("10.42.1.4")].into_iter().collect()
        );

        // two peers: OR
        let either = np(
            "default",
            "c",
            json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "x"}}}, {"podSelector": {"matchLabels": {"app": "client"}}}]}]}),
        );
        let plan = compute(NODE, &[either], &pods, &nss);
        let peers = plan.pods["default/web"].ingress.clone().unwrap()[0]
            .peers
            .clone()
            .unwrap();
        assert_eq!(peers.len(), 2);
        assert_eq!(
            set(&plan, &peers[1]),
            &[ip("10.42.0.3"), ip("10.42.1.3")].into_iter().collect()
        );

        // the automatic name label, expressions on namespaces
        let by_name = np(
            "default",
            "d",
            json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["prod"]}]}}]}]}),
        );
        let plan = compute(NODE, &[by_name], &pods, &nss);
        let peers = plan.pods["default/web"].ingress.clone().unwrap()[0]
            .peers
            .clone()
            .unwrap();
        assert_eq!(
            set(&plan, &peers[0]),
            &[ip("10.42.1.6")].into_iter().collect()
        );
    }

    #[test]
    fn namespace_label_change_changes_peers() {
        let (pods, mut nss) = world();
        let p = np(
            "default",
            "a",
            json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"env": "prod"}}}]}]}),
        );
        let before = compute(NODE, std::slice::from_ref(&p), &pods, &nss);
        nss[1].labels.insert("env".into(), "prod".into());
        let after = compute(NODE, &[p], &pods, &nss);
        let name = before.pod_sets.keys().next().unwrap();
        assert_eq!(before.pod_sets[name].len(), 1);
        assert_eq!(after.pod_sets[name].len(), 3, "same set name, new members");
    }

    #[test]
    fn ip_block_with_except() {
        let b: IPBlock = serde_json::from_value(json!({"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16", "10.0.0.0/24", "10.255.255.255/32"]})).unwrap();
        let s = ip_block_ranges(&b).unwrap();
        assert!(!s.ipv6);
        assert_eq!(
            s.ranges,
            vec![
                (ip("10.0.1.0"), ip("10.0.255.255")),
                (ip("10.2.0.0"), ip("10.255.255.254"))
            ]
        );
        // host bits are masked; /0 and /32 work
        let b: IPBlock = serde_json::from_value(json!({"cidr": "192.168.1.7/24"})).unwrap();
        assert_eq!(
            ip_block_ranges(&b).unwrap().ranges,
            vec![(ip("192.168.1.0"), ip("192.168.1.255"))]
        );
        let b: IPBlock =
            serde_json::from_value(json!({"cidr": "0.0.0.0/0", "except": ["0.0.0.0/1"]})).unwrap();
        assert_eq!(
            ip_block_ranges(&b).unwrap().ranges,
            vec![(ip("128.0.0.0"), ip("255.255.255.255"))]
        );
        let b: IPBlock =
            serde_json::from_value(json!({"cidr": "fd00::/8", "except": ["fd00::/16"]})).unwrap();
        let s = ip_block_ranges(&b).unwrap();
        assert!(s.ipv6);
        assert_eq!(
            s.ranges,
            vec![(ip("fd01::"), ip("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))]
        );
        // overlapping excepts
        let b: IPBlock = serde_json::from_value(
            json!({"cidr": "10.0.0.0/24", "except": ["10.0.0.0/25", "10.0.0.0/26"]}),
        )
        .unwrap();
        assert_eq!(
            ip_block_ranges(&b).unwrap().ranges,
            vec![(ip("10.0.0.128"), ip("10.0.0.255"))]
        );
        // errors
        for bad in [
            json!({"cidr": "10.0.0.0/33"}),
            json!({"cidr": "nope"}),
            json!({"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}),
            json!({"cidr": "10.0.0.0/8", "except": ["fd00::/16"]}),
        ] {
            let b: IPBlock = serde_json::from_value(bad.clone()).unwrap();
            assert!(ip_block_ranges(&b).is_err(), "{bad}");
        }
    }

    #[test]
    fn ports_numeric_range_and_protocols() {
        let (pods, nss) = world();
        let p = np(
            "default",
            "p",
            json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [
                {"port": 80}, {"port": 8000, "endPort": 8080, "protocol": "TCP"}, {"protocol": "UDP"}, {"port": 9, "protocol": "SCTP"}
            ]}]}),
        );
        let plan = compute(NODE, &[p], &pods, &nss);
        let r = &plan.pods["default/web"].ingress.as_ref().unwrap()[0];
        assert_eq!(r.peers, None);
        assert_eq!(
            r.ports.as_ref().unwrap().ranges,
            vec![
                PortRange {
                    protocol: Protocol::Tcp,
                    first: 80,
                    last: 80
                },
                PortRange {
                    protocol: Protocol::Tcp,
                    first: 8000,
                    last: 8080
                },
                PortRange {
                    protocol: Protocol::Udp,
                    first: 0,
                    last: 65535
                },
                PortRange {
                    protocol: Protocol::Sctp,
                    first: 9,
                    last: 9
                },
            ]
        );
    }

    #[test]
    fn invalid_policies_are_skipped_alone() {
        let (pods, nss) = world();
        let bad = [
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80, "protocol": "ICMP"}]}]}),
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 70000}]}]}),
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}),
            json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/40"}}]}]}),
            json!({"podSelector": {}, "ingress": [{"from": [{}]}]}),
            json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]}),
            json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Bad"}]}}),
        ];
        let mut policies: Vec<NetworkPolicy> = bad
            .iter()
            .enumerate()
            .map(|(i, s)| np("default", &format!("bad{i}"), s.clone()))
            .collect();
        policies.push(np("other", "good", json!({"podSelector": {}})));
        let plan = compute(NODE, &policies, &pods, &nss);
        assert_eq!(plan.skipped.len(), bad.len());
        assert_eq!(
            plan.pods.keys().collect::<Vec<_>>(),
            vec!["other/db"],
            "the good policy still applies, bad ones select nothing"
        );
    }

    #[test]
    fn named_ports_ingress_resolve_on_the_selected_pod() {
        let (mut pods, nss) = world();
        pods[0].named_ports = vec![
            NamedPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 8080,
            },
            NamedPort {
                name: "dns".into(),
                protocol: Protocol::Udp,
                port: 5353,
            },
        ];
        pods.push(PodInfo {
            name: "web2".into(),
            ips: vec![ip("10.42.0.9")],
            named_ports: vec![NamedPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 9090,
            }],
            ..pods[0].clone()
        });
        pods.push(PodInfo {
            name: "web3".into(),
            ips: vec![ip("10.42.0.10")],
            named_ports: vec![],
            ..pods[0].clone()
        });
        let p = np(
            "default",
            "p",
            json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [{"port": "http"}, {"port": "dns", "protocol": "TCP"}]}]}),
        );
        let plan = compute(NODE, &[p], &pods, &nss);
        let ports = |k: &str| {
            plan.pods[k]
                .ingress
                .as_ref()
                .unwrap()
                .iter()
                .map(|r| r.ports.clone().unwrap().ranges)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ports("default/web"),
            vec![vec![PortRange {
                protocol: Protocol::Tcp,
                first: 8080,
                last: 8080
            }]],
            "dns is UDP on the pod: no TCP match"
        );
        assert_eq!(
            ports("default/web2"),
            vec![vec![PortRange {
                protocol: Protocol::Tcp,
                first: 9090,
                last: 9090
            }]]
        );
        assert_eq!(
            plan.pods["default/web3"].ingress,
            Some(vec![]),
            "no such port: selected, nothing allowed"
        );
    }

    #[test]
    fn named_ports_egress_resolve_on_destination_pods() {
        let (mut pods, nss) = world();
        pods[4].named_ports = vec![NamedPort {
            name: "sql".into(),
            protocol: Protocol::Tcp,
            port: 5432,
        }];
        pods[5].named_ports = vec![NamedPort {
            name: "sql".into(),
            protocol: Protocol::Tcp,
            port: 3306,
        }];
        let p = np(
            "default",
            "p",
            json!({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"], "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"port": "sql"}]}]}),
        );
        let plan = compute(NODE, &[p], &pods, &nss);
        let r = &plan.pods["default/web"].egress.as_ref().unwrap()[0];
        let spec = r.ports.as_ref().unwrap();
        assert!(spec.ranges.is_empty());
        assert_eq!(
            plan.port_sets[&spec.named_sets[0]],
            [
                (ip("10.42.0.5"), Protocol::Tcp, 5432),
                (ip("10.42.1.6"), Protocol::Tcp, 3306)
            ]
            .into_iter()
            .collect()
        );
    }

    #[test]
    fn rules_of_several_policies_add_up() {
        let (pods, nss) = world();
        let a = np(
            "default",
            "a",
            json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [{"port": 80}]}]}),
        );
        let b = np(
            "default",
            "b",
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 443}]}], "policyTypes": ["Ingress", "Egress"]}),
        );
        let plan = compute(NODE, &[b, a], &pods, &nss);
        let web = &plan.pods["default/web"];
        assert_eq!(
            web.ingress
                .as_ref()
                .unwrap()
                .iter()
                .map(|r| r.policy.as_str())
                .collect::<Vec<_>>(),
            vec!["default/a", "default/b"]
        );
        assert_eq!(web.egress, Some(vec![]));
        assert_eq!(
            plan.pods["default/client"].ingress.as_ref().unwrap().len(),
            1
        );
    }

    #[test]
    fn unused_sets_are_not_built() {
        let (pods, nss) = world();
        // selects nothing on this node: no sets
        let p = np(
            "prod",
            "p",
            json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
        );
        let plan = compute(NODE, &[p], &pods, &nss);
        assert!(plan.pods.is_empty());
        assert!(plan.pod_sets.is_empty());
    }

    #[test]
    fn pod_info_from_pod() {
        let mk = |v: serde_json::Value| -> Pod { serde_json::from_value(v).unwrap() };
        let p = mk(json!({
            "metadata": {"namespace": "ns", "name": "p", "labels": {"a": "b"}},
            "spec": {"nodeName": "n", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 80}, {"containerPort": 81}, {"name": "d", "containerPort": 53, "protocol": "UDP"}]}]},
            "status": {"phase": "Running", "podIP": "10.42.0.2", "podIPs": [{"ip": "10.42.0.2"}, {"ip": "fd00::2"}]}
        }));
        let info = PodInfo::from_pod(&p).unwrap();
        assert_eq!(info.ips, vec![ip("10.42.0.2"), ip("fd00::2")]);
        assert_eq!(info.node_name, "n");
        assert_eq!(
            info.named_ports,
            vec![
                NamedPort {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: 80
                },
                NamedPort {
                    name: "d".into(),
                    protocol: Protocol::Udp,
                    port: 53
                }
            ]
        );
        let host = mk(
            json!({"metadata": {"name": "h"}, "spec": {"hostNetwork": true, "containers": []}, "status": {"podIP": "192.168.0.1"}}),
        );
        assert!(PodInfo::from_pod(&host).is_none());
        let done = mk(
            json!({"metadata": {"name": "d"}, "spec": {"containers": []}, "status": {"phase": "Succeeded", "podIP": "10.42.0.3"}}),
        );
        assert!(PodInfo::from_pod(&done).is_none());
        let pending = mk(
            json!({"metadata": {"name": "d"}, "spec": {"containers": []}, "status": {"phase": "Pending"}}),
        );
        assert!(PodInfo::from_pod(&pending).is_none());
    }

    #[test]
    fn builtin_dns_is_a_kube_dns_peer() {
        let (mut pods, mut nss) = world();
        nss.push(ns("kube-system", &[]));
        pods.extend(builtin_dns_pod(&[ip("192.168.5.10")]));
        let p = np(
            "default",
            "dns",
            json!({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"], "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}], "ports": [{"port": "dns", "protocol": "UDP"}, {"port": "dns-tcp"}]}]}),
        );
        let plan = compute(NODE, &[p], &pods, &nss);
        let r = &plan.pods["default/web"].egress.as_ref().unwrap()[0];
        assert_eq!(
            set(&plan, &r.peers.as_ref().unwrap()[0]),
            &[ip("192.168.5.10")].into_iter().collect()
        );
        let named = &r.ports.as_ref().unwrap().named_sets;
        assert_eq!(
            plan.port_sets[&named[0]],
            [(ip("192.168.5.10"), Protocol::Udp, 53)]
                .into_iter()
                .collect()
        );
        assert_eq!(
            plan.port_sets[&named[1]],
            [(ip("192.168.5.10"), Protocol::Tcp, 53)]
                .into_iter()
                .collect()
        );
        // never selected, even by a policy selecting every pod of kube-system on a node named ""
        let all = np("kube-system", "all", json!({"podSelector": {}}));
        assert!(compute("", &[all], &pods, &nss).pods.is_empty());
        assert!(builtin_dns_pod(&[]).is_none());
    }

    #[test]
    fn hashes_are_stable() {
        assert_eq!(short_hash(""), "cbf29ce484222325");
        assert_ne!(short_hash("a"), short_hash("b"));
    }
}
