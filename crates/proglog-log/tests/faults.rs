//! Fault injection: a disk that fills up. Every write error stops the log
//! (`Error::Failed`) rather than guess what reached the disk, and reopening recovers
//! every record that was acknowledged before the failure.
//!
//! Needs a small filesystem: the test mounts a 256 KiB tmpfs, which needs root (as
//! CI runs). Elsewhere it says so and checks nothing.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

#[path = "../../../tests/support/root.rs"]
mod root;

use std::path::Path;
use std::process::Command;

use proglog_log::{Config, Error, Log};

struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(bytes: u64) -> Option<Self> {
        if !root::is_root() || !root::have("mount", "mount") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then_some(Self(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_disk_stops_the_log_and_loses_no_acknowledged_record() {
    let Some(fs) = Tmpfs::mount(256 << 10) else {
        return root::cannot_run("cannot mount a tmpfs here (needs root)");
    };
    let dir = fs.path().join("log");
    let config = Config { max_store_bytes: 32 << 10, max_index_bytes: 4 << 10, ..Config::default() };
    let log = Log::open(&dir, config.clone()).unwrap();
    let value = [7u8; 1000];
    let mut acknowledged = 0;
    let error = loop {
        match log.append_batch(&[value; 4]).and_then(|_| log.sync()) {
            Ok(()) => acknowledged = log.next_offset(),
            Err(error) => break error,
        }
        assert!(acknowledged < 1000, "the disk never filled up");
    };
    assert!(matches!(error, Error::Io { .. }), "first failure is the i/o error: {error}");
    assert!(matches!(log.append(&value), Err(Error::Failed(_))));
    assert!(matches!(log.sync(), Err(Error::Failed(_))));
    assert!(log.read(0).is_ok(), "reads still work");
    drop(log);

    // Free space as retention would (drop the oldest segment), and reopen.
    std::fs::remove_file(dir.join("00000000000000000000.store")).unwrap();
    std::fs::remove_file(dir.join("00000000000000000000.index")).unwrap();
    let log = Log::open(&dir, config).unwrap();
    assert!(log.next_offset() >= acknowledged);
    assert!(log.lowest_offset() > 0);
    for record in log.iter(log.lowest_offset()) {
        assert_eq!(record.unwrap().value.as_ref(), &value[..]);
    }
}
