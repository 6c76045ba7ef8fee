//! The replicated log's state machine, without I/O threads or clocks: events in
//! ([`Node::propose`], [`Node::step`], [`Node::tick`], fetched records), then
//! [`Node::process_ready`] persists, applies and fills an [`Outbox`] of messages
//! and record fetches for the driver to carry out. The production driver runs it
//! on a dedicated thread; the simulation drives several in one thread with a
//! simulated network and clock.
//!
//! Offsets (SPEC §1): a record's offset is fixed by the leader when it proposes
//! its entry (the offset after the previous entry's records) and checked by every
//! node that stores the entry at those offsets in its data log, so a record has
//! the same offset everywhere. Applying an entry makes its records readable.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use opentelemetry::trace::{Link, SpanKind, TraceContextExt, Tracer};
use opentelemetry::{KeyValue, global};
use protobuf::Message as _;
use raft::eraftpb::{ConfChangeType, ConfChangeV2, Entry, EntryType, Message, MessageType, Snapshot};
use raft::{RawNode, StateRole};
use slog::Logger;
use tokio::sync::{oneshot, watch};

use super::codec::{BatchMeta, ClusterId, Member, PeerId, batch_len, batch_meta, conf_change, encode_batch};
use super::gate::{self, Pass, Reason, Rejections, View};
use super::machine::{Command, Sequence, encode_command, is_command};
use super::reads::{ReadReply, Reads, parse_read_context};
use super::store::{SnapshotData, Store};
use crate::{Leader, LogError, LogStatus, Refusal, ServerInfo};

/// Replies to an append with the offset of its first value.
pub(crate) type AppendReply = oneshot::Sender<Result<u64, LogError>>;

/// An append waiting to be proposed: its values, the context it was appended
/// in (the caller's trace) and where its offset goes.
pub(crate) struct Proposal {
    pub values: Vec<Bytes>,
    pub context: opentelemetry::Context,
    /// An idempotent producer's id and first sequence.
    pub producer: Option<(u64, u64)>,
    pub reply: AppendReply,
}
/// Replies to a membership change once it is applied.
pub(crate) type ChangeReply = oneshot::Sender<Result<(), LogError>>;

/// How a node runs (the clock-independent part of [`crate::RaftConfig`]).
#[derive(Clone, Debug)]
pub(crate) struct NodeConfig {
    pub election_tick: usize,
    /// Election timeouts are drawn from `[min, max)` ticks (0: raft-rs's
    /// defaults, `[election_tick, 2 * election_tick)`).
    pub election_range: (usize, usize),
    pub heartbeat_tick: usize,
    /// Compact once this many applied entries are held beyond the snapshot point…
    pub compact_entries: u64,
    /// …keeping this many of the newest (so briefly lagging followers need no snapshot).
    pub trailing_entries: u64,
    /// Largest entry the leader builds from merged appends.
    pub max_batch_bytes: usize,
    /// Uncommitted entry bytes the leader accepts before refusing appends.
    pub max_uncommitted_bytes: u64,
    /// Counts the leaders this node saw take over.
    pub leader_changes: metrics::Counter,
    /// Counts the snapshot record fetches this node starts.
    pub snapshot_fetches: metrics::Counter,
    /// Retention, decided by the leader: keep at least this many bytes of
    /// records (older segments go; 0: no limit by size)…
    pub retention_bytes: u64,
    /// …and remove segments whose records are all older than this (ms; 0: no
    /// limit by age).
    pub retention_ms: u64,
    /// Idempotent producers silent this long (ms; 0: never) are forgotten.
    pub producer_expiry_ms: u64,
}

/// Work for the driver after [`Node::process_ready`].
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    /// Raft messages, in order.
    pub messages: Vec<Message>,
    /// Records to fetch for a snapshot: `[start, end)` from member `from`.
    pub fetch: Option<Fetch>,
    /// Membership changed: the members (for address lookup).
    pub members: Option<Vec<Member>>,
    /// Sync the entries written so far, then call [`Node::synced`] with this
    /// round number.
    pub sync: Option<u64>,
}

/// A request to copy committed records from another node's data log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Fetch {
    /// Tells this fetch's chunks from a cancelled one's.
    pub id: u64,
    pub from: u64,
    pub start: u64,
    pub end: u64,
}

enum Waiter {
    /// `trace`: the entry's commit span (empty unless an append in it is traced).
    Append { term: u64, replies: Vec<(u64, AppendReply)>, trace: opentelemetry::Context },
    /// A membership change or a command: its outcome once applied.
    Change { term: u64, reply: ChangeReply },
}

/// What applying an entry gave its waiter.
enum Applied {
    /// The offset of its first record.
    Records(u64),
    /// A change's or a command's outcome.
    Done(Result<(), LogError>),
}

/// A Ready round whose writes are done but not yet known durable.
struct Unsynced {
    number: u64,
    /// The last entry index once it was written.
    last_index: u64,
    /// It wrote entries (rounds that did not complete with the sync before them).
    needs_sync: bool,
    /// Messages to send once it is durable.
    messages: Vec<Message>,
    /// The span of its sync, when a traced entry waits for it.
    sync_trace: Option<opentelemetry::Context>,
}

struct Fetching {
    id: u64,
    snapshot: Message,
    end: u64,
    /// No chunk arrived yet (only the first may move the fetched records' start).
    first_chunk: bool,
}

/// What the status view shows, refreshed after every ready.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Shared {
    pub status: LogStatus,
    pub servers: Vec<ServerInfo>,
    /// This node as its peers see it (its cluster id once known).
    pub me: PeerId,
    /// The members of the configuration, voters first.
    pub members: Vec<Member>,
    /// The voters' ids.
    pub voters: Vec<u64>,
    /// The leader's Raft id (0: none known).
    pub leader_id: u64,
}

/// One node of the replicated log.
pub(crate) struct Node {
    raw: RawNode<Store>,
    me: Member,
    config: NodeConfig,
    logger: Logger,
    members: BTreeMap<u64, Member>,
    /// Records proposed since the last ready (not yet in the store).
    proposed: u64,
    waiters: BTreeMap<u64, Waiter>,
    /// Rounds written and waiting for their sync, in order.
    unsynced: std::collections::VecDeque<Unsynced>,
    /// The commit span of the first traced entry proposed since the last
    /// Ready: the sync of that Ready's entries is traced under it.
    round_trace: Option<opentelemetry::Context>,
    /// The last leader this node saw (for counting leader changes).
    seen_leader: u64,
    fetching: Option<Fetching>,
    /// Ids of fetches started so far.
    fetches: u64,
    /// The commit index when the previous tick ended.
    commit_at_last_tick: u64,
    committed_tx: watch::Sender<u64>,
    shared: watch::Sender<Shared>,
    /// Refused peer messages, by reason (shared with the node's owner).
    rejections: Arc<Rejections>,
    /// Ticks so far, and the tick each reason was last logged at.
    ticks: u64,
    /// The tick each member was last heard from (members only).
    heard: BTreeMap<u64, u64>,
    rejection_logged: [u64; Reason::ALL.len()],
    /// Linearizable reads waiting for a read index.
    reads: Reads,
    /// The timestamp of the batches proposed last.
    timestamp: u64,
    /// The index of the retention cut this leader proposed last.
    retaining: u64,
    /// The index of this leader's first entry of its term: idempotent appends
    /// are checked against the applied state only once it is applied.
    term_start: u64,
    /// Idempotent appends waiting for that.
    held_back: Vec<Proposal>,
    /// This leader's idempotent batches proposed and not yet applied, per
    /// producer: (first sequence, records, entry index).
    in_flight: BTreeMap<u64, Vec<(u64, u64, u64)>>,
}

/// A refusal of each kind is logged at most once per this many ticks (10 s at
/// the default heartbeat); the rest are counted.
const REJECTION_LOG_TICKS: u64 = 100;

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("me", &self.me).finish_non_exhaustive()
    }
}

fn raft_error(error: raft::Error) -> LogError {
    LogError::Internal(format!("raft: {error}"))
}

impl Node {
    /// Opens the node's state from `store` (its Raft state and data log). With
    /// `bootstrap` and no Raft state yet, starts a one-member cluster. `me` gets
    /// the member id the store holds.
    pub(crate) fn open(
        me: Member,
        mut store: Store,
        bootstrap: bool,
        config: NodeConfig,
        logger: Logger,
        rejections: Arc<Rejections>,
    ) -> Result<Self, LogError> {
        let me = me.with_id(store.member_id());
        if !store.is_empty() && store.cluster_id().is_none() && bootstrap {
            // State from before cluster ids, on the node that bootstrapped its
            // cluster: it names the cluster; the others learn the id from it.
            let id = ClusterId::mint();
            store.set_cluster_id(id)?;
            slog::info!(logger, "minted the cluster id of a data dir from before cluster ids"; "cluster_id" => %id);
        }
        if store.is_empty() {
            let data = store.data();
            if bootstrap {
                // The snapshot point will rely on them: durable first.
                data.sync()?;
                store.bootstrap(&me)?;
            } else if data.next_offset() > data.lowest_offset() {
                return Err(LogError::InvalidArgument(format!(
                    "{} holds records but this node has no Raft state to say where they came from; \
                     start it with --bootstrap (a new cluster keeping them) or with an empty data directory",
                    data.dir().display()
                )));
            }
        }
        let applied = store.recovered_applied();
        store.replay(applied, config.producer_expiry_ms)?;
        store.set_applied(applied);
        store.rebuild_terms();
        let mut hard_state = store.hard_state().clone();
        if hard_state.commit < applied {
            hard_state.commit = applied;
            store.set_commit(applied);
        }
        let record_end = store.applied_end();
        let members = store.members().iter().map(|m| (m.id, m.clone())).collect();
        let raft_config = raft::Config {
            id: me.id,
            election_tick: config.election_tick,
            min_election_tick: config.election_range.0,
            max_election_tick: config.election_range.1,
            heartbeat_tick: config.heartbeat_tick,
            applied,
            max_size_per_msg: 1 << 20,
            // With 1 MiB messages: what a peer's send queue holds.
            max_inflight_msgs: 16,
            check_quorum: true,
            pre_vote: true,
            max_uncommitted_size: config.max_uncommitted_bytes,
            max_committed_size_per_ready: 16 << 20,
            ..raft::Config::default()
        };
        raft_config.validate().map_err(raft_error)?;
        let raw = RawNode::new(&raft_config, store, &logger).map_err(raft_error)?;
        let (committed_tx, _) = watch::channel(record_end);
        let mut node = Self {
            raw,
            me,
            config,
            logger,
            members,
            proposed: 0,
            waiters: BTreeMap::new(),
            unsynced: std::collections::VecDeque::new(),
            round_trace: None,
            seen_leader: raft::INVALID_ID,
            fetching: None,
            fetches: 0,
            commit_at_last_tick: 0,
            committed_tx,
            shared: watch::Sender::new(Shared::default()),
            rejections,
            ticks: 0,
            heard: BTreeMap::new(),
            rejection_logged: [0; Reason::ALL.len()],
            reads: Reads::default(),
            timestamp: 0,
            retaining: 0,
            term_start: u64::MAX,
            held_back: Vec::new(),
            in_flight: BTreeMap::new(),
        };
        // A lone voter need not wait out an election timeout.
        let cs = node.raw.store().conf_state();
        if cs.voters == [node.me.id] && cs.learners.is_empty() {
            node.raw.campaign().map_err(raft_error)?;
        }
        node.refresh();
        Ok(node)
    }

    pub(crate) fn logger(&self) -> &Logger {
        &self.logger
    }

    /// This node, with its member id.
    pub(crate) fn me(&self) -> &Member {
        &self.me
    }

    #[cfg(test)]
    pub(crate) fn id(&self) -> u64 {
        self.me.id
    }

    /// The offset after the applied records: readers read below it.
    pub(crate) fn applied_end(&self) -> u64 {
        self.raw.store().applied_end()
    }

    pub(crate) fn shared(&self) -> watch::Receiver<Shared> {
        self.shared.subscribe()
    }

    pub(crate) fn committed(&self) -> watch::Receiver<u64> {
        self.committed_tx.subscribe()
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    pub(crate) fn term(&self) -> u64 {
        self.raw.raft.term
    }

    pub(crate) fn applied(&self) -> u64 {
        self.raw.raft.raft_log.applied
    }

    pub(crate) fn store(&self) -> &Store {
        self.raw.store()
    }

    fn leader(&self) -> Option<Leader> {
        self.members
            .get(&self.raw.raft.leader_id)
            .map(|member| Leader { id: member.name.clone(), rpc_addr: member.rpc_addr.clone() })
    }

    fn not_leader(&self) -> LogError {
        LogError::NotLeader { leader: self.leader() }
    }

    /// A tick of the Raft clock, at `now_ms` (the wall clock a leader's
    /// retention by age counts in).
    pub(crate) fn tick(&mut self, now_ms: u64) {
        self.ticks += 1;
        self.raw.tick();
        self.maybe_retain(now_ms);
        let election = self.config.election_tick as u64;
        let leader = self.leader();
        self.reads.tick(self.ticks, election, 2 * election, || match &leader {
            None => LogError::NotLeader { leader: None },
            Some(_) => LogError::Unavailable("the leader did not confirm a read index in time; retry".into()),
        });
        if self.is_leader() {
            self.promote_caught_up_learner();
            self.announce_address();
        }
        self.commit_at_last_tick = self.raw.raft.raft_log.committed;
    }

    /// A leader restarted at another address tells the cluster (tried every tick
    /// until a configuration change can be proposed).
    fn announce_address(&mut self) {
        let stale = self.members.get(&self.me.id).is_some_and(|known| *known != self.me);
        if stale
            && !self.raw.raft.has_pending_conf()
            && self.raw.store().conf_state().voters.contains(&self.me.id)
        {
            let (reply, _) = oneshot::channel();
            self.join(self.me.clone(), reply);
        }
    }

    /// Proposes `command` (leader only), stamped like a batch; `reply` learns
    /// its outcome once it is applied.
    pub(crate) fn propose_command(&mut self, mut command: Command, reply: ChangeReply, now_ms: u64) {
        if !self.is_leader() {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        if let Command::CreateLog { voters, .. } = &mut command {
            // The new log's group starts with this group's voters.
            let conf = self.raw.raft.prs().conf().voters().ids();
            *voters = conf.iter().filter_map(|id| self.members.get(&id).cloned()).collect();
        }
        self.timestamp = self.timestamp.max(self.raw.store().tail_timestamp()).max(now_ms);
        let data = match encode_command(self.timestamp, &command) {
            Ok(data) => data,
            Err(error) => {
                let _ = reply.send(Err(error));
                return;
            }
        };
        match self.raw.propose(Vec::new(), data) {
            Ok(()) => {
                let index = self.raw.raft.raft_log.last_index();
                self.waiters.insert(index, Waiter::Change { term: self.term(), reply });
            }
            Err(error) => {
                let _ = reply.send(Err(self.proposal_error(error)));
            }
        }
    }

    /// Why raft-rs did not take a proposal, as its caller learns it.
    fn proposal_error(&self, error: raft::Error) -> LogError {
        match error {
            raft::Error::ProposalDropped if self.is_leader() => {
                LogError::refused(Refusal::Overloaded, "the leader has too much uncommitted data; retry")
            }
            raft::Error::ProposalDropped => self.not_leader(),
            other => raft_error(other),
        }
    }

    /// On the leader: proposes a retention cut when its settings call for one
    /// past the current lowest offset (one at a time).
    fn maybe_retain(&mut self, now_ms: u64) {
        if !self.is_leader() || self.retaining > self.applied() {
            return;
        }
        let (bytes, ms) = (self.config.retention_bytes, self.config.retention_ms);
        let store = self.raw.store();
        let cut = store.retention_cut(bytes, ms, now_ms);
        if cut <= store.machine().lowest() {
            return;
        }
        let (reply, _) = oneshot::channel();
        self.propose_command(Command::Retain { lowest: cut }, reply, now_ms);
        self.retaining = self.raw.raft.raft_log.last_index();
        slog::debug!(self.logger, "retention cut proposed"; "lowest" => cut);
    }

    /// A linearizable read: `reply` learns the index this node must have applied
    /// before reading (see [`super::reads`]).
    pub(crate) fn read_index(&mut self, reply: ReadReply) {
        self.reads.add(self.ticks, reply);
    }

    /// Asks raft-rs for a read index for the readers waiting, once it can
    /// answer: a leader is known, and a leader has committed an entry of its
    /// term (raft-rs drops the request otherwise).
    fn ask_read_index(&mut self) {
        let raft = &self.raw.raft;
        let can_answer = match raft.state {
            StateRole::Leader => raft.commit_to_current_term(),
            _ => raft.leader_id != raft::INVALID_ID,
        };
        if can_answer && let Some(context) = self.reads.ask(self.me.id, self.ticks) {
            self.raw.read_index(context);
        }
    }

    /// Proposes appends as one entry per `max_batch_bytes`, stamped `now_ms`
    /// (the leader's clock, ms since the Unix epoch; never below a timestamp
    /// this node stored or proposed before); each reply learns the offset of its
    /// first value once the entry is applied (or why it never will be).
    pub(crate) fn propose(&mut self, appends: Vec<Proposal>, now_ms: u64) {
        self.timestamp = self.timestamp.max(self.raw.store().tail_timestamp()).max(now_ms);
        let mut batch: Vec<Proposal> = Vec::new();
        let mut bytes = 0;
        for proposal in appends {
            if proposal.producer.is_some() {
                // Its own entry (a batch names one producer), in order.
                if !batch.is_empty() {
                    self.propose_entry(std::mem::take(&mut batch), None);
                    bytes = 0;
                }
                self.propose_idempotent(proposal);
                continue;
            }
            let size = batch_len(&proposal.values);
            if !batch.is_empty() && bytes + size > self.config.max_batch_bytes {
                self.propose_entry(std::mem::take(&mut batch), None);
                bytes = 0;
            }
            bytes += size;
            batch.push(proposal);
        }
        if !batch.is_empty() {
            self.propose_entry(batch, None);
        }
    }

    /// An idempotent append (SPEC §11): checked against the producer's applied
    /// batches and this leader's in flight — a retry of what is appended gets
    /// its offset (or waits for the batch in flight), a gap is refused, and the
    /// next sequence is proposed. Until the leader has applied the first entry
    /// of its term, the applied state may lack batches an earlier leader
    /// committed: the append waits for it.
    fn propose_idempotent(&mut self, proposal: Proposal) {
        let Some((id, sequence)) = proposal.producer else {
            self.propose_entry(vec![proposal], None);
            return;
        };
        if !self.is_leader() {
            let _ = proposal.reply.send(Err(self.not_leader()));
            return;
        }
        if self.applied() < self.term_start {
            self.held_back.push(proposal);
            return;
        }
        let count = proposal.values.len() as u64;
        let in_flight = self.in_flight.get(&id).map(Vec::as_slice).unwrap_or_default();
        let expected = in_flight.last().map_or_else(
            || self.raw.store().machine().next_sequence(id),
            |(first, records, _)| first + records,
        );
        // A retry of a batch in flight: answered with it.
        let pending = in_flight.iter().find(|(first, records, _)| {
            *first <= sequence && sequence.saturating_add(count) <= first + records
        });
        if let Some(&(first, _, index)) = pending
            && let Some(Waiter::Append { replies, .. }) = self.waiters.get_mut(&index)
        {
            replies.push((sequence - first, proposal.reply));
            return;
        }
        let checked = self.raw.store().machine().check(id, sequence, count, expected);
        match checked {
            Sequence::Next => {
                let index = self.propose_entry(vec![proposal], Some((id, sequence)));
                if let Some(index) = index {
                    self.in_flight.entry(id).or_default().push((sequence, count, index));
                }
            }
            Sequence::Appended(offset) => {
                let _ = proposal.reply.send(Ok(offset));
            }
            Sequence::OutOfOrder { expected } => {
                let _ = proposal.reply.send(Err(LogError::OutOfOrderSequence(format!(
                    "producer {id}: sequence {sequence} ({count} records) does not follow; the next is {expected}"
                ))));
            }
        }
    }

    /// Before a round: forgets applied batches in flight, and proposes the
    /// idempotent appends held back once the term's first entry is applied
    /// (or fails them, if this node no longer leads).
    fn settle_idempotent(&mut self) {
        let applied = self.applied();
        for batches in self.in_flight.values_mut() {
            batches.retain(|(_, _, index)| *index > applied);
        }
        self.in_flight.retain(|_, batches| !batches.is_empty());
        if self.held_back.is_empty() || (self.is_leader() && applied < self.term_start) {
            return;
        }
        for proposal in std::mem::take(&mut self.held_back) {
            self.propose_idempotent(proposal);
        }
    }

    /// Proposes one entry of `batch` (as producer `producer`'s sequences, if
    /// given); its index, once proposed.
    fn propose_entry(&mut self, batch: Vec<Proposal>, producer: Option<(u64, u64)>) -> Option<u64> {
        if !self.is_leader() {
            let error = self.not_leader();
            for proposal in batch {
                let _ = proposal.reply.send(Err(error.clone()));
            }
            return None;
        }
        let first_offset = self.raw.store().tail_end() + self.proposed;
        let trace = commit_span(&batch, first_offset);
        let mut values = Vec::new();
        let mut replies = Vec::with_capacity(batch.len());
        for proposal in batch {
            replies.push((values.len() as u64, proposal.reply));
            values.extend(proposal.values);
        }
        let count = values.len() as u64;
        let (producer_id, sequence) = producer.unwrap_or_default();
        let meta = BatchMeta { timestamp_ms: self.timestamp, producer_id, sequence };
        match self.raw.propose(Vec::new(), encode_batch(first_offset, meta, &values)) {
            Ok(()) => {
                self.proposed += count;
                let index = self.raw.raft.raft_log.last_index();
                if self.round_trace.is_none() && trace.has_active_span() {
                    self.round_trace = Some(trace.clone());
                }
                trace.span().set_attribute(KeyValue::new("raft.index", index as i64));
                self.waiters.insert(index, Waiter::Append { term: self.term(), replies, trace });
                Some(index)
            }
            Err(error) => {
                let error = self.proposal_error(error);
                for (_, reply) in replies {
                    let _ = reply.send(Err(error.clone()));
                }
                None
            }
        }
    }

    /// Adds `member` as a learner (promoted to voter once caught up); replies once
    /// it is in the configuration. A member's name belongs to one member id: a
    /// node that lost its data comes back as a new member only once its old
    /// identity is removed.
    pub(crate) fn join(&mut self, member: Member, reply: ChangeReply) {
        if member.id == 0 {
            let _ = reply.send(Err(LogError::InvalidArgument(format!(
                "{} has no member id: its node assigns one when it opens its data dir",
                member.name
            ))));
            return;
        }
        if let Some(known) = self.members.get(&member.id).filter(|known| known.name != member.name) {
            let _ = reply.send(Err(LogError::InvalidArgument(format!(
                "node {:?} has the same member id ({}) as member {:?}",
                member.name, member.id, known.name
            ))));
            return;
        }
        if let Some(known) =
            self.members.values().find(|known| known.name == member.name && known.id != member.id)
        {
            let _ = reply.send(Err(LogError::InvalidArgument(format!(
                "the name {:?} belongs to member {}; remove it before adding member {} under that name",
                member.name, known.id, member.id
            ))));
            return;
        }
        let cs = self.raw.store().conf_state();
        let kind = if cs.voters.contains(&member.id) {
            ConfChangeType::AddNode
        } else if cs.learners.contains(&member.id) {
            ConfChangeType::AddLearnerNode
        } else {
            return self.propose_change(ConfChangeType::AddLearnerNode, member, reply);
        };
        if self.members.get(&member.id) == Some(&member) {
            let _ = reply.send(Ok(()));
        } else {
            // A member back at another address: the same role, with the new address.
            self.propose_change(kind, member, reply);
        }
    }

    /// Removes member `id`; replies once it is out of the configuration. The
    /// last voter cannot leave; nor can a voter whose removal would leave the
    /// remaining voters without a live majority (they could then never add it
    /// back). A leader leaving hands leadership over first (the caller asks the
    /// new leader).
    pub(crate) fn leave(&mut self, id: u64, reply: ChangeReply) {
        let cs = self.raw.store().conf_state();
        let name = self.members.get(&id).map_or_else(|| id.to_string(), |member| member.name.clone());
        if !cs.voters.contains(&id) && !cs.learners.contains(&id) {
            let _ = reply.send(Ok(()));
            return;
        }
        if cs.voters == [id] {
            let _ = reply.send(Err(LogError::InvalidArgument(format!(
                "{name} is the only voter: it cannot leave its cluster"
            ))));
            return;
        }
        if !self.is_leader() {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        if cs.voters.contains(&id) && !self.live_majority_without(id) {
            let _ = reply.send(Err(LogError::refused(
                Refusal::NoLiveQuorum,
                format!("removing {name} would leave the remaining voters without a live majority"),
            )));
            return;
        }
        if id == self.me.id {
            let successor = cs
                .voters
                .iter()
                .copied()
                .filter(|id| *id != self.me.id)
                .max_by_key(|id| self.raw.raft.prs().get(*id).map_or(0, |progress| progress.matched));
            if let Some(successor) = successor {
                self.raw.transfer_leader(successor);
            }
            let _ = reply.send(Err(LogError::refused(
                Refusal::LeadershipTransfer,
                "this node leads: leadership is being handed over; ask the new leader to remove it",
            )));
            return;
        }
        let member = self.members.get(&id).cloned().unwrap_or_else(|| Member::new(name, "").with_id(id));
        self.propose_change(ConfChangeType::RemoveNode, member, reply);
    }

    /// Whether the voters other than `id` that this node heard from within the
    /// last election timeout (and itself) are a majority of them.
    fn live_majority_without(&self, id: u64) -> bool {
        let voters = self.raw.store().conf_state().voters;
        let remaining: Vec<u64> = voters.into_iter().filter(|voter| *voter != id).collect();
        let recent = self.ticks.saturating_sub(self.config.election_tick as u64);
        let live = remaining
            .iter()
            .filter(|voter| {
                **voter == self.me.id || self.heard.get(*voter).is_some_and(|tick| *tick >= recent)
            })
            .count();
        live * 2 > remaining.len()
    }

    fn propose_change(&mut self, kind: ConfChangeType, member: Member, reply: ChangeReply) {
        if !self.is_leader() {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        if self.raw.raft.has_pending_conf() {
            let _ = reply.send(Err(LogError::refused(
                Refusal::ChangeInProgress,
                "another membership change is in progress; retry",
            )));
            return;
        }
        match self.raw.propose_conf_change(member.encode(), conf_change(member.id, kind)) {
            Ok(()) => {
                let index = self.raw.raft.raft_log.last_index();
                self.waiters.insert(index, Waiter::Change { term: self.term(), reply });
            }
            Err(error) => {
                let _ = reply.send(Err(raft_error(error)));
            }
        }
    }

    /// A learner whose log has caught up with the commit index of the previous
    /// tick becomes a voter (under steady load it never catches up with the
    /// current one).
    fn promote_caught_up_learner(&mut self) {
        if self.raw.raft.has_pending_conf() {
            return;
        }
        let committed = self.commit_at_last_tick;
        let learner =
            self.raw.store().conf_state().learners.into_iter().find(|id| {
                self.raw.raft.prs().get(*id).is_some_and(|progress| progress.matched >= committed)
            });
        if let Some(member) = learner.and_then(|id| self.members.get(&id).cloned()) {
            let change = conf_change(member.id, ConfChangeType::AddNode);
            if let Err(error) = self.raw.propose_conf_change(member.encode(), change) {
                slog::warn!(self.logger, "cannot promote a learner"; "member" => &member.name, "error" => %error);
            }
        }
    }

    /// Takes a message from peer `from` (as its transport authenticated the
    /// call). It passes the [gate](super::gate) first: what fails is dropped and
    /// counted, never stepped. A snapshot whose records this node lacks is held
    /// back until they are fetched (see [`Node::fetched`]).
    pub(crate) fn step(&mut self, from: &PeerId, mut message: Message, outbox: &mut Outbox) {
        let view = View {
            raw: &self.raw,
            cluster_id: self.raw.store().cluster_id(),
            members: &self.members,
            unsynced: !self.unsynced.is_empty(),
        };
        let pass = match gate::check(&view, from, &mut message) {
            Ok((pass, amended)) => {
                if let Some(reason) = amended {
                    self.rejected(reason, from, &message);
                }
                pass
            }
            Err(reason) => return self.rejected(reason, from, &message),
        };
        if self.members.contains_key(&from.member_id) {
            self.heard.insert(from.member_id, self.ticks);
        }
        if pass == Pass::Stale {
            return;
        }
        if message.get_msg_type() == MessageType::MsgReadIndex && !self.reads.count_peer(from.member_id) {
            return self.rejected(Reason::ReadIndex, from, &message);
        }
        if let Pass::Adopt(cluster_id) = pass {
            if let Err(error) = self.raw.mut_store().set_cluster_id(cluster_id) {
                slog::error!(self.logger, "cannot record the cluster id"; "error" => %error);
                return;
            }
            slog::info!(self.logger, "joined a cluster"; "cluster_id" => %cluster_id, "from" => &from.name);
            self.refresh();
        }
        if message.get_msg_type() == MessageType::MsgSnapshot {
            // The gate checked that the data decode.
            let Ok(data) = serde_json::from_slice::<SnapshotData>(&message.get_snapshot().data) else {
                return;
            };
            if let Some((start, end)) = self.needs_fetch(message.get_snapshot(), &data) {
                self.start_fetch(message, start, end, outbox);
                return;
            }
        }
        if let Err(error) = self.raw.step(message) {
            slog::debug!(self.logger, "message not taken"; "error" => %error);
        }
    }

    /// Counts a refused (or amended) message and says so, naming both sides —
    /// at most once per reason every [`REJECTION_LOG_TICKS`].
    fn rejected(&mut self, reason: Reason, from: &PeerId, message: &Message) {
        let before = self.rejections.count(reason);
        let last = &mut self.rejection_logged[reason as usize];
        if before == 0 || self.ticks >= *last + REJECTION_LOG_TICKS {
            *last = self.ticks;
            slog::warn!(self.logger, "refused a peer's message"; "reason" => reason.as_str(),
                "from" => &from.name, "from_member_id" => from.member_id,
                "from_cluster_id" => from.cluster_id.map(|id| id.to_string()).unwrap_or_default(),
                "cluster_id" => self.raw.store().cluster_id().map(|id| id.to_string()).unwrap_or_default(),
                "member_id" => self.me.id, "type" => ?message.get_msg_type(), "term" => message.term,
                "index" => message.index, "commit" => message.commit, "refused_so_far" => before + 1);
        }
    }

    /// The record range a snapshot needs that this node lacks, if any.
    fn needs_fetch(&self, snapshot: &Snapshot, data: &SnapshotData) -> Option<(u64, u64)> {
        if snapshot.get_metadata().index <= self.raw.raft.raft_log.committed {
            return None;
        }
        let start = self.raw.store().fetch_resume();
        (start < data.end_offset).then_some((start, data.end_offset))
    }

    fn start_fetch(&mut self, snapshot: Message, start: u64, end: u64, outbox: &mut Outbox) {
        if self.fetching.is_some() {
            return; // one fetch at a time; the leader sends the snapshot again
        }
        if let Err(error) = self.raw.mut_store().begin_fetch(start) {
            slog::error!(self.logger, "cannot start the snapshot fetch"; "error" => %error);
            return;
        }
        self.fetches += 1;
        self.config.snapshot_fetches.increment(1);
        let id = self.fetches;
        slog::info!(self.logger, "fetching snapshot records"; "from" => snapshot.from, "start" => start, "end" => end);
        outbox.fetch = Some(Fetch { id, from: snapshot.from, start, end });
        self.fetching = Some(Fetching { id, end, snapshot, first_chunk: true });
    }

    /// Whether fetch `id` is the one in progress (a cancelled one's chunks are
    /// ignored and its task told to stop).
    pub(crate) fn fetch_id(&self) -> Option<u64> {
        self.fetching.as_ref().map(|fetching| fetching.id)
    }

    pub(crate) fn has_ready(&self) -> bool {
        self.raw.has_ready()
    }

    pub(crate) fn is_fetching(&self, id: u64) -> bool {
        self.fetching.as_ref().is_some_and(|fetching| fetching.id == id)
    }

    /// Records of fetch `id`, in order from its start (the first chunk begins
    /// where the source's records begin when it no longer holds older ones; it may
    /// hold no records at all). Once complete, the snapshot is stepped into Raft.
    pub(crate) fn fetched(
        &mut self,
        id: u64,
        first_offset: u64,
        values: &[Bytes],
        timestamps: &[u64],
    ) -> Result<(), LogError> {
        let Some(fetching) = self.fetching.as_mut().filter(|fetching| fetching.id == id) else {
            return Ok(());
        };
        let end = fetching.end;
        let store = self.raw.mut_store();
        let next = store.staged_next()?;
        if first_offset > next {
            if !fetching.first_chunk {
                // A gap inside one fetch: give up; the next snapshot resumes.
                self.fetching = None;
                slog::warn!(self.logger, "snapshot records arrived with a gap"; "expected" => next, "got" => first_offset);
                return Ok(());
            }
            // The source no longer holds [next, first_offset): start where it does.
            store.restage(first_offset.min(end))?;
        }
        fetching.first_chunk = false;
        let next = store.staged_next()?;
        let skip = usize::try_from(next.saturating_sub(first_offset)).unwrap_or(usize::MAX).min(values.len());
        let take = (end.saturating_sub(next) as usize).min(values.len() - skip);
        let complete = next + take as u64 >= end;
        let timestamps = timestamps.get(skip..).unwrap_or_default();
        store.stage(&values[skip..skip + take], &timestamps[..take.min(timestamps.len())], complete)?;
        if complete && let Some(fetching) = self.fetching.take() {
            slog::info!(self.logger, "snapshot records fetched"; "end" => end);
            if let Err(error) = self.raw.step(fetching.snapshot) {
                slog::warn!(self.logger, "snapshot not taken"; "error" => %error);
            }
        }
        Ok(())
    }

    /// Fetch `id` failed or was cut short: the next snapshot message resumes it
    /// from the records already copied.
    pub(crate) fn fetch_failed(&mut self, id: u64, reason: &str) {
        if self.is_fetching(id) {
            self.fetching = None;
            slog::warn!(self.logger, "snapshot fetch failed; it resumes when the leader resends"; "reason" => reason);
        }
    }

    pub(crate) fn report_unreachable(&mut self, id: u64) {
        self.raw.report_unreachable(id);
    }

    pub(crate) fn report_snapshot(&mut self, id: u64, delivered: bool) {
        let status = if delivered { raft::SnapshotStatus::Finish } else { raft::SnapshotStatus::Failure };
        self.raw.report_snapshot(id, status);
    }

    /// Persists, applies and collects what Raft has ready, in the order raft-rs
    /// documents: a leader's messages go out at once (replication overlaps its own
    /// write), a follower's only after its entries and hard state are durable.
    /// `send_early` takes the messages that need not wait for this round's
    /// write (a leader's), so that replication overlaps it.
    pub(crate) fn process_ready(
        &mut self,
        outbox: &mut Outbox,
        send_early: &mut dyn FnMut(Vec<Message>),
    ) -> Result<(), LogError> {
        // Before the Ready: what is proposed now is in its entries (never
        // between a Ready and its advance, which would miscount the offsets).
        self.settle_idempotent();
        self.ask_read_index();
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        for state in ready.take_read_states() {
            if let Some((id, number)) = parse_read_context(&state.request_ctx)
                && id == self.me.id
            {
                self.reads.answered(number, state.index);
            }
        }
        let became_leader = ready.ss().is_some_and(|ss| ss.raft_state == StateRole::Leader);
        if became_leader {
            // Its empty entry of the new term: the applied state is complete
            // once it is applied.
            self.term_start = self.raw.raft.raft_log.last_index();
            self.in_flight.clear();
        }
        if let Some(ss) = ready.ss()
            && ss.leader_id != raft::INVALID_ID
            && ss.leader_id != self.seen_leader
        {
            self.seen_leader = ss.leader_id;
            self.config.leader_changes.increment(1);
        }
        let early = ready.take_messages();
        if !early.is_empty() {
            send_early(early);
        }
        if !ready.snapshot().is_empty() {
            // Installing resets the entries: nothing may be waiting for a sync.
            self.sync_now(outbox)?;
            self.install_snapshot(ready.snapshot().clone(), outbox)?;
        }
        self.apply(ready.take_committed_entries(), outbox)?;
        let conflict = ready.entries().first().is_some_and(|entry| entry.index <= self.raw.store().last());
        if conflict {
            // Cutting a suffix while a sync is in flight would blur what it covered.
            self.sync_now(outbox)?;
        }
        let store = self.raw.mut_store();
        store.append(ready.entries())?;
        if let Some(hs) = ready.hs() {
            store.set_hard_state(hs)?;
        }
        let installed = !ready.snapshot().is_empty();
        if installed {
            // Raft counts an installed snapshot (and entries after it) as
            // persisted only when told: make it so at once.
            store.sync()?;
        }
        let needs_sync = !ready.entries().is_empty() && !installed;
        let sync_trace = self.round_trace.take().filter(|_| needs_sync).map(|commit| {
            let tracer = global::tracer("proglog-raft");
            let span = tracer
                .span_builder("raft.fsync")
                .with_kind(SpanKind::Internal)
                .start_with_context(&tracer, &commit);
            commit.with_span(span)
        });
        let unsynced = Unsynced {
            number: ready.number(),
            last_index: store.last(),
            needs_sync,
            messages: ready.take_persisted_messages(),
            sync_trace,
        };
        self.proposed = 0;
        // The entries are written (readable through `Storage`); their sync runs
        // elsewhere while this thread goes on, and `synced` completes the round.
        self.raw.advance_append_async(ready);
        self.unsynced.push_back(unsynced);
        if needs_sync {
            outbox.sync = Some(self.unsynced.back().map_or(0, |round| round.number));
        } else if installed || self.unsynced.len() == 1 {
            self.complete_rounds(u64::MAX, outbox);
        }
        self.raw.advance_apply();
        self.maybe_compact()?;
        self.raw.mut_store().cut_retained()?;
        if became_leader {
            self.announce_address();
        }
        self.refresh();
        Ok(())
    }

    /// The sync requested for round `number` (and every round before it) is
    /// done: Raft may count those entries as persisted, and the messages that
    /// waited for them (a follower's acknowledgements, votes) go out.
    pub(crate) fn synced(&mut self, number: u64, outbox: &mut Outbox) {
        self.complete_rounds(number, outbox);
    }

    /// Completes the rounds up to `number`, and the rounds after them that need
    /// no sync.
    fn complete_rounds(&mut self, number: u64, outbox: &mut Outbox) {
        let mut persisted = None;
        while let Some(round) = self.unsynced.front() {
            if round.number > number && round.needs_sync {
                break;
            }
            let Some(round) = self.unsynced.pop_front() else { break };
            if round.needs_sync {
                self.raw.mut_store().mark_synced(round.last_index);
            }
            if let Some(trace) = round.sync_trace {
                trace.span().end();
            }
            outbox.messages.extend(round.messages);
            persisted = Some(round.number);
        }
        if let Some(number) = persisted {
            self.raw.on_persist_ready(number);
        }
    }

    /// Raft's progress tracks no node but this one: nothing waits for this
    /// thread during a sync, so it may sync inline (see `run`).
    pub(crate) fn alone(&self) -> bool {
        self.raw.raft.prs().iter().count() == 1
    }

    /// Syncs now, on this thread, and completes every round waiting for a sync.
    pub(crate) fn sync_now(&mut self, outbox: &mut Outbox) -> Result<(), LogError> {
        if let Some(last) = self.unsynced.back().map(|round| round.number) {
            self.raw.mut_store().sync()?;
            self.complete_rounds(last, outbox);
        }
        Ok(())
    }

    fn install_snapshot(&mut self, snapshot: Snapshot, outbox: &mut Outbox) -> Result<(), LogError> {
        let meta = snapshot.get_metadata();
        let data: SnapshotData = serde_json::from_slice(&snapshot.data)
            .map_err(|error| LogError::DataLoss(format!("a snapshot does not decode: {error}")))?;
        self.raw.mut_store().install_snapshot(meta, &data)?;
        self.members = data.members.iter().map(|m| (m.id, m.clone())).collect();
        outbox.members = Some(data.members);
        // Appends this node proposed as leader at or below the snapshot: their
        // fate is unknown here.
        let index = meta.index;
        let unknown: Vec<u64> = self.waiters.range(..=index).map(|(index, _)| *index).collect();
        for index in unknown {
            if let Some(waiter) = self.waiters.remove(&index) {
                fail(
                    waiter,
                    &LogError::Unavailable(
                        "leadership changed; the append may or may not be committed".into(),
                    ),
                );
            }
        }
        self.publish();
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>, outbox: &mut Outbox) -> Result<(), LogError> {
        let mut resolved = Vec::new();
        for entry in entries {
            let index = entry.index;
            let applied = match entry.get_entry_type() {
                EntryType::EntryNormal if is_command(&entry.data) => {
                    Applied::Done(self.raw.mut_store().apply_command(&entry)?)
                }
                EntryType::EntryNormal if !entry.data.is_empty() => {
                    Applied::Records(self.apply_batch(&entry)?)
                }
                EntryType::EntryNormal => Applied::Done(Ok(())),
                EntryType::EntryConfChangeV2 => {
                    self.apply_change(&entry, outbox)?;
                    Applied::Done(Ok(()))
                }
                EntryType::EntryConfChange => {
                    return Err(LogError::DataLoss(format!(
                        "entry {index} is a version 1 change (never proposed)"
                    )));
                }
            };
            self.raw.mut_store().set_applied(index);
            if let Some(waiter) = self.waiters.remove(&index) {
                resolved.push((waiter, entry.term, applied));
            }
        }
        // Readable before acknowledged: a producer may read its record at once.
        self.publish();
        for (waiter, term, applied) in resolved {
            self.resolve(waiter, term, applied);
        }
        Ok(())
    }

    /// Makes an entry's records readable (they are stored): their term first.
    fn apply_batch(&mut self, entry: &Entry) -> Result<u64, LogError> {
        let (first_offset, count, meta) = batch_meta(&entry.data)?;
        let store = self.raw.mut_store();
        store.note_term(first_offset, entry.term)?;
        if meta.producer_id != 0 {
            let expiry = self.config.producer_expiry_ms;
            store.machine().record(
                meta.producer_id,
                meta.sequence,
                count,
                first_offset,
                meta.timestamp_ms,
                expiry,
            );
        }
        Ok(first_offset)
    }

    fn apply_change(&mut self, entry: &Entry, outbox: &mut Outbox) -> Result<(), LogError> {
        if entry.index <= self.raw.store().conf_index() {
            return Ok(()); // applied before a restart; the stored configuration has it
        }
        let change = ConfChangeV2::parse_from_bytes(&entry.data).map_err(|error| {
            LogError::DataLoss(format!("entry {} holds a bad change: {error}", entry.index))
        })?;
        let cs = match self.raw.apply_conf_change(&change) {
            Ok(cs) => cs,
            Err(raft::Error::ConfChangeError(reason)) => {
                // Every node refuses it alike (e.g. it would remove every voter).
                slog::warn!(self.logger, "a configuration change was refused"; "index" => entry.index, "reason" => reason);
                return Ok(());
            }
            Err(error) => return Err(raft_error(error)),
        };
        let member = Member::decode(&entry.context).ok();
        for single in change.get_changes() {
            match single.get_change_type() {
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                    if let Some(member) = member.as_ref().filter(|m| m.id == single.node_id) {
                        self.members.insert(member.id, member.clone());
                    }
                }
                ConfChangeType::RemoveNode => {
                    self.members.remove(&single.node_id);
                }
            }
        }
        let members: Vec<Member> = self.members.values().cloned().collect();
        slog::info!(self.logger, "configuration changed"; "index" => entry.index,
            "voters" => ?cs.voters, "learners" => ?cs.learners);
        if self.is_leader() && !cs.voters.contains(&self.me.id) {
            // A leader removed by a change proposed before it led: raft-rs does
            // not step down by itself (its own progress is gone, and the next
            // commit would panic). The others elect a leader.
            slog::warn!(self.logger, "this leader was removed from the configuration: stepping down");
            let term = self.term();
            self.raw.raft.become_follower(term, raft::INVALID_ID);
        }
        self.raw.mut_store().set_conf(&cs, entry.index, members.clone())?;
        outbox.members = Some(members);
        Ok(())
    }

    fn resolve(&mut self, waiter: Waiter, term: u64, applied: Applied) {
        match (waiter, applied) {
            (Waiter::Append { term: proposed, replies, trace }, Applied::Records(first))
                if proposed == term =>
            {
                trace.span().end();
                for (delta, reply) in replies {
                    let _ = reply.send(Ok(first + delta));
                }
            }
            (Waiter::Change { term: proposed, reply }, Applied::Done(outcome)) if proposed == term => {
                let _ = reply.send(outcome);
            }
            // Another leader's entry took the index: ours was never committed.
            (waiter, _) => fail(waiter, &self.not_leader()),
        }
    }

    /// Every applied record is readable: tell consumers following the tail.
    fn publish(&self) {
        let next = self.applied_end();
        self.committed_tx.send_if_modified(|committed| {
            let changed = *committed != next;
            *committed = next;
            changed
        });
    }

    /// Compacts the entries once enough are applied (their records stay in the
    /// data log: only Raft forgets them).
    fn maybe_compact(&mut self) -> Result<(), LogError> {
        let store = self.raw.store();
        let applied = self.applied();
        let held = applied.saturating_sub(store.snapshot_point().index);
        if held < self.config.compact_entries + self.config.trailing_entries {
            return Ok(());
        }
        let index = applied - self.config.trailing_entries;
        self.raw.mut_store().compact(index)?;
        slog::debug!(self.logger, "compacted Raft entries"; "through" => index);
        Ok(())
    }

    /// Fails every waiter (the node is stopping).
    pub(crate) fn fail_all(&mut self, error: &LogError) {
        for (_, waiter) in std::mem::take(&mut self.waiters) {
            fail(waiter, error);
        }
        self.reads.fail_all(error);
    }

    /// On the leader, the entries each other member lacks.
    fn follower_lag(&self) -> Vec<(String, u64)> {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader {
            return Vec::new();
        }
        let last = raft.raft_log.last_index();
        let mut lag: Vec<(String, u64)> = raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != self.me.id)
            .filter_map(|(id, progress)| {
                Some((self.members.get(id)?.name.clone(), last.saturating_sub(progress.matched)))
            })
            .collect();
        lag.sort_unstable();
        lag
    }

    fn refresh(&self) {
        let raft = &self.raw.raft;
        let cs = self.raw.store().conf_state();
        let leader = self.leader();
        let members: Vec<Member> = cs
            .voters
            .iter()
            .chain(cs.learners.iter())
            .filter_map(|id| self.members.get(id))
            .cloned()
            .collect();
        let servers = members
            .iter()
            .map(|member| ServerInfo {
                id: member.name.clone(),
                rpc_addr: member.rpc_addr.clone(),
                is_leader: member.id == raft.leader_id,
            })
            .collect::<Vec<_>>();
        let next = self.applied_end();
        let data = self.raw.store().data();
        let retained = self.raw.store().retained().load(std::sync::atomic::Ordering::Acquire);
        let lowest_offset = data.lowest_offset().max(retained);
        let status = LogStatus {
            is_leader: raft.state == StateRole::Leader,
            leader,
            term: raft.term,
            commit_index: raft.raft_log.committed,
            applied_index: raft.raft_log.applied,
            members: servers.len(),
            voters: cs.voters.len(),
            lowest_offset,
            highest_offset: (next > lowest_offset).then(|| next - 1),
            bytes: data.size_bytes() + self.raw.store().size_bytes(),
            failure: None,
            follower_lag: self.follower_lag(),
        };
        let me = PeerId {
            name: self.me.name.clone(),
            member_id: self.me.id,
            cluster_id: self.raw.store().cluster_id(),
            rpc_addr: self.me.rpc_addr.clone(),
        };
        let fresh = Shared { status, servers, me, members, voters: cs.voters, leader_id: raft.leader_id };
        self.shared.send_if_modified(|shared| {
            let changed = *shared != fresh;
            if changed {
                *shared = fresh;
            }
            changed
        });
    }

    /// Closes the Raft state (the driver closes the data log).
    pub(crate) fn close(&mut self) -> Result<(), LogError> {
        self.fail_all(&LogError::Unavailable("the log is closing".into()));
        self.raw.mut_store().close()
    }
}

/// The span from proposing an entry to applying it (committed, durable per
/// the fsync policy), when an append merged into it is traced: a child of the
/// first traced append, linked to the others (one entry serves many callers).
fn commit_span(batch: &[Proposal], first_offset: u64) -> opentelemetry::Context {
    let mut traced = batch
        .iter()
        .map(|proposal| &proposal.context)
        .filter(|context| context.span().span_context().is_sampled());
    let Some(parent) = traced.next() else { return opentelemetry::Context::new() };
    let links: Vec<Link> =
        traced.map(|context| Link::with_context(context.span().span_context().clone())).collect();
    let records: usize = batch.iter().map(|proposal| proposal.values.len()).sum();
    let tracer = global::tracer("proglog-raft");
    let span = tracer
        .span_builder("raft.commit")
        .with_kind(SpanKind::Internal)
        .with_links(links)
        .with_attributes([
            KeyValue::new("proglog.first_offset", first_offset as i64),
            KeyValue::new("proglog.records", records as i64),
            KeyValue::new("proglog.appends", batch.len() as i64),
        ])
        .start_with_context(&tracer, parent);
    parent.with_span(span)
}

fn fail(waiter: Waiter, error: &LogError) {
    match waiter {
        Waiter::Append { replies, trace, .. } => {
            trace.span().set_status(opentelemetry::trace::Status::error(error.to_string()));
            trace.span().end();
            for (_, reply) in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
        Waiter::Change { reply, .. } => {
            let _ = reply.send(Err(error.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex, PoisonError};

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SdkTracerProvider, Span, SpanData, SpanProcessor};

    use super::*;

    /// Keeps every finished span.
    #[derive(Clone, Debug, Default)]
    struct Kept(Arc<Mutex<Vec<SpanData>>>);

    impl SpanProcessor for Kept {
        fn on_start(&self, _span: &mut Span, _cx: &opentelemetry::Context) {}
        fn on_end(&self, span: SpanData) {
            self.0.lock().unwrap_or_else(PoisonError::into_inner).push(span);
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _timeout: std::time::Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    fn proposal(context: opentelemetry::Context) -> Proposal {
        let (reply, _) = oneshot::channel();
        Proposal { values: vec![Bytes::from_static(b"v")], context, producer: None, reply }
    }

    #[test]
    fn an_entry_merging_traced_appends_is_committed_under_the_first_and_linked_to_the_others() {
        let kept = Kept::default();
        let provider = SdkTracerProvider::builder().with_span_processor(kept.clone()).build();
        global::set_tracer_provider(provider.clone());
        let tracer = provider.tracer("test");
        let callers: Vec<_> = (0..3)
            .map(|i| opentelemetry::Context::current_with_span(tracer.start(format!("caller {i}"))))
            .collect();
        let untraced = opentelemetry::Context::new();
        let batch: Vec<Proposal> =
            [&untraced, &callers[0], &callers[1], &callers[2]].into_iter().cloned().map(proposal).collect();
        let commit = commit_span(&batch, 41);
        commit.span().end();
        let spans = kept.0.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let commit = spans.iter().find(|span| span.name == "raft.commit").expect("a commit span");
        let caller = |i: usize| callers[i].span().span_context().clone();
        assert_eq!(commit.parent_span_id, caller(0).span_id());
        assert_eq!(commit.span_context.trace_id(), caller(0).trace_id());
        let linked: Vec<_> = commit.links.iter().map(|link| link.span_context.clone()).collect();
        assert_eq!(linked, [caller(1), caller(2)]);
        let first = commit.attributes.iter().find(|kv| kv.key.as_str() == "proglog.first_offset");
        assert_eq!(first.map(|kv| kv.value.clone()), Some(opentelemetry::Value::I64(41)));
        // Nothing traced: no span at all.
        assert!(!commit_span(&[proposal(untraced)], 0).has_active_span());
    }
}
