//! The HTTPS listener: TLS (rustls), HTTP/1.1 and HTTP/2, client-certificate identity.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::{ApiServer, ApiServerError, UserInfo};

/// The verifier of client certificates against the cluster CA (`client_ca_pem`).
pub fn client_cert_verifier(
    client_ca_pem: &str,
) -> Result<Arc<dyn ClientCertVerifier>, ApiServerError> {
    let tls = |e: &dyn std::fmt::Display| ApiServerError::Tls(e.to_string());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(client_ca_pem.as_bytes()) {
        roots.add(ca.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .map_err(|e| tls(&e))
}

/// Lets any client certificate through the handshake, checking only its handshake
/// signature (the client holds the key). The chain itself is verified per connection
/// by [`serve`] against the cluster CA, and a certificate that fails is answered 401 on
/// every path, as upstream (whose TLS layer requests but does not verify client
/// certificates: the x509 authenticator does).
#[derive(Debug)]
struct DeferredClientCertVerifier(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for DeferredClientCertVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The API server's serving certificate, replaceable while the server runs (certificate
/// renewal without a restart): every TLS handshake reads the current one.
#[derive(Debug)]
pub struct ServingCert {
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl ServingCert {
    /// A serving certificate from PEM (the chain, leaf first, and its key).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ServingCert, ApiServerError> {
        Ok(ServingCert {
            current: std::sync::RwLock::new(Arc::new(certified_key(cert_pem, key_pem)?)),
        })
    }

    /// Replaces the certificate: new handshakes present it, open connections keep theirs.
    pub fn update(&self, cert_pem: &str, key_pem: &str) -> Result<(), ApiServerError> {
        let key = Arc::new(certified_key(cert_pem, key_pem)?);
        match self.current.write() {
            Ok(mut g) => *g = key,
            Err(poisoned) => *poisoned.into_inner() = key,
        }
        Ok(())
    }

    fn get(&self) -> Arc<rustls::sign::CertifiedKey> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl rustls::server::ResolvesServerCert for ServingCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.get())
    }
}

fn certified_key(
    cert_pem: &str,
    key_pem: &str,
) -> Result<rustls::sign::CertifiedKey, ApiServerError> {
    let tls = |e: &dyn std::fmt::Display| ApiServerError::Tls(e.to_string());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| tls(&e))?;
    if certs.is_empty() {
        return Err(ApiServerError::Tls(
            "no certificate in the serving certificate PEM".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| tls(&e))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| tls(&e))?;
    Ok(rustls::sign::CertifiedKey::new(certs, signing))
}

/// Builds the rustls server configuration: our serving cert, optional client certs
/// (their chain is verified against the cluster CA by [`serve`], after the handshake,
/// so only use this configuration with [`serve`]), ALPN h2 and http/1.1.
pub fn tls_config(
    cert_pem: &str,
    key_pem: &str,
    client_ca_pem: &str,
) -> Result<rustls::ServerConfig, ApiServerError> {
    tls_config_with(
        Arc::new(ServingCert::from_pem(cert_pem, key_pem)?),
        client_ca_pem,
    )
}

/// [`tls_config`] with a serving certificate that can be replaced while serving.
pub fn tls_config_with(
    serving: Arc<ServingCert>,
    client_ca_pem: &str,
) -> Result<rustls::ServerConfig, ApiServerError> {
    let tls = |e: &dyn std::fmt::Display| ApiServerError::Tls(e.to_string());
    let verifier = Arc::new(DeferredClientCertVerifier(client_cert_verifier(
        client_ca_pem,
    )?));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(serving);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The identity a connection's client certificate gives.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientCertIdentity {
    /// No certificate, or one without a usable identity: the request may still carry
    /// a bearer token, else it is anonymous.
    None,
    /// A certificate the cluster CA signed: CN = user, O = groups.
    User(UserInfo),
    /// A certificate the cluster CA does not vouch for (unknown issuer, expired, ...):
    /// every request on the connection is 401.
    Invalid(String),
}

/// Verifies a presented chain (leaf first) with `verifier` and reads its identity.
pub fn client_cert_identity(
    verifier: &dyn ClientCertVerifier,
    chain: Option<&[CertificateDer<'_>]>,
) -> ClientCertIdentity {
    let Some((leaf, intermediates)) = chain.and_then(|c| c.split_first()) else {
        return ClientCertIdentity::None;
    };
    if let Err(e) = verifier.verify_client_cert(leaf, intermediates, UnixTime::now()) {
        return ClientCertIdentity::Invalid(e.to_string());
    }
    match rk3s_pki::client_identity(leaf.as_ref()) {
        Ok(id) => {
            let mut u = UserInfo::new(id.user, &[]);
            u.groups = id.groups;
            ClientCertIdentity::User(u.with_authenticated_group())
        }
        Err(_) => ClientCertIdentity::None,
    }
}

/// Requests served on the API port beside the Kubernetes API, before its authentication:
/// rk3s's supervisor (`/cacerts`, `/ping`, `/v1-rk3s/...`, the join protocol of agents).
pub trait SideRoutes: Send + Sync + 'static {
    /// Whether `path` is served here rather than by the Kubernetes API.
    fn claims(&self, path: &str) -> bool;
    /// Answers a claimed request (its body read whole, at most 1 MiB).
    /// `client_cert_user` is the verified client-certificate identity, if any.
    fn serve(
        &self,
        req: http::Request<bytes::Bytes>,
        client_cert_user: Option<UserInfo>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = http::Response<bytes::Bytes>> + Send + 'static>,
    >;
}

/// The largest body a side route reads.
const SIDE_ROUTE_BODY_LIMIT: usize = 1 << 20;

async fn serve_side_route(
    side: &dyn SideRoutes,
    req: hyper::Request<Incoming>,
    user: Option<UserInfo>,
) -> crate::body::Response {
    use http_body_util::BodyExt;
    let (parts, body) = req.into_parts();
    let limited = http_body_util::Limited::new(body, SIDE_ROUTE_BODY_LIMIT);
    let body = match limited.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return crate::body::bytes_response(
                400,
                "text/plain",
                &b"request body too large or unreadable\n"[..],
            );
        }
    };
    side.serve(http::Request::from_parts(parts, body), user)
        .await
        .map(crate::body::ResponseBody::full)
}

/// Accepts connections on `listener` forever, serving `api`.
pub async fn serve(
    api: ApiServer,
    listener: TcpListener,
    tls: rustls::ServerConfig,
) -> Result<(), ApiServerError> {
    serve_with(api, listener, tls, None).await
}

/// Accepts connections on `listener` forever, serving `api` and, for the paths they
/// claim, `side` routes.
pub async fn serve_with(
    api: ApiServer,
    listener: TcpListener,
    tls: rustls::ServerConfig,
    side: Option<Arc<dyn SideRoutes>>,
) -> Result<(), ApiServerError> {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let api = api.clone();
        let side = side.clone();
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let identity = match &api.inner().auth.client_cert_verifier {
                Some(v) => client_cert_identity(v.as_ref(), stream.get_ref().1.peer_certificates()),
                None if stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .is_some_and(|c| !c.is_empty()) =>
                {
                    ClientCertIdentity::Invalid("no client CA".into())
                }
                None => ClientCertIdentity::None,
            };
            let (user, invalid_cert) = match identity {
                ClientCertIdentity::User(u) => (Some(u), false),
                ClientCertIdentity::None => (None, false),
                ClientCertIdentity::Invalid(e) => {
                    tracing::debug!(%peer, error = %e, "client certificate not verified: requests are 401");
                    (None, true)
                }
            };
            let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let api = api.clone();
                let user = user.clone();
                let side = side.clone();
                async move {
                    if let Some(side) = side.as_deref().filter(|s| s.claims(req.uri().path())) {
                        if invalid_cert {
                            return Ok(crate::body::bytes_response(
                                401,
                                "text/plain",
                                &b"Unauthorized\n"[..],
                            ));
                        }
                        return Ok(serve_side_route(side, req, user).await);
                    }
                    if invalid_cert {
                        return Ok::<_, Infallible>(crate::body::error(
                            &rk3s_api::ApiError::unauthorized(),
                        ));
                    }
                    Ok::<_, Infallible>(api.handle_incoming(req, user).await)
                }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with error");
            }
        });
    }
}
