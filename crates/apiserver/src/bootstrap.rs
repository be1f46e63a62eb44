//! Objects every cluster has from the start: the `default`, `kube-system`, `kube-public`
//! and `kube-node-lease` namespaces, the `default/kubernetes` Service with its Endpoints and
//! EndpointSlice (kept at the advertised address), the default RBAC policy, and the
//! periodic repair of Service IP / NodePort allocations. Emptying a deleted namespace is
//! the controller manager's namespace controller's job (`rk3s_controllers::namespace`,
//! leader-elected), not the API server's.

use rk3s_store::StoreError;
use serde_json::{json, Value};

use crate::handler::ApiServer;
use crate::state::Inner;
use crate::{object, ApiServerError, Config};

async fn ensure(inner: &Inner, key: &str, mut obj: Value) -> Result<(), ApiServerError> {
    if inner.store.get(key).await?.is_some() {
        return Ok(());
    }
    if let Some(m) = object::meta_mut(&mut obj) {
        m.insert("uid".into(), json!(object::new_uid()));
        m.insert("creationTimestamp".into(), json!(object::now_rfc3339()));
    }
    let bytes = serde_json::to_vec(&obj).map_err(|e| ApiServerError::Config(e.to_string()))?;
    match inner.store.create(key, bytes).await {
        Ok(_) | Err(StoreError::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Creates the built-in objects that are missing and starts the allocation repair loop.
pub async fn run(api: &ApiServer, config: &Config) -> Result<(), ApiServerError> {
    let inner = api.inner();
    let ns_res = inner.schemas.registry.get("", "v1", "namespaces");
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let mut obj = json!({
            "kind": "Namespace", "apiVersion": "v1",
            "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}},
            "spec": {"finalizers": ["kubernetes"]},
        });
        if let Some(r) = &ns_res {
            crate::strategy::for_resource(r).prepare_for_create(r, &mut obj);
        }
        ensure(inner, &format!("/registry/core/namespaces/{ns}"), obj).await?;
    }
    let ip = inner.alloc.first_ip().to_string();
    ensure(
        inner,
        "/registry/core/services/default/kubernetes",
        json!({
            "kind": "Service", "apiVersion": "v1",
            "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {
                "ports": [{"name": "https", "protocol": "TCP", "port": 443, "targetPort": config.advertise_port}],
                "clusterIP": ip, "clusterIPs": [ip], "type": "ClusterIP", "sessionAffinity": "None",
                "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster",
            },
            "status": {"loadBalancer": {}},
        }),
    )
    .await?;
    // Mark what the Services hold (IPAddresses, node-port bitmap): allocations made
    // before a restart, or by a version that allocated in memory, stay taken.
    if let Err(e) = inner.alloc.repair().await {
        tracing::warn!(error = %e, "service IP / node port repair failed");
    }
    // The `kubernetes` Endpoints/EndpointSlice: this server and every other live one.
    crate::apiserver_endpoints::reconcile_once(
        inner,
        config.advertise_address,
        config.advertise_port,
    )
    .await?;
    crate::apiserver_endpoints::spawn(
        inner.clone(),
        config.advertise_address,
        config.advertise_port,
    );
    // Upstream's default RBAC roles and bindings (created when missing; like upstream's
    // reconciliation with autoupdate, a missing one is recreated at every start).
    for obj in rk3s_auth::bootstrap_policy() {
        let kind = obj
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("")
            .to_string();
        let Some(res) = inner
            .schemas
            .registry
            .by_kind("rbac.authorization.k8s.io", "v1", &kind)
        else {
            continue;
        };
        let name = object::name(&obj).unwrap_or("").to_string();
        let key = res.key(object::namespace(&obj), &name);
        ensure(inner, &key, obj).await?;
    }
    // What extension API servers read to trust this server's front proxy.
    crate::aggregator::ensure_authentication_configmap(
        inner,
        &config.client_ca_pem,
        config.front_proxy.as_ref(),
    )
    .await?;
    // The local APIServices of the built-in groups (`kubectl get apiservices`).
    crate::local_group::ensure_builtin_apiservices(inner).await?;
    let repair = inner.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(crate::alloc::REPAIR_INTERVAL).await;
            if let Err(e) = repair.alloc.repair().await {
                tracing::warn!(error = %e, "service IP / node port repair failed");
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::testutil::{call, server};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_cluster_has_its_built_in_objects_and_their_allocations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let api = server(dir.path()).await;
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let (code, obj) = call(&api, "GET", &format!("/api/v1/namespaces/{ns}"), None).await;
            assert_eq!(code, 200, "{obj}");
            assert_eq!(obj["status"]["phase"], "Active");
            assert_eq!(obj["spec"]["finalizers"], json!(["kubernetes"]));
        }
        let (_, svc) = call(
            &api,
            "GET",
            "/api/v1/namespaces/default/services/kubernetes",
            None,
        )
        .await;
        assert_eq!(svc["spec"]["clusterIP"], "10.43.0.1");
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 6443);
        let (_, eps) = call(
            &api,
            "GET",
            "/api/v1/namespaces/default/endpoints/kubernetes",
            None,
        )
        .await;
        assert_eq!(eps["subsets"][0]["addresses"][0]["ip"], "192.0.2.7");
        // The start-up repair gave the `kubernetes` Service's IP its IPAddress.
        let (code, ip) = call(
            &api,
            "GET",
            "/apis/networking.k8s.io/v1/ipaddresses/10.43.0.1",
            None,
        )
        .await;
        assert_eq!(code, 200, "{ip}");
        assert_eq!(
            ip["spec"]["parentRef"],
            json!({"group": "", "resource": "services", "namespace": "default", "name": "kubernetes"})
        );
        // The default RBAC policy is there.
        let (code, _) = call(
            &api,
            "GET",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/cluster-admin",
            None,
        )
        .await;
        assert_eq!(code, 200);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deleted_namespace_waits_for_the_namespace_controller() {
        let dir = tempfile::tempdir().expect("tempdir");
        let api = server(dir.path()).await;
        let (code, _) = call(
            &api,
            "POST",
            "/api/v1/namespaces",
            Some(json!({"metadata": {"name": "gone"}})),
        )
        .await;
        assert_eq!(code, 201);
        let cm = json!({"metadata": {"name": "c"}, "data": {"a": "b"}});
        let (code, _) = call(&api, "POST", "/api/v1/namespaces/gone/configmaps", Some(cm)).await;
        assert_eq!(code, 201);
        let (code, ns) = call(&api, "DELETE", "/api/v1/namespaces/gone", None).await;
        assert_eq!(code, 200);
        assert_eq!(ns["status"]["phase"], "Terminating");
        // The API server itself empties nothing (that is the leader-elected namespace
        // controller's job): the namespace and its content stay.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let (code, ns) = call(&api, "GET", "/api/v1/namespaces/gone", None).await;
        assert_eq!(code, 200);
        assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
        let (code, _) = call(&api, "GET", "/api/v1/namespaces/gone/configmaps/c", None).await;
        assert_eq!(code, 200);
        // What the controller does: empty it, then drop `kubernetes` through `finalize`.
        let (code, _) = call(&api, "DELETE", "/api/v1/namespaces/gone/configmaps/c", None).await;
        assert_eq!(code, 200);
        let mut body = ns.clone();
        body["spec"]["finalizers"] = json!([]);
        let (code, out) = call(&api, "PUT", "/api/v1/namespaces/gone/finalize", Some(body)).await;
        assert_eq!(code, 200, "{out}");
        let (code, _) = call(&api, "GET", "/api/v1/namespaces/gone", None).await;
        let gone = code == 404;
        assert!(gone, "finalizing an emptied namespace removed it");
    }
}
