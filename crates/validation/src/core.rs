//! Core (v1) kinds other than Pod.

use crate::meta::validate_labels;
use crate::names::*;
use crate::pod::validate_pod_template_spec;
use crate::quantity::parse_quantity;
use crate::util::*;
use serde_json::{json, Value};
use std::collections::HashSet;

const MAX_SECRET_SIZE: usize = 1024 * 1024;

/// ReplicationController.
pub(crate) fn validate_replication_controller(obj: &Value, _old: Option<&Value>, errs: &mut Errs) {
    let spec = get(Some(obj), "spec");
    nonnegative(errs, spec, "replicas", "spec");
    nonnegative(errs, spec, "minReadySeconds", "spec");
    let sel = get(spec, "selector");
    let sel_map = gobj(spec, "selector");
    if sel_map.is_empty() {
        required(errs, "spec.selector", "");
    } else {
        validate_labels(sel, "spec.selector", errs);
    }
    let Some(t) = get(spec, "template") else {
        required(errs, "spec.template", "");
        return;
    };
    let labels = get(get(Some(t), "metadata"), "labels");
    if !sel_map.is_empty() {
        let matches = sel_map
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k.as_str())) == Some(v));
        if !matches {
            invalid(
                errs,
                "spec.template.metadata.labels",
                labels.cloned().unwrap_or(json!({})),
                "`selector` does not match template `labels`",
            );
        }
    }
    validate_pod_template_spec(Some(t), "spec.template", errs);
    let rp = gstr(get(Some(t), "spec"), "restartPolicy");
    if rp != "Always" {
        not_supported(
            errs,
            "spec.template.spec.restartPolicy",
            json!(rp),
            &["Always"],
        );
    }
}

fn is_ip(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok()
}

/// Service.
pub(crate) fn validate_service(obj: &Value, old: Option<&Value>, errs: &mut Errs) {
    let spec = get(Some(obj), "spec");
    let ty = gstr(spec, "type");
    let cluster_ip = gstr(spec, "clusterIP");
    let headless = cluster_ip == "None";
    let ports = garr(spec, "ports");
    match ty {
        "ClusterIP" | "NodePort" | "LoadBalancer" | "" => {}
        "ExternalName" => {
            let en = gstr(spec, "externalName");
            if en.is_empty() {
                required(errs, "spec.externalName", "");
            } else {
                let trimmed = en.strip_suffix('.').unwrap_or(en);
                let m = is_dns1123_subdomain(trimmed);
                if !m.is_empty() {
                    invalid(errs, "spec.externalName", json!(trimmed), m.join(","));
                }
            }
            if !cluster_ip.is_empty() {
                forbidden(
                    errs,
                    "spec.clusterIP",
                    "may not be set for ExternalName services",
                );
            }
        }
        other => not_supported(
            errs,
            "spec.type",
            json!(other),
            &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        ),
    }
    if ports.is_empty() && !headless && ty != "ExternalName" {
        required(errs, "spec.ports", "");
    }
    if !cluster_ip.is_empty() && !headless && !is_ip(cluster_ip) {
        invalid(
            errs,
            "spec.clusterIP",
            json!(cluster_ip),
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        );
    }
    let mut names = HashSet::new();
    let mut seen = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let pp = index("spec.ports", i);
        let po = Some(p);
        let name = gstr(po, "name");
        if ports.len() > 1 && name.is_empty() {
            required(errs, &child(&pp, "name"), "");
        } else if !name.is_empty() {
            for m in is_dns1123_label(name) {
                invalid(errs, &child(&pp, "name"), json!(name), m);
            }
            if !names.insert(name.to_string()) {
                duplicate(errs, &child(&pp, "name"), json!(name));
            }
        }
        let port = gint(po, "port").unwrap_or(0);
        if !(1..=65535).contains(&port) {
            invalid(
                errs,
                &child(&pp, "port"),
                json!(port),
                inclusive_range_error(1, 65535),
            );
        }
        check_enum(errs, po, "protocol", &pp, &["SCTP", "TCP", "UDP"], true);
        match get(po, "targetPort") {
            Some(Value::Number(n)) => {
                let n = n.as_i64().unwrap_or(0);
                if !(1..=65535).contains(&n) {
                    invalid(
                        errs,
                        &child(&pp, "targetPort"),
                        json!(n),
                        inclusive_range_error(1, 65535),
                    );
                }
            }
            Some(Value::String(s)) => {
                for m in is_valid_port_name(s) {
                    invalid(errs, &child(&pp, "targetPort"), json!(s), m);
                }
            }
            _ => {}
        }
        if let Some(np) = gint(po, "nodePort") {
            if ty == "ClusterIP" || ty.is_empty() {
                forbidden(
                    errs,
                    &child(&pp, "nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                );
            } else if !(1..=65535).contains(&np) {
                invalid(
                    errs,
                    &child(&pp, "nodePort"),
                    json!(np),
                    inclusive_range_error(1, 65535),
                );
            }
        }
        if !seen.insert((port, gstr(po, "protocol").to_string())) {
            duplicate(errs, &pp, p.clone());
        }
    }
    if get(spec, "sessionAffinity").is_some() {
        check_enum(
            errs,
            spec,
            "sessionAffinity",
            "spec",
            &["ClientIP", "None"],
            true,
        );
    }
    validate_labels(get(spec, "selector"), "spec.selector", errs);
    if let Some(etp) = get(spec, "externalTrafficPolicy") {
        if ty != "NodePort" && ty != "LoadBalancer" {
            invalid(
                errs,
                "spec.externalTrafficPolicy",
                etp.clone(),
                "may only be set when `type` is 'NodePort' or 'LoadBalancer'",
            );
        } else if !etp.as_str().is_some_and(|s| s == "Cluster" || s == "Local") {
            not_supported(
                errs,
                "spec.externalTrafficPolicy",
                etp.clone(),
                &["Cluster", "Local"],
            );
        }
    }
    if ty != "ExternalName" {
        if let Some(itp) = get(spec, "internalTrafficPolicy") {
            if !itp.as_str().is_some_and(|s| s == "Cluster" || s == "Local") {
                not_supported(
                    errs,
                    "spec.internalTrafficPolicy",
                    itp.clone(),
                    &["Cluster", "Local"],
                );
            }
        }
    }
    for (i, ip) in garr(spec, "externalIPs").iter().enumerate() {
        let s = ip.as_str().unwrap_or("");
        if !is_ip(s) {
            invalid(
                errs,
                &index("spec.externalIPs", i),
                json!(s),
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            );
        }
    }
    if let Some(old) = old {
        let os = get(Some(old), "spec");
        let old_ip = gstr(os, "clusterIP");
        if gstr(os, "type") != "ExternalName"
            && ty != "ExternalName"
            && !old_ip.is_empty()
            && cluster_ip != old_ip
        {
            invalid(
                errs,
                "spec.clusterIP",
                json!(cluster_ip),
                "field is immutable",
            );
        }
    }
}

fn data_size(v: Option<&Value>) -> usize {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| k.len() + v.as_str().map(str::len).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

fn validate_data_keys(obj: &Value, field: &str, errs: &mut Errs) {
    for (k, _) in gobj(Some(obj), field) {
        for m in is_config_map_key(k) {
            invalid(errs, &key(field, k), json!(k), m);
        }
    }
}

fn immutable_data(obj: &Value, old: Option<&Value>, fields: &[&str], errs: &mut Errs) {
    let Some(old) = old else { return };
    if !gbool(Some(old), "immutable") {
        return;
    }
    for f in fields {
        if !semantic_eq(get(Some(obj), f), get(Some(old), f)) {
            forbidden(errs, f, "field is immutable when `immutable` is set");
        }
    }
    if !gbool(Some(obj), "immutable") {
        forbidden(
            errs,
            "immutable",
            "field is immutable when `immutable` is set",
        );
    }
}

/// ConfigMap.
pub(crate) fn validate_config_map(obj: &Value, old: Option<&Value>, errs: &mut Errs) {
    validate_data_keys(obj, "data", errs);
    validate_data_keys(obj, "binaryData", errs);
    let data: HashSet<&String> = gobj(Some(obj), "data")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    for (k, _) in gobj(Some(obj), "binaryData") {
        if data.contains(k) {
            invalid(
                errs,
                &key("binaryData", k),
                json!(k),
                "duplicate of key present in data",
            );
        }
    }
    // binaryData is base64 in JSON; count decoded bytes approximately (3/4).
    let total = data_size(get(Some(obj), "data")) + data_size(get(Some(obj), "binaryData")) * 3 / 4;
    if total > MAX_SECRET_SIZE {
        too_long(errs, "", MAX_SECRET_SIZE);
    }
    immutable_data(obj, old, &["data", "binaryData"], errs);
}

/// Secret.
pub(crate) fn validate_secret(obj: &Value, old: Option<&Value>, errs: &mut Errs) {
    validate_data_keys(obj, "data", errs);
    let o = Some(obj);
    if data_size(get(o, "data")) * 3 / 4 > MAX_SECRET_SIZE {
        too_long(errs, "data", MAX_SECRET_SIZE);
    }
    let has = |k: &str| get(get(o, "data"), k).is_some() || get(get(o, "stringData"), k).is_some();
    match gstr(o, "type") {
        "kubernetes.io/service-account-token"
            if gstr(
                get(get(o, "metadata"), "annotations"),
                "kubernetes.io/service-account.name",
            )
            .is_empty() =>
        {
            required(
                errs,
                "metadata.annotations[kubernetes.io/service-account.name]",
                "",
            );
        }
        "kubernetes.io/dockercfg" if !has(".dockercfg") => {
            required(errs, "data[.dockercfg]", "");
        }
        "kubernetes.io/dockerconfigjson" if !has(".dockerconfigjson") => {
            required(errs, "data[.dockerconfigjson]", "");
        }
        "kubernetes.io/basic-auth" if !has("username") && !has("password") => {
            required(errs, "data[username]", "");
            required(errs, "data[password]", "");
        }
        "kubernetes.io/ssh-auth" if !has("ssh-privatekey") => {
            required(errs, "data[ssh-privatekey]", "");
        }
        "kubernetes.io/tls" => {
            if !has("tls.crt") {
                required(errs, "data[tls.crt]", "");
            }
            if !has("tls.key") {
                required(errs, "data[tls.key]", "");
            }
        }
        _ => {}
    }
    if let Some(old) = old {
        let (nt, ot) = (gstr(o, "type"), gstr(Some(old), "type"));
        if nt != ot {
            invalid(errs, "type", json!(nt), "field is immutable");
        }
    }
    immutable_data(obj, old, &["data"], errs);
}

/// Namespace.
pub(crate) fn validate_namespace(obj: &Value, _old: Option<&Value>, errs: &mut Errs) {
    for f in garr(get(Some(obj), "spec"), "finalizers") {
        let s = f.as_str().unwrap_or("");
        let mut msgs = is_qualified_name(s);
        if msgs.is_empty() && !s.contains('/') && s != "kubernetes" {
            msgs.push(
                "name is neither a standard finalizer name nor is it fully qualified".to_string(),
            );
        }
        for m in msgs {
            invalid(errs, "spec.finalizers", json!(s), m);
        }
    }
}

/// ServiceAccount.
pub(crate) fn validate_service_account(obj: &Value, errs: &mut Errs) {
    for (i, s) in garr(Some(obj), "imagePullSecrets").iter().enumerate() {
        if gstr(Some(s), "name").is_empty() {
            required(errs, &child(&index("imagePullSecrets", i), "name"), "");
        }
    }
}

const ACCESS_MODES: &[&str] = &[
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOnce",
    "ReadWriteOncePod",
];

/// PersistentVolumeClaimSpec at `path`.
pub(crate) fn validate_pvc_spec(spec: Option<&Value>, path: &str, errs: &mut Errs) {
    let modes = garr(spec, "accessModes");
    if modes.is_empty() {
        required(
            errs,
            &child(path, "accessModes"),
            "at least 1 access mode is required",
        );
    }
    for m in modes {
        if !m.as_str().is_some_and(|s| ACCESS_MODES.contains(&s)) {
            not_supported(errs, &child(path, "accessModes"), m.clone(), ACCESS_MODES);
        }
    }
    if let Some(sel) = get(spec, "selector") {
        crate::meta::validate_label_selector(sel, &child(path, "selector"), errs);
    }
    let storage = get(get(get(spec, "resources"), "requests"), "storage");
    let sp = key(&child(path, "resources"), "storage");
    match storage {
        None => required(errs, &sp, ""),
        Some(q) => {
            let s = q
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| q.to_string());
            match parse_quantity(&s) {
                Ok(v) if v.value <= 0.0 => {
                    invalid(errs, &sp, json!(s), "must be greater than zero")
                }
                Ok(_) => {}
                Err(e) => invalid(errs, &sp, json!(s), e.to_string()),
            }
        }
    }
    if let Some(vm) = get(spec, "volumeMode") {
        if !vm
            .as_str()
            .is_some_and(|s| s == "Block" || s == "Filesystem")
        {
            not_supported(
                errs,
                &child(path, "volumeMode"),
                vm.clone(),
                &["Block", "Filesystem"],
            );
        }
    }
    let sc = gstr(spec, "storageClassName");
    if !sc.is_empty() {
        for m in is_dns1123_subdomain(sc) {
            invalid(errs, &child(path, "storageClassName"), json!(sc), m);
        }
    }
}

/// PersistentVolumeClaim.
pub(crate) fn validate_pvc(obj: &Value, old: Option<&Value>, errs: &mut Errs) {
    let spec = get(Some(obj), "spec");
    validate_pvc_spec(spec, "spec", errs);
    if let Some(old) = old {
        let os = get(Some(old), "spec");
        let mut masked = os.cloned().unwrap_or(json!({}));
        if let Some(m) = masked.as_object_mut() {
            for k in ["resources", "volumeAttributesClassName"] {
                match get(spec, k) {
                    Some(v) => m.insert(k.into(), v.clone()),
                    None => m.remove(k),
                };
            }
            if gstr(os, "volumeName").is_empty() {
                match get(spec, "volumeName") {
                    Some(v) => m.insert("volumeName".into(), v.clone()),
                    None => m.remove("volumeName"),
                };
            }
        }
        if !semantic_eq(Some(&masked), spec) {
            forbidden(errs, "spec", "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims");
        }
    }
}

/// PersistentVolume.
pub(crate) fn validate_pv(obj: &Value, errs: &mut Errs) {
    let spec = get(Some(obj), "spec");
    let modes = garr(spec, "accessModes");
    if modes.is_empty() {
        required(errs, "spec.accessModes", "");
    }
    for m in modes {
        if !m.as_str().is_some_and(|s| ACCESS_MODES.contains(&s)) {
            not_supported(errs, "spec.accessModes", m.clone(), ACCESS_MODES);
        }
    }
    if gobj(spec, "capacity").is_empty() {
        required(errs, "spec.capacity", "");
    }
    if let Some(rp) = get(spec, "persistentVolumeReclaimPolicy") {
        if !rp
            .as_str()
            .is_some_and(|s| ["Delete", "Recycle", "Retain"].contains(&s))
        {
            not_supported(
                errs,
                "spec.persistentVolumeReclaimPolicy",
                rp.clone(),
                &["Delete", "Recycle", "Retain"],
            );
        }
    }
    let sources = [
        "hostPath",
        "local",
        "nfs",
        "csi",
        "iscsi",
        "fc",
        "rbd",
        "cephfs",
        "glusterfs",
        "azureFile",
        "azureDisk",
        "gcePersistentDisk",
        "awsElasticBlockStore",
        "cinder",
        "flexVolume",
        "vsphereVolume",
        "portworxVolume",
        "scaleIO",
        "storageos",
        "quobyte",
        "flocker",
        "photonPersistentDisk",
    ];
    let n = sources.iter().filter(|s| get(spec, s).is_some()).count();
    if n == 0 {
        required(errs, "spec", "must specify a volume type");
    }
}

/// Endpoints.
pub(crate) fn validate_endpoints(obj: &Value, errs: &mut Errs) {
    for (i, s) in garr(Some(obj), "subsets").iter().enumerate() {
        let sp = index("subsets", i);
        for list in ["addresses", "notReadyAddresses"] {
            for (j, a) in garr(Some(s), list).iter().enumerate() {
                let ip = gstr(Some(a), "ip");
                if !is_ip(ip) {
                    invalid(
                        errs,
                        &child(&index(&child(&sp, list), j), "ip"),
                        json!(ip),
                        "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                    );
                }
            }
        }
        let ports = garr(Some(s), "ports");
        for (j, p) in ports.iter().enumerate() {
            let pp = index(&child(&sp, "ports"), j);
            let name = gstr(Some(p), "name");
            if ports.len() > 1 && name.is_empty() {
                required(errs, &child(&pp, "name"), "");
            } else if !name.is_empty() {
                for m in is_dns1123_label(name) {
                    invalid(errs, &child(&pp, "name"), json!(name), m);
                }
            }
            let port = gint(Some(p), "port").unwrap_or(0);
            if !(1..=65535).contains(&port) {
                invalid(
                    errs,
                    &child(&pp, "port"),
                    json!(port),
                    inclusive_range_error(1, 65535),
                );
            }
            check_enum(
                errs,
                Some(p),
                "protocol",
                &pp,
                &["SCTP", "TCP", "UDP"],
                true,
            );
        }
    }
}

/// core/v1 Event.
pub(crate) fn validate_event(obj: &Value, errs: &mut Errs) {
    let o = Some(obj);
    let ns = gstr(get(o, "metadata"), "namespace");
    let io = get(o, "involvedObject");
    let ins = gstr(io, "namespace");
    if !ins.is_empty() && ins != ns && !ns.is_empty() {
        invalid(
            errs,
            "involvedObject.namespace",
            json!(ins),
            "does not match event.namespace",
        );
    }
    let t = gstr(o, "type");
    if !t.is_empty() && t != "Normal" && t != "Warning" {
        not_supported(errs, "type", json!(t), &["Normal", "Warning"]);
    }
    if gstr(o, "reason").len() > 128 {
        invalid(
            errs,
            "reason",
            json!(gstr(o, "reason")),
            "can have at most 128 characters",
        );
    }
}

fn validate_resource_list(list: Option<&Value>, path: &str, errs: &mut Errs) {
    for (k, q) in list
        .and_then(Value::as_object)
        .map(|m| m.iter().collect::<Vec<_>>())
        .unwrap_or_default()
    {
        let p = key(path, k);
        for m in is_qualified_name(k) {
            invalid(errs, &p, json!(k), m);
        }
        let s = q
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| q.to_string());
        match parse_quantity(&s) {
            Ok(v) if v.value < 0.0 => {
                invalid(errs, &p, json!(s), "must be greater than or equal to 0")
            }
            Ok(_) => {}
            Err(e) => invalid(errs, &p, json!(s), e.to_string()),
        }
    }
}

/// ResourceQuota.
pub(crate) fn validate_resource_quota(obj: &Value, errs: &mut Errs) {
    validate_resource_list(get(get(Some(obj), "spec"), "hard"), "spec.hard", errs);
}

/// LimitRange.
pub(crate) fn validate_limit_range(obj: &Value, errs: &mut Errs) {
    for (i, l) in garr(get(Some(obj), "spec"), "limits").iter().enumerate() {
        let p = index("spec.limits", i);
        let t = gstr(Some(l), "type");
        if t.is_empty() {
            required(errs, &child(&p, "type"), "");
        }
        for k in [
            "max",
            "min",
            "default",
            "defaultRequest",
            "maxLimitRequestRatio",
        ] {
            validate_resource_list(get(Some(l), k), &child(&p, k), errs);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{apply_defaults, validate_create, validate_update};
    use serde_json::{json, Value};

    fn msgs(group: &str, kind: &str, namespaced: bool, mut obj: Value) -> Vec<String> {
        apply_defaults(group, "v1", kind, &mut obj);
        validate_create(group, "v1", kind, namespaced, &obj)
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn services() {
        let ok = json!({"metadata": {"name": "web", "namespace": "d"}, "spec": {"selector": {"app": "a"}, "ports": [{"port": 80}]}});
        assert!(msgs("", "Service", true, ok).is_empty());
        let e = msgs(
            "",
            "Service",
            true,
            json!({"metadata": {"name": "1web", "namespace": "d"}, "spec": {"type": "Weird",
            "ports": [{"port": 80}, {"port": 70000, "name": "b", "protocol": "HTTP"}]}}),
        );
        assert!(
            e[0].starts_with(
                "metadata.name: Invalid value: \"1web\": a DNS-1035 label must consist of"
            ),
            "{e:?}"
        );
        assert!(e.contains(&"spec.type: Unsupported value: \"Weird\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"".to_string()));
        assert!(e.contains(&"spec.ports[0].name: Required value".to_string()));
        assert!(e.contains(
            &"spec.ports[1].port: Invalid value: 70000: must be between 1 and 65535, inclusive"
                .to_string()
        ));
        assert!(e.contains(&"spec.ports[1].protocol: Unsupported value: \"HTTP\": supported values: \"SCTP\", \"TCP\", \"UDP\"".to_string()));
        let e = msgs(
            "",
            "Service",
            true,
            json!({"metadata": {"name": "web", "namespace": "d"}, "spec": {}}),
        );
        assert_eq!(e, vec!["spec.ports: Required value"]);
        assert!(msgs(
            "",
            "Service",
            true,
            json!({"metadata": {"name": "h", "namespace": "d"}, "spec": {"clusterIP": "None"}})
        )
        .is_empty());
    }

    #[test]
    fn service_cluster_ip_immutable() {
        let old = json!({"metadata": {"name": "w", "namespace": "d"}, "spec": {"clusterIP": "10.43.0.10", "ports": [{"port": 80, "protocol": "TCP"}]}});
        let mut new = old.clone();
        new["spec"]["clusterIP"] = json!("10.43.0.11");
        let e: Vec<String> = validate_update("", "v1", "Service", true, &new, &old)
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            e,
            vec!["spec.clusterIP: Invalid value: \"10.43.0.11\": field is immutable"]
        );
    }

    #[test]
    fn configmaps_and_secrets() {
        let e = msgs(
            "",
            "ConfigMap",
            true,
            json!({"metadata": {"name": "c", "namespace": "d"}, "data": {"bad key": "v", "ok.key": "v"}}),
        );
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("data[bad key]: Invalid value: \"bad key\": a valid config key must consist of alphanumeric characters"));
        let e = msgs(
            "",
            "Secret",
            true,
            json!({"metadata": {"name": "s", "namespace": "d"}, "type": "kubernetes.io/tls", "data": {"tls.crt": "eA=="}}),
        );
        assert_eq!(e, vec!["data[tls.key]: Required value"]);
        let old = json!({"metadata": {"name": "c", "namespace": "d"}, "immutable": true, "data": {"a": "1"}});
        let mut new = old.clone();
        new["data"]["a"] = json!("2");
        let e: Vec<String> = validate_update("", "v1", "ConfigMap", true, &new, &old)
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            e,
            vec!["data: Forbidden: field is immutable when `immutable` is set"]
        );
    }

    #[test]
    fn namespaces_and_pvcs() {
        assert!(msgs("", "Namespace", false, json!({"metadata": {"name": "dev"}})).is_empty());
        let e = msgs(
            "",
            "Namespace",
            false,
            json!({"metadata": {"name": "dev", "namespace": "x"}}),
        );
        assert_eq!(
            e,
            vec!["metadata.namespace: Forbidden: not allowed on this type"]
        );
        let e = msgs(
            "",
            "PersistentVolumeClaim",
            true,
            json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {}}),
        );
        assert_eq!(
            e,
            vec![
                "spec.accessModes: Required value: at least 1 access mode is required",
                "spec.resources[storage]: Required value"
            ]
        );
    }

    #[test]
    fn replication_controller_defaults_selector() {
        let rc = json!({"metadata": {"name": "r", "namespace": "d"}, "spec": {"template": {"metadata": {"labels": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        assert!(msgs("", "ReplicationController", true, rc).is_empty());
    }
}
