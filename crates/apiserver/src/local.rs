//! The in-process transport: a `tower::Service` that hands requests straight to the API
//! server, so components in the server process (controllers, scheduler, the node agent)
//! are ordinary API clients (e.g. `kube::Client::new(service, "default")`) without TLS or
//! sockets, and every request still passes the same handlers as a remote one.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;

use crate::body::Response;
use crate::{ApiServer, UserInfo};

/// A client connection to the API server inside this process, acting as `user`.
#[derive(Clone)]
pub struct LocalService {
    api: ApiServer,
    user: UserInfo,
}

impl ApiServer {
    /// A `tower::Service` that serves requests in-process as `user`.
    pub fn local_service(&self, user: UserInfo) -> LocalService {
        LocalService {
            api: self.clone(),
            user,
        }
    }
}

/// Errors of reading a request body in-process.
#[derive(Debug, thiserror::Error)]
#[error("reading the request body: {0}")]
pub struct LocalBodyError(String);

impl<B> tower_service::Service<http::Request<B>> for LocalService
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: std::fmt::Display,
{
    type Response = Response;
    type Error = LocalBodyError;
    type Future = Pin<Box<dyn Future<Output = Result<Response, LocalBodyError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let api = self.api.clone();
        let user = self.user.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let bytes: Bytes = body
                .collect()
                .await
                .map_err(|e| LocalBodyError(e.to_string()))?
                .to_bytes();
            Ok(api.handle(parts, bytes, Some(user)).await)
        })
    }
}

// `Infallible` is the error of every response body.
const _: fn() = || {
    fn assert_body<T: http_body::Body<Data = Bytes, Error = Infallible>>() {}
    assert_body::<crate::body::ResponseBody>();
};
