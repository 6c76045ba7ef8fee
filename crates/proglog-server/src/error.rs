//! Errors of the log abstraction and of starting a server.

use std::path::PathBuf;

/// What a [`CommitLog`](crate::CommitLog) operation can fail with. Each variant maps
/// to one gRPC status code (see `status.rs`, the only place that builds a `Status`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The offset is not (or no longer) in the log. → `OUT_OF_RANGE`
    #[error("offset out of range: {offset}")]
    OutOfRange {
        /// The offset asked for.
        offset: u64,
    },
    /// The request is malformed. → `INVALID_ARGUMENT`
    #[error("{0}")]
    InvalidArgument(String),
    /// The log cannot serve now (no leader, shutting down). → `UNAVAILABLE`
    #[error("{0}")]
    Unavailable(String),
    /// Stored data is damaged or missing (a checksum mismatch, a missing segment).
    /// → `DATA_LOSS`
    #[error("{0}")]
    DataLoss(String),
    /// The log failed (an I/O error, a stopped log). → `INTERNAL`
    #[error("{0}")]
    Internal(String),
}

impl From<proglog_log::Error> for LogError {
    fn from(error: proglog_log::Error) -> Self {
        match error {
            proglog_log::Error::OffsetOutOfRange { offset, .. } => Self::OutOfRange { offset },
            proglog_log::Error::RecordTooLarge { .. } => Self::InvalidArgument(error.to_string()),
            proglog_log::Error::Corrupt { .. } | proglog_log::Error::MissingSegment { .. } => {
                Self::DataLoss(error.to_string())
            }
            other => Self::Internal(other.to_string()),
        }
    }
}

/// Why a server could not start. Nothing is served when this is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A TLS or ACL file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A TLS file holds no usable PEM certificate or key.
    #[error("{}: {reason}", path.display())]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS files do not make a usable configuration (a key that does not
    /// match its certificate).
    #[error("tls: {0}")]
    Tls(String),
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
