//! The default RBAC policy that upstream's API server reconciles at start: the
//! ClusterRoles, ClusterRoleBindings, Roles and RoleBindings labelled
//! `kubernetes.io/bootstrapping: rbac-defaults`, plus rk3s's own
//! `system:rk3s-controller` (the node's network services; k3s ships
//! `system:k3s-controller` for the same purpose).
//!
//! The facts (names, rules, subjects) are kept in a compact table of our own; see
//! [`POLICY`] for its syntax.

use serde_json::{json, Map, Value};

/// Label put on every bootstrap object.
pub const BOOTSTRAPPING_LABEL: (&str, &str) = ("kubernetes.io/bootstrapping", "rbac-defaults");
/// Annotation put on every bootstrap object: the reconciler may update it at start.
pub const AUTOUPDATE_ANNOTATION: (&str, &str) =
    ("rbac.authorization.kubernetes.io/autoupdate", "true");

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// The policy table, one statement per line:
///
/// * `cr NAME [label=value ...] [agg=label=value]` starts a ClusterRole (extra labels;
///   `agg=` gives it an aggregationRule selecting that label);
/// * `ctl NAME` starts ClusterRole `system:controller:NAME`, bound by a
///   ClusterRoleBinding of the same name to ServiceAccount `kube-system/NAME`;
/// * `role NS NAME` starts a Role;
/// * `r VERBS GROUPS RESOURCES [NAMES]` adds a resource rule to the current role
///   (comma lists; `~` is the core group; verbs `R` = get,list,watch,
///   `W` = create,delete,deletecollection,patch,update, `RW` = both);
/// * `u VERBS URLS` adds a non-resource rule; `ev` adds the event-writing rule;
/// * `crb NAME ROLE SUBJECT...` and `rb NS NAME KIND:ROLE SUBJECT...` add bindings,
///   subjects being `G:group`, `U:user` or `SA:namespace/name`.
const POLICY: &str = r#"
cr cluster-admin
r * * *
u * *
cr system:discovery
u get /api,/api/*,/apis,/apis/*,/healthz,/livez,/openapi,/openapi/*,/readyz,/version,/version/
cr system:monitoring
u get /healthz,/healthz/*,/livez,/livez/*,/metrics,/metrics/slis,/readyz,/readyz/*
cr system:basic-user
r create authorization.k8s.io selfsubjectaccessreviews,selfsubjectrulesreviews
r create authentication.k8s.io selfsubjectreviews
cr system:public-info-viewer
u get /healthz,/livez,/readyz,/version,/version/
cr admin agg=rbac.authorization.k8s.io/aggregate-to-admin=true
cr edit rbac.authorization.k8s.io/aggregate-to-admin=true agg=rbac.authorization.k8s.io/aggregate-to-edit=true
cr view rbac.authorization.k8s.io/aggregate-to-edit=true agg=rbac.authorization.k8s.io/aggregate-to-view=true
cr system:aggregate-to-admin rbac.authorization.k8s.io/aggregate-to-admin=true
r create authorization.k8s.io localsubjectaccessreviews
r RW rbac.authorization.k8s.io rolebindings,roles
cr system:aggregate-to-edit rbac.authorization.k8s.io/aggregate-to-edit=true
r R ~ pods/attach,pods/exec,pods/portforward,pods/proxy,secrets,services/proxy
r impersonate ~ serviceaccounts
r W ~ pods,pods/attach,pods/exec,pods/portforward,pods/proxy
r create ~ pods/eviction
r W ~ configmaps,events,persistentvolumeclaims,replicationcontrollers,replicationcontrollers/scale,secrets,serviceaccounts,services,services/proxy
r create ~ serviceaccounts/token
r W apps daemonsets,deployments,deployments/rollback,deployments/scale,replicasets,replicasets/scale,statefulsets,statefulsets/scale
r W autoscaling horizontalpodautoscalers
r W batch cronjobs,jobs
r W extensions daemonsets,deployments,deployments/rollback,deployments/scale,ingresses,networkpolicies,replicasets,replicasets/scale,replicationcontrollers/scale
r W policy poddisruptionbudgets
r W networking.k8s.io ingresses,networkpolicies
r RW coordination.k8s.io leases
cr system:aggregate-to-view rbac.authorization.k8s.io/aggregate-to-view=true
r R ~ configmaps,endpoints,persistentvolumeclaims,persistentvolumeclaims/status,pods,replicationcontrollers,replicationcontrollers/scale,serviceaccounts,services,services/status
r R ~ bindings,events,limitranges,namespaces/status,pods/log,pods/status,replicationcontrollers/status,resourcequotas,resourcequotas/status
r R ~ namespaces
r R discovery.k8s.io endpointslices
r R apps controllerrevisions,daemonsets,daemonsets/status,deployments,deployments/scale,deployments/status,replicasets,replicasets/scale,replicasets/status,statefulsets,statefulsets/scale,statefulsets/status
r R autoscaling horizontalpodautoscalers,horizontalpodautoscalers/status
r R batch cronjobs,cronjobs/status,jobs,jobs/status
r R extensions daemonsets,daemonsets/status,deployments,deployments/scale,deployments/status,ingresses,ingresses/status,networkpolicies,replicasets,replicasets/scale,replicasets/status,replicationcontrollers/scale
r R policy poddisruptionbudgets,poddisruptionbudgets/status
r R networking.k8s.io ingresses,ingresses/status,networkpolicies
cr system:heapster
r R ~ events,namespaces,nodes,pods
r R extensions deployments
cr system:node
r create authentication.k8s.io tokenreviews
r create authorization.k8s.io localsubjectaccessreviews,subjectaccessreviews
r R ~ services
r create,get,list,watch ~ nodes
r patch,update ~ nodes/status
r patch,update ~ nodes
r create,patch,update ~ events
r R ~ pods
r create,delete ~ pods
r patch,update ~ pods/status
r create ~ pods/eviction
r R ~ configmaps,secrets
r get ~ persistentvolumeclaims,persistentvolumes
r get ~ endpoints
r create,get,list,watch certificates.k8s.io certificatesigningrequests
r create,delete,get,patch,update coordination.k8s.io leases
r get storage.k8s.io volumeattachments
r create ~ serviceaccounts/token
r get,patch,update ~ persistentvolumeclaims/status
r R storage.k8s.io csidrivers
r create,delete,get,patch,update storage.k8s.io csinodes
r R node.k8s.io runtimeclasses
cr system:node-problem-detector
r get ~ nodes
r patch ~ nodes/status
ev
cr system:kubelet-api-admin
r R ~ nodes
r proxy ~ nodes
r * ~ nodes/log,nodes/metrics,nodes/proxy,nodes/stats
cr system:node-bootstrapper
r create,get,list,watch certificates.k8s.io certificatesigningrequests
cr system:auth-delegator
r create authentication.k8s.io tokenreviews
r create authorization.k8s.io subjectaccessreviews
cr system:kube-aggregator
r R ~ endpoints,services
cr system:kube-controller-manager
ev
r create coordination.k8s.io leases
r get,update coordination.k8s.io leases kube-controller-manager
r create ~ secrets,serviceaccounts
r delete ~ secrets
r get ~ configmaps,namespaces,secrets,serviceaccounts
r update ~ secrets,serviceaccounts
r create authentication.k8s.io tokenreviews
r create authorization.k8s.io subjectaccessreviews
r list,watch * *
r create ~ serviceaccounts/token
cr system:kube-dns
r list,watch ~ endpoints,services
cr system:persistent-volume-provisioner
r create,delete,get,list,watch ~ persistentvolumes
r get,list,update,watch ~ persistentvolumeclaims
r R storage.k8s.io storageclasses
r watch ~ events
ev
cr system:certificates.k8s.io:certificatesigningrequests:nodeclient
r create certificates.k8s.io certificatesigningrequests/nodeclient
cr system:certificates.k8s.io:certificatesigningrequests:selfnodeclient
r create certificates.k8s.io certificatesigningrequests/selfnodeclient
cr system:volume-scheduler
r get,list,patch,update,watch ~ persistentvolumes
r R storage.k8s.io storageclasses
r get,list,patch,update,watch ~ persistentvolumeclaims
cr system:certificates.k8s.io:legacy-unknown-approver
r approve certificates.k8s.io signers kubernetes.io/legacy-unknown
cr system:certificates.k8s.io:kubelet-serving-approver
r approve certificates.k8s.io signers kubernetes.io/kubelet-serving
cr system:certificates.k8s.io:kube-apiserver-client-approver
r approve certificates.k8s.io signers kubernetes.io/kube-apiserver-client
cr system:certificates.k8s.io:kube-apiserver-client-kubelet-approver
r approve certificates.k8s.io signers kubernetes.io/kube-apiserver-client-kubelet
cr system:service-account-issuer-discovery
u get /.well-known/openid-configuration,/openid/v1/jwks
cr system:node-proxier
r list,watch ~ endpoints,services
r R ~ nodes
ev
r list,watch discovery.k8s.io endpointslices
cr system:rk3s-controller
r R ~ nodes,pods,namespaces,services,endpoints,configmaps
r patch ~ nodes
r R discovery.k8s.io endpointslices
r R networking.k8s.io networkpolicies
r R networking.k8s.io ingresses,ingressclasses
r patch,update networking.k8s.io ingresses/status
r R ~ secrets
r create,patch,update discovery.k8s.io endpointslices
r R ~ persistentvolumeclaims
r R,create,delete ~ persistentvolumes
r R storage.k8s.io storageclasses
ev
cr system:kube-scheduler
ev
r create coordination.k8s.io leases
r get,update coordination.k8s.io leases kube-scheduler
r R ~ nodes
r delete,get,list,watch ~ pods
r create ~ bindings,pods/binding
r patch,update ~ pods/status
r R ~ replicationcontrollers,services
r R apps,extensions replicasets
r R apps statefulsets
r R policy poddisruptionbudgets
r R ~ persistentvolumeclaims,persistentvolumes
r create authentication.k8s.io tokenreviews
r create authorization.k8s.io subjectaccessreviews
r R storage.k8s.io csinodes
r R ~ namespaces
r R storage.k8s.io csidrivers
r R storage.k8s.io csistoragecapacities

ctl attachdetach-controller
r list,watch ~ persistentvolumeclaims,persistentvolumes
r R ~ nodes
r patch,update ~ nodes/status
r list,watch ~ pods
ev
r create,delete,get,list,watch storage.k8s.io volumeattachments
r R storage.k8s.io csidrivers
r R storage.k8s.io csinodes
ctl certificate-controller
r delete,get,list,watch certificates.k8s.io certificatesigningrequests
r update certificates.k8s.io certificatesigningrequests/approval,certificatesigningrequests/status
r approve certificates.k8s.io signers kubernetes.io/kube-apiserver-client-kubelet
r sign certificates.k8s.io signers kubernetes.io/kube-apiserver-client,kubernetes.io/kube-apiserver-client-kubelet,kubernetes.io/kubelet-serving,kubernetes.io/legacy-unknown
r create authorization.k8s.io subjectaccessreviews
ev
ctl clusterrole-aggregation-controller
r escalate,get,list,patch,update,watch rbac.authorization.k8s.io clusterroles
ctl cronjob-controller
r get,list,update,watch batch cronjobs
r create,delete,get,list,patch,update,watch batch jobs
r update batch cronjobs/status
r update batch cronjobs/finalizers
r delete,list,watch ~ pods
ev
ctl daemon-set-controller
r R apps,extensions daemonsets
r update apps,extensions daemonsets/status
r update apps,extensions daemonsets/finalizers
r list,watch ~ nodes
r create,delete,list,patch,watch ~ pods
r create ~ pods/binding
r create,delete,get,list,patch,update,watch apps controllerrevisions
ev
ctl deployment-controller
r get,list,update,watch apps,extensions deployments
r update apps,extensions deployments/status
r update apps,extensions deployments/finalizers
r create,delete,get,list,patch,update,watch apps,extensions replicasets
r get,list,update,watch ~ pods
ev
ctl disruption-controller
r R apps,extensions deployments
r R apps,extensions replicasets
r R ~ replicationcontrollers
r R policy poddisruptionbudgets
r R apps statefulsets
r update policy poddisruptionbudgets/status
r patch,update ~ pods/status
r get * */scale
ev
ctl endpoint-controller
r R ~ pods,services
r create,delete,get,list,update,watch ~ endpoints
r create ~ endpoints/restricted
ev
ctl endpointslice-controller
r R ~ nodes,pods,services
r update ~ services/finalizers
r create,delete,get,list,update,watch discovery.k8s.io endpointslices
ev
ctl endpointslicemirroring-controller
r R ~ endpoints,services
r update ~ services/finalizers
r update ~ endpoints/finalizers
r create,delete,get,list,update,watch discovery.k8s.io endpointslices
ev
ctl ephemeral-volume-controller
r R ~ pods
r update ~ pods/finalizers
r create,get,list,watch ~ persistentvolumeclaims
ev
ctl expand-controller
r get,list,patch,update,watch ~ persistentvolumes
r patch,update ~ persistentvolumeclaims/status
r R ~ persistentvolumeclaims
ev
ctl generic-garbage-collector
r delete,get,list,patch,update,watch * *
ev
ctl horizontal-pod-autoscaler
r R autoscaling horizontalpodautoscalers
r update autoscaling horizontalpodautoscalers/status
r get,update * */scale
r list,watch ~ pods
r list,watch metrics.k8s.io pods
r R custom.metrics.k8s.io *
r R external.metrics.k8s.io *
ev
ctl job-controller
r get,list,patch,update,watch batch jobs
r update batch jobs/status
r update batch jobs/finalizers
r create,delete,list,patch,watch ~ pods
ev
ctl legacy-service-account-token-cleaner
r get ~ configmaps kube-apiserver-legacy-service-account-token-tracking
r delete,patch ~ secrets
ctl namespace-controller
r delete,get,list,watch ~ namespaces
r update ~ namespaces/finalize,namespaces/status
r delete,deletecollection,get,list,watch * *
ctl node-controller
r delete,get,list,patch,update,watch ~ nodes
r patch,update ~ nodes/status
r patch,update ~ pods/status
r delete,get,list,watch ~ pods
ev
ctl persistent-volume-binder
r create,delete,get,list,update,watch ~ persistentvolumes
r update ~ persistentvolumes/status
r get,list,update,watch ~ persistentvolumeclaims
r update ~ persistentvolumeclaims/status
r create,delete,get,list,watch ~ pods
r R storage.k8s.io storageclasses
r list,watch ~ nodes
ev
r watch ~ events
ctl pod-garbage-collector
r delete,list,watch ~ pods
r R ~ nodes
r patch ~ pods/status
ctl pv-protection-controller
r get,list,update,watch ~ persistentvolumes
ev
ctl pvc-protection-controller
r get,list,update,watch ~ persistentvolumeclaims
r update ~ persistentvolumeclaims/status
r R ~ pods
ev
ctl replicaset-controller
r get,list,update,watch apps,extensions replicasets
r update apps,extensions replicasets/status
r update apps,extensions replicasets/finalizers
r create,delete,list,patch,watch ~ pods
ev
ctl replication-controller
r get,list,update,watch ~ replicationcontrollers
r update ~ replicationcontrollers/status
r update ~ replicationcontrollers/finalizers
r create,delete,list,patch,watch ~ pods
ev
ctl resourcequota-controller
r list,watch * *
r update ~ resourcequotas/status
ev
ctl root-ca-cert-publisher
r create,update ~ configmaps
ev
ctl route-controller
r list,watch ~ nodes
r patch ~ nodes/status
ev
ctl service-account-controller
r create ~ serviceaccounts
ev
ctl service-cidrs-controller
r get,list,patch,update,watch networking.k8s.io servicecidrs
r patch,update networking.k8s.io servicecidrs/finalizers
r patch,update networking.k8s.io servicecidrs/status
r R networking.k8s.io ipaddresses
ev
ctl service-controller
r R ~ services
r patch,update ~ services/status
r list,watch ~ nodes
ev
ctl statefulset-controller
r list,watch ~ pods
r R apps statefulsets
r update apps statefulsets/status
r update apps statefulsets/finalizers
r create,delete,get,patch,update ~ pods
r create,delete,get,list,patch,update,watch apps controllerrevisions
r create,get,list,watch ~ persistentvolumeclaims
r delete,update ~ persistentvolumeclaims
r update ~ pods/finalizers
ev
ctl ttl-after-finished-controller
r delete,get,list,watch batch jobs
ev
ctl ttl-controller
r list,patch,update,watch ~ nodes
ev
ctl validatingadmissionpolicy-status-controller
r R admissionregistration.k8s.io validatingadmissionpolicies
r get,patch,update admissionregistration.k8s.io validatingadmissionpolicies/status
ev
ctl volumeattributesclass-protection-controller
r R ~ persistentvolumeclaims
r R ~ persistentvolumes
r get,list,update,watch storage.k8s.io volumeattributesclasses
ev

crb cluster-admin cluster-admin G:system:masters
crb system:monitoring system:monitoring G:system:monitoring
crb system:discovery system:discovery G:system:authenticated
crb system:basic-user system:basic-user G:system:authenticated
crb system:public-info-viewer system:public-info-viewer G:system:authenticated G:system:unauthenticated
crb system:node-proxier system:node-proxier U:system:kube-proxy
crb system:rk3s-controller system:rk3s-controller U:system:rk3s-controller
crb system:kube-controller-manager system:kube-controller-manager U:system:kube-controller-manager
crb system:kube-dns system:kube-dns SA:kube-system/kube-dns
crb system:kube-scheduler system:kube-scheduler U:system:kube-scheduler
crb system:volume-scheduler system:volume-scheduler U:system:kube-scheduler
crb system:node system:node
crb system:service-account-issuer-discovery system:service-account-issuer-discovery G:system:serviceaccounts

role kube-system extension-apiserver-authentication-reader
r R ~ configmaps extension-apiserver-authentication
role kube-system system::leader-locking-kube-controller-manager
r create,get,list,update,watch coordination.k8s.io leases
r create,get,list,update,watch coordination.k8s.io leasecandidates
role kube-system system::leader-locking-kube-scheduler
r create,get,list,update,watch coordination.k8s.io leases
r create,get,list,update,watch coordination.k8s.io leasecandidates
role kube-system system:controller:bootstrap-signer
r R ~ secrets
role kube-system system:controller:cloud-provider
r create,get,list,watch ~ configmaps
role kube-system system:controller:token-cleaner
r delete,get,list,watch ~ secrets
ev
role kube-public system:controller:bootstrap-signer
r R ~ configmaps
r update ~ configmaps cluster-info
ev

rb kube-system system::extension-apiserver-authentication-reader Role:extension-apiserver-authentication-reader U:system:kube-controller-manager U:system:kube-scheduler
rb kube-system system::leader-locking-kube-controller-manager Role:system::leader-locking-kube-controller-manager U:system:kube-controller-manager SA:kube-system/kube-controller-manager SA:kube-system/leader-election-controller
rb kube-system system::leader-locking-kube-scheduler Role:system::leader-locking-kube-scheduler U:system:kube-scheduler SA:kube-system/kube-scheduler
rb kube-system system:controller:bootstrap-signer Role:system:controller:bootstrap-signer SA:kube-system/bootstrap-signer
rb kube-system system:controller:cloud-provider Role:system:controller:cloud-provider SA:kube-system/cloud-provider
rb kube-system system:controller:token-cleaner Role:system:controller:token-cleaner SA:kube-system/token-cleaner
rb kube-public system:controller:bootstrap-signer Role:system:controller:bootstrap-signer SA:kube-system/bootstrap-signer
"#;

fn expand_verbs(spec: &str) -> Vec<String> {
    let mut out = Vec::new();
    for t in spec.split(',') {
        let list: &[&str] = match t {
            "R" => &["get", "list", "watch"],
            "W" => &["create", "delete", "deletecollection", "patch", "update"],
            "RW" => &[
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ],
            other => &[other][..],
        };
        out.extend(list.iter().map(|s| s.to_string()));
    }
    out
}

fn list(spec: &str) -> Vec<Value> {
    spec.split(',')
        .map(|s| {
            Value::String(if s == "~" {
                String::new()
            } else {
                s.to_string()
            })
        })
        .collect()
}

fn metadata(name: &str, namespace: Option<&str>, extra_labels: &[(String, String)]) -> Value {
    let mut labels = Map::new();
    labels.insert(BOOTSTRAPPING_LABEL.0.into(), BOOTSTRAPPING_LABEL.1.into());
    for (k, v) in extra_labels {
        labels.insert(k.clone(), Value::String(v.clone()));
    }
    let mut m = json!({
        "name": name,
        "labels": labels,
        "annotations": {AUTOUPDATE_ANNOTATION.0: AUTOUPDATE_ANNOTATION.1},
    });
    if let (Some(ns), Some(o)) = (namespace, m.as_object_mut()) {
        o.insert("namespace".into(), Value::String(ns.to_string()));
    }
    m
}

fn subject(spec: &str) -> Value {
    if let Some(g) = spec.strip_prefix("G:") {
        json!({"apiGroup": RBAC_GROUP, "kind": "Group", "name": g})
    } else if let Some(u) = spec.strip_prefix("U:") {
        json!({"apiGroup": RBAC_GROUP, "kind": "User", "name": u})
    } else {
        let sa = spec.strip_prefix("SA:").unwrap_or(spec);
        let (ns, name) = sa.split_once('/').unwrap_or(("kube-system", sa));
        json!({"kind": "ServiceAccount", "name": name, "namespace": ns})
    }
}

fn binding(
    kind: &str,
    name: &str,
    ns: Option<&str>,
    role_kind: &str,
    role: &str,
    subjects: &[&str],
) -> Value {
    let mut b = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": metadata(name, ns, &[]),
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": role_kind, "name": role},
    });
    if !subjects.is_empty() {
        if let Some(o) = b.as_object_mut() {
            o.insert(
                "subjects".into(),
                subjects.iter().map(|s| subject(s)).collect(),
            );
        }
    }
    b
}

fn split_label(s: &str) -> (String, String) {
    let (k, v) = s.split_once('=').unwrap_or((s, ""));
    (k.to_string(), v.to_string())
}

/// The default ClusterRoles, ClusterRoleBindings, Roles and RoleBindings upstream's
/// API server creates at start, as JSON objects ready to store (no
/// resourceVersion/uid/creationTimestamp). Aggregated roles (`admin`, `edit`, `view`)
/// carry their `aggregationRule` and no rules: the aggregation controller (or
/// [`crate::aggregate_cluster_roles`]) fills them.
///
/// Order: ClusterRoles, then ClusterRoleBindings, then Roles, then RoleBindings.
pub fn bootstrap_policy() -> Vec<Value> {
    let mut cluster_roles: Vec<Value> = Vec::new();
    let mut roles: Vec<Value> = Vec::new();
    let mut crbs: Vec<Value> = Vec::new();
    let mut controller_crbs: Vec<Value> = Vec::new();
    let mut rbs: Vec<Value> = Vec::new();
    // Which list the current role lives in: true = cluster roles.
    let mut current_is_cluster = true;

    for line in POLICY.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some((&op, args)) = f.split_first() else {
            continue;
        };
        let current = if current_is_cluster {
            cluster_roles.last_mut()
        } else {
            roles.last_mut()
        };
        let push_rule = |rule: Value| {
            if let Some(r) = current {
                if let Some(arr) = r.get_mut("rules").and_then(Value::as_array_mut) {
                    arr.push(rule);
                } else if let Some(o) = r.as_object_mut() {
                    o.insert("rules".into(), Value::Array(vec![rule]));
                }
            }
        };
        match (op, args) {
            ("cr", [name, rest @ ..]) => {
                current_is_cluster = true;
                let mut labels = Vec::new();
                let mut agg = None;
                for a in rest {
                    match a.strip_prefix("agg=") {
                        Some(sel) => agg = Some(split_label(sel)),
                        None => labels.push(split_label(a)),
                    }
                }
                let mut cr = json!({
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRole",
                    "metadata": metadata(name, None, &labels),
                });
                if let (Some((k, v)), Some(o)) = (agg, cr.as_object_mut()) {
                    o.insert(
                        "aggregationRule".into(),
                        json!({"clusterRoleSelectors": [{"matchLabels": {k: v}}]}),
                    );
                }
                cluster_roles.push(cr);
            }
            ("ctl", [short]) => {
                current_is_cluster = true;
                let name = format!("system:controller:{short}");
                cluster_roles.push(json!({
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRole",
                    "metadata": metadata(&name, None, &[]),
                    "rules": [],
                }));
                let sa = format!("SA:kube-system/{short}");
                controller_crbs.push(binding(
                    "ClusterRoleBinding",
                    &name,
                    None,
                    "ClusterRole",
                    &name,
                    &[&sa],
                ));
            }
            ("role", [ns, name]) => {
                current_is_cluster = false;
                roles.push(json!({
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "Role",
                    "metadata": metadata(name, Some(ns), &[]),
                    "rules": [],
                }));
            }
            ("r", [verbs, groups, resources, names @ ..]) => {
                let mut rule = json!({
                    "verbs": expand_verbs(verbs),
                    "apiGroups": list(groups),
                    "resources": list(resources),
                });
                if let (Some(n), Some(o)) = (names.first(), rule.as_object_mut()) {
                    o.insert("resourceNames".into(), Value::Array(list(n)));
                }
                push_rule(rule);
            }
            ("u", [verbs, urls]) => {
                push_rule(json!({"verbs": expand_verbs(verbs), "nonResourceURLs": list(urls)}));
            }
            ("ev", []) => push_rule(json!({
                "verbs": ["create", "patch", "update"],
                "apiGroups": ["", "events.k8s.io"],
                "resources": ["events"],
            })),
            ("crb", [name, role, subjects @ ..]) => {
                crbs.push(binding(
                    "ClusterRoleBinding",
                    name,
                    None,
                    "ClusterRole",
                    role,
                    subjects,
                ));
            }
            ("rb", [ns, name, role_ref, subjects @ ..]) => {
                let (kind, role) = role_ref.split_once(':').unwrap_or(("Role", role_ref));
                rbs.push(binding("RoleBinding", name, Some(ns), kind, role, subjects));
            }
            _ => tracing::warn!("bootstrap policy: unreadable line {line:?}"),
        }
    }
    let mut out = cluster_roles;
    out.extend(crbs);
    out.extend(controller_crbs);
    out.extend(roles);
    out.extend(rbs);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::str_at;

    fn find<'a>(all: &'a [Value], kind: &str, name: &str) -> &'a Value {
        all.iter()
            .find(|o| str_at(o, &["kind"]) == kind && str_at(o, &["metadata", "name"]) == name)
            .unwrap_or(&Value::Null)
    }

    #[test]
    fn table_parses_completely() {
        // every statement line is understood (no silent drops)
        for line in POLICY.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let Some(op) = f.first() {
                assert!(
                    ["cr", "ctl", "role", "r", "u", "ev", "crb", "rb"].contains(op),
                    "{line}"
                );
            }
        }
        let all = bootstrap_policy();
        // every object has the label and annotation
        for o in &all {
            assert_eq!(
                o["metadata"]["labels"]["kubernetes.io/bootstrapping"], "rbac-defaults",
                "{o}"
            );
            assert_eq!(
                o["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"],
                "true"
            );
        }
        // every non-aggregated role has rules
        for o in all
            .iter()
            .filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "Role")
        {
            let n = o["rules"].as_array().map(Vec::len).unwrap_or(0);
            assert!(n > 0 || o.get("aggregationRule").is_some(), "{o}");
        }
        // every binding refers to an existing role
        for b in all
            .iter()
            .filter(|o| o["kind"] == "ClusterRoleBinding" || o["kind"] == "RoleBinding")
        {
            let rk = str_at(b, &["roleRef", "kind"]);
            let rn = str_at(b, &["roleRef", "name"]);
            let exists = all.iter().any(|o| {
                str_at(o, &["kind"]) == rk
                    && str_at(o, &["metadata", "name"]) == rn
                    && (rk == "ClusterRole"
                        || o["metadata"]["namespace"] == b["metadata"]["namespace"])
            });
            assert!(exists, "{b}");
        }
    }

    #[test]
    fn key_objects() {
        let all = bootstrap_policy();
        let ca = find(&all, "ClusterRoleBinding", "cluster-admin");
        assert_eq!(
            ca["subjects"],
            json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:masters"}])
        );
        let view = find(&all, "ClusterRole", "view");
        assert_eq!(
            view["aggregationRule"]["clusterRoleSelectors"][0]["matchLabels"]
                ["rbac.authorization.k8s.io/aggregate-to-view"],
            "true"
        );
        assert_eq!(
            view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"],
            "true"
        );
        let ctl = find(
            &all,
            "ClusterRoleBinding",
            "system:controller:job-controller",
        );
        assert_eq!(
            ctl["subjects"][0],
            json!({"kind": "ServiceAccount", "name": "job-controller", "namespace": "kube-system"})
        );
        let node = find(&all, "ClusterRoleBinding", "system:node");
        assert!(
            node.get("subjects").is_none(),
            "system:node is bound to nobody (Node authorizer)"
        );
        let signer_nss: Vec<&str> = all
            .iter()
            .filter(|o| {
                o["kind"] == "RoleBinding"
                    && o["metadata"]["name"] == "system:controller:bootstrap-signer"
            })
            .map(|o| str_at(o, &["metadata", "namespace"]))
            .collect();
        assert_eq!(signer_nss, vec!["kube-system", "kube-public"]);
        let signer = find(
            &all,
            "ClusterRole",
            "system:certificates.k8s.io:kubelet-serving-approver",
        );
        assert_eq!(
            signer["rules"][0]["resourceNames"],
            json!(["kubernetes.io/kubelet-serving"])
        );
        let edit = find(&all, "ClusterRole", "system:aggregate-to-edit");
        assert_eq!(
            edit["rules"][2]["verbs"],
            json!(["create", "delete", "deletecollection", "patch", "update"])
        );
        // names are unique per kind/namespace
        let mut keys: Vec<String> = all
            .iter()
            .map(|o| {
                format!(
                    "{}/{}/{}",
                    o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]
                )
            })
            .collect();
        let n = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), n);
    }
}
