//! The embedded etcd (issue 15, item 4): `rk3s server --cluster-init` runs a supervised
//! etcd with TLS as its datastore; two more servers join with `--server --token` (each
//! on its own loopback address: 127.0.0.2, 127.0.0.3, so the etcd ports 2379/2380 do
//! not collide); every server serves the same objects; `kill -9` of one server kills its
//! etcd too and the other two keep serving (quorum 2 of 3); deleting the killed server's
//! Node removes its etcd member. Every rk3s and etcd process ends with the test.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{wait_for, Cluster};

/// The pid of the etcd a server runs, from `<data-dir>/server/db/etcd.pid`.
fn etcd_pid(c: &Cluster) -> u32 {
    let path = c.data_dir().join("server/db/etcd.pid");
    wait_for("etcd's pid file", Duration::from_secs(10), || {
        std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    })
}

/// Whether a process runs (a zombie does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

fn log(c: &Cluster) -> String {
    std::fs::read_to_string(&c.log).unwrap_or_default()
}

/// Retries `kubectl` until it succeeds (an election may be under way).
fn eventually_ok(c: &Cluster, args: &[&str]) -> String {
    wait_for(
        &format!("kubectl {} via port {}", args.join(" "), c.port),
        Duration::from_secs(60),
        || {
            let out = c.kubectl(args);
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).to_string())
        },
    )
}

/// etcd's member list through `c`'s etcd at `ip` (etcdctl with its client certificate):
/// `(name, is learner)` per member.
fn etcd_members(c: &Cluster, ip: &str) -> Vec<(String, bool)> {
    let tls = c.data_dir().join("server/tls/etcd");
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=https://{ip}:2379"))
        .arg(format!("--cacert={}", tls.join("server-ca.crt").display()))
        .arg(format!("--cert={}", tls.join("client.crt").display()))
        .arg(format!("--key={}", tls.join("client.key").display()))
        .args(["member", "list", "-w", "json"])
        .output()
        .expect("etcdctl (Debian's etcd-client)");
    assert!(
        out.status.success(),
        "etcdctl member list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("member list JSON");
    v["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or_default().to_string(),
                m["isLearner"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

fn joining(first: &Cluster, token: &str, name: &str, ip: &str) -> Cluster {
    Cluster::start_with(&[
        &format!("--server=https://127.0.0.1:{}", first.port),
        &format!("--token={token}"),
        &format!("--node-name={name}"),
        &format!("--bind-address={ip}"),
        &format!("--advertise-address={ip}"),
    ])
}

#[test]
fn three_servers_on_embedded_etcd() {
    let mut pids = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run(&mut pids);
    }));
    // Whatever happened, no etcd may outlive its rk3s (every Cluster is dropped by now).
    for pid in &pids {
        wait_for("etcd to die with its rk3s", Duration::from_secs(10), || {
            (!alive(*pid)).then_some(())
        });
    }
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

fn run(pids: &mut Vec<u32>) {
    let s1 = Cluster::start_with(&["--cluster-init", "--node-name=s1"]);
    pids.push(etcd_pid(&s1));
    let data = s1.data_dir();
    for f in [
        "server-ca.crt",
        "server-client.crt",
        "peer-server-client.crt",
        "client.key",
    ] {
        assert!(
            data.join("server/tls/etcd").join(f).is_file(),
            "missing etcd TLS file {f}"
        );
    }
    assert!(Path::new(&data.join("server/db/etcd/member")).is_dir());
    assert!(log(&s1).contains("datastore: etcd"), "{}", log(&s1));
    assert!(!data.join("server/db/state.db").exists());
    s1.ok(&["create", "configmap", "from-s1", "--from-literal=k=v1"]);

    let token = std::fs::read_to_string(data.join("server/token")).expect("token");
    let token = token.trim();
    let s2 = joining(&s1, token, "s2", "127.0.0.2");
    pids.push(etcd_pid(&s2));
    let mut s3 = joining(&s1, token, "s3", "127.0.0.3");
    pids.push(etcd_pid(&s3));

    // One cluster: every server has every object; the CA is the first server's.
    assert_eq!(
        std::fs::read(s2.data_dir().join("server/tls/server-ca.crt")).expect("ca"),
        std::fs::read(data.join("server/tls/server-ca.crt")).expect("ca")
    );
    for c in [&s1, &s2, &s3] {
        let v = eventually_ok(
            c,
            &["get", "configmap", "from-s1", "-o", "jsonpath={.data.k}"],
        );
        assert_eq!(v, "v1");
        eventually_ok(c, &["get", "nodes"]);
    }
    // Joined as learners, promoted once caught up: three voting members.
    let mut members = etcd_members(&s1, "127.0.0.1");
    members.sort();
    assert_eq!(
        members,
        vec![
            ("s1".to_string(), false),
            ("s2".to_string(), false),
            ("s3".to_string(), false)
        ],
        "no learner left"
    );
    assert!(
        log(&s2).contains("learner is a voting member now"),
        "{}",
        log(&s2)
    );
    s3.ok(&["create", "configmap", "from-s3", "--from-literal=k=v3"]);
    let v = eventually_ok(
        &s2,
        &["get", "configmap", "from-s3", "-o", "jsonpath={.data.k}"],
    );
    assert_eq!(v, "v3");

    // kill -9 of one server: its etcd dies with it, the other two keep quorum.
    let s3_etcd = etcd_pid(&s3);
    s3.kill9();
    wait_for("s3's etcd to die with it", Duration::from_secs(10), || {
        (!alive(s3_etcd)).then_some(())
    });
    eventually_ok(
        &s1,
        &["create", "configmap", "after-kill", "--from-literal=k=v"],
    );
    let v = eventually_ok(
        &s2,
        &["get", "configmap", "after-kill", "-o", "jsonpath={.data.k}"],
    );
    assert_eq!(v, "v");
    eventually_ok(&s2, &["get", "nodes"]);

    // A restart on its data dir rejoins as the same member (no new MemberAdd).
    let rejoin = [
        format!("--server=https://127.0.0.1:{}", s1.port),
        format!("--token={token}"),
        "--node-name=s3".to_string(),
        "--bind-address=127.0.0.3".to_string(),
        "--advertise-address=127.0.0.3".to_string(),
    ];
    let rejoin: Vec<&str> = rejoin.iter().map(String::as_str).collect();
    s3.restart_after_kill(&rejoin);
    pids.push(etcd_pid(&s3));
    let v = eventually_ok(
        &s3,
        &["get", "configmap", "after-kill", "-o", "jsonpath={.data.k}"],
    );
    assert_eq!(v, "v");
    let etcd_log = std::fs::read_to_string(data.join("server/db/etcd.log")).expect("etcd log");
    assert_eq!(
        etcd_log
            .matches(r#""added-peer-peer-urls":["https://127.0.0.3:2380"]"#)
            .count(),
        1,
        "s3 was added once only"
    );
    // raft's configuration went through "learners=(<id>)" (members joined as learners).
    assert!(
        etcd_log
            .split("learners=(")
            .skip(1)
            .any(|rest| rest.starts_with(|c: char| c.is_ascii_digit())),
        "joined as learners"
    );
    let mut members = etcd_members(&s2, "127.0.0.2");
    members.sort();
    assert_eq!(members.len(), 3, "no second member for s3: {members:?}");
    assert!(members.iter().all(|(_, learner)| !learner), "{members:?}");
    let s3_etcd = etcd_pid(&s3);
    s3.kill9();
    wait_for("s3's etcd to die with it", Duration::from_secs(10), || {
        (!alive(s3_etcd)).then_some(())
    });

    // The dead server's Node is deleted: its member is removed (the servers run without
    // agents here, so the Node is made by hand).
    let node = "apiVersion: v1\nkind: Node\nmetadata:\n  name: s3\n";
    let out = s1.ok_with(&common::kubectl_bin(), &["create", "-f", "-"], Some(node));
    assert!(out.contains("s3"), "{out}");
    s1.ok(&["delete", "node", "s3"]);
    wait_for(
        "s3's etcd member to be removed",
        Duration::from_secs(30),
        || {
            (log(&s1).contains("its etcd member was removed")
                || log(&s2).contains("its etcd member was removed"))
            .then_some(())
        },
    );
    // Two members left, both up: still serving writes.
    eventually_ok(
        &s2,
        &["create", "configmap", "after-remove", "--from-literal=k=v"],
    );
    let v = eventually_ok(
        &s1,
        &[
            "get",
            "configmap",
            "after-remove",
            "-o",
            "jsonpath={.data.k}",
        ],
    );
    assert_eq!(v, "v");
    let members = etcd_members(&s1, "127.0.0.1");
    assert_eq!(members.len(), 2, "{members:?}");
    assert!(members.iter().all(|(_, learner)| !learner), "{members:?}");
}
