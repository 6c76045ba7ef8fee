//! `AgentConfig`: every key of SPEC §3, from defaults, a TOML file and flags (in
//! that order of precedence, lowest first), validated before anything is written.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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

/// `host:port`, the host a DNS name or an IP address (IPv6 in brackets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    /// The name or address, without brackets.
    pub host: String,
    /// The port.
    pub port: u16,
}

impl HostPort {
    /// The host as an IP address, if it is one.
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        self.host.parse().ok()
    }

    /// `host` and `port` as `host:port` (IPv6 in brackets).
    pub fn join(host: &str, port: u16) -> String {
        if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
    }
}

impl std::str::FromStr for HostPort {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not host:port (a name or an IP address, and a port)");
        let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
        let port = port.parse().map_err(|_| bad())?;
        let host = match host.strip_prefix('[').and_then(|host| host.strip_suffix(']')) {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?.to_string(),
            None => host.to_owned(),
        };
        let name = host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
        if host.is_empty() || !(name || host.parse::<std::net::IpAddr>().is_ok()) {
            return Err(bad());
        }
        Ok(Self { host, port })
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&Self::join(&self.host, self.port))
    }
}

impl Serialize for HostPort {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// An address to listen on, or none: written `""` in flags and files, it turns
/// the listener off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionalAddr(pub Option<SocketAddr>);

impl std::str::FromStr for OptionalAddr {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Self(None));
        }
        text.parse().map(|addr| Self(Some(addr))).map_err(|_| format!("{text:?} is not an IP:port address"))
    }
}

impl std::fmt::Display for OptionalAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => write!(f, "{addr}"),
            None => Ok(()),
        }
    }
}

/// An optional value as its text (absent when `None`).
fn display_option<T: std::fmt::Display, S: serde::Serializer>(
    value: &Option<T>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => serializer.collect_str(value),
        None => serializer.serialize_none(),
    }
}

impl Serialize for OptionalAddr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The agent's whole configuration (SPEC §3): its own keys, the log's
/// ([`proglog_raft::Settings`]) and serving's ([`proglog_server::Settings`]).
/// Each key is declared once, as a field of the layer that uses it, with its
/// rule in that layer's `validate()` and its default in that layer's
/// `Default`; the flags, the TOML keys and `--help` (defaults included) derive
/// from those fields.
#[derive(Clone, Debug, PartialEq, Parser, Serialize)]
#[serde(rename_all = "kebab-case")]
#[command(
    name = "proglog-agent",
    version,
    about = "Runs a proglog node: a commit log served over gRPC and HTTP.",
    max_term_width = 100
)]
pub struct AgentConfig {
    /// TOML config file with the same keys as these flags; flags override it
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
    /// Log and Raft data directory
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Unique, stable node id (default: the host name)
    #[arg(long, value_name = "NAME")]
    pub node_name: String,
    /// Gossip (UDP) address; its host (a name or an IP) is also the RPC host
    #[arg(long, value_name = "HOST:PORT")]
    pub bind_addr: HostPort,
    /// gRPC port for clients and agents
    #[arg(long, value_name = "PORT")]
    pub rpc_port: u16,
    /// Gossip addresses (host:port, names resolved at every attempt) of cluster
    /// members, comma-separated or repeated (default: none)
    #[arg(long, value_name = "ADDRS", value_delimiter = ',')]
    pub start_join_addrs: Vec<HostPort>,
    /// Host (a name or an IP) other agents and clients use to reach this node's
    /// RPC and gossip ports, e.g. a pod's stable DNS name (default: the bound host)
    #[arg(long, value_name = "HOST")]
    pub advertise_addr: Option<String>,
    /// Start a new cluster with this node (default: true iff start-join-addrs names
    /// no node but this one)
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub bootstrap: Option<bool>,
    /// HTTP API listener (JSON records, /metrics, /healthz, /readyz); "" disables it
    #[arg(long, value_name = "HOST:PORT")]
    pub http_addr: OptionalAddr,
    /// Log level
    #[arg(long, value_enum)]
    pub log_level: LogLevel,
    /// Log format
    #[arg(long, value_enum)]
    pub log_format: LogFormat,
    /// Allow plaintext on non-loopback addresses
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub insecure: bool,
    /// Shared secret that authenticates gossip; required with TLS (default: none)
    #[arg(long, value_name = "FILE")]
    pub gossip_key_file: Option<PathBuf>,
    /// OTLP/gRPC collector for traces, e.g. http://127.0.0.1:4317; https trusts
    /// server-tls-ca-file and peer-tls-ca-file (default: none: tracing off)
    #[arg(long, value_name = "URL")]
    #[serde(serialize_with = "display_option")]
    pub otlp_endpoint: Option<crate::Collector>,
    /// Share of requests without a sampled incoming traceparent that start a
    /// trace, 0 to 1 (a sampled traceparent is always followed)
    #[arg(long, value_name = "RATIO")]
    pub trace_sample_ratio: f64,
    /// A produce to a log that does not exist creates it, with the default
    /// retention, for a caller the ACL allows admin on its name (SPEC §11);
    /// false: NOT_FOUND until CreateLog
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub auto_create_logs: bool,
    /// The log: fsync, record and segment sizes, Raft timing.
    #[command(flatten)]
    #[serde(flatten)]
    pub log: proglog_raft::Settings,
    /// Serving: ACL, TLS, connection and call bounds.
    #[command(flatten)]
    #[serde(flatten)]
    pub serving: proglog_server::Settings,
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
        Self {
            config_file: None,
            data_dir: PathBuf::from("./proglog-data"),
            node_name: host_name(),
            bind_addr: HostPort { host: "127.0.0.1".into(), port: 8401 },
            rpc_port: 8400,
            start_join_addrs: Vec::new(),
            advertise_addr: None,
            bootstrap: None,
            http_addr: OptionalAddr(Some(SocketAddr::from(([127, 0, 0, 1], 8402)))),
            log_level: LogLevel::Info,
            log_format: LogFormat::Term,
            insecure: false,
            gossip_key_file: None,
            otlp_endpoint: None,
            trace_sample_ratio: 0.01,
            auto_create_logs: true,
            log: proglog_raft::Settings::default(),
            serving: proglog_server::Settings::default(),
        }
    }
}

/// Why [`AgentConfig::load`] returned no config.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// `--help` or `--version`: print this and exit 0.
    #[error("{0}")]
    Exit(String),
    /// Bad flags or config: print it and exit 2.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

impl AgentConfig {
    /// The command line, with each key's default taken from [`Default`].
    pub fn command() -> clap::Command {
        let defaults = toml::Table::try_from(Self::default()).unwrap_or_default();
        defaults.into_iter().fold(<Self as clap::CommandFactory>::command(), |command, (key, value)| {
            match toml_text(&value) {
                Some(text) => {
                    command.mut_arg(key.replace('-', "_"), |arg| arg.default_value(text).required(false))
                }
                None => command,
            }
        })
    }

    /// Defaults, then the TOML file `--config-file` names (if any), then the
    /// rest of the flags in `args` (the first is the program's name); then
    /// every layer's rules. A key of the file takes the same values as its flag,
    /// checked by the same parser.
    pub fn load<I, T>(args: I) -> Result<Self, LoadError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString>,
    {
        let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        let command = Self::command();
        let matches = command.clone().try_get_matches_from(&args).map_err(from_clap)?;
        let program = args.first().cloned().unwrap_or_else(|| "proglog-agent".into());
        let matches = match matches.get_one::<PathBuf>("config_file") {
            None => matches,
            Some(path) => {
                let file = file_args(&command, &matches, path)?;
                // The file's values alone first, so that an error says where it is.
                command.clone().try_get_matches_from(std::iter::once(&program).chain(&file)).map_err(
                    |error| {
                        let ConfigError { key, reason } = from_clap(error).into_invalid();
                        invalid(&key, format!("{reason} (in {})", path.display()))
                    },
                )?;
                let rest = args.iter().skip(1);
                command
                    .try_get_matches_from(std::iter::once(&program).chain(&file).chain(rest))
                    .map_err(from_clap)?
            }
        };
        let config = <Self as clap::FromArgMatches>::from_arg_matches(&matches).map_err(from_clap)?;
        config.validate()?;
        Ok(config)
    }

    /// Whether this node starts a new cluster: `bootstrap` if set, else iff it
    /// has no join addresses but its own (see [`Self::join_addrs`]).
    pub fn bootstrap(&self) -> bool {
        self.bootstrap.unwrap_or_else(|| self.join_addrs().next().is_none())
    }

    /// The join addresses that name another node: an entry with this node's
    /// advertised host and gossip port is itself, and joining oneself means
    /// nothing. So every node of a cluster can be given the same list (a
    /// StatefulSet names pod 0 to all its pods), and the one it names bootstraps.
    pub fn join_addrs(&self) -> impl Iterator<Item = &HostPort> {
        let own = (self.advertised_host(), self.bind_addr.port);
        self.start_join_addrs
            .iter()
            .filter(move |addr| !(addr.port == own.1 && addr.host.eq_ignore_ascii_case(own.0)))
    }

    /// Rejects contradictions, before anything is written: the log's and
    /// serving's rules, then those between the agent's keys and theirs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let layer = |error: proglog_raft::InvalidSetting| invalid(error.key, error.reason);
        if self.node_name.trim().is_empty() {
            return Err(invalid("node-name", "must not be empty"));
        }
        self.log.validate().map_err(layer)?;
        self.serving.validate().map_err(layer)?;
        proglog_server::check_readable("gossip-key-file", self.gossip_key_file.as_deref()).map_err(layer)?;
        if self.serving.server_tls_cert_file.is_some() && self.gossip_key_file.is_none() {
            return Err(invalid(
                "gossip-key-file",
                "required when TLS is on (gossip must be authenticated too)",
            ));
        }
        if !(0.0..=1.0).contains(&self.trace_sample_ratio) {
            return Err(invalid("trace-sample-ratio", "must be between 0 and 1"));
        }
        if self.otlp_endpoint.as_ref().is_some_and(|collector| collector.tls)
            && self.collector_roots().is_empty()
        {
            return Err(invalid(
                "otlp-endpoint",
                "https needs a CA to trust: server-tls-ca-file or peer-tls-ca-file",
            ));
        }
        if let Some(ip) = self.bind_addr.ip() {
            self.check_plaintext("bind-addr", ip)?;
        }
        if let Some(addr) = self.http_addr.0 {
            self.check_plaintext("http-addr", addr.ip())?;
        }
        if let Some(host) = &self.advertise_addr {
            HostPort::join(host, 1).parse::<HostPort>().map_err(|_| {
                invalid("advertise-addr", format!("{host:?} is not a host name or an IP address"))
            })?;
        } else if self.bind_addr.ip().is_some_and(|ip| ip.is_unspecified()) {
            return Err(invalid(
                "advertise-addr",
                format!(
                    "required with bind-addr {}: others cannot dial an unspecified address",
                    self.bind_addr
                ),
            ));
        }
        Ok(())
    }

    /// Plaintext on a non-loopback address needs `--insecure` (or TLS).
    pub fn check_plaintext(&self, key: &str, ip: std::net::IpAddr) -> Result<(), ConfigError> {
        if self.serving.server_tls_cert_file.is_none() && !self.insecure && !ip.is_loopback() {
            return Err(invalid(
                key,
                format!("{ip} is not loopback: plaintext there needs --insecure (or TLS)"),
            ));
        }
        Ok(())
    }

    /// The host others reach this node by: `advertise-addr`, else the bound host.
    pub fn advertised_host(&self) -> &str {
        self.advertise_addr.as_deref().unwrap_or(&self.bind_addr.host)
    }

    /// The CAs an `https` collector's certificate may be signed by.
    pub fn collector_roots(&self) -> Vec<PathBuf> {
        let serving = &self.serving;
        serving.server_tls_ca_file.iter().chain(&serving.peer_tls_ca_file).cloned().collect()
    }

    /// Where clients dial the gRPC service: the advertised host, `rpc-port`.
    pub fn rpc_addr(&self) -> String {
        HostPort::join(self.advertised_host(), self.rpc_port)
    }
}

impl LoadError {
    fn into_invalid(self) -> ConfigError {
        match self {
            Self::Invalid(error) => error,
            Self::Exit(text) => invalid("config-file", text),
        }
    }
}

/// A clap error as a [`LoadError`]: help and version are not errors; anything
/// else names the flag it concerns, without its dashes.
fn from_clap(error: clap::Error) -> LoadError {
    use clap::error::{ContextKind, ContextValue};
    if !error.use_stderr() {
        return LoadError::Exit(error.render().to_string());
    }
    let key = match error.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => {
            arg.trim_start_matches('-').split([' ', '=']).next().unwrap_or_default().to_owned()
        }
        _ => "arguments".to_owned(),
    };
    let rendered = error.to_string();
    let reason = rendered.lines().next().unwrap_or("invalid arguments").trim_start_matches("error: ");
    LoadError::Invalid(invalid(&key, reason))
}

/// The keys of the TOML file at `path` as flags (`--key=value`), leaving out
/// those the command line sets. An unknown key, or one that is not a value, is
/// an error naming it.
fn file_args(
    command: &clap::Command,
    matches: &clap::ArgMatches,
    path: &Path,
) -> Result<Vec<std::ffi::OsString>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| invalid("config-file", format!("cannot read {}: {error}", path.display())))?;
    let table: toml::Table = text.parse().map_err(|error: toml::de::Error| {
        invalid(&key_at(&text, error.span()), format!("{} (in {})", error.message().trim(), path.display()))
    })?;
    let mut args = Vec::new();
    for (key, value) in table {
        let id = key.replace('-', "_");
        if key == "config-file" {
            return Err(invalid(&key, "cannot be set inside a config file"));
        }
        if !command.get_arguments().any(|arg| arg.get_long() == Some(key.as_str())) {
            return Err(invalid(&key, format!("unknown key (in {})", path.display())));
        }
        if matches.value_source(&id) == Some(clap::parser::ValueSource::CommandLine) {
            continue;
        }
        let values = match &value {
            toml::Value::Array(items) => items.iter().map(toml_text).collect::<Option<Vec<_>>>(),
            scalar => toml_text(scalar).map(|text| vec![text]),
        };
        let values = values.ok_or_else(|| {
            invalid(&key, format!("must be a string, number or boolean (in {})", path.display()))
        })?;
        args.extend(values.into_iter().map(|text| format!("--{key}={text}").into()));
    }
    Ok(args)
}

/// A TOML scalar as its flag's text; `None` for arrays, tables and dates.
fn toml_text(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(text) => Some(text.clone()),
        toml::Value::Integer(number) => Some(number.to_string()),
        toml::Value::Float(number) => Some(number.to_string()),
        toml::Value::Boolean(flag) => Some(flag.to_string()),
        _ => None,
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
