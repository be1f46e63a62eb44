//! Entry point of every request: authentication check, non-resource paths (health,
//! version, discovery, OpenAPI), and dispatch of resource requests to [`crate::rest`]
//! and [`crate::watch`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use rk3s_api::{ApiError, Registry, ResourceInfo};
use rk3s_openapi::OpenApi;
use rk3s_store::{Store, StoreError};
use serde_json::{json, Value};

use crate::alloc::{Allocator, Cidr};
use crate::body::{self, Response};
use crate::cache::{set_resource_version, WatchCache};
use crate::object::{self, meta_mut};
use crate::request::{self, Query};
use crate::rest::{self, store_err, Call};
use crate::{ApiServerError, Config, UserInfo};

/// Largest request body accepted (upstream's limit is 3 MiB per object; allow lists).
const MAX_BODY: usize = 8 << 20;

/// Shared state of the API server.
pub struct Inner {
    /// The datastore.
    pub store: Arc<dyn Store>,
    /// The watch cache.
    pub cache: Arc<WatchCache>,
    /// Served resources.
    pub registry: Registry,
    /// OpenAPI documents and schema lookups (rebuilt when CRDs change).
    pub openapi_docs: std::sync::RwLock<Arc<OpenApi>>,
    /// Served custom resources: schemas, scale paths, printer columns.
    pub crds: crate::crd::CrdState,
    /// Service IP / node port allocator.
    pub alloc: Allocator,
    /// Serialises service allocations.
    pub alloc_lock: tokio::sync::Mutex<()>,
    /// Advertised address (for `/api`'s serverAddressByClientCIDRs).
    pub advertise: String,
    /// The RBAC snapshot.
    pub rbac_cache: crate::authz::RbacCache,
    /// Bearer-token authentication and service-account token issuing.
    pub token_auth: crate::authz::TokenAuth,
    /// Request metrics.
    pub metrics: crate::metrics::Metrics,
    /// The audit log, if enabled.
    pub audit: Option<crate::audit::AuditLog>,
    /// The client for kubelet-backed subresources, if configured.
    pub kubelet_client: Option<crate::proxy::KubeletClient>,
    /// Verifies client certificates against the cluster CA after the TLS handshake
    /// (`server::serve`); `None` if the CA could not be read (then every client
    /// certificate is refused with 401).
    pub client_cert_verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
}

/// The API server: cheap to clone, one per process.
#[derive(Clone)]
pub struct ApiServer {
    inner: Arc<Inner>,
}

/// How a response is rendered, from the `Accept` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Plain JSON objects.
    Json,
    /// `meta.k8s.io/v1` `Table` (kubectl get), with `includeObject`.
    Table(rk3s_printers::IncludeObject),
    /// `PartialObjectMetadata(List)`.
    PartialMetadata,
}

impl Output {
    /// Picks the rendering from the Accept header and query.
    pub fn negotiate(headers: &http::HeaderMap, query: &Query) -> Output {
        let accept = headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        for range in accept.split(',') {
            let mut parts = range.split(';').map(|s| s.trim());
            let mt = parts.next().unwrap_or("");
            if mt != "application/json" && mt != "*/*" && mt != "application/*" {
                continue;
            }
            let mut as_ = "";
            let mut g = "";
            for p in parts {
                if let Some(v) = p.strip_prefix("as=") {
                    as_ = v;
                } else if let Some(v) = p.strip_prefix("g=") {
                    g = v;
                }
            }
            match (as_, g) {
                ("Table", "meta.k8s.io") => {
                    let inc = match query.get("includeObject") {
                        Some("None") => rk3s_printers::IncludeObject::None,
                        Some("Object") => rk3s_printers::IncludeObject::Object,
                        _ => rk3s_printers::IncludeObject::Metadata,
                    };
                    return Output::Table(inc);
                }
                ("PartialObjectMetadata" | "PartialObjectMetadataList", "meta.k8s.io") => {
                    return Output::PartialMetadata
                }
                ("", _) => return Output::Json,
                _ => continue,
            }
        }
        Output::Json
    }

    /// Whether upstream serves a `Table` for the resource (or subresource): only
    /// storages that list (or convert to tables themselves) have a Table convertor;
    /// create-only resources (reviews, `bindings`) and the `binding`, `eviction` and
    /// `token` subresources have none.
    pub fn has_table(res: &ResourceInfo, subresource: Option<&str>) -> bool {
        match subresource {
            Some("binding" | "eviction" | "token") => false,
            Some(_) => true,
            None => res.has_verb("list"),
        }
    }

    /// Whether the Accept header asks only for `meta.k8s.io` Tables: every media range
    /// names `as=Table;g=meta.k8s.io` (so there is no fallback to plain objects).
    pub fn only_table_accepted(headers: &http::HeaderMap) -> bool {
        let accept = headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mut any = false;
        for range in accept.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let params: Vec<&str> = range.split(';').skip(1).map(str::trim).collect();
            if !(params.contains(&"as=Table") && params.contains(&"g=meta.k8s.io")) {
                return false;
            }
            any = true;
        }
        any
    }

    /// Renders one object.
    pub fn one(&self, res: &ResourceInfo, obj: Value, code: u16) -> Response {
        match self {
            Output::Json => body::json(code, &obj),
            Output::Table(inc) => {
                let rv = object::meta_str(&obj, "resourceVersion")
                    .unwrap_or("")
                    .to_string();
                let t = rk3s_printers::table(
                    &res.group,
                    &res.kind,
                    std::slice::from_ref(&obj),
                    &rv,
                    None,
                    *inc,
                    jiff::Timestamp::now(),
                );
                body::json(code, &t)
            }
            Output::PartialMetadata => body::json(code, &partial_metadata(&obj)),
        }
    }

    /// Renders a list.
    pub fn list(
        &self,
        res: &ResourceInfo,
        items: Vec<Value>,
        rv: i64,
        cont: Option<String>,
        remaining: Option<usize>,
    ) -> Response {
        match self {
            Output::Json => body::json(200, &rest::list_object(res, items, rv, cont, remaining)),
            Output::Table(inc) => {
                let t = rk3s_printers::table(
                    &res.group,
                    &res.kind,
                    &items,
                    &rv.to_string(),
                    cont.as_deref(),
                    *inc,
                    jiff::Timestamp::now(),
                );
                body::json(200, &t)
            }
            Output::PartialMetadata => {
                let mut meta = json!({"resourceVersion": rv.to_string()});
                if let Some(c) = cont {
                    meta["continue"] = json!(c);
                }
                body::json(
                    200,
                    &json!({
                        "kind": "PartialObjectMetadataList",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": meta,
                        "items": items.iter().map(partial_metadata).collect::<Vec<_>>(),
                    }),
                )
            }
        }
    }
}

/// `PartialObjectMetadata` of an object.
pub fn partial_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
    })
}

/// Kinds whose `metadata.generation` upstream maintains.
pub fn tracks_generation(res: &ResourceInfo) -> bool {
    matches!(
        (res.group.as_str(), res.kind.as_str()),
        (
            "apps",
            "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet"
        ) | ("batch", _)
            | ("", "ReplicationController")
            | ("policy", "PodDisruptionBudget")
            | ("autoscaling", "HorizontalPodAutoscaler")
            | (
                "networking.k8s.io",
                "Ingress" | "NetworkPolicy" | "IngressClass"
            )
            | ("apiextensions.k8s.io", _)
            | ("admissionregistration.k8s.io", _)
            | ("flowcontrol.apiserver.k8s.io", _)
    ) || res.definition.is_empty()
}

/// Conversions upstream does when decoding a request into its internal form: a Secret's
/// `stringData` is merged into `data` (base64) and dropped.
pub fn normalize_input(res: &ResourceInfo, obj: &mut Value) {
    if res.group.is_empty() && res.plural == "secrets" {
        use base64::Engine;
        let Some(o) = obj.as_object_mut() else { return };
        if let Some(Value::Object(sd)) = o.remove("stringData") {
            let data = o.entry("data").or_insert_with(|| json!({}));
            if !data.is_object() {
                *data = json!({});
            }
            if let Some(d) = data.as_object_mut() {
                for (k, v) in sd {
                    let text = v
                        .as_str()
                        .map(String::from)
                        .unwrap_or_else(|| v.to_string());
                    d.insert(
                        k,
                        json!(base64::engine::general_purpose::STANDARD.encode(text.as_bytes())),
                    );
                }
            }
        }
    }
}

/// Mutating admission of a new Pod, in upstream's order: ServiceAccount (default
/// service account, projected token volume unless opted out), Priority (priority 0
/// unless a PriorityClass says otherwise), DefaultTolerationSeconds (not-ready and
/// unreachable NoExecute tolerations of 300 s), RuntimeClass (overhead, node selector
/// and tolerations of the pod's RuntimeClass; 403 when it does not exist, or conflicts).
pub async fn admit_pod(inner: &Inner, obj: &mut Value) -> Result<(), ApiError> {
    let ns = object::namespace(obj).unwrap_or("").to_string();
    let name = object::name(obj).unwrap_or("").to_string();
    // Mirror pods (the API copies of a kubelet's static pods) get no service account or
    // token volume, as upstream: the kubelet runs the static pod's spec, not the mirror's.
    let mirror = obj
        .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
        .is_some();
    let Some(spec) = obj.get_mut("spec").and_then(|s| s.as_object_mut()) else {
        return Ok(());
    };
    // ServiceAccount
    if !mirror {
        admit_service_account(inner, &ns, spec);
    }
    admit_priority_and_tolerations(inner, spec);
    let class = match spec.get("runtimeClassName").and_then(|c| c.as_str()) {
        Some(c) => runtime_class(inner, c).await?,
        None => None,
    };
    crate::runtimeclass::admit(spec, class.as_ref()).map_err(|m| {
        let message = if name.is_empty() {
            format!("pods is forbidden: {m}")
        } else {
            format!("pods {name:?} is forbidden: {m}")
        };
        let mut e = ApiError::forbidden(message);
        e.name = Some(name.clone());
        e.kind = Some("pods".into());
        e
    })
}

/// A RuntimeClass by name: from the watch cache, else (the cache may lag behind a class
/// created just now) from the store, as upstream's live lookup.
async fn runtime_class(inner: &Inner, name: &str) -> Result<Option<Value>, ApiError> {
    let key = format!("/registry/node.k8s.io/runtimeclasses/{name}");
    if let Some(c) = inner.cache.get(&key) {
        return Ok(Some((*c.object).clone()));
    }
    match inner.store.get(&key).await {
        Ok(kv) => Ok(kv.and_then(|kv| serde_json::from_slice(&kv.value).ok())),
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}

/// ServiceAccount admission: the default service account and its token volume.
fn admit_service_account(inner: &Inner, ns: &str, spec: &mut serde_json::Map<String, Value>) {
    let sa_name = spec
        .get("serviceAccountName")
        .and_then(|s| s.as_str())
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string();
    spec.insert("serviceAccountName".into(), json!(sa_name));
    spec.insert("serviceAccount".into(), json!(sa_name));
    let sa = inner
        .cache
        .get(&format!("/registry/core/serviceaccounts/{ns}/{sa_name}"));
    let sa_automount = sa
        .as_ref()
        .and_then(|s| s.object.get("automountServiceAccountToken"))
        .and_then(|a| a.as_bool());
    let pod_automount = spec
        .get("automountServiceAccountToken")
        .and_then(|a| a.as_bool());
    let automount = pod_automount.or(sa_automount).unwrap_or(true);
    // A pod that names no image pull secrets gets its service account's.
    let pod_secrets = spec
        .get("imagePullSecrets")
        .and_then(|s| s.as_array())
        .is_some_and(|a| !a.is_empty());
    if !pod_secrets {
        if let Some(secrets) = sa
            .as_ref()
            .and_then(|s| s.object.get("imagePullSecrets"))
            .and_then(|s| s.as_array())
            .filter(|a| !a.is_empty())
        {
            spec.insert("imagePullSecrets".into(), Value::Array(secrets.clone()));
        }
    }
    const MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
    let already = ["containers", "initContainers"].iter().any(|k| {
        spec.get(*k).and_then(|c| c.as_array()).is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("volumeMounts")
                    .and_then(|m| m.as_array())
                    .is_some_and(|ms| {
                        ms.iter()
                            .any(|m| m.get("mountPath").and_then(|p| p.as_str()) == Some(MOUNT))
                    })
            })
        })
    });
    if automount && !already {
        let vol_name = format!("kube-api-access-{}", object::random_suffix());
        let volume = json!({"name": vol_name, "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ]}});
        let vols = spec.entry("volumes").or_insert_with(|| json!([]));
        if let Some(v) = vols.as_array_mut() {
            v.push(volume);
        }
        for k in ["containers", "initContainers"] {
            if let Some(cs) = spec.get_mut(k).and_then(|c| c.as_array_mut()) {
                for c in cs {
                    if let Some(co) = c.as_object_mut() {
                        let mounts = co.entry("volumeMounts").or_insert_with(|| json!([]));
                        if let Some(m) = mounts.as_array_mut() {
                            m.push(json!({"name": vol_name, "readOnly": true, "mountPath": MOUNT}));
                        }
                    }
                }
            }
        }
    }
}

/// Priority admission and DefaultTolerationSeconds.
fn admit_priority_and_tolerations(inner: &Inner, spec: &mut serde_json::Map<String, Value>) {
    let class = spec
        .get("priorityClassName")
        .and_then(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .map(String::from);
    let (prio, policy) = match class {
        Some(c) => match inner
            .cache
            .get(&format!("/registry/scheduling.k8s.io/priorityclasses/{c}"))
        {
            Some(pc) => (
                pc.object.get("value").and_then(|v| v.as_i64()).unwrap_or(0),
                pc.object
                    .get("preemptionPolicy")
                    .and_then(|v| v.as_str())
                    .unwrap_or("PreemptLowerPriority")
                    .to_string(),
            ),
            None if c == "system-node-critical" => (2_000_001_000, "PreemptLowerPriority".into()),
            None if c == "system-cluster-critical" => {
                (2_000_000_000, "PreemptLowerPriority".into())
            }
            None => (0, "PreemptLowerPriority".into()),
        },
        None => (0, "PreemptLowerPriority".into()),
    };
    spec.entry("priority").or_insert(json!(prio));
    spec.entry("preemptionPolicy").or_insert(json!(policy));
    // DefaultTolerationSeconds
    let tols = spec.entry("tolerations").or_insert_with(|| json!([]));
    if let Some(t) = tols.as_array_mut() {
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            let has = t.iter().any(|x| {
                let k = x.get("key").and_then(|k| k.as_str());
                let e = x.get("effect").and_then(|k| k.as_str()).unwrap_or("");
                (k == Some(key)
                    || (k.is_none()
                        && x.get("operator").and_then(|o| o.as_str()) == Some("Exists")))
                    && (e.is_empty() || e == "NoExecute")
            });
            if !has {
                t.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
            }
        }
    }
}

/// Escalation prevention for RBAC writes: a Role/ClusterRole may only grant what the
/// writer holds (unless allowed `escalate`); a binding only to a role whose permissions
/// the writer holds (unless allowed `bind` on it).
pub fn check_rbac_escalation(
    inner: &Inner,
    res: &ResourceInfo,
    user: &UserInfo,
    obj: &Value,
) -> Result<(), ApiError> {
    if res.group != "rbac.authorization.k8s.io" {
        return Ok(());
    }
    let ns = object::namespace(obj).unwrap_or("").to_string();
    let name = object::name(obj).unwrap_or("").to_string();
    let allowed = |verb: &str, resource: &str, rname: &str| {
        inner
            .decide(&rk3s_auth::Attributes::resource(
                user.clone(),
                verb,
                &ns,
                "rbac.authorization.k8s.io",
                resource,
                "",
                rname,
            ))
            .is_allowed()
    };
    let rules: Vec<rk3s_auth::PolicyRule> = match res.plural.as_str() {
        "roles" | "clusterroles" => {
            if allowed("escalate", &res.plural, &name) {
                return Ok(());
            }
            obj.get("rules")
                .and_then(|r| r.as_array())
                .map(|a| a.iter().map(rk3s_auth::PolicyRule::from_json).collect())
                .unwrap_or_default()
        }
        "rolebindings" | "clusterrolebindings" => {
            let kind = obj
                .pointer("/roleRef/kind")
                .and_then(|k| k.as_str())
                .unwrap_or("");
            let rname = obj
                .pointer("/roleRef/name")
                .and_then(|k| k.as_str())
                .unwrap_or("");
            let plural = if kind == "ClusterRole" {
                "clusterroles"
            } else {
                "roles"
            };
            if allowed("bind", plural, rname) {
                return Ok(());
            }
            let snap = inner.rbac();
            if kind == "ClusterRole" {
                snap.cluster_role_rules(rname)
                    .map(|r| r.to_vec())
                    .unwrap_or_default()
            } else {
                inner
                    .cache
                    .get(&format!(
                        "/registry/rbac.authorization.k8s.io/roles/{ns}/{rname}"
                    ))
                    .and_then(|r| {
                        r.object
                            .get("rules")
                            .and_then(|r| r.as_array())
                            .map(|a| a.iter().map(rk3s_auth::PolicyRule::from_json).collect())
                    })
                    .unwrap_or_default()
            }
        }
        _ => return Ok(()),
    };
    inner
        .rbac()
        .confirm_no_escalation(user, &ns, &rules)
        .map_err(|msg| {
            let mut e = ApiError::forbidden(format!(
                "{} \"{}\" is forbidden: {}",
                res.qualified_plural(),
                name,
                msg
            ));
            e.name = Some(name.clone());
            e.group = Some(res.group.clone());
            e.kind = Some(res.plural.clone());
            e
        })
}

/// Resource-specific preparation of a new object (upstream's PrepareForCreate).
pub fn prepare_create(res: &ResourceInfo, obj: &mut Value) {
    let Some(o) = obj.as_object_mut() else { return };
    match (res.group.as_str(), res.plural.as_str()) {
        ("", "pods") => {
            let qos = qos_class(o.get("spec"));
            o.insert(
                "status".into(),
                json!({"phase": "Pending", "qosClass": qos}),
            );
        }
        ("", "namespaces") => {
            o.insert("status".into(), json!({"phase": "Active"}));
        }
        ("", "persistentvolumeclaims") | ("", "persistentvolumes") => {
            o.insert("status".into(), json!({"phase": "Pending"}));
        }
        ("", "nodes") => {}
        ("batch", "jobs") => {
            o.insert("status".into(), json!({}));
            let uid = o
                .get("metadata")
                .and_then(|m| m.get("uid"))
                .and_then(|u| u.as_str())
                .unwrap_or("")
                .to_string();
            let name = o
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(|u| u.as_str())
                .unwrap_or("")
                .to_string();
            let manual = o
                .get("spec")
                .and_then(|s| s.get("manualSelector"))
                .and_then(|m| m.as_bool())
                .unwrap_or(false);
            if !manual && !uid.is_empty() {
                // Upstream's Job strategy: a generated selector on the Job's uid and the
                // matching labels on its pod template.
                if let Some(spec) = o.get_mut("spec").and_then(|s| s.as_object_mut()) {
                    spec.insert(
                        "selector".into(),
                        json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
                    );
                    let tmpl = spec.entry("template").or_insert_with(|| json!({}));
                    if let Some(t) = tmpl.as_object_mut() {
                        let meta = t.entry("metadata").or_insert_with(|| json!({}));
                        if let Some(m) = meta.as_object_mut() {
                            let labels = m.entry("labels").or_insert_with(|| json!({}));
                            if let Some(l) = labels.as_object_mut() {
                                l.insert("batch.kubernetes.io/controller-uid".into(), json!(uid));
                                l.insert("batch.kubernetes.io/job-name".into(), json!(name));
                                l.insert("controller-uid".into(), json!(uid));
                                l.insert("job-name".into(), json!(name));
                            }
                        }
                    }
                }
            }
        }
        _ => {
            if res.subresource("status").is_some() {
                o.insert("status".into(), json!({}));
            }
        }
    }
}

fn qos_class(spec: Option<&Value>) -> &'static str {
    let containers: Vec<&Value> = spec
        .and_then(|s| s.get("containers"))
        .and_then(|c| c.as_array())
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for c in &containers {
        let req = c.pointer("/resources/requests").and_then(|r| r.as_object());
        let lim = c.pointer("/resources/limits").and_then(|r| r.as_object());
        if req.is_some_and(|r| !r.is_empty()) || lim.is_some_and(|l| !l.is_empty()) {
            any = true;
        }
        for r in ["cpu", "memory"] {
            let l = lim.and_then(|l| l.get(r));
            let q = req.and_then(|q| q.get(r)).or(l);
            if l.is_none() || q != l {
                guaranteed = false;
            }
        }
    }
    if guaranteed {
        "Guaranteed"
    } else if any {
        "Burstable"
    } else {
        "BestEffort"
    }
}

/// Keeps the values the server allocated to a Service that an update leaves out, as
/// upstream's `patchAllocatedValues` (before validation, so that e.g. `kubectl replace`
/// of a manifest without `clusterIP` is not an immutable-field change): `clusterIP`,
/// `clusterIPs`, `ipFamilies` and `ipFamilyPolicy` while both need a cluster IP, node
/// ports by port name while both need node ports (unless the new ports use that value
/// already), `healthCheckNodePort` while both need one.
pub fn patch_allocated_values(new: &mut Value, old: &Value) {
    let typ = |v: &Value| {
        v.pointer("/spec/type")
            .and_then(|t| t.as_str())
            .unwrap_or("ClusterIP")
            .to_string()
    };
    let (new_type, old_type) = (typ(new), typ(old));
    let needs_ip = |t: &str| t != "ExternalName";
    let needs_node_port = |t: &str| t == "NodePort" || t == "LoadBalancer";
    let needs_hc = |v: &Value, t: &str| {
        t == "LoadBalancer"
            && v.pointer("/spec/externalTrafficPolicy")
                .and_then(|p| p.as_str())
                == Some("Local")
    };
    let old_spec = old.get("spec").cloned().unwrap_or(Value::Null);
    let needs_hc_both = needs_hc(old, &old_type) && needs_hc(new, &new_type);
    let Some(spec) = new.get_mut("spec").and_then(|s| s.as_object_mut()) else {
        return;
    };
    let missing = |v: Option<&Value>| match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Number(n)) => n.as_i64() == Some(0),
        _ => false,
    };
    if needs_ip(&old_type) && needs_ip(&new_type) {
        for k in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            if missing(spec.get(k)) && !missing(old_spec.get(k)) {
                if let Some(v) = old_spec.get(k) {
                    spec.insert(k.to_string(), v.clone());
                }
            }
        }
    }
    if needs_node_port(&old_type) && needs_node_port(&new_type) {
        let node_ports = |ports: Option<&Value>| -> std::collections::HashSet<i64> {
            ports
                .and_then(|p| p.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|p| p.get("nodePort").and_then(|n| n.as_i64()))
                        .filter(|n| *n != 0)
                        .collect()
                })
                .unwrap_or_default()
        };
        let used: std::collections::HashSet<i64> = node_ports(old_spec.get("ports"))
            .intersection(&node_ports(spec.get("ports")))
            .copied()
            .collect();
        let by_name: std::collections::HashMap<String, i64> = old_spec
            .get("ports")
            .and_then(|p| p.as_array())
            .map(|a| {
                a.iter()
                    .map(|p| {
                        (
                            p.get("name")
                                .and_then(|n| n.as_str())
                                .unwrap_or("")
                                .to_string(),
                            p.get("nodePort").and_then(|n| n.as_i64()).unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        if let Some(ports) = spec.get_mut("ports").and_then(|p| p.as_array_mut()) {
            for p in ports.iter_mut() {
                if !missing(p.get("nodePort")) {
                    continue;
                }
                let name = p
                    .get("name")
                    .and_then(|n| n.as_str())
                    .unwrap_or("")
                    .to_string();
                if let Some(&np) = by_name
                    .get(&name)
                    .filter(|np| **np != 0 && !used.contains(np))
                {
                    if let Some(po) = p.as_object_mut() {
                        po.insert("nodePort".into(), json!(np));
                    }
                }
            }
        }
    }
    if needs_hc_both
        && missing(spec.get("healthCheckNodePort"))
        && !missing(old_spec.get("healthCheckNodePort"))
    {
        if let Some(v) = old_spec.get("healthCheckNodePort") {
            spec.insert("healthCheckNodePort".into(), v.clone());
        }
    }
}

/// Builds the stored form of an update (upstream's PrepareForUpdate): immutable metadata
/// comes from `old`; a main-resource update keeps `old`'s status, a `status` update keeps
/// everything but status; `generation` is bumped when the spec changes.
pub fn prepare_update(
    res: &ResourceInfo,
    sub: Option<&str>,
    old: &Value,
    new: &mut Value,
) -> Value {
    let mut out = match sub {
        Some("approval") => {
            // Only the approval conditions change (kubectl certificate approve|deny).
            let mut o = old.clone();
            let conds = new
                .pointer("/status/conditions")
                .cloned()
                .unwrap_or_else(|| json!([]));
            if let Some(oo) = o.as_object_mut() {
                let st = oo.entry("status").or_insert_with(|| json!({}));
                if let Some(m) = st.as_object_mut() {
                    m.insert("conditions".into(), conds);
                }
            }
            o
        }
        Some("status") => {
            let mut o = old.clone();
            if let (Some(oo), Some(s)) = (o.as_object_mut(), new.get("status")) {
                oo.insert("status".into(), s.clone());
            }
            o
        }
        Some("ephemeralcontainers") => crate::ephemeral::prepare_update(old, new),
        Some("resize") => crate::resize::prepare_update(old, new),
        _ => {
            let mut n = new.clone();
            if res.subresource("status").is_some() {
                if let Some(no) = n.as_object_mut() {
                    match old.get("status") {
                        Some(s) => {
                            no.insert("status".into(), s.clone());
                        }
                        None => {
                            no.remove("status");
                        }
                    }
                }
            }
            n
        }
    };
    let old_meta = object::meta(old).cloned().unwrap_or_default();
    if let Some(m) = meta_mut(&mut out) {
        for k in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "namespace",
            "name",
            "generation",
        ] {
            match old_meta.get(k) {
                Some(v) => {
                    m.insert(k.into(), v.clone());
                }
                None => {
                    m.remove(k);
                }
            }
        }
        m.insert(
            "resourceVersion".into(),
            old_meta
                .get("resourceVersion")
                .cloned()
                .unwrap_or(Value::Null),
        );
        m.remove("selfLink");
    }
    if tracks_generation(res) && object::spec_part(&out) != object::spec_part(old) {
        let g = old_meta
            .get("generation")
            .and_then(|g| g.as_i64())
            .unwrap_or(0)
            + 1;
        if let Some(m) = meta_mut(&mut out) {
            m.insert("generation".into(), json!(g));
        }
    }
    out
}

/// A Namespace's `spec.finalizers` after an update (call after defaulting, which
/// would add `kubernetes` back): `namespaces/{name}/finalize` replaces them with the
/// request's (an empty list is stored as none, as upstream encodes it); every other
/// write keeps the stored ones (upstream's namespace strategy).
pub fn namespace_finalizers(sub: Option<&str>, request: &Value, old: &Value, new: &mut Value) {
    let source = if sub == Some("finalize") {
        request
    } else {
        old
    };
    let finalizers = source
        .pointer("/spec/finalizers")
        .filter(|f| !f.is_null())
        .cloned();
    let finalizers = match finalizers {
        Some(Value::Array(a)) if a.is_empty() && sub == Some("finalize") => None,
        other => other,
    };
    let Some(o) = new.as_object_mut() else { return };
    let spec = o.entry("spec").or_insert_with(|| json!({}));
    if !spec.is_object() {
        *spec = json!({});
    }
    if let Some(sm) = spec.as_object_mut() {
        match finalizers {
            Some(f) => {
                sm.insert("finalizers".into(), f);
            }
            None => {
                sm.remove("finalizers");
            }
        }
    }
}

/// The field manager of a request: `?fieldManager=`, else the User-Agent's product
/// (`kubectl`), as upstream.
pub fn field_manager(query: &Query, headers: &http::HeaderMap) -> String {
    query
        .get("fieldManager")
        .map(String::from)
        .unwrap_or_else(|| {
            headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|ua| ua.split('/').next().unwrap_or(ua).to_string())
                .unwrap_or_else(|| "unknown".into())
        })
}

/// Records a non-apply write in `metadata.managedFields` (server-side apply's field
/// ownership: fields this write changed move to its manager).
pub fn update_managed_fields(
    inner: &Inner,
    res: &ResourceInfo,
    obj: &mut Value,
    old: Option<&Value>,
    query: &Query,
    headers: &http::HeaderMap,
    subresource: Option<&str>,
) {
    let manager = field_manager(query, headers);
    let oa = inner.openapi();
    let derived = rk3s_patch::DerivedApplySchema(&*oa);
    let cache = apply_type_cache(&oa);
    let schema = rk3s_patch::CachedApplySchema {
        schema: &derived,
        cache: &cache,
    };
    let api_version = res.api_version();
    rk3s_patch::track_update(
        old,
        obj,
        &manager,
        &schema,
        &res.definition,
        &object::now_rfc3339(),
        &api_version,
        subresource,
    );
}

/// The field types server-side apply resolved from `oa`, kept while `oa` is the
/// current OpenAPI document (a rebuilt document, e.g. after a CRD change, starts a
/// new cache). The `Weak` pins the document's allocation, so its address cannot be
/// reused by another document while the cache refers to it.
pub fn apply_type_cache(oa: &Arc<OpenApi>) -> Arc<rk3s_patch::TypeCache> {
    type Slot = Option<(std::sync::Weak<OpenApi>, Arc<rk3s_patch::TypeCache>)>;
    static CACHE: std::sync::Mutex<Slot> = std::sync::Mutex::new(None);
    let mut slot = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((doc, cache)) = slot.as_ref() {
        if std::ptr::eq(doc.as_ptr(), Arc::as_ptr(oa)) {
            return cache.clone();
        }
    }
    let cache = Arc::new(rk3s_patch::TypeCache::new());
    *slot = Some((Arc::downgrade(oa), cache.clone()));
    cache
}

impl Inner {
    /// The current OpenAPI documents.
    pub fn openapi(&self) -> Arc<OpenApi> {
        match self.openapi_docs.read() {
            Ok(o) => o.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// 404 if the namespace does not exist, 403 if it is terminating.
    pub async fn check_namespace_open(
        &self,
        ns: &str,
        res: &ResourceInfo,
        name: &str,
    ) -> Result<(), ApiError> {
        let kv = self
            .store
            .get(&format!("/registry/core/namespaces/{ns}"))
            .await
            .map_err(|e| store_err(res, name, e))?;
        let Some(kv) = kv else {
            return Err(ApiError::not_found_named("namespaces", "", ns));
        };
        let phase = serde_json::from_slice::<Value>(&kv.value)
            .ok()
            .and_then(|v| {
                v.pointer("/status/phase")
                    .and_then(|p| p.as_str())
                    .map(String::from)
            });
        if phase.as_deref() == Some("Terminating") {
            let mut e = ApiError::forbidden(format!(
                "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                res.qualified_plural(),
                name
            ));
            e.name = Some(name.to_string());
            e.kind = Some(res.plural.clone());
            return Err(e);
        }
        Ok(())
    }

    /// Gives a Service its cluster IP(s) and node ports (keeping those of `old`).
    pub fn allocate_service(
        &self,
        obj: &mut Value,
        old: Option<&Value>,
        res: &ResourceInfo,
        name: &str,
    ) -> Result<(), ApiError> {
        let (svcs, _) = self.cache.list("/registry/core/services/");
        let own_key = obj
            .get("metadata")
            .map(|_| res.key(object::namespace(obj), name))
            .unwrap_or_default();
        let others: Vec<_> = svcs.into_iter().filter(|o| o.key != own_key).collect();
        let (ips, ports) = rest::services_in_use(&others);
        let invalid = |field: &str, msg: String| {
            ApiError::invalid(
                res,
                name,
                vec![rk3s_api::Cause {
                    reason: "FieldValueInvalid".into(),
                    message: msg,
                    field: field.into(),
                }],
            )
        };
        let typ = obj
            .pointer("/spec/type")
            .and_then(|t| t.as_str())
            .unwrap_or("ClusterIP")
            .to_string();
        if typ != "ExternalName" {
            let old_ip = old
                .and_then(|o| o.pointer("/spec/clusterIP"))
                .and_then(|v| v.as_str())
                .map(String::from);
            let want = obj
                .pointer("/spec/clusterIP")
                .and_then(|v| v.as_str())
                .map(String::from);
            let ip = match (want.as_deref(), old_ip) {
                (Some("None"), _) => "None".to_string(),
                (Some(w), Some(o)) if !w.is_empty() && w == o => o,
                (None | Some(""), Some(o)) => o,
                (Some(w), _) if !w.is_empty() => {
                    let parsed = w.parse().map_err(|_| {
                        invalid(
                            "spec.clusterIPs[0]",
                            format!("Invalid value: \"{w}\": must be a valid IP address"),
                        )
                    })?;
                    self.alloc
                        .allocate_ip(Some(parsed), &ips)
                        .map_err(|e| invalid("spec.clusterIPs", format!("Invalid value: []string{{\"{w}\"}}: failed to allocate IP {w}: {e}")))?
                        .to_string()
                }
                _ => self
                    .alloc
                    .allocate_ip(None, &ips)
                    .map_err(|e| {
                        ApiError::internal(format!("failed to allocate a serviceIP: {e}"))
                    })?
                    .to_string(),
            };
            if let Some(spec) = obj.get_mut("spec").and_then(|s| s.as_object_mut()) {
                spec.insert("clusterIP".into(), json!(ip));
                spec.insert("clusterIPs".into(), json!([ip]));
                if ip != "None" || !spec.contains_key("ipFamilies") {
                    spec.insert("ipFamilies".into(), json!(["IPv4"]));
                }
                spec.entry("ipFamilyPolicy").or_insert(json!("SingleStack"));
            }
        }
        if typ == "NodePort" || typ == "LoadBalancer" {
            let old_ports: Vec<Value> = old
                .and_then(|o| o.pointer("/spec/ports"))
                .and_then(|p| p.as_array())
                .cloned()
                .unwrap_or_default();
            let mut used_here = std::collections::HashSet::new();
            if let Some(ps) = obj
                .pointer_mut("/spec/ports")
                .and_then(|p| p.as_array_mut())
            {
                for (i, p) in ps.iter_mut().enumerate() {
                    let want = p.get("nodePort").and_then(|v| v.as_u64()).map(|v| v as u16);
                    let port = p.get("port").cloned();
                    let keep = old_ports
                        .iter()
                        .find(|op| op.get("port") == port.as_ref())
                        .and_then(|op| op.get("nodePort"))
                        .and_then(|v| v.as_u64())
                        .map(|v| v as u16);
                    let np = match (want, keep) {
                        (Some(w), Some(k)) if w == k => k,
                        (None, Some(k)) => k,
                        (w, _) => {
                            let mut in_use = ports.clone();
                            in_use.extend(used_here.iter().copied());
                            self.alloc.allocate_port(w, &in_use).map_err(|e| {
                                invalid(
                                    &format!("spec.ports[{i}].nodePort"),
                                    format!(
                                        "Invalid value: {}: {e}",
                                        w.map(|x| x.to_string()).unwrap_or_default()
                                    ),
                                )
                            })?
                        }
                    };
                    used_here.insert(np);
                    p["nodePort"] = json!(np);
                }
            }
        }
        Ok(())
    }

    /// Deletes one object with upstream's semantics: finalizers and graceful deletion
    /// set `deletionTimestamp` instead; preconditions are checked. Returns the HTTP code
    /// and the object (as deleted, or as now marked for deletion).
    pub async fn delete_object(
        &self,
        res: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        opts: &Value,
        dry_run: bool,
    ) -> Result<(u16, Value), ApiError> {
        let key = res.key(ns, name);
        for _ in 0..16 {
            let kv = self
                .store
                .get(&key)
                .await
                .map_err(|e| store_err(res, name, e))?;
            let kv = kv.ok_or_else(|| ApiError::not_found(res, name))?;
            let mut obj = crate::cache::decode(&kv.value, kv.mod_revision)
                .ok_or_else(|| ApiError::internal("undecodable object"))?;
            if let Some(uid) = opts.pointer("/preconditions/uid").and_then(|u| u.as_str()) {
                if object::meta_str(&obj, "uid") != Some(uid) {
                    return Err(ApiError::conflict_msg(
                        res,
                        name,
                        format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        object::meta_str(&obj, "uid").unwrap_or("")
                    ),
                    ));
                }
            }
            if let Some(rv) = opts
                .pointer("/preconditions/resourceVersion")
                .and_then(|u| u.as_str())
            {
                if rv != kv.mod_revision.to_string() {
                    return Err(ApiError::conflict_msg(res, name, format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                        kv.mod_revision
                    )));
                }
            }
            let already = object::meta(&obj).is_some_and(|m| m.contains_key("deletionTimestamp"));
            let is_namespace = res.group.is_empty() && res.plural == "namespaces";
            let graceful_pod = res.group.is_empty()
                && res.plural == "pods"
                && obj
                    .pointer("/spec/nodeName")
                    .and_then(|n| n.as_str())
                    .is_some_and(|n| !n.is_empty())
                && opts
                    .get("gracePeriodSeconds")
                    .and_then(|g| g.as_i64())
                    .unwrap_or(1)
                    > 0
                && !matches!(
                    obj.pointer("/status/phase").and_then(|p| p.as_str()),
                    Some("Succeeded" | "Failed")
                );
            // Foreground and orphan deletion are carried out by the garbage collector
            // through these finalizers, as upstream.
            let policy = opts
                .get("propagationPolicy")
                .and_then(|p| p.as_str())
                .map(String::from)
                .or_else(|| {
                    (opts.get("orphanDependents").and_then(|o| o.as_bool()) == Some(true))
                        .then(|| "Orphan".to_string())
                });
            let gc_finalizer = match policy.as_deref() {
                Some("Foreground") => Some("foregroundDeletion"),
                Some("Orphan") => Some("orphan"),
                _ => None,
            };
            if let Some(f) = gc_finalizer {
                if !already && !object::finalizers(&obj).iter().any(|x| x == f) {
                    if let Some(m) = meta_mut(&mut obj) {
                        let list = m.entry("finalizers").or_insert_with(|| json!([]));
                        if let Some(a) = list.as_array_mut() {
                            a.push(json!(f));
                        }
                    }
                }
            }
            let has_finalizers = !object::finalizers(&obj).is_empty();
            if has_finalizers || is_namespace || graceful_pod {
                if already {
                    return Ok((if graceful_pod { 202 } else { 200 }, obj));
                }
                let grace = if graceful_pod {
                    opts.get("gracePeriodSeconds")
                        .and_then(|g| g.as_i64())
                        .or_else(|| {
                            obj.pointer("/spec/terminationGracePeriodSeconds")
                                .and_then(|g| g.as_i64())
                        })
                        .unwrap_or(30)
                } else {
                    0
                };
                let ts = jiff::Timestamp::now()
                    .checked_add(jiff::SignedDuration::from_secs(grace))
                    .unwrap_or_else(|_| jiff::Timestamp::now())
                    .strftime("%Y-%m-%dT%H:%M:%SZ")
                    .to_string();
                if let Some(m) = meta_mut(&mut obj) {
                    m.insert("deletionTimestamp".into(), json!(ts));
                    m.insert("deletionGracePeriodSeconds".into(), json!(grace));
                    m.remove("resourceVersion");
                }
                if is_namespace {
                    if let Some(o) = obj.as_object_mut() {
                        o.insert("status".into(), json!({"phase": "Terminating"}));
                    }
                }
                if dry_run {
                    return Ok((200, obj));
                }
                let bytes =
                    serde_json::to_vec(&obj).map_err(|e| ApiError::internal(e.to_string()))?;
                match self.store.update(&key, bytes, kv.mod_revision).await {
                    Ok(nkv) => {
                        set_resource_version(&mut obj, nkv.mod_revision);
                        return Ok((if graceful_pod { 202 } else { 200 }, obj));
                    }
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(store_err(res, name, e)),
                }
            }
            if dry_run {
                return Ok((200, obj));
            }
            match self.store.delete(&key, Some(kv.mod_revision)).await {
                Ok(dkv) => {
                    set_resource_version(&mut obj, dkv.mod_revision);
                    if let Some(ns) = ns {
                        if !self
                            .cache
                            .list(&format!("/registry/core/resourcequotas/{ns}/"))
                            .0
                            .is_empty()
                        {
                            self.cache
                                .wait_for(dkv.mod_revision, Duration::from_secs(2))
                                .await;
                            crate::admission::refresh_quotas(self, ns).await;
                        }
                    }
                    return Ok((200, obj));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound(_)) => return Err(ApiError::not_found(res, name)),
                Err(e) => return Err(store_err(res, name, e)),
            }
        }
        Err(ApiError::conflict(res, name))
    }
}

impl ApiServer {
    /// Creates the server state: watch cache, OpenAPI documents, built-in objects.
    pub async fn new(config: &Config) -> Result<ApiServer, ApiServerError> {
        let registry = Registry::builtin();
        let resources: Vec<ResourceInfo> = registry.all().iter().map(|r| (**r).clone()).collect();
        let openapi = OpenApi::build(&resources, crate::KUBERNETES_VERSION)
            .map_err(|e| ApiServerError::OpenApi(e.to_string()))?;
        let cidr = Cidr::parse(&config.service_cidr).ok_or_else(|| {
            ApiServerError::Config(format!("invalid service CIDR {:?}", config.service_cidr))
        })?;
        let cache = WatchCache::start(config.store.clone()).await?;
        let audiences = vec![config.service_account_issuer.clone(), "k3s".to_string()];
        let verifier = rk3s_auth::TokenVerifier::new(
            &config.service_account_pub_pem,
            vec![
                config.service_account_issuer.clone(),
                rk3s_auth::LEGACY_ISSUER.to_string(),
            ],
            audiences.clone(),
        )
        .map_err(|e| ApiServerError::Config(format!("service-account key: {e}")))?;
        let issuer = rk3s_auth::TokenIssuer::new(
            &config.service_account_key_pem,
            &config.service_account_issuer,
        )
        .map_err(|e| ApiServerError::Config(format!("service-account key: {e}")))?;
        let token_file = match &config.token_auth_file {
            Some(t) => Some(
                rk3s_auth::TokenFile::parse(t)
                    .map_err(|e| ApiServerError::Config(format!("--token-auth-file: {e}")))?,
            ),
            None => None,
        };
        let inner = Arc::new(Inner {
            store: config.store.clone(),
            cache,
            registry,
            openapi_docs: std::sync::RwLock::new(Arc::new(openapi)),
            crds: Default::default(),
            alloc: Allocator::new(cidr, config.node_port_range),
            alloc_lock: tokio::sync::Mutex::new(()),
            advertise: format!("{}:{}", config.advertise_address, config.advertise_port),
            rbac_cache: Default::default(),
            token_auth: crate::authz::TokenAuth {
                verifier: Some(verifier),
                issuer: Some(issuer),
                token_file,
                audiences,
            },
            metrics: Default::default(),
            audit: config.audit.clone(),
            kubelet_client: config
                .kubelet_client
                .as_ref()
                .map(crate::proxy::KubeletClient::new)
                .transpose()?,
            client_cert_verifier: crate::server::client_cert_verifier(&config.client_ca_pem).ok(),
        });
        let api = ApiServer { inner };
        crate::bootstrap::run(&api, config).await?;
        crate::crd::start(&api);
        Ok(api)
    }

    /// The shared state.
    pub fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// Serves one request from the network.
    pub async fn handle_incoming(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
        user: Option<UserInfo>,
    ) -> Response {
        let (parts, body) = req.into_parts();
        let limited = http_body_util::Limited::new(body, MAX_BODY);
        let bytes = match limited.collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                let mut err =
                    ApiError::new(413, "RequestEntityTooLarge", format!("request body: {e}"));
                err.code = 413;
                return body::error(&err);
            }
        };
        self.handle(parts, bytes, user).await
    }

    /// Serves one request (also the in-process entry point). A panic in a handler is
    /// answered 500 and logged ([`recover_panic`]); it never takes the connection down.
    pub async fn handle(
        &self,
        parts: http::request::Parts,
        body: Bytes,
        user: Option<UserInfo>,
    ) -> Response {
        let method = parts.method.clone();
        let path = parts.uri.path().to_string();
        recover_panic(&method, &path, self.handle_unguarded(parts, body, user)).await
    }

    async fn handle_unguarded(
        &self,
        parts: http::request::Parts,
        body: Bytes,
        user: Option<UserInfo>,
    ) -> Response {
        let path = parts.uri.path().to_string();
        let query = Query::parse(parts.uri.query());
        let started = std::time::Instant::now();
        let info = request::parse(&parts.method, &path, &query);
        let received = jiff::Timestamp::now();
        let mut actx = AuditCtx::default();
        let audit_body = self.inner.audit.as_ref().map(|_| body.clone());
        let mut resp = self
            .route(&parts, &path, query, body, user.as_ref(), &mut actx)
            .await;
        if let (Some(audit), Some(authn)) = (&self.inner.audit, &actx.user) {
            let attrs = crate::audit::AuditAttributes::from_request(
                authn,
                info.as_ref(),
                &parts.method,
                &path,
            );
            let level = audit.level_for(&attrs);
            if level != crate::audit::Level::None {
                let id = crate::audit::new_audit_id();
                if let Ok(h) = http::HeaderValue::from_str(&id) {
                    resp.headers_mut().insert("Audit-ID", h);
                }
                let code = resp.status().as_u16();
                let resp_bytes = match resp.body() {
                    crate::body::ResponseBody::Full(Some(b))
                        if level == crate::audit::Level::RequestResponse || code >= 400 =>
                    {
                        Some(b.clone())
                    }
                    _ => None,
                };
                let is_watch = info.as_ref().is_some_and(|i| i.verb == "watch");
                let req_bytes = if level >= crate::audit::Level::Request {
                    audit_body.as_deref()
                } else {
                    None
                };
                audit.record(crate::audit::AuditRecord {
                    attributes: attrs,
                    user: authn.clone(),
                    impersonated_user: actx.impersonated.clone(),
                    audit_id: Some(id),
                    stage: if is_watch {
                        crate::audit::Stage::ResponseStarted
                    } else {
                        crate::audit::Stage::ResponseComplete
                    },
                    request_uri: parts.uri.to_string(),
                    source_ips: crate::audit::source_ips(&parts.headers, None),
                    user_agent: parts
                        .headers
                        .get(http::header::USER_AGENT)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string(),
                    code,
                    request_body: req_bytes,
                    response_body: resp_bytes.as_deref(),
                    received,
                    decision: actx.decision.clone(),
                });
            }
        }
        let verb = match info.as_ref().map(|i| i.verb.as_str()) {
            Some("list") => "LIST",
            Some("watch") => "WATCH",
            _ => parts.method.as_str(),
        };
        let (group, resource, sub) = info
            .as_ref()
            .map(|i| {
                (
                    i.group.as_str(),
                    i.resource.as_str(),
                    i.subresource.as_deref().unwrap_or(""),
                )
            })
            .unwrap_or(("", "", ""));
        self.inner.metrics.record(
            verb,
            group,
            resource,
            sub,
            resp.status().as_u16(),
            started.elapsed(),
        );
        tracing::debug!(method = %parts.method, %path, status = resp.status().as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "request");
        resp
    }

    async fn route(
        &self,
        parts: &http::request::Parts,
        path: &str,
        query: Query,
        body: Bytes,
        user: Option<&UserInfo>,
        actx: &mut AuditCtx,
    ) -> Response {
        let public = matches!(
            path,
            "/healthz" | "/livez" | "/readyz" | "/version" | "/version/"
        ) || path.starts_with("/healthz/")
            || path.starts_with("/livez/")
            || path.starts_with("/readyz/");
        // Client certificate first, then a bearer token (upstream's union authenticator).
        let mut user = user.cloned();
        if user.is_none() {
            if let Some(token) = bearer_token(&parts.headers) {
                user = self.inner.authenticate_token(token);
                // Bad credentials are refused on every path, the public ones included:
                // only a request with no credentials at all is anonymous (upstream's
                // authenticator fails the request before any handler runs).
                if user.is_none() {
                    return body::error(&ApiError::unauthorized());
                }
            }
        }
        if user.is_none() && !public {
            return body::error(&ApiError::unauthorized());
        }
        actx.user = user.clone();
        let user = match user {
            Some(u) => match self.inner.impersonate(u.clone(), &parts.headers) {
                Ok(imp) => {
                    if imp != u {
                        actx.impersonated = Some(imp.clone());
                    }
                    Some(imp)
                }
                Err(e) => return body::error(&e),
            },
            None => None,
        };
        if public {
            if path.starts_with("/version") {
                return body::json(200, &version_info());
            }
            return body::bytes_response(200, "text/plain; charset=utf-8", "ok");
        }
        let Some(user) = user else {
            return body::error(&ApiError::unauthorized());
        };
        let resource_info = request::parse(&parts.method, path, &query);
        let attrs = match &resource_info {
            Some(info) => crate::authz::resource_attributes(&user, info, &query),
            None => crate::authz::non_resource_attributes(&user, &parts.method, path),
        };
        if let Err(e) = self.inner.authorize(&attrs) {
            actx.decision = Some(crate::audit::AuthzDecision {
                allowed: false,
                reason: e.message.clone(),
            });
            return body::error(&e);
        }
        actx.decision = Some(crate::audit::AuthzDecision {
            allowed: true,
            reason: String::new(),
        });
        if path == "/metrics" {
            return body::bytes_response(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                self.inner.metrics.render(self.inner.cache.len()),
            );
        }
        if path == "/openapi/v2" {
            let accept = parts
                .headers
                .get(http::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if accept.contains("proto-openapi.spec.v2") {
                return body::bytes_response(
                    200,
                    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                    bytes::Bytes::from_owner(self.inner.openapi().v2_protobuf()),
                );
            }
            return body::bytes_response(
                200,
                "application/json",
                bytes::Bytes::from_owner(self.inner.openapi().v2_json()),
            );
        }
        if path == "/openapi/v3" || path == "/openapi/v3/" {
            return body::json(200, &self.inner.openapi().v3_index());
        }
        if let Some(gv) = path.strip_prefix("/openapi/v3/") {
            return match self.inner.openapi().v3_group_version(gv) {
                Some((doc, _hash)) => {
                    let mut r = body::bytes_response(
                        200,
                        "application/json",
                        bytes::Bytes::from_owner(doc),
                    );
                    r.headers_mut().insert(
                        http::header::CACHE_CONTROL,
                        http::HeaderValue::from_static("public, immutable"),
                    );
                    r
                }
                None => body::bytes_response(404, "text/plain", "404 page not found\n"),
            };
        }
        if let Some(r) = self.discovery(parts, path) {
            return r;
        }
        let Some(info) = resource_info else {
            return body::bytes_response(404, "text/plain; charset=utf-8", "404 page not found\n");
        };
        match self.resource(parts, info, query, body, &user).await {
            Ok(r) => r,
            Err(e) => body::error(&e),
        }
    }

    fn discovery(&self, parts: &http::request::Parts, path: &str) -> Option<Response> {
        let accept = parts
            .headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let aggregated = ["v2", "v2beta1"].into_iter().find(|v| {
            accept.split(',').any(|r| {
                r.contains("g=apidiscovery.k8s.io") && r.contains(&format!("v={v};"))
                    || r.contains("g=apidiscovery.k8s.io")
                        && r.trim_end().ends_with(&format!("v={v}"))
            })
        });
        let reg = &self.inner.registry;
        let path = path.trim_end_matches('/');
        let agg_ct = |v: &str| {
            format!("application/json;g=apidiscovery.k8s.io;v={v};as=APIGroupDiscoveryList")
        };
        match path {
            "/api" => Some(match aggregated {
                Some(v) => body::bytes_response(
                    200,
                    &agg_ct(v),
                    serde_json::to_vec(&rk3s_api::discovery::aggregated_api(reg, v))
                        .unwrap_or_default(),
                ),
                None => body::json(
                    200,
                    &rk3s_api::discovery::api_versions(&self.inner.advertise),
                ),
            }),
            "/apis" => Some(match aggregated {
                Some(v) => body::bytes_response(
                    200,
                    &agg_ct(v),
                    serde_json::to_vec(&rk3s_api::discovery::aggregated_apis(reg, v))
                        .unwrap_or_default(),
                ),
                None => body::json(200, &rk3s_api::discovery::api_group_list(reg)),
            }),
            _ => {
                let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
                match parts.as_slice() {
                    ["api", v] => Some(match rk3s_api::discovery::api_resource_list(reg, "", v) {
                        Some(doc) => body::json(200, &doc),
                        None => body::bytes_response(404, "text/plain", "404 page not found\n"),
                    }),
                    ["apis", g] => Some(match rk3s_api::discovery::api_group(reg, g) {
                        Some(doc) => body::json(200, &doc),
                        None => body::bytes_response(404, "text/plain", "404 page not found\n"),
                    }),
                    ["apis", g, v] => {
                        Some(match rk3s_api::discovery::api_resource_list(reg, g, v) {
                            Some(doc) => body::json(200, &doc),
                            None => body::bytes_response(404, "text/plain", "404 page not found\n"),
                        })
                    }
                    _ => None,
                }
            }
        }
    }

    async fn resource(
        &self,
        parts: &http::request::Parts,
        info: request::RequestInfo,
        query: Query,
        body: Bytes,
        user: &UserInfo,
    ) -> Result<Response, ApiError> {
        let not_found = || {
            ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )
        };
        let res = self
            .inner
            .registry
            .get(&info.group, &info.version, &info.resource)
            .ok_or_else(not_found)?;
        // As upstream, output negotiation happens before the body is read: a Table
        // asked of a resource with no Table convertor (and nothing else accepted) is 406.
        if !Output::has_table(&res, info.subresource.as_deref())
            && Output::only_table_accepted(&parts.headers)
        {
            return Err(not_acceptable());
        }
        if info.verb == "create"
            && matches!(
                info.group.as_str(),
                "authorization.k8s.io" | "authentication.k8s.io"
            )
        {
            let obj =
                crate::body::decode_request(crate::body::content_type(&parts.headers), &body, None)
                    .map_err(|e| match e {
                        crate::body::RequestBodyError::UnsupportedMediaType(mt) => {
                            ApiError::unsupported_media_type(&mt)
                        }
                        e => ApiError::bad_request(format!(
                            "{} in version \"{}\" cannot be handled as a {}: {e}",
                            res.kind, res.version, res.kind
                        )),
                    })?;
            if !obj.is_object() {
                return Err(ApiError::bad_request(format!(
                    "{} in version \"{}\" cannot be handled as a {}: expected an object",
                    res.kind, res.version, res.kind
                )));
            }
            if let Some(r) = crate::authz::review(&self.inner, &info, user, &obj) {
                return r.map(|v| body::json(201, &v));
            }
        }
        if !res.namespaced() && info.namespace.is_some() {
            return Err(not_found());
        }
        if let Some(sub) = &info.subresource {
            let Some(subresource) = res.subresource(sub) else {
                return Err(not_found());
            };
            // Only the verbs discovery lists for the subresource (e.g. no DELETE of
            // `pods/x/status`, only PUT of `namespaces/x/finalize`).
            if !subresource.verbs.contains(&info.verb) {
                return Err(ApiError::method_not_allowed(
                    "the server does not allow this method on the requested resource",
                ));
            }
        } else if !res.has_verb(&info.verb) {
            return Err(ApiError::method_not_allowed(
                "the server does not allow this method on the requested resource",
            ));
        }
        // WebSocket exec/attach/port-forward arrive as GET (verb `get`); as upstream
        // (AuthorizePodWebsocketUpgradeCreatePermission) they also need `create`.
        if info.group.is_empty()
            && info.resource == "pods"
            && info.verb == "get"
            && matches!(
                info.subresource.as_deref(),
                Some("exec" | "attach" | "portforward")
            )
        {
            let mut as_create = info.clone();
            as_create.verb = "create".into();
            self.inner
                .authorize(&crate::authz::resource_attributes(user, &as_create, &query))?;
        }
        if let Some(r) = crate::proxy::dispatch(&self.inner, parts, &info, &query, &body).await {
            return r;
        }
        let output = Output::negotiate(&parts.headers, &query);
        let call = Call {
            inner: &self.inner,
            info,
            res,
            query,
            headers: parts.headers.clone(),
            body,
            output,
            user: user.clone(),
            applied: false,
        };
        if call.res.group.is_empty() && call.res.plural == "componentstatuses" {
            return Ok(crate::componentstatus::serve(&call).await);
        }
        match (call.info.subresource.as_deref(), call.info.verb.as_str()) {
            (Some("binding"), "create") => return call.bind().await,
            (Some("eviction"), "create") => return call.evict().await,
            (Some("token"), "create") => return call.token_request().await,
            (Some("binding" | "eviction" | "token"), _) => {
                return Err(ApiError::method_not_allowed(
                    "the server does not allow this method on the requested resource",
                ))
            }
            _ => {}
        }
        if call.res.group.is_empty() && call.res.plural == "bindings" && call.info.verb == "create"
        {
            return call.bind().await;
        }
        match call.info.verb.as_str() {
            "get" => call.get().await,
            "list" => call.list().await,
            "watch" => crate::watch::serve(&call).await,
            "create" => call.create().await,
            "update" => call.update_or_patch(false).await,
            "patch" => call.update_or_patch(true).await,
            "delete" => call.delete().await,
            "deletecollection" => call.delete_collection().await,
            _ => Err(ApiError::method_not_allowed(
                "the server does not allow this method on the requested resource",
            )),
        }
    }

    /// Waits until the API is ready (cache loaded, built-in objects present).
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        self.inner.cache.wait_fresh(timeout).await.is_ok()
    }
}

/// The bearer token of a request, as upstream's bearer-token authenticator reads it:
/// `Authorization: Bearer <token>` (scheme case-insensitive); an empty token is no
/// token (the request is then anonymous).
pub fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    let auth = headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    let mut parts = auth.splitn(3, ' ');
    let scheme = parts.next()?;
    let token = parts.next()?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Runs a request's handler, answering 500 with upstream's text if it panics (and
/// logging the panic), so one bad request never drops its connection or, over HTTP/2,
/// the other requests on it. A safety net: handlers must not panic on any input.
pub async fn recover_panic(
    method: &http::Method,
    path: &str,
    handler: impl std::future::Future<Output = Response>,
) -> Response {
    use futures_util::FutureExt;
    match std::panic::AssertUnwindSafe(handler).catch_unwind().await {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".to_string());
            tracing::error!(%method, %path, panic = %what, "request handler panicked");
            body::bytes_response(
                500,
                "text/plain; charset=utf-8",
                "This request caused apiserver to panic. Look in the logs for details.\n",
            )
        }
    }
}

/// What the audit log needs to know from request routing.
#[derive(Default)]
pub struct AuditCtx {
    /// The authenticated user (before impersonation).
    pub user: Option<UserInfo>,
    /// The impersonated user, if any.
    pub impersonated: Option<UserInfo>,
    /// The authorization decision.
    pub decision: Option<crate::audit::AuthzDecision>,
}

/// Upstream's 406 NotAcceptable when output negotiation finds no media type it can
/// serve (the media types its serializers accept).
fn not_acceptable() -> ApiError {
    ApiError::new(
        406,
        "NotAcceptable",
        "only the following media types are accepted: application/json, application/yaml, application/vnd.kubernetes.protobuf",
    )
}

/// The build time recorded by build.rs, as RFC 3339 UTC seconds (upstream's format).
fn build_date() -> String {
    let secs: i64 = env!("RK3S_BUILD_EPOCH").parse().unwrap_or(0);
    jiff::Timestamp::from_second(secs)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The `/version` document.
pub fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": format!("{}+rk3s{}", crate::KUBERNETES_VERSION, env!("CARGO_PKG_VERSION").replace('.', "")),
        // Recorded by build.rs (empty without git, as upstream).
        "gitCommit": env!("RK3S_GIT_COMMIT"),
        "gitTreeState": env!("RK3S_GIT_TREE_STATE"),
        "buildDate": build_date(),
        "goVersion": "n/a (rust)",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", a => a }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::ACCEPT, http::HeaderValue::from_static("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"));
        assert_eq!(
            Output::negotiate(&h, &Query::default()),
            Output::Table(rk3s_printers::IncludeObject::Metadata)
        );
        h.insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/json"),
        );
        assert_eq!(Output::negotiate(&h, &Query::default()), Output::Json);
        h.insert(http::header::ACCEPT, http::HeaderValue::from_static("application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"));
        assert_eq!(
            Output::negotiate(&h, &Query::default()),
            Output::PartialMetadata
        );
    }

    #[test]
    fn version_carries_build_facts() {
        let v = version_info();
        let commit = v["gitCommit"].as_str().unwrap_or("x");
        assert!(
            commit.is_empty()
                || (commit.len() == 40 && commit.chars().all(|c| c.is_ascii_hexdigit())),
            "{commit}"
        );
        assert!(["", "clean", "dirty"].contains(&v["gitTreeState"].as_str().unwrap_or("x")));
        let date = v["buildDate"].as_str().unwrap_or("");
        assert!(
            date.parse::<jiff::Timestamp>().is_ok() && date.ends_with('Z') && date.len() == 20,
            "{date}"
        );
        assert_ne!(date, "1970-01-01T00:00:00Z");
    }

    #[test]
    fn table_only_accept_and_resources_without_table() {
        let mut h = http::HeaderMap::new();
        assert!(!Output::only_table_accepted(&h));
        h.insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/json;as=Table;v=v1;g=meta.k8s.io"),
        );
        assert!(Output::only_table_accepted(&h));
        h.insert(http::header::ACCEPT, http::HeaderValue::from_static("application/json;as=Table;v=v1;g=meta.k8s.io, application/json;as=Table;v=v1beta1;g=meta.k8s.io"));
        assert!(Output::only_table_accepted(&h));
        h.insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static(
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
            ),
        );
        assert!(!Output::only_table_accepted(&h));
        h.insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/json"),
        );
        assert!(!Output::only_table_accepted(&h));
        let reg = rk3s_api::Registry::builtin();
        let sar = reg
            .get("authorization.k8s.io", "v1", "selfsubjectaccessreviews")
            .map(|r| (*r).clone())
            .expect("sar");
        let pods = reg
            .get("", "v1", "pods")
            .map(|r| (*r).clone())
            .expect("pods");
        assert!(!Output::has_table(&sar, None));
        assert!(Output::has_table(&pods, None));
        assert!(Output::has_table(&pods, Some("status")));
        assert!(!Output::has_table(&pods, Some("eviction")));
        let e = not_acceptable();
        assert_eq!(e.code, 406);
    }

    #[test]
    fn bearer_tokens_are_read_as_upstream() {
        let with = |v: &'static str| {
            let mut h = http::HeaderMap::new();
            h.insert(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_static(v),
            );
            h
        };
        assert_eq!(bearer_token(&with("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&with("bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&with("BEARER abc extra")), Some("abc"));
        assert_eq!(bearer_token(&with("  Bearer abc  ")), Some("abc"));
        // No token, an empty token or another scheme: no bearer credentials (anonymous).
        assert_eq!(bearer_token(&with("Bearer")), None);
        assert_eq!(bearer_token(&with("Bearer  abc")), None);
        assert_eq!(bearer_token(&with("Basic dTpw")), None);
        assert_eq!(bearer_token(&http::HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn a_panicking_handler_is_answered_500() {
        let method = http::Method::DELETE;
        let ok = recover_panic(&method, "/x", async { body::json(200, &json!({})) }).await;
        assert_eq!(ok.status(), 200);
        let boom = recover_panic(&method, "/api/v1/namespaces/default/configmaps/c", async {
            let v: Vec<Value> = Vec::new();
            let _ = &v[3];
            body::json(200, &json!({}))
        })
        .await;
        assert_eq!(boom.status(), 500);
        match boom.body() {
            body::ResponseBody::Full(Some(b)) => assert_eq!(
                &b[..],
                b"This request caused apiserver to panic. Look in the logs for details.\n"
            ),
            _ => panic!("expected a full body"),
        }
    }

    #[test]
    fn an_update_keeps_the_allocated_values_it_leaves_out() {
        let old = json!({"spec": {"type": "NodePort", "clusterIP": "10.43.0.9", "clusterIPs": ["10.43.0.9"], "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "ports": [{"name": "http", "port": 80, "nodePort": 30080}, {"name": "https", "port": 443, "nodePort": 30443}]}});
        // A manifest without any of them (kubectl replace, or apply that dropped them).
        let mut new = json!({"spec": {"type": "NodePort", "ports": [{"name": "http", "port": 8080}, {"name": "https", "port": 443, "nodePort": 30080}, {"name": "extra", "port": 9}]}});
        patch_allocated_values(&mut new, &old);
        assert_eq!(new["spec"]["clusterIP"], "10.43.0.9");
        assert_eq!(new["spec"]["clusterIPs"], json!(["10.43.0.9"]));
        assert_eq!(new["spec"]["ipFamilies"], json!(["IPv4"]));
        assert_eq!(new["spec"]["ipFamilyPolicy"], "SingleStack");
        // `http` would get 30080, but `https` uses that value now: it stays unset (the
        // allocator gives it a new one); a port without an old one gets nothing either.
        assert!(new["spec"]["ports"][0].get("nodePort").is_none(), "{new}");
        assert_eq!(new["spec"]["ports"][1]["nodePort"], 30080);
        assert!(new["spec"]["ports"][2].get("nodePort").is_none());
        let mut renamed = json!({"spec": {"type": "LoadBalancer", "clusterIP": "", "ports": [{"name": "https", "port": 443}]}});
        patch_allocated_values(&mut renamed, &old);
        assert_eq!(
            renamed["spec"]["clusterIP"], "10.43.0.9",
            "an empty value counts as left out"
        );
        assert_eq!(renamed["spec"]["ports"][0]["nodePort"], 30443);
        // Values the client sets are its own; a type that needs none gets none.
        let mut set = json!({"spec": {"type": "NodePort", "clusterIP": "10.43.0.10", "ports": [{"name": "http", "port": 80, "nodePort": 31000}]}});
        patch_allocated_values(&mut set, &old);
        assert_eq!(
            (
                set["spec"]["clusterIP"].as_str(),
                set["spec"]["ports"][0]["nodePort"].as_i64()
            ),
            (Some("10.43.0.10"), Some(31000))
        );
        let mut external = json!({"spec": {"type": "ExternalName", "externalName": "example.com"}});
        patch_allocated_values(&mut external, &old);
        assert!(external["spec"].get("clusterIP").is_none());
        let mut cluster_ip = json!({"spec": {"ports": [{"name": "http", "port": 80}]}});
        patch_allocated_values(&mut cluster_ip, &old);
        assert!(
            cluster_ip["spec"]["ports"][0].get("nodePort").is_none(),
            "ClusterIP Services have no node ports"
        );
        let hc_old = json!({"spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000}});
        let mut hc = json!({"spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local"}});
        patch_allocated_values(&mut hc, &hc_old);
        assert_eq!(hc["spec"]["healthCheckNodePort"], 32000);
    }

    #[test]
    fn namespace_finalizers_change_only_through_finalize() {
        let old = json!({"metadata": {"name": "n"}, "spec": {"finalizers": ["kubernetes"]}});
        // The main resource keeps them, whatever the request or defaulting says.
        let mut new = json!({"metadata": {"name": "n"}, "spec": {"finalizers": []}});
        namespace_finalizers(None, &json!({}), &old, &mut new);
        assert_eq!(new["spec"]["finalizers"], json!(["kubernetes"]));
        let cleared = json!({"metadata": {"name": "n"}, "spec": {}});
        let mut new = json!({"metadata": {"name": "n"}, "spec": {"finalizers": ["kubernetes"]}});
        namespace_finalizers(Some("status"), &json!({}), &cleared, &mut new);
        assert_eq!(
            new["spec"],
            json!({}),
            "defaulting does not bring `kubernetes` back"
        );
        // finalize takes the request's; an empty list is none.
        let mut new = json!({"spec": {"finalizers": ["kubernetes"]}});
        namespace_finalizers(
            Some("finalize"),
            &json!({"spec": {"finalizers": ["example.com/x"]}}),
            &old,
            &mut new,
        );
        assert_eq!(new["spec"]["finalizers"], json!(["example.com/x"]));
        for request in [
            json!({"spec": {"finalizers": []}}),
            json!({"spec": {}}),
            json!({}),
        ] {
            let mut new = json!({"spec": {"finalizers": ["kubernetes"]}});
            namespace_finalizers(Some("finalize"), &request, &old, &mut new);
            assert_eq!(new["spec"], json!({}), "{request}");
        }
    }

    #[test]
    fn qos() {
        assert_eq!(
            qos_class(Some(&json!({"containers": [{"name": "a"}]}))),
            "BestEffort"
        );
        assert_eq!(
            qos_class(Some(
                &json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]})
            )),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(Some(
                &json!({"containers": [{"resources": {"requests": {"cpu": "1"}}}]})
            )),
            "Burstable"
        );
    }
}
