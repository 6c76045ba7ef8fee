//! The `log.v1` wire contract of proglog, generated from `proto/log/v1/log.proto`
//! at build time (no system `protoc` needed).
//!
//! This crate holds only generated code: the message types, the tonic client
//! ([`v1::log_client::LogClient`]) and server trait ([`v1::log_server::Log`]), and
//! the encoded file descriptor set for gRPC server reflection. Behaviour (status
//! codes, ACL, storage) lives in the crates that use it.
//!
//! ```
//! use proglog_api::v1::{ProduceRequest, Record};
//! use prost::Message;
//!
//! let request = ProduceRequest {
//!     record: Some(Record { value: "hello world".into(), ..Default::default() }),
//!     ..Default::default()
//! };
//! let bytes = request.encode_to_vec();
//! assert_eq!(ProduceRequest::decode(bytes.as_slice()).unwrap(), request);
//! ```

/// Generated types and stubs of the `log.v1` package.
#[allow(missing_docs, missing_debug_implementations, clippy::all)]
pub mod v1 {
    tonic::include_proto!("log.v1");
}

/// Generated types and stubs of `proglog.internal.v1`, the agent-to-agent
/// service (Raft messages, snapshot records, forwarded produces). Not a public
/// contract.
#[allow(missing_docs, missing_debug_implementations, clippy::all)]
pub mod internal {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("proglog.internal.v1");
    }
}

/// The `google.rpc.ErrorInfo` a server attaches to a refusal clients act on
/// without parsing messages (part of the wire contract, like the status codes).
pub mod error_info {
    /// The `domain` of every proglog `ErrorInfo`.
    pub const DOMAIN: &str = "proglog";
    /// This server does not lead; metadata `leader_id` and `leader_addr` name
    /// the leader it knows, if any. Nothing was appended.
    pub const NOT_LEADER: &str = "NOT_LEADER";
    /// The leader holds as much uncommitted data as it allows, or a follower
    /// as many forwarded appends. Nothing was appended.
    pub const OVERLOADED: &str = "OVERLOADED";
    /// Another membership change is being applied. Nothing was changed.
    pub const CHANGE_IN_PROGRESS: &str = "CHANGE_IN_PROGRESS";
    /// The change would leave the voters without a live majority. Nothing was
    /// changed.
    pub const NO_LIVE_QUORUM: &str = "NO_LIVE_QUORUM";
    /// The leader is handing leadership over. Nothing was changed.
    pub const LEADERSHIP_TRANSFER: &str = "LEADERSHIP_TRANSFER";
    /// Every reason above: refusals after which nothing was appended or
    /// changed, so that the same request may be sent again (to the leader).
    pub const NOTHING_DONE: [&str; 5] =
        [NOT_LEADER, OVERLOADED, CHANGE_IN_PROGRESS, NO_LIVE_QUORUM, LEADERSHIP_TRANSFER];
    /// An idempotent append whose sequence does not follow the producer's
    /// (`FAILED_PRECONDITION`). Nothing was appended; sending it again cannot
    /// succeed.
    pub const OUT_OF_ORDER_SEQUENCE: &str = "OUT_OF_ORDER_SEQUENCE";
}

/// Encoded `FileDescriptorSet` of `log.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("log_descriptor");

#[cfg(test)]
mod tests {
    use super::v1::{ConsumeResponse, Record};
    use prost::Message;

    /// The book's tests size store entries from the canonical encoding; prost must
    /// match it byte for byte (default fields omitted, ascending field order).
    #[test]
    fn record_encoding_matches_the_books_sizes() {
        let mut record = Record { value: "hello world".into(), ..Default::default() };
        assert_eq!(record.encode_to_vec().len(), 13);
        record.offset = 1;
        assert_eq!(record.encode_to_vec().len(), 15);
    }

    #[test]
    fn consume_response_carries_the_record_in_field_2() {
        let response = ConsumeResponse { record: Some(Record::default()) };
        // field 2, wire type 2 (length-delimited), empty message
        assert_eq!(response.encode_to_vec(), vec![0x12, 0x00]);
    }

    #[test]
    fn descriptor_set_names_the_log_package() {
        let needle = b"log/v1/log.proto";
        assert!(super::FILE_DESCRIPTOR_SET.windows(needle.len()).any(|window| window == needle));
    }
}
