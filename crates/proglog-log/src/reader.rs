//! Sequential access to the whole log: a byte reader for snapshots and a record
//! iterator.

use std::collections::VecDeque;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::format::STORE_HEADER_BYTES;
use crate::segment::Segment;
use crate::{Error, Log, Record, Result};

/// Streams the log's frames (see [`Log::reader`]) as they were when it was
/// created: later appends are not included. Segments removed by retention meanwhile
/// are still read (their open files stay readable); if the log is truncated with
/// [`Log::truncate_from`] or [`Log::reset`] meanwhile, reading fails rather than
/// mixing two histories.
#[derive(Debug)]
pub struct LogReader<'a> {
    log: &'a Log,
    /// Each segment with the store length to read up to.
    parts: Vec<(Arc<Segment>, u64)>,
    current: usize,
    position: u64,
    first_offset: u64,
    rewrites: u64,
}

impl<'a> LogReader<'a> {
    pub(crate) fn new(
        log: &'a Log,
        parts: Vec<(Arc<Segment>, u64)>,
        first_offset: u64,
        rewrites: u64,
    ) -> Self {
        Self { log, parts, current: 0, position: STORE_HEADER_BYTES, first_offset, rewrites }
    }

    /// Offset of the first frame in the stream (the checksums bind frames to offsets).
    pub fn first_offset(&self) -> u64 {
        self.first_offset
    }
}

impl io::Read for LogReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.log.rewrites() != self.rewrites {
            return Err(io::Error::other("the log was truncated while it was being read"));
        }
        while let Some((segment, end)) = self.parts.get(self.current) {
            if self.position >= *end {
                self.current += 1;
                self.position = STORE_HEADER_BYTES;
                continue;
            }
            let len = buf.len().min((end - self.position) as usize);
            let read = segment.store().read_at(&mut buf[..len], self.position)?;
            if read == 0 && len > 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} ended early", segment.store_path().display()),
                ));
            }
            self.position += read as u64;
            return Ok(read);
        }
        Ok(0)
    }
}

/// Iterator over records from an offset to the end of the log (see [`Log::iter`]).
#[derive(Debug)]
pub struct Records<'a> {
    log: &'a Log,
    next: u64,
    batch: VecDeque<Record>,
    done: bool,
}

/// Bytes read per batch while iterating.
const ITER_BATCH_BYTES: u64 = 1 << 20;

impl<'a> Records<'a> {
    pub(crate) fn new(log: &'a Log, next: u64) -> Self {
        Self { log, next, batch: VecDeque::new(), done: false }
    }
}

impl Iterator for Records<'_> {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.batch.is_empty() && !self.done {
            match self.log.read_batch(self.next, ITER_BATCH_BYTES) {
                Ok(records) => self.batch.extend(records),
                Err(Error::OffsetOutOfRange { next, .. }) if self.next == next => self.done = true,
                Err(error) => {
                    self.done = true;
                    return Some(Err(error));
                }
            }
        }
        let record = self.batch.pop_front()?;
        self.next = record.offset + 1;
        Some(Ok(record))
    }
}
