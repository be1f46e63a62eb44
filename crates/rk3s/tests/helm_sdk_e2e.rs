//! Helm 4's Go SDK (through PyPI's helm-python-sdk, real Helm, no binary) against rk3s:
//! install, upgrade, rollback and uninstall of a small chart leave nothing behind (no
//! release Secret, no object). The chart has a Service and a container with port 53 on
//! UDP and TCP (list-map keys port + protocol), as every DNS chart has.
//!
//! Needs `RK3S_TEST_HELM_PYTHON`: a Python with `helm_python` (scripts/test.sh makes a
//! virtualenv for it); skips without it.

mod common;

use common::Cluster;

const CHART_YAML: &str = "apiVersion: v2\nname: demo\nversion: 0.1.0\n";
const VALUES_YAML: &str = "greeting: hello\nreplicas: 1\n";
const TEMPLATES: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-cm
data:
  greeting: {{ .Values.greeting | quote }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ .Release.Name }}-svc
spec:
  selector: {app: demo}
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}-web
spec:
  replicas: {{ .Values.replicas }}
  selector: {matchLabels: {app: demo}}
  template:
    metadata: {labels: {app: demo}}
    spec:
      containers:
      - name: c
        image: example.invalid/none:1
        ports: [{containerPort: 53, protocol: UDP}, {containerPort: 53, protocol: TCP}]
"#;

/// The steps, each printing one line the test reads back.
const SCRIPT: &str = r#"
import sys, helm_python as helm
chart, kc = sys.argv[1], sys.argv[2]
with helm.Config(namespace="default", kubeconfig_path=kc) as cfg:
    r = cfg.install(chart, "demo", {"greeting": "hi"}, timeout=60)
    print("install", r["revision"], r["status"], flush=True)
    input()
    r = cfg.upgrade(chart, "demo", {"greeting": "bye", "replicas": 2}, timeout=60)
    print("upgrade", r["revision"], r["status"], cfg.get_values("demo")["greeting"], flush=True)
    input()
    cfg.rollback("demo", version=1)
    print("rollback", " ".join(f"{h['revision']}:{h['status']}" for h in cfg.history("demo")), flush=True)
    input()
    cfg.uninstall("demo")
    print("uninstall", len(cfg.list()), flush=True)
"#;

#[test]
fn helm_sdk_install_upgrade_rollback_uninstall() {
    let Ok(python) = std::env::var("RK3S_TEST_HELM_PYTHON") else {
        eprintln!("SKIP: RK3S_TEST_HELM_PYTHON is not set (a Python with helm-python-sdk; scripts/test.sh sets it)");
        return;
    };
    let c = Cluster::start();
    let chart = c.path().join("chart");
    std::fs::create_dir_all(chart.join("templates")).expect("chart dir");
    std::fs::write(chart.join("Chart.yaml"), CHART_YAML).expect("Chart.yaml");
    std::fs::write(chart.join("values.yaml"), VALUES_YAML).expect("values.yaml");
    std::fs::write(chart.join("templates/all.yaml"), TEMPLATES).expect("templates");
    let mut child = std::process::Command::new(&python)
        .args(["-c", SCRIPT])
        .arg(&chart)
        .arg(&c.kubeconfig)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python");
    use std::io::{BufRead, Write};
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut stdin = child.stdin.take().expect("stdin");
    let mut step = |expect: &str| -> String {
        let mut line = String::new();
        out.read_line(&mut line).expect("read step");
        if !line.starts_with(expect) {
            let _ = child.kill();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("expected {expect:?}, got {line:?}; stderr: {err}");
        }
        line.trim().to_string()
    };
    let greeting = |c: &Cluster| c.ok(&["get", "cm", "demo-cm", "-o", "jsonpath={.data.greeting}"]);

    assert_eq!(step("install"), "install 1 deployed");
    assert_eq!(greeting(&c), "hi");
    let ports = c.ok(&[
        "get",
        "svc",
        "demo-svc",
        "-o",
        "jsonpath={.spec.ports[*].protocol}",
    ]);
    assert_eq!(ports, "UDP TCP");
    let secrets = c.ok(&["get", "secrets", "-l", "owner=helm", "-o", "name"]);
    assert_eq!(
        secrets.trim(),
        "secret/sh.helm.release.v1.demo.v1",
        "Helm's release record"
    );
    writeln!(stdin).expect("next");

    assert_eq!(step("upgrade"), "upgrade 2 deployed bye");
    assert_eq!(greeting(&c), "bye");
    assert_eq!(
        c.ok(&[
            "get",
            "deploy",
            "demo-web",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "2"
    );
    writeln!(stdin).expect("next");

    assert_eq!(
        step("rollback"),
        "rollback 1:superseded 2:superseded 3:deployed"
    );
    assert_eq!(greeting(&c), "hi");
    assert_eq!(
        c.ok(&[
            "get",
            "deploy",
            "demo-web",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "1"
    );
    writeln!(stdin).expect("next");

    assert_eq!(step("uninstall"), "uninstall 0");
    let status = child.wait().expect("python exits");
    assert!(status.success(), "{status}");
    // Nothing left: no release Secret, no object of the chart.
    let left = c.ok(&[
        "get",
        "cm,svc,deploy,secrets",
        "-l",
        "owner=helm",
        "-o",
        "name",
    ]);
    assert_eq!(left.trim(), "", "release records left: {left}");
    for obj in ["cm/demo-cm", "svc/demo-svc", "deploy/demo-web"] {
        let o = c.kubectl(&["get", obj]);
        assert!(!o.status.success(), "{obj} left behind");
    }
}
