//! The kubelet API over HTTPS against a real containerd: containerLogs, /healthz,
//! /stats/summary, /metrics/resource, authentication and authorization.
//! Skipped unless root with containerd, ctr, runc and a static busybox installed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use http_body_util::BodyExt;
use rk3s_kubelet::containerd::{log_tail, unmount_under, Containerd, ContainerdConfig};
use rk3s_kubelet::cri::types::*;
use rk3s_kubelet::cri::CriClient;
use rk3s_kubelet::server::{serve_listener, KubeletServerOptions};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for bin in ["containerd", "ctr", "runc"] {
        if !on_path(bin) {
            return Some(format!("{bin} not installed"));
        }
    }
    rk3s_kubelet::image::find_static_busybox()
        .err()
        .map(|e| e.to_string())
}

fn processes_mentioning(needle: &str) -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| {
            String::from_utf8_lossy(
                &std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default(),
            )
            .contains(needle)
        })
        .collect()
}

struct Client {
    tls: tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
}

impl Client {
    fn new(ca: &str, cert_key: Option<(&str, &str)>, addr: std::net::SocketAddr) -> Client {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca.as_bytes()).flatten() {
            assert!(roots.add(c).is_ok());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let b = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions();
        let Ok(b) = b else { panic!("tls versions") };
        let b = b.with_root_certificates(roots);
        let cfg = match cert_key {
            Some((c, k)) => {
                let certs: Vec<CertificateDer<'static>> =
                    CertificateDer::pem_slice_iter(c.as_bytes())
                        .flatten()
                        .collect();
                let Ok(key) = PrivateKeyDer::from_pem_slice(k.as_bytes()) else {
                    panic!("key")
                };
                match b.with_client_auth_cert(certs, key) {
                    Ok(c) => c,
                    Err(e) => panic!("client cert: {e}"),
                }
            }
            None => b.with_no_client_auth(),
        };
        Client {
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
            addr,
        }
    }

    /// GET: status and a receiver of body chunks.
    async fn get_stream(&self, path: &str) -> (u16, hyper::body::Incoming) {
        let tcp = tokio::net::TcpStream::connect(self.addr).await;
        let Ok(tcp) = tcp else { panic!("connect") };
        let Ok(name) = ServerName::try_from("127.0.0.1") else {
            panic!("name")
        };
        let tls = self.tls.connect(name, tcp).await;
        let Ok(tls) = tls else { panic!("tls: {tls:?}") };
        let hs = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await;
        let Ok((mut send, conn)) = hs else {
            panic!("handshake")
        };
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header("host", "127.0.0.1")
            .body(http_body_util::Empty::<bytes::Bytes>::new());
        let Ok(req) = req else { panic!("request") };
        let resp = send.send_request(req).await;
        let Ok(resp) = resp else {
            panic!("send: {resp:?}")
        };
        (resp.status().as_u16(), resp.into_body())
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let (code, body) = self.get_stream(path).await;
        let b = tokio::time::timeout(Duration::from_secs(20), body.collect()).await;
        let Ok(Ok(b)) = b else {
            panic!("body of {path}")
        };
        (code, String::from_utf8_lossy(&b.to_bytes()).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_api_on_real_containerd() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP kubelet_api_on_real_containerd: {why}");
        return;
    }
    let Ok(tmp) = tempfile::Builder::new().prefix("rk3s-kapi").tempdir() else {
        panic!("tempdir")
    };
    let data = tmp.path().join("data");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let state = PathBuf::from(format!("/run/rk3s-kapi-{}-{nanos}", std::process::id()));
    let config = ContainerdConfig::new(&data).with_state_dir(&state);
    let socket = config.socket.clone();
    let shim_dir_existed = Path::new("/run/containerd").exists();
    let started = Containerd::start(config.clone()).await;
    let Ok(ctd) = started else {
        panic!("containerd: {started:?}")
    };
    let cri = match CriClient::connect(&socket).await {
        Ok(c) => c,
        Err(e) => panic!("connect: {e}"),
    };
    let result = std::panic::AssertUnwindSafe(body(&cri, tmp.path(), &data, &socket))
        .catch_unwind()
        .await;
    if result.is_err() {
        eprintln!(
            "containerd log (tail):\n{}",
            log_tail(&config.log_path(), 15)
        );
    }
    if let Ok(list) = cri.list_pod_sandboxes(None).await {
        for sb in list {
            let _ = cri.stop_pod_sandbox(&sb.id).await;
            let _ = cri.remove_pod_sandbox(&sb.id).await;
        }
    }
    drop(cri);
    ctd.stop().await;
    unmount_under(&data);
    unmount_under(&state);
    for pid in processes_mentioning(&socket.to_string_lossy()) {
        // SAFETY: kill(2); no memory is touched.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let _ = std::fs::remove_dir_all(&state);
    if !shim_dir_existed {
        let _ = std::fs::remove_dir("/run/containerd/s");
        let _ = std::fs::remove_dir("/run/containerd");
    }
    let leftover = processes_mentioning(&socket.to_string_lossy());
    drop(tmp);
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
    assert!(leftover.is_empty(), "processes left behind: {leftover:?}");
    assert!(!state.exists());
}

async fn body(cri: &CriClient, tmp: &Path, data: &Path, socket: &Path) {
    use rk3s_kubelet::image::{build_oci_archive, ensure_pause_image, import_dir, ImageConfig};
    // Images.
    assert_eq!(
        ensure_pause_image(cri, &data.join("agent/cache"))
            .await
            .ok(),
        Some(true)
    );
    let images = data.join("agent/images");
    assert!(std::fs::create_dir_all(&images).is_ok());
    let rootfs = tmp.join("rootfs");
    let Ok(bb) = rk3s_kubelet::image::find_static_busybox() else {
        panic!("busybox")
    };
    assert!(std::fs::create_dir_all(rootfs.join("bin")).is_ok());
    assert!(std::fs::copy(&bb, rootfs.join("bin/busybox")).is_ok());
    for applet in ["sh", "echo", "sleep"] {
        assert!(std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).is_ok());
    }
    let opts = ImageConfig {
        cmd: vec!["sh".into()],
        ..Default::default()
    };
    assert!(build_oci_archive(&rootfs, &opts, "busybox:1.36", &images.join("busybox.tar")).is_ok());
    assert!(import_dir(&images, socket)
        .await
        .iter()
        .all(|o| o.result.is_ok()));

    // A host-network pod with a container that prints three lines and a ticker.
    let logs = tmp.join("logs/default_talk_uid-9");
    assert!(std::fs::create_dir_all(&logs).is_ok());
    let labels = |c: Option<&str>| {
        let mut m = std::collections::HashMap::from([
            (
                "io.kubernetes.pod.namespace".to_string(),
                "default".to_string(),
            ),
            ("io.kubernetes.pod.name".to_string(), "talk".to_string()),
            ("io.kubernetes.pod.uid".to_string(), "uid-9".to_string()),
        ]);
        if let Some(c) = c {
            m.insert("io.kubernetes.container.name".into(), c.into());
        }
        m
    };
    let sandbox = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "talk".into(),
            uid: "uid-9".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: logs.to_string_lossy().into_owned(),
        labels: labels(None),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let sb = cri.run_pod_sandbox(sandbox.clone(), "").await;
    let Ok(sb) = sb else {
        panic!("sandbox: {sb:?}")
    };
    let container = |name: &str, script: &str| ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: "docker.io/library/busybox:1.36".into(),
            ..Default::default()
        }),
        command: vec!["sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}/0.log"),
        labels: labels(Some(name)),
        ..Default::default()
    };
    let mut ids = Vec::new();
    for (name, script) in [
        (
            "talker",
            "echo one; echo two; sleep 0.3; echo three >&2; exec sleep 3600",
        ),
        ("ticker", "while true; do echo tick; sleep 0.2; done"),
    ] {
        let c = cri
            .create_container(&sb, container(name, script), sandbox.clone())
            .await;
        let Ok(c) = c else { panic!("create: {c:?}") };
        assert!(cri.start_container(&c).await.is_ok());
        ids.push(c);
    }
    // Wait for the three lines.
    let talker_log = logs.join("talker/0.log");
    for _ in 0..100 {
        if std::fs::read_to_string(&talker_log)
            .unwrap_or_default()
            .lines()
            .count()
            >= 3
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // PKI and the server.
    let pki = rk3s_pki::ensure_server_pki(&rk3s_pki::PkiOptions::new(tmp.join("server")));
    let Ok(pki) = pki else { panic!("pki: {pki:?}") };
    let (ca, ca_key) = (pki.ca_cert_pem.clone(), pki.ca_key_pem.clone());
    let Ok((cert, key)) =
        rk3s_pki::issue_serving_cert(&ca, &ca_key, "node1", &["127.0.0.1".to_string()], 1)
    else {
        panic!("serving")
    };
    let Ok((acert, akey)) =
        rk3s_pki::issue_client_cert(&ca, &ca_key, "kube-apiserver-kubelet-client", &[], 1)
    else {
        panic!("client")
    };
    let Ok((ncert, nkey)) =
        rk3s_pki::issue_client_cert(&ca, &ca_key, "system:node:other", &["system:nodes"], 1)
    else {
        panic!("client")
    };
    let Ok(listener) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
        panic!("bind")
    };
    let Ok(addr) = listener.local_addr() else {
        panic!("addr")
    };
    let opts = KubeletServerOptions {
        listen: addr,
        node_name: "node1".into(),
        serving: std::sync::Arc::new(rk3s_pki::LiveCert::from_pem(&cert, &key).expect("serving")),
        client_ca_pem: ca.clone(),
        cri: cri.clone(),
        authorizer: None,
        pods: None,
    };
    let server = tokio::spawn(serve_listener(listener, opts));
    let api = Client::new(&ca, Some((&acert, &akey)), addr);

    assert_eq!(api.get("/healthz").await, (200, "ok".to_string()));
    assert_eq!(Client::new(&ca, None, addr).get("/healthz").await.0, 401);
    let (code, msg) = Client::new(&ca, Some((&ncert, &nkey)), addr)
        .get("/pods")
        .await;
    assert_eq!((code, msg.as_str()), (403, "Forbidden (user=system:node:other, verb=get, resource=nodes, subresource(s)=[pods proxy])\n"));

    // Logs.
    assert_eq!(
        api.get("/containerLogs/default/talk/talker").await,
        (200, "one\ntwo\nthree\n".to_string())
    );
    assert_eq!(
        api.get("/containerLogs/default/talk/talker?tailLines=2")
            .await,
        (200, "two\nthree\n".to_string())
    );
    assert_eq!(
        api.get("/containerLogs/default/talk/talker?limitBytes=6")
            .await,
        (200, "one\ntw".to_string())
    );
    let (code, ts) = api
        .get("/containerLogs/default/talk/talker?tailLines=1&timestamps=true")
        .await;
    assert_eq!(code, 200);
    let (t, rest) = ts.split_once(' ').unwrap_or_default();
    assert!(t.parse::<jiff::Timestamp>().is_ok(), "{ts:?}");
    assert_eq!(rest, "three\n");
    let (code, msg) = api
        .get("/containerLogs/default/talk/talker?previous=true")
        .await;
    assert_eq!(
        (code, msg.as_str()),
        (
            400,
            "previous terminated container \"talker\" in pod \"talk\" not found"
        )
    );
    assert_eq!(api.get("/containerLogs/default/nope/talker").await.0, 404);
    assert_eq!(
        api.get("/containerLogs/default/talk/talker?tailLines=-1")
            .await
            .0,
        400
    );

    // Follow: ticks arrive, and the stream ends when the container stops.
    let (code, mut stream) = api
        .get_stream("/containerLogs/default/talk/ticker?follow=true&tailLines=1")
        .await;
    assert_eq!(code, 200);
    let mut got = String::new();
    while got.matches("tick\n").count() < 3 {
        match tokio::time::timeout(Duration::from_secs(5), stream.frame()).await {
            Ok(Some(Ok(f))) => got.push_str(&String::from_utf8_lossy(
                f.data_ref().map(|b| b.as_ref()).unwrap_or(b""),
            )),
            other => panic!("follow stalled: {other:?} after {got:?}"),
        }
    }
    assert!(cri.stop_container(&ids[1], 1).await.is_ok());
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = stream.frame().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "follow did not end after the container stopped"
    );

    // Stats.
    let (code, summary) = api.get("/stats/summary").await;
    assert_eq!(code, 200, "{summary}");
    let Ok(summary) = serde_json::from_str::<serde_json::Value>(&summary) else {
        panic!("summary json: {summary}")
    };
    assert_eq!(summary["node"]["nodeName"], "node1");
    assert!(
        summary["node"]["memory"]["workingSetBytes"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{summary}"
    );
    assert!(
        summary["node"]["cpu"]["usageCoreNanoSeconds"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{summary}"
    );
    let pods = summary["pods"].as_array().cloned().unwrap_or_default();
    let Some(pod) = pods.iter().find(|p| p["podRef"]["name"] == "talk") else {
        panic!("pod in {summary}")
    };
    assert_eq!(pod["podRef"]["namespace"], "default");
    assert_eq!(pod["podRef"]["uid"], "uid-9");
    let cs = pod["containers"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        cs.iter()
            .map(|c| c["name"].as_str().unwrap_or(""))
            .collect::<Vec<_>>(),
        ["talker"],
        "only running containers"
    );
    assert!(
        cs[0]["memory"]["workingSetBytes"].as_u64().unwrap_or(0) > 0,
        "{summary}"
    );
    assert!(
        cs[0]["memory"]["usageBytes"].as_u64().unwrap_or(0) > 0,
        "{summary}"
    );
    assert!(
        cs[0]["cpu"]["usageCoreNanoSeconds"].as_u64().is_some(),
        "{summary}"
    );
    assert!(
        pod["memory"]["workingSetBytes"].as_u64().unwrap_or(0)
            >= cs[0]["memory"]["workingSetBytes"].as_u64().unwrap_or(0)
    );
    // A second scrape has an instantaneous CPU rate.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, again) = api.get("/stats/summary").await;
    let again: serde_json::Value = serde_json::from_str(&again).unwrap_or_default();
    assert!(again["node"]["cpu"]["usageNanoCores"].is_u64(), "{again}");

    let (code, metrics) = api.get("/metrics/resource").await;
    assert_eq!(code, 200);
    assert!(metrics.contains("container_memory_working_set_bytes{container=\"talker\",namespace=\"default\",pod=\"talk\"} "), "{metrics}");
    assert!(
        metrics.contains("\nnode_cpu_usage_seconds_total "),
        "{metrics}"
    );
    assert!(metrics.contains("resource_scrape_error 0"), "{metrics}");

    let (code, pods) = api.get("/pods").await;
    assert_eq!(code, 200);
    assert!(pods.contains("\"name\":\"talk\""), "{pods}");
    server.abort();
}
