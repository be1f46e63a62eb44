//! The DNS server: hickory-server's UDP/TCP machinery with a handler that answers from
//! the current [`Records`](crate::records::Records) and forwards the rest.
//!
//! Per query: a non-QUERY opcode gets NOTIMP, a message without exactly one question
//! FORMERR, a class other than IN (or a zone transfer) REFUSED; otherwise
//! [`Records::resolve`](crate::records::Records::resolve) decides, CNAME chains that leave
//! the cluster are followed through the forwarder (at most
//! [`MAX_CNAME_CHAIN`](crate::records::MAX_CNAME_CHAIN) links), and forwarding failures
//! answer SERVFAIL. hickory-server drops packets shorter than a header and answers
//! undecodable ones with FORMERR. UDP answers are cut to the client's size (512 bytes
//! without EDNS, else its EDNS size, at most 4096) with the TC bit set; TCP answers are
//! whole.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};

use crate::forward::Forwarder;
use crate::records::{Answer, RecordsHandle, Reply, MAX_CNAME_CHAIN};
use crate::DnsError;

/// The largest UDP answer we send, whatever the client advertises.
const MAX_UDP_PAYLOAD: u16 = 4096;
/// How long an idle TCP connection stays open.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Answers queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;

/// The query handler: records first, forwarding for the rest.
#[derive(Clone)]
pub struct Handler {
    records: Arc<RecordsHandle>,
    forwarder: Arc<Forwarder>,
}

impl Handler {
    /// A handler over `records` and `forwarder`.
    pub fn new(records: Arc<RecordsHandle>, forwarder: Arc<Forwarder>) -> Self {
        Handler { records, forwarder }
    }

    /// The full answer to one question, following CNAMEs that leave the records.
    pub async fn lookup(&self, name: &Name, qtype: RecordType, qclass: DNSClass) -> Reply {
        if qclass != DNSClass::IN {
            return Reply::error(ResponseCode::Refused);
        }
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            return Reply::error(ResponseCode::Refused);
        }
        let records = self.records.load();
        let mut chain: Option<Reply> = None;
        let mut current = name.clone();
        let mut answer = records.resolve(&current, qtype);
        for _ in 0..MAX_CNAME_CHAIN {
            match answer {
                Answer::Reply(r) => return merge(chain, r),
                Answer::Forward(upstream) => {
                    return match self
                        .forwarder
                        .forward(&current, qtype, qclass, &upstream)
                        .await
                    {
                        Ok(r) => merge(chain, r),
                        Err(e) => {
                            tracing::debug!(name = %current, %qtype, error = %e, "cluster DNS: forwarding failed");
                            // A CNAME we own is still an answer (CoreDNS returns it alone).
                            chain.unwrap_or_else(|| Reply::error(ResponseCode::ServFail))
                        }
                    };
                }
                Answer::Chase { reply, target } => {
                    match chain.as_mut() {
                        Some(c) => c.answers.extend(reply.answers),
                        None => chain = Some(reply),
                    }
                    current = target;
                    answer = records.resolve(&current, qtype);
                }
            }
        }
        chain.unwrap_or_else(|| Reply::error(ResponseCode::ServFail))
    }

    async fn reply_for(&self, request: &Request) -> Reply {
        if request.metadata.op_code != OpCode::Query {
            return Reply::error(ResponseCode::NotImp);
        }
        let Ok(info) = request.request_info() else {
            return Reply::error(ResponseCode::FormErr);
        };
        let q = info.query;
        self.lookup(q.original().name(), q.query_type(), q.query_class())
            .await
    }
}

/// Appends `next` to a CNAME chain (the chain keeps its flags and NOERROR, as CoreDNS).
fn merge(chain: Option<Reply>, next: Reply) -> Reply {
    let Some(mut c) = chain else { return next };
    if next.answers.is_empty() {
        c.authority = next.authority;
    }
    c.answers.extend(next.answers);
    c.additional.extend(next.additional);
    c
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let reply = self.reply_for(request).await;
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = reply.authoritative;
        metadata.recursion_available = true;
        metadata.response_code = reply.rcode;
        let edns = request.edns.as_ref().map(|e| {
            let mut out = Edns::new();
            out.set_max_payload(e.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            out
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(e) = &edns {
            builder.edns(e);
        }
        let response = builder.build(
            metadata,
            reply.answers.iter(),
            reply.authority.iter(),
            std::iter::empty(),
            reply.additional.iter(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(src = %request.src(), error = %e, "cluster DNS: sending the answer failed");
                let mut m = Metadata::response_from_request(&request.metadata);
                m.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata: m,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

/// A running server (its sockets are bound). Dropping it stops serving.
pub struct DnsServer {
    server: Server<Handler>,
    addrs: Vec<SocketAddr>,
}

impl DnsServer {
    /// The bound addresses, one per listen address (UDP and TCP share each).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Serves until a socket fails for good.
    pub async fn wait(mut self) -> Result<(), DnsError> {
        self.server
            .block_until_done()
            .await
            .map_err(|e| DnsError::Server(e.to_string()))
    }

    /// Stops accepting queries and waits for the tasks to end.
    pub async fn shutdown(mut self) -> Result<(), DnsError> {
        self.server
            .shutdown_gracefully()
            .await
            .map_err(|e| DnsError::Server(e.to_string()))
    }
}

/// Binds UDP and TCP on every `listen` address (port 0: one free port shared by both)
/// and starts serving with `records` and `forwarder`. Needs no Kubernetes client.
pub async fn serve(
    listen: &[SocketAddr],
    records: Arc<RecordsHandle>,
    forwarder: Arc<Forwarder>,
) -> Result<DnsServer, DnsError> {
    if listen.is_empty() {
        return Err(DnsError::NoListen);
    }
    let mut server = Server::new(Handler::new(records, forwarder));
    let mut addrs = Vec::new();
    for addr in listen {
        let (udp, tcp) = bind_pair(*addr).await?;
        addrs.push(udp.local_addr().map_err(|source| DnsError::Bind {
            addr: *addr,
            proto: "udp",
            source,
        })?);
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
    }
    Ok(DnsServer { server, addrs })
}

async fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|source| DnsError::Bind {
                addr,
                proto: "udp",
                source,
            })?;
        let port = udp
            .local_addr()
            .map_err(|source| DnsError::Bind {
                addr,
                proto: "udp",
                source,
            })?
            .port();
        match TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            // The free UDP port is taken for TCP: pick another pair.
            Err(_) if addr.port() == 0 && attempt < 20 => continue,
            Err(source) => {
                return Err(DnsError::Bind {
                    addr,
                    proto: "tcp",
                    source,
                })
            }
        }
    }
}
