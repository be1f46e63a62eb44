//! rk3s-printers: the server-side `meta.k8s.io/v1` `Table` rendering that
//! `kubectl get` asks for, with the same per-kind columns and cell values as
//! the upstream API server for the built-in kinds of Kubernetes 1.33.
//!
//! Objects are handled as `serde_json::Value` (JSON as stored). Kinds without
//! a dedicated printer get upstream's default table: `Name` + `Created At`.

mod kinds;
mod util;

use jiff::Timestamp;
use serde_json::{json, Map, Value};

/// A column of a Table (meta.k8s.io/v1 `TableColumnDefinition`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Column header as upstream names it (e.g. "Name", "Ready", "Port(s)").
    pub name: &'static str,
    /// OpenAPI type: "string", "integer", "number", "boolean" or "date".
    pub type_: &'static str,
    /// OpenAPI format: "name" for the column holding the object name, "" otherwise.
    pub format: &'static str,
    /// Human readable description of the column.
    pub description: String,
    /// 0 = always shown; 1 = shown only with `-o wide`.
    pub priority: i32,
}

impl Column {
    /// The `TableColumnDefinition` JSON of this column.
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

/// What each Table row carries in its `object` field (the `includeObject`
/// parameter of the Table request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncludeObject {
    /// No object in the rows.
    None,
    /// A `PartialObjectMetadata` holding the object's metadata (upstream default).
    #[default]
    Metadata,
    /// The full object.
    Object,
}

impl IncludeObject {
    /// Parses the `includeObject` query parameter ("None", "Metadata",
    /// "Object"; empty means the default). `None` for unknown values.
    pub fn from_param(value: &str) -> Option<Self> {
        match value {
            "None" => Some(Self::None),
            "" | "Metadata" => Some(Self::Metadata),
            "Object" => Some(Self::Object),
            _ => None,
        }
    }
}

/// Every (group, kind) that has a dedicated printer (other kinds use the
/// default `Name`/`Created At` table).
pub fn printer_kinds() -> &'static [(&'static str, &'static str)] {
    kinds::ALL_KINDS
}

/// Whether a dedicated printer exists for the kind (otherwise the default
/// `Name`/`Created At` table is used).
pub fn has_printer(group: &str, kind: &str) -> bool {
    kinds::lookup(group, kind).is_some()
}

/// Columns for a kind of a group ("" = core). Unknown kinds get upstream's
/// default table: `Name` + `Created At` (type date).
pub fn columns(group: &str, kind: &str) -> Vec<Column> {
    match kinds::lookup(group, kind) {
        Some((cols, _)) => cols,
        None => kinds::default_columns(),
    }
}

/// Cells of one row, in the same order and number as [`columns`] (all
/// columns, including the priority 1 ones that only `-o wide` shows).
pub fn cells(group: &str, kind: &str, obj: &Value, now: Timestamp) -> Vec<Value> {
    match kinds::lookup(group, kind) {
        Some((_, f)) => f(obj, now),
        None => kinds::default_cells(obj),
    }
}

/// Row conditions upstream attaches to a row (pods that have finished carry
/// a `Completed` condition); empty for everything else.
pub fn row_conditions(group: &str, kind: &str, obj: &Value) -> Vec<Value> {
    if !group.is_empty() || kind != "Pod" {
        return Vec::new();
    }
    match util::s(obj, &["status", "phase"]) {
        "Succeeded" => vec![json!({
            "type": "Completed", "status": "True", "reason": "Succeeded",
            "message": "The pod has completed successfully.",
        })],
        "Failed" => vec![json!({
            "type": "Completed", "status": "True", "reason": "Failed",
            "message": "The pod failed.",
        })],
        _ => Vec::new(),
    }
}

/// The `object` of a row for the given [`IncludeObject`] mode.
pub fn row_object(obj: &Value, include_object: IncludeObject) -> Option<Value> {
    match include_object {
        IncludeObject::None => None,
        IncludeObject::Object => Some(obj.clone()),
        IncludeObject::Metadata => Some(json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
        })),
    }
}

/// The whole `meta.k8s.io/v1` `Table` JSON for a list of objects of one kind.
pub fn table(
    group: &str,
    kind: &str,
    objects: &[Value],
    resource_version: &str,
    continue_token: Option<&str>,
    include_object: IncludeObject,
    now: Timestamp,
) -> Value {
    let mut metadata = Map::new();
    metadata.insert("resourceVersion".into(), Value::from(resource_version));
    if let Some(c) = continue_token.filter(|c| !c.is_empty()) {
        metadata.insert("continue".into(), Value::from(c));
    }
    let defs: Vec<Value> = columns(group, kind).iter().map(Column::to_json).collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let mut row = Map::new();
            row.insert("cells".into(), Value::Array(cells(group, kind, obj, now)));
            let conds = row_conditions(group, kind, obj);
            if !conds.is_empty() {
                row.insert("conditions".into(), Value::Array(conds));
            }
            if let Some(o) = row_object(obj, include_object) {
                row.insert("object".into(), o);
            }
            Value::Object(row)
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": Value::Object(metadata),
        "columnDefinitions": defs,
        "rows": rows,
    })
}

/// Human durations as upstream's `duration.HumanDuration` ("5s", "3m2s",
/// "12m", "4h5m", "3d4h", "2y"), used by AGE columns.
pub fn human_duration(d: std::time::Duration) -> String {
    util::human_seconds(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn now() -> Timestamp {
        "2024-05-01T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn human_duration_boundaries() {
        assert_eq!(human_duration(Duration::from_secs(5)), "5s");
        assert_eq!(human_duration(Duration::from_secs(119)), "119s");
        assert_eq!(human_duration(Duration::from_secs(120)), "2m");
        assert_eq!(human_duration(Duration::from_secs(182)), "3m2s");
        assert_eq!(human_duration(Duration::from_secs(12 * 60)), "12m");
        assert_eq!(human_duration(Duration::from_secs(4 * 3600 + 300)), "4h5m");
        assert_eq!(human_duration(Duration::from_secs(10 * 3600)), "10h");
        assert_eq!(
            human_duration(Duration::from_secs(3 * 86400 + 4 * 3600)),
            "3d4h"
        );
        assert_eq!(human_duration(Duration::from_secs(100 * 86400)), "100d");
        assert_eq!(human_duration(Duration::from_secs(2 * 365 * 86400)), "2y");
        assert_eq!(human_duration(Duration::from_millis(1999)), "1s");
    }

    #[test]
    fn default_table_for_unknown_kind() {
        let cols = columns("rbac.authorization.k8s.io", "Role");
        assert_eq!(cols.len(), 2);
        assert_eq!((cols[0].name, cols[0].format), ("Name", "name"));
        assert_eq!((cols[1].name, cols[1].type_), ("Created At", "date"));
        let obj = json!({"metadata": {"name": "r", "creationTimestamp": "2024-05-01T11:00:00Z"}});
        assert_eq!(
            cells("rbac.authorization.k8s.io", "Role", &obj, now()),
            vec![json!("r"), json!("2024-05-01T11:00:00Z")]
        );
        assert!(!has_printer(
            "apiextensions.k8s.io",
            "CustomResourceDefinition"
        ));
        assert!(has_printer("", "Pod"));
    }

    #[test]
    fn include_object_param() {
        assert_eq!(IncludeObject::from_param(""), Some(IncludeObject::Metadata));
        assert_eq!(
            IncludeObject::from_param("Object"),
            Some(IncludeObject::Object)
        );
        assert_eq!(IncludeObject::from_param("None"), Some(IncludeObject::None));
        assert_eq!(IncludeObject::from_param("x"), None);
    }

    #[test]
    fn table_json_shape() {
        let cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cfg", "namespace": "default", "creationTimestamp": "2024-05-01T11:58:00Z"},
            "data": {"a": "1", "b": "2"}, "binaryData": {"c": "AA=="}
        });
        let t = table(
            "",
            "ConfigMap",
            std::slice::from_ref(&cm),
            "42",
            Some("tok"),
            IncludeObject::Metadata,
            now(),
        );
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(t["metadata"]["resourceVersion"], "42");
        assert_eq!(t["metadata"]["continue"], "tok");
        let defs = t["columnDefinitions"].as_array().unwrap();
        assert_eq!(defs.len(), 3);
        assert_eq!(defs[0]["name"], "Name");
        assert_eq!(defs[0]["type"], "string");
        assert_eq!(defs[0]["format"], "name");
        assert_eq!(defs[0]["priority"], 0);
        assert!(defs[0]["description"].as_str().is_some());
        assert_eq!(defs[1]["name"], "Data");
        let row = &t["rows"][0];
        assert_eq!(row["cells"], json!(["cfg", 3, "2m"]));
        assert_eq!(row["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(row["object"]["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(row["object"]["metadata"]["name"], "cfg");
        assert!(row["object"].get("data").is_none());

        let t = table(
            "",
            "ConfigMap",
            std::slice::from_ref(&cm),
            "1",
            None,
            IncludeObject::Object,
            now(),
        );
        assert!(t["metadata"].get("continue").is_none());
        assert_eq!(t["rows"][0]["object"], cm);
        let t = table(
            "",
            "ConfigMap",
            &[cm],
            "1",
            None,
            IncludeObject::None,
            now(),
        );
        assert!(t["rows"][0].get("object").is_none());
    }

    #[test]
    fn finished_pod_row_has_completed_condition() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": []}, "status": {"phase": "Succeeded"}});
        let t = table("", "Pod", &[pod], "1", None, IncludeObject::None, now());
        assert_eq!(t["rows"][0]["conditions"][0]["type"], "Completed");
        assert_eq!(t["rows"][0]["conditions"][0]["reason"], "Succeeded");
    }

    #[test]
    fn every_printer_row_matches_its_columns() {
        let empty = json!({"metadata": {"name": "x"}});
        for (g, k) in kinds::ALL_KINDS {
            assert!(has_printer(g, k), "{g}/{k}");
            let cols = columns(g, k);
            let row = cells(g, k, &empty, now());
            assert_eq!(cols.len(), row.len(), "{g}/{k}");
            assert!(cols.iter().any(|c| c.name == "Name"), "{g}/{k}");
        }
    }
}
