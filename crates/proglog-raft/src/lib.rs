//! `proglog-raft`: the log that the proglog server serves.
//!
//! - [`CommitLog`]: what the server needs from "the log" — queue an append and
//!   await its commit, read, read a batch, watch the commit point, list the
//!   servers, report a [`LogStatus`]. The server, the HTTP API and the metrics
//!   see the log only through it.
//! - [`LocalLog`]: a single node's log, a [`proglog_log::Log`] behind one writer
//!   thread that group-commits concurrent appends.
//! - [`LogError`]: one error type, including [`LogError::NotLeader`] with the
//!   leader a follower knows, so that forwarding and clients never parse text.
//!
//! The Raft-replicated log (tikv raft-rs over `proglog-log`) joins these here
//! (issue #8): it implements [`CommitLog`], so the server serves it unchanged.
//! This crate knows nothing of gRPC serving, TLS or ACLs (it sits below
//! `proglog-server`), and does not block async tasks on disk.
//!
//! ```
//! use proglog_raft::{CommitLog, Fsync, LocalLog};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let log = proglog_log::Log::open(dir.path(), proglog_log::Config::default())?;
//! let log = LocalLog::new(log, Fsync::Always, "node-0", "127.0.0.1:8400")?;
//! let offset = log.append(vec!["hello".into()]).await?.await?; // committed: durable
//! assert_eq!(log.read(offset).await?.value, "hello");
//! assert!(log.status().is_leader);
//! log.close()?;
//! # Ok(())
//! # }
//! ```

mod commit_log;
mod error;
mod local;
mod records;
mod replicated;

pub use crate::commit_log::{CommitLog, LogStatus, PendingAppend};
pub use crate::error::{Leader, LogError};
pub use crate::local::{BACKGROUND_SYNC_INTERVAL, Fsync, LocalLog};
pub use crate::replicated::{
    ChannelNetwork, FetchSink, Mailbox, Member, RaftConfig, RaftLog, Transport, decode_message,
    encode_message, node_id,
};
/// raft-rs's message type, which [`Transport`]s carry.
pub use raft::eraftpb::Message as RaftMessage;
/// The kind of a [`RaftMessage`].
pub use raft::eraftpb::MessageType as RaftMessageType;
