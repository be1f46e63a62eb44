//! Pods: status on create (phase `Pending`, QoS class), the `ephemeralcontainers` and
//! `resize` subresources, graceful deletion of pods bound to a node.

use rk3s_api::ResourceInfo;
use rk3s_validation::FieldError;
use serde_json::{json, Value};

use super::{DeleteMode, Strategy};

/// The strategy of `pods`.
pub struct PodStrategy;

impl Strategy for PodStrategy {
    fn prepare_for_create(&self, _res: &ResourceInfo, obj: &mut Value) {
        let Some(o) = obj.as_object_mut() else { return };
        let qos = qos_class(o.get("spec"));
        o.insert(
            "status".into(),
            json!({"phase": "Pending", "qosClass": qos}),
        );
    }

    fn prepare_subresource_update(&self, sub: &str, old: &Value, new: &Value) -> Option<Value> {
        match sub {
            "ephemeralcontainers" => Some(crate::ephemeral::prepare_update(old, new)),
            "resize" => Some(crate::resize::prepare_update(old, new)),
            _ => None,
        }
    }

    fn validate_update(
        &self,
        res: &ResourceInfo,
        sub: Option<&str>,
        new: &Value,
        old: &Value,
    ) -> Vec<FieldError> {
        match sub {
            Some("ephemeralcontainers") => crate::ephemeral::validate_update(new, old),
            Some("resize") => {
                // The pod as a whole must be valid; then upstream's resize rules (the
                // rules of a pod update, which forbid changing resources, do not apply).
                let spec_errors = rk3s_validation::validate_create(
                    &res.group,
                    &res.version,
                    &res.kind,
                    res.namespaced(),
                    new,
                );
                crate::resize::validate(new, old, spec_errors)
            }
            _ => rk3s_validation::validate_update(
                &res.group,
                &res.version,
                &res.kind,
                res.namespaced(),
                new,
                old,
            ),
        }
    }

    /// A pod bound to a node, not finished, deleted with a grace period > 0 is marked
    /// for its kubelet to stop (grace: the request's, else the pod's
    /// `terminationGracePeriodSeconds`, else 30 s).
    fn delete_mode(&self, obj: &Value, opts: &Value) -> DeleteMode {
        let graceful = obj
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
        if !graceful {
            return DeleteMode::Immediate;
        }
        let seconds = opts
            .get("gracePeriodSeconds")
            .and_then(|g| g.as_i64())
            .or_else(|| {
                obj.pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(|g| g.as_i64())
            })
            .unwrap_or(30);
        DeleteMode::Graceful { seconds }
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn only_running_pods_on_a_node_are_deleted_gracefully() {
        let running = json!({"spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 5}, "status": {"phase": "Running"}});
        assert_eq!(
            PodStrategy.delete_mode(&running, &json!({})),
            DeleteMode::Graceful { seconds: 5 }
        );
        assert_eq!(
            PodStrategy.delete_mode(&running, &json!({"gracePeriodSeconds": 2})),
            DeleteMode::Graceful { seconds: 2 }
        );
        assert_eq!(
            PodStrategy.delete_mode(&running, &json!({"gracePeriodSeconds": 0})),
            DeleteMode::Immediate
        );
        let unbound = json!({"spec": {}});
        assert_eq!(
            PodStrategy.delete_mode(&unbound, &json!({})),
            DeleteMode::Immediate
        );
        let done = json!({"spec": {"nodeName": "n1"}, "status": {"phase": "Succeeded"}});
        assert_eq!(
            PodStrategy.delete_mode(&done, &json!({})),
            DeleteMode::Immediate
        );
    }
}
