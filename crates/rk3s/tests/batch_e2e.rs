//! Workload controllers against simulated nodes and the scheduler: StatefulSet order,
//! DaemonSet placement, Jobs, CronJob templates, Deployment rolling updates.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::http::{Conn, Creds};
use common::{wait_for, Cluster, SimNodes};
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

fn nodes_ready(c: &Cluster, n: usize) {
    wait_for("nodes", Duration::from_secs(30), || {
        let v = json(&c.ok(&["get", "nodes", "-o", "json"]));
        (v["items"].as_array().map(Vec::len) == Some(n)).then_some(())
    });
}

/// Events of a watch that ends after `secs` seconds, as (type, object).
fn watch(c: &Cluster, path: &str, secs: u32) -> Vec<(String, Value)> {
    let mut k = Conn::connect(&Creds::from_kubeconfig(&c.kubeconfig, c.port)).expect("connect");
    let sep = if path.contains('?') { '&' } else { '?' };
    let (code, body) = k
        .request(
            "GET",
            &format!("{path}{sep}watch=1&timeoutSeconds={secs}"),
            None,
        )
        .expect("watch");
    assert_eq!(code, 200);
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v = json(l);
            (
                v["type"].as_str().unwrap_or("").to_string(),
                v["object"].clone(),
            )
        })
        .collect()
}

#[test]
fn statefulset_creates_pods_in_order_each_after_the_previous_is_ready() {
    let c = Cluster::start();
    let _nodes = SimNodes::start(&c, "sts", 3);
    nodes_ready(&c, 3);
    let list = json(&c.ok(&["get", "--raw", "/api/v1/namespaces/default/pods"]));
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .filter(|s| !s.is_empty())
        .expect("list resourceVersion")
        .to_string();
    let sts = "apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: web\nspec:\n  serviceName: web\n  replicas: 3\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers:\n      - name: c\n        image: busybox\n";
    c.ok_with(&common::kubectl_bin(), &["apply", "-f", "-"], Some(sts));
    wait_for("3 ready replicas", Duration::from_secs(60), || {
        let s = json(&c.ok(&["get", "sts", "web", "-o", "json"]));
        (s["status"]["readyReplicas"] == 3).then_some(())
    });
    // Replay the pod events from before the StatefulSet: each pod appears only after
    // the previous ordinal was Ready.
    let events = watch(
        &c,
        &format!("/api/v1/namespaces/default/pods?resourceVersion={rv}"),
        1,
    );
    let mut ready_seen: HashSet<String> = HashSet::new();
    let mut created = Vec::new();
    for (typ, pod) in &events {
        let name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
        if typ == "ADDED" {
            if let Some(i) = name
                .strip_prefix("web-")
                .and_then(|n| n.parse::<u32>().ok())
            {
                if i > 0 {
                    assert!(
                        ready_seen.contains(&format!("web-{}", i - 1)),
                        "{name} created before web-{} was Ready",
                        i - 1
                    );
                }
                created.push(name.clone());
            }
        }
        if ready(pod) {
            ready_seen.insert(name);
        }
    }
    assert_eq!(created, vec!["web-0", "web-1", "web-2"]);
}

#[test]
fn daemonset_one_pod_per_matching_node_and_jobs_complete() {
    let c = Cluster::start();
    let _nodes = SimNodes::start(&c, "ds", 3);
    nodes_ready(&c, 3);
    c.ok(&["label", "node", "ds-2", "role=edge"]);
    let ds = "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: agent\nspec:\n  selector: {matchLabels: {app: agent}}\n  template:\n    metadata: {labels: {app: agent}}\n    spec:\n      containers:\n      - name: c\n        image: busybox\n";
    c.ok_with(&common::kubectl_bin(), &["apply", "-f", "-"], Some(ds));
    let nodes = wait_for("a daemon pod on each node", Duration::from_secs(60), || {
        let v = json(&c.ok(&["get", "pods", "-l", "app=agent", "-o", "json"]));
        let on: Vec<String> = v["items"]
            .as_array()?
            .iter()
            .filter(|p| ready(p))
            .filter_map(|p| p["spec"]["nodeName"].as_str().map(String::from))
            .collect();
        (on.len() == 3).then_some(on)
    });
    let distinct: HashSet<_> = nodes.iter().collect();
    assert_eq!(distinct.len(), 3, "{nodes:?}");
    // A nodeSelector narrows it to the matching node.
    let edge = ds
        .replace("name: agent", "name: edge-agent")
        .replace("app: agent", "app: edge")
        .replace(
            "    spec:\n      containers:",
            "    spec:\n      nodeSelector: {role: edge}\n      containers:",
        );
    c.ok_with(&common::kubectl_bin(), &["apply", "-f", "-"], Some(&edge));
    let on = wait_for("edge daemon pod", Duration::from_secs(60), || {
        let v = json(&c.ok(&["get", "pods", "-l", "app=edge", "-o", "json"]));
        let on: Vec<String> = v["items"]
            .as_array()?
            .iter()
            .filter_map(|p| p["spec"]["nodeName"].as_str().map(String::from))
            .collect();
        (!on.is_empty()).then_some(on)
    });
    assert_eq!(on, vec!["ds-2".to_string()]);

    // A Job with completions=3 parallelism=2 completes, never running more than 2 at once.
    let list = json(&c.ok(&["get", "--raw", "/api/v1/namespaces/default/pods"]));
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .filter(|s| !s.is_empty())
        .expect("list resourceVersion")
        .to_string();
    let job = "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: batch\nspec:\n  completions: 3\n  parallelism: 2\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: c\n        image: busybox\n";
    c.ok_with(&common::kubectl_bin(), &["apply", "-f", "-"], Some(job));
    wait_for("job complete", Duration::from_secs(60), || {
        let j = json(&c.ok(&["get", "job", "batch", "-o", "json"]));
        let done = j["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|x| x["type"] == "Complete" && x["status"] == "True")
        });
        (done && j["status"]["succeeded"] == 3).then_some(())
    });
    let events = watch(
        &c,
        &format!(
            "/api/v1/namespaces/default/pods?resourceVersion={rv}&labelSelector=job-name%3Dbatch"
        ),
        1,
    );
    let mut phase: HashMap<String, String> = HashMap::new();
    let mut max_active = 0;
    for (typ, pod) in &events {
        let name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
        if typ == "DELETED" {
            phase.remove(&name);
        } else {
            phase.insert(
                name,
                pod["status"]["phase"]
                    .as_str()
                    .unwrap_or("Pending")
                    .to_string(),
            );
        }
        let active = phase
            .values()
            .filter(|p| *p == "Pending" || *p == "Running")
            .count();
        max_active = max_active.max(active);
    }
    assert!(max_active <= 2, "{max_active} pods active at once");
    assert!(
        max_active >= 1,
        "no job pod events: {events:?} pods: {}",
        c.ok(&["get", "pods", "--show-labels"])
    );

    // CronJob: its job template works (manual run, as `kubectl create job --from`).
    c.ok(&[
        "create",
        "cronjob",
        "tick",
        "--image=busybox",
        "--schedule=*/1 * * * *",
    ]);
    c.ok(&["create", "job", "tick-manual", "--from=cronjob/tick"]);
    wait_for(
        "manual cronjob run complete",
        Duration::from_secs(60),
        || {
            let j = json(&c.ok(&["get", "job", "tick-manual", "-o", "json"]));
            (j["status"]["succeeded"] == 1).then_some(())
        },
    );
}

#[test]
fn rolling_update_respects_max_unavailable_and_undo_restores_the_image() {
    let c = Cluster::start();
    let _nodes = SimNodes::start(&c, "roll", 3);
    nodes_ready(&c, 3);
    let dep = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 5\n  strategy:\n    rollingUpdate: {maxUnavailable: 1, maxSurge: 1}\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers:\n      - name: c\n        image: busybox:1\n";
    c.ok_with(&common::kubectl_bin(), &["apply", "-f", "-"], Some(dep));
    wait_for("5/5 available", Duration::from_secs(60), || {
        let d = json(&c.ok(&["get", "deploy", "web", "-o", "json"]));
        (d["status"]["availableReplicas"] == 5).then_some(())
    });
    let list = json(&c.ok(&["get", "--raw", "/api/v1/namespaces/default/pods"]));
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .filter(|s| !s.is_empty())
        .expect("list resourceVersion")
        .to_string();
    c.ok(&["set", "image", "deployment/web", "c=busybox:2"]);
    wait_for("rollout complete", Duration::from_secs(90), || {
        let d = json(&c.ok(&["get", "deploy", "web", "-o", "json"]));
        let s = &d["status"];
        (s["updatedReplicas"] == 5
            && s["availableReplicas"] == 5
            && s["replicas"] == 5
            && s["observedGeneration"] == d["metadata"]["generation"])
            .then_some(())
    });
    // Replay every pod change of the rollout: ready pods never drop below 5 - 1.
    let events = watch(
        &c,
        &format!("/api/v1/namespaces/default/pods?resourceVersion={rv}&labelSelector=app%3Dweb"),
        1,
    );
    let mut ready_pods: HashSet<String> = list["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|p| ready(p))
                .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(ready_pods.len(), 5);
    let mut min_ready = 5;
    for (typ, pod) in &events {
        let name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
        let terminating = pod["metadata"]["deletionTimestamp"].is_string();
        if typ == "DELETED" || terminating || !ready(pod) {
            ready_pods.remove(&name);
        } else {
            ready_pods.insert(name);
        }
        min_ready = min_ready.min(ready_pods.len());
    }
    assert!(
        min_ready >= 4,
        "ready pods dropped to {min_ready} (maxUnavailable 1)"
    );
    let out = c.ok(&["rollout", "status", "deployment/web", "--timeout=30s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    c.ok(&["rollout", "undo", "deployment/web"]);
    wait_for("undo complete", Duration::from_secs(90), || {
        let d = json(&c.ok(&["get", "deploy", "web", "-o", "json"]));
        let image = d["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap_or("")
            .to_string();
        (image == "busybox:1"
            && d["status"]["updatedReplicas"] == 5
            && d["status"]["availableReplicas"] == 5)
            .then_some(())
    });
    let history = c.ok(&["rollout", "history", "deployment/web"]);
    assert!(history.contains('2') && history.contains('3'), "{history}");
}
