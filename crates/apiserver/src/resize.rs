//! `pods/{name}/resize`: in-place resize of container resources (Kubernetes 1.33,
//! `InPlacePodVerticalScaling` beta, on by default), as upstream's `podResizeStrategy`.
//!
//! - [`prepare_update`]: only `resources` and `resizePolicy` of containers and init
//!   containers are taken from the request; everything else (the rest of the spec,
//!   status, labels, annotations, finalizers, owner references) stays as stored. When
//!   containers were added, removed, renamed or reordered the request is kept as sent,
//!   for [`validate`] to refuse.
//! - [`validate`]: upstream's `ValidatePodResize` rules and messages: pods with
//!   pod-level resources, static (mirror) pods and Windows pods cannot be resized; the
//!   QoS class may not change; a running pod whose node does not report container
//!   resources cannot be resized; containers may not be added, removed, renamed or
//!   reordered; requests and limits may not be removed; a memory limit may only be
//!   lowered (or added) with the `RestartContainer` resize policy; only cpu and memory
//!   may change (for sidecars too), and non-sidecar init containers not at all.
//!
//! Quantities are compared by value (`1Gi` equals `1024Mi`), and absent, `null` and
//! empty values are the same, as upstream's semantic equality.

use rk3s_validation::{parse_quantity, ErrorKind, FieldError};
use serde_json::{Map, Value};

use crate::object::meta_mut;

const CPU: &str = "cpu";
const MEMORY: &str = "memory";

fn containers<'a>(pod: &'a Value, list: &str) -> &'a [Value] {
    pod.pointer(&format!("/spec/{list}"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn name(c: &Value) -> &str {
    c.get("name").and_then(Value::as_str).unwrap_or("")
}

/// The stored form of a resize of `old` into `new` (upstream's `dropNonResizeUpdates`).
pub fn prepare_update(old: &Value, new: &Value) -> Value {
    let mut merged = Map::new();
    for list in ["containers", "initContainers"] {
        let (n, o) = (containers(new, list), containers(old, list));
        if n.len() != o.len() {
            // Added or removed containers: validation refuses the request as sent.
            return new.clone();
        }
        let mut out = Vec::with_capacity(o.len());
        for (nc, oc) in n.iter().zip(o) {
            if name(nc) != name(oc) {
                // Renamed or reordered: keep the request's list for validation to refuse.
                out = n.to_vec();
                break;
            }
            let mut c = oc.clone();
            if let Some(cm) = c.as_object_mut() {
                for k in ["resources", "resizePolicy"] {
                    match nc.get(k) {
                        Some(v) if !v.is_null() => {
                            cm.insert(k.into(), v.clone());
                        }
                        _ => {
                            cm.remove(k);
                        }
                    }
                }
            }
            out.push(c);
        }
        if !o.is_empty() || old.pointer(&format!("/spec/{list}")).is_some() {
            merged.insert(list.to_string(), Value::Array(out));
        }
    }
    let mut pod = new.clone();
    let Some(p) = pod.as_object_mut() else {
        return pod;
    };
    let mut spec = old
        .get("spec")
        .cloned()
        .unwrap_or_else(|| Value::Object(Map::new()));
    if let Some(s) = spec.as_object_mut() {
        s.extend(merged);
    }
    p.insert("spec".into(), spec);
    match old.get("status") {
        Some(st) => {
            p.insert("status".into(), st.clone());
        }
        None => {
            p.remove("status");
        }
    }
    // upstream's ResetObjectMetaForStatus: these come from the stored object.
    let old_meta = old
        .get("metadata")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(m) = meta_mut(&mut pod) {
        for k in [
            "labels",
            "annotations",
            "finalizers",
            "ownerReferences",
            "deletionTimestamp",
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
    }
    pod
}

fn err(kind: ErrorKind, field: &str, value: Option<Value>, detail: &str) -> FieldError {
    FieldError {
        kind,
        field: field.to_string(),
        value,
        detail: detail.to_string(),
    }
}

fn forbidden(field: &str, detail: &str) -> FieldError {
    err(ErrorKind::Forbidden, field, None, detail)
}

/// A resource quantity's value (unparsable quantities were refused by validation).
fn quantity(v: &Value) -> Option<f64> {
    match v {
        Value::String(s) => parse_quantity(s).ok().map(|q| q.value),
        Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

fn resource_list<'a>(c: &'a Value, which: &str) -> Option<&'a Map<String, Value>> {
    c.get("resources")
        .and_then(|r| r.get(which))
        .and_then(Value::as_object)
}

/// The pod's QoS class as upstream's `ComputePodQOS` (containers and init containers,
/// cpu and memory only; requests and limits summed over containers).
pub fn compute_qos(pod: &Value) -> &'static str {
    let mut requests: std::collections::BTreeMap<&str, f64> = Default::default();
    let mut limits: std::collections::BTreeMap<&str, f64> = Default::default();
    let mut guaranteed = true;
    for c in containers(pod, "containers")
        .iter()
        .chain(containers(pod, "initContainers"))
    {
        for (res, sums) in [("requests", &mut requests), ("limits", &mut limits)] {
            let mut found = (false, false);
            for (k, v) in resource_list(c, res).into_iter().flatten() {
                let key = match k.as_str() {
                    CPU => CPU,
                    MEMORY => MEMORY,
                    _ => continue,
                };
                if let Some(q) = quantity(v).filter(|q| *q > 0.0) {
                    *sums.entry(key).or_insert(0.0) += q;
                    if key == CPU {
                        found.0 = true;
                    } else {
                        found.1 = true;
                    }
                }
            }
            if res == "limits" && !(found.0 && found.1) {
                guaranteed = false;
            }
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return "BestEffort";
    }
    if guaranteed
        && requests.iter().all(|(k, r)| {
            limits
                .get(k)
                .is_some_and(|l| (l - r).abs() <= f64::EPSILON * l.abs().max(1.0))
        })
        && requests.len() == limits.len()
    {
        return "Guaranteed";
    }
    "Burstable"
}

/// Semantic equality of JSON values as upstream compares API objects: absent, `null`,
/// `{}` and `[]` are equal; quantities under `resources` compare by value.
fn semantic_eq(a: Option<&Value>, b: Option<&Value>, in_resources: bool) -> bool {
    let empty = |v: Option<&Value>| match v {
        None | Some(Value::Null) => true,
        Some(Value::Object(m)) => m.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        _ => false,
    };
    if empty(a) && empty(b) {
        return true;
    }
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => x
            .keys()
            .chain(y.keys())
            .all(|k| semantic_eq(x.get(k), y.get(k), in_resources || k == "resources")),
        (Some(Value::Array(x)), Some(Value::Array(y))) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|(p, q)| semantic_eq(Some(p), Some(q), in_resources))
        }
        (Some(x), Some(y)) if in_resources => match (quantity(x), quantity(y)) {
            (Some(p), Some(q)) => (p - q).abs() <= f64::EPSILON * p.abs().max(q.abs()).max(1.0),
            _ => x == y,
        },
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// `c` with its cpu and memory requests and limits taken from `old` (upstream's
/// `dropCPUMemoryResourcesFromContainer`): what remains must equal `old`.
fn without_cpu_memory_changes(c: &Value, old: &Value) -> Value {
    let mut out = c.clone();
    let mut resources = Map::new();
    for which in ["limits", "requests"] {
        let Some(old_list) = resource_list(old, which) else {
            continue;
        };
        let mut list = resource_list(c, which).cloned().unwrap_or_default();
        for k in [CPU, MEMORY] {
            list.remove(k);
            if let Some(v) = old_list.get(k) {
                list.insert(k.to_string(), v.clone());
            }
        }
        resources.insert(which.to_string(), Value::Object(list));
    }
    if let Some(o) = out.as_object_mut() {
        o.insert("resources".into(), Value::Object(resources));
    }
    out
}

/// upstream's `validateContainerResize`: no removed requests or limits; a memory limit
/// lowered or added only with the `RestartContainer` policy.
fn validate_container_resize(new: &Value, old: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let removed = |which: &str| {
        let n = resource_list(new, which);
        resource_list(old, which)
            .is_some_and(|o| o.keys().any(|k| !n.is_some_and(|n| n.contains_key(k))))
    };
    if removed("requests") {
        errs.push(forbidden(
            &format!("{path}.requests"),
            "resource requests cannot be removed",
        ));
    }
    if removed("limits") {
        errs.push(forbidden(
            &format!("{path}.limits"),
            "resource limits cannot be removed",
        ));
    }
    let policy = new
        .get("resizePolicy")
        .and_then(Value::as_array)
        .and_then(|ps| {
            ps.iter()
                .find(|p| p.get("resourceName").and_then(Value::as_str) == Some(MEMORY))
        })
        .and_then(|p| p.get("restartPolicy").and_then(Value::as_str))
        .unwrap_or("");
    if policy == "NotRequired" || policy.is_empty() {
        let limit = |c: &Value| {
            resource_list(c, "limits")
                .and_then(|l| l.get(MEMORY))
                .and_then(quantity)
        };
        match (limit(new), limit(old)) {
            (Some(n), Some(o)) if n < o => {
                errs.push(forbidden(
                    &format!("{path}.limits[memory]"),
                    "memory limits cannot be decreased unless resizePolicy is RestartContainer",
                ));
            }
            (Some(_), None) => {
                errs.push(forbidden(
                    &format!("{path}.limits[memory]"),
                    "memory limits cannot be added unless resizePolicy is RestartContainer",
                ));
            }
            _ => {}
        }
    }
}

fn restartable(c: &Value) -> bool {
    c.get("restartPolicy").and_then(Value::as_str) == Some("Always")
}

/// Validates a resize of `old` into `new` (the result of [`prepare_update`]), as
/// upstream's `ValidatePodResize`; `spec_errors` are the errors of the new pod's
/// metadata and spec (upstream validates those first; a pod that cannot be resized at
/// all gets only that error).
pub fn validate(new: &Value, old: &Value, spec_errors: Vec<FieldError>) -> Vec<FieldError> {
    let pod_level = |p: &Value| {
        ["requests", "limits"].iter().any(|k| {
            p.pointer(&format!("/spec/resources/{k}"))
                .and_then(Value::as_object)
                .is_some_and(|m| !m.is_empty())
        })
    };
    if pod_level(old) || pod_level(new) {
        return vec![forbidden(
            "",
            "pods with pod-level resources cannot be resized",
        )];
    }
    if old
        .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
        .is_some()
    {
        return vec![forbidden("", "static pods cannot be resized")];
    }
    if old.pointer("/spec/os/name").and_then(Value::as_str) == Some("windows") {
        return vec![forbidden("", "windows pods cannot be resized")];
    }
    let mut errs = spec_errors;
    let old_qos = old
        .pointer("/status/qosClass")
        .and_then(Value::as_str)
        .filter(|q| !q.is_empty())
        .unwrap_or_else(|| compute_qos(old));
    if old_qos != compute_qos(new) {
        let shown = new
            .pointer("/status/qosClass")
            .cloned()
            .unwrap_or(Value::String(String::new()));
        errs.push(err(
            ErrorKind::Invalid,
            "spec",
            Some(shown),
            "Pod QOS Class may not change as a result of resizing",
        ));
    }
    // A running container whose status has no resources: its node cannot resize.
    let statuses = old
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if let Some(running) = statuses
        .iter()
        .find(|s| s.pointer("/state/running").is_some_and(|r| !r.is_null()))
    {
        if running.get("resources").is_none_or(Value::is_null) {
            errs.push(forbidden(
                "spec",
                "Pod running on node without support for resize",
            ));
        }
    }
    let mut ordering = Vec::new();
    for list in ["containers", "initContainers"] {
        let (n, o) = (containers(new, list), containers(old, list));
        if n.len() != o.len() {
            ordering.push(forbidden(
                &format!("spec.{list}"),
                &format!("{list} may not be added or removed on resize"),
            ));
            continue;
        }
        for (i, (nc, oc)) in n.iter().zip(o).enumerate() {
            if name(nc) != name(oc) {
                ordering.push(forbidden(
                    &format!("spec.{list}[{i}].name"),
                    &format!("{list} may not be renamed or reordered on resize"),
                ));
            }
        }
    }
    if !ordering.is_empty() {
        errs.extend(ordering);
        return errs;
    }
    let (new_init, old_init) = (
        containers(new, "initContainers"),
        containers(old, "initContainers"),
    );
    for (i, (nc, oc)) in new_init.iter().zip(old_init).enumerate() {
        if restartable(oc) {
            validate_container_resize(
                nc,
                oc,
                &format!("spec.initContainers[{i}].resources"),
                &mut errs,
            );
        }
    }
    let (new_c, old_c) = (containers(new, "containers"), containers(old, "containers"));
    for (i, (nc, oc)) in new_c.iter().zip(old_c).enumerate() {
        validate_container_resize(
            nc,
            oc,
            &format!("spec.containers[{i}].resources"),
            &mut errs,
        );
    }
    let mut munged_spec = new.get("spec").cloned().unwrap_or(Value::Null);
    let mut munged = Vec::with_capacity(new_c.len());
    for (nc, oc) in new_c.iter().zip(old_c) {
        let m = without_cpu_memory_changes(nc, oc);
        if !semantic_eq(Some(&m), Some(oc), false) {
            errs.push(forbidden(
                "spec",
                "only cpu and memory resources are mutable",
            ));
        }
        munged.push(m);
    }
    let mut munged_init = Vec::with_capacity(new_init.len());
    for (nc, oc) in new_init.iter().zip(old_init) {
        if restartable(nc) {
            let m = without_cpu_memory_changes(nc, oc);
            if !semantic_eq(Some(&m), Some(oc), false) {
                errs.push(forbidden(
                    "spec",
                    "only cpu and memory resources for sidecar containers are mutable",
                ));
            }
            munged_init.push(m);
        } else {
            if !semantic_eq(Some(nc), Some(oc), false) {
                errs.push(forbidden(
                    "spec",
                    "resources for non-sidecar init containers are immutable",
                ));
            }
            munged_init.push(nc.clone());
        }
    }
    if !errs.is_empty() {
        return errs;
    }
    if let Some(s) = munged_spec.as_object_mut() {
        if s.contains_key("containers") {
            s.insert("containers".into(), Value::Array(munged));
        }
        if s.contains_key("initContainers") {
            s.insert("initContainers".into(), Value::Array(munged_init));
        }
    }
    if !semantic_eq(Some(&munged_spec), old.get("spec"), false) {
        errs.push(forbidden(
            "spec",
            "only cpu and memory resources are mutable",
        ));
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(resources: Value) -> Value {
        json!({"metadata": {"name": "p", "labels": {"a": "b"}}, "spec": {"nodeName": "n", "containers": [{"name": "c", "image": "i", "resources": resources}]},
            "status": {"phase": "Running", "qosClass": compute_qos(&json!({"spec": {"containers": [{"resources": resources}]}}))}})
    }

    fn with(p: &Value, f: impl FnOnce(&mut Value)) -> Value {
        let mut q = p.clone();
        f(&mut q);
        q
    }

    fn messages(new: &Value, old: &Value) -> Vec<String> {
        validate(&prepare_update(old, new), old, Vec::new())
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    fn burstable() -> Value {
        pod(
            json!({"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "200m", "memory": "128Mi"}}),
        )
    }

    #[test]
    fn qos_classes_as_upstream_computes_them() {
        let spec = |c: Value| json!({"spec": {"containers": c}});
        assert_eq!(compute_qos(&spec(json!([{"name": "a"}]))), "BestEffort");
        assert_eq!(
            compute_qos(&spec(
                json!([{"resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1000m", "memory": "1024Mi"}}}])
            )),
            "Guaranteed"
        );
        assert_eq!(
            compute_qos(&spec(json!([{"resources": {"limits": {"cpu": "1"}}}]))),
            "Burstable",
            "memory limit missing"
        );
        assert_eq!(
            compute_qos(&spec(
                json!([{"resources": {"requests": {"ephemeral-storage": "1Gi"}}}])
            )),
            "BestEffort",
            "only cpu and memory count"
        );
        let two = json!([{"resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}}, {"name": "b"}]);
        assert_eq!(
            compute_qos(&spec(two)),
            "Burstable",
            "every container needs limits"
        );
    }

    #[test]
    fn only_container_resources_and_resize_policies_are_taken_from_the_request() {
        let old = burstable();
        let new = with(&old, |p| {
            p["metadata"]["labels"] = json!({"a": "changed"});
            p["spec"]["activeDeadlineSeconds"] = json!(5);
            p["spec"]["containers"][0]["image"] = json!("other");
            p["spec"]["containers"][0]["resources"]["requests"]["cpu"] = json!("150m");
            p["status"]["phase"] = json!("Failed");
        });
        let out = prepare_update(&old, &new);
        assert_eq!(
            out["spec"]["containers"][0]["resources"]["requests"]["cpu"],
            "150m"
        );
        assert_eq!(out["spec"]["containers"][0]["image"], "i");
        assert!(out["spec"].get("activeDeadlineSeconds").is_none());
        assert_eq!(out["metadata"]["labels"]["a"], "b");
        assert_eq!(out["status"]["phase"], "Running");
        assert!(validate(&out, &old, Vec::new()).is_empty());
        // Renamed containers are kept as sent, and refused.
        let renamed = with(&old, |p| p["spec"]["containers"][0]["name"] = json!("d"));
        assert_eq!(messages(&renamed, &old), vec!["spec.containers[0].name: Forbidden: containers may not be renamed or reordered on resize"]);
        let added =
            with(
                &old,
                |p| {
                    p["spec"]["containers"] =
                        json!([p["spec"]["containers"][0].clone(), {"name": "e", "image": "i"}])
                },
            );
        assert_eq!(
            messages(&added, &old),
            vec!["spec.containers: Forbidden: containers may not be added or removed on resize"]
        );
    }

    #[test]
    fn refusals_carry_upstreams_messages() {
        let old = burstable();
        let res = |f: &dyn Fn(&mut Value)| {
            with(&old, |p| f(&mut p["spec"]["containers"][0]["resources"]))
        };
        assert_eq!(
            messages(
                &res(&|r| r["limits"]["ephemeral-storage"] = json!("1Gi")),
                &old
            ),
            vec!["spec: Forbidden: only cpu and memory resources are mutable"]
        );
        assert_eq!(
            messages(&res(&|r| r["requests"].as_object_mut().map(|m| m.remove("cpu")).map(|_| ()).unwrap_or(())), &old),
            vec!["spec.containers[0].resources.requests: Forbidden: resource requests cannot be removed"]
        );
        assert_eq!(
            messages(&res(&|r| r["limits"]["memory"] = json!("100Mi")), &old),
            vec!["spec.containers[0].resources.limits[memory]: Forbidden: memory limits cannot be decreased unless resizePolicy is RestartContainer"]
        );
        // The same decrease with the RestartContainer policy is fine... but the policy
        // itself may not change through resize.
        let restart =
            with(
                &old,
                |p| {
                    p["spec"]["containers"][0]["resizePolicy"] =
                        json!([{"resourceName": "memory", "restartPolicy": "RestartContainer"}])
                },
            );
        let lowered = with(&restart, |p| {
            p["spec"]["containers"][0]["resources"]["limits"]["memory"] = json!("100Mi")
        });
        assert!(messages(&lowered, &restart).is_empty());
        assert_eq!(
            messages(&restart, &old),
            vec!["spec: Forbidden: only cpu and memory resources are mutable"]
        );
        // Requests equal to limits would make the pod Guaranteed; the value shown is the
        // class the pod has.
        let guaranteed = res(&|r| r["requests"] = json!({"cpu": "200m", "memory": "128Mi"}));
        assert_eq!(messages(&guaranteed, &old), vec!["spec: Invalid value: \"Burstable\": Pod QOS Class may not change as a result of resizing"]);
        // Equal quantities in another spelling are no change.
        assert!(messages(&res(&|r| r["limits"]["memory"] = json!("0.125Gi")), &old).is_empty());
        // A BestEffort pod cannot get a memory limit (class, and the limit rule).
        let best = pod(json!({}));
        let m = messages(
            &with(&best, |p| {
                p["spec"]["containers"][0]["resources"] = json!({"limits": {"memory": "1Gi"}})
            }),
            &best,
        );
        assert!(
            m.iter().any(|e| e.contains("Pod QOS Class may not change")),
            "{m:?}"
        );
    }

    #[test]
    fn pods_that_cannot_be_resized() {
        let old = burstable();
        let up = with(&old, |p| {
            p["spec"]["containers"][0]["resources"]["limits"]["cpu"] = json!("300m")
        });
        let mirror = with(&old, |p| {
            p["metadata"]["annotations"] = json!({"kubernetes.io/config.mirror": "x"})
        });
        assert_eq!(
            validate(
                &prepare_update(&mirror, &up),
                &mirror,
                vec![forbidden("x", "y")]
            )
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>(),
            vec![": Forbidden: static pods cannot be resized"]
        );
        let windows = with(&old, |p| p["spec"]["os"] = json!({"name": "windows"}));
        assert_eq!(
            messages(&up, &windows),
            vec![": Forbidden: windows pods cannot be resized"]
        );
        let pod_level = with(&old, |p| {
            p["spec"]["resources"] = json!({"limits": {"cpu": "1"}})
        });
        assert_eq!(
            messages(&up, &pod_level),
            vec![": Forbidden: pods with pod-level resources cannot be resized"]
        );
        // Running on a node that reports no container resources.
        let running = with(
            &old,
            |p| {
                p["status"]["containerStatuses"] = json!([{"name": "c", "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}}}])
            },
        );
        assert_eq!(
            messages(&up, &running),
            vec!["spec: Forbidden: Pod running on node without support for resize"]
        );
        let reporting = with(&running, |p| {
            p["status"]["containerStatuses"][0]["resources"] = json!({"limits": {"cpu": "200m"}})
        });
        assert!(messages(&up, &reporting).is_empty());
    }

    #[test]
    fn init_containers() {
        let old = with(&burstable(), |p| {
            p["spec"]["initContainers"] = json!([
                {"name": "side", "image": "i", "restartPolicy": "Always", "resources": {"requests": {"cpu": "10m"}}},
                {"name": "init", "image": "i", "resources": {"requests": {"cpu": "10m"}}}])
        });
        let side = with(&old, |p| {
            p["spec"]["initContainers"][0]["resources"]["requests"]["cpu"] = json!("20m")
        });
        assert!(messages(&side, &old).is_empty());
        let init = with(&old, |p| {
            p["spec"]["initContainers"][1]["resources"]["requests"]["cpu"] = json!("20m")
        });
        assert_eq!(
            messages(&init, &old),
            vec!["spec: Forbidden: resources for non-sidecar init containers are immutable"]
        );
        let side_storage = with(&old, |p| {
            p["spec"]["initContainers"][0]["resources"]["requests"]["ephemeral-storage"] =
                json!("1Gi")
        });
        assert_eq!(
            messages(&side_storage, &old),
            vec![
                "spec: Forbidden: only cpu and memory resources for sidecar containers are mutable"
            ]
        );
    }
}
