//! The OpenAPI definition of a custom resource version (for `/openapi/v2`,
//! `/openapi/v3` and `kubectl explain`), as upstream's CRD OpenAPI builder.

use serde_json::{json, Map, Value};

use crate::util::str_at;

const OBJECT_META_REF: &str = "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
const API_VERSION_DESC: &str = "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources";
const KIND_DESC: &str = "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";
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
/// reference to ObjectMeta and `x-kubernetes-group-version-kind`. `None` when the
/// version does not exist or has no schema.
pub fn openapi_schema(crd: &Value, version: &str) -> Option<Value> {
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
}
