//! RuntimeClass admission (upstream's `RuntimeClass` plugin), for new pods: a pod that
//! names a RuntimeClass that does not exist is rejected; one that exists gives the pod
//! its `overhead` (a pod that sets another overhead is rejected), its
//! `scheduling.nodeSelector` (merged; a conflicting key is rejected) and its
//! `scheduling.tolerations` (merged). A pod that sets an overhead its RuntimeClass does
//! not define is rejected too.

use serde_json::{Map, Value};

/// Applies RuntimeClass admission to a pod's `spec`. `class` is the RuntimeClass the
/// spec names (`None` when it names one that does not exist). Errors are upstream's
/// reasons, to be wrapped as `pods "NAME" is forbidden: <reason>`.
pub fn admit(spec: &mut Map<String, Value>, class: Option<&Value>) -> Result<(), String> {
    let name = spec
        .get("runtimeClassName")
        .and_then(Value::as_str)
        .map(String::from);
    let Some(name) = name else {
        return check_overhead(spec, None);
    };
    let Some(class) = class else {
        return Err(format!("pod rejected: RuntimeClass {name:?} not found"));
    };
    // Overhead.
    let class_overhead = class.pointer("/overhead/podFixed").filter(|o| !o.is_null());
    if let Some(fixed) = class_overhead {
        match spec.get("overhead").filter(|o| !o.is_null()) {
            Some(pod_overhead) if !same_resources(pod_overhead, fixed) => {
                return Err(OVERHEAD_MISMATCH.into())
            }
            _ => {
                spec.insert("overhead".into(), fixed.clone());
            }
        }
    }
    check_overhead(spec, class_overhead)?;
    // Scheduling.
    if let Some(selector) = class
        .pointer("/scheduling/nodeSelector")
        .and_then(Value::as_object)
    {
        let pod_selector = spec
            .entry("nodeSelector")
            .or_insert_with(|| Value::Object(Map::new()));
        if !pod_selector.is_object() {
            *pod_selector = Value::Object(Map::new());
        }
        if let Some(ps) = pod_selector.as_object_mut() {
            for (k, v) in selector {
                let want = v.as_str().unwrap_or_default();
                match ps.get(k).and_then(Value::as_str) {
                    Some(have) if have != want => {
                        return Err(format!("conflict: runtimeClass.scheduling.nodeSelector[{k}] = {want}; pod.spec.nodeSelector[{k}] = {have}"));
                    }
                    _ => {
                        ps.insert(k.clone(), Value::String(want.to_string()));
                    }
                }
            }
        }
    }
    if let Some(tols) = class
        .pointer("/scheduling/tolerations")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty())
    {
        let current = spec
            .get("tolerations")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        spec.insert(
            "tolerations".into(),
            Value::Array(merge_tolerations(&current, tols)),
        );
    }
    Ok(())
}

const OVERHEAD_MISMATCH: &str =
    "pod rejected: Pod's Overhead doesn't match RuntimeClass's defined Overhead";

/// The validating half: the pod's overhead must be the class's (none without one).
fn check_overhead(spec: &Map<String, Value>, class_overhead: Option<&Value>) -> Result<(), String> {
    let pod_overhead = spec.get("overhead").filter(|o| !o.is_null());
    match (class_overhead, pod_overhead) {
        (Some(c), Some(p)) if same_resources(c, p) => Ok(()),
        (Some(_), _) => Err(OVERHEAD_MISMATCH.into()),
        (None, Some(_)) => Err(
            "pod rejected: Pod Overhead set without corresponding RuntimeClass defined Overhead"
                .into(),
        ),
        (None, None) => Ok(()),
    }
}

/// Resource lists equal by value (`1000m` is `1`), as upstream's semantic equality.
fn same_resources(a: &Value, b: &Value) -> bool {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return a == b;
    };
    a.len() == b.len()
        && a.iter().all(|(k, va)| {
            b.get(k)
                .is_some_and(|vb| match (quantity(va), quantity(vb)) {
                    (Some(x), Some(y)) => {
                        (x - y).abs() <= f64::EPSILON * x.abs().max(y.abs()).max(1.0)
                    }
                    _ => va == vb,
                })
        })
}

fn quantity(v: &Value) -> Option<f64> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    rk3s_validation::parse_quantity(&s).ok().map(|q| q.value)
}

/// Merges the class's tolerations into the pod's, as upstream's `MergeTolerations`:
/// the pod's stay, in order; each of the class's is added unless one already there
/// covers it; one the class adds replaces those of the pod it covers.
pub fn merge_tolerations(pod: &[Value], class: &[Value]) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for t in pod.iter().chain(class) {
        if out.iter().any(|have| covers(have, t)) {
            continue;
        }
        out.retain(|have| !covers(t, have));
        out.push(t.clone());
    }
    out
}

/// Whether toleration `a` tolerates everything `b` does.
fn covers(a: &Value, b: &Value) -> bool {
    let s = |t: &Value, f: &str| {
        t.get(f)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (ak, bk) = (s(a, "key"), s(b, "key"));
    let (aop, bop) = (s(a, "operator"), s(b, "operator"));
    let exists = |op: &str| op == "Exists";
    let (ae, be) = (s(a, "effect"), s(b, "effect"));
    if !ae.is_empty() && ae != be {
        return false;
    }
    if ae == "NoExecute" {
        let secs = |t: &Value| t.get("tolerationSeconds").and_then(Value::as_i64);
        match (secs(a), secs(b)) {
            (None, _) => {}
            (Some(x), Some(y)) if x >= y => {}
            _ => return false,
        }
    }
    if exists(&aop) {
        ak.is_empty() || ak == bk
    } else {
        !exists(&bop) && ak == bk && s(a, "value") == s(b, "value")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn missing_class_is_rejected() {
        let mut s = spec(json!({"runtimeClassName": "x", "containers": []}));
        assert_eq!(
            admit(&mut s, None).unwrap_err(),
            "pod rejected: RuntimeClass \"x\" not found"
        );
        let mut plain = spec(json!({"containers": []}));
        assert_eq!(admit(&mut plain, None), Ok(()));
    }

    #[test]
    fn overhead_is_copied_and_must_match() {
        let class =
            json!({"handler": "crun", "overhead": {"podFixed": {"cpu": "250m", "memory": "64Mi"}}});
        let mut s = spec(json!({"runtimeClassName": "crun"}));
        admit(&mut s, Some(&class)).unwrap();
        assert_eq!(s["overhead"], json!({"cpu": "250m", "memory": "64Mi"}));
        let mut same = spec(
            json!({"runtimeClassName": "crun", "overhead": {"cpu": "0.25", "memory": "64Mi"}}),
        );
        assert_eq!(admit(&mut same, Some(&class)), Ok(()));
        let mut other = spec(json!({"runtimeClassName": "crun", "overhead": {"cpu": "1"}}));
        assert_eq!(
            admit(&mut other, Some(&class)).unwrap_err(),
            "pod rejected: Pod's Overhead doesn't match RuntimeClass's defined Overhead"
        );
        let bare = json!({"handler": "runc"});
        let mut set = spec(json!({"runtimeClassName": "runc", "overhead": {"cpu": "1"}}));
        assert_eq!(
            admit(&mut set, Some(&bare)).unwrap_err(),
            "pod rejected: Pod Overhead set without corresponding RuntimeClass defined Overhead"
        );
        let mut no_class = spec(json!({"overhead": {"cpu": "1"}}));
        assert!(admit(&mut no_class, None).is_err());
    }

    #[test]
    fn scheduling_merges_node_selector_and_tolerations() {
        let class = json!({"handler": "h", "scheduling": {
            "nodeSelector": {"sandbox": "true"},
            "tolerations": [{"key": "sandbox", "operator": "Exists", "effect": "NoSchedule"}]}});
        let mut s = spec(
            json!({"runtimeClassName": "h", "nodeSelector": {"zone": "a"},
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]}),
        );
        admit(&mut s, Some(&class)).unwrap();
        assert_eq!(s["nodeSelector"], json!({"zone": "a", "sandbox": "true"}));
        assert_eq!(s["tolerations"].as_array().unwrap().len(), 2);
        assert_eq!(s["tolerations"][1]["key"], "sandbox");
        let mut conflict =
            spec(json!({"runtimeClassName": "h", "nodeSelector": {"sandbox": "false"}}));
        assert_eq!(
            admit(&mut conflict, Some(&class)).unwrap_err(),
            "conflict: runtimeClass.scheduling.nodeSelector[sandbox] = true; pod.spec.nodeSelector[sandbox] = false"
        );
        let mut none = spec(json!({"runtimeClassName": "h"}));
        admit(&mut none, Some(&class)).unwrap();
        assert_eq!(none["nodeSelector"], json!({"sandbox": "true"}));
    }

    #[test]
    fn tolerations_merge_drops_covered_ones() {
        let pod =
            vec![json!({"key": "a", "operator": "Equal", "value": "1", "effect": "NoSchedule"})];
        let class = vec![
            json!({"key": "a", "operator": "Exists"}),
            json!({"key": "a", "operator": "Exists"}),
        ];
        assert_eq!(
            merge_tolerations(&pod, &class),
            vec![json!({"key": "a", "operator": "Exists"})]
        );
        let class = vec![json!({"key": "b", "operator": "Exists", "effect": "NoSchedule"})];
        assert_eq!(merge_tolerations(&pod, &class).len(), 2);
    }
}
