//! The `DefaultStorageClass` admission plugin (upstream
//! `plugin/pkg/admission/storage/storageclass/setdefault`).

use serde_json::{Map, Value};

/// Annotation marking the default StorageClass.
pub const IS_DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
/// The beta form of [`IS_DEFAULT_CLASS`], still honoured upstream.
pub const BETA_IS_DEFAULT_CLASS: &str = "storageclass.beta.kubernetes.io/is-default-class";

fn is_default(sc: &Value) -> bool {
    let a = &sc["metadata"]["annotations"];
    a[IS_DEFAULT_CLASS].as_str() == Some("true")
        || a[BETA_IS_DEFAULT_CLASS].as_str() == Some("true")
}

/// The default StorageClass's name: among the classes annotated as default,
/// the newest (by `creationTimestamp`, ties broken by name ascending).
pub fn default_class_name(storage_classes: &[Value]) -> Option<String> {
    let mut best: Option<(i64, &str)> = None;
    for sc in storage_classes.iter().filter(|sc| is_default(sc)) {
        let name = sc["metadata"]["name"].as_str().unwrap_or_default();
        let ts = sc["metadata"]["creationTimestamp"]
            .as_str()
            .and_then(|s| s.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_second())
            .unwrap_or(i64::MIN);
        let better = match best {
            None => true,
            Some((bts, bname)) => ts > bts || (ts == bts && name < bname),
        };
        if better {
            best = Some((ts, name));
        }
    }
    best.map(|(_, n)| n.to_string())
}

/// Sets `spec.storageClassName` of a PVC being created when it has none (field
/// absent or null — an empty string means "no class" and is kept) and no
/// `volume.beta.kubernetes.io/storage-class` annotation. Returns whether it set one.
pub fn default_storage_class(pvc: &mut Value, storage_classes: &[Value]) -> bool {
    if pvc["metadata"]["annotations"]["volume.beta.kubernetes.io/storage-class"].is_string() {
        return false;
    }
    if !pvc["spec"]["storageClassName"].is_null() {
        return false;
    }
    let Some(name) = default_class_name(storage_classes) else {
        return false;
    };
    let Some(obj) = pvc.as_object_mut() else {
        return false;
    };
    let spec = obj
        .entry("spec")
        .or_insert_with(|| Value::Object(Map::new()));
    match spec.as_object_mut() {
        Some(s) => {
            tracing::debug!(class = %name, "defaulting storageClassName");
            s.insert("storageClassName".into(), Value::String(name));
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sc(name: &str, default: bool, ts: &str) -> Value {
        let ann = if default {
            json!({IS_DEFAULT_CLASS: "true"})
        } else {
            json!({})
        };
        json!({"metadata": {"name": name, "annotations": ann, "creationTimestamp": ts}})
    }

    #[test]
    fn sets_newest_default() {
        let classes = [
            sc("old", true, "2024-01-01T00:00:00Z"),
            sc("new", true, "2024-06-01T00:00:00Z"),
            sc("newest-but-not-default", false, "2025-01-01T00:00:00Z"),
        ];
        let mut pvc = json!({"metadata": {"name": "c"}, "spec": {"resources": {"requests": {"storage": "1Gi"}}}});
        assert!(default_storage_class(&mut pvc, &classes));
        assert_eq!(pvc["spec"]["storageClassName"], "new");
    }

    #[test]
    fn keeps_explicit_or_empty_class() {
        let classes = [sc("std", true, "2024-01-01T00:00:00Z")];
        let mut empty = json!({"spec": {"storageClassName": ""}});
        assert!(!default_storage_class(&mut empty, &classes));
        assert_eq!(empty["spec"]["storageClassName"], "");
        let mut none = json!({"spec": {}});
        assert!(!default_storage_class(
            &mut none,
            &[sc("x", false, "2024-01-01T00:00:00Z")]
        ));
        assert!(none["spec"]["storageClassName"].is_null());
    }
}
