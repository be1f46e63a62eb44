//! Servers joining servers (k3s's `/v1-k3s/server-bootstrap` and its etcd member join),
//! both sides:
//!
//! - `GET /v1-rk3s/server-bootstrap`: the cluster CA (certificate and key) and the
//!   service-account signing key, as JSON ([`ServerBootstrap`]), for a server that starts
//!   with `--server`; only to callers that present the server token (never to bootstrap
//!   tokens or node certificates).
//! - `POST /v1-rk3s/etcd/member-add` (`{"name": ..., "peerURL": ...}`): adds the caller as
//!   a member of the embedded etcd ([`EtcdMembership`]) and answers
//!   `{"initialCluster": ...}`, the `--initial-cluster` its etcd starts with; same
//!   authentication.
//!
//! The client side ([`fetch_server_bootstrap`], [`request_etcd_member`]) checks the
//! server's CA against the token's hash as agents do.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::https::{self, ServerUrl};
use crate::{JoinError, SupervisorError, PATH_PREFIX};

/// Path (under [`PATH_PREFIX`]) of the server bootstrap data.
pub const SERVER_BOOTSTRAP_PATH: &str = "/server-bootstrap";
/// Path (under [`PATH_PREFIX`]) of the etcd member join.
pub const ETCD_MEMBER_ADD_PATH: &str = "/etcd/member-add";

/// What a joining server needs to share the cluster's identity.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServerBootstrap {
    /// The cluster CA certificate (PEM).
    pub ca_cert_pem: String,
    /// The cluster CA key (PEM).
    pub ca_key_pem: String,
    /// The service-account signing key (PKCS#8 PEM).
    pub service_account_key_pem: String,
}

impl std::fmt::Debug for ServerBootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBootstrap").finish_non_exhaustive()
    }
}

/// The embedded etcd's membership, as the supervisor uses it.
#[async_trait::async_trait]
pub trait EtcdMembership: Send + Sync + 'static {
    /// Adds member `name` at `peer_url` and returns the `--initial-cluster` it starts with.
    async fn member_add(&self, name: &str, peer_url: &str) -> Result<String, String>;
}

/// What the server side answers joining servers with.
#[derive(Clone)]
pub struct ServerJoin {
    /// The bootstrap data.
    pub bootstrap: ServerBootstrap,
    /// The embedded etcd (None: this server keeps its state elsewhere, so servers cannot
    /// join it as etcd members).
    pub etcd: Option<Arc<dyn EtcdMembership>>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MemberAddRequest {
    name: String,
    #[serde(rename = "peerURL")]
    peer_url: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MemberAddResponse {
    initial_cluster: String,
}

/// Whether `sub` (the path after [`PATH_PREFIX`]) is one of these routes.
pub(crate) fn claims(sub: &str) -> bool {
    sub == SERVER_BOOTSTRAP_PATH || sub == ETCD_MEMBER_ADD_PATH
}

/// Whether the request presents the server token (HTTP basic `<user>:<token>` or bearer).
fn server_token(req: &Request<Bytes>, secret: &str, ca_pem: &str) -> bool {
    let Some(auth) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let (scheme, value) = auth.trim().split_once(' ').unwrap_or((auth, ""));
    let value = value.trim();
    let presented = if scheme.eq_ignore_ascii_case("basic") {
        let Some(decoded) = base64::engine::general_purpose::STANDARD
            .decode(value)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
        else {
            return false;
        };
        match decoded.split_once(':') {
            Some((_, p)) => p.to_string(),
            None => return false,
        }
    } else if scheme.eq_ignore_ascii_case("bearer") {
        value.to_string()
    } else {
        return false;
    };
    // A bootstrap token (`abcdef.0123456789abcdef`) is an agent's credential only.
    if rk3s_auth::bootstrap_token_secret_name(&presented).is_some() {
        return false;
    }
    rk3s_pki::token_matches(secret, ca_pem, &presented)
}

fn json(body: Vec<u8>) -> Response<Bytes> {
    let mut r = Response::new(Bytes::from(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    *r.status_mut() = StatusCode::OK;
    r
}

/// Answers one of these routes.
pub(crate) async fn serve(
    join: Option<&ServerJoin>,
    token_secret: &str,
    ca_pem: &str,
    req: &Request<Bytes>,
    sub: &str,
) -> Result<Response<Bytes>, SupervisorError> {
    if !server_token(req, token_secret, ca_pem) {
        return Err(SupervisorError::Unauthorized);
    }
    let Some(join) = join else {
        return Err(SupervisorError::NotFound);
    };
    match sub {
        SERVER_BOOTSTRAP_PATH => {
            if req.method() != Method::GET {
                return Err(SupervisorError::BadRequest("use GET".into()));
            }
            serde_json::to_vec(&join.bootstrap)
                .map(json)
                .map_err(|e| SupervisorError::Internal(e.to_string()))
        }
        ETCD_MEMBER_ADD_PATH => {
            if req.method() != Method::POST {
                return Err(SupervisorError::BadRequest(
                    "POST {\"name\": ..., \"peerURL\": ...}".into(),
                ));
            }
            let Some(etcd) = &join.etcd else {
                return Err(SupervisorError::BadRequest(
                    "this server does not run the embedded etcd (start the first server with --cluster-init)".into(),
                ));
            };
            let body: MemberAddRequest = serde_json::from_slice(req.body())
                .map_err(|e| SupervisorError::BadRequest(format!("member-add body: {e}")))?;
            let name = crate::server::node_name(&body.name)?;
            let peer = ServerUrl::parse(&body.peer_url).map_err(|_| {
                SupervisorError::BadRequest(format!(
                    "invalid peer URL {:?}: must be https://host:port",
                    body.peer_url
                ))
            })?;
            let initial_cluster = etcd
                .member_add(&name, &peer.url)
                .await
                .map_err(SupervisorError::Unavailable)?;
            serde_json::to_vec(&MemberAddResponse { initial_cluster })
                .map(json)
                .map_err(|e| SupervisorError::Internal(e.to_string()))
        }
        _ => Err(SupervisorError::NotFound),
    }
}

/// The server's CA, checked against the token's hash (a bare secret: trusted as sent,
/// with a warning), and TLS pinned to it.
async fn pinned(
    server: &ServerUrl,
    token: &rk3s_pki::ParsedToken,
) -> Result<Arc<rustls::ClientConfig>, JoinError> {
    let req = Request::get("/cacerts")
        .body(Bytes::new())
        .map_err(|e| JoinError::InvalidToken(e.to_string()))?;
    let (status, body) = https::request(server, https::insecure_tls()?, req).await?;
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
            "the token has no CA hash (not K10<hash>::...): trusting the CA the server sent"
        ),
    }
    https::pinned_tls(&ca_pem)
}

async fn call(
    server_url: &str,
    token: &str,
    method: Method,
    path: &str,
    body: Bytes,
) -> Result<Bytes, JoinError> {
    let server = ServerUrl::parse(server_url)?;
    let token = rk3s_pki::parse_token(token).map_err(|e| JoinError::InvalidToken(e.to_string()))?;
    let tls = pinned(&server, &token).await?;
    let creds = format!("server:{}", token.secret);
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(creds)
    );
    let path = format!("{PATH_PREFIX}{path}");
    let req = Request::builder()
        .method(method.clone())
        .uri(path.as_str())
        .header(header::AUTHORIZATION, auth)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .map_err(|e| JoinError::Transport {
            what: path.clone(),
            reason: e.to_string(),
        })?;
    let (status, body) = https::request(&server, tls, req).await?;
    if status == StatusCode::UNAUTHORIZED {
        return Err(JoinError::Unauthorized { server: server.url });
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
    Ok(body)
}

/// Fetches the cluster CA and keys from `server` (`https://host:port`) with the server
/// `token`, for a server that joins the cluster.
pub async fn fetch_server_bootstrap(
    server: &str,
    token: &str,
) -> Result<ServerBootstrap, JoinError> {
    let body = call(
        server,
        token,
        Method::GET,
        SERVER_BOOTSTRAP_PATH,
        Bytes::new(),
    )
    .await?;
    serde_json::from_slice(&body).map_err(|e| JoinError::Decode {
        what: SERVER_BOOTSTRAP_PATH.into(),
        reason: e.to_string(),
    })
}

/// Asks `server` to add this server's etcd (member `name` at `peer_url`) to the cluster;
/// returns the `--initial-cluster` to start it with.
pub async fn request_etcd_member(
    server: &str,
    token: &str,
    name: &str,
    peer_url: &str,
) -> Result<String, JoinError> {
    let body = serde_json::to_vec(&MemberAddRequest {
        name: name.to_string(),
        peer_url: peer_url.to_string(),
    })
    .map_err(|e| JoinError::Decode {
        what: ETCD_MEMBER_ADD_PATH.into(),
        reason: e.to_string(),
    })?;
    let body = call(
        server,
        token,
        Method::POST,
        ETCD_MEMBER_ADD_PATH,
        Bytes::from(body),
    )
    .await?;
    let resp: MemberAddResponse = serde_json::from_slice(&body).map_err(|e| JoinError::Decode {
        what: ETCD_MEMBER_ADD_PATH.into(),
        reason: e.to_string(),
    })?;
    Ok(resp.initial_cluster)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::tests::{supervisor, FakeCluster};
    use std::sync::Mutex;

    #[derive(Default)]
    struct FakeEtcd {
        added: Mutex<Vec<(String, String)>>,
    }

    #[async_trait::async_trait]
    impl EtcdMembership for FakeEtcd {
        async fn member_add(&self, name: &str, peer_url: &str) -> Result<String, String> {
            self.added
                .lock()
                .expect("lock")
                .push((name.to_string(), peer_url.to_string()));
            Ok(format!("s1=https://10.0.0.1:2380,{name}={peer_url}"))
        }
    }

    fn bootstrap() -> ServerBootstrap {
        ServerBootstrap {
            ca_cert_pem: "CA".into(),
            ca_key_pem: "KEY".into(),
            service_account_key_pem: "SA".into(),
        }
    }

    fn basic(secret: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("server:{secret}"))
        )
    }

    fn req(method: &str, path: &str, auth: Option<&str>, body: &str) -> Request<Bytes> {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(a) = auth {
            b = b.header(header::AUTHORIZATION, a);
        }
        b.body(Bytes::copy_from_slice(body.as_bytes()))
            .expect("request")
    }

    #[tokio::test]
    async fn bootstrap_only_to_the_server_token() {
        let etcd = Arc::new(FakeEtcd::default());
        let s = supervisor(Arc::new(FakeCluster::default())).with_server_join(ServerJoin {
            bootstrap: bootstrap(),
            etcd: Some(etcd.clone()),
        });
        let path = "/v1-rk3s/server-bootstrap";
        let r = s.handle(req("GET", path, None, ""), None).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let r = s
            .handle(req("GET", path, Some(&basic("wrong")), ""), None)
            .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        // A bootstrap token is an agent's credential, never a server's.
        let r = s
            .handle(
                req("GET", path, Some("Bearer abcdef.0123456789abcdef"), ""),
                None,
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let r = s
            .handle(req("GET", path, Some(&basic("joinsecret")), ""), None)
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let got: ServerBootstrap = serde_json::from_slice(r.body()).expect("json");
        assert_eq!(got, bootstrap());

        let r = s
            .handle(
                req(
                    "POST",
                    "/v1-rk3s/etcd/member-add",
                    Some(&basic("joinsecret")),
                    r#"{"name":"S2","peerURL":"https://10.0.0.2:2380"}"#,
                ),
                None,
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{:?}", r.body());
        let v: serde_json::Value = serde_json::from_slice(r.body()).expect("json");
        assert_eq!(
            v["initialCluster"],
            "s1=https://10.0.0.1:2380,s2=https://10.0.0.2:2380"
        );
        assert_eq!(
            etcd.added.lock().expect("lock").as_slice(),
            &[("s2".to_string(), "https://10.0.0.2:2380".to_string())]
        );
        let r = s
            .handle(
                req(
                    "POST",
                    "/v1-rk3s/etcd/member-add",
                    Some(&basic("joinsecret")),
                    r#"{"name":"s3","peerURL":"http://x"}"#,
                ),
                None,
            )
            .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn not_served_without_server_join() {
        let s = supervisor(Arc::new(FakeCluster::default()));
        let r = s
            .handle(
                req(
                    "GET",
                    "/v1-rk3s/server-bootstrap",
                    Some(&basic("joinsecret")),
                    "",
                ),
                None,
            )
            .await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let s = s.with_server_join(ServerJoin {
            bootstrap: bootstrap(),
            etcd: None,
        });
        let r = s
            .handle(
                req(
                    "POST",
                    "/v1-rk3s/etcd/member-add",
                    Some(&basic("joinsecret")),
                    r#"{"name":"s2","peerURL":"https://10.0.0.2:2380"}"#,
                ),
                None,
            )
            .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }
}
