//! Upstream's typed decoding of built-in objects, driven by the definitions: the checks
//! Go's decoder makes when a JSON (or YAML) object becomes a k8s.io/api struct, and the
//! normalization that round trip gives.
//!
//! [`OpenApi::decode_object`] walks an object with its definition and
//! - refuses values of the wrong JSON type with the message upstream's decoder gives
//!   (`json: cannot unmarshal string into Go struct field DeploymentSpec.spec.replicas
//!   of type int32` for request bodies; the unstructured converter's `unrecognized
//!   type: int32` for strategic merge patches), including integer ranges, int-or-string,
//!   quantity syntax, base64 of `[]byte` fields and times that are not strings;
//! - drops explicit nulls of declared fields (a nil pointer, map or slice is omitted when
//!   encoded) and turns null items of lists and maps into the zero value Go decodes them
//!   to (`""`, `0`, `false`, `{}`).
//!
//! [`fill_always_encoded_status`] adds the status fields upstream's structs always encode
//! (no `omitempty`) with their zero values.
//!
//! Invariants: content under `x-kubernetes-preserve-unknown-fields` and the raw types
//! (`RawExtension`, `FieldsV1`, apiextensions `JSON`, the `JSONSchemaPropsOr*` unions)
//! is never checked or changed; unknown fields are neither checked nor removed (pruning
//! is [`OpenApi::remove_unknown_fields`]'s job, after this); the walk never panics and
//! stops at depth 128.

use serde_json::{Map, Number, Value};

use crate::go_types::NAMED_FIELD_TYPES;
use crate::schema::{INT_OR_STRING, QUANTITY, REF_V2};
use crate::OpenApi;

/// Which of upstream's decoders the object goes through (it decides the messages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodePath {
    /// `encoding/json` into the typed object: request bodies of create and update,
    /// and the result of JSON and merge patches. The first type error in document
    /// order wins (custom unmarshalers' errors abort at once), with Go's
    /// `UnmarshalTypeError` context (innermost struct, JSON path).
    Json,
    /// The unstructured converter (`runtime.DefaultUnstructuredConverter`): the
    /// result of strategic merge patches. Integral floats become integers, as there.
    Unstructured,
}

/// Why an object does not decode into its Go type: upstream's message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    /// The message, e.g. `json: cannot unmarshal string into Go struct field
    /// DeploymentSpec.spec.replicas of type int32`.
    pub message: String,
}

/// Upstream's message for a quantity that does not parse (`ErrFormatWrong`).
pub const QUANTITY_FORMAT_ERROR: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";
/// Upstream's message for a quantity with an unknown suffix (`ErrSuffix`).
pub const QUANTITY_SUFFIX_ERROR: &str = "unable to parse quantity's suffix";

const TIME: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Time";
const MICRO_TIME: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime";

/// Definitions whose Go types take any JSON (custom unmarshalers keeping it raw).
const RAW_DEFINITIONS: &[&str] = &[
    "io.k8s.apimachinery.pkg.runtime.RawExtension",
    "io.k8s.apimachinery.pkg.apis.meta.v1.FieldsV1",
    "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSON",
    "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrArray",
    "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrBool",
    "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrStringArray",
];

/// What a schema position decodes into.
#[derive(Clone, Copy)]
enum Ty<'a> {
    /// Anything (raw types, preserve-unknown-fields, untyped schemas).
    Raw,
    IntOrString,
    Quantity,
    /// metav1.Time / MicroTime: a string (its syntax is not checked here).
    Time,
    /// `[]byte`: a base64 string.
    Bytes,
    Str,
    Bool,
    /// Signed integer of this many bits.
    Int(u8),
    /// Float of this many bits.
    Float(u8),
    /// A slice of the items schema.
    Slice(&'a Value),
    /// `map[string]` of the values schema.
    Map(&'a Value),
    /// A struct: its definition name (when it has one) and declared properties.
    Struct(Option<&'a str>, Option<&'a Map<String, Value>>),
}

fn ref_name(schema: &Value) -> Option<&str> {
    schema
        .get("$ref")
        .or_else(|| {
            schema
                .get("allOf")
                .and_then(|a| a.get(0))
                .and_then(|s| s.get("$ref"))
        })?
        .as_str()?
        .strip_prefix(REF_V2)
}

fn preserves_unknown(schema: &Value) -> bool {
    schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
}

/// The short name of a definition (`io.k8s.api.apps.v1.DeploymentSpec` -> `DeploymentSpec`).
fn short_name(definition: &str) -> &str {
    definition.rsplit('.').next().unwrap_or(definition)
}

/// Go's qualified type name of a definition (`io.k8s.api.core.v1.Container` -> `v1.Container`).
fn qualified_name(definition: &str) -> String {
    let mut parts = definition.rsplit('.');
    let name = parts.next().unwrap_or(definition);
    match parts.next() {
        Some(pkg) => format!("{pkg}.{name}"),
        None => name.to_string(),
    }
}

/// How Go's decoder names a JSON value in an `UnmarshalTypeError` (numbers carry
/// their literal when the target is an integer).
pub fn value_word(v: &Value, integer_target: bool) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "bool".into(),
        Value::Number(n) if integer_target => format!("number {n}"),
        Value::Number(_) => "number".into(),
        Value::String(_) => "string".into(),
        Value::Array(_) => "array".into(),
        Value::Object(_) => "object".into(),
    }
}

/// The Go `reflect.Kind` of a value as the unstructured converter sees it.
fn unstructured_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "invalid",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float64",
        Value::Number(_) => "int64",
        Value::String(_) => "string",
        Value::Array(_) => "slice",
        Value::Object(_) => "map",
    }
}

/// Whether `n` is an integer within `bits` bits (signed).
fn int_fits(n: &Number, bits: u8) -> bool {
    match n.as_i64() {
        Some(_) if bits >= 64 => true,
        Some(i) => i >= -(1i64 << (bits - 1)) && i < (1i64 << (bits - 1)),
        None => false,
    }
}

/// Where a base64 string fails Go's `base64.StdEncoding` (the `illegal base64 data at
/// input byte N` offset), or `None` when it decodes.
pub fn base64_error_offset(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let is_newline = |c: u8| c == b'\n' || c == b'\r';
    let is_alpha = |c: u8| c.is_ascii_alphanumeric() || c == b'+' || c == b'/';
    let mut si = 0;
    loop {
        let mut j = 0;
        while j < 4 {
            if si == b.len() {
                return if j == 0 { None } else { Some(si - j) };
            }
            let c = b[si];
            si += 1;
            if is_alpha(c) {
                j += 1;
                continue;
            }
            if is_newline(c) {
                continue;
            }
            if c != b'=' {
                return Some(si - 1);
            }
            // Padding.
            match j {
                0 | 1 => return Some(si - 1),
                2 => {
                    while si < b.len() && is_newline(b[si]) {
                        si += 1;
                    }
                    if si == b.len() {
                        return Some(b.len());
                    }
                    if b[si] != b'=' {
                        return Some(si - 1);
                    }
                    si += 1;
                }
                _ => {}
            }
            while si < b.len() && is_newline(b[si]) {
                si += 1;
            }
            return if si < b.len() { Some(si) } else { None };
        }
    }
}

/// Checks a quantity string as upstream's `ParseQuantity` (after trimming spaces, as
/// JSON decoding does) with the one parser, [`rk3s_core::Quantity`].
pub fn check_quantity(s: &str) -> Result<(), &'static str> {
    match rk3s_core::Quantity::parse(s.trim()) {
        Ok(_) => Ok(()),
        Err(rk3s_core::QuantityError::Suffix) => Err(QUANTITY_SUFFIX_ERROR),
        Err(_) => Err(QUANTITY_FORMAT_ERROR),
    }
}

/// The walk's state: the decoder's error context and its first saved error.
struct Walk<'a> {
    api: &'a OpenApi,
    path: DecodePath,
    /// Innermost struct whose field is being decoded (short name).
    owner: &'a str,
    /// Its definition.
    owner_def: &'a str,
    /// JSON path of field names from the root (no indices, no map keys), as Go's.
    fields: String,
    /// The first type error (Go keeps decoding after one and reports the first).
    saved: Option<String>,
    /// How many list/map levels below the current field the walk is.
    items: usize,
}

/// An error that ends decoding at once (custom unmarshalers, the unstructured converter).
struct Abort(String);

impl<'a> Walk<'a> {
    fn resolve(&self, schema: &'a Value) -> (Option<&'a str>, &'a Value) {
        let mut name = None;
        let mut s = schema;
        for _ in 0..8 {
            let Some(r) = ref_name(s) else { break };
            match self.api.inner.definitions.get_key_value(r) {
                Some((k, d)) => {
                    name = Some(k.as_str());
                    s = d;
                }
                None => break,
            }
        }
        (name, s)
    }

    fn ty(&self, schema: &'a Value) -> Ty<'a> {
        if preserves_unknown(schema) {
            return Ty::Raw;
        }
        let (name, s) = self.resolve(schema);
        if preserves_unknown(s) {
            return Ty::Raw;
        }
        match name {
            Some(INT_OR_STRING) => return Ty::IntOrString,
            Some(QUANTITY) => return Ty::Quantity,
            Some(TIME) | Some(MICRO_TIME) => return Ty::Time,
            Some(n) if RAW_DEFINITIONS.contains(&n) => return Ty::Raw,
            _ => {}
        }
        let props = s.get("properties").and_then(Value::as_object);
        let format = s.get("format").and_then(Value::as_str).unwrap_or("");
        match s.get("type").and_then(Value::as_str) {
            Some("string") if format == "byte" => Ty::Bytes,
            Some("string") => Ty::Str,
            Some("boolean") => Ty::Bool,
            Some("integer") => Ty::Int(if format == "int32" { 32 } else { 64 }),
            Some("number") => Ty::Float(if format == "float" { 32 } else { 64 }),
            Some("array") => match s.get("items").filter(|i| i.is_object()) {
                Some(items) => Ty::Slice(items),
                None => Ty::Raw,
            },
            Some("object") => match (
                props,
                s.get("additionalProperties").filter(|a| a.is_object()),
            ) {
                (None, Some(ap)) => Ty::Map(ap),
                (None, None) if name.is_none() => Ty::Raw,
                _ => Ty::Struct(name, props),
            },
            _ if props.is_some() => Ty::Struct(name, props),
            _ => Ty::Raw,
        }
    }

    /// The Go type at the current position when the named-types table names it (the
    /// field's type, or its element's `items` levels down).
    fn named_type(&self) -> Option<String> {
        let field = self.fields.rsplit('.').next().unwrap_or("");
        let (_, _, t) = NAMED_FIELD_TYPES
            .iter()
            .find(|(d, f, _)| *d == self.owner_def && *f == field)?;
        let mut t: &str = t;
        for _ in 0..self.items {
            t = t
                .strip_prefix("[]")
                .or_else(|| t.strip_prefix("map[string]"))?;
        }
        Some(t.to_string())
    }

    /// Go's name of the type at `schema` (from the schema alone).
    fn go_type(&self, schema: &'a Value, depth: usize) -> String {
        let (name, s) = self.resolve(schema);
        match (name, self.ty(schema)) {
            (Some(INT_OR_STRING), _) => "intstr.IntOrString".into(),
            (Some(QUANTITY), _) => "resource.Quantity".into(),
            (Some(n), _) => qualified_name(n),
            (None, Ty::Bytes) => "[]uint8".into(),
            (None, Ty::Str) => "string".into(),
            (None, Ty::Bool) => "bool".into(),
            (None, Ty::Int(bits)) => format!("int{bits}"),
            (None, Ty::Float(bits)) => format!("float{bits}"),
            (None, Ty::Slice(items)) if depth < 16 => {
                format!("[]{}", self.go_type(items, depth + 1))
            }
            (None, Ty::Map(values)) if depth < 16 => {
                format!("map[string]{}", self.go_type(values, depth + 1))
            }
            _ if s.get("type").and_then(Value::as_str) == Some("object") => {
                "map[string]interface {}".into()
            }
            _ => "interface {}".into(),
        }
    }

    /// Go's `UnmarshalTypeError` message for `v` at the current position.
    fn type_error(&self, v: &Value, go_type: &str) -> String {
        let integer = matches!(
            go_type,
            "int8" | "int16" | "int32" | "int64" | "int" | "uint8" | "uint16" | "uint32" | "uint64"
        );
        let word = value_word(v, integer);
        if self.fields.is_empty() {
            format!("json: cannot unmarshal {word} into Go value of type {go_type}")
        } else {
            format!(
                "json: cannot unmarshal {word} into Go struct field {}.{} of type {go_type}",
                self.owner, self.fields
            )
        }
    }

    fn save(&mut self, message: String) {
        if self.saved.is_none() {
            self.saved = Some(message);
        }
    }

    /// A value of the wrong type: saved (JSON) or fatal (unstructured).
    fn mismatch(&mut self, v: &Value, schema: &'a Value, ty: Ty<'a>) -> Result<(), Abort> {
        let named = self.named_type();
        match self.path {
            DecodePath::Json => {
                let t = named.unwrap_or_else(|| self.go_type(schema, 0));
                let m = self.type_error(v, &t);
                self.save(m);
                Ok(())
            }
            DecodePath::Unstructured => {
                let st = unstructured_kind(v);
                let named_type = || named.clone().unwrap_or_else(|| self.go_type(schema, 0));
                let m = match ty {
                    Ty::Struct(..) => format!("cannot restore struct from: {st}"),
                    Ty::Map(_) => format!("cannot restore map from {st}"),
                    Ty::Slice(_) | Ty::Bytes => format!("cannot restore slice from {st}"),
                    Ty::Str if matches!(v, Value::Number(_)) => {
                        format!("cannot convert {st} to {}", named_type())
                    }
                    Ty::Str => "unrecognized type: string".into(),
                    Ty::Bool => "unrecognized type: bool".into(),
                    Ty::Int(bits) if matches!(v, Value::Number(_)) => format!(
                        "cannot convert {st} to {}",
                        named.clone().unwrap_or(format!("int{bits}"))
                    ),
                    Ty::Int(bits) => format!("unrecognized type: int{bits}"),
                    Ty::Float(bits) => format!("unrecognized type: float{bits}"),
                    _ => format!("unrecognized type: {}", named_type()),
                };
                Err(Abort(m))
            }
        }
    }

    /// A custom unmarshaler's error: fatal, with the decoder's context in the JSON path
    /// (it is an `UnmarshalTypeError` from an inner `json.Unmarshal`) and without it
    /// in the unstructured converter.
    fn inner_type_error(&self, v: &Value, go_type: &str) -> Abort {
        match self.path {
            DecodePath::Json => Abort(self.type_error(v, go_type)),
            DecodePath::Unstructured => {
                let integer = go_type.starts_with("int");
                Abort(format!(
                    "json: cannot unmarshal {} into Go value of type {go_type}",
                    value_word(v, integer)
                ))
            }
        }
    }

    /// The zero value Go decodes a null item of this type to (None: stays null).
    fn zero(&self, schema: &'a Value) -> Option<Value> {
        match self.ty(schema) {
            Ty::Str => Some(Value::String(String::new())),
            Ty::Int(_) | Ty::Float(_) | Ty::IntOrString => Some(Value::from(0)),
            Ty::Bool => Some(Value::Bool(false)),
            Ty::Quantity => Some(Value::String("0".into())),
            Ty::Struct(..) => Some(Value::Object(Map::new())),
            _ => None,
        }
    }

    fn value(&mut self, schema: &'a Value, v: &mut Value, depth: usize) -> Result<(), Abort> {
        if depth > 128 || v.is_null() {
            return Ok(());
        }
        let ty = self.ty(schema);
        match ty {
            Ty::Raw => Ok(()),
            Ty::Struct(name, props) => {
                let Value::Object(m) = v else {
                    return self.mismatch(v, schema, ty);
                };
                let Some(props) = props else { return Ok(()) };
                if m.iter()
                    .any(|(k, fv)| fv.is_null() && props.contains_key(k))
                {
                    m.retain(|k, fv| !(fv.is_null() && props.contains_key(k)));
                }
                let owner_def = name.unwrap_or("");
                let owner = short_name(owner_def);
                for (k, fv) in m.iter_mut() {
                    let Some(fs) = props.get(k) else { continue };
                    let (saved_owner, saved_def, saved_items) =
                        (self.owner, self.owner_def, self.items);
                    let len = self.fields.len();
                    if !self.fields.is_empty() {
                        self.fields.push('.');
                    }
                    self.fields.push_str(k);
                    self.owner = owner;
                    self.owner_def = owner_def;
                    self.items = 0;
                    let r = self.value(fs, fv, depth + 1);
                    self.owner = saved_owner;
                    self.owner_def = saved_def;
                    self.items = saved_items;
                    self.fields.truncate(len);
                    r?;
                }
                Ok(())
            }
            Ty::Map(values) => {
                let Value::Object(m) = v else {
                    return self.mismatch(v, schema, ty);
                };
                self.items += 1;
                let mut r = Ok(());
                for item in m.values_mut() {
                    if item.is_null() {
                        if let Some(z) = self.zero(values) {
                            *item = z;
                        }
                        continue;
                    }
                    r = self.value(values, item, depth + 1);
                    if r.is_err() {
                        break;
                    }
                }
                self.items -= 1;
                r
            }
            Ty::Slice(items) => {
                let Value::Array(a) = v else {
                    return self.mismatch(v, schema, ty);
                };
                self.items += 1;
                let mut r = Ok(());
                for item in a.iter_mut() {
                    if item.is_null() {
                        if let Some(z) = self.zero(items) {
                            *item = z;
                        }
                        continue;
                    }
                    r = self.value(items, item, depth + 1);
                    if r.is_err() {
                        break;
                    }
                }
                self.items -= 1;
                r
            }
            Ty::Bytes => match v {
                Value::String(s) => {
                    if let Some(at) = base64_error_offset(s) {
                        let m = format!("illegal base64 data at input byte {at}");
                        match self.path {
                            DecodePath::Json => self.save(m),
                            DecodePath::Unstructured => {
                                return Err(Abort(format!("error decoding from json: {m}")))
                            }
                        }
                    }
                    Ok(())
                }
                Value::Array(items) if self.path == DecodePath::Json => {
                    // Go decodes a JSON array of numbers into []byte; it is stored as
                    // the base64 string the typed object encodes to.
                    let mut bytes = Vec::with_capacity(items.len());
                    for item in items.iter() {
                        match item.as_u64().filter(|n| *n <= 255) {
                            Some(n) => bytes.push(n as u8),
                            None if item.is_null() => bytes.push(0),
                            None => {
                                let m = self.type_error(item, "uint8");
                                self.save(m);
                                return Ok(());
                            }
                        }
                    }
                    *v = Value::String(encode_base64(&bytes));
                    Ok(())
                }
                _ => self.mismatch(v, schema, ty),
            },
            Ty::Str => match v {
                Value::String(_) => Ok(()),
                _ => self.mismatch(v, schema, ty),
            },
            Ty::Bool => match v {
                Value::Bool(_) => Ok(()),
                _ => self.mismatch(v, schema, ty),
            },
            Ty::Int(bits) => match v {
                Value::Number(n) if int_fits(n, bits) => Ok(()),
                Value::Number(n) if self.path == DecodePath::Unstructured => {
                    // The converter converts integral floats and wraps integers, as
                    // Go's reflect conversion does.
                    let f = n.as_f64().unwrap_or(0.0);
                    if n.is_f64() && f.fract() != 0.0 {
                        return self.mismatch(v, schema, ty);
                    }
                    let i = n.as_i64().unwrap_or(f as i64);
                    let i = if bits >= 64 { i } else { i64::from(i as i32) };
                    *v = Value::from(i);
                    Ok(())
                }
                _ => self.mismatch(v, schema, ty),
            },
            Ty::Float(bits) => match v {
                Value::Number(n)
                    if bits >= 64 || n.as_f64().is_some_and(|f| f.abs() <= f64::from(f32::MAX)) =>
                {
                    Ok(())
                }
                _ => self.mismatch(v, schema, ty),
            },
            Ty::IntOrString => match v {
                Value::String(_) => Ok(()),
                Value::Number(n) if int_fits(n, 32) => Ok(()),
                Value::Number(n)
                    if self.path == DecodePath::Unstructured
                        && n.as_f64()
                            .is_some_and(|f| f.fract() == 0.0 && f.abs() < 2147483648.0) =>
                {
                    *v = Value::from(n.as_f64().unwrap_or(0.0) as i64);
                    Ok(())
                }
                other => Err(self.inner_type_error(other, "int32")),
            },
            Ty::Quantity => {
                let r = match v {
                    Value::String(s) => check_quantity(s),
                    Value::Number(n) => check_quantity(&n.to_string()),
                    Value::Bool(b) => check_quantity(if *b { "true" } else { "false" }),
                    _ => Err(QUANTITY_FORMAT_ERROR),
                };
                r.map_err(|m| Abort(m.to_string()))
            }
            Ty::Time => match v {
                Value::String(_) => Ok(()),
                other => Err(self.inner_type_error(other, "string")),
            },
        }
    }
}

/// Standard base64 with padding.
fn encode_base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Status fields upstream always encodes (declared without `omitempty`, so their zero
/// value is written too), by the definition of the object holding the status: the
/// top-level status structs of the stored GA kinds (k8s.io/api 1.33).
const ALWAYS_ENCODED_STATUS: &[(&str, &[(&str, ZeroValue)])] = &[
    (
        "io.k8s.api.apps.v1.StatefulSet",
        &[
            ("replicas", ZeroValue::Int),
            ("availableReplicas", ZeroValue::Int),
        ],
    ),
    (
        "io.k8s.api.apps.v1.DaemonSet",
        &[
            ("currentNumberScheduled", ZeroValue::Int),
            ("numberMisscheduled", ZeroValue::Int),
            ("desiredNumberScheduled", ZeroValue::Int),
            ("numberReady", ZeroValue::Int),
        ],
    ),
    (
        "io.k8s.api.apps.v1.ReplicaSet",
        &[("replicas", ZeroValue::Int)],
    ),
    (
        "io.k8s.api.core.v1.ReplicationController",
        &[("replicas", ZeroValue::Int)],
    ),
    (
        "io.k8s.api.autoscaling.v1.HorizontalPodAutoscaler",
        &[
            ("currentReplicas", ZeroValue::Int),
            ("desiredReplicas", ZeroValue::Int),
        ],
    ),
    (
        "io.k8s.api.autoscaling.v2.HorizontalPodAutoscaler",
        &[("desiredReplicas", ZeroValue::Int)],
    ),
    (
        "io.k8s.api.policy.v1.PodDisruptionBudget",
        &[
            ("disruptionsAllowed", ZeroValue::Int),
            ("currentHealthy", ZeroValue::Int),
            ("desiredHealthy", ZeroValue::Int),
            ("expectedPods", ZeroValue::Int),
        ],
    ),
    (
        "io.k8s.api.storage.v1.VolumeAttachment",
        &[("attached", ZeroValue::Bool)],
    ),
];

/// A Go zero value.
#[derive(Clone, Copy)]
enum ZeroValue {
    Int,
    Bool,
}

/// Adds the status fields upstream always encodes (see `ALWAYS_ENCODED_STATUS`) that
/// `obj`, an object of `definition`, lacks, with their zero values, as the typed round
/// trip gives them (a new StatefulSet's status is `{"replicas": 0, "availableReplicas":
/// 0}`). Only `status` is touched (spec fields keep their "Required value" checks);
/// a missing or non-object `status` becomes an object for those kinds.
pub fn fill_always_encoded_status(definition: &str, obj: &mut Value) {
    let Some((_, fields)) = ALWAYS_ENCODED_STATUS.iter().find(|(d, _)| *d == definition) else {
        return;
    };
    let Some(o) = obj.as_object_mut() else { return };
    let status = o
        .entry("status")
        .or_insert_with(|| Value::Object(Map::new()));
    if !status.is_object() {
        *status = Value::Object(Map::new());
    }
    let Some(status) = status.as_object_mut() else {
        return;
    };
    for (field, zero) in fields.iter() {
        if status.get(*field).is_none_or(Value::is_null) {
            let z = match zero {
                ZeroValue::Int => Value::from(0),
                ZeroValue::Bool => Value::Bool(false),
            };
            status.insert((*field).to_string(), z);
        }
    }
}

/// Go's `strconv.Quote` (re-exported from [`rk3s_core::quote`]).
pub use rk3s_core::go_quote;

/// Go's `%v` of a value decoded from JSON into `interface{}` (`map[k:v]` with sorted
/// keys, `[a b]`, bare strings, `<nil>`), as upstream prints a patch in messages.
pub fn go_sprint(v: &Value) -> String {
    let mut out = String::new();
    sprint_into(&mut out, v, 0);
    out
}

fn sprint_into(out: &mut String, v: &Value, depth: usize) {
    if depth > 128 {
        return;
    }
    match v {
        Value::Null => out.push_str("<nil>"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => out.push_str(&i.to_string()),
            (None, Some(u), _) => out.push_str(&u.to_string()),
            (_, _, Some(f)) => out.push_str(&go_float(f)),
            _ => out.push_str(&n.to_string()),
        },
        Value::String(s) => out.push_str(s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                sprint_into(out, item, depth + 1);
            }
            out.push(']');
        }
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push_str("map[");
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                out.push_str(k);
                out.push(':');
                if let Some(item) = m.get(k) {
                    sprint_into(out, item, depth + 1);
                }
            }
            out.push(']');
        }
    }
}

/// Go's `%v` of a float64 (`strconv.FormatFloat(f, 'g', -1, 64)`): shortest digits,
/// exponent form below 1e-4 and from 1e21.
fn go_float(f: f64) -> String {
    if f == 0.0 {
        return "0".into();
    }
    let exp = f.abs().log10().floor() as i32;
    if !(-4..21).contains(&exp) {
        let s = format!("{f:e}");
        // Rust writes `1.5e-7`; Go writes `1.5e-07`.
        match s.split_once('e') {
            Some((m, e)) => {
                let (sign, digits) = match e.strip_prefix('-') {
                    Some(d) => ('-', d),
                    None => ('+', e),
                };
                format!("{m}e{sign}{digits:0>2}")
            }
            None => s,
        }
    } else {
        let s = format!("{f}");
        s.strip_suffix(".0").map(String::from).unwrap_or(s)
    }
}

impl OpenApi {
    /// Decodes `obj`, an object of definition `name`, as upstream decodes a built-in
    /// object through `path`: the first type error is returned with upstream's message;
    /// explicit nulls of declared fields are dropped and null list/map items become
    /// Go's zero values (also when an error is returned, `obj` may be partly
    /// normalized). An unknown definition or a non-object `obj` is left alone.
    pub fn decode_object(
        &self,
        name: &str,
        obj: &mut Value,
        path: DecodePath,
    ) -> Result<(), DecodeError> {
        if !obj.is_object() || !self.inner.definitions.contains_key(name) {
            return Ok(());
        }
        let root = serde_json::json!({ "$ref": format!("{REF_V2}{name}") });
        let mut walk = Walk {
            api: self,
            path,
            owner: "",
            owner_def: "",
            fields: String::new(),
            saved: None,
            items: 0,
        };
        match walk.value(&root, obj, 0) {
            Err(Abort(message)) => Err(DecodeError { message }),
            Ok(()) => match walk.saved {
                Some(message) => Err(DecodeError { message }),
                None => Ok(()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::OnceLock;

    fn api() -> &'static OpenApi {
        static API: OnceLock<OpenApi> = OnceLock::new();
        API.get_or_init(|| {
            let res: Vec<_> = rk3s_api::resource::builtin::resources();
            OpenApi::build(&res, "v1.33.0+rk3s").expect("build")
        })
    }

    fn decode(def: &str, mut v: Value, path: DecodePath) -> (Result<(), String>, Value) {
        let r = api()
            .decode_object(def, &mut v, path)
            .map_err(|e| e.message);
        (r, v)
    }

    const DEPLOYMENT: &str = "io.k8s.api.apps.v1.Deployment";
    const CONFIG_MAP: &str = "io.k8s.api.core.v1.ConfigMap";

    #[test]
    fn wrong_scalar_types_get_gos_message_with_struct_and_path() {
        let cases = [
            (DEPLOYMENT, json!({"spec": {"replicas": "notanumber"}}), "json: cannot unmarshal string into Go struct field DeploymentSpec.spec.replicas of type int32"),
            (DEPLOYMENT, json!({"spec": {"replicas": 1.5}}), "json: cannot unmarshal number 1.5 into Go struct field DeploymentSpec.spec.replicas of type int32"),
            (DEPLOYMENT, json!({"spec": {"replicas": 3000000000u64}}), "json: cannot unmarshal number 3000000000 into Go struct field DeploymentSpec.spec.replicas of type int32"),
            (DEPLOYMENT, json!({"spec": {"paused": "yes"}}), "json: cannot unmarshal string into Go struct field DeploymentSpec.spec.paused of type bool"),
            (CONFIG_MAP, json!({"data": {"a": 1}}), "json: cannot unmarshal number into Go struct field ConfigMap.data of type string"),
            (CONFIG_MAP, json!({"metadata": {"labels": "x"}}), "json: cannot unmarshal string into Go struct field ObjectMeta.metadata.labels of type map[string]string"),
            (CONFIG_MAP, json!({"metadata": "x"}), "json: cannot unmarshal string into Go struct field ConfigMap.metadata of type v1.ObjectMeta"),
            (CONFIG_MAP, json!({"kind": 5}), "json: cannot unmarshal number into Go struct field ConfigMap.kind of type string"),
            ("io.k8s.api.core.v1.Service", json!({"spec": {"ports": [{"port": "eighty"}]}}), "json: cannot unmarshal string into Go struct field ServicePort.spec.ports.port of type int32"),
            (DEPLOYMENT, json!({"spec": {"template": {"spec": {"containers": "notalist"}}}}), "json: cannot unmarshal string into Go struct field PodSpec.spec.template.spec.containers of type []v1.Container"),
            (DEPLOYMENT, json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "ports": [{"containerPort": "80"}]}]}}}}), "json: cannot unmarshal string into Go struct field ContainerPort.spec.template.spec.containers.ports.containerPort of type int32"),
            (DEPLOYMENT, json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "args": [1]}]}}}}), "json: cannot unmarshal number into Go struct field Container.spec.template.spec.containers.args of type string"),
            (DEPLOYMENT, json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80, "protocol": 6}]}]}}}}), "json: cannot unmarshal number into Go struct field ContainerPort.spec.template.spec.containers.ports.protocol of type v1.Protocol"),
            (DEPLOYMENT, json!({"spec": {"selector": []}}), "json: cannot unmarshal array into Go struct field DeploymentSpec.spec.selector of type v1.LabelSelector"),
            ("io.k8s.api.core.v1.Pod", json!({"spec": {"terminationGracePeriodSeconds": {}}}), "json: cannot unmarshal object into Go struct field PodSpec.spec.terminationGracePeriodSeconds of type int64"),
            ("io.k8s.api.core.v1.Secret", json!({"data": {"a": 1}}), "json: cannot unmarshal number into Go struct field Secret.data of type []uint8"),
            ("io.k8s.api.core.v1.Secret", json!({"data": {"a": "!!!!"}}), "illegal base64 data at input byte 0"),
            ("io.k8s.api.core.v1.Pod", json!({"spec": {"containers": [{"name": "c", "resources": {"limits": "x"}}]}}), "json: cannot unmarshal string into Go struct field ResourceRequirements.spec.containers.resources.limits of type v1.ResourceList"),
        ];
        for (def, v, want) in cases {
            let (r, _) = decode(def, v.clone(), DecodePath::Json);
            assert_eq!(r, Err(want.to_string()), "{v}");
        }
    }

    #[test]
    fn the_first_error_in_document_order_wins_but_custom_unmarshalers_abort() {
        let (r, _) = decode(
            CONFIG_MAP,
            json!({"data": {"a": 1}, "metadata": {"labels": "x"}}),
            DecodePath::Json,
        );
        assert_eq!(
            r.unwrap_err(),
            "json: cannot unmarshal number into Go struct field ConfigMap.data of type string"
        );
        let svc = json!({"spec": {"ports": [{"port": "x", "targetPort": true}]}});
        let (r, _) = decode("io.k8s.api.core.v1.Service", svc, DecodePath::Json);
        assert_eq!(r.unwrap_err(), "json: cannot unmarshal bool into Go struct field ServicePort.spec.ports.targetPort of type int32");
    }

    #[test]
    fn int_or_string_quantities_times_and_raw_extensions() {
        let svc = "io.k8s.api.core.v1.Service";
        for ok in [json!("http"), json!(8080)] {
            let (r, _) = decode(
                svc,
                json!({"spec": {"ports": [{"port": 80, "targetPort": ok}]}}),
                DecodePath::Json,
            );
            assert_eq!(r, Ok(()));
        }
        let (r, _) = decode(
            svc,
            json!({"spec": {"ports": [{"port": 80, "targetPort": 1.5}]}}),
            DecodePath::Json,
        );
        assert_eq!(r.unwrap_err(), "json: cannot unmarshal number 1.5 into Go struct field ServicePort.spec.ports.targetPort of type int32");
        let pod = "io.k8s.api.core.v1.Pod";
        for ok in [
            json!("100m"),
            json!(2),
            json!(0.5),
            json!("1Gi"),
            json!(" 1e3 "),
            json!("m"),
        ] {
            let (r, _) = decode(
                pod,
                json!({"spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": ok}}}]}}),
                DecodePath::Json,
            );
            assert_eq!(r, Ok(()), "{ok}");
        }
        for (bad, want) in [
            (json!("abc"), QUANTITY_FORMAT_ERROR),
            (json!("1Xi"), QUANTITY_FORMAT_ERROR),
            (json!("1KK"), QUANTITY_SUFFIX_ERROR),
            (json!(true), QUANTITY_FORMAT_ERROR),
            (json!({}), QUANTITY_FORMAT_ERROR),
        ] {
            let (r, _) = decode(
                pod,
                json!({"spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": bad}}}]}}),
                DecodePath::Json,
            );
            assert_eq!(r.unwrap_err(), want, "{bad}");
        }
        let (r, _) = decode(
            CONFIG_MAP,
            json!({"metadata": {"creationTimestamp": 5}}),
            DecodePath::Json,
        );
        assert_eq!(r.unwrap_err(), "json: cannot unmarshal number into Go struct field ObjectMeta.metadata.creationTimestamp of type string");
        let rev = json!({"data": {"anything": [1, null, {"x": null}]}, "revision": 1});
        let (r, v) = decode(
            "io.k8s.api.apps.v1.ControllerRevision",
            rev.clone(),
            DecodePath::Json,
        );
        assert_eq!(r, Ok(()));
        assert_eq!(v, rev, "raw extensions are left alone");
    }

    #[test]
    fn explicit_nulls_are_dropped_and_null_items_become_zero_values() {
        let (r, v) = decode(
            CONFIG_MAP,
            json!({"data": null, "metadata": {"name": "x", "labels": null, "annotations": {"a": null}}, "bogus": null}),
            DecodePath::Json,
        );
        assert_eq!(r, Ok(()));
        assert_eq!(
            v,
            json!({"metadata": {"name": "x", "annotations": {"a": ""}}, "bogus": null}),
            "unknown fields are pruning's business"
        );
        let (r, v) = decode(
            DEPLOYMENT,
            json!({"spec": {"replicas": null, "template": {"spec": {"containers": [{"name": "c", "args": ["a", null]}]}}}}),
            DecodePath::Json,
        );
        assert_eq!(r, Ok(()));
        assert_eq!(
            v,
            json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "args": ["a", ""]}]}}}})
        );
    }

    #[test]
    fn strategic_merge_patch_results_get_the_unstructured_converters_messages() {
        let u = DecodePath::Unstructured;
        let cases = [
            (
                DEPLOYMENT,
                json!({"spec": {"replicas": "1"}}),
                "unrecognized type: int32",
            ),
            (
                DEPLOYMENT,
                json!({"spec": {"replicas": 1.5}}),
                "cannot convert float64 to int32",
            ),
            (
                CONFIG_MAP,
                json!({"data": {"a": 1}}),
                "cannot convert int64 to string",
            ),
            (
                CONFIG_MAP,
                json!({"data": {"a": true}}),
                "unrecognized type: string",
            ),
            (
                CONFIG_MAP,
                json!({"metadata": {"labels": "x"}}),
                "cannot restore map from string",
            ),
            (
                CONFIG_MAP,
                json!({"metadata": []}),
                "cannot restore struct from: slice",
            ),
            (
                DEPLOYMENT,
                json!({"spec": {"template": {"spec": {"containers": "x"}}}}),
                "cannot restore slice from string",
            ),
            (
                "io.k8s.api.core.v1.Service",
                json!({"spec": {"ports": [{"port": 80, "targetPort": true}]}}),
                "json: cannot unmarshal bool into Go value of type int32",
            ),
        ];
        for (def, v, want) in cases {
            let (r, _) = decode(def, v.clone(), u);
            assert_eq!(r, Err(want.to_string()), "{v}");
        }
        let (r, v) = decode(DEPLOYMENT, json!({"spec": {"replicas": 3.0}}), u);
        assert_eq!(r, Ok(()));
        assert_eq!(v, json!({"spec": {"replicas": 3}}));
    }

    #[test]
    fn go_formatting_of_values_and_strings() {
        assert_eq!(
            go_sprint(&json!({"spec": {"replicas": "x", "a": [1, 1.5, null, true]}})),
            "map[spec:map[a:[1 1.5 <nil> true] replicas:x]]"
        );
        assert_eq!(go_float(1e21), "1e+21");
        assert_eq!(go_float(0.00001), "1e-05");
        assert_eq!(go_float(100.0), "100");
        assert_eq!(go_quote("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\x01\"");
    }

    #[test]
    fn status_fields_without_omitempty_are_filled_with_zero_values() {
        let mut sts = json!({"spec": {}, "status": {"replicas": 2}});
        fill_always_encoded_status("io.k8s.api.apps.v1.StatefulSet", &mut sts);
        assert_eq!(
            sts["status"],
            json!({"replicas": 2, "availableReplicas": 0})
        );
        let mut ds = json!({"spec": {}});
        fill_always_encoded_status("io.k8s.api.apps.v1.DaemonSet", &mut ds);
        assert_eq!(
            ds["status"],
            json!({"currentNumberScheduled": 0, "numberMisscheduled": 0, "desiredNumberScheduled": 0, "numberReady": 0})
        );
        let mut d = json!({"spec": {}, "status": {}});
        fill_always_encoded_status(DEPLOYMENT, &mut d);
        assert_eq!(
            d["status"],
            json!({}),
            "DeploymentStatus omits all its zero values"
        );
        let mut va = json!({"spec": {}, "status": {"attached": null}});
        fill_always_encoded_status("io.k8s.api.storage.v1.VolumeAttachment", &mut va);
        assert_eq!(va["status"], json!({"attached": false}));
    }

    #[test]
    fn byte_arrays_and_base64() {
        assert_eq!(base64_error_offset("aGVsbG8="), None);
        assert_eq!(base64_error_offset("aGVs\nbG8="), None);
        assert_eq!(base64_error_offset(""), None);
        assert_eq!(base64_error_offset("abc"), Some(0));
        assert_eq!(base64_error_offset("abcde"), Some(4));
        assert_eq!(base64_error_offset("ab!d"), Some(2));
        assert_eq!(base64_error_offset("a==="), Some(1));
        assert_eq!(base64_error_offset("ab="), Some(3));
        assert_eq!(base64_error_offset("ab==x"), Some(4));
        let (r, v) = decode(
            "io.k8s.api.core.v1.Secret",
            json!({"data": {"a": [104, 105]}}),
            DecodePath::Json,
        );
        assert_eq!(r, Ok(()));
        assert_eq!(v, json!({"data": {"a": "aGk="}}));
        assert_eq!(encode_base64(b"hello"), "aGVsbG8=");
    }

    #[test]
    fn every_builtin_kind_accepts_its_own_example_shapes() {
        // Objects as rk3s's own components write them decode unchanged.
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "d", "labels": {"a": "b"},
            "managedFields": [{"manager": "m", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {}}, "time": "2024-01-01T00:00:00Z"}]},
            "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80, "protocol": "TCP"}],
                "resources": {"limits": {"cpu": "1", "memory": "1Gi"}},
                "livenessProbe": {"httpGet": {"port": "http", "path": "/"}}}],
                "overhead": {"cpu": 1}},
            "status": {"phase": "Running", "startTime": "2024-01-01T00:00:00Z"}});
        let (r, v) = decode("io.k8s.api.core.v1.Pod", pod.clone(), DecodePath::Json);
        assert_eq!(r, Ok(()));
        assert_eq!(v, pod);
        let crd = json!({"spec": {"group": "g", "names": {"plural": "xs", "kind": "X"}, "scope": "Namespaced",
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object",
                "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true, "default": {"a": null}}},
                "additionalProperties": false}}}]}});
        let (r, v) = decode(
            "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition",
            crd.clone(),
            DecodePath::Json,
        );
        assert_eq!(r, Ok(()));
        assert_eq!(v, crd);
    }
}
