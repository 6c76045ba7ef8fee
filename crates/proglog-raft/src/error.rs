//! The one error type of the log abstraction.

/// The leader of the cluster, as far as a node knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leader {
    /// Its node name.
    pub id: String,
    /// The address clients dial (its RPC address).
    pub rpc_addr: String,
}

/// What a [`CommitLog`](crate::CommitLog) operation can fail with. Each variant
/// has one gRPC status code (mapped by the server, the only place that builds a
/// status) and one HTTP status.
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
    /// This node does not lead, so it cannot append; `leader` is the one it
    /// knows, if any. → `UNAVAILABLE` (with the leader as error details)
    #[error("not the leader{}", leader.as_ref().map(|l| format!("; the leader is {} at {}", l.id, l.rpc_addr)).unwrap_or_else(|| ": no leader is known".to_owned()))]
    NotLeader {
        /// The leader, when known.
        leader: Option<Leader>,
    },
    /// Refused before anything was appended or changed, for a reason that
    /// passes: safe to try again (later, or on the leader). → `UNAVAILABLE`
    /// with a `google.rpc.ErrorInfo` naming `reason`, so that clients retry
    /// without parsing the message or fearing a duplicate.
    #[error("{message}")]
    Refused {
        /// Why.
        reason: Refusal,
        /// What happened, for people.
        message: String,
    },
    /// The log cannot serve now (shutting down, closed), or an append's outcome
    /// is unknown (its leader changed while it was in flight). → `UNAVAILABLE`
    #[error("{0}")]
    Unavailable(String),
    /// Stored data is damaged or missing (a checksum mismatch, a missing segment).
    /// → `DATA_LOSS`
    #[error("{0}")]
    DataLoss(String),
    /// The log failed (an I/O error, a stopped log). → `INTERNAL`
    #[error("{0}")]
    Internal(String),
    /// A bound was reached (consumer groups per log, …); nothing was changed.
    /// → `RESOURCE_EXHAUSTED`
    #[error("{0}")]
    ResourceExhausted(String),
    /// What the call would create exists already (a log). → `ALREADY_EXISTS`
    #[error("{0}")]
    AlreadyExists(String),
    /// What the call names does not exist (a log). → `NOT_FOUND`
    #[error("{0}")]
    NotFound(String),
    /// This log does not offer the operation (the single-node `LocalLog` keeps
    /// no replicated state). → `UNIMPLEMENTED`
    #[error("{0}")]
    Unimplemented(String),
    /// An idempotent append whose sequence skips ahead of the producer's next
    /// (or overlaps what it appended only in part); nothing was appended.
    /// → `FAILED_PRECONDITION` with `ErrorInfo` reason `OUT_OF_ORDER_SEQUENCE`
    #[error("{0}")]
    OutOfOrderSequence(String),
}

/// Why a [`LogError::Refused`] operation was not done (its `google.rpc.ErrorInfo`
/// reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// The leader holds as much uncommitted data as it allows, or as many
    /// forwarded appends are waiting as a follower allows. → `OVERLOADED`
    Overloaded,
    /// Another membership change has not been applied yet. → `CHANGE_IN_PROGRESS`
    ChangeInProgress,
    /// The change would leave the remaining voters without a live majority.
    /// → `NO_LIVE_QUORUM`
    NoLiveQuorum,
    /// The leader is handing leadership over; ask the new one. → `LEADERSHIP_TRANSFER`
    LeadershipTransfer,
}

impl Refusal {
    /// Every refusal.
    pub const ALL: [Refusal; 4] =
        [Self::Overloaded, Self::ChangeInProgress, Self::NoLiveQuorum, Self::LeadershipTransfer];

    /// The `google.rpc.ErrorInfo` reason.
    pub fn as_str(self) -> &'static str {
        use proglog_api::error_info;
        match self {
            Self::Overloaded => error_info::OVERLOADED,
            Self::ChangeInProgress => error_info::CHANGE_IN_PROGRESS,
            Self::NoLiveQuorum => error_info::NO_LIVE_QUORUM,
            Self::LeadershipTransfer => error_info::LEADERSHIP_TRANSFER,
        }
    }

    /// The refusal whose reason is `reason`.
    pub fn from_reason(reason: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|refusal| refusal.as_str() == reason)
    }
}

impl LogError {
    /// A [`LogError::Refused`].
    pub fn refused(reason: Refusal, message: impl Into<String>) -> Self {
        Self::Refused { reason, message: message.into() }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_leader_names_the_leader_when_known() {
        let known = LogError::NotLeader {
            leader: Some(Leader { id: "n2".into(), rpc_addr: "10.0.0.2:8400".into() }),
        };
        assert_eq!(known.to_string(), "not the leader; the leader is n2 at 10.0.0.2:8400");
        assert_eq!(LogError::NotLeader { leader: None }.to_string(), "not the leader: no leader is known");
    }
}
