//! kubeconfig files with embedded credentials, in the layout k3s writes.

use std::path::Path;

use base64::Engine;
use serde::Serialize;

use crate::fsutil::{ensure_dir, write_atomic};
use crate::PkiError;

#[derive(Serialize)]
struct Kubeconfig<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'a str,
    clusters: Vec<NamedCluster<'a>>,
    contexts: Vec<NamedContext<'a>>,
    #[serde(rename = "current-context")]
    current_context: &'a str,
    kind: &'a str,
    preferences: Preferences,
    users: Vec<NamedUser<'a>>,
}

#[derive(Serialize)]
struct NamedCluster<'a> {
    cluster: Cluster,
    name: &'a str,
}

#[derive(Serialize)]
struct Cluster {
    #[serde(rename = "certificate-authority-data")]
    certificate_authority_data: String,
    server: String,
}

#[derive(Serialize)]
struct NamedContext<'a> {
    context: Context<'a>,
    name: &'a str,
}

#[derive(Serialize)]
struct Context<'a> {
    cluster: &'a str,
    user: &'a str,
}

#[derive(Serialize)]
struct Preferences {}

#[derive(Serialize)]
struct NamedUser<'a> {
    name: &'a str,
    user: User,
}

#[derive(Serialize)]
struct User {
    #[serde(rename = "client-certificate-data")]
    client_certificate_data: String,
    #[serde(rename = "client-key-data")]
    client_key_data: String,
}

/// Renders a kubeconfig (YAML) with one cluster, one user and one context, all named
/// `context_name` (k3s uses `default`), whose CA and client credentials are embedded as
/// base64 PEM (`certificate-authority-data`, `client-certificate-data`, `client-key-data`).
pub fn kubeconfig_yaml(
    server_url: &str,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    context_name: &str,
) -> Result<String, PkiError> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let config = Kubeconfig {
        api_version: "v1",
        clusters: vec![NamedCluster {
            cluster: Cluster {
                certificate_authority_data: b64(ca_pem),
                server: server_url.to_string(),
            },
            name: context_name,
        }],
        contexts: vec![NamedContext {
            context: Context {
                cluster: context_name,
                user: context_name,
            },
            name: context_name,
        }],
        current_context: context_name,
        kind: "Config",
        preferences: Preferences {},
        users: vec![NamedUser {
            name: context_name,
            user: User {
                client_certificate_data: b64(cert_pem),
                client_key_data: b64(key_pem),
            },
        }],
    };
    Ok(serde_yaml::to_string(&config)?)
}

/// Writes [`kubeconfig_yaml`] to `path` atomically with file mode `mode` (e.g. 0o600, or
/// 0o644 for `--write-kubeconfig-mode 644`), creating missing parent directories (0755, so
/// a world-readable kubeconfig stays reachable).
pub fn write_kubeconfig(
    path: &Path,
    mode: u32,
    server_url: &str,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    context_name: &str,
) -> Result<(), PkiError> {
    let yaml = kubeconfig_yaml(server_url, ca_pem, cert_pem, key_pem, context_name)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        ensure_dir(parent, 0o755)?;
    }
    write_atomic(path, yaml.as_bytes(), mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn decode(v: &serde_yaml::Value) -> String {
        let s = v.as_str().unwrap();
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(s).unwrap()).unwrap()
    }

    #[test]
    fn writes_k3s_layout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/rk3s/rk3s.yaml");
        write_kubeconfig(
            &path,
            0o600,
            "https://127.0.0.1:6443",
            "CA-PEM",
            "CERT-PEM",
            "KEY-PEM",
            "default",
        )
        .unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["kind"], "Config");
        assert_eq!(v["current-context"], "default");
        assert!(v["preferences"].as_mapping().unwrap().is_empty());
        let cluster = &v["clusters"][0];
        assert_eq!(cluster["name"], "default");
        assert_eq!(cluster["cluster"]["server"], "https://127.0.0.1:6443");
        assert_eq!(
            decode(&cluster["cluster"]["certificate-authority-data"]),
            "CA-PEM"
        );
        let ctx = &v["contexts"][0];
        assert_eq!(ctx["name"], "default");
        assert_eq!(ctx["context"]["cluster"], "default");
        assert_eq!(ctx["context"]["user"], "default");
        let user = &v["users"][0];
        assert_eq!(user["name"], "default");
        assert_eq!(decode(&user["user"]["client-certificate-data"]), "CERT-PEM");
        assert_eq!(decode(&user["user"]["client-key-data"]), "KEY-PEM");

        // rewrite with another mode
        write_kubeconfig(
            &path,
            0o644,
            "https://10.0.0.1:6443",
            "a",
            "b",
            "c",
            "default",
        )
        .unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("https://10.0.0.1:6443"));
    }
}
