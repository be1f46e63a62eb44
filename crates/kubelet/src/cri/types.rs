//! CRI v1 (`runtime.v1`) messages used by the node agent, declared with `prost` derives.
//!
//! Only the messages and fields rk3s uses are declared; fields a runtime sends that are
//! not listed here are skipped when decoding (protobuf's unknown-field rule), so this
//! subset stays wire-compatible with the full API. Field numbers follow the published
//! CRI v1 definition.

use std::collections::HashMap;

/// Namespace sharing mode of a pod or container (CRI `NamespaceMode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum NamespaceMode {
    /// Namespace shared by the containers of the pod.
    Pod = 0,
    /// Namespace private to one container.
    Container = 1,
    /// The host's namespace.
    Node = 2,
    /// The namespace of another container (`target_id`).
    Target = 3,
}

/// Transport protocol of a port mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Protocol {
    /// TCP.
    Tcp = 0,
    /// UDP.
    Udp = 1,
    /// SCTP.
    Sctp = 2,
}

/// Mount propagation of a bind mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum MountPropagation {
    /// No propagation (private).
    Private = 0,
    /// Host mounts propagate into the container (rslave).
    HostToContainer = 1,
    /// Both ways (rshared).
    Bidirectional = 2,
}

/// State of a pod sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum PodSandboxState {
    /// Ready: its namespaces and network are set up.
    SandboxReady = 0,
    /// Not ready (stopped or failed).
    SandboxNotready = 1,
}

/// State of a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ContainerState {
    /// Created, not started.
    ContainerCreated = 0,
    /// Running.
    ContainerRunning = 1,
    /// Exited.
    ContainerExited = 2,
    /// Unknown.
    ContainerUnknown = 3,
}

/// `Version` request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VersionRequest {
    /// Version of the kubelet's CRI API.
    #[prost(string, tag = "1")]
    pub version: String,
}

/// `Version` response.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VersionResponse {
    /// Version of the kubelet runtime API.
    #[prost(string, tag = "1")]
    pub version: String,
    /// Name of the runtime (e.g. `containerd`).
    #[prost(string, tag = "2")]
    pub runtime_name: String,
    /// Version of the runtime.
    #[prost(string, tag = "3")]
    pub runtime_version: String,
    /// CRI API version of the runtime (e.g. `v1`).
    #[prost(string, tag = "4")]
    pub runtime_api_version: String,
}

/// DNS settings of a pod sandbox.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DnsConfig {
    /// Name servers.
    #[prost(string, repeated, tag = "1")]
    pub servers: Vec<String>,
    /// Search domains.
    #[prost(string, repeated, tag = "2")]
    pub searches: Vec<String>,
    /// resolv.conf options.
    #[prost(string, repeated, tag = "3")]
    pub options: Vec<String>,
}

/// A host port mapping of a sandbox.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PortMapping {
    /// Protocol ([`Protocol`]).
    #[prost(enumeration = "Protocol", tag = "1")]
    pub protocol: i32,
    /// Port in the container.
    #[prost(int32, tag = "2")]
    pub container_port: i32,
    /// Port on the host.
    #[prost(int32, tag = "3")]
    pub host_port: i32,
    /// Host IP to bind.
    #[prost(string, tag = "4")]
    pub host_ip: String,
}

/// A bind mount into a container.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Mount {
    /// Path in the container.
    #[prost(string, tag = "1")]
    pub container_path: String,
    /// Path on the host.
    #[prost(string, tag = "2")]
    pub host_path: String,
    /// Read-only mount.
    #[prost(bool, tag = "3")]
    pub readonly: bool,
    /// SELinux relabeling.
    #[prost(bool, tag = "4")]
    pub selinux_relabel: bool,
    /// Propagation ([`MountPropagation`]).
    #[prost(enumeration = "MountPropagation", tag = "5")]
    pub propagation: i32,
}

/// Namespace options of a sandbox or container.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NamespaceOption {
    /// Network namespace mode ([`NamespaceMode`]).
    #[prost(enumeration = "NamespaceMode", tag = "1")]
    pub network: i32,
    /// PID namespace mode.
    #[prost(enumeration = "NamespaceMode", tag = "2")]
    pub pid: i32,
    /// IPC namespace mode.
    #[prost(enumeration = "NamespaceMode", tag = "3")]
    pub ipc: i32,
    /// Target container for [`NamespaceMode::Target`].
    #[prost(string, tag = "4")]
    pub target_id: String,
}

/// A wrapped int64 (distinguishes 0 from unset).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Int64Value {
    /// The value.
    #[prost(int64, tag = "1")]
    pub value: i64,
}

/// Seccomp/AppArmor profile.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SecurityProfile {
    /// 0 RuntimeDefault, 1 Unconfined, 2 Localhost.
    #[prost(int32, tag = "1")]
    pub profile_type: i32,
    /// Profile reference for Localhost.
    #[prost(string, tag = "2")]
    pub localhost_ref: String,
}

/// Security settings of a sandbox.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxSandboxSecurityContext {
    /// Namespaces of the sandbox.
    #[prost(message, optional, tag = "1")]
    pub namespace_options: Option<NamespaceOption>,
    /// UID of the sandbox process.
    #[prost(message, optional, tag = "3")]
    pub run_as_user: Option<Int64Value>,
    /// Read-only root filesystem.
    #[prost(bool, tag = "4")]
    pub readonly_rootfs: bool,
    /// Supplemental groups.
    #[prost(int64, repeated, tag = "5")]
    pub supplemental_groups: Vec<i64>,
    /// Privileged sandbox.
    #[prost(bool, tag = "6")]
    pub privileged: bool,
    /// GID of the sandbox process.
    #[prost(message, optional, tag = "8")]
    pub run_as_group: Option<Int64Value>,
    /// Seccomp profile.
    #[prost(message, optional, tag = "9")]
    pub seccomp: Option<SecurityProfile>,
}

/// Resources of a Linux container (cgroup settings).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxContainerResources {
    /// CFS period (µs).
    #[prost(int64, tag = "1")]
    pub cpu_period: i64,
    /// CFS quota (µs).
    #[prost(int64, tag = "2")]
    pub cpu_quota: i64,
    /// CPU shares.
    #[prost(int64, tag = "3")]
    pub cpu_shares: i64,
    /// Memory limit in bytes.
    #[prost(int64, tag = "4")]
    pub memory_limit_in_bytes: i64,
    /// OOM score adjustment.
    #[prost(int64, tag = "5")]
    pub oom_score_adj: i64,
    /// cpuset CPUs.
    #[prost(string, tag = "6")]
    pub cpuset_cpus: String,
    /// cpuset memory nodes.
    #[prost(string, tag = "7")]
    pub cpuset_mems: String,
    /// cgroup v2 unified settings.
    #[prost(map = "string, string", tag = "9")]
    pub unified: HashMap<String, String>,
    /// Memory+swap limit in bytes.
    #[prost(int64, tag = "10")]
    pub memory_swap_limit_in_bytes: i64,
}

/// Linux part of a sandbox config.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxPodSandboxConfig {
    /// Parent cgroup of the sandbox.
    #[prost(string, tag = "1")]
    pub cgroup_parent: String,
    /// Security context.
    #[prost(message, optional, tag = "2")]
    pub security_context: Option<LinuxSandboxSecurityContext>,
    /// Sysctls.
    #[prost(map = "string, string", tag = "3")]
    pub sysctls: HashMap<String, String>,
    /// Pod overhead.
    #[prost(message, optional, tag = "4")]
    pub overhead: Option<LinuxContainerResources>,
    /// Pod-level resources.
    #[prost(message, optional, tag = "5")]
    pub resources: Option<LinuxContainerResources>,
}

/// Identity of a sandbox (the pod).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxMetadata {
    /// Pod name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Pod UID.
    #[prost(string, tag = "2")]
    pub uid: String,
    /// Pod namespace.
    #[prost(string, tag = "3")]
    pub namespace: String,
    /// Attempt number (sandbox re-creations).
    #[prost(uint32, tag = "4")]
    pub attempt: u32,
}

/// Config of a pod sandbox.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxConfig {
    /// Identity.
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<PodSandboxMetadata>,
    /// Hostname.
    #[prost(string, tag = "2")]
    pub hostname: String,
    /// Directory of the container logs of this pod (on the host).
    #[prost(string, tag = "3")]
    pub log_directory: String,
    /// DNS settings.
    #[prost(message, optional, tag = "4")]
    pub dns_config: Option<DnsConfig>,
    /// Host port mappings.
    #[prost(message, repeated, tag = "5")]
    pub port_mappings: Vec<PortMapping>,
    /// Labels.
    #[prost(map = "string, string", tag = "6")]
    pub labels: HashMap<String, String>,
    /// Annotations.
    #[prost(map = "string, string", tag = "7")]
    pub annotations: HashMap<String, String>,
    /// Linux settings.
    #[prost(message, optional, tag = "8")]
    pub linux: Option<LinuxPodSandboxConfig>,
}

/// `RunPodSandbox` request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RunPodSandboxRequest {
    /// Sandbox config.
    #[prost(message, optional, tag = "1")]
    pub config: Option<PodSandboxConfig>,
    /// Runtime handler (RuntimeClass handler), empty for the default.
    #[prost(string, tag = "2")]
    pub runtime_handler: String,
}

/// `RunPodSandbox` response.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RunPodSandboxResponse {
    /// ID of the new sandbox.
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
}

/// Request naming one sandbox (`StopPodSandbox`, `RemovePodSandbox`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxIdRequest {
    /// Sandbox ID.
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
}

/// An empty response.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

/// `PodSandboxStatus` request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxStatusRequest {
    /// Sandbox ID.
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
    /// Ask for the runtime's extra info.
    #[prost(bool, tag = "2")]
    pub verbose: bool,
}

/// An IP of a pod.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PodIp {
    /// The address.
    #[prost(string, tag = "1")]
    pub ip: String,
}

/// Network status of a sandbox.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxNetworkStatus {
    /// Primary IP.
    #[prost(string, tag = "1")]
    pub ip: String,
    /// Further IPs (dual stack).
    #[prost(message, repeated, tag = "2")]
    pub additional_ips: Vec<PodIp>,
}

/// Status of a sandbox.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxStatus {
    /// Sandbox ID.
    #[prost(string, tag = "1")]
    pub id: String,
    /// Identity.
    #[prost(message, optional, tag = "2")]
    pub metadata: Option<PodSandboxMetadata>,
    /// State ([`PodSandboxState`]).
    #[prost(enumeration = "PodSandboxState", tag = "3")]
    pub state: i32,
    /// Creation time (ns since the epoch).
    #[prost(int64, tag = "4")]
    pub created_at: i64,
    /// Network status.
    #[prost(message, optional, tag = "5")]
    pub network: Option<PodSandboxNetworkStatus>,
    /// Labels.
    #[prost(map = "string, string", tag = "7")]
    pub labels: HashMap<String, String>,
    /// Annotations.
    #[prost(map = "string, string", tag = "8")]
    pub annotations: HashMap<String, String>,
    /// Runtime handler.
    #[prost(string, tag = "9")]
    pub runtime_handler: String,
}

/// `PodSandboxStatus` response.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxStatusResponse {
    /// Status.
    #[prost(message, optional, tag = "1")]
    pub status: Option<PodSandboxStatus>,
    /// Runtime-specific info (verbose).
    #[prost(map = "string, string", tag = "2")]
    pub info: HashMap<String, String>,
}

/// Wrapped sandbox state for filters.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxStateValue {
    /// State ([`PodSandboxState`]).
    #[prost(enumeration = "PodSandboxState", tag = "1")]
    pub state: i32,
}

/// Filter of `ListPodSandbox`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxFilter {
    /// Sandbox ID.
    #[prost(string, tag = "1")]
    pub id: String,
    /// State.
    #[prost(message, optional, tag = "2")]
    pub state: Option<PodSandboxStateValue>,
    /// Labels that must all match.
    #[prost(map = "string, string", tag = "3")]
    pub label_selector: HashMap<String, String>,
}

/// `ListPodSandbox` request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListPodSandboxRequest {
    /// Filter.
    #[prost(message, optional, tag = "1")]
    pub filter: Option<PodSandboxFilter>,
}

/// A sandbox in a list.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandbox {
    /// Sandbox ID.
    #[prost(string, tag = "1")]
    pub id: String,
    /// Identity.
    #[prost(message, optional, tag = "2")]
    pub metadata: Option<PodSandboxMetadata>,
    /// State ([`PodSandboxState`]).
    #[prost(enumeration = "PodSandboxState", tag = "3")]
    pub state: i32,
    /// Creation time (ns).
    #[prost(int64, tag = "4")]
    pub created_at: i64,
    /// Labels.
    #[prost(map = "string, string", tag = "5")]
    pub labels: HashMap<String, String>,
    /// Annotations.
    #[prost(map = "string, string", tag = "6")]
    pub annotations: HashMap<String, String>,
    /// Runtime handler.
    #[prost(string, tag = "7")]
    pub runtime_handler: String,
}

/// `ListPodSandbox` response.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListPodSandboxResponse {
    /// Sandboxes.
    #[prost(message, repeated, tag = "1")]
    pub items: Vec<PodSandbox>,
}

/// An image reference.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageSpec {
    /// Image name, ID or digest reference.
    #[prost(string, tag = "1")]
    pub image: String,
    /// Annotations.
    #[prost(map = "string, string", tag = "2")]
    pub annotations: HashMap<String, String>,
    /// The name as the user wrote it.
    #[prost(string, tag = "18")]
    pub user_specified_image: String,
    /// Runtime handler the image is for.
    #[prost(string, tag = "19")]
    pub runtime_handler: String,
}

/// An environment variable.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    /// Name.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// Capabilities to add and drop.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Capability {
    /// Added capabilities (e.g. `NET_ADMIN`).
    #[prost(string, repeated, tag = "1")]
    pub add_capabilities: Vec<String>,
    /// Dropped capabilities.
    #[prost(string, repeated, tag = "2")]
    pub drop_capabilities: Vec<String>,
}

/// Security settings of a container.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxContainerSecurityContext {
    /// Capabilities.
    #[prost(message, optional, tag = "1")]
    pub capabilities: Option<Capability>,
    /// Privileged.
    #[prost(bool, tag = "2")]
    pub privileged: bool,
    /// Namespaces.
    #[prost(message, optional, tag = "3")]
    pub namespace_options: Option<NamespaceOption>,
    /// UID.
    #[prost(message, optional, tag = "5")]
    pub run_as_user: Option<Int64Value>,
    /// User name (resolved in the image).
    #[prost(string, tag = "6")]
    pub run_as_username: String,
    /// Read-only root filesystem.
    #[prost(bool, tag = "7")]
    pub readonly_rootfs: bool,
    /// Supplemental groups.
    #[prost(int64, repeated, tag = "8")]
    pub supplemental_groups: Vec<i64>,
    /// no_new_privs.
    #[prost(bool, tag = "11")]
    pub no_new_privs: bool,
    /// GID.
    #[prost(message, optional, tag = "12")]
    pub run_as_group: Option<Int64Value>,
    /// Masked paths.
    #[prost(string, repeated, tag = "13")]
    pub masked_paths: Vec<String>,
    /// Read-only paths.
    #[prost(string, repeated, tag = "14")]
    pub readonly_paths: Vec<String>,
    /// Seccomp profile.
    #[prost(message, optional, tag = "15")]
    pub seccomp: Option<SecurityProfile>,
}

/// Linux part of a container config.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxContainerConfig {
    /// Resources.
    #[prost(message, optional, tag = "1")]
    pub resources: Option<LinuxContainerResources>,
    /// Security context.
    #[prost(message, optional, tag = "2")]
    pub security_context: Option<LinuxContainerSecurityContext>,
}

/// Identity of a container in its sandbox.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerMetadata {
    /// Container name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Attempt (restart count).
    #[prost(uint32, tag = "2")]
    pub attempt: u32,
}

/// Config of a container.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerConfig {
    /// Identity.
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<ContainerMetadata>,
    /// Image.
    #[prost(message, optional, tag = "2")]
    pub image: Option<ImageSpec>,
    /// Command (replaces the image's entrypoint).
    #[prost(string, repeated, tag = "3")]
    pub command: Vec<String>,
    /// Arguments (replace the image's cmd).
    #[prost(string, repeated, tag = "4")]
    pub args: Vec<String>,
    /// Working directory.
    #[prost(string, tag = "5")]
    pub working_dir: String,
    /// Environment.
    #[prost(message, repeated, tag = "6")]
    pub envs: Vec<KeyValue>,
    /// Mounts.
    #[prost(message, repeated, tag = "7")]
    pub mounts: Vec<Mount>,
    /// Labels.
    #[prost(map = "string, string", tag = "9")]
    pub labels: HashMap<String, String>,
    /// Annotations.
    #[prost(map = "string, string", tag = "10")]
    pub annotations: HashMap<String, String>,
    /// Log path relative to the sandbox's log directory.
    #[prost(string, tag = "11")]
    pub log_path: String,
    /// Keep stdin open.
    #[prost(bool, tag = "12")]
    pub stdin: bool,
    /// Close stdin after the first attach ends.
    #[prost(bool, tag = "13")]
    pub stdin_once: bool,
    /// Allocate a TTY.
    #[prost(bool, tag = "14")]
    pub tty: bool,
    /// Linux settings.
    #[prost(message, optional, tag = "15")]
    pub linux: Option<LinuxContainerConfig>,
}

/// `CreateContainer` request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateContainerRequest {
    /// Sandbox to create the container in.
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
    /// Container config.
    #[prost(message, optional, tag = "2")]
    pub config: Option<ContainerConfig>,
    /// Config the sandbox was created with.
    #[prost(message, optional, tag = "3")]
    pub sandbox_config: Option<PodSandboxConfig>,
}

/// `CreateContainer` response.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateContainerResponse {
    /// ID of the new container.
    #[prost(string, tag = "1")]
    pub container_id: String,
}

/// Request naming one container (`StartContainer`, `RemoveContainer`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerIdRequest {
    /// Container ID.
    #[prost(string, tag = "1")]
    pub container_id: String,
}

/// `StopContainer` request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StopContainerRequest {
    /// Container ID.
    #[prost(string, tag = "1")]
    pub container_id: String,
    /// Seconds between SIGTERM and SIGKILL.
    #[prost(int64, tag = "2")]
    pub timeout: i64,
}

/// Wrapped container state for filters.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerStateValue {
    /// State ([`ContainerState`]).
    #[prost(enumeration = "ContainerState", tag = "1")]
    pub state: i32,
}

/// Filter of `ListContainers`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerFilter {
    /// Container ID.
    #[prost(string, tag = "1")]
    pub id: String,
    /// State.
    #[prost(message, optional, tag = "2")]
    pub state: Option<ContainerStateValue>,
    /// Sandbox ID.
    #[prost(string, tag = "3")]
    pub pod_sandbox_id: String,
    /// Labels that must all match.
    #[prost(map = "string, string", tag = "4")]
    pub label_selector: HashMap<String, String>,
}

/// `ListContainers` request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListContainersRequest {
    /// Filter.
    #[prost(message, optional, tag = "1")]
    pub filter: Option<ContainerFilter>,
}

/// A container in a list.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Container {
    /// Container ID.
    #[prost(string, tag = "1")]
    pub id: String,
    /// Sandbox ID.
    #[prost(string, tag = "2")]
    pub pod_sandbox_id: String,
    /// Identity.
    #[prost(message, optional, tag = "3")]
    pub metadata: Option<ContainerMetadata>,
    /// Image spec.
    #[prost(message, optional, tag = "4")]
    pub image: Option<ImageSpec>,
    /// Image reference (digest or ID).
    #[prost(string, tag = "5")]
    pub image_ref: String,
    /// State ([`ContainerState`]).
    #[prost(enumeration = "ContainerState", tag = "6")]
    pub state: i32,
    /// Creation time (ns).
    #[prost(int64, tag = "7")]
    pub created_at: i64,
    /// Labels.
    #[prost(map = "string, string", tag = "8")]
    pub labels: HashMap<String, String>,
    /// Annotations.
    #[prost(map = "string, string", tag = "9")]
    pub annotations: HashMap<String, String>,
}

/// `ListContainers` response.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListContainersResponse {
    /// Containers.
    #[prost(message, repeated, tag = "1")]
    pub containers: Vec<Container>,
}

/// `ContainerStatus` request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerStatusRequest {
    /// Container ID.
    #[prost(string, tag = "1")]
    pub container_id: String,
    /// Ask for the runtime's extra info.
    #[prost(bool, tag = "2")]
    pub verbose: bool,
}

/// Status of a container.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerStatus {
    /// Container ID.
    #[prost(string, tag = "1")]
    pub id: String,
    /// Identity.
    #[prost(message, optional, tag = "2")]
    pub metadata: Option<ContainerMetadata>,
    /// State ([`ContainerState`]).
    #[prost(enumeration = "ContainerState", tag = "3")]
    pub state: i32,
    /// Creation time (ns).
    #[prost(int64, tag = "4")]
    pub created_at: i64,
    /// Start time (ns).
    #[prost(int64, tag = "5")]
    pub started_at: i64,
    /// Exit time (ns).
    #[prost(int64, tag = "6")]
    pub finished_at: i64,
    /// Exit code.
    #[prost(int32, tag = "7")]
    pub exit_code: i32,
    /// Image spec.
    #[prost(message, optional, tag = "8")]
    pub image: Option<ImageSpec>,
    /// Image reference.
    #[prost(string, tag = "9")]
    pub image_ref: String,
    /// Brief reason (e.g. `Completed`, `Error`, `OOMKilled`).
    #[prost(string, tag = "10")]
    pub reason: String,
    /// Message.
    #[prost(string, tag = "11")]
    pub message: String,
    /// Labels.
    #[prost(map = "string, string", tag = "12")]
    pub labels: HashMap<String, String>,
    /// Annotations.
    #[prost(map = "string, string", tag = "13")]
    pub annotations: HashMap<String, String>,
    /// Mounts.
    #[prost(message, repeated, tag = "14")]
    pub mounts: Vec<Mount>,
    /// Absolute log path.
    #[prost(string, tag = "15")]
    pub log_path: String,
}

/// `ContainerStatus` response.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerStatusResponse {
    /// Status.
    #[prost(message, optional, tag = "1")]
    pub status: Option<ContainerStatus>,
    /// Runtime-specific info (verbose).
    #[prost(map = "string, string", tag = "2")]
    pub info: HashMap<String, String>,
}

/// `ExecSync` request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExecSyncRequest {
    /// Container ID.
    #[prost(string, tag = "1")]
    pub container_id: String,
    /// Command.
    #[prost(string, repeated, tag = "2")]
    pub cmd: Vec<String>,
    /// Timeout in seconds (0: none).
    #[prost(int64, tag = "3")]
    pub timeout: i64,
}

/// `ExecSync` response.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExecSyncResponse {
    /// Standard output.
    #[prost(bytes = "vec", tag = "1")]
    pub stdout: Vec<u8>,
    /// Standard error.
    #[prost(bytes = "vec", tag = "2")]
    pub stderr: Vec<u8>,
    /// Exit code.
    #[prost(int32, tag = "3")]
    pub exit_code: i32,
}

/// Filter of `ListImages`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageFilter {
    /// Image to match.
    #[prost(message, optional, tag = "1")]
    pub image: Option<ImageSpec>,
}

/// `ListImages` request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListImagesRequest {
    /// Filter.
    #[prost(message, optional, tag = "1")]
    pub filter: Option<ImageFilter>,
}

/// An image in the runtime's store.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Image {
    /// Image ID (config digest).
    #[prost(string, tag = "1")]
    pub id: String,
    /// Tags (`repo:tag`).
    #[prost(string, repeated, tag = "2")]
    pub repo_tags: Vec<String>,
    /// Digests (`repo@sha256:...`).
    #[prost(string, repeated, tag = "3")]
    pub repo_digests: Vec<String>,
    /// Size in bytes.
    #[prost(uint64, tag = "4")]
    pub size: u64,
    /// UID of the image's user, when numeric.
    #[prost(message, optional, tag = "5")]
    pub uid: Option<Int64Value>,
    /// User name of the image's user, when not numeric.
    #[prost(string, tag = "6")]
    pub username: String,
    /// Spec.
    #[prost(message, optional, tag = "7")]
    pub spec: Option<ImageSpec>,
    /// Pinned (never garbage collected).
    #[prost(bool, tag = "8")]
    pub pinned: bool,
}

/// `ListImages` response.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListImagesResponse {
    /// Images.
    #[prost(message, repeated, tag = "1")]
    pub images: Vec<Image>,
}

/// `ImageStatus` request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageStatusRequest {
    /// Image.
    #[prost(message, optional, tag = "1")]
    pub image: Option<ImageSpec>,
    /// Ask for the runtime's extra info.
    #[prost(bool, tag = "2")]
    pub verbose: bool,
}

/// `ImageStatus` response.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageStatusResponse {
    /// The image, absent when not present in the store.
    #[prost(message, optional, tag = "1")]
    pub image: Option<Image>,
    /// Runtime-specific info (verbose).
    #[prost(map = "string, string", tag = "2")]
    pub info: HashMap<String, String>,
}

/// Registry credentials of a pull.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthConfig {
    /// User name.
    #[prost(string, tag = "1")]
    pub username: String,
    /// Password.
    #[prost(string, tag = "2")]
    pub password: String,
    /// base64 `user:password`.
    #[prost(string, tag = "3")]
    pub auth: String,
    /// Registry address.
    #[prost(string, tag = "4")]
    pub server_address: String,
    /// Identity token.
    #[prost(string, tag = "5")]
    pub identity_token: String,
    /// Registry token.
    #[prost(string, tag = "6")]
    pub registry_token: String,
}

/// `PullImage` request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PullImageRequest {
    /// Image.
    #[prost(message, optional, tag = "1")]
    pub image: Option<ImageSpec>,
    /// Credentials.
    #[prost(message, optional, tag = "2")]
    pub auth: Option<AuthConfig>,
    /// Sandbox the image is for.
    #[prost(message, optional, tag = "3")]
    pub sandbox_config: Option<PodSandboxConfig>,
}

/// `PullImage` response.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PullImageResponse {
    /// Reference of the pulled image.
    #[prost(string, tag = "1")]
    pub image_ref: String,
}

/// `RemoveImage` request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RemoveImageRequest {
    /// Image.
    #[prost(message, optional, tag = "1")]
    pub image: Option<ImageSpec>,
}

/// `Status` request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatusRequest {
    /// Ask for the runtime's extra info.
    #[prost(bool, tag = "1")]
    pub verbose: bool,
}

/// A runtime condition (`RuntimeReady`, `NetworkReady`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RuntimeCondition {
    /// Type.
    #[prost(string, tag = "1")]
    pub r#type: String,
    /// True when the condition holds.
    #[prost(bool, tag = "2")]
    pub status: bool,
    /// Reason.
    #[prost(string, tag = "3")]
    pub reason: String,
    /// Message.
    #[prost(string, tag = "4")]
    pub message: String,
}

/// Runtime conditions.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RuntimeStatus {
    /// Conditions.
    #[prost(message, repeated, tag = "1")]
    pub conditions: Vec<RuntimeCondition>,
}

/// `Status` response.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatusResponse {
    /// Conditions.
    #[prost(message, optional, tag = "1")]
    pub status: Option<RuntimeStatus>,
    /// Runtime-specific info (verbose).
    #[prost(map = "string, string", tag = "2")]
    pub info: HashMap<String, String>,
}

/// `Exec` request: prepares a streaming exec and returns its URL.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExecRequest {
    /// Container ID.
    #[prost(string, tag = "1")]
    pub container_id: String,
    /// Command.
    #[prost(string, repeated, tag = "2")]
    pub cmd: Vec<String>,
    /// Whether to run the command in a TTY.
    #[prost(bool, tag = "3")]
    pub tty: bool,
    /// Whether to stream stdin.
    #[prost(bool, tag = "4")]
    pub stdin: bool,
    /// Whether to stream stdout.
    #[prost(bool, tag = "5")]
    pub stdout: bool,
    /// Whether to stream stderr.
    #[prost(bool, tag = "6")]
    pub stderr: bool,
}

/// `Exec` response.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExecResponse {
    /// The streaming server URL.
    #[prost(string, tag = "1")]
    pub url: String,
}

/// `Attach` request: prepares a streaming attach and returns its URL.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttachRequest {
    /// Container ID.
    #[prost(string, tag = "1")]
    pub container_id: String,
    /// Whether to stream stdin.
    #[prost(bool, tag = "2")]
    pub stdin: bool,
    /// Whether the container has a TTY.
    #[prost(bool, tag = "3")]
    pub tty: bool,
    /// Whether to stream stdout.
    #[prost(bool, tag = "4")]
    pub stdout: bool,
    /// Whether to stream stderr.
    #[prost(bool, tag = "5")]
    pub stderr: bool,
}

/// `Attach` response.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttachResponse {
    /// The streaming server URL.
    #[prost(string, tag = "1")]
    pub url: String,
}

/// `PortForward` request: prepares a streaming port forward and returns its URL.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PortForwardRequest {
    /// Sandbox ID.
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
    /// Ports to forward.
    #[prost(int32, repeated, tag = "2")]
    pub port: Vec<i32>,
}

/// `PortForward` response.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PortForwardResponse {
    /// The streaming server URL.
    #[prost(string, tag = "1")]
    pub url: String,
}
