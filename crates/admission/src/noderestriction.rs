//! NodeRestriction, as upstream's plugin: a kubelet (`system:node:<name>` in group
//! `system:nodes`) may only change its own Node and Lease, the pods bound to it (their
//! status, deletion and eviction) and its mirror pods; it may not add, change or remove
//! labels under `node-restriction.kubernetes.io/`, nor change its Node's taints after
//! registration. The Node authorizer decides what a node may read; this plugin decides
//! which objects its writes may touch.

use serde_json::Value;

/// The prefix of labels only administrators may set on Nodes (workload isolation).
pub const RESTRICTED_LABEL_PREFIX: &str = "node-restriction.kubernetes.io/";
/// The annotation that marks a mirror pod (of a static pod on a node).
pub const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// The operation of an admission request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// POST.
    Create,
    /// PUT / PATCH.
    Update,
    /// DELETE.
    Delete,
}

/// One write to check.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    /// The requesting user's name.
    pub user: &'a str,
    /// The requesting user's groups.
    pub groups: &'a [String],
    /// The operation.
    pub operation: Operation,
    /// API group of the resource (`""` for core).
    pub group: &'a str,
    /// The resource (plural), e.g. `pods`.
    pub resource: &'a str,
    /// The subresource, e.g. `status`, or `""`.
    pub subresource: &'a str,
    /// The namespace (`""` for cluster-scoped resources).
    pub namespace: &'a str,
    /// The object's name.
    pub name: &'a str,
    /// The new object (create, update).
    pub object: Option<&'a Value>,
    /// The stored object (update, delete; for evictions, the pod).
    pub old_object: Option<&'a Value>,
}

/// The node a user acts as, if it is a node: `system:node:<name>` in `system:nodes`.
pub fn node_of<'a>(user: &'a str, groups: &[String]) -> Option<&'a str> {
    let name = user.strip_prefix("system:node:")?;
    (!name.is_empty() && groups.iter().any(|g| g == "system:nodes")).then_some(name)
}

fn node_name_of_pod(pod: Option<&Value>) -> &str {
    pod.and_then(|p| p.pointer("/spec/nodeName"))
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn restricted_labels(obj: Option<&Value>) -> std::collections::BTreeMap<String, Value> {
    obj.and_then(|o| o.pointer("/metadata/labels"))
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.starts_with(RESTRICTED_LABEL_PREFIX))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn taints(obj: Option<&Value>) -> Value {
    obj.and_then(|o| o.pointer("/spec/taints"))
        .cloned()
        .filter(|t| !t.is_null() && t.as_array().is_none_or(|a| !a.is_empty()))
        .unwrap_or(Value::Null)
}

/// Checks one write. `Err` carries upstream's message (the caller answers 403 Forbidden:
/// `<resource> "<name>" is forbidden: <message>`).
pub fn admit(a: &Attributes<'_>) -> Result<(), String> {
    let Some(node) = node_of(a.user, a.groups) else {
        return Ok(());
    };
    match (a.group, a.resource) {
        ("", "pods") => admit_pod(node, a),
        ("", "nodes") => admit_node(node, a),
        ("coordination.k8s.io", "leases") => {
            if a.namespace != "kube-node-lease" {
                return Err(
                    "can only access leases in the \"kube-node-lease\" system namespace".into(),
                );
            }
            if a.name != node {
                return Err(
                    "can only access node lease with the same name as the requesting node".into(),
                );
            }
            Ok(())
        }
        ("storage.k8s.io", "csinodes") => {
            if a.name != node {
                return Err(format!(
                    "node {node:?} is not allowed to modify object {:?}",
                    a.name
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn admit_pod(node: &str, a: &Attributes<'_>) -> Result<(), String> {
    match (a.subresource, a.operation) {
        ("", Operation::Create) => {
            let pod = a.object;
            let mirror = pod
                .and_then(|p| p.pointer("/metadata/annotations"))
                .and_then(|m| m.get(MIRROR_POD_ANNOTATION))
                .is_some();
            if !mirror {
                return Err(format!(
                    "pod does not have \"{MIRROR_POD_ANNOTATION}\" annotation, node {node:?} can only create mirror pods"
                ));
            }
            if node_name_of_pod(pod) != node {
                return Err(format!(
                    "node {node:?} can only create pods with spec.nodeName set to itself"
                ));
            }
            Ok(())
        }
        ("", Operation::Update) => Err(format!("node {node:?} can only update pod status")),
        ("", Operation::Delete) => {
            if node_name_of_pod(a.old_object) != node {
                return Err(format!(
                    "node {node:?} can only delete pods with spec.nodeName set to itself"
                ));
            }
            Ok(())
        }
        ("status", _) => {
            if node_name_of_pod(a.old_object.or(a.object)) != node {
                return Err(format!(
                    "node {node:?} can only update pod status for pods with spec.nodeName set to itself"
                ));
            }
            Ok(())
        }
        ("eviction", _) => {
            if node_name_of_pod(a.old_object) != node {
                return Err(format!(
                    "node {node:?} can only evict pods with spec.nodeName set to itself"
                ));
            }
            Ok(())
        }
        // ephemeralcontainers, binding, resize...: not a kubelet's business.
        (sub, _) => Err(format!("node {node:?} cannot modify pods/{sub}")),
    }
}

fn admit_node(node: &str, a: &Attributes<'_>) -> Result<(), String> {
    if a.name != node {
        return Err(format!(
            "node {node:?} is not allowed to modify node {:?}",
            a.name
        ));
    }
    match a.operation {
        Operation::Create => {
            let set: Vec<String> = restricted_labels(a.object).into_keys().collect();
            if !set.is_empty() {
                return Err(format!(
                    "node {node:?} is not allowed to set the following labels: {}",
                    set.join(", ")
                ));
            }
            Ok(())
        }
        Operation::Update => {
            let new = restricted_labels(a.object);
            let old = restricted_labels(a.old_object);
            let mut changed: Vec<String> = new
                .iter()
                .filter(|(k, v)| old.get(*k) != Some(v))
                .map(|(k, _)| k.clone())
                .chain(old.keys().filter(|k| !new.contains_key(*k)).cloned())
                .collect();
            changed.sort();
            changed.dedup();
            if !changed.is_empty() {
                return Err(format!(
                    "node {node:?} is not allowed to modify labels: {}",
                    changed.join(", ")
                ));
            }
            if a.subresource.is_empty() && taints(a.object) != taints(a.old_object) {
                return Err(format!("node {node:?} is not allowed to modify taints"));
            }
            Ok(())
        }
        Operation::Delete => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nodes() -> Vec<String> {
        vec!["system:nodes".into(), "system:authenticated".into()]
    }

    #[allow(clippy::too_many_arguments)]
    fn attrs<'a>(
        groups: &'a [String],
        op: Operation,
        group: &'a str,
        resource: &'a str,
        sub: &'a str,
        ns: &'a str,
        name: &'a str,
        obj: Option<&'a Value>,
        old: Option<&'a Value>,
    ) -> Attributes<'a> {
        Attributes {
            user: "system:node:n1",
            groups,
            operation: op,
            group,
            resource,
            subresource: sub,
            namespace: ns,
            name,
            object: obj,
            old_object: old,
        }
    }

    #[test]
    fn others_are_not_restricted() {
        let g = vec!["system:masters".to_string()];
        let mut a = attrs(&g, Operation::Update, "", "nodes", "", "", "n2", None, None);
        a.user = "admin";
        assert!(admit(&a).is_ok());
        // A user named like a node but without the group is no node.
        a.user = "system:node:n1";
        assert!(admit(&a).is_ok());
        assert_eq!(node_of("system:node:n1", &nodes()), Some("n1"));
        assert_eq!(node_of("system:node:", &nodes()), None);
    }

    #[test]
    fn a_node_changes_only_itself() {
        let g = nodes();
        let n2 = json!({"metadata": {"name": "n2"}});
        let e = admit(&attrs(
            &g,
            Operation::Update,
            "",
            "nodes",
            "",
            "",
            "n2",
            Some(&n2),
            Some(&n2),
        ))
        .expect_err("other node");
        assert_eq!(e, "node \"n1\" is not allowed to modify node \"n2\"");
        assert!(admit(&attrs(
            &g,
            Operation::Update,
            "",
            "nodes",
            "status",
            "",
            "n2",
            Some(&n2),
            Some(&n2)
        ))
        .is_err());
        let n1 = json!({"metadata": {"name": "n1", "labels": {"a": "b"}}});
        assert!(admit(&attrs(
            &g,
            Operation::Update,
            "",
            "nodes",
            "",
            "",
            "n1",
            Some(&n1),
            Some(&n1)
        ))
        .is_ok());
        assert!(admit(&attrs(
            &g,
            Operation::Update,
            "",
            "nodes",
            "status",
            "",
            "n1",
            Some(&n1),
            Some(&n1)
        ))
        .is_ok());
    }

    #[test]
    fn restricted_labels_and_taints() {
        let g = nodes();
        let with = json!({"metadata": {"name": "n1", "labels": {"node-restriction.kubernetes.io/pool": "gpu"}}});
        let without = json!({"metadata": {"name": "n1", "labels": {}}});
        let e = admit(&attrs(
            &g,
            Operation::Create,
            "",
            "nodes",
            "",
            "",
            "n1",
            Some(&with),
            None,
        ))
        .expect_err("create with restricted label");
        assert!(
            e.contains(
                "not allowed to set the following labels: node-restriction.kubernetes.io/pool"
            ),
            "{e}"
        );
        let e = admit(&attrs(
            &g,
            Operation::Update,
            "",
            "nodes",
            "",
            "",
            "n1",
            Some(&without),
            Some(&with),
        ))
        .expect_err("removing");
        assert!(
            e.contains("not allowed to modify labels: node-restriction.kubernetes.io/pool"),
            "{e}"
        );
        // Keeping an admin's label as it is is fine.
        assert!(admit(&attrs(
            &g,
            Operation::Update,
            "",
            "nodes",
            "",
            "",
            "n1",
            Some(&with),
            Some(&with)
        ))
        .is_ok());
        let tainted = json!({"metadata": {"name": "n1"}, "spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]}});
        let plain = json!({"metadata": {"name": "n1"}, "spec": {}});
        assert!(admit(&attrs(
            &g,
            Operation::Create,
            "",
            "nodes",
            "",
            "",
            "n1",
            Some(&tainted),
            None
        ))
        .is_ok());
        let e = admit(&attrs(
            &g,
            Operation::Update,
            "",
            "nodes",
            "",
            "",
            "n1",
            Some(&plain),
            Some(&tainted),
        ))
        .expect_err("untaint");
        assert_eq!(e, "node \"n1\" is not allowed to modify taints");
        let empty = json!({"metadata": {"name": "n1"}, "spec": {"taints": []}});
        assert!(admit(&attrs(
            &g,
            Operation::Update,
            "",
            "nodes",
            "",
            "",
            "n1",
            Some(&empty),
            Some(&plain)
        ))
        .is_ok());
    }

    #[test]
    fn pods_bound_to_the_node_only() {
        let g = nodes();
        let mine = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}});
        let theirs = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n2"}});
        assert!(admit(&attrs(
            &g,
            Operation::Update,
            "",
            "pods",
            "status",
            "d",
            "p",
            Some(&mine),
            Some(&mine)
        ))
        .is_ok());
        assert!(admit(&attrs(
            &g,
            Operation::Update,
            "",
            "pods",
            "status",
            "d",
            "p",
            Some(&theirs),
            Some(&theirs)
        ))
        .is_err());
        assert!(admit(&attrs(
            &g,
            Operation::Delete,
            "",
            "pods",
            "",
            "d",
            "p",
            None,
            Some(&mine)
        ))
        .is_ok());
        let e = admit(&attrs(
            &g,
            Operation::Delete,
            "",
            "pods",
            "",
            "d",
            "p",
            None,
            Some(&theirs),
        ))
        .expect_err("delete");
        assert_eq!(
            e,
            "node \"n1\" can only delete pods with spec.nodeName set to itself"
        );
        assert_eq!(
            admit(&attrs(
                &g,
                Operation::Update,
                "",
                "pods",
                "",
                "d",
                "p",
                Some(&mine),
                Some(&mine)
            ))
            .expect_err("spec"),
            "node \"n1\" can only update pod status"
        );
        assert!(admit(&attrs(
            &g,
            Operation::Create,
            "",
            "pods",
            "eviction",
            "d",
            "p",
            None,
            Some(&theirs)
        ))
        .is_err());
        // Creating: mirror pods bound to itself only.
        assert!(admit(&attrs(
            &g,
            Operation::Create,
            "",
            "pods",
            "",
            "d",
            "p",
            Some(&mine),
            None
        ))
        .is_err());
        let mirror = json!({"metadata": {"name": "p", "annotations": {"kubernetes.io/config.mirror": "x"}}, "spec": {"nodeName": "n1"}});
        assert!(admit(&attrs(
            &g,
            Operation::Create,
            "",
            "pods",
            "",
            "d",
            "p",
            Some(&mirror),
            None
        ))
        .is_ok());
        let mirror2 = json!({"metadata": {"name": "p", "annotations": {"kubernetes.io/config.mirror": "x"}}, "spec": {"nodeName": "n2"}});
        assert!(admit(&attrs(
            &g,
            Operation::Create,
            "",
            "pods",
            "",
            "d",
            "p",
            Some(&mirror2),
            None
        ))
        .is_err());
    }

    #[test]
    fn leases() {
        let g = nodes();
        assert!(admit(&attrs(
            &g,
            Operation::Update,
            "coordination.k8s.io",
            "leases",
            "",
            "kube-node-lease",
            "n1",
            None,
            None
        ))
        .is_ok());
        assert!(admit(&attrs(
            &g,
            Operation::Update,
            "coordination.k8s.io",
            "leases",
            "",
            "kube-node-lease",
            "n2",
            None,
            None
        ))
        .is_err());
        assert!(admit(&attrs(
            &g,
            Operation::Create,
            "coordination.k8s.io",
            "leases",
            "",
            "default",
            "n1",
            None,
            None
        ))
        .is_err());
        // Other resources are the authorizer's business.
        assert!(admit(&attrs(
            &g,
            Operation::Create,
            "",
            "events",
            "",
            "default",
            "x",
            None,
            None
        ))
        .is_ok());
    }
}
