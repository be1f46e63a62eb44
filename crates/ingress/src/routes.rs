//! The routing table: which Ingresses this controller serves and where each request goes.
//! Pure (no I/O): [`build`] turns the watched objects into an immutable [`RoutingTable`]
//! (plus the certificates of [`crate::tls::TlsTable`] and the warnings of the Ingresses
//! that could not be served whole); [`RoutingTable::lookup`] answers one request.
//!
//! Rules (the Ingress specification, with Traefik's choices where it leaves room):
//! - class: the `kubernetes.io/ingress.class` annotation when present, else
//!   `spec.ingressClassName`, must be the controller's class name, `traefik`, or an
//!   IngressClass whose `spec.controller` is [`CONTROLLER`]; an Ingress without either is
//!   served;
//! - hosts: exact (case-insensitive, port ignored) before `*.suffix` wildcards (exactly
//!   one label) before rules without a host; a host whose rules match no path falls
//!   through to the next kind (Traefik's routers are independent), then to the oldest
//!   `defaultBackend`;
//! - paths: `Exact` is string equality; `Prefix` and `ImplementationSpecific` match
//!   element-wise (`/foo` matches `/foo` and `/foo/bar`, not `/foobar`); the longest
//!   path wins, `Exact` before `Prefix` on a tie, then the oldest Ingress;
//! - backends: a Service port by number or name, resolved to the ready endpoints of the
//!   Service's EndpointSlices with the slice port of the same name;
//! - Traefik annotations: `router.entrypoints` (`web`, `websecure`), `router.tls: "true"`
//!   (websecure only), `redirect-entry-point: https` / `ingress.kubernetes.io/ssl-redirect`
//!   (redirect plain HTTP to HTTPS, permanent with `redirect-permanent: "true"` or
//!   `ssl-redirect`).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Secret, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};

use crate::tls::TlsTable;

/// The `spec.controller` of the IngressClasses this controller serves.
pub const CONTROLLER: &str = "rk3s.io/ingress";
/// Traefik's class name, served too (manifests written for k3s name it).
pub const TRAEFIK_CLASS: &str = "traefik";
/// The deprecated class annotation.
pub const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// Traefik: the entrypoints (listeners) a router serves, comma-separated.
pub const ENTRYPOINTS_ANNOTATION: &str = "traefik.ingress.kubernetes.io/router.entrypoints";
/// Traefik: `"true"` serves the router on TLS only.
pub const ROUTER_TLS_ANNOTATION: &str = "traefik.ingress.kubernetes.io/router.tls";
/// Traefik 1: redirect to another entrypoint (`https` / `websecure`).
pub const REDIRECT_ENTRY_POINT_ANNOTATION: &str =
    "traefik.ingress.kubernetes.io/redirect-entry-point";
/// Traefik 1: whether that redirect is permanent.
pub const REDIRECT_PERMANENT_ANNOTATION: &str = "traefik.ingress.kubernetes.io/redirect-permanent";
/// Traefik 1 (and others): `"true"` redirects plain HTTP to HTTPS permanently.
pub const SSL_REDIRECT_ANNOTATION: &str = "ingress.kubernetes.io/ssl-redirect";
/// Traefik: middlewares of a router (not supported: reported as a warning).
pub const MIDDLEWARES_ANNOTATION: &str = "traefik.ingress.kubernetes.io/router.middlewares";
/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One of the two listeners (Traefik's entrypoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Entrypoint {
    /// Plain HTTP (port 80), Traefik's `web`.
    Web,
    /// HTTPS (port 443), Traefik's `websecure`.
    WebSecure,
}

/// Which listeners an Ingress is served on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entrypoints {
    /// Served on plain HTTP.
    pub web: bool,
    /// Served on HTTPS.
    pub websecure: bool,
}

impl Entrypoints {
    /// Both listeners.
    pub const ALL: Entrypoints = Entrypoints {
        web: true,
        websecure: true,
    };

    /// Whether `ep` is one of them.
    pub fn contains(self, ep: Entrypoint) -> bool {
        match ep {
            Entrypoint::Web => self.web,
            Entrypoint::WebSecure => self.websecure,
        }
    }
}

/// A redirect of plain HTTP requests to HTTPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redirect {
    /// 301/308 when true, else 302/307 (GET and HEAD get the first, other methods the
    /// second, as Traefik's redirect middleware).
    pub permanent: bool,
}

/// Namespace and name of an object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Where a matched request goes.
#[derive(Debug)]
pub struct Backend {
    /// `namespace/service:port`, for logs.
    pub service: String,
    /// The ready endpoints (address and target port); empty: 503.
    pub endpoints: Vec<SocketAddr>,
    next: AtomicUsize,
}

impl Backend {
    /// A backend over these endpoints.
    pub fn new(service: impl Into<String>, endpoints: Vec<SocketAddr>) -> Backend {
        Backend {
            service: service.into(),
            endpoints,
            next: AtomicUsize::new(0),
        }
    }

    /// The endpoints in the order to try them: round-robin start, then the others.
    pub fn attempt_order(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        let n = self.endpoints.len();
        let start = if n == 0 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % n
        };
        (0..n).map(move |i| self.endpoints[(start + i) % n])
    }
}

/// What a rule (or a default backend) of an Ingress does.
#[derive(Debug)]
pub struct Target {
    /// The Ingress it comes from.
    pub ingress: ObjectKey,
    /// The listeners it is served on.
    pub entrypoints: Entrypoints,
    /// Plain HTTP is redirected to HTTPS.
    pub redirect: Option<Redirect>,
    /// The backend.
    pub backend: Arc<Backend>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathKind {
    Exact,
    Prefix,
}

#[derive(Debug)]
struct Route {
    kind: PathKind,
    /// Exact: the path; Prefix: its elements.
    path: String,
    elements: Vec<String>,
    /// Sort key: the path's length without a trailing slash.
    len: usize,
    age: usize,
    target: Arc<Target>,
}

impl Route {
    fn matches(&self, path: &str) -> bool {
        match self.kind {
            PathKind::Exact => path == self.path,
            PathKind::Prefix => {
                let mut req = path.split('/').filter(|e| !e.is_empty());
                self.elements
                    .iter()
                    .all(|e| req.next().is_some_and(|r| r == e))
            }
        }
    }
}

/// The immutable routing state: built by [`build`], swapped whole, read by every request.
#[derive(Debug, Default)]
pub struct RoutingTable {
    exact: HashMap<String, Vec<Route>>,
    wildcard: HashMap<String, Vec<Route>>,
    any_host: Vec<Route>,
    defaults: Vec<Arc<Target>>,
}

impl RoutingTable {
    /// The target of a request for `host` (a Host header or `:authority`; port and case
    /// ignored) and `path` on listener `ep`, or `None` (404).
    pub fn lookup(&self, ep: Entrypoint, host: &str, path: &str) -> Option<&Arc<Target>> {
        let host = normalize_host(host);
        let path = if path.is_empty() { "/" } else { path };
        fn pick<'a>(routes: &'a [Route], ep: Entrypoint, path: &str) -> Option<&'a Arc<Target>> {
            routes
                .iter()
                .find(|r| r.target.entrypoints.contains(ep) && r.matches(path))
                .map(|r| &r.target)
        }
        if let Some(t) = self
            .exact
            .get(host.as_str())
            .and_then(|r| pick(r, ep, path))
        {
            return Some(t);
        }
        if let Some((_, rest)) = host.split_once('.') {
            if let Some(t) = self.wildcard.get(rest).and_then(|r| pick(r, ep, path)) {
                return Some(t);
            }
        }
        if let Some(t) = pick(&self.any_host, ep, path) {
            return Some(t);
        }
        self.defaults.iter().find(|t| t.entrypoints.contains(ep))
    }

    /// Whether nothing is routed.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty()
            && self.wildcard.is_empty()
            && self.any_host.is_empty()
            && self.defaults.is_empty()
    }
}

/// A host as the table keys it: lower case, no port, no trailing dot.
pub fn normalize_host(host: &str) -> String {
    let h = host.trim();
    let h = if let Some(rest) = h.strip_prefix('[') {
        // [v6]:port
        rest.split(']').next().unwrap_or(rest)
    } else if h.matches(':').count() == 1 {
        h.split(':').next().unwrap_or(h)
    } else {
        h
    };
    h.trim_end_matches('.').to_ascii_lowercase()
}

/// Something wrong with one Ingress: it was served without the bad part (or not at all).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Warning {
    /// The Ingress.
    pub ingress: ObjectKey,
    /// A short PascalCase reason, for Events.
    pub reason: &'static str,
    /// What is wrong.
    pub message: String,
}

/// The objects the table is built from (reflector snapshots).
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// Every Ingress.
    pub ingresses: Vec<Arc<Ingress>>,
    /// Every IngressClass.
    pub classes: Vec<Arc<IngressClass>>,
    /// Every Service.
    pub services: Vec<Arc<Service>>,
    /// Every EndpointSlice.
    pub slices: Vec<Arc<EndpointSlice>>,
    /// The `kubernetes.io/tls` Secrets.
    pub secrets: Vec<Arc<Secret>>,
}

/// What [`build`] produces.
#[derive(Debug, Default)]
pub struct Built {
    /// The routing table.
    pub routes: RoutingTable,
    /// The certificates by SNI host.
    pub tls: TlsTable,
    /// The Ingresses served, oldest first.
    pub served: Vec<ObjectKey>,
    /// What could not be served, per Ingress.
    pub warnings: Vec<Warning>,
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectKey {
    ObjectKey {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
    }
}

fn annotation<'a>(ing: &'a Ingress, key: &str) -> Option<&'a str> {
    ing.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(|v| v.trim())
}

/// Whether this controller serves `ing` (see the module doc), given the IngressClasses
/// and the controller's class name.
pub fn is_served(ing: &Ingress, classes: &[Arc<IngressClass>], class_name: &str) -> bool {
    let ours = |name: &str| {
        name == class_name
            || name == TRAEFIK_CLASS
            || classes.iter().any(|c| {
                c.metadata.name.as_deref() == Some(name)
                    && c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(CONTROLLER)
            })
    };
    if let Some(a) = annotation(ing, CLASS_ANNOTATION) {
        return ours(a);
    }
    match ing
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref())
    {
        Some(c) => ours(c),
        None => true,
    }
}

/// The listeners and redirect an Ingress's annotations ask for.
fn ingress_options(ing: &Ingress, warn: &mut dyn FnMut(String)) -> (Entrypoints, Option<Redirect>) {
    let mut eps = Entrypoints::ALL;
    if let Some(list) = annotation(ing, ENTRYPOINTS_ANNOTATION).filter(|v| !v.is_empty()) {
        eps = Entrypoints {
            web: false,
            websecure: false,
        };
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "web" | "http" => eps.web = true,
                "websecure" | "https" => eps.websecure = true,
                other => warn(format!(
                    "unknown entrypoint {other:?} in {ENTRYPOINTS_ANNOTATION} (known: web, websecure)"
                )),
            }
        }
    }
    if annotation(ing, ROUTER_TLS_ANNOTATION).is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        eps.web = false;
        if annotation(ing, ENTRYPOINTS_ANNOTATION).is_none() {
            eps.websecure = true;
        }
    }
    if annotation(ing, MIDDLEWARES_ANNOTATION).is_some_and(|v| !v.is_empty()) {
        warn(format!(
            "{MIDDLEWARES_ANNOTATION} is not supported (Traefik middlewares are not built in); \
             for an HTTPS redirect use {REDIRECT_ENTRY_POINT_ANNOTATION}: https"
        ));
    }
    let mut redirect = None;
    if let Some(to) = annotation(ing, REDIRECT_ENTRY_POINT_ANNOTATION) {
        if matches!(to, "https" | "websecure") {
            let permanent = annotation(ing, REDIRECT_PERMANENT_ANNOTATION)
                .is_some_and(|v| v.eq_ignore_ascii_case("true"));
            redirect = Some(Redirect { permanent });
        } else {
            warn(format!(
                "{REDIRECT_ENTRY_POINT_ANNOTATION}: {to:?} is not supported (only https)"
            ));
        }
    }
    if annotation(ing, SSL_REDIRECT_ANNOTATION).is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        redirect = Some(Redirect { permanent: true });
    }
    (eps, redirect)
}

/// Resolves a backend Service port to its ready endpoints.
struct Resolver<'a> {
    services: HashMap<(&'a str, &'a str), &'a Service>,
    slices: HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
    cache: HashMap<(String, String, String), Arc<Backend>>,
}

impl<'a> Resolver<'a> {
    fn new(src: &'a Sources) -> Self {
        let mut services = HashMap::new();
        for s in &src.services {
            if let (Some(ns), Some(n)) =
                (s.metadata.namespace.as_deref(), s.metadata.name.as_deref())
            {
                services.insert((ns, n), s.as_ref());
            }
        }
        let mut slices: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for s in &src.slices {
            let svc = s
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL));
            if let (Some(ns), Some(svc)) = (s.metadata.namespace.as_deref(), svc) {
                slices
                    .entry((ns, svc.as_str()))
                    .or_default()
                    .push(s.as_ref());
            }
        }
        Resolver {
            services,
            slices,
            cache: HashMap::new(),
        }
    }

    /// The backend of `b` in namespace `ns`; an error says why it has no endpoints
    /// (it is still routed: 503).
    fn resolve(&mut self, ns: &str, b: &IngressBackend) -> (Arc<Backend>, Option<String>) {
        let Some(svc_ref) = b.service.as_ref() else {
            let what = if b.resource.is_some() {
                "a resource backend"
            } else {
                "an empty backend"
            };
            return (
                Arc::new(Backend::new(format!("{ns}/<none>"), Vec::new())),
                Some(format!("{what} is not supported (only Service backends)")),
            );
        };
        let port_label = match svc_ref.port.as_ref() {
            Some(p) => match (p.number, p.name.as_deref()) {
                (Some(n), _) => n.to_string(),
                (None, Some(name)) => name.to_string(),
                (None, None) => String::new(),
            },
            None => String::new(),
        };
        let label = format!("{ns}/{}:{port_label}", svc_ref.name);
        let key = (ns.to_string(), svc_ref.name.clone(), port_label.clone());
        if let Some(b) = self.cache.get(&key) {
            return (b.clone(), None);
        }
        let Some(svc) = self.services.get(&(ns, svc_ref.name.as_str())).copied() else {
            return (
                Arc::new(Backend::new(label, Vec::new())),
                Some(format!("Service {ns}/{} not found", svc_ref.name)),
            );
        };
        if svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            return (
                Arc::new(Backend::new(label, Vec::new())),
                Some(format!(
                    "Service {ns}/{} is of type ExternalName, which is not supported",
                    svc_ref.name
                )),
            );
        }
        let ports: &[ServicePort] = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_deref())
            .unwrap_or(&[]);
        let sp = ports.iter().find(|p| match svc_ref.port.as_ref() {
            Some(bp) => match (bp.number, bp.name.as_deref()) {
                (Some(n), _) => p.port == n,
                (None, Some(name)) => p.name.as_deref() == Some(name),
                (None, None) => ports.len() == 1,
            },
            None => ports.len() == 1,
        });
        let Some(sp) = sp else {
            return (
                Arc::new(Backend::new(label, Vec::new())),
                Some(format!(
                    "Service {ns}/{} has no port {port_label:?}",
                    svc_ref.name
                )),
            );
        };
        if sp.protocol.as_deref().is_some_and(|p| p != "TCP") {
            return (
                Arc::new(Backend::new(label, Vec::new())),
                Some(format!(
                    "port {port_label:?} of Service {ns}/{} is not TCP",
                    svc_ref.name
                )),
            );
        }
        let port_name = sp.name.clone().unwrap_or_default();
        let mut endpoints: Vec<SocketAddr> = Vec::new();
        for slice in self
            .slices
            .get(&(ns, svc_ref.name.as_str()))
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
                continue;
            }
            let Some(port) = slice.ports.iter().flatten().find(|p| {
                p.name.clone().unwrap_or_default() == port_name
                    && p.protocol.as_deref().unwrap_or("TCP") == "TCP"
            }) else {
                continue;
            };
            let Some(port) = port
                .port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0)
            else {
                continue;
            };
            for ep in &slice.endpoints {
                // Ready unset means ready (the EndpointSlice API's rule).
                if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                    continue;
                }
                if let Some(ip) = ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) {
                    let addr = SocketAddr::new(ip, port);
                    if !endpoints.contains(&addr) {
                        endpoints.push(addr);
                    }
                }
            }
        }
        endpoints.sort();
        let backend = Arc::new(Backend::new(label, endpoints));
        self.cache.insert(key, backend.clone());
        (backend, None)
    }
}

/// A validated path of a rule.
fn parse_path(
    path: Option<&str>,
    path_type: &str,
) -> Result<(PathKind, String, Vec<String>, usize), String> {
    let kind = match path_type {
        "Exact" => PathKind::Exact,
        "Prefix" | "ImplementationSpecific" | "" => PathKind::Prefix,
        other => return Err(format!("unknown pathType {other:?}")),
    };
    let path = path.unwrap_or("");
    if path.is_empty() {
        if kind == PathKind::Exact {
            return Err("an Exact path must not be empty".into());
        }
        return Ok((PathKind::Prefix, "/".into(), Vec::new(), 0));
    }
    if !path.starts_with('/') {
        return Err(format!("path {path:?} does not start with '/'"));
    }
    if path.chars().any(|c| c.is_control() || c == ' ') {
        return Err(format!("path {path:?} has invalid characters"));
    }
    let elements = path
        .split('/')
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect();
    let len = path.trim_end_matches('/').len();
    Ok((kind, path.to_string(), elements, len))
}

/// Checks a rule's host: a DNS name, or `*.` and a DNS name.
fn parse_host(host: &str) -> Result<(bool, String), String> {
    let h = host.trim().trim_end_matches('.').to_ascii_lowercase();
    let (wild, name) = match h.strip_prefix("*.") {
        Some(rest) => (true, rest.to_string()),
        None => (false, h.clone()),
    };
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok((wild, name))
    } else {
        Err(format!("invalid host {host:?}"))
    }
}

/// Builds the routing table and TLS table from the objects; `class_name` is the
/// controller's IngressClass name. Never fails: what cannot be served becomes a
/// [`Warning`] of its Ingress.
pub fn build(src: &Sources, class_name: &str) -> Built {
    let mut ingresses: Vec<&Ingress> = src
        .ingresses
        .iter()
        .map(AsRef::as_ref)
        .filter(|i| i.metadata.deletion_timestamp.is_none())
        .filter(|i| is_served(i, &src.classes, class_name))
        .collect();
    // Oldest first: it wins ties (creation time, then namespace/name).
    ingresses.sort_by(|a, b| {
        let ta = a.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let tb = b.metadata.creation_timestamp.as_ref().map(|t| t.0);
        ta.cmp(&tb)
            .then_with(|| key_of(&a.metadata).cmp(&key_of(&b.metadata)))
    });
    let mut resolver = Resolver::new(src);
    let mut built = Built::default();
    let mut exact: HashMap<String, Vec<Route>> = HashMap::new();
    let mut wildcard: HashMap<String, Vec<Route>> = HashMap::new();
    let mut any_host: Vec<Route> = Vec::new();
    let mut tls_sources: Vec<(ObjectKey, &k8s_openapi::api::networking::v1::IngressTLS)> =
        Vec::new();

    for (age, ing) in ingresses.iter().enumerate() {
        let key = key_of(&ing.metadata);
        let mut warnings: Vec<(&'static str, String)> = Vec::new();
        let (entrypoints, redirect) =
            ingress_options(ing, &mut |m| warnings.push(("InvalidAnnotation", m)));
        let Some(spec) = ing.spec.as_ref() else {
            built.served.push(key);
            continue;
        };
        let mut make_target = |b: &IngressBackend, warnings: &mut Vec<(&'static str, String)>| {
            let (backend, err) = resolver.resolve(&key.namespace, b);
            if let Some(e) = err {
                warnings.push(("InvalidBackend", e));
            }
            Arc::new(Target {
                ingress: key.clone(),
                entrypoints,
                redirect,
                backend,
            })
        };
        if let Some(db) = spec.default_backend.as_ref() {
            let t = make_target(db, &mut warnings);
            built.routes.defaults.push(t);
        }
        for rule in spec.rules.iter().flatten() {
            let host = match rule.host.as_deref().filter(|h| !h.is_empty()) {
                None => None,
                Some(h) => match parse_host(h) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        warnings.push(("InvalidHost", e));
                        continue;
                    }
                },
            };
            for p in rule.http.iter().flat_map(|h| h.paths.iter()) {
                let (kind, path, elements, len) = match parse_path(p.path.as_deref(), &p.path_type)
                {
                    Ok(v) => v,
                    Err(e) => {
                        warnings.push(("InvalidPath", e));
                        continue;
                    }
                };
                let target = make_target(&p.backend, &mut warnings);
                let route = Route {
                    kind,
                    path,
                    elements,
                    len,
                    age,
                    target,
                };
                match &host {
                    None => any_host.push(route),
                    Some((false, h)) => exact.entry(h.clone()).or_default().push(route),
                    Some((true, h)) => wildcard.entry(h.clone()).or_default().push(route),
                }
            }
        }
        for t in spec.tls.iter().flatten() {
            tls_sources.push((key.clone(), t));
        }
        warnings.sort();
        warnings.dedup();
        for (reason, message) in warnings {
            built.warnings.push(Warning {
                ingress: key.clone(),
                reason,
                message,
            });
        }
        built.served.push(key);
    }

    let order = |a: &Route, b: &Route| {
        b.len
            .cmp(&a.len)
            .then_with(|| (a.kind == PathKind::Prefix).cmp(&(b.kind == PathKind::Prefix)))
            .then_with(|| a.age.cmp(&b.age))
    };
    for routes in exact.values_mut().chain(wildcard.values_mut()) {
        routes.sort_by(order);
    }
    any_host.sort_by(order);
    built.routes.exact = exact;
    built.routes.wildcard = wildcard;
    built.routes.any_host = any_host;

    // Certificates: the oldest Ingress naming a host wins it.
    let secrets: BTreeMap<(&str, &str), &Secret> = src
        .secrets
        .iter()
        .filter_map(|s| {
            Some((
                (
                    s.metadata.namespace.as_deref()?,
                    s.metadata.name.as_deref()?,
                ),
                s.as_ref(),
            ))
        })
        .collect();
    let mut tls = TlsTable::default();
    for (key, t) in tls_sources {
        let Some(name) = t.secret_name.as_deref().filter(|n| !n.is_empty()) else {
            continue;
        };
        let Some(secret) = secrets.get(&(key.namespace.as_str(), name)) else {
            built.warnings.push(Warning {
                ingress: key.clone(),
                reason: "InvalidTLS",
                message: format!(
                    "TLS Secret {}/{name} not found (or not of type kubernetes.io/tls)",
                    key.namespace
                ),
            });
            continue;
        };
        if let Err(e) = tls.add_secret(secret, t.hosts.as_deref().unwrap_or(&[])) {
            built.warnings.push(Warning {
                ingress: key.clone(),
                reason: "InvalidTLS",
                message: format!("TLS Secret {}/{name}: {e}", key.namespace),
            });
        }
    }
    built.tls = tls;
    built
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ServiceSpec;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use k8s_openapi::api::networking::v1::{
        HTTPIngressPath, HTTPIngressRuleValue, IngressClassSpec, IngressRule,
        IngressServiceBackend, IngressSpec, ServiceBackendPort,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    pub fn svc(ns: &str, name: &str, ports: &[(Option<&str>, i32)]) -> Arc<Service> {
        Arc::new(Service {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p)| ServicePort {
                            name: n.map(Into::into),
                            port: *p,
                            target_port: Some(IntOrString::Int(*p)),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// A slice of `svc` with port (name, port) and endpoints (ip, ready).
    pub fn slice(
        ns: &str,
        svc: &str,
        port: (Option<&str>, i32),
        eps: &[(&str, Option<bool>)],
    ) -> Arc<EndpointSlice> {
        Arc::new(EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(format!("{svc}-{}", port.1)),
                labels: Some([(SERVICE_NAME_LABEL.to_string(), svc.to_string())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: eps
                .iter()
                .map(|(ip, ready)| Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort {
                name: port.0.map(Into::into),
                port: Some(port.1),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
        })
    }

    pub fn backend(svc: &str, port: Result<i32, &str>) -> IngressBackend {
        IngressBackend {
            service: Some(IngressServiceBackend {
                name: svc.into(),
                port: Some(match port {
                    Ok(n) => ServiceBackendPort {
                        number: Some(n),
                        name: None,
                    },
                    Err(n) => ServiceBackendPort {
                        number: None,
                        name: Some(n.into()),
                    },
                }),
            }),
            resource: None,
        }
    }

    /// Rules of a test Ingress: (host, [(path, pathType, backend)]).
    pub type Rules<'a> = Vec<(Option<&'a str>, Vec<(&'a str, &'a str, IngressBackend)>)>;

    /// An Ingress with rules.
    pub fn ingress(ns: &str, name: &str, rules: Rules<'_>) -> Ingress {
        Ingress {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(IngressSpec {
                rules: Some(
                    rules
                        .into_iter()
                        .map(|(host, paths)| IngressRule {
                            host: host.map(Into::into),
                            http: Some(HTTPIngressRuleValue {
                                paths: paths
                                    .into_iter()
                                    .map(|(p, t, b)| HTTPIngressPath {
                                        path: Some(p.into()),
                                        path_type: t.into(),
                                        backend: b,
                                    })
                                    .collect(),
                            }),
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn with_annotations(mut i: Ingress, a: &[(&str, &str)]) -> Ingress {
        i.metadata.annotations = Some(
            a.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        i
    }

    /// Services a:80 (ready 10.0.0.1, 10.0.0.2; not ready 10.0.0.3), b "http"->8080, c (no endpoints).
    fn sources(ings: Vec<Ingress>) -> Sources {
        Sources {
            ingresses: ings.into_iter().map(Arc::new).collect(),
            classes: vec![],
            services: vec![
                svc("ns", "a", &[(None, 80)]),
                svc("ns", "b", &[(Some("http"), 80), (Some("admin"), 9000)]),
                svc("ns", "c", &[(None, 80)]),
            ],
            slices: vec![
                slice(
                    "ns",
                    "a",
                    (None, 8080),
                    &[
                        ("10.0.0.1", Some(true)),
                        ("10.0.0.2", None),
                        ("10.0.0.3", Some(false)),
                    ],
                ),
                slice("ns", "b", (Some("http"), 8081), &[("10.0.1.1", Some(true))]),
                slice(
                    "ns",
                    "b",
                    (Some("admin"), 9001),
                    &[("10.0.1.9", Some(true))],
                ),
            ],
            secrets: vec![],
        }
    }

    fn svc_of(t: Option<&Arc<Target>>) -> Option<String> {
        t.map(|t| t.backend.service.clone())
    }

    #[test]
    fn host_and_path_matching() {
        let ing = ingress(
            "ns",
            "i",
            vec![
                (
                    Some("Foo.Example.com"),
                    vec![
                        ("/", "Prefix", backend("a", Ok(80))),
                        ("/api", "Prefix", backend("b", Err("http"))),
                        ("/api/v1/exact", "Exact", backend("c", Ok(80))),
                    ],
                ),
                (
                    Some("*.example.com"),
                    vec![("/", "Prefix", backend("b", Ok(9000)))],
                ),
                (
                    None,
                    vec![("/other", "ImplementationSpecific", backend("c", Ok(80)))],
                ),
            ],
        );
        let b = build(&sources(vec![ing]), "rk3s");
        let t = &b.routes;
        let ep = Entrypoint::Web;
        assert_eq!(
            svc_of(t.lookup(ep, "foo.example.com", "/")).as_deref(),
            Some("ns/a:80")
        );
        assert_eq!(
            svc_of(t.lookup(ep, "FOO.example.com:8080", "/x")).as_deref(),
            Some("ns/a:80")
        );
        assert_eq!(
            svc_of(t.lookup(ep, "foo.example.com", "/api")).as_deref(),
            Some("ns/b:http")
        );
        assert_eq!(
            svc_of(t.lookup(ep, "foo.example.com", "/api/")).as_deref(),
            Some("ns/b:http")
        );
        assert_eq!(
            svc_of(t.lookup(ep, "foo.example.com", "/api/x")).as_deref(),
            Some("ns/b:http")
        );
        // Element-wise: /apix is not under /api.
        assert_eq!(
            svc_of(t.lookup(ep, "foo.example.com", "/apix")).as_deref(),
            Some("ns/a:80")
        );
        assert_eq!(
            svc_of(t.lookup(ep, "foo.example.com", "/api/v1/exact")).as_deref(),
            Some("ns/c:80")
        );
        assert_eq!(
            svc_of(t.lookup(ep, "foo.example.com", "/api/v1/exact/")).as_deref(),
            Some("ns/b:http")
        );
        // Wildcard: one label only.
        assert_eq!(
            svc_of(t.lookup(ep, "bar.example.com", "/")).as_deref(),
            Some("ns/b:9000")
        );
        assert_eq!(svc_of(t.lookup(ep, "a.bar.example.com", "/")), None);
        assert_eq!(svc_of(t.lookup(ep, "example.com", "/")), None);
        // Host-less rule for any host, and fall-through from a host without that path.
        assert_eq!(
            svc_of(t.lookup(ep, "x.org", "/other/1")).as_deref(),
            Some("ns/c:80")
        );
        assert_eq!(svc_of(t.lookup(ep, "x.org", "/")), None);
        assert_eq!(
            svc_of(t.lookup(ep, "bar.example.com", "/other")).as_deref(),
            Some("ns/b:9000")
        );
        assert!(b.warnings.is_empty(), "{:?}", b.warnings);
    }

    #[test]
    fn endpoints_by_port_number_and_name() {
        let ing = ingress(
            "ns",
            "i",
            vec![(
                None,
                vec![
                    ("/a", "Prefix", backend("a", Ok(80))),
                    ("/b", "Prefix", backend("b", Err("http"))),
                    ("/b9", "Prefix", backend("b", Ok(9000))),
                    ("/c", "Prefix", backend("c", Ok(80))),
                ],
            )],
        );
        let b = build(&sources(vec![ing]), "rk3s");
        let get = |p: &str| {
            b.routes
                .lookup(Entrypoint::Web, "h", p)
                .unwrap()
                .backend
                .endpoints
                .clone()
        };
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(get("/a"), vec![sa("10.0.0.1:8080"), sa("10.0.0.2:8080")]);
        assert_eq!(get("/b"), vec![sa("10.0.1.1:8081")]);
        assert_eq!(get("/b9"), vec![sa("10.0.1.9:9001")]);
        assert!(get("/c").is_empty());
        // Round-robin over the ready endpoints, then the others in order.
        let t = b.routes.lookup(Entrypoint::Web, "h", "/a").unwrap();
        let o1: Vec<_> = t.backend.attempt_order().collect();
        let o2: Vec<_> = t.backend.attempt_order().collect();
        assert_eq!(o1, vec![sa("10.0.0.1:8080"), sa("10.0.0.2:8080")]);
        assert_eq!(o2, vec![sa("10.0.0.2:8080"), sa("10.0.0.1:8080")]);
    }

    #[test]
    fn precedence_exact_over_prefix_then_oldest() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let mut old = ingress(
            "ns",
            "old",
            vec![(Some("h.io"), vec![("/p", "Prefix", backend("a", Ok(80)))])],
        );
        old.metadata.creation_timestamp = Some(Time("2020-01-01T00:00:00Z".parse().unwrap()));
        let mut new = ingress(
            "ns",
            "new",
            vec![(
                Some("h.io"),
                vec![
                    ("/p", "Prefix", backend("b", Ok(9000))),
                    ("/p", "Exact", backend("c", Ok(80))),
                ],
            )],
        );
        new.metadata.creation_timestamp = Some(Time("2021-01-01T00:00:00Z".parse().unwrap()));
        let b = build(&sources(vec![new, old]), "rk3s");
        assert_eq!(
            svc_of(b.routes.lookup(Entrypoint::Web, "h.io", "/p")).as_deref(),
            Some("ns/c:80")
        );
        assert_eq!(
            svc_of(b.routes.lookup(Entrypoint::Web, "h.io", "/p/q")).as_deref(),
            Some("ns/a:80")
        );
        assert_eq!(
            b.served.iter().map(|k| k.name.as_str()).collect::<Vec<_>>(),
            ["old", "new"]
        );
    }

    #[test]
    fn class_selection() {
        let classes = vec![Arc::new(IngressClass {
            metadata: ObjectMeta {
                name: Some("mine".into()),
                ..Default::default()
            },
            spec: Some(IngressClassSpec {
                controller: Some(CONTROLLER.into()),
                parameters: None,
            }),
        })];
        let with_class = |c: Option<&str>| {
            let mut i = ingress("ns", "i", vec![]);
            i.spec.as_mut().unwrap().ingress_class_name = c.map(Into::into);
            i
        };
        assert!(is_served(&with_class(None), &classes, "rk3s"));
        assert!(is_served(&with_class(Some("rk3s")), &classes, "rk3s"));
        assert!(is_served(&with_class(Some("traefik")), &classes, "rk3s"));
        assert!(is_served(&with_class(Some("mine")), &classes, "rk3s"));
        assert!(!is_served(&with_class(Some("nginx")), &classes, "rk3s"));
        // The annotation wins over the field.
        let a = with_annotations(with_class(Some("rk3s")), &[(CLASS_ANNOTATION, "nginx")]);
        assert!(!is_served(&a, &classes, "rk3s"));
        let a = with_annotations(with_class(None), &[(CLASS_ANNOTATION, "traefik")]);
        assert!(is_served(&a, &classes, "rk3s"));
        // Not served: not routed.
        let mut i = ingress(
            "ns",
            "n",
            vec![(None, vec![("/", "Prefix", backend("a", Ok(80)))])],
        );
        i.spec.as_mut().unwrap().ingress_class_name = Some("nginx".into());
        let b = build(&sources(vec![i]), "rk3s");
        assert!(b.routes.is_empty());
        assert!(b.served.is_empty());
    }

    #[test]
    fn annotations_entrypoints_tls_redirect() {
        let base = |name: &str| {
            let host = format!("{name}.io");
            ingress(
                "ns",
                name,
                vec![(
                    Some(host.as_str()),
                    vec![("/", "Prefix", backend("a", Ok(80)))],
                )],
            )
        };
        let web = with_annotations(base("web"), &[(ENTRYPOINTS_ANNOTATION, "web")]);
        let secure = with_annotations(base("secure"), &[(ENTRYPOINTS_ANNOTATION, " websecure ")]);
        let tls = with_annotations(base("tls"), &[(ROUTER_TLS_ANNOTATION, "true")]);
        let redirect = with_annotations(
            base("redirect"),
            &[(REDIRECT_ENTRY_POINT_ANNOTATION, "https")],
        );
        let perm = with_annotations(
            base("perm"),
            &[
                (REDIRECT_ENTRY_POINT_ANNOTATION, "https"),
                (REDIRECT_PERMANENT_ANNOTATION, "true"),
            ],
        );
        let bad = with_annotations(
            base("bad"),
            &[
                (ENTRYPOINTS_ANNOTATION, "web,metrics"),
                (MIDDLEWARES_ANNOTATION, "default-mw@kubernetescrd"),
            ],
        );
        let b = build(
            &sources(vec![web, secure, tls, redirect, perm, bad]),
            "rk3s",
        );
        let r = &b.routes;
        let (w, s) = (Entrypoint::Web, Entrypoint::WebSecure);
        assert!(r.lookup(w, "web.io", "/").is_some());
        assert!(r.lookup(s, "web.io", "/").is_none());
        assert!(r.lookup(w, "secure.io", "/").is_none());
        assert!(r.lookup(s, "secure.io", "/").is_some());
        assert!(r.lookup(w, "tls.io", "/").is_none());
        assert!(r.lookup(s, "tls.io", "/").is_some());
        assert_eq!(
            r.lookup(w, "redirect.io", "/").unwrap().redirect,
            Some(Redirect { permanent: false })
        );
        assert_eq!(
            r.lookup(w, "perm.io", "/").unwrap().redirect,
            Some(Redirect { permanent: true })
        );
        assert!(r.lookup(w, "bad.io", "/").is_some());
        assert_eq!(b.warnings.len(), 2, "{:?}", b.warnings);
        assert!(b
            .warnings
            .iter()
            .all(|w| w.ingress.name == "bad" && w.reason == "InvalidAnnotation"));
        assert!(b.warnings.iter().any(|w| w.message.contains("metrics")));
        assert!(b.warnings.iter().any(|w| w.message.contains("middlewares")));
    }

    #[test]
    fn bad_parts_are_skipped_with_warnings() {
        let mut i = ingress(
            "ns",
            "bad",
            vec![
                (
                    Some("bad host!"),
                    vec![("/", "Prefix", backend("a", Ok(80)))],
                ),
                (
                    Some("ok.io"),
                    vec![
                        ("nope", "Prefix", backend("a", Ok(80))),
                        ("/missing", "Prefix", backend("zzz", Ok(80))),
                        ("/noport", "Prefix", backend("a", Ok(81))),
                        ("/ext", "Prefix", backend("ext", Ok(80))),
                        ("/good", "Exact", backend("a", Ok(80))),
                    ],
                ),
            ],
        );
        i.spec.as_mut().unwrap().tls = Some(vec![k8s_openapi::api::networking::v1::IngressTLS {
            hosts: Some(vec!["ok.io".into()]),
            secret_name: Some("absent".into()),
        }]);
        let other = ingress(
            "ns",
            "other",
            vec![(
                Some("other.io"),
                vec![("/", "Prefix", backend("a", Ok(80)))],
            )],
        );
        let mut src = sources(vec![i, other]);
        let mut ext = (*svc("ns", "ext", &[(None, 80)])).clone();
        ext.spec.as_mut().unwrap().type_ = Some("ExternalName".into());
        src.services.push(Arc::new(ext));
        let b = build(&src, "rk3s");
        let r = &b.routes;
        assert!(r.lookup(Entrypoint::Web, "other.io", "/x").is_some());
        assert!(r.lookup(Entrypoint::Web, "ok.io", "/good").is_some());
        // A missing Service or port still routes (503: no endpoints).
        assert!(r
            .lookup(Entrypoint::Web, "ok.io", "/missing")
            .unwrap()
            .backend
            .endpoints
            .is_empty());
        assert!(r
            .lookup(Entrypoint::Web, "ok.io", "/noport")
            .unwrap()
            .backend
            .endpoints
            .is_empty());
        let reasons: Vec<_> = b
            .warnings
            .iter()
            .map(|w| (w.ingress.name.as_str(), w.reason))
            .collect();
        assert!(reasons.contains(&("bad", "InvalidHost")), "{reasons:?}");
        assert!(reasons.contains(&("bad", "InvalidPath")), "{reasons:?}");
        assert!(reasons.contains(&("bad", "InvalidBackend")), "{reasons:?}");
        assert!(reasons.contains(&("bad", "InvalidTLS")), "{reasons:?}");
        assert!(!reasons.iter().any(|(n, _)| *n == "other"));
        assert_eq!(b.served.len(), 2);
        let messages: Vec<&str> = b.warnings.iter().map(|w| w.message.as_str()).collect();
        for part in [
            "zzz not found",
            "has no port \"81\"",
            "ExternalName",
            "does not start with '/'",
        ] {
            assert!(
                messages.iter().any(|m| m.contains(part)),
                "{part}: {messages:?}"
            );
        }
    }

    #[test]
    fn default_backend() {
        let mut i = ingress(
            "ns",
            "d",
            vec![(
                Some("h.io"),
                vec![("/x", "Exact", backend("b", Err("http")))],
            )],
        );
        i.spec.as_mut().unwrap().default_backend = Some(backend("a", Ok(80)));
        let b = build(&sources(vec![i]), "rk3s");
        assert_eq!(
            svc_of(b.routes.lookup(Entrypoint::Web, "h.io", "/x")).as_deref(),
            Some("ns/b:http")
        );
        assert_eq!(
            svc_of(b.routes.lookup(Entrypoint::Web, "h.io", "/y")).as_deref(),
            Some("ns/a:80")
        );
        assert_eq!(
            svc_of(b.routes.lookup(Entrypoint::WebSecure, "any", "/")).as_deref(),
            Some("ns/a:80")
        );
    }

    #[test]
    fn host_normalization() {
        assert_eq!(normalize_host("Foo.COM:8080"), "foo.com");
        assert_eq!(normalize_host("foo.com."), "foo.com");
        assert_eq!(normalize_host("[::1]:80"), "::1");
        assert_eq!(normalize_host("::1"), "::1");
        assert_eq!(normalize_host(""), "");
    }
}
