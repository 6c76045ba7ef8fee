//! The one place that turns errors into gRPC statuses (SPEC §1).

use std::collections::HashMap;

use proglog_raft::LogError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Locale of the `google.rpc.LocalizedMessage` detail on `OUT_OF_RANGE`.
const LOCALE: &str = "en-US";
use proglog_api::error_info::{DOMAIN as ERROR_DOMAIN, NOT_LEADER, OUT_OF_ORDER_SEQUENCE};

/// The status of a log error: one code per variant. A follower's `NOT_LEADER`
/// is `UNAVAILABLE` carrying the leader it knows as a `google.rpc.ErrorInfo`
/// (reason `NOT_LEADER`, metadata `leader_id` and `leader_addr`), so clients
/// can go there without parsing the message.
pub(crate) fn from_log(error: LogError) -> Status {
    match error {
        LogError::OutOfRange { offset } => Status::with_error_details(
            Code::OutOfRange,
            format!("offset out of range: {offset}"),
            ErrorDetails::with_localized_message(
                LOCALE,
                format!("The requested offset is outside the log's range: {offset}"),
            ),
        ),
        LogError::NotLeader { leader } => {
            let message = LogError::NotLeader { leader: leader.clone() }.to_string();
            let metadata: HashMap<String, String> = leader
                .map(|leader| {
                    HashMap::from([("leader_id".into(), leader.id), ("leader_addr".into(), leader.rpc_addr)])
                })
                .unwrap_or_default();
            Status::with_error_details(
                Code::Unavailable,
                message,
                ErrorDetails::with_error_info(NOT_LEADER, ERROR_DOMAIN, metadata),
            )
        }
        LogError::Refused { reason, message } => Status::with_error_details(
            Code::Unavailable,
            message,
            ErrorDetails::with_error_info(reason.as_str(), ERROR_DOMAIN, HashMap::new()),
        ),
        LogError::InvalidArgument(message) => Status::invalid_argument(message),
        LogError::Unavailable(message) => Status::unavailable(message),
        LogError::DataLoss(message) => Status::data_loss(message),
        LogError::Internal(message) => Status::internal(message),
        LogError::ResourceExhausted(message) => Status::resource_exhausted(message),
        LogError::Unimplemented(message) => Status::unimplemented(message),
        LogError::AlreadyExists(message) => Status::already_exists(message),
        LogError::NotFound(message) => Status::not_found(message),
        LogError::OutOfOrderSequence(message) => Status::with_error_details(
            Code::FailedPrecondition,
            message,
            ErrorDetails::with_error_info(OUT_OF_ORDER_SEQUENCE, ERROR_DOMAIN, HashMap::new()),
        ),
        other => Status::internal(other.to_string()),
    }
}

/// The log error a status stands for: the inverse of [`from_log`], so that an
/// error crosses a forwarding hop unchanged ("not appended" stays "not
/// appended"). A status no log error maps to is `Internal`.
pub(crate) fn to_log(status: &Status) -> LogError {
    let message = status.message().to_owned();
    let info = status.get_error_details().error_info().cloned().filter(|info| info.domain == ERROR_DOMAIN);
    match status.code() {
        Code::OutOfRange => {
            match message.strip_prefix("offset out of range: ").and_then(|n| n.parse().ok()) {
                Some(offset) => LogError::OutOfRange { offset },
                None => LogError::Internal(message),
            }
        }
        Code::Unavailable => match info {
            Some(info) if info.reason == NOT_LEADER => {
                let (id, rpc_addr) = (info.metadata.get("leader_id"), info.metadata.get("leader_addr"));
                let leader = id.zip(rpc_addr).map(|(id, rpc_addr)| proglog_raft::Leader {
                    id: id.clone(),
                    rpc_addr: rpc_addr.clone(),
                });
                LogError::NotLeader { leader }
            }
            Some(info) => match proglog_raft::Refusal::from_reason(&info.reason) {
                Some(reason) => LogError::Refused { reason, message },
                None => LogError::Unavailable(message),
            },
            None => LogError::Unavailable(message),
        },
        Code::InvalidArgument => LogError::InvalidArgument(message),
        Code::DataLoss => LogError::DataLoss(message),
        Code::ResourceExhausted => LogError::ResourceExhausted(message),
        Code::Unimplemented => LogError::Unimplemented(message),
        Code::AlreadyExists => LogError::AlreadyExists(message),
        Code::NotFound => LogError::NotFound(message),
        Code::FailedPrecondition if info.is_some_and(|info| info.reason == OUT_OF_ORDER_SEQUENCE) => {
            LogError::OutOfOrderSequence(message)
        }
        _ => LogError::Internal(message),
    }
}

/// `PERMISSION_DENIED` with the book's message.
pub(crate) fn permission_denied(subject: &str, action: &str, object: &str) -> Status {
    Status::permission_denied(format!("{subject} not permitted to {action} to {object}"))
}

/// A produce request message too large to hold a record within the limit,
/// refused from its length alone (before it is read).
pub(crate) fn request_too_large(bytes: usize, max_record_bytes: u64) -> Status {
    Status::invalid_argument(format!(
        "request message of {bytes} bytes exceeds max-record-bytes ({max_record_bytes} bytes)"
    ))
}

/// A request message above the limit of a method that carries no record.
pub(crate) fn message_too_large(bytes: usize, limit: usize) -> Status {
    Status::invalid_argument(format!("request message of {bytes} bytes exceeds the limit of {limit} bytes"))
}

/// A request body that did not arrive in time.
pub(crate) fn body_timeout(timeout: std::time::Duration) -> Status {
    Status::deadline_exceeded(format!("request body not received within {}s", timeout.as_secs_f64()))
}

/// A call that outlived the deadline its client set (`grpc-timeout`).
pub(crate) fn deadline_exceeded(deadline: std::time::Duration) -> Status {
    Status::deadline_exceeded(format!("deadline of {deadline:?} exceeded"))
}

/// A call refused because the server has as many in progress as it allows.
pub(crate) fn overloaded(message: String) -> Status {
    Status::resource_exhausted(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_carries_the_localized_message_detail() {
        let status = from_log(LogError::OutOfRange { offset: 7 });
        assert_eq!(status.code(), Code::OutOfRange);
        assert_eq!(status.message(), "offset out of range: 7");
        let details = status.get_error_details();
        let localized = details.localized_message().expect("localized message detail");
        assert_eq!(localized.locale, "en-US");
        assert_eq!(localized.message, "The requested offset is outside the log's range: 7");
    }

    #[test]
    fn not_leader_is_unavailable_with_the_leader_as_error_info() {
        let leader = proglog_raft::Leader { id: "n2".into(), rpc_addr: "127.0.0.1:9400".into() };
        let status = from_log(LogError::NotLeader { leader: Some(leader) });
        assert_eq!(status.code(), Code::Unavailable);
        let info = status.get_error_details().error_info().cloned().expect("error info");
        assert_eq!((info.reason.as_str(), info.domain.as_str()), ("NOT_LEADER", "proglog"));
        assert_eq!(info.metadata.get("leader_addr").map(String::as_str), Some("127.0.0.1:9400"));
        let unknown = from_log(LogError::NotLeader { leader: None });
        assert_eq!(unknown.code(), Code::Unavailable);
        assert!(unknown.get_error_details().error_info().is_some_and(|info| info.metadata.is_empty()));
    }

    #[test]
    fn every_log_error_survives_a_round_trip_through_its_status() {
        let leader = proglog_raft::Leader { id: "n2".into(), rpc_addr: "127.0.0.1:9400".into() };
        let mut errors = vec![
            LogError::OutOfRange { offset: 42 },
            LogError::InvalidArgument("bad".into()),
            LogError::NotLeader { leader: Some(leader) },
            LogError::NotLeader { leader: None },
            LogError::Unavailable("gone".into()),
            LogError::DataLoss("damaged".into()),
            LogError::Internal("broken".into()),
            LogError::ResourceExhausted("full".into()),
            LogError::AlreadyExists("exists".into()),
            LogError::NotFound("none".into()),
            LogError::Unimplemented("not here".into()),
            LogError::OutOfOrderSequence("producer 7: sequence 9 does not follow".into()),
        ];
        errors.extend(proglog_raft::Refusal::ALL.map(|reason| LogError::refused(reason, "not now")));
        for error in errors {
            let status = from_log(error.clone());
            // Through the wire form a forwarded answer takes.
            let rebuilt =
                Status::with_details(status.code(), status.message(), status.details().to_vec().into());
            assert_eq!(to_log(&rebuilt), error);
        }
    }
}
