//! JSON merge patch (RFC 7386, `application/merge-patch+json`).

use serde_json::{Map, Value};

use crate::PatchError;

/// Applies a JSON merge patch (RFC 7386) to `doc` and returns the result.
///
/// `null` deletes a key, objects merge recursively, anything else replaces the
/// target value. Like upstream (evanphx/json-patch), `null`s inside values that are
/// newly set are dropped. The patch must be a JSON object (a Kubernetes object is
/// always one); anything else is rejected with upstream's `Invalid JSON Patch`.
pub fn apply_merge_patch(doc: &Value, patch: &Value) -> Result<Value, PatchError> {
    if !patch.is_object() {
        return Err(PatchError::BadRequest("Invalid JSON Patch".to_string()));
    }
    let mut out = doc.clone();
    merge_into(&mut out, patch);
    Ok(out)
}

fn merge_into(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = prune_nulls(patch);
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target_map) = target else {
        return;
    };
    for (key, value) in patch_map {
        if value.is_null() {
            target_map.shift_remove(key);
        } else {
            let slot = target_map.entry(key.clone()).or_insert(Value::Null);
            merge_into(slot, value);
        }
    }
}

/// Drops `null` members of objects, recursively (array elements are kept).
fn prune_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), prune_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(prune_nulls).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn null_deletes_and_objects_merge() {
        let doc = json!({
            "metadata": {"name": "a", "labels": {"app": "x", "tier": "web"}},
            "spec": {"replicas": 1, "paused": true}
        });
        let patch = json!({
            "metadata": {"labels": {"tier": null, "new": "y"}},
            "spec": {"paused": null, "replicas": 3}
        });
        let out = apply_merge_patch(&doc, &patch).unwrap();
        assert_eq!(
            out,
            json!({
                "metadata": {"name": "a", "labels": {"app": "x", "new": "y"}},
                "spec": {"replicas": 3}
            })
        );
    }

    #[test]
    fn lists_are_replaced_and_key_order_kept() {
        let doc = json!({"a": 1, "list": [1, 2, 3], "z": 2});
        let out = apply_merge_patch(&doc, &json!({"list": [4]})).unwrap();
        assert_eq!(out, json!({"a": 1, "list": [4], "z": 2}));
        let keys: Vec<_> = out.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["a", "list", "z"]);
    }

    #[test]
    fn deleting_a_key_keeps_the_order_of_the_others() {
        let doc = json!({"a": 1, "b": 2, "c": 3});
        let out = apply_merge_patch(&doc, &json!({"a": null})).unwrap();
        let keys: Vec<_> = out.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["b", "c"]);
    }

    #[test]
    fn nulls_in_new_values_are_dropped() {
        let doc = json!({"spec": 1});
        let out = apply_merge_patch(
            &doc,
            &json!({"spec": {"a": null, "b": {"c": null, "d": 1}}}),
        )
        .unwrap();
        assert_eq!(out, json!({"spec": {"b": {"d": 1}}}));
    }

    #[test]
    fn non_object_patch_is_rejected() {
        let err = apply_merge_patch(&json!({}), &json!([1])).unwrap_err();
        assert_eq!(err, PatchError::BadRequest("Invalid JSON Patch".into()));
        assert!(apply_merge_patch(&json!({}), &Value::Null).is_err());
    }
}
