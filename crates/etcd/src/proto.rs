//! etcd's v3 Cluster service (`etcdserverpb.Cluster`: MemberAdd, MemberRemove,
//! MemberList, MemberPromote) and the Maintenance service's Status, written by hand with `prost` (field numbers from etcd's `rpc.proto`), so
//! building needs no `protoc`.

/// gRPC method paths.
pub(crate) mod path {
    pub(crate) const MEMBER_ADD: &str = "/etcdserverpb.Cluster/MemberAdd";
    pub(crate) const MEMBER_REMOVE: &str = "/etcdserverpb.Cluster/MemberRemove";
    pub(crate) const MEMBER_LIST: &str = "/etcdserverpb.Cluster/MemberList";
    pub(crate) const MEMBER_PROMOTE: &str = "/etcdserverpb.Cluster/MemberPromote";
    pub(crate) const STATUS: &str = "/etcdserverpb.Maintenance/Status";
}

/// `etcdserverpb.ResponseHeader`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ResponseHeader {
    #[prost(uint64, tag = "1")]
    pub cluster_id: u64,
    #[prost(uint64, tag = "2")]
    pub member_id: u64,
    #[prost(int64, tag = "3")]
    pub revision: i64,
    #[prost(uint64, tag = "4")]
    pub raft_term: u64,
}

/// `etcdserverpb.Member`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Member {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, repeated, tag = "3")]
    pub peer_urls: Vec<String>,
    #[prost(string, repeated, tag = "4")]
    pub client_urls: Vec<String>,
    #[prost(bool, tag = "5")]
    pub is_learner: bool,
}

/// `etcdserverpb.MemberAddRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MemberAddRequest {
    #[prost(string, repeated, tag = "1")]
    pub peer_urls: Vec<String>,
    #[prost(bool, tag = "2")]
    pub is_learner: bool,
}

/// `etcdserverpb.MemberAddResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MemberAddResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(message, optional, tag = "2")]
    pub member: Option<Member>,
    #[prost(message, repeated, tag = "3")]
    pub members: Vec<Member>,
}

/// `etcdserverpb.MemberRemoveRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MemberRemoveRequest {
    #[prost(uint64, tag = "1")]
    pub id: u64,
}

/// `etcdserverpb.MemberRemoveResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MemberRemoveResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(message, repeated, tag = "2")]
    pub members: Vec<Member>,
}

/// `etcdserverpb.MemberListRequest` (`linearizable` is etcd 3.5's; 3.4 ignores it).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MemberListRequest {
    #[prost(bool, tag = "1")]
    pub linearizable: bool,
}

/// `etcdserverpb.MemberListResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MemberListResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(message, repeated, tag = "2")]
    pub members: Vec<Member>,
}

/// `etcdserverpb.MemberPromoteRequest` (etcd 3.4+).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MemberPromoteRequest {
    #[prost(uint64, tag = "1")]
    pub id: u64,
}

/// `etcdserverpb.MemberPromoteResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MemberPromoteResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(message, repeated, tag = "2")]
    pub members: Vec<Member>,
}

/// `etcdserverpb.StatusRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StatusRequest {}

/// `etcdserverpb.StatusResponse` (the fields used here; a learner answers it).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StatusResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(string, tag = "2")]
    pub version: String,
    #[prost(uint64, tag = "4")]
    pub leader: u64,
    #[prost(bool, tag = "10")]
    pub is_learner: bool,
}
