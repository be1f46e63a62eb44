//! Small helpers: JSON access, field paths and error constructors.

use crate::errors::{ErrorKind, FieldError};
use serde_json::{json, Value};

pub(crate) type Errs = Vec<FieldError>;

/// `path.child`
pub(crate) fn child(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// `path[i]`
pub(crate) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// `path[key]`
pub(crate) fn key(path: &str, k: &str) -> String {
    format!("{path}[{k}]")
}

/// A non-null member.
pub(crate) fn get<'a>(v: Option<&'a Value>, k: &str) -> Option<&'a Value> {
    v.and_then(|v| v.get(k)).filter(|x| !x.is_null())
}

/// A string member ("" when absent).
pub(crate) fn gstr<'a>(v: Option<&'a Value>, k: &str) -> &'a str {
    get(v, k).and_then(Value::as_str).unwrap_or("")
}

/// An integer member.
pub(crate) fn gint(v: Option<&Value>, k: &str) -> Option<i64> {
    get(v, k).and_then(Value::as_i64)
}

/// An array member (empty when absent).
pub(crate) fn garr<'a>(v: Option<&'a Value>, k: &str) -> &'a [Value] {
    get(v, k)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// An object member's entries (empty when absent).
pub(crate) fn gobj<'a>(v: Option<&'a Value>, k: &str) -> Vec<(&'a String, &'a Value)> {
    get(v, k)
        .and_then(Value::as_object)
        .map(|m| m.iter().collect())
        .unwrap_or_default()
}

/// A bool member (false when absent).
pub(crate) fn gbool(v: Option<&Value>, k: &str) -> bool {
    get(v, k).and_then(Value::as_bool).unwrap_or(false)
}

pub(crate) fn required(errs: &mut Errs, path: &str, detail: &str) {
    errs.push(FieldError::new(ErrorKind::Required, path, None, detail));
}

pub(crate) fn invalid(errs: &mut Errs, path: &str, value: Value, detail: impl Into<String>) {
    errs.push(FieldError::new(
        ErrorKind::Invalid,
        path,
        Some(value),
        detail,
    ));
}

pub(crate) fn forbidden(errs: &mut Errs, path: &str, detail: impl Into<String>) {
    errs.push(FieldError::new(ErrorKind::Forbidden, path, None, detail));
}

pub(crate) fn duplicate(errs: &mut Errs, path: &str, value: Value) {
    errs.push(FieldError::new(ErrorKind::Duplicate, path, Some(value), ""));
}

pub(crate) fn not_found(errs: &mut Errs, path: &str, value: Value) {
    errs.push(FieldError::new(ErrorKind::NotFound, path, Some(value), ""));
}

pub(crate) fn too_long(errs: &mut Errs, path: &str, max: usize) {
    errs.push(FieldError::new(
        ErrorKind::TooLong,
        path,
        Some(json!("<value omitted>")),
        format!("may not be more than {max} bytes"),
    ));
}

pub(crate) fn not_supported(errs: &mut Errs, path: &str, value: Value, supported: &[&str]) {
    let detail = if supported.is_empty() {
        String::new()
    } else {
        let q: Vec<String> = supported
            .iter()
            .map(|s| crate::errors::go_quote(s))
            .collect();
        format!("supported values: {}", q.join(", "))
    };
    errs.push(FieldError::new(
        ErrorKind::NotSupported,
        path,
        Some(value),
        detail,
    ));
}

/// Checks an enum string; "" is Required (when `required`), unknown is NotSupported.
pub(crate) fn check_enum(
    errs: &mut Errs,
    v: Option<&Value>,
    k: &str,
    path: &str,
    allowed: &[&str],
    required_: bool,
) {
    match get(v, k) {
        None => {
            if required_ {
                required(errs, &child(path, k), "")
            }
        }
        Some(Value::String(s)) if s.is_empty() => {
            if required_ {
                required(errs, &child(path, k), "")
            }
        }
        Some(Value::String(s)) if allowed.contains(&s.as_str()) => {}
        Some(other) => not_supported(errs, &child(path, k), other.clone(), allowed),
    }
}

/// `must be greater than or equal to 0` for a present negative integer.
pub(crate) fn nonnegative(errs: &mut Errs, v: Option<&Value>, k: &str, path: &str) {
    if let Some(n) = gint(v, k) {
        if n < 0 {
            invalid(
                errs,
                &child(path, k),
                json!(n),
                "must be greater than or equal to 0",
            );
        }
    }
}

/// `must be greater than 0` for a present non-positive integer.
pub(crate) fn positive(errs: &mut Errs, v: Option<&Value>, k: &str, path: &str) {
    if let Some(n) = gint(v, k) {
        if n <= 0 {
            invalid(errs, &child(path, k), json!(n), "must be greater than 0");
        }
    }
}

/// Upstream's immutable-field check.
pub(crate) fn immutable(errs: &mut Errs, new: Option<&Value>, old: Option<&Value>, path: &str) {
    let n = new.filter(|v| !v.is_null());
    let o = old.filter(|v| !v.is_null());
    if !semantic_eq(n, o) {
        invalid(
            errs,
            path,
            n.cloned().unwrap_or(Value::Null),
            "field is immutable",
        );
    }
}

/// Equality where absent, null, empty strings/arrays/objects are alike.
pub(crate) fn semantic_eq(a: Option<&Value>, b: Option<&Value>) -> bool {
    fn empty(v: Option<&Value>) -> bool {
        match v {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.is_empty(),
            Some(Value::Array(a)) => a.is_empty(),
            Some(Value::Object(o)) => o.is_empty(),
            _ => false,
        }
    }
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            x.iter().all(|(k, v)| semantic_eq(Some(v), y.get(k)))
                && y.iter().all(|(k, v)| semantic_eq(x.get(k), Some(v)))
        }
        (Some(Value::Array(x)), Some(Value::Array(y))) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| semantic_eq(Some(p), Some(q)))
        }
        _ if empty(a) && empty(b) => true,
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// Validates an int-or-string that must be a non-negative int or a percent.
pub(crate) fn validate_int_or_percent(errs: &mut Errs, v: &Value, path: &str) {
    match v {
        Value::String(s) => {
            for m in crate::names::is_valid_percent(s) {
                invalid(errs, path, v.clone(), m);
            }
        }
        Value::Number(_) => {
            if v.as_i64().is_none_or(|n| n < 0) {
                invalid(errs, path, v.clone(), "must be greater than or equal to 0");
            }
        }
        _ => invalid(
            errs,
            path,
            v.clone(),
            "must be an integer or percentage (e.g '5%')",
        ),
    }
}

/// Percent value of an int-or-percent, if a percent.
pub(crate) fn percent_of(v: &Value) -> Option<i64> {
    v.as_str()
        .and_then(|s| s.strip_suffix('%'))
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semantic_equality_ignores_empties() {
        assert!(semantic_eq(None, Some(&json!(""))));
        assert!(semantic_eq(
            Some(&json!({"a": 1, "b": null})),
            Some(&json!({"a": 1}))
        ));
        assert!(!semantic_eq(Some(&json!({"a": 1})), Some(&json!({"a": 2}))));
        assert!(!semantic_eq(Some(&json!("x")), None));
    }

    #[test]
    fn enum_check() {
        let mut e = Vec::new();
        let v = json!({"p": "Sometimes"});
        check_enum(&mut e, Some(&v), "p", "spec", &["Always", "Never"], true);
        assert_eq!(
            e[0].to_string(),
            "spec.p: Unsupported value: \"Sometimes\": supported values: \"Always\", \"Never\""
        );
    }
}
