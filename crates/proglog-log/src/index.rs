//! The memory-mapped index: entry `i` is the store position of offset `base + i`.
//!
//! A writable index is pre-grown to its capacity and mapped; it is trimmed to its
//! entries when its segment is sealed or the log is closed cleanly. The index is
//! derived data: after an unclean shutdown the active segment's index is rebuilt
//! from its store, and a sealed segment's index is checked against its store.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use memmap2::{MmapOptions, MmapRaw};

use crate::error::{IoContext, Result};
use crate::format::INDEX_ENTRY_BYTES;

#[derive(Debug)]
pub(crate) struct Index {
    path: PathBuf,
    file: File,
    map: MmapRaw,
    /// Entries the mapping holds.
    capacity: u64,
}

impl Index {
    /// Opens (creating if needed) an index for appending: the file is grown to
    /// `capacity` entries (zero-filled past what it held) and mapped read-write.
    pub(crate) fn open_writable(path: &Path, capacity: u64) -> Result<Self> {
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).at(path)?;
        file.set_len(capacity * INDEX_ENTRY_BYTES).at(path)?;
        let map = MmapOptions::new().len((capacity * INDEX_ENTRY_BYTES) as usize).map_raw(&file).at(path)?;
        Ok(Self { path: path.to_path_buf(), file, map, capacity })
    }

    /// Maps the `entries` entries of a sealed segment's index read-only.
    pub(crate) fn open_sealed(path: &Path, entries: u64) -> Result<Self> {
        debug_assert!(entries > 0, "sealed segments are never empty");
        let file = File::open(path).at(path)?;
        let map = MmapOptions::new()
            .len((entries * INDEX_ENTRY_BYTES) as usize)
            .map_raw_read_only(&file)
            .at(path)?;
        Ok(Self { path: path.to_path_buf(), file, map, capacity: entries })
    }

    /// Writes a sealed segment's index file from scratch and maps it.
    pub(crate) fn rebuild_sealed(path: &Path, positions: &[u64]) -> Result<Self> {
        let bytes: Vec<u8> = positions.iter().flat_map(|p| p.to_le_bytes()).collect();
        std::fs::write(path, &bytes).at(path)?;
        File::open(path).at(path)?.sync_all().at(path)?;
        Self::open_sealed(path, positions.len() as u64)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Entries the file holds, judging by its length (meaningful for trimmed files).
    pub(crate) fn file_entries(path: &Path) -> Result<Option<(u64, bool)>> {
        match std::fs::metadata(path) {
            Ok(meta) => Ok(Some((meta.len() / INDEX_ENTRY_BYTES, meta.len() % INDEX_ENTRY_BYTES == 0))),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error).at(path),
        }
    }

    /// The store position of entry `i`.
    pub(crate) fn get(&self, i: u64) -> u64 {
        assert!(i < self.capacity, "index entry {i} beyond capacity {}", self.capacity);
        let mut bytes = [0u8; INDEX_ENTRY_BYTES as usize];
        // SAFETY: `i < capacity` keeps the 8 bytes inside the mapping, which is backed
        // by the file for its whole length while this `Index` lives (the file is only
        // trimmed below the mapping's length in `seal`, after which only entries below
        // the trimmed length are read). Callers read only published entries, which the
        // single appender never rewrites while readers can see them (the log excludes
        // readers while it truncates), so this read races with no write.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.map.as_ptr().add((i * INDEX_ENTRY_BYTES) as usize),
                bytes.as_mut_ptr(),
                bytes.len(),
            );
        }
        u64::from_le_bytes(bytes)
    }

    /// Writes entry `i`.
    ///
    /// # Safety
    /// The index must be writable, the caller must be its only writer, and entry `i`
    /// must not be published to readers yet.
    pub(crate) unsafe fn set(&self, i: u64, position: u64) {
        assert!(i < self.capacity, "index entry {i} beyond capacity {}", self.capacity);
        let bytes = position.to_le_bytes();
        // SAFETY: in bounds as above; the caller guarantees exclusivity.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.map.as_mut_ptr().add((i * INDEX_ENTRY_BYTES) as usize),
                bytes.len(),
            );
        }
    }

    /// Makes the first `entries` entries durable and trims the file to them.
    pub(crate) fn seal(&self, entries: u64) -> Result<()> {
        self.map.flush().at(&self.path)?;
        self.file.set_len(entries * INDEX_ENTRY_BYTES).at(&self.path)?;
        self.file.sync_all().at(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_written_are_read_back_and_survive_a_seal_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.index");
        let index = Index::open_writable(&path, 1024 / INDEX_ENTRY_BYTES).unwrap();
        assert_eq!(index.path(), path);
        for (i, position) in [(0, 16), (1, 35)] {
            unsafe { index.set(i, position) };
            assert_eq!(index.get(i), position);
        }
        index.seal(2).unwrap();
        drop(index);

        assert_eq!(Index::file_entries(&path).unwrap(), Some((2, true)));
        let reopened = Index::open_sealed(&path, 2).unwrap();
        assert_eq!(reopened.get(1), 35);
    }

    #[test]
    #[should_panic(expected = "beyond capacity")]
    fn reading_past_capacity_is_a_bug() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open_writable(&dir.path().join("0.index"), 2).unwrap();
        index.get(2);
    }

    #[test]
    fn a_missing_index_file_has_no_entries() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Index::file_entries(&dir.path().join("none.index")).unwrap(), None);
    }
}
