//! Auto-deployed manifests (issue 14): every file in `<data-dir>/server/manifests/` is
//! applied, tracked by an `Addon` object, kept in step with the file, and skipped or
//! refused as k3s does; the bundled add-ons are written there and `--disable` removes them.
//! The control plane only (`--disable-agent`): no containers run.

mod common;

use std::time::{Duration, Instant};

use common::{wait_for, Cluster};

fn exists(c: &Cluster, args: &[&str]) -> bool {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend(["--ignore-not-found", "-o", "name"]);
    !c.ok(&a).trim().is_empty()
}

fn config_map(name: &str, value: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: default\ndata:\n  v: {value:?}\n")
}

#[test]
fn manifests_folder_is_applied_and_followed() {
    let mut c = Cluster::start();
    let dir = c.data_dir().join("server/manifests");
    // The bundled add-ons are staged as files and applied.
    wait_for(
        "bundled local-storage.yaml",
        Duration::from_secs(30),
        || dir.join("local-storage.yaml").exists().then_some(()),
    );
    wait_for("StorageClass local-path", Duration::from_secs(30), || {
        exists(&c, &["storageclass", "local-path"]).then_some(())
    });

    // A dropped file is applied (and tracked by an Addon with its checksum).
    let file = dir.join("demo.yaml");
    let t0 = Instant::now();
    std::fs::write(
        &file,
        format!(
            "{}---\n{}",
            config_map("demo-a", "1"),
            config_map("demo-b", "1")
        ),
    )
    .expect("write demo.yaml");
    wait_for("demo-a and demo-b", Duration::from_secs(20), || {
        (exists(&c, &["configmap", "demo-a"]) && exists(&c, &["configmap", "demo-b"])).then_some(())
    });
    eprintln!("a dropped manifest was applied after {:?}", t0.elapsed());
    let checksum = c.ok(&[
        "get",
        "addons.rk3s.cattle.io",
        "-n",
        "kube-system",
        "demo",
        "-o",
        "jsonpath={.spec.checksum}",
    ]);
    assert_eq!(checksum.len(), 64, "sha256 checksum: {checksum:?}");

    // Editing the file updates the object; removing a document deletes its object.
    std::fs::write(&file, config_map("demo-a", "2")).expect("edit demo.yaml");
    wait_for(
        "demo-a updated, demo-b deleted",
        Duration::from_secs(20),
        || {
            let v = c.ok(&["get", "configmap", "demo-a", "-o", "jsonpath={.data.v}"]);
            (v == "2" && !exists(&c, &["configmap", "demo-b"])).then_some(())
        },
    );

    // A file that does not parse: an Event names the file and line, nothing of it is applied.
    std::fs::write(
        dir.join("bad.yaml"),
        format!(
            "{}---\nkind: ConfigMap\n  metadata: [unclosed\n",
            config_map("bad-first", "1")
        ),
    )
    .expect("write bad.yaml");
    let events = wait_for("an Event about bad.yaml", Duration::from_secs(20), || {
        let e = c.ok(&[
            "get",
            "events",
            "-n",
            "kube-system",
            "-o",
            "jsonpath={.items[*].message}",
        ]);
        e.contains("bad.yaml").then_some(e)
    });
    assert!(
        events.contains("line"),
        "the Event gives the line: {events}"
    );
    assert!(
        !exists(&c, &["configmap", "bad-first"]),
        "nothing of a bad file is applied"
    );

    // `demo.yaml.skip` stops the file: later edits are not applied. (The marker file
    // written after it shows the folder was processed past the edit.)
    std::fs::write(dir.join("demo.yaml.skip"), "").expect("skip");
    std::fs::write(&file, config_map("demo-a", "3")).expect("edit skipped demo.yaml");
    std::fs::write(dir.join("marker.yaml"), config_map("marker", "1")).expect("marker");
    wait_for("marker applied", Duration::from_secs(20), || {
        exists(&c, &["configmap", "marker"]).then_some(())
    });
    assert_eq!(
        c.ok(&["get", "configmap", "demo-a", "-o", "jsonpath={.data.v}"]),
        "2",
        "a skipped file is not applied"
    );

    // `--disable local-storage`: its file and its objects go away.
    c.restart(&["--disable=local-storage"]);
    wait_for("local-path removed", Duration::from_secs(30), || {
        (!exists(&c, &["storageclass", "local-path"]) && !dir.join("local-storage.yaml").exists())
            .then_some(())
    });
    assert!(exists(&c, &["configmap", "marker"]), "other add-ons stay");
}
