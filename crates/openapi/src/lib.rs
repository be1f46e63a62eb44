//! OpenAPI v2 (Swagger 2.0) and v3 documents for the served API, generated from the
//! k8s-openapi types' `schemars::JsonSchema` impls plus our own table of facts
//! (patch strategies, merge keys, list types) — nothing is vendored from upstream.
//!
//! [`OpenApi::build`] generates the definitions (kept as one JSON tree: the REST layer
//! looks up patch strategies and unknown fields in them) and the path table; each
//! document is rendered on its first request, streamed one path and one definition at
//! a time (the whole document never exists as a JSON tree), and kept as shared bytes.
//! Clones are cheap (an `Arc` inside).
//! The documents are what `kubectl` needs: `explain` (v3, schemas found by
//! `x-kubernetes-group-version-kind`), server-side field validation detection (the
//! `fieldValidation` parameter on PATCH operations in v3), and client-side strategic
//! merge patch (`x-kubernetes-patch-strategy` / `x-kubernetes-patch-merge-key`).
//! [`decode`] checks built-in objects against the definitions as upstream's typed decoding
//! does (JSON types, Go's messages) and drops explicit nulls.
//! Extra definitions (CRD schemas) come with [`OpenApi::build_with_crd_schemas`], which
//! also takes their Swagger 2.0 form where it is not the v3 one converted (upstream
//! publishes CRD schemas in v2 so that kubectl's client-side validation accepts what the
//! schema preserves).

pub mod decode;
pub mod facts;
mod go_types;
mod kinds;
mod paths;
mod proto;
mod schema;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};

use rk3s_api::ResourceInfo;
use rk3s_patch::{FieldMeta, PatchSchema};
use serde_json::{json, Map, Value};

pub use crate::decode::{DecodeError, DecodePath};
use crate::paths::{Dialect, PathItem};
use crate::schema::REF_V2;

/// Errors while building the documents.
#[derive(Debug, thiserror::Error)]
pub enum OpenApiError {
    /// A document could not be serialized.
    #[error("serializing OpenAPI document: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// One served group version's OpenAPI v3 document, serialized, with its content hash.
#[derive(Clone, Debug)]
pub struct V3Document {
    /// The JSON document.
    pub json: Arc<[u8]>,
    /// Upper-case hex SHA-512 of `json` (used in `?hash=` URLs of the index).
    pub hash: String,
}

struct Inner {
    /// Neutral definitions (JSON schema with `#/definitions/` refs), facts applied.
    definitions: BTreeMap<String, Value>,
    /// Every path of the API, sorted by path.
    items: Vec<PathItem>,
    git_version: String,
    /// The documents, rendered on first request (most clients never ask for v2, and
    /// kubectl asks for the v3 documents of the groups it touches only).
    v2: OnceLock<Arc<[u8]>>,
    v2_protobuf: OnceLock<Arc<[u8]>>,
    /// v3 document path -> (indices into `items`, the rendered document).
    v3: BTreeMap<String, (Vec<usize>, OnceLock<V3Document>)>,
    /// v3 document path -> hash of its JSON.
    v3_hashes: OnceLock<BTreeMap<String, String>>,
    missing: Vec<String>,
    /// Definitions whose Swagger 2.0 form is not derived from the neutral one (CRD
    /// schemas, as upstream publishes them for kubectl's validation).
    v2_overrides: BTreeMap<String, Value>,
}

/// The OpenAPI documents of the served API. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct OpenApi {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for OpenApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenApi")
            .field("definitions", &self.inner.definitions.len())
            .field("v3_documents", &self.inner.v3.len())
            .field("rendered_bytes", &self.rendered_bytes())
            .finish()
    }
}

/// The definition name upstream gives a custom resource's schema:
/// the reversed group, the version and the kind (`com.example.stable.v1.CronTab`).
pub fn crd_definition_name(group: &str, version: &str, kind: &str) -> String {
    let mut parts: Vec<&str> = group.split('.').filter(|s| !s.is_empty()).collect();
    parts.reverse();
    parts.push(version);
    parts.push(kind);
    parts.join(".")
}

/// The definition name of a resource: its `definition`, or the CRD naming when empty.
pub fn resource_definition_name(r: &ResourceInfo) -> String {
    if r.definition.is_empty() {
        crd_definition_name(&r.group, &r.version, &r.kind)
    } else {
        r.definition.clone()
    }
}

fn gvk_value(group: &str, version: &str, kind: &str) -> Value {
    json!({ "group": group, "kind": kind, "version": version })
}

/// Which part of the Swagger 2.0 document a rendered piece belongs to.
#[derive(Clone, Copy)]
enum V2Part {
    Path,
    Definition,
}

/// Appends `v` as JSON (serializing a `Value` into memory cannot fail).
fn put_json(out: &mut Vec<u8>, v: &Value) {
    let _ = serde_json::to_writer(&mut *out, v);
}

/// Appends `"key":value`.
fn put_key_value(out: &mut Vec<u8>, key: &str, v: &Value) {
    let _ = serde_json::to_writer(&mut *out, key);
    out.push(b':');
    put_json(out, v);
}

/// Appends `"key":value` to the members of an object being written (comma first unless
/// it is the first member).
fn put_entry(out: &mut Vec<u8>, key: &str, v: &Value) {
    if !out.is_empty() {
        out.push(b',');
    }
    put_key_value(out, key, v);
}

fn hash_hex(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA512, data);
    d.as_ref().iter().map(|b| format!("{b:02X}")).collect()
}

impl OpenApi {
    /// Builds the documents for `resources` (built-in kinds take their schema from
    /// k8s-openapi). `git_version` goes into `info.version` (e.g. `v1.33.0+rk3s`).
    pub fn build(resources: &[ResourceInfo], git_version: &str) -> Result<OpenApi, OpenApiError> {
        Self::build_with_schemas(resources, git_version, &BTreeMap::new())
    }

    /// Like [`OpenApi::build`], with extra definitions (e.g. CRD schemas, keyed by
    /// [`resource_definition_name`]) that take precedence over k8s-openapi's. Refs inside
    /// them must use `#/definitions/`. Rebuild to add a CRD.
    pub fn build_with_schemas(
        resources: &[ResourceInfo],
        git_version: &str,
        custom: &BTreeMap<String, Value>,
    ) -> Result<OpenApi, OpenApiError> {
        Self::build_with_crd_schemas(resources, git_version, custom, &BTreeMap::new())
    }

    /// Like [`OpenApi::build_with_schemas`], with `custom_v2`: the Swagger 2.0
    /// (`/openapi/v2`) form of some of the `custom` definitions where it is not the
    /// neutral one converted (a CRD schema as upstream publishes it in v2).
    pub fn build_with_crd_schemas(
        resources: &[ResourceInfo],
        git_version: &str,
        custom: &BTreeMap<String, Value>,
        custom_v2: &BTreeMap<String, Value>,
    ) -> Result<OpenApi, OpenApiError> {
        let kinds = kinds::all();
        let by_name: HashMap<String, usize> = kinds
            .iter()
            .enumerate()
            .map(|(i, k)| ((k.name)().into_owned(), i))
            .collect();
        let by_gvk: HashMap<(&str, &str, &str), usize> = kinds
            .iter()
            .enumerate()
            .map(|(i, k)| ((k.group, k.version, k.kind), i))
            .collect();
        let def_of = |g: &str, v: &str, k: &str| -> String {
            match by_gvk.get(&(g, v, k)) {
                Some(i) => (kinds[*i].name)().into_owned(),
                None => crd_definition_name(g, v, k),
            }
        };

        // 1. Generate the schemas of every kind we need.
        let mut gen = schema::generator();
        schema::generate_common(&mut gen);
        let mut missing = Vec::new();
        let mut gvks: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        let mut lists: Vec<(String, String)> = Vec::new(); // (item def, kind)
        let mut served_gvs: BTreeSet<(String, String)> = BTreeSet::new();
        let mut add_gvk = |def: &str, g: &str, v: &str, k: &str| {
            let e = gvks.entry(def.to_string()).or_default();
            let val = gvk_value(g, v, k);
            if !e.contains(&val) {
                e.push(val);
            }
        };
        let want = |name: &str, gen: &mut schemars::SchemaGenerator, missing: &mut Vec<String>| {
            if custom.contains_key(name) {
                return;
            }
            match by_name.get(name) {
                Some(i) => (kinds[*i].generate)(gen),
                None => {
                    if !missing.iter().any(|m| m == name) {
                        missing.push(name.to_string());
                    }
                }
            }
        };
        for r in resources {
            let def = resource_definition_name(r);
            want(&def, &mut gen, &mut missing);
            served_gvs.insert((r.group.clone(), r.version.clone()));
            add_gvk(&def, &r.group, &r.version, &r.kind);
            if r.has_verb("list") {
                let list_kind = format!("{}List", r.kind);
                add_gvk(&format!("{def}List"), &r.group, &r.version, &list_kind);
                lists.push((def.clone(), r.kind.clone()));
            }
            for s in &r.subresources {
                if s.kind.is_empty()
                    || s.kind == r.kind && s.group.is_empty() && s.version.is_empty()
                    || paths::is_connect(&s.name)
                {
                    continue;
                }
                let g = if s.group.is_empty() && s.version.is_empty() {
                    r.group.as_str()
                } else {
                    s.group.as_str()
                };
                let v = if s.version.is_empty() {
                    r.version.as_str()
                } else {
                    s.version.as_str()
                };
                let sdef = def_of(g, v, &s.kind);
                want(&sdef, &mut gen, &mut missing);
                add_gvk(&sdef, g, v, &s.kind);
            }
        }
        for (g, v) in &served_gvs {
            add_gvk(
                "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions",
                g,
                v,
                "DeleteOptions",
            );
            add_gvk(
                "io.k8s.apimachinery.pkg.apis.meta.v1.WatchEvent",
                g,
                v,
                "WatchEvent",
            );
        }
        add_gvk(
            "io.k8s.apimachinery.pkg.apis.meta.v1.Status",
            "",
            "v1",
            "Status",
        );

        let mut definitions: BTreeMap<String, Value> =
            gen.take_definitions(false).into_iter().collect();
        for d in definitions.values_mut() {
            schema::neutralize(d);
        }
        for (name, s) in custom {
            definitions.insert(name.clone(), s.clone());
        }
        for name in &missing {
            definitions.insert(
                name.clone(),
                json!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true }),
            );
        }
        for (item, kind) in &lists {
            definitions
                .entry(format!("{item}List"))
                .or_insert_with(|| schema::list_schema(kind, item));
        }
        schema::apply_facts(&mut definitions);
        for (def, list) in gvks {
            if let Some(Value::Object(m)) = definitions.get_mut(&def) {
                m.insert("x-kubernetes-group-version-kind".into(), Value::Array(list));
            }
        }

        // The v2 forms carry the same group-version-kinds.
        let v2_overrides: BTreeMap<String, Value> = custom_v2
            .iter()
            .filter_map(|(name, s)| {
                let mut s = s.clone();
                let gvk = definitions
                    .get(name)?
                    .get("x-kubernetes-group-version-kind")
                    .cloned();
                if let (Some(gvk), Some(m)) = (gvk, s.as_object_mut()) {
                    m.insert("x-kubernetes-group-version-kind".into(), gvk);
                }
                Some((name.clone(), s))
            })
            .collect();

        // 2. Paths.
        let mut items: Vec<PathItem> = paths::root_paths();
        let groups: BTreeSet<&str> = served_gvs
            .iter()
            .map(|(g, _)| g.as_str())
            .filter(|g| !g.is_empty())
            .collect();
        items.extend(groups.into_iter().map(paths::group_path));
        for (g, v) in &served_gvs {
            items.push(paths::resources_path(g, v));
        }
        for r in resources {
            items.extend(paths::resource_paths(
                r,
                &resource_definition_name(r),
                &def_of,
            ));
        }
        items.sort_by(|a, b| a.path.cmp(&b.path));
        items.dedup_by(|a, b| a.path == b.path);

        let mut docs: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, p) in items.iter().enumerate() {
            docs.entry(p.doc.clone()).or_default().push(i);
        }
        let v3 = docs
            .into_iter()
            .map(|(doc, ps)| (doc, (ps, OnceLock::new())))
            .collect();

        Ok(OpenApi {
            inner: Arc::new(Inner {
                definitions,
                items,
                git_version: git_version.to_string(),
                v2: OnceLock::new(),
                v2_protobuf: OnceLock::new(),
                v3,
                v3_hashes: OnceLock::new(),
                missing,
                v2_overrides,
            }),
        })
    }

    fn info(&self) -> Value {
        json!({ "title": "Kubernetes", "version": self.inner.git_version })
    }

    fn security_schemes() -> Value {
        json!({
            "BearerToken": {
                "description": "Bearer Token authentication",
                "in": "header",
                "name": "authorization",
                "type": "apiKey"
            }
        })
    }

    /// Walks the Swagger 2.0 document: every path item, then every definition they or
    /// a kind refer to, each rendered on its own (the whole document is never a tree).
    fn walk_v2(&self, emit: &mut dyn FnMut(V2Part, &str, &Value)) {
        let definitions = &self.inner.definitions;
        let mut roots = BTreeSet::new();
        for p in &self.inner.items {
            let rendered = paths::render_path(p, Dialect::V2);
            schema::collect_refs(&rendered, REF_V2, &mut roots);
            emit(V2Part::Path, &p.path, &rendered);
        }
        for (name, d) in definitions {
            if d.get("x-kubernetes-group-version-kind").is_some() {
                roots.insert(name.clone());
            }
        }
        for name in schema::reachable(definitions, roots) {
            if let Some(d) = self
                .inner
                .v2_overrides
                .get(&name)
                .or_else(|| definitions.get(&name))
            {
                emit(V2Part::Definition, &name, &schema::to_v2(&name, d));
            }
        }
    }

    fn render_v2_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 << 20);
        out.extend_from_slice(b"{\"swagger\":\"2.0\",\"info\":");
        put_json(&mut out, &self.info());
        out.extend_from_slice(b",\"paths\":{");
        let mut paths_out = Vec::new();
        let mut defs_out = Vec::new();
        self.walk_v2(&mut |part, name, v| match part {
            V2Part::Path => put_entry(&mut paths_out, name, v),
            V2Part::Definition => put_entry(&mut defs_out, name, v),
        });
        out.append(&mut paths_out);
        out.extend_from_slice(b"},\"definitions\":{");
        out.append(&mut defs_out);
        out.extend_from_slice(b"},\"securityDefinitions\":");
        put_json(&mut out, &Self::security_schemes());
        out.extend_from_slice(b",\"security\":[{\"BearerToken\":[]}]}");
        out
    }

    fn render_v2_protobuf(&self) -> Vec<u8> {
        let mut e = proto::V2Encoder::default();
        self.walk_v2(&mut |part, name, v| match part {
            V2Part::Path => e.path(name, v),
            V2Part::Definition => e.definition(name, v),
        });
        let head = json!({
            "swagger": "2.0",
            "info": self.info(),
            "securityDefinitions": Self::security_schemes(),
            "security": [{ "BearerToken": [] }]
        });
        e.finish(&head)
    }

    /// Renders the OpenAPI 3.0 document of one group version (or root document).
    fn render_v3(&self, items: &[usize]) -> V3Document {
        let definitions = &self.inner.definitions;
        let mut out = Vec::with_capacity(64 << 10);
        out.extend_from_slice(b"{\"openapi\":\"3.0.0\",\"info\":");
        put_json(&mut out, &self.info());
        out.extend_from_slice(b",\"paths\":{");
        let mut roots = BTreeSet::new();
        let mut first = true;
        for p in items.iter().filter_map(|i| self.inner.items.get(*i)) {
            schema::collect_refs(&paths::render_path(p, Dialect::V2), REF_V2, &mut roots);
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
            put_key_value(&mut out, &p.path, &paths::render_path(p, Dialect::V3));
        }
        out.extend_from_slice(b"},\"components\":{\"schemas\":{");
        let mut first = true;
        for name in schema::reachable(definitions, roots) {
            if let Some(d) = definitions.get(&name) {
                if !std::mem::take(&mut first) {
                    out.push(b',');
                }
                put_key_value(&mut out, &name, &schema::to_v3(&name, d));
            }
        }
        out.extend_from_slice(b"},\"securitySchemes\":");
        put_json(&mut out, &Self::security_schemes());
        out.extend_from_slice(b"},\"security\":[{\"BearerToken\":[]}]}");
        let hash = hash_hex(&out);
        V3Document {
            json: out.into(),
            hash,
        }
    }

    /// The Swagger 2.0 document (`GET /openapi/v2`, `application/json`), rendered on
    /// first use and kept.
    pub fn v2_json(&self) -> Arc<[u8]> {
        self.inner
            .v2
            .get_or_init(|| self.render_v2_json().into())
            .clone()
    }

    /// The Swagger 2.0 document as the gnostic `openapi.v2.Document` protobuf message
    /// (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`, what kubectl asks for),
    /// rendered on first use and kept.
    pub fn v2_protobuf(&self) -> Arc<[u8]> {
        self.inner
            .v2_protobuf
            .get_or_init(|| self.render_v2_protobuf().into())
            .clone()
    }

    /// The hash of every v3 document (the first call renders the documents not served
    /// yet, keeping only their hashes).
    fn v3_hashes(&self) -> &BTreeMap<String, String> {
        self.inner.v3_hashes.get_or_init(|| {
            self.inner
                .v3
                .iter()
                .map(|(doc, (items, cached))| {
                    let hash = match cached.get() {
                        Some(d) => d.hash.clone(),
                        None => self.render_v3(items).hash,
                    };
                    (doc.clone(), hash)
                })
                .collect()
        })
    }

    /// The OpenAPI v3 index (`GET /openapi/v3`): `{"paths": {"api/v1": {"serverRelativeURL": ...}}}`.
    pub fn v3_index(&self) -> serde_json::Value {
        let mut index = Map::new();
        for (doc, hash) in self.v3_hashes() {
            index.insert(
                doc.clone(),
                json!({ "serverRelativeURL": format!("/openapi/v3/{doc}?hash={hash}") }),
            );
        }
        json!({ "paths": index })
    }

    /// The OpenAPI v3 document of `gv_path` (`api/v1`, `apis/apps/v1`, `apis/apps`, `api`,
    /// `apis`, `version`), as served at `/openapi/v3/<gv_path>`, with its hash; rendered
    /// on first use and kept.
    pub fn v3_group_version(&self, gv_path: &str) -> Option<(Arc<[u8]>, String)> {
        let gv_path = gv_path.trim_matches('/');
        let (items, cached) = self.inner.v3.get(gv_path)?;
        let d = cached.get_or_init(|| self.render_v3(items));
        Some((d.json.clone(), d.hash.clone()))
    }

    /// Every v3 document path, sorted.
    pub fn v3_paths(&self) -> Vec<String> {
        self.inner.v3.keys().cloned().collect()
    }

    /// Bytes of rendered documents held (v2 JSON and protobuf, v3 documents served so
    /// far); the documents are rendered on first request, so this is 0 after a build.
    pub fn rendered_bytes(&self) -> usize {
        let v2 = self.inner.v2.get().map_or(0, |b| b.len())
            + self.inner.v2_protobuf.get().map_or(0, |b| b.len());
        v2 + self
            .inner
            .v3
            .values()
            .filter_map(|(_, d)| d.get())
            .map(|d| d.json.len())
            .sum::<usize>()
    }

    /// The neutral definition `name` (JSON schema, refs under `#/definitions/`).
    pub fn definition(&self, name: &str) -> Option<&serde_json::Value> {
        self.inner.definitions.get(name)
    }

    /// Definitions named by resources that had no schema (neither from k8s-openapi nor
    /// given); they are served as free-form objects.
    pub fn missing_definitions(&self) -> &[String] {
        &self.inner.missing
    }

    /// Unknown fields of `obj`, an object of definition `name` (for `fieldValidation=Strict`
    /// / `Warn`), as paths like `spec.template.spec.containers[0].imagePullPolcy`.
    pub fn unknown_fields(&self, name: &str, obj: &serde_json::Value) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(d) = self.inner.definitions.get(name) {
            self.unknown_in(d, obj, String::new(), &mut out, 0);
        }
        out
    }

    /// Removes the unknown fields of `obj`, an object of definition `name` (those
    /// [`OpenApi::unknown_fields`] lists), in place. Works on the object itself, not
    /// on the listed paths, so fields whose names hold `.` or `[` go too.
    pub fn remove_unknown_fields(&self, name: &str, obj: &mut serde_json::Value) {
        if let Some(d) = self.inner.definitions.get(name) {
            self.prune_in(d, obj, 0);
        }
    }

    fn prune_in(&self, schema: &Value, obj: &mut Value, depth: usize) {
        if depth > 64 {
            return;
        }
        let schema = self.resolve(schema);
        if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
            return;
        }
        match obj {
            Value::Object(fields) => {
                if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                    fields.retain(|k, _| props.contains_key(k));
                    for (k, v) in fields.iter_mut() {
                        if let Some(s) = props.get(k) {
                            self.prune_in(s, v, depth + 1);
                        }
                    }
                } else if let Some(ap) =
                    schema.get("additionalProperties").filter(|a| a.is_object())
                {
                    for v in fields.values_mut() {
                        self.prune_in(ap, v, depth + 1);
                    }
                }
            }
            Value::Array(items) => {
                if let Some(s) = schema.get("items").filter(|s| s.is_object()) {
                    for v in items.iter_mut() {
                        self.prune_in(s, v, depth + 1);
                    }
                }
            }
            _ => {}
        }
    }

    fn resolve<'a>(&'a self, mut schema: &'a Value) -> &'a Value {
        for _ in 0..8 {
            let r = schema.get("$ref").or_else(|| {
                schema
                    .get("allOf")
                    .and_then(|a| a.get(0))
                    .and_then(|s| s.get("$ref"))
            });
            match r
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix(REF_V2))
            {
                Some(name) => match self.inner.definitions.get(name) {
                    Some(d) => schema = d,
                    None => return schema,
                },
                None => return schema,
            }
        }
        schema
    }

    fn unknown_in(
        &self,
        schema: &Value,
        obj: &Value,
        path: String,
        out: &mut Vec<String>,
        depth: usize,
    ) {
        if depth > 64 {
            return;
        }
        let schema = self.resolve(schema);
        if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
            return;
        }
        match obj {
            Value::Object(fields) => {
                if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                    for (k, v) in fields {
                        let p = if path.is_empty() {
                            k.clone()
                        } else {
                            format!("{path}.{k}")
                        };
                        match props.get(k) {
                            Some(s) => self.unknown_in(s, v, p, out, depth + 1),
                            None => out.push(p),
                        }
                    }
                } else if let Some(ap) =
                    schema.get("additionalProperties").filter(|a| a.is_object())
                {
                    for (k, v) in fields {
                        let p = if path.is_empty() {
                            k.clone()
                        } else {
                            format!("{path}.{k}")
                        };
                        self.unknown_in(ap, v, p, out, depth + 1);
                    }
                }
            }
            Value::Array(items) => {
                if let Some(s) = schema.get("items").filter(|s| s.is_object()) {
                    for (i, v) in items.iter().enumerate() {
                        self.unknown_in(s, v, format!("{path}[{i}]"), out, depth + 1);
                    }
                }
            }
            _ => {}
        }
    }

    fn ref_object_name(&self, schema: &Value) -> Option<String> {
        let r = schema
            .get("$ref")
            .or_else(|| {
                schema
                    .get("allOf")
                    .and_then(|a| a.get(0))
                    .and_then(|s| s.get("$ref"))
            })?
            .as_str()?
            .strip_prefix(REF_V2)?;
        let d = self.inner.definitions.get(r)?;
        d.get("properties").is_some().then(|| r.to_string())
    }
}

impl PatchSchema for OpenApi {
    fn field(&self, type_name: &str, field: &str) -> Option<FieldMeta> {
        let prop = self
            .inner
            .definitions
            .get(type_name)?
            .get("properties")?
            .get(field)?;
        let is_list = prop.get("type").and_then(Value::as_str) == Some("array");
        let map_values = prop.get("additionalProperties").filter(|a| a.is_object());
        let target = if is_list {
            prop.get("items")
        } else {
            map_values.or(Some(prop))
        };
        let type_name = target.and_then(|t| self.ref_object_name(t));
        let patch_strategy = prop
            .get("x-kubernetes-patch-strategy")
            .and_then(Value::as_str)
            .map(|s| {
                s.split(',')
                    .map(|x| x.trim().to_string())
                    .filter(|x| !x.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let merge_key = prop
            .get("x-kubernetes-patch-merge-key")
            .and_then(Value::as_str)
            .map(String::from);
        let list_type = prop
            .get("x-kubernetes-list-type")
            .and_then(Value::as_str)
            .map(String::from);
        let list_map_keys = prop
            .get("x-kubernetes-list-map-keys")
            .and_then(Value::as_array)
            .map(|keys| {
                keys.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        let default = prop.get("default").cloned();
        Some(FieldMeta {
            type_name,
            is_list,
            is_map: map_values.is_some(),
            patch_strategy,
            merge_key,
            list_type,
            list_map_keys,
            default,
        })
    }

    /// Object definitions with `properties` and neither
    /// `x-kubernetes-preserve-unknown-fields` nor `additionalProperties` hold only
    /// their properties (upstream's typed schemas of built-in kinds).
    fn declares_all_fields(&self, type_name: &str) -> bool {
        let Some(d) = self.inner.definitions.get(type_name) else {
            return false;
        };
        d.get("properties").is_some_and(Value::is_object)
            && d.get("x-kubernetes-preserve-unknown-fields") != Some(&Value::Bool(true))
            && d.get("additionalProperties")
                .is_none_or(|a| a == &Value::Bool(false))
    }
}

#[cfg(test)]
mod tests;
