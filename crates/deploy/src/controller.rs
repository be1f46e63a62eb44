//! The deploy controller: applies the manifests folder and keeps it applied.
//!
//! At start every file is applied; afterwards a file is applied again when its content
//! changes (inotify events, debounced; a full rescan every [`DeployOptions::resync`]
//! also retries files that failed, as k3s's 15 s loop). Applying a file: parse all of
//! it (a parse error or an unknown kind applies nothing: a Warning Event on the Addon
//! and an error log with file, line and reason), create its Addon, apply every object
//! with server-side apply (field manager `deploy`, forced; namespaced objects without a
//! namespace go to `default`, as k3s's apply; CRDs and Namespaces first), delete the
//! objects the previous content had and this one has not, then record checksum and
//! objects in the Addon. A deleted file leaves its objects and Addon (as k3s). A
//! disabled add-on's objects, file and Addon are deleted.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::{ApiCapabilities, Scope};
use serde_json::{json, Value};

use crate::addon::{self, AddonSpec, AddonStatus, AppliedRef};
use crate::files::{self, Disabled, FileAction};
use crate::parse::{self, ManifestObject};
use crate::DeployError;

/// Field manager of every apply (k3s's controller name).
pub const FIELD_MANAGER: &str = "deploy";
/// Annotation naming the kind of the Addon that applied an object (wrangler's).
pub const OWNER_GVK: &str = "objectset.rio.cattle.io/owner-gvk";
/// Annotation naming the Addon that applied an object.
pub const OWNER_NAME: &str = "objectset.rio.cattle.io/owner-name";
/// Annotation naming the namespace of that Addon.
pub const OWNER_NAMESPACE: &str = "objectset.rio.cattle.io/owner-namespace";

/// Options of [`run`].
#[derive(Clone, Debug)]
pub struct DeployOptions {
    /// The manifests folder (`<data-dir>/server/manifests`).
    pub dir: PathBuf,
    /// Disabled add-ons (`--disable`).
    pub disabled: Disabled,
    /// How long file events are gathered before applying (100 ms).
    pub debounce: Duration,
    /// Full rescan period, also retrying failed files (15 s, as k3s).
    pub resync: Duration,
}

impl DeployOptions {
    /// Options for the manifests folder of `data_dir` (see [`manifests_dir`]).
    pub fn new(data_dir: &Path, disabled: Disabled) -> Self {
        DeployOptions {
            dir: manifests_dir(data_dir),
            disabled,
            debounce: Duration::from_millis(100),
            resync: Duration::from_secs(15),
        }
    }
}

/// `<data_dir>/server/manifests`, k3s's auto-deploy folder.
pub fn manifests_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("server").join("manifests")
}

/// Runs the deploy controller until an unrecoverable error (the folder cannot be
/// created or watched); the Addon CRD is retried until the API serves it. k3s runs it on every server, each
/// applying its own folder (applies are idempotent); running it on the leader only
/// works too.
pub async fn run(client: kube::Client, opts: DeployOptions) -> Result<(), DeployError> {
    // the API may still be starting: retry the CRD until it is served
    let mut delay = Duration::from_millis(200);
    while let Err(e) = ensure_crd(&client).await {
        tracing::warn!(error = %e, "deploy: Addon CRD not ready; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
    std::fs::create_dir_all(&opts.dir).map_err(|e| DeployError::Io {
        path: opts.dir.clone(),
        source: e,
    })?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            if !ev.kind.is_access() {
                let _ = tx.send(());
            }
        }
    })
    .map_err(DeployError::Watch)?;
    notify::Watcher::watch(&mut watcher, &opts.dir, notify::RecursiveMode::Recursive)
        .map_err(DeployError::Watch)?;
    let mut deployer = Deployer::new(client, opts.dir.clone(), opts.disabled.clone());
    deployer.sync(true).await;
    loop {
        tokio::select! {
            ev = rx.recv() => {
                if ev.is_none() {
                    return Err(DeployError::WatchEnded);
                }
                tokio::time::sleep(opts.debounce).await;
                while rx.try_recv().is_ok() {}
                deployer.sync(false).await;
            }
            _ = tokio::time::sleep(opts.resync) => deployer.sync(false).await,
        }
    }
}

/// Creates (or updates) the Addon CRD and waits until Addons are served.
pub async fn ensure_crd(client: &kube::Client) -> Result<(), DeployError> {
    let crds: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "customresourcedefinitions",
        ),
    );
    let crd = addon::crd();
    crds.patch(
        &format!("{}.{}", addon::PLURAL, addon::GROUP),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .map_err(DeployError::Crd)?;
    let addons = addon_api(client);
    for _ in 0..100 {
        if addons.list(&Default::default()).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(DeployError::CrdNotServed)
}

fn addon_api(client: &kube::Client) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), addon::NAMESPACE, &addon_resource())
}

fn addon_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(addon::GROUP, addon::VERSION, addon::KIND),
        addon::PLURAL,
    )
}

/// Why one file was not (fully) applied.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read.
    #[error("read manifest at {path:?} failed: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A document did not parse.
    #[error("parse manifest at {path:?} failed: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The error, with its line.
        source: parse::ParseError,
    },
    /// A kind the API server does not serve.
    #[error("validate manifest at {path:?} failed: line {line}: no kind {kind:?} is registered for version {api_version:?}")]
    UnknownKind {
        /// The file.
        path: PathBuf,
        /// Line of the document.
        line: usize,
        /// The kind.
        kind: String,
        /// Its apiVersion.
        api_version: String,
    },
    /// The API refused a write.
    #[error("applying manifest at {path:?} failed: {source}")]
    Api {
        /// The file.
        path: PathBuf,
        /// The error.
        source: kube::Error,
    },
}

/// State of the controller between syncs.
struct Deployer {
    client: kube::Client,
    recorder: rk3s_runtime::events::EventRecorder,
    dir: PathBuf,
    disabled: Disabled,
    /// Checksum last applied per file.
    applied: HashMap<PathBuf, String>,
    /// Resolved kinds.
    kinds: HashMap<(String, String), (ApiResource, ApiCapabilities)>,
}

impl Deployer {
    fn new(client: kube::Client, dir: PathBuf, disabled: Disabled) -> Self {
        Deployer {
            recorder: rk3s_runtime::events::EventRecorder::new(client.clone(), "deploy"),
            client,
            dir,
            disabled,
            applied: HashMap::new(),
            kinds: HashMap::new(),
        }
    }

    /// Scans the folder: disables, applies new or changed files (all with `force`).
    async fn sync(&mut self, force: bool) {
        let found = files::scan(&self.dir, &self.disabled);
        let present: std::collections::HashSet<PathBuf> =
            found.iter().map(|(p, _)| p.clone()).collect();
        self.applied.retain(|p, _| present.contains(p));
        for (path, action) in found {
            match action {
                FileAction::Disable { remove_file } => {
                    if let Err(e) = self.disable(&path, remove_file).await {
                        tracing::error!(path = %path.display(), error = %e, "failed to delete disabled add-on");
                    }
                }
                FileAction::Apply => {
                    let content = match std::fs::read(&path) {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::error!(path = %path.display(), error = %e, "read manifest failed");
                            continue;
                        }
                    };
                    let sum = addon::checksum(&content);
                    if !force && self.applied.get(&path) == Some(&sum) {
                        continue;
                    }
                    match self.deploy(&path, &content, &sum).await {
                        Ok(()) => {
                            self.applied.insert(path, sum);
                        }
                        Err(e) => {
                            self.applied.remove(&path);
                            tracing::error!(error = %e, "failed to process manifest");
                        }
                    }
                }
            }
        }
    }

    /// The Addon of `name`, created with `source` when missing: (reference for
    /// Events, previous spec, previous status).
    async fn addon(
        &self,
        name: &str,
        source: &Path,
    ) -> Result<(ObjectReference, AddonSpec, AddonStatus), kube::Error> {
        let api = addon_api(&self.client);
        let obj = match api.get_opt(name).await? {
            Some(o) => o,
            None => {
                let spec = AddonSpec {
                    source: source.display().to_string(),
                    checksum: String::new(),
                };
                let body: DynamicObject =
                    serde_json::from_value(addon::addon_object(name, &spec, None))
                        .map_err(kube::Error::SerdeError)?;
                match api.create(&PostParams::default(), &body).await {
                    Ok(o) => o,
                    Err(kube::Error::Api(e)) if e.code == 409 => api.get(name).await?,
                    Err(e) => return Err(e),
                }
            }
        };
        let spec: AddonSpec = obj
            .data
            .get("spec")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .unwrap_or_default();
        let status: AddonStatus = obj
            .data
            .get("status")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .unwrap_or_default();
        let reference = ObjectReference {
            api_version: Some(addon::API_VERSION.into()),
            kind: Some(addon::KIND.into()),
            namespace: Some(addon::NAMESPACE.into()),
            name: Some(name.into()),
            uid: obj.metadata.uid.clone(),
            resource_version: obj.metadata.resource_version.clone(),
            ..Default::default()
        };
        Ok((reference, spec, status))
    }

    async fn event(&self, on: &ObjectReference, warning: bool, reason: &str, note: String) {
        self.recorder.record(on, warning, reason, note).await;
    }

    /// Applies one file (see the module doc).
    async fn deploy(&mut self, path: &Path, content: &[u8], sum: &str) -> Result<(), FileError> {
        let name = files::addon_name(path);
        let api_err = |source| FileError::Api {
            path: path.to_path_buf(),
            source,
        };
        let (reference, _spec, previous) = self.addon(&name, path).await.map_err(api_err)?;
        let text = String::from_utf8_lossy(content);
        let objects = match parse::parse_manifest(&text) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(file = %path.display(), line = e.line, reason = %e.reason, "manifest does not parse: nothing applied");
                self.event(
                    &reference,
                    true,
                    "ParseManifestFailed",
                    format!(
                        "Parse manifest at {:?} failed: {e}",
                        path.display().to_string()
                    ),
                )
                .await;
                return Err(FileError::Parse {
                    path: path.to_path_buf(),
                    source: e,
                });
            }
        };
        // Every kind must be served, or defined by a CRD of this file.
        let defined = crd_kinds(&objects);
        for o in &objects {
            let (g, _) = o.group_version();
            if defined.contains(&(g.to_string(), o.kind.clone())) {
                continue;
            }
            if self
                .resolve(&o.api_version, &o.kind)
                .await
                .map_err(api_err)?
                .is_none()
            {
                let e = FileError::UnknownKind {
                    path: path.to_path_buf(),
                    line: o.line,
                    kind: o.kind.clone(),
                    api_version: o.api_version.clone(),
                };
                tracing::error!(file = %path.display(), line = o.line, reason = %format!("unknown kind {} {}", o.api_version, o.kind), "manifest names an unknown kind: nothing applied");
                self.event(&reference, true, "ValidateManifestFailed", capitalized(&e))
                    .await;
                return Err(e);
            }
        }
        self.event(
            &reference,
            false,
            "ApplyingManifest",
            format!("Applying manifest at {:?}", path.display().to_string()),
        )
        .await;
        let mut ordered: Vec<&ManifestObject> = objects.iter().collect();
        ordered.sort_by_key(|o| match o.kind.as_str() {
            "CustomResourceDefinition" => 0,
            "Namespace" => 1,
            _ => 2,
        });
        let mut applied = Vec::new();
        for o in ordered {
            match self.apply_one(o, &name).await {
                Ok(r) => applied.push(r),
                Err(e) => {
                    let e = FileError::Api {
                        path: path.to_path_buf(),
                        source: e,
                    };
                    tracing::error!(file = %path.display(), line = o.line, kind = %o.kind, name = %o.name, error = %e, "apply failed");
                    self.event(&reference, true, "ApplyManifestFailed", capitalized(&e))
                        .await;
                    return Err(e);
                }
            }
        }
        for gone in addon::removed(&previous.objects, &applied) {
            if let Err(e) = self.delete_ref(&gone, Some(&name)).await {
                tracing::warn!(kind = %gone.kind, name = %gone.name, error = %e, "could not delete an object removed from the manifest");
            }
        }
        let spec = AddonSpec {
            source: path.display().to_string(),
            checksum: sum.to_string(),
        };
        let status = addon::status_of(&applied);
        addon_api(&self.client)
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&addon::addon_object(&name, &spec, Some(&status))),
            )
            .await
            .map_err(api_err)?;
        self.event(
            &reference,
            false,
            "AppliedManifest",
            format!("Applied manifest at {:?}", path.display().to_string()),
        )
        .await;
        Ok(())
    }

    /// The resource serving `api_version`/`kind`, or None when the server has none.
    async fn resolve(
        &mut self,
        api_version: &str,
        kind: &str,
    ) -> Result<Option<(ApiResource, ApiCapabilities)>, kube::Error> {
        let key = (api_version.to_string(), kind.to_string());
        if let Some(r) = self.kinds.get(&key) {
            return Ok(Some(r.clone()));
        }
        let (g, v) = parse::split_api_version(api_version);
        match kube::discovery::pinned_kind(&self.client, &GroupVersionKind::gvk(g, v, kind)).await {
            Ok(r) => {
                self.kinds.insert(key, r.clone());
                Ok(Some(r))
            }
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
            Err(kube::Error::Discovery(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Applies one object (with the owner annotations of wrangler's apply, naming
    /// `addon`); waits up to 10 s for a kind a CRD of the file defines.
    async fn apply_one(
        &mut self,
        o: &ManifestObject,
        addon: &str,
    ) -> Result<AppliedRef, kube::Error> {
        let mut resolved = None;
        for _ in 0..100 {
            resolved = self.resolve(&o.api_version, &o.kind).await?;
            if resolved.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let Some((ar, caps)) = resolved else {
            return Err(kube::Error::Discovery(
                kube::error::DiscoveryError::MissingKind(o.kind.clone()),
            ));
        };
        let mut obj = o.object.clone();
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            let annotations = m.entry("annotations").or_insert_with(|| json!({}));
            if let Some(a) = annotations.as_object_mut() {
                a.insert(
                    OWNER_GVK.into(),
                    json!(addon::gvk_string(addon::API_VERSION, addon::KIND)),
                );
                a.insert(OWNER_NAME.into(), json!(addon));
                a.insert(OWNER_NAMESPACE.into(), json!(addon::NAMESPACE));
            }
        }
        let namespace = match caps.scope {
            Scope::Namespaced => {
                let ns = o.namespace.clone().unwrap_or_else(|| "default".to_string());
                if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.insert("namespace".into(), json!(ns));
                }
                Some(ns)
            }
            Scope::Cluster => {
                // as kubectl: a namespace on a cluster-scoped object is dropped
                if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("namespace");
                }
                None
            }
        };
        let api: Api<DynamicObject> = match &namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        };
        api.patch(
            &o.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&obj),
        )
        .await?;
        Ok(AppliedRef {
            api_version: o.api_version.clone(),
            kind: o.kind.clone(),
            namespace,
            name: o.name.clone(),
        })
    }

    /// Deletes one recorded object (gone or unknown kinds are fine); with `owner`, only
    /// when no other Addon took it over since (its owner annotation names `owner` or
    /// nothing).
    async fn delete_ref(&mut self, r: &AppliedRef, owner: Option<&str>) -> Result<(), kube::Error> {
        let Some((ar, caps)) = self.resolve(&r.api_version, &r.kind).await? else {
            return Ok(());
        };
        let api: Api<DynamicObject> = match (&caps.scope, &r.namespace) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &ar),
            (Scope::Namespaced, None) => Api::namespaced_with(self.client.clone(), "default", &ar),
            (Scope::Cluster, _) => Api::all_with(self.client.clone(), &ar),
        };
        if let Some(owner) = owner {
            let Some(live) = api.get_opt(&r.name).await? else {
                return Ok(());
            };
            let named = live
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(OWNER_NAME));
            if named.is_some_and(|n| n != owner) {
                tracing::debug!(kind = %r.kind, name = %r.name, "object now belongs to another manifest: kept");
                return Ok(());
            }
        }
        match api.delete(&r.name, &DeleteParams::background()).await {
            Ok(_) => {
                tracing::info!(kind = %r.kind, name = %r.name, namespace = ?r.namespace, "deleted object removed from its manifest");
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A disabled add-on: deletes what its Addon recorded and what its file names,
    /// the file (when `remove_file`) and the Addon.
    async fn disable(&mut self, path: &Path, remove_file: bool) -> Result<(), kube::Error> {
        let name = files::addon_name(path);
        let api = addon_api(&self.client);
        let previous: AddonStatus = api
            .get_opt(&name)
            .await?
            .and_then(|o| o.data.get("status").cloned())
            .and_then(|s| serde_json::from_value(s).ok())
            .unwrap_or_default();
        let mut refs: Vec<AppliedRef> = previous.objects;
        if let Ok(content) = std::fs::read_to_string(path) {
            if let Ok(objs) = parse::parse_manifest(&content) {
                for o in objs {
                    let namespace = match self.resolve(&o.api_version, &o.kind).await? {
                        Some((_, caps)) if caps.scope == Scope::Cluster => None,
                        _ => Some(o.namespace.clone().unwrap_or_else(|| "default".into())),
                    };
                    refs.push(AppliedRef {
                        api_version: o.api_version,
                        kind: o.kind,
                        namespace,
                        name: o.name,
                    });
                }
            }
        }
        refs.sort();
        refs.dedup();
        for r in &refs {
            self.delete_ref(r, None).await?;
        }
        if remove_file {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove disabled manifest");
            }
        }
        tracing::info!(path = %path.display(), "deleted disabled add-on");
        self.applied.remove(path);
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// (group, kind) of every kind the CRDs of `objects` define.
fn crd_kinds(objects: &[ManifestObject]) -> std::collections::BTreeSet<(String, String)> {
    objects
        .iter()
        .filter(|o| o.kind == "CustomResourceDefinition")
        .filter_map(|o| {
            let spec = o.object.get("spec")?;
            Some((
                spec.get("group")?.as_str()?.to_string(),
                spec.get("names")?.get("kind")?.as_str()?.to_string(),
            ))
        })
        .collect()
}

/// An error's message with its first letter upper-cased (k3s's Event messages).
fn capitalized(e: &impl std::fmt::Display) -> String {
    let s = e.to_string();
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => s,
    }
}

/// The placeholder map type [`crate::stage_bundled`] takes.
pub type Placeholders = BTreeMap<String, String>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_defined_by_crds_of_the_file() {
        let objs = parse::parse_manifest(
            "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: foos.x.io}\nspec:\n  group: x.io\n  names: {kind: Foo, plural: foos}\n---\napiVersion: x.io/v1\nkind: Foo\nmetadata: {name: f}\n",
        )
        .expect("parse");
        let k = crd_kinds(&objs);
        assert!(k.contains(&("x.io".to_string(), "Foo".to_string())));
        assert_eq!(k.len(), 1);
        assert_eq!(capitalized(&"parse manifest"), "Parse manifest");
        let o = DeployOptions::new(Path::new("/var/lib/rk3s"), Disabled::default());
        assert_eq!(o.dir, PathBuf::from("/var/lib/rk3s/server/manifests"));
    }
}
