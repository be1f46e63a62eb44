//! ObjectMeta, labels, annotations and label selectors.

use crate::names::{is_dns1123_label, is_qualified_name, is_valid_label_value, NameValidator};
use crate::util::*;
use serde_json::{json, Value};

const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

/// Validates `metadata` of a new or updated object.
pub(crate) fn validate_object_meta(
    meta: Option<&Value>,
    namespaced: bool,
    name_fn: NameValidator,
    path: &str,
    errs: &mut Errs,
) {
    let gen_name = gstr(meta, "generateName");
    if !gen_name.is_empty() {
        for m in name_fn(gen_name, true) {
            invalid(errs, &child(path, "generateName"), json!(gen_name), m);
        }
    }
    let name = gstr(meta, "name");
    if name.is_empty() {
        required(
            errs,
            &child(path, "name"),
            "name or generateName is required",
        );
    } else {
        for m in name_fn(name, false) {
            invalid(errs, &child(path, "name"), json!(name), m);
        }
    }
    let ns = gstr(meta, "namespace");
    if namespaced {
        if ns.is_empty() {
            required(errs, &child(path, "namespace"), "");
        } else {
            for m in is_dns1123_label(ns) {
                invalid(errs, &child(path, "namespace"), json!(ns), m);
            }
        }
    } else if !ns.is_empty() {
        forbidden(errs, &child(path, "namespace"), "not allowed on this type");
    }
    nonnegative(errs, meta, "generation", path);
    validate_labels(get(meta, "labels"), &child(path, "labels"), errs);
    validate_annotations(get(meta, "annotations"), &child(path, "annotations"), errs);
    validate_owner_references(meta, &child(path, "ownerReferences"), errs);
    validate_finalizers(garr(meta, "finalizers"), &child(path, "finalizers"), errs);
}

/// The immutable parts of `metadata` on update.
pub(crate) fn validate_object_meta_update(
    new: Option<&Value>,
    old: Option<&Value>,
    path: &str,
    errs: &mut Errs,
) {
    if get(old, "deletionTimestamp").is_some() {
        let old_f: Vec<&str> = garr(old, "finalizers")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let mut extra: Vec<&str> = garr(new, "finalizers")
            .iter()
            .filter_map(Value::as_str)
            .filter(|f| !old_f.contains(f))
            .collect();
        extra.sort();
        extra.dedup();
        if !extra.is_empty() {
            let list: Vec<String> = extra.iter().map(|s| crate::errors::go_quote(s)).collect();
            forbidden(
                errs,
                &child(path, "finalizers"),
                format!(
                    "no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}",
                    list.join(", ")
                ),
            );
        }
    }
    if let (Some(n), Some(o)) = (gint(new, "generation"), gint(old, "generation")) {
        if n < o {
            invalid(
                errs,
                &child(path, "generation"),
                json!(n),
                "must not be decremented",
            );
        }
    }
    for k in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        immutable(errs, get(new, k), get(old, k), &child(path, k));
    }
}

/// Label keys must be qualified names and values valid label values.
pub(crate) fn validate_labels(labels: Option<&Value>, path: &str, errs: &mut Errs) {
    let Some(map) = labels.and_then(Value::as_object) else {
        return;
    };
    for (k, v) in map {
        for m in is_qualified_name(k) {
            invalid(errs, path, json!(k), m);
        }
        let s = v.as_str().unwrap_or("");
        for m in is_valid_label_value(s) {
            invalid(errs, path, json!(s), m);
        }
    }
}

/// Annotation keys must be qualified names (case-insensitively); total size ≤ 256 KiB.
pub(crate) fn validate_annotations(ann: Option<&Value>, path: &str, errs: &mut Errs) {
    let Some(map) = ann.and_then(Value::as_object) else {
        return;
    };
    let mut total = 0usize;
    for (k, v) in map {
        for m in is_qualified_name(&k.to_lowercase()) {
            invalid(errs, path, json!(k), m);
        }
        total += k.len() + v.as_str().map(str::len).unwrap_or(0);
    }
    if total > TOTAL_ANNOTATION_SIZE_LIMIT {
        too_long(errs, path, TOTAL_ANNOTATION_SIZE_LIMIT);
    }
}

fn validate_owner_references(meta: Option<&Value>, path: &str, errs: &mut Errs) {
    let refs = garr(meta, "ownerReferences");
    let mut first_controller = String::new();
    for r in refs {
        let r = Some(r);
        let api_version = gstr(r, "apiVersion");
        let version = api_version.rsplit('/').next().unwrap_or("");
        if version.is_empty() {
            invalid(
                errs,
                &child(path, "apiVersion"),
                json!(api_version),
                "version must not be empty",
            );
        }
        let kind = gstr(r, "kind");
        if kind.is_empty() {
            invalid(
                errs,
                &child(path, "kind"),
                json!(kind),
                "kind must not be empty",
            );
        }
        if gstr(r, "name").is_empty() {
            invalid(
                errs,
                &child(path, "name"),
                json!(""),
                "name must not be empty",
            );
        }
        if gstr(r, "uid").is_empty() {
            invalid(
                errs,
                &child(path, "uid"),
                json!(""),
                "uid must not be empty",
            );
        }
        if api_version == "v1" && kind == "Event" {
            invalid(
                errs,
                path,
                r.cloned().unwrap_or(Value::Null),
                "/v1, Kind=Event is disallowed from being an owner",
            );
        }
        if gbool(r, "controller") {
            let cur = format!("{}/{}", kind, gstr(r, "name"));
            if first_controller.is_empty() {
                first_controller = cur;
            } else {
                invalid(
                    errs,
                    path,
                    Value::Array(refs.to_vec()),
                    format!("Only one reference can have Controller set to true. Found \"true\" in references for {first_controller} and {cur}"),
                );
            }
        }
    }
}

fn validate_finalizers(finalizers: &[Value], path: &str, errs: &mut Errs) {
    let mut orphan = false;
    let mut foreground = false;
    for f in finalizers {
        let s = f.as_str().unwrap_or("");
        for m in is_qualified_name(s) {
            invalid(errs, path, json!(s), m);
        }
        orphan |= s == "orphan";
        foreground |= s == "foregroundDeletion";
    }
    if orphan && foreground {
        invalid(
            errs,
            path,
            Value::Array(finalizers.to_vec()),
            "finalizer orphan and foregroundDeletion cannot be both set",
        );
    }
}

/// Validates a `LabelSelector` (matchLabels / matchExpressions).
pub(crate) fn validate_label_selector(sel: &Value, path: &str, errs: &mut Errs) {
    let s = Some(sel);
    validate_labels(get(s, "matchLabels"), &child(path, "matchLabels"), errs);
    for (i, expr) in garr(s, "matchExpressions").iter().enumerate() {
        let p = index(&child(path, "matchExpressions"), i);
        let e = Some(expr);
        let values = garr(e, "values");
        match gstr(e, "operator") {
            "In" | "NotIn" => {
                if values.is_empty() {
                    required(
                        errs,
                        &child(&p, "values"),
                        "must be specified when `operator` is 'In' or 'NotIn'",
                    );
                }
            }
            "Exists" | "DoesNotExist" => {
                if !values.is_empty() {
                    forbidden(
                        errs,
                        &child(&p, "values"),
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    );
                }
            }
            op => invalid(
                errs,
                &child(&p, "operator"),
                json!(op),
                "not a valid selector operator",
            ),
        }
        let k = gstr(e, "key");
        for m in is_qualified_name(k) {
            invalid(errs, &child(&p, "key"), json!(k), m);
        }
    }
}

/// Whether a selector selects nothing and everything alike (no requirements).
pub(crate) fn selector_is_empty(sel: &Value) -> bool {
    gobj(Some(sel), "matchLabels").is_empty() && garr(Some(sel), "matchExpressions").is_empty()
}

/// Whether a `LabelSelector` matches a label set; an absent or invalid selector (the
/// latter reported by [`validate_label_selector`]) counts as matching, as upstream skips
/// the check then.
pub(crate) fn selector_matches(sel: &Value, labels: Option<&Value>) -> bool {
    sel.is_null()
        || rk3s_core::LabelSelector::from_json(sel).map_or(true, |s| s.matches_json(labels))
}

/// Template metadata: labels and annotations.
pub(crate) fn validate_template_meta(meta: Option<&Value>, path: &str, errs: &mut Errs) {
    validate_labels(get(meta, "labels"), &child(path, "labels"), errs);
    validate_annotations(get(meta, "annotations"), &child(path, "annotations"), errs);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::name_validator_for;

    fn run(meta: Value, namespaced: bool, kind: &str) -> Vec<String> {
        let mut e = Vec::new();
        validate_object_meta(
            Some(&meta),
            namespaced,
            name_validator_for("", kind),
            "metadata",
            &mut e,
        );
        e.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn name_and_namespace_rules() {
        assert!(run(json!({"name": "ok", "namespace": "default"}), true, "Pod").is_empty());
        assert_eq!(
            run(json!({"namespace": "default"}), true, "Pod"),
            vec!["metadata.name: Required value: name or generateName is required"]
        );
        assert_eq!(
            run(json!({"name": "a"}), true, "Pod"),
            vec!["metadata.namespace: Required value"]
        );
        assert_eq!(
            run(json!({"name": "a", "namespace": "x"}), false, "Node"),
            vec!["metadata.namespace: Forbidden: not allowed on this type"]
        );
        let e = run(
            json!({"name": "Foo_Bar", "namespace": "default"}),
            true,
            "Pod",
        );
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("metadata.name: Invalid value: \"Foo_Bar\": a lowercase RFC 1123 subdomain must consist of"));
        assert!(
            run(json!({"name": "a.b"}), false, "Namespace")[0].ends_with("must not contain dots")
        );
    }

    #[test]
    fn labels_annotations_finalizers() {
        let e = run(
            json!({"name": "a", "namespace": "d", "labels": {"a b": "ok", "k": "-bad"}, "annotations": {"x/y/z": ""}, "finalizers": ["a/b/c"]}),
            true,
            "Pod",
        );
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(e[0].starts_with("metadata.labels: Invalid value: \"a b\": name part must consist"));
        assert!(e[1].starts_with("metadata.labels: Invalid value: \"-bad\": a valid label must be"));
        assert!(e[2].starts_with("metadata.annotations: Invalid value: \"x/y/z\""));
        assert!(e[3].starts_with("metadata.finalizers: Invalid value: \"a/b/c\""));
        let big = "x".repeat(300 * 1024);
        let e = run(
            json!({"name": "a", "namespace": "d", "annotations": {"k": big}}),
            true,
            "Pod",
        );
        assert_eq!(
            e,
            vec!["metadata.annotations: Too long: may not be more than 262144 bytes"]
        );
    }

    #[test]
    fn update_immutables() {
        let mut e = Vec::new();
        let old = json!({"name": "a", "uid": "1"});
        let new = json!({"name": "a", "uid": "2"});
        validate_object_meta_update(Some(&new), Some(&old), "metadata", &mut e);
        assert_eq!(
            e[0].to_string(),
            "metadata.uid: Invalid value: \"2\": field is immutable"
        );
    }

    #[test]
    fn selectors() {
        let sel = json!({"matchLabels": {"app": "a"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["x"]}]});
        assert!(selector_matches(
            &sel,
            Some(&json!({"app": "a", "tier": "x"}))
        ));
        assert!(!selector_matches(&sel, Some(&json!({"app": "a"}))));
        let mut e = Vec::new();
        validate_label_selector(
            &json!({"matchExpressions": [{"key": "k", "operator": "In"}]}),
            "spec.selector",
            &mut e,
        );
        assert_eq!(
            e[0].to_string(),
            "spec.selector.matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'"
        );
    }
}
