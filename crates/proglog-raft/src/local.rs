//! The single-node log: a [`proglog_log::Log`] behind a dedicated writer thread.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use proglog_log::Log;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

use crate::records::Committed;
use crate::{Append, CommitLog, Leader, LogError, LogStatus, PendingAppend, Record, ServerInfo};

/// When an append is acknowledged (SPEC §5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Fsync {
    /// After it is on stable storage (group-committed with concurrent appends)
    #[default]
    Always,
    /// After it was written to the OS (survives a process crash, not power loss)
    // A background thread still fsyncs every `BACKGROUND_SYNC_INTERVAL` while
    // the log grows, so a segment roll (which makes the sealed segment durable)
    // finds little unsynced data and never stalls appends for long.
    Never,
}

/// How often `Fsync::Never` logs are synced in the background.
pub const BACKGROUND_SYNC_INTERVAL: Duration = Duration::from_millis(5);

/// Appends waiting for the writer thread, at most.
const QUEUE_REQUESTS: usize = 1024;
/// Value bytes waiting for the writer thread (or being written), at most; an
/// append larger than this waits for the queue to empty.
const QUEUE_BYTES: usize = 64 << 20;
/// The writer merges queued appends into one batch (one write, one fsync) up to
/// this many bytes.
const MERGE_BYTES: usize = 4 << 20;

struct AppendRequest {
    values: Vec<Bytes>,
    reply: oneshot::Sender<Result<u64, LogError>>,
    /// Its share of [`QUEUE_BYTES`], released once written.
    _queued: Option<OwnedSemaphorePermit>,
}

/// A single-node log. Appends go through one writer thread that merges whatever
/// is queued into one `append_batch` (and, with [`Fsync::Always`], one fsync), so
/// concurrent producers share disk writes. Reads run on tokio's blocking pool.
/// Only committed records (acknowledged to their producer) are readable.
#[derive(Debug)]
pub struct LocalLog {
    records: Committed,
    server: ServerInfo,
    queued_bytes: Arc<Semaphore>,
    writer: Mutex<Option<(mpsc::Sender<AppendRequest>, JoinHandle<()>)>>,
    /// Set when a write failed: the log refuses writes from then on.
    failure: watch::Receiver<Option<String>>,
    /// With `Fsync::Never`: the background syncer and the channel that stops it.
    syncer: Mutex<Option<(std::sync::mpsc::Sender<()>, JoinHandle<()>)>>,
}

impl std::fmt::Debug for AppendRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendRequest").field("values", &self.values.len()).finish()
    }
}

impl LocalLog {
    /// Serves `log` as the only server of its cluster, named `id` and dialled at
    /// `rpc_addr`.
    pub fn new(
        log: Log,
        fsync: Fsync,
        id: impl Into<String>,
        rpc_addr: impl Into<String>,
    ) -> Result<Self, LogError> {
        let log = Arc::new(log);
        let (committed_tx, committed) = watch::channel(log.next_offset());
        let (tx, rx) = mpsc::channel(QUEUE_REQUESTS);
        let (failed, failure) = watch::channel(None);
        let writer_log = Arc::clone(&log);
        let handle = std::thread::Builder::new()
            .name("proglog-writer".into())
            .spawn(move || write_loop(&writer_log, fsync, rx, &committed_tx, &failed))
            .map_err(|error| LogError::Internal(format!("cannot start the writer thread: {error}")))?;
        let syncer = match fsync {
            Fsync::Always => None,
            Fsync::Never => {
                let (stop, stopped) = std::sync::mpsc::channel();
                let syncer_log = Arc::clone(&log);
                let handle = std::thread::Builder::new()
                    .name("proglog-syncer".into())
                    .spawn(move || sync_in_background(&[syncer_log], BACKGROUND_SYNC_INTERVAL, &stopped))
                    .map_err(|error| {
                        LogError::Internal(format!("cannot start the syncer thread: {error}"))
                    })?;
                Some((stop, handle))
            }
        };
        let server = ServerInfo { id: id.into(), rpc_addr: rpc_addr.into(), is_leader: true };
        Ok(Self {
            records: Committed { log, committed, terms: None, framed_from: None, retained: Arc::default() },
            server,
            queued_bytes: Arc::new(Semaphore::new(QUEUE_BYTES)),
            writer: Mutex::new(Some((tx, handle))),
            failure,
            syncer: Mutex::new(syncer),
        })
    }

    /// Stops accepting appends, waits for the queued ones, then syncs and closes
    /// the log (a clean shutdown: the next open needs no scan).
    pub fn close(&self) -> Result<(), LogError> {
        let writer =
            self.writer.lock().map_err(|_| LogError::Internal("writer lock poisoned".into()))?.take();
        if let Some((tx, handle)) = writer {
            drop(tx);
            handle.join().map_err(|_| LogError::Internal("the writer thread panicked".into()))?;
        }
        let syncer =
            self.syncer.lock().map_err(|_| LogError::Internal("syncer lock poisoned".into()))?.take();
        if let Some((stop, handle)) = syncer {
            drop(stop);
            handle.join().map_err(|_| LogError::Internal("the syncer thread panicked".into()))?;
        }
        self.records.log.close().map_err(LogError::from)
    }

    fn sender(&self) -> Result<mpsc::Sender<AppendRequest>, LogError> {
        match self.writer.lock() {
            Ok(writer) => match writer.as_ref() {
                Some((tx, _)) => Ok(tx.clone()),
                None => Err(LogError::Unavailable("the log is closed".into())),
            },
            Err(_) => Err(LogError::Internal("writer lock poisoned".into())),
        }
    }
}

/// The writer thread: merge queued appends, write them in one batch, sync if
/// asked, publish the new commit point, then acknowledge. A failed write stops
/// the log (it refuses writes until reopened): that is reported in `failed`.
fn write_loop(
    log: &Log,
    fsync: Fsync,
    mut rx: mpsc::Receiver<AppendRequest>,
    committed: &watch::Sender<u64>,
    failed: &watch::Sender<Option<String>>,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut bytes: usize = first.values.iter().map(Bytes::len).sum();
        let mut batch = vec![first];
        while bytes < MERGE_BYTES {
            match rx.try_recv() {
                Ok(request) => {
                    bytes += request.values.iter().map(Bytes::len).sum::<usize>();
                    batch.push(request);
                }
                Err(_) => break,
            }
        }
        let values: Vec<&[u8]> =
            batch.iter().flat_map(|request| request.values.iter().map(|v| v.as_ref())).collect();
        let result = log.append_batch(&values).and_then(|range| match fsync {
            Fsync::Always => log.sync().map(|()| range),
            Fsync::Never => Ok(range),
        });
        match result {
            Ok(range) => {
                // Publish first: a producer told its offset must be able to read it.
                committed.send_replace(range.end);
                let mut next = range.start;
                for request in batch {
                    let count = request.values.len() as u64;
                    let _ = request.reply.send(Ok(next));
                    next += count;
                }
            }
            Err(error) => {
                if !matches!(error, proglog_log::Error::RecordTooLarge { .. }) && failed.borrow().is_none() {
                    failed.send_replace(Some(format!("a write to the log failed: {error}")));
                }
                let error = LogError::from(error);
                for request in batch {
                    let _ = request.reply.send(Err(error.clone()));
                }
            }
        }
    }
    // Queue closed: everything queued is written; make it durable.
    let _ = log.sync();
}

/// Syncs each of `logs` every `interval` while it grows, until `stopped` is
/// disconnected (or a sync fails: that log has then stopped anyway).
pub(crate) fn sync_in_background(
    logs: &[Arc<Log>],
    interval: Duration,
    stopped: &std::sync::mpsc::Receiver<()>,
) {
    let mut synced: Vec<u64> = logs.iter().map(|log| log.next_offset()).collect();
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
        for (log, synced) in logs.iter().zip(&mut synced) {
            let next = log.next_offset();
            if next != *synced {
                if log.sync().is_err() {
                    return;
                }
                *synced = next;
            }
        }
    }
}

#[async_trait::async_trait]
impl CommitLog for LocalLog {
    /// An idempotent append (one with a producer) is refused: this log keeps
    /// no producer state, and storing it blindly could store it twice.
    async fn append(&self, append: Append) -> Result<PendingAppend, LogError> {
        if append.producer.is_some() {
            return Err(unreplicated("idempotent producers"));
        }
        let values = append.values;
        let sender = self.sender()?;
        let bytes: usize = values.iter().map(Bytes::len).sum();
        let permits = u32::try_from(bytes.min(QUEUE_BYTES)).unwrap_or(u32::MAX);
        let queued = Arc::clone(&self.queued_bytes).acquire_many_owned(permits).await.ok();
        let (reply, done) = oneshot::channel();
        sender
            .send(AppendRequest { values, reply, _queued: queued })
            .await
            .map_err(|_| LogError::Unavailable("the log is closed".into()))?;
        Ok(Box::pin(async move {
            done.await
                .unwrap_or_else(|_| Err(LogError::Unavailable("the log closed before committing".into())))
        }))
    }

    async fn read(&self, offset: u64) -> Result<Record, LogError> {
        self.records.read(offset).await
    }

    async fn read_batch(&self, offset: u64, max_bytes: u64) -> Result<Vec<Record>, LogError> {
        self.records.read_batch(offset, max_bytes).await
    }

    /// One node: every acknowledged record is already readable here.
    async fn linearize(&self) -> Result<(), LogError> {
        Ok(())
    }

    async fn init_producer(&self) -> Result<u64, LogError> {
        Err(unreplicated("idempotent producers"))
    }

    async fn commit_offset(&self, _group: &str, _offset: u64) -> Result<(), LogError> {
        Err(unreplicated("consumer positions"))
    }

    async fn fetch_offset(&self, _group: &str) -> Result<Option<u64>, LogError> {
        Err(unreplicated("consumer positions"))
    }

    fn lowest_offset(&self) -> u64 {
        self.records.log.lowest_offset()
    }

    fn committed(&self) -> watch::Receiver<u64> {
        self.records.committed.clone()
    }

    async fn servers(&self) -> Result<Vec<ServerInfo>, LogError> {
        Ok(vec![self.server.clone()])
    }

    /// A single node leads, alone, and applies what it commits as it commits it:
    /// its commit and applied index are the number of committed records.
    fn status(&self) -> LogStatus {
        let committed = self.records.next();
        let lowest_offset = self.records.log.lowest_offset();
        LogStatus {
            is_leader: true,
            leader: Some(Leader { id: self.server.id.clone(), rpc_addr: self.server.rpc_addr.clone() }),
            term: 0,
            commit_index: committed,
            applied_index: committed,
            members: 1,
            voters: 1,
            lowest_offset,
            highest_offset: (committed > lowest_offset).then(|| committed - 1),
            bytes: self.records.log.size_bytes(),
            failure: self.failure.borrow().clone(),
            follower_lag: Vec::new(),
        }
    }

    fn failure(&self) -> watch::Receiver<Option<String>> {
        self.failure.clone()
    }
}

/// What only the replicated log keeps (its state machine).
fn unreplicated(what: &str) -> LogError {
    LogError::Unimplemented(format!("{what} are kept by the replicated log (RaftLog), not by LocalLog"))
}
