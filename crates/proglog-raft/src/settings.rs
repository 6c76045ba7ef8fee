//! [`Settings`]: what an operator chooses for a node's log (SPEC §3), declared
//! once — its key, its default, its rule and its documentation — for every
//! caller: the agent's flags and TOML file derive from these fields, and
//! [`RaftLog::open`](crate::RaftLog::open) checks the same rule.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::replicated::MAX_STORED_BYTES;
use crate::{Fsync, MAX_RECORD_BYTES};

/// A setting with a value its rule refuses: the key (kebab-case, as in the
/// agent's flags and TOML file) and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct InvalidSetting {
    /// The key, kebab-case.
    pub key: &'static str,
    /// What is wrong with its value.
    pub reason: String,
}

impl InvalidSetting {
    /// `key` is wrong because of `reason`.
    pub fn new(key: &'static str, reason: impl Into<String>) -> Self {
        Self { key, reason: reason.into() }
    }
}

/// A node's log: durability, record and segment sizes, Raft timing. Keys are
/// kebab-case (`max-record-bytes`); a TOML table or file may set any subset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
#[cfg_attr(feature = "clap", derive(clap::Args), group(skip))]
pub struct Settings {
    /// When a record is acknowledged: `always` once it is on stable storage on
    /// a quorum (concurrent records share one fsync), `never` once written to
    /// the OS on a quorum (survives a process crash, not power loss)
    #[cfg_attr(feature = "clap", arg(long, value_enum, value_name = "POLICY"))]
    pub fsync: Fsync,
    /// Largest accepted record value in bytes, at most 16 MiB (the cluster's
    /// ceiling: nodes configured differently still apply each other's records)
    #[cfg_attr(feature = "clap", arg(long, value_name = "BYTES"))]
    pub max_record_bytes: u64,
    /// Store bytes after which a segment of the record log rolls
    #[cfg_attr(feature = "clap", arg(long, value_name = "BYTES"))]
    pub segment_max_store_bytes: u64,
    /// Index bytes (8 per record) after which a segment of the record log rolls
    #[cfg_attr(feature = "clap", arg(long, value_name = "BYTES"))]
    pub segment_max_index_bytes: u64,
    /// Raft heartbeat interval (one tick)
    #[serde(with = "humantime_serde")]
    #[cfg_attr(feature = "clap", arg(long, value_name = "DURATION", value_parser = humantime::parse_duration))]
    pub raft_heartbeat_interval: Duration,
    /// Raft election timeout (randomised up to twice this), at least 5 heartbeats
    #[serde(with = "humantime_serde")]
    #[cfg_attr(feature = "clap", arg(long, value_name = "DURATION", value_parser = humantime::parse_duration))]
    pub raft_election_timeout: Duration,
    /// Retention by size (the default for new logs): the leader removes the
    /// oldest segments while the rest still hold at least this many bytes (0:
    /// keep everything)
    #[cfg_attr(feature = "clap", arg(long, value_name = "BYTES"))]
    pub retention_bytes: u64,
    /// Retention by age (the default for new logs), in ms: the leader removes
    /// segments whose newest record is older (0: keep everything)
    #[cfg_attr(feature = "clap", arg(long, value_name = "MS"))]
    pub retention_ms: u64,
    /// An idempotent producer is forgotten once it has appended nothing for this
    /// long (its next retry of an older sequence is then refused, not stored)
    #[serde(with = "humantime_serde")]
    #[cfg_attr(feature = "clap", arg(long, value_name = "DURATION", value_parser = humantime::parse_duration))]
    pub producer_expiry: Duration,
}

impl Settings {
    /// Heartbeats an election timeout spans at least: fewer, and a leader whose
    /// fsync stalls for a heartbeat or two (this disk's p99 reaches 15 ms) is
    /// deposed by its own followers.
    pub const MIN_ELECTION_HEARTBEATS: u32 = 5;

    /// Checks every rule; the error names the key.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.max_record_bytes == 0 || self.max_record_bytes > MAX_RECORD_BYTES {
            return Err(InvalidSetting::new(
                "max-record-bytes",
                format!("must be in 1..={MAX_RECORD_BYTES} (the cluster's ceiling)"),
            ));
        }
        self.record_log_config().validate().map_err(|error| match error {
            proglog_log::Error::InvalidConfig { key: "max-index-bytes", reason } => {
                InvalidSetting::new("segment-max-index-bytes", reason)
            }
            other => InvalidSetting::new("segment-max-store-bytes", other.to_string()),
        })?;
        if self.raft_heartbeat_interval.is_zero() {
            return Err(InvalidSetting::new("raft-heartbeat-interval", "must be positive"));
        }
        if self.raft_election_timeout < self.raft_heartbeat_interval * Self::MIN_ELECTION_HEARTBEATS {
            return Err(InvalidSetting::new(
                "raft-election-timeout",
                format!("must be at least {} raft-heartbeat-interval", Self::MIN_ELECTION_HEARTBEATS),
            ));
        }
        Ok(())
    }

    /// The data log's config: these segment sizes, and values up to the
    /// cluster's ceiling and a record header rather than only up to
    /// `max-record-bytes` (that limit
    /// is enforced where records are proposed; an entry a peer with a higher
    /// limit committed must apply here too).
    pub fn record_log_config(&self) -> proglog_log::Config {
        proglog_log::Config {
            max_store_bytes: self.segment_max_store_bytes,
            max_index_bytes: self.segment_max_index_bytes,
            max_record_bytes: MAX_STORED_BYTES,
            ..proglog_log::Config::default()
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        let log = proglog_log::Config::default();
        Self {
            fsync: Fsync::Always,
            max_record_bytes: 1 << 20,
            segment_max_store_bytes: log.max_store_bytes,
            segment_max_index_bytes: log.max_index_bytes,
            raft_heartbeat_interval: Duration::from_millis(100),
            raft_election_timeout: Duration::from_secs(1),
            retention_bytes: 0,
            retention_ms: 0,
            producer_expiry: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_pass_their_own_rules() {
        Settings::default().validate().expect("valid");
    }

    #[test]
    fn each_rule_names_its_key() {
        let key = |settings: Settings| settings.validate().expect_err("refused").key;
        let defaults = Settings::default;
        assert_eq!(key(Settings { max_record_bytes: 0, ..defaults() }), "max-record-bytes");
        assert_eq!(
            key(Settings { max_record_bytes: MAX_RECORD_BYTES + 1, ..defaults() }),
            "max-record-bytes"
        );
        assert_eq!(key(Settings { segment_max_index_bytes: 4, ..defaults() }), "segment-max-index-bytes");
        assert_eq!(key(Settings { segment_max_store_bytes: 4, ..defaults() }), "segment-max-store-bytes");
        assert_eq!(
            key(Settings { raft_heartbeat_interval: Duration::ZERO, ..defaults() }),
            "raft-heartbeat-interval"
        );
        let four_beats = Settings { raft_election_timeout: Duration::from_millis(400), ..defaults() };
        assert_eq!(key(four_beats), "raft-election-timeout");
        Settings { raft_election_timeout: Duration::from_millis(500), ..defaults() }
            .validate()
            .expect("five");
    }

    #[test]
    fn a_toml_table_sets_any_subset_and_names_durations_as_people_write_them() {
        let settings: Settings =
            toml::from_str("fsync = \"never\"\nraft-heartbeat-interval = \"50ms\"\n").expect("parses");
        assert_eq!(settings.fsync, Fsync::Never);
        assert_eq!(settings.raft_heartbeat_interval, Duration::from_millis(50));
        assert_eq!(settings.max_record_bytes, Settings::default().max_record_bytes);
        assert!(toml::from_str::<Settings>("no-such-key = 1\n").is_err());
    }
}
