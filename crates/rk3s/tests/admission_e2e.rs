//! Admission plugins end to end: LimitRanger, ResourceQuota, PodSecurity.

mod common;

use common::Cluster;
use serde_json::Value;

fn pod(name: &str, extra_container: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers:\n  - name: c\n    image: busybox\n{extra_container}")
}

#[test]
fn limit_ranges_quotas_and_pod_security() {
    let c = Cluster::start();
    c.ok(&["create", "namespace", "lim"]);
    let lr = "apiVersion: v1\nkind: LimitRange\nmetadata:\n  name: lr\n  namespace: lim\nspec:\n  limits:\n  - type: Container\n    default: {cpu: 500m, memory: 128Mi}\n    defaultRequest: {cpu: 100m, memory: 64Mi}\n    max: {cpu: \"1\"}\n";
    c.ok_with(&common::kubectl_bin(), &["apply", "-f", "-"], Some(lr));
    c.ok_with(
        &common::kubectl_bin(),
        &["apply", "-n", "lim", "-f", "-"],
        Some(&pod("defaulted", "")),
    );
    let p: Value =
        serde_json::from_str(&c.ok(&["get", "pod", "defaulted", "-n", "lim", "-o", "json"]))
            .expect("json");
    assert_eq!(
        p["spec"]["containers"][0]["resources"]["limits"]["cpu"], "500m",
        "{p}"
    );
    assert_eq!(
        p["spec"]["containers"][0]["resources"]["requests"]["memory"],
        "64Mi"
    );
    let big = pod("big", "    resources:\n      limits: {cpu: \"2\"}\n");
    let err = c.fails(&["apply", "-n", "lim", "-f", "-"], Some(&big));
    assert!(
        err.contains(
            "pods \"big\" is forbidden: maximum cpu usage per Container is 1, but limit is 2"
        ),
        "{err}"
    );

    // ResourceQuota: status filled at once; the third pod exceeds it.
    c.ok(&["create", "namespace", "q"]);
    c.ok(&["create", "quota", "pods-quota", "-n", "q", "--hard=pods=2"]);
    let q: Value =
        serde_json::from_str(&c.ok(&["get", "quota", "pods-quota", "-n", "q", "-o", "json"]))
            .expect("json");
    assert_eq!(q["status"]["hard"]["pods"], "2", "{q}");
    assert_eq!(q["status"]["used"]["pods"], "0", "{q}");
    c.ok_with(
        &common::kubectl_bin(),
        &["apply", "-n", "q", "-f", "-"],
        Some(&pod("p1", "")),
    );
    c.ok_with(
        &common::kubectl_bin(),
        &["apply", "-n", "q", "-f", "-"],
        Some(&pod("p2", "")),
    );
    let err = c.fails(&["apply", "-n", "q", "-f", "-"], Some(&pod("p3", "")));
    assert!(err.contains("pods \"p3\" is forbidden: exceeded quota: pods-quota, requested: pods=1, used: pods=2, limited: pods=2"), "{err}");
    // Deleting a pod frees quota.
    c.ok(&[
        "delete",
        "pod",
        "p1",
        "-n",
        "q",
        "--grace-period=0",
        "--force",
    ]);
    c.ok_with(
        &common::kubectl_bin(),
        &["apply", "-n", "q", "-f", "-"],
        Some(&pod("p3", "")),
    );

    // PodSecurity: restricted namespace rejects a privileged pod, with upstream's message.
    c.ok(&["create", "namespace", "secure"]);
    c.ok(&[
        "label",
        "namespace",
        "secure",
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    let privileged = pod("priv", "    securityContext:\n      privileged: true\n");
    let err = c.fails(&["apply", "-n", "secure", "-f", "-"], Some(&privileged));
    assert!(
        err.contains("pods \"priv\" is forbidden: violates PodSecurity \"restricted:latest\""),
        "{err}"
    );
    assert!(
        err.contains("privileged (container \"c\" must not set securityContext.privileged=true)"),
        "{err}"
    );
    assert!(!c
        .kubectl(&["get", "pod", "priv", "-n", "secure"])
        .status
        .success());
}

/// RuntimeClass admission: a missing class is a 403 at create; an existing one gives
/// the pod its overhead, node selector and tolerations; conflicts are rejected.
#[test]
fn runtime_class_admission() {
    let c = Cluster::start();
    let with_class = |name: &str, class: &str, extra_spec: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  runtimeClassName: {class}\n{extra_spec}  containers:\n  - name: c\n    image: busybox\n")
    };
    // Missing class: 403 Forbidden with upstream's message, nothing created.
    let err = c.fails(
        &["create", "-v=6", "-f", "-"],
        Some(&with_class("nope", "x", "")),
    );
    assert!(err.contains("Error from server (Forbidden)"), "{err}");
    assert!(
        err.contains("pods \"nope\" is forbidden: pod rejected: RuntimeClass \"x\" not found"),
        "{err}"
    );
    assert!(
        err.contains("status=\"403 Forbidden\"") && err.contains("\"code\": 403"),
        "{err}"
    );
    assert!(!c.kubectl(&["get", "pod", "nope"]).status.success());

    // An existing class (created just before the pod: no cache lag may reject it).
    let class = "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata:\n  name: sandboxed\nhandler: runsc\noverhead:\n  podFixed:\n    cpu: 250m\n    memory: 64Mi\nscheduling:\n  nodeSelector:\n    sandbox: \"true\"\n  tolerations:\n  - key: sandbox\n    operator: Exists\n    effect: NoSchedule\n";
    c.ok_with(&common::kubectl_bin(), &["apply", "-f", "-"], Some(class));
    c.ok_with(
        &common::kubectl_bin(),
        &["apply", "-f", "-"],
        Some(&with_class(
            "ok",
            "sandboxed",
            "  nodeSelector:\n    zone: a\n",
        )),
    );
    let p: Value = serde_json::from_str(&c.ok(&["get", "pod", "ok", "-o", "json"])).expect("json");
    assert_eq!(
        p["spec"]["overhead"],
        serde_json::json!({"cpu": "250m", "memory": "64Mi"}),
        "{p}"
    );
    assert_eq!(
        p["spec"]["nodeSelector"],
        serde_json::json!({"zone": "a", "sandbox": "true"}),
        "{p}"
    );
    let tols = p["spec"]["tolerations"].as_array().expect("tolerations");
    assert!(
        tols.iter().any(|t| t["key"] == "sandbox"
            && t["operator"] == "Exists"
            && t["effect"] == "NoSchedule"),
        "{tols:?}"
    );
    assert!(
        tols.iter()
            .any(|t| t["key"] == "node.kubernetes.io/not-ready"),
        "default tolerations stay: {tols:?}"
    );

    // Conflicts.
    let err = c.fails(
        &["create", "-f", "-"],
        Some(&with_class(
            "clash",
            "sandboxed",
            "  nodeSelector:\n    sandbox: \"false\"\n",
        )),
    );
    assert!(err.contains("pods \"clash\" is forbidden: conflict: runtimeClass.scheduling.nodeSelector[sandbox] = true; pod.spec.nodeSelector[sandbox] = false"), "{err}");
    let err = c.fails(
        &["create", "-f", "-"],
        Some(&with_class(
            "heavy",
            "sandboxed",
            "  overhead:\n    cpu: \"1\"\n",
        )),
    );
    assert!(err.contains("pods \"heavy\" is forbidden: pod rejected: Pod's Overhead doesn't match RuntimeClass's defined Overhead"), "{err}");
    // The same overhead written another way is accepted.
    c.ok_with(
        &common::kubectl_bin(),
        &["create", "-f", "-"],
        Some(&with_class(
            "same",
            "sandboxed",
            "  overhead:\n    cpu: \"0.25\"\n    memory: 64Mi\n",
        )),
    );
    // An overhead without a class that defines one.
    let plain = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: plain\nspec:\n  overhead:\n    cpu: 100m\n  containers:\n  - name: c\n    image: busybox\n";
    let err = c.fails(&["create", "-f", "-"], Some(plain));
    assert!(err.contains("pods \"plain\" is forbidden: pod rejected: Pod Overhead set without corresponding RuntimeClass defined Overhead"), "{err}");
}
