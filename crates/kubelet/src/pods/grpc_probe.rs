//! gRPC probes: the standard health protocol (`grpc.health.v1.Health/Check`) over
//! plain-text HTTP/2 to the pod IP, with upstream's outcome messages.

use std::net::SocketAddr;
use std::time::Duration;

use http::uri::PathAndQuery;
use hyper_util::rt::TokioIo;
use tonic::transport::{Endpoint, Uri};

use super::probes::Outcome;

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {
    /// The service to check; empty for the server as a whole.
    #[prost(string, tag = "1")]
    pub service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    /// `ServingStatus`: 0 UNKNOWN, 1 SERVING, 2 NOT_SERVING, 3 SERVICE_UNKNOWN.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// The name of a `ServingStatus` value, as the proto enum spells it.
pub fn serving_status_name(status: i32) -> String {
    match status {
        0 => "UNKNOWN".into(),
        1 => "SERVING".into(),
        2 => "NOT_SERVING".into(),
        3 => "SERVICE_UNKNOWN".into(),
        n => n.to_string(),
    }
}

/// Connects a channel to one TCP address (the pod IP and port).
#[derive(Clone)]
struct TcpConnector(SocketAddr);

impl tower_service::Service<Uri> for TcpConnector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let addr = self.0;
        Box::pin(async move { Ok(TokioIo::new(tokio::net::TcpStream::connect(addr).await?)) })
    }
}

/// Runs one gRPC health check against `host:port` for `service` within `timeout`.
pub async fn check(host: &str, port: u16, service: &str, timeout: Duration) -> Outcome {
    let target = format!("{host}:{port}");
    let addr: SocketAddr = match target
        .parse()
        .or_else(|_| format!("[{host}]:{port}").parse())
    {
        Ok(a) => a,
        Err(e) => {
            return Outcome::Failure(format!(
                "error: health rpc probe failed: invalid address {target:?}: {e}"
            ))
        }
    };
    let secs = timeout.as_secs();
    let connect = async {
        Endpoint::from_static("http://probe.invalid")
            .connect_timeout(timeout)
            .connect_with_connector(TcpConnector(addr))
            .await
    };
    let channel = match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Outcome::Failure(format!("timeout: failed to connect service {target:?} within {secs}s: {e}")),
        Err(_) => return Outcome::Failure(format!("timeout: failed to connect service {target:?} within {secs}s: context deadline exceeded")),
    };
    let call = async {
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: service.to_string(),
        });
        request.set_timeout(timeout);
        let codec = tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default();
        grpc.unary(
            request,
            PathAndQuery::from_static("/grpc.health.v1.Health/Check"),
            codec,
        )
        .await
        .map(|r| r.into_inner())
    };
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Outcome::Failure(format!(
            "timeout: health rpc did not complete within {secs}s"
        )),
        Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => Outcome::Failure(format!(
            "this server does not implement the grpc health protocol (grpc.health.v1.Health): {}",
            s.message()
        )),
        Ok(Err(s)) if s.code() == tonic::Code::DeadlineExceeded => Outcome::Failure(format!(
            "timeout: health rpc did not complete within {secs}s"
        )),
        Ok(Err(s)) => Outcome::Failure(format!(
            "error: health rpc probe failed: rpc error: code = {:?} desc = {}",
            s.code(),
            s.message()
        )),
        Ok(Ok(r)) if r.status == 1 => Outcome::Success,
        Ok(Ok(r)) => Outcome::Failure(format!(
            "service unhealthy (responded with {:?})",
            serving_status_name(r.status)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    use prost::Message;

    /// Serves `grpc.health.v1.Health/Check` on 127.0.0.1 over HTTP/2, answering each
    /// request with `status` (or grpc-status 12 UNIMPLEMENTED when `status` is None).
    /// Returns the port and the service names it was asked about.
    async fn health_server(
        status: Option<i32>,
    ) -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let tx = tx.clone();
                            async move {
                                let path = req.uri().path().to_string();
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                if body.len() >= 5 {
                                    let asked = HealthCheckRequest::decode(&body[5..])
                                        .map(|r| r.service)
                                        .unwrap_or_default();
                                    let _ = tx.send(format!("{path} {asked}"));
                                }
                                let (grpc_status, payload) = match status {
                                    Some(s) => {
                                        ("0", HealthCheckResponse { status: s }.encode_to_vec())
                                    }
                                    None => ("12", Vec::new()),
                                };
                                let mut framed = Vec::new();
                                if status.is_some() {
                                    framed.push(0u8);
                                    framed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                                    framed.extend_from_slice(&payload);
                                }
                                let mut trailers = http::HeaderMap::new();
                                trailers.insert("grpc-status", grpc_status.parse().unwrap());
                                let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
                                    Ok(Frame::data(Bytes::from(framed))),
                                    Ok(Frame::trailers(trailers)),
                                ];
                                let body = StreamBody::new(futures_util::stream::iter(frames));
                                Ok::<_, std::convert::Infallible>(
                                    hyper::Response::builder()
                                        .header("content-type", "application/grpc")
                                        .body(body)
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
                });
            }
        });
        (port, rx)
    }

    #[tokio::test]
    async fn serving_is_success_and_the_service_name_is_sent() {
        let (port, mut asked) = health_server(Some(1)).await;
        let out = check("127.0.0.1", port, "liveness", Duration::from_secs(2)).await;
        assert_eq!(out, Outcome::Success);
        assert_eq!(
            asked.recv().await.unwrap(),
            "/grpc.health.v1.Health/Check liveness"
        );
    }

    #[tokio::test]
    async fn not_serving_is_a_failure_naming_the_status() {
        let (port, _asked) = health_server(Some(2)).await;
        let out = check("127.0.0.1", port, "", Duration::from_secs(2)).await;
        assert_eq!(
            out,
            Outcome::Failure("service unhealthy (responded with \"NOT_SERVING\")".into())
        );
    }

    #[tokio::test]
    async fn servers_without_the_health_service_and_closed_ports_fail() {
        let (port, _asked) = health_server(None).await;
        let Outcome::Failure(m) = check("127.0.0.1", port, "", Duration::from_secs(2)).await else {
            panic!("success")
        };
        assert!(
            m.starts_with(
                "this server does not implement the grpc health protocol (grpc.health.v1.Health)"
            ),
            "{m}"
        );
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let Outcome::Failure(m) = check("127.0.0.1", closed, "", Duration::from_secs(1)).await
        else {
            panic!("success")
        };
        assert!(
            m.starts_with(&format!(
                "timeout: failed to connect service \"127.0.0.1:{closed}\" within 1s"
            )),
            "{m}"
        );
    }
}
