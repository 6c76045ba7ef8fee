//! Why a server could not start.

use std::path::PathBuf;

/// Why a server could not start. Nothing is served when this is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// An ACL file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS files do not make a usable configuration (a missing or
    /// unreadable file, no PEM block, a key that does not match its
    /// certificate); the error names the file.
    #[error("tls: {0}")]
    Tls(#[from] proglog_tls::Error),
    /// The casbin model or policy was rejected.
    #[error("cannot load ACL (model {}, policy {}): {reason}", model.display(), policy.display())]
    Acl {
        /// The model file.
        model: PathBuf,
        /// The policy file.
        policy: PathBuf,
        /// casbin's error.
        reason: String,
    },
    /// A configuration contradiction.
    #[error("invalid server config: {0}")]
    Config(String),
    /// Server reflection could not be built from the descriptor set.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}
