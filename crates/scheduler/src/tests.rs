//! Behaviour tests of the whole cycle.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ContainerPort, Pod, Toleration};
use serde_json::json;

use crate::test_util::*;
use crate::{Scheduler, SchedulerConfig, Snapshot};

fn all_nodes() -> Scheduler {
    Scheduler::new(SchedulerConfig {
        percentage_of_nodes_to_score: 100,
        ..Default::default()
    })
}

fn three_nodes() -> Vec<k8s_openapi::api::core::v1::Node> {
    vec![
        node("n1", "2", "4Gi"),
        node("n2", "2", "4Gi"),
        node("n3", "2", "4Gi"),
    ]
}

fn msg(s: &Scheduler, snap: &Snapshot, p: &Pod) -> String {
    match s.schedule(snap, p) {
        Ok(n) => panic!("expected failure, got {n}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn insufficient_cpu_message_matches_upstream() {
    let snap = Snapshot::new(three_nodes(), vec![]);
    let m = msg(&all_nodes(), &snap, &pod("big", "4", "1Gi"));
    assert_eq!(
        m,
        "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod."
    );
}

#[test]
fn mixed_reasons_are_counted_and_sorted() {
    let nodes = vec![
        node("n1", "1", "4Gi"),
        label_node(node("n2", "8", "4Gi"), "disk", "hdd"),
        taint_node(node("n3", "8", "4Gi"), "dedicated", "gpu", "NoSchedule"),
    ];
    let snap = Snapshot::new(nodes, vec![]);
    let mut p = pod("p", "2", "");
    spec(&mut p).node_selector = Some(BTreeMap::from([("disk".to_string(), "ssd".to_string())]));
    // n1: affinity fails first (filter order) -> all three are unresolvable/resolvable mixes
    assert_eq!(
        msg(&all_nodes(), &snap, &p),
        "0/3 nodes are available: 1 node(s) had untolerated taint(s), 2 node(s) didn't match Pod's node affinity/selector. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
    );
    spec(&mut p).node_selector = None;
    let big = pod("big", "10", "");
    assert_eq!(
        msg(&all_nodes(), &snap, &big),
        "0/3 nodes are available: 1 node(s) had untolerated taint(s), 2 Insufficient cpu. preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, 2 No preemption victims found for incoming pod."
    );
}

#[test]
fn counts_sort_as_strings_like_upstream() {
    let mut reasons = BTreeMap::new();
    reasons.insert("Insufficient cpu".to_string(), 10);
    reasons.insert("Insufficient memory".to_string(), 2);
    let e = crate::FitError {
        num_nodes: 12,
        reasons,
        pre_filter_msg: None,
        post_filter_msg: None,
        preemption: None,
    };
    assert_eq!(
        e.to_string(),
        "0/12 nodes are available: 10 Insufficient cpu, 2 Insufficient memory."
    );
}

#[test]
fn resources_filter_counts_init_containers() {
    let snap = Snapshot::new(vec![node("n1", "1", "4Gi")], vec![]);
    let mut p = pod("p", "100m", "");
    let mut init = p
        .spec
        .as_ref()
        .map(|s| s.containers[0].clone())
        .unwrap_or_default();
    init.resources = Some(from_json(json!({"requests": {"cpu": "2"}})));
    spec(&mut p).init_containers = Some(vec![init]);
    let m = msg(&all_nodes(), &snap, &p);
    assert!(
        m.starts_with("0/1 nodes are available: 1 Insufficient cpu."),
        "{m}"
    );
    // Existing pods consume capacity.
    let snap = Snapshot::new(vec![node("n1", "1", "4Gi")], vec![]);
    let mut s2 = snap.clone();
    s2.add_pod(&pod("a", "900m", ""), "n1");
    assert_eq!(
        all_nodes()
            .schedule(&snap, &pod("b", "200m", ""))
            .ok()
            .as_deref(),
        Some("n1")
    );
    assert!(all_nodes().schedule(&s2, &pod("b", "200m", "")).is_err());
    // Memory and pods count.
    let m = msg(&all_nodes(), &snap, &pod("m", "", "5Gi"));
    assert!(
        m.starts_with("0/1 nodes are available: 1 Insufficient memory."),
        "{m}"
    );
}

#[test]
fn too_many_pods() {
    let mut n = node("n1", "4", "4Gi");
    if let Some(st) = n.status.as_mut() {
        st.allocatable
            .get_or_insert_with(Default::default)
            .insert("pods".into(), q("1"));
    }
    let mut snap = Snapshot::new(vec![n], vec![]);
    snap.add_pod(&pod("a", "", ""), "n1");
    let m = msg(&all_nodes(), &snap, &pod("b", "", ""));
    assert!(
        m.starts_with("0/1 nodes are available: 1 Too many pods."),
        "{m}"
    );
}

#[test]
fn node_name_and_unschedulable() {
    let mut n2 = node("n2", "4", "4Gi");
    n2.spec.get_or_insert_with(Default::default).unschedulable = Some(true);
    let snap = Snapshot::new(vec![node("n1", "4", "4Gi"), n2], vec![]);
    let mut p = pod("p", "", "");
    spec(&mut p).node_name = Some("n3".into());
    let m = msg(&all_nodes(), &snap, &p);
    assert!(
        m.starts_with("0/2 nodes are available: 1 node(s) didn't match the requested node name, 1 node(s) were unschedulable."),
        "{m}"
    );
    let p = pod("q", "", "");
    for _ in 0..5 {
        assert_eq!(all_nodes().schedule(&snap, &p).ok().as_deref(), Some("n1"));
    }
    // Tolerating the unschedulable taint lets the pod on.
    let mut p = pod("r", "", "");
    spec(&mut p).node_name = Some("n2".into());
    spec(&mut p).tolerations = Some(vec![from_json(
        json!({"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}),
    )]);
    assert_eq!(all_nodes().schedule(&snap, &p).ok().as_deref(), Some("n2"));
}

#[test]
fn node_affinity_operators() {
    let nodes = vec![
        label_node(
            label_node(node("a", "4", "4Gi"), "zone", "z1"),
            "cores",
            "4",
        ),
        label_node(
            label_node(node("b", "4", "4Gi"), "zone", "z2"),
            "cores",
            "16",
        ),
        label_node(node("c", "4", "4Gi"), "gpu", "yes"),
    ];
    let snap = Snapshot::new(nodes, vec![]);
    let with_req = |exprs: serde_json::Value| {
        let mut p = pod("p", "", "");
        spec(&mut p).affinity = Some(from_json(json!({"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": exprs}]}
        }})));
        p
    };
    let s = all_nodes();
    let only = |p: &Pod| -> Vec<String> {
        let mut out: Vec<String> = (0..30).filter_map(|_| s.schedule(&snap, p).ok()).collect();
        out.sort();
        out.dedup();
        out
    };
    assert_eq!(
        only(&with_req(
            json!([{"key": "zone", "operator": "In", "values": ["z2"]}])
        )),
        vec!["b"]
    );
    assert_eq!(
        only(&with_req(
            json!([{"key": "zone", "operator": "NotIn", "values": ["z1"]}])
        )),
        vec!["b", "c"]
    );
    assert_eq!(
        only(&with_req(json!([{"key": "gpu", "operator": "Exists"}]))),
        vec!["c"]
    );
    assert_eq!(
        only(&with_req(
            json!([{"key": "zone", "operator": "DoesNotExist"}])
        )),
        vec!["c"]
    );
    assert_eq!(
        only(&with_req(
            json!([{"key": "cores", "operator": "Gt", "values": ["8"]}])
        )),
        vec!["b"]
    );
    assert_eq!(
        only(&with_req(
            json!([{"key": "cores", "operator": "Lt", "values": ["8"]}])
        )),
        vec!["a"]
    );
    let m = msg(
        &s,
        &snap,
        &with_req(json!([{"key": "zone", "operator": "In", "values": ["z9"]}])),
    );
    assert_eq!(
        m,
        "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
    );
    // nodeSelector
    let mut p = pod("p", "", "");
    spec(&mut p).node_selector = Some(BTreeMap::from([("zone".to_string(), "z1".to_string())]));
    assert_eq!(only(&p), vec!["a"]);
    // preferred affinity steers the score
    let mut p = pod("p", "", "");
    spec(&mut p).affinity = Some(from_json(json!({"nodeAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 50, "preference": {"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}}]
    }})));
    assert_eq!(only(&p), vec!["c"]);
}

#[test]
fn taints_and_tolerations() {
    let nodes = vec![
        taint_node(node("a", "4", "4Gi"), "dedicated", "db", "NoSchedule"),
        taint_node(node("b", "4", "4Gi"), "maint", "", "NoExecute"),
        taint_node(node("c", "4", "4Gi"), "soft", "x", "PreferNoSchedule"),
    ];
    let snap = Snapshot::new(nodes, vec![]);
    let s = all_nodes();
    let tol = |t: serde_json::Value| {
        let mut p = pod("p", "", "");
        let ts: Vec<Toleration> = from_json(t);
        spec(&mut p).tolerations = Some(ts);
        p
    };
    // Only the PreferNoSchedule node is feasible without tolerations.
    assert_eq!(
        s.schedule(&snap, &pod("p", "", "")).ok().as_deref(),
        Some("c")
    );
    // Equal toleration with the wrong value does not help on a.
    let p = tol(
        json!([{"key": "dedicated", "operator": "Equal", "value": "web", "effect": "NoSchedule"}]),
    );
    assert_eq!(s.schedule(&snap, &p).ok().as_deref(), Some("c"));
    // Empty key + Exists tolerates everything; then PreferNoSchedule is tolerated too,
    // so every node is possible.
    let p = tol(json!([{"operator": "Exists"}]));
    let mut seen: Vec<String> = (0..60).filter_map(|_| s.schedule(&snap, &p).ok()).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen, vec!["a", "b", "c"]);
    // Tolerating a and b's taints but not c's soft one: c scores lower, so a or b wins.
    let p = tol(
        json!([{"key": "dedicated", "operator": "Exists"}, {"key": "maint", "operator": "Exists", "effect": "NoExecute"}]),
    );
    for _ in 0..20 {
        let n = s.schedule(&snap, &p).ok();
        assert!(
            n.as_deref() == Some("a") || n.as_deref() == Some("b"),
            "{n:?}"
        );
    }
}

#[test]
fn host_ports_conflict() {
    let snap0 = Snapshot::new(vec![node("a", "4", "4Gi"), node("b", "4", "4Gi")], vec![]);
    let with_port = |name: &str, port: i32, ip: Option<&str>, proto: Option<&str>| {
        let mut p = pod(name, "", "");
        spec(&mut p).containers[0].ports = Some(vec![ContainerPort {
            container_port: 80,
            host_port: Some(port),
            host_ip: ip.map(Into::into),
            protocol: proto.map(Into::into),
            name: None,
        }]);
        p
    };
    let mut snap = snap0.clone();
    snap.add_pod(&with_port("x", 8080, None, None), "a");
    let s = all_nodes();
    for _ in 0..10 {
        assert_eq!(
            s.schedule(&snap, &with_port("y", 8080, Some("10.0.0.1"), None))
                .ok()
                .as_deref(),
            Some("b")
        );
    }
    snap.add_pod(&with_port("z", 8080, Some("10.0.0.2"), Some("TCP")), "b");
    let m = msg(&s, &snap, &with_port("y", 8080, None, None));
    assert_eq!(
        m,
        "0/2 nodes are available: 2 node(s) didn't have free ports for the requested pod ports. preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod."
    );
    // Different protocol or different specific IP is fine.
    assert!(s
        .schedule(&snap, &with_port("u", 8080, None, Some("UDP")))
        .is_ok());
    assert_eq!(
        s.schedule(&snap, &with_port("v", 8080, Some("10.0.0.3"), None))
            .ok()
            .as_deref(),
        Some("b")
    );
}

fn anti_affinity_pod(name: &str, app: &str, key: &str) -> Pod {
    let mut p = label_pod(pod(name, "", ""), "app", app);
    spec(&mut p).affinity = Some(from_json(json!({"podAntiAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key}]
    }})));
    p
}

#[test]
fn inter_pod_anti_affinity_on_hostname() {
    let mut snap = Snapshot::new(three_nodes(), vec![]);
    let s = all_nodes();
    let mut used = Vec::new();
    for i in 0..3 {
        let p = anti_affinity_pod(&format!("w{i}"), "web", "kubernetes.io/hostname");
        let n = s.schedule(&snap, &p).ok();
        let Some(n) = n else {
            panic!("w{i} should fit")
        };
        assert!(!used.contains(&n), "{n} used twice");
        snap.add_pod(&p, &n);
        used.push(n);
    }
    let m = msg(
        &s,
        &snap,
        &anti_affinity_pod("w3", "web", "kubernetes.io/hostname"),
    );
    assert_eq!(
        m,
        "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod."
    );
    // A plain pod with the label is blocked by the existing pods' anti-affinity.
    let m = msg(&s, &snap, &label_pod(pod("plain", "", ""), "app", "web"));
    assert!(
        m.starts_with(
            "0/3 nodes are available: 3 node(s) didn't satisfy existing pods anti-affinity rules."
        ),
        "{m}"
    );
    // Other apps are fine.
    assert!(s
        .schedule(&snap, &label_pod(pod("other", "", ""), "app", "db"))
        .is_ok());
}

#[test]
fn inter_pod_affinity_required() {
    let nodes = vec![
        label_node(node("a", "4", "4Gi"), "zone", "z1"),
        label_node(node("b", "4", "4Gi"), "zone", "z2"),
    ];
    let mut snap = Snapshot::new(nodes, vec![]);
    let mut p = label_pod(pod("p", "", ""), "app", "web");
    spec(&mut p).affinity = Some(from_json(json!({"podAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}]
    }})));
    let s = all_nodes();
    let m = msg(&s, &snap, &p);
    assert!(
        m.starts_with("0/2 nodes are available: 2 node(s) didn't match pod affinity rules."),
        "{m}"
    );
    snap.add_pod(&label_pod(pod("db", "", ""), "app", "db"), "b");
    for _ in 0..10 {
        assert_eq!(s.schedule(&snap, &p).ok().as_deref(), Some("b"));
    }
    // A pod with affinity to itself may start the group anywhere.
    let mut selfp = label_pod(pod("s", "", ""), "app", "cache");
    spec(&mut selfp).affinity = Some(from_json(json!({"podAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "zone"}]
    }})));
    assert!(s.schedule(&snap, &selfp).is_ok());
}

fn spread_pod(name: &str) -> Pod {
    let mut p = label_pod(pod(name, "", ""), "app", "web");
    spec(&mut p).topology_spread_constraints = Some(vec![from_json(json!({
        "maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"app": "web"}}
    }))]);
    p
}

#[test]
fn topology_spread_max_skew_across_three_zones() {
    let nodes = vec![
        label_node(node("a1", "8", "8Gi"), "zone", "z1"),
        label_node(node("a2", "8", "8Gi"), "zone", "z1"),
        label_node(node("b1", "8", "8Gi"), "zone", "z2"),
        label_node(node("c1", "8", "8Gi"), "zone", "z3"),
    ];
    let mut snap = Snapshot::new(nodes, vec![]);
    let s = all_nodes();
    let zone_of = |n: &str| n.chars().next().unwrap_or('?');
    let mut per_zone: BTreeMap<char, i32> = BTreeMap::new();
    for i in 0..9 {
        let p = spread_pod(&format!("w{i}"));
        let Ok(n) = s.schedule(&snap, &p) else {
            panic!("w{i} unschedulable")
        };
        *per_zone.entry(zone_of(&n)).or_insert(0) += 1;
        let max = per_zone.values().max().copied().unwrap_or(0);
        let min = if per_zone.len() < 3 {
            0
        } else {
            per_zone.values().min().copied().unwrap_or(0)
        };
        assert!(max - min <= 1, "skew too big after w{i}: {per_zone:?}");
        snap.add_pod(&p, &n);
    }
    assert_eq!(
        per_zone.values().copied().collect::<Vec<_>>(),
        vec![3, 3, 3]
    );
    // Force an imbalance: z1 full of 2 extra pods -> z1 nodes rejected.
    snap.add_pod(&label_pod(pod("x1", "", ""), "app", "web"), "a1");
    let mut p = spread_pod("y");
    for _ in 0..10 {
        let n = s.schedule(&snap, &p).ok().unwrap_or_default();
        assert!(n == "b1" || n == "c1", "{n}");
    }
    // Node missing the topology label.
    let mut snap2 = Snapshot::new(vec![node("nolabel", "4", "4Gi")], vec![]);
    snap2.add_pod(&pod("z", "", ""), "nolabel");
    spec(&mut p).node_name = None;
    let m = msg(&s, &snap2, &p);
    assert!(
        m.starts_with("0/1 nodes are available: 1 node(s) didn't match pod topology spread constraints (missing required label)."),
        "{m}"
    );
}

#[test]
fn scoring_prefers_least_allocated() {
    let mut snap = Snapshot::new(three_nodes(), vec![]);
    snap.add_pod(&pod("a", "1500m", "3Gi"), "n1");
    snap.add_pod(&pod("b", "500m", "1Gi"), "n2");
    let s = all_nodes();
    for _ in 0..10 {
        assert_eq!(
            s.schedule(&snap, &pod("p", "100m", "100Mi"))
                .ok()
                .as_deref(),
            Some("n3")
        );
    }
    // Spread pods evenly over time.
    let mut snap = Snapshot::new(three_nodes(), vec![]);
    for i in 0..9 {
        let p = pod(&format!("p{i}"), "200m", "256Mi");
        let Ok(n) = s.schedule(&snap, &p) else {
            panic!()
        };
        snap.add_pod(&p, &n);
    }
    for n in ["n1", "n2", "n3"] {
        assert_eq!(snap.requested(n).map(|r| r.milli_cpu), Some(600), "{n}");
    }
}

#[test]
fn image_locality_breaks_ties() {
    let mut n2 = node("n2", "4", "4Gi");
    n2.status.get_or_insert_with(Default::default).images = Some(vec![from_json(
        json!({"names": ["registry/app:v1"], "sizeBytes": 800 * 1024 * 1024}),
    )]);
    let snap = Snapshot::new(
        vec![node("n1", "4", "4Gi"), n2, node("n3", "4", "4Gi")],
        vec![],
    );
    let mut p = pod("p", "100m", "");
    spec(&mut p).containers[0].image = Some("registry/app:v1".into());
    for _ in 0..10 {
        assert_eq!(all_nodes().schedule(&snap, &p).ok().as_deref(), Some("n2"));
    }
}

#[test]
fn percentage_of_nodes_to_score() {
    let s = Scheduler::default();
    assert_eq!(s.num_feasible_nodes_to_find(50), 50);
    assert_eq!(s.num_feasible_nodes_to_find(150), 100);
    assert_eq!(s.num_feasible_nodes_to_find(1000), 420);
    assert_eq!(s.num_feasible_nodes_to_find(5000), 500);
    assert_eq!(s.num_feasible_nodes_to_find(10000), 500);
    // rotation: consecutive pods on 200 equal nodes start at different offsets
    let nodes: Vec<_> = (0..200)
        .map(|i| node(&format!("n{i}"), "4", "4Gi"))
        .collect();
    let snap = Snapshot::new(nodes, vec![]);
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..10 {
        if let Ok(n) = s.schedule(&snap, &pod(&format!("p{i}"), "100m", "")) {
            seen.insert(n);
        }
    }
    assert!(seen.len() > 1);
}

#[test]
fn preemption_picks_lower_priority_victims() {
    let mut snap = Snapshot::new(vec![node("n1", "2", "4Gi"), node("n2", "2", "4Gi")], vec![]);
    snap.add_pod(&with_priority(pod("low1", "1500m", ""), 10), "n1");
    snap.add_pod(&with_priority(pod("high1", "1500m", ""), 1000), "n2");
    let s = all_nodes();
    let p = with_priority(pod("p", "1", ""), 100);
    let Some((node, victims)) = s.find_preemption(&snap, &p) else {
        panic!("expected preemption")
    };
    assert_eq!(node, "n1");
    assert_eq!(victims.len(), 1);
    assert_eq!(victims[0].metadata.name.as_deref(), Some("low1"));
    let err = s.schedule(&snap, &p).err();
    assert_eq!(
        err.as_ref().map(|e| e.to_string()).as_deref(),
        Some("0/2 nodes are available: 2 Insufficient cpu.")
    );
    // Equal priority cannot preempt.
    let p = with_priority(pod("q", "1", ""), 10);
    assert!(s.find_preemption(&snap, &p).is_none());
    assert_eq!(
        msg(&s, &snap, &p),
        "0/2 nodes are available: 2 Insufficient cpu. preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod."
    );
    // preemptionPolicy Never
    let mut p = with_priority(pod("r", "1", ""), 100);
    spec(&mut p).preemption_policy = Some("Never".into());
    assert_eq!(msg(&s, &snap, &p), "0/2 nodes are available: 2 Insufficient cpu. preemption: not eligible due to preemptionPolicy=Never.");
}

#[test]
fn preemption_reprieves_and_prefers_fewer_lower_victims() {
    let mut snap = Snapshot::new(vec![node("n1", "4", "4Gi"), node("n2", "4", "4Gi")], vec![]);
    // n1: two small low-priority pods; need only one evicted.
    snap.add_pod(&with_priority(pod("a", "1500m", ""), 5), "n1");
    snap.add_pod(&with_priority(pod("b", "1500m", ""), 1), "n1");
    // n2: one medium-priority pod.
    snap.add_pod(&with_priority(pod("c", "3", ""), 50), "n2");
    let s = all_nodes();
    let p = with_priority(pod("p", "2", ""), 100);
    let Some((node, victims)) = s.find_preemption(&snap, &p) else {
        panic!()
    };
    assert_eq!(node, "n1");
    let names: Vec<_> = victims
        .iter()
        .filter_map(|v| v.metadata.name.clone())
        .collect();
    assert_eq!(names, vec!["b"]);
}

#[test]
fn preemption_respects_pdbs() {
    let mut snap = Snapshot::new(vec![node("n1", "2", "4Gi"), node("n2", "2", "4Gi")], vec![]);
    snap.add_pod(
        &label_pod(with_priority(pod("guarded", "1500m", ""), 1), "app", "db"),
        "n1",
    );
    snap.add_pod(&with_priority(pod("free", "1500m", ""), 5), "n2");
    snap.set_pdbs(vec![from_json(json!({
        "metadata": {"name": "db", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"app": "db"}}, "minAvailable": 1},
        "status": {"disruptionsAllowed": 0, "currentHealthy": 1, "desiredHealthy": 1, "expectedPods": 1}
    }))]);
    let p = with_priority(pod("p", "1", ""), 100);
    let Some((node, victims)) = all_nodes().find_preemption(&snap, &p) else {
        panic!()
    };
    assert_eq!(node, "n2");
    assert_eq!(victims[0].metadata.name.as_deref(), Some("free"));
}

#[test]
fn volumes_node_affinity_and_missing_claims() {
    let nodes = vec![node("a", "4", "4Gi"), node("b", "4", "4Gi")];
    let mut snap = Snapshot::new(nodes, vec![]);
    snap.set_volumes(
        vec![from_json(json!({"metadata": {"name": "pv1"}, "spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["b"]}]}]}}}}))],
        vec![
            from_json(json!({"metadata": {"name": "data", "namespace": "default"}, "spec": {"volumeName": "pv1"}})),
            from_json(json!({"metadata": {"name": "lazy", "namespace": "default"}, "spec": {"storageClassName": "local-path"}})),
            from_json(json!({"metadata": {"name": "now", "namespace": "default"}, "spec": {"storageClassName": "fast"}})),
        ],
        vec![
            from_json(json!({"metadata": {"name": "local-path"}, "provisioner": "rancher.io/local-path", "volumeBindingMode": "WaitForFirstConsumer"})),
            from_json(json!({"metadata": {"name": "fast"}, "provisioner": "x", "volumeBindingMode": "Immediate"})),
        ],
    );
    let with_claim = |claim: &str| {
        let mut p = pod("p", "", "");
        spec(&mut p).volumes = Some(vec![from_json(
            json!({"name": "v", "persistentVolumeClaim": {"claimName": claim}}),
        )]);
        p
    };
    let s = all_nodes();
    for _ in 0..5 {
        assert_eq!(
            s.schedule(&snap, &with_claim("data")).ok().as_deref(),
            Some("b")
        );
    }
    assert!(s.schedule(&snap, &with_claim("lazy")).is_ok());
    assert_eq!(
        msg(&s, &snap, &with_claim("missing")),
        "0/2 nodes are available: persistentvolumeclaim \"missing\" not found. preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod."
    );
    assert_eq!(
        msg(&s, &snap, &with_claim("now")),
        "0/2 nodes are available: pod has unbound immediate PersistentVolumeClaims. preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling."
    );
    // Only node a feasible for other reasons -> volume conflict message.
    let mut p = with_claim("data");
    spec(&mut p).node_name = Some("a".into());
    let m = msg(&s, &snap, &p);
    assert!(
        m.starts_with("0/2 nodes are available: 1 node(s) didn't match the requested node name, 1 node(s) had volume node affinity conflict."),
        "{m}"
    );
}

#[test]
fn delayed_claims_get_a_node_and_keep_it() {
    let nodes = vec![node("a", "4", "4Gi"), node("b", "4", "4Gi")];
    let mut snap = Snapshot::new(nodes, vec![]);
    snap.set_volumes(
        vec![],
        vec![
            from_json(json!({"metadata": {"name": "lazy", "namespace": "default"}, "spec": {"storageClassName": "local-path"}})),
            from_json(json!({"metadata": {"name": "placed", "namespace": "default",
                "annotations": {"volume.kubernetes.io/selected-node": "b"}}, "spec": {"storageClassName": "local-path"}})),
            from_json(json!({"metadata": {"name": "bound", "namespace": "default"}, "spec": {"storageClassName": "local-path", "volumeName": "pv9"}})),
        ],
        vec![from_json(
            json!({"metadata": {"name": "local-path"}, "provisioner": "rancher.io/local-path", "volumeBindingMode": "WaitForFirstConsumer"}),
        )],
    );
    let with_claims = |claims: &[&str]| {
        let mut p = pod("p", "", "");
        spec(&mut p).volumes = Some(
            claims
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    from_json(
                        json!({"name": format!("v{i}"), "persistentVolumeClaim": {"claimName": c}}),
                    )
                })
                .collect(),
        );
        p
    };
    // Unbound delayed claims are the ones binding selects a node for.
    assert_eq!(
        snap.delayed_claims(&with_claims(&["lazy", "bound", "placed"])),
        vec![
            ("default".to_string(), "lazy".to_string()),
            ("default".to_string(), "placed".to_string())
        ]
    );
    // A claim already being provisioned on b keeps its pods on b.
    let s = all_nodes();
    for _ in 0..5 {
        assert_eq!(
            s.schedule(&snap, &with_claims(&["placed"])).ok().as_deref(),
            Some("b")
        );
    }
    let mut p = with_claims(&["placed"]);
    spec(&mut p).node_name = Some("a".into());
    let m = msg(&s, &snap, &p);
    assert!(
        m.starts_with("0/2 nodes are available: 1 node(s) didn't find available persistent volumes to bind, 1 node(s) didn't match the requested node name."),
        "{m}"
    );
}

#[test]
fn topology_spread_min_domains_and_schedule_anyway() {
    let nodes = vec![
        label_node(node("a", "8", "8Gi"), "zone", "z1"),
        label_node(node("b", "8", "8Gi"), "zone", "z2"),
    ];
    let mut snap = Snapshot::new(nodes, vec![]);
    snap.add_pod(&label_pod(pod("x", "", ""), "app", "web"), "a");
    snap.add_pod(&label_pod(pod("y", "", ""), "app", "web"), "b");
    let s = all_nodes();
    assert!(s.schedule(&snap, &spread_pod("ok")).is_ok());
    let mut p = spread_pod("md");
    if let Some(c) = spec(&mut p)
        .topology_spread_constraints
        .as_mut()
        .and_then(|v| v.first_mut())
    {
        c.min_domains = Some(3);
    }
    let m = msg(&s, &snap, &p);
    assert_eq!(
        m,
        "0/2 nodes are available: 2 node(s) didn't match pod topology spread constraints. preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod."
    );
    // ScheduleAnyway only scores: the emptier zone wins.
    snap.add_pod(&label_pod(pod("z", "", ""), "app", "web"), "a");
    let mut soft = spread_pod("soft");
    if let Some(c) = spec(&mut soft)
        .topology_spread_constraints
        .as_mut()
        .and_then(|v| v.first_mut())
    {
        c.when_unsatisfiable = "ScheduleAnyway".into();
        c.max_skew = 1;
    }
    for _ in 0..10 {
        assert_eq!(s.schedule(&snap, &soft).ok().as_deref(), Some("b"));
    }
}

#[test]
fn preferred_pod_affinity_scores() {
    let nodes = vec![
        label_node(node("a", "8", "8Gi"), "zone", "z1"),
        label_node(node("b", "8", "8Gi"), "zone", "z2"),
    ];
    let mut snap = Snapshot::new(nodes, vec![]);
    snap.add_pod(&label_pod(pod("db", "", ""), "app", "db"), "b");
    let mut p = pod("p", "", "");
    spec(&mut p).affinity = Some(from_json(json!({"podAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm":
            {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}}]
    }})));
    for _ in 0..10 {
        assert_eq!(all_nodes().schedule(&snap, &p).ok().as_deref(), Some("b"));
    }
    let mut q = pod("q", "", "");
    spec(&mut q).affinity = Some(from_json(json!({"podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm":
            {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}}]
    }})));
    for _ in 0..10 {
        assert_eq!(all_nodes().schedule(&snap, &q).ok().as_deref(), Some("a"));
    }
}
