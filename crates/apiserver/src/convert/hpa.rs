//! `autoscaling/v1` ⇄ `autoscaling/v2` HorizontalPodAutoscalers.
//!
//! Upstream stores HPAs once, as `autoscaling/v2`. A v1 object carries only a CPU
//! utilization target; whatever v2 holds beyond that (other metrics, current metrics,
//! conditions, behavior) travels in v1 through annotations, so that a v1 client's
//! read-modify-write keeps it:
//! - `autoscaling.alpha.kubernetes.io/metrics`: the other metric specs, in v1's shape
//!   (`targetAverageUtilization`, `metricName`, ...);
//! - `autoscaling.alpha.kubernetes.io/current-metrics`: every current metric status;
//! - `autoscaling.alpha.kubernetes.io/conditions`: the status conditions;
//! - `autoscaling.alpha.kubernetes.io/behavior`: the v2 `spec.behavior`.
//!
//! Converting v1 → v2 consumes those annotations again. Objects are JSON values;
//! malformed annotations are ignored (never an error, never a panic).

use serde_json::{json, Map, Value};

const METRICS: &str = "autoscaling.alpha.kubernetes.io/metrics";
const CURRENT_METRICS: &str = "autoscaling.alpha.kubernetes.io/current-metrics";
const CONDITIONS: &str = "autoscaling.alpha.kubernetes.io/conditions";
const BEHAVIOR: &str = "autoscaling.alpha.kubernetes.io/behavior";

/// Whether a stored/API HPA object is in the v1 form (by its `apiVersion`).
pub(super) fn is_v1(obj: &Value) -> bool {
    obj.get("apiVersion").and_then(Value::as_str) == Some("autoscaling/v1")
}

fn set_if(m: &mut Map<String, Value>, key: &str, v: Option<&Value>) {
    if let Some(v) = v.filter(|v| !v.is_null()) {
        m.insert(key.into(), v.clone());
    }
}

/// The v1 CPU target of a v2 metric spec, when it is one (`Resource` cpu with a
/// utilization target).
fn cpu_utilization_target(metric: &Value) -> Option<&Value> {
    let r = metric.get("resource")?;
    if metric.get("type")?.as_str()? != "Resource" || r.get("name")?.as_str()? != "cpu" {
        return None;
    }
    r.get("target")?
        .get("averageUtilization")
        .filter(|v| !v.is_null())
}

/// A v2 `MetricSpec` in v1's shape.
fn spec_v2_to_v1(m: &Value) -> Value {
    let mut out = Map::new();
    set_if(&mut out, "type", m.get("type"));
    let target = |src: &Value| src.get("target").cloned().unwrap_or(Value::Null);
    if let Some(o) = m.get("object").filter(|v| v.is_object()) {
        let t = target(o);
        let mut x = Map::new();
        set_if(&mut x, "target", o.get("describedObject"));
        set_if(&mut x, "metricName", o.pointer("/metric/name"));
        set_if(&mut x, "targetValue", t.get("value"));
        set_if(&mut x, "averageValue", t.get("averageValue"));
        set_if(&mut x, "selector", o.pointer("/metric/selector"));
        out.insert("object".into(), Value::Object(x));
    }
    if let Some(p) = m.get("pods").filter(|v| v.is_object()) {
        let t = target(p);
        let mut x = Map::new();
        set_if(&mut x, "metricName", p.pointer("/metric/name"));
        set_if(&mut x, "targetAverageValue", t.get("averageValue"));
        set_if(&mut x, "selector", p.pointer("/metric/selector"));
        out.insert("pods".into(), Value::Object(x));
    }
    for key in ["resource", "containerResource"] {
        if let Some(r) = m.get(key).filter(|v| v.is_object()) {
            let t = target(r);
            let mut x = Map::new();
            set_if(&mut x, "name", r.get("name"));
            set_if(
                &mut x,
                "targetAverageUtilization",
                t.get("averageUtilization"),
            );
            set_if(&mut x, "targetAverageValue", t.get("averageValue"));
            set_if(&mut x, "container", r.get("container"));
            out.insert(key.into(), Value::Object(x));
        }
    }
    if let Some(e) = m.get("external").filter(|v| v.is_object()) {
        let t = target(e);
        let mut x = Map::new();
        set_if(&mut x, "metricName", e.pointer("/metric/name"));
        set_if(&mut x, "metricSelector", e.pointer("/metric/selector"));
        set_if(&mut x, "targetValue", t.get("value"));
        set_if(&mut x, "targetAverageValue", t.get("averageValue"));
        out.insert("external".into(), Value::Object(x));
    }
    Value::Object(out)
}

/// The v2 `MetricTarget` of v1 target fields: `(utilization, value, averageValue)`.
fn target_v2(util: Option<&Value>, value: Option<&Value>, average: Option<&Value>) -> Value {
    let mut t = Map::new();
    if let Some(u) = util.filter(|v| !v.is_null()) {
        t.insert("type".into(), json!("Utilization"));
        t.insert("averageUtilization".into(), u.clone());
    } else if let Some(a) = average.filter(|v| !v.is_null()) {
        t.insert("type".into(), json!("AverageValue"));
        t.insert("averageValue".into(), a.clone());
    } else if let Some(v) = value.filter(|v| !v.is_null()) {
        t.insert("type".into(), json!("Value"));
        t.insert("value".into(), v.clone());
    }
    Value::Object(t)
}

/// `{name, selector}` of a v2 `MetricIdentifier`.
fn identifier(name: Option<&Value>, selector: Option<&Value>) -> Value {
    let mut x = Map::new();
    set_if(&mut x, "name", name);
    set_if(&mut x, "selector", selector);
    Value::Object(x)
}

/// A v1-shaped `MetricSpec` (from the annotation) in v2's shape.
fn spec_v1_to_v2(m: &Value) -> Value {
    let mut out = Map::new();
    set_if(&mut out, "type", m.get("type"));
    if let Some(o) = m.get("object").filter(|v| v.is_object()) {
        out.insert(
            "object".into(),
            json!({
                "describedObject": o.get("target").cloned().unwrap_or(json!({})),
                "metric": identifier(o.get("metricName"), o.get("selector")),
                "target": target_v2(None, o.get("targetValue"), o.get("averageValue")),
            }),
        );
    }
    if let Some(p) = m.get("pods").filter(|v| v.is_object()) {
        out.insert(
            "pods".into(),
            json!({
                "metric": identifier(p.get("metricName"), p.get("selector")),
                "target": target_v2(None, None, p.get("targetAverageValue")),
            }),
        );
    }
    for key in ["resource", "containerResource"] {
        if let Some(r) = m.get(key).filter(|v| v.is_object()) {
            let mut x = Map::new();
            set_if(&mut x, "name", r.get("name"));
            set_if(&mut x, "container", r.get("container"));
            x.insert(
                "target".into(),
                target_v2(
                    r.get("targetAverageUtilization"),
                    None,
                    r.get("targetAverageValue"),
                ),
            );
            out.insert(key.into(), Value::Object(x));
        }
    }
    if let Some(e) = m.get("external").filter(|v| v.is_object()) {
        out.insert(
            "external".into(),
            json!({
                "metric": identifier(e.get("metricName"), e.get("metricSelector")),
                "target": target_v2(None, e.get("targetValue"), e.get("targetAverageValue")),
            }),
        );
    }
    Value::Object(out)
}

/// A v2 `MetricStatus` in v1's shape.
fn status_v2_to_v1(m: &Value) -> Value {
    let mut out = Map::new();
    set_if(&mut out, "type", m.get("type"));
    let current = |src: &Value| src.get("current").cloned().unwrap_or(Value::Null);
    if let Some(o) = m.get("object").filter(|v| v.is_object()) {
        let c = current(o);
        let mut x = Map::new();
        set_if(&mut x, "target", o.get("describedObject"));
        set_if(&mut x, "metricName", o.pointer("/metric/name"));
        set_if(&mut x, "currentValue", c.get("value"));
        set_if(&mut x, "averageValue", c.get("averageValue"));
        set_if(&mut x, "selector", o.pointer("/metric/selector"));
        out.insert("object".into(), Value::Object(x));
    }
    if let Some(p) = m.get("pods").filter(|v| v.is_object()) {
        let c = current(p);
        let mut x = Map::new();
        set_if(&mut x, "metricName", p.pointer("/metric/name"));
        set_if(&mut x, "currentAverageValue", c.get("averageValue"));
        set_if(&mut x, "selector", p.pointer("/metric/selector"));
        out.insert("pods".into(), Value::Object(x));
    }
    for key in ["resource", "containerResource"] {
        if let Some(r) = m.get(key).filter(|v| v.is_object()) {
            let c = current(r);
            let mut x = Map::new();
            set_if(&mut x, "name", r.get("name"));
            set_if(
                &mut x,
                "currentAverageUtilization",
                c.get("averageUtilization"),
            );
            set_if(&mut x, "currentAverageValue", c.get("averageValue"));
            set_if(&mut x, "container", r.get("container"));
            out.insert(key.into(), Value::Object(x));
        }
    }
    if let Some(e) = m.get("external").filter(|v| v.is_object()) {
        let c = current(e);
        let mut x = Map::new();
        set_if(&mut x, "metricName", e.pointer("/metric/name"));
        set_if(&mut x, "metricSelector", e.pointer("/metric/selector"));
        set_if(&mut x, "currentValue", c.get("value"));
        set_if(&mut x, "currentAverageValue", c.get("averageValue"));
        out.insert("external".into(), Value::Object(x));
    }
    Value::Object(out)
}

/// `MetricValueStatus` of v1 current fields.
fn current_v2(util: Option<&Value>, value: Option<&Value>, average: Option<&Value>) -> Value {
    let mut c = Map::new();
    set_if(&mut c, "averageUtilization", util);
    set_if(&mut c, "averageValue", average);
    set_if(&mut c, "value", value);
    Value::Object(c)
}

/// A v1-shaped `MetricStatus` (from the annotation) in v2's shape.
fn status_v1_to_v2(m: &Value) -> Value {
    let mut out = Map::new();
    set_if(&mut out, "type", m.get("type"));
    if let Some(o) = m.get("object").filter(|v| v.is_object()) {
        out.insert(
            "object".into(),
            json!({
                "describedObject": o.get("target").cloned().unwrap_or(json!({})),
                "metric": identifier(o.get("metricName"), o.get("selector")),
                "current": current_v2(None, o.get("currentValue"), o.get("averageValue")),
            }),
        );
    }
    if let Some(p) = m.get("pods").filter(|v| v.is_object()) {
        out.insert(
            "pods".into(),
            json!({
                "metric": identifier(p.get("metricName"), p.get("selector")),
                "current": current_v2(None, None, p.get("currentAverageValue")),
            }),
        );
    }
    for key in ["resource", "containerResource"] {
        if let Some(r) = m.get(key).filter(|v| v.is_object()) {
            let mut x = Map::new();
            set_if(&mut x, "name", r.get("name"));
            set_if(&mut x, "container", r.get("container"));
            x.insert(
                "current".into(),
                current_v2(
                    r.get("currentAverageUtilization"),
                    None,
                    r.get("currentAverageValue"),
                ),
            );
            out.insert(key.into(), Value::Object(x));
        }
    }
    if let Some(e) = m.get("external").filter(|v| v.is_object()) {
        out.insert(
            "external".into(),
            json!({
                "metric": identifier(e.get("metricName"), e.get("metricSelector")),
                "current": current_v2(None, e.get("currentValue"), e.get("currentAverageValue")),
            }),
        );
    }
    Value::Object(out)
}

fn annotations_mut(obj: &mut Map<String, Value>) -> Option<&mut Map<String, Value>> {
    obj.get_mut("metadata")?
        .as_object_mut()?
        .get_mut("annotations")?
        .as_object_mut()
}

/// Removes annotation `key` and parses its JSON list (malformed: `None`).
fn take_list(obj: &mut Map<String, Value>, key: &str) -> Option<Vec<Value>> {
    let raw = annotations_mut(obj)?.remove(key)?;
    match serde_json::from_str::<Value>(raw.as_str()?) {
        Ok(Value::Array(a)) => Some(a),
        _ => None,
    }
}

fn take_value(obj: &mut Map<String, Value>, key: &str) -> Option<Value> {
    let raw = annotations_mut(obj)?.remove(key)?;
    serde_json::from_str::<Value>(raw.as_str()?).ok()
}

fn put_annotation(obj: &mut Map<String, Value>, key: &str, v: &Value) {
    let meta = obj
        .entry("metadata")
        .or_insert_with(|| json!({}))
        .as_object_mut();
    let Some(meta) = meta else { return };
    let ann = meta.entry("annotations").or_insert_with(|| json!({}));
    if !ann.is_object() {
        *ann = json!({});
    }
    if let Some(a) = ann.as_object_mut() {
        a.insert(key.into(), Value::String(v.to_string()));
    }
}

/// Drops an empty `metadata.annotations` (upstream leaves none behind).
fn prune_annotations(obj: &mut Map<String, Value>) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if meta
            .get("annotations")
            .and_then(Value::as_object)
            .is_some_and(Map::is_empty)
        {
            meta.remove("annotations");
        }
    }
}

/// v1 object → v2 object (`api_version` is the apiVersion to stamp).
pub(super) fn v1_to_v2(obj: Value, api_version: &str) -> Value {
    let Value::Object(mut m) = obj else {
        return obj;
    };
    m.insert("apiVersion".into(), json!(api_version));
    let other = take_list(&mut m, METRICS);
    let current_other = take_list(&mut m, CURRENT_METRICS);
    let conditions = take_list(&mut m, CONDITIONS);
    let behavior = take_value(&mut m, BEHAVIOR);
    prune_annotations(&mut m);

    if let Some(spec) = m.get_mut("spec").and_then(Value::as_object_mut) {
        let cpu = spec.remove("targetCPUUtilizationPercentage");
        let mut metrics: Vec<Value> = other
            .unwrap_or_default()
            .iter()
            .map(spec_v1_to_v2)
            .collect();
        if let Some(cpu) = cpu.filter(|v| !v.is_null()) {
            metrics.push(json!({"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": cpu}}}));
        }
        if !metrics.is_empty() {
            spec.insert("metrics".into(), Value::Array(metrics));
        }
        if let Some(b) = behavior.filter(Value::is_object) {
            spec.insert("behavior".into(), b);
        }
    }
    if let Some(status) = m.get_mut("status").and_then(Value::as_object_mut) {
        let cpu = status.remove("currentCPUUtilizationPercentage");
        let current: Vec<Value> = match current_other {
            // The annotation holds every current metric (the CPU one included).
            Some(list) => list.iter().map(status_v1_to_v2).collect(),
            None => cpu
                .filter(|v| !v.is_null())
                .map(|cpu| {
                    vec![json!({"type": "Resource", "resource": {"name": "cpu",
                        "current": {"averageUtilization": cpu}}})]
                })
                .unwrap_or_default(),
        };
        if !current.is_empty() {
            status.insert("currentMetrics".into(), Value::Array(current));
        }
        if let Some(c) = conditions.filter(|c| !c.is_empty()) {
            status.insert("conditions".into(), Value::Array(c));
        }
    }
    Value::Object(m)
}

/// v2 object → v1 object.
pub(super) fn v2_to_v1(obj: Value) -> Value {
    let Value::Object(mut m) = obj else {
        return obj;
    };
    m.insert("apiVersion".into(), json!("autoscaling/v1"));
    let mut other = Vec::new();
    let mut behavior = None;
    if let Some(spec) = m.get_mut("spec").and_then(Value::as_object_mut) {
        let metrics = match spec.remove("metrics") {
            Some(Value::Array(a)) => a,
            _ => Vec::new(),
        };
        let mut cpu = None;
        for metric in &metrics {
            match cpu_utilization_target(metric) {
                Some(t) => {
                    if cpu.is_none() {
                        cpu = Some(t.clone());
                    }
                }
                None => other.push(spec_v2_to_v1(metric)),
            }
        }
        if let Some(cpu) = cpu {
            spec.insert("targetCPUUtilizationPercentage".into(), cpu);
        }
        behavior = spec.remove("behavior").filter(|b| !b.is_null());
    }
    let mut current = Vec::new();
    let mut conditions = Vec::new();
    if let Some(status) = m.get_mut("status").and_then(Value::as_object_mut) {
        if let Some(Value::Array(list)) = status.remove("currentMetrics") {
            for cm in &list {
                if cm.get("type").and_then(Value::as_str) == Some("Resource")
                    && cm.pointer("/resource/name").and_then(Value::as_str) == Some("cpu")
                {
                    if let Some(u) = cm
                        .pointer("/resource/current/averageUtilization")
                        .filter(|v| !v.is_null())
                    {
                        status.insert("currentCPUUtilizationPercentage".into(), u.clone());
                    }
                }
                current.push(status_v2_to_v1(cm));
            }
        }
        if let Some(Value::Array(c)) = status.remove("conditions") {
            conditions = c;
        }
    }
    if !other.is_empty() {
        put_annotation(&mut m, METRICS, &Value::Array(other));
    }
    if !current.is_empty() {
        put_annotation(&mut m, CURRENT_METRICS, &Value::Array(current));
    }
    if let Some(b) = behavior {
        put_annotation(&mut m, BEHAVIOR, &b);
    }
    if !conditions.is_empty() {
        put_annotation(&mut m, CONDITIONS, &Value::Array(conditions));
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2() -> Value {
        json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "default", "annotations": {"team": "a"}},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 1, "maxReplicas": 5,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "memory",
                        "target": {"type": "AverageValue", "averageValue": "100Mi"}}},
                    {"type": "Resource", "resource": {"name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 60}}},
                    {"type": "Pods", "pods": {"metric": {"name": "qps"},
                        "target": {"type": "AverageValue", "averageValue": "10"}}}
                ],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}}
            },
            "status": {
                "currentReplicas": 2, "desiredReplicas": 2,
                "currentMetrics": [
                    {"type": "Resource", "resource": {"name": "cpu",
                        "current": {"averageUtilization": 42, "averageValue": "210m"}}}
                ],
                "conditions": [{"type": "AbleToScale", "status": "True", "reason": "ReadyForNewScale",
                    "lastTransitionTime": "2026-01-01T00:00:00Z"}]
            }
        })
    }

    #[test]
    fn v2_reads_as_v1_with_annotations() {
        let v1 = v2_to_v1(v2());
        assert_eq!(v1["apiVersion"], "autoscaling/v1");
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 60);
        assert!(v1["spec"].get("metrics").is_none());
        assert!(v1["spec"].get("behavior").is_none());
        assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 42);
        let ann = &v1["metadata"]["annotations"];
        assert_eq!(ann["team"], "a");
        let other: Value = serde_json::from_str(ann[METRICS].as_str().unwrap()).unwrap();
        assert_eq!(
            other,
            json!([
                {"type": "Resource", "resource": {"name": "memory", "targetAverageValue": "100Mi"}},
                {"type": "Pods", "pods": {"metricName": "qps", "targetAverageValue": "10"}}
            ])
        );
        let cur: Value = serde_json::from_str(ann[CURRENT_METRICS].as_str().unwrap()).unwrap();
        assert_eq!(cur[0]["resource"]["currentAverageUtilization"], 42);
        assert!(ann[CONDITIONS]
            .as_str()
            .unwrap()
            .contains("ReadyForNewScale"));
    }

    #[test]
    fn v1_round_trip_keeps_every_v2_field() {
        let back = v1_to_v2(v2_to_v1(v2()), "autoscaling/v2");
        let orig = v2();
        assert_eq!(back["metadata"], orig["metadata"]);
        assert_eq!(back["spec"]["behavior"], orig["spec"]["behavior"]);
        assert_eq!(back["status"], orig["status"]);
        // Order: the annotation's metrics first, then the CPU target (as upstream).
        let metrics = back["spec"]["metrics"].as_array().unwrap();
        assert_eq!(metrics.len(), 3);
        assert_eq!(metrics[0], orig["spec"]["metrics"][0]);
        assert_eq!(metrics[1], orig["spec"]["metrics"][2]);
        assert_eq!(metrics[2], orig["spec"]["metrics"][1]);
    }

    #[test]
    fn plain_v1_becomes_a_cpu_metric() {
        let v1 = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 3,
                "targetCPUUtilizationPercentage": 50},
            "status": {"currentReplicas": 1, "desiredReplicas": 1, "currentCPUUtilizationPercentage": 20}});
        let v2 = v1_to_v2(v1, "autoscaling/v2");
        assert_eq!(v2["apiVersion"], "autoscaling/v2");
        assert_eq!(
            v2["spec"]["metrics"],
            json!([{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 50}}}])
        );
        assert!(v2["spec"].get("targetCPUUtilizationPercentage").is_none());
        assert_eq!(
            v2["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"],
            20
        );
        assert!(v2["metadata"].get("annotations").is_none());
        // No target: no metrics (the controller's default, 80 % CPU, applies).
        let bare = v1_to_v2(
            json!({"apiVersion": "autoscaling/v1", "spec": {"maxReplicas": 2}}),
            "autoscaling/v2",
        );
        assert!(bare["spec"].get("metrics").is_none());
    }

    #[test]
    fn malformed_annotations_are_ignored() {
        let v1 = json!({"apiVersion": "autoscaling/v1",
            "metadata": {"annotations": {METRICS: "not json", CONDITIONS: 7}},
            "spec": {"maxReplicas": 2, "targetCPUUtilizationPercentage": 70}});
        let v2 = v1_to_v2(v1, "autoscaling/v2");
        assert_eq!(v2["spec"]["metrics"].as_array().unwrap().len(), 1);
        assert!(v2["metadata"].get("annotations").is_none());
        assert_eq!(v1_to_v2(json!("x"), "autoscaling/v2"), json!("x"));
        assert_eq!(v2_to_v1(json!(null)), json!(null));
    }
}
