//! Pod and PodSpec validation (also used by every workload template).

use crate::meta::validate_template_meta;
use crate::names::*;
use crate::quantity::parse_quantity;
use crate::util::*;
use serde_json::{json, Value};
use std::collections::HashSet;

const VOLUME_SOURCES: &[&str] = &[
    "hostPath",
    "emptyDir",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "gitRepo",
    "secret",
    "nfs",
    "iscsi",
    "glusterfs",
    "persistentVolumeClaim",
    "rbd",
    "flexVolume",
    "cinder",
    "cephfs",
    "flocker",
    "downwardAPI",
    "fc",
    "azureFile",
    "configMap",
    "vsphereVolume",
    "quobyte",
    "azureDisk",
    "photonPersistentDisk",
    "projected",
    "portworxVolume",
    "scaleIO",
    "storageos",
    "csi",
    "ephemeral",
    "image",
];

const HANDLERS: &[&str] = &["exec", "httpGet", "tcpSocket", "grpc"];

/// Validates a Pod (create or update).
pub(crate) fn validate_pod(obj: &Value, old: Option<&Value>, errs: &mut Errs) {
    let spec = get(Some(obj), "spec");
    validate_pod_spec(spec, "spec", errs);
    if let Some(old) = old {
        validate_pod_spec_update(spec, get(Some(old), "spec"), errs);
    }
}

/// Validates a PodTemplate object.
pub(crate) fn validate_pod_template(obj: &Value, _old: Option<&Value>, errs: &mut Errs) {
    validate_pod_template_spec(get(Some(obj), "template"), "template", errs);
}

/// Validates a `PodTemplateSpec` (metadata labels/annotations + spec).
pub(crate) fn validate_pod_template_spec(tmpl: Option<&Value>, path: &str, errs: &mut Errs) {
    validate_template_meta(get(tmpl, "metadata"), &child(path, "metadata"), errs);
    validate_pod_spec(get(tmpl, "spec"), &child(path, "spec"), errs);
}

fn validate_pod_spec_update(new: Option<&Value>, old: Option<&Value>, errs: &mut Errs) {
    // Copy the mutable fields from new into old, then compare.
    let (Some(new), Some(old)) = (new, old) else {
        return;
    };
    let mut masked = old.clone();
    for list in ["containers", "initContainers"] {
        let news = garr(Some(new), list);
        if let Some(arr) = masked.get_mut(list).and_then(Value::as_array_mut) {
            if arr.len() == news.len() {
                for (o, n) in arr.iter_mut().zip(news) {
                    if let (Some(o), Some(img)) = (o.as_object_mut(), n.get("image")) {
                        o.insert("image".into(), img.clone());
                    }
                }
            }
        }
    }
    if let Some(m) = masked.as_object_mut() {
        // activeDeadlineSeconds may be set or decreased, never unset or increased.
        let (na, oa) = (
            gint(Some(new), "activeDeadlineSeconds"),
            gint(Some(old), "activeDeadlineSeconds"),
        );
        match (na, oa) {
            (Some(n), Some(o)) if n > 0 && n <= o => {
                m.insert("activeDeadlineSeconds".into(), json!(n));
            }
            (Some(n), None) if n > 0 => {
                m.insert("activeDeadlineSeconds".into(), json!(n));
            }
            _ => {}
        }
        if let Some(n) = gint(Some(new), "activeDeadlineSeconds") {
            if oa.is_some_and(|o| n > o) || n <= 0 {
                invalid(
                    errs,
                    "spec.activeDeadlineSeconds",
                    json!(n),
                    "must be less than or equal to previous value",
                );
            }
        }
        // tolerations may only be added to.
        let old_t = garr(Some(old), "tolerations");
        let new_t = garr(Some(new), "tolerations");
        if old_t.iter().all(|t| new_t.contains(t)) {
            m.insert("tolerations".into(), Value::Array(new_t.to_vec()));
        }
        // schedulingGates may only be removed.
        let new_g = garr(Some(new), "schedulingGates");
        if new_g
            .iter()
            .all(|g| garr(Some(old), "schedulingGates").contains(g))
        {
            m.insert("schedulingGates".into(), Value::Array(new_g.to_vec()));
        }
        if let Some(n) = gint(Some(new), "terminationGracePeriodSeconds") {
            if gint(Some(old), "terminationGracePeriodSeconds").is_some_and(|o| o < 0) && n == 1 {
                m.insert("terminationGracePeriodSeconds".into(), json!(1));
            }
        }
    }
    if !semantic_eq(Some(&masked), Some(new)) {
        forbidden(
            errs,
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        );
    }
}

/// Validates a `PodSpec` at `path`.
pub(crate) fn validate_pod_spec(spec: Option<&Value>, path: &str, errs: &mut Errs) {
    let volumes = validate_volumes(garr(spec, "volumes"), &child(path, "volumes"), errs);
    let host_network = gbool(spec, "hostNetwork");
    let mut names = HashSet::new();
    let containers = garr(spec, "containers");
    if containers.is_empty() {
        required(errs, &child(path, "containers"), "");
    }
    for (i, c) in garr(spec, "initContainers").iter().enumerate() {
        validate_container(
            c,
            &index(&child(path, "initContainers"), i),
            true,
            &volumes,
            &mut names,
            host_network,
            errs,
        );
    }
    for (i, c) in containers.iter().enumerate() {
        validate_container(
            c,
            &index(&child(path, "containers"), i),
            false,
            &volumes,
            &mut names,
            host_network,
            errs,
        );
    }
    check_enum(
        errs,
        spec,
        "restartPolicy",
        path,
        &["Always", "OnFailure", "Never"],
        true,
    );
    check_enum(
        errs,
        spec,
        "dnsPolicy",
        path,
        &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
        true,
    );
    if gstr(spec, "dnsPolicy") == "None" && get(spec, "dnsConfig").is_none() {
        required(
            errs,
            &child(path, "dnsConfig"),
            "must provide `dnsConfig` when `dnsPolicy` is None",
        );
    }
    if let Some(ns) = get(spec, "nodeSelector") {
        crate::meta::validate_labels(Some(ns), &child(path, "nodeSelector"), errs);
    }
    for k in ["serviceAccountName", "priorityClassName"] {
        let v = gstr(spec, k);
        if !v.is_empty() {
            for m in is_dns1123_subdomain(v) {
                invalid(errs, &child(path, k), json!(v), m);
            }
        }
    }
    for k in ["hostname", "subdomain"] {
        let v = gstr(spec, k);
        if !v.is_empty() {
            for m in is_dns1123_label(v) {
                invalid(errs, &child(path, k), json!(v), m);
            }
        }
    }
    if let Some(n) = gint(spec, "activeDeadlineSeconds") {
        if !(1..=i32::MAX as i64).contains(&n) {
            invalid(
                errs,
                &child(path, "activeDeadlineSeconds"),
                json!(n),
                inclusive_range_error(1, i32::MAX as i64),
            );
        }
    }
    nonnegative(errs, spec, "terminationGracePeriodSeconds", path);
    for (i, t) in garr(spec, "tolerations").iter().enumerate() {
        validate_toleration(t, &index(&child(path, "tolerations"), i), errs);
    }
    for (i, s) in garr(spec, "imagePullSecrets").iter().enumerate() {
        if gstr(Some(s), "name").is_empty() {
            required(
                errs,
                &child(&index(&child(path, "imagePullSecrets"), i), "name"),
                "",
            );
        }
    }
    if let Some(sc) = get(spec, "securityContext") {
        validate_ids(Some(sc), &child(path, "securityContext"), errs);
        for (i, g) in garr(Some(sc), "supplementalGroups").iter().enumerate() {
            if let Some(n) = g.as_i64() {
                if !(0..=i32::MAX as i64).contains(&n) {
                    invalid(
                        errs,
                        &index(
                            &child(&child(path, "securityContext"), "supplementalGroups"),
                            i,
                        ),
                        json!(n),
                        inclusive_range_error(0, i32::MAX as i64),
                    );
                }
            }
        }
    }
}

fn validate_ids(sc: Option<&Value>, path: &str, errs: &mut Errs) {
    for k in ["runAsUser", "runAsGroup", "fsGroup"] {
        if let Some(n) = gint(sc, k) {
            if !(0..=i32::MAX as i64).contains(&n) {
                invalid(
                    errs,
                    &child(path, k),
                    json!(n),
                    inclusive_range_error(0, i32::MAX as i64),
                );
            }
        }
    }
}

fn validate_toleration(t: &Value, path: &str, errs: &mut Errs) {
    let t = Some(t);
    let k = gstr(t, "key");
    if !k.is_empty() {
        for m in is_qualified_name(k) {
            invalid(errs, &child(path, "key"), json!(k), m);
        }
    }
    let op = gstr(t, "operator");
    if k.is_empty() && op != "Exists" {
        invalid(errs, &child(path, "operator"), json!(op), "operator must be Exists when `key` is empty, which means \"match all values and all keys\"");
    }
    if get(t, "tolerationSeconds").is_some() && gstr(t, "effect") != "NoExecute" {
        invalid(
            errs,
            &child(path, "effect"),
            json!(gstr(t, "effect")),
            "effect must be 'NoExecute' when `tolerationSeconds` is set",
        );
    }
    let val = gstr(t, "value");
    match op {
        "" | "Equal" => {
            for m in is_valid_label_value(val) {
                invalid(errs, &child(path, "operator"), json!(val), m);
            }
        }
        "Exists" => {
            if !val.is_empty() {
                invalid(
                    errs,
                    &child(path, "operator"),
                    json!(t.cloned()),
                    "value must be empty when `operator` is 'Exists'",
                );
            }
        }
        other => not_supported(
            errs,
            &child(path, "operator"),
            json!(other),
            &["Equal", "Exists"],
        ),
    }
    let eff = gstr(t, "effect");
    if !eff.is_empty() && !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&eff) {
        not_supported(
            errs,
            &child(path, "effect"),
            json!(eff),
            &["NoSchedule", "PreferNoSchedule", "NoExecute"],
        );
    }
}

fn validate_volumes(vols: &[Value], path: &str, errs: &mut Errs) -> HashSet<String> {
    let mut names = HashSet::new();
    for (i, v) in vols.iter().enumerate() {
        let p = index(path, i);
        let vo = Some(v);
        let name = gstr(vo, "name");
        if name.is_empty() {
            required(errs, &child(&p, "name"), "");
        } else {
            for m in is_dns1123_label(name) {
                invalid(errs, &child(&p, "name"), json!(name), m);
            }
            if !names.insert(name.to_string()) {
                duplicate(errs, &child(&p, "name"), json!(name));
            }
        }
        let present: Vec<&str> = VOLUME_SOURCES
            .iter()
            .copied()
            .filter(|k| get(vo, k).is_some())
            .collect();
        match present.len() {
            0 => required(errs, &p, "must specify a volume type"),
            1 => validate_volume_source(
                present[0],
                get(vo, present[0]),
                &child(&p, present[0]),
                errs,
            ),
            _ => forbidden(
                errs,
                &child(&p, present[1]),
                "may not specify more than 1 volume type",
            ),
        }
    }
    names
}

fn validate_mode(src: Option<&Value>, k: &str, path: &str, errs: &mut Errs) {
    if let Some(n) = gint(src, k) {
        if !(0..=0o777).contains(&n) {
            invalid(
                errs,
                &child(path, k),
                json!(n),
                "must be a number between 0 and 0777 (octal), both inclusive",
            );
        }
    }
}

fn validate_key_to_paths(items: &[Value], path: &str, errs: &mut Errs) {
    for (i, it) in items.iter().enumerate() {
        let p = index(path, i);
        let it = Some(it);
        if gstr(it, "key").is_empty() {
            required(errs, &child(&p, "key"), "");
        }
        validate_local_path(gstr(it, "path"), &child(&p, "path"), errs);
        validate_mode(it, "mode", &p, errs);
    }
}

fn validate_local_path(s: &str, path: &str, errs: &mut Errs) {
    if s.is_empty() {
        required(errs, path, "");
        return;
    }
    validate_relative_path(s, path, errs);
}

fn validate_relative_path(s: &str, path: &str, errs: &mut Errs) {
    if s.starts_with('/') {
        invalid(errs, path, json!(s), "must be a relative path");
    }
    if s.split('/').any(|p| p == "..") {
        invalid(errs, path, json!(s), "must not contain '..'");
    }
}

fn validate_volume_source(kind: &str, src: Option<&Value>, path: &str, errs: &mut Errs) {
    match kind {
        "hostPath" => {
            if gstr(src, "path").is_empty() {
                required(errs, &child(path, "path"), "");
            }
            let t = gstr(src, "type");
            let ok = [
                "",
                "DirectoryOrCreate",
                "Directory",
                "FileOrCreate",
                "File",
                "Socket",
                "CharDevice",
                "BlockDevice",
            ];
            if !ok.contains(&t) {
                not_supported(errs, &child(path, "type"), json!(t), &ok);
            }
        }
        "emptyDir" => {
            if let Some(q) = get(src, "sizeLimit") {
                validate_quantity_value(q, &child(path, "sizeLimit"), errs);
            }
        }
        "secret" => {
            if gstr(src, "secretName").is_empty() {
                required(errs, &child(path, "secretName"), "");
            }
            validate_mode(src, "defaultMode", path, errs);
            validate_key_to_paths(garr(src, "items"), &child(path, "items"), errs);
        }
        "configMap" => {
            if gstr(src, "name").is_empty() {
                required(errs, &child(path, "name"), "");
            }
            validate_mode(src, "defaultMode", path, errs);
            validate_key_to_paths(garr(src, "items"), &child(path, "items"), errs);
        }
        "persistentVolumeClaim" if gstr(src, "claimName").is_empty() => {
            required(errs, &child(path, "claimName"), "");
        }
        "nfs" => {
            if gstr(src, "server").is_empty() {
                required(errs, &child(path, "server"), "");
            }
            let p = gstr(src, "path");
            if p.is_empty() {
                required(errs, &child(path, "path"), "");
            } else if !p.starts_with('/') {
                invalid(
                    errs,
                    &child(path, "path"),
                    json!(p),
                    "must be an absolute path",
                );
            }
        }
        "downwardAPI" => validate_mode(src, "defaultMode", path, errs),
        "projected" => {
            validate_mode(src, "defaultMode", path, errs);
        }
        "csi" if gstr(src, "driver").is_empty() => {
            required(errs, &child(path, "driver"), "");
        }
        _ => {}
    }
}

fn validate_quantity_value(q: &Value, path: &str, errs: &mut Errs) -> Option<f64> {
    let s = match q {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    match parse_quantity(&s) {
        Ok(v) => {
            if v.value < 0.0 {
                invalid(errs, path, json!(s), "must be greater than or equal to 0");
            }
            Some(v.value)
        }
        Err(e) => {
            invalid(errs, path, json!(s), e.to_string());
            None
        }
    }
}

fn is_standard_container_resource(name: &str) -> bool {
    matches!(name, "cpu" | "memory" | "ephemeral-storage") || name.starts_with("hugepages-")
}

/// Validates `resources` (names, quantities, requests ≤ limits).
pub(crate) fn validate_resources(res: Option<&Value>, path: &str, errs: &mut Errs) {
    let mut limits = std::collections::HashMap::new();
    for (k, q) in gobj(res, "limits") {
        let p = key(&child(path, "limits"), k);
        validate_resource_name(k, &p, errs);
        if let Some(v) = validate_quantity_value(q, &p, errs) {
            limits.insert(k.clone(), (v, q.clone()));
        }
    }
    for (k, q) in gobj(res, "requests") {
        let p = key(&child(path, "requests"), k);
        validate_resource_name(k, &p, errs);
        if let Some(v) = validate_quantity_value(q, &p, errs) {
            if let Some((lv, lq)) = limits.get(k.as_str()) {
                if v > *lv {
                    let lq = lq
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| lq.to_string());
                    invalid(
                        errs,
                        &p,
                        q.clone(),
                        format!("must be less than or equal to {k} limit of {lq}"),
                    );
                }
            }
        }
    }
}

fn validate_resource_name(name: &str, path: &str, errs: &mut Errs) {
    for m in is_qualified_name(name) {
        invalid(errs, path, json!(name), m);
    }
    if !name.contains('/') && !is_standard_container_resource(name) {
        invalid(
            errs,
            path,
            json!(name),
            "must be a standard resource for containers",
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn validate_container(
    c: &Value,
    path: &str,
    init: bool,
    volumes: &HashSet<String>,
    names: &mut HashSet<String>,
    host_network: bool,
    errs: &mut Errs,
) {
    let co = Some(c);
    let name = gstr(co, "name");
    if name.is_empty() {
        required(errs, &child(path, "name"), "");
    } else {
        for m in is_dns1123_label(name) {
            invalid(errs, &child(path, "name"), json!(name), m);
        }
        if !names.insert(name.to_string()) {
            duplicate(errs, &child(path, "name"), json!(name));
        }
    }
    let image = gstr(co, "image");
    if image.is_empty() {
        required(errs, &child(path, "image"), "");
    } else if image.trim() != image {
        invalid(
            errs,
            &child(path, "image"),
            json!(image),
            "must not have leading or trailing whitespace",
        );
    }
    check_enum(
        errs,
        co,
        "imagePullPolicy",
        path,
        &["Always", "IfNotPresent", "Never"],
        true,
    );
    match gstr(co, "terminationMessagePolicy") {
        "File" | "FallbackToLogsOnError" => {}
        "" => required(
            errs,
            &child(path, "terminationMessagePolicy"),
            "must be 'File' or 'FallbackToLogsOnError'",
        ),
        other => invalid(
            errs,
            &child(path, "terminationMessagePolicy"),
            json!(other),
            "must be 'File' or 'FallbackToLogsOnError'",
        ),
    }
    let sidecar = init && gstr(co, "restartPolicy") == "Always";
    if let Some(rp) = get(co, "restartPolicy") {
        if !init {
            forbidden(
                errs,
                &child(path, "restartPolicy"),
                "may not be set for non-init containers",
            );
        } else if rp.as_str() != Some("Always") {
            not_supported(errs, &child(path, "restartPolicy"), rp.clone(), &["Always"]);
        }
    }
    validate_ports(garr(co, "ports"), &child(path, "ports"), host_network, errs);
    validate_env(garr(co, "env"), &child(path, "env"), errs);
    for (i, ef) in garr(co, "envFrom").iter().enumerate() {
        let p = index(&child(path, "envFrom"), i);
        let e = Some(ef);
        let n = ["configMapRef", "secretRef"]
            .iter()
            .filter(|k| get(e, k).is_some())
            .count();
        if n == 0 {
            invalid(
                errs,
                &p,
                json!(""),
                "must specify one of: `configMapRef` or `secretRef`",
            );
        } else if n > 1 {
            invalid(
                errs,
                &p,
                json!(""),
                "may not have more than one field specified at a time",
            );
        }
        for k in ["configMapRef", "secretRef"] {
            if let Some(r) = get(e, k) {
                let rn = gstr(Some(r), "name");
                if rn.is_empty() {
                    required(errs, &child(&child(&p, k), "name"), "");
                } else {
                    for m in is_dns1123_subdomain(rn) {
                        invalid(errs, &child(&child(&p, k), "name"), json!(rn), m);
                    }
                }
            }
        }
        let prefix = gstr(e, "prefix");
        if !prefix.is_empty() {
            for m in is_relaxed_env_var_name(prefix) {
                invalid(errs, &child(&p, "prefix"), json!(prefix), m);
            }
        }
    }
    let mut mount_paths = HashSet::new();
    for (i, m) in garr(co, "volumeMounts").iter().enumerate() {
        let p = index(&child(path, "volumeMounts"), i);
        let mo = Some(m);
        let vn = gstr(mo, "name");
        if vn.is_empty() {
            required(errs, &child(&p, "name"), "");
        } else if !volumes.contains(vn) {
            not_found(errs, &child(&p, "name"), json!(vn));
        }
        let mp = gstr(mo, "mountPath");
        if mp.is_empty() {
            required(errs, &child(&p, "mountPath"), "");
        } else if !mount_paths.insert(mp.to_string()) {
            invalid(errs, &child(&p, "mountPath"), json!(mp), "must be unique");
        }
        let sp = gstr(mo, "subPath");
        if !sp.is_empty() {
            validate_relative_path(sp, &child(&p, "subPath"), errs);
        }
        if let Some(mprop) = get(mo, "mountPropagation") {
            let ok = ["None", "HostToContainer", "Bidirectional"];
            if !mprop.as_str().is_some_and(|s| ok.contains(&s)) {
                not_supported(errs, &child(&p, "mountPropagation"), mprop.clone(), &ok);
            }
        }
    }
    validate_resources(get(co, "resources"), &child(path, "resources"), errs);
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(pr) = get(co, probe) {
            let pp = child(path, probe);
            if init && !sidecar {
                forbidden(
                    errs,
                    &pp,
                    "may not be set for init containers without restartPolicy=Always",
                );
                continue;
            }
            validate_probe(pr, &pp, errs);
            if probe != "readinessProbe" {
                if let Some(n) = gint(Some(pr), "successThreshold") {
                    if n != 1 {
                        invalid(errs, &child(&pp, "successThreshold"), json!(n), "must be 1");
                    }
                }
            }
        }
    }
    if let Some(lc) = get(co, "lifecycle") {
        for h in ["postStart", "preStop"] {
            if let Some(hv) = get(Some(lc), h) {
                let hp = child(&child(path, "lifecycle"), h);
                validate_handler(hv, &hp, &["exec", "httpGet", "tcpSocket", "sleep"], errs);
            }
        }
    }
    if let Some(sc) = get(co, "securityContext") {
        validate_ids(Some(sc), &child(path, "securityContext"), errs);
        if gbool(Some(sc), "privileged")
            && get(Some(sc), "allowPrivilegeEscalation").and_then(Value::as_bool) == Some(false)
        {
            invalid(
                errs,
                &child(path, "securityContext"),
                sc.clone(),
                "cannot set `allowPrivilegeEscalation` to false and `privileged` to true",
            );
        }
    }
}

fn validate_handler(h: &Value, path: &str, kinds: &[&str], errs: &mut Errs) {
    let ho = Some(h);
    let present: Vec<&str> = kinds
        .iter()
        .copied()
        .filter(|k| get(ho, k).is_some())
        .collect();
    match present.len() {
        0 => {
            required(errs, path, "must specify a handler type");
            return;
        }
        1 => {}
        _ => {
            forbidden(
                errs,
                &child(path, present[1]),
                "may not specify more than 1 handler type",
            );
            return;
        }
    }
    let kp = child(path, present[0]);
    let hv = get(ho, present[0]);
    match present[0] {
        "exec" if garr(hv, "command").is_empty() => {
            required(errs, &child(&kp, "command"), "");
        }
        "httpGet" => {
            validate_port_ref(get(hv, "port"), &child(&kp, "port"), errs);
            let scheme = gstr(hv, "scheme");
            if !scheme.is_empty() && scheme != "HTTP" && scheme != "HTTPS" {
                not_supported(
                    errs,
                    &child(&kp, "scheme"),
                    json!(scheme),
                    &["HTTP", "HTTPS"],
                );
            }
            for (i, hd) in garr(hv, "httpHeaders").iter().enumerate() {
                let n = gstr(Some(hd), "name");
                let ok = !n.is_empty() && n.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-');
                if !ok {
                    invalid(
                        errs,
                        &child(&index(&child(&kp, "httpHeaders"), i), "name"),
                        json!(n),
                        regex_error(
                            "a valid HTTP header must consist of alphanumeric characters or '-'",
                            "[-A-Za-z0-9]+",
                            &["X-Header-Name"],
                        ),
                    );
                }
            }
        }
        "tcpSocket" => validate_port_ref(get(hv, "port"), &child(&kp, "port"), errs),
        "grpc" => {
            let port = gint(hv, "port").unwrap_or(0);
            if !(1..=65535).contains(&port) {
                invalid(
                    errs,
                    &child(&kp, "port"),
                    json!(port),
                    inclusive_range_error(1, 65535),
                );
            }
        }
        "sleep" if gint(hv, "seconds").is_some_and(|s| s < 0) => {
            invalid(
                errs,
                &child(&kp, "seconds"),
                json!(gint(hv, "seconds")),
                "must be greater than or equal to 0",
            );
        }
        _ => {}
    }
}

fn validate_port_ref(port: Option<&Value>, path: &str, errs: &mut Errs) {
    match port {
        Some(Value::Number(n)) => {
            let n = n.as_i64().unwrap_or(0);
            if !(1..=65535).contains(&n) {
                invalid(errs, path, json!(n), inclusive_range_error(1, 65535));
            }
        }
        Some(Value::String(s)) => {
            for m in is_valid_port_name(s) {
                invalid(errs, path, json!(s), m);
            }
        }
        _ => required(errs, path, ""),
    }
}

fn validate_probe(p: &Value, path: &str, errs: &mut Errs) {
    validate_handler(p, path, HANDLERS, errs);
    for k in [
        "initialDelaySeconds",
        "timeoutSeconds",
        "periodSeconds",
        "successThreshold",
        "failureThreshold",
    ] {
        nonnegative(errs, Some(p), k, path);
    }
    if let Some(n) = gint(Some(p), "terminationGracePeriodSeconds") {
        if n <= 0 {
            invalid(
                errs,
                &child(path, "terminationGracePeriodSeconds"),
                json!(n),
                "must be greater than 0",
            );
        }
    }
}

fn validate_ports(ports: &[Value], path: &str, host_network: bool, errs: &mut Errs) {
    let mut names = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let pp = index(path, i);
        let po = Some(p);
        let name = gstr(po, "name");
        if !name.is_empty() {
            for m in is_valid_port_name(name) {
                invalid(errs, &child(&pp, "name"), json!(name), m);
            }
            if !names.insert(name.to_string()) {
                duplicate(errs, &child(&pp, "name"), json!(name));
            }
        }
        let cp = gint(po, "containerPort").unwrap_or(0);
        if cp == 0 {
            required(errs, &child(&pp, "containerPort"), "");
        } else if !(1..=65535).contains(&cp) {
            invalid(
                errs,
                &child(&pp, "containerPort"),
                json!(cp),
                inclusive_range_error(1, 65535),
            );
        }
        let hp = gint(po, "hostPort").unwrap_or(0);
        if hp != 0 && !(1..=65535).contains(&hp) {
            invalid(
                errs,
                &child(&pp, "hostPort"),
                json!(hp),
                inclusive_range_error(1, 65535),
            );
        }
        if host_network && hp != 0 && hp != cp {
            invalid(
                errs,
                &child(&pp, "hostPort"),
                json!(hp),
                "must match `containerPort` when `hostNetwork` is true",
            );
        }
        check_enum(errs, po, "protocol", &pp, &["SCTP", "TCP", "UDP"], true);
    }
}

const ENV_FIELD_PATHS: &[&str] = &[
    "metadata.annotations",
    "metadata.labels",
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
];

fn validate_env(env: &[Value], path: &str, errs: &mut Errs) {
    for (i, e) in env.iter().enumerate() {
        let p = index(path, i);
        let eo = Some(e);
        let name = gstr(eo, "name");
        if name.is_empty() {
            required(errs, &child(&p, "name"), "");
        } else {
            for m in is_relaxed_env_var_name(name) {
                invalid(errs, &child(&p, "name"), json!(name), m);
            }
        }
        let Some(vf) = get(eo, "valueFrom") else {
            continue;
        };
        let vp = child(&p, "valueFrom");
        let kinds = [
            "fieldRef",
            "resourceFieldRef",
            "configMapKeyRef",
            "secretKeyRef",
            "fileKeyRef",
        ];
        let present: Vec<&str> = kinds
            .iter()
            .copied()
            .filter(|k| get(Some(vf), k).is_some())
            .collect();
        if !gstr(eo, "value").is_empty() && !present.is_empty() {
            invalid(
                errs,
                &vp,
                json!(""),
                "may not be specified when `value` is not empty",
            );
        }
        match present.len() {
            0 => {
                invalid(errs, &vp, json!(""), "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`");
                continue;
            }
            1 => {}
            _ => {
                invalid(
                    errs,
                    &vp,
                    json!(""),
                    "may not have more than one field specified at a time",
                );
                continue;
            }
        }
        let r = get(Some(vf), present[0]);
        let rp = child(&vp, present[0]);
        match present[0] {
            "fieldRef" => {
                if gstr(r, "apiVersion").is_empty() {
                    required(errs, &child(&rp, "apiVersion"), "");
                }
                let fp = gstr(r, "fieldPath");
                if fp.is_empty() {
                    required(errs, &child(&rp, "fieldPath"), "");
                } else {
                    let base = fp.split('[').next().unwrap_or("");
                    let subscripted = fp.contains('[');
                    let ok = if subscripted {
                        (base == "metadata.labels" || base == "metadata.annotations")
                            && fp.ends_with("']")
                    } else {
                        ENV_FIELD_PATHS.contains(&fp)
                            && fp != "metadata.labels"
                            && fp != "metadata.annotations"
                    };
                    if !ok {
                        not_supported(errs, &child(&rp, "fieldPath"), json!(fp), ENV_FIELD_PATHS);
                    }
                }
            }
            "resourceFieldRef" => {
                let res = gstr(r, "resource");
                let ok = [
                    "limits.cpu",
                    "limits.ephemeral-storage",
                    "limits.memory",
                    "requests.cpu",
                    "requests.ephemeral-storage",
                    "requests.memory",
                ];
                if res.is_empty() {
                    required(errs, &child(&rp, "resource"), "");
                } else if !ok.contains(&res)
                    && !res.starts_with("limits.hugepages-")
                    && !res.starts_with("requests.hugepages-")
                {
                    not_supported(errs, &child(&rp, "resource"), json!(res), &ok);
                }
            }
            "configMapKeyRef" | "secretKeyRef" => {
                if gstr(r, "name").is_empty() {
                    required(errs, &child(&rp, "name"), "");
                }
                let k = gstr(r, "key");
                if k.is_empty() {
                    required(errs, &child(&rp, "key"), "");
                } else {
                    for m in is_config_map_key(k) {
                        invalid(errs, &child(&rp, "key"), json!(k), m);
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{apply_defaults, validate_create, validate_update};

    fn pod(spec: Value) -> Value {
        let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"}, "spec": spec});
        apply_defaults("", "v1", "Pod", &mut p);
        p
    }

    fn errs_of(p: &Value) -> Vec<String> {
        validate_create("", "v1", "Pod", true, p)
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn complex_valid_pod_has_no_errors() {
        let p = pod(json!({
            "initContainers": [{"name": "init", "image": "busybox:1.36", "command": ["true"]},
                                {"name": "sidecar", "image": "envoy:1", "restartPolicy": "Always",
                                 "readinessProbe": {"tcpSocket": {"port": 9901}}}],
            "containers": [{
                "name": "web", "image": "nginx:1.27",
                "ports": [{"name": "http", "containerPort": 80}, {"containerPort": 53, "protocol": "UDP"}],
                "env": [{"name": "A", "value": "1"},
                        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                        {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                        {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}}],
                "envFrom": [{"configMapRef": {"name": "cm"}}],
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": 1, "memory": "128Mi"}},
                "volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "cfg", "mountPath": "/etc/cfg", "subPath": "a"}],
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "initialDelaySeconds": 3},
                "lifecycle": {"preStop": {"exec": {"command": ["sleep", "1"]}}},
                "securityContext": {"runAsUser": 1000}
            }],
            "volumes": [{"name": "data", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "cm"}},
                        {"name": "sec", "secret": {"secretName": "s", "items": [{"key": "a", "path": "a.txt"}]}}],
            "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}],
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "serviceAccountName": "builder",
            "activeDeadlineSeconds": 100
        }));
        assert_eq!(errs_of(&p), Vec::<String>::new());
    }

    #[test]
    fn container_errors() {
        let p = pod(json!({
            "containers": [
                {"name": "a", "image": "x", "imagePullPolicy": "Sometimes",
                 "ports": [{"containerPort": 70000, "protocol": "FOO"}, {"containerPort": 0}],
                 "volumeMounts": [{"name": "missing", "mountPath": "/m"}],
                 "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}},
                 "livenessProbe": {"periodSeconds": 3}},
                {"name": "a"}
            ],
            "restartPolicy": "Sometimes"
        }));
        let e = errs_of(&p);
        let expected = [
            "spec.containers[0].imagePullPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"IfNotPresent\", \"Never\"",
            "spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
            "spec.containers[0].ports[0].protocol: Unsupported value: \"FOO\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
            "spec.containers[0].ports[1].containerPort: Required value",
            "spec.containers[0].volumeMounts[0].name: Not found: \"missing\"",
            "spec.containers[0].resources.requests[cpu]: Invalid value: \"2\": must be less than or equal to cpu limit of 1",
            "spec.containers[0].livenessProbe: Required value: must specify a handler type",
            "spec.containers[1].name: Duplicate value: \"a\"",
            "spec.containers[1].image: Required value",
            "spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\"",
        ];
        assert_eq!(e, expected);
    }

    #[test]
    fn volumes_and_env() {
        let p = pod(json!({
            "containers": [{"name": "c", "image": "i", "env": [{"name": ""}, {"name": "A=B"},
                {"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.bogus"}}}]}],
            "volumes": [{"name": "v", "emptyDir": {}}, {"name": "v", "emptyDir": {}, "hostPath": {"path": "/x"}}, {"name": "Bad_Name", "secret": {}}]
        }));
        let e = errs_of(&p);
        assert!(
            e.contains(&"spec.volumes[1].name: Duplicate value: \"v\"".to_string()),
            "{e:?}"
        );
        assert!(
            e.contains(
                &"spec.volumes[1].emptyDir: Forbidden: may not specify more than 1 volume type"
                    .to_string()
            ),
            "{e:?}"
        );
        assert!(
            e.contains(&"spec.volumes[2].secret.secretName: Required value".to_string()),
            "{e:?}"
        );
        assert!(e.iter().any(|x| x.starts_with(
            "spec.volumes[2].name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 label"
        )));
        assert!(e.contains(&"spec.containers[0].env[0].name: Required value".to_string()));
        assert!(e.contains(&"spec.containers[0].env[1].name: Invalid value: \"A=B\": a valid environment variable name must consist only of printable ASCII characters other than '='".to_string()));
        assert!(e.iter().any(|x| x.starts_with("spec.containers[0].env[2].valueFrom.fieldRef.fieldPath: Unsupported value: \"spec.bogus\"")));
    }

    #[test]
    fn pod_update_allows_image_only() {
        let old = pod(json!({"containers": [{"name": "c", "image": "a"}]}));
        let mut new = old.clone();
        new["spec"]["containers"][0]["image"] = json!("b");
        assert!(validate_update("", "v1", "Pod", true, &new, &old).is_empty());
        new["spec"]["containers"][0]["name"] = json!("d");
        let e = validate_update("", "v1", "Pod", true, &new, &old);
        assert_eq!(e.len(), 1);
        assert!(e[0]
            .to_string()
            .starts_with("spec: Forbidden: pod updates may not change fields other than"));
    }
}
