//! Kinds of other groups: networking, RBAC, coordination, scheduling, storage, policy.

use crate::meta::validate_label_selector;
use crate::names::*;
use crate::util::*;
use serde_json::{json, Value};

fn validate_ingress_backend(b: Option<&Value>, path: &str, errs: &mut Errs) {
    let svc = get(b, "service");
    let res = get(b, "resource");
    match (svc, res) {
        (Some(_), Some(_)) => invalid(
            errs,
            path,
            json!(""),
            "cannot set both resource and service backends",
        ),
        (None, None) => invalid(errs, path, json!(""), "one backend must be specified"),
        (Some(s), None) => {
            let sp = child(path, "service");
            let name = gstr(Some(s), "name");
            if name.is_empty() {
                required(errs, &child(&sp, "name"), "");
            } else {
                for m in is_dns1035_label(name) {
                    invalid(errs, &child(&sp, "name"), json!(name), m);
                }
            }
            let port = get(Some(s), "port");
            let pp = child(&sp, "port");
            let pname = gstr(port, "name");
            let pnum = gint(port, "number").unwrap_or(0);
            if !pname.is_empty() && pnum != 0 {
                invalid(
                    errs,
                    &pp,
                    port.cloned().unwrap_or(Value::Null),
                    "cannot set both port name & port number",
                );
            } else if !pname.is_empty() {
                for m in is_valid_port_name(pname) {
                    invalid(errs, &child(&pp, "name"), json!(pname), m);
                }
            } else if pnum != 0 {
                if !(1..=65535).contains(&pnum) {
                    invalid(
                        errs,
                        &child(&pp, "number"),
                        json!(pnum),
                        inclusive_range_error(1, 65535),
                    );
                }
            } else {
                required(errs, &pp, "port name or number is required");
            }
        }
        (None, Some(r)) => {
            let rp = child(path, "resource");
            if gstr(Some(r), "kind").is_empty() {
                required(errs, &child(&rp, "kind"), "");
            }
            if gstr(Some(r), "name").is_empty() {
                required(errs, &child(&rp, "name"), "");
            }
        }
    }
}

/// Ingress.
pub(crate) fn validate_ingress(obj: &Value, errs: &mut Errs) {
    let spec = get(Some(obj), "spec");
    let rules = garr(spec, "rules");
    if rules.is_empty() && get(spec, "defaultBackend").is_none() {
        invalid(
            errs,
            "spec",
            spec.cloned().unwrap_or(json!({})),
            "either `defaultBackend` or `rules` must be specified",
        );
    }
    if let Some(db) = get(spec, "defaultBackend") {
        validate_ingress_backend(Some(db), "spec.defaultBackend", errs);
    }
    let icn = gstr(spec, "ingressClassName");
    if !icn.is_empty() {
        for m in is_dns1123_subdomain(icn) {
            invalid(errs, "spec.ingressClassName", json!(icn), m);
        }
    }
    for (i, r) in rules.iter().enumerate() {
        let rp = index("spec.rules", i);
        let host = gstr(Some(r), "host");
        if !host.is_empty() {
            if host.parse::<std::net::IpAddr>().is_ok() {
                invalid(
                    errs,
                    &child(&rp, "host"),
                    json!(host),
                    "must be a DNS name, not an IP address",
                );
            }
            let msgs = if host.starts_with('*') {
                is_wildcard_dns1123_subdomain(host)
            } else {
                is_dns1123_subdomain(host)
            };
            for m in msgs {
                invalid(errs, &child(&rp, "host"), json!(host), m);
            }
        }
        let Some(http) = get(Some(r), "http") else {
            continue;
        };
        let hp = child(&child(&rp, "http"), "paths");
        let paths = garr(Some(http), "paths");
        if paths.is_empty() {
            required(errs, &hp, "");
        }
        for (j, p) in paths.iter().enumerate() {
            let pp = index(&hp, j);
            let path = gstr(Some(p), "path");
            match gstr(Some(p), "pathType") {
                "" => required(errs, &child(&pp, "pathType"), "pathType must be specified"),
                "Exact" | "Prefix" => {
                    if !path.starts_with('/') {
                        invalid(
                            errs,
                            &child(&pp, "path"),
                            json!(path),
                            "must be an absolute path",
                        );
                    }
                    for bad in ["//", "/./", "/../", "%2f", "%2F"] {
                        if path.contains(bad) {
                            invalid(
                                errs,
                                &child(&pp, "path"),
                                json!(path),
                                format!("must not contain '{bad}'"),
                            );
                        }
                    }
                }
                "ImplementationSpecific" => {
                    if !path.is_empty() && !path.starts_with('/') {
                        invalid(
                            errs,
                            &child(&pp, "path"),
                            json!(path),
                            "must be an absolute path",
                        );
                    }
                }
                other => not_supported(
                    errs,
                    &child(&pp, "pathType"),
                    json!(other),
                    &["Exact", "ImplementationSpecific", "Prefix"],
                ),
            }
            validate_ingress_backend(get(Some(p), "backend"), &child(&pp, "backend"), errs);
        }
    }
    for (i, t) in garr(spec, "tls").iter().enumerate() {
        for (j, h) in garr(Some(t), "hosts").iter().enumerate() {
            let h = h.as_str().unwrap_or("");
            let msgs = if h.starts_with('*') {
                is_wildcard_dns1123_subdomain(h)
            } else {
                is_dns1123_subdomain(h)
            };
            for m in msgs {
                invalid(
                    errs,
                    &index(&child(&index("spec.tls", i), "hosts"), j),
                    json!(h),
                    m,
                );
            }
        }
    }
}

/// IngressClass.
pub(crate) fn validate_ingress_class(obj: &Value, errs: &mut Errs) {
    let c = gstr(get(Some(obj), "spec"), "controller");
    if c.is_empty() {
        required(errs, "spec.controller", "");
    } else if c.len() > 250 {
        too_long(errs, "spec.controller", 250);
    } else {
        match c.split_once('/') {
            Some((host, rest)) if !host.is_empty() && !rest.is_empty() => {
                for m in is_dns1123_subdomain(host) {
                    invalid(errs, "spec.controller", json!(host), m);
                }
            }
            _ => invalid(
                errs,
                "spec.controller",
                json!(c),
                "must be a domain-prefixed path (such as \"acme.io/foo\")",
            ),
        }
    }
}

/// NetworkPolicy.
pub(crate) fn validate_network_policy(obj: &Value, errs: &mut Errs) {
    let spec = get(Some(obj), "spec");
    if let Some(ps) = get(spec, "podSelector") {
        validate_label_selector(ps, "spec.podSelector", errs);
    }
    let types = garr(spec, "policyTypes");
    if types.len() > 2 {
        invalid(
            errs,
            "spec.policyTypes",
            Value::Array(types.to_vec()),
            "may not specify more than two policyTypes",
        );
    }
    for (i, t) in types.iter().enumerate() {
        if !t.as_str().is_some_and(|s| s == "Ingress" || s == "Egress") {
            not_supported(
                errs,
                &index("spec.policyTypes", i),
                t.clone(),
                &["Ingress", "Egress"],
            );
        }
    }
    for (dir, peers) in [("ingress", "from"), ("egress", "to")] {
        for (i, rule) in garr(spec, dir).iter().enumerate() {
            let rp = index(&child("spec", dir), i);
            for (j, port) in garr(Some(rule), "ports").iter().enumerate() {
                let pp = index(&child(&rp, "ports"), j);
                if let Some(pr) = get(Some(port), "protocol") {
                    if !pr
                        .as_str()
                        .is_some_and(|s| ["SCTP", "TCP", "UDP"].contains(&s))
                    {
                        not_supported(
                            errs,
                            &child(&pp, "protocol"),
                            pr.clone(),
                            &["SCTP", "TCP", "UDP"],
                        );
                    }
                }
                match get(Some(port), "port") {
                    Some(Value::Number(n)) => {
                        let n = n.as_i64().unwrap_or(0);
                        if !(1..=65535).contains(&n) {
                            invalid(
                                errs,
                                &child(&pp, "port"),
                                json!(n),
                                inclusive_range_error(1, 65535),
                            );
                        }
                    }
                    Some(Value::String(s)) => {
                        for m in is_valid_port_name(s) {
                            invalid(errs, &child(&pp, "port"), json!(s), m);
                        }
                    }
                    _ => {}
                }
            }
            for (j, peer) in garr(Some(rule), peers).iter().enumerate() {
                let pp = index(&child(&rp, peers), j);
                let n = ["podSelector", "namespaceSelector", "ipBlock"]
                    .iter()
                    .filter(|k| get(Some(peer), k).is_some())
                    .count();
                if n == 0 {
                    required(errs, &pp, "must specify a peer");
                }
                for k in ["podSelector", "namespaceSelector"] {
                    if let Some(s) = get(Some(peer), k) {
                        validate_label_selector(s, &child(&pp, k), errs);
                    }
                }
                if let Some(ib) = get(Some(peer), "ipBlock") {
                    if n > 1 {
                        forbidden(errs, &pp, "may not specify both ipBlock and another peer");
                    }
                    let cidr = gstr(Some(ib), "cidr");
                    if cidr.is_empty() {
                        required(errs, &child(&child(&pp, "ipBlock"), "cidr"), "");
                    } else if !is_cidr(cidr) {
                        invalid(
                            errs,
                            &child(&child(&pp, "ipBlock"), "cidr"),
                            json!(cidr),
                            "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
                        );
                    }
                }
            }
        }
    }
}

fn is_cidr(s: &str) -> bool {
    rk3s_core::Cidr::parse(s).is_ok()
}

/// Role / ClusterRole rules.
pub(crate) fn validate_role(obj: &Value, errs: &mut Errs) {
    let namespaced = gstr(Some(obj), "kind") != "ClusterRole"
        && !gstr(get(Some(obj), "metadata"), "namespace").is_empty();
    for (i, r) in garr(Some(obj), "rules").iter().enumerate() {
        let p = index("rules", i);
        let ro = Some(r);
        if garr(ro, "verbs").is_empty() {
            required(
                errs,
                &child(&p, "verbs"),
                "verbs must contain at least one value",
            );
        }
        let urls = garr(ro, "nonResourceURLs");
        if !urls.is_empty() {
            if namespaced {
                invalid(
                    errs,
                    &child(&p, "nonResourceURLs"),
                    Value::Array(urls.to_vec()),
                    "namespaced rules cannot apply to non-resource URLs",
                );
            }
            if !garr(ro, "apiGroups").is_empty()
                || !garr(ro, "resources").is_empty()
                || !garr(ro, "resourceNames").is_empty()
            {
                invalid(
                    errs,
                    &child(&p, "nonResourceURLs"),
                    Value::Array(urls.to_vec()),
                    "rules cannot apply to both regular resources and non-resource URLs",
                );
            }
            continue;
        }
        if get(ro, "apiGroups").is_none_or(|a| a.as_array().is_some_and(|a| a.is_empty())) {
            required(
                errs,
                &child(&p, "apiGroups"),
                "resource rules must supply at least one api group",
            );
        }
        if garr(ro, "resources").is_empty() {
            required(
                errs,
                &child(&p, "resources"),
                "resource rules must supply at least one resource",
            );
        }
    }
}

/// RoleBinding / ClusterRoleBinding.
pub(crate) fn validate_role_binding(kind: &str, obj: &Value, old: Option<&Value>, errs: &mut Errs) {
    let rr = get(Some(obj), "roleRef");
    let ag = gstr(rr, "apiGroup");
    if ag != "rbac.authorization.k8s.io" {
        not_supported(
            errs,
            "roleRef.apiGroup",
            json!(ag),
            &["rbac.authorization.k8s.io"],
        );
    }
    let rk = gstr(rr, "kind");
    if kind == "RoleBinding" {
        if rk != "Role" && rk != "ClusterRole" {
            not_supported(errs, "roleRef.kind", json!(rk), &["Role", "ClusterRole"]);
        }
    } else if rk != "ClusterRole" {
        not_supported(errs, "roleRef.kind", json!(rk), &["ClusterRole"]);
    }
    let rn = gstr(rr, "name");
    if rn.is_empty() {
        required(errs, "roleRef.name", "");
    } else {
        for m in is_valid_path_segment_name(rn) {
            invalid(errs, "roleRef.name", json!(rn), m);
        }
    }
    for (i, s) in garr(Some(obj), "subjects").iter().enumerate() {
        let p = index("subjects", i);
        let so = Some(s);
        let name = gstr(so, "name");
        if name.is_empty() {
            required(errs, &child(&p, "name"), "");
        }
        let sag = gstr(so, "apiGroup");
        match gstr(so, "kind") {
            "ServiceAccount" => {
                if !name.is_empty() {
                    for m in is_dns1123_subdomain(name) {
                        invalid(errs, &child(&p, "name"), json!(name), m);
                    }
                }
                if !sag.is_empty() {
                    not_supported(errs, &child(&p, "apiGroup"), json!(sag), &[""]);
                }
                if kind == "ClusterRoleBinding" && gstr(so, "namespace").is_empty() {
                    required(errs, &child(&p, "namespace"), "");
                }
            }
            "User" | "Group" => {
                if sag != "rbac.authorization.k8s.io" {
                    not_supported(
                        errs,
                        &child(&p, "apiGroup"),
                        json!(sag),
                        &["rbac.authorization.k8s.io"],
                    );
                }
            }
            other => not_supported(
                errs,
                &child(&p, "kind"),
                json!(other),
                &["ServiceAccount", "User", "Group"],
            ),
        }
    }
    if let Some(old) = old {
        if !semantic_eq(rr, get(Some(old), "roleRef")) {
            let r = json!({ crate::errors::GO_REPR: format!(
                "rbac.RoleRef{{APIGroup:{}, Kind:{}, Name:{}}}",
                crate::errors::go_quote(ag), crate::errors::go_quote(rk), crate::errors::go_quote(rn)
            )});
            invalid(errs, "roleRef", r, "cannot change roleRef");
        }
    }
}

/// Lease.
pub(crate) fn validate_lease(obj: &Value, errs: &mut Errs) {
    let spec = get(Some(obj), "spec");
    positive(errs, spec, "leaseDurationSeconds", "spec");
    nonnegative(errs, spec, "leaseTransitions", "spec");
}

/// PriorityClass.
pub(crate) fn validate_priority_class(obj: &Value, old: Option<&Value>, errs: &mut Errs) {
    let o = Some(obj);
    let name = gstr(get(o, "metadata"), "name");
    let system = ["system-node-critical", "system-cluster-critical"].contains(&name);
    if name.starts_with("system-") && !system {
        invalid(
            errs,
            "metadata.name",
            json!(name),
            "priority class names with 'system-' prefix are reserved",
        );
    }
    if !system && gint(o, "value").is_some_and(|v| v > 1_000_000_000) {
        forbidden(
            errs,
            "value",
            "maximum allowed value of a user defined priority is 1000000000",
        );
    }
    if let Some(pp) = get(o, "preemptionPolicy") {
        if !pp
            .as_str()
            .is_some_and(|s| s == "PreemptLowerPriority" || s == "Never")
        {
            not_supported(
                errs,
                "preemptionPolicy",
                pp.clone(),
                &["Never", "PreemptLowerPriority"],
            );
        }
    }
    if let Some(old) = old {
        if gint(o, "value") != gint(Some(old), "value") {
            forbidden(errs, "value", "may not be changed in an update.");
        }
        immutable(
            errs,
            get(o, "preemptionPolicy"),
            get(Some(old), "preemptionPolicy"),
            "preemptionPolicy",
        );
    }
}

/// StorageClass.
pub(crate) fn validate_storage_class(obj: &Value, old: Option<&Value>, errs: &mut Errs) {
    let o = Some(obj);
    let prov = gstr(o, "provisioner");
    if prov.is_empty() {
        required(errs, "provisioner", "");
    } else {
        for m in is_qualified_name(&prov.to_lowercase()) {
            invalid(errs, "provisioner", json!(prov), m);
        }
    }
    if let Some(rp) = get(o, "reclaimPolicy") {
        if !rp.as_str().is_some_and(|s| s == "Delete" || s == "Retain") {
            not_supported(errs, "reclaimPolicy", rp.clone(), &["Delete", "Retain"]);
        }
    }
    if let Some(m) = get(o, "volumeBindingMode") {
        if !m
            .as_str()
            .is_some_and(|s| s == "Immediate" || s == "WaitForFirstConsumer")
        {
            not_supported(
                errs,
                "volumeBindingMode",
                m.clone(),
                &["Immediate", "WaitForFirstConsumer"],
            );
        }
    }
    if let Some(old) = old {
        let o2 = Some(old);
        if !semantic_eq(get(o, "parameters"), get(o2, "parameters")) {
            forbidden(errs, "parameters", "updates to parameters are forbidden.");
        }
        if gstr(o, "provisioner") != gstr(o2, "provisioner") {
            forbidden(errs, "provisioner", "updates to provisioner are forbidden.");
        }
        if gstr(o, "reclaimPolicy") != gstr(o2, "reclaimPolicy") {
            forbidden(
                errs,
                "reclaimPolicy",
                "updates to reclaimPolicy are forbidden.",
            );
        }
        immutable(
            errs,
            get(o, "volumeBindingMode"),
            get(o2, "volumeBindingMode"),
            "volumeBindingMode",
        );
    }
}

/// PodDisruptionBudget.
pub(crate) fn validate_pdb(obj: &Value, errs: &mut Errs) {
    let spec = get(Some(obj), "spec");
    let min = get(spec, "minAvailable");
    let max = get(spec, "maxUnavailable");
    if min.is_some() && max.is_some() {
        invalid(
            errs,
            "spec",
            spec.cloned().unwrap_or(Value::Null),
            "minAvailable and maxUnavailable cannot be both set",
        );
    }
    for (k, v) in [("minAvailable", min), ("maxUnavailable", max)] {
        if let Some(v) = v {
            validate_int_or_percent(errs, v, &child("spec", k));
            if percent_of(v).is_some_and(|p| p > 100) {
                invalid(
                    errs,
                    &child("spec", k),
                    v.clone(),
                    "must not be greater than 100%",
                );
            }
        }
    }
    if let Some(sel) = get(spec, "selector") {
        validate_label_selector(sel, "spec.selector", errs);
    }
    if let Some(p) = get(spec, "unhealthyPodEvictionPolicy") {
        if !p
            .as_str()
            .is_some_and(|s| s == "IfHealthyBudget" || s == "AlwaysAllow")
        {
            not_supported(
                errs,
                "spec.unhealthyPodEvictionPolicy",
                p.clone(),
                &["AlwaysAllow", "IfHealthyBudget"],
            );
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
    fn rbac() {
        let role = json!({"kind": "Role", "metadata": {"name": "system:reader", "namespace": "d"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}, {"apiGroups": [""], "resources": ["pods"]}]});
        assert_eq!(
            msgs("rbac.authorization.k8s.io", "Role", true, role),
            vec!["rules[1].verbs: Required value: verbs must contain at least one value"]
        );
        let crb = json!({"metadata": {"name": "b"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "ServiceAccount", "name": "sa"}, {"kind": "User", "name": "alice"}]});
        assert_eq!(
            msgs(
                "rbac.authorization.k8s.io",
                "ClusterRoleBinding",
                false,
                crb.clone()
            ),
            vec!["subjects[0].namespace: Required value"]
        );
        let mut old = crb.clone();
        old["subjects"][0]["namespace"] = json!("d");
        apply_defaults(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
            &mut old,
        );
        let mut new = old.clone();
        new["roleRef"]["name"] = json!("edit");
        let e: Vec<String> = validate_update(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
            false,
            &new,
            &old,
        )
        .iter()
        .map(|e| e.to_string())
        .collect();
        assert_eq!(e, vec!["roleRef: Invalid value: rbac.RoleRef{APIGroup:\"rbac.authorization.k8s.io\", Kind:\"ClusterRole\", Name:\"edit\"}: cannot change roleRef"]);
    }

    #[test]
    fn ingress() {
        let ok = json!({"metadata": {"name": "i", "namespace": "d"}, "spec": {"rules": [{"host": "example.com", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}});
        assert!(msgs("networking.k8s.io", "Ingress", true, ok).is_empty());
        let bad = json!({"metadata": {"name": "i", "namespace": "d"}, "spec": {"rules": [{"host": "1.2.3.4", "http": {"paths": [
            {"path": "x", "backend": {"service": {"name": "web", "port": {}}}}]}}]}});
        let e = msgs("networking.k8s.io", "Ingress", true, bad);
        assert_eq!(e, vec![
            "spec.rules[0].host: Invalid value: \"1.2.3.4\": must be a DNS name, not an IP address",
            "spec.rules[0].http.paths[0].pathType: Required value: pathType must be specified",
            "spec.rules[0].http.paths[0].backend.service.port: Required value: port name or number is required",
        ]);
    }

    #[test]
    fn misc() {
        let e = msgs(
            "coordination.k8s.io",
            "Lease",
            true,
            json!({"metadata": {"name": "l", "namespace": "d"}, "spec": {"leaseDurationSeconds": 0}}),
        );
        assert_eq!(
            e,
            vec!["spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0"]
        );
        let e = msgs(
            "policy",
            "PodDisruptionBudget",
            true,
            json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {"minAvailable": 1, "maxUnavailable": "150%"}}),
        );
        assert_eq!(e.len(), 2);
        let e = msgs(
            "networking.k8s.io",
            "NetworkPolicy",
            true,
            json!({"metadata": {"name": "n", "namespace": "d"}, "spec": {"podSelector": {},
            "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}}),
        );
        assert_eq!(e.len(), 1);
        assert!(e[0]
            .starts_with("spec.ingress[0].from[0].ipBlock.cidr: Invalid value: \"10.0.0.0/33\""));
    }
}
