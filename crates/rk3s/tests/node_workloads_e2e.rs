//! Workloads on the real node agent: a Deployment behind an httpGet readiness probe,
//! pod-to-pod traffic over the cni0 bridge, liveness restarts, OOMKilled, graceful
//! termination with a preStop hook, and the kubelet's Events.
//!
//! Needs root, containerd, runc, busybox-static and the CNI plugins; skips otherwise.
//! Each test leaves nothing behind (`common::node::run_node_test`).

mod common;

use std::time::{Duration, Instant};

use common::node::*;
use common::{wait_for, Cluster};
use serde_json::Value;

/// The events of one pod (core/v1, as `kubectl get events` shows them).
fn pod_events(c: &Cluster, pod: &str) -> Vec<Value> {
    let sel = format!("involvedObject.name={pod}");
    let out = c.kubectl(&["get", "events", "--field-selector", &sel, "-o", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["items"].as_array().cloned().unwrap_or_default()
}

/// The first event of `pod` with `reason` whose message starts with `prefix`.
fn find_event(c: &Cluster, pod: &str, reason: &str, prefix: &str) -> Option<Value> {
    pod_events(c, pod).into_iter().find(|e| {
        e["reason"] == reason && e["message"].as_str().is_some_and(|m| m.starts_with(prefix))
    })
}

/// Asserts that an event is a kubelet event about container `container` of `pod`.
fn assert_kubelet_event(e: &Value, pod: &str, container: &str, ty: &str) {
    assert_eq!(e["type"], ty, "{e}");
    assert_eq!(e["source"]["component"], "kubelet", "{e}");
    assert_eq!(e["source"]["host"], rk3s_kubelet::node::hostname(), "{e}");
    assert_eq!(e["reportingComponent"], "kubelet", "{e}");
    assert_eq!(e["involvedObject"]["kind"], "Pod", "{e}");
    assert_eq!(e["involvedObject"]["name"], pod, "{e}");
    assert_eq!(
        e["involvedObject"]["fieldPath"],
        format!("spec.containers{{{container}}}"),
        "{e}"
    );
    assert!(e["count"].as_i64().is_some_and(|n| n >= 1), "{e}");
    assert!(
        e["firstTimestamp"].is_string() && e["lastTimestamp"].is_string(),
        "{e}"
    );
}

const WEB: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: IMAGE
        imagePullPolicy: Never
        command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]
        ports:
        - {name: http, containerPort: 8080}
        readinessProbe:
          httpGet: {path: /index.html, port: http}
          periodSeconds: 1
"#;

const PROBED: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: probed
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: live
    image: IMAGE
    imagePullPolicy: Never
    command: ["sh", "-c", "touch /tmp/healthy; sleep 2; rm /tmp/healthy; exec sleep 3600"]
    livenessProbe:
      exec: {command: ["cat", "/tmp/healthy"]}
      periodSeconds: 1
      failureThreshold: 2
    readinessProbe:
      httpGet: {path: /, port: 9999}
      periodSeconds: 1
"#;

const HOG: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: hog
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: hog
    image: IMAGE
    imagePullPolicy: Never
    command: ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]
    resources:
      limits: {memory: 16Mi}
"#;

const HOOKED: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: hooked
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: hooked
    image: IMAGE
    imagePullPolicy: Never
    command: ["sleep", "3600"]
    lifecycle:
      postStart:
        exec: {command: ["sh", "-c", "exit 3"]}
"#;

/// Deployment + readiness, pod-to-pod, liveness restart, OOMKilled, and their Events.
#[test]
fn node_workloads_probes_oom_and_events() {
    run_node_test("node_workloads_probes_oom_and_events", &[], |c| {
        wait_node_ready(c);
        apply(c, &WEB.replace("IMAGE", BUSYBOX_IMAGE));
        apply(c, &PROBED.replace("IMAGE", BUSYBOX_IMAGE));
        apply(c, &HOG.replace("IMAGE", BUSYBOX_IMAGE));
        apply(c, &HOOKED.replace("IMAGE", BUSYBOX_IMAGE));

        // 1. The Deployment reaches 3/3 Ready through its httpGet readiness probe.
        let t = Instant::now();
        c.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
        eprintln!("deployment web 3/3 ready in {:?}", t.elapsed());
        let ready = jsonpath(c, &["get", "deployment", "web"], "{.status.readyReplicas}");
        assert_eq!(ready, "3");
        let names: Vec<String> = jsonpath(
            c,
            &["get", "pods", "-l", "app=web"],
            "{.items[*].metadata.name}",
        )
        .split_whitespace()
        .map(str::to_string)
        .collect();
        let ips: Vec<String> = jsonpath(
            c,
            &["get", "pods", "-l", "app=web"],
            "{.items[*].status.podIP}",
        )
        .split_whitespace()
        .map(str::to_string)
        .collect();
        assert_eq!((names.len(), ips.len()), (3, 3), "{names:?} {ips:?}");
        // Pod to pod over the bridge: pod 0 fetches pod 1's page (its hostname).
        let url = format!("http://{}:8080/index.html", ips[1]);
        let page = wait_for("pod-to-pod wget", Duration::from_secs(20), || {
            let out = c.kubectl(&["exec", &names[0], "--", "wget", "-qO-", &url]);
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).to_string())
        });
        assert_eq!(page.trim(), names[1], "pod {} served {page:?}", names[1]);

        // The kubelet's events for a container that started: Pulled, Created, Started.
        let pod = &names[0];
        let pulled = wait_for("Pulled event", Duration::from_secs(10), || {
            find_event(c, pod, "Pulled", "")
        });
        assert_kubelet_event(&pulled, pod, "httpd", "Normal");
        assert_eq!(
            pulled["message"],
            format!("Container image \"{BUSYBOX_IMAGE}\" already present on machine")
        );
        let created = find_event(c, pod, "Created", "").expect("Created event");
        assert_kubelet_event(&created, pod, "httpd", "Normal");
        assert_eq!(created["message"], "Created container: httpd");
        let started = find_event(c, pod, "Started", "").expect("Started event");
        assert_kubelet_event(&started, pod, "httpd", "Normal");
        assert_eq!(started["message"], "Started container httpd");

        // 2. A failing liveness probe restarts the container.
        let restarts = wait_for("liveness restart", Duration::from_secs(60), || {
            let n: u32 = jsonpath(
                c,
                &["get", "pod", "probed"],
                "{.status.containerStatuses[0].restartCount}",
            )
            .parse()
            .unwrap_or(0);
            (n >= 1).then_some(n)
        });
        eprintln!("probed: restartCount {restarts}");
        let last = jsonpath(
            c,
            &["get", "pod", "probed"],
            "{.status.containerStatuses[0].lastState.terminated.exitCode}",
        );
        assert!(
            last == "137" || last == "143",
            "lastState.terminated.exitCode {last:?}"
        );
        let unhealthy = wait_for(
            "Unhealthy (liveness) event",
            Duration::from_secs(10),
            || find_event(c, "probed", "Unhealthy", "Liveness probe failed: "),
        );
        assert_kubelet_event(&unhealthy, "probed", "live", "Warning");
        assert_eq!(
            unhealthy["message"].as_str().map(str::trim_end),
            Some(
                "Liveness probe failed: cat: can't open '/tmp/healthy': No such file or directory"
            )
        );
        let killing = find_event(c, "probed", "Killing", "Container live").expect("Killing event");
        assert_kubelet_event(&killing, "probed", "live", "Normal");
        assert_eq!(
            killing["message"],
            "Container live failed liveness probe, will be restarted"
        );
        // Readiness failures are events too, and keep the pod out of Ready.
        let unready = wait_for(
            "Unhealthy (readiness) event",
            Duration::from_secs(10),
            || find_event(c, "probed", "Unhealthy", "Readiness probe failed: "),
        );
        assert_kubelet_event(&unready, "probed", "live", "Warning");
        let msg = unready["message"].as_str().unwrap_or_default();
        assert!(
            msg.starts_with("Readiness probe failed: Get \"http://")
                && msg.contains(":9999/\": dial tcp ")
                && msg.ends_with(":9999: connect: connection refused"),
            "{msg}"
        );
        assert_eq!(
            jsonpath(
                c,
                &["get", "pod", "probed"],
                r#"{.status.conditions[?(@.type=="Ready")].status}"#
            ),
            "False"
        );
        // Repeated probe failures are one event with a count, as upstream aggregates them.
        let counted = wait_for(
            "Unhealthy readiness event counted",
            Duration::from_secs(20),
            || {
                find_event(c, "probed", "Unhealthy", "Readiness probe failed: ")
                    .filter(|e| e["count"].as_i64().unwrap_or(0) >= 2)
            },
        );
        let same = pod_events(c, "probed")
            .iter()
            .filter(|e| e["reason"] == "Unhealthy" && e["message"] == counted["message"])
            .count();
        assert_eq!(same, 1, "one aggregated event");

        // OOMKilled: a container above its memory limit.
        wait_for("lastState OOMKilled", Duration::from_secs(60), || {
            let last = jsonpath(
                c,
                &["get", "pod", "hog"],
                "{.status.containerStatuses[0].lastState.terminated.reason}",
            );
            (last == "OOMKilled").then_some(())
        });
        let backoff = wait_for("BackOff event", Duration::from_secs(60), || {
            find_event(c, "hog", "BackOff", "")
        });
        assert_kubelet_event(&backoff, "hog", "hog", "Warning");
        let uid = jsonpath(c, &["get", "pod", "hog"], "{.metadata.uid}");
        assert_eq!(
            backoff["message"],
            format!("Back-off restarting failed container hog in pod hog_default({uid})")
        );
        let exit = wait_for("hog lastState", Duration::from_secs(30), || {
            Some(jsonpath(
                c,
                &["get", "pod", "hog"],
                "{.status.containerStatuses[0].lastState.terminated.exitCode}",
            ))
            .filter(|s| !s.is_empty())
        });
        assert_eq!(exit, "137");
        eprintln!(
            "{}",
            c.ok(&[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=probed"
            ])
        );
        let describe = c.ok(&["describe", "pod", "hog"]);
        eprintln!(
            "{}",
            describe
                .lines()
                .skip_while(|l| !l.starts_with("Events:"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(describe.contains("OOMKilled"), "{describe}");
        assert!(
            describe.contains("kubelet")
                && describe.contains("Back-off restarting failed container hog in pod"),
            "{describe}"
        );

        // A failing postStart hook: FailedPostStartHook, and the container is killed.
        let hooked = wait_for("FailedPostStartHook event", Duration::from_secs(30), || {
            find_event(c, "hooked", "FailedPostStartHook", "")
        });
        assert_kubelet_event(&hooked, "hooked", "hooked", "Warning");
        assert_eq!(hooked["message"], "PostStartHook failed");
        let killed = wait_for("hooked Killing event", Duration::from_secs(10), || {
            find_event(c, "hooked", "Killing", "")
        });
        assert_eq!(killed["message"], "FailedPostStartHook");
        wait_for("hooked Failed", Duration::from_secs(30), || {
            (jsonpath(c, &["get", "pod", "hooked"], "{.status.phase}") == "Failed").then_some(())
        });

        // Stopping a container for a deletion: Killing "Stopping container X" (a pod whose
        // container surely runs: the liveness-probed one is mostly backing off, and on a
        // loaded machine its short running windows end before a delete arrives).
        apply(
            c,
            &format!(
                r#"apiVersion: v1
kind: Pod
metadata: {{name: stopme}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: main, image: {BUSYBOX_IMAGE}, imagePullPolicy: Never, command: ["sleep", "3600"]}}
"#
            ),
        );
        wait_running(c, "stopme");
        c.ok(&["delete", "pod", "stopme", "--timeout=60s"]);
        let stop = wait_for("Killing on delete", Duration::from_secs(30), || {
            find_event(c, "stopme", "Killing", "Stopping container")
        });
        assert_kubelet_event(&stop, "stopme", "main", "Normal");
        assert_eq!(stop["message"], "Stopping container main");
        c.ok(&["delete", "deployment", "web"]);
    });
}

/// `kubectl delete pod` with a preStop hook: the hook runs, then TERM, then KILL at the
/// grace deadline for a process that ignores TERM.
#[test]
fn node_graceful_termination_with_prestop() {
    run_node_test("node_graceful_termination_with_prestop", &[], |c| {
        wait_node_ready(c);
        let hook_dir = c.dir.path().join("hook");
        let grace = 6;
        let pod = format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: stubborn
spec:
  terminationGracePeriodSeconds: {grace}
  volumes:
  - name: hook
    hostPath: {{path: {dir}, type: DirectoryOrCreate}}
  containers:
  - name: stubborn
    image: {BUSYBOX_IMAGE}
    imagePullPolicy: Never
    command: ["sh", "-c", "trap 'echo term $(date +%s) >> /hook/log' TERM; echo start $(date +%s) >> /hook/log; while true; do sleep 1; done"]
    volumeMounts:
    - {{name: hook, mountPath: /hook}}
    lifecycle:
      preStop:
        exec:
          command: ["sh", "-c", "echo prestop $(date +%s) >> /hook/log; sleep 1; echo prestop-done $(date +%s) >> /hook/log"]
"#,
            dir = hook_dir.display()
        );
        apply(c, &pod);
        wait_for("stubborn Running", Duration::from_secs(60), || {
            (jsonpath(c, &["get", "pod", "stubborn"], "{.status.phase}") == "Running").then_some(())
        });
        let log = hook_dir.join("log");
        wait_for("container started", Duration::from_secs(10), || {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|t| t.contains("start"))
        });

        let t = Instant::now();
        c.ok(&["delete", "pod", "stubborn", "--timeout=60s"]);
        let took = t.elapsed();
        eprintln!("delete of a pod ignoring TERM with grace {grace}s took {took:?}");
        // The hook's second spent counts against the grace period; KILL comes at the
        // deadline: about `grace` seconds, neither at once nor after the 30 s default.
        assert!(
            took >= Duration::from_secs(grace - 1),
            "deleted too early: {took:?}"
        );
        assert!(
            took < Duration::from_secs(grace + 6),
            "deleted too late: {took:?}"
        );

        let text = std::fs::read_to_string(&log).expect("hook log");
        let when = |what: &str| -> u64 {
            text.lines()
                .find_map(|l| {
                    l.strip_prefix(&format!("{what} "))
                        .and_then(|t| t.trim().parse().ok())
                })
                .unwrap_or_else(|| panic!("no {what:?} line in {text:?}"))
        };
        let (pre, pre_done, term) = (when("prestop"), when("prestop-done"), when("term"));
        assert!(
            pre <= pre_done && pre_done <= term,
            "hook, then TERM: {text:?}"
        );
        assert!(term - pre <= 3, "TERM follows the hook at once: {text:?}");
        let order: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert_eq!(
            order,
            ["start", "prestop", "prestop-done", "term"],
            "{text:?}"
        );
        wait_for("containers removed", Duration::from_secs(30), || {
            (ctr_containers(c) == 0).then_some(())
        });
    });
}

/// The `/etc/resolv.conf` a pod gets for each dnsPolicy, and a hostPort reached on the
/// node IP (the portmap CNI plugin).
#[test]
fn node_pod_dns_config_and_host_port() {
    run_node_test("node_pod_dns_config_and_host_port", &[], |c| {
        wait_node_ready(c);
        let pod = |name: &str, extra_spec: &str, cmd: &str, ports: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 1\n{extra_spec}  containers:\n  - name: c\n    image: {BUSYBOX_IMAGE}\n    imagePullPolicy: Never\n    command: [\"sh\", \"-c\", \"{cmd}\"]\n{ports}"
            )
        };
        let sleep = "sleep 3600";
        apply(c, &pod("dns-cluster", "", sleep, ""));
        apply(c, &pod("dns-default", "  dnsPolicy: Default\n", sleep, ""));
        apply(c, &pod("dns-none", "  dnsPolicy: None\n  dnsConfig:\n    nameservers: [192.0.2.1]\n    searches: [my.dns.search.suffix]\n    options:\n    - {name: ndots, value: \"2\"}\n    - {name: edns0}\n", sleep, ""));
        apply(
            c,
            &pod(
                "dns-hostnet",
                "  hostNetwork: true\n  dnsPolicy: ClusterFirstWithHostNet\n",
                sleep,
                "",
            ),
        );
        let web = "mkdir -p /tmp/www; echo hostport-ok > /tmp/www/index.html; exec httpd -f -p 8080 -h /tmp/www";
        let host_port = common::free_port();
        apply(
            c,
            &pod(
                "hostport",
                "",
                web,
                &format!("    ports:\n    - {{containerPort: 8080, hostPort: {host_port}}}\n"),
            ),
        );
        for p in [
            "dns-cluster",
            "dns-default",
            "dns-none",
            "dns-hostnet",
            "hostport",
        ] {
            wait_for(&format!("{p} Running"), Duration::from_secs(60), || {
                (jsonpath(c, &["get", "pod", p], "{.status.phase}") == "Running").then_some(())
            });
        }
        // (nameservers, search domains, options) of a pod's /etc/resolv.conf.
        let resolv = |p: &str| {
            let text = c.ok(&["exec", p, "--", "cat", "/etc/resolv.conf"]);
            let (mut ns, mut search, mut opts) = (Vec::new(), Vec::new(), Vec::new());
            for l in text.lines() {
                let mut f = l.split_whitespace();
                match f.next() {
                    Some("nameserver") => ns.extend(f.map(String::from)),
                    Some("search") => search = f.map(String::from).collect(),
                    Some("options") => opts.extend(f.map(String::from)),
                    _ => {}
                }
            }
            (ns, search, opts, text)
        };
        let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let host_ns: Vec<String> = host
            .lines()
            .filter_map(|l| l.strip_prefix("nameserver"))
            .map(|s| s.trim().to_string())
            .collect();
        let host_search: Vec<String> = host
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("search "))
            .map(|s| {
                s.split_whitespace()
                    .map(|d| d.trim_end_matches('.').to_string())
                    .collect()
            })
            .unwrap_or_default();
        let cluster_search = |ns: &str| {
            let mut s: Vec<String> = vec![
                format!("{ns}.svc.cluster.local"),
                "svc.cluster.local".into(),
                "cluster.local".into(),
            ];
            s.extend(
                host_search
                    .iter()
                    .filter(|d| !s.contains(d))
                    .cloned()
                    .collect::<Vec<_>>(),
            );
            s
        };

        // ClusterFirst (the default): the cluster DNS (k3s's 10.43.0.10) and upstream's search path.
        let (ns, search, opts, text) = resolv("dns-cluster");
        assert_eq!(ns, ["10.43.0.10"], "{text}");
        assert_eq!(search, cluster_search("default"), "{text}");
        assert_eq!(opts, ["ndots:5"], "{text}");
        // ClusterFirstWithHostNet: the same for a host-network pod.
        let (ns, search, opts, text) = resolv("dns-hostnet");
        assert_eq!(
            (ns, search, opts),
            (
                vec!["10.43.0.10".to_string()],
                cluster_search("default"),
                vec!["ndots:5".to_string()]
            ),
            "{text}"
        );
        // Default: the host's (k3s's choice: a loopback stub resolver is replaced).
        let (ns, search, _, text) = resolv("dns-default");
        let loopback = host_ns.iter().any(|n| {
            n.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
        });
        if !loopback && !host_ns.is_empty() {
            assert_eq!(ns, host_ns, "{text}");
            assert_eq!(search, host_search, "{text}");
        } else {
            assert!(
                !ns.is_empty() && !ns.iter().any(|n| n.starts_with("127.")),
                "{text}"
            );
        }
        // None: dnsConfig only.
        let (ns, search, opts, text) = resolv("dns-none");
        assert_eq!(
            (ns, search, opts),
            (
                vec!["192.0.2.1".to_string()],
                vec!["my.dns.search.suffix".to_string()],
                vec!["ndots:2".to_string(), "edns0".to_string()]
            ),
            "{text}"
        );

        // hostPort: the pod answers on the node IP at that port.
        let get = |ip: &str| {
            use std::io::{Read, Write};
            let addr: std::net::SocketAddr = format!("{ip}:{host_port}").parse().ok()?;
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            s.write_all(b"GET / HTTP/1.0\r\nHost: node\r\n\r\n").ok()?;
            let mut r = String::new();
            let _ = s.read_to_string(&mut r);
            r.contains("hostport-ok").then_some(r)
        };
        let node_ip = jsonpath(c, &["get", "pod", "hostport"], "{.status.hostIP}");
        let resp = wait_for(
            "GET through the hostPort on the node IP",
            Duration::from_secs(20),
            || get(&node_ip),
        );
        assert!(resp.contains(" 200 "), "{resp}");
        // The tests' node IP is 127.0.0.1; the host's own global address works as well.
        let global = sh("ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | grep -v '^10\\.42\\.' | head -n1");
        let global = global.trim();
        if !global.is_empty() {
            wait_for(
                "GET through the hostPort on the host's address",
                Duration::from_secs(20),
                || get(global),
            );
        }
        eprintln!("hostPort {host_port} on node IP {node_ip} and {global:?}: 200");
        c.ok(&["delete", "pod", "--all", "--timeout=60s"]);
        wait_for("containers removed", Duration::from_secs(30), || {
            (ctr_containers(c) == 0).then_some(())
        });
    });
}
