//! The pure model: a Service and its EndpointSlices become [`ProxiedService`]s — one
//! [`ServicePort`] per port of the Service with the endpoints that serve it — for one IP
//! family, as upstream kube-proxy's `ServicePortMap` + `EndpointsMap` see them.
//!
//! Nothing here touches the network or the API: [`proxied_service`] is a function of its
//! inputs, so the rules it leads to are testable without a cluster. Every string that ends
//! up in an nftables script is validated here (names are DNS labels, addresses parse), so
//! the renderer never has to quote or escape user input.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// Label of an EndpointSlice naming the Service it belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours, as upstream).
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10_800;

/// Largest accepted affinity timeout (one day, the API's validation limit).
pub const MAX_AFFINITY_TIMEOUT_SECONDS: u32 = 86_400;

/// An IP family: which nftables family (`ip` or `ip6`) a rule set is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpFamily {
    /// IPv4 (`ip` table, `ipv4_addr`).
    V4,
    /// IPv6 (`ip6` table, `ipv6_addr`).
    V6,
}

impl IpFamily {
    /// The family of an address.
    pub fn of(ip: &IpAddr) -> IpFamily {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// The EndpointSlice `addressType` of this family.
    pub fn address_type(self) -> &'static str {
        match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        }
    }
}

/// A Service's transport protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// Parses the API's spelling (`TCP`, `UDP`, `SCTP`); `None` is TCP as in the API defaults.
    pub fn parse(s: Option<&str>) -> Option<Protocol> {
        match s {
            None | Some("TCP") => Some(Protocol::Tcp),
            Some("UDP") => Some(Protocol::Udp),
            Some("SCTP") => Some(Protocol::Sctp),
            Some(_) => None,
        }
    }

    /// The nftables spelling (`tcp`, `udp`, `sctp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// A Service's namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
}

impl ServiceKey {
    /// A key from its parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ServiceKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of a Service object (empty strings where metadata is missing).
    pub fn of(svc: &Service) -> Self {
        ServiceKey::new(
            svc.metadata.namespace.clone().unwrap_or_default(),
            svc.metadata.name.clone().unwrap_or_default(),
        )
    }

    /// The Service an EndpointSlice belongs to (its `kubernetes.io/service-name` label).
    pub fn of_slice(slice: &EndpointSlice) -> Option<Self> {
        let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
        Some(ServiceKey::new(
            slice.metadata.namespace.clone().unwrap_or_default(),
            name.clone(),
        ))
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// An address range (`loadBalancerSourceRanges`, the cluster CIDR).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network address, masked to `prefix`.
    pub addr: IpAddr,
    /// The prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n` or `x::y/n` (with [`rk3s_core::Cidr`]; surrounding whitespace
    /// ignored, as upstream does for `loadBalancerSourceRanges`); a bare address is a
    /// host route.
    pub fn parse(s: &str) -> Option<Cidr> {
        let s = s.trim();
        let c = match rk3s_core::Cidr::parse(s) {
            Ok(c) => c,
            Err(_) if !s.contains('/') => rk3s_core::Cidr::host(s.parse().ok()?),
            Err(_) => return None,
        };
        Some(Cidr {
            addr: c.addr(),
            prefix: c.prefix(),
        })
    }

    /// The family of the range.
    pub fn family(&self) -> IpFamily {
        IpFamily::of(&self.addr)
    }

    /// Whether `ip` lies in the range.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        rk3s_core::Cidr::new(self.addr, self.prefix).is_some_and(|c| c.contains(ip))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One endpoint of a service port (upstream's `BaseEndpointInfo`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// The endpoint's address (the first of its `addresses`).
    pub ip: IpAddr,
    /// The target port.
    pub port: u16,
    /// Whether the endpoint runs on this node (`nodeName` is ours).
    pub local: bool,
    /// `conditions.ready` (unset means ready).
    pub ready: bool,
    /// `conditions.serving` (unset means true, as upstream).
    pub serving: bool,
    /// `conditions.terminating` (unset means false).
    pub terminating: bool,
}

impl Endpoint {
    /// `ip:port` (`[ip]:port` for IPv6), as in a `dnat to` statement.
    pub fn addr_port(&self) -> String {
        match self.ip {
            IpAddr::V4(a) => format!("{a}:{}", self.port),
            IpAddr::V6(a) => format!("[{a}]:{}", self.port),
        }
    }
}

/// One port of a Service for one IP family, with its endpoints (upstream's
/// `ServicePort` + its `EndpointsMap` entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// The Service.
    pub service: ServiceKey,
    /// `ports[].name` (may be empty for a single-port Service).
    pub port_name: String,
    /// `ports[].protocol`.
    pub protocol: Protocol,
    /// The ClusterIP of this family.
    pub cluster_ip: IpAddr,
    /// `ports[].port`.
    pub port: u16,
    /// `ports[].nodePort` (0: none).
    pub node_port: u16,
    /// `spec.externalIPs` of this family.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` of this family in VIP mode.
    pub load_balancer_vips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges` of this family (empty: allow all).
    pub load_balancer_source_ranges: Vec<Cidr>,
    /// `sessionAffinity: ClientIP` and its timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// `externalTrafficPolicy: Local` on a NodePort or LoadBalancer Service.
    pub external_policy_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_policy_local: bool,
    /// Every endpoint of this port (deduplicated by address and port, sorted).
    pub endpoints: Vec<Endpoint>,
}

/// The endpoints of a service port sorted by traffic policy (upstream's
/// `CategorizeEndpoints`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Categorized {
    /// Endpoints for "Cluster" traffic policy: ready ones, else serving+terminating ones.
    pub cluster: Vec<Endpoint>,
    /// Endpoints for "Local" traffic policy: local ready ones, else local
    /// serving+terminating ones.
    pub local: Vec<Endpoint>,
    /// Every endpoint some rule of this port may send traffic to.
    pub all_reachable: Vec<Endpoint>,
    /// Whether the port has usable endpoints anywhere in the cluster.
    pub has_any: bool,
}

impl ServicePort {
    /// `namespace/name:port` (upstream's `ServicePortName.String()`).
    pub fn display_name(&self) -> String {
        if self.port_name.is_empty() {
            format!("{}", self.service)
        } else {
            format!("{}:{}", self.service, self.port_name)
        }
    }

    /// Whether the port is reachable other than by its ClusterIP.
    pub fn externally_accessible(&self) -> bool {
        self.node_port != 0 || !self.load_balancer_vips.is_empty() || !self.external_ips.is_empty()
    }

    /// Whether some traffic uses "Cluster" policy endpoints (also the short-circuit of
    /// `externalTrafficPolicy: Local`).
    pub fn uses_cluster_endpoints(&self) -> bool {
        !self.internal_policy_local || self.externally_accessible()
    }

    /// Whether some traffic uses "Local" policy endpoints.
    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_policy_local || (self.external_policy_local && self.externally_accessible())
    }

    /// Sorts the endpoints by policy, as upstream (without topology hints).
    pub fn categorize(&self) -> Categorized {
        let mut out = Categorized::default();
        let mut cluster_complete = true;
        if self.uses_cluster_endpoints() {
            out.cluster = self.endpoints.iter().filter(|e| e.ready).cloned().collect();
            if out.cluster.is_empty() {
                out.cluster = self
                    .endpoints
                    .iter()
                    .filter(|e| e.serving && e.terminating)
                    .cloned()
                    .collect();
                cluster_complete = false;
            }
            out.has_any = !out.cluster.is_empty();
        }
        if !self.uses_local_endpoints() {
            out.all_reachable = out.cluster.clone();
            return out;
        }
        let mut local_ready = false;
        let mut local_serving_terminating = false;
        for e in &self.endpoints {
            if e.ready {
                out.has_any = true;
                local_ready |= e.local;
            } else if e.serving && e.terminating {
                out.has_any = true;
                local_serving_terminating |= e.local;
            }
        }
        let mut local_uses_terminating = false;
        if local_ready {
            out.local = self
                .endpoints
                .iter()
                .filter(|e| e.local && e.ready)
                .cloned()
                .collect();
        } else if local_serving_terminating {
            local_uses_terminating = true;
            out.local = self
                .endpoints
                .iter()
                .filter(|e| e.local && e.serving && e.terminating)
                .cloned()
                .collect();
        }
        if !self.uses_cluster_endpoints() {
            out.all_reachable = out.local.clone();
            return out;
        }
        if cluster_complete && !local_uses_terminating {
            // Every ready endpoint is in `cluster`, so it holds every local one too.
            out.all_reachable = out.cluster.clone();
            return out;
        }
        let mut all: BTreeMap<(IpAddr, u16), Endpoint> = BTreeMap::new();
        for e in out.cluster.iter().chain(out.local.iter()) {
            all.entry((e.ip, e.port)).or_insert_with(|| e.clone());
        }
        out.all_reachable = all.into_values().collect();
        out
    }
}

/// A Service as the proxy programs it for one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxiedService {
    /// The Service.
    pub key: ServiceKey,
    /// Its ports (in `spec.ports` order).
    pub ports: Vec<ServicePort>,
    /// `spec.healthCheckNodePort` when the Service needs a health check
    /// (`type: LoadBalancer` with `externalTrafficPolicy: Local`).
    pub health_check_node_port: Option<u16>,
}

impl ProxiedService {
    /// The number of local endpoints the health check reports: the largest count of
    /// "Local" policy endpoints over the ports.
    pub fn local_endpoints(&self) -> usize {
        self.ports
            .iter()
            .map(|p| {
                let mut local: Vec<&Endpoint> =
                    p.endpoints.iter().filter(|e| e.local && e.ready).collect();
                if local.is_empty() {
                    local = p
                        .endpoints
                        .iter()
                        .filter(|e| e.local && e.serving && e.terminating)
                        .collect();
                }
                local.len()
            })
            .max()
            .unwrap_or(0)
    }
}

/// Why a Service makes no valid rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// The namespace or name is not a DNS label.
    #[error("invalid Service name {0:?}")]
    InvalidName(String),
    /// The ClusterIP does not parse.
    #[error("invalid clusterIP {0:?}")]
    InvalidClusterIp(String),
    /// A port name is not an IANA service name.
    #[error("invalid port name {0:?}")]
    InvalidPortName(String),
    /// A protocol is not TCP, UDP or SCTP.
    #[error("port {port}: unsupported protocol {protocol:?}")]
    InvalidProtocol {
        /// The port's name or number.
        port: String,
        /// The protocol given.
        protocol: String,
    },
    /// `port` is not in 1..=65535.
    #[error("invalid port {0}")]
    InvalidPort(i32),
    /// `nodePort` is not in 0..=65535.
    #[error("invalid nodePort {0}")]
    InvalidNodePort(i32),
    /// `healthCheckNodePort` is not in 0..=65535.
    #[error("invalid healthCheckNodePort {0}")]
    InvalidHealthCheckNodePort(i32),
    /// Two ports have the same name and protocol.
    #[error("duplicate port {0:?}")]
    DuplicatePort(String),
    /// An external IP does not parse.
    #[error("invalid externalIP {0:?}")]
    InvalidExternalIp(String),
    /// A load-balancer ingress IP does not parse.
    #[error("invalid status.loadBalancer.ingress IP {0:?}")]
    InvalidIngressIp(String),
    /// A source range does not parse.
    #[error("invalid loadBalancerSourceRanges entry {0:?}")]
    InvalidSourceRange(String),
    /// `sessionAffinity` is not `None` or `ClientIP`, or its timeout is out of range.
    #[error("invalid session affinity: {0}")]
    InvalidSessionAffinity(String),
}

/// Whether `s` is a DNS-1123 label (what Namespace and Service names are).
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` may name a service port (an IANA service name, or empty).
pub fn is_port_name(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 15
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
}

/// The ClusterIP of `family` (upstream's `GetClusterIPByFamily`): `Ok(None)` when the
/// Service is headless or has none of this family.
fn cluster_ip_of(svc: &Service, family: IpFamily) -> Result<Option<IpAddr>, ModelError> {
    let Some(spec) = svc.spec.as_ref() else {
        return Ok(None);
    };
    let mut ips: Vec<&str> = spec
        .cluster_ips
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    if ips.is_empty() {
        if let Some(ip) = spec.cluster_ip.as_deref() {
            ips.push(ip);
        }
    }
    let Some(first) = ips.first() else {
        return Ok(None);
    };
    if first.is_empty() || *first == "None" {
        return Ok(None);
    }
    for ip in ips {
        let parsed: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| ModelError::InvalidClusterIp(ip.to_string()))?;
        if IpFamily::of(&parsed) == family {
            return Ok(Some(parsed));
        }
    }
    Ok(None)
}

/// The IP families a Service's ClusterIPs use (ignoring ones that do not parse).
pub fn cluster_ip_families(svc: &Service) -> Vec<IpFamily> {
    let mut out = Vec::new();
    for f in [IpFamily::V4, IpFamily::V6] {
        if let Ok(Some(_)) = cluster_ip_of(svc, f) {
            out.push(f);
        }
    }
    out
}

/// Builds the proxied form of `svc` for `family` from the EndpointSlices that belong to it.
///
/// `Ok(None)`: nothing to proxy for this family (no spec, `ExternalName`, headless, or no
/// ClusterIP of this family). `Err`: the Service makes no valid rule; the caller skips it
/// (with an Event) and keeps proxying the others. Endpoints whose address does not parse
/// are left out (they cannot make a rule; the Service's other endpoints still can).
pub fn proxied_service(
    svc: &Service,
    slices: &[Arc<EndpointSlice>],
    node_name: &str,
    family: IpFamily,
) -> Result<Option<ProxiedService>, ModelError> {
    let key = ServiceKey::of(svc);
    let Some(spec) = svc.spec.as_ref() else {
        return Ok(None);
    };
    let svc_type = spec.type_.as_deref().unwrap_or("ClusterIP");
    if svc_type == "ExternalName" {
        return Ok(None);
    }
    if !is_dns_label(&key.namespace) {
        return Err(ModelError::InvalidName(key.namespace));
    }
    if !is_dns_label(&key.name) {
        return Err(ModelError::InvalidName(key.name));
    }
    let Some(cluster_ip) = cluster_ip_of(svc, family)? else {
        return Ok(None);
    };

    let mut external_ips = Vec::new();
    for ip in spec.external_ips.iter().flatten() {
        let parsed: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| ModelError::InvalidExternalIp(ip.clone()))?;
        if IpFamily::of(&parsed) == family && !external_ips.contains(&parsed) {
            external_ips.push(parsed);
        }
    }

    let mut load_balancer_vips = Vec::new();
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    for ing in ingress.into_iter().flatten() {
        let Some(ip) = ing.ip.as_deref().filter(|ip| !ip.is_empty()) else {
            continue;
        };
        if ing.ip_mode.as_deref().is_some_and(|m| m != "VIP") {
            continue;
        }
        let parsed: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| ModelError::InvalidIngressIp(ip.to_string()))?;
        if IpFamily::of(&parsed) == family && !load_balancer_vips.contains(&parsed) {
            load_balancer_vips.push(parsed);
        }
    }

    let mut load_balancer_source_ranges = Vec::new();
    for r in spec.load_balancer_source_ranges.iter().flatten() {
        let cidr = Cidr::parse(r).ok_or_else(|| ModelError::InvalidSourceRange(r.clone()))?;
        if cidr.family() == family {
            load_balancer_source_ranges.push(cidr);
        }
    }
    // A zero-length prefix allows everything: the same as no ranges at all.
    if load_balancer_source_ranges.iter().any(|c| c.prefix == 0) {
        load_balancer_source_ranges.clear();
    }

    let affinity_timeout = match spec.session_affinity.as_deref() {
        None | Some("None") | Some("") => None,
        Some("ClientIP") => {
            let t = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_SECONDS as i32);
            if t <= 0 || t as u32 > MAX_AFFINITY_TIMEOUT_SECONDS {
                return Err(ModelError::InvalidSessionAffinity(format!(
                    "timeoutSeconds {t} is not in 1..={MAX_AFFINITY_TIMEOUT_SECONDS}"
                )));
            }
            Some(t as u32)
        }
        Some(other) => {
            return Err(ModelError::InvalidSessionAffinity(format!(
                "unknown sessionAffinity {other:?}"
            )))
        }
    };

    let external_policy_local = matches!(svc_type, "NodePort" | "LoadBalancer")
        && spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_policy_local = spec.internal_traffic_policy.as_deref() == Some("Local");

    let health_check_node_port =
        if svc_type == "LoadBalancer" && spec.external_traffic_policy.as_deref() == Some("Local") {
            match spec.health_check_node_port {
                None | Some(0) => None,
                Some(p) if (1..=65535).contains(&p) => Some(p as u16),
                Some(p) => return Err(ModelError::InvalidHealthCheckNodePort(p)),
            }
        } else {
            None
        };

    let endpoints_by_port = endpoints_by_port(slices, node_name, family);

    let mut ports = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for p in spec.ports.iter().flatten() {
        let port_name = p.name.clone().unwrap_or_default();
        if !is_port_name(&port_name) {
            return Err(ModelError::InvalidPortName(port_name));
        }
        let protocol =
            Protocol::parse(p.protocol.as_deref()).ok_or_else(|| ModelError::InvalidProtocol {
                port: if port_name.is_empty() {
                    p.port.to_string()
                } else {
                    port_name.clone()
                },
                protocol: p.protocol.clone().unwrap_or_default(),
            })?;
        if !(1..=65535).contains(&p.port) {
            return Err(ModelError::InvalidPort(p.port));
        }
        let node_port = match p.node_port {
            None => 0,
            Some(n) if (0..=65535).contains(&n) => n as u16,
            Some(n) => return Err(ModelError::InvalidNodePort(n)),
        };
        if !seen.insert((port_name.clone(), protocol)) {
            return Err(ModelError::DuplicatePort(port_name));
        }
        let endpoints = endpoints_by_port
            .get(&(port_name.clone(), protocol))
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        ports.push(ServicePort {
            service: key.clone(),
            port_name,
            protocol,
            cluster_ip,
            port: p.port as u16,
            node_port,
            external_ips: external_ips.clone(),
            load_balancer_vips: load_balancer_vips.clone(),
            load_balancer_source_ranges: load_balancer_source_ranges.clone(),
            affinity_timeout,
            external_policy_local,
            internal_policy_local,
            endpoints,
        });
    }
    Ok(Some(ProxiedService {
        key,
        ports,
        health_check_node_port,
    }))
}

type PortEndpoints = BTreeMap<(String, Protocol), BTreeMap<(IpAddr, u16), Endpoint>>;

/// The endpoints of every (port name, protocol) in the slices of one family, deduplicated
/// by address and port (a local copy wins, as upstream).
fn endpoints_by_port(
    slices: &[Arc<EndpointSlice>],
    node_name: &str,
    family: IpFamily,
) -> PortEndpoints {
    let mut out: PortEndpoints = BTreeMap::new();
    for slice in slices {
        if slice.address_type != family.address_type() {
            continue;
        }
        for sp in slice.ports.iter().flatten() {
            let Some(port) = sp.port.filter(|p| (1..=65535).contains(p)) else {
                continue;
            };
            let Some(protocol) = Protocol::parse(sp.protocol.as_deref()) else {
                continue;
            };
            let name = sp.name.clone().unwrap_or_default();
            let entry = out.entry((name, protocol)).or_default();
            for ep in &slice.endpoints {
                let Some(addr) = ep.addresses.first() else {
                    continue;
                };
                let Ok(ip) = addr.parse::<IpAddr>() else {
                    tracing::debug!(slice = ?slice.metadata.name, address = %addr, "skipping endpoint with an invalid address");
                    continue;
                };
                if IpFamily::of(&ip) != family {
                    continue;
                }
                let cond = ep.conditions.as_ref();
                let ready = cond.and_then(|c| c.ready).unwrap_or(true);
                let serving = cond.and_then(|c| c.serving).unwrap_or(true);
                let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
                let local = ep
                    .node_name
                    .as_deref()
                    .is_some_and(|n| !n.is_empty() && n == node_name);
                let e = Endpoint {
                    ip,
                    port: port as u16,
                    local,
                    ready,
                    serving,
                    terminating,
                };
                match entry.get(&(ip, e.port)) {
                    Some(existing) if existing.local || !local => {}
                    _ => {
                        entry.insert((ip, e.port), e);
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, ServicePort as K8sServicePort,
        ServiceSpec, ServiceStatus, SessionAffinityConfig,
    };
    use k8s_openapi::api::discovery::v1::{
        Endpoint as K8sEndpoint, EndpointConditions, EndpointPort,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn svc(ports: Vec<(&str, &str, i32)>) -> Service {
        Service {
            metadata: ObjectMeta {
                namespace: Some("ns".into()),
                name: Some("web".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some("10.43.0.10".into()),
                cluster_ips: Some(vec!["10.43.0.10".into()]),
                ports: Some(
                    ports
                        .into_iter()
                        .map(|(n, proto, p)| K8sServicePort {
                            name: (!n.is_empty()).then(|| n.to_string()),
                            protocol: Some(proto.into()),
                            port: p,
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn ep(
        ip: &str,
        node: &str,
        ready: Option<bool>,
        serving: Option<bool>,
        terminating: Option<bool>,
    ) -> K8sEndpoint {
        K8sEndpoint {
            addresses: vec![ip.into()],
            node_name: Some(node.into()),
            conditions: Some(EndpointConditions {
                ready,
                serving,
                terminating,
            }),
            ..Default::default()
        }
    }

    fn slice(name: &str, eps: Vec<K8sEndpoint>, port: (&str, &str, i32)) -> Arc<EndpointSlice> {
        Arc::new(EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some("ns".into()),
                name: Some(name.into()),
                labels: Some([(SERVICE_NAME_LABEL.to_string(), "web".to_string())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: eps,
            ports: Some(vec![EndpointPort {
                name: (!port.0.is_empty()).then(|| port.0.to_string()),
                protocol: Some(port.1.into()),
                port: Some(port.2),
                ..Default::default()
            }]),
        })
    }

    #[test]
    fn cluster_ip_service_gets_ready_endpoints_matched_by_port_name() {
        let s = svc(vec![("http", "TCP", 80), ("dns", "UDP", 53)]);
        let slices = vec![
            slice(
                "a",
                vec![
                    ep("10.42.0.5", "n1", Some(true), None, None),
                    ep("10.42.1.5", "n2", None, None, None),
                ],
                ("http", "TCP", 8080),
            ),
            slice(
                "b",
                vec![ep("10.42.0.6", "n1", Some(true), None, None)],
                ("dns", "UDP", 5353),
            ),
        ];
        let p = proxied_service(&s, &slices, "n1", IpFamily::V4)
            .unwrap()
            .unwrap();
        assert_eq!(p.ports.len(), 2);
        let http = &p.ports[0];
        assert_eq!(http.cluster_ip, "10.43.0.10".parse::<IpAddr>().unwrap());
        assert_eq!((http.protocol, http.port), (Protocol::Tcp, 80));
        assert_eq!(http.endpoints.len(), 2);
        assert!(http.endpoints.iter().all(|e| e.port == 8080 && e.ready));
        assert!(
            http.endpoints
                .iter()
                .find(|e| e.ip.to_string() == "10.42.0.5")
                .unwrap()
                .local
        );
        assert!(
            !http
                .endpoints
                .iter()
                .find(|e| e.ip.to_string() == "10.42.1.5")
                .unwrap()
                .local
        );
        let dns = &p.ports[1];
        assert_eq!(
            (dns.protocol, dns.endpoints.len(), dns.endpoints[0].port),
            (Protocol::Udp, 1, 5353)
        );
    }

    #[test]
    fn headless_external_name_and_other_family_are_not_proxied() {
        let mut s = svc(vec![("", "TCP", 80)]);
        s.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        s.spec.as_mut().unwrap().cluster_ips = Some(vec!["None".into()]);
        assert_eq!(proxied_service(&s, &[], "n1", IpFamily::V4), Ok(None));
        let mut s = svc(vec![("", "TCP", 80)]);
        s.spec.as_mut().unwrap().type_ = Some("ExternalName".into());
        assert_eq!(proxied_service(&s, &[], "n1", IpFamily::V4), Ok(None));
        let s = svc(vec![("", "TCP", 80)]);
        assert_eq!(proxied_service(&s, &[], "n1", IpFamily::V6), Ok(None));
        assert_eq!(cluster_ip_families(&s), vec![IpFamily::V4]);
    }

    #[test]
    fn bad_input_is_an_error_naming_the_field() {
        let mut s = svc(vec![("", "TCP", 80)]);
        s.spec.as_mut().unwrap().cluster_ips = Some(vec!["10.43.0.300".into()]);
        assert_eq!(
            proxied_service(&s, &[], "n", IpFamily::V4),
            Err(ModelError::InvalidClusterIp("10.43.0.300".into()))
        );
        let s = svc(vec![("", "TCP", 70000)]);
        assert_eq!(
            proxied_service(&s, &[], "n", IpFamily::V4),
            Err(ModelError::InvalidPort(70000))
        );
        let s = svc(vec![("", "ICMP", 80)]);
        assert!(matches!(
            proxied_service(&s, &[], "n", IpFamily::V4),
            Err(ModelError::InvalidProtocol { .. })
        ));
        let s = svc(vec![("a b", "TCP", 80)]);
        assert_eq!(
            proxied_service(&s, &[], "n", IpFamily::V4),
            Err(ModelError::InvalidPortName("a b".into()))
        );
        let s = svc(vec![("x", "TCP", 80), ("x", "TCP", 81)]);
        assert_eq!(
            proxied_service(&s, &[], "n", IpFamily::V4),
            Err(ModelError::DuplicatePort("x".into()))
        );
        let mut s = svc(vec![("", "TCP", 80)]);
        s.spec.as_mut().unwrap().external_ips = Some(vec!["1.2.3".into()]);
        assert_eq!(
            proxied_service(&s, &[], "n", IpFamily::V4),
            Err(ModelError::InvalidExternalIp("1.2.3".into()))
        );
        let mut s = svc(vec![("", "TCP", 80)]);
        s.spec.as_mut().unwrap().load_balancer_source_ranges = Some(vec!["10.0.0.0/40".into()]);
        assert!(matches!(
            proxied_service(&s, &[], "n", IpFamily::V4),
            Err(ModelError::InvalidSourceRange(_))
        ));
        let mut s = svc(vec![("", "TCP", 80)]);
        s.metadata.name = Some("Bad;Name".into());
        assert!(matches!(
            proxied_service(&s, &[], "n", IpFamily::V4),
            Err(ModelError::InvalidName(_))
        ));
        let mut s = svc(vec![("", "TCP", 80)]);
        s.spec.as_mut().unwrap().session_affinity = Some("ClientIP".into());
        s.spec.as_mut().unwrap().session_affinity_config = Some(SessionAffinityConfig {
            client_ip: Some(ClientIPConfig {
                timeout_seconds: Some(0),
            }),
        });
        assert!(matches!(
            proxied_service(&s, &[], "n", IpFamily::V4),
            Err(ModelError::InvalidSessionAffinity(_))
        ));
    }

    #[test]
    fn invalid_endpoint_addresses_are_left_out() {
        let s = svc(vec![("", "TCP", 80)]);
        let slices = vec![slice(
            "a",
            vec![
                ep("10.42.0.300", "n", None, None, None),
                ep("10.42.0.3", "n", None, None, None),
            ],
            ("", "TCP", 80),
        )];
        let p = proxied_service(&s, &slices, "n", IpFamily::V4)
            .unwrap()
            .unwrap();
        assert_eq!(p.ports[0].endpoints.len(), 1);
    }

    #[test]
    fn load_balancer_fields() {
        let mut s = svc(vec![("", "TCP", 80)]);
        let spec = s.spec.as_mut().unwrap();
        spec.type_ = Some("LoadBalancer".into());
        spec.external_traffic_policy = Some("Local".into());
        spec.health_check_node_port = Some(32000);
        spec.load_balancer_source_ranges = Some(vec![" 192.168.1.0/24 ".into(), "fd00::/8".into()]);
        s.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![
                    LoadBalancerIngress {
                        ip: Some("192.0.2.10".into()),
                        ..Default::default()
                    },
                    LoadBalancerIngress {
                        ip: Some("192.0.2.11".into()),
                        ip_mode: Some("Proxy".into()),
                        ..Default::default()
                    },
                    LoadBalancerIngress {
                        hostname: Some("lb.example".into()),
                        ..Default::default()
                    },
                ]),
            }),
            ..Default::default()
        });
        let p = proxied_service(&s, &[], "n", IpFamily::V4)
            .unwrap()
            .unwrap();
        assert_eq!(p.health_check_node_port, Some(32000));
        let port = &p.ports[0];
        assert!(port.external_policy_local);
        assert_eq!(
            port.load_balancer_vips,
            vec!["192.0.2.10".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            port.load_balancer_source_ranges,
            vec![Cidr::parse("192.168.1.0/24").unwrap()]
        );
        // 0.0.0.0/0 means "everyone": same as no ranges.
        s.spec.as_mut().unwrap().load_balancer_source_ranges =
            Some(vec!["10.0.0.0/8".into(), "0.0.0.0/0".into()]);
        let p = proxied_service(&s, &[], "n", IpFamily::V4)
            .unwrap()
            .unwrap();
        assert!(p.ports[0].load_balancer_source_ranges.is_empty());
    }

    fn port_with(
        eps: Vec<Endpoint>,
        itp_local: bool,
        etp_local: bool,
        node_port: u16,
    ) -> ServicePort {
        ServicePort {
            service: ServiceKey::new("ns", "web"),
            port_name: String::new(),
            protocol: Protocol::Tcp,
            cluster_ip: "10.43.0.1".parse().unwrap(),
            port: 80,
            node_port,
            external_ips: vec![],
            load_balancer_vips: vec![],
            load_balancer_source_ranges: vec![],
            affinity_timeout: None,
            external_policy_local: etp_local,
            internal_policy_local: itp_local,
            endpoints: eps,
        }
    }

    fn e(last: u8, local: bool, ready: bool, serving: bool, terminating: bool) -> Endpoint {
        Endpoint {
            ip: IpAddr::V4([10, 42, 0, last].into()),
            port: 80,
            local,
            ready,
            serving,
            terminating,
        }
    }

    #[test]
    fn categorize_prefers_ready_then_serving_terminating() {
        let p = port_with(
            vec![
                e(1, false, true, true, false),
                e(2, false, false, true, true),
                e(3, false, false, false, true),
            ],
            false,
            false,
            0,
        );
        let c = p.categorize();
        assert_eq!(c.cluster, vec![e(1, false, true, true, false)]);
        assert!(c.has_any);
        assert!(c.local.is_empty());
        let p = port_with(
            vec![
                e(2, false, false, true, true),
                e(3, false, false, false, true),
            ],
            false,
            false,
            0,
        );
        let c = p.categorize();
        assert_eq!(c.cluster, vec![e(2, false, false, true, true)]);
        assert!(c.has_any);
        let p = port_with(
            vec![
                e(3, false, false, false, true),
                e(4, false, false, false, false),
            ],
            false,
            false,
            0,
        );
        let c = p.categorize();
        assert!(c.cluster.is_empty() && !c.has_any && c.all_reachable.is_empty());
    }

    #[test]
    fn categorize_local_policies() {
        // internalTrafficPolicy: Local, no node port: only local endpoints are reachable.
        let p = port_with(
            vec![
                e(1, true, true, true, false),
                e(2, false, true, true, false),
            ],
            true,
            false,
            0,
        );
        let c = p.categorize();
        assert!(c.cluster.is_empty());
        assert_eq!(c.local, vec![e(1, true, true, true, false)]);
        assert_eq!(c.all_reachable, c.local);
        assert!(c.has_any);
        // externalTrafficPolicy: Local with a NodePort: cluster (short-circuit) and local.
        let p = port_with(
            vec![
                e(1, true, false, true, true),
                e(2, false, true, true, false),
            ],
            false,
            true,
            30080,
        );
        let c = p.categorize();
        assert_eq!(c.cluster, vec![e(2, false, true, true, false)]);
        assert_eq!(c.local, vec![e(1, true, false, true, true)]);
        assert_eq!(c.all_reachable.len(), 2);
        // No local endpoint at all but remote ones: has_any, local empty.
        let p = port_with(vec![e(2, false, true, true, false)], false, true, 30080);
        let c = p.categorize();
        assert!(c.has_any && c.local.is_empty());
    }

    #[test]
    fn duplicate_endpoints_prefer_local_copy_and_conditions_default() {
        let s = svc(vec![("", "TCP", 80)]);
        let slices = vec![
            slice(
                "a",
                vec![ep("10.42.0.5", "other", None, None, None)],
                ("", "TCP", 80),
            ),
            slice(
                "b",
                vec![ep("10.42.0.5", "me", None, None, None)],
                ("", "TCP", 80),
            ),
        ];
        let p = proxied_service(&s, &slices, "me", IpFamily::V4)
            .unwrap()
            .unwrap();
        assert_eq!(
            p.ports[0].endpoints,
            vec![Endpoint {
                ip: "10.42.0.5".parse().unwrap(),
                port: 80,
                local: true,
                ready: true,
                serving: true,
                terminating: false
            }]
        );
        assert_eq!(p.local_endpoints(), 1);
    }

    #[test]
    fn cidr_parse_and_contains() {
        let c = Cidr::parse("10.42.7.9/16").unwrap();
        assert_eq!(c.to_string(), "10.42.0.0/16");
        assert!(c.contains(&"10.42.200.1".parse().unwrap()));
        assert!(!c.contains(&"10.43.0.1".parse().unwrap()));
        assert!(!c.contains(&"::1".parse().unwrap()));
        assert_eq!(Cidr::parse("fd00::1/8").unwrap().to_string(), "fd00::/8");
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("banana").is_none());
        assert_eq!(Cidr::parse("1.2.3.4").unwrap().prefix, 32);
    }
}
