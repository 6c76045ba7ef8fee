//! `AgentConfig`: every key of SPEC §3, from defaults, a TOML file and flags (in
//! that order of precedence, lowest first), validated before anything is written.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};

/// A configuration error: the key it concerns and why. The binary prints it on
/// one line and exits with code 2.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    /// The config key (= the flag without `--`).
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError { key: key.to_owned(), reason: reason.into() }
}

/// When a record is acknowledged (SPEC §5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// Once on stable storage (concurrent appends share one fsync).
    #[default]
    Always,
    /// Once written to the OS: survives a process crash, not power loss.
    Never,
}

/// Log verbosity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Very detailed.
    Trace,
    /// One line per request.
    Debug,
    /// Lifecycle events.
    #[default]
    Info,
    /// Problems that do not stop the agent.
    Warn,
    /// Failures.
    Error,
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Term,
    /// One JSON object per line.
    Json,
}

/// A duration written as `100ms`, `1s`, `2m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl std::str::FromStr for HumanDuration {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        humantime::parse_duration(text)
            .map(HumanDuration)
            .map_err(|error| format!("{error} (write e.g. 100ms, 1s)"))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// The agent's whole configuration (SPEC §3). Field docs give the defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct AgentConfig {
    /// Log and Raft data. Default `./proglog-data`.
    pub data_dir: PathBuf,
    /// Unique, stable node id. Default: the host name.
    pub node_name: String,
    /// Gossip (UDP) address; its host is also the RPC host. Default `127.0.0.1:8401`.
    pub bind_addr: SocketAddr,
    /// gRPC port. Default 8400.
    pub rpc_port: u16,
    /// Gossip addresses of cluster members. Default none.
    pub start_join_addrs: Vec<String>,
    /// Start a new cluster with this node. Default: true iff no start-join-addrs.
    pub bootstrap: bool,
    /// casbin model file. Default none (allow every authenticated client).
    pub acl_model_file: Option<PathBuf>,
    /// casbin policy file.
    pub acl_policy_file: Option<PathBuf>,
    /// Server certificate (PEM). With the key, the RPC and HTTP ports serve TLS.
    pub server_tls_cert_file: Option<PathBuf>,
    /// Server private key (PEM).
    pub server_tls_key_file: Option<PathBuf>,
    /// CA that client certificates must be signed by (mutual TLS).
    pub server_tls_ca_file: Option<PathBuf>,
    /// Certificate this agent presents to other agents.
    pub peer_tls_cert_file: Option<PathBuf>,
    /// Its key.
    pub peer_tls_key_file: Option<PathBuf>,
    /// A peer's certificate must name the node it claims to be (CN or DNS
    /// SAN), on every agent-to-agent call, and a peer is dialled by its node
    /// name. Default false.
    pub peer_tls_require_node_name: bool,
    /// CA other agents' certificates must be signed by. With
    /// `server-tls-ca-file`, the RPC and HTTP ports accept client certificates
    /// of this CA too (other agents dial the same port).
    pub peer_tls_ca_file: Option<PathBuf>,
    /// HTTP listener (SPEC §4); `None` when disabled. Default `127.0.0.1:8402`.
    pub http_addr: Option<SocketAddr>,
    /// Fsync policy. Default `always`.
    pub fsync: FsyncPolicy,
    /// Largest accepted record value. Default 1048576, at most 16 MiB.
    pub max_record_bytes: u64,
    /// Segment roll size of the store. Default 64 MiB.
    pub segment_max_store_bytes: u64,
    /// Segment roll size of the index (8 bytes per record). Default 4 MiB.
    pub segment_max_index_bytes: u64,
    /// Log level. Default `info`.
    pub log_level: LogLevel,
    /// Log format. Default `term`.
    pub log_format: LogFormat,
    /// Allow plaintext on non-loopback addresses. Default false.
    pub insecure: bool,
    /// Shared secret authenticating gossip; required with TLS once discovery exists.
    pub gossip_key_file: Option<PathBuf>,
    /// Raft heartbeat. Default 100ms.
    pub raft_heartbeat_interval: Duration,
    /// Raft election timeout (≥ 5 heartbeats). Default 1s.
    pub raft_election_timeout: Duration,
    /// Connections the RPC port serves at once. Default 1024.
    pub max_connections: usize,
    /// Connections the HTTP port serves at once. Default 256.
    pub http_max_connections: usize,
    /// Calls in progress at once on the RPC port (streams included). Default 1024.
    pub max_concurrent_calls: usize,
    /// A connection with no call in progress this long is closed. Default 10m.
    pub idle_timeout: Duration,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "proglog-0".to_owned())
}

impl Default for AgentConfig {
    fn default() -> Self {
        let log = proglog_log::Config::default();
        Self {
            data_dir: PathBuf::from("./proglog-data"),
            node_name: host_name(),
            bind_addr: SocketAddr::from(([127, 0, 0, 1], 8401)),
            rpc_port: 8400,
            start_join_addrs: Vec::new(),
            bootstrap: true,
            acl_model_file: None,
            acl_policy_file: None,
            server_tls_cert_file: None,
            server_tls_key_file: None,
            server_tls_ca_file: None,
            peer_tls_cert_file: None,
            peer_tls_key_file: None,
            peer_tls_require_node_name: false,
            peer_tls_ca_file: None,
            http_addr: Some(SocketAddr::from(([127, 0, 0, 1], 8402))),
            fsync: FsyncPolicy::Always,
            max_record_bytes: 1 << 20,
            segment_max_store_bytes: log.max_store_bytes,
            segment_max_index_bytes: log.max_index_bytes,
            log_level: LogLevel::Info,
            log_format: LogFormat::Term,
            insecure: false,
            gossip_key_file: None,
            raft_heartbeat_interval: Duration::from_millis(100),
            raft_election_timeout: Duration::from_secs(1),
            max_connections: 1024,
            http_max_connections: 256,
            max_concurrent_calls: 1024,
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// One source of settings: a TOML file or the command line. Every field is
/// optional; what is set overrides the layers below.
#[derive(Clone, Debug, Default, Parser, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[command(
    name = "proglog-agent",
    version,
    about = "Runs a proglog node: a commit log served over gRPC and HTTP."
)]
pub struct ConfigLayer {
    /// TOML config file with the same keys as these flags; flags override it.
    #[arg(long, value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// Log and Raft data directory [default: ./proglog-data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Unique, stable node id [default: the host name]
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// Gossip (UDP) address; its host is also the RPC host [default: 127.0.0.1:8401]
    #[arg(long, value_name = "HOST:PORT")]
    pub bind_addr: Option<String>,
    /// gRPC port for clients and agents [default: 8400]
    #[arg(long, value_name = "PORT")]
    pub rpc_port: Option<u16>,
    /// Gossip addresses of cluster members, comma-separated or repeated [default: none]
    #[arg(long, value_name = "ADDRS", value_delimiter = ',')]
    pub start_join_addrs: Option<Vec<String>>,
    /// Start a new cluster with this node [default: true iff no --start-join-addrs]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub bootstrap: Option<bool>,
    /// casbin ACL model file [default: none: every authenticated client is allowed]
    #[arg(long, value_name = "FILE")]
    pub acl_model_file: Option<PathBuf>,
    /// casbin ACL policy file [default: none]
    #[arg(long, value_name = "FILE")]
    pub acl_policy_file: Option<PathBuf>,
    /// Server certificate (PEM); with the key, RPC and HTTP serve TLS [default: none]
    #[arg(long, value_name = "FILE")]
    pub server_tls_cert_file: Option<PathBuf>,
    /// Server private key (PEM) [default: none]
    #[arg(long, value_name = "FILE")]
    pub server_tls_key_file: Option<PathBuf>,
    /// CA for client certificates: requires mutual TLS [default: none]
    #[arg(long, value_name = "FILE")]
    pub server_tls_ca_file: Option<PathBuf>,
    /// Certificate presented to other agents [default: none]
    #[arg(long, value_name = "FILE")]
    pub peer_tls_cert_file: Option<PathBuf>,
    /// Key of the peer certificate [default: none]
    #[arg(long, value_name = "FILE")]
    pub peer_tls_key_file: Option<PathBuf>,
    /// Peers' certificates must name the node they claim (CN or DNS SAN), on every agent-to-agent call [default: false]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub peer_tls_require_node_name: Option<bool>,
    /// CA of other agents' certificates; with --server-tls-ca-file, also trusted for client certificates [default: none]
    #[arg(long, value_name = "FILE")]
    pub peer_tls_ca_file: Option<PathBuf>,
    /// HTTP API listener; empty disables it [default: 127.0.0.1:8402]
    #[arg(long, value_name = "HOST:PORT")]
    pub http_addr: Option<String>,
    /// When records are acknowledged [default: always]
    #[arg(long, value_enum)]
    pub fsync: Option<FsyncPolicy>,
    /// Largest accepted record value in bytes [default: 1048576]
    #[arg(long, value_name = "BYTES")]
    pub max_record_bytes: Option<u64>,
    /// Store bytes after which a segment rolls [default: 67108864]
    #[arg(long, value_name = "BYTES")]
    pub segment_max_store_bytes: Option<u64>,
    /// Index bytes (8 per record) after which a segment rolls [default: 4194304]
    #[arg(long, value_name = "BYTES")]
    pub segment_max_index_bytes: Option<u64>,
    /// Log level [default: info]
    #[arg(long, value_enum)]
    pub log_level: Option<LogLevel>,
    /// Log format [default: term]
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Allow plaintext on non-loopback addresses [default: false]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub insecure: Option<bool>,
    /// Shared secret that authenticates gossip; required with TLS [default: none]
    #[arg(long, value_name = "FILE")]
    pub gossip_key_file: Option<PathBuf>,
    /// Raft heartbeat interval [default: 100ms]
    #[arg(long, value_name = "DURATION")]
    pub raft_heartbeat_interval: Option<HumanDuration>,
    /// Raft election timeout, at least 5 heartbeats [default: 1s]
    #[arg(long, value_name = "DURATION")]
    pub raft_election_timeout: Option<HumanDuration>,
    /// Connections the RPC port serves at once; at the cap the longest-idle one
    /// makes room, or the new one is refused [default: 1024]
    #[arg(long, value_name = "COUNT")]
    pub max_connections: Option<usize>,
    /// Connections the HTTP port serves at once [default: 256]
    #[arg(long, value_name = "COUNT")]
    pub http_max_connections: Option<usize>,
    /// Calls in progress at once on the RPC port, streams included; more are
    /// refused with RESOURCE_EXHAUSTED [default: 1024]
    #[arg(long, value_name = "COUNT")]
    pub max_concurrent_calls: Option<usize>,
    /// Close connections with no call in progress for this long [default: 10m]
    #[arg(long, value_name = "DURATION")]
    pub idle_timeout: Option<HumanDuration>,
}

impl ConfigLayer {
    /// Parses a TOML config file. An unknown key or a bad value is an error naming
    /// the key.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let layer: Self = toml::from_str(text).map_err(|error| {
            let message = error.message().trim().to_owned();
            let key = message
                .strip_prefix("unknown field `")
                .and_then(|rest| rest.split('`').next())
                .map(str::to_owned)
                .unwrap_or_else(|| key_at(text, error.span()));
            invalid(&key, message)
        })?;
        if layer.config_file.is_some() {
            return Err(invalid("config-file", "cannot be set inside a config file"));
        }
        Ok(layer)
    }

    /// Reads and parses the TOML file at `path`.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| invalid("config-file", format!("cannot read {}: {error}", path.display())))?;
        Self::from_toml(&text)
    }
}

/// The key on the line where a TOML error was found.
fn key_at(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else { return "config-file".to_owned() };
    let start = text[..span.start.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
    let line = &text[start..];
    line.split(['=', '\n'])
        .next()
        .map(str::trim)
        .filter(|key| !key.is_empty())
        .unwrap_or("config-file")
        .to_owned()
}

fn parse_socket_addr(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|_| invalid(key, format!("{text:?} is not an IP:port address")))
}

impl AgentConfig {
    /// Defaults, then `--config-file` (if the flags name one), then the flags;
    /// then validation.
    pub fn load(flags: ConfigLayer) -> Result<Self, ConfigError> {
        let mut config = Self::default();
        let mut bootstrap = None;
        if let Some(path) = &flags.config_file {
            config.apply(ConfigLayer::from_file(path)?, &mut bootstrap)?;
        }
        config.apply(flags, &mut bootstrap)?;
        config.bootstrap = bootstrap.unwrap_or(config.start_join_addrs.is_empty());
        config.validate()?;
        Ok(config)
    }

    fn apply(&mut self, layer: ConfigLayer, bootstrap: &mut Option<bool>) -> Result<(), ConfigError> {
        macro_rules! set {
            ($($field:ident),* $(,)?) => { $( if let Some(value) = layer.$field { self.$field = value; } )* };
        }
        macro_rules! set_optional {
            ($($field:ident),* $(,)?) => { $( if let Some(value) = layer.$field { self.$field = Some(value); } )* };
        }
        set!(data_dir, node_name, rpc_port, start_join_addrs, fsync, max_record_bytes);
        set!(segment_max_store_bytes, segment_max_index_bytes, log_level, log_format, insecure);
        set!(peer_tls_require_node_name);
        set!(max_connections, http_max_connections, max_concurrent_calls);
        set_optional!(
            acl_model_file,
            acl_policy_file,
            server_tls_cert_file,
            server_tls_key_file,
            server_tls_ca_file
        );
        set_optional!(peer_tls_cert_file, peer_tls_key_file, peer_tls_ca_file, gossip_key_file);
        if let Some(value) = layer.bind_addr {
            self.bind_addr = parse_socket_addr("bind-addr", &value)?;
        }
        if let Some(value) = layer.http_addr {
            self.http_addr =
                if value.trim().is_empty() { None } else { Some(parse_socket_addr("http-addr", &value)?) };
        }
        if let Some(value) = layer.raft_heartbeat_interval {
            self.raft_heartbeat_interval = value.0;
        }
        if let Some(value) = layer.raft_election_timeout {
            self.raft_election_timeout = value.0;
        }
        if let Some(value) = layer.idle_timeout {
            self.idle_timeout = value.0;
        }
        if layer.bootstrap.is_some() {
            *bootstrap = layer.bootstrap;
        }
        Ok(())
    }

    /// Rejects contradictions, before anything is written.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_name.trim().is_empty() {
            return Err(invalid("node-name", "must not be empty"));
        }
        if self.max_record_bytes == 0 || self.max_record_bytes > proglog_raft::MAX_RECORD_BYTES {
            return Err(invalid(
                "max-record-bytes",
                format!("must be in 1..={} (the cluster's ceiling)", proglog_raft::MAX_RECORD_BYTES),
            ));
        }
        let log = self.log_config();
        log.validate().map_err(|error| match error {
            proglog_log::Error::InvalidConfig {
                key: key @ ("max-store-bytes" | "max-index-bytes"),
                reason,
            } => invalid(&format!("segment-{key}"), reason),
            proglog_log::Error::InvalidConfig { key, reason } => invalid(key, reason),
            other => invalid("data-dir", other.to_string()),
        })?;
        match (&self.server_tls_cert_file, &self.server_tls_key_file) {
            (Some(_), None) => {
                return Err(invalid("server-tls-key-file", "required with server-tls-cert-file"));
            }
            (None, Some(_)) => {
                return Err(invalid("server-tls-cert-file", "required with server-tls-key-file"));
            }
            (None, None) if self.server_tls_ca_file.is_some() => {
                return Err(invalid(
                    "server-tls-ca-file",
                    "needs server-tls-cert-file and server-tls-key-file",
                ));
            }
            _ => {}
        }
        if self.peer_tls_require_node_name
            && (self.peer_tls_cert_file.is_none() || self.server_tls_ca_file.is_none())
        {
            return Err(invalid(
                "peer-tls-require-node-name",
                "needs peer-tls-cert-file and server-tls-ca-file (peers' certificates are what it checks)",
            ));
        }
        if self.server_tls_cert_file.is_some() && self.gossip_key_file.is_none() {
            return Err(invalid(
                "gossip-key-file",
                "required when TLS is on (gossip must be authenticated too)",
            ));
        }
        match (&self.acl_model_file, &self.acl_policy_file) {
            (Some(_), None) => return Err(invalid("acl-policy-file", "required with acl-model-file")),
            (None, Some(_)) => return Err(invalid("acl-model-file", "required with acl-policy-file")),
            _ => {}
        }
        for (key, file) in [
            ("acl-model-file", &self.acl_model_file),
            ("acl-policy-file", &self.acl_policy_file),
            ("server-tls-cert-file", &self.server_tls_cert_file),
            ("server-tls-key-file", &self.server_tls_key_file),
            ("server-tls-ca-file", &self.server_tls_ca_file),
            ("peer-tls-cert-file", &self.peer_tls_cert_file),
            ("peer-tls-key-file", &self.peer_tls_key_file),
            ("peer-tls-ca-file", &self.peer_tls_ca_file),
            ("gossip-key-file", &self.gossip_key_file),
        ] {
            if let Some(path) = file
                && !path.is_file()
            {
                return Err(invalid(key, format!("{} is not a readable file", path.display())));
            }
        }
        if self.server_tls_cert_file.is_none() && !self.insecure {
            for (key, ip) in
                [("bind-addr", Some(self.bind_addr.ip())), ("http-addr", self.http_addr.map(|a| a.ip()))]
            {
                if let Some(ip) = ip
                    && !ip.is_loopback()
                {
                    return Err(invalid(
                        key,
                        format!("{ip} is not loopback: plaintext there needs --insecure (or TLS)"),
                    ));
                }
            }
        }
        for (key, value) in [
            ("max-connections", self.max_connections),
            ("http-max-connections", self.http_max_connections),
            ("max-concurrent-calls", self.max_concurrent_calls),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be positive"));
            }
        }
        if self.idle_timeout.is_zero() {
            return Err(invalid("idle-timeout", "must be positive"));
        }
        if self.raft_election_timeout < self.raft_heartbeat_interval * 5 {
            return Err(invalid("raft-election-timeout", "must be at least 5 raft-heartbeat-interval"));
        }
        Ok(())
    }

    /// Where clients dial the gRPC service: the bind address's host, `rpc-port`.
    pub fn rpc_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind_addr.ip(), self.rpc_port)
    }

    /// The record log's config. It accepts records up to the cluster's ceiling,
    /// not only up to `max-record-bytes`: that limit is enforced where records
    /// are proposed, and an entry a peer with a higher limit committed must
    /// apply here too.
    pub fn log_config(&self) -> proglog_log::Config {
        proglog_raft::RaftLog::record_log_config(proglog_log::Config {
            max_store_bytes: self.segment_max_store_bytes,
            max_index_bytes: self.segment_max_index_bytes,
            ..proglog_log::Config::default()
        })
    }

    /// How this agent dials other agents: with `peer-tls-cert-file` and
    /// `peer-tls-key-file`, mutual TLS presenting that identity and trusting
    /// `peer-tls-ca-file` and `server-tls-ca-file` (whichever are set) to have
    /// signed the other agents' server certificates; plaintext otherwise.
    pub fn peer_tls(&self) -> Result<proglog_server::PeerTls, proglog_tls::Error> {
        let (Some(cert_file), Some(key_file)) = (&self.peer_tls_cert_file, &self.peer_tls_key_file) else {
            return Ok(proglog_server::PeerTls::Plaintext);
        };
        let mut roots: Vec<PathBuf> = self.peer_tls_ca_file.iter().cloned().collect();
        if let Some(server_ca) = &self.server_tls_ca_file
            && !roots.contains(server_ca)
        {
            roots.push(server_ca.clone());
        }
        let identity = proglog_tls::Identity::new(cert_file, key_file);
        let config = proglog_tls::client_config(&roots, Some(&identity), &[b"h2"])?;
        Ok(if self.peer_tls_require_node_name {
            proglog_server::PeerTls::NamedTls(config)
        } else {
            proglog_server::PeerTls::Tls(config)
        })
    }

    /// TLS for the RPC and HTTP listeners, if configured. With
    /// `server-tls-ca-file`, client certificates are required and may be signed
    /// by that CA or by `peer-tls-ca-file` (other agents dial the same port).
    /// Without it no client certificate is requested, from peers either.
    pub fn server_tls(&self) -> Option<proglog_server::TlsFiles> {
        let mut ca_files: Vec<PathBuf> = self.server_tls_ca_file.iter().cloned().collect();
        if let (Some(_), Some(peer_ca)) = (&self.server_tls_ca_file, &self.peer_tls_ca_file)
            && !ca_files.contains(peer_ca)
        {
            ca_files.push(peer_ca.clone());
        }
        Some(proglog_server::TlsFiles {
            cert_file: self.server_tls_cert_file.clone()?,
            key_file: self.server_tls_key_file.clone()?,
            ca_files,
        })
    }
}
