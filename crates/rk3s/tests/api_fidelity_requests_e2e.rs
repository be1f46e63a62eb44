//! API fidelity of request bodies and authentication (issue 11, items 1, 5, 8, 9, 12),
//! over raw HTTPS and with the real kubectl:
//! - protobuf DeleteOptions (DELETE, deletecollection) and Eviction bodies, built here
//!   byte by byte as client-go sends them (`k8s\0` + runtime.Unknown);
//! - malformed DELETE bodies are 400 with Go's decoding messages and never drop the
//!   connection;
//! - a JSON object sent as a JSON patch is 400;
//! - TokenRequest with explicit nulls (`"boundObjectRef": null`, kubectl 1.27-1.31);
//! - bad credentials (bearer token, client certificate from another CA) are 401 on
//!   every path, `/version` and `/healthz` included; anonymous requests are not.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use common::http::{Conn, Creds};
use common::Cluster;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};

const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

// ---- protobuf bodies, by hand --------------------------------------------------------

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn bytes_field(tag: u32, b: &[u8], out: &mut Vec<u8>) {
    varint(u64::from(tag) << 3 | 2, out);
    varint(b.len() as u64, out);
    out.extend_from_slice(b);
}

fn varint_field(tag: u32, n: u64, out: &mut Vec<u8>) {
    varint(u64::from(tag) << 3, out);
    varint(n, out);
}

/// `k8s\0` + runtime.Unknown{typeMeta{apiVersion, kind}, raw, contentEncoding, contentType}.
fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let mut type_meta = Vec::new();
    bytes_field(1, api_version.as_bytes(), &mut type_meta);
    bytes_field(2, kind.as_bytes(), &mut type_meta);
    let mut out = b"k8s\0".to_vec();
    bytes_field(1, &type_meta, &mut out);
    bytes_field(2, raw, &mut out);
    bytes_field(3, b"", &mut out);
    bytes_field(4, b"", &mut out);
    out
}

/// meta/v1 DeleteOptions: gracePeriodSeconds = 1, preconditions = 2 {uid = 1},
/// propagationPolicy = 4, dryRun = 5.
fn delete_options(
    grace: Option<u64>,
    uid: Option<&str>,
    policy: Option<&str>,
    dry_run: bool,
) -> Vec<u8> {
    let mut m = Vec::new();
    if let Some(g) = grace {
        varint_field(1, g, &mut m);
    }
    if let Some(u) = uid {
        let mut pre = Vec::new();
        bytes_field(1, u.as_bytes(), &mut pre);
        bytes_field(2, &pre, &mut m);
    }
    if let Some(p) = policy {
        bytes_field(4, p.as_bytes(), &mut m);
    }
    if dry_run {
        bytes_field(5, b"All", &mut m);
    }
    m
}

/// policy/v1 Eviction: metadata = 1 {name = 1, namespace = 3}, deleteOptions = 2.
fn eviction(name: &str, ns: &str, opts: &[u8]) -> Vec<u8> {
    let mut meta = Vec::new();
    bytes_field(1, name.as_bytes(), &mut meta);
    bytes_field(3, ns.as_bytes(), &mut meta);
    let mut m = Vec::new();
    bytes_field(1, &meta, &mut m);
    bytes_field(2, opts, &mut m);
    envelope("policy/v1", "Eviction", &m)
}

// ---- raw HTTPS with any credentials ----------------------------------------------------

fn kubeconfig_field(c: &Cluster, name: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(&c.kubeconfig).expect("kubeconfig");
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{name}:")))
        .expect("kubeconfig field");
    let v = line.split_once(':').map(|x| x.1.trim()).unwrap_or_default();
    base64::engine::general_purpose::STANDARD
        .decode(v)
        .expect("base64")
}

/// A TLS client trusting the cluster CA, with an optional client certificate.
fn tls_client(
    c: &Cluster,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&kubeconfig_field(c, "certificate-authority-data")) {
        roots.add(cert.expect("ca pem")).expect("add ca");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    Arc::new(match client {
        Some((chain, key)) => b.with_client_auth_cert(chain, key).expect("client auth"),
        None => b.with_no_client_auth(),
    })
}

/// One request on a fresh connection with extra headers; (status, body).
fn raw(
    c: &Cluster,
    tls: &Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, Vec<u8>)> {
    let tcp = TcpStream::connect(("127.0.0.1", c.port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
    let name = ServerName::try_from("localhost").map_err(std::io::Error::other)?;
    let conn = rustls::ClientConnection::new(tls.clone(), name).map_err(std::io::Error::other)?;
    let mut stream = BufReader::new(rustls::StreamOwned::new(conn, tcp));
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Length: 0\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.get_mut().write_all(head.as_bytes())?;
    stream.get_mut().flush()?;
    let mut line = String::new();
    stream.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut len = 0;
    loop {
        let mut h = String::new();
        stream.read_line(&mut h)?;
        let h = h.trim_end().to_ascii_lowercase();
        if h.is_empty() {
            break;
        }
        if let Some(v) = h.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; len];
    stream.read_exact(&mut body)?;
    Ok((status, body))
}

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

fn create_cm(k: &mut Conn, name: &str, labels: Value) -> Value {
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}});
    let (code, cm) = send(
        k,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        &serde_json::to_vec(&body).expect("json"),
    );
    assert_eq!(code, 201, "{cm}");
    cm
}

fn exists(k: &mut Conn, name: &str) -> bool {
    let (code, _) = send(
        k,
        "GET",
        &format!("/api/v1/namespaces/default/configmaps/{name}"),
        "application/json",
        b"",
    );
    code == 200
}

fn wait_default_sa(c: &Cluster) {
    common::wait_for("default service account", Duration::from_secs(30), || {
        c.kubectl(&["get", "sa", "default"])
            .status
            .success()
            .then_some(())
    });
}

// ---- item 1 ------------------------------------------------------------------------------

#[test]
fn protobuf_delete_options_and_eviction_bodies() {
    let c = Cluster::start();
    let mut k = conn(&c);

    // DELETE with protobuf DeleteOptions, typed under the client's group version (core).
    create_cm(&mut k, "pb1", json!({}));
    let (code, body) = send(
        &mut k,
        "DELETE",
        "/api/v1/namespaces/default/configmaps/pb1",
        PROTOBUF,
        &envelope(
            "v1",
            "DeleteOptions",
            &delete_options(Some(0), None, Some("Background"), false),
        ),
    );
    assert_eq!(code, 200, "{body}");
    assert!(!exists(&mut k, "pb1"));

    // The body is really read: a wrong UID precondition is a 409 ...
    let cm = create_cm(&mut k, "pb2", json!({}));
    let (code, body) = send(
        &mut k,
        "DELETE",
        "/api/v1/namespaces/default/configmaps/pb2",
        PROTOBUF,
        &envelope(
            "v1",
            "DeleteOptions",
            &delete_options(None, Some("not-the-uid"), None, false),
        ),
    );
    assert_eq!(code, 409, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| m.starts_with("Precondition failed: UID in precondition: not-the-uid")), "{body}");
    // ... dryRun in the body deletes nothing ...
    let (code, body) = send(
        &mut k,
        "DELETE",
        "/api/v1/namespaces/default/configmaps/pb2",
        PROTOBUF,
        &envelope(
            "v1",
            "DeleteOptions",
            &delete_options(None, None, None, true),
        ),
    );
    assert_eq!(code, 200, "{body}");
    assert!(exists(&mut k, "pb2"), "a dry-run delete must not delete");
    // ... and the right UID deletes (meta.k8s.io/v1 typeMeta is accepted too).
    let uid = cm["metadata"]["uid"].as_str().expect("uid");
    let (code, body) = send(
        &mut k,
        "DELETE",
        "/api/v1/namespaces/default/configmaps/pb2",
        PROTOBUF,
        &envelope(
            "meta.k8s.io/v1",
            "DeleteOptions",
            &delete_options(None, Some(uid), None, false),
        ),
    );
    assert_eq!(code, 200, "{body}");
    assert!(!exists(&mut k, "pb2"));

    // deletecollection with a protobuf body.
    for n in ["c1", "c2", "keep"] {
        create_cm(
            &mut k,
            n,
            json!({"set": if n == "keep" { "b" } else { "a" }}),
        );
    }
    let (code, body) = send(
        &mut k,
        "DELETE",
        "/api/v1/namespaces/default/configmaps?labelSelector=set%3Da",
        PROTOBUF,
        &envelope(
            "v1",
            "DeleteOptions",
            &delete_options(Some(0), None, Some("Background"), false),
        ),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["items"].as_array().map(Vec::len), Some(2), "{body}");
    assert!(!exists(&mut k, "c1") && !exists(&mut k, "c2") && exists(&mut k, "keep"));

    // A Deployment (apps/v1 DeleteOptions, as the apps client encodes them).
    let dep = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}});
    let (code, body) = send(
        &mut k,
        "POST",
        "/apis/apps/v1/namespaces/default/deployments",
        "application/json",
        &serde_json::to_vec(&dep).expect("json"),
    );
    assert_eq!(code, 201, "{body}");
    let (code, body) = send(
        &mut k,
        "DELETE",
        "/apis/apps/v1/namespaces/default/deployments/web",
        PROTOBUF,
        &envelope(
            "apps/v1",
            "DeleteOptions",
            &delete_options(None, None, Some("Foreground"), false),
        ),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["metadata"]["finalizers"],
        json!(["foregroundDeletion"]),
        "Foreground from the protobuf body: {body}"
    );

    // Eviction (policy/v1) as protobuf: the pod (not bound to a node) goes away.
    wait_default_sa(&c);
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ev"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    let (code, body) = send(
        &mut k,
        "POST",
        "/api/v1/namespaces/default/pods",
        "application/json",
        &serde_json::to_vec(&pod).expect("json"),
    );
    assert_eq!(code, 201, "{body}");
    let (code, body) = send(
        &mut k,
        "POST",
        "/api/v1/namespaces/default/pods/ev/eviction",
        PROTOBUF,
        &eviction(
            "other",
            "default",
            &delete_options(Some(0), None, None, false),
        ),
    );
    assert_eq!(
        (code, body["message"].as_str()),
        (
            400,
            Some("name in URL does not match name in Eviction object")
        ),
        "{body}"
    );
    let (code, body) = send(
        &mut k,
        "POST",
        "/api/v1/namespaces/default/pods/ev/eviction",
        PROTOBUF,
        &eviction("ev", "default", &delete_options(Some(0), None, None, false)),
    );
    assert_eq!(code, 201, "{body}");
    let (code, _) = send(
        &mut k,
        "GET",
        "/api/v1/namespaces/default/pods/ev",
        "application/json",
        b"",
    );
    assert_eq!(code, 404, "the evicted pod is gone");

    // kubectl's own deletes work as before, with the default kubectl and 1.33.
    create_cm(&mut k, "kc1", json!({}));
    c.ok(&["delete", "configmap", "kc1"]);
    let kubectl_133 = "/usr/lib/google-cloud-sdk/bin/kubectl.1.33";
    if std::path::Path::new(kubectl_133).exists() {
        create_cm(&mut k, "kc2", json!({}));
        c.ok_with(
            kubectl_133,
            &["delete", "configmap", "kc2", "--wait=false"],
            None,
        );
        c.ok_with(kubectl_133, &["delete", "configmap", "-l", "set=b"], None);
        assert!(!exists(&mut k, "kc2") && !exists(&mut k, "keep"));
    } else {
        eprintln!("{kubectl_133} not installed: 1.33 delete not checked");
    }
}

// ---- item 12 -----------------------------------------------------------------------------

#[test]
fn malformed_delete_bodies_are_400_and_never_drop_the_connection() {
    let c = Cluster::start();
    let mut k = conn(&c);
    create_cm(&mut k, "victim", json!({"x": "y"}));
    let find_kind = r#"struct { APIVersion string "json:\"apiVersion,omitempty\""; Kind string "json:\"kind,omitempty\"" }"#;
    let not_object = |what: &str| {
        format!("couldn't get version/kind; json parse error: json: cannot unmarshal {what} into Go value of type {find_kind}")
    };
    let cases: Vec<(&str, &[u8], String)> = vec![
        ("?propagationPolicy=Foreground", br#"[{"gracePeriodSeconds":0}]"#, not_object("array")),
        ("?gracePeriodSeconds=0", b"42", not_object("number")),
        ("?propagationPolicy=Background&gracePeriodSeconds=1", br#""Background""#, not_object("string")),
        ("", b"[]", not_object("array")),
        ("", br#"{"gracePeriodSeconds":"30"}"#, "json: cannot unmarshal string into Go struct field DeleteOptions.gracePeriodSeconds of type int64".into()),
        ("", br#"{"gracePeriodSeconds":2.5}"#, "json: cannot unmarshal number 2.5 into Go struct field DeleteOptions.gracePeriodSeconds of type int64".into()),
        ("?gracePeriodSeconds=0", br#"{"propagationPolicy":["Foreground"]}"#, "json: cannot unmarshal array into Go struct field DeleteOptions.propagationPolicy of type v1.DeletionPropagation".into()),
        ("", br#"{"preconditions":"uid"}"#, "json: cannot unmarshal string into Go struct field DeleteOptions.preconditions of type v1.Preconditions".into()),
        ("", br#"{"preconditions":{"uid":7}}"#, "json: cannot unmarshal number into Go struct field Preconditions.preconditions.uid of type types.UID".into()),
        ("", br#"{"dryRun":"All"}"#, "json: cannot unmarshal string into Go struct field DeleteOptions.dryRun of type []string".into()),
        ("", br#"{"orphanDependents":"false"}"#, "json: cannot unmarshal string into Go struct field DeleteOptions.orphanDependents of type bool".into()),
        ("", br#"{"kind":7}"#, "couldn't get version/kind; json parse error: json: cannot unmarshal number into Go struct field .kind of type string".into()),
    ];
    for (query, body, want) in &cases {
        for path in [
            format!("/api/v1/namespaces/default/configmaps/victim{query}"),
            format!("/api/v1/namespaces/default/configmaps{query}"),
        ] {
            let (code, status) = send(&mut k, "DELETE", &path, "application/json", body);
            assert_eq!(
                code,
                400,
                "{path} {}: {status}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(status["reason"], "BadRequest", "{status}");
            assert_eq!(
                status["message"].as_str(),
                Some(want.as_str()),
                "{path} {}",
                String::from_utf8_lossy(body)
            );
        }
    }
    // Garbage that is not JSON at all, or not protobuf.
    for (ct, body) in [
        ("application/json", &b"{\"gracePeriodSeconds\":"[..]),
        ("application/yaml", b"a: [b"),
        (PROTOBUF, b"k8s\0\x12\xff"),
        (PROTOBUF, b"{}"),
    ] {
        let (code, status) = send(
            &mut k,
            "DELETE",
            "/api/v1/namespaces/default/configmaps/victim?propagationPolicy=Orphan",
            ct,
            body,
        );
        assert_eq!(code, 400, "{ct}: {status}");
    }
    let (code, status) = send(
        &mut k,
        "DELETE",
        "/api/v1/namespaces/default/configmaps/victim",
        "text/plain",
        b"x",
    );
    assert_eq!(
        (code, status["reason"].as_str()),
        (415, Some("UnsupportedMediaType")),
        "{status}"
    );
    // The eviction body's DeleteOptions are checked the same way.
    wait_default_sa(&c);
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    let (code, body) = send(
        &mut k,
        "POST",
        "/api/v1/namespaces/default/pods",
        "application/json",
        &serde_json::to_vec(&pod).expect("json"),
    );
    assert_eq!(code, 201, "{body}");
    let (code, status) = send(&mut k, "POST", "/api/v1/namespaces/default/pods/p/eviction", "application/json", br#"{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"p"},"deleteOptions":{"gracePeriodSeconds":"0"}}"#);
    assert_eq!(code, 400, "{status}");
    assert_eq!(status["message"], "Eviction in version \"v1\" cannot be handled as a Eviction: json: cannot unmarshal string into Go struct field DeleteOptions.deleteOptions.gracePeriodSeconds of type int64");
    let (code, status) = send(
        &mut k,
        "POST",
        "/api/v1/namespaces/default/pods/p/eviction",
        "application/json",
        b"[1,2]",
    );
    assert_eq!(code, 400, "{status}");
    // Nothing was deleted, and the same connection still serves.
    assert!(exists(&mut k, "victim"));
    let (code, _) = send(
        &mut k,
        "GET",
        "/api/v1/namespaces/default/pods/p",
        "application/json",
        b"",
    );
    assert_eq!(code, 200);
    // A well-formed JSON body still works.
    let (code, body) = send(&mut k, "DELETE", "/api/v1/namespaces/default/configmaps/victim", "application/json", br#"{"kind":"DeleteOptions","apiVersion":"v1","gracePeriodSeconds":0,"propagationPolicy":null,"preconditions":null}"#);
    assert_eq!(code, 200, "{body}");
    assert!(!exists(&mut k, "victim"));
    assert!(
        !std::fs::read_to_string(&c.log)
            .unwrap_or_default()
            .contains("panicked"),
        "a handler panicked"
    );
}

// ---- item 9 ------------------------------------------------------------------------------

#[test]
fn json_patch_that_is_an_object_is_400() {
    let c = Cluster::start();
    let mut k = conn(&c);
    create_cm(&mut k, "jp", json!({}));
    let (code, status) = send(
        &mut k,
        "PATCH",
        "/api/v1/namespaces/default/configmaps/jp",
        "application/json-patch+json",
        br#"{"op":"add","path":"/data/x","value":"y"}"#,
    );
    assert_eq!(code, 400, "{status}");
    assert_eq!(status["reason"], "BadRequest");
    assert_eq!(
        status["message"],
        "json: cannot unmarshal object into Go value of type jsonpatch.Patch"
    );
    // A list of operations still applies; one that cannot apply stays 422.
    let (code, cm) = send(
        &mut k,
        "PATCH",
        "/api/v1/namespaces/default/configmaps/jp",
        "application/json-patch+json",
        br#"[{"op":"add","path":"/data/x","value":"y"}]"#,
    );
    assert_eq!((code, &cm["data"]["x"]), (200, &json!("y")), "{cm}");
    let (code, status) = send(
        &mut k,
        "PATCH",
        "/api/v1/namespaces/default/configmaps/jp",
        "application/json-patch+json",
        br#"[{"op":"replace","path":"/spec/nope","value":1}]"#,
    );
    assert_eq!(code, 422, "{status}");
}

// ---- item 8 ------------------------------------------------------------------------------

#[test]
fn token_request_with_explicit_nulls_is_accepted() {
    let c = Cluster::start();
    wait_default_sa(&c);
    let mut k = conn(&c);
    // What kubectl 1.27-1.31 send for `kubectl create token default`.
    let body = br#"{"kind":"TokenRequest","apiVersion":"authentication.k8s.io/v1","metadata":{"creationTimestamp":null},"spec":{"audiences":null,"expirationSeconds":null,"boundObjectRef":null},"status":{"token":"","expirationTimestamp":null}}"#;
    let (code, tr) = send(
        &mut k,
        "POST",
        "/api/v1/namespaces/default/serviceaccounts/default/token",
        "application/json",
        body,
    );
    assert_eq!(code, 201, "{tr}");
    assert!(
        tr["status"]["token"]
            .as_str()
            .is_some_and(|t| t.split('.').count() == 3),
        "{tr}"
    );
    assert_eq!(tr["spec"]["expirationSeconds"], 3600, "{tr}");
    assert_eq!(
        tr["spec"].get("boundObjectRef"),
        Some(&Value::Null),
        "no omitempty upstream: {tr}"
    );
    // A wrong-typed field is a decoding error, not a silent default.
    let (code, status) = send(
        &mut k,
        "POST",
        "/api/v1/namespaces/default/serviceaccounts/default/token",
        "application/json",
        br#"{"spec":{"expirationSeconds":"3600"}}"#,
    );
    assert_eq!(code, 400, "{status}");
    assert_eq!(status["message"], "TokenRequest in version \"v1\" cannot be handled as a TokenRequest: json: cannot unmarshal string into Go struct field TokenRequestSpec.spec.expirationSeconds of type int64");
    // The real clients.
    let token = c.ok(&["create", "token", "default"]);
    assert!(!token.trim().is_empty());
    for v in ["1.27", "1.31"] {
        let bin = format!("/usr/lib/google-cloud-sdk/bin/kubectl.{v}");
        if std::path::Path::new(&bin).exists() {
            let token = c.ok_with(&bin, &["create", "token", "default"], None);
            assert_eq!(token.trim().split('.').count(), 3, "kubectl {v}: {token}");
        } else {
            eprintln!("{bin} not installed: not checked");
        }
    }
}

// ---- item 5 ------------------------------------------------------------------------------

const PUBLIC_PATHS: &[&str] = &[
    "/version",
    "/healthz",
    "/readyz",
    "/livez",
    "/healthz/ping",
    "/readyz/ping",
];
const PRIVATE_PATHS: &[&str] = &[
    "/openapi/v2",
    "/openapi/v3",
    "/api",
    "/apis",
    "/api/v1/namespaces",
];

#[test]
fn bad_credentials_are_401_on_every_path() {
    let c = Cluster::start();
    wait_default_sa(&c);
    let anonymous = tls_client(&c, None);
    let status_of =
        |tls: &Arc<rustls::ClientConfig>, path: &str, headers: &[(&str, &str)]| -> (u16, Value) {
            let (code, body) =
                raw(&c, tls, "GET", path, headers).unwrap_or_else(|e| panic!("GET {path}: {e}"));
            (code, serde_json::from_slice(&body).unwrap_or(Value::Null))
        };
    // An invalid bearer token: 401 everywhere, with upstream's Status.
    for path in PUBLIC_PATHS.iter().chain(PRIVATE_PATHS) {
        for auth in [
            "Bearer not-a-valid-token",
            "bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln",
        ] {
            let (code, status) = status_of(&anonymous, path, &[("Authorization", auth)]);
            assert_eq!(code, 401, "{path} with {auth:?}: {status}");
            assert_eq!(status["reason"], "Unauthorized", "{path}: {status}");
        }
    }
    // No credentials (or an empty bearer token, which is none): the public paths answer.
    for path in PUBLIC_PATHS {
        assert_eq!(status_of(&anonymous, path, &[]).0, 200, "anonymous {path}");
        assert_eq!(
            status_of(&anonymous, path, &[("Authorization", "Bearer ")]).0,
            200,
            "empty token {path}"
        );
    }
    for path in PRIVATE_PATHS {
        assert_eq!(status_of(&anonymous, path, &[]).0, 401, "anonymous {path}");
    }
    // A valid token still works everywhere.
    let token = c.ok(&["create", "token", "default"]);
    let bearer = format!("Bearer {}", token.trim());
    for path in PUBLIC_PATHS {
        assert_eq!(
            status_of(&anonymous, path, &[("Authorization", &bearer)]).0,
            200,
            "valid token {path}"
        );
    }
    // A client certificate from another CA: 401 on every path (not a failed handshake).
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, "rogue-ca");
    ca_params.distinguished_name = dn;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "system:masters");
    dn.push(rcgen::DnType::CommonName, "mallory");
    params.distinguished_name = dn;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).expect("leaf");
    let rogue = tls_client(
        &c,
        Some((
            vec![cert.der().clone()],
            PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).expect("key"),
        )),
    );
    for path in PUBLIC_PATHS.iter().chain(PRIVATE_PATHS) {
        let (code, status) = status_of(&rogue, path, &[]);
        assert_eq!(
            code, 401,
            "{path} with a foreign client certificate: {status}"
        );
    }
    // The cluster's own client certificate is still accepted.
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&kubeconfig_field(&c, "client-certificate-data"))
            .map(|c| c.expect("cert"))
            .collect();
    let admin = tls_client(
        &c,
        Some((
            chain,
            PrivateKeyDer::from_pem_slice(&kubeconfig_field(&c, "client-key-data")).expect("key"),
        )),
    );
    for path in PUBLIC_PATHS.iter().chain(PRIVATE_PATHS) {
        assert_eq!(status_of(&admin, path, &[]).0, 200, "admin {path}");
    }
    // kubectl with a bad token is refused at /version too.
    let kc = c.path().join("bad-token.kubeconfig");
    let text = std::fs::read_to_string(&c.kubeconfig).expect("kubeconfig");
    let server = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("server:")
                .map(|v| v.trim().to_string())
        })
        .expect("server");
    let ca = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("certificate-authority-data:")
                .map(|v| v.trim().to_string())
        })
        .expect("ca");
    std::fs::write(&kc, format!("apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: u\n  user:\n    token: bogus\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n")).expect("write");
    let out = std::process::Command::new(common::kubectl_bin())
        .env("KUBECONFIG", &kc)
        .env("HOME", c.path())
        .args(["get", "--raw", "/version"])
        .output()
        .expect("kubectl");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unauthorized"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
