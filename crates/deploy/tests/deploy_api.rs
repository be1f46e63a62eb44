//! The deploy controller against a real in-process API server: files applied, edited,
//! documents removed, bad files, CRDs with their objects, disabled add-ons.

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Event};
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use rk3s_apiserver::testutil::server;
use rk3s_apiserver::{ApiServer, UserInfo};
use rk3s_deploy::{DeployOptions, Disabled};

fn client(api: &ApiServer) -> kube::Client {
    let admin = UserInfo::new("system:admin", &["system:masters", "system:authenticated"]);
    kube::Client::new(api.local_service(admin), "default")
}

/// Polls `f` every 20 ms for up to `secs`; the time it took.
async fn until<F, Fut>(secs: u64, what: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if f().await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn cm(c: &kube::Client, ns: &str, name: &str) -> Option<ConfigMap> {
    Api::<ConfigMap>::namespaced(c.clone(), ns)
        .get_opt(name)
        .await
        .expect("get")
}

fn addons(c: &kube::Client) -> Api<DynamicObject> {
    Api::namespaced_with(
        c.clone(),
        "kube-system",
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("rk3s.cattle.io", "v1", "Addon"),
            "addons",
        ),
    )
}

async fn events_for(c: &kube::Client, addon: &str) -> Vec<Event> {
    Api::<Event>::namespaced(c.clone(), "kube-system")
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| {
            e.involved_object.name.as_deref() == Some(addon)
                && e.involved_object.kind.as_deref() == Some("Addon")
        })
        .collect()
}

fn options(dir: &Path, disabled: Disabled) -> DeployOptions {
    let mut o = DeployOptions::new(dir, disabled);
    o.resync = Duration::from_secs(30);
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_applied_updated_pruned_and_bad_files_apply_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let api = server(tmp.path()).await;
    let c = client(&api);
    let dir = rk3s_deploy::manifests_dir(tmp.path());
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(
        dir.join("app.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: apps\n  namespace: ignored\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: one\n  namespace: apps\ndata:\n  k: v1\n---\n# no namespace: default\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: two\ndata:\n  k: v1\n",
    )
    .expect("write");
    let task = tokio::spawn(rk3s_deploy::run(
        c.clone(),
        options(tmp.path(), Disabled::default()),
    ));

    until(15, "first apply", || async {
        cm(&c, "apps", "one").await.is_some() && cm(&c, "default", "two").await.is_some()
    })
    .await;
    let addon = until(5, "addon status", || async {
        addons(&c)
            .get_opt("app")
            .await
            .ok()
            .flatten()
            .is_some_and(|a| {
                a.data["status"]["objects"]
                    .as_array()
                    .is_some_and(|o| o.len() == 3)
            })
    })
    .await;
    let _ = addon;
    let a = addons(&c).get("app").await.expect("addon");
    assert_eq!(
        a.data["spec"]["source"],
        dir.join("app.yaml").display().to_string()
    );
    let content = std::fs::read(dir.join("app.yaml")).expect("read");
    assert_eq!(a.data["spec"]["checksum"].as_str().map(str::len), Some(64));
    assert_eq!(
        a.data["spec"]["checksum"],
        rk3s_deploy::addon::checksum(&content)
    );
    let gvks: Vec<&str> = a.data["status"]["gvks"]
        .as_array()
        .expect("gvks")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(gvks, ["/v1, Kind=ConfigMap", "/v1, Kind=Namespace"]);
    let one = cm(&c, "apps", "one").await.expect("one");
    let mf = one.metadata.managed_fields.clone().unwrap_or_default();
    assert!(
        mf.iter()
            .any(|m| m.manager.as_deref() == Some("deploy")
                && m.operation.as_deref() == Some("Apply")),
        "{mf:?}"
    );

    // edit: one updated, two removed from the file -> deleted
    std::fs::write(
        dir.join("app.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: apps\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: one\n  namespace: apps\ndata:\n  k: v2\n",
    )
    .expect("edit");
    until(5, "edit applied", || async {
        cm(&c, "apps", "one")
            .await
            .and_then(|m| m.data)
            .is_some_and(|d| d["k"] == "v2")
    })
    .await;
    until(5, "removed document deleted", || async {
        cm(&c, "default", "two").await.is_none()
    })
    .await;

    // a dropped file is applied within a second
    let start = Instant::now();
    std::fs::write(
        dir.join("drop.yml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: dropped}\n",
    )
    .expect("drop");
    until(5, "dropped file", || async {
        cm(&c, "default", "dropped").await.is_some()
    })
    .await;
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "dropped file applied after {took:?}"
    );

    // bad YAML in the second document: nothing of the file is applied
    std::fs::write(
        dir.join("bad.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bad-good-part}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n   data: [\n",
    )
    .expect("bad");
    until(5, "parse failure event", || async {
        events_for(&c, "bad").await.iter().any(|e| {
            e.reason.as_deref() == Some("ParseManifestFailed")
                && e.type_.as_deref() == Some("Warning")
        })
    })
    .await;
    let ev = events_for(&c, "bad").await;
    let msg = ev
        .iter()
        .find(|e| e.reason.as_deref() == Some("ParseManifestFailed"))
        .and_then(|e| e.message.clone())
        .unwrap_or_default();
    assert!(msg.contains("bad.yaml") && msg.contains("line 9"), "{msg}");
    assert!(
        cm(&c, "default", "bad-good-part").await.is_none(),
        "nothing of a bad file is applied"
    );

    // an unknown kind: nothing applied either
    std::fs::write(
        dir.join("unknown.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: unknown-good-part}\n---\napiVersion: nothere.example.com/v1\nkind: Widget\nmetadata: {name: w}\n",
    )
    .expect("unknown");
    until(5, "validate failure event", || async {
        events_for(&c, "unknown")
            .await
            .iter()
            .any(|e| e.reason.as_deref() == Some("ValidateManifestFailed"))
    })
    .await;
    assert!(cm(&c, "default", "unknown-good-part").await.is_none());

    // a CRD and an object of its kind in one file
    std::fs::write(
        dir.join("crd.yaml"),
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: gadgets.example.com}\nspec:\n  group: example.com\n  names: {kind: Gadget, plural: gadgets, singular: gadget, listKind: GadgetList}\n  scope: Namespaced\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}\n---\napiVersion: example.com/v1\nkind: Gadget\nmetadata: {name: g1, namespace: kube-system}\nspec: {size: 3}\n",
    )
    .expect("crd");
    let gadgets: Api<DynamicObject> = Api::namespaced_with(
        c.clone(),
        "kube-system",
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("example.com", "v1", "Gadget"),
            "gadgets",
        ),
    );
    until(15, "custom object", || async {
        gadgets.get_opt("g1").await.ok().flatten().is_some()
    })
    .await;

    // an object moved to another file is not deleted by the file it left
    std::fs::write(dir.join("zz-moved.yaml"), "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: one, namespace: apps}\ndata: {k: moved}\n").expect("moved");
    until(5, "moved object applied", || async {
        cm(&c, "apps", "one")
            .await
            .and_then(|m| m.metadata.annotations)
            .is_some_and(|a| a["objectset.rio.cattle.io/owner-name"] == "zz-moved")
    })
    .await;
    std::fs::write(
        dir.join("app.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: apps\n",
    )
    .expect("shrink");
    until(5, "app addon updated", || async {
        addons(&c)
            .get_opt("app")
            .await
            .ok()
            .flatten()
            .is_some_and(|a| {
                a.data["status"]["objects"]
                    .as_array()
                    .is_some_and(|o| o.len() == 1)
            })
    })
    .await;
    assert_eq!(
        cm(&c, "apps", "one")
            .await
            .and_then(|m| m.data)
            .expect("kept")["k"],
        "moved"
    );

    // a deleted file keeps its objects (as k3s)
    std::fs::remove_file(dir.join("drop.yml")).expect("rm");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(cm(&c, "default", "dropped").await.is_some());
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_addons_are_removed_with_their_objects() {
    let tmp = tempfile::tempdir().expect("tmp");
    let api = server(tmp.path()).await;
    let c = client(&api);
    let dir = rk3s_deploy::manifests_dir(tmp.path());
    let vars =
        rk3s_deploy::k3s_placeholders("10.43.0.10", "cluster.local", "/var/lib/rk3s/storage", "");
    let assets = [
        ("ingress.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ingress-cm, namespace: kube-system}\ndata: {domain: \"%{CLUSTER_DOMAIN}%\"}\n"),
        ("keep.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: keep-cm}\n"),
    ];
    rk3s_deploy::bundled::stage(&assets, &dir, &vars, &Disabled::default()).expect("stage");
    let task = tokio::spawn(rk3s_deploy::run(
        c.clone(),
        options(tmp.path(), Disabled::default()),
    ));
    // Both manifests applied before the restart (keep.yaml comes after ingress.yaml).
    until(15, "ingress and keep applied", || async {
        cm(&c, "kube-system", "ingress-cm").await.is_some()
            && cm(&c, "default", "keep-cm").await.is_some()
    })
    .await;
    assert_eq!(
        cm(&c, "kube-system", "ingress-cm")
            .await
            .and_then(|m| m.data)
            .expect("data")["domain"],
        "cluster.local"
    );
    until(5, "addon recorded", || async {
        addons(&c)
            .get_opt("ingress")
            .await
            .ok()
            .flatten()
            .is_some_and(|a| {
                a.data["spec"]["checksum"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty())
            })
    })
    .await;
    task.abort();

    // restart with --disable traefik: ingress.yaml, its ConfigMap and Addon go away
    let disabled = Disabled::from_names(["traefik"]);
    rk3s_deploy::bundled::stage(&assets, &dir, &vars, &disabled).expect("stage");
    let task = tokio::spawn(rk3s_deploy::run(c.clone(), options(tmp.path(), disabled)));
    until(15, "disabled objects deleted", || async {
        cm(&c, "kube-system", "ingress-cm").await.is_none()
    })
    .await;
    until(5, "disabled addon deleted", || async {
        addons(&c).get_opt("ingress").await.ok().flatten().is_none()
    })
    .await;
    until(5, "disabled file removed", || async {
        !dir.join("ingress.yaml").exists()
    })
    .await;
    assert!(cm(&c, "default", "keep-cm").await.is_some());
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundled_addons_apply_to_the_api_server() {
    let tmp = tempfile::tempdir().expect("tmp");
    let api = server(tmp.path()).await;
    let c = client(&api);
    let dir = rk3s_deploy::manifests_dir(tmp.path());
    let storage = tmp.path().join("storage").display().to_string();
    let vars = rk3s_deploy::k3s_placeholders("10.43.0.10", "cluster.local", &storage, "");
    let written = rk3s_deploy::stage_bundled(&dir, &vars, &Disabled::default()).expect("stage");
    assert_eq!(written.len(), rk3s_deploy::BUNDLED.len());
    let task = tokio::spawn(rk3s_deploy::run(
        c.clone(),
        options(tmp.path(), Disabled::default()),
    ));
    for (name, _) in rk3s_deploy::BUNDLED {
        let addon = name.split('.').next().expect("stem").to_string();
        let content = std::fs::read(dir.join(name)).expect("staged");
        let sum = rk3s_deploy::addon::checksum(&content);
        until(20, &format!("{name} applied"), || {
            let (c, addon, sum) = (c.clone(), addon.clone(), sum.clone());
            async move {
                addons(&c)
                    .get_opt(&addon)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|a| a.data["spec"]["checksum"] == sum.as_str())
            }
        })
        .await;
    }
    task.abort();
}
