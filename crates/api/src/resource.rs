//! Resource descriptions and the registry of served resources.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// Whether objects of a resource live in a namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// `/api/v1/namespaces/{ns}/pods/{name}`.
    Namespaced,
    /// `/api/v1/nodes/{name}`.
    Cluster,
}

/// A subresource such as `status` or `scale`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subresource {
    /// `status`, `scale`, `log`, `exec`, `binding`, `eviction`, `token`, ...
    pub name: String,
    /// The kind the subresource speaks, e.g. `Scale` in group `autoscaling` for `scale`.
    pub kind: String,
    /// The group of `kind` ("" when it is the parent's group).
    pub group: String,
    /// The version of `kind` ("" when it is the parent's version).
    pub version: String,
    /// Verbs, e.g. `["get", "patch", "update"]`.
    pub verbs: Vec<String>,
}

/// Everything the server needs to know about one resource at one group/version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceInfo {
    /// API group; "" for the core group.
    pub group: String,
    /// Version, e.g. `v1`.
    pub version: String,
    /// Kind, e.g. `Deployment`.
    pub kind: String,
    /// Plural resource name used in paths, e.g. `deployments`.
    pub plural: String,
    /// Singular name, e.g. `deployment`.
    pub singular: String,
    /// Short names, e.g. `["deploy"]`.
    pub short_names: Vec<String>,
    /// Categories, e.g. `["all"]`.
    pub categories: Vec<String>,
    /// Namespaced or cluster-scoped.
    pub scope: Scope,
    /// Verbs on the resource itself, in upstream's order
    /// (`create, delete, deletecollection, get, list, patch, update, watch`).
    pub verbs: Vec<String>,
    /// Subresources.
    pub subresources: Vec<Subresource>,
    /// The OpenAPI definition name of the kind, e.g. `io.k8s.api.apps.v1.Deployment`
    /// (empty for CRDs, whose schema comes from the CRD).
    pub definition: String,
    /// The group whose storage holds the objects (usually `group`; upstream stores some
    /// resources once for several groups, e.g. `events` in "" and `events.k8s.io`).
    pub storage_group: String,
    /// This version is the group's preferred version.
    pub preferred: bool,
}

impl ResourceInfo {
    /// `group/version`, or `version` alone for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural.group` (or `plural` for the core group), as used in messages:
    /// `deployments.apps "web" not found`.
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Whether objects live in namespaces.
    pub fn namespaced(&self) -> bool {
        self.scope == Scope::Namespaced
    }

    /// Whether the resource has the named subresource.
    pub fn subresource(&self, name: &str) -> Option<&Subresource> {
        self.subresources.iter().find(|s| s.name == name)
    }

    /// Whether the verb is allowed on the resource itself.
    pub fn has_verb(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == verb)
    }

    /// The store key prefix holding every object of this resource:
    /// `/registry/<storage group or "core">/<plural>/`.
    pub fn key_prefix(&self) -> String {
        let g = if self.storage_group.is_empty() {
            "core"
        } else {
            &self.storage_group
        };
        format!("/registry/{}/{}/", g, self.plural)
    }

    /// The store key of one object (`namespace` is ignored for cluster-scoped resources).
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match (self.scope, namespace) {
            (Scope::Namespaced, Some(ns)) => format!("{}{}/{}", self.key_prefix(), ns, name),
            _ => format!("{}{}", self.key_prefix(), name),
        }
    }

    /// The key prefix of one namespace's objects (or all objects for cluster scope).
    pub fn namespace_prefix(&self, namespace: Option<&str>) -> String {
        match (self.scope, namespace) {
            (Scope::Namespaced, Some(ns)) => format!("{}{}/", self.key_prefix(), ns),
            _ => self.key_prefix(),
        }
    }
}

/// Resources keyed by (group, version, plural).
type ResourceMap = BTreeMap<(String, String, String), Arc<ResourceInfo>>;

/// The set of served resources. Cheap to clone; resources can be added at run time.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<RwLock<ResourceMap>>,
}

impl Registry {
    /// A registry holding every built-in resource of Kubernetes 1.33.
    pub fn builtin() -> Self {
        let r = Registry::default();
        for info in crate::resource::builtin::resources() {
            r.add(info);
        }
        r
    }

    /// Adds (or replaces) a resource.
    pub fn add(&self, info: ResourceInfo) {
        let key = (
            info.group.clone(),
            info.version.clone(),
            info.plural.clone(),
        );
        if let Ok(mut m) = self.inner.write() {
            m.insert(key, Arc::new(info));
        }
    }

    /// Removes a resource.
    pub fn remove(&self, group: &str, version: &str, plural: &str) {
        if let Ok(mut m) = self.inner.write() {
            m.remove(&(group.to_string(), version.to_string(), plural.to_string()));
        }
    }

    /// Looks up a resource by group, version and plural name.
    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceInfo>> {
        let m = self.inner.read().ok()?;
        m.get(&(group.to_string(), version.to_string(), plural.to_string()))
            .cloned()
    }

    /// Looks up a resource by group, version and kind.
    pub fn by_kind(&self, group: &str, version: &str, kind: &str) -> Option<Arc<ResourceInfo>> {
        let m = self.inner.read().ok()?;
        m.values()
            .find(|r| r.group == group && r.version == version && r.kind == kind)
            .cloned()
    }

    /// Every resource, ordered by group, version, plural.
    pub fn all(&self) -> Vec<Arc<ResourceInfo>> {
        match self.inner.read() {
            Ok(m) => m.values().cloned().collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Every resource of one group/version, ordered by plural (upstream's discovery order).
    pub fn resources_in(&self, group: &str, version: &str) -> Vec<Arc<ResourceInfo>> {
        match self.inner.read() {
            Ok(m) => m
                .range((group.to_string(), version.to_string(), String::new())..)
                .take_while(|((g, v, _), _)| g == group && v == version)
                .map(|(_, r)| r.clone())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Resolves a resource name as kubectl types it: a plural (`deployments`), a singular
    /// (`deployment`), a short name (`deploy`), or any of these qualified with a group
    /// (`deployments.apps`), case-insensitively. `group_hint` restricts the group.
    /// Among several matches the core group wins, then the group with the highest
    /// priority; within a group the preferred version.
    pub fn by_resource_name(
        &self,
        group_hint: Option<&str>,
        name: &str,
    ) -> Option<Arc<ResourceInfo>> {
        let lname = name.to_ascii_lowercase();
        let all = self.all();
        let groups = self.groups();
        let mut candidates: Vec<(String, String)> = vec![(lname.clone(), String::new())];
        if group_hint.is_none() {
            if let Some((res, grp)) = lname.split_once('.') {
                candidates.push((res.to_string(), grp.to_string()));
            }
        }
        for (res, qualified_group) in candidates {
            let group_ok = |r: &ResourceInfo| match group_hint {
                Some(g) => r.group == g,
                None => qualified_group.is_empty() || r.group == qualified_group,
            };
            let name_ok = |r: &ResourceInfo| {
                r.plural == res
                    || r.singular == res
                    || r.short_names.iter().any(|s| s.eq_ignore_ascii_case(&res))
                    || (r.singular.is_empty() && r.kind.eq_ignore_ascii_case(&res))
            };
            let mut found: Vec<&Arc<ResourceInfo>> =
                all.iter().filter(|r| group_ok(r) && name_ok(r)).collect();
            if found.is_empty() {
                continue;
            }
            // Exact plural matches beat singular/short-name matches.
            if found.iter().any(|r| r.plural == res) {
                found.retain(|r| r.plural == res);
            }
            let rank = |r: &ResourceInfo| -> (usize, usize) {
                let gi = groups
                    .iter()
                    .position(|g| g.name == r.group)
                    .unwrap_or(usize::MAX);
                let vi = groups
                    .get(gi)
                    .and_then(|g| g.versions.iter().position(|v| *v == r.version))
                    .unwrap_or(usize::MAX);
                (gi, vi)
            };
            found.sort_by_key(|r| rank(r));
            return found.first().map(|r| (*r).clone());
        }
        None
    }

    /// The served groups with their versions, in upstream's discovery order: the core
    /// group first, then groups by priority (as `/apis` lists them), then other groups
    /// (CRDs) by name. Versions are ordered preferred first, then by Kubernetes
    /// version priority (GA > beta > alpha, higher numbers first).
    pub fn groups(&self) -> Vec<GroupVersions> {
        let mut by_group: BTreeMap<String, (Vec<String>, Option<String>)> = BTreeMap::new();
        for r in self.all() {
            let e = by_group.entry(r.group.clone()).or_default();
            if !e.0.contains(&r.version) {
                e.0.push(r.version.clone());
            }
            if r.preferred && e.1.is_none() {
                e.1 = Some(r.version.clone());
            }
        }
        let mut out: Vec<GroupVersions> = by_group
            .into_iter()
            .map(|(name, (mut versions, pref))| {
                versions.sort_by(|a, b| compare_kube_versions(a, b));
                let preferred = match pref {
                    Some(p) => p,
                    None => versions.first().cloned().unwrap_or_default(),
                };
                if let Some(i) = versions.iter().position(|v| *v == preferred) {
                    let p = versions.remove(i);
                    versions.insert(0, p);
                }
                GroupVersions {
                    name,
                    versions,
                    preferred_version: preferred,
                }
            })
            .collect();
        out.sort_by_key(|g| group_order_key(&g.name));
        out
    }
}

/// A served API group and its versions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupVersions {
    /// Group name ("" for the core group).
    pub name: String,
    /// Served versions, preferred first.
    pub versions: Vec<String>,
    /// The preferred version.
    pub preferred_version: String,
}

/// Sort key of a group in discovery: core, then the built-in priority table (in its
/// order), then everything else by name. Upstream gives CRD groups priority 1000, below
/// every built-in group, and breaks ties by name.
fn group_order_key(group: &str) -> (u8, usize, String) {
    if group.is_empty() {
        return (0, 0, String::new());
    }
    match builtin::GROUP_PRIORITY
        .iter()
        .position(|(g, _)| *g == group)
    {
        Some(i) => (1, i, String::new()),
        None => (2, 0, group.to_string()),
    }
}

/// Upstream's "kube-aware" version ordering: versions like `v1`, `v2beta1`, `v1alpha2`
/// sort GA before beta before alpha, higher major first, then higher minor first;
/// other strings sort after them, alphabetically.
pub fn compare_kube_versions(a: &str, b: &str) -> std::cmp::Ordering {
    fn parse(v: &str) -> Option<(u8, u64, u64)> {
        let rest = v.strip_prefix('v')?;
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        if digits.is_empty() || digits.starts_with('0') {
            return None;
        }
        let major: u64 = digits.parse().ok()?;
        let tail = &rest[digits.len()..];
        if tail.is_empty() {
            return Some((0, major, 0));
        }
        let (kind, num) = if let Some(n) = tail.strip_prefix("beta") {
            (1, n)
        } else if let Some(n) = tail.strip_prefix("alpha") {
            (2, n)
        } else {
            return None;
        };
        if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit()) || num.starts_with('0') {
            return None;
        }
        Some((kind, major, num.parse().ok()?))
    }
    use std::cmp::Ordering;
    match (parse(a), parse(b)) {
        (Some((ka, ma, na)), Some((kb, mb, nb))) => ka.cmp(&kb).then(mb.cmp(&ma)).then(nb.cmp(&na)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

pub mod builtin;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_registry_lookups() {
        let r = Registry::builtin();
        let pods = r.get("", "v1", "pods").map(|p| p.kind.clone());
        assert_eq!(pods.as_deref(), Some("Pod"));
        assert_eq!(
            r.by_kind("apps", "v1", "Deployment")
                .map(|d| d.plural.clone())
                .as_deref(),
            Some("deployments")
        );
        assert_eq!(r.resources_in("apps", "v1").len(), 5);
        assert_eq!(
            r.resources_in("", "v1")
                .first()
                .map(|x| x.plural.clone())
                .as_deref(),
            Some("bindings")
        );
    }

    #[test]
    fn resolves_names_like_kubectl() {
        let r = Registry::builtin();
        let get = |hint: Option<&str>, n: &str| {
            r.by_resource_name(hint, n)
                .map(|x| (x.group.clone(), x.version.clone(), x.plural.clone()))
        };
        assert_eq!(
            get(None, "po"),
            Some(("".into(), "v1".into(), "pods".into()))
        );
        assert_eq!(
            get(None, "Pod"),
            Some(("".into(), "v1".into(), "pods".into()))
        );
        assert_eq!(
            get(None, "deploy"),
            Some(("apps".into(), "v1".into(), "deployments".into()))
        );
        assert_eq!(
            get(None, "deployments.apps"),
            Some(("apps".into(), "v1".into(), "deployments".into()))
        );
        assert_eq!(
            get(None, "hpa"),
            Some((
                "autoscaling".into(),
                "v2".into(),
                "horizontalpodautoscalers".into()
            ))
        );
        assert_eq!(
            get(None, "crds"),
            Some((
                "apiextensions.k8s.io".into(),
                "v1".into(),
                "customresourcedefinitions".into()
            ))
        );
        // events: core wins without a hint, the hint picks events.k8s.io
        assert_eq!(get(None, "ev").map(|x| x.0), Some("".into()));
        assert_eq!(
            get(Some("events.k8s.io"), "events").map(|x| x.0),
            Some("events.k8s.io".into())
        );
        assert_eq!(get(None, "nosuch"), None);
        assert_eq!(get(Some("apps"), "pods"), None);
    }

    #[test]
    fn groups_in_upstream_order() {
        let r = Registry::builtin();
        let groups = r.groups();
        let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "",
                "apiregistration.k8s.io",
                "apps",
                "events.k8s.io",
                "authentication.k8s.io",
                "authorization.k8s.io",
                "autoscaling",
                "batch",
                "certificates.k8s.io",
                "networking.k8s.io",
                "policy",
                "rbac.authorization.k8s.io",
                "storage.k8s.io",
                "admissionregistration.k8s.io",
                "apiextensions.k8s.io",
                "scheduling.k8s.io",
                "coordination.k8s.io",
                "node.k8s.io",
                "discovery.k8s.io",
                "flowcontrol.apiserver.k8s.io",
            ]
        );
        let autoscaling = groups
            .iter()
            .find(|g| g.name == "autoscaling")
            .map(|g| (g.versions.clone(), g.preferred_version.clone()));
        assert_eq!(
            autoscaling,
            Some((vec!["v2".to_string(), "v1".to_string()], "v2".to_string()))
        );
    }

    #[test]
    fn crd_groups_come_last_by_name() {
        let r = Registry::builtin();
        let mut info = (*r.get("", "v1", "configmaps").expect("cm")).clone();
        for (g, v) in [
            ("zeta.example.com", "v1"),
            ("alpha.example.com", "v1beta1"),
            ("alpha.example.com", "v1"),
        ] {
            info.group = g.into();
            info.version = v.into();
            info.plural = "widgets".into();
            info.preferred = false;
            r.add(info.clone());
        }
        let groups = r.groups();
        let n = groups.len();
        assert_eq!(groups[n - 2].name, "alpha.example.com");
        assert_eq!(groups[n - 2].versions, vec!["v1", "v1beta1"]);
        assert_eq!(groups[n - 2].preferred_version, "v1");
        assert_eq!(groups[n - 1].name, "zeta.example.com");
    }

    #[test]
    fn kube_version_order() {
        let mut v = vec![
            "foo1",
            "v1alpha1",
            "v1",
            "v2beta1",
            "v10",
            "v11alpha2",
            "v2",
            "foo10",
            "v1beta2",
            "v10beta3",
        ];
        v.sort_by(|a, b| compare_kube_versions(a, b));
        assert_eq!(
            v,
            vec![
                "v10",
                "v2",
                "v1",
                "v10beta3",
                "v2beta1",
                "v1beta2",
                "v11alpha2",
                "v1alpha1",
                "foo1",
                "foo10"
            ]
        );
    }

    #[test]
    fn keys() {
        let r = Registry::builtin();
        let d = r.get("apps", "v1", "deployments").expect("deployments");
        assert_eq!(
            d.key(Some("default"), "web"),
            "/registry/apps/deployments/default/web"
        );
        let n = r.get("", "v1", "nodes").expect("nodes");
        assert_eq!(n.key(Some("x"), "n1"), "/registry/core/nodes/n1");
    }
}
