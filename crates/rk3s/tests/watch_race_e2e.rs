//! Deleting an object that something re-creates at once under the same name (as the
//! kubelet re-creates a static pod's mirror pod ~6 ms after deleting it): `kubectl
//! delete` and `kubectl wait --for=delete` must see the old object go, through the
//! server's GET, LIST (watch cache) and WATCH-from-resourceVersion paths.
//!
//! kubectl (1.32/1.33) waits for a delete like this: GET the object (gone, or another
//! UID: done); else an informer LISTs `fieldSelector=metadata.name=X&resourceVersion=0`
//! and WATCHes from the list's resourceVersion; once synced (`WaitForCacheSync` polls
//! every 100 ms) a precondition returns if X is not in the informer's store, else it
//! waits for a DELETED event. The precondition ignores the UID, so when X is deleted
//! before the LIST and re-created just after it (within that ~100 ms poll), the store
//! already holds the NEW object when the precondition runs, the DELETED event is older
//! than the list, and kubectl waits out its timeout ("timed out waiting for the
//! condition"): a client race, fixed upstream by kubernetes/kubernetes#135563 (the
//! precondition compares UIDs). A kubelet re-creating a mirror pod ~6 ms after deleting
//! it hits that window easily.
//!
//! So each round either holds the deletion long enough that kubectl lists the old
//! object first (then it must always finish: the watch from the list's revision has to
//! deliver DELETED though the object is re-created 0-7 ms later), or finishes it at
//! once, as the kubelet does; timeouts there are classified by reading what the store
//! held at the revision kubectl listed: the deleted UID there would mean the server's
//! watch lost the DELETED event (the test fails); its absence is the client race
//! (counted and reported).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use common::http::{Conn, Creds};
use common::{wait_for, Cluster};
use serde_json::{json, Value};

const NODE: &str = "race-node";

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    /// A ConfigMap held by a finalizer: DELETE marks it, the re-creator drops the
    /// finalizer (the real delete) and creates it again.
    ConfigMap,
    /// A Pod bound to a node: DELETE marks it (graceful), the re-creator deletes it with
    /// grace 0 and a UID precondition and creates it again (the kubelet's mirror pods).
    Pod,
}

impl Kind {
    fn plural(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configmaps",
            Kind::Pod => "pods",
        }
    }

    fn path(self, name: &str) -> String {
        format!("/api/v1/namespaces/default/{}/{name}", self.plural())
    }

    fn manifest(self, name: &str) -> Value {
        match self {
            Kind::ConfigMap => json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": "default", "finalizers": ["example.com/hold"]}, "data": {"k": "v"}}),
            Kind::Pod => json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "busybox"}]}}),
        }
    }
}

fn parse(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or(Value::Null)
}

fn uid_of(v: &Value) -> String {
    v["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn create(conn: &mut Conn, kind: Kind, name: &str) -> Option<String> {
    let body = kind.manifest(name).to_string();
    let (code, out) = conn
        .request(
            "POST",
            &format!("/api/v1/namespaces/default/{}", kind.plural()),
            Some(body.as_bytes()),
        )
        .ok()?;
    (code == 201).then(|| uid_of(&parse(&out)))
}

/// How the re-creator reacts to a deletion: wait `hold` ms, finish the deletion, wait
/// `gap` ms, create the object again.
#[derive(Default)]
struct Timing {
    hold: AtomicU64,
    gap: AtomicU64,
}

impl Timing {
    fn set(&self, hold: u64, gap: u64) {
        self.hold.store(hold, Ordering::Release);
        self.gap.store(gap, Ordering::Release);
    }
}

fn ms(a: &AtomicU64) -> Duration {
    Duration::from_millis(a.load(Ordering::Acquire))
}

/// Plays the kubelet (or a controller): whenever the object is marked for deletion,
/// finish the deletion and create it again under the same name, as `timing` says.
fn recreator(
    creds: Creds,
    kind: Kind,
    name: String,
    stop: Arc<AtomicBool>,
    timing: Arc<Timing>,
) -> thread::JoinHandle<usize> {
    thread::spawn(move || {
        let mut conn = Conn::connect(&creds).expect("connect");
        let mut rounds = 0;
        while !stop.load(Ordering::Acquire) {
            let (code, out) = conn.request("GET", &kind.path(&name), None).expect("get");
            let obj = parse(&out);
            let marked = code == 200 && obj["metadata"].get("deletionTimestamp").is_some();
            if code == 404 || marked {
                if marked {
                    thread::sleep(ms(&timing.hold));
                    let (code, out) = match kind {
                        Kind::ConfigMap => conn
                            .request_ct(
                                "PATCH",
                                &kind.path(&name),
                                "application/merge-patch+json",
                                Some(br#"{"metadata":{"finalizers":null}}"#),
                            )
                            .expect("patch"),
                        Kind::Pod => {
                            let opts = json!({"gracePeriodSeconds": 0, "preconditions": {"uid": uid_of(&obj)}}).to_string();
                            conn.request("DELETE", &kind.path(&name), Some(opts.as_bytes()))
                                .expect("delete")
                        }
                    };
                    assert!(
                        code == 200 || code == 404,
                        "finishing the deletion: {code} {}",
                        String::from_utf8_lossy(&out)
                    );
                    thread::sleep(ms(&timing.gap));
                }
                rounds += 1;
                create(&mut conn, kind, &name);
            }
            thread::sleep(Duration::from_millis(1));
        }
        rounds
    })
}

/// The resourceVersion of kubectl's WATCH, from its `-v=6` request log.
fn watched_rv(stderr: &str) -> Option<String> {
    stderr
        .lines()
        .filter(|l| l.contains("watch=true"))
        .find_map(|l| {
            let at = l.find("resourceVersion=")? + "resourceVersion=".len();
            Some(l[at..].chars().take_while(|c| c.is_ascii_digit()).collect())
        })
}

/// The UIDs the store held under `name` at exactly revision `rv`.
fn uids_at(conn: &mut Conn, kind: Kind, name: &str, rv: &str) -> Vec<String> {
    let path = format!("/api/v1/namespaces/default/{}?fieldSelector=metadata.name%3D{name}&resourceVersion={rv}&resourceVersionMatch=Exact", kind.plural());
    let (code, out) = conn.request("GET", &path, None).expect("list");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&out));
    parse(&out)["items"]
        .as_array()
        .map(|a| a.iter().map(uid_of).collect())
        .unwrap_or_default()
}

/// The (type, uid) of every event a name-selected watch from `rv` gets within a second.
fn events_from(creds: &Creds, kind: Kind, name: &str, rv: &str) -> Vec<(String, String)> {
    let mut conn = Conn::connect(creds).expect("connect");
    let path = format!("/api/v1/namespaces/default/{}?watch=true&fieldSelector=metadata.name%3D{name}&resourceVersion={rv}&timeoutSeconds=1", kind.plural());
    let (code, out) = conn.request("GET", &path, None).expect("watch");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&out));
    out.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v = parse(l);
            (
                v["type"].as_str().unwrap_or_default().to_string(),
                uid_of(&v["object"]),
            )
        })
        .collect()
}

struct Outcome {
    ok: usize,
    client_races: usize,
    slowest: Duration,
}

/// `held + immediate` rounds: wait for a fresh object, `kubectl delete` it while the
/// re-creator finishes the deletion and re-creates it 0-7 ms later; in the first
/// `held` rounds it holds the deletion 60-200 ms (kubectl lists the old object first
/// and must always finish), in the others it finishes at once (the kubelet's pace).
fn delete_while_recreated(
    c: &Cluster,
    creds: &Creds,
    kind: Kind,
    held: usize,
    immediate: usize,
) -> Outcome {
    let iterations = held + immediate;
    let name = format!("race-{}", kind.plural());
    let mut conn = Conn::connect(creds).expect("connect");
    wait_for("the first object", Duration::from_secs(20), || {
        create(&mut conn, kind, &name)
    });
    let stop = Arc::new(AtomicBool::new(false));
    let timing = Arc::new(Timing::default());
    let worker = recreator(
        creds.clone(),
        kind,
        name.clone(),
        stop.clone(),
        timing.clone(),
    );
    let mut deleted = std::collections::HashSet::new();
    let mut out = Outcome {
        ok: 0,
        client_races: 0,
        slowest: Duration::ZERO,
    };
    let mut checks = Vec::new();
    for i in 0..iterations {
        // A live object we have not deleted yet.
        let uid = wait_for("a re-created object", Duration::from_secs(20), || {
            let (code, body) = conn.request("GET", &kind.path(&name), None).ok()?;
            let v = parse(&body);
            (code == 200
                && v["metadata"].get("deletionTimestamp").is_none()
                && !deleted.contains(&uid_of(&v)))
            .then(|| uid_of(&v))
        });
        // The list a client would take just before the delete, to check the watch from
        // it afterwards.
        let (_, list) = conn
            .request("GET", &format!("/api/v1/namespaces/default/{}?fieldSelector=metadata.name%3D{name}&resourceVersion=0", kind.plural()), None)
            .expect("list");
        let list = parse(&list);
        let list_rv = list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if list["items"]
            .as_array()
            .is_some_and(|a| a.iter().any(|o| uid_of(o) == uid))
        {
            checks.push((list_rv, uid.clone()));
        }
        deleted.insert(uid.clone());
        let gap = (i % 8) as u64;
        let (hold, timeout) = if i < held {
            (60 + (i as u64 * 140) / held as u64, "--timeout=20s")
        } else {
            (0, "--timeout=3s")
        };
        timing.set(hold, gap);
        let started = Instant::now();
        let res = c.kubectl(&["delete", kind.plural(), &name, timeout, "-v=6"]);
        let took = started.elapsed();
        out.slowest = out.slowest.max(took);
        if res.status.success() {
            out.ok += 1;
            continue;
        }
        let stderr = String::from_utf8_lossy(&res.stderr).to_string();
        let rv = watched_rv(&stderr).unwrap_or_else(|| {
            panic!("iteration {i}: kubectl delete failed without watching ({took:?}):\n{stderr}")
        });
        let listed = uids_at(&mut conn, kind, &name, &rv);
        assert!(i >= held, "round {i} (deletion held {hold} ms, re-created {gap} ms later): kubectl delete timed out after {took:?}:\n{stderr}");
        assert!(
            !listed.contains(&uid),
            "iteration {i}: kubectl listed {name} (uid {uid}) at resourceVersion {rv} and its watch from there never \
             reported the deletion ({took:?}); watch from {rv} now gives {:?}",
            events_from(creds, kind, &name, &rv)
        );
        // kubectl listed the re-created object: the client race described above.
        eprintln!("round {i}: kubectl's race: {uid} was already gone at the listed revision {rv} (store held {listed:?}), re-created after it");
        out.client_races += 1;
    }
    stop.store(true, Ordering::Release);
    let rounds = worker.join().expect("re-creator");
    assert!(
        rounds >= iterations,
        "the re-creator only ran {rounds} rounds"
    );
    // Each list taken before a delete, resumed as a watch: the deleted UID's DELETED
    // event comes, once, before any event of the UID that replaced it.
    let handles: Vec<_> = checks
        .into_iter()
        .map(|(rv, uid)| {
            let (creds, name) = (creds.clone(), name.clone());
            thread::spawn(move || (events_from(&creds, kind, &name, &rv), rv, uid))
        })
        .collect();
    for h in handles {
        let (events, rv, uid) = h.join().expect("watch check");
        let deleted_at = events.iter().position(|(t, u)| t == "DELETED" && *u == uid);
        let at = deleted_at
            .unwrap_or_else(|| panic!("watch from {rv}: no DELETED for {uid} in {events:?}"));
        assert!(
            events[..at]
                .iter()
                .all(|(t, u)| *u == uid && t == "MODIFIED"),
            "watch from {rv}: {events:?}"
        );
        assert!(
            events[at + 1..].iter().all(|(_, u)| *u != uid),
            "watch from {rv}: {uid} after its DELETED: {events:?}"
        );
        assert!(
            events.get(at + 1).is_some_and(|(t, _)| t == "ADDED"),
            "watch from {rv}: no re-creation after the delete: {events:?}"
        );
    }
    out
}

fn setup() -> (Cluster, Creds) {
    let c = Cluster::start();
    let creds = Creds::from_kubeconfig(&c.kubeconfig, c.port);
    let mut conn = Conn::connect(&creds).expect("connect");
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}).to_string();
    let (code, out) = conn
        .request("POST", "/api/v1/nodes", Some(node.as_bytes()))
        .expect("node");
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&out));
    (c, creds)
}

#[test]
fn kubectl_delete_configmap_while_it_is_recreated() {
    let (c, creds) = setup();
    let out = delete_while_recreated(&c, &creds, Kind::ConfigMap, 30, 10);
    eprintln!(
        "configmaps: {} waits ok, {} kubectl races, slowest {:?}",
        out.ok, out.client_races, out.slowest
    );
    assert!(out.ok >= 30, "only {} of 40 deletes completed", out.ok);
}

#[test]
fn kubectl_delete_pod_while_it_is_recreated() {
    let (c, creds) = setup();
    let out = delete_while_recreated(&c, &creds, Kind::Pod, 30, 10);
    eprintln!(
        "pods: {} waits ok, {} kubectl races, slowest {:?}",
        out.ok, out.client_races, out.slowest
    );
    assert!(out.ok >= 30, "only {} of 40 deletes completed", out.ok);
}

/// `kubectl wait --for=delete` already watching when the object is deleted and
/// re-created at once: the DELETED event reaches its name-selected watch.
#[test]
fn kubectl_wait_for_delete_sees_the_delete_before_the_recreation() {
    let (c, creds) = setup();
    let kind = Kind::ConfigMap;
    let name = "race-wait";
    let mut conn = Conn::connect(&creds).expect("connect");
    let stop = Arc::new(AtomicBool::new(false));
    let timing = Arc::new(Timing::default());
    let worker = recreator(
        creds.clone(),
        kind,
        name.to_string(),
        stop.clone(),
        timing.clone(),
    );
    for i in 0..10 {
        timing.set(0, (i % 4) as u64);
        let uid = wait_for("the object", Duration::from_secs(20), || {
            let (code, body) = conn.request("GET", &kind.path(name), None).ok()?;
            let v = parse(&body);
            match code {
                404 => create(&mut conn, kind, name),
                200 if v["metadata"].get("deletionTimestamp").is_none() => Some(uid_of(&v)),
                _ => None,
            }
        });
        let mut child = Command::new(common::kubectl_bin())
            .env("KUBECONFIG", &c.kubeconfig)
            .env("HOME", c.path())
            .args([
                "wait",
                "--for=delete",
                &format!("configmap/{name}"),
                "--timeout=20s",
                "-v=6",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl wait");
        // Delete once kubectl's watch is open (its -v=6 log shows the request).
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        let reader = thread::spawn(move || {
            let mut log = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("watch=true") {
                    let _ = tx.send(());
                }
                log.push_str(&line);
                log.push('\n');
            }
            log
        });
        rx.recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("iteration {i}: kubectl wait never watched"));
        let (code, out) = conn
            .request("DELETE", &kind.path(name), None)
            .expect("delete");
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&out));
        let started = Instant::now();
        let status = child.wait().expect("kubectl wait");
        let log = reader.join().expect("reader");
        assert!(
            status.success(),
            "iteration {i}: kubectl wait --for=delete (uid {uid}) failed after {:?}:\n{log}",
            started.elapsed()
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "iteration {i}: took {:?}",
            started.elapsed()
        );
    }
    stop.store(true, Ordering::Release);
    worker.join().expect("re-creator");
}

/// `kubectl rollout status` (the same informer LIST + name-selected WATCH) on a
/// Deployment re-created under its name right after its deletion: it follows the new
/// object to a finished rollout.
#[test]
fn kubectl_rollout_status_follows_a_recreated_deployment() {
    let (c, creds) = setup();
    let mut conn = Conn::connect(&creds).expect("connect");
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "race-deploy", "namespace": "default"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "race"}},
            "template": {"metadata": {"labels": {"app": "race"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}})
    .to_string();
    let path = "/apis/apps/v1/namespaces/default/deployments";
    for i in 0..5 {
        let (code, out) = conn
            .request("POST", path, Some(deployment.as_bytes()))
            .expect("create");
        assert_eq!(code, 201, "{}", String::from_utf8_lossy(&out));
        let started = Instant::now();
        c.ok(&[
            "rollout",
            "status",
            "deployment/race-deploy",
            "--timeout=20s",
        ]);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "round {i}: rollout status took {:?}",
            started.elapsed()
        );
        // Delete and re-create at once; the next round's rollout status must see the
        // new object's rollout, not hang on the old one.
        let (code, out) = conn
            .request("DELETE", &format!("{path}/race-deploy"), None)
            .expect("delete");
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&out));
    }
}
