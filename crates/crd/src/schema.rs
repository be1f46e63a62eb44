//! A version's structural schema: pruning, defaulting and value validation of
//! custom objects, as upstream's `pkg/apiserver/schema` (pruning, defaulting,
//! objectmeta, listtype) and `pkg/apiserver/validation` (go-openapi messages).

use std::collections::HashMap;

use regex_automata::meta::Regex;
use rk3s_validation::{ErrorKind, FieldError};
use serde_json::{Map, Value};

use crate::util::{err, go_float, go_number, go_quote, go_repr, invalid, required, type_name};
use crate::CrdError;

/// The compiled structural schema (`openAPIV3Schema`) of one CRD version.
#[derive(Clone, Debug)]
pub struct Schema {
    root: Value,
    patterns: HashMap<String, Regex>,
}

/// The ObjectMeta fields kept in the metadata of embedded resources.
const OBJECT_META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

fn flag(s: &Value, name: &str) -> bool {
    s.get(name).and_then(Value::as_bool).unwrap_or(false)
}

fn props(s: &Value) -> Option<&Map<String, Value>> {
    s.get("properties").and_then(Value::as_object)
}

fn stype(s: &Value) -> &str {
    s.get("type").and_then(Value::as_str).unwrap_or("")
}

/// The schema of `additionalProperties` (`Some(schema)`), or `None` when it is
/// absent/false; `additionalProperties: true` yields an empty schema.
fn additional(s: &Value) -> Option<&Value> {
    match s.get("additionalProperties") {
        Some(Value::Object(_)) => s.get("additionalProperties"),
        Some(Value::Bool(true)) => Some(&EMPTY),
        _ => None,
    }
}

static EMPTY: Value = Value::Null;

fn preserve(s: &Value) -> bool {
    flag(s, "x-kubernetes-preserve-unknown-fields")
}

fn index(path: &str, i: usize) -> String {
    format!("{}[{}]", path, i)
}

fn child(path: &str, k: &str) -> String {
    crate::util::child(path, k)
}

fn collect_patterns(s: &Value, out: &mut HashMap<String, Regex>) -> Result<(), CrdError> {
    match s {
        Value::Object(m) => {
            if let Some(Value::String(p)) = m.get("pattern") {
                if !out.contains_key(p) {
                    let re = Regex::new(p).map_err(|e| CrdError::BadPattern {
                        pattern: p.clone(),
                        message: e.to_string(),
                    })?;
                    out.insert(p.clone(), re);
                }
            }
            for (k, v) in m {
                if matches!(k.as_str(), "default" | "enum" | "example") {
                    continue;
                }
                collect_patterns(v, out)?;
            }
            Ok(())
        }
        Value::Array(a) => a.iter().try_for_each(|x| collect_patterns(x, out)),
        _ => Ok(()),
    }
}

impl Schema {
    /// The schema of `version` of the CRD (`spec.versions[].schema.openAPIV3Schema`,
    /// or the deprecated top-level `spec.validation.openAPIV3Schema`).
    pub fn from_crd(crd: &Value, version: &str) -> Result<Schema, CrdError> {
        let versions = crd
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .ok_or_else(|| CrdError::Invalid("spec.versions is missing".into()))?;
        let v = versions
            .iter()
            .find(|v| v.get("name").and_then(Value::as_str) == Some(version))
            .ok_or_else(|| CrdError::VersionNotFound(version.to_string()))?;
        let root = v
            .pointer("/schema/openAPIV3Schema")
            .or_else(|| crd.pointer("/spec/validation/openAPIV3Schema"))
            .cloned()
            .ok_or_else(|| CrdError::Invalid(format!("version {version:?} has no schema")))?;
        Schema::new(root)
    }

    /// A schema from an `openAPIV3Schema` value.
    pub fn new(root: Value) -> Result<Schema, CrdError> {
        if !root.is_object() {
            return Err(CrdError::Invalid(
                "openAPIV3Schema must be an object".into(),
            ));
        }
        let mut patterns = HashMap::new();
        collect_patterns(&root, &mut patterns)?;
        Ok(Schema { root, patterns })
    }

    /// The raw `openAPIV3Schema`.
    pub fn raw(&self) -> &Value {
        &self.root
    }

    /// The schema node at a JSON path such as `.spec.replicas` (object properties
    /// and `additionalProperties` only), used for the scale/status subresources.
    pub fn at_path(&self, path: &str) -> Option<&Value> {
        let mut cur = &self.root;
        for part in path
            .trim_start_matches('.')
            .split('.')
            .filter(|p| !p.is_empty())
        {
            cur = match props(cur).and_then(|p| p.get(part)) {
                Some(s) => s,
                None => additional(cur).filter(|s| s.is_object())?,
            };
        }
        Some(cur)
    }

    /// Drops the fields the schema does not specify (unless
    /// `x-kubernetes-preserve-unknown-fields`), keeping `apiVersion`, `kind` and
    /// `metadata` of the root and of embedded resources; the metadata of embedded
    /// resources is cut down to ObjectMeta fields (the root's is the server's job).
    /// Returns the pruned paths (`spec.foo`, `spec.items[0].bar`), for the
    /// `unknown field "spec.foo"` messages of field validation.
    pub fn prune(&self, obj: &mut Value) -> Vec<String> {
        let mut pruned = Vec::new();
        prune(obj, Some(&self.root), true, "", &mut pruned);
        pruned
    }

    /// Applies the schema's `default`s: a property absent (or null while not
    /// nullable) gets a copy of its default (itself pruned), recursively,
    /// including inside array items and `additionalProperties`.
    pub fn apply_defaults(&self, obj: &mut Value) {
        default(obj, &self.root);
    }

    /// Whether [`Schema::apply_defaults`] can change anything: some property, item or
    /// `additionalProperties` schema has a `default`.
    pub fn has_defaults(&self) -> bool {
        has_defaults(&self.root)
    }

    /// Validates an object against the schema, with upstream's field errors.
    pub fn validate(&self, obj: &Value) -> Vec<FieldError> {
        let mut errs = Vec::new();
        self.validate_node(obj, &self.root, "", true, &mut errs);
        errs
    }

    fn validate_node(
        &self,
        x: &Value,
        s: &Value,
        path: &str,
        root: bool,
        errs: &mut Vec<FieldError>,
    ) {
        if !s.is_object() {
            return;
        }
        let int_or_string = flag(s, "x-kubernetes-int-or-string");
        let ty = stype(s);
        if x.is_null() {
            if flag(s, "nullable") {
                return;
            }
            if !ty.is_empty() {
                errs.push(type_error(path, ty, x));
                return;
            }
            if int_or_string {
                errs.push(type_error(path, "integer,string", x));
                return;
            }
        }
        if !ty.is_empty() && !type_matches(ty, x) {
            errs.push(type_error(path, ty, x));
            return;
        }
        if int_or_string && !(type_matches("integer", x) || x.is_string()) {
            errs.push(type_error(path, "integer,string", x));
            return;
        }
        if let Some(values) = s.get("enum").and_then(Value::as_array) {
            if !values.iter().any(|v| json_equal(v, x)) {
                let supported: Vec<String> = values
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect();
                let quoted: Vec<String> = supported.iter().map(|s| go_quote(s)).collect();
                errs.push(err(
                    ErrorKind::NotSupported,
                    path,
                    Some(x.clone()),
                    format!("supported values: {}", quoted.join(", ")),
                ));
            }
        }
        match x {
            Value::String(st) => self.validate_string(st, x, s, path, errs),
            Value::Number(n) => validate_number(n, x, s, path, errs),
            Value::Array(items) => self.validate_array(items, x, s, path, errs),
            Value::Object(m) => self.validate_object(m, s, path, root, errs),
            _ => {}
        }
        self.validate_junctors(x, s, path, root, errs);
    }

    fn validate_string(
        &self,
        st: &str,
        x: &Value,
        s: &Value,
        path: &str,
        errs: &mut Vec<FieldError>,
    ) {
        let len = st.chars().count() as u64;
        if let Some(max) = s.get("maxLength").and_then(Value::as_u64) {
            if len > max {
                errs.push(err(
                    ErrorKind::TooLong,
                    path,
                    Some(x.clone()),
                    format!("may not be more than {} bytes", max),
                ));
            }
        }
        if let Some(min) = s.get("minLength").and_then(Value::as_u64) {
            if len < min {
                errs.push(invalid(
                    path,
                    x.clone(),
                    format!("{} in body should be at least {} chars long", path, min),
                ));
            }
        }
        if let Some(p) = s.get("pattern").and_then(Value::as_str) {
            if let Some(re) = self.patterns.get(p) {
                if !re.is_match(st) {
                    errs.push(invalid(
                        path,
                        x.clone(),
                        format!("{} in body should match '{}'", path, p),
                    ));
                }
            }
        }
        if let Some(f) = s.get("format").and_then(Value::as_str) {
            if !format_ok(f, st) {
                errs.push(invalid(
                    path,
                    x.clone(),
                    format!("{} in body must be of type {}: {}", path, f, go_quote(st)),
                ));
            }
        }
    }

    fn validate_array(
        &self,
        items: &[Value],
        x: &Value,
        s: &Value,
        path: &str,
        errs: &mut Vec<FieldError>,
    ) {
        let n = items.len() as u64;
        if let Some(max) = s.get("maxItems").and_then(Value::as_u64) {
            if n > max {
                errs.push(err(
                    ErrorKind::TooMany,
                    path,
                    Some(Value::from(n)),
                    format!("must have at most {} items", max),
                ));
            }
        }
        if let Some(min) = s.get("minItems").and_then(Value::as_u64) {
            if n < min {
                errs.push(invalid(
                    path,
                    x.clone(),
                    format!("{} in body should have at least {} items", path, min),
                ));
            }
        }
        if flag(s, "uniqueItems") {
            let dup = items
                .iter()
                .enumerate()
                .any(|(i, a)| items[..i].iter().any(|b| json_equal(a, b)));
            if dup {
                errs.push(invalid(
                    path,
                    x.clone(),
                    format!("{} in body shouldn't contain duplicates", path),
                ));
            }
        }
        if let Some(is) = s.get("items") {
            for (i, it) in items.iter().enumerate() {
                self.validate_node(it, is, &index(path, i), false, errs);
            }
        }
        match s.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("set") => {
                for (i, a) in items.iter().enumerate() {
                    if items[..i].iter().any(|b| json_equal(a, b)) {
                        errs.push(err(
                            ErrorKind::Duplicate,
                            &index(path, i),
                            Some(a.clone()),
                            "",
                        ));
                    }
                }
            }
            Some("map") => {
                let keys: Vec<String> = crate::util::strings_at(s, &["x-kubernetes-list-map-keys"]);
                let key_of = |v: &Value| -> Vec<(String, Value)> {
                    keys.iter()
                        .map(|k| (k.clone(), v.get(k).cloned().unwrap_or(Value::Null)))
                        .collect()
                };
                for (i, a) in items.iter().enumerate() {
                    let ka = key_of(a);
                    if items[..i].iter().any(|b| key_of(b) == ka) {
                        let shown: Vec<String> = ka
                            .iter()
                            .filter(|(_, v)| !v.is_null())
                            .map(|(k, v)| format!("{}:{}", go_quote(k), go_plain(v)))
                            .collect();
                        let repr = format!("map[string]interface {{}}{{{}}}", shown.join(", "));
                        errs.push(err(
                            ErrorKind::Duplicate,
                            &index(path, i),
                            Some(go_repr(repr)),
                            "",
                        ));
                    }
                }
            }
            _ => {}
        }
    }

    fn validate_object(
        &self,
        m: &Map<String, Value>,
        s: &Value,
        path: &str,
        root: bool,
        errs: &mut Vec<FieldError>,
    ) {
        for r in crate::util::strings_at(s, &["required"]) {
            if !m.contains_key(&r) {
                errs.push(required(&child(path, &r), ""));
            }
        }
        let n = m.len() as u64;
        if let Some(max) = s.get("maxProperties").and_then(Value::as_u64) {
            if n > max {
                errs.push(err(
                    ErrorKind::TooMany,
                    path,
                    Some(Value::from(n)),
                    format!("must have at most {} items", max),
                ));
            }
        }
        if let Some(min) = s.get("minProperties").and_then(Value::as_u64) {
            if n < min {
                errs.push(invalid(
                    path,
                    Value::Object(m.clone()),
                    format!("{} in body should have at least {} properties", path, min),
                ));
            }
        }
        let embedded = flag(s, "x-kubernetes-embedded-resource");
        let p = props(s);
        let addl = additional(s).filter(|a| a.is_object());
        for (k, v) in m {
            if (root || embedded) && k == "metadata" {
                continue;
            }
            let sub = p.and_then(|p| p.get(k)).or(addl);
            if let Some(sub) = sub {
                self.validate_node(v, sub, &child(path, k), false, errs);
            }
        }
        if embedded {
            for f in ["apiVersion", "kind"] {
                if m.get(f).and_then(Value::as_str).is_none_or(str::is_empty) {
                    errs.push(required(&child(path, f), "must not be empty"));
                }
            }
            if let Some(name) = m
                .get("metadata")
                .and_then(|md| md.get("name"))
                .and_then(Value::as_str)
            {
                for msg in rk3s_validation::is_valid_path_segment_name(name) {
                    errs.push(invalid(
                        &child(&child(path, "metadata"), "name"),
                        Value::from(name),
                        msg,
                    ));
                }
            }
        }
    }

    fn validate_junctors(
        &self,
        x: &Value,
        s: &Value,
        path: &str,
        root: bool,
        errs: &mut Vec<FieldError>,
    ) {
        let ok = |sub: &Value| {
            let mut e = Vec::new();
            self.validate_node(x, sub, path, root, &mut e);
            e.is_empty()
        };
        if let Some(all) = s.get("allOf").and_then(Value::as_array) {
            for sub in all {
                self.validate_node(x, sub, path, root, errs);
            }
        }
        if let Some(any) = s.get("anyOf").and_then(Value::as_array) {
            if !any.is_empty() && !any.iter().any(ok) {
                errs.push(invalid(
                    path,
                    x.clone(),
                    format!("{} in body must validate at least one schema (anyOf)", path),
                ));
            }
        }
        if let Some(one) = s.get("oneOf").and_then(Value::as_array) {
            if !one.is_empty() && one.iter().filter(|sub| ok(sub)).count() != 1 {
                errs.push(invalid(
                    path,
                    x.clone(),
                    format!(
                        "{} in body must validate one and only one schema (oneOf)",
                        path
                    ),
                ));
            }
        }
        if let Some(not) = s.get("not") {
            if not.is_object() && ok(not) {
                errs.push(invalid(
                    path,
                    x.clone(),
                    format!("{} in body must not validate the schema (not)", path),
                ));
            }
        }
    }
}

fn go_plain(v: &Value) -> String {
    match v {
        Value::String(s) => go_quote(s),
        Value::Number(n) => go_number(n),
        other => other.to_string(),
    }
}

fn type_error(path: &str, ty: &str, x: &Value) -> FieldError {
    let actual = type_name(x);
    invalid(
        path,
        Value::from(actual),
        format!(
            "{} in body must be of type {}: {}",
            path,
            ty,
            go_quote(actual)
        ),
    )
}

fn type_matches(ty: &str, x: &Value) -> bool {
    match ty {
        "string" => x.is_string(),
        "integer" => x.is_i64() || x.is_u64(),
        "number" => x.is_number(),
        "boolean" => x.is_boolean(),
        "object" => x.is_object(),
        "array" => x.is_array(),
        _ => true,
    }
}

/// JSON equality with numbers compared by value (1 == 1.0).
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equal(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

fn validate_number(
    n: &serde_json::Number,
    x: &Value,
    s: &Value,
    path: &str,
    errs: &mut Vec<FieldError>,
) {
    let f = n.as_f64().unwrap_or(0.0);
    if let Some(max) = s.get("maximum").and_then(Value::as_f64) {
        if flag(s, "exclusiveMaximum") {
            if f >= max {
                errs.push(invalid(
                    path,
                    x.clone(),
                    format!("{} in body should be less than {}", path, go_float(max)),
                ));
            }
        } else if f > max {
            errs.push(invalid(
                path,
                x.clone(),
                format!(
                    "{} in body should be less than or equal to {}",
                    path,
                    go_float(max)
                ),
            ));
        }
    }
    if let Some(min) = s.get("minimum").and_then(Value::as_f64) {
        if flag(s, "exclusiveMinimum") {
            if f <= min {
                errs.push(invalid(
                    path,
                    x.clone(),
                    format!("{} in body should be greater than {}", path, go_float(min)),
                ));
            }
        } else if f < min {
            errs.push(invalid(
                path,
                x.clone(),
                format!(
                    "{} in body should be greater than or equal to {}",
                    path,
                    go_float(min)
                ),
            ));
        }
    }
    if let Some(m) = s.get("multipleOf").and_then(Value::as_f64) {
        if m > 0.0 {
            let q = f / m;
            if (q - q.round()).abs() > 1e-9 {
                errs.push(invalid(
                    path,
                    x.clone(),
                    format!("{} in body should be a multiple of {}", path, go_float(m)),
                ));
            }
        }
    }
}

/// The string formats upstream checks for CRDs (others are accepted as is).
fn format_ok(format: &str, s: &str) -> bool {
    match format {
        "date-time" | "datetime" => s.parse::<jiff::Timestamp>().is_ok(),
        "date" => s.len() == 10 && s.parse::<jiff::civil::Date>().is_ok(),
        "byte" => is_base64(s),
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        // go-openapi's strfmt: Go's net.ParseCIDR
        "cidr" => rk3s_core::Cidr::parse(s).is_ok(),
        "mac" => {
            let parts: Vec<&str> = s.split([':', '-']).collect();
            (parts.len() == 6 || parts.len() == 8)
                && parts
                    .iter()
                    .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
        }
        "uuid" | "uuid3" | "uuid4" | "uuid5" => {
            let lens = [8, 4, 4, 4, 12];
            let parts: Vec<&str> = s.split('-').collect();
            parts.len() == 5
                && parts
                    .iter()
                    .zip(lens)
                    .all(|(p, l)| p.len() == l && p.chars().all(|c| c.is_ascii_hexdigit()))
        }
        "hostname" => {
            !s.is_empty()
                && s.len() <= 255
                && s.trim_end_matches('.').split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                })
        }
        "email" => match s.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty() && domain.contains('.') && !domain.starts_with('.')
            }
            None => false,
        },
        "duration" => is_duration(s),
        _ => true,
    }
}

fn is_base64(s: &str) -> bool {
    let t = s.trim_end_matches('=');
    (s.len() & 3) == 0
        && s.len() - t.len() <= 2
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/')
}

/// Go durations (`1h30m`, `1.5s`, `300ms`), optionally signed.
fn is_duration(s: &str) -> bool {
    let mut rest = s.strip_prefix(['-', '+']).unwrap_or(s);
    if rest == "0" {
        return true;
    }
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return false;
        }
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        if !matches!(
            &rest[..unit_len],
            "ns" | "us" | "µs" | "ms" | "s" | "m" | "h"
        ) {
            return false;
        }
        rest = &rest[unit_len..];
    }
    true
}

/// Prunes `x` against `s` (None: no schema, i.e. under preserve-unknown-fields).
fn prune(
    x: &mut Value,
    s: Option<&Value>,
    resource_root: bool,
    path: &str,
    pruned: &mut Vec<String>,
) {
    let s = s.filter(|s| s.is_object());
    match x {
        Value::Object(m) => {
            let keep_unknown = s.is_none_or(|s| {
                preserve(s) || matches!(s.get("additionalProperties"), Some(Value::Bool(true)))
            });
            let p = s.and_then(props);
            let addl = s.and_then(additional).filter(|a| a.is_object());
            let embedded = s.is_some_and(|s| flag(s, "x-kubernetes-embedded-resource"));
            let is_resource = resource_root || embedded;
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let kp = crate::util::child(path, &k);
                if is_resource && (k == "apiVersion" || k == "kind") {
                    continue;
                }
                if is_resource && k == "metadata" {
                    if embedded && !resource_root {
                        if let Some(Value::Object(md)) = m.get_mut("metadata") {
                            let mkeys: Vec<String> = md.keys().cloned().collect();
                            for mk in mkeys {
                                if !OBJECT_META_FIELDS.contains(&mk.as_str()) {
                                    md.remove(&mk);
                                    pruned.push(crate::util::child(&kp, &mk));
                                }
                            }
                        }
                    }
                    continue;
                }
                let sub = p.and_then(|p| p.get(&k)).or(addl);
                match sub {
                    Some(sub) => {
                        if let Some(v) = m.get_mut(&k) {
                            prune(v, Some(sub), false, &kp, pruned);
                        }
                    }
                    None if keep_unknown => {
                        if let Some(v) = m.get_mut(&k) {
                            prune(v, None, false, &kp, pruned);
                        }
                    }
                    None => {
                        m.remove(&k);
                        pruned.push(kp);
                    }
                }
            }
        }
        Value::Array(items) => {
            let is = s.and_then(|s| s.get("items"));
            if s.is_some() && is.is_none() && !s.is_some_and(preserve) {
                // an array without an item schema: nothing below is specified
                return;
            }
            for (i, it) in items.iter_mut().enumerate() {
                prune(it, is, false, &index(path, i), pruned);
            }
        }
        _ => {}
    }
}

/// Applies defaults of `s` to `x`, recursively.
fn has_defaults(s: &Value) -> bool {
    props(s).is_some_and(|p| {
        p.values()
            .any(|sub| sub.get("default").is_some() || has_defaults(sub))
    }) || s.get("items").is_some_and(has_defaults)
        || additional(s).is_some_and(has_defaults)
}

fn default(x: &mut Value, s: &Value) {
    match x {
        Value::Object(m) => {
            if let Some(p) = props(s) {
                for (k, sub) in p {
                    let Some(d) = sub.get("default") else {
                        continue;
                    };
                    let absent = match m.get(k) {
                        None => true,
                        Some(Value::Null) => !flag(sub, "nullable"),
                        Some(_) => false,
                    };
                    if absent {
                        let mut d = d.clone();
                        let mut ignored = Vec::new();
                        prune(
                            &mut d,
                            Some(sub),
                            flag(sub, "x-kubernetes-embedded-resource"),
                            "",
                            &mut ignored,
                        );
                        m.insert(k.clone(), d);
                    }
                }
                for (k, v) in m.iter_mut() {
                    if let Some(sub) = p.get(k) {
                        default(v, sub);
                    }
                }
            } else if let Some(addl) = additional(s).filter(|a| a.is_object()) {
                for v in m.values_mut() {
                    default(v, addl);
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = s.get("items") {
                for it in items.iter_mut() {
                    default(it, is);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::tests::crontab_crd;
    use serde_json::json;

    fn schema() -> Schema {
        Schema::from_crd(&crontab_crd(), "v1").expect("schema")
    }

    fn msgs(errs: &[FieldError]) -> Vec<String> {
        errs.iter().map(|e| e.to_string()).collect()
    }

    fn valid_obj() -> Value {
        json!({
            "apiVersion": "stable.example.com/v1", "kind": "CronTab",
            "metadata": {"name": "c", "namespace": "default"},
            "spec": {
                "cronSpec": "*/5 * * * *", "image": "nginx", "replicas": 3, "port": "http",
                "template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {}},
                "extra": {"anything": {"goes": [1, 2]}},
                "ports": [{"name": "a", "port": 1}, {"name": "b", "port": 2}],
                "tags": ["x", "y"],
                "labels": {"a": "b"},
                "when": "2024-01-02T03:04:05Z"
            },
            "status": {"replicas": 1, "labelSelector": "app=x"}
        })
    }

    #[test]
    fn valid_object_passes() {
        let errs = schema().validate(&valid_obj());
        assert!(errs.is_empty(), "{:?}", msgs(&errs));
    }

    #[test]
    fn invalid_objects_get_upstream_messages() {
        let s = schema();
        let mut o = valid_obj();
        o["spec"]["replicas"] = json!("three");
        assert_eq!(
            msgs(&s.validate(&o)),
            vec![
                r#"spec.replicas: Invalid value: "string": spec.replicas in body must be of type integer: "string""#
            ]
        );
        o["spec"]["replicas"] = json!(11);
        assert_eq!(
            msgs(&s.validate(&o)),
            vec!["spec.replicas: Invalid value: 11: spec.replicas in body should be less than or equal to 10"]
        );
        o["spec"]["replicas"] = json!(0);
        assert_eq!(
            msgs(&s.validate(&o)),
            vec!["spec.replicas: Invalid value: 0: spec.replicas in body should be greater than or equal to 1"]
        );
        o["spec"]["replicas"] = json!(1.5);
        assert_eq!(
            msgs(&s.validate(&o)),
            vec![
                r#"spec.replicas: Invalid value: "number": spec.replicas in body must be of type integer: "number""#
            ]
        );
        let mut o = valid_obj();
        o["spec"].as_object_mut().map(|m| m.remove("cronSpec"));
        o["spec"]["image"] = json!("x");
        assert_eq!(
            msgs(&s.validate(&o)),
            vec![
                "spec.cronSpec: Required value",
                r#"spec.image: Unsupported value: "x": supported values: "nginx", "busybox""#
            ]
        );
        let mut o = valid_obj();
        o["spec"]["cronSpec"] = json!("x");
        assert_eq!(
            msgs(&s.validate(&o)),
            vec![
                r#"spec.cronSpec: Invalid value: "x": spec.cronSpec in body should match '^(\d+|\*)(/\d+)?(\s+(\d+|\*)(/\d+)?){4}$'"#
            ]
        );
    }

    #[test]
    fn int_or_string_embedded_lists_and_formats() {
        let s = schema();
        let mut o = valid_obj();
        o["spec"]["port"] = json!(8080);
        assert!(s.validate(&o).is_empty());
        o["spec"]["port"] = json!(true);
        assert_eq!(
            msgs(&s.validate(&o)),
            vec![
                r#"spec.port: Invalid value: "boolean": spec.port in body must be of type integer,string: "boolean""#
            ]
        );
        let mut o = valid_obj();
        o["spec"]["template"] = json!({"metadata": {}});
        assert_eq!(
            msgs(&s.validate(&o)),
            vec![
                "spec.template.apiVersion: Required value: must not be empty",
                "spec.template.kind: Required value: must not be empty"
            ]
        );
        let mut o = valid_obj();
        o["spec"]["tags"] = json!(["a", "b", "a"]);
        o["spec"]["ports"] = json!([{"name": "a", "port": 1}, {"name": "a", "port": 2}]);
        assert_eq!(
            msgs(&s.validate(&o)),
            vec![
                r#"spec.ports[1]: Duplicate value: map[string]interface {}{"name":"a"}"#,
                r#"spec.tags[2]: Duplicate value: "a""#
            ]
        );
        let mut o = valid_obj();
        o["spec"]["when"] = json!("yesterday");
        o["spec"]["tags"] = json!(["a", "b", "c", "d"]);
        o["spec"]["image"] = json!(null);
        assert_eq!(
            msgs(&s.validate(&o)),
            vec![
                r#"spec.image: Invalid value: "null": spec.image in body must be of type string: "null""#,
                "spec.tags: Too many: 4: must have at most 3 items",
                r#"spec.when: Invalid value: "yesterday": spec.when in body must be of type date-time: "yesterday""#,
            ]
        );
    }

    #[test]
    fn defaults_are_applied_recursively_and_pruned() {
        let s = schema();
        let mut o =
            json!({"spec": {"cronSpec": "* * * * *", "ports": [{"name": "a"}], "labels": {}}});
        s.apply_defaults(&mut o);
        assert_eq!(o["spec"]["replicas"], json!(1));
        assert_eq!(o["spec"]["ports"][0]["port"], json!(80));
        // the default of `policy` carries an unknown field that is pruned away
        assert_eq!(o["spec"]["policy"], json!({"mode": "Allow"}));
        // explicit values are kept
        let mut o = json!({"spec": {"replicas": 5}});
        s.apply_defaults(&mut o);
        assert_eq!(o["spec"]["replicas"], json!(5));
        // null on a non-nullable field is defaulted
        let mut o = json!({"spec": {"replicas": null}});
        s.apply_defaults(&mut o);
        assert_eq!(o["spec"]["replicas"], json!(1));
    }

    #[test]
    fn schemas_know_whether_they_have_defaults() {
        assert!(schema().has_defaults());
        let none = Schema::new(json!({"type": "object", "properties": {
            "default": {"type": "object", "properties": {"a": {"type": "string"}}},
            "list": {"type": "array", "items": {"type": "object", "properties": {"b": {"type": "string"}}}}}}))
        .expect("schema");
        assert!(
            !none.has_defaults(),
            "a property named default is no default"
        );
        let deep = Schema::new(json!({"type": "object", "properties": {
            "m": {"type": "object", "additionalProperties": {"type": "object", "properties": {"c": {"type": "string", "default": "x"}}}}}}))
        .expect("schema");
        assert!(deep.has_defaults());
    }

    #[test]
    fn unknown_fields_are_pruned_and_reported() {
        let s = schema();
        let mut o = valid_obj();
        o["spec"]["foo"] = json!(1);
        o["spec"]["ports"][1]["bar"] = json!("x");
        o["spec"]["template"]["metadata"]["bogus"] = json!(1);
        o["spec"]["template"]["spec"]["containers"] = json!([]);
        o["spec"]["extra"]["deep"] = json!({"x": 1});
        o["metadata"]["whatever"] = json!(1);
        o["top"] = json!(true);
        let before_meta = o["metadata"].clone();
        let mut pruned = s.prune(&mut o);
        pruned.sort();
        assert_eq!(
            pruned,
            vec![
                "spec.foo",
                "spec.ports[1].bar",
                "spec.template.metadata.bogus",
                "top"
            ]
        );
        assert!(o["spec"].get("foo").is_none());
        assert!(o.get("top").is_none());
        assert_eq!(o["metadata"], before_meta);
        assert_eq!(o["spec"]["template"]["spec"]["containers"], json!([]));
        assert_eq!(o["spec"]["extra"]["deep"], json!({"x": 1}));
        assert_eq!(o["apiVersion"], json!("stable.example.com/v1"));
    }

    #[test]
    fn at_path_finds_subschemas() {
        let s = schema();
        assert_eq!(
            s.at_path(".spec.replicas").and_then(|x| x.get("type")),
            Some(&json!("integer"))
        );
        assert_eq!(
            s.at_path(".spec.labels.anything")
                .and_then(|x| x.get("type")),
            Some(&json!("string"))
        );
        assert!(s.at_path(".spec.nosuch").is_none());
    }

    #[test]
    fn other_value_validations() {
        let s = Schema::new(json!({"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 3, "minLength": 2},
            "n": {"type": "number", "multipleOf": 0.5, "maximum": 5, "exclusiveMaximum": true},
            "opt": {"type": "string", "nullable": true},
            "m": {"type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": {"type": "integer"}},
            "e": {"type": "integer", "enum": [1, 2]}
        }})).expect("schema");
        let ok = json!({"name": "ab", "n": 4.5, "opt": null, "m": {"a": 1}, "e": 2});
        assert!(s.validate(&ok).is_empty(), "{:?}", msgs(&s.validate(&ok)));
        let bad = json!({"name": "abcd", "n": 5, "m": {"a": "x", "b": 2}, "e": 3});
        assert_eq!(
            msgs(&s.validate(&bad)),
            vec![
                r#"name: Too long: may not be more than 3 bytes"#,
                "n: Invalid value: 5: n in body should be less than 5",
                "m: Too many: 2: must have at most 1 items",
                r#"m.a: Invalid value: "string": m.a in body must be of type integer: "string""#,
                r#"e: Unsupported value: 3: supported values: "1", "2""#,
            ]
        );
        let bad = json!({"name": "a", "n": 1.25});
        assert_eq!(
            msgs(&s.validate(&bad)),
            vec![
                r#"name: Invalid value: "a": name in body should be at least 2 chars long"#,
                "n: Invalid value: 1.25: n in body should be a multiple of 0.5",
            ]
        );
    }

    #[test]
    fn bad_pattern_is_an_error() {
        let r = Schema::new(
            json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "("}}}),
        );
        assert!(matches!(r, Err(CrdError::BadPattern { .. })));
    }

    #[test]
    fn durations_and_misc_formats() {
        assert!(is_duration("1h30m"));
        assert!(is_duration("1.5s"));
        assert!(!is_duration("1x"));
        assert!(format_ok("cidr", "10.0.0.0/8"));
        assert!(!format_ok("cidr", "10.0.0.0/33"));
        assert!(format_ok("byte", "aGk="));
        assert!(!format_ok("byte", "a"));
        assert!(format_ok("uuid", "123e4567-e89b-12d3-a456-426614174000"));
        assert!(!format_ok("date", "2024-13-01"));
    }
}
