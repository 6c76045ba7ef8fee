//! `proglog-log`: the storage engine of proglog, a segmented commit log.
//!
//! A [`Log`] lives in one directory as a list of segments. Each segment is a store
//! file of checksummed records and a memory-mapped index of their positions. Values
//! are appended at dense, increasing offsets and read back by offset; old segments
//! are dropped for retention ([`Log::truncate_before`]) and a suffix can be cut
//! ([`Log::truncate_from`], for Raft).
//!
//! What it guarantees:
//! - **Crash safety.** Reopening after a crash at any point (kill -9, or power loss
//!   dropping unsynced writes) yields the longest valid prefix of what was appended;
//!   a torn or damaged tail is cut off and reported in [`Log::recovery`]. Damage in
//!   a sealed segment is an [`Error::Corrupt`] naming the file and byte position, and
//!   a record that fails its checksum is never returned.
//! - **Durability.** [`Log::sync`] makes everything appended so far durable, and
//!   concurrent callers share fdatasyncs (group commit).
//! - **Concurrency.** One appender at a time (internally serialised) and any number
//!   of concurrent readers; readers never see a partially written record and do not
//!   wait for appends.
//!
//! What it deliberately does not do: no async, no threads of its own, no network,
//! no knowledge of Raft or gRPC. Async callers reach it through a dedicated thread
//! or `spawn_blocking`.
//!
//! ```
//! use proglog_log::{Config, Log};
//!
//! # fn main() -> Result<(), proglog_log::Error> {
//! let dir = tempfile::tempdir().expect("temp dir");
//! let log = Log::open(dir.path(), Config::default())?;
//! let offset = log.append(b"hello world")?;
//! log.sync()?; // durable from here on
//! assert_eq!(log.read(offset)?.value.as_ref(), b"hello world");
//! assert_eq!((log.lowest_offset(), log.highest_offset()), (0, Some(0)));
//! log.close()?;
//!
//! let log = Log::open(dir.path(), Config::default())?;
//! assert_eq!(log.append(b"again")?, 1);
//! # Ok(())
//! # }
//! ```

mod config;
mod error;
mod format;
mod index;
mod log;
mod reader;
mod segment;

pub use bytes::Bytes;

pub use crate::config::Config;
pub use crate::error::{Error, Result};
pub use crate::log::{Log, Recovery, SegmentInfo};
pub use crate::reader::{LogReader, Records};

/// A record read from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Its offset: dense and increasing from the log's first offset.
    pub offset: u64,
    /// The value as appended.
    pub value: Bytes,
}
