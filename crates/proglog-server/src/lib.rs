//! `proglog-server`: the `log.v1` gRPC service (SPEC §1–2).
//!
//! - [`serve`]: any [`proglog_raft::CommitLog`] (the single-node log, the
//!   replicated log) as the `log.v1.Log` service, gRPC health and server reflection over
//!   rustls (built by `proglog-tls`; mutual TLS when client CAs are given), graceful
//!   shutdown. [`ExtraService`]s the caller adds (the agent's internal Raft service)
//!   share the port and the admission layer, each with its own ACL action and
//!   message limit.
//! - [`Listener`]: how both the gRPC port and the agent's HTTP API are served —
//!   within [`Limits`] on connections, calls, time and request bytes, so that no
//!   client can make the process grow without bound; [`Peer`] is the connection a
//!   request came on (its subject).
//! - [`Authorizer`]: every call is checked from its headers, before its body is
//!   read, as (subject = client certificate CN, object `*`, action
//!   `produce`/`consume`); [`Acl`] enforces a casbin model + policy, [`AllowAll`]
//!   allows everything. GetServers, health and reflection are not ACL-checked (TLS
//!   still applies); an extra service's calls are checked with its own action.
//!
//! - [`Settings`]: what an operator chooses for serving (ACL and TLS files,
//!   connection and call bounds), with defaults and rules; `clap::Args` with the
//!   `clap` feature.
//!
//! This crate is the only place that builds a `tonic::Status`. It does not parse
//! flags or config files, install a crypto provider or a log drain: the agent does.
//!
//! ```no_run
//! use std::sync::Arc;
//! use proglog_raft::{Fsync, LocalLog};
//! use proglog_server::{AllowAll, ServerConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let log = proglog_log::Log::open("./data", proglog_log::Config::default())?;
//! let log = Arc::new(LocalLog::new(log, Fsync::Always, "node-0", "127.0.0.1:8400")?);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8400").await?;
//! let shutdown = async { let _ = tokio::signal::ctrl_c().await; };
//! proglog_server::serve(listener, log.clone(), Arc::new(AllowAll), ServerConfig::default(), shutdown).await?;
//! log.close()?;
//! # Ok(())
//! # }
//! ```

mod admit;
mod auth;
mod error;
mod listener;
mod observe;
mod peer;
mod server;
mod service;
mod settings;
mod status;
mod tls;

pub use crate::auth::{
    ANONYMOUS, Acl, AllowAll, Authorizer, OBJECT_WILDCARD, action, authorizer_from_files, names_of_chain,
    object_of, subject_of_chain,
};
pub use crate::error::ServerError;
pub use crate::listener::{BodyError, Limits, Listener, Peer, Serves, TrackedBody};
pub use crate::observe::{RPC_DURATION_SECONDS, RPC_REQUESTS_TOTAL, RpcObserver};
pub use crate::peer::{
    FETCH_CHUNK_BYTES, FORWARD_QUEUE, MAX_MESSAGE_BYTES, PEER_QUEUE_BYTES, PeerTls, PeerTransport,
};
pub use crate::server::{ExtraService, ServerConfig, serve, serve_logs};
pub use crate::service::{LOG_METADATA, PRODUCE_STREAM_WINDOW, RecordStream};
pub use crate::settings::{Settings, check_readable};
pub use crate::tls::TlsFiles;
