//! A minimal HTTPS/1.1 client for tests that need many fast requests (kubectl starts a
//! process per call): client-certificate auth from the admin kubeconfig, keep-alive.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// TLS settings from a kubeconfig.
#[derive(Clone)]
pub struct Creds {
    config: Arc<rustls::ClientConfig>,
    pub port: u16,
}

fn field(text: &str, name: &str) -> Vec<u8> {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{name}:")))
        .expect("kubeconfig field");
    let v = line.split_once(':').map(|x| x.1.trim()).unwrap_or_default();
    base64::engine::general_purpose::STANDARD
        .decode(v)
        .expect("base64")
}

impl Creds {
    pub fn from_kubeconfig(path: &Path, port: u16) -> Creds {
        let text = std::fs::read_to_string(path).expect("kubeconfig");
        let ca = field(&text, "certificate-authority-data");
        let cert = field(&text, "client-certificate-data");
        let key = field(&text, "client-key-data");
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&ca) {
            roots.add(c.expect("ca pem")).expect("add ca");
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert)
            .map(|c| c.expect("cert"))
            .collect();
        let key = PrivateKeyDer::from_pem_slice(&key).expect("key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("client auth");
        Creds {
            config: Arc::new(config),
            port,
        }
    }

    /// The same server trust, but no client certificate (an anonymous client).
    pub fn anonymous(path: &Path, port: u16) -> Creds {
        let text = std::fs::read_to_string(path).expect("kubeconfig");
        let ca = field(&text, "certificate-authority-data");
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&ca) {
            roots.add(c.expect("ca pem")).expect("add ca");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Creds {
            config: Arc::new(config),
            port,
        }
    }
}

/// One keep-alive connection.
pub struct Conn {
    stream: BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
}

impl Conn {
    pub fn connect(c: &Creds) -> std::io::Result<Conn> {
        let tcp = TcpStream::connect(("127.0.0.1", c.port))?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from("localhost").map_err(std::io::Error::other)?;
        let conn =
            rustls::ClientConnection::new(c.config.clone(), name).map_err(std::io::Error::other)?;
        Ok(Conn {
            stream: BufReader::new(rustls::StreamOwned::new(conn, tcp)),
        })
    }

    /// Sends a GET with `extra` header lines (each ending in CRLF) and returns all the
    /// server sends until it closes the connection (a WebSocket answer: the 101 head,
    /// then frames).
    pub fn get_until_close(&mut self, path: &str, extra: &str) -> std::io::Result<Vec<u8>> {
        let head = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n");
        let s = self.stream.get_mut();
        s.write_all(head.as_bytes())?;
        s.flush()?;
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                // A peer that closes without close_notify: keep what arrived.
                Err(_) if !out.is_empty() => break,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Sends a request; returns (status, body).
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> std::io::Result<(u16, Vec<u8>)> {
        self.request_ct(method, path, "application/json", body)
    }

    /// Sends a request with a given Content-Type; returns (status, body).
    pub fn request_ct(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<&[u8]>,
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let b = body.unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\nAccept: application/json\r\nContent-Length: {}\r\n\r\n",
            b.len()
        );
        let s = self.stream.get_mut();
        s.write_all(head.as_bytes())?;
        s.write_all(b)?;
        s.flush()?;
        let mut line = String::new();
        self.stream.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|x| x.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut len = None;
        let mut chunked = false;
        loop {
            let mut h = String::new();
            self.stream.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse::<usize>().ok();
            }
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        let mut out = Vec::new();
        if chunked {
            loop {
                let mut sz = String::new();
                self.stream.read_line(&mut sz)?;
                let n = usize::from_str_radix(sz.trim(), 16).map_err(std::io::Error::other)?;
                let mut chunk = vec![0; n + 2];
                self.stream.read_exact(&mut chunk)?;
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&chunk[..n]);
            }
        } else if let Some(n) = len {
            out.resize(n, 0);
            self.stream.read_exact(&mut out)?;
        }
        Ok((status, out))
    }
}
