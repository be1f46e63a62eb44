//! The pure renderer: a [`Plan`] -> the desired content of one nftables table per
//! address family ([`TableState`]), and `nft -f` scripts that either rebuild the table
//! atomically ([`render_full`]) or move it from one state to another changing only what
//! changed ([`render_update`]).
//!
//! Layout of `table ip <name>` (and `ip6` when local pods have IPv6 addresses):
//! - `set pods-<hash>`: IPs of the pods a `podSelector`/`namespaceSelector` peer matches
//!   (the name hashes the selectors, so the set keeps its name while members change);
//! - `set cidr-<hash>` (`flags interval`): an `ipBlock` as ranges (CIDR minus excepts);
//! - `set port-<hash>`: `addr . proto . port` of the pods having a named port (egress);
//! - `chain ing-<hash>` / `chain egr-<hash>`: the allow rules of one pod and direction,
//!   ending in `counter drop`; the name hashes the content, so pods with the same rules
//!   share one chain and a chain never changes once created (a changed pod points to a
//!   new chain);
//! - `map ingress-pods` / `map egress-pods`: local pod IP -> `jump` to its chain; pods
//!   not restricted in a direction have no element there;
//! - base chains `forward` and `input` (filter hooks, policy accept): replies
//!   (`ct state established,related`) pass first; then egress of local pods (forward and
//!   input: the cluster DNS server answers on the node itself); then, on forward only,
//!   ingress of local pods (traffic from the node itself goes through output and is
//!   never filtered; `fib saddr type local` lets it pass on forward too); in `ip6`,
//!   neighbor discovery always passes.
//!
//! An allowed egress packet `return`s to the base chain so the ingress of a local
//! destination pod is still checked; an allowed ingress packet is accepted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use crate::model::{short_hash, PeerRef, Plan, RuleMatch};

/// Name of the verdict map of ingress chains.
pub const INGRESS_MAP: &str = "ingress-pods";
/// Name of the verdict map of egress chains.
pub const EGRESS_MAP: &str = "egress-pods";

/// How many set elements one `add element` line carries.
const ELEMENTS_PER_LINE: usize = 1000;

/// An nftables address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// `ip`.
    V4,
    /// `ip6`.
    V6,
}

impl Family {
    /// The family keyword of tables and the address match (`ip` / `ip6`).
    pub fn nft(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    fn addr_type(self) -> &'static str {
        match self {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }

    /// Whether `ip` belongs to this family.
    pub fn has(self, ip: &IpAddr) -> bool {
        matches!(
            (self, ip),
            (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
        )
    }
}

/// The kind of a named set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetKind {
    /// Plain addresses.
    Addr,
    /// Address ranges (`flags interval`).
    Interval,
    /// `addr . inet_proto . inet_service`.
    AddrProtoPort,
}

/// One named set and its elements (as nft writes them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetState {
    /// Its type.
    pub kind: SetKind,
    /// Its elements.
    pub elements: BTreeSet<String>,
}

/// The desired (or applied) content of one family's table, apart from the fixed base
/// chains and maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableState {
    /// The family.
    pub family: Family,
    /// Named sets.
    pub sets: BTreeMap<String, SetState>,
    /// Per-pod chains: name -> rules.
    pub chains: BTreeMap<String, Vec<String>>,
    /// `ingress-pods`: pod IP -> chain.
    pub ingress: BTreeMap<String, String>,
    /// `egress-pods`: pod IP -> chain.
    pub egress: BTreeMap<String, String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

/// Renders the allow rules of one pod and direction; records the sets they use.
fn rule_lines(
    plan: &Plan,
    family: Family,
    dir: Direction,
    rules: &[RuleMatch],
    used: &mut BTreeSet<String>,
) -> Vec<String> {
    let fam = family.nft();
    let (addr, verdict) = match dir {
        Direction::Ingress => ("saddr", "accept"),
        Direction::Egress => ("daddr", "return"),
    };
    let mut lines = BTreeSet::new();
    for r in rules {
        let peers: Vec<Option<(String, &str)>> = match &r.peers {
            None => vec![None],
            Some(ps) => ps
                .iter()
                .filter_map(|p| match p {
                    PeerRef::Pods(n) => Some(Some((format!("{fam} {addr} @{n}"), n.as_str()))),
                    PeerRef::Cidr(n) => {
                        let ipv6 = plan.cidr_sets.get(n)?.ipv6;
                        (ipv6 == (family == Family::V6))
                            .then(|| Some((format!("{fam} {addr} @{n}"), n.as_str())))
                    }
                })
                .collect(),
        };
        let ports: Vec<Option<(String, Option<&str>)>> = match &r.ports {
            None => vec![None],
            Some(spec) => {
                let mut v = Vec::new();
                if !spec.ranges.is_empty() {
                    let mut elems: Vec<String> = spec
                        .ranges
                        .iter()
                        .map(|p| {
                            if p.first == p.last {
                                format!("{} . {}", p.protocol.nft_name(), p.first)
                            } else {
                                format!("{} . {}-{}", p.protocol.nft_name(), p.first, p.last)
                            }
                        })
                        .collect();
                    elems.sort();
                    elems.dedup();
                    v.push(Some((
                        format!("meta l4proto . th dport {{ {} }}", elems.join(", ")),
                        None,
                    )));
                }
                for n in &spec.named_sets {
                    v.push(Some((
                        format!("{fam} daddr . meta l4proto . th dport @{n}"),
                        Some(n.as_str()),
                    )));
                }
                v
            }
        };
        let comment = r
            .policy
            .chars()
            .filter(|c| *c != '"' && *c != '\\')
            .take(120)
            .collect::<String>();
        for peer in &peers {
            for port in &ports {
                let mut line = String::new();
                if let Some((m, set)) = peer {
                    used.insert((*set).to_string());
                    line.push_str(m);
                    line.push(' ');
                }
                if let Some((m, set)) = port {
                    if let Some(s) = set {
                        used.insert((*s).to_string());
                    }
                    line.push_str(m);
                    line.push(' ');
                }
                let _ = write!(line, "{verdict} comment \"{comment}\"");
                lines.insert(line);
            }
        }
    }
    let mut v: Vec<String> = lines.into_iter().collect();
    v.push(String::from("counter drop"));
    v
}

fn chain_for(
    chains: &mut BTreeMap<String, Vec<String>>,
    prefix: &str,
    lines: Vec<String>,
) -> String {
    let name = format!("{prefix}-{}", short_hash(&lines.join("\n")));
    chains.entry(name.clone()).or_insert(lines);
    name
}

/// Whether `plan` needs a table of `family` (IPv4: always; IPv6: when a restricted
/// local pod has an IPv6 address).
pub fn needs_table(plan: &Plan, family: Family) -> bool {
    family == Family::V4
        || plan
            .pods
            .values()
            .any(|p| p.ips.iter().any(|ip| family.has(ip)))
}

/// The desired table content of `family` for `plan`.
pub fn desired(plan: &Plan, family: Family) -> TableState {
    let mut st = TableState {
        family,
        sets: BTreeMap::new(),
        chains: BTreeMap::new(),
        ingress: BTreeMap::new(),
        egress: BTreeMap::new(),
    };
    let mut used = BTreeSet::new();
    for pod in plan.pods.values() {
        let ips: Vec<&IpAddr> = pod.ips.iter().filter(|ip| family.has(ip)).collect();
        if ips.is_empty() {
            continue;
        }
        if let Some(rules) = &pod.ingress {
            let chain = chain_for(
                &mut st.chains,
                "ing",
                rule_lines(plan, family, Direction::Ingress, rules, &mut used),
            );
            for ip in &ips {
                st.ingress.insert(ip.to_string(), chain.clone());
            }
        }
        if let Some(rules) = &pod.egress {
            let chain = chain_for(
                &mut st.chains,
                "egr",
                rule_lines(plan, family, Direction::Egress, rules, &mut used),
            );
            for ip in &ips {
                st.egress.insert(ip.to_string(), chain.clone());
            }
        }
    }
    for name in used {
        let set = if let Some(ips) = plan.pod_sets.get(&name) {
            SetState {
                kind: SetKind::Addr,
                elements: ips
                    .iter()
                    .filter(|ip| family.has(ip))
                    .map(IpAddr::to_string)
                    .collect(),
            }
        } else if let Some(c) = plan.cidr_sets.get(&name) {
            SetState {
                kind: SetKind::Interval,
                elements: c
                    .ranges
                    .iter()
                    .map(|(a, z)| {
                        if a == z {
                            a.to_string()
                        } else {
                            format!("{a}-{z}")
                        }
                    })
                    .collect(),
            }
        } else if let Some(ports) = plan.port_sets.get(&name) {
            SetState {
                kind: SetKind::AddrProtoPort,
                elements: ports
                    .iter()
                    .filter(|(ip, _, _)| family.has(ip))
                    .map(|(ip, proto, port)| format!("{ip} . {} . {port}", proto.nft_name()))
                    .collect(),
            }
        } else {
            continue;
        };
        st.sets.insert(name, set);
    }
    st
}

fn set_decl(family: Family, kind: SetKind) -> String {
    match kind {
        SetKind::Addr => format!("type {}", family.addr_type()),
        SetKind::Interval => format!("type {}; flags interval", family.addr_type()),
        SetKind::AddrProtoPort => {
            format!("type {} . inet_proto . inet_service", family.addr_type())
        }
    }
}

fn add_elements<'a>(
    out: &mut String,
    family: Family,
    table: &str,
    set: &str,
    elements: impl Iterator<Item = &'a String>,
    verb: &str,
) {
    let elements: Vec<&String> = elements.collect();
    for chunk in elements.chunks(ELEMENTS_PER_LINE) {
        let joined: Vec<&str> = chunk.iter().map(|s| s.as_str()).collect();
        let _ = writeln!(
            out,
            "{verb} element {} {table} {set} {{ {} }}",
            family.nft(),
            joined.join(", ")
        );
    }
}

fn map_elements<'a>(m: impl Iterator<Item = (&'a String, &'a String)>) -> Vec<String> {
    m.map(|(ip, chain)| format!("{ip} : jump {chain}"))
        .collect()
}

/// The script deleting `family`'s table if it exists (and doing nothing otherwise).
pub fn render_delete(family: Family, table: &str) -> String {
    format!(
        "add table {0} {table}\ndelete table {0} {table}\n",
        family.nft()
    )
}

/// The script replacing `family`'s table (whatever it holds) with `st`, atomically
/// when applied as one transaction.
pub fn render_full(st: &TableState, table: &str) -> String {
    let fam = st.family.nft();
    let mut out = render_delete(st.family, table);
    let _ = writeln!(out, "add table {fam} {table}");
    for (name, set) in &st.sets {
        let _ = writeln!(
            out,
            "add set {fam} {table} {name} {{ {}; }}",
            set_decl(st.family, set.kind)
        );
        add_elements(&mut out, st.family, table, name, set.elements.iter(), "add");
    }
    for (name, rules) in &st.chains {
        let _ = writeln!(out, "add chain {fam} {table} {name}");
        for r in rules {
            let _ = writeln!(out, "add rule {fam} {table} {name} {r}");
        }
    }
    for (map, elems) in [(INGRESS_MAP, &st.ingress), (EGRESS_MAP, &st.egress)] {
        let _ = writeln!(
            out,
            "add map {fam} {table} {map} {{ type {} : verdict; }}",
            st.family.addr_type()
        );
        let e = map_elements(elems.iter());
        add_elements(&mut out, st.family, table, map, e.iter(), "add");
    }
    // IPv6 neighbor discovery is link plumbing, not traffic a policy governs
    let ndp = (st.family == Family::V6).then_some("icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert } accept");
    let _ = writeln!(out, "add chain {fam} {table} forward {{ type filter hook forward priority filter; policy accept; }}");
    let _ = writeln!(
        out,
        "add rule {fam} {table} forward ct state established,related accept"
    );
    if let Some(ndp) = ndp {
        let _ = writeln!(out, "add rule {fam} {table} forward {ndp}");
    }
    let _ = writeln!(
        out,
        "add rule {fam} {table} forward {fam} saddr vmap @{EGRESS_MAP}"
    );
    let _ = writeln!(
        out,
        "add rule {fam} {table} forward fib saddr type local accept"
    );
    let _ = writeln!(
        out,
        "add rule {fam} {table} forward {fam} daddr vmap @{INGRESS_MAP}"
    );
    let _ = writeln!(out, "add chain {fam} {table} input {{ type filter hook input priority filter; policy accept; }}");
    let _ = writeln!(
        out,
        "add rule {fam} {table} input ct state established,related accept"
    );
    if let Some(ndp) = ndp {
        let _ = writeln!(out, "add rule {fam} {table} input {ndp}");
    }
    let _ = writeln!(
        out,
        "add rule {fam} {table} input {fam} saddr vmap @{EGRESS_MAP}"
    );
    out
}

/// The script moving the table from `old` to `new` (same family), changing only what
/// changed; empty when nothing did.
pub fn render_update(old: &TableState, new: &TableState, table: &str) -> String {
    let fam = new.family.nft();
    let f = new.family;
    let mut out = String::new();
    // 1. new sets, and elements added to existing ones
    for (name, set) in &new.sets {
        match old.sets.get(name) {
            Some(o) if o.kind == set.kind => add_elements(
                &mut out,
                f,
                table,
                name,
                set.elements.difference(&o.elements),
                "add",
            ),
            Some(_) => {} // kind changed: cannot happen with hashed names; handled below by delete + add
            None => {
                let _ = writeln!(
                    out,
                    "add set {fam} {table} {name} {{ {}; }}",
                    set_decl(f, set.kind)
                );
                add_elements(&mut out, f, table, name, set.elements.iter(), "add");
            }
        }
    }
    // 2. new chains (chains never change: their names hash their content)
    for (name, rules) in &new.chains {
        if !old.chains.contains_key(name) {
            let _ = writeln!(out, "add chain {fam} {table} {name}");
            for r in rules {
                let _ = writeln!(out, "add rule {fam} {table} {name} {r}");
            }
        }
    }
    // 3. verdict maps
    for (map, o, n) in [
        (INGRESS_MAP, &old.ingress, &new.ingress),
        (EGRESS_MAP, &old.egress, &new.egress),
    ] {
        let gone: Vec<String> = o
            .iter()
            .filter(|(ip, c)| n.get(*ip) != Some(*c))
            .map(|(ip, _)| ip.clone())
            .collect();
        add_elements(&mut out, f, table, map, gone.iter(), "delete");
        let added = map_elements(n.iter().filter(|(ip, c)| o.get(*ip) != Some(*c)));
        add_elements(&mut out, f, table, map, added.iter(), "add");
    }
    // 4. elements gone from kept sets
    for (name, set) in &new.sets {
        if let Some(o) = old.sets.get(name).filter(|o| o.kind == set.kind) {
            add_elements(
                &mut out,
                f,
                table,
                name,
                o.elements.difference(&set.elements),
                "delete",
            );
        }
    }
    // 5. chains no longer used, then sets no longer used
    for name in old.chains.keys().filter(|n| !new.chains.contains_key(*n)) {
        let _ = writeln!(out, "flush chain {fam} {table} {name}");
        let _ = writeln!(out, "delete chain {fam} {table} {name}");
    }
    for (name, o) in &old.sets {
        if new.sets.get(name).is_none_or(|s| s.kind != o.kind) {
            let _ = writeln!(out, "delete set {fam} {table} {name}");
        }
    }
    // a set whose kind changed is re-created after the old one is gone
    for (name, set) in &new.sets {
        if old.sets.get(name).is_some_and(|o| o.kind != set.kind) {
            let _ = writeln!(
                out,
                "add set {fam} {table} {name} {{ {}; }}",
                set_decl(f, set.kind)
            );
            add_elements(&mut out, f, table, name, set.elements.iter(), "add");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::{np, ns, pod, NODE};
    use crate::model::{compute, NamedPort, PodInfo, Protocol};
    use serde_json::json;

    fn plan_of(policies: &[serde_json::Value], extra: Vec<PodInfo>) -> Plan {
        let mut pods = vec![
            pod("default", "web", NODE, "10.42.0.2", &[("app", "web")]),
            pod("default", "client", NODE, "10.42.0.3", &[("app", "client")]),
            pod(
                "default",
                "other",
                "node-b",
                "10.42.1.3",
                &[("app", "client")],
            ),
        ];
        pods.extend(extra);
        let nss = vec![ns("default", &[])];
        let nps: Vec<_> = policies
            .iter()
            .enumerate()
            .map(|(i, s)| np("default", &format!("p{i}"), s.clone()))
            .collect();
        compute(NODE, &nps, &pods, &nss)
    }

    #[test]
    fn default_deny_ingress() {
        let plan = plan_of(
            &[json!({"podSelector": {"matchLabels": {"app": "web"}}})],
            vec![],
        );
        let st = desired(&plan, Family::V4);
        assert_eq!(st.ingress.len(), 1);
        let chain = &st.ingress["10.42.0.2"];
        assert!(chain.starts_with("ing-"));
        assert_eq!(st.chains[chain], vec!["counter drop".to_string()]);
        assert!(st.egress.is_empty());
        assert!(st.sets.is_empty());
        let script = render_full(&st, "t");
        assert!(script.starts_with("add table ip t\ndelete table ip t\nadd table ip t\n"));
        assert!(script.contains(&format!(
            "add element ip t ingress-pods {{ 10.42.0.2 : jump {chain} }}"
        )));
        assert!(script.contains("add rule ip t forward ct state established,related accept\nadd rule ip t forward ip saddr vmap @egress-pods\n"));
        assert!(script.contains("add rule ip t input ip saddr vmap @egress-pods"));
    }

    #[test]
    fn pods_with_same_rules_share_a_chain() {
        let plan = plan_of(
            &[
                json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}], "ports": [{"port": 80}]}]}),
            ],
            vec![],
        );
        let st = desired(&plan, Family::V4);
        assert_eq!(st.chains.len(), 1);
        assert_eq!(st.ingress["10.42.0.2"], st.ingress["10.42.0.3"]);
        let rules = st.chains.values().next().unwrap();
        let set = st.sets.keys().next().unwrap();
        assert_eq!(rules[0], format!("ip saddr @{set} meta l4proto . th dport {{ tcp . 80 }} accept comment \"default/p0\""));
        assert_eq!(
            st.sets[set].elements,
            ["10.42.0.3", "10.42.1.3"]
                .iter()
                .map(|s| s.to_string())
                .collect()
        );
    }

    #[test]
    fn egress_rules_return_and_use_named_port_sets() {
        let db = PodInfo {
            named_ports: vec![NamedPort {
                name: "sql".into(),
                protocol: Protocol::Tcp,
                port: 5432,
            }],
            ..pod("default", "db", "node-b", "10.42.1.9", &[("app", "db")])
        };
        let plan = plan_of(
            &[
                json!({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"], "egress": [
                    {"to": [{"podSelector": {"matchLabels": {"app": "db"}}}], "ports": [{"port": "sql"}, {"port": 53, "protocol": "UDP"}, {"port": 1000, "endPort": 2000, "protocol": "SCTP"}]},
                    {"to": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}]}
                ]}),
            ],
            vec![db],
        );
        let st = desired(&plan, Family::V4);
        let chain = &st.chains[&st.egress["10.42.0.2"]];
        let pods_set = st
            .sets
            .iter()
            .find(|(n, _)| n.starts_with("pods-"))
            .unwrap()
            .0;
        let port_set = st
            .sets
            .iter()
            .find(|(n, _)| n.starts_with("port-"))
            .unwrap()
            .0;
        let cidr_set = st
            .sets
            .iter()
            .find(|(n, _)| n.starts_with("cidr-"))
            .unwrap()
            .0;
        assert!(chain.contains(&format!(
            "ip daddr @{cidr_set} return comment \"default/p0\""
        )));
        assert!(chain.contains(&format!("ip daddr @{pods_set} meta l4proto . th dport {{ sctp . 1000-2000, udp . 53 }} return comment \"default/p0\"")));
        assert!(chain.contains(&format!("ip daddr @{pods_set} ip daddr . meta l4proto . th dport @{port_set} return comment \"default/p0\"")));
        assert_eq!(chain.last().unwrap(), "counter drop");
        assert_eq!(
            st.sets[port_set].elements,
            ["10.42.1.9 . tcp . 5432".to_string()].into_iter().collect()
        );
        assert_eq!(st.sets[cidr_set].kind, SetKind::Interval);
        assert_eq!(
            st.sets[cidr_set].elements,
            [
                "192.168.0.0-192.168.0.255".to_string(),
                "192.168.2.0-192.168.255.255".to_string()
            ]
            .into_iter()
            .collect()
        );
    }

    #[test]
    fn families_are_split() {
        let dual = PodInfo {
            ips: vec!["10.42.0.7".parse().unwrap(), "fd00:42::7".parse().unwrap()],
            ..pod("default", "dual", NODE, "10.42.0.7", &[("app", "dual")])
        };
        let plan = plan_of(
            &[
                json!({"podSelector": {"matchLabels": {"app": "dual"}}, "ingress": [{"from": [{"ipBlock": {"cidr": "fd00::/8"}}, {"ipBlock": {"cidr": "10.0.0.0/8"}}]}]}),
            ],
            vec![dual],
        );
        assert!(needs_table(&plan, Family::V6));
        let v4 = desired(&plan, Family::V4);
        let v6 = desired(&plan, Family::V6);
        assert_eq!(v4.ingress.keys().collect::<Vec<_>>(), vec!["10.42.0.7"]);
        assert_eq!(v6.ingress.keys().collect::<Vec<_>>(), vec!["fd00:42::7"]);
        assert_eq!(v4.sets.len(), 1);
        assert_eq!(v6.sets.len(), 1);
        assert_ne!(v4.sets.keys().next(), v6.sets.keys().next());
        assert!(v6.chains.values().next().unwrap()[0].starts_with("ip6 saddr @cidr-"));
        let full6 = render_full(&v6, "t");
        assert!(full6.contains("add map ip6 t ingress-pods { type ipv6_addr : verdict; }"));
        assert!(
            full6.contains("add rule ip6 t input icmpv6 type { nd-neighbor-solicit,"),
            "{full6}"
        );
        assert!(!render_full(&v4, "t").contains("icmpv6"));
        let v4only = plan_of(&[json!({"podSelector": {}})], vec![]);
        assert!(!needs_table(&v4only, Family::V6));
    }

    #[test]
    fn update_changes_only_what_changed() {
        let policy = json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}]});
        let a = desired(&plan_of(std::slice::from_ref(&policy), vec![]), Family::V4);
        assert_eq!(render_update(&a, &a, "t"), "", "nothing changed: no script");
        // a new client pod: one element added, nothing else
        let b = desired(
            &plan_of(
                std::slice::from_ref(&policy),
                vec![pod(
                    "default",
                    "c2",
                    "node-c",
                    "10.42.2.2",
                    &[("app", "client")],
                )],
            ),
            Family::V4,
        );
        let set = a.sets.keys().next().unwrap();
        assert_eq!(
            render_update(&a, &b, "t"),
            format!("add element ip t {set} {{ 10.42.2.2 }}\n")
        );
        assert_eq!(
            render_update(&b, &a, "t"),
            format!("delete element ip t {set} {{ 10.42.2.2 }}\n")
        );
        // policy removed: map element, chain and set go, in an order nft accepts
        let empty = desired(&plan_of(&[], vec![]), Family::V4);
        let chain = &a.ingress["10.42.0.2"];
        let s = render_update(&a, &empty, "t");
        assert_eq!(
            s,
            format!("delete element ip t ingress-pods {{ 10.42.0.2 }}\nflush chain ip t {chain}\ndelete chain ip t {chain}\ndelete set ip t {set}\n")
        );
        // the rules of the pod change: a new chain, the map element re-pointed
        let c = desired(
            &plan_of(
                &[json!({"podSelector": {"matchLabels": {"app": "web"}}})],
                vec![],
            ),
            Family::V4,
        );
        let s = render_update(&a, &c, "t");
        let new_chain = &c.ingress["10.42.0.2"];
        assert!(s.starts_with(&format!("add chain ip t {new_chain}\nadd rule ip t {new_chain} counter drop\ndelete element ip t ingress-pods {{ 10.42.0.2 }}\nadd element ip t ingress-pods {{ 10.42.0.2 : jump {new_chain} }}\n")), "{s}");
        assert!(s.ends_with(&format!(
            "delete chain ip t {chain}\ndelete set ip t {set}\n"
        )));
    }
}
