//! The book's chapter-3 tests (store, index, segment, log), ported to this API.
//! Where the book asserted a quirk of its format (a pre-grown index that fails
//! appends when full), the port asserts the intent with our fix.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::io::Read;
use std::path::Path;

use proglog_log::{Config, Error, Log};

const WRITE: &[u8] = b"hello world";
/// Frame header (length + checksum) plus the value, as the book's `width`.
const WIDTH: u64 = 8 + WRITE.len() as u64;
const STORE_HEADER: u64 = 16;

fn store_file(dir: &Path, base: u64) -> std::path::PathBuf {
    dir.join(format!("{base:020}.store"))
}

fn small(max_store_bytes: u64) -> Config {
    Config { max_store_bytes, ..Config::default() }
}

#[test]
fn store_appends_and_reads_records_and_reads_them_again_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), Config::default()).unwrap();
    for i in 0..3 {
        assert_eq!(log.append(WRITE).unwrap(), i);
    }
    for i in 0..3 {
        assert_eq!(log.read(i).unwrap().value, WRITE);
    }
    log.flush().unwrap();
    // Positions advance by exactly one frame per record.
    let size = std::fs::metadata(store_file(dir.path(), 0)).unwrap().len();
    assert_eq!(size, STORE_HEADER + 3 * WIDTH);
    drop(log);

    let log = Log::open(dir.path(), Config::default()).unwrap();
    for i in 0..3 {
        assert_eq!(log.read(i).unwrap().value, WRITE);
    }
}

#[test]
fn store_buffers_appends_until_flushed_or_closed() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), Config::default()).unwrap();
    log.append(WRITE).unwrap();
    let before = std::fs::metadata(store_file(dir.path(), 0)).unwrap().len();
    log.close().unwrap();
    let after = std::fs::metadata(store_file(dir.path(), 0)).unwrap().len();
    assert!(after > before, "close writes buffered appends ({before} -> {after})");
    assert_eq!(after, STORE_HEADER + WIDTH);
    Log::open(dir.path(), Config::default()).unwrap();
}

#[test]
fn segment_starts_at_its_base_offset_and_rolls_when_its_index_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config { initial_offset: 16, max_index_bytes: 3 * 8, ..Config::default() };
    let log = Log::open(dir.path(), config.clone()).unwrap();
    assert_eq!(log.next_offset(), 16);
    for i in 0..3 {
        let offset = log.append(WRITE).unwrap();
        assert_eq!(offset, 16 + i);
        assert_eq!(log.read(offset).unwrap().value, WRITE);
    }
    assert!(!store_file(dir.path(), 19).exists());
    // The book's index fails this append (and orphans its bytes); ours rolls first.
    assert_eq!(log.append(WRITE).unwrap(), 19);
    assert!(store_file(dir.path(), 19).exists());
    log.flush().unwrap();
    let sealed = std::fs::metadata(store_file(dir.path(), 16)).unwrap().len();
    assert_eq!(sealed, STORE_HEADER + 3 * WIDTH, "no orphan bytes in the sealed store");
    assert_eq!(std::fs::metadata(dir.path().join(format!("{:020}.index", 16))).unwrap().len(), 3 * 8);
}

#[test]
fn segment_with_a_maxed_store_rolls_on_the_next_append_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), Config { initial_offset: 16, ..Config::default() }).unwrap();
    for _ in 0..3 {
        log.append(WRITE).unwrap();
    }
    log.close().unwrap();

    let log = Log::open(dir.path(), small(WRITE.len() as u64 * 3)).unwrap();
    assert_eq!(log.append(WRITE).unwrap(), 19);
    log.flush().unwrap();
    assert!(store_file(dir.path(), 19).exists(), "maxed store rolled");
}

#[test]
fn log_appends_and_reads_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small(32)).unwrap();
    assert_eq!(log.append(WRITE).unwrap(), 0);
    let record = log.read(0).unwrap();
    assert_eq!((record.offset, record.value.as_ref()), (0, WRITE));
}

#[test]
fn log_read_past_the_end_is_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small(32)).unwrap();
    log.append(WRITE).unwrap();
    match log.read(1) {
        Err(Error::OffsetOutOfRange { offset: 1, lowest: 0, next: 1 }) => {}
        other => panic!("expected out of range, got {other:?}"),
    }
    assert_eq!(log.read(1).unwrap_err().to_string(), "offset out of range: 1 (the log holds 0..1)");
}

#[test]
fn log_reopens_with_its_existing_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small(32)).unwrap();
    for _ in 0..3 {
        log.append(WRITE).unwrap();
    }
    assert_eq!((log.lowest_offset(), log.highest_offset()), (0, Some(2)));
    log.close().unwrap();

    let log = Log::open(dir.path(), small(32)).unwrap();
    assert!(log.recovery().clean_shutdown);
    assert_eq!((log.lowest_offset(), log.highest_offset()), (0, Some(2)));
    assert_eq!(log.append(WRITE).unwrap(), 3);
}

#[test]
fn log_reader_streams_every_frame() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small(32)).unwrap();
    assert_eq!(log.append(WRITE).unwrap(), 0);
    let mut reader = log.reader().unwrap();
    assert_eq!(reader.first_offset(), 0);
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).unwrap();
    assert_eq!(bytes.len() as u64, WIDTH);
    assert_eq!(&bytes[8..], WRITE);
}

#[test]
fn log_truncate_before_removes_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small(32)).unwrap();
    for _ in 0..3 {
        log.append(WRITE).unwrap();
    }
    // One record per segment: three segments, the last one active.
    log.flush().unwrap();
    let segments = log.segments();
    let bounds: Vec<(u64, u64)> = segments.iter().map(|s| (s.base_offset, s.next_offset)).collect();
    assert_eq!(bounds, [(0, 1), (1, 2), (2, 3)]);
    assert_eq!(segments.iter().map(|s| s.bytes).sum::<u64>(), log.size_bytes());
    log.truncate_before(1).unwrap();
    assert!(matches!(log.read(0), Err(Error::OffsetOutOfRange { offset: 0, lowest: 1, .. })));
    assert_eq!(log.read(1).unwrap().value, WRITE);
    assert_eq!(log.lowest_offset(), 1);
    assert_eq!(log.segments()[0].base_offset, 1);
}

#[test]
fn empty_log_has_no_highest_offset() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), Config::default()).unwrap();
    assert_eq!((log.lowest_offset(), log.next_offset(), log.highest_offset()), (0, 0, None));
    log.append(WRITE).unwrap();
    assert_eq!(log.highest_offset(), Some(0));
}

#[test]
fn a_closed_log_refuses_writes_and_frees_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), Config::default()).unwrap();
    log.append(WRITE).unwrap();
    log.close().unwrap();
    assert!(matches!(log.append(WRITE), Err(Error::Failed(_))));
    assert_eq!(log.read(0).unwrap().value, WRITE);
    let reopened = Log::open(dir.path(), Config::default()).unwrap();
    assert!(reopened.recovery().clean_shutdown);
    assert_eq!(reopened.append(WRITE).unwrap(), 1);
}
