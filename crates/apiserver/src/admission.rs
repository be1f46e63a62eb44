//! Admission: an ordered chain ([`CHAIN`]) of plugins with one interface ([`Plugin`]:
//! a mutating and a validating phase), in upstream's order, around the REST handlers:
//! mutating (new Pods: ServiceAccount, Priority, DefaultTolerationSeconds, RuntimeClass
//! in `pod.rs`; LimitRanger defaults, DefaultStorageClass, mutating webhooks) and
//! validating (LimitRanger, PodSecurity, validating webhooks, ResourceQuota, whose
//! usage is charged to the quota's status before the object is stored). The rules
//! themselves are in `rk3s-admission`; a new plugin is one `Plugin` value in the chain.

use std::net::SocketAddr;

use async_trait::async_trait;
use rk3s_admission::webhook;
use rk3s_api::{ApiError, ResourceInfo};
use rk3s_store::StoreError;
use serde_json::{json, Value};

use crate::object;
use crate::state::Inner;

mod pod;

fn values(inner: &Inner, prefix: &str) -> Vec<Value> {
    inner
        .cache
        .list(prefix)
        .0
        .into_iter()
        .map(|o| o.value())
        .collect()
}

/// Policy objects of one prefix: from the watch cache, or — when the cache has none,
/// e.g. right after they were created — from the store (upstream's LimitRanger and
/// ResourceQuota do the same "live lookup" when their informer is empty).
async fn values_live(inner: &Inner, prefix: &str) -> Vec<Value> {
    let cached = values(inner, prefix);
    if !cached.is_empty() {
        return cached;
    }
    match inner.store.list(prefix, Default::default()).await {
        Ok(l) => l
            .items
            .iter()
            .filter_map(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn namespace_labels(inner: &Inner, ns: &str) -> Option<Value> {
    inner
        .cache
        .get(&format!("/registry/core/namespaces/{ns}"))
        .map(|o| {
            o.object()
                .pointer("/metadata/labels")
                .cloned()
                .unwrap_or_else(|| json!({}))
        })
}

fn webhook_configs(inner: &Inner) -> Vec<Value> {
    let mut v = values(
        inner,
        "/registry/admissionregistration.k8s.io/mutatingwebhookconfigurations/",
    );
    v.extend(values(
        inner,
        "/registry/admissionregistration.k8s.io/validatingwebhookconfigurations/",
    ));
    v
}

/// Resolves a Service to one ready endpoint (upstream's endpoint routing, as k3s
/// enables it), falling back to the cluster IP.
pub(crate) fn resolve_service(
    inner: &Inner,
    ns: &str,
    name: &str,
    port: u16,
) -> Option<SocketAddr> {
    resolve_service_in(&inner.cache, ns, name, port)
}

/// [`resolve_service`] through the watch cache alone (for tasks that outlive a
/// request, e.g. watches converting custom resources).
pub(crate) fn resolve_service_in(
    cache: &crate::cache::WatchCache,
    ns: &str,
    name: &str,
    port: u16,
) -> Option<SocketAddr> {
    let svc = cache.get(&format!("/registry/core/services/{ns}/{name}"))?;
    let ports = svc
        .object()
        .pointer("/spec/ports")
        .and_then(|p| p.as_array())
        .cloned()
        .unwrap_or_default();
    let sp = ports
        .iter()
        .find(|p| p.get("port").and_then(|x| x.as_u64()) == Some(u64::from(port)));
    if let Some(ep) = cache.get(&format!("/registry/core/endpoints/{ns}/{name}")) {
        let target_name = sp
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or("");
        for subset in ep
            .object()
            .get("subsets")
            .and_then(|s| s.as_array())
            .into_iter()
            .flatten()
        {
            let Some(addr) = subset.pointer("/addresses/0/ip").and_then(|i| i.as_str()) else {
                continue;
            };
            let eport = subset
                .get("ports")
                .and_then(|p| p.as_array())
                .and_then(|ps| {
                    ps.iter()
                        .find(|p| {
                            p.get("name").and_then(|n| n.as_str()).unwrap_or("") == target_name
                        })
                        .or(ps.first())
                })
                .and_then(|p| p.get("port"))
                .and_then(|p| p.as_u64());
            if let (Ok(ip), Some(p)) = (addr.parse(), eport) {
                return Some(SocketAddr::new(ip, p as u16));
            }
        }
    }
    let ip = svc
        .object()
        .pointer("/spec/clusterIP")
        .and_then(|i| i.as_str())?
        .parse()
        .ok()?;
    Some(SocketAddr::new(ip, port))
}

fn request(
    res: &ResourceInfo,
    sub: Option<&str>,
    op: &str,
    obj: Option<&Value>,
    old: Option<&Value>,
    user: &rk3s_auth::UserInfo,
    dry_run: bool,
) -> webhook::Request {
    let any = obj.or(old);
    let ns = if res.group.is_empty() && res.plural == "namespaces" {
        any.and_then(object::name).unwrap_or("").to_string()
    } else {
        any.and_then(object::namespace).unwrap_or("").to_string()
    };
    webhook::Request {
        uid: object::new_uid(),
        operation: op.to_string(),
        group: res.group.clone(),
        version: res.version.clone(),
        kind: res.kind.clone(),
        resource: res.plural.clone(),
        subresource: sub.unwrap_or("").to_string(),
        name: any.and_then(object::name).unwrap_or("").to_string(),
        namespace: ns,
        object: obj.cloned(),
        old_object: old.cloned(),
        user: webhook::UserInfo {
            username: user.name.clone(),
            uid: user.uid.clone(),
            groups: user.groups.clone(),
            extra: user.extra.clone(),
        },
        dry_run,
        options: None,
    }
}

fn denied(d: webhook::AdmissionDenied) -> ApiError {
    ApiError::new(d.code, &d.reason, d.message)
}

/// What an admission plugin is told about a write (upstream's `admission.Attributes`).
pub struct Attributes<'a> {
    /// Server state.
    pub inner: &'a Inner,
    /// The resource written.
    pub res: &'a ResourceInfo,
    /// The subresource written, if any.
    pub sub: Option<&'a str>,
    /// `CREATE` or `UPDATE`.
    pub op: &'a str,
    /// The stored object an update replaces.
    pub old: Option<&'a Value>,
    /// Who writes.
    pub user: &'a rk3s_auth::UserInfo,
    /// A dry run (no side effects, e.g. no quota charge).
    pub dry_run: bool,
}

impl Attributes<'_> {
    fn is_create_of(&self, plural: &str) -> bool {
        self.op == "CREATE"
            && self.sub.is_none()
            && self.res.group.is_empty()
            && self.res.plural == plural
    }
}

/// One admission plugin: a mutating phase, a validating phase, or both. Each returns
/// the warnings it adds; an error denies the write.
#[async_trait]
pub trait Plugin: Send + Sync {
    /// Upstream's name of the plugin.
    fn name(&self) -> &'static str;

    /// The mutating phase (before validation).
    async fn admit(&self, _a: &Attributes<'_>, _obj: &mut Value) -> Result<Vec<String>, ApiError> {
        Ok(Vec::new())
    }

    /// The validating phase (after validation).
    async fn validate(&self, _a: &Attributes<'_>, _obj: &Value) -> Result<Vec<String>, ApiError> {
        Ok(Vec::new())
    }
}

/// New Pods: ServiceAccount, Priority, DefaultTolerationSeconds, RuntimeClass.
struct PodDefaults;

#[async_trait]
impl Plugin for PodDefaults {
    fn name(&self) -> &'static str {
        "ServiceAccount,Priority,DefaultTolerationSeconds,RuntimeClass"
    }

    async fn admit(&self, a: &Attributes<'_>, obj: &mut Value) -> Result<Vec<String>, ApiError> {
        if a.is_create_of("pods") {
            pod::admit(a.inner, obj).await?;
        }
        Ok(Vec::new())
    }
}

/// LimitRanger: defaults of new pods, limits of new pods and claims.
struct LimitRanger;

#[async_trait]
impl Plugin for LimitRanger {
    fn name(&self) -> &'static str {
        "LimitRanger"
    }

    async fn admit(&self, a: &Attributes<'_>, obj: &mut Value) -> Result<Vec<String>, ApiError> {
        if a.is_create_of("pods") {
            let ns = object::namespace(obj).unwrap_or("").to_string();
            let lrs = values_live(a.inner, &format!("/registry/core/limitranges/{ns}/")).await;
            if !lrs.is_empty() {
                rk3s_admission::LimitRanger::default_pod(&lrs, obj);
            }
        }
        Ok(Vec::new())
    }

    async fn validate(&self, a: &Attributes<'_>, obj: &Value) -> Result<Vec<String>, ApiError> {
        if a.is_create_of("pods") || a.is_create_of("persistentvolumeclaims") {
            let ns = object::namespace(obj).unwrap_or("").to_string();
            let lrs = values_live(a.inner, &format!("/registry/core/limitranges/{ns}/")).await;
            if !lrs.is_empty() {
                let mut copy = obj.clone();
                rk3s_admission::LimitRanger::apply(&lrs, &a.res.plural, a.op, &mut copy)
                    .map_err(ApiError::forbidden)?;
            }
        }
        Ok(Vec::new())
    }
}

/// DefaultStorageClass: new claims without a class get the default one.
struct DefaultStorageClass;

#[async_trait]
impl Plugin for DefaultStorageClass {
    fn name(&self) -> &'static str {
        "DefaultStorageClass"
    }

    async fn admit(&self, a: &Attributes<'_>, obj: &mut Value) -> Result<Vec<String>, ApiError> {
        if a.is_create_of("persistentvolumeclaims") {
            let classes = values_live(a.inner, "/registry/storage.k8s.io/storageclasses/").await;
            rk3s_admission::default_storage_class(obj, &classes);
        }
        Ok(Vec::new())
    }
}

/// PodSecurity: the namespace's Pod Security Standards levels.
struct PodSecurity;

#[async_trait]
impl Plugin for PodSecurity {
    fn name(&self) -> &'static str {
        "PodSecurity"
    }

    async fn validate(&self, a: &Attributes<'_>, obj: &Value) -> Result<Vec<String>, ApiError> {
        let ns = object::namespace(obj).unwrap_or("").to_string();
        if ns.is_empty() || !matches!(a.sub, None | Some("ephemeralcontainers")) {
            return Ok(Vec::new());
        }
        let Some(labels) = namespace_labels(a.inner, &ns) else {
            return Ok(Vec::new());
        };
        let d = rk3s_admission::podsecurity::evaluate(&labels, &a.res.kind, obj, a.old);
        d.enforce.map_err(ApiError::forbidden)?;
        Ok(d.warnings)
    }
}

/// MutatingAdmissionWebhook and ValidatingAdmissionWebhook.
struct Webhooks;

#[async_trait]
impl Plugin for Webhooks {
    fn name(&self) -> &'static str {
        "MutatingAdmissionWebhook,ValidatingAdmissionWebhook"
    }

    async fn admit(&self, a: &Attributes<'_>, obj: &mut Value) -> Result<Vec<String>, ApiError> {
        let configs = webhook_configs(a.inner);
        if configs.is_empty() {
            return Ok(Vec::new());
        }
        let req = request(a.res, a.sub, a.op, Some(obj), a.old, a.user, a.dry_run);
        let labels = namespace_labels(a.inner, &req.namespace);
        let resolve = |n: &str, s: &str, p: u16| resolve_service(a.inner, n, s, p);
        let (patched, warnings) = webhook::run_mutating(&configs, &req, labels.as_ref(), &resolve)
            .await
            .map_err(denied)?;
        if let Some(p) = patched {
            *obj = p;
            // Upstream decodes a patched object again, which defaults what the webhook
            // added (an init container without imagePullPolicy, ...).
            rk3s_validation::apply_defaults(&a.res.group, &a.res.version, &a.res.kind, obj);
        }
        Ok(warnings)
    }

    async fn validate(&self, a: &Attributes<'_>, obj: &Value) -> Result<Vec<String>, ApiError> {
        let configs = webhook_configs(a.inner);
        if configs.is_empty() {
            return Ok(Vec::new());
        }
        let req = request(a.res, a.sub, a.op, Some(obj), a.old, a.user, a.dry_run);
        let labels = namespace_labels(a.inner, &req.namespace);
        let resolve = |n: &str, s: &str, p: u16| resolve_service(a.inner, n, s, p);
        webhook::run_validating(&configs, &req, labels.as_ref(), &resolve)
            .await
            .map_err(denied)
    }
}

/// ResourceQuota: the write must fit every quota of its namespace; the usage is
/// charged to the quotas' status (unless a dry run).
struct ResourceQuota;

#[async_trait]
impl Plugin for ResourceQuota {
    fn name(&self) -> &'static str {
        "ResourceQuota"
    }

    async fn validate(&self, a: &Attributes<'_>, obj: &Value) -> Result<Vec<String>, ApiError> {
        let ns = object::namespace(obj).unwrap_or("").to_string();
        if ns.is_empty() || a.sub.is_some() {
            return Ok(Vec::new());
        }
        let prefix = format!("/registry/core/resourcequotas/{ns}/");
        if a.dry_run {
            let quotas = values_live(a.inner, &prefix).await;
            if !quotas.is_empty() {
                rk3s_admission::quota::check(&quotas, &a.res.group, &a.res.plural, obj, a.old)
                    .map_err(ApiError::forbidden)?;
            }
            return Ok(Vec::new());
        }
        if values(a.inner, &prefix).is_empty() && values_live(a.inner, &prefix).await.is_empty() {
            return Ok(Vec::new());
        }
        // As upstream's quota evaluator: check against the stored usage and charge it
        // with a compare-and-swap; a concurrent charge makes the check run again, so
        // two writes racing for the last unit cannot both pass.
        for _ in 0..16 {
            let Ok(list) = a.inner.store.list(&prefix, Default::default()).await else {
                return Err(ApiError::internal("unable to read the namespace's quotas"));
            };
            let stored: Vec<(String, rk3s_store::Revision, Value)> = list
                .items
                .iter()
                .filter_map(|kv| {
                    let v = serde_json::from_slice::<Value>(&kv.value).ok()?;
                    Some((kv.key.clone(), kv.mod_revision, v))
                })
                .collect();
            if stored.is_empty() {
                return Ok(Vec::new());
            }
            let quotas: Vec<Value> = stored.iter().map(|(_, _, v)| v.clone()).collect();
            let charges =
                rk3s_admission::quota::check(&quotas, &a.res.group, &a.res.plural, obj, a.old)
                    .map_err(ApiError::forbidden)?;
            let mut raced = false;
            for (name, used) in charges {
                let Some((key, rev, q)) = stored
                    .iter()
                    .find(|(_, _, q)| object::name(q) == Some(name.as_str()))
                else {
                    continue;
                };
                let mut q = q.clone();
                q["status"]["used"] = json!(used);
                match a
                    .inner
                    .store
                    .update(key, serde_json::to_vec(&q).unwrap_or_default(), *rev)
                    .await
                {
                    Ok(_) => {}
                    Err(StoreError::Conflict { .. }) => {
                        raced = true;
                        break;
                    }
                    Err(e) => {
                        return Err(ApiError::internal(format!(
                            "unable to charge quota {name}: {e}"
                        )))
                    }
                }
            }
            if !raced {
                return Ok(Vec::new());
            }
        }
        Err(ApiError::internal(
            "too many concurrent writes to the namespace's quotas, try again",
        ))
    }
}

/// NodeRestriction: a node's writes touch only its own Node, Lease and pods (see
/// `rk3s_admission::noderestriction`).
struct NodeRestriction;

/// Upstream's admission Forbidden: `<resource> "<name>" is forbidden: <why>`.
pub fn node_restriction_error(res: &ResourceInfo, name: &str, why: String) -> ApiError {
    let mut e = ApiError::forbidden(format!("{} {name:?} is forbidden: {why}", res.plural));
    e.name = (!name.is_empty()).then(|| name.to_string());
    e.group = Some(res.group.clone());
    e.kind = Some(res.plural.clone());
    e
}

/// Runs NodeRestriction for a write by `user` (CREATE, UPDATE or DELETE).
pub fn node_restriction(
    res: &ResourceInfo,
    sub: Option<&str>,
    op: rk3s_admission::noderestriction::Operation,
    obj: Option<&Value>,
    old: Option<&Value>,
    user: &rk3s_auth::UserInfo,
) -> Result<(), ApiError> {
    if rk3s_admission::noderestriction::node_of(&user.name, &user.groups).is_none() {
        return Ok(());
    }
    let meta = |o: Option<&Value>, k: &str| -> String {
        o.and_then(|o| o.pointer(&format!("/metadata/{k}")))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let name = {
        let n = meta(obj, "name");
        if n.is_empty() {
            meta(old, "name")
        } else {
            n
        }
    };
    let namespace = {
        let n = meta(obj, "namespace");
        if n.is_empty() {
            meta(old, "namespace")
        } else {
            n
        }
    };
    let attrs = rk3s_admission::noderestriction::Attributes {
        user: &user.name,
        groups: &user.groups,
        operation: op,
        group: &res.group,
        resource: &res.plural,
        subresource: sub.unwrap_or(""),
        namespace: &namespace,
        name: &name,
        object: obj,
        old_object: old,
    };
    rk3s_admission::noderestriction::admit(&attrs)
        .map_err(|why| node_restriction_error(res, &name, why))
}

#[async_trait]
impl Plugin for NodeRestriction {
    fn name(&self) -> &'static str {
        "NodeRestriction"
    }

    async fn admit(&self, a: &Attributes<'_>, obj: &mut Value) -> Result<Vec<String>, ApiError> {
        use rk3s_admission::noderestriction::Operation;
        let op = match a.op {
            "CREATE" => Operation::Create,
            "UPDATE" => Operation::Update,
            _ => return Ok(Vec::new()),
        };
        node_restriction(a.res, a.sub, op, Some(obj), a.old, a.user)?;
        Ok(Vec::new())
    }
}

/// The plugins, in upstream's order; each phase runs them in this order.
pub const CHAIN: &[&dyn Plugin] = &[
    &PodDefaults,
    &NodeRestriction,
    &LimitRanger,
    &DefaultStorageClass,
    &PodSecurity,
    &Webhooks,
    &ResourceQuota,
];

/// Mutating admission: every plugin's mutating phase, in order. Returns warnings.
#[allow(clippy::too_many_arguments)]
pub async fn mutate(
    inner: &Inner,
    res: &ResourceInfo,
    sub: Option<&str>,
    op: &str,
    obj: &mut Value,
    old: Option<&Value>,
    user: &rk3s_auth::UserInfo,
    dry_run: bool,
) -> Result<Vec<String>, ApiError> {
    let a = Attributes {
        inner,
        res,
        sub,
        op,
        old,
        user,
        dry_run,
    };
    let mut warnings = Vec::new();
    for plugin in CHAIN {
        warnings.extend(plugin.admit(&a, obj).await?);
    }
    Ok(warnings)
}

/// Validating admission (after defaulting and validation): every plugin's validating
/// phase, in order. Returns warnings. Charges ResourceQuota usage (unless `dry_run`).
#[allow(clippy::too_many_arguments)]
pub async fn validate(
    inner: &Inner,
    res: &ResourceInfo,
    sub: Option<&str>,
    op: &str,
    obj: &Value,
    old: Option<&Value>,
    user: &rk3s_auth::UserInfo,
    dry_run: bool,
) -> Result<Vec<String>, ApiError> {
    let a = Attributes {
        inner,
        res,
        sub,
        op,
        old,
        user,
        dry_run,
    };
    let mut warnings = Vec::new();
    for plugin in CHAIN {
        warnings.extend(plugin.validate(&a, obj).await?);
    }
    Ok(warnings)
}

/// Validating admission of a DELETE (`old`: the object being deleted, in the request's
/// version): the validating webhooks, called as upstream calls them (operation
/// `DELETE`, `oldObject` set, no `object`), so a webhook can refuse a deletion.
pub async fn validate_delete(
    inner: &Inner,
    res: &ResourceInfo,
    old: &Value,
    user: &rk3s_auth::UserInfo,
    dry_run: bool,
) -> Result<Vec<String>, ApiError> {
    let configs = webhook_configs(inner);
    if configs.is_empty() {
        return Ok(Vec::new());
    }
    let req = request(res, None, "DELETE", None, Some(old), user, dry_run);
    let labels = namespace_labels(inner, &req.namespace);
    let resolve = |n: &str, s: &str, p: u16| resolve_service(inner, n, s, p);
    webhook::run_validating(&configs, &req, labels.as_ref(), &resolve)
        .await
        .map_err(denied)
}

/// Validating admission of a CONNECT (`pods/exec`, `pods/attach`, `pods/portforward`):
/// the validating webhooks get operation `CONNECT` with the request's options object
/// (`PodExecOptions`, `PodAttachOptions`, `PodPortForwardOptions`, from the query), as
/// upstream sends them, so a webhook can refuse `kubectl exec` or `attach`.
pub async fn validate_connect(
    inner: &Inner,
    ns: &str,
    pod: &str,
    subresource: &str,
    raw_query: Option<&str>,
    user: &rk3s_auth::UserInfo,
) -> Result<(), ApiError> {
    let configs = webhook_configs(inner);
    if configs.is_empty() {
        return Ok(());
    }
    let pairs: Vec<(String, String)> = form_urlencoded::parse(raw_query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let one = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let flag = |k: &str| one(k).is_some_and(|v| matches!(v, "1" | "true" | "True"));
    let all = |k: &str| -> Vec<Value> {
        pairs
            .iter()
            .filter(|(n, _)| n == k)
            .map(|(_, v)| json!(v))
            .collect()
    };
    let (kind, mut options) = match subresource {
        "exec" => (
            "PodExecOptions",
            json!({"stdin": flag("stdin"), "stdout": flag("stdout"), "stderr": flag("stderr"),
                "tty": flag("tty"), "command": all("command")}),
        ),
        "attach" => (
            "PodAttachOptions",
            json!({"stdin": flag("stdin"), "stdout": flag("stdout"), "stderr": flag("stderr"),
                "tty": flag("tty")}),
        ),
        _ => ("PodPortForwardOptions", json!({"ports": all("ports")})),
    };
    if let Some(c) = one("container").filter(|c| !c.is_empty()) {
        options["container"] = json!(c);
    }
    options["kind"] = json!(kind);
    options["apiVersion"] = json!("v1");
    let req = webhook::Request {
        uid: object::new_uid(),
        operation: "CONNECT".into(),
        group: String::new(),
        version: "v1".into(),
        kind: kind.into(),
        resource: "pods".into(),
        subresource: subresource.into(),
        name: pod.into(),
        namespace: ns.into(),
        object: Some(options),
        old_object: None,
        user: webhook::UserInfo {
            username: user.name.clone(),
            uid: user.uid.clone(),
            groups: user.groups.clone(),
            extra: user.extra.clone(),
        },
        dry_run: false,
        options: None,
    };
    let labels = namespace_labels(inner, ns);
    let resolve = |n: &str, s: &str, p: u16| resolve_service(inner, n, s, p);
    webhook::run_validating(&configs, &req, labels.as_ref(), &resolve)
        .await
        .map(|_| ())
        .map_err(denied)
}

/// A ResourceQuota's status as the quota controller computes it: `hard` from the spec,
/// `used` from the namespace's objects.
pub fn quota_status(inner: &Inner, quota: &Value) -> Value {
    let ns = object::namespace(quota).unwrap_or("").to_string();
    let mut objs: Vec<(String, String, Value)> = Vec::new();
    for r in inner.schemas.registry.all() {
        if !r.namespaced() || !r.preferred || r.storage_group != r.group {
            continue;
        }
        for o in inner.cache.list(&r.namespace_prefix(Some(&ns))).0 {
            objs.push((r.group.clone(), r.plural.clone(), o.value()));
        }
    }
    let used = rk3s_admission::quota::compute_used(
        quota,
        objs.iter().map(|(g, p, o)| (g.as_str(), p.as_str(), o)),
    );
    json!({"hard": quota.pointer("/spec/hard").cloned().unwrap_or_else(|| json!({})), "used": used})
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes racing for a quota's last units: as many pass as the quota allows (the
    /// charge is a compare-and-swap on the stored usage), the others get upstream's 403.
    #[tokio::test]
    async fn concurrent_creates_cannot_overrun_a_quota() {
        use crate::testutil::{call, server};
        let dir = tempfile::tempdir().expect("tempdir");
        let api = server(dir.path()).await;
        let (code, q) = call(
            &api,
            "POST",
            "/api/v1/namespaces/default/resourcequotas",
            Some(
                json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "two"},
                "spec": {"hard": {"pods": "2"}}}),
            ),
        )
        .await;
        assert_eq!(code, 201, "{q}");
        let creates = (0..6).map(|i| {
            let api = api.clone();
            async move {
                call(
                    &api,
                    "POST",
                    "/api/v1/namespaces/default/pods",
                    Some(json!({
                    "apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("p{i}")},
                    "spec": {"containers": [{"name": "c", "image": "busybox"}]}})),
                )
                .await
            }
        });
        let results = futures_util::future::join_all(creates).await;
        let created = results.iter().filter(|(c, _)| *c == 201).count();
        let refused: Vec<&Value> = results
            .iter()
            .filter(|(c, _)| *c == 403)
            .map(|(_, b)| b)
            .collect();
        assert_eq!(created, 2, "{results:?}");
        assert_eq!(refused.len(), 4, "{results:?}");
        assert!(
            refused[0]["message"]
                .as_str()
                .is_some_and(|m| m.contains("exceeded quota: two")),
            "{}",
            refused[0]
        );
    }

    #[test]
    fn the_chain_runs_in_upstreams_order() {
        let names: Vec<&str> = CHAIN.iter().map(|p| p.name()).collect();
        let pos = |n: &str| {
            names
                .iter()
                .position(|x| x.split(',').any(|p| p == n))
                .unwrap_or(usize::MAX)
        };
        // Upstream's recommended order: ServiceAccount, ..., LimitRanger, ...,
        // DefaultStorageClass, ..., PodSecurity, ..., webhooks, ResourceQuota last.
        assert!(pos("ServiceAccount") < pos("NodeRestriction"));
        assert!(pos("NodeRestriction") < pos("LimitRanger"));
        assert!(pos("LimitRanger") < pos("DefaultStorageClass"));
        assert!(pos("DefaultStorageClass") < pos("PodSecurity"));
        assert!(pos("PodSecurity") < pos("ValidatingAdmissionWebhook"));
        assert!(pos("ValidatingAdmissionWebhook") < pos("ResourceQuota"));
        assert_eq!(pos("ResourceQuota"), names.len() - 1);
    }
}
