//! The replicated state beside the records (SPEC §11): what commands decide,
//! the same on every node because every node applies the same commands in the
//! same order.
//!
//! - **Consumer positions**: `CommitOffset` per group, read by `FetchOffset`.
//! - **Retention**: the lowest offset kept, as the leader decided it
//!   (`Retain`), the same on every node.
//! - **Idempotent producers**: each one's next sequence and recent batches.
//! - **The catalog of named logs** (the default log's machine only):
//!   `CreateLog` / `DeleteLog`, each log with its incarnation (the index of the
//!   entry that created it) and the voters its Raft group started with.
//!
//! A command is a Raft entry without records: its kind byte ([`COMMAND`],
//! which no record batch starts with), the leader's timestamp, then the command
//! as JSON. It is stored with the other record-less entries (`meta.json`) until
//! compaction, when the state it led to is written to `raft/state.json` (with
//! the index it reflects); a node that opens replays the commands after that
//! index, and a snapshot carries the state to a follower.
//!
//! Bounds: a command is at most [`MAX_COMMAND_BYTES`]; group names are
//! [`check_group`]'s; at most [`MAX_GROUPS`] groups per log, so the state
//! stays under about 1.5 MiB; at most [`MAX_LOGS`] named logs, each named by
//! [`check_log_name`].

use std::collections::BTreeMap;

use bytes::{Buf, BufMut};
use serde::{Deserialize, Serialize};

use super::codec::Member;
use crate::LogError;

/// The first byte of a command entry (a record batch starts with its version,
/// 1 or 2).
pub(crate) const COMMAND: u8 = 0x10;
/// Encoded bytes of one command, at most.
pub(crate) const MAX_COMMAND_BYTES: usize = 4 << 10;
/// Bytes of a consumer group's name, at most.
pub const MAX_GROUP_BYTES: usize = 128;
/// Consumer groups with a committed position, per log, at most.
pub const MAX_GROUPS: usize = 10_000;
/// Idempotent producers remembered per log, at most: a new one beyond it
/// makes the log forget the one that appended least recently.
pub const MAX_PRODUCERS: usize = 4096;
/// Named logs a cluster holds, at most (beside the default log): each is a
/// Raft group with threads and memory of its own (ARCHITECTURE.md "Named logs").
pub const MAX_LOGS: usize = 100;
/// Bytes of a log's name, at most.
pub const MAX_LOG_NAME_BYTES: usize = 128;
/// How often (in batch time) the producers silent past their expiry are
/// looked for, at most.
pub(crate) const EXPIRY_SWEEP_MS: u64 = 1000;
/// Batches remembered per producer (its most recent ones, contiguous ones
/// merged): a retry of an older batch is refused, not stored again.
pub(crate) const PRODUCER_WINDOW: usize = 64;

/// What a command entry decides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Command {
    /// Consumer group `group` has processed the records below `offset`.
    CommitOffset { group: String, offset: u64 },
    /// Retention (decided by the leader): the records below `lowest` go.
    Retain { lowest: u64 },
    /// A named log, whose Raft group starts with `voters` (the default log's
    /// voters when the leader proposed it).
    CreateLog { name: String, retention_bytes: u64, retention_ms: u64, voters: Vec<Member> },
    /// A named log goes, with its records.
    DeleteLog { name: String },
}

/// A named log as the catalog holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSpec {
    /// Its name ([`check_log_name`]; never empty).
    pub name: String,
    /// The index of the default log's entry that created it: a log deleted
    /// and created again under its name is another Raft group.
    pub incarnation: u64,
    /// Its retention (0: keep everything).
    pub retention_bytes: u64,
    pub retention_ms: u64,
    /// The voters its Raft group started with.
    pub voters: Vec<Member>,
}

/// A command entry's data.
pub(crate) fn encode_command(timestamp_ms: u64, command: &Command) -> Result<Vec<u8>, LogError> {
    let json = serde_json::to_vec(command)
        .map_err(|error| LogError::Internal(format!("cannot encode a command: {error}")))?;
    let mut out = Vec::with_capacity(1 + 8 + json.len());
    out.put_u8(COMMAND);
    out.put_u64(timestamp_ms);
    out.extend_from_slice(&json);
    if out.len() > MAX_COMMAND_BYTES {
        return Err(LogError::InvalidArgument(format!(
            "a command of {} bytes exceeds {MAX_COMMAND_BYTES}",
            out.len()
        )));
    }
    Ok(out)
}

/// Whether an entry's data is a command (it may still fail to decode).
pub(crate) fn is_command(data: &[u8]) -> bool {
    data.first() == Some(&COMMAND)
}

/// Decodes a command entry's data: (the leader's timestamp, the command),
/// checking what a peer could have put there.
pub(crate) fn decode_command(data: &[u8]) -> Result<(u64, Command), LogError> {
    let damaged = |what: &str| LogError::DataLoss(format!("raft entry holds {what}"));
    if !is_command(data) || data.len() < 9 || data.len() > MAX_COMMAND_BYTES {
        return Err(damaged("a command of a bad size or kind"));
    }
    let mut header = &data[1..9];
    let timestamp_ms = header.get_u64();
    let command: Command =
        serde_json::from_slice(&data[9..]).map_err(|_| damaged("a command that does not decode"))?;
    match &command {
        Command::CommitOffset { group, .. } => check_group(group).map_err(|_| damaged("a bad group name"))?,
        Command::Retain { .. } => {}
        Command::CreateLog { name, .. } | Command::DeleteLog { name } => match check_log_name(name) {
            Ok(()) if !name.is_empty() => {}
            _ => return Err(damaged("a bad log name")),
        },
    }
    Ok((timestamp_ms, command))
}

/// A command a follower forwarded to this leader (see `Mailbox::command`):
/// the JSON of a catalog command (the only ones followers forward), checked as
/// an entry's would be.
pub(crate) fn decode_forwarded(data: &[u8]) -> Result<Command, LogError> {
    let bad = |what: &str| LogError::InvalidArgument(format!("a forwarded command {what}"));
    if data.len() > MAX_COMMAND_BYTES {
        return Err(bad("is too large"));
    }
    let command: Command = serde_json::from_slice(data).map_err(|_| bad("does not decode"))?;
    match &command {
        Command::CreateLog { name, .. } | Command::DeleteLog { name } if !name.is_empty() => {
            check_log_name(name)?
        }
        _ => return Err(bad("is not one a follower forwards")),
    }
    Ok(command)
}

/// A consumer group's name: 1 to [`MAX_GROUP_BYTES`] bytes of ASCII letters,
/// digits, `.`, `_` and `-` (Kafka's legal topic characters).
pub fn check_group(group: &str) -> Result<(), LogError> {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if group.is_empty() || group.len() > MAX_GROUP_BYTES || !group.chars().all(legal) {
        return Err(LogError::InvalidArgument(format!(
            "a consumer group is 1 to {MAX_GROUP_BYTES} of the characters [A-Za-z0-9._-]; got {:?}",
            group.chars().take(MAX_GROUP_BYTES + 1).collect::<String>()
        )));
    }
    Ok(())
}

/// A log's name (SPEC §11): `[a-z0-9][a-z0-9._-]{0,127}`, or empty for the
/// default log.
pub fn check_log_name(name: &str) -> Result<(), LogError> {
    let first = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let rest = |c: char| first(c) || matches!(c, '.' | '_' | '-');
    let mut chars = name.chars();
    let good = match chars.next() {
        None => true,
        Some(c) => first(c) && name.len() <= MAX_LOG_NAME_BYTES && chars.all(rest),
    };
    if good {
        return Ok(());
    }
    Err(LogError::InvalidArgument(format!(
        "a log name is [a-z0-9][a-z0-9._-]{{0,{}}} (empty: the default log); got {:?}",
        MAX_LOG_NAME_BYTES - 1,
        name.chars().take(MAX_LOG_NAME_BYTES + 1).collect::<String>()
    )))
}

/// The replicated state of one log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Machine {
    /// Each consumer group's committed position.
    #[serde(default)]
    positions: BTreeMap<String, u64>,
    /// Retention removed every record below this offset.
    #[serde(default)]
    lowest: u64,
    /// Idempotent producers, by id.
    #[serde(default)]
    producers: BTreeMap<u64, Producer>,
    /// The timestamp of the batch at which silent producers were last
    /// forgotten (see [`Machine::record`]).
    #[serde(default)]
    swept_ms: u64,
    /// The named logs (in the default log's machine), by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    logs: BTreeMap<String, LogSpec>,
}

/// What the log remembers of an idempotent producer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Producer {
    /// The sequence its next batch must start at.
    next: u64,
    /// The timestamp of its last batch.
    last_ms: u64,
    /// Its most recent batches: (first sequence, records, first offset).
    window: std::collections::VecDeque<(u64, u64, u64)>,
}

/// Where an idempotent append stands against what the log holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sequence {
    /// The producer's next sequence: append it.
    Next,
    /// Appended already, at this offset: append nothing.
    Appended(u64),
    /// Neither: refuse it (`expected` is the producer's next sequence).
    OutOfOrder { expected: u64 },
}

impl Machine {
    /// Applies `command`, the entry at `index` (as every node does, in log
    /// order); the error is the proposer's answer, the same on every node, and
    /// changes nothing.
    pub(crate) fn apply(&mut self, index: u64, command: &Command) -> Result<(), LogError> {
        match command {
            Command::CreateLog { name, retention_bytes, retention_ms, voters } => {
                if self.logs.contains_key(name) {
                    return Err(LogError::AlreadyExists(format!("log {name:?} exists")));
                }
                if self.logs.len() >= MAX_LOGS {
                    return Err(LogError::ResourceExhausted(format!(
                        "the cluster already holds {MAX_LOGS} named logs"
                    )));
                }
                let spec = LogSpec {
                    name: name.clone(),
                    incarnation: index,
                    retention_bytes: *retention_bytes,
                    retention_ms: *retention_ms,
                    voters: voters.clone(),
                };
                self.logs.insert(name.clone(), spec);
                Ok(())
            }
            Command::DeleteLog { name } => match self.logs.remove(name) {
                Some(_) => Ok(()),
                None => Err(LogError::NotFound(format!("no log is named {name:?}"))),
            },
            Command::CommitOffset { group, offset } => {
                if !self.positions.contains_key(group) && self.positions.len() >= MAX_GROUPS {
                    return Err(LogError::ResourceExhausted(format!(
                        "this log already holds the positions of {MAX_GROUPS} consumer groups"
                    )));
                }
                self.positions.insert(group.clone(), *offset);
                Ok(())
            }
            Command::Retain { lowest } => {
                self.lowest = self.lowest.max(*lowest);
                Ok(())
            }
        }
    }

    /// Retention removed every record below this offset.
    pub(crate) fn lowest(&self) -> u64 {
        self.lowest
    }

    /// The sequence producer `id`'s next batch must start at (0 for one the
    /// log does not know).
    pub(crate) fn next_sequence(&self, id: u64) -> u64 {
        self.producers.get(&id).map_or(0, |producer| producer.next)
    }

    /// Where `count` records of producer `id` from `sequence` on stand, given
    /// that its next sequence is `expected` (the applied state's, or further
    /// on a leader with proposals in flight).
    pub(crate) fn check(&self, id: u64, sequence: u64, count: u64, expected: u64) -> Sequence {
        if sequence == expected {
            return Sequence::Next;
        }
        if sequence < expected && sequence.saturating_add(count) <= expected {
            let window = self.producers.get(&id).map(|producer| &producer.window);
            let found = window.into_iter().flatten().find(|(first, records, _)| {
                *first <= sequence && sequence.saturating_add(count) <= first + records
            });
            if let Some((first, _, offset)) = found {
                return Sequence::Appended(offset + (sequence - first));
            }
        }
        Sequence::OutOfOrder { expected }
    }

    /// A batch of producer `id` applied: `count` records from `sequence` on, at
    /// `first_offset`, stamped `timestamp_ms`. Producers silent for longer than
    /// `expiry_ms` before it are forgotten (0: never) — looked for once per
    /// [`EXPIRY_SWEEP_MS`] (or per expiry, if shorter) of batch time, not on
    /// every batch: a sweep reads every producer — and the least recent one
    /// once there are more than [`MAX_PRODUCERS`].
    pub(crate) fn record(
        &mut self,
        id: u64,
        sequence: u64,
        count: u64,
        first_offset: u64,
        timestamp_ms: u64,
        expiry_ms: u64,
    ) {
        if expiry_ms > 0 && timestamp_ms >= self.swept_ms.saturating_add(expiry_ms.min(EXPIRY_SWEEP_MS)) {
            self.producers.retain(|_, producer| producer.last_ms.saturating_add(expiry_ms) >= timestamp_ms);
            self.swept_ms = timestamp_ms;
        }
        let producer = self.producers.entry(id).or_default();
        producer.next = producer.next.max(sequence.saturating_add(count));
        producer.last_ms = producer.last_ms.max(timestamp_ms);
        match producer.window.back_mut() {
            // Contiguous in sequences and offsets: one entry.
            Some((first, records, offset))
                if *first + *records == sequence && *offset + *records == first_offset =>
            {
                *records += count;
            }
            _ => producer.window.push_back((sequence, count, first_offset)),
        }
        while producer.window.len() > PRODUCER_WINDOW {
            producer.window.pop_front();
        }
        while self.producers.len() > MAX_PRODUCERS {
            let oldest = self
                .producers
                .iter()
                .min_by_key(|(id, producer)| (producer.last_ms, **id))
                .map(|(id, _)| *id);
            if let Some(oldest) = oldest {
                self.producers.remove(&oldest);
            }
        }
    }

    /// The position group `group` committed last, if any.
    pub(crate) fn position(&self, group: &str) -> Option<u64> {
        self.positions.get(group).copied()
    }

    /// The named logs, by name.
    pub(crate) fn logs(&self) -> &BTreeMap<String, LogSpec> {
        &self.logs
    }
}

/// The machine as `raft/state.json` holds it: the state after applying the
/// entries up to `index`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SavedMachine {
    pub index: u64,
    pub machine: Machine,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_what_a_peer_could_forge_is_refused() {
        let command = Command::CommitOffset { group: "billing".into(), offset: 41 };
        let data = encode_command(7, &command).expect("encodes");
        assert!(is_command(&data));
        assert_eq!(decode_command(&data).expect("decodes"), (7, command));
        for cut in 0..data.len() {
            assert!(decode_command(&data[..cut]).is_err(), "cut at {cut}");
        }
        let bad_group =
            encode_command(7, &Command::CommitOffset { group: "a b".into(), offset: 1 }).expect("encodes");
        assert!(decode_command(&bad_group).is_err());
        let mut huge = vec![COMMAND];
        huge.resize(MAX_COMMAND_BYTES + 1, b' ');
        assert!(decode_command(&huge).is_err());
        assert!(!is_command(&[2, 0, 0]), "a record batch");
    }

    #[test]
    fn log_names_follow_the_spec_and_the_catalog_is_bounded() {
        for good in ["", "a", "0", "orders.v2_eu-1", &"l".repeat(MAX_LOG_NAME_BYTES)] {
            assert!(check_log_name(good).is_ok(), "{good:?}");
        }
        for bad in ["A", "-a", ".a", "_a", "a b", "a/b", "é", "a\u{0}", &"l".repeat(MAX_LOG_NAME_BYTES + 1)]
        {
            assert!(check_log_name(bad).is_err(), "{bad:?}");
        }
        let create = |name: &str| Command::CreateLog {
            name: name.into(),
            retention_bytes: 0,
            retention_ms: 0,
            voters: Vec::new(),
        };
        let mut machine = Machine::default();
        machine.apply(7, &create("a")).expect("applies");
        assert_eq!(machine.logs()["a"].incarnation, 7);
        assert!(matches!(machine.apply(8, &create("a")), Err(LogError::AlreadyExists(_))));
        assert_eq!(machine.logs()["a"].incarnation, 7, "unchanged");
        for i in 1..MAX_LOGS {
            machine.apply(10 + i as u64, &create(&format!("l{i}"))).expect("applies");
        }
        assert!(matches!(machine.apply(9, &create("one-too-many")), Err(LogError::ResourceExhausted(_))));
        machine.apply(9, &Command::DeleteLog { name: "a".into() }).expect("deletes");
        assert!(matches!(
            machine.apply(9, &Command::DeleteLog { name: "a".into() }),
            Err(LogError::NotFound(_))
        ));
        machine.apply(20_000, &create("a")).expect("created again");
        assert_eq!(machine.logs()["a"].incarnation, 20_000, "another incarnation");
        // What a peer could forge: a bad name, or the default log's.
        for name in ["", "A"] {
            let data = encode_command(1, &create(name)).expect("encodes");
            assert!(decode_command(&data).is_err(), "{name:?}");
        }
    }

    #[test]
    fn a_forwarded_command_is_a_catalog_command_or_refused() {
        let forwarded = |command: &Command| decode_forwarded(&serde_json::to_vec(command).expect("encodes"));
        let delete = Command::DeleteLog { name: "orders".into() };
        assert_eq!(forwarded(&delete).expect("taken"), delete);
        for refused in [
            Command::DeleteLog { name: String::new() },
            Command::DeleteLog { name: "Bad".into() },
            Command::Retain { lowest: 5 },
            Command::CommitOffset { group: "g".into(), offset: 1 },
        ] {
            assert!(matches!(forwarded(&refused), Err(LogError::InvalidArgument(_))), "{refused:?}");
        }
        assert!(decode_forwarded(b"{").is_err());
        assert!(decode_forwarded(&vec![b' '; MAX_COMMAND_BYTES + 1]).is_err());
    }

    #[test]
    fn group_names_are_bounded_and_plain() {
        for good in ["a", "billing-v2", "A.b_c", &"g".repeat(MAX_GROUP_BYTES)] {
            assert!(check_group(good).is_ok(), "{good:?}");
        }
        for bad in ["", "a b", "é", "a/b", &"g".repeat(MAX_GROUP_BYTES + 1)] {
            assert!(check_group(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_producer_s_sequences_are_stored_once_and_gaps_are_refused() {
        let mut machine = Machine::default();
        assert_eq!(machine.check(7, 0, 2, machine.next_sequence(7)), Sequence::Next);
        machine.record(7, 0, 2, 100, 1, 0);
        machine.record(7, 2, 1, 102, 2, 0); // contiguous: merged
        machine.record(7, 3, 1, 110, 3, 0);
        let next = machine.next_sequence(7);
        assert_eq!(next, 4);
        assert_eq!(machine.check(7, 4, 1, next), Sequence::Next);
        assert_eq!(machine.check(7, 0, 2, next), Sequence::Appended(100));
        assert_eq!(machine.check(7, 2, 1, next), Sequence::Appended(102));
        assert_eq!(machine.check(7, 3, 1, next), Sequence::Appended(110));
        assert_eq!(machine.check(7, 5, 1, next), Sequence::OutOfOrder { expected: 4 }, "a gap");
        assert_eq!(machine.check(7, 3, 2, next), Sequence::OutOfOrder { expected: 4 }, "in part appended");
        assert_eq!(machine.check(8, 1, 1, machine.next_sequence(8)), Sequence::OutOfOrder { expected: 0 });
        // Only the newest batches are remembered.
        for i in 0..PRODUCER_WINDOW as u64 {
            machine.record(7, 4 + i, 1, 1000 + 2 * i, 4, 0);
        }
        let next = machine.next_sequence(7);
        assert_eq!(machine.check(7, 0, 2, next), Sequence::OutOfOrder { expected: next });
        assert_eq!(
            machine.check(7, next - 1, 1, next),
            Sequence::Appended(1000 + 2 * (PRODUCER_WINDOW as u64 - 1))
        );
        // Silent longer than the expiry: forgotten.
        machine.record(9, 0, 1, 5000, 100, 50);
        assert_eq!(machine.next_sequence(7), 0, "silent since 4, expiry 50 at 100");
        assert_eq!(machine.next_sequence(9), 1);
    }

    #[test]
    fn producers_are_bounded_by_forgetting_the_least_recent() {
        let mut machine = Machine::default();
        for id in 1..=MAX_PRODUCERS as u64 + 1 {
            machine.record(id, 0, 1, id, id, 0);
        }
        assert_eq!(machine.producers.len(), MAX_PRODUCERS);
        assert_eq!(machine.next_sequence(1), 0, "the least recent went");
        assert_eq!(machine.next_sequence(MAX_PRODUCERS as u64 + 1), 1);
    }

    #[test]
    fn positions_are_kept_per_group_up_to_the_bound() {
        let mut machine = Machine::default();
        let commit = |group: &str, offset| Command::CommitOffset { group: group.into(), offset };
        machine.apply(1, &commit("a", 5)).expect("applies");
        machine.apply(2, &commit("a", 3)).expect("a position may go back (a consumer rewinds)");
        assert_eq!((machine.position("a"), machine.position("b")), (Some(3), None));
        for i in 1..MAX_GROUPS {
            machine.apply(3, &commit(&format!("g{i}"), 1)).expect("applies");
        }
        let refused = machine.apply(4, &commit("one-too-many", 1));
        assert!(matches!(refused, Err(LogError::ResourceExhausted(_))), "{refused:?}");
        assert_eq!(machine.position("one-too-many"), None);
        machine.apply(5, &commit("a", 9)).expect("a known group still commits");
        assert_eq!(machine.position("a"), Some(9));
    }
}
