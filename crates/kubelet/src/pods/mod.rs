//! The pod workers: a watch of the pods bound to this node drives one worker task per
//! pod, which reconciles the pod with the runtime (CRI) and reports its status.
//!
//! A sync of a pod, as upstream's kubelet: terminate it when it is being deleted; make
//! sure it has a ready sandbox (creating one, with its volumes, when not); run the init
//! containers one after the other; then start or restart the containers as the
//! `restartPolicy` says, with CrashLoopBackOff (10 s, doubling to 5 min) between
//! restarts; run the probes; and patch the pod's status when it changed. Everything is
//! derived from what the runtime reports (labels on sandboxes and containers), so an
//! agent restarted while its pods run adopts them without restarting anything.
//!
//! A relist of the runtime every second (upstream's PLEG) wakes the worker of a pod
//! whose containers changed state.
//!
//! Static pods (manifest files, [`crate::static_pods`]) run on the same workers; mirror
//! pods seen by the watch go to the static pod source instead of a worker.

pub mod admission;
mod ephemeral;
pub mod grpc_probe;
pub mod probes;
pub mod spec;
pub mod status;
mod worker;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher;
use tokio::sync::{watch, Notify};

use crate::cri::types::{PodSandboxFilter, PodSandboxState};
use crate::cri::CriClient;
use crate::static_pods::{self, MirrorEvent, StaticPods};
use crate::volumes::VolumeManager;
use crate::KubeletError;

pub use spec::{LABEL_CONTAINER_NAME, LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID};

/// Settings of the pod workers.
#[derive(Clone, Debug)]
pub struct PodConfig {
    /// This node's name.
    pub node_name: String,
    /// This node's IP (`status.hostIP`).
    pub node_ip: String,
    /// The rk3s data dir.
    pub data_dir: PathBuf,
    /// Cluster DNS servers.
    pub cluster_dns: Vec<String>,
    /// Cluster domain.
    pub cluster_domain: String,
}

impl PodConfig {
    /// Root of the container logs (upstream's `/var/log/pods`): `<data-dir>/agent/pod-logs`.
    pub fn log_root(&self) -> PathBuf {
        log_root(&self.data_dir)
    }

    /// Root of the pod directories (upstream's `/var/lib/kubelet/pods`).
    pub fn pods_root(&self) -> PathBuf {
        self.data_dir.join("agent/pods")
    }
}

/// `<data-dir>/agent/pod-logs`: the root of container logs, laid out below as
/// upstream's `/var/log/pods/<ns>_<pod>_<uid>/<container>/<restart>.log`.
pub fn log_root(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("agent/pod-logs")
}

/// The log file of a container instance.
pub fn container_log_path(
    data_dir: &std::path::Path,
    ns: &str,
    pod: &str,
    uid: &str,
    container: &str,
    restart: u32,
) -> PathBuf {
    log_root(data_dir)
        .join(format!("{ns}_{pod}_{uid}"))
        .join(container)
        .join(format!("{restart}.log"))
}

/// What every worker shares.
pub(crate) struct Shared {
    pub client: kube::Client,
    pub cri: CriClient,
    pub cfg: PodConfig,
    pub ctx: spec::SpecContext,
    pub volumes: VolumeManager,
    pub node_cpus: usize,
    pub events: crate::events::Recorder,
}

struct WorkerHandle {
    tx: watch::Sender<Option<Pod>>,
    wake: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
    /// The pod passed admission (false: the task reports its rejection).
    admitted: bool,
}

type Workers = Arc<Mutex<HashMap<String, WorkerHandle>>>;

/// Runs the pod workers for this node until the watch ends for good.
pub async fn run(client: kube::Client, cri: CriClient, cfg: PodConfig) -> Result<(), KubeletError> {
    let host = crate::node::HostResources::probe(&cfg.data_dir);
    let ctx = spec::SpecContext {
        cluster_dns: cfg.cluster_dns.clone(),
        cluster_domain: cfg.cluster_domain.clone(),
        host_resolv_conf: spec::host_resolv_conf(),
        node_memory: host.memory_bytes,
        log_root: cfg.log_root(),
    };
    let volumes = VolumeManager::new(
        client.clone(),
        cfg.pods_root(),
        cfg.node_ip.clone(),
        host.cpus,
        host.memory_bytes,
    );
    let shared = Arc::new(Shared {
        client: client.clone(),
        cri,
        cfg: cfg.clone(),
        ctx,
        volumes,
        node_cpus: host.cpus,
        events: crate::events::Recorder::new(client.clone(), &cfg.node_name),
    });
    let workers: Workers = Arc::new(Mutex::new(HashMap::new()));
    let pleg = tokio::spawn(relist(shared.clone(), workers.clone()));
    let mut housekeeping: Option<tokio::task::JoinHandle<()>> = None;

    // Static pods start at once, before (and without) the API server.
    let sink = Arc::new(WorkerSink {
        shared: shared.clone(),
        workers: workers.clone(),
    });
    let mut statics = StaticPods::new(
        client.clone(),
        &cfg.node_name,
        static_pods::manifests_dir(&cfg.data_dir),
        sink,
    );
    statics.scan();
    let (mirror_tx, mirror_rx) = tokio::sync::mpsc::unbounded_channel();
    let static_task = tokio::spawn(statics.run(mirror_rx));

    let api: Api<Pod> = Api::all(client);
    let wc = watcher::Config::default().fields(&format!("spec.nodeName={}", cfg.node_name));
    let mut stream = watcher(api, wc).boxed();
    let mut init_seen: HashSet<String> = HashSet::new();
    let mut init_mirrors: Vec<Pod> = Vec::new();
    while let Some(ev) = stream.next().await {
        match ev {
            // Mirror pods stand for static pods: the static pod source handles them.
            Ok(watcher::Event::InitApply(pod)) if static_pods::is_mirror_pod(&pod) => {
                init_mirrors.push(pod)
            }
            Ok(watcher::Event::Apply(pod)) if static_pods::is_mirror_pod(&pod) => {
                let _ = mirror_tx.send(MirrorEvent::Apply(pod));
            }
            Ok(watcher::Event::Delete(pod)) if static_pods::is_mirror_pod(&pod) => {
                let _ = mirror_tx.send(MirrorEvent::Delete(pod));
            }
            Ok(watcher::Event::Apply(pod)) | Ok(watcher::Event::InitApply(pod)) => {
                if let Some(uid) = pod.metadata.uid.clone() {
                    init_seen.insert(uid);
                }
                dispatch(&shared, &workers, pod);
            }
            Ok(watcher::Event::Delete(pod)) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if let Ok(w) = workers.lock() {
                    if let Some(h) = w.get(&uid) {
                        let _ = h.tx.send(None);
                    }
                }
            }
            Ok(watcher::Event::Init) => {
                init_seen.clear();
                init_mirrors.clear();
            }
            Ok(watcher::Event::InitDone) => {
                let _ = mirror_tx.send(MirrorEvent::Replace(std::mem::take(&mut init_mirrors)));
                // Pods that vanished while the watch was down (or the agent was not
                // running) are torn down by their workers; unknown sandboxes by the
                // housekeeping. Static pods are not the API's to stop.
                if let Ok(w) = workers.lock() {
                    for (uid, h) in w.iter() {
                        let is_static =
                            h.tx.borrow()
                                .as_ref()
                                .is_some_and(static_pods::is_static_pod);
                        if !init_seen.contains(uid) && !is_static {
                            let _ = h.tx.send(None);
                        }
                    }
                }
                if housekeeping.is_none() {
                    housekeeping = Some(tokio::spawn(housekeep(shared.clone(), workers.clone())));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "pod watch failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    pleg.abort();
    static_task.abort();
    if let Some(h) = housekeeping {
        h.abort();
    }
    Err(KubeletError::Watch("pod watch ended".into()))
}

/// Runs static pods on the pod workers.
struct WorkerSink {
    shared: Arc<Shared>,
    workers: Workers,
}

impl static_pods::PodSink for WorkerSink {
    fn update(&self, pod: Pod) {
        dispatch(&self.shared, &self.workers, pod);
    }

    fn remove(&self, uid: &str) {
        if let Ok(w) = self.workers.lock() {
            if let Some(h) = w.get(uid) {
                let _ = h.tx.send(None);
            }
        }
    }
}

/// Hands a pod to its worker (starting one when there is none). The worker is woken
/// only when [`update_matters`]; other updates (the kubelet's own status patches, an
/// added owner reference, ...) are stored for the worker's next sync without waking it,
/// as upstream's pod config turns status-only updates into reconciles, not syncs.
///
/// A new pod is admitted first ([`admission`]), against the active pods admitted
/// before it (one at a time: the watch calls this in order); a rejected pod gets no
/// worker, only its `Failed` status.
fn dispatch(shared: &Arc<Shared>, workers: &Workers, pod: Pod) {
    let Some(uid) = pod.metadata.uid.clone() else {
        return;
    };
    let Ok(mut w) = workers.lock() else { return };
    if let Some(h) = w.get(&uid) {
        if !h.task.is_finished() {
            offer(&h.tx, pod);
            return;
        }
        // A finished worker whose pod is still there (e.g. a terminal pod being deleted
        // again): start over; every step is idempotent.
    }
    let verdict = if admission::needs_admission(&pod) {
        let active: Vec<Pod> = w
            .iter()
            .filter(|(other, h)| **other != uid && h.admitted && !h.task.is_finished())
            .filter_map(|(_, h)| h.tx.borrow().clone())
            .filter(admission::is_active)
            .collect();
        admission::admit(&pod, &active)
    } else {
        Ok(())
    };
    let (tx, rx) = watch::channel(Some(pod.clone()));
    let wake = Arc::new(Notify::new());
    let (task, admitted) = match verdict {
        Ok(()) => (
            tokio::spawn(worker::run(shared.clone(), rx, wake.clone())),
            true,
        ),
        Err(r) => (
            tokio::spawn(admission::reject(shared.clone(), pod, r)),
            false,
        ),
    };
    w.insert(
        uid,
        WorkerHandle {
            tx,
            wake,
            task,
            admitted,
        },
    );
}

/// Stores the newest version of a pod for its worker; wakes the worker (and returns
/// true) only when the update matters.
fn offer(tx: &watch::Sender<Option<Pod>>, pod: Pod) -> bool {
    tx.send_if_modified(|cur| {
        let wake = cur.as_ref().is_none_or(|old| update_matters(old, &pod));
        *cur = Some(pod);
        wake
    })
}

/// Whether a new version of a pod asks its worker to act: anything the kubelet acts on
/// changed — the spec (containers, ephemeral containers, resources, ...), labels or
/// annotations (downward API), `deletionTimestamp` or `deletionGracePeriodSeconds` — as
/// upstream's `podsDifferSemantically`. Status-only updates, most of them the kubelet's
/// own status patches, and other metadata (resourceVersion, managedFields, owner
/// references, finalizers) do not matter.
pub(crate) fn update_matters(old: &Pod, new: &Pod) -> bool {
    let (o, n) = (&old.metadata, &new.metadata);
    old.spec != new.spec
        || o.labels != n.labels
        || o.annotations != n.annotations
        || o.deletion_timestamp != n.deletion_timestamp
        || o.deletion_grace_period_seconds != n.deletion_grace_period_seconds
}

/// Relists the runtime every second and wakes the workers of pods whose containers or
/// sandboxes changed state.
async fn relist(shared: Arc<Shared>, workers: Workers) {
    let mut last: HashMap<String, (i32, String)> = HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut now: HashMap<String, (i32, String)> = HashMap::new();
        if let Ok(cs) = shared.cri.list_containers(None).await {
            for c in cs {
                let uid = c.labels.get(LABEL_POD_UID).cloned().unwrap_or_default();
                now.insert(c.id, (c.state, uid));
            }
        } else {
            continue;
        }
        if let Ok(ss) = shared.cri.list_pod_sandboxes(None).await {
            for s in ss {
                let uid = s.labels.get(LABEL_POD_UID).cloned().unwrap_or_default();
                now.insert(format!("sandbox/{}", s.id), (s.state + 10, uid));
            }
        }
        let mut changed: HashSet<&str> = HashSet::new();
        for (id, (state, uid)) in &now {
            if last.get(id).map(|x| x.0) != Some(*state) {
                changed.insert(uid);
            }
        }
        for (id, (_, uid)) in &last {
            if !now.contains_key(id) {
                changed.insert(uid);
            }
        }
        if !changed.is_empty() {
            if let Ok(w) = workers.lock() {
                for uid in changed {
                    if let Some(h) = w.get(uid) {
                        h.wake.notify_one();
                    }
                }
            }
        }
        last = now;
    }
}

/// Every 10 s: removes sandboxes (and pod directories) of pods this node no longer has
/// a worker for, and forgets finished workers.
async fn housekeep(shared: Arc<Shared>, workers: Workers) {
    loop {
        let known: HashSet<String> = match workers.lock() {
            Ok(mut w) => {
                w.retain(|_, h| !h.task.is_finished() || !h.tx.borrow().is_none());
                w.keys().cloned().collect()
            }
            Err(_) => HashSet::new(),
        };
        if let Ok(sandboxes) = shared.cri.list_pod_sandboxes(None).await {
            for s in sandboxes {
                let Some(uid) = s.labels.get(LABEL_POD_UID) else {
                    continue;
                };
                if known.contains(uid) {
                    continue;
                }
                tracing::info!(pod_uid = %uid, sandbox = %s.id, "removing the sandbox of a pod that is gone");
                if s.state == PodSandboxState::SandboxReady as i32 {
                    stop_all_containers(&shared.cri, &s.id, 2).await;
                    let _ = shared.cri.stop_pod_sandbox(&s.id).await;
                }
                let _ = shared.cri.remove_pod_sandbox(&s.id).await;
            }
        }
        if let Ok(rd) = std::fs::read_dir(shared.cfg.pods_root()) {
            for e in rd.flatten() {
                let uid = e.file_name().to_string_lossy().into_owned();
                if !known.contains(&uid) {
                    shared.volumes.teardown(&uid);
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

/// Stops every running container of a sandbox with the grace period.
pub(crate) async fn stop_all_containers(cri: &CriClient, sandbox_id: &str, grace: i64) {
    let filter = crate::cri::types::ContainerFilter {
        pod_sandbox_id: sandbox_id.to_string(),
        ..Default::default()
    };
    let Ok(cs) = cri.list_containers(Some(filter)).await else {
        return;
    };
    let futs = cs
        .iter()
        .filter(|c| c.state == crate::cri::types::ContainerState::ContainerRunning as i32)
        .map(|c| cri.stop_container(&c.id, grace));
    futures_util::future::join_all(futs).await;
}

/// The sandboxes of a pod (by UID label), newest first.
pub(crate) async fn pod_sandboxes(
    cri: &CriClient,
    uid: &str,
) -> Vec<crate::cri::types::PodSandbox> {
    let mut sel = HashMap::new();
    sel.insert(LABEL_POD_UID.to_string(), uid.to_string());
    let filter = PodSandboxFilter {
        label_selector: sel,
        ..Default::default()
    };
    let mut v = cri
        .list_pod_sandboxes(Some(filter))
        .await
        .unwrap_or_default();
    v.sort_by_key(|s| std::cmp::Reverse(s.created_at));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running_pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u-1", "resourceVersion": "10",
                         "labels": {"app": "web"}, "annotations": {"a": "1"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}], "nodeName": "n1"},
            "status": {"phase": "Pending"}
        }))
        .unwrap()
    }

    #[test]
    fn status_only_updates_do_not_matter() {
        let old = running_pod();
        let mut new = old.clone();
        new.metadata.resource_version = Some("11".into());
        new.status =
            serde_json::from_value(serde_json::json!({"phase": "Running", "podIP": "10.42.0.5",
            "conditions": [{"type": "Ready", "status": "True"}]}))
            .unwrap();
        new.metadata.managed_fields = Some(vec![Default::default()]);
        assert!(
            !update_matters(&old, &new),
            "the kubelet's own status patch"
        );
        new.metadata.owner_references = Some(vec![Default::default()]);
        new.metadata.finalizers = Some(vec!["x/y".into()]);
        assert!(
            !update_matters(&old, &new),
            "metadata the kubelet does not act on"
        );
    }

    #[test]
    fn spec_and_acted_on_metadata_matter() {
        let old = running_pod();
        let changed = |f: &dyn Fn(&mut Pod)| {
            let mut p = old.clone();
            f(&mut p);
            update_matters(&old, &p)
        };
        assert!(changed(&|p| p
            .metadata
            .labels
            .get_or_insert_default()
            .insert("tier".into(), "x".into())
            .map(|_| ())
            .unwrap_or(())));
        assert!(changed(&|p| p.metadata.annotations = None));
        assert!(changed(&|p| p.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now())
        )));
        assert!(changed(
            &|p| p.metadata.deletion_grace_period_seconds = Some(0)
        ));
        assert!(changed(
            &|p| p.spec.as_mut().unwrap().containers[0].image = Some("busybox:2".into())
        ));
        // kubectl debug adds an ephemeral container: a spec change (pods/ephemeralcontainers).
        assert!(changed(&|p| p
            .spec
            .as_mut()
            .unwrap()
            .ephemeral_containers =
            Some(vec![k8s_openapi::api::core::v1::EphemeralContainer {
                name: "debugger".into(),
                ..Default::default()
            }])));
        assert!(changed(&|p| p
            .spec
            .as_mut()
            .unwrap()
            .active_deadline_seconds = Some(5)));
        assert!(!changed(&|_| {}));
    }

    #[tokio::test]
    async fn dispatch_stores_status_updates_without_waking() {
        let (tx, mut rx) = watch::channel(Some(running_pod()));
        rx.borrow_and_update();
        let mut status_patch = running_pod();
        status_patch.status.as_mut().unwrap().phase = Some("Running".into());
        let send = |pod: Pod| offer(&tx, pod);
        assert!(!send(status_patch));
        assert!(!rx.has_changed().unwrap(), "no wake-up for a status patch");
        assert_eq!(
            rx.borrow()
                .as_ref()
                .and_then(|p| p.status.as_ref())
                .and_then(|s| s.phase.as_deref()),
            Some("Running"),
            "but the worker sees the newest status"
        );
        let mut deleted = running_pod();
        deleted.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
        assert!(send(deleted));
        assert!(rx.has_changed().unwrap());
    }

    #[test]
    fn log_layout_is_upstreams() {
        let p = container_log_path(
            std::path::Path::new("/var/lib/rk3s"),
            "default",
            "web",
            "u-1",
            "app",
            2,
        );
        assert_eq!(
            p,
            PathBuf::from("/var/lib/rk3s/agent/pod-logs/default_web_u-1/app/2.log")
        );
    }
}
