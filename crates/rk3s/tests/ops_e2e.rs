//! Operational features end to end: secrets encryption at rest, the audit log, /metrics.

mod common;

use std::time::{Duration, Instant};

use common::Cluster;
use serde_json::Value;

fn raw_db_contains(c: &Cluster, needle: &str) -> bool {
    let dir = c.data_dir().join("server/db");
    std::fs::read_dir(&dir)
        .expect("db dir")
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path()).ok())
        .any(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
}

#[test]
fn secrets_encryption_can_be_turned_off() {
    let c = Cluster::start_with(&["--secrets-encryption=false"]);
    c.ok(&[
        "create",
        "secret",
        "generic",
        "s",
        "--from-literal=p=plain-by-choice-5e6f",
    ]);
    use base64::Engine;
    let stored = base64::engine::general_purpose::STANDARD.encode("plain-by-choice-5e6f");
    assert!(
        raw_db_contains(&c, &stored),
        "stored as the API holds it (base64 in JSON)"
    );
}

#[test]
fn secrets_are_encrypted_at_rest_and_requests_are_audited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit.log");
    let audit_flag = format!("--audit-log-path={}", audit.display());
    // Encryption at rest is on without any flag.
    let c = Cluster::start_with(&[&audit_flag]);
    let secret_value = "plaintext-must-not-be-on-disk-9f8e7d";
    c.ok(&[
        "create",
        "secret",
        "generic",
        "s",
        &format!("--from-literal=p={secret_value}"),
    ]);
    c.ok(&[
        "create",
        "configmap",
        "visible",
        "--from-literal=c=configmap-value-on-disk-4c3b2a",
    ]);
    let got = c.ok(&["get", "secret", "s", "-o", "jsonpath={.data.p}"]);
    use base64::Engine;
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(got.trim())
            .expect("base64"),
        secret_value.as_bytes()
    );
    assert!(
        !raw_db_contains(&c, secret_value)
            && !raw_db_contains(
                &c,
                &base64::engine::general_purpose::STANDARD.encode(secret_value)
            ),
        "secret value found in the datastore files"
    );
    assert!(
        raw_db_contains(&c, "configmap-value-on-disk-4c3b2a"),
        "the check cannot see plaintext at all"
    );

    let status = std::process::Command::new(env!("CARGO_BIN_EXE_rk3s"))
        .args(["secrets-encrypt", "status", "--data-dir"])
        .arg(c.data_dir())
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(text.contains("Encryption Status: Enabled"), "{text}");
    assert!(text.contains("Secrets not encrypted: 0"), "{text}");

    // The audit log has the create, as an audit.k8s.io/v1 Event.
    let deadline = Instant::now() + Duration::from_secs(10);
    let event = loop {
        let log = std::fs::read_to_string(&audit).unwrap_or_default();
        let found = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|e| {
                e["verb"] == "create"
                    && e["objectRef"]["resource"] == "secrets"
                    && e["user"]["username"] == "system:admin"
            });
        if let Some(e) = found {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "no audit event for the create:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(25));
    };
    assert_eq!(event["kind"], "Event");
    assert_eq!(event["apiVersion"], "audit.k8s.io/v1");
    assert_eq!(event["level"], "Metadata");
    assert_eq!(event["user"]["username"], "system:admin");
    assert_eq!(event["responseStatus"]["code"], 201);
    assert!(
        event.get("requestObject").is_none(),
        "Metadata level has no request body"
    );

    let metrics = c.ok(&["get", "--raw", "/metrics"]);
    assert!(
        metrics.contains("apiserver_request_total{code=\"201\",group=\"\",resource=\"secrets\""),
        "{metrics}"
    );
}
