//! Pod details the upstream conformance suite checks (issue 17, node agent groups 15, 17,
//! 18): completed init containers are ready and `Initialized` names the incomplete ones,
//! the kubelet-managed `/etc/hosts` (pod IP, hostname, FQDN, hostAliases), and
//! `FallbackToLogsOnError` takes the log's text; `activeDeadlineSeconds` set on a running
//! pod is enforced (group 19); `pods/log` is served over a WebSocket (group 22); a changed
//! image restarts the container from the new image.
//!
//! Needs root, containerd, runc, busybox-static and the CNI plugins; skips otherwise.

mod common;

use std::time::Duration;

use common::node::*;
use common::wait_for;

#[test]
fn node_pod_status_details() {
    run_node_test("node_pod_status_details", &[], |c| {
        wait_node_ready(c);
        apply(
            c,
            &format!(
                r#"apiVersion: v1
kind: Pod
metadata: {{name: inits}}
spec:
  terminationGracePeriodSeconds: 1
  hostname: web-0
  subdomain: web
  hostAliases: [{{ip: "10.1.2.3", hostnames: [foo.local, bar.local]}}]
  initContainers:
  - {{name: first, image: {BUSYBOX_IMAGE}, imagePullPolicy: Never, command: ["true"]}}
  - {{name: second, image: {BUSYBOX_IMAGE}, imagePullPolicy: Never, command: ["sh", "-c", "test -e /tmp/go || sleep 3"]}}
  containers:
  - {{name: main, image: {BUSYBOX_IMAGE}, imagePullPolicy: Never, command: ["sleep", "3600"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: deadline}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: c, image: {BUSYBOX_IMAGE}, imagePullPolicy: Never, command: ["sleep", "3600"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: fallback}}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: {BUSYBOX_IMAGE}
    imagePullPolicy: Never
    terminationMessagePolicy: FallbackToLogsOnError
    command: ["sh", "-c", "printf DONE; exit 1"]
---
apiVersion: v1
kind: Pod
metadata: {{name: initfail}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  initContainers:
  - {{name: init1, image: {BUSYBOX_IMAGE}, imagePullPolicy: Never, command: ["false"]}}
  - {{name: init2, image: {BUSYBOX_IMAGE}, imagePullPolicy: Never, command: ["true"]}}
  containers:
  - {{name: main, image: {BUSYBOX_IMAGE}, imagePullPolicy: Never, command: ["true"]}}
"#
            ),
        );
        // Once `first` completed and while `second` runs, Initialized names it (and only it).
        let msg = wait_for(
            "Initialized=False with a message",
            Duration::from_secs(60),
            || {
                let m = jsonpath(
                    c,
                    &["get", "pod", "inits"],
                    r#"{.status.conditions[?(@.type=="Initialized")].reason}|{.status.conditions[?(@.type=="Initialized")].message}"#,
                );
                m.ends_with("[second]").then_some(m)
            },
        );
        assert_eq!(
            msg,
            "ContainersNotInitialized|containers with incomplete status: [second]"
        );
        wait_running(c, "inits");
        assert_eq!(
            jsonpath(
                c,
                &["get", "pod", "inits"],
                "{.status.initContainerStatuses[*].ready}"
            ),
            "true true",
            "completed init containers are ready"
        );
        assert_eq!(
            jsonpath(
                c,
                &["get", "pod", "inits"],
                r#"{.status.conditions[?(@.type=="Initialized")].status}"#
            ),
            "True"
        );

        // The kubelet-managed /etc/hosts.
        let ip = jsonpath(c, &["get", "pod", "inits"], "{.status.podIP}");
        let hosts = c.ok(&["exec", "inits", "-c", "main", "--", "cat", "/etc/hosts"]);
        assert!(
            hosts.starts_with("# Kubernetes-managed hosts file."),
            "{hosts}"
        );
        assert!(hosts.contains("127.0.0.1\tlocalhost"), "{hosts}");
        assert!(
            hosts.contains(&format!("{ip}\tweb-0.web.default.svc.cluster.local\tweb-0")),
            "{hosts}"
        );
        assert!(hosts.contains("10.1.2.3\tfoo.local\tbar.local"), "{hosts}");

        // activeDeadlineSeconds added to a running pod: it fails with DeadlineExceeded.
        wait_running(c, "deadline");
        c.ok(&[
            "patch",
            "pod",
            "deadline",
            "-p",
            r#"{"spec":{"activeDeadlineSeconds":5}}"#,
        ]);
        let st = wait_for("DeadlineExceeded", Duration::from_secs(60), || {
            let s = jsonpath(
                c,
                &["get", "pod", "deadline"],
                "{.status.phase}|{.status.reason}",
            );
            s.starts_with("Failed").then_some(s)
        });
        assert_eq!(st, "Failed|DeadlineExceeded");

        // FallbackToLogsOnError: the text of the log, without CRI framing.
        let message = wait_for("fallback terminated", Duration::from_secs(60), || {
            let m = jsonpath(
                c,
                &["get", "pod", "fallback"],
                "{.status.containerStatuses[0].state.terminated.message}",
            );
            (!m.is_empty()).then_some(m)
        });
        assert_eq!(message.trim_end(), "DONE");
        assert!(!message.contains("stdout"), "{message:?}");

        // A failed init container (restartPolicy Never): the pod fails and stays
        // not initialized, naming the failed and the never-run init containers.
        let init = wait_for("initfail failed", Duration::from_secs(60), || {
            let m = jsonpath(
                c,
                &["get", "pod", "initfail"],
                r#"{.status.phase}|{.status.conditions[?(@.type=="Initialized")].status}|{.status.conditions[?(@.type=="Initialized")].reason}|{.status.conditions[?(@.type=="Initialized")].message}"#,
            );
            m.starts_with("Failed|").then_some(m)
        });
        assert_eq!(
            init,
            "Failed|False|ContainersNotInitialized|containers with incomplete status: [init1 init2]"
        );

        // pods/log over a WebSocket (group 22: upstream's binary.k8s.io reader protocol).
        let creds = common::http::Creds::from_kubeconfig(&c.kubeconfig, c.port);
        let mut conn = common::http::Conn::connect(&creds).expect("connect");
        let raw = conn
            .get_until_close(
                "/api/v1/namespaces/default/pods/fallback/log?container=c",
                "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: binary.k8s.io\r\n",
            )
            .expect("websocket log");
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head");
        let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(
            head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        assert!(
            head.contains("sec-websocket-protocol: binary.k8s.io"),
            "{head}"
        );
        let (mut text, mut closed, mut i) = (Vec::new(), false, split + 4);
        while i + 2 <= raw.len() {
            let opcode = raw[i] & 0x0f;
            let (len, hdr) = match raw[i + 1] & 0x7f {
                126 => (usize::from(u16::from_be_bytes([raw[i + 2], raw[i + 3]])), 4),
                n => (usize::from(n), 2),
            };
            let payload = &raw[i + hdr..(i + hdr + len).min(raw.len())];
            match opcode {
                2 => text.extend_from_slice(payload),
                8 => closed = true,
                other => panic!("unexpected frame opcode {other}"),
            }
            i += hdr + len;
        }
        assert!(closed, "no close frame");
        assert_eq!(String::from_utf8_lossy(&text), "DONE");

        // A changed image of a running container (`kubectl set image` on a bare pod):
        // the container is killed and started again from the new image, even with
        // `restartPolicy: Never`, and the status reports the new image with one restart.
        let root = c.dir.path().join("busybox-v2");
        std::fs::create_dir_all(root.join("bin")).expect("v2 rootfs");
        let busybox = rk3s_kubelet::image::find_static_busybox().expect("static busybox");
        std::fs::copy(&busybox, root.join("bin/busybox")).expect("copy busybox");
        for applet in ["sh", "sleep", "cat"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("applet");
        }
        std::fs::write(root.join("version"), "v2\n").expect("marker");
        build_and_import_image(c, &root, "rk3s.test/busybox:e2e-v2", &[]);
        apply(
            c,
            &format!(
                r#"apiVersion: v1
kind: Pod
metadata: {{name: retag}}
spec:
  terminationGracePeriodSeconds: 1
  restartPolicy: Never
  containers:
  - {{name: c, image: {BUSYBOX_IMAGE}, imagePullPolicy: Never, command: ["sleep", "3600"]}}
"#
            ),
        );
        wait_running(c, "retag");
        c.ok(&["set", "image", "pod/retag", "c=rk3s.test/busybox:e2e-v2"]);
        wait_for(
            "the container to run the new image",
            Duration::from_secs(60),
            || {
                let s = jsonpath(
                c,
                &["get", "pod", "retag"],
                "{.status.containerStatuses[0].image} {.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].state.running.startedAt} {.status.phase}",
            );
                let f: Vec<&str> = s.split_whitespace().collect();
                (f.len() == 4
                    && f[0] == "rk3s.test/busybox:e2e-v2"
                    && f[1] == "1"
                    && f[3] == "Running")
                    .then_some(())
            },
        );
        let out = c.ok(&["exec", "retag", "--", "cat", "/version"]);
        assert_eq!(out.trim(), "v2");
        let events = c.ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=retag,reason=Killing",
            "-o",
            "jsonpath={.items[*].message}",
        ]);
        assert!(
            events.contains("Container c definition changed, will be restarted"),
            "{events}"
        );
    });
}
