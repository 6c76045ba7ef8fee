//! Agent-to-agent traffic (SPEC §1, `proglog.internal.v1.Raft` on the RPC port):
//! [`PeerTransport`], the replicated log's [`Transport`] over gRPC, and the
//! service that receives it ([`PeerTransport::service`], mounted by the caller
//! as an [`ExtraService`] needing action `replicate`).
//!
//! Bounds: each peer has one sending task fed by a queue of at most
//! [`PEER_QUEUE_BYTES`]; when it is full (a slow or unreachable peer) messages are
//! dropped and reported unreachable, so the Raft thread never waits and other
//! peers never notice. Forwarded appends travel on one ordered stream per leader
//! (at most [`FORWARD_QUEUE`] waiting). Snapshot records stream in chunks of
//! [`FETCH_CHUNK_BYTES`]. Connections back off from 100 ms to 2 s between attempts.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use bytes::Bytes;
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer};
use opentelemetry::{KeyValue, global};
use proglog_api::internal::v1::raft_client::RaftClient;
use proglog_api::internal::v1::raft_server::{Raft, RaftServer};
use proglog_api::internal::v1::{
    Ack, Batch, Chunk, CommandRequest, FetchRequest, ForwardRequest, ForwardResponse, Group,
};
use proglog_raft::{
    Append, ClusterId, CommitLog, FetchSink, GroupId, LogError, MAX_RECORD_BYTES, Mailbox, Member, Network,
    PeerId, PendingAppend, PendingCommand, RaftLog, RaftMessage, RaftMessageType, Reason, Refusal,
    Rejections, StatusWatch, Transport, decode_message, encode_message,
};
use slog::Logger;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::listener::{Limits, Throttle};
use crate::{ExtraService, action, status};

/// Encoded Raft messages queued for one peer, at most.
pub const PEER_QUEUE_BYTES: usize = 16 << 20;
/// Forwarded appends waiting for the leader's answer, at most.
pub const FORWARD_QUEUE: usize = 1024;
/// Record bytes per snapshot chunk, about.
pub const FETCH_CHUNK_BYTES: u64 = 1 << 20;
/// Longest internal request message: a batch of Raft messages (a batch holds
/// more than one only up to [`BATCH_BYTES`]; one message is at most raft's 1 MiB
/// plus one entry, itself at most a 1 MiB merged batch or one record) or a
/// forwarded append (one record). Records of any peer's size fit, whatever this
/// node's own `max-record-bytes`: [`MAX_RECORD_BYTES`] is the cluster's ceiling.
pub const MAX_MESSAGE_BYTES: usize = MAX_RECORD_BYTES as usize + (4 << 20);

/// Raft messages share a batch up to this many encoded bytes.
const BATCH_BYTES: usize = 1 << 20;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// How a node dials its peers.
#[derive(Clone)]
pub enum PeerTls {
    /// Plaintext (loopback-only clusters).
    Plaintext,
    /// Mutual TLS with this client config (the peer identity, trusting the CA
    /// that signed the other agents' server certificates); a peer's certificate
    /// must name the host of its RPC address.
    Tls(Arc<rustls::ClientConfig>),
    /// [`PeerTls::Tls`], where a peer's certificate must name its node instead
    /// (CN or DNS SAN; `--peer-tls-require-node-name`) — and a caller's
    /// certificate the node it claims to be, on every call.
    NamedTls(Arc<rustls::ClientConfig>),
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Plaintext => "Plaintext",
            Self::Tls(_) => "Tls",
            Self::NamedTls(_) => "NamedTls",
        })
    }
}

/// Messages of one group for one peer, as queued: raft-rs's, and encoded.
type Queued = (GroupId, Vec<RaftMessage>, Vec<Bytes>);

struct Peer {
    addr: String,
    queue: mpsc::UnboundedSender<Queued>,
    queued: Arc<AtomicUsize>,
}

/// What the transport knows of a group's node it carries traffic for, once
/// attached.
#[derive(Clone)]
struct Bound {
    log: Arc<RaftLog>,
    mailbox: Mailbox,
    /// Its identity (stamped on every call) and configuration.
    status: StatusWatch,
    rejections: Arc<Rejections>,
}

/// A group as calls name it (none: the default log's).
fn wire_group(group: &GroupId) -> Option<Group> {
    (!group.is_default()).then(|| Group { log: group.log.clone(), incarnation: group.incarnation })
}

fn group_of(group: Option<Group>) -> GroupId {
    group.map(|group| GroupId { log: group.log, incarnation: group.incarnation }).unwrap_or_default()
}

/// Where peers are reached.
#[derive(Default)]
struct Addresses {
    /// The configuration's members: authoritative.
    members: HashMap<u64, String>,
    /// Callers not (yet) in the configuration (a new node answering the
    /// leader that added it before it has the configuration), at most
    /// [`LEARNED_ADDRESSES`]: a caller can never redirect traffic for a member.
    learned: HashMap<u64, String>,
    /// Node names, by id (their certificates name them under `NamedTls`).
    names: HashMap<u64, String>,
}

/// Addresses learned from callers outside the configuration, at most.
const LEARNED_ADDRESSES: usize = 64;

struct Inner {
    tls: PeerTls,
    runtime: tokio::runtime::Handle,
    logger: Logger,
    /// The nodes of each group this node is in (the default log's first of all).
    groups: RwLock<HashMap<GroupId, Bound>>,
    addresses: Mutex<Addresses>,
    peers: Mutex<HashMap<u64, Peer>>,
    forwarders: Mutex<HashMap<u64, (String, mpsc::Sender<Forwarded>)>>,
    /// Set by [`PeerTransport::shutdown`]: every stream ends.
    closing: watch::Sender<bool>,
    /// Rate limits of the log lines about refused calls, by reason.
    throttles: [Throttle; Reason::ALL.len()],
}

type Forwarded = (ForwardRequest, oneshot::Sender<Result<u64, LogError>>);

/// The replicated log's transport over gRPC. Create it, open the [`RaftLog`]
/// with it, then [`PeerTransport::bind`] the log.
#[derive(Clone)]
pub struct PeerTransport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PeerTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTransport").finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl PeerTransport {
    /// A transport spawning its tasks on `runtime` (it is called from the Raft
    /// thread, outside any runtime).
    pub fn new(tls: PeerTls, runtime: tokio::runtime::Handle, logger: Logger) -> Self {
        Self {
            inner: Arc::new(Inner {
                tls,
                runtime,
                logger,
                groups: RwLock::default(),
                addresses: Mutex::default(),
                peers: Mutex::default(),
                forwarders: Mutex::default(),
                closing: watch::Sender::new(false),
                throttles: Default::default(),
            }),
        }
    }

    /// Carries traffic for `log` (the default log, opened with this
    /// transport): what peers send goes to its mailbox, and calls name it as
    /// its peers know it. Named logs are attached by [`Network::attach`].
    pub fn bind(&self, log: &Arc<RaftLog>) {
        Network::attach(self, log);
    }

    /// Ends every stream, both ways, so that the server's graceful shutdown is
    /// not held by peers' long-lived calls; call it when shutdown begins. The
    /// transport sends nothing afterwards.
    pub fn shutdown(&self) {
        self.inner.closing.send_replace(true);
        lock(&self.inner.peers).clear();
        lock(&self.inner.forwarders).clear();
    }

    /// `limits` with the internal service's calls given budgets of their own
    /// (see [`Limits::peer_path_prefix`]): clients cannot starve replication,
    /// and peers cannot exhaust what clients need.
    pub fn reserve(limits: Limits) -> Limits {
        use tonic::server::NamedService;
        Limits {
            peer_path_prefix: Some(format!("/{}/", <RaftServer<PeerService> as NamedService>::NAME)),
            peer_request_buffer_bytes: limits.peer_request_buffer_bytes.max(4 * MAX_MESSAGE_BYTES),
            ..limits
        }
    }

    /// Under [`PeerTls::NamedTls`], whether the agent at `rpc_addr` holds a
    /// certificate naming node `name` (a TLS handshake, verifying that name):
    /// what a leader checks before it adds a node under a name, or moves a
    /// member to another address. Without it, always.
    pub async fn verify_node(&self, name: &str, rpc_addr: &str) -> Result<(), String> {
        let PeerTls::NamedTls(config) = &self.inner.tls else { return Ok(()) };
        let mut connector =
            proglog_tls::Connector::tls(Arc::clone(config), name).map_err(|error| error.to_string())?;
        let uri: http::Uri =
            format!("http://{rpc_addr}").parse().map_err(|error| format!("{rpc_addr}: {error}"))?;
        let handshake = tower::Service::call(&mut connector, uri);
        match tokio::time::timeout(Duration::from_secs(5), handshake).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("no TLS handshake within 5 s".into()),
        }
    }

    /// Counts (and says, at a bounded rate) a node refused for `reason`.
    pub fn refuse(&self, reason: Reason, node: &str, detail: &str) {
        self.inner.refuse(reason, node, detail);
    }

    /// The internal service, answering for every attached group; mount it on
    /// the RPC port.
    pub fn service(&self) -> ExtraService {
        let limit = MAX_MESSAGE_BYTES;
        let server = RaftServer::new(PeerService { inner: Arc::clone(&self.inner) })
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit);
        ExtraService::new(server, action::REPLICATE, limit).streaming_requests(&["Messages", "Forward"])
    }
}

/// The transport of one named log's group: [`PeerTransport`]'s connections,
/// every call naming the group.
struct GroupTransport {
    inner: Arc<Inner>,
    group: GroupId,
}

impl Network for PeerTransport {
    fn transport(&self, _node: &str, group: &GroupId) -> Arc<dyn Transport> {
        if group.is_default() {
            return Arc::new(self.clone());
        }
        Arc::new(GroupTransport { inner: Arc::clone(&self.inner), group: group.clone() })
    }

    fn attach(&self, log: &Arc<RaftLog>) {
        let bound = Bound {
            log: Arc::clone(log),
            mailbox: log.mailbox(),
            status: log.watch_status(),
            rejections: Arc::clone(log.rejections()),
        };
        write(&self.inner.groups).insert(log.group().clone(), bound);
    }

    fn detach(&self, log: &RaftLog) {
        write(&self.inner.groups).remove(log.group());
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Inner {
    /// The node of `group` on this side, if attached.
    fn group(&self, group: &GroupId) -> Option<Bound> {
        read(&self.groups).get(group).cloned()
    }

    fn mailbox(&self, group: &GroupId) -> Option<Mailbox> {
        read(&self.groups).get(group).map(|bound| bound.mailbox.clone())
    }

    /// A call to a peer, naming this node in its metadata.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(bound) = self.group(&GroupId::default()) {
            identify(request.metadata_mut(), &bound.status.identity());
        }
        request
    }

    /// Counts a refused call (or message) and says so, at most once per reason
    /// every ten seconds.
    fn refuse(&self, reason: Reason, caller: &str, detail: &str) {
        if let Some(bound) = self.group(&GroupId::default()) {
            let before = bound.rejections.count(reason);
            self.throttles[reason as usize].hit(|occurrences| {
                slog::warn!(self.logger, "refused a peer's call"; "reason" => reason.as_str(), "caller" => caller,
                    "detail" => detail, "occurrences" => occurrences, "refused_so_far" => before + 1);
            });
        }
    }

    fn unreachable(&self, group: &GroupId, to: u64, messages: &[RaftMessage]) {
        if let Some(mailbox) = self.mailbox(group) {
            mailbox.unreachable(to);
            for message in messages.iter().filter(|m| is_snapshot(m)) {
                mailbox.snapshot_status(message.to, false);
            }
        }
    }

    /// A channel to node `to` at `addr`.
    fn channel(&self, to: u64, addr: &str) -> Result<Channel, String> {
        let connector = match &self.tls {
            PeerTls::Plaintext => proglog_tls::Connector::plaintext(),
            PeerTls::Tls(config) => {
                let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                proglog_tls::Connector::tls(Arc::clone(config), host).map_err(|error| error.to_string())?
            }
            PeerTls::NamedTls(config) => {
                let name = lock(&self.addresses).names.get(&to).cloned();
                let name = name.ok_or_else(|| format!("the name of node {to} is unknown"))?;
                proglog_tls::Connector::tls(Arc::clone(config), &name).map_err(|error| error.to_string())?
            }
        };
        let endpoint = connector
            .endpoint(addr)
            .map_err(|error| error.to_string())?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10));
        Ok(connector.connect_lazy(&endpoint))
    }

    fn address(&self, id: u64) -> Option<String> {
        let addresses = lock(&self.addresses);
        addresses.members.get(&id).or_else(|| addresses.learned.get(&id)).cloned()
    }

    /// Remembers where a caller outside the configuration is reached.
    fn learn(&self, caller: &PeerId) {
        let mut addresses = lock(&self.addresses);
        if addresses.members.contains_key(&caller.member_id) {
            return;
        }
        if addresses.learned.len() >= LEARNED_ADDRESSES && !addresses.learned.contains_key(&caller.member_id)
        {
            addresses.learned.clear();
        }
        addresses.learned.insert(caller.member_id, caller.rpc_addr.clone());
        addresses.names.insert(caller.member_id, caller.name.clone());
    }
}

/// Metadata keys naming the caller of an agent-to-agent call.
const NODE_NAME: &str = "proglog-node-name";
const MEMBER_ID: &str = "proglog-member-id";
const CLUSTER_ID: &str = "proglog-cluster-id";
const RPC_ADDR: &str = "proglog-rpc-addr";

/// Names `me` in a call's metadata.
fn identify(metadata: &mut tonic::metadata::MetadataMap, me: &PeerId) {
    let values = [
        (NODE_NAME, me.name.clone()),
        (MEMBER_ID, me.member_id.to_string()),
        (RPC_ADDR, me.rpc_addr.clone()),
        (CLUSTER_ID, me.cluster_id.map(|id| id.to_string()).unwrap_or_default()),
    ];
    for (key, value) in values {
        if !value.is_empty()
            && let Ok(value) = value.parse()
        {
            metadata.insert(key, value);
        }
    }
}

/// Who a call's metadata says its caller is.
fn caller(metadata: &tonic::metadata::MetadataMap) -> Result<PeerId, String> {
    let text = |key: &str| metadata.get(key).and_then(|value| value.to_str().ok()).unwrap_or_default();
    let name = text(NODE_NAME);
    let member_id = text(MEMBER_ID).parse::<u64>().ok().filter(|id| *id != 0);
    let (Some(member_id), false) = (member_id, name.is_empty()) else {
        return Err(format!("the call does not name its sender ({NODE_NAME}, {MEMBER_ID})"));
    };
    let cluster_id = match text(CLUSTER_ID) {
        "" => None,
        id => Some(id.parse::<ClusterId>().map_err(|error| error.to_string())?),
    };
    Ok(PeerId { name: name.to_owned(), member_id, cluster_id, rpc_addr: text(RPC_ADDR).to_owned() })
}

fn is_snapshot(message: &RaftMessage) -> bool {
    message.get_msg_type() == RaftMessageType::MsgSnapshot
}

impl Transport for PeerTransport {
    fn set_members(&self, members: &[Member]) {
        self.inner.set_members(members);
    }

    fn send(&self, to: u64, messages: Vec<RaftMessage>) {
        self.inner.send(&GroupId::default(), to, messages);
    }

    fn fetch(&self, from: u64, start: u64, end: u64, sink: FetchSink) {
        Inner::fetch(&self.inner, GroupId::default(), from, start, end, sink);
    }

    fn forward(&self, to: u64, append: Append) -> PendingAppend {
        Inner::forward(&self.inner, &GroupId::default(), to, append)
    }

    fn command(&self, to: u64, command: Vec<u8>) -> PendingCommand {
        Inner::command(&self.inner, GroupId::default(), to, command)
    }
}

impl Transport for GroupTransport {
    /// Addresses come from the default log's configuration (every member of a
    /// named log's group is one of the cluster's, or was until its leader
    /// removes it).
    fn set_members(&self, _members: &[Member]) {}

    fn send(&self, to: u64, messages: Vec<RaftMessage>) {
        self.inner.send(&self.group, to, messages);
    }

    fn fetch(&self, from: u64, start: u64, end: u64, sink: FetchSink) {
        Inner::fetch(&self.inner, self.group.clone(), from, start, end, sink);
    }

    fn forward(&self, to: u64, append: Append) -> PendingAppend {
        Inner::forward(&self.inner, &self.group, to, append)
    }

    fn command(&self, to: u64, command: Vec<u8>) -> PendingCommand {
        Inner::command(&self.inner, self.group.clone(), to, command)
    }
}

impl Inner {
    fn set_members(&self, members: &[Member]) {
        let mut addresses = lock(&self.addresses);
        let Addresses { members: known, learned, names } = &mut *addresses;
        *known = members.iter().map(|member| (member.id, member.rpc_addr.clone())).collect();
        learned.retain(|id, _| !known.contains_key(id));
        names.retain(|id, _| learned.contains_key(id));
        names.extend(members.iter().map(|member| (member.id, member.name.clone())));
    }

    fn send(self: &Arc<Self>, group: &GroupId, to: u64, messages: Vec<RaftMessage>) {
        let inner = self;
        if *inner.closing.borrow() {
            return;
        }
        let Some(addr) = inner.address(to) else {
            return inner.unreachable(group, to, &messages);
        };
        let mut encoded = Vec::with_capacity(messages.len());
        for message in &messages {
            match encode_message(message) {
                Ok(bytes) => encoded.push(bytes),
                Err(error) => {
                    slog::error!(inner.logger, "cannot encode a Raft message"; "error" => %error);
                    return;
                }
            }
        }
        let bytes: usize = encoded.iter().map(Bytes::len).sum();
        let mut peers = lock(&inner.peers);
        let peer = peers.entry(to).or_insert_with(|| spawn_peer(inner, to, addr.clone()));
        if peer.addr != addr || peer.queue.is_closed() {
            *peer = spawn_peer(inner, to, addr);
        }
        // Always room for one batch, however large (one huge entry must get through).
        let queued = peer.queued.fetch_add(bytes, Ordering::AcqRel);
        if queued > 0 && queued + bytes > PEER_QUEUE_BYTES {
            peer.queued.fetch_sub(bytes, Ordering::AcqRel);
            drop(peers);
            return inner.unreachable(group, to, &messages);
        }
        if let Err(mpsc::error::SendError((_, messages, _))) =
            peer.queue.send((group.clone(), messages, encoded))
        {
            peer.queued.fetch_sub(bytes, Ordering::AcqRel);
            drop(peers);
            inner.unreachable(group, to, &messages);
        }
    }

    fn fetch(self: &Arc<Self>, group: GroupId, from: u64, start: u64, end: u64, sink: FetchSink) {
        let inner = Arc::clone(self);
        self.runtime.spawn(async move {
            let copied = async {
                let addr = inner.address(from).ok_or_else(|| "the source's address is unknown".to_owned())?;
                let mut client = RaftClient::new(inner.channel(from, &addr)?);
                let mut chunks = client
                    .fetch(inner.request(FetchRequest { start, end, group: wire_group(&group) }))
                    .await
                    .map_err(|status| status.message().to_owned())?
                    .into_inner();
                while let Some(chunk) =
                    chunks.message().await.map_err(|status| status.message().to_owned())?
                {
                    if !sink.chunk(chunk.first_offset, chunk.values, chunk.timestamps).await {
                        break; // the node no longer wants this fetch
                    }
                }
                Ok::<_, String>(())
            }
            .await;
            match copied {
                Ok(()) => sink.finish(),
                Err(reason) => {
                    slog::warn!(inner.logger, "snapshot fetch failed"; "from" => from, "reason" => &reason);
                    sink.fail(reason);
                }
            }
        });
    }

    fn forward(self: &Arc<Self>, group: &GroupId, to: u64, append: Append) -> PendingAppend {
        let inner = self;
        if *inner.closing.borrow() {
            return Box::pin(async { Err(LogError::Unavailable("the node is shutting down".into())) });
        }
        let Some(addr) = inner.address(to) else {
            // Nothing was sent: as if no leader were known (safe to retry).
            return Box::pin(async { Err(LogError::NotLeader { leader: None }) });
        };
        // The hop's client span; the leader's server span continues it.
        let trace = forward_span(SpanKind::Client, &append.context);
        let mut trace_context = HashMap::new();
        global::get_text_map_propagator(|propagator| propagator.inject_context(&trace, &mut trace_context));
        let (reply, done) = oneshot::channel();
        let queued = {
            let mut forwarders = lock(&inner.forwarders);
            let entry = forwarders
                .entry(to)
                .or_insert_with(|| (addr.clone(), spawn_forwarder(inner, to, addr.clone())));
            if entry.0 != addr || entry.1.is_closed() {
                *entry = (addr.clone(), spawn_forwarder(inner, to, addr));
            }
            let (producer_id, sequence) = append.producer.unwrap_or_default();
            let request = ForwardRequest {
                values: append.values,
                trace_context,
                producer_id,
                sequence,
                group: wire_group(group),
            };
            entry.1.try_send((request, reply)).is_ok()
        };
        Box::pin(async move {
            let result = if queued {
                done.await.unwrap_or_else(|_| Err(outcome_unknown()))
            } else {
                Err(LogError::refused(Refusal::Overloaded, "too many appends are being forwarded; retry"))
            };
            end_span(&trace, &result);
            result
        })
    }

    /// A command to the leader `to`, on a call of its own.
    fn command(self: &Arc<Self>, group: GroupId, to: u64, command: Vec<u8>) -> PendingCommand {
        let inner = Arc::clone(self);
        Box::pin(async move {
            let addr = inner.address(to).ok_or(LogError::NotLeader { leader: None })?;
            let channel = inner.channel(to, &addr).map_err(LogError::Unavailable)?;
            let request = CommandRequest { group: wire_group(&group), command: command.into() };
            let answer = RaftClient::new(channel).command(inner.request(request)).await;
            match answer {
                Ok(response) => from_response(response.into_inner()).map(|_| ()),
                // The call may or may not have reached the leader.
                Err(status) => Err(LogError::Unavailable(format!(
                    "the command's outcome is unknown (the leader answered {}: {})",
                    status.code(),
                    status.message()
                ))),
            }
        })
    }
}

fn outcome_unknown() -> LogError {
    LogError::Unavailable(
        "the connection to the leader was lost; the append may or may not be committed".into(),
    )
}

/// Starts the task that streams messages to one peer, reconnecting with backoff.
fn spawn_peer(inner: &Arc<Inner>, to: u64, addr: String) -> Peer {
    let (queue, mut rx) = mpsc::unbounded_channel::<Queued>();
    let queued = Arc::new(AtomicUsize::new(0));
    let (task_inner, task_queued, task_addr) = (Arc::clone(inner), Arc::clone(&queued), addr.clone());
    inner.runtime.spawn(async move {
        let inner = task_inner;
        let mut backoff = BACKOFF_MIN;
        loop {
            let channel = match inner.channel(to, &task_addr) {
                Ok(channel) => channel,
                Err(reason) => {
                    slog::warn!(inner.logger, "cannot dial a peer"; "peer" => &task_addr, "reason" => reason);
                    rx.close();
                    while let Ok((group, messages, _)) = rx.try_recv() {
                        inner.unreachable(&group, to, &messages);
                    }
                    return;
                }
            };
            let (tx, batches) = mpsc::channel::<Batch>(4);
            let mut client = RaftClient::new(channel);
            let mut call = Box::pin(client.messages(inner.request(ReceiverStream::new(batches))));
            let mut sent_any = false;
            let ended = loop {
                tokio::select! {
                    result = &mut call => break result.err(),
                    next = rx.recv() => {
                        let Some((group, messages, encoded)) = next else { return };
                        let bytes: usize = encoded.iter().map(Bytes::len).sum();
                        task_queued.fetch_sub(bytes, Ordering::AcqRel);
                        let mut failed = false;
                        for messages in batches_of(encoded) {
                            let batch = Batch { messages, group: wire_group(&group) };
                            if tx.send(batch).await.is_err() {
                                failed = true;
                                break;
                            }
                        }
                        if failed {
                            inner.unreachable(&group, to, &messages);
                            break None;
                        }
                        sent_any = true;
                        if let Some(mailbox) = inner.mailbox(&group) {
                            for message in messages.iter().filter(|m| is_snapshot(m)) {
                                mailbox.snapshot_status(message.to, true);
                            }
                        }
                    }
                }
            };
            if sent_any {
                backoff = BACKOFF_MIN;
            }
            if let Some(status) = ended {
                slog::debug!(inner.logger, "peer stream ended"; "peer" => &task_addr, "status" => %status);
            }
            // Drop what queued meanwhile (Raft resends), then wait before redialling.
            while let Ok((group, messages, encoded)) = rx.try_recv() {
                task_queued.fetch_sub(encoded.iter().map(Bytes::len).sum(), Ordering::AcqRel);
                inner.unreachable(&group, to, &messages);
            }
            let mut closing = inner.closing.subscribe();
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = closing.wait_for(|closing| *closing) => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    });
    Peer { addr, queue, queued }
}

/// Splits encoded messages into batches of at most [`BATCH_BYTES`] (or one message).
fn batches_of(encoded: Vec<Bytes>) -> Vec<Vec<Bytes>> {
    let mut batches: Vec<Vec<Bytes>> = Vec::new();
    let mut bytes = 0;
    for message in encoded {
        match batches.last_mut() {
            Some(batch) if bytes + message.len() <= BATCH_BYTES => {
                bytes += message.len();
                batch.push(message);
            }
            _ => {
                bytes = message.len();
                batches.push(vec![message]);
            }
        }
    }
    batches
}

/// Starts the task that forwards appends to one leader over one ordered stream;
/// answers come back in order. When the stream breaks, every append waiting on
/// it fails with "outcome unknown" (never retried).
fn spawn_forwarder(inner: &Arc<Inner>, to: u64, addr: String) -> mpsc::Sender<Forwarded> {
    let (queue, mut rx) = mpsc::channel::<Forwarded>(FORWARD_QUEUE);
    let inner = Arc::clone(inner);
    inner.runtime.clone().spawn(async move {
        let channel = match inner.channel(to, &addr) {
            Ok(channel) => channel,
            Err(reason) => {
                slog::warn!(inner.logger, "cannot dial the leader"; "leader" => &addr, "reason" => reason);
                return;
            }
        };
        let mut client = RaftClient::new(channel);
        let (tx, requests) = mpsc::channel::<ForwardRequest>(16);
        let mut waiting: VecDeque<oneshot::Sender<Result<u64, LogError>>> = VecDeque::new();
        let mut responses = match client.forward(inner.request(ReceiverStream::new(requests))).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                // The stream never opened, so nothing was sent: as if no leader
                // were known (clients may retry that safely).
                slog::debug!(inner.logger, "cannot forward to the leader"; "leader" => &addr, "status" => %status);
                let error = LogError::NotLeader { leader: None };
                rx.close();
                while let Some((_, reply)) = rx.recv().await {
                    let _ = reply.send(Err(error.clone()));
                }
                return;
            }
        };
        loop {
            tokio::select! {
                next = rx.recv(), if waiting.len() < FORWARD_QUEUE => {
                    let Some((request, reply)) = next else { break };
                    if tx.send(request).await.is_err() {
                        let _ = reply.send(Err(outcome_unknown()));
                        break;
                    }
                    waiting.push_back(reply);
                }
                response = responses.message() => {
                    let Ok(Some(response)) = response else { break };
                    if let Some(reply) = waiting.pop_front() {
                        let _ = reply.send(from_response(response));
                    }
                }
            }
        }
        rx.close();
        for reply in waiting.drain(..) {
            let _ = reply.send(Err(outcome_unknown()));
        }
        while let Some((_, reply)) = rx.recv().await {
            let _ = reply.send(Err(outcome_unknown()));
        }
    });
    queue
}

/// A span of the forwarding hop (the follower's client span, the leader's
/// server span), a child of `parent`.
fn forward_span(kind: SpanKind, parent: &opentelemetry::Context) -> opentelemetry::Context {
    let tracer = global::tracer("proglog-server");
    let span = tracer
        .span_builder("proglog.internal.v1.Raft/Forward")
        .with_kind(kind)
        .with_attributes([
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", "proglog.internal.v1.Raft"),
            KeyValue::new("rpc.method", "Forward"),
        ])
        .start_with_context(&tracer, parent);
    parent.with_span(span)
}

/// Ends the span of `trace` with the outcome of what it covered.
fn end_span(trace: &opentelemetry::Context, result: &Result<u64, LogError>) {
    let span = trace.span();
    match result {
        Ok(offset) => span.set_attribute(KeyValue::new("proglog.offset", *offset as i64)),
        Err(error) => span.set_status(opentelemetry::trace::Status::error(error.to_string())),
    }
    span.end();
}

/// The leader's answer to a forwarded append, its error whole (see
/// `ForwardResponse` in the proto): the follower answers its client the same.
fn to_response(result: Result<u64, LogError>) -> ForwardResponse {
    match result {
        Ok(first_offset) => ForwardResponse { first_offset, ..ForwardResponse::default() },
        Err(error) => {
            let status = status::from_log(error);
            ForwardResponse {
                first_offset: 0,
                code: status.code() as i32,
                message: status.message().to_owned(),
                details: Bytes::copy_from_slice(status.details()),
            }
        }
    }
}

fn from_response(response: ForwardResponse) -> Result<u64, LogError> {
    match tonic::Code::from_i32(response.code) {
        tonic::Code::Ok => Ok(response.first_offset),
        code => Err(status::to_log(&Status::with_details(code, response.message, response.details))),
    }
}

struct PeerService {
    inner: Arc<Inner>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl PeerService {
    /// Who the call says its caller is (refused if it does not say, or, under
    /// [`PeerTls::NamedTls`], if its certificate does not name that node).
    fn caller<T>(&self, request: &Request<T>) -> Result<PeerId, Status> {
        let caller = caller(request.metadata()).map_err(|reason| {
            self.inner.refuse(Reason::Sender, "unnamed", &reason);
            status::from_log(LogError::InvalidArgument(reason))
        })?;
        if matches!(self.inner.tls, PeerTls::NamedTls(_)) {
            let names = crate::Peer::of(request.extensions()).map(crate::Peer::names).unwrap_or_default();
            if !names.contains(&caller.name) {
                let detail = format!("its certificate names {names:?}");
                self.inner.refuse(Reason::NodeName, &caller.name, &detail);
                return Err(Status::permission_denied(format!(
                    "the caller's certificate does not name node {} ({detail})",
                    caller.name
                )));
            }
        }
        Ok(caller)
    }

    /// This node of `group`: `NOT_FOUND` if it has none (the log is not, or no
    /// longer, or not yet, here).
    fn group(&self, group: &GroupId) -> Result<Bound, Status> {
        self.inner.group(group).ok_or_else(|| {
            status::from_log(LogError::NotFound(format!(
                "this node holds no log {:?} of incarnation {}",
                group.log, group.incarnation
            )))
        })
    }

    /// The caller, who must be a member of `log`'s group and this node's
    /// cluster (snapshot records, forwarded appends and commands are for
    /// members only).
    fn member<T>(&self, request: &Request<T>, log: &RaftLog) -> Result<PeerId, Status> {
        let caller = self.caller(request)?;
        log.check_peer(&caller).map_err(|reason| {
            let detail = format!("member {} of cluster {:?}", caller.member_id, caller.cluster_id);
            self.inner.refuse(reason, &caller.name, &detail);
            Status::permission_denied(format!(
                "{} is not a member of this node's cluster ({reason})",
                caller.name
            ))
        })?;
        Ok(caller)
    }
}

#[tonic::async_trait]
impl Raft for PeerService {
    /// Raft messages from the caller, to this node's gate (which checks each
    /// against the caller and this node's state before Raft sees it).
    async fn messages(&self, request: Request<Streaming<Batch>>) -> Result<Response<Ack>, Status> {
        let caller = self.caller(&request)?;
        // A new node answers the leader that added it before it knows the
        // configuration: it must know where that leader is.
        self.inner.learn(&caller);
        let mut mailboxes: HashMap<GroupId, Mailbox> = HashMap::new();
        let mut batches = request.into_inner();
        let mut closing = self.inner.closing.subscribe();
        loop {
            let batch = tokio::select! {
                batch = batches.message() => batch?,
                _ = closing.wait_for(|closing| *closing) => None,
            };
            let Some(batch) = batch else { break };
            let group = group_of(batch.group);
            // Looked up again while this node does not hold the group (not
            // yet created here, or deleted): its messages are dropped, as lost
            // ones (Raft resends).
            let mailbox = match mailboxes.get(&group) {
                Some(mailbox) => mailbox.clone(),
                None => match self.inner.mailbox(&group) {
                    Some(mailbox) => {
                        if mailboxes.len() > proglog_raft::MAX_LOGS {
                            mailboxes.clear();
                        }
                        mailboxes.insert(group.clone(), mailbox.clone());
                        mailbox
                    }
                    None => continue,
                },
            };
            for bytes in batch.messages {
                let message = decode_message(&bytes).map_err(|error| {
                    self.inner.refuse(Reason::Decode, &caller.name, &error.to_string());
                    status::from_log(error)
                })?;
                if !mailbox.receive(caller.clone(), message, bytes.len()).await {
                    if group.is_default() {
                        return Err(status::from_log(LogError::Unavailable("the log is closed".into())));
                    }
                    // A named log closed (deleted): the others go on.
                    mailboxes.remove(&group);
                    break;
                }
            }
        }
        Ok(Response::new(Ack {}))
    }

    type FetchStream = BoxStream<Chunk>;

    async fn fetch(&self, request: Request<FetchRequest>) -> Result<Response<Self::FetchStream>, Status> {
        let group = group_of(request.get_ref().group.clone());
        let log = self.group(&group)?.log;
        let caller = self.member(&request, &log)?;
        let FetchRequest { start, end, .. } = request.into_inner();
        if start >= end {
            let detail = format!("an empty range of records [{start}, {end})");
            self.inner.refuse(Reason::Fetch, &caller.name, &detail);
            return Err(status::from_log(LogError::InvalidArgument(detail)));
        }
        let (tx, rx) = mpsc::channel(2);
        let closing = self.inner.closing.subscribe();
        tokio::spawn(async move {
            let mut next = start.max(log.lowest_offset());
            if next >= end {
                // Nothing left to copy: say where this log starts.
                let _ = tx.send(Ok(Chunk { first_offset: next, ..Chunk::default() })).await;
                return;
            }
            while next < end && !*closing.borrow() {
                let chunk = match log.read_batch(next, FETCH_CHUNK_BYTES).await {
                    Ok(batch) if !batch.is_empty() => {
                        let first_offset = batch[0].offset;
                        let (values, timestamps): (Vec<Bytes>, Vec<u64>) = batch
                            .into_iter()
                            .take_while(|r| r.offset < end)
                            .map(|r| (r.value, r.timestamp_ms))
                            .unzip();
                        next = first_offset + values.len() as u64;
                        Ok(Chunk { first_offset, values, timestamps })
                    }
                    Ok(_) => Err(status::from_log(LogError::OutOfRange { offset: next })),
                    Err(error) => Err(status::from_log(error)),
                };
                let failed = chunk.is_err();
                if tx.send(chunk).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ForwardStream = BoxStream<ForwardResponse>;

    async fn forward(
        &self,
        request: Request<Streaming<ForwardRequest>>,
    ) -> Result<Response<Self::ForwardStream>, Status> {
        let caller = self.caller(&request)?;
        let mut requests = request.into_inner();
        let service = PeerService { inner: Arc::clone(&self.inner) };
        let (pending_tx, mut pending_rx) = mpsc::channel::<PendingAppend>(FORWARD_QUEUE);
        let (tx, rx) = mpsc::channel(16);
        let mut closing = self.inner.closing.subscribe();
        let inner = Arc::clone(&self.inner);
        // Queue appends in the order they arrive (until shutdown), each checked
        // as a client's would be (a refused one is answered in its turn)...
        tokio::spawn(async move {
            loop {
                let request = tokio::select! {
                    request = requests.message() => request,
                    _ = closing.wait_for(|closing| *closing) => return,
                };
                let Ok(Some(request)) = request else { return };
                // One stream carries every group's appends: each is checked
                // against its own group (a member of it, as a caller of
                // `member` is).
                let group = group_of(request.group.clone());
                let mailbox = service.group(&group).and_then(|bound| {
                    bound.log.check_peer(&caller).map_err(|reason| {
                        inner.refuse(reason, &caller.name, "a forwarded append from a non-member");
                        Status::permission_denied(format!(
                            "{} is not a member of log {:?}",
                            caller.name, group.log
                        ))
                    })?;
                    Ok(bound.mailbox)
                });
                let mailbox = match mailbox {
                    Ok(mailbox) => mailbox,
                    Err(status) => {
                        let error = status::to_log(&status);
                        if pending_tx.send(Box::pin(std::future::ready(Err(error)))).await.is_err() {
                            return;
                        }
                        continue;
                    }
                };
                let parent =
                    global::get_text_map_propagator(|propagator| propagator.extract(&request.trace_context));
                let trace = forward_span(SpanKind::Server, &parent);
                let append = Append::new(request.values)
                    .with_context(trace.clone())
                    .with_producer(request.producer_id, request.sequence);
                let pending: PendingAppend = match mailbox.append(append).await {
                    Ok(pending) => Box::pin(async move {
                        let result = pending.await;
                        end_span(&trace, &result);
                        result
                    }),
                    Err(error) => {
                        if matches!(error, LogError::InvalidArgument(_)) {
                            inner.refuse(Reason::Forward, &caller.name, &error.to_string());
                        }
                        Box::pin(std::future::ready(Err(error)))
                    }
                };
                if pending_tx.send(pending).await.is_err() {
                    return;
                }
            }
        });
        // ...and answer them in that order.
        tokio::spawn(async move {
            while let Some(pending) = pending_rx.recv().await {
                if tx.send(Ok(to_response(pending.await))).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn command(&self, request: Request<CommandRequest>) -> Result<Response<ForwardResponse>, Status> {
        let group = group_of(request.get_ref().group.clone());
        let bound = self.group(&group)?;
        let caller = self.member(&request, &bound.log)?;
        let CommandRequest { command, .. } = request.into_inner();
        let result = bound.mailbox.command(&command).await;
        if let Err(LogError::InvalidArgument(detail)) = &result {
            self.inner.refuse(Reason::Forward, &caller.name, detail);
        }
        Ok(Response::new(to_response(result.map(|()| 0))))
    }
}
