//! What the replicated log puts in Raft entries, and how node ids are derived.
//!
//! A normal entry with data is a *record batch*: the dense offset of its first
//! record, then the records. The leader writes the offset when it proposes (the
//! end of the entry before), so every node stores and checks the same offsets;
//! entries without records (the leader's empty entry, configuration changes)
//! take no offsets. A configuration change's context names the node it adds.

use bytes::{Buf, BufMut, Bytes};
use serde::{Deserialize, Serialize};

use crate::LogError;

/// Version byte of the record batch encoding.
const BATCH_V1: u8 = 1;
/// Version byte, first offset, record count.
const BATCH_HEADER_BYTES: usize = 1 + 8 + 4;
/// Each record's length prefix.
const RECORD_HEADER_BYTES: usize = 4;

/// Encoded size of a batch holding `values`.
pub(crate) fn batch_len(values: &[Bytes]) -> usize {
    BATCH_HEADER_BYTES + values.iter().map(|value| RECORD_HEADER_BYTES + value.len()).sum::<usize>()
}

/// Encodes `values` as the batch starting at `first_offset` (into a `Vec`,
/// which raft-rs takes as entry data without another copy).
pub(crate) fn encode_batch(first_offset: u64, values: &[Bytes]) -> Vec<u8> {
    let mut out = Vec::with_capacity(batch_len(values));
    out.put_u8(BATCH_V1);
    out.put_u64(first_offset);
    out.put_u32(u32::try_from(values.len()).unwrap_or(u32::MAX));
    for value in values {
        out.put_u32(u32::try_from(value.len()).unwrap_or(u32::MAX));
        out.put_slice(value);
    }
    out
}

/// A decoded record batch: its first offset and its values (slices of the entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Batch {
    pub first_offset: u64,
    pub values: Vec<Bytes>,
}

/// Reads only the header: (first offset, record count).
pub(crate) fn batch_header(data: &[u8]) -> Result<(u64, u64), LogError> {
    let mut header =
        data.get(..BATCH_HEADER_BYTES).ok_or_else(|| damaged("a batch shorter than its header"))?;
    if header.get_u8() != BATCH_V1 {
        return Err(damaged("a batch of an unknown version"));
    }
    Ok((header.get_u64(), u64::from(header.get_u32())))
}

/// Decodes a batch, checking every length against the data.
pub(crate) fn decode_batch(data: &Bytes) -> Result<Batch, LogError> {
    let (first_offset, count) = batch_header(data)?;
    let mut rest = data.slice(BATCH_HEADER_BYTES..);
    // Every record takes at least its length prefix: a header cannot make us
    // reserve more than the data could hold.
    let mut values =
        Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(rest.len() / RECORD_HEADER_BYTES));
    for _ in 0..count {
        if rest.len() < RECORD_HEADER_BYTES {
            return Err(damaged("a batch cut inside a record header"));
        }
        let len = rest.get_u32() as usize;
        if rest.len() < len {
            return Err(damaged("a batch cut inside a record"));
        }
        values.push(rest.split_to(len));
    }
    if !rest.is_empty() {
        return Err(damaged("bytes after the last record of a batch"));
    }
    Ok(Batch { first_offset, values })
}

fn damaged(what: &str) -> LogError {
    LogError::DataLoss(format!("raft entry holds {what}"))
}

/// A configuration change of one node (entered directly, not through a joint
/// configuration).
pub(crate) fn conf_change(node_id: u64, kind: raft::eraftpb::ConfChangeType) -> raft::eraftpb::ConfChangeV2 {
    let mut single = raft::eraftpb::ConfChangeSingle { node_id, ..Default::default() };
    single.set_change_type(kind);
    let mut change = raft::eraftpb::ConfChangeV2::default();
    change.mut_changes().push(single);
    change
}

/// Encodes a Raft message for a transport.
pub fn encode_message(message: &raft::eraftpb::Message) -> Result<Bytes, LogError> {
    protobuf::Message::write_to_bytes(message)
        .map(Bytes::from)
        .map_err(|error| LogError::Internal(format!("cannot encode a Raft message: {error}")))
}

/// Decodes a Raft message a transport received.
pub fn decode_message(bytes: &[u8]) -> Result<raft::eraftpb::Message, LogError> {
    <raft::eraftpb::Message as protobuf::Message>::parse_from_bytes(bytes)
        .map_err(|error| LogError::InvalidArgument(format!("a Raft message does not decode: {error}")))
}

/// A server of the cluster: its Raft id, its name and the address clients dial.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Member {
    /// Raft id, derived from the name ([`node_id`]).
    pub id: u64,
    /// Node name (unique, stable across restarts).
    pub name: String,
    /// The gRPC address clients and peers dial.
    pub rpc_addr: String,
}

impl Member {
    /// The member named `name`, dialled at `rpc_addr`.
    pub fn new(name: impl Into<String>, rpc_addr: impl Into<String>) -> Self {
        let name = name.into();
        Self { id: node_id(&name), name, rpc_addr: rpc_addr.into() }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub(crate) fn decode(context: &[u8]) -> Result<Self, LogError> {
        serde_json::from_slice(context)
            .map_err(|error| damaged(&format!("a bad member description ({error})")))
    }
}

/// The Raft id of the node named `name`: FNV-1a (64 bit) of its UTF-8 bytes,
/// never 0 (Raft's "none"). Stable across restarts, versions and machines.
pub fn node_id(name: &str) -> u64 {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    hash.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_and_damage_is_an_error() {
        let values = vec![Bytes::from_static(b"a"), Bytes::new(), Bytes::from_static(b"ccc")];
        let data = Bytes::from(encode_batch(42, &values));
        assert_eq!(data.len(), batch_len(&values));
        let batch = decode_batch(&data).expect("decodes");
        assert_eq!((batch.first_offset, batch.values), (42, values));
        assert_eq!(batch_header(&data).expect("header"), (42, 3));
        for cut in 0..data.len() {
            assert!(decode_batch(&data.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut longer = data.to_vec();
        longer.push(0);
        assert!(decode_batch(&Bytes::from(longer)).is_err());
    }

    #[test]
    fn node_ids_are_stable_and_distinct() {
        // FNV-1a test vectors: the id must never change between versions.
        assert_eq!(node_id(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(node_id("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(node_id("node-1"), node_id("node-2"));
        let member = Member::new("node-1", "127.0.0.1:8400");
        assert_eq!(Member::decode(&member.encode()).expect("decodes"), member);
        assert!(Member::decode(b"{").is_err());
    }
}
