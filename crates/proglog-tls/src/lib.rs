//! `proglog-tls`: every TLS configuration proglog builds, in one place.
//!
//! - PEM loading: [`load_certificates`], [`load_private_key`] and
//!   [`load_roots`] (several CA files merged into one root store), with one
//!   [`Error`] that names the file and the reason (missing, no PEM block of the
//!   expected kind, malformed, bad certificate, key not matching its certificate).
//! - [`server_config`]: a rustls `ServerConfig` presenting an [`Identity`];
//!   mutual TLS when client roots are given, trusting every CA of every file
//!   (the agent's clients' CA and its peers' CA may differ).
//! - [`client_config`]: a rustls `ClientConfig` trusting the given CA files,
//!   presenting an [`Identity`] for mutual TLS if given.
//! - [`Connector`]: dials a tonic `Channel` over TCP (`TCP_NODELAY`) and,
//!   for TLS, `tokio_rustls` with a `ClientConfig` and a server name (tonic's
//!   own `ClientTlsConfig` cannot take a rustls config). Plaintext dials through
//!   it too, so the CLI and the agent-to-agent transport have one code path.
//!
//! Invariants:
//! - Every config is built with the ring provider passed explicitly
//!   (`builder_with_provider`); nothing here reads or installs a process-wide
//!   default provider, and aws-lc is never compiled in.
//! - A list of trust roots is never silently empty: a server asked for client
//!   authentication, or a client, with no CA file is [`Error::NoRoots`].
//! - No file is cached: each call reads its files afresh, and an error leaves
//!   nothing behind.
//!
//! What it does not do: mint certificates (`proglog-certs` does, for development
//! and tests), decide which files to use (the agent's config does), or extract
//! the subject from a peer certificate (the server's authorizer does).
//!
//! ```no_run
//! use std::path::PathBuf;
//! use proglog_tls::{Connector, Identity};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // A server that requires client certificates of either of two CAs.
//! let server = proglog_tls::server_config(
//!     &Identity::new("certs/server.pem", "certs/server-key.pem"),
//!     Some(&[PathBuf::from("certs/ca.pem"), PathBuf::from("certs/peer-ca.pem")]),
//!     &[b"h2"],
//! )?;
//! # let _ = server;
//!
//! // A gRPC channel over mutual TLS.
//! let client = proglog_tls::client_config(
//!     &[PathBuf::from("certs/ca.pem")],
//!     Some(&Identity::new("certs/root-client.pem", "certs/root-client-key.pem")),
//!     &[b"h2"],
//! )?;
//! let connector = Connector::tls(client, "localhost")?;
//! let endpoint = connector.endpoint("127.0.0.1:8400")?.connect_timeout(std::time::Duration::from_secs(5));
//! let channel = connector.connect(&endpoint).await?;
//! # let _ = channel;
//! # Ok(())
//! # }
//! ```

mod config;
mod dial;
mod error;
mod pem;

pub use crate::config::{Identity, client_config, server_config, server_config_allowing_anonymous};
pub use crate::dial::{Connector, Stream};
pub use crate::error::{Error, Result};
pub use crate::pem::{load_certificates, load_private_key, load_roots};
