//! The node agent's static pods and volumes end to end, on real containerd:
//! - static pods from `<data-dir>/agent/pod-manifests/` and their mirror pods;
//! - configMap / secret volume updates reaching running pods, emptyDir (disk and
//!   `medium: Memory`), persistentVolumeClaim volumes bound to hostPath / local PVs.
//!
//! Needs root, containerd, runc, busybox-static and the CNI plugins; skips (with a
//! message) otherwise. Each test runs one cluster and cleans up after itself.

mod common;

use std::time::{Duration, Instant};

use common::node::*;
use common::{wait_for, Cluster};

fn static_manifest(cmd: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: static-web
  labels:
    app: static-web
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: {BUSYBOX_IMAGE}
    imagePullPolicy: Never
    command: ["sh", "-c", "{cmd}"]
"#
    )
}

/// (uid, phase, containerID, config.hash) of a pod; empty strings when it is absent.
fn pod_facts(c: &Cluster, name: &str) -> (String, String, String, String) {
    let out = jsonpath(
        c,
        &["get", "pod", name, "--ignore-not-found"],
        r#"{.metadata.uid}|{.status.phase}|{.status.containerStatuses[0].containerID}|{.metadata.annotations.kubernetes\.io/config\.hash}"#,
    );
    let mut it = out.split('|').map(str::to_string);
    (
        it.next().unwrap_or_default(),
        it.next().unwrap_or_default(),
        it.next().unwrap_or_default(),
        it.next().unwrap_or_default(),
    )
}

#[test]
fn node_static_pods() {
    run_node_test("node_static_pods", &[], |c| {
        let node = wait_node_ready(c);
        let mirror = format!("static-web-{node}");
        let manifests = c.data_dir().join("agent/pod-manifests");
        std::fs::create_dir_all(&manifests).expect("manifests dir");
        let file = manifests.join("static-web.yaml");

        // A manifest dropped in the folder runs, and shows up as a mirror pod.
        let t0 = Instant::now();
        std::fs::write(&file, static_manifest("echo v1; exec sleep 3600")).expect("write manifest");
        let (uid1, _, cid1, hash1) =
            wait_for("mirror pod Running", Duration::from_secs(60), || {
                let f = pod_facts(c, &mirror);
                (f.1 == "Running" && f.2.starts_with("containerd://")).then_some(f)
            });
        eprintln!("static pod Running (mirror) after {:?}", t0.elapsed());
        assert_eq!(hash1.len(), 32, "config.hash {hash1:?}");
        let ann = |k: &str| {
            jsonpath(
                c,
                &["get", "pod", &mirror],
                &format!("{{.metadata.annotations.kubernetes\\.io/config\\.{k}}}"),
            )
        };
        assert_eq!(
            ann("mirror"),
            hash1,
            "config.mirror is the static pod's hash"
        );
        assert_eq!(ann("source"), "file");
        assert!(!ann("seen").is_empty(), "config.seen is set");
        assert_ne!(uid1, hash1, "the mirror pod has its own UID");
        let owner = jsonpath(c, &["get", "pod", &mirror], "{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}/{.metadata.ownerReferences[0].controller}");
        assert_eq!(owner, format!("Node/{node}/true"));
        let node_uid = jsonpath(c, &["get", "node", &node], "{.metadata.uid}");
        assert_eq!(
            jsonpath(
                c,
                &["get", "pod", &mirror],
                "{.metadata.ownerReferences[0].uid}"
            ),
            node_uid
        );
        assert_eq!(
            jsonpath(c, &["get", "pod", &mirror], "{.spec.nodeName}"),
            node
        );
        assert_eq!(
            c.ok(&["get", "pods", "-l", "app=static-web", "-o", "name"])
                .trim(),
            format!("pod/{mirror}"),
            "labels are kept"
        );
        // Logs and exec reach the static pod through its mirror.
        wait_for("logs of the static pod", Duration::from_secs(20), || {
            c.kubectl(&["logs", &mirror])
                .stdout
                .starts_with(b"v1")
                .then_some(())
        });
        assert_eq!(
            c.ok(&["exec", &mirror, "--", "echo", "exec-ok"]).trim(),
            "exec-ok"
        );

        // Deleting the mirror pod recreates it; the static pod keeps running.
        // `--wait=false`: kubectl's delete-wait looks at names only once its watch cache
        // synced, so a mirror recreated within its 100 ms poll makes it wait forever
        // (kubernetes/kubernetes#135563); the new UID below proves the deletion instead.
        c.ok(&["delete", "pod", &mirror, "--wait=false"]);
        let (uid2, _, cid2, hash2) =
            wait_for("mirror pod recreated", Duration::from_secs(30), || {
                let f = pod_facts(c, &mirror);
                (!f.0.is_empty() && f.0 != uid1 && f.1 == "Running").then_some(f)
            });
        assert_ne!(uid2, uid1);
        assert_eq!(hash2, hash1, "same static pod");
        assert_eq!(cid2, cid1, "the container was not restarted");
        assert_eq!(
            jsonpath(
                c,
                &["get", "pod", &mirror],
                "{.status.containerStatuses[0].restartCount}"
            ),
            "0"
        );

        // Editing the manifest restarts the pod under a new hash.
        std::fs::write(&file, static_manifest("echo v2; exec sleep 3600")).expect("edit manifest");
        let (_, _, cid3, hash3) = wait_for(
            "static pod restarted with the new manifest",
            Duration::from_secs(60),
            || {
                let f = pod_facts(c, &mirror);
                (f.1 == "Running"
                    && !f.3.is_empty()
                    && f.3 != hash1
                    && f.2.starts_with("containerd://")
                    && f.2 != cid1)
                    .then_some(f)
            },
        );
        assert_ne!(cid3, cid1);
        assert_eq!(ann("mirror"), hash3);
        wait_for(
            "logs of the new static pod",
            Duration::from_secs(20),
            || {
                c.kubectl(&["logs", &mirror])
                    .stdout
                    .starts_with(b"v2")
                    .then_some(())
            },
        );
        wait_for("old containers removed", Duration::from_secs(30), || {
            (ctr_containers(c) == 2).then_some(())
        });

        // Removing the manifest stops the pod and deletes the mirror pod.
        std::fs::remove_file(&file).expect("remove manifest");
        wait_for("mirror pod deleted", Duration::from_secs(30), || {
            pod_facts(c, &mirror).0.is_empty().then_some(())
        });
        wait_for(
            "static pod's containers removed",
            Duration::from_secs(30),
            || (ctr_containers(c) == 0).then_some(()),
        );
        // And it stays deleted.
        std::thread::sleep(Duration::from_secs(2));
        assert!(
            pod_facts(c, &mirror).0.is_empty(),
            "no mirror pod without a manifest"
        );
    });
}

fn exec(c: &Cluster, pod: &str, cmd: &str) -> (bool, String) {
    let o = c.kubectl(&["exec", pod, "--", "sh", "-c", cmd]);
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// `kubectl create <what> --dry-run=client -o yaml | kubectl apply -f -`.
fn create_or_update(c: &Cluster, what: &[&str]) {
    let mut args = vec!["create"];
    args.extend_from_slice(what);
    args.extend(["--dry-run=client", "-o", "yaml"]);
    let yaml = c.ok(&args);
    c.ok_with(&common::kubectl_bin(), &["apply", "-f", "-"], Some(&yaml));
}

fn storage_manifests(node: &str, hp_dir: &str, local_dir: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: PersistentVolume
metadata: {{name: pv-hp}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadWriteOnce]
  storageClassName: manual
  hostPath: {{path: "{hp_dir}", type: DirectoryOrCreate}}
---
apiVersion: v1
kind: PersistentVolume
metadata: {{name: pv-local}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadWriteOnce]
  storageClassName: manual
  local: {{path: "{local_dir}"}}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions:
        - {{key: kubernetes.io/hostname, operator: In, values: ["{node}"]}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: claim-hp}}
spec:
  storageClassName: manual
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: 1Gi}}}}
  volumeName: pv-hp
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: claim-local}}
spec:
  storageClassName: manual
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: 1Gi}}}}
  volumeName: pv-local
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: claim-none}}
spec:
  storageClassName: manual
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: 5Gi}}}}
"#
    )
}

fn volumes_pod() -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: vols}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {BUSYBOX_IMAGE}
    imagePullPolicy: Never
    command: ["sh", "-c", "exec sleep 3600"]
    volumeMounts:
    - {{name: cm, mountPath: /cm}}
    - {{name: cm, mountPath: /sub/key, subPath: key}}
    - {{name: sec, mountPath: /sec}}
    - {{name: mem, mountPath: /mem}}
    - {{name: disk, mountPath: /disk}}
    - {{name: hp, mountPath: /pv}}
    - {{name: loc, mountPath: /pvro}}
  volumes:
  - {{name: cm, configMap: {{name: cm1}}}}
  - {{name: sec, secret: {{secretName: s1}}}}
  - {{name: mem, emptyDir: {{medium: Memory, sizeLimit: 16Mi}}}}
  - {{name: disk, emptyDir: {{}}}}
  - {{name: hp, persistentVolumeClaim: {{claimName: claim-hp}}}}
  - {{name: loc, persistentVolumeClaim: {{claimName: claim-local, readOnly: true}}}}
"#
    )
}

fn unbound_pod(name: &str, node: Option<&str>) -> String {
    let node_line = node
        .map(|n| format!("  nodeName: {n}\n"))
        .unwrap_or_default();
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
{node_line}  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {BUSYBOX_IMAGE}
    imagePullPolicy: Never
    command: ["sh", "-c", "exec sleep 3600"]
    volumeMounts: [{{name: data, mountPath: /data}}]
  volumes:
  - {{name: data, persistentVolumeClaim: {{claimName: claim-none}}}}
"#
    )
}

#[test]
fn node_volume_kinds() {
    run_node_test("node_volume_kinds", &[], |c| {
        let node = wait_node_ready(c);
        wait_for("default service account", Duration::from_secs(30), || {
            c.kubectl(&["get", "sa", "default"])
                .status
                .success()
                .then_some(())
        });
        let hp_dir = c.dir.path().join("pv-hostpath");
        let local_dir = c.dir.path().join("pv-local");
        std::fs::create_dir_all(&local_dir).expect("local PV dir");
        std::fs::write(local_dir.join("hello"), "from-host\n").expect("local PV file");
        create_or_update(c, &["configmap", "cm1", "--from-literal=key=v1"]);
        create_or_update(c, &["secret", "generic", "s1", "--from-literal=key=s1"]);
        let storage = storage_manifests(
            &node,
            &hp_dir.display().to_string(),
            &local_dir.display().to_string(),
        );
        c.ok_with(
            &common::kubectl_bin(),
            &["apply", "-f", "-"],
            Some(&storage),
        );
        for claim in ["claim-hp", "claim-local"] {
            wait_for(&format!("{claim} Bound"), Duration::from_secs(30), || {
                (jsonpath(c, &["get", "pvc", claim], "{.status.phase}") == "Bound").then_some(())
            });
        }
        c.ok_with(
            &common::kubectl_bin(),
            &["apply", "-f", "-"],
            Some(&volumes_pod()),
        );
        wait_for("vols Running", Duration::from_secs(60), || {
            (jsonpath(c, &["get", "pod", "vols"], "{.status.phase}") == "Running").then_some(())
        });

        // configMap and secret volumes, written by the atomic writer.
        assert_eq!(
            exec(c, "vols", "cat /cm/key /sub/key /sec/key"),
            (true, "v1v1s1".into())
        );
        let (ok, ls) = exec(c, "vols", "ls -a /cm");
        assert!(ok && ls.contains("..data") && ls.contains("key"), "{ls}");

        // emptyDir: medium Memory is a tmpfs of sizeLimit; the default is on disk.
        let (_, mem) = exec(c, "vols", "grep ' /mem ' /proc/mounts");
        assert!(
            mem.starts_with("tmpfs /mem tmpfs ") && mem.contains("size=16384k"),
            "{mem}"
        );
        let (_, disk) = exec(c, "vols", "grep ' /disk ' /proc/mounts");
        assert!(!disk.is_empty() && !disk.starts_with("tmpfs"), "{disk}");
        assert_eq!(
            exec(
                c,
                "vols",
                "echo m > /mem/f && echo d > /disk/f && cat /mem/f /disk/f"
            ),
            (true, "m\nd\n".into())
        );
        let (ok, out) = exec(c, "vols", "dd if=/dev/zero of=/mem/big bs=1M count=32 2>&1");
        assert!(
            !ok && out.contains("No space left on device"),
            "the tmpfs is limited to 16Mi: {out}"
        );

        // persistentVolumeClaim: hostPath PV read-write, local PV read-only.
        assert_eq!(
            exec(c, "vols", "echo hi > /pv/from-pod && cat /pvro/hello"),
            (true, "from-host\n".into())
        );
        assert_eq!(
            std::fs::read_to_string(hp_dir.join("from-pod"))
                .ok()
                .as_deref(),
            Some("hi\n")
        );
        let (ok, out) = exec(c, "vols", "touch /pvro/x 2>&1");
        assert!(!ok && out.contains("Read-only file system"), "{out}");

        // Updates reach the running pod (subPath mounts keep their file).
        let t0 = Instant::now();
        create_or_update(c, &["configmap", "cm1", "--from-literal=key=v2"]);
        wait_for(
            "configMap update in the pod",
            Duration::from_secs(60),
            || (exec(c, "vols", "cat /cm/key").1 == "v2").then_some(()),
        );
        eprintln!(
            "configMap update visible in the pod after {:?}",
            t0.elapsed()
        );
        let t0 = Instant::now();
        create_or_update(c, &["secret", "generic", "s1", "--from-literal=key=s2"]);
        wait_for("secret update in the pod", Duration::from_secs(60), || {
            (exec(c, "vols", "cat /sec/key").1 == "s2").then_some(())
        });
        eprintln!("secret update visible in the pod after {:?}", t0.elapsed());
        assert_eq!(
            exec(c, "vols", "cat /sub/key").1,
            "v1",
            "a subPath mount does not follow updates"
        );

        // Unbound claims: the scheduler keeps the pod Pending; a pod bound to the node
        // by hand waits in ContainerCreating.
        c.ok_with(
            &common::kubectl_bin(),
            &["apply", "-f", "-"],
            Some(&unbound_pod("pending-pvc", None)),
        );
        c.ok_with(
            &common::kubectl_bin(),
            &["apply", "-f", "-"],
            Some(&unbound_pod("direct-pvc", Some(&node))),
        );
        let msg = wait_for("pending-pvc unschedulable", Duration::from_secs(30), || {
            let m = jsonpath(
                c,
                &["get", "pod", "pending-pvc"],
                r#"{.status.conditions[?(@.type=="PodScheduled")].message}"#,
            );
            (!m.is_empty()).then_some(m)
        });
        assert!(
            msg.contains("pod has unbound immediate PersistentVolumeClaims"),
            "{msg}"
        );
        assert_eq!(
            jsonpath(c, &["get", "pod", "pending-pvc"], "{.status.phase}"),
            "Pending"
        );
        let waiting = wait_for("direct-pvc waiting", Duration::from_secs(30), || {
            let w = jsonpath(c, &["get", "pod", "direct-pvc"], "{.status.containerStatuses[0].state.waiting.reason}|{.status.containerStatuses[0].state.waiting.message}");
            w.contains("PVC is not bound").then_some(w)
        });
        assert!(
            waiting.starts_with("ContainerCreating|")
                && waiting.contains("error processing PVC default/claim-none"),
            "{waiting}"
        );
        assert_eq!(
            jsonpath(c, &["get", "pod", "direct-pvc"], "{.status.phase}"),
            "Pending"
        );
        c.ok(&[
            "delete",
            "pod",
            "vols",
            "pending-pvc",
            "direct-pvc",
            "--timeout=60s",
        ]);
        wait_for("tmpfs unmounted", Duration::from_secs(30), || {
            (!sh("cat /proc/mounts").contains("kubernetes.io~empty-dir/mem")).then_some(())
        });
    });
}
