//! The Raft-replicated log: [`RaftLog`].
//!
//! One thread per node owns raft-rs's `RawNode` ([`node::Node`]): it ticks,
//! steps peers' messages, merges queued appends into entries and runs the Ready
//! loop; it never blocks on the network (the [`Transport`] queues or drops) and
//! never runs on a tokio worker. Async callers hand it work through a channel and
//! await replies; readers read the data log directly, below the commit point.

mod codec;
mod gate;
mod logs;
mod machine;
mod network;
mod node;
mod reads;
#[cfg(test)]
mod sim;
mod store;
mod terms;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proglog_log::Log;
use raft::eraftpb::Message;
use slog::Logger;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};

pub use self::codec::{ClusterId, Member, PeerId, decode_message, encode_message, node_id};
pub use self::gate::{Reason, Rejections};
pub use self::logs::{GroupId, GroupStart, Logs, Network};
pub use self::machine::{
    LogSpec, MAX_GROUP_BYTES, MAX_GROUPS, MAX_LOG_NAME_BYTES, MAX_LOGS, check_group, check_log_name,
};
pub use self::network::ChannelNetwork;
use self::node::{ChangeReply, Node, NodeConfig, Outbox, Proposal, Shared};
use self::store::Store;
pub(crate) use self::store::record_value;
pub(crate) use self::terms::Terms;
use crate::commit_log::check_append;
use crate::local::sync_in_background;
use crate::records::Committed;
use crate::{Append, CommitLog, Fsync, LogError, LogStatus, PendingAppend, Record, ServerInfo, Settings};

/// The largest record any node of a cluster may append (`max-record-bytes` is
/// at most this): 16 MiB less room for the header each record is stored with.
/// Every node's data log accepts records this large, so that an entry a peer
/// with a higher limit committed can always be stored.
pub const MAX_RECORD_BYTES: u64 = (16 << 20) - 64;

/// What a data log must accept (see [`Settings::record_log_config`]): the
/// largest record and its header.
pub(crate) const MAX_STORED_BYTES: u64 = MAX_RECORD_BYTES + store::RECORD_HEADER_BYTES;

/// Appended value bytes queued for the Raft thread, at most; further appends
/// wait. (Proposed, uncommitted entries are bounded by Raft's
/// `max_uncommitted_size`: the leader refuses appends beyond it.)
const QUEUE_BYTES: usize = 64 << 20;
/// What an append costs in the queue budget beyond its values' bytes (its
/// request, reply and bookkeeping): appends of empty values are bounded too.
const APPEND_OVERHEAD_BYTES: usize = 64;
/// How often the logs not synced on the write path are synced while they grow.
const BACKGROUND_SYNC: Duration = Duration::from_millis(50);
/// Events the Raft thread handles between two Ready rounds, at most.
const EVENTS_PER_ROUND: usize = 4096;

/// How a node of the replicated log runs.
#[derive(Clone, Debug)]
pub struct RaftConfig {
    /// This node: its name (its Raft id derives from it) and RPC address.
    pub member: Member,
    /// Where the Raft state (`raft/`) lives, next to the data log (`log/`).
    pub data_dir: PathBuf,
    /// Start a one-member cluster if there is no Raft state yet.
    pub bootstrap: bool,
    /// What an operator chooses: fsync policy, record and segment sizes, Raft
    /// timing. `Fsync::Always` fsyncs every Ready before acknowledging or voting;
    /// `max_record_bytes` is enforced when a record is proposed (a client's or a
    /// forwarded one), never when an entry is applied: nodes may be configured
    /// differently, and a committed entry must apply everywhere.
    pub settings: Settings,
    /// Compact the Raft entries once this many applied entries are held…
    pub compact_entries: u64,
    /// …keeping this many of the newest for followers that briefly lag.
    pub trailing_entries: u64,
    /// Where the node counts what an operator watches (none by default).
    pub metrics: RaftMetrics,
    /// Where the node logs (raft-rs included); the caller names the node in it
    /// if its lines need that (the agent's logger does, once for every line).
    pub logger: Logger,
    /// The Raft group: the default log's ([`GroupId::default`]) or a named
    /// log's, whose messages the transport tags with it.
    pub group: GroupId,
    /// How a named log's group starts on this node (set by [`Logs`]); `None`
    /// for the default log's.
    pub start: Option<GroupStart>,
    /// Memory the remote side fills (queued appends, received messages,
    /// fetched records), bounded in bytes for every group sharing it: [`Logs`]
    /// gives every log of a process the default log's.
    pub budgets: Budgets,
}

/// Byte budgets shared by the Raft groups of a process (clones share them).
#[derive(Clone, Debug)]
pub struct Budgets {
    queued: Arc<Semaphore>,
    inbound: Arc<Semaphore>,
    fetched: Arc<Semaphore>,
}

impl Default for Budgets {
    /// [`QUEUE_BYTES`] of queued appends, [`INBOUND_BYTES`] of received
    /// messages, [`FETCH_BUDGET_BYTES`] of fetched records.
    fn default() -> Self {
        Self {
            queued: Arc::new(Semaphore::new(QUEUE_BYTES)),
            inbound: Arc::new(Semaphore::new(INBOUND_BYTES)),
            fetched: Arc::new(Semaphore::new(FETCH_BUDGET_BYTES)),
        }
    }
}

/// What a named log's group holds of its own, at most: proposed entries not
/// yet committed, and the newest entries kept in memory for followers (the
/// default log's are [`QUEUE_BYTES`] and 8 MiB).
const NAMED_UNCOMMITTED_BYTES: u64 = 8 << 20;
const NAMED_RECENT_BYTES: usize = 1 << 20;

impl RaftConfig {
    /// Defaults of SPEC §3 for `member`, storing under `data_dir`.
    pub fn new(member: Member, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            member,
            data_dir: data_dir.into(),
            bootstrap: true,
            settings: Settings::default(),
            compact_entries: 16_384,
            trailing_entries: 1_024,
            metrics: RaftMetrics::default(),
            logger: Logger::root(slog::Discard, slog::o!()),
            group: GroupId::default(),
            start: None,
            budgets: Budgets::default(),
        }
    }

    fn node_config(&self) -> Result<NodeConfig, LogError> {
        self.settings.validate().map_err(|error| LogError::InvalidArgument(error.to_string()))?;
        let settings = &self.settings;
        let ticks = settings.raft_election_timeout.as_micros() / settings.raft_heartbeat_interval.as_micros();
        Ok(NodeConfig {
            election_tick: usize::try_from(ticks).unwrap_or(usize::MAX),
            election_range: (0, 0),
            heartbeat_tick: 1,
            compact_entries: self.compact_entries.max(1),
            trailing_entries: self.trailing_entries,
            max_batch_bytes: 1 << 20,
            max_uncommitted_bytes: if self.group.is_default() {
                QUEUE_BYTES as u64
            } else {
                NAMED_UNCOMMITTED_BYTES
            },
            leader_changes: self.metrics.leader_changes.clone(),
            snapshot_fetches: self.metrics.snapshot_fetches.clone(),
            retention_bytes: settings.retention_bytes,
            retention_ms: settings.retention_ms,
            producer_expiry_ms: u64::try_from(settings.producer_expiry.as_millis()).unwrap_or(u64::MAX),
        })
    }
}

/// Handles of the metrics a node records as it runs, registered by the caller
/// in whatever recorder it owns (the agent's `/metrics`); no-ops by default.
#[derive(Clone, Debug)]
pub struct RaftMetrics {
    /// Seconds each fsync (or write-out, with `Fsync::Never`) of the Raft
    /// entries took.
    pub fsync_seconds: metrics::Histogram,
    /// Leaders this node saw take over (each election that ended with a new
    /// leader, as etcd's `leader_changes_seen`).
    pub leader_changes: metrics::Counter,
    /// Snapshot record fetches this node started (it was too far behind).
    pub snapshot_fetches: metrics::Counter,
    /// Appends this node forwarded to the leader.
    pub forwarded_appends: metrics::Counter,
}

impl Default for RaftMetrics {
    fn default() -> Self {
        Self {
            fsync_seconds: metrics::Histogram::noop(),
            leader_changes: metrics::Counter::noop(),
            snapshot_fetches: metrics::Counter::noop(),
            forwarded_appends: metrics::Counter::noop(),
        }
    }
}

/// Carries Raft traffic between nodes. Every method returns at once: messages are
/// queued (bounded) or dropped — Raft retries — and results come back through the
/// node's [`Mailbox`].
pub trait Transport: Send + Sync + 'static {
    /// The cluster's members changed (addresses to dial).
    fn set_members(&self, members: &[Member]);
    /// Sends `messages`, all addressed to node `to`, in order. An unreachable
    /// node is reported through [`Mailbox::unreachable`]; a snapshot message's
    /// delivery through [`Mailbox::snapshot_status`].
    fn send(&self, to: u64, messages: Vec<Message>);
    /// Copies committed records `[start, end)` from node `from`'s data log into
    /// `sink`, in order and in bounded chunks (from the lowest offset `from` still
    /// holds, if above `start`).
    fn fetch(&self, from: u64, start: u64, end: u64, sink: FetchSink);
    /// Forwards an append to node `to` (the leader), after every append
    /// forwarded before; the future resolves with the leader's answer (which is
    /// never retried: a lost answer is an error, never a second append).
    fn forward(&self, to: u64, append: Append) -> PendingAppend;
    /// Forwards a command (as [`Mailbox::command`] takes it) to node `to`
    /// (the leader); resolves with its answer once applied there.
    fn command(&self, to: u64, command: Vec<u8>) -> PendingCommand;
}

/// The answer to a forwarded command.
pub type PendingCommand = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), LogError>> + Send>>;

/// Fetched records: values from `first_offset` on, with their timestamps.
struct Chunk {
    first_offset: u64,
    values: Vec<Bytes>,
    timestamps: Vec<u64>,
}

enum Event {
    Append(Proposal, Option<OwnedSemaphorePermit>),
    /// A peer's message, as its transport authenticated the call.
    Message(Box<(PeerId, Message)>, Option<OwnedSemaphorePermit>),
    Unreachable(u64),
    SnapshotStatus(u64, bool),
    Fetched(u64, Box<Chunk>, Option<OwnedSemaphorePermit>),
    FetchFailed(u64, String),
    /// The entries written up to round `.0` are durable.
    Synced(u64),
    /// Syncing the entries failed: the node stops.
    SyncFailed(String),
    Join(Member, ChangeReply),
    Leave(u64, ChangeReply),
    ReadIndex(reads::ReadReply),
    Command(machine::Command, ChangeReply),
    Close,
}

/// Where a transport delivers what it received for a node.
#[derive(Clone, Debug)]
pub struct Mailbox {
    events: std::sync::mpsc::Sender<Event>,
    /// The node's budget for queued appends (shared with [`RaftLog`]'s own).
    queued: Arc<Semaphore>,
    /// Bytes of received messages waiting for the Raft thread, at most
    /// [`INBOUND_BYTES`] (see [`Mailbox::receive`]).
    inbound: Arc<Semaphore>,
    /// The node's `max_record_bytes`, for forwarded appends.
    max_record_bytes: u64,
}

/// Encoded bytes of peers' messages waiting for the Raft thread, at most.
const INBOUND_BYTES: usize = 64 << 20;

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Event")
    }
}

impl Mailbox {
    /// A Raft message from `from`, a peer of this process. `false` once the
    /// node has stopped.
    pub fn deliver(&self, from: PeerId, message: Message) -> bool {
        self.events.send(Event::Message(Box::new((from, message)), None)).is_ok()
    }

    /// A Raft message from `from`, a remote peer (as its transport
    /// authenticated the call), `bytes` long encoded: waits while received
    /// messages hold [`INBOUND_BYTES`] (the transport stops reading, and flow
    /// control holds the peer). The node checks it before Raft sees it. `false`
    /// once the node has stopped.
    pub async fn receive(&self, from: PeerId, message: Message, bytes: usize) -> bool {
        let permits = u32::try_from(bytes.min(INBOUND_BYTES)).unwrap_or(u32::MAX);
        let permit = Arc::clone(&self.inbound).acquire_many_owned(permits).await.ok();
        self.events.send(Event::Message(Box::new((from, message)), permit)).is_ok()
    }

    /// Node `id` could not be reached.
    pub fn unreachable(&self, id: u64) {
        let _ = self.events.send(Event::Unreachable(id));
    }

    /// A command a follower forwarded (JSON, at most a command entry's size):
    /// checked as an entry would be, then proposed here, never forwarded again
    /// (`NotLeader` if this node no longer leads). Only what followers forward
    /// is taken: a log created or deleted (a consumer position is committed on
    /// the leader only, and retention is the leader's own decision). Answers
    /// once applied.
    pub async fn command(&self, command: &[u8]) -> Result<(), LogError> {
        let command = machine::decode_forwarded(command)?;
        let (reply, done) = oneshot::channel();
        self.events.send(Event::Command(command, reply)).map_err(|_| closed())?;
        done.await.unwrap_or_else(|_| Err(closed()))
    }

    /// A snapshot message to node `id` was delivered (or not).
    pub fn snapshot_status(&self, id: u64, delivered: bool) {
        let _ = self.events.send(Event::SnapshotStatus(id, delivered));
    }

    /// Appends `values` on this node, which must lead (a forwarded append is
    /// never forwarded again): once queued (within the node's byte budget for
    /// queued appends), a future of the first value's offset once committed, or
    /// `NotLeader`.
    /// The values obey this node's `max_record_bytes`, as a client's would.
    pub async fn append(&self, append: Append) -> Result<PendingAppend, LogError> {
        check_append(&append.values, self.max_record_bytes)?;
        let permit = queue_permit(&self.queued, &append.values).await;
        let (reply, done) = oneshot::channel();
        let proposal =
            Proposal { values: append.values, context: append.context, producer: append.producer, reply };
        self.events.send(Event::Append(proposal, permit)).map_err(|_| closed())?;
        Ok(Box::pin(async move { done.await.unwrap_or_else(|_| Err(closed())) }))
    }
}

/// Receives the records of a snapshot fetch. Dropped before the fetch is
/// complete, it reports the fetch failed (so it resumes with the next snapshot).
#[derive(Debug)]
pub struct FetchSink {
    id: u64,
    events: std::sync::mpsc::Sender<Event>,
    /// Bytes handed over and not yet written, at most [`FETCH_BUDGET_BYTES`].
    budget: Arc<Semaphore>,
    /// Shared with the node's view: cleared when another fetch replaced this one.
    current: Arc<AtomicU64>,
    done: bool,
}

/// Fetched record bytes waiting for the Raft thread, at most.
const FETCH_BUDGET_BYTES: usize = 8 << 20;

impl FetchSink {
    /// Records from `first_offset` on, following the previous chunk (the first
    /// chunk may start above the requested start, and may be empty, when the
    /// source no longer holds older records); waits while earlier chunks are
    /// still being written. `false` once the node no longer wants them (it
    /// stopped, or started another fetch): stop sending.
    /// `timestamps` are the values' own, in order (missing ones count as 0:
    /// unknown).
    pub async fn chunk(&self, first_offset: u64, values: Vec<Bytes>, timestamps: Vec<u64>) -> bool {
        if self.current.load(Ordering::Acquire) != self.id {
            return false;
        }
        let bytes: usize = values.iter().map(Bytes::len).sum();
        let permits = u32::try_from(bytes.min(FETCH_BUDGET_BYTES)).unwrap_or(u32::MAX);
        let permit = Arc::clone(&self.budget).acquire_many_owned(permits).await.ok();
        let chunk = Box::new(Chunk { first_offset, values, timestamps });
        self.events.send(Event::Fetched(self.id, chunk, permit)).is_ok()
    }

    /// Every record was sent: the sink is not dropped as a failure.
    pub fn finish(mut self) {
        self.done = true;
    }

    /// The fetch stopped early; it resumes from the records already received.
    pub fn fail(mut self, reason: impl Into<String>) {
        self.done = true;
        let _ = self.events.send(Event::FetchFailed(self.id, reason.into()));
    }
}

impl Drop for FetchSink {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.events.send(Event::FetchFailed(self.id, "the fetch was abandoned".into()));
        }
    }
}

/// A node of the Raft-replicated log. Appends go to the leader; reads are served
/// from this node's copy of the committed records (SPEC §1).
///
/// ```
/// use std::sync::Arc;
/// use proglog_raft::{Append, ChannelNetwork, CommitLog, Member, RaftConfig, RaftLog};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let network = ChannelNetwork::new();
/// // A one-member cluster (others may join it later).
/// let config = RaftConfig::new(Member::new("node-0", "127.0.0.1:8400"), dir.path());
/// let records = proglog_log::Log::open(dir.path().join("log"), proglog_log::Config::default())?;
/// let log = Arc::new(RaftLog::open(config, records, network.transport("node-0"))?);
/// network.attach(&log);
/// let offset = log.append(Append::one("hello")).await?.await?; // committed
/// assert_eq!(log.read(offset).await?.value, "hello");
/// assert!(log.status().is_leader);
/// log.close()?;
/// # Ok(())
/// # }
/// ```
pub struct RaftLog {
    member: Member,
    /// How long an append waits for a leader to be elected.
    leader_wait: Duration,
    max_record_bytes: u64,
    forwarded_appends: metrics::Counter,
    /// Why the Raft thread stopped, once it has (not after a clean close).
    failure: watch::Receiver<Option<String>>,
    rejections: Arc<Rejections>,
    transport: Arc<dyn Transport>,
    records: Committed,
    /// The replicated state (consumer positions), as the Raft thread applies it.
    machine: Arc<std::sync::Mutex<machine::Machine>>,
    catalog: watch::Receiver<u64>,
    shared: watch::Receiver<Shared>,
    queued_bytes: Arc<Semaphore>,
    inbound: Arc<Semaphore>,
    events: std::sync::mpsc::Sender<Event>,
    thread: Mutex<Option<JoinHandle<Result<(), LogError>>>>,
    group: GroupId,
    syncer: Mutex<Option<(std::sync::mpsc::Sender<()>, JoinHandle<()>)>>,
}

impl RaftLog {
    /// Opens (or creates) the node's Raft state under `config.data_dir/raft`,
    /// with `records` as its data log (usually `config.data_dir/log`: a log of
    /// a single node from before replication, or of an older layout, is
    /// upgraded in place), and starts its Raft thread, talking to peers through
    /// `transport`. Blocks on disk: call it off the async workers. `records`
    /// must accept values of [`MAX_RECORD_BYTES`] plus a header (see
    /// [`Settings::record_log_config`]).
    pub fn open(config: RaftConfig, records: Log, transport: Arc<dyn Transport>) -> Result<Self, LogError> {
        let node_config = config.node_config()?;
        if records.config().max_record_bytes < MAX_STORED_BYTES {
            return Err(LogError::InvalidArgument(format!(
                "the data log accepts values of at most {} bytes; a replicated log's must accept {MAX_STORED_BYTES} \
                 (a peer may commit records of {MAX_RECORD_BYTES} bytes, each stored with a header)",
                records.config().max_record_bytes
            )));
        }
        let logger = config.logger.clone();
        let records = Arc::new(records);
        let mut store = Store::open(
            &config.data_dir.join("raft"),
            config.settings.fsync,
            &config.member.name,
            Arc::clone(&records),
        )?;
        let mut bootstrap = config.bootstrap;
        if let Some(start) = &config.start {
            store.start_group(start.member_id, start.cluster_id, &start.voters)?;
            store.limit_recent(NAMED_RECENT_BYTES);
            bootstrap = false;
        }
        let framed_from = store.framed_from();
        let rejections = Arc::new(Rejections::default());
        let node = Node::open(
            config.member.clone(),
            store,
            bootstrap,
            node_config,
            logger,
            Arc::clone(&rejections),
        )?;
        let member = node.me().clone();
        // With `Fsync::Never` the data log is synced in the background while it
        // grows, which keeps segment rolls (a roll fsyncs the sealed segment) short.
        let syncer = if config.settings.fsync == Fsync::Never {
            let unsynced = vec![Arc::clone(&records)];
            let (stop_syncer, syncer_stopped) = std::sync::mpsc::channel();
            let syncer = std::thread::Builder::new()
                .name(format!("proglog-sync-{}", config.member.name))
                .spawn(move || sync_in_background(&unsynced, BACKGROUND_SYNC, &syncer_stopped))
                .map_err(|error| LogError::Internal(format!("cannot start the syncer thread: {error}")))?;
            Some((stop_syncer, syncer))
        } else {
            None
        };
        let (events, inbox) = std::sync::mpsc::channel();
        // Entries are fsynced here while the Raft thread goes on with the next
        // round; concurrent requests share one fdatasync.
        let (sync_requests, sync_wanted) = std::sync::mpsc::channel::<u64>();
        let data = Arc::clone(&records);
        let (synced_events, fsync) = (events.clone(), config.settings.fsync);
        let fsync_seconds = config.metrics.fsync_seconds.clone();
        let inline_seconds = config.metrics.fsync_seconds.clone();
        let fsyncer = std::thread::Builder::new()
            .name(format!("proglog-fsync-{}", config.member.name))
            .spawn(move || sync_rounds(&data, fsync, &sync_wanted, &synced_events, &fsync_seconds))
            .map_err(|error| LogError::Internal(format!("cannot start the fsync thread: {error}")))?;
        let committed = node.committed();
        let terms = node.store().terms().clone();
        let machine = node.store().shared_machine();
        let catalog = node.store().watch_catalog();
        let retained = node.store().retained();
        let shared = node.shared();
        let mailbox_events = events.clone();
        let interval = config.settings.raft_heartbeat_interval;
        let (failed, failure) = watch::channel(None);
        let budgets = config.budgets.clone();
        let thread = std::thread::Builder::new()
            .name(format!("proglog-raft-{}", member.name))
            .spawn({
                let transport = Arc::clone(&transport);
                let fetched = Arc::clone(&budgets.fetched);
                move || {
                    // A panic (an invariant of raft-rs or ours) stops the node like
                    // an error: it is reported, never hidden behind a live process.
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let sync = Syncs { requests: &sync_requests, seconds: &inline_seconds };
                        run(node, &inbox, &mailbox_events, &sync, transport.as_ref(), interval, &fetched)
                    }));
                    drop(sync_requests);
                    let _ = fsyncer.join();
                    let result = outcome.unwrap_or_else(|panic| {
                        Err(LogError::Internal(format!(
                            "the Raft thread panicked: {}",
                            panic_message(&panic)
                        )))
                    });
                    if let Err(error) = &result {
                        failed.send_replace(Some(error.to_string()));
                    }
                    result
                }
            })
            .map_err(|error| LogError::Internal(format!("cannot start the Raft thread: {error}")))?;
        Ok(Self {
            leader_wait: config.settings.raft_election_timeout * 2,
            max_record_bytes: config.settings.max_record_bytes,
            forwarded_appends: config.metrics.forwarded_appends.clone(),
            failure,
            rejections,
            member,
            transport,
            records: Committed {
                log: records,
                committed,
                terms: Some(terms),
                framed_from: Some(framed_from),
                retained,
            },
            machine,
            catalog,
            shared,
            queued_bytes: Arc::clone(&budgets.queued),
            inbound: Arc::clone(&budgets.inbound),
            group: config.group.clone(),
            events,
            thread: Mutex::new(Some(thread)),
            syncer: Mutex::new(syncer),
        })
    }

    /// This node.
    pub fn member(&self) -> &Member {
        &self.member
    }

    /// The Raft group this node is of.
    pub fn group(&self) -> &GroupId {
        &self.group
    }

    /// Runs a command on the leader: here if this node leads, else forwarded
    /// (once: the answer is the leader's) to the leader it knows.
    async fn command(&self, command: machine::Command) -> Result<(), LogError> {
        match self.change(|reply| Event::Command(command.clone(), reply)).await {
            Err(LogError::NotLeader { leader: Some(_) }) => {
                let leader_id = self.shared.borrow().leader_id;
                let encoded = serde_json::to_vec(&command)
                    .map_err(|error| LogError::Internal(format!("cannot encode a command: {error}")))?;
                self.transport.command(leader_id, encoded).await
            }
            other => other,
        }
    }

    /// Watches the catalog: changes after every `CreateLog`/`DeleteLog`
    /// applied here (and a snapshot's state installed).
    pub fn watch_catalog(&self) -> watch::Receiver<u64> {
        self.catalog.clone()
    }

    /// The catalog of named logs as this node applied it (on the default
    /// log's node; empty on a named log's).
    pub fn catalog(&self) -> std::collections::BTreeMap<String, LogSpec> {
        self.machine.lock().unwrap_or_else(std::sync::PoisonError::into_inner).logs().clone()
    }

    /// This node as its peers see it: name, member id, address, and its
    /// cluster's id once known (a new node learns it from the cluster).
    pub fn identity(&self) -> PeerId {
        self.shared.borrow().me.clone()
    }

    /// The members of the configuration as this node knows them (voters
    /// first), with their gossip addresses: where a restarted node looks for
    /// its cluster.
    pub fn members(&self) -> Vec<Member> {
        self.shared.borrow().members.clone()
    }

    /// Whether `peer` may make calls only members make (fetch snapshot
    /// records, forward appends): a member of the configuration under that id
    /// and name, of this node's cluster (or, for a member that has not learned
    /// the cluster id yet, of none).
    pub fn check_peer(&self, peer: &PeerId) -> Result<(), Reason> {
        let shared = self.shared.borrow();
        if let (Some(mine), Some(theirs)) = (shared.me.cluster_id, peer.cluster_id)
            && mine != theirs
        {
            return Err(Reason::ClusterId);
        }
        let member = shared.members.iter().any(|m| m.id == peer.member_id && m.name == peer.name);
        if member { Ok(()) } else { Err(Reason::Sender) }
    }

    /// The ids of the configuration's voters.
    pub fn voters(&self) -> Vec<u64> {
        self.shared.borrow().voters.clone()
    }

    /// Peer messages and calls refused so far, by reason.
    pub fn rejections(&self) -> &Arc<Rejections> {
        &self.rejections
    }

    /// Where its transport delivers messages.
    pub fn mailbox(&self) -> Mailbox {
        Mailbox {
            events: self.events.clone(),
            queued: Arc::clone(&self.queued_bytes),
            inbound: Arc::clone(&self.inbound),
            max_record_bytes: self.max_record_bytes,
        }
    }

    /// Adds `member` to the cluster (as a learner, promoted to voter once it has
    /// caught up). Only the leader can: elsewhere [`LogError::NotLeader`].
    pub async fn join(&self, member: Member) -> Result<(), LogError> {
        self.change(|reply| Event::Join(member, reply)).await
    }

    /// Removes member `id` from the cluster (leader only). Refused
    /// ([`Refusal::NoLiveQuorum`](crate::Refusal)) while the voters left would
    /// lack a live majority.
    pub async fn leave(&self, id: u64) -> Result<(), LogError> {
        self.change(|reply| Event::Leave(id, reply)).await
    }

    async fn change(&self, event: impl FnOnce(ChangeReply) -> Event) -> Result<(), LogError> {
        let (reply, done) = oneshot::channel();
        self.send(event(reply))?;
        done.await.unwrap_or_else(|_| Err(closed()))
    }

    /// Waits until a leader is known (or `timeout` passes: `Unavailable`).
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<(), LogError> {
        let mut status = self.watch_status();
        match tokio::time::timeout(timeout, status.wait_for(|status| status.leader.is_some())).await {
            Ok(result) => result,
            Err(_) => Err(LogError::Unavailable(format!("no leader elected within {timeout:?}"))),
        }
    }

    /// Watches this node's status (it changes after Raft rounds).
    pub fn watch_status(&self) -> StatusWatch {
        StatusWatch(self.shared.clone())
    }

    fn send(&self, event: Event) -> Result<(), LogError> {
        self.events.send(event).map_err(|_| closed())
    }

    /// Stops the Raft thread (failing appends still waiting) and closes the state
    /// and the data log cleanly. Blocks on disk.
    pub fn close(&self) -> Result<(), LogError> {
        let thread = self.thread.lock().map_err(|_| LogError::Internal("lock poisoned".into()))?.take();
        let Some(thread) = thread else { return Ok(()) };
        let _ = self.events.send(Event::Close);
        let stopped = thread.join().map_err(|_| LogError::Internal("the Raft thread panicked".into()));
        let syncer = self.syncer.lock().map_err(|_| LogError::Internal("lock poisoned".into()))?.take();
        if let Some((stop, handle)) = syncer {
            drop(stop);
            handle.join().map_err(|_| LogError::Internal("the syncer thread panicked".into()))?;
        }
        stopped??;
        self.records.log.close().map_err(LogError::from)
    }
}

/// A node's status as it changes ([`RaftLog::watch_status`]).
#[derive(Debug, Clone)]
pub struct StatusWatch(watch::Receiver<Shared>);

impl StatusWatch {
    /// Waits for the next change; `Unavailable` once the node has stopped.
    pub async fn changed(&mut self) -> Result<(), LogError> {
        self.0.changed().await.map_err(|_| closed())
    }

    /// Waits until `ready` holds for the status; `Unavailable` once the node
    /// has stopped.
    pub async fn wait_for(&mut self, mut ready: impl FnMut(&LogStatus) -> bool) -> Result<(), LogError> {
        self.0.wait_for(|shared| ready(&shared.status)).await.map(|_| ()).map_err(|_| closed())
    }

    /// The node as its peers see it now ([`RaftLog::identity`]); a transport
    /// stamps its calls with it.
    pub fn identity(&self) -> PeerId {
        self.0.borrow().me.clone()
    }
}

impl std::fmt::Debug for RaftLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftLog").field("member", &self.member).finish_non_exhaustive()
    }
}

/// The message a panic was raised with.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// The clock a leader stamps batches with: ms since the Unix epoch.
fn now_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

fn closed() -> LogError {
    LogError::Unavailable("the log is closed".into())
}

/// Holds the queue budget for `values`: their bytes, and at least a small
/// fixed cost per append, so that appends of tiny values are bounded too.
async fn queue_permit(queue: &Arc<Semaphore>, values: &[Bytes]) -> Option<OwnedSemaphorePermit> {
    let bytes: usize = values.iter().map(Bytes::len).sum::<usize>() + APPEND_OVERHEAD_BYTES;
    let permits = u32::try_from(bytes.min(QUEUE_BYTES)).unwrap_or(u32::MAX);
    Arc::clone(queue).acquire_many_owned(permits).await.ok()
}

/// Where the Raft thread's sync requests go: the fsync thread, or (see `run`)
/// this thread itself.
struct Syncs<'a> {
    requests: &'a std::sync::mpsc::Sender<u64>,
    seconds: &'a metrics::Histogram,
}

/// The Raft thread: wait for an event or the next tick, handle what is queued,
/// then run Ready rounds until Raft has nothing more.
///
/// A round's sync runs on the fsync thread while this thread goes on, except
/// when nothing could go on: a node alone in its cluster (no peer waits for its
/// heartbeats) with no event queued syncs inline, which saves the two thread
/// hops of a unary produce on an idle one-member cluster.
fn run(
    mut node: Node,
    inbox: &std::sync::mpsc::Receiver<Event>,
    events: &std::sync::mpsc::Sender<Event>,
    syncs: &Syncs<'_>,
    transport: &dyn Transport,
    interval: Duration,
    fetched: &Arc<Semaphore>,
) -> Result<(), LogError> {
    use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
    let mut next_tick = Instant::now() + interval;
    let mut outbox = Outbox { members: Some(node.store().members().to_vec()), ..Outbox::default() };
    let fetching = Arc::new(AtomicU64::new(0));
    let mut result = Ok(());
    // An event taken from the inbox to see whether it was empty.
    let mut queued = None;
    'run: loop {
        // Tells a cancelled fetch's task to stop.
        fetching.store(node.fetch_id().unwrap_or(0), Ordering::Release);
        if let Some(round) = outbox.sync.take() {
            if node.alone() && queued.is_none() {
                match inbox.try_recv() {
                    Ok(event) => queued = Some(event),
                    Err(TryRecvError::Empty) => {}
                    Err(TryRecvError::Disconnected) => break,
                }
            }
            if node.alone() && queued.is_none() {
                let started = Instant::now();
                if let Err(error) = node.sync_now(&mut outbox) {
                    result = Err(error);
                    break;
                }
                syncs.seconds.record(started.elapsed().as_secs_f64());
            } else if syncs.requests.send(round).is_err() {
                result = Err(LogError::Internal("the fsync thread stopped".into()));
                break;
            }
        }
        dispatch(&mut outbox, transport, events, &fetching, fetched);
        // More is ready (a backlog applied in slices, a round synced inline): go on at once.
        let wait = if node.has_ready() || queued.is_some() {
            Duration::ZERO
        } else {
            next_tick.saturating_duration_since(Instant::now())
        };
        let mut appends = Vec::new();
        let mut event = match queued.take().map_or_else(|| inbox.recv_timeout(wait), Ok) {
            Ok(event) => Some(event),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut handled = 0;
        while let Some(current) = event.take() {
            match current {
                Event::Append(proposal, _permit) => appends.push(proposal),
                Event::Close => break 'run,
                other => {
                    // Keep appends in order relative to other work.
                    if !appends.is_empty() {
                        node.propose(std::mem::take(&mut appends), now_ms());
                    }
                    if let Err(error) = handle(&mut node, other, &mut outbox) {
                        result = Err(error);
                        break 'run;
                    }
                }
            }
            handled += 1;
            if handled < EVENTS_PER_ROUND {
                event = inbox.try_recv().ok();
            }
        }
        if !appends.is_empty() {
            node.propose(appends, now_ms());
        }
        if Instant::now() >= next_tick {
            node.tick(now_ms());
            next_tick = Instant::now() + interval;
        }
        // A leader's messages go out before its own write (they need not wait for it).
        let mut send_early = |messages: Vec<Message>| send_messages(messages, transport);
        if let Err(error) = node.process_ready(&mut outbox, &mut send_early) {
            result = Err(error);
            break;
        }
    }
    if let Err(error) = &result {
        slog::crit!(node.logger(), "the Raft node stopped"; "error" => %error);
        node.fail_all(error);
    }
    let closed = node.close();
    result.and(closed)
}

fn handle(node: &mut Node, event: Event, outbox: &mut Outbox) -> Result<(), LogError> {
    match event {
        Event::Message(envelope, _received) => {
            let (from, message) = *envelope;
            node.step(&from, message, outbox);
        }
        Event::Unreachable(id) => node.report_unreachable(id),
        Event::SnapshotStatus(id, delivered) => node.report_snapshot(id, delivered),
        Event::Fetched(id, chunk, _written) => {
            node.fetched(id, chunk.first_offset, &chunk.values, &chunk.timestamps)?
        }
        Event::FetchFailed(id, reason) => node.fetch_failed(id, &reason),
        Event::Synced(round) => node.synced(round, outbox),
        Event::SyncFailed(error) => {
            return Err(LogError::Internal(format!("syncing the Raft entries failed: {error}")));
        }
        Event::Join(member, reply) => node.join(member, reply),
        Event::Leave(id, reply) => node.leave(id, reply),
        Event::ReadIndex(reply) => node.read_index(reply),
        Event::Command(command, reply) => node.propose_command(command, reply, now_ms()),
        Event::Append(..) | Event::Close => {}
    }
    Ok(())
}

/// The fsync thread: for each request, syncs the entries written so far (one
/// fdatasync for every request queued meanwhile) and reports the newest round it
/// covers. A failed sync is reported and ends it (the node then stops).
fn sync_rounds(
    entries: &Log,
    fsync: Fsync,
    requests: &std::sync::mpsc::Receiver<u64>,
    events: &std::sync::mpsc::Sender<Event>,
    seconds: &metrics::Histogram,
) {
    while let Ok(mut round) = requests.recv() {
        while let Ok(later) = requests.try_recv() {
            round = round.max(later);
        }
        let started = Instant::now();
        let synced = match fsync {
            Fsync::Always => entries.sync(),
            Fsync::Never => entries.flush(),
        };
        seconds.record(started.elapsed().as_secs_f64());
        let event = match synced {
            Ok(()) => Event::Synced(round),
            Err(error) => Event::SyncFailed(error.to_string()),
        };
        let failed = matches!(event, Event::SyncFailed(_));
        if events.send(event).is_err() || failed {
            return;
        }
    }
}

/// Hands messages to the transport, grouped per peer, in order.
fn send_messages(mut messages: Vec<Message>, transport: &dyn Transport) {
    while !messages.is_empty() {
        let to = messages[0].to;
        let (batch, rest): (Vec<Message>, Vec<Message>) = messages.into_iter().partition(|m| m.to == to);
        transport.send(to, batch);
        messages = rest;
    }
}

/// Hands the outbox to the transport.
fn dispatch(
    outbox: &mut Outbox,
    transport: &dyn Transport,
    events: &std::sync::mpsc::Sender<Event>,
    fetching: &Arc<AtomicU64>,
    fetched: &Arc<Semaphore>,
) {
    if let Some(members) = outbox.members.take() {
        transport.set_members(&members);
    }
    send_messages(std::mem::take(&mut outbox.messages), transport);
    if let Some(fetch) = outbox.fetch.take() {
        let sink = FetchSink {
            id: fetch.id,
            events: events.clone(),
            budget: Arc::clone(fetched),
            current: Arc::clone(fetching),
            done: false,
        };
        transport.fetch(fetch.from, fetch.start, fetch.end, sink);
    }
}

#[async_trait::async_trait]
impl CommitLog for RaftLog {
    /// On the leader, proposes the values; on a follower, forwards them to the
    /// leader it knows (SPEC §1), in order with earlier appends. During an
    /// election it waits (up to two election timeouts) for a leader first:
    /// nothing was sent yet, so this is no retry.
    async fn append(&self, append: Append) -> Result<PendingAppend, LogError> {
        check_append(&append.values, self.max_record_bytes)?;
        if self.shared.borrow().status.leader.is_none() {
            let _ = self.wait_for_leader(self.leader_wait).await;
        }
        let leader = {
            let shared = self.shared.borrow();
            (!shared.status.is_leader).then(|| shared.status.leader.clone())
        };
        if let Some(None) = leader {
            return Err(LogError::NotLeader { leader: None });
        }
        let permit = queue_permit(&self.queued_bytes, &append.values).await;
        if let Some(Some(_)) = leader {
            let count = append.values.len() as u64;
            let leader_id = self.shared.borrow().leader_id;
            self.forwarded_appends.increment(1);
            let forwarded = self.transport.forward(leader_id, append);
            let (mut committed, wait) = (self.records.committed.clone(), self.leader_wait);
            return Ok(Box::pin(async move {
                let _queued = permit;
                let first = forwarded.await?;
                // Readable here too before it is acknowledged (as on the leader),
                // unless this node lags too far behind to wait for.
                let _ = tokio::time::timeout(wait, committed.wait_for(|next| *next >= first + count)).await;
                Ok(first)
            }));
        }
        let (reply, done) = oneshot::channel();
        let proposal =
            Proposal { values: append.values, context: append.context, producer: append.producer, reply };
        self.send(Event::Append(proposal, permit))?;
        Ok(Box::pin(async move { done.await.unwrap_or_else(|_| Err(closed())) }))
    }

    async fn read(&self, offset: u64) -> Result<Record, LogError> {
        self.records.read(offset).await
    }

    async fn read_batch(&self, offset: u64, max_bytes: u64) -> Result<Vec<Record>, LogError> {
        self.records.read_batch(offset, max_bytes).await
    }

    /// Raft's ReadIndex: the leader's commit index once a quorum confirmed it
    /// still leads, then a wait until this node has applied it (at most two
    /// election timeouts each).
    async fn linearize(&self) -> Result<(), LogError> {
        let (reply, index) = oneshot::channel();
        self.send(Event::ReadIndex(reply))?;
        let index = index.await.unwrap_or_else(|_| Err(closed()))?;
        let mut status = self.watch_status();
        match tokio::time::timeout(self.leader_wait, status.wait_for(|status| status.applied_index >= index))
            .await
        {
            Ok(applied) => applied,
            Err(_) => Err(LogError::Unavailable(format!(
                "this node has not applied the leader's read index {index} within {:?}; retry, or read from the leader",
                self.leader_wait
            ))),
        }
    }

    /// Proposed on the leader (elsewhere: `NotLeader`, naming it); answered once
    /// applied. The offset may not pass the end of the committed records.
    async fn commit_offset(&self, group: &str, offset: u64) -> Result<(), LogError> {
        machine::check_group(group)?;
        if offset > self.records.next() {
            return Err(LogError::OutOfRange { offset });
        }
        let command = machine::Command::CommitOffset { group: group.to_owned(), offset };
        self.change(|reply| Event::Command(command, reply)).await
    }

    async fn init_producer(&self) -> Result<u64, LogError> {
        // The same 64 random bits (never 0) as a member id.
        Ok(codec::mint_member_id())
    }

    /// Linearizable: after a read index, from this node's applied state.
    async fn fetch_offset(&self, group: &str) -> Result<Option<u64>, LogError> {
        machine::check_group(group)?;
        self.linearize().await?;
        Ok(self.machine.lock().unwrap_or_else(std::sync::PoisonError::into_inner).position(group))
    }

    fn lowest_offset(&self) -> u64 {
        self.records.lowest()
    }

    fn committed(&self) -> watch::Receiver<u64> {
        self.records.committed.clone()
    }

    async fn servers(&self) -> Result<Vec<ServerInfo>, LogError> {
        Ok(self.shared.borrow().servers.clone())
    }

    fn status(&self) -> LogStatus {
        LogStatus { failure: self.failure.borrow().clone(), ..self.shared.borrow().status.clone() }
    }

    fn failure(&self) -> watch::Receiver<Option<String>> {
        self.failure.clone()
    }
}
