//! The service health check server (upstream's `ServiceHealthServer`): for every
//! `type: LoadBalancer` Service with `externalTrafficPolicy: Local`, an HTTP server on
//! `spec.healthCheckNodePort` of each node address answers 200 when the node has local
//! endpoints for it (and the proxy's last sync succeeded), else 503, with a JSON body
//! naming the Service and its local endpoint count — so external load balancers send
//! traffic only to nodes that can serve it without another hop.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::model::ServiceKey;

/// Largest request head read before answering.
const MAX_REQUEST: usize = 8192;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

struct Instance {
    port: u16,
    endpoints: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The health check listeners of every Service that needs one.
pub struct HealthServer {
    node_ips: Vec<IpAddr>,
    healthy: Arc<AtomicBool>,
    instances: HashMap<ServiceKey, Instance>,
}

/// What the health server should serve for one Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// `spec.healthCheckNodePort`.
    pub port: u16,
    /// The number of local endpoints.
    pub local_endpoints: usize,
}

impl HealthServer {
    /// A server listening on `node_ips` (every address when empty).
    pub fn new(node_ips: Vec<IpAddr>) -> Self {
        HealthServer {
            node_ips,
            healthy: Arc::new(AtomicBool::new(true)),
            instances: HashMap::new(),
        }
    }

    /// Sets whether the proxy is healthy (its last sync succeeded); unhealthy makes every
    /// health check answer 503.
    pub fn set_proxy_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// The Services served and their ports.
    pub fn ports(&self) -> HashMap<ServiceKey, u16> {
        self.instances
            .iter()
            .map(|(k, i)| (k.clone(), i.port))
            .collect()
    }

    /// Serves exactly `desired`: closes listeners of Services gone or moved, opens new
    /// ones, updates endpoint counts. Returns the Services whose port could not be opened
    /// (tried again at the next call).
    pub async fn sync(
        &mut self,
        desired: &HashMap<ServiceKey, HealthCheck>,
    ) -> Vec<(ServiceKey, u16, String)> {
        self.instances
            .retain(|k, i| desired.get(k).is_some_and(|d| d.port == i.port));
        let mut failures = Vec::new();
        for (key, hc) in desired {
            if let Some(i) = self.instances.get(key) {
                i.endpoints.store(hc.local_endpoints, Ordering::Relaxed);
                continue;
            }
            match self.open(key, hc).await {
                Ok(instance) => {
                    tracing::info!(service = %key, port = hc.port, "opened service health check");
                    self.instances.insert(key.clone(), instance);
                }
                Err(e) => failures.push((key.clone(), hc.port, e.to_string())),
            }
        }
        failures
    }

    async fn open(&self, key: &ServiceKey, hc: &HealthCheck) -> std::io::Result<Instance> {
        let addrs: Vec<SocketAddr> = if self.node_ips.is_empty() {
            vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), hc.port)]
        } else {
            self.node_ips
                .iter()
                .map(|ip| SocketAddr::new(*ip, hc.port))
                .collect()
        };
        let endpoints = Arc::new(AtomicUsize::new(hc.local_endpoints));
        let mut instance = Instance {
            port: hc.port,
            endpoints: endpoints.clone(),
            tasks: Vec::new(),
        };
        for addr in addrs {
            // On error, dropping `instance` closes what was opened so far.
            let listener = TcpListener::bind(addr).await?;
            let key = key.clone();
            let endpoints = endpoints.clone();
            let healthy = self.healthy.clone();
            instance.tasks.push(tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    let count = endpoints.clone();
                    let healthy = healthy.clone();
                    let key = key.clone();
                    tokio::spawn(async move {
                        if let Err(e) = answer(stream, &key, count.load(Ordering::Relaxed), healthy.load(Ordering::Relaxed)).await {
                            tracing::debug!(service = %key, error = %e, "health check connection failed");
                        }
                    });
                }
            }));
        }
        Ok(instance)
    }
}

/// The HTTP response of a health check (status line, headers and JSON body).
pub fn response(key: &ServiceKey, local_endpoints: usize, proxy_healthy: bool) -> String {
    let ok = local_endpoints != 0 && proxy_healthy;
    let body = serde_json::json!({
        "service": { "namespace": key.namespace, "name": key.name },
        "localEndpoints": local_endpoints,
        "serviceProxyHealthy": proxy_healthy,
    });
    let body = serde_json::to_string_pretty(&body).unwrap_or_default();
    format!(
        "HTTP/1.1 {}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nX-Load-Balancing-Endpoint-Weight: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        if ok { "200 OK" } else { "503 Service Unavailable" },
        local_endpoints,
        body.len(),
        body
    )
}

async fn answer(
    mut stream: TcpStream,
    key: &ServiceKey,
    count: usize,
    healthy: bool,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut len = 0;
    let read = async {
        while len < buf.len() {
            let n = stream.read(&mut buf[len..]).await?;
            if n == 0 {
                break;
            }
            len += n;
            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    };
    if tokio::time::timeout(READ_TIMEOUT, read).await.is_err() {
        return Ok(());
    }
    stream
        .write_all(response(key, count, healthy).as_bytes())
        .await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn response_format() {
        let key = ServiceKey::new("ns", "web");
        let r = response(&key, 2, true);
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(r.contains("Content-Type: application/json\r\n"));
        assert!(r.contains("X-Load-Balancing-Endpoint-Weight: 2\r\n"));
        let body: serde_json::Value =
            serde_json::from_str(r.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"service": {"namespace": "ns", "name": "web"}, "localEndpoints": 2, "serviceProxyHealthy": true})
        );
        assert!(response(&key, 0, true).starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(response(&key, 3, false).starts_with("HTTP/1.1 503 "));
    }

    #[tokio::test]
    async fn serves_counts_and_follows_changes() {
        let mut hs = HealthServer::new(vec!["127.0.0.1".parse().unwrap()]);
        let key = ServiceKey::new("ns", "lb");
        let port = free_port();
        let mut desired = HashMap::from([(
            key.clone(),
            HealthCheck {
                port,
                local_endpoints: 0,
            },
        )]);
        assert!(hs.sync(&desired).await.is_empty());
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let r = get(addr).await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(r.contains("\"localEndpoints\": 0"));

        desired.insert(
            key.clone(),
            HealthCheck {
                port,
                local_endpoints: 2,
            },
        );
        hs.sync(&desired).await;
        let r = get(addr).await;
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        assert!(r.contains("\"name\": \"lb\"") && r.contains("\"namespace\": \"ns\""));

        hs.set_proxy_healthy(false);
        assert!(get(addr).await.starts_with("HTTP/1.1 503"));
        hs.set_proxy_healthy(true);

        // A port taken by someone else is reported, not fatal.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = ServiceKey::new("ns", "other");
        desired.insert(
            other.clone(),
            HealthCheck {
                port: taken.local_addr().unwrap().port(),
                local_endpoints: 1,
            },
        );
        let failures = hs.sync(&desired).await;
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].0, other);
        assert_eq!(hs.ports().len(), 1);

        // Service gone: the port closes.
        hs.sync(&HashMap::new()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(TcpStream::connect(addr).await.is_err());
    }
}
