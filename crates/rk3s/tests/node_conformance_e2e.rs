//! Node agent behaviours the upstream conformance suite checks (issue 17, groups 11, 16
//! and 20): `subPathExpr` expanded from the container's environment (the sub-directory
//! created; unset variables, absolute paths and `..` fail the container with
//! `CreateContainerConfigError` and upstream's messages; a pod fixed by a later
//! annotation starts), the agent's status writes keep conditions written by others, an
//! image change restarts the container for its new definition, and a pod bound directly
//! to the node whose
//! host port is taken is rejected at admission (`Failed`, reason `NodePorts`).
//!
//! Needs root, containerd, runc, busybox-static and the CNI plugins; skips otherwise.

mod common;

use std::time::Duration;

use common::node::*;
use common::wait_for;

const NODE_PORTS_MESSAGE: &str =
    "Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports";

/// The waiting `reason|message` of a pod's first container, once it has a reason.
fn waiting(c: &common::Cluster, pod: &str) -> String {
    wait_for(
        &format!("{pod} waiting with a reason"),
        Duration::from_secs(60),
        || {
            let s = jsonpath(
                c,
                &["get", "pod", pod],
                "{.status.containerStatuses[0].state.waiting.reason}|{.status.containerStatuses[0].state.waiting.message}",
            );
            (s.starts_with("CreateContainerConfigError|")).then_some(s)
        },
    )
}

#[test]
fn node_conformance_agent_behaviours() {
    run_node_test("node_conformance_agent_behaviours", &[], |c| {
        let node = wait_node_ready(c);
        let node_ip = jsonpath(
            c,
            &["get", "node", &node],
            r#"{.status.addresses[?(@.type=="InternalIP")].address}"#,
        );
        let subpath_pod = |name: &str, value: &str, expr: &str| {
            format!(
                r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, annotations: {{notmysubpath: mypath}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {BUSYBOX_IMAGE}
    imagePullPolicy: Never
    command: ["sleep", "3600"]
    env:
    - {{name: POD_NAME, value: "{value}"}}
    - name: ANNOTATION
      valueFrom: {{fieldRef: {{apiVersion: v1, fieldPath: "metadata.annotations['mysubpath']"}}}}
    volumeMounts:
    - {{name: workdir1, mountPath: /subpath_mount, subPathExpr: "{expr}"}}
    - {{name: workdir1, mountPath: /volume_mount}}
  volumes:
  - {{name: workdir1, emptyDir: {{}}}}
---
"#
            )
        };
        let mut yaml = subpath_pod("subpath", "foo", "$(ANNOTATION)/$(POD_NAME)");
        yaml += &subpath_pod("absolute", "/tmp", "$(POD_NAME)");
        yaml += &subpath_pod("dotdot", "..", "$(POD_NAME)");
        yaml += &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: gated}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: c, image: {BUSYBOX_IMAGE}, imagePullPolicy: Never, command: ["sh", "-c", "sleep 2; exit 1"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: steady}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: c, image: {BUSYBOX_IMAGE}, imagePullPolicy: Never, command: ["sleep", "3600"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: port-first}}
spec:
  nodeName: {node}
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {BUSYBOX_IMAGE}
    imagePullPolicy: Never
    command: ["sleep", "3600"]
    ports: [{{containerPort: 54322, hostPort: 54322, protocol: TCP}}]
"#
        );
        apply(c, &yaml);

        // Group 16: subPathExpr.
        assert_eq!(
            waiting(c, "subpath"),
            "CreateContainerConfigError|missing value for ANNOTATION",
            "the annotation is not there yet"
        );
        assert_eq!(
            waiting(c, "absolute"),
            "CreateContainerConfigError|error SubPath `/tmp` must not be an absolute path"
        );
        assert_eq!(
            waiting(c, "dotdot"),
            "CreateContainerConfigError|unable to provision SubPath `..`: must not contain '..'"
        );
        c.ok(&["annotate", "pod", "subpath", "mysubpath=mypath"]);
        wait_running(c, "subpath");
        c.ok(&[
            "exec",
            "subpath",
            "--",
            "touch",
            "/volume_mount/mypath/foo/test.log",
        ]);
        c.ok(&[
            "exec",
            "subpath",
            "--",
            "sh",
            "-c",
            "test -f /subpath_mount/test.log",
        ]);

        // Group 20: a pod bound to the node directly, with a host port taken.
        wait_running(c, "port-first");
        apply(
            c,
            &format!(
                r#"apiVersion: v1
kind: Pod
metadata: {{name: port-second}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {BUSYBOX_IMAGE}
    imagePullPolicy: Never
    command: ["sleep", "3600"]
    ports: [{{containerPort: 80, hostPort: 54322, hostIP: "{node_ip}", protocol: TCP}}]
"#
            ),
        );
        let st = wait_for("port-second rejected", Duration::from_secs(30), || {
            let s = jsonpath(
                c,
                &["get", "pod", "port-second"],
                "{.status.phase}|{.status.reason}|{.status.message}",
            );
            s.starts_with("Failed").then_some(s)
        });
        assert_eq!(
            st,
            format!("Failed|NodePorts|Pod was rejected: {NODE_PORTS_MESSAGE}")
        );
        let events = wait_for("NodePorts event", Duration::from_secs(30), || {
            let e = c.ok(&[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=port-second",
                "-o",
                "jsonpath={range .items[*]}{.type}|{.reason}|{.message}{\"\\n\"}{end}",
            ]);
            e.contains("NodePorts").then_some(e)
        });
        assert!(
            events.contains(&format!("Warning|NodePorts|{NODE_PORTS_MESSAGE}")),
            "{events}"
        );
        assert_eq!(
            jsonpath(c, &["get", "pod", "port-first"], "{.status.phase}"),
            "Running",
            "the first pod keeps its port"
        );

        // Group 11: conditions written by others stay when the agent writes the status.
        wait_running(c, "gated");
        c.ok(&[
            "patch",
            "pod",
            "gated",
            "--subresource=status",
            "-p",
            r#"{"status":{"conditions":[{"type":"example.com/gate","status":"True"}]}}"#,
        ]);
        let restarts = jsonpath(
            c,
            &["get", "pod", "gated"],
            "{.status.containerStatuses[0].restartCount}",
        );
        wait_for(
            "the agent reports a restart",
            Duration::from_secs(60),
            || {
                let n = jsonpath(
                    c,
                    &["get", "pod", "gated"],
                    "{.status.containerStatuses[0].restartCount}",
                );
                (n != restarts && !n.is_empty()).then_some(())
            },
        );
        assert_eq!(
            jsonpath(
                c,
                &["get", "pod", "gated"],
                r#"{.status.conditions[?(@.type=="example.com/gate")].status}"#
            ),
            "True",
            "the agent's status write kept the condition it does not own"
        );

        // An image change of a running container: as upstream's kubelet, the container is
        // killed for its new definition and started again from the new image; with
        // `imagePullPolicy: Never` and the image absent that start waits with
        // `ErrImageNeverPull` (the old instance is the last state).
        wait_running(c, "steady");
        c.ok(&[
            "patch",
            "pod",
            "steady",
            "-p",
            r#"{"metadata":{"labels":{"test-pod":"patched"}},"spec":{"containers":[{"name":"c","image":"rk3s.test/other:e2e"}]}}"#,
        ]);
        wait_for(
            "the container to be stopped for its new image",
            Duration::from_secs(60),
            || {
                let s = jsonpath(
                    c,
                    &["get", "pod", "steady"],
                    "{.status.containerStatuses[0].state.waiting.reason} {.status.containerStatuses[0].lastState.terminated.reason}",
                );
                s.starts_with("ErrImageNeverPull ").then_some(())
            },
        );
        let message = jsonpath(
            c,
            &["get", "pod", "steady"],
            "{.status.containerStatuses[0].state.waiting.message}",
        );
        assert!(message.contains("rk3s.test/other:e2e"), "{message}");
    });
}
