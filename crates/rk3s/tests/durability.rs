//! `kill -9` during concurrent creates loses no acknowledged write.

mod common;

use std::sync::{Arc, Mutex};

use common::http::{Conn, Creds};
use common::Cluster;
use serde_json::Value;

#[test]
fn kill9_during_concurrent_creates_loses_no_acknowledged_write() {
    let mut c = Cluster::start();
    let creds = Creds::from_kubeconfig(&c.kubeconfig, c.port);
    let acked: Arc<Mutex<Vec<(String, i64)>>> = Arc::new(Mutex::new(Vec::new()));
    let clients = 8;
    let per = 250;
    let mut threads = Vec::new();
    for t in 0..clients {
        let creds = creds.clone();
        let acked = acked.clone();
        threads.push(std::thread::spawn(move || {
            let Ok(mut conn) = Conn::connect(&creds) else { return };
            for i in 0..per {
                let name = format!("cm-{t}-{i}");
                let body = format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}"}},"data":{{"i":"{i}"}}}}"#);
                match conn.request("POST", "/api/v1/namespaces/default/configmaps", Some(body.as_bytes())) {
                    Ok((201, b)) => {
                        let v: Value = serde_json::from_slice(&b).expect("json");
                        let rv: i64 = v["metadata"]["resourceVersion"].as_str().and_then(|s| s.parse().ok()).expect("rv");
                        acked.lock().expect("lock").push((name, rv));
                    }
                    Ok((code, b)) => panic!("unexpected {code}: {}", String::from_utf8_lossy(&b)),
                    Err(_) => return, // the server was killed
                }
            }
        }));
    }
    // Kill the server once a good part of the creates were acknowledged.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while acked.lock().expect("lock").len() < 600 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    c.kill9();
    for t in threads {
        let _ = t.join();
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() >= 600,
        "only {} creates acknowledged",
        acked.len()
    );
    assert!(
        acked.len() < clients * per,
        "the kill came too late to test anything"
    );

    c.restart_after_kill(&[]);
    let mut conn = Conn::connect(&Creds::from_kubeconfig(&c.kubeconfig, c.port)).expect("connect");
    let (code, body) = conn
        .request("GET", "/api/v1/namespaces/default/configmaps", None)
        .expect("list");
    assert_eq!(code, 200);
    let list: Value = serde_json::from_slice(&body).expect("json");
    let stored: std::collections::HashMap<String, i64> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|o| {
            (
                o["metadata"]["name"].as_str().unwrap_or("").to_string(),
                o["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
            )
        })
        .collect();
    for (name, rv) in &acked {
        assert_eq!(
            stored.get(name),
            Some(rv),
            "acknowledged create {name} (rv {rv}) lost or changed"
        );
    }
    // Revisions are unique and strictly increase with later writes.
    let mut revs: Vec<i64> = acked.iter().map(|a| a.1).collect();
    revs.sort();
    revs.dedup();
    assert_eq!(revs.len(), acked.len(), "duplicate resourceVersions");
    let (code, body) = conn
        .request(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            Some(br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"after-restart"}}"#),
        )
        .expect("create after restart");
    assert_eq!(code, 201);
    let v: Value = serde_json::from_slice(&body).expect("json");
    let rv: i64 = v["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("rv");
    let max_stored = stored.values().copied().max().unwrap_or(0);
    assert!(
        rv > max_stored,
        "revision {rv} after restart is not above {max_stored}"
    );
}
