//! Two API servers on one SQLite datastore (what an HA control plane shares) creating
//! Services at once never hand out the same cluster IP or node port; a third server
//! started later (a restart) keeps every allocation, and a deleted Service's values are
//! free again on every server.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use rk3s_apiserver::{ApiServer, Config, UserInfo};
use serde_json::{json, Value};

fn config(dir: &std::path::Path, store: Arc<dyn rk3s_store::Store>) -> Config {
    let pki =
        rk3s_pki::ensure_server_pki(&rk3s_pki::PkiOptions::new(dir.join("server"))).expect("pki");
    Config {
        listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        advertise_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
        advertise_port: 6443,
        serving_cert_pem: pki.serving_cert_pem,
        serving_key_pem: pki.serving_key_pem,
        client_ca_pem: pki.ca_cert_pem,
        store,
        service_cidr: "10.43.0.0/24".into(),
        node_port_range: (30000, 30199),
        service_account_key_pem: pki.sa_key_pem,
        service_account_pub_pem: pki.sa_pub_pem,
        service_account_issuer: "https://kubernetes.default.svc.cluster.local".into(),
        token_auth_file: None,
        audit: None,
        kubelet_client: None,
        front_proxy: None,
    }
}

async fn call(api: &ApiServer, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(())
        .expect("request");
    let (parts, ()) = req.into_parts();
    let body = body
        .map(|b| Bytes::from(serde_json::to_vec(&b).expect("json")))
        .unwrap_or_default();
    let admin = UserInfo::new("system:admin", &["system:masters", "system:authenticated"]);
    let resp = api.handle(parts, body, Some(admin)).await;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn service(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name},
        "spec": {"type": "NodePort", "selector": {"app": name},
                 "ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443}]},
    })
}

fn allocated(svc: &Value) -> (String, Vec<u64>) {
    let ip = svc["spec"]["clusterIP"]
        .as_str()
        .expect("clusterIP")
        .to_string();
    let ports = svc["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| p["nodePort"].as_u64().expect("nodePort"))
        .collect();
    (ip, ports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_api_servers_on_one_sqlite_file_never_collide() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn rk3s_store::Store> = Arc::new(
        rk3s_store::sqlite::SqliteStore::open(&dir.path().join("state.db")).expect("store"),
    );
    let cfg = config(dir.path(), store);
    // Two servers: their own watch caches, allocators and cursors; only the store shared.
    let a = ApiServer::new(&cfg).await.expect("server a");
    let b = ApiServer::new(&cfg).await.expect("server b");
    let path = "/api/v1/namespaces/default/services";
    let mut tasks = Vec::new();
    for i in 0..60 {
        let api = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            call(&api, "POST", path, Some(service(&format!("s{i}")))).await
        }));
    }
    let (mut ips, mut ports) = (HashSet::new(), HashSet::new());
    ips.insert("10.43.0.1".to_string());
    for t in tasks {
        let (status, svc) = t.await.expect("task");
        assert_eq!(status, 201, "{svc}");
        let (ip, nps) = allocated(&svc);
        assert!(ips.insert(ip.clone()), "cluster IP {ip} handed out twice");
        for p in nps {
            assert!(ports.insert(p), "node port {p} handed out twice");
        }
    }
    assert_eq!(ports.len(), 120);
    // Each value is in the store: an IPAddress per cluster IP, the node-port bitmap.
    let (status, list) = call(&a, "GET", "/apis/networking.k8s.io/v1/ipaddresses", None).await;
    assert_eq!(status, 200);
    assert_eq!(list["items"].as_array().map(Vec::len), Some(61), "{list}");

    // A server started later on the same store (a restart) keeps every allocation.
    let c = ApiServer::new(&cfg).await.expect("server c");
    let (_, s0) = call(&a, "GET", &format!("{path}/s0"), None).await;
    let (ip0, ports0) = allocated(&s0);
    let mut taken = service("taken");
    taken["spec"]["clusterIP"] = json!(ip0);
    let (status, body) = call(&c, "POST", path, Some(taken)).await;
    assert_eq!(status, 422, "{body}");
    let mut taken = service("taken");
    taken["spec"]["ports"][0]["nodePort"] = json!(ports0[0]);
    let (status, body) = call(&c, "POST", path, Some(taken)).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("provided port is already allocated")),
        "{body}"
    );
    // The failed create allocated a cluster IP first: it was released.
    let (_, list) = call(&a, "GET", "/apis/networking.k8s.io/v1/ipaddresses", None).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(61), "{list}");

    // Deleted on one server, free on another.
    let (status, _) = call(&a, "DELETE", &format!("{path}/s0"), None).await;
    assert_eq!(status, 200);
    let mut again = service("again");
    again["spec"]["clusterIP"] = json!(ip0);
    again["spec"]["ports"][0]["nodePort"] = json!(ports0[0]);
    again["spec"]["ports"][1]["nodePort"] = json!(ports0[1]);
    let (status, body) = call(&c, "POST", path, Some(again)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(allocated(&body), (ip0, ports0));

    // A Service that stops being NodePort gives its node ports back.
    let (_, s1) = call(&b, "GET", &format!("{path}/s1"), None).await;
    let (_, ports1) = allocated(&s1);
    let mut cluster_ip = s1.clone();
    cluster_ip["spec"]["type"] = json!("ClusterIP");
    let spec = cluster_ip["spec"].as_object_mut().expect("spec");
    spec.remove("externalTrafficPolicy");
    for p in cluster_ip["spec"]["ports"].as_array_mut().expect("ports") {
        p.as_object_mut().expect("port").remove("nodePort");
    }
    let (status, body) = call(&b, "PUT", &format!("{path}/s1"), Some(cluster_ip)).await;
    assert_eq!(status, 200, "{body}");
    let mut reuse = service("reuse");
    reuse["spec"]["ports"][0]["nodePort"] = json!(ports1[0]);
    let (status, body) = call(&a, "POST", path, Some(reuse)).await;
    assert_eq!(status, 201, "{body}");
}
