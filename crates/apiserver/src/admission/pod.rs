//! Built-in mutating admission of new Pods (upstream's ServiceAccount, Priority,
//! DefaultTolerationSeconds and RuntimeClass plugins), run first in
//! [`super::mutate`].

use rk3s_api::ApiError;
use serde_json::{json, Value};

use crate::object;
use crate::state::Inner;

/// Mutating admission of a new Pod, in upstream's order: ServiceAccount (default
/// service account, projected token volume unless opted out), Priority (priority 0
/// unless a PriorityClass says otherwise), DefaultTolerationSeconds (not-ready and
/// unreachable NoExecute tolerations of 300 s), RuntimeClass (overhead, node selector
/// and tolerations of the pod's RuntimeClass; 403 when it does not exist, or conflicts).
pub async fn admit(inner: &Inner, obj: &mut Value) -> Result<(), ApiError> {
    let ns = object::namespace(obj).unwrap_or("").to_string();
    let name = object::name(obj).unwrap_or("").to_string();
    // Mirror pods (the API copies of a kubelet's static pods) get no service account or
    // token volume, as upstream: the kubelet runs the static pod's spec, not the mirror's.
    let mirror = obj
        .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
        .is_some();
    let Some(spec) = obj.get_mut("spec").and_then(|s| s.as_object_mut()) else {
        return Ok(());
    };
    // ServiceAccount
    if !mirror {
        admit_service_account(inner, &ns, spec);
    }
    admit_priority_and_tolerations(inner, spec);
    let class = match spec.get("runtimeClassName").and_then(|c| c.as_str()) {
        Some(c) => runtime_class(inner, c).await?,
        None => None,
    };
    crate::runtimeclass::admit(spec, class.as_ref()).map_err(|m| {
        let message = if name.is_empty() {
            format!("pods is forbidden: {m}")
        } else {
            format!("pods {name:?} is forbidden: {m}")
        };
        let mut e = ApiError::forbidden(message);
        e.name = Some(name.clone());
        e.kind = Some("pods".into());
        e
    })
}

/// A RuntimeClass by name: from the watch cache, else (the cache may lag behind a class
/// created just now) from the store, as upstream's live lookup.
async fn runtime_class(inner: &Inner, name: &str) -> Result<Option<Value>, ApiError> {
    let key = format!("/registry/node.k8s.io/runtimeclasses/{name}");
    if let Some(c) = inner.cache.get(&key) {
        return Ok(Some(c.value()));
    }
    match inner.store.get(&key).await {
        Ok(kv) => Ok(kv.and_then(|kv| serde_json::from_slice(&kv.value).ok())),
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}

/// ServiceAccount admission: the default service account and its token volume.
fn admit_service_account(inner: &Inner, ns: &str, spec: &mut serde_json::Map<String, Value>) {
    let sa_name = spec
        .get("serviceAccountName")
        .and_then(|s| s.as_str())
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string();
    spec.insert("serviceAccountName".into(), json!(sa_name));
    spec.insert("serviceAccount".into(), json!(sa_name));
    let sa = inner
        .cache
        .get(&format!("/registry/core/serviceaccounts/{ns}/{sa_name}"))
        .map(|s| s.object());
    let sa_automount = sa
        .as_ref()
        .and_then(|s| s.get("automountServiceAccountToken"))
        .and_then(|a| a.as_bool());
    let pod_automount = spec
        .get("automountServiceAccountToken")
        .and_then(|a| a.as_bool());
    let automount = pod_automount.or(sa_automount).unwrap_or(true);
    // A pod that names no image pull secrets gets its service account's.
    let pod_secrets = spec
        .get("imagePullSecrets")
        .and_then(|s| s.as_array())
        .is_some_and(|a| !a.is_empty());
    if !pod_secrets {
        if let Some(secrets) = sa
            .as_ref()
            .and_then(|s| s.get("imagePullSecrets"))
            .and_then(|s| s.as_array())
            .filter(|a| !a.is_empty())
        {
            spec.insert("imagePullSecrets".into(), Value::Array(secrets.clone()));
        }
    }
    const MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
    let already = ["containers", "initContainers"].iter().any(|k| {
        spec.get(*k).and_then(|c| c.as_array()).is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("volumeMounts")
                    .and_then(|m| m.as_array())
                    .is_some_and(|ms| {
                        ms.iter()
                            .any(|m| m.get("mountPath").and_then(|p| p.as_str()) == Some(MOUNT))
                    })
            })
        })
    });
    if automount && !already {
        let vol_name = format!("kube-api-access-{}", object::random_suffix());
        let volume = json!({"name": vol_name, "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ]}});
        let vols = spec.entry("volumes").or_insert_with(|| json!([]));
        if let Some(v) = vols.as_array_mut() {
            v.push(volume);
        }
        for k in ["containers", "initContainers"] {
            if let Some(cs) = spec.get_mut(k).and_then(|c| c.as_array_mut()) {
                for c in cs {
                    if let Some(co) = c.as_object_mut() {
                        let mounts = co.entry("volumeMounts").or_insert_with(|| json!([]));
                        if let Some(m) = mounts.as_array_mut() {
                            m.push(json!({"name": vol_name, "readOnly": true, "mountPath": MOUNT}));
                        }
                    }
                }
            }
        }
    }
}

/// Priority admission and DefaultTolerationSeconds.
fn admit_priority_and_tolerations(inner: &Inner, spec: &mut serde_json::Map<String, Value>) {
    let class = spec
        .get("priorityClassName")
        .and_then(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .map(String::from);
    let (prio, policy) = match class {
        Some(c) => match inner
            .cache
            .get(&format!("/registry/scheduling.k8s.io/priorityclasses/{c}"))
        {
            Some(pc) => (
                pc.object()
                    .get("value")
                    .and_then(|v| v.as_i64())
                    .unwrap_or(0),
                pc.object()
                    .get("preemptionPolicy")
                    .and_then(|v| v.as_str())
                    .unwrap_or("PreemptLowerPriority")
                    .to_string(),
            ),
            None if c == "system-node-critical" => (2_000_001_000, "PreemptLowerPriority".into()),
            None if c == "system-cluster-critical" => {
                (2_000_000_000, "PreemptLowerPriority".into())
            }
            None => (0, "PreemptLowerPriority".into()),
        },
        None => (0, "PreemptLowerPriority".into()),
    };
    spec.entry("priority").or_insert(json!(prio));
    spec.entry("preemptionPolicy").or_insert(json!(policy));
    // DefaultTolerationSeconds
    let tols = spec.entry("tolerations").or_insert_with(|| json!([]));
    if let Some(t) = tols.as_array_mut() {
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            let has = t.iter().any(|x| {
                let k = x.get("key").and_then(|k| k.as_str());
                let e = x.get("effect").and_then(|k| k.as_str()).unwrap_or("");
                (k == Some(key)
                    || (k.is_none()
                        && x.get("operator").and_then(|o| o.as_str()) == Some("Exists")))
                    && (e.is_empty() || e == "NoExecute")
            });
            if !has {
                t.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::testutil::{call, server};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_pod_gets_its_service_account_priority_and_tolerations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let api = server(dir.path()).await;
        let pod = json!({"metadata": {"name": "p"}, "spec": {
            "containers": [{"name": "c", "image": "busybox"}],
            "tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]}});
        let (code, p) = call(&api, "POST", "/api/v1/namespaces/default/pods", Some(pod)).await;
        assert_eq!(code, 201, "{p}");
        assert_eq!(p["spec"]["serviceAccountName"], "default");
        assert_eq!(p["spec"]["priority"], 0);
        assert_eq!(p["spec"]["preemptionPolicy"], "PreemptLowerPriority");
        let tolerations = p["spec"]["tolerations"].as_array().expect("tolerations");
        // The pod's own unreachable toleration is kept; not-ready gets the default 300 s.
        assert_eq!(tolerations.len(), 2, "{tolerations:?}");
        assert!(tolerations
            .iter()
            .any(|t| t["key"] == "node.kubernetes.io/not-ready" && t["tolerationSeconds"] == 300));
        let volume = p["spec"]["volumes"][0]["name"].as_str().unwrap_or("");
        assert!(volume.starts_with("kube-api-access-"), "{p}");
        assert_eq!(
            p["spec"]["containers"][0]["volumeMounts"][0]["mountPath"],
            "/var/run/secrets/kubernetes.io/serviceaccount"
        );
        // A RuntimeClass that does not exist is refused (403).
        let pod = json!({"metadata": {"name": "q"}, "spec": {"runtimeClassName": "nope",
            "containers": [{"name": "c", "image": "busybox"}]}});
        let (code, e) = call(&api, "POST", "/api/v1/namespaces/default/pods", Some(pod)).await;
        assert_eq!(code, 403, "{e}");
    }
}
