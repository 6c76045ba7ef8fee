//! Reading committed records: shared by the single-node and the replicated log.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use proglog_log::Log;
use tokio::sync::watch;

use crate::replicated::{Terms, record_value};
use crate::{LogError, Record};

/// A record log and its commit point: only offsets below the point are read.
#[derive(Clone, Debug)]
pub(crate) struct Committed {
    pub log: Arc<Log>,
    pub committed: watch::Receiver<u64>,
    /// The term of each record (`None`: not replicated, every term is 0).
    pub terms: Option<Terms>,
    /// A replicated log's data log: records from this offset on are stored
    /// with a header (`None`: every record is stored bare).
    pub framed_from: Option<u64>,
    /// Retention cut every record below this offset (the data log may still
    /// hold some: it removes whole segments).
    pub retained: Arc<AtomicU64>,
}

impl Committed {
    fn to_record(&self, record: proglog_log::Record) -> Result<Record, LogError> {
        let term = self.terms.as_ref().map_or(0, |terms| terms.term_of(record.offset));
        let (value, timestamp_ms) = match self.framed_from {
            Some(framed_from) => record_value(framed_from, record.offset, record.value)?,
            None => (record.value, 0),
        };
        Ok(Record { value, offset: record.offset, term, timestamp_ms })
    }

    pub(crate) fn next(&self) -> u64 {
        *self.committed.borrow()
    }

    /// The lowest offset readable.
    pub(crate) fn lowest(&self) -> u64 {
        self.log.lowest_offset().max(self.retained.load(Ordering::Acquire))
    }

    /// Reads the committed record at `offset`, off the async workers.
    pub(crate) async fn read(&self, offset: u64) -> Result<Record, LogError> {
        let this = self.clone();
        blocking(move || this.read_blocking(offset)).await
    }

    /// Reads committed records from `offset`, about `max_bytes` of them, off the
    /// async workers.
    pub(crate) async fn read_batch(&self, offset: u64, max_bytes: u64) -> Result<Vec<Record>, LogError> {
        let this = self.clone();
        blocking(move || this.read_batch_blocking(offset, max_bytes)).await
    }

    /// [`Committed::read`] on this thread (it blocks on disk).
    pub(crate) fn read_blocking(&self, offset: u64) -> Result<Record, LogError> {
        if offset >= self.next() || offset < self.retained.load(Ordering::Acquire) {
            return Err(LogError::OutOfRange { offset });
        }
        self.to_record(self.log.read(offset)?)
    }

    /// [`Committed::read_batch`] on this thread (it blocks on disk).
    pub(crate) fn read_batch_blocking(&self, offset: u64, max_bytes: u64) -> Result<Vec<Record>, LogError> {
        let committed = self.next();
        if offset >= committed || offset < self.retained.load(Ordering::Acquire) {
            return Err(LogError::OutOfRange { offset });
        }
        self.log
            .read_batch(offset, max_bytes)?
            .into_iter()
            .take_while(|record| record.offset < committed)
            .map(|record| self.to_record(record))
            .collect()
    }
}

async fn blocking<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, LogError> + Send + 'static,
) -> Result<T, LogError> {
    tokio::task::spawn_blocking(read).await.map_err(|error| LogError::Internal(error.to_string()))?
}
