//! `proglog-raft`: the log that the proglog server serves.
//!
//! - [`CommitLog`]: what the server needs from "the log" — queue an append and
//!   await its commit, read, read a batch, watch the commit point, list the
//!   servers, report a [`LogStatus`]. The server, the HTTP API and the metrics
//!   see the log only through it.
//! - [`RaftLog`]: the log replicated with tikv's raft-rs — what every agent runs
//!   (a single node is a one-member cluster). Appends go to the leader (a follower
//!   forwards them), reads are served from each node's copy of the committed
//!   records, and every record has the same offset on every node. [`RaftLog::join`]
//!   and [`RaftLog::leave`] change the membership. It talks to its peers through a
//!   [`Transport`] (the agent's is gRPC, in `proglog-server`; [`ChannelNetwork`]
//!   connects nodes of one process) which delivers to the node's [`Mailbox`].
//! - [`Logs`]: the logs of one node — the default log and the named logs
//!   (SPEC §11), each its own Raft group, the catalog replicated in the default
//!   log's; a [`Network`] carries every group's traffic, each message tagged
//!   with its [`GroupId`].
//! - [`LocalLog`]: a single node's log without Raft, a [`proglog_log::Log`] behind
//!   one writer thread that group-commits concurrent appends (the benchmarks'
//!   baseline).
//! - [`Settings`]: what an operator chooses (fsync, record and segment sizes,
//!   Raft timing), each with its default and its rule ([`Settings::validate`]);
//!   with the `clap` feature they derive `clap::Args`, so a binary's flags come
//!   from the same declarations.
//! - [`LogError`]: one error type, including [`LogError::NotLeader`] with the
//!   leader a follower knows, so that forwarding and clients never parse text.
//!
//! Guarantees of [`RaftLog`]: nothing is acknowledged before it is committed on a
//! quorum and durable there per the fsync policy; an acknowledged record is
//! readable at once on the node that acknowledged it; a caller learns its
//! append's offset or an error, and nothing is ever appended twice on its behalf.
//!
//! Integrity: every node has a member id minted with its data dir and belongs to
//! one cluster, whose [`ClusterId`] is minted at bootstrap; a transport hands
//! each peer message over with the caller's [`PeerId`], and the node checks it —
//! who sent it, to whom, for which cluster, and whether raft-rs may take it in
//! this node's state — before raft-rs sees it. What fails is dropped and counted
//! by [`Reason`] ([`RaftLog::rejections`]): no peer message can stop a node. A
//! node that stops anyway (a failed disk) says so: [`CommitLog::failure`].
//! One thread per node owns the Raft state; nothing here blocks an async task on
//! disk or network, and this crate knows nothing of gRPC serving, TLS or ACLs (it
//! sits below `proglog-server`).
//!
//! ```
//! use proglog_raft::{Append, CommitLog, Fsync, LocalLog};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let log = proglog_log::Log::open(dir.path(), proglog_log::Config::default())?;
//! let log = LocalLog::new(log, Fsync::Always, "node-0", "127.0.0.1:8400")?;
//! let offset = log.append(Append::one("hello")).await?.await?; // committed: durable
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
mod settings;

pub use crate::commit_log::{
    Append, Catalog, CommitLog, LogInfo, LogStatus, PendingAppend, Record, ServerInfo, SingleLog,
    check_record_size,
};
pub use crate::error::{Leader, LogError, Refusal};
pub use crate::local::{BACKGROUND_SYNC_INTERVAL, Fsync, LocalLog};
pub use crate::replicated::{
    Budgets, ChannelNetwork, ClusterId, FetchSink, GroupId, GroupStart, LogSpec, Logs, MAX_RECORD_BYTES,
    Mailbox, Member, Network, PeerId, PendingCommand, RaftConfig, RaftLog, RaftMetrics, Reason, Rejections,
    StatusWatch, Transport, decode_message, encode_message, node_id,
};
pub use crate::replicated::{
    MAX_GROUP_BYTES, MAX_GROUPS, MAX_LOG_NAME_BYTES, MAX_LOGS, check_group, check_log_name,
};
pub use crate::settings::{InvalidSetting, Settings};
/// raft-rs's message type, which [`Transport`]s carry.
pub use raft::eraftpb::Message as RaftMessage;
/// The kind of a [`RaftMessage`].
pub use raft::eraftpb::MessageType as RaftMessageType;
