//! The agent side: join a cluster with a token.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use bytes::Bytes;
use http::{header, Method, Request};

use crate::https::{self, ServerUrl};
use crate::{
    AgentConfig, JoinError, CONTROLLER_USER, HEADER_NODE_IP, HEADER_NODE_NAME,
    HEADER_NODE_PASSWORD, KUBE_PROXY_USER, PATH_PREFIX,
};

/// What an agent needs to join.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// The server, `https://host[:port]` (k3s's `--server`).
    pub server: String,
    /// The token: `K10<CA hash>::<user>:<secret>`, `K10<CA hash>::<bootstrap token>`, a
    /// bootstrap token or a bare secret.
    pub token: String,
    /// This node's name.
    pub node_name: String,
    /// This node's password (see [`read_or_create_node_password`]).
    pub node_password: String,
    /// Where the password lives (named in the error when the server refuses it).
    pub node_password_file: PathBuf,
    /// This node's IP addresses (SANs of its kubelet serving certificate).
    pub node_ips: Vec<IpAddr>,
}

/// A certificate issued to this agent and the key that never left it.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The certificate (PEM, leaf only).
    pub cert_pem: String,
    /// The private key (PKCS#8 PEM).
    pub key_pem: String,
}

/// Everything an agent got from the server.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The server URL that answered.
    pub server: String,
    /// The cluster CA (PEM), verified against the token's hash when it had one.
    pub ca_pem: String,
    /// The kubelet's client certificate (`system:node:<name>`, `system:nodes`).
    pub kubelet_client: IssuedCert,
    /// The kubelet's serving certificate (node name, node IPs, localhost).
    pub kubelet_serving: IssuedCert,
    /// The Service proxy's client certificate (`system:kube-proxy`).
    pub kube_proxy: IssuedCert,
    /// The node's network components' client certificate (`system:rk3s-controller`).
    pub controller: IssuedCert,
    /// The cluster's configuration for agents.
    pub config: AgentConfig,
    /// `host:port` of every API server the server knows of.
    pub apiservers: Vec<String>,
}

/// Reads the node password from `path`, or creates it (random, mode 0600) when missing.
pub fn read_or_create_node_password(path: &Path) -> Result<String, JoinError> {
    let io = |source: std::io::Error| JoinError::Io {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| io(std::io::Error::other("no randomness for the node password")))?;
    let password: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        f.write_all(password.as_bytes()).map_err(io)?;
        f.write_all(b"\n").map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    Ok(password)
}

/// The `Authorization` header for a token: a bootstrap token as bearer, anything else as
/// HTTP basic `node:<secret>` (what k3s agents send).
fn authorization(token: &rk3s_pki::ParsedToken) -> String {
    if token.bootstrap_token_id().is_some() {
        return format!("Bearer {}", token.secret);
    }
    let creds = format!("node:{}", token.secret);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(creds)
    )
}

/// Splits a bundle (leaf first) and returns the leaf certificate PEM.
fn leaf_of(bundle: &str) -> Option<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let start = bundle.find("-----BEGIN CERTIFICATE-----")?;
    let end = bundle[start..].find(END)? + start + END.len();
    Some(format!("{}\n", &bundle[start..end]))
}

/// Joins: fetches and checks the CA, then asks for the certificates, the configuration
/// and the API server list. Nothing is written to disk here.
pub async fn join(opts: &JoinOptions) -> Result<Joined, JoinError> {
    let server = ServerUrl::parse(&opts.server)?;
    let token =
        rk3s_pki::parse_token(&opts.token).map_err(|e| JoinError::InvalidToken(e.to_string()))?;

    // 1. The CA, fetched without verification, then pinned by the token's hash.
    let req = Request::get("/cacerts")
        .body(Bytes::new())
        .map_err(|e| JoinError::InvalidToken(e.to_string()))?;
    let (status, body) = https::request(&server, https::insecure_tls()?, req).await?;
    if !status.is_success() {
        return Err(JoinError::Http {
            what: format!("GET {}/cacerts", server.url),
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body).chars().take(300).collect(),
        });
    }
    let ca_pem = String::from_utf8_lossy(&body).to_string();
    match &token.ca_hash {
        Some(expected) => {
            let actual = rk3s_pki::ca_cert_hash(&ca_pem);
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(JoinError::CaHashMismatch {
                    server: server.url.clone(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        None => tracing::warn!(
            server = %server.url,
            "the token has no CA hash (not K10<hash>::...): trusting the CA the server sent \
             without verification; use the full token from the server's <data-dir>/server/token"
        ),
    }
    let tls = https::pinned_tls(&ca_pem)?;
    let auth = authorization(&token);

    let call = |method: Method, path: &str, body: Bytes, extra: Vec<(&'static str, String)>| {
        let tls = tls.clone();
        let server = server.clone();
        let auth = auth.clone();
        let path = format!("{PATH_PREFIX}{path}");
        async move {
            let mut b = Request::builder()
                .method(method.clone())
                .uri(path.as_str())
                .header(header::AUTHORIZATION, auth);
            for (k, v) in extra {
                b = b.header(k, v);
            }
            let req = b.body(body).map_err(|e| JoinError::Transport {
                what: path.clone(),
                reason: e.to_string(),
            })?;
            let (status, body) = https::request(&server, tls, req).await?;
            if status == http::StatusCode::UNAUTHORIZED {
                return Err(JoinError::Unauthorized {
                    server: server.url.clone(),
                });
            }
            if !status.is_success() {
                return Err(JoinError::Http {
                    what: format!("{method} {}{path}", server.url),
                    status: status.as_u16(),
                    body: String::from_utf8_lossy(&body)
                        .trim()
                        .chars()
                        .take(500)
                        .collect(),
                });
            }
            Ok::<_, JoinError>(body)
        }
    };

    // 2. Certificates, each for a key generated here.
    let node_headers = || {
        vec![
            (HEADER_NODE_NAME, opts.node_name.clone()),
            (HEADER_NODE_PASSWORD, opts.node_password.clone()),
        ]
    };
    let ca_ref = &ca_pem;
    let issue = |path: &'static str, cn: String, extra: Vec<(&'static str, String)>| {
        let call = &call;
        async move {
            let (key_pem, csr) = rk3s_pki::new_key_and_csr(&cn)?;
            let body = call(Method::POST, path, Bytes::from(csr), extra)
                .await
                .map_err(|e| match e {
                    JoinError::Http {
                        status: 403, body, ..
                    } => JoinError::NodePasswordRejected {
                        node: opts.node_name.clone(),
                        message: body,
                        password_file: opts.node_password_file.display().to_string(),
                    },
                    e => e,
                })?;
            let bundle = String::from_utf8_lossy(&body).to_string();
            let cert_pem = leaf_of(&bundle).ok_or_else(|| JoinError::Decode {
                what: path.to_string(),
                reason: "no certificate in the answer".into(),
            })?;
            if !rk3s_pki::verify_issued_by(&cert_pem, ca_ref)? {
                return Err(JoinError::Decode {
                    what: path.to_string(),
                    reason: "the certificate was not issued by the cluster CA".into(),
                });
            }
            Ok::<_, JoinError>(IssuedCert { cert_pem, key_pem })
        }
    };
    let kubelet_client = issue(
        "/client-kubelet.crt",
        format!("system:node:{}", opts.node_name),
        node_headers(),
    )
    .await?;
    let mut serving_headers = node_headers();
    let ips: Vec<String> = opts.node_ips.iter().map(|ip| ip.to_string()).collect();
    if !ips.is_empty() {
        serving_headers.push((HEADER_NODE_IP, ips.join(",")));
    }
    let kubelet_serving = issue(
        "/serving-kubelet.crt",
        opts.node_name.clone(),
        serving_headers,
    )
    .await?;
    let kube_proxy = issue("/client-kube-proxy.crt", KUBE_PROXY_USER.into(), vec![]).await?;
    let controller = issue(
        "/client-rk3s-controller.crt",
        CONTROLLER_USER.into(),
        vec![],
    )
    .await?;

    // 3. Configuration and the API servers.
    let body = call(Method::GET, "/config", Bytes::new(), vec![]).await?;
    let config: AgentConfig = serde_json::from_slice(&body).map_err(|e| JoinError::Decode {
        what: "/v1-rk3s/config".into(),
        reason: e.to_string(),
    })?;
    let body = call(Method::GET, "/apiservers", Bytes::new(), vec![]).await?;
    let apiservers: Vec<String> = serde_json::from_slice(&body).map_err(|e| JoinError::Decode {
        what: "/v1-rk3s/apiservers".into(),
        reason: e.to_string(),
    })?;
    Ok(Joined {
        server: server.url.clone(),
        ca_pem,
        kubelet_client,
        kubelet_serving,
        kube_proxy,
        controller,
        config,
        apiservers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_password_is_created_once_and_kept() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("agent/node-password");
        let a = read_or_create_node_password(&p).expect("create");
        assert_eq!(a.len(), 32);
        let b = read_or_create_node_password(&p).expect("read");
        assert_eq!(a, b);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn authorization_headers() {
        let t = rk3s_pki::parse_token("abcdef.0123456789abcdef").expect("t");
        assert_eq!(authorization(&t), "Bearer abcdef.0123456789abcdef");
        let t = rk3s_pki::parse_token(&format!("K10{}::server:s3", "a".repeat(64))).expect("t");
        assert_eq!(authorization(&t), "Basic bm9kZTpzMw==");
        let t = rk3s_pki::parse_token("s3").expect("t");
        assert_eq!(authorization(&t), "Basic bm9kZTpzMw==");
    }

    #[test]
    fn leaf_is_the_first_certificate() {
        let bundle = "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----\n";
        assert_eq!(
            leaf_of(bundle).as_deref(),
            Some("-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n")
        );
        assert_eq!(leaf_of("nothing"), None);
    }
}

/// `join` against a real TLS listener on loopback serving the supervisor.
#[cfg(test)]
mod loopback_tests {
    use std::sync::Arc;

    use super::*;
    use crate::server::tests::FakeCluster;
    use crate::{Supervisor, SupervisorOptions};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    struct TestServer {
        url: String,
        token: String,
        cluster: Arc<FakeCluster>,
        _dir: tempfile::TempDir,
    }

    async fn start() -> TestServer {
        let dir = tempfile::tempdir().expect("tmp");
        let mut o = rk3s_pki::PkiOptions::new(dir.path().join("server"));
        o.sans = vec!["127.0.0.1".into()];
        let pki = rk3s_pki::ensure_server_pki(&o).expect("pki");
        let cluster = Arc::new(FakeCluster {
            apiservers: vec!["127.0.0.1:6443".into()],
            ..Default::default()
        });
        let sup = Supervisor::new(
            SupervisorOptions {
                ca_cert_pem: pki.ca_cert_pem.clone(),
                ca_key_pem: pki.ca_key_pem.clone(),
                token_secret: pki.token_secret.clone(),
                agent_config: AgentConfig {
                    cluster_cidr: "10.42.0.0/16".into(),
                    flannel_backend: "vxlan".into(),
                    ..Default::default()
                },
                cert_validity_secs: 3600,
            },
            cluster.clone(),
        );
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(pki.serving_cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("certs");
        let key = PrivateKeyDer::from_pem_slice(pki.serving_key_pem.as_bytes()).expect("key");
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let sup = sup.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let sup = sup.clone();
                            async move {
                                use http_body_util::BodyExt;
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let resp = sup
                                    .handle(http::Request::from_parts(parts, body), None)
                                    .await;
                                Ok::<_, std::convert::Infallible>(
                                    resp.map(http_body_util::Full::new),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        TestServer {
            url: format!("https://127.0.0.1:{port}"),
            token: pki.token.clone(),
            cluster,
            _dir: dir,
        }
    }

    fn opts(s: &TestServer, token: &str, name: &str, password: &str) -> JoinOptions {
        JoinOptions {
            server: s.url.clone(),
            token: token.to_string(),
            node_name: name.to_string(),
            node_password: password.to_string(),
            node_password_file: PathBuf::from("/var/lib/rk3s/agent/node-password"),
            node_ips: vec!["127.0.0.1".parse().expect("ip")],
        }
    }

    #[tokio::test]
    async fn joins_with_the_full_token_and_gets_its_certificates() {
        let s = start().await;
        let j = join(&opts(&s, &s.token, "agent-1", "pw1"))
            .await
            .expect("join");
        assert_eq!(j.config.cluster_cidr, "10.42.0.0/16");
        assert_eq!(j.apiservers, vec!["127.0.0.1:6443".to_string()]);
        let id = |c: &IssuedCert| {
            let der = CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).expect("der");
            rk3s_pki::client_identity(der.as_ref()).expect("id")
        };
        assert_eq!(id(&j.kubelet_client).user, "system:node:agent-1");
        assert_eq!(
            id(&j.kubelet_client).groups,
            vec!["system:nodes".to_string()]
        );
        assert_eq!(id(&j.kube_proxy).user, "system:kube-proxy");
        assert_eq!(id(&j.controller).user, "system:rk3s-controller");
        assert_eq!(id(&j.kubelet_serving).user, "agent-1");
        assert!(s
            .cluster
            .secrets
            .lock()
            .expect("lock")
            .contains_key("agent-1.node-password.rk3s"));
        // A bare secret works too (with a warning), and a restart with the same password.
        let secret = s.token.rsplit(':').next().expect("secret").to_string();
        join(&opts(&s, &secret, "agent-1", "pw1"))
            .await
            .expect("bare secret");
    }

    #[tokio::test]
    async fn a_wrong_ca_hash_is_fatal_and_says_so() {
        let s = start().await;
        let secret = s.token.rsplit(':').next().expect("secret").to_string();
        let forged = format!("K10{}::server:{secret}", "0".repeat(64));
        let e = join(&opts(&s, &forged, "agent-1", "pw1"))
            .await
            .expect_err("refused");
        assert!(matches!(e, JoinError::CaHashMismatch { .. }), "{e}");
        assert!(e.to_string().contains("does not match the token"), "{e}");
        // Nothing was asked of the server beyond /cacerts.
        assert!(s.cluster.secrets.lock().expect("lock").is_empty());
    }

    #[tokio::test]
    async fn a_wrong_secret_and_a_taken_name_are_refused_with_advice() {
        let s = start().await;
        let hash = rk3s_pki::parse_token(&s.token)
            .expect("t")
            .ca_hash
            .expect("hash");
        let wrong = format!("K10{hash}::server:nope");
        let e = join(&opts(&s, &wrong, "agent-1", "pw1"))
            .await
            .expect_err("401");
        assert!(matches!(e, JoinError::Unauthorized { .. }), "{e}");
        join(&opts(&s, &s.token, "agent-1", "pw1"))
            .await
            .expect("first");
        let e = join(&opts(&s, &s.token, "agent-1", "other"))
            .await
            .expect_err("taken");
        assert!(matches!(e, JoinError::NodePasswordRejected { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("--with-node-id"), "{msg}");
        assert!(
            msg.contains("kube-system/agent-1.node-password.rk3s"),
            "{msg}"
        );
    }
}
