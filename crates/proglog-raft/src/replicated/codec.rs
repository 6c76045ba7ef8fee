//! What the replicated log puts in Raft entries, and how node ids are derived.
//!
//! A normal entry with data is a *record batch*: the dense offset of its first
//! record, what the leader said of it ([`BatchMeta`]: its timestamp, the
//! producer and sequence of an idempotent append), then the records. The leader writes the offset when it proposes (the
//! end of the entry before), so every node stores and checks the same offsets;
//! entries without records (the leader's empty entry, configuration changes)
//! take no offsets. A configuration change's context names the node it adds.

use bytes::{Buf, BufMut, Bytes};
use serde::{Deserialize, Serialize};

use crate::LogError;

/// Version byte of the record batch encoding before batches carried their
/// [`BatchMeta`] (decoded, never written).
const BATCH_V1: u8 = 1;
/// Version byte of the record batch encoding.
const BATCH_V2: u8 = 2;
/// Version byte, first offset, record count.
const BATCH_V1_HEADER_BYTES: usize = 1 + 8 + 4;
/// Then the timestamp, producer id and sequence.
const BATCH_HEADER_BYTES: usize = BATCH_V1_HEADER_BYTES + 3 * 8;
/// Each record's length prefix.
const RECORD_HEADER_BYTES: usize = 4;

/// What the leader says of a whole batch when it proposes it: when it was
/// appended, and which producer's sequence numbers its records carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct BatchMeta {
    /// The leader's clock (ms since the Unix epoch) when it proposed the batch,
    /// never below an earlier batch's; 0: unknown (batches from before).
    pub timestamp_ms: u64,
    /// The idempotent producer whose records these are (0: none).
    pub producer_id: u64,
    /// The producer's sequence number of the first record.
    pub sequence: u64,
}

/// Encoded size of a batch holding `values`.
pub(crate) fn batch_len(values: &[Bytes]) -> usize {
    BATCH_HEADER_BYTES + values.iter().map(|value| RECORD_HEADER_BYTES + value.len()).sum::<usize>()
}

/// Encodes `values` as the batch starting at `first_offset` (into a `Vec`,
/// which raft-rs takes as entry data without another copy).
pub(crate) fn encode_batch(first_offset: u64, meta: BatchMeta, values: &[Bytes]) -> Vec<u8> {
    let mut out = Vec::with_capacity(batch_len(values));
    out.put_u8(BATCH_V2);
    out.put_u64(first_offset);
    out.put_u32(u32::try_from(values.len()).unwrap_or(u32::MAX));
    out.put_u64(meta.timestamp_ms);
    out.put_u64(meta.producer_id);
    out.put_u64(meta.sequence);
    for value in values {
        out.put_u32(u32::try_from(value.len()).unwrap_or(u32::MAX));
        out.put_slice(value);
    }
    out
}

/// A decoded record batch: its first offset, what the leader said of it and
/// its values (slices of the entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Batch {
    pub first_offset: u64,
    pub meta: BatchMeta,
    pub values: Vec<Bytes>,
}

/// The header of a batch: (first offset, record count), what the leader said
/// of it, and where its records start.
fn header(data: &[u8]) -> Result<(u64, u64, BatchMeta, usize), LogError> {
    let mut header =
        data.get(..BATCH_V1_HEADER_BYTES).ok_or_else(|| damaged("a batch shorter than its header"))?;
    let version = header.get_u8();
    let (first_offset, count) = (header.get_u64(), u64::from(header.get_u32()));
    match version {
        BATCH_V1 => Ok((first_offset, count, BatchMeta::default(), BATCH_V1_HEADER_BYTES)),
        BATCH_V2 => {
            let mut meta = data
                .get(BATCH_V1_HEADER_BYTES..BATCH_HEADER_BYTES)
                .ok_or_else(|| damaged("a batch shorter than its header"))?;
            let meta = BatchMeta {
                timestamp_ms: meta.get_u64(),
                producer_id: meta.get_u64(),
                sequence: meta.get_u64(),
            };
            Ok((first_offset, count, meta, BATCH_HEADER_BYTES))
        }
        _ => Err(damaged("a batch of an unknown version")),
    }
}

/// Reads only the header: (first offset, record count).
pub(crate) fn batch_header(data: &[u8]) -> Result<(u64, u64), LogError> {
    header(data).map(|(first_offset, count, _, _)| (first_offset, count))
}

/// Reads only the header: (first offset, record count, what the leader said).
pub(crate) fn batch_meta(data: &[u8]) -> Result<(u64, u64, BatchMeta), LogError> {
    header(data).map(|(first_offset, count, meta, _)| (first_offset, count, meta))
}

/// Decodes a batch, checking every length against the data.
pub(crate) fn decode_batch(data: &Bytes) -> Result<Batch, LogError> {
    let (first_offset, count, meta, records) = header(data)?;
    let mut rest = data.slice(records..);
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
    Ok(Batch { first_offset, meta, values })
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

/// A server of the cluster: its Raft id, its name and where it is reached.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Member {
    /// Raft id: minted at random when the node's data dir was created (so a
    /// node that lost its data comes back as a new member, never under its old
    /// identity); 0 until its node has opened its data dir. Data dirs from before
    /// member ids keep the id their cluster knows them by ([`node_id`] of the name).
    pub id: u64,
    /// Node name (unique among live members, stable across restarts).
    pub name: String,
    /// The gRPC address clients and peers dial.
    pub rpc_addr: String,
    /// Its gossip (UDP) address, so that a restarted node can find the members
    /// it last knew; empty if unknown.
    #[serde(default)]
    pub gossip_addr: String,
}

impl Member {
    /// The member named `name`, dialled at `rpc_addr`, whose id its node assigns
    /// when it opens its data dir.
    pub fn new(name: impl Into<String>, rpc_addr: impl Into<String>) -> Self {
        Self { id: 0, name: name.into(), rpc_addr: rpc_addr.into(), gossip_addr: String::new() }
    }

    /// The same member, gossiping at `gossip_addr`.
    pub fn with_gossip_addr(self, gossip_addr: impl Into<String>) -> Self {
        Self { gossip_addr: gossip_addr.into(), ..self }
    }

    /// The same member, with Raft id `id`.
    pub fn with_id(self, id: u64) -> Self {
        Self { id, ..self }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub(crate) fn decode(context: &[u8]) -> Result<Self, LogError> {
        serde_json::from_slice(context)
            .map_err(|error| damaged(&format!("a bad member description ({error})")))
    }
}

/// Who a peer says it is on an agent-to-agent call (its transport carries this
/// with every call; with `--peer-tls-require-node-name` its certificate vouches
/// for the name). Checked against each message it sends.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerId {
    /// Its node name.
    pub name: String,
    /// Its Raft id.
    pub member_id: u64,
    /// The cluster it belongs to, if it knows one.
    pub cluster_id: Option<ClusterId>,
    /// Where it serves RPCs.
    pub rpc_addr: String,
}

/// The Raft id a node had before member ids were minted: FNV-1a (64 bit) of its
/// name's UTF-8 bytes, never 0 (Raft's "none"). Only data dirs from then use it.
pub fn node_id(name: &str) -> u64 {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    hash.max(1)
}

/// A new member id: random, never 0.
pub(crate) fn mint_member_id() -> u64 {
    (random_id() as u64).max(1)
}

/// 128 random bits for a new id. In this crate's tests, drawn from the
/// sequence [`seed_ids`] started on this thread, if any, so that a simulation
/// replays the same ids from its seed.
fn random_id() -> u128 {
    #[cfg(test)]
    if let Some(id) = TEST_IDS.with(|ids| {
        let mut state = ids.get()?;
        let mut next = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let id = (u128::from(next()) << 64) | u128::from(next());
        ids.set(Some(state));
        Some(id)
    }) {
        return id;
    }
    rand::random::<u128>()
}

#[cfg(test)]
thread_local! {
    static TEST_IDS: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Makes the ids minted on this thread a fixed sequence from `seed` (tests).
#[cfg(test)]
pub(crate) fn seed_ids(seed: u64) {
    TEST_IDS.with(|ids| ids.set(Some(seed)));
}

/// The id of a cluster: minted at random when the cluster is bootstrapped, kept
/// in every member's data dir and carried on every agent-to-agent call, so that
/// a node holding another cluster's history is refused rather than merged (two
/// histories may start at the same Raft indexes and terms, so Raft alone cannot
/// tell them apart). Written as 32 hexadecimal digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterId(u128);

impl ClusterId {
    /// A new, random id.
    pub fn mint() -> Self {
        Self(random_id().max(1))
    }

    /// The id as a number (never 0).
    pub fn get(self) -> u128 {
        self.0
    }

    /// The id `value`, if it is one (0 is none).
    pub fn from_u128(value: u128) -> Option<Self> {
        (value != 0).then_some(Self(value))
    }
}

impl std::fmt::Display for ClusterId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl std::fmt::Debug for ClusterId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterId({self})")
    }
}

impl std::str::FromStr for ClusterId {
    type Err = LogError;
    fn from_str(text: &str) -> Result<Self, LogError> {
        let bad =
            || LogError::InvalidArgument(format!("{text:?} is not a cluster id (32 hexadecimal digits)"));
        if text.len() != 32 {
            return Err(bad());
        }
        u128::from_str_radix(text, 16).ok().and_then(Self::from_u128).ok_or_else(bad)
    }
}

impl Serialize for ClusterId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ClusterId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_and_damage_is_an_error() {
        let values = vec![Bytes::from_static(b"a"), Bytes::new(), Bytes::from_static(b"ccc")];
        let meta = BatchMeta { timestamp_ms: 1_700_000_000_000, producer_id: 9, sequence: 4 };
        let data = Bytes::from(encode_batch(42, meta, &values));
        assert_eq!(data.len(), batch_len(&values));
        let batch = decode_batch(&data).expect("decodes");
        assert_eq!(batch, Batch { first_offset: 42, meta, values: values.clone() });
        assert_eq!(batch_header(&data).expect("header"), (42, 3));
        for cut in 0..data.len() {
            assert!(decode_batch(&data.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut longer = data.to_vec();
        longer.push(0);
        assert!(decode_batch(&Bytes::from(longer)).is_err());
        // Batches from before batches carried their meta still decode.
        let mut old = vec![1];
        old.extend_from_slice(&42u64.to_be_bytes());
        old.extend_from_slice(&1u32.to_be_bytes());
        old.extend_from_slice(&2u32.to_be_bytes());
        old.extend_from_slice(b"hi");
        let batch = decode_batch(&Bytes::from(old)).expect("decodes");
        assert_eq!(batch, Batch { first_offset: 42, meta: BatchMeta::default(), values: vec!["hi".into()] });
    }

    #[test]
    fn node_ids_are_stable_and_distinct() {
        // FNV-1a test vectors: the id must never change between versions.
        assert_eq!(node_id(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(node_id("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(node_id("node-1"), node_id("node-2"));
        let member = Member::new("node-1", "127.0.0.1:8400").with_id(7).with_gossip_addr("127.0.0.1:8401");
        assert_eq!(Member::decode(&member.encode()).expect("decodes"), member);
        assert!(Member::decode(b"{").is_err());
        // Descriptions from before gossip addresses still decode.
        let old =
            Member::decode(br#"{"id":7,"name":"node-1","rpc_addr":"127.0.0.1:8400"}"#).expect("decodes");
        assert_eq!(old, Member { gossip_addr: String::new(), ..member });
    }

    #[test]
    fn cluster_ids_round_trip_as_32_hex_digits() {
        let id = ClusterId::mint();
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(text.parse::<ClusterId>().expect("parses"), id);
        assert_eq!(
            serde_json::from_str::<ClusterId>(&serde_json::to_string(&id).expect("encodes"))
                .expect("decodes"),
            id
        );
        for bad in ["", "0", &"0".repeat(32), &"g".repeat(32), &"f".repeat(33)] {
            assert!(bad.parse::<ClusterId>().is_err(), "{bad:?}");
        }
    }
}
