//! A CRI v1 client (`runtime.v1.RuntimeService` and `runtime.v1.ImageService`) over a
//! unix socket, with gRPC from `tonic` and messages from [`types`].
//!
//! The messages are declared in this crate rather than taken from the `k8s-cri` crate:
//! that crate generates its code with `protoc` at build time, which is not installed on
//! a fresh machine, and it would make every build of the rk3s binary depend on it.

pub mod types;

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::PathAndQuery;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use types::*;

/// Errors of CRI calls.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// The socket could not be reached.
    #[error("cannot connect to the container runtime at {path}: {cause}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// The innermost cause (e.g. "No such file or directory (os error 2)").
        cause: String,
    },
    /// The runtime answered with `NotFound`.
    #[error("{method}: not found: {message}")]
    NotFound {
        /// CRI method.
        method: &'static str,
        /// The runtime's message.
        message: String,
    },
    /// The call timed out (deadline exceeded).
    #[error("{method}: deadline exceeded: {message}")]
    Timeout {
        /// CRI method.
        method: &'static str,
        /// The runtime's message.
        message: String,
    },
    /// The runtime is not reachable any more (`Unavailable`).
    #[error("{method}: runtime unavailable: {message}")]
    Unavailable {
        /// CRI method.
        method: &'static str,
        /// The runtime's message.
        message: String,
    },
    /// Any other gRPC error status.
    #[error("{method}: {code:?}: {message}")]
    Status {
        /// CRI method.
        method: &'static str,
        /// gRPC code.
        code: tonic::Code,
        /// The runtime's message.
        message: String,
    },
    /// The runtime answered without a field that the API requires.
    #[error("{method}: response without {field}")]
    MissingField {
        /// CRI method.
        method: &'static str,
        /// Missing field.
        field: &'static str,
    },
}

impl CriError {
    fn from_status(method: &'static str, s: tonic::Status) -> Self {
        let message = s.message().to_string();
        match s.code() {
            tonic::Code::NotFound => CriError::NotFound { method, message },
            tonic::Code::DeadlineExceeded => CriError::Timeout { method, message },
            tonic::Code::Unavailable => CriError::Unavailable { method, message },
            code => CriError::Status {
                method,
                code,
                message,
            },
        }
    }

    /// True for [`CriError::NotFound`] (also when containerd phrases it in the message
    /// of another code, as some 1.6 calls do).
    pub fn is_not_found(&self) -> bool {
        match self {
            CriError::NotFound { .. } => true,
            CriError::Status { message, .. } => message.contains("not found"),
            _ => false,
        }
    }
}

/// The display of the deepest error in a source chain.
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Connects a channel to a gRPC server on a unix socket.
#[derive(Clone)]
struct UnixConnector(PathBuf);

impl tower_service::Service<Uri> for UnixConnector {
    type Response = TokioIo<tokio::net::UnixStream>;
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
        let path = self.0.clone();
        Box::pin(async move { Ok(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) })
    }
}

/// A CRI v1 client. Cheap to clone (clones share one HTTP/2 connection).
#[derive(Clone)]
pub struct CriClient {
    channel: Channel,
    socket: PathBuf,
    timeout: Duration,
}

impl std::fmt::Debug for CriClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriClient")
            .field("socket", &self.socket)
            .finish()
    }
}

const RUNTIME: &str = "/runtime.v1.RuntimeService/";
const IMAGE: &str = "/runtime.v1.ImageService/";

impl CriClient {
    /// Connects to the CRI socket at `socket` (a path, or `unix://PATH`). Calls time out
    /// after 2 minutes unless [`CriClient::with_timeout`] says otherwise.
    pub async fn connect(socket: impl AsRef<Path>) -> Result<Self, CriError> {
        let raw = socket.as_ref();
        let path = match raw.to_str().and_then(|s| s.strip_prefix("unix://")) {
            Some(p) => PathBuf::from(p),
            None => raw.to_path_buf(),
        };
        let endpoint =
            Endpoint::from_static("http://localhost").connect_timeout(Duration::from_secs(10));
        let channel = endpoint
            .connect_with_connector(UnixConnector(path.clone()))
            .await
            .map_err(|e| CriError::Connect {
                path: path.clone(),
                cause: innermost(&e),
            })?;
        Ok(CriClient {
            channel,
            socket: path,
            timeout: Duration::from_secs(120),
        })
    }

    /// The same client with another per-call timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The socket path this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn call<Req, Resp>(
        &self,
        service: &str,
        method: &'static str,
        req: Req,
    ) -> Result<Resp, CriError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready().await.map_err(|e| CriError::Unavailable {
            method,
            message: e.to_string(),
        })?;
        let path =
            PathAndQuery::try_from(format!("{service}{method}")).map_err(|e| CriError::Status {
                method,
                code: tonic::Code::Internal,
                message: e.to_string(),
            })?;
        let mut request = tonic::Request::new(req);
        request.set_timeout(self.timeout);
        let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
        grpc.unary(request, path, codec)
            .await
            .map(|r| r.into_inner())
            .map_err(|s| CriError::from_status(method, s))
    }

    /// `Version`.
    pub async fn version(&self) -> Result<VersionResponse, CriError> {
        self.call(
            RUNTIME,
            "Version",
            VersionRequest {
                version: "v1".into(),
            },
        )
        .await
    }

    /// `Status`: the runtime's conditions (`RuntimeReady`, `NetworkReady`).
    pub async fn status(&self) -> Result<RuntimeStatus, CriError> {
        let r: StatusResponse = self
            .call(RUNTIME, "Status", StatusRequest { verbose: false })
            .await?;
        r.status.ok_or(CriError::MissingField {
            method: "Status",
            field: "status",
        })
    }

    /// `RunPodSandbox`: returns the sandbox ID.
    pub async fn run_pod_sandbox(
        &self,
        config: PodSandboxConfig,
        runtime_handler: &str,
    ) -> Result<String, CriError> {
        let req = RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: runtime_handler.to_string(),
        };
        let r: RunPodSandboxResponse = self.call(RUNTIME, "RunPodSandbox", req).await?;
        Ok(r.pod_sandbox_id)
    }

    /// `StopPodSandbox` (stops its containers too; idempotent).
    pub async fn stop_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let _: Empty = self
            .call(
                RUNTIME,
                "StopPodSandbox",
                PodSandboxIdRequest {
                    pod_sandbox_id: id.into(),
                },
            )
            .await?;
        Ok(())
    }

    /// `RemovePodSandbox` (removes its containers too; idempotent).
    pub async fn remove_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let _: Empty = self
            .call(
                RUNTIME,
                "RemovePodSandbox",
                PodSandboxIdRequest {
                    pod_sandbox_id: id.into(),
                },
            )
            .await?;
        Ok(())
    }

    /// `PodSandboxStatus`.
    pub async fn pod_sandbox_status(&self, id: &str) -> Result<PodSandboxStatus, CriError> {
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        };
        let r: PodSandboxStatusResponse = self.call(RUNTIME, "PodSandboxStatus", req).await?;
        r.status.ok_or(CriError::MissingField {
            method: "PodSandboxStatus",
            field: "status",
        })
    }

    /// `ListPodSandbox`.
    pub async fn list_pod_sandboxes(
        &self,
        filter: Option<PodSandboxFilter>,
    ) -> Result<Vec<PodSandbox>, CriError> {
        let r: ListPodSandboxResponse = self
            .call(RUNTIME, "ListPodSandbox", ListPodSandboxRequest { filter })
            .await?;
        Ok(r.items)
    }

    /// `CreateContainer`: returns the container ID.
    pub async fn create_container(
        &self,
        pod_sandbox_id: &str,
        config: ContainerConfig,
        sandbox_config: PodSandboxConfig,
    ) -> Result<String, CriError> {
        let req = CreateContainerRequest {
            pod_sandbox_id: pod_sandbox_id.into(),
            config: Some(config),
            sandbox_config: Some(sandbox_config),
        };
        let r: CreateContainerResponse = self.call(RUNTIME, "CreateContainer", req).await?;
        Ok(r.container_id)
    }

    /// `StartContainer`.
    pub async fn start_container(&self, id: &str) -> Result<(), CriError> {
        let _: Empty = self
            .call(
                RUNTIME,
                "StartContainer",
                ContainerIdRequest {
                    container_id: id.into(),
                },
            )
            .await?;
        Ok(())
    }

    /// `StopContainer`: SIGTERM, then SIGKILL after `timeout_secs`.
    pub async fn stop_container(&self, id: &str, timeout_secs: i64) -> Result<(), CriError> {
        let req = StopContainerRequest {
            container_id: id.into(),
            timeout: timeout_secs,
        };
        let _: Empty = self.call(RUNTIME, "StopContainer", req).await?;
        Ok(())
    }

    /// `RemoveContainer`.
    pub async fn remove_container(&self, id: &str) -> Result<(), CriError> {
        let _: Empty = self
            .call(
                RUNTIME,
                "RemoveContainer",
                ContainerIdRequest {
                    container_id: id.into(),
                },
            )
            .await?;
        Ok(())
    }

    /// `ListContainers`.
    pub async fn list_containers(
        &self,
        filter: Option<ContainerFilter>,
    ) -> Result<Vec<Container>, CriError> {
        let r: ListContainersResponse = self
            .call(RUNTIME, "ListContainers", ListContainersRequest { filter })
            .await?;
        Ok(r.containers)
    }

    /// `ContainerStatus`.
    pub async fn container_status(&self, id: &str) -> Result<ContainerStatus, CriError> {
        let req = ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        let r: ContainerStatusResponse = self.call(RUNTIME, "ContainerStatus", req).await?;
        r.status.ok_or(CriError::MissingField {
            method: "ContainerStatus",
            field: "status",
        })
    }

    /// `ExecSync`: runs `cmd` in the container and collects its output (timeout in
    /// seconds, 0 for none).
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout_secs: i64,
    ) -> Result<ExecSyncResponse, CriError> {
        let req = ExecSyncRequest {
            container_id: id.into(),
            cmd,
            timeout: timeout_secs,
        };
        self.call(RUNTIME, "ExecSync", req).await
    }

    /// `Exec`: the streaming URL of an exec of `cmd` in container `id`.
    pub async fn exec(&self, req: ExecRequest) -> Result<String, CriError> {
        let r: ExecResponse = self.call(RUNTIME, "Exec", req).await?;
        Ok(r.url)
    }

    /// `Attach`: the streaming URL of an attach to container `id`.
    pub async fn attach(&self, req: AttachRequest) -> Result<String, CriError> {
        let r: AttachResponse = self.call(RUNTIME, "Attach", req).await?;
        Ok(r.url)
    }

    /// `PortForward`: the streaming URL of a port forward into sandbox `pod_sandbox_id`.
    pub async fn port_forward(
        &self,
        pod_sandbox_id: &str,
        ports: Vec<i32>,
    ) -> Result<String, CriError> {
        let req = PortForwardRequest {
            pod_sandbox_id: pod_sandbox_id.into(),
            port: ports,
        };
        let r: PortForwardResponse = self.call(RUNTIME, "PortForward", req).await?;
        Ok(r.url)
    }

    /// `ListImages`.
    pub async fn list_images(&self, filter: Option<ImageFilter>) -> Result<Vec<Image>, CriError> {
        let r: ListImagesResponse = self
            .call(IMAGE, "ListImages", ListImagesRequest { filter })
            .await?;
        Ok(r.images)
    }

    /// `ImageStatus`: `None` when the image is not in the store.
    pub async fn image_status(&self, image: &str) -> Result<Option<Image>, CriError> {
        let req = ImageStatusRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        };
        let r: ImageStatusResponse = self.call(IMAGE, "ImageStatus", req).await?;
        Ok(r.image)
    }

    /// `PullImage`: returns the image reference.
    pub async fn pull_image(
        &self,
        image: &str,
        auth: Option<AuthConfig>,
        sandbox_config: Option<PodSandboxConfig>,
    ) -> Result<String, CriError> {
        let req = PullImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            auth,
            sandbox_config,
        };
        let r: PullImageResponse = self.call(IMAGE, "PullImage", req).await?;
        Ok(r.image_ref)
    }

    /// `RemoveImage` (idempotent).
    pub async fn remove_image(&self, image: &str) -> Result<(), CriError> {
        let req = RemoveImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
        };
        let _: Empty = self.call(IMAGE, "RemoveImage", req).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn messages_use_cri_field_numbers() {
        // ExecSyncRequest{container_id="a", cmd=["b"], timeout=3}:
        // field 1 (len) "a", field 2 (len) "b", field 3 (varint) 3.
        let m = ExecSyncRequest {
            container_id: "a".into(),
            cmd: vec!["b".into()],
            timeout: 3,
        };
        assert_eq!(
            m.encode_to_vec(),
            vec![0x0a, 1, b'a', 0x12, 1, b'b', 0x18, 3]
        );
        // NamespaceOption network=NODE(2) is field 1 varint 2.
        let ns = NamespaceOption {
            network: NamespaceMode::Node as i32,
            ..Default::default()
        };
        assert_eq!(ns.encode_to_vec(), vec![0x08, 2]);
        // ImageSpec user_specified_image is field 18: tag (18<<3|2)=146 -> varint 0x92 0x01.
        let spec = ImageSpec {
            user_specified_image: "x".into(),
            ..Default::default()
        };
        assert_eq!(spec.encode_to_vec(), vec![0x92, 0x01, 1, b'x']);
    }

    #[test]
    fn unknown_fields_are_skipped() {
        // An Image with an unknown field 99 (varint) followed by id "i".
        let bytes = vec![0x98, 0x06, 1, 0x0a, 1, b'i'];
        let img = Image::decode(bytes.as_slice());
        assert_eq!(img.map(|i| i.id).ok(), Some("i".to_string()));
    }

    #[test]
    fn status_codes_map_to_typed_errors() {
        let e = CriError::from_status("ImageStatus", tonic::Status::not_found("no such image"));
        assert!(matches!(e, CriError::NotFound { .. }));
        assert!(e.is_not_found());
        let e = CriError::from_status("X", tonic::Status::unavailable("down"));
        assert!(matches!(e, CriError::Unavailable { .. }));
        assert!(!e.is_not_found());
        let e = CriError::from_status(
            "X",
            tonic::Status::unknown("container \"c\" in namespace: not found"),
        );
        assert!(e.is_not_found());
    }

    #[tokio::test]
    async fn connect_to_missing_socket_fails_with_connect_error() {
        let dir = tempfile::tempdir().map_err(|e| e.to_string());
        let Ok(dir) = dir else { panic!("tempdir") };
        let r = CriClient::connect(dir.path().join("nope.sock")).await;
        assert!(matches!(r, Err(CriError::Connect { .. })), "{r:?}");
        let msg = r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.ends_with("nope.sock: No such file or directory (os error 2)"),
            "{msg}"
        );
    }
}
