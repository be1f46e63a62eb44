//! CRD → resources, and validation of CRD objects (upstream's
//! `pkg/apis/apiextensions/validation` and `pkg/apiserver/schema/validation.go`).

use rk3s_api::resource::compare_kube_versions;
use rk3s_api::{ResourceInfo, Scope, Subresource};
use rk3s_validation::{is_dns1035_label, is_dns1123_subdomain, FieldError};
use serde_json::Value;

use crate::util::{
    child, forbidden, go_repr, invalid, key, not_supported, required, str_at, strings_at,
};
use crate::CrdError;

/// Verbs of a custom resource, in the order upstream's CRD discovery lists them.
const VERBS: [&str; 8] = [
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "create",
    "update",
    "watch",
];
const SUB_VERBS: [&str; 3] = ["get", "patch", "update"];

fn versions(crd: &Value) -> &[Value] {
    crd.pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn version_obj<'a>(crd: &'a Value, version: &str) -> Option<&'a Value> {
    versions(crd)
        .iter()
        .find(|v| str_at(v, &["name"]) == version)
}

/// The per-version value of `field` (e.g. `subresources`), or the deprecated
/// top-level `spec.<field>`.
fn per_version<'a>(crd: &'a Value, version: &str, field: &str) -> Option<&'a Value> {
    version_obj(crd, version)
        .and_then(|v| v.get(field))
        .or_else(|| crd.get("spec").and_then(|s| s.get(field)))
}

/// Names of the served versions, in upstream's discovery order (kube-aware
/// version priority: v2 > v1 > v1beta1 > v1alpha1 > other).
pub fn served_versions(crd: &Value) -> Vec<String> {
    let mut out: Vec<String> = versions(crd)
        .iter()
        .filter(|v| v.get("served").and_then(Value::as_bool).unwrap_or(false))
        .map(|v| str_at(v, &["name"]).to_string())
        .filter(|n| !n.is_empty())
        .collect();
    out.sort_by(|a, b| compare_kube_versions(a, b));
    out
}

/// The name of the storage version.
pub fn storage_version(crd: &Value) -> Option<String> {
    versions(crd)
        .iter()
        .find(|v| v.get("storage").and_then(Value::as_bool).unwrap_or(false))
        .map(|v| str_at(v, &["name"]).to_string())
}

/// The CRD's served versions as resources (one per served version), ordered by
/// kube-aware version priority; the first is the preferred version. Names come
/// from `status.acceptedNames` when set (what the naming controller accepted),
/// else from `spec.names`.
pub fn resources_of(crd: &Value) -> Result<Vec<ResourceInfo>, CrdError> {
    let group = str_at(crd, &["spec", "group"]).to_string();
    if group.is_empty() {
        return Err(CrdError::Invalid("spec.group is missing".into()));
    }
    let names = match crd.pointer("/status/acceptedNames") {
        Some(n) if !str_at(n, &["plural"]).is_empty() && !str_at(n, &["kind"]).is_empty() => n,
        _ => crd
            .pointer("/spec/names")
            .ok_or_else(|| CrdError::Invalid("spec.names is missing".into()))?,
    };
    let plural = str_at(names, &["plural"]).to_string();
    let kind = str_at(names, &["kind"]).to_string();
    if plural.is_empty() || kind.is_empty() {
        return Err(CrdError::Invalid(
            "spec.names.plural and spec.names.kind are required".into(),
        ));
    }
    let singular = match str_at(names, &["singular"]) {
        "" => kind.to_ascii_lowercase(),
        s => s.to_string(),
    };
    let scope = match str_at(crd, &["spec", "scope"]) {
        "Cluster" => Scope::Cluster,
        "Namespaced" => Scope::Namespaced,
        other => return Err(CrdError::Invalid(format!("unknown scope {other:?}"))),
    };
    let served = served_versions(crd);
    let mut out = Vec::new();
    for (i, version) in served.iter().enumerate() {
        let mut subresources = Vec::new();
        if let Some(sub) = per_version(crd, version, "subresources") {
            let verbs: Vec<String> = SUB_VERBS.iter().map(|s| s.to_string()).collect();
            if sub.get("status").is_some_and(|s| !s.is_null()) {
                subresources.push(Subresource {
                    name: "status".into(),
                    kind: kind.clone(),
                    group: String::new(),
                    version: String::new(),
                    verbs: verbs.clone(),
                });
            }
            if sub.get("scale").is_some_and(|s| !s.is_null()) {
                subresources.push(Subresource {
                    name: "scale".into(),
                    kind: "Scale".into(),
                    group: "autoscaling".into(),
                    version: "v1".into(),
                    verbs,
                });
            }
        }
        out.push(ResourceInfo {
            group: group.clone(),
            version: version.clone(),
            kind: kind.clone(),
            plural: plural.clone(),
            singular: singular.clone(),
            short_names: strings_at(names, &["shortNames"]),
            categories: strings_at(names, &["categories"]),
            scope,
            verbs: VERBS.iter().map(|s| s.to_string()).collect(),
            subresources,
            definition: String::new(),
            storage_group: group.clone(),
            preferred: i == 0,
        });
    }
    Ok(out)
}

/// The scale subresource of a version: where the replicas and selector live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScaleSpec {
    /// JSON path of the desired replicas, e.g. `.spec.replicas`.
    pub spec_replicas_path: String,
    /// JSON path of the observed replicas, e.g. `.status.replicas`.
    pub status_replicas_path: String,
    /// JSON path of the label selector string, e.g. `.status.labelSelector`.
    pub label_selector_path: Option<String>,
}

/// The scale subresource of `version`, if it has one.
pub fn scale_spec(crd: &Value, version: &str) -> Option<ScaleSpec> {
    let scale = per_version(crd, version, "subresources")?.get("scale")?;
    if !scale.is_object() {
        return None;
    }
    Some(ScaleSpec {
        spec_replicas_path: str_at(scale, &["specReplicasPath"]).to_string(),
        status_replicas_path: str_at(scale, &["statusReplicasPath"]).to_string(),
        label_selector_path: scale
            .get("labelSelectorPath")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

/// Validates a CRD on create (`old` = None) or update, with upstream's field
/// paths and messages.
pub fn validate_crd(crd: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let spec = crd.get("spec").unwrap_or(&Value::Null);
    let group = str_at(spec, &["group"]);
    let plural = str_at(spec, &["names", "plural"]);
    let name = str_at(crd, &["metadata", "name"]);
    if name != format!("{plural}.{group}") {
        errs.push(invalid(
            "metadata.name",
            Value::from(name),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }

    // group
    if group.is_empty() {
        errs.push(required("spec.group", ""));
    } else {
        let msgs = is_dns1123_subdomain(group);
        if !msgs.is_empty() {
            errs.push(invalid("spec.group", Value::from(group), msgs.join(",")));
        }
        if group.split('.').count() < 2 {
            errs.push(invalid(
                "spec.group",
                Value::from(group),
                "should be a domain with at least one dot",
            ));
        }
    }

    // scope
    match str_at(spec, &["scope"]) {
        "" => errs.push(required("spec.scope", "")),
        "Cluster" | "Namespaced" => {}
        other => errs.push(not_supported(
            "spec.scope",
            Value::from(other),
            &["Cluster", "Namespaced"],
        )),
    }

    // versions
    let vs = versions(crd);
    let mut storage = 0;
    let mut seen = std::collections::HashSet::new();
    let mut unique = true;
    for (i, v) in vs.iter().enumerate() {
        let vp = format!("spec.versions[{i}]");
        let vname = str_at(v, &["name"]);
        if v.get("storage").and_then(Value::as_bool).unwrap_or(false) {
            storage += 1;
        }
        if !seen.insert(vname) {
            unique = false;
        }
        let msgs = is_dns1035_label(vname);
        if !msgs.is_empty() {
            errs.push(invalid(
                &child(&vp, "name"),
                Value::from(vname),
                msgs.join(","),
            ));
        }
        validate_version_schema(crd, v, &vp, &mut errs);
        if let Some(sub) = v.get("subresources") {
            validate_subresources(sub, &child(&vp, "subresources"), &mut errs);
        }
        if let Some(Value::Array(cols)) = v.get("additionalPrinterColumns") {
            validate_columns(cols, &child(&vp, "additionalPrinterColumns"), &mut errs);
        }
    }
    let versions_repr = || {
        go_repr(format!(
            "[]apiextensions.CustomResourceDefinitionVersion{{/* {} versions */}}",
            vs.len()
        ))
    };
    if !unique {
        errs.push(invalid(
            "spec.versions",
            versions_repr(),
            "must contain unique version names",
        ));
    }
    if storage != 1 {
        errs.push(invalid(
            "spec.versions",
            versions_repr(),
            "must have exactly one version marked as storage version",
        ));
    }

    validate_names(
        spec.get("names").unwrap_or(&Value::Null),
        "spec.names",
        &mut errs,
    );

    if let Some(old) = old {
        let old_scope = str_at(old, &["spec", "scope"]);
        let scope = str_at(spec, &["scope"]);
        if !old_scope.is_empty() && scope != old_scope {
            errs.push(invalid(
                "spec.scope",
                Value::from(scope),
                "field is immutable",
            ));
        }
        let names: Vec<&str> = vs.iter().map(|v| str_at(v, &["name"])).collect();
        for (i, sv) in strings_at(old, &["status", "storedVersions"])
            .iter()
            .enumerate()
        {
            if !names.contains(&sv.as_str()) {
                errs.push(invalid(
                    &format!("status.storedVersions[{i}]"),
                    Value::from(sv.as_str()),
                    "must appear in spec.versions",
                ));
            }
        }
    }
    errs
}

fn validate_names(names: &Value, path: &str, errs: &mut Vec<FieldError>) {
    for f in ["plural", "singular", "kind", "listKind"] {
        if str_at(names, &[f]).is_empty() {
            errs.push(required(&child(path, f), ""));
        }
    }
    for f in ["plural", "singular"] {
        let v = str_at(names, &[f]);
        let msgs = is_dns1035_label(v);
        if !v.is_empty() && !msgs.is_empty() {
            errs.push(invalid(&child(path, f), Value::from(v), msgs.join(",")));
        }
    }
    for f in ["kind", "listKind"] {
        let v = str_at(names, &[f]);
        let msgs = is_dns1035_label(&v.to_ascii_lowercase());
        if !v.is_empty() && !msgs.is_empty() {
            errs.push(invalid(
                &child(path, f),
                Value::from(v),
                format!(
                    "may have mixed case, but should otherwise match: {}",
                    msgs.join(",")
                ),
            ));
        }
    }
    let kind = str_at(names, &["kind"]);
    let list_kind = str_at(names, &["listKind"]);
    if !kind.is_empty() && kind == list_kind {
        errs.push(invalid(
            &child(path, "listKind"),
            Value::from(list_kind),
            "kind and listKind may not be the same",
        ));
    }
    for f in ["shortNames", "categories"] {
        for (i, s) in strings_at(names, &[f]).iter().enumerate() {
            let msgs = is_dns1035_label(s);
            if !msgs.is_empty() {
                errs.push(invalid(
                    &format!("{path}.{f}[{i}]"),
                    Value::from(s.as_str()),
                    msgs.join(","),
                ));
            }
        }
    }
}

fn validate_version_schema(crd: &Value, v: &Value, vp: &str, errs: &mut Vec<FieldError>) {
    let sp = format!("{vp}.schema.openAPIV3Schema");
    let schema = v
        .pointer("/schema/openAPIV3Schema")
        .or_else(|| crd.pointer("/spec/validation/openAPIV3Schema"));
    let Some(schema) = schema.filter(|s| !s.is_null()) else {
        errs.push(required(&sp, "schemas are required"));
        return;
    };
    let mut structural = Vec::new();
    validate_structural(schema, Level::Root, &sp, &mut structural);
    structural.sort_by_key(|e| e.to_string());
    if structural.is_empty() {
        validate_defaults(schema, &sp, errs);
    }
    errs.extend(structural);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Root,
    Item,
    Field,
}

const TYPES: [&str; 6] = ["array", "boolean", "integer", "number", "object", "string"];

/// Structural schema invariants plus the API-level schema checks.
fn validate_structural(s: &Value, lvl: Level, path: &str, errs: &mut Vec<FieldError>) {
    let Some(m) = s.as_object() else {
        errs.push(invalid(path, s.clone(), "must be an object"));
        return;
    };
    let ty = m.get("type").and_then(Value::as_str).unwrap_or("");
    let flag = |k: &str| m.get(k).and_then(Value::as_bool).unwrap_or(false);
    let preserve = flag("x-kubernetes-preserve-unknown-fields");
    let embedded = flag("x-kubernetes-embedded-resource");
    let int_or_string = flag("x-kubernetes-int-or-string");
    if !ty.is_empty() && !TYPES.contains(&ty) {
        errs.push(not_supported(&child(path, "type"), Value::from(ty), &TYPES));
    }
    if m.contains_key("$ref") {
        errs.push(forbidden(&child(path, "$ref"), "$ref is not supported"));
    }
    if m.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(false)) {
        errs.push(invalid(
            &child(path, "x-kubernetes-preserve-unknown-fields"),
            Value::Bool(false),
            "must be true or undefined",
        ));
    }
    if flag("uniqueItems") {
        errs.push(forbidden(
            &child(path, "uniqueItems"),
            "uniqueItems cannot be set to true since the runtime complexity becomes quadratic",
        ));
    }
    if ty == "array" && !m.contains_key("items") {
        errs.push(required(&child(path, "items"), "must be specified"));
    }
    if let Some(items) = m.get("items") {
        validate_structural(items, Level::Item, &child(path, "items"), errs);
    }
    let props = m.get("properties").and_then(Value::as_object);
    if let Some(p) = props {
        for (k, v) in p {
            validate_structural(v, Level::Field, &key(&child(path, "properties"), k), errs);
        }
    }
    if let Some(a) = m.get("additionalProperties") {
        if lvl == Level::Root {
            errs.push(forbidden(
                &child(path, "additionalProperties"),
                "must not be used at the root",
            ));
        }
        if props.is_some_and(|p| !p.is_empty()) && a != &Value::Bool(true) {
            errs.push(forbidden(
                &child(path, "additionalProperties"),
                "additionalProperties and properties are mutual exclusive",
            ));
        }
        if a.is_object() {
            validate_structural(a, Level::Field, &child(path, "additionalProperties"), errs);
        }
        if embedded {
            errs.push(forbidden(
                &child(path, "additionalProperties"),
                "must not be used if x-kubernetes-embedded-resource is set",
            ));
        }
    }
    if int_or_string && preserve {
        errs.push(invalid(
            &child(path, "x-kubernetes-preserve-unknown-fields"),
            Value::Bool(true),
            "must be false if x-kubernetes-int-or-string is true",
        ));
    }
    if int_or_string && embedded {
        errs.push(invalid(
            &child(path, "x-kubernetes-embedded-resource"),
            Value::Bool(true),
            "must be false if x-kubernetes-int-or-string is true",
        ));
    }
    if embedded && ty != "object" {
        if ty.is_empty() {
            errs.push(required(
                &child(path, "type"),
                "must be object if x-kubernetes-embedded-resource is true",
            ));
        } else {
            errs.push(invalid(
                &child(path, "type"),
                Value::from(ty),
                "must be object if x-kubernetes-embedded-resource is true",
            ));
        }
    } else if ty.is_empty() && !int_or_string && !preserve {
        let detail = match lvl {
            Level::Root => "must not be empty at the root",
            Level::Item => "must not be empty for specified array items",
            Level::Field => "must not be empty for specified object fields",
        };
        errs.push(required(&child(path, "type"), detail));
    }
    if lvl == Level::Root && !ty.is_empty() && ty != "object" {
        errs.push(invalid(
            &child(path, "type"),
            Value::from(ty),
            "must be object at the root",
        ));
    }
    let check_meta = lvl == Level::Root || embedded;
    if let Some(p) = props.filter(|_| check_meta) {
        for f in ["kind", "apiVersion"] {
            if let Some(fs) = p.get(f) {
                let t = str_at(fs, &["type"]);
                if t != "string" {
                    errs.push(invalid(
                        &child(&key(&child(path, "properties"), f), "type"),
                        Value::from(t),
                        "must be string",
                    ));
                }
            }
        }
    }
    if let Some(md) = props.and_then(|p| p.get("metadata")) {
        let mp = key(&child(path, "properties"), "metadata");
        if check_meta && str_at(md, &["type"]) != "object" {
            errs.push(invalid(
                &child(&mp, "type"),
                Value::from(str_at(md, &["type"])),
                "must be object",
            ));
        }
        if lvl == Level::Root {
            let allowed = md.as_object().is_none_or(|mm| {
                mm.iter().all(|(k, v)| match k.as_str() {
                    "type" | "description" => true,
                    "properties" => v
                        .as_object()
                        .is_none_or(|pp| pp.keys().all(|n| n == "name" || n == "generateName")),
                    _ => false,
                })
            });
            if !allowed {
                errs.push(forbidden(
                    &mp,
                    "must not specify anything other than name and generateName, but metadata is implicitly specified",
                ));
            }
        }
    }
    if embedded && !preserve && props.is_none_or(|p| p.is_empty()) {
        errs.push(required(
            &child(path, "properties"),
            "must not be empty if x-kubernetes-embedded-resource is true without x-kubernetes-preserve-unknown-fields",
        ));
    }
    if let Some(p) = m.get("pattern").and_then(Value::as_str) {
        if let Err(e) = regex_automata::meta::Regex::new(p) {
            errs.push(invalid(
                &child(path, "pattern"),
                Value::from(p),
                format!("must be a valid regular expression, but isn't: {e}"),
            ));
        }
    }
    match m.get("x-kubernetes-list-type").and_then(Value::as_str) {
        None | Some("atomic") | Some("set") => {}
        Some("map") => {
            if strings_at(s, &["x-kubernetes-list-map-keys"]).is_empty() {
                errs.push(required(
                    &child(path, "x-kubernetes-list-map-keys"),
                    "must not be empty if x-kubernetes-list-type is map",
                ));
            }
        }
        Some(other) => errs.push(not_supported(
            &child(path, "x-kubernetes-list-type"),
            Value::from(other),
            &["atomic", "set", "map"],
        )),
    }
}

/// Every `default` must validate against its own schema (after pruning).
fn validate_defaults(s: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let Some(m) = s.as_object() else { return };
    if let Some(d) = m.get("default") {
        if let Ok(sub) = crate::Schema::new(s.clone()) {
            let mut d = d.clone();
            let _ = sub.prune(&mut d);
            for e in sub.validate(&d) {
                let field = if e.field.is_empty() {
                    "default".to_string()
                } else {
                    format!("default.{}", e.field)
                };
                let detail = e.detail.replacen(&e.field, &field, 1);
                errs.push(FieldError {
                    field: child(path, &field),
                    detail,
                    ..e
                });
            }
        }
    }
    if let Some(items) = m.get("items") {
        validate_defaults(items, &child(path, "items"), errs);
    }
    if let Some(Value::Object(p)) = m.get("properties") {
        for (k, v) in p {
            validate_defaults(v, &key(&child(path, "properties"), k), errs);
        }
    }
    if let Some(a) = m.get("additionalProperties").filter(|a| a.is_object()) {
        validate_defaults(a, &child(path, "additionalProperties"), errs);
    }
}

/// Checks a simple JSON path: `.a.b` (dot-separated non-empty names).
fn is_simple_json_path(p: &str) -> bool {
    crate::JsonPath::parse(p).is_ok()
}

fn validate_subresources(sub: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let Some(scale) = sub.get("scale").filter(|s| s.is_object()) else {
        return;
    };
    let sp = child(path, "scale");
    let spec_path = str_at(scale, &["specReplicasPath"]);
    if spec_path.is_empty() {
        errs.push(required(&child(&sp, "specReplicasPath"), ""));
    } else if !is_simple_json_path(spec_path) {
        errs.push(invalid(
            &child(&sp, "specReplicasPath"),
            Value::from(spec_path),
            "must be a valid JSON path",
        ));
    } else if !spec_path.starts_with(".spec.") {
        errs.push(invalid(
            &child(&sp, "specReplicasPath"),
            Value::from(spec_path),
            "should be a json path under .spec",
        ));
    }
    let status_path = str_at(scale, &["statusReplicasPath"]);
    if status_path.is_empty() {
        errs.push(required(&child(&sp, "statusReplicasPath"), ""));
    } else if !is_simple_json_path(status_path) {
        errs.push(invalid(
            &child(&sp, "statusReplicasPath"),
            Value::from(status_path),
            "must be a valid JSON path",
        ));
    } else if !status_path.starts_with(".status.") {
        errs.push(invalid(
            &child(&sp, "statusReplicasPath"),
            Value::from(status_path),
            "should be a json path under .status",
        ));
    }
    if let Some(sel) = scale.get("labelSelectorPath").and_then(Value::as_str) {
        if !is_simple_json_path(sel) {
            errs.push(invalid(
                &child(&sp, "labelSelectorPath"),
                Value::from(sel),
                "must be a valid JSON path",
            ));
        } else if !sel.starts_with(".spec.") && !sel.starts_with(".status.") {
            errs.push(invalid(
                &child(&sp, "labelSelectorPath"),
                Value::from(sel),
                "should be a json path under either .spec or .status",
            ));
        }
    }
}

fn validate_columns(cols: &[Value], path: &str, errs: &mut Vec<FieldError>) {
    for (i, c) in cols.iter().enumerate() {
        let cp = format!("{path}[{i}]");
        if str_at(c, &["name"]).is_empty() {
            errs.push(required(&child(&cp, "name"), ""));
        }
        match str_at(c, &["type"]) {
            "" => errs.push(required(&child(&cp, "type"), "")),
            "integer" | "number" | "string" | "boolean" | "date" => {}
            t => errs.push(not_supported(
                &child(&cp, "type"),
                Value::from(t),
                &["integer", "number", "string", "boolean", "date"],
            )),
        }
        match str_at(c, &["format"]) {
            "" | "int32" | "int64" | "float" | "double" | "byte" | "date" | "date-time"
            | "password" => {}
            f => errs.push(not_supported(
                &child(&cp, "format"),
                Value::from(f),
                &[
                    "int32",
                    "int64",
                    "float",
                    "double",
                    "byte",
                    "date",
                    "date-time",
                    "password",
                ],
            )),
        }
        let jp = str_at(c, &["jsonPath"]);
        if jp.is_empty() {
            errs.push(required(&child(&cp, "jsonPath"), ""));
        } else if crate::JsonPath::parse(jp).is_err() {
            errs.push(invalid(
                &child(&cp, "jsonPath"),
                Value::from(jp),
                "must be a simple json path",
            ));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// The CronTab CRD used across the crate's tests.
    pub(crate) fn crontab_crd() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "crontabs.stable.example.com"},
            "spec": {
                "group": "stable.example.com",
                "scope": "Namespaced",
                "names": {
                    "plural": "crontabs", "singular": "crontab", "kind": "CronTab",
                    "listKind": "CronTabList", "shortNames": ["ct"], "categories": ["all"]
                },
                "versions": [
                    {
                        "name": "v1", "served": true, "storage": true,
                        "schema": {"openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["cronSpec"],
                                    "properties": {
                                        "cronSpec": {"type": "string", "pattern": r"^(\d+|\*)(/\d+)?(\s+(\d+|\*)(/\d+)?){4}$"},
                                        "image": {"type": "string", "enum": ["nginx", "busybox"]},
                                        "replicas": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1},
                                        "port": {"x-kubernetes-int-or-string": true},
                                        "template": {"type": "object", "x-kubernetes-embedded-resource": true, "x-kubernetes-preserve-unknown-fields": true},
                                        "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                                        "ports": {
                                            "type": "array",
                                            "x-kubernetes-list-type": "map",
                                            "x-kubernetes-list-map-keys": ["name"],
                                            "items": {
                                                "type": "object", "required": ["name"],
                                                "properties": {"name": {"type": "string"}, "port": {"type": "integer", "default": 80}}
                                            }
                                        },
                                        "tags": {"type": "array", "maxItems": 3, "x-kubernetes-list-type": "set", "items": {"type": "string"}},
                                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                        "when": {"type": "string", "format": "date-time"},
                                        "policy": {
                                            "type": "object",
                                            "properties": {"mode": {"type": "string"}},
                                            "default": {"mode": "Allow", "junk": 1}
                                        }
                                    }
                                },
                                "status": {
                                    "type": "object",
                                    "properties": {"replicas": {"type": "integer"}, "labelSelector": {"type": "string"}}
                                }
                            }
                        }},
                        "subresources": {
                            "status": {},
                            "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas", "labelSelectorPath": ".status.labelSelector"}
                        },
                        "additionalPrinterColumns": [
                            {"name": "Spec", "type": "string", "jsonPath": ".spec.cronSpec"},
                            {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
                            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
                        ]
                    },
                    {
                        "name": "v1beta1", "served": true, "storage": false,
                        "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}
                    },
                    {
                        "name": "v2", "served": false, "storage": false,
                        "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}
                    }
                ]
            }
        })
    }

    fn msgs(errs: &[FieldError]) -> Vec<String> {
        errs.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn resources_of_crontab() {
        let rs = resources_of(&crontab_crd()).expect("resources");
        assert_eq!(rs.len(), 2, "v2 is not served");
        let v1 = &rs[0];
        assert_eq!((v1.version.as_str(), v1.preferred), ("v1", true));
        assert_eq!(
            (rs[1].version.as_str(), rs[1].preferred),
            ("v1beta1", false)
        );
        assert_eq!(v1.api_version(), "stable.example.com/v1");
        assert_eq!(v1.kind, "CronTab");
        assert_eq!(v1.singular, "crontab");
        assert_eq!(v1.short_names, vec!["ct"]);
        assert_eq!(v1.categories, vec!["all"]);
        assert_eq!(v1.scope, Scope::Namespaced);
        assert_eq!(v1.verbs.len(), 8);
        assert_eq!(
            v1.key(Some("ns"), "c"),
            "/registry/stable.example.com/crontabs/ns/c"
        );
        let scale = v1.subresource("scale").expect("scale");
        assert_eq!(
            (
                scale.kind.as_str(),
                scale.group.as_str(),
                scale.version.as_str()
            ),
            ("Scale", "autoscaling", "v1")
        );
        assert_eq!(
            v1.subresource("status").map(|s| s.kind.clone()).as_deref(),
            Some("CronTab")
        );
        assert!(rs[1].subresources.is_empty(), "v1beta1 has no subresources");
        assert_eq!(v1.definition, "");
    }

    #[test]
    fn preferred_follows_kube_version_priority() {
        let mut crd = crontab_crd();
        crd["spec"]["versions"][2]["served"] = json!(true);
        let rs = resources_of(&crd).expect("resources");
        let vs: Vec<(&str, bool)> = rs
            .iter()
            .map(|r| (r.version.as_str(), r.preferred))
            .collect();
        assert_eq!(vs, vec![("v2", true), ("v1", false), ("v1beta1", false)]);
    }

    #[test]
    fn scale_spec_of_version() {
        let s = scale_spec(&crontab_crd(), "v1").expect("scale");
        assert_eq!(s.spec_replicas_path, ".spec.replicas");
        assert_eq!(s.status_replicas_path, ".status.replicas");
        assert_eq!(
            s.label_selector_path.as_deref(),
            Some(".status.labelSelector")
        );
        assert!(scale_spec(&crontab_crd(), "v1beta1").is_none());
    }

    #[test]
    fn valid_crd_passes() {
        let errs = validate_crd(&crontab_crd(), None);
        assert!(errs.is_empty(), "{:?}", msgs(&errs));
    }

    #[test]
    fn missing_schema_and_storage_versions() {
        let mut crd = crontab_crd();
        crd["spec"]["versions"][1]["schema"] = json!(null);
        crd["spec"]["versions"][1]["storage"] = json!(true);
        let m = msgs(&validate_crd(&crd, None));
        assert!(
            m.contains(
                &"spec.versions[1].schema.openAPIV3Schema: Required value: schemas are required"
                    .to_string()
            ),
            "{m:?}"
        );
        assert!(
            m.iter()
                .any(|e| e.starts_with("spec.versions: Invalid value: ")
                    && e.ends_with(": must have exactly one version marked as storage version")),
            "{m:?}"
        );
        crd["spec"]["versions"][1]["schema"] = json!({"openAPIV3Schema": {"properties": {"spec": {"properties": {"x": {"type": "array"}}}}}});
        let m = msgs(&validate_crd(&crd, None));
        for want in [
            "spec.versions[1].schema.openAPIV3Schema.type: Required value: must not be empty at the root",
            "spec.versions[1].schema.openAPIV3Schema.properties[spec].type: Required value: must not be empty for specified object fields",
            "spec.versions[1].schema.openAPIV3Schema.properties[spec].properties[x].items: Required value: must be specified",
        ] {
            assert!(m.contains(&want.to_string()), "{want} not in {m:?}");
        }
    }

    #[test]
    fn bad_names() {
        let mut crd = crontab_crd();
        crd["metadata"]["name"] = json!("crontab.stable.example.com");
        crd["spec"]["group"] = json!("example");
        crd["spec"]["names"]["kind"] = json!("Cron_Tab");
        crd["spec"]["names"]["listKind"] = json!("Cron_Tab");
        crd["spec"]["names"]["singular"] = json!("");
        crd["spec"]["scope"] = json!("Global");
        let m = msgs(&validate_crd(&crd, None));
        for want in [
            r#"metadata.name: Invalid value: "crontab.stable.example.com": must be spec.names.plural+"."+spec.group"#,
            r#"spec.group: Invalid value: "example": should be a domain with at least one dot"#,
            r#"spec.scope: Unsupported value: "Global": supported values: "Cluster", "Namespaced""#,
            "spec.names.singular: Required value",
            r#"spec.names.listKind: Invalid value: "Cron_Tab": kind and listKind may not be the same"#,
        ] {
            assert!(m.contains(&want.to_string()), "{want} not in {m:?}");
        }
        assert!(m.iter().any(|e| e.starts_with(r#"spec.names.kind: Invalid value: "Cron_Tab": may have mixed case, but should otherwise match: "#)), "{m:?}");
    }

    #[test]
    fn structural_and_default_rules() {
        let mut crd = crontab_crd();
        let p = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"];
        p["replicas"]["default"] = json!(11);
        p["labels"]["properties"] = json!({"a": {"type": "string"}});
        p["bad"] = json!({"type": "string", "x-kubernetes-preserve-unknown-fields": false, "pattern": "("});
        let m = msgs(&validate_crd(&crd, None));
        let base = "spec.versions[0].schema.openAPIV3Schema.properties[spec].properties";
        assert!(m.contains(&format!("{base}[labels].additionalProperties: Forbidden: additionalProperties and properties are mutual exclusive")), "{m:?}");
        assert!(m.contains(&format!("{base}[bad].x-kubernetes-preserve-unknown-fields: Invalid value: false: must be true or undefined")), "{m:?}");
        assert!(m.iter().any(|e| e.starts_with(&format!("{base}[bad].pattern: Invalid value: \"(\": must be a valid regular expression, but isn't: "))), "{m:?}");
        // defaults are checked once the schema is structural
        let mut crd = crontab_crd();
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["replicas"]["default"] = json!(11);
        let m = msgs(&validate_crd(&crd, None));
        assert_eq!(m, vec![format!("{base}[replicas].default: Invalid value: 11: default in body should be less than or equal to 10")]);
    }

    #[test]
    fn update_rules() {
        let mut old = crontab_crd();
        old["status"] = json!({"storedVersions": ["v1", "v1alpha1"]});
        let mut new = crontab_crd();
        new["spec"]["scope"] = json!("Cluster");
        let m = msgs(&validate_crd(&new, Some(&old)));
        assert_eq!(
            m,
            vec![
                r#"spec.scope: Invalid value: "Cluster": field is immutable"#,
                r#"status.storedVersions[1]: Invalid value: "v1alpha1": must appear in spec.versions"#
            ]
        );
    }

    #[test]
    fn subresource_and_column_rules() {
        let mut crd = crontab_crd();
        crd["spec"]["versions"][0]["subresources"]["scale"]["specReplicasPath"] =
            json!(".status.replicas");
        crd["spec"]["versions"][0]["additionalPrinterColumns"][0]["type"] = json!("text");
        let m = msgs(&validate_crd(&crd, None));
        assert_eq!(
            m,
            vec![
                r#"spec.versions[0].subresources.scale.specReplicasPath: Invalid value: ".status.replicas": should be a json path under .spec"#,
                r#"spec.versions[0].additionalPrinterColumns[0].type: Unsupported value: "text": supported values: "integer", "number", "string", "boolean", "date""#,
            ]
        );
    }
}
