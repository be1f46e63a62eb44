//! Turning a request path and method into what it asks for (upstream's RequestInfo).

use std::collections::HashMap;

/// What a request to a resource path asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestInfo {
    /// `/api` or `/apis` path (not a non-resource URL).
    pub is_resource_request: bool,
    /// API group ("" for core).
    pub group: String,
    /// API version.
    pub version: String,
    /// Namespace from the path, if any.
    pub namespace: Option<String>,
    /// Resource (plural).
    pub resource: String,
    /// Object name, if any.
    pub name: Option<String>,
    /// Subresource, if any (`status`, `scale`, `log`, ...).
    pub subresource: Option<String>,
    /// Kubernetes verb: get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: String,
    /// Path segments after the subresource (for proxy).
    pub rest: Vec<String>,
}

/// Query parameters (last value wins, as Go's `url.Values.Get` takes the first; we keep the first).
#[derive(Clone, Debug, Default)]
pub struct Query(HashMap<String, String>);

impl Query {
    /// Parses a raw query string.
    pub fn parse(q: Option<&str>) -> Query {
        let mut m = HashMap::new();
        if let Some(q) = q {
            for (k, v) in form_urlencoded::parse(q.as_bytes()) {
                m.entry(k.into_owned()).or_insert_with(|| v.into_owned());
            }
        }
        Query(m)
    }

    /// The value of a parameter (empty values count as absent).
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(|s| s.as_str()).filter(|s| !s.is_empty())
    }

    /// A boolean parameter (`true`/`1`).
    pub fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true") | Some("1") | Some("True"))
    }
}

/// Parses a resource path. Returns `None` for non-resource paths (`/api`, `/apis/apps`,
/// `/version`, ...): those are served by discovery and friends.
pub fn parse(method: &http::Method, path: &str, query: &Query) -> Option<RequestInfo> {
    let parts: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let mut i;
    let mut info = RequestInfo {
        is_resource_request: true,
        ..Default::default()
    };
    match parts.first() {
        Some(&"api") => {
            if parts.len() < 3 {
                return None;
            }
            info.version = parts[1].to_string();
            i = 2;
        }
        Some(&"apis") => {
            if parts.len() < 4 {
                return None;
            }
            info.group = parts[1].to_string();
            info.version = parts[2].to_string();
            i = 3;
        }
        _ => return None,
    }
    let mut watch_path = false;
    if parts.get(i) == Some(&"watch") {
        watch_path = true;
        i += 1;
    }
    let rest: Vec<String> = parts[i..].iter().map(|s| s.to_string()).collect();
    // namespaces/{ns}/{resource}... ; but `namespaces/{name}` and `namespaces/{name}/{sub}`
    // address the Namespace object itself.
    let seg: Vec<String>;
    if rest.first().map(|s| s.as_str()) == Some("namespaces")
        && rest.len() >= 3
        && !matches!(rest[2].as_str(), "status" | "finalize")
    {
        info.namespace = Some(rest[1].clone());
        seg = rest[2..].to_vec();
    } else {
        seg = rest;
    }
    if seg.is_empty() {
        return None;
    }
    info.resource = seg[0].clone();
    if let Some(n) = seg.get(1) {
        info.name = Some(n.clone());
    }
    if let Some(s) = seg.get(2) {
        info.subresource = Some(s.clone());
    }
    if seg.len() > 3 {
        info.rest = seg[3..].to_vec();
    }
    let is_watch = watch_path || query.flag("watch");
    info.verb = match *method {
        http::Method::GET | http::Method::HEAD => {
            if is_watch {
                "watch"
            } else if info.name.is_some() {
                "get"
            } else {
                "list"
            }
        }
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => {
            if info.name.is_some() {
                "delete"
            } else {
                "deletecollection"
            }
        }
        _ => "unknown",
    }
    .to_string();
    Some(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(m: http::Method, path: &str, q: &str) -> RequestInfo {
        parse(&m, path, &Query::parse(Some(q))).expect("resource path")
    }

    #[test]
    fn core_namespaced_get() {
        let i = p(http::Method::GET, "/api/v1/namespaces/default/pods/web", "");
        assert_eq!(i.group, "");
        assert_eq!(i.version, "v1");
        assert_eq!(i.namespace.as_deref(), Some("default"));
        assert_eq!(i.resource, "pods");
        assert_eq!(i.name.as_deref(), Some("web"));
        assert_eq!(i.verb, "get");
    }

    #[test]
    fn namespace_object_and_status() {
        let i = p(http::Method::GET, "/api/v1/namespaces/kube-system", "");
        assert_eq!(i.resource, "namespaces");
        assert_eq!(i.name.as_deref(), Some("kube-system"));
        assert_eq!(i.namespace, None);
        let i = p(http::Method::PUT, "/api/v1/namespaces/x/status", "");
        assert_eq!(i.resource, "namespaces");
        assert_eq!(i.subresource.as_deref(), Some("status"));
        assert_eq!(i.verb, "update");
    }

    #[test]
    fn group_list_watch_and_subresource() {
        let i = p(http::Method::GET, "/apis/apps/v1/deployments", "watch=true");
        assert_eq!((i.group.as_str(), i.verb.as_str()), ("apps", "watch"));
        let i = p(
            http::Method::GET,
            "/apis/apps/v1/watch/namespaces/a/deployments",
            "",
        );
        assert_eq!(i.verb, "watch");
        assert_eq!(i.namespace.as_deref(), Some("a"));
        let i = p(
            http::Method::PATCH,
            "/apis/apps/v1/namespaces/a/deployments/w/scale",
            "",
        );
        assert_eq!(i.subresource.as_deref(), Some("scale"));
        assert_eq!(i.verb, "patch");
        let i = p(http::Method::DELETE, "/api/v1/namespaces/a/configmaps", "");
        assert_eq!(i.verb, "deletecollection");
    }

    #[test]
    fn non_resource_paths() {
        let q = Query::default();
        assert!(parse(&http::Method::GET, "/api", &q).is_none());
        assert!(parse(&http::Method::GET, "/api/v1", &q).is_none());
        assert!(parse(&http::Method::GET, "/apis/apps/v1", &q).is_none());
        assert!(parse(&http::Method::GET, "/version", &q).is_none());
    }
}
