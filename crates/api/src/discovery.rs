//! Discovery documents built from the [`Registry`]:
//!
//! - `/api` → [`api_versions`] (`APIVersions`);
//! - `/apis` → [`api_group_list`] (`APIGroupList`);
//! - `/apis/<group>` → [`api_group`] (`APIGroup`);
//! - `/api/v1`, `/apis/<group>/<version>` → [`api_resource_list`] (`APIResourceList`);
//! - aggregated discovery (`Accept: application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`)
//!   → [`aggregated_api`] for `/api` and [`aggregated_apis`] for `/apis`, in the
//!   `apidiscovery.k8s.io/v2` (or `v2beta1`, same shape) `APIGroupDiscoveryList` form.
//!
//! Field order follows upstream's Go structs, so the JSON reads like upstream's.

use serde_json::{json, Map, Value};

use crate::{Registry, ResourceInfo, Scope};

/// The discovery group/version of aggregated discovery documents.
pub const AGGREGATED_GROUP: &str = "apidiscovery.k8s.io";

/// `/api`: `{"kind":"APIVersions","versions":["v1"],"serverAddressByClientCIDRs":[...]}`.
/// `server_address` is `host:port` as clients should reach the server.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    })
}

fn group_version_string(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

fn group_json(name: &str, versions: &[String], preferred: &str) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": group_version_string(name, v), "version": v}))
        .collect();
    json!({
        "name": name,
        "versions": vs,
        "preferredVersion": {"groupVersion": group_version_string(name, preferred), "version": preferred},
    })
}

/// `/apis`: every named group (the core group is served at `/api`), in upstream's order.
pub fn api_group_list(reg: &Registry) -> Value {
    let groups: Vec<Value> = reg
        .groups()
        .iter()
        .filter(|g| !g.name.is_empty())
        .map(|g| group_json(&g.name, &g.versions, &g.preferred_version))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`: one group's `APIGroup`, or `None` when the group is not served.
pub fn api_group(reg: &Registry, group: &str) -> Option<Value> {
    if group.is_empty() {
        return None;
    }
    let g = reg.groups().into_iter().find(|g| g.name == group)?;
    let body = group_json(&g.name, &g.versions, &g.preferred_version);
    let mut out = Map::new();
    out.insert("kind".into(), json!("APIGroup"));
    out.insert("apiVersion".into(), json!("v1"));
    if let Value::Object(m) = body {
        out.extend(m);
    }
    Some(Value::Object(out))
}

/// A stable `storageVersionHash`: base64 of the first 8 bytes of a 64-bit FNV-1a hash of
/// the storage group, version and kind (upstream hashes its storage version the same way
/// in spirit: an opaque value that changes when the storage version changes).
pub fn storage_version_hash(group: &str, version: &str, kind: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("{group}/{version}/{kind}").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    base64(&h.to_be_bytes())
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b0 = chunk[0];
        let b1 = chunk.get(1).copied().unwrap_or(0);
        let b2 = chunk.get(2).copied().unwrap_or(0);
        let n = (u32::from(b0) << 16) | (u32::from(b1) << 8) | u32::from(b2);
        out.push(ALPHABET[(n >> 18) as usize & 63] as char);
        out.push(ALPHABET[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            ALPHABET[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            ALPHABET[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// Whether a resource has storage (and so a `storageVersionHash`): virtual resources
/// such as reviews, `bindings` and `componentstatuses` have none.
fn has_storage(r: &ResourceInfo) -> bool {
    r.has_verb("watch")
}

fn resource_entry(r: &ResourceInfo) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), json!(r.plural));
    m.insert("singularName".into(), json!(r.singular));
    m.insert("namespaced".into(), json!(r.namespaced()));
    m.insert("kind".into(), json!(r.kind));
    m.insert("verbs".into(), json!(r.verbs));
    if !r.short_names.is_empty() {
        m.insert("shortNames".into(), json!(r.short_names));
    }
    if !r.categories.is_empty() {
        m.insert("categories".into(), json!(r.categories));
    }
    if has_storage(r) {
        let sg = &r.storage_group;
        m.insert(
            "storageVersionHash".into(),
            json!(storage_version_hash(sg, &r.version, &r.kind)),
        );
    }
    Value::Object(m)
}

fn subresource_entry(r: &ResourceInfo, s: &crate::Subresource) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), json!(format!("{}/{}", r.plural, s.name)));
    m.insert("singularName".into(), json!(""));
    m.insert("namespaced".into(), json!(r.namespaced()));
    if !s.group.is_empty() || !s.version.is_empty() {
        m.insert("group".into(), json!(s.group));
        m.insert("version".into(), json!(s.version));
    }
    m.insert("kind".into(), json!(s.kind));
    m.insert("verbs".into(), json!(s.verbs));
    Value::Object(m)
}

/// `/api/v1` or `/apis/<group>/<version>`: the `APIResourceList`, with subresources as
/// `pods/status` entries right after their resource. `None` when nothing is served there.
pub fn api_resource_list(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let rs = reg.resources_in(group, version);
    if rs.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for r in &rs {
        resources.push(resource_entry(r));
        for s in &r.subresources {
            resources.push(subresource_entry(r, s));
        }
    }
    let mut m = Map::new();
    m.insert("kind".into(), json!("APIResourceList"));
    // Upstream's /api/v1 answer has no apiVersion; the group answers do.
    if !group.is_empty() {
        m.insert("apiVersion".into(), json!("v1"));
    }
    m.insert(
        "groupVersion".into(),
        json!(group_version_string(group, version)),
    );
    m.insert("resources".into(), Value::Array(resources));
    Some(Value::Object(m))
}

fn scope_str(s: Scope) -> &'static str {
    match s {
        Scope::Namespaced => "Namespaced",
        Scope::Cluster => "Cluster",
    }
}

fn aggregated_resource(r: &ResourceInfo) -> Value {
    let mut m = Map::new();
    m.insert("resource".into(), json!(r.plural));
    // Upstream leaves group and version empty when the kind is the parent group/version's.
    m.insert(
        "responseKind".into(),
        json!({"group": "", "version": "", "kind": r.kind}),
    );
    m.insert("scope".into(), json!(scope_str(r.scope)));
    m.insert("singularResource".into(), json!(r.singular));
    m.insert("verbs".into(), json!(r.verbs));
    if !r.short_names.is_empty() {
        m.insert("shortNames".into(), json!(r.short_names));
    }
    if !r.categories.is_empty() {
        m.insert("categories".into(), json!(r.categories));
    }
    if !r.subresources.is_empty() {
        let subs: Vec<Value> = r
            .subresources
            .iter()
            .map(|s| {
                json!({
                    "subresource": s.name,
                    "responseKind": {"group": s.group, "version": s.version, "kind": s.kind},
                    "verbs": s.verbs,
                })
            })
            .collect();
        m.insert("subresources".into(), Value::Array(subs));
    }
    Value::Object(m)
}

fn aggregated_group(reg: &Registry, name: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| {
            let resources: Vec<Value> = reg
                .resources_in(name, v)
                .iter()
                .map(|r| aggregated_resource(r))
                .collect();
            json!({"version": v, "resources": resources, "freshness": "Current"})
        })
        .collect();
    let metadata = if name.is_empty() {
        json!({"creationTimestamp": null})
    } else {
        json!({"name": name, "creationTimestamp": null})
    };
    json!({"metadata": metadata, "versions": vs})
}

fn aggregated_list(items: Vec<Value>, discovery_version: &str) -> Value {
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("{AGGREGATED_GROUP}/{discovery_version}"),
        "metadata": {},
        "items": items,
    })
}

/// Aggregated discovery for `/api` (the core group alone). `discovery_version` is `v2`
/// or `v2beta1` (the same shape; kubectl 1.26-1.27 ask for `v2beta1`).
pub fn aggregated_api(reg: &Registry, discovery_version: &str) -> Value {
    let items: Vec<Value> = reg
        .groups()
        .iter()
        .filter(|g| g.name.is_empty())
        .map(|g| aggregated_group(reg, "", &g.versions))
        .collect();
    aggregated_list(items, discovery_version)
}

/// Aggregated discovery for `/apis`: every named group in upstream's order, each with
/// its versions preferred first.
pub fn aggregated_apis(reg: &Registry, discovery_version: &str) -> Value {
    let items: Vec<Value> = reg
        .groups()
        .iter()
        .filter(|g| !g.name.is_empty())
        .map(|g| aggregated_group(reg, &g.name, &g.versions))
        .collect();
    aggregated_list(items, discovery_version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg() -> Registry {
        Registry::builtin()
    }

    fn reparse(v: &Value) -> Value {
        let text = v.to_string();
        match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => panic!("not json: {e}"),
        }
    }

    #[test]
    fn api_versions_shape() {
        let v = reparse(&api_versions("10.0.0.1:6443"));
        assert_eq!(v["kind"], "APIVersions");
        assert_eq!(v["versions"], json!(["v1"]));
        assert_eq!(
            v["serverAddressByClientCIDRs"][0]["clientCIDR"],
            "0.0.0.0/0"
        );
        assert_eq!(
            v["serverAddressByClientCIDRs"][0]["serverAddress"],
            "10.0.0.1:6443"
        );
        assert!(v.get("apiVersion").is_none());
    }

    #[test]
    fn group_list_and_group() {
        let v = reparse(&api_group_list(&reg()));
        assert_eq!(v["kind"], "APIGroupList");
        assert_eq!(v["apiVersion"], "v1");
        let groups = v["groups"].as_array().cloned().unwrap_or_default();
        assert_eq!(groups.len(), 19);
        assert_eq!(groups[0]["name"], "apiregistration.k8s.io");
        assert_eq!(groups[1]["name"], "apps");
        let autoscaling = groups
            .iter()
            .find(|g| g["name"] == "autoscaling")
            .cloned()
            .unwrap_or_default();
        assert_eq!(autoscaling["versions"][0]["groupVersion"], "autoscaling/v2");
        assert_eq!(autoscaling["versions"][1]["version"], "v1");
        assert_eq!(
            autoscaling["preferredVersion"],
            json!({"groupVersion": "autoscaling/v2", "version": "v2"})
        );

        let g = api_group(&reg(), "apps")
            .map(|g| reparse(&g))
            .unwrap_or_default();
        assert_eq!(g["kind"], "APIGroup");
        assert_eq!(g["name"], "apps");
        assert_eq!(
            g["versions"],
            json!([{"groupVersion": "apps/v1", "version": "v1"}])
        );
        assert!(api_group(&reg(), "nosuch.example.com").is_none());
        assert!(api_group(&reg(), "").is_none());
    }

    #[test]
    fn core_resource_list() {
        let v = api_resource_list(&reg(), "", "v1")
            .map(|v| reparse(&v))
            .unwrap_or_default();
        assert_eq!(v["kind"], "APIResourceList");
        assert_eq!(v["groupVersion"], "v1");
        assert!(v.get("apiVersion").is_none());
        let res = v["resources"].as_array().cloned().unwrap_or_default();
        let names: Vec<&str> = res.iter().filter_map(|r| r["name"].as_str()).collect();
        let pods_at = names
            .iter()
            .position(|n| *n == "pods")
            .unwrap_or(usize::MAX);
        assert_eq!(names.get(pods_at + 1), Some(&"pods/attach"));
        assert!(names.contains(&"pods/log"));
        assert!(names.contains(&"namespaces/finalize"));
        let pods = &res[pods_at];
        assert_eq!(pods["singularName"], "pod");
        assert_eq!(pods["namespaced"], true);
        assert_eq!(pods["kind"], "Pod");
        assert_eq!(pods["shortNames"], json!(["po"]));
        assert_eq!(pods["categories"], json!(["all"]));
        let hash = pods["storageVersionHash"].as_str().unwrap_or_default();
        assert_eq!(hash.len(), 12);
        assert!(hash.ends_with('='));
        let eviction = res
            .iter()
            .find(|r| r["name"] == "pods/eviction")
            .cloned()
            .unwrap_or_default();
        assert_eq!(eviction["group"], "policy");
        assert_eq!(eviction["version"], "v1");
        assert_eq!(eviction["kind"], "Eviction");
        assert_eq!(eviction["singularName"], "");
        assert!(eviction.get("storageVersionHash").is_none());
        let binding = res
            .iter()
            .find(|r| r["name"] == "bindings")
            .cloned()
            .unwrap_or_default();
        assert!(binding.get("storageVersionHash").is_none());
        let status = res
            .iter()
            .find(|r| r["name"] == "pods/status")
            .cloned()
            .unwrap_or_default();
        assert!(status.get("group").is_none());
    }

    #[test]
    fn group_resource_list() {
        let v = api_resource_list(&reg(), "apps", "v1")
            .map(|v| reparse(&v))
            .unwrap_or_default();
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["groupVersion"], "apps/v1");
        let res = v["resources"].as_array().cloned().unwrap_or_default();
        let scale = res
            .iter()
            .find(|r| r["name"] == "deployments/scale")
            .cloned()
            .unwrap_or_default();
        assert_eq!(scale["group"], "autoscaling");
        assert_eq!(scale["kind"], "Scale");
        assert_eq!(scale["verbs"], json!(["get", "patch", "update"]));
        assert!(api_resource_list(&reg(), "apps", "v1beta1").is_none());
    }

    #[test]
    fn storage_hash_is_stable_and_distinct() {
        assert_eq!(
            storage_version_hash("", "v1", "Pod"),
            storage_version_hash("", "v1", "Pod")
        );
        assert_ne!(
            storage_version_hash("", "v1", "Pod"),
            storage_version_hash("", "v1", "Node")
        );
        assert_eq!(base64(b"Man"), "TWFu");
        assert_eq!(base64(b"Ma"), "TWE=");
        assert_eq!(base64(b"M"), "TQ==");
    }

    #[test]
    fn aggregated_shapes() {
        let v = reparse(&aggregated_apis(&reg(), "v2"));
        assert_eq!(v["kind"], "APIGroupDiscoveryList");
        assert_eq!(v["apiVersion"], "apidiscovery.k8s.io/v2");
        let items = v["items"].as_array().cloned().unwrap_or_default();
        assert_eq!(items[0]["metadata"]["name"], "apiregistration.k8s.io");
        let apps = items
            .iter()
            .find(|i| i["metadata"]["name"] == "apps")
            .cloned()
            .unwrap_or_default();
        assert_eq!(apps["versions"][0]["version"], "v1");
        assert_eq!(apps["versions"][0]["freshness"], "Current");
        let deploy = apps["versions"][0]["resources"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["resource"] == "deployments").cloned())
            .unwrap_or_default();
        assert_eq!(
            deploy["responseKind"],
            json!({"group": "", "version": "", "kind": "Deployment"})
        );
        assert_eq!(deploy["scope"], "Namespaced");
        assert_eq!(deploy["singularResource"], "deployment");
        assert_eq!(deploy["shortNames"], json!(["deploy"]));
        assert_eq!(deploy["categories"], json!(["all"]));
        assert_eq!(deploy["subresources"][0]["subresource"], "scale");
        assert_eq!(
            deploy["subresources"][0]["responseKind"],
            json!({"group": "autoscaling", "version": "v1", "kind": "Scale"})
        );
        let autoscaling = items
            .iter()
            .find(|i| i["metadata"]["name"] == "autoscaling")
            .cloned()
            .unwrap_or_default();
        assert_eq!(autoscaling["versions"][0]["version"], "v2");
        assert_eq!(autoscaling["versions"][1]["version"], "v1");

        let core = reparse(&aggregated_api(&reg(), "v2beta1"));
        assert_eq!(core["apiVersion"], "apidiscovery.k8s.io/v2beta1");
        let items = core["items"].as_array().cloned().unwrap_or_default();
        assert_eq!(items.len(), 1);
        assert!(items[0]["metadata"].get("name").is_none());
        let nodes = items[0]["versions"][0]["resources"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["resource"] == "nodes").cloned())
            .unwrap_or_default();
        assert_eq!(nodes["scope"], "Cluster");
        let secrets = items[0]["versions"][0]["resources"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["resource"] == "secrets").cloned())
            .unwrap_or_default();
        assert!(secrets.get("subresources").is_none());
        assert!(secrets.get("shortNames").is_none());
    }
}
