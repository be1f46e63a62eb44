//! Services: cluster IP and node-port allocation through [`crate::alloc`] (after field
//! tracking, as upstream's Service storage: allocated values have no owner), values
//! an update leaves out kept (upstream's `patchAllocatedValues`), fields a type change
//! leaves without use wiped (upstream's `dropTypeDependentFields`), released when the
//! Service is deleted or an update drops them.

use async_trait::async_trait;
use rk3s_api::{ApiError, ResourceInfo};
use serde_json::{json, Value};

use super::Strategy;
use crate::alloc::{Held, ServiceRef};
use crate::object;
use crate::state::Inner;

/// The strategy of `services`.
pub struct ServiceStrategy;

#[async_trait]
impl Strategy for ServiceStrategy {
    /// The IP family fields the client did not set are the allocator's (upstream sets
    /// them when it allocates, after field tracking), even where defaulting fills them.
    fn allocator_fields(&self, obj: &Value) -> Vec<&'static str> {
        ["ipFamilies", "ipFamilyPolicy"]
            .into_iter()
            .filter(|k| {
                obj.pointer(&format!("/spec/{k}"))
                    .is_none_or(|v| v.is_null())
            })
            .collect()
    }

    fn patch_allocated_values(&self, new: &mut Value, old: &Value) {
        patch_allocated_values(new, old);
    }

    fn after_defaults_on_update(
        &self,
        sub: Option<&str>,
        _request: &Value,
        old: &Value,
        new: &mut Value,
    ) {
        if sub.is_none() {
            drop_type_dependent_fields(new, old);
        }
    }

    async fn allocate(
        &self,
        inner: &Inner,
        res: &ResourceInfo,
        name: &str,
        obj: &mut Value,
        old: Option<&Value>,
        dry_run: bool,
    ) -> Result<Held, ApiError> {
        let owner = ServiceRef {
            namespace: object::namespace(obj).unwrap_or("").to_string(),
            name: name.to_string(),
        };
        let mut fresh = Held::default();
        let result = allocate_into(inner, obj, old, res, &owner, dry_run, &mut fresh).await;
        if result.is_err() {
            inner.alloc.release(&fresh, &owner).await;
        }
        result.map(|()| fresh)
    }

    fn held(&self, inner: &Inner, obj: &Value) -> Held {
        inner.alloc.held_by(obj)
    }

    async fn release(&self, inner: &Inner, ns: Option<&str>, name: &str, held: &Held) {
        if held.is_empty() {
            return;
        }
        let owner = ServiceRef {
            namespace: ns.unwrap_or("").to_string(),
            name: name.to_string(),
        };
        inner.alloc.release(held, &owner).await;
    }
}

/// Gives a Service its cluster IP(s) and node ports (keeping those of `old`), recording
/// in `fresh` what it newly took.
async fn allocate_into(
    inner: &Inner,
    obj: &mut Value,
    old: Option<&Value>,
    res: &ResourceInfo,
    owner: &ServiceRef,
    dry_run: bool,
    fresh: &mut Held,
) -> Result<(), ApiError> {
    let name = owner.name.as_str();
    let invalid = |field: &str, msg: String| {
        ApiError::invalid(
            res,
            name,
            vec![rk3s_api::Cause {
                reason: "FieldValueInvalid".into(),
                message: msg,
                field: field.into(),
            }],
        )
    };
    let typ = obj
        .pointer("/spec/type")
        .and_then(|t| t.as_str())
        .unwrap_or("ClusterIP")
        .to_string();
    if typ != "ExternalName" {
        let old_ip = old
            .and_then(|o| o.pointer("/spec/clusterIP"))
            .and_then(|v| v.as_str())
            .map(String::from);
        let want = obj
            .pointer("/spec/clusterIP")
            .and_then(|v| v.as_str())
            .map(String::from);
        let ip = match (want.as_deref(), old_ip) {
            (Some("None"), _) => "None".to_string(),
            (Some(w), Some(o)) if !w.is_empty() && w == o => o,
            (None | Some(""), Some(o)) => o,
            (Some(w), _) if !w.is_empty() => {
                let parsed = w.parse().map_err(|_| {
                    invalid(
                        "spec.clusterIPs[0]",
                        format!("Invalid value: \"{w}\": must be a valid IP address"),
                    )
                })?;
                let ip = inner
                    .alloc
                    .allocate_ip(Some(parsed), owner, dry_run)
                    .await
                    .map_err(|e| match e {
                        crate::alloc::AllocError::Store(_) => ApiError::internal(format!(
                            "failed to allocate a serviceIP: {e}"
                        )),
                        e => invalid("spec.clusterIPs", format!("Invalid value: []string{{\"{w}\"}}: failed to allocate IP {w}: {e}")),
                    })?;
                if !dry_run {
                    fresh.ips.push(ip);
                }
                ip.to_string()
            }
            _ => {
                let ip = inner
                    .alloc
                    .allocate_ip(None, owner, dry_run)
                    .await
                    .map_err(|e| {
                        ApiError::internal(format!("failed to allocate a serviceIP: {e}"))
                    })?;
                if !dry_run {
                    fresh.ips.push(ip);
                }
                ip.to_string()
            }
        };
        if let Some(spec) = obj.get_mut("spec").and_then(|s| s.as_object_mut()) {
            spec.insert("clusterIP".into(), json!(ip));
            spec.insert("clusterIPs".into(), json!([ip]));
            if ip != "None" || !spec.contains_key("ipFamilies") {
                spec.insert("ipFamilies".into(), json!(["IPv4"]));
            }
            spec.entry("ipFamilyPolicy").or_insert(json!("SingleStack"));
        }
    }
    if typ == "NodePort" || typ == "LoadBalancer" {
        let old_ports: Vec<Value> = old
            .and_then(|o| o.pointer("/spec/ports"))
            .and_then(|p| p.as_array())
            .cloned()
            .unwrap_or_default();
        // Ports the old Service holds are its own: asking for one of them again
        // (e.g. swapping two ports' values) needs no allocation.
        let mut old_held = old
            .map(|o| inner.alloc.held_by(o).ports)
            .unwrap_or_default();
        let mut used_here = std::collections::HashSet::new();
        // Per port entry: the node port kept, or the index of its allocation.
        let mut plan: Vec<Result<u16, usize>> = Vec::new();
        let mut wanted: Vec<Option<u16>> = Vec::new();
        let mut wanted_at: Vec<usize> = Vec::new();
        if let Some(ps) = obj.pointer("/spec/ports").and_then(|p| p.as_array()) {
            for (i, p) in ps.iter().enumerate() {
                let want = p.get("nodePort").and_then(|v| v.as_u64()).map(|v| v as u16);
                let port = p.get("port").cloned();
                let keep = old_ports
                    .iter()
                    .find(|op| op.get("port") == port.as_ref())
                    .and_then(|op| op.get("nodePort"))
                    .and_then(|v| v.as_u64())
                    .map(|v| v as u16);
                let kept = match (want, keep) {
                    (Some(w), Some(k)) if w == k => Some(k),
                    (None, Some(k)) => Some(k),
                    (Some(w), _) if !used_here.contains(&w) && old_held.contains(&w) => Some(w),
                    _ => None,
                };
                match kept {
                    Some(k) => {
                        old_held.retain(|x| *x != k);
                        used_here.insert(k);
                        plan.push(Ok(k));
                    }
                    None => {
                        plan.push(Err(wanted.len()));
                        wanted.push(want);
                        wanted_at.push(i);
                    }
                }
            }
        }
        let got = inner
            .alloc
            .allocate_ports(&wanted, dry_run)
            .await
            .map_err(|(j, e)| match e {
                crate::alloc::AllocError::Store(_) => {
                    ApiError::internal(format!("failed to allocate a nodePort: {e}"))
                }
                e => invalid(
                    &format!(
                        "spec.ports[{}].nodePort",
                        wanted_at.get(j).copied().unwrap_or(0)
                    ),
                    format!(
                        "Invalid value: {}: {e}",
                        wanted
                            .get(j)
                            .copied()
                            .flatten()
                            .map(|x| x.to_string())
                            .unwrap_or_default()
                    ),
                ),
            })?;
        if !dry_run {
            fresh.ports.extend(got.iter().copied());
        }
        if let Some(ps) = obj
            .pointer_mut("/spec/ports")
            .and_then(|p| p.as_array_mut())
        {
            for (p, step) in ps.iter_mut().zip(plan) {
                let np = match step {
                    Ok(k) => k,
                    Err(j) => got.get(j).copied().unwrap_or_default(),
                };
                p["nodePort"] = json!(np);
            }
        }
    }
    // A LoadBalancer that keeps traffic on the node gets a health-check node port
    // (upstream's `needsHealthCheck`): the one asked for, else the old one, else any.
    let local = obj
        .pointer("/spec/externalTrafficPolicy")
        .and_then(|v| v.as_str())
        == Some("Local");
    if typ == "LoadBalancer" && local {
        let port_of = |v: Option<&Value>| {
            v.and_then(|o| o.pointer("/spec/healthCheckNodePort"))
                .and_then(|v| v.as_u64())
                .and_then(|v| u16::try_from(v).ok())
        };
        let (want, had) = (port_of(Some(obj)), port_of(old));
        let hc = match (want, had) {
            (Some(w), Some(h)) if w == h => h,
            (None, Some(h)) => h,
            _ => {
                let got = inner.alloc.allocate_ports(&[want], dry_run).await.map_err(
                    |(_, e)| match e {
                        crate::alloc::AllocError::Store(_) => ApiError::internal(format!(
                            "failed to allocate a healthCheckNodePort: {e}"
                        )),
                        e => invalid(
                            "spec.healthCheckNodePort",
                            format!(
                                "Invalid value: {}: {e}",
                                want.map(|w| w.to_string()).unwrap_or_default()
                            ),
                        ),
                    },
                )?;
                let p = got.first().copied().unwrap_or_default();
                if !dry_run {
                    fresh.ports.push(p);
                }
                p
            }
        };
        if let Some(spec) = obj.get_mut("spec").and_then(|s| s.as_object_mut()) {
            spec.insert("healthCheckNodePort".into(), json!(hc));
        }
    }
    Ok(())
}

/// Wipes what a type change leaves without use, as upstream's `dropTypeDependentFields`
/// (PrepareForUpdate): a field goes only when the old type needed it, the new one does
/// not, and the update left it as it was (a value the client changed is validation's
/// to judge). Cluster IPs and node ports wiped here are released by the update.
fn drop_type_dependent_fields(new: &mut Value, old: &Value) {
    let typ = |v: &Value| {
        v.pointer("/spec/type")
            .and_then(|t| t.as_str())
            .unwrap_or("ClusterIP")
            .to_string()
    };
    let (new_type, old_type) = (typ(new), typ(old));
    let spec_of = |v: &Value, k: &str| -> Value {
        match v.pointer(&format!("/spec/{k}")) {
            None | Some(Value::Null) => Value::Null,
            Some(x) => x.clone(),
        }
    };
    let needs_cluster_ip = |t: &str| t != "ExternalName";
    let needs_node_port = |t: &str| t == "NodePort" || t == "LoadBalancer";
    let needs_hc = |v: &Value, t: &str| {
        t == "LoadBalancer" && spec_of(v, "externalTrafficPolicy") == json!("Local")
    };
    let externally_accessible = |v: &Value, t: &str| {
        needs_node_port(t)
            || (t == "ClusterIP"
                && spec_of(v, "externalIPs")
                    .as_array()
                    .is_some_and(|a| !a.is_empty()))
    };
    let same = |k: &str, new: &Value| spec_of(new, k) == spec_of(old, k);
    let mut wipe: Vec<&str> = Vec::new();
    if needs_cluster_ip(&old_type) && !needs_cluster_ip(&new_type) {
        if same("clusterIP", new) && same("clusterIPs", new) {
            wipe.extend(["clusterIP", "clusterIPs"]);
        }
        for k in ["ipFamilies", "ipFamilyPolicy", "internalTrafficPolicy"] {
            if same(k, new) {
                wipe.push(k);
            }
        }
    }
    // The set of node ports in use (upstream's sameNodePorts compares sets).
    let node_ports = |v: &Value| -> std::collections::BTreeSet<i64> {
        spec_of(v, "ports")
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.get("nodePort").and_then(Value::as_i64))
                    .filter(|n| *n != 0)
                    .collect()
            })
            .unwrap_or_default()
    };
    let wipe_node_ports = needs_node_port(&old_type)
        && !needs_node_port(&new_type)
        && node_ports(new) == node_ports(old);
    if needs_hc(old, &old_type) && !needs_hc(new, &new_type) && same("healthCheckNodePort", new) {
        wipe.push("healthCheckNodePort");
    }
    if old_type == "LoadBalancer" && new_type != "LoadBalancer" {
        for k in ["allocateLoadBalancerNodePorts", "loadBalancerClass"] {
            if same(k, new) {
                wipe.push(k);
            }
        }
    }
    if externally_accessible(old, &old_type)
        && !externally_accessible(new, &new_type)
        && same("externalTrafficPolicy", new)
    {
        wipe.push("externalTrafficPolicy");
    }
    if let Some(spec) = new.get_mut("spec").and_then(|s| s.as_object_mut()) {
        for k in wipe {
            spec.remove(k);
        }
        if wipe_node_ports {
            if let Some(ports) = spec.get_mut("ports").and_then(|p| p.as_array_mut()) {
                for p in ports.iter_mut().filter_map(|p| p.as_object_mut()) {
                    p.remove("nodePort");
                }
            }
        }
    }
    // The load balancer's status goes with the type.
    if new_type != "LoadBalancer" {
        if let Some(st) = new.get_mut("status").and_then(|s| s.as_object_mut()) {
            if st.contains_key("loadBalancer") {
                st.insert("loadBalancer".into(), json!({}));
            }
        }
    }
}

/// Keeps the values the server allocated to a Service that an update leaves out, as
/// upstream's `patchAllocatedValues` (before validation, so that e.g. `kubectl replace`
/// of a manifest without `clusterIP` is not an immutable-field change): `clusterIP`,
/// `clusterIPs`, `ipFamilies` and `ipFamilyPolicy` while both need a cluster IP, node
/// ports by port name while both need node ports (unless the new ports use that value
/// already), `healthCheckNodePort` while both need one.
fn patch_allocated_values(new: &mut Value, old: &Value) {
    let typ = |v: &Value| {
        v.pointer("/spec/type")
            .and_then(|t| t.as_str())
            .unwrap_or("ClusterIP")
            .to_string()
    };
    let (new_type, old_type) = (typ(new), typ(old));
    let needs_ip = |t: &str| t != "ExternalName";
    let needs_node_port = |t: &str| t == "NodePort" || t == "LoadBalancer";
    let needs_hc = |v: &Value, t: &str| {
        t == "LoadBalancer"
            && v.pointer("/spec/externalTrafficPolicy")
                .and_then(|p| p.as_str())
                == Some("Local")
    };
    let old_spec = old.get("spec").cloned().unwrap_or(Value::Null);
    let needs_hc_both = needs_hc(old, &old_type) && needs_hc(new, &new_type);
    let Some(spec) = new.get_mut("spec").and_then(|s| s.as_object_mut()) else {
        return;
    };
    let missing = |v: Option<&Value>| match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Number(n)) => n.as_i64() == Some(0),
        _ => false,
    };
    if needs_ip(&old_type) && needs_ip(&new_type) {
        for k in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            if missing(spec.get(k)) && !missing(old_spec.get(k)) {
                if let Some(v) = old_spec.get(k) {
                    spec.insert(k.to_string(), v.clone());
                }
            }
        }
    }
    if needs_node_port(&old_type) && needs_node_port(&new_type) {
        let node_ports = |ports: Option<&Value>| -> std::collections::HashSet<i64> {
            ports
                .and_then(|p| p.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|p| p.get("nodePort").and_then(|n| n.as_i64()))
                        .filter(|n| *n != 0)
                        .collect()
                })
                .unwrap_or_default()
        };
        let used: std::collections::HashSet<i64> = node_ports(old_spec.get("ports"))
            .intersection(&node_ports(spec.get("ports")))
            .copied()
            .collect();
        let by_name: std::collections::HashMap<String, i64> = old_spec
            .get("ports")
            .and_then(|p| p.as_array())
            .map(|a| {
                a.iter()
                    .map(|p| {
                        (
                            p.get("name")
                                .and_then(|n| n.as_str())
                                .unwrap_or("")
                                .to_string(),
                            p.get("nodePort").and_then(|n| n.as_i64()).unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        if let Some(ports) = spec.get_mut("ports").and_then(|p| p.as_array_mut()) {
            for p in ports.iter_mut() {
                if !missing(p.get("nodePort")) {
                    continue;
                }
                let name = p
                    .get("name")
                    .and_then(|n| n.as_str())
                    .unwrap_or("")
                    .to_string();
                if let Some(&np) = by_name
                    .get(&name)
                    .filter(|np| **np != 0 && !used.contains(np))
                {
                    if let Some(po) = p.as_object_mut() {
                        po.insert("nodePort".into(), json!(np));
                    }
                }
            }
        }
    }
    if needs_hc_both
        && missing(spec.get("healthCheckNodePort"))
        && !missing(old_spec.get("healthCheckNodePort"))
    {
        if let Some(v) = old_spec.get("healthCheckNodePort") {
            spec.insert("healthCheckNodePort".into(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A LoadBalancer with `externalTrafficPolicy: Local` gets a health-check node port
    /// (kept by updates, released when the policy goes back to Cluster).
    #[tokio::test]
    async fn local_load_balancers_get_a_health_check_node_port() {
        use crate::testutil::{call, server};
        let dir = tempfile::tempdir().expect("tempdir");
        let api = server(dir.path()).await;
        let path = "/api/v1/namespaces/default/services";
        let (code, svc) = call(&api, "POST", path, Some(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
            "ports": [{"port": 80}]}}))).await;
        assert_eq!(code, 201, "{svc}");
        let hc = svc["spec"]["healthCheckNodePort"]
            .as_u64()
            .expect("allocated");
        assert!((30000..=32767).contains(&hc), "{svc}");
        assert_ne!(Some(hc), svc["spec"]["ports"][0]["nodePort"].as_u64());
        let mut upd = svc.clone();
        upd["metadata"]["labels"] = json!({"a": "b"});
        let (code, out) = call(&api, "PUT", &format!("{path}/lb"), Some(upd)).await;
        assert_eq!(code, 200, "{out}");
        assert_eq!(out["spec"]["healthCheckNodePort"].as_u64(), Some(hc));
        // Taken: nobody else gets it.
        let (code, clash) = call(
            &api,
            "POST",
            path,
            Some(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "clash"}, "spec": {"type": "NodePort",
            "ports": [{"port": 80, "nodePort": hc}]}})),
        )
        .await;
        assert_eq!(code, 422, "{clash}");
        let (code, cluster) = call(
            &api,
            "POST",
            path,
            Some(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "cluster"}, "spec": {"type": "LoadBalancer",
            "ports": [{"port": 80}]}})),
        )
        .await;
        assert_eq!(code, 201, "{cluster}");
        assert!(
            cluster["spec"].get("healthCheckNodePort").is_none(),
            "{cluster}"
        );
    }

    /// Upstream e2e "should be able to change the type from ExternalName to
    /// ClusterIP/NodePort" and "from ClusterIP/NodePort to ExternalName", as the e2e jig
    /// does them (GET, change the type, PUT the whole object back).
    #[tokio::test]
    async fn type_changes_to_and_from_external_name_release_and_allocate() {
        use crate::testutil::{call, server};
        let dir = tempfile::tempdir().expect("tempdir");
        let api = server(dir.path()).await;
        let path = "/api/v1/namespaces/default/services";
        let (code, svc) = call(&api, "POST", path, Some(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "s"}, "spec": {"type": "NodePort", "externalTrafficPolicy": "Local",
            "ports": [{"name": "http", "port": 80}]}}))).await;
        assert_eq!(code, 201, "{svc}");
        let ip = svc["spec"]["clusterIP"].as_str().expect("ip").to_string();
        let node_port = svc["spec"]["ports"][0]["nodePort"]
            .as_u64()
            .expect("nodePort");
        let mut external = svc.clone();
        external["spec"]["type"] = json!("ExternalName");
        external["spec"]["externalName"] = json!("example.com");
        let (code, out) = call(&api, "PUT", &format!("{path}/s"), Some(external)).await;
        assert_eq!(code, 200, "{out}");
        let spec = out["spec"].as_object().expect("spec");
        for k in [
            "clusterIP",
            "clusterIPs",
            "ipFamilies",
            "ipFamilyPolicy",
            "externalTrafficPolicy",
            "healthCheckNodePort",
        ] {
            assert!(!spec.contains_key(k), "{k} kept: {out}");
        }
        assert!(out["spec"]["ports"][0].get("nodePort").is_none(), "{out}");
        // Released: the IPAddress is gone, the node port can be taken again.
        let (code, _) = call(
            &api,
            "GET",
            &format!("/apis/networking.k8s.io/v1/ipaddresses/{ip}"),
            None,
        )
        .await;
        assert_eq!(code, 404, "the cluster IP is released");
        let (code, other) = call(
            &api,
            "POST",
            path,
            Some(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "other"}, "spec": {"type": "NodePort",
            "ports": [{"port": 80, "nodePort": node_port}]}})),
        )
        .await;
        assert_eq!(code, 201, "the node port is released: {other}");
        // Back to ClusterIP: a cluster IP is allocated again.
        let mut back = out.clone();
        back["spec"]["type"] = json!("ClusterIP");
        back["spec"]["externalName"] = json!("");
        let (code, back) = call(&api, "PUT", &format!("{path}/s"), Some(back)).await;
        assert_eq!(code, 200, "{back}");
        let ip = back["spec"]["clusterIP"].as_str().unwrap_or("");
        assert!(ip.starts_with("10.43.0."), "{back}");
        assert_eq!(back["spec"]["clusterIPs"], json!([ip]));
        assert_eq!(back["spec"]["ipFamilies"], json!(["IPv4"]));
        let (code, _) = call(
            &api,
            "GET",
            &format!("/apis/networking.k8s.io/v1/ipaddresses/{ip}"),
            None,
        )
        .await;
        assert_eq!(code, 200, "the new cluster IP is held");
    }

    #[test]
    fn a_type_change_drops_what_the_new_type_does_not_use() {
        let old = json!({"spec": {"type": "LoadBalancer", "clusterIP": "10.43.0.9", "clusterIPs": ["10.43.0.9"],
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster",
            "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000, "allocateLoadBalancerNodePorts": true,
            "ports": [{"port": 80, "nodePort": 30080}]}, "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}});
        // A read-modify-write to ExternalName: everything allocated goes.
        let mut new = old.clone();
        new["spec"]["type"] = json!("ExternalName");
        new["spec"]["externalName"] = json!("example.com");
        drop_type_dependent_fields(&mut new, &old);
        let spec = new["spec"].as_object().expect("spec");
        for k in [
            "clusterIP",
            "clusterIPs",
            "ipFamilies",
            "ipFamilyPolicy",
            "internalTrafficPolicy",
            "externalTrafficPolicy",
            "healthCheckNodePort",
            "allocateLoadBalancerNodePorts",
        ] {
            assert!(!spec.contains_key(k), "{k} kept: {new}");
        }
        assert!(new["spec"]["ports"][0].get("nodePort").is_none());
        assert_eq!(new["status"]["loadBalancer"], json!({}));
        // To ClusterIP: the cluster IP stays, node ports and external policy go.
        let mut cip = old.clone();
        cip["spec"]["type"] = json!("ClusterIP");
        drop_type_dependent_fields(&mut cip, &old);
        assert_eq!(cip["spec"]["clusterIP"], "10.43.0.9");
        assert_eq!(cip["spec"]["internalTrafficPolicy"], "Cluster");
        assert!(cip["spec"].get("externalTrafficPolicy").is_none());
        assert!(cip["spec"]["ports"][0].get("nodePort").is_none());
        // A value the client changed in the same update is left for validation.
        let mut changed = old.clone();
        changed["spec"]["type"] = json!("ExternalName");
        changed["spec"]["clusterIP"] = json!("10.43.0.10");
        drop_type_dependent_fields(&mut changed, &old);
        assert_eq!(changed["spec"]["clusterIP"], "10.43.0.10");
        // No type change: nothing dropped.
        let mut same = old.clone();
        drop_type_dependent_fields(&mut same, &old);
        assert_eq!(same, old);
    }

    #[test]
    fn an_update_keeps_the_allocated_values_it_leaves_out() {
        let old = json!({"spec": {"type": "NodePort", "clusterIP": "10.43.0.9", "clusterIPs": ["10.43.0.9"], "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "ports": [{"name": "http", "port": 80, "nodePort": 30080}, {"name": "https", "port": 443, "nodePort": 30443}]}});
        // A manifest without any of them (kubectl replace, or apply that dropped them).
        let mut new = json!({"spec": {"type": "NodePort", "ports": [{"name": "http", "port": 8080}, {"name": "https", "port": 443, "nodePort": 30080}, {"name": "extra", "port": 9}]}});
        patch_allocated_values(&mut new, &old);
        assert_eq!(new["spec"]["clusterIP"], "10.43.0.9");
        assert_eq!(new["spec"]["clusterIPs"], json!(["10.43.0.9"]));
        assert_eq!(new["spec"]["ipFamilies"], json!(["IPv4"]));
        assert_eq!(new["spec"]["ipFamilyPolicy"], "SingleStack");
        // `http` would get 30080, but `https` uses that value now: it stays unset (the
        // allocator gives it a new one); a port without an old one gets nothing either.
        assert!(new["spec"]["ports"][0].get("nodePort").is_none(), "{new}");
        assert_eq!(new["spec"]["ports"][1]["nodePort"], 30080);
        assert!(new["spec"]["ports"][2].get("nodePort").is_none());
        let mut renamed = json!({"spec": {"type": "LoadBalancer", "clusterIP": "", "ports": [{"name": "https", "port": 443}]}});
        patch_allocated_values(&mut renamed, &old);
        assert_eq!(
            renamed["spec"]["clusterIP"], "10.43.0.9",
            "an empty value counts as left out"
        );
        assert_eq!(renamed["spec"]["ports"][0]["nodePort"], 30443);
        // Values the client sets are its own; a type that needs none gets none.
        let mut set = json!({"spec": {"type": "NodePort", "clusterIP": "10.43.0.10", "ports": [{"name": "http", "port": 80, "nodePort": 31000}]}});
        patch_allocated_values(&mut set, &old);
        assert_eq!(
            (
                set["spec"]["clusterIP"].as_str(),
                set["spec"]["ports"][0]["nodePort"].as_i64()
            ),
            (Some("10.43.0.10"), Some(31000))
        );
        let mut external = json!({"spec": {"type": "ExternalName", "externalName": "example.com"}});
        patch_allocated_values(&mut external, &old);
        assert!(external["spec"].get("clusterIP").is_none());
        let mut cluster_ip = json!({"spec": {"ports": [{"name": "http", "port": 80}]}});
        patch_allocated_values(&mut cluster_ip, &old);
        assert!(
            cluster_ip["spec"]["ports"][0].get("nodePort").is_none(),
            "ClusterIP Services have no node ports"
        );
        let hc_old = json!({"spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000}});
        let mut hc = json!({"spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local"}});
        patch_allocated_values(&mut hc, &hc_old);
        assert_eq!(hc["spec"]["healthCheckNodePort"], 32000);
    }
}
