//! Datastore snapshots (issue 15, item 6): `rk3s etcd-snapshot save` while 8 clients write,
//! then `--cluster-reset --cluster-reset-restore-path` into a fresh data dir: the restored
//! cluster holds every object acknowledged up to the snapshot's revision and none after;
//! `ls`, `delete` and `prune` manage the files.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::http::{Conn, Creds};
use common::{wait_for, Cluster};

fn rk3s(args: &[&str]) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_rk3s"))
        .args(args)
        .output()
        .expect("run rk3s");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn snapshot_under_write_load_restores_a_consistent_cut() {
    let c = Cluster::start();
    let data = c.data_dir();
    let data_flag = format!("--data-dir={}", data.display());
    let creds = Arc::new(Creds::from_kubeconfig(&c.kubeconfig, c.port));
    // Acknowledged creates: (name, resourceVersion).
    let acked = Arc::new(Mutex::new(Vec::<(String, i64)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (creds, acked, stop) = (creds.clone(), acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut conn = Conn::connect(&creds).expect("connect");
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let name = format!("w{w}-{i}");
                    let body = format!(
                        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}"}},"data":{{"i":"{i}"}}}}"#
                    );
                    let (status, out) = conn
                        .request("POST", "/api/v1/namespaces/default/configmaps", Some(body.as_bytes()))
                        .expect("create");
                    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&out));
                    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
                    let rv: i64 = v["metadata"]["resourceVersion"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .expect("resourceVersion");
                    acked.lock().expect("lock").push((name, rv));
                    i += 1;
                }
            })
        })
        .collect();
    wait_for("writes under way", Duration::from_secs(30), || {
        (acked.lock().expect("lock").len() >= 200).then_some(())
    });
    let (ok, out) = rk3s(&["etcd-snapshot", &data_flag, "--node-name=n1", "save"]);
    assert!(ok, "save: {out}");
    // "Snapshot on-demand-n1-<ts> saved (revision N, B bytes)"
    let name = out
        .split_whitespace()
        .nth(1)
        .expect("snapshot name")
        .to_string();
    assert!(name.starts_with("on-demand-n1-"), "{out}");
    let revision: i64 = out
        .split("revision ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no revision in {out:?}"));
    // Keep writing a little after the snapshot, then stop.
    let at_snapshot = acked.lock().expect("lock").len();
    wait_for("writes after the snapshot", Duration::from_secs(30), || {
        (acked.lock().expect("lock").len() >= at_snapshot + 100).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("writer");
    }
    let acked = acked.lock().expect("lock").clone();
    let before: std::collections::BTreeSet<String> = acked
        .iter()
        .filter(|(_, rv)| *rv <= revision)
        .map(|(n, _)| n.clone())
        .collect();
    assert!(
        before.len() >= 200,
        "{} writes before the snapshot",
        before.len()
    );
    assert!(
        acked.iter().any(|(_, rv)| *rv > revision),
        "some writes came after the snapshot"
    );

    // ls lists it as k3s does.
    let (ok, ls) = rk3s(&["etcd-snapshot", &data_flag, "ls"]);
    assert!(ok, "{ls}");
    assert!(ls.starts_with("Name"), "{ls}");
    assert!(ls.contains(&name) && ls.contains("file://"), "{ls}");
    let file = data.join("server/db/snapshots").join(&name);
    assert!(file.is_file());

    // Restore into a fresh data dir, then start there.
    let fresh = tempfile::tempdir().expect("tempdir");
    let fresh_data = fresh.path().join("data");
    let fresh_config = fresh.path().join("config.yaml");
    std::fs::write(&fresh_config, "# test config\n").expect("config");
    let (ok, out) = rk3s(&[
        "server",
        &format!("--config={}", fresh_config.display()),
        &format!("--data-dir={}", fresh_data.display()),
        "--cluster-reset",
        &format!("--cluster-reset-restore-path={}", file.display()),
    ]);
    assert!(ok, "restore: {out}");
    assert!(out.contains("restart without --cluster-reset"), "{out}");
    let restored = Cluster::start_in(fresh, &[]);
    let listed = restored.ok(&[
        "get",
        "configmaps",
        "-n",
        "default",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}{\"\\n\"}{end}",
    ]);
    let got: std::collections::BTreeSet<String> = listed
        .lines()
        .filter(|l| l.starts_with('w'))
        .map(str::to_string)
        .collect();
    let missing: Vec<_> = before.difference(&got).collect();
    let extra: Vec<_> = got.difference(&before).collect();
    assert!(
        missing.is_empty(),
        "acknowledged before the snapshot but lost: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "written after the snapshot but restored: {extra:?}"
    );

    // delete and prune.
    for _ in 0..3 {
        let (ok, out) = rk3s(&["etcd-snapshot", &data_flag, "--node-name=n1", "save"]);
        assert!(ok, "{out}");
    }
    let (ok, out) = rk3s(&[
        "etcd-snapshot",
        &data_flag,
        "--node-name=n1",
        "prune",
        "--snapshot-retention=2",
    ]);
    assert!(ok, "{out}");
    assert_eq!(out.matches("deleted").count(), 2, "{out}");
    let (ok, out) = rk3s(&["etcd-snapshot", &data_flag, "delete", &name]);
    assert!(!ok, "the pruned snapshot is gone: {out}");
    let (_, ls) = rk3s(&["etcd-snapshot", &data_flag, "ls"]);
    assert_eq!(ls.lines().count(), 3, "a header and two snapshots: {ls}");
}
