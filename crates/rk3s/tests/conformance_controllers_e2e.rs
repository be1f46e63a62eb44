//! End-to-end: upstream conformance behaviours of the controllers (issue 17 groups 3, 12,
//! 13 and 14) against the real `rk3s server --disable-agent` (pods without a node, or on
//! simulated nodes), driven with kubectl and raw HTTPS.
//!
//! - group 3: a ResourceQuota's `status.used` counts the quota itself (`resourcequotas`)
//!   and every object count upstream's evaluators count, right after creation; admission
//!   refuses what exceeds `hard` with upstream's 403 message.
//! - group 12: an ownerReference cycle under foreground deletion resolves (upstream's
//!   "should not be blocked by dependency circle"); the namespace then goes away.
//! - group 13: a Job adopts a matching orphan pod and releases a pod that no longer
//!   matches, removing its tracking finalizer; no pod keeps the finalizer after the Job.
//! - group 14: DaemonSet ControllerRevisions hold upstream's `getPatch` bytes, so the
//!   current revision is found by byte comparison (as upstream's e2e `daemon.Match`),
//!   `kubectl rollout history` lists them and `kubectl rollout undo` reuses the old
//!   revision without restarting its pods.

mod common;

use std::time::Duration;

use common::http::{Conn, Creds};
use common::{wait_for, Cluster, SimNodes};
use serde_json::{json, Value};

fn conn(c: &Cluster) -> Conn {
    Conn::connect(&Creds::from_kubeconfig(&c.kubeconfig, c.port)).expect("connect")
}

fn parse(out: &[u8]) -> Value {
    serde_json::from_slice(out)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(out).to_string()))
}

fn call(k: &mut Conn, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let b = body.map(|b| serde_json::to_vec(b).expect("json"));
    let (code, out) = k.request(method, path, b.as_deref()).expect("request");
    (code, parse(&out))
}

fn call_ct(k: &mut Conn, method: &str, path: &str, ct: &str, body: &Value) -> (u16, Value) {
    let b = serde_json::to_vec(body).expect("json");
    let (code, out) = k.request_ct(method, path, ct, Some(&b)).expect("request");
    (code, parse(&out))
}

fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

fn controller_uid(o: &Value) -> Option<String> {
    o["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"] == true)
        .and_then(|r| r["uid"].as_str())
        .map(String::from)
}

/// Creates a namespace and waits for its `default` ServiceAccount (pods need it).
fn namespace(k: &mut Conn, ns: &str) {
    let (code, out) = call(
        k,
        "POST",
        "/api/v1/namespaces",
        Some(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})),
    );
    assert_eq!(code, 201, "{out}");
    wait_for(
        "the default service account",
        Duration::from_secs(20),
        || {
            let (code, _) = call(
                k,
                "GET",
                &format!("/api/v1/namespaces/{ns}/serviceaccounts/default"),
                None,
            );
            (code == 200).then_some(())
        },
    );
}

/// Deletes a namespace and waits until it is gone (it must not stay Terminating).
fn delete_namespace(k: &mut Conn, ns: &str) {
    let (code, out) = call(k, "DELETE", &format!("/api/v1/namespaces/{ns}"), None);
    assert!(code == 200 || code == 202, "{code} {out}");
    let mut last = Value::Null;
    let gone = (0..600).any(|_| {
        let (code, out) = call(k, "GET", &format!("/api/v1/namespaces/{ns}"), None);
        last = out;
        if code == 404 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
        false
    });
    assert!(gone, "namespace {ns} still there: {last}");
}

fn pod(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "registry.example/pause:1"}]}})
}

// ----- group 3 -----

#[test]
fn resource_quota_counts_itself_and_every_object_count() {
    let c = Cluster::start();
    let mut k = conn(&c);
    namespace(&mut k, "rq");
    let hard = json!({
        "resourcequotas": "1", "pods": "5", "services": "10", "services.loadbalancers": "1",
        "services.nodeports": "1", "secrets": "10", "configmaps": "10",
        "persistentvolumeclaims": "10", "replicationcontrollers": "10",
        "count/replicasets.apps": "5", "count/secrets": "10",
    });
    let (code, out) = call(
        &mut k,
        "POST",
        "/api/v1/namespaces/rq/resourcequotas",
        Some(&json!({"apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": {"name": "test-quota"}, "spec": {"hard": hard}})),
    );
    assert_eq!(code, 201, "{out}");
    let used = |k: &mut Conn| {
        let (code, q) = call(
            k,
            "GET",
            "/api/v1/namespaces/rq/resourcequotas/test-quota",
            None,
        );
        assert_eq!(code, 200, "{q}");
        q["status"]["used"].clone()
    };
    // Promptly calculated: the quota counts itself, nothing else exists but what the
    // namespace's controllers made (the root CA ConfigMap).
    let first = wait_for("the quota's first usage", Duration::from_secs(10), || {
        let u = used(&mut k);
        (u["resourcequotas"] == "1").then_some(u)
    });
    for (r, want) in [
        ("pods", "0"),
        ("services", "0"),
        ("services.loadbalancers", "0"),
        ("services.nodeports", "0"),
        ("secrets", "0"),
        ("persistentvolumeclaims", "0"),
        ("replicationcontrollers", "0"),
        ("count/replicasets.apps", "0"),
        ("count/secrets", "0"),
    ] {
        assert_eq!(first[r], want, "{r} in {first}");
    }
    assert!(first["configmaps"].is_string(), "{first}");

    // A second quota exceeds `resourcequotas`: upstream's message.
    let (code, out) = call(
        &mut k,
        "POST",
        "/api/v1/namespaces/rq/resourcequotas",
        Some(&json!({"apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": {"name": "second"}, "spec": {"hard": {"pods": "1"}}})),
    );
    assert_eq!(code, 403, "{out}");
    assert_eq!(
        out["message"],
        "resourcequotas \"second\" is forbidden: exceeded quota: test-quota, requested: resourcequotas=1, used: resourcequotas=1, limited: resourcequotas=1",
        "{out}"
    );

    // Object counts of other kinds, and a Secret in both `secrets` and `count/secrets`.
    let (code, out) = call(
        &mut k,
        "POST",
        "/api/v1/namespaces/rq/secrets",
        Some(&json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s1"}})),
    );
    assert_eq!(code, 201, "{out}");
    let (code, out) = call(
        &mut k,
        "POST",
        "/apis/apps/v1/namespaces/rq/replicasets",
        Some(
            &json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "rs"},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"a": "b"}},
                "template": {"metadata": {"labels": {"a": "b"}},
                    "spec": {"containers": [{"name": "c", "image": "x"}]}}}}),
        ),
    );
    assert_eq!(code, 201, "{out}");
    let svc = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"type": "NodePort", "ports": [{"port": 80}]}})
    };
    let (code, out) = call(
        &mut k,
        "POST",
        "/api/v1/namespaces/rq/services",
        Some(&svc("np1")),
    );
    assert_eq!(code, 201, "{out}");
    let (code, out) = call(
        &mut k,
        "POST",
        "/api/v1/namespaces/rq/services",
        Some(&svc("np2")),
    );
    assert_eq!(code, 403, "{out}");
    assert_eq!(
        out["message"],
        "services \"np2\" is forbidden: exceeded quota: test-quota, requested: services.nodeports=1, used: services.nodeports=1, limited: services.nodeports=1",
        "{out}"
    );
    wait_for("usage of the new objects", Duration::from_secs(10), || {
        let u = used(&mut k);
        (u["secrets"] == "1"
            && u["count/secrets"] == "1"
            && u["count/replicasets.apps"] == "1"
            && u["services"] == "1"
            && u["services.nodeports"] == "1"
            && u["resourcequotas"] == "1")
            .then_some(())
    });
    // Released on delete, a core kind and a `count/<resource>.<group>` alike.
    let (code, out) = call(&mut k, "DELETE", "/api/v1/namespaces/rq/secrets/s1", None);
    assert_eq!(code, 200, "{out}");
    let (code, out) = call(
        &mut k,
        "DELETE",
        "/apis/apps/v1/namespaces/rq/replicasets/rs",
        None,
    );
    assert_eq!(code, 200, "{out}");
    wait_for("the usage released", Duration::from_secs(10), || {
        let u = used(&mut k);
        (u["secrets"] == "0" && u["count/secrets"] == "0" && u["count/replicasets.apps"] == "0")
            .then_some(())
    });
}

// ----- group 12 -----

#[test]
fn foreground_deletion_resolves_an_owner_reference_cycle() {
    let c = Cluster::start();
    let mut k = conn(&c);
    namespace(&mut k, "gc");
    let mut uids = Vec::new();
    for n in ["pod1", "pod2", "pod3"] {
        let (code, out) = call(
            &mut k,
            "POST",
            "/api/v1/namespaces/gc/pods",
            Some(&pod(n, json!({"app": "gc"}))),
        );
        assert_eq!(code, 201, "{out}");
        uids.push(out["metadata"]["uid"].as_str().expect("uid").to_string());
    }
    // pod1 is owned by pod3, pod2 by pod1, pod3 by pod2, every reference blocking.
    for (dep, owner) in [(0usize, 2usize), (1, 0), (2, 1)] {
        let patch = json!({"metadata": {"ownerReferences": [{"apiVersion": "v1", "kind": "Pod",
            "name": format!("pod{}", owner + 1), "uid": uids[owner], "controller": true,
            "blockOwnerDeletion": true}]}});
        let (code, out) = call_ct(
            &mut k,
            "PATCH",
            &format!("/api/v1/namespaces/gc/pods/pod{}", dep + 1),
            "application/strategic-merge-patch+json",
            &patch,
        );
        assert_eq!(code, 200, "{out}");
    }
    let (code, out) = call(
        &mut k,
        "DELETE",
        "/api/v1/namespaces/gc/pods/pod1",
        Some(&json!({"kind": "DeleteOptions", "apiVersion": "v1",
            "propagationPolicy": "Foreground", "preconditions": {"uid": uids[0]}})),
    );
    assert!(code == 200 || code == 202, "{code} {out}");
    let mut last = Value::Null;
    let empty = (0..600).any(|_| {
        let (_, list) = call(&mut k, "GET", "/api/v1/namespaces/gc/pods", None);
        last = list;
        if items(&last).is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
        false
    });
    assert!(empty, "pods left behind the cycle: {last}");
    delete_namespace(&mut k, "gc");
}

// ----- group 13 -----

const TRACKING: &str = "batch.kubernetes.io/job-tracking";

fn has_tracking(p: &Value) -> bool {
    p["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == TRACKING))
}

#[test]
fn job_adopts_matching_orphans_and_releases_non_matching_pods() {
    let c = Cluster::start();
    let mut k = conn(&c);
    namespace(&mut k, "jobs");
    let (code, job) = call(
        &mut k,
        "POST",
        "/apis/batch/v1/namespaces/jobs/jobs",
        Some(
            &json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "adopt-release"},
            "spec": {"parallelism": 2, "completions": 4, "backoffLimit": 6,
                "template": {"spec": {"restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "registry.example/pause:1"}]}}}}),
        ),
    );
    assert_eq!(code, 201, "{job}");
    let job_uid = job["metadata"]["uid"].as_str().expect("uid").to_string();
    let pods = |k: &mut Conn| items(&call(k, "GET", "/api/v1/namespaces/jobs/pods", None).1);
    let first = wait_for("the Job's pods", Duration::from_secs(20), || {
        let ps = pods(&mut k);
        (ps.len() >= 2).then(|| ps[0].clone())
    });
    let name = first["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    assert_eq!(controller_uid(&first).as_deref(), Some(job_uid.as_str()));
    assert!(has_tracking(&first), "{first}");
    let path = format!("/api/v1/namespaces/jobs/pods/{name}");

    // Orphan it: the Job adopts it back (its labels still match).
    let (code, out) = call_ct(
        &mut k,
        "PATCH",
        &path,
        "application/json-patch+json",
        &json!([{"op": "remove", "path": "/metadata/ownerReferences"}]),
    );
    assert_eq!(code, 200, "{out}");
    let mut last = Value::Null;
    let adopted = (0..400).any(|_| {
        let (_, p) = call(&mut k, "GET", &path, None);
        last = p;
        if controller_uid(&last).as_deref() == Some(job_uid.as_str()) && has_tracking(&last) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
        false
    });
    assert!(adopted, "the orphan not adopted: {last}");

    // Remove its labels: the Job releases it and its tracking finalizer.
    let (code, out) = call_ct(
        &mut k,
        "PATCH",
        &path,
        "application/json-patch+json",
        &json!([{"op": "remove", "path": "/metadata/labels"}]),
    );
    assert_eq!(code, 200, "{out}");
    wait_for("the pod released", Duration::from_secs(20), || {
        let (_, p) = call(&mut k, "GET", &path, None);
        (controller_uid(&p).is_none() && !has_tracking(&p)).then_some(())
    });

    // The Job gone, no pod keeps the tracking finalizer; the namespace goes away.
    let (code, out) = call(
        &mut k,
        "DELETE",
        "/apis/batch/v1/namespaces/jobs/jobs/adopt-release",
        Some(&json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Orphan"})),
    );
    assert!(code == 200 || code == 202, "{code} {out}");
    wait_for(
        "no tracking finalizer left",
        Duration::from_secs(20),
        || {
            let ps = pods(&mut k);
            (!ps.is_empty() && !ps.iter().any(has_tracking)).then_some(())
        },
    );
    delete_namespace(&mut k, "jobs");
}

// ----- group 14 -----

/// `v` with every object's keys sorted (as Go writes a map).
fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted(&m[k])))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        o => o.clone(),
    }
}

/// Upstream's `getPatch` of a DaemonSet as a Go client computes it from the object it
/// read: the template as Go's typed encoding writes it (creationTimestamp null, empty
/// resources), `$patch: replace`, keys sorted, compact.
fn get_patch(ds: &Value) -> String {
    let mut t = ds["spec"]["template"].clone();
    t["metadata"]["creationTimestamp"] = Value::Null;
    if let Some(cs) = t["spec"]["containers"].as_array_mut() {
        for c in cs {
            if c.get("resources").is_none() {
                c["resources"] = json!({});
            }
        }
    }
    t["$patch"] = json!("replace");
    sorted(&json!({"spec": {"template": t}})).to_string()
}

fn revisions(k: &mut Conn) -> Vec<Value> {
    let (code, list) = call(
        k,
        "GET",
        "/apis/apps/v1/namespaces/default/controllerrevisions?labelSelector=daemonset-name%3Dds",
        None,
    );
    assert_eq!(code, 200, "{list}");
    let mut v = items(&list);
    v.sort_by_key(|r| r["revision"].as_i64());
    v
}

/// The revision whose data is byte for byte the DaemonSet's `getPatch` (exactly one, as
/// upstream's e2e `curHistory` demands).
fn current_revision(k: &mut Conn) -> Value {
    let (_, ds) = call(
        k,
        "GET",
        "/apis/apps/v1/namespaces/default/daemonsets/ds",
        None,
    );
    let want = get_patch(&ds);
    let revs = revisions(k);
    let matching: Vec<&Value> = revs
        .iter()
        .filter(|r| serde_json::to_string(&r["data"]).ok().as_deref() == Some(want.as_str()))
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "want one revision with data {want}, have {}",
        Value::Array(revs.clone())
    );
    matching[0].clone()
}

fn hash_of(o: &Value) -> String {
    o["metadata"]["labels"]["controller-revision-hash"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn daemonset_revisions_in_upstream_encoding_history_and_rollback() {
    let c = Cluster::start();
    let _nodes = SimNodes::start(&c, "ds-node", 2);
    let mut k = conn(&c);
    let (code, out) = call(
        &mut k,
        "POST",
        "/apis/apps/v1/namespaces/default/daemonsets",
        Some(&json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "ds", "annotations": {"kubernetes.io/change-cause": "first"}},
            "spec": {"selector": {"matchLabels": {"daemonset-name": "ds"}},
                "updateStrategy": {"type": "OnDelete"},
                "template": {"metadata": {"labels": {"daemonset-name": "ds"}},
                    "spec": {"containers": [{"name": "app", "image": "registry.example/one:1",
                        "ports": [{"containerPort": 9376}]}]}}}})),
    );
    assert_eq!(code, 201, "{out}");
    wait_for("the first revision", Duration::from_secs(20), || {
        (revisions(&mut k).len() == 1).then_some(())
    });
    let rev1 = current_revision(&mut k);
    assert_eq!(rev1["revision"], 1, "{rev1}");
    let h1 = hash_of(&rev1);
    assert!(!h1.is_empty(), "{rev1}");
    assert_eq!(rev1["metadata"]["name"], format!("ds-{h1}"));
    assert_eq!(
        rev1["metadata"]["annotations"]["kubernetes.io/change-cause"],
        "first"
    );
    // Daemon pods on both nodes carry the revision's hash.
    let pods = |k: &mut Conn| {
        let (_, l) = call(
            k,
            "GET",
            "/api/v1/namespaces/default/pods?labelSelector=daemonset-name%3Dds",
            None,
        );
        let mut v: Vec<(String, String)> = items(&l)
            .iter()
            .map(|p| {
                (
                    p["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    hash_of(p),
                )
            })
            .collect();
        v.sort();
        v
    };
    let before = wait_for("two daemon pods", Duration::from_secs(30), || {
        let v = pods(&mut k);
        (v.len() == 2).then_some(v)
    });
    assert!(before.iter().all(|(_, h)| *h == h1), "{before:?}");

    // A new template: a second revision (OnDelete: the pods stay).
    c.ok(&[
        "annotate",
        "daemonset/ds",
        "kubernetes.io/change-cause=second",
        "--overwrite",
    ]);
    c.ok(&["set", "image", "daemonset/ds", "app=registry.example/two:2"]);
    wait_for("the second revision", Duration::from_secs(20), || {
        (revisions(&mut k).len() == 2).then_some(())
    });
    let rev2 = current_revision(&mut k);
    assert_eq!(rev2["revision"], 2, "{rev2}");
    assert_ne!(hash_of(&rev2), h1);
    let history = c.ok(&["rollout", "history", "daemonset/ds"]);
    assert!(
        history.contains("1         first") && history.contains("2         second"),
        "{history}"
    );

    // Roll back: the first revision is reused (renumbered 3), no new revision, the old
    // pods are current again and not restarted.
    let out = c.ok(&["rollout", "undo", "daemonset/ds"]);
    assert!(out.contains("rolled back"), "{out}");
    wait_for("the rollback", Duration::from_secs(20), || {
        let revs = revisions(&mut k);
        (revs.len() == 2 && revs[1]["metadata"]["name"] == rev1["metadata"]["name"]).then_some(())
    });
    let rev3 = current_revision(&mut k);
    assert_eq!(rev3["revision"], 3, "{rev3}");
    assert_eq!(hash_of(&rev3), h1);
    wait_for(
        "the old pods counted as updated",
        Duration::from_secs(20),
        || {
            let (_, ds) = call(
                &mut k,
                "GET",
                "/apis/apps/v1/namespaces/default/daemonsets/ds",
                None,
            );
            (ds["status"]["updatedNumberScheduled"] == 2
                && ds["status"]["observedGeneration"] == ds["metadata"]["generation"])
                .then_some(())
        },
    );
    assert_eq!(pods(&mut k), before, "no daemon pod restarted");
    let history = c.ok(&["rollout", "history", "daemonset/ds"]);
    assert!(
        history.contains("2         second") && history.contains("\n3 "),
        "{history}"
    );
}
