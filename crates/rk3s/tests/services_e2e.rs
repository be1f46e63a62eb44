//! The cluster-wide half of Services without containers: the `kube-dns` Service and its
//! per-node EndpointSlice, ServiceLB's LoadBalancer status and Events (with k3s's node
//! labels), and the `--disable` flags that turn them off. Nodes are simulated
//! (`rk3s sim-nodes`); the data path is tested in `node_services_e2e`.

mod common;

use std::time::Duration;

use common::{wait_for, Cluster, SimNodes};

fn jsonpath(c: &Cluster, args: &[&str], path: &str) -> String {
    let p = format!("jsonpath={path}");
    let mut a: Vec<&str> = args.to_vec();
    a.extend(["-o", p.as_str()]);
    String::from_utf8_lossy(&c.kubectl(&a).stdout).to_string()
}

const LB: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: web-lb
spec:
  type: LoadBalancer
  selector: {app: web}
  ports:
  - {name: http, port: 8080, targetPort: 80}
"#;

#[test]
fn kube_dns_service_and_servicelb_status() {
    let c = Cluster::start();
    // kube-dns as on k3s: the cluster DNS address, ports 53/UDP and 53/TCP, no selector.
    let svc = wait_for("kube-dns Service", Duration::from_secs(20), || {
        let out = c.kubectl(&["get", "svc", "-n", "kube-system", "kube-dns", "-o", "json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json"))
    });
    assert_eq!(svc["spec"]["clusterIP"], "10.43.0.10");
    assert_eq!(svc["metadata"]["labels"]["k8s-app"], "kube-dns");
    let ports: Vec<String> = svc["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            format!(
                "{}/{}/{}",
                p["name"].as_str().unwrap_or(""),
                p["port"],
                p["protocol"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(ports, ["dns/53/UDP", "dns-tcp/53/TCP"]);
    assert!(svc["spec"].get("selector").is_none(), "{svc}");

    // One DNS endpoint per Ready node, at its InternalIP.
    let _nodes = SimNodes::start(&c, "dns", 2);
    let addrs = wait_for(
        "kube-dns endpoints on both nodes",
        Duration::from_secs(30),
        || {
            let a = jsonpath(
                &c,
                &[
                    "get",
                    "endpointslices",
                    "-n",
                    "kube-system",
                    "-l",
                    "kubernetes.io/service-name=kube-dns",
                ],
                "{.items[*].endpoints[*].addresses[0]}",
            );
            (a.split_whitespace().count() == 2).then_some(a)
        },
    );
    assert!(
        addrs.contains("10.240.0.1") && addrs.contains("10.240.0.2"),
        "{addrs}"
    );

    // ServiceLB: the serving nodes' InternalIPs, an UpdatedLoadBalancer Event.
    c.ok_with(&common::kubectl_bin(), &["apply", "-f", "-"], Some(LB));
    let ingress = wait_for("LoadBalancer ingress", Duration::from_secs(30), || {
        let s = jsonpath(
            &c,
            &["get", "svc", "web-lb"],
            "{.status.loadBalancer.ingress[*].ip}",
        );
        (s.split_whitespace().count() == 2).then_some(s)
    });
    assert_eq!(ingress, "10.240.0.1 10.240.0.2");
    let events = wait_for("UpdatedLoadBalancer event", Duration::from_secs(10), || {
        let e = c.ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=web-lb",
        ]);
        e.contains("UpdatedLoadBalancer").then_some(e)
    });
    assert!(
        events.contains("Updated LoadBalancer with new IPs"),
        "{events}"
    );
    let wide = c.ok(&["get", "svc", "web-lb"]);
    assert!(
        wide.contains("10.240.0.1,10.240.0.2"),
        "EXTERNAL-IP column: {wide}"
    );

    // k3s's label: once a node has enablelb, only enablelb=true nodes serve.
    c.ok(&[
        "label",
        "node",
        "dns-1",
        "svccontroller.k3s.cattle.io/enablelb=true",
    ]);
    wait_for(
        "only the labelled node serves",
        Duration::from_secs(20),
        || {
            (jsonpath(
                &c,
                &["get", "svc", "web-lb"],
                "{.status.loadBalancer.ingress[*].ip}",
            ) == "10.240.0.2")
                .then_some(())
        },
    );

    // A foreign loadBalancerClass is left alone.
    let foreign = LB.replace("name: web-lb", "name: other-lb").replace(
        "type: LoadBalancer",
        "type: LoadBalancer\n  loadBalancerClass: example.com/other",
    );
    c.ok_with(
        &common::kubectl_bin(),
        &["apply", "-f", "-"],
        Some(&foreign),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        jsonpath(
            &c,
            &["get", "svc", "other-lb"],
            "{.status.loadBalancer.ingress}"
        ),
        "",
        "another class's Service stays pending"
    );
}

#[test]
fn disabled_components_leave_services_alone() {
    let c = Cluster::start_with(&["--disable", "coredns,servicelb"]);
    let _nodes = SimNodes::start(&c, "off", 1);
    c.ok_with(&common::kubectl_bin(), &["apply", "-f", "-"], Some(LB));
    wait_for("the sim node", Duration::from_secs(20), || {
        c.kubectl(&["get", "node", "off-0"])
            .status
            .success()
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !c.kubectl(&["get", "svc", "-n", "kube-system", "kube-dns"])
            .status
            .success(),
        "--disable coredns: no kube-dns Service"
    );
    assert_eq!(
        jsonpath(
            &c,
            &["get", "svc", "web-lb"],
            "{.status.loadBalancer.ingress}"
        ),
        "",
        "--disable servicelb: LoadBalancers stay pending"
    );
    let out = c.ok(&["get", "svc", "web-lb"]);
    assert!(out.contains("<pending>"), "{out}");
    // A component name rk3s does not know is a clear error.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_rk3s"))
        .args(["server", "--disable", "nosuch"])
        .output()
        .expect("run rk3s");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("unknown component \"nosuch\"") && err.contains("servicelb"),
        "{err}"
    );
}
