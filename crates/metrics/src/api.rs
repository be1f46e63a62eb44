//! `metrics.k8s.io/v1beta1` served from the [`Storage`] as metrics-server serves it:
//! `nodes` (NodeMetrics, cluster-scoped) and `pods` (PodMetrics, namespaced), verbs
//! get and list, label selectors matched against the Node's / Pod's labels (copied into
//! the metrics' metadata), field selectors on `metadata.name` and `metadata.namespace`.
//! Objects without figures are left out of lists and are 404 on get.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::reflector::Store;
use rk3s_api::{ApiError, ResourceInfo, Scope};
use rk3s_apiserver::local_group::{LocalApiGroup, LocalRequest};
use rk3s_core::{FieldSelector, LabelSelector};
use serde_json::{json, Value};

use crate::format::{cpu_quantity, go_duration, memory_quantity, rfc3339};
use crate::storage::{PodUsage, Storage, Usage};

/// The group served.
pub const GROUP: &str = "metrics.k8s.io";
/// The version served.
pub const VERSION: &str = "v1beta1";

/// The `metrics.k8s.io` group: figures from the storage, labels from the Node and Pod
/// stores.
pub struct MetricsApi {
    storage: Arc<Storage>,
    nodes: Store<Node>,
    pods: Store<Pod>,
}

impl MetricsApi {
    /// A group answering from `storage`, with objects (names, labels) from the stores.
    pub fn new(storage: Arc<Storage>, nodes: Store<Node>, pods: Store<Pod>) -> MetricsApi {
        MetricsApi {
            storage,
            nodes,
            pods,
        }
    }
}

/// The discovery facts of the two resources (as metrics-server registers them).
pub fn resources() -> Vec<ResourceInfo> {
    let r = |kind: &str, plural: &str, scope| ResourceInfo {
        group: GROUP.into(),
        version: VERSION.into(),
        kind: kind.into(),
        plural: plural.into(),
        singular: String::new(),
        short_names: Vec::new(),
        categories: Vec::new(),
        scope,
        verbs: vec!["get".into(), "list".into()],
        subresources: Vec::new(),
        definition: format!("io.k8s.metrics.pkg.apis.metrics.{VERSION}.{kind}"),
        storage_group: GROUP.into(),
        preferred: true,
    };
    vec![
        r("NodeMetrics", "nodes", Scope::Cluster),
        r("PodMetrics", "pods", Scope::Namespaced),
    ]
}

fn usage_json(u: &Usage) -> Value {
    json!({"cpu": cpu_quantity(u.cpu_nano_cores), "memory": memory_quantity(u.memory_bytes)})
}

fn labels_json(labels: &Option<BTreeMap<String, String>>) -> Option<Value> {
    labels.as_ref().filter(|l| !l.is_empty()).map(|l| json!(l))
}

/// A NodeMetrics object (without `kind`/`apiVersion`, as list items are).
pub fn node_metrics(node: &Node, u: &Usage, now: jiff::Timestamp) -> Value {
    let mut meta = json!({
        "name": node.metadata.name.clone().unwrap_or_default(),
        "creationTimestamp": rfc3339(now),
    });
    if let Some(l) = labels_json(&node.metadata.labels) {
        meta["labels"] = l;
    }
    json!({
        "metadata": meta,
        "timestamp": rfc3339(u.timestamp),
        "window": go_duration(u64::try_from(u.window.as_nanos()).unwrap_or(u64::MAX)),
        "usage": usage_json(u),
    })
}

/// A PodMetrics object (without `kind`/`apiVersion`).
pub fn pod_metrics(pod: &Pod, u: &PodUsage, now: jiff::Timestamp) -> Value {
    let mut meta = json!({
        "name": pod.metadata.name.clone().unwrap_or_default(),
        "namespace": pod.metadata.namespace.clone().unwrap_or_default(),
        "creationTimestamp": rfc3339(now),
    });
    if let Some(l) = labels_json(&pod.metadata.labels) {
        meta["labels"] = l;
    }
    // Containers in the Pod's order (as the kubelet lists them), then any others.
    let mut order: Vec<String> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    for name in u.containers.keys() {
        if !order.contains(name) {
            order.push(name.clone());
        }
    }
    let containers: Vec<Value> = order
        .iter()
        .filter_map(|n| {
            u.containers
                .get(n)
                .map(|c| json!({"name": n, "usage": usage_json(c)}))
        })
        .collect();
    json!({
        "metadata": meta,
        "timestamp": rfc3339(u.timestamp),
        "window": go_duration(u64::try_from(u.window.as_nanos()).unwrap_or(u64::MAX)),
        "containers": containers,
    })
}

fn typed(mut v: Value, kind: &str) -> Value {
    if let Some(m) = v.as_object_mut() {
        let mut out = serde_json::Map::new();
        out.insert("kind".into(), json!(kind));
        out.insert("apiVersion".into(), json!(format!("{GROUP}/{VERSION}")));
        out.append(m);
        return Value::Object(out);
    }
    v
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({
        "kind": kind,
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": {},
        "items": items,
    })
}

/// The usage of a NodeMetrics, or the sum over a PodMetrics' containers.
fn total_usage(resource: &str, item: &Value) -> BTreeMap<String, rk3s_core::Quantity> {
    let mut out: BTreeMap<String, rk3s_core::Quantity> = BTreeMap::new();
    let mut add = |usage: &Value| {
        for (k, v) in usage.as_object().into_iter().flatten() {
            if let Some(q) = rk3s_core::Quantity::from_json(v) {
                let sum = match out.get(k) {
                    Some(have) => have.add(&q),
                    None => q,
                };
                out.insert(k.clone(), sum);
            }
        }
    };
    if resource == "pods" {
        for c in item["containers"].as_array().into_iter().flatten() {
            add(&c["usage"]);
        }
    } else {
        add(&item["usage"]);
    }
    out
}

/// metrics-server's Table: `Name`, one column per usage resource (sorted, quantities;
/// pods sum their containers), `Window`.
pub fn table(resource: &str, items: &[Value]) -> (Vec<Value>, Vec<Vec<Value>>) {
    let names: Vec<String> = items
        .first()
        .map(|i| total_usage(resource, i).into_keys().collect())
        .unwrap_or_default();
    let column = |name: &str, format: &str, description: &str| json!({"name": name, "type": "string", "format": format, "description": description, "priority": 0});
    let mut columns = vec![column("Name", "name", "Name of the resource")];
    columns.extend(names.iter().map(|n| column(n, "quantity", "")));
    columns.push(column("Window", "duration", ""));
    let rows = items
        .iter()
        .map(|item| {
            let usage = total_usage(resource, item);
            let mut cells = vec![item
                .pointer("/metadata/name")
                .cloned()
                .unwrap_or_else(|| json!(""))];
            cells.extend(names.iter().map(|n| {
                json!(usage
                    .get(n)
                    .map(|q| q.to_string())
                    .unwrap_or_else(|| "0".to_string()))
            }));
            cells.push(item.get("window").cloned().unwrap_or_else(|| json!("")));
            cells
        })
        .collect();
    (columns, rows)
}

/// The selectors of a request, parsed (400 with upstream's message when malformed).
struct Selectors {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Selectors {
    fn parse(req: &LocalRequest) -> Result<Selectors, ApiError> {
        let labels = match req.label_selector.as_deref() {
            Some(s) => LabelSelector::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))?,
            None => LabelSelector::everything(),
        };
        let fields = match req.field_selector.as_deref() {
            Some(s) => FieldSelector::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))?,
            None => FieldSelector::default(),
        };
        for r in &fields.requirements {
            if !matches!(r.field.as_str(), "metadata.name" | "metadata.namespace") {
                return Err(ApiError::bad_request(format!(
                    "\"{}\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\"",
                    r.field
                )));
            }
        }
        Ok(Selectors { labels, fields })
    }

    fn matches(&self, meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
        let empty = BTreeMap::new();
        self.labels.matches(meta.labels.as_ref().unwrap_or(&empty))
            && self.fields.matches(|f| match f {
                "metadata.name" => Some(meta.name.clone().unwrap_or_default()),
                "metadata.namespace" => Some(meta.namespace.clone().unwrap_or_default()),
                _ => None,
            })
    }
}

impl MetricsApi {
    fn nodes(&self, req: &LocalRequest, now: jiff::Timestamp) -> Result<Value, ApiError> {
        if let Some(name) = &req.name {
            let not_found = || ApiError::not_found_named("nodemetrics", GROUP, name);
            // A Node that does not exist is the lister's 404 (`node "x" not found`).
            let node = self
                .nodes
                .state()
                .into_iter()
                .find(|n| n.metadata.name.as_deref() == Some(name.as_str()))
                .ok_or_else(|| ApiError::not_found_named("node", "", name))?;
            let u = self.storage.node(name).ok_or_else(not_found)?;
            return Ok(typed(node_metrics(&node, &u, now), "NodeMetrics"));
        }
        let sel = Selectors::parse(req)?;
        let mut nodes: Vec<Arc<Node>> = self
            .nodes
            .state()
            .into_iter()
            .filter(|n| sel.matches(&n.metadata))
            .collect();
        nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let items = nodes
            .iter()
            .filter_map(|n| {
                let u = self.storage.node(n.metadata.name.as_deref()?)?;
                Some(node_metrics(n, &u, now))
            })
            .collect();
        Ok(list("NodeMetricsList", items))
    }

    fn pods(&self, req: &LocalRequest, now: jiff::Timestamp) -> Result<Value, ApiError> {
        let usage = self.storage.pods();
        if let Some(name) = &req.name {
            let ns = req.namespace.clone().unwrap_or_default();
            // metrics-server names the object `<namespace>/<name>` in its 404.
            let not_found =
                || ApiError::not_found_named("podmetrics", GROUP, &format!("{ns}/{name}"));
            let pod = self
                .pods
                .state()
                .into_iter()
                .find(|p| {
                    p.metadata.name.as_deref() == Some(name.as_str())
                        && p.metadata.namespace.as_deref() == Some(ns.as_str())
                })
                .ok_or_else(|| ApiError::not_found_named("pod", "", name))?;
            let u = usage
                .get(&(ns.clone(), name.clone()))
                .ok_or_else(not_found)?;
            return Ok(typed(pod_metrics(&pod, u, now), "PodMetrics"));
        }
        let sel = Selectors::parse(req)?;
        let mut pods: Vec<Arc<Pod>> = self
            .pods
            .state()
            .into_iter()
            .filter(|p| {
                req.namespace
                    .as_ref()
                    .is_none_or(|ns| p.metadata.namespace.as_ref() == Some(ns))
                    && sel.matches(&p.metadata)
            })
            .collect();
        pods.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        let items = pods
            .iter()
            .filter_map(|p| {
                let key = (p.metadata.namespace.clone()?, p.metadata.name.clone()?);
                Some(pod_metrics(p, usage.get(&key)?, now))
            })
            .collect();
        Ok(list("PodMetricsList", items))
    }
}

#[async_trait::async_trait]
impl LocalApiGroup for MetricsApi {
    fn group(&self) -> &str {
        GROUP
    }

    fn version(&self) -> &str {
        VERSION
    }

    fn resources(&self) -> Vec<ResourceInfo> {
        resources()
    }

    fn table(&self, resource: &str, items: &[Value]) -> Option<(Vec<Value>, Vec<Vec<Value>>)> {
        Some(table(resource, items))
    }

    async fn get(&self, req: LocalRequest) -> Result<Value, ApiError> {
        let now = jiff::Timestamp::now();
        match req.resource.as_str() {
            "nodes" => self.nodes(&req, now),
            "pods" => self.pods(&req, now),
            _ => Err(ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_metrics_servers() {
        let nodes = vec![
            json!({"metadata": {"name": "n1"}, "window": "15s", "usage": {"memory": "1Gi", "cpu": "250m"}}),
        ];
        let (cols, rows) = table("nodes", &nodes);
        let names: Vec<&str> = cols.iter().filter_map(|c| c["name"].as_str()).collect();
        assert_eq!(names, ["Name", "cpu", "memory", "Window"]);
        assert_eq!(cols[1]["format"], "quantity");
        assert_eq!(
            rows,
            vec![vec![json!("n1"), json!("250m"), json!("1Gi"), json!("15s")]]
        );
        let pods = vec![
            json!({"metadata": {"name": "p"}, "window": "10s", "containers": [
                {"name": "a", "usage": {"cpu": "250m", "memory": "1Mi"}},
                {"name": "b", "usage": {"cpu": "10m", "memory": "512Ki"}},
            ]}),
        ];
        let (_, rows) = table("pods", &pods);
        assert_eq!(
            rows,
            vec![vec![
                json!("p"),
                json!("260m"),
                json!("1536Ki"),
                json!("10s")
            ]]
        );
        let (cols, rows) = table("pods", &[]);
        assert_eq!(cols.len(), 2);
        assert!(rows.is_empty());
    }
}
