//! The log: an ordered list of segments, one appender, many readers.

use std::fs::TryLockError;
use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::error::{Error, IoContext, Result};
use crate::format::{self, FRAME_HEADER_BYTES, INDEX_EXTENSION, STORE_EXTENSION, STORE_HEADER_BYTES};
use crate::reader::{LogReader, Records};
use crate::segment::{self, Segment};
use crate::{Config, Record};

/// Most fsyncs one `sync` caller issues for others before handing over, which
/// bounds how long the leader's own call can take.
const MAX_LEADER_ROUNDS: u32 = 4;

/// Name of the lock file that keeps two processes from opening one directory.
const LOCK_FILE: &str = "LOCK";
/// Written by [`Log::close`] after everything is durable; removed (durably) by
/// [`Log::open`] before anything else is written.
const CLEAN_SHUTDOWN_MARKER: &str = "clean-shutdown";

/// One segment of a [`Log`] ([`Log::segments`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The offset of its first record.
    pub base_offset: u64,
    /// The offset after its last record.
    pub next_offset: u64,
    /// Bytes of its records in the store file (framing included).
    pub bytes: u64,
}

/// What [`Log::open`] found in the directory and what it repaired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Recovery {
    /// The log had been closed cleanly (no scan was needed).
    pub clean_shutdown: bool,
    /// Bytes cut from the end of the active segment: a torn or damaged tail.
    pub truncated_bytes: u64,
    /// The store file those bytes were cut from.
    pub truncated_store: Option<PathBuf>,
    /// Offsets that were durable and are gone: the log had been closed cleanly,
    /// so its index recorded how many records the active segment held, but the
    /// store no longer holds them all (damage, not a crash). The next append
    /// reuses the first of them.
    pub lost_offsets: Option<Range<u64>>,
    /// Index files rebuilt from their stores.
    pub rebuilt_indexes: Vec<PathBuf>,
    /// Index files without a store (left by an interrupted removal), deleted.
    pub removed_files: Vec<PathBuf>,
    /// Files that are not part of the log; left untouched.
    pub ignored_files: Vec<PathBuf>,
}

/// The appender's state. Records `buf_first..next` sit in `buf` (their frames) and
/// `index_buf` (their index entries), not yet written to the segment's files.
#[derive(Debug)]
struct Writer {
    active: Arc<Segment>,
    buf: Vec<u8>,
    index_buf: Vec<u8>,
    /// Offset of the first buffered record.
    buf_first: u64,
    /// Store position of `buf[0]`.
    buf_position: u64,
    /// Next offset to assign.
    next: u64,
    /// Store length including `buf`.
    end: u64,
}

#[derive(Debug)]
struct Durability {
    /// Every offset below this is on stable storage.
    durable: u64,
    /// A thread is flushing and syncing on behalf of everyone waiting.
    syncing: bool,
    /// Threads waiting for that thread.
    waiting: usize,
    /// Bumped by suffix truncation so an in-flight sync does not vouch for
    /// offsets that were cut and re-appended meanwhile.
    epoch: u64,
}

/// A segmented commit log in one directory.
///
/// `Log` is `Send + Sync`: share it with `Arc`. Appends are serialised by an
/// internal lock; reads of published records take only a shared lock that appends
/// do not hold (it is taken exclusively only to roll, truncate or reset).
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    config: Config,
    lock: File,
    recovery: Recovery,
    segments: RwLock<Vec<Arc<Segment>>>,
    writer: Mutex<Writer>,
    /// Mirror of `Writer::next` for lock-free readers.
    appended_next: AtomicU64,
    durability: Mutex<Durability>,
    synced: Condvar,
    /// Set by the first failed write or sync; the log then refuses writes.
    failure: OnceLock<String>,
    /// Bumped by `truncate_from` and `reset`; readers of whole files notice it.
    rewrites: AtomicU64,
    /// fdatasyncs issued by `sync`.
    sync_count: AtomicU64,
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).at(dir)?.sync_all().at(dir)
}

fn poisoned(_: impl std::fmt::Display) -> Error {
    Error::Failed("a thread panicked while holding the log's lock".to_string())
}

fn find(segments: &[Arc<Segment>], offset: u64) -> Option<&Arc<Segment>> {
    let after = segments.partition_point(|segment| segment.base() <= offset);
    after.checked_sub(1).map(|i| &segments[i])
}

impl Log {
    /// Opens the log in `dir` (created if missing), recovering from an unclean
    /// shutdown: the active segment is cut back to its longest valid prefix and its
    /// index rebuilt; sealed segments are checked at their ends only (they were made
    /// durable when sealed), so opening costs O(segments), not O(bytes).
    ///
    /// Fails with [`Error::Corrupt`] when a sealed segment is damaged, and with
    /// [`Error::Locked`] when another `Log` has the directory open.
    pub fn open(dir: impl AsRef<Path>, config: Config) -> Result<Self> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).at(&dir)?;
        let lock_path = dir.join(LOCK_FILE);
        let lock =
            OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).at(&lock_path)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(Error::Locked { dir }),
            Err(TryLockError::Error(error)) => return Err(error).at(&lock_path),
        }

        let mut recovery = Recovery::default();
        let mut stores = Vec::new();
        let mut indexes = Vec::new();
        for entry in std::fs::read_dir(&dir).at(&dir)? {
            let entry = entry.at(&dir)?;
            let name = entry.file_name();
            match name.to_str().and_then(format::parse_segment_file_name) {
                Some((base, STORE_EXTENSION)) => stores.push(base),
                Some((base, INDEX_EXTENSION)) => indexes.push(base),
                _ if name == LOCK_FILE || name == CLEAN_SHUTDOWN_MARKER => {}
                _ => recovery.ignored_files.push(entry.path()),
            }
        }
        stores.sort_unstable();
        recovery.ignored_files.sort();

        let marker = dir.join(CLEAN_SHUTDOWN_MARKER);
        recovery.clean_shutdown = marker.exists();
        let mut segments = Vec::with_capacity(stores.len().max(1));
        for (i, &base) in stores.iter().enumerate() {
            let (segment, report) = match stores.get(i + 1) {
                Some(&next_base) => Segment::open_sealed(&dir, base, next_base - base)?,
                None => Segment::open_active(&dir, base, recovery.clean_shutdown, &config)?,
            };
            if report.truncated_bytes > 0 {
                recovery.truncated_bytes += report.truncated_bytes;
                recovery.truncated_store = Some(segment.store_path().to_path_buf());
            }
            recovery.lost_offsets = report.lost;
            if report.rebuilt_index {
                recovery.rebuilt_indexes.push(segment.index().path().to_path_buf());
            }
            segments.push(Arc::new(segment));
        }
        if segments.is_empty() {
            segments.push(Arc::new(Segment::create(&dir, config.initial_offset, &config)?));
        }
        // Only now that every segment checked out: an index without its store was
        // left by an interrupted removal (a store is removed before its index).
        for base in indexes.into_iter().filter(|&base| segments.iter().all(|segment| segment.base() != base))
        {
            let path = segment::index_path(&dir, base);
            std::fs::remove_file(&path).at(&path)?;
            recovery.removed_files.push(path);
        }
        if recovery.clean_shutdown {
            std::fs::remove_file(&marker).at(&marker)?;
        }
        sync_dir(&dir)?;

        let active = Arc::clone(segments.last().expect("at least one segment"));
        let (next, end) = (active.next(), active.end());
        let writer = Writer {
            buf: Vec::with_capacity(config.write_buffer_bytes),
            index_buf: Vec::new(),
            buf_first: next,
            buf_position: end,
            next,
            end,
            active,
        };
        Ok(Self {
            durability: Mutex::new(Durability {
                // Sealed segments were synced when sealed; the active one is not known
                // to be durable until the first sync.
                durable: writer.active.base(),
                syncing: false,
                waiting: 0,
                epoch: 0,
            }),
            appended_next: AtomicU64::new(next),
            writer: Mutex::new(writer),
            segments: RwLock::new(segments),
            synced: Condvar::new(),
            failure: OnceLock::new(),
            rewrites: AtomicU64::new(0),
            sync_count: AtomicU64::new(0),
            recovery,
            lock,
            config,
            dir,
        })
    }

    /// The directory holding the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration the log was opened with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// What opening found and repaired.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Appends one value and returns its offset. The record is readable at once;
    /// it reaches the OS when the write buffer fills or on `flush`/`sync`, and is
    /// durable after `sync`. Fails without appending if the value is too large.
    pub fn append(&self, value: &[u8]) -> Result<u64> {
        self.check_value(value)?;
        let mut writer = self.lock_writer()?;
        let offset = self.append_locked(&mut writer, value)?;
        if writer.buf.len() >= self.config.write_buffer_bytes {
            self.flush_locked(&mut writer)?;
        }
        self.appended_next.store(writer.next, Ordering::Release);
        Ok(offset)
    }

    /// Appends values in order and writes them to the OS before returning their
    /// offsets (so they survive a crash of this process). Either every value is
    /// appended or, if one is too large, none is.
    pub fn append_batch<V: AsRef<[u8]>>(&self, values: &[V]) -> Result<Range<u64>> {
        for value in values {
            self.check_value(value.as_ref())?;
        }
        let mut writer = self.lock_writer()?;
        let first = writer.next;
        for value in values {
            self.append_locked(&mut writer, value.as_ref())?;
            if writer.buf.len() >= self.config.write_buffer_bytes.max(1 << 20) {
                self.flush_locked(&mut writer)?;
            }
        }
        self.flush_locked(&mut writer)?;
        self.appended_next.store(writer.next, Ordering::Release);
        Ok(first..writer.next)
    }

    /// Writes buffered appends to the OS: they then survive a crash of this
    /// process, though not yet of the machine.
    pub fn flush(&self) -> Result<()> {
        let mut writer = self.lock_writer()?;
        self.flush_locked(&mut writer)
    }

    /// Makes every record appended so far durable (data, index needs no sync: it is
    /// rebuilt from the store after a crash; new segment files were synced with their
    /// directory when created).
    ///
    /// Group commit: while one caller syncs, others queue; when it finishes, one of
    /// them syncs everything appended meanwhile on behalf of all. N concurrent
    /// appenders thus share far fewer than N fdatasyncs.
    pub fn sync(&self) -> Result<()> {
        self.check_failed()?;
        let mut target = self.appended_next.load(Ordering::Acquire);
        let mut state = self.durability.lock().map_err(poisoned)?;
        loop {
            self.check_failed()?;
            // A suffix truncation may have moved the end below what we asked for.
            target = target.min(self.appended_next.load(Ordering::Acquire));
            if state.durable >= target {
                return Ok(());
            }
            if state.syncing {
                state.waiting += 1;
                state = self.synced.wait(state).map_err(poisoned)?;
                state.waiting -= 1;
                continue;
            }
            // Lead: sync for everyone. While others wait for records appended during
            // our fsync, sync again at once (a bounded number of rounds) rather than
            // hand over, so the disk does not idle while a waiter wakes up.
            state.syncing = true;
            let mut rounds = 0;
            let result = loop {
                let epoch = state.epoch;
                drop(state);
                let result = self.flush_and_sync_active();
                state = self.durability.lock().map_err(poisoned)?;
                if let Ok(synced) = result
                    && state.epoch == epoch
                {
                    state.durable = state.durable.max(synced);
                }
                self.synced.notify_all();
                rounds += 1;
                let more = self.appended_next.load(Ordering::Acquire) > state.durable;
                if result.is_err() || rounds >= MAX_LEADER_ROUNDS || state.waiting == 0 || !more {
                    break result;
                }
            };
            state.syncing = false;
            self.synced.notify_all();
            result?;
        }
    }

    /// Reads the record at `offset`.
    pub fn read(&self, offset: u64) -> Result<Record> {
        self.with_segment(offset, |segment| segment.read(offset))
    }

    /// Reads records from `offset` on, in order: as many whole records of one
    /// segment as fit in `max_bytes` (counting 8 bytes of framing each), and always
    /// at least one. Values share one buffer, read with one system call.
    pub fn read_batch(&self, offset: u64, max_bytes: u64) -> Result<Vec<Record>> {
        let mut records = Vec::new();
        self.with_segment(offset, |segment| segment.read_batch(offset, max_bytes, &mut records))?;
        Ok(records)
    }

    /// Iterates over the records from `offset` to the end of the log (as it is while
    /// iterating), reading in batches.
    pub fn iter(&self, offset: u64) -> Records<'_> {
        Records::new(self, offset)
    }

    /// A reader of the whole log as raw frames (`crc: u32 LE | len: u32 LE | value`,
    /// with the checksum bound to each record's offset), from
    /// [`LogReader::first_offset`] to the end as it is now. Used for snapshots.
    pub fn reader(&self) -> Result<LogReader<'_>> {
        self.flush()?;
        let segments = self.read_segments()?;
        let parts = segments.iter().map(|segment| (Arc::clone(segment), segment.end())).collect();
        let first_offset = segments[0].base();
        Ok(LogReader::new(self, parts, first_offset, self.rewrites.load(Ordering::Acquire)))
    }

    /// How many fdatasyncs [`Log::sync`] has issued (fewer than its calls when
    /// group commit merges them).
    pub fn sync_count(&self) -> u64 {
        self.sync_count.load(Ordering::Relaxed)
    }

    pub(crate) fn rewrites(&self) -> u64 {
        self.rewrites.load(Ordering::Acquire)
    }

    /// The lowest offset held (the next offset when the log is empty).
    pub fn lowest_offset(&self) -> u64 {
        self.read_segments().map(|segments| segments[0].base()).unwrap_or(0)
    }

    /// The offset the next append will get.
    pub fn next_offset(&self) -> u64 {
        self.appended_next.load(Ordering::Acquire)
    }

    /// The highest offset held, or `None` when the log is empty.
    pub fn highest_offset(&self) -> Option<u64> {
        let next = self.next_offset();
        (next > self.lowest_offset()).then(|| next - 1)
    }

    /// Bytes of records in the store files (framing included), as readers see
    /// them: appends still in the write buffer are not counted. Takes no lock
    /// the appender holds, so it never waits for an append.
    pub fn size_bytes(&self) -> u64 {
        match self.read_segments() {
            Ok(segments) => segments.iter().map(|segment| segment.end() - STORE_HEADER_BYTES).sum(),
            Err(_) => 0,
        }
    }

    /// The segments, oldest first, as readers see them (what retention can
    /// remove: every one but the last, the active one).
    pub fn segments(&self) -> Vec<SegmentInfo> {
        match self.read_segments() {
            Ok(segments) => segments
                .iter()
                .map(|segment| SegmentInfo {
                    base_offset: segment.base(),
                    next_offset: segment.next(),
                    bytes: segment.end() - STORE_HEADER_BYTES,
                })
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Retention: removes every sealed segment whose records all lie below
    /// `offset`. The active segment is never removed, so `lowest_offset` ends at a
    /// segment boundary at or below `offset`. On error some segments may have been
    /// removed (the log stays consistent: it lost only a prefix).
    pub fn truncate_before(&self, offset: u64) -> Result<()> {
        let mut segments = self.write_segments()?;
        let removable = segments.windows(2).take_while(|pair| pair[1].base() <= offset).count();
        let mut removed = 0;
        let result = segments[..removable].iter().try_for_each(|segment| {
            segment.remove_files()?;
            removed += 1;
            Ok(())
        });
        segments.drain(..removed);
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        result
    }

    /// Removes every record at or above `offset` (`lowest_offset() <= offset <=
    /// next_offset()`), durably: once this returns, the removed records cannot
    /// reappear after a crash. The next append gets `offset`. Raft uses this to drop
    /// a conflicting suffix. Readers of the removed records get `OffsetOutOfRange`.
    pub fn truncate_from(&self, offset: u64) -> Result<()> {
        self.check_failed()?;
        let mut writer = self.lock_writer()?;
        self.flush_locked(&mut writer)?;
        let mut segments = self.write_segments()?;
        let (lowest, next) = (segments[0].base(), writer.next);
        if offset < lowest || offset > next {
            return Err(Error::OffsetOutOfRange { offset, lowest, next });
        }
        if offset == next {
            return Ok(());
        }
        let result = (|| {
            // Newest first, so that a crash leaves a prefix of the old log.
            let mut removed = false;
            while segments.len() > 1 && segments.last().is_some_and(|last| last.base() >= offset) {
                if let Some(segment) = segments.pop() {
                    segment.remove_files()?;
                    removed = true;
                }
            }
            if removed {
                sync_dir(&self.dir)?;
            }
            let last = segments.last_mut().expect("the first segment is never popped");
            *last = Arc::new(last.reactivate(&self.dir, offset, &self.config)?);
            Ok(Arc::clone(last))
        })();
        let active = result.map_err(|error| self.fail(error))?;
        self.restart_writer(&mut writer, active)
    }

    /// Removes every record and starts an empty log whose next offset is
    /// `next_offset` (Raft installs a snapshot this way). The directory stays.
    pub fn reset(&self, next_offset: u64) -> Result<()> {
        self.check_failed()?;
        let mut writer = self.lock_writer()?;
        let mut segments = self.write_segments()?;
        let result = (|| {
            while let Some(segment) = segments.pop() {
                segment.remove_files()?;
            }
            sync_dir(&self.dir)?;
            let fresh = Arc::new(Segment::create(&self.dir, next_offset, &self.config)?);
            sync_dir(&self.dir)?;
            segments.push(Arc::clone(&fresh));
            Ok(fresh)
        })();
        let active = result.map_err(|error| self.fail(error))?;
        writer.buf.clear();
        writer.index_buf.clear();
        self.restart_writer(&mut writer, active)
    }

    /// Points the appender at `active` after its records were rewritten.
    fn restart_writer(&self, writer: &mut Writer, active: Arc<Segment>) -> Result<()> {
        writer.next = active.next();
        writer.end = active.end();
        writer.buf_position = writer.end;
        writer.buf_first = writer.next;
        writer.active = active;
        self.appended_next.store(writer.next, Ordering::Release);
        self.rewrites.fetch_add(1, Ordering::AcqRel);
        let mut state = self.durability.lock().map_err(poisoned)?;
        state.durable = state.durable.min(writer.next);
        state.epoch += 1;
        Ok(())
    }

    /// Makes everything durable, trims the active index and marks the shutdown
    /// clean so the next open needs no scan. Afterwards the log refuses writes
    /// (`Error::Failed`) and releases the directory; drop it next. Takes `&self` so a
    /// log shared between threads can be closed by its owner.
    pub fn close(&self) -> Result<()> {
        let mut writer = self.lock_writer()?;
        self.flush_locked(&mut writer)?;
        let active = &writer.active;
        active.store().sync_data().at(active.store_path()).map_err(|error| self.fail(error))?;
        active.index().seal(writer.next - active.base()).map_err(|error| self.fail(error))?;
        let _ = self.failure.set("the log is closed".to_string());
        let marker = self.dir.join(CLEAN_SHUTDOWN_MARKER);
        File::create(&marker).at(&marker)?.sync_all().at(&marker)?;
        sync_dir(&self.dir)?;
        // The directory may be opened again (by this process or another) from here.
        self.lock.unlock().at(&self.dir.join(LOCK_FILE))
    }

    /// Closes the log and deletes its directory with everything in it.
    pub fn remove(self) -> Result<()> {
        let dir = self.dir.clone();
        drop(self);
        std::fs::remove_dir_all(&dir).at(&dir)
    }

    fn check_value(&self, value: &[u8]) -> Result<()> {
        let bytes = value.len() as u64;
        if bytes > self.config.max_record_bytes {
            return Err(Error::RecordTooLarge { bytes, max: self.config.max_record_bytes });
        }
        self.check_failed()
    }

    fn check_failed(&self) -> Result<()> {
        match self.failure.get() {
            Some(reason) => Err(Error::Failed(reason.clone())),
            None => Ok(()),
        }
    }

    /// Records a write-path failure: what reached the disk is now unknown (a failed
    /// fsync may have dropped dirty pages), so the log stops accepting writes.
    fn fail(&self, error: Error) -> Error {
        let _ = self.failure.set(error.to_string());
        error
    }

    fn lock_writer(&self) -> Result<MutexGuard<'_, Writer>> {
        self.writer.lock().map_err(poisoned)
    }

    fn read_segments(&self) -> Result<RwLockReadGuard<'_, Vec<Arc<Segment>>>> {
        self.segments.read().map_err(poisoned)
    }

    fn write_segments(&self) -> Result<RwLockWriteGuard<'_, Vec<Arc<Segment>>>> {
        self.segments.write().map_err(poisoned)
    }

    /// Runs `read` on the segment holding the published `offset`; if `offset` is
    /// appended but still buffered, flushes once and retries.
    fn with_segment<T>(&self, offset: u64, mut read: impl FnMut(&Segment) -> Result<T>) -> Result<T> {
        for attempt in 0..2 {
            let (lowest, next) = {
                let segments = self.read_segments()?;
                let lowest = segments[0].base();
                if let Some(segment) = find(&segments, offset)
                    && offset < segment.next()
                {
                    return read(segment);
                }
                (lowest, self.next_offset())
            };
            if attempt == 0 && lowest <= offset && offset < next {
                self.flush()?;
                continue;
            }
            return Err(Error::OffsetOutOfRange { offset, lowest, next });
        }
        unreachable!("the second attempt always returns")
    }

    fn append_locked(&self, writer: &mut Writer, value: &[u8]) -> Result<u64> {
        let frame_bytes = FRAME_HEADER_BYTES + value.len() as u64;
        let entries = writer.next - writer.active.base();
        if entries > 0
            && (writer.end + frame_bytes > self.config.max_store_bytes
                || entries >= writer.active.index().capacity())
        {
            self.roll(writer)?;
        }
        let offset = writer.next;
        writer.index_buf.extend_from_slice(&writer.end.to_le_bytes());
        format::encode_frame(&mut writer.buf, offset, value);
        writer.end += frame_bytes;
        writer.next += 1;
        Ok(offset)
    }

    /// Writes the buffer to the store and publishes its records to readers.
    fn flush_locked(&self, writer: &mut Writer) -> Result<()> {
        self.check_failed()?;
        if !writer.buf.is_empty() {
            let active = &writer.active;
            active
                .store()
                .write_all_at(&writer.buf, writer.buf_position)
                .at(active.store_path())
                .and_then(|()| active.index().write(writer.buf_first - active.base(), &writer.index_buf))
                .map_err(|error| self.fail(error))?;
            writer.buf_position += writer.buf.len() as u64;
            writer.buf_first = writer.next;
            writer.buf.clear();
            writer.index_buf.clear();
            if writer.buf.capacity() > 4 * self.config.write_buffer_bytes.max(1 << 20) {
                writer.buf = Vec::with_capacity(self.config.write_buffer_bytes);
            }
        }
        debug_assert_eq!(writer.buf_position, writer.end);
        writer.active.publish(writer.next, writer.end);
        Ok(())
    }

    /// Seals the active segment (durably: its store synced, its index trimmed and
    /// synced) and starts a new one whose directory entry is synced too. Every
    /// sealed segment is therefore durable, which is what lets `open` skip them.
    fn roll(&self, writer: &mut Writer) -> Result<()> {
        self.flush_locked(writer)?;
        let result = (|| {
            let old = &writer.active;
            old.store().sync_data().at(old.store_path())?;
            old.index().seal(writer.next - old.base())?;
            let fresh = Arc::new(Segment::create(&self.dir, writer.next, &self.config)?);
            sync_dir(&self.dir)?;
            self.write_segments()?.push(Arc::clone(&fresh));
            Ok(fresh)
        })();
        let fresh = result.map_err(|error| self.fail(error))?;
        writer.end = fresh.end();
        writer.buf_position = writer.end;
        writer.active = fresh;
        Ok(())
    }

    /// Flushes and fdatasyncs the active segment; returns the offset below which
    /// everything is now durable.
    fn flush_and_sync_active(&self) -> Result<u64> {
        let (active, next) = {
            let mut writer = self.lock_writer()?;
            self.flush_locked(&mut writer)?;
            (Arc::clone(&writer.active), writer.next)
        };
        // Outside the writer lock: appenders go on while we wait for the disk.
        self.sync_count.fetch_add(1, Ordering::Relaxed);
        active.store().sync_data().at(active.store_path()).map_err(|error| self.fail(error))?;
        Ok(next)
    }
}

impl Drop for Log {
    /// Best effort: hands buffered appends to the OS. Use [`Log::close`] to make
    /// them durable and shut down cleanly.
    fn drop(&mut self) {
        if let Ok(mut writer) = self.writer.lock()
            && !writer.buf.is_empty()
        {
            let _ = self.flush_locked(&mut writer);
        }
    }
}
