//! The single-node log through the `CommitLog` abstraction the server uses.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::sync::Arc;

use bytes::Bytes;
use proglog_raft::{Append, CommitLog, Fsync, LocalLog, LogError};

fn open(fsync: Fsync) -> (tempfile::TempDir, Arc<LocalLog>) {
    let dir = tempfile::tempdir().unwrap();
    let log = proglog_log::Log::open(dir.path(), proglog_log::Config::default()).unwrap();
    (dir, Arc::new(LocalLog::new(log, fsync, "node-0", "127.0.0.1:8400").unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_record_is_readable_at_once() {
    let (_dir, log) = open(Fsync::Always);
    let mut writers = Vec::new();
    for writer in 0..4 {
        let log = Arc::clone(&log);
        writers.push(tokio::spawn(async move {
            for i in 0..200 {
                let value = Bytes::from(format!("{writer}-{i}"));
                let offset = log.append(Append::new(vec![value.clone()])).await.unwrap().await.unwrap();
                assert_eq!(log.read(offset).await.unwrap().value, value, "offset {offset}");
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    log.close().unwrap();
}

#[tokio::test]
async fn status_follows_the_commit_point() {
    let (_dir, log) = open(Fsync::Never);
    let empty = log.status();
    assert!(empty.is_leader && empty.is_ready());
    assert_eq!((empty.members, empty.commit_index, empty.highest_offset), (1, 0, None));
    assert_eq!(empty.leader.unwrap().rpc_addr, "127.0.0.1:8400");
    let first =
        log.append(Append::new(vec!["a".into(), "b".into(), "c".into()])).await.unwrap().await.unwrap();
    assert_eq!(first, 0);
    let status = log.status();
    assert_eq!((status.commit_index, status.applied_index, status.highest_offset), (3, 3, Some(2)));
    assert_eq!(status.bytes, 3 * (8 + 1), "three frames of one byte");
    log.close().unwrap();
    assert!(matches!(log.append(Append::new(vec!["late".into()])).await, Err(LogError::Unavailable(_))));
}
