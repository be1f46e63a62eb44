//! JSON patch (RFC 6902, `application/json-patch+json`).

use json_patch::{PatchErrorKind, PatchOperation};
use serde_json::{Map, Value};

use crate::{json_eq, json_kind_name, PatchError};

/// Applies a JSON patch (RFC 6902) to `doc` and returns the result.
///
/// A patch that is not a list of operation objects is a [`PatchError::BadRequest`]
/// (upstream decodes it first); an operation that cannot be applied is a
/// [`PatchError::Unprocessable`] with upstream's message, e.g.
/// `add operation does not apply: doc is missing path: "/spec/foo": missing value`
/// or `testing value /spec/replicas failed: test failed`. Operations apply in
/// order; on error nothing is returned (the input is never modified).
pub fn apply_json_patch(doc: &Value, patch: &Value) -> Result<Value, PatchError> {
    let Value::Array(ops) = patch else {
        return Err(PatchError::BadRequest(format!(
            "json: cannot unmarshal {} into Go value of type jsonpatch.Patch",
            json_kind_name(patch)
        )));
    };
    let mut objects = Vec::with_capacity(ops.len());
    for op in ops {
        match op {
            Value::Object(m) => objects.push(m),
            other => {
                return Err(PatchError::BadRequest(format!(
                    "json: cannot unmarshal {} into Go value of type jsonpatch.Operation",
                    json_kind_name(other)
                )))
            }
        }
    }
    let mut out = doc.clone();
    for op in objects {
        apply_one(&mut out, op)?;
    }
    Ok(out)
}

fn unprocessable(msg: String) -> PatchError {
    PatchError::Unprocessable(msg)
}

fn apply_one(doc: &mut Value, op: &Map<String, Value>) -> Result<(), PatchError> {
    let kind = op.get("op").and_then(Value::as_str).unwrap_or("unknown");
    if !matches!(
        kind,
        "add" | "remove" | "replace" | "move" | "copy" | "test"
    ) {
        return Err(unprocessable(format!("Unexpected kind: {kind}")));
    }
    let Some(path) = op.get("path").and_then(Value::as_str) else {
        return Err(unprocessable(format!(
            "{kind} operation failed to decode path: operation missing path field: missing value"
        )));
    };
    let from = op.get("from").and_then(Value::as_str);
    if matches!(kind, "move" | "copy") && from.is_none() {
        return Err(unprocessable(format!(
            "{kind} operation failed to decode from: operation, missing from field: missing value"
        )));
    }
    if matches!(kind, "add" | "replace" | "test") && !op.contains_key("value") {
        return Err(unprocessable(format!(
            "{kind} operation, missing value field: missing value"
        )));
    }
    let from = from.unwrap_or("");
    let missing_path = || {
        match kind {
        "add" | "remove" => format!(
            "{kind} operation does not apply: doc is missing path: \"{path}\": missing value"
        ),
        "test" => format!("test operation does not apply: is missing path: {path}: missing value"),
        _ => format!(
            "{kind} operation does not apply: doc is missing destination path: {path}: missing value"
        ),
    }
    };

    if kind == "test" {
        let expected = op.get("value").unwrap_or(&Value::Null);
        return match doc.pointer(path) {
            Some(actual) if json_eq(actual, expected) => Ok(()),
            Some(_) => Err(unprocessable(format!(
                "testing value {path} failed: test failed"
            ))),
            // A missing member of an existing object only equals null.
            None if parent_exists(doc, path) => {
                if expected.is_null() {
                    Ok(())
                } else {
                    Err(unprocessable(format!(
                        "testing value {path} failed: test failed"
                    )))
                }
            }
            None => Err(unprocessable(missing_path())),
        };
    }

    let parsed: PatchOperation = match serde_json::from_value(Value::Object(op.clone())) {
        Ok(parsed) => parsed,
        // The only way left to fail decoding is a pointer that doesn't start with '/'.
        Err(_) => {
            if matches!(kind, "move" | "copy") && !from.is_empty() && !from.starts_with('/') {
                return Err(unprocessable(format!(
                    "{kind} operation does not apply: doc is missing from path: {from}: missing value"
                )));
            }
            return Err(unprocessable(missing_path()));
        }
    };
    match json_patch::patch_unsafe(doc, std::slice::from_ref(&parsed)) {
        Ok(()) => Ok(()),
        Err(e) => Err(unprocessable(match e.kind {
            PatchErrorKind::TestFailed => format!("testing value {path} failed: test failed"),
            PatchErrorKind::InvalidFromPointer => format!(
                "{kind} operation does not apply: doc is missing from path: {from}: missing value"
            ),
            PatchErrorKind::CannotMoveInsideItself => format!(
                "move operation does not apply: cannot move {from} into its own child {path}"
            ),
            _ if kind == "replace" && parent_exists(doc, path) => format!(
                "replace operation does not apply: doc is missing key: {path}: missing value"
            ),
            _ if kind == "replace" => format!(
                "replace operation does not apply: doc is missing path: {path}: missing value"
            ),
            _ => missing_path(),
        })),
    }
}

/// Whether the container of the location `path` points to exists in `doc`.
fn parent_exists(doc: &Value, path: &str) -> bool {
    match path.rsplit_once('/') {
        Some((parent, _)) => doc
            .pointer(parent)
            .is_some_and(|p| p.is_object() || p.is_array()),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": 1, "template": {"spec": {"containers": [
                {"name": "nginx", "image": "nginx:1.25"}
            ]}}}
        })
    }

    #[test]
    fn add_remove_replace() {
        let patch = json!([
            {"op": "add", "path": "/metadata/labels/tier", "value": "frontend"},
            {"op": "replace", "path": "/spec/replicas", "value": 3},
            {"op": "remove", "path": "/metadata/labels/app"},
            {"op": "add", "path": "/spec/template/spec/containers/-", "value": {"name": "side", "image": "busybox"}}
        ]);
        let out = apply_json_patch(&deployment(), &patch).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"tier": "frontend"}));
        assert_eq!(out["spec"]["replicas"], json!(3));
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][1]["name"],
            json!("side")
        );
    }

    #[test]
    fn move_and_copy() {
        let patch = json!([
            {"op": "copy", "from": "/metadata/labels", "path": "/spec/selector"},
            {"op": "move", "from": "/metadata/labels/app", "path": "/metadata/labels/name"}
        ]);
        let out = apply_json_patch(&deployment(), &patch).unwrap();
        assert_eq!(out["spec"]["selector"], json!({"app": "web"}));
        assert_eq!(out["metadata"]["labels"], json!({"name": "web"}));
    }

    #[test]
    fn test_operation_passes_and_fails() {
        let ok = json!([{"op": "test", "path": "/spec/replicas", "value": 1.0},
                        {"op": "test", "path": "/spec/absent", "value": null}]);
        assert!(apply_json_patch(&deployment(), &ok).is_ok());
        let bad = json!([{"op": "test", "path": "/spec/replicas", "value": 2},
                         {"op": "replace", "path": "/spec/replicas", "value": 5}]);
        let err = apply_json_patch(&deployment(), &bad).unwrap_err();
        assert_eq!(
            err,
            PatchError::Unprocessable("testing value /spec/replicas failed: test failed".into())
        );
        assert_eq!(err.status_code(), 422);
        let missing = json!([{"op": "test", "path": "/nope/x", "value": 1}]);
        assert_eq!(
            apply_json_patch(&deployment(), &missing)
                .unwrap_err()
                .to_string(),
            "test operation does not apply: is missing path: /nope/x: missing value"
        );
    }

    #[test]
    fn missing_paths_report_upstream_messages() {
        let err = apply_json_patch(
            &deployment(),
            &json!([{"op": "add", "path": "/spec/foo/bar", "value": 1}]),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "add operation does not apply: doc is missing path: \"/spec/foo/bar\": missing value"
        );
        let err = apply_json_patch(
            &deployment(),
            &json!([{"op": "remove", "path": "/spec/foo"}]),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "remove operation does not apply: doc is missing path: \"/spec/foo\": missing value"
        );
        let err = apply_json_patch(
            &deployment(),
            &json!([{"op": "replace", "path": "/spec/foo", "value": 1}]),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "replace operation does not apply: doc is missing key: /spec/foo: missing value"
        );
        let err = apply_json_patch(
            &deployment(),
            &json!([{"op": "move", "from": "/x", "path": "/y"}]),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "move operation does not apply: doc is missing from path: /x: missing value"
        );
    }

    #[test]
    fn failed_patch_leaves_input_untouched_and_returns_error() {
        let doc = deployment();
        let patch = json!([{"op": "replace", "path": "/spec/replicas", "value": 9},
                           {"op": "remove", "path": "/nope"}]);
        assert!(apply_json_patch(&doc, &patch).is_err());
        assert_eq!(doc["spec"]["replicas"], json!(1));
    }

    #[test]
    fn malformed_patches() {
        let err = apply_json_patch(&deployment(), &json!({"op": "add"})).unwrap_err();
        assert_eq!(err.status_code(), 400);
        assert_eq!(
            err.to_string(),
            "json: cannot unmarshal object into Go value of type jsonpatch.Patch"
        );
        let err =
            apply_json_patch(&deployment(), &json!([{"op": "frob", "path": "/a"}])).unwrap_err();
        assert_eq!(
            err,
            PatchError::Unprocessable("Unexpected kind: frob".into())
        );
        let err =
            apply_json_patch(&deployment(), &json!([{"op": "add", "path": "/a"}])).unwrap_err();
        assert_eq!(err.status_code(), 422);
        let err = apply_json_patch(
            &deployment(),
            &json!([{"op": "add", "path": "spec", "value": 1}]),
        )
        .unwrap_err();
        assert_eq!(err.status_code(), 422);
    }

    #[test]
    fn array_index_out_of_range_is_an_error() {
        let patch = json!([{"op": "add", "path": "/spec/template/spec/containers/5", "value": {}}]);
        assert_eq!(
            apply_json_patch(&deployment(), &patch)
                .unwrap_err()
                .status_code(),
            422
        );
    }
}
