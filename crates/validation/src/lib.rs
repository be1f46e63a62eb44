//! Defaulting and validation of built-in Kubernetes (1.33) objects, working on
//! `serde_json::Value`, with upstream's rules and the error messages clients see.
//!
//! * [`apply_defaults`] fills in the v1 defaulters' values in place.
//! * [`validate_create`] / [`validate_update`] return upstream-style [`FieldError`]s; the
//!   API server turns a non-empty list into a `422 Invalid` Status whose
//!   `details.causes` are `{reason, message, field}` of each error (see
//!   [`FieldError::reason`], [`FieldError::message`], [`invalid_status_message`]).
//! * Name helpers ([`is_dns1123_subdomain`] and friends) return upstream's messages.

mod apps;
mod batch;
mod core;
mod defaults;
mod errors;
mod meta;
mod names;
mod other;
mod pod;
mod quantity;
mod util;

pub use defaults::apply_defaults;
pub use errors::{invalid_status_message, ErrorKind, FieldError};
pub use names::{
    is_c_identifier, is_config_map_key, is_dns1035_label, is_dns1123_label, is_dns1123_subdomain,
    is_env_var_name, is_qualified_name, is_relaxed_env_var_name, is_valid_label_value,
    is_valid_path_segment_name, is_valid_percent, is_valid_port_name,
    is_wildcard_dns1123_subdomain, name_validator_for, NameValidator,
};
pub use quantity::{parse_quantity, Quantity, QuantityError};

use serde_json::Value;

/// Validates a new object: ObjectMeta rules (namespace required for namespaced kinds,
/// forbidden for cluster-scoped ones, name format per kind, labels, annotations,
/// finalizers, owner references) plus the kind's own rules.
///
/// `group` is `""` for the core group. Unknown kinds get ObjectMeta validation only.
pub fn validate_create(
    group: &str,
    version: &str,
    kind: &str,
    namespaced: bool,
    obj: &Value,
) -> Vec<FieldError> {
    let _ = version;
    let mut errs = Vec::new();
    let name_fn = name_validator_for(group, kind);
    meta::validate_object_meta(
        obj.get("metadata"),
        namespaced,
        name_fn,
        "metadata",
        &mut errs,
    );
    validate_kind(group, kind, obj, None, &mut errs);
    dedup(errs)
}

/// Validates an update of `old` into `new`: every rule of [`validate_create`] plus the
/// immutable fields (metadata name/namespace/uid/creationTimestamp, Deployment
/// selectors, Service clusterIP, Job template, Pod spec except a few fields, immutable
/// Secrets/ConfigMaps, ...).
pub fn validate_update(
    group: &str,
    version: &str,
    kind: &str,
    namespaced: bool,
    new: &Value,
    old: &Value,
) -> Vec<FieldError> {
    let _ = version;
    let mut errs = Vec::new();
    let name_fn = name_validator_for(group, kind);
    meta::validate_object_meta(
        new.get("metadata"),
        namespaced,
        name_fn,
        "metadata",
        &mut errs,
    );
    meta::validate_object_meta_update(
        new.get("metadata"),
        old.get("metadata"),
        "metadata",
        &mut errs,
    );
    validate_kind(group, kind, new, Some(old), &mut errs);
    dedup(errs)
}

fn validate_kind(
    group: &str,
    kind: &str,
    obj: &Value,
    old: Option<&Value>,
    errs: &mut Vec<FieldError>,
) {
    match (group, kind) {
        ("", "Pod") => pod::validate_pod(obj, old, errs),
        ("", "PodTemplate") => pod::validate_pod_template(obj, old, errs),
        ("", "ReplicationController") => core::validate_replication_controller(obj, old, errs),
        ("", "Service") => core::validate_service(obj, old, errs),
        ("", "ConfigMap") => core::validate_config_map(obj, old, errs),
        ("", "Secret") => core::validate_secret(obj, old, errs),
        ("", "Namespace") => core::validate_namespace(obj, old, errs),
        ("", "ServiceAccount") => core::validate_service_account(obj, errs),
        ("", "PersistentVolumeClaim") => core::validate_pvc(obj, old, errs),
        ("", "PersistentVolume") => core::validate_pv(obj, errs),
        ("", "Endpoints") => core::validate_endpoints(obj, errs),
        ("", "Event") => core::validate_event(obj, errs),
        ("", "ResourceQuota") => core::validate_resource_quota(obj, errs),
        ("", "LimitRange") => core::validate_limit_range(obj, errs),
        ("apps", "Deployment") => apps::validate_deployment(obj, old, errs),
        ("apps", "ReplicaSet") => apps::validate_replica_set(obj, old, errs),
        ("apps", "StatefulSet") => apps::validate_stateful_set(obj, old, errs),
        ("apps", "DaemonSet") => apps::validate_daemon_set(obj, old, errs),
        ("batch", "Job") => batch::validate_job(obj, old, errs),
        ("batch", "CronJob") => batch::validate_cron_job(obj, old, errs),
        ("networking.k8s.io", "Ingress") => other::validate_ingress(obj, errs),
        ("networking.k8s.io", "IngressClass") => other::validate_ingress_class(obj, errs),
        ("networking.k8s.io", "NetworkPolicy") => other::validate_network_policy(obj, errs),
        ("rbac.authorization.k8s.io", "Role" | "ClusterRole") => other::validate_role(obj, errs),
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            other::validate_role_binding(kind, obj, old, errs)
        }
        ("coordination.k8s.io", "Lease") => other::validate_lease(obj, errs),
        ("scheduling.k8s.io", "PriorityClass") => other::validate_priority_class(obj, old, errs),
        ("storage.k8s.io", "StorageClass") => other::validate_storage_class(obj, old, errs),
        ("policy", "PodDisruptionBudget") => other::validate_pdb(obj, errs),
        _ => {}
    }
}

/// Upstream aggregates field errors by their full text, dropping exact duplicates.
fn dedup(errs: Vec<FieldError>) -> Vec<FieldError> {
    let mut seen = std::collections::HashSet::new();
    errs.into_iter()
        .filter(|e| seen.insert(e.to_string()))
        .collect()
}
