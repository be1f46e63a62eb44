//! Certificates of the embedded etcd (k3s's `<data-dir>/server/tls/etcd/`), signed by the
//! cluster CA: the client-facing serving certificate, the peer certificate and the
//! API server's client certificate.

use std::path::{Path, PathBuf};

use rcgen::ExtendedKeyUsagePurpose;

use crate::cert::{self, now_unix, Ca, CertInfo, San};
use crate::fsutil::{ensure_dir, read_optional, write_atomic};
use crate::server::{LEAF_VALIDITY_DAYS, RENEW_BEFORE_DAYS};
use crate::PkiError;

/// Folder of the etcd certificates under the TLS directory.
pub const ETCD_TLS_DIR: &str = "etcd";

/// Paths of the embedded etcd's TLS files, as [`ensure_etcd_certs`] wrote them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdCerts {
    /// The CA every etcd certificate is checked against (a copy of the cluster CA):
    /// `server-ca.crt`.
    pub ca_file: PathBuf,
    /// Serving certificate of the client URLs (server and client auth):
    /// `server-client.crt`.
    pub server_cert_file: PathBuf,
    /// Its key: `server-client.key`.
    pub server_key_file: PathBuf,
    /// Certificate between members (server and client auth): `peer-server-client.crt`.
    pub peer_cert_file: PathBuf,
    /// Its key: `peer-server-client.key`.
    pub peer_key_file: PathBuf,
    /// The API server's client certificate towards etcd: `client.crt`.
    pub client_cert_file: PathBuf,
    /// Its key: `client.key`.
    pub client_key_file: PathBuf,
}

/// Creates (or keeps, while valid) the embedded etcd's certificates under
/// `<tls_dir>/etcd/`, signed by the cluster CA: the serving and peer certificates carry
/// `localhost`, `127.0.0.1`, `::1`, the member's `name` and every entry of `sans` (IPs or
/// DNS names); the client certificate is CN `etcd-client`. An existing certificate is
/// re-issued when it is not the CA's, expires within 90 days, lacks a name or does not
/// match its key. Keys are 0600, certificates 0644.
pub fn ensure_etcd_certs(
    tls_dir: &Path,
    ca_cert_pem: &str,
    ca_key_pem: &str,
    name: &str,
    sans: &[String],
) -> Result<EtcdCerts, PkiError> {
    let ca = Ca::load(ca_cert_pem, ca_key_pem)?;
    let dir = tls_dir.join(ETCD_TLS_DIR);
    ensure_dir(&dir, 0o700)?;
    let ca_file = dir.join("server-ca.crt");
    if read_optional(&ca_file)?.as_deref() != Some(ca_cert_pem) {
        write_atomic(&ca_file, ca_cert_pem.as_bytes(), 0o644)?;
    }
    let mut names: Vec<San> = Vec::new();
    for s in ["localhost", "127.0.0.1", "::1", name]
        .into_iter()
        .chain(sans.iter().map(String::as_str))
    {
        if s.is_empty() {
            continue;
        }
        let san = San::parse(s)?;
        if !names.contains(&san) {
            names.push(san);
        }
    }
    let both = || {
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]
    };
    let (server_cert_file, server_key_file) =
        ensure(&ca, &dir, "server-client", "etcd-server", &names, both())?;
    let (peer_cert_file, peer_key_file) =
        ensure(&ca, &dir, "peer-server-client", "etcd-peer", &names, both())?;
    let (client_cert_file, client_key_file) = ensure(
        &ca,
        &dir,
        "client",
        "etcd-client",
        &[],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    )?;
    Ok(EtcdCerts {
        ca_file,
        server_cert_file,
        server_key_file,
        peer_cert_file,
        peer_key_file,
        client_cert_file,
        client_key_file,
    })
}

/// Keeps `<dir>/<base>.crt` + `.key` when still good, else issues them.
fn ensure(
    ca: &Ca,
    dir: &Path,
    base: &str,
    common_name: &str,
    sans: &[San],
    usages: Vec<ExtendedKeyUsagePurpose>,
) -> Result<(PathBuf, PathBuf), PkiError> {
    let cert_path = dir.join(format!("{base}.crt"));
    let key_path = dir.join(format!("{base}.key"));
    if let (Some(cert_pem), Some(key_pem)) = (read_optional(&cert_path)?, read_optional(&key_path)?)
    {
        if still_good(ca, &cert_pem, &key_pem, common_name, sans) {
            return Ok((cert_path, key_path));
        }
        tracing::info!("re-issuing {}", cert_path.display());
    }
    let (cert_pem, key_pem) = ca.issue_with_usages(
        common_name,
        &[],
        sans,
        usages,
        i64::from(LEAF_VALIDITY_DAYS) * 86_400,
    )?;
    write_atomic(&key_path, key_pem.as_bytes(), 0o600)?;
    write_atomic(&cert_path, cert_pem.as_bytes(), 0o644)?;
    Ok((cert_path, key_path))
}

fn still_good(ca: &Ca, cert_pem: &str, key_pem: &str, common_name: &str, sans: &[San]) -> bool {
    let Ok(info) = CertInfo::from_pem(cert_pem, "etcd certificate") else {
        return false;
    };
    let Ok(key) = cert::load_key(key_pem, "etcd key") else {
        return false;
    };
    cert::key_matches(&key, &info.spki)
        && ca.issued(&info)
        && info.not_after - now_unix() >= i64::from(RENEW_BEFORE_DAYS) * 86_400
        && info.common_name.as_deref() == Some(common_name)
        && info.covers(sans)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_then_keeps_and_reissues_for_new_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca_cert, ca_key) = cert::generate_ca("test-ca", 10).expect("ca");
        let certs = ensure_etcd_certs(dir.path(), &ca_cert, &ca_key, "s1", &["10.0.0.5".into()])
            .expect("certs");
        assert_eq!(certs.ca_file, dir.path().join("etcd/server-ca.crt"));
        let peer = std::fs::read_to_string(&certs.peer_cert_file).expect("peer");
        let info = CertInfo::from_pem(&peer, "peer").expect("parse");
        assert!(info.covers(&[
            San::Ip("10.0.0.5".parse().expect("ip")),
            San::Ip("127.0.0.1".parse().expect("ip")),
            San::Dns("s1".into()),
        ]));
        assert!(crate::verify_issued_by(&peer, &ca_cert).expect("verify"));
        assert_eq!(
            std::fs::read_to_string(&certs.ca_file).expect("ca"),
            ca_cert
        );
        // Unchanged options: the same files are kept.
        let again = ensure_etcd_certs(dir.path(), &ca_cert, &ca_key, "s1", &["10.0.0.5".into()])
            .expect("again");
        assert_eq!(
            std::fs::read_to_string(&again.peer_cert_file).expect("peer"),
            peer
        );
        // A new address: re-issued to cover it.
        ensure_etcd_certs(dir.path(), &ca_cert, &ca_key, "s1", &["10.0.0.6".into()])
            .expect("new name");
        let renewed = std::fs::read_to_string(&certs.peer_cert_file).expect("peer");
        assert_ne!(renewed, peer);
        let info = CertInfo::from_pem(&renewed, "peer").expect("parse");
        assert!(info.covers(&[San::Ip("10.0.0.6".parse().expect("ip"))]));
        let client = std::fs::read_to_string(&certs.client_cert_file).expect("client");
        let info = CertInfo::from_pem(&client, "client").expect("parse");
        assert_eq!(info.common_name.as_deref(), Some("etcd-client"));
    }

    #[test]
    fn refuses_a_bad_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca_cert, ca_key) = cert::generate_ca("test-ca", 10).expect("ca");
        assert!(ensure_etcd_certs(dir.path(), &ca_cert, &ca_key, "s1", &["a b".into()]).is_err());
    }
}
