//! Admission plugins from `rk3s-admission`, in upstream's order, around the REST
//! handlers: mutating (LimitRanger defaults, DefaultStorageClass, mutating webhooks)
//! and validating (LimitRanger, PodSecurity, validating webhooks, ResourceQuota, whose
//! usage is charged to the quota's status before the object is stored).

use std::net::SocketAddr;

use rk3s_admission::webhook;
use rk3s_api::{ApiError, ResourceInfo};
use rk3s_store::StoreError;
use serde_json::{json, Value};

use crate::handler::Inner;
use crate::object;

fn values(inner: &Inner, prefix: &str) -> Vec<Value> {
    inner
        .cache
        .list(prefix)
        .0
        .into_iter()
        .map(|o| (*o.object).clone())
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
            o.object
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
fn resolve_service(inner: &Inner, ns: &str, name: &str, port: u16) -> Option<SocketAddr> {
    let svc = inner
        .cache
        .get(&format!("/registry/core/services/{ns}/{name}"))?;
    let ports = svc
        .object
        .pointer("/spec/ports")
        .and_then(|p| p.as_array())
        .cloned()
        .unwrap_or_default();
    let sp = ports
        .iter()
        .find(|p| p.get("port").and_then(|x| x.as_u64()) == Some(u64::from(port)));
    if let Some(ep) = inner
        .cache
        .get(&format!("/registry/core/endpoints/{ns}/{name}"))
    {
        let target_name = sp
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or("");
        for subset in ep
            .object
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
        .object
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

/// Mutating admission. Returns warnings.
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
    let ns = object::namespace(obj).unwrap_or("").to_string();
    if op == "CREATE" && sub.is_none() && res.group.is_empty() {
        match res.plural.as_str() {
            "pods" => {
                let lrs = values_live(inner, &format!("/registry/core/limitranges/{ns}/")).await;
                if !lrs.is_empty() {
                    rk3s_admission::LimitRanger::default_pod(&lrs, obj);
                }
            }
            "persistentvolumeclaims" => {
                let classes = values_live(inner, "/registry/storage.k8s.io/storageclasses/").await;
                rk3s_admission::default_storage_class(obj, &classes);
            }
            _ => {}
        }
    }
    let configs = webhook_configs(inner);
    if configs.is_empty() {
        return Ok(Vec::new());
    }
    let req = request(res, sub, op, Some(obj), old, user, dry_run);
    let labels = namespace_labels(inner, &req.namespace);
    let resolve = |n: &str, s: &str, p: u16| resolve_service(inner, n, s, p);
    let (patched, warnings) = webhook::run_mutating(&configs, &req, labels.as_ref(), &resolve)
        .await
        .map_err(denied)?;
    if let Some(p) = patched {
        *obj = p;
    }
    Ok(warnings)
}

/// Validating admission (after defaulting and validation). Returns warnings. Charges
/// ResourceQuota usage (unless `dry_run`).
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
    let mut warnings = Vec::new();
    let ns = object::namespace(obj).unwrap_or("").to_string();
    if sub.is_none()
        && res.group.is_empty()
        && matches!(res.plural.as_str(), "pods" | "persistentvolumeclaims")
        && op == "CREATE"
    {
        let lrs = values_live(inner, &format!("/registry/core/limitranges/{ns}/")).await;
        if !lrs.is_empty() {
            let mut copy = obj.clone();
            rk3s_admission::LimitRanger::apply(&lrs, &res.plural, op, &mut copy)
                .map_err(ApiError::forbidden)?;
        }
    }
    if !ns.is_empty() && matches!(sub, None | Some("ephemeralcontainers")) {
        if let Some(labels) = namespace_labels(inner, &ns) {
            let d = rk3s_admission::podsecurity::evaluate(&labels, &res.kind, obj, old);
            warnings.extend(d.warnings);
            d.enforce.map_err(ApiError::forbidden)?;
        }
    }
    let configs = webhook_configs(inner);
    if !configs.is_empty() {
        let req = request(res, sub, op, Some(obj), old, user, dry_run);
        let labels = namespace_labels(inner, &req.namespace);
        let resolve = |n: &str, s: &str, p: u16| resolve_service(inner, n, s, p);
        warnings.extend(
            webhook::run_validating(&configs, &req, labels.as_ref(), &resolve)
                .await
                .map_err(denied)?,
        );
    }
    if !ns.is_empty() && sub.is_none() {
        let quotas = values_live(inner, &format!("/registry/core/resourcequotas/{ns}/")).await;
        if !quotas.is_empty() {
            let charges = rk3s_admission::quota::check(&quotas, &res.group, &res.plural, obj, old)
                .map_err(ApiError::forbidden)?;
            if !dry_run {
                for (name, used) in charges {
                    set_quota_used(inner, &ns, &name, used).await;
                }
            }
        }
    }
    Ok(warnings)
}

async fn set_quota_used(
    inner: &Inner,
    ns: &str,
    name: &str,
    used: std::collections::BTreeMap<String, String>,
) {
    let key = format!("/registry/core/resourcequotas/{ns}/{name}");
    for _ in 0..8 {
        let Ok(Some(kv)) = inner.store.get(&key).await else {
            return;
        };
        let Ok(mut q) = serde_json::from_slice::<Value>(&kv.value) else {
            return;
        };
        q["status"]["used"] = json!(used);
        match inner
            .store
            .update(
                &key,
                serde_json::to_vec(&q).unwrap_or_default(),
                kv.mod_revision,
            )
            .await
        {
            Ok(_) => return,
            Err(StoreError::Conflict { .. }) => continue,
            Err(_) => return,
        }
    }
}

/// A ResourceQuota's status as the quota controller computes it: `hard` from the spec,
/// `used` from the namespace's objects.
pub fn quota_status(inner: &Inner, quota: &Value) -> Value {
    let ns = object::namespace(quota).unwrap_or("").to_string();
    let mut objs: Vec<(String, String, Value)> = Vec::new();
    for r in inner.registry.all() {
        if !r.namespaced() || !r.preferred || r.storage_group != r.group {
            continue;
        }
        for o in inner.cache.list(&r.namespace_prefix(Some(&ns))).0 {
            objs.push((r.group.clone(), r.plural.clone(), (*o.object).clone()));
        }
    }
    let used = rk3s_admission::quota::compute_used(
        quota,
        objs.iter().map(|(g, p, o)| (g.as_str(), p.as_str(), o)),
    );
    json!({"hard": quota.pointer("/spec/hard").cloned().unwrap_or_else(|| json!({})), "used": used})
}

/// Recomputes the usage of every quota in `ns` (after deletes, which admission never
/// sees as charges).
pub async fn refresh_quotas(inner: &Inner, ns: &str) {
    for q in values(inner, &format!("/registry/core/resourcequotas/{ns}/")) {
        let st = quota_status(inner, &q);
        if q.get("status") != Some(&st) {
            if let (Some(name), Some(used)) =
                (object::name(&q), st.get("used").and_then(|u| u.as_object()))
            {
                let used = used
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect();
                set_quota_used(inner, ns, name, used).await;
            }
        }
    }
}
