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
        let g = if self.storage_group.is_empty() { "core" } else { &self.storage_group };
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

/// The set of served resources. Cheap to clone; resources can be added at run time.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<RwLock<BTreeMap<(String, String, String), Arc<ResourceInfo>>>>,
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
        let key = (info.group.clone(), info.version.clone(), info.plural.clone());
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
        m.get(&(group.to_string(), version.to_string(), plural.to_string())).cloned()
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
}

pub mod builtin;
