//! End-to-end: upstream conformance behaviours of the API server (issue 17 groups 4, 5,
//! 6, 7, 8, 9 and 10) against the real `rk3s server`, over raw HTTPS (and kubectl).
//!
//! - group 8: core/v1 Events select on every field upstream supports (`involvedObject.*`,
//!   `reason`, `reportingComponent`, `source`, `type`), events.k8s.io/v1 Events on their
//!   own names (`regarding.*`, `reportingController`, ...), in lists and watches, and
//!   unknown fields answer upstream's 400 `field label not supported: <x>`.
//! - group 9: asking only for a `Table` of a resource without one
//!   (`selfsubjectaccessreviews`, as the conformance test does) answers 406 NotAcceptable.
//! - group 10: `/version` carries the build's git commit, tree state and build date.
//! - group 4: `/openapi/v2` publishes CRD schemas as upstream does for kubectl's
//!   client-side validation (kubectl 1.20 creates objects with unknown fields under
//!   `x-kubernetes-preserve-unknown-fields` and explains them); renamed and unserved
//!   versions leave the document.
//! - group 5: a Service changed to ExternalName loses (and releases) its cluster IPs,
//!   node ports and external traffic policy; changed back, it gets new ones.
//! - group 6: `/status` and CSR `/approval` patches keep their metadata changes.
//! - group 7: CRD schema defaults apply on read (get, list, watch) to stored objects.

mod common;

use common::http::{Conn, Creds};
use common::Cluster;
use serde_json::{json, Value};

fn conn(c: &Cluster) -> Conn {
    Conn::connect(&Creds::from_kubeconfig(&c.kubeconfig, c.port)).expect("connect")
}

fn parse(out: &[u8]) -> Value {
    serde_json::from_slice(out)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(out).to_string()))
}

fn call(conn: &mut Conn, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let b = body.map(|b| serde_json::to_vec(b).expect("json"));
    let (code, out) = conn.request(method, path, b.as_deref()).expect("request");
    (code, parse(&out))
}

fn names(list: &Value) -> Vec<String> {
    let mut v: Vec<String> = list["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["metadata"]["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Percent-encodes a query value (the characters field selectors use).
fn enc(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '-' | '_' | '.' | '~' => c.to_string(),
            c => format!("%{:02X}", c as u32),
        })
        .collect()
}

#[test]
fn events_field_selectors_core_and_events_k8s_io() {
    let c = Cluster::start();
    let mut k = conn(&c);
    let core = |name: &str, kind: &str, reason: &str, typ: &str, comp: &str| {
        json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": name, "namespace": "default"},
            "involvedObject": {"kind": kind, "name": format!("{name}-obj"), "namespace": "default", "uid": format!("uid-{name}"),
                "apiVersion": "v1", "resourceVersion": "42", "fieldPath": "spec.containers{c}"},
            "reason": reason, "message": "m", "type": typ, "source": {"component": comp},
            "firstTimestamp": "2024-01-01T00:00:00Z", "lastTimestamp": "2024-01-01T00:00:00Z", "count": 1})
    };
    for ev in [
        core("e1", "Pod", "Started", "Normal", "kubelet"),
        core("e2", "Node", "Rebooted", "Warning", "node-controller"),
    ] {
        let (code, out) = call(
            &mut k,
            "POST",
            "/api/v1/namespaces/default/events",
            Some(&ev),
        );
        assert_eq!(code, 201, "{out}");
    }
    let new = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e3", "namespace": "default"},
        "eventTime": "2024-01-01T00:00:00.000000Z", "reportingController": "example.com/ctl", "reportingInstance": "i",
        "action": "Act", "reason": "Scaled", "type": "Normal", "note": "n",
        "regarding": {"kind": "Deployment", "name": "d1", "namespace": "default", "uid": "uid-d1", "apiVersion": "apps/v1"}});
    let (code, out) = call(
        &mut k,
        "POST",
        "/apis/events.k8s.io/v1/namespaces/default/events",
        Some(&new),
    );
    assert_eq!(code, 201, "{out}");

    let core_cases: &[(&str, &[&str])] = &[
        ("involvedObject.kind=Pod", &["e1"]),
        ("involvedObject.name=e2-obj", &["e2"]),
        (
            "involvedObject.namespace=default,involvedObject.uid=uid-e1",
            &["e1"],
        ),
        ("involvedObject.apiVersion=apps/v1", &["e3"]),
        (
            "involvedObject.resourceVersion=42,involvedObject.fieldPath=spec.containers{c}",
            &["e1", "e2"],
        ),
        ("reason=Rebooted", &["e2"]),
        ("type=Warning", &["e2"]),
        ("source=kubelet", &["e1"]),
        // source falls back to the reporting controller when source.component is empty
        ("source=example.com/ctl", &["e3"]),
        ("reportingComponent=example.com/ctl", &["e3"]),
        ("metadata.name=e1", &["e1"]),
        ("metadata.namespace=default,type!=Normal", &["e2"]),
    ];
    for (sel, want) in core_cases {
        let (code, out) = call(
            &mut k,
            "GET",
            &format!(
                "/api/v1/namespaces/default/events?fieldSelector={}",
                enc(sel)
            ),
            None,
        );
        assert_eq!(code, 200, "{sel}: {out}");
        assert_eq!(names(&out), want.to_vec(), "core {sel}");
    }
    let new_cases: &[(&str, &[&str])] = &[
        ("regarding.kind=Deployment", &["e3"]),
        ("regarding.kind=Pod,regarding.name=e1-obj", &["e1"]),
        ("regarding.uid=uid-e2,regarding.namespace=default", &["e2"]),
        ("regarding.apiVersion=v1,regarding.resourceVersion=42,regarding.fieldPath=spec.containers{c}", &["e1", "e2"]),
        ("reportingController=example.com/ctl", &["e3"]),
        ("reason=Started,type=Normal", &["e1"]),
        ("metadata.name=e2,metadata.namespace=default", &["e2"]),
    ];
    for (sel, want) in new_cases {
        let (code, out) = call(
            &mut k,
            "GET",
            &format!(
                "/apis/events.k8s.io/v1/namespaces/default/events?fieldSelector={}",
                enc(sel)
            ),
            None,
        );
        assert_eq!(code, 200, "{sel}: {out}");
        assert_eq!(names(&out), want.to_vec(), "events.k8s.io {sel}");
    }
    // watches filter the same way
    let (code, out) = k
        .request("GET", &format!("/apis/events.k8s.io/v1/namespaces/default/events?watch=1&timeoutSeconds=1&fieldSelector={}", enc("regarding.kind=Node")), None)
        .expect("watch");
    assert_eq!(code, 200);
    let seen: Vec<String> = String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|e| e["object"]["metadata"]["name"].as_str().map(String::from))
        .collect();
    assert_eq!(seen, vec!["e2".to_string()]);
    let (code, out) = k
        .request(
            "GET",
            &format!(
                "/api/v1/namespaces/default/events?watch=1&timeoutSeconds=1&fieldSelector={}",
                enc("source=node-controller")
            ),
            None,
        )
        .expect("watch");
    assert_eq!(code, 200);
    assert!(
        String::from_utf8_lossy(&out).contains("\"e2\"")
            && !String::from_utf8_lossy(&out).contains("\"e1\"")
    );
    // upstream's errors for names the other version uses
    for (path, bad) in [
        ("/api/v1/namespaces/default/events", "regarding.kind"),
        ("/apis/events.k8s.io/v1/namespaces/default/events", "source"),
    ] {
        let (code, out) = call(
            &mut k,
            "GET",
            &format!("{path}?fieldSelector={}", enc(&format!("{bad}=x"))),
            None,
        );
        assert_eq!(code, 400, "{out}");
        assert_eq!(out["message"], format!("field label not supported: {bad}"));
    }
}

#[test]
fn table_of_a_resource_without_one_is_not_acceptable() {
    let c = Cluster::start();
    let mut k = conn(&c);
    let sar = serde_json::to_vec(
        &json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
        "spec": {"nonResourceAttributes": {"path": "/", "verb": "get"}}}),
    )
    .expect("json");
    // The harness sends `Accept: application/json` after the Content-Type; a first
    // Accept line (which the server reads) asks for a Table only, as the e2e test does.
    let table_only = "application/json\r\nAccept: application/json;as=Table;v=v1;g=meta.k8s.io";
    let (code, out) = k
        .request_ct(
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            table_only,
            Some(&sar),
        )
        .expect("request");
    let out = parse(&out);
    assert_eq!(code, 406, "{out}");
    assert_eq!(out["kind"], "Status");
    assert_eq!(out["reason"], "NotAcceptable");
    assert_eq!(out["code"], 406);
    // a resource with a Table still serves one
    let (code, out) = k
        .request_ct("GET", "/api/v1/namespaces", table_only, None)
        .expect("request");
    let out = parse(&out);
    assert_eq!(code, 200, "{out}");
    assert_eq!(out["kind"], "Table");
    // and the review itself still works with plain JSON
    let (code, out) = k
        .request(
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            Some(&sar),
        )
        .expect("request");
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&out));
}

#[test]
fn version_has_git_commit_tree_state_and_build_date() {
    let c = Cluster::start();
    let mut k = conn(&c);
    let (code, v) = call(&mut k, "GET", "/version", None);
    assert_eq!(code, 200, "{v}");
    // the tests build from this repository's work tree, so git facts are known
    let in_git = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .is_ok_and(|o| o.status.success());
    let commit = v["gitCommit"].as_str().unwrap_or_default();
    if in_git {
        assert_eq!(commit.len(), 40, "{v}");
        assert!(commit.chars().all(|c| c.is_ascii_hexdigit()), "{v}");
        assert!(
            ["clean", "dirty"].contains(&v["gitTreeState"].as_str().unwrap_or_default()),
            "{v}"
        );
    }
    assert_ne!(commit, "unknown");
    let date = v["buildDate"].as_str().unwrap_or_default();
    assert_ne!(date, "1970-01-01T00:00:00Z");
    assert!(
        date.len() == 20 && date.ends_with('Z') && date.as_bytes()[10] == b'T',
        "{date}"
    );
}

/// kubectl 1.20 (the conformance suite's; it validates against `/openapi/v2` on the
/// client): `RK3S_TEST_KUBECTL_1_20`, else the conformance toolkit's build, if present.
fn kubectl_1_20() -> Option<String> {
    let path = std::env::var("RK3S_TEST_KUBECTL_1_20")
        .unwrap_or_else(|_| "/var/cache/rk3s-conformance/out/kubectl-1.20".to_string());
    std::path::Path::new(&path).exists().then_some(path)
}

fn patch(conn: &mut Conn, content_type: &str, path: &str, body: &Value) -> (u16, Value) {
    let b = serde_json::to_vec(body).expect("json");
    let (code, out) = conn
        .request_ct("PATCH", path, content_type, Some(&b))
        .expect("request");
    (code, parse(&out))
}

const CRDS: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";

/// Creates a cluster-scoped CRD `things.e2e.example.com` and waits until its first
/// version is served.
fn create_thing_crd(k: &mut Conn, versions: Value) {
    let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "things.e2e.example.com"},
        "spec": {"group": "e2e.example.com", "scope": "Cluster",
            "names": {"plural": "things", "singular": "thing", "kind": "Thing", "listKind": "ThingList"},
            "versions": versions}});
    let (code, out) = call(k, "POST", CRDS, Some(&crd));
    assert_eq!(code, 201, "{out}");
    let first = crd["spec"]["versions"][0]["name"].as_str().unwrap_or("v1");
    common::wait_for("the CRD served", std::time::Duration::from_secs(20), || {
        let (code, _) = call(
            k,
            "GET",
            &format!("/apis/e2e.example.com/{first}/things"),
            None,
        );
        (code == 200).then_some(())
    });
}

/// The `/openapi/v2` definitions (JSON).
fn definitions(k: &mut Conn) -> Value {
    let (code, doc) = call(k, "GET", "/openapi/v2", None);
    assert_eq!(code, 200);
    doc["definitions"].clone()
}

/// Group 4 (upstream "CustomResourcePublishOpenAPI"): `/openapi/v2` publishes CRD
/// schemas as upstream does for kubectl's client-side validation (preserve-unknown
/// nodes without properties, a root-preserving schema as a bare object), kubectl 1.20
/// creates objects with unknown fields there and explains them, and a renamed or
/// unserved version leaves the document.
#[test]
fn crd_openapi_v2_for_kubectl_validation_and_explain() {
    let c = Cluster::start();
    let mut k = conn(&c);
    create_thing_crd(
        &mut k,
        json!([
            {"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                "type": "object", "description": "Thing for testing",
                "properties": {"spec": {"type": "object", "description": "Specification of Thing",
                    "x-kubernetes-preserve-unknown-fields": true,
                    "properties": {"known": {"type": "string"}}},
                    "status": {"type": "object", "properties": {"n": {"type": "string", "nullable": true}}}}}}},
            {"name": "v2", "served": true, "storage": false, "schema": {"openAPIV3Schema": {
                "type": "object", "x-kubernetes-preserve-unknown-fields": true,
                "properties": {"spec": {"type": "object"}}}}}
        ]),
    );
    let (v1, v2) = ("com.example.e2e.v1.Thing", "com.example.e2e.v2.Thing");
    let defs = common::wait_for(
        "both definitions",
        std::time::Duration::from_secs(20),
        || {
            let d = definitions(&mut k);
            (d.get(v1).is_some() && d.get(v2).is_some()).then_some(d)
        },
    );
    assert_eq!(
        defs[v1]["properties"]["spec"],
        json!({"description": "Specification of Thing", "x-kubernetes-preserve-unknown-fields": true})
    );
    assert_eq!(
        defs[v1]["properties"]["status"]["properties"]["n"],
        json!({})
    );
    assert_eq!(
        defs[v2],
        json!({"type": "object", "x-kubernetes-group-version-kind":
            [{"group": "e2e.example.com", "kind": "Thing", "version": "v2"}]})
    );
    if let Some(old) = kubectl_1_20() {
        let cr = |version: &str, name: &str, extra: &str| {
            format!(
                r#"{{"apiVersion": "e2e.example.com/{version}", "kind": "Thing", "metadata": {{"name": "{name}"}}{extra}}}"#
            )
        };
        // Unknown fields under the preserving `spec`, and anywhere in the root-preserving v2.
        c.ok_with(
            &old,
            &["create", "--validate=true", "-f", "-"],
            Some(&cr(
                "v1",
                "a",
                r#", "spec": {"known": "k", "n": null, "a": {"b": [{"c": "d"}]}}"#,
            )),
        );
        c.ok_with(
            &old,
            &["create", "--validate=true", "-f", "-"],
            Some(&cr("v2", "b", r#", "x": {"y": 1}, "spec": {"z": true}"#)),
        );
        // Client-side validation still refuses unknown fields where the schema knows all.
        let out = c.kubectl_with(
            &old,
            &["create", "--validate=true", "-f", "-"],
            Some(&cr("v1", "c", r#", "bogus": 1"#)),
        );
        assert!(!out.status.success(), "an unknown root field is refused");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("unknown field"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // (v2 is the preferred version: explain shows v1 when asked for it.)
        let v1_only = ["--api-version=e2e.example.com/v1"];
        let explained = c.ok_with(&old, &["explain", "things.spec", v1_only[0]], None);
        assert!(explained.contains("Specification of Thing"), "{explained}");
        let explained = c.ok_with(&old, &["explain", "things", v1_only[0]], None);
        assert!(explained.contains("Thing for testing"), "{explained}");
        let explained = c.ok_with(&old, &["explain", "things"], None);
        assert!(explained.contains("e2e.example.com/v2"), "{explained}");
    } else {
        eprintln!("kubectl 1.20 not found: its client-side validation is not exercised");
    }
    let explained = c.ok(&["explain", "things.spec", "--api-version=e2e.example.com/v1"]);
    assert!(explained.contains("Specification of Thing"), "{explained}");
    // Renamed: v2 -> v3; then v3 no longer served.
    let crd_path = format!("{CRDS}/things.e2e.example.com");
    let (code, out) = patch(
        &mut k,
        "application/json-patch+json",
        &crd_path,
        &json!([{"op": "replace", "path": "/spec/versions/1/name", "value": "v3"}]),
    );
    assert_eq!(code, 200, "{out}");
    let v3 = "com.example.e2e.v3.Thing";
    let defs = definitions(&mut k);
    let renamed = |d: &Value| d.get(v3).is_some() && d.get(v2).is_none();
    if !renamed(&defs) {
        common::wait_for("v2 renamed", std::time::Duration::from_secs(5), || {
            renamed(&definitions(&mut k)).then_some(())
        });
    }
    let (code, out) = patch(
        &mut k,
        "application/json-patch+json",
        &crd_path,
        &json!([{"op": "replace", "path": "/spec/versions/1/served", "value": false}]),
    );
    assert_eq!(code, 200, "{out}");
    common::wait_for("v3 unserved", std::time::Duration::from_secs(5), || {
        let d = definitions(&mut k);
        (d.get(v3).is_none() && d.get(v1).is_some()).then_some(())
    });
}

/// Group 5 (upstream "should be able to change the type from ExternalName to
/// ClusterIP/NodePort" and "from ClusterIP/NodePort to ExternalName"), as the e2e jig
/// does it: GET, change the type, PUT.
#[test]
fn service_type_changes_to_and_from_external_name() {
    let c = Cluster::start();
    let mut k = conn(&c);
    let path = "/api/v1/namespaces/default/services";
    let (code, svc) = call(
        &mut k,
        "POST",
        path,
        Some(
            &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
            "spec": {"type": "NodePort", "selector": {"a": "b"}, "ports": [{"name": "http", "port": 80}]}}),
        ),
    );
    assert_eq!(code, 201, "{svc}");
    let ip = svc["spec"]["clusterIP"].as_str().expect("ip").to_string();
    let mut external = svc.clone();
    external["spec"]["type"] = json!("ExternalName");
    external["spec"]["externalName"] = json!("example.com");
    let (code, out) = call(&mut k, "PUT", &format!("{path}/s"), Some(&external));
    assert_eq!(code, 200, "{out}");
    for f in [
        "clusterIP",
        "clusterIPs",
        "ipFamilies",
        "ipFamilyPolicy",
        "externalTrafficPolicy",
    ] {
        assert!(out["spec"].get(f).is_none(), "{f} kept: {out}");
    }
    assert!(out["spec"]["ports"][0].get("nodePort").is_none(), "{out}");
    let (code, _) = call(
        &mut k,
        "GET",
        &format!("/apis/networking.k8s.io/v1/ipaddresses/{ip}"),
        None,
    );
    assert_eq!(code, 404, "the cluster IP is released");
    for typ in ["ClusterIP", "NodePort"] {
        let (_, cur) = call(&mut k, "GET", &format!("{path}/s"), None);
        let mut back = cur.clone();
        back["spec"]["type"] = json!(typ);
        back["spec"]["externalName"] = json!("");
        let (code, back) = call(&mut k, "PUT", &format!("{path}/s"), Some(&back));
        assert_eq!(code, 200, "{back}");
        let ip = back["spec"]["clusterIP"].as_str().unwrap_or("");
        assert!(ip.starts_with("10.43."), "{typ}: {back}");
        assert_eq!(back["spec"]["clusterIPs"], json!([ip]));
        if typ == "NodePort" {
            assert!(
                back["spec"]["ports"][0]["nodePort"].as_u64().is_some(),
                "{back}"
            );
        }
        let mut again = back.clone();
        again["spec"]["type"] = json!("ExternalName");
        again["spec"]["externalName"] = json!("example.com");
        let (code, out) = call(&mut k, "PUT", &format!("{path}/s"), Some(&again));
        assert_eq!(code, 200, "{out}");
        assert!(out["spec"].get("clusterIP").is_none(), "{out}");
    }
}

/// Group 6 (upstream "Ingress API" and "CertificateSigningRequest API"): `/status` and
/// `/approval` merge patches change annotations along with the status; the spec stays.
#[test]
fn status_and_approval_patches_keep_metadata_changes() {
    const MERGE: &str = "application/merge-patch+json";
    let c = Cluster::start();
    let mut k = conn(&c);
    let ing = "/apis/networking.k8s.io/v1/namespaces/default/ingresses";
    let (code, out) = call(
        &mut k,
        "POST",
        ing,
        Some(
            &json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "i"},
            "spec": {"defaultBackend": {"service": {"name": "s", "port": {"number": 80}}}}}),
        ),
    );
    assert_eq!(code, 201, "{out}");
    let (code, out) = patch(
        &mut k,
        MERGE,
        &format!("{ing}/i/status"),
        &json!({"metadata": {"annotations": {"patchedstatus": "true"}},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}},
            "spec": {"defaultBackend": {"service": {"name": "other", "port": {"number": 80}}}}}),
    );
    assert_eq!(code, 200, "{out}");
    assert_eq!(out["metadata"]["annotations"]["patchedstatus"], "true");
    assert_eq!(
        out["status"]["loadBalancer"]["ingress"][0]["ip"],
        "192.0.2.1"
    );
    assert_eq!(out["spec"]["defaultBackend"]["service"]["name"], "s");
    let csr = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
    let (code, out) = call(
        &mut k,
        "POST",
        csr,
        Some(
            &json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
            "metadata": {"name": "e2e"}, "spec": {"request": "Y3Ny", "signerName": "example.com/e2e",
            "usages": ["client auth"]}}),
        ),
    );
    assert_eq!(code, 201, "{out}");
    let (code, out) = patch(
        &mut k,
        MERGE,
        &format!("{csr}/e2e/approval"),
        &json!({"metadata": {"annotations": {"patchedapproval": "true"}},
            "status": {"conditions": [{"type": "ApprovalPatch", "status": "True", "reason": "e2e"}]}}),
    );
    assert_eq!(code, 200, "{out}");
    assert_eq!(out["metadata"]["annotations"]["patchedapproval"], "true");
    assert_eq!(out["status"]["conditions"][0]["type"], "ApprovalPatch");
    let (code, out) = patch(
        &mut k,
        MERGE,
        &format!("{csr}/e2e/status"),
        &json!({"metadata": {"annotations": {"patchedstatus": "true"}}, "status": {"certificate": "Y2VydA=="}}),
    );
    assert_eq!(code, 200, "{out}");
    assert_eq!(out["metadata"]["annotations"]["patchedstatus"], "true");
    assert_eq!(out["status"]["certificate"], "Y2VydA==");
}

/// Group 7 (upstream "custom resource defaulting for requests and from storage
/// works"): an object stored before its schema had a default reads with it.
#[test]
fn crd_defaults_apply_on_read() {
    let c = Cluster::start();
    let mut k = conn(&c);
    create_thing_crd(
        &mut k,
        json!([{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
            "type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}}}}}]),
    );
    let things = "/apis/e2e.example.com/v1/things";
    let (code, out) = call(
        &mut k,
        "POST",
        things,
        Some(
            &json!({"apiVersion": "e2e.example.com/v1", "kind": "Thing", "metadata": {"name": "t1"}}),
        ),
    );
    assert_eq!(code, 201, "{out}");
    let crd_path = format!("{CRDS}/things.e2e.example.com");
    let (code, out) = patch(
        &mut k,
        "application/json-patch+json",
        &crd_path,
        &json!([{"op": "add", "path": "/spec/versions/0/schema/openAPIV3Schema/properties/a/default", "value": "A"}]),
    );
    assert_eq!(code, 200, "{out}");
    common::wait_for(
        "a defaulted on read",
        std::time::Duration::from_secs(10),
        || {
            let (_, t) = call(&mut k, "GET", &format!("{things}/t1"), None);
            (t["a"] == "A").then_some(())
        },
    );
    let (_, list) = call(&mut k, "GET", things, None);
    assert_eq!(list["items"][0]["a"], "A", "{list}");
    let (code, out) = k
        .request("GET", &format!("{things}?watch=1&timeoutSeconds=1"), None)
        .expect("watch");
    assert_eq!(code, 200);
    let ev: Value = String::from_utf8_lossy(&out)
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("an event");
    assert_eq!(ev["object"]["a"], "A", "{ev}");
    // A new object gets it on create; after the default moves to b, t2 keeps its a.
    let (code, t2) = call(
        &mut k,
        "POST",
        things,
        Some(
            &json!({"apiVersion": "e2e.example.com/v1", "kind": "Thing", "metadata": {"name": "t2"}}),
        ),
    );
    assert_eq!((code, &t2["a"]), (201, &json!("A")), "{t2}");
    let (code, out) = patch(
        &mut k,
        "application/json-patch+json",
        &crd_path,
        &json!([{"op": "remove", "path": "/spec/versions/0/schema/openAPIV3Schema/properties/a/default"},
            {"op": "add", "path": "/spec/versions/0/schema/openAPIV3Schema/properties/b/default", "value": "B"}]),
    );
    assert_eq!(code, 200, "{out}");
    common::wait_for(
        "b defaulted on read",
        std::time::Duration::from_secs(10),
        || {
            let (_, t) = call(&mut k, "GET", &format!("{things}/t2"), None);
            (t["b"] == "B" && t["a"] == "A").then_some(())
        },
    );
}
