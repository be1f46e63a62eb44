//! JSON patch, JSON merge patch and Kubernetes strategic merge patch.
//!
//! The three patch types the Kubernetes API server accepts on `PATCH`:
//! - `application/json-patch+json` (RFC 6902): [`apply_json_patch`];
//! - `application/merge-patch+json` (RFC 7386): [`apply_merge_patch`];
//! - `application/strategic-merge-patch+json`: [`apply_strategic_merge_patch`],
//!   driven by the patch metadata of each field ([`PatchSchema`]).
//!
//! Errors carry the messages upstream's API server returns and the HTTP status it
//! answers with ([`PatchError::status_code`]).

pub mod apply;
mod gofmt;
mod jsonpatch;
mod merge;
mod strategic;

pub use jsonpatch::apply_json_patch;
pub use merge::apply_merge_patch;
pub use strategic::apply_strategic_merge_patch;

pub use apply::{
    conflict_message, fields_of, parse_managed_fields, server_side_apply, track_update, ApplyError,
    ApplySchema, CachedApplySchema, Conflict, DerivedApplySchema, FieldManager, FieldSet, ListType,
    ManagedFieldsEntry, MapType, PathElement, TypeCache,
};

/// Why a patch could not be applied.
///
/// Each variant maps to the HTTP status upstream's API server answers with
/// ([`PatchError::status_code`]); the message is the one upstream puts in the
/// `Status`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The patch document is malformed (HTTP 400 Bad Request), e.g. a JSON patch
    /// that is not a list of operations, a merge patch that is not an object, or a
    /// strategic merge patch directive with a bad format
    /// (`invalid patch format of retainKeys`).
    #[error("{0}")]
    BadRequest(String),
    /// The patch is well formed but cannot be applied to this object (HTTP 422
    /// Unprocessable Entity), e.g. a JSON patch operation on a missing path
    /// (`add operation does not apply: doc is missing path: "/spec/foo": missing value`)
    /// or a failed `test` operation.
    #[error("{0}")]
    Unprocessable(String),
    /// Any other strategic merge patch failure, e.g. a merge list element without
    /// its merge key (`map: map[image:nginx] does not contain declared merge key: name`)
    /// or an unknown `$patch` directive. Upstream does not classify these and
    /// answers HTTP 500 with an empty reason.
    #[error("{0}")]
    Merge(String),
}

impl PatchError {
    /// The HTTP status code upstream's API server answers with for this error.
    pub fn status_code(&self) -> u16 {
        match self {
            PatchError::BadRequest(_) => 400,
            PatchError::Unprocessable(_) => 422,
            PatchError::Merge(_) => 500,
        }
    }

    /// The `reason` of the `Status` upstream returns (`BadRequest`, `Invalid`, or
    /// empty for unclassified errors).
    pub fn reason(&self) -> &'static str {
        match self {
            PatchError::BadRequest(_) => "BadRequest",
            PatchError::Unprocessable(_) => "Invalid",
            PatchError::Merge(_) => "",
        }
    }

    /// The error message (same as `to_string()`).
    pub fn message(&self) -> &str {
        match self {
            PatchError::BadRequest(m) | PatchError::Unprocessable(m) | PatchError::Merge(m) => m,
        }
    }
}

/// Patch metadata of one field of an object type, from the OpenAPI schema
/// (x-kubernetes-patch-strategy / x-kubernetes-patch-merge-key / x-kubernetes-list-type...).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldMeta {
    /// OpenAPI definition name of the field's object type, or of its list items / map
    /// values when those are objects (None for primitives / free-form).
    pub type_name: Option<String>,
    /// The field is a list.
    pub is_list: bool,
    /// The field is an additionalProperties map (e.g. labels).
    pub is_map: bool,
    /// Parsed from "merge", "replace", "retainKeys", "merge,retainKeys".
    pub patch_strategy: Vec<String>,
    /// e.g. "name", "containerPort", "mountPath", "type", "ip".
    pub merge_key: Option<String>,
    /// `x-kubernetes-list-type` of a list field (`atomic`, `set` or `map`), when the
    /// schema declares one; server-side apply follows it rather than the patch
    /// strategy.
    pub list_type: Option<String>,
    /// `x-kubernetes-list-map-keys` of a `map` list: the fields identifying its items
    /// (e.g. `containerPort` and `protocol` for a container's ports).
    pub list_map_keys: Vec<String>,
    /// The field's `default` in the schema (e.g. `"TCP"` for a port's `protocol`):
    /// server-side apply takes it for a key field an associative-list item leaves out.
    pub default: Option<serde_json::Value>,
}

/// Where strategic merge patch learns each field's patch strategy.
pub trait PatchSchema: Send + Sync {
    /// Metadata of field `field` of the object type named `type_name` (OpenAPI
    /// definition name, e.g. "io.k8s.api.core.v1.PodSpec"); None if unknown.
    fn field(&self, type_name: &str, field: &str) -> Option<FieldMeta>;

    /// True when objects of type `type_name` may hold only the fields the schema
    /// declares for it (a known object type without
    /// `x-kubernetes-preserve-unknown-fields`): server-side apply refuses any other
    /// (`field not declared in schema`). False (the default) when the schema cannot
    /// tell, so nothing is refused.
    fn declares_all_fields(&self, type_name: &str) -> bool {
        let _ = type_name;
        false
    }
}

/// A schema that knows nothing: strategic merge patch then behaves like a JSON
/// merge patch with lists replaced, as upstream does for unknown types (upstream
/// refuses strategic merge patches on custom resources with 415; the caller
/// handles that).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoSchema;

impl PatchSchema for NoSchema {
    fn field(&self, _type_name: &str, _field: &str) -> Option<FieldMeta> {
        None
    }
}

/// Equality of JSON values as Go compares decoded JSON: numbers by value (every
/// number is a float64 there), everything else structurally.
pub(crate) fn json_eq(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y || matches!((x.as_f64(), y.as_f64()), (Some(p), Some(q)) if p == q)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// The Go `encoding/json` name of a JSON value's kind, as it appears in upstream's
/// decoding errors (`cannot unmarshal array into Go value of type ...`).
pub(crate) fn json_kind_name(v: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_codes_follow_upstream() {
        assert_eq!(PatchError::BadRequest("x".into()).status_code(), 400);
        assert_eq!(PatchError::Unprocessable("x".into()).status_code(), 422);
        assert_eq!(PatchError::Merge("x".into()).status_code(), 500);
        assert_eq!(PatchError::Unprocessable("x".into()).reason(), "Invalid");
        assert_eq!(PatchError::Merge("boom".into()).to_string(), "boom");
    }

    #[test]
    fn json_eq_compares_numbers_by_value() {
        assert!(json_eq(&json!(1), &json!(1.0)));
        assert!(json_eq(&json!({"a": [1, 2]}), &json!({"a": [1.0, 2]})));
        assert!(!json_eq(&json!(1), &json!("1")));
        assert!(!json_eq(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
    }

    #[test]
    fn no_schema_knows_nothing() {
        assert_eq!(
            NoSchema.field("io.k8s.api.core.v1.PodSpec", "containers"),
            None
        );
    }
}
