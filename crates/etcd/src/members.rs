//! etcd's Cluster API: list, add and remove members.

use std::path::PathBuf;
use std::time::Duration;

use http::uri::PathAndQuery;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::proto::{self, path};
use crate::EtcdError;

/// Timeout of one call.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a MemberAdd refused for the cluster's health is retried.
const ADD_RETRY_FOR: Duration = Duration::from_secs(20);

/// MemberAdd refusals that pass once the cluster has settled.
fn retryable_add(message: &str) -> bool {
    message.contains("unhealthy cluster") || message.contains("not enough started members")
}

/// Client TLS files (the etcd client certificate issued by the cluster CA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// CA of the members' serving certificates.
    pub ca_file: PathBuf,
    /// Client certificate.
    pub cert_file: PathBuf,
    /// Its key.
    pub key_file: PathBuf,
}

/// A member as etcd reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// etcd's member id.
    pub id: u64,
    /// Its name (empty until a member added by MemberAdd has started).
    pub name: String,
    /// Its peer URLs.
    pub peer_urls: Vec<String>,
    /// Its client URLs (empty until it has started).
    pub client_urls: Vec<String>,
}

impl From<proto::Member> for Member {
    fn from(m: proto::Member) -> Self {
        Member {
            id: m.id,
            name: m.name,
            peer_urls: m.peer_urls,
            client_urls: m.client_urls,
        }
    }
}

/// A client of etcd's Cluster API on some members' client URLs; calls go to each
/// endpoint in turn until one answers.
#[derive(Clone)]
pub struct ClusterClient {
    channels: Vec<(String, Channel)>,
}

impl std::fmt::Debug for ClusterClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<&str> = self.channels.iter().map(|(u, _)| u.as_str()).collect();
        f.debug_struct("ClusterClient")
            .field("endpoints", &urls)
            .finish()
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>, EtcdError> {
    std::fs::read(path).map_err(|e| EtcdError::Tls(format!("{}: {e}", path.display())))
}

impl ClusterClient {
    /// A client of `endpoints` (`https://host:port`), connecting lazily.
    pub fn new(endpoints: &[String], tls: &ClientTls) -> Result<ClusterClient, EtcdError> {
        if endpoints.is_empty() {
            return Err(EtcdError::Invalid("no etcd endpoint".into()));
        }
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&tls.ca_file)?))
            .identity(Identity::from_pem(
                read(&tls.cert_file)?,
                read(&tls.key_file)?,
            ));
        let mut channels = Vec::new();
        for url in endpoints {
            let endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| EtcdError::Invalid(format!("endpoint {url:?}: {e}")))?
                .connect_timeout(Duration::from_secs(3))
                .tls_config(config.clone())
                .map_err(|e| EtcdError::Tls(e.to_string()))?;
            channels.push((url.clone(), endpoint.connect_lazy()));
        }
        Ok(ClusterClient { channels })
    }

    async fn call<Req, Resp>(
        &self,
        call: &'static str,
        method: &'static str,
        req: Req,
    ) -> Result<Resp, EtcdError>
    where
        Req: prost::Message + Clone + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let mut last = String::from("no endpoint");
        for (url, channel) in &self.channels {
            match unary::<Req, Resp>(channel, method, req.clone()).await {
                Ok(r) => return Ok(r),
                Err(status) => {
                    // An answer of etcd itself (not a transport failure) is final.
                    let final_answer = !matches!(
                        status.code(),
                        tonic::Code::Unavailable
                            | tonic::Code::Unknown
                            | tonic::Code::DeadlineExceeded
                            | tonic::Code::Cancelled
                    );
                    last = format!("{url}: {}", status.message());
                    if final_answer {
                        break;
                    }
                    tracing::debug!(%url, call, error = %status.message(), "etcd member unreachable; trying the next");
                }
            }
        }
        Err(EtcdError::Call {
            call,
            message: last,
        })
    }

    /// Every member of the cluster.
    pub async fn member_list(&self) -> Result<Vec<Member>, EtcdError> {
        let resp: proto::MemberListResponse = self
            .call(
                "MemberList",
                path::MEMBER_LIST,
                proto::MemberListRequest { linearizable: true },
            )
            .await?;
        Ok(resp.members.into_iter().map(Member::from).collect())
    }

    /// Adds a voting member with `peer_url`; returns it (nameless until it starts) and the
    /// cluster's members, itself included.
    pub async fn member_add(&self, peer_url: &str) -> Result<(Member, Vec<Member>), EtcdError> {
        let resp: proto::MemberAddResponse = self
            .call(
                "MemberAdd",
                path::MEMBER_ADD,
                proto::MemberAddRequest {
                    peer_urls: vec![peer_url.to_string()],
                    is_learner: false,
                },
            )
            .await?;
        let added = resp.member.map(Member::from).ok_or(EtcdError::Call {
            call: "MemberAdd",
            message: "the answer names no member".into(),
        })?;
        Ok((added, resp.members.into_iter().map(Member::from).collect()))
    }

    /// Removes member `id`; returns the remaining members.
    pub async fn member_remove(&self, id: u64) -> Result<Vec<Member>, EtcdError> {
        let resp: proto::MemberRemoveResponse = self
            .call(
                "MemberRemove",
                path::MEMBER_REMOVE,
                proto::MemberRemoveRequest { id },
            )
            .await?;
        Ok(resp.members.into_iter().map(Member::from).collect())
    }

    /// Adds a member `name` at `peer_url` and returns the `--initial-cluster` it must start
    /// with. A member already registered with that peer URL (a join that was interrupted
    /// before its etcd started) is reused rather than added twice.
    pub async fn add_and_describe(&self, name: &str, peer_url: &str) -> Result<String, EtcdError> {
        let members = self.member_list().await?;
        if let Some(existing) = members
            .iter()
            .find(|m| m.peer_urls.iter().any(|u| u == peer_url))
        {
            if !existing.name.is_empty() && existing.name != name {
                return Err(EtcdError::Invalid(format!(
                    "peer URL {peer_url} belongs to member {:?}",
                    existing.name
                )));
            }
            return Ok(crate::initial_cluster(&members, existing.id, name));
        }
        if members.iter().any(|m| m.name == name) {
            return Err(EtcdError::Invalid(format!(
                "an etcd member named {name:?} exists already with another peer URL; \
                 delete that server's Node (or give this server another --node-name)"
            )));
        }
        // etcd refuses a new voting member until this member has been connected to every
        // peer for 5 s (its strict reconfiguration check): wait that out.
        let deadline = std::time::Instant::now() + ADD_RETRY_FOR;
        let (added, members) = loop {
            match self.member_add(peer_url).await {
                Ok(r) => break r,
                Err(EtcdError::Call { message, .. })
                    if retryable_add(&message) && std::time::Instant::now() < deadline =>
                {
                    tracing::debug!(member = name, error = %message, "etcd refuses the new member for now; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        };
        tracing::info!(member = name, id = added.id, %peer_url, "etcd member added");
        Ok(crate::initial_cluster(&members, added.id, name))
    }

    /// Removes the member named `name`, if there is one; returns whether one was removed.
    pub async fn remove_by_name(&self, name: &str) -> Result<bool, EtcdError> {
        let members = self.member_list().await?;
        let Some(m) = members.iter().find(|m| m.name == name) else {
            return Ok(false);
        };
        self.member_remove(m.id).await?;
        tracing::info!(member = name, id = m.id, "etcd member removed");
        Ok(true)
    }
}

async fn unary<Req, Resp>(
    channel: &Channel,
    method: &'static str,
    req: Req,
) -> Result<Resp, tonic::Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::from_error(Box::new(e)))?;
    let mut request = tonic::Request::new(req);
    request.set_timeout(CALL_TIMEOUT);
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    grpc.unary(request, PathAndQuery::from_static(method), codec)
        .await
        .map(tonic::Response::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_health_refusals_are_retried() {
        assert!(retryable_add(
            "https://127.0.0.1:2379: etcdserver: unhealthy cluster"
        ));
        assert!(retryable_add(
            "etcdserver: re-configuration failed due to not enough started members"
        ));
        assert!(!retryable_add("etcdserver: Peer URLs already exists"));
    }

    #[test]
    fn member_conversion_keeps_fields() {
        let m = Member::from(proto::Member {
            id: 9,
            name: "s1".into(),
            peer_urls: vec!["https://10.0.0.1:2380".into()],
            client_urls: vec!["https://10.0.0.1:2379".into()],
            is_learner: false,
        });
        assert_eq!(m.id, 9);
        assert_eq!(m.name, "s1");
        assert_eq!(m.client_urls, vec!["https://10.0.0.1:2379".to_string()]);
    }
}
