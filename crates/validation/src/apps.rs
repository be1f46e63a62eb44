//! apps/v1 workloads: Deployment, ReplicaSet, StatefulSet, DaemonSet.

use crate::errors::GO_REPR;
use crate::meta::{selector_is_empty, selector_matches, validate_label_selector};
use crate::pod::validate_pod_template_spec;
use crate::util::*;
use serde_json::{json, Value};

/// Go's `%#v` of a `metav1.LabelSelector` value, wrapped for verbatim rendering.
pub(crate) fn go_label_selector(sel: Option<&Value>) -> Value {
    let Some(sel) = sel else { return Value::Null };
    let s = Some(sel);
    let labels = gobj(s, "matchLabels");
    let ml = if labels.is_empty() && get(s, "matchLabels").is_none() {
        "map[string]string(nil)".to_string()
    } else {
        let mut kv: Vec<(&String, &Value)> = labels;
        kv.sort_by(|a, b| a.0.cmp(b.0));
        let items: Vec<String> = kv
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}:{}",
                    crate::errors::go_quote(k),
                    crate::errors::go_quote(v.as_str().unwrap_or(""))
                )
            })
            .collect();
        format!("map[string]string{{{}}}", items.join(", "))
    };
    let exprs = garr(s, "matchExpressions");
    let me = if exprs.is_empty() {
        "[]v1.LabelSelectorRequirement(nil)".to_string()
    } else {
        let items: Vec<String> = exprs
            .iter()
            .map(|e| {
                let vals: Vec<String> = garr(Some(e), "values")
                    .iter()
                    .map(|v| crate::errors::go_quote(v.as_str().unwrap_or("")))
                    .collect();
                let vals = if vals.is_empty() {
                    "[]string(nil)".to_string()
                } else {
                    format!("[]string{{{}}}", vals.join(", "))
                };
                format!(
                    "v1.LabelSelectorRequirement{{Key:{}, Operator:{}, Values:{}}}",
                    crate::errors::go_quote(gstr(Some(e), "key")),
                    crate::errors::go_quote(gstr(Some(e), "operator")),
                    vals
                )
            })
            .collect();
        format!("[]v1.LabelSelectorRequirement{{{}}}", items.join(", "))
    };
    json!({ GO_REPR: format!("v1.LabelSelector{{MatchLabels:{ml}, MatchExpressions:{me}}}") })
}

/// Selector required + valid + non-empty, and matching the template's labels.
fn validate_selector_and_template(spec: Option<&Value>, what: &str, errs: &mut Errs) -> bool {
    let sel = get(spec, "selector");
    match sel {
        None => {
            required(errs, "spec.selector", "");
            false
        }
        Some(sel) => {
            validate_label_selector(sel, "spec.selector", errs);
            if selector_is_empty(sel) {
                invalid(
                    errs,
                    "spec.selector",
                    go_label_selector(Some(sel)),
                    format!("empty selector is invalid for {what}"),
                );
                return false;
            }
            true
        }
    }
}

/// Template rules shared by the apps controllers (restartPolicy Always, no deadline).
pub(crate) fn validate_controller_template(
    spec: Option<&Value>,
    check_selector: bool,
    errs: &mut Errs,
) {
    let tmpl = get(spec, "template");
    let Some(t) = tmpl else {
        required(errs, "spec.template", "");
        return;
    };
    if check_selector {
        if let Some(sel) = get(spec, "selector") {
            let labels = get(get(Some(t), "metadata"), "labels");
            if !selector_matches(sel, labels) {
                invalid(
                    errs,
                    "spec.template.metadata.labels",
                    labels.cloned().unwrap_or(json!({})),
                    "`selector` does not match template `labels`",
                );
            }
        }
    }
    validate_pod_template_spec(Some(t), "spec.template", errs);
    let tspec = get(Some(t), "spec");
    let rp = gstr(tspec, "restartPolicy");
    if rp != "Always" {
        not_supported(
            errs,
            "spec.template.spec.restartPolicy",
            json!(rp),
            &["Always"],
        );
    }
    if let Some(ads) = get(tspec, "activeDeadlineSeconds") {
        invalid(
            errs,
            "spec.template.spec.activeDeadlineSeconds",
            ads.clone(),
            "activeDeadlineSeconds in ReplicaSet is not Supported",
        );
    }
}

fn validate_rolling(ru: Option<&Value>, path: &str, errs: &mut Errs) {
    let mu = get(ru, "maxUnavailable");
    let ms = get(ru, "maxSurge");
    for (k, v) in [("maxUnavailable", mu), ("maxSurge", ms)] {
        if let Some(v) = v {
            validate_int_or_percent(errs, v, &child(path, k));
            if percent_of(v).is_some_and(|p| p > 100) {
                invalid(
                    errs,
                    &child(path, k),
                    v.clone(),
                    "must not be greater than 100%",
                );
            }
        }
    }
    let zero = |v: Option<&Value>| v.is_none_or(|v| v == &json!(0) || percent_of(v) == Some(0));
    if zero(mu) && zero(ms) {
        invalid(
            errs,
            &child(path, "maxUnavailable"),
            mu.cloned().unwrap_or(json!(0)),
            "may not be 0 when `maxSurge` is 0",
        );
    }
}

/// Deployment.
pub(crate) fn validate_deployment(obj: &Value, old: Option<&Value>, errs: &mut Errs) {
    let spec = get(Some(obj), "spec");
    nonnegative(errs, spec, "replicas", "spec");
    let sel_ok = validate_selector_and_template(spec, "deployment", errs);
    validate_controller_template(spec, sel_ok, errs);
    let strategy = get(spec, "strategy");
    let st = gstr(strategy, "type");
    match st {
        "Recreate" => {
            if get(strategy, "rollingUpdate").is_some() {
                forbidden(
                    errs,
                    "spec.strategy.rollingUpdate",
                    "may not be specified when strategy `type` is 'Recreate'",
                );
            }
        }
        "RollingUpdate" => {
            if get(strategy, "rollingUpdate").is_some() {
                validate_rolling(
                    get(strategy, "rollingUpdate"),
                    "spec.strategy.rollingUpdate",
                    errs,
                );
            }
        }
        "" => required(errs, "spec.strategy.type", ""),
        other => not_supported(
            errs,
            "spec.strategy.type",
            json!(other),
            &["Recreate", "RollingUpdate"],
        ),
    }
    nonnegative(errs, spec, "revisionHistoryLimit", "spec");
    nonnegative(errs, spec, "minReadySeconds", "spec");
    if let Some(pds) = gint(spec, "progressDeadlineSeconds") {
        if pds < 0 {
            invalid(
                errs,
                "spec.progressDeadlineSeconds",
                json!(pds),
                "must be greater than or equal to 0",
            );
        } else if pds <= gint(spec, "minReadySeconds").unwrap_or(0) {
            invalid(
                errs,
                "spec.progressDeadlineSeconds",
                json!(pds),
                "must be greater than minReadySeconds",
            );
        }
    }
    if let Some(old) = old {
        selector_immutable(spec, get(Some(old), "spec"), errs);
    }
}

fn selector_immutable(new: Option<&Value>, old: Option<&Value>, errs: &mut Errs) {
    let (n, o) = (get(new, "selector"), get(old, "selector"));
    if !semantic_eq(n, o) {
        invalid(
            errs,
            "spec.selector",
            go_label_selector(n),
            "field is immutable",
        );
    }
}

/// ReplicaSet.
pub(crate) fn validate_replica_set(obj: &Value, old: Option<&Value>, errs: &mut Errs) {
    let spec = get(Some(obj), "spec");
    nonnegative(errs, spec, "replicas", "spec");
    nonnegative(errs, spec, "minReadySeconds", "spec");
    let sel_ok = validate_selector_and_template(spec, "deployment", errs);
    validate_controller_template(spec, sel_ok, errs);
    if let Some(old) = old {
        selector_immutable(spec, get(Some(old), "spec"), errs);
    }
}

/// StatefulSet.
pub(crate) fn validate_stateful_set(obj: &Value, old: Option<&Value>, errs: &mut Errs) {
    let spec = get(Some(obj), "spec");
    match gstr(spec, "podManagementPolicy") {
        "OrderedReady" | "Parallel" => {}
        "" => required(errs, "spec.podManagementPolicy", ""),
        other => invalid(
            errs,
            "spec.podManagementPolicy",
            json!(other),
            "must be 'OrderedReady' or 'Parallel'",
        ),
    }
    let us = get(spec, "updateStrategy");
    match gstr(us, "type") {
        "RollingUpdate" => {
            let ru = get(us, "rollingUpdate");
            nonnegative(errs, ru, "partition", "spec.updateStrategy.rollingUpdate");
            if let Some(mu) = get(ru, "maxUnavailable") {
                validate_int_or_percent(
                    errs,
                    mu,
                    "spec.updateStrategy.rollingUpdate.maxUnavailable",
                );
            }
        }
        "OnDelete" => {
            if get(us, "rollingUpdate").is_some() {
                invalid(
                    errs,
                    "spec.updateStrategy.rollingUpdate",
                    get(us, "rollingUpdate").cloned().unwrap_or(Value::Null),
                    "only allowed for updateStrategy 'RollingUpdate'",
                );
            }
        }
        "" => required(errs, "spec.updateStrategy", ""),
        other => invalid(
            errs,
            "spec.updateStrategy",
            json!(other),
            "must be 'RollingUpdate' or 'OnDelete'",
        ),
    }
    for k in ["whenDeleted", "whenScaled"] {
        let p = get(spec, "persistentVolumeClaimRetentionPolicy");
        if p.is_some() {
            check_enum(
                errs,
                p,
                k,
                "spec.persistentVolumeClaimRetentionPolicy",
                &["Retain", "Delete"],
                true,
            );
        }
    }
    nonnegative(errs, spec, "replicas", "spec");
    nonnegative(errs, spec, "minReadySeconds", "spec");
    nonnegative(errs, spec, "revisionHistoryLimit", "spec");
    if let Some(o) = get(spec, "ordinals") {
        nonnegative(errs, Some(o), "start", "spec.ordinals");
    }
    let sel_ok = validate_selector_and_template(spec, "statefulset", errs);
    validate_controller_template(spec, sel_ok, errs);
    for (i, t) in garr(spec, "volumeClaimTemplates").iter().enumerate() {
        let p = index("spec.volumeClaimTemplates", i);
        crate::core::validate_pvc_spec(get(Some(t), "spec"), &child(&p, "spec"), errs);
    }
    if let Some(old) = old {
        let mut masked_old = get(Some(old), "spec").cloned().unwrap_or(json!({}));
        if let (Some(m), Some(n)) = (masked_old.as_object_mut(), spec.and_then(Value::as_object)) {
            for k in [
                "replicas",
                "ordinals",
                "template",
                "updateStrategy",
                "persistentVolumeClaimRetentionPolicy",
                "minReadySeconds",
            ] {
                match n.get(k) {
                    Some(v) => {
                        m.insert(k.into(), v.clone());
                    }
                    None => {
                        m.remove(k);
                    }
                }
            }
        }
        if !semantic_eq(Some(&masked_old), spec) {
            forbidden(
                errs,
                "spec",
                "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
            );
        }
    }
}

/// DaemonSet.
pub(crate) fn validate_daemon_set(obj: &Value, old: Option<&Value>, errs: &mut Errs) {
    let spec = get(Some(obj), "spec");
    let sel_ok = validate_selector_and_template(spec, "daemonset", errs);
    validate_controller_template(spec, sel_ok, errs);
    nonnegative(errs, spec, "minReadySeconds", "spec");
    nonnegative(errs, spec, "revisionHistoryLimit", "spec");
    let us = get(spec, "updateStrategy");
    match gstr(us, "type") {
        "OnDelete" => {}
        "RollingUpdate" => {
            if let Some(ru) = get(us, "rollingUpdate") {
                validate_rolling(Some(ru), "spec.updateStrategy.rollingUpdate", errs);
            } else {
                required(errs, "spec.updateStrategy.rollingUpdate", "");
            }
        }
        "" => required(errs, "spec.updateStrategy.type", ""),
        other => not_supported(
            errs,
            "spec.updateStrategy.type",
            json!(other),
            &["OnDelete", "RollingUpdate"],
        ),
    }
    if let Some(old) = old {
        selector_immutable(spec, get(Some(old), "spec"), errs);
    }
}

#[cfg(test)]
mod tests {
    use crate::{apply_defaults, validate_create, validate_update, ErrorKind};
    use serde_json::{json, Value};

    fn deployment(container: Value) -> Value {
        let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [container]}}}});
        apply_defaults("apps", "v1", "Deployment", &mut d);
        d
    }

    #[test]
    fn deployment_without_image() {
        let d = deployment(json!({"name": "web"}));
        let e = validate_create("apps", "v1", "Deployment", true, &d);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].field, "spec.template.spec.containers[0].image");
        assert_eq!(e[0].kind, ErrorKind::Required);
        assert_eq!(e[0].message(), "Required value");
        assert_eq!(e[0].reason(), "FieldValueRequired");
    }

    #[test]
    fn valid_deployment_and_bad_name() {
        let mut d = deployment(json!({"name": "web", "image": "nginx"}));
        assert!(validate_create("apps", "v1", "Deployment", true, &d).is_empty());
        d["metadata"]["name"] = json!("Foo_Bar");
        let e = validate_create("apps", "v1", "Deployment", true, &d);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].to_string(), "metadata.name: Invalid value: \"Foo_Bar\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')");
    }

    #[test]
    fn selector_mismatch_and_restart_policy() {
        let mut d = deployment(json!({"name": "web", "image": "nginx"}));
        d["spec"]["template"]["metadata"]["labels"] = json!({"app": "other"});
        d["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
        let e: Vec<String> = validate_create("apps", "v1", "Deployment", true, &d)
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(e, vec![
            "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"other\"}: `selector` does not match template `labels`",
            "spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\"",
        ]);
    }

    #[test]
    fn selector_required_and_replicas() {
        let mut d = deployment(json!({"name": "web", "image": "nginx"}));
        d["spec"]["replicas"] = json!(-1);
        d["spec"].as_object_mut().map(|s| s.remove("selector"));
        let e: Vec<String> = validate_create("apps", "v1", "Deployment", true, &d)
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            e,
            vec![
                "spec.replicas: Invalid value: -1: must be greater than or equal to 0",
                "spec.selector: Required value",
            ]
        );
    }

    #[test]
    fn immutable_selector() {
        let old = deployment(json!({"name": "web", "image": "nginx"}));
        let mut new = old.clone();
        new["spec"]["selector"] = json!({"matchLabels": {"app": "web", "v": "2"}});
        new["spec"]["template"]["metadata"]["labels"] = json!({"app": "web", "v": "2"});
        let e: Vec<String> = validate_update("apps", "v1", "Deployment", true, &new, &old)
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(e, vec!["spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"web\", \"v\":\"2\"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable"]);
        let mut scaled = old.clone();
        scaled["spec"]["replicas"] = json!(3);
        assert!(validate_update("apps", "v1", "Deployment", true, &scaled, &old).is_empty());
    }

    #[test]
    fn rolling_update_zero_zero() {
        let mut d = deployment(json!({"name": "web", "image": "nginx"}));
        d["spec"]["strategy"]["rollingUpdate"] = json!({"maxUnavailable": 0, "maxSurge": "0%"});
        let e: Vec<String> = validate_create("apps", "v1", "Deployment", true, &d)
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(e, vec!["spec.strategy.rollingUpdate.maxUnavailable: Invalid value: 0: may not be 0 when `maxSurge` is 0"]);
    }

    #[test]
    fn statefulset_and_daemonset() {
        let tmpl = json!({"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
        let mut s = json!({"metadata": {"name": "s", "namespace": "d"}, "spec": {"selector": {"matchLabels": {"a": "b"}}, "serviceName": "s", "template": tmpl}});
        apply_defaults("apps", "v1", "StatefulSet", &mut s);
        assert!(validate_create("apps", "v1", "StatefulSet", true, &s).is_empty());
        let mut s2 = s.clone();
        s2["spec"]["serviceName"] = json!("other");
        let e = validate_update("apps", "v1", "StatefulSet", true, &s2, &s);
        assert_eq!(e.len(), 1);
        assert!(e[0]
            .to_string()
            .starts_with("spec: Forbidden: updates to statefulset spec for fields other than"));
        let mut ds = json!({"metadata": {"name": "s", "namespace": "d"}, "spec": {"selector": {}, "template": tmpl}});
        apply_defaults("apps", "v1", "DaemonSet", &mut ds);
        let e: Vec<String> = validate_create("apps", "v1", "DaemonSet", true, &ds)
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(e, vec!["spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string(nil), MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: empty selector is invalid for daemonset"]);
    }
}
