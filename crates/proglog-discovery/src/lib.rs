//! `proglog-discovery`: gossip membership for proglog agents — SWIM (foca) over
//! UDP, every datagram authenticated with a shared key.
//!
//! [`Discovery::start`] binds the gossip address, joins through the given seed
//! addresses (retrying with backoff until one answers) and reports membership to
//! a channel of [`Event`]s: a member joined (its name and RPC address), left
//! gracefully, or failed. A restarted member (same name, new incarnation) is a
//! new identity that wins over the old one. [`Discovery::leave`] announces a
//! graceful leave, so that others report [`Event::Left`] rather than
//! [`Event::Failed`].
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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use foca::{AccumulatingRuntime, Foca, OwnedNotification, PostcardCodec, Timer};
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

const MAGIC: u8 = 0x50;
const KIND_FOCA: u8 = 0;
const KIND_LEAVING: u8 = 1;
const HEADER_BYTES: usize = 1 + 1 + 8;
const TAG_BYTES: usize = 32;

/// A member as gossip knows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Node {
    /// Node name (unique, stable).
    pub name: String,
    /// The address clients and peers dial.
    pub rpc_addr: String,
    /// Its gossip (UDP) address.
    pub gossip_addr: SocketAddr,
    /// Tells a restarted node from its previous run (the larger wins).
    pub incarnation: u64,
}

impl foca::Identity for Node {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Self { incarnation: self.incarnation + 1, ..self.clone() })
    }

    fn addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.incarnation > adversary.incarnation
    }
}

/// A membership change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A member is up: add it.
    Joined {
        /// Its name.
        name: String,
        /// Its RPC address.
        rpc_addr: String,
    },
    /// A member left gracefully: remove it.
    Left {
        /// Its name.
        name: String,
    },
    /// A member stopped answering (it may come back).
    Failed {
        /// Its name.
        name: String,
    },
}

/// How to run discovery.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's name.
    pub name: String,
    /// Where to listen for gossip (UDP); port 0 picks one.
    pub bind_addr: SocketAddr,
    /// This node's RPC address, told to the others.
    pub rpc_addr: String,
    /// Gossip addresses of members to join through (none: start alone).
    pub start_join_addrs: Vec<SocketAddr>,
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

#[derive(Default)]
struct Shared {
    members: HashMap<String, Node>,
}

/// A running discovery service.
#[derive(Debug)]
pub struct Discovery {
    local_addr: SocketAddr,
    commands: mpsc::Sender<Command>,
    shared: Arc<Mutex<Shared>>,
    rejected: Arc<AtomicU64>,
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

impl Discovery {
    /// Binds `config.bind_addr` and starts gossiping; membership changes go to the
    /// returned receiver. Call it within a tokio runtime.
    pub async fn start(config: Config) -> Result<(Self, mpsc::Receiver<Event>), Error> {
        if config.key.as_ref().is_some_and(Vec::is_empty) {
            return Err(Error::EmptyKey);
        }
        let socket = UdpSocket::bind(config.bind_addr)
            .await
            .map_err(|source| Error::Bind { addr: config.bind_addr, source })?;
        let local_addr =
            socket.local_addr().map_err(|source| Error::Bind { addr: config.bind_addr, source })?;
        let incarnation = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        let me = Node {
            name: config.name.clone(),
            rpc_addr: config.rpc_addr.clone(),
            gossip_addr: local_addr,
            incarnation,
        };
        let sealer = Sealer { key: config.key.as_ref().map(|key| hmac::Key::new(hmac::HMAC_SHA256, key)) };
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let (commands, commands_rx) = mpsc::channel(4);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let rejected = Arc::new(AtomicU64::new(0));
        let gossip = Gossip {
            socket,
            sealer,
            me,
            seeds: config.start_join_addrs,
            logger: config.logger,
            events: events_tx,
            shared: Arc::clone(&shared),
            rejected: Arc::clone(&rejected),
            leaving: HashSet::new(),
        };
        let task = tokio::spawn(gossip.run(commands_rx));
        Ok((Self { local_addr, commands, shared, rejected, task: Mutex::new(Some(task)) }, events))
    }

    /// The bound gossip address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The live members known now (this node excluded), by name.
    pub fn members(&self) -> Vec<Node> {
        lock(&self.shared).members.values().cloned().collect()
    }

    /// Datagrams dropped as unauthentic or stale so far.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// The counter behind [`Discovery::rejected`], for a metrics exporter.
    pub fn rejected_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.rejected)
    }

    /// Tells the cluster this node leaves (gracefully), then stops gossiping.
    pub async fn leave(&self) {
        let (done, left) = oneshot::channel();
        if self.commands.send(Command::Leave(done)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), left).await;
        }
        self.stop();
    }

    fn stop(&self) {
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
    seeds: Vec<SocketAddr>,
    logger: Logger,
    events: mpsc::Sender<Event>,
    shared: Arc<Mutex<Shared>>,
    rejected: Arc<AtomicU64>,
    /// Members that announced a graceful leave.
    leaving: HashSet<String>,
}

type Swim = Foca<Node, PostcardCodec, rand::rngs::StdRng, foca::NoCustomBroadcast>;

impl Gossip {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut config = foca::Config::new_lan(NonZeroU32::new(32).unwrap_or(NonZeroU32::MIN));
        config.max_packet_size = std::num::NonZeroUsize::new(MAX_DATAGRAM - HEADER_BYTES - TAG_BYTES)
            .unwrap_or(std::num::NonZeroUsize::MIN);
        let rng: rand::rngs::StdRng = rand::make_rng();
        let mut foca: Swim = Foca::new(self.me.clone(), config, rng, PostcardCodec);
        let mut runtime = AccumulatingRuntime::new();
        let (timers_tx, mut timers) = mpsc::unbounded_channel::<Timer<Node>>();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut joined = self.seeds.is_empty();
        let mut backoff = Duration::from_millis(200);
        let mut next_join = tokio::time::Instant::now();
        loop {
            if !joined && tokio::time::Instant::now() >= next_join {
                for seed in self.seeds.clone() {
                    let placeholder = Node {
                        name: String::new(),
                        rpc_addr: String::new(),
                        gossip_addr: seed,
                        incarnation: 0,
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
                            if let Ok(name) = std::str::from_utf8(payload) {
                                self.announced_leave(name);
                            }
                        }
                        _ => {
                            self.rejected.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Some(timer) = timers.recv() => {
                    let _ = foca.handle_timer(timer, &mut runtime);
                }
                command = commands.recv() => {
                    match command {
                        Some(Command::Leave(done)) => {
                            let notice = self.sealer.seal(KIND_LEAVING, self.me.name.as_bytes());
                            // Everyone who may know this node: its peers by foca and by
                            // its own events, and its seeds (a join in progress).
                            let mut to: Vec<SocketAddr> = foca.iter_members().map(|m| m.id().gossip_addr).collect();
                            to.extend(lock(&self.shared).members.values().map(|node| node.gossip_addr));
                            to.extend(self.seeds.iter().copied());
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
                    lock(&self.shared).members.remove(&old.name);
                    self.member_up(new);
                }
                OwnedNotification::Active => *joined = true,
                _ => {}
            }
        }
    }

    fn member_up(&mut self, node: Node) {
        if node.name.is_empty() || node.name == self.me.name {
            return;
        }
        {
            let mut shared = lock(&self.shared);
            if shared.members.len() >= MAX_MEMBERS && !shared.members.contains_key(&node.name) {
                slog::warn!(self.logger, "too many members: ignoring a join"; "node" => &node.name);
                return;
            }
            shared.members.insert(node.name.clone(), node.clone());
        }
        self.leaving.remove(&node.name);
        self.report(Event::Joined { name: node.name, rpc_addr: node.rpc_addr });
    }

    /// A member says it leaves: reported as it goes down — or at once if it is
    /// already down here (declared failed earlier, e.g. while this host was busy).
    fn announced_leave(&mut self, name: &str) {
        if name == self.me.name {
            return;
        }
        if lock(&self.shared).members.contains_key(name) {
            if self.leaving.len() < MAX_MEMBERS {
                self.leaving.insert(name.to_owned());
            }
        } else {
            self.report(Event::Left { name: name.to_owned() });
        }
    }

    fn member_down(&mut self, node: &Node) {
        {
            let mut shared = lock(&self.shared);
            // A newer incarnation of it may already be up.
            if shared.members.get(&node.name).is_some_and(|known| known.incarnation > node.incarnation) {
                return;
            }
            shared.members.remove(&node.name);
        }
        let name = node.name.clone();
        let event = if self.leaving.remove(&name) { Event::Left { name } } else { Event::Failed { name } };
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
