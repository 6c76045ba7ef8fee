//! What the server needs from "the log", in the log's own terms: [`Append`]
//! in, [`Record`] and [`ServerInfo`] out. Whoever serves the log converts
//! them to its wire types at its edge.

use std::future::Future;
use std::pin::Pin;

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use crate::{Leader, LogError};

/// What a caller appends: values, in order, and the context it appends in (its
/// trace: a follower carries it to the leader with the values it forwards).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Append {
    /// The values, appended at consecutive offsets.
    pub values: Vec<Bytes>,
    /// The caller's context (the current one unless set).
    pub context: opentelemetry::Context,
    /// An idempotent producer's id and the sequence number of the first value
    /// (SPEC §11): the log stores each sequence once.
    pub producer: Option<(u64, u64)>,
}

impl Append {
    /// Appends `values` in the current context.
    pub fn new(values: Vec<Bytes>) -> Self {
        Self { values, context: opentelemetry::Context::current(), producer: None }
    }

    /// Appends one value in the current context.
    pub fn one(value: impl Into<Bytes>) -> Self {
        Self::new(vec![value.into()])
    }

    /// The same values, appended in `context`.
    pub fn with_context(self, context: opentelemetry::Context) -> Self {
        Self { context, ..self }
    }

    /// The same values, as sequences `sequence..` of producer `producer_id`
    /// (not 0): a retry of values already appended returns their offset and
    /// appends nothing; a sequence that skips ahead is refused
    /// ([`LogError::OutOfOrderSequence`]).
    pub fn with_producer(self, producer_id: u64, sequence: u64) -> Self {
        Self { producer: (producer_id != 0).then_some((producer_id, sequence)), ..self }
    }
}

/// A committed record, as the log serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Its offset.
    pub offset: u64,
    /// Its value.
    pub value: Bytes,
    /// The Raft term of the entry that committed it (0 for a log that is not
    /// replicated).
    pub term: u64,
    /// When the leader appended it (ms since the Unix epoch; 0 for a log that
    /// is not replicated, and for records stored before timestamps).
    pub timestamp_ms: u64,
}

/// One server of the cluster, as GetServers lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    /// Its node name.
    pub id: String,
    /// Where clients and peers dial it.
    pub rpc_addr: String,
    /// It leads.
    pub is_leader: bool,
}

/// Resolves to the offset of the first appended value once the append is
/// committed (durable per the fsync policy; replicated, for a replicated log).
pub type PendingAppend = Pin<Box<dyn Future<Output = Result<u64, LogError>> + Send>>;

/// Refuses a record value above `max_record_bytes`, naming both sizes (SPEC §1).
pub fn check_record_size(bytes: usize, max_record_bytes: u64) -> Result<(), LogError> {
    if bytes as u64 > max_record_bytes {
        return Err(LogError::InvalidArgument(format!(
            "record value of {bytes} bytes exceeds max-record-bytes ({max_record_bytes} bytes)"
        )));
    }
    Ok(())
}

/// Refuses an append that holds no value or a value above `max_record_bytes`:
/// the rule every append obeys, a client's or a forwarded one.
pub(crate) fn check_append(values: &[Bytes], max_record_bytes: u64) -> Result<(), LogError> {
    if values.is_empty() {
        return Err(LogError::InvalidArgument("an append without records".into()));
    }
    values.iter().try_for_each(|value| check_record_size(value.len(), max_record_bytes))
}

/// Where the log stands, for metrics, `/readyz` and GetServers; read without
/// waiting for the writer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogStatus {
    /// This node leads (appends go through it).
    pub is_leader: bool,
    /// The leader this node knows, if any (itself when it leads).
    pub leader: Option<Leader>,
    /// The Raft term (0 for a log that is not replicated).
    pub term: u64,
    /// Index of the last entry known committed.
    pub commit_index: u64,
    /// Index of the last entry applied to this node's log.
    pub applied_index: u64,
    /// Members of the cluster (voters and learners).
    pub members: usize,
    /// Members that vote (learners are still catching up).
    pub voters: usize,
    /// The lowest offset still held.
    pub lowest_offset: u64,
    /// The highest committed offset, `None` while the log is empty.
    pub highest_offset: Option<u64>,
    /// Bytes the log's files hold.
    pub bytes: u64,
    /// Why the log stopped serving for good (its writer, Raft or fsync thread
    /// failed), once it has; `None` while it runs.
    pub failure: Option<String>,
    /// On the leader: how many entries each other member (by name) lacks of
    /// the leader's log. Empty elsewhere.
    pub follower_lag: Vec<(String, u64)>,
}

impl LogStatus {
    /// Ready to serve (SPEC §4 `/readyz`): running, a leader is known and
    /// everything known committed is applied here.
    pub fn is_ready(&self) -> bool {
        self.failure.is_none() && self.leader.is_some() && self.applied_index >= self.commit_index
    }
}

/// A log the gRPC service can serve.
///
/// Implementations must never block the calling async task on disk or network
/// I/O: they hand work to their own threads or to `spawn_blocking`.
#[async_trait::async_trait]
pub trait CommitLog: Send + Sync + 'static {
    /// Queues `values` for appending, in order, after everything queued before;
    /// returns once queued, with a future that resolves when they are committed.
    /// Splitting the two lets a stream keep many appends in flight without
    /// reordering them.
    async fn append(&self, append: Append) -> Result<PendingAppend, LogError>;

    /// Reads the committed record at `offset`.
    async fn read(&self, offset: u64) -> Result<Record, LogError>;

    /// Reads committed records from `offset` on, in order: at least one, as many
    /// more as fit in about `max_bytes`.
    async fn read_batch(&self, offset: u64, max_bytes: u64) -> Result<Vec<Record>, LogError>;

    /// Waits until a read on this node sees every record acknowledged — by any
    /// node — before the call (a linearizable read is this, then a read).
    /// Without it a read is local: a follower may not have applied the newest
    /// records yet.
    async fn linearize(&self) -> Result<(), LogError>;

    /// Records that consumer group `group` has processed the records below
    /// `offset` (SPEC §11 CommitOffset), durably and on every node; answers once
    /// it is. Group names follow [`crate::check_group`]; an offset past the
    /// committed records is `OutOfRange`.
    async fn commit_offset(&self, group: &str, offset: u64) -> Result<(), LogError>;

    /// The position consumer group `group` committed last (`None`: never), as
    /// of the call (linearizable).
    async fn fetch_offset(&self, group: &str) -> Result<Option<u64>, LogError>;

    /// A new idempotent producer id (SPEC §11 InitProducer), unique in the
    /// cluster: 64 random bits, never 0.
    async fn init_producer(&self) -> Result<u64, LogError>;

    /// The lowest offset still held.
    fn lowest_offset(&self) -> u64;

    /// Watches the commit point: every offset below the watched value is
    /// committed and readable. Followers of the tail wait on this (no polling).
    fn committed(&self) -> watch::Receiver<u64>;

    /// The servers of the cluster, and which one leads.
    async fn servers(&self) -> Result<Vec<ServerInfo>, LogError>;

    /// Where the log stands now (cheap: no disk, no writer lock).
    fn status(&self) -> LogStatus;

    /// Watches for the log to stop for good: `Some(reason)` once a thread it
    /// cannot serve without has failed (never after a clean close). Whoever serves
    /// it then reports not serving at once, rather than looking healthy while
    /// it can no longer append or catch up.
    fn failure(&self) -> watch::Receiver<Option<String>>;
}

/// A log as [`Catalog::list`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogInfo {
    /// Its name (empty: the default log).
    pub name: String,
    /// Where it stands on this node.
    pub status: LogStatus,
    /// Its retention (0: keep everything).
    pub retention_bytes: u64,
    pub retention_ms: u64,
}

/// The logs a server serves (SPEC §11): the default log (the empty name) and,
/// where the implementation offers them, named logs.
#[async_trait::async_trait]
pub trait Catalog: Send + Sync + 'static {
    /// The log named `name`: `InvalidArgument` for a bad name (see
    /// [`crate::check_log_name`]), `NotFound` for one not held here.
    fn get(&self, name: &str) -> Result<Arc<dyn CommitLog>, LogError>;

    /// Creates log `name` (retention 0: the server's default for new logs);
    /// answers once it can be served here. `AlreadyExists`, or
    /// `ResourceExhausted` past the bound on logs.
    async fn create(&self, name: &str, retention_bytes: u64, retention_ms: u64) -> Result<(), LogError>;

    /// Deletes log `name` and its records. `NotFound` if there is none.
    async fn delete(&self, name: &str) -> Result<(), LogError>;

    /// The logs held here: the default log first, then by name.
    fn list(&self) -> Vec<LogInfo>;

    /// The log named `name`, created first (with the default retention) if
    /// it does not exist: a log created by its first produce (SPEC §11
    /// `--auto-create-logs`; the caller decides who may).
    async fn get_or_create(&self, name: &str) -> Result<Arc<dyn CommitLog>, LogError> {
        if let Err(LogError::NotFound(_)) = self.get(name) {
            match self.create(name, 0, 0).await {
                Ok(()) | Err(LogError::AlreadyExists(_)) => {}
                Err(error) => return Err(error),
            }
        }
        self.get(name)
    }
}

/// One log alone as a [`Catalog`]: it is the default log, and there are no
/// named ones (creating one is `Unimplemented`).
pub struct SingleLog(pub Arc<dyn CommitLog>);

impl std::fmt::Debug for SingleLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SingleLog")
    }
}

#[async_trait::async_trait]
impl Catalog for SingleLog {
    fn get(&self, name: &str) -> Result<Arc<dyn CommitLog>, LogError> {
        crate::check_log_name(name)?;
        if name.is_empty() {
            return Ok(Arc::clone(&self.0));
        }
        Err(LogError::NotFound(format!("no log is named {name:?} (this server holds only the default log)")))
    }

    async fn create(&self, _name: &str, _retention_bytes: u64, _retention_ms: u64) -> Result<(), LogError> {
        Err(LogError::Unimplemented("this server holds only the default log".into()))
    }

    async fn delete(&self, name: &str) -> Result<(), LogError> {
        self.get(name)?;
        Err(LogError::InvalidArgument("the default log cannot be deleted".into()))
    }

    fn list(&self) -> Vec<LogInfo> {
        vec![LogInfo { name: String::new(), status: self.0.status(), retention_bytes: 0, retention_ms: 0 }]
    }
}
