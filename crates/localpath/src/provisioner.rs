//! The provisioning loop of one node: one controller key `()` whose pass provisions the
//! claims selected to this node and reclaims this node's released volumes; passes run on
//! every relevant change, on a configuration change and periodically. A task follows the
//! configuration ConfigMap.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use kube::Resource;
use rk3s_runtime::events::EventRecorder;
use rk3s_runtime::{run_controller, Action, SharedInformers, Trigger, WorkQueue};

use crate::config::{Config, ConfigError, CONFIG_KEY};
use crate::volume::{
    build_volume, check_claim, check_volume_mode, create_folder, deletable_path, provisioned_here,
    reclaim, remove_folder, volume_name, volume_path, wants_volume, Reclaim, VolumeParams,
    ANN_SELECTED_NODE, LABEL_HOSTNAME,
};
use crate::{LocalPathError, LocalPathOptions};

/// How many reported events are remembered before the memory is cleared.
const MAX_REPORTED: usize = 10_000;

/// How long start-up waits for the configuration ConfigMap's first list.
const CONFIG_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Aborts a task when dropped (the config watch ends with the provisioner).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Ctx {
    client: kube::Client,
    opts: LocalPathOptions,
    config: Arc<RwLock<Config>>,
    recorder: EventRecorder,
    /// Events already recorded (reason/uid/message), so a retried failure is not repeated.
    reported: HashSet<String>,
    pvs: Store<PersistentVolume>,
    pvcs: Store<PersistentVolumeClaim>,
    classes: Store<StorageClass>,
}

/// How a provisioning attempt failed.
enum Failure {
    /// Will fail again the same way until something changes (no retry).
    Permanent(String),
    /// Worth retrying (API or filesystem error).
    Transient(LocalPathError),
}

impl Ctx {
    /// Records an event unless this process already did; whether it was new.
    async fn event_once(
        &mut self,
        regarding: &k8s_openapi::api::core::v1::ObjectReference,
        warning: bool,
        reason: &str,
        message: String,
    ) -> bool {
        let key = format!(
            "{reason}/{}/{message}",
            regarding.uid.as_deref().unwrap_or_default()
        );
        if self.reported.len() >= MAX_REPORTED {
            self.reported.clear();
        }
        let new = self.reported.insert(key);
        if new {
            self.recorder
                .record(regarding, warning, reason, message)
                .await;
        }
        new
    }

    fn current_config(&self) -> Config {
        self.config
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|_| Config::with_default_path(&self.opts.default_path))
    }

    /// The node's `kubernetes.io/hostname` label (its name when unknown).
    async fn hostname(&self) -> String {
        let nodes: Api<Node> = Api::all(self.client.clone());
        match nodes.get_opt(&self.opts.node_name).await {
            Ok(Some(n)) => n
                .metadata
                .labels
                .and_then(|mut l| l.remove(LABEL_HOSTNAME))
                .unwrap_or_else(|| self.opts.node_name.clone()),
            _ => self.opts.node_name.clone(),
        }
    }

    /// Creates the folder and the volume; `Ok(true)` when the volume was created now.
    async fn make_volume(
        &self,
        pvc: &PersistentVolumeClaim,
        class: &StorageClass,
        config: &Config,
    ) -> Result<bool, Failure> {
        let volume_type = check_claim(pvc, class).map_err(|e| Failure::Permanent(e.to_string()))?;
        let base = config
            .path_for_node(&self.opts.node_name)
            .map_err(|e| Failure::Permanent(e.to_string()))?;
        let hostname = self.hostname().await;
        let params = VolumeParams {
            pvc,
            class,
            provisioner: &self.opts.provisioner_name,
            node: &self.opts.node_name,
            hostname: &hostname,
            base,
            volume_type,
        };
        let (Some(pv), Some(path)) = (build_volume(&params), volume_path(pvc, base)) else {
            return Err(Failure::Permanent("claim has no name or uid".into()));
        };
        let name = pv.metadata.name.clone().unwrap_or_default();
        tracing::info!(volume = %name, node = %self.opts.node_name, path = %path.display(), "creating volume");
        create_folder(&path).map_err(|source| {
            Failure::Transient(LocalPathError::Io {
                path: path.clone(),
                source,
            })
        })?;
        let api: Api<PersistentVolume> = Api::all(self.client.clone());
        match api.create(&PostParams::default(), &pv).await {
            Ok(_) => Ok(true),
            // Created before a restart (or the cache has not shown it yet).
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(Failure::Transient(e.into())),
        }
    }

    /// Provisions one claim; `Err` only for failures worth retrying.
    async fn provision(
        &mut self,
        pvc: &PersistentVolumeClaim,
        class: &StorageClass,
        config: &Config,
    ) -> Result<(), LocalPathError> {
        let claim_ref = pvc.object_ref(&());
        if let Err(e) = check_volume_mode(pvc, &self.opts.provisioner_name) {
            self.event_once(&claim_ref, true, "ProvisioningFailed", e.to_string())
                .await;
            return Ok(());
        }
        let ns = pvc.metadata.namespace.clone().unwrap_or_default();
        let name = pvc.metadata.name.clone().unwrap_or_default();
        self.event_once(
            &claim_ref,
            false,
            "Provisioning",
            format!("External provisioner is provisioning volume for claim \"{ns}/{name}\""),
        )
        .await;
        let class_name = class.metadata.name.clone().unwrap_or_default();
        match self.make_volume(pvc, class, config).await {
            Ok(true) => {
                let pv = volume_name(pvc).unwrap_or_default();
                tracing::info!(volume = %pv, claim = %format!("{ns}/{name}"), "provisioned volume");
                self.event_once(
                    &claim_ref,
                    false,
                    "ProvisioningSucceeded",
                    format!("Successfully provisioned volume {pv}"),
                )
                .await;
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(Failure::Permanent(msg)) => {
                let new = self
                    .event_once(
                        &claim_ref,
                        true,
                        "ProvisioningFailed",
                        format!(
                            "failed to provision volume with StorageClass {class_name:?}: {msg}"
                        ),
                    )
                    .await;
                if new {
                    tracing::warn!(claim = %format!("{ns}/{name}"), error = %msg, "cannot provision volume");
                }
                Ok(())
            }
            Err(Failure::Transient(e)) => {
                tracing::warn!(claim = %format!("{ns}/{name}"), error = %e, "provisioning failed; will retry");
                self.event_once(
                    &claim_ref,
                    true,
                    "ProvisioningFailed",
                    format!("failed to provision volume with StorageClass {class_name:?}: {e}"),
                )
                .await;
                Err(e)
            }
        }
    }

    /// Removes a released volume's folder, then the volume.
    async fn delete(
        &mut self,
        pv: &PersistentVolume,
        config: &Config,
    ) -> Result<(), LocalPathError> {
        let name = pv.metadata.name.clone().unwrap_or_default();
        let pv_ref = pv.object_ref(&());
        let mut bases: Vec<PathBuf> = config.paths_for_node(&self.opts.node_name).to_vec();
        bases.push(self.opts.default_path.clone());
        let path = match deletable_path(pv, &bases) {
            Ok(p) => p,
            Err(e) => {
                let new = self
                    .event_once(
                        &pv_ref,
                        true,
                        "VolumeFailedDelete",
                        format!("failed to delete volume {name}: {e}"),
                    )
                    .await;
                if new {
                    tracing::warn!(volume = %name, error = %e, "not deleting volume");
                }
                return Ok(());
            }
        };
        tracing::info!(volume = %name, node = %self.opts.node_name, path = %path.display(), "deleting volume");
        if let Err(source) = remove_folder(&path) {
            let e = LocalPathError::Io { path, source };
            self.event_once(
                &pv_ref,
                true,
                "VolumeFailedDelete",
                format!("failed to delete volume {name}: {e}"),
            )
            .await;
            return Err(e);
        }
        let api: Api<PersistentVolume> = Api::all(self.client.clone());
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(volume = %name, "volume deleted");
        Ok(())
    }

    /// One pass over every claim and volume.
    async fn sync(&mut self) -> Result<(), LocalPathError> {
        let config = self.current_config();
        let existing: HashSet<String> = self
            .pvs
            .state()
            .iter()
            .filter_map(|v| v.metadata.name.clone())
            .collect();
        let mut pending: Vec<String> = Vec::new();
        for pvc in self.pvcs.state() {
            let class_name = pvc
                .spec
                .as_ref()
                .and_then(|s| s.storage_class_name.as_deref())
                .unwrap_or_default();
            let class = (!class_name.is_empty())
                .then(|| self.classes.get(&ObjectRef::new(class_name)))
                .flatten();
            if !wants_volume(
                &pvc,
                class.as_deref(),
                &self.opts.provisioner_name,
                &self.opts.node_name,
            ) {
                continue;
            }
            let (Some(class), Some(name)) = (class, volume_name(&pvc)) else {
                continue;
            };
            if existing.contains(&name) {
                continue;
            }
            if let Err(e) = self.provision(&pvc, &class, &config).await {
                pending.push(e.to_string());
            }
        }
        for pv in self.pvs.state() {
            if !provisioned_here(&pv, &self.opts.provisioner_name, &self.opts.node_name) {
                continue;
            }
            if reclaim(&pv) == Reclaim::Delete {
                if let Err(e) = self.delete(&pv, &config).await {
                    pending.push(e.to_string());
                }
            }
        }
        if pending.is_empty() {
            Ok(())
        } else {
            Err(LocalPathError::Pending(pending.join("; ")))
        }
    }
}

/// The configuration a ConfigMap holds.
pub(crate) fn config_of(cm: &ConfigMap) -> Result<Config, ConfigError> {
    let raw = cm
        .data
        .as_ref()
        .and_then(|d| d.get(CONFIG_KEY))
        .ok_or(ConfigError::Missing)?;
    Config::parse(raw)
}

/// Follows the configuration ConfigMap: a new valid configuration replaces the current
/// one and starts a pass; an invalid one is reported once and ignored.
async fn watch_config(
    client: kube::Client,
    opts: LocalPathOptions,
    config: Arc<RwLock<Config>>,
    notify: Arc<tokio::sync::Notify>,
    recorder: EventRecorder,
    ready: tokio::sync::watch::Sender<bool>,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, &opts.config_map_namespace);
    let wc = watcher::Config::default().fields(&format!("metadata.name={}", opts.config_map_name));
    let mut last_raw: Option<String> = None;
    let stream = watcher(api, wc).default_backoff();
    let mut stream = std::pin::pin!(stream);
    while let Some(ev) = stream.next().await {
        let cm = match ev {
            Ok(watcher::Event::Apply(cm)) | Ok(watcher::Event::InitApply(cm)) => cm,
            Ok(watcher::Event::Delete(_)) => {
                tracing::info!("local-path config map deleted; keeping the last configuration");
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                ready.send_replace(true);
                continue;
            }
            Ok(watcher::Event::Init) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "watching the local-path config map");
                continue;
            }
        };
        let raw = cm.data.as_ref().and_then(|d| d.get(CONFIG_KEY)).cloned();
        if raw.is_some() && raw == last_raw {
            continue;
        }
        last_raw = raw;
        match config_of(&cm) {
            Ok(c) => {
                let changed = match config.write() {
                    Ok(mut cur) => {
                        let changed = *cur != c;
                        *cur = c;
                        changed
                    }
                    Err(_) => false,
                };
                if changed {
                    tracing::info!("local-path configuration loaded");
                    notify.notify_one();
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "invalid local-path configuration; keeping the last one");
                recorder
                    .record(
                        &cm.object_ref(&()),
                        true,
                        "InvalidConfig",
                        format!("failed to load the new config: {e}; keeping the last valid configuration"),
                    )
                    .await;
            }
        }
    }
}

pub(crate) async fn run(
    client: kube::Client,
    opts: LocalPathOptions,
) -> Result<(), LocalPathError> {
    let informers = SharedInformers::new(client.clone());
    let notify = Arc::new(tokio::sync::Notify::new());
    let config = Arc::new(RwLock::new(Config::with_default_path(&opts.default_path)));
    let recorder = EventRecorder::with_instance(
        client.clone(),
        &format!("{}_{}", opts.provisioner_name, opts.node_name),
        Some(opts.node_name.clone()),
    );
    let (ready_tx, mut ready) = tokio::sync::watch::channel(false);
    let _config_watch = AbortOnDrop(tokio::spawn(watch_config(
        client.clone(),
        opts.clone(),
        config.clone(),
        notify.clone(),
        recorder.clone(),
        ready_tx,
    )));
    let node = opts.node_name.clone();
    let triggers = vec![
        Trigger::changes(&informers, move |c: &PersistentVolumeClaim| {
            c.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANN_SELECTED_NODE))
                .is_some_and(|n| *n == node)
                .then_some(())
        }),
        Trigger::changes(&informers, |_: &PersistentVolume| Some(())),
        Trigger::changes(&informers, |_: &StorageClass| Some(())),
        Trigger::notified(notify, ()),
        Trigger::every(opts.resync, ()),
    ];
    let pvs = informers.store::<PersistentVolume>().await;
    let pvcs = informers.store::<PersistentVolumeClaim>().await;
    let classes = informers.store::<StorageClass>().await;
    // The first pass uses the ConfigMap's paths when there is one (not the default).
    if tokio::time::timeout(CONFIG_WAIT, ready.wait_for(|r| *r))
        .await
        .is_err()
    {
        tracing::warn!("local-path config map not listed yet; using the default path until it is");
    }
    tracing::info!(node = %opts.node_name, "local-path provisioner started");
    let ctx = Arc::new(tokio::sync::Mutex::new(Ctx {
        client,
        opts,
        config,
        recorder,
        reported: HashSet::new(),
        pvs,
        pvcs,
        classes,
    }));
    run_controller("local-path", 1, WorkQueue::new(), triggers, move |()| {
        let ctx = ctx.clone();
        async move {
            let mut ctx = ctx.lock().await;
            ctx.sync().await.map(|()| Action::await_change())
        }
    })
    .await;
    drop(informers);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn config_from_the_config_map() {
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "local-path-config", "namespace": "kube-system"},
            "data": {"config.json": r#"{"nodePathMap":[{"node":"DEFAULT_PATH_FOR_NON_LISTED_NODES","paths":["/srv/lp"]}]}"#},
        }))
        .unwrap();
        let c = config_of(&cm).unwrap();
        assert_eq!(
            c.path_for_node("x").unwrap(),
            std::path::Path::new("/srv/lp")
        );
        let empty: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
        assert_eq!(config_of(&empty), Err(ConfigError::Missing));
    }
}
