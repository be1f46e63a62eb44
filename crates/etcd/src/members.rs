//! etcd's Cluster API: list, add, promote and remove members.
//!
//! A joining member is added as a learner (a non-voting member that receives the log
//! but does not count for quorum) and promoted to a voting member once it has caught up
//! with the leader, as k3s does: adding a voter that has not started yet would change
//! the quorum at once (2 of 2 for the second member), so a slow or failed join could
//! stop the cluster. A learner serves neither MemberList nor MemberPromote, so the
//! voting members promote it ([`ClusterClient::promote_learners`]); etcd 3.4 refuses
//! the promotion until the learner is in sync, so it is retried until it is accepted
//! ([`ClusterClient::promote_when_ready`]); the new member waits for it with etcd's
//! Status ([`ClusterClient::wait_until_voter`]).

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
/// Pause between two MemberPromote attempts.
const PROMOTE_INTERVAL: Duration = Duration::from_millis(500);

/// MemberAdd refusals that pass once the cluster has settled (etcd 3.4 allows one
/// learner at a time: another server's join must finish first).
fn retryable_add(message: &str) -> bool {
    message.contains("unhealthy cluster")
        || message.contains("not enough started members")
        || message.contains("too many learner members")
}

/// What a MemberPromote answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PromoteAnswer {
    /// Not yet: the learner is behind the leader, or the cluster is busy.
    Retry,
    /// The member is a voter already (promoted by an earlier attempt).
    Done,
    /// Any other refusal (no such member, ...).
    Fail,
}

/// Classifies a MemberPromote error message (etcd's texts).
fn promote_answer(message: &str) -> PromoteAnswer {
    if message.contains("in sync with leader")
        || message.contains("unhealthy cluster")
        || message.contains("leader changed")
        || message.contains("no leader")
        || message.contains("request timed out")
        || message.contains("not supported for learner")
    {
        PromoteAnswer::Retry
    } else if message.contains("can only promote a learner member") {
        PromoteAnswer::Done
    } else {
        PromoteAnswer::Fail
    }
}

/// Calls `promote` every `interval` until it succeeds, the member turns out to be a
/// voter already, or `wait` has passed (then the last refusal is the error); retries only the refusals
/// that pass with time ([`promote_answer`]).
async fn retry_promote<F, Fut>(
    mut promote: F,
    wait: Duration,
    interval: Duration,
) -> Result<(), EtcdError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), EtcdError>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let message = match promote().await {
            Ok(()) => return Ok(()),
            Err(EtcdError::Call { message, .. }) => message,
            Err(e) => return Err(e),
        };
        match promote_answer(&message) {
            PromoteAnswer::Done => return Ok(()),
            PromoteAnswer::Retry if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %message, "etcd learner not promoted yet; retrying");
                tokio::time::sleep(interval).await;
            }
            _ => {
                return Err(EtcdError::Call {
                    call: "MemberPromote",
                    message,
                })
            }
        }
    }
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
    /// Whether it is a learner (added, not yet promoted to a voting member).
    pub is_learner: bool,
}

impl From<proto::Member> for Member {
    fn from(m: proto::Member) -> Self {
        Member {
            id: m.id,
            name: m.name,
            peer_urls: m.peer_urls,
            client_urls: m.client_urls,
            is_learner: m.is_learner,
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

    /// Adds a member with `peer_url`, a learner when `is_learner` (else a voting member);
    /// returns it (nameless until it starts) and the cluster's members, itself included.
    pub async fn member_add(
        &self,
        peer_url: &str,
        is_learner: bool,
    ) -> Result<(Member, Vec<Member>), EtcdError> {
        let resp: proto::MemberAddResponse = self
            .call(
                "MemberAdd",
                path::MEMBER_ADD,
                proto::MemberAddRequest {
                    peer_urls: vec![peer_url.to_string()],
                    is_learner,
                },
            )
            .await?;
        let added = resp.member.map(Member::from).ok_or(EtcdError::Call {
            call: "MemberAdd",
            message: "the answer names no member".into(),
        })?;
        Ok((added, resp.members.into_iter().map(Member::from).collect()))
    }

    /// Promotes learner `id` to a voting member (once); returns the members. etcd refuses
    /// while the learner is behind the leader: see [`ClusterClient::promote_when_ready`].
    pub async fn member_promote(&self, id: u64) -> Result<Vec<Member>, EtcdError> {
        let resp: proto::MemberPromoteResponse = self
            .call(
                "MemberPromote",
                path::MEMBER_PROMOTE,
                proto::MemberPromoteRequest { id },
            )
            .await?;
        Ok(resp.members.into_iter().map(Member::from).collect())
    }

    /// Promotes learner `id`, retrying while etcd answers that it has not caught up (or
    /// the cluster is busy) for at most `wait`; a member that is a voter already is
    /// success.
    pub async fn promote_when_ready(&self, id: u64, wait: Duration) -> Result<(), EtcdError> {
        retry_promote(
            || async { self.member_promote(id).await.map(|_| ()) },
            wait,
            PROMOTE_INTERVAL,
        )
        .await
    }

    /// Whether the member answering (the first endpoint that answers) is a learner
    /// (etcd's Status, which a learner serves, unlike MemberList).
    pub async fn is_learner(&self) -> Result<bool, EtcdError> {
        let resp: proto::StatusResponse = self
            .call("Status", path::STATUS, proto::StatusRequest {})
            .await?;
        Ok(resp.is_learner)
    }

    /// Waits until the member answering is a voting member (promoted by the voters'
    /// [`ClusterClient::promote_learners`]), for at most `wait`.
    pub async fn wait_until_voter(&self, wait: Duration) -> Result<(), EtcdError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let last = match self.is_learner().await {
                Ok(false) => return Ok(()),
                Ok(true) => "still a learner".to_string(),
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(EtcdError::Call {
                    call: "Status",
                    message: format!("not promoted to a voting member after {wait:?}: {last}"),
                });
            }
            tokio::time::sleep(PROMOTE_INTERVAL).await;
        }
    }

    /// Run by voting members (as k3s's servers manage learners): promotes every learner
    /// that has started (it has published its name), each retried for at most `wait`
    /// until etcd accepts ([`ClusterClient::promote_when_ready`]). Returns the ids
    /// promoted. Fails when this client's member cannot list members (a learner itself).
    pub async fn promote_learners(&self, wait: Duration) -> Result<Vec<u64>, EtcdError> {
        let members = self.member_list().await?;
        let mut promoted = Vec::new();
        for m in members
            .iter()
            .filter(|m| m.is_learner && !m.name.is_empty())
        {
            match self.promote_when_ready(m.id, wait).await {
                Ok(()) => {
                    tracing::info!(member = %m.name, id = m.id, "etcd learner promoted to a voting member");
                    promoted.push(m.id);
                }
                Err(e) => {
                    tracing::warn!(member = %m.name, id = m.id, error = %e, "etcd learner not promoted yet")
                }
            }
        }
        Ok(promoted)
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
        // Added as a learner (promoted by the voters once it has caught up:
        // `promote_learners`). etcd may refuse for the cluster's health or while another
        // learner is joining: wait that out.
        let deadline = std::time::Instant::now() + ADD_RETRY_FOR;
        let (added, members) = loop {
            match self.member_add(peer_url, true).await {
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
        tracing::info!(member = name, id = added.id, %peer_url, "etcd member added as a learner");
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
        assert!(retryable_add(
            "etcdserver: too many learner members in cluster"
        ));
        assert!(!retryable_add("etcdserver: Peer URLs already exists"));
    }

    #[test]
    fn promote_answers() {
        assert_eq!(
            promote_answer(
                "etcdserver: can only promote a learner member which is in sync with leader"
            ),
            PromoteAnswer::Retry
        );
        assert_eq!(
            promote_answer("etcdserver: can only promote a learner member"),
            PromoteAnswer::Done
        );
        assert_eq!(
            promote_answer("etcdserver: member not found"),
            PromoteAnswer::Fail
        );
    }

    const MS10: Duration = Duration::from_millis(10);

    fn refusal(message: &str) -> EtcdError {
        EtcdError::Call {
            call: "MemberPromote",
            message: message.into(),
        }
    }

    #[tokio::test]
    async fn promote_is_retried_until_etcd_accepts() {
        let mut calls = 0;
        let r = retry_promote(
            || {
                calls += 1;
                let n = calls;
                async move {
                    if n < 4 {
                        Err(refusal("etcdserver: can only promote a learner member which is in sync with leader"))
                    } else {
                        Ok(())
                    }
                }
            },
            Duration::from_secs(60),
            MS10,
        )
        .await;
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(calls, 4);
        // Already a voter: done at once.
        let mut calls = 0;
        retry_promote(
            || {
                calls += 1;
                async { Err(refusal("etcdserver: can only promote a learner member")) }
            },
            Duration::from_secs(60),
            MS10,
        )
        .await
        .unwrap();
        assert_eq!(calls, 1);
    }

    #[tokio::test]
    async fn promote_gives_up_at_the_deadline_or_on_a_final_refusal() {
        let mut calls = 0;
        let err = retry_promote(
            || {
                calls += 1;
                async { Err(refusal("etcdserver: can only promote a learner member which is in sync with leader")) }
            },
            Duration::from_millis(100),
            MS10,
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("in sync"), "{err}");
        // 100 ms at one attempt every 10 ms: about 11 attempts, not forever.
        assert!((5..=12).contains(&calls), "{calls}");
        let mut calls = 0;
        let err = retry_promote(
            || {
                calls += 1;
                async { Err(refusal("etcdserver: member not found")) }
            },
            Duration::from_secs(60),
            MS10,
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("member not found"), "{err}");
        assert_eq!(calls, 1);
    }

    #[test]
    fn member_conversion_keeps_fields() {
        let m = Member::from(proto::Member {
            id: 9,
            name: "s1".into(),
            peer_urls: vec!["https://10.0.0.1:2380".into()],
            client_urls: vec!["https://10.0.0.1:2379".into()],
            is_learner: true,
        });
        assert!(m.is_learner);
        assert_eq!(m.id, 9);
        assert_eq!(m.name, "s1");
        assert_eq!(m.client_urls, vec!["https://10.0.0.1:2379".to_string()]);
    }
}
