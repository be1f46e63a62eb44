//! The verbs on resources: get, list, create, update, patch, delete, deletecollection,
//! and the `status` and `scale` subresources, with upstream's object semantics.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rk3s_api::selector::{FieldSelector, LabelSelector};
use rk3s_api::{ApiError, Cause, ResourceInfo};
use rk3s_store::{KeyValue, ListOptions, StoreError};
use serde_json::{json, Map, Value};

use crate::body::{self, Response};
use crate::cache::{decode, set_resource_version, CachedObject};
use crate::output::{list_object, Output};
use crate::state::Inner;
use crate::strategy::DeleteMode;

use crate::object::{self, meta_mut};
use crate::request::{Query, RequestInfo};

/// How long a consistent read waits for the watch cache to catch up.
pub(crate) const FRESH_WAIT: Duration = Duration::from_secs(3);

/// One resource request, parsed.
pub struct Call<'a> {
    /// Shared server state.
    pub inner: &'a Inner,
    /// Path facts.
    pub info: RequestInfo,
    /// The resource.
    pub res: Arc<ResourceInfo>,
    /// Query parameters.
    pub query: Query,
    /// Request headers.
    pub headers: http::HeaderMap,
    /// Request body.
    pub body: Bytes,
    /// How to render the answer.
    pub output: Output,
    /// Who asks.
    pub user: rk3s_auth::UserInfo,
    /// The body is the result of a server-side apply (managedFields already set).
    pub applied: bool,
}

/// Maps store errors to API errors.
pub fn store_err(res: &ResourceInfo, name: &str, e: StoreError) -> ApiError {
    match e {
        StoreError::AlreadyExists(_) => ApiError::already_exists(res, name),
        StoreError::NotFound(_) => ApiError::not_found(res, name),
        StoreError::Conflict { .. } => ApiError::conflict(res, name),
        StoreError::Compacted {
            requested,
            compacted,
        } => ApiError::gone(format!(
            "too old resource version: {requested} ({compacted})"
        )),
        StoreError::FutureRevision { requested, current } => {
            let mut e = ApiError::timeout(format!(
                "Too large resource version: {requested}, current: {current}"
            ));
            e.retry_after_seconds = Some(1);
            e
        }
        other => ApiError::internal(other.to_string()),
    }
}

/// The stored JSON of `obj` (serialized in place: no copy unless the resource is
/// stored in another form).
fn storage_bytes(res: &ResourceInfo, obj: &Value) -> Result<Vec<u8>, ApiError> {
    let r = if crate::convert::needs_conversion(res) {
        serde_json::to_vec(&crate::convert::to_storage(res, obj.clone()))
    } else {
        serde_json::to_vec(obj)
    };
    r.map_err(|e| ApiError::internal(e.to_string()))
}

/// A write serialized once (see [`Call::stage`]).
struct Staged {
    /// The bytes written to the store.
    stored: Bytes,
    /// The object, when the answer needs it (else it went to the watch cache).
    object: Option<Value>,
    /// Whether the watch cache was handed the object.
    handed: bool,
    /// The object was converted to its CRD's storage version: the answer converts it
    /// back (`object` is the stored object).
    converted: bool,
}

/// Whether two objects are equal but for `metadata.resourceVersion` (an update that
/// would store `a` over `b` changes nothing).
fn same_but_resource_version(a: &Value, b: &Value) -> bool {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return a == b;
    };
    if a.len() != b.len() {
        return false;
    }
    a.iter().all(|(k, v)| match (b.get(k), k.as_str()) {
        (None, _) => false,
        (Some(Value::Object(mb)), "metadata") => {
            let Some(ma) = v.as_object() else {
                return false;
            };
            let count =
                |m: &Map<String, Value>| m.len() - usize::from(m.contains_key("resourceVersion"));
            count(ma) == count(mb)
                && ma
                    .iter()
                    .filter(|(k, _)| *k != "resourceVersion")
                    .all(|(k, v)| mb.get(k) == Some(v))
        }
        (Some(w), _) => v == w,
    })
}

pub(crate) fn kv_to_object(kv: &KeyValue) -> Result<Value, ApiError> {
    decode(&kv.value, kv.mod_revision)
        .ok_or_else(|| ApiError::internal(format!("object at {} cannot be decoded", kv.key)))
}

/// Label and field selectors of a list, watch or deletecollection.
pub struct Filter {
    label: Option<LabelSelector>,
    field: Option<FieldSelector>,
    group: String,
    kind: String,
}

impl Filter {
    /// Parses `labelSelector` and `fieldSelector`.
    pub fn from_query(res: &ResourceInfo, q: &Query) -> Result<Filter, ApiError> {
        let label = match q.get("labelSelector") {
            Some(s) => {
                Some(LabelSelector::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))?)
            }
            None => None,
        };
        let field = match q.get("fieldSelector") {
            Some(s) => {
                let fs =
                    FieldSelector::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))?;
                Some(
                    fs.convert_for(&res.group, &res.kind)
                        .map_err(|e| ApiError::bad_request(e.to_string()))?,
                )
            }
            None => None,
        };
        Ok(Filter {
            label,
            field,
            group: res.group.clone(),
            kind: res.kind.clone(),
        })
    }

    /// Whether the filter selects everything.
    pub fn is_empty(&self) -> bool {
        self.label.is_none() && self.field.is_none()
    }

    /// Whether `obj` is selected.
    pub fn matches(&self, obj: &Value) -> bool {
        if let Some(l) = &self.label {
            if !l.matches_json(object::labels(obj)) {
                return false;
            }
        }
        if let Some(f) = &self.field {
            if !f.matches(|field| {
                rk3s_api::selector::field_value(&self.group, &self.kind, obj, field)
            }) {
                return false;
            }
        }
        true
    }

    /// Whether a cached object matches, read from its selectable fields when the cache
    /// keeps it compact (no parse), else from its parse.
    pub fn matches_cached(&self, o: &CachedObject) -> bool {
        if self.is_empty() {
            return true;
        }
        match o.selectable() {
            Some(sel) if sel.is_of(&self.group, &self.kind) => {
                if let Some(l) = &self.label {
                    if !l.matches_with(|k| sel.label(k)) {
                        return false;
                    }
                }
                if let Some(f) = &self.field {
                    if !f.matches(|field| sel.field(field).map(String::from)) {
                        return false;
                    }
                }
                true
            }
            _ => self.matches(&o.object()),
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    v: String,
    rv: i64,
    start: String,
}

fn encode_continue(rv: i64, start: &str) -> String {
    use base64::Engine;
    let t = ContinueToken {
        v: "meta.k8s.io/v1".into(),
        rv,
        start: start.to_string(),
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&t).unwrap_or_default())
}

fn decode_continue(s: &str) -> Result<ContinueToken, ApiError> {
    use base64::Engine;
    let bad = || {
        ApiError::bad_request(
            "continue key is not valid: illegal base64 data at input byte 0".to_string(),
        )
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| bad())?;
    let t: ContinueToken = serde_json::from_slice(&raw).map_err(|_| bad())?;
    if t.v != "meta.k8s.io/v1" {
        return Err(bad());
    }
    Ok(t)
}

/// How an object to write reached the server: upstream decodes each way differently,
/// which decides how a value of the wrong type is refused.
#[derive(Clone, Copy)]
enum Decoded<'p> {
    /// A create or update body (or a server-side apply result): 400, `K in version "v"
    /// cannot be handled as a K: json: cannot unmarshal ...`.
    Body,
    /// The result of a JSON or merge patch: 422 on field `patch`.
    JsonPatch,
    /// The result of a strategic merge patch (`patch`, for the message): 422 on field
    /// `patch`, with the unstructured converter's message.
    StrategicPatch(&'p Value),
}

/// The definition of `autoscaling/v1` `Scale` (the `scale` subresource's body).
const SCALE: &str = "io.k8s.api.autoscaling.v1.Scale";

/// How the object an update or patch (of `patch_kind`, with `patch`) produced was decoded.
fn decoded_as<'p>(patch_kind: &str, patch: Option<&'p Value>) -> Decoded<'p> {
    match (patch_kind, patch) {
        ("application/json-patch+json" | "application/merge-patch+json", _) => Decoded::JsonPatch,
        ("application/strategic-merge-patch+json", Some(pb)) => Decoded::StrategicPatch(pb),
        // Bodies of PUT; server-side apply results (upstream's typed apply refuses wrong
        // types before: never stored either way).
        _ => Decoded::Body,
    }
}

impl<'a> Call<'a> {
    /// Renders one object (custom resources use their CRD's printer columns).
    pub fn render_one(&self, obj: Value, code: u16) -> Response {
        if let (Output::Table(inc), Some(v)) =
            (&self.output, self.inner.schemas.crds.version(&self.res))
        {
            let rv = object::meta_str(&obj, "resourceVersion")
                .unwrap_or("")
                .to_string();
            return body::json(
                code,
                &crate::crd::table(&v, std::slice::from_ref(&obj), &rv, None, *inc),
            );
        }
        self.output.one(&self.res, obj, code)
    }

    /// Renders a list.
    pub fn render_list(
        &self,
        items: Vec<Value>,
        rv: i64,
        cont: Option<String>,
        remaining: Option<usize>,
    ) -> Response {
        if let (Output::Table(inc), Some(v)) =
            (&self.output, self.inner.schemas.crds.version(&self.res))
        {
            return body::json(
                200,
                &crate::crd::table(&v, &items, &rv.to_string(), cont.as_deref(), *inc),
            );
        }
        self.output.list(&self.res, items, rv, cont, remaining)
    }

    /// Applies `fieldValidation` to fields that were pruned: Strict → 400, Warn →
    /// warnings, Ignore → nothing.
    fn unknown_field_policy(&self, unknown: &[String]) -> Result<Vec<String>, ApiError> {
        if unknown.is_empty() {
            return Ok(Vec::new());
        }
        match self.query.get("fieldValidation").unwrap_or("Warn") {
            "Strict" => {
                let msg = if unknown.len() == 1 {
                    format!("unknown field \"{}\"", unknown[0])
                } else {
                    format!(
                        "[{}]",
                        unknown
                            .iter()
                            .map(|u| format!("unknown field \"{u}\""))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                Err(self.decode_error(&format!("strict decoding error: {msg}")))
            }
            "Ignore" => Ok(Vec::new()),
            _ => Ok(unknown
                .iter()
                .map(|u| format!("unknown field \"{u}\""))
                .collect()),
        }
    }

    pub(crate) fn name(&self) -> &str {
        self.info.name.as_deref().unwrap_or("")
    }

    fn ns(&self) -> Option<&str> {
        if self.res.namespaced() {
            self.info.namespace.as_deref()
        } else {
            None
        }
    }

    fn key(&self) -> String {
        self.res.key(self.ns(), self.name())
    }

    pub(crate) fn dry_run(&self) -> bool {
        self.query.get("dryRun").is_some()
    }

    /// A stored object as reads return it: a custom resource converted to the
    /// requested version, then [`crate::crd::read`].
    async fn read(&self, stored: Value) -> Result<Value, ApiError> {
        let crd = self.inner.schemas.crds.version(&self.res);
        let obj = crate::crd::convert_one(
            &self.inner.cache,
            crd.as_deref(),
            stored,
            &self.res.api_version(),
        )
        .await?;
        Ok(crate::crd::read(&self.res, crd.as_deref(), obj))
    }

    /// [`Call::read`] of many stored objects (custom resources converted in one call).
    async fn read_all(&self, stored: Vec<Value>) -> Result<Vec<Value>, ApiError> {
        let crd = self.inner.schemas.crds.version(&self.res);
        let objs = crate::crd::convert_to(
            &self.inner.cache,
            crd.as_deref(),
            stored,
            &self.res.api_version(),
        )
        .await?;
        Ok(objs
            .into_iter()
            .map(|o| crate::crd::read(&self.res, crd.as_deref(), o))
            .collect())
    }

    /// GET of one object (or its `status`).
    pub async fn get(&self) -> Result<Response, ApiError> {
        let kv = self
            .inner
            .store
            .get(&self.key())
            .await
            .map_err(|e| store_err(&self.res, self.name(), e))?;
        let kv = kv.ok_or_else(|| ApiError::not_found(&self.res, self.name()))?;
        let obj = self.read(kv_to_object(&kv)?).await?;
        if self.info.subresource.as_deref() == Some("scale") {
            return Ok(body::json(200, &self.to_scale(&obj)?));
        }
        Ok(self.render_one(obj, 200))
    }

    /// LIST, from the watch cache, or from the store when paging.
    pub async fn list(&self) -> Result<Response, ApiError> {
        let filter = Filter::from_query(&self.res, &self.query)?;
        let limit: usize = self
            .query
            .get("limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let prefix = self.res.namespace_prefix(self.ns());
        let rv_param = self.query.get("resourceVersion");
        if let Some(c) = self.query.get("continue") {
            let t = decode_continue(c)?;
            return self
                .list_from_store(
                    &prefix,
                    &filter,
                    limit,
                    Some(t.rv),
                    Some(format!("{prefix}{}", t.start)),
                )
                .await;
        }
        let exact = self.query.get("resourceVersionMatch") == Some("Exact");
        if exact && rv_param.is_none_or(|r| r == "0") {
            return Err(ApiError::invalid_simple(
                "resourceVersionMatch",
                "resourceVersionMatch",
                "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"\"",
            ));
        }
        if (limit > 0 && rv_param != Some("0")) || exact {
            let rev = match (rv_param, self.query.get("resourceVersionMatch")) {
                (Some(rv), Some("Exact")) => Some(rv.parse::<i64>().map_err(|_| {
                    ApiError::bad_request(format!("invalid resource version: {rv}"))
                })?),
                _ => None,
            };
            return self
                .list_from_store(&prefix, &filter, limit, rev, None)
                .await;
        }
        // The revision the answer must be at least as new as (none for "0": any).
        let want = match rv_param {
            Some("0") => None,
            Some(rv) => {
                let want: i64 = rv.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid resource version: {rv}"))
                })?;
                self.inner.cache.wait_for(want, FRESH_WAIT).await;
                Some(want)
            }
            None => Some(
                self.inner
                    .cache
                    .wait_fresh(FRESH_WAIT)
                    .await
                    .map_err(|e| store_err(&self.res, "", e))?,
            ),
        };
        // The items and the revision come from one snapshot of the cache: the list's
        // resourceVersion is exactly the state it shows, so a watch from it misses
        // nothing and repeats nothing.
        let (items, rv) = self.inner.cache.list(&prefix);
        if let Some(want) = want.filter(|w| rv < *w) {
            // The cache did not catch up in time: answer from the store, as upstream
            // falls back to etcd, rather than label older items with a newer revision.
            tracing::debug!(
                want,
                cache = rv,
                "watch cache behind; listing from the store"
            );
            let current = self
                .inner
                .store
                .current_revision()
                .await
                .map_err(|e| store_err(&self.res, "", e))?;
            if current < want {
                return Err(store_err(
                    &self.res,
                    "",
                    StoreError::FutureRevision {
                        requested: want,
                        current,
                    },
                ));
            }
            return self.list_from_store(&prefix, &filter, 0, None, None).await;
        }
        let crd = self.inner.schemas.crds.version(&self.res);
        if crate::crd::changes_on_read(&self.res, crd.as_deref()) {
            let items: Vec<Value> = self
                .read_all(items.into_iter().map(|o| o.value()).collect())
                .await?
                .into_iter()
                .filter(|o| filter.matches(o))
                .collect();
            return Ok(self.render_list(items, rv, None, None));
        }
        if self.output == Output::Json {
            // Fast path: splice the cached encodings into the list body.
            let head = serde_json::to_vec(&list_object(&self.res, Vec::new(), rv, None, None))
                .unwrap_or_default();
            let mut out: Vec<u8> = Vec::with_capacity(
                head.len() + items.iter().map(|o| o.raw.len() + 1).sum::<usize>(),
            );
            // `head` ends with `"items":[]}`: reopen the array.
            out.extend_from_slice(&head[..head.len().saturating_sub(2)]);
            let mut first = true;
            for o in items.iter().filter(|o| filter.matches_cached(o)) {
                if !first {
                    out.push(b',');
                }
                first = false;
                out.extend_from_slice(&o.raw);
            }
            out.extend_from_slice(b"]}");
            return Ok(body::bytes_response(200, "application/json", out));
        }
        let items: Vec<Value> = items
            .into_iter()
            .filter(|o| filter.matches_cached(o))
            .map(|o| o.value())
            .collect();
        Ok(self.render_list(items, rv, None, None))
    }

    async fn list_from_store(
        &self,
        prefix: &str,
        filter: &Filter,
        limit: usize,
        rev: Option<i64>,
        start: Option<String>,
    ) -> Result<Response, ApiError> {
        let mut items = Vec::new();
        let mut start_after = start;
        let mut read_rev = rev;
        let mut more;
        let mut remaining;
        let mut last_key = String::new();
        loop {
            let want = if limit == 0 { 0 } else { limit - items.len() };
            let page = self
                .inner
                .store
                .list(prefix, ListOptions { revision: read_rev, limit: if want == 0 { None } else { Some(want.max(1)) }, start_after: start_after.clone() })
                .await
                .map_err(|e| match e {
                    StoreError::Compacted { .. } => ApiError::gone("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list."),
                    e => store_err(&self.res, "", e),
                })?;
            read_rev = Some(page.revision);
            more = page.more;
            remaining = page.remaining;
            let mut stored = Vec::with_capacity(page.items.len());
            for kv in &page.items {
                last_key = kv.key.clone();
                stored.push(kv_to_object(kv)?);
            }
            for obj in self.read_all(stored).await? {
                if filter.matches(&obj) {
                    items.push(obj);
                }
            }
            if !more || (limit > 0 && items.len() >= limit) || page.items.is_empty() {
                break;
            }
            start_after = Some(last_key.clone());
        }
        let rv = read_rev.unwrap_or(0);
        let cont = if more {
            Some(encode_continue(
                rv,
                last_key.strip_prefix(prefix).unwrap_or(&last_key),
            ))
        } else {
            None
        };
        let rem = if more && filter.is_empty() {
            Some(remaining)
        } else {
            None
        };
        Ok(self.render_list(items, rv, cont, rem))
    }

    /// Decodes the request body (JSON, YAML or protobuf, by `Content-Type`, through
    /// [`body::decode_request`]) into an object.
    pub fn body_object(&self) -> Result<Value, ApiError> {
        let api_version = if self.res.group.is_empty() {
            self.res.version.clone()
        } else {
            format!("{}/{}", self.res.group, self.res.version)
        };
        let default_message = rk3s_protobuf::message_name(&api_version, &self.res.kind);
        let v = body::decode_request(
            body::content_type(&self.headers),
            &self.body,
            default_message,
        )
        .map_err(|e| match e {
            body::RequestBodyError::UnsupportedMediaType(mt) => {
                ApiError::unsupported_media_type(&mt)
            }
            other => self.decode_error(&other.to_string()),
        })?;
        if !v.is_object() {
            return Err(self.decode_error("expected an object"));
        }
        Ok(v)
    }

    fn decode_error(&self, e: &str) -> ApiError {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {}",
            self.res.kind, self.res.version, self.res.kind, e
        ))
    }

    /// Checks kind/apiVersion, decodes the object as upstream's typed decoding does
    /// (wrong JSON types refused, explicit nulls dropped: [`Call::decode_typed`]),
    /// applies fieldValidation, prunes unknown fields.
    fn check_type(
        &self,
        obj: &mut Value,
        kind: &str,
        api_version: &str,
        how: Decoded<'_>,
    ) -> Result<Vec<String>, ApiError> {
        let mut warnings = Vec::new();
        if let Some(k) = obj.get("kind").and_then(|k| k.as_str()) {
            if !k.is_empty() && k != kind {
                return Err(ApiError::bad_request(format!("{k} in version \"{}\" cannot be handled as a {kind}: expected kind {kind}, got {k}", self.res.version)));
            }
        }
        if let Some(av) = obj.get("apiVersion").and_then(|k| k.as_str()) {
            if !av.is_empty() && av != api_version {
                return Err(ApiError::bad_request(format!("the API version in the data ({av}) does not match the expected API version ({api_version})")));
            }
        }
        if let Some(m) = obj.as_object_mut() {
            m.insert("kind".into(), json!(kind));
            m.insert("apiVersion".into(), json!(api_version));
        }
        let definition = if kind == self.res.kind {
            self.res.definition.clone()
        } else {
            String::new()
        };
        if !definition.is_empty() {
            self.decode_typed(&definition, obj, how)?;
            let unknown = self.inner.openapi().unknown_fields(&definition, obj);
            if !unknown.is_empty() {
                match self.query.get("fieldValidation").unwrap_or("Warn") {
                    "Strict" => {
                        let msg = if unknown.len() == 1 {
                            format!("unknown field \"{}\"", unknown[0])
                        } else {
                            format!(
                                "[{}]",
                                unknown
                                    .iter()
                                    .map(|u| format!("unknown field \"{u}\""))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        };
                        return Err(self.decode_error(&format!("strict decoding error: {msg}")));
                    }
                    "Ignore" => {}
                    _ => warnings.extend(unknown.iter().map(|u| format!("unknown field \"{u}\""))),
                }
                // Removed by walking the object (paths cannot name fields like `.foo`).
                self.inner.openapi().remove_unknown_fields(&definition, obj);
            }
        }
        Ok(warnings)
    }

    /// Decodes a built-in object (`definition`) as upstream's typed decoding: a value of
    /// the wrong JSON type is refused as `how` says upstream refuses it, explicit nulls
    /// are dropped (before admission and field tracking see the object).
    fn decode_typed(
        &self,
        definition: &str,
        obj: &mut Value,
        how: Decoded<'_>,
    ) -> Result<(), ApiError> {
        let path = match how {
            Decoded::StrategicPatch(_) => rk3s_openapi::DecodePath::Unstructured,
            _ => rk3s_openapi::DecodePath::Json,
        };
        let Err(e) = self.inner.openapi().decode_object(definition, obj, path) else {
            return Ok(());
        };
        let patch_error = |value: String| {
            let message = format!(
                "Invalid value: {}: {}",
                rk3s_openapi::decode::go_quote(&value),
                e.message
            );
            let mut err = ApiError::new(
                422,
                "Invalid",
                format!(" \"\" is invalid: patch: {message}"),
            );
            err.causes = vec![Cause {
                reason: "FieldValueInvalid".into(),
                message,
                field: "patch".into(),
            }];
            err
        };
        Err(match how {
            Decoded::Body if definition == SCALE => ApiError::bad_request(format!(
                "Scale in version \"v1\" cannot be handled as a Scale: {}",
                e.message
            )),
            Decoded::Body => self.decode_error(&e.message),
            // Upstream decodes the patched JSON into the typed object: 422 on `patch`
            // with the patched document as the value.
            Decoded::JsonPatch => patch_error(serde_json::to_string(obj).unwrap_or_default()),
            // Upstream converts the patched map to the typed object: 422 on `patch`
            // with the patch itself (Go's `%+v`) as the value.
            Decoded::StrategicPatch(patch) => patch_error(rk3s_openapi::decode::go_sprint(patch)),
        })
    }

    fn invalid(&self, name: &str, errs: Vec<rk3s_validation::FieldError>) -> ApiError {
        let causes = errs
            .iter()
            .map(|e| Cause {
                reason: e.reason().to_string(),
                message: e.message(),
                field: e.field.clone(),
            })
            .collect();
        ApiError::invalid(&self.res, name, causes)
    }

    /// POST: create an object.
    pub async fn create(&self) -> Result<Response, ApiError> {
        if self.info.subresource.is_some() || self.info.name.is_some() {
            return Err(ApiError::method_not_allowed(
                "the server does not allow this method on the requested resource",
            ));
        }
        let mut obj = self.body_object()?;
        let warnings = self.check_type(
            &mut obj,
            &self.res.kind,
            &self.res.api_version(),
            Decoded::Body,
        )?;
        let strategy = crate::strategy::for_resource(&self.res);
        strategy.normalize_input(&mut obj);
        // metadata
        let ns = self.ns().map(String::from);
        {
            let m = meta_mut(&mut obj)
                .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
            if m.get("resourceVersion")
                .and_then(|v| v.as_str())
                .is_some_and(|s| !s.is_empty())
            {
                return Err(ApiError::bad_request(
                    "resourceVersion should not be set on objects to be created",
                ));
            }
            m.remove("resourceVersion");
            let has_name = m
                .get("name")
                .and_then(|n| n.as_str())
                .is_some_and(|n| !n.is_empty());
            if !has_name {
                if let Some(g) = m
                    .get("generateName")
                    .and_then(|n| n.as_str())
                    .filter(|g| !g.is_empty())
                {
                    let g = g.to_string();
                    m.insert(
                        "name".into(),
                        json!(format!("{g}{}", object::random_suffix())),
                    );
                }
            }
            if self.res.namespaced() {
                let body_ns = m
                    .get("namespace")
                    .and_then(|n| n.as_str())
                    .filter(|s| !s.is_empty())
                    .map(String::from);
                match (&ns, body_ns) {
                    (Some(p), Some(b)) if *p != b => {
                        return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
                    }
                    (Some(p), _) => {
                        m.insert("namespace".into(), json!(p));
                    }
                    (None, _) => {
                        return Err(ApiError::method_not_allowed(
                            "the server does not allow this method on the requested resource",
                        ));
                    }
                }
            } else {
                m.remove("namespace");
            }
            m.insert("uid".into(), json!(object::new_uid()));
            m.insert("creationTimestamp".into(), json!(object::now_rfc3339()));
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
            m.remove("selfLink");
            if strategy.tracks_generation(&self.res) {
                m.insert("generation".into(), json!(1));
            } else {
                m.remove("generation");
            }
        }
        let name = object::name(&obj).unwrap_or("").to_string();
        if let Some(ns) = &ns {
            self.inner
                .check_namespace_open(ns, &self.res, &name)
                .await?;
        }
        let allocator_fields = strategy.allocator_fields(&obj);
        rk3s_validation::apply_defaults(
            &self.res.group,
            &self.res.version,
            &self.res.kind,
            &mut obj,
        );
        strategy.prepare_for_create(&self.res, &mut obj);
        let mut warnings = warnings;
        warnings.extend(
            crate::admission::mutate(
                self.inner,
                &self.res,
                None,
                "CREATE",
                &mut obj,
                None,
                &self.user,
                self.dry_run(),
            )
            .await?,
        );
        strategy.derive_status(self.inner, &mut obj, None);
        strategy.check_write(self.inner, &self.res, &self.user, &obj)?;
        strategy.validate_object(&self.res, None, &mut obj, None)?;
        if let Some(v) = self.inner.schemas.crds.version(&self.res) {
            let pruned = crate::crd::admit_custom_resource(&v, &self.res, &mut obj)?;
            warnings.extend(self.unknown_field_policy(&pruned)?);
        }
        let errs = strategy.validate_create(&self.res, &obj);
        if !errs.is_empty() {
            return Err(self.invalid(&name, errs));
        }
        warnings.extend(
            crate::admission::validate(
                self.inner,
                &self.res,
                None,
                "CREATE",
                &obj,
                None,
                &self.user,
                self.dry_run(),
            )
            .await?,
        );
        let key = self.res.key(ns.as_deref(), &name);
        if !self.applied {
            let withheld: Vec<(&str, Value)> =
                match obj.get_mut("spec").and_then(|s| s.as_object_mut()) {
                    Some(spec) => allocator_fields
                        .iter()
                        .filter_map(|k| spec.remove(*k).map(|v| (*k, v)))
                        .collect(),
                    None => Vec::new(),
                };
            crate::fields::update_managed_fields(
                self.inner,
                &self.res,
                &mut obj,
                None,
                &self.query,
                &self.headers,
                None,
            );
            if let Some(spec) = obj.get_mut("spec").and_then(|s| s.as_object_mut()) {
                spec.extend(withheld.into_iter().map(|(k, v)| (k.to_string(), v)));
            }
        }
        // After field tracking, as upstream's Service storage allocates: the allocated
        // clusterIP(s), ipFamilies, ipFamilyPolicy and node ports have no owner, so a
        // later server-side apply without them does not drop them.
        let allocated = strategy
            .allocate(self.inner, &self.res, &name, &mut obj, None, self.dry_run())
            .await?;
        // The status fields upstream always encodes, after field tracking (the status a
        // create resets is owned by no one).
        rk3s_openapi::decode::fill_always_encoded_status(&self.res.definition, &mut obj);
        if self.dry_run() {
            if self
                .inner
                .store
                .get(&key)
                .await
                .map_err(|e| store_err(&self.res, &name, e))?
                .is_some()
            {
                return Err(ApiError::already_exists(&self.res, &name));
            }
            return Ok(with_warnings(self.render_one(obj, 201), &warnings));
        }
        let staged = match self.stage_stored(&key, obj, false).await {
            Ok(s) => s,
            Err(e) => {
                strategy
                    .release(self.inner, ns.as_deref(), &name, &allocated)
                    .await;
                return Err(e);
            }
        };
        let kv = match self.inner.store.create(&key, staged.stored.to_vec()).await {
            Ok(kv) => kv,
            Err(e) => {
                self.unstage(&key, &staged);
                strategy
                    .release(self.inner, ns.as_deref(), &name, &allocated)
                    .await;
                return Err(store_err(&self.res, &name, e));
            }
        };
        Ok(with_warnings(
            self.written_back(staged, kv.mod_revision, 201, |obj| {
                Ok(self.render_one(obj, 201))
            })
            .await?,
            &warnings,
        ))
    }

    /// Serializes `obj` for the store, once: the bytes go to the store, to the watch
    /// cache (with `obj`, so it need not parse them back) and, resourceVersion spliced
    /// in, to a JSON response. `need_object` keeps a copy of `obj` for a response that
    /// is not the object itself (e.g. a `Scale`).
    fn stage(&self, key: &str, obj: Value, need_object: bool) -> Result<Staged, ApiError> {
        let stored = Bytes::from(storage_bytes(&self.res, &obj)?);
        if crate::convert::needs_conversion(&self.res) {
            // The stored form differs from `obj`: the cache parses it, the answer is `obj`.
            return Ok(Staged {
                stored,
                object: Some(obj),
                handed: false,
                converted: false,
            });
        }
        let object = (need_object || self.output != Output::Json).then(|| obj.clone());
        self.inner.cache.expect_write(key, stored.clone(), obj);
        Ok(Staged {
            stored,
            object,
            handed: true,
            converted: false,
        })
    }

    /// [`Call::stage`] of an object in the request's version: a custom resource is
    /// converted to its CRD's storage version first (upstream stores every object of a
    /// CRD in the storage version).
    async fn stage_stored(
        &self,
        key: &str,
        obj: Value,
        need_object: bool,
    ) -> Result<Staged, ApiError> {
        let crd = self.inner.schemas.crds.version(&self.res);
        let Some(storage) =
            crate::crd::storage_api_version(crd.as_deref(), &self.res.api_version())
        else {
            return self.stage(key, obj, need_object);
        };
        let stored =
            crate::crd::convert_one(&self.inner.cache, crd.as_deref(), obj, &storage).await?;
        let mut staged = self.stage(key, stored, true)?;
        staged.converted = true;
        Ok(staged)
    }

    /// [`Call::written`] of a write staged by [`Call::stage_stored`]: a converted
    /// object is answered in the request's version, read back as upstream does.
    async fn written_back(
        &self,
        mut staged: Staged,
        revision: i64,
        code: u16,
        render: impl FnOnce(Value) -> Result<Response, ApiError>,
    ) -> Result<Response, ApiError> {
        if staged.converted {
            if let Some(mut obj) = staged.object.take() {
                set_resource_version(&mut obj, revision);
                return render(self.read(obj).await?);
            }
        }
        self.written(staged, revision, code, render)
    }

    /// Withdraws a staged write that did not happen.
    fn unstage(&self, key: &str, staged: &Staged) {
        if staged.handed {
            self.inner.cache.forget_write(key, &staged.stored);
        }
    }

    /// The answer to a staged write stored at `revision`: `render` of the object, or
    /// (plain JSON of the object itself) the stored bytes with the resourceVersion.
    fn written(
        &self,
        staged: Staged,
        revision: i64,
        code: u16,
        render: impl FnOnce(Value) -> Result<Response, ApiError>,
    ) -> Result<Response, ApiError> {
        if let Some(mut obj) = staged.object {
            set_resource_version(&mut obj, revision);
            return render(obj);
        }
        match crate::cache::splice_resource_version(&staged.stored, revision) {
            Some(raw) => Ok(body::bytes_response(code, "application/json", raw)),
            None => render(
                decode(&staged.stored, revision)
                    .ok_or_else(|| ApiError::internal("stored object cannot be decoded"))?,
            ),
        }
    }

    /// PUT and PATCH (and their `status`/`scale` forms).
    pub async fn update_or_patch(&self, patch: bool) -> Result<Response, ApiError> {
        let strategy = crate::strategy::for_resource(&self.res);
        let name = self.name().to_string();
        let key = self.key();
        let sub = self.info.subresource.clone();
        let mut warnings = Vec::new();
        let (patch_kind, patch_body) = if patch {
            let ct = self
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let mt = ct.split(';').next().unwrap_or("").trim().to_string();
            let pb: Value = if mt == "application/apply-patch+yaml" {
                serde_yaml::from_slice(&self.body)
                    .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
            } else {
                serde_json::from_slice(&self.body)
                    .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?
            };
            (mt, Some(pb))
        } else {
            (String::new(), None)
        };
        let body_obj = if patch {
            None
        } else {
            Some(self.body_object()?)
        };
        for _attempt in 0..16 {
            let current = self
                .inner
                .store
                .get(&key)
                .await
                .map_err(|e| store_err(&self.res, &name, e))?;
            let Some(current) = current else {
                if patch_kind == "application/apply-patch+yaml" && sub.is_none() {
                    // Server-side apply to a missing object creates it.
                    return self
                        .apply_create(patch_body.clone().unwrap_or(Value::Null))
                        .await;
                }
                return Err(ApiError::not_found(&self.res, &name));
            };
            let cur_obj = self.read(kv_to_object(&current)?).await?;
            // The object as the client wants it.
            let mut desired = match sub.as_deref() {
                Some("scale") => {
                    let scale = self.to_scale(&cur_obj)?;
                    let mut new_scale = match &patch_body {
                        Some(pb) => self.apply_patch_to(&patch_kind, &scale, pb, SCALE)?,
                        None => body_obj.clone().unwrap_or(Value::Null),
                    };
                    self.decode_typed(
                        SCALE,
                        &mut new_scale,
                        decoded_as(&patch_kind, patch_body.as_ref()),
                    )?;
                    if let Some(rv) = new_scale
                        .pointer("/metadata/resourceVersion")
                        .and_then(|v| v.as_str())
                    {
                        if !rv.is_empty() && rv != current.mod_revision.to_string() {
                            return Err(ApiError::conflict(&self.res, &name));
                        }
                    }
                    let replicas = new_scale
                        .pointer("/spec/replicas")
                        .and_then(|r| r.as_i64())
                        .unwrap_or(0);
                    if replicas < 0 {
                        return Err(ApiError::invalid(
                            &self.res,
                            &name,
                            vec![Cause {
                                reason: "FieldValueInvalid".into(),
                                message: format!(
                                    "Invalid value: {replicas}: must be greater than or equal to 0"
                                ),
                                field: "spec.replicas".into(),
                            }],
                        ));
                    }
                    let mut d = cur_obj.clone();
                    let (spec_p, _, _) = self.scale_paths();
                    set_pointer(&mut d, &spec_p, json!(replicas));
                    d
                }
                _ => {
                    let mut d = match &patch_body {
                        Some(pb) => {
                            self.apply_patch_to(&patch_kind, &cur_obj, pb, &self.res.definition)?
                        }
                        None => body_obj.clone().unwrap_or(Value::Null),
                    };
                    warnings = self.check_type(
                        &mut d,
                        &self.res.kind,
                        &self.res.api_version(),
                        decoded_as(&patch_kind, patch_body.as_ref()),
                    )?;
                    strategy.normalize_input(&mut d);
                    d
                }
            };
            if object::name(&desired).is_some_and(|n| n != name) {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({}) does not match the name on the URL ({name})",
                    object::name(&desired).unwrap_or("")
                )));
            }
            // Precondition: a resourceVersion in the body must match.
            let body_rv = object::meta_str(&desired, "resourceVersion")
                .filter(|s| !s.is_empty())
                .map(String::from);
            // A patch is re-applied to the fresh object after a conflict (if it pinned the
            // resourceVersion, the re-applied patch then fails the precondition); an
            // update without resourceVersion is retried as is.
            let retry_on_conflict = patch || body_rv.is_none();
            if let Some(rv) = &body_rv {
                if *rv != current.mod_revision.to_string() {
                    return Err(ApiError::conflict(&self.res, &name));
                }
            }
            let mut new_obj =
                crate::strategy::prepare_update(&self.res, sub.as_deref(), &cur_obj, &mut desired);
            rk3s_validation::apply_defaults(
                &self.res.group,
                &self.res.version,
                &self.res.kind,
                &mut new_obj,
            );
            // Zero-valued status fields a writer left out are there, as after upstream's
            // typed decoding (so field tracking sees no change for them).
            rk3s_openapi::decode::fill_always_encoded_status(&self.res.definition, &mut new_obj);
            strategy.after_defaults_on_update(sub.as_deref(), &desired, &cur_obj, &mut new_obj);
            if new_obj == cur_obj {
                // No-op updates are not written (upstream skips them too).
                return Ok(with_warnings(self.answer_update(cur_obj)?, &warnings));
            }
            warnings.extend(
                crate::admission::mutate(
                    self.inner,
                    &self.res,
                    sub.as_deref(),
                    "UPDATE",
                    &mut new_obj,
                    Some(&cur_obj),
                    &self.user,
                    self.dry_run(),
                )
                .await?,
            );
            strategy.derive_status(self.inner, &mut new_obj, Some(&cur_obj));
            // Values the server allocated that the client left out are kept (upstream's
            // patchAllocatedValues), before validation checks their immutability.
            strategy.patch_allocated_values(&mut new_obj, &cur_obj);
            let errs = strategy.validate_update(&self.res, sub.as_deref(), &new_obj, &cur_obj);
            if !errs.is_empty() {
                return Err(self.invalid(&name, errs));
            }
            warnings.extend(
                crate::admission::validate(
                    self.inner,
                    &self.res,
                    sub.as_deref(),
                    "UPDATE",
                    &new_obj,
                    Some(&cur_obj),
                    &self.user,
                    self.dry_run(),
                )
                .await?,
            );
            strategy.check_write(self.inner, &self.res, &self.user, &new_obj)?;
            strategy.validate_object(&self.res, sub.as_deref(), &mut new_obj, Some(&cur_obj))?;
            if let Some(v) = self.inner.schemas.crds.version(&self.res) {
                let pruned = crate::crd::admit_custom_resource(&v, &self.res, &mut new_obj)?;
                warnings.extend(self.unknown_field_policy(&pruned)?);
            }
            if patch_kind != "application/apply-patch+yaml" {
                crate::fields::update_managed_fields(
                    self.inner,
                    &self.res,
                    &mut new_obj,
                    Some(&cur_obj),
                    &self.query,
                    &self.headers,
                    sub.as_deref(),
                );
            }
            // New allocations (e.g. node ports of a Service that became NodePort) come
            // after field tracking, as on create: nobody owns them. What the write drops
            // is released once it is done; what it allocated, if it is not done.
            let held_before = strategy.held(self.inner, &cur_obj);
            let allocated = strategy
                .allocate(
                    self.inner,
                    &self.res,
                    &name,
                    &mut new_obj,
                    Some(&cur_obj),
                    self.dry_run(),
                )
                .await?;
            let ns_ref = self.ns();
            if same_but_resource_version(&new_obj, &cur_obj) {
                strategy
                    .release(self.inner, ns_ref, &name, &allocated)
                    .await;
                // As upstream's GuaranteedUpdate: an update that leaves the object as it
                // is stored is not written (no new resourceVersion, no watch event).
                return Ok(with_warnings(self.answer_update(cur_obj)?, &warnings));
            }
            if self.dry_run() {
                return Ok(with_warnings(self.answer_update(new_obj)?, &warnings));
            }
            // An object being deleted whose last finalizer went away is deleted now (a
            // Namespace only once its spec.finalizers are gone too, as upstream's
            // ShouldDeleteNamespaceDuringUpdate).
            let deleting =
                object::meta(&new_obj).is_some_and(|m| m.contains_key("deletionTimestamp"));
            if deleting
                && object::finalizers(&new_obj).is_empty()
                && !strategy.holds_deletion(&new_obj)
            {
                let result = self
                    .inner
                    .store
                    .delete(&key, Some(current.mod_revision))
                    .await;
                let release = match &result {
                    Ok(_) => held_before.union(&strategy.held(self.inner, &new_obj)),
                    _ => allocated,
                };
                strategy.release(self.inner, ns_ref, &name, &release).await;
                match result {
                    Ok(kv) => {
                        set_resource_version(&mut new_obj, kv.mod_revision);
                        return Ok(with_warnings(self.answer_update(new_obj)?, &warnings));
                    }
                    Err(StoreError::Conflict { .. }) if retry_on_conflict => continue,
                    Err(e) => return Err(store_err(&self.res, &name, e)),
                }
            }
            if let Some(m) = meta_mut(&mut new_obj) {
                m.remove("resourceVersion");
            }
            let held_after = strategy.held(self.inner, &new_obj);
            let staged = match self
                .stage_stored(&key, new_obj, sub.as_deref() == Some("scale"))
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    strategy
                        .release(self.inner, ns_ref, &name, &allocated)
                        .await;
                    return Err(e);
                }
            };
            let result = self
                .inner
                .store
                .update(&key, staged.stored.to_vec(), current.mod_revision)
                .await;
            if result.is_err() {
                self.unstage(&key, &staged);
                strategy
                    .release(self.inner, ns_ref, &name, &allocated)
                    .await;
            } else {
                strategy
                    .release(self.inner, ns_ref, &name, &held_before.minus(&held_after))
                    .await;
            }
            match result {
                Ok(kv) => {
                    return Ok(with_warnings(
                        self.written_back(staged, kv.mod_revision, 200, |obj| {
                            self.answer_update(obj)
                        })
                        .await?,
                        &warnings,
                    ))
                }
                Err(StoreError::Conflict { .. }) if retry_on_conflict => continue,
                Err(StoreError::NotFound(_)) => return Err(ApiError::not_found(&self.res, &name)),
                Err(e) => return Err(store_err(&self.res, &name, e)),
            }
        }
        Err(ApiError::conflict(&self.res, &name))
    }

    fn answer_update(&self, obj: Value) -> Result<Response, ApiError> {
        if self.info.subresource.as_deref() == Some("scale") {
            return Ok(body::json(200, &self.to_scale(&obj)?));
        }
        Ok(self.render_one(obj, 200))
    }

    async fn apply_create(&self, applied: Value) -> Result<Response, ApiError> {
        // Server-side apply to a missing object: the applied configuration, owned by the
        // applier, becomes the object and goes through the create path.
        let mut obj = self.server_side_apply(None, &applied)?;
        if let Some(m) = meta_mut(&mut obj) {
            m.insert("name".into(), json!(self.name()));
        }
        let call = Call {
            inner: self.inner,
            info: RequestInfo {
                name: None,
                verb: "create".into(),
                ..self.info.clone()
            },
            res: self.res.clone(),
            query: self.query.clone(),
            headers: {
                let mut h = self.headers.clone();
                h.insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                h
            },
            body: Bytes::from(serde_json::to_vec(&obj).unwrap_or_default()),
            output: self.output.clone(),
            user: self.user.clone(),
            applied: true,
        };
        Box::pin(call.create()).await
    }

    /// Runs server-side apply of `applied` onto `live` for this request's field manager.
    fn server_side_apply(&self, live: Option<&Value>, applied: &Value) -> Result<Value, ApiError> {
        let Some(manager) = self.query.get("fieldManager") else {
            return Err(ApiError::bad_request(
                "PATCH, application/apply-patch+yaml: fieldManager is required for apply requests",
            ));
        };
        if self.info.subresource.as_deref() == Some("scale") {
            check_applied_type(applied, "autoscaling/v1", "Scale")?;
        } else {
            check_applied_type(applied, &self.res.api_version(), &self.res.kind)?;
        }
        let oa = self.inner.openapi();
        let derived = rk3s_patch::DerivedApplySchema(&*oa);
        let cache = crate::fields::apply_type_cache(&oa);
        let schema = rk3s_patch::CachedApplySchema {
            schema: &derived,
            cache: &cache,
        };
        let force = self.query.flag("force");
        rk3s_patch::server_side_apply(
            live,
            applied,
            manager,
            force,
            &schema,
            &self.res.definition,
            &object::now_rfc3339(),
            &self.res.api_version(),
            None,
        )
        .map_err(|e| match e {
            rk3s_patch::ApplyError::Conflicts(cs) => {
                let mut err = ApiError::new(409, "Conflict", rk3s_patch::conflict_message(&cs));
                err.causes = cs
                    .iter()
                    .map(|c| Cause {
                        reason: "FieldManagerConflict".into(),
                        message: c.cause_message(),
                        field: c.field.clone(),
                    })
                    .collect();
                err
            }
            rk3s_patch::ApplyError::BadRequest(m) => ApiError::bad_request(m),
            // Upstream answers these (e.g. `failed to create typed patch object (...):
            // .spec.foo: field not declared in schema`) as a plain error: 500, no reason.
            rk3s_patch::ApplyError::Invalid(m) => ApiError::new(500, "", m),
        })
    }

    fn apply_patch_to(
        &self,
        patch_kind: &str,
        cur: &Value,
        patch: &Value,
        definition: &str,
    ) -> Result<Value, ApiError> {
        // The patch applies to the object as clients see it, resourceVersion included (a
        // JSON patch may `test` it); a patch that changes it sets a precondition, which
        // the caller checks against the current revision.
        let base = cur.clone();
        let r = match patch_kind {
            "application/json-patch+json" => rk3s_patch::apply_json_patch(&base, patch),
            "application/merge-patch+json" => rk3s_patch::apply_merge_patch(&base, patch),
            "application/strategic-merge-patch+json" => {
                if definition.is_empty() {
                    return Err(ApiError::unsupported_media_type(patch_kind));
                }
                rk3s_patch::apply_strategic_merge_patch(
                    &base,
                    patch,
                    &*self.inner.openapi(),
                    definition,
                )
            }
            "application/apply-patch+yaml" => return self.server_side_apply(Some(&base), patch),
            other => return Err(ApiError::unsupported_media_type(other)),
        };
        r.map_err(|e| match e {
            // A patch document that is not one (e.g. a JSON patch that is an object, not
            // a list of operations): 400, as upstream's DecodePatch failure.
            rk3s_patch::PatchError::BadRequest(m) => ApiError::bad_request(m),
            other => ApiError::new(422, "Invalid", other.to_string()),
        })
    }

    /// Where replicas and the selector live: upstream's paths for built-ins, the CRD's
    /// scale subresource paths for custom resources (as JSON pointers).
    fn scale_paths(&self) -> (String, String, Option<String>) {
        let ptr = |p: &str| {
            p.trim_start_matches('.')
                .split('.')
                .fold(String::new(), |acc, seg| format!("{acc}/{seg}"))
        };
        match self
            .inner
            .schemas
            .crds
            .version(&self.res)
            .and_then(|v| v.scale.clone())
        {
            Some(sc) => (
                ptr(&sc.spec_replicas_path),
                ptr(&sc.status_replicas_path),
                sc.label_selector_path.as_deref().map(ptr),
            ),
            None => ("/spec/replicas".into(), "/status/replicas".into(), None),
        }
    }

    /// Builds the `autoscaling/v1` `Scale` of an object.
    pub fn to_scale(&self, obj: &Value) -> Result<Value, ApiError> {
        let m = object::meta(obj).cloned().unwrap_or_default();
        let mut smeta = Map::new();
        for k in [
            "name",
            "namespace",
            "uid",
            "resourceVersion",
            "creationTimestamp",
        ] {
            if let Some(v) = m.get(k) {
                smeta.insert(k.into(), v.clone());
            }
        }
        let (spec_p, status_p, sel_p) = self.scale_paths();
        let spec_replicas = obj
            .pointer(&spec_p)
            .and_then(|v| v.as_i64())
            .unwrap_or(if self.res.definition.is_empty() { 0 } else { 1 });
        let status_replicas = obj.pointer(&status_p).and_then(|v| v.as_i64()).unwrap_or(0);
        let selector = match sel_p {
            Some(p) => obj
                .pointer(&p)
                .and_then(|s| s.as_str())
                .unwrap_or("")
                .to_string(),
            None => obj
                .pointer("/spec/selector")
                .map(|s| {
                    if s.get("matchLabels").is_some() || s.get("matchExpressions").is_some() {
                        selector_string(s)
                    } else {
                        selector_string(&json!({"matchLabels": s}))
                    }
                })
                .unwrap_or_default(),
        };
        let mut status = json!({"replicas": status_replicas});
        if !selector.is_empty() {
            status["selector"] = json!(selector);
        }
        Ok(json!({
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": Value::Object(smeta),
            "spec": {"replicas": spec_replicas},
            "status": status,
        }))
    }

    /// DELETE of one object.
    pub async fn delete(&self) -> Result<Response, ApiError> {
        let name = self.name().to_string();
        let opts = self.delete_options()?;
        if rk3s_admission::noderestriction::node_of(&self.user.name, &self.user.groups).is_some() {
            let key = self.res.key(self.ns(), &name);
            if let Some(old) = self.inner.cache.get(&key) {
                crate::admission::node_restriction(
                    &self.res,
                    None,
                    rk3s_admission::noderestriction::Operation::Delete,
                    None,
                    Some(&old.object()),
                    &self.user,
                )?;
            }
        }
        let key = self.res.key(self.ns(), &name);
        if let Some(old) = self.inner.cache.get(&key) {
            let old = self.read(old.value()).await?;
            crate::admission::validate_delete(
                self.inner,
                &self.res,
                &old,
                &self.user,
                options_dry_run(&opts),
            )
            .await?;
        }
        let (code, obj) = self
            .inner
            .delete_object(&self.res, self.ns(), &name, &opts, options_dry_run(&opts))
            .await?;
        Ok(self.render_one(self.read(obj).await?, code))
    }

    /// The DeleteOptions of a DELETE: the body (JSON, YAML or protobuf, typed as
    /// upstream: see [`body::decode_delete_options`]) with the query's
    /// `propagationPolicy`/`gracePeriodSeconds`/`dryRun` on top. Always an object.
    fn delete_options(&self) -> Result<Value, ApiError> {
        let mut opts = body::decode_delete_options(body::content_type(&self.headers), &self.body)?;
        if let Some(p) = self.query.get("propagationPolicy") {
            opts.insert("propagationPolicy".into(), json!(p));
        }
        if let Some(g) = self
            .query
            .get("gracePeriodSeconds")
            .and_then(|g| g.parse::<i64>().ok())
        {
            opts.insert("gracePeriodSeconds".into(), json!(g));
        }
        if self.dry_run() {
            opts.insert("dryRun".into(), json!(["All"]));
        }
        Ok(Value::Object(opts))
    }

    /// DELETE of a collection (with selectors).
    pub async fn delete_collection(&self) -> Result<Response, ApiError> {
        let filter = Filter::from_query(&self.res, &self.query)?;
        let opts = self.delete_options()?;
        let prefix = self.res.namespace_prefix(self.ns());
        self.inner
            .cache
            .wait_fresh(FRESH_WAIT)
            .await
            .map_err(|e| store_err(&self.res, "", e))?;
        let (items, rev) = self.inner.cache.list(&prefix);
        let mut deleted = Vec::new();
        for o in items {
            if !filter.matches_cached(&o) {
                continue;
            }
            // One parse per deleted object (compact kinds are cached as JSON).
            let obj = o.object();
            let name = object::name(&obj).unwrap_or("").to_string();
            let ns = object::namespace(&obj).map(String::from);
            match self
                .inner
                .delete_object(
                    &self.res,
                    ns.as_deref(),
                    &name,
                    &opts,
                    options_dry_run(&opts),
                )
                .await
            {
                Ok((_, obj)) => deleted.push(obj),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let deleted = self.read_all(deleted).await?;
        Ok(self.render_list(deleted, rev, None, None))
    }
}

/// Whether DeleteOptions ask for a dry run (`dryRun: ["All"]`, in the body or from the
/// query), as upstream honours both.
pub(crate) fn options_dry_run(opts: &Value) -> bool {
    opts.get("dryRun")
        .and_then(|d| d.as_array())
        .is_some_and(|d| d.iter().any(|x| x == "All"))
}

/// Sets the value at a JSON pointer, creating objects on the way.
pub fn set_pointer(obj: &mut Value, pointer: &str, value: Value) {
    let segs: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    let mut cur = obj;
    for (i, seg) in segs.iter().enumerate() {
        if !cur.is_object() {
            *cur = json!({});
        }
        let Some(m) = cur.as_object_mut() else { return };
        if i == segs.len() - 1 {
            m.insert(seg.to_string(), value);
            return;
        }
        cur = m.entry(seg.to_string()).or_insert_with(|| json!({}));
    }
}

/// Removes the field at a path such as `spec.containers[1].imagePullPolcy`.
pub fn remove_path(obj: &mut Value, path: &str) {
    let mut cur = obj;
    let segs: Vec<&str> = path.split('.').collect();
    for (i, seg) in segs.iter().enumerate() {
        let (name, idx) = match seg.find('[') {
            Some(b) => (
                &seg[..b],
                seg[b + 1..].trim_end_matches(']').parse::<usize>().ok(),
            ),
            None => (*seg, None),
        };
        let last = i == segs.len() - 1;
        if last && idx.is_none() {
            if let Some(m) = cur.as_object_mut() {
                m.remove(name);
            }
            return;
        }
        let next = if name.is_empty() {
            Some(cur)
        } else {
            cur.get_mut(name)
        };
        let Some(next) = next else { return };
        cur = match idx {
            Some(n) => match next.get_mut(n) {
                Some(v) => v,
                None => return,
            },
            None => next,
        };
    }
}

/// A success `Status`.
pub fn success(details: Option<Value>) -> Value {
    rk3s_api::status::success_status(details)
}

/// Adds `Warning` headers (upstream's `299 - "..."` form).
pub fn with_warnings(mut r: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let v = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(h) = http::HeaderValue::from_str(&v) {
            r.headers_mut().append("Warning", h);
        }
    }
    r
}

/// The string form of a `LabelSelector` object, as upstream's `LabelSelectorAsSelector`
/// then `String()` (with [`rk3s_core::LabelSelector`]; "" when it does not parse).
pub fn selector_string(sel: &Value) -> String {
    rk3s_core::LabelSelector::from_json(sel)
        .map(|s| s.to_string())
        .unwrap_or_default()
}

/// Upstream's version check of server-side apply: the applied configuration must name
/// the endpoint's own apiVersion and kind (missing ones included), else 400
/// `invalid object type: <group>/<version>, Kind=<kind>` (Go's GroupVersionKind format).
fn check_applied_type(applied: &Value, api_version: &str, kind: &str) -> Result<(), ApiError> {
    let av = applied
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let k = applied.get("kind").and_then(Value::as_str).unwrap_or("");
    if av == api_version && k == kind {
        return Ok(());
    }
    let (group, version) = av.split_once('/').unwrap_or(("", av));
    Err(ApiError::bad_request(format!(
        "invalid object type: {group}/{version}, Kind={k}"
    )))
}

impl Inner {
    /// 404 if the namespace does not exist, 403 if it is terminating.
    pub async fn check_namespace_open(
        &self,
        ns: &str,
        res: &ResourceInfo,
        name: &str,
    ) -> Result<(), ApiError> {
        let kv = self
            .store
            .get(&format!("/registry/core/namespaces/{ns}"))
            .await
            .map_err(|e| store_err(res, name, e))?;
        let Some(kv) = kv else {
            return Err(ApiError::not_found_named("namespaces", "", ns));
        };
        let phase = serde_json::from_slice::<Value>(&kv.value)
            .ok()
            .and_then(|v| {
                v.pointer("/status/phase")
                    .and_then(|p| p.as_str())
                    .map(String::from)
            });
        if phase.as_deref() == Some("Terminating") {
            let mut e = ApiError::forbidden(format!(
                "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                res.qualified_plural(),
                name
            ));
            e.name = Some(name.to_string());
            e.kind = Some(res.plural.clone());
            return Err(e);
        }
        Ok(())
    }

    /// Deletes one object with upstream's semantics: finalizers and graceful deletion
    /// set `deletionTimestamp` instead; preconditions are checked. Returns the HTTP code
    /// and the object (as deleted, or as now marked for deletion).
    pub async fn delete_object(
        &self,
        res: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        opts: &Value,
        dry_run: bool,
    ) -> Result<(u16, Value), ApiError> {
        let key = res.key(ns, name);
        let strategy = crate::strategy::for_resource(res);
        for _ in 0..16 {
            let kv = self
                .store
                .get(&key)
                .await
                .map_err(|e| store_err(res, name, e))?;
            let kv = kv.ok_or_else(|| ApiError::not_found(res, name))?;
            let mut obj = crate::cache::decode(&kv.value, kv.mod_revision)
                .ok_or_else(|| ApiError::internal("undecodable object"))?;
            if let Some(uid) = opts.pointer("/preconditions/uid").and_then(|u| u.as_str()) {
                if object::meta_str(&obj, "uid") != Some(uid) {
                    return Err(ApiError::conflict_msg(
                        res,
                        name,
                        format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        object::meta_str(&obj, "uid").unwrap_or("")
                    ),
                    ));
                }
            }
            if let Some(rv) = opts
                .pointer("/preconditions/resourceVersion")
                .and_then(|u| u.as_str())
            {
                if rv != kv.mod_revision.to_string() {
                    return Err(ApiError::conflict_msg(res, name, format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                        kv.mod_revision
                    )));
                }
            }
            let already = object::meta(&obj).is_some_and(|m| m.contains_key("deletionTimestamp"));
            let mode = strategy.delete_mode(&obj, opts);
            let graceful = matches!(mode, DeleteMode::Graceful { .. });
            // Foreground and orphan deletion are carried out by the garbage collector
            // through these finalizers, as upstream.
            let policy = opts
                .get("propagationPolicy")
                .and_then(|p| p.as_str())
                .map(String::from)
                .or_else(|| {
                    (opts.get("orphanDependents").and_then(|o| o.as_bool()) == Some(true))
                        .then(|| "Orphan".to_string())
                });
            let gc_finalizer = match policy.as_deref() {
                Some("Foreground") => Some("foregroundDeletion"),
                Some("Orphan") => Some("orphan"),
                _ => None,
            };
            if let Some(f) = gc_finalizer {
                if !already && !object::finalizers(&obj).iter().any(|x| x == f) {
                    if let Some(m) = meta_mut(&mut obj) {
                        let list = m.entry("finalizers").or_insert_with(|| json!([]));
                        if let Some(a) = list.as_array_mut() {
                            a.push(json!(f));
                        }
                    }
                }
            }
            let has_finalizers = !object::finalizers(&obj).is_empty();
            if has_finalizers || mode != DeleteMode::Immediate {
                if already {
                    return Ok((if graceful { 202 } else { 200 }, obj));
                }
                let grace = match mode {
                    DeleteMode::Graceful { seconds } => seconds,
                    _ => 0,
                };
                let ts = jiff::Timestamp::now()
                    .checked_add(jiff::SignedDuration::from_secs(grace))
                    .unwrap_or_else(|_| jiff::Timestamp::now())
                    .strftime("%Y-%m-%dT%H:%M:%SZ")
                    .to_string();
                if let Some(m) = meta_mut(&mut obj) {
                    m.insert("deletionTimestamp".into(), json!(ts));
                    m.insert("deletionGracePeriodSeconds".into(), json!(grace));
                    m.remove("resourceVersion");
                }
                strategy.mark_deleting(&mut obj);
                if dry_run {
                    return Ok((200, obj));
                }
                let bytes =
                    serde_json::to_vec(&obj).map_err(|e| ApiError::internal(e.to_string()))?;
                match self.store.update(&key, bytes, kv.mod_revision).await {
                    Ok(nkv) => {
                        set_resource_version(&mut obj, nkv.mod_revision);
                        return Ok((if graceful { 202 } else { 200 }, obj));
                    }
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(store_err(res, name, e)),
                }
            }
            if dry_run {
                return Ok((200, obj));
            }
            match self.store.delete(&key, Some(kv.mod_revision)).await {
                Ok(dkv) => {
                    strategy
                        .release(self, ns, name, &strategy.held(self, &obj))
                        .await;
                    set_resource_version(&mut obj, dkv.mod_revision);
                    // The usage a delete frees is released by the leader-elected
                    // resource quota controller (`rk3s_controllers::resourcequota`).
                    return Ok((200, obj));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound(_)) => return Err(ApiError::not_found(res, name)),
                Err(e) => return Err(store_err(res, name, e)),
            }
        }
        Err(ApiError::conflict(res, name))
    }
}

#[cfg(test)]
mod tests {
    /// Selectors read a compact cached object (its selectable fields) exactly as they
    /// read its parse.
    #[test]
    fn compact_objects_are_selected_as_their_parse() {
        use super::{CachedObject, Filter};
        use crate::request::Query;
        use serde_json::json;
        let res = rk3s_api::Registry::builtin()
            .get("", "v1", "pods")
            .expect("pods");
        let pods = [
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "default", "labels": {"app": "web", "tier": "1"}},
                   "spec": {"nodeName": "n1", "hostNetwork": true, "restartPolicy": "Always"}, "status": {"phase": "Running", "podIPs": [{"ip": "10.42.0.5"}]}}),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "b", "namespace": "kube-system"},
                   "spec": {"schedulerName": "other"}, "status": {"phase": "Pending"}}),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "c", "namespace": "default", "labels": {"app": "db"}}, "spec": {"nodeName": "n2"}}),
        ];
        let cached: Vec<CachedObject> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let key = format!("/registry/core/pods/default/{i}");
                CachedObject::from_value(key, i as i64 + 1, p.clone())
            })
            .collect();
        assert!(
            cached.iter().all(|o| o.selectable().is_some()),
            "pods are kept compact"
        );
        let queries = [
            "labelSelector=app%3Dweb",
            "labelSelector=app",
            "labelSelector=!app",
            "labelSelector=app+notin+(web)",
            "labelSelector=tier%3E0",
            "fieldSelector=spec.nodeName%3Dn1",
            "fieldSelector=spec.nodeName%3D",
            "fieldSelector=spec.nodeName!%3Dn1,status.phase%3DPending",
            "fieldSelector=spec.hostNetwork%3Dfalse",
            "fieldSelector=status.podIP%3D10.42.0.5",
            "fieldSelector=metadata.namespace%3Ddefault&labelSelector=app+in+(db,web)",
            "fieldSelector=spec.schedulerName%3Ddefault-scheduler",
            "fieldSelector=spec.restartPolicy%3DAlways",
        ];
        for q in queries {
            let f = Filter::from_query(&res, &Query::parse(Some(q))).expect("selectors");
            let by_parse: Vec<bool> = pods.iter().map(|p| f.matches(p)).collect();
            let by_cache: Vec<bool> = cached.iter().map(|o| f.matches_cached(o)).collect();
            assert_eq!(by_cache, by_parse, "{q}");
        }
        // The compact object still reads back as what was cached.
        let mut want = pods[0].clone();
        assert_eq!(*cached[0].object(), want);
        want["metadata"]["name"] = json!("changed");
        assert_ne!(cached[0].value(), want);
    }

    #[test]
    fn apply_must_name_the_endpoints_type() {
        use serde_json::json;
        assert!(super::check_applied_type(
            &json!({"apiVersion": "apps/v1", "kind": "Deployment"}),
            "apps/v1",
            "Deployment"
        )
        .is_ok());
        let e =
            super::check_applied_type(&json!({"": []}), "v1", "Namespace").expect_err("no type");
        assert_eq!(
            (e.code, e.message.as_str()),
            (400, "invalid object type: /, Kind=")
        );
        let e = super::check_applied_type(
            &json!({"apiVersion": "v1", "kind": "Pod"}),
            "v1",
            "Namespace",
        )
        .expect_err("other kind");
        assert_eq!(e.message, "invalid object type: /v1, Kind=Pod");
        let e = super::check_applied_type(
            &json!({"apiVersion": "apps/v1beta1", "kind": "Deployment"}),
            "apps/v1",
            "Deployment",
        )
        .expect_err("other version");
        assert_eq!(
            e.message,
            "invalid object type: apps/v1beta1, Kind=Deployment"
        );
    }

    use super::*;

    #[test]
    fn continue_token_roundtrip() {
        let t = decode_continue(&encode_continue(42, "default/foo")).expect("valid token");
        assert_eq!(t.rv, 42);
        assert_eq!(t.start, "default/foo");
        assert!(decode_continue("!!!").is_err());
    }

    #[test]
    fn remove_nested_path() {
        let mut v =
            json!({"spec": {"containers": [{"name": "a"}, {"name": "b", "bogus": 1}]}, "top": 2});
        remove_path(&mut v, "spec.containers[1].bogus");
        remove_path(&mut v, "top");
        assert_eq!(
            v,
            json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}})
        );
    }

    #[test]
    fn no_op_comparison_ignores_only_the_resource_version() {
        let stored = json!({"metadata": {"name": "a", "resourceVersion": "5", "labels": {"x": "1"}}, "data": {"k": "v"}});
        let same = json!({"data": {"k": "v"}, "metadata": {"labels": {"x": "1"}, "name": "a"}});
        assert!(same_but_resource_version(&same, &stored));
        assert!(same_but_resource_version(&stored, &same));
        let mut other_rv = stored.clone();
        other_rv["metadata"]["resourceVersion"] = json!("6");
        assert!(same_but_resource_version(&other_rv, &stored));
        for changed in [
            json!({"metadata": {"name": "a", "labels": {"x": "2"}}, "data": {"k": "v"}}),
            json!({"metadata": {"name": "a", "labels": {"x": "1"}, "generation": 1}, "data": {"k": "v"}}),
            json!({"metadata": {"name": "a"}, "data": {"k": "v"}}),
            json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "data": {"k": "v"}, "status": {}}),
            json!({"metadata": {"name": "a", "labels": {"x": "1"}}}),
        ] {
            assert!(!same_but_resource_version(&changed, &stored), "{changed}");
            assert!(!same_but_resource_version(&stored, &changed), "{changed}");
        }
    }

    #[test]
    fn selector_string_formats() {
        let s = json!({"matchLabels": {"b": "2", "a": "1"}, "matchExpressions": [{"key": "x", "operator": "In", "values": ["q", "p"]}, {"key": "y", "operator": "DoesNotExist"}]});
        assert_eq!(selector_string(&s), "a=1,b=2,x in (p,q),!y");
    }
}
