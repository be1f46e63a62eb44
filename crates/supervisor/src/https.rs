//! A minimal HTTPS/1.1 client for the few requests of joining: one connection per
//! request, TLS either pinned to the cluster CA or (only for `/cacerts`) unverified.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::JoinError;

/// Where the server is: `https://host[:port]` (port 6443 when left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerUrl {
    /// The URL as given, without a trailing `/`.
    pub(crate) url: String,
    /// Host name or IP (without brackets).
    pub(crate) host: String,
    /// TCP port.
    pub(crate) port: u16,
}

impl ServerUrl {
    pub(crate) fn parse(url: &str) -> Result<ServerUrl, JoinError> {
        let bad = |reason: &str| JoinError::InvalidServerUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = url.trim().trim_end_matches('/');
        let rest = trimmed
            .strip_prefix("https://")
            .ok_or_else(|| bad("must start with https://"))?;
        if rest.contains('/') || rest.contains('@') || rest.contains('?') {
            return Err(bad("must be https://host[:port] without a path"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad("invalid port"))?,
                None if after.is_empty() => 6443,
                None => return Err(bad("invalid port")),
            };
            (h.to_string(), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad("invalid port"))?),
                None => (rest.to_string(), 6443),
            }
        };
        if host.is_empty() || port == 0 {
            return Err(bad("no host or port"));
        }
        Ok(ServerUrl {
            url: trimmed.to_string(),
            host,
            port,
        })
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS that trusts nothing but checks nothing: only for `/cacerts`, whose answer is
/// then checked against the token's CA hash before anything is trusted.
pub(crate) fn insecure_tls() -> Result<Arc<rustls::ClientConfig>, JoinError> {
    rk3s_pki::unverified_client_config()
        .map(Arc::new)
        .map_err(|e| JoinError::Transport {
            what: "TLS".into(),
            reason: e.to_string(),
        })
}

/// TLS that trusts exactly the cluster CA `ca_pem`.
pub(crate) fn pinned_tls(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, JoinError> {
    let mut roots = rustls::RootCertStore::empty();
    let mut n = 0;
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| JoinError::Decode {
            what: "/cacerts".into(),
            reason: e.to_string(),
        })?;
        roots.add(cert).map_err(|e| JoinError::Decode {
            what: "/cacerts".into(),
            reason: e.to_string(),
        })?;
        n += 1;
    }
    if n == 0 {
        return Err(JoinError::Decode {
            what: "/cacerts".into(),
            reason: "no certificate in the answer".into(),
        });
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| JoinError::Transport {
            what: "TLS".into(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// One request: returns (status, body).
pub(crate) async fn request(
    server: &ServerUrl,
    tls: Arc<rustls::ClientConfig>,
    req: http::Request<Bytes>,
) -> Result<(http::StatusCode, Bytes), JoinError> {
    let what = format!("{} {}{}", req.method(), server.url, req.uri());
    let transport = |reason: String| JoinError::Transport {
        what: what.clone(),
        reason,
    };
    let fut = async {
        let tcp = tokio::net::TcpStream::connect((server.host.as_str(), server.port))
            .await
            .map_err(|e| transport(format!("connect: {e}")))?;
        let name = ServerName::try_from(server.host.clone())
            .map_err(|e| transport(format!("server name: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| transport(format!("TLS: {e}")))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| transport(format!("HTTP: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let (mut parts, body) = req.into_parts();
        parts.headers.insert(
            http::header::HOST,
            http::HeaderValue::from_str(&format!("{}:{}", server.host, server.port))
                .map_err(|e| transport(e.to_string()))?,
        );
        let resp = sender
            .send_request(http::Request::from_parts(parts, Full::new(body)))
            .await
            .map_err(|e| transport(format!("HTTP: {e}")))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| transport(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .map_err(|_| JoinError::Transport {
            what: what.clone(),
            reason: "timed out after 30 s".into(),
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        let u = ServerUrl::parse("https://10.0.0.1:6443/").expect("ok");
        assert_eq!((u.host.as_str(), u.port), ("10.0.0.1", 6443));
        assert_eq!(u.url, "https://10.0.0.1:6443");
        let u = ServerUrl::parse("https://server.example").expect("ok");
        assert_eq!((u.host.as_str(), u.port), ("server.example", 6443));
        let u = ServerUrl::parse("https://[fd00::1]:7443").expect("ok");
        assert_eq!((u.host.as_str(), u.port), ("fd00::1", 7443));
        for bad in [
            "http://10.0.0.1:6443",
            "10.0.0.1:6443",
            "https://",
            "https://h:0",
            "https://h:x",
            "https://h/path",
            "https://[fd00::1",
            "https://u@h",
        ] {
            assert!(ServerUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
