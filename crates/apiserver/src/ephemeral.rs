//! The `pods/ephemeralcontainers` subresource (`kubectl debug`): an update or patch of it
//! changes only `spec.ephemeralContainers` of the pod (everything else is kept as stored,
//! as upstream's `dropNonEphemeralContainerUpdates`), and ephemeral containers can only be
//! added: never removed or changed once there. New ones are validated with upstream's
//! rules and messages (name, image, target container, fields an ephemeral container may
//! not set).

use rk3s_validation::{ErrorKind, FieldError};
use serde_json::Value;

/// Fields of a container that an ephemeral container may not set.
const FORBIDDEN_FIELDS: &[&str] = &[
    "ports",
    "resources",
    "resizePolicy",
    "lifecycle",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "restartPolicy",
];

/// The pod as stored (`old`) with the ephemeral containers of `new`.
pub fn prepare_update(old: &Value, new: &Value) -> Value {
    let mut o = old.clone();
    let eph = new
        .pointer("/spec/ephemeralContainers")
        .filter(|e| !e.is_null())
        .cloned();
    if let Some(spec) = o.get_mut("spec").and_then(Value::as_object_mut) {
        match eph {
            Some(e) => {
                spec.insert("ephemeralContainers".into(), e);
            }
            None => {
                spec.remove("ephemeralContainers");
            }
        }
    }
    o
}

fn err(
    kind: ErrorKind,
    field: String,
    value: Option<Value>,
    detail: impl Into<String>,
) -> FieldError {
    FieldError {
        kind,
        field,
        value,
        detail: detail.into(),
    }
}

fn list<'a>(pod: &'a Value, key: &str) -> &'a [Value] {
    pod.pointer(&format!("/spec/{key}"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn name_of(c: &Value) -> &str {
    c.get("name").and_then(Value::as_str).unwrap_or("")
}

/// Validates an update through `pods/ephemeralcontainers` (upstream's
/// `ValidatePodEphemeralContainersUpdate`): the pod as a whole, the new ephemeral
/// containers, and that existing ones are neither removed nor changed.
pub fn validate_update(new: &Value, old: &Value) -> Vec<FieldError> {
    let is_mirror = old
        .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
        .is_some();
    if is_mirror {
        return vec![err(
            ErrorKind::Forbidden,
            String::new(),
            None,
            "static pods do not support ephemeral containers",
        )];
    }
    // The rest of the pod is checked as an update that did not touch ephemeral containers.
    let mut old_like = old.clone();
    if let (Some(spec), Some(e)) = (
        old_like.get_mut("spec").and_then(Value::as_object_mut),
        new.pointer("/spec/ephemeralContainers"),
    ) {
        spec.insert("ephemeralContainers".into(), e.clone());
    }
    let mut errs = rk3s_validation::validate_update("", "v1", "Pod", true, new, &old_like);
    errs.extend(validate_ephemeral_containers(new));
    let base = "spec.ephemeralContainers".to_string();
    for o in list(old, "ephemeralContainers") {
        let name = name_of(o);
        match list(new, "ephemeralContainers")
            .iter()
            .find(|n| name_of(n) == name)
        {
            None => errs.push(err(
                ErrorKind::Forbidden,
                base.clone(),
                None,
                format!("existing ephemeral containers {name:?} may not be removed\n"),
            )),
            Some(n) if n != o => errs.push(err(
                ErrorKind::Forbidden,
                base.clone(),
                None,
                format!("existing ephemeral containers {name:?} may not be changed\n"),
            )),
            Some(_) => {}
        }
    }
    errs
}

/// The checks of upstream's `validateEphemeralContainers` that matter here.
fn validate_ephemeral_containers(pod: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut names: std::collections::HashSet<&str> = list(pod, "containers")
        .iter()
        .chain(list(pod, "initContainers"))
        .map(name_of)
        .collect();
    let targets = names.clone();
    for (i, c) in list(pod, "ephemeralContainers").iter().enumerate() {
        let path = format!("spec.ephemeralContainers[{i}]");
        let name = name_of(c);
        if name.is_empty() {
            errs.push(err(ErrorKind::Required, format!("{path}.name"), None, ""));
        } else {
            for msg in rk3s_validation::is_dns1123_label(name) {
                errs.push(err(
                    ErrorKind::Invalid,
                    format!("{path}.name"),
                    Some(Value::from(name)),
                    msg,
                ));
            }
            if !names.insert(name) {
                errs.push(err(
                    ErrorKind::Duplicate,
                    format!("{path}.name"),
                    Some(Value::from(name)),
                    "",
                ));
            }
        }
        if c.get("image")
            .and_then(Value::as_str)
            .is_none_or(|i| i.trim().is_empty())
        {
            errs.push(err(ErrorKind::Required, format!("{path}.image"), None, ""));
        }
        if let Some(t) = c
            .get("targetContainerName")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            if !targets.contains(t) {
                errs.push(err(
                    ErrorKind::NotFound,
                    format!("{path}.targetContainerName"),
                    Some(Value::from(t)),
                    "",
                ));
            }
        }
        for f in FORBIDDEN_FIELDS {
            let set = match c.get(*f) {
                None | Some(Value::Null) => false,
                Some(Value::Array(a)) => !a.is_empty(),
                Some(Value::Object(o)) => !o.is_empty(),
                Some(_) => true,
            };
            if set {
                errs.push(err(
                    ErrorKind::Forbidden,
                    format!("{path}.{f}"),
                    None,
                    "cannot be set for an Ephemeral Container",
                ));
            }
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(eph: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default", "uid": "u1", "resourceVersion": "5", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "app", "image": "busybox", "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"}],
                     "restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler", "terminationGracePeriodSeconds": 30,
                     "ephemeralContainers": eph},
            "status": {"phase": "Running"}
        })
    }

    fn dbg(name: &str) -> Value {
        json!({"name": name, "image": "busybox", "targetContainerName": "app", "stdin": true, "tty": true,
               "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"})
    }

    #[test]
    fn only_ephemeral_containers_change() {
        let old = pod(json!([]));
        let mut new = pod(json!([dbg("d1")]));
        new["spec"]["containers"][0]["image"] = json!("other");
        new["status"] = json!({"phase": "Failed"});
        new["metadata"]["labels"] = json!({"x": "y"});
        let out = prepare_update(&old, &new);
        assert_eq!(out["spec"]["ephemeralContainers"], json!([dbg("d1")]));
        assert_eq!(out["spec"]["containers"][0]["image"], "busybox");
        assert_eq!(out["status"]["phase"], "Running");
        assert!(out["metadata"].get("labels").is_none());
        assert!(
            validate_update(&out, &old).is_empty(),
            "{:?}",
            validate_update(&out, &old)
        );
    }

    #[test]
    fn existing_ones_may_not_be_removed_or_changed() {
        let old = pod(json!([dbg("d1")]));
        let errs = validate_update(&prepare_update(&old, &pod(json!([dbg("d2")]))), &old);
        assert_eq!(errs.iter().map(|e| e.to_string()).collect::<Vec<_>>(), vec!["spec.ephemeralContainers: Forbidden: existing ephemeral containers \"d1\" may not be removed\n"]);
        let mut changed = dbg("d1");
        changed["image"] = json!("alpine");
        let errs = validate_update(&prepare_update(&old, &pod(json!([changed]))), &old);
        assert_eq!(errs.len(), 1);
        assert!(errs[0].to_string().starts_with("spec.ephemeralContainers: Forbidden: existing ephemeral containers \"d1\" may not be changed"), "{}", errs[0]);
        assert!(validate_update(
            &prepare_update(&old, &pod(json!([dbg("d1"), dbg("d2")]))),
            &old
        )
        .is_empty());
    }

    #[test]
    fn new_ones_are_validated() {
        let old = pod(json!([]));
        let mut bad = dbg("app");
        bad["targetContainerName"] = json!("nope");
        bad["ports"] = json!([{"containerPort": 80}]);
        bad["image"] = json!("");
        let errs: Vec<String> = validate_update(&prepare_update(&old, &pod(json!([bad]))), &old)
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            errs,
            vec![
                "spec.ephemeralContainers[0].name: Duplicate value: \"app\"",
                "spec.ephemeralContainers[0].image: Required value",
                "spec.ephemeralContainers[0].targetContainerName: Not found: \"nope\"",
                "spec.ephemeralContainers[0].ports: Forbidden: cannot be set for an Ephemeral Container",
            ]
        );
        let mut mirror = old.clone();
        mirror["metadata"]["annotations"] = json!({"kubernetes.io/config.mirror": "x"});
        let errs = validate_update(&prepare_update(&mirror, &pod(json!([dbg("d")]))), &mirror);
        assert_eq!(
            errs[0].to_string(),
            ": Forbidden: static pods do not support ephemeral containers"
        );
    }
}
