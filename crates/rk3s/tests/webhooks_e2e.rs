//! End-to-end: the API server's webhooks against a real HTTPS webhook server run by
//! this test (rustls, a certificate of its own, given to the API server as `caBundle`):
//! - a mutating webhook's additions are defaulted as upstream defaults a decoded object
//!   (an added init container gets `imagePullPolicy`, `terminationMessagePolicy`);
//! - validating webhooks are asked about DELETE (`oldObject` set) and can refuse it;
//! - CRD conversion webhooks: objects are stored in the storage version and served in
//!   every version, converted by the webhook (issue 17: CustomResourceConversionWebhook).

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use common::{wait_for, Cluster};
use serde_json::{json, Value};

/// A webhook server on 127.0.0.1: answers every review by path; runs until the test ends.
struct Webhooks {
    port: u16,
    ca_b64: String,
}

fn review_answer(path: &str, review: &Value) -> Value {
    let uid = review["request"]["uid"].clone();
    match path {
        "/mutate-pod" => {
            let patch = json!([{"op": "add", "path": "/spec/initContainers", "value": [
                {"name": "webhook-added-init-container", "image": "busybox:1.29",
                 "command": ["true"]}]}]);
            let b64 = base64::engine::general_purpose::STANDARD.encode(patch.to_string());
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "response": {"uid": uid, "allowed": true, "patchType": "JSONPatch", "patch": b64}})
        }
        "/deny-delete" => {
            let deny = review["request"]["operation"] == "DELETE"
                && review["request"]["oldObject"]["metadata"]["labels"]["protect"] == "yes"
                && review["request"]["object"].is_null();
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "response": {"uid": uid, "allowed": !deny,
                    "status": {"code": 403, "message": "this object is protected"}}})
        }
        "/deny-connect" => {
            let r = &review["request"];
            let deny = r["operation"] == "CONNECT"
                && r["kind"]["kind"] == "PodExecOptions"
                && r["subResource"] == "exec"
                && r["object"]["command"] == json!(["echo", "forbidden"]);
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "response": {"uid": uid, "allowed": !deny,
                    "status": {"code": 403, "message": "exec is not allowed here"}}})
        }
        "/convert" => {
            // v1 `spec.hostPort: "host:port"` <-> v2 `spec.host` + `spec.port`.
            let desired = review["request"]["desiredAPIVersion"]
                .as_str()
                .unwrap_or("");
            let objects = review["request"]["objects"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let converted: Vec<Value> = objects
                .into_iter()
                .map(|mut o| {
                    let spec = o["spec"].as_object().cloned().unwrap_or_default();
                    let mut out = serde_json::Map::new();
                    if desired.ends_with("/v2") {
                        if let Some((h, p)) = spec
                            .get("hostPort")
                            .and_then(Value::as_str)
                            .and_then(|hp| hp.split_once(':'))
                        {
                            out.insert("host".into(), json!(h));
                            out.insert("port".into(), json!(p));
                        }
                    } else if let (Some(h), Some(p)) = (spec.get("host"), spec.get("port")) {
                        out.insert(
                            "hostPort".into(),
                            json!(format!(
                                "{}:{}",
                                h.as_str().unwrap_or(""),
                                p.as_str().unwrap_or("")
                            )),
                        );
                    }
                    o["spec"] = Value::Object(out);
                    o["apiVersion"] = json!(desired);
                    o
                })
                .collect();
            json!({"apiVersion": review["apiVersion"], "kind": "ConversionReview",
                "response": {"uid": uid, "convertedObjects": converted, "result": {"status": "Success"}}})
        }
        _ => json!({}),
    }
}

fn serve(mut tls: rustls::StreamOwned<rustls::ServerConnection, std::net::TcpStream>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let (head_end, len) = loop {
        let Ok(n) = tls.read(&mut chunk) else { return };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (i + 4, len);
        }
    };
    while buf.len() < head_end + len {
        match tls.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let path = head
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .split('?')
        .next()
        .unwrap_or("/")
        .to_string();
    let review: Value =
        serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(Value::Null);
    let body = review_answer(&path, &review).to_string();
    let _ = write!(
        tls,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tls.flush();
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

fn start_webhooks() -> Webhooks {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("cert");
    let cert = ck.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        ck.signing_key.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("server cert");
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let cfg = Arc::new(cfg);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let cfg = cfg.clone();
            std::thread::spawn(move || {
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
                if let Ok(conn) = rustls::ServerConnection::new(cfg) {
                    serve(rustls::StreamOwned::new(conn, tcp));
                }
            });
        }
    });
    Webhooks {
        port,
        ca_b64: base64::engine::general_purpose::STANDARD.encode(ck.cert.pem()),
    }
}

fn client_config(w: &Webhooks, path: &str) -> Value {
    json!({"url": format!("https://127.0.0.1:{}{path}", w.port), "caBundle": w.ca_b64})
}

#[test]
fn admission_webhooks_see_defaults_and_deletes() {
    let c = Cluster::start();
    let w = start_webhooks();
    let mutating = json!({"apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration", "metadata": {"name": "add-init"},
        "webhooks": [{"name": "add-init.rk3s.test", "clientConfig": client_config(&w, "/mutate-pod"),
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "objectSelector": {"matchLabels": {"mutate": "yes"}},
            "sideEffects": "None", "admissionReviewVersions": ["v1"]}]});
    let validating = json!({"apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration", "metadata": {"name": "deny-delete"},
        "webhooks": [{"name": "deny-delete.rk3s.test", "clientConfig": client_config(&w, "/deny-delete"),
            "rules": [{"operations": ["DELETE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps"]}],
            "sideEffects": "None", "admissionReviewVersions": ["v1"]}]});
    let connect = json!({"apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration", "metadata": {"name": "deny-connect"},
        "webhooks": [{"name": "deny-connect.rk3s.test", "clientConfig": client_config(&w, "/deny-connect"),
            "rules": [{"operations": ["CONNECT"], "apiGroups": [""], "apiVersions": ["v1"],
                "resources": ["pods/exec", "pods/attach"]}],
            "sideEffects": "None", "admissionReviewVersions": ["v1"]}]});
    for cfg in [&mutating, &validating, &connect] {
        c.ok_with(
            &common::kubectl_bin(),
            &["apply", "-f", "-"],
            Some(&cfg.to_string()),
        );
    }

    // The webhook adds an init container without pull or termination-message policy:
    // the pod is created with upstream's defaults for it, not refused as invalid.
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "to-be-mutated", "labels": {"mutate": "yes"}},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.29"}]}});
    let out = wait_for("the mutating webhook", Duration::from_secs(30), || {
        let o = c.kubectl_with(
            &common::kubectl_bin(),
            &["create", "-f", "-", "-o", "json"],
            Some(&pod.to_string()),
        );
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).to_string())
    });
    let created: Value = serde_json::from_str(&out).expect("json");
    let init = &created["spec"]["initContainers"][0];
    assert_eq!(init["name"], "webhook-added-init-container", "{created}");
    assert_eq!(init["imagePullPolicy"], "IfNotPresent", "{created}");
    assert_eq!(init["terminationMessagePolicy"], "File", "{created}");

    // DELETE goes to the validating webhook with the old object.
    c.ok(&["create", "configmap", "keep", "--from-literal=a=b"]);
    c.ok(&["label", "configmap", "keep", "protect=yes"]);
    c.ok(&["create", "configmap", "free"]);
    let refused = c.fails(&["delete", "configmap", "keep"], None);
    assert!(
        refused.contains("admission webhook \"deny-delete.rk3s.test\" denied the request: this object is protected"),
        "{refused}"
    );
    c.ok(&["get", "configmap", "keep"]);
    c.ok(&["delete", "configmap", "free"]);

    // CONNECT: the exec request's options reach the webhook, which refuses it (this
    // server runs no node agent: an allowed exec would fail later, not at admission).
    let refused = c.fails(&["exec", "to-be-mutated", "--", "echo", "forbidden"], None);
    assert!(
        refused.contains("admission webhook \"deny-connect.rk3s.test\" denied the request: exec is not allowed here"),
        "{refused}"
    );
    let other = c.fails(&["exec", "to-be-mutated", "--", "echo", "fine"], None);
    assert!(!other.contains("deny-connect"), "{other}");
}

/// A CRD of `group` with versions v1 (storage) and v2 (served), `Widget`s in
/// namespaces, converted as `conversion` says.
fn two_version_crd(group: &str, v1_spec: Value, v2_spec: Value, conversion: Value) -> Value {
    let version = |name: &str, storage: bool, spec: Value| {
        json!({"name": name, "served": true, "storage": storage, "schema": {"openAPIV3Schema":
            {"type": "object", "properties": {"spec": spec}}}})
    };
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("widgets.{group}")},
        "spec": {"group": group, "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
            "versions": [version("v1", true, v1_spec), version("v2", false, v2_spec)],
            "conversion": conversion}})
}

fn get_json(c: &Cluster, path: &str) -> Value {
    serde_json::from_str(&c.ok(&["get", "--raw", path])).expect("json")
}

#[test]
fn crd_conversion_webhook_serves_every_version() {
    let c = Cluster::start();
    let w = start_webhooks();
    let string = json!({"type": "string"});
    let crd = two_version_crd(
        "conv.example.com",
        json!({"type": "object", "properties": {"hostPort": string}}),
        json!({"type": "object", "properties": {"host": string, "port": string}}),
        json!({"strategy": "Webhook", "webhook": {"conversionReviewVersions": ["v1", "v1beta1"],
            "clientConfig": client_config(&w, "/convert")}}),
    );
    c.ok_with(
        &common::kubectl_bin(),
        &["create", "-f", "-"],
        Some(&crd.to_string()),
    );
    let (v1, v2) = (
        "/apis/conv.example.com/v1/namespaces/default/widgets",
        "/apis/conv.example.com/v2/namespaces/default/widgets",
    );
    let created = wait_for("v2 served", Duration::from_secs(30), || {
        let o = c.kubectl_with(
            &common::kubectl_bin(),
            &["create", "-f", "-", "-o", "json"],
            Some(
                &json!({"apiVersion": "conv.example.com/v2", "kind": "Widget",
                    "metadata": {"name": "from-v2"}, "spec": {"host": "localhost", "port": "8080"}})
                .to_string(),
            ),
        );
        o.status
            .success()
            .then(|| serde_json::from_slice::<Value>(&o.stdout).expect("json"))
    });
    // The answer is in the request's version.
    assert_eq!(created["apiVersion"], "conv.example.com/v2", "{created}");
    assert_eq!(
        created["spec"],
        json!({"host": "localhost", "port": "8080"})
    );
    c.ok_with(
        &common::kubectl_bin(),
        &["create", "-f", "-"],
        Some(
            &json!({"apiVersion": "conv.example.com/v1", "kind": "Widget",
                "metadata": {"name": "from-v1"}, "spec": {"hostPort": "example.org:443"}})
            .to_string(),
        ),
    );

    // Each through the other version.
    let got = get_json(&c, &format!("{v1}/from-v2"));
    assert_eq!(got["apiVersion"], "conv.example.com/v1", "{got}");
    assert_eq!(got["spec"], json!({"hostPort": "localhost:8080"}), "{got}");
    let got = get_json(&c, &format!("{v2}/from-v1"));
    assert_eq!(got["apiVersion"], "conv.example.com/v2", "{got}");
    assert_eq!(
        got["spec"],
        json!({"host": "example.org", "port": "443"}),
        "{got}"
    );

    // A list through v2: every item in v2 (one stored as v1 by each path).
    let list = get_json(&c, v2);
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{list}");
    for item in items {
        assert_eq!(item["apiVersion"], "conv.example.com/v2", "{list}");
        assert!(
            item["spec"]["host"].is_string() && item["spec"]["port"].is_string(),
            "{list}"
        );
        assert!(item["spec"].get("hostPort").is_none(), "{list}");
    }
    // The stored form is v1: listing through v1 needs no conversion and shows hostPort.
    let list = get_json(&c, v1);
    let items = list["items"].as_array().expect("items");
    assert!(
        items
            .iter()
            .all(|i| i["apiVersion"] == "conv.example.com/v1" && i["spec"]["hostPort"].is_string()),
        "{list}"
    );

    // A merge patch through v2 of an object stored as v1.
    let patched: Value = serde_json::from_str(&c.ok(&[
        "patch",
        "widgets.v2.conv.example.com",
        "from-v1",
        "--type=merge",
        "-p",
        r#"{"spec":{"port":"8443"}}"#,
        "-o",
        "json",
    ]))
    .expect("json");
    assert_eq!(patched["apiVersion"], "conv.example.com/v2", "{patched}");
    assert_eq!(
        patched["spec"],
        json!({"host": "example.org", "port": "8443"}),
        "{patched}"
    );
    let got = get_json(&c, &format!("{v1}/from-v1"));
    assert_eq!(
        got["spec"],
        json!({"hostPort": "example.org:8443"}),
        "{got}"
    );

    // Strategy None: only apiVersion changes.
    let open = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    let crd = two_version_crd(
        "plain.example.com",
        open.clone(),
        open,
        json!({"strategy": "None"}),
    );
    c.ok_with(
        &common::kubectl_bin(),
        &["create", "-f", "-"],
        Some(&crd.to_string()),
    );
    wait_for("plain v2 served", Duration::from_secs(30), || {
        let o = c.kubectl_with(
            &common::kubectl_bin(),
            &["create", "-f", "-"],
            Some(
                &json!({"apiVersion": "plain.example.com/v2", "kind": "Widget",
                    "metadata": {"name": "w"}, "spec": {"anything": "kept"}})
                .to_string(),
            ),
        );
        o.status.success().then_some(())
    });
    let got = get_json(
        &c,
        "/apis/plain.example.com/v1/namespaces/default/widgets/w",
    );
    assert_eq!(got["apiVersion"], "plain.example.com/v1", "{got}");
    assert_eq!(got["spec"], json!({"anything": "kept"}), "{got}");
    let list = get_json(&c, "/apis/plain.example.com/v2/namespaces/default/widgets");
    assert_eq!(
        list["items"][0]["apiVersion"], "plain.example.com/v2",
        "{list}"
    );
}
