//! Conversion between an API form and the stored form of resources that upstream
//! stores once for several groups or versions: `events.k8s.io/v1` Events are stored
//! as core/v1 Events (so `kubectl describe` sees the events that kube-rs recorders
//! write, and core clients see the new ones); `autoscaling/v1` HorizontalPodAutoscalers
//! are stored as `autoscaling/v2` ([`hpa`]), so the autoscaler sees a v1 client's CPU
//! target and a v1 client sees what v2 holds.

mod hpa;

use rk3s_api::ResourceInfo;
use serde_json::{Map, Value};

/// (events.k8s.io/v1 field, core/v1 field) pairs that only change name.
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

/// Whether objects of `res` are stored in another group's form.
pub fn needs_conversion(res: &ResourceInfo) -> bool {
    res.group == "events.k8s.io" || is_hpa(res)
}

/// A converted HPA with v2's defaults (upstream defaults the stored v2 form on read:
/// a v1 HPA without a CPU target reads with v2's default metric in both versions).
fn v2_defaulted(mut obj: Value) -> Value {
    rk3s_validation::apply_defaults("autoscaling", "v2", "HorizontalPodAutoscaler", &mut obj);
    obj
}

fn is_hpa(res: &ResourceInfo) -> bool {
    res.group == "autoscaling" && res.plural == "horizontalpodautoscalers"
}

fn rename(
    obj: &Value,
    pairs: &[(&str, &str)],
    forward: bool,
    kind: &str,
    api_version: &str,
) -> Value {
    let Some(m) = obj.as_object() else {
        return obj.clone();
    };
    let mut out = Map::new();
    out.insert("kind".into(), Value::String(kind.into()));
    out.insert("apiVersion".into(), Value::String(api_version.into()));
    for (k, v) in m {
        if k == "kind" || k == "apiVersion" {
            continue;
        }
        let renamed = pairs
            .iter()
            .find(|(a, b)| if forward { a == k } else { b == k })
            .map(|(a, b)| if forward { *b } else { *a })
            .unwrap_or(k.as_str());
        out.insert(renamed.to_string(), v.clone());
    }
    Value::Object(out)
}

/// API form → stored form.
pub fn to_storage(res: &ResourceInfo, obj: Value) -> Value {
    if !needs_conversion(res) {
        return obj;
    }
    if is_hpa(res) {
        return if hpa::is_v1(&obj) {
            v2_defaulted(hpa::v1_to_v2(obj, "autoscaling/v2"))
        } else {
            obj
        };
    }
    rename(&obj, EVENT_FIELDS, true, "Event", "v1")
}

/// Stored form → API form.
pub fn from_storage(res: &ResourceInfo, obj: Value) -> Value {
    if !needs_conversion(res) {
        return obj;
    }
    if is_hpa(res) {
        // Objects written before HPAs were stored as v2 may still be v1.
        return match (res.version.as_str(), hpa::is_v1(&obj)) {
            ("v1", false) => hpa::v2_to_v1(obj),
            ("v1", true) => obj,
            (_, true) => v2_defaulted(hpa::v1_to_v2(obj, &res.api_version())),
            (_, false) => obj,
        };
    }
    let mut v = rename(&obj, EVENT_FIELDS, false, "Event", &res.api_version());
    // core Events written by old clients have no eventTime; events.k8s.io requires one.
    if let Some(m) = v.as_object_mut() {
        if m.get("eventTime").is_none_or(|t| t.is_null()) {
            let t = m
                .get("deprecatedFirstTimestamp")
                .cloned()
                .or_else(|| m.pointer_like_creation());
            if let Some(t) = t {
                m.insert("eventTime".into(), Value::String(micro(&t)));
            }
        }
    }
    v
}

trait CreationTime {
    fn pointer_like_creation(&self) -> Option<Value>;
}

impl CreationTime for Map<String, Value> {
    fn pointer_like_creation(&self) -> Option<Value> {
        self.get("metadata")
            .and_then(|m| m.get("creationTimestamp"))
            .cloned()
    }
}

fn micro(t: &Value) -> String {
    let s = t.as_str().unwrap_or("");
    match s.strip_suffix('Z') {
        Some(base) if !base.contains('.') => format!("{base}.000000Z"),
        _ => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn events_res() -> ResourceInfo {
        rk3s_api::Registry::builtin()
            .get("events.k8s.io", "v1", "events")
            .map(|r| (*r).clone())
            .expect("events.k8s.io")
    }

    #[test]
    fn round_trip_between_events_forms() {
        let r = events_res();
        assert_eq!(r.key_prefix(), "/registry/core/events/");
        let new = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e", "namespace": "d"},
            "eventTime": "2026-01-01T00:00:00.000000Z", "reason": "Scheduled", "note": "Successfully assigned d/p to n",
            "regarding": {"kind": "Pod", "name": "p", "namespace": "d"}, "reportingController": "default-scheduler", "type": "Normal", "action": "Binding"});
        let stored = to_storage(&r, new.clone());
        assert_eq!(stored["apiVersion"], "v1");
        assert_eq!(stored["involvedObject"]["name"], "p");
        assert_eq!(stored["message"], "Successfully assigned d/p to n");
        assert_eq!(stored["reportingComponent"], "default-scheduler");
        assert_eq!(from_storage(&r, stored), new);
    }

    #[test]
    fn core_events_get_an_event_time() {
        let r = events_res();
        let core = json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e"}, "firstTimestamp": "2026-01-01T00:00:00Z", "message": "m"});
        let v = from_storage(&r, core);
        assert_eq!(v["eventTime"], "2026-01-01T00:00:00.000000Z");
        assert_eq!(v["note"], "m");
    }
}
