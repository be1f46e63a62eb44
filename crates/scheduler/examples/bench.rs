//! Schedules 10,000 pods on 1,000 nodes and prints the throughput.
//!
//! `cargo run --release -p rk3s-scheduler --example bench`

use std::collections::BTreeMap;
use std::time::Instant;

use k8s_openapi::api::core::v1::{
    Container, Node, NodeSpec, NodeStatus, Pod, PodSpec, ResourceRequirements, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rk3s_scheduler::{Scheduler, Snapshot};

const NODES: usize = 1000;
const PODS: usize = 10_000;

fn q(s: &str) -> Quantity {
    Quantity(s.to_string())
}

fn make_node(i: usize) -> Node {
    let name = format!("node-{i:04}");
    let alloc = BTreeMap::from([
        ("cpu".to_string(), q("32")),
        ("memory".to_string(), q("128Gi")),
        ("pods".to_string(), q("110")),
    ]);
    let labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), name.clone()),
        (
            "topology.kubernetes.io/zone".to_string(),
            format!("zone-{}", i % 3),
        ),
        (
            "node.kubernetes.io/instance-type".to_string(),
            if i % 2 == 0 { "large" } else { "xlarge" }.to_string(),
        ),
    ]);
    let taints = (i % 10 == 0).then(|| {
        vec![Taint {
            key: "dedicated".into(),
            value: Some("gpu".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        }]
    });
    Node {
        metadata: ObjectMeta {
            name: Some(name),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            taints,
            ..Default::default()
        }),
        status: Some(NodeStatus {
            allocatable: Some(alloc.clone()),
            capacity: Some(alloc),
            ..Default::default()
        }),
    }
}

fn make_pod(i: usize) -> Pod {
    let requests = BTreeMap::from([
        ("cpu".to_string(), q(["100m", "250m", "500m"][i % 3])),
        ("memory".to_string(), q(["128Mi", "256Mi", "512Mi"][i % 3])),
    ]);
    let node_selector = (i % 4 == 0).then(|| {
        BTreeMap::from([(
            "topology.kubernetes.io/zone".to_string(),
            format!("zone-{}", i % 3),
        )])
    });
    let tolerations = (i % 5 == 0).then(|| {
        vec![Toleration {
            key: Some("dedicated".into()),
            operator: Some("Exists".into()),
            ..Default::default()
        }]
    });
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("pod-{i:05}")),
            namespace: Some("default".into()),
            labels: Some(BTreeMap::from([(
                "app".to_string(),
                format!("app-{}", i % 50),
            )])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "main".into(),
                image: Some(format!("registry.local/app-{}:v1", i % 50)),
                resources: Some(ResourceRequirements {
                    requests: Some(requests),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            node_selector,
            tolerations,
            ..Default::default()
        }),
        status: None,
    }
}

fn main() {
    let nodes: Vec<Node> = (0..NODES).map(make_node).collect();
    let pods: Vec<Pod> = (0..PODS).map(make_pod).collect();
    let t0 = Instant::now();
    let mut snap = Snapshot::new(nodes, Vec::new());
    let build = t0.elapsed();
    let sched = Scheduler::default();
    let t = Instant::now();
    let mut failed = 0usize;
    for p in pods {
        match sched.schedule(&snap, &p) {
            Ok(node) => snap.add_pod_owned(p, &node),
            Err(_) => failed += 1,
        }
    }
    let el = t.elapsed();
    let per_node: Vec<i64> = snap
        .node_names()
        .filter_map(|n| snap.requested(n).map(|r| r.milli_cpu))
        .collect();
    let (min, max) = (
        per_node.iter().min().copied().unwrap_or(0),
        per_node.iter().max().copied().unwrap_or(0),
    );
    println!(
        "scheduled {} pods on {NODES} nodes in {:.3}s: {:.0} pods/s (snapshot build {:.1} ms, unschedulable {failed}, cpu requested per node min {min}m max {max}m)",
        PODS - failed,
        el.as_secs_f64(),
        PODS as f64 / el.as_secs_f64(),
        build.as_secs_f64() * 1e3,
    );
}
