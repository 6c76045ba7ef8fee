//! Configuration of a [`Log`](crate::Log).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::{FRAME_HEADER_BYTES, INDEX_ENTRY_BYTES, STORE_HEADER_BYTES};

/// How a log lays out and bounds its segments.
///
/// Keys are kebab-case so the agent can nest this in its TOML config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// A segment rolls before its store file would exceed this many bytes
    /// (a single record larger than this still fits in an empty segment). Default 64 MiB.
    pub max_store_bytes: u64,
    /// A segment rolls when its index file (8 bytes per record) is full. Default 4 MiB.
    pub max_index_bytes: u64,
    /// Offset of the first record of a new, empty log. Default 0.
    pub initial_offset: u64,
    /// Largest value `append` accepts. Default 16 MiB; at most 4 GiB - 1.
    pub max_record_bytes: u64,
    /// Appends are buffered in memory up to this many bytes before they are written
    /// to the OS (a `flush`, `sync`, `append_batch` or read of them writes them
    /// sooner). Default 256 KiB; 0 writes every append through.
    pub write_buffer_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_store_bytes: 64 << 20,
            max_index_bytes: 4 << 20,
            initial_offset: 0,
            max_record_bytes: 16 << 20,
            write_buffer_bytes: 256 << 10,
        }
    }
}

impl Config {
    /// Rejects contradictory settings. Called by [`Log::open`](crate::Log::open).
    pub fn validate(&self) -> Result<()> {
        let invalid = |key, reason: String| Err(Error::InvalidConfig { key, reason });
        if self.max_index_bytes < INDEX_ENTRY_BYTES {
            return invalid(
                "max-index-bytes",
                format!("must hold at least one {INDEX_ENTRY_BYTES}-byte entry"),
            );
        }
        if self.max_store_bytes < STORE_HEADER_BYTES + FRAME_HEADER_BYTES {
            return invalid(
                "max-store-bytes",
                format!("must be at least {} bytes", STORE_HEADER_BYTES + FRAME_HEADER_BYTES),
            );
        }
        if self.max_record_bytes == 0 || self.max_record_bytes > u64::from(u32::MAX) {
            return invalid("max-record-bytes", format!("must be in 1..={}", u32::MAX));
        }
        if self.initial_offset > u64::MAX / 2 {
            return invalid("initial-offset", "is too large".to_string());
        }
        Ok(())
    }

    /// Index entries per segment.
    pub(crate) fn index_capacity(&self) -> u64 {
        self.max_index_bytes / INDEX_ENTRY_BYTES
    }
}
