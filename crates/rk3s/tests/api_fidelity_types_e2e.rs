//! API fidelity of built-in objects' types (issue 11, items 2 and 3), over raw HTTPS,
//! with the real kubectl and (when available) the Python `kubernetes` client:
//! - a value of the wrong JSON type is refused as upstream's typed decoding refuses it
//!   (create/update: 400 `K in version "v" cannot be handled as a K: json: cannot
//!   unmarshal ...`; JSON/merge/strategic patches: 422 on `patch`; server-side apply and
//!   `scale` too) and never stored, so one bad manifest cannot poison a namespace for
//!   typed clients;
//! - explicit nulls are dropped before the object is stored and fields are tracked;
//! - status fields upstream's structs always encode (item 4: no `omitempty`) are there
//!   with their zero values (a new StatefulSet's `replicas`/`availableReplicas`, ...).
//!
//! The Python check runs with `RK3S_TEST_KUBERNETES_PYTHON` (a Python with PyPI's
//! `kubernetes`), else with `python3` when it has the package, else it is skipped.

mod common;

use common::http::{Conn, Creds};
use common::Cluster;
use serde_json::{json, Value};

const JSON: &str = "application/json";

fn conn(c: &Cluster) -> Conn {
    Conn::connect(&Creds::from_kubeconfig(&c.kubeconfig, c.port)).expect("connect")
}

fn send(k: &mut Conn, method: &str, path: &str, ct: &str, body: &[u8]) -> (u16, Value) {
    let (code, out) = k
        .request_ct(method, path, ct, Some(body))
        .unwrap_or_else(|e| panic!("{method} {path}: connection failed: {e}"));
    (
        code,
        serde_json::from_slice(&out)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&out).to_string())),
    )
}

fn send_json(k: &mut Conn, method: &str, path: &str, ct: &str, body: &Value) -> (u16, Value) {
    send(
        k,
        method,
        path,
        ct,
        &serde_json::to_vec(body).expect("json"),
    )
}

fn deployment(name: &str, replicas: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}})
}

/// Asserts a 400 BadRequest with exactly `message`.
fn assert_bad_request(code: u16, status: &Value, message: &str) {
    assert_eq!(code, 400, "{status}");
    assert_eq!(status["kind"], "Status", "{status}");
    assert_eq!(status["reason"], "BadRequest", "{status}");
    assert_eq!(status["message"], message, "{status}");
}

const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/default/deployments";
const CONFIGMAPS: &str = "/api/v1/namespaces/default/configmaps";

// ---- item 2: create and update ---------------------------------------------------------

#[test]
fn wrong_types_are_400_with_gos_decoding_message_on_create_and_update() {
    let c = Cluster::start();
    let mut k = conn(&c);
    let cases: Vec<(&str, Value, &str)> = vec![
        (DEPLOYMENTS, deployment("bad-replicas", json!("notanumber")),
            "Deployment in version \"v1\" cannot be handled as a Deployment: json: cannot unmarshal string into Go struct field DeploymentSpec.spec.replicas of type int32"),
        (DEPLOYMENTS, deployment("big-replicas", json!(3_000_000_000u64)),
            "Deployment in version \"v1\" cannot be handled as a Deployment: json: cannot unmarshal number 3000000000 into Go struct field DeploymentSpec.spec.replicas of type int32"),
        (CONFIGMAPS, json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bad-data"}, "data": {"a": 1}}),
            "ConfigMap in version \"v1\" cannot be handled as a ConfigMap: json: cannot unmarshal number into Go struct field ConfigMap.data of type string"),
        (CONFIGMAPS, json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bad-labels", "labels": "x"}}),
            "ConfigMap in version \"v1\" cannot be handled as a ConfigMap: json: cannot unmarshal string into Go struct field ObjectMeta.metadata.labels of type map[string]string"),
        ("/api/v1/namespaces/default/services", json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bad-port"}, "spec": {"ports": [{"port": "eighty"}]}}),
            "Service in version \"v1\" cannot be handled as a Service: json: cannot unmarshal string into Go struct field ServicePort.spec.ports.port of type int32"),
        ("/api/v1/namespaces/default/services", json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bad-target"}, "spec": {"ports": [{"port": 80, "targetPort": true}]}}),
            "Service in version \"v1\" cannot be handled as a Service: json: cannot unmarshal bool into Go struct field ServicePort.spec.ports.targetPort of type int32"),
        (DEPLOYMENTS, {
            let mut d = deployment("bad-containers", json!(1));
            d["spec"]["template"]["spec"]["containers"] = json!("notalist");
            d
        }, "Deployment in version \"v1\" cannot be handled as a Deployment: json: cannot unmarshal string into Go struct field PodSpec.spec.template.spec.containers of type []v1.Container"),
        ("/api/v1/namespaces/default/pods", json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bad-cpu"},
            "spec": {"containers": [{"name": "c", "image": "busybox", "resources": {"limits": {"cpu": "lots"}}}]}}),
            "Pod in version \"v1\" cannot be handled as a Pod: quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"),
        ("/api/v1/namespaces/default/secrets", json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bad-b64"}, "data": {"a": "not base64!"}}),
            "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data at input byte 3"),
    ];
    for (path, body, message) in &cases {
        let (code, status) = send_json(&mut k, "POST", path, JSON, body);
        assert_bad_request(code, &status, message);
        let name = body["metadata"]["name"].as_str().unwrap_or_default();
        let (code, _) = send(&mut k, "GET", &format!("{path}/{name}"), JSON, b"");
        assert_eq!(code, 404, "{name} was stored");
    }

    // The same body as YAML.
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: yaml-cm\n  labels: x\n";
    let (code, status) = send(
        &mut k,
        "POST",
        CONFIGMAPS,
        "application/yaml",
        yaml.as_bytes(),
    );
    assert_bad_request(code, &status, "ConfigMap in version \"v1\" cannot be handled as a ConfigMap: json: cannot unmarshal string into Go struct field ObjectMeta.metadata.labels of type map[string]string");

    // int-or-string takes both; integers and quantities as numbers are fine.
    for (name, target) in [("svc-name", json!("http")), ("svc-number", json!(8080))] {
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": {"ports": [{"port": 80, "targetPort": target}]}});
        let (code, created) = send_json(
            &mut k,
            "POST",
            "/api/v1/namespaces/default/services",
            JSON,
            &svc,
        );
        assert_eq!(code, 201, "{created}");
        assert_eq!(created["spec"]["ports"][0]["targetPort"], target);
    }

    // PUT: refused the same way, the stored object is untouched.
    let (code, created) = send_json(
        &mut k,
        "POST",
        DEPLOYMENTS,
        JSON,
        &deployment("web", json!(2)),
    );
    assert_eq!(code, 201, "{created}");
    let mut put = created.clone();
    put["spec"]["replicas"] = json!("three");
    let (code, status) = send_json(&mut k, "PUT", &format!("{DEPLOYMENTS}/web"), JSON, &put);
    assert_bad_request(code, &status, "Deployment in version \"v1\" cannot be handled as a Deployment: json: cannot unmarshal string into Go struct field DeploymentSpec.spec.replicas of type int32");
    let (_, now) = send(&mut k, "GET", &format!("{DEPLOYMENTS}/web"), JSON, b"");
    assert_eq!(now["spec"]["replicas"], 2);
    assert_eq!(
        now["metadata"]["resourceVersion"],
        created["metadata"]["resourceVersion"]
    );

    // kubectl shows upstream's error.
    let manifest = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: kubectl-bad\nspec:\n  replicas: notanumber\n  selector:\n    matchLabels: {app: x}\n  template:\n    metadata:\n      labels: {app: x}\n    spec:\n      containers: [{name: c, image: busybox}]\n";
    let err = c.fails(&["create", "--validate=false", "-f", "-"], Some(manifest));
    assert!(
        err.contains("Error from server (BadRequest): error when creating \"STDIN\": Deployment in version \"v1\" cannot be handled as a Deployment: json: cannot unmarshal string into Go struct field DeploymentSpec.spec.replicas of type int32"),
        "{err}"
    );
}

// ---- item 2: patches, server-side apply, scale -------------------------------------------

#[test]
fn wrong_types_in_patches_apply_and_scale_are_refused_and_never_stored() {
    let c = Cluster::start();
    let mut k = conn(&c);
    let (code, created) = send_json(
        &mut k,
        "POST",
        DEPLOYMENTS,
        JSON,
        &deployment("web", json!(1)),
    );
    assert_eq!(code, 201, "{created}");
    // (Controllers update it meanwhile: compare fields, not resourceVersions.)
    let path = format!("{DEPLOYMENTS}/web");
    let go = "json: cannot unmarshal string into Go struct field DeploymentSpec.spec.replicas of type int32";

    // JSON and merge patches: upstream decodes the patched document: 422 on `patch`.
    for (ct, patch) in [
        (
            "application/merge-patch+json",
            json!({"spec": {"replicas": "x"}}),
        ),
        (
            "application/json-patch+json",
            json!([{"op": "replace", "path": "/spec/replicas", "value": "x"}]),
        ),
    ] {
        let (code, status) = send_json(&mut k, "PATCH", &path, ct, &patch);
        assert_eq!(code, 422, "{ct}: {status}");
        assert_eq!(status["reason"], "Invalid", "{status}");
        let message = status["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with(" \"\" is invalid: patch: Invalid value: \"{"),
            "{ct}: {message}"
        );
        assert!(message.ends_with(&format!("}}\": {go}")), "{ct}: {message}");
        let cause = &status["details"]["causes"][0];
        assert_eq!(cause["field"], "patch", "{status}");
        assert_eq!(cause["reason"], "FieldValueInvalid", "{status}");
    }

    // Strategic merge patch: the unstructured converter's message, the patch as value.
    let (code, status) = send_json(
        &mut k,
        "PATCH",
        &path,
        "application/strategic-merge-patch+json",
        &json!({"spec": {"replicas": "x"}}),
    );
    assert_eq!(code, 422, "{status}");
    assert_eq!(status["message"], " \"\" is invalid: patch: Invalid value: \"map[spec:map[replicas:x]]\": unrecognized type: int32", "{status}");
    let (code, status) = send_json(
        &mut k,
        "PATCH",
        &path,
        "application/strategic-merge-patch+json",
        &json!({"metadata": {"labels": "x"}}),
    );
    assert_eq!(code, 422, "{status}");
    assert_eq!(status["message"], " \"\" is invalid: patch: Invalid value: \"map[metadata:map[labels:x]]\": cannot restore map from string", "{status}");

    // Server-side apply onto the object, and creating one.
    let apply = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: notanumber\n";
    let (code, status) = send(
        &mut k,
        "PATCH",
        &format!("{path}?fieldManager=tester&force=true"),
        "application/apply-patch+yaml",
        apply.as_bytes(),
    );
    assert!(
        code == 400 || code == 500,
        "server-side apply of a string replicas: {code} {status}"
    );
    let apply_new = apply.replace("name: web", "name: applied");
    let (code, status) = send(
        &mut k,
        "PATCH",
        &format!("{DEPLOYMENTS}/applied?fieldManager=tester"),
        "application/apply-patch+yaml",
        apply_new.as_bytes(),
    );
    assert!(
        code == 400 || code == 500,
        "server-side apply create of a string replicas: {code} {status}"
    );
    let (code, _) = send(&mut k, "GET", &format!("{DEPLOYMENTS}/applied"), JSON, b"");
    assert_eq!(code, 404, "the applied object was stored");

    // scale: the Scale body is decoded as such.
    let scale = json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "web", "namespace": "default"}, "spec": {"replicas": "5"}});
    let (code, status) = send_json(&mut k, "PUT", &format!("{path}/scale"), JSON, &scale);
    assert_bad_request(code, &status, "Scale in version \"v1\" cannot be handled as a Scale: json: cannot unmarshal string into Go struct field ScaleSpec.spec.replicas of type int32");
    let (code, status) = send_json(
        &mut k,
        "PATCH",
        &format!("{path}/scale"),
        "application/merge-patch+json",
        &json!({"spec": {"replicas": true}}),
    );
    assert_eq!(code, 422, "{status}");
    let message = status["message"].as_str().unwrap_or_default();
    assert!(message.ends_with("\": json: cannot unmarshal bool into Go struct field ScaleSpec.spec.replicas of type int32"), "{message}");

    // Nothing of it was stored; a good patch still works.
    let (_, now) = send(&mut k, "GET", &path, JSON, b"");
    assert_eq!(now["spec"]["replicas"], 1, "{now}");
    let managers: Vec<&Value> = now["metadata"]["managedFields"]
        .as_array()
        .map(|a| a.iter().map(|e| &e["manager"]).collect())
        .unwrap_or_default();
    assert!(!managers.contains(&&json!("tester")), "{now}");
    let (code, patched) = send_json(
        &mut k,
        "PATCH",
        &path,
        "application/strategic-merge-patch+json",
        &json!({"spec": {"replicas": 3}}),
    );
    assert_eq!(
        (code, &patched["spec"]["replicas"]),
        (200, &json!(3)),
        "{patched}"
    );
}

// ---- item 3 ------------------------------------------------------------------------------

/// The fields a managedFields entry lists (`f:` keys, flattened as paths).
fn managed_paths(obj: &Value) -> Vec<String> {
    fn walk(v: &Value, prefix: &str, out: &mut Vec<String>) {
        if let Some(m) = v.as_object() {
            for (k, child) in m {
                let p = format!("{prefix}/{k}");
                out.push(p.clone());
                walk(child, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    for e in obj["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        walk(&e["fieldsV1"], "", &mut out);
    }
    out
}

#[test]
fn explicit_nulls_are_dropped_before_storing_and_field_tracking() {
    let c = Cluster::start();
    let mut k = conn(&c);
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "data": null, "binaryData": null,
        "metadata": {"name": "nulls", "labels": null, "annotations": {"a": "b"}, "finalizers": null}});
    let (code, created) = send_json(
        &mut k,
        "POST",
        &format!("{CONFIGMAPS}?fieldManager=tester"),
        JSON,
        &body,
    );
    assert_eq!(code, 201, "{created}");
    for obj in [
        created.clone(),
        send(&mut k, "GET", &format!("{CONFIGMAPS}/nulls"), JSON, b"").1,
    ] {
        assert!(
            obj.get("data").is_none() && obj.get("binaryData").is_none(),
            "{obj}"
        );
        let meta = obj["metadata"].as_object().cloned().unwrap_or_default();
        assert!(
            !meta.contains_key("labels") && !meta.contains_key("finalizers"),
            "{obj}"
        );
        let tracked = managed_paths(&obj);
        assert!(
            tracked.iter().any(|p| p == "/f:metadata/f:annotations/f:a"),
            "{tracked:?}"
        );
        assert!(
            !tracked.iter().any(|p| p.contains("f:data")
                || p.contains("f:labels")
                || p.contains("f:finalizers")
                || p.contains("f:binaryData")),
            "{tracked:?}"
        );
    }

    // PUT and JSON patch: nulls they put in are dropped too.
    let mut put = created.clone();
    put["data"] = Value::Null;
    put["metadata"]["labels"] = Value::Null;
    put["metadata"]["annotations"] = json!({"a": "b", "c": "d"});
    let (code, updated) = send_json(
        &mut k,
        "PUT",
        &format!("{CONFIGMAPS}/nulls?fieldManager=putter"),
        JSON,
        &put,
    );
    assert_eq!(code, 200, "{updated}");
    assert!(
        updated.get("data").is_none() && updated["metadata"].get("labels").is_none(),
        "{updated}"
    );
    assert!(
        !managed_paths(&updated)
            .iter()
            .any(|p| p.contains("f:data") || p.contains("f:labels")),
        "{updated}"
    );
    let (code, patched) = send_json(
        &mut k,
        "PATCH",
        &format!("{CONFIGMAPS}/nulls"),
        "application/json-patch+json",
        &json!([{"op": "add", "path": "/data", "value": null}]),
    );
    assert_eq!(code, 200, "{patched}");
    assert!(patched.get("data").is_none(), "{patched}");

    // Server-side apply: the stored object holds no nulls.
    let apply =
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\n  labels: null\ndata: null\n";
    let (code, applied) = send(
        &mut k,
        "PATCH",
        &format!("{CONFIGMAPS}/applied?fieldManager=applier"),
        "application/apply-patch+yaml",
        apply.as_bytes(),
    );
    assert_eq!(code, 201, "{applied}");
    let (_, got) = send(&mut k, "GET", &format!("{CONFIGMAPS}/applied"), JSON, b"");
    assert!(
        got.get("data").is_none() && got["metadata"].get("labels").is_none(),
        "{got}"
    );

    // A null item of a list of strings is Go's zero value.
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "busybox", "args": ["a", null], "env": null}], "nodeSelector": null}});
    let (code, created) = send_json(
        &mut k,
        "POST",
        "/api/v1/namespaces/default/pods?dryRun=All",
        JSON,
        &pod,
    );
    assert_eq!(code, 201, "{created}");
    assert_eq!(
        created["spec"]["containers"][0]["args"],
        json!(["a", ""]),
        "{created}"
    );
    assert!(
        created["spec"]["containers"][0].get("env").is_none()
            && created["spec"].get("nodeSelector").is_none(),
        "{created}"
    );
}

// ---- item 4 ------------------------------------------------------------------------------

#[test]
fn status_fields_upstream_always_encodes_are_present() {
    let c = Cluster::start();
    let mut k = conn(&c);
    let template = json!({"metadata": {"labels": {"app": "z"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    let selector = json!({"matchLabels": {"app": "z"}});
    let cases = [
        (
            "/apis/apps/v1/namespaces/default/statefulsets",
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "z"},
            "spec": {"replicas": 0, "serviceName": "z", "selector": selector, "template": template}}),
            json!({"replicas": 0, "availableReplicas": 0}),
        ),
        (
            "/apis/apps/v1/namespaces/default/daemonsets",
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "z"},
            "spec": {"selector": selector, "template": template}}),
            json!({"currentNumberScheduled": 0, "numberMisscheduled": 0, "desiredNumberScheduled": 0, "numberReady": 0}),
        ),
        (
            "/apis/apps/v1/namespaces/default/replicasets",
            json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "z"},
            "spec": {"replicas": 0, "selector": selector, "template": template}}),
            json!({"replicas": 0}),
        ),
        (
            "/api/v1/namespaces/default/replicationcontrollers",
            json!({"apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": "z"},
            "spec": {"replicas": 0, "selector": {"app": "z"}, "template": template}}),
            json!({"replicas": 0}),
        ),
        (
            "/apis/policy/v1/namespaces/default/poddisruptionbudgets",
            json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "z"},
            "spec": {"minAvailable": 1, "selector": selector}}),
            json!({"disruptionsAllowed": 0, "currentHealthy": 0, "desiredHealthy": 0, "expectedPods": 0}),
        ),
    ];
    for (path, body, want) in &cases {
        let (code, created) = send_json(
            &mut k,
            "POST",
            &format!("{path}?fieldManager=creator"),
            JSON,
            body,
        );
        assert_eq!(code, 201, "{created}");
        for (field, zero) in want.as_object().into_iter().flatten() {
            assert_eq!(
                &created["status"][field], zero,
                "{path}: status.{field} of the created object: {created}"
            );
        }
        assert!(
            !managed_paths(&created)
                .iter()
                .any(|p| p.starts_with("/f:status")),
            "the creator owns status fields: {created}"
        );
        let (_, got) = send(&mut k, "GET", &format!("{path}/z"), JSON, b"");
        for field in want.as_object().into_iter().flatten().map(|(f, _)| f) {
            assert!(
                got["status"][field].is_i64(),
                "{path}: status.{field} missing: {got}"
            );
        }
    }
    // A status write that leaves a field out gets its zero value back.
    let (_, sts) = send(
        &mut k,
        "GET",
        "/apis/apps/v1/namespaces/default/statefulsets/z",
        JSON,
        b"",
    );
    let mut put = sts.clone();
    put["status"] = json!({"replicas": 0});
    let (code, updated) = send_json(
        &mut k,
        "PUT",
        "/apis/apps/v1/namespaces/default/statefulsets/z/status",
        JSON,
        &put,
    );
    assert_eq!(code, 200, "{updated}");
    assert_eq!(updated["status"]["availableReplicas"], 0, "{updated}");
    // Deployments omit all their zero status fields, as upstream.
    let (code, created) = send_json(
        &mut k,
        "POST",
        DEPLOYMENTS,
        JSON,
        &deployment("plain", json!(0)),
    );
    assert_eq!((code, &created["status"]), (201, &json!({})), "{created}");
}

// ---- a bad manifest does not poison its namespace -----------------------------------------

/// A Python with PyPI's `kubernetes` package, if there is one.
fn kubernetes_python() -> Option<String> {
    let candidates = std::env::var("RK3S_TEST_KUBERNETES_PYTHON")
        .into_iter()
        .chain(["python3".to_string()]);
    for py in candidates {
        let ok = std::process::Command::new(&py)
            .args(["-c", "import kubernetes"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(py);
        }
    }
    None
}

const PYTHON_LIST: &str = r#"
import sys
from kubernetes import client, config
config.load_kube_config(config_file=sys.argv[1])
ns = sys.argv[2]
deps = client.AppsV1Api().list_namespaced_deployment(ns)
cms = client.CoreV1Api().list_namespaced_config_map(ns)
svcs = client.CoreV1Api().list_namespaced_service(ns)
print(sorted(d.metadata.name + "=" + str(d.spec.replicas) for d in deps.items))
print(sorted(c.metadata.name for c in cms.items))
print(sorted(s.metadata.name for s in svcs.items))
"#;

#[test]
fn a_namespace_with_a_refused_object_still_lists_and_decodes() {
    let c = Cluster::start();
    c.ok(&["create", "namespace", "team"]);
    let good = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: good\n  namespace: team\nspec:\n  replicas: 2\n  selector:\n    matchLabels: {app: good}\n  template:\n    metadata:\n      labels: {app: good}\n    spec:\n      containers: [{name: c, image: busybox}]\n";
    c.ok_with(&common::kubectl_bin(), &["apply", "-f", "-"], Some(good));
    let bad = good
        .replace("name: good", "name: bad")
        .replace("replicas: 2", "replicas: notanumber");
    for args in [
        vec!["create", "--validate=false", "-f", "-"],
        vec!["apply", "--validate=false", "-f", "-"],
        vec!["apply", "--server-side", "--validate=false", "-f", "-"],
    ] {
        let out = c.kubectl_with(&common::kubectl_bin(), &args, Some(&bad));
        assert!(
            !out.status.success(),
            "kubectl {args:?} stored the bad deployment: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let bad_cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bad\n  namespace: team\ndata:\n  a: 1\n";
    let err = c.fails(&["create", "--validate=false", "-f", "-"], Some(bad_cm));
    assert!(err.contains("ConfigMap in version \"v1\" cannot be handled as a ConfigMap: json: cannot unmarshal number into Go struct field ConfigMap.data of type string"), "{err}");
    // What kubectl itself refuses to send, sent raw.
    let mut k = conn(&c);
    let raw = [
        (
            "/api/v1/namespaces/team/configmaps",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bad-labels", "labels": "x"}}),
        ),
        (
            "/api/v1/namespaces/team/services",
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bad"}, "spec": {"ports": [{"port": "eighty"}]}}),
        ),
    ];
    for (path, body) in raw {
        let (code, status) = send_json(&mut k, "POST", path, JSON, &body);
        assert_eq!(code, 400, "{status}");
    }

    // Every client still reads the namespace: kubectl (unstructured and typed), Python.
    let yaml = c.ok(&["get", "deploy", "-n", "team", "-o", "yaml"]);
    assert!(
        yaml.contains("name: good") && !yaml.contains("name: bad"),
        "{yaml}"
    );
    assert!(yaml.contains("replicas: 2"), "{yaml}");
    let described = c.ok(&["describe", "deploy", "-n", "team"]);
    assert!(
        described.contains("Name:") && described.contains("good"),
        "{described}"
    );
    c.ok(&["get", "configmaps,services", "-n", "team", "-o", "yaml"]);
    match kubernetes_python() {
        Some(py) => {
            let out = std::process::Command::new(&py)
                .args(["-c", PYTHON_LIST, &c.kubeconfig.to_string_lossy(), "team"])
                .output()
                .expect("run python");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "the Python client cannot decode the namespace: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
            let lines: Vec<&str> = stdout.lines().collect();
            assert_eq!(lines.first().copied(), Some("['good=2']"), "{stdout}");
            assert!(lines.get(1).is_some_and(|l| !l.contains("'bad")), "{stdout}");
            assert!(lines.get(2).is_some_and(|l| !l.contains("'bad'")), "{stdout}");
        }
        None => eprintln!("SKIP Python part: no Python with the `kubernetes` package (set RK3S_TEST_KUBERNETES_PYTHON)"),
    }
}

/// HorizontalPodAutoscalers are stored once, as autoscaling/v2: a v1 client's CPU
/// target is the autoscaler's metric, what the autoscaler writes through v2 reads back
/// in v1's fields, and v2-only fields survive a v1 read-modify-write (in annotations).
#[test]
fn autoscaling_v1_and_v2_are_one_object() {
    let c = Cluster::start();
    let mut k = conn(&c);
    let v1_path = "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers";
    let v2_path = "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers";
    let (code, created) = send_json(
        &mut k,
        "POST",
        v1_path,
        JSON,
        &json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 1, "maxReplicas": 4, "targetCPUUtilizationPercentage": 55}}),
    );
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["apiVersion"], "autoscaling/v1");
    assert_eq!(created["spec"]["targetCPUUtilizationPercentage"], 55);

    let (code, v2) = send(&mut k, "GET", &format!("{v2_path}/web"), JSON, b"");
    assert_eq!(code, 200, "{v2}");
    assert_eq!(v2["apiVersion"], "autoscaling/v2");
    assert!(
        v2["spec"].get("targetCPUUtilizationPercentage").is_none(),
        "{v2}"
    );
    assert_eq!(
        v2["spec"]["metrics"],
        json!([{"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": 55}}}]),
        "{v2}"
    );

    // v2 adds a memory metric and a behavior. The autoscaler writes status conditions
    // concurrently (its Deployment does not exist): every write retries on 409.
    let put_retrying = |k: &mut Conn, path: &str, edit: &dyn Fn(&mut Value)| {
        for _ in 0..50 {
            let (code, mut obj) = send(k, "GET", path, JSON, b"");
            assert_eq!(code, 200, "{obj}");
            edit(&mut obj);
            let (code, out) = send_json(k, "PUT", path, JSON, &obj);
            match code {
                200 => return out,
                409 => continue,
                _ => panic!("PUT {path}: {code} {out}"),
            }
        }
        panic!("PUT {path}: conflicts never ended");
    };
    put_retrying(&mut k, &format!("{v2_path}/web"), &|o| {
        if let Some(m) = o["spec"]["metrics"].as_array_mut() {
            m.push(json!({"type": "Resource", "resource": {"name": "memory",
                "target": {"type": "AverageValue", "averageValue": "64Mi"}}}));
        }
        o["spec"]["behavior"] = json!({"scaleDown": {"stabilizationWindowSeconds": 30}});
    });

    // The autoscaler's v2 status conditions read in v1 as upstream's annotation.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let v1 = loop {
        let (code, v1) = send(&mut k, "GET", &format!("{v1_path}/web"), JSON, b"");
        assert_eq!(code, 200, "{v1}");
        if v1["metadata"]["annotations"]
            .get("autoscaling.alpha.kubernetes.io/conditions")
            .is_some()
        {
            break v1;
        }
        assert!(std::time::Instant::now() < deadline, "no conditions: {v1}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(v1["apiVersion"], "autoscaling/v1");
    assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 55, "{v1}");
    assert!(v1["spec"].get("metrics").is_none(), "{v1}");
    assert!(
        v1.get("status")
            .is_some_and(|s| s.get("conditions").is_none()),
        "{v1}"
    );
    let ann = &v1["metadata"]["annotations"];
    assert!(
        ann["autoscaling.alpha.kubernetes.io/metrics"]
            .as_str()
            .is_some_and(|m| m.contains("memory") && m.contains("targetAverageValue")),
        "{v1}"
    );

    // A v1 update (kubectl edit through v1) changes the CPU target and keeps the rest.
    put_retrying(&mut k, &format!("{v1_path}/web"), &|o| {
        o["spec"]["targetCPUUtilizationPercentage"] = json!(70);
    });
    let (_, v2) = send(&mut k, "GET", &format!("{v2_path}/web"), JSON, b"");
    let metrics = v2["spec"]["metrics"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(metrics.len(), 2, "{v2}");
    assert!(
        metrics.iter().any(|m| m["resource"]["name"] == "memory"),
        "{v2}"
    );
    assert!(
        metrics
            .iter()
            .any(|m| m["resource"]["target"]["averageUtilization"] == 70),
        "{v2}"
    );
    assert_eq!(
        v2["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
        30
    );
    assert!(
        v2["metadata"]["annotations"]
            .get("autoscaling.alpha.kubernetes.io/metrics")
            .is_none(),
        "{v2}"
    );

    // kubectl reads and lists it through either version.
    let out = c.ok(&[
        "get",
        "horizontalpodautoscalers.v1.autoscaling",
        "web",
        "-o",
        "jsonpath={.spec.targetCPUUtilizationPercentage}",
    ]);
    assert_eq!(out.trim(), "70");
    let table = c.ok(&["get", "hpa", "web"]);
    assert!(table.contains("Deployment/web"), "{table}");

    // Defaults as upstream: v1's minReplicas, and v2's 80 % CPU target, seen in both.
    let (code, bare) = send_json(
        &mut k,
        "POST",
        v1_path,
        JSON,
        &json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "bare"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "bare"},
                "maxReplicas": 2}}),
    );
    assert_eq!(code, 201, "{bare}");
    assert_eq!(bare["spec"]["minReplicas"], 1, "{bare}");
    let (_, bare) = send(&mut k, "GET", &format!("{v1_path}/bare"), JSON, b"");
    assert_eq!(bare["spec"]["targetCPUUtilizationPercentage"], 80, "{bare}");
    let (_, bare2) = send(&mut k, "GET", &format!("{v2_path}/bare"), JSON, b"");
    assert_eq!(
        bare2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 80,
        "{bare2}"
    );
}
