//! Authentication beyond client certificates (bearer tokens), impersonation, and
//! authorization (Node, then RBAC, as upstream's `--authorization-mode=Node,RBAC`), plus
//! the review APIs that ask the authorizer questions (`SelfSubjectAccessReview`,
//! `SubjectAccessReview`, `LocalSubjectAccessReview`, `SelfSubjectRulesReview`,
//! `SelfSubjectReview`, `TokenReview`).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use rk3s_api::ApiError;
use rk3s_auth::{Attributes, Decision, RbacSnapshot, TokenVerifier, UserInfo};
use serde_json::{json, Value};

use crate::request::{Query, RequestInfo};
use crate::state::Inner;

/// Token authentication settings.
pub struct TokenAuth {
    /// Verifies service-account JWTs.
    pub verifier: Option<TokenVerifier>,
    /// Issues bound service-account tokens (TokenRequest).
    pub issuer: Option<rk3s_auth::TokenIssuer>,
    /// `--token-auth-file` users.
    pub token_file: Option<rk3s_auth::TokenFile>,
    /// API audiences (`--api-audiences`, default the issuer).
    pub audiences: Vec<String>,
}

/// The RBAC snapshot, rebuilt when an RBAC object changes.
#[derive(Default)]
pub struct RbacCache {
    current: Mutex<Option<(u64, Arc<RbacSnapshot>)>>,
}

fn values(inner: &Inner, plural: &str) -> Vec<Value> {
    let (items, _) = inner
        .cache
        .list(&format!("/registry/rbac.authorization.k8s.io/{plural}/"));
    items.into_iter().map(|o| o.value()).collect()
}

impl Inner {
    /// The current RBAC snapshot.
    pub fn rbac(&self) -> Arc<RbacSnapshot> {
        let gen = self.cache.rbac_generation.load(Ordering::Acquire);
        if let Ok(cur) = self.auth.rbac_cache.current.lock() {
            if let Some((g, snap)) = cur.as_ref() {
                if *g == gen {
                    return snap.clone();
                }
            }
        }
        let snap = Arc::new(RbacSnapshot::new(
            &values(self, "roles"),
            &values(self, "clusterroles"),
            &values(self, "rolebindings"),
            &values(self, "clusterrolebindings"),
        ));
        if let Ok(mut cur) = self.auth.rbac_cache.current.lock() {
            *cur = Some((gen, snap.clone()));
        }
        snap
    }

    /// The Node authorizer's graph for one node: the pods bound to it (picked by their
    /// cached `spec.nodeName`, so only those are parsed) and the persistent volumes.
    /// Every edge of the graph starts at a pod bound to the asking node, so the other
    /// pods change none of its answers.
    fn node_graph(&self, node: &str) -> rk3s_auth::NodeGraph {
        let pods: Vec<Value> = self
            .cache
            .select("/registry/core/pods/", |o| match o.selectable() {
                Some(s) => s.field("spec.nodeName") == Some(node),
                None => o.object().pointer("/spec/nodeName").and_then(Value::as_str) == Some(node),
            })
            .into_iter()
            .map(|o| o.value())
            .collect();
        let (pvs, _) = self.cache.list("/registry/core/persistentvolumes/");
        let pvs: Vec<Value> = pvs.into_iter().map(|o| o.value()).collect();
        rk3s_auth::NodeGraph::new(&pods, &pvs, &[])
    }

    /// Authenticates a bearer token: service-account JWTs (whose service account, pod
    /// and secret must still exist), then the static token file.
    pub fn authenticate_token(&self, token: &str) -> Option<UserInfo> {
        let now = jiff::Timestamp::now().as_second();
        if let Some(v) = &self.auth.token_auth.verifier {
            if let Ok(vt) = v.verify(token, now) {
                let user = vt.user.clone();
                let (ns, sa) = match user
                    .name
                    .strip_prefix("system:serviceaccount:")
                    .and_then(|r| r.split_once(':'))
                {
                    Some((ns, sa)) => (ns.to_string(), sa.to_string()),
                    None => return None,
                };
                let sa_obj = self
                    .cache
                    .get(&format!("/registry/core/serviceaccounts/{ns}/{sa}"))?;
                if !user.uid.is_empty()
                    && crate::object::meta_str(&sa_obj.object(), "uid") != Some(user.uid.as_str())
                {
                    return None;
                }
                if let Some(b) = &vt.bound {
                    if let Some(pod) = &b.pod {
                        let p = self
                            .cache
                            .get(&format!("/registry/core/pods/{ns}/{}", pod.name))?;
                        if !pod.uid.is_empty()
                            && crate::object::meta_str(&p.object(), "uid") != Some(pod.uid.as_str())
                        {
                            return None;
                        }
                    }
                    if let Some(sec) = &b.secret {
                        let s = self
                            .cache
                            .get(&format!("/registry/core/secrets/{ns}/{}", sec.name))?;
                        if !sec.uid.is_empty()
                            && crate::object::meta_str(&s.object(), "uid") != Some(sec.uid.as_str())
                        {
                            return None;
                        }
                    }
                }
                if let Some((sns, sname)) = &vt.legacy_secret {
                    let s = self
                        .cache
                        .get(&format!("/registry/core/secrets/{sns}/{sname}"))?;
                    let s = s.object();
                    let stored = s
                        .pointer("/data/token")
                        .and_then(|t| t.as_str())
                        .unwrap_or("");
                    use base64::Engine;
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(stored)
                        .unwrap_or_default();
                    if decoded != token.as_bytes() {
                        return None;
                    }
                }
                return Some(user);
            }
        }
        if let Some(tf) = &self.auth.token_auth.token_file {
            if let Some(u) = tf.authenticate(token) {
                return Some(u.with_authenticated_group());
            }
        }
        if let Some(name) = rk3s_auth::bootstrap_token_secret_name(token) {
            if let Some(sec) = self
                .cache
                .get(&format!("/registry/core/secrets/kube-system/{name}"))
            {
                return rk3s_auth::authenticate_bootstrap_token(
                    token,
                    &sec.object(),
                    jiff::Timestamp::now().as_second(),
                );
            }
        }
        None
    }

    /// Decides a request: Node authorizer for nodes, then RBAC.
    pub fn decide(&self, attrs: &Attributes) -> Decision {
        let rbac = self.rbac().authorize(attrs);
        if rbac.is_allowed() {
            return rbac;
        }
        if attrs
            .user
            .groups
            .iter()
            .any(|g| g == rk3s_auth::GROUP_NODES)
        {
            let node = attrs.user.name.strip_prefix("system:node:").unwrap_or("");
            let d = self.node_graph(node).authorize(attrs);
            if d.is_allowed() {
                return d;
            }
        }
        rbac
    }

    /// 403 unless `attrs` is allowed.
    pub fn authorize(&self, attrs: &Attributes) -> Result<(), ApiError> {
        match self.decide(attrs) {
            Decision::Allow => Ok(()),
            Decision::Deny(reason) | Decision::NoOpinion(reason) => {
                let mut e = ApiError::forbidden(rk3s_auth::forbidden_message(attrs, &reason));
                if attrs.resource_request {
                    e.name = (!attrs.name.is_empty()).then(|| attrs.name.clone());
                    e.group = Some(attrs.api_group.clone());
                    e.kind = Some(attrs.resource.clone());
                }
                Err(e)
            }
        }
    }

    /// Applies `Impersonate-*` headers: checks the `impersonate` permission for the user,
    /// each group, uid and extra, and returns the impersonated user.
    pub fn impersonate(
        &self,
        user: UserInfo,
        headers: &http::HeaderMap,
    ) -> Result<UserInfo, ApiError> {
        let as_user = headers
            .get("impersonate-user")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let groups: Vec<String> = headers
            .get_all("impersonate-group")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(String::from)
            .collect();
        let uid = headers
            .get("impersonate-uid")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let extras: Vec<(String, String)> = headers
            .iter()
            .filter_map(|(k, v)| {
                k.as_str()
                    .strip_prefix("impersonate-extra-")
                    .map(|x| (x.to_string(), v.to_str().unwrap_or("").to_string()))
            })
            .collect();
        let Some(name) = as_user else {
            if !groups.is_empty() || uid.is_some() || !extras.is_empty() {
                return Err(ApiError::bad_request(
                    "requested Impersonate-Group/Uid/Extra without impersonating a user",
                ));
            }
            return Ok(user);
        };
        let check =
            |resource: &str, ns: &str, n: &str, group: &str, sub: &str| -> Result<(), ApiError> {
                let a =
                    Attributes::resource(user.clone(), "impersonate", ns, group, resource, sub, n);
                match self.decide(&a) {
                    Decision::Allow => Ok(()),
                    Decision::Deny(r) | Decision::NoOpinion(r) => {
                        Err(ApiError::forbidden(rk3s_auth::forbidden_message(&a, &r)))
                    }
                }
            };
        if let Some(sa) = name.strip_prefix("system:serviceaccount:") {
            let (ns, n) = sa.split_once(':').unwrap_or(("", sa));
            check("serviceaccounts", ns, n, "", "")?;
        } else {
            check("users", "", &name, "", "")?;
        }
        for g in &groups {
            check("groups", "", g, "", "")?;
        }
        if let Some(u) = &uid {
            check("uids", "", u, "authentication.k8s.io", "")?;
        }
        for (k, v) in &extras {
            check("userextras", "", v, "authentication.k8s.io", k)?;
        }
        let mut out = UserInfo::new(name.clone(), &[]);
        out.groups = groups;
        if let Some(sa) = name.strip_prefix("system:serviceaccount:") {
            let ns = sa.split_once(':').map(|x| x.0).unwrap_or("");
            for g in [
                "system:serviceaccounts".to_string(),
                format!("system:serviceaccounts:{ns}"),
            ] {
                if !out.groups.contains(&g) {
                    out.groups.push(g);
                }
            }
        }
        out.uid = uid.unwrap_or_default();
        for (k, v) in extras {
            out.extra.entry(k).or_default().push(v);
        }
        Ok(out.with_authenticated_group())
    }
}

/// The authorization attributes of a resource request.
pub fn resource_attributes(user: &UserInfo, info: &RequestInfo, query: &Query) -> Attributes {
    let mut name = info.name.clone().unwrap_or_default();
    let field_selector = query.get("fieldSelector").map(String::from);
    if name.is_empty() && matches!(info.verb.as_str(), "list" | "watch") {
        // A list/watch narrowed to one name by `metadata.name=` is authorized by name.
        if let Some(fs) = &field_selector {
            if let Some(n) = fs.split(',').find_map(|p| {
                p.strip_prefix("metadata.name=")
                    .or_else(|| p.strip_prefix("metadata.name=="))
            }) {
                name = n.to_string();
            }
        }
    }
    let mut a = Attributes::resource(
        user.clone(),
        &info.verb,
        info.namespace.as_deref().unwrap_or(""),
        &info.group,
        &info.resource,
        info.subresource.as_deref().unwrap_or(""),
        &name,
    );
    // Namespace objects are their own namespace for authorization (upstream quirk).
    if info.resource == "namespaces" && info.group.is_empty() && !name.is_empty() {
        a.namespace = name.clone();
    }
    a.api_version = info.version.clone();
    a.field_selector = field_selector;
    a
}

/// The authorization attributes of a non-resource request.
pub fn non_resource_attributes(user: &UserInfo, method: &http::Method, path: &str) -> Attributes {
    let verb = match *method {
        http::Method::GET | http::Method::HEAD => "get",
        http::Method::POST => "post",
        http::Method::PUT => "put",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "get",
    };
    Attributes::non_resource(user.clone(), verb, path)
}

fn user_from_spec(spec: &Value) -> UserInfo {
    let name = spec
        .get("user")
        .and_then(|u| u.as_str())
        .unwrap_or("")
        .to_string();
    let mut u = UserInfo::new(name, &[]);
    u.groups = spec
        .get("groups")
        .and_then(|g| g.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    u.uid = spec
        .get("uid")
        .and_then(|g| g.as_str())
        .unwrap_or("")
        .to_string();
    if let Some(extra) = spec.get("extra").and_then(|e| e.as_object()) {
        for (k, v) in extra {
            u.extra.insert(
                k.clone(),
                v.as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default(),
            );
        }
    }
    u
}

fn review_attributes(user: UserInfo, spec: &Value, namespace_override: Option<&str>) -> Attributes {
    if let Some(r) = spec.get("resourceAttributes") {
        let s = |k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let ns = namespace_override
            .map(String::from)
            .unwrap_or_else(|| s("namespace"));
        let mut a = Attributes::resource(
            user,
            &s("verb"),
            &ns,
            &s("group"),
            &s("resource"),
            &s("subresource"),
            &s("name"),
        );
        a.api_version = s("version");
        a
    } else {
        let r = spec
            .get("nonResourceAttributes")
            .cloned()
            .unwrap_or(json!({}));
        let s = |k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
        Attributes::non_resource(user, &s("verb"), &s("path"))
    }
}

/// Serves the create-only review resources of `authorization.k8s.io` and
/// `authentication.k8s.io`. `None` when the resource is not a review.
pub fn review(
    inner: &Inner,
    info: &RequestInfo,
    user: &UserInfo,
    body: &Value,
) -> Option<Result<Value, ApiError>> {
    let mut out = body.clone();
    let spec = body.get("spec").cloned().unwrap_or(json!({}));
    let status = match (info.group.as_str(), info.resource.as_str()) {
        ("authorization.k8s.io", "selfsubjectaccessreviews") => {
            decision_status(inner.decide(&review_attributes(user.clone(), &spec, None)))
        }
        ("authorization.k8s.io", "subjectaccessreviews") => {
            decision_status(inner.decide(&review_attributes(user_from_spec(&spec), &spec, None)))
        }
        ("authorization.k8s.io", "localsubjectaccessreviews") => {
            let ns = info.namespace.clone().unwrap_or_default();
            decision_status(inner.decide(&review_attributes(
                user_from_spec(&spec),
                &spec,
                Some(&ns),
            )))
        }
        ("authorization.k8s.io", "selfsubjectrulesreviews") => {
            let ns = spec.get("namespace").and_then(|n| n.as_str()).unwrap_or("");
            inner.rbac().rules_for(user, ns).to_status_json()
        }
        ("authentication.k8s.io", "selfsubjectreviews") => json!({"userInfo": user_json(user)}),
        ("authentication.k8s.io", "tokenreviews") => {
            let token = spec.get("token").and_then(|t| t.as_str()).unwrap_or("");
            match inner.authenticate_token(token) {
                Some(u) => {
                    json!({"authenticated": true, "user": user_json(&u), "audiences": inner.auth.token_auth.audiences})
                }
                None => json!({"authenticated": false, "error": "invalid bearer token"}),
            }
        }
        _ => return None,
    };
    if let Some(o) = out.as_object_mut() {
        o.insert("status".into(), status);
        let meta = o.entry("metadata").or_insert_with(|| json!({}));
        if let Some(m) = meta.as_object_mut() {
            m.insert("creationTimestamp".into(), Value::Null);
        }
    }
    Some(Ok(out))
}

fn user_json(u: &UserInfo) -> Value {
    let mut v = json!({"username": u.name, "groups": u.groups});
    if !u.uid.is_empty() {
        v["uid"] = json!(u.uid);
    }
    if !u.extra.is_empty() {
        v["extra"] = json!(u.extra);
    }
    v
}

fn decision_status(d: Decision) -> Value {
    match d {
        Decision::Allow => json!({"allowed": true}),
        Decision::Deny(r) => json!({"allowed": false, "denied": true, "reason": r}),
        Decision::NoOpinion(r) if r.is_empty() => json!({"allowed": false}),
        Decision::NoOpinion(r) => json!({"allowed": false, "reason": r}),
    }
}
