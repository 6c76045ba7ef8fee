//! The corruption matrix: torn tails at every byte, damaged indexes, flipped bits,
//! stray and missing files. A crash leaves the longest valid prefix; damage that
//! no crash explains is a `Corrupt` error naming the file, never a panic and never
//! a damaged record served.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use proglog_log::{Config, Error, Log};

const HEADER: u64 = 16;
/// Every value is 10 bytes, so every frame is 18 bytes.
const FRAME: u64 = 18;

fn value(offset: u64) -> Vec<u8> {
    format!("value-{offset:04}").into_bytes()
}

/// Four records per segment.
fn config() -> Config {
    Config { max_store_bytes: HEADER + 4 * FRAME, ..Config::default() }
}

fn store(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.store"))
}

fn index(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.index"))
}

/// Ten records: sealed segments at 0 and 4, the active one at 8 (records 8, 9).
fn build(dir: &Path, clean: bool) {
    let log = Log::open(dir, config()).unwrap();
    for offset in 0..10 {
        assert_eq!(log.append(&value(offset)).unwrap(), offset);
    }
    if clean { log.close().unwrap() } else { drop(log) }
}

fn copy_dir(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.path().join(entry.file_name())).unwrap();
    }
    to
}

fn set_len(path: &Path, len: u64) {
    OpenOptions::new().write(true).open(path).unwrap().set_len(len).unwrap();
}

fn flip_bit(path: &Path, position: u64, bit: u8) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[position as usize] ^= 1 << bit;
    std::fs::write(path, bytes).unwrap();
}

/// The log holds exactly `lowest..next` with the right values, and appends go on
/// at `next`.
fn assert_holds(log: &Log, next: u64) {
    assert_eq!(log.next_offset(), next);
    for offset in log.lowest_offset()..next {
        assert_eq!(log.read(offset).unwrap().value, value(offset), "offset {offset}");
    }
    assert!(matches!(log.read(next), Err(Error::OffsetOutOfRange { .. })));
    assert_eq!(log.append(&value(next)).unwrap(), next);
    assert_eq!(log.read(next).unwrap().value, value(next));
}

fn expect_corrupt(result: Result<Log, Error>, file: &Path) -> u64 {
    match result {
        Err(Error::Corrupt { path, position, .. }) => {
            assert_eq!(path, file);
            position
        }
        other => panic!("expected corruption in {}, got {other:?}", file.display()),
    }
}

#[test]
fn a_cut_at_any_byte_of_the_tail_keeps_the_longest_valid_prefix() {
    for clean in [false, true] {
        let original = tempfile::tempdir().unwrap();
        build(original.path(), clean);
        let full = HEADER + 2 * FRAME;
        for cut in 0..=full {
            let dir = copy_dir(original.path());
            set_len(&store(dir.path(), 8), cut);
            let log = Log::open(dir.path(), config()).unwrap();
            let whole_frames = cut.saturating_sub(HEADER) / FRAME;
            assert_holds(&log, 8 + whole_frames);
            let valid_end = HEADER + whole_frames * FRAME;
            let expected_cut = if cut < HEADER { cut.saturating_sub(HEADER) } else { cut - valid_end };
            let recovery = log.recovery();
            assert_eq!(recovery.truncated_bytes, expected_cut, "cut at {cut} (clean: {clean})");
            if expected_cut > 0 {
                assert_eq!(recovery.truncated_store.as_deref(), Some(store(dir.path(), 8).as_path()));
            }
            // Only a clean shutdown's index vouches for records: losing them is
            // damage, reported with the offsets; after a crash it is a torn tail.
            let lost = (clean && whole_frames < 2).then(|| 8 + whole_frames..10);
            assert_eq!(recovery.lost_offsets, lost, "cut at {cut} (clean: {clean})");
        }
    }
}

#[test]
fn the_pre_grown_zero_filled_index_of_a_crashed_log_opens_correctly() {
    // Our index is never pre-grown, but the book's is, and a crash leaves it
    // zero-filled to its full size: that must not shift or reuse offsets.
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), false);
    set_len(&index(dir.path(), 8), Config::default().max_index_bytes);
    let log = Log::open(dir.path(), config()).unwrap();
    assert!(!log.recovery().clean_shutdown);
    assert_holds(&log, 10);
}

#[test]
fn a_zero_filled_index_after_a_clean_shutdown_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), true);
    std::fs::write(index(dir.path(), 8), vec![0u8; 64]).unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(log.recovery().rebuilt_indexes, vec![index(dir.path(), 8)]);
    assert_holds(&log, 10);
}

#[test]
fn an_index_entry_past_the_store_end_is_rebuilt() {
    for clean in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path(), clean);
        let mut entries = std::fs::read(index(dir.path(), 4)).unwrap();
        entries[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(index(dir.path(), 4), entries).unwrap();
        let log = Log::open(dir.path(), config()).unwrap();
        assert!(log.recovery().rebuilt_indexes.contains(&index(dir.path(), 4)));
        assert_holds(&log, 10);
    }
}

#[test]
fn a_sealed_index_missing_entries_is_rebuilt_from_its_store() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), true);
    set_len(&index(dir.path(), 0), 3 * 8);
    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(log.recovery().rebuilt_indexes, vec![index(dir.path(), 0)]);
    assert_holds(&log, 10);
}

#[test]
fn missing_index_files_are_rebuilt() {
    for clean in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path(), clean);
        std::fs::remove_file(index(dir.path(), 4)).unwrap();
        std::fs::remove_file(index(dir.path(), 8)).unwrap();
        let log = Log::open(dir.path(), config()).unwrap();
        assert!(log.recovery().rebuilt_indexes.contains(&index(dir.path(), 4)));
        assert_holds(&log, 10);
    }
}

#[test]
fn a_store_longer_than_its_index_loses_only_the_garbage_in_the_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), true);
    let mut bytes = std::fs::read(store(dir.path(), 8)).unwrap();
    bytes.extend_from_slice(b"garbage!");
    std::fs::write(store(dir.path(), 8), bytes).unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(log.recovery().truncated_bytes, 8);
    assert_holds(&log, 10);
}

#[test]
fn a_sealed_store_longer_than_its_records_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), true);
    let path = store(dir.path(), 4);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(b"garbage!");
    std::fs::write(&path, bytes).unwrap();
    let position = expect_corrupt(Log::open(dir.path(), config()), &path);
    assert_eq!(position, HEADER + 4 * FRAME);
}

#[test]
fn flipped_bits_in_the_last_record_of_a_crashed_log_cut_it_off() {
    // Length field, checksum field and payload of record 9 (the last).
    for position in [HEADER + FRAME, HEADER + FRAME + 5, HEADER + FRAME + 12] {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path(), false);
        flip_bit(&store(dir.path(), 8), position, 3);
        let log = Log::open(dir.path(), config()).unwrap();
        assert_eq!(log.recovery().truncated_bytes, FRAME, "flip at {position}");
        assert_holds(&log, 9);
    }
}

#[test]
fn flipped_bits_inside_a_sealed_segment_are_never_served() {
    // Record 5 is in the middle of the sealed segment at 4: the cheap open check
    // does not see it, but reading it fails with the file and position.
    for (position, bit) in [(HEADER + FRAME, 6u8), (HEADER + FRAME + 6, 0), (HEADER + FRAME + 9, 1)] {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path(), true);
        let path = store(dir.path(), 4);
        flip_bit(&path, position, bit);
        let log = Log::open(dir.path(), config()).unwrap();
        assert_eq!(log.read(4).unwrap().value, value(4));
        match log.read(5) {
            Err(Error::Corrupt { path: file, position: at, .. }) => {
                assert_eq!((file, at), (path.clone(), HEADER + FRAME));
            }
            other => panic!("expected corruption, got {other:?}"),
        }
        // Iteration serves an intact prefix, then stops with the error.
        let served: Vec<_> = log.iter(0).collect();
        let intact = served.iter().take_while(|record| record.is_ok()).count();
        assert_eq!(intact, 5, "{served:?}");
        assert_eq!(served.len(), intact + 1);
        assert!(matches!(served[intact], Err(Error::Corrupt { .. })));
        let batch = log.read_batch(4, 1 << 20).unwrap();
        assert_eq!(batch.len(), 1, "a batch delivers the records before the damage");
        assert!(log.read_batch(5, 1 << 20).is_err(), "a batch starting at record 5 fails");
        assert_eq!(log.read(6).unwrap().value, value(6), "other records stay readable");
    }
}

#[test]
fn a_flipped_bit_in_the_last_record_of_a_sealed_segment_fails_open() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), true);
    let path = store(dir.path(), 4);
    flip_bit(&path, HEADER + 3 * FRAME + 10, 2);
    let position = expect_corrupt(Log::open(dir.path(), config()), &path);
    assert_eq!(position, HEADER + 3 * FRAME);
}

#[test]
fn a_bad_store_header_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), true);
    flip_bit(&store(dir.path(), 0), 0, 0);
    let position = expect_corrupt(Log::open(dir.path(), config()), &store(dir.path(), 0));
    assert_eq!(position, 0);
}

#[test]
fn a_missing_middle_segment_is_named_and_nothing_is_deleted() {
    for clean in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path(), clean);
        std::fs::remove_file(store(dir.path(), 4)).unwrap();
        for index_too in [false, true] {
            if index_too {
                let _ = std::fs::remove_file(index(dir.path(), 0)); // forces a scan of segment 0
            }
            match Log::open(dir.path(), config()) {
                Err(Error::MissingSegment { path, first, next }) => {
                    assert_eq!((path, first, next), (store(dir.path(), 4), 4, 8), "clean: {clean}");
                }
                other => panic!("expected the missing segment to be named, got {other:?}"),
            }
            assert!(index(dir.path(), 4).exists(), "recovery deleted a file of an unusable log");
        }
    }
}

#[test]
fn an_orphaned_index_below_or_above_the_stores_is_swept_up() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), true);
    std::fs::remove_file(store(dir.path(), 0)).unwrap(); // retention, interrupted
    std::fs::copy(index(dir.path(), 8), index(dir.path(), 12)).unwrap(); // a cut, interrupted
    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(log.recovery().removed_files, vec![index(dir.path(), 0), index(dir.path(), 12)]);
    assert_eq!(log.lowest_offset(), 4);
    assert_holds(&log, 10);
}

#[test]
fn stray_files_are_reported_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), true);
    let strays = [
        dir.path().join("00000000000000000008.store.tmp"),
        dir.path().join("8.store"),
        dir.path().join("notes.txt"),
    ];
    for stray in &strays {
        std::fs::write(stray, b"not a segment").unwrap();
    }
    std::fs::create_dir(dir.path().join("subdir")).unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    for stray in &strays {
        assert!(log.recovery().ignored_files.contains(stray));
        assert!(stray.exists());
    }
    assert_holds(&log, 10);
}

#[test]
fn a_crash_while_creating_a_segment_leaves_an_empty_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), false);
    // As if the process died right after creating the files of segment 10.
    std::fs::write(store(dir.path(), 10), [0u8; 7]).unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    assert_holds(&log, 10);
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _log = Log::open(dir.path(), config()).unwrap();
    assert!(matches!(Log::open(dir.path(), config()), Err(Error::Locked { .. })));
}

#[test]
fn bad_config_is_rejected_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("log");
    let config = Config { max_index_bytes: 7, ..Config::default() };
    match Log::open(&target, config) {
        Err(Error::InvalidConfig { key: "max-index-bytes", .. }) => {}
        other => panic!("expected invalid config, got {other:?}"),
    }
    assert!(!target.exists());
}

#[test]
fn an_oversized_record_is_rejected_and_nothing_is_appended() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), Config { max_record_bytes: 16, ..config() }).unwrap();
    log.append(b"small").unwrap();
    assert!(matches!(log.append(&[0u8; 17]), Err(Error::RecordTooLarge { bytes: 17, max: 16 })));
    let batch: [&[u8]; 2] = [b"fits", &[0u8; 17]];
    assert!(matches!(log.append_batch(&batch), Err(Error::RecordTooLarge { .. })));
    assert_eq!(log.next_offset(), 1);
    assert_eq!(log.append(b"next").unwrap(), 1);
}
