//! The one place that turns errors into gRPC statuses (SPEC §1).

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::LogError;

/// Locale of the `google.rpc.LocalizedMessage` detail on `OUT_OF_RANGE`.
const LOCALE: &str = "en-US";

impl From<LogError> for Status {
    fn from(error: LogError) -> Self {
        match error {
            LogError::OutOfRange { offset } => Status::with_error_details(
                Code::OutOfRange,
                format!("offset out of range: {offset}"),
                ErrorDetails::with_localized_message(
                    LOCALE,
                    format!("The requested offset is outside the log's range: {offset}"),
                ),
            ),
            LogError::InvalidArgument(message) => Status::invalid_argument(message),
            LogError::Unavailable(message) => Status::unavailable(message),
            LogError::DataLoss(message) => Status::data_loss(message),
            LogError::Internal(message) => Status::internal(message),
        }
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

/// A call refused because the server has as many in progress as it allows.
pub(crate) fn overloaded(message: String) -> Status {
    Status::resource_exhausted(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_carries_the_localized_message_detail() {
        let status = Status::from(LogError::OutOfRange { offset: 7 });
        assert_eq!(status.code(), Code::OutOfRange);
        assert_eq!(status.message(), "offset out of range: 7");
        let details = status.get_error_details();
        let localized = details.localized_message().expect("localized message detail");
        assert_eq!(localized.locale, "en-US");
        assert_eq!(localized.message, "The requested offset is outside the log's range: 7");
    }
}
