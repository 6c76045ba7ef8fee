//! The crate's one error type.

use std::io;
use std::path::{Path, PathBuf};

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `proglog-log`.
///
/// Each variant's doc says whether the log's state changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The offset is below the lowest or at/above the next offset. Nothing changed.
    #[error("offset out of range: {offset} (the log holds {lowest}..{next})")]
    OffsetOutOfRange {
        /// The offset asked for.
        offset: u64,
        /// Lowest offset held (inclusive).
        lowest: u64,
        /// Next offset to be assigned (exclusive end).
        next: u64,
    },

    /// A value is larger than `max-record-bytes`. Nothing was appended (for a batch:
    /// no record of the batch was appended).
    #[error("record of {bytes} bytes exceeds the maximum of {max} bytes")]
    RecordTooLarge {
        /// Size of the rejected value.
        bytes: u64,
        /// The configured maximum.
        max: u64,
    },

    /// A file holds bytes that fail validation where no crash could have left them
    /// (inside a sealed segment, a bad header, a record whose checksum fails on read).
    /// Nothing was changed; the damaged record is never served.
    #[error("corrupt log file {}: {reason} at byte {position}", path.display())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte position in that file where validation failed.
        position: u64,
        /// What failed.
        reason: &'static str,
    },

    /// A segment file is missing from the middle of the log: the segment before it
    /// is intact but ends at `first`, and the next one starts at `next`. Found by
    /// [`Log::open`](crate::Log::open), which changed nothing.
    #[error("log segment {} is missing: offsets {first}..{next} are not in the log", path.display())]
    MissingSegment {
        /// The store file that should hold `first`.
        path: PathBuf,
        /// The first missing offset.
        first: u64,
        /// The offset the next segment starts at.
        next: u64,
    },

    /// The configuration is contradictory. Nothing was opened.
    #[error("invalid log config: {key}: {reason}")]
    InvalidConfig {
        /// The config key (kebab-case, as in TOML).
        key: &'static str,
        /// Why it was rejected.
        reason: String,
    },

    /// Another process (or `Log` value) has the directory open.
    #[error("log directory {} is in use by another process", dir.display())]
    Locked {
        /// The log directory.
        dir: PathBuf,
    },

    /// An earlier write or sync failed, so what is on disk is unknown: the log refuses
    /// all further writes and must be reopened (which recovers the valid prefix).
    #[error("log stopped after an earlier failure (reopen it to recover): {0}")]
    Failed(String),

    /// An I/O operation failed. For writes and syncs the log is then [`Error::Failed`].
    #[error("i/o error on {}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Attaches a path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn at(self, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|source| Error::Io { path: path.to_path_buf(), source })
    }
}
