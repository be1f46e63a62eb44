//! Audit logging (`--audit-log-path`, `--audit-policy-file`), as upstream's log backend
//! with the `json` format: one `audit.k8s.io/v1` `Event` per line.
//!
//! An [`AuditPolicy`] decides the level of each request (first matching rule wins, no
//! match: `None`); [`AuditLog::record`] renders the event on the calling thread and hands
//! the line to a writer thread, so requests never wait for the disk.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::request::RequestInfo;
use crate::UserInfo;

/// Audit failures (configuration and opening the log).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The policy could not be parsed or is invalid.
    #[error("audit policy: {0}")]
    Policy(String),
    /// The log file could not be opened.
    #[error("audit log {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// How much of a request is recorded.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub enum Level {
    /// Not recorded.
    #[default]
    None,
    /// User, verb, resource, status, timestamps; no bodies.
    Metadata,
    /// Metadata and the request body (resource requests only).
    Request,
    /// Request and the response body (resource requests only).
    RequestResponse,
}

impl Level {
    /// The level's name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "None",
            Level::Metadata => "Metadata",
            Level::Request => "Request",
            Level::RequestResponse => "RequestResponse",
        }
    }
}

/// The stage of request handling an event is generated at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Stage {
    /// As soon as the request is received.
    RequestReceived,
    /// Response headers sent, body not yet (long-running requests such as watch).
    ResponseStarted,
    /// The response body is complete.
    ResponseComplete,
    /// The handler panicked.
    Panic,
}

impl Stage {
    /// The stage's name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::RequestReceived => "RequestReceived",
            Stage::ResponseStarted => "ResponseStarted",
            Stage::ResponseComplete => "ResponseComplete",
            Stage::Panic => "Panic",
        }
    }
}

/// Resources of one API group a rule applies to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupResources {
    /// API group ("" for core).
    #[serde(default)]
    pub group: String,
    /// `pods`, `pods/log` (a subresource), `*` (all, with subresources), `pods/*` (pods
    /// and its subresources), `*/scale` (that subresource of any resource). Empty: all.
    #[serde(default)]
    pub resources: Vec<String>,
    /// Object names (empty: all).
    #[serde(default)]
    pub resource_names: Vec<String>,
}

/// One rule of a policy: a request matches when it matches every non-empty field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    /// The level of matching requests.
    pub level: Level,
    /// User names (empty: all).
    #[serde(default)]
    pub users: Vec<String>,
    /// Groups; the user must be in one of them (empty: all).
    #[serde(default)]
    pub user_groups: Vec<String>,
    /// Verbs (empty: all).
    #[serde(default)]
    pub verbs: Vec<String>,
    /// Resources (resource requests only).
    #[serde(default)]
    pub resources: Vec<GroupResources>,
    /// Namespaces; "" matches cluster-scoped resources (resource requests only).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Non-resource paths; `*` alone or as a trailing wildcard (`/healthz*`).
    #[serde(default, rename = "nonResourceURLs")]
    pub non_resource_urls: Vec<String>,
    /// Stages not recorded (in addition to the policy's).
    #[serde(default)]
    pub omit_stages: Vec<Stage>,
    /// Drop `metadata.managedFields` from recorded bodies (overrides the policy's).
    #[serde(default)]
    pub omit_managed_fields: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PolicyFile {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    rules: Vec<PolicyRule>,
    #[serde(default)]
    omit_stages: Vec<Stage>,
    #[serde(default)]
    omit_managed_fields: bool,
}

/// An `audit.k8s.io/v1` `Policy`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditPolicy {
    /// Rules in order; the first match decides.
    pub rules: Vec<PolicyRule>,
    /// Stages never recorded.
    pub omit_stages: Vec<Stage>,
    /// Drop `metadata.managedFields` from recorded bodies by default.
    pub omit_managed_fields: bool,
}

/// rk3s's default audit policy (used without `--audit-policy-file`), in the spirit of
/// upstream's GCE policy: health checks and `/version` are not recorded; nor are reads
/// of leases, events, endpoints and EndpointSlices and Lease renewals by the cluster's
/// own components (nodes, kube-system service accounts, the in-process controllers,
/// scheduler, proxy and supervisor); Secrets, ConfigMaps, tokens and reviews that carry
/// credentials are recorded at `Metadata` whatever a later rule says; the rest at
/// `Metadata`. The `RequestReceived` stage is omitted (one event per request).
pub const DEFAULT_POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  nonResourceURLs: ["/healthz*", "/livez*", "/readyz*", "/version", "/version/"]
- level: None
  users: &system
  - system:kube-controller-manager
  - system:kube-scheduler
  - system:kube-proxy
  - system:rk3s-controller
  - system:rk3s-supervisor
  - system:apiserver
  verbs: [get, list, watch, update, patch]
  resources:
  - group: coordination.k8s.io
    resources: [leases]
- level: None
  userGroups: &systemGroups [system:nodes, "system:serviceaccounts:kube-system"]
  verbs: [get, list, watch, update, patch]
  resources:
  - group: coordination.k8s.io
    resources: [leases]
- level: None
  users: *system
  verbs: [get, list, watch]
  resources:
  - group: ""
    resources: [events, endpoints]
  - group: events.k8s.io
    resources: [events]
  - group: discovery.k8s.io
    resources: [endpointslices]
- level: None
  userGroups: *systemGroups
  verbs: [get, list, watch]
  resources:
  - group: ""
    resources: [events, endpoints]
  - group: events.k8s.io
    resources: [events]
  - group: discovery.k8s.io
    resources: [endpointslices]
- level: Metadata
  resources:
  - group: ""
    resources: [secrets, configmaps, serviceaccounts/token]
  - group: authentication.k8s.io
    resources: [tokenreviews]
  - group: authorization.k8s.io
    resources: [subjectaccessreviews, selfsubjectaccessreviews, localsubjectaccessreviews]
- level: Metadata
"#;

/// What a request is, for policy matching (upstream's authorizer attributes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditAttributes {
    /// Authenticated user name (before impersonation).
    pub user: String,
    /// Its groups.
    pub groups: Vec<String>,
    /// Kubernetes verb; lower-case HTTP method for non-resource requests.
    pub verb: String,
    /// API group ("" for core).
    pub api_group: String,
    /// API version.
    pub api_version: String,
    /// Resource (plural).
    pub resource: String,
    /// Subresource.
    pub subresource: String,
    /// Namespace ("" for cluster-scoped).
    pub namespace: String,
    /// Object name.
    pub name: String,
    /// Request path (without query).
    pub path: String,
    /// Whether this is a resource request (`/api/...`, `/apis/...` with a resource).
    pub resource_request: bool,
}

impl AuditAttributes {
    /// Attributes of a request by `user` (the authenticated one), from its parsed
    /// [`RequestInfo`] (`None` for non-resource paths), HTTP method and path.
    pub fn from_request(
        user: &UserInfo,
        info: Option<&RequestInfo>,
        method: &http::Method,
        path: &str,
    ) -> Self {
        let base = AuditAttributes {
            user: user.name.clone(),
            groups: user.groups.clone(),
            path: path.to_string(),
            ..Default::default()
        };
        match info.filter(|i| i.is_resource_request) {
            Some(i) => AuditAttributes {
                verb: i.verb.clone(),
                api_group: i.group.clone(),
                api_version: i.version.clone(),
                resource: i.resource.clone(),
                subresource: i.subresource.clone().unwrap_or_default(),
                namespace: i.namespace.clone().unwrap_or_default(),
                name: i.name.clone().unwrap_or_default(),
                resource_request: true,
                ..base
            },
            None => AuditAttributes {
                verb: method.as_str().to_ascii_lowercase(),
                ..base
            },
        }
    }
}

impl AuditPolicy {
    /// Parses a policy file (YAML or JSON, `apiVersion: audit.k8s.io/v1`, `kind: Policy`).
    pub fn parse(yaml_or_json: &str) -> Result<Self, AuditError> {
        let file: PolicyFile = match serde_json::from_str(yaml_or_json) {
            Ok(f) => f,
            Err(_) => {
                serde_yaml::from_str(yaml_or_json).map_err(|e| AuditError::Policy(e.to_string()))?
            }
        };
        if file.kind != "Policy" {
            return Err(AuditError::Policy(format!(
                "kind is {:?}, want Policy",
                file.kind
            )));
        }
        if file.api_version != "audit.k8s.io/v1" {
            return Err(AuditError::Policy(format!(
                "apiVersion is {:?}, want audit.k8s.io/v1",
                file.api_version
            )));
        }
        for (i, r) in file.rules.iter().enumerate() {
            if !r.non_resource_urls.is_empty()
                && (!r.resources.is_empty() || !r.namespaces.is_empty())
            {
                return Err(AuditError::Policy(format!(
                    "rules[{i}]: rules cannot apply to both regular resources and non-resource URLs"
                )));
            }
            for (j, u) in r.non_resource_urls.iter().enumerate() {
                if !u.starts_with('/') && u != "*" {
                    return Err(AuditError::Policy(format!(
                        "rules[{i}].nonResourceURLs[{j}]: non-resource URL rules must begin with a '/' character"
                    )));
                }
                if u.len() > 1 && u[..u.len() - 1].contains('*') {
                    return Err(AuditError::Policy(format!(
                        "rules[{i}].nonResourceURLs[{j}]: '*' is only allowed as the final character"
                    )));
                }
            }
            for (j, g) in r.resources.iter().enumerate() {
                if !g.resource_names.is_empty() && g.resources.is_empty() {
                    return Err(AuditError::Policy(format!(
                        "rules[{i}].resources[{j}]: resourceNames require resources"
                    )));
                }
            }
        }
        Ok(AuditPolicy {
            rules: file.rules,
            omit_stages: file.omit_stages,
            omit_managed_fields: file.omit_managed_fields,
        })
    }

    /// Everything at `Metadata`.
    pub fn default_metadata() -> Self {
        AuditPolicy {
            rules: vec![PolicyRule {
                level: Level::Metadata,
                users: vec![],
                user_groups: vec![],
                verbs: vec![],
                resources: vec![],
                namespaces: vec![],
                non_resource_urls: vec![],
                omit_stages: vec![],
                omit_managed_fields: None,
            }],
            omit_stages: vec![],
            omit_managed_fields: false,
        }
    }

    /// rk3s's default policy ([`DEFAULT_POLICY`]): the noisiest read-only and heartbeat
    /// traffic of the cluster's own components is not recorded, everything else is at
    /// `Metadata` (no request or response bodies, so never a Secret's data).
    pub fn rk3s_default() -> Self {
        match Self::parse(DEFAULT_POLICY) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "the built-in audit policy does not parse; logging every request at Metadata");
                Self::default_metadata()
            }
        }
    }

    fn matching_rule(&self, a: &AuditAttributes) -> Option<&PolicyRule> {
        self.rules.iter().find(|r| rule_matches(r, a))
    }

    /// The level of a request and the stages not recorded (the rule's and the policy's).
    pub fn level_for(&self, attrs: &AuditAttributes) -> (Level, Vec<Stage>) {
        match self.matching_rule(attrs) {
            Some(r) => {
                let mut stages = self.omit_stages.clone();
                for s in &r.omit_stages {
                    if !stages.contains(s) {
                        stages.push(*s);
                    }
                }
                (r.level, stages)
            }
            None => (Level::None, self.omit_stages.clone()),
        }
    }

    fn omit_managed_fields_for(&self, attrs: &AuditAttributes) -> bool {
        self.matching_rule(attrs)
            .and_then(|r| r.omit_managed_fields)
            .unwrap_or(self.omit_managed_fields)
    }
}

fn has(list: &[String], v: &str) -> bool {
    list.iter().any(|s| s == v)
}

fn rule_matches(r: &PolicyRule, a: &AuditAttributes) -> bool {
    if !r.users.is_empty() && !has(&r.users, &a.user) {
        return false;
    }
    if !r.user_groups.is_empty() && !a.groups.iter().any(|g| has(&r.user_groups, g)) {
        return false;
    }
    if !r.verbs.is_empty() && !has(&r.verbs, &a.verb) {
        return false;
    }
    if !r.namespaces.is_empty() || !r.resources.is_empty() {
        return resource_matches(r, a);
    }
    if !r.non_resource_urls.is_empty() {
        return !a.resource_request && r.non_resource_urls.iter().any(|s| path_matches(&a.path, s));
    }
    true
}

fn path_matches(path: &str, spec: &str) -> bool {
    spec == "*"
        || spec == path
        || spec
            .strip_suffix('*')
            .is_some_and(|p| path.starts_with(p.trim_end_matches('*')))
}

fn resource_matches(r: &PolicyRule, a: &AuditAttributes) -> bool {
    if !a.resource_request {
        return false;
    }
    if !r.namespaces.is_empty() && !has(&r.namespaces, &a.namespace) {
        return false;
    }
    if r.resources.is_empty() {
        return true;
    }
    let combined = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    r.resources
        .iter()
        .filter(|g| g.group == a.api_group)
        .any(|g| {
            g.resources.is_empty()
                || g.resources.iter().any(|res| {
                    (g.resource_names.is_empty() || has(&g.resource_names, &a.name))
                        && (*res == combined
                            || res == "*"
                            || (!a.subresource.is_empty()
                                && res.strip_prefix("*/") == Some(a.subresource.as_str()))
                            || res.strip_suffix("/*") == Some(a.resource.as_str()))
                })
        })
}

/// The authorizer's decision, recorded as `authorization.k8s.io/*` annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthzDecision {
    /// Allowed (`allow`) or not (`forbid`).
    pub allowed: bool,
    /// The authorizer's reason (may be empty).
    pub reason: String,
}

/// One request to record.
#[derive(Clone, Debug)]
pub struct AuditRecord<'a> {
    /// What the request is (for the policy and `objectRef`).
    pub attributes: AuditAttributes,
    /// The authenticated user (the `user` field; before impersonation).
    pub user: UserInfo,
    /// The impersonated user, if the request impersonated one.
    pub impersonated_user: Option<UserInfo>,
    /// Audit ID; `None` generates one. Pass the same ID for a watch's
    /// `ResponseStarted` and `ResponseComplete` events (and in the `Audit-ID` header).
    pub audit_id: Option<String>,
    /// The stage (usually [`Stage::ResponseComplete`]).
    pub stage: Stage,
    /// Path and query as sent.
    pub request_uri: String,
    /// Source IPs (see [`source_ips`]).
    pub source_ips: Vec<String>,
    /// `User-Agent` header.
    pub user_agent: String,
    /// HTTP status code of the response.
    pub code: u16,
    /// Request body (JSON), recorded at `Request` and above.
    pub request_body: Option<&'a [u8]>,
    /// Response body (JSON), recorded at `RequestResponse`; a `Status` body also fills
    /// `responseStatus` at every level.
    pub response_body: Option<&'a [u8]>,
    /// When the request was received.
    pub received: jiff::Timestamp,
    /// The authorization decision, if authorization ran.
    pub decision: Option<AuthzDecision>,
}

/// A new audit ID (random UUID v4).
pub fn new_audit_id() -> String {
    crate::object::new_uid()
}

/// Upstream's source IPs: the `X-Forwarded-For` list, then `X-Real-Ip` if not in it,
/// then the connection's address unless it equals the last one.
pub fn source_ips(headers: &http::HeaderMap, remote: Option<IpAddr>) -> Vec<String> {
    let mut ips: Vec<IpAddr> = headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_default();
    if let Some(real) = headers
        .get("x-real-ip")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse().ok())
    {
        if !ips.contains(&real) {
            ips.push(real);
        }
    }
    if let Some(r) = remote {
        if ips.last() != Some(&r) {
            ips.push(r);
        }
    }
    ips.iter().map(|i| i.to_string()).collect()
}

fn micro_time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()
}

fn user_json(u: &UserInfo) -> Value {
    let mut m = Map::new();
    if !u.name.is_empty() {
        m.insert("username".into(), json!(u.name));
    }
    if !u.uid.is_empty() {
        m.insert("uid".into(), json!(u.uid));
    }
    if !u.groups.is_empty() {
        m.insert("groups".into(), json!(u.groups));
    }
    if !u.extra.is_empty() {
        m.insert("extra".into(), json!(u.extra));
    }
    Value::Object(m)
}

fn strip_managed_fields(v: &mut Value) {
    if let Some(m) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        m.remove("managedFields");
    }
    if let Some(items) = v.get_mut("items").and_then(|i| i.as_array_mut()) {
        items.iter_mut().for_each(strip_managed_fields);
    }
}

fn insert_nonempty(m: &mut Map<String, Value>, k: &str, v: &str) {
    if !v.is_empty() {
        m.insert(k.into(), json!(v));
    }
}

/// The request URI as upstream records it: path and query. HTTP/2 requests carry the
/// scheme and authority in their URI (`https://host:6443/api/...`); those are dropped.
fn request_uri(uri: &str) -> &str {
    match uri.split_once("://") {
        Some((scheme, rest)) if !scheme.contains('/') && !scheme.contains('?') => {
            rest.find('/').map_or("/", |i| &rest[i..])
        }
        _ => uri,
    }
}

/// Renders the event of `rec` at `level` (the JSON object written as one line).
pub fn render_event(
    rec: &AuditRecord<'_>,
    level: Level,
    omit_managed_fields: bool,
    now: jiff::Timestamp,
) -> Value {
    let a = &rec.attributes;
    let parse = |b: Option<&[u8]>| -> Option<Value> {
        let b = b?;
        // Request bodies may be protobuf (client-go); they are logged as their JSON.
        let ct = if b.starts_with(rk3s_protobuf::MAGIC) {
            rk3s_protobuf::CONTENT_TYPE
        } else {
            "application/json"
        };
        let mut v: Value = crate::body::decode_request(Some(ct), b, None).ok()?;
        if omit_managed_fields {
            strip_managed_fields(&mut v);
        }
        Some(v)
    };
    let request_obj = if a.resource_request {
        parse(rec.request_body)
    } else {
        None
    };
    let response_obj = parse(rec.response_body);

    let mut ev = Map::new();
    ev.insert("kind".into(), json!("Event"));
    ev.insert("apiVersion".into(), json!("audit.k8s.io/v1"));
    ev.insert("level".into(), json!(level.as_str()));
    ev.insert(
        "auditID".into(),
        json!(rec.audit_id.clone().unwrap_or_else(new_audit_id)),
    );
    ev.insert("stage".into(), json!(rec.stage.as_str()));
    ev.insert("requestURI".into(), json!(request_uri(&rec.request_uri)));
    ev.insert("verb".into(), json!(a.verb));
    ev.insert("user".into(), user_json(&rec.user));
    if let Some(imp) = &rec.impersonated_user {
        ev.insert("impersonatedUser".into(), user_json(imp));
    }
    if !rec.source_ips.is_empty() {
        ev.insert("sourceIPs".into(), json!(rec.source_ips));
    }
    insert_nonempty(&mut ev, "userAgent", &rec.user_agent);
    if a.resource_request {
        // As upstream, a missing namespace/name/uid/resourceVersion comes from the request
        // object (e.g. the name of a created object).
        let body_meta = request_obj.as_ref().and_then(|o| o.get("metadata"));
        let from_body = |f: &str| {
            body_meta
                .and_then(|m| m.get(f))
                .and_then(|v| v.as_str())
                .unwrap_or("")
        };
        let pick = |own: &'_ str, f: &str| {
            if own.is_empty() {
                from_body(f).to_string()
            } else {
                own.to_string()
            }
        };
        let mut r = Map::new();
        insert_nonempty(&mut r, "resource", &a.resource);
        insert_nonempty(&mut r, "namespace", &pick(&a.namespace, "namespace"));
        insert_nonempty(&mut r, "name", &pick(&a.name, "name"));
        insert_nonempty(&mut r, "uid", from_body("uid"));
        insert_nonempty(&mut r, "apiGroup", &a.api_group);
        insert_nonempty(&mut r, "apiVersion", &a.api_version);
        insert_nonempty(&mut r, "resourceVersion", from_body("resourceVersion"));
        insert_nonempty(&mut r, "subresource", &a.subresource);
        ev.insert("objectRef".into(), Value::Object(r));
    }
    let mut status = Map::new();
    status.insert("metadata".into(), json!({}));
    if let Some(s) = response_obj
        .as_ref()
        .filter(|o| o.get("kind").and_then(|k| k.as_str()) == Some("Status"))
    {
        for f in ["status", "message", "reason", "details"] {
            if let Some(v) = s.get(f).filter(|v| !v.is_null() && *v != "") {
                status.insert(f.into(), v.clone());
            }
        }
    }
    status.insert("code".into(), json!(rec.code));
    ev.insert("responseStatus".into(), Value::Object(status));
    if level >= Level::Request {
        if let Some(o) = request_obj {
            ev.insert("requestObject".into(), o);
        }
    }
    if level >= Level::RequestResponse && a.resource_request && a.verb != "watch" {
        if let Some(o) = response_obj {
            ev.insert("responseObject".into(), o);
        }
    }
    ev.insert(
        "requestReceivedTimestamp".into(),
        json!(micro_time(rec.received)),
    );
    ev.insert("stageTimestamp".into(), json!(micro_time(now)));
    if let Some(d) = &rec.decision {
        ev.insert(
            "annotations".into(),
            json!({
                "authorization.k8s.io/decision": if d.allowed { "allow" } else { "forbid" },
                "authorization.k8s.io/reason": d.reason,
            }),
        );
    }
    Value::Object(ev)
}

/// Log rotation (`--audit-log-maxsize`, `--audit-log-maxbackup`, `--audit-log-maxage`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RotateOptions {
    /// Rotate when the file would grow past this many megabytes (0: never).
    pub max_size_mb: u64,
    /// Keep at most this many rotated files (0: all).
    pub max_backups: usize,
    /// Delete rotated files older than this many days (0: never).
    pub max_age_days: u64,
}

enum Msg {
    Line(String),
    Flush(mpsc::Sender<()>),
}

struct Inner {
    tx: mpsc::Sender<Msg>,
    /// Lines sent and not yet taken by the writer (bounded by [`QUEUE`]; the channel
    /// itself is unbounded so that its slots are allocated as lines come, not up front).
    queued: Arc<AtomicUsize>,
    policy: AuditPolicy,
    dropped: AtomicU64,
}

/// The audit log: a policy and a writer thread. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("rules", &self.inner.policy.rules.len())
            .finish()
    }
}

/// Events queued before new ones are dropped (with a warning) instead of blocking.
const QUEUE: usize = 10_000;

enum Sink {
    Stdout,
    File(RotatingFile),
}

fn open_append(path: &Path) -> std::io::Result<(std::fs::File, u64)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut o = std::fs::OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let f = o.open(path)?;
    let size = f.metadata()?.len();
    Ok((f, size))
}

/// `dir/audit.log` → (`audit`, `.log`): rotated files are `audit-<time>.log` (as lumberjack).
fn backup_parts(path: &Path) -> (String, String) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.rfind('.') {
        Some(i) if i > 0 => (name[..i].to_string(), name[i..].to_string()),
        _ => (name, String::new()),
    }
}

/// A log file rotated by size, as lumberjack (used by upstream's audit log and k3s's
/// `--log`) does: appended to (created 0600 with its folders); a record that would grow
/// it past `max_size_mb` first moves it to `<name>-<UTC time>.<ext>` beside it and starts
/// a new one, then backups beyond `max_backups` or older than `max_age_days` are
/// deleted. A record is never split across two files. The audit log and `rk3s`'s own
/// `--log` share this one implementation. Writes are buffered: call `flush`.
pub struct RotatingFile {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    size: u64,
    rotate: RotateOptions,
}

impl std::fmt::Debug for RotatingFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotatingFile")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("rotate", &self.rotate)
            .finish()
    }
}

impl RotatingFile {
    /// Opens (appends to) `path`, creating it (mode 0600) and its parent folders.
    pub fn open(path: &Path, rotate: RotateOptions) -> std::io::Result<Self> {
        let (f, size) = open_append(path)?;
        Ok(RotatingFile {
            path: path.to_path_buf(),
            file: std::io::BufWriter::new(f),
            size,
            rotate,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record (whole: a line, or a block of lines), rotating first when it
    /// would grow the file past the limit.
    pub fn append(&mut self, record: &[u8]) -> std::io::Result<()> {
        let n = record.len() as u64;
        let limit = self.rotate.max_size_mb.saturating_mul(1024 * 1024);
        if limit > 0 && self.size > 0 && self.size.saturating_add(n) > limit {
            self.file.flush()?;
            rotate_file(&self.path, self.rotate)?;
            let (f, s) = open_append(&self.path)?;
            self.file = std::io::BufWriter::new(f);
            self.size = s;
        }
        self.file.write_all(record)?;
        self.size = self.size.saturating_add(n);
        Ok(())
    }

    /// Writes buffered records to the file.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Moves `path` to its time-stamped backup name and prunes old backups.
fn rotate_file(path: &Path, opts: RotateOptions) -> std::io::Result<()> {
    let (stem, ext) = backup_parts(path);
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let stamp = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H-%M-%S%.3f")
        .to_string();
    std::fs::rename(path, dir.join(format!("{stem}-{stamp}{ext}")))?;
    // Prune: names sort by time. A backup's name is the stem, a dash, a time stamp
    // (starting with the year's digit) and the extension, so `rk3s-agent.log` is never
    // taken for a backup of `rk3s.log`.
    let prefix = format!("{stem}-");
    let mut backups: Vec<(String, std::time::SystemTime)> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let is_backup = n.len() > prefix.len() + ext.len()
                && n.starts_with(&prefix)
                && n.ends_with(&ext)
                && n[prefix.len()..].starts_with(|c: char| c.is_ascii_digit());
            let mtime = e.metadata().ok()?.modified().ok()?;
            is_backup.then_some((n, mtime))
        })
        .collect();
    backups.sort();
    let now = std::time::SystemTime::now();
    let keep_from = if opts.max_backups > 0 {
        backups.len().saturating_sub(opts.max_backups)
    } else {
        0
    };
    for (i, (n, mtime)) in backups.iter().enumerate() {
        let too_old = opts.max_age_days > 0
            && now
                .duration_since(*mtime)
                .map(|d| d.as_secs() > opts.max_age_days.saturating_mul(86_400))
                .unwrap_or(false);
        if i < keep_from || too_old {
            let _ = std::fs::remove_file(dir.join(n));
        }
    }
    Ok(())
}

impl Sink {
    fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        match self {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(line.as_bytes())?;
                out.write_all(b"\n")
            }
            Sink::File(f) => {
                let mut rec = Vec::with_capacity(line.len() + 1);
                rec.extend_from_slice(line.as_bytes());
                rec.push(b'\n');
                f.append(&rec)
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Stdout => std::io::stdout().flush(),
            Sink::File(f) => f.flush(),
        }
    }
}

fn writer_loop(rx: mpsc::Receiver<Msg>, queued: Arc<AtomicUsize>, mut sink: Sink) {
    let mut failed = false;
    let mut handle = |r: std::io::Result<()>| {
        if let Err(e) = r {
            if !failed {
                tracing::error!("writing the audit log: {e}");
            }
            failed = true;
        } else {
            failed = false;
        }
    };
    while let Ok(first) = rx.recv() {
        let mut msg = Some(first);
        let mut waiters = Vec::new();
        while let Some(m) = msg.take() {
            match m {
                Msg::Line(l) => {
                    queued.fetch_sub(1, Ordering::Relaxed);
                    handle(sink.write_line(&l))
                }
                Msg::Flush(w) => waiters.push(w),
            }
            msg = rx.try_recv().ok();
        }
        handle(sink.flush());
        for w in waiters {
            let _ = w.send(());
        }
    }
    handle(sink.flush());
}

impl AuditLog {
    /// Opens (appends to) the log at `path` (`-`: standard output), creating parent
    /// directories and the file with mode 0600, and starts the writer thread.
    pub fn open(path: &Path, policy: AuditPolicy) -> Result<Self, AuditError> {
        Self::open_with_rotation(path, policy, RotateOptions::default())
    }

    /// [`AuditLog::open`] with log rotation.
    pub fn open_with_rotation(
        path: &Path,
        policy: AuditPolicy,
        rotate: RotateOptions,
    ) -> Result<Self, AuditError> {
        let sink = if path.as_os_str() == "-" {
            Sink::Stdout
        } else {
            Sink::File(
                RotatingFile::open(path, rotate).map_err(|source| AuditError::Io {
                    path: path.to_path_buf(),
                    source,
                })?,
            )
        };
        let (tx, rx) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let writer_queued = Arc::clone(&queued);
        std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || writer_loop(rx, writer_queued, sink))
            .map_err(|source| AuditError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(AuditLog {
            inner: Arc::new(Inner {
                tx,
                queued,
                policy,
                dropped: AtomicU64::new(0),
            }),
        })
    }

    /// The policy.
    pub fn policy(&self) -> &AuditPolicy {
        &self.inner.policy
    }

    /// The level of a request (to decide whether bodies need to be kept for
    /// [`AuditLog::record`]: request bodies from `Request`, response bodies from
    /// `RequestResponse`, or always for error `Status` bodies).
    pub fn level_for(&self, attrs: &AuditAttributes) -> Level {
        self.inner.policy.level_for(attrs).0
    }

    /// Records one event (nothing if the level is `None` or the stage is omitted).
    /// Never blocks on disk; if the writer is far behind, the event is dropped with a
    /// warning.
    pub fn record(&self, rec: AuditRecord<'_>) {
        let policy = &self.inner.policy;
        let (level, omit) = policy.level_for(&rec.attributes);
        if level == Level::None || omit.contains(&rec.stage) {
            return;
        }
        let ev = render_event(
            &rec,
            level,
            policy.omit_managed_fields_for(&rec.attributes),
            jiff::Timestamp::now(),
        );
        let line = match serde_json::to_string(&ev) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("encoding audit event: {e}");
                return;
            }
        };
        let queued = &self.inner.queued;
        let full = queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < QUEUE).then_some(n + 1)
            })
            .is_err();
        if !full && self.inner.tx.send(Msg::Line(line)).is_err() {
            // The writer is gone: nothing will take the line.
            queued.fetch_sub(1, Ordering::Relaxed);
        }
        if full {
            let n = self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            if n.checked_rem(1000) == Some(0) {
                tracing::warn!("audit log writer is behind: {} events dropped", n + 1);
            }
        }
    }

    /// How many events were dropped because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Blocks until every event recorded before the call is written and flushed (for
    /// shutdown and tests; do not call on an async worker thread in a hot path).
    pub fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        if self.inner.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(std::time::Duration::from_secs(10));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn attrs(user: &str, groups: &[&str], verb: &str) -> AuditAttributes {
        AuditAttributes {
            user: user.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            verb: verb.into(),
            api_version: "v1".into(),
            resource: "pods".into(),
            namespace: "default".into(),
            name: "p1".into(),
            path: "/api/v1/namespaces/default/pods/p1".into(),
            resource_request: true,
            ..Default::default()
        }
    }

    fn non_resource(path: &str) -> AuditAttributes {
        AuditAttributes {
            user: "alice".into(),
            verb: "get".into(),
            path: path.into(),
            ..Default::default()
        }
    }

    #[test]
    fn request_uri_is_path_and_query() {
        assert_eq!(
            request_uri("https://127.0.0.1:6443/api/v1/secrets?limit=1"),
            "/api/v1/secrets?limit=1"
        );
        assert_eq!(request_uri("https://h:1"), "/");
        assert_eq!(request_uri("/api?x=https://y/z"), "/api?x=https://y/z");
        assert_eq!(request_uri("/healthz"), "/healthz");
    }

    #[test]
    fn the_default_policy_skips_noise_and_keeps_the_rest_at_metadata() {
        let p = AuditPolicy::parse(DEFAULT_POLICY).unwrap();
        assert_eq!(p, AuditPolicy::rk3s_default());
        assert_eq!(p.omit_stages, [Stage::RequestReceived]);
        let lvl = |a: &AuditAttributes| p.level_for(a).0;
        let on = |mut a: AuditAttributes, group: &str, resource: &str| {
            a.api_group = group.into();
            a.resource = resource.into();
            a
        };
        for path in ["/healthz", "/readyz", "/livez/ping", "/version"] {
            assert_eq!(lvl(&non_resource(path)), Level::None, "{path}");
        }
        assert_eq!(lvl(&non_resource("/metrics")), Level::Metadata);
        assert_eq!(lvl(&non_resource("/apis")), Level::Metadata);
        let node = attrs("system:node:n1", &["system:nodes"], "update");
        assert_eq!(
            lvl(&on(node.clone(), "coordination.k8s.io", "leases")),
            Level::None
        );
        let kcm = attrs(
            "system:kube-controller-manager",
            &["system:masters"],
            "watch",
        );
        for (g, r) in [
            ("", "events"),
            ("", "endpoints"),
            ("discovery.k8s.io", "endpointslices"),
            ("coordination.k8s.io", "leases"),
        ] {
            assert_eq!(lvl(&on(kcm.clone(), g, r)), Level::None, "{g}/{r}");
        }
        // Writes of those by components, and any request by a person, are recorded.
        let mut create = on(kcm.clone(), "", "events");
        create.verb = "create".into();
        assert_eq!(lvl(&create), Level::Metadata);
        let admin = attrs("system:admin", &["system:masters"], "list");
        assert_eq!(lvl(&on(admin.clone(), "", "events")), Level::Metadata);
        assert_eq!(
            lvl(&on(admin.clone(), "coordination.k8s.io", "leases")),
            Level::Metadata
        );
        // Secrets never above Metadata, pods at Metadata.
        assert_eq!(lvl(&on(admin.clone(), "", "secrets")), Level::Metadata);
        assert_eq!(lvl(&admin), Level::Metadata);
        assert_eq!(lvl(&node), Level::Metadata);
    }

    const POLICY: &str = r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: None
    users: ["system:kube-proxy"]
    verbs: ["watch"]
  - level: None
    userGroups: ["system:nodes"]
    resources: [{group: "", resources: ["events"]}]
  - level: RequestResponse
    resources:
      - group: ""
        resources: ["pods/log", "*/status"]
  - level: Metadata
    resources:
      - group: ""
        resources: ["secrets", "configmaps"]
        resourceNames: ["special"]
  - level: Request
    namespaces: ["kube-system", ""]
    omitStages: ["ResponseStarted"]
  - level: Metadata
    nonResourceURLs: ["/healthz*", "/version"]
  - level: Request
    resources: [{group: "apps", resources: ["deployments/*"]}]
  - level: Metadata
    verbs: ["delete"]
"#;

    #[test]
    fn policy_matching() {
        let p = AuditPolicy::parse(POLICY).unwrap();
        let level = |a: &AuditAttributes| p.level_for(a).0;
        // users + verbs
        assert_eq!(
            level(&attrs("system:kube-proxy", &[], "watch")),
            Level::None
        );
        // (falls through to later rules: no rule matches a get of a pod in default)
        assert_eq!(level(&attrs("system:kube-proxy", &[], "get")), Level::None);
        // userGroups + resources
        let mut ev = attrs(
            "system:node:n1",
            &["system:authenticated", "system:nodes"],
            "delete",
        );
        ev.resource = "events".into();
        assert_eq!(level(&ev), Level::None);
        ev.groups = vec!["system:authenticated".into()];
        assert_eq!(
            level(&ev),
            Level::Metadata,
            "the last rule (delete) matches"
        );
        // subresources: exact, */status
        let mut log = attrs("alice", &[], "get");
        log.subresource = "log".into();
        assert_eq!(level(&log), Level::RequestResponse);
        let mut st = attrs("alice", &[], "update");
        st.resource = "nodes".into();
        st.subresource = "status".into();
        assert_eq!(level(&st), Level::RequestResponse);
        // "pods/log" does not match plain pods
        assert_eq!(level(&attrs("alice", &[], "get")), Level::None);
        // resourceNames
        let mut sec = attrs("alice", &[], "get");
        sec.resource = "secrets".into();
        sec.name = "special".into();
        assert_eq!(level(&sec), Level::Metadata);
        sec.name = "other".into();
        assert_eq!(level(&sec), Level::None);
        // namespaces, "" = cluster-scoped; omitStages union
        let mut ks = attrs("alice", &[], "list");
        ks.namespace = "kube-system".into();
        let (l, omit) = p.level_for(&ks);
        assert_eq!(l, Level::Request);
        assert!(omit.contains(&Stage::RequestReceived) && omit.contains(&Stage::ResponseStarted));
        let mut node = attrs("alice", &[], "get");
        node.resource = "nodes".into();
        node.namespace = String::new();
        assert_eq!(level(&node), Level::Request);
        // policy-level omitStages apply to no-match too
        assert_eq!(
            p.level_for(&attrs("alice", &[], "get")).1,
            vec![Stage::RequestReceived]
        );
        // nonResourceURLs with trailing *; never for resource requests
        assert_eq!(level(&non_resource("/healthz")), Level::Metadata);
        assert_eq!(level(&non_resource("/healthz/etcd")), Level::Metadata);
        assert_eq!(level(&non_resource("/version")), Level::Metadata);
        assert_eq!(level(&non_resource("/version/x")), Level::None);
        assert_eq!(level(&non_resource("/metrics")), Level::None);
        // a namespace rule does not match non-resource requests
        let mut nr = non_resource("/apis");
        nr.namespace = "kube-system".into();
        assert_eq!(level(&nr), Level::None);
        // resource/* matches the resource and its subresources, only in its group
        let mut dep = attrs("alice", &[], "patch");
        dep.api_group = "apps".into();
        dep.resource = "deployments".into();
        dep.subresource = "scale".into();
        assert_eq!(level(&dep), Level::Request);
        dep.api_group = "extensions".into();
        assert_eq!(level(&dep), Level::None);
        // first match wins: delete of pods/log is RequestResponse, not Metadata
        let mut del = attrs("alice", &[], "delete");
        assert_eq!(level(&del), Level::Metadata);
        del.subresource = "log".into();
        assert_eq!(level(&del), Level::RequestResponse);
    }

    #[test]
    fn policy_parse_errors_and_default() {
        assert!(AuditPolicy::parse("apiVersion: audit.k8s.io/v1\nkind: Other\n").is_err());
        assert!(AuditPolicy::parse(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules: [{level: Loud}]"
        )
        .is_err());
        let both = "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules: [{level: Metadata, namespaces: [a], nonResourceURLs: [/x]}]";
        assert!(AuditPolicy::parse(both).is_err());
        let mid = "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules: [{level: Metadata, nonResourceURLs: ['/a*b']}]";
        assert!(AuditPolicy::parse(mid).is_err());
        let json = r#"{"apiVersion":"audit.k8s.io/v1","kind":"Policy","rules":[{"level":"Request","verbs":["create"]}]}"#;
        let p = AuditPolicy::parse(json).unwrap();
        assert_eq!(p.level_for(&attrs("a", &[], "create")).0, Level::Request);
        assert_eq!(p.level_for(&attrs("a", &[], "get")).0, Level::None);
        let d = AuditPolicy::default_metadata();
        assert_eq!(d.level_for(&attrs("a", &[], "get")).0, Level::Metadata);
        assert_eq!(d.level_for(&non_resource("/healthz")).0, Level::Metadata);
    }

    #[test]
    fn attributes_from_request() {
        let user = UserInfo::new("bob", &["devs"]);
        let info = RequestInfo {
            is_resource_request: true,
            group: "apps".into(),
            version: "v1".into(),
            namespace: Some("ns".into()),
            resource: "deployments".into(),
            name: Some("d".into()),
            subresource: Some("scale".into()),
            verb: "update".into(),
            rest: vec![],
        };
        let a = AuditAttributes::from_request(
            &user,
            Some(&info),
            &http::Method::PUT,
            "/apis/apps/v1/namespaces/ns/deployments/d/scale",
        );
        assert_eq!(
            (a.user.as_str(), a.verb.as_str(), a.subresource.as_str()),
            ("bob", "update", "scale")
        );
        assert!(a.resource_request);
        let n = AuditAttributes::from_request(&user, None, &http::Method::POST, "/apis");
        assert_eq!(n.verb, "post");
        assert!(!n.resource_request);
        assert_eq!(n.groups, vec!["devs".to_string()]);
    }

    fn record<'a>(req: Option<&'a [u8]>, resp: Option<&'a [u8]>, code: u16) -> AuditRecord<'a> {
        let mut a = attrs("alice", &["system:authenticated"], "create");
        a.name = String::new();
        AuditRecord {
            attributes: a,
            user: UserInfo::new("alice", &["system:authenticated"]),
            impersonated_user: None,
            audit_id: Some("0b6c9a6e-2f3d-4d51-9a53-2b7e8c2f0a11".into()),
            stage: Stage::ResponseComplete,
            request_uri: "/api/v1/namespaces/default/pods?fieldManager=kubectl".into(),
            source_ips: vec!["10.0.0.1".into()],
            user_agent: "kubectl/v1.33.0".into(),
            code,
            request_body: req,
            response_body: resp,
            received: jiff::Timestamp::from_second(1_700_000_000).unwrap(),
            decision: Some(AuthzDecision {
                allowed: true,
                reason: "RBAC: allowed".into(),
            }),
        }
    }

    const BODY: &[u8] = br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p9","managedFields":[{"manager":"kubectl"}]}}"#;
    const RESP: &[u8] = br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p9","namespace":"default","uid":"u-1","resourceVersion":"7"}}"#;

    #[test]
    fn event_shape_per_level() {
        let now = jiff::Timestamp::from_second(1_700_000_001).unwrap();
        let rec = record(Some(BODY), Some(RESP), 201);
        let m = render_event(&rec, Level::Metadata, false, now);
        assert_eq!(m["kind"], "Event");
        assert_eq!(m["apiVersion"], "audit.k8s.io/v1");
        assert_eq!(m["level"], "Metadata");
        assert_eq!(m["auditID"], "0b6c9a6e-2f3d-4d51-9a53-2b7e8c2f0a11");
        assert_eq!(m["stage"], "ResponseComplete");
        assert_eq!(m["verb"], "create");
        assert_eq!(
            m["user"],
            json!({"username":"alice","groups":["system:authenticated"]})
        );
        assert_eq!(m["sourceIPs"], json!(["10.0.0.1"]));
        assert_eq!(m["userAgent"], "kubectl/v1.33.0");
        assert_eq!(
            m["objectRef"],
            json!({"resource":"pods","namespace":"default","name":"p9","apiVersion":"v1"})
        );
        assert_eq!(m["responseStatus"], json!({"metadata":{},"code":201}));
        assert_eq!(m["requestReceivedTimestamp"], "2023-11-14T22:13:20.000000Z");
        assert_eq!(m["stageTimestamp"], "2023-11-14T22:13:21.000000Z");
        assert_eq!(m["annotations"]["authorization.k8s.io/decision"], "allow");
        assert_eq!(
            m["annotations"]["authorization.k8s.io/reason"],
            "RBAC: allowed"
        );
        assert!(m.get("requestObject").is_none() && m.get("responseObject").is_none());
        assert!(m.get("impersonatedUser").is_none());

        let r = render_event(&rec, Level::Request, false, now);
        assert_eq!(r["requestObject"]["metadata"]["name"], "p9");
        assert!(r.get("responseObject").is_none());

        let rr = render_event(&rec, Level::RequestResponse, true, now);
        assert!(
            rr["requestObject"]["metadata"]
                .get("managedFields")
                .is_none(),
            "omitManagedFields"
        );
        assert_eq!(rr["responseObject"]["metadata"]["uid"], "u-1");

        // Field order as upstream's struct.
        let keys: Vec<&str> = rr.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "kind",
                "apiVersion",
                "level",
                "auditID",
                "stage",
                "requestURI",
                "verb",
                "user",
                "sourceIPs",
                "userAgent",
                "objectRef",
                "responseStatus",
                "requestObject",
                "responseObject",
                "requestReceivedTimestamp",
                "stageTimestamp",
                "annotations"
            ]
        );

        // Error Status body fills responseStatus; forbid; impersonation; non-resource has no objectRef.
        let status = br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"pods is forbidden","reason":"Forbidden","details":{"kind":"pods"},"code":403}"#;
        let mut f = record(None, Some(status), 403);
        f.decision = Some(AuthzDecision {
            allowed: false,
            reason: String::new(),
        });
        f.impersonated_user = Some(UserInfo::new("bob", &[]));
        let e = render_event(&f, Level::Metadata, false, now);
        assert_eq!(
            e["responseStatus"],
            json!({"metadata":{},"status":"Failure","message":"pods is forbidden","reason":"Forbidden","details":{"kind":"pods"},"code":403})
        );
        assert_eq!(e["annotations"]["authorization.k8s.io/decision"], "forbid");
        assert_eq!(e["impersonatedUser"], json!({"username":"bob"}));
        let mut nr = record(Some(b"{}"), Some(b"{}"), 200);
        nr.attributes = non_resource("/version");
        let e = render_event(&nr, Level::RequestResponse, false, now);
        assert!(
            e.get("objectRef").is_none()
                && e.get("requestObject").is_none()
                && e.get("responseObject").is_none()
        );
    }

    #[test]
    fn source_ips_as_upstream() {
        let mut h = http::HeaderMap::new();
        let remote: IpAddr = "10.0.0.9".parse().unwrap();
        assert_eq!(source_ips(&h, Some(remote)), vec!["10.0.0.9"]);
        h.insert("x-forwarded-for", "1.1.1.1, 2.2.2.2".parse().unwrap());
        h.insert("x-real-ip", "2.2.2.2".parse().unwrap());
        assert_eq!(
            source_ips(&h, Some(remote)),
            vec!["1.1.1.1", "2.2.2.2", "10.0.0.9"]
        );
        h.insert("x-real-ip", "3.3.3.3".parse().unwrap());
        assert_eq!(
            source_ips(&h, Some("3.3.3.3".parse().unwrap())),
            vec!["1.1.1.1", "2.2.2.2", "3.3.3.3"]
        );
    }

    fn read_lines(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect()
    }

    #[test]
    fn writer_appends_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/audit.log");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "{\"previous\":true}\n").unwrap();
        let policy = AuditPolicy::parse(POLICY).unwrap();
        let log = AuditLog::open(&path, policy).unwrap();
        log.record(record(Some(BODY), None, 201)); // level None: a create of a pod in default
        let mut r = record(None, None, 200);
        r.attributes = non_resource("/healthz");
        r.audit_id = None;
        log.record(r.clone());
        log.record(r.clone());
        let mut omitted = r.clone();
        omitted.stage = Stage::RequestReceived;
        log.record(omitted);
        // Written promptly without an explicit flush.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while read_lines(&path).len() < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        log.flush();
        let lines = read_lines(&path);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0]["previous"], true);
        assert_eq!(
            lines[1]["requestURI"],
            "/api/v1/namespaces/default/pods?fieldManager=kubectl"
        );
        assert_eq!(lines[1]["level"], "Metadata");
        assert_ne!(lines[1]["auditID"], lines[2]["auditID"]);
        assert_eq!(lines[1]["auditID"].as_str().unwrap().len(), 36);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let dir2 = tempfile::tempdir().unwrap();
            let p2 = dir2.path().join("a/b/audit.log");
            let l2 = AuditLog::open(&p2, AuditPolicy::default_metadata()).unwrap();
            l2.record(r);
            l2.flush();
            assert_eq!(
                std::fs::metadata(&p2).unwrap().permissions().mode() & 0o777,
                0o600
            );
            assert_eq!(read_lines(&p2).len(), 1);
        }
    }

    #[test]
    fn queue_is_bounded_and_drains() {
        let mut r = record(None, None, 200);
        r.attributes = non_resource("/healthz");
        // No writer: lines past QUEUE are dropped and counted.
        let (tx, rx) = mpsc::channel();
        let stalled = AuditLog {
            inner: Arc::new(Inner {
                tx,
                queued: Arc::new(AtomicUsize::new(0)),
                policy: AuditPolicy::default_metadata(),
                dropped: AtomicU64::new(0),
            }),
        };
        for _ in 0..QUEUE + 5 {
            stalled.record(r.clone());
        }
        assert_eq!(stalled.dropped(), 5);
        assert_eq!(stalled.inner.queued.load(Ordering::Relaxed), QUEUE);
        assert_eq!(rx.try_iter().count(), QUEUE);
        // With a writer, the count returns to zero once the lines are written.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path, AuditPolicy::default_metadata()).unwrap();
        for _ in 0..100 {
            log.record(r.clone());
        }
        log.flush();
        assert_eq!(log.inner.queued.load(Ordering::Relaxed), 0);
        assert_eq!(log.dropped(), 0);
        assert_eq!(read_lines(&path).len(), 100);
    }

    #[test]
    fn rotation_keeps_max_backups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let opts = RotateOptions {
            max_size_mb: 1,
            max_backups: 2,
            max_age_days: 0,
        };
        let log =
            AuditLog::open_with_rotation(&path, AuditPolicy::default_metadata(), opts).unwrap();
        let big = format!("{{\"x\":\"{}\"}}", "a".repeat(300_000));
        for _ in 0..16 {
            let mut r = record(None, None, 200);
            r.request_uri = big.clone();
            log.record(r);
            log.flush();
            std::thread::sleep(Duration::from_millis(5));
        }
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let backups = names
            .iter()
            .filter(|n| n.starts_with("audit-") && n.ends_with(".log"))
            .count();
        assert_eq!(backups, 2, "{names:?}");
        assert!(std::fs::metadata(&path).unwrap().len() <= 1024 * 1024);
        assert!(read_lines(&path).iter().all(|l| l["kind"] == "Event"));
    }

    #[test]
    fn rotating_file_keeps_records_whole_and_other_logs_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rk3s.log");
        let other = dir.path().join("rk3s-agent.log");
        std::fs::write(&other, "agent\n").unwrap();
        let opts = RotateOptions {
            max_size_mb: 1,
            max_backups: 1,
            max_age_days: 0,
        };
        let mut f = RotatingFile::open(&path, opts).unwrap();
        let block = vec![b'x'; 400 * 1024];
        for i in 0..5u8 {
            let mut rec = block.clone();
            rec.push(b'0' + i);
            rec.push(b'\n');
            f.append(&rec).unwrap();
            std::thread::sleep(Duration::from_millis(3));
        }
        f.flush().unwrap();
        // 5 records of 400 KiB in files of at most 1 MiB: rotated twice, one backup kept.
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names.contains(&"rk3s-agent.log".to_string()));
        assert!(names.contains(&"rk3s.log".to_string()));
        let backup = names
            .iter()
            .find(|n| n.starts_with("rk3s-2"))
            .expect("a backup");
        let current = std::fs::read(&path).unwrap();
        assert_eq!(current.len(), 400 * 1024 + 2);
        assert!(current.ends_with(b"4\n"));
        let b = std::fs::read(dir.path().join(backup)).unwrap();
        assert_eq!(b.len(), 2 * (400 * 1024 + 2));
        assert!(b.ends_with(b"3\n"));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }
}
