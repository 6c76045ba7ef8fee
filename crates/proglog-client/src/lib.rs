//! `proglog-client`: the client of a proglog cluster (SPEC §8).
//!
//! [`Client::connect`] takes `proglog://host:port[,host:port...]` (the cluster:
//! the hosts are seeds) or `host:port` (that one server). For a cluster, a
//! resolver asks GetServers, keeps one channel per server and refreshes the list
//! periodically and on errors; a [`Picker`] sends produces to the leader and
//! spreads consumes round-robin over the followers (the leader when there are
//! none).
//!
//! Delivery semantics: **at most once**. A produce is retried (once, after a
//! refresh) only when the server refused it as not the leader — it appended
//! nothing. Any other failure is returned: the record may or may not have been
//! appended, and retrying could duplicate it. Consumes are idempotent and move
//! to another server on `UNAVAILABLE`.
//!
//! ```no_run
//! use proglog_client::{Client, Options};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), proglog_client::Error> {
//! // Any member will do as a seed: the client learns the others.
//! let client = Client::connect("proglog://127.0.0.1:8400", Options::default()).await?;
//! let offset = client.produce("hello").await?; // on the leader, once committed
//! let record = client.consume(offset).await?; // from a follower
//! assert_eq!(record.value, "hello");
//! for server in client.servers().await? {
//!     println!("{} {} {}", server.id, server.rpc_addr, if server.is_leader { "leader" } else { "" });
//! }
//! # Ok(())
//! # }
//! ```
//!
//! [`Client::subscribe`] follows the log from an offset (a ConsumeStream on a
//! follower) and resumes on another server, without gap or duplicate, when its
//! server goes away. A produce stream and the CLI built entirely on this crate
//! come with the rest of issue #10.

mod picker;
mod target;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use proglog_api::v1::log_client::LogClient;
use proglog_api::v1::{ConsumeRequest, GetServersRequest, ProduceRequest, Record, Server};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

pub use crate::picker::{Call, Picker};
pub use crate::target::{Authority, Target};

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

/// How the client connects.
#[derive(Clone, Debug)]
pub struct Options {
    /// TLS, or plaintext when `None`.
    pub tls: Option<Tls>,
    /// TCP (and TLS) handshake timeout per server.
    pub connect_timeout: Duration,
    /// How often the server list is refreshed without errors.
    pub refresh_interval: Duration,
    /// How long a produce keeps trying while the cluster has no reachable
    /// leader (an election, a dead leader), as long as retrying cannot append
    /// twice.
    pub failover_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tls: None,
            connect_timeout: Duration::from_secs(5),
            refresh_interval: Duration::from_secs(10),
            failover_timeout: Duration::from_secs(10),
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
    Tls(#[from] proglog_tls::Error),
    /// The server answered with an error.
    #[error("{} ({:?})", .0.message(), .0.code())]
    Status(#[from] Status),
}

struct State {
    picker: Arc<Picker>,
    channels: HashMap<String, Channel>,
}

struct Inner {
    target: Target,
    options: Options,
    state: Mutex<State>,
}

/// A client of a proglog cluster (or of one server). Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("target", &self.inner.target).finish_non_exhaustive()
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The server refused an append because it does not lead: it appended nothing.
fn not_leader(status: &Status) -> bool {
    status.code() == Code::Unavailable
        && status.get_error_details().error_info().is_some_and(|info| info.reason == "NOT_LEADER")
}

/// The call failed before any server could have appended its record: no leader
/// was known, the server refused as not the leader, or the connection was
/// refused (nothing was sent).
fn never_appended(error: &Error) -> bool {
    match error {
        Error::NoServer(_) => true,
        Error::Status(status) if not_leader(status) => true,
        Error::Status(status) => {
            let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
            while let Some(cause) = source {
                if cause
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
                {
                    return true;
                }
                source = cause.source();
            }
            false
        }
        _ => false,
    }
}

impl Client {
    /// Connects to `addr`; for a cluster, learns its servers from the first seed
    /// that answers GetServers.
    pub async fn connect(addr: &str, options: Options) -> Result<Self, Error> {
        let target =
            Target::parse(addr).map_err(|reason| Error::InvalidAddress { addr: addr.to_owned(), reason })?;
        let seeds: Vec<Server> = target
            .seeds
            .iter()
            .map(|seed| Server { id: seed.to_addr(), rpc_addr: seed.to_addr(), is_leader: !target.cluster })
            .collect();
        let client = Self {
            inner: Arc::new(Inner {
                target,
                options,
                state: Mutex::new(State { picker: Arc::new(Picker::new(seeds)), channels: HashMap::new() }),
            }),
        };
        if client.inner.target.cluster {
            client.refresh().await?;
            let weak = Arc::downgrade(&client.inner);
            tokio::spawn(refresh_periodically(weak, client.inner.options.refresh_interval));
        }
        Ok(client)
    }

    /// Asks the known servers (then the seeds) for the server list, and picks from
    /// the first answer. A single-server client has nothing to refresh.
    pub async fn refresh(&self) -> Result<(), Error> {
        if !self.inner.target.cluster {
            return Ok(());
        }
        let known: Vec<String> = {
            let state = lock(&self.inner.state);
            state.picker.servers().iter().map(|server| server.rpc_addr.clone()).collect()
        };
        let seeds = self.inner.target.seeds.iter().map(Authority::to_addr);
        let mut last = Error::NoServer("no server to ask for the cluster's servers".into());
        let mut leaderless = None;
        for addr in known.into_iter().chain(seeds) {
            let mut client = LogClient::new(self.channel(&addr)?);
            match client.get_servers(GetServersRequest {}).await {
                Ok(response) => {
                    let servers = response.into_inner().servers;
                    if servers.iter().any(|server| server.is_leader) {
                        self.replace_servers(servers);
                        return Ok(());
                    }
                    // A server that knows no leader (an election, a lagging node):
                    // ask the others, keep this answer if none knows better.
                    if leaderless.is_none() && !servers.is_empty() {
                        leaderless = Some(servers);
                    }
                }
                Err(status) => last = Error::Status(status),
            }
        }
        match leaderless {
            Some(servers) => {
                self.replace_servers(servers);
                Ok(())
            }
            None => Err(last),
        }
    }

    fn replace_servers(&self, servers: Vec<Server>) {
        let mut state = lock(&self.inner.state);
        state.picker = Arc::new(Picker::succeeding(&state.picker, servers));
    }

    /// The channel to `addr` (created on first use; connects lazily).
    fn channel(&self, addr: &str) -> Result<Channel, Error> {
        if let Some(channel) = lock(&self.inner.state).channels.get(addr) {
            return Ok(channel.clone());
        }
        let connector = match &self.inner.options.tls {
            None => proglog_tls::Connector::plaintext(),
            Some(tls) => {
                let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
                let name =
                    tls.server_name.as_deref().unwrap_or(host.trim_start_matches('[').trim_end_matches(']'));
                proglog_tls::Connector::tls(Arc::clone(&tls.config), name)?
            }
        };
        let endpoint = connector.endpoint(addr)?.connect_timeout(self.inner.options.connect_timeout);
        let channel = connector.connect_lazy(&endpoint);
        lock(&self.inner.state).channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }

    /// A gRPC client for the server picked for `call`.
    fn pick(&self, call: Call) -> Result<LogClient<Channel>, Error> {
        let picker = Arc::clone(&lock(&self.inner.state).picker);
        let server = picker.pick(call).ok_or_else(|| {
            Error::NoServer(match call {
                Call::Produce => "no leader is known".into(),
                _ => "no server is known".into(),
            })
        })?;
        Ok(LogClient::new(self.channel(&server.rpc_addr)?))
    }

    /// The RPC address of the server the picker chooses now for `call` (for
    /// callers that dial it themselves, as the CLI's streams do).
    pub fn address_for(&self, call: Call) -> Result<String, Error> {
        let picker = Arc::clone(&lock(&self.inner.state).picker);
        picker
            .pick(call)
            .map(|server| server.rpc_addr.clone())
            .ok_or_else(|| Error::NoServer("no server fits".into()))
    }

    /// Appends `value` on the leader; its offset once committed. While no leader
    /// is reachable it waits for one (up to `failover_timeout`), retrying only
    /// what cannot have been appended: a refusal as not the leader, or a leader
    /// that could not even be connected to. Anything else — a connection lost
    /// mid-call, a timeout — is returned: the record may or may not be in the log.
    pub async fn produce(&self, value: impl Into<Bytes>) -> Result<u64, Error> {
        let request = ProduceRequest { record: Some(Record { value: value.into(), ..Record::default() }) };
        let deadline = tokio::time::Instant::now() + self.inner.options.failover_timeout;
        let mut backoff = Duration::from_millis(25);
        loop {
            let result = match self.pick(Call::Produce) {
                Ok(mut client) => client.produce(request.clone()).await.map_err(Error::Status),
                Err(error) => Err(error),
            };
            let error = match result {
                Ok(response) => return Ok(response.into_inner().offset),
                Err(error) => error,
            };
            if matches!(&error, Error::Status(status) if status.code() == Code::Unavailable) {
                let _ = self.refresh().await;
            }
            if !never_appended(&error) || tokio::time::Instant::now() >= deadline {
                return Err(error);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(400));
            let _ = self.refresh().await;
        }
    }

    /// Reads the record at `offset` from a follower (in turn), trying another
    /// server if one is unavailable.
    pub async fn consume(&self, offset: u64) -> Result<Record, Error> {
        let attempts = lock(&self.inner.state).picker.servers().len().max(1);
        let mut last = None;
        for _ in 0..attempts {
            match self.pick(Call::Consume)?.consume(ConsumeRequest { offset }).await {
                Ok(response) => {
                    return response
                        .into_inner()
                        .record
                        .ok_or_else(|| Error::Status(Status::internal("no record")));
                }
                Err(status) if status.code() == Code::Unavailable => {
                    let _ = self.refresh().await;
                    last = Some(status);
                }
                Err(status) => return Err(Error::Status(status)),
            }
        }
        Err(Error::Status(last.unwrap_or_else(|| Status::unavailable("no server answered"))))
    }

    /// Follows the log from `offset` on, record after record, waiting at the end
    /// for new ones (a ConsumeStream on a follower). When its server goes away,
    /// it resumes on another from the next offset it has not delivered: no gap,
    /// no duplicate.
    pub fn subscribe(&self, offset: u64) -> Subscription {
        Subscription { client: self.clone(), next: offset, server: None, stream: None }
    }

    /// The cluster's servers, as a server reports them.
    pub async fn servers(&self) -> Result<Vec<Server>, Error> {
        Ok(self.pick(Call::Other)?.get_servers(GetServersRequest {}).await?.into_inner().servers)
    }
}

/// A consume stream that survives the loss of its server ([`Client::subscribe`]).
pub struct Subscription {
    client: Client,
    /// The offset of the next record to deliver.
    next: u64,
    /// The server the current stream comes from.
    server: Option<String>,
    stream: Option<tonic::Streaming<proglog_api::v1::ConsumeResponse>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("next", &self.next).field("server", &self.server).finish()
    }
}

impl Subscription {
    /// The RPC address of the server the records come from now, if connected.
    pub fn server(&self) -> Option<&str> {
        self.server.as_deref()
    }

    /// The next record (waiting for it if it is not written yet). Moves to
    /// another server when this one fails, for up to the client's
    /// `failover_timeout` without a record; an error it cannot get past (the
    /// offset was removed by retention, a denial) is returned.
    pub async fn next(&mut self) -> Result<Record, Error> {
        let timeout = self.client.inner.options.failover_timeout;
        // Counted from the first failure: waiting at the tail is not failing.
        let mut deadline = None;
        let mut backoff = Duration::from_millis(25);
        loop {
            let failure = match self.stream.as_mut() {
                None => match self.open().await {
                    Ok(()) => continue,
                    Err(error) => error,
                },
                Some(stream) => match stream.message().await {
                    Ok(Some(response)) => {
                        let Some(record) = response.record else { continue };
                        if record.offset < self.next {
                            continue; // already delivered (a resumed stream overlaps)
                        }
                        if record.offset > self.next {
                            return Err(Error::Status(Status::data_loss(format!(
                                "expected offset {}, the server sent {}",
                                self.next, record.offset
                            ))));
                        }
                        self.next += 1;
                        return Ok(record);
                    }
                    Ok(None) => Error::Status(Status::unavailable("the server ended the stream")),
                    Err(status) => Error::Status(status),
                },
            };
            self.stream = None;
            self.server = None;
            let resumable = match &failure {
                Error::NoServer(_) => true,
                Error::Status(status) => {
                    matches!(
                        status.code(),
                        Code::Unavailable | Code::Cancelled | Code::Unknown | Code::Internal
                    )
                }
                _ => false,
            };
            let deadline = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + timeout);
            if !resumable || tokio::time::Instant::now() >= deadline {
                return Err(failure);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(400));
            let _ = self.client.refresh().await;
        }
    }

    async fn open(&mut self) -> Result<(), Error> {
        let addr = self.client.address_for(Call::Consume)?;
        let mut client = LogClient::new(self.client.channel(&addr)?).max_decoding_message_size(usize::MAX);
        let stream = client.consume_stream(ConsumeRequest { offset: self.next }).await?.into_inner();
        self.stream = Some(stream);
        self.server = Some(addr);
        Ok(())
    }
}

/// Refreshes the server list every `interval` while the client lives.
async fn refresh_periodically(inner: Weak<Inner>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(inner) = inner.upgrade() else { return };
        let _ = Client { inner }.refresh().await;
    }
}
