//! Small helpers shared by the plugins.

use serde_json::Value;

/// The name shown in admission errors: `metadata.name`, else
/// `metadata.generateName`, else `Unknown` (as upstream's `admission.NewForbidden`).
pub fn object_name(obj: &Value) -> String {
    let meta = &obj["metadata"];
    match meta["name"].as_str() {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => match meta["generateName"].as_str() {
            Some(g) if !g.is_empty() => g.to_string(),
            _ => "Unknown".to_string(),
        },
    }
}

/// Upstream's Forbidden message: `<resource>[.<group>] "<name>" is forbidden: <msg>`.
pub fn forbidden_message(group: &str, resource: &str, name: &str, msg: &str) -> String {
    if group.is_empty() {
        format!("{resource} \"{name}\" is forbidden: {msg}")
    } else {
        format!("{resource}.{group} \"{name}\" is forbidden: {msg}")
    }
}

/// Formats errors as upstream's `utilerrors.NewAggregate(errs).Error()`:
/// one message alone, several as `[a, b]` (duplicates dropped).
pub fn aggregate(errs: &[String]) -> String {
    let mut seen: Vec<&String> = Vec::new();
    for e in errs {
        if !seen.contains(&e) {
            seen.push(e);
        }
    }
    if seen.len() == 1 {
        seen[0].clone()
    } else {
        format!(
            "[{}]",
            seen.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// The pod spec of a Pod, or of the pod template of a workload
/// (Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, ReplicationController,
/// PodTemplate, CronJob). Also returns the pod (template) metadata.
pub fn pod_spec_of<'a>(kind: &str, obj: &'a Value) -> Option<(&'a Value, &'a Value)> {
    let (meta, spec) = match kind {
        "Pod" => (&obj["metadata"], &obj["spec"]),
        "PodTemplate" => (&obj["template"]["metadata"], &obj["template"]["spec"]),
        "CronJob" => {
            let t = &obj["spec"]["jobTemplate"]["spec"]["template"];
            (&t["metadata"], &t["spec"])
        }
        "Deployment"
        | "ReplicaSet"
        | "StatefulSet"
        | "DaemonSet"
        | "Job"
        | "ReplicationController" => {
            let t = &obj["spec"]["template"];
            (&t["metadata"], &t["spec"])
        }
        _ => return None,
    };
    if spec.is_object() {
        Some((meta, spec))
    } else {
        None
    }
}

/// The elements of an array field (empty when missing).
pub fn arr(v: &Value) -> &[Value] {
    v.as_array().map(|a| a.as_slice()).unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_and_messages() {
        assert_eq!(
            object_name(&json!({"metadata": {"generateName": "web-"}})),
            "web-"
        );
        assert_eq!(object_name(&json!({})), "Unknown");
        assert_eq!(
            forbidden_message("apps", "deployments", "d", "no"),
            "deployments.apps \"d\" is forbidden: no"
        );
        assert_eq!(aggregate(&["a".into()]), "a");
        assert_eq!(aggregate(&["a".into(), "b".into(), "a".into()]), "[a, b]");
    }
}
