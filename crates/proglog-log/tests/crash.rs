//! kill -9 of a real process: a child appends and syncs, printing each offset it
//! has been told is durable; the parent kills it at an arbitrary moment, reopens
//! the log, and checks that every acknowledged record is there, intact, and that
//! appends continue densely. Several crash/restart cycles run on the same log.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use proglog_log::{Config, Log};

const CHILD_DIR_ENV: &str = "PROGLOG_CRASH_CHILD_DIR";

/// The value at `offset`: its own offset, repeated to a length that varies.
fn value(offset: u64) -> Vec<u8> {
    let len = 1 + (offset.wrapping_mul(2_654_435_761) % 700) as usize;
    offset.to_le_bytes().iter().copied().cycle().take(len).collect()
}

/// Small segments, so crashes also land around rolls.
fn config() -> Config {
    Config { max_store_bytes: 64 << 10, write_buffer_bytes: 4 << 10, ..Config::default() }
}

/// Run by the parent in a child process (ignored in normal runs).
#[test]
#[ignore = "child process of kill_9_loses_no_acknowledged_record"]
fn crash_child() {
    let dir = std::env::var(CHILD_DIR_ENV).expect("child needs its directory");
    let log = Log::open(&dir, config()).expect("open");
    let mut stdout = std::io::stdout().lock();
    for round in 0u64.. {
        let next = log.next_offset();
        if round % 3 == 0 {
            for offset in next..next + 1 + round % 5 {
                assert_eq!(log.append(&value(offset)).expect("append"), offset);
            }
        } else {
            let values: Vec<_> = (next..next + 1 + round % 17).map(value).collect();
            log.append_batch(&values).expect("append batch");
        }
        log.sync().expect("sync");
        writeln!(stdout, "{}", log.next_offset()).expect("stdout");
        stdout.flush().expect("stdout");
    }
}

fn run_child_until_acked(dir: &Path, at_least: u64) -> u64 {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--ignored", "--nocapture", "--test-threads", "1"])
        .env(CHILD_DIR_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = 0;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        // libtest prints its own lines ("running 1 test", ...) too.
        if let Ok(next) = line.trim().parse::<u64>() {
            acked = next;
            if acked >= at_least {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(acked >= at_least, "child stopped early at {acked}");
    acked
}

#[test]
fn kill_9_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked = 0;
    for cycle in 1..=4 {
        acked = run_child_until_acked(dir.path(), acked + 500 * cycle);
        let log = Log::open(dir.path(), config()).unwrap();
        assert!(!log.recovery().clean_shutdown);
        let next = log.next_offset();
        assert!(next >= acked, "cycle {cycle}: acknowledged {acked} but only {next} survived");
        let mut expected = 0;
        for record in log.iter(0) {
            let record = record.unwrap();
            assert_eq!(record.offset, expected);
            assert_eq!(record.value, value(expected), "offset {expected}");
            expected += 1;
        }
        assert_eq!(expected, next);
        assert_eq!(log.append(&value(next)).unwrap(), next, "appends continue densely");
        log.close().unwrap();
        acked = next + 1;
    }
}
