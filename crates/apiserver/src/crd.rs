//! CustomResourceDefinitions: the CRD controller inside the API server (names accepted,
//! established, resources registered, OpenAPI rebuilt, objects deleted with the CRD) and
//! what the REST handlers need to serve custom resources (schemas, scale paths, printer
//! columns, schema defaults applied on read, conversion between the CRD's versions:
//! objects are stored in the storage version and read in the requested one, converted
//! before that version's defaults apply).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use rk3s_api::{ApiError, ResourceInfo};
use rk3s_store::StoreError;
use serde_json::{json, Value};

use crate::cache::{CacheEventKind, WatchCache};
use crate::crd_conversion::Conversion;
use crate::handler::ApiServer;
use crate::object;
use crate::state::Inner;

/// The finalizer that makes deleting a CRD delete its objects first.
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";
const CRD_PREFIX: &str = "/registry/apiextensions.k8s.io/customresourcedefinitions/";

/// One served version of a custom resource.
pub struct CrdVersion {
    /// The structural schema.
    pub schema: Option<rk3s_crd::Schema>,
    /// Scale subresource paths.
    pub scale: Option<rk3s_crd::ScaleSpec>,
    /// Printer columns.
    pub columns: Vec<rk3s_crd::PrinterColumn>,
    /// The schema has defaults: reads apply them to stored objects (upstream's
    /// decoder defaults what it reads from storage).
    pub defaults_on_read: bool,
    /// How objects convert between the CRD's versions, when it has more than one
    /// (objects are stored in the storage version and read in the requested one).
    pub conversion: Option<Arc<Conversion>>,
}

/// Served custom resources, by (group, version, plural).
#[derive(Default)]
pub struct CrdState {
    versions: RwLock<HashMap<(String, String, String), Arc<CrdVersion>>>,
    /// The resources each CRD registered, by CRD name.
    installed: RwLock<HashMap<String, Vec<ResourceInfo>>>,
    /// OpenAPI schemas of custom resources, by definition name: (v3 / neutral form,
    /// Swagger 2.0 form).
    schemas: RwLock<BTreeMap<String, (Value, Value)>>,
}

impl CrdState {
    /// The served version of a custom resource, if `res` is one.
    pub fn version(&self, res: &ResourceInfo) -> Option<Arc<CrdVersion>> {
        if !res.definition.is_empty() {
            return None;
        }
        self.versions
            .read()
            .ok()?
            .get(&(res.group.clone(), res.version.clone(), res.plural.clone()))
            .cloned()
    }
}

/// Whether reads of `res` (served as custom resource version `crd`, if it is one)
/// return something else than the stored objects.
pub fn changes_on_read(res: &ResourceInfo, crd: Option<&CrdVersion>) -> bool {
    crate::convert::needs_conversion(res)
        || crd.is_some_and(|v| v.defaults_on_read || v.conversion.is_some())
}

/// `objects` (custom resources of version `crd`, in whatever version they were
/// stored or sent) in `api_version`, converted as their CRD says (one conversion
/// call for all that need it). Webhook Services resolve through `cache`. A failing
/// conversion is upstream's 500 `InternalError` with the conversion error.
pub async fn convert_to(
    cache: &WatchCache,
    crd: Option<&CrdVersion>,
    objects: Vec<Value>,
    api_version: &str,
) -> Result<Vec<Value>, ApiError> {
    let Some(conversion) = crd.and_then(|v| v.conversion.as_deref()) else {
        return Ok(objects);
    };
    let resolve = |ns: &str, name: &str, port: u16| {
        crate::admission::resolve_service_in(cache, ns, name, port)
    };
    conversion
        .convert(objects, api_version, &resolve)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "custom resource conversion failed");
            ApiError::internal(e.to_string())
        })
}

/// [`convert_to`] of one object.
pub async fn convert_one(
    cache: &WatchCache,
    crd: Option<&CrdVersion>,
    object: Value,
    api_version: &str,
) -> Result<Value, ApiError> {
    convert_to(cache, crd, vec![object], api_version)
        .await?
        .pop()
        .ok_or_else(|| ApiError::internal("conversion returned no object"))
}

/// The `apiVersion` a write of version `crd` is stored in (its CRD's storage
/// version), if that is another version than `api_version`.
pub fn storage_api_version(crd: Option<&CrdVersion>, api_version: &str) -> Option<String> {
    let storage = crd?.conversion.as_ref()?.storage_api_version();
    (storage != api_version).then_some(storage)
}

/// Stored form → what a read (get, list, watch, the object an update starts from)
/// returns: [`crate::convert::from_storage`], then the schema defaults of custom
/// resource version `crd`, as upstream's storage decoder applies them, so an object
/// stored before a default was added reads with it.
pub fn read(res: &ResourceInfo, crd: Option<&CrdVersion>, obj: Value) -> Value {
    let mut obj = crate::convert::from_storage(res, obj);
    if let Some(schema) = crd
        .filter(|v| v.defaults_on_read)
        .and_then(|v| v.schema.as_ref())
    {
        schema.apply_defaults(&mut obj);
    }
    obj
}

/// Validates a CRD write (422 with upstream's causes).
pub fn validate(res: &ResourceInfo, obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    let errs = rk3s_crd::validate_crd(obj, old);
    if errs.is_empty() {
        return Ok(());
    }
    let name = object::name(obj).unwrap_or("").to_string();
    let causes = errs
        .iter()
        .map(|e| rk3s_api::Cause {
            reason: e.reason().to_string(),
            message: e.message(),
            field: e.field.clone(),
        })
        .collect();
    Err(ApiError::invalid(res, &name, causes))
}

/// Prunes, defaults and validates a custom resource against its schema. Returns the
/// pruned field paths (for `fieldValidation`).
pub fn admit_custom_resource(
    version: &CrdVersion,
    res: &ResourceInfo,
    obj: &mut Value,
) -> Result<Vec<String>, ApiError> {
    let Some(schema) = &version.schema else {
        return Ok(Vec::new());
    };
    let pruned = schema.prune(obj);
    schema.apply_defaults(obj);
    let errs = schema.validate(obj);
    if !errs.is_empty() {
        let name = object::name(obj).unwrap_or("").to_string();
        let causes = errs
            .iter()
            .map(|e| rk3s_api::Cause {
                reason: e.reason().to_string(),
                message: e.message(),
                field: e.field.clone(),
            })
            .collect();
        return Err(ApiError::invalid(res, &name, causes));
    }
    Ok(pruned)
}

/// Starts the CRD controller.
pub fn start(api: &ApiServer) {
    let api = api.clone();
    tokio::spawn(async move { run(api).await });
}

async fn run(api: ApiServer) {
    let inner = api.inner().clone();
    loop {
        let (items, _rev, mut live) = inner.cache.snapshot_and_subscribe(CRD_PREFIX);
        for o in items {
            reconcile(&inner, &o.object()).await;
        }
        loop {
            match live.recv().await {
                Ok(ev) if ev.key.starts_with(CRD_PREFIX) => match ev.kind {
                    CacheEventKind::Deleted => {
                        uninstall(&inner, object::name(&ev.object).unwrap_or(""))
                    }
                    _ => reconcile(&inner, &ev.object).await,
                },
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// Rebuilds the OpenAPI documents from the registry and the CRD schemas.
pub(crate) fn rebuild_openapi(inner: &Inner) {
    let resources: Vec<ResourceInfo> = inner
        .schemas
        .registry
        .all()
        .iter()
        .map(|r| (**r).clone())
        .collect();
    let (custom, custom_v2): (BTreeMap<String, Value>, BTreeMap<String, Value>) = inner
        .schemas
        .crds
        .schemas
        .read()
        .map(|s| {
            s.iter()
                .map(|(k, (v3, v2))| ((k.clone(), v3.clone()), (k.clone(), v2.clone())))
                .unzip()
        })
        .unwrap_or_default();
    match rk3s_openapi::OpenApi::build_with_crd_schemas(
        &resources,
        crate::KUBERNETES_VERSION,
        &custom,
        &custom_v2,
    ) {
        Ok(doc) => {
            if let Ok(mut w) = inner.schemas.openapi_docs.write() {
                *w = Arc::new(doc);
            }
        }
        Err(e) => tracing::warn!(error = %e, "rebuilding OpenAPI for CRDs failed"),
    }
}

fn uninstall(inner: &Inner, name: &str) {
    let removed = inner
        .schemas
        .crds
        .installed
        .write()
        .ok()
        .and_then(|mut m| m.remove(name));
    if let Some(resources) = removed {
        for r in &resources {
            stop_serving(inner, r);
        }
        rebuild_openapi(inner);
        tracing::info!(crd = name, "custom resource no longer served");
    }
}

/// Stops serving one version of a custom resource: REST, discovery, its schema.
fn stop_serving(inner: &Inner, r: &ResourceInfo) {
    inner
        .schemas
        .registry
        .remove(&r.group, &r.version, &r.plural);
    if let Ok(mut v) = inner.schemas.crds.versions.write() {
        v.remove(&(r.group.clone(), r.version.clone(), r.plural.clone()));
    }
    if let Ok(mut s) = inner.schemas.crds.schemas.write() {
        s.remove(&def_name(r));
    }
}

async fn reconcile(inner: &Inner, crd: &Value) {
    let name = object::name(crd).unwrap_or("").to_string();
    if object::meta(crd).is_some_and(|m| m.contains_key("deletionTimestamp")) {
        // Stop serving, delete every object, then drop the cleanup finalizer.
        let resources = inner
            .schemas
            .crds
            .installed
            .read()
            .ok()
            .and_then(|m| m.get(&name).cloned())
            .unwrap_or_default();
        uninstall(inner, &name);
        if let Some(r) = resources.first() {
            delete_all(inner, r).await;
        }
        remove_finalizer(inner, &name).await;
        return;
    }
    // Names and conditions.
    let others: Vec<Value> = inner
        .cache
        .list(CRD_PREFIX)
        .0
        .into_iter()
        .filter(|o| object::name(&o.object()) != Some(name.as_str()))
        .map(|o| o.value())
        .collect();
    let status = rk3s_crd::crd_status(crd, &others, &object::now_rfc3339());
    if crd.get("status") != Some(&status) {
        update_status(inner, &name, status.clone()).await;
    }
    let accepted = status
        .get("conditions")
        .and_then(|c| c.as_array())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "NamesAccepted" && c["status"] == "True")
        });
    if !accepted {
        return;
    }
    let mut with_status = crd.clone();
    with_status["status"] = status;
    let resources = match rk3s_crd::resources_of(&with_status) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(crd = %name, error = %e, "cannot serve CRD");
            return;
        }
    };
    let old = inner
        .schemas
        .crds
        .installed
        .read()
        .ok()
        .and_then(|m| m.get(&name).cloned())
        .unwrap_or_default();
    // Versions no longer served (renamed, `served: false`, or a new kind name) go
    // with their schemas, so the OpenAPI documents drop them at once.
    for r in &old {
        if !resources.iter().any(|n| {
            n.group == r.group && n.version == r.version && n.plural == r.plural && n.kind == r.kind
        }) {
            stop_serving(inner, r);
        }
    }
    let mut schemas_changed = false;
    // Only a CRD with several versions converts (objects of a CRD with one version
    // are all stored in it).
    let several_versions = with_status
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .is_some_and(|v| v.len() > 1);
    let conversion = Conversion::from_crd(&with_status)
        .filter(|_| several_versions)
        .map(Arc::new);
    for r in &resources {
        let schema = rk3s_crd::Schema::from_crd(&with_status, &r.version).ok();
        let version = CrdVersion {
            defaults_on_read: schema.as_ref().is_some_and(|s| s.has_defaults()),
            schema,
            scale: rk3s_crd::scale_spec(&with_status, &r.version),
            columns: rk3s_crd::printer_columns(&with_status, &r.version),
            conversion: conversion.clone(),
        };
        if let Ok(mut v) = inner.schemas.crds.versions.write() {
            v.insert(
                (r.group.clone(), r.version.clone(), r.plural.clone()),
                Arc::new(version),
            );
        }
        let def = def_name(r);
        let published = rk3s_crd::openapi_schema(&with_status, &r.version)
            .zip(rk3s_crd::openapi_v2_schema(&with_status, &r.version));
        if let Ok(mut s) = inner.schemas.crds.schemas.write() {
            let before = match published {
                Some(p) => s.insert(def.clone(), p),
                None => s.remove(&def),
            };
            schemas_changed |= before.as_ref() != s.get(&def);
        }
        inner.schemas.registry.add(r.clone());
    }
    let changed = old != resources || schemas_changed;
    if let Ok(mut m) = inner.schemas.crds.installed.write() {
        m.insert(name.clone(), resources);
    }
    if changed {
        rebuild_openapi(inner);
        tracing::info!(crd = %name, "custom resource served");
    }
}

fn def_name(r: &ResourceInfo) -> String {
    rk3s_openapi::crd_definition_name(&r.group, &r.version, &r.kind)
}

async fn update_status(inner: &Inner, name: &str, status: Value) {
    let key = format!("{CRD_PREFIX}{name}");
    for _ in 0..8 {
        let Ok(Some(kv)) = inner.store.get(&key).await else {
            return;
        };
        let Ok(mut obj) = serde_json::from_slice::<Value>(&kv.value) else {
            return;
        };
        obj["status"] = status.clone();
        let bytes = serde_json::to_vec(&obj).unwrap_or_default();
        match inner.store.update(&key, bytes, kv.mod_revision).await {
            Ok(_) => return,
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => {
                tracing::warn!(crd = name, error = %e, "CRD status update failed");
                return;
            }
        }
    }
}

async fn delete_all(inner: &Inner, r: &ResourceInfo) {
    for attempt in 0..100u32 {
        let (objs, _) = inner.cache.list(&r.key_prefix());
        if objs.is_empty() {
            return;
        }
        for o in objs {
            let _ = inner.store.delete(&o.key, None).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(
            20 * u64::from(attempt.min(25) + 1),
        ))
        .await;
    }
}

async fn remove_finalizer(inner: &Inner, name: &str) {
    let key = format!("{CRD_PREFIX}{name}");
    for _ in 0..8 {
        let Ok(Some(kv)) = inner.store.get(&key).await else {
            return;
        };
        let Ok(mut obj) = serde_json::from_slice::<Value>(&kv.value) else {
            return;
        };
        if let Some(f) = obj
            .pointer_mut("/metadata/finalizers")
            .and_then(|f| f.as_array_mut())
        {
            f.retain(|x| x.as_str() != Some(CLEANUP_FINALIZER));
        }
        let result = if object::finalizers(&obj).is_empty() {
            inner
                .store
                .delete(&key, Some(kv.mod_revision))
                .await
                .map(|_| ())
        } else {
            inner
                .store
                .update(
                    &key,
                    serde_json::to_vec(&obj).unwrap_or_default(),
                    kv.mod_revision,
                )
                .await
                .map(|_| ())
        };
        match result {
            Ok(()) => return,
            Err(StoreError::Conflict { .. }) => continue,
            Err(_) => return,
        }
    }
}

/// Upstream's v1 defaults of a CRD: `names.singular` (lower-case kind),
/// `names.listKind` (`<Kind>List`), `conversion.strategy: None`.
pub fn apply_defaults(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(|s| s.as_object_mut()) else {
        return;
    };
    if let Some(names) = spec.get_mut("names").and_then(|n| n.as_object_mut()) {
        let kind = names
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("")
            .to_string();
        if !kind.is_empty() {
            if names
                .get("singular")
                .and_then(|s| s.as_str())
                .is_none_or(|s| s.is_empty())
            {
                names.insert("singular".into(), json!(kind.to_lowercase()));
            }
            if names
                .get("listKind")
                .and_then(|s| s.as_str())
                .is_none_or(|s| s.is_empty())
            {
                names.insert("listKind".into(), json!(format!("{kind}List")));
            }
        }
    }
    spec.entry("conversion")
        .or_insert_with(|| json!({"strategy": "None"}));
}

/// Adds the cleanup finalizer to a new CRD.
pub fn prepare_create(obj: &mut Value) {
    if let Some(m) = object::meta_mut(obj) {
        let f = m.entry("finalizers").or_insert_with(|| json!([]));
        if let Some(a) = f.as_array_mut() {
            if !a.iter().any(|x| x.as_str() == Some(CLEANUP_FINALIZER)) {
                a.push(json!(CLEANUP_FINALIZER));
            }
        }
    }
}

/// The `Table` for custom resources, from the CRD's printer columns.
pub fn table(
    version: &CrdVersion,
    objects: &[Value],
    rv: &str,
    cont: Option<&str>,
    include: rk3s_printers::IncludeObject,
) -> Value {
    let now = jiff::Timestamp::now();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut row = json!({"cells": rk3s_crd::printer_cells(&version.columns, o, now)});
            if let Some(obj) = rk3s_printers::row_object(o, include) {
                row["object"] = obj;
            }
            row
        })
        .collect();
    let mut meta = json!({"resourceVersion": rv});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": version.columns.iter().map(|c| c.to_json()).collect::<Vec<_>>(),
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{json, Value};

    use crate::testutil::{call, call_with_type, server};
    use crate::ApiServer;

    const CRDS: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
    const JSON_PATCH: &str = "application/json-patch+json";

    fn version(name: &str, storage: bool, schema: Value) -> Value {
        json!({"name": name, "served": true, "storage": storage, "schema": {"openAPIV3Schema": schema}})
    }

    fn crd(versions: Vec<Value>) -> Value {
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "things.e2e.example.com"},
            "spec": {"group": "e2e.example.com", "scope": "Cluster",
                "names": {"plural": "things", "singular": "thing", "kind": "Thing", "listKind": "ThingList"},
                "versions": versions}})
    }

    /// Polls `check` (every 20 ms, up to 10 s) until it returns `Some`.
    async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        for _ in 0..500 {
            if let Some(t) = check().await {
                return t;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("timed out waiting for {what}");
    }

    async fn definitions(api: &ApiServer) -> Value {
        let (code, doc) = call(api, "GET", "/openapi/v2", None).await;
        assert_eq!(code, 200);
        doc["definitions"].clone()
    }

    /// Upstream e2e "custom resource defaulting for requests and from storage works":
    /// an object stored before its schema had a default reads with it (get and list),
    /// the stored bytes stay as they were.
    #[tokio::test]
    async fn schema_defaults_apply_on_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let api = server(dir.path()).await;
        let schema = json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}}});
        let (code, out) = call(
            &api,
            "POST",
            CRDS,
            Some(crd(vec![version("v1", true, schema)])),
        )
        .await;
        assert_eq!(code, 201, "{out}");
        let things = "/apis/e2e.example.com/v1/things";
        eventually("the resource", || async {
            (call(&api, "GET", things, None).await.0 == 200).then_some(())
        })
        .await;
        let (code, out) = call(
            &api,
            "POST",
            things,
            Some(json!({"apiVersion": "e2e.example.com/v1",
            "kind": "Thing", "metadata": {"name": "t1"}})),
        )
        .await;
        assert_eq!(code, 201, "{out}");
        assert!(out.get("a").is_none());
        let (code, out) = call_with_type(&api, "PATCH", &format!("{CRDS}/things.e2e.example.com"), JSON_PATCH,
            Some(json!([{"op": "add", "path": "/spec/versions/0/schema/openAPIV3Schema/properties/a/default", "value": "A"}]))).await;
        assert_eq!(code, 200, "{out}");
        let got = eventually("the default on read", || async {
            let (_, t) = call(&api, "GET", &format!("{things}/t1"), None).await;
            (t["a"] == "A").then_some(t)
        })
        .await;
        assert!(got.get("b").is_none(), "{got}");
        let (_, list) = call(&api, "GET", things, None).await;
        assert_eq!(list["items"][0]["a"], "A", "{list}");
        let (_, paged) = call(&api, "GET", &format!("{things}?limit=1"), None).await;
        assert_eq!(paged["items"][0]["a"], "A", "{paged}");
        let stored = api
            .inner()
            .store
            .get("/registry/e2e.example.com/things/t1")
            .await
            .expect("store")
            .expect("stored");
        let stored: Value = serde_json::from_slice(&stored.value).expect("json");
        assert!(stored.get("a").is_none(), "not written back: {stored}");
        // Removing that default and adding another: the new one applies on read.
        let (code, out) = call_with_type(&api, "PATCH", &format!("{CRDS}/things.e2e.example.com"), JSON_PATCH,
            Some(json!([{"op": "remove", "path": "/spec/versions/0/schema/openAPIV3Schema/properties/a/default"},
                {"op": "add", "path": "/spec/versions/0/schema/openAPIV3Schema/properties/b/default", "value": "B"}]))).await;
        assert_eq!(code, 200, "{out}");
        let got = eventually("the second default", || async {
            let (_, t) = call(&api, "GET", &format!("{things}/t1"), None).await;
            (t["b"] == "B").then_some(t)
        })
        .await;
        assert!(got.get("a").is_none(), "a's default is gone: {got}");
    }

    /// A raw answer (e.g. a watch stream) of `GET path` as the cluster admin.
    async fn raw_get(api: &ApiServer, path: &str) -> String {
        use http_body_util::BodyExt;
        let (parts, ()) = http::Request::builder()
            .uri(path)
            .body(())
            .expect("request")
            .into_parts();
        let resp = api
            .handle(parts, bytes::Bytes::new(), Some(crate::testutil::admin()))
            .await;
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    }

    async fn stored(api: &ApiServer, name: &str) -> Value {
        let kv = api
            .inner()
            .store
            .get(&format!("/registry/e2e.example.com/things/{name}"))
            .await
            .expect("store")
            .expect("stored");
        serde_json::from_slice(&kv.value).expect("json")
    }

    /// A CRD with versions v1 (storage) and v2 (with a default), converted with
    /// `conversion`; waits until v2 is served.
    async fn two_versions(api: &ApiServer, conversion: Value) {
        let open = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
        let mut v2 = open.clone();
        v2["properties"] = json!({"b": {"type": "string", "default": "B"}});
        let mut body = crd(vec![version("v1", true, open), version("v2", false, v2)]);
        body["spec"]["conversion"] = conversion;
        let (code, out) = call(api, "POST", CRDS, Some(body)).await;
        assert_eq!(code, 201, "{out}");
        eventually("v2 served", || async {
            (call(api, "GET", "/apis/e2e.example.com/v2/things", None)
                .await
                .0
                == 200)
                .then_some(())
        })
        .await;
    }

    fn thing(version: &str, name: &str) -> Value {
        json!({"apiVersion": format!("e2e.example.com/{version}"), "kind": "Thing",
            "metadata": {"name": name}, "a": "A"})
    }

    /// Objects are stored in the storage version and read in the requested one (get,
    /// list, paged list, watch, the object a patch starts from), converted before the
    /// requested version's defaults apply.
    #[tokio::test]
    async fn objects_are_stored_in_the_storage_version_and_served_in_every_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let api = server(dir.path()).await;
        two_versions(&api, json!({"strategy": "None"})).await;
        let (v1, v2) = (
            "/apis/e2e.example.com/v1/things",
            "/apis/e2e.example.com/v2/things",
        );
        let (code, out) = call(&api, "POST", v1, Some(thing("v1", "t1"))).await;
        assert_eq!(code, 201, "{out}");
        let (code, out) = call(&api, "POST", v2, Some(thing("v2", "t2"))).await;
        assert_eq!(code, 201, "{out}");
        assert_eq!(out["apiVersion"], "e2e.example.com/v2", "{out}");
        assert_eq!(out["b"], "B", "{out}");
        assert!(out["metadata"]["resourceVersion"].is_string(), "{out}");
        let raw = stored(&api, "t2").await;
        assert_eq!(raw["apiVersion"], "e2e.example.com/v1", "{raw}");

        let (code, got) = call(&api, "GET", &format!("{v2}/t1"), None).await;
        assert_eq!(code, 200, "{got}");
        assert_eq!(got["apiVersion"], "e2e.example.com/v2");
        assert_eq!(
            got["b"], "B",
            "v2's default applies after the conversion: {got}"
        );
        let (_, got) = call(&api, "GET", &format!("{v1}/t2"), None).await;
        assert_eq!(got["apiVersion"], "e2e.example.com/v1");
        for path in [v2.to_string(), format!("{v2}?limit=1")] {
            let (code, list) = call(&api, "GET", &path, None).await;
            assert_eq!(code, 200, "{list}");
            let items = list["items"].as_array().expect("items");
            assert!(!items.is_empty(), "{list}");
            assert!(
                items
                    .iter()
                    .all(|i| i["apiVersion"] == "e2e.example.com/v2"),
                "{list}"
            );
        }

        // A patch through v2 of an object stored as v1.
        let (code, out) = call_with_type(
            &api,
            "PATCH",
            &format!("{v2}/t1"),
            "application/merge-patch+json",
            Some(json!({"a": "patched"})),
        )
        .await;
        assert_eq!(code, 200, "{out}");
        assert_eq!(out["apiVersion"], "e2e.example.com/v2");
        let raw = stored(&api, "t1").await;
        assert_eq!(raw["apiVersion"], "e2e.example.com/v1", "{raw}");
        assert_eq!(raw["a"], "patched", "{raw}");

        // Watch through v2: initial and live events in v2.
        let rv = out["metadata"]["resourceVersion"].as_str().expect("rv");
        let watch = {
            let api = api.clone();
            let path = format!("{v2}?watch=true&timeoutSeconds=2&resourceVersion={rv}");
            tokio::spawn(async move { raw_get(&api, &path).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (code, out) = call(&api, "POST", v1, Some(thing("v1", "t3"))).await;
        assert_eq!(code, 201, "{out}");
        let initial = raw_get(&api, &format!("{v2}?watch=true&timeoutSeconds=1")).await;
        let live = watch.await.expect("watch");
        for (stream, want) in [(initial, 3), (live, 1)] {
            let events: Vec<Value> = stream
                .lines()
                .map(|l| serde_json::from_str(l).expect("event"))
                .collect();
            assert_eq!(events.len(), want, "{stream}");
            assert!(
                events
                    .iter()
                    .all(|e| e["object"]["apiVersion"] == "e2e.example.com/v2"
                        && e["object"]["b"] == "B"),
                "{stream}"
            );
        }
        // Deleting through v2 answers in v2.
        let (code, out) = call(&api, "DELETE", &format!("{v2}/t3"), None).await;
        assert_eq!(code, 200, "{out}");
        assert_eq!(out["apiVersion"], "e2e.example.com/v2", "{out}");
    }

    /// A conversion webhook that cannot be called: reads and writes that need it are
    /// upstream's 500 InternalError with the conversion error; others work.
    #[tokio::test]
    async fn failing_conversion_webhook_is_an_internal_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let api = server(dir.path()).await;
        two_versions(
            &api,
            json!({"strategy": "Webhook", "webhook": {"conversionReviewVersions": ["v1"],
                "clientConfig": {"url": "https://127.0.0.1:1/convert"}}}),
        )
        .await;
        let (v1, v2) = (
            "/apis/e2e.example.com/v1/things",
            "/apis/e2e.example.com/v2/things",
        );
        let (code, out) = call(&api, "POST", v1, Some(thing("v1", "t1"))).await;
        assert_eq!(code, 201, "{out}");
        for (method, path, body) in [
            ("GET", format!("{v2}/t1"), None),
            ("GET", v2.to_string(), None),
            ("POST", v2.to_string(), Some(thing("v2", "t2"))),
        ] {
            let (code, out) = call(&api, method, &path, body).await;
            assert_eq!(code, 500, "{method} {path}: {out}");
            assert_eq!(out["reason"], "InternalError", "{out}");
            let msg = out["message"].as_str().unwrap_or("");
            assert!(
                msg.starts_with("Internal error occurred: conversion webhook for e2e.example.com/"),
                "{msg}"
            );
        }
        let (code, list) = call(&api, "GET", v1, None).await;
        assert_eq!(code, 200, "{list}");
        assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");
    }

    /// Upstream e2e "CustomResourcePublishOpenAPI": `/openapi/v2` publishes each served
    /// version in its v2 form, and drops a renamed or unserved version at once.
    #[tokio::test]
    async fn openapi_v2_follows_the_served_versions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let api = server(dir.path()).await;
        let root_preserving = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true,
            "properties": {"spec": {"type": "object"}}});
        let nested = json!({"type": "object", "description": "Thing", "properties": {
            "spec": {"type": "object", "description": "Spec", "x-kubernetes-preserve-unknown-fields": true,
                "properties": {"known": {"type": "string"}}}}});
        let (code, out) = call(
            &api,
            "POST",
            CRDS,
            Some(crd(vec![
                version("v2", true, root_preserving),
                version("v3", false, nested),
            ])),
        )
        .await;
        assert_eq!(code, 201, "{out}");
        let (v2, v3) = ("com.example.e2e.v2.Thing", "com.example.e2e.v3.Thing");
        let defs = eventually("both definitions", || async {
            let d = definitions(&api).await;
            (d.get(v2).is_some() && d.get(v3).is_some()).then_some(d)
        })
        .await;
        assert_eq!(
            defs[v2],
            json!({"type": "object", "x-kubernetes-group-version-kind":
                [{"group": "e2e.example.com", "kind": "Thing", "version": "v2"}]})
        );
        assert_eq!(
            defs[v3]["properties"]["spec"],
            json!({"description": "Spec", "x-kubernetes-preserve-unknown-fields": true})
        );
        // v3 keeps the whole schema.
        let (_, doc) = call(&api, "GET", "/openapi/v3/apis/e2e.example.com/v3", None).await;
        assert_eq!(
            doc["components"]["schemas"][v3]["properties"]["spec"]["properties"]["known"]["type"],
            "string"
        );
        // Renamed: v3 -> v4.
        let (code, out) = call_with_type(
            &api,
            "PATCH",
            &format!("{CRDS}/things.e2e.example.com"),
            JSON_PATCH,
            Some(json!([{"op": "replace", "path": "/spec/versions/1/name", "value": "v4"}])),
        )
        .await;
        assert_eq!(code, 200, "{out}");
        let v4 = "com.example.e2e.v4.Thing";
        eventually("v3 replaced by v4", || async {
            let d = definitions(&api).await;
            (d.get(v4).is_some() && d.get(v3).is_none()).then_some(())
        })
        .await;
        // Not served any more.
        let (code, out) = call_with_type(
            &api,
            "PATCH",
            &format!("{CRDS}/things.e2e.example.com"),
            JSON_PATCH,
            Some(json!([{"op": "replace", "path": "/spec/versions/1/served", "value": false}])),
        )
        .await;
        assert_eq!(code, 200, "{out}");
        eventually("v4 gone", || async {
            let d = definitions(&api).await;
            (d.get(v4).is_none() && d.get(v2).is_some()).then_some(())
        })
        .await;
        // A schema change alone is published too.
        let (code, out) = call_with_type(
            &api,
            "PATCH",
            &format!("{CRDS}/things.e2e.example.com"),
            JSON_PATCH,
            Some(
                json!([{"op": "replace", "path": "/spec/versions/0/schema/openAPIV3Schema",
                "value": {"type": "object", "description": "now with a schema"}}]),
            ),
        )
        .await;
        assert_eq!(code, 200, "{out}");
        eventually("the new v2 schema", || async {
            let d = definitions(&api).await;
            (d[v2]["description"] == "now with a schema").then_some(())
        })
        .await;
    }
}
