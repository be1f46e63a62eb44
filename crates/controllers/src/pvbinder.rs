//! The PersistentVolume binder (upstream's `pkg/controller/volume/persistentvolume`):
//! binds pending PersistentVolumeClaims to the smallest matching Available PersistentVolume
//! (same storage class and volume mode, access modes covered, capacity at least the
//! request, label selector matching; volumes pre-bound to the claim first), writing
//! `spec.claimRef` on the volume and `spec.volumeName` on the claim with upstream's
//! annotations and phases. Claims of `WaitForFirstConsumer` classes wait for the
//! scheduler's `volume.kubernetes.io/selected-node` annotation. When a bound claim goes
//! away its volume is `Released` (reclaim policy Retain, or Delete left to an external
//! provisioner) or `Failed` (Delete with no deleter available in-process).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, ObjectReference, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::Resource;
use serde_json::json;

use crate::podutil::selector_matches;
use crate::workload_util::{is_not_found, Events};
use crate::ControllerError;
use rk3s_runtime::{run_controller, Action, Trigger, WorkQueue};

/// Claim annotation: binding finished.
pub const ANN_BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
/// Annotation: the binding was made by this controller.
pub const ANN_BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
/// Claim annotation set by the scheduler for `WaitForFirstConsumer` classes.
pub const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// Claim annotation naming the provisioner expected to provision it.
pub const ANN_STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
/// The deprecated beta form of [`ANN_STORAGE_PROVISIONER`], still set by upstream.
pub const ANN_BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
/// Volume annotation naming the provisioner that created it.
pub const ANN_PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

/// A quantity's value in bytes (through [`rk3s_core::quantity`]); `None` when malformed.
pub fn quantity_bytes(q: &Quantity) -> Option<f64> {
    rk3s_core::Quantity::try_from(q).ok().map(|q| q.as_f64())
}

fn pv_capacity(pv: &PersistentVolume) -> Option<f64> {
    pv.spec
        .as_ref()?
        .capacity
        .as_ref()?
        .get("storage")
        .and_then(quantity_bytes)
}

fn claim_request(pvc: &PersistentVolumeClaim) -> f64 {
    pvc.spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(quantity_bytes)
        .unwrap_or(0.0)
}

fn pv_class(pv: &PersistentVolume) -> &str {
    pv.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or("")
}

fn claim_class(pvc: &PersistentVolumeClaim) -> &str {
    pvc.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or("")
}

/// Whether a volume's claimRef names this claim (uid, when set, must match too).
pub fn prebound_to(pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> bool {
    let Some(r) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return false;
    };
    r.name == pvc.metadata.name
        && r.namespace == pvc.metadata.namespace
        && r.uid
            .as_deref()
            .is_none_or(|u| u.is_empty() || Some(u) == pvc.metadata.uid.as_deref())
}

/// Whether a volume satisfies a claim: class, volume mode, access modes, capacity and
/// selector (binding state is checked by the caller).
pub fn matches(pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> bool {
    let (Some(vs), Some(cs)) = (pv.spec.as_ref(), pvc.spec.as_ref()) else {
        return false;
    };
    if pv.metadata.deletion_timestamp.is_some() || pv_class(pv) != claim_class(pvc) {
        return false;
    }
    if vs.volume_mode.as_deref().unwrap_or("Filesystem")
        != cs.volume_mode.as_deref().unwrap_or("Filesystem")
    {
        return false;
    }
    let modes: HashSet<&str> = vs
        .access_modes
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    if !cs
        .access_modes
        .iter()
        .flatten()
        .all(|m| modes.contains(m.as_str()))
    {
        return false;
    }
    if pv_capacity(pv).unwrap_or(0.0) < claim_request(pvc) {
        return false;
    }
    if let Some(sel) = &cs.selector {
        if !selector_matches(sel, pv.metadata.labels.as_ref().unwrap_or(&BTreeMap::new())) {
            return false;
        }
    }
    true
}

/// The volume to bind a claim to: one pre-bound to it if it matches, else the smallest
/// matching volume that is not bound or pre-bound to anything.
pub fn find_volume<'a>(
    pvc: &PersistentVolumeClaim,
    pvs: &'a [Arc<PersistentVolume>],
) -> Option<&'a PersistentVolume> {
    if let Some(pv) = pvs
        .iter()
        .map(|p| p.as_ref())
        .find(|pv| prebound_to(pv, pvc) && matches(pv, pvc))
    {
        return Some(pv);
    }
    pvs.iter()
        .map(|p| p.as_ref())
        .filter(|pv| pv.spec.as_ref().is_some_and(|s| s.claim_ref.is_none()))
        .filter(|pv| {
            pv.status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_none_or(|p| p == "Available" || p == "Pending")
        })
        .filter(|pv| matches(pv, pvc))
        .min_by(|a, b| {
            pv_capacity(a)
                .unwrap_or(0.0)
                .total_cmp(&pv_capacity(b).unwrap_or(0.0))
                .then_with(|| a.metadata.name.cmp(&b.metadata.name))
        })
}

/// What happens to a volume whose bound claim is gone: the phase and message.
pub fn reclaim(pv: &PersistentVolume) -> (&'static str, Option<String>) {
    let policy = pv
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        .unwrap_or("Retain");
    let external = pv
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(ANN_PROVISIONED_BY));
    match policy {
        "Delete" if !external => ("Failed", Some(format!("error getting deleter volume plugin for volume \"{}\": no deletable volume plugin matched", pv.metadata.name.as_deref().unwrap_or("")))),
        "Recycle" => ("Failed", Some(format!("no volume plugin matched name for recycling volume \"{}\"", pv.metadata.name.as_deref().unwrap_or("")))),
        _ => ("Released", None),
    }
}

fn claim_ref(pvc: &PersistentVolumeClaim) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        namespace: pvc.metadata.namespace.clone(),
        name: pvc.metadata.name.clone(),
        uid: pvc.metadata.uid.clone(),
        resource_version: pvc.metadata.resource_version.clone(),
        field_path: None,
    }
}

fn waits_for_consumer(pvc: &PersistentVolumeClaim, classes: &Store<StorageClass>) -> bool {
    let class = claim_class(pvc);
    if class.is_empty() {
        return false;
    }
    let wffc = classes
        .get(&ObjectRef::new(class))
        .is_some_and(|c| c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"));
    wffc && !pvc
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(ANN_SELECTED_NODE))
}

struct Ctx {
    client: kube::Client,
    events: Events,
    reported: HashSet<String>,
    nodes: Store<Node>,
}

/// Whether a volume's required node affinity admits the node a delayed-binding claim
/// was scheduled to (`selected`, with its labels when known; `kubernetes.io/hostname`
/// defaults to the name). Volumes without node affinity admit every node.
pub fn fits_selected_node(
    pv: &PersistentVolume,
    selected: &str,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    let Some(req) = pv
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
    else {
        return true;
    };
    let mut labels = labels.cloned().unwrap_or_default();
    labels
        .entry("kubernetes.io/hostname".to_string())
        .or_insert_with(|| selected.to_string());
    rk3s_core::selector::NodeSelectorMatcher::new(req).matches(selected, Some(&labels))
}

async fn bind(
    ctx: &Ctx,
    pv: &PersistentVolume,
    pvc: &PersistentVolumeClaim,
) -> Result<(), ControllerError> {
    let pv_api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let ns = pvc.metadata.namespace.clone().unwrap_or_default();
    let pvc_api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let pv_name = pv.metadata.name.clone().unwrap_or_default();
    let claim_name = pvc.metadata.name.clone().unwrap_or_default();
    // 1. The volume's claimRef.
    let needs_ref = pv
        .spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .is_none_or(|r| r.uid.as_deref().unwrap_or("").is_empty());
    if needs_ref {
        let mut v = pv.clone();
        let by_controller = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).is_none();
        if let Some(spec) = v.spec.as_mut() {
            spec.claim_ref = Some(claim_ref(pvc));
        }
        if by_controller {
            v.metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(ANN_BOUND_BY_CONTROLLER.into(), "yes".into());
        }
        pv_api.replace(&pv_name, &PostParams::default(), &v).await?;
    }
    pv_api
        .patch_status(
            &pv_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Bound"}})),
        )
        .await?;
    // 2. The claim's volumeName and annotations.
    let mut c = pvc.clone();
    let by_controller = c
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .is_none_or(|v| v.is_empty());
    if let Some(spec) = c.spec.as_mut() {
        spec.volume_name = Some(pv_name.clone());
    }
    let ann = c.metadata.annotations.get_or_insert_with(BTreeMap::new);
    ann.insert(ANN_BIND_COMPLETED.into(), "yes".into());
    if by_controller {
        ann.insert(ANN_BOUND_BY_CONTROLLER.into(), "yes".into());
    }
    pvc_api
        .replace(&claim_name, &PostParams::default(), &c)
        .await?;
    let status = json!({"status": {
        "phase": "Bound",
        "accessModes": pv.spec.as_ref().and_then(|s| s.access_modes.clone()),
        "capacity": pv.spec.as_ref().and_then(|s| s.capacity.clone()),
    }});
    pvc_api
        .patch_status(&claim_name, &PatchParams::default(), &Patch::Merge(status))
        .await?;
    tracing::info!(claim = %claim_name, namespace = %ns, volume = %pv_name, "bound claim to volume");
    Ok(())
}

async fn sync(
    ctx: &mut Ctx,
    pvs: &Store<PersistentVolume>,
    pvcs: &Store<PersistentVolumeClaim>,
    classes: &Store<StorageClass>,
) -> Result<Option<Duration>, ControllerError> {
    let volumes = pvs.state();
    let claims = pvcs.state();
    let pv_api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let mut taken: HashSet<String> = HashSet::new();
    // Volumes bound in this pass (the cache doesn't show it yet).
    let mut bound_now: HashSet<String> = HashSet::new();
    // Claims.
    for pvc in &claims {
        if pvc.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let ns = pvc.metadata.namespace.clone().unwrap_or_default();
        let name = pvc.metadata.name.clone().unwrap_or_default();
        let key = format!("{ns}/{name}");
        let phase = pvc
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        let volume_name = pvc
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .filter(|v| !v.is_empty());
        let pvc_api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
        match volume_name {
            Some(vn) => {
                let pv = volumes
                    .iter()
                    .find(|v| v.metadata.name.as_deref() == Some(vn.as_str()));
                match pv {
                    None if phase == "Bound" => {
                        ctx.events.record(&pvc.object_ref(&()), true, "ClaimLost", "Bound claim has lost its PersistentVolume. Data on the volume is lost!".into()).await;
                        pvc_api
                            .patch_status(
                                &name,
                                &PatchParams::default(),
                                &Patch::Merge(json!({"status": {"phase": "Lost"}})),
                            )
                            .await?;
                    }
                    None => {
                        if phase.is_empty() {
                            pvc_api
                                .patch_status(
                                    &name,
                                    &PatchParams::default(),
                                    &Patch::Merge(json!({"status": {"phase": "Pending"}})),
                                )
                                .await?;
                        }
                    }
                    Some(pv) => {
                        let bound_here = pv
                            .spec
                            .as_ref()
                            .and_then(|s| s.claim_ref.as_ref())
                            .is_some_and(|r| {
                                r.uid.as_deref() == pvc.metadata.uid.as_deref()
                                    && r.name.as_deref() == Some(name.as_str())
                            });
                        let free = pv.spec.as_ref().is_some_and(|s| s.claim_ref.is_none())
                            || prebound_to(pv, pvc);
                        let completed = pvc
                            .metadata
                            .annotations
                            .as_ref()
                            .is_some_and(|a| a.contains_key(ANN_BIND_COMPLETED));
                        taken.insert(vn.clone());
                        if (bound_here && completed && phase == "Bound") || (!bound_here && !free) {
                            continue;
                        }
                        bind(ctx, pv, pvc).await?;
                        bound_now.insert(vn.clone());
                    }
                }
            }
            None => {
                if waits_for_consumer(pvc, classes) {
                    if ctx.reported.insert(format!("wffc/{key}")) {
                        ctx.events
                            .record(
                                &pvc.object_ref(&()),
                                false,
                                "WaitForFirstConsumer",
                                "waiting for first consumer to be created before binding".into(),
                            )
                            .await;
                    }
                    if phase.is_empty() {
                        pvc_api
                            .patch_status(
                                &name,
                                &PatchParams::default(),
                                &Patch::Merge(json!({"status": {"phase": "Pending"}})),
                            )
                            .await?;
                    }
                    continue;
                }
                // A claim scheduled to a node only takes volumes that node can use
                // (volumes pre-bound to it are taken as they are, as upstream's).
                let selected = pvc
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(ANN_SELECTED_NODE));
                let node_labels = selected
                    .and_then(|n| ctx.nodes.get(&ObjectRef::new(n)))
                    .and_then(|n| n.metadata.labels.clone());
                let candidates: Vec<Arc<PersistentVolume>> = volumes
                    .iter()
                    .filter(|v| !taken.contains(v.metadata.name.as_deref().unwrap_or("")))
                    .filter(|v| {
                        selected.is_none_or(|n| {
                            prebound_to(v, pvc) || fits_selected_node(v, n, node_labels.as_ref())
                        })
                    })
                    .cloned()
                    .collect();
                match find_volume(pvc, &candidates) {
                    Some(pv) => {
                        taken.insert(pv.metadata.name.clone().unwrap_or_default());
                        bind(ctx, pv, pvc).await?;
                        bound_now.insert(pv.metadata.name.clone().unwrap_or_default());
                    }
                    None => {
                        let class = claim_class(pvc);
                        let provisioner = (!class.is_empty())
                            .then(|| classes.get(&ObjectRef::new(class)))
                            .flatten()
                            .map(|c| c.provisioner.clone());
                        if let Some(p) = &provisioner {
                            // Upstream's setClaimProvisioner: the external provisioner
                            // finds its claims by this annotation.
                            let ann = pvc.metadata.annotations.as_ref();
                            if ann.and_then(|a| a.get(ANN_STORAGE_PROVISIONER)) != Some(p) {
                                // An update (the binder's role has no patch on claims).
                                let mut c = (**pvc).clone();
                                let a = c.metadata.annotations.get_or_insert_with(BTreeMap::new);
                                a.insert(ANN_STORAGE_PROVISIONER.into(), p.clone());
                                a.insert(ANN_BETA_STORAGE_PROVISIONER.into(), p.clone());
                                pvc_api.replace(&name, &PostParams::default(), &c).await?;
                            }
                        }
                        if phase.is_empty() {
                            pvc_api
                                .patch_status(
                                    &name,
                                    &PatchParams::default(),
                                    &Patch::Merge(json!({"status": {"phase": "Pending"}})),
                                )
                                .await?;
                        }
                        let (reason, msg) = match (class.is_empty(), provisioner) {
                            (true, _) => ("FailedBinding", "no persistent volumes available for this claim and no storage class is set".to_string()),
                            (false, Some(p)) => ("ExternalProvisioning", format!("Waiting for a volume to be created either by the external provisioner '{p}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered.")),
                            (false, None) => ("ProvisioningFailed", format!("storageclass.storage.k8s.io \"{class}\" not found")),
                        };
                        if ctx.reported.insert(format!("{reason}/{key}")) {
                            ctx.events
                                .record(
                                    &pvc.object_ref(&()),
                                    reason != "ExternalProvisioning",
                                    reason,
                                    msg,
                                )
                                .await;
                        }
                    }
                }
            }
        }
    }
    // Volumes.
    for pv in &volumes {
        let name = pv.metadata.name.clone().unwrap_or_default();
        if bound_now.contains(&name) {
            continue;
        }
        let phase = pv
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        let want: Option<(&str, Option<String>)> =
            match pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) {
                None => (phase != "Available" && phase != "Failed").then_some(("Available", None)),
                Some(r) => {
                    let claim = claims
                        .iter()
                        .find(|c| c.metadata.namespace == r.namespace && c.metadata.name == r.name);
                    let uid = r.uid.as_deref().unwrap_or("");
                    match claim {
                        // Pre-bound to a claim that doesn't exist yet: stays Available.
                        None if uid.is_empty() => {
                            (phase != "Available").then_some(("Available", None))
                        }
                        Some(c) if uid.is_empty() || c.metadata.uid.as_deref() == Some(uid) => {
                            let bound = !uid.is_empty()
                                && c.spec.as_ref().and_then(|s| s.volume_name.as_deref())
                                    == Some(name.as_str());
                            (bound && phase != "Bound").then_some(("Bound", None))
                        }
                        _ => {
                            if phase == "Bound" || phase.is_empty() || phase == "Available" {
                                let (p, msg) = reclaim(pv);
                                Some((p, msg))
                            } else {
                                None
                            }
                        }
                    }
                }
            };
        if let Some((p, msg)) = want {
            let status = match &msg {
                Some(m) => json!({"status": {"phase": p, "message": m}}),
                None => json!({"status": {"phase": p}}),
            };
            match pv_api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                .await
            {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => continue,
                Err(e) => return Err(e.into()),
            }
            if let Some(m) = msg {
                ctx.events
                    .record(&pv.object_ref(&()), true, "VolumeFailedDelete", m)
                    .await;
            }
        }
    }
    Ok(None)
}

/// Runs the PersistentVolume binder forever.
pub async fn run(
    client: kube::Client,
    informers: crate::informers::SharedInformers,
) -> Result<(), ControllerError> {
    // The shared informers; every change queues a pass.
    let changes = [
        Trigger::changes(&informers, |_: &PersistentVolume| Some(())),
        Trigger::changes(&informers, |_: &PersistentVolumeClaim| Some(())),
        Trigger::changes(&informers, |_: &StorageClass| Some(())),
    ];
    let pvs = informers.store::<PersistentVolume>().await;
    let pvcs = informers.store::<PersistentVolumeClaim>().await;
    let classes = informers.store::<StorageClass>().await;
    let nodes = informers.store::<Node>().await;
    let ctx = Arc::new(tokio::sync::Mutex::new(Ctx {
        events: Events::new(client.clone(), "persistentvolume-controller"),
        client,
        reported: HashSet::new(),
        nodes,
    }));
    // One key: a pass over every volume and claim, on a change or every 15 s.
    let mut triggers = Vec::from(changes);
    triggers.push(Trigger::every(Duration::from_secs(15), ()));
    run_controller("pvbinder", 1, WorkQueue::new(), triggers, move |()| {
        let (ctx, pvs, pvcs, classes) = (ctx.clone(), pvs.clone(), pvcs.clone(), classes.clone());
        async move {
            let mut ctx = ctx.lock().await;
            sync(&mut ctx, &pvs, &pvcs, &classes)
                .await
                .map(Action::requeue_after)
        }
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        PersistentVolumeClaimSpec, PersistentVolumeSpec, VolumeResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

    fn pv(name: &str, size: &str, class: Option<&str>, modes: &[&str]) -> Arc<PersistentVolume> {
        Arc::new(PersistentVolume {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([("tier".to_string(), name.to_string())].into()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeSpec {
                capacity: Some([("storage".to_string(), Quantity(size.into()))].into()),
                access_modes: Some(modes.iter().map(|m| m.to_string()).collect()),
                storage_class_name: class.map(String::from),
                ..Default::default()
            }),
            status: None,
        })
    }

    fn pvc(size: &str, class: Option<&str>, modes: &[&str]) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("c".into()),
                namespace: Some("ns".into()),
                uid: Some("u1".into()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(modes.iter().map(|m| m.to_string()).collect()),
                storage_class_name: class.map(String::from),
                resources: Some(VolumeResourceRequirements {
                    requests: Some([("storage".to_string(), Quantity(size.into()))].into()),
                    limits: None,
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity_bytes(&Quantity("1Gi".into())), Some(1073741824.0));
        assert_eq!(quantity_bytes(&Quantity("500M".into())), Some(5e8));
        assert_eq!(quantity_bytes(&Quantity("1.5Ki".into())), Some(1536.0));
        assert_eq!(quantity_bytes(&Quantity("12".into())), Some(12.0));
        assert_eq!(quantity_bytes(&Quantity("1Q".into())), None);
        // the old copy here rejected exponents that validation admits
        assert_eq!(quantity_bytes(&Quantity("1e9".into())), Some(1e9));
        assert_eq!(quantity_bytes(&Quantity("1E3".into())), Some(1e3));
    }

    #[test]
    fn smallest_matching_volume_wins() {
        let vols = vec![
            pv("big", "10Gi", None, &["ReadWriteOnce"]),
            pv("small", "2Gi", None, &["ReadWriteOnce", "ReadOnlyMany"]),
            pv("tiny", "512Mi", None, &["ReadWriteOnce"]),
            pv("fast", "2Gi", Some("fast"), &["ReadWriteOnce"]),
        ];
        let c = pvc("1Gi", None, &["ReadWriteOnce"]);
        assert_eq!(
            find_volume(&c, &vols).and_then(|v| v.metadata.name.as_deref()),
            Some("small")
        );
        // Access modes must be covered.
        let rwx = pvc("1Gi", None, &["ReadWriteMany"]);
        assert!(find_volume(&rwx, &vols).is_none());
        // Storage class must match.
        let fast = pvc("1Gi", Some("fast"), &["ReadWriteOnce"]);
        assert_eq!(
            find_volume(&fast, &vols).and_then(|v| v.metadata.name.as_deref()),
            Some("fast")
        );
        // Selector.
        let mut sel = pvc("1Gi", None, &["ReadWriteOnce"]);
        sel.spec.as_mut().unwrap().selector = Some(LabelSelector {
            match_labels: Some([("tier".to_string(), "big".to_string())].into()),
            match_expressions: None,
        });
        assert_eq!(
            find_volume(&sel, &vols).and_then(|v| v.metadata.name.as_deref()),
            Some("big")
        );
        // Volume mode.
        let mut block = pvc("1Gi", None, &["ReadWriteOnce"]);
        block.spec.as_mut().unwrap().volume_mode = Some("Block".into());
        assert!(find_volume(&block, &vols).is_none());
    }

    #[test]
    fn bound_volumes_are_skipped_and_prebound_preferred() {
        let mut taken = (*pv("small", "2Gi", None, &["ReadWriteOnce"])).clone();
        taken.spec.as_mut().unwrap().claim_ref = Some(ObjectReference {
            name: Some("other".into()),
            namespace: Some("ns".into()),
            uid: Some("u9".into()),
            ..Default::default()
        });
        let mut pre = (*pv("pre", "10Gi", None, &["ReadWriteOnce"])).clone();
        pre.spec.as_mut().unwrap().claim_ref = Some(ObjectReference {
            name: Some("c".into()),
            namespace: Some("ns".into()),
            ..Default::default()
        });
        let free = pv("free", "5Gi", None, &["ReadWriteOnce"]);
        let c = pvc("1Gi", None, &["ReadWriteOnce"]);
        let vols = vec![Arc::new(taken.clone()), Arc::new(pre), free.clone()];
        assert_eq!(
            find_volume(&c, &vols).and_then(|v| v.metadata.name.as_deref()),
            Some("pre")
        );
        let vols = vec![Arc::new(taken), free];
        assert_eq!(
            find_volume(&c, &vols).and_then(|v| v.metadata.name.as_deref()),
            Some("free")
        );
    }

    #[test]
    fn selected_node_must_fit_the_volume() {
        let mut v = (*pv("v", "1Gi", None, &["ReadWriteOnce"])).clone();
        assert!(fits_selected_node(&v, "a", None), "no affinity: any node");
        v.spec.as_mut().unwrap().node_affinity = Some(
            serde_json::from_value(json!({
            "required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": ["b"]}]}]}}))
            .unwrap(),
        );
        assert!(fits_selected_node(&v, "b", None));
        assert!(!fits_selected_node(&v, "a", None));
        let labels: BTreeMap<String, String> =
            [("kubernetes.io/hostname".to_string(), "b".to_string())].into();
        assert!(fits_selected_node(&v, "node-b", Some(&labels)));
        v.spec.as_mut().unwrap().node_affinity = Some(
            serde_json::from_value(json!({
            "required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "zone", "operator": "In", "values": ["z1"]}]}]}}))
            .unwrap(),
        );
        let zoned: BTreeMap<String, String> = [("zone".to_string(), "z1".to_string())].into();
        assert!(fits_selected_node(&v, "a", Some(&zoned)));
        assert!(!fits_selected_node(&v, "a", None));
    }

    #[test]
    fn reclaim_policies() {
        let mut v = (*pv("v", "1Gi", None, &["ReadWriteOnce"])).clone();
        v.spec.as_mut().unwrap().persistent_volume_reclaim_policy = Some("Retain".into());
        assert_eq!(reclaim(&v).0, "Released");
        v.spec.as_mut().unwrap().persistent_volume_reclaim_policy = Some("Delete".into());
        let (p, msg) = reclaim(&v);
        assert_eq!(p, "Failed");
        assert!(msg.unwrap().contains("no deletable volume plugin matched"));
        v.metadata.annotations = Some(
            [(
                ANN_PROVISIONED_BY.to_string(),
                "rancher.io/local-path".to_string(),
            )]
            .into(),
        );
        assert_eq!(reclaim(&v).0, "Released");
    }
}
