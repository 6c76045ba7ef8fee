//! `proglog-agent`: composes the storage, the gRPC server (and, as they land, the
//! HTTP API, Raft replication and gossip discovery) into one node, from one
//! [`AgentConfig`], with one shutdown path ([`Agent::shutdown`]).
//!
//! The binary (`bins/proglog-agent`) only parses flags and the TOML file into an
//! `AgentConfig`, builds the log drain and waits for a signal.
//!
//! ```no_run
//! use proglog_agent::{Agent, AgentConfig, ConfigLayer};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = AgentConfig::load(ConfigLayer::default())?; // defaults: single node on loopback
//! let agent = Agent::start(config, slog::Logger::root(slog::Discard, slog::o!())).await?;
//! println!("serving on {}", agent.rpc_addr());
//! agent.shutdown().await?;
//! # Ok(())
//! # }
//! ```

mod agent;
mod config;
mod http;
mod metrics;

pub use crate::agent::{Agent, AgentError, SHUTDOWN_GRACE};
pub use crate::config::{
    AgentConfig, ConfigError, ConfigLayer, FsyncPolicy, HumanDuration, LogFormat, LogLevel,
};
