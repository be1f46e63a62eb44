//! Certificates for the HTTPS listener: the `kubernetes.io/tls` Secrets named in
//! `spec.tls` of the served Ingresses, chosen by SNI host (exact, then `*.suffix`), else
//! a self-signed default certificate generated at start.
//!
//! [`CertResolver`] reads the current [`TlsTable`] at every handshake, so a changed
//! Secret is served to the next connection without restarting anything.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Secret;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The Secret type holding a certificate and key.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";
/// The subject of the default certificate (Traefik's is `TRAEFIK DEFAULT CERT`).
pub const DEFAULT_CERT_NAME: &str = "RK3S INGRESS DEFAULT CERT";

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The Secret is not of type `kubernetes.io/tls`.
    #[error("type is {0:?}, not kubernetes.io/tls")]
    WrongType(String),
    /// A key of the Secret is missing.
    #[error("no {0} in the Secret")]
    Missing(&'static str),
    /// The PEM data does not parse.
    #[error("{0}: {1}")]
    Pem(&'static str, String),
    /// The key does not fit the certificate, or is of an unsupported kind.
    #[error("{0}")]
    Key(String),
    /// The default certificate could not be generated.
    #[error("generating the default certificate: {0}")]
    Generate(String),
}

/// Certificates by SNI host name (lower case).
#[derive(Debug, Default, Clone)]
pub struct TlsTable {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl TlsTable {
    /// Adds the certificate of `secret` for `hosts` (or, when none is given, for the DNS
    /// names of the certificate); a host already present keeps its certificate.
    pub fn add_secret(&mut self, secret: &Secret, hosts: &[String]) -> Result<(), CertError> {
        let ty = secret.type_.as_deref().unwrap_or("");
        if ty != TLS_SECRET_TYPE {
            return Err(CertError::WrongType(ty.to_string()));
        }
        let data = secret.data.as_ref();
        let crt = data
            .and_then(|d| d.get("tls.crt"))
            .ok_or(CertError::Missing("tls.crt"))?;
        let key = data
            .and_then(|d| d.get("tls.key"))
            .ok_or(CertError::Missing("tls.key"))?;
        let ck = Arc::new(certified_key(&crt.0, &key.0)?);
        let names: Vec<String> = if hosts.is_empty() {
            dns_names(&ck.cert[0])
        } else {
            hosts.to_vec()
        };
        for h in names {
            self.add(&h, ck.clone());
        }
        Ok(())
    }

    /// Adds a certificate for one host (`*.suffix` for a wildcard); the first one stays.
    pub fn add(&mut self, host: &str, ck: Arc<CertifiedKey>) {
        let h = host.trim().trim_end_matches('.').to_ascii_lowercase();
        if h.is_empty() {
            return;
        }
        match h.strip_prefix("*.") {
            Some(rest) => self.wildcard.entry(rest.to_string()).or_insert(ck),
            None => self.exact.entry(h).or_insert(ck),
        };
    }

    /// The certificate for an SNI name.
    pub fn get(&self, sni: &str) -> Option<&Arc<CertifiedKey>> {
        let h = sni.trim_end_matches('.').to_ascii_lowercase();
        if let Some(c) = self.exact.get(&h) {
            return Some(c);
        }
        h.split_once('.')
            .and_then(|(_, rest)| self.wildcard.get(rest))
    }

    /// How many host names have a certificate.
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    /// Whether no host has a certificate.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A certificate chain and key from PEM (`tls.crt`, `tls.key`), checked to belong
/// together.
pub fn certified_key(crt_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, CertError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(crt_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| CertError::Pem("tls.crt", e.to_string()))?;
    if certs.is_empty() {
        return Err(CertError::Pem("tls.crt", "no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| CertError::Pem("tls.key", e.to_string()))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(certs, key, &provider).map_err(|e| CertError::Key(e.to_string()))
}

/// The DNS names (SANs, else the CN) of a certificate.
fn dns_names(der: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                out.push(d.to_string());
            }
        }
    }
    if out.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                out.push(s.to_string());
            }
        }
    }
    out
}

/// Generates the self-signed default certificate.
pub fn default_certificate() -> Result<CertifiedKey, CertError> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| CertError::Generate(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, DEFAULT_CERT_NAME);
    let key = rcgen::KeyPair::generate().map_err(|e| CertError::Generate(e.to_string()))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| CertError::Generate(e.to_string()))?;
    certified_key(cert.pem().as_bytes(), key.serialize_pem().as_bytes())
}

/// The shared, swappable certificate state read by every TLS handshake.
#[derive(Debug)]
pub struct CertResolver {
    table: RwLock<Arc<TlsTable>>,
    default: Arc<CertifiedKey>,
}

impl CertResolver {
    /// A resolver with no Secret yet, answering with `default`.
    pub fn new(default: Arc<CertifiedKey>) -> CertResolver {
        CertResolver {
            table: RwLock::new(Arc::new(TlsTable::default())),
            default,
        }
    }

    /// Replaces the certificate table (seen by the next handshake).
    pub fn set(&self, table: TlsTable) {
        let table = Arc::new(table);
        match self.table.write() {
            Ok(mut g) => *g = table,
            Err(p) => *p.into_inner() = table,
        }
    }

    fn current(&self) -> Arc<TlsTable> {
        match self.table.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The certificate for an SNI name (or the default one).
    pub fn for_name(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        sni.and_then(|n| self.current().get(n).cloned())
            .unwrap_or_else(|| self.default.clone())
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.for_name(hello.server_name()))
    }
}

/// The rustls server configuration of the HTTPS listener: certificates from `resolver`,
/// ALPN `h2` and `http/1.1`.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<rustls::ServerConfig, CertError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| CertError::Key(e.to_string()))?
    .with_no_client_auth()
    .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    /// A self-signed certificate for `names`: (cert PEM, key PEM).
    pub fn self_signed(names: &[&str]) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    pub fn tls_secret(ns: &str, name: &str, crt: &str, key: &str) -> Secret {
        Secret {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            type_: Some(TLS_SECRET_TYPE.into()),
            data: Some(
                [
                    ("tls.crt".to_string(), ByteString(crt.as_bytes().to_vec())),
                    ("tls.key".to_string(), ByteString(key.as_bytes().to_vec())),
                ]
                .into(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn table_by_host_and_wildcard() {
        let (c1, k1) = self_signed(&["a.io"]);
        let (c2, k2) = self_signed(&["*.w.io", "w.io"]);
        let mut t = TlsTable::default();
        t.add_secret(&tls_secret("ns", "a", &c1, &k1), &["A.io".into()])
            .unwrap();
        // No hosts: the certificate's own names.
        t.add_secret(&tls_secret("ns", "w", &c2, &k2), &[]).unwrap();
        let a = t.get("a.io").unwrap().clone();
        let w = t.get("x.w.io").unwrap().clone();
        assert!(Arc::ptr_eq(t.get("w.io").unwrap(), &w));
        assert!(!Arc::ptr_eq(&a, &w));
        assert!(t.get("y.x.w.io").is_none());
        assert!(t.get("b.io").is_none());
    }

    #[test]
    fn invalid_secrets_are_errors() {
        let (c1, k1) = self_signed(&["a.io"]);
        let (_, k2) = self_signed(&["b.io"]);
        let mut t = TlsTable::default();
        assert!(matches!(
            t.add_secret(&tls_secret("ns", "a", &c1, &k2), &[]),
            Err(CertError::Key(_))
        ));
        assert!(matches!(
            t.add_secret(&tls_secret("ns", "a", "garbage", &k1), &[]),
            Err(CertError::Pem(..))
        ));
        let mut s = tls_secret("ns", "a", &c1, &k1);
        s.type_ = Some("Opaque".into());
        assert!(matches!(
            t.add_secret(&s, &[]),
            Err(CertError::WrongType(_))
        ));
        assert!(t.is_empty());
    }

    #[test]
    fn resolver_defaults_and_swaps() {
        let default = Arc::new(default_certificate().unwrap());
        let r = CertResolver::new(default.clone());
        assert!(Arc::ptr_eq(&r.for_name(Some("a.io")), &default));
        assert!(Arc::ptr_eq(&r.for_name(None), &default));
        let (c1, k1) = self_signed(&["a.io"]);
        let mut t = TlsTable::default();
        t.add_secret(&tls_secret("ns", "a", &c1, &k1), &[]).unwrap();
        r.set(t);
        assert!(!Arc::ptr_eq(&r.for_name(Some("a.io")), &default));
        assert!(Arc::ptr_eq(&r.for_name(Some("b.io")), &default));
    }
}
