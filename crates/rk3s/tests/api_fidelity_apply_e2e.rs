//! End-to-end: API fidelity of defaulting and server-side apply against the real
//! `rk3s server` (issue 11 items 7, 13 and 15; issue 17 group 1), driven by kubectl and
//! raw HTTPS.
//!
//! - RoleBinding / ClusterRoleBinding `roleRef.apiGroup: ""` (or missing) defaults to
//!   `rbac.authorization.k8s.io` on create, update, patch and server-side apply; subject
//!   `apiGroup` defaults as upstream's, and an empty one is never returned.
//! - An identical server-side apply of a RoleBinding by a second manager does not
//!   conflict.
//! - Service and container ports are keyed by port and protocol (53/UDP + 53/TCP apply).
//! - Server-side apply of a built-in kind with undeclared fields is refused as upstream
//!   refuses it; unknown fields dropped from other writes are never stored nor recorded
//!   in managedFields, whatever their names.

mod common;

use common::http::{Conn, Creds};
use common::{kubectl_bin, Cluster};
use serde_json::{json, Value};

const RBAC: &str = "rbac.authorization.k8s.io";

fn conn(c: &Cluster) -> Conn {
    Conn::connect(&Creds::from_kubeconfig(&c.kubeconfig, c.port)).expect("connect")
}

fn parse(out: &[u8]) -> Value {
    serde_json::from_slice(out)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(out).to_string()))
}

fn call(conn: &mut Conn, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let b = serde_json::to_vec(body).expect("json");
    let (code, out) = conn.request(method, path, Some(&b)).expect("request");
    (code, parse(&out))
}

fn patch(conn: &mut Conn, path: &str, content_type: &str, body: &str) -> (u16, Value) {
    let (code, out) = conn
        .request_ct("PATCH", path, content_type, Some(body.as_bytes()))
        .expect("request");
    (code, parse(&out))
}

fn get(conn: &mut Conn, path: &str) -> (u16, Value) {
    let (code, out) = conn.request("GET", path, None).expect("request");
    (code, parse(&out))
}

fn json_of(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// Applies `manifest` with kubectl's server-side apply as `manager`.
fn ssa(c: &Cluster, manager: &str, manifest: &str) -> std::process::Output {
    let fm = format!("--field-manager={manager}");
    c.kubectl_with(
        &kubectl_bin(),
        &["apply", "--server-side", &fm, "-f", "-"],
        Some(manifest),
    )
}

fn assert_ok(out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The subjects of a binding with the `apiGroup` each has (None: absent).
fn subject_groups(binding: &Value) -> Vec<(String, Option<String>)> {
    binding["subjects"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or("").to_string(),
                s.get("apiGroup")
                    .map(|g| g.as_str().unwrap_or("<non-string>").to_string()),
            )
        })
        .collect()
}

/// issue 17 group 1: `roleRef.apiGroup: ""` (or missing) and subject `apiGroup`s
/// default as upstream's rbac/v1 defaulters, on every write path; an empty subject
/// `apiGroup` (ServiceAccount) is never returned.
#[test]
fn rbac_binding_api_groups_default_on_every_write() {
    let c = Cluster::start();
    let mut k = conn(&c);
    let (code, ns) = call(
        &mut k,
        "POST",
        "/api/v1/namespaces",
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "rb"}}),
    );
    assert_eq!(code, 201, "{ns}");
    let (code, role) = call(
        &mut k,
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/rb/roles",
        &json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}),
    );
    assert_eq!(code, 201, "{role}");

    // Create (raw JSON, as the conformance suite's webhook tests send it).
    let rb = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "rb1"},
        "roleRef": {"apiGroup": "", "kind": "Role", "name": "reader"},
        "subjects": [
            {"kind": "ServiceAccount", "name": "default", "namespace": "rb", "apiGroup": ""},
            {"kind": "User", "name": "alice", "apiGroup": ""},
            {"kind": "Group", "name": "devs"}]});
    let base = "/apis/rbac.authorization.k8s.io/v1/namespaces/rb/rolebindings";
    let (code, created) = call(&mut k, "POST", base, &rb);
    assert_eq!(code, 201, "{created}");
    assert_eq!(
        created["roleRef"],
        json!({"apiGroup": RBAC, "kind": "Role", "name": "reader"})
    );
    let want = vec![
        ("default".to_string(), None),
        ("alice".to_string(), Some(RBAC.to_string())),
        ("devs".to_string(), Some(RBAC.to_string())),
    ];
    assert_eq!(subject_groups(&created), want);
    let (_, stored) = get(&mut k, &format!("{base}/rb1"));
    assert_eq!(subject_groups(&stored), want);
    assert_eq!(stored["roleRef"]["apiGroup"], RBAC);

    // Update (PUT) with the empty group again: defaulted, so roleRef did not change.
    let mut upd = stored.clone();
    upd["roleRef"]["apiGroup"] = json!("");
    upd["subjects"][0]["apiGroup"] = json!("");
    let (code, updated) = call(&mut k, "PUT", &format!("{base}/rb1"), &upd);
    assert_eq!(code, 200, "{updated}");
    assert_eq!(updated["roleRef"]["apiGroup"], RBAC);
    assert_eq!(subject_groups(&updated), want);

    // Merge patch adding a subject with an empty group.
    let (code, patched) = patch(
        &mut k,
        &format!("{base}/rb1"),
        "application/merge-patch+json",
        r#"{"subjects": [{"kind": "ServiceAccount", "name": "builder", "namespace": "rb", "apiGroup": ""}, {"kind": "User", "name": "bob"}]}"#,
    );
    assert_eq!(code, 200, "{patched}");
    assert_eq!(
        subject_groups(&patched),
        vec![
            ("builder".to_string(), None),
            ("bob".to_string(), Some(RBAC.to_string()))
        ]
    );

    // Server-side apply (create) of a ClusterRoleBinding without roleRef.apiGroup.
    let (code, crb) = patch(&mut k, "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/crb1?fieldManager=tester",
        "application/apply-patch+yaml",
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: crb1\nroleRef:\n  apiGroup: \"\"\n  kind: ClusterRole\n  name: view\nsubjects:\n- kind: ServiceAccount\n  name: default\n  namespace: rb\n  apiGroup: \"\"\n");
    assert_eq!(code, 201, "{crb}");
    assert_eq!(crb["roleRef"]["apiGroup"], RBAC);
    assert_eq!(subject_groups(&crb), vec![("default".to_string(), None)]);
    let (code, crb2) = call(
        &mut k,
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        &json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "crb2"},
        "roleRef": {"kind": "ClusterRole", "name": "view"}, "subjects": [{"kind": "Group", "name": "g", "apiGroup": ""}]}),
    );
    assert_eq!(code, 201, "{crb2}");
    assert_eq!(crb2["roleRef"]["apiGroup"], RBAC);
    assert_eq!(
        subject_groups(&crb2),
        vec![("g".to_string(), Some(RBAC.to_string()))]
    );

    // kubectl create rolebinding --serviceaccount: the subject has no apiGroup.
    c.ok(&[
        "create",
        "rolebinding",
        "rb2",
        "-n",
        "rb",
        "--role=reader",
        "--serviceaccount=rb:default",
        "--user=carol",
    ]);
    let rb2 = json_of(&c.ok(&["get", "rolebinding", "rb2", "-n", "rb", "-o", "json"]));
    let mut groups = subject_groups(&rb2);
    groups.sort();
    assert_eq!(
        groups,
        vec![
            ("carol".to_string(), Some(RBAC.to_string())),
            ("default".to_string(), None)
        ]
    );
    assert_eq!(rb2["roleRef"]["apiGroup"], RBAC);
}

/// issue 11 item 7: an identical server-side apply of a RoleBinding with a
/// ServiceAccount subject by a second manager shares the fields instead of conflicting.
#[test]
fn identical_apply_of_a_binding_by_two_managers_does_not_conflict() {
    let c = Cluster::start();
    c.ok(&["create", "namespace", "team"]);
    let manifest = "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: view-sa\n  namespace: team\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: view\nsubjects:\n- kind: ServiceAccount\n  name: default\n  namespace: team\n";
    let out = assert_ok(&ssa(&c, "team-a", manifest), "first apply");
    assert!(
        out.contains("rolebinding.rbac.authorization.k8s.io/view-sa serverside-applied"),
        "{out}"
    );
    assert_ok(
        &ssa(&c, "team-b", manifest),
        "identical apply by a second manager",
    );
    let rb = json_of(&c.ok(&[
        "get",
        "rolebinding",
        "view-sa",
        "-n",
        "team",
        "-o",
        "json",
        "--show-managed-fields",
    ]));
    assert_eq!(
        rb["subjects"],
        json!([{"kind": "ServiceAccount", "name": "default", "namespace": "team"}])
    );
    let mut owners: Vec<&str> = rb["metadata"]["managedFields"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["fieldsV1"].get("f:subjects").is_some())
                .filter_map(|e| e["manager"].as_str())
                .collect()
        })
        .unwrap_or_default();
    owners.sort();
    assert_eq!(owners, vec!["team-a", "team-b"], "{rb}");
    // A different value from the second manager still conflicts (the list is atomic).
    let other = manifest.replace("  name: default\n", "  name: builder\n");
    let err = ssa(&c, "team-b", &other);
    assert!(!err.status.success());
    let stderr = String::from_utf8_lossy(&err.stderr);
    assert!(
        stderr.contains("conflict with \"team-a\": .subjects"),
        "{stderr}"
    );
}

/// issue 11 item 13: Service ports are keyed by (port, protocol) and container ports by
/// (containerPort, protocol), so port 53 on UDP and TCP applies; a port without
/// protocol is keyed by its default, TCP.
#[test]
fn ports_on_two_protocols_apply_server_side() {
    let c = Cluster::start();
    let svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: dns\n  namespace: default\nspec:\n  selector:\n    app: dns\n  ports:\n  - name: dns\n    port: 53\n    protocol: UDP\n  - name: dns-tcp\n    port: 53\n    protocol: TCP\n  - name: metrics\n    port: 9153\n";
    let out = assert_ok(&ssa(&c, "dns-a", svc), "Service with 53/UDP and 53/TCP");
    assert!(out.contains("service/dns serverside-applied"), "{out}");
    assert_ok(&ssa(&c, "dns-a", svc), "re-apply");
    assert_ok(
        &ssa(&c, "dns-b", svc),
        "identical apply by a second manager",
    );
    let s = json_of(&c.ok(&[
        "get",
        "service",
        "dns",
        "-o",
        "json",
        "--show-managed-fields",
    ]));
    let ports: Vec<(i64, String)> = s["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["port"].as_i64().unwrap_or(0),
                p["protocol"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        vec![
            (53, "UDP".to_string()),
            (53, "TCP".to_string()),
            (9153, "TCP".to_string())
        ]
    );
    let mf = s["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let a = mf
        .iter()
        .find(|e| e["manager"] == "dns-a")
        .expect("dns-a entry");
    let keys: Vec<String> = a["fieldsV1"]["f:spec"]["f:ports"]
        .as_object()
        .expect("ports fields")
        .keys()
        .cloned()
        .collect();
    for k in [
        r#"k:{"port":53,"protocol":"UDP"}"#,
        r#"k:{"port":53,"protocol":"TCP"}"#,
        r#"k:{"port":9153,"protocol":"TCP"}"#,
    ] {
        assert!(keys.iter().any(|x| x == k), "{k} not in {keys:?}");
    }
    // Renaming the TCP port by the second manager conflicts on that item only.
    let renamed = svc.replace("name: dns-tcp", "name: dnstcp");
    let err = ssa(&c, "dns-b", &renamed);
    assert!(!err.status.success());
    let stderr = String::from_utf8_lossy(&err.stderr);
    assert!(
        stderr.contains(r#".spec.ports[port=53,protocol="TCP"].name"#),
        "{stderr}"
    );
    assert!(!stderr.contains(r#"protocol="UDP""#), "{stderr}");

    let deploy = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: dns\n  namespace: default\nspec:\n  selector:\n    matchLabels:\n      app: dns\n  template:\n    metadata:\n      labels:\n        app: dns\n    spec:\n      containers:\n      - name: dns\n        image: busybox:1\n        ports:\n        - containerPort: 53\n          protocol: UDP\n        - containerPort: 53\n          protocol: TCP\n        - containerPort: 8080\n";
    let out = assert_ok(
        &ssa(&c, "dns-a", deploy),
        "container with 53/UDP and 53/TCP",
    );
    assert!(
        out.contains("deployment.apps/dns serverside-applied"),
        "{out}"
    );
    assert_ok(&ssa(&c, "dns-a", deploy), "re-apply");
    let d = json_of(&c.ok(&["get", "deployment", "dns", "-o", "json"]));
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["ports"]
            .as_array()
            .map(Vec::len),
        Some(3),
        "{d}"
    );
}

/// issue 11 item 15: server-side apply of a built-in kind with fields its schema does
/// not declare (names starting with `.` included) is refused as upstream refuses it;
/// other writes drop unknown fields and never record them in managedFields.
#[test]
fn undeclared_fields_are_refused_by_apply_and_never_recorded() {
    let c = Cluster::start();
    let mut k = conn(&c);
    let deploy = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: default\nspec:\n  foo: 1\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n      - name: web\n        image: busybox:1\n";
    let (code, st) = patch(
        &mut k,
        "/apis/apps/v1/namespaces/default/deployments/web?fieldManager=m",
        "application/apply-patch+yaml",
        deploy,
    );
    assert_eq!(code, 500, "{st}");
    assert_eq!(st["message"], "failed to create typed patch object (default/web; apps/v1, Kind=Deployment): .spec.foo: field not declared in schema", "{st}");
    assert!(
        st.get("reason").is_none(),
        "upstream's Status has no reason: {st}"
    );
    assert_eq!(
        get(&mut k, "/apis/apps/v1/namespaces/default/deployments/web").0,
        404,
        "nothing created"
    );

    // Names starting with `.`, on create and on update of an existing object.
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c1\n  namespace: default\ndata:\n  a: \"1\"\n";
    let (code, created) = patch(
        &mut k,
        "/api/v1/namespaces/default/configmaps/c1?fieldManager=m",
        "application/apply-patch+yaml",
        cm,
    );
    assert_eq!(code, 201, "{created}");
    let dotted = format!("{cm}.hidden: x\n");
    let (code, st) = patch(
        &mut k,
        "/api/v1/namespaces/default/configmaps/c1?fieldManager=m",
        "application/apply-patch+yaml",
        &dotted,
    );
    assert_eq!(code, 500, "{st}");
    assert_eq!(st["message"], "failed to create typed patch object (default/c1; /v1, Kind=ConfigMap): ..hidden: field not declared in schema", "{st}");
    let (_, live) = get(&mut k, "/api/v1/namespaces/default/configmaps/c1");
    assert!(live.get(".hidden").is_none(), "{live}");

    // kubectl sees upstream's error.
    let out = ssa(&c, "kubectl-test", deploy);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(".spec.foo: field not declared in schema"),
        "{stderr}"
    );

    // Create and merge patch (fieldValidation=Ignore) drop unknown fields, whatever
    // their names, before they are stored or tracked.
    let (code, c2) = call(
        &mut k,
        "POST",
        "/api/v1/namespaces/default/configmaps?fieldValidation=Ignore&fieldManager=writer",
        &json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c2", ".m": 1}, ".hidden": "x", "data": {"a": "1"}}),
    );
    assert_eq!(code, 201, "{c2}");
    let (_, live) = get(&mut k, "/api/v1/namespaces/default/configmaps/c2");
    assert!(
        live.get(".hidden").is_none() && live["metadata"].get(".m").is_none(),
        "{live}"
    );
    let (code, patched) = patch(
        &mut k,
        "/api/v1/namespaces/default/configmaps/c2?fieldValidation=Ignore&fieldManager=patcher",
        "application/merge-patch+json",
        r#"{".other": {"x": 1}, "data": {"b": "2"}}"#,
    );
    assert_eq!(code, 200, "{patched}");
    let (_, live) = get(&mut k, "/api/v1/namespaces/default/configmaps/c2");
    assert!(live.get(".other").is_none(), "{live}");
    assert_eq!(live["data"], json!({"a": "1", "b": "2"}));
    let mf = serde_json::to_string(&live["metadata"]["managedFields"]).expect("json");
    assert!(mf.contains("f:data"), "{mf}");
    for f in ["f:.hidden", "f:.m", "f:.other"] {
        assert!(!mf.contains(f), "{f} recorded: {mf}");
    }
}
