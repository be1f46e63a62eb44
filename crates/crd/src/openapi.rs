//! The OpenAPI definition of a custom resource version (for `/openapi/v3`, and in
//! its Swagger 2.0 form for `/openapi/v2`, `kubectl explain` and kubectl's client-side
//! validation), as upstream's CRD OpenAPI builder.

use serde_json::{json, Map, Value};

use crate::util::str_at;

const OBJECT_META_REF: &str = "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
const API_VERSION_DESC: &str = "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources";
const KIND_DESC: &str = "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";
const EMBEDDED_API_VERSION_DESC: &str = "apiVersion defines the versioned schema of this representation of an object. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources";
const EMBEDDED_KIND_DESC: &str = "kind is a string value representing the type of this object. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";
const METADATA_DESC: &str = "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

/// The definition name upstream gives a custom resource's schema: the reversed
/// group, the version and the kind (`com.example.stable.v1.CronTab`).
pub fn crd_definition_name(group: &str, version: &str, kind: &str) -> String {
    let mut parts: Vec<&str> = group.split('.').filter(|s| !s.is_empty()).collect();
    parts.reverse();
    parts.push(version);
    parts.push(kind);
    parts.join(".")
}

/// The OpenAPI schema of `version` (with `#/definitions/` refs): the
/// `openAPIV3Schema` plus `apiVersion`/`kind` descriptions, `metadata` as a
/// reference to ObjectMeta and `x-kubernetes-group-version-kind`; embedded resources
/// (`x-kubernetes-embedded-resource`) get `apiVersion`, `kind` and `metadata` too.
/// `None` when the version does not exist or has no schema.
pub fn openapi_schema(crd: &Value, version: &str) -> Option<Value> {
    let mut schema = with_type_meta(crd, version)?;
    add_embedded_properties(&mut schema, false);
    Some(schema)
}

/// The version's schema with the root's `apiVersion`, `kind`, `metadata` and
/// group-version-kind.
fn with_type_meta(crd: &Value, version: &str) -> Option<Value> {
    let v = crd
        .pointer("/spec/versions")?
        .as_array()?
        .iter()
        .find(|v| str_at(v, &["name"]) == version)?;
    let mut schema = v
        .pointer("/schema/openAPIV3Schema")
        .or_else(|| crd.pointer("/spec/validation/openAPIV3Schema"))
        .filter(|s| s.is_object())?
        .clone();
    let group = str_at(crd, &["spec", "group"]);
    let kind = str_at(crd, &["spec", "names", "kind"]);
    let m = schema.as_object_mut()?;
    if !m.contains_key("type") {
        m.insert("type".into(), Value::from("object"));
    }
    let props = m
        .entry("properties")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(p) = props.as_object_mut() {
        let with_desc = |existing: Option<&Value>, default: &str| {
            let d = existing
                .map(|e| str_at(e, &["description"]))
                .filter(|d| !d.is_empty())
                .unwrap_or(default);
            json!({"type": "string", "description": d})
        };
        let api_version = with_desc(p.get("apiVersion"), API_VERSION_DESC);
        let kind_prop = with_desc(p.get("kind"), KIND_DESC);
        p.insert("apiVersion".into(), api_version);
        p.insert("kind".into(), kind_prop);
        p.insert(
            "metadata".into(),
            json!({"$ref": OBJECT_META_REF, "description": METADATA_DESC}),
        );
    }
    m.insert(
        "x-kubernetes-group-version-kind".into(),
        json!([{"group": group, "kind": kind, "version": version}]),
    );
    Some(schema)
}

/// The Swagger 2.0 (`/openapi/v2`) definition of `version`, as upstream's CRD OpenAPI
/// builder publishes it for kubectl's client-side validation: a schema that preserves
/// unknown fields at its root (or a CRD with `spec.preserveUnknownFields`) is a bare
/// `type: object` (only the group-version-kind), since any property would make kubectl
/// refuse unknown fields; otherwise the schema converted as upstream's
/// `ToStructuralOpenAPIV2`: no `allOf`/`anyOf`/`oneOf`/`not`; a `nullable` node loses
/// its type, properties and items (and is no longer required by its parent); a node
/// preserving unknown fields loses its properties and items, and its type if it is
/// `object`; an array without items loses its type; embedded resources that do not
/// preserve unknown fields get `apiVersion`, `kind` and `metadata`. `None` as for
/// [`openapi_schema`].
pub fn openapi_v2_schema(crd: &Value, version: &str) -> Option<Value> {
    let mut schema = with_type_meta(crd, version)?;
    let root_preserves = schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        .unwrap_or(false)
        || crd
            .pointer("/spec/preserveUnknownFields")
            .and_then(Value::as_bool)
            .unwrap_or(false);
    if root_preserves {
        let gvk = schema.get("x-kubernetes-group-version-kind").cloned()?;
        return Some(json!({"type": "object", "x-kubernetes-group-version-kind": gvk}));
    }
    to_structural_v2(&mut schema);
    add_embedded_properties(&mut schema, true);
    Some(schema)
}

/// Upstream's addEmbeddedProperties: an embedded resource's schema gets `apiVersion`,
/// `kind` (both required) and `metadata`; not in v2 where it preserves unknown
/// fields (kubectl would then refuse them).
fn add_embedded_properties(s: &mut Value, v2: bool) {
    let Some(m) = s.as_object_mut() else { return };
    if let Some(Value::Object(props)) = m.get_mut("properties") {
        props
            .values_mut()
            .for_each(|p| add_embedded_properties(p, v2));
    }
    if let Some(items) = m.get_mut("items").filter(|i| i.is_object()) {
        add_embedded_properties(items, v2);
    }
    if let Some(a) = m.get_mut("additionalProperties").filter(|a| a.is_object()) {
        add_embedded_properties(a, v2);
    }
    let flag = |k: &str| m.get(k).and_then(Value::as_bool) == Some(true);
    if (v2 && flag("x-kubernetes-preserve-unknown-fields"))
        || !flag("x-kubernetes-embedded-resource")
    {
        return;
    }
    let props = m
        .entry("properties")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(p) = props.as_object_mut() {
        p.insert(
            "apiVersion".into(),
            json!({"type": "string", "description": EMBEDDED_API_VERSION_DESC}),
        );
        p.insert(
            "kind".into(),
            json!({"type": "string", "description": EMBEDDED_KIND_DESC}),
        );
        p.insert(
            "metadata".into(),
            json!({"$ref": OBJECT_META_REF, "description": METADATA_DESC}),
        );
    }
    let req = m.entry("required").or_insert_with(|| json!([]));
    if let Some(r) = req.as_array_mut() {
        for k in ["kind", "apiVersion"] {
            if !r.iter().any(|x| x == k) {
                r.push(json!(k));
            }
        }
    }
}

fn is_true(s: &Value, key: &str) -> bool {
    s.get(key).and_then(Value::as_bool).unwrap_or(false)
}

/// Upstream's `ToStructuralOpenAPIV2` on one node, then on its children (a parent
/// reads its children's `nullable` before they are converted).
fn to_structural_v2(s: &mut Value) {
    let Some(m) = s.as_object_mut() else { return };
    for k in ["allOf", "anyOf", "oneOf", "not"] {
        m.remove(k);
    }
    if m.get("nullable").and_then(Value::as_bool) == Some(true) {
        for k in ["type", "nullable", "items", "properties"] {
            m.remove(k);
        }
    }
    let preserves = m
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true);
    if preserves {
        m.remove("items");
        m.remove("properties");
    }
    let typ = m.get("type").and_then(Value::as_str);
    if (!m.contains_key("items") && typ == Some("array")) || (preserves && typ == Some("object")) {
        // kubectl checks every value of an object without properties (refusing nulls)
        // and cannot take an array without items: untyped, anything goes.
        m.remove("type");
    }
    let nullable_props: Vec<String> = m
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| {
            p.iter()
                .filter(|(_, v)| is_true(v, "nullable"))
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default();
    let nullable_additional = m
        .get("additionalProperties")
        .is_some_and(|a| is_true(a, "nullable"));
    if nullable_additional {
        m.remove("required");
    } else if !nullable_props.is_empty() {
        if let Some(Value::Array(req)) = m.get_mut("required") {
            req.retain(|r| {
                !r.as_str()
                    .is_some_and(|r| nullable_props.iter().any(|p| p == r))
            });
            if req.is_empty() {
                m.remove("required");
            }
        }
    }
    if let Some(Value::Object(props)) = m.get_mut("properties") {
        props.values_mut().for_each(to_structural_v2);
    }
    match m.get_mut("items") {
        Some(Value::Array(items)) => items.iter_mut().for_each(to_structural_v2),
        Some(items) => to_structural_v2(items),
        None => {}
    }
    if let Some(a) = m.get_mut("additionalProperties") {
        to_structural_v2(a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::tests::crontab_crd;

    #[test]
    fn definition_names() {
        assert_eq!(
            crd_definition_name("stable.example.com", "v1", "CronTab"),
            "com.example.stable.v1.CronTab"
        );
    }

    #[test]
    fn schema_for_explain() {
        let s = openapi_schema(&crontab_crd(), "v1").expect("schema");
        assert_eq!(
            s["x-kubernetes-group-version-kind"],
            json!([{"group": "stable.example.com", "kind": "CronTab", "version": "v1"}])
        );
        assert_eq!(s["properties"]["metadata"]["$ref"], json!(OBJECT_META_REF));
        assert_eq!(s["properties"]["kind"]["type"], json!("string"));
        assert_eq!(
            s["properties"]["spec"]["properties"]["replicas"]["maximum"],
            json!(10)
        );
        assert!(openapi_schema(&crontab_crd(), "v9").is_none());
    }

    fn with_schema(schema: Value) -> Value {
        let mut crd = crontab_crd();
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"] = schema;
        crd
    }

    #[test]
    fn v2_schema_of_a_schema_preserving_unknown_fields_at_its_root_is_a_bare_object() {
        let crd = with_schema(
            json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true,
            "description": "d", "properties": {"spec": {"type": "object"}}}),
        );
        assert_eq!(
            openapi_v2_schema(&crd, "v1").expect("v2"),
            json!({"type": "object", "x-kubernetes-group-version-kind":
                [{"group": "stable.example.com", "kind": "CronTab", "version": "v1"}]})
        );
        // v3 keeps the whole schema.
        let v3 = openapi_schema(&crd, "v1").expect("v3");
        assert_eq!(v3["properties"]["spec"]["type"], "object");
    }

    #[test]
    fn embedded_resources_get_type_and_object_meta() {
        let crd = with_schema(json!({"type": "object", "properties": {
            "template": {"type": "object", "x-kubernetes-embedded-resource": true,
                "properties": {"spec": {"type": "object"}}},
            "loose": {"type": "object", "x-kubernetes-embedded-resource": true,
                "x-kubernetes-preserve-unknown-fields": true}}}));
        for (v, s) in [
            ("v3", openapi_schema(&crd, "v1").expect("v3")),
            ("v2", openapi_v2_schema(&crd, "v1").expect("v2")),
        ] {
            let t = &s["properties"]["template"];
            assert_eq!(
                t["properties"]["metadata"]["$ref"],
                json!(OBJECT_META_REF),
                "{v}"
            );
            assert_eq!(t["properties"]["kind"]["type"], "string", "{v}");
            assert_eq!(t["required"], json!(["kind", "apiVersion"]), "{v}");
        }
        let v3 = openapi_schema(&crd, "v1").expect("v3");
        assert!(v3["properties"]["loose"]["properties"]["apiVersion"].is_object());
        let v2 = openapi_v2_schema(&crd, "v1").expect("v2");
        assert_eq!(
            v2["properties"]["loose"],
            json!({"x-kubernetes-embedded-resource": true, "x-kubernetes-preserve-unknown-fields": true}),
            "v2 leaves a preserving embedded resource open"
        );
    }

    #[test]
    fn v2_schema_drops_what_kubectl_validation_cannot_take() {
        let crd = with_schema(json!({"type": "object", "properties": {
            "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true, "description": "s",
                "properties": {"a": {"type": "string"}}},
            "status": {"type": "object", "required": ["n", "m"], "properties": {
                "n": {"type": "string", "nullable": true},
                "m": {"type": "array", "items": {"type": "object", "nullable": true, "properties": {"x": {"type": "string"}}}},
                "o": {"oneOf": [{"type": "string"}], "anyOf": [{"type": "integer"}], "type": "string", "pattern": "a|b"},
                "p": {"type": "array", "x-kubernetes-preserve-unknown-fields": true, "items": {"type": "string"}}}}}}));
        let v2 = openapi_v2_schema(&crd, "v1").expect("v2");
        let p = &v2["properties"];
        assert_eq!(
            p["spec"],
            json!({"x-kubernetes-preserve-unknown-fields": true, "description": "s"})
        );
        let st = &p["status"];
        assert_eq!(
            st["required"],
            json!(["m"]),
            "nullable fields are not required"
        );
        assert_eq!(st["properties"]["n"], json!({}));
        assert_eq!(st["properties"]["m"]["items"], json!({}));
        assert_eq!(
            st["properties"]["o"],
            json!({"type": "string", "pattern": "a|b"})
        );
        assert_eq!(
            st["properties"]["p"],
            json!({"x-kubernetes-preserve-unknown-fields": true})
        );
        assert_eq!(p["metadata"]["$ref"], json!(OBJECT_META_REF));
        assert_eq!(p["kind"]["type"], "string");
    }
}
