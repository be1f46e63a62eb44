//! Builders for tests.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, Node, NodeSpec, NodeStatus, Pod, PodSpec, ResourceRequirements, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub fn q(s: &str) -> Quantity {
    Quantity(s.to_string())
}

pub fn node(name: &str, cpu: &str, mem: &str) -> Node {
    let alloc = BTreeMap::from([
        ("cpu".to_string(), q(cpu)),
        ("memory".to_string(), q(mem)),
        ("pods".to_string(), q("110")),
    ]);
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/hostname".to_string(),
                name.to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(NodeSpec::default()),
        status: Some(NodeStatus {
            allocatable: Some(alloc.clone()),
            capacity: Some(alloc),
            ..Default::default()
        }),
    }
}

pub fn label_node(mut n: Node, k: &str, v: &str) -> Node {
    n.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(k.into(), v.into());
    n
}

pub fn taint_node(mut n: Node, key: &str, value: &str, effect: &str) -> Node {
    n.spec
        .get_or_insert_with(Default::default)
        .taints
        .get_or_insert_with(Vec::new)
        .push(Taint {
            key: key.into(),
            value: (!value.is_empty()).then(|| value.to_string()),
            effect: effect.into(),
            time_added: None,
        });
    n
}

pub fn pod(name: &str, cpu: &str, mem: &str) -> Pod {
    let mut req = BTreeMap::new();
    if !cpu.is_empty() {
        req.insert("cpu".to_string(), q(cpu));
    }
    if !mem.is_empty() {
        req.insert("memory".to_string(), q(mem));
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "c".into(),
                image: Some("busybox".into()),
                resources: Some(ResourceRequirements {
                    requests: Some(req),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

pub fn label_pod(mut p: Pod, k: &str, v: &str) -> Pod {
    p.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(k.into(), v.into());
    p
}

pub fn spec(p: &mut Pod) -> &mut PodSpec {
    p.spec.get_or_insert_with(Default::default)
}

pub fn with_priority(mut p: Pod, prio: i32) -> Pod {
    spec(&mut p).priority = Some(prio);
    p
}

/// Parses JSON into a k8s type (for terse test fixtures).
pub fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    match serde_json::from_value(v) {
        Ok(t) => t,
        Err(e) => panic!("bad fixture: {e}"),
    }
}
