//! The memory-mapped index: entry `i` is the store position of offset `base + i`.
//!
//! Entries are written with `pwrite` (so a full disk is an error, not a SIGBUS from a
//! page fault in a mapping) and looked up through a read-only mapping that covers
//! the index's whole capacity; only entries already written are ever read. The
//! file holds exactly the entries written: it is never pre-grown. The index is
//! derived data: after an unclean shutdown the active segment's index is rebuilt
//! from its store, and a sealed segment's index is checked against its store.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::{MmapOptions, MmapRaw};

use crate::error::{IoContext, Result};
use crate::format::INDEX_ENTRY_BYTES;

#[derive(Debug)]
pub(crate) struct Index {
    path: PathBuf,
    file: File,
    map: MmapRaw,
    /// Entries the mapping covers.
    capacity: u64,
}

impl Index {
    /// Opens (creating if needed) the index at `path` for appending, keeping its
    /// first `entries` entries, with room to grow to `capacity` entries.
    pub(crate) fn open_writable(path: &Path, entries: u64, capacity: u64) -> Result<Self> {
        debug_assert!(entries <= capacity && capacity > 0);
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).at(path)?;
        file.set_len(entries * INDEX_ENTRY_BYTES).at(path)?;
        Self::map(path, file, capacity)
    }

    /// Opens the `entries` entries of a sealed segment's index.
    pub(crate) fn open_sealed(path: &Path, entries: u64) -> Result<Self> {
        Self::map(path, File::open(path).at(path)?, entries)
    }

    /// Writes a sealed segment's index file from scratch, durably.
    pub(crate) fn rebuild_sealed(path: &Path, positions: &[u64]) -> Result<Self> {
        let index = Self::open_writable(path, 0, positions.len().max(1) as u64)?;
        index.write(0, &encode(positions))?;
        index.seal(positions.len() as u64)?;
        Ok(index)
    }

    fn map(path: &Path, file: File, capacity: u64) -> Result<Self> {
        // The mapping may extend past the end of the file; pages there are never
        // touched (only written entries are read), so they cannot fault.
        let map = MmapOptions::new()
            .len((capacity.max(1) * INDEX_ENTRY_BYTES) as usize)
            .map_raw_read_only(&file)
            .at(path)?;
        Ok(Self { path: path.to_path_buf(), file, map, capacity })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Entries an index file holds, and whether its length is a whole number of
    /// entries; `None` if it does not exist.
    pub(crate) fn file_entries(path: &Path) -> Result<Option<(u64, bool)>> {
        match std::fs::metadata(path) {
            Ok(meta) => Ok(Some((meta.len() / INDEX_ENTRY_BYTES, meta.len() % INDEX_ENTRY_BYTES == 0))),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error).at(path),
        }
    }

    /// The store position of entry `i`, which must have been written.
    pub(crate) fn get(&self, i: u64) -> u64 {
        assert!(i < self.capacity, "index entry {i} beyond capacity {}", self.capacity);
        let mut bytes = [0u8; INDEX_ENTRY_BYTES as usize];
        // SAFETY: `i < capacity` keeps the 8 bytes inside the mapping. Callers read
        // only entries that were written to the file (so the page is backed) and are
        // never rewritten while readers can see them (the log excludes readers
        // while it truncates), so this read races with no write.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.map.as_ptr().add((i * INDEX_ENTRY_BYTES) as usize),
                bytes.as_mut_ptr(),
                bytes.len(),
            );
        }
        u64::from_le_bytes(bytes)
    }

    /// Writes encoded entries starting at entry `first`.
    pub(crate) fn write(&self, first: u64, entries: &[u8]) -> Result<()> {
        debug_assert!(first + entries.len() as u64 / INDEX_ENTRY_BYTES <= self.capacity);
        self.file.write_all_at(entries, first * INDEX_ENTRY_BYTES).at(&self.path)
    }

    /// Makes the first `entries` entries durable and cuts the file to them.
    pub(crate) fn seal(&self, entries: u64) -> Result<()> {
        self.file.set_len(entries * INDEX_ENTRY_BYTES).at(&self.path)?;
        self.file.sync_all().at(&self.path)
    }
}

/// Encodes store positions as index entries.
pub(crate) fn encode(positions: &[u64]) -> Vec<u8> {
    positions.iter().flat_map(|position| position.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_written_are_read_back_and_survive_a_seal_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.index");
        let index = Index::open_writable(&path, 0, 1024 / INDEX_ENTRY_BYTES).unwrap();
        assert_eq!(index.path(), path);
        assert_eq!(Index::file_entries(&path).unwrap(), Some((0, true)), "never pre-grown");
        for (i, position) in [(0, 16), (1, 35)] {
            index.write(i, &encode(&[position])).unwrap();
            assert_eq!(index.get(i), position);
        }
        index.seal(2).unwrap();
        drop(index);

        assert_eq!(Index::file_entries(&path).unwrap(), Some((2, true)));
        let reopened = Index::open_sealed(&path, 2).unwrap();
        assert_eq!(reopened.get(1), 35);
        let writable = Index::open_writable(&path, 1, 8).unwrap();
        assert_eq!(Index::file_entries(&path).unwrap(), Some((1, true)), "cut to the kept entries");
        assert_eq!(writable.get(0), 16);
    }

    #[test]
    #[should_panic(expected = "beyond capacity")]
    fn reading_past_capacity_is_a_bug() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open_writable(&dir.path().join("0.index"), 0, 2).unwrap();
        index.get(2);
    }

    #[test]
    fn a_missing_index_file_has_no_entries() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Index::file_entries(&dir.path().join("none.index")).unwrap(), None);
    }
}
