//! Image pulls from registries end to end, as k3s does them: an unreachable registry
//! gives `ErrImagePull` then `ImagePullBackOff` with upstream's messages; a tiny OCI
//! distribution registry served by the test on 127.0.0.1 (plain HTTP, Basic auth) is
//! reached through `registries.yaml` mirrors, with the credentials of `configs.<host>.auth`
//! or of a pod's `imagePullSecrets`.
//!
//! All network traffic stays on 127.0.0.1: the "registry hosts" the images name are
//! closed loopback ports, mirrored to the test's registry.
//!
//! Needs root, containerd, runc, busybox-static and the CNI plugins (skips otherwise);
//! runs under the shared node lock (`node_*`).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::node::*;
use common::{wait_for, Cluster};

/// User and password the test registry accepts.
const USER: &str = "alice";
const PASSWORD: &str = "right-password";

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Waits until the pod's first container waits with `reason`; returns its message.
fn wait_waiting(c: &Cluster, pod: &str, reason: &str, timeout: Duration) -> String {
    wait_for(&format!("{pod} waiting with {reason}"), timeout, || {
        let out = jsonpath(c, &["get", "pod", pod], "{.status.containerStatuses[0].state.waiting.reason}|{.status.containerStatuses[0].state.waiting.message}");
        let (r, m) = out.split_once('|')?;
        (r == reason).then(|| m.to_string())
    })
}

fn pull_pod(name: &str, image: &str, secret: Option<&str>) -> String {
    let secrets = secret
        .map(|s| format!("  imagePullSecrets:\n  - name: {s}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 1\n{secrets}  containers:\n  - name: c\n    image: {image}\n    imagePullPolicy: Always\n    command: [\"sleep\", \"3600\"]\n"
    )
}

#[test]
fn node_image_pull_backoff_and_runtime_classes() {
    run_node_test("node_image_pull_backoff_and_runtime_classes", &[], |c| {
        let image = format!("127.0.0.1:{}/x:1", closed_port());
        c.ok_with(
            &common::kubectl_bin(),
            &["apply", "-f", "-"],
            Some(&pull_pod("unreachable", &image, None)),
        );
        let m = wait_waiting(c, "unreachable", "ErrImagePull", Duration::from_secs(60));
        assert!(m.starts_with("rpc error: code = "), "{m}");
        assert!(
            m.contains(&format!("failed to pull and unpack image \"{image}\"")),
            "{m}"
        );
        assert!(m.contains("connection refused"), "{m}");
        let b = wait_waiting(
            c,
            "unreachable",
            "ImagePullBackOff",
            Duration::from_secs(30),
        );
        assert_eq!(
            b,
            format!("Back-off pulling image \"{image}\": ErrImagePull: {m}")
        );
        assert_eq!(
            jsonpath(c, &["get", "pod", "unreachable"], "{.status.phase}"),
            "Pending"
        );
        c.ok(&["delete", "pod", "unreachable", "--timeout=60s"]);

        // RuntimeClasses: a missing one, and `crun` (runs, or shows the runtime's refusal).
        let with_class = |name: &str, class: &str| {
            pod_manifest(name, BUSYBOX_IMAGE, "sleep 3600", "Always").replacen(
                "spec:\n",
                &format!("spec:\n  runtimeClassName: {class}\n"),
                1,
            )
        };
        // (A missing one is refused at create by RuntimeClass admission.)
        let err = c.fails(
            &["apply", "-f", "-"],
            Some(&with_class("noclass", "missing")),
        );
        assert!(
            err.contains(
                "pods \"noclass\" is forbidden: pod rejected: RuntimeClass \"missing\" not found"
            ),
            "{err}"
        );
        if Path::new("/usr/bin/crun").exists() || Path::new("/usr/local/bin/crun").exists() {
            c.ok_with(&common::kubectl_bin(), &["apply", "-f", "-"], Some("apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata:\n  name: crun\nhandler: crun\n"));
            c.ok_with(
                &common::kubectl_bin(),
                &["apply", "-f", "-"],
                Some(&with_class("oncrun", "crun")),
            );
            let outcome = wait_for(
                "oncrun runs or fails visibly",
                Duration::from_secs(60),
                || {
                    let out = jsonpath(c, &["get", "pod", "oncrun"], "{.status.phase}|{.status.containerStatuses[0].state.waiting.reason}|{.status.containerStatuses[0].state.waiting.message}");
                    let mut p = out.splitn(3, '|');
                    let (phase, reason, msg) = (
                        p.next()?.to_string(),
                        p.next()?.to_string(),
                        p.next()?.to_string(),
                    );
                    if phase == "Running" {
                        return Some((phase, reason, msg));
                    }
                    (!msg.is_empty()).then_some((phase, reason, msg))
                },
            );
            eprintln!("crun pod: {outcome:?}");
            if outcome.0 != "Running" {
                assert!(
                    outcome.2.contains("rpc error: code = "),
                    "the runtime's message: {outcome:?}"
                );
            }
        }
        c.ok(&["delete", "pod", "--all", "--timeout=60s"]);
    });
}

/// A minimal OCI distribution registry: `/v2/`, manifests (by any tag or by digest) and
/// blobs of one OCI image layout, Basic auth required. Records (port, method, path,
/// authorized) of every request.
struct Registry {
    blobs: PathBuf,
    manifest_digest: String,
    manifest_type: String,
    log: Mutex<Vec<(u16, String, String, bool)>>,
}

impl Registry {
    /// Extracts an OCI archive made by `rk3s image build`.
    fn from_archive(archive: &Path, dir: &Path) -> Registry {
        std::fs::create_dir_all(dir).expect("dir");
        let st = std::process::Command::new("tar")
            .arg("-xf")
            .arg(archive)
            .arg("-C")
            .arg(dir)
            .status()
            .expect("tar");
        assert!(st.success());
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("index.json"))
                .expect("json");
        let m = &index["manifests"][0];
        Registry {
            blobs: dir.join("blobs/sha256"),
            manifest_digest: m["digest"].as_str().expect("digest").to_string(),
            manifest_type: m["mediaType"].as_str().expect("mediaType").to_string(),
            log: Mutex::new(Vec::new()),
        }
    }

    fn serve(self: &Arc<Self>) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let me = self.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let me = me.clone();
                std::thread::spawn(move || me.handle(s, port));
            }
        });
        port
    }

    fn handle(&self, mut s: TcpStream, port: u16) {
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let Ok(clone) = s.try_clone() else { return };
        let mut r = BufReader::new(clone);
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let mut authorized = false;
        let mut content_length = 0usize;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                break;
            }
            let Some((k, v)) = h.split_once(':') else {
                continue;
            };
            let v = v.trim();
            if k.eq_ignore_ascii_case("authorization") {
                use base64::Engine as _;
                let want =
                    base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
                authorized = v == format!("Basic {want}");
            } else if k.eq_ignore_ascii_case("content-length") {
                content_length = v.parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; content_length];
        let _ = r.read_exact(&mut body);
        self.log
            .lock()
            .expect("log")
            .push((port, method.clone(), path.clone(), authorized));
        let (status, ctype, payload, extra): (&str, String, Vec<u8>, String) = if !authorized {
            (
                "401 Unauthorized",
                "application/json".into(),
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#
                    .to_vec(),
                "WWW-Authenticate: Basic realm=\"rk3s-test\"\r\n".into(),
            )
        } else if path == "/v2/" || path == "/v2" {
            (
                "200 OK",
                "application/json".into(),
                b"{}".to_vec(),
                String::new(),
            )
        } else if let Some((_, reference)) = path
            .strip_prefix("/v2/")
            .and_then(|p| p.rsplit_once("/manifests/"))
        {
            if reference.starts_with("sha256:") && reference != self.manifest_digest {
                (
                    "404 Not Found",
                    "application/json".into(),
                    br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#
                        .to_vec(),
                    String::new(),
                )
            } else {
                let hex = self.manifest_digest.trim_start_matches("sha256:");
                let data = std::fs::read(self.blobs.join(hex)).unwrap_or_default();
                (
                    "200 OK",
                    self.manifest_type.clone(),
                    data,
                    format!("Docker-Content-Digest: {}\r\n", self.manifest_digest),
                )
            }
        } else if let Some((_, digest)) = path
            .strip_prefix("/v2/")
            .and_then(|p| p.rsplit_once("/blobs/"))
        {
            match std::fs::read(self.blobs.join(digest.trim_start_matches("sha256:"))) {
                Ok(data) => (
                    "200 OK",
                    "application/octet-stream".into(),
                    data,
                    format!("Docker-Content-Digest: {digest}\r\n"),
                ),
                Err(_) => (
                    "404 Not Found",
                    "application/json".into(),
                    br#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}"#.to_vec(),
                    String::new(),
                ),
            }
        } else {
            (
                "404 Not Found",
                "application/json".into(),
                br#"{"errors":[{"code":"NAME_UNKNOWN","message":"not found"}]}"#.to_vec(),
                String::new(),
            )
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nDocker-Distribution-API-Version: registry/2.0\r\n{extra}Connection: close\r\n\r\n",
            payload.len()
        );
        let _ = s.write_all(head.as_bytes());
        if method != "HEAD" {
            let _ = s.write_all(&payload);
        }
        let _ = s.flush();
    }

    /// Authorized manifest requests that reached `port`.
    fn authorized_manifest_hits(&self, port: u16) -> usize {
        self.log
            .lock()
            .expect("log")
            .iter()
            .filter(|(p, _, path, ok)| *p == port && *ok && path.contains("/manifests/"))
            .count()
    }
}

#[test]
fn node_registry_mirror_auth_and_pull_secrets() {
    let work = tempfile::tempdir().expect("tempdir");
    if missing_prereqs().is_some() {
        // run_node_test prints the reason and skips.
        run_node_test("node_registry_mirror_auth_and_pull_secrets", &[], |_| {});
        return;
    }
    let archive = work.path().join("busybox.tar");
    build_busybox_image(&archive, work.path());
    let registry = Arc::new(Registry::from_archive(
        &archive,
        &work.path().join("layout"),
    ));
    // Three endpoints of the same registry: right password in registries.yaml, wrong
    // password, none (credentials come from an imagePullSecret).
    let (good, bad, anon) = (registry.serve(), registry.serve(), registry.serve());
    let (good_host, bad_host, anon_host) = (
        format!("127.0.0.1:{}", closed_port()),
        format!("127.0.0.1:{}", closed_port()),
        format!("127.0.0.1:{}", closed_port()),
    );
    let yaml = format!(
        r#"mirrors:
  "{good_host}":
    endpoint: ["http://127.0.0.1:{good}"]
  "{bad_host}":
    endpoint: ["http://127.0.0.1:{bad}"]
  "{anon_host}":
    endpoint: ["http://127.0.0.1:{anon}"]
configs:
  "127.0.0.1:{good}":
    auth: {{username: {USER}, password: {PASSWORD}}}
  "127.0.0.1:{bad}":
    auth: {{username: {USER}, password: wrong}}
"#
    );
    let reg_file = work.path().join("registries.yaml");
    std::fs::write(&reg_file, yaml).expect("registries.yaml");
    let flag = format!("--private-registry={}", reg_file.display());
    let reg = registry.clone();
    run_node_test(
        "node_registry_mirror_auth_and_pull_secrets",
        &[&flag],
        move |c| {
            // The rendered containerd config: hosts dir and the endpoint's credentials.
            let certs = c.data_dir().join("agent/etc/containerd/certs.d");
            let hosts = std::fs::read_to_string(certs.join(&good_host).join("hosts.toml"))
                .expect("hosts.toml");
            assert!(
                hosts.contains(&format!("[host.\"http://127.0.0.1:{good}/v2\"]")),
                "{hosts}"
            );

            // (1) Mirror + configs auth: the pod pulls (Always) and runs.
            let img_good = format!("{good_host}/rk3s/busybox:reg");
            c.ok_with(
                &common::kubectl_bin(),
                &["apply", "-f", "-"],
                Some(&pull_pod("mirrored", &img_good, None)),
            );
            wait_for("mirrored Running", Duration::from_secs(90), || {
                (jsonpath(c, &["get", "pod", "mirrored"], "{.status.phase}") == "Running")
                    .then_some(())
            });
            assert!(
                reg.authorized_manifest_hits(good) > 0,
                "the pull went through the mirror with credentials"
            );
            let image_id = jsonpath(
                c,
                &["get", "pod", "mirrored"],
                "{.status.containerStatuses[0].imageID}",
            );
            assert!(image_id.contains("sha256:"), "{image_id}");

            // (2) Wrong password: ErrImagePull, then ImagePullBackOff carrying the error.
            let img_bad = format!("{bad_host}/rk3s/busybox:reg");
            c.ok_with(
                &common::kubectl_bin(),
                &["apply", "-f", "-"],
                Some(&pull_pod("wrongpw", &img_bad, None)),
            );
            let m = wait_waiting(c, "wrongpw", "ErrImagePull", Duration::from_secs(60));
            assert!(m.starts_with("rpc error: code = "), "{m}");
            assert!(
                m.contains(&format!("failed to pull and unpack image \"{img_bad}\"")),
                "{m}"
            );
            let b = wait_waiting(c, "wrongpw", "ImagePullBackOff", Duration::from_secs(30));
            assert!(
                b.starts_with(&format!(
                    "Back-off pulling image \"{img_bad}\": ErrImagePull: rpc error:"
                )),
                "{b}"
            );
            assert_eq!(reg.authorized_manifest_hits(bad), 0);

            // (3) No configs auth for the endpoint: an imagePullSecret for the image's
            // registry gives the credentials.
            let img_anon = format!("{anon_host}/rk3s/busybox:reg");
            c.ok_with(
                &common::kubectl_bin(),
                &["apply", "-f", "-"],
                Some(&pull_pod("nosecret", &img_anon, None)),
            );
            wait_waiting(c, "nosecret", "ErrImagePull", Duration::from_secs(60));
            c.ok(&[
                "create",
                "secret",
                "docker-registry",
                "regcred",
                &format!("--docker-server={anon_host}"),
                &format!("--docker-username={USER}"),
                &format!("--docker-password={PASSWORD}"),
            ]);
            c.ok_with(
                &common::kubectl_bin(),
                &["apply", "-f", "-"],
                Some(&pull_pod("withsecret", &img_anon, Some("regcred"))),
            );
            wait_for("withsecret Running", Duration::from_secs(90), || {
                (jsonpath(c, &["get", "pod", "withsecret"], "{.status.phase}") == "Running")
                    .then_some(())
            });
            assert!(
                reg.authorized_manifest_hits(anon) > 0,
                "the secret's credentials reached the mirror"
            );
            c.ok(&[
                "delete",
                "pod",
                "mirrored",
                "wrongpw",
                "nosecret",
                "withsecret",
                "--timeout=60s",
            ]);
        },
    );
}
