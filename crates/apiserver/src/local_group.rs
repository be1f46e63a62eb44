//! API groups served in this process by code outside the API server, as upstream's
//! aggregated APIs (e.g. `metrics.k8s.io` of metrics-server) but without a proxy hop.
//!
//! A [`LocalApiGroup`] names its group/version and resources; once registered with
//! [`ApiServer::register_local_group`] its resources are in the [`rk3s_api::Registry`]
//! (so discovery, `/apis`, aggregated discovery and OpenAPI list them), its requests pass
//! the same authentication and authorization as every resource (RBAC on
//! `<resource>.<group>`), and the API server answers `get`/`list` with what the group's
//! [`LocalApiGroup::get`] returns. The group's `APIService` (`<version>.<group>`) is
//! created or updated with `service` unset and `Available=True` (reason `Local`), as
//! upstream's aggregator reports local API services.
//!
//! Invariants: a local group only serves the verbs its resources list (the handler
//! checks them before calling it); nothing here is a rule of one group.

use std::sync::{Arc, RwLock};

use rk3s_api::{ApiError, ResourceInfo};
use serde_json::{json, Value};

use crate::handler::ApiServer;
use crate::request::{Query, RequestInfo};
use crate::state::Inner;
use crate::UserInfo;

/// One read request to a local group, after authentication and authorization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalRequest {
    /// `get` or `list`.
    pub verb: String,
    /// The version asked for.
    pub version: String,
    /// The resource (plural), e.g. `pods`.
    pub resource: String,
    /// The namespace of the path (`None`: all namespaces or a cluster-scoped resource).
    pub namespace: Option<String>,
    /// The object name for `get`.
    pub name: Option<String>,
    /// The `labelSelector` query parameter, if any.
    pub label_selector: Option<String>,
    /// The `fieldSelector` query parameter, if any.
    pub field_selector: Option<String>,
    /// Who asks (already authorized for the verb on the resource).
    pub user: UserInfo,
}

/// An API group/version whose resources are served by code in this process.
#[async_trait::async_trait]
pub trait LocalApiGroup: Send + Sync + 'static {
    /// The group, e.g. `metrics.k8s.io`.
    fn group(&self) -> &str;
    /// The version, e.g. `v1beta1`.
    fn version(&self) -> &str;
    /// The resources served (group and version as above; verbs as discovery lists them).
    fn resources(&self) -> Vec<ResourceInfo>;
    /// `spec.groupPriorityMinimum` of the group's APIService (metrics-server: 100).
    fn group_priority_minimum(&self) -> i64 {
        100
    }
    /// `spec.versionPriority` of the group's APIService (metrics-server: 100).
    fn version_priority(&self) -> i64 {
        100
    }
    /// Answers a `get` (one object) or `list` (a `<Kind>List`) with the JSON body.
    async fn get(&self, req: LocalRequest) -> Result<Value, ApiError>;
    /// The `Table` of `items` of `resource` (`kubectl get`): column definitions
    /// (`TableColumnDefinition` JSON) and each item's cells. `None`: upstream's default
    /// table (Name, Created At).
    fn table(&self, _resource: &str, _items: &[Value]) -> Option<(Vec<Value>, Vec<Vec<Value>>)> {
        None
    }
}

/// The registered local groups (part of [`Inner`]).
#[derive(Default)]
pub struct LocalGroups {
    groups: RwLock<Vec<Arc<dyn LocalApiGroup>>>,
}

impl LocalGroups {
    /// The group serving `group`/`version`, if any.
    pub fn find(&self, group: &str, version: &str) -> Option<Arc<dyn LocalApiGroup>> {
        let groups = match self.groups.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        groups
            .iter()
            .find(|g| g.group() == group && g.version() == version)
            .cloned()
    }

    fn add(&self, g: Arc<dyn LocalApiGroup>) {
        let mut groups = match self.groups.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        groups.retain(|x| !(x.group() == g.group() && x.version() == g.version()));
        groups.push(g);
    }
}

impl ApiServer {
    /// Serves `group` from now on: adds its resources to discovery and OpenAPI, routes
    /// its requests to it, and marks its APIService available. Registering the same
    /// group/version again replaces the previous one.
    pub async fn register_local_group(&self, group: Arc<dyn LocalApiGroup>) {
        let inner = self.inner();
        for r in group.resources() {
            inner.schemas.registry.add(r);
        }
        inner.local_groups.add(group.clone());
        // Rebuilding the OpenAPI documents is CPU work: off the async threads.
        let for_openapi = inner.clone();
        if let Err(e) =
            tokio::task::spawn_blocking(move || crate::crd::rebuild_openapi(&for_openapi)).await
        {
            tracing::warn!(error = %e, "rebuilding OpenAPI for a local group failed");
        }
        if let Err(e) = ensure_apiservice(inner, group.as_ref()).await {
            tracing::warn!(group = group.group(), error = %e, "writing the local APIService failed");
        }
    }
}

/// Answers a request for a registered local group (`None`: not a local group's request).
pub async fn dispatch(
    inner: &Inner,
    headers: &http::HeaderMap,
    info: &RequestInfo,
    query: &Query,
    user: &UserInfo,
) -> Option<Result<crate::body::Response, ApiError>> {
    let g = inner.local_groups.find(&info.group, &info.version)?;
    if info.subresource.is_some() || !matches!(info.verb.as_str(), "get" | "list") {
        return Some(Err(ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource",
        )));
    }
    let req = LocalRequest {
        verb: info.verb.clone(),
        version: info.version.clone(),
        resource: info.resource.clone(),
        namespace: info.namespace.clone(),
        name: info.name.clone(),
        label_selector: query.get("labelSelector").map(String::from),
        field_selector: query.get("fieldSelector").map(String::from),
        user: user.clone(),
    };
    let answer = match g.get(req).await {
        Ok(v) => v,
        Err(e) => return Some(Err(e)),
    };
    let body = match crate::output::Output::negotiate(headers, query) {
        crate::output::Output::Table(include) => {
            table(g.as_ref(), &info.resource, &answer, include)
        }
        _ => answer,
    };
    Some(Ok(crate::body::json(200, &body)))
}

/// The `meta.k8s.io/v1` `Table` of a local group's answer (one object or a list).
fn table(
    g: &dyn LocalApiGroup,
    resource: &str,
    answer: &Value,
    include: rk3s_printers::IncludeObject,
) -> Value {
    let items: Vec<Value> = match answer.get("items").and_then(Value::as_array) {
        Some(items) => items.clone(),
        None => vec![answer.clone()],
    };
    match g.table(resource, &items) {
        Some((columns, cells)) => {
            let rows: Vec<Value> = items
                .iter()
                .zip(cells)
                .map(|(item, cells)| {
                    let mut row = json!({"cells": cells});
                    if let Some(o) = rk3s_printers::row_object(item, include) {
                        row["object"] = o;
                    }
                    row
                })
                .collect();
            json!({
                "kind": "Table",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": {},
                "columnDefinitions": columns,
                "rows": rows,
            })
        }
        None => {
            let kind = g
                .resources()
                .into_iter()
                .find(|r| r.plural == resource)
                .map(|r| r.kind)
                .unwrap_or_default();
            rk3s_printers::table(
                g.group(),
                &kind,
                &items,
                "",
                None,
                include,
                jiff::Timestamp::now(),
            )
        }
    }
}

/// The label upstream's aggregator puts on the APIServices it manages: `onstart` for
/// the built-in groups, `true` for groups registered while running (here: local groups).
pub const AUTOMANAGED: &str = "kube-aggregator.kubernetes.io/automanaged";

/// The APIService object upstream's aggregator keeps for a group served without a
/// Service: `spec.service` unset and `Available=True` with reason `Local`.
pub fn local_apiservice(
    group: &str,
    version: &str,
    group_priority_minimum: i64,
    version_priority: i64,
    automanaged: &str,
    now: &str,
) -> Value {
    let mut spec = json!({
        "version": version,
        "groupPriorityMinimum": group_priority_minimum,
        "versionPriority": version_priority,
    });
    if !group.is_empty() {
        spec["group"] = json!(group);
    }
    let name = if group.is_empty() {
        version.to_string()
    } else {
        format!("{version}.{group}")
    };
    json!({
        "kind": "APIService",
        "apiVersion": "apiregistration.k8s.io/v1",
        "metadata": {"name": name, "labels": {AUTOMANAGED: automanaged}},
        "spec": spec,
        "status": {"conditions": [{
            "type": "Available",
            "status": "True",
            "lastTransitionTime": now,
            "reason": "Local",
            "message": "Local APIServices are always available",
        }]},
    })
}

/// Creates the group's APIService, or rewrites its `spec` and `status` when they say
/// something else (e.g. a metrics-server Service left from before).
async fn ensure_apiservice(
    inner: &Inner,
    group: &dyn LocalApiGroup,
) -> Result<(), rk3s_store::StoreError> {
    let want = local_apiservice(
        group.group(),
        group.version(),
        group.group_priority_minimum(),
        group.version_priority(),
        "true",
        &crate::object::now_rfc3339(),
    );
    let name = format!("{}.{}", group.version(), group.group());
    let key = format!("/registry/apiregistration.k8s.io/apiservices/{name}");
    put_apiservice(inner, &key, want).await
}

/// Writes `want` at `key` unless an object there already has its `spec` and an
/// `Available=True` condition with the same reason (compare-and-swap; a concurrent
/// writer wins).
pub(crate) async fn put_apiservice(
    inner: &Inner,
    key: &str,
    mut want: Value,
) -> Result<(), rk3s_store::StoreError> {
    match inner.store.get(key).await? {
        None => {
            if let Some(m) = crate::object::meta_mut(&mut want) {
                m.insert("uid".into(), json!(crate::object::new_uid()));
                m.insert(
                    "creationTimestamp".into(),
                    json!(crate::object::now_rfc3339()),
                );
            }
            let bytes = serde_json::to_vec(&want).unwrap_or_default();
            match inner.store.create(key, bytes).await {
                Ok(_) | Err(rk3s_store::StoreError::AlreadyExists(_)) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Some(kv) => {
            let Ok(mut cur) = serde_json::from_slice::<Value>(&kv.value) else {
                return Ok(());
            };
            let available = |v: &Value| {
                v.pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .and_then(|cs| {
                        cs.iter()
                            .find(|c| c["type"] == "Available")
                            .map(|c| (c["status"].clone(), c["reason"].clone()))
                    })
            };
            if cur.get("spec") == want.get("spec") && available(&cur) == available(&want) {
                return Ok(());
            }
            cur["spec"] = want["spec"].clone();
            cur["status"] = want["status"].clone();
            let bytes = serde_json::to_vec(&cur).unwrap_or_default();
            match inner.store.update(key, bytes, kv.mod_revision).await {
                Ok(_)
                | Err(rk3s_store::StoreError::Conflict { .. })
                | Err(rk3s_store::StoreError::NotFound(_)) => Ok(()),
                Err(e) => Err(e),
            }
        }
    }
}

/// Upstream's `versionPriority` of a built-in group version (kube-apiserver's table:
/// core `v1` 1, GA 15, `autoscaling/v2` 30, beta 9, alpha 1).
pub fn builtin_version_priority(group: &str, version: &str) -> i64 {
    if group.is_empty() {
        return 1;
    }
    if version == "v2" {
        30
    } else if version.contains("alpha") {
        1
    } else if version.contains("beta") {
        9
    } else {
        15
    }
}

/// Creates (or repairs) the local APIService of every served group version
/// (`v1`, `v1.apps`, `v2.autoscaling`, ...), as upstream's aggregator registers the
/// built-in groups, and deletes the APIServices of local groups from an earlier run
/// (label `automanaged: "true"`): a group served again is registered again.
pub async fn ensure_builtin_apiservices(inner: &Inner) -> Result<(), rk3s_store::StoreError> {
    let prefix = "/registry/apiregistration.k8s.io/apiservices/";
    let listed = inner
        .store
        .list(prefix, rk3s_store::ListOptions::default())
        .await?;
    for kv in listed.items {
        let Ok(obj) = serde_json::from_slice::<Value>(&kv.value) else {
            continue;
        };
        let local = obj.pointer("/spec/service").is_none_or(Value::is_null);
        if local
            && obj.pointer(&format!(
                "/metadata/labels/{}",
                AUTOMANAGED.replace('/', "~1")
            )) == Some(&json!("true"))
        {
            match inner.store.delete(&kv.key, Some(kv.mod_revision)).await {
                Ok(_)
                | Err(rk3s_store::StoreError::Conflict { .. })
                | Err(rk3s_store::StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    let now = crate::object::now_rfc3339();
    let mut writes = Vec::new();
    for g in inner.schemas.registry.groups() {
        let priority = rk3s_api::resource::builtin::GROUP_PRIORITY
            .iter()
            .find(|(n, _)| *n == g.name)
            .map(|(_, p)| i64::from(*p))
            .unwrap_or(1000);
        for v in &g.versions {
            let obj = local_apiservice(
                &g.name,
                v,
                priority,
                builtin_version_priority(&g.name, v),
                "onstart",
                &now,
            );
            let name = crate::object::name(&obj).unwrap_or("").to_string();
            let key = format!("/registry/apiregistration.k8s.io/apiservices/{name}");
            writes.push(async move { put_apiservice(inner, &key, obj).await });
        }
    }
    // Concurrently: the store commits concurrent writes together.
    for r in futures_util::future::join_all(writes).await {
        r?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    use crate::testutil::{call, server};

    /// A fake `metrics.k8s.io` group answering from fixed objects.
    struct Fake;

    #[async_trait::async_trait]
    impl LocalApiGroup for Fake {
        fn group(&self) -> &str {
            "metrics.k8s.io"
        }
        fn version(&self) -> &str {
            "v1beta1"
        }
        fn resources(&self) -> Vec<ResourceInfo> {
            let r = |kind: &str, plural: &str, scope| ResourceInfo {
                group: "metrics.k8s.io".into(),
                version: "v1beta1".into(),
                kind: kind.into(),
                plural: plural.into(),
                singular: String::new(),
                short_names: vec![],
                categories: vec![],
                scope,
                verbs: vec!["get".into(), "list".into()],
                subresources: vec![],
                definition: String::new(),
                storage_group: "metrics.k8s.io".into(),
                preferred: true,
            };
            vec![
                r("NodeMetrics", "nodes", rk3s_api::Scope::Cluster),
                r("PodMetrics", "pods", rk3s_api::Scope::Namespaced),
            ]
        }
        async fn get(&self, req: LocalRequest) -> Result<Value, ApiError> {
            let node = json!({"metadata": {"name": "n1"}, "timestamp": "2026-01-01T00:00:00Z", "window": "15s", "usage": {"cpu": "250m", "memory": "1Ki"}});
            match (req.resource.as_str(), req.name.as_deref()) {
                ("nodes", None) => Ok(json!({
                    "kind": "NodeMetricsList", "apiVersion": "metrics.k8s.io/v1beta1",
                    "metadata": {}, "items": [node],
                    "selector": req.label_selector,
                })),
                ("nodes", Some("n1")) => Ok(node),
                (_, Some(n)) => Err(ApiError::not_found_named(
                    &req.resource,
                    "metrics.k8s.io",
                    n,
                )),
                _ => Ok(json!({"kind": "PodMetricsList", "items": [], "ns": req.namespace})),
            }
        }
    }

    async fn get_as(api: &ApiServer, path: &str, user: UserInfo) -> (u16, Value) {
        let (parts, ()) = http::Request::get(path).body(()).expect("req").into_parts();
        let resp = api.handle(parts, bytes::Bytes::new(), Some(user)).await;
        let code = resp.status().as_u16();
        let b = resp.into_body().collect().await.expect("body").to_bytes();
        (code, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_local_group_is_discovered_authorized_and_served() {
        let dir = tempfile::tempdir().expect("tempdir");
        let api = server(dir.path()).await;
        // Before registration: not served.
        let (code, _) = call(&api, "GET", "/apis/metrics.k8s.io/v1beta1/nodes", None).await;
        assert_eq!(code, 404);
        api.register_local_group(Arc::new(Fake)).await;

        let (code, list) = call(
            &api,
            "GET",
            "/apis/metrics.k8s.io/v1beta1/nodes?labelSelector=a%3Db",
            None,
        )
        .await;
        assert_eq!(code, 200, "{list}");
        assert_eq!(list["kind"], "NodeMetricsList");
        assert_eq!(list["items"][0]["usage"]["cpu"], "250m");
        assert_eq!(list["selector"], "a=b");
        let (code, one) = call(&api, "GET", "/apis/metrics.k8s.io/v1beta1/nodes/n1", None).await;
        assert_eq!((code, &one["metadata"]["name"]), (200, &json!("n1")));
        let (code, _) = call(&api, "GET", "/apis/metrics.k8s.io/v1beta1/nodes/n2", None).await;
        assert_eq!(code, 404);
        let (code, pods) = call(
            &api,
            "GET",
            "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods",
            None,
        )
        .await;
        assert_eq!((code, &pods["ns"]), (200, &json!("default")));
        // A Table (kubectl get): the group's own, else upstream's default columns.
        let (parts, ()) = http::Request::get("/apis/metrics.k8s.io/v1beta1/nodes")
            .header(
                "accept",
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
            )
            .body(())
            .expect("req")
            .into_parts();
        let admin = UserInfo::new("system:admin", &["system:masters", "system:authenticated"]);
        let resp = api.handle(parts, bytes::Bytes::new(), Some(admin)).await;
        let b = resp.into_body().collect().await.expect("body").to_bytes();
        let t: Value = serde_json::from_slice(&b).expect("json");
        assert_eq!(t["kind"], "Table", "{t}");
        assert_eq!(t["columnDefinitions"][0]["name"], "Name");
        assert_eq!(t["rows"][0]["cells"][0], "n1");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");

        // Only get/list: no watch, no writes.
        let (code, _) = call(
            &api,
            "GET",
            "/apis/metrics.k8s.io/v1beta1/nodes?watch=true",
            None,
        )
        .await;
        assert_eq!(code, 405);
        let (code, _) = call(
            &api,
            "DELETE",
            "/apis/metrics.k8s.io/v1beta1/nodes/n1",
            None,
        )
        .await;
        assert_eq!(code, 405);

        // Discovery: /apis, the group, the resource list and aggregated discovery.
        let (_, groups) = call(&api, "GET", "/apis", None).await;
        let g = groups["groups"]
            .as_array()
            .and_then(|gs| gs.iter().find(|g| g["name"] == "metrics.k8s.io"))
            .cloned()
            .expect("metrics group in /apis");
        assert_eq!(
            g["preferredVersion"]["groupVersion"],
            "metrics.k8s.io/v1beta1"
        );
        let (code, rl) = call(&api, "GET", "/apis/metrics.k8s.io/v1beta1", None).await;
        assert_eq!(code, 200);
        let names: Vec<&str> = rl["resources"]
            .as_array()
            .map(|a| a.iter().filter_map(|r| r["name"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(names, ["nodes", "pods"]);
        let (parts, ()) = http::Request::get("/apis")
            .header(
                "accept",
                "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
            )
            .body(())
            .expect("req")
            .into_parts();
        let admin = UserInfo::new("system:admin", &["system:masters", "system:authenticated"]);
        let resp = api.handle(parts, bytes::Bytes::new(), Some(admin)).await;
        let b = resp.into_body().collect().await.expect("body").to_bytes();
        let agg: Value = serde_json::from_slice(&b).expect("json");
        assert!(
            agg["items"]
                .as_array()
                .is_some_and(|a| a.iter().any(|g| g["metadata"]["name"] == "metrics.k8s.io")),
            "{agg}"
        );

        // Authorization as for any resource: a user without RBAC gets 403.
        let nobody = UserInfo::new("jane", &["system:authenticated"]);
        let (code, st) = get_as(&api, "/apis/metrics.k8s.io/v1beta1/nodes", nobody).await;
        assert_eq!(code, 403, "{st}");
        assert!(
            st["message"]
                .as_str()
                .is_some_and(|m| m.contains("nodes.metrics.k8s.io")),
            "{st}"
        );

        // The APIServices: the metrics one and the built-in local ones.
        let (code, svc) = call(
            &api,
            "GET",
            "/apis/apiregistration.k8s.io/v1/apiservices/v1beta1.metrics.k8s.io",
            None,
        )
        .await;
        assert_eq!(code, 200, "{svc}");
        assert_eq!(svc["spec"]["group"], "metrics.k8s.io");
        assert_eq!(svc["spec"]["groupPriorityMinimum"], 100);
        assert!(svc["spec"].get("service").is_none());
        assert_eq!(svc["status"]["conditions"][0]["type"], "Available");
        assert_eq!(svc["status"]["conditions"][0]["status"], "True");
        assert_eq!(svc["status"]["conditions"][0]["reason"], "Local");
        assert_eq!(svc["metadata"]["labels"][AUTOMANAGED], "true");
        let (_, apps) = call(
            &api,
            "GET",
            "/apis/apiregistration.k8s.io/v1/apiservices/v1.apps",
            None,
        )
        .await;
        assert_eq!(apps["spec"]["groupPriorityMinimum"], 17800);
        assert_eq!(apps["spec"]["versionPriority"], 15);
        assert_eq!(apps["metadata"]["labels"][AUTOMANAGED], "onstart");
        let (_, core) = call(
            &api,
            "GET",
            "/apis/apiregistration.k8s.io/v1/apiservices/v1",
            None,
        )
        .await;
        assert_eq!(core["spec"]["version"], "v1");
        assert!(core["spec"].get("group").is_none());

        // A restart that does not serve the group any more drops its APIService.
        let again = server(dir.path()).await;
        let (code, _) = call(
            &again,
            "GET",
            "/apis/apiregistration.k8s.io/v1/apiservices/v1beta1.metrics.k8s.io",
            None,
        )
        .await;
        assert_eq!(code, 404);
        let (code, _) = call(
            &again,
            "GET",
            "/apis/apiregistration.k8s.io/v1/apiservices/v1.apps",
            None,
        )
        .await;
        assert_eq!(code, 200);
    }

    #[test]
    fn version_priorities_follow_upstream() {
        assert_eq!(builtin_version_priority("", "v1"), 1);
        assert_eq!(builtin_version_priority("apps", "v1"), 15);
        assert_eq!(builtin_version_priority("autoscaling", "v2"), 30);
        assert_eq!(builtin_version_priority("resource.k8s.io", "v1beta1"), 9);
        assert_eq!(builtin_version_priority("storage.k8s.io", "v1alpha1"), 1);
    }
}
