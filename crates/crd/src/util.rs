//! Small helpers: field errors, Go-like rendering of values.

use rk3s_validation::{ErrorKind, FieldError};
use serde_json::{Map, Value};

/// Key under which the validation crate renders a value verbatim (Go `%#v` texts).
const GO_REPR: &str = "\u{0}go";

pub(crate) fn err(
    kind: ErrorKind,
    field: &str,
    value: Option<Value>,
    detail: impl Into<String>,
) -> FieldError {
    FieldError {
        kind,
        field: field.to_string(),
        value,
        detail: detail.into(),
    }
}

pub(crate) fn required(field: &str, detail: impl Into<String>) -> FieldError {
    err(ErrorKind::Required, field, None, detail)
}

pub(crate) fn invalid(field: &str, value: Value, detail: impl Into<String>) -> FieldError {
    err(ErrorKind::Invalid, field, Some(value), detail)
}

pub(crate) fn forbidden(field: &str, detail: impl Into<String>) -> FieldError {
    err(ErrorKind::Forbidden, field, None, detail)
}

pub(crate) fn not_supported(field: &str, value: Value, supported: &[&str]) -> FieldError {
    let quoted: Vec<String> = supported.iter().map(|s| go_quote(s)).collect();
    err(
        ErrorKind::NotSupported,
        field,
        Some(value),
        format!("supported values: {}", quoted.join(", ")),
    )
}

/// A value rendered verbatim in the message (for Go struct renderings).
pub(crate) fn go_repr(text: impl Into<String>) -> Value {
    let mut m = Map::new();
    m.insert(GO_REPR.to_string(), Value::String(text.into()));
    Value::Object(m)
}

pub(crate) use rk3s_core::go_quote;

/// Go's `%v` of a float64 (JSON numbers are float64 in go-openapi's messages).
pub(crate) fn go_float(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e21 {
        format!("{}", f as i128)
    } else if f.abs() >= 1e21 || (f != 0.0 && f.abs() < 1e-4) {
        let s = format!("{:e}", f);
        // Rust: 1e21 / 1.5e-5; Go: 1e+21 / 1.5e-05
        match s.split_once('e') {
            Some((m, e)) => {
                let (sign, digits) = match e.strip_prefix('-') {
                    Some(d) => ('-', d),
                    None => ('+', e),
                };
                format!("{}e{}{:0>2}", m, sign, digits)
            }
            None => s,
        }
    } else {
        format!("{}", f)
    }
}

/// Go's `%v` of a JSON number.
pub(crate) fn go_number(n: &serde_json::Number) -> String {
    if n.is_i64() || n.is_u64() {
        n.to_string()
    } else {
        go_float(n.as_f64().unwrap_or(0.0))
    }
}

/// The JSON type name of a value as go-openapi reports it.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `obj[a][b]...` as a string ("" when missing).
pub(crate) fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(x) => cur = x,
            None => return "",
        }
    }
    cur.as_str().unwrap_or("")
}

/// `obj[a][b]...` as a list of strings (empty when missing).
pub(crate) fn strings_at(v: &Value, path: &[&str]) -> Vec<String> {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(x) => cur = x,
            None => return Vec::new(),
        }
    }
    cur.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Appends an object key to a field path (`spec` + `foo` = `spec.foo`).
pub(crate) fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{}.{}", path, key)
    }
}

/// Appends a map key in upstream's `Key` form (`properties[spec]`).
pub(crate) fn key(path: &str, key: &str) -> String {
    format!("{}[{}]", path, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_number_formats() {
        assert_eq!(go_float(10.0), "10");
        assert_eq!(go_float(1.5), "1.5");
        assert_eq!(go_float(1e21), "1e+21");
        assert_eq!(go_float(0.00001), "1e-05");
        assert_eq!(go_number(&serde_json::Number::from(-3)), "-3");
    }

    #[test]
    fn paths_and_types() {
        assert_eq!(child("", "spec"), "spec");
        assert_eq!(child("spec", "x"), "spec.x");
        assert_eq!(key("a.properties", "spec"), "a.properties[spec]");
        assert_eq!(type_name(&serde_json::json!(1)), "integer");
        assert_eq!(type_name(&serde_json::json!(1.5)), "number");
        assert_eq!(type_name(&serde_json::json!(null)), "null");
    }
}
