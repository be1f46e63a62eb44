//! How a response is rendered ([`Output`], from the `Accept` header): plain JSON,
//! `meta.k8s.io/v1` `Table` (via `rk3s-printers`) or `PartialObjectMetadata(List)`.

use rk3s_api::ResourceInfo;
use serde_json::{json, Map, Value};

use crate::body::{self, Response};
use crate::object;
use crate::request::Query;

/// How a response is rendered, from the `Accept` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Plain JSON objects.
    Json,
    /// `meta.k8s.io/v1` `Table` (kubectl get), with `includeObject`.
    Table(rk3s_printers::IncludeObject),
    /// `PartialObjectMetadata(List)`.
    PartialMetadata,
}

impl Output {
    /// Picks the rendering from the Accept header and query.
    pub fn negotiate(headers: &http::HeaderMap, query: &Query) -> Output {
        let accept = headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        for range in accept.split(',') {
            let mut parts = range.split(';').map(|s| s.trim());
            let mt = parts.next().unwrap_or("");
            if mt != "application/json" && mt != "*/*" && mt != "application/*" {
                continue;
            }
            let mut as_ = "";
            let mut g = "";
            for p in parts {
                if let Some(v) = p.strip_prefix("as=") {
                    as_ = v;
                } else if let Some(v) = p.strip_prefix("g=") {
                    g = v;
                }
            }
            match (as_, g) {
                ("Table", "meta.k8s.io") => {
                    let inc = match query.get("includeObject") {
                        Some("None") => rk3s_printers::IncludeObject::None,
                        Some("Object") => rk3s_printers::IncludeObject::Object,
                        _ => rk3s_printers::IncludeObject::Metadata,
                    };
                    return Output::Table(inc);
                }
                ("PartialObjectMetadata" | "PartialObjectMetadataList", "meta.k8s.io") => {
                    return Output::PartialMetadata
                }
                ("", _) => return Output::Json,
                _ => continue,
            }
        }
        Output::Json
    }

    /// Whether upstream serves a `Table` for the resource (or subresource): only
    /// storages that list (or convert to tables themselves) have a Table convertor;
    /// create-only resources (reviews, `bindings`) and the `binding`, `eviction` and
    /// `token` subresources have none.
    pub fn has_table(res: &ResourceInfo, subresource: Option<&str>) -> bool {
        match subresource {
            Some("binding" | "eviction" | "token") => false,
            Some(_) => true,
            None => res.has_verb("list"),
        }
    }

    /// Whether the Accept header asks only for `meta.k8s.io` Tables: every media range
    /// names `as=Table;g=meta.k8s.io` (so there is no fallback to plain objects).
    pub fn only_table_accepted(headers: &http::HeaderMap) -> bool {
        let accept = headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mut any = false;
        for range in accept.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let params: Vec<&str> = range.split(';').skip(1).map(str::trim).collect();
            if !(params.contains(&"as=Table") && params.contains(&"g=meta.k8s.io")) {
                return false;
            }
            any = true;
        }
        any
    }

    /// Renders one object.
    pub fn one(&self, res: &ResourceInfo, obj: Value, code: u16) -> Response {
        match self {
            Output::Json => body::json(code, &obj),
            Output::Table(inc) => {
                let rv = object::meta_str(&obj, "resourceVersion")
                    .unwrap_or("")
                    .to_string();
                let t = rk3s_printers::table(
                    &res.group,
                    &res.kind,
                    std::slice::from_ref(&obj),
                    &rv,
                    None,
                    *inc,
                    jiff::Timestamp::now(),
                );
                body::json(code, &t)
            }
            Output::PartialMetadata => body::json(code, &partial_metadata(&obj)),
        }
    }

    /// Renders a list.
    pub fn list(
        &self,
        res: &ResourceInfo,
        items: Vec<Value>,
        rv: i64,
        cont: Option<String>,
        remaining: Option<usize>,
    ) -> Response {
        match self {
            Output::Json => body::json(200, &list_object(res, items, rv, cont, remaining)),
            Output::Table(inc) => {
                let t = rk3s_printers::table(
                    &res.group,
                    &res.kind,
                    &items,
                    &rv.to_string(),
                    cont.as_deref(),
                    *inc,
                    jiff::Timestamp::now(),
                );
                body::json(200, &t)
            }
            Output::PartialMetadata => {
                let mut meta = json!({"resourceVersion": rv.to_string()});
                if let Some(c) = cont {
                    meta["continue"] = json!(c);
                }
                body::json(
                    200,
                    &json!({
                        "kind": "PartialObjectMetadataList",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": meta,
                        "items": items.iter().map(partial_metadata).collect::<Vec<_>>(),
                    }),
                )
            }
        }
    }
}

/// `PartialObjectMetadata` of an object.
pub fn partial_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
    })
}

/// The list object for items.
pub fn list_object(
    res: &ResourceInfo,
    items: Vec<Value>,
    rv: i64,
    cont: Option<String>,
    remaining: Option<usize>,
) -> Value {
    let mut meta = Map::new();
    meta.insert("resourceVersion".into(), json!(rv.to_string()));
    if let Some(c) = cont {
        meta.insert("continue".into(), json!(c));
    }
    if let Some(r) = remaining {
        meta.insert("remainingItemCount".into(), json!(r));
    }
    json!({
        "kind": format!("{}List", res.kind),
        "apiVersion": res.api_version(),
        "metadata": Value::Object(meta),
        "items": items,
    })
}
