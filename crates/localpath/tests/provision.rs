//! The provisioner against a real in-process API server (SQLite store in a temp dir)
//! with the PV binder of the controller manager: a claim the scheduler placed on this
//! node gets its volume and folder and is bound; refused claims get upstream's Events;
//! a released `Delete` volume loses its folder and is deleted, a `Retain` one stays; an
//! invalid configuration is ignored; a restarted provisioner creates nothing twice.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Event, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use rk3s_apiserver::testutil::server;
use rk3s_apiserver::UserInfo;
use rk3s_local_path::LocalPathOptions;
use serde_json::json;

fn claim(name: &str, class: &str, modes: &[&str], node: &str) -> PersistentVolumeClaim {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default",
                     "annotations": {"volume.kubernetes.io/selected-node": node}},
        "spec": {"accessModes": modes, "storageClassName": class,
                 "resources": {"requests": {"storage": "1Gi"}}},
    }))
    .expect("claim")
}

fn config_map(path: &str) -> ConfigMap {
    let cfg =
        json!({"nodePathMap": [{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": [path]}]});
    serde_json::from_value(json!({
        "metadata": {"name": "local-path-config", "namespace": "kube-system"},
        "data": {"config.json": cfg.to_string()},
    }))
    .expect("config map")
}

/// Polls `f` every 20 ms until it gives `Some`, for at most 20 s.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..1000 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn events_of(client: &kube::Client, name: &str) -> Vec<(String, String, String)> {
    let api: Api<Event> = Api::namespaced(client.clone(), "default");
    api.list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default(),
            )
        })
        .collect()
}

fn start(client: &kube::Client, default_path: &Path) -> tokio::task::JoinHandle<()> {
    let mut opts = LocalPathOptions::new("node-a", default_path.to_path_buf());
    opts.resync = Duration::from_millis(500);
    let client = client.clone();
    tokio::spawn(async move {
        let _ = rk3s_local_path::run(client, opts).await;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisions_binds_and_reclaims() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = server(dir.path()).await;
    let admin = UserInfo::new("system:admin", &["system:masters", "system:authenticated"]);
    let client = rk3s_controllers::client_over(api.local_service(admin));
    let storage = dir.path().join("storage");
    let default_path = dir.path().join("unused-default");

    let classes: Api<StorageClass> = Api::all(client.clone());
    for (name, policy) in [("local-path", "Delete"), ("local-keep", "Retain")] {
        let sc: StorageClass = serde_json::from_value(json!({
            "metadata": {"name": name},
            "provisioner": "rancher.io/local-path",
            "volumeBindingMode": "WaitForFirstConsumer",
            "reclaimPolicy": policy,
        }))
        .expect("class");
        classes
            .create(&PostParams::default(), &sc)
            .await
            .expect("class");
    }
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    cms.create(
        &PostParams::default(),
        &config_map(storage.to_str().expect("utf-8")),
    )
    .await
    .expect("config map");

    // The PV binder of the controller manager binds what we provision.
    let informers = rk3s_runtime::SharedInformers::new(client.clone());
    let binder = tokio::spawn(rk3s_controllers::pvbinder::run(client.clone(), informers));
    let provisioner = start(&client, &default_path);

    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let pvs: Api<PersistentVolume> = Api::all(client.clone());

    // 1. A claim placed on this node: volume, folder, binding, events.
    let created = pvcs
        .create(
            &PostParams::default(),
            &claim("data", "local-path", &["ReadWriteOnce"], "node-a"),
        )
        .await
        .expect("claim");
    let uid = created.metadata.uid.clone().expect("uid");
    let pv_name = format!("pvc-{uid}");
    let pv = eventually("the volume", || {
        let pvs = pvs.clone();
        let n = pv_name.clone();
        async move { pvs.get_opt(&n).await.ok().flatten() }
    })
    .await;
    let folder = storage.join(format!("{pv_name}_default_data"));
    let spec = pv.spec.clone().expect("spec");
    assert_eq!(
        spec.host_path
            .as_ref()
            .map(|h| (h.path.as_str(), h.type_.as_deref())),
        Some((folder.to_str().expect("utf-8"), Some("DirectoryOrCreate")))
    );
    assert_eq!(spec.storage_class_name.as_deref(), Some("local-path"));
    assert_eq!(
        spec.persistent_volume_reclaim_policy.as_deref(),
        Some("Delete")
    );
    assert_eq!(spec.volume_mode.as_deref(), Some("Filesystem"));
    assert_eq!(spec.access_modes, Some(vec!["ReadWriteOnce".to_string()]));
    assert_eq!(
        spec.capacity
            .as_ref()
            .and_then(|c| c.get("storage"))
            .map(|q| q.0.as_str()),
        Some("1Gi")
    );
    let claim_ref = spec.claim_ref.clone().expect("claimRef");
    assert_eq!(claim_ref.uid.as_deref(), Some(uid.as_str()));
    assert_eq!(claim_ref.name.as_deref(), Some("data"));
    let affinity = serde_json::to_value(&spec.node_affinity).expect("json");
    assert_eq!(
        affinity,
        json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-a"]}]}]}})
    );
    let ann = pv.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        ann.get("pv.kubernetes.io/provisioned-by")
            .map(String::as_str),
        Some("rancher.io/local-path")
    );
    assert_eq!(
        ann.get("local.path.provisioner/selected-node")
            .map(String::as_str),
        Some("node-a")
    );
    assert!(folder.is_dir(), "the folder is created by the provisioner");
    assert_eq!(
        std::fs::metadata(&folder)
            .expect("folder")
            .permissions()
            .mode()
            & 0o777,
        0o777
    );
    assert!(!default_path.exists(), "the ConfigMap's path is used");
    // Bound by the binder, both ways.
    eventually("the claim bound", || {
        let (pvcs, pvs, n) = (pvcs.clone(), pvs.clone(), pv_name.clone());
        async move {
            let c = pvcs.get("data").await.ok()?;
            let v = pvs.get(&n).await.ok()?;
            let claim_bound = c.status.as_ref()?.phase.as_deref() == Some("Bound")
                && c.spec.as_ref()?.volume_name.as_deref() == Some(n.as_str());
            let volume_bound = v.status.as_ref()?.phase.as_deref() == Some("Bound");
            (claim_bound && volume_bound).then_some(())
        }
    })
    .await;
    let c = pvcs.get("data").await.expect("claim");
    assert_eq!(
        c.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("volume.kubernetes.io/storage-provisioner"))
            .map(String::as_str),
        Some("rancher.io/local-path"),
        "the binder names the provisioner on the claim"
    );
    let evs = eventually("the provisioning events", || {
        let client = client.clone();
        async move {
            let evs = events_of(&client, "data").await;
            evs.iter()
                .any(|e| e.1 == "ProvisioningSucceeded")
                .then_some(evs)
        }
    })
    .await;
    assert!(evs.contains(&(
        "Normal".into(),
        "Provisioning".into(),
        "External provisioner is provisioning volume for claim \"default/data\"".into()
    )));
    assert!(evs.contains(&(
        "Normal".into(),
        "ProvisioningSucceeded".into(),
        format!("Successfully provisioned volume {pv_name}")
    )));

    // 2. Claims local-path refuses; a claim selected to another node is left alone.
    pvcs.create(
        &PostParams::default(),
        &claim("shared", "local-path", &["ReadWriteMany"], "node-a"),
    )
    .await
    .expect("claim");
    let mut block = claim("raw", "local-path", &["ReadWriteOnce"], "node-a");
    block.spec.as_mut().expect("spec").volume_mode = Some("Block".into());
    pvcs.create(&PostParams::default(), &block)
        .await
        .expect("claim");
    let other = pvcs
        .create(
            &PostParams::default(),
            &claim("elsewhere", "local-path", &["ReadWriteOnce"], "node-b"),
        )
        .await
        .expect("claim");
    eventually("the refusals", || {
        let client = client.clone();
        async move {
            let shared = events_of(&client, "shared").await;
            let raw = events_of(&client, "raw").await;
            let ok = shared.contains(&(
                "Warning".into(),
                "ProvisioningFailed".into(),
                "failed to provision volume with StorageClass \"local-path\": NodePath only supports ReadWriteOnce and ReadWriteOncePod (1.22+) access modes".into(),
            )) && raw.contains(&(
                "Warning".into(),
                "ProvisioningFailed".into(),
                "rancher.io/local-path does not support block volume provisioning".into(),
            ));
            ok.then_some(())
        }
    })
    .await;
    let other_pv = format!("pvc-{}", other.metadata.uid.expect("uid"));
    assert!(pvs.get_opt(&other_pv).await.expect("get").is_none());

    // 3. An invalid configuration is reported and the last good one kept.
    let mut bad = config_map("relative/path");
    bad.metadata.resource_version = None;
    cms.replace("local-path-config", &PostParams::default(), &{
        let mut cm = cms.get("local-path-config").await.expect("cm");
        cm.data = bad.data.clone();
        cm
    })
    .await
    .expect("replace");
    let kept = pvcs
        .create(
            &PostParams::default(),
            &claim("kept", "local-keep", &["ReadWriteOnce"], "node-a"),
        )
        .await
        .expect("claim");
    let kept_pv = format!("pvc-{}", kept.metadata.uid.clone().expect("uid"));
    eventually("the retained claim bound", || {
        let pvcs = pvcs.clone();
        async move {
            let c = pvcs.get("kept").await.ok()?;
            (c.status?.phase.as_deref() == Some("Bound")).then_some(())
        }
    })
    .await;
    let kept_folder = storage.join(format!("{kept_pv}_default_kept"));
    assert!(kept_folder.is_dir(), "the last good configuration stays");
    let cm_events = eventually("the invalid-config event", || {
        let client = client.clone();
        async move {
            let api: Api<Event> = Api::namespaced(client, "kube-system");
            let evs = api.list(&ListParams::default()).await.ok()?.items;
            evs.into_iter()
                .find(|e| {
                    e.involved_object.name.as_deref() == Some("local-path-config")
                        && e.type_.as_deref() == Some("Warning")
                })
                .and_then(|e| e.message)
        }
    })
    .await;
    assert!(cm_events.contains("path must start with /"), "{cm_events}");

    // 4. A restarted provisioner (with a valid configuration again) creates nothing twice.
    let mut cm = cms.get("local-path-config").await.expect("cm");
    cm.data = config_map(storage.to_str().expect("utf-8")).data;
    cms.replace("local-path-config", &PostParams::default(), &cm)
        .await
        .expect("replace");
    provisioner.abort();
    let _ = provisioner.await;
    let provisioner = start(&client, &default_path);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let succeeded = events_of(&client, "data")
        .await
        .into_iter()
        .filter(|e| e.1 == "ProvisioningSucceeded")
        .count();
    assert_eq!(succeeded, 1, "the existing volume is not provisioned again");

    // 5. Reclaim: Delete removes folder and volume, Retain keeps both.
    std::fs::write(folder.join("file"), b"data").expect("write");
    pvcs.delete("data", &DeleteParams::default())
        .await
        .expect("delete");
    pvcs.delete("kept", &DeleteParams::default())
        .await
        .expect("delete");
    eventually("the released volume deleted", || {
        let (pvs, n) = (pvs.clone(), pv_name.clone());
        async move { pvs.get_opt(&n).await.ok()?.is_none().then_some(()) }
    })
    .await;
    assert!(!folder.exists(), "the folder is removed");
    eventually("the retained volume released", || {
        let (pvs, n) = (pvs.clone(), kept_pv.clone());
        async move {
            let v = pvs.get(&n).await.ok()?;
            (v.status?.phase.as_deref() == Some("Released")).then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(pvs.get_opt(&kept_pv).await.expect("get").is_some());
    assert!(kept_folder.is_dir(), "Retain keeps the folder");
    assert!(storage.is_dir());

    provisioner.abort();
    binder.abort();
}

/// The whole `WaitForFirstConsumer` path: the scheduler picks the node, selects it on the
/// claim and waits; the provisioner of that node creates the volume; the binder binds
/// it; only then is the pod bound to the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_selects_the_node_and_waits_for_the_volume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = server(dir.path()).await;
    let admin = UserInfo::new("system:admin", &["system:masters", "system:authenticated"]);
    let client = rk3s_controllers::client_over(api.local_service(admin));
    let storage = dir.path().join("storage");

    let classes: Api<StorageClass> = Api::all(client.clone());
    let sc: StorageClass = serde_json::from_value(json!({
        "metadata": {"name": "local-path"},
        "provisioner": "rancher.io/local-path",
        "volumeBindingMode": "WaitForFirstConsumer",
        "reclaimPolicy": "Delete",
    }))
    .expect("class");
    classes
        .create(&PostParams::default(), &sc)
        .await
        .expect("class");
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(json!({
        "metadata": {"name": "node-a", "labels": {"kubernetes.io/hostname": "node-a"}},
    }))
    .expect("node");
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("node");
    let status = json!({"status": {
        "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
        "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
    }});
    nodes
        .patch_status(
            "node-a",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(status),
        )
        .await
        .expect("node status");

    let informers = rk3s_runtime::SharedInformers::new(client.clone());
    let binder = tokio::spawn(rk3s_controllers::pvbinder::run(
        client.clone(),
        informers.clone(),
    ));
    let mut sched_opts = rk3s_scheduler::RunOptions::new("test");
    sched_opts.informers = Some(informers);
    let scheduler = tokio::spawn(rk3s_scheduler::run(client.clone(), sched_opts));
    let provisioner = start(&client, &storage);

    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let mut c = claim("web-data", "local-path", &["ReadWriteOnce"], "");
    c.metadata.annotations = None;
    let created = pvcs
        .create(&PostParams::default(), &c)
        .await
        .expect("claim");
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), "default");
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}],
                 "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "web-data"}}]},
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("pod");

    let node_name = eventually("the pod bound", || {
        let pods = pods.clone();
        async move { pods.get("web").await.ok()?.spec?.node_name }
    })
    .await;
    assert_eq!(node_name, "node-a");
    // The claim was bound before the pod.
    let c = pvcs.get("web-data").await.expect("claim");
    let pv_name = format!("pvc-{}", created.metadata.uid.expect("uid"));
    assert_eq!(
        c.spec.as_ref().and_then(|s| s.volume_name.as_deref()),
        Some(pv_name.as_str())
    );
    assert_eq!(
        c.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Bound")
    );
    assert_eq!(
        c.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("volume.kubernetes.io/selected-node"))
            .map(String::as_str),
        Some("node-a")
    );
    assert!(storage.join(format!("{pv_name}_default_web-data")).is_dir());

    provisioner.abort();
    scheduler.abort();
    binder.abort();
}
