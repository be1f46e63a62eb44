//! Field errors with upstream's (`k8s.io/apimachinery/pkg/util/validation/field`) texts.

use serde_json::Value;
use std::fmt;

/// The kind of a field error, as upstream's `field.ErrorType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A required value is missing (`FieldValueRequired`).
    Required,
    /// A value is malformed (`FieldValueInvalid`).
    Invalid,
    /// A value is not one of an enumeration (`FieldValueNotSupported`).
    NotSupported,
    /// A value that must be unique is repeated (`FieldValueDuplicate`).
    Duplicate,
    /// A value is not allowed here (`FieldValueForbidden`).
    Forbidden,
    /// A value is too long (`FieldValueTooLong`).
    TooLong,
    /// A list has too many items (`FieldValueTooMany`).
    TooMany,
    /// A referenced value was not found (`FieldValueNotFound`).
    NotFound,
    /// An internal error (`InternalError`).
    Internal,
}

impl ErrorKind {
    /// The canonical text of the kind, e.g. `Required value`.
    pub fn text(self) -> &'static str {
        match self {
            ErrorKind::Required => "Required value",
            ErrorKind::Invalid => "Invalid value",
            ErrorKind::NotSupported => "Unsupported value",
            ErrorKind::Duplicate => "Duplicate value",
            ErrorKind::Forbidden => "Forbidden",
            ErrorKind::TooLong => "Too long",
            ErrorKind::TooMany => "Too many",
            ErrorKind::NotFound => "Not found",
            ErrorKind::Internal => "Internal error",
        }
    }
}

/// One field error, as upstream's `field.Error`.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// What is wrong.
    pub kind: ErrorKind,
    /// The field path, e.g. `spec.template.spec.containers[0].image`.
    pub field: String,
    /// The offending value, when the error shows one.
    pub value: Option<Value>,
    /// Extra explanation appended after the value.
    pub detail: String,
}

impl FieldError {
    /// The Status cause `reason`, e.g. `FieldValueRequired`.
    pub fn reason(&self) -> &'static str {
        match self.kind {
            ErrorKind::Required => "FieldValueRequired",
            ErrorKind::Invalid => "FieldValueInvalid",
            ErrorKind::NotSupported => "FieldValueNotSupported",
            ErrorKind::Duplicate => "FieldValueDuplicate",
            ErrorKind::Forbidden => "FieldValueForbidden",
            ErrorKind::TooLong => "FieldValueTooLong",
            ErrorKind::TooMany => "FieldValueTooMany",
            ErrorKind::NotFound => "FieldValueNotFound",
            ErrorKind::Internal => "InternalError",
        }
    }

    /// Upstream's message without the field, e.g.
    /// `Invalid value: "Foo_Bar": a lowercase RFC 1123 subdomain must consist of ...`.
    pub fn message(&self) -> String {
        let mut s = match self.kind {
            ErrorKind::Required
            | ErrorKind::Forbidden
            | ErrorKind::TooLong
            | ErrorKind::Internal => self.kind.text().to_string(),
            _ => match &self.value {
                None => self.kind.text().to_string(),
                Some(v) => format!("{}: {}", self.kind.text(), go_value(v)),
            },
        };
        if !self.detail.is_empty() {
            s.push_str(": ");
            s.push_str(&self.detail);
        }
        s
    }

    pub(crate) fn new(
        kind: ErrorKind,
        field: &str,
        value: Option<Value>,
        detail: impl Into<String>,
    ) -> Self {
        FieldError {
            kind,
            field: field.to_string(),
            value,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message())
    }
}

impl std::error::Error for FieldError {}

/// The `message` of upstream's 422 Status for these errors:
/// `<Kind>[.<group>] "<name>" is invalid: <error>` or `... is invalid: [<e1>, <e2>]`.
/// `qualified_kind` is e.g. `Deployment.apps` or `Pod`.
pub fn invalid_status_message(qualified_kind: &str, name: &str, errs: &[FieldError]) -> String {
    let mut seen = std::collections::HashSet::new();
    let texts: Vec<String> = errs
        .iter()
        .map(|e| e.to_string())
        .filter(|t| seen.insert(t.clone()))
        .collect();
    let agg = match texts.len() {
        0 => String::new(),
        1 => texts[0].clone(),
        _ => format!("[{}]", texts.join(", ")),
    };
    format!("{} {} is invalid: {}", qualified_kind, go_quote(name), agg)
}

pub(crate) use rk3s_core::go_quote;

/// A bad value wrapped as `{GO_REPR: "<text>"}` is rendered verbatim (used for Go
/// struct renderings such as `v1.LabelSelector{...}`).
pub(crate) const GO_REPR: &str = "\u{0}go";

/// Renders a bad value as upstream's error body does (Go `%v` for scalars, `%q` for
/// strings, `%#v` for maps and slices of strings).
fn go_value(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => go_quote(s),
        Value::Object(m) if m.len() == 1 && m.get(GO_REPR).is_some_and(Value::is_string) => {
            m[GO_REPR].as_str().unwrap_or_default().to_string()
        }
        Value::Object(m) if m.values().all(|x| x.is_string()) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let items: Vec<String> = keys
                .iter()
                .map(|k| {
                    format!(
                        "{}:{}",
                        go_quote(k),
                        go_quote(m[k.as_str()].as_str().unwrap_or_default())
                    )
                })
                .collect();
            format!("map[string]string{{{}}}", items.join(", "))
        }
        Value::Array(a) if a.iter().all(|x| x.is_string()) => {
            let items: Vec<String> = a
                .iter()
                .map(|x| go_quote(x.as_str().unwrap_or_default()))
                .collect();
            format!("[]string{{{}}}", items.join(", "))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn messages_follow_upstream_formats() {
        let e = FieldError::new(ErrorKind::Required, "spec.containers[0].image", None, "");
        assert_eq!(e.message(), "Required value");
        assert_eq!(e.reason(), "FieldValueRequired");
        assert_eq!(e.to_string(), "spec.containers[0].image: Required value");
        let e = FieldError::new(
            ErrorKind::NotSupported,
            "spec.restartPolicy",
            Some(json!("Sometimes")),
            "supported values: \"Always\"",
        );
        assert_eq!(
            e.message(),
            "Unsupported value: \"Sometimes\": supported values: \"Always\""
        );
        let e = FieldError::new(
            ErrorKind::Invalid,
            "spec.replicas",
            Some(json!(-1)),
            "must be greater than or equal to 0",
        );
        assert_eq!(
            e.message(),
            "Invalid value: -1: must be greater than or equal to 0"
        );
        let e = FieldError::new(
            ErrorKind::TooLong,
            "metadata.annotations",
            Some(json!("x")),
            "may not be more than 262144 bytes",
        );
        assert_eq!(e.message(), "Too long: may not be more than 262144 bytes");
    }

    #[test]
    fn maps_render_like_go() {
        let e = FieldError::new(
            ErrorKind::Invalid,
            "l",
            Some(json!({"b": "2", "a": "1"})),
            "d",
        );
        assert_eq!(
            e.message(),
            "Invalid value: map[string]string{\"a\":\"1\", \"b\":\"2\"}: d"
        );
        assert_eq!(go_quote("a\"b\n"), "\"a\\\"b\\n\"");
    }

    #[test]
    fn status_message_aggregates() {
        let a = FieldError::new(ErrorKind::Required, "a", None, "");
        let b = FieldError::new(ErrorKind::Required, "b", None, "");
        assert_eq!(
            invalid_status_message("Pod", "p", std::slice::from_ref(&a)),
            "Pod \"p\" is invalid: a: Required value"
        );
        assert_eq!(
            invalid_status_message("Deployment.apps", "d", &[a.clone(), b, a]),
            "Deployment.apps \"d\" is invalid: [a: Required value, b: Required value]"
        );
    }
}
