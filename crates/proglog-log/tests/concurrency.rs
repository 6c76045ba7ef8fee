//! One appender, many readers; many appenders sharing fsyncs.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use proglog_log::{Config, Error, Log};

/// A value that names its own offset and the generation that wrote it.
fn value(offset: u64, generation: u64) -> Vec<u8> {
    let mut value = offset.to_le_bytes().to_vec();
    value.extend_from_slice(&generation.to_le_bytes());
    value.resize(16 + (offset % 64) as usize, b'x');
    value
}

fn offset_of(value: &[u8]) -> u64 {
    u64::from_le_bytes(value[..8].try_into().unwrap())
}

fn small_segments() -> Config {
    Config { max_store_bytes: 4 << 10, write_buffer_bytes: 1 << 10, ..Config::default() }
}

#[test]
fn concurrent_appenders_get_unique_dense_offsets_and_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open(dir.path(), small_segments()).unwrap());
    let (threads, per_thread) = (8, 150);
    let start = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (log, start) = (Arc::clone(&log), Arc::clone(&start));
            thread::spawn(move || {
                start.wait();
                (0..per_thread)
                    .map(|_| {
                        let offset = log.append(b"payload").unwrap();
                        log.sync().unwrap();
                        offset
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut offsets: Vec<u64> = handles.into_iter().flat_map(|handle| handle.join().unwrap()).collect();
    offsets.sort_unstable();
    let total = (threads * per_thread) as u64;
    assert_eq!(offsets, (0..total).collect::<Vec<_>>());
    let syncs = log.sync_count();
    assert!(syncs >= 1 && syncs < total, "{syncs} fsyncs for {total} acknowledged appends");
}

#[test]
fn readers_never_see_a_partial_or_foreign_record_while_the_log_changes() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open(dir.path(), small_segments()).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|reader| {
            let (log, stop) = (Arc::clone(&log), Arc::clone(&stop));
            thread::spawn(move || {
                let mut seen = 0u64;
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ reader;
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let next = log.next_offset();
                    let offset = if next == 0 { 0 } else { x % next };
                    match log.read(offset) {
                        Ok(record) => {
                            assert_eq!(record.offset, offset);
                            assert_eq!(offset_of(&record.value), offset);
                            seen += 1;
                        }
                        // Truncated or retained away meanwhile.
                        Err(Error::OffsetOutOfRange { .. }) => {}
                        Err(error) => panic!("reader {reader}: {error}"),
                    }
                    if let Ok(batch) = log.read_batch(offset, 512) {
                        for (i, record) in batch.iter().enumerate() {
                            assert_eq!(record.offset, offset + i as u64);
                            assert_eq!(offset_of(&record.value), record.offset);
                        }
                    }
                }
                seen
            })
        })
        .collect();

    for generation in 0..4u64 {
        for _ in 0..1500 {
            let offset = log.next_offset();
            assert_eq!(log.append(&value(offset, generation)).unwrap(), offset);
        }
        let values: Vec<_> = (0..64).map(|i| value(log.next_offset() + i, generation)).collect();
        log.append_batch(&values).unwrap();
        // Cut a suffix (readers of it must get OutOfRange, never other bytes), and
        // retain only the newer half.
        let next = log.next_offset();
        log.truncate_from(next - 700).unwrap();
        log.truncate_before(next / 2).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        assert!(reader.join().unwrap() > 0, "each reader read something");
    }
}

#[test]
fn a_snapshot_reader_fails_rather_than_mix_histories() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_segments()).unwrap();
    for offset in 0..100 {
        log.append(&value(offset, 0)).unwrap();
    }
    let mut reader = log.reader().unwrap();
    let mut first = [0u8; 64];
    reader.read_exact(&mut first).unwrap();
    log.truncate_from(50).unwrap();
    let mut rest = Vec::new();
    assert!(reader.read_to_end(&mut rest).is_err());

    // A reader made after the truncation sees exactly the new history.
    let mut bytes = Vec::new();
    log.reader().unwrap().read_to_end(&mut bytes).unwrap();
    let expected: usize = (0..50).map(|offset| 8 + value(offset, 0).len()).sum();
    assert_eq!(bytes.len(), expected);
}
