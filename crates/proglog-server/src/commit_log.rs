//! What the service needs from "the log": the single-node log implements it now,
//! the replicated log later.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use proglog_api::v1::{Record, Server};
use tokio::sync::watch;

use crate::LogError;

/// Resolves to the offset of the first appended value once the append is
/// committed (durable per the fsync policy; replicated, for a replicated log).
pub type PendingAppend = Pin<Box<dyn Future<Output = Result<u64, LogError>> + Send>>;

/// A log the gRPC service can serve.
///
/// Implementations must never block the calling async task on disk or network
/// I/O: they hand work to their own threads or to `spawn_blocking`.
#[tonic::async_trait]
pub trait CommitLog: Send + Sync + 'static {
    /// Queues `values` for appending, in order, after everything queued before;
    /// returns once queued, with a future that resolves when they are committed.
    /// Splitting the two lets a stream keep many appends in flight without
    /// reordering them.
    async fn append(&self, values: Vec<Bytes>) -> Result<PendingAppend, LogError>;

    /// Reads the committed record at `offset`.
    async fn read(&self, offset: u64) -> Result<Record, LogError>;

    /// Reads committed records from `offset` on, in order: at least one, as many
    /// more as fit in about `max_bytes`.
    async fn read_batch(&self, offset: u64, max_bytes: u64) -> Result<Vec<Record>, LogError>;

    /// The lowest offset still held.
    fn lowest_offset(&self) -> u64;

    /// Watches the commit point: every offset below the watched value is
    /// committed and readable. Followers of the tail wait on this (no polling).
    fn committed(&self) -> watch::Receiver<u64>;

    /// The servers of the cluster, and which one leads.
    async fn servers(&self) -> Result<Vec<Server>, LogError>;
}
