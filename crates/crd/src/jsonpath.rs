//! The JSONPath subset that CRD printer columns and scale paths use:
//! `.spec.foo`, `.spec.items[0].name`, `.spec.items[*].name`, `['a.b']`,
//! `.status.conditions[?(@.type=="Ready")].status` (optionally wrapped in `{}`).

use serde_json::Value;

/// A JSONPath parse error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSONPath {path:?}: {message}")]
pub struct JsonPathError {
    /// The path.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    Index(i64),
    All,
    /// `[?(@.a.b OP literal)]`, or existence when `op` is None.
    Filter {
        path: Vec<String>,
        op: Option<(String, Value)>,
    },
}

/// A parsed JSONPath.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonPath {
    steps: Vec<Step>,
}

impl JsonPath {
    /// Parses a path such as `.status.conditions[?(@.type=="Ready")].status`.
    pub fn parse(path: &str) -> Result<JsonPath, JsonPathError> {
        let fail = |m: &str| JsonPathError {
            path: path.to_string(),
            message: m.to_string(),
        };
        let mut p = path.trim();
        if let Some(inner) = p.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
            p = inner.trim();
        }
        if p.is_empty() {
            return Err(fail("empty path"));
        }
        let b = p.as_bytes();
        let mut i = 0;
        let mut steps = Vec::new();
        while i < b.len() {
            match b[i] {
                b'.' => {
                    i += 1;
                    let start = i;
                    while i < b.len() && b[i] != b'.' && b[i] != b'[' {
                        i += 1;
                    }
                    let name = &p[start..i];
                    if name.is_empty() {
                        if i == b.len() && steps.is_empty() {
                            break; // "." alone: the whole object
                        }
                        return Err(fail("empty field name"));
                    }
                    if name == "*" {
                        steps.push(Step::All);
                    } else {
                        steps.push(Step::Field(name.to_string()));
                    }
                }
                b'[' => {
                    let end = find_close(p, i).ok_or_else(|| fail("unterminated ["))?;
                    let inner = p[i + 1..end].trim();
                    i = end + 1;
                    if inner == "*" {
                        steps.push(Step::All);
                    } else if let Some(q) = quoted(inner) {
                        steps.push(Step::Field(q));
                    } else if let Some(f) =
                        inner.strip_prefix("?(").and_then(|x| x.strip_suffix(')'))
                    {
                        steps.push(parse_filter(f).ok_or_else(|| fail("unsupported filter"))?);
                    } else {
                        let n: i64 = inner.parse().map_err(|_| fail("unsupported subscript"))?;
                        steps.push(Step::Index(n));
                    }
                }
                _ => return Err(fail("path must start with '.'")),
            }
        }
        Ok(JsonPath { steps })
    }

    /// Every value the path selects (missing keys select nothing).
    pub fn find<'a>(&self, v: &'a Value) -> Vec<&'a Value> {
        let mut cur = vec![v];
        for step in &self.steps {
            let mut next = Vec::new();
            for x in cur {
                match step {
                    Step::Field(f) => {
                        if let Some(y) = x.get(f) {
                            next.push(y);
                        }
                    }
                    Step::Index(n) => {
                        if let Some(a) = x.as_array() {
                            let idx = if *n < 0 { a.len() as i64 + n } else { *n };
                            if let Some(y) = usize::try_from(idx).ok().and_then(|i| a.get(i)) {
                                next.push(y);
                            }
                        }
                    }
                    Step::All => match x {
                        Value::Array(a) => next.extend(a.iter()),
                        Value::Object(m) => next.extend(m.values()),
                        _ => {}
                    },
                    Step::Filter { path, op } => {
                        if let Some(a) = x.as_array() {
                            for item in a {
                                let mut val = Some(item);
                                for f in path {
                                    val = val.and_then(|z| z.get(f));
                                }
                                let keep = match (val, op) {
                                    (Some(v), None) => !v.is_null(),
                                    (Some(v), Some((o, lit))) => compare(v, o, lit),
                                    (None, _) => false,
                                };
                                if keep {
                                    next.push(item);
                                }
                            }
                        }
                    }
                }
            }
            cur = next;
        }
        cur
    }
}

fn find_close(p: &str, open: usize) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut depth = 0;
    for (j, c) in p[open..].char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '[') => depth += 1,
            (None, ']') => {
                depth -= 1;
                if depth == 0 {
                    return Some(open + j);
                }
            }
            _ => {}
        }
    }
    None
}

fn quoted(s: &str) -> Option<String> {
    let s = s.trim();
    for q in ['\'', '"'] {
        if s.len() >= 2 && s.starts_with(q) && s.ends_with(q) {
            return Some(s[1..s.len() - 1].to_string());
        }
    }
    None
}

fn parse_filter(f: &str) -> Option<Step> {
    let f = f.trim();
    let ops = ["==", "!=", "<=", ">=", "<", ">"];
    let (lhs, op) = match ops.iter().find_map(|o| f.find(o).map(|i| (i, *o))) {
        Some((i, o)) => (&f[..i], Some((o.to_string(), f[i + o.len()..].trim()))),
        None => (f, None),
    };
    let lhs = lhs.trim().strip_prefix('@')?;
    let path: Vec<String> = lhs
        .split('.')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let op = match op {
        None => None,
        Some((o, lit)) => {
            let v = match quoted(lit) {
                Some(s) => Value::String(s),
                None => serde_json::from_str(lit).ok()?,
            };
            Some((o, v))
        }
    };
    Some(Step::Filter { path, op })
}

fn compare(v: &Value, op: &str, lit: &Value) -> bool {
    let ord = match (v, lit) {
        (Value::Number(a), Value::Number(b)) => a
            .as_f64()
            .zip(b.as_f64())
            .and_then(|(a, b)| a.partial_cmp(&b)),
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        (a, b) if a == b => Some(std::cmp::Ordering::Equal),
        _ => None,
    };
    use std::cmp::Ordering::*;
    match op {
        "==" => ord == Some(Equal),
        "!=" => ord != Some(Equal),
        "<" => ord == Some(Less),
        ">" => ord == Some(Greater),
        "<=" => matches!(ord, Some(Less | Equal)),
        ">=" => matches!(ord, Some(Greater | Equal)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selects_fields_indices_and_filters() {
        let o = json!({"spec": {"a.b": 1, "items": [{"n": "x"}, {"n": "y"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Other", "status": "False"}]}});
        let get = |p: &str| {
            JsonPath::parse(p).map(|jp| jp.find(&o).into_iter().cloned().collect::<Vec<_>>())
        };
        assert_eq!(get(".spec.items[1].n"), Ok(vec![json!("y")]));
        assert_eq!(get("{.spec.items[*].n}"), Ok(vec![json!("x"), json!("y")]));
        assert_eq!(get(".spec['a.b']"), Ok(vec![json!(1)]));
        assert_eq!(
            get(r#".status.conditions[?(@.type=="Ready")].status"#),
            Ok(vec![json!("True")])
        );
        assert_eq!(
            get(".status.conditions[?(@.type=='Other')].status"),
            Ok(vec![json!("False")])
        );
        assert_eq!(get(".spec.nosuch"), Ok(vec![]));
        assert_eq!(get(".spec.items[-1].n"), Ok(vec![json!("y")]));
        assert!(JsonPath::parse("spec").is_err());
        assert!(JsonPath::parse(".spec[").is_err());
        assert!(JsonPath::parse(".spec..x").is_err());
    }
}
