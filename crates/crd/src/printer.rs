//! `additionalPrinterColumns` → Table columns and cells, as upstream's
//! customresource table convertor.

use jiff::Timestamp;
use serde_json::{json, Value};

use crate::jsonpath::JsonPath;
use crate::util::{go_number, str_at};

/// One Table column of a custom resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrinterColumn {
    /// Header, e.g. `Replicas`.
    pub name: String,
    /// `string`, `integer`, `number`, `boolean` or `date`.
    pub type_: String,
    /// OpenAPI format (`name` for the Name column).
    pub format: String,
    /// Description shown by `kubectl explain`-like tools.
    pub description: String,
    /// 0 = always shown, >0 = `-o wide` only.
    pub priority: i32,
    /// The JSONPath of the cell value, e.g. `.spec.replicas`.
    pub json_path: String,
}

impl PrinterColumn {
    /// The `TableColumnDefinition` JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "type": self.type_,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        })
    }
}

/// The Table columns of `version`: `Name` first, then the version's
/// `additionalPrinterColumns` (or the top-level ones; when none are set, the
/// `Age` column that upstream's CRD defaulting adds).
pub fn printer_columns(crd: &Value, version: &str) -> Vec<PrinterColumn> {
    let name_desc = rk3s_printers::columns("", "")
        .into_iter()
        .next()
        .map(|c| c.description)
        .unwrap_or_default();
    let mut out = vec![PrinterColumn {
        name: "Name".into(),
        type_: "string".into(),
        format: "name".into(),
        description: name_desc,
        priority: 0,
        json_path: ".metadata.name".into(),
    }];
    let per_version = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .and_then(|vs| vs.iter().find(|v| str_at(v, &["name"]) == version))
        .and_then(|v| v.get("additionalPrinterColumns"))
        .and_then(Value::as_array);
    let cols = per_version
        .or_else(|| {
            crd.pointer("/spec/additionalPrinterColumns")
                .and_then(Value::as_array)
        })
        .filter(|c| !c.is_empty());
    match cols {
        Some(cols) => {
            for c in cols {
                let jp = c.get("jsonPath").or_else(|| c.get("JSONPath")).and_then(Value::as_str).unwrap_or("");
                let desc = match str_at(c, &["description"]) {
                    "" => format!("Custom resource definition column (in JSONPath format): {jp}"),
                    d => d.to_string(),
                };
                out.push(PrinterColumn {
                    name: str_at(c, &["name"]).to_string(),
                    type_: str_at(c, &["type"]).to_string(),
                    format: str_at(c, &["format"]).to_string(),
                    description: desc,
                    priority: c.get("priority").and_then(Value::as_i64).and_then(|p| i32::try_from(p).ok()).unwrap_or(0),
                    json_path: jp.to_string(),
                });
            }
        }
        None => out.push(PrinterColumn {
            name: "Age".into(),
            type_: "date".into(),
            format: String::new(),
            description: "Custom resource definition column (in JSONPath format): .metadata.creationTimestamp".into(),
            priority: 0,
            json_path: ".metadata.creationTimestamp".into(),
        }),
    }
    out
}

/// The cells of one object for `columns` (as [`printer_columns`] returns them):
/// the name, then each column's value; `date` columns become ages relative to
/// `now` (`5m`), missing values null.
pub fn printer_cells(columns: &[PrinterColumn], obj: &Value, now: Timestamp) -> Vec<Value> {
    columns
        .iter()
        .map(|c| {
            if c.format == "name" && c.json_path == ".metadata.name" {
                return Value::from(str_at(obj, &["metadata", "name"]));
            }
            let Ok(jp) = JsonPath::parse(&c.json_path) else {
                return Value::Null;
            };
            let Some(v) = jp.find(obj).into_iter().next() else {
                return Value::Null;
            };
            cell(&c.type_, v, now)
        })
        .collect()
}

fn cell(ty: &str, v: &Value, now: Timestamp) -> Value {
    match (ty, v) {
        (_, Value::Null) => Value::Null,
        ("string", Value::String(s)) => Value::from(s.as_str()),
        ("string", Value::Number(n)) => Value::from(go_number(n)),
        ("string", Value::Bool(b)) => Value::from(b.to_string()),
        ("string", other) => Value::from(other.to_string()),
        ("integer", Value::Number(n)) => match n.as_i64() {
            Some(i) => Value::from(i),
            None => n
                .as_f64()
                .map(|f| Value::from(f.trunc() as i64))
                .unwrap_or(Value::Null),
        },
        ("number", Value::Number(n)) => n.as_f64().map(Value::from).unwrap_or(Value::Null),
        ("boolean", Value::Bool(b)) => Value::Bool(*b),
        ("date", Value::String(s)) => match s.parse::<Timestamp>() {
            Ok(t) => {
                let secs = now.as_second().saturating_sub(t.as_second()).max(0);
                Value::from(rk3s_printers::human_duration(
                    std::time::Duration::from_secs(secs as u64),
                ))
            }
            Err(_) => Value::from("<invalid>"),
        },
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::tests::crontab_crd;

    fn now() -> Timestamp {
        "2024-05-01T12:00:00Z"
            .parse()
            .unwrap_or(Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn crontab_columns_and_cells() {
        let cols = printer_columns(&crontab_crd(), "v1");
        let names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, vec!["Name", "Spec", "Replicas", "Age"]);
        assert_eq!(cols[0].format, "name");
        assert_eq!(
            cols[2].description,
            "Custom resource definition column (in JSONPath format): .spec.replicas"
        );
        assert_eq!(cols[3].to_json()["type"], json!("date"));
        let obj = json!({"metadata": {"name": "c1", "creationTimestamp": "2024-05-01T11:55:00Z"},
            "spec": {"cronSpec": "* * * * */5", "replicas": 3}});
        assert_eq!(
            printer_cells(&cols, &obj, now()),
            vec![json!("c1"), json!("* * * * */5"), json!(3), json!("5m")]
        );
        let bare = json!({"metadata": {"name": "c2", "creationTimestamp": "garbage"}});
        assert_eq!(
            printer_cells(&cols, &bare, now()),
            vec![json!("c2"), Value::Null, Value::Null, json!("<invalid>")]
        );
    }

    #[test]
    fn default_columns_are_name_and_age() {
        let cols = printer_columns(&crontab_crd(), "v1beta1");
        let names: Vec<(&str, &str)> = cols
            .iter()
            .map(|c| (c.name.as_str(), c.json_path.as_str()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("Name", ".metadata.name"),
                ("Age", ".metadata.creationTimestamp")
            ]
        );
        assert!(!cols[0].description.is_empty());
    }

    #[test]
    fn typed_cells() {
        assert_eq!(cell("integer", &json!(2.7), now()), json!(2));
        assert_eq!(cell("number", &json!(2), now()), json!(2.0));
        assert_eq!(cell("string", &json!(2), now()), json!("2"));
        assert_eq!(cell("boolean", &json!("x"), now()), Value::Null);
        assert_eq!(cell("string", &json!({"a": 1}), now()), json!("{\"a\":1}"));
    }
}
