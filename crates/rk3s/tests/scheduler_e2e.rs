//! End-to-end: the in-process scheduler against simulated nodes (`rk3s sim-nodes`).

mod common;

use std::time::Duration;

use common::{wait_for, Cluster, SimNodes};
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn apply(c: &Cluster, yaml: &str) {
    c.ok_with(&common::kubectl_bin(), &["apply", "-f", "-"], Some(yaml));
}

fn pod_yaml(name: &str, labels: &str, extra_spec: &str, cpu: &str) -> String {
    let resources = if cpu.is_empty() {
        String::new()
    } else {
        format!("\n      resources: {{requests: {{cpu: \"{cpu}\"}}}}")
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{{labels}}}\nspec:\n  terminationGracePeriodSeconds: 0\n  containers:\n    - name: c\n      image: busybox{resources}\n{extra_spec}"
    )
}

/// `name -> nodeName` of the pods with a label selector, once all of them are bound.
fn bound_nodes(c: &Cluster, selector: &str, count: usize) -> Vec<(String, String)> {
    wait_for(
        &format!("{count} pods {selector} bound"),
        Duration::from_secs(30),
        || {
            let v = json(&c.ok(&["get", "pods", "-l", selector, "-o", "json"]));
            let items = v["items"].as_array().cloned().unwrap_or_default();
            let nodes: Vec<(String, String)> = items
                .iter()
                .filter_map(|p| {
                    Some((
                        p["metadata"]["name"].as_str()?.to_string(),
                        p["spec"]["nodeName"].as_str()?.to_string(),
                    ))
                })
                .collect();
            (items.len() == count && nodes.len() == count).then_some(nodes)
        },
    )
}

#[test]
fn scheduler_places_pods_with_upstream_rules() {
    let c = Cluster::start();
    let _sim = SimNodes::start(&c, "sim-node", 3);
    wait_for("3 ready nodes", Duration::from_secs(30), || {
        let v = json(&c.ok(&["get", "nodes", "-o", "json"]));
        let ready = v["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|n| {
                        n["status"]["conditions"].as_array().is_some_and(|cs| {
                            cs.iter()
                                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                        })
                    })
                    .count()
            })
            .unwrap_or(0);
        (ready == 3).then_some(())
    });

    // Plain pods are bound and run.
    for i in 0..3 {
        apply(&c, &pod_yaml(&format!("plain-{i}"), "t: plain", "", "100m"));
    }
    bound_nodes(&c, "t=plain", 3);
    wait_for("plain pods Running", Duration::from_secs(30), || {
        let out = c.ok(&[
            "get",
            "pods",
            "-l",
            "t=plain",
            "-o",
            "jsonpath={.items[*].status.phase}",
        ]);
        (out.split_whitespace().filter(|p| *p == "Running").count() == 3).then_some(())
    });
    let ev = json(&c.ok(&["get", "events.v1.events.k8s.io", "-o", "json"]));
    let scheduled = ev["items"].as_array().cloned().unwrap_or_default();
    assert!(
        scheduled.iter().any(|e| e["reason"] == "Scheduled"
            && e["regarding"]["name"] == "plain-0"
            && e["reportingController"] == "default-scheduler"
            && e["note"].as_str().is_some_and(
                |n| n.starts_with("Successfully assigned default/plain-0 to sim-node-")
            )),
        "no Scheduled event for plain-0: {ev}"
    );

    // Too much cpu: Pending, PodScheduled=False/Unschedulable, FailedScheduling event.
    apply(&c, &pod_yaml("huge", "t: huge", "", "10"));
    let note = wait_for(
        "FailedScheduling event for huge",
        Duration::from_secs(30),
        || {
            let ev = json(&c.ok(&["get", "events.v1.events.k8s.io", "-o", "json"]));
            ev["items"].as_array().and_then(|a| {
                a.iter()
                    .find(|e| {
                        e["reason"] == "FailedScheduling"
                            && e["regarding"]["name"] == "huge"
                            && e["type"] == "Warning"
                    })
                    .and_then(|e| e["note"].as_str().map(String::from))
            })
        },
    );
    assert!(
        note.starts_with("0/3 nodes are available: 3 Insufficient cpu."),
        "{note}"
    );
    let huge = json(&c.ok(&["get", "pod", "huge", "-o", "json"]));
    assert_eq!(huge["status"]["phase"], "Pending");
    assert!(huge["spec"]["nodeName"].is_null(), "{huge}");
    let cond = huge["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "PodScheduled").cloned());
    let cond = cond.unwrap_or_else(|| panic!("no PodScheduled condition: {huge}"));
    assert_eq!(cond["status"], "False");
    assert_eq!(cond["reason"], "Unschedulable");
    assert!(
        cond["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("0/3 nodes are available: 3 Insufficient cpu.")),
        "{cond}"
    );
    c.ok(&["delete", "pod", "huge", "--wait=false"]);

    // A tainted node is avoided.
    c.ok(&["taint", "nodes", "sim-node-0", "dedicated=infra:NoSchedule"]);
    for i in 0..6 {
        apply(&c, &pod_yaml(&format!("taint-{i}"), "t: taint", "", ""));
    }
    for (pod, node) in bound_nodes(&c, "t=taint", 6) {
        assert_ne!(node, "sim-node-0", "{pod} landed on the tainted node");
    }
    c.ok(&["taint", "nodes", "sim-node-0", "dedicated-"]);

    // nodeSelector is obeyed.
    c.ok(&["label", "node", "sim-node-2", "disk=ssd"]);
    apply(
        &c,
        &pod_yaml(
            "selected",
            "t: selected",
            "  nodeSelector: {disk: ssd}\n",
            "",
        ),
    );
    assert_eq!(bound_nodes(&c, "t=selected", 1)[0].1, "sim-node-2");

    // Required anti-affinity on the hostname spreads 3 pods over 3 nodes.
    let anti = "  affinity:\n    podAntiAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n        - labelSelector: {matchLabels: {t: anti}}\n          topologyKey: kubernetes.io/hostname\n";
    for i in 0..3 {
        apply(&c, &pod_yaml(&format!("anti-{i}"), "t: anti", anti, ""));
    }
    let mut nodes: Vec<String> = bound_nodes(&c, "t=anti", 3)
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes.len(), 3, "anti-affinity pods share nodes: {nodes:?}");
    // a fourth cannot be placed
    apply(&c, &pod_yaml("anti-3", "t: anti", anti, ""));
    let note = wait_for(
        "FailedScheduling for anti-3",
        Duration::from_secs(30),
        || {
            let ev = json(&c.ok(&["get", "events.v1.events.k8s.io", "-o", "json"]));
            ev["items"].as_array().and_then(|a| {
                a.iter()
                    .find(|e| {
                        e["reason"] == "FailedScheduling" && e["regarding"]["name"] == "anti-3"
                    })
                    .and_then(|e| e["note"].as_str().map(String::from))
            })
        },
    );
    assert!(
        note.starts_with(
            "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules."
        ),
        "{note}"
    );

    // Topology spread over a zone label: 6 pods, 3 zones, maxSkew 1 -> 2 per zone.
    for (n, z) in [
        ("sim-node-0", "a"),
        ("sim-node-1", "b"),
        ("sim-node-2", "c"),
    ] {
        c.ok(&[
            "label",
            "node",
            n,
            &format!("topology.kubernetes.io/zone=zone-{z}"),
        ]);
    }
    let spread = "  topologySpreadConstraints:\n    - maxSkew: 1\n      topologyKey: topology.kubernetes.io/zone\n      whenUnsatisfiable: DoNotSchedule\n      labelSelector: {matchLabels: {t: spread}}\n";
    for i in 0..6 {
        apply(
            &c,
            &pod_yaml(&format!("spread-{i}"), "t: spread", spread, ""),
        );
    }
    let placed = bound_nodes(&c, "t=spread", 6);
    for n in ["sim-node-0", "sim-node-1", "sim-node-2"] {
        let count = placed.iter().filter(|(_, node)| node == n).count();
        assert_eq!(count, 2, "zone of {n} has {count} spread pods: {placed:?}");
    }
}

#[test]
fn scheduler_preempts_lower_priority_pods() {
    let c = Cluster::start();
    let _sim = SimNodes::start(&c, "sim-node", 3);
    wait_for("3 nodes", Duration::from_secs(30), || {
        let out = c.ok(&["get", "nodes", "-o", "name"]);
        (out.lines().count() == 3).then_some(())
    });
    apply(&c, "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata:\n  name: high\nvalue: 1000\n");
    // Fill every node (4 cpu each) with low-priority pods of 3 cpu.
    for i in 0..3 {
        apply(&c, &pod_yaml(&format!("low-{i}"), "t: low", "", "3"));
    }
    bound_nodes(&c, "t=low", 3);
    apply(
        &c,
        &pod_yaml("high", "t: high", "  priorityClassName: high\n", "3"),
    );
    let node = bound_nodes(&c, "t=high", 1).remove(0).1;
    let low = json(&c.ok(&["get", "pods", "-l", "t=low", "-o", "json"]));
    let lows: Vec<String> = low["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["spec"]["nodeName"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        lows.len(),
        2,
        "one low-priority pod should have been preempted: {low}"
    );
    assert!(
        !lows.contains(&node),
        "a victim still runs on {node}: {lows:?}"
    );
    let ev = json(&c.ok(&["get", "events.v1.events.k8s.io", "-o", "json"]));
    assert!(
        ev["items"]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["reason"] == "Preempted"
                && e["note"]
                    .as_str()
                    .is_some_and(|n| n.ends_with(&format!("on node {node}"))))),
        "no Preempted event: {ev}"
    );
}
