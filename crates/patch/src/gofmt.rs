//! Rendering of JSON values the way Go's `%v` verb prints decoded JSON
//! (`map[k:v]`, `[a b]`, bare strings), so that error messages read like upstream's.

use serde_json::Value;

/// Formats `v` like Go's `fmt.Sprintf("%v", v)` for a value decoded by `encoding/json`.
pub(crate) fn go_fmt(v: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, v);
    out
}

fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("<nil>"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&format_number(n)),
        Value::String(s) => out.push_str(s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            // Go prints map keys sorted.
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push_str("map[");
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                out.push_str(k);
                out.push(':');
                if let Some(val) = map.get(k.as_str()) {
                    write_value(out, val);
                }
            }
            out.push(']');
        }
    }
}

/// Go decodes every JSON number into a float64 and prints it with `%v`
/// (shortest representation, exponent form from 1e21 on, as `strconv` 'g' with
/// the exponent threshold of 21 digits used by `%v`).
fn format_number(n: &serde_json::Number) -> String {
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 1e21 => format!("{}", f as i128),
        Some(f) => {
            let s = format!("{f}");
            if s.contains('e') {
                format!("{f:e}")
            } else {
                s
            }
        }
        None => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn formats_maps_sorted_like_go() {
        let v = json!({"value": "b", "name": 1, "list": [1, "x", null], "ok": true});
        assert_eq!(go_fmt(&v), "map[list:[1 x <nil>] name:1 ok:true value:b]");
    }

    #[test]
    fn formats_numbers() {
        assert_eq!(go_fmt(&json!(8080)), "8080");
        assert_eq!(go_fmt(&json!(1.5)), "1.5");
        assert_eq!(go_fmt(&json!("s")), "s");
    }
}
