//! Static pods: pods the node runs from manifest files in
//! `<data-dir>/agent/pod-manifests/` (`*.yaml`, `*.yml`, `*.json`), without the API
//! server being involved, and the mirror pods that make them visible in the API.
//!
//! As upstream's kubelet file source: a manifest's pod gets the name
//! `<name>-<nodeName>`, namespace `default` when it has none, `spec.nodeName` set to this
//! node, a toleration of every `NoExecute` taint, and a UID that is a hash of the node,
//! the file path and the pod. That UID is also its `kubernetes.io/config.hash`
//! annotation, so any edit of the file makes a new pod (the old one is stopped). The
//! directory is read every second; a file that does not parse keeps its previous pod.
//!
//! As upstream's mirror client: for each static pod a mirror pod of the same name is
//! created in the API with the static pod's annotations plus `kubernetes.io/config.mirror`
//! (the hash) and an owner reference to the Node. A mirror pod that is being deleted
//! (`kubectl delete pod`), whose hash differs from the static pod's, or whose static pod
//! is gone is deleted at once (grace period 0, UID precondition) and, while its static
//! pod exists, created again; the static pod keeps running throughout. The status the
//! pod workers post lands on the mirror pod (same name), and the mirror's status is fed
//! back into the static pod so that conditions keep their transition times.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// Annotation of a mirror pod: the hash of the static pod it mirrors.
pub const ANNOTATION_MIRROR: &str = "kubernetes.io/config.mirror";
/// Annotation naming where a pod came from (`file` for static pods, `api` otherwise).
pub const ANNOTATION_SOURCE: &str = "kubernetes.io/config.source";
/// Annotation holding a static pod's hash (also its UID).
pub const ANNOTATION_HASH: &str = "kubernetes.io/config.hash";
/// Annotation holding when the kubelet first saw the pod.
pub const ANNOTATION_SEEN: &str = "kubernetes.io/config.seen";

/// How often the manifest directory is read.
const SCAN_PERIOD: Duration = Duration::from_secs(1);
/// Bound on one round of mirror-pod API calls, so a slow API server never holds up the
/// static pods themselves.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(5);

/// `<data-dir>/agent/pod-manifests`: the static pod manifests.
pub fn manifests_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("agent/pod-manifests")
}

/// True for a mirror pod (a pod in the API that stands for a static pod).
pub fn is_mirror_pod(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(ANNOTATION_MIRROR))
}

/// True for a static pod (one that came from a manifest file, not from the API).
pub fn is_static_pod(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_SOURCE))
        .is_some_and(|s| s != "api")
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// Errors reading a manifest.
#[derive(Debug, thiserror::Error)]
pub enum StaticPodError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The manifest.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not a valid pod manifest.
    #[error("{path}: {message}")]
    Invalid {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn is_manifest(p: &Path) -> bool {
    let hidden = p
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    !hidden
        && matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        )
}

/// Parses one manifest into the static pod this node runs for it (defaults applied as
/// upstream's file source does; `seen` becomes the `kubernetes.io/config.seen` annotation).
pub fn parse_manifest(
    path: &Path,
    content: &[u8],
    node_name: &str,
    seen: &str,
) -> Result<Pod, StaticPodError> {
    let invalid = |message: String| StaticPodError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let value: Value = if path.extension().and_then(|e| e.to_str()) == Some("json") {
        serde_json::from_slice(content).map_err(|e| invalid(format!("invalid JSON: {e}")))?
    } else {
        serde_yaml::from_slice(content).map_err(|e| invalid(format!("invalid YAML: {e}")))?
    };
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if kind != "Pod" || api_version != "v1" {
        return Err(invalid(format!(
            "not a v1 Pod (apiVersion {api_version:?}, kind {kind:?})"
        )));
    }
    let mut pod: Pod =
        serde_json::from_value(value.clone()).map_err(|e| invalid(format!("invalid pod: {e}")))?;
    let name = pod
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| invalid("invalid pod: metadata.name: Required value".into()))?;
    let spec = pod
        .spec
        .as_mut()
        .ok_or_else(|| invalid("invalid pod: spec: Required value".into()))?;
    if spec.containers.is_empty() {
        return Err(invalid(
            "invalid pod: spec.containers: Required value".into(),
        ));
    }
    for (i, c) in spec.containers.iter().enumerate() {
        if c.name.is_empty() {
            return Err(invalid(format!(
                "invalid pod: spec.containers[{i}].name: Required value"
            )));
        }
        if c.image.as_deref().unwrap_or_default().is_empty() {
            return Err(invalid(format!(
                "invalid pod: spec.containers[{i}].image: Required value"
            )));
        }
    }
    // The UID: a hash of where the pod comes from and what it is.
    let canonical = serde_json::to_vec(&value).unwrap_or_default();
    let mut input = format!("host:{node_name}file:{}", path.display()).into_bytes();
    input.extend_from_slice(&canonical);
    let digest = ring::digest::digest(&ring::digest::SHA256, &input);
    let uid: String = digest
        .as_ref()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();

    spec.node_name = Some(node_name.to_string());
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    let tolerates_all = tolerations.iter().any(|t| {
        t.key.as_deref().unwrap_or_default().is_empty()
            && t.operator.as_deref() == Some("Exists")
            && t.effect.as_deref() == Some("NoExecute")
    });
    if !tolerates_all {
        tolerations.push(k8s_openapi::api::core::v1::Toleration {
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            ..Default::default()
        });
    }
    pod.metadata.name = Some(format!("{name}-{}", node_name.to_lowercase()));
    if pod
        .metadata
        .namespace
        .as_deref()
        .unwrap_or_default()
        .is_empty()
    {
        pod.metadata.namespace = Some("default".into());
    }
    pod.metadata.uid = Some(uid.clone());
    let ann = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    ann.insert(ANNOTATION_HASH.into(), uid);
    ann.insert(ANNOTATION_SOURCE.into(), "file".into());
    ann.insert(ANNOTATION_SEEN.into(), seen.to_string());
    pod.status = None;
    Ok(pod)
}

/// The mirror pod of a static pod, as created in the API: the static pod's metadata
/// (without its UID) plus `kubernetes.io/config.mirror` and a controller owner reference
/// to the Node.
pub fn mirror_pod(static_pod: &Pod, node_name: &str, node_uid: &str) -> Value {
    let m = &static_pod.metadata;
    let mut ann = m.annotations.clone().unwrap_or_default();
    ann.insert(
        ANNOTATION_MIRROR.into(),
        ann.get(ANNOTATION_HASH).cloned().unwrap_or_default(),
    );
    let mut meta = json!({
        "name": m.name,
        "namespace": m.namespace,
        "annotations": ann,
        "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid, "controller": true}],
    });
    if let Some(l) = &m.labels {
        meta["labels"] = json!(l);
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": static_pod.spec})
}

/// Where the static pods go: the pod workers.
pub trait PodSink: Send + Sync {
    /// Runs (or updates) a static pod.
    fn update(&self, pod: Pod);
    /// Stops the static pod with this UID.
    fn remove(&self, uid: &str);
}

/// What the node's pod watch saw of mirror pods.
#[derive(Debug)]
pub enum MirrorEvent {
    /// A mirror pod was added or changed.
    Apply(Pod),
    /// A mirror pod was deleted.
    Delete(Pod),
    /// The watch (re)listed: these are all the mirror pods on the node.
    Replace(Vec<Pod>),
}

/// A manifest as last read.
struct Manifest {
    content: Vec<u8>,
    pod: Option<Pod>,
}

/// The static pod source and mirror-pod manager of one node.
pub struct StaticPods {
    client: kube::Client,
    node_name: String,
    dir: PathBuf,
    sink: Arc<dyn PodSink>,
    files: BTreeMap<PathBuf, Manifest>,
    /// The running static pods by `namespace/name`.
    pods: BTreeMap<String, Pod>,
    /// The mirror pods in the API by `namespace/name` (from the pod watch).
    mirrors: HashMap<String, Pod>,
    mirrors_synced: bool,
    /// First time each hash was seen (the `config.seen` annotation).
    seen: HashMap<String, String>,
}

fn key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

fn rv(pod: &Pod) -> u64 {
    pod.metadata
        .resource_version
        .as_deref()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

impl StaticPods {
    /// A source reading `dir` for node `node_name`, running its pods through `sink`.
    pub fn new(
        client: kube::Client,
        node_name: &str,
        dir: PathBuf,
        sink: Arc<dyn PodSink>,
    ) -> Self {
        StaticPods {
            client,
            node_name: node_name.to_string(),
            dir,
            sink,
            files: BTreeMap::new(),
            pods: BTreeMap::new(),
            mirrors: HashMap::new(),
            mirrors_synced: false,
            seen: HashMap::new(),
        }
    }

    /// The static pods running now.
    pub fn pods(&self) -> Vec<Pod> {
        self.pods.values().cloned().collect()
    }

    /// Reads the manifest directory and starts, replaces or stops static pods. Returns
    /// true when a pod changed.
    pub fn scan(&mut self) -> bool {
        let _ = std::fs::create_dir_all(&self.dir);
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_file() && is_manifest(p))
                    .collect()
            })
            .unwrap_or_default();
        paths.sort();
        self.files.retain(|p, _| paths.contains(p));
        for p in &paths {
            let content = match std::fs::read(p) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %StaticPodError::Read { path: p.clone(), source: e }, "cannot read static pod manifest");
                    continue;
                }
            };
            if self.files.get(p).is_some_and(|m| m.content == content) {
                continue;
            }
            let now = jiff::Timestamp::now().to_string();
            let parsed = parse_manifest(p, &content, &self.node_name, &now).map(|mut pod| {
                // Keep the first-seen time of a hash across re-reads.
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                let seen = self.seen.entry(uid).or_insert(now).clone();
                if let Some(a) = pod.metadata.annotations.as_mut() {
                    a.insert(ANNOTATION_SEEN.into(), seen);
                }
                pod
            });
            match parsed {
                Ok(pod) => {
                    self.files.insert(
                        p.clone(),
                        Manifest {
                            content,
                            pod: Some(pod),
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "invalid static pod manifest; keeping the previous pod of this file");
                    let previous = self.files.remove(p).and_then(|m| m.pod);
                    self.files.insert(
                        p.clone(),
                        Manifest {
                            content,
                            pod: previous,
                        },
                    );
                }
            }
        }
        let mut want: BTreeMap<String, Pod> = BTreeMap::new();
        for (p, m) in &self.files {
            let Some(pod) = &m.pod else { continue };
            let k = key(pod);
            if want.contains_key(&k) {
                tracing::warn!(file = %p.display(), pod = %k, "a static pod of this name exists already; ignoring the manifest");
                continue;
            }
            want.insert(k, pod.clone());
        }
        let mut changed = false;
        let uid = |p: &Pod| p.metadata.uid.clone().unwrap_or_default();
        for (k, old) in &self.pods {
            if want.get(k).is_none_or(|n| uid(n) != uid(old)) {
                tracing::info!(pod = %k, uid = %uid(old), "static pod removed or changed; stopping it");
                self.sink.remove(&uid(old));
                changed = true;
            }
        }
        for (k, new) in &want {
            if self.pods.get(k).is_none_or(|o| uid(o) != uid(new)) {
                tracing::info!(pod = %k, uid = %uid(new), "starting static pod");
                let mut pod = new.clone();
                // Carry the status the API holds for this very pod (agent restarts).
                if let Some(m) = self
                    .mirrors
                    .get(k)
                    .filter(|m| annotation(m, ANNOTATION_MIRROR) == Some(uid(new).as_str()))
                {
                    pod.status = m.status.clone();
                }
                self.sink.update(pod);
                changed = true;
            }
        }
        let hashes: std::collections::HashSet<String> = want.values().map(uid).collect();
        self.seen.retain(|h, _| hashes.contains(h));
        // Keep the statuses already fed back into unchanged pods.
        for (k, p) in want.iter_mut() {
            if let Some(old) = self.pods.get(k).filter(|o| uid(o) == uid(p)) {
                p.status = old.status.clone();
            }
        }
        self.pods = want;
        changed
    }

    /// Takes in what the pod watch saw of a mirror pod.
    pub fn on_event(&mut self, ev: MirrorEvent) {
        match ev {
            MirrorEvent::Apply(m) => self.apply_mirror(m),
            MirrorEvent::Delete(m) => {
                let k = key(&m);
                if self
                    .mirrors
                    .get(&k)
                    .is_some_and(|c| c.metadata.uid == m.metadata.uid)
                {
                    self.mirrors.remove(&k);
                }
            }
            MirrorEvent::Replace(list) => {
                self.mirrors.clear();
                for m in list {
                    self.apply_mirror(m);
                }
                self.mirrors_synced = true;
            }
        }
    }

    fn apply_mirror(&mut self, m: Pod) {
        let k = key(&m);
        if self.mirrors.get(&k).is_some_and(|c| rv(c) > rv(&m)) {
            return;
        }
        // Feed the mirror's status back into its static pod.
        if let Some(sp) = self.pods.get_mut(&k) {
            let same = m.metadata.deletion_timestamp.is_none()
                && annotation(&m, ANNOTATION_MIRROR) == sp.metadata.uid.as_deref();
            if same && m.status.is_some() && m.status != sp.status {
                sp.status = m.status.clone();
                self.sink.update(sp.clone());
            }
        }
        self.mirrors.insert(k, m);
    }

    /// Makes the mirror pods match the static pods: deletes mirrors that are being
    /// deleted, outdated or orphaned, and creates the missing ones.
    pub async fn sync_mirrors(&mut self) {
        if !self.mirrors_synced {
            return;
        }
        let api_for = |ns: &str| -> Api<Pod> { Api::namespaced(self.client.clone(), ns) };
        // Orphans: mirrors of static pods that are gone.
        let orphans: Vec<Pod> = self
            .mirrors
            .iter()
            .filter(|(k, _)| !self.pods.contains_key(*k))
            .map(|(_, m)| m.clone())
            .collect();
        for m in orphans {
            if self
                .delete_mirror(
                    &api_for(m.metadata.namespace.as_deref().unwrap_or("default")),
                    &m,
                )
                .await
            {
                tracing::info!(pod = %key(&m), "deleted the mirror pod of a static pod that is gone");
                self.mirrors.remove(&key(&m));
            }
        }
        let pods: Vec<(String, Pod)> = self
            .pods
            .iter()
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect();
        for (k, sp) in pods {
            let hash = sp.metadata.uid.clone().unwrap_or_default();
            let api = api_for(sp.metadata.namespace.as_deref().unwrap_or("default"));
            let mut carry_status = None;
            if let Some(m) = self.mirrors.get(&k).cloned() {
                let matches = annotation(&m, ANNOTATION_MIRROR) == Some(hash.as_str());
                if matches && m.metadata.deletion_timestamp.is_none() {
                    continue;
                }
                if !self.delete_mirror(&api, &m).await {
                    continue;
                }
                tracing::info!(pod = %k, outdated = !matches, "deleted the mirror pod; creating it again");
                self.mirrors.remove(&k);
                if matches {
                    carry_status = m.status.clone();
                }
            }
            let node_uid = match Api::<Node>::all(self.client.clone())
                .get_opt(&self.node_name)
                .await
            {
                Ok(Some(n)) => n.metadata.uid.unwrap_or_default(),
                Ok(None) => {
                    tracing::debug!(node = %self.node_name, "node not registered yet; mirror pods wait");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the node for mirror pods");
                    return;
                }
            };
            let body = mirror_pod(&sp, &self.node_name, &node_uid);
            let body: Pod = match serde_json::from_value(body) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(pod = %k, error = %e, "cannot build the mirror pod");
                    continue;
                }
            };
            match api.create(&PostParams::default(), &body).await {
                Ok(created) => {
                    tracing::info!(pod = %k, uid = ?created.metadata.uid, "created mirror pod");
                    let name = created.metadata.name.clone().unwrap_or_default();
                    self.mirrors.insert(k.clone(), created);
                    if let Some(status) = carry_status.filter(|s| s.phase.is_some()) {
                        if let Err(e) = api
                            .patch_status(
                                &name,
                                &PatchParams::default(),
                                &Patch::Merge(&json!({"status": status})),
                            )
                            .await
                        {
                            tracing::warn!(pod = %k, error = %e, "cannot restore the mirror pod's status");
                        }
                    }
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    tracing::debug!(pod = %k, "mirror pod exists already");
                }
                Err(e) => tracing::warn!(pod = %k, error = %e, "cannot create the mirror pod"),
            }
        }
    }

    /// Deletes a mirror pod at once (grace period 0, UID precondition); true when it is
    /// gone.
    async fn delete_mirror(&self, api: &Api<Pod>, m: &Pod) -> bool {
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: m.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api
            .delete(m.metadata.name.as_deref().unwrap_or_default(), &dp)
            .await
        {
            Ok(_) => true,
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => true,
            Err(e) => {
                tracing::warn!(pod = %key(m), error = %e, "cannot delete the mirror pod");
                false
            }
        }
    }

    /// Runs the source: reads the directory every second and after each mirror event
    /// reconciles the mirror pods, until the event channel closes.
    pub async fn run(mut self, mut events: mpsc::UnboundedReceiver<MirrorEvent>) {
        let mut tick = tokio::time::interval(SCAN_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => {
                        self.on_event(ev);
                        while let Ok(ev) = events.try_recv() {
                            self.on_event(ev);
                        }
                    }
                    None => return,
                },
                _ = tick.tick() => {
                    self.scan();
                }
            }
            if tokio::time::timeout(MIRROR_TIMEOUT, self.sync_mirrors())
                .await
                .is_err()
            {
                tracing::warn!("mirror pod sync timed out");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels: {app: web}\nspec:\n  containers:\n  - name: c\n    image: busybox\n";

    #[test]
    fn file_source_defaults_are_upstreams() {
        let p = Path::new("/m/web.yaml");
        let pod = parse_manifest(p, MANIFEST.as_bytes(), "Node1", "t").unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("web-node1"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("default"));
        let uid = pod.metadata.uid.clone().unwrap();
        assert_eq!(uid.len(), 32);
        let ann = pod.metadata.annotations.clone().unwrap();
        assert_eq!(ann.get(ANNOTATION_HASH), Some(&uid));
        assert_eq!(ann.get(ANNOTATION_SOURCE).map(String::as_str), Some("file"));
        let spec = pod.spec.clone().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("Node1"));
        let tol = spec.tolerations.unwrap();
        assert!(tol.iter().any(|t| t.operator.as_deref() == Some("Exists")
            && t.effect.as_deref() == Some("NoExecute")
            && t.key.is_none()));
        assert!(is_static_pod(&pod));
        assert!(!is_mirror_pod(&pod));

        // Same file, same content: same hash; an edit or another path changes it.
        let again = parse_manifest(p, MANIFEST.as_bytes(), "Node1", "later").unwrap();
        assert_eq!(again.metadata.uid.as_deref(), Some(uid.as_str()));
        let edited = parse_manifest(
            p,
            MANIFEST.replace("busybox", "busybox:2").as_bytes(),
            "Node1",
            "t",
        )
        .unwrap();
        assert_ne!(edited.metadata.uid.as_deref(), Some(uid.as_str()));
        let moved = parse_manifest(
            Path::new("/m/other.yaml"),
            MANIFEST.as_bytes(),
            "Node1",
            "t",
        )
        .unwrap();
        assert_ne!(moved.metadata.uid.as_deref(), Some(uid.as_str()));
    }

    #[test]
    fn json_manifests_and_invalid_ones() {
        let json = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"j","namespace":"kube-system"},"spec":{"containers":[{"name":"c","image":"i"}]}}"#;
        let pod = parse_manifest(Path::new("/m/j.json"), json.as_bytes(), "n", "t").unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("j-n"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("kube-system"));
        let e = parse_manifest(
            Path::new("/m/d.yaml"),
            b"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n",
            "n",
            "t",
        )
        .err()
        .map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("/m/d.yaml: not a v1 Pod (apiVersion \"apps/v1\", kind \"Deployment\")")
        );
        let e = parse_manifest(
            Path::new("/m/e.yaml"),
            b"apiVersion: v1\nkind: Pod\nmetadata: {name: e}\nspec: {containers: []}\n",
            "n",
            "t",
        )
        .err()
        .map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("/m/e.yaml: invalid pod: spec.containers: Required value")
        );
        assert!(parse_manifest(Path::new("/m/x.yaml"), b"{ not yaml", "n", "t").is_err());
        assert!(is_manifest(Path::new("/m/a.yml")) && is_manifest(Path::new("/m/a.json")));
        assert!(
            !is_manifest(Path::new("/m/a.txt"))
                && !is_manifest(Path::new("/m/.a.yaml"))
                && !is_manifest(Path::new("/m/a.yaml.swp"))
        );
    }

    #[test]
    fn mirror_pod_shape() {
        let pod = parse_manifest(Path::new("/m/web.yaml"), MANIFEST.as_bytes(), "n1", "t").unwrap();
        let m = mirror_pod(&pod, "n1", "node-uid");
        let hash = pod.metadata.uid.clone().unwrap();
        assert_eq!(m["metadata"]["name"], "web-n1");
        assert_eq!(m["metadata"]["annotations"][ANNOTATION_MIRROR], json!(hash));
        assert_eq!(m["metadata"]["annotations"][ANNOTATION_HASH], json!(hash));
        assert_eq!(m["metadata"]["annotations"][ANNOTATION_SOURCE], "file");
        assert_eq!(m["metadata"]["labels"]["app"], "web");
        assert_eq!(
            m["metadata"]["ownerReferences"],
            json!([{"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "node-uid", "controller": true}])
        );
        assert!(
            m["metadata"].get("uid").is_none(),
            "the API server gives the mirror its own UID"
        );
        assert_eq!(m["spec"]["nodeName"], "n1");
        let mp: Pod = serde_json::from_value(m).unwrap();
        assert!(is_mirror_pod(&mp));
    }

    struct Recorder(std::sync::Mutex<Vec<String>>);
    impl PodSink for Recorder {
        fn update(&self, pod: Pod) {
            if let Ok(mut v) = self.0.lock() {
                v.push(format!(
                    "update {} {}",
                    pod.metadata.name.unwrap_or_default(),
                    pod.metadata.uid.unwrap_or_default()
                ));
            }
        }
        fn remove(&self, uid: &str) {
            if let Ok(mut v) = self.0.lock() {
                v.push(format!("remove {uid}"));
            }
        }
    }

    fn test_client() -> kube::Client {
        // Never called: scan() does no API call.
        let cfg = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        kube::Client::try_from(cfg).unwrap()
    }

    #[tokio::test]
    async fn scan_starts_replaces_and_stops_pods() {
        let d = tempfile::tempdir().unwrap();
        let rec = Arc::new(Recorder(std::sync::Mutex::new(Vec::new())));
        let mut sp = StaticPods::new(test_client(), "n1", d.path().join("manifests"), rec.clone());
        assert!(!sp.scan(), "an empty (created) directory runs nothing");
        let f = d.path().join("manifests/web.yaml");
        std::fs::write(&f, MANIFEST).unwrap();
        std::fs::write(d.path().join("manifests/notes.txt"), "x").unwrap();
        assert!(sp.scan());
        let uid1 = sp.pods()[0].metadata.uid.clone().unwrap();
        assert!(!sp.scan(), "unchanged files change nothing");
        // A broken edit keeps the pod.
        std::fs::write(&f, "apiVersion: v1\nkind: Pod\nmetadata: [").unwrap();
        assert!(!sp.scan());
        std::fs::write(&f, MANIFEST.replace("image: busybox", "image: busybox:2")).unwrap();
        assert!(sp.scan());
        let uid2 = sp.pods()[0].metadata.uid.clone().unwrap();
        assert_ne!(uid1, uid2);
        std::fs::remove_file(&f).unwrap();
        assert!(sp.scan());
        assert!(sp.pods().is_empty());
        let log = rec.0.lock().unwrap().clone();
        assert_eq!(
            log,
            vec![
                format!("update web-n1 {uid1}"),
                format!("remove {uid1}"),
                format!("update web-n1 {uid2}"),
                format!("remove {uid2}")
            ]
        );
    }

    #[tokio::test]
    async fn mirror_status_feeds_the_static_pod() {
        let d = tempfile::tempdir().unwrap();
        let rec = Arc::new(Recorder(std::sync::Mutex::new(Vec::new())));
        std::fs::create_dir_all(d.path().join("m")).unwrap();
        std::fs::write(d.path().join("m/web.yaml"), MANIFEST).unwrap();
        let mut sp = StaticPods::new(test_client(), "n1", d.path().join("m"), rec.clone());
        sp.scan();
        let pod = sp.pods()[0].clone();
        let mut mirror: Pod = serde_json::from_value(mirror_pod(&pod, "n1", "u")).unwrap();
        mirror.metadata.uid = Some("mirror-uid".into());
        mirror.metadata.resource_version = Some("5".into());
        mirror.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Running".into()),
            ..Default::default()
        });
        sp.on_event(MirrorEvent::Replace(vec![mirror.clone()]));
        assert_eq!(
            sp.pods()[0]
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref()),
            Some("Running")
        );
        assert_eq!(
            rec.0.lock().unwrap().len(),
            2,
            "the status update re-dispatches the pod"
        );
        // An older event does not overwrite the cache; a delete of another UID is ignored.
        let mut old = mirror.clone();
        old.metadata.resource_version = Some("3".into());
        old.metadata.uid = Some("older".into());
        sp.on_event(MirrorEvent::Apply(old.clone()));
        sp.on_event(MirrorEvent::Delete(old));
        assert_eq!(
            sp.mirrors
                .get("default/web-n1")
                .and_then(|m| m.metadata.uid.as_deref()),
            Some("mirror-uid")
        );
        sp.on_event(MirrorEvent::Delete(mirror));
        assert!(sp.mirrors.is_empty());
    }
}
