//! Pure parts of provisioning: which claims this node provisions, the checks
//! local-path-provisioner makes on a claim, the PersistentVolume it creates, and the
//! safety check before a volume's folder is removed. Plus the two filesystem steps
//! (create the folder, remove it) kept small and never following a path outside.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, LocalVolumeSource, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeSpec, VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::config::clean;

/// Volume annotation: the provisioner that created it (set by upstream's provisioner
/// library).
pub const ANN_PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// Volume annotation of local-path-provisioner: the node the volume lives on.
pub const ANN_LOCAL_SELECTED_NODE: &str = "local.path.provisioner/selected-node";
/// Claim annotation set by the scheduler for `WaitForFirstConsumer` classes.
pub const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// Claim annotation choosing the volume type (`hostPath` or `local`).
pub const ANN_VOLUME_TYPE: &str = "volumeType";
/// StorageClass annotation: the volume type when the claim names none.
pub const ANN_DEFAULT_VOLUME_TYPE: &str = "defaultVolumeType";
/// The node label the volume's node affinity uses.
pub const LABEL_HOSTNAME: &str = "kubernetes.io/hostname";

/// Why a claim cannot be provisioned (the message is the Event's).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClaimError {
    /// `volumeMode: Block` (checked before provisioning starts, as upstream's library).
    #[error("{0} does not support block volume provisioning")]
    Block(String),
    /// A label selector on the claim.
    #[error("claim.Spec.Selector is not supported")]
    Selector,
    /// ReadWriteMany / ReadOnlyMany.
    #[error("NodePath only supports ReadWriteOnce and ReadWriteOncePod (1.22+) access modes")]
    AccessMode,
    /// An unknown `volumeType` / `defaultVolumeType`.
    #[error("{0:?} is not a recognised volume type")]
    VolumeType(String),
}

/// The kind of PersistentVolume source to create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeType {
    /// `hostPath` with type `DirectoryOrCreate` (the default).
    HostPath,
    /// `local` (the path must exist; the provisioner creates it).
    Local,
}

/// The name of the volume for a claim: `pvc-<claim uid>` (upstream's rule).
pub fn volume_name(pvc: &PersistentVolumeClaim) -> Option<String> {
    pvc.metadata
        .uid
        .as_deref()
        .filter(|u| !u.is_empty())
        .map(|u| format!("pvc-{u}"))
}

/// The folder of a volume under its base path: `<pv>_<namespace>_<claim>`.
pub fn folder_name(pv: &str, namespace: &str, claim: &str) -> String {
    format!("{pv}_{namespace}_{claim}")
}

fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// Whether `pvc` is a claim this node's provisioner must provision now: not being
/// deleted, not bound, its class provisioned by `provisioner`, and the scheduler
/// selected `node` for it.
pub fn wants_volume(
    pvc: &PersistentVolumeClaim,
    class: Option<&StorageClass>,
    provisioner: &str,
    node: &str,
) -> bool {
    if pvc.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let bound = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .is_some_and(|v| !v.is_empty());
    !bound
        && class.is_some_and(|c| c.provisioner == provisioner)
        && annotation(&pvc.metadata, ANN_SELECTED_NODE) == Some(node)
}

/// The check made before provisioning starts (upstream's library: block volumes).
pub fn check_volume_mode(pvc: &PersistentVolumeClaim, provisioner: &str) -> Result<(), ClaimError> {
    let mode = pvc.spec.as_ref().and_then(|s| s.volume_mode.as_deref());
    if mode == Some("Block") {
        return Err(ClaimError::Block(provisioner.to_string()));
    }
    Ok(())
}

/// local-path-provisioner's checks of a claim, and the volume type to create.
pub fn check_claim(
    pvc: &PersistentVolumeClaim,
    class: &StorageClass,
) -> Result<VolumeType, ClaimError> {
    let spec = pvc.spec.as_ref();
    if spec.and_then(|s| s.selector.as_ref()).is_some() {
        return Err(ClaimError::Selector);
    }
    if spec
        .and_then(|s| s.access_modes.as_ref())
        .into_iter()
        .flatten()
        .any(|m| m != "ReadWriteOnce" && m != "ReadWriteOncePod")
    {
        return Err(ClaimError::AccessMode);
    }
    let wanted = annotation(&pvc.metadata, ANN_VOLUME_TYPE)
        .or_else(|| annotation(&class.metadata, ANN_DEFAULT_VOLUME_TYPE))
        .unwrap_or("hostPath");
    match wanted.to_ascii_lowercase().as_str() {
        "hostpath" => Ok(VolumeType::HostPath),
        "local" => Ok(VolumeType::Local),
        _ => Err(ClaimError::VolumeType(wanted.to_string())),
    }
}

/// What a new volume is made of.
#[derive(Debug, Clone)]
pub struct VolumeParams<'a> {
    /// The claim (with uid).
    pub pvc: &'a PersistentVolumeClaim,
    /// Its StorageClass.
    pub class: &'a StorageClass,
    /// The provisioner's name (`rancher.io/local-path`).
    pub provisioner: &'a str,
    /// The node's name.
    pub node: &'a str,
    /// The node's `kubernetes.io/hostname` label (the node name when it has none).
    pub hostname: &'a str,
    /// The base path chosen for the node.
    pub base: &'a Path,
    /// The source kind.
    pub volume_type: VolumeType,
}

/// The folder a new volume gets: `<base>/<pv>_<namespace>_<claim>`.
pub fn volume_path(pvc: &PersistentVolumeClaim, base: &Path) -> Option<PathBuf> {
    let name = volume_name(pvc)?;
    let ns = pvc.metadata.namespace.as_deref().unwrap_or("default");
    let claim = pvc.metadata.name.as_deref()?;
    Some(base.join(folder_name(&name, ns, claim)))
}

/// The PersistentVolume local-path-provisioner creates for a claim (with the fields
/// upstream's provisioner library adds: claimRef, class, provisioned-by, mount options).
/// `None` when the claim has no uid or name.
pub fn build_volume(p: &VolumeParams<'_>) -> Option<PersistentVolume> {
    let name = volume_name(p.pvc)?;
    let path = volume_path(p.pvc, p.base)?;
    let path = path.to_str()?.to_string();
    let spec = p.pvc.spec.as_ref();
    let capacity = spec
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(|q| BTreeMap::from([("storage".to_string(), q.clone())]));
    let (host_path, local) = match p.volume_type {
        VolumeType::HostPath => (
            Some(HostPathVolumeSource {
                path,
                type_: Some("DirectoryOrCreate".into()),
            }),
            None,
        ),
        VolumeType::Local => (
            None,
            Some(LocalVolumeSource {
                path,
                fs_type: None,
            }),
        ),
    };
    Some(PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name),
            annotations: Some(BTreeMap::from([
                (ANN_PROVISIONED_BY.to_string(), p.provisioner.to_string()),
                (ANN_LOCAL_SELECTED_NODE.to_string(), p.node.to_string()),
            ])),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity,
            access_modes: spec.and_then(|s| s.access_modes.clone()),
            volume_mode: Some("Filesystem".into()),
            persistent_volume_reclaim_policy: Some(
                p.class
                    .reclaim_policy
                    .clone()
                    .unwrap_or_else(|| "Delete".into()),
            ),
            storage_class_name: p.class.metadata.name.clone(),
            mount_options: p.class.mount_options.clone(),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: p.pvc.metadata.namespace.clone(),
                name: p.pvc.metadata.name.clone(),
                uid: p.pvc.metadata.uid.clone(),
                resource_version: p.pvc.metadata.resource_version.clone(),
                field_path: None,
            }),
            host_path,
            local,
            node_affinity: Some(VolumeNodeAffinity {
                required: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: LABEL_HOSTNAME.into(),
                            operator: "In".into(),
                            values: Some(vec![p.hostname.to_string()]),
                        }]),
                        match_fields: None,
                    }],
                }),
            }),
            ..Default::default()
        }),
        status: None,
    })
}

/// The node a volume was provisioned on: local-path-provisioner's annotation, else the
/// single value of its `kubernetes.io/hostname In [...]` node affinity.
pub fn volume_node(pv: &PersistentVolume) -> Option<&str> {
    if let Some(n) = annotation(&pv.metadata, ANN_LOCAL_SELECTED_NODE) {
        return Some(n);
    }
    let terms = &pv
        .spec
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required
        .as_ref()?
        .node_selector_terms;
    terms
        .iter()
        .flat_map(|t| t.match_expressions.iter().flatten())
        .find(|e| e.key == LABEL_HOSTNAME && e.operator == "In")
        .and_then(|e| match e.values.as_deref() {
            Some([v]) => Some(v.as_str()),
            _ => None,
        })
}

/// Whether `pv` was provisioned by `provisioner` on `node`.
pub fn provisioned_here(pv: &PersistentVolume, provisioner: &str, node: &str) -> bool {
    annotation(&pv.metadata, ANN_PROVISIONED_BY) == Some(provisioner)
        && volume_node(pv) == Some(node)
}

/// What to do with a volume of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reclaim {
    /// Nothing (in use, Retain, being deleted, ...).
    Keep,
    /// Released with policy Delete: remove the folder, then the volume.
    Delete,
}

/// The reclaim step for a volume provisioned here.
pub fn reclaim(pv: &PersistentVolume) -> Reclaim {
    let released = pv
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Released");
    let delete = pv
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        == Some("Delete");
    if released && delete && pv.metadata.deletion_timestamp.is_none() {
        Reclaim::Delete
    } else {
        Reclaim::Keep
    }
}

/// Why a volume's folder is not removed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnsafePath {
    /// No hostPath or local source.
    #[error("no HostPath or Local path set")]
    NoPath,
    /// Not absolute, or with `.`/`..` parts.
    #[error("path {0:?} is not a clean absolute path")]
    NotClean(String),
    /// Not directly under a configured base path of the node.
    #[error("path {0:?} is not under a configured path of this node")]
    OutsideConfig(String),
    /// Its last part is not `<pv>_<namespace>_<claim>`.
    #[error("path {path:?} is not named {expected:?}")]
    WrongName {
        /// The volume's path.
        path: String,
        /// The folder name it should have.
        expected: String,
    },
}

/// The folder of a volume provisioned here that may be removed: a clean absolute path
/// directly under one of `bases` whose last part is `<pv>_<namespace>_<claim>` as we
/// name them. Anything else is refused.
pub fn deletable_path(pv: &PersistentVolume, bases: &[PathBuf]) -> Result<PathBuf, UnsafePath> {
    let spec = pv.spec.as_ref().ok_or(UnsafePath::NoPath)?;
    let raw = spec
        .host_path
        .as_ref()
        .map(|h| h.path.as_str())
        .or_else(|| spec.local.as_ref().map(|l| l.path.as_str()))
        .ok_or(UnsafePath::NoPath)?;
    // Checked on the text: `Path::components` hides `.` parts and doubled slashes.
    let clean_parts = raw.strip_prefix('/').is_some_and(|rest| {
        rest.split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
    });
    if !clean_parts {
        return Err(UnsafePath::NotClean(raw.to_string()));
    }
    let path = Path::new(raw);
    let parent = path.parent().unwrap_or(Path::new("/"));
    if !bases.iter().any(|b| clean(b) == parent) {
        return Err(UnsafePath::OutsideConfig(raw.to_string()));
    }
    let claim = spec.claim_ref.as_ref();
    let expected = folder_name(
        pv.metadata.name.as_deref().unwrap_or_default(),
        claim
            .and_then(|c| c.namespace.as_deref())
            .unwrap_or_default(),
        claim.and_then(|c| c.name.as_deref()).unwrap_or_default(),
    );
    if path.file_name().and_then(|n| n.to_str()) != Some(expected.as_str()) {
        return Err(UnsafePath::WrongName {
            path: raw.to_string(),
            expected,
        });
    }
    Ok(path.to_path_buf())
}

/// Creates a volume's folder (mode 0777, as local-path-provisioner's setup script), and
/// its base path (mode 0700, as k3s's) when missing. An existing folder is reused.
pub fn create_folder(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(base) = path.parent() {
        if !base.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(base)?;
        }
    }
    match std::fs::DirBuilder::new().mode(0o777).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => {}
        Err(e) => return Err(e),
    }
    // The umask took bits away at creation.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))
}

/// Removes a volume's folder (already checked by [`deletable_path`]) without following
/// symbolic links: a link is removed itself, a directory with its content (links inside
/// are removed, never followed). A missing folder is not an error.
pub fn remove_folder(path: &Path) -> std::io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if meta.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pvc(extra: serde_json::Value) -> PersistentVolumeClaim {
        let mut v = json!({
            "metadata": {"name": "data", "namespace": "ns1", "uid": "1234-abcd", "resourceVersion": "7",
                         "annotations": {ANN_SELECTED_NODE: "node-a"}},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-path",
                     "resources": {"requests": {"storage": "2Gi"}}},
        });
        merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn class(extra: serde_json::Value) -> StorageClass {
        let mut v = json!({"metadata": {"name": "local-path"}, "provisioner": "rancher.io/local-path",
                           "reclaimPolicy": "Delete", "volumeBindingMode": "WaitForFirstConsumer"});
        merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    const P: &str = "rancher.io/local-path";

    #[test]
    fn claims_this_node_provisions() {
        let c = class(json!({}));
        assert!(wants_volume(&pvc(json!({})), Some(&c), P, "node-a"));
        assert!(!wants_volume(&pvc(json!({})), Some(&c), P, "node-b"));
        assert!(!wants_volume(&pvc(json!({})), None, P, "node-a"));
        let other = class(json!({"provisioner": "example.com/nfs"}));
        assert!(!wants_volume(&pvc(json!({})), Some(&other), P, "node-a"));
        let bound = pvc(json!({"spec": {"volumeName": "pv1"}}));
        assert!(!wants_volume(&bound, Some(&c), P, "node-a"));
        let unselected = pvc(json!({"metadata": {"annotations": null}}));
        assert!(!wants_volume(&unselected, Some(&c), P, "node-a"));
        let deleting = pvc(json!({"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z"}}));
        assert!(!wants_volume(&deleting, Some(&c), P, "node-a"));
    }

    #[test]
    fn claim_checks_follow_local_path_provisioner() {
        let c = class(json!({}));
        assert_eq!(check_claim(&pvc(json!({})), &c), Ok(VolumeType::HostPath));
        let rwop = pvc(json!({"spec": {"accessModes": ["ReadWriteOncePod"]}}));
        assert_eq!(check_claim(&rwop, &c), Ok(VolumeType::HostPath));
        for m in ["ReadWriteMany", "ReadOnlyMany"] {
            let c2 = pvc(json!({"spec": {"accessModes": ["ReadWriteOnce", m]}}));
            let e = check_claim(&c2, &c).unwrap_err();
            assert_eq!(e, ClaimError::AccessMode);
            assert_eq!(
                e.to_string(),
                "NodePath only supports ReadWriteOnce and ReadWriteOncePod (1.22+) access modes"
            );
        }
        let sel = pvc(json!({"spec": {"selector": {"matchLabels": {"a": "b"}}}}));
        assert_eq!(check_claim(&sel, &c), Err(ClaimError::Selector));
        let block = pvc(json!({"spec": {"volumeMode": "Block"}}));
        assert_eq!(
            check_volume_mode(&block, P).unwrap_err().to_string(),
            "rancher.io/local-path does not support block volume provisioning"
        );
        assert!(check_volume_mode(&pvc(json!({})), P).is_ok());
        // Volume types: the claim's annotation, else the class's default.
        let local_class =
            class(json!({"metadata": {"annotations": {"defaultVolumeType": "local"}}}));
        assert_eq!(
            check_claim(&pvc(json!({})), &local_class),
            Ok(VolumeType::Local)
        );
        let hp = pvc(json!({"metadata": {"annotations": {"volumeType": "hostPath"}}}));
        assert_eq!(check_claim(&hp, &local_class), Ok(VolumeType::HostPath));
        let bad = pvc(json!({"metadata": {"annotations": {"volumeType": "nfs"}}}));
        assert_eq!(
            check_claim(&bad, &c),
            Err(ClaimError::VolumeType("nfs".into()))
        );
    }

    #[test]
    fn volume_has_upstreams_fields() {
        let claim = pvc(json!({}));
        let c = class(json!({"mountOptions": ["noatime"]}));
        let pv = build_volume(&VolumeParams {
            pvc: &claim,
            class: &c,
            provisioner: P,
            node: "node-a",
            hostname: "host-a",
            base: Path::new("/var/lib/rk3s/storage"),
            volume_type: VolumeType::HostPath,
        })
        .unwrap();
        let v = serde_json::to_value(&pv).unwrap();
        assert_eq!(
            v,
            json!({
                "apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {"name": "pvc-1234-abcd", "annotations": {
                    "local.path.provisioner/selected-node": "node-a",
                    "pv.kubernetes.io/provisioned-by": "rancher.io/local-path"}},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "capacity": {"storage": "2Gi"},
                    "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                 "name": "data", "namespace": "ns1", "resourceVersion": "7",
                                 "uid": "1234-abcd"},
                    "hostPath": {"path": "/var/lib/rk3s/storage/pvc-1234-abcd_ns1_data",
                                 "type": "DirectoryOrCreate"},
                    "mountOptions": ["noatime"],
                    "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                        {"key": "kubernetes.io/hostname", "operator": "In", "values": ["host-a"]}]}]}},
                    "persistentVolumeReclaimPolicy": "Delete",
                    "storageClassName": "local-path",
                    "volumeMode": "Filesystem",
                }
            })
        );
        assert!(provisioned_here(&pv, P, "node-a"));
        assert!(!provisioned_here(&pv, P, "node-b"));
        assert!(!provisioned_here(&pv, "other", "node-a"));
        // Retain from the class; a local source on request.
        let retain = class(json!({"reclaimPolicy": "Retain"}));
        let pv = build_volume(&VolumeParams {
            pvc: &claim,
            class: &retain,
            provisioner: P,
            node: "node-a",
            hostname: "node-a",
            base: Path::new("/d"),
            volume_type: VolumeType::Local,
        })
        .unwrap();
        let spec = pv.spec.as_ref().unwrap();
        assert_eq!(
            spec.persistent_volume_reclaim_policy.as_deref(),
            Some("Retain")
        );
        assert!(spec.host_path.is_none());
        assert_eq!(
            spec.local.as_ref().unwrap().path,
            "/d/pvc-1234-abcd_ns1_data"
        );
        // No uid: no volume.
        let no_uid = pvc(json!({"metadata": {"uid": null}}));
        assert!(volume_name(&no_uid).is_none());
    }

    #[test]
    fn node_from_annotation_or_affinity() {
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": "pv"},
            "spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n7"]}]}]}}}
        }))
        .unwrap();
        assert_eq!(volume_node(&pv), Some("n7"));
        let two: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": "pv"},
            "spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n7", "n8"]}]}]}}}
        }))
        .unwrap();
        assert_eq!(volume_node(&two), None);
    }

    fn released(path: &str, policy: &str, phase: &str) -> PersistentVolume {
        serde_json::from_value(json!({
            "metadata": {"name": "pvc-1", "annotations": {ANN_PROVISIONED_BY: P, ANN_LOCAL_SELECTED_NODE: "n"}},
            "spec": {"hostPath": {"path": path}, "persistentVolumeReclaimPolicy": policy,
                     "claimRef": {"namespace": "ns", "name": "c", "uid": "1"}},
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    #[test]
    fn reclaim_only_released_delete() {
        assert_eq!(
            reclaim(&released("/s/x", "Delete", "Released")),
            Reclaim::Delete
        );
        assert_eq!(
            reclaim(&released("/s/x", "Retain", "Released")),
            Reclaim::Keep
        );
        assert_eq!(reclaim(&released("/s/x", "Delete", "Bound")), Reclaim::Keep);
        let mut deleting = released("/s/x", "Delete", "Released");
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert_eq!(reclaim(&deleting), Reclaim::Keep);
    }

    #[test]
    fn deletion_safety_check() {
        let bases = [PathBuf::from("/var/lib/rk3s/storage/")];
        let ok = released("/var/lib/rk3s/storage/pvc-1_ns_c", "Delete", "Released");
        assert_eq!(
            deletable_path(&ok, &bases),
            Ok(PathBuf::from("/var/lib/rk3s/storage/pvc-1_ns_c"))
        );
        // Outside the configured paths.
        let outside = released("/etc/pvc-1_ns_c", "Delete", "Released");
        assert!(matches!(
            deletable_path(&outside, &bases),
            Err(UnsafePath::OutsideConfig(_))
        ));
        // Deeper than one level, or the base itself.
        let deep = released("/var/lib/rk3s/storage/x/pvc-1_ns_c", "Delete", "Released");
        assert!(matches!(
            deletable_path(&deep, &bases),
            Err(UnsafePath::OutsideConfig(_))
        ));
        // Escapes with `..`, relative paths, trailing slashes.
        for bad in [
            "/var/lib/rk3s/storage/../../../etc/pvc-1_ns_c",
            "/var/lib/rk3s/storage/./pvc-1_ns_c",
            "var/lib/rk3s/storage/pvc-1_ns_c",
            "/var/lib/rk3s/storage/pvc-1_ns_c/",
            "/var/lib/rk3s//storage/pvc-1_ns_c",
        ] {
            assert!(
                matches!(
                    deletable_path(&released(bad, "Delete", "Released"), &bases),
                    Err(UnsafePath::NotClean(_))
                ),
                "{bad}"
            );
        }
        // A folder not named as ours.
        let other = released("/var/lib/rk3s/storage/important", "Delete", "Released");
        assert!(matches!(
            deletable_path(&other, &bases),
            Err(UnsafePath::WrongName { .. })
        ));
        let base_itself = released("/var/lib/rk3s/storage", "Delete", "Released");
        assert!(deletable_path(&base_itself, &bases).is_err());
        // No source at all.
        let mut none = ok.clone();
        none.spec.as_mut().unwrap().host_path = None;
        assert_eq!(deletable_path(&none, &bases), Err(UnsafePath::NoPath));
    }

    #[test]
    fn folders_are_created_and_removed_without_following_links() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("storage");
        let vol = base.join("pvc-1_ns_c");
        create_folder(&vol).unwrap();
        assert_eq!(
            std::fs::metadata(&vol).unwrap().permissions().mode() & 0o777,
            0o777
        );
        assert_eq!(
            std::fs::metadata(&base).unwrap().permissions().mode() & 0o777,
            0o700
        );
        std::fs::write(vol.join("f"), b"x").unwrap();
        // Reused after a crash.
        create_folder(&vol).unwrap();
        assert!(vol.join("f").exists());
        // A link inside to a folder outside: the outside content stays.
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"k").unwrap();
        std::os::unix::fs::symlink(&outside, vol.join("link")).unwrap();
        remove_folder(&vol).unwrap();
        assert!(!vol.exists());
        assert!(outside.join("keep").exists());
        // The volume path itself a link: only the link goes.
        std::os::unix::fs::symlink(&outside, &vol).unwrap();
        remove_folder(&vol).unwrap();
        assert!(std::fs::symlink_metadata(&vol).is_err());
        assert!(outside.join("keep").exists());
        // Already gone.
        remove_folder(&vol).unwrap();
    }
}
