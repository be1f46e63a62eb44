//! End-to-end: the Deployment, ReplicaSet, ReplicationController and garbage-collector
//! controllers against simulated nodes (`rk3s sim-nodes`) and the in-process scheduler.

mod common;

use std::time::Duration;

use common::{wait_for, Cluster, SimNodes};
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn items(c: &Cluster, args: &[&str]) -> Vec<Value> {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    json(&c.ok(&a))["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn controller_uid(o: &Value) -> Option<String> {
    o["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"] == true)
        .and_then(|r| r["uid"].as_str())
        .map(String::from)
}

#[test]
fn deployment_lifecycle_rollout_history_and_background_gc() {
    let c = Cluster::start();
    let _nodes = SimNodes::start(&c, "sim-node", 2);
    c.ok(&[
        "create",
        "deployment",
        "web",
        "--image=nginx:1",
        "--replicas=3",
    ]);
    c.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);

    // One ReplicaSet named web-<hash> with 3 ready replicas, owned by the Deployment.
    let d = json(&c.ok(&["get", "deployment", "web", "-o", "json"]));
    let d_uid = d["metadata"]["uid"].as_str().expect("uid").to_string();
    let rss = items(&c, &["rs", "-l", "app=web"]);
    assert_eq!(rss.len(), 1);
    let rs = &rss[0];
    let hash = rs["metadata"]["labels"]["pod-template-hash"]
        .as_str()
        .expect("hash label");
    assert_eq!(
        rs["metadata"]["name"].as_str(),
        Some(format!("web-{hash}").as_str())
    );
    assert!(
        hash.chars()
            .all(|ch| "bcdfghjklmnpqrstvwxz2456789".contains(ch)),
        "{hash}"
    );
    assert_eq!(
        rs["spec"]["selector"]["matchLabels"]["pod-template-hash"].as_str(),
        Some(hash)
    );
    assert_eq!(
        rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"].as_str(),
        Some("1")
    );
    assert_eq!(controller_uid(rs).as_deref(), Some(d_uid.as_str()));
    assert_eq!(rs["status"]["readyReplicas"].as_i64(), Some(3));
    let rs_uid = rs["metadata"]["uid"].as_str().expect("rs uid").to_string();

    // Three pods, each controlled by the ReplicaSet with blockOwnerDeletion.
    let pods = items(&c, &["pods", "-l", "app=web"]);
    assert_eq!(pods.len(), 3);
    for p in &pods {
        let r = &p["metadata"]["ownerReferences"][0];
        assert_eq!(
            (r["kind"].as_str(), r["uid"].as_str()),
            (Some("ReplicaSet"), Some(rs_uid.as_str()))
        );
        assert_eq!(
            (r["controller"].as_bool(), r["blockOwnerDeletion"].as_bool()),
            (Some(true), Some(true))
        );
        assert!(p["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with(&format!("web-{hash}-"))));
    }
    let d = json(&c.ok(&["get", "deployment", "web", "-o", "json"]));
    let conds = d["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let reason = |t: &str| {
        conds
            .iter()
            .find(|x| x["type"] == t)
            .and_then(|x| x["reason"].as_str())
            .map(String::from)
    };
    assert_eq!(
        reason("Available").as_deref(),
        Some("MinimumReplicasAvailable")
    );
    assert_eq!(
        reason("Progressing").as_deref(),
        Some("NewReplicaSetAvailable")
    );
    let events = c.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=web",
    ]);
    assert!(
        events.contains(&format!("Scaled up replica set web-{hash} from 0 to 3")),
        "{events}"
    );
    // Controllers' Events carry upstream's legacy fields: kubectl sorts by them.
    let sorted = c.ok(&[
        "get",
        "events",
        "--sort-by=.lastTimestamp",
        "--field-selector",
        "involvedObject.name=web",
        "-o",
        "jsonpath={range .items[*]}{.reason} {.count} {.source.component} {.firstTimestamp}{\"\\n\"}{end}",
    ]);
    assert!(
        sorted
            .lines()
            .any(|l| l.starts_with("ScalingReplicaSet 1 deployment-controller 20")),
        "{sorted}"
    );

    // Scale to 0 and back.
    c.ok(&["scale", "deployment/web", "--replicas=0"]);
    wait_for("no web pods", Duration::from_secs(30), || {
        items(&c, &["pods", "-l", "app=web"])
            .is_empty()
            .then_some(())
    });
    c.ok(&["scale", "deployment/web", "--replicas=3"]);
    c.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert_eq!(items(&c, &["pods", "-l", "app=web"]).len(), 3);

    // A new image is a new revision.
    c.ok(&["set", "image", "deployment/web", "nginx=nginx:2"]);
    c.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let hist = c.ok(&["rollout", "history", "deployment/web"]);
    assert!(hist.contains("\n1 ") && hist.contains("\n2 "), "{hist}");
    assert_eq!(items(&c, &["rs", "-l", "app=web"]).len(), 2);

    // Deleting the Deployment (background) removes its ReplicaSets and pods.
    c.ok(&["delete", "deployment", "web"]);
    wait_for(
        "ReplicaSets and pods collected",
        Duration::from_secs(30),
        || {
            (items(&c, &["rs", "-l", "app=web"]).is_empty()
                && items(&c, &["pods", "-l", "app=web"]).is_empty())
            .then_some(())
        },
    );
}

#[test]
fn foreground_and_orphan_deletion_and_replication_controllers() {
    let c = Cluster::start();
    let _nodes = SimNodes::start(&c, "sim-node", 2);
    c.ok(&[
        "create",
        "deployment",
        "fg",
        "--image=nginx",
        "--replicas=2",
    ]);
    c.ok(&[
        "create",
        "deployment",
        "keep",
        "--image=nginx",
        "--replicas=2",
    ]);
    c.ok(&["rollout", "status", "deployment/fg", "--timeout=60s"]);
    c.ok(&["rollout", "status", "deployment/keep", "--timeout=60s"]);

    // Foreground: kubectl waits until the owner is gone, which is after its dependents.
    c.ok(&[
        "delete",
        "deployment",
        "fg",
        "--cascade=foreground",
        "--timeout=60s",
    ]);
    assert!(items(&c, &["rs", "-l", "app=fg"]).is_empty());
    assert!(items(&c, &["pods", "-l", "app=fg"]).is_empty());

    // Orphan: the ReplicaSet stays, without its owner reference; its pods stay.
    c.ok(&[
        "delete",
        "deployment",
        "keep",
        "--cascade=orphan",
        "--timeout=60s",
    ]);
    let rss = items(&c, &["rs", "-l", "app=keep"]);
    assert_eq!(rss.len(), 1);
    assert!(controller_uid(&rss[0]).is_none(), "{}", rss[0]["metadata"]);
    assert_eq!(items(&c, &["pods", "-l", "app=keep"]).len(), 2);

    // A ReplicationController keeps its replicas.
    let rc = "apiVersion: v1\nkind: ReplicationController\nmetadata: {name: rc1}\nspec:\n  replicas: 2\n  template:\n    metadata: {labels: {app: rc1}}\n    spec: {containers: [{name: c, image: nginx}]}\n";
    c.ok_with(&common::kubectl_bin(), &["apply", "-f", "-"], Some(rc));
    wait_for("rc1 ready", Duration::from_secs(30), || {
        let o = json(&c.ok(&["get", "rc", "rc1", "-o", "json"]));
        (o["status"]["readyReplicas"].as_i64() == Some(2)).then_some(())
    });
    let pods = items(&c, &["pods", "-l", "app=rc1"]);
    assert_eq!(pods.len(), 2);
    let victim = pods[0]["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    c.ok(&["delete", "pod", &victim, "--wait=false"]);
    wait_for("rc1 replaces the pod", Duration::from_secs(30), || {
        let names: Vec<String> = items(&c, &["pods", "-l", "app=rc1"])
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
            .collect();
        (names.len() == 2 && !names.contains(&victim)).then_some(())
    });
}
