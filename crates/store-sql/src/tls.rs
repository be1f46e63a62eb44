//! TLS to the database (rustls with ring): which verification an endpoint asks for, the
//! files it uses, and the rustls client configuration for PostgreSQL (mysql_async
//! builds its own from [`mysql_async::SslOpts`]).

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::SqlError;

/// TLS files for the database connection (k3s's `--datastore-cafile`, `--datastore-certfile`,
/// `--datastore-keyfile`). Files named in the endpoint (`sslrootcert`, ...) win.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM bundle of the certificate authorities that sign the server's certificate.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain), for client-certificate authentication.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub key_file: Option<PathBuf>,
}

impl TlsFiles {
    /// Fills what `self` lacks from `defaults`.
    pub(crate) fn or(&self, defaults: &TlsFiles) -> TlsFiles {
        TlsFiles {
            ca_file: self.ca_file.clone().or_else(|| defaults.ca_file.clone()),
            cert_file: self
                .cert_file
                .clone()
                .or_else(|| defaults.cert_file.clone()),
            key_file: self.key_file.clone().or_else(|| defaults.key_file.clone()),
        }
    }

    /// True if any file is named.
    pub(crate) fn any(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }
}

/// How the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verification {
    /// Not at all (libpq `require` without a CA file, Go MySQL `skip-verify`).
    None,
    /// Signed by a trusted CA, any name (libpq `verify-ca`).
    Chain,
    /// Signed by a trusted CA and valid for the host name (libpq `verify-full`, Go MySQL
    /// `true`).
    Full,
}

fn tls_err(message: String) -> SqlError {
    SqlError::Tls(message)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(files: &TlsFiles) -> Result<RootCertStore, SqlError> {
    let mut roots = RootCertStore::empty();
    if let Some(ca) = &files.ca_file {
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|e| tls_err(format!("reading {}: {e}", ca.display())))?;
        for cert in certs {
            let cert = cert.map_err(|e| tls_err(format!("reading {}: {e}", ca.display())))?;
            roots
                .add(cert)
                .map_err(|e| tls_err(format!("CA in {}: {e}", ca.display())))?;
        }
    }
    Ok(roots)
}

/// The rustls client configuration for `verification` with `files`.
pub(crate) fn client_config(
    verification: Verification,
    files: &TlsFiles,
) -> Result<rustls::ClientConfig, SqlError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = match verification {
        Verification::None => rk3s_pki::AcceptAnyServerCert::new(Arc::clone(&provider)),
        Verification::Chain | Verification::Full => {
            let roots = roots(files)?;
            if roots.is_empty() {
                return Err(tls_err(
                    "verifying the server's certificate needs a CA file".into(),
                ));
            }
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| tls_err(e.to_string()))?;
            if verification == Verification::Chain {
                Arc::new(AnyName(webpki))
            } else {
                webpki
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match (&files.cert_file, &files.key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| tls_err(format!("reading {}: {e}", cert.display())))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| tls_err(format!("reading {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls_err(format!("client certificate: {e}")))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(tls_err(
            "a client certificate needs both the certificate and the key file".into(),
        )),
    }
}

/// Checks the chain, not the name.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
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

/// mysql_async's TLS options for `verification` with `files`.
pub(crate) fn mysql_ssl_opts(
    verification: Verification,
    files: &TlsFiles,
) -> Result<mysql_async::SslOpts, SqlError> {
    let mut opts = mysql_async::SslOpts::default();
    if let Some(ca) = &files.ca_file {
        opts = opts.with_root_certs(vec![ca.clone().into()]);
    }
    match (&files.cert_file, &files.key_file) {
        (Some(cert), Some(key)) => {
            opts = opts.with_client_identity(Some(mysql_async::ClientIdentity::new(
                cert.clone().into(),
                key.clone().into(),
            )));
        }
        (None, None) => {}
        _ => {
            return Err(tls_err(
                "a client certificate needs both the certificate and the key file".into(),
            ))
        }
    }
    Ok(match verification {
        Verification::None => opts.with_danger_accept_invalid_certs(true),
        Verification::Chain => opts.with_danger_skip_domain_validation(true),
        Verification::Full => opts,
    })
}
