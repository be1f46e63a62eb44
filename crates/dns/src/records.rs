//! The cluster's DNS records: an immutable index built from Services, EndpointSlices,
//! Nodes and the custom ConfigMap ([`Records::build`]), and the pure resolver over it
//! ([`Records::resolve`]) that the hickory handler calls for every query.
//!
//! What is answered (the Kubernetes DNS specification, as CoreDNS's `kubernetes` plugin
//! with `pods insecure` answers it, which is what k3s runs):
//! - `<svc>.<ns>.svc.<zone>`: A/AAAA of the ClusterIPs; for a headless Service one record
//!   per *ready* endpoint (the EndpointSlice `ready` condition, unset = ready: the
//!   EndpointSlice controller already marks every endpoint ready for
//!   `publishNotReadyAddresses`), NXDOMAIN when it has none; CNAME for ExternalName
//!   (followed inside the cluster domain, else handed back as [`Answer::Chase`]).
//! - `<endpoint>.<svc>.<ns>.svc.<zone>`: the endpoint's address, where `<endpoint>` is
//!   its `hostname` (StatefulSet pods: `db-0.db.ns.svc...`) or else its IP with dashes
//!   (`10-42-0-5`, `fd00--5`), as CoreDNS names endpoints.
//! - `_<port>._<proto>.<svc>.<ns>.svc.<zone>` SRV for named ports: the Service name and
//!   the Service port for ClusterIP Services, one per ready endpoint (its name, the
//!   endpoint port) for headless ones; SRV on the bare Service name lists every port.
//!   Priority 0, weight 100/N (at least 1), targets' addresses in the additional section.
//! - PTR: a ClusterIP gives its Service name; otherwise an endpoint IP gives its endpoint
//!   names. Other reverse names are forwarded.
//! - `<a-b-c-d>.<ns>.pod.<zone>`: the address written in the name (no pod lookup).
//! - `dns-version.<zone>` TXT `1.1.0`; SOA and NS (`ns.dns.<zone>`, the kube-dns
//!   Service's ClusterIP) at the apex.
//! - Unknown names in the zone: authoritative NXDOMAIN with the SOA; known names without
//!   the asked type (including empty non-terminals such as `<ns>.svc.<zone>`): NODATA.
//! - Hosts (Node names -> InternalIPs, as k3s's NodeHosts, and the ConfigMap's `*.hosts`)
//!   answer A/AAAA/PTR before everything but stub domains; stub domains and the
//!   remaining names are [`Answer::Forward`]ed.
//!
//! Invariants: building never fails (a bad object is skipped with a warning); resolving
//! never panics and never allocates more than the answer; keys are lowercase ASCII names
//! without the trailing dot, so matching is case-insensitive.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::custom::{self, normalize_name};
use crate::DnsError;

/// The schema version served at `dns-version.<zone>`.
pub const DNS_SCHEMA_VERSION: &str = "1.1.0";
/// The label an EndpointSlice carries with its Service's name.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// How many CNAMEs a chain may have before the answer stops following it.
pub const MAX_CNAME_CHAIN: usize = 8;

/// The cluster domain and TTL, validated once.
#[derive(Debug, Clone)]
pub struct RecordsConfig {
    domain: String,
    zone_labels: Vec<String>,
    zone_name: Name,
    ttl: u32,
}

impl RecordsConfig {
    /// Validates the cluster domain (`cluster.local`, trailing dot optional).
    pub fn new(cluster_domain: &str, ttl: u32) -> Result<Self, DnsError> {
        let domain = normalize_name(cluster_domain).ok_or_else(|| {
            DnsError::ClusterDomain(cluster_domain.to_string(), "not a DNS name".into())
        })?;
        let zone_name = Name::from_ascii(format!("{domain}."))
            .map_err(|e| DnsError::ClusterDomain(cluster_domain.to_string(), e.to_string()))?;
        let zone_labels = domain.split('.').map(str::to_string).collect();
        Ok(RecordsConfig {
            domain,
            zone_labels,
            zone_name,
            ttl,
        })
    }

    /// The cluster domain, lowercase, without the trailing dot.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The TTL of every answer.
    pub fn ttl(&self) -> u32 {
        self.ttl
    }
}

/// The objects the records are built from (informer store contents).
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// All Services.
    pub services: Vec<Arc<Service>>,
    /// All EndpointSlices.
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    /// All Nodes (their names resolve to their InternalIPs).
    pub nodes: Vec<Arc<Node>>,
    /// The custom ConfigMap, when it exists.
    pub custom: Option<Arc<ConfigMap>>,
}

/// A complete DNS reply (minus header bookkeeping the server adds).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The response code.
    pub rcode: ResponseCode,
    /// The AA bit: set for answers from the cluster records and hosts.
    pub authoritative: bool,
    /// The answer section.
    pub answers: Vec<Record>,
    /// The authority section (the SOA for negative answers).
    pub authority: Vec<Record>,
    /// The additional section (addresses of SRV targets, NS glue).
    pub additional: Vec<Record>,
}

impl Reply {
    /// An empty reply with `rcode` and no AA bit.
    pub fn error(rcode: ResponseCode) -> Self {
        Reply {
            rcode,
            authoritative: false,
            answers: Vec::new(),
            authority: Vec::new(),
            additional: Vec::new(),
        }
    }

    fn answer(answers: Vec<Record>, additional: Vec<Record>) -> Self {
        Reply {
            rcode: ResponseCode::NoError,
            authoritative: true,
            answers,
            authority: Vec::new(),
            additional,
        }
    }

    fn negative(rcode: ResponseCode, soa: Option<&Record>) -> Self {
        Reply {
            rcode,
            authoritative: true,
            answers: Vec::new(),
            authority: soa.cloned().into_iter().collect(),
            additional: Vec::new(),
        }
    }
}

/// Where a forwarded query goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// The resolv.conf upstreams.
    Default,
    /// These servers (a stub domain, or the ConfigMap's `upstreamNameservers`).
    Servers(Arc<[SocketAddr]>),
}

/// What [`Records::resolve`] decides for a query.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Answered from the records.
    Reply(Reply),
    /// Not ours: forward the query unchanged.
    Forward(Upstream),
    /// A CNAME chain (in `reply`) that leaves the records at `target`: resolve `target`
    /// with the same type (again through [`Records::resolve`]) and append its answers.
    Chase {
        /// The CNAME records so far.
        reply: Reply,
        /// The name to resolve next.
        target: Name,
    },
}

/// The addresses a hosts name answers with.
#[derive(Debug, Clone, Default)]
struct HostEntry {
    v4: Vec<Ipv4Addr>,
    v6: Vec<Ipv6Addr>,
}

/// The records of one name in the cluster domain.
#[derive(Debug, Clone, Default)]
struct Entry {
    a: Vec<Ipv4Addr>,
    aaaa: Vec<Ipv6Addr>,
    cname: Option<Name>,
    /// (port, target) pairs.
    srv: Vec<(u16, Name)>,
    txt: Vec<String>,
}

/// The immutable record index. Build it with [`Records::build`]; swap it into a
/// [`RecordsHandle`] when the sources change.
#[derive(Debug)]
pub struct Records {
    cfg: RecordsConfig,
    soa: Record,
    names: HashMap<String, Entry>,
    ptrs: HashMap<IpAddr, Vec<Name>>,
    hosts: HashMap<String, HostEntry>,
    hosts_ptrs: HashMap<IpAddr, Vec<Name>>,
    /// Stub domains as lowercase labels, most labels first.
    stubs: Vec<(Vec<String>, Arc<[SocketAddr]>)>,
    upstream: Upstream,
    warnings: Vec<String>,
    services: usize,
}

/// One ready endpoint of a Service.
struct Ep {
    ip: IpAddr,
    /// The first label of its name: the hostname or the dashed IP.
    host: String,
    /// (name, protocol label without underscore, port).
    ports: Vec<(String, String, u16)>,
}

struct Builder<'a> {
    cfg: &'a RecordsConfig,
    names: HashMap<String, Entry>,
    cluster_ptrs: HashMap<IpAddr, Name>,
    endpoint_ptrs: HashMap<IpAddr, Vec<Name>>,
    warnings: Vec<String>,
}

impl Builder<'_> {
    /// The entry of `key` (a name in the zone), creating it and its missing ancestors
    /// down to the apex (empty non-terminals answer NODATA, not NXDOMAIN).
    fn entry(&mut self, key: &str) -> &mut Entry {
        if !self.names.contains_key(key) {
            let mut k = key;
            while let Some((_, parent)) = k.split_once('.') {
                if parent.len() < self.cfg.domain.len() || self.names.contains_key(parent) {
                    break;
                }
                self.names.insert(parent.to_string(), Entry::default());
                k = parent;
            }
        }
        self.names.entry(key.to_string()).or_default()
    }

    fn add_ip(&mut self, key: &str, ip: IpAddr) {
        let e = self.entry(key);
        match ip {
            IpAddr::V4(v4) => e.a.push(v4),
            IpAddr::V6(v6) => e.aaaa.push(v6),
        }
    }

    fn add_service(&mut self, svc: &Service, slices: &[&EndpointSlice]) {
        let (Some(ns), Some(name)) = (
            svc.metadata.namespace.as_deref(),
            svc.metadata.name.as_deref(),
        ) else {
            return;
        };
        let (Some(ns), Some(name)) = (dns_label(ns), dns_label(name)) else {
            self.warnings.push(format!(
                "Service {ns}/{name}: name or namespace is not a DNS label; no records"
            ));
            return;
        };
        let Some(spec) = svc.spec.as_ref() else {
            return;
        };
        let base = format!("{name}.{ns}.svc.{}", self.cfg.domain);
        let Some(svc_name) = fqdn(&base) else { return };

        if spec.type_.as_deref() == Some("ExternalName") {
            // An address written as externalName is a name of digits, which CoreDNS does
            // not publish (Kubernetes documents it as not resolvable).
            let target = spec
                .external_name
                .as_deref()
                .and_then(normalize_name)
                .filter(|t| t.parse::<IpAddr>().is_err())
                .and_then(|t| fqdn(&t));
            match target {
                Some(t) => self.entry(&base).cname = Some(t),
                None => self.warnings.push(format!(
                    "Service {ns}/{name}: externalName {:?} is not a DNS name; no records",
                    spec.external_name.as_deref().unwrap_or("")
                )),
            }
            return;
        }

        let headless = spec.cluster_ip.as_deref() == Some("None");
        let cluster_ips: Vec<IpAddr> = if headless {
            Vec::new()
        } else {
            let listed: Vec<&String> = match spec.cluster_ips.as_deref() {
                Some(ips) if !ips.is_empty() => ips.iter().collect(),
                _ => spec.cluster_ip.iter().collect(),
            };
            listed
                .into_iter()
                .filter_map(|s| s.parse::<IpAddr>().ok())
                .collect()
        };
        if !headless && cluster_ips.is_empty() {
            // Not allocated yet (or only "None" in clusterIPs): nothing to publish.
            return;
        }

        let eps = ready_endpoints(slices);
        if headless {
            for ep in &eps {
                self.add_ip(&base, ep.ip);
            }
        } else {
            for ip in &cluster_ips {
                self.add_ip(&base, *ip);
                self.cluster_ptrs
                    .entry(*ip)
                    .or_insert_with(|| svc_name.clone());
            }
            for p in spec.ports.iter().flatten() {
                let Ok(port) = u16::try_from(p.port) else {
                    continue;
                };
                let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                let pname = p.name.as_deref().unwrap_or("").to_ascii_lowercase();
                self.add_srv(&base, &pname, &proto, port, &svc_name);
            }
        }

        for ep in &eps {
            let ep_key = format!("{}.{base}", ep.host);
            let Some(ep_name) = fqdn(&ep_key) else {
                continue;
            };
            self.add_ip(&ep_key, ep.ip);
            let ptrs = self.endpoint_ptrs.entry(ep.ip).or_default();
            if !ptrs.contains(&ep_name) {
                ptrs.push(ep_name.clone());
            }
            if headless {
                for (pname, proto, port) in &ep.ports {
                    self.add_srv(&base, pname, proto, *port, &ep_name);
                }
            }
        }
    }

    /// SRV `_<pname>._<proto>.<base>` (named ports only) and on `<base>` itself.
    fn add_srv(&mut self, base: &str, pname: &str, proto: &str, port: u16, target: &Name) {
        if !pname.is_empty() && dns_label(pname).is_some() && dns_label(proto).is_some() {
            let srv_key = format!("_{pname}._{proto}.{base}");
            let e = self.entry(&srv_key);
            if !e.srv.iter().any(|(p, t)| *p == port && t == target) {
                e.srv.push((port, target.clone()));
            }
        }
        let e = self.entry(base);
        if !e.srv.iter().any(|(p, t)| *p == port && t == target) {
            e.srv.push((port, target.clone()));
        }
    }
}

/// The ready endpoints of a Service's EndpointSlices (IPv4/IPv6 slices only), deduplicated
/// by (address, name) with their slice's ports merged.
fn ready_endpoints(slices: &[&EndpointSlice]) -> Vec<Ep> {
    let mut out: Vec<Ep> = Vec::new();
    let mut index: HashMap<(IpAddr, String), usize> = HashMap::new();
    for slice in slices {
        let v4 = match slice.address_type.as_str() {
            "IPv4" => true,
            "IPv6" => false,
            _ => continue,
        };
        let ports: Vec<(String, String, u16)> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let port = u16::try_from(p.port?).ok()?;
                Some((
                    p.name.as_deref().unwrap_or("").to_ascii_lowercase(),
                    p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
                    port,
                ))
            })
            .collect();
        for ep in &slice.endpoints {
            if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            for addr in &ep.addresses {
                let Ok(ip) = addr.parse::<IpAddr>() else {
                    continue;
                };
                if ip.is_ipv4() != v4 {
                    continue;
                }
                let host = ep
                    .hostname
                    .as_deref()
                    .and_then(dns_label)
                    .unwrap_or_else(|| dashed(ip));
                match index.get(&(ip, host.clone())) {
                    Some(&i) => {
                        for p in &ports {
                            if !out[i].ports.contains(p) {
                                out[i].ports.push(p.clone());
                            }
                        }
                    }
                    None => {
                        index.insert((ip, host.clone()), out.len());
                        out.push(Ep {
                            ip,
                            host,
                            ports: ports.clone(),
                        });
                    }
                }
            }
        }
    }
    out
}

/// An IP written as a DNS label, CoreDNS's way: dots (IPv4) or colons (IPv6) become dashes.
fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

/// The address a pod name's first label spells (`10-42-0-5`, `fd00--5`), CoreDNS's rule.
fn pod_ip(label: &str) -> Option<IpAddr> {
    let text = if label.matches('-').count() == 3 && !label.contains("--") {
        label.replace('-', ".")
    } else {
        label.replace('-', ":")
    };
    text.parse().ok()
}

/// `s` lowercased when it is a single DNS label.
fn dns_label(s: &str) -> Option<String> {
    let l = s.to_ascii_lowercase();
    (!l.is_empty()
        && l.len() <= 63
        && l.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    .then_some(l)
}

/// The absolute [`Name`] of a key.
fn fqdn(key: &str) -> Option<Name> {
    Name::from_ascii(format!("{key}.")).ok()
}

/// The lowercase labels of a query name; `None` when a label is not plain text (holds a
/// dot or is not UTF-8), which no record can match.
fn labels_of(name: &Name) -> Option<Vec<String>> {
    name.iter()
        .map(|l| {
            if l.contains(&b'.') {
                return None;
            }
            std::str::from_utf8(l).ok().map(str::to_ascii_lowercase)
        })
        .collect()
}

/// The address of a full reverse name (`4.3.2.1.in-addr.arpa`, 32 nibbles in `ip6.arpa`).
fn reverse_ip(name: &Name) -> Option<IpAddr> {
    let net = name.parse_arpa_name().ok()?;
    let full = match net.addr() {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    (net.prefix_len() == full).then(|| net.addr())
}

fn is_reverse(labels: &[String]) -> bool {
    let n = labels.len();
    n >= 2 && labels[n - 1] == "arpa" && (labels[n - 2] == "in-addr" || labels[n - 2] == "ip6")
}

fn ends_with(labels: &[String], suffix: &[String]) -> bool {
    labels.len() >= suffix.len() && labels[labels.len() - suffix.len()..] == *suffix
}

impl Records {
    /// Records with nothing but the zone's own names (before the informers synced).
    pub fn empty(cfg: &RecordsConfig) -> Records {
        Records::build(cfg, &Sources::default())
    }

    /// Builds the index from `sources`. Objects that make no valid record are skipped
    /// and reported in [`Records::warnings`].
    pub fn build(cfg: &RecordsConfig, sources: &Sources) -> Records {
        let mut b = Builder {
            cfg,
            names: HashMap::new(),
            cluster_ptrs: HashMap::new(),
            endpoint_ptrs: HashMap::new(),
            warnings: Vec::new(),
        };
        let domain = cfg.domain.clone();
        b.names.insert(domain.clone(), Entry::default());
        b.entry(&format!("dns-version.{domain}"))
            .txt
            .push(DNS_SCHEMA_VERSION.to_string());
        b.entry(&format!("pod.{domain}"));
        b.entry(&format!("svc.{domain}"));
        b.entry(&format!("ns.dns.{domain}"));

        // EndpointSlices by (namespace, Service name).
        let mut slices: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for s in &sources.endpoint_slices {
            let (Some(ns), Some(svc)) = (
                s.metadata.namespace.as_deref(),
                s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL)),
            ) else {
                continue;
            };
            slices.entry((ns, svc.as_str())).or_default().push(s);
        }
        let mut services: Vec<&Service> = sources.services.iter().map(|s| &**s).collect();
        services.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        for svc in &services {
            let key = (
                svc.metadata.namespace.as_deref().unwrap_or(""),
                svc.metadata.name.as_deref().unwrap_or(""),
            );
            let s = slices.get(&key).map(Vec::as_slice).unwrap_or(&[]);
            b.add_service(svc, s);
        }

        // ns.dns.<zone>: the kube-dns Service's ClusterIPs (CoreDNS answers its own).
        let dns_ips: Vec<IpAddr> = b
            .names
            .get(&format!("kube-dns.kube-system.svc.{domain}"))
            .map(|e| {
                e.a.iter()
                    .map(|v| IpAddr::V4(*v))
                    .chain(e.aaaa.iter().map(|v| IpAddr::V6(*v)))
                    .collect()
            })
            .unwrap_or_default();
        for ip in dns_ips {
            b.add_ip(&format!("ns.dns.{domain}"), ip);
        }

        for e in b.names.values_mut() {
            e.a.sort_unstable();
            e.a.dedup();
            e.aaaa.sort_unstable();
            e.aaaa.dedup();
        }
        let mut ptrs: HashMap<IpAddr, Vec<Name>> = b.endpoint_ptrs;
        for (ip, name) in b.cluster_ptrs {
            ptrs.insert(ip, vec![name]);
        }

        // Hosts: node names (InternalIPs) then the ConfigMap's *.hosts.
        let mut hosts: HashMap<String, HostEntry> = HashMap::new();
        let mut host_lines: Vec<(IpAddr, Vec<String>)> = Vec::new();
        let mut nodes: Vec<&Node> = sources.nodes.iter().map(|n| &**n).collect();
        nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        for node in nodes {
            let Some(name) = node.metadata.name.as_deref().and_then(normalize_name) else {
                continue;
            };
            for a in node
                .status
                .as_ref()
                .and_then(|s| s.addresses.as_ref())
                .into_iter()
                .flatten()
            {
                if a.type_ == "InternalIP" {
                    if let Ok(ip) = a.address.parse::<IpAddr>() {
                        host_lines.push((ip, vec![name.clone()]));
                    }
                }
            }
        }
        let mut warnings = b.warnings;
        let mut stubs = Vec::new();
        let mut upstream = Upstream::Default;
        if let Some(cm) = &sources.custom {
            let empty = BTreeMap::new();
            let c = custom::parse(cm.data.as_ref().unwrap_or(&empty));
            host_lines.extend(c.hosts);
            for (domain, servers) in c.stub_domains {
                stubs.push((
                    domain.split('.').map(str::to_string).collect::<Vec<_>>(),
                    Arc::<[SocketAddr]>::from(servers),
                ));
            }
            if let Some(up) = c.upstream_nameservers {
                upstream = Upstream::Servers(up.into());
            }
            let (ns, name) = (
                cm.metadata.namespace.as_deref().unwrap_or(""),
                cm.metadata.name.as_deref().unwrap_or(""),
            );
            warnings.extend(
                c.warnings
                    .into_iter()
                    .map(|w| format!("ConfigMap {ns}/{name}: {w}")),
            );
        }
        stubs.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        let mut hosts_ptrs: HashMap<IpAddr, Vec<Name>> = HashMap::new();
        for (ip, names) in host_lines {
            for n in names {
                let h = hosts.entry(n.clone()).or_default();
                match ip {
                    IpAddr::V4(v4) if !h.v4.contains(&v4) => h.v4.push(v4),
                    IpAddr::V6(v6) if !h.v6.contains(&v6) => h.v6.push(v6),
                    _ => {}
                }
                if let Some(name) = fqdn(&n) {
                    let p = hosts_ptrs.entry(ip).or_default();
                    if !p.contains(&name) {
                        p.push(name);
                    }
                }
            }
        }

        let soa = soa_record(cfg);
        Records {
            cfg: cfg.clone(),
            soa,
            names: b.names,
            ptrs,
            hosts,
            hosts_ptrs,
            stubs,
            upstream,
            warnings,
            services: services.len(),
        }
    }

    /// Problems found while building (bad objects, bad ConfigMap keys), for logging.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The configuration these records were built with.
    pub fn config(&self) -> &RecordsConfig {
        &self.cfg
    }

    /// How many Services the records were built from.
    pub fn service_count(&self) -> usize {
        self.services
    }

    /// How many names the cluster zone holds (including empty non-terminals).
    pub fn name_count(&self) -> usize {
        self.names.len()
    }

    /// Where names outside every stub domain and the cluster go.
    pub fn default_upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// Decides the answer to `qname`/`qtype` (class IN). Answer records are owned by
    /// `qname` as asked (its case preserved).
    pub fn resolve(&self, qname: &Name, qtype: RecordType) -> Answer {
        self.resolve_depth(qname, qtype, 0)
    }

    fn resolve_depth(&self, qname: &Name, qtype: RecordType, depth: usize) -> Answer {
        let in_zone = self.cfg.zone_name.zone_of(qname);
        let Some(labels) = labels_of(qname) else {
            return if in_zone {
                Answer::Reply(Reply::negative(ResponseCode::NXDomain, Some(&self.soa)))
            } else {
                Answer::Forward(self.upstream.clone())
            };
        };
        if let Some((_, servers)) = self.stubs.iter().find(|(s, _)| ends_with(&labels, s)) {
            return Answer::Forward(Upstream::Servers(servers.clone()));
        }
        let key = labels.join(".");
        if let Some(h) = self.hosts.get(&key) {
            if let Some(reply) = self.hosts_answer(qname, qtype, h) {
                return Answer::Reply(reply);
            }
        }
        if in_zone {
            return self.resolve_zone(qname, &labels, &key, qtype, depth);
        }
        if qtype == RecordType::PTR && is_reverse(&labels) {
            if let Some(ip) = reverse_ip(qname) {
                if let Some(targets) = self.hosts_ptrs.get(&ip).or_else(|| self.ptrs.get(&ip)) {
                    let answers = targets
                        .iter()
                        .map(|t| {
                            Record::from_rdata(
                                qname.clone(),
                                self.cfg.ttl,
                                RData::PTR(PTR(t.clone())),
                            )
                        })
                        .collect();
                    return Answer::Reply(Reply::answer(answers, Vec::new()));
                }
            }
        }
        Answer::Forward(self.upstream.clone())
    }

    /// A/AAAA (and ANY) for a hosts name; NODATA when the name has only the other family;
    /// `None` (continue down the chain) for other types.
    fn hosts_answer(&self, qname: &Name, qtype: RecordType, h: &HostEntry) -> Option<Reply> {
        let ttl = self.cfg.ttl;
        let v4 =
            h.v4.iter()
                .map(|ip| Record::from_rdata(qname.clone(), ttl, RData::A(A(*ip))));
        let v6 =
            h.v6.iter()
                .map(|ip| Record::from_rdata(qname.clone(), ttl, RData::AAAA(AAAA(*ip))));
        let answers: Vec<Record> = match qtype {
            RecordType::A => v4.collect(),
            RecordType::AAAA => v6.collect(),
            RecordType::ANY => v4.chain(v6).collect(),
            _ => return None,
        };
        Some(Reply::answer(answers, Vec::new()))
    }

    fn nxdomain(&self) -> Answer {
        Answer::Reply(Reply::negative(ResponseCode::NXDomain, Some(&self.soa)))
    }

    fn nodata(&self) -> Answer {
        Answer::Reply(Reply::negative(ResponseCode::NoError, Some(&self.soa)))
    }

    fn resolve_zone(
        &self,
        qname: &Name,
        labels: &[String],
        key: &str,
        qtype: RecordType,
        depth: usize,
    ) -> Answer {
        let ttl = self.cfg.ttl;
        let rel = &labels[..labels.len() - self.cfg.zone_labels.len()];
        if rel.last().map(String::as_str) == Some("pod") {
            return match rel.len() {
                1 | 2 => self.nodata(),
                3 => match pod_ip(&rel[0]) {
                    Some(IpAddr::V4(v4)) if qtype == RecordType::A || qtype == RecordType::ANY => {
                        Answer::Reply(Reply::answer(
                            vec![Record::from_rdata(qname.clone(), ttl, RData::A(A(v4)))],
                            Vec::new(),
                        ))
                    }
                    Some(IpAddr::V6(v6))
                        if qtype == RecordType::AAAA || qtype == RecordType::ANY =>
                    {
                        Answer::Reply(Reply::answer(
                            vec![Record::from_rdata(
                                qname.clone(),
                                ttl,
                                RData::AAAA(AAAA(v6)),
                            )],
                            Vec::new(),
                        ))
                    }
                    Some(_) => self.nodata(),
                    None => self.nxdomain(),
                },
                _ => self.nxdomain(),
            };
        }
        let Some(e) = self.names.get(key) else {
            return self.nxdomain();
        };

        if let Some(target) = &e.cname {
            let cname = Record::from_rdata(qname.clone(), ttl, RData::CNAME(CNAME(target.clone())));
            let mut reply = Reply::answer(vec![cname], Vec::new());
            if qtype == RecordType::CNAME || depth + 1 >= MAX_CNAME_CHAIN {
                return Answer::Reply(reply);
            }
            if !self.cfg.zone_name.zone_of(target) {
                return Answer::Chase {
                    reply,
                    target: target.clone(),
                };
            }
            return match self.resolve_depth(target, qtype, depth + 1) {
                Answer::Reply(r) => {
                    reply.answers.extend(r.answers);
                    reply.additional = r.additional;
                    if reply.answers.len() == 1 {
                        reply.authority = r.authority;
                    }
                    Answer::Reply(reply)
                }
                Answer::Chase { reply: r, target } => {
                    reply.answers.extend(r.answers);
                    Answer::Chase { reply, target }
                }
                Answer::Forward(_) => Answer::Chase {
                    reply,
                    target: target.clone(),
                },
            };
        }

        let apex = rel.is_empty();
        let mut answers = Vec::new();
        let mut additional = Vec::new();
        let any = qtype == RecordType::ANY;
        if qtype == RecordType::A || any {
            answers.extend(
                e.a.iter()
                    .map(|ip| Record::from_rdata(qname.clone(), ttl, RData::A(A(*ip)))),
            );
        }
        if qtype == RecordType::AAAA || any {
            answers.extend(
                e.aaaa
                    .iter()
                    .map(|ip| Record::from_rdata(qname.clone(), ttl, RData::AAAA(AAAA(*ip)))),
            );
        }
        if qtype == RecordType::TXT || any {
            answers.extend(e.txt.iter().map(|t| {
                Record::from_rdata(qname.clone(), ttl, RData::TXT(TXT::new(vec![t.clone()])))
            }));
        }
        if qtype == RecordType::SRV || any {
            self.srv_answer(qname, e, &mut answers, &mut additional);
        }
        if apex && (qtype == RecordType::SOA || any) {
            let mut soa = self.soa.clone();
            soa.name = qname.clone();
            answers.push(soa);
        }
        if apex && (qtype == RecordType::NS || any) {
            if let Some(ns_name) = fqdn(&format!("ns.dns.{}", self.cfg.domain)) {
                answers.push(Record::from_rdata(
                    qname.clone(),
                    ttl,
                    RData::NS(NS(ns_name.clone())),
                ));
                self.addresses_of(&ns_name, &mut additional);
            }
        }
        if answers.is_empty() {
            return self.nodata();
        }
        Answer::Reply(Reply::answer(answers, additional))
    }

    fn srv_answer(
        &self,
        qname: &Name,
        e: &Entry,
        answers: &mut Vec<Record>,
        additional: &mut Vec<Record>,
    ) {
        if e.srv.is_empty() {
            return;
        }
        let weight = u16::try_from(100 / e.srv.len()).unwrap_or(1).max(1);
        let mut seen: Vec<&Name> = Vec::new();
        for (port, target) in &e.srv {
            answers.push(Record::from_rdata(
                qname.clone(),
                self.cfg.ttl,
                RData::SRV(SRV::new(0, weight, *port, target.clone())),
            ));
            if !seen.contains(&target) {
                seen.push(target);
                self.addresses_of(target, additional);
            }
        }
    }

    /// The A/AAAA records of a name in the zone, owned by that name.
    fn addresses_of(&self, name: &Name, out: &mut Vec<Record>) {
        let Some(key) = labels_of(name).map(|l| l.join(".")) else {
            return;
        };
        if let Some(e) = self.names.get(&key) {
            out.extend(
                e.a.iter()
                    .map(|ip| Record::from_rdata(name.clone(), self.cfg.ttl, RData::A(A(*ip)))),
            );
            out.extend(
                e.aaaa.iter().map(|ip| {
                    Record::from_rdata(name.clone(), self.cfg.ttl, RData::AAAA(AAAA(*ip)))
                }),
            );
        }
    }
}

/// The zone's SOA (CoreDNS's values: refresh 7200, retry 1800, expire 86400, minimum =
/// TTL; the serial is the build time, so it moves when the records change).
fn soa_record(cfg: &RecordsConfig) -> Record {
    let mname = fqdn(&format!("ns.dns.{}", cfg.domain)).unwrap_or_else(|| cfg.zone_name.clone());
    let rname =
        fqdn(&format!("hostmaster.{}", cfg.domain)).unwrap_or_else(|| cfg.zone_name.clone());
    let serial = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1);
    Record::from_rdata(
        cfg.zone_name.clone(),
        cfg.ttl,
        RData::SOA(SOA::new(mname, rname, serial, 7200, 1800, 86400, cfg.ttl)),
    )
}

/// The current [`Records`], swapped whole when the sources change; readers take an
/// `Arc` and never wait for a rebuild.
#[derive(Debug)]
pub struct RecordsHandle {
    current: RwLock<Arc<Records>>,
}

impl RecordsHandle {
    /// A handle serving `records`.
    pub fn new(records: Records) -> Self {
        RecordsHandle {
            current: RwLock::new(Arc::new(records)),
        }
    }

    /// The records in use now.
    pub fn load(&self) -> Arc<Records> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the records.
    pub fn store(&self, records: Records) {
        let new = Arc::new(records);
        match self.current.write() {
            Ok(mut g) => *g = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus, ServicePort, ServiceSpec};
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn meta(ns: &str, name: &str) -> ObjectMeta {
        ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            ..Default::default()
        }
    }

    /// A ClusterIP Service with `(name, port, protocol)` ports.
    pub(crate) fn cluster_ip(
        ns: &str,
        name: &str,
        ips: &[&str],
        ports: &[(&str, i32, &str)],
    ) -> Service {
        Service {
            metadata: meta(ns, name),
            spec: Some(ServiceSpec {
                cluster_ip: ips.first().map(|s| s.to_string()),
                cluster_ips: Some(ips.iter().map(|s| s.to_string()).collect()),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p, proto)| ServicePort {
                            name: (!n.is_empty()).then(|| n.to_string()),
                            port: *p,
                            protocol: Some(proto.to_string()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn headless(ns: &str, name: &str) -> Service {
        Service {
            metadata: meta(ns, name),
            spec: Some(ServiceSpec {
                cluster_ip: Some("None".into()),
                cluster_ips: Some(vec!["None".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn external(ns: &str, name: &str, target: &str) -> Service {
        Service {
            metadata: meta(ns, name),
            spec: Some(ServiceSpec {
                type_: Some("ExternalName".into()),
                external_name: Some(target.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// An EndpointSlice of `svc` with `(address, hostname, ready)` endpoints.
    pub(crate) fn slice(
        ns: &str,
        svc: &str,
        name: &str,
        family: &str,
        eps: &[(&str, Option<&str>, Option<bool>)],
        ports: &[(&str, i32, &str)],
    ) -> EndpointSlice {
        let mut m = meta(ns, name);
        m.labels = Some(
            [(SERVICE_NAME_LABEL.to_string(), svc.to_string())]
                .into_iter()
                .collect(),
        );
        EndpointSlice {
            metadata: m,
            address_type: family.into(),
            endpoints: eps
                .iter()
                .map(|(ip, host, ready)| Endpoint {
                    addresses: vec![ip.to_string()],
                    hostname: host.map(str::to_string),
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p, proto)| EndpointPort {
                        name: Some(n.to_string()),
                        port: Some(*p),
                        protocol: Some(proto.to_string()),
                        ..Default::default()
                    })
                    .collect(),
            ),
        }
    }

    fn node(name: &str, addrs: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            status: Some(NodeStatus {
                addresses: Some(
                    addrs
                        .iter()
                        .map(|(t, a)| NodeAddress {
                            type_: t.to_string(),
                            address: a.to_string(),
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn custom_cm(pairs: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            metadata: meta("kube-system", "coredns-custom"),
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn cfg() -> RecordsConfig {
        RecordsConfig::new("cluster.local", 5).unwrap()
    }

    fn build(services: Vec<Service>, slices: Vec<EndpointSlice>) -> Records {
        Records::build(
            &cfg(),
            &Sources {
                services: services.into_iter().map(Arc::new).collect(),
                endpoint_slices: slices.into_iter().map(Arc::new).collect(),
                ..Default::default()
            },
        )
    }

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn reply(a: Answer) -> Reply {
        match a {
            Answer::Reply(r) => r,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn q(r: &Records, name: &str, t: RecordType) -> Reply {
        reply(r.resolve(&n(name), t))
    }

    /// The answer section's data as text, sorted.
    fn data(r: &Reply) -> Vec<String> {
        let mut v: Vec<String> = r.answers.iter().map(|rec| rec.data.to_string()).collect();
        v.sort();
        v
    }

    fn assert_nxdomain(r: &Reply) {
        assert_eq!(r.rcode, ResponseCode::NXDomain);
        assert!(r.authoritative);
        assert!(r.answers.is_empty());
        assert_eq!(r.authority.len(), 1);
        assert_eq!(r.authority[0].record_type(), RecordType::SOA);
    }

    fn assert_nodata(r: &Reply) {
        assert_eq!(r.rcode, ResponseCode::NoError);
        assert!(r.authoritative);
        assert!(r.answers.is_empty(), "{:?}", r.answers);
        assert_eq!(r.authority.len(), 1);
        assert_eq!(r.authority[0].record_type(), RecordType::SOA);
    }

    fn web() -> Records {
        build(
            vec![cluster_ip(
                "default",
                "web",
                &["10.43.0.20"],
                &[("http", 80, "TCP"), ("", 81, "TCP"), ("dns", 53, "UDP")],
            )],
            vec![slice(
                "default",
                "web",
                "web-abc",
                "IPv4",
                &[
                    ("10.42.0.5", None, Some(true)),
                    ("10.42.0.6", None, None),
                    ("10.42.0.7", None, Some(false)),
                ],
                &[("http", 8080, "TCP")],
            )],
        )
    }

    #[test]
    fn cluster_ip_a_record_case_insensitive_with_ttl() {
        let r = web();
        let a = q(&r, "Web.Default.SVC.cluster.local.", RecordType::A);
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert!(a.authoritative);
        assert_eq!(data(&a), vec!["10.43.0.20"]);
        assert_eq!(a.answers[0].ttl, 5);
        assert_eq!(
            a.answers[0].name.to_string(),
            "Web.Default.SVC.cluster.local.",
            "the owner keeps the asked case"
        );
    }

    #[test]
    fn aaaa_of_ipv4_service_is_nodata() {
        assert_nodata(&q(
            &web(),
            "web.default.svc.cluster.local.",
            RecordType::AAAA,
        ));
        assert_nodata(&q(&web(), "web.default.svc.cluster.local.", RecordType::MX));
    }

    #[test]
    fn dual_stack_cluster_ips() {
        let r = build(
            vec![cluster_ip(
                "default",
                "ds",
                &["10.43.0.9", "fd00:43::9"],
                &[("http", 80, "TCP")],
            )],
            vec![],
        );
        assert_eq!(
            data(&q(&r, "ds.default.svc.cluster.local.", RecordType::A)),
            vec!["10.43.0.9"]
        );
        assert_eq!(
            data(&q(&r, "ds.default.svc.cluster.local.", RecordType::AAAA)),
            vec!["fd00:43::9"]
        );
        let p = q(
            &r,
            "9.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.3.4.0.0.0.0.d.f.ip6.arpa.",
            RecordType::PTR,
        );
        assert_eq!(data(&p), vec!["ds.default.svc.cluster.local."]);
    }

    #[test]
    fn srv_for_named_ports_of_cluster_ip_service() {
        let r = web();
        let s = q(
            &r,
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
        );
        assert_eq!(data(&s), vec!["0 100 80 web.default.svc.cluster.local."]);
        assert_eq!(s.additional.len(), 1);
        assert_eq!(
            s.additional[0].name.to_string(),
            "web.default.svc.cluster.local."
        );
        assert_eq!(s.additional[0].data.to_string(), "10.43.0.20");
        assert_eq!(
            data(&q(
                &r,
                "_dns._udp.web.default.svc.cluster.local.",
                RecordType::SRV
            )),
            vec!["0 100 53 web.default.svc.cluster.local."]
        );
        // Wrong protocol or unknown port: no such name.
        assert_nxdomain(&q(
            &r,
            "_http._udp.web.default.svc.cluster.local.",
            RecordType::SRV,
        ));
        assert_nxdomain(&q(
            &r,
            "_nope._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
        ));
        // The bare Service name lists every port, unnamed ones too; weight 100/3.
        assert_eq!(
            data(&q(&r, "web.default.svc.cluster.local.", RecordType::SRV)),
            vec![
                "0 33 53 web.default.svc.cluster.local.",
                "0 33 80 web.default.svc.cluster.local.",
                "0 33 81 web.default.svc.cluster.local."
            ]
        );
        // `_tcp.web...` is an empty non-terminal.
        assert_nodata(&q(
            &r,
            "_tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
        ));
    }

    #[test]
    fn ptr_for_cluster_ip_and_endpoints() {
        let r = web();
        assert_eq!(
            data(&q(&r, "20.0.43.10.in-addr.arpa.", RecordType::PTR)),
            vec!["web.default.svc.cluster.local."]
        );
        // Endpoints of a ClusterIP Service get their dashed name (CoreDNS).
        assert_eq!(
            data(&q(&r, "5.0.42.10.in-addr.arpa.", RecordType::PTR)),
            vec!["10-42-0-5.web.default.svc.cluster.local."]
        );
        // Not-ready endpoint and unknown addresses are forwarded.
        assert_eq!(
            r.resolve(&n("7.0.42.10.in-addr.arpa."), RecordType::PTR),
            Answer::Forward(Upstream::Default)
        );
        assert_eq!(
            r.resolve(&n("8.8.8.8.in-addr.arpa."), RecordType::PTR),
            Answer::Forward(Upstream::Default)
        );
        assert_eq!(
            r.resolve(&n("42.10.in-addr.arpa."), RecordType::PTR),
            Answer::Forward(Upstream::Default)
        );
    }

    #[test]
    fn endpoint_names_of_cluster_ip_service_resolve() {
        let r = web();
        assert_eq!(
            data(&q(
                &r,
                "10-42-0-5.web.default.svc.cluster.local.",
                RecordType::A
            )),
            vec!["10.42.0.5"]
        );
        assert_eq!(
            data(&q(
                &r,
                "10-42-0-6.web.default.svc.cluster.local.",
                RecordType::A
            )),
            vec!["10.42.0.6"],
            "ready unset means ready"
        );
        assert_nxdomain(&q(
            &r,
            "10-42-0-7.web.default.svc.cluster.local.",
            RecordType::A,
        ));
    }

    fn db() -> Records {
        build(
            vec![headless("data", "db")],
            vec![
                slice(
                    "data",
                    "db",
                    "db-1",
                    "IPv4",
                    &[
                        ("10.42.1.10", Some("db-0"), Some(true)),
                        ("10.42.1.11", Some("db-1"), Some(true)),
                        ("10.42.1.12", None, Some(true)),
                        ("10.42.1.13", Some("db-3"), Some(false)),
                    ],
                    &[("pg", 5432, "TCP")],
                ),
                slice(
                    "data",
                    "db",
                    "db-2",
                    "IPv6",
                    &[("fd00::10", Some("db-0"), Some(true))],
                    &[("pg", 5432, "TCP")],
                ),
                slice(
                    "data",
                    "db",
                    "db-3",
                    "FQDN",
                    &[("db.example.com", None, Some(true))],
                    &[],
                ),
            ],
        )
    }

    #[test]
    fn headless_service_lists_ready_endpoints() {
        let r = db();
        assert_eq!(
            data(&q(&r, "db.data.svc.cluster.local.", RecordType::A)),
            vec!["10.42.1.10", "10.42.1.11", "10.42.1.12"]
        );
        assert_eq!(
            data(&q(&r, "db.data.svc.cluster.local.", RecordType::AAAA)),
            vec!["fd00::10"]
        );
    }

    #[test]
    fn headless_hostnames_and_dashed_names() {
        let r = db();
        assert_eq!(
            data(&q(&r, "db-0.db.data.svc.cluster.local.", RecordType::A)),
            vec!["10.42.1.10"]
        );
        assert_eq!(
            data(&q(&r, "db-0.db.data.svc.cluster.local.", RecordType::AAAA)),
            vec!["fd00::10"]
        );
        assert_eq!(
            data(&q(
                &r,
                "10-42-1-12.db.data.svc.cluster.local.",
                RecordType::A
            )),
            vec!["10.42.1.12"]
        );
        // An endpoint with a hostname is named by it only, not by its dashed address.
        assert_nxdomain(&q(
            &r,
            "fd00--10.db.data.svc.cluster.local.",
            RecordType::AAAA,
        ));
        assert_nxdomain(&q(&r, "db-3.db.data.svc.cluster.local.", RecordType::A));
        assert_nxdomain(&q(&r, "db-9.db.data.svc.cluster.local.", RecordType::A));
    }

    #[test]
    fn headless_srv_one_per_endpoint_with_additional_addresses() {
        let r = db();
        let s = q(&r, "_pg._tcp.db.data.svc.cluster.local.", RecordType::SRV);
        assert_eq!(
            data(&s),
            vec![
                "0 33 5432 10-42-1-12.db.data.svc.cluster.local.",
                "0 33 5432 db-0.db.data.svc.cluster.local.",
                "0 33 5432 db-1.db.data.svc.cluster.local."
            ]
        );
        let mut extra: Vec<String> = s
            .additional
            .iter()
            .map(|r| format!("{} {}", r.name, r.data))
            .collect();
        extra.sort();
        assert_eq!(
            extra,
            vec![
                "10-42-1-12.db.data.svc.cluster.local. 10.42.1.12",
                "db-0.db.data.svc.cluster.local. 10.42.1.10",
                "db-0.db.data.svc.cluster.local. fd00::10",
                "db-1.db.data.svc.cluster.local. 10.42.1.11",
            ]
        );
    }

    #[test]
    fn headless_ptr_uses_endpoint_name() {
        let r = db();
        assert_eq!(
            data(&q(&r, "10.1.42.10.in-addr.arpa.", RecordType::PTR)),
            vec!["db-0.db.data.svc.cluster.local."]
        );
        assert_eq!(
            data(&q(&r, "12.1.42.10.in-addr.arpa.", RecordType::PTR)),
            vec!["10-42-1-12.db.data.svc.cluster.local."]
        );
    }

    #[test]
    fn headless_without_ready_endpoints_is_nxdomain() {
        let r = build(
            vec![headless("data", "empty")],
            vec![slice(
                "data",
                "empty",
                "e-1",
                "IPv4",
                &[("10.42.1.50", None, Some(false))],
                &[],
            )],
        );
        assert_nxdomain(&q(&r, "empty.data.svc.cluster.local.", RecordType::A));
    }

    #[test]
    fn endpoint_slices_of_other_services_do_not_leak() {
        let r = build(
            vec![headless("a", "db"), headless("b", "db")],
            vec![slice(
                "a",
                "db",
                "x",
                "IPv4",
                &[("10.42.0.1", None, None)],
                &[],
            )],
        );
        assert_eq!(
            data(&q(&r, "db.a.svc.cluster.local.", RecordType::A)),
            vec!["10.42.0.1"]
        );
        assert_nxdomain(&q(&r, "db.b.svc.cluster.local.", RecordType::A));
    }

    #[test]
    fn external_name_is_cname_and_chases_out_of_cluster() {
        let r = build(vec![external("default", "ext", "www.Example.com.")], vec![]);
        let c = q(&r, "ext.default.svc.cluster.local.", RecordType::CNAME);
        assert_eq!(data(&c), vec!["www.example.com."]);
        match r.resolve(&n("ext.default.svc.cluster.local."), RecordType::A) {
            Answer::Chase { reply, target } => {
                assert_eq!(target, n("www.example.com."));
                assert_eq!(data(&reply), vec!["www.example.com."]);
                assert!(reply.authoritative);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn external_name_inside_cluster_is_followed() {
        let r = build(
            vec![
                external("default", "alias", "web.default.svc.cluster.local"),
                cluster_ip("default", "web", &["10.43.0.20"], &[("http", 80, "TCP")]),
                external("default", "loop1", "loop2.default.svc.cluster.local"),
                external("default", "loop2", "loop1.default.svc.cluster.local"),
            ],
            vec![],
        );
        let a = q(&r, "alias.default.svc.cluster.local.", RecordType::A);
        assert_eq!(a.answers.len(), 2);
        assert_eq!(a.answers[0].record_type(), RecordType::CNAME);
        assert_eq!(a.answers[1].data.to_string(), "10.43.0.20");
        // A loop stops after MAX_CNAME_CHAIN links instead of recursing forever.
        let l = q(&r, "loop1.default.svc.cluster.local.", RecordType::A);
        assert_eq!(l.answers.len(), MAX_CNAME_CHAIN);
        assert!(l
            .answers
            .iter()
            .all(|r| r.record_type() == RecordType::CNAME));
    }

    #[test]
    fn pod_records_from_the_name() {
        let r = web();
        assert_eq!(
            data(&q(&r, "10-42-0-99.anyns.pod.cluster.local.", RecordType::A)),
            vec!["10.42.0.99"]
        );
        assert_eq!(
            data(&q(
                &r,
                "fd00--99.anyns.pod.cluster.local.",
                RecordType::AAAA
            )),
            vec!["fd00::99"]
        );
        assert_nodata(&q(
            &r,
            "10-42-0-99.anyns.pod.cluster.local.",
            RecordType::AAAA,
        ));
        assert_nxdomain(&q(&r, "not-an-ip.anyns.pod.cluster.local.", RecordType::A));
        assert_nxdomain(&q(
            &r,
            "10-42-0-300.anyns.pod.cluster.local.",
            RecordType::A,
        ));
        assert_nxdomain(&q(
            &r,
            "x.10-42-0-99.anyns.pod.cluster.local.",
            RecordType::A,
        ));
        assert_nodata(&q(&r, "anyns.pod.cluster.local.", RecordType::A));
        assert_nodata(&q(&r, "pod.cluster.local.", RecordType::A));
    }

    #[test]
    fn dns_version_txt() {
        let t = q(&web(), "dns-version.cluster.local.", RecordType::TXT);
        assert_eq!(t.answers.len(), 1);
        match &t.answers[0].data {
            RData::TXT(txt) => assert_eq!(
                txt.txt_data.iter().map(|b| b.to_vec()).collect::<Vec<_>>(),
                vec![b"1.1.0".to_vec()]
            ),
            other => panic!("{other:?}"),
        }
        assert_nodata(&q(&web(), "dns-version.cluster.local.", RecordType::A));
    }

    #[test]
    fn unknown_names_in_zone_are_authoritative_nxdomain() {
        let r = web();
        assert_nxdomain(&q(&r, "nope.default.svc.cluster.local.", RecordType::A));
        assert_nxdomain(&q(&r, "www.google.com.cluster.local.", RecordType::A));
        assert_nxdomain(&q(
            &r,
            "web.default.default.svc.cluster.local.",
            RecordType::A,
        ));
        assert_nxdomain(&q(&r, "a.b.c.d.e.svc.cluster.local.", RecordType::SRV));
        assert_nxdomain(&q(&r, "nosuchns.svc.cluster.local.", RecordType::A));
    }

    #[test]
    fn empty_non_terminals_and_apex() {
        let r = web();
        assert_nodata(&q(&r, "default.svc.cluster.local.", RecordType::A));
        assert_nodata(&q(&r, "svc.cluster.local.", RecordType::A));
        assert_nodata(&q(&r, "cluster.local.", RecordType::A));
        let soa = q(&r, "cluster.local.", RecordType::SOA);
        assert_eq!(soa.answers.len(), 1);
        match &soa.answers[0].data {
            RData::SOA(s) => {
                assert_eq!(s.mname.to_string(), "ns.dns.cluster.local.");
                assert_eq!(s.minimum, 5);
            }
            other => panic!("{other:?}"),
        }
        let ns = q(&r, "cluster.local.", RecordType::NS);
        assert_eq!(data(&ns), vec!["ns.dns.cluster.local."]);
    }

    #[test]
    fn ns_dns_answers_kube_dns_cluster_ip() {
        let r = build(
            vec![cluster_ip(
                "kube-system",
                "kube-dns",
                &["10.43.0.10"],
                &[("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")],
            )],
            vec![],
        );
        assert_eq!(
            data(&q(&r, "ns.dns.cluster.local.", RecordType::A)),
            vec!["10.43.0.10"]
        );
        let ns = q(&r, "cluster.local.", RecordType::NS);
        assert_eq!(ns.additional.len(), 1);
        assert_eq!(ns.additional[0].data.to_string(), "10.43.0.10");
    }

    #[test]
    fn names_outside_the_zone_are_forwarded() {
        let r = web();
        assert_eq!(
            r.resolve(&n("example.com."), RecordType::A),
            Answer::Forward(Upstream::Default)
        );
        assert_eq!(
            r.resolve(&n("."), RecordType::NS),
            Answer::Forward(Upstream::Default)
        );
        assert_eq!(
            r.resolve(&n("cluster.local.example.com."), RecordType::A),
            Answer::Forward(Upstream::Default)
        );
    }

    #[test]
    fn other_cluster_domain() {
        let c = RecordsConfig::new("Corp.Internal.", 30).unwrap();
        let r = Records::build(
            &c,
            &Sources {
                services: vec![Arc::new(cluster_ip("default", "web", &["10.43.0.20"], &[]))],
                ..Default::default()
            },
        );
        let a = q(&r, "web.default.svc.corp.internal.", RecordType::A);
        assert_eq!(data(&a), vec!["10.43.0.20"]);
        assert_eq!(a.answers[0].ttl, 30);
        assert_eq!(
            r.resolve(&n("web.default.svc.cluster.local."), RecordType::A),
            Answer::Forward(Upstream::Default)
        );
        assert!(RecordsConfig::new("bad domain", 5).is_err());
        assert!(RecordsConfig::new("", 5).is_err());
    }

    #[test]
    fn node_names_resolve_to_internal_ips() {
        let r = Records::build(
            &cfg(),
            &Sources {
                nodes: vec![Arc::new(node(
                    "Node-1",
                    &[
                        ("InternalIP", "192.168.5.10"),
                        ("ExternalIP", "203.0.113.9"),
                        ("Hostname", "node-1"),
                        ("InternalIP", "fd00::a"),
                    ],
                ))],
                ..Default::default()
            },
        );
        let a = q(&r, "node-1.", RecordType::A);
        assert_eq!(data(&a), vec!["192.168.5.10"]);
        assert!(a.authoritative);
        assert_eq!(data(&q(&r, "NODE-1.", RecordType::AAAA)), vec!["fd00::a"]);
        assert_eq!(
            data(&q(&r, "10.5.168.192.in-addr.arpa.", RecordType::PTR)),
            vec!["node-1."]
        );
        // Other types fall through to forwarding, like CoreDNS's hosts plugin.
        assert_eq!(
            r.resolve(&n("node-1."), RecordType::MX),
            Answer::Forward(Upstream::Default)
        );
    }

    #[test]
    fn custom_configmap_hosts_stubs_and_upstreams() {
        let cm = custom_cm(&[
            ("extra.hosts", "10.1.2.3 registry.corp\nfd00::7 registry.corp\n10.1.2.4 web.default.svc.cluster.local\n"),
            ("stubDomains", r#"{"corp.example": ["10.9.9.9"], "deep.corp.example": ["10.8.8.8:5353"]}"#),
            ("upstreamNameservers", r#"["10.7.7.7"]"#),
            ("log.override", "log"),
        ]);
        let r = Records::build(
            &cfg(),
            &Sources {
                custom: Some(Arc::new(cm)),
                services: vec![Arc::new(cluster_ip("default", "web", &["10.43.0.20"], &[]))],
                ..Default::default()
            },
        );
        assert_eq!(
            data(&q(&r, "registry.corp.", RecordType::A)),
            vec!["10.1.2.3"]
        );
        assert_eq!(
            data(&q(&r, "registry.corp.", RecordType::AAAA)),
            vec!["fd00::7"]
        );
        // Hosts come before the kubernetes records, as the hosts plugin does.
        assert_eq!(
            data(&q(&r, "web.default.svc.cluster.local.", RecordType::A)),
            vec!["10.1.2.4"]
        );
        let stub = |s: &str| {
            Answer::Forward(Upstream::Servers(
                vec![s.parse::<SocketAddr>().unwrap()].into(),
            ))
        };
        assert_eq!(
            r.resolve(&n("a.corp.example."), RecordType::A),
            stub("10.9.9.9:53")
        );
        assert_eq!(
            r.resolve(&n("corp.example."), RecordType::A),
            stub("10.9.9.9:53")
        );
        assert_eq!(
            r.resolve(&n("x.deep.corp.example."), RecordType::A),
            stub("10.8.8.8:5353"),
            "longest stub domain wins"
        );
        assert_eq!(
            r.resolve(&n("example.org."), RecordType::A),
            stub("10.7.7.7:53")
        );
        assert_eq!(
            r.resolve(&n("8.8.8.8.in-addr.arpa."), RecordType::PTR),
            stub("10.7.7.7:53")
        );
        assert_eq!(r.warnings().len(), 1, "{:?}", r.warnings());
        assert!(r.warnings()[0].contains("log.override"));
    }

    #[test]
    fn only_hosts_name_with_other_family_is_nodata() {
        let cm = custom_cm(&[("a.hosts", "10.1.2.3 only4\n")]);
        let r = Records::build(
            &cfg(),
            &Sources {
                custom: Some(Arc::new(cm)),
                ..Default::default()
            },
        );
        let rep = q(&r, "only4.", RecordType::AAAA);
        assert_eq!(rep.rcode, ResponseCode::NoError);
        assert!(rep.answers.is_empty());
    }

    #[test]
    fn bad_objects_are_skipped_with_warnings() {
        let mut no_ip = cluster_ip("default", "pending", &[], &[]);
        if let Some(s) = no_ip.spec.as_mut() {
            s.cluster_ip = None;
        }
        let r = build(
            vec![
                external("default", "bad-ext", "not a name"),
                external("default", "ip-ext", "192.0.2.1"),
                no_ip,
                cluster_ip("default", "bad.name", &["10.43.0.30"], &[]),
                cluster_ip(
                    "default",
                    "bad-port",
                    &["10.43.0.31"],
                    &[("http", 70000, "TCP")],
                ),
                Service {
                    metadata: meta("default", "nospec"),
                    ..Default::default()
                },
                cluster_ip("default", "ok", &["10.43.0.32"], &[]),
            ],
            vec![slice(
                "default",
                "ok",
                "s",
                "IPv4",
                &[("garbage", None, None)],
                &[("p", -1, "TCP")],
            )],
        );
        assert_eq!(r.warnings().len(), 3, "{:?}", r.warnings());
        assert_nxdomain(&q(&r, "bad-ext.default.svc.cluster.local.", RecordType::A));
        assert_nxdomain(&q(&r, "ip-ext.default.svc.cluster.local.", RecordType::A));
        assert_nxdomain(&q(&r, "pending.default.svc.cluster.local.", RecordType::A));
        assert_eq!(
            data(&q(&r, "bad-port.default.svc.cluster.local.", RecordType::A)),
            vec!["10.43.0.31"]
        );
        assert_nodata(&q(
            &r,
            "bad-port.default.svc.cluster.local.",
            RecordType::SRV,
        ));
        assert_eq!(
            data(&q(&r, "ok.default.svc.cluster.local.", RecordType::A)),
            vec!["10.43.0.32"]
        );
    }

    #[test]
    fn odd_query_names_never_panic() {
        let r = db();
        let weird = [
            ".",
            "cluster.local.",
            "a\\.b.svc.cluster.local.",
            "_.svc.cluster.local.",
            "-.-.pod.cluster.local.",
            "ip6.arpa.",
            "in-addr.arpa.",
            "1.in-addr.arpa.",
        ];
        for w in weird {
            for t in [
                RecordType::A,
                RecordType::AAAA,
                RecordType::SRV,
                RecordType::PTR,
                RecordType::ANY,
                RecordType::TXT,
                RecordType::CNAME,
                RecordType::NS,
                RecordType::SOA,
            ] {
                if let Ok(name) = Name::from_ascii(w) {
                    let _ = r.resolve(&name, t);
                }
            }
        }
        // A label holding a dot cannot match "a.b" keys, and is NXDOMAIN in the zone.
        assert_nxdomain(&q(&r, "db\\.data.svc.cluster.local.", RecordType::A));
    }

    #[test]
    fn handle_swaps_records() {
        let h = RecordsHandle::new(Records::empty(&cfg()));
        assert_nxdomain(&reply(
            h.load()
                .resolve(&n("web.default.svc.cluster.local."), RecordType::A),
        ));
        h.store(web());
        assert_eq!(
            data(&reply(h.load().resolve(
                &n("web.default.svc.cluster.local."),
                RecordType::A
            ))),
            vec!["10.43.0.20"]
        );
    }
}
