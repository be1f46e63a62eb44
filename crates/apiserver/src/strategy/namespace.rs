//! Namespaces: phase `Active` on create, `spec.finalizers` that only the `finalize`
//! subresource changes, deletion always through the namespace finalizer (phase
//! `Terminating`, removed once emptied and its `spec.finalizers` are gone).

use rk3s_api::ResourceInfo;
use serde_json::{json, Value};

use super::{DeleteMode, Strategy};

/// The strategy of `namespaces`.
pub struct NamespaceStrategy;

impl Strategy for NamespaceStrategy {
    fn prepare_for_create(&self, _res: &ResourceInfo, obj: &mut Value) {
        if let Some(o) = obj.as_object_mut() {
            o.insert("status".into(), json!({"phase": "Active"}));
        }
    }

    fn after_defaults_on_update(
        &self,
        sub: Option<&str>,
        request: &Value,
        old: &Value,
        new: &mut Value,
    ) {
        namespace_finalizers(sub, request, old, new);
    }

    fn delete_mode(&self, _obj: &Value, _opts: &Value) -> DeleteMode {
        DeleteMode::Finalized
    }

    fn mark_deleting(&self, obj: &mut Value) {
        if let Some(o) = obj.as_object_mut() {
            o.insert("status".into(), json!({"phase": "Terminating"}));
        }
    }

    /// As upstream's ShouldDeleteNamespaceDuringUpdate: not while `spec.finalizers`
    /// remain.
    fn holds_deletion(&self, obj: &Value) -> bool {
        obj.pointer("/spec/finalizers")
            .and_then(|f| f.as_array())
            .is_some_and(|f| !f.is_empty())
    }
}

/// A Namespace's `spec.finalizers` after an update (call after defaulting, which
/// would add `kubernetes` back): `namespaces/{name}/finalize` replaces them with the
/// request's (an empty list is stored as none, as upstream encodes it); every other
/// write keeps the stored ones (upstream's namespace strategy).
pub fn namespace_finalizers(sub: Option<&str>, request: &Value, old: &Value, new: &mut Value) {
    let source = if sub == Some("finalize") {
        request
    } else {
        old
    };
    let finalizers = source
        .pointer("/spec/finalizers")
        .filter(|f| !f.is_null())
        .cloned();
    let finalizers = match finalizers {
        Some(Value::Array(a)) if a.is_empty() && sub == Some("finalize") => None,
        other => other,
    };
    let Some(o) = new.as_object_mut() else { return };
    let spec = o.entry("spec").or_insert_with(|| json!({}));
    if !spec.is_object() {
        *spec = json!({});
    }
    if let Some(sm) = spec.as_object_mut() {
        match finalizers {
            Some(f) => {
                sm.insert("finalizers".into(), f);
            }
            None => {
                sm.remove("finalizers");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_finalizers_change_only_through_finalize() {
        let old = json!({"metadata": {"name": "n"}, "spec": {"finalizers": ["kubernetes"]}});
        // The main resource keeps them, whatever the request or defaulting says.
        let mut new = json!({"metadata": {"name": "n"}, "spec": {"finalizers": []}});
        namespace_finalizers(None, &json!({}), &old, &mut new);
        assert_eq!(new["spec"]["finalizers"], json!(["kubernetes"]));
        let cleared = json!({"metadata": {"name": "n"}, "spec": {}});
        let mut new = json!({"metadata": {"name": "n"}, "spec": {"finalizers": ["kubernetes"]}});
        namespace_finalizers(Some("status"), &json!({}), &cleared, &mut new);
        assert_eq!(
            new["spec"],
            json!({}),
            "defaulting does not bring `kubernetes` back"
        );
        // finalize takes the request's; an empty list is none.
        let mut new = json!({"spec": {"finalizers": ["kubernetes"]}});
        namespace_finalizers(
            Some("finalize"),
            &json!({"spec": {"finalizers": ["example.com/x"]}}),
            &old,
            &mut new,
        );
        assert_eq!(new["spec"]["finalizers"], json!(["example.com/x"]));
        for request in [
            json!({"spec": {"finalizers": []}}),
            json!({"spec": {}}),
            json!({}),
        ] {
            let mut new = json!({"spec": {"finalizers": ["kubernetes"]}});
            namespace_finalizers(Some("finalize"), &request, &old, &mut new);
            assert_eq!(new["spec"], json!({}), "{request}");
        }
    }

    #[test]
    fn a_namespace_waits_for_its_spec_finalizers() {
        assert!(NamespaceStrategy.holds_deletion(&json!({"spec": {"finalizers": ["kubernetes"]}})));
        assert!(!NamespaceStrategy.holds_deletion(&json!({"spec": {"finalizers": []}})));
        assert!(!NamespaceStrategy.holds_deletion(&json!({"spec": {}})));
        let mut ns = json!({"status": {"phase": "Active"}});
        NamespaceStrategy.mark_deleting(&mut ns);
        assert_eq!(ns["status"]["phase"], "Terminating");
    }
}
