//! Per-resource strategies, in the shape of upstream's generic registry: the generic REST
//! layer ([`crate::rest`]) runs the same steps for every resource and asks the
//! resource's [`Strategy`] for that kind's rules: input conversions, PrepareForCreate /
//! PrepareForUpdate (status reset on main-resource updates, spec kept on status updates),
//! validation, status the server derives, allocation of Service values, delete
//! semantics (graceful pods, namespaces that are always finalized).
//!
//! One file per kind that has rules; [`DefaultStrategy`] for the rest; [`for_resource`]
//! is the only place that maps a resource to its strategy. A new rule for one built-in
//! kind belongs in that kind's file.
//!
//! Invariant: a strategy holds rules, no state; storage, admission webhooks and
//! authorization stay in the generic layer.

use async_trait::async_trait;
use rk3s_api::{ApiError, ResourceInfo};
use rk3s_validation::FieldError;
use serde_json::{json, Value};

use crate::alloc::Held;
use crate::object::{self, meta_mut};
use crate::state::Inner;
use crate::UserInfo;

mod crd;
mod csr;
mod job;
mod namespace;
mod node;
mod persistentvolume;
mod pod;
mod rbac;
mod resourcequota;
mod secret;
mod service;

/// How a DELETE of an object is carried out (when it has no finalizers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteMode {
    /// Removed from the store at once.
    Immediate,
    /// Marked (`deletionTimestamp` this many seconds ahead) for its node to finish:
    /// a pod bound to a node, as upstream's graceful deletion.
    Graceful {
        /// The grace period.
        seconds: i64,
    },
    /// Always marked, emptied and removed by a finalizer (namespaces).
    Finalized,
}

/// The rules of one resource. Every method has the behaviour of a resource without
/// rules as its default.
#[async_trait]
pub trait Strategy: Send + Sync {
    /// Conversions upstream does when decoding a request into its internal form.
    fn normalize_input(&self, _obj: &mut Value) {}

    /// Whether upstream maintains `metadata.generation`.
    fn tracks_generation(&self, res: &ResourceInfo) -> bool {
        generation_table(res)
    }

    /// Spec fields an allocator owns when the client left them unset: not recorded as
    /// the creator's in managedFields.
    fn allocator_fields(&self, _obj: &Value) -> Vec<&'static str> {
        Vec::new()
    }

    /// PrepareForCreate (after defaulting): the status a new object starts with and
    /// the fields the server sets on every new object.
    fn prepare_for_create(&self, res: &ResourceInfo, obj: &mut Value) {
        reset_status(res, obj);
    }

    /// The object an update of subresource `sub` makes from `old` and the request, for
    /// the subresources that replace more or less than `status` (see [`prepare_update`]).
    fn prepare_subresource_update(&self, _sub: &str, _old: &Value, _new: &Value) -> Option<Value> {
        None
    }

    /// Rules of an update that run after defaulting (which must not undo them).
    fn after_defaults_on_update(
        &self,
        _sub: Option<&str>,
        _request: &Value,
        _old: &Value,
        _new: &mut Value,
    ) {
    }

    /// Status the server derives itself, after mutating admission.
    fn derive_status(&self, _inner: &Inner, _obj: &mut Value, _old: Option<&Value>) {}

    /// Values the server allocated that an update leaves out are kept (before
    /// validation).
    fn patch_allocated_values(&self, _new: &mut Value, _old: &Value) {}

    /// Validation of a new object.
    fn validate_create(&self, res: &ResourceInfo, obj: &Value) -> Vec<FieldError> {
        rk3s_validation::validate_create(&res.group, &res.version, &res.kind, res.namespaced(), obj)
    }

    /// Validation of an update (of the main resource or subresource `sub`).
    fn validate_update(
        &self,
        res: &ResourceInfo,
        _sub: Option<&str>,
        new: &Value,
        old: &Value,
    ) -> Vec<FieldError> {
        rk3s_validation::validate_update(
            &res.group,
            &res.version,
            &res.kind,
            res.namespaced(),
            new,
            old,
        )
    }

    /// Checks of a write that need the server's state (RBAC escalation prevention).
    fn check_write(
        &self,
        _inner: &Inner,
        _res: &ResourceInfo,
        _user: &UserInfo,
        _obj: &Value,
    ) -> Result<(), ApiError> {
        Ok(())
    }

    /// The kind's own defaulting and validation beyond [`rk3s_validation`] (CRDs), after
    /// admission; `old` is `None` on create.
    fn validate_object(
        &self,
        _res: &ResourceInfo,
        _sub: Option<&str>,
        _obj: &mut Value,
        _old: Option<&Value>,
    ) -> Result<(), ApiError> {
        Ok(())
    }

    /// Allocates what the object needs from the server's allocators (after field
    /// tracking: allocated values have no owner), keeping `old`'s; returns what it newly
    /// took (nothing for a dry run), for [`Strategy::release`] if the write fails.
    async fn allocate(
        &self,
        _inner: &Inner,
        _res: &ResourceInfo,
        _name: &str,
        _obj: &mut Value,
        _old: Option<&Value>,
        _dry_run: bool,
    ) -> Result<Held, ApiError> {
        Ok(Held::default())
    }

    /// What the object holds from the allocators.
    fn held(&self, _inner: &Inner, _obj: &Value) -> Held {
        Held::default()
    }

    /// Gives back allocated values (of a write that did not happen, of a deleted
    /// object, or that an update dropped).
    async fn release(&self, _inner: &Inner, _ns: Option<&str>, _name: &str, _held: &Held) {}

    /// How a DELETE with options `opts` removes `obj` (when it has no finalizers).
    fn delete_mode(&self, _obj: &Value, _opts: &Value) -> DeleteMode {
        DeleteMode::Immediate
    }

    /// Changes to an object being marked for deletion (beside `deletionTimestamp`).
    fn mark_deleting(&self, _obj: &mut Value) {}

    /// Whether an object being deleted whose finalizers are all gone must still wait
    /// (a Namespace with `spec.finalizers`).
    fn holds_deletion(&self, _obj: &Value) -> bool {
        false
    }
}

/// The strategy of a resource without rules of its own.
pub struct DefaultStrategy;

impl Strategy for DefaultStrategy {}

/// The strategy of a resource.
pub fn for_resource(res: &ResourceInfo) -> &'static dyn Strategy {
    match (res.group.as_str(), res.plural.as_str()) {
        ("", "pods") => &pod::PodStrategy,
        ("", "services") => &service::ServiceStrategy,
        ("", "namespaces") => &namespace::NamespaceStrategy,
        ("", "nodes") => &node::NodeStrategy,
        ("", "persistentvolumeclaims" | "persistentvolumes") => {
            &persistentvolume::PersistentVolumeStrategy
        }
        ("", "secrets") => &secret::SecretStrategy,
        ("", "resourcequotas") => &resourcequota::ResourceQuotaStrategy,
        ("batch", "jobs") => &job::JobStrategy,
        (
            "rbac.authorization.k8s.io",
            "roles" | "clusterroles" | "rolebindings" | "clusterrolebindings",
        ) => &rbac::RbacStrategy,
        ("apiextensions.k8s.io", "customresourcedefinitions") => &crd::CrdStrategy,
        ("certificates.k8s.io", "certificatesigningrequests") => &csr::CsrStrategy,
        _ => &DefaultStrategy,
    }
}

/// Upstream's status reset of a new object: an empty status for resources with a
/// `status` subresource.
pub fn reset_status(res: &ResourceInfo, obj: &mut Value) {
    if res.subresource("status").is_some() {
        if let Some(o) = obj.as_object_mut() {
            o.insert("status".into(), json!({}));
        }
    }
}

/// Kinds whose annotation changes also bump `metadata.generation` on a main-resource
/// update (upstream's Deployment strategy: its annotations are copied to its
/// ReplicaSets, so the controller must see them as a new generation).
pub fn annotations_bump_generation(res: &ResourceInfo) -> bool {
    matches!(
        (res.group.as_str(), res.kind.as_str()),
        ("apps", "Deployment")
    )
}

/// Kinds whose `metadata.generation` upstream maintains (the default of
/// [`Strategy::tracks_generation`]; one table rather than a line in each kind's file).
pub fn generation_table(res: &ResourceInfo) -> bool {
    matches!(
        (res.group.as_str(), res.kind.as_str()),
        (
            "apps",
            "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet"
        ) | ("batch", _)
            | ("", "ReplicationController")
            | ("policy", "PodDisruptionBudget")
            | ("autoscaling", "HorizontalPodAutoscaler")
            | (
                "networking.k8s.io",
                "Ingress" | "NetworkPolicy" | "IngressClass"
            )
            | ("apiextensions.k8s.io", _)
            | ("admissionregistration.k8s.io", _)
            | ("flowcontrol.apiserver.k8s.io", _)
    ) || res.definition.is_empty()
}

/// The metadata a `status` update takes from the stored object rather than the request,
/// as upstream's status strategies (their PrepareForUpdate copies `spec` and these):
/// `None` = all of it (custom resources, FlowSchemas and PriorityLevelConfigurations);
/// most kinds keep none, so labels and annotations change through `status` (one table
/// rather than a line in each kind's file).
pub fn status_kept_metadata(res: &ResourceInfo) -> Option<&'static [&'static str]> {
    const RESET_FOR_STATUS: &[&str] = &["labels", "annotations", "finalizers", "ownerReferences"];
    match (res.group.as_str(), res.kind.as_str()) {
        _ if res.definition.is_empty() => None,
        ("flowcontrol.apiserver.k8s.io", _) => None,
        ("apps", "Deployment") => Some(&["labels"]),
        ("", "Pod") => Some(&["ownerReferences"]),
        ("apiextensions.k8s.io", "CustomResourceDefinition")
        | ("apiregistration.k8s.io", "APIService")
        | ("storage.k8s.io", "VolumeAttachment") => Some(RESET_FOR_STATUS),
        _ => Some(&[]),
    }
}

/// A `status` update: the request's status (the stored one if it has none) and
/// metadata (but `kept`'s keys, or all of it for `None`, from `old`), every other
/// top-level field (the spec) from `old`.
pub fn status_update(old: &Value, new: &Value, kept: Option<&[&str]>) -> Value {
    let mut out = old.clone();
    let Some(oo) = out.as_object_mut() else {
        return out;
    };
    if let Some(s) = new.get("status") {
        oo.insert("status".into(), s.clone());
    }
    let (Some(kept), Some(new_meta)) = (kept, new.get("metadata").and_then(|m| m.as_object()))
    else {
        return out;
    };
    let old_meta = object::meta(old).cloned().unwrap_or_default();
    let mut meta = new_meta.clone();
    for k in kept {
        match old_meta.get(*k) {
            Some(v) => {
                meta.insert((*k).into(), v.clone());
            }
            None => {
                meta.remove(*k);
            }
        }
    }
    oo.insert("metadata".into(), Value::Object(meta));
    out
}

/// Builds the stored form of an update (upstream's PrepareForUpdate): immutable metadata
/// comes from `old`; a main-resource update keeps `old`'s status, a `status` update keeps
/// `old`'s spec (see [`status_update`]); `generation` is bumped when the spec changes.
pub fn prepare_update(
    res: &ResourceInfo,
    sub: Option<&str>,
    old: &Value,
    new: &mut Value,
) -> Value {
    let strategy = for_resource(res);
    let kind_update = sub.and_then(|s| strategy.prepare_subresource_update(s, old, new));
    let mut out = match sub {
        _ if kind_update.is_some() => kind_update.unwrap_or_default(),
        Some("status") => status_update(old, new, status_kept_metadata(res)),
        _ => {
            let mut n = new.clone();
            if res.subresource("status").is_some() {
                if let Some(no) = n.as_object_mut() {
                    match old.get("status") {
                        Some(s) => {
                            no.insert("status".into(), s.clone());
                        }
                        None => {
                            no.remove("status");
                        }
                    }
                }
            }
            n
        }
    };
    let old_meta = object::meta(old).cloned().unwrap_or_default();
    if let Some(m) = meta_mut(&mut out) {
        for k in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "namespace",
            "name",
            "generation",
        ] {
            match old_meta.get(k) {
                Some(v) => {
                    m.insert(k.into(), v.clone());
                }
                None => {
                    m.remove(k);
                }
            }
        }
        m.insert(
            "resourceVersion".into(),
            old_meta
                .get("resourceVersion")
                .cloned()
                .unwrap_or(Value::Null),
        );
        m.remove("selfLink");
    }
    let annotations = |o: &Value| {
        object::meta(o)
            .and_then(|m| m.get("annotations"))
            .filter(|a| a.as_object().is_some_and(|m| !m.is_empty()))
            .cloned()
    };
    let annotations_changed =
        sub.is_none() && annotations_bump_generation(res) && annotations(&out) != annotations(old);
    if strategy.tracks_generation(res)
        && (annotations_changed || object::spec_part(&out) != object::spec_part(old))
    {
        let g = old_meta
            .get("generation")
            .and_then(|g| g.as_i64())
            .unwrap_or(0)
            + 1;
        if let Some(m) = meta_mut(&mut out) {
            m.insert("generation".into(), json!(g));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(group: &str, version: &str, plural: &str) -> ResourceInfo {
        rk3s_api::Registry::builtin()
            .get(group, version, plural)
            .map(|r| (*r).clone())
            .expect("resource")
    }

    #[test]
    fn a_main_resource_update_keeps_status_and_a_status_update_keeps_the_rest() {
        let deploy = res("apps", "v1", "deployments");
        let old = json!({"metadata": {"name": "d", "uid": "u", "generation": 3, "resourceVersion": "5"},
            "spec": {"replicas": 1}, "status": {"replicas": 1}});
        let mut new = json!({"metadata": {"name": "d", "uid": "other"},
            "spec": {"replicas": 2}, "status": {"replicas": 9}});
        let out = prepare_update(&deploy, None, &old, &mut new);
        assert_eq!(out["status"], json!({"replicas": 1}));
        assert_eq!(out["spec"], json!({"replicas": 2}));
        assert_eq!(out["metadata"]["uid"], "u");
        assert_eq!(
            out["metadata"]["generation"], 4,
            "a spec change bumps generation"
        );
        let out = prepare_update(&deploy, Some("status"), &old, &mut new);
        assert_eq!(out["spec"], json!({"replicas": 1}));
        assert_eq!(out["status"], json!({"replicas": 9}));
        assert_eq!(out["metadata"]["generation"], 3);
        // A Deployment's annotations count as a new generation (not a ReplicaSet's).
        let mut annotated = old.clone();
        annotated["metadata"]["annotations"] = json!({"kubernetes.io/change-cause": "x"});
        let out = prepare_update(&deploy, None, &old, &mut annotated.clone());
        assert_eq!(out["metadata"]["generation"], 4);
        let out = prepare_update(&deploy, Some("status"), &old, &mut annotated.clone());
        assert_eq!(out["metadata"]["generation"], 3);
        let rs = res("apps", "v1", "replicasets");
        let out = prepare_update(&rs, None, &old, &mut annotated);
        assert_eq!(out["metadata"]["generation"], 3);
    }

    #[test]
    fn a_status_update_takes_metadata_as_upstreams_status_strategies() {
        let old = json!({"metadata": {"name": "x", "uid": "u", "labels": {"l": "old"}, "annotations": {"a": "old"},
            "ownerReferences": [{"uid": "o"}]}, "spec": {"s": 1}, "status": {"st": 1}});
        let mut new = json!({"metadata": {"name": "x", "uid": "other", "labels": {"l": "new"}, "annotations": {"a": "new"},
            "ownerReferences": []}, "spec": {"s": 2}, "status": {"st": 2}});
        let meta = |out: &Value| {
            (
                out["metadata"]["labels"]["l"].clone(),
                out["metadata"]["annotations"]["a"].clone(),
            )
        };
        // Most kinds: labels and annotations through status, never the spec.
        let ingress = res("networking.k8s.io", "v1", "ingresses");
        let out = prepare_update(&ingress, Some("status"), &old, &mut new);
        assert_eq!(meta(&out), (json!("new"), json!("new")));
        assert_eq!(
            (out["spec"]["s"].clone(), out["status"]["st"].clone()),
            (json!(1), json!(2))
        );
        assert_eq!(out["metadata"]["uid"], "u");
        // Deployments keep their labels, pods their owners, APIServices their labels,
        // annotations, finalizers and owners.
        let deploy = res("apps", "v1", "deployments");
        let out = prepare_update(&deploy, Some("status"), &old, &mut new);
        assert_eq!(meta(&out), (json!("old"), json!("new")));
        let pod = res("", "v1", "pods");
        let out = prepare_update(&pod, Some("status"), &old, &mut new);
        assert_eq!(meta(&out), (json!("new"), json!("new")));
        assert_eq!(out["metadata"]["ownerReferences"][0]["uid"], "o");
        let apiservice = res("apiregistration.k8s.io", "v1", "apiservices");
        let out = prepare_update(&apiservice, Some("status"), &old, &mut new);
        assert_eq!(meta(&out), (json!("old"), json!("old")));
        // Custom resources keep all of their metadata.
        let mut cr = deploy.clone();
        cr.definition.clear();
        let out = prepare_update(&cr, Some("status"), &old, &mut new);
        assert_eq!(meta(&out), (json!("old"), json!("old")));
        assert_eq!(out["status"]["st"], 2);
    }

    /// Upstream e2e "Ingress API" and "CertificateSigningRequest API": merge patches of
    /// `/status` and `/approval` carry annotations along with the status.
    #[tokio::test]
    async fn status_and_approval_patches_keep_their_metadata_changes() {
        use crate::testutil::{call, call_with_type, server};
        const MERGE: &str = "application/merge-patch+json";
        let dir = tempfile::tempdir().expect("tempdir");
        let api = server(dir.path()).await;
        let ing = "/apis/networking.k8s.io/v1/namespaces/default/ingresses";
        let (code, out) = call(&api, "POST", ing, Some(json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "i"}, "spec": {"defaultBackend": {"service": {"name": "s", "port": {"number": 80}}}}}))).await;
        assert_eq!(code, 201, "{out}");
        let (code, out) = call_with_type(&api, "PATCH", &format!("{ing}/i/status"), MERGE,
            Some(json!({"metadata": {"annotations": {"patchedstatus": "true"}, "labels": {"l": "v"}},
                "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.9"}]}},
                "spec": {"defaultBackend": {"service": {"name": "changed", "port": {"number": 80}}}}}))).await;
        assert_eq!(code, 200, "{out}");
        assert_eq!(out["metadata"]["annotations"]["patchedstatus"], "true");
        assert_eq!(out["metadata"]["labels"]["l"], "v");
        assert_eq!(
            out["status"]["loadBalancer"]["ingress"][0]["ip"],
            "192.0.2.9"
        );
        assert_eq!(out["spec"]["defaultBackend"]["service"]["name"], "s");
        let (_, got) = call(&api, "GET", &format!("{ing}/i"), None).await;
        assert_eq!(got["metadata"]["annotations"]["patchedstatus"], "true");

        // Deployments keep their labels (upstream's deployment status strategy).
        let deploy = "/apis/apps/v1/namespaces/default/deployments";
        let (code, out) = call(&api, "POST", deploy, Some(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "labels": {"l": "old"}}, "spec": {"selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}))).await;
        assert_eq!(code, 201, "{out}");
        let (code, out) = call_with_type(&api, "PATCH", &format!("{deploy}/d/status"), MERGE,
            Some(json!({"metadata": {"annotations": {"patchedstatus": "true"}, "labels": {"l": "new"}},
                "status": {"replicas": 3}}))).await;
        assert_eq!(code, 200, "{out}");
        assert_eq!(out["metadata"]["annotations"]["patchedstatus"], "true");
        assert_eq!(out["metadata"]["labels"]["l"], "old");
        assert_eq!(out["status"]["replicas"], 3);

        let csr = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
        let (code, out) = call(&api, "POST", csr, Some(json!({"apiVersion": "certificates.k8s.io/v1",
            "kind": "CertificateSigningRequest", "metadata": {"name": "c"},
            "spec": {"request": "Y3Ny", "signerName": "example.com/e2e", "usages": ["client auth"]}}))).await;
        assert_eq!(code, 201, "{out}");
        let (code, out) = call_with_type(&api, "PATCH", &format!("{csr}/c/approval"), MERGE,
            Some(json!({"metadata": {"annotations": {"patchedapproval": "true"}},
                "status": {"conditions": [{"type": "ApprovalPatch", "status": "True", "reason": "e2e"}]}}))).await;
        assert_eq!(code, 200, "{out}");
        assert_eq!(out["metadata"]["annotations"]["patchedapproval"], "true");
        assert_eq!(out["status"]["conditions"][0]["type"], "ApprovalPatch");
        assert!(
            out["status"]["conditions"][0]["lastUpdateTime"].is_string(),
            "{out}"
        );
        let (code, out) = call_with_type(
            &api,
            "PATCH",
            &format!("{csr}/c/status"),
            MERGE,
            Some(
                json!({"metadata": {"annotations": {"patchedstatus": "true"}},
                "status": {"certificate": "Y2VydA=="}}),
            ),
        )
        .await;
        assert_eq!(code, 200, "{out}");
        assert_eq!(out["metadata"]["annotations"]["patchedstatus"], "true");
        assert_eq!(out["metadata"]["annotations"]["patchedapproval"], "true");
        assert_eq!(out["status"]["certificate"], "Y2VydA==");
    }

    #[test]
    fn resources_map_to_their_strategy() {
        let pod = res("", "v1", "pods");
        let mut p = json!({"spec": {"containers": [{"name": "a"}]}});
        for_resource(&pod).prepare_for_create(&pod, &mut p);
        assert_eq!(
            p["status"],
            json!({"phase": "Pending", "qosClass": "BestEffort"})
        );
        // A resource with a status subresource and no rules: status reset.
        let deploy = res("apps", "v1", "deployments");
        let mut d = json!({"status": {"replicas": 3}});
        for_resource(&deploy).prepare_for_create(&deploy, &mut d);
        assert_eq!(d["status"], json!({}));
        // Nodes keep the status their kubelet registers with.
        let node = res("", "v1", "nodes");
        let mut n = json!({"status": {"capacity": {"cpu": "1"}}});
        for_resource(&node).prepare_for_create(&node, &mut n);
        assert_eq!(n["status"]["capacity"]["cpu"], "1");
        let cm = res("", "v1", "configmaps");
        assert!(!for_resource(&cm).tracks_generation(&cm));
        assert!(for_resource(&deploy).tracks_generation(&deploy));
        assert_eq!(
            for_resource(&cm).delete_mode(&json!({}), &json!({})),
            DeleteMode::Immediate
        );
    }
}
