//! End-to-end: node IPAM, endpoints/EndpointSlices, and node lifecycle with taint-based
//! eviction, against simulated nodes (`rk3s sim-nodes`).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{wait_for, Cluster, SimNodes};
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn get(c: &Cluster, args: &[&str]) -> Value {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    json(&c.ok(&a))
}

fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

/// `name -> podCIDR` of all nodes, once every one of `names` has a pod CIDR.
fn pod_cidrs(c: &Cluster, names: &[&str]) -> Vec<(String, String)> {
    wait_for("pod CIDRs", Duration::from_secs(30), || {
        let nodes = items(&get(c, &["nodes"]));
        let got: Vec<(String, String)> = nodes
            .iter()
            .filter_map(|n| {
                Some((
                    n["metadata"]["name"].as_str()?.to_string(),
                    n["spec"]["podCIDR"].as_str()?.to_string(),
                ))
            })
            .collect();
        let all = names.iter().all(|name| got.iter().any(|(n, _)| n == name));
        all.then_some(got)
    })
}

/// Running pods of the ReplicaSet: (name, node, ip, deleting).
fn web_pods(c: &Cluster) -> Vec<(String, String, String, bool)> {
    items(&get(c, &["pods", "-l", "app=web"]))
        .iter()
        .filter(|p| p["status"]["phase"] == "Running")
        .filter_map(|p| {
            Some((
                p["metadata"]["name"].as_str()?.to_string(),
                p["spec"]["nodeName"].as_str()?.to_string(),
                p["status"]["podIP"].as_str()?.to_string(),
                p["metadata"]["deletionTimestamp"].is_string(),
            ))
        })
        .collect()
}

/// The pod names in the Endpoints' ready addresses, and in its not-ready addresses.
fn endpoint_pods(c: &Cluster) -> (BTreeSet<String>, BTreeSet<String>, Vec<i64>) {
    let out = c.kubectl(&["get", "endpoints", "web", "-o", "json"]);
    if !out.status.success() {
        return Default::default();
    }
    let ep = json(&String::from_utf8_lossy(&out.stdout));
    let mut ready = BTreeSet::new();
    let mut not_ready = BTreeSet::new();
    let mut ports = Vec::new();
    for s in ep["subsets"].as_array().cloned().unwrap_or_default() {
        for a in s["addresses"].as_array().cloned().unwrap_or_default() {
            ready.insert(a["targetRef"]["name"].as_str().unwrap_or("").to_string());
        }
        for a in s["notReadyAddresses"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            not_ready.insert(a["targetRef"]["name"].as_str().unwrap_or("").to_string());
        }
        for p in s["ports"].as_array().cloned().unwrap_or_default() {
            ports.push(p["port"].as_i64().unwrap_or(0));
        }
    }
    (ready, not_ready, ports)
}

const WORKLOAD: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
    - name: http
      port: 80
      targetPort: http
---
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      terminationGracePeriodSeconds: 30
      tolerations:
        - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
        - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
      containers:
        - name: c
          image: nginx
          ports:
            - {name: http, containerPort: 8080}
"#;

#[test]
fn nodes_cidrs_endpoints_and_unreachable_eviction() {
    let c = Cluster::start_with(&["--node-monitor-grace-period=3s"]);
    // One node first, so the workload lands on it.
    let mut doomed = SimNodes::start(&c, "doomed", 1);
    let cidrs = pod_cidrs(&c, &["doomed-0"]);
    assert_eq!(
        cidrs,
        vec![("doomed-0".to_string(), "10.42.0.0/24".to_string())]
    );
    let node = get(&c, &["node", "doomed-0"]);
    assert_eq!(
        node["spec"]["podCIDRs"],
        serde_json::json!(["10.42.0.0/24"])
    );

    c.ok_with(
        &common::kubectl_bin(),
        &["apply", "-f", "-"],
        Some(WORKLOAD),
    );
    let first = wait_for("2 web pods running", Duration::from_secs(30), || {
        let p = web_pods(&c);
        (p.len() == 2).then_some(p)
    });
    assert!(first.iter().all(|(_, node, _, _)| node == "doomed-0"));
    let first_names: BTreeSet<String> = first.iter().map(|p| p.0.clone()).collect();

    // Endpoints: both pods ready, the named target port resolved to 8080.
    wait_for(
        "endpoints listing both pods",
        Duration::from_secs(20),
        || {
            let (ready, not_ready, ports) = endpoint_pods(&c);
            (ready == first_names && not_ready.is_empty() && ports == vec![8080]).then_some(())
        },
    );
    let ep = get(&c, &["endpoints", "web"]);
    let ips: BTreeSet<String> = ep["subsets"][0]["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["ip"].as_str().unwrap().to_string())
        .collect();
    let pod_ips: BTreeSet<String> = first.iter().map(|p| p.2.clone()).collect();
    assert_eq!(ips, pod_ips);
    assert_eq!(ep["subsets"][0]["addresses"][0]["nodeName"], "doomed-0");

    // EndpointSlice: labelled, owned by the Service, endpoints ready.
    let slice = wait_for(
        "endpointslice with both pods",
        Duration::from_secs(20),
        || {
            let s = items(&get(
                &c,
                &["endpointslices", "-l", "kubernetes.io/service-name=web"],
            ));
            let one = s.first()?.clone();
            (s.len() == 1 && one["endpoints"].as_array().map(|e| e.len()) == Some(2)).then_some(one)
        },
    );
    assert_eq!(slice["addressType"], "IPv4");
    assert_eq!(
        slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
    assert_eq!(slice["metadata"]["ownerReferences"][0]["kind"], "Service");
    assert!(slice["metadata"]["name"]
        .as_str()
        .unwrap()
        .starts_with("web-"));
    assert_eq!(slice["ports"][0]["port"], 8080);
    for e in slice["endpoints"].as_array().unwrap() {
        assert_eq!(e["conditions"]["ready"], true);
        assert_eq!(e["nodeName"], "doomed-0");
        assert_eq!(e["targetRef"]["kind"], "Pod");
    }

    // Two more nodes, each with its own range.
    let _others = SimNodes::start(&c, "sim-node", 2);
    let cidrs = pod_cidrs(&c, &["doomed-0", "sim-node-0", "sim-node-1"]);
    let distinct: BTreeSet<&String> = cidrs.iter().map(|(_, c)| c).collect();
    assert_eq!(distinct.len(), 3, "{cidrs:?}");

    // The doomed node stops renewing its Lease: Unknown + unreachable taints.
    doomed.kill();
    let killed = Instant::now();
    wait_for("doomed-0 unreachable", Duration::from_secs(30), || {
        let n = get(&c, &["node", "doomed-0"]);
        let ready = n["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")?
            .clone();
        let taints = n["spec"]["taints"].as_array().cloned().unwrap_or_default();
        let has = |effect: &str| {
            taints.iter().any(|t| {
                t["key"] == "node.kubernetes.io/unreachable"
                    && t["effect"] == effect
                    && t["timeAdded"].is_string()
            })
        };
        (ready["status"] == "Unknown"
            && ready["reason"] == "NodeStatusUnknown"
            && ready["message"] == "Kubelet stopped posting node status."
            && has("NoExecute")
            && has("NoSchedule"))
        .then_some(())
    });
    assert!(
        killed.elapsed() < Duration::from_secs(15),
        "took {:?}",
        killed.elapsed()
    );

    // After tolerationSeconds the pods are evicted and replaced on the healthy nodes.
    let replaced = wait_for(
        "replacement pods on healthy nodes",
        Duration::from_secs(40),
        || {
            let pods = web_pods(&c);
            let live: Vec<_> = pods.iter().filter(|p| !p.3).cloned().collect();
            let old_alive = pods.iter().any(|p| first_names.contains(&p.0) && !p.3);
            (!old_alive && live.len() == 2 && live.iter().all(|p| p.1.starts_with("sim-node-")))
                .then_some(live)
        },
    );
    // The evicted pods carry the DisruptionTarget condition (while they remain terminating).
    for name in &first_names {
        let out = c.kubectl(&["get", "pod", name, "-o", "json"]);
        if out.status.success() {
            let p = json(&String::from_utf8_lossy(&out.stdout));
            assert!(p["metadata"]["deletionTimestamp"].is_string());
            let conds = p["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            assert!(
                conds
                    .iter()
                    .any(|c| c["type"] == "DisruptionTarget"
                        && c["reason"] == "DeletionByTaintManager"),
                "{p}"
            );
            assert!(
                conds
                    .iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "False"),
                "{p}"
            );
        }
    }
    // Endpoints follow: only the replacements are ready.
    let new_names: BTreeSet<String> = replaced.iter().map(|p| p.0.clone()).collect();
    wait_for(
        "endpoints listing the replacements",
        Duration::from_secs(20),
        || {
            let (ready, _, _) = endpoint_pods(&c);
            (ready == new_names).then_some(())
        },
    );
    // A node event was recorded.
    wait_for("NodeNotReady event", Duration::from_secs(10), || {
        let evs = items(&get(&c, &["events", "-A"]));
        evs.iter()
            .any(|e| e["reason"] == "NodeNotReady" && e["involvedObject"]["kind"] == "Node")
            .then_some(())
    });
}
