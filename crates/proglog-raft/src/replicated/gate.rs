//! The gate in front of raft-rs: every message a peer sends is checked against
//! what Raft allows this node to accept before it is stepped. raft-rs trusts its
//! caller (a commit beyond the log is `fatal!`, `term + 1` may wrap, entries that
//! skip indexes conflict with committed ones), and a peer holding valid
//! credentials is still the network: only our own bugs may stop a node.
//!
//! What fails is dropped, never stepped, and counted by [`Reason`]
//! (`proglog_peer_rejected_total{reason}`); what is merely stale passes, for
//! raft-rs to ignore as it would. Two rules keep honest traffic flowing: nothing
//! an honest raft-rs peer of ours sends is refused, and a heartbeat whose commit
//! index this node cannot hold (it lost unsynced entries, or the sender lies) is
//! stepped with the commit index it already has, so that it still answers and
//! the leader sends what it lacks, but commits nothing it has not verified.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use protobuf::Message as _;
use raft::eraftpb::{ConfChangeV2, Entry, EntryType, Message, MessageType};
use raft::{RawNode, StateRole};

use super::MAX_RECORD_BYTES;
use super::codec::{ClusterId, Member, PeerId, batch_header, decode_batch};
use super::machine::{Command, decode_command, is_command};
use super::reads::parse_read_context;
use super::store::{SnapshotData, Store};

/// Terms, indexes and commit indexes above this are refused: no honest cluster
/// reaches them, and raft-rs's `+ 1`s on them never overflow.
pub(crate) const MAX_TERM: u64 = 1 << 62;
/// A message may raise this node's term by at most this much. Honest peers are
/// never that far ahead (with pre-vote, terms grow only by elections that win);
/// without it one message could lift every node's term to [`MAX_TERM`], where
/// the next election's term would be refused everywhere.
pub(crate) const MAX_TERM_JUMP: u64 = 1 << 20;
/// Members a snapshot may name, at most.
pub(crate) const MAX_MEMBERS: usize = 1024;

/// Why a peer's message (or call) was refused: the `reason` label of
/// `proglog_peer_rejected_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// It belongs to another cluster (or names none while not a member).
    ClusterId,
    /// Its sender is not who the call says, or is this node, or 0.
    Sender,
    /// It is addressed to another node (a wiped data dir's old identity, say).
    Destination,
    /// A kind no peer sends to us (proposals, local kinds, ones we never use).
    MessageType,
    /// A term this node cannot hold (too large, or too far ahead).
    Term,
    /// Indexes that do not follow (entries that skip or overflow).
    Index,
    /// A commit index beyond this node's log.
    Commit,
    /// An entry whose contents do not decode or do not follow the log's offsets.
    Entry,
    /// A snapshot whose metadata or data cannot be installed.
    Snapshot,
    /// Bytes that do not decode as a message.
    Decode,
    /// A record fetch range that is empty or reversed.
    Fetch,
    /// A forwarded append that breaks the rules clients obey.
    Forward,
    /// A second live node claiming a member's name.
    NameConflict,
    /// A certificate that does not carry the node name its holder claims.
    NodeName,
    /// A leave notice that is not the sender's current one (a replay).
    Leave,
    /// A read-index request or answer that breaks the rules, or one request
    /// too many from a peer in a tick.
    ReadIndex,
}

impl Reason {
    /// Every reason, in label order.
    pub const ALL: [Reason; 16] = [
        Self::ClusterId,
        Self::Sender,
        Self::Destination,
        Self::MessageType,
        Self::Term,
        Self::Index,
        Self::Commit,
        Self::Entry,
        Self::Snapshot,
        Self::Decode,
        Self::Fetch,
        Self::Forward,
        Self::NameConflict,
        Self::NodeName,
        Self::Leave,
        Self::ReadIndex,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterId => "cluster_id",
            Self::Sender => "sender",
            Self::Destination => "destination",
            Self::MessageType => "message_type",
            Self::Term => "term",
            Self::Index => "index",
            Self::Commit => "commit",
            Self::Entry => "entry",
            Self::Snapshot => "snapshot",
            Self::Decode => "decode",
            Self::Fetch => "fetch",
            Self::Forward => "forward",
            Self::NameConflict => "name_conflict",
            Self::NodeName => "node_name",
            Self::Leave => "leave",
            Self::ReadIndex => "read_index",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counts of refused peer messages and calls, by [`Reason`]: shared by a node,
/// its transport and its discovery.
#[derive(Debug, Default)]
pub struct Rejections {
    counts: [AtomicU64; Reason::ALL.len()],
}

impl Rejections {
    /// Counts one refusal; returns how many of its kind there were before.
    pub fn count(&self, reason: Reason) -> u64 {
        self.counts[reason as usize].fetch_add(1, Ordering::Relaxed)
    }

    /// The count of every reason (zeros included), in label order.
    pub fn snapshot(&self) -> Vec<(Reason, u64)> {
        Reason::ALL
            .iter()
            .map(|reason| (*reason, self.counts[*reason as usize].load(Ordering::Relaxed)))
            .collect()
    }
}

/// What the gate needs of the receiving node.
pub(crate) struct View<'a> {
    pub raw: &'a RawNode<Store>,
    pub cluster_id: Option<ClusterId>,
    pub members: &'a BTreeMap<u64, Member>,
    /// Written entries are waiting for their sync.
    pub unsynced: bool,
}

/// The outcome of a message that passed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pass {
    /// Step it.
    Step,
    /// Step it, and adopt the sender's cluster id first (this node had none).
    Adopt(ClusterId),
    /// Drop it uncounted: an honest peer's message that is merely stale (a
    /// read-index request to a node that no longer leads, an answer from one).
    Stale,
}

/// Checks `message`, sent by `from` as its transport authenticated the call:
/// `Err` drops it; `Ok` steps it, after counting the reason it was amended for,
/// if any (only a heartbeat's commit index is ever lowered, see the module docs).
pub(crate) fn check(
    view: &View<'_>,
    from: &PeerId,
    message: &mut Message,
) -> Result<(Pass, Option<Reason>), Reason> {
    let pass = check_sender(view, from, message)?;
    if matches!(message.get_msg_type(), MessageType::MsgReadIndex | MessageType::MsgReadIndexResp) {
        return check_read_index(view, from, message)
            .map(|fresh| (if fresh { pass } else { Pass::Stale }, None));
    }
    let amended = check_raft(view, message)?;
    Ok((pass, amended))
}

/// Who sent it: the call's member, to this node, of this cluster.
fn check_sender(view: &View<'_>, from: &PeerId, message: &Message) -> Result<Pass, Reason> {
    let me = view.raw.raft.id;
    if message.from == 0 || message.from == me || message.from != from.member_id {
        return Err(Reason::Sender);
    }
    if message.to != me {
        return Err(Reason::Destination);
    }
    let member = view.members.get(&from.member_id);
    if member.is_some_and(|member| member.name != from.name) {
        return Err(Reason::Sender);
    }
    match (view.cluster_id, from.cluster_id) {
        (Some(mine), Some(theirs)) if mine != theirs => Err(Reason::ClusterId),
        (Some(_), Some(_)) | (None, None) => Ok(Pass::Step),
        // A member that has not learned the id yet (it joined, or runs a version
        // from before cluster ids): only members may go without.
        (Some(_), None) => {
            if member.is_some() {
                Ok(Pass::Step)
            } else {
                Err(Reason::ClusterId)
            }
        }
        (None, Some(theirs)) => {
            // A new node learns its cluster from the first message it takes; a
            // node with state from before cluster ids only from a member it knows
            // by id, name and address.
            let fresh = view.raw.store().is_empty();
            let known = member.is_some_and(|member| member.rpc_addr == from.rpc_addr);
            if fresh || known { Ok(Pass::Adopt(theirs)) } else { Err(Reason::ClusterId) }
        }
    }
}

/// A read-index request (a follower asks the leader) or its answer: one entry
/// holding a context that names the asking node ([`super::reads`]). `Ok(false)`:
/// honest but stale (this node no longer leads; the answer of another term or
/// leader). raft-rs reads the entry without checking it is there, and commits
/// up to an answer's index when its term matches this node's entry there.
fn check_read_index(view: &View<'_>, from: &PeerId, message: &Message) -> Result<bool, Reason> {
    let raft = &view.raw.raft;
    let [entry] = message.entries.as_slice() else { return Err(Reason::ReadIndex) };
    let asker = match message.get_msg_type() {
        MessageType::MsgReadIndex => from.member_id,
        _ => raft.id,
    };
    let plain = entry.get_entry_type() == EntryType::EntryNormal
        && entry.index == 0
        && entry.term == 0
        && entry.context.is_empty();
    if !plain || parse_read_context(&entry.data).is_none_or(|(id, _)| id != asker) {
        return Err(Reason::ReadIndex);
    }
    if message.get_msg_type() == MessageType::MsgReadIndex {
        // raft-rs sends requests without a term; only members ask.
        if message.term != 0 {
            return Err(Reason::Term);
        }
        if !view.members.contains_key(&from.member_id) {
            return Err(Reason::Sender);
        }
        return Ok(raft.state == StateRole::Leader);
    }
    if message.term == 0 || message.term > MAX_TERM || message.index > MAX_TERM {
        return Err(Reason::Term);
    }
    Ok(raft.state == StateRole::Follower && message.term == raft.term && message.from == raft.leader_id)
}

/// What raft-rs may be given: within its invariants for this node's state.
fn check_raft(view: &View<'_>, message: &mut Message) -> Result<Option<Reason>, Reason> {
    use MessageType::*;
    let raft = &view.raw.raft;
    let log = &raft.raft_log;
    let kind = message.get_msg_type();
    match kind {
        MsgAppend
        | MsgAppendResponse
        | MsgRequestVote
        | MsgRequestVoteResponse
        | MsgRequestPreVote
        | MsgRequestPreVoteResponse
        | MsgSnapshot
        | MsgHeartbeat
        | MsgHeartbeatResponse
        | MsgTimeoutNow => {}
        // Proposals, local kinds, and what this log never uses (transfers
        // asked of the leader by a follower).
        _ => return Err(Reason::MessageType),
    }
    if message.term == 0 || message.term > MAX_TERM || message.term > raft.term.saturating_add(MAX_TERM_JUMP)
    {
        return Err(Reason::Term);
    }
    for value in [message.index, message.commit, message.log_term, message.commit_term, message.reject_hint] {
        if value > MAX_TERM {
            return Err(Reason::Index);
        }
    }
    let last = log.last_index();
    match kind {
        MsgAppend => check_append(view, message)?,
        MsgHeartbeat if message.commit > last => {
            message.commit = log.committed;
            return Ok(Some(Reason::Commit));
        }
        MsgSnapshot => check_snapshot(view, message)?,
        MsgAppendResponse => {
            // A follower acknowledges only what this leader sent it.
            if raft.state == StateRole::Leader && message.term == raft.term && message.index > last {
                return Err(Reason::Index);
            }
            if message.request_snapshot != 0 {
                return Err(Reason::MessageType);
            }
        }
        MsgRequestVoteResponse | MsgRequestPreVoteResponse => {
            // A vote can only have been asked for once this node's state was
            // durable (vote requests go out after their round's sync); a grant
            // arriving before is not an answer to it, and winning on it would
            // break raft-rs's `last_index == persisted` assertion.
            let campaigning = matches!(
                (kind, raft.state),
                (MsgRequestVoteResponse, StateRole::Candidate)
                    | (MsgRequestPreVoteResponse, StateRole::PreCandidate)
            );
            let unpersisted = log.persisted != last || log.unstable.snapshot.is_some() || view.unsynced;
            if campaigning && !message.reject && unpersisted {
                return Err(Reason::Sender);
            }
            message.commit = 0;
            message.commit_term = 0;
        }
        MsgRequestVote | MsgRequestPreVote => {
            // raft-rs commits up to a voter's commit index when its entry
            // matches: that is a leader's word to take, not a candidate's.
            message.commit = 0;
            message.commit_term = 0;
        }
        MsgTimeoutNow => {
            // Only from the leader of this node's term (it hands leadership over).
            let follower_of_another =
                raft.state == StateRole::Follower && raft.leader_id != 0 && message.from != raft.leader_id;
            if message.term > raft.term || (message.term == raft.term && follower_of_another) {
                return Err(Reason::Term);
            }
        }
        _ => {}
    }
    Ok(None)
}

/// Entries follow the message's index, their terms never exceed the message's
/// nor go back, their contents decode, and their record offsets follow this
/// node's log — so storing them can never fail.
fn check_append(view: &View<'_>, message: &Message) -> Result<(), Reason> {
    if message.log_term > message.term || (message.index > 0 && message.log_term == 0) {
        return Err(Reason::Term);
    }
    let mut previous_term = message.log_term;
    for (position, entry) in message.entries.iter().enumerate() {
        let index = message.index.checked_add(1 + position as u64).ok_or(Reason::Index)?;
        if entry.index != index || index > MAX_TERM {
            return Err(Reason::Index);
        }
        if entry.term == 0 || entry.term < previous_term || entry.term > message.term {
            return Err(Reason::Term);
        }
        previous_term = entry.term;
        check_entry(entry)?;
    }
    check_offsets(view, message)
}

/// An entry's contents: a record batch (each value within the cluster's
/// ceiling), an empty entry, or a version 2 configuration change of one node
/// with its description.
fn check_entry(entry: &Entry) -> Result<(), Reason> {
    match entry.get_entry_type() {
        // Nothing proposes a normal entry with a context (it would be lost: a
        // batch is stored as its records).
        EntryType::EntryNormal if !entry.context.is_empty() => Err(Reason::Entry),
        EntryType::EntryNormal if entry.data.is_empty() => Ok(()),
        EntryType::EntryNormal if is_command(&entry.data) => {
            decode_command(&entry.data).map(|_| ()).map_err(|_| Reason::Entry)
        }
        EntryType::EntryNormal => {
            let batch = decode_batch(&entry.data).map_err(|_| Reason::Entry)?;
            let within = batch.values.iter().all(|value| value.len() as u64 <= MAX_RECORD_BYTES);
            if batch.values.is_empty() || !within { Err(Reason::Entry) } else { Ok(()) }
        }
        EntryType::EntryConfChangeV2 => {
            let change = ConfChangeV2::parse_from_bytes(&entry.data).map_err(|_| Reason::Entry)?;
            let single = change.get_changes();
            if single.len() != 1 || single[0].node_id == 0 || change.get_transition() != Default::default() {
                return Err(Reason::Entry);
            }
            let member = Member::decode(&entry.context).map_err(|_| Reason::Entry)?;
            if member.id == single[0].node_id { Ok(()) } else { Err(Reason::Entry) }
        }
        EntryType::EntryConfChange => Err(Reason::Entry),
    }
}

/// The record offsets of the entries: each batch starts where the log's
/// records end before it — as this node holds them, for entries it already
/// holds with the same term (raft-rs keeps those), and as the message's own
/// entries say after them.
fn check_offsets(view: &View<'_>, message: &Message) -> Result<(), Reason> {
    let raft_log = &view.raw.raft.raft_log;
    if message.entries.is_empty() || !raft_log.match_term(message.index, message.log_term) {
        return Ok(()); // raft-rs refuses the append (or there is nothing to store)
    }
    let Some(mut end) = offset_after(view, message.index) else { return Ok(()) };
    for entry in message.entries.iter() {
        let held = raft_log.term(entry.index).ok().filter(|term| *term == entry.term);
        let records = (entry.get_entry_type() == EntryType::EntryNormal
            && !entry.data.is_empty()
            && !is_command(&entry.data))
        .then(|| batch_header(&entry.data))
        .transpose()
        .map_err(|_| Reason::Entry)?;
        if let Some((first, count)) = records {
            if first != end {
                return Err(Reason::Entry);
            }
            end = first.checked_add(count).ok_or(Reason::Entry)?;
        }
        // A retention cut never passes the records before it (an honest
        // leader cuts only applied records).
        if entry.get_entry_type() == EntryType::EntryNormal
            && is_command(&entry.data)
            && let Ok((_, Command::Retain { lowest })) = decode_command(&entry.data)
            && lowest > end
        {
            return Err(Reason::Entry);
        }
        if held.is_some() && offset_after(view, entry.index) != Some(end) {
            // Held with the same term, but other records: not the same entry.
            return Err(Reason::Entry);
        }
    }
    Ok(())
}

/// The offset after the records of entry `index` as this node holds it (in its
/// store, or still unstable in raft-rs), if it holds it.
fn offset_after(view: &View<'_>, index: u64) -> Option<u64> {
    let unstable = &view.raw.raft.raft_log.unstable;
    if unstable.entries.is_empty() || index < unstable.offset {
        return view.raw.store().end_offset(index);
    }
    let mut end = view.raw.store().end_offset(unstable.offset - 1)?;
    for entry in unstable.entries.iter().take_while(|entry| entry.index <= index) {
        if entry.get_entry_type() == EntryType::EntryNormal
            && !entry.data.is_empty()
            && !is_command(&entry.data)
        {
            let (first, count) = batch_header(&entry.data).ok()?;
            end = first + count;
        }
    }
    (unstable.entries.last().is_some_and(|last| last.index >= index)).then_some(end)
}

/// A snapshot this node could install: metadata within Raft's rules and a
/// configuration without joint state that names this node, and data that decode.
fn check_snapshot(view: &View<'_>, message: &Message) -> Result<(), Reason> {
    let snapshot = message.get_snapshot();
    let metadata = snapshot.get_metadata();
    let me = view.raw.raft.id;
    if metadata.index == 0 || metadata.index > MAX_TERM || metadata.term == 0 || metadata.term > message.term
    {
        return Err(Reason::Snapshot);
    }
    let log = &view.raw.raft.raft_log;
    if metadata.index == log.committed && !log.match_term(metadata.index, metadata.term) {
        return Err(Reason::Snapshot); // contradicts what this node committed
    }
    let cs = metadata.get_conf_state();
    let joint = !cs.voters_outgoing.is_empty() || !cs.learners_next.is_empty() || cs.auto_leave;
    let ids = cs.voters.iter().chain(cs.learners.iter());
    if joint
        || cs.voters.is_empty()
        || cs.voters.len() + cs.learners.len() > MAX_MEMBERS
        || ids.clone().any(|id| *id == 0)
        || cs.learners.iter().any(|learner| cs.voters.contains(learner))
        || !ids.clone().any(|id| *id == me)
    {
        return Err(Reason::Snapshot);
    }
    let data: SnapshotData = serde_json::from_slice(&snapshot.data).map_err(|_| Reason::Snapshot)?;
    if data.members.len() > MAX_MEMBERS || data.members.iter().any(|member| member.id == 0) {
        return Err(Reason::Snapshot);
    }
    Ok(())
}
