//! CustomResourceDefinitions: the CRD controller inside the API server (names accepted,
//! established, resources registered, OpenAPI rebuilt, objects deleted with the CRD) and
//! what the REST handlers need to serve custom resources (schemas, scale paths, printer
//! columns).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use rk3s_api::{ApiError, ResourceInfo};
use rk3s_store::StoreError;
use serde_json::{json, Value};

use crate::cache::CacheEventKind;
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
}

/// Served custom resources, by (group, version, plural).
#[derive(Default)]
pub struct CrdState {
    versions: RwLock<HashMap<(String, String, String), Arc<CrdVersion>>>,
    /// The resources each CRD registered, by CRD name.
    installed: RwLock<HashMap<String, Vec<ResourceInfo>>>,
    /// OpenAPI schemas of custom resources, by definition name.
    schemas: RwLock<BTreeMap<String, Value>>,
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
            reconcile(&inner, &o.object).await;
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
    let custom = inner
        .schemas
        .crds
        .schemas
        .read()
        .map(|s| s.clone())
        .unwrap_or_default();
    match rk3s_openapi::OpenApi::build_with_schemas(&resources, crate::KUBERNETES_VERSION, &custom)
    {
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
            inner
                .schemas
                .registry
                .remove(&r.group, &r.version, &r.plural);
            if let Ok(mut v) = inner.schemas.crds.versions.write() {
                v.remove(&(r.group.clone(), r.version.clone(), r.plural.clone()));
            }
            if let Ok(mut s) = inner.schemas.crds.schemas.write() {
                s.remove(&rk3s_openapi::crd_definition_name(
                    &r.group, &r.version, &r.kind,
                ));
            }
        }
        rebuild_openapi(inner);
        tracing::info!(crd = name, "custom resource no longer served");
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
        .filter(|o| object::name(&o.object) != Some(name.as_str()))
        .map(|o| (*o.object).clone())
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
    for r in &old {
        if !resources
            .iter()
            .any(|n| n.group == r.group && n.version == r.version && n.plural == r.plural)
        {
            inner
                .schemas
                .registry
                .remove(&r.group, &r.version, &r.plural);
        }
    }
    for r in &resources {
        let version = CrdVersion {
            schema: rk3s_crd::Schema::from_crd(&with_status, &r.version).ok(),
            scale: rk3s_crd::scale_spec(&with_status, &r.version),
            columns: rk3s_crd::printer_columns(&with_status, &r.version),
        };
        if let Ok(mut v) = inner.schemas.crds.versions.write() {
            v.insert(
                (r.group.clone(), r.version.clone(), r.plural.clone()),
                Arc::new(version),
            );
        }
        if let Some(schema) = rk3s_crd::openapi_schema(&with_status, &r.version) {
            if let Ok(mut s) = inner.schemas.crds.schemas.write() {
                s.insert(
                    rk3s_openapi::crd_definition_name(&r.group, &r.version, &r.kind),
                    schema,
                );
            }
        }
        inner.schemas.registry.add(r.clone());
    }
    let changed = old != resources;
    if let Ok(mut m) = inner.schemas.crds.installed.write() {
        m.insert(name.clone(), resources);
    }
    if changed {
        rebuild_openapi(inner);
        tracing::info!(crd = %name, "custom resource served");
    }
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
