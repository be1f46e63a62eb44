//! Resources and subresources that are not objects in the store (upstream's
//! storage-independent REST storages): `componentstatuses` (probed on each request),
//! `bindings` and `pods/binding` (a write to the pod), `pods/eviction` (a checked
//! delete), `serviceaccounts/token` (a TokenRequest, answered with a signed token).
//! Each is one [`RestStorage`] value whose code is here; [`for_request`] is the only
//! place that maps a request to one. Everything else is served by the generic layer
//! in [`crate::rest`].
//!
//! The authentication/authorization review APIs are answered before the resource is
//! looked up further (see `handler.rs` and [`crate::authz::review`]).

use async_trait::async_trait;
use rk3s_api::selector::LabelSelector;
use rk3s_api::{ApiError, Cause, ResourceInfo};
use rk3s_store::StoreError;
use serde_json::{json, Value};

use crate::body::{self, Response};
use crate::object::{self, meta_mut};
use crate::rest::{kv_to_object, options_dry_run, store_err, Call, FRESH_WAIT};

/// The REST verbs of one storage-independent resource or subresource.
#[async_trait]
pub trait RestStorage: Send + Sync {
    /// Answers the request.
    async fn serve(&self, call: &Call<'_>) -> Result<Response, ApiError>;
}

struct ComponentStatuses;

#[async_trait]
impl RestStorage for ComponentStatuses {
    async fn serve(&self, call: &Call<'_>) -> Result<Response, ApiError> {
        Ok(crate::componentstatus::serve(call).await)
    }
}

struct Binding;

#[async_trait]
impl RestStorage for Binding {
    async fn serve(&self, call: &Call<'_>) -> Result<Response, ApiError> {
        call.bind().await
    }
}

struct Eviction;

#[async_trait]
impl RestStorage for Eviction {
    async fn serve(&self, call: &Call<'_>) -> Result<Response, ApiError> {
        call.evict().await
    }
}

struct TokenRequest;

#[async_trait]
impl RestStorage for TokenRequest {
    async fn serve(&self, call: &Call<'_>) -> Result<Response, ApiError> {
        call.token_request().await
    }
}

/// A create-only subresource asked for with another verb.
struct CreateOnly;

#[async_trait]
impl RestStorage for CreateOnly {
    async fn serve(&self, _call: &Call<'_>) -> Result<Response, ApiError> {
        Err(ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource",
        ))
    }
}

/// The storage that serves `verb` on `res` (and `subresource`), if it is not the store.
pub fn for_request(
    res: &ResourceInfo,
    subresource: Option<&str>,
    verb: &str,
) -> Option<&'static dyn RestStorage> {
    if res.group.is_empty() && res.plural == "componentstatuses" {
        return Some(&ComponentStatuses);
    }
    match (subresource, verb) {
        (Some("binding"), "create") => return Some(&Binding),
        (Some("eviction"), "create") => return Some(&Eviction),
        (Some("token"), "create") => return Some(&TokenRequest),
        (Some("binding" | "eviction" | "token"), _) => return Some(&CreateOnly),
        _ => {}
    }
    if res.group.is_empty() && res.plural == "bindings" && verb == "create" {
        return Some(&Binding);
    }
    None
}

impl Call<'_> {
    /// `pods/binding` (and the `bindings` resource): assigns a pod to a node, as the
    /// scheduler does. 409 if the pod is already bound.
    pub async fn bind(&self) -> Result<Response, ApiError> {
        let binding = self.body_object()?;
        let pod_name = match &self.info.name {
            Some(n) => n.clone(),
            None => object::name(&binding).unwrap_or("").to_string(),
        };
        let node = binding
            .pointer("/target/name")
            .and_then(|n| n.as_str())
            .unwrap_or("")
            .to_string();
        let pods = self
            .inner
            .schemas
            .registry
            .get("", "v1", "pods")
            .ok_or_else(|| ApiError::internal("pods resource missing"))?;
        if node.is_empty() {
            return Err(ApiError::invalid(
                &pods,
                &pod_name,
                vec![Cause {
                    reason: "FieldValueRequired".into(),
                    message: "Required value".into(),
                    field: "target.name".into(),
                }],
            ));
        }
        let key = pods.key(self.info.namespace.as_deref(), &pod_name);
        for _ in 0..16 {
            let kv = self
                .inner
                .store
                .get(&key)
                .await
                .map_err(|e| store_err(&pods, &pod_name, e))?;
            let kv = kv.ok_or_else(|| ApiError::not_found(&pods, &pod_name))?;
            let mut pod = kv_to_object(&kv)?;
            if object::meta(&pod).is_some_and(|m| m.contains_key("deletionTimestamp")) {
                return Err(ApiError::conflict_msg(
                    &pods,
                    &pod_name,
                    format!("pod {pod_name} is being deleted, cannot be assigned to a host"),
                ));
            }
            if let Some(cur) = pod
                .pointer("/spec/nodeName")
                .and_then(|n| n.as_str())
                .filter(|n| !n.is_empty())
            {
                return Err(ApiError::conflict_msg(
                    &pods,
                    &pod_name,
                    format!("pod {pod_name} is already assigned to node \"{cur}\""),
                ));
            }
            if let Some(uid) = binding.pointer("/metadata/uid").and_then(|u| u.as_str()) {
                if object::meta_str(&pod, "uid") != Some(uid) {
                    return Err(ApiError::conflict_msg(
                        &pods,
                        &pod_name,
                        "Precondition failed: UID in precondition does not match the pod",
                    ));
                }
            }
            if let Some(spec) = pod.get_mut("spec").and_then(|s| s.as_object_mut()) {
                spec.insert("nodeName".into(), json!(node));
            }
            let now = object::now_rfc3339();
            let status = pod
                .as_object_mut()
                .map(|o| o.entry("status").or_insert_with(|| json!({})));
            if let Some(st) = status.and_then(|s| s.as_object_mut()) {
                let conds = st.entry("conditions").or_insert_with(|| json!([]));
                if let Some(arr) = conds.as_array_mut() {
                    arr.retain(|c| c.get("type").and_then(|t| t.as_str()) != Some("PodScheduled"));
                    arr.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now}));
                }
            }
            if let Some(m) = meta_mut(&mut pod) {
                m.remove("resourceVersion");
            }
            if self.dry_run() {
                return Ok(body::json(201, &crate::rest::success(None)));
            }
            let bytes = serde_json::to_vec(&pod).map_err(|e| ApiError::internal(e.to_string()))?;
            match self.inner.store.update(&key, bytes, kv.mod_revision).await {
                Ok(_) => return Ok(body::json(201, &crate::rest::success(None))),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(store_err(&pods, &pod_name, e)),
            }
        }
        Err(ApiError::conflict(&pods, &pod_name))
    }

    /// `pods/eviction`: deletes the pod unless a PodDisruptionBudget forbids it
    /// (429 with upstream's message), as upstream's eviction subresource.
    pub async fn evict(&self) -> Result<Response, ApiError> {
        let eviction = body::decode_eviction(body::content_type(&self.headers), &self.body)
            .map_err(|e| e.to_create_error("Eviction", &self.body))?;
        let ns = self.info.namespace.clone().unwrap_or_default();
        let name = self.name().to_string();
        if eviction
            .pointer("/metadata/name")
            .and_then(|n| n.as_str())
            .unwrap_or("")
            != name
        {
            return Err(ApiError::bad_request(
                "name in URL does not match name in Eviction object",
            ));
        }
        let pods = self
            .inner
            .schemas
            .registry
            .get("", "v1", "pods")
            .ok_or_else(|| ApiError::internal("pods resource missing"))?;
        let kv = self
            .inner
            .store
            .get(&pods.key(Some(&ns), &name))
            .await
            .map_err(|e| store_err(&pods, &name, e))?;
        let pod = kv
            .as_ref()
            .map(kv_to_object)
            .transpose()?
            .ok_or_else(|| ApiError::not_found(&pods, &name))?;
        let phase = pod
            .pointer("/status/phase")
            .and_then(|p| p.as_str())
            .unwrap_or("");
        let terminal = matches!(phase, "Succeeded" | "Failed");
        if !terminal {
            let _ = self.inner.cache.wait_fresh(FRESH_WAIT).await;
            let (pdbs, _) = self
                .inner
                .cache
                .list(&format!("/registry/policy/poddisruptionbudgets/{ns}/"));
            for pdb in pdbs {
                let pdb = pdb.object();
                let Some(sel) = pdb.pointer("/spec/selector") else {
                    continue;
                };
                let Ok(sel) = LabelSelector::from_json(sel) else {
                    continue;
                };
                if sel.is_empty() || !sel.matches_json(object::labels(&pod)) {
                    continue;
                }
                let allowed = pdb
                    .pointer("/status/disruptionsAllowed")
                    .and_then(|d| d.as_i64())
                    .unwrap_or(0);
                if allowed <= 0 {
                    let pdb_name = object::name(&pdb).unwrap_or("");
                    let mut e = ApiError::new(
                        429,
                        "TooManyRequests",
                        "Cannot evict pod as it would violate the pod's disruption budget.",
                    );
                    e.causes = vec![Cause { reason: "DisruptionBudget".into(), message: format!("The disruption budget {pdb_name} needs {} healthy pods and has {} currently", pdb.pointer("/status/desiredHealthy").and_then(|d| d.as_i64()).unwrap_or(0), pdb.pointer("/status/currentHealthy").and_then(|d| d.as_i64()).unwrap_or(0)), field: String::new() }];
                    e.retry_after_seconds = Some(10);
                    return Err(e);
                }
            }
        }
        let mut opts = eviction
            .get("deleteOptions")
            .cloned()
            .filter(|o| o.is_object())
            .unwrap_or_else(|| json!({}));
        if self.dry_run() {
            opts["dryRun"] = json!(["All"]);
        }
        self.inner
            .delete_object(&pods, Some(&ns), &name, &opts, options_dry_run(&opts))
            .await?;
        Ok(body::json(201, &crate::rest::success(None)))
    }
}

impl Call<'_> {
    /// `serviceaccounts/token` (TokenRequest): a bound service-account token, optionally
    /// bound to a Pod or Secret, as `kubectl create token`.
    pub async fn token_request(&self) -> Result<Response, ApiError> {
        let mut req = body::decode_token_request(body::content_type(&self.headers), &self.body)
            .map_err(|e| e.to_create_error("TokenRequest", &self.body))?;
        let ns = self.info.namespace.clone().unwrap_or_default();
        let name = self.name().to_string();
        let sas = self
            .inner
            .schemas
            .registry
            .get("", "v1", "serviceaccounts")
            .ok_or_else(|| ApiError::internal("serviceaccounts resource missing"))?;
        let kv = self
            .inner
            .store
            .get(&sas.key(Some(&ns), &name))
            .await
            .map_err(|e| store_err(&sas, &name, e))?;
        let sa = kv
            .as_ref()
            .map(kv_to_object)
            .transpose()?
            .ok_or_else(|| ApiError::not_found(&sas, &name))?;
        let issuer = self
            .inner
            .auth
            .token_auth
            .issuer
            .as_ref()
            .ok_or_else(|| ApiError::internal("no service-account signing key"))?;
        let spec = req
            .get("spec")
            .cloned()
            .filter(|s| s.is_object())
            .unwrap_or_else(|| json!({}));
        let mut audiences: Vec<String> = spec
            .get("audiences")
            .and_then(|a| a.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        if audiences.is_empty() {
            audiences = self.inner.auth.token_auth.audiences.clone();
        }
        let exp = spec
            .get("expirationSeconds")
            .and_then(|e| e.as_i64())
            .unwrap_or(3600);
        if exp < 600 {
            let tr = self
                .inner
                .schemas
                .registry
                .get("", "v1", "serviceaccounts")
                .ok_or_else(|| ApiError::internal("missing"))?;
            return Err(ApiError::invalid(
                &tr,
                &name,
                vec![Cause {
                    reason: "FieldValueInvalid".into(),
                    message: format!(
                        "Invalid value: {exp}: may not specify a duration less than 10 minutes"
                    ),
                    field: "spec.expirationSeconds".into(),
                }],
            ));
        }
        let now = jiff::Timestamp::now().as_second();
        let uid = object::meta_str(&sa, "uid").unwrap_or("").to_string();
        let mut claims = rk3s_auth::SaClaims::bound(&ns, &name, &uid, audiences.clone(), now, exp);
        if let Some(bref) = spec.get("boundObjectRef") {
            let kind = bref.get("kind").and_then(|k| k.as_str()).unwrap_or("");
            let bname = bref
                .get("name")
                .and_then(|k| k.as_str())
                .unwrap_or("")
                .to_string();
            let (prefix, slot) = match kind {
                "Pod" => ("pods", 0),
                "Secret" => ("secrets", 1),
                other => {
                    return Err(ApiError::bad_request(format!(
                        "cannot bind token to object of kind {other}"
                    )))
                }
            };
            let obj = self
                .inner
                .cache
                .get(&format!("/registry/core/{prefix}/{ns}/{bname}"))
                .ok_or_else(|| ApiError::not_found_named(prefix, "", &bname))?
                .object();
            let ouid = object::meta_str(&obj, "uid").unwrap_or("").to_string();
            if let Some(want) = bref
                .get("uid")
                .and_then(|u| u.as_str())
                .filter(|u| !u.is_empty())
            {
                if want != ouid {
                    return Err(ApiError::conflict_msg(&sas, &name, format!("the UID in the bound object reference ({want}) does not match the UID in record. The object might have been deleted and then recreated")));
                }
            }
            let r = rk3s_auth::ObjectRef {
                name: bname,
                uid: ouid,
            };
            if slot == 0 {
                if let Some(node) = obj
                    .pointer("/spec/nodeName")
                    .and_then(|n| n.as_str())
                    .filter(|n| !n.is_empty())
                {
                    let nuid = self
                        .inner
                        .cache
                        .get(&format!("/registry/core/nodes/{node}"))
                        .and_then(|n| object::meta_str(&n.object(), "uid").map(String::from))
                        .unwrap_or_default();
                    claims.bound.node = Some(rk3s_auth::ObjectRef {
                        name: node.to_string(),
                        uid: nuid,
                    });
                }
                claims.bound.pod = Some(r);
            } else {
                claims.bound.secret = Some(r);
            }
        }
        let token = issuer
            .issue(&claims)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let expires = jiff::Timestamp::from_second(now + exp)
            .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default();
        if let Some(o) = req.as_object_mut() {
            o.insert("kind".into(), json!("TokenRequest"));
            o.insert("apiVersion".into(), json!("authentication.k8s.io/v1"));
            o.insert(
                "metadata".into(),
                json!({"name": name, "namespace": ns, "creationTimestamp": null}),
            );
            let mut spec = spec.clone();
            spec["audiences"] = json!(audiences);
            spec["expirationSeconds"] = json!(exp);
            // TokenRequestSpec's fields have no omitempty: an absent ref is `null`.
            if let Some(m) = spec.as_object_mut() {
                m.entry("boundObjectRef").or_insert(Value::Null);
            }
            o.insert("spec".into(), spec);
            o.insert(
                "status".into(),
                json!({"token": token, "expirationTimestamp": expires}),
            );
        }
        Ok(body::json(201, &req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(plural: &str) -> ResourceInfo {
        rk3s_api::Registry::builtin()
            .get("", "v1", plural)
            .map(|r| (*r).clone())
            .expect("resource")
    }

    #[test]
    fn only_storage_independent_requests_leave_the_store() {
        let pods = res("pods");
        assert!(for_request(&pods, None, "create").is_none());
        assert!(for_request(&pods, Some("status"), "update").is_none());
        for (sub, verb) in [
            ("binding", "create"),
            ("eviction", "create"),
            ("binding", "get"),
        ] {
            assert!(
                for_request(&pods, Some(sub), verb).is_some(),
                "{sub} {verb}"
            );
        }
        assert!(for_request(&res("bindings"), None, "create").is_some());
        assert!(for_request(&res("componentstatuses"), None, "list").is_some());
        assert!(for_request(&res("serviceaccounts"), Some("token"), "create").is_some());
        assert!(for_request(&res("configmaps"), None, "list").is_none());
    }
}
