//! A segment: one store file of frames plus its index, covering the offsets
//! `base..next`.
//!
//! Sealed segments are immutable and were made durable before the next segment was
//! created. The active (last) segment is written by the log's single appender, which
//! publishes records to readers by advancing `next` (and `end`) with release stores
//! after their bytes reached the OS.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::error::{Error, IoContext, Result};
use crate::format::{
    self, FRAME_HEADER_BYTES, Frame, INDEX_EXTENSION, STORE_EXTENSION, STORE_HEADER_BYTES, STORE_MAGIC,
};
use crate::index::{self, Index};
use crate::{Config, Record};

/// Largest frame `read` fetches in a single call (see `Segment::read`).
const EXACT_READ_MAX_BYTES: u64 = 64 << 10;

/// What opening a segment found and repaired.
#[derive(Debug, Default)]
pub(crate) struct OpenReport {
    /// Bytes cut from the end of the store (a torn or damaged tail).
    pub(crate) truncated_bytes: u64,
    /// The index was rebuilt from the store.
    pub(crate) rebuilt_index: bool,
    /// Offsets the index vouched for (after a clean shutdown) that the store no
    /// longer holds: records lost to damage, not to a crash.
    pub(crate) lost: Option<Range<u64>>,
}

#[derive(Debug)]
pub(crate) struct Segment {
    base: u64,
    store_path: PathBuf,
    store: File,
    index: Index,
    /// Offsets `base..next` are readable.
    next: AtomicU64,
    /// Store bytes readable (at least the end of record `next - 1`).
    end: AtomicU64,
}

pub(crate) fn store_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{}.{STORE_EXTENSION}", format::segment_stem(base)))
}

pub(crate) fn index_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{}.{INDEX_EXTENSION}", format::segment_stem(base)))
}

fn corrupt(path: &Path, position: u64, reason: &'static str) -> Error {
    Error::Corrupt { path: path.to_path_buf(), position, reason }
}

/// Reads exactly `len` bytes at `position` into a new buffer, without zeroing it
/// first (batch reads are large and frequent).
fn read_vec_at(file: &File, len: usize, position: u64) -> std::io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let mut buf = Vec::<u8>::with_capacity(len);
    while buf.len() < len {
        let filled = buf.len();
        let at = libc::off_t::try_from(position + filled as u64).map_err(std::io::Error::other)?;
        // SAFETY: the destination is the vector's spare capacity (`len - filled`
        // bytes from its initialised prefix), which pread writes at most.
        let read =
            unsafe { libc::pread(file.as_raw_fd(), buf.as_mut_ptr().add(filled).cast(), len - filled, at) };
        match read {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            read if read > 0 => {
                // SAFETY: pread initialised `read` more bytes after `filled`.
                unsafe { buf.set_len(filled + read as usize) };
            }
            _ => {
                let error = std::io::Error::last_os_error();
                if error.kind() != std::io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
        }
    }
    Ok(buf)
}

/// A segment's store file, opened, before its index is settled.
struct StoreFile {
    base: u64,
    path: PathBuf,
    file: File,
    len: u64,
    index_path: PathBuf,
}

impl StoreFile {
    fn open(dir: &Path, base: u64) -> Result<Self> {
        let path = store_path(dir, base);
        let file = OpenOptions::new().read(true).write(true).open(&path).at(&path)?;
        let len = file.metadata().at(&path)?.len();
        Ok(Self { base, path, file, len, index_path: index_path(dir, base) })
    }

    fn into_segment(self, index: Index, entries: u64, end: u64) -> Segment {
        Segment::assemble(self.base, self.path, self.file, index, self.base + entries, end)
    }

    /// The segment with `index`, if the index's ends agree with the store;
    /// otherwise the store back, to be scanned.
    fn trust(self, index: Index, entries: u64) -> Result<Result<Segment, StoreFile>> {
        let (len, index_path) = (self.len, self.index_path.clone());
        let segment = self.into_segment(index, entries, len);
        if segment.index_matches_store(entries, len)? {
            return Ok(Ok(segment));
        }
        let Segment { base, store_path, store, .. } = segment;
        Ok(Err(StoreFile { base, path: store_path, file: store, len, index_path }))
    }
}

/// Result of scanning a store's frames from the header on.
struct Scan {
    positions: Vec<u64>,
    /// End of the last valid frame.
    end: u64,
}

/// Reads frames from the start of the store until the end of the file or the first
/// frame that is incomplete or fails its checksum. Lengths are bounded by the bytes
/// left in the file before anything is allocated from them.
fn scan_store(path: &Path, file: &File, base: u64, file_len: u64) -> Result<Scan> {
    let mut reader = BufReader::with_capacity(1 << 20, file);
    reader.seek(SeekFrom::Start(STORE_HEADER_BYTES)).at(path)?;
    let mut positions = Vec::new();
    let mut position = STORE_HEADER_BYTES;
    let mut frame = Vec::new();
    loop {
        let left = file_len - position;
        if left < FRAME_HEADER_BYTES {
            break;
        }
        let mut header = [0u8; FRAME_HEADER_BYTES as usize];
        reader.read_exact(&mut header).at(path)?;
        let len = format::frame_len(&header);
        if len > left - FRAME_HEADER_BYTES {
            break;
        }
        frame.clear();
        frame.extend_from_slice(&header);
        frame.resize((FRAME_HEADER_BYTES + len) as usize, 0);
        reader.read_exact(&mut frame[FRAME_HEADER_BYTES as usize..]).at(path)?;
        let offset = base + positions.len() as u64;
        if format::decode_frame(&frame, offset) != (Frame::Valid { len }) {
            break;
        }
        positions.push(position);
        position += FRAME_HEADER_BYTES + len;
    }
    Ok(Scan { positions, end: position })
}

/// An intact sealed segment of `entries` records must reach the next segment,
/// which starts `expected` records after `base`. Fewer: the next segment's file is
/// missing. More: the two overlap (`position_of(i)` is record `i`'s position).
fn check_count(
    dir: &Path,
    store_path: &Path,
    base: u64,
    entries: u64,
    expected: u64,
    position_of: impl Fn(u64) -> u64,
) -> Result<()> {
    let (first, next) = (base + entries, base + expected);
    if entries < expected {
        return Err(Error::MissingSegment { path: self::store_path(dir, first), first, next });
    }
    if entries > expected {
        let reason = "sealed segment holds records past the next segment's base";
        return Err(corrupt(store_path, position_of(expected), reason));
    }
    Ok(())
}

impl Segment {
    /// Creates a new, empty segment and makes its store header durable.
    pub(crate) fn create(dir: &Path, base: u64, config: &Config) -> Result<Self> {
        let store_path = store_path(dir, base);
        let store = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&store_path)
            .at(&store_path)?;
        store.write_all_at(&format::store_header(base), 0).at(&store_path)?;
        store.sync_data().at(&store_path)?;
        // Cuts any stale index of an earlier incarnation to nothing.
        let index = Index::open_writable(&index_path(dir, base), 0, config.index_capacity())?;
        Ok(Self::assemble(base, store_path, store, index, base, STORE_HEADER_BYTES))
    }

    fn assemble(base: u64, store_path: PathBuf, store: File, index: Index, next: u64, end: u64) -> Self {
        Self { base, store_path, store, index, next: AtomicU64::new(next), end: AtomicU64::new(end) }
    }

    /// Checks the store header; returns the store's length.
    fn check_header(path: &Path, file: &File, base: u64) -> Result<u64> {
        let len = file.metadata().at(path)?.len();
        if len < STORE_HEADER_BYTES {
            return Err(corrupt(path, 0, "store file shorter than its header"));
        }
        let mut header = [0u8; STORE_HEADER_BYTES as usize];
        file.read_exact_at(&mut header, 0).at(path)?;
        if header[..8] != STORE_MAGIC {
            return Err(corrupt(path, 0, "not a proglog store file (bad magic)"));
        }
        if header[8..] != base.to_le_bytes() {
            return Err(corrupt(path, 8, "base offset in header does not match file name"));
        }
        Ok(len)
    }

    /// Checks, without scanning, that an index of `entries` entries agrees with a
    /// store of `store_len` bytes: the first entry starts the frames, and the last
    /// entry holds a valid frame that ends exactly at the end of the store.
    fn index_matches_store(&self, entries: u64, store_len: u64) -> Result<bool> {
        if entries == 0 {
            return Ok(store_len == STORE_HEADER_BYTES);
        }
        if self.index.get(0) != STORE_HEADER_BYTES {
            return Ok(false);
        }
        let last = self.index.get(entries - 1);
        match self.read_frame(self.base + entries - 1, last, store_len, false) {
            Ok(value) => Ok(last + FRAME_HEADER_BYTES + value.len() as u64 == store_len),
            Err(Error::Corrupt { .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Opens a sealed segment, which must hold exactly `expected` records (the next
    /// segment starts at `base + expected`). Only the index's ends are checked
    /// against the store; a missing or mismatched index is rebuilt by a scan.
    ///
    /// An intact segment holding fewer records means the segment after it is
    /// missing ([`Error::MissingSegment`], naming that file); one whose records are
    /// damaged, or that holds more, is [`Error::Corrupt`] naming this file.
    pub(crate) fn open_sealed(dir: &Path, base: u64, expected: u64) -> Result<(Self, OpenReport)> {
        let store = StoreFile::open(dir, base)?;
        Self::check_header(&store.path, &store.file, base)?;
        let index_entries = match Index::file_entries(&store.index_path)? {
            Some((entries, true)) => Some(entries),
            _ => None,
        };
        let store = match index_entries {
            Some(entries) if entries > 0 => {
                let index = Index::open_sealed(&store.index_path, entries)?;
                match store.trust(index, entries)? {
                    Ok(segment) => {
                        let index = segment.index();
                        check_count(dir, &segment.store_path, base, entries, expected, |i| index.get(i))?;
                        return Ok((segment, OpenReport::default()));
                    }
                    Err(store) => store,
                }
            }
            _ => store,
        };
        let scan = scan_store(&store.path, &store.file, store.base, store.len)?;
        let found = scan.positions.len() as u64;
        if scan.end != store.len {
            let reason = if found < expected {
                "invalid record inside a sealed segment"
            } else {
                "sealed segment holds bytes past its last record"
            };
            return Err(corrupt(&store.path, scan.end, reason));
        }
        if found < expected && index_entries.is_some_and(|entries| entries > found) {
            return Err(corrupt(&store.path, scan.end, "sealed store ends before its index's last record"));
        }
        check_count(dir, &store.path, base, found, expected, |i| scan.positions[i as usize])?;
        let index = Index::rebuild_sealed(&store.index_path, &scan.positions)?;
        Ok((
            store.into_segment(index, found, scan.end),
            OpenReport { rebuilt_index: true, ..Default::default() },
        ))
    }

    /// Opens the active (last) segment for appending. After a clean shutdown its
    /// trimmed index is trusted once its ends check out; otherwise the store is
    /// scanned, cut back to its longest valid prefix, and the index rebuilt.
    pub(crate) fn open_active(
        dir: &Path,
        base: u64,
        clean: bool,
        config: &Config,
    ) -> Result<(Self, OpenReport)> {
        let store = StoreFile::open(dir, base)?;
        let mut header = [0u8; STORE_HEADER_BYTES as usize];
        if store.len >= STORE_HEADER_BYTES {
            store.file.read_exact_at(&mut header, 0).at(&store.path)?;
        }
        if header != format::store_header(base) {
            if store.len > STORE_HEADER_BYTES {
                Self::check_header(&store.path, &store.file, base)?;
            }
            // A crash while the segment was being created can leave a short or
            // zeroed header; no record can follow it, so the segment is empty.
            // After a clean shutdown, records its index vouched for are lost.
            let vouched = match Index::file_entries(&store.index_path)? {
                Some((entries, _)) if clean && entries > 0 => Some(base..base + entries),
                _ => None,
            };
            store.file.set_len(0).at(&store.path)?;
            store.file.write_all_at(&format::store_header(base), 0).at(&store.path)?;
            store.file.sync_data().at(&store.path)?;
            let index = Index::open_writable(&store.index_path, 0, config.index_capacity())?;
            let report = OpenReport { lost: vouched, ..OpenReport::default() };
            return Ok((store.into_segment(index, 0, STORE_HEADER_BYTES), report));
        }

        if clean && let Some((entries, true)) = Index::file_entries(&store.index_path)? {
            let index =
                Index::open_writable(&store.index_path, entries, config.index_capacity().max(entries))?;
            match store.trust(index, entries)? {
                Ok(segment) => return Ok((segment, OpenReport::default())),
                Err(store) => return Self::recover_active(store, Some(entries), config),
            }
        }
        Self::recover_active(store, None, config)
    }

    /// Scans the active store, cuts it back to its longest valid prefix and
    /// rebuilds its index. `vouched` is the record count a clean shutdown's index
    /// recorded: records below it that the scan no longer finds were lost.
    fn recover_active(store: StoreFile, vouched: Option<u64>, config: &Config) -> Result<(Self, OpenReport)> {
        let scan = scan_store(&store.path, &store.file, store.base, store.len)?;
        let found = scan.positions.len() as u64;
        let lost = vouched
            .filter(|&entries| entries > found)
            .map(|entries| store.base + found..store.base + entries);
        let mut report = OpenReport { rebuilt_index: true, lost, ..OpenReport::default() };
        if scan.end < store.len {
            report.truncated_bytes = store.len - scan.end;
            store.file.set_len(scan.end).at(&store.path)?;
            store.file.sync_data().at(&store.path)?;
        }
        let entries = scan.positions.len() as u64;
        let index = Index::open_writable(&store.index_path, 0, config.index_capacity().max(entries))?;
        index.write(0, &index::encode(&scan.positions))?;
        Ok((store.into_segment(index, entries, scan.end), report))
    }

    /// Turns this segment (sealed or active) back into the active segment, holding
    /// only offsets below `next`. The caller excludes all readers and the appender.
    pub(crate) fn reactivate(&self, dir: &Path, next: u64, config: &Config) -> Result<Self> {
        assert!(self.base <= next && next <= self.next(), "reactivate outside the segment");
        let entries = next - self.base;
        let end = if next == self.next() { self.end() } else { self.index.get(entries) };
        let store = self.store.try_clone().at(&self.store_path)?;
        store.set_len(end).at(&self.store_path)?;
        store.sync_data().at(&self.store_path)?;
        let capacity = config.index_capacity().max(entries);
        let index = Index::open_writable(&index_path(dir, self.base), entries, capacity)?;
        Ok(Self::assemble(self.base, self.store_path.clone(), store, index, next, end))
    }

    pub(crate) fn base(&self) -> u64 {
        self.base
    }

    pub(crate) fn next(&self) -> u64 {
        self.next.load(Ordering::Acquire)
    }

    pub(crate) fn end(&self) -> u64 {
        self.end.load(Ordering::Acquire)
    }

    pub(crate) fn store_path(&self) -> &Path {
        &self.store_path
    }

    pub(crate) fn store(&self) -> &File {
        &self.store
    }

    pub(crate) fn index(&self) -> &Index {
        &self.index
    }

    /// Publishes records `..next`, whose bytes end at `end`, to readers.
    pub(crate) fn publish(&self, next: u64, end: u64) {
        debug_assert!(next >= self.next() && end >= self.end(), "publish never goes back");
        self.end.store(end, Ordering::Release);
        self.next.store(next, Ordering::Release);
    }

    /// Reads and validates the frame of `offset` at `position`; the frame must end
    /// at or before `limit`, and ends exactly there if `exact`.
    fn read_frame(&self, offset: u64, position: u64, limit: u64, exact: bool) -> Result<Bytes> {
        if position < STORE_HEADER_BYTES || position > limit.saturating_sub(FRAME_HEADER_BYTES) {
            return Err(corrupt(&self.store_path, position, "index entry outside the store"));
        }
        let frame = if exact {
            // One read: the next index entry says where this frame ends.
            let mut frame = vec![0u8; (limit - position) as usize];
            self.store.read_exact_at(&mut frame, position).at(&self.store_path)?;
            if format::frame_len(&frame) != limit - position - FRAME_HEADER_BYTES {
                return Err(corrupt(&self.store_path, position, "record length disagrees with the index"));
            }
            frame
        } else {
            let mut header = [0u8; FRAME_HEADER_BYTES as usize];
            self.store.read_exact_at(&mut header, position).at(&self.store_path)?;
            let len = format::frame_len(&header);
            if len > limit - position - FRAME_HEADER_BYTES {
                return Err(corrupt(&self.store_path, position, "record length runs past the store"));
            }
            let mut frame = vec![0u8; (FRAME_HEADER_BYTES + len) as usize];
            frame[..FRAME_HEADER_BYTES as usize].copy_from_slice(&header);
            self.store
                .read_exact_at(&mut frame[FRAME_HEADER_BYTES as usize..], position + FRAME_HEADER_BYTES)
                .at(&self.store_path)?;
            frame
        };
        match format::decode_frame(&frame, offset) {
            Frame::Valid { .. } => Ok(Bytes::from(frame).slice(FRAME_HEADER_BYTES as usize..)),
            _ => Err(corrupt(&self.store_path, position, "record checksum mismatch")),
        }
    }

    /// Reads the published record at `offset` (`base <= offset < next`).
    pub(crate) fn read(&self, offset: u64) -> Result<Record> {
        let next = self.next();
        assert!(self.base <= offset && offset < next, "read of unpublished offset {offset}");
        let i = offset - self.base;
        let position = self.index.get(i);
        // Small frames whose end the next entry gives are read in one call; larger
        // ones read their header first, so a damaged entry cannot size a big buffer.
        let limit = if offset + 1 < next { self.index.get(i + 1) } else { self.end() };
        let exact = offset + 1 < next && limit.saturating_sub(position) <= EXACT_READ_MAX_BYTES;
        let value = self.read_frame(offset, position, limit, exact)?;
        Ok(Record { offset, value })
    }

    /// Appends to `out` the published records from `offset` on whose frames fit in
    /// `max_bytes` (at least one), reading them with a single positioned read. The
    /// batch stops before a damaged record; only a damaged first record is an error.
    pub(crate) fn read_batch(&self, offset: u64, max_bytes: u64, out: &mut Vec<Record>) -> Result<()> {
        let next = self.next();
        assert!(self.base <= offset && offset < next, "read of unpublished offset {offset}");
        let start = self.index.get(offset - self.base);
        let end = self.end();
        if start < STORE_HEADER_BYTES || start > end {
            return Err(corrupt(&self.store_path, start, "index entry outside the store"));
        }
        let len = (end - start).min(max_bytes);
        let buf = Bytes::from(read_vec_at(&self.store, len as usize, start).at(&self.store_path)?);
        out.reserve((next - offset).min(len / 64 + 1) as usize);
        let before = out.len();
        let mut at = 0usize;
        let mut current = offset;
        // A damaged record ends the batch: the records before it are returned, and
        // the error comes from the next batch, which starts at the damaged record.
        let damage = loop {
            if current >= next {
                break None;
            }
            match format::decode_frame(&buf[at..], current) {
                Frame::Valid { len } => {
                    let value_start = at + FRAME_HEADER_BYTES as usize;
                    let value_end = value_start + len as usize;
                    out.push(Record { offset: current, value: buf.slice(value_start..value_end) });
                    at = value_end;
                    current += 1;
                }
                // A published frame cannot run past the published end.
                Frame::Incomplete { .. } if len == end - start => {
                    break Some("record length runs past the store");
                }
                Frame::Incomplete { .. } => break None,
                Frame::BadChecksum => break Some("record checksum mismatch"),
            }
        };
        if let Some(reason) = damage
            && out.len() == before
        {
            return Err(corrupt(&self.store_path, start + at as u64, reason));
        }
        if out.len() == before {
            // The first record alone is larger than `max_bytes`.
            out.push(self.read(offset)?);
        }
        Ok(())
    }

    /// Removes both files of this segment (store first: an index without its
    /// store is swept up at the next open).
    pub(crate) fn remove_files(&self) -> Result<()> {
        std::fs::remove_file(&self.store_path).at(&self.store_path)?;
        match std::fs::remove_file(self.index.path()) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error).at(self.index.path()),
            _ => Ok(()),
        }
    }
}
