//! Snapshots of an etcd datastore (issue 15): on the embedded etcd (`--cluster-init`),
//! `rk3s etcd-snapshot save` while 8 clients write, then `--cluster-reset
//! --cluster-reset-restore-path` and a restart: the restored cluster holds every object
//! acknowledged up to the snapshot's revision and none after. On an external etcd
//! (`--datastore-endpoint=http://...`, a single member started here), `save`, `ls` and
//! the scheduled snapshots work, and `--cluster-reset` is refused.
//!
//! Servers run with `--disable-agent`. The embedded etcd listens on 127.0.0.61 (its
//! advertise address) so it never meets another test's etcd on 127.0.0.1:2379. Every
//! rk3s and etcd process ends with the test.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::http::{Conn, Creds};
use common::{free_port, wait_for, Cluster};

fn rk3s(args: &[&str]) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_rk3s"))
        .args(args)
        .env_remove("RK3S_DATASTORE_ENDPOINT")
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

/// "Snapshot <name> saved (revision N, B bytes)" -> (name, N).
fn saved(out: &str) -> (String, i64) {
    let name = out
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no snapshot name in {out:?}"))
        .to_string();
    let revision = out
        .split("revision ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no revision in {out:?}"));
    (name, revision)
}

/// Whether a process runs (a zombie does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

fn etcd_pid(data: &Path) -> Option<u32> {
    std::fs::read_to_string(data.join("server/db/etcd.pid"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// 8 writers creating ConfigMaps until `stop`; each acknowledged create is recorded
/// with its resourceVersion (the etcd revision of the write).
fn writers(
    c: &Cluster,
    acked: &Arc<Mutex<Vec<(String, i64)>>>,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    let creds = Arc::new(Creds::from_kubeconfig(&c.kubeconfig, c.port));
    (0..8)
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
                        .request(
                            "POST",
                            "/api/v1/namespaces/default/configmaps",
                            Some(body.as_bytes()),
                        )
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
        .collect()
}

#[test]
fn embedded_etcd_snapshot_under_write_load_restores_a_consistent_cut() {
    let server_flags = [
        "--cluster-init",
        "--node-name=s1",
        "--advertise-address=127.0.0.61",
        "--etcd-disable-snapshots",
    ];
    let mut c = Cluster::start_with(&server_flags);
    let data = c.data_dir();
    assert!(data.join("server/db/etcd/member").is_dir());
    let data_flag = format!("--data-dir={}", data.display());
    let acked = Arc::new(Mutex::new(Vec::<(String, i64)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let threads = writers(&c, &acked, &stop);
    wait_for("writes under way", Duration::from_secs(60), || {
        (acked.lock().expect("lock").len() >= 200).then_some(())
    });
    let (ok, out) = rk3s(&["etcd-snapshot", &data_flag, "--node-name=n1", "save"]);
    assert!(ok, "save: {out}");
    let (name, revision) = saved(&out);
    assert!(name.starts_with("on-demand-n1-"), "{out}");
    let at_snapshot = acked.lock().expect("lock").len();
    wait_for("writes after the snapshot", Duration::from_secs(60), || {
        (acked.lock().expect("lock").len() >= at_snapshot + 100).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("writer");
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

    // Stop the server (its etcd dies with it), restore, restart on the same data dir.
    let pid = etcd_pid(&data).expect("etcd pid");
    c.stop();
    wait_for("etcd to stop with rk3s", Duration::from_secs(15), || {
        (!alive(pid)).then_some(())
    });
    let mut reset = vec![
        "server".to_string(),
        format!("--config={}", c.config_file().display()),
        data_flag.clone(),
        "--cluster-reset".to_string(),
        format!("--cluster-reset-restore-path={}", file.display()),
    ];
    reset.extend(server_flags.iter().map(|s| s.to_string()));
    let reset: Vec<&str> = reset.iter().map(String::as_str).collect();
    let (ok, out) = rk3s(&reset);
    assert!(ok, "restore: {out}");
    assert!(out.contains("restart without --cluster-reset"), "{out}");
    let kept: Vec<PathBuf> = std::fs::read_dir(data.join("server/db"))
        .expect("db dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("etcd-old-"))
        })
        .collect();
    assert_eq!(kept.len(), 1, "the old etcd data is kept aside");
    assert!(kept[0].join("member").is_dir());

    c.restart(&server_flags);
    let listed = c.ok(&[
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
    // The restored cluster takes writes.
    c.ok(&["create", "configmap", "after-restore", "--from-literal=k=v"]);

    // A SQLite-style file is refused, with the server stopped.
    let pid = etcd_pid(&data).expect("etcd pid");
    c.stop();
    wait_for("etcd to stop with rk3s", Duration::from_secs(15), || {
        (!alive(pid)).then_some(())
    });
    let junk = c.path().join("not-a-snapshot");
    std::fs::write(&junk, b"SQLite format 3\0").expect("junk");
    let mut bad: Vec<String> = reset.iter().map(|s| s.to_string()).collect();
    bad[4] = format!("--cluster-reset-restore-path={}", junk.display());
    let bad: Vec<&str> = bad.iter().map(String::as_str).collect();
    let (ok, out) = rk3s(&bad);
    assert!(!ok, "{out}");
    assert!(out.contains("not an etcd snapshot"), "{out}");

    // --cluster-reset alone: the member list is reset to this member, the data kept.
    let mut plain: Vec<&str> = reset.clone();
    plain.remove(4);
    let (ok, out) = rk3s(&plain);
    assert!(ok, "reset: {out}");
    assert!(out.contains("member list was reset"), "{out}");
    assert!(out.contains("restart without --cluster-reset"), "{out}");
    let etcd_log = std::fs::read_to_string(data.join("server/db/etcd.log")).expect("etcd log");
    assert!(
        etcd_log.contains("force-new-cluster"),
        "etcd ran with --force-new-cluster"
    );
    c.restart(&server_flags);
    let v = c.ok(&[
        "get",
        "configmap",
        "after-restore",
        "-o",
        "jsonpath={.data.k}",
    ]);
    assert_eq!(v, "v");
}

/// A single-member etcd on loopback (plain HTTP), killed on drop.
struct Etcd {
    child: Child,
    _dir: tempfile::TempDir,
    endpoint: String,
}

impl Etcd {
    fn start() -> Etcd {
        let (client, peer) = (free_port(), free_port());
        let dir = tempfile::tempdir().expect("etcd dir");
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("etcd log");
        let child = Command::new("etcd")
            .arg("--name=m0")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!("--initial-cluster=m0=http://127.0.0.1:{peer}"))
            .args([
                "--initial-cluster-token=rk3s-snapshot-e2e",
                "--initial-cluster-state=new",
                "--logger=zap",
                "--log-outputs=stderr",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd (Debian's etcd-server) on PATH");
        Etcd {
            child,
            _dir: dir,
            endpoint: format!("http://127.0.0.1:{client}"),
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn external_etcd_save_ls_and_schedule() {
    let etcd = Etcd::start();
    let endpoint_flag = format!("--datastore-endpoint={}", etcd.endpoint);
    let c = Cluster::start_with(&[
        &endpoint_flag,
        "--token=snapshot-e2e-token",
        "--node-name=ext",
        "--etcd-snapshot-schedule-cron=@every 2s",
        "--etcd-snapshot-retention=2",
    ]);
    let data = c.data_dir();
    let data_flag = format!("--data-dir={}", data.display());
    c.ok(&["create", "configmap", "before-save", "--from-literal=k=v"]);
    let rv: i64 = c
        .ok(&[
            "get",
            "configmap",
            "before-save",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ])
        .trim()
        .parse()
        .expect("resourceVersion");

    let (ok, out) = rk3s(&[
        "etcd-snapshot",
        &data_flag,
        &endpoint_flag,
        "--node-name=n1",
        "save",
        "--name=ext-save",
    ]);
    assert!(ok, "save: {out}");
    let (name, revision) = saved(&out);
    assert!(name.starts_with("ext-save-n1-"), "{out}");
    assert!(revision >= rv, "snapshot revision {revision} < {rv}: {out}");
    let file = data.join("server/db/snapshots").join(&name);
    let bytes = std::fs::read(&file).expect("snapshot file");
    // A bbolt database (etcd's backend file) with etcd's 32-byte hash trailer.
    assert_eq!(&bytes[16..20], &0xED0C_DAEDu32.to_le_bytes());
    assert!(bytes
        .windows(b"before-save".len())
        .any(|w| w == b"before-save"));

    let (ok, ls) = rk3s(&["etcd-snapshot", &data_flag, "ls"]);
    assert!(ok, "{ls}");
    assert!(ls.starts_with("Name"), "{ls}");
    assert!(ls.contains(&name) && ls.contains("file://"), "{ls}");
    let (ok, out) = rk3s(&["etcd-snapshot", &data_flag, "ls", "-o", "json"]);
    assert!(
        ok && out.contains(&format!("\"name\": \"{name}\"")),
        "{out}"
    );

    // Scheduled snapshots of the etcd datastore, pruned to the retention.
    let scheduled = |data: &Path| -> usize {
        std::fs::read_dir(data.join("server/db/snapshots"))
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        let n = e.file_name().to_string_lossy().to_string();
                        n.starts_with("etcd-snapshot-ext-") && !n.ends_with(".partial")
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    wait_for("two scheduled snapshots", Duration::from_secs(30), || {
        (scheduled(&data) >= 2).then_some(())
    });
    std::thread::sleep(Duration::from_secs(5));
    assert!(scheduled(&data) <= 2, "retention 2 keeps two");

    // Restoring an external etcd is the operator's job.
    let (ok, out) = rk3s(&[
        "server",
        &format!("--config={}", c.config_file().display()),
        &data_flag,
        &endpoint_flag,
        "--cluster-reset",
        &format!("--cluster-reset-restore-path={}", file.display()),
    ]);
    assert!(!ok, "{out}");
    assert!(out.contains("external etcd"), "{out}");
}
