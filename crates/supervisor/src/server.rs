//! The server side of the join protocol.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::ByteString;
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::Api;
use rk3s_auth::UserInfo;

use crate::{
    password, AgentConfig, SupervisorError, CONTROLLER_USER, HEADER_NODE_IP, HEADER_NODE_NAME,
    HEADER_NODE_PASSWORD, KUBE_PROXY_USER, PATH_PREFIX,
};

/// What the supervisor needs from the cluster: node-password and bootstrap-token Secrets
/// and the API servers' addresses. Implemented for `kube::Client`; tests use a map.
#[async_trait::async_trait]
pub trait ClusterAccess: Send + Sync + 'static {
    /// `kube-system/<name>` as stored (JSON), or None when it does not exist.
    async fn get_secret(&self, name: &str) -> Result<Option<serde_json::Value>, String>;
    /// Creates an immutable `kube-system/<name>` with `data`; Ok(false) if it exists.
    async fn create_secret(
        &self,
        name: &str,
        data: BTreeMap<String, Vec<u8>>,
    ) -> Result<bool, String>;
    /// `host:port` of every ready API server endpoint of the `default/kubernetes` Service.
    async fn apiservers(&self) -> Result<Vec<String>, String>;
}

#[async_trait::async_trait]
impl ClusterAccess for kube::Client {
    async fn get_secret(&self, name: &str) -> Result<Option<serde_json::Value>, String> {
        let api: Api<Secret> = Api::namespaced(self.clone(), "kube-system");
        match api.get_opt(name).await {
            Ok(Some(s)) => serde_json::to_value(s).map(Some).map_err(|e| e.to_string()),
            Ok(None) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn create_secret(
        &self,
        name: &str,
        data: BTreeMap<String, Vec<u8>>,
    ) -> Result<bool, String> {
        let api: Api<Secret> = Api::namespaced(self.clone(), "kube-system");
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some("kube-system".into()),
                ..Default::default()
            },
            immutable: Some(true),
            data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v))).collect()),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn apiservers(&self) -> Result<Vec<String>, String> {
        let api: Api<EndpointSlice> = Api::namespaced(self.clone(), "default");
        let lp = ListParams::default().labels("kubernetes.io/service-name=kubernetes");
        let slices = api.list(&lp).await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for s in slices.items {
            let port = s
                .ports
                .as_ref()
                .and_then(|p| p.iter().find_map(|p| p.port))
                .unwrap_or(6443);
            for e in &s.endpoints {
                if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                    continue;
                }
                for a in &e.addresses {
                    let host = if a.contains(':') {
                        format!("[{a}]")
                    } else {
                        a.clone()
                    };
                    let addr = format!("{host}:{port}");
                    if !out.contains(&addr) {
                        out.push(addr);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Settings of the supervisor.
#[derive(Clone)]
pub struct SupervisorOptions {
    /// The cluster CA certificate (PEM): served at `/cacerts`, signs every certificate.
    pub ca_cert_pem: String,
    /// The cluster CA key (PEM).
    pub ca_key_pem: String,
    /// The server's join secret (the part after `::server:` of the token): agents present
    /// it as HTTP basic `node:<secret>`.
    pub token_secret: String,
    /// What agents are told of the cluster.
    pub agent_config: AgentConfig,
    /// Validity of issued certificates, in seconds (k3s: one year).
    pub cert_validity_secs: i64,
}

/// The supervisor: answers the join protocol's requests (see the crate docs).
#[derive(Clone)]
pub struct Supervisor {
    opts: Arc<SupervisorOptions>,
    cluster: Arc<dyn ClusterAccess>,
    /// Answers to joining servers (None: `/v1-rk3s/server-bootstrap` is not served).
    servers: Option<Arc<crate::servers::ServerJoin>>,
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Caller {
    /// Presented the join token or a bootstrap token (or is a cluster admin).
    Agent,
    /// Presented node `name`'s client certificate.
    Node(String),
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Bytes> {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    r
}

fn error_response(e: &SupervisorError) -> Response<Bytes> {
    let mut r = text(e.status(), format!("{e}\n"));
    if matches!(e, SupervisorError::Unauthorized) {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Basic realm=\"rk3s\""),
        );
    }
    r
}

fn header_str<'a>(req: &'a Request<Bytes>, name: &str) -> Option<&'a str> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Reads a PKCS#10 request from a body: PEM, or DER (what k3s's agents send).
fn csr_pem(body: &[u8]) -> Result<String, SupervisorError> {
    if body.is_empty() {
        return Err(SupervisorError::BadRequest(
            "a certificate signing request (PKCS#10, PEM or DER) must be POSTed".into(),
        ));
    }
    if let Ok(s) = std::str::from_utf8(body) {
        if s.trim_start().starts_with("-----BEGIN") {
            return Ok(s.to_string());
        }
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(body);
    let mut pem = String::from("-----BEGIN CERTIFICATE REQUEST-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE REQUEST-----\n");
    Ok(pem)
}

/// A node name as upstream validates it (a DNS subdomain), lower-cased as k3s does.
pub(crate) fn node_name(raw: &str) -> Result<String, SupervisorError> {
    let n = raw.to_ascii_lowercase();
    let ok = !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(n)
    } else {
        Err(SupervisorError::BadRequest(format!(
            "invalid node name {raw:?}: must be a lower-case DNS subdomain"
        )))
    }
}

impl Supervisor {
    /// A supervisor over `cluster` (in the server: a `kube::Client` on the in-process
    /// transport, allowed to read and create Secrets in `kube-system` and list
    /// EndpointSlices in `default`).
    pub fn new(opts: SupervisorOptions, cluster: Arc<dyn ClusterAccess>) -> Supervisor {
        Supervisor {
            opts: Arc::new(opts),
            cluster,
            servers: None,
        }
    }

    /// Serves joining servers too: `/v1-rk3s/server-bootstrap` and, with an embedded
    /// etcd, `/v1-rk3s/etcd/member-add` (see [`crate::servers`]).
    pub fn with_server_join(mut self, join: crate::servers::ServerJoin) -> Supervisor {
        self.servers = Some(Arc::new(join));
        self
    }

    /// Whether `path` belongs to the supervisor rather than to the Kubernetes API.
    pub fn claims(path: &str) -> bool {
        path == "/cacerts"
            || path == "/ping"
            || path
                .strip_prefix(PATH_PREFIX)
                .is_some_and(|rest| rest.starts_with('/'))
    }

    /// Answers one request. `client_cert_user` is the identity of the TLS client
    /// certificate, already verified against the cluster CA (None without one).
    pub async fn handle(
        &self,
        req: Request<Bytes>,
        client_cert_user: Option<UserInfo>,
    ) -> Response<Bytes> {
        match self.route(&req, client_cert_user).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(path = %req.uri().path(), error = %e, "supervisor request refused");
                error_response(&e)
            }
        }
    }

    async fn route(
        &self,
        req: &Request<Bytes>,
        cert_user: Option<UserInfo>,
    ) -> Result<Response<Bytes>, SupervisorError> {
        let path = req.uri().path();
        match path {
            "/cacerts" => return Ok(text(StatusCode::OK, self.opts.ca_cert_pem.clone())),
            "/ping" => return Ok(text(StatusCode::OK, "pong")),
            _ => {}
        }
        let Some(sub) = path.strip_prefix(PATH_PREFIX) else {
            return Err(SupervisorError::NotFound);
        };
        if crate::servers::claims(sub) {
            return crate::servers::serve(
                self.servers.as_deref(),
                &self.opts.token_secret,
                &self.opts.ca_cert_pem,
                req,
                sub,
            )
            .await;
        }
        let caller = self.authenticate(req, cert_user.as_ref()).await?;
        let post_only = |m: &Method| -> Result<(), SupervisorError> {
            if m == Method::POST {
                Ok(())
            } else {
                Err(SupervisorError::BadRequest(
                    "POST a certificate signing request (PKCS#10) for the key you keep".into(),
                ))
            }
        };
        match sub {
            "/client-kubelet.crt" => {
                post_only(req.method())?;
                let node = self.node_auth(req, &caller).await?;
                let cn = format!("system:node:{node}");
                self.sign(req, rk3s_pki::CsrUsage::Client, &cn, &["system:nodes"], &[])
            }
            "/serving-kubelet.crt" => {
                post_only(req.method())?;
                let node = self.node_auth(req, &caller).await?;
                let mut sans = vec![node.clone(), "localhost".into(), "127.0.0.1".into()];
                if let Some(ips) = header_str(req, HEADER_NODE_IP) {
                    for ip in ips.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                        let parsed: IpAddr = ip.parse().map_err(|_| {
                            SupervisorError::BadRequest(format!("invalid node IP address {ip}"))
                        })?;
                        sans.push(parsed.to_string());
                    }
                }
                self.sign(req, rk3s_pki::CsrUsage::Server, &node, &[], &sans)
            }
            "/client-kube-proxy.crt" => {
                post_only(req.method())?;
                self.sign(req, rk3s_pki::CsrUsage::Client, KUBE_PROXY_USER, &[], &[])
            }
            "/client-rk3s-controller.crt" => {
                post_only(req.method())?;
                self.sign(req, rk3s_pki::CsrUsage::Client, CONTROLLER_USER, &[], &[])
            }
            "/client-ca.crt" | "/server-ca.crt" => {
                Ok(text(StatusCode::OK, self.opts.ca_cert_pem.clone()))
            }
            "/config" => {
                let body = serde_json::to_vec(&self.opts.agent_config)
                    .map_err(|e| SupervisorError::Internal(e.to_string()))?;
                let mut r = text(StatusCode::OK, body);
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                Ok(r)
            }
            "/apiservers" => {
                let list = self
                    .cluster
                    .apiservers()
                    .await
                    .map_err(SupervisorError::Unavailable)?;
                let body = serde_json::to_vec(&list)
                    .map_err(|e| SupervisorError::Internal(e.to_string()))?;
                let mut r = text(StatusCode::OK, body);
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                Ok(r)
            }
            "/readyz" => Ok(text(StatusCode::OK, "ok")),
            _ => Err(SupervisorError::NotFound),
        }
    }

    /// Basic `<user>:<join secret>`, a bootstrap token as bearer, or a client certificate
    /// of a node (or of a cluster admin).
    async fn authenticate(
        &self,
        req: &Request<Bytes>,
        cert_user: Option<&UserInfo>,
    ) -> Result<Caller, SupervisorError> {
        if let Some(auth) = header_str(req, header::AUTHORIZATION.as_str()) {
            let (scheme, value) = auth.split_once(' ').unwrap_or((auth, ""));
            let value = value.trim();
            if scheme.eq_ignore_ascii_case("basic") {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(value)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or(SupervisorError::Unauthorized)?;
                let (_user, password) = decoded
                    .split_once(':')
                    .ok_or(SupervisorError::Unauthorized)?;
                if rk3s_pki::token_matches(
                    &self.opts.token_secret,
                    &self.opts.ca_cert_pem,
                    password,
                ) {
                    return Ok(Caller::Agent);
                }
                return Err(SupervisorError::Unauthorized);
            }
            if scheme.eq_ignore_ascii_case("bearer") {
                if rk3s_pki::token_matches(&self.opts.token_secret, &self.opts.ca_cert_pem, value) {
                    return Ok(Caller::Agent);
                }
                let Some(secret_name) = rk3s_auth::bootstrap_token_secret_name(value) else {
                    return Err(SupervisorError::Unauthorized);
                };
                let secret = self
                    .cluster
                    .get_secret(&secret_name)
                    .await
                    .map_err(SupervisorError::Unavailable)?
                    .ok_or(SupervisorError::Unauthorized)?;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or_default();
                return match rk3s_auth::authenticate_bootstrap_token(value, &secret, now) {
                    Some(_) => Ok(Caller::Agent),
                    None => Err(SupervisorError::Unauthorized),
                };
            }
            return Err(SupervisorError::Unauthorized);
        }
        if let Some(u) = cert_user {
            if let Some(n) = u.name.strip_prefix("system:node:") {
                if u.groups.iter().any(|g| g == "system:nodes") {
                    return Ok(Caller::Node(n.to_string()));
                }
            }
            if u.groups.iter().any(|g| g == "system:masters") {
                return Ok(Caller::Agent);
            }
        }
        Err(SupervisorError::Unauthorized)
    }

    /// k3s's node authentication: the node name and password headers are required; a node
    /// certificate may only ask for its own name; the password must match the stored hash,
    /// or is stored when the name is new.
    async fn node_auth(
        &self,
        req: &Request<Bytes>,
        caller: &Caller,
    ) -> Result<String, SupervisorError> {
        let name = header_str(req, HEADER_NODE_NAME)
            .ok_or_else(|| SupervisorError::BadRequest("node name not set".into()))?;
        let name = node_name(name)?;
        let password = header_str(req, HEADER_NODE_PASSWORD)
            .ok_or_else(|| SupervisorError::BadRequest("node password not set".into()))?;
        if let Caller::Node(n) = caller {
            if *n != name {
                return Err(SupervisorError::BadRequest(
                    "header node name does not match auth node name".into(),
                ));
            }
        }
        let secret_name = password::secret_name(&name);
        for _ in 0..2 {
            match self
                .cluster
                .get_secret(&secret_name)
                .await
                .map_err(SupervisorError::Unavailable)?
            {
                Some(secret) => {
                    let stored = secret
                        .get("data")
                        .and_then(|d| d.get("hash"))
                        .and_then(|h| h.as_str())
                        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                        .and_then(|b| String::from_utf8(b).ok())
                        .unwrap_or_default();
                    if password::verify(&stored, password) {
                        return Ok(name);
                    }
                    return Err(SupervisorError::Forbidden(format!(
                        "the password of node {name} does not match the hash in Secret \
                         kube-system/{secret_name}"
                    )));
                }
                None => {
                    let data = BTreeMap::from([(
                        "hash".to_string(),
                        password::hash(password).into_bytes(),
                    )]);
                    if self
                        .cluster
                        .create_secret(&secret_name, data)
                        .await
                        .map_err(SupervisorError::Unavailable)?
                    {
                        tracing::info!(node = %name, "node password stored for a new node");
                        return Ok(name);
                    }
                    // Created by a concurrent request: verify against it.
                }
            }
        }
        Err(SupervisorError::Unavailable(format!(
            "cannot verify the password of node {name}; retry"
        )))
    }

    /// Signs the POSTed request's key for the given identity; answers the certificate
    /// followed by the CA certificate (k3s's bundle order).
    fn sign(
        &self,
        req: &Request<Bytes>,
        usage: rk3s_pki::CsrUsage,
        common_name: &str,
        organizations: &[&str],
        sans: &[String],
    ) -> Result<Response<Bytes>, SupervisorError> {
        let csr = csr_pem(req.body())?;
        let cert = rk3s_pki::sign_csr_for(
            &self.opts.ca_cert_pem,
            &self.opts.ca_key_pem,
            &csr,
            usage,
            self.opts.cert_validity_secs,
            common_name,
            organizations,
            sans,
        )
        .map_err(|e| match e {
            rk3s_pki::PkiError::InvalidSan { .. } => SupervisorError::BadRequest(e.to_string()),
            e if csr_looks_bad(&e) => {
                SupervisorError::BadRequest(format!("invalid certificate signing request: {e}"))
            }
            e => SupervisorError::Internal(e.to_string()),
        })?;
        let mut body = cert;
        if !body.ends_with('\n') {
            body.push('\n');
        }
        body.push_str(&self.opts.ca_cert_pem);
        Ok(text(StatusCode::OK, body))
    }
}

/// Whether a signing failure came from the request rather than from the CA.
fn csr_looks_bad(e: &rk3s_pki::PkiError) -> bool {
    !matches!(
        e,
        rk3s_pki::PkiError::InvalidKey { .. } | rk3s_pki::PkiError::InvalidCertificate { .. }
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use std::sync::Mutex;

    /// An in-memory cluster: Secrets by name and a fixed API server list.
    #[derive(Default)]
    pub(crate) struct FakeCluster {
        pub(crate) secrets: Mutex<BTreeMap<String, serde_json::Value>>,
        pub(crate) apiservers: Vec<String>,
    }

    #[async_trait::async_trait]
    impl ClusterAccess for FakeCluster {
        async fn get_secret(&self, name: &str) -> Result<Option<serde_json::Value>, String> {
            Ok(self.secrets.lock().expect("lock").get(name).cloned())
        }
        async fn create_secret(
            &self,
            name: &str,
            data: BTreeMap<String, Vec<u8>>,
        ) -> Result<bool, String> {
            let mut m = self.secrets.lock().expect("lock");
            if m.contains_key(name) {
                return Ok(false);
            }
            let data: serde_json::Map<String, serde_json::Value> = data
                .into_iter()
                .map(|(k, v)| {
                    (
                        k,
                        base64::engine::general_purpose::STANDARD.encode(v).into(),
                    )
                })
                .collect();
            m.insert(
                name.to_string(),
                serde_json::json!({"metadata": {"name": name, "namespace": "kube-system"},
                    "immutable": true, "data": data}),
            );
            Ok(true)
        }
        async fn apiservers(&self) -> Result<Vec<String>, String> {
            Ok(self.apiservers.clone())
        }
    }

    pub(crate) fn test_ca() -> (String, String) {
        let dir = tempfile::tempdir().expect("tmp");
        let pki =
            rk3s_pki::ensure_server_pki(&rk3s_pki::PkiOptions::new(dir.path().join("server")))
                .expect("pki");
        (pki.ca_cert_pem.clone(), pki.ca_key_pem.clone())
    }

    pub(crate) fn supervisor(cluster: Arc<FakeCluster>) -> Supervisor {
        let (ca, key) = test_ca();
        Supervisor::new(
            SupervisorOptions {
                ca_cert_pem: ca,
                ca_key_pem: key,
                token_secret: "joinsecret".into(),
                agent_config: AgentConfig {
                    cluster_cidr: "10.42.0.0/16".into(),
                    ..Default::default()
                },
                cert_validity_secs: 3600,
            },
            cluster,
        )
    }

    fn basic(secret: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("node:{secret}"))
        )
    }

    fn req(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Request<Bytes> {
        let mut b = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Bytes::copy_from_slice(body)).expect("request")
    }

    fn body(r: &Response<Bytes>) -> String {
        String::from_utf8_lossy(r.body()).to_string()
    }

    #[tokio::test]
    async fn public_paths_and_claims() {
        let s = supervisor(Arc::new(FakeCluster::default()));
        let r = s.handle(req("GET", "/cacerts", &[], b""), None).await;
        assert_eq!(r.status(), 200);
        assert!(body(&r).starts_with("-----BEGIN CERTIFICATE-----"));
        let r = s.handle(req("GET", "/ping", &[], b""), None).await;
        assert_eq!((r.status().as_u16(), body(&r)), (200, "pong".to_string()));
        assert!(Supervisor::claims("/v1-rk3s/config"));
        assert!(Supervisor::claims("/cacerts"));
        assert!(!Supervisor::claims("/api/v1/nodes"));
        assert!(!Supervisor::claims("/v1-rk3sx"));
        assert!(!Supervisor::claims("/v1-k3s/config"));
    }

    #[tokio::test]
    async fn authenticated_paths_need_the_token() {
        let s = supervisor(Arc::new(FakeCluster::default()));
        let r = s
            .handle(req("GET", "/v1-rk3s/config", &[], b""), None)
            .await;
        assert_eq!(r.status(), 401);
        let wrong = basic("nope");
        let r = s
            .handle(
                req("GET", "/v1-rk3s/config", &[("authorization", &wrong)], b""),
                None,
            )
            .await;
        assert_eq!(r.status(), 401);
        let good = basic("joinsecret");
        let r = s
            .handle(
                req("GET", "/v1-rk3s/config", &[("authorization", &good)], b""),
                None,
            )
            .await;
        assert_eq!(r.status(), 200);
        let cfg: AgentConfig = serde_json::from_slice(r.body()).expect("json");
        assert_eq!(cfg.cluster_cidr, "10.42.0.0/16");
        let r = s
            .handle(
                req("GET", "/v1-rk3s/nothing", &[("authorization", &good)], b""),
                None,
            )
            .await;
        assert_eq!(r.status(), 404);
        // A garbage Authorization header is 401, never a panic.
        for h in [
            "Basic",
            "Basic !!!",
            "Bearer",
            "Bearer abcdef.0123456789abcdef",
            "Digest x",
        ] {
            let r = s
                .handle(
                    req("GET", "/v1-rk3s/config", &[("authorization", h)], b""),
                    None,
                )
                .await;
            assert_eq!(r.status(), 401, "{h}");
        }
    }

    #[tokio::test]
    async fn node_passwords_guard_node_names() {
        let cluster = Arc::new(FakeCluster::default());
        let s = supervisor(cluster.clone());
        let auth = basic("joinsecret");
        let (_key, csr) = rk3s_pki::new_key_and_csr("ignored").expect("csr");
        let ask = |name: &'static str, pw: &'static str| {
            req(
                "POST",
                "/v1-rk3s/client-kubelet.crt",
                &[
                    ("authorization", auth.as_str()),
                    (HEADER_NODE_NAME, name),
                    (HEADER_NODE_PASSWORD, pw),
                ],
                csr.as_bytes(),
            )
        };
        let r = s.handle(ask("agent-1", "pw-one"), None).await;
        assert_eq!(r.status(), 200, "{}", body(&r));
        let pem = body(&r);
        assert_eq!(pem.matches("-----BEGIN CERTIFICATE-----").count(), 2);
        let leaf_end = pem.find("-----END CERTIFICATE-----").expect("end") + 25;
        let leaf = &pem[..leaf_end];
        let der = rustls::pki_types::CertificateDer::from_pem_slice(leaf.as_bytes()).expect("der");
        let id = rk3s_pki::client_identity(der.as_ref()).expect("identity");
        assert_eq!(id.user, "system:node:agent-1");
        assert_eq!(id.groups, vec!["system:nodes".to_string()]);
        assert!(cluster
            .secrets
            .lock()
            .expect("lock")
            .contains_key("agent-1.node-password.rk3s"));
        // The same name and password again (a restart): fine.
        assert_eq!(s.handle(ask("agent-1", "pw-one"), None).await.status(), 200);
        // Another machine with the same name: refused, with the Secret's name.
        let r = s.handle(ask("agent-1", "pw-two"), None).await;
        assert_eq!(r.status(), 403);
        assert!(
            body(&r).contains("kube-system/agent-1.node-password.rk3s"),
            "{}",
            body(&r)
        );
        // Names are lower-cased (Agent-1 is agent-1) and validated.
        assert_eq!(s.handle(ask("Agent-1", "pw-two"), None).await.status(), 403);
        assert_eq!(s.handle(ask("bad_name", "pw"), None).await.status(), 400);
        // Headers are required.
        let r = s
            .handle(
                req(
                    "POST",
                    "/v1-rk3s/client-kubelet.crt",
                    &[("authorization", auth.as_str())],
                    csr.as_bytes(),
                ),
                None,
            )
            .await;
        assert_eq!(
            (r.status().as_u16(), body(&r)),
            (400, "node name not set\n".into())
        );
    }

    #[tokio::test]
    async fn node_certificates_only_act_for_their_own_node() {
        let s = supervisor(Arc::new(FakeCluster::default()));
        let (_key, csr) = rk3s_pki::new_key_and_csr("x").expect("csr");
        let node1 = UserInfo::new("system:node:n1", &["system:nodes"]);
        let r = s
            .handle(
                req(
                    "POST",
                    "/v1-rk3s/client-kubelet.crt",
                    &[(HEADER_NODE_NAME, "n2"), (HEADER_NODE_PASSWORD, "p")],
                    csr.as_bytes(),
                ),
                Some(node1.clone()),
            )
            .await;
        assert_eq!(r.status(), 400);
        assert_eq!(body(&r), "header node name does not match auth node name\n");
        let r = s
            .handle(
                req(
                    "POST",
                    "/v1-rk3s/client-kubelet.crt",
                    &[(HEADER_NODE_NAME, "n1"), (HEADER_NODE_PASSWORD, "p")],
                    csr.as_bytes(),
                ),
                Some(node1),
            )
            .await;
        assert_eq!(r.status(), 200);
        // A certificate of someone else is no credential here.
        let other = UserInfo::new("jane", &["devs"]);
        let r = s
            .handle(req("GET", "/v1-rk3s/config", &[], b""), Some(other))
            .await;
        assert_eq!(r.status(), 401);
    }

    #[tokio::test]
    async fn serving_certificates_name_the_node_and_its_ips() {
        let s = supervisor(Arc::new(FakeCluster::default()));
        let auth = basic("joinsecret");
        let (_key, csr) = rk3s_pki::new_key_and_csr("x").expect("csr");
        let mk = |ips: &'static str| {
            req(
                "POST",
                "/v1-rk3s/serving-kubelet.crt",
                &[
                    ("authorization", auth.as_str()),
                    (HEADER_NODE_NAME, "n1"),
                    (HEADER_NODE_PASSWORD, "p"),
                    (HEADER_NODE_IP, ips),
                ],
                csr.as_bytes(),
            )
        };
        assert_eq!(s.handle(mk("10.0.0.2,fd00::2"), None).await.status(), 200);
        let r = s.handle(mk("10.0.0.300"), None).await;
        assert_eq!(r.status(), 400);
        assert!(body(&r).contains("invalid node IP address 10.0.0.300"));
        // GET (k3s's legacy shared-key form) is refused: the key must stay on the agent.
        let r = s
            .handle(
                req(
                    "GET",
                    "/v1-rk3s/serving-kubelet.crt",
                    &[
                        ("authorization", auth.as_str()),
                        (HEADER_NODE_NAME, "n1"),
                        (HEADER_NODE_PASSWORD, "p"),
                    ],
                    b"",
                ),
                None,
            )
            .await;
        assert_eq!(r.status(), 400);
        // A garbage CSR is a 400.
        let r = s
            .handle(
                req(
                    "POST",
                    "/v1-rk3s/client-kube-proxy.crt",
                    &[("authorization", auth.as_str())],
                    b"\x30\x03\x02\x01\x00",
                ),
                None,
            )
            .await;
        assert_eq!(r.status(), 400, "{}", body(&r));
    }

    #[tokio::test]
    async fn bootstrap_tokens_authenticate() {
        let cluster = Arc::new(FakeCluster::default());
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        cluster.secrets.lock().expect("lock").insert(
            "bootstrap-token-abcdef".into(),
            serde_json::json!({
                "metadata": {"name": "bootstrap-token-abcdef", "namespace": "kube-system"},
                "type": "bootstrap.kubernetes.io/token",
                "data": {"token-id": b64("abcdef"), "token-secret": b64("0123456789abcdef"),
                         "usage-bootstrap-authentication": b64("true")}
            }),
        );
        let s = supervisor(cluster);
        let r = s
            .handle(
                req(
                    "GET",
                    "/v1-rk3s/readyz",
                    &[("authorization", "Bearer abcdef.0123456789abcdef")],
                    b"",
                ),
                None,
            )
            .await;
        assert_eq!(r.status(), 200);
        let r = s
            .handle(
                req(
                    "GET",
                    "/v1-rk3s/readyz",
                    &[("authorization", "Bearer abcdef.0000000000000000")],
                    b"",
                ),
                None,
            )
            .await;
        assert_eq!(r.status(), 401);
    }
}
