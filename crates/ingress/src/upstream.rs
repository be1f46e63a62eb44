//! Connections to backend endpoints: HTTP/1.1 keep-alive connections pooled per
//! endpoint, and one exchange over them with the retry rules of the proxy.
//!
//! A request goes to the endpoints in [`Backend::attempt_order`] (at most
//! [`MAX_CONNECT_ATTEMPTS`]): first an idle pooled connection of that endpoint (one the
//! backend closed in the meantime hands the request back, which is then sent on the next
//! connection), else a new connection; an endpoint that refuses or does not accept
//! within the connect timeout is skipped for the next. A connection returns to the pool
//! once its response body is done; idle connections expire after [`POOL_IDLE`].
//! Upgrade requests always get a connection of their own (never pooled).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::routes::Backend;

/// How many endpoints one request tries before it fails with 502.
pub const MAX_CONNECT_ATTEMPTS: usize = 3;
/// How long an idle pooled connection is kept (Go's `IdleConnTimeout`).
pub const POOL_IDLE: Duration = Duration::from_secs(90);
/// Idle connections kept per endpoint.
pub const POOL_MAX_IDLE_PER_ENDPOINT: usize = 32;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No endpoint accepted a connection.
    #[error("no endpoint accepted a connection")]
    NoEndpoint,
    /// The exchange failed after the request was sent (or the handshake failed).
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

struct Idle {
    sender: SendRequest<Incoming>,
    since: Instant,
}

/// Idle keep-alive connections per endpoint.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self
            .idle
            .lock()
            .map(|m| m.values().map(Vec::len).sum::<usize>())
            .unwrap_or(0);
        f.debug_struct("Pool").field("idle", &n).finish()
    }
}

impl Pool {
    /// An idle, open connection to `addr`, if the pool has one.
    fn checkout(&self, addr: SocketAddr) -> Option<SendRequest<Incoming>> {
        let mut map = self.idle.lock().ok()?;
        let list = map.get_mut(&addr)?;
        let mut found = None;
        while let Some(c) = list.pop() {
            if c.since.elapsed() < POOL_IDLE && !c.sender.is_closed() && c.sender.is_ready() {
                found = Some(c.sender);
                break;
            }
        }
        if list.is_empty() {
            map.remove(&addr);
        }
        found
    }

    /// Puts a connection back once its current response is done.
    fn checkin(self: &Arc<Self>, addr: SocketAddr, mut sender: SendRequest<Incoming>) {
        let pool = self.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_err() {
                return;
            }
            let Ok(mut map) = pool.idle.lock() else {
                return;
            };
            let list = map.entry(addr).or_default();
            list.retain(|c| c.since.elapsed() < POOL_IDLE && !c.sender.is_closed());
            if list.len() < POOL_MAX_IDLE_PER_ENDPOINT {
                list.push(Idle {
                    sender,
                    since: Instant::now(),
                });
            }
        });
    }

    /// How many idle connections the pool holds.
    pub fn idle_count(&self) -> usize {
        self.idle
            .lock()
            .map(|m| m.values().map(Vec::len).sum())
            .unwrap_or(0)
    }

    /// Sends `req` to one of `backend`'s endpoints: the response and the endpoint that
    /// answered. `upgrade`: a fresh connection (with upgrades), never pooled.
    pub async fn exchange(
        self: &Arc<Self>,
        backend: &Backend,
        req: Request<Incoming>,
        upgrade: bool,
        connect_timeout: Duration,
    ) -> Result<(Response<Incoming>, SocketAddr), UpstreamError> {
        let mut req = Some(req);
        for addr in backend.attempt_order().take(MAX_CONNECT_ATTEMPTS) {
            if !upgrade {
                while let Some(mut sender) = self.checkout(addr) {
                    let Some(r) = req.take() else {
                        return Err(UpstreamError::NoEndpoint);
                    };
                    match sender.try_send_request(r).await {
                        Ok(resp) => {
                            self.checkin(addr, sender);
                            return Ok((resp, addr));
                        }
                        Err(mut e) => match e.take_message() {
                            // Not sent: the connection had closed; try another.
                            Some(r) => req = Some(r),
                            None => return Err(UpstreamError::Http(e.into_error())),
                        },
                    }
                }
            }
            let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(endpoint = %addr, error = %e, "ingress: connect failed, trying the next endpoint");
                    continue;
                }
                Err(_) => {
                    tracing::debug!(endpoint = %addr, "ingress: connect timed out, trying the next endpoint");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
                .handshake::<_, Incoming>(TokioIo::new(stream))
                .await?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(endpoint = %addr, error = %e, "ingress: upstream connection error");
                }
            });
            let Some(r) = req.take() else {
                return Err(UpstreamError::NoEndpoint);
            };
            let resp = sender.send_request(r).await?;
            if !upgrade {
                self.checkin(addr, sender);
            }
            return Ok((resp, addr));
        }
        Err(UpstreamError::NoEndpoint)
    }
}
