//! The agent's client-side load balancer over the API servers (k3s's agent load balancer
//! on 127.0.0.1:6444): every client of the node talks to a local TCP port, and each
//! connection is passed through (TLS end to end) to an API server that accepts it. The
//! list of servers comes from the `default/kubernetes` endpoints, is kept in the agent's
//! data dir, and always ends with the `--server` address as the last resort, so the agent
//! moves to another server without a restart when servers are added or one fails.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// How long to wait for a server's TCP handshake before trying the next one.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// The load balancer; cheap to clone.
#[derive(Clone, Debug)]
pub struct LoadBalancer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    local: std::net::SocketAddr,
    /// The `--server` address (`host:port`): tried last.
    default_server: String,
    /// The known API servers (`host:port`), in preference order.
    servers: RwLock<Vec<String>>,
    /// Index into the candidate list of the server that last accepted a connection.
    current: RwLock<String>,
    state_file: PathBuf,
}

/// `host:port` of an `https://host[:port]` URL (6443 by default).
pub fn server_address(url: &str) -> Option<String> {
    let u = crate::https::ServerUrl::parse(url).ok()?;
    Some(if u.host.contains(':') {
        format!("[{}]:{}", u.host, u.port)
    } else {
        format!("{}:{}", u.host, u.port)
    })
}

fn read_state(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| {
            v.get("ServerAddresses")
                .and_then(|a| a.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
        })
        .unwrap_or_default()
}

impl LoadBalancer {
    /// Listens on `listen` (e.g. 127.0.0.1:6444) and starts passing connections through.
    /// `default_server` is the `--server` URL; `state_file` keeps the server list across
    /// restarts (k3s: `<data-dir>/agent/etc/k3s-agent-load-balancer.json`).
    pub async fn start(
        listen: std::net::SocketAddr,
        default_server: &str,
        state_file: PathBuf,
    ) -> std::io::Result<LoadBalancer> {
        let default_server = server_address(default_server).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("invalid server URL {default_server:?}"),
            )
        })?;
        let listener = TcpListener::bind(listen).await?;
        let local = listener.local_addr()?;
        let servers = read_state(&state_file);
        let inner = Arc::new(Inner {
            local,
            current: RwLock::new(servers.first().cloned().unwrap_or(default_server.clone())),
            default_server,
            servers: RwLock::new(servers),
            state_file,
        });
        let lb = LoadBalancer { inner };
        let accept = lb.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((client, _)) => {
                        let lb = accept.clone();
                        tokio::spawn(async move { lb.pass(client).await });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "load balancer: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        tracing::info!(listen = %local, servers = ?lb.servers(), "API server load balancer started");
        Ok(lb)
    }

    /// The URL clients use: `https://<local address>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.inner.local)
    }

    /// The server list, `--server` last.
    pub fn servers(&self) -> Vec<String> {
        let mut out = self
            .inner
            .servers
            .read()
            .map(|s| s.clone())
            .unwrap_or_default();
        if !out.contains(&self.inner.default_server) {
            out.push(self.inner.default_server.clone());
        }
        out
    }

    /// Replaces the known servers (an empty list is ignored: `--server` stays anyway)
    /// and persists them.
    pub fn set_servers(&self, mut servers: Vec<String>) {
        servers.retain(|s| !s.is_empty());
        servers.dedup();
        if servers.is_empty() {
            return;
        }
        let changed = match self.inner.servers.write() {
            Ok(mut cur) if *cur != servers => {
                *cur = servers.clone();
                true
            }
            _ => false,
        };
        if changed {
            tracing::info!(servers = ?servers, "API server load balancer: servers updated");
            let v = serde_json::json!({
                "ServerURL": format!("https://{}", self.inner.default_server),
                "ServerAddresses": servers,
            });
            if let Some(dir) = self.inner.state_file.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let tmp = self.inner.state_file.with_extension("tmp");
            if std::fs::write(&tmp, v.to_string()).is_ok() {
                let _ = std::fs::rename(&tmp, &self.inner.state_file);
            }
        }
    }

    /// Candidates in the order to try: the current server first, then the others.
    fn candidates(&self) -> Vec<String> {
        let all = self.servers();
        let current = self
            .inner
            .current
            .read()
            .map(|c| c.clone())
            .unwrap_or_default();
        let mut out: Vec<String> = all.iter().filter(|s| **s == current).cloned().collect();
        out.extend(all.into_iter().filter(|s| *s != current));
        out
    }

    async fn pass(&self, mut client: TcpStream) {
        let _ = client.set_nodelay(true);
        for server in self.candidates() {
            match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(&server)).await {
                Ok(Ok(mut upstream)) => {
                    let _ = upstream.set_nodelay(true);
                    if let Ok(mut cur) = self.inner.current.write() {
                        if *cur != server {
                            tracing::info!(server = %server, "API server load balancer: switched server");
                            *cur = server.clone();
                        }
                    }
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    return;
                }
                Ok(Err(e)) => {
                    tracing::debug!(server = %server, error = %e, "load balancer: server refused")
                }
                Err(_) => tracing::debug!(server = %server, "load balancer: server timed out"),
            }
        }
        tracing::warn!(servers = ?self.servers(), "API server load balancer: no server accepts connections");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A TCP server on loopback that answers every connection with `tag`.
    async fn tagged(tag: &'static str) -> (String, tokio::task::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let h = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let _ = s.write_all(tag.as_bytes()).await;
            }
        });
        (addr, h)
    }

    async fn ask(lb: &LoadBalancer) -> String {
        let mut s = TcpStream::connect(lb.inner.local).await.expect("connect");
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf).await;
        buf
    }

    #[tokio::test]
    async fn passes_through_and_fails_over_and_persists() {
        let dir = tempfile::tempdir().expect("tmp");
        let state = dir.path().join("agent/etc/rk3s-agent-load-balancer.json");
        let (a, ha) = tagged("A").await;
        let (b, _hb) = tagged("B").await;
        let lb = LoadBalancer::start(
            "127.0.0.1:0".parse().expect("addr"),
            &format!("https://{a}"),
            state.clone(),
        )
        .await
        .expect("lb");
        assert!(lb.url().starts_with("https://127.0.0.1:"));
        assert_eq!(ask(&lb).await, "A", "only --server known");
        lb.set_servers(vec![b.clone(), a.clone()]);
        assert_eq!(lb.servers(), vec![b.clone(), a.clone()]);
        // The current server (A) stays preferred while it works.
        assert_eq!(ask(&lb).await, "A");
        // A fails: the next connection goes to B without a restart, and stays there.
        ha.abort();
        let _ = ha.await;
        assert_eq!(ask(&lb).await, "B");
        assert_eq!(ask(&lb).await, "B");
        // The list survives a restart of the agent.
        let saved = read_state(&state);
        assert_eq!(saved, vec![b.clone(), a.clone()]);
        let lb2 = LoadBalancer::start(
            "127.0.0.1:0".parse().expect("addr"),
            &format!("https://{a}"),
            state,
        )
        .await
        .expect("lb2");
        assert_eq!(lb2.servers(), vec![b.clone(), a]);
        assert_eq!(ask(&lb2).await, "B");
    }

    #[test]
    fn server_addresses() {
        assert_eq!(
            server_address("https://10.0.0.1").as_deref(),
            Some("10.0.0.1:6443")
        );
        assert_eq!(
            server_address("https://[fd00::1]:7443").as_deref(),
            Some("[fd00::1]:7443")
        );
        assert_eq!(server_address("http://x"), None);
    }
}
