//! Small helpers: Go-style quoting for upstream-identical messages, JSON access.

use serde_json::Value;

pub(crate) use rk3s_core::{go_quote, go_quote_list};

/// The string at a JSON pointer-like path of object keys, or "".
pub(crate) fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(next) => cur = next,
            None => return "",
        }
    }
    cur.as_str().unwrap_or("")
}

/// The list of strings at `key` (non-strings are skipped).
pub(crate) fn str_list(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The array at `key`, or an empty slice.
pub(crate) fn arr<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_like_go() {
        assert_eq!(go_quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(go_quote(""), r#""""#);
        assert_eq!(
            go_quote_list(&["system:authenticated".into(), "x".into()]),
            r#"["system:authenticated" "x"]"#
        );
        assert_eq!(go_quote_list(&[]), "[]");
    }

    #[test]
    fn json_access() {
        let v = serde_json::json!({"a": {"b": "c"}, "l": ["x", 1, "y"]});
        assert_eq!(str_at(&v, &["a", "b"]), "c");
        assert_eq!(str_at(&v, &["a", "z"]), "");
        assert_eq!(str_list(&v, "l"), vec!["x", "y"]);
        assert!(arr(&v, "nope").is_empty());
    }
}
