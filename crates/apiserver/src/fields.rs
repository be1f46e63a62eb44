//! Field ownership (`metadata.managedFields`) of writes that are not server-side
//! apply: the field manager of a request and `rk3s_patch::track_update`.

use std::sync::Arc;

use rk3s_api::ResourceInfo;
use rk3s_openapi::OpenApi;
use serde_json::Value;

use crate::object;
use crate::request::Query;
use crate::state::Inner;

/// The field manager of a request: `?fieldManager=`, else the User-Agent's product
/// (`kubectl`), as upstream.
pub fn field_manager(query: &Query, headers: &http::HeaderMap) -> String {
    query
        .get("fieldManager")
        .map(String::from)
        .unwrap_or_else(|| {
            headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|ua| ua.split('/').next().unwrap_or(ua).to_string())
                .unwrap_or_else(|| "unknown".into())
        })
}

/// Records a non-apply write in `metadata.managedFields` (server-side apply's field
/// ownership: fields this write changed move to its manager).
pub fn update_managed_fields(
    inner: &Inner,
    res: &ResourceInfo,
    obj: &mut Value,
    old: Option<&Value>,
    query: &Query,
    headers: &http::HeaderMap,
    subresource: Option<&str>,
) {
    let manager = field_manager(query, headers);
    let oa = inner.openapi();
    let derived = rk3s_patch::DerivedApplySchema(&*oa);
    let cache = apply_type_cache(&oa);
    let schema = rk3s_patch::CachedApplySchema {
        schema: &derived,
        cache: &cache,
    };
    let api_version = res.api_version();
    rk3s_patch::track_update(
        old,
        obj,
        &manager,
        &schema,
        &res.definition,
        &object::now_rfc3339(),
        &api_version,
        subresource,
    );
}

/// The field types server-side apply resolved from `oa`, kept while `oa` is the
/// current OpenAPI document (a rebuilt document, e.g. after a CRD change, starts a
/// new cache). The `Weak` pins the document's allocation, so its address cannot be
/// reused by another document while the cache refers to it.
pub fn apply_type_cache(oa: &Arc<OpenApi>) -> Arc<rk3s_patch::TypeCache> {
    type Slot = Option<(std::sync::Weak<OpenApi>, Arc<rk3s_patch::TypeCache>)>;
    static CACHE: std::sync::Mutex<Slot> = std::sync::Mutex::new(None);
    let mut slot = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((doc, cache)) = slot.as_ref() {
        if std::ptr::eq(doc.as_ptr(), Arc::as_ptr(oa)) {
            return cache.clone();
        }
    }
    let cache = Arc::new(rk3s_patch::TypeCache::new());
    *slot = Some((Arc::downgrade(oa), cache.clone()));
    cache
}
