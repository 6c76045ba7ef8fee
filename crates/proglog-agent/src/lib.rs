//! `proglog-agent`: composes the replicated log, its transport, the gRPC server,
//! the HTTP API, metrics and gossip discovery into one node, from one
//! [`AgentConfig`], with one shutdown path ([`Agent::shutdown`]). Agents find each
//! other by gossip (`--start-join-addrs`), and the Raft leader turns membership
//! into configuration changes.
//!
//! The binary (`bins/proglog-agent`) only parses flags and the TOML file into an
//! `AgentConfig`, builds the log drain and waits for a signal.
//!
//! ```no_run
//! use proglog_agent::{Agent, AgentConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = AgentConfig::default(); // a single node on loopback
//! // or from flags and a TOML file: AgentConfig::load(std::env::args_os())?
//! let agent = Agent::start(config, slog::Logger::root(slog::Discard, slog::o!())).await?;
//! println!("serving on {}", agent.rpc_addr());
//! agent.shutdown().await?;
//! # Ok(())
//! # }
//! ```

mod agent;
mod config;
mod http;
mod membership;
mod metrics;
mod traces;

pub use crate::agent::{ABORT_GRACE, Agent, AgentError, SHUTDOWN_GRACE};
pub use crate::config::{AgentConfig, ConfigError, HostPort, LoadError, LogFormat, LogLevel, OptionalAddr};
pub use crate::traces::Collector;
