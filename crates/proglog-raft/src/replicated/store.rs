//! The durable Raft state of one node: its entries and its metadata.
//!
//! - Entries live in a [`proglog_log::Log`] of their own (`<data-dir>/raft/entries`)
//!   whose offsets *are* the entry indexes (asserted on every read), so it inherits
//!   the log's crash recovery (a torn tail is cut off), group-committed fsync and
//!   durable suffix truncation (`truncate_from`) for conflicting entries.
//! - Metadata — term and vote, the configuration with every member's name and
//!   address, the snapshot point and a pending snapshot fetch — lives in
//!   `<data-dir>/raft/meta.json`, replaced atomically (write, fsync, rename, fsync
//!   the directory) whenever it changes. The commit index is kept in memory only
//!   (Raft does not need it durable: recovery derives a safe one).
//! - In memory: each held entry's term and first record offset, so `term()` and
//!   the offset of any entry cost no disk read.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use serde::{Deserialize, Serialize};

use super::codec::{ClusterId, Member, batch_header, mint_member_id, node_id};
use super::terms::{TermRanges, Terms};
use crate::{Fsync, LogError};

/// The metadata file.
const META_FILE: &str = "meta.json";
/// Bytes of the newest entries kept in memory.
const RECENT_BYTES: usize = 8 << 20;
/// Entries are one record each; the batch size bounds them, not this.
const MAX_ENTRY_BYTES: u64 = u32::MAX as u64 - 1;

/// A point of the log that entries before it were compacted into.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapshotPoint {
    pub index: u64,
    pub term: u64,
    /// The offset of the first record after it.
    pub end_offset: u64,
}

/// What a snapshot carries besides its Raft metadata: the records are fetched
/// separately, in chunks, from the sender's record log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapshotData {
    /// Records below this offset are covered by the snapshot.
    pub end_offset: u64,
    pub members: Vec<Member>,
    /// The term of each record the sender applied (empty from senders that
    /// kept none).
    #[serde(default)]
    pub terms: TermRanges,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Conf {
    voters: Vec<u64>,
    learners: Vec<u64>,
    voters_outgoing: Vec<u64>,
    learners_next: Vec<u64>,
    auto_leave: bool,
}

impl From<&ConfState> for Conf {
    fn from(cs: &ConfState) -> Self {
        Self {
            voters: cs.voters.clone(),
            learners: cs.learners.clone(),
            voters_outgoing: cs.voters_outgoing.clone(),
            learners_next: cs.learners_next.clone(),
            auto_leave: cs.auto_leave,
        }
    }
}

impl From<&Conf> for ConfState {
    fn from(conf: &Conf) -> Self {
        ConfState {
            voters: conf.voters.clone(),
            learners: conf.learners.clone(),
            voters_outgoing: conf.voters_outgoing.clone(),
            learners_next: conf.learners_next.clone(),
            auto_leave: conf.auto_leave,
            ..ConfState::default()
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    term: u64,
    vote: u64,
    /// A lower bound of the commit index (written with the rest, never alone).
    commit: u64,
    conf: Conf,
    /// Index of the last configuration change applied (0: none).
    conf_index: u64,
    members: Vec<Member>,
    snapshot: SnapshotPoint,
    /// Set while records of a snapshot are being fetched into the record log:
    /// the commit index when the fetch began (recovery must not trust entries
    /// above it to match the record log).
    fetching: Option<u64>,
    /// This node's Raft id, minted with its data dir (0 in files from before).
    #[serde(default)]
    member_id: u64,
    /// The cluster this data dir belongs to (none before it bootstrapped or
    /// first heard from a cluster, and in files from before cluster ids).
    #[serde(default)]
    cluster_id: Option<ClusterId>,
    /// The term of each record, as far as known when compaction cut the held
    /// entries (which name their terms) or a snapshot told (empty in files
    /// from before terms were kept).
    #[serde(default)]
    terms: TermRanges,
}

#[derive(Clone, Copy, Debug)]
struct Held {
    term: u64,
    /// A configuration change.
    conf: bool,
    /// Offset of its first record (the offset after the previous entry's records
    /// for an entry without records).
    start: u64,
}

/// One node's durable Raft state. Implements [`raft::Storage`] for `RawNode`.
#[derive(Debug)]
pub(crate) struct Store {
    entries_log: Arc<proglog_log::Log>,
    dir: PathBuf,
    fsync: Fsync,
    meta: Meta,
    hard_state: HardState,
    /// Entries `snapshot.index + 1 ..`, in order.
    held: VecDeque<Held>,
    /// The newest entries themselves, up to [`RECENT_BYTES`]: what followers
    /// and the apply path ask for, served without reading the disk back.
    recent: VecDeque<Entry>,
    recent_bytes: usize,
    /// Offset after the last entry's records.
    tail_end: u64,
    /// The last entry index known on stable storage (for crash simulation).
    synced_index: u64,
    /// Index applied to the record log (kept by the node; snapshots are taken here).
    applied: u64,
    /// The term of each applied record, for readers.
    terms: Terms,
}

fn internal(context: &str, error: impl std::fmt::Display) -> LogError {
    LogError::Internal(format!("{context}: {error}"))
}

fn damaged(message: String) -> LogError {
    LogError::DataLoss(message)
}

impl Store {
    /// Opens (or creates, empty) the state in `dir` of the node named `name`.
    /// The node's member id is minted (and written) the first time: at random
    /// for a new data dir, as [`node_id`] of the name for state from before
    /// member ids (the id its cluster knows it by).
    pub(crate) fn open(dir: &Path, fsync: Fsync, name: &str) -> Result<Self, LogError> {
        std::fs::create_dir_all(dir).map_err(|error| internal(&dir.display().to_string(), error))?;
        let meta_path = dir.join(META_FILE);
        let meta = match std::fs::read(&meta_path) {
            Ok(bytes) => serde_json::from_slice::<Meta>(&bytes)
                .map_err(|error| damaged(format!("{}: {error}", meta_path.display())))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Meta::default(),
            Err(error) => return Err(internal(&meta_path.display().to_string(), error)),
        };
        let config = proglog_log::Config {
            initial_offset: meta.snapshot.index + 1,
            max_record_bytes: MAX_ENTRY_BYTES,
            ..proglog_log::Config::default()
        };
        let entries_log = Arc::new(proglog_log::Log::open(dir.join("entries"), config)?);
        let hard_state =
            HardState { term: meta.term, vote: meta.vote, commit: meta.commit, ..HardState::default() };
        let mut store = Self {
            entries_log,
            dir: dir.to_path_buf(),
            fsync,
            meta,
            hard_state,
            held: VecDeque::new(),
            recent: VecDeque::new(),
            recent_bytes: 0,
            tail_end: 0,
            synced_index: 0,
            applied: 0,
            terms: Terms::default(),
        };
        store.reconcile()?;
        store.synced_index = store.last();
        store.applied = store.meta.snapshot.index;
        if store.meta.member_id == 0 {
            store.meta.member_id = if store.is_empty() { mint_member_id() } else { node_id(name) };
            store.write_meta()?;
        }
        Ok(store)
    }

    /// This node's Raft id.
    pub(crate) fn member_id(&self) -> u64 {
        self.meta.member_id
    }

    /// The cluster this data dir belongs to, once known.
    pub(crate) fn cluster_id(&self) -> Option<ClusterId> {
        self.meta.cluster_id
    }

    /// Records the cluster this data dir belongs to (minted by a bootstrapped
    /// node from before cluster ids, or learned from the cluster on first contact).
    pub(crate) fn set_cluster_id(&mut self, id: ClusterId) -> Result<(), LogError> {
        self.meta.cluster_id = Some(id);
        self.write_meta()
    }

    /// Makes the entries agree with the snapshot point (after a crash between
    /// writing a new snapshot point and cutting the entries, or on open) and
    /// rebuilds the in-memory view.
    fn reconcile(&mut self) -> Result<(), LogError> {
        let snapshot = self.meta.snapshot;
        let (lowest, next) = (self.entries_log.lowest_offset(), self.entries_log.next_offset());
        let diverges = if next <= snapshot.index {
            true // everything held precedes the point
        } else if lowest <= snapshot.index {
            // The entry at the point is held: the entries after it follow the
            // snapshot only if it is the same entry.
            snapshot.index > 0 && self.read_entry(snapshot.index)?.term != snapshot.term
        } else if lowest == snapshot.index + 1 {
            false // compacted exactly up to the point
        } else {
            return Err(damaged(format!(
                "{}: Raft entries from {} are missing (the snapshot is at {})",
                self.entries_log.dir().display(),
                snapshot.index + 1,
                snapshot.index
            )));
        };
        if diverges {
            self.entries_log.reset(snapshot.index + 1)?;
        }
        self.held.clear();
        self.recent.clear();
        self.recent_bytes = 0;
        self.tail_end = snapshot.end_offset;
        for index in snapshot.index + 1..self.entries_log.next_offset() {
            let entry = self.read_entry(index)?;
            self.push_held(&entry)?;
        }
        Ok(())
    }

    /// Drops the oldest (`front`) or newest kept entry.
    fn forget_recent(&mut self, front: bool) {
        let entry = if front { self.recent.pop_front() } else { self.recent.pop_back() };
        if let Some(entry) = entry {
            self.recent_bytes = self.recent_bytes.saturating_sub(entry.compute_size() as usize);
        }
    }

    /// Entry `index`, from memory if it is recent, else from disk.
    fn entry(&self, index: u64) -> Result<Entry, LogError> {
        let cached = self.recent.front().and_then(|front| index.checked_sub(front.index));
        match cached.and_then(|position| self.recent.get(usize::try_from(position).ok()?)) {
            Some(entry) => Ok(entry.clone()),
            None => self.read_entry(index),
        }
    }

    fn read_entry(&self, index: u64) -> Result<Entry, LogError> {
        let record = self.entries_log.read(index)?;
        let entry = Entry::parse_from_bytes(&record.value)
            .map_err(|error| damaged(format!("Raft entry {index} does not decode: {error}")))?;
        if entry.index != index {
            return Err(damaged(format!("Raft entry stored at {index} says it is {}", entry.index)));
        }
        Ok(entry)
    }

    /// Records `entry` (the next one) in memory, checking its offsets follow.
    fn push_held(&mut self, entry: &Entry) -> Result<(), LogError> {
        let start = self.tail_end;
        if entry.get_entry_type() == EntryType::EntryNormal && !entry.data.is_empty() {
            let (first_offset, count) = batch_header(&entry.data)?;
            if first_offset != start {
                return Err(damaged(format!(
                    "Raft entry {} (term {}) starts at offset {first_offset}, but the entry before ends at {start}",
                    entry.index, entry.term
                )));
            }
            self.tail_end = start + count;
        }
        let conf = entry.get_entry_type() != EntryType::EntryNormal;
        self.held.push_back(Held { term: entry.term, conf, start });
        Ok(())
    }

    pub(crate) fn first(&self) -> u64 {
        self.meta.snapshot.index + 1
    }

    pub(crate) fn last(&self) -> u64 {
        self.meta.snapshot.index + self.held.len() as u64
    }

    /// The offset after the last entry's records (where the leader's next
    /// proposal starts).
    pub(crate) fn tail_end(&self) -> u64 {
        self.tail_end
    }

    /// The offset after the records of entry `index` (in `[first - 1, last]`).
    pub(crate) fn end_offset(&self, index: u64) -> Option<u64> {
        if index == self.meta.snapshot.index {
            return Some(self.meta.snapshot.end_offset);
        }
        if index < self.first() || index > self.last() {
            return None;
        }
        let position = (index - self.first()) as usize;
        Some(self.held.get(position + 1).map_or(self.tail_end, |next| next.start))
    }

    /// The index to restart applying from: the longest prefix of entries whose
    /// records the record log (ending at `record_end`) holds completely, ending
    /// at an entry with records or at one known committed (never above an entry
    /// that might not be committed, nor above a configuration change not yet
    /// applied).
    pub(crate) fn recovered_applied(&self, record_end: u64) -> u64 {
        let known_commit = match self.meta.fetching {
            Some(commit) => commit.min(self.meta.commit),
            None => self.meta.commit,
        };
        let mut applied = self.meta.snapshot.index;
        for (position, held) in self.held.iter().enumerate() {
            let index = self.first() + position as u64;
            let end = self.held.get(position + 1).map_or(self.tail_end, |next| next.start);
            if end > record_end {
                break;
            }
            if held.conf && index > self.meta.conf_index {
                break; // a configuration change not applied yet: apply it again
            }
            let has_records = end > held.start;
            if (has_records && self.meta.fetching.is_none_or(|commit| index <= commit))
                || index <= known_commit
            {
                applied = index;
            }
        }
        applied
    }

    /// Takes what the leader's snapshot knows of the records' terms (before its
    /// records are fetched: they are served as they arrive), kept with the next
    /// write of the metadata.
    pub(crate) fn adopt_terms(&mut self, ranges: &[(u64, u64)]) {
        self.terms.merge(ranges);
        self.meta.terms = self.terms.ranges();
    }

    /// Records from `first_offset` on are committed in `term` (an entry is being
    /// applied): a new range is written before the records are.
    pub(crate) fn note_term(&mut self, first_offset: u64, term: u64) -> Result<(), LogError> {
        if self.terms.note(first_offset, term) {
            self.meta.terms = self.terms.ranges();
            self.write_meta()?;
        }
        Ok(())
    }

    /// The term of each applied record, for readers.
    pub(crate) fn terms(&self) -> &Terms {
        &self.terms
    }

    /// Rebuilds [`Store::terms`] on open: the ranges kept with the metadata,
    /// then those of the held entries whose records the record log (ending at
    /// `record_end`) holds, in part or whole — every record there was
    /// committed, and is served before its entry is applied again. While a snapshot's records were being
    /// fetched, entries above the commit index then are not trusted to match
    /// them (the metadata holds the snapshot's ranges instead).
    pub(crate) fn rebuild_terms(&self, record_end: u64) {
        self.terms.reset(&self.meta.terms);
        for (position, held) in self.held.iter().enumerate() {
            let index = self.first() + position as u64;
            let end = self.held.get(position + 1).map_or(self.tail_end, |next| next.start);
            if held.start >= record_end || self.meta.fetching.is_some_and(|commit| index > commit) {
                break;
            }
            if end > held.start {
                self.terms.note(held.start, held.term);
            }
        }
    }

    pub(crate) fn snapshot_point(&self) -> SnapshotPoint {
        self.meta.snapshot
    }

    pub(crate) fn conf_state(&self) -> ConfState {
        ConfState::from(&self.meta.conf)
    }

    pub(crate) fn conf_index(&self) -> u64 {
        self.meta.conf_index
    }

    pub(crate) fn members(&self) -> &[Member] {
        &self.meta.members
    }

    pub(crate) fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    #[cfg(test)]
    pub(crate) fn synced_index(&self) -> u64 {
        self.synced_index
    }

    /// Simulates a power loss after a crash: entries after `synced_index` are
    /// lost (the store in `dir` must be closed).
    #[cfg(test)]
    pub(crate) fn lose_unsynced(dir: &Path, synced_index: u64) -> Result<(), LogError> {
        let config =
            proglog_log::Config { max_record_bytes: MAX_ENTRY_BYTES, ..proglog_log::Config::default() };
        let entries = proglog_log::Log::open(dir.join("entries"), config)?;
        let cut = synced_index + 1;
        if cut >= entries.lowest_offset() && cut < entries.next_offset() {
            entries.truncate_from(cut)?;
        }
        Ok(())
    }

    pub(crate) fn set_applied(&mut self, index: u64) {
        self.applied = index;
    }

    /// Has no Raft state (never bootstrapped or joined).
    pub(crate) fn is_empty(&self) -> bool {
        self.last() == 0 && self.meta.conf.voters.is_empty() && self.meta.conf.learners.is_empty()
    }

    /// The commit index a snapshot fetch in progress started from, if any.
    pub(crate) fn fetching(&self) -> Option<u64> {
        self.meta.fetching
    }

    /// Starts a fresh cluster (minting its id) whose only voter is `member`, as if from a snapshot
    /// at index 1 (term 1) holding the configuration and the member's name and
    /// address: nodes joining later receive that snapshot and so learn every
    /// member. The record log may already hold `record_end` records (a
    /// single-node log from before replication, made durable by the caller):
    /// they are the snapshot's records, so joiners fetch them. One atomic write.
    pub(crate) fn bootstrap(&mut self, member: &Member, record_end: u64) -> Result<(), LogError> {
        if !self.is_empty() {
            return Err(LogError::Internal("bootstrap of a node that has Raft state".into()));
        }
        self.meta.snapshot = SnapshotPoint { index: 1, term: 1, end_offset: record_end };
        self.meta.commit = 1;
        self.meta.conf = Conf { voters: vec![member.id], ..Conf::default() };
        self.meta.conf_index = 1;
        self.meta.members = vec![member.clone()];
        self.meta.cluster_id = Some(ClusterId::mint());
        self.hard_state.term = 1;
        self.hard_state.commit = 1;
        self.write_meta()?;
        self.reconcile()?;
        self.applied = 1;
        self.synced_index = 1;
        Ok(())
    }

    /// Appends `entries`, first cutting any held entry at or after the first one's
    /// index (a conflicting suffix).
    pub(crate) fn append(&mut self, entries: &[Entry]) -> Result<(), LogError> {
        let Some(first) = entries.first() else { return Ok(()) };
        if first.index < self.first() || first.index > self.last() + 1 {
            return Err(LogError::Internal(format!(
                "Raft appends entry {} to a log holding {}..={}",
                first.index,
                self.first(),
                self.last()
            )));
        }
        if first.index <= self.last() {
            self.entries_log.truncate_from(first.index)?;
            let keep = (first.index - self.first()) as usize;
            self.tail_end = self.held.get(keep).map_or(self.tail_end, |held| held.start);
            self.held.truncate(keep);
            while self.recent.back().is_some_and(|entry| entry.index >= first.index) {
                self.forget_recent(false);
            }
            self.synced_index = self.synced_index.min(first.index - 1);
        }
        let mut encoded = Vec::with_capacity(entries.len());
        for (position, entry) in entries.iter().enumerate() {
            if entry.index != first.index + position as u64 {
                return Err(LogError::Internal(format!("Raft entries out of order at {}", entry.index)));
            }
            self.push_held(entry)?;
            encoded.push(entry.write_to_bytes().map_err(|error| internal("encode", error))?);
        }
        self.entries_log.append_batch(&encoded)?;
        for (entry, bytes) in entries.iter().zip(&encoded) {
            self.recent_bytes += bytes.len();
            self.recent.push_back(entry.clone());
        }
        while self.recent_bytes > RECENT_BYTES && self.recent.len() > 1 {
            self.forget_recent(true);
        }
        Ok(())
    }

    /// Keeps the hard state; term and vote changes are written durably.
    pub(crate) fn set_hard_state(&mut self, hs: &HardState) -> Result<(), LogError> {
        let durable = hs.term != self.meta.term || hs.vote != self.meta.vote;
        self.hard_state = hs.clone();
        if durable {
            self.write_meta()?;
        }
        Ok(())
    }

    pub(crate) fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = commit;
    }

    /// Records an applied configuration change (and the members it names).
    pub(crate) fn set_conf(
        &mut self,
        cs: &ConfState,
        index: u64,
        members: Vec<Member>,
    ) -> Result<(), LogError> {
        self.meta.conf = Conf::from(cs);
        self.meta.conf_index = index;
        self.meta.members = members;
        self.write_meta()
    }

    pub(crate) fn set_fetching(&mut self, commit: Option<u64>) -> Result<(), LogError> {
        if self.meta.fetching != commit {
            self.meta.fetching = commit;
            self.write_meta()?;
        }
        Ok(())
    }

    /// Forgets entries up to `index` (applied, and its records durable in the
    /// record log), keeping its term and end offset as the snapshot point.
    pub(crate) fn compact(&mut self, index: u64) -> Result<(), LogError> {
        if index <= self.meta.snapshot.index {
            return Ok(());
        }
        if index > self.applied {
            return Err(LogError::Internal(format!("compact to {index} beyond applied {}", self.applied)));
        }
        let term = self.entry_term(index)?;
        let end_offset = self.end_offset(index).unwrap_or(self.tail_end);
        let dropped = (index - self.meta.snapshot.index) as usize;
        self.meta.snapshot = SnapshotPoint { index, term, end_offset };
        self.meta.terms = self.terms.ranges();
        self.write_meta()?;
        self.held.drain(..dropped);
        while self.recent.front().is_some_and(|entry| entry.index <= index) {
            self.forget_recent(true);
        }
        self.entries_log.truncate_before(index + 1)?;
        Ok(())
    }

    /// Installs a snapshot received from the leader (its records are already in
    /// the record log). `records_beyond`: the record log holds records past the
    /// snapshot's (from an earlier fetch), so recovery must still not trust the
    /// entries above it.
    pub(crate) fn install_snapshot(
        &mut self,
        meta: &SnapshotMetadata,
        data: &SnapshotData,
        records_beyond: bool,
    ) -> Result<(), LogError> {
        self.meta.snapshot =
            SnapshotPoint { index: meta.index, term: meta.term, end_offset: data.end_offset };
        self.meta.conf = Conf::from(meta.get_conf_state());
        self.meta.conf_index = meta.index;
        self.meta.members = data.members.clone();
        self.adopt_terms(&data.terms);
        self.meta.fetching = records_beyond.then(|| self.meta.fetching.unwrap_or(meta.index).min(meta.index));
        self.meta.commit = self.meta.commit.max(meta.index);
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.write_meta()?;
        self.reconcile()?;
        self.applied = meta.index;
        self.synced_index = self.synced_index.max(meta.index);
        Ok(())
    }

    /// Entries up to `index` were made durable (by a sync elsewhere).
    pub(crate) fn mark_synced(&mut self, index: u64) {
        self.synced_index = self.synced_index.max(index.min(self.last()));
    }

    /// Makes appended entries durable per the fsync policy (on this thread).
    pub(crate) fn sync(&mut self) -> Result<(), LogError> {
        match self.fsync {
            Fsync::Always => self.entries_log.sync()?,
            Fsync::Never => self.entries_log.flush()?,
        }
        self.synced_index = self.last();
        Ok(())
    }

    /// The entries' log (for a background syncer).
    pub(crate) fn entries_log(&self) -> &Arc<proglog_log::Log> {
        &self.entries_log
    }

    /// Where the entries and metadata take space.
    pub(crate) fn size_bytes(&self) -> u64 {
        self.entries_log.size_bytes()
    }

    pub(crate) fn close(&self) -> Result<(), LogError> {
        Ok(self.entries_log.close()?)
    }

    fn entry_term(&self, index: u64) -> Result<u64, LogError> {
        if index == self.meta.snapshot.index {
            return Ok(self.meta.snapshot.term);
        }
        index
            .checked_sub(self.first())
            .and_then(|position| self.held.get(position as usize))
            .map(|held| held.term)
            .ok_or_else(|| LogError::Internal(format!("no Raft entry {index}")))
    }

    fn write_meta(&mut self) -> Result<(), LogError> {
        self.meta.term = self.hard_state.term;
        self.meta.vote = self.hard_state.vote;
        // Never above what is durable (entries of this round are not yet synced).
        self.meta.commit = self.meta.commit.max(self.hard_state.commit.min(self.synced_index));
        let path = self.dir.join(META_FILE);
        let temporary = self.dir.join(format!("{META_FILE}.tmp"));
        let bytes = serde_json::to_vec_pretty(&self.meta).map_err(|error| internal("encode", error))?;
        // Always synced, whatever the fsync policy: it changes rarely (terms,
        // votes, membership) and a torn one would stop the node for good.
        let write = || -> std::io::Result<()> {
            let mut file = File::create(&temporary)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&temporary, &path)?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|error| internal(&path.display().to_string(), error))
    }
}

impl raft::Storage for Store {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState { hard_state: self.hard_state.clone(), conf_state: self.conf_state() })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into().unwrap_or(u64::MAX);
        let mut entries = Vec::new();
        let mut size = 0;
        for index in low..high {
            let entry = self
                .entry(index)
                .map_err(|error| raft::Error::Store(StorageError::Other(Box::new(error))))?;
            size += u64::from(entry.compute_size());
            if !entries.is_empty() && size > max_size {
                break;
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index < self.meta.snapshot.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.entry_term(index).map_err(|_| raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    /// A snapshot at the applied index (whose configuration is the current one);
    /// its records are fetched by the receiver in chunks.
    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let index = self.applied.max(self.meta.snapshot.index);
        if index < self.meta.conf_index {
            // Re-applying after a restart: the configuration is ahead of `index`.
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        let mut snapshot = Snapshot::default();
        let end_offset = self.end_offset(index).unwrap_or(self.meta.snapshot.end_offset);
        let data =
            SnapshotData { end_offset, members: self.meta.members.clone(), terms: self.terms.ranges() };
        // raft-rs treats any other error here as fatal.
        snapshot.data = serde_json::to_vec(&data)
            .map_err(|_| raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))?
            .into();
        let metadata = snapshot.mut_metadata();
        metadata.index = index;
        metadata.term = self
            .entry_term(index)
            .map_err(|_| raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))?;
        metadata.set_conf_state(self.conf_state());
        Ok(snapshot)
    }
}
