//! Pod volumes: emptyDir (a directory under the pod dir; medium `Memory` is a tmpfs),
//! configMap, secret, downwardAPI and projected (including service-account tokens from
//! the TokenRequest API, refreshed before they expire), hostPath, and
//! persistentVolumeClaim (a claim bound to a hostPath or local PV mounts the PV's path).
//! Files are written as upstream's atomic writer does (a timestamped directory behind a
//! `..data` symlink that is swapped in one rename), so updates reach running containers
//! whole; a watch per referenced ConfigMap/Secret republishes them when they change.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Volume,
    VolumeMount,
};
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use serde_json::json;

use crate::cri::types::Mount;

/// Errors setting up volumes.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A referenced object or key is missing (upstream's wording).
    #[error("{0}")]
    Missing(String),
    /// An API call failed.
    #[error("{0}")]
    Api(#[from] kube::Error),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Anything else that makes the volume unusable.
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError + '_ {
    move |source| VolumeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where a volume lives on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct VolumeInfo {
    /// Host path of the volume.
    pub host_path: PathBuf,
    /// True for volumes that are always mounted read-only (configMap, secret, ...).
    pub read_only: bool,
}

/// A service-account token the node fetched for a pod.
#[derive(Clone, Debug)]
struct Token {
    token: String,
    fetched: Instant,
    ttl: Duration,
}

/// Whether a service-account token fetched `age` ago with lifetime `ttl` must be
/// requested again: as upstream's token manager, once 80% of its lifetime has passed
/// or it is older than 24 hours.
pub fn token_needs_refresh(age: Duration, ttl: Duration) -> bool {
    age >= ttl.mul_f64(0.8).min(Duration::from_secs(24 * 3600))
}

/// Per-pod state of its volumes, held by the pod's worker. The state that must be
/// shared with the update watches (tokens) lives in the [`VolumeManager`].
#[derive(Debug, Default)]
pub struct PodVolumes {}

/// What the manager tracks for the volume updates.
#[derive(Default)]
struct Tracked {
    /// Pods whose volumes are set up, by UID.
    pods: HashMap<String, Pod>,
    /// Service-account tokens by `<pod uid>/<volume>/<path>`.
    tokens: HashMap<String, Token>,
    /// One watch per referenced ConfigMap / Secret, by `<kind>/<namespace>/<name>`.
    watches: HashMap<String, tokio::task::JoinHandle<()>>,
    /// Serializes the writes of one pod's volumes.
    locks: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

/// The ConfigMaps and Secrets a pod's volumes read, as `configmap/<ns>/<name>` and
/// `secret/<ns>/<name>`.
pub fn referenced_objects(pod: &Pod) -> Vec<String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut out = Vec::new();
    for v in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
    {
        if let Some(cm) = &v.config_map {
            out.push(format!("configmap/{ns}/{}", cm.name));
        }
        if let Some(name) = v.secret.as_ref().and_then(|s| s.secret_name.as_ref()) {
            out.push(format!("secret/{ns}/{name}"));
        }
        for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(cm) = &src.config_map {
                out.push(format!("configmap/{ns}/{}", cm.name));
            }
            if let Some(s) = &src.secret {
                out.push(format!("secret/{ns}/{}", s.name));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The directory of a pod: `<pods root>/<uid>`.
pub fn pod_dir(root: &Path, uid: &str) -> PathBuf {
    root.join(uid)
}

/// Value of a downward-API `fieldRef` path (also used for env vars). `None` when the
/// path is not supported.
pub fn field_value(pod: &Pod, path: &str, host_ip: &str) -> Option<String> {
    let m = &pod.metadata;
    let map_line = |m: &Option<BTreeMap<String, String>>| {
        m.iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let indexed = |prefix: &str| -> Option<String> {
        path.strip_prefix(prefix)?
            .strip_prefix("['")?
            .strip_suffix("']")
            .map(str::to_string)
    };
    if let Some(k) = indexed("metadata.labels") {
        return Some(
            m.labels
                .as_ref()
                .and_then(|l| l.get(&k))
                .cloned()
                .unwrap_or_default(),
        );
    }
    if let Some(k) = indexed("metadata.annotations") {
        return Some(
            m.annotations
                .as_ref()
                .and_then(|l| l.get(&k))
                .cloned()
                .unwrap_or_default(),
        );
    }
    let st = pod.status.as_ref();
    Some(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "metadata.labels" => map_line(&m.labels),
        "metadata.annotations" => map_line(&m.annotations),
        "spec.nodeName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => host_ip.to_string(),
        "status.podIP" => st.and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
        "status.podIPs" => st
            .and_then(|s| s.pod_ips.as_ref())
            .map(|v| v.iter().map(|i| i.ip.clone()).collect::<Vec<_>>().join(","))
            .unwrap_or_default(),
        _ => return None,
    })
}

/// Value of a `resourceFieldRef` (limits/requests of a container, in units of `divisor`;
/// a missing limit is the node's allocatable, as upstream).
pub fn resource_value(
    c: &Container,
    resource: &str,
    divisor: Option<&str>,
    node_cpus: usize,
    node_memory: u64,
) -> Option<String> {
    let (kind, name) = resource.split_once('.')?;
    let q = c
        .resources
        .as_ref()
        .and_then(|r| {
            if kind == "limits" {
                r.limits.as_ref()
            } else {
                r.requests.as_ref()
            }
        })
        .and_then(|m| m.get(name));
    let v = match q.and_then(|q| crate::pods::spec::parse_quantity(&q.0)) {
        Some(v) => v,
        None if kind == "limits" && name == "cpu" => node_cpus as f64,
        None if kind == "limits" && name == "memory" => node_memory as f64,
        None => 0.0,
    };
    let d = divisor
        .and_then(crate::pods::spec::parse_quantity)
        .filter(|d| *d > 0.0)
        .unwrap_or(1.0);
    Some(((v / d).ceil() as i64).to_string())
}

/// A set of files (relative path → (content, mode)) to publish in a volume directory.
pub type Files = BTreeMap<String, (Vec<u8>, u32)>;

fn key_files(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: u32,
    optional: bool,
    what: &str,
) -> Result<Files, VolumeError> {
    let mut out = Files::new();
    match items {
        Some(items) if !items.is_empty() => {
            for it in items {
                let mode = it.mode.map(|m| m as u32).unwrap_or(default_mode);
                match data.get(&it.key) {
                    Some(v) => {
                        out.insert(it.path.clone(), (v.clone(), mode));
                    }
                    None if optional => {}
                    None => {
                        return Err(VolumeError::Missing(format!(
                            "{what} references non-existent config key: {}",
                            it.key
                        )))
                    }
                }
            }
        }
        _ => {
            for (k, v) in data {
                out.insert(k.clone(), (v.clone(), default_mode));
            }
        }
    }
    Ok(out)
}

fn check_rel_path(p: &str) -> Result<(), VolumeError> {
    if p.is_empty() || p.starts_with('/') || p.split('/').any(|c| c == ".." || c.starts_with(".."))
    {
        return Err(VolumeError::Invalid(format!(
            "invalid path {p:?} in volume"
        )));
    }
    Ok(())
}

/// Publishes `files` in `dir` atomically (`..<stamp>` directory, `..data` symlink,
/// top-level symlinks into it). Returns false when the content was already there.
pub fn write_atomic(dir: &Path, files: &Files) -> Result<bool, VolumeError> {
    for p in files.keys() {
        check_rel_path(p)?;
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let data = dir.join("..data");
    let unchanged = data.exists()
        && files.iter().all(|(p, (c, m))| {
            let f = data.join(p);
            std::fs::read(&f).ok().as_ref() == Some(c)
                && std::fs::metadata(&f)
                    .map(|md| md.permissions().mode() & 0o7777 == *m)
                    .unwrap_or(false)
        })
        && listed_files(&data).len() == files.len();
    if unchanged {
        return Ok(false);
    }
    let stamp = format!("..{}", jiff::Timestamp::now().as_nanosecond());
    let ts_dir = dir.join(&stamp);
    std::fs::create_dir_all(&ts_dir).map_err(io(&ts_dir))?;
    std::fs::set_permissions(&ts_dir, std::fs::Permissions::from_mode(0o755))
        .map_err(io(&ts_dir))?;
    for (p, (content, mode)) in files {
        let f = ts_dir.join(p);
        if let Some(parent) = f.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&f, content).map_err(io(&f))?;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(*mode)).map_err(io(&f))?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp).map_err(io(&tmp))?;
    let old = std::fs::read_link(&data).ok();
    std::fs::rename(&tmp, &data).map_err(io(&data))?;
    let tops: std::collections::BTreeSet<String> = files
        .keys()
        .filter_map(|p| p.split('/').next().map(str::to_string))
        .collect();
    for t in &tops {
        let link = dir.join(t);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(t), &link).map_err(io(&link))?;
        }
    }
    // Drop links to files that are gone, and the previous timestamped directory.
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("..") && !tops.contains(&name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    if let Some(old) = old.filter(|o| o != Path::new(&stamp)) {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(true)
}

fn listed_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The kubelet's volume manager for one node. ConfigMap and Secret volumes follow
/// their objects: the manager watches every referenced object (by name, as the Node
/// authorizer allows) and republishes the volumes of the pods using it when it changes,
/// so updates reach running containers within a second (`subPath` mounts keep the file
/// they started with, as upstream).
#[derive(Clone)]
pub struct VolumeManager {
    client: kube::Client,
    tracked: Arc<Mutex<Tracked>>,
    /// `<data-dir>/agent/pods`.
    pub root: PathBuf,
    /// The node IP (for `status.hostIP`).
    pub host_ip: String,
    /// CPU count of the node.
    pub node_cpus: usize,
    /// Memory of the node in bytes.
    pub node_memory: u64,
}

impl VolumeManager {
    /// A manager keeping pod directories under `root`.
    pub fn new(
        client: kube::Client,
        root: PathBuf,
        host_ip: String,
        node_cpus: usize,
        node_memory: u64,
    ) -> Self {
        VolumeManager {
            client,
            tracked: Arc::new(Mutex::new(Tracked::default())),
            root,
            host_ip,
            node_cpus,
            node_memory,
        }
    }

    async fn config_map(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, VolumeError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
        Ok(api.get_opt(name).await?.map(|cm| {
            let mut m: BTreeMap<String, Vec<u8>> = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            m.extend(
                cm.binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0)),
            );
            m
        }))
    }

    async fn secret(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, VolumeError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        Ok(api.get_opt(name).await?.map(|s| {
            let mut m: BTreeMap<String, Vec<u8>> = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            m.extend(
                s.string_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes())),
            );
            m
        }))
    }

    async fn token(
        &self,
        pod: &Pod,
        key: &str,
        audience: Option<&str>,
        expiration: i64,
    ) -> Result<String, VolumeError> {
        let key = format!("{}/{key}", pod.metadata.uid.as_deref().unwrap_or_default());
        let cached = self
            .tracked
            .lock()
            .ok()
            .and_then(|t| t.tokens.get(&key).cloned());
        if let Some(t) = cached {
            if !token_needs_refresh(t.fetched.elapsed(), t.ttl) {
                return Ok(t.token);
            }
        }
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let sa = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let api: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.client.clone(), ns);
        let audiences: Vec<&str> = audience.into_iter().filter(|a| !a.is_empty()).collect();
        let body = json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {
                "audiences": audiences,
                "expirationSeconds": expiration.max(600),
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod.metadata.name, "uid": pod.metadata.uid},
            },
        });
        let tr: k8s_openapi::api::authentication::v1::TokenRequest = api
            .create_subresource("token", &sa, &PostParams::default(), &body)
            .await?;
        let status = tr
            .status
            .ok_or_else(|| VolumeError::Invalid("TokenRequest answered without status".into()))?;
        let exp = status.expiration_timestamp.0;
        let ttl_secs = (exp.as_second() - jiff::Timestamp::now().as_second()).max(60) as u64;
        if let Ok(mut t) = self.tracked.lock() {
            t.tokens.insert(
                key,
                Token {
                    token: status.token.clone(),
                    fetched: Instant::now(),
                    ttl: Duration::from_secs(ttl_secs),
                },
            );
        }
        Ok(status.token)
    }

    /// Sets up (or refreshes) every volume of the pod; returns where each volume lives.
    /// From then on the pod's ConfigMap and Secret volumes follow their objects until
    /// [`VolumeManager::teardown`].
    pub async fn setup(
        &self,
        pod: &Pod,
        _state: &mut PodVolumes,
    ) -> Result<HashMap<String, VolumeInfo>, VolumeError> {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let lock = {
            let Ok(mut t) = self.tracked.lock() else {
                return Err(VolumeError::Invalid("volume manager state poisoned".into()));
            };
            t.pods.insert(uid.to_string(), pod.clone());
            for obj in referenced_objects(pod) {
                if let std::collections::hash_map::Entry::Vacant(e) = t.watches.entry(obj) {
                    let task = tokio::spawn(self.clone().follow(e.key().clone()));
                    e.insert(task);
                }
            }
            t.locks.entry(uid.to_string()).or_default().clone()
        };
        let _guard = lock.lock().await;
        self.setup_locked(pod, false).await
    }

    /// Sets up the pod's volumes; `files_only` republishes just the volumes made of
    /// API objects (configMap, secret, downwardAPI, projected).
    async fn setup_locked(
        &self,
        pod: &Pod,
        files_only: bool,
    ) -> Result<HashMap<String, VolumeInfo>, VolumeError> {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let dir = pod_dir(&self.root, uid).join("volumes");
        let mut out = HashMap::new();
        for v in pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .into_iter()
            .flatten()
        {
            if files_only
                && v.config_map.is_none()
                && v.secret.is_none()
                && v.downward_api.is_none()
                && v.projected.is_none()
            {
                continue;
            }
            let info = self
                .setup_one(pod, ns, &dir, v)
                .await
                .map_err(|e| match e {
                    VolumeError::Missing(m) => VolumeError::Missing(format!(
                        "MountVolume.SetUp failed for volume {:?} : {m}",
                        v.name
                    )),
                    other => other,
                })?;
            if let Some(info) = info {
                out.insert(v.name.clone(), info);
            }
        }
        Ok(out)
    }

    /// Watches one ConfigMap or Secret (`<kind>/<ns>/<name>`) and republishes the
    /// volumes of the pods that use it whenever it changes.
    async fn follow(self, obj: String) {
        let mut parts = obj.splitn(3, '/');
        let (Some(kind), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            return;
        };
        let wc = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut stream = if kind == "configmap" {
            watcher(Api::<ConfigMap>::namespaced(self.client.clone(), ns), wc)
                .map(|e| e.map(|_| ()))
                .boxed()
        } else {
            watcher(Api::<Secret>::namespaced(self.client.clone(), ns), wc)
                .map(|e| e.map(|_| ()))
                .boxed()
        };
        while let Some(ev) = stream.next().await {
            if let Err(e) = ev {
                tracing::debug!(object = %obj, error = %e, "volume source watch failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            let pods: Vec<Pod> = match self.tracked.lock() {
                Ok(t) => t
                    .pods
                    .values()
                    .filter(|p| referenced_objects(p).contains(&obj))
                    .cloned()
                    .collect(),
                Err(_) => return,
            };
            for pod in pods {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                let lock = match self.tracked.lock() {
                    Ok(t) => t.locks.get(&uid).cloned(),
                    Err(_) => return,
                };
                let Some(lock) = lock else { continue };
                let _guard = lock.lock().await;
                // Torn down meanwhile?
                if !self.tracked.lock().is_ok_and(|t| t.pods.contains_key(&uid)) {
                    continue;
                }
                if let Err(e) = self.setup_locked(&pod, true).await {
                    tracing::debug!(object = %obj, pod_uid = %uid, error = %e, "republishing volumes failed");
                }
            }
        }
    }

    async fn setup_one(
        &self,
        pod: &Pod,
        ns: &str,
        dir: &Path,
        v: &Volume,
    ) -> Result<Option<VolumeInfo>, VolumeError> {
        if let Some(ed) = &v.empty_dir {
            let p = dir.join("kubernetes.io~empty-dir").join(&v.name);
            std::fs::create_dir_all(&p).map_err(io(&p))?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777)).map_err(io(&p))?;
            if ed.medium.as_deref() == Some("Memory") && !is_mount_point(&p) {
                let size = ed
                    .size_limit
                    .as_ref()
                    .and_then(|q| crate::pods::spec::parse_quantity(&q.0))
                    .map(|b| b as u64);
                mount_tmpfs(&p, size)?;
            }
            return Ok(Some(VolumeInfo {
                host_path: p,
                read_only: false,
            }));
        }
        if let Some(hp) = &v.host_path {
            let p = PathBuf::from(&hp.path);
            match hp.type_.as_deref().unwrap_or("") {
                "DirectoryOrCreate" => {
                    std::fs::create_dir_all(&p).map_err(io(&p))?;
                }
                "FileOrCreate" if !p.exists() => {
                    if let Some(parent) = p.parent() {
                        std::fs::create_dir_all(parent).map_err(io(parent))?;
                    }
                    std::fs::write(&p, b"").map_err(io(&p))?;
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))
                        .map_err(io(&p))?;
                }
                "Directory" if !p.is_dir() => {
                    return Err(VolumeError::Missing(format!(
                        "hostPath type check failed: {} is not a directory",
                        hp.path
                    )))
                }
                "File" if !p.is_file() => {
                    return Err(VolumeError::Missing(format!(
                        "hostPath type check failed: {} is not a file",
                        hp.path
                    )))
                }
                "Socket" | "CharDevice" | "BlockDevice" if !p.exists() => {
                    return Err(VolumeError::Missing(format!(
                        "hostPath type check failed: {} does not exist",
                        hp.path
                    )))
                }
                _ => {}
            }
            return Ok(Some(VolumeInfo {
                host_path: p,
                read_only: false,
            }));
        }
        if let Some(cm) = &v.config_map {
            let p = dir.join("kubernetes.io~configmap").join(&v.name);
            let optional = cm.optional.unwrap_or(false);
            let mode = cm.default_mode.unwrap_or(0o644) as u32;
            let files = match self.config_map(ns, &cm.name).await? {
                Some(data) => key_files(&data, cm.items.as_ref(), mode, optional, "configmap")?,
                None if optional => Files::new(),
                None => {
                    return Err(VolumeError::Missing(format!(
                        "configmap {:?} not found",
                        cm.name
                    )))
                }
            };
            write_atomic(&p, &files)?;
            return Ok(Some(VolumeInfo {
                host_path: p,
                read_only: true,
            }));
        }
        if let Some(s) = &v.secret {
            let p = dir.join("kubernetes.io~secret").join(&v.name);
            let name = s.secret_name.clone().unwrap_or_default();
            let optional = s.optional.unwrap_or(false);
            let mode = s.default_mode.unwrap_or(0o644) as u32;
            let files = match self.secret(ns, &name).await? {
                Some(data) => key_files(&data, s.items.as_ref(), mode, optional, "secret")?,
                None if optional => Files::new(),
                None => return Err(VolumeError::Missing(format!("secret {name:?} not found"))),
            };
            write_atomic(&p, &files)?;
            return Ok(Some(VolumeInfo {
                host_path: p,
                read_only: true,
            }));
        }
        if let Some(d) = &v.downward_api {
            let p = dir.join("kubernetes.io~downward-api").join(&v.name);
            let mode = d.default_mode.unwrap_or(0o644) as u32;
            let mut files = Files::new();
            for it in d.items.iter().flatten() {
                let val = self.downward_item(pod, it)?;
                files.insert(
                    it.path.clone(),
                    (val.into_bytes(), it.mode.map(|m| m as u32).unwrap_or(mode)),
                );
            }
            write_atomic(&p, &files)?;
            return Ok(Some(VolumeInfo {
                host_path: p,
                read_only: true,
            }));
        }
        if let Some(pr) = &v.projected {
            let p = dir.join("kubernetes.io~projected").join(&v.name);
            let mode = pr.default_mode.unwrap_or(0o644) as u32;
            let mut files = Files::new();
            for src in pr.sources.iter().flatten() {
                if let Some(cm) = &src.config_map {
                    let optional = cm.optional.unwrap_or(false);
                    match self.config_map(ns, &cm.name).await? {
                        Some(data) => files.extend(key_files(
                            &data,
                            cm.items.as_ref(),
                            mode,
                            optional,
                            "configmap",
                        )?),
                        None if optional => {}
                        None => {
                            return Err(VolumeError::Missing(format!(
                                "configmap {:?} not found",
                                cm.name
                            )))
                        }
                    }
                }
                if let Some(s) = &src.secret {
                    let optional = s.optional.unwrap_or(false);
                    match self.secret(ns, &s.name).await? {
                        Some(data) => files.extend(key_files(
                            &data,
                            s.items.as_ref(),
                            mode,
                            optional,
                            "secret",
                        )?),
                        None if optional => {}
                        None => {
                            return Err(VolumeError::Missing(format!(
                                "secret {:?} not found",
                                s.name
                            )))
                        }
                    }
                }
                if let Some(d) = &src.downward_api {
                    for it in d.items.iter().flatten() {
                        let val = self.downward_item(pod, it)?;
                        files.insert(
                            it.path.clone(),
                            (val.into_bytes(), it.mode.map(|m| m as u32).unwrap_or(mode)),
                        );
                    }
                }
                if let Some(t) = &src.service_account_token {
                    let key = format!("{}/{}", v.name, t.path);
                    let token = self
                        .token(
                            pod,
                            &key,
                            t.audience.as_deref(),
                            t.expiration_seconds.unwrap_or(3600),
                        )
                        .await?;
                    // Token files are private to the owner unless a mode says otherwise.
                    let tmode = if pr.default_mode.is_some() {
                        mode
                    } else {
                        0o600
                    };
                    files.insert(t.path.clone(), (token.into_bytes(), tmode));
                }
            }
            write_atomic(&p, &files)?;
            return Ok(Some(VolumeInfo {
                host_path: p,
                read_only: true,
            }));
        }
        if let Some(src) = &v.persistent_volume_claim {
            let host_path = self.claim_path(ns, &src.claim_name).await.map_err(|m| {
                VolumeError::Invalid(format!(
                    "Unable to attach or mount volumes: unmounted volumes=[{0}], unattached volumes=[], failed to process volumes=[{0}]: {m}",
                    v.name
                ))
            })?;
            return Ok(Some(VolumeInfo {
                host_path,
                read_only: src.read_only.unwrap_or(false),
            }));
        }
        Ok(None)
    }

    /// The host directory of the PersistentVolume a claim is bound to (hostPath or local
    /// PVs). Errors are upstream's volume-manager messages.
    async fn claim_path(&self, ns: &str, claim: &str) -> Result<PathBuf, String> {
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
        let pvc = match pvcs.get_opt(claim).await {
            Ok(Some(p)) => p,
            Ok(None) => return Err(format!("error processing PVC {ns}/{claim}: failed to fetch PVC from API server: persistentvolumeclaims {claim:?} not found")),
            Err(e) => return Err(format!("error processing PVC {ns}/{claim}: failed to fetch PVC from API server: {e}")),
        };
        let phase = pvc
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or_default();
        let pv_name = pvc
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .unwrap_or_default();
        if phase != "Bound" || pv_name.is_empty() {
            return Err(format!(
                "error processing PVC {ns}/{claim}: PVC is not bound"
            ));
        }
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        let pv = match pvs.get_opt(&pv_name).await {
            Ok(Some(p)) => p,
            Ok(None) => return Err(format!("error processing PVC {ns}/{claim}: failed to fetch PV {pv_name:?} from API server: persistentvolumes {pv_name:?} not found")),
            Err(e) => return Err(format!("error processing PVC {ns}/{claim}: failed to fetch PV {pv_name:?} from API server: {e}")),
        };
        pv_host_path(&pv).map_err(|m| format!("error processing PVC {ns}/{claim}: {m}"))
    }

    fn downward_item(
        &self,
        pod: &Pod,
        it: &k8s_openapi::api::core::v1::DownwardAPIVolumeFile,
    ) -> Result<String, VolumeError> {
        if let Some(f) = &it.field_ref {
            return field_value(pod, &f.field_path, &self.host_ip).ok_or_else(|| {
                VolumeError::Invalid(format!("unsupported fieldPath {:?}", f.field_path))
            });
        }
        if let Some(r) = &it.resource_field_ref {
            let cname = r.container_name.clone().unwrap_or_default();
            let c = pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.iter().find(|c| c.name == cname));
            let c = c.ok_or_else(|| {
                VolumeError::Invalid(format!("resourceFieldRef: no container {cname:?}"))
            })?;
            return resource_value(
                c,
                &r.resource,
                r.divisor.as_ref().map(|d| d.0.as_str()),
                self.node_cpus,
                self.node_memory,
            )
            .ok_or_else(|| VolumeError::Invalid(format!("unsupported resource {:?}", r.resource)));
        }
        Ok(String::new())
    }

    /// Unmounts and removes the pod's directory, and forgets the pod (its tokens, and
    /// the watches no other pod needs).
    pub fn teardown(&self, uid: &str) {
        if let Ok(mut t) = self.tracked.lock() {
            t.pods.remove(uid);
            t.locks.remove(uid);
            let prefix = format!("{uid}/");
            t.tokens.retain(|k, _| !k.starts_with(&prefix));
            let wanted: std::collections::HashSet<String> =
                t.pods.values().flat_map(referenced_objects).collect();
            t.watches.retain(|obj, task| {
                let keep = wanted.contains(obj);
                if !keep {
                    task.abort();
                }
                keep
            });
        }
        let dir = pod_dir(&self.root, uid);
        if dir.exists() {
            crate::containerd::unmount_under(&dir);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(pod_uid = uid, error = %e, "removing pod directory");
            }
        }
    }
}

/// The host directory of a hostPath or local PersistentVolume (creating a hostPath
/// directory when its type says `DirectoryOrCreate`; a local volume's path must exist).
pub fn pv_host_path(pv: &PersistentVolume) -> Result<PathBuf, String> {
    let name = pv.metadata.name.as_deref().unwrap_or_default();
    let spec = pv
        .spec
        .as_ref()
        .ok_or_else(|| format!("PersistentVolume {name:?} has no spec"))?;
    if let Some(hp) = &spec.host_path {
        let p = PathBuf::from(&hp.path);
        match hp.type_.as_deref().unwrap_or_default() {
            "DirectoryOrCreate" => {
                std::fs::create_dir_all(&p).map_err(|e| format!("{}: {e}", hp.path))?
            }
            "Directory" if !p.is_dir() => {
                return Err(format!(
                    "hostPath type check failed: {} is not a directory",
                    hp.path
                ))
            }
            _ => {}
        }
        return Ok(p);
    }
    if let Some(l) = &spec.local {
        let p = PathBuf::from(&l.path);
        if !p.exists() {
            return Err(format!("path {:?} does not exist", l.path));
        }
        return Ok(p);
    }
    Err(format!(
        "PersistentVolume {name:?}: only hostPath and local volumes are supported by this node"
    ))
}

/// The sub-path of a volume mount, as upstream's kubelet resolves it: `subPathExpr`
/// with its `$(VAR)` references expanded from the container's environment (`$$` is an
/// escaped `$`; a variable that is unset or empty is an error, "missing value for A, B"),
/// else `subPath`. The result must be relative and must not step out with `..`; the
/// errors carry upstream's messages. `None` when the mount uses the whole volume.
pub fn mount_sub_path(
    m: &VolumeMount,
    env: &[(String, String)],
) -> Result<Option<String>, VolumeError> {
    let sub = match m.sub_path_expr.as_deref().filter(|e| !e.is_empty()) {
        Some(expr) => {
            let missing = std::cell::RefCell::new(std::collections::BTreeSet::new());
            let expanded = crate::pods::spec::expand(expr, &|name: &str| {
                let value = env
                    .iter()
                    .rev()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                if value.is_empty() {
                    missing.borrow_mut().insert(name.to_string());
                }
                Some(value)
            });
            let missing = missing.into_inner();
            if !missing.is_empty() {
                return Err(VolumeError::Invalid(format!(
                    "missing value for {}",
                    missing.into_iter().collect::<Vec<_>>().join(", ")
                )));
            }
            expanded
        }
        None => m.sub_path.clone().unwrap_or_default(),
    };
    if sub.is_empty() {
        return Ok(None);
    }
    if sub.starts_with('/') {
        return Err(VolumeError::Invalid(format!(
            "error SubPath `{sub}` must not be an absolute path"
        )));
    }
    if sub.split('/').any(|c| c == "..") {
        return Err(VolumeError::Invalid(format!(
            "unable to provision SubPath `{sub}`: must not contain '..'"
        )));
    }
    Ok(Some(sub))
}

/// The host path of `sub` inside the volume at `root`, created (as a directory with the
/// volume's mode, like upstream's kubelet) when missing and the volume is writable.
/// Refuses a path that leaves the volume through a symbolic link.
fn sub_path_on_host(
    root: &Path,
    sub: &str,
    writable: bool,
    mount: &str,
    container: &str,
) -> Result<PathBuf, VolumeError> {
    let host = root.join(sub);
    let failed = || {
        VolumeError::Invalid(format!(
            "failed to create subPath directory for volumeMount {mount:?} of container {container:?}"
        ))
    };
    let inside = |p: &Path| match (root.canonicalize(), p.canonicalize()) {
        (Ok(r), Ok(p)) => p.starts_with(r),
        _ => false,
    };
    if std::fs::symlink_metadata(&host).is_err() && writable {
        let mode = std::fs::metadata(root)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o755);
        let mut dir = root.to_path_buf();
        for part in sub.split('/').filter(|p| !p.is_empty() && *p != ".") {
            dir.push(part);
            if let Ok(md) = std::fs::symlink_metadata(&dir) {
                if md.file_type().is_symlink() && !inside(&dir) {
                    tracing::warn!(path = %dir.display(), "subPath leaves its volume through a symbolic link");
                    return Err(failed());
                }
            } else {
                std::fs::create_dir(&dir).map_err(|e| {
                    tracing::warn!(path = %dir.display(), error = %e, "cannot create a subPath directory");
                    failed()
                })?;
                // The umask does not apply: the directory gets the volume's mode.
                let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode));
            }
        }
    }
    if host.exists() && !inside(&host) {
        tracing::warn!(path = %host.display(), "subPath leaves its volume through a symbolic link");
        return Err(failed());
    }
    Ok(host)
}

/// CRI mounts of a container from its volumeMounts; `env` is the container's resolved
/// environment (for `subPathExpr`).
pub fn container_mounts(
    c: &Container,
    vols: &HashMap<String, VolumeInfo>,
    env: &[(String, String)],
) -> Result<Vec<Mount>, VolumeError> {
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let v = vols
            .get(&m.name)
            .ok_or_else(|| VolumeError::Missing(format!("volume {:?} not found", m.name)))?;
        let mut host = v.host_path.clone();
        if let Some(sub) = mount_sub_path(m, env)? {
            host = sub_path_on_host(&host, &sub, !v.read_only, &m.name, &c.name)?;
        }
        let propagation = match m.mount_propagation.as_deref() {
            Some("HostToContainer") => crate::cri::types::MountPropagation::HostToContainer,
            Some("Bidirectional") => crate::cri::types::MountPropagation::Bidirectional,
            _ => crate::cri::types::MountPropagation::Private,
        };
        out.push(Mount {
            container_path: m.mount_path.clone(),
            host_path: host.to_string_lossy().into_owned(),
            readonly: m.read_only.unwrap_or(false) || v.read_only,
            selinux_relabel: false,
            propagation: propagation as i32,
        });
    }
    Ok(out)
}

fn is_mount_point(p: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = p.to_string_lossy();
    text.lines()
        .any(|l| l.split_whitespace().nth(4) == Some(want.as_ref()))
}

fn mount_tmpfs(p: &Path, size: Option<u64>) -> Result<(), VolumeError> {
    use std::os::unix::ffi::OsStrExt;
    let target = std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|e| VolumeError::Invalid(e.to_string()))?;
    let opts = match size {
        Some(s) => format!("mode=0777,size={s}"),
        None => "mode=0777".to_string(),
    };
    let data = std::ffi::CString::new(opts).map_err(|e| VolumeError::Invalid(e.to_string()))?;
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            data.as_ptr() as *const libc::c_void,
        )
    };
    if rc != 0 {
        return Err(VolumeError::Io {
            path: p.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writer_swaps_data() {
        let Ok(d) = tempfile::tempdir() else {
            panic!("tempdir")
        };
        let mut f = Files::new();
        f.insert("a".into(), (b"1".to_vec(), 0o644));
        f.insert("sub/b".into(), (b"2".to_vec(), 0o600));
        assert!(write_atomic(d.path(), &f).is_ok_and(|c| c));
        assert_eq!(std::fs::read(d.path().join("a")).ok(), Some(b"1".to_vec()));
        assert_eq!(
            std::fs::read(d.path().join("sub/b")).ok(),
            Some(b"2".to_vec())
        );
        assert!(
            write_atomic(d.path(), &f).is_ok_and(|c| !c),
            "unchanged content is not rewritten"
        );
        f.remove("sub/b");
        f.insert("a".into(), (b"3".to_vec(), 0o644));
        assert!(write_atomic(d.path(), &f).is_ok_and(|c| c));
        assert_eq!(std::fs::read(d.path().join("a")).ok(), Some(b"3".to_vec()));
        assert!(
            std::fs::symlink_metadata(d.path().join("sub")).is_err(),
            "stale link removed"
        );
        let stamps = std::fs::read_dir(d.path())
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("..1"))
                    .count()
            })
            .unwrap_or(0);
        assert_eq!(stamps, 1, "old timestamped dirs are removed");
        let mut bad = Files::new();
        bad.insert("../x".into(), (vec![], 0o644));
        assert!(write_atomic(d.path(), &bad).is_err());
    }

    #[test]
    fn token_refresh_at_80_percent_or_a_day() {
        let hour = Duration::from_secs(3600);
        assert!(!token_needs_refresh(Duration::from_secs(0), hour));
        assert!(
            !token_needs_refresh(Duration::from_secs(2879), hour),
            "before 80% of 1 h (48 min)"
        );
        assert!(
            token_needs_refresh(Duration::from_secs(2880), hour),
            "at 80% of the lifetime"
        );
        let week = Duration::from_secs(7 * 24 * 3600);
        assert!(!token_needs_refresh(Duration::from_secs(23 * 3600), week));
        assert!(
            token_needs_refresh(Duration::from_secs(24 * 3600), week),
            "a long-lived token is refreshed after 24 h"
        );
        assert!(token_needs_refresh(
            Duration::from_secs(600),
            Duration::from_secs(600)
        ));
    }

    #[test]
    fn referenced_objects_of_a_pod() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"containers": [], "volumes": [
                {"name": "a", "configMap": {"name": "cm"}},
                {"name": "b", "secret": {"secretName": "s"}},
                {"name": "c", "projected": {"sources": [{"configMap": {"name": "cm"}}, {"secret": {"name": "t"}}, {"serviceAccountToken": {"path": "token"}}]}},
                {"name": "d", "emptyDir": {}},
            ]},
        }))
        .unwrap();
        assert_eq!(
            referenced_objects(&pod),
            vec!["configmap/ns/cm", "secret/ns/s", "secret/ns/t"]
        );
    }

    #[test]
    fn pv_paths() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("made");
        let hp: PersistentVolume = serde_json::from_value(json!({"metadata": {"name": "hp"}, "spec": {"hostPath": {"path": dir, "type": "DirectoryOrCreate"}}})).unwrap();
        assert_eq!(pv_host_path(&hp), Ok(dir.clone()));
        assert!(dir.is_dir(), "DirectoryOrCreate makes the directory");
        let missing = d.path().join("missing");
        let local: PersistentVolume = serde_json::from_value(
            json!({"metadata": {"name": "l"}, "spec": {"local": {"path": missing}}}),
        )
        .unwrap();
        assert_eq!(
            pv_host_path(&local),
            Err(format!(
                "path {:?} does not exist",
                missing.display().to_string()
            ))
        );
        let nfs: PersistentVolume = serde_json::from_value(
            json!({"metadata": {"name": "n"}, "spec": {"nfs": {"server": "x", "path": "/"}}}),
        )
        .unwrap();
        assert!(pv_host_path(&nfs).is_err());
    }

    #[test]
    fn items_select_keys() {
        let data = BTreeMap::from([
            ("k".to_string(), b"v".to_vec()),
            ("o".to_string(), b"w".to_vec()),
        ]);
        let items = vec![KeyToPath {
            key: "k".into(),
            path: "dir/file".into(),
            mode: Some(0o400),
        }];
        let f = key_files(&data, Some(&items), 0o644, false, "configmap").unwrap_or_default();
        assert_eq!(f.get("dir/file"), Some(&(b"v".to_vec(), 0o400)));
        assert_eq!(f.len(), 1);
        let missing = vec![KeyToPath {
            key: "nope".into(),
            path: "x".into(),
            mode: None,
        }];
        let e = key_files(&data, Some(&missing), 0o644, false, "configmap")
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("configmap references non-existent config key: nope")
        );
        assert!(
            key_files(&data, Some(&missing), 0o644, true, "configmap").is_ok_and(|f| f.is_empty())
        );
    }

    #[test]
    fn downward_fields() {
        let pod = Pod {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("p".into()),
                namespace: Some("n".into()),
                labels: Some(BTreeMap::from([
                    ("app".to_string(), "web".to_string()),
                    ("b".to_string(), "x".to_string()),
                ])),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            field_value(&pod, "metadata.namespace", "1.2.3.4").as_deref(),
            Some("n")
        );
        assert_eq!(
            field_value(&pod, "metadata.labels['app']", "").as_deref(),
            Some("web")
        );
        assert_eq!(
            field_value(&pod, "metadata.labels", "").as_deref(),
            Some("app=\"web\"\nb=\"x\"")
        );
        assert_eq!(
            field_value(&pod, "status.hostIP", "1.2.3.4").as_deref(),
            Some("1.2.3.4")
        );
        assert_eq!(field_value(&pod, "spec.bogus", ""), None);
    }

    fn mount(expr: Option<&str>, plain: Option<&str>) -> VolumeMount {
        VolumeMount {
            name: "workdir1".into(),
            mount_path: "/subpath_mount".into(),
            sub_path_expr: expr.map(Into::into),
            sub_path: plain.map(Into::into),
            ..Default::default()
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sub_path_expr_expands_from_the_environment() {
        let e = env(&[("POD_NAME", "foo"), ("ANNOTATION", "mypath")]);
        let got = mount_sub_path(&mount(Some("$(ANNOTATION)/$(POD_NAME)"), None), &e);
        assert_eq!(got.ok().flatten().as_deref(), Some("mypath/foo"));
        // `$$` escapes a `$`; a plain subPath is used as it is.
        let got = mount_sub_path(&mount(Some("a$$(POD_NAME)"), None), &e);
        assert_eq!(got.ok().flatten().as_deref(), Some("a$(POD_NAME)"));
        let got = mount_sub_path(&mount(None, Some("x/y")), &e);
        assert_eq!(got.ok().flatten().as_deref(), Some("x/y"));
        assert!(mount_sub_path(&mount(None, None), &e).is_ok_and(|s| s.is_none()));
        // A component that only starts with `..` stays in the volume.
        let got = mount_sub_path(&mount(None, Some("..a/b")), &e);
        assert_eq!(got.ok().flatten().as_deref(), Some("..a/b"));
    }

    #[test]
    fn sub_path_expr_errors_have_upstreams_messages() {
        let msg = |m: VolumeMount, e: &[(&str, &str)]| {
            mount_sub_path(&m, &env(e)).err().map(|e| e.to_string())
        };
        // An unset or empty variable: the annotation is not there yet.
        assert_eq!(
            msg(
                mount(Some("$(ANNOTATION)/$(POD_NAME)/$(B)"), None),
                &[("POD_NAME", "foo"), ("ANNOTATION", "")]
            )
            .as_deref(),
            Some("missing value for ANNOTATION, B")
        );
        assert_eq!(
            msg(mount(Some("$(POD_NAME)"), None), &[("POD_NAME", "/tmp")]).as_deref(),
            Some("error SubPath `/tmp` must not be an absolute path")
        );
        assert_eq!(
            msg(mount(Some("$(POD_NAME)"), None), &[("POD_NAME", "..")]).as_deref(),
            Some("unable to provision SubPath `..`: must not contain '..'")
        );
        assert_eq!(
            msg(mount(None, Some("a/../../b")), &[]).as_deref(),
            Some("unable to provision SubPath `a/../../b`: must not contain '..'")
        );
    }

    #[test]
    fn sub_path_directories_are_created_with_the_volumes_mode() {
        let Ok(d) = tempfile::tempdir() else {
            panic!("tempdir")
        };
        let root = d.path().join("vol");
        assert!(std::fs::create_dir(&root).is_ok());
        assert!(std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).is_ok());
        let vols = HashMap::from([(
            "workdir1".to_string(),
            VolumeInfo {
                host_path: root.clone(),
                read_only: false,
            },
        )]);
        let c = Container {
            name: "dapi-container".into(),
            volume_mounts: Some(vec![
                mount(Some("$(ANNOTATION)/$(POD_NAME)"), None),
                VolumeMount {
                    name: "workdir1".into(),
                    mount_path: "/volume_mount".into(),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        let e = env(&[("POD_NAME", "foo"), ("ANNOTATION", "mypath")]);
        let Ok(mounts) = container_mounts(&c, &vols, &e) else {
            panic!("mounts")
        };
        let want = root.join("mypath/foo");
        assert_eq!(mounts[0].host_path, want.to_string_lossy());
        assert_eq!(mounts[1].host_path, root.to_string_lossy());
        assert!(want.is_dir());
        for p in [root.join("mypath"), want] {
            let mode = std::fs::metadata(&p).map(|m| m.permissions().mode() & 0o7777);
            assert_eq!(mode.ok(), Some(0o777), "{}", p.display());
        }
        // Without the variable the container cannot be created.
        let e = env(&[("POD_NAME", "foo")]);
        let err = container_mounts(&c, &vols, &e).err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("missing value for ANNOTATION"));
        // A symbolic link inside the volume does not lead out of it.
        let outside = d.path().join("outside");
        assert!(std::fs::create_dir(&outside).is_ok());
        assert!(std::os::unix::fs::symlink(&outside, root.join("link")).is_ok());
        let e = env(&[("POD_NAME", "foo"), ("ANNOTATION", "link")]);
        let err = container_mounts(&c, &vols, &e).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("failed to create subPath directory for volumeMount \"workdir1\" of container \"dapi-container\"")
        );
        assert!(!outside.join("foo").exists(), "nothing created outside");
    }
}
