//! The Node authorizer, as upstream's `plugin/pkg/auth/authorizer/node`: a kubelet
//! (`system:node:<name>` in group `system:nodes`) may read the objects the pods bound
//! to its node need, its own Node, Lease and CSINode, and otherwise only what the
//! `system:node` ClusterRole lists.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::rbac::{rules_allow, PolicyRule};
use crate::util::{arr, str_at};
use crate::{Attributes, Decision, GROUP_NODES};

const NODE_PREFIX: &str = "system:node:";
const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Pod,
    Secret,
    ConfigMap,
    Pvc,
    Pv,
    ServiceAccount,
    ResourceClaim,
    VolumeAttachment,
}

type Key = (Kind, String, String);

/// The graph of which objects each node may read, built from the scheduled pods,
/// the PersistentVolumes and the VolumeAttachments. Rebuild (or rebuild
/// incrementally by recreating) when pods are bound/deleted or PVs/VolumeAttachments
/// change.
#[derive(Debug, Clone, Default)]
pub struct NodeGraph {
    reach: HashMap<Key, HashSet<String>>,
    node_rules: Vec<PolicyRule>,
}

fn names_in_pod_for(pod: &Value, secrets: &mut Vec<String>, configmaps: &mut Vec<String>) {
    let spec = pod.get("spec").unwrap_or(&Value::Null);
    for s in arr(spec, "imagePullSecrets") {
        secrets.push(str_at(s, &["name"]).to_string());
    }
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        for c in arr(spec, list) {
            for e in arr(c, "env") {
                secrets.push(str_at(e, &["valueFrom", "secretKeyRef", "name"]).to_string());
                configmaps.push(str_at(e, &["valueFrom", "configMapKeyRef", "name"]).to_string());
            }
            for e in arr(c, "envFrom") {
                secrets.push(str_at(e, &["secretRef", "name"]).to_string());
                configmaps.push(str_at(e, &["configMapRef", "name"]).to_string());
            }
        }
    }
    for v in arr(spec, "volumes") {
        secrets.push(str_at(v, &["secret", "secretName"]).to_string());
        configmaps.push(str_at(v, &["configMap", "name"]).to_string());
        for src in v
            .pointer("/projected/sources")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            secrets.push(str_at(src, &["secret", "name"]).to_string());
            configmaps.push(str_at(src, &["configMap", "name"]).to_string());
        }
        secrets.push(str_at(v, &["azureFile", "secretName"]).to_string());
        for plugin in [
            "cephfs",
            "cinder",
            "flexVolume",
            "iscsi",
            "rbd",
            "scaleIO",
            "storageos",
        ] {
            secrets.push(str_at(v, &[plugin, "secretRef", "name"]).to_string());
        }
        secrets.push(str_at(v, &["csi", "nodePublishSecretRef", "name"]).to_string());
    }
}

fn pv_secret_refs(pv: &Value, claim_ns: &str) -> Vec<(String, String)> {
    let spec = pv.get("spec").unwrap_or(&Value::Null);
    let mut out = Vec::new();
    let mut push = |r: Option<&Value>, default_ns: &str| {
        if let Some(r) = r {
            let name = str_at(r, &["name"]);
            let ns = str_at(r, &["namespace"]);
            if !name.is_empty() {
                out.push((
                    if ns.is_empty() {
                        default_ns.to_string()
                    } else {
                        ns.to_string()
                    },
                    name.to_string(),
                ));
            }
        }
    };
    if let Some(csi) = spec.get("csi") {
        for k in [
            "nodePublishSecretRef",
            "nodeStageSecretRef",
            "nodeExpandSecretRef",
            "controllerPublishSecretRef",
            "controllerExpandSecretRef",
        ] {
            push(csi.get(k), "");
        }
    }
    for plugin in [
        "cephfs",
        "cinder",
        "flexVolume",
        "iscsi",
        "rbd",
        "scaleIO",
        "storageos",
    ] {
        push(spec.get(plugin).and_then(|p| p.get("secretRef")), claim_ns);
    }
    if let Some(az) = spec.get("azureFile") {
        let name = str_at(az, &["secretName"]);
        let ns = str_at(az, &["secretNamespace"]);
        if !name.is_empty() {
            out.push((
                if ns.is_empty() {
                    claim_ns.to_string()
                } else {
                    ns.to_string()
                },
                name.to_string(),
            ));
        }
    }
    out
}

impl NodeGraph {
    /// Builds the graph. `pods`: all pods (those without `spec.nodeName` are
    /// ignored); `pvs`: PersistentVolumes; `volume_attachments`:
    /// `storage.k8s.io` VolumeAttachments. The static rules for requests the graph does
    /// not govern are those of the bootstrap `system:node` ClusterRole.
    pub fn new(pods: &[Value], pvs: &[Value], volume_attachments: &[Value]) -> Self {
        static NODE_RULES: std::sync::OnceLock<Vec<PolicyRule>> = std::sync::OnceLock::new();
        let node_rules = NODE_RULES
            .get_or_init(|| {
                crate::bootstrap_policy()
                    .iter()
                    .find(|o| {
                        str_at(o, &["kind"]) == "ClusterRole"
                            && str_at(o, &["metadata", "name"]) == "system:node"
                    })
                    .map(|o| arr(o, "rules").iter().map(PolicyRule::from_json).collect())
                    .unwrap_or_default()
            })
            .clone();
        let mut g = NodeGraph {
            reach: HashMap::new(),
            node_rules,
        };
        for pod in pods {
            let node = str_at(pod, &["spec", "nodeName"]);
            if node.is_empty() {
                continue;
            }
            let ns = str_at(pod, &["metadata", "namespace"]);
            let name = str_at(pod, &["metadata", "name"]);
            g.add(Kind::Pod, ns, name, node);
            g.add(
                Kind::ServiceAccount,
                ns,
                str_at(pod, &["spec", "serviceAccountName"]),
                node,
            );
            let (mut secrets, mut cms) = (Vec::new(), Vec::new());
            names_in_pod_for(pod, &mut secrets, &mut cms);
            for s in secrets {
                g.add(Kind::Secret, ns, &s, node);
            }
            for c in cms {
                g.add(Kind::ConfigMap, ns, &c, node);
            }
            for v in pod
                .pointer("/spec/volumes")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or(&[])
            {
                g.add(
                    Kind::Pvc,
                    ns,
                    str_at(v, &["persistentVolumeClaim", "claimName"]),
                    node,
                );
                if v.get("ephemeral").is_some() {
                    let claim = format!("{name}-{}", str_at(v, &["name"]));
                    g.add(Kind::Pvc, ns, &claim, node);
                }
            }
            for rc in pod
                .pointer("/status/resourceClaimStatuses")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or(&[])
            {
                g.add(
                    Kind::ResourceClaim,
                    ns,
                    str_at(rc, &["resourceClaimName"]),
                    node,
                );
            }
        }
        for pv in pvs {
            let pv_name = str_at(pv, &["metadata", "name"]);
            let claim_ns = str_at(pv, &["spec", "claimRef", "namespace"]);
            let claim = str_at(pv, &["spec", "claimRef", "name"]);
            let nodes: Vec<String> = g
                .reach
                .get(&(Kind::Pvc, claim_ns.to_string(), claim.to_string()))
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default();
            for n in &nodes {
                g.add(Kind::Pv, "", pv_name, n);
                for (sns, sname) in pv_secret_refs(pv, claim_ns) {
                    g.add(Kind::Secret, &sns, &sname, n);
                }
            }
        }
        for va in volume_attachments {
            let node = str_at(va, &["spec", "nodeName"]);
            g.add(
                Kind::VolumeAttachment,
                "",
                str_at(va, &["metadata", "name"]),
                node,
            );
        }
        g
    }

    fn add(&mut self, kind: Kind, ns: &str, name: &str, node: &str) {
        if name.is_empty() || node.is_empty() {
            return;
        }
        self.reach
            .entry((kind, ns.to_string(), name.to_string()))
            .or_default()
            .insert(node.to_string());
    }

    fn related(&self, node: &str, kind: Kind, a: &Attributes) -> Decision {
        if a.name.is_empty() {
            return Decision::NoOpinion("No Object name found".into());
        }
        let key = (kind, a.namespace.clone(), a.name.clone());
        if self
            .reach
            .get(&key)
            .is_some_and(|nodes| nodes.contains(node))
        {
            Decision::Allow
        } else {
            Decision::NoOpinion(format!(
                "no relationship found between node '{node}' and this object"
            ))
        }
    }

    fn get_only(&self, node: &str, kind: Kind, a: &Attributes) -> Decision {
        if a.verb != "get" {
            return Decision::NoOpinion("can only get individual resources of this type".into());
        }
        if !a.subresource.is_empty() {
            return Decision::NoOpinion("cannot get subresource".into());
        }
        self.related(node, kind, a)
    }

    fn read_namespaced(&self, node: &str, kind: Kind, a: &Attributes) -> Decision {
        if !matches!(a.verb.as_str(), "get" | "list" | "watch") {
            return Decision::NoOpinion("can only read resources of this type".into());
        }
        if !a.subresource.is_empty() {
            return Decision::NoOpinion("cannot read subresource".into());
        }
        if a.namespace.is_empty() {
            return Decision::NoOpinion("can only read namespaced object of this type".into());
        }
        self.related(node, kind, a)
    }

    /// Decides a request. Non-node users get `NoOpinion("")`. For nodes, upstream's
    /// rules (with `AuthorizeNodeWithSelectors`): secrets/configmaps get/list/watch by
    /// name, PVCs/PVs/VolumeAttachments/ResourceClaims get, only when related to a pod
    /// on the node; `serviceaccounts/token` create for the pods' service accounts;
    /// Leases in `kube-node-lease` and the CSINode named after the node; its own Node
    /// (create/update/patch any, read only its own); pods: get of its pods, list/watch
    /// only with `spec.nodeName=<node>` in [`Attributes::field_selector`] (or a
    /// related pod's name in [`Attributes::name`]), create/delete (mirror pods),
    /// status update/patch, eviction create; everything else by the `system:node`
    /// role's rules. Every refusal is a `NoOpinion` with upstream's reason, so RBAC
    /// is asked next.
    ///
    /// The caller puts the object name of `list`/`watch` requests with a
    /// `metadata.name=<x>` field selector into [`Attributes::name`] (as upstream's
    /// request info does), so kubelets can watch a single Secret or ConfigMap.
    pub fn authorize(&self, a: &Attributes) -> Decision {
        let Some(node) = a.user.name.strip_prefix(NODE_PREFIX) else {
            return Decision::NoOpinion(String::new());
        };
        if !a.user.groups.iter().any(|g| g == GROUP_NODES) {
            return Decision::NoOpinion(String::new());
        }
        if node.is_empty() {
            return Decision::NoOpinion(format!("unknown node for user {:?}", a.user.name));
        }
        if a.resource_request {
            match (a.api_group.as_str(), a.resource.as_str()) {
                ("", "secrets") => return self.read_namespaced(node, Kind::Secret, a),
                ("", "configmaps") => return self.read_namespaced(node, Kind::ConfigMap, a),
                ("", "persistentvolumeclaims") => {
                    if a.subresource == "status" {
                        if !matches!(a.verb.as_str(), "update" | "patch") {
                            return Decision::NoOpinion(
                                "can only get/update/patch this type".into(),
                            );
                        }
                        return self.related(node, Kind::Pvc, a);
                    }
                    return self.get_only(node, Kind::Pvc, a);
                }
                ("", "persistentvolumes") => return self.get_only(node, Kind::Pv, a),
                ("resource.k8s.io", "resourceclaims") => {
                    return self.get_only(node, Kind::ResourceClaim, a)
                }
                ("storage.k8s.io", "volumeattachments") => {
                    return self.get_only(node, Kind::VolumeAttachment, a)
                }
                ("", "serviceaccounts") => {
                    if a.verb != "create" || a.name.is_empty() {
                        return Decision::NoOpinion(
                            "can only create tokens for individual service accounts".into(),
                        );
                    }
                    if a.subresource != "token" {
                        return Decision::NoOpinion(
                            "can only create token subresource of serviceaccount".into(),
                        );
                    }
                    return self.related(node, Kind::ServiceAccount, a);
                }
                ("coordination.k8s.io", "leases") => {
                    if !matches!(
                        a.verb.as_str(),
                        "get" | "create" | "update" | "patch" | "delete"
                    ) {
                        return Decision::NoOpinion(
                            "can only get, create, update, patch, or delete a node lease".into(),
                        );
                    }
                    if a.namespace != NODE_LEASE_NAMESPACE {
                        return Decision::NoOpinion(format!(
                            "can only access leases in the {NODE_LEASE_NAMESPACE:?} system namespace"
                        ));
                    }
                    if a.verb != "create" && a.name != node {
                        return Decision::NoOpinion(
                            "can only access node lease with the same name as the requesting node"
                                .into(),
                        );
                    }
                    return Decision::Allow;
                }
                ("storage.k8s.io", "csinodes") => {
                    if !matches!(
                        a.verb.as_str(),
                        "get" | "create" | "update" | "patch" | "delete"
                    ) {
                        return Decision::NoOpinion(
                            "can only get, create, update, patch, or delete a CSINode".into(),
                        );
                    }
                    if !a.subresource.is_empty() {
                        return Decision::NoOpinion("cannot authorize CSINode subresources".into());
                    }
                    if a.verb != "create" && a.name != node {
                        return Decision::NoOpinion(
                            "can only access CSINode with the same name as the requesting node"
                                .into(),
                        );
                    }
                    return Decision::Allow;
                }
                ("", "nodes") => return authorize_node(node, a),
                ("", "pods") => return self.authorize_pod(node, a),
                _ => {}
            }
        }
        if rules_allow(a, &self.node_rules) {
            Decision::Allow
        } else {
            Decision::NoOpinion(String::new())
        }
    }

    fn authorize_pod(&self, node: &str, a: &Attributes) -> Decision {
        match (a.subresource.as_str(), a.verb.as_str()) {
            ("", "get") => self.get_only(node, Kind::Pod, a),
            ("", "list" | "watch") => {
                if field_selector_equals(a.field_selector.as_deref(), "spec.nodeName", node) {
                    return Decision::Allow;
                }
                if !a.name.is_empty() {
                    return self.related(node, Kind::Pod, a);
                }
                Decision::NoOpinion(
                    "can only list/watch pods with spec.nodeName field selector".into(),
                )
            }
            ("", "create" | "delete") | ("status", "update" | "patch") | ("eviction", "create") => {
                Decision::Allow
            }
            _ => Decision::NoOpinion(String::new()),
        }
    }
}

fn authorize_node(node: &str, a: &Attributes) -> Decision {
    match (a.subresource.as_str(), a.verb.as_str()) {
        ("", "create" | "update" | "patch") | ("status", "update" | "patch") => Decision::Allow,
        ("", "get" | "list" | "watch") => {
            if a.name == node {
                Decision::Allow
            } else if a.name.is_empty() {
                Decision::NoOpinion(format!(
                    "node '{node}' cannot read all nodes, only its own Node object"
                ))
            } else {
                Decision::NoOpinion(format!(
                    "node '{node}' cannot read '{}', only its own Node object",
                    a.name
                ))
            }
        }
        _ => Decision::NoOpinion(String::new()),
    }
}

/// True when the field selector has the requirement `field=value` (or `==`), parsed by
/// [`rk3s_core::FieldSelector`] (upstream's `RequiresExactMatch`).
fn field_selector_equals(selector: Option<&str>, field: &str, value: &str) -> bool {
    selector
        .and_then(|s| rk3s_core::FieldSelector::parse(s).ok())
        .is_some_and(|s| s.required_value(field) == Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UserInfo;
    use serde_json::json;

    fn node_user(n: &str) -> UserInfo {
        UserInfo::new(
            format!("system:node:{n}"),
            &["system:nodes", "system:authenticated"],
        )
    }

    fn graph() -> NodeGraph {
        let pods = vec![
            json!({"metadata": {"name": "web", "namespace": "default"},
                "spec": {"nodeName": "n1", "serviceAccountName": "web-sa",
                    "imagePullSecrets": [{"name": "regcred"}],
                    "containers": [{"name": "c", "env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": "db-pass", "key": "p"}}}],
                                     "envFrom": [{"configMapRef": {"name": "web-env"}}]}],
                    "volumes": [{"name": "tls", "secret": {"secretName": "web-tls"}},
                                {"name": "data", "persistentVolumeClaim": {"claimName": "web-data"}},
                                {"name": "p", "projected": {"sources": [{"configMap": {"name": "proj-cm"}}]}}]}}),
            json!({"metadata": {"name": "other", "namespace": "default"},
                "spec": {"nodeName": "n2", "volumes": [{"name": "s", "secret": {"secretName": "n2-secret"}}]}}),
            json!({"metadata": {"name": "pending", "namespace": "default"},
                "spec": {"volumes": [{"name": "s", "secret": {"secretName": "pending-secret"}}]}}),
        ];
        let pvs = vec![json!({"metadata": {"name": "pv1"},
            "spec": {"claimRef": {"namespace": "default", "name": "web-data"},
                     "csi": {"driver": "d", "volumeHandle": "h", "nodePublishSecretRef": {"name": "csi-secret", "namespace": "storage"}}}})];
        let vas = vec![json!({"metadata": {"name": "va1"}, "spec": {"nodeName": "n1"}})];
        NodeGraph::new(&pods, &pvs, &vas)
    }

    fn req(
        node: &str,
        verb: &str,
        ns: &str,
        group: &str,
        res: &str,
        sub: &str,
        name: &str,
    ) -> Attributes {
        Attributes::resource(node_user(node), verb, ns, group, res, sub, name)
    }

    fn no_rel(node: &str) -> Decision {
        Decision::NoOpinion(format!(
            "no relationship found between node '{node}' and this object"
        ))
    }

    #[test]
    fn secrets_of_own_pods_only() {
        let g = graph();
        for s in ["web-tls", "db-pass", "regcred"] {
            assert_eq!(
                g.authorize(&req("n1", "get", "default", "", "secrets", "", s)),
                Decision::Allow,
                "{s}"
            );
        }
        assert_eq!(
            g.authorize(&req("n1", "watch", "default", "", "secrets", "", "web-tls")),
            Decision::Allow
        );
        assert_eq!(
            g.authorize(&req("n1", "get", "default", "", "secrets", "", "n2-secret")),
            no_rel("n1")
        );
        assert_eq!(
            g.authorize(&req("n2", "get", "default", "", "secrets", "", "web-tls")),
            no_rel("n2")
        );
        assert_eq!(
            g.authorize(&req("n2", "get", "default", "", "secrets", "", "n2-secret")),
            Decision::Allow
        );
        // unscheduled pods grant nothing
        assert_eq!(
            g.authorize(&req(
                "n1",
                "get",
                "default",
                "",
                "secrets",
                "",
                "pending-secret"
            )),
            no_rel("n1")
        );
        assert_eq!(
            g.authorize(&req("n1", "list", "default", "", "secrets", "", "")),
            Decision::NoOpinion("No Object name found".into())
        );
        assert_eq!(
            g.authorize(&req(
                "n1", "update", "default", "", "secrets", "", "web-tls"
            )),
            Decision::NoOpinion("can only read resources of this type".into())
        );
        // the CSI secret of the PV of the pod's claim, in its own namespace
        assert_eq!(
            g.authorize(&req(
                "n1",
                "get",
                "storage",
                "",
                "secrets",
                "",
                "csi-secret"
            )),
            Decision::Allow
        );
    }

    #[test]
    fn configmaps_pvcs_pvs_tokens() {
        let g = graph();
        assert_eq!(
            g.authorize(&req(
                "n1",
                "get",
                "default",
                "",
                "configmaps",
                "",
                "web-env"
            )),
            Decision::Allow
        );
        assert_eq!(
            g.authorize(&req(
                "n1",
                "get",
                "default",
                "",
                "configmaps",
                "",
                "proj-cm"
            )),
            Decision::Allow
        );
        assert_eq!(
            g.authorize(&req(
                "n1",
                "get",
                "default",
                "",
                "persistentvolumeclaims",
                "",
                "web-data"
            )),
            Decision::Allow
        );
        assert_eq!(
            g.authorize(&req("n1", "get", "", "", "persistentvolumes", "", "pv1")),
            Decision::Allow
        );
        assert_eq!(
            g.authorize(&req("n2", "get", "", "", "persistentvolumes", "", "pv1")),
            no_rel("n2")
        );
        assert_eq!(
            g.authorize(&req("n1", "list", "", "", "persistentvolumes", "", "")),
            Decision::NoOpinion("can only get individual resources of this type".into())
        );
        assert_eq!(
            g.authorize(&req(
                "n1",
                "create",
                "default",
                "",
                "serviceaccounts",
                "token",
                "web-sa"
            )),
            Decision::Allow
        );
        assert_eq!(
            g.authorize(&req(
                "n2",
                "create",
                "default",
                "",
                "serviceaccounts",
                "token",
                "web-sa"
            )),
            no_rel("n2")
        );
        assert_eq!(
            g.authorize(&req(
                "n1",
                "get",
                "",
                "storage.k8s.io",
                "volumeattachments",
                "",
                "va1"
            )),
            Decision::Allow
        );
    }

    #[test]
    fn nodes_leases_pods() {
        let g = graph();
        assert_eq!(
            g.authorize(&req("n1", "get", "", "", "nodes", "", "n1")),
            Decision::Allow
        );
        assert_eq!(
            g.authorize(&req("n1", "get", "", "", "nodes", "", "n2")),
            Decision::NoOpinion("node 'n1' cannot read 'n2', only its own Node object".into())
        );
        assert_eq!(
            g.authorize(&req("n1", "patch", "", "", "nodes", "status", "n1")),
            Decision::Allow
        );
        assert_eq!(
            g.authorize(&req(
                "n1",
                "update",
                "kube-node-lease",
                "coordination.k8s.io",
                "leases",
                "",
                "n1"
            )),
            Decision::Allow
        );
        assert!(!g
            .authorize(&req(
                "n1",
                "update",
                "kube-node-lease",
                "coordination.k8s.io",
                "leases",
                "",
                "n2"
            ))
            .is_allowed());
        assert!(!g
            .authorize(&req(
                "n1",
                "get",
                "default",
                "coordination.k8s.io",
                "leases",
                "",
                "n1"
            ))
            .is_allowed());
        assert_eq!(
            g.authorize(&req("n1", "get", "default", "", "pods", "", "web")),
            Decision::Allow
        );
        assert_eq!(
            g.authorize(&req("n1", "get", "default", "", "pods", "", "other")),
            no_rel("n1")
        );
        let mut list = req("n1", "watch", "", "", "pods", "", "");
        assert!(!g.authorize(&list).is_allowed());
        list.field_selector = Some("spec.nodeName=n1".into());
        assert_eq!(g.authorize(&list), Decision::Allow);
        list.field_selector = Some("spec.nodeName=n2".into());
        assert!(!g.authorize(&list).is_allowed());
        assert_eq!(
            g.authorize(&req("n1", "patch", "default", "", "pods", "status", "web")),
            Decision::Allow
        );
        // static system:node rules for everything else
        assert_eq!(
            g.authorize(&req("n1", "create", "default", "", "events", "", "")),
            Decision::Allow
        );
        assert_eq!(
            g.authorize(&req("n1", "list", "", "", "services", "", "")),
            Decision::Allow
        );
        assert_eq!(
            g.authorize(&req(
                "n1",
                "delete",
                "default",
                "apps",
                "deployments",
                "",
                "x"
            )),
            Decision::NoOpinion(String::new())
        );
    }

    #[test]
    fn non_nodes_get_no_opinion() {
        let g = graph();
        let a = Attributes::resource(
            UserInfo::new("alice", &["system:authenticated"]),
            "get",
            "default",
            "",
            "secrets",
            "",
            "web-tls",
        );
        assert_eq!(g.authorize(&a), Decision::NoOpinion(String::new()));
        // node name without the nodes group is not a node
        let a = Attributes::resource(
            UserInfo::new("system:node:n1", &[]),
            "get",
            "default",
            "",
            "secrets",
            "",
            "web-tls",
        );
        assert_eq!(g.authorize(&a), Decision::NoOpinion(String::new()));
    }

    #[test]
    fn field_selectors() {
        assert!(field_selector_equals(
            Some("metadata.namespace=x,spec.nodeName==n1"),
            "spec.nodeName",
            "n1"
        ));
        assert!(!field_selector_equals(
            Some("spec.nodeName!=n1"),
            "spec.nodeName",
            "n1"
        ));
        assert!(!field_selector_equals(None, "spec.nodeName", "n1"));
    }
}
