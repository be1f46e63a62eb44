//! End-to-end: upstream conformance behaviours of the API server (issue 17 groups 8, 9
//! and 10) against the real `rk3s server`, over raw HTTPS.
//!
//! - group 8: core/v1 Events select on every field upstream supports (`involvedObject.*`,
//!   `reason`, `reportingComponent`, `source`, `type`), events.k8s.io/v1 Events on their
//!   own names (`regarding.*`, `reportingController`, ...), in lists and watches, and
//!   unknown fields answer upstream's 400 `field label not supported: <x>`.
//! - group 9: asking only for a `Table` of a resource without one
//!   (`selfsubjectaccessreviews`, as the conformance test does) answers 406 NotAcceptable.
//! - group 10: `/version` carries the build's git commit, tree state and build date.

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
