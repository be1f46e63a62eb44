//! Definitions: generation from the k8s-openapi `JsonSchema` impls, our facts on top,
//! and the conversions to the Swagger 2.0 and OpenAPI 3.0 schema dialects.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use schemars::{generate::SchemaSettings, JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};

/// `$ref` prefix of the neutral (and Swagger 2.0) definitions.
pub(crate) const REF_V2: &str = "#/definitions/";
/// `$ref` prefix of OpenAPI 3 documents.
pub(crate) const REF_V3: &str = "#/components/schemas/";

pub(crate) const INT_OR_STRING: &str = "io.k8s.apimachinery.pkg.util.intstr.IntOrString";
pub(crate) const QUANTITY: &str = "io.k8s.apimachinery.pkg.api.resource.Quantity";
pub(crate) const LIST_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta";

/// One k8s-openapi kind: how to generate its schema and its group/version/kind.
pub(crate) struct KindEntry {
    /// The definition name (the type's `schema_name`).
    pub name: fn() -> Cow<'static, str>,
    /// Adds the type's schema (and everything it refers to) to a generator.
    pub generate: fn(&mut SchemaGenerator),
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
}

fn generate<T: JsonSchema>(g: &mut SchemaGenerator) {
    let _ = g.subschema_for::<T>();
}

/// A kind without a list type.
pub(crate) fn single<T: JsonSchema + k8s_openapi::Resource>() -> KindEntry {
    KindEntry {
        name: T::schema_name,
        generate: generate::<T>,
        group: T::GROUP,
        version: T::VERSION,
        kind: T::KIND,
    }
}

/// A kind with a list type (its `<Kind>List` schema is made by [`list_schema`]).
pub(crate) fn listable<T: JsonSchema + k8s_openapi::ListableResource>() -> KindEntry {
    single::<T>()
}

/// A generator that names every k8s-openapi type as a definition under `#/definitions/`.
pub(crate) fn generator() -> SchemaGenerator {
    let mut s = SchemaSettings::draft07();
    s.definitions_path = "/definitions".into();
    s.transforms = Vec::new();
    s.meta_schema = None;
    s.inline_subschemas = false;
    s.into_generator()
}

/// Adds the schemas every API group needs (DeleteOptions, Status, WatchEvent, Patch, ListMeta).
pub(crate) fn generate_common(g: &mut SchemaGenerator) {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
    use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
    generate::<meta::DeleteOptions>(g);
    generate::<meta::Status>(g);
    generate::<meta::WatchEvent<RawExtension>>(g);
    generate::<meta::Patch>(g);
    generate::<meta::ListMeta>(g);
    generate::<meta::ObjectMeta>(g);
    generate::<meta::APIResourceList>(g);
    generate::<meta::APIGroup>(g);
    generate::<meta::APIGroupList>(g);
    generate::<meta::APIVersions>(g);
    generate::<k8s_openapi::apimachinery::pkg::version::Info>(g);
}

/// The schema of `<Kind>List` holding items of definition `item_def`.
pub(crate) fn list_schema(kind: &str, item_def: &str) -> Value {
    json!({
        "description": format!("{kind}List is a list of {kind} objects."),
        "type": "object",
        "properties": {
            "apiVersion": {
                "description": "APIVersion of this list: group/version, or version alone for the core group.",
                "type": "string"
            },
            "items": {
                "description": format!("The {kind} objects."),
                "type": "array",
                "items": { "$ref": format!("{REF_V2}{item_def}") }
            },
            "kind": {
                "description": "Kind of this list, in CamelCase.",
                "type": "string"
            },
            "metadata": {
                "description": "Standard list metadata.",
                "$ref": format!("{REF_V2}{LIST_META}")
            }
        },
        "required": ["items"]
    })
}

/// Calls `f` on every subschema of `schema` (not on `schema` itself), depth first,
/// knowing which JSON keys hold schemas (so a property *named* `oneOf` is not a keyword).
pub(crate) fn for_each_subschema_mut(schema: &mut Value, f: &mut dyn FnMut(&mut Value)) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    for (key, value) in obj.iter_mut() {
        match key.as_str() {
            "properties" | "patternProperties" | "definitions" | "$defs" => {
                if let Some(m) = value.as_object_mut() {
                    for v in m.values_mut() {
                        f(v);
                        for_each_subschema_mut(v, f);
                    }
                }
            }
            "items" | "additionalProperties" | "not" | "additionalItems" => {
                if value.is_object() {
                    f(value);
                    for_each_subschema_mut(value, f);
                } else if let Some(a) = value.as_array_mut() {
                    for v in a {
                        f(v);
                        for_each_subschema_mut(v, f);
                    }
                }
            }
            "allOf" | "anyOf" | "oneOf" => {
                if let Some(a) = value.as_array_mut() {
                    for v in a {
                        f(v);
                        for_each_subschema_mut(v, f);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Applies `f` to `schema` and to all its subschemas.
pub(crate) fn walk_mut(schema: &mut Value, f: &mut dyn FnMut(&mut Value)) {
    f(schema);
    for_each_subschema_mut(schema, f);
}

/// Neutral clean-up of a generated definition: drops the `oneOf` alternatives that
/// k8s-openapi emits for the JSONSchemaPropsOr* types (upstream leaves them untyped).
pub(crate) fn neutralize(schema: &mut Value) {
    walk_mut(schema, &mut |s| {
        if let Some(o) = s.as_object_mut() {
            o.remove("oneOf");
            o.remove("anyOf");
        }
    });
}

/// Applies the facts table: patch strategies, merge keys and list types on properties,
/// and the defaults of list-map key fields.
pub(crate) fn apply_facts(defs: &mut BTreeMap<String, Value>) {
    for fact in crate::facts::FACTS {
        let Some(prop) = defs
            .get_mut(fact.definition)
            .and_then(|d| d.get_mut("properties"))
            .and_then(|p| p.get_mut(fact.field))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        if let Some(s) = fact.patch_strategy {
            prop.insert("x-kubernetes-patch-strategy".into(), s.into());
        }
        if let Some(k) = fact.merge_key {
            prop.insert("x-kubernetes-patch-merge-key".into(), k.into());
        }
        if let Some(t) = fact.list_type {
            prop.insert("x-kubernetes-list-type".into(), t.into());
        }
        if !fact.list_map_keys.is_empty() {
            prop.insert(
                "x-kubernetes-list-map-keys".into(),
                json!(fact.list_map_keys),
            );
        }
    }
    for d in crate::facts::KEY_DEFAULTS {
        if let Some(prop) = defs
            .get_mut(d.definition)
            .and_then(|def| def.get_mut("properties"))
            .and_then(|p| p.get_mut(d.field))
            .and_then(Value::as_object_mut)
        {
            prop.insert("default".into(), json!(d.default));
        }
    }
}

/// Every definition name that `value` refers to with a `$ref` under `prefix`.
pub(crate) fn collect_refs(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "$ref" {
                    if let Some(name) = v.as_str().and_then(|s| s.strip_prefix(prefix)) {
                        out.insert(name.to_string());
                    }
                } else {
                    collect_refs(v, prefix, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_refs(v, prefix, out)),
        _ => {}
    }
}

/// The transitive closure of definitions reachable from `roots`.
pub(crate) fn reachable(
    defs: &BTreeMap<String, Value>,
    roots: impl IntoIterator<Item = String>,
) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<String> = roots.into_iter().collect();
    while let Some(name) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        if let Some(d) = defs.get(&name) {
            let mut refs = BTreeSet::new();
            collect_refs(d, REF_V2, &mut refs);
            todo.extend(refs.into_iter().filter(|r| !seen.contains(r)));
        }
    }
    seen
}

/// Converts a neutral definition to the Swagger 2.0 dialect.
pub(crate) fn to_v2(name: &str, schema: &Value) -> Value {
    match name {
        INT_OR_STRING => {
            let mut m = Map::new();
            copy_description(schema, &mut m);
            m.insert("type".into(), "string".into());
            m.insert("format".into(), "int-or-string".into());
            return Value::Object(m);
        }
        QUANTITY => {
            let mut m = Map::new();
            copy_description(schema, &mut m);
            m.insert("type".into(), "string".into());
            return Value::Object(m);
        }
        _ => {}
    }
    let mut out = schema.clone();
    walk_mut(&mut out, &mut |s| {
        let Some(o) = s.as_object_mut() else { return };
        o.remove("nullable");
        o.remove("oneOf");
        o.remove("anyOf");
        if let Some(Value::Array(types)) = o.get("type") {
            let t = types.iter().find(|t| t.as_str() != Some("null")).cloned();
            match t {
                Some(t) => o.insert("type".into(), t),
                None => o.remove("type"),
            };
        }
    });
    out
}

/// Converts a neutral definition to the OpenAPI 3.0 dialect: refs under
/// `#/components/schemas/`, and a `$ref` with siblings wrapped as `allOf: [{$ref}]`.
pub(crate) fn to_v3(name: &str, schema: &Value) -> Value {
    if name == QUANTITY {
        let mut m = Map::new();
        copy_description(schema, &mut m);
        return Value::Object(m);
    }
    let mut out = schema.clone();
    walk_mut(&mut out, &mut |s| {
        let Some(o) = s.as_object_mut() else { return };
        let Some(Value::String(r)) = o.remove("$ref") else {
            return;
        };
        let r = match r.strip_prefix(REF_V2) {
            Some(n) => format!("{REF_V3}{n}"),
            None => r,
        };
        if o.is_empty() {
            o.insert("$ref".into(), r.into());
        } else {
            o.insert("allOf".into(), json!([{ "$ref": r }]));
        }
    });
    out
}

fn copy_description(from: &Value, to: &mut Map<String, Value>) {
    if let Some(d) = from.get("description") {
        to.insert("description".into(), d.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v3_wraps_ref_with_siblings_in_all_of() {
        let s = json!({"properties": {"a": {"$ref": "#/definitions/X", "description": "d"},
                                      "b": {"$ref": "#/definitions/Y"}}});
        let v3 = to_v3("T", &s);
        assert_eq!(
            v3["properties"]["a"]["allOf"][0]["$ref"],
            "#/components/schemas/X"
        );
        assert_eq!(v3["properties"]["a"]["description"], "d");
        assert_eq!(
            v3["properties"]["b"],
            json!({"$ref": "#/components/schemas/Y"})
        );
    }

    #[test]
    fn v2_int_or_string_is_string_with_format() {
        let v2 = to_v2(
            INT_OR_STRING,
            &json!({"description": "x", "x-kubernetes-int-or-string": true}),
        );
        assert_eq!(
            v2,
            json!({"description": "x", "type": "string", "format": "int-or-string"})
        );
    }

    #[test]
    fn neutralize_keeps_properties_named_like_keywords() {
        let mut s = json!({"oneOf": [{"type": "boolean"}],
                           "properties": {"oneOf": {"type": "array"}}});
        neutralize(&mut s);
        assert!(s.get("oneOf").is_none());
        assert_eq!(s["properties"]["oneOf"]["type"], "array");
    }
}
