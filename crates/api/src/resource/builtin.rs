//! The table of built-in resources (Kubernetes 1.33).
//!
//! Facts as upstream's discovery reports them for a default 1.33 cluster: only GA
//! versions are served (no beta API is on by default in 1.33: `flowcontrol/v1beta3`
//! was removed in 1.32, and `resource.k8s.io`, `storage.k8s.io/v1beta1`
//! VolumeAttributesClass, `coordination.k8s.io/v1beta1` LeaseCandidate,
//! `certificates.k8s.io/v1beta1` ClusterTrustBundle are beta and off by default).
//! `networking.k8s.io/v1` IPAddress and ServiceCIDR went GA in 1.33.
//!
//! Verbs are listed sorted, as upstream's discovery lists them. Subresources use
//! upstream's kinds (`Scale` in `autoscaling/v1`, `Eviction` in `policy/v1`,
//! `TokenRequest` in `authentication.k8s.io/v1`, `PodExecOptions`, ...).

use super::{ResourceInfo, Scope, Subresource};

/// Every verb of a normal stored resource, in discovery order.
const ALL: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
/// Namespaces have no `deletecollection`.
const NO_COLLECTION_DELETE: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];
/// Virtual, create-only resources (reviews, bindings).
const CREATE: &[&str] = &["create"];
/// `componentstatuses`.
const GET_LIST: &[&str] = &["get", "list"];
/// `status`, `scale`, `approval`, `ephemeralcontainers`, `resize`.
const GPU: &[&str] = &["get", "patch", "update"];
/// `proxy` subresources.
const PROXY: &[&str] = &["create", "delete", "get", "patch", "update"];
/// `attach`, `exec`, `portforward`.
const CONNECT: &[&str] = &["create", "get"];

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A subresource whose kind lives in the parent's group/version.
fn sub(name: &str, kind: &str, verbs: &[&str]) -> Subresource {
    Subresource {
        name: name.to_string(),
        kind: kind.to_string(),
        group: String::new(),
        version: String::new(),
        verbs: strings(verbs),
    }
}

/// A subresource whose kind lives in another group/version.
fn sub_gv(name: &str, group: &str, version: &str, kind: &str, verbs: &[&str]) -> Subresource {
    Subresource {
        name: name.to_string(),
        kind: kind.to_string(),
        group: group.to_string(),
        version: version.to_string(),
        verbs: strings(verbs),
    }
}

fn status(kind: &str) -> Subresource {
    sub("status", kind, GPU)
}

fn scale() -> Subresource {
    sub_gv("scale", "autoscaling", "v1", "Scale", GPU)
}

/// The OpenAPI definition name of a built-in kind.
pub fn definition_name(group: &str, version: &str, kind: &str) -> String {
    let pkg = match group {
        "" => "io.k8s.api.core",
        "apiextensions.k8s.io" => "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions",
        "apiregistration.k8s.io" => "io.k8s.kube-aggregator.pkg.apis.apiregistration",
        "rbac.authorization.k8s.io" => "io.k8s.api.rbac",
        "flowcontrol.apiserver.k8s.io" => "io.k8s.api.flowcontrol",
        "apidiscovery.k8s.io" => "io.k8s.api.apidiscovery",
        g => {
            // "apps" -> io.k8s.api.apps; "networking.k8s.io" -> io.k8s.api.networking
            let first = g.split('.').next().unwrap_or(g);
            return format!("io.k8s.api.{first}.{version}.{kind}");
        }
    };
    format!("{pkg}.{version}.{kind}")
}

/// Table row builder.
struct Row {
    info: ResourceInfo,
}

impl Row {
    fn new(group: &str, version: &str, kind: &str, plural: &str, scope: Scope) -> Row {
        Row {
            info: ResourceInfo {
                group: group.to_string(),
                version: version.to_string(),
                kind: kind.to_string(),
                plural: plural.to_string(),
                singular: kind.to_lowercase(),
                short_names: Vec::new(),
                categories: Vec::new(),
                scope,
                verbs: strings(ALL),
                subresources: Vec::new(),
                definition: definition_name(group, version, kind),
                // Upstream stores core `events` and `events.k8s.io` events once, in
                // the core group's form; the API server converts between the two.
                storage_group: if group == "events.k8s.io" {
                    String::new()
                } else {
                    group.to_string()
                },
                preferred: true,
            },
        }
    }
    fn short(mut self, names: &[&str]) -> Row {
        self.info.short_names = strings(names);
        self
    }
    fn cat(mut self, cats: &[&str]) -> Row {
        self.info.categories = strings(cats);
        self
    }
    fn verbs(mut self, verbs: &[&str]) -> Row {
        self.info.verbs = strings(verbs);
        self
    }
    fn singular(mut self, s: &str) -> Row {
        self.info.singular = s.to_string();
        self
    }
    fn subs(mut self, subs: Vec<Subresource>) -> Row {
        self.info.subresources = subs;
        self
    }
    fn not_preferred(mut self) -> Row {
        self.info.preferred = false;
        self
    }
}

use Scope::{Cluster as C, Namespaced as N};

/// Every built-in resource at every served version.
pub fn resources() -> Vec<ResourceInfo> {
    let all = &["all"];
    let ext = &["api-extensions"];
    let rows: Vec<Row> = vec![
        // ---- core/v1 ----
        Row::new("", "v1", "Binding", "bindings", N).verbs(CREATE),
        Row::new("", "v1", "ComponentStatus", "componentstatuses", C)
            .short(&["cs"])
            .verbs(GET_LIST),
        Row::new("", "v1", "ConfigMap", "configmaps", N).short(&["cm"]),
        Row::new("", "v1", "Endpoints", "endpoints", N)
            .short(&["ep"])
            .singular("endpoints"),
        Row::new("", "v1", "Event", "events", N).short(&["ev"]),
        Row::new("", "v1", "LimitRange", "limitranges", N).short(&["limits"]),
        Row::new("", "v1", "Namespace", "namespaces", C)
            .short(&["ns"])
            .verbs(NO_COLLECTION_DELETE)
            .subs(vec![
                sub("finalize", "Namespace", &["update"]),
                status("Namespace"),
            ]),
        Row::new("", "v1", "Node", "nodes", C)
            .short(&["no"])
            .subs(vec![
                sub("proxy", "NodeProxyOptions", PROXY),
                status("Node"),
            ]),
        Row::new(
            "",
            "v1",
            "PersistentVolumeClaim",
            "persistentvolumeclaims",
            N,
        )
        .short(&["pvc"])
        .subs(vec![status("PersistentVolumeClaim")]),
        Row::new("", "v1", "PersistentVolume", "persistentvolumes", C)
            .short(&["pv"])
            .subs(vec![status("PersistentVolume")]),
        Row::new("", "v1", "Pod", "pods", N)
            .short(&["po"])
            .cat(all)
            .subs(vec![
                sub("attach", "PodAttachOptions", CONNECT),
                sub("binding", "Binding", CREATE),
                sub("ephemeralcontainers", "Pod", GPU),
                sub_gv("eviction", "policy", "v1", "Eviction", CREATE),
                sub("exec", "PodExecOptions", CONNECT),
                sub("log", "Pod", &["get"]),
                sub("portforward", "PodPortForwardOptions", CONNECT),
                sub("proxy", "PodProxyOptions", PROXY),
                sub("resize", "Pod", GPU),
                status("Pod"),
            ]),
        Row::new("", "v1", "PodTemplate", "podtemplates", N),
        Row::new(
            "",
            "v1",
            "ReplicationController",
            "replicationcontrollers",
            N,
        )
        .short(&["rc"])
        .cat(all)
        .subs(vec![scale(), status("ReplicationController")]),
        Row::new("", "v1", "ResourceQuota", "resourcequotas", N)
            .short(&["quota"])
            .subs(vec![status("ResourceQuota")]),
        Row::new("", "v1", "Secret", "secrets", N),
        Row::new("", "v1", "ServiceAccount", "serviceaccounts", N)
            .short(&["sa"])
            .subs(vec![sub_gv(
                "token",
                "authentication.k8s.io",
                "v1",
                "TokenRequest",
                CREATE,
            )]),
        Row::new("", "v1", "Service", "services", N)
            .short(&["svc"])
            .cat(all)
            .subs(vec![
                sub("proxy", "ServiceProxyOptions", PROXY),
                status("Service"),
            ]),
        // ---- admissionregistration.k8s.io/v1 ----
        Row::new(
            "admissionregistration.k8s.io",
            "v1",
            "MutatingWebhookConfiguration",
            "mutatingwebhookconfigurations",
            C,
        )
        .cat(ext),
        Row::new(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingAdmissionPolicy",
            "validatingadmissionpolicies",
            C,
        )
        .cat(ext)
        .subs(vec![status("ValidatingAdmissionPolicy")]),
        Row::new(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingAdmissionPolicyBinding",
            "validatingadmissionpolicybindings",
            C,
        )
        .cat(ext),
        Row::new(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingWebhookConfiguration",
            "validatingwebhookconfigurations",
            C,
        )
        .cat(ext),
        // ---- apiextensions.k8s.io/v1 ----
        Row::new(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            C,
        )
        .short(&["crd", "crds"])
        .cat(ext)
        .subs(vec![status("CustomResourceDefinition")]),
        // ---- apiregistration.k8s.io/v1 ----
        Row::new(
            "apiregistration.k8s.io",
            "v1",
            "APIService",
            "apiservices",
            C,
        )
        .cat(ext)
        .subs(vec![status("APIService")]),
        // ---- apps/v1 ----
        Row::new("apps", "v1", "ControllerRevision", "controllerrevisions", N),
        Row::new("apps", "v1", "DaemonSet", "daemonsets", N)
            .short(&["ds"])
            .cat(all)
            .subs(vec![status("DaemonSet")]),
        Row::new("apps", "v1", "Deployment", "deployments", N)
            .short(&["deploy"])
            .cat(all)
            .subs(vec![scale(), status("Deployment")]),
        Row::new("apps", "v1", "ReplicaSet", "replicasets", N)
            .short(&["rs"])
            .cat(all)
            .subs(vec![scale(), status("ReplicaSet")]),
        Row::new("apps", "v1", "StatefulSet", "statefulsets", N)
            .short(&["sts"])
            .cat(all)
            .subs(vec![scale(), status("StatefulSet")]),
        // ---- authentication.k8s.io/v1 ----
        Row::new(
            "authentication.k8s.io",
            "v1",
            "SelfSubjectReview",
            "selfsubjectreviews",
            C,
        )
        .verbs(CREATE),
        Row::new(
            "authentication.k8s.io",
            "v1",
            "TokenReview",
            "tokenreviews",
            C,
        )
        .verbs(CREATE),
        // ---- authorization.k8s.io/v1 ----
        Row::new(
            "authorization.k8s.io",
            "v1",
            "LocalSubjectAccessReview",
            "localsubjectaccessreviews",
            N,
        )
        .verbs(CREATE),
        Row::new(
            "authorization.k8s.io",
            "v1",
            "SelfSubjectAccessReview",
            "selfsubjectaccessreviews",
            C,
        )
        .verbs(CREATE),
        Row::new(
            "authorization.k8s.io",
            "v1",
            "SelfSubjectRulesReview",
            "selfsubjectrulesreviews",
            C,
        )
        .verbs(CREATE),
        Row::new(
            "authorization.k8s.io",
            "v1",
            "SubjectAccessReview",
            "subjectaccessreviews",
            C,
        )
        .verbs(CREATE),
        // ---- autoscaling/v2 (preferred) and v1 ----
        Row::new(
            "autoscaling",
            "v2",
            "HorizontalPodAutoscaler",
            "horizontalpodautoscalers",
            N,
        )
        .short(&["hpa"])
        .cat(all)
        .subs(vec![status("HorizontalPodAutoscaler")]),
        Row::new(
            "autoscaling",
            "v1",
            "HorizontalPodAutoscaler",
            "horizontalpodautoscalers",
            N,
        )
        .short(&["hpa"])
        .cat(all)
        .subs(vec![status("HorizontalPodAutoscaler")])
        .not_preferred(),
        // ---- batch/v1 ----
        Row::new("batch", "v1", "CronJob", "cronjobs", N)
            .short(&["cj"])
            .cat(all)
            .subs(vec![status("CronJob")]),
        Row::new("batch", "v1", "Job", "jobs", N)
            .cat(all)
            .subs(vec![status("Job")]),
        // ---- certificates.k8s.io/v1 ----
        Row::new(
            "certificates.k8s.io",
            "v1",
            "CertificateSigningRequest",
            "certificatesigningrequests",
            C,
        )
        .short(&["csr"])
        .subs(vec![
            sub("approval", "CertificateSigningRequest", GPU),
            status("CertificateSigningRequest"),
        ]),
        // ---- coordination.k8s.io/v1 ----
        Row::new("coordination.k8s.io", "v1", "Lease", "leases", N),
        // ---- discovery.k8s.io/v1 ----
        Row::new(
            "discovery.k8s.io",
            "v1",
            "EndpointSlice",
            "endpointslices",
            N,
        ),
        // ---- events.k8s.io/v1 ----
        Row::new("events.k8s.io", "v1", "Event", "events", N).short(&["ev"]),
        // ---- flowcontrol.apiserver.k8s.io/v1 ----
        Row::new(
            "flowcontrol.apiserver.k8s.io",
            "v1",
            "FlowSchema",
            "flowschemas",
            C,
        )
        .subs(vec![status("FlowSchema")]),
        Row::new(
            "flowcontrol.apiserver.k8s.io",
            "v1",
            "PriorityLevelConfiguration",
            "prioritylevelconfigurations",
            C,
        )
        .subs(vec![status("PriorityLevelConfiguration")]),
        // ---- networking.k8s.io/v1 ----
        Row::new(
            "networking.k8s.io",
            "v1",
            "IngressClass",
            "ingressclasses",
            C,
        ),
        Row::new("networking.k8s.io", "v1", "Ingress", "ingresses", N)
            .short(&["ing"])
            .subs(vec![status("Ingress")]),
        Row::new("networking.k8s.io", "v1", "IPAddress", "ipaddresses", C).short(&["ip"]),
        Row::new(
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "networkpolicies",
            N,
        )
        .short(&["netpol"]),
        Row::new("networking.k8s.io", "v1", "ServiceCIDR", "servicecidrs", C)
            .subs(vec![status("ServiceCIDR")]),
        // ---- node.k8s.io/v1 ----
        Row::new("node.k8s.io", "v1", "RuntimeClass", "runtimeclasses", C),
        // ---- policy/v1 ----
        Row::new(
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            N,
        )
        .short(&["pdb"])
        .subs(vec![status("PodDisruptionBudget")]),
        // ---- rbac.authorization.k8s.io/v1 ----
        Row::new(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
            C,
        ),
        Row::new(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRole",
            "clusterroles",
            C,
        ),
        Row::new(
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            "rolebindings",
            N,
        ),
        Row::new("rbac.authorization.k8s.io", "v1", "Role", "roles", N),
        // ---- scheduling.k8s.io/v1 ----
        Row::new(
            "scheduling.k8s.io",
            "v1",
            "PriorityClass",
            "priorityclasses",
            C,
        )
        .short(&["pc"]),
        // ---- storage.k8s.io/v1 ----
        Row::new("storage.k8s.io", "v1", "CSIDriver", "csidrivers", C),
        Row::new("storage.k8s.io", "v1", "CSINode", "csinodes", C),
        Row::new(
            "storage.k8s.io",
            "v1",
            "CSIStorageCapacity",
            "csistoragecapacities",
            N,
        ),
        Row::new("storage.k8s.io", "v1", "StorageClass", "storageclasses", C).short(&["sc"]),
        Row::new(
            "storage.k8s.io",
            "v1",
            "VolumeAttachment",
            "volumeattachments",
            C,
        )
        .subs(vec![status("VolumeAttachment")]),
    ];
    rows.into_iter().map(|r| r.info).collect()
}

/// Upstream's group priorities (`GroupPriorityMinimum` of the built-in APIServices),
/// highest first. `/apis` lists groups in this order; the aggregator's own group
/// (`apiregistration.k8s.io`) comes first, then these. Ties (16700) are broken by the
/// APIService name, so `admissionregistration.k8s.io` precedes `apiextensions.k8s.io`.
pub const GROUP_PRIORITY: &[(&str, u32)] = &[
    ("", 18000),
    ("apiregistration.k8s.io", 18000),
    ("apps", 17800),
    ("events.k8s.io", 17750),
    ("authentication.k8s.io", 17700),
    ("authorization.k8s.io", 17600),
    ("autoscaling", 17500),
    ("batch", 17400),
    ("certificates.k8s.io", 17300),
    ("networking.k8s.io", 17200),
    ("policy", 17100),
    ("rbac.authorization.k8s.io", 17000),
    ("storage.k8s.io", 16800),
    ("admissionregistration.k8s.io", 16700),
    ("apiextensions.k8s.io", 16700),
    ("scheduling.k8s.io", 16600),
    ("coordination.k8s.io", 16500),
    ("node.k8s.io", 16300),
    ("discovery.k8s.io", 16200),
    ("flowcontrol.apiserver.k8s.io", 16100),
    ("internal.apiserver.k8s.io", 16000),
    ("resource.k8s.io", 15900),
    ("storagemigration.k8s.io", 15800),
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn find<'a>(
        all: &'a [ResourceInfo],
        group: &str,
        version: &str,
        plural: &str,
    ) -> &'a ResourceInfo {
        match all
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
        {
            Some(r) => r,
            None => panic!("missing {group}/{version} {plural}"),
        }
    }

    #[test]
    fn no_duplicates_and_sane_rows() {
        let all = resources();
        let mut seen = BTreeSet::new();
        for r in &all {
            assert!(
                seen.insert((r.group.clone(), r.version.clone(), r.plural.clone())),
                "dup {}",
                r.plural
            );
            assert!(!r.verbs.is_empty());
            let mut sorted = r.verbs.clone();
            sorted.sort();
            assert_eq!(
                sorted, r.verbs,
                "verbs of {} not in discovery order",
                r.plural
            );
            assert!(!r.definition.is_empty());
            let expected = if r.group == "events.k8s.io" {
                ""
            } else {
                r.group.as_str()
            };
            assert_eq!(
                r.storage_group, expected,
                "storage group of {}.{}",
                r.plural, r.group
            );
        }
        assert_eq!(all.len(), 61);
    }

    #[test]
    fn pods_row() {
        let all = resources();
        let pods = find(&all, "", "v1", "pods");
        assert_eq!(pods.short_names, vec!["po"]);
        assert_eq!(pods.categories, vec!["all"]);
        assert_eq!(pods.definition, "io.k8s.api.core.v1.Pod");
        let names: Vec<&str> = pods.subresources.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "attach",
                "binding",
                "ephemeralcontainers",
                "eviction",
                "exec",
                "log",
                "portforward",
                "proxy",
                "resize",
                "status"
            ]
        );
        let ev = pods
            .subresource("eviction")
            .map(|s| (s.group.as_str(), s.version.as_str(), s.kind.as_str()));
        assert_eq!(ev, Some(("policy", "v1", "Eviction")));
    }

    #[test]
    fn scale_subresources_and_definitions() {
        let all = resources();
        for (g, p) in [
            ("apps", "deployments"),
            ("apps", "replicasets"),
            ("apps", "statefulsets"),
            ("", "replicationcontrollers"),
        ] {
            let r = find(&all, g, "v1", p);
            let s = r
                .subresource("scale")
                .map(|s| (s.group.as_str(), s.version.as_str(), s.kind.as_str()));
            assert_eq!(s, Some(("autoscaling", "v1", "Scale")), "{p}");
        }
        assert_eq!(
            find(
                &all,
                "apiextensions.k8s.io",
                "v1",
                "customresourcedefinitions"
            )
            .definition,
            "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition"
        );
        assert_eq!(
            find(&all, "flowcontrol.apiserver.k8s.io", "v1", "flowschemas").definition,
            "io.k8s.api.flowcontrol.v1.FlowSchema"
        );
        assert_eq!(
            find(&all, "networking.k8s.io", "v1", "ingresses").definition,
            "io.k8s.api.networking.v1.Ingress"
        );
        assert_eq!(
            find(&all, "rbac.authorization.k8s.io", "v1", "roles").definition,
            "io.k8s.api.rbac.v1.Role"
        );
        assert_eq!(
            find(&all, "apiregistration.k8s.io", "v1", "apiservices").definition,
            "io.k8s.kube-aggregator.pkg.apis.apiregistration.v1.APIService"
        );
    }

    #[test]
    fn special_verbs() {
        let all = resources();
        assert_eq!(
            find(&all, "", "v1", "componentstatuses").verbs,
            vec!["get", "list"]
        );
        assert_eq!(find(&all, "", "v1", "bindings").verbs, vec!["create"]);
        assert!(!find(&all, "", "v1", "namespaces")
            .verbs
            .contains(&"deletecollection".to_string()));
        assert_eq!(
            find(
                &all,
                "authorization.k8s.io",
                "v1",
                "selfsubjectaccessreviews"
            )
            .verbs,
            vec!["create"]
        );
        assert_eq!(find(&all, "", "v1", "endpoints").singular, "endpoints");
    }

    #[test]
    fn autoscaling_versions() {
        let all = resources();
        assert!(find(&all, "autoscaling", "v2", "horizontalpodautoscalers").preferred);
        assert!(!find(&all, "autoscaling", "v1", "horizontalpodautoscalers").preferred);
    }
}
