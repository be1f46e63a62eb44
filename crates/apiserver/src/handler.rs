//! Entry point of every request: authentication check, non-resource paths (health,
//! version, discovery, OpenAPI), and dispatch of resource requests to [`crate::rest`]
//! and [`crate::watch`]; [`ApiServer::new`] builds the shared [`Inner`]. Nothing here
//! is a rule of one kind (see [`crate::strategy`]), and no module below imports this
//! one but for [`ApiServer`] itself.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use rk3s_api::{ApiError, Registry, ResourceInfo};
use rk3s_openapi::OpenApi;
use serde_json::{json, Value};

use crate::alloc::{Cidr, ServiceAllocators};
use crate::body::{self, Response};
use crate::cache::WatchCache;
use crate::output::Output;
use crate::request::{self, Query};
use crate::rest::Call;
use crate::state::{Auth, Inner, Observability, Schemas};
use crate::{ApiServerError, Config, UserInfo};

/// Largest request body accepted (upstream's limit is 3 MiB per object; allow lists).
const MAX_BODY: usize = 8 << 20;

/// The API server: cheap to clone, one per process.
#[derive(Clone)]
pub struct ApiServer {
    inner: Arc<Inner>,
}

impl ApiServer {
    /// Creates the server state: watch cache, OpenAPI documents, built-in objects.
    pub async fn new(config: &Config) -> Result<ApiServer, ApiServerError> {
        let registry = Registry::builtin();
        let resources: Vec<ResourceInfo> = registry.all().iter().map(|r| (**r).clone()).collect();
        let openapi = OpenApi::build(&resources, crate::KUBERNETES_VERSION)
            .map_err(|e| ApiServerError::OpenApi(e.to_string()))?;
        let cidr = Cidr::parse(&config.service_cidr).ok_or_else(|| {
            ApiServerError::Config(format!("invalid service CIDR {:?}", config.service_cidr))
        })?;
        let cache = WatchCache::start(config.store.clone()).await?;
        let audiences = vec![config.service_account_issuer.clone(), "k3s".to_string()];
        let verifier = rk3s_auth::TokenVerifier::new(
            &config.service_account_pub_pem,
            vec![
                config.service_account_issuer.clone(),
                rk3s_auth::LEGACY_ISSUER.to_string(),
            ],
            audiences.clone(),
        )
        .map_err(|e| ApiServerError::Config(format!("service-account key: {e}")))?;
        let issuer = rk3s_auth::TokenIssuer::new(
            &config.service_account_key_pem,
            &config.service_account_issuer,
        )
        .map_err(|e| ApiServerError::Config(format!("service-account key: {e}")))?;
        let token_file = match &config.token_auth_file {
            Some(t) => Some(
                rk3s_auth::TokenFile::parse(t)
                    .map_err(|e| ApiServerError::Config(format!("--token-auth-file: {e}")))?,
            ),
            None => None,
        };
        let inner = Arc::new(Inner {
            store: config.store.clone(),
            cache: cache.clone(),
            schemas: Schemas {
                registry,
                openapi_docs: std::sync::RwLock::new(Arc::new(openapi)),
                crds: Default::default(),
            },
            auth: Auth {
                rbac_cache: Default::default(),
                token_auth: crate::authz::TokenAuth {
                    verifier: Some(verifier),
                    issuer: Some(issuer),
                    token_file,
                    audiences,
                },
                client_cert_verifier: crate::server::client_cert_verifier(&config.client_ca_pem)
                    .ok(),
            },
            alloc: ServiceAllocators::new(
                config.store.clone(),
                cache.clone(),
                cidr,
                config.node_port_range,
            ),
            observability: Observability {
                metrics: Default::default(),
                audit: config.audit.clone(),
            },
            advertise: format!("{}:{}", config.advertise_address, config.advertise_port),
            kubelet_client: config
                .kubelet_client
                .as_ref()
                .map(crate::proxy::KubeletClient::new)
                .transpose()?,
            local_groups: Default::default(),
            aggregator: crate::aggregator::Aggregator::new(config.front_proxy.as_ref())
                .map_err(|e| ApiServerError::Config(e.to_string()))?,
        });
        let api = ApiServer { inner };
        crate::bootstrap::run(&api, config).await?;
        crate::crd::start(&api);
        crate::aggregator::start(api.inner.clone());
        Ok(api)
    }

    /// The shared state.
    pub fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// Serves one request from the network.
    pub async fn handle_incoming(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
        user: Option<UserInfo>,
    ) -> Response {
        let (parts, body) = req.into_parts();
        let limited = http_body_util::Limited::new(body, MAX_BODY);
        let bytes = match limited.collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                let mut err =
                    ApiError::new(413, "RequestEntityTooLarge", format!("request body: {e}"));
                err.code = 413;
                return body::error(&err);
            }
        };
        self.handle(parts, bytes, user).await
    }

    /// Serves one request (also the in-process entry point). A panic in a handler is
    /// answered 500 and logged ([`recover_panic`]); it never takes the connection down.
    pub async fn handle(
        &self,
        parts: http::request::Parts,
        body: Bytes,
        user: Option<UserInfo>,
    ) -> Response {
        let method = parts.method.clone();
        let path = parts.uri.path().to_string();
        recover_panic(&method, &path, self.handle_unguarded(parts, body, user)).await
    }

    async fn handle_unguarded(
        &self,
        parts: http::request::Parts,
        body: Bytes,
        user: Option<UserInfo>,
    ) -> Response {
        let path = parts.uri.path().to_string();
        let query = Query::parse(parts.uri.query());
        let started = std::time::Instant::now();
        let info = request::parse(&parts.method, &path, &query);
        let received = jiff::Timestamp::now();
        let mut actx = AuditCtx::default();
        let audit_body = self
            .inner
            .observability
            .audit
            .as_ref()
            .map(|_| body.clone());
        let mut resp = self
            .route(&parts, &path, query, body, user.as_ref(), &mut actx)
            .await;
        if let (Some(audit), Some(authn)) = (&self.inner.observability.audit, &actx.user) {
            let attrs = crate::audit::AuditAttributes::from_request(
                authn,
                info.as_ref(),
                &parts.method,
                &path,
            );
            let level = audit.level_for(&attrs);
            if level != crate::audit::Level::None {
                let id = crate::audit::new_audit_id();
                if let Ok(h) = http::HeaderValue::from_str(&id) {
                    resp.headers_mut().insert("Audit-ID", h);
                }
                let code = resp.status().as_u16();
                let resp_bytes = match resp.body() {
                    crate::body::ResponseBody::Full(Some(b))
                        if level == crate::audit::Level::RequestResponse || code >= 400 =>
                    {
                        Some(b.clone())
                    }
                    _ => None,
                };
                let is_watch = info.as_ref().is_some_and(|i| i.verb == "watch");
                // A create names its object only in the body: upstream completes
                // `objectRef` from the request object at every level, so creates
                // pass their body even at Metadata level (not logged there).
                let is_create = info.as_ref().is_some_and(|i| i.verb == "create");
                let req_bytes = if level >= crate::audit::Level::Request || is_create {
                    audit_body.as_deref()
                } else {
                    None
                };
                audit.record(crate::audit::AuditRecord {
                    attributes: attrs,
                    user: authn.clone(),
                    impersonated_user: actx.impersonated.clone(),
                    audit_id: Some(id),
                    stage: if is_watch {
                        crate::audit::Stage::ResponseStarted
                    } else {
                        crate::audit::Stage::ResponseComplete
                    },
                    request_uri: parts.uri.to_string(),
                    source_ips: crate::audit::source_ips(&parts.headers, None),
                    user_agent: parts
                        .headers
                        .get(http::header::USER_AGENT)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string(),
                    code,
                    request_body: req_bytes,
                    response_body: resp_bytes.as_deref(),
                    received,
                    decision: actx.decision.clone(),
                });
            }
        }
        let verb = match info.as_ref().map(|i| i.verb.as_str()) {
            Some("list") => "LIST",
            Some("watch") => "WATCH",
            _ => parts.method.as_str(),
        };
        let (group, resource, sub) = info
            .as_ref()
            .map(|i| {
                (
                    i.group.as_str(),
                    i.resource.as_str(),
                    i.subresource.as_deref().unwrap_or(""),
                )
            })
            .unwrap_or(("", "", ""));
        self.inner.observability.metrics.record(
            verb,
            group,
            resource,
            sub,
            resp.status().as_u16(),
            started.elapsed(),
        );
        tracing::debug!(method = %parts.method, %path, status = resp.status().as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "request");
        resp
    }

    async fn route(
        &self,
        parts: &http::request::Parts,
        path: &str,
        query: Query,
        body: Bytes,
        user: Option<&UserInfo>,
        actx: &mut AuditCtx,
    ) -> Response {
        let public = matches!(
            path,
            "/healthz" | "/livez" | "/readyz" | "/version" | "/version/"
        ) || path.starts_with("/healthz/")
            || path.starts_with("/livez/")
            || path.starts_with("/readyz/");
        // Client certificate first, then a bearer token (upstream's union authenticator).
        let mut user = user.cloned();
        if user.is_none() {
            if let Some(token) = bearer_token(&parts.headers) {
                user = self.inner.authenticate_token(token);
                // Bad credentials are refused on every path, the public ones included:
                // only a request with no credentials at all is anonymous (upstream's
                // authenticator fails the request before any handler runs).
                if user.is_none() {
                    return body::error(&ApiError::unauthorized());
                }
            }
        }
        if user.is_none() && !public {
            return body::error(&ApiError::unauthorized());
        }
        actx.user = user.clone();
        let user = match user {
            Some(u) => match self.inner.impersonate(u.clone(), &parts.headers) {
                Ok(imp) => {
                    if imp != u {
                        actx.impersonated = Some(imp.clone());
                    }
                    Some(imp)
                }
                Err(e) => return body::error(&e),
            },
            None => None,
        };
        if public {
            if path.starts_with("/version") {
                return body::json(200, &version_info());
            }
            return body::bytes_response(200, "text/plain; charset=utf-8", "ok");
        }
        let Some(user) = user else {
            return body::error(&ApiError::unauthorized());
        };
        let resource_info = request::parse(&parts.method, path, &query);
        let attrs = match &resource_info {
            Some(info) => crate::authz::resource_attributes(&user, info, &query),
            None => crate::authz::non_resource_attributes(&user, &parts.method, path),
        };
        if let Err(e) = self.inner.authorize(&attrs) {
            actx.decision = Some(crate::audit::AuthzDecision {
                allowed: false,
                reason: e.message.clone(),
            });
            return body::error(&e);
        }
        actx.decision = Some(crate::audit::AuthzDecision {
            allowed: true,
            reason: String::new(),
        });
        if let Some(r) = crate::aggregator::dispatch(&self.inner, parts, path, &body, &user).await {
            return r;
        }
        if path == "/metrics" {
            return body::bytes_response(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                self.inner
                    .observability
                    .metrics
                    .render(self.inner.cache.len()),
            );
        }
        if path == "/openapi/v2" {
            let accept = parts
                .headers
                .get(http::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if accept.contains("proto-openapi.spec.v2") {
                return body::bytes_response(
                    200,
                    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                    bytes::Bytes::from_owner(self.inner.openapi().v2_protobuf()),
                );
            }
            return body::bytes_response(
                200,
                "application/json",
                bytes::Bytes::from_owner(self.inner.openapi().v2_json()),
            );
        }
        if path == "/openapi/v3" || path == "/openapi/v3/" {
            return body::json(200, &self.inner.openapi().v3_index());
        }
        if let Some(gv) = path.strip_prefix("/openapi/v3/") {
            return match self.inner.openapi().v3_group_version(gv) {
                Some((doc, _hash)) => {
                    let mut r = body::bytes_response(
                        200,
                        "application/json",
                        bytes::Bytes::from_owner(doc),
                    );
                    r.headers_mut().insert(
                        http::header::CACHE_CONTROL,
                        http::HeaderValue::from_static("public, immutable"),
                    );
                    r
                }
                None => body::bytes_response(404, "text/plain", "404 page not found\n"),
            };
        }
        if let Some(r) = self.discovery(parts, path) {
            return r;
        }
        let Some(info) = resource_info else {
            return body::bytes_response(404, "text/plain; charset=utf-8", "404 page not found\n");
        };
        match self.resource(parts, info, query, body, &user).await {
            Ok(r) => r,
            Err(e) => body::error(&e),
        }
    }

    fn discovery(&self, parts: &http::request::Parts, path: &str) -> Option<Response> {
        let accept = parts
            .headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let aggregated = ["v2", "v2beta1"].into_iter().find(|v| {
            accept.split(',').any(|r| {
                r.contains("g=apidiscovery.k8s.io") && r.contains(&format!("v={v};"))
                    || r.contains("g=apidiscovery.k8s.io")
                        && r.trim_end().ends_with(&format!("v={v}"))
            })
        });
        let reg = &self.inner.schemas.registry;
        let path = path.trim_end_matches('/');
        let agg_ct = |v: &str| {
            format!("application/json;g=apidiscovery.k8s.io;v={v};as=APIGroupDiscoveryList")
        };
        match path {
            "/api" => Some(match aggregated {
                Some(v) => body::bytes_response(
                    200,
                    &agg_ct(v),
                    serde_json::to_vec(&rk3s_api::discovery::aggregated_api(reg, v))
                        .unwrap_or_default(),
                ),
                None => body::json(
                    200,
                    &rk3s_api::discovery::api_versions(&self.inner.advertise),
                ),
            }),
            "/apis" => Some(match aggregated {
                Some(v) => {
                    let mut list = rk3s_api::discovery::aggregated_apis(reg, v);
                    crate::aggregator::add_aggregated_groups(&self.inner, &mut list);
                    body::bytes_response(
                        200,
                        &agg_ct(v),
                        serde_json::to_vec(&list).unwrap_or_default(),
                    )
                }
                None => {
                    let mut list = rk3s_api::discovery::api_group_list(reg);
                    crate::aggregator::add_groups(&self.inner, &mut list);
                    body::json(200, &list)
                }
            }),
            _ => {
                let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
                match parts.as_slice() {
                    ["api", v] => Some(match rk3s_api::discovery::api_resource_list(reg, "", v) {
                        Some(doc) => body::json(200, &doc),
                        None => body::bytes_response(404, "text/plain", "404 page not found\n"),
                    }),
                    ["apis", g] => Some(
                        match rk3s_api::discovery::api_group(reg, g)
                            .or_else(|| crate::aggregator::api_group(&self.inner, g))
                        {
                            Some(doc) => body::json(200, &doc),
                            None => body::bytes_response(404, "text/plain", "404 page not found\n"),
                        },
                    ),
                    ["apis", g, v] => {
                        Some(match rk3s_api::discovery::api_resource_list(reg, g, v) {
                            Some(doc) => body::json(200, &doc),
                            None => body::bytes_response(404, "text/plain", "404 page not found\n"),
                        })
                    }
                    _ => None,
                }
            }
        }
    }

    async fn resource(
        &self,
        parts: &http::request::Parts,
        info: request::RequestInfo,
        query: Query,
        body: Bytes,
        user: &UserInfo,
    ) -> Result<Response, ApiError> {
        let not_found = || {
            ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )
        };
        let res = self
            .inner
            .schemas
            .registry
            .get(&info.group, &info.version, &info.resource)
            .ok_or_else(not_found)?;
        // As upstream, output negotiation happens before the body is read: a Table
        // asked of a resource with no Table convertor (and nothing else accepted) is 406.
        if !Output::has_table(&res, info.subresource.as_deref())
            && Output::only_table_accepted(&parts.headers)
        {
            return Err(not_acceptable());
        }
        if info.verb == "create"
            && matches!(
                info.group.as_str(),
                "authorization.k8s.io" | "authentication.k8s.io"
            )
        {
            let obj =
                crate::body::decode_request(crate::body::content_type(&parts.headers), &body, None)
                    .map_err(|e| match e {
                        crate::body::RequestBodyError::UnsupportedMediaType(mt) => {
                            ApiError::unsupported_media_type(&mt)
                        }
                        e => ApiError::bad_request(format!(
                            "{} in version \"{}\" cannot be handled as a {}: {e}",
                            res.kind, res.version, res.kind
                        )),
                    })?;
            if !obj.is_object() {
                return Err(ApiError::bad_request(format!(
                    "{} in version \"{}\" cannot be handled as a {}: expected an object",
                    res.kind, res.version, res.kind
                )));
            }
            if let Some(r) = crate::authz::review(&self.inner, &info, user, &obj) {
                return r.map(|v| body::json(201, &v));
            }
        }
        if !res.namespaced() && info.namespace.is_some() {
            return Err(not_found());
        }
        if let Some(sub) = &info.subresource {
            let Some(subresource) = res.subresource(sub) else {
                return Err(not_found());
            };
            // Only the verbs discovery lists for the subresource (e.g. no DELETE of
            // `pods/x/status`, only PUT of `namespaces/x/finalize`).
            if !subresource.verbs.contains(&info.verb) {
                return Err(ApiError::method_not_allowed(
                    "the server does not allow this method on the requested resource",
                ));
            }
        } else if !res.has_verb(&info.verb) {
            return Err(ApiError::method_not_allowed(
                "the server does not allow this method on the requested resource",
            ));
        }
        // WebSocket exec/attach/port-forward arrive as GET (verb `get`); as upstream
        // (AuthorizePodWebsocketUpgradeCreatePermission) they also need `create`.
        if info.group.is_empty()
            && info.resource == "pods"
            && info.verb == "get"
            && matches!(
                info.subresource.as_deref(),
                Some("exec" | "attach" | "portforward")
            )
        {
            let mut as_create = info.clone();
            as_create.verb = "create".into();
            self.inner
                .authorize(&crate::authz::resource_attributes(user, &as_create, &query))?;
        }
        if info.group.is_empty()
            && info.resource == "pods"
            && matches!(
                info.subresource.as_deref(),
                Some("exec" | "attach" | "portforward")
            )
        {
            crate::admission::validate_connect(
                &self.inner,
                info.namespace.as_deref().unwrap_or(""),
                info.name.as_deref().unwrap_or(""),
                info.subresource.as_deref().unwrap_or(""),
                parts.uri.query(),
                user,
            )
            .await?;
        }
        if let Some(r) =
            crate::local_group::dispatch(&self.inner, &parts.headers, &info, &query, user).await
        {
            return r;
        }
        if let Some(r) = crate::proxy::dispatch(&self.inner, parts, &info, &query, &body).await {
            return r;
        }
        let output = Output::negotiate(&parts.headers, &query);
        let call = Call {
            inner: &self.inner,
            info,
            res,
            query,
            headers: parts.headers.clone(),
            body,
            output,
            user: user.clone(),
            applied: false,
        };
        if let Some(storage) = crate::storage::for_request(
            &call.res,
            call.info.subresource.as_deref(),
            &call.info.verb,
        ) {
            return storage.serve(&call).await;
        }
        match call.info.verb.as_str() {
            "get" => call.get().await,
            "list" => call.list().await,
            "watch" => crate::watch::serve(&call).await,
            "create" => call.create().await,
            "update" => call.update_or_patch(false).await,
            "patch" => call.update_or_patch(true).await,
            "delete" => call.delete().await,
            "deletecollection" => call.delete_collection().await,
            _ => Err(ApiError::method_not_allowed(
                "the server does not allow this method on the requested resource",
            )),
        }
    }

    /// Waits until the API is ready (cache loaded, built-in objects present).
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        self.inner.cache.wait_fresh(timeout).await.is_ok()
    }
}

/// The bearer token of a request, as upstream's bearer-token authenticator reads it:
/// `Authorization: Bearer <token>` (scheme case-insensitive); an empty token is no
/// token (the request is then anonymous).
pub fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    let auth = headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    let mut parts = auth.splitn(3, ' ');
    let scheme = parts.next()?;
    let token = parts.next()?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Runs a request's handler, answering 500 with upstream's text if it panics (and
/// logging the panic), so one bad request never drops its connection or, over HTTP/2,
/// the other requests on it. A safety net: handlers must not panic on any input.
pub async fn recover_panic(
    method: &http::Method,
    path: &str,
    handler: impl std::future::Future<Output = Response>,
) -> Response {
    use futures_util::FutureExt;
    match std::panic::AssertUnwindSafe(handler).catch_unwind().await {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".to_string());
            tracing::error!(%method, %path, panic = %what, "request handler panicked");
            body::bytes_response(
                500,
                "text/plain; charset=utf-8",
                "This request caused apiserver to panic. Look in the logs for details.\n",
            )
        }
    }
}

/// What the audit log needs to know from request routing.
#[derive(Default)]
pub struct AuditCtx {
    /// The authenticated user (before impersonation).
    pub user: Option<UserInfo>,
    /// The impersonated user, if any.
    pub impersonated: Option<UserInfo>,
    /// The authorization decision.
    pub decision: Option<crate::audit::AuthzDecision>,
}

/// Upstream's 406 NotAcceptable when output negotiation finds no media type it can
/// serve (the media types its serializers accept).
fn not_acceptable() -> ApiError {
    ApiError::new(
        406,
        "NotAcceptable",
        "only the following media types are accepted: application/json, application/yaml, application/vnd.kubernetes.protobuf",
    )
}

/// The build time recorded by build.rs, as RFC 3339 UTC seconds (upstream's format).
fn build_date() -> String {
    let secs: i64 = env!("RK3S_BUILD_EPOCH").parse().unwrap_or(0);
    jiff::Timestamp::from_second(secs)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The `/version` document.
pub fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": format!("{}+rk3s{}", crate::KUBERNETES_VERSION, env!("CARGO_PKG_VERSION").replace('.', "")),
        // Recorded by build.rs (empty without git, as upstream).
        "gitCommit": env!("RK3S_GIT_COMMIT"),
        "gitTreeState": env!("RK3S_GIT_TREE_STATE"),
        "buildDate": build_date(),
        "goVersion": "n/a (rust)",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", a => a }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::ACCEPT, http::HeaderValue::from_static("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"));
        assert_eq!(
            Output::negotiate(&h, &Query::default()),
            Output::Table(rk3s_printers::IncludeObject::Metadata)
        );
        h.insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/json"),
        );
        assert_eq!(Output::negotiate(&h, &Query::default()), Output::Json);
        h.insert(http::header::ACCEPT, http::HeaderValue::from_static("application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"));
        assert_eq!(
            Output::negotiate(&h, &Query::default()),
            Output::PartialMetadata
        );
    }

    #[test]
    fn version_carries_build_facts() {
        let v = version_info();
        let commit = v["gitCommit"].as_str().unwrap_or("x");
        assert!(
            commit.is_empty()
                || (commit.len() == 40 && commit.chars().all(|c| c.is_ascii_hexdigit())),
            "{commit}"
        );
        assert!(["", "clean", "dirty"].contains(&v["gitTreeState"].as_str().unwrap_or("x")));
        let date = v["buildDate"].as_str().unwrap_or("");
        assert!(
            date.parse::<jiff::Timestamp>().is_ok() && date.ends_with('Z') && date.len() == 20,
            "{date}"
        );
        assert_ne!(date, "1970-01-01T00:00:00Z");
    }

    #[test]
    fn table_only_accept_and_resources_without_table() {
        let mut h = http::HeaderMap::new();
        assert!(!Output::only_table_accepted(&h));
        h.insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/json;as=Table;v=v1;g=meta.k8s.io"),
        );
        assert!(Output::only_table_accepted(&h));
        h.insert(http::header::ACCEPT, http::HeaderValue::from_static("application/json;as=Table;v=v1;g=meta.k8s.io, application/json;as=Table;v=v1beta1;g=meta.k8s.io"));
        assert!(Output::only_table_accepted(&h));
        h.insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static(
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
            ),
        );
        assert!(!Output::only_table_accepted(&h));
        h.insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/json"),
        );
        assert!(!Output::only_table_accepted(&h));
        let reg = rk3s_api::Registry::builtin();
        let sar = reg
            .get("authorization.k8s.io", "v1", "selfsubjectaccessreviews")
            .map(|r| (*r).clone())
            .expect("sar");
        let pods = reg
            .get("", "v1", "pods")
            .map(|r| (*r).clone())
            .expect("pods");
        assert!(!Output::has_table(&sar, None));
        assert!(Output::has_table(&pods, None));
        assert!(Output::has_table(&pods, Some("status")));
        assert!(!Output::has_table(&pods, Some("eviction")));
        let e = not_acceptable();
        assert_eq!(e.code, 406);
    }

    #[test]
    fn bearer_tokens_are_read_as_upstream() {
        let with = |v: &'static str| {
            let mut h = http::HeaderMap::new();
            h.insert(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_static(v),
            );
            h
        };
        assert_eq!(bearer_token(&with("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&with("bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&with("BEARER abc extra")), Some("abc"));
        assert_eq!(bearer_token(&with("  Bearer abc  ")), Some("abc"));
        // No token, an empty token or another scheme: no bearer credentials (anonymous).
        assert_eq!(bearer_token(&with("Bearer")), None);
        assert_eq!(bearer_token(&with("Bearer  abc")), None);
        assert_eq!(bearer_token(&with("Basic dTpw")), None);
        assert_eq!(bearer_token(&http::HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn a_panicking_handler_is_answered_500() {
        let method = http::Method::DELETE;
        let ok = recover_panic(&method, "/x", async { body::json(200, &json!({})) }).await;
        assert_eq!(ok.status(), 200);
        let boom = recover_panic(&method, "/api/v1/namespaces/default/configmaps/c", async {
            let v: Vec<Value> = Vec::new();
            let _ = &v[3];
            body::json(200, &json!({}))
        })
        .await;
        assert_eq!(boom.status(), 500);
        match boom.body() {
            body::ResponseBody::Full(Some(b)) => assert_eq!(
                &b[..],
                b"This request caused apiserver to panic. Look in the logs for details.\n"
            ),
            _ => panic!("expected a full body"),
        }
    }
}
