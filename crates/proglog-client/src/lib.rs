//! `proglog-client`: the client of a proglog cluster (SPEC §8).
//!
//! ```no_run
//! use proglog_client::{Client, Error, LogOptions, Options};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), proglog_client::Error> {
//! // Any member will do as a seed: the client learns the others.
//! let client = Client::connect("proglog://127.0.0.1:8400", Options::default()).await?;
//!
//! // Produce on the leader; the offset comes back once the record is committed.
//! let offset = client.produce("hello").await?;
//! // Many records, pipelined over one ProduceStream: one result per value, in order.
//! for result in client.produce_many(["a", "b", "c"]).await {
//!     println!("appended at {}", result?);
//! }
//!
//! // Consume from a follower (round-robin over them).
//! let record = client.consume(offset).await?;
//! assert_eq!(record.value, "hello");
//!
//! // Follow the log from where it starts, waiting at the end for new records.
//! let range = client.offsets().await?;
//! let mut subscription = client.subscribe(range.lowest);
//! while let Ok(record) = subscription.next().await {
//!     println!("{}: {}", record.offset, String::from_utf8_lossy(&record.value));
//!     # break;
//! }
//!
//! // A named log: its own Raft group, with its own leader.
//! let retention = LogOptions { retention_ms: 7 * 24 * 3600 * 1000, ..LogOptions::default() };
//! match client.create_log("orders", retention).await {
//!     Ok(()) | Err(Error::LogExists { .. }) => {}
//!     Err(error) => return Err(error),
//! }
//! let orders = client.log("orders")?;
//! let offset = orders.produce("order 1").await?;
//! assert_eq!(orders.consume(offset).await?.value, "order 1");
//! for log in client.list_logs().await? {
//!     println!("{:?}: offsets {}..{}", log.name, log.lowest, log.next);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Where calls go
//! [`Client::connect`] takes `proglog://host:port[,host:port...]` (the cluster:
//! the hosts are only seeds) or `host:port` (that one server, for everything).
//! For a cluster, a resolver asks GetServers on connect, then every
//! [`Options::refresh_interval`] and after errors, and keeps one tonic channel
//! per listed server (connected on first use); a [`Picker`] sends produces to the
//! leader and spreads consumes round-robin over the followers (the leader when
//! there are none). Anything else goes to the leader, or any server.
//!
//! # Delivery: exactly once, where the cluster offers it
//! By default ([`Delivery::ExactlyOnce`]) produces are idempotent (SPEC §11):
//! the client takes a producer id from the cluster (`InitProducer`) and numbers
//! its records, so it sends a record whose produce failed again — to the new
//! leader — and the log stores it once. A server without idempotent producers
//! (`InitProducer` unimplemented) gets the at-most-once behaviour below.
//!
//! With [`Delivery::AtMostOnce`], a produce is retried only when the record cannot be in the log: no leader
//! was known, the server refused it saying nothing was appended (not the
//! leader, overloaded, a membership change in progress: the reasons of
//! `proglog_api::error_info::NOTHING_DONE`), or the connection was refused. Those retries wait for a new leader for up to
//! [`Options::failover_timeout`], so a produce issued during a failover lands on
//! the new leader without the caller doing anything.
//!
//! A record that may have reached a leader when something failed (the
//! connection broke, the leader died, the call timed out) has an unknown
//! outcome: [`Error::OutcomeUnknown`]. It may be in the log, or not; reading
//! the log tells. With [`Delivery::AtLeastOnce`] the client sends such records
//! again instead, which can store them twice.
//!
//! Consumes are idempotent: they move on to another server when one is
//! unavailable, and a [`Subscription`] resumes on another server from the
//! next offset it has not delivered (no gap, no duplicate).
//!
//! # Logs
//! A cluster holds the default log and named logs (SPEC §11), each a Raft
//! group of its own whose leader may be another server than the default
//! log's. [`Client::connect`] gives a client of the default log, whose calls
//! name no log (as an old client's); [`Client::log`] gives a client of a named
//! log over the same connections: every call it makes carries the name in the
//! `proglog-log` metadata ([`LOG_METADATA_KEY`]) — GetServers too, so its
//! resolver follows that log's servers and leader, and its produces (and
//! idempotent producers, and consumer positions) go to that log's leader. A
//! named log the cluster does not hold gets its calls sent where the default
//! log's go: a produce creates it where the servers create logs on a first
//! produce (the default), anything else is [`Error::LogNotFound`].
//! [`Client::create_log`], [`Client::delete_log`] and [`Client::list_logs`]
//! name their log in the request instead, and go to the default log's leader
//! (which keeps the catalog of logs), whichever log's client sends them.
//!
//! # What it does not do
//! It holds no records: no client-side batching beyond the produce stream's
//! pipelining, no cache of what was consumed. It does not validate more of a
//! log than its name; the servers decide the rest.

mod logs;
mod picker;
mod produce;
mod subscription;
mod target;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use proglog_api::v1::log_client::LogClient;
use proglog_api::v1::{
    CommitOffsetRequest, ConsumeRequest, FetchOffsetRequest, GetOffsetsRequest, GetServersRequest,
    InitProducerRequest, ProduceRequest, Record, Server,
};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Status};

pub use crate::logs::{LOG_METADATA_KEY, LogInfo, LogOptions, MAX_LOG_NAME_BYTES, validate_log_name};
pub use crate::picker::{Call, Picker};
pub use crate::produce::ProduceStream;
pub use crate::subscription::Subscription;
pub use crate::target::{Authority, Target};

use crate::produce::Outcome;

/// TLS to the servers.
#[derive(Clone)]
pub struct Tls {
    /// The client config (roots, and an identity for mutual TLS), from `proglog_tls`.
    pub config: Arc<rustls::ClientConfig>,
    /// The name server certificates must carry; default: each server's host.
    pub server_name: Option<String>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

/// What happens to a record whose produce failed after it may have reached a
/// leader.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Delivery {
    /// It is sent again, as the same sequence of the client's idempotent
    /// producer: stored exactly once while the client retries (within
    /// [`Options::failover_timeout`]; after that, [`Error::OutcomeUnknown`]).
    /// Falls back to `AtMostOnce` against a server without idempotent
    /// producers.
    #[default]
    ExactlyOnce,
    /// It is reported as [`Error::OutcomeUnknown`]: never stored twice, maybe
    /// not stored at all.
    AtMostOnce,
    /// It is sent again (to the new leader): never lost while the client
    /// retries, maybe stored twice.
    AtLeastOnce,
}

/// How the client connects.
#[derive(Clone, Debug)]
pub struct Options {
    /// TLS, or plaintext when `None`.
    pub tls: Option<Tls>,
    /// TCP (and TLS) handshake timeout per server.
    pub connect_timeout: Duration,
    /// How long a unary call (produce, consume, servers, offsets) may take.
    pub request_timeout: Duration,
    /// How often the server list is refreshed without errors.
    pub refresh_interval: Duration,
    /// How long produces wait for a reachable leader (an election, a dead
    /// leader) and subscriptions for a server to resume on.
    pub failover_timeout: Duration,
    /// What to do with produces of unknown outcome.
    pub delivery: Delivery,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tls: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            refresh_interval: Duration::from_secs(10),
            failover_timeout: Duration::from_secs(10),
            delivery: Delivery::ExactlyOnce,
        }
    }
}

/// What a client call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The address does not parse.
    #[error("invalid address '{addr}': {reason}")]
    InvalidAddress {
        /// The address given.
        addr: String,
        /// Why.
        reason: String,
    },
    /// No server fits the call (no leader is known for a produce).
    #[error("{0}")]
    NoServer(String),
    /// A server's TLS settings are unusable.
    #[error("tls: {0}")]
    Tls(proglog_tls::Error),
    /// The server answered with an error status. For a produce: the record was
    /// not appended.
    #[error("{}", status_text(.0))]
    Status(Status),
    /// No connection to `addr` could be made (refused, timed out, the TLS or
    /// HTTP/2 handshake failed): nothing was sent.
    #[error("cannot connect to {addr}: {}", chain(.cause))]
    Connect {
        /// The server's RPC address.
        addr: String,
        /// Why.
        cause: tonic::transport::Error,
    },
    /// A call to `addr` failed below gRPC: the connection broke, or could not
    /// be made again. A produce that fails so is [`Error::OutcomeUnknown`]
    /// instead, unless the connection was refused.
    #[error("connection to {addr} failed: {}", status_text(.status))]
    Connection {
        /// The server's RPC address.
        addr: String,
        /// The status tonic reported; its sources say why.
        status: Status,
    },
    /// A log name is not one a server accepts (SPEC §11:
    /// `[a-z0-9][a-z0-9._-]{0,127}`): nothing was sent.
    #[error("invalid log name '{name}': {reason}")]
    InvalidLogName {
        /// The name given.
        name: String,
        /// Why.
        reason: String,
    },
    /// The log `name` does not exist (`NOT_FOUND`): a call on a named log the
    /// cluster does not hold (a produce, when the servers do not create logs on
    /// a first produce), or [`Client::delete_log`] of an unknown log. Nothing
    /// was changed.
    #[error("log '{name}' does not exist")]
    LogNotFound {
        /// The log's name.
        name: String,
        /// The server's answer.
        status: Status,
    },
    /// [`Client::create_log`] of a log that exists (`ALREADY_EXISTS`): it was
    /// left as it was.
    #[error("log '{name}' already exists")]
    LogExists {
        /// The log's name.
        name: String,
        /// The server's answer.
        status: Status,
    },
    /// A produce failed after its record may have reached the leader at `addr`
    /// (a broken connection, a dead leader, a timeout): the record may or may
    /// not be in the log. See [`Delivery`].
    #[error("outcome unknown: the record may or may not be in the log ({addr}: {})", status_text(.status))]
    OutcomeUnknown {
        /// The server's RPC address.
        addr: String,
        /// What failed.
        status: Status,
    },
}

// Every variant's message holds its causes, so none is also a `source()`.
impl From<proglog_tls::Error> for Error {
    fn from(error: proglog_tls::Error) -> Self {
        Self::Tls(error)
    }
}

impl Error {
    /// Whether the call failed below gRPC (connecting, TLS, HTTP/2, a broken
    /// connection) rather than being answered by a server.
    pub fn is_transport(&self) -> bool {
        match self {
            Self::Connect { cause, .. } => std::error::Error::source(cause).is_some(),
            Self::Connection { status, .. } | Self::OutcomeUnknown { status, .. } => is_transport(status),
            _ => false,
        }
    }

    /// The kind of the first I/O error among the causes (`ConnectionRefused`:
    /// nobody listens at the address).
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        match self {
            Self::Connect { cause, .. } => io_kind(cause),
            Self::Status(status) | Self::Connection { status, .. } | Self::OutcomeUnknown { status, .. } => {
                io_kind(status)
            }
            _ => None,
        }
    }

    /// The gRPC status behind the error, if there is one.
    pub fn status(&self) -> Option<&Status> {
        match self {
            Self::Status(status)
            | Self::Connection { status, .. }
            | Self::OutcomeUnknown { status, .. }
            | Self::LogNotFound { status, .. }
            | Self::LogExists { status, .. } => Some(status),
            _ => None,
        }
    }
}

/// A status as one line: its message (or its code's description), then the
/// causes of a transport failure.
fn status_text(status: &Status) -> String {
    let message = status.message();
    let text = if message.is_empty() { status.code().description() } else { message };
    with_causes(text.to_owned(), std::error::Error::source(status))
}

/// An error and its causes as one line, `a: b: c`.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    with_causes(error.to_string(), error.source())
}

/// `text`, then each cause from `source` on, skipping a cause whose text it
/// already holds.
fn with_causes(mut text: String, mut source: Option<&(dyn std::error::Error + 'static)>) -> String {
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !cause_text.is_empty() && !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The kind of the first I/O error among the causes of `error`.
fn io_kind(error: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        source = cause.source();
    }
    None
}

/// Whether `status` reports a failure below gRPC (tonic attaches the cause).
fn is_transport(status: &Status) -> bool {
    std::error::Error::source(status).is_some()
}

/// `status` from the call to `addr`, as an [`Error`].
fn call_error(addr: &str, status: Status) -> Error {
    if is_transport(&status) {
        Error::Connection { addr: addr.to_owned(), status }
    } else {
        Error::Status(status)
    }
}

/// The range of offsets a server holds ([`Client::offsets`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    /// The lowest offset still held.
    pub lowest: u64,
    /// The offset the next record will get: one past the highest.
    pub next: u64,
}

impl Offsets {
    /// Whether the log holds no record.
    pub fn is_empty(&self) -> bool {
        self.lowest >= self.next
    }
}

/// What the clients of every log made from one [`Client::connect`] share: where
/// and how to connect, and one channel per server (whichever logs it serves).
struct Shared {
    target: Target,
    options: Options,
    /// The runtime `connect` ran on, which runs the periodic refreshes of the
    /// logs' views (`None` for a single server: nothing to refresh).
    runtime: Option<tokio::runtime::Handle>,
    /// The channel to each server a view lists (and to the seeds), by RPC
    /// address. Nothing awaits under this lock.
    channels: Mutex<HashMap<String, Channel>>,
    /// The view of each log (by name; empty: the default log) while a client
    /// of it lives: one per log, however many times [`Client::log`] names it.
    /// At most one entry per log a live client names: dead ones go when the
    /// next view is added. Locked before a view's `picker`, never after.
    views: Mutex<HashMap<String, Weak<Inner>>>,
}

/// One log's view of the cluster: its servers and its leader (each log is a
/// Raft group of its own), and its idempotent producers.
struct Inner {
    shared: Arc<Shared>,
    /// The log's name; empty for the default log.
    log: String,
    /// The `proglog-log` metadata every call on the log carries (`None` for the
    /// default log: its calls carry none, as an old client's).
    log_metadata: Option<AsciiMetadataValue>,
    /// Where this log's calls go. Nothing awaits under this lock.
    picker: Mutex<Arc<Picker>>,
    /// Whether `picker` holds the log's GetServers answer: a named log's view
    /// starts empty and asks on first use (and, while the cluster does not
    /// hold the log, before each call).
    resolved: AtomicBool,
    /// Idempotent producers not in use (id, next sequence), or none at all:
    /// the cluster has none (`None` once InitProducer was unimplemented).
    producers: Mutex<Option<Vec<(u64, u64)>>>,
}

impl Inner {
    /// A view of `log` (empty: the default log) over `shared`, its name
    /// checked: for a cluster, empty until resolved; for a single server, that
    /// server, as leader.
    fn new(shared: Arc<Shared>, log: &str) -> Result<Self, Error> {
        let log_metadata = if log.is_empty() {
            None
        } else {
            validate_log_name(log)?;
            let value = AsciiMetadataValue::try_from(log).map_err(|_| Error::InvalidLogName {
                name: log.to_owned(),
                reason: "not a gRPC metadata value".into(),
            })?;
            Some(value)
        };
        let (picker, resolved) = if shared.target.cluster {
            (Picker::default(), false)
        } else {
            let servers = shared
                .target
                .seeds
                .iter()
                .map(|seed| Server { id: seed.to_addr(), rpc_addr: seed.to_addr(), is_leader: true })
                .collect();
            (Picker::new(servers), true)
        };
        Ok(Self {
            shared,
            log: log.to_owned(),
            log_metadata,
            picker: Mutex::new(Arc::new(picker)),
            resolved: AtomicBool::new(resolved),
            producers: Mutex::new(Some(Vec::new())),
        })
    }

    fn picker(&self) -> Arc<Picker> {
        Arc::clone(&lock(&self.picker))
    }
}

/// A client of a proglog cluster (or of one server), for one log: the default
/// log, or the one [`Client::log`] named. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("target", &self.inner.shared.target)
            .field("log", &self.inner.log)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A server's gRPC client: every call carries the caller's trace context, and
/// the log's name for a named log.
type Rpc = LogClient<tonic::service::interceptor::InterceptedService<Channel, CallMetadata>>;

/// A server's gRPC client for `channel` whose calls carry `log` as their
/// `proglog-log` metadata (none: the default log, or a call naming its log in
/// its body), taking responses of any size (the server bounds record sizes).
fn log_client(channel: Channel, log: Option<AsciiMetadataValue>) -> Rpc {
    LogClient::with_interceptor(channel, CallMetadata { log }).max_decoding_message_size(usize::MAX)
}

/// Puts the log's name into each call's metadata, and the caller's current
/// OpenTelemetry context (W3C `traceparent`, `tracestate`), through the global
/// propagator: nothing until the program installs one.
#[derive(Clone, Debug)]
struct CallMetadata {
    log: Option<AsciiMetadataValue>,
}

impl tonic::service::Interceptor for CallMetadata {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(log) = &self.log {
            request.metadata_mut().insert(LOG_METADATA_KEY, log.clone());
        }
        let context = opentelemetry::Context::current();
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&context, &mut MetadataInjector(request.metadata_mut()));
        });
        Ok(request)
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl opentelemetry::propagation::Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

fn produce_request(value: Bytes, producer: Option<(u64, u64)>) -> ProduceRequest {
    let (producer_id, sequence) = producer.unwrap_or_default();
    ProduceRequest { record: Some(Record { value, ..Record::default() }), producer_id, sequence }
}

/// Doubles `backoff`, up to 400 ms: how long to wait between failover tries.
fn next_backoff(backoff: Duration) -> Duration {
    (backoff * 2).min(Duration::from_millis(400))
}

const FIRST_BACKOFF: Duration = Duration::from_millis(25);

impl Client {
    /// Connects to `addr`, a client of the default log; for a cluster, learns
    /// its servers from the first seed that answers GetServers. A single
    /// server is dialled on first use.
    pub async fn connect(addr: &str, options: Options) -> Result<Self, Error> {
        let target =
            Target::parse(addr).map_err(|reason| Error::InvalidAddress { addr: addr.to_owned(), reason })?;
        let runtime = if target.cluster { tokio::runtime::Handle::try_current().ok() } else { None };
        let shared = Arc::new(Shared {
            target,
            options,
            runtime,
            channels: Mutex::new(HashMap::new()),
            views: Mutex::new(HashMap::new()),
        });
        let client = Self::view(&shared, "")?;
        if shared.target.cluster {
            client.refresh().await?;
        }
        Ok(client)
    }

    /// The client of log `log` over `shared`: the view a live client of it
    /// has, or a new one (refreshed periodically, for a cluster).
    fn view(shared: &Arc<Shared>, log: &str) -> Result<Self, Error> {
        let inner = {
            let mut views = lock(&shared.views);
            if let Some(inner) = views.get(log).and_then(Weak::upgrade) {
                return Ok(Self { inner });
            }
            let inner = Arc::new(Inner::new(Arc::clone(shared), log)?);
            views.retain(|_, view| view.strong_count() > 0);
            views.insert(log.to_owned(), Arc::downgrade(&inner));
            inner
        };
        if let Some(runtime) = &shared.runtime {
            runtime.spawn(refresh_periodically(Arc::downgrade(&inner), shared.options.refresh_interval));
        }
        Ok(Self { inner })
    }

    /// How long produces wait for a leader: `failover_timeout` for a cluster;
    /// a single server has no other leader to wait for.
    fn leader_patience(&self) -> Duration {
        let shared = &self.inner.shared;
        if shared.target.cluster { shared.options.failover_timeout } else { Duration::ZERO }
    }

    /// The options the client was made with.
    pub fn options(&self) -> &Options {
        &self.inner.shared.options
    }

    /// Asks the known servers (this log's, then other logs', then the seeds)
    /// for this log's servers, and picks from the first answer that names a
    /// leader (or else the first answer). A named log the servers do not hold
    /// (`NOT_FOUND`) is given the default log's servers: a produce goes to the
    /// default log's leader, which creates the log if the cluster creates logs
    /// on a first produce. A single-server client has nothing to refresh.
    pub async fn refresh(&self) -> Result<(), Error> {
        let shared = &self.inner.shared;
        if !shared.target.cluster {
            return Ok(());
        }
        let mut candidates: Vec<String> =
            self.inner.picker().servers().iter().map(|s| s.rpc_addr.clone()).collect();
        for view in self.other_views() {
            candidates.extend(view.picker().servers().iter().map(|server| server.rpc_addr.clone()));
        }
        candidates.extend(shared.target.seeds.iter().map(Authority::to_addr));
        let mut asked = std::collections::HashSet::new();
        candidates.retain(|addr| asked.insert(addr.clone()));

        let mut last = Error::NoServer("no server to ask for the cluster's servers".into());
        let mut leaderless = None;
        let mut unknown_at = None;
        for addr in candidates {
            let mut client = match self.channel(&addr).await {
                Ok(channel) => self.rpc(channel),
                Err(error) => {
                    last = error;
                    continue;
                }
            };
            match self.unary(&addr, client.get_servers(GetServersRequest {})).await {
                Ok(response) => {
                    let servers = response.servers;
                    if servers.iter().any(|server| server.is_leader) {
                        self.replace_servers(servers, true);
                        return Ok(());
                    }
                    // A server that knows no leader (an election, a lagging node):
                    // ask the others, keep this answer if none knows better.
                    if leaderless.is_none() && !servers.is_empty() {
                        leaderless = Some(servers);
                    }
                }
                // A node that has not applied the log's creation yet may say
                // so while the others know it: ask them too.
                Err(error @ Error::LogNotFound { .. }) => {
                    unknown_at.get_or_insert(addr);
                    last = error;
                }
                Err(error) => last = error,
            }
        }
        if let Some(servers) = leaderless {
            self.replace_servers(servers, true);
            return Ok(());
        }
        let Some(addr) = unknown_at else { return Err(last) };
        let mut client = log_client(self.channel(&addr).await?, None);
        let servers = self.unary_any(&addr, client.get_servers(GetServersRequest {})).await?.servers;
        if servers.is_empty() {
            return Err(last);
        }
        // Until the log exists, each call asks again first: the call after the
        // produce that created it goes to its own leader.
        self.replace_servers(servers, false);
        Ok(())
    }

    /// The views of the other logs that live clients use.
    fn other_views(&self) -> Vec<Arc<Inner>> {
        lock(&self.inner.shared.views)
            .iter()
            .filter(|(log, _)| **log != self.inner.log)
            .filter_map(|(_, view)| view.upgrade())
            .collect()
    }

    /// Picks from `servers` from now on (`resolved`: the log's own), and drops
    /// the channels to servers no log's view lists any longer (a seed's stays:
    /// refreshes may ask it).
    fn replace_servers(&self, servers: Vec<Server>, resolved: bool) {
        {
            let mut picker = lock(&self.inner.picker);
            *picker = Arc::new(Picker::succeeding(&picker, servers));
        }
        self.inner.resolved.store(resolved, Ordering::Release);
        let shared = &self.inner.shared;
        let mut listed: Vec<String> = shared.target.seeds.iter().map(Authority::to_addr).collect();
        listed.extend(self.inner.picker().servers().iter().map(|server| server.rpc_addr.clone()));
        for view in self.other_views() {
            listed.extend(view.picker().servers().iter().map(|server| server.rpc_addr.clone()));
        }
        lock(&shared.channels).retain(|addr, _| listed.contains(addr));
    }

    /// The channel to `addr`. The first use connects (so a server that cannot
    /// be reached is reported as [`Error::Connect`]: nothing was sent); the
    /// channel then reconnects by itself after failures.
    async fn channel(&self, addr: &str) -> Result<Channel, Error> {
        let shared = &self.inner.shared;
        if let Some(channel) = lock(&shared.channels).get(addr) {
            return Ok(channel.clone());
        }
        let options = &shared.options;
        let connector = match &options.tls {
            None => proglog_tls::Connector::plaintext(),
            Some(tls) => {
                let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
                let name =
                    tls.server_name.as_deref().unwrap_or(host.trim_start_matches('[').trim_end_matches(']'));
                proglog_tls::Connector::tls(Arc::clone(&tls.config), name)?
            }
        };
        let endpoint = connector
            .endpoint(addr)?
            .connect_timeout(options.connect_timeout)
            // A server that vanished without closing the connection (a
            // partition, a dead host) is noticed by the missing PING answers.
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10));
        let channel = connector
            .connect(&endpoint)
            .await
            .map_err(|cause| Error::Connect { addr: addr.to_owned(), cause })?;
        // Two first uses at once both connect; the first one stored wins.
        Ok(lock(&shared.channels).entry(addr.to_owned()).or_insert(channel).clone())
    }

    /// A gRPC client over `channel` for this log's calls.
    fn rpc(&self, channel: Channel) -> Rpc {
        log_client(channel, self.inner.log_metadata.clone())
    }

    /// The RPC address of the server the picker chooses now for `call`. A
    /// named log's client learns its servers on its first call (or
    /// [`Client::refresh`]): until then, none is known.
    pub fn address_for(&self, call: Call) -> Result<String, Error> {
        let picker = self.inner.picker();
        picker.pick(call).map(|server| server.rpc_addr.clone()).ok_or_else(|| {
            Error::NoServer(match call {
                Call::Produce => "no leader is known".into(),
                _ => "no server is known".into(),
            })
        })
    }

    /// Learns the log's servers if it never did (a new named log's client, or
    /// one of a log the cluster did not hold when it last asked).
    async fn resolve(&self) -> Result<(), Error> {
        if self.inner.resolved.load(Ordering::Acquire) { Ok(()) } else { self.refresh().await }
    }

    /// The address picked for `call` and a gRPC client for it.
    async fn pick(&self, call: Call) -> Result<(String, Rpc), Error> {
        self.resolve().await?;
        let addr = self.address_for(call)?;
        let client = self.rpc(self.channel(&addr).await?);
        Ok((addr, client))
    }

    /// `status` from a call on this log to `addr`, as an [`Error`]: for a
    /// named log, `NOT_FOUND` is [`Error::LogNotFound`].
    fn call_error(&self, addr: &str, status: Status) -> Error {
        self.log_error(call_error(addr, status))
    }

    fn log_error(&self, error: Error) -> Error {
        match error {
            Error::Status(status) if status.code() == Code::NotFound && !self.inner.log.is_empty() => {
                Error::LogNotFound { name: self.inner.log.clone(), status }
            }
            error => error,
        }
    }

    /// Runs a unary call on this log to `addr` within the request timeout.
    async fn unary<T>(
        &self,
        addr: &str,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, Error> {
        self.unary_any(addr, call).await.map_err(|error| self.log_error(error))
    }

    /// Runs a unary call to `addr` within the request timeout (a call that
    /// names its log in its body: `NOT_FOUND` stays a status).
    async fn unary_any<T>(
        &self,
        addr: &str,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.inner.shared.options.request_timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(call_error(addr, status)),
            Err(_elapsed) => Err(Error::Connection {
                addr: addr.to_owned(),
                status: Status::deadline_exceeded("no answer within the request timeout"),
            }),
        }
    }

    /// Appends `value` on the leader; its offset once committed. See the crate
    /// docs for what is retried: while no leader is reachable it waits for one
    /// (up to `failover_timeout`).
    pub async fn produce(&self, value: impl Into<Bytes>) -> Result<u64, Error> {
        let value = value.into();
        let deadline = tokio::time::Instant::now() + self.leader_patience();
        let mut backoff = FIRST_BACKOFF;
        // An idempotent producer for this call alone (its sequences stay in
        // order): back to the pool after, unless its last sequence's fate is unknown.
        let mut producer = None;
        loop {
            let (addr, error) = match self.take_producer(&mut producer).await {
                Err(error) => (None, error),
                Ok(()) => match self.pick(Call::Produce).await {
                    Ok((addr, mut client)) => {
                        let request = produce_request(value.clone(), producer);
                        match self.unary(&addr, client.produce(request)).await {
                            Ok(response) => {
                                self.give_back(producer.map(|(id, sequence)| (id, sequence + 1)));
                                return Ok(response.offset);
                            }
                            Err(error) => (Some(addr), error),
                        }
                    }
                    Err(error) => (None, error),
                },
            };
            let outcome = Outcome::of(&error);
            let retry = match outcome {
                Outcome::NotAppended => true,
                Outcome::Unknown => producer.is_some() || self.options().delivery == Delivery::AtLeastOnce,
                Outcome::Refused => false,
            };
            if !retry || tokio::time::Instant::now() >= deadline {
                if outcome != Outcome::Unknown && !is_out_of_order(&error) {
                    self.give_back(producer); // not appended: its sequence serves the next record
                }
                return Err(produce::settle(addr.as_deref(), error));
            }
            tokio::time::sleep(backoff).await;
            backoff = next_backoff(backoff);
            let _ = self.refresh().await;
        }
    }

    /// Makes sure `producer` holds an idempotent producer when the client
    /// delivers exactly once and the cluster has them: one from the pool, or a
    /// new one (InitProducer). Without them it stays `None`.
    async fn take_producer(&self, producer: &mut Option<(u64, u64)>) -> Result<(), Error> {
        if producer.is_some() || self.options().delivery != Delivery::ExactlyOnce {
            return Ok(());
        }
        {
            let mut pool = lock(&self.inner.producers);
            match pool.as_mut() {
                None => return Ok(()),
                Some(idle) => {
                    if let Some(idle) = idle.pop() {
                        *producer = Some(idle);
                        return Ok(());
                    }
                }
            }
        }
        *producer = self.new_producer().await?.map(|id| (id, 0));
        Ok(())
    }

    /// A new idempotent producer id from the cluster; `None` (for good) if it
    /// has none.
    pub(crate) async fn new_producer(&self) -> Result<Option<u64>, Error> {
        let (addr, mut client) = self.pick(Call::Produce).await?;
        match self.unary(&addr, client.init_producer(InitProducerRequest {})).await {
            Ok(response) => Ok(Some(response.producer_id)),
            Err(Error::Status(status)) if status.code() == Code::Unimplemented => {
                *lock(&self.inner.producers) = None;
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    /// Returns an idempotent producer (and its next sequence) to the pool.
    fn give_back(&self, producer: Option<(u64, u64)>) {
        let mut pool = lock(&self.inner.producers);
        if let (Some(producer), Some(idle)) = (producer, pool.as_mut()) {
            idle.push(producer);
        }
    }

    /// Appends `values` in order over one ProduceStream to the leader
    /// (pipelined); one result per value, in order. See
    /// [`Client::produce_stream`] for failover; an error that ends the stream
    /// is the last result, and values after it have none.
    pub async fn produce_many<V: Into<Bytes> + 'static>(
        &self,
        values: impl IntoIterator<Item = V>,
    ) -> Vec<Result<u64, Error>> {
        let values: Vec<Bytes> = values.into_iter().map(Into::into).collect();
        let mut stream = self.produce_stream(tokio_stream::iter(values));
        let mut results = Vec::new();
        while let Some(result) = stream.next().await {
            results.push(result);
        }
        results
    }

    /// Appends the values of `values` as they come, pipelined over a
    /// ProduceStream to the leader; the returned stream yields one result per
    /// value, in order. When the leader fails, values not yet sent (and those
    /// that cannot have been appended) go to the new leader once it is known;
    /// values in flight get [`Error::OutcomeUnknown`] (or are sent again with
    /// [`Delivery::AtLeastOnce`]). A value the server refuses (too large)
    /// gets its error and the stream goes on; any other error ends it.
    pub fn produce_stream<S, V>(&self, values: S) -> ProduceStream
    where
        S: tokio_stream::Stream<Item = V> + Send + 'static,
        V: Into<Bytes> + 'static,
    {
        ProduceStream::start(self.clone(), values)
    }

    /// Reads the record at `offset` from a follower (in turn), trying another
    /// server if one is unavailable. The read is local to the server that
    /// answers: a follower may not have a record acknowledged a moment ago yet
    /// (`OUT_OF_RANGE`); [`Client::consume_linearizable`] waits for it.
    pub async fn consume(&self, offset: u64) -> Result<Record, Error> {
        self.read(ConsumeRequest { offset, linearizable: false }).await
    }

    /// Reads the record at `offset` as [`Client::consume`] does, but only once
    /// the server that answers has every record acknowledged before the call
    /// (Raft ReadIndex: it costs the leader a heartbeat round).
    pub async fn consume_linearizable(&self, offset: u64) -> Result<Record, Error> {
        self.read(ConsumeRequest { offset, linearizable: true }).await
    }

    async fn read(&self, request: ConsumeRequest) -> Result<Record, Error> {
        let response = self
            .on_some_server(Call::Consume, move |mut client| async move { client.consume(request).await })
            .await?;
        response.record.ok_or_else(|| Error::Status(Status::internal("no record")))
    }

    /// Runs a call that changes nothing on the server picked for `kind`, and
    /// again on the next one picked (after a refresh) while the one tried is
    /// gone or cannot answer: at most once per server.
    async fn on_some_server<T, Fut>(&self, kind: Call, call: impl Fn(Rpc) -> Fut) -> Result<T, Error>
    where
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.resolve().await?;
        let attempts = self.inner.picker().servers().len().max(1);
        let mut last = None;
        for _ in 0..attempts {
            let (addr, client) = self.pick(kind).await?;
            match self.unary(&addr, call(client)).await {
                Ok(response) => return Ok(response),
                Err(error) if subscription::resumable(&error) => {
                    let _ = self.refresh().await;
                    last = Some(error);
                }
                Err(error) => return Err(error),
            }
        }
        Err(last.unwrap_or_else(|| Error::NoServer("no server answered".into())))
    }

    /// Follows the log from `offset` on, record after record, waiting at the end
    /// for new ones (a ConsumeStream on a follower). When its server goes away,
    /// it resumes on another from the next offset it has not delivered: no gap,
    /// no duplicate.
    pub fn subscribe(&self, offset: u64) -> Subscription {
        Subscription::new(self.clone(), offset)
    }

    /// The cluster's servers, as the leader (or any server) reports them;
    /// asked of another server if that one is gone.
    pub async fn servers(&self) -> Result<Vec<Server>, Error> {
        let call = |mut client: Rpc| async move { client.get_servers(GetServersRequest {}).await };
        Ok(self.on_some_server(Call::Other, call).await?.servers)
    }

    /// The range of offsets the log holds, as the leader (or, without one, any
    /// server) has it now; asked of another server if that one is gone.
    pub async fn offsets(&self) -> Result<Offsets, Error> {
        let call = |mut client: Rpc| async move { client.get_offsets(GetOffsetsRequest {}).await };
        let response = self.on_some_server(Call::Other, call).await?;
        Ok(Offsets { lowest: response.lowest, next: response.next })
    }

    /// Commits consumer group `group`'s position — the offset of the next
    /// record it will process — on the leader (SPEC §11 CommitOffset),
    /// resending while the cluster elects one: committing a position twice
    /// stores it once.
    pub async fn commit_offset(&self, group: &str, offset: u64) -> Result<(), Error> {
        let request = CommitOffsetRequest { group: group.to_owned(), offset };
        let deadline = tokio::time::Instant::now() + self.leader_patience();
        let mut backoff = FIRST_BACKOFF;
        loop {
            let error = match self.pick(Call::Produce).await {
                Ok((addr, mut client)) => {
                    match self.unary(&addr, client.commit_offset(request.clone())).await {
                        Ok(_) => return Ok(()),
                        Err(error) => error,
                    }
                }
                Err(error) => error,
            };
            let retry = matches!(&error, Error::NoServer(_)) || subscription::resumable(&error);
            if !retry || tokio::time::Instant::now() >= deadline {
                return Err(error);
            }
            tokio::time::sleep(backoff).await;
            backoff = next_backoff(backoff);
            let _ = self.refresh().await;
        }
    }

    /// The position consumer group `group` committed last (`None`: never), as
    /// of the call (a linearizable read on any server).
    pub async fn fetch_offset(&self, group: &str) -> Result<Option<u64>, Error> {
        let request = FetchOffsetRequest { group: group.to_owned() };
        let (addr, mut client) = self.pick(Call::Other).await?;
        let response = self.unary(&addr, client.fetch_offset(request)).await?;
        Ok(response.found.then_some(response.offset))
    }

    /// Follows the log for consumer group `group`: from the position it
    /// committed last (or, if it never did, from the lowest offset the log
    /// holds). [`Subscription::commit`] commits what it delivered; with
    /// [`Subscription::commit_every`] it commits as it goes.
    pub async fn subscribe_group(&self, group: &str) -> Result<Subscription, Error> {
        let start = match self.fetch_offset(group).await? {
            Some(position) => position,
            None => self.offsets().await?.lowest,
        };
        Ok(Subscription::new(self.clone(), start).for_group(group))
    }
}

/// Whether `error` refused an idempotent record as out of order (the
/// producer's sequences no longer match the log's: it is not used again).
fn is_out_of_order(error: &Error) -> bool {
    use proglog_api::error_info::{DOMAIN, OUT_OF_ORDER_SEQUENCE};
    use tonic_types::StatusExt;
    error.status().is_some_and(|status| {
        status.code() == Code::FailedPrecondition
            && status
                .get_error_details()
                .error_info()
                .is_some_and(|info| info.domain == DOMAIN && info.reason == OUT_OF_ORDER_SEQUENCE)
    })
}

/// Whether `status` is a server's refusal after which nothing was appended: not
/// the leader, or a refusal that passes (overloaded, a membership change) —
/// the same request may be sent again without risking a duplicate.
fn nothing_done(status: &Status) -> bool {
    use proglog_api::error_info::{DOMAIN, NOTHING_DONE};
    use tonic_types::StatusExt;
    status.code() == Code::Unavailable
        && status
            .get_error_details()
            .error_info()
            .is_some_and(|info| info.domain == DOMAIN && NOTHING_DONE.contains(&info.reason.as_str()))
}

/// Refreshes the server list every `interval` while the client lives.
async fn refresh_periodically(inner: Weak<Inner>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(inner) = inner.upgrade() else { return };
        let _ = Client { inner }.refresh().await;
    }
}
