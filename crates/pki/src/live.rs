//! A TLS certificate that can be replaced while it is in use (renewal without a restart).

use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::PkiError;

/// A certificate chain and key that every TLS handshake reads anew: as a server
/// certificate (`rustls::server::ResolvesServerCert`, e.g. `with_cert_resolver`) or a
/// client certificate (`rustls::client::ResolvesClientCert`). [`LiveCert::update`]
/// replaces it: new handshakes present the new one, open connections keep theirs.
#[derive(Debug)]
pub struct LiveCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl LiveCert {
    /// From PEM: the chain (leaf first) and its PKCS#8 (or SEC1/PKCS#1) key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<LiveCert, PkiError> {
        Ok(LiveCert {
            current: RwLock::new(Arc::new(certified_key(cert_pem, key_pem)?)),
        })
    }

    /// Replaces the certificate; an unusable one is refused and the current one kept.
    pub fn update(&self, cert_pem: &str, key_pem: &str) -> Result<(), PkiError> {
        let key = Arc::new(certified_key(cert_pem, key_pem)?);
        match self.current.write() {
            Ok(mut g) => *g = key,
            Err(poisoned) => *poisoned.into_inner() = key,
        }
        Ok(())
    }

    /// The certificate in use.
    pub fn get(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl rustls::server::ResolvesServerCert for LiveCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl rustls::client::ResolvesClientCert for LiveCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn certified_key(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, PkiError> {
    let invalid = |reason: String| PkiError::InvalidCertificate {
        what: "TLS certificate".into(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(e.to_string()))?;
    if certs.is_empty() {
        return Err(invalid("no certificate in the PEM".into()));
    }
    let bad_key = |reason: String| PkiError::InvalidKey {
        what: "TLS key".into(),
        reason,
    };
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| bad_key(e.to_string()))?;
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| bad_key(e.to_string()))?;
    let certified = CertifiedKey::new(certs, signing);
    certified
        .keys_match()
        .map_err(|_| bad_key("does not match the certificate".into()))?;
    Ok(certified)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_replaces_for_new_handshakes_and_refuses_bad_material() {
        let (ca_c, ca_k) = crate::cert::generate_ca("ca", 10).unwrap();
        let (c1, k1) = crate::issue_client_cert(&ca_c, &ca_k, "one", &[], 1).unwrap();
        let (c2, k2) = crate::issue_client_cert(&ca_c, &ca_k, "two", &[], 1).unwrap();
        let live = LiveCert::from_pem(&c1, &k1).unwrap();
        let first = live.get().cert[0].clone();
        live.update(&c2, &k2).unwrap();
        let second = live.get().cert[0].clone();
        assert_ne!(first, second);
        assert_eq!(second.as_ref(), crate::cert::pem_to_der(&c2, "c2").unwrap());
        // a key of another certificate, garbage: refused, the current one kept
        assert!(live.update(&c1, &k2).is_err());
        assert!(live.update("garbage", &k2).is_err());
        assert_eq!(live.get().cert[0], second);
        assert!(rustls::client::ResolvesClientCert::has_certs(&live));
    }
}
