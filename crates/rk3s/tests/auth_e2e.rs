//! Authentication and authorization end to end: RBAC with a namespaced `view` binding,
//! 403 messages, `kubectl auth can-i`, service-account tokens, impersonation, pod
//! service-account admission.

mod common;

use common::Cluster;
use serde_json::Value;

/// A kubeconfig for a bearer token (no client certificate).
fn token_kubeconfig(c: &Cluster, name: &str, token: &str) -> std::path::PathBuf {
    let admin = std::fs::read_to_string(&c.kubeconfig).expect("kubeconfig");
    let field = |k: &str| {
        admin
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(&format!("{k}:"))
                    .map(|v| v.trim().to_string())
            })
            .expect("field")
    };
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n",
        field("server"),
        field("certificate-authority-data")
    );
    let p = c.path().join(format!("{name}.kubeconfig"));
    std::fs::write(&p, text).expect("write kubeconfig");
    p
}

fn as_user(c: &Cluster, kc: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(common::kubectl_bin())
        .env("KUBECONFIG", kc)
        .env("HOME", c.path())
        .args(args)
        .output()
        .expect("kubectl")
}

#[test]
fn namespaced_view_binding_is_enforced_like_upstream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "alice-secret-token,alice,alice-uid\n").expect("tokens");
    let flag = format!("--token-auth-file={}", tokens.display());
    let c = Cluster::start_with(&[&flag]);
    c.ok(&["create", "namespace", "team"]);
    c.ok(&["create", "namespace", "other"]);
    c.ok(&[
        "create",
        "rolebinding",
        "alice-view",
        "--clusterrole=view",
        "--user=alice",
        "-n",
        "team",
    ]);
    let kc = token_kubeconfig(&c, "alice", "alice-secret-token");

    let who = as_user(
        &c,
        &kc,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&who.stdout), "alice");

    let ok = as_user(&c, &kc, &["get", "pods", "-n", "team"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let denied = as_user(&c, &kc, &["get", "pods", "-n", "other"]);
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains(r#"Error from server (Forbidden): pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the namespace "other""#),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    let create = as_user(
        &c,
        &kc,
        &[
            "create",
            "configmap",
            "x",
            "-n",
            "team",
            "--from-literal=a=b",
        ],
    );
    assert!(!create.status.success());
    assert!(
        String::from_utf8_lossy(&create.stderr).contains(r#"configmaps is forbidden: User "alice" cannot create resource "configmaps" in API group "" in the namespace "team""#),
        "{}",
        String::from_utf8_lossy(&create.stderr)
    );
    // can-i, as the user and by impersonation.
    let yes = as_user(
        &c,
        &kc,
        &["auth", "can-i", "watch", "deployments.apps", "-n", "team"],
    );
    assert_eq!(String::from_utf8_lossy(&yes.stdout).trim(), "yes");
    let no = c.kubectl(&[
        "auth", "can-i", "delete", "pods", "-n", "team", "--as", "alice",
    ]);
    assert_eq!(String::from_utf8_lossy(&no.stdout).trim(), "no");
    let list = as_user(&c, &kc, &["auth", "can-i", "--list", "-n", "team"]);
    let list = String::from_utf8_lossy(&list.stdout).to_string();
    let pods_line = list
        .lines()
        .find(|l| l.starts_with("pods "))
        .unwrap_or_default();
    assert!(pods_line.contains("[get list watch]"), "{list}");
    assert!(
        list.lines().any(
            |l| l.starts_with("selfsubjectaccessreviews.authorization.k8s.io")
                && l.contains("[create]")
        ),
        "{list}"
    );
    assert!(
        !list.lines().any(|l| l.starts_with("secrets ")),
        "view must not read secrets: {list}"
    );
    // Escalation: alice cannot grant herself more through a Role.
    let esc = as_user(
        &c,
        &kc,
        &[
            "create",
            "role",
            "r",
            "--verb=delete",
            "--resource=pods",
            "-n",
            "team",
        ],
    );
    assert!(!esc.status.success());
}

#[test]
fn service_account_tokens_and_pod_admission() {
    let c = Cluster::start();
    c.ok(&["create", "namespace", "apps"]);
    // The default service account appears (controller) ...
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !c
        .kubectl(&["get", "sa", "default", "-n", "apps"])
        .status
        .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no default service account"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // ... and a TokenRequest token authenticates as it.
    let token = c.ok(&["create", "token", "default", "-n", "apps"]);
    let kc = token_kubeconfig(&c, "sa", token.trim());
    let who = as_user(&c, &kc, &["auth", "whoami", "-o", "json"]);
    assert!(
        who.status.success(),
        "{}",
        String::from_utf8_lossy(&who.stderr)
    );
    let v: Value = serde_json::from_slice(&who.stdout).expect("json");
    assert_eq!(
        v["status"]["userInfo"]["username"],
        "system:serviceaccount:apps:default"
    );
    assert!(v["status"]["userInfo"]["groups"]
        .as_array()
        .is_some_and(|g| g.iter().any(|x| x == "system:serviceaccounts:apps")));
    // Deleting the service account invalidates its tokens.
    c.ok(&["delete", "sa", "default", "-n", "apps"]);
    let after = as_user(&c, &kc, &["get", "--raw", "/api"]);
    assert!(!after.status.success());
    assert!(
        String::from_utf8_lossy(&after.stderr).contains("Unauthorized"),
        "{}",
        String::from_utf8_lossy(&after.stderr)
    );

    // A pod without serviceAccountName gets `default` and the projected token volume.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: apps\nspec:\n  containers:\n  - name: c\n    image: busybox\n";
    c.ok_with(&common::kubectl_bin(), &["apply", "-f", "-"], Some(pod));
    let p: Value = serde_json::from_str(&c.ok(&["get", "pod", "p", "-n", "apps", "-o", "json"]))
        .expect("json");
    assert_eq!(p["spec"]["serviceAccountName"], "default");
    let vol = p["spec"]["volumes"]
        .as_array()
        .and_then(|v| {
            v.iter().find(|v| {
                v["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("kube-api-access-"))
            })
        })
        .cloned()
        .expect("token volume");
    assert_eq!(
        vol["projected"]["sources"][0]["serviceAccountToken"]["path"],
        "token"
    );
    assert_eq!(
        p["spec"]["containers"][0]["volumeMounts"][0]["mountPath"],
        "/var/run/secrets/kubernetes.io/serviceaccount"
    );
    assert!(p["spec"]["tolerations"].as_array().is_some_and(|t| t
        .iter()
        .any(|x| x["key"] == "node.kubernetes.io/not-ready" && x["tolerationSeconds"] == 300)));

    // A service account's imagePullSecrets go to pods that name none.
    c.ok(&["create", "sa", "puller", "-n", "apps"]);
    c.ok(&[
        "patch",
        "sa",
        "puller",
        "-n",
        "apps",
        "--type=merge",
        "-p",
        r#"{"imagePullSecrets":[{"name":"regcred"}]}"#,
    ]);
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: q\n  namespace: apps\nspec:\n  serviceAccountName: puller\n  containers:\n  - name: c\n    image: busybox\n";
    c.ok_with(&common::kubectl_bin(), &["apply", "-f", "-"], Some(pod));
    let q: Value = serde_json::from_str(&c.ok(&["get", "pod", "q", "-n", "apps", "-o", "json"]))
        .expect("json");
    assert_eq!(
        q["spec"]["imagePullSecrets"],
        serde_json::json!([{"name": "regcred"}])
    );
    // A mirror pod (a kubelet's static pod) gets no service account and no token volume.
    let mirror = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: m\n  namespace: apps\n  annotations:\n    kubernetes.io/config.mirror: abc\nspec:\n  nodeName: n1\n  containers:\n  - name: c\n    image: busybox\n";
    c.ok_with(&common::kubectl_bin(), &["apply", "-f", "-"], Some(mirror));
    let m: Value = serde_json::from_str(&c.ok(&["get", "pod", "m", "-n", "apps", "-o", "json"]))
        .expect("json");
    assert!(m["spec"]["serviceAccountName"].is_null(), "{}", m["spec"]);
    assert!(m["spec"]["volumes"].is_null(), "{}", m["spec"]);
}

#[test]
fn certificate_signing_request_approve_and_use() {
    use base64::Engine;
    let c = Cluster::start();
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "dev-team");
    dn.push(rcgen::DnType::CommonName, "bob");
    params.distinguished_name = dn;
    let csr_pem = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    let request = base64::engine::general_purpose::STANDARD.encode(csr_pem.as_bytes());
    let manifest = format!(
        "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata:\n  name: bob\nspec:\n  request: {request}\n  signerName: kubernetes.io/kube-apiserver-client\n  expirationSeconds: 86400\n  usages: [client auth]\n"
    );
    c.ok_with(
        &common::kubectl_bin(),
        &["apply", "-f", "-"],
        Some(&manifest),
    );
    let pending = c.ok(&["get", "csr", "bob"]);
    assert!(pending.contains("Pending"), "{pending}");
    c.ok(&["certificate", "approve", "bob"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let cert_b64 = loop {
        let out = c.ok(&["get", "csr", "bob", "-o", "jsonpath={.status.certificate}"]);
        if !out.is_empty() {
            break out;
        }
        assert!(std::time::Instant::now() < deadline, "CSR never signed");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let table = c.ok(&["get", "csr", "bob"]);
    assert!(table.contains("Approved,Issued"), "{table}");
    // The signed certificate authenticates as bob in dev-team.
    let admin = std::fs::read_to_string(&c.kubeconfig).expect("kubeconfig");
    let field = |k: &str| {
        admin
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(&format!("{k}:"))
                    .map(|v| v.trim().to_string())
            })
            .expect("field")
    };
    let key_b64 = base64::engine::general_purpose::STANDARD.encode(key.serialize_pem().as_bytes());
    let kc = c.path().join("bob.kubeconfig");
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: u\n  user:\n    client-certificate-data: {cert_b64}\n    client-key-data: {key_b64}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n",
            field("server"),
            field("certificate-authority-data")
        ),
    )
    .expect("write");
    let who = as_user(&c, &kc, &["auth", "whoami", "-o", "json"]);
    assert!(
        who.status.success(),
        "{}",
        String::from_utf8_lossy(&who.stderr)
    );
    let v: Value = serde_json::from_slice(&who.stdout).expect("json");
    assert_eq!(v["status"]["userInfo"]["username"], "bob");
    assert!(v["status"]["userInfo"]["groups"]
        .as_array()
        .is_some_and(|g| g.iter().any(|x| x == "dev-team")));
}
