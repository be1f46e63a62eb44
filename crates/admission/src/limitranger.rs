//! The `LimitRanger` admission plugin (upstream `plugin/pkg/admission/limitranger`):
//! defaults container requests/limits from `LimitRange` objects of type
//! `Container`, then enforces `min`, `max` and `maxLimitRequestRatio` of the
//! `Container`, `Pod` and `PersistentVolumeClaim` limit types.

use crate::quantity::{self, Quantity};
use crate::util::{aggregate, arr, forbidden_message, object_name};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The annotation the plugin sets on pods it defaulted.
pub const LIMIT_RANGER_ANNOTATION: &str = "kubernetes.io/limit-ranger";

type ResourceList = BTreeMap<String, Quantity>;

fn resource_list(v: &Value) -> ResourceList {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| quantity::from_json(v).map(|q| (k.clone(), q)))
                .collect()
        })
        .unwrap_or_default()
}

/// The `LimitRanger` plugin. Stateless: the caller passes the namespace's
/// `LimitRange` objects to each call.
#[derive(Debug, Default, Clone, Copy)]
pub struct LimitRanger;

/// One `spec.limits[]` item with upstream's LimitRange defaulting applied
/// (`default` from `max`, `defaultRequest` from `default` then `min`).
struct Item {
    kind: String,
    min: ResourceList,
    max: ResourceList,
    default: ResourceList,
    default_request: ResourceList,
    ratio: ResourceList,
}

fn items(limit_range: &Value) -> Vec<Item> {
    arr(&limit_range["spec"]["limits"])
        .iter()
        .map(|l| {
            let kind = l["type"].as_str().unwrap_or_default().to_string();
            let min = resource_list(&l["min"]);
            let max = resource_list(&l["max"]);
            let mut default = resource_list(&l["default"]);
            let mut default_request = resource_list(&l["defaultRequest"]);
            if kind == "Container" {
                for (k, v) in &max {
                    default.entry(k.clone()).or_insert(*v);
                }
                for (k, v) in &default {
                    default_request.entry(k.clone()).or_insert(*v);
                }
                for (k, v) in &min {
                    default_request.entry(k.clone()).or_insert(*v);
                }
            }
            Item {
                kind,
                min,
                max,
                default,
                default_request,
                ratio: resource_list(&l["maxLimitRequestRatio"]),
            }
        })
        .collect()
}

/// Common precision of request, limit and enforced value (milli-units).
fn milli(q: Option<&Quantity>) -> i128 {
    q.map(|q| q.milli_value()).unwrap_or(0)
}

fn min_constraint(
    kind: &str,
    res: &str,
    enforced: &Quantity,
    req: &ResourceList,
    lim: &ResourceList,
) -> Option<String> {
    let Some(r) = req.get(res) else {
        return Some(format!(
            "minimum {res} usage per {kind} is {enforced}.  No request is specified."
        ));
    };
    if r.milli_value() < enforced.milli_value() {
        return Some(format!(
            "minimum {res} usage per {kind} is {enforced}, but request is {r}."
        ));
    }
    if let Some(l) = lim.get(res) {
        if l.milli_value() < enforced.milli_value() {
            return Some(format!(
                "minimum {res} usage per {kind} is {enforced}, but limit is {l}."
            ));
        }
    }
    None
}

fn max_constraint(
    kind: &str,
    res: &str,
    enforced: &Quantity,
    req: &ResourceList,
    lim: &ResourceList,
) -> Option<String> {
    let Some(l) = lim.get(res) else {
        return Some(format!(
            "maximum {res} usage per {kind} is {enforced}.  No limit is specified."
        ));
    };
    if l.milli_value() > enforced.milli_value() {
        return Some(format!(
            "maximum {res} usage per {kind} is {enforced}, but limit is {l}."
        ));
    }
    if let Some(r) = req.get(res) {
        if r.milli_value() > enforced.milli_value() {
            return Some(format!(
                "maximum {res} usage per {kind} is {enforced}, but request is {r}."
            ));
        }
    }
    None
}

fn max_request_constraint(
    kind: &str,
    res: &str,
    enforced: &Quantity,
    req: &ResourceList,
) -> Option<String> {
    let Some(r) = req.get(res) else {
        return Some(format!(
            "maximum {res} usage per {kind} is {enforced}.  No request is specified."
        ));
    };
    if r.milli_value() > enforced.milli_value() {
        return Some(format!(
            "maximum {res} usage per {kind} is {enforced}, but request is {r}."
        ));
    }
    None
}

fn ratio_constraint(
    kind: &str,
    res: &str,
    enforced: &Quantity,
    req: &ResourceList,
    lim: &ResourceList,
) -> Option<String> {
    let r = milli(req.get(res));
    let l = milli(lim.get(res));
    if r == 0 {
        return Some(format!(
            "{res} max limit to request ratio per {kind} is {enforced}, but no request is specified or request is 0."
        ));
    }
    if l == 0 {
        return Some(format!(
            "{res} max limit to request ratio per {kind} is {enforced}, but no limit is specified or limit is 0."
        ));
    }
    let observed = l as f64 / r as f64;
    if observed * 1000.0 > enforced.milli_value() as f64 {
        return Some(format!(
            "{res} max limit to request ratio per {kind} is {enforced}, but provided ratio is {observed:.6}."
        ));
    }
    None
}

fn check_all(
    kind: &str,
    item: &Item,
    req: &ResourceList,
    lim: &ResourceList,
    errs: &mut Vec<String>,
) {
    for (k, v) in &item.min {
        errs.extend(min_constraint(kind, k, v, req, lim));
    }
    for (k, v) in &item.max {
        errs.extend(max_constraint(kind, k, v, req, lim));
    }
    for (k, v) in &item.ratio {
        errs.extend(ratio_constraint(kind, k, v, req, lim));
    }
}

fn containers(pod: &Value, field: &str) -> Vec<(ResourceList, ResourceList)> {
    arr(&pod["spec"][field])
        .iter()
        .map(|c| {
            (
                resource_list(&c["resources"]["requests"]),
                resource_list(&c["resources"]["limits"]),
            )
        })
        .collect()
}

/// Sum of each resource across the lists; a resource missing from any list is left out.
fn sum(lists: &[&ResourceList]) -> ResourceList {
    let mut out = ResourceList::new();
    let keys: std::collections::BTreeSet<&String> = lists.iter().flat_map(|l| l.keys()).collect();
    for k in keys {
        if lists.iter().all(|l| l.contains_key(k)) {
            let total = lists
                .iter()
                .filter_map(|l| l.get(k))
                .fold(Quantity::ZERO, |acc, q| acc.add(q));
            out.insert(k.clone(), total);
        }
    }
    out
}

impl LimitRanger {
    /// Sets missing container (and init container) requests/limits from the
    /// `Container` items' `defaultRequest`/`default`, and records what was set in
    /// the `kubernetes.io/limit-ranger` annotation. Pods only, on CREATE.
    pub fn default_pod(limit_ranges: &[Value], pod: &mut Value) {
        for lr in limit_ranges {
            let mut req_defaults = ResourceList::new();
            let mut lim_defaults = ResourceList::new();
            for item in items(lr).into_iter().filter(|i| i.kind == "Container") {
                req_defaults.extend(item.default_request);
                lim_defaults.extend(item.default);
            }
            if req_defaults.is_empty() && lim_defaults.is_empty() {
                continue;
            }
            let mut notes = Vec::new();
            for (field, prefix) in [
                ("containers", "container"),
                ("initContainers", "init container"),
            ] {
                let Some(list) = pod["spec"].get_mut(field).and_then(Value::as_array_mut) else {
                    continue;
                };
                for c in list.iter_mut() {
                    let name = c["name"].as_str().unwrap_or_default().to_string();
                    let Some(cobj) = c.as_object_mut() else {
                        continue;
                    };
                    let resources = cobj
                        .entry("resources")
                        .or_insert_with(|| Value::Object(Map::new()));
                    if !resources.is_object() {
                        *resources = Value::Object(Map::new());
                    }
                    let mut set = |key: &str, defaults: &ResourceList| -> Vec<String> {
                        let mut names = Vec::new();
                        let Some(robj) = resources.as_object_mut() else {
                            return names;
                        };
                        let list = robj.entry(key).or_insert_with(|| Value::Object(Map::new()));
                        if !list.is_object() {
                            *list = Value::Object(Map::new());
                        }
                        if let Some(m) = list.as_object_mut() {
                            for (k, v) in defaults {
                                if !m.contains_key(k) {
                                    m.insert(k.clone(), Value::String(v.to_string()));
                                    names.push(k.clone());
                                }
                            }
                        }
                        names
                    };
                    let set_limits = set("limits", &lim_defaults);
                    let set_requests = set("requests", &req_defaults);
                    if !set_requests.is_empty() {
                        notes.push(format!(
                            "{} request for {prefix} {name}",
                            set_requests.join(", ")
                        ));
                    }
                    if !set_limits.is_empty() {
                        notes.push(format!(
                            "{} limit for {prefix} {name}",
                            set_limits.join(", ")
                        ));
                    }
                }
            }
            if !notes.is_empty() {
                if let Some(meta) = pod.as_object_mut().map(|o| {
                    o.entry("metadata")
                        .or_insert_with(|| Value::Object(Map::new()))
                }) {
                    if let Some(m) = meta.as_object_mut() {
                        let ann = m
                            .entry("annotations")
                            .or_insert_with(|| Value::Object(Map::new()));
                        if let Some(a) = ann.as_object_mut() {
                            a.insert(
                                LIMIT_RANGER_ANNOTATION.to_string(),
                                Value::String(format!(
                                    "LimitRanger plugin set: {}",
                                    notes.join("; ")
                                )),
                            );
                        }
                    }
                }
            }
        }
    }

    /// Checks a Pod or PersistentVolumeClaim against the LimitRanges. On error
    /// returns upstream's aggregated message for the first failing LimitRange,
    /// without the `... is forbidden:` prefix (see [`LimitRanger::apply`]).
    pub fn validate(limit_ranges: &[Value], resource: &str, obj: &Value) -> Result<(), String> {
        for lr in limit_ranges {
            let mut errs = Vec::new();
            for item in items(lr) {
                match (resource, item.kind.as_str()) {
                    ("pods", "Container") => {
                        for (req, lim) in containers(obj, "containers")
                            .iter()
                            .chain(containers(obj, "initContainers").iter())
                        {
                            check_all("Container", &item, req, lim, &mut errs);
                        }
                    }
                    ("pods", "Pod") => {
                        let cs = containers(obj, "containers");
                        let mut req = sum(&cs.iter().map(|c| &c.0).collect::<Vec<_>>());
                        let mut lim = sum(&cs.iter().map(|c| &c.1).collect::<Vec<_>>());
                        for (ireq, ilim) in containers(obj, "initContainers") {
                            for (k, v) in ireq {
                                let e = req.entry(k).or_insert(v);
                                if v > *e {
                                    *e = v;
                                }
                            }
                            for (k, v) in ilim {
                                let e = lim.entry(k).or_insert(v);
                                if v > *e {
                                    *e = v;
                                }
                            }
                        }
                        check_all("Pod", &item, &req, &lim, &mut errs);
                    }
                    ("persistentvolumeclaims", "PersistentVolumeClaim") => {
                        let req = resource_list(&obj["spec"]["resources"]["requests"]);
                        for (k, v) in &item.min {
                            errs.extend(min_constraint(
                                "PersistentVolumeClaim",
                                k,
                                v,
                                &req,
                                &ResourceList::new(),
                            ));
                        }
                        for (k, v) in &item.max {
                            errs.extend(max_request_constraint(
                                "PersistentVolumeClaim",
                                k,
                                v,
                                &req,
                            ));
                        }
                    }
                    _ => {}
                }
            }
            if !errs.is_empty() {
                return Err(aggregate(&errs));
            }
        }
        Ok(())
    }

    /// The whole plugin for one request: `resource` is `pods` or
    /// `persistentvolumeclaims` (others pass), `operation` is `CREATE`/`UPDATE`.
    /// Pods are defaulted then validated on CREATE only (their resources are
    /// immutable); PVCs are validated on CREATE and UPDATE. Subresource requests
    /// must not be passed. The error is upstream's full message, e.g.
    /// `pods "p" is forbidden: maximum cpu usage per Container is 1, but limit is 2.`
    pub fn apply(
        limit_ranges: &[Value],
        resource: &str,
        operation: &str,
        obj: &mut Value,
    ) -> Result<(), String> {
        match (resource, operation) {
            ("pods", "CREATE") => Self::default_pod(limit_ranges, obj),
            ("persistentvolumeclaims", "CREATE" | "UPDATE") => {}
            _ => return Ok(()),
        }
        Self::validate(limit_ranges, resource, obj)
            .map_err(|e| forbidden_message("", resource, &object_name(obj), &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lr(limits: Value) -> Value {
        json!({"kind": "LimitRange", "metadata": {"name": "lr", "namespace": "ns"}, "spec": {"limits": limits}})
    }

    #[test]
    fn defaults_container_resources_and_annotates() {
        let ranges = [lr(
            json!([{"type": "Container", "default": {"cpu": "500m", "memory": "256Mi"}, "defaultRequest": {"cpu": "100m"}}]),
        )];
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "c", "image": "x", "resources": {"limits": {"memory": "1Gi"}}}
        ]}});
        assert_eq!(
            LimitRanger::apply(&ranges, "pods", "CREATE", &mut pod),
            Ok(())
        );
        let res = &pod["spec"]["containers"][0]["resources"];
        assert_eq!(res["limits"]["cpu"], "500m");
        assert_eq!(res["limits"]["memory"], "1Gi", "explicit limit kept");
        // defaultRequest memory falls back to default memory (LimitRange defaulting)
        assert_eq!(res["requests"]["cpu"], "100m");
        assert_eq!(res["requests"]["memory"], "256Mi");
        assert_eq!(
            pod["metadata"]["annotations"][LIMIT_RANGER_ANNOTATION],
            "LimitRanger plugin set: cpu, memory request for container c; cpu limit for container c"
        );
    }

    #[test]
    fn max_violation_message() {
        let ranges = [lr(json!([{"type": "Container", "max": {"cpu": "1"}}]))];
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "c", "resources": {"limits": {"cpu": "2"}, "requests": {"cpu": "2"}}}
        ]}});
        assert_eq!(
            LimitRanger::apply(&ranges, "pods", "CREATE", &mut pod),
            Err(
                "pods \"p\" is forbidden: maximum cpu usage per Container is 1, but limit is 2."
                    .to_string()
            )
        );
    }

    #[test]
    fn min_ratio_and_pod_totals() {
        let ranges = [lr(json!([
            {"type": "Container", "min": {"memory": "100Mi"}, "maxLimitRequestRatio": {"cpu": "2"}},
            {"type": "Pod", "max": {"cpu": "1"}}
        ]))];
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "resources": {"limits": {"cpu": "800m", "memory": "200Mi"}, "requests": {"cpu": "200m", "memory": "50Mi"}}},
            {"name": "b", "resources": {"limits": {"cpu": "400m", "memory": "200Mi"}, "requests": {"cpu": "200m", "memory": "200Mi"}}}
        ]}});
        let err = LimitRanger::validate(&ranges, "pods", &pod).unwrap_err();
        assert_eq!(
            err,
            "[minimum memory usage per Container is 100Mi, but request is 50Mi., \
             cpu max limit to request ratio per Container is 2, but provided ratio is 4.000000., \
             maximum cpu usage per Pod is 1, but limit is 1200m.]"
        );
    }

    #[test]
    fn pvc_min_max_on_requests() {
        let ranges = [lr(
            json!([{"type": "PersistentVolumeClaim", "min": {"storage": "1Gi"}, "max": {"storage": "2Gi"}}]),
        )];
        let mut pvc = json!({"metadata": {"name": "claim"}, "spec": {"resources": {"requests": {"storage": "5Gi"}}}});
        assert_eq!(
            LimitRanger::apply(&ranges, "persistentvolumeclaims", "CREATE", &mut pvc),
            Err("persistentvolumeclaims \"claim\" is forbidden: maximum storage usage per PersistentVolumeClaim is 2Gi, but request is 5Gi.".to_string())
        );
        pvc["spec"]["resources"]["requests"]["storage"] = json!("1536Mi");
        assert_eq!(
            LimitRanger::apply(&ranges, "persistentvolumeclaims", "CREATE", &mut pvc),
            Ok(())
        );
    }

    #[test]
    fn pod_updates_are_ignored() {
        let ranges = [lr(json!([{"type": "Container", "max": {"cpu": "1"}}]))];
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": "2"}}}]}});
        assert_eq!(
            LimitRanger::apply(&ranges, "pods", "UPDATE", &mut pod),
            Ok(())
        );
    }
}
