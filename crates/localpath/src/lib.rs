//! The built-in local-path provisioner: k3s's `local-path` StorageClass
//! (`rancher.io/local-path`, rancher's local-path-provisioner) inside rk3s, with no
//! helper pods: [`run`] runs on every node and provisions, in folders of that node, the
//! claims the scheduler placed there.
//!
//! - Provisioning: a PersistentVolumeClaim that is not bound, whose StorageClass has
//!   provisioner `rancher.io/local-path`, and whose `volume.kubernetes.io/selected-node`
//!   annotation (set by the scheduler for `WaitForFirstConsumer` classes) names this node
//!   gets a PersistentVolume `pvc-<claim uid>`: a `hostPath` (`DirectoryOrCreate`; or
//!   `local` with the `volumeType`/`defaultVolumeType` annotations) at
//!   `<base>/<pv>_<namespace>_<claim>`, pre-bound to the claim (claimRef with uid) and
//!   pinned to the node (`kubernetes.io/hostname In [node]`). The folder is created here
//!   (mode 0777). The PV binder then binds the claim. Block volumes, ReadWriteMany and
//!   ReadOnlyMany claims and claims with selectors are refused with a
//!   `ProvisioningFailed` Event, as local-path-provisioner does.
//! - The base path comes from `config.json` of the `kube-system/local-path-config`
//!   ConfigMap (k3s's format, [`config`]), followed by a watch; a configuration that
//!   does not parse is reported (log + Warning Event on the ConfigMap) and the last good
//!   one stays. Until a valid ConfigMap is seen (none yet, or a restarted provisioner
//!   that finds only an invalid one), every node uses [`LocalPathOptions::default_path`].
//!   Start-up waits (at most 10 s) for the ConfigMap's first list before provisioning.
//! - Deletion: a volume provisioned here that is `Released` with policy `Delete` loses
//!   its folder, then the PersistentVolume is deleted. The folder is removed only when
//!   it is directly under a configured base path of this node (or the default path)
//!   and named as we name folders ([`volume::deletable_path`]); links are never
//!   followed. `Retain` keeps both.
//!
//! Invariants: it depends on no rk3s crate but `rk3s-runtime` and talks to the cluster
//! only through a `kube::Client`; all state is derived from the API (an existing volume
//! is never created twice, a folder left by a crash is reused), so a restart at any
//! point converges. It never touches a volume another node or provisioner made.

#![warn(missing_docs)]

pub mod config;
mod provisioner;
pub mod volume;

use std::path::PathBuf;

/// The provisioner name of k3s's `local-path` StorageClass.
pub const PROVISIONER_NAME: &str = "rancher.io/local-path";

/// Settings of the provisioner of one node.
#[derive(Debug, Clone)]
pub struct LocalPathOptions {
    /// This node's name (claims whose selected node is this one are provisioned).
    pub node_name: String,
    /// The base path used until the ConfigMap is read (k3s: `<data-dir>/storage`).
    pub default_path: PathBuf,
    /// The provisioner name served (`rancher.io/local-path`).
    pub provisioner_name: String,
    /// Namespace of the configuration ConfigMap (`kube-system`).
    pub config_map_namespace: String,
    /// Name of the configuration ConfigMap (`local-path-config`).
    pub config_map_name: String,
    /// How often every claim and volume is looked at again without a change.
    pub resync: std::time::Duration,
}

impl LocalPathOptions {
    /// k3s's settings for `node_name` with base path `default_path`.
    pub fn new(node_name: &str, default_path: PathBuf) -> Self {
        LocalPathOptions {
            node_name: node_name.to_string(),
            default_path,
            provisioner_name: PROVISIONER_NAME.to_string(),
            config_map_namespace: "kube-system".to_string(),
            config_map_name: "local-path-config".to_string(),
            resync: std::time::Duration::from_secs(30),
        }
    }
}

/// Errors of the provisioner.
#[derive(Debug, thiserror::Error)]
pub enum LocalPathError {
    /// An API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A filesystem step failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Some claims or volumes could not be handled now (retried later).
    #[error("{0}")]
    Pending(String),
}

/// Runs the provisioner of one node forever (returns only if its controller stops).
pub async fn run(client: kube::Client, opts: LocalPathOptions) -> Result<(), LocalPathError> {
    provisioner::run(client, opts).await
}
