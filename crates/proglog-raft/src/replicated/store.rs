//! The durable Raft state of one node: one copy of every record, and metadata.
//!
//! - **The data log** (`<data-dir>/log`, a [`proglog_log::Log`]) holds the records
//!   of every stored entry at their offsets, committed or not: it *is* the Raft
//!   log for entries with records, and consumers read it (bounded by the commit
//!   point, see [`crate::records`]). Each record's stored value starts with a
//!   header ([`framed`]): the first record of an entry names the entry (index,
//!   term, record count and a commit index known when it was stored) and its
//!   batch's meta, later ones say they continue it, records copied by a
//!   snapshot say they belong to no entry; each carries its batch's timestamp. So the entries can be rebuilt from the data log alone, and storing a
//!   round's entries is one write and one fdatasync. Records below
//!   `framed_from` (a log from before replication, or the records the record log
//!   of the two-log layout applied before it was upgraded) are stored bare.
//! - **Entries without records** (a new leader's empty entry, configuration
//!   changes) are rare and small: they are kept in the metadata, which is
//!   written (atomically and durably) in the round that stores them.
//! - **Metadata** — term and vote, the configuration with every member's name and
//!   address, the snapshot point, the record-less entries, the records' terms —
//!   lives in `<data-dir>/raft/meta.json`, replaced atomically (write, fsync,
//!   rename, fsync the directory) whenever it changes.
//! - **A snapshot's records** are fetched into `<data-dir>/raft/fetched` (framed
//!   as the data log stores them) while raft-rs still holds this node's entries, and moved into
//!   the data log in the round that installs the snapshot, when raft-rs drops
//!   those entries (the move is redone after a crash: `moving` in the metadata).
//! - In memory: each held entry's term and first record offset, so `term()` and
//!   the offset of any entry cost no disk read, and the newest entries
//!   themselves.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use serde::{Deserialize, Serialize};

use super::codec::{
    Batch, BatchMeta, ClusterId, Member, batch_header, decode_batch, encode_batch, mint_member_id, node_id,
};
use super::machine::{Command, Machine, SavedMachine, decode_command, is_command};
use super::terms::{TermRanges, Terms};
use crate::{Fsync, LogError};

/// The metadata file.
const META_FILE: &str = "meta.json";
/// The replicated state as of an index ([`SavedMachine`]).
const STATE_FILE: &str = "state.json";
/// The staging log of a snapshot fetch: records framed as the data log will
/// store them.
const FETCH_DIR: &str = "fetched";
/// The staging log of data dirs from before timestamps: bare values (a move in
/// progress is finished from it; a fetch in progress starts again).
const OLD_FETCH_DIR: &str = "fetch";
/// The entries log of the two-log layout (upgraded on open).
const OLD_ENTRIES_DIR: &str = "entries";
/// The layout this code writes: the data log holds the entries' records.
const FORMAT: u32 = 2;
/// Bytes of the newest entries kept in memory.
const RECENT_BYTES: usize = 8 << 20;
/// Bytes read from a log per call when gathering records.
const READ_BYTES: u64 = 1 << 20;

/// Kinds of stored record (the first byte of its stored value): a record that
/// belongs to no entry (a snapshot brought it), the first record of an entry,
/// a later record of an entry. Each with the batch's timestamp (the first
/// record: with the whole [`BatchMeta`]); the kinds below 3, without, are those
/// of data logs from before timestamps (read, never written).
const PLAIN_OLD: u8 = 0;
const FIRST_OLD: u8 = 1;
const NEXT_OLD: u8 = 2;
const PLAIN: u8 = 3;
const FIRST: u8 = 4;
const NEXT: u8 = 5;
/// Bytes of the first record's header after its kind: index, term, record
/// count, a known commit index.
const ENTRY_HEADER_BYTES: usize = 8 + 8 + 4 + 8;
/// The largest header a record is stored with: kind, then for the first record
/// of an entry its entry header and the batch's meta.
pub(crate) const RECORD_HEADER_BYTES: u64 = 1 + ENTRY_HEADER_BYTES as u64 + 3 * 8;

/// What the first record of an entry says about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EntryHeader {
    index: u64,
    term: u64,
    count: u64,
    /// A commit index this node knew when it stored the entry (a lower bound).
    commit: u64,
    meta: BatchMeta,
}

/// Where a stored record belongs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// To no entry (a snapshot brought it).
    Plain,
    /// First of its entry.
    First(EntryHeader),
    /// A later record of an entry.
    Next,
}

/// A stored record's header: where it belongs, its batch's timestamp (0:
/// unknown) and where the value starts.
#[derive(Clone, Copy, Debug)]
struct Frame {
    kind: Kind,
    timestamp_ms: u64,
    start: usize,
}

/// `value` as stored, with its header.
fn framed(kind: Kind, timestamp_ms: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER_BYTES as usize + value.len());
    match kind {
        Kind::Plain => out.push(PLAIN),
        Kind::Next => out.push(NEXT),
        Kind::First(header) => {
            out.push(FIRST);
            out.extend_from_slice(&header.index.to_le_bytes());
            out.extend_from_slice(&header.term.to_le_bytes());
            out.extend_from_slice(&u32::try_from(header.count).unwrap_or(u32::MAX).to_le_bytes());
            out.extend_from_slice(&header.commit.to_le_bytes());
            out.extend_from_slice(&header.meta.producer_id.to_le_bytes());
            out.extend_from_slice(&header.meta.sequence.to_le_bytes());
        }
    }
    out.extend_from_slice(&timestamp_ms.to_le_bytes());
    out.extend_from_slice(value);
    out
}

/// Reads the header of a stored value at `offset`.
fn unframe(offset: u64, stored: &[u8]) -> Result<Frame, LogError> {
    let bad = || LogError::DataLoss(format!("the record at offset {offset} has a damaged header"));
    let word = |at: usize, len: usize| -> Result<u64, LogError> {
        let bytes = stored.get(at..at + len).ok_or_else(bad)?;
        let mut padded = [0; 8];
        padded[..len].copy_from_slice(bytes);
        Ok(u64::from_le_bytes(padded))
    };
    let entry = |meta: BatchMeta| -> Result<Kind, LogError> {
        let header = EntryHeader {
            index: word(1, 8)?,
            term: word(9, 8)?,
            count: word(17, 4)?,
            commit: word(21, 8)?,
            meta,
        };
        if header.count == 0 {
            return Err(bad());
        }
        Ok(Kind::First(header))
    };
    let frame = |kind: Kind, at: usize| -> Result<Frame, LogError> {
        Ok(Frame { kind, timestamp_ms: word(at, 8)?, start: at + 8 })
    };
    match stored.first().copied().ok_or_else(bad)? {
        PLAIN_OLD => Ok(Frame { kind: Kind::Plain, timestamp_ms: 0, start: 1 }),
        NEXT_OLD => Ok(Frame { kind: Kind::Next, timestamp_ms: 0, start: 1 }),
        FIRST_OLD => {
            Ok(Frame { kind: entry(BatchMeta::default())?, timestamp_ms: 0, start: 1 + ENTRY_HEADER_BYTES })
        }
        PLAIN => frame(Kind::Plain, 1),
        NEXT => frame(Kind::Next, 1),
        FIRST => {
            let at = 1 + ENTRY_HEADER_BYTES;
            let mut frame = frame(Kind::Plain, at + 16)?;
            let meta = BatchMeta {
                timestamp_ms: frame.timestamp_ms,
                producer_id: word(at, 8)?,
                sequence: word(at + 8, 8)?,
            };
            frame.kind = entry(meta)?;
            Ok(frame)
        }
        _ => Err(bad()),
    }
}

/// The value a caller appended at `offset`, and its batch's timestamp (0:
/// unknown), from what the data log stores there (records below `framed_from`
/// are stored bare).
pub(crate) fn record_value(framed_from: u64, offset: u64, stored: Bytes) -> Result<(Bytes, u64), LogError> {
    if offset < framed_from {
        return Ok((stored, 0));
    }
    let frame = unframe(offset, &stored)?;
    Ok((stored.slice(frame.start..), frame.timestamp_ms))
}

/// The JSON file at `path`, if there is one (a file that does not decode is
/// damaged).
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, LogError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|error| damaged(format!("{}: {error}", path.display()))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(internal(&path.display().to_string(), error)),
    }
}

/// Replaces `dir/name` with `bytes` atomically and durably: write a temporary
/// file, fsync, rename, fsync the directory.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), LogError> {
    let path = dir.join(name);
    let temporary = dir.join(format!("{name}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut file = File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, &path)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(|error| internal(&path.display().to_string(), error))
}

/// A point of the log that entries before it were compacted into.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapshotPoint {
    pub index: u64,
    pub term: u64,
    /// The offset of the first record after it.
    pub end_offset: u64,
}

/// What a snapshot carries besides its Raft metadata: the records are fetched
/// separately, in chunks, from the sender's data log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapshotData {
    /// Records below this offset are covered by the snapshot.
    pub end_offset: u64,
    pub members: Vec<Member>,
    /// The term of each record the sender applied (empty from senders that
    /// kept none).
    #[serde(default)]
    pub terms: TermRanges,
    /// The replicated state after the snapshot's entries (none from senders
    /// from before it).
    #[serde(default)]
    pub machine: Option<Machine>,
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

/// An entry without records, as the metadata keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Control {
    index: u64,
    term: u64,
    /// `EntryType` as a number.
    kind: i32,
    data: Vec<u8>,
    context: Vec<u8>,
}

impl Control {
    fn from_entry(entry: &Entry) -> Self {
        Self {
            index: entry.index,
            term: entry.term,
            kind: entry.get_entry_type() as i32,
            data: entry.data.to_vec(),
            context: entry.context.to_vec(),
        }
    }

    fn to_entry(&self) -> Result<Entry, LogError> {
        let kind = match self.kind {
            0 => EntryType::EntryNormal,
            1 => EntryType::EntryConfChange,
            2 => EntryType::EntryConfChangeV2,
            other => {
                return Err(LogError::DataLoss(format!(
                    "Raft entry {} has unknown type {other}",
                    self.index
                )));
            }
        };
        let mut entry = Entry { index: self.index, term: self.term, ..Entry::default() };
        entry.set_entry_type(kind);
        entry.data = self.data.clone().into();
        entry.context = self.context.clone().into();
        Ok(entry)
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
    /// A snapshot fetch of the two-log layout (read from its files, never written).
    #[serde(default, skip_serializing)]
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
    /// The layout: [`FORMAT`], or 0 for the two-log layout (upgraded on open).
    #[serde(default)]
    format: u32,
    /// Records below this offset are stored bare (no header).
    #[serde(default)]
    framed_from: u64,
    /// The held entries without records, by index.
    #[serde(default)]
    control: Vec<Control>,
    /// Installing a snapshot: its records are being moved from the fetch log
    /// into the data log.
    #[serde(default)]
    moving: Option<Move>,
}

/// Where an installed snapshot's records go in the data log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Move {
    /// The first offset moved: the data log is cut here.
    from: u64,
    /// The data log starts again at `from` (the leader no longer held the
    /// records between this node's and the snapshot's).
    reset: bool,
}

#[derive(Clone, Copy, Debug)]
struct Held {
    term: u64,
    /// A configuration change.
    conf: bool,
    /// Kept in the metadata (it has no records).
    control: bool,
    /// Offset of its first record (the offset after the previous entry's records
    /// for an entry without records).
    start: u64,
}

/// Whether `entry` is stored in the data log: a record batch of at least one
/// record (anything else is kept in the metadata).
fn record_batch(entry: &Entry) -> Option<(u64, u64)> {
    let normal = entry.get_entry_type() == EntryType::EntryNormal && entry.context.is_empty();
    normal.then(|| batch_header(&entry.data).ok()).flatten().filter(|(_, count)| *count > 0)
}

/// One node's durable Raft state. Implements [`raft::Storage`] for `RawNode`.
#[derive(Debug)]
pub(crate) struct Store {
    data: Arc<proglog_log::Log>,
    /// The records of a snapshot being fetched (bare values).
    staging: Option<proglog_log::Log>,
    /// The staging log holds framed records (false: bare values, from before
    /// timestamps).
    staging_framed: bool,
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
    /// What `recent` holds, at most ([`RECENT_BYTES`] unless limited).
    recent_limit: usize,
    /// Offset after the last entry's records.
    tail_end: u64,
    /// The newest batch timestamp stored or staged since open (never goes
    /// back: a new leader's timestamps continue from it).
    tail_timestamp: u64,
    /// The last entry index known on stable storage.
    synced_index: u64,
    /// Index applied (the node's; snapshots are taken here).
    applied: u64,
    /// A commit index known from the stored entries' headers on open.
    recovered_commit: u64,
    /// The replicated state (commands applied up to `machine_index`), shared
    /// with readers.
    machine: Arc<Mutex<Machine>>,
    /// Bumped whenever the catalog of named logs may have changed (a
    /// `CreateLog`/`DeleteLog` applied, a snapshot's state installed): what
    /// `Logs` waits on, instead of comparing the catalog after every round.
    catalog: tokio::sync::watch::Sender<u64>,
    machine_index: u64,
    /// The machine's lowest offset, for readers.
    retained: Arc<AtomicU64>,
    /// A retention cut applied but not yet carried out on disk.
    pending_cut: Option<u64>,
    /// The term of each applied record, for readers.
    terms: Terms,
}

fn internal(context: &str, error: impl std::fmt::Display) -> LogError {
    LogError::Internal(format!("{context}: {error}"))
}

fn damaged(message: String) -> LogError {
    LogError::DataLoss(message)
}

/// Gathers the stored values of `[start, end)` from `log`.
fn read_range(log: &proglog_log::Log, start: u64, end: u64) -> Result<Vec<proglog_log::Record>, LogError> {
    let mut records = Vec::with_capacity(usize::try_from(end - start).unwrap_or(0).min(1 << 16));
    while start + (records.len() as u64) < end {
        let next = start + records.len() as u64;
        let batch = log.read_batch(next, READ_BYTES)?;
        if batch.is_empty() {
            return Err(damaged(format!("{}: no record at offset {next}", log.dir().display())));
        }
        records.extend(batch.into_iter().take_while(|record| record.offset < end));
    }
    Ok(records)
}

impl Store {
    /// Opens (or creates, empty) the state in `dir` of the node named `name`,
    /// whose data log is `data`. A data dir of the two-log layout is upgraded in
    /// place; records of a log from before replication stay as they are (a
    /// bootstrap makes them the first snapshot's). The node's member id is
    /// minted (and written) the first time: at random for a new data dir, as
    /// [`node_id`] of the name for state from before member ids.
    pub(crate) fn open(
        dir: &Path,
        fsync: Fsync,
        name: &str,
        data: Arc<proglog_log::Log>,
    ) -> Result<Self, LogError> {
        std::fs::create_dir_all(dir).map_err(|error| internal(&dir.display().to_string(), error))?;
        let meta = read_json::<Meta>(&dir.join(META_FILE))?;
        let fresh = meta.is_none();
        let meta = meta.unwrap_or_else(|| Meta {
            format: FORMAT,
            // Records of a log from before replication stay bare.
            framed_from: data.next_offset(),
            ..Meta::default()
        });
        let hard_state =
            HardState { term: meta.term, vote: meta.vote, commit: meta.commit, ..HardState::default() };
        let mut store = Self {
            data,
            staging: None,
            staging_framed: true,
            dir: dir.to_path_buf(),
            fsync,
            meta,
            hard_state,
            held: VecDeque::new(),
            recent: VecDeque::new(),
            recent_bytes: 0,
            recent_limit: RECENT_BYTES,
            tail_end: 0,
            tail_timestamp: 0,
            synced_index: 0,
            applied: 0,
            recovered_commit: 0,
            machine: Arc::default(),
            catalog: tokio::sync::watch::Sender::new(0),
            machine_index: 0,
            retained: Arc::default(),
            pending_cut: None,
            terms: Terms::default(),
        };
        if !fresh && (store.meta.format != FORMAT || dir.join(OLD_ENTRIES_DIR).exists()) {
            store.upgrade_two_logs()?;
        }
        if let Some(saved) = read_json::<SavedMachine>(&dir.join(STATE_FILE))? {
            store.retained.store(saved.machine.lowest(), Ordering::Release);
            *store.machine() = saved.machine;
            store.machine_index = saved.index;
        }
        if dir.join(OLD_FETCH_DIR).exists() {
            let old = proglog_log::Log::open(dir.join(OLD_FETCH_DIR), store.data.config().clone())?;
            if store.meta.moving.is_some() {
                store.staging = Some(old);
                store.staging_framed = false;
            } else {
                old.remove()?;
            }
        }
        if store.staging.is_none() && dir.join(FETCH_DIR).exists() {
            store.staging = Some(proglog_log::Log::open(dir.join(FETCH_DIR), store.data.config().clone())?);
        }
        if store.meta.moving.is_some() {
            store.finish_move()?;
        }
        store.reconcile()?;
        store.synced_index = store.last();
        store.applied = store.meta.snapshot.index;
        if store.meta.member_id == 0 {
            store.meta.member_id = if store.is_empty() { mint_member_id() } else { node_id(name) };
            store.write_meta()?;
        }
        Ok(store)
    }

    /// Upgrades the two-log layout: Raft entries in `raft/entries`, and a
    /// record log holding the applied records bare. The applied records the
    /// snapshot point covers stay; those of held entries are written again,
    /// framed, from the entries; record-less entries move into the metadata.
    /// The metadata is written first: a crash before the old entries are
    /// removed redoes the rewrite.
    fn upgrade_two_logs(&mut self) -> Result<(), LogError> {
        let entries_dir = self.dir.join(OLD_ENTRIES_DIR);
        let config = proglog_log::Config {
            max_record_bytes: u64::from(u32::MAX) - 1,
            ..proglog_log::Config::default()
        };
        let old =
            if entries_dir.exists() { Some(proglog_log::Log::open(&entries_dir, config)?) } else { None };
        let point = self.meta.snapshot;
        let mut entries = Vec::new();
        if let Some(old) = &old {
            let first = (point.index + 1).max(old.lowest_offset());
            if old.next_offset() > point.index + 1 && first != point.index + 1 {
                return Err(damaged(format!(
                    "{}: Raft entries from {} are missing (the snapshot is at {})",
                    entries_dir.display(),
                    point.index + 1,
                    point.index
                )));
            }
            for record in read_range(old, first, old.next_offset().max(first))? {
                let entry = Entry::parse_from_bytes(&record.value).map_err(|error| {
                    damaged(format!("Raft entry {} does not decode: {error}", record.offset))
                })?;
                if entry.index != record.offset {
                    return Err(damaged(format!(
                        "Raft entry stored at {} says it is {}",
                        record.offset, entry.index
                    )));
                }
                entries.push(entry);
            }
        }
        if self.meta.format != FORMAT {
            if self.data.next_offset() < point.end_offset {
                if self.meta.fetching.is_none() {
                    return Err(damaged(format!(
                        "{} ends at offset {}, but Raft compacted entries up to offset {} into it",
                        self.data.dir().display(),
                        self.data.next_offset(),
                        point.end_offset
                    )));
                }
                // A snapshot fetch was replacing the record log: it restarts
                // where the snapshot point is.
                self.data.reset(point.end_offset)?;
            }
            self.meta.format = FORMAT;
            self.meta.framed_from = point.end_offset;
            self.meta.fetching = None;
            self.meta.control =
                entries.iter().filter(|e| record_batch(e).is_none()).map(Control::from_entry).collect();
            self.write_meta()?;
        }
        let Some(old) = old else { return Ok(()) };
        if self.data.next_offset() > point.end_offset {
            self.data.truncate_from(point.end_offset)?;
        }
        let commit = self.meta.commit;
        for entry in &entries {
            let Some((first_offset, _)) = record_batch(entry) else { continue };
            if first_offset != self.data.next_offset() {
                return Err(damaged(format!(
                    "Raft entry {} starts at offset {first_offset}, but the records before it end at {}",
                    entry.index,
                    self.data.next_offset()
                )));
            }
            let batch = decode_batch(&entry.data)?;
            self.data.append_batch(&Self::frames(entry, &batch, commit))?;
        }
        self.data.sync()?;
        old.remove()?;
        File::open(&self.dir).and_then(|dir| dir.sync_all()).map_err(|error| internal("sync raft dir", error))
    }

    /// The stored values of an entry's records.
    fn frames(entry: &Entry, batch: &Batch, commit: u64) -> Vec<Vec<u8>> {
        let header = EntryHeader {
            index: entry.index,
            term: entry.term,
            count: batch.values.len() as u64,
            commit: commit.min(entry.index),
            meta: batch.meta,
        };
        let timestamp = batch.meta.timestamp_ms;
        let kinds = std::iter::once(Kind::First(header)).chain(std::iter::repeat(Kind::Next));
        batch.values.iter().zip(kinds).map(|(value, kind)| framed(kind, timestamp, value)).collect()
    }

    /// Keeps at most `bytes` of the newest entries in memory (a named log's
    /// smaller share).
    pub(crate) fn limit_recent(&mut self, bytes: usize) {
        self.recent_limit = bytes;
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

    /// The data log (readers read it up to the commit point).
    pub(crate) fn data(&self) -> &Arc<proglog_log::Log> {
        &self.data
    }

    /// Records below this offset are stored bare.
    pub(crate) fn framed_from(&self) -> u64 {
        self.meta.framed_from
    }

    /// Rebuilds the in-memory view from the snapshot point, the data log and
    /// the record-less entries: the longest run of whole entries that follow
    /// each other. What follows it (an entry torn by a crash, or stored after
    /// one that was lost) was never acknowledged, and is cut.
    fn reconcile(&mut self) -> Result<(), LogError> {
        let point = self.meta.snapshot;
        if self.data.next_offset() < point.end_offset || self.data.lowest_offset() > point.end_offset {
            return Err(damaged(format!(
                "{} holds offsets {}..{}, but Raft compacted entries up to offset {} into it",
                self.data.dir().display(),
                self.data.lowest_offset(),
                self.data.next_offset(),
                point.end_offset
            )));
        }
        self.held.clear();
        self.recent.clear();
        self.recent_bytes = 0;
        self.tail_end = point.end_offset;
        self.meta.control.retain(|control| control.index > point.index);
        if point.end_offset < self.meta.framed_from {
            // Records of a log from before replication, not yet bootstrapped:
            // they belong to no entry.
            self.recovered_commit = self.meta.commit;
            return Ok(());
        }
        let mut commit = self.meta.commit;
        let mut controls = self.meta.control.iter().peekable();
        let end = self.data.next_offset();
        loop {
            let index = self.last() + 1;
            if let Some(control) = controls.next_if(|control| control.index == index) {
                let conf = control.kind != EntryType::EntryNormal as i32;
                self.held.push_back(Held { term: control.term, conf, control: true, start: self.tail_end });
                continue;
            }
            if self.tail_end >= end {
                break;
            }
            let stored = self.data.read(self.tail_end)?;
            let header = match unframe(self.tail_end, &stored.value)?.kind {
                Kind::First(header) if header.index == index && self.tail_end + header.count <= end => header,
                _ => break,
            };
            self.held.push_back(Held {
                term: header.term,
                conf: false,
                control: false,
                start: self.tail_end,
            });
            self.tail_end += header.count;
            self.tail_timestamp = self.tail_timestamp.max(header.meta.timestamp_ms);
            commit = commit.max(header.commit);
        }
        let kept = self.last();
        if self.meta.control.iter().any(|control| control.index > kept) {
            self.meta.control.retain(|control| control.index <= kept);
            self.write_meta()?;
        }
        if end > self.tail_end {
            self.data.truncate_from(self.tail_end)?;
        }
        self.recovered_commit = commit.min(kept);
        // Damage may have cut entries this node knew committed: raft-rs must
        // not be told of a commit beyond its log.
        self.meta.commit = self.meta.commit.min(kept);
        self.hard_state.commit = self.hard_state.commit.min(kept);
        // Entries not known committed are read back through raft-rs once they
        // are: a damaged record among them stops the node now, naming it,
        // rather than inside raft-rs later.
        let unknown =
            usize::try_from(self.recovered_commit.saturating_sub(point.index)).unwrap_or(usize::MAX);
        if let Some(first) = self.held.iter().skip(unknown).find(|held| !held.control) {
            read_range(&self.data, first.start, self.tail_end)?;
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

    /// Entry `index`, from memory if it is recent, else rebuilt from disk.
    fn entry(&self, index: u64) -> Result<Entry, LogError> {
        let cached = self.recent.front().and_then(|front| index.checked_sub(front.index));
        match cached.and_then(|position| self.recent.get(usize::try_from(position).ok()?)) {
            Some(entry) => Ok(entry.clone()),
            None => self.read_entry(index),
        }
    }

    fn read_entry(&self, index: u64) -> Result<Entry, LogError> {
        let position = index
            .checked_sub(self.first())
            .and_then(|position| usize::try_from(position).ok())
            .filter(|position| *position < self.held.len())
            .ok_or_else(|| LogError::Internal(format!("no Raft entry {index}")))?;
        let held = self.held[position];
        if held.control {
            let at = self.meta.control.binary_search_by_key(&index, |control| control.index);
            return at
                .map_err(|_| damaged(format!("Raft entry {index} is missing from the metadata")))
                .and_then(|at| self.meta.control[at].to_entry());
        }
        let end = self.held.get(position + 1).map_or(self.tail_end, |next| next.start);
        let mut values = Vec::with_capacity(usize::try_from(end - held.start).unwrap_or(0));
        let mut meta = None;
        for record in read_range(&self.data, held.start, end)? {
            let frame = unframe(record.offset, &record.value)?;
            let expected = match frame.kind {
                Kind::First(header) if record.offset == held.start => {
                    meta = Some(header.meta);
                    header.index == index && header.term == held.term
                }
                kind => record.offset != held.start && kind == Kind::Next,
            };
            if !expected {
                return Err(damaged(format!(
                    "the record at offset {} does not belong to Raft entry {index}",
                    record.offset
                )));
            }
            values.push(record.value.slice(frame.start..));
        }
        let mut entry = Entry { index, term: held.term, ..Entry::default() };
        entry.data = encode_batch(held.start, meta.unwrap_or_default(), &values).into();
        Ok(entry)
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

    /// The newest batch timestamp this node stored or staged since it opened.
    pub(crate) fn tail_timestamp(&self) -> u64 {
        self.tail_timestamp
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

    /// The offset after the applied records: readers read below it.
    pub(crate) fn applied_end(&self) -> u64 {
        self.end_offset(self.applied).unwrap_or(self.meta.snapshot.end_offset)
    }

    /// The index to restart applying from: the last entry known committed (from
    /// the metadata and the stored entries' headers), never above a
    /// configuration change not yet applied (it is applied again).
    pub(crate) fn recovered_applied(&self) -> u64 {
        let mut applied = self.meta.snapshot.index;
        for (position, held) in self.held.iter().enumerate() {
            let index = self.first() + position as u64;
            if index > self.recovered_commit || (held.conf && index > self.meta.conf_index) {
                break;
            }
            applied = index;
        }
        applied
    }

    /// Takes what the leader's snapshot knows of the records' terms, kept with
    /// the next write of the metadata.
    pub(crate) fn adopt_terms(&mut self, ranges: &[(u64, u64)]) {
        self.terms.merge(ranges);
        self.meta.terms = self.terms.ranges();
    }

    /// Records from `first_offset` on are committed in `term` (an entry is being
    /// applied): a new range is written before they are readable.
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
    /// then those of the held entries up to the applied index.
    pub(crate) fn rebuild_terms(&self) {
        self.terms.reset(&self.meta.terms);
        for (position, held) in self.held.iter().enumerate() {
            if self.first() + position as u64 > self.applied {
                break;
            }
            if !held.control {
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

    /// Entries up to `index` are applied (their commands too).
    pub(crate) fn set_applied(&mut self, index: u64) {
        self.applied = index;
        self.machine_index = self.machine_index.max(index);
    }

    /// Has no Raft state (never bootstrapped or joined).
    pub(crate) fn is_empty(&self) -> bool {
        self.last() == 0 && self.meta.conf.voters.is_empty() && self.meta.conf.learners.is_empty()
    }

    /// Starts a fresh cluster (minting its id) whose only voter is `member`, as if from a snapshot
    /// at index 1 (term 1) holding the configuration and the member's name and
    /// address: nodes joining later receive that snapshot and so learn every
    /// member. The data log may already hold records (a single-node log from
    /// before replication, made durable by the caller): they are the
    /// snapshot's records, so joiners fetch them. One atomic write.
    pub(crate) fn bootstrap(&mut self, member: &Member) -> Result<(), LogError> {
        if !self.is_empty() {
            return Err(LogError::Internal("bootstrap of a node that has Raft state".into()));
        }
        self.meta.cluster_id = Some(ClusterId::mint());
        self.start(std::slice::from_ref(member))
    }

    /// A named log's fresh state (nothing if it has Raft state already): this
    /// node's member id and cluster are the default log's, and, if `voters`
    /// name it, the group starts with them as [`Store::bootstrap`] starts one
    /// (every initial voter alike, so their states agree). A node they do not
    /// name waits for the group's leader to add it.
    pub(crate) fn start_group(
        &mut self,
        member_id: u64,
        cluster_id: Option<ClusterId>,
        voters: &[Member],
    ) -> Result<(), LogError> {
        if !self.is_empty() {
            return Ok(());
        }
        self.meta.member_id = member_id;
        self.meta.cluster_id = cluster_id;
        if voters.iter().any(|voter| voter.id == member_id) { self.start(voters) } else { self.write_meta() }
    }

    /// Starts the Raft state as if from a snapshot at index 1 (term 1) whose
    /// configuration is `voters`. One atomic write.
    fn start(&mut self, voters: &[Member]) -> Result<(), LogError> {
        let record_end = self.data.next_offset();
        self.meta.snapshot = SnapshotPoint { index: 1, term: 1, end_offset: record_end };
        self.meta.framed_from = record_end;
        self.meta.commit = 1;
        let mut ids: Vec<u64> = voters.iter().map(|voter| voter.id).collect();
        ids.sort_unstable();
        ids.dedup();
        self.meta.conf = Conf { voters: ids, ..Conf::default() };
        self.meta.conf_index = 1;
        self.meta.members = voters.to_vec();
        self.hard_state.term = 1;
        self.hard_state.commit = 1;
        self.write_meta()?;
        self.reconcile()?;
        self.applied = 1;
        self.synced_index = 1;
        Ok(())
    }

    /// Stores `entries`, first cutting any held entry at or after the first one's
    /// index (a conflicting suffix): their records go to the data log in one
    /// write, record-less entries to the metadata.
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
        let mut meta_changed = false;
        if first.index <= self.last() {
            let keep = (first.index - self.first()) as usize;
            self.tail_end = self.held.get(keep).map_or(self.tail_end, |held| held.start);
            if self.data.next_offset() > self.tail_end {
                self.data.truncate_from(self.tail_end)?;
            }
            self.held.truncate(keep);
            let before = self.meta.control.len();
            self.meta.control.retain(|control| control.index < first.index);
            meta_changed = self.meta.control.len() != before;
            while self.recent.back().is_some_and(|entry| entry.index >= first.index) {
                self.forget_recent(false);
            }
            self.synced_index = self.synced_index.min(first.index - 1);
        }
        let mut frames = Vec::new();
        for (position, entry) in entries.iter().enumerate() {
            if entry.index != first.index + position as u64 {
                return Err(LogError::Internal(format!("Raft entries out of order at {}", entry.index)));
            }
            let start = self.tail_end;
            match record_batch(entry) {
                Some((first_offset, _)) => {
                    if first_offset != start {
                        return Err(damaged(format!(
                            "Raft entry {} (term {}) starts at offset {first_offset}, but the entry before ends at {start}",
                            entry.index, entry.term
                        )));
                    }
                    let batch = decode_batch(&entry.data)?;
                    frames.extend(Self::frames(entry, &batch, self.hard_state.commit));
                    self.tail_end += batch.values.len() as u64;
                    self.tail_timestamp = self.tail_timestamp.max(batch.meta.timestamp_ms);
                    self.held.push_back(Held { term: entry.term, conf: false, control: false, start });
                }
                None => {
                    self.meta.control.push(Control::from_entry(entry));
                    meta_changed = true;
                    let conf = entry.get_entry_type() != EntryType::EntryNormal;
                    self.held.push_back(Held { term: entry.term, conf, control: true, start });
                }
            }
        }
        if meta_changed {
            self.write_meta()?;
        }
        if !frames.is_empty() {
            self.data.append_batch(&frames)?;
        }
        for entry in entries {
            self.recent_bytes += entry.compute_size() as usize;
            self.recent.push_back(entry.clone());
        }
        while self.recent_bytes > self.recent_limit && self.recent.len() > 1 {
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

    /// Forgets entries up to `index` (applied), keeping its term and end offset
    /// as the snapshot point. Their records stay in the data log.
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
        // The commands up to `index` leave the metadata: their state first.
        self.save_machine()?;
        self.meta.snapshot = SnapshotPoint { index, term, end_offset };
        self.meta.terms = self.terms.ranges();
        self.meta.control.retain(|control| control.index > index);
        self.write_meta()?;
        self.held.drain(..dropped);
        while self.recent.front().is_some_and(|entry| entry.index <= index) {
            self.forget_recent(true);
        }
        Ok(())
    }

    /// Where a fetch of a snapshot's records resumes: after the records already
    /// staged if they continue this node's applied records, else at the end of
    /// those.
    pub(crate) fn fetch_resume(&self) -> u64 {
        let applied_end = self.applied_end();
        match &self.staging {
            Some(staging)
                if staging.lowest_offset() <= applied_end && staging.next_offset() >= applied_end =>
            {
                staging.next_offset()
            }
            _ => applied_end,
        }
    }

    /// Prepares the fetch log to take records from `start` on.
    pub(crate) fn begin_fetch(&mut self, start: u64) -> Result<(), LogError> {
        match &self.staging {
            Some(staging) if staging.next_offset() == start => Ok(()),
            Some(staging) => Ok(staging.reset(start)?),
            None => {
                let staging = proglog_log::Log::open(self.dir.join(FETCH_DIR), self.data.config().clone())?;
                staging.reset(start)?;
                self.staging = Some(staging);
                Ok(())
            }
        }
    }

    fn staging(&self) -> Result<&proglog_log::Log, LogError> {
        self.staging.as_ref().ok_or_else(|| LogError::Internal("no snapshot fetch in progress".into()))
    }

    /// Where the fetched records end.
    pub(crate) fn staged_next(&self) -> Result<u64, LogError> {
        Ok(self.staging()?.next_offset())
    }

    /// The source holds nothing below `offset`: the fetched records start there.
    pub(crate) fn restage(&mut self, offset: u64) -> Result<(), LogError> {
        Ok(self.staging()?.reset(offset)?)
    }

    /// Appends fetched records (values and their timestamps); `complete` makes
    /// them durable (the snapshot that relies on them is installed next).
    pub(crate) fn stage(
        &mut self,
        values: &[Bytes],
        timestamps: &[u64],
        complete: bool,
    ) -> Result<(), LogError> {
        self.tail_timestamp = timestamps.iter().copied().fold(self.tail_timestamp, u64::max);
        let staging = self.staging()?;
        if !values.is_empty() {
            let timestamps = timestamps.iter().copied().chain(std::iter::repeat(0));
            let frames: Vec<Vec<u8>> =
                values.iter().zip(timestamps).map(|(value, ts)| framed(Kind::Plain, ts, value)).collect();
            staging.append_batch(&frames)?;
        }
        if complete {
            staging.sync()?;
        }
        Ok(())
    }

    /// Installs a snapshot received from the leader (its records are staged,
    /// or this node applied them already). Unless this node holds the entry at
    /// the snapshot's index with its term, the held entries are dropped (as
    /// raft-rs drops them), and the data log is cut to this node's applied
    /// records then completed from the fetch log — or started again where the
    /// fetched records start, when the leader no longer held the ones between.
    pub(crate) fn install_snapshot(
        &mut self,
        meta: &SnapshotMetadata,
        data: &SnapshotData,
    ) -> Result<(), LogError> {
        let point = SnapshotPoint { index: meta.index, term: meta.term, end_offset: data.end_offset };
        let keeps = self.end_offset(meta.index) == Some(point.end_offset)
            && meta.index >= self.first()
            && self.entry_term(meta.index).ok() == Some(meta.term);
        let applied_end = self.applied_end();
        if !keeps {
            let from = match &self.staging {
                _ if point.end_offset <= applied_end => point.end_offset,
                Some(staging) if staging.next_offset() >= point.end_offset => {
                    staging.lowest_offset().max(applied_end)
                }
                _ => {
                    return Err(LogError::Internal(format!(
                        "snapshot at {} needs records up to {}, this node holds them up to {applied_end}",
                        meta.index, point.end_offset
                    )));
                }
            };
            self.meta.moving = Some(Move { from, reset: from > applied_end });
            self.meta.control.clear();
        }
        let dropped = if keeps { (meta.index - self.meta.snapshot.index) as usize } else { self.held.len() };
        self.meta.snapshot = point;
        self.meta.conf = Conf::from(meta.get_conf_state());
        self.meta.conf_index = meta.index;
        self.meta.members = data.members.clone();
        self.adopt_terms(&data.terms);
        *self.machine() = data.machine.clone().unwrap_or_default();
        self.catalog_changed();
        let lowest = self.machine().lowest();
        self.retained.store(lowest, Ordering::Release);
        // Whatever this node still holds below the cut goes too.
        self.pending_cut = Some(lowest);
        self.machine_index = meta.index;
        self.applied = meta.index;
        self.save_machine()?;
        self.meta.control.retain(|control| control.index > meta.index);
        self.meta.commit = self.meta.commit.max(meta.index);
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.write_meta()?;
        if keeps {
            self.held.drain(..dropped);
            while self.recent.front().is_some_and(|entry| entry.index <= meta.index) {
                self.forget_recent(true);
            }
        } else {
            self.finish_move()?;
            self.reconcile()?;
        }
        self.applied = meta.index;
        self.synced_index = self.synced_index.max(meta.index);
        Ok(())
    }

    /// Moves an installed snapshot's records into the data log: cuts it where
    /// they start (or starts it there), copies them from the fetch log, syncs,
    /// then forgets the move and the fetch log. Redone from the start after a
    /// crash (the fetch log goes only once the move is recorded as done).
    fn finish_move(&mut self) -> Result<(), LogError> {
        let Some(Move { from, reset }) = self.meta.moving else { return Ok(()) };
        let end = self.meta.snapshot.end_offset;
        if reset || from < self.data.lowest_offset() || from > self.data.next_offset() {
            self.data.reset(from)?;
        } else if from < self.data.next_offset() {
            self.data.truncate_from(from)?;
        }
        if from < end {
            let staging = self.staging()?;
            if staging.lowest_offset() > from || staging.next_offset() < end {
                return Err(damaged(format!(
                    "{} holds offsets {}..{}; the snapshot being installed needs {from}..{end}",
                    staging.dir().display(),
                    staging.lowest_offset(),
                    staging.next_offset()
                )));
            }
            let mut next = from;
            while next < end {
                let batch = staging.read_batch(next, READ_BYTES)?;
                let frames: Vec<Vec<u8>> = batch
                    .iter()
                    .take_while(|record| record.offset < end)
                    .map(|record| match self.staging_framed {
                        true => record.value.to_vec(),
                        false => framed(Kind::Plain, 0, &record.value),
                    })
                    .collect();
                if frames.is_empty() {
                    return Err(damaged(format!("{}: no record at offset {next}", staging.dir().display())));
                }
                next += frames.len() as u64;
                self.data.append_batch(&frames)?;
            }
        }
        self.data.sync()?;
        self.meta.moving = None;
        self.write_meta()?;
        if let Some(staging) = self.staging.take() {
            self.staging_framed = true;
            staging.remove()?;
        }
        Ok(())
    }

    /// Entries up to `index` were made durable (by a sync elsewhere).
    pub(crate) fn mark_synced(&mut self, index: u64) {
        self.synced_index = self.synced_index.max(index.min(self.last()));
    }

    /// Makes stored entries durable per the fsync policy (on this thread).
    pub(crate) fn sync(&mut self) -> Result<(), LogError> {
        match self.fsync {
            Fsync::Always => self.data.sync()?,
            Fsync::Never => self.data.flush()?,
        }
        self.synced_index = self.last();
        Ok(())
    }

    /// Where the fetch log takes space (the data log's is the reader's to count).
    pub(crate) fn size_bytes(&self) -> u64 {
        self.staging.as_ref().map_or(0, proglog_log::Log::size_bytes)
    }

    /// Writes the commit index (so that a restart serves every committed
    /// record at once) and closes the fetch log.
    pub(crate) fn close(&mut self) -> Result<(), LogError> {
        self.write_meta()?;
        if let Some(staging) = &self.staging {
            staging.close()?;
        }
        Ok(())
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
        let bytes = serde_json::to_vec_pretty(&self.meta).map_err(|error| internal("encode", error))?;
        // Always synced, whatever the fsync policy: it changes rarely (terms,
        // votes, membership, record-less entries) and a torn one would stop the
        // node for good.
        write_atomically(&self.dir, META_FILE, &bytes)
    }

    /// Writes the replicated state as it is after the applied entries (before
    /// compaction drops the commands that led to it).
    fn save_machine(&self) -> Result<(), LogError> {
        let saved = SavedMachine { index: self.applied, machine: self.machine().clone() };
        let bytes = serde_json::to_vec(&saved).map_err(|error| internal("encode", error))?;
        write_atomically(&self.dir, STATE_FILE, &bytes)
    }

    /// The replicated state (commands applied so far), shared with readers.
    pub(crate) fn machine(&self) -> std::sync::MutexGuard<'_, Machine> {
        self.machine.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The replicated state, for readers on other threads.
    pub(crate) fn shared_machine(&self) -> Arc<Mutex<Machine>> {
        Arc::clone(&self.machine)
    }

    /// Watches for changes of the catalog of named logs (see `catalog`).
    pub(crate) fn watch_catalog(&self) -> tokio::sync::watch::Receiver<u64> {
        self.catalog.subscribe()
    }

    fn catalog_changed(&self) {
        self.catalog.send_modify(|changes| *changes += 1);
    }

    /// Applies command entry `entry`: the proposer's answer (an error changes
    /// nothing, on every node alike).
    pub(crate) fn apply_command(&mut self, entry: &Entry) -> Result<Result<(), LogError>, LogError> {
        let (_, mut command) = decode_command(&entry.data)?;
        if let Command::Retain { lowest } = &mut command {
            // Never past the records applied before it (the same on every node).
            *lowest = (*lowest).min(self.applied_end());
        }
        let outcome = self.machine().apply(entry.index, &command);
        if outcome.is_ok() && matches!(command, Command::CreateLog { .. } | Command::DeleteLog { .. }) {
            self.catalog_changed();
        }
        if let Command::Retain { .. } = command {
            let lowest = self.machine().lowest();
            if lowest > self.retained.load(Ordering::Acquire) {
                self.retained.store(lowest, Ordering::Release);
                self.pending_cut = Some(lowest);
            }
        }
        Ok(outcome)
    }

    /// Readers' lowest offset (retention's cut), shared.
    pub(crate) fn retained(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.retained)
    }

    /// Carries out an applied retention cut: Raft forgets the entries whose
    /// records go (compaction to the first applied entry whose records end at
    /// or past the cut), then the data log drops its segments wholly below it.
    pub(crate) fn cut_retained(&mut self) -> Result<(), LogError> {
        let Some(lowest) = self.pending_cut.take() else { return Ok(()) };
        if self.meta.snapshot.end_offset < lowest {
            let covering = (self.first()..=self.applied)
                .find(|index| self.end_offset(*index).is_some_and(|end| end >= lowest))
                .unwrap_or(self.applied);
            self.compact(covering)?;
        }
        self.data.truncate_before(lowest)?;
        Ok(())
    }

    /// Where the leader's retention would cut now: after the oldest sealed
    /// segments (all applied) that together leave at least `bytes` behind them
    /// (0: no limit by size), or whose newest record is older than `ms` before
    /// `now_ms` (0: no limit by age; records without a timestamp never count
    /// as old). 0 when nothing is to go.
    pub(crate) fn retention_cut(&self, bytes: u64, ms: u64, now_ms: u64) -> u64 {
        if bytes == 0 && ms == 0 {
            return 0;
        }
        let segments = self.data.segments();
        let applied_end = self.applied_end();
        let mut left: u64 = segments.iter().map(|segment| segment.bytes).sum();
        let mut cut = 0;
        for segment in segments.iter().take(segments.len().saturating_sub(1)) {
            if segment.next_offset > applied_end || segment.next_offset == segment.base_offset {
                break;
            }
            let by_size = bytes > 0 && left - segment.bytes >= bytes;
            let by_age = ms > 0 && {
                let last = segment.next_offset - 1;
                let stamped = self.data.read(last).ok().and_then(|record| {
                    record_value(self.meta.framed_from, last, record.value).ok().map(|(_, ts)| ts)
                });
                stamped.is_some_and(|ts| ts > 0 && ts.saturating_add(ms) < now_ms)
            };
            if !(by_size || by_age) {
                break;
            }
            left -= segment.bytes;
            cut = segment.next_offset;
        }
        cut
    }

    /// After a restart: applies the entries between the saved state and
    /// `applied` (the entries known applied) to it again — commands, and the
    /// batches of idempotent producers (read from their first record's header).
    pub(crate) fn replay(&mut self, applied: u64, producer_expiry_ms: u64) -> Result<(), LogError> {
        let from = self.machine_index.max(self.meta.snapshot.index) + 1;
        for index in from..=applied.min(self.last()) {
            let Some(held) =
                index.checked_sub(self.first()).and_then(|at| self.held.get(at as usize)).copied()
            else {
                continue;
            };
            if held.control {
                let entry = self.read_entry(index)?;
                if is_command(&entry.data) {
                    let _ = self.apply_command(&entry)?;
                }
                continue;
            }
            let stored = self.data.read(held.start)?;
            if let Kind::First(header) = unframe(held.start, &stored.value)?.kind
                && header.meta.producer_id != 0
            {
                let meta = header.meta;
                self.machine().record(
                    meta.producer_id,
                    meta.sequence,
                    header.count,
                    held.start,
                    meta.timestamp_ms,
                    producer_expiry_ms,
                );
            }
        }
        self.machine_index = self.machine_index.max(applied);
        Ok(())
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
        let data = SnapshotData {
            end_offset,
            members: self.meta.members.clone(),
            terms: self.terms.ranges(),
            machine: Some(self.machine().clone()),
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn data_log(dir: &Path) -> Arc<proglog_log::Log> {
        let config =
            proglog_log::Config { max_store_bytes: 256, max_index_bytes: 8 * 8, ..Default::default() };
        Arc::new(proglog_log::Log::open(dir.join("log"), config).expect("data log opens"))
    }

    fn open(dir: &Path) -> Store {
        Store::open(&dir.join("raft"), Fsync::Always, "node-0", data_log(dir)).expect("store opens")
    }

    fn reopen(store: Store, dir: &Path) -> Store {
        store.data().close().expect("closes");
        drop(store);
        open(dir)
    }

    fn values(names: &[&str]) -> Vec<Bytes> {
        names.iter().map(|name| Bytes::copy_from_slice(name.as_bytes())).collect()
    }

    fn batch(index: u64, term: u64, first_offset: u64, names: &[&str]) -> Entry {
        let mut entry = Entry { index, term, ..Entry::default() };
        let meta = BatchMeta { timestamp_ms: 1_000 * index, producer_id: 0, sequence: 0 };
        entry.data = encode_batch(first_offset, meta, &values(names)).into();
        entry
    }

    fn empty(index: u64, term: u64) -> Entry {
        Entry { index, term, ..Entry::default() }
    }

    fn bootstrapped(dir: &Path) -> Store {
        let mut store = open(dir);
        let member = Member::new("node-0", "node-0.invalid:8400").with_id(store.member_id());
        store.bootstrap(&member).expect("bootstraps");
        store
    }

    fn held_entries(store: &Store) -> Vec<Entry> {
        raft::Storage::entries(store, store.first(), store.last() + 1, None, GetEntriesContext::empty(false))
            .expect("entries")
    }

    /// The values the data log serves from `from` on.
    fn served(store: &Store, from: u64) -> Vec<String> {
        (from..store.data().next_offset())
            .map(|offset| {
                let stored = store.data().read(offset).expect("reads").value;
                let (value, _) = record_value(store.framed_from(), offset, stored).expect("a record");
                String::from_utf8(value.to_vec()).expect("utf-8")
            })
            .collect()
    }

    #[test]
    fn entries_are_one_copy_in_the_data_log_and_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = bootstrapped(dir.path());
        let entries = [batch(2, 1, 0, &["a", "b", "c"]), empty(3, 2), batch(4, 2, 3, &["d", "e"])];
        store.append(&entries).expect("stores");
        store.sync().expect("syncs");
        assert_eq!(store.data().next_offset(), 5, "each record once");
        assert_eq!(held_entries(&store), entries);
        let store = reopen(store, dir.path());
        assert_eq!((store.first(), store.last(), store.tail_end()), (2, 4, 5));
        assert_eq!(held_entries(&store), entries);
        assert_eq!(served(&store, 0), ["a", "b", "c", "d", "e"]);
        assert_eq!(store.end_offset(3), Some(3));
    }

    #[test]
    fn records_carry_their_batch_timestamp_and_records_stored_before_timestamps_open_in_place() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = bootstrapped(dir.path());
        let entries = [batch(2, 1, 0, &["a", "b"]), batch(3, 1, 2, &["c"])];
        store.append(&entries).expect("stores");
        store.sync().expect("syncs");
        let timestamps = |store: &Store| -> Vec<u64> {
            (0..store.data().next_offset())
                .map(|offset| {
                    let stored = store.data().read(offset).expect("reads").value;
                    record_value(store.framed_from(), offset, stored).expect("a record").1
                })
                .collect()
        };
        assert_eq!(timestamps(&store), [2_000, 2_000, 3_000]);
        assert_eq!(store.tail_timestamp(), 3_000);
        let store = reopen(store, dir.path());
        assert_eq!((timestamps(&store), store.tail_timestamp()), (vec![2_000, 2_000, 3_000], 3_000));

        // The same entries as a data log from before timestamps stored them.
        store.data().truncate_from(0).expect("cuts");
        let old = |kind: u8, header: Option<(u64, u64, u32)>, value: &str| {
            let mut out = vec![kind];
            if let Some((index, term, count)) = header {
                out.extend_from_slice(&index.to_le_bytes());
                out.extend_from_slice(&term.to_le_bytes());
                out.extend_from_slice(&count.to_le_bytes());
                out.extend_from_slice(&0u64.to_le_bytes());
            }
            out.extend_from_slice(value.as_bytes());
            out
        };
        let frames = [
            old(FIRST_OLD, Some((2, 1, 2)), "a"),
            old(NEXT_OLD, None, "b"),
            old(FIRST_OLD, Some((3, 1, 1)), "c"),
        ];
        store.data().append_batch(&frames).expect("appends");
        store.data().sync().expect("syncs");
        let mut store = reopen(store, dir.path());
        assert_eq!((store.first(), store.last()), (2, 3));
        assert_eq!(served(&store, 0), ["a", "b", "c"]);
        assert_eq!(timestamps(&store), [0, 0, 0], "unknown");
        let unstamped: Vec<Entry> = entries
            .iter()
            .map(|entry| {
                let batch = decode_batch(&entry.data).expect("decodes");
                let data = encode_batch(batch.first_offset, BatchMeta::default(), &batch.values);
                Entry { data: data.into(), ..entry.clone() }
            })
            .collect();
        assert_eq!(held_entries(&store), unstamped);
        // New entries after them are stored with their timestamps.
        store.append(&[batch(4, 1, 3, &["d"])]).expect("stores");
        assert_eq!(timestamps(&store), [0, 0, 0, 4_000]);
        assert_eq!(served(&store, 0), ["a", "b", "c", "d"]);
    }

    #[test]
    fn a_retention_cut_never_passes_the_records_applied_before_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = bootstrapped(dir.path());
        store.append(&[batch(2, 1, 0, &["a", "b", "c"])]).expect("stores");
        store.set_applied(2);
        let forged =
            super::super::machine::encode_command(0, &Command::Retain { lowest: 1_000 }).expect("encodes");
        let entry = Entry { index: 3, term: 1, data: forged.into(), ..Entry::default() };
        store.append(std::slice::from_ref(&entry)).expect("stores");
        store.apply_command(&entry).expect("applies").expect("an outcome");
        assert_eq!(store.machine().lowest(), 3, "cut at the records before it, not beyond");
    }

    #[test]
    fn a_torn_entry_and_entries_after_a_lost_one_are_cut_on_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = bootstrapped(dir.path());
        store.append(&[batch(2, 1, 0, &["a", "b"]), batch(3, 1, 2, &["c", "d", "e"])]).expect("stores");
        store.data().truncate_from(3).expect("cuts"); // a crash tore entry 3
        let mut store = reopen(store, dir.path());
        assert_eq!((store.last(), store.data().next_offset()), (2, 2));
        // A record-less entry lost (its metadata write never happened) takes
        // the entries after it along.
        store.append(&[empty(3, 2), batch(4, 2, 2, &["f"])]).expect("stores");
        store.meta.control.clear();
        store.write_meta().expect("writes");
        let store = reopen(store, dir.path());
        assert_eq!((store.last(), store.data().next_offset()), (2, 2));
        assert_eq!(served(&store, 0), ["a", "b"]);
    }

    #[test]
    fn a_damaged_record_of_an_entry_not_known_committed_stops_the_open_naming_its_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = bootstrapped(dir.path());
        store.append(&[batch(2, 1, 0, &["aaaa", "bbbb", "cccc"])]).expect("stores");
        store.data().close().expect("closes cleanly");
        drop(store);
        let segment = std::fs::read_dir(dir.path().join("log"))
            .expect("lists")
            .map(|file| file.expect("lists").path())
            .find(|path| path.extension().is_some_and(|extension| extension == "store"))
            .expect("a store file");
        let mut bytes = std::fs::read(&segment).expect("reads");
        let middle = bytes.windows(4).position(|window| window == b"bbbb").expect("the record");
        bytes[middle] ^= 0x01;
        std::fs::write(&segment, bytes).expect("writes");
        let error = Store::open(&dir.path().join("raft"), Fsync::Always, "node-0", data_log(dir.path()))
            .expect_err("refuses to open");
        assert!(error.to_string().contains(segment.to_str().expect("utf-8")), "{error}");
    }

    #[test]
    fn a_conflicting_suffix_is_replaced_durably() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = bootstrapped(dir.path());
        store
            .append(&[batch(2, 1, 0, &["a"]), empty(3, 1), batch(4, 1, 1, &["old", "old"])])
            .expect("stores");
        let replacement = [empty(3, 2), batch(4, 2, 1, &["new"])];
        store.append(&replacement).expect("replaces");
        let store = reopen(store, dir.path());
        assert_eq!(held_entries(&store)[1..], replacement);
        assert_eq!(served(&store, 0), ["a", "new"]);
    }

    /// A data dir of the two-log layout: snapshot at index 5 (term 2) covering
    /// offsets 0..2, held entries 6 (records 2..4), 7 (empty) and 8 (records
    /// 4..6), of which the record log applied up to entry 7.
    fn two_log_data_dir(dir: &Path) {
        let records = data_log(dir);
        records.append_batch(&values(&["r0", "r1", "r2", "r3"])).expect("appends");
        records.close().expect("closes");
        let raft = dir.join("raft");
        let config = proglog_log::Config { initial_offset: 6, ..Default::default() };
        let entries = proglog_log::Log::open(raft.join(OLD_ENTRIES_DIR), config).expect("opens");
        for entry in [batch(6, 2, 2, &["r2", "r3"]), empty(7, 3), batch(8, 3, 4, &["r4", "r5"])] {
            entries.append(&entry.write_to_bytes().expect("encodes")).expect("appends");
        }
        entries.close().expect("closes");
        let meta = serde_json::json!({
            "term": 3, "vote": 7, "commit": 7,
            "conf": {"voters": [7], "learners": [], "voters_outgoing": [], "learners_next": [], "auto_leave": false},
            "conf_index": 5, "members": [{"id": 7, "name": "node-0", "rpc_addr": "node-0.invalid:8400"}],
            "snapshot": {"index": 5, "term": 2, "end_offset": 2},
            "fetching": null, "member_id": 7, "terms": [[0, 1], [2, 2]],
        });
        std::fs::write(raft.join(META_FILE), meta.to_string()).expect("writes");
    }

    fn assert_upgraded(store: &Store) {
        assert!(!store.dir.join(OLD_ENTRIES_DIR).exists(), "the entries log is gone");
        assert_eq!((store.member_id(), store.first(), store.last(), store.framed_from()), (7, 6, 8, 2));
        assert_eq!(served(store, 0), ["r0", "r1", "r2", "r3", "r4", "r5"]);
        assert_eq!(
            held_entries(store),
            [batch(6, 2, 2, &["r2", "r3"]), empty(7, 3), batch(8, 3, 4, &["r4", "r5"])]
        );
        assert_eq!(store.recovered_applied(), 7, "applied up to the durable commit");
    }

    #[test]
    fn a_two_log_data_dir_is_upgraded_in_place_and_a_crash_during_it_redoes_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        two_log_data_dir(dir.path());
        let saved = tempfile::tempdir().expect("temp dir");
        let old_entries = dir.path().join("raft").join(OLD_ENTRIES_DIR);
        let copy = |from: &Path, to: &Path| {
            std::fs::create_dir_all(to).expect("creates");
            for file in std::fs::read_dir(from).expect("lists") {
                let file = file.expect("lists");
                std::fs::copy(file.path(), to.join(file.file_name())).expect("copies");
            }
        };
        copy(&old_entries, saved.path());
        let store = open(dir.path());
        assert_upgraded(&store);
        let store = reopen(store, dir.path());
        assert_upgraded(&store);
        // A crash in the middle: the metadata was written, the rewrite had
        // reached offset 3, the old entries were still there.
        store.data().truncate_from(3).expect("cuts");
        store.data().close().expect("closes");
        drop(store);
        copy(saved.path(), &old_entries);
        std::fs::remove_file(old_entries.join("LOCK")).ok();
        let store = open(dir.path());
        assert_upgraded(&store);
    }

    #[test]
    fn an_installed_snapshot_replaces_an_uncommitted_suffix_and_a_crash_redoes_the_move() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = bootstrapped(dir.path());
        store.append(&[batch(2, 1, 0, &["mine", "mine"])]).expect("stores"); // never committed
        assert_eq!(store.fetch_resume(), 0);
        store.begin_fetch(0).expect("begins");
        store.stage(&values(&["l0", "l1", "l2"]), &[7, 8, 9], true).expect("stages");
        let mut meta = SnapshotMetadata { index: 5, term: 3, ..SnapshotMetadata::default() };
        meta.mut_conf_state().voters = vec![store.member_id(), 99];
        let data = SnapshotData {
            end_offset: 3,
            members: store.members().to_vec(),
            terms: vec![(0, 3)],
            machine: None,
        };
        store.install_snapshot(&meta, &data).expect("installs");
        assert_eq!((store.first(), store.last(), store.applied_end()), (6, 5, 3));
        assert_eq!(served(&store, 0), ["l0", "l1", "l2"]);
        assert!(!dir.path().join("raft").join(FETCH_DIR).exists(), "the fetch log is gone");
        // A crash while moving: the metadata says so, the fetch log is still
        // there, the data log holds part of the records.
        store.begin_fetch(0).expect("begins");
        store.stage(&values(&["l0", "l1", "l2"]), &[7, 8, 9], true).expect("stages");
        store.meta.moving = Some(Move { from: 0, reset: false });
        store.write_meta().expect("writes");
        store.data().truncate_from(1).expect("cuts");
        store.close().expect("closes");
        let store = reopen(store, dir.path());
        assert_eq!(served(&store, 0), ["l0", "l1", "l2"]);
        assert_eq!(store.meta.moving, None);
        assert!(!dir.path().join("raft").join(FETCH_DIR).exists(), "the fetch log is gone");

        // The same crash with a fetch log from before timestamps (bare values):
        // the move is finished from it; the records' timestamps are unknown.
        let old = proglog_log::Log::open(
            dir.path().join("raft").join(OLD_FETCH_DIR),
            store.data().config().clone(),
        )
        .expect("opens");
        old.append_batch(&values(&["o0", "o1", "o2"])).expect("appends");
        old.close().expect("closes");
        let mut store = store;
        store.meta.moving = Some(Move { from: 0, reset: false });
        store.write_meta().expect("writes");
        store.data().truncate_from(1).expect("cuts");
        store.close().expect("closes");
        let mut store = reopen(store, dir.path());
        assert_eq!(served(&store, 0), ["o0", "o1", "o2"]);
        assert_eq!(store.meta.moving, None);
        assert!(!dir.path().join("raft").join(OLD_FETCH_DIR).exists(), "the old fetch log is gone");
        // Without a move in progress, an old fetch log is dropped (a fetch starts again).
        let old = proglog_log::Log::open(
            dir.path().join("raft").join(OLD_FETCH_DIR),
            store.data().config().clone(),
        )
        .expect("opens");
        old.close().expect("closes");
        store.close().expect("closes");
        let store = reopen(store, dir.path());
        assert!(!dir.path().join("raft").join(OLD_FETCH_DIR).exists());
        assert_eq!(served(&store, 0), ["o0", "o1", "o2"]);
    }
}
