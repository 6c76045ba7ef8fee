//! `proglog-discovery`: gossip membership for proglog agents — SWIM (foca) over
//! UDP, every datagram authenticated with a shared key.
//!
//! [`Discovery::start`] binds the gossip address, joins through the given seed
//! addresses (retrying with backoff until one answers) and reports membership to
//! a channel of [`Event`]s: a member joined (its whole identity), left
//! gracefully, or failed. An identity is the node's name, member id (minted
//! with its data dir: a node that lost its data is a new member under its old
//! name), cluster id, addresses and incarnation (its start time: a restarted
//! member wins over its previous run). Two live nodes may claim one name; the
//! caller decides (the agent refuses the second). [`Discovery::leave`]
//! announces a graceful leave, so that others report [`Event::Left`] rather
//! than [`Event::Failed`]; the notice names the leaver's incarnation, so a
//! notice replayed from an earlier run of it is refused.
//!
//! **Clusters:** a node of another cluster (an identity naming another cluster
//! id) is refused: every datagram that names one, as sender or in the news it
//! carries, is dropped before foca sees it (counted in [`Discovery::foreign`]),
//! so foca never learns of it. A node without a cluster id (new, joining) is
//! accepted by all; one that learns its cluster later says so with
//! [`Discovery::set_cluster_id`].
//!
//! It knows nothing of Raft or gRPC: the agent turns events into Raft
//! configuration changes.
//!
//! **Datagrams** are `magic, kind, sent-at (ms since the epoch), payload` and,
//! with a key, an HMAC-SHA256 tag over all of it (ring). A datagram whose tag does
//! not verify, or sent more than [`MAX_SKEW`] from now (a stale replay), is
//! dropped and counted ([`Discovery::rejected`]), so a host without the key can
//! neither add nor remove members nor disturb failure detection.
//!
//! **Bounds:** datagrams of at most [`MAX_DATAGRAM`] bytes (foca's packets are
//! smaller; a larger one is truncated and fails its check), at most
//! [`MAX_MEMBERS`] members (further joins are ignored), at most [`EVENT_QUEUE`]
//! events waiting for the caller (further ones are dropped and logged: the caller
//! reconciles from [`Discovery::members`]).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut};
use foca::{AccumulatingRuntime, Codec, Foca, Header, Message, OwnedNotification, PostcardCodec, Timer};
use ring::hmac;
use serde::{Deserialize, Serialize};
use slog::Logger;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

/// Largest datagram read or sent.
pub const MAX_DATAGRAM: usize = 1500;
/// Most members tracked.
pub const MAX_MEMBERS: usize = 1024;
/// Events waiting for the caller, at most.
pub const EVENT_QUEUE: usize = 1024;
/// Datagrams sent further from now than this are refused (replays, bad clocks).
pub const MAX_SKEW: Duration = Duration::from_secs(30);
/// At most one log line per kind of refusal per this period.
const WARNING_PERIOD: Duration = Duration::from_secs(10);

const MAGIC: u8 = 0x50;
const KIND_FOCA: u8 = 0;
const KIND_LEAVING: u8 = 1;
const HEADER_BYTES: usize = 1 + 1 + 8;
const TAG_BYTES: usize = 32;

/// A member as gossip knows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Node {
    /// Node name (unique among live members, stable).
    pub name: String,
    /// The address clients and peers dial.
    pub rpc_addr: String,
    /// Its gossip (UDP) address.
    pub gossip_addr: SocketAddr,
    /// Tells a restarted node from its previous run (the larger wins).
    pub incarnation: u64,
    /// Its member id (minted with its data dir).
    pub member_id: u64,
    /// Its cluster's id; 0 while it knows none.
    pub cluster_id: u128,
}

impl Node {
    /// Whether a node of cluster `ours` (0: none yet) may gossip with it.
    fn same_cluster(&self, ours: u128) -> bool {
        ours == 0 || self.cluster_id == 0 || self.cluster_id == ours
    }
}

impl foca::Identity for Node {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Self { incarnation: self.incarnation.saturating_add(1), ..self.clone() })
    }

    fn addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    /// A strict order (a tie would let stale news flip the entry back and forth).
    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.incarnation, self.member_id) > (adversary.incarnation, adversary.member_id)
    }
}

/// A membership change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A member is up.
    Joined(Node),
    /// A member left gracefully: remove it.
    Left {
        /// Its name.
        name: String,
        /// Its member id.
        member_id: u64,
    },
    /// A member stopped answering (it may come back).
    Failed {
        /// Its name.
        name: String,
        /// Its member id.
        member_id: u64,
    },
}

/// How to run discovery.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's name.
    pub name: String,
    /// This node's member id.
    pub member_id: u64,
    /// This node's cluster id (0: none yet).
    pub cluster_id: u128,
    /// Where to listen for gossip (UDP); port 0 picks one. Ignored by
    /// [`Discovery::start_on`].
    pub bind_addr: SocketAddr,
    /// This node's RPC address, told to the others.
    pub rpc_addr: String,
    /// The gossip address others send to, when it is not the socket's own
    /// (bound to `0.0.0.0`, a node advertises the address it is reached at).
    pub advertise_addr: Option<SocketAddr>,
    /// Gossip addresses (`host:port`, the host a name or an IP) of members to
    /// join through (none: start alone). Names are resolved again at every
    /// attempt (a pod's name appears only once it is scheduled); joining
    /// retries, with backoff, until a member answers.
    pub start_join_addrs: Vec<String>,
    /// The shared key that authenticates every datagram; `None`: none (only for
    /// clusters on a trusted network).
    pub key: Option<Vec<u8>>,
    /// Where discovery logs.
    pub logger: Logger,
}

/// Why discovery could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The gossip address could not be bound.
    #[error("cannot bind the gossip address {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The key is empty.
    #[error("the gossip key is empty")]
    EmptyKey,
}

enum Command {
    Leave(oneshot::Sender<()>),
}

/// A member's key: its name and member id (a restart keeps both).
type Key = (String, u64);

fn key_of(node: &Node) -> Key {
    (node.name.clone(), node.member_id)
}

#[derive(Default)]
struct Shared {
    /// Live members.
    members: HashMap<Key, Node>,
    /// This node's cluster id (0: none yet).
    cluster_id: u128,
}

/// Counts of what was refused.
#[derive(Debug, Default)]
struct Refused {
    /// Datagrams naming a node of another cluster.
    foreign: AtomicU64,
    /// Leave notices that are not the leaver's current run's.
    leaves: AtomicU64,
}

/// A running discovery service.
#[derive(Debug)]
pub struct Discovery {
    local_addr: SocketAddr,
    commands: mpsc::Sender<Command>,
    shared: Arc<Mutex<Shared>>,
    refused: Arc<Refused>,
    datagrams_refused: Arc<AtomicU64>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("members", &self.members.len()).finish()
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Frames and authenticates datagrams.
struct Sealer {
    key: Option<hmac::Key>,
}

impl Sealer {
    fn seal(&self, kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut datagram = Vec::with_capacity(HEADER_BYTES + payload.len() + TAG_BYTES);
        datagram.push(MAGIC);
        datagram.push(kind);
        datagram.extend_from_slice(&now_ms().to_be_bytes());
        datagram.extend_from_slice(payload);
        if let Some(key) = &self.key {
            let tag = hmac::sign(key, &datagram);
            datagram.extend_from_slice(tag.as_ref());
        }
        datagram
    }

    /// The kind and payload of an authentic, fresh datagram.
    fn open<'a>(&self, datagram: &'a [u8]) -> Option<(u8, &'a [u8])> {
        let body = match &self.key {
            Some(key) => {
                let split = datagram.len().checked_sub(TAG_BYTES)?;
                let (body, tag) = datagram.split_at(split);
                hmac::verify(key, body, tag).ok()?;
                body
            }
            None => datagram,
        };
        if body.len() < HEADER_BYTES || body[0] != MAGIC {
            return None;
        }
        let sent = u64::from_be_bytes(body[2..10].try_into().ok()?);
        let skew = now_ms().abs_diff(sent);
        if skew > u64::try_from(MAX_SKEW.as_millis()).unwrap_or(u64::MAX) {
            return None;
        }
        Some((body[1], &body[HEADER_BYTES..]))
    }
}

/// A leave notice: whose run is leaving.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Leaving {
    name: String,
    member_id: u64,
    incarnation: u64,
}

impl Leaving {
    fn of(node: &Node) -> Self {
        Self { name: node.name.clone(), member_id: node.member_id, incarnation: node.incarnation }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.name.len());
        out.put_u64(self.member_id);
        out.put_u64(self.incarnation);
        out.put_slice(self.name.as_bytes());
        out
    }

    fn decode(mut payload: &[u8]) -> Option<Self> {
        if payload.len() < 16 {
            return None;
        }
        let (member_id, incarnation) = (payload.get_u64(), payload.get_u64());
        let name = std::str::from_utf8(payload).ok()?.to_owned();
        Some(Self { name, member_id, incarnation })
    }
}

/// foca's codec, refusing every datagram that names a node of another cluster
/// before foca applies any of it: as its sender or receiver, as the target or
/// origin of an indirect probe, or in the membership news it carries.
struct ClusterCodec {
    shared: Arc<Mutex<Shared>>,
    refused: Arc<Refused>,
    logger: Logger,
    last_warning: Option<Instant>,
}

/// A datagram naming a node of another cluster.
#[derive(Debug)]
enum CodecError {
    Postcard(postcard::Error),
    Foreign,
}

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Postcard(error) => write!(f, "{error}"),
            Self::Foreign => f.write_str("it names a node of another cluster"),
        }
    }
}

impl std::error::Error for CodecError {}

impl ClusterCodec {
    fn check(&mut self, node: &Node) -> Result<(), CodecError> {
        let ours = lock(&self.shared).cluster_id;
        if node.same_cluster(ours) {
            return Ok(());
        }
        let refused = self.refused.foreign.fetch_add(1, Ordering::Relaxed) + 1;
        if self.last_warning.is_none_or(|at| at.elapsed() >= WARNING_PERIOD) {
            self.last_warning = Some(Instant::now());
            slog::warn!(self.logger, "refused gossip naming a node of another cluster";
                "peer" => &node.name, "peer_cluster_id" => format!("{:032x}", node.cluster_id),
                "cluster_id" => format!("{ours:032x}"), "gossip_addr" => %node.gossip_addr,
                "refused_so_far" => refused);
        }
        Err(CodecError::Foreign)
    }
}

impl Codec<Node> for ClusterCodec {
    type Error = CodecError;

    fn encode_header(&mut self, header: &Header<Node>, buf: impl BufMut) -> Result<(), CodecError> {
        PostcardCodec.encode_header(header, buf).map_err(CodecError::Postcard)
    }

    fn decode_header(&mut self, buf: impl Buf) -> Result<Header<Node>, CodecError> {
        let header: Header<Node> = PostcardCodec.decode_header(buf).map_err(CodecError::Postcard)?;
        self.check(&header.src)?;
        self.check(&header.dst)?;
        match &header.message {
            Message::PingReq { target: node, .. }
            | Message::IndirectAck { target: node, .. }
            | Message::IndirectPing { origin: node, .. }
            | Message::ForwardedAck { origin: node, .. } => self.check(node)?,
            _ => {}
        }
        Ok(header)
    }

    fn encode_member(&mut self, member: &foca::Member<Node>, buf: impl BufMut) -> Result<(), CodecError> {
        PostcardCodec.encode_member(member, buf).map_err(CodecError::Postcard)
    }

    fn decode_member(&mut self, buf: impl Buf) -> Result<foca::Member<Node>, CodecError> {
        let member: foca::Member<Node> = PostcardCodec.decode_member(buf).map_err(CodecError::Postcard)?;
        self.check(member.id())?;
        Ok(member)
    }
}

impl Discovery {
    /// Binds `config.bind_addr` and starts gossiping; membership changes go to the
    /// returned receiver. Call it within a tokio runtime.
    pub async fn start(config: Config) -> Result<(Self, mpsc::Receiver<Event>), Error> {
        let socket = UdpSocket::bind(config.bind_addr)
            .await
            .map_err(|source| Error::Bind { addr: config.bind_addr, source })?;
        Self::start_on(socket, config)
    }

    /// Starts gossiping on `socket`, bound already (`config.bind_addr` is not
    /// used). Call it within a tokio runtime.
    pub fn start_on(socket: UdpSocket, config: Config) -> Result<(Self, mpsc::Receiver<Event>), Error> {
        if config.key.as_ref().is_some_and(Vec::is_empty) {
            return Err(Error::EmptyKey);
        }
        let local_addr =
            socket.local_addr().map_err(|source| Error::Bind { addr: config.bind_addr, source })?;
        let incarnation = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        let me = Node {
            name: config.name.clone(),
            rpc_addr: config.rpc_addr.clone(),
            gossip_addr: config.advertise_addr.unwrap_or(local_addr),
            incarnation,
            member_id: config.member_id,
            cluster_id: config.cluster_id,
        };
        let sealer = Sealer { key: config.key.as_ref().map(|key| hmac::Key::new(hmac::HMAC_SHA256, key)) };
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let (commands, commands_rx) = mpsc::channel(4);
        let shared = Arc::new(Mutex::new(Shared { cluster_id: config.cluster_id, ..Shared::default() }));
        let refused = Arc::new(Refused::default());
        let datagrams_refused = Arc::new(AtomicU64::new(0));
        let gossip = Gossip {
            socket,
            sealer,
            me,
            seeds: config.start_join_addrs,
            resolved_seeds: Vec::new(),
            logger: config.logger,
            events: events_tx,
            shared: Arc::clone(&shared),
            refused: Arc::clone(&refused),
            datagrams_refused: Arc::clone(&datagrams_refused),
            leaving: HashSet::new(),
            down: HashMap::new(),
            last_stale_warning: None,
        };
        let task = tokio::spawn(gossip.run(commands_rx));
        let discovery =
            Self { local_addr, commands, shared, refused, datagrams_refused, task: Mutex::new(Some(task)) };
        Ok((discovery, events))
    }

    /// The bound gossip address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The live members known now (this node excluded). Two may share a name.
    pub fn members(&self) -> Vec<Node> {
        lock(&self.shared).members.values().cloned().collect()
    }

    /// This node learned its cluster's id: from now on, nodes of other
    /// clusters are refused. (Its own identity says so from its next start.)
    pub fn set_cluster_id(&self, cluster_id: u128) {
        lock(&self.shared).cluster_id = cluster_id;
    }

    /// Datagrams dropped as unauthentic or stale so far.
    pub fn rejected(&self) -> u64 {
        self.datagrams_refused.load(Ordering::Relaxed)
    }

    /// The counter behind [`Discovery::rejected`], for a metrics exporter.
    pub fn rejected_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.datagrams_refused)
    }

    /// Authentic datagrams dropped because they named a node of another
    /// cluster, so far.
    pub fn foreign(&self) -> u64 {
        self.refused.foreign.load(Ordering::Relaxed)
    }

    /// Leave notices refused as not their sender's current run's (replays), so far.
    pub fn stale_leaves(&self) -> u64 {
        self.refused.leaves.load(Ordering::Relaxed)
    }

    /// Tells the cluster this node leaves (gracefully), then stops gossiping.
    pub async fn leave(&self) {
        let (done, left) = oneshot::channel();
        if self.commands.send(Command::Leave(done)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), left).await;
        }
        self.stop();
    }

    /// Stops gossiping at once, without announcing a leave: the others see
    /// this node fail.
    pub fn stop(&self) {
        let task = self.task.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(task) = task {
            task.abort();
        }
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Gossip {
    socket: UdpSocket,
    sealer: Sealer,
    me: Node,
    /// The join addresses as given (`host:port`).
    seeds: Vec<String>,
    /// What they resolved to at the last attempt (a leave notice goes there too).
    resolved_seeds: Vec<SocketAddr>,
    logger: Logger,
    events: mpsc::Sender<Event>,
    shared: Arc<Mutex<Shared>>,
    refused: Arc<Refused>,
    datagrams_refused: Arc<AtomicU64>,
    /// Runs of members that announced a graceful leave.
    leaving: HashSet<Leaving>,
    /// Members seen going down, and the run that did (at most [`MAX_MEMBERS`]).
    down: HashMap<Key, u64>,
    last_stale_warning: Option<Instant>,
}

type Swim = Foca<Node, ClusterCodec, rand::rngs::StdRng, foca::NoCustomBroadcast>;

/// How long resolving one join address may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Every address the join addresses resolve to now (one that does not
/// resolve yet is skipped, and tried again at the next attempt).
async fn resolve_seeds(seeds: &[String], logger: &Logger) -> Vec<SocketAddr> {
    let mut resolved = Vec::new();
    for seed in seeds {
        match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(seed.as_str())).await {
            Ok(Ok(addrs)) => resolved.extend(addrs),
            Ok(Err(error)) => {
                slog::debug!(logger, "a join address does not resolve (yet)"; "addr" => seed, "error" => %error)
            }
            Err(_) => slog::debug!(logger, "a join address did not resolve in time"; "addr" => seed),
        }
    }
    resolved.sort_unstable();
    resolved.dedup();
    resolved
}

impl Gossip {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut config = foca::Config::new_lan(NonZeroU32::new(32).unwrap_or(NonZeroU32::MIN));
        config.max_packet_size = std::num::NonZeroUsize::new(MAX_DATAGRAM - HEADER_BYTES - TAG_BYTES)
            .unwrap_or(std::num::NonZeroUsize::MIN);
        let rng: rand::rngs::StdRng = rand::make_rng();
        let codec = ClusterCodec {
            shared: Arc::clone(&self.shared),
            refused: Arc::clone(&self.refused),
            logger: self.logger.clone(),
            last_warning: None,
        };
        let mut foca: Swim = Foca::new(self.me.clone(), config, rng, codec);
        let mut runtime = AccumulatingRuntime::new();
        let (timers_tx, mut timers) = mpsc::unbounded_channel::<Timer<Node>>();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut joined = self.seeds.is_empty();
        let mut backoff = Duration::from_millis(200);
        let mut next_join = tokio::time::Instant::now();
        loop {
            if !joined && tokio::time::Instant::now() >= next_join {
                let cluster_id = lock(&self.shared).cluster_id;
                self.resolved_seeds = resolve_seeds(&self.seeds, &self.logger).await;
                for seed in self.resolved_seeds.clone() {
                    let placeholder = Node {
                        name: String::new(),
                        rpc_addr: String::new(),
                        gossip_addr: seed,
                        incarnation: 0,
                        member_id: 0,
                        cluster_id,
                    };
                    let _ = foca.announce(placeholder, &mut runtime);
                }
                next_join = tokio::time::Instant::now() + backoff;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            self.drain(&mut runtime, &timers_tx, &mut joined).await;
            let join_wait = if joined {
                Duration::from_secs(3600)
            } else {
                next_join.saturating_duration_since(tokio::time::Instant::now())
            };
            tokio::select! {
                received = self.socket.recv_from(&mut buf) => {
                    let Ok((length, _from)) = received else { continue };
                    match self.sealer.open(&buf[..length]) {
                        Some((KIND_FOCA, payload)) => {
                            if let Err(error) = foca.handle_data(payload, &mut runtime) {
                                slog::debug!(self.logger, "gossip datagram not taken"; "error" => %error);
                            }
                        }
                        Some((KIND_LEAVING, payload)) => {
                            if let Some(leaving) = Leaving::decode(payload) {
                                self.announced_leave(leaving);
                            }
                        }
                        _ => {
                            self.datagrams_refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Some(timer) = timers.recv() => {
                    let _ = foca.handle_timer(timer, &mut runtime);
                }
                command = commands.recv() => {
                    match command {
                        Some(Command::Leave(done)) => {
                            let notice = self.sealer.seal(KIND_LEAVING, &Leaving::of(&self.me).encode());
                            // Everyone who may know this node: its peers by foca and by
                            // its own events, and its seeds (a join in progress).
                            let mut to: Vec<SocketAddr> = foca.iter_members().map(|m| m.id().gossip_addr).collect();
                            to.extend(lock(&self.shared).members.values().map(|node| node.gossip_addr));
                            to.extend(self.resolved_seeds.iter().copied());
                            to.sort_unstable();
                            to.dedup();
                            for addr in to {
                                let _ = self.socket.send_to(&notice, addr).await;
                            }
                            let _ = foca.leave_cluster(&mut runtime);
                            self.drain(&mut runtime, &timers_tx, &mut joined).await;
                            let _ = done.send(());
                            return;
                        }
                        None => return,
                    }
                }
                () = tokio::time::sleep(join_wait) => {}
            }
        }
    }

    /// Sends what foca wants sent, schedules its timers and reports its news.
    async fn drain(
        &mut self,
        runtime: &mut AccumulatingRuntime<Node>,
        timers: &mpsc::UnboundedSender<Timer<Node>>,
        joined: &mut bool,
    ) {
        while let Some((to, data)) = runtime.to_send() {
            let datagram = self.sealer.seal(KIND_FOCA, &data);
            let _ = self.socket.send_to(&datagram, to.gossip_addr).await;
        }
        while let Some((after, timer)) = runtime.to_schedule() {
            let timers = timers.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = timers.send(timer);
            });
        }
        while let Some(notification) = runtime.to_notify() {
            match notification {
                OwnedNotification::MemberUp(node) => self.member_up(node),
                OwnedNotification::MemberDown(node) => self.member_down(&node),
                OwnedNotification::Rename(old, new) => {
                    // `new` replaced `old` at its address. If `old` was up, so is
                    // `new` (a MemberDown follows if not); if `old` was down, a
                    // MemberUp follows if `new` is up.
                    let was_up = {
                        let mut shared = lock(&self.shared);
                        let key = key_of(&old);
                        let up = shared
                            .members
                            .get(&key)
                            .is_some_and(|known| known.incarnation == old.incarnation);
                        if up {
                            shared.members.remove(&key);
                        }
                        up
                    };
                    if was_up {
                        self.member_up(new);
                    }
                }
                OwnedNotification::Active => *joined = true,
                _ => {}
            }
        }
    }

    fn member_up(&mut self, node: Node) {
        if node.name.is_empty() || (node.name == self.me.name && node.member_id == self.me.member_id) {
            return;
        }
        {
            let mut shared = lock(&self.shared);
            if !node.same_cluster(shared.cluster_id) {
                return;
            }
            let key = key_of(&node);
            if shared.members.len() >= MAX_MEMBERS && !shared.members.contains_key(&key) {
                slog::warn!(self.logger, "too many members: ignoring a join"; "peer" => &node.name);
                return;
            }
            shared.members.insert(key, node.clone());
        }
        self.report(Event::Joined(node));
    }

    /// A member says it leaves: reported as it goes down — or at once if it is
    /// already down here (declared failed earlier, e.g. while this host was
    /// busy). Only a notice naming the member's current run counts: one replayed
    /// from an earlier run is refused, and cannot turn a later failure into a
    /// removal.
    fn announced_leave(&mut self, leaving: Leaving) {
        if leaving.name == self.me.name && leaving.member_id == self.me.member_id {
            return;
        }
        let key = (leaving.name.clone(), leaving.member_id);
        let live = lock(&self.shared).members.get(&key).map(|node| node.incarnation);
        if live == Some(leaving.incarnation) {
            if self.leaving.len() < MAX_MEMBERS {
                self.leaving.insert(leaving);
            }
        } else if live.is_none() && self.down.get(&key) == Some(&leaving.incarnation) {
            self.report(Event::Left { name: leaving.name, member_id: leaving.member_id });
        } else {
            let refused = self.refused.leaves.fetch_add(1, Ordering::Relaxed) + 1;
            if self.last_stale_warning.is_none_or(|at| at.elapsed() >= WARNING_PERIOD) {
                self.last_stale_warning = Some(Instant::now());
                slog::warn!(self.logger, "refused a leave notice that is not its sender's current one (a replay?)";
                    "peer" => &leaving.name, "member_id" => leaving.member_id,
                    "notice_incarnation" => leaving.incarnation, "live_incarnation" => live,
                    "refused_so_far" => refused);
            }
        }
    }

    fn member_down(&mut self, node: &Node) {
        let key = key_of(node);
        {
            let mut shared = lock(&self.shared);
            // A newer run of it may already be up.
            if shared.members.get(&key).is_some_and(|known| known.incarnation > node.incarnation) {
                return;
            }
            shared.members.remove(&key);
        }
        if self.down.len() >= MAX_MEMBERS && !self.down.contains_key(&key) {
            self.down.clear();
        }
        self.down.insert(key, node.incarnation);
        let (name, member_id) = (node.name.clone(), node.member_id);
        let event = if self.leaving.remove(&Leaving::of(node)) {
            Event::Left { name, member_id }
        } else {
            Event::Failed { name, member_id }
        };
        self.report(event);
    }

    fn report(&self, event: Event) {
        if let Err(mpsc::error::TrySendError::Full(event)) = self.events.try_send(event) {
            slog::warn!(self.logger, "membership events are not being taken: dropped one"; "event" => ?event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"a shared secret for the test cluster";

    async fn start(name: &str, member_id: u64, seeds: &[&Discovery]) -> (Discovery, mpsc::Receiver<Event>) {
        Discovery::start(Config {
            name: name.to_owned(),
            member_id,
            cluster_id: 1,
            bind_addr: "127.0.0.1:0".parse().unwrap(),
            rpc_addr: format!("{name}.rpc:8400"),
            start_join_addrs: seeds.iter().map(|seed| seed.local_addr().to_string()).collect(),
            advertise_addr: None,
            key: Some(KEY.to_vec()),
            logger: Logger::root(slog::Discard, slog::o!()),
        })
        .await
        .unwrap()
    }

    async fn next(events: &mut mpsc::Receiver<Event>) -> Event {
        tokio::time::timeout(Duration::from_secs(30), events.recv()).await.unwrap().unwrap()
    }

    /// A leave notice captured from a member's earlier run and replayed is
    /// refused: the member's later failure stays a failure.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leave_notice_of_an_earlier_run_does_not_count() {
        let (first, mut events) = start("node-0", 10, &[]).await;
        let (second, _second_events) = start("node-1", 11, &[&first]).await;
        let Event::Joined(live) = next(&mut events).await else { panic!("not a join") };
        let stale = Leaving { incarnation: live.incarnation - 1, ..Leaving::of(&live) };
        let datagram = sealer(KEY).seal(KIND_LEAVING, &stale.encode());
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.send_to(&datagram, first.local_addr()).await.unwrap();
        tokio::time::timeout(Duration::from_secs(30), async {
            while first.stale_leaves() == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap();
        second.stop();
        assert_eq!(next(&mut events).await, Event::Failed { name: "node-1".into(), member_id: 11 });
    }

    #[test]
    fn leave_notices_round_trip() {
        let leaving = Leaving { name: "node-ü".into(), member_id: 7, incarnation: 9 };
        assert_eq!(Leaving::decode(&leaving.encode()), Some(leaving));
        assert_eq!(Leaving::decode(&[0; 15]), None);
        assert_eq!(Leaving::decode(&[[0u8; 16].as_slice(), &[0xff]].concat()), None);
    }

    fn sealer(key: &[u8]) -> Sealer {
        Sealer { key: Some(hmac::Key::new(hmac::HMAC_SHA256, key)) }
    }

    #[test]
    fn only_authentic_fresh_datagrams_open() {
        let sealer = sealer(b"key");
        let datagram = sealer.seal(KIND_FOCA, b"payload");
        assert_eq!(sealer.open(&datagram), Some((KIND_FOCA, &b"payload"[..])));
        // Another key, a flipped bit anywhere, a cut: refused.
        assert_eq!(self::sealer(b"other").open(&datagram), None);
        for position in 0..datagram.len() {
            let mut flipped = datagram.clone();
            flipped[position] ^= 1;
            assert_eq!(sealer.open(&flipped), None, "bit flipped at {position}");
        }
        assert_eq!(sealer.open(&datagram[..datagram.len() - 1]), None);
        // A stale datagram (a replay from long ago) with a valid tag: refused.
        let mut stale = vec![MAGIC, KIND_FOCA];
        stale.extend_from_slice(&(now_ms() - 60_000).to_be_bytes());
        let tag = hmac::sign(sealer.key.as_ref().unwrap(), &stale);
        stale.extend_from_slice(tag.as_ref());
        assert_eq!(sealer.open(&stale), None);
    }
}
