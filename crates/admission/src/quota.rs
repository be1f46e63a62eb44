//! The `ResourceQuota` admission plugin and usage evaluators (upstream
//! `plugin/pkg/admission/resourcequota`, `pkg/quota/v1/evaluator/core`).
//!
//! Usage of pods (`pods`, `cpu`, `memory`, `requests.*`, `limits.*`,
//! `ephemeral-storage`, hugepages, extended resources), services
//! (`services`, `services.loadbalancers`, `services.nodeports`), PVCs
//! (`persistentvolumeclaims`, `requests.storage`, per storage class), the
//! legacy object counts (`configmaps`, `secrets`, `replicationcontrollers`,
//! `resourcequotas`) and every object count `count/<resource>[.<group>]`.
//! Quota scopes: `Terminating`, `NotTerminating`, `BestEffort`,
//! `NotBestEffort`, `PriorityClass` (also through `scopeSelector`).

use crate::quantity::{self, Quantity};
use crate::util::{arr, forbidden_message, object_name};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// A resource list: resource name to quantity.
pub type Usage = BTreeMap<String, Quantity>;

/// A quota whose usage a request changes: its name and new `status.used`.
pub type QuotaUpdate = (String, BTreeMap<String, String>);

const STORAGE_CLASS_SUFFIX: &str = ".storageclass.storage.k8s.io/";

fn one() -> Quantity {
    Quantity::from_int(1, quantity::Format::DecimalSi)
}

fn count_name(group: &str, resource: &str) -> String {
    if group.is_empty() {
        format!("count/{resource}")
    } else {
        format!("count/{resource}.{group}")
    }
}

fn resource_list(v: &Value) -> Usage {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| quantity::from_json(v).map(|q| (k.clone(), q)))
                .collect()
        })
        .unwrap_or_default()
}

fn add_into(acc: &mut Usage, other: &Usage) {
    for (k, v) in other {
        match acc.get_mut(k) {
            Some(a) => *a = a.add(v),
            None => {
                acc.insert(k.clone(), *v);
            }
        }
    }
}

/// Whether a pod still counts for compute resources: not Succeeded/Failed and
/// not past its deletion grace period.
fn pod_is_live(pod: &Value) -> bool {
    let phase = pod["status"]["phase"].as_str().unwrap_or_default();
    if phase == "Succeeded" || phase == "Failed" {
        return false;
    }
    if let (Some(ts), Some(grace)) = (
        pod["metadata"]["deletionTimestamp"].as_str(),
        pod["metadata"]["deletionGracePeriodSeconds"].as_i64(),
    ) {
        if let Ok(t) = ts.parse::<jiff::Timestamp>() {
            let deadline = t.as_second().saturating_add(grace);
            if jiff::Timestamp::now().as_second() > deadline {
                return false;
            }
        }
    }
    true
}

fn is_extended_resource(name: &str) -> bool {
    // a fully-qualified name outside the kubernetes.io namespaces, not requests.*
    name.contains('/') && !name.contains("kubernetes.io/") && !name.starts_with("requests.")
}

/// Effective pod requests or limits: max(sum of containers + sidecars, any init
/// container + preceding sidecars), plus `spec.overhead`.
fn pod_resources(pod: &Value, field: &str) -> Usage {
    let spec = &pod["spec"];
    let mut total = Usage::new();
    for c in arr(&spec["containers"]) {
        add_into(&mut total, &resource_list(&c["resources"][field]));
    }
    let mut sidecars = Usage::new();
    let mut init_max = Usage::new();
    for c in arr(&spec["initContainers"]) {
        let res = resource_list(&c["resources"][field]);
        if c["restartPolicy"].as_str() == Some("Always") {
            add_into(&mut sidecars, &res);
            add_into(&mut total, &res);
            for (k, v) in &sidecars {
                let e = init_max.entry(k.clone()).or_insert(*v);
                if *v > *e {
                    *e = *v;
                }
            }
        } else {
            let mut t = sidecars.clone();
            add_into(&mut t, &res);
            for (k, v) in t {
                let e = init_max.entry(k.clone()).or_insert(v);
                if v > *e {
                    *e = v;
                }
            }
        }
    }
    for (k, v) in init_max {
        let e = total.entry(k).or_insert(v);
        if v > *e {
            *e = v;
        }
    }
    let overhead = resource_list(&spec["overhead"]);
    for (k, v) in overhead {
        // upstream adds overhead only for resources the pod already has
        if let Some(e) = total.get_mut(&k) {
            *e = e.add(&v);
        } else if field == "requests" {
            total.insert(k, v);
        }
    }
    total
}

fn pod_compute_usage(requests: &Usage, limits: &Usage) -> Usage {
    let mut out = Usage::new();
    out.insert("pods".into(), one());
    for res in ["cpu", "memory", "ephemeral-storage"] {
        if let Some(r) = requests.get(res) {
            out.insert(res.into(), *r);
            out.insert(format!("requests.{res}"), *r);
        }
        if let Some(l) = limits.get(res) {
            out.insert(format!("limits.{res}"), *l);
        }
    }
    for (k, v) in requests {
        if k.starts_with("hugepages-") {
            out.insert(k.clone(), *v);
            out.insert(format!("requests.{k}"), *v);
        } else if is_extended_resource(k) {
            out.insert(format!("requests.{k}"), *v);
        }
    }
    out
}

fn pod_usage(pod: &Value) -> Usage {
    let mut out = Usage::new();
    out.insert("count/pods".into(), one());
    if pod_is_live(pod) {
        add_into(
            &mut out,
            &pod_compute_usage(
                &pod_resources(pod, "requests"),
                &pod_resources(pod, "limits"),
            ),
        );
    }
    out
}

fn service_usage(svc: &Value) -> Usage {
    let mut out = Usage::new();
    out.insert("services".into(), one());
    out.insert("count/services".into(), one());
    let ports = arr(&svc["spec"]["ports"]);
    match svc["spec"]["type"].as_str().unwrap_or("ClusterIP") {
        "NodePort" => {
            out.insert(
                "services.nodeports".into(),
                Quantity::from_int(ports.len() as i64, quantity::Format::DecimalSi),
            );
        }
        "LoadBalancer" => {
            let n = if svc["spec"]["allocateLoadBalancerNodePorts"] == Value::Bool(false) {
                ports
                    .iter()
                    .filter(|p| p["nodePort"].as_i64().unwrap_or(0) != 0)
                    .count()
            } else {
                ports.len()
            };
            out.insert(
                "services.nodeports".into(),
                Quantity::from_int(n as i64, quantity::Format::DecimalSi),
            );
            out.insert("services.loadbalancers".into(), one());
        }
        _ => {}
    }
    out
}

fn pvc_storage_class(pvc: &Value) -> Option<String> {
    pvc["metadata"]["annotations"]["volume.beta.kubernetes.io/storage-class"]
        .as_str()
        .or_else(|| pvc["spec"]["storageClassName"].as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn pvc_usage(pvc: &Value) -> Usage {
    let mut out = Usage::new();
    out.insert("persistentvolumeclaims".into(), one());
    out.insert("count/persistentvolumeclaims".into(), one());
    let class = pvc_storage_class(pvc);
    if let Some(c) = &class {
        out.insert(
            format!("{c}{STORAGE_CLASS_SUFFIX}persistentvolumeclaims"),
            one(),
        );
    }
    let mut storage = quantity::from_json(&pvc["spec"]["resources"]["requests"]["storage"]);
    if let Some(alloc) = quantity::from_json(&pvc["status"]["allocatedResources"]["storage"]) {
        if storage.is_none_or(|s| alloc > s) {
            storage = Some(alloc);
        }
    }
    if let Some(s) = storage {
        out.insert("requests.storage".into(), s);
        if let Some(c) = &class {
            out.insert(format!("{c}{STORAGE_CLASS_SUFFIX}requests.storage"), s);
        }
    }
    out
}

/// The quota usage of one object of `group`/`resource` (e.g. `""`/`pods`,
/// `apps`/`deployments`).
pub fn usage(group: &str, resource: &str, obj: &Value) -> Usage {
    if group.is_empty() {
        match resource {
            "pods" => return pod_usage(obj),
            "services" => return service_usage(obj),
            "persistentvolumeclaims" => return pvc_usage(obj),
            "configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas" => {
                let mut out = Usage::new();
                out.insert(resource.to_string(), one());
                out.insert(count_name(group, resource), one());
                return out;
            }
            _ => {}
        }
    }
    let mut out = Usage::new();
    out.insert(count_name(group, resource), one());
    out
}

/// Whether the evaluator of `group`/`resource` tracks the quota resource `name`.
fn tracks(group: &str, resource: &str, name: &str) -> bool {
    if name == count_name(group, resource) {
        return true;
    }
    if !group.is_empty() {
        return false;
    }
    match resource {
        "pods" => {
            matches!(name, "pods" | "cpu" | "memory" | "ephemeral-storage")
                || name.starts_with("requests.")
                || name.starts_with("limits.")
                || name.starts_with("hugepages-")
        }
        "services" => matches!(
            name,
            "services" | "services.loadbalancers" | "services.nodeports"
        ),
        "persistentvolumeclaims" => {
            matches!(name, "persistentvolumeclaims" | "requests.storage")
                || (name.contains(STORAGE_CLASS_SUFFIX)
                    && (name.ends_with("/requests.storage")
                        || name.ends_with("/persistentvolumeclaims")))
        }
        "configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas" => name == resource,
        _ => false,
    }
}

/// Whether the operation changes usage of this kind of object (count-only
/// objects change only on CREATE).
fn handles_update(group: &str, resource: &str) -> bool {
    group.is_empty() && matches!(resource, "pods" | "services" | "persistentvolumeclaims")
}

fn is_best_effort(pod: &Value) -> bool {
    let spec = &pod["spec"];
    arr(&spec["containers"])
        .iter()
        .chain(arr(&spec["initContainers"]))
        .all(|c| {
            ["requests", "limits"].iter().all(|f| {
                let l = resource_list(&c["resources"][f]);
                !l.iter()
                    .any(|(k, v)| (k == "cpu" || k == "memory") && !v.is_zero())
            })
        })
}

fn is_terminating(pod: &Value) -> bool {
    pod["spec"]["activeDeadlineSeconds"]
        .as_i64()
        .is_some_and(|s| s >= 0)
}

/// The scope requirements of a quota: `(scope, operator, values)`.
fn quota_scopes(quota: &Value) -> Vec<(String, String, Vec<String>)> {
    let mut out: Vec<(String, String, Vec<String>)> = arr(&quota["spec"]["scopes"])
        .iter()
        .filter_map(|s| s.as_str())
        .map(|s| (s.to_string(), "Exists".to_string(), Vec::new()))
        .collect();
    for e in arr(&quota["spec"]["scopeSelector"]["matchExpressions"]) {
        let scope = e["scopeName"].as_str().unwrap_or_default().to_string();
        let op = e["operator"].as_str().unwrap_or("Exists").to_string();
        let values = arr(&e["values"])
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        out.push((scope, op, values));
    }
    out
}

fn pod_matches_scope(pod: &Value, scope: &str, op: &str, values: &[String]) -> bool {
    match scope {
        "Terminating" => is_terminating(pod),
        "NotTerminating" => !is_terminating(pod),
        "BestEffort" => is_best_effort(pod),
        "NotBestEffort" => !is_best_effort(pod),
        "PriorityClass" => {
            let pc = pod["spec"]["priorityClassName"]
                .as_str()
                .filter(|s| !s.is_empty());
            match op {
                "Exists" => pc.is_some(),
                "DoesNotExist" => pc.is_none(),
                "In" => pc.is_some_and(|p| values.iter().any(|v| v == p)),
                "NotIn" => pc.is_none_or(|p| !values.iter().any(|v| v == p)),
                _ => false,
            }
        }
        "CrossNamespacePodAffinity" => {
            let aff = &pod["spec"]["affinity"];
            let cross = ["podAffinity", "podAntiAffinity"].iter().any(|a| {
                [
                    "requiredDuringSchedulingIgnoredDuringExecution",
                    "preferredDuringSchedulingIgnoredDuringExecution",
                ]
                .iter()
                .flat_map(|f| arr(&aff[a][f]))
                .any(|t| {
                    let term = if t["podAffinityTerm"].is_object() {
                        &t["podAffinityTerm"]
                    } else {
                        t
                    };
                    !arr(&term["namespaces"]).is_empty() || term["namespaceSelector"].is_object()
                })
            });
            let want = op != "DoesNotExist";
            cross == want
        }
        _ => false,
    }
}

/// Hard limits of a quota: `status.hard`, else `spec.hard`.
fn hard_of(quota: &Value) -> Usage {
    let h = resource_list(&quota["status"]["hard"]);
    if h.is_empty() {
        resource_list(&quota["spec"]["hard"])
    } else {
        h
    }
}

/// Whether the quota applies to the object: it tracks some resource of the
/// object's kind and every scope matches (only pods match scoped quotas).
fn quota_matches(quota: &Value, group: &str, resource: &str, obj: &Value, hard: &Usage) -> bool {
    if !hard.keys().any(|k| tracks(group, resource, k)) {
        return false;
    }
    let scopes = quota_scopes(quota);
    if scopes.is_empty() {
        return true;
    }
    if !(group.is_empty() && resource == "pods") {
        return false;
    }
    scopes
        .iter()
        .all(|(s, op, vals)| pod_matches_scope(obj, s, op, vals))
}

fn pretty(u: &Usage) -> String {
    u.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Resources every container must set when a quota tracks them
/// (upstream's backward-compatible pod constraint).
fn pod_constraints(required: &BTreeSet<String>, pod: &Value) -> Result<(), String> {
    const VALIDATED: [&str; 6] = [
        "cpu",
        "memory",
        "requests.cpu",
        "requests.memory",
        "limits.cpu",
        "limits.memory",
    ];
    let required: Vec<&str> = VALIDATED
        .iter()
        .copied()
        .filter(|r| required.contains(*r))
        .collect();
    if required.is_empty() {
        return Ok(());
    }
    let mut missing: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let spec = &pod["spec"];
    for c in arr(&spec["containers"])
        .iter()
        .chain(arr(&spec["initContainers"]))
    {
        let u = pod_compute_usage(
            &resource_list(&c["resources"]["requests"]),
            &resource_list(&c["resources"]["limits"]),
        );
        for r in &required {
            if !u.contains_key(*r) {
                missing
                    .entry(r)
                    .or_default()
                    .insert(c["name"].as_str().unwrap_or_default().to_string());
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let parts: Vec<String> = missing
        .iter()
        .map(|(r, names)| {
            format!(
                "{r} for: {}",
                names.iter().cloned().collect::<Vec<_>>().join(",")
            )
        })
        .collect();
    Err(format!("must specify {}", parts.join("; ")))
}

/// The ResourceQuota admission check of one CREATE (`old` = `None`) or UPDATE.
///
/// `quotas` are the namespace's ResourceQuota objects with `status.hard` and
/// `status.used` (as kept by the quota controller, see [`compute_used`]).
/// On success returns, for each quota whose usage the request changes, its
/// name and the new `status.used` (the caller writes it back with optimistic
/// concurrency before persisting the object, as upstream does). The error is
/// upstream's full message, e.g. `pods "p" is forbidden: exceeded quota: q,
/// requested: pods=1, used: pods=2, limited: pods=2`, or
/// `pods "p" is forbidden: failed quota: q: must specify limits.cpu for: c; requests.cpu for: c`.
pub fn check(
    quotas: &[Value],
    group: &str,
    resource: &str,
    obj: &Value,
    old: Option<&Value>,
) -> Result<Vec<QuotaUpdate>, String> {
    let name = object_name(obj);
    let forbid = |msg: String| forbidden_message(group, resource, &name, &msg);
    if old.is_some() && !handles_update(group, resource) {
        return Ok(Vec::new());
    }
    let mut interesting = Vec::new();
    for q in quotas {
        let hard = hard_of(q);
        if !quota_matches(q, group, resource, obj, &hard) {
            continue;
        }
        let qname = q["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let restricted: BTreeSet<String> = hard
            .keys()
            .filter(|k| tracks(group, resource, k))
            .cloned()
            .collect();
        if group.is_empty() && resource == "pods" {
            pod_constraints(&restricted, obj)
                .map_err(|e| forbid(format!("failed quota: {qname}: {e}")))?;
        }
        let used = resource_list(&q["status"]["used"]);
        let unknown: Vec<&String> = restricted
            .iter()
            .filter(|r| !used.contains_key(*r))
            .collect();
        if !unknown.is_empty() {
            let list = unknown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(",");
            return Err(forbid(format!(
                "status unknown for quota: {qname}, resources: {list}"
            )));
        }
        interesting.push((qname, hard, used));
    }
    if interesting.is_empty() {
        return Ok(Vec::new());
    }
    let mut delta = usage(group, resource, obj);
    if let Some(old) = old {
        // charge the delta only when this is a real update of a stored object
        if old["metadata"]["resourceVersion"]
            .as_str()
            .is_some_and(|rv| !rv.is_empty())
        {
            let prev = usage(group, resource, old);
            for (k, v) in delta.iter_mut() {
                if let Some(p) = prev.get(k) {
                    let d = v.sub(p);
                    *v = if d < Quantity::ZERO {
                        Quantity::ZERO
                    } else {
                        d
                    };
                }
            }
        }
    }
    delta.retain(|_, v| !v.is_zero());
    if delta.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (qname, hard, used) in interesting {
        let requested: Usage = delta
            .iter()
            .filter(|(k, _)| hard.contains_key(*k))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        if requested.is_empty() {
            continue;
        }
        let mut new_used = used.clone();
        add_into(&mut new_used, &requested);
        let exceeded: Vec<&String> = requested
            .keys()
            .filter(|k| match (new_used.get(*k), hard.get(*k)) {
                (Some(n), Some(h)) => n > h,
                _ => false,
            })
            .collect();
        if !exceeded.is_empty() {
            let mask = |u: &Usage| -> Usage {
                u.iter()
                    .filter(|(k, _)| exceeded.contains(k))
                    .map(|(k, v)| (k.clone(), *v))
                    .collect()
            };
            return Err(forbid(format!(
                "exceeded quota: {qname}, requested: {}, used: {}, limited: {}",
                pretty(&mask(&requested)),
                pretty(&mask(&used)),
                pretty(&mask(&hard))
            )));
        }
        out.push((
            qname,
            new_used
                .into_iter()
                .map(|(k, v)| (k, v.to_string()))
                .collect(),
        ));
    }
    Ok(out)
}

/// The `status.used` of a quota from all objects of its namespace (for the
/// quota status controller): every hard resource is present, zero when unused.
/// `objects` yields `(group, resource, object)`. The quota always counts itself under
/// `resourcequotas` (as upstream, whose controller computes it once the quota exists),
/// also when `objects` was read before it was stored (its status computed on create).
pub fn compute_used<'a>(
    quota: &Value,
    objects: impl Iterator<Item = (&'a str, &'a str, &'a Value)>,
) -> BTreeMap<String, String> {
    let hard = hard_of(quota);
    let mut used: Usage = hard.keys().map(|k| (k.clone(), Quantity::ZERO)).collect();
    let mut add = |group: &str, resource: &str, obj: &Value| {
        if !quota_matches(quota, group, resource, obj, &hard) {
            return;
        }
        for (k, v) in usage(group, resource, obj) {
            if let Some(u) = used.get_mut(&k) {
                *u = if u.is_zero() { v } else { u.add(&v) };
            }
        }
    };
    let mut itself = false;
    for (group, resource, obj) in objects {
        if group.is_empty()
            && resource == "resourcequotas"
            && object_name(obj) == object_name(quota)
        {
            itself = true;
        }
        add(group, resource, obj);
    }
    if !itself {
        add("", "resourcequotas", quota);
    }
    used.into_iter().map(|(k, v)| (k, v.to_string())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, cpu_req: Option<&str>) -> Value {
        let res = match cpu_req {
            Some(c) => json!({"requests": {"cpu": c, "memory": "64Mi"}, "limits": {"cpu": c}}),
            None => json!({}),
        };
        json!({"metadata": {"name": name, "namespace": "ns"}, "spec": {"containers": [{"name": "c", "image": "x", "resources": res}]}})
    }

    fn quota(hard: Value, used: Value) -> Value {
        json!({"metadata": {"name": "q", "namespace": "ns"}, "spec": {"hard": hard.clone()}, "status": {"hard": hard, "used": used}})
    }

    #[test]
    fn pod_usage_counts_compute() {
        let u = usage("", "pods", &pod("p", Some("250m")));
        assert_eq!(u["pods"].to_string(), "1");
        assert_eq!(u["requests.cpu"].to_string(), "250m");
        assert_eq!(u["limits.cpu"].to_string(), "250m");
        assert_eq!(u["requests.memory"].to_string(), "64Mi");
        assert!(!u.contains_key("limits.memory"));
        let mut done = pod("p", Some("250m"));
        done["status"] = json!({"phase": "Succeeded"});
        assert_eq!(
            usage("", "pods", &done).keys().collect::<Vec<_>>(),
            vec!["count/pods"]
        );
        assert!(usage("apps", "deployments", &json!({})).contains_key("count/deployments.apps"));
    }

    #[test]
    fn exceeded_pods_count() {
        let qs = [quota(json!({"pods": "2"}), json!({"pods": "2"}))];
        assert_eq!(
            check(&qs, "", "pods", &pod("p", None), None),
            Err("pods \"p\" is forbidden: exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2".to_string())
        );
        let qs = [quota(json!({"pods": "2"}), json!({"pods": "1"}))];
        let ok = check(&qs, "", "pods", &pod("p", None), None).unwrap();
        assert_eq!(
            ok,
            vec![(
                "q".to_string(),
                BTreeMap::from([("pods".to_string(), "2".to_string())])
            )]
        );
    }

    #[test]
    fn exceeded_cpu_requests() {
        let qs = [quota(
            json!({"requests.cpu": "1", "pods": "10"}),
            json!({"requests.cpu": "800m", "pods": "1"}),
        )];
        assert_eq!(
            check(&qs, "", "pods", &pod("p", Some("500m")), None),
            Err("pods \"p\" is forbidden: exceeded quota: q, requested: requests.cpu=500m, used: requests.cpu=800m, limited: requests.cpu=1".to_string())
        );
        let qs = [quota(
            json!({"requests.cpu": "1", "pods": "10"}),
            json!({"requests.cpu": "500m", "pods": "1"}),
        )];
        let ok = check(&qs, "", "pods", &pod("p", Some("500m")), None).unwrap();
        assert_eq!(ok[0].1["requests.cpu"], "1");
        assert_eq!(ok[0].1["pods"], "2");
    }

    #[test]
    fn must_specify_tracked_compute() {
        let qs = [quota(
            json!({"requests.cpu": "1", "limits.cpu": "2"}),
            json!({"requests.cpu": "0", "limits.cpu": "0"}),
        )];
        assert_eq!(
            check(&qs, "", "pods", &pod("p", None), None),
            Err("pods \"p\" is forbidden: failed quota: q: must specify limits.cpu for: c; requests.cpu for: c".to_string())
        );
    }

    #[test]
    fn status_unknown_and_update_delta() {
        let q = json!({"metadata": {"name": "q"}, "spec": {"hard": {"services": "1"}}});
        let svc = json!({"metadata": {"name": "s"}, "spec": {"type": "ClusterIP"}});
        assert_eq!(
            check(&[q], "", "services", &svc, None),
            Err(
                "services \"s\" is forbidden: status unknown for quota: q, resources: services"
                    .to_string()
            )
        );
        // switching a service to NodePort charges only the new node ports
        let qs = [quota(
            json!({"services": "1", "services.nodeports": "1"}),
            json!({"services": "1", "services.nodeports": "0"}),
        )];
        let mut old = svc.clone();
        old["metadata"]["resourceVersion"] = json!("5");
        let mut new = old.clone();
        new["spec"] = json!({"type": "NodePort", "ports": [{"port": 80}, {"port": 81}]});
        assert_eq!(
            check(&qs, "", "services", &new, Some(&old)),
            Err("services \"s\" is forbidden: exceeded quota: q, requested: services.nodeports=2, used: services.nodeports=0, limited: services.nodeports=1".to_string())
        );
        // configmap updates never change usage
        let cq = [quota(
            json!({"configmaps": "0"}),
            json!({"configmaps": "0"}),
        )];
        assert_eq!(
            check(&cq, "", "configmaps", &json!({}), Some(&json!({}))),
            Ok(vec![])
        );
    }

    #[test]
    fn scopes_select_pods() {
        let mut q = quota(json!({"pods": "0"}), json!({"pods": "0"}));
        q["spec"]["scopes"] = json!(["BestEffort"]);
        // a pod with requests is not BestEffort: quota does not apply
        assert_eq!(
            check(
                std::slice::from_ref(&q),
                "",
                "pods",
                &pod("p", Some("1")),
                None
            ),
            Ok(vec![])
        );
        assert!(check(std::slice::from_ref(&q), "", "pods", &pod("p", None), None).is_err());
        let mut pq = quota(json!({"pods": "0"}), json!({"pods": "0"}));
        pq["spec"]["scopeSelector"] = json!({"matchExpressions": [{"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]});
        let mut hp = pod("p", None);
        assert_eq!(
            check(std::slice::from_ref(&pq), "", "pods", &hp, None),
            Ok(vec![])
        );
        hp["spec"]["priorityClassName"] = json!("high");
        assert!(check(std::slice::from_ref(&pq), "", "pods", &hp, None).is_err());
    }

    #[test]
    fn a_quota_counts_itself_once() {
        let q = json!({"metadata": {"name": "q", "namespace": "ns"}, "spec": {"hard": {
            "resourcequotas": "2", "count/resourcequotas": "2"
        }}});
        let other = json!({"metadata": {"name": "other", "namespace": "ns"}, "spec": {"hard": {"pods": "1"}}});
        // Computed on create, before the quota is stored: it still counts itself.
        let used = compute_used(&q, [("", "resourcequotas", &other)].into_iter());
        assert_eq!(used["resourcequotas"], "2");
        assert_eq!(used["count/resourcequotas"], "2");
        // Listed among the namespace's quotas: not counted twice.
        let objs = [("", "resourcequotas", &other), ("", "resourcequotas", &q)];
        let used = compute_used(&q, objs.into_iter());
        assert_eq!(used["resourcequotas"], "2");
        let alone = compute_used(&q, std::iter::empty());
        assert_eq!(alone["resourcequotas"], "1");
    }

    #[test]
    fn compute_used_sums_matching_objects() {
        let q = json!({"metadata": {"name": "q"}, "spec": {"hard": {
            "pods": "10", "requests.cpu": "4", "configmaps": "5", "count/deployments.apps": "3",
            "requests.storage": "10Gi", "fast.storageclass.storage.k8s.io/requests.storage": "5Gi"
        }}});
        let p1 = pod("a", Some("500m"));
        let p2 = pod("b", Some("1"));
        let mut dead = pod("c", Some("1"));
        dead["status"] = json!({"phase": "Failed"});
        let cm = json!({"metadata": {"name": "cm"}});
        let dep = json!({"metadata": {"name": "d"}});
        let pvc = json!({"metadata": {"name": "v"}, "spec": {"storageClassName": "fast", "resources": {"requests": {"storage": "1Gi"}}}});
        let objs = [
            ("", "pods", &p1),
            ("", "pods", &p2),
            ("", "pods", &dead),
            ("", "configmaps", &cm),
            ("apps", "deployments", &dep),
            ("", "persistentvolumeclaims", &pvc),
        ];
        let used = compute_used(&q, objs.iter().map(|(g, r, o)| (*g, *r, *o)));
        assert_eq!(used["pods"], "2");
        assert_eq!(used["requests.cpu"], "1500m");
        assert_eq!(used["configmaps"], "1");
        assert_eq!(used["count/deployments.apps"], "1");
        assert_eq!(used["requests.storage"], "1Gi");
        assert_eq!(
            used["fast.storageclass.storage.k8s.io/requests.storage"],
            "1Gi"
        );
        assert_eq!(used.len(), 6);
    }
}
