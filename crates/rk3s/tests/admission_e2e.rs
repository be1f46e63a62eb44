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
    c.ok_with(&common::kubectl_bin(), &["apply", "-n", "lim", "-f", "-"], Some(&pod("defaulted", "")));
    let p: Value = serde_json::from_str(&c.ok(&["get", "pod", "defaulted", "-n", "lim", "-o", "json"])).expect("json");
    assert_eq!(p["spec"]["containers"][0]["resources"]["limits"]["cpu"], "500m", "{p}");
    assert_eq!(p["spec"]["containers"][0]["resources"]["requests"]["memory"], "64Mi");
    let big = pod("big", "    resources:\n      limits: {cpu: \"2\"}\n");
    let err = c.fails(&["apply", "-n", "lim", "-f", "-"], Some(&big));
    assert!(err.contains("pods \"big\" is forbidden: maximum cpu usage per Container is 1, but limit is 2"), "{err}");

    // ResourceQuota: status filled at once; the third pod exceeds it.
    c.ok(&["create", "namespace", "q"]);
    c.ok(&["create", "quota", "pods-quota", "-n", "q", "--hard=pods=2"]);
    let q: Value = serde_json::from_str(&c.ok(&["get", "quota", "pods-quota", "-n", "q", "-o", "json"])).expect("json");
    assert_eq!(q["status"]["hard"]["pods"], "2", "{q}");
    assert_eq!(q["status"]["used"]["pods"], "0", "{q}");
    c.ok_with(&common::kubectl_bin(), &["apply", "-n", "q", "-f", "-"], Some(&pod("p1", "")));
    c.ok_with(&common::kubectl_bin(), &["apply", "-n", "q", "-f", "-"], Some(&pod("p2", "")));
    let err = c.fails(&["apply", "-n", "q", "-f", "-"], Some(&pod("p3", "")));
    assert!(err.contains("pods \"p3\" is forbidden: exceeded quota: pods-quota, requested: pods=1, used: pods=2, limited: pods=2"), "{err}");
    // Deleting a pod frees quota.
    c.ok(&["delete", "pod", "p1", "-n", "q", "--grace-period=0", "--force"]);
    c.ok_with(&common::kubectl_bin(), &["apply", "-n", "q", "-f", "-"], Some(&pod("p3", "")));

    // PodSecurity: restricted namespace rejects a privileged pod, with upstream's message.
    c.ok(&["create", "namespace", "secure"]);
    c.ok(&["label", "namespace", "secure", "pod-security.kubernetes.io/enforce=restricted"]);
    let privileged = pod("priv", "    securityContext:\n      privileged: true\n");
    let err = c.fails(&["apply", "-n", "secure", "-f", "-"], Some(&privileged));
    assert!(err.contains("pods \"priv\" is forbidden: violates PodSecurity \"restricted:latest\""), "{err}");
    assert!(err.contains("privileged (container \"c\" must not set securityContext.privileged=true)"), "{err}");
    assert!(!c.kubectl(&["get", "pod", "priv", "-n", "secure"]).status.success());
}
