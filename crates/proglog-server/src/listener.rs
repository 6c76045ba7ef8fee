//! Serving the connections of one listening socket within fixed bounds, for the
//! gRPC port and the HTTP API alike: no remote side can make the process hold
//! more connections, calls, bytes or time than [`Limits`] says.
//!
//! - **Connections**: at most [`Limits::max_connections`]. At the cap, a new
//!   connection takes the place of one that has not yet sent a complete request
//!   (the oldest, and one still in its TLS handshake before one past it), or else
//!   of the one idle longest (for at least a second, so its last answer is out):
//!   a half-open or idle attacker loses its slot first. When there is none, the
//!   new connection is refused (plaintext: an HTTP 503 or an HTTP/2 GOAWAY; TLS:
//!   closed).
//! - **Time**: a connection must finish its TLS handshake and send its first
//!   request within [`Limits::first_request_timeout`]; one with no request in
//!   flight for [`Limits::idle_timeout`] is closed; HTTP/1 request headers must
//!   arrive within the first-request timeout too.
//! - **Calls**: at most [`Limits::max_concurrent_calls`] in progress over all
//!   connections, at most [`Limits::max_streams_per_connection`] per connection.
//!   Calls under [`Limits::peer_path_prefix`] (agent-to-agent traffic) have a
//!   pool of their own, [`Limits::peer_calls`], so that neither side can starve
//!   the other.
//! - **Request bytes**: bodies are read within a byte budget per connection and
//!   one for the listener ([`Peer::read_body`], and the gRPC admission layer);
//!   agent-to-agent calls within a listener budget of their own.
//! - **Accept errors** (out of file descriptors) back off instead of spinning,
//!   and every warning about an attack is logged at a bounded rate.
//!
//! On shutdown, every connection is told to finish (HTTP/2 GOAWAY, HTTP/1
//! `Connection: close`); one that never sent a request closes at once, the others
//! once their calls have ended (with a second to flush the last answer). The
//! caller bounds the whole shutdown with one deadline.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body::{Body, Frame};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use slog::{Logger, debug, warn};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::auth::{ANONYMOUS, names_of_chain, subject_of_chain};

/// HTTP/2 flow-control window of a connection: what a client may have sent and
/// the server not yet read, over all its streams.
const CONNECTION_WINDOW_BYTES: u32 = 1 << 20;
/// HTTP/2 flow-control window of one stream: all of the connection's (a smaller
/// one cost a pipelining producer ~7% in the benchmark).
const STREAM_WINDOW_BYTES: u32 = CONNECTION_WINDOW_BYTES;
/// Response bytes HTTP/2 buffers per stream beyond what the client's window
/// lets it send.
const SEND_BUFFER_BYTES: usize = 256 << 10;
/// Largest HTTP/2 header list; HTTP/1 reads into a buffer of four times this,
/// which the request headers must fit in.
const MAX_HEADER_BYTES: u32 = 16 << 10;
/// TCP keepalive: a connection whose peer has vanished (its host died, the
/// network dropped it) is found dead after `IDLE + INTERVAL × RETRIES` of
/// silence (90 s), so a stream to a dead client does not hold its call forever.
/// In the kernel: unlike HTTP/2 PINGs, it costs nothing per frame.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;
/// Time a connection gets after its last call to flush the answer before it may
/// be dropped: when it was told to close (idle timeout, shutdown) and has not
/// closed by itself, or before it may be displaced.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How long a request body waits for room in the request byte budgets before its
/// call is refused as overloaded.
const BUDGET_WAIT: Duration = Duration::from_secs(1);
/// How long a new connection waits for the slot of the connection it displaced.
const DISPLACE_WAIT: Duration = Duration::from_secs(1);
/// Back-off after an accept error (out of file descriptors), doubling to the max.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one warning of each kind per this period; the rest are counted.
const WARNING_PERIOD: Duration = Duration::from_secs(10);

/// The bounds of one listener. Every field is a hard limit on what remote sides
/// can make the process hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once (see the module docs for what happens at the cap).
    pub max_connections: usize,
    /// Calls (HTTP/2 streams, HTTP/1 requests) in progress at once, over all
    /// connections; more are answered "overloaded" at once.
    pub max_concurrent_calls: usize,
    /// HTTP/2 streams a connection may have open at once.
    pub max_streams_per_connection: u32,
    /// A new connection must finish its TLS handshake and send the headers of its
    /// first request within this.
    pub first_request_timeout: Duration,
    /// A connection with no call in progress for this long is closed.
    pub idle_timeout: Duration,
    /// A request body must arrive within this: a whole unary request, or each
    /// message of a stream once its first byte has arrived.
    pub body_timeout: Duration,
    /// Request body bytes read but not yet consumed, over all connections.
    pub request_buffer_bytes: usize,
    /// Request body bytes read but not yet consumed, per connection.
    pub connection_request_buffer_bytes: usize,
    /// Calls whose path starts with this are agent-to-agent calls: they count
    /// against [`Limits::peer_calls`] and [`Limits::peer_request_buffer_bytes`],
    /// not against the clients' budgets (and clients' calls never against theirs).
    pub peer_path_prefix: Option<String>,
    /// Agent-to-agent calls in progress at once.
    pub peer_calls: usize,
    /// Request body bytes of agent-to-agent calls read but not yet consumed,
    /// over all connections.
    pub peer_request_buffer_bytes: usize,
}

impl Limits {
    /// The defaults, with the request budgets raised so that a single request of
    /// `max_request_bytes` always fits (with room for several).
    pub fn for_requests_of(max_request_bytes: usize) -> Self {
        let defaults = Self::default();
        Self {
            request_buffer_bytes: defaults.request_buffer_bytes.max(max_request_bytes.saturating_mul(16)),
            connection_request_buffer_bytes: defaults
                .connection_request_buffer_bytes
                .max(max_request_bytes.saturating_mul(8)),
            ..defaults
        }
    }

    /// Rejects limits under which nothing could be served.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max_connections", self.max_connections),
            ("max_concurrent_calls", self.max_concurrent_calls),
            ("max_streams_per_connection", self.max_streams_per_connection as usize),
            ("request_buffer_bytes", self.request_buffer_bytes),
            ("connection_request_buffer_bytes", self.connection_request_buffer_bytes),
            ("peer_calls", self.peer_calls),
            ("peer_request_buffer_bytes", self.peer_request_buffer_bytes),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(format!("{name} must be positive"));
        }
        let timeouts = [
            ("first_request_timeout", self.first_request_timeout),
            ("idle_timeout", self.idle_timeout),
            ("body_timeout", self.body_timeout),
        ];
        if let Some((name, _)) = timeouts.iter().find(|(_, value)| value.is_zero()) {
            return Err(format!("{name} must be positive"));
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_concurrent_calls: 1024,
            max_streams_per_connection: 128,
            first_request_timeout: Duration::from_secs(10),
            // Kafka's connections.max.idle.ms.
            idle_timeout: Duration::from_secs(600),
            body_timeout: Duration::from_secs(30),
            request_buffer_bytes: 64 << 20,
            connection_request_buffer_bytes: 8 << 20,
            peer_path_prefix: None,
            // A peer holds a few calls (messages, forwards, a fetch): room for a
            // cluster of dozens.
            peer_calls: 256,
            peer_request_buffer_bytes: 64 << 20,
        }
    }
}

/// Logs one kind of warning at most once per [`WARNING_PERIOD`], with the number
/// of occurrences it stood for.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl Throttle {
    /// Calls `log` with the number of occurrences since the last logged one, if a
    /// period has passed; otherwise only counts.
    pub(crate) fn hit(&self, log: impl FnOnce(u64)) {
        let now = Instant::now();
        let due = match self.last.lock() {
            Ok(mut last) => {
                let due = last.is_none_or(|at| now.duration_since(at) >= WARNING_PERIOD);
                if due {
                    *last = Some(now);
                }
                due
            }
            Err(_) => false,
        };
        if due {
            log(self.suppressed.swap(0, Ordering::Relaxed) + 1);
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Where a connection is in its life, for choosing which one to displace: in
/// this order (a connection still in its TLS handshake goes before one that
/// finished it, so half-open connections cannot push out a client that has).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Accepted; its TLS handshake (if any) not finished.
    Pending,
    /// TLS handshake done; no request yet.
    Handshaken,
    /// Served at least one request; none in progress.
    Idle,
}

/// A connection with nothing in flight, ordered for displacement: by phase, then
/// longest-waiting first.
type Waiting = (Phase, Instant, u64);

#[derive(Debug)]
struct ConnState {
    in_flight: usize,
    /// Set while nothing is in flight: the entry in `Registry::waiting`.
    waiting: Option<Waiting>,
    signal: Arc<Signal>,
}

/// What a connection's task is told from outside: it was displaced, or the
/// listener is stopping. Polled on every wake-up of the task, so it takes no lock
/// (a `Notify` or `watch` would take one per poll).
#[derive(Debug, Default)]
struct Signal {
    displaced: AtomicBool,
    stopping: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    fn raise(&self, flag: &AtomicBool) {
        flag.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn displaced(&self) -> bool {
        self.displaced.load(Ordering::Acquire)
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Resolves once displaced, or stopping if `stopping_seen` is false.
    async fn raised(&self, stopping_seen: bool) {
        std::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            if self.displaced() || (self.stopping() && !stopping_seen) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }
}

/// The connections of one listener, and which of them could be displaced.
#[derive(Debug, Default)]
struct Registry {
    connections: HashMap<u64, ConnState>,
    waiting: BTreeSet<Waiting>,
}

/// State shared by a listener's accept loop, its connections and their calls.
#[derive(Debug)]
struct Shared {
    limits: Limits,
    registry: Mutex<Registry>,
    connections: Arc<Semaphore>,
    /// Calls in progress (a counter, not a semaphore: nobody waits for a slot).
    calls: AtomicUsize,
    request_bytes: Arc<Semaphore>,
    /// The same, for agent-to-agent calls.
    peer_calls: AtomicUsize,
    peer_request_bytes: Arc<Semaphore>,
    next_id: AtomicU64,
    logger: Logger,
    refused: Throttle,
    displaced: Throttle,
    accept_failed: Throttle,
    handshake_failed: Throttle,
}

impl Shared {
    fn new(limits: Limits, logger: Logger) -> Self {
        Self {
            registry: Mutex::default(),
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            calls: AtomicUsize::new(0),
            request_bytes: Arc::new(Semaphore::new(limits.request_buffer_bytes)),
            peer_calls: AtomicUsize::new(0),
            peer_request_bytes: Arc::new(Semaphore::new(limits.peer_request_buffer_bytes)),
            next_id: AtomicU64::new(0),
            logger,
            refused: Throttle::default(),
            displaced: Throttle::default(),
            accept_failed: Throttle::default(),
            handshake_failed: Throttle::default(),
            limits,
        }
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A panic elsewhere cannot leave the registry inconsistent: each update
        // is a few map operations that do not panic.
        self.registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn register(&self, id: u64, signal: Arc<Signal>) {
        let key = (Phase::Pending, Instant::now(), id);
        let mut registry = self.registry();
        registry.waiting.insert(key);
        registry.connections.insert(id, ConnState { in_flight: 0, waiting: Some(key), signal });
    }

    fn unregister(&self, id: u64) {
        let mut registry = self.registry();
        if let Some(ConnState { waiting: Some(key), .. }) = registry.connections.remove(&id) {
            registry.waiting.remove(&key);
        }
    }

    /// A pending connection finished its TLS handshake.
    fn handshaken(&self, id: u64) {
        let mut registry = self.registry();
        let Registry { connections, waiting } = &mut *registry;
        if let Some(state) = connections.get_mut(&id)
            && let Some(key @ (Phase::Pending, since, _)) = state.waiting
        {
            waiting.remove(&key);
            let key = (Phase::Handshaken, since, id);
            waiting.insert(key);
            state.waiting = Some(key);
        }
    }

    /// Phase and since when, while the connection has nothing in flight.
    fn waiting(&self, id: u64) -> Option<(Phase, Instant)> {
        let registry = self.registry();
        let (phase, since, _) = registry.connections.get(&id)?.waiting?;
        Some((phase, since))
    }

    /// Tells every connection the listener is stopping.
    fn stop_all(&self) {
        for state in self.registry().connections.values() {
            state.signal.raise(&state.signal.stopping);
        }
    }

    fn call_started(&self, id: u64) {
        let mut registry = self.registry();
        let Registry { connections, waiting } = &mut *registry;
        if let Some(state) = connections.get_mut(&id) {
            state.in_flight += 1;
            if let Some(key) = state.waiting.take() {
                waiting.remove(&key);
            }
        }
    }

    fn call_ended(&self, id: u64) {
        let mut registry = self.registry();
        let Registry { connections, waiting } = &mut *registry;
        if let Some(state) = connections.get_mut(&id) {
            state.in_flight = state.in_flight.saturating_sub(1);
            if state.in_flight == 0 && !state.signal.displaced() {
                let key = (Phase::Idle, Instant::now(), id);
                waiting.insert(key);
                state.waiting = Some(key);
            }
        }
    }

    /// Marks the connection that has waited longest (pending before idle; idle
    /// for at least [`CLOSE_GRACE`]) as displaced and wakes it; `false` if there
    /// is none.
    fn displace_one(&self) -> bool {
        let mut registry = self.registry();
        let key = match registry.waiting.first() {
            // Its last answer may still be on its way out: not yet.
            Some(&(Phase::Idle, since, _)) if since.elapsed() < CLOSE_GRACE => return false,
            Some(&key) => key,
            None => return false,
        };
        registry.waiting.remove(&key);
        if let Some(state) = registry.connections.get_mut(&key.2) {
            state.waiting = None;
            state.signal.raise(&state.signal.displaced);
        }
        true
    }
}

/// The far end of a connection, put in the extensions of every request it sends.
#[derive(Clone, Debug)]
pub struct Peer {
    addr: SocketAddr,
    subject: Arc<str>,
    /// The names its certificate vouches for (CN, DNS SANs).
    names: Arc<[String]>,
    /// It presented a (verified) certificate.
    certified: bool,
    conn: Arc<ConnHandle>,
    /// This request is an agent-to-agent call (see [`Limits::peer_path_prefix`]).
    agent: bool,
}

#[derive(Debug)]
struct ConnHandle {
    id: u64,
    shared: Arc<Shared>,
    request_bytes: Arc<Semaphore>,
}

impl Peer {
    /// The peer of the connection a request came on, if it was served by a
    /// [`Listener`].
    pub fn of(extensions: &http::Extensions) -> Option<&Peer> {
        extensions.get::<Peer>()
    }

    /// The remote address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The identity: the Common Name of the verified client certificate, or
    /// [`ANONYMOUS`].
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The names the verified client certificate vouches for: its Common Name,
    /// then its DNS subject alternative names (none without one).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The client presented a certificate, and it was verified (a listener
    /// whose TLS config lets clients connect without one sees both kinds).
    pub fn has_certificate(&self) -> bool {
        self.certified
    }

    /// This connection's share of the listener's request byte budget (of the
    /// agent-to-agent calls' budget, for one of those).
    pub(crate) fn request_budget(&self) -> RequestBudget {
        let shared = &self.conn.shared;
        let (global, global_bytes) = if self.agent {
            (&shared.peer_request_bytes, shared.limits.peer_request_buffer_bytes)
        } else {
            (&shared.request_bytes, shared.limits.request_buffer_bytes)
        };
        RequestBudget {
            connection: Arc::clone(&self.conn.request_bytes),
            connection_bytes: shared.limits.connection_request_buffer_bytes,
            global: Arc::clone(global),
            global_bytes,
        }
    }

    pub(crate) fn body_timeout(&self) -> Duration {
        self.conn.shared.limits.body_timeout
    }

    /// Reads a whole request body of at most `max_bytes`, within the request byte
    /// budget and the body timeout.
    pub async fn read_body<B>(&self, body: B, max_bytes: usize) -> Result<Bytes, BodyError>
    where
        B: Body<Data = Bytes>,
        B::Error: std::fmt::Display,
    {
        let declared = body.size_hint().exact().map(|bytes| usize::try_from(bytes).unwrap_or(usize::MAX));
        if let Some(bytes) = declared
            && bytes > max_bytes
        {
            return Err(BodyError::TooLarge { bytes: Some(bytes), max_bytes });
        }
        let timeout = self.body_timeout();
        let read = async {
            let Some(_held) = self.request_budget().hold(declared.unwrap_or(max_bytes)).await else {
                return Err(BodyError::Overloaded);
            };
            let mut body = std::pin::pin!(body);
            let mut collected = Vec::new();
            while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
                let frame = frame.map_err(|error| BodyError::Read(error.to_string()))?;
                if let Ok(data) = frame.into_data() {
                    if collected.len() + data.len() > max_bytes {
                        return Err(BodyError::TooLarge { bytes: None, max_bytes });
                    }
                    collected.extend_from_slice(&data);
                }
            }
            Ok(Bytes::from(collected))
        };
        tokio::time::timeout(timeout, read).await.unwrap_or(Err(BodyError::Timeout(timeout)))
    }
}

/// Why a request body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Larger than allowed (`bytes` when the request declared its length).
    #[error("request body exceeds the limit of {max_bytes} bytes")]
    TooLarge {
        /// The declared length.
        bytes: Option<usize>,
        /// The limit.
        max_bytes: usize,
    },
    /// The request byte budgets stayed full: the server is overloaded.
    #[error("server overloaded: request buffers are full")]
    Overloaded,
    /// Not received within the body timeout.
    #[error("request body not received within {0:?}")]
    Timeout(Duration),
    /// The connection failed while reading.
    #[error("cannot read the request body: {0}")]
    Read(String),
}

/// A connection's and its listener's request byte budgets.
#[derive(Clone, Debug)]
pub(crate) struct RequestBudget {
    connection: Arc<Semaphore>,
    connection_bytes: usize,
    global: Arc<Semaphore>,
    global_bytes: usize,
}

/// Request bytes held against both budgets; released on drop.
#[derive(Debug)]
pub(crate) struct Held {
    _connection: OwnedSemaphorePermit,
    _global: OwnedSemaphorePermit,
}

fn permits(bytes: usize, capacity: usize) -> u32 {
    u32::try_from(bytes.min(capacity)).unwrap_or(u32::MAX)
}

impl RequestBudget {
    /// Holds `bytes` (capped as by [`RequestBudget::hold`]) if both budgets have
    /// them now.
    pub(crate) fn try_hold(&self, bytes: usize) -> Option<Held> {
        let connection = Arc::clone(&self.connection)
            .try_acquire_many_owned(permits(bytes, self.connection_bytes))
            .ok()?;
        let global =
            Arc::clone(&self.global).try_acquire_many_owned(permits(bytes, self.global_bytes)).ok()?;
        Some(Held { _connection: connection, _global: global })
    }

    /// Holds `bytes` (capped at each budget's size, so one request always fits),
    /// the connection's share first, then the listener's; `None` if they are not
    /// free within [`BUDGET_WAIT`]. Waiting is bounded because a body that waits
    /// keeps its unread bytes in the connection's HTTP/2 window, which the bodies
    /// holding the budget may need to finish.
    pub(crate) async fn hold(self, bytes: usize) -> Option<Held> {
        let hold = async {
            // The semaphores are never closed.
            let connection =
                self.connection.acquire_many_owned(permits(bytes, self.connection_bytes)).await.ok()?;
            let global = self.global.acquire_many_owned(permits(bytes, self.global_bytes)).await.ok()?;
            Some(Held { _connection: connection, _global: global })
        };
        tokio::time::timeout(BUDGET_WAIT, hold).await.ok().flatten()
    }
}

/// What a [`Listener`] can serve: a service answering every request with a
/// `Response<B>` (errors are responses too), cheap to clone for each connection.
pub trait Serves<B>:
    tower::Service<
        http::Request<Incoming>,
        Response = http::Response<B>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S, B> Serves<B> for S where
    S: tower::Service<
            http::Request<Incoming>,
            Response = http::Response<B>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// One listening socket and how to serve it.
#[derive(Debug)]
pub struct Listener<B> {
    /// Names the listener in log lines (`rpc`, `http`).
    pub name: &'static str,
    /// The bound socket.
    pub tcp: TcpListener,
    /// TLS, or plaintext when `None`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The bounds.
    pub limits: Limits,
    /// Serve HTTP/1.1 as well as HTTP/2 (`false`: HTTP/2 only, as gRPC).
    pub http1: bool,
    /// Written to a plaintext connection refused at the connection cap.
    pub refusal: &'static [u8],
    /// The answer to a call refused at the call limit (the message says why).
    pub overloaded: fn(String) -> http::Response<B>,
}

impl<B> Listener<B>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Serves connections with `service` until `shutdown` resolves, then closes
    /// idle connections, lets busy ones finish their calls, and returns when all
    /// are closed. Drop (abort) the returned future to close them at once.
    pub async fn serve<S>(self, service: S, shutdown: impl Future<Output = ()>, logger: Logger)
    where
        S: Serves<B>,
    {
        let Listener { name, tcp, tls, limits, http1, refusal, overloaded } = self;
        let shared = Arc::new(Shared::new(limits, logger.new(slog::o!("listener" => name))));
        let builder = http_builder(&shared.limits, http1);
        let mut connections = JoinSet::new();
        let mut backoff = ACCEPT_BACKOFF_MIN;
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            while connections.try_join_next().is_some() {}
            let accepted = tokio::select! {
                accepted = tcp.accept() => accepted,
                () = &mut shutdown => break,
            };
            let (stream, addr) = match accepted {
                Ok(accepted) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    accepted
                }
                Err(error) if is_per_connection(&error) => continue,
                Err(error) => {
                    shared.accept_failed.hit(|count| {
                        warn!(shared.logger, "accept failed; backing off";
                            "error" => %error, "occurrences" => count, "backoff_ms" => backoff.as_millis() as u64);
                    });
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = &mut shutdown => break,
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            };
            let Some(permit) = admit(&shared).await else {
                refuse(&shared, stream, addr, if tls.is_some() { b"" } else { refusal });
                continue;
            };
            connections.spawn(Connection::accepted(&shared, addr).run(
                stream,
                tls.clone(),
                builder.clone(),
                (service.clone(), overloaded),
                permit,
            ));
        }
        // Stop accepting at once: the kernel refuses new connections from here.
        drop(tcp);
        shared.stop_all();
        while connections.join_next().await.is_some() {}
    }
}

/// Errors of one incoming connection (it went away before it was accepted):
/// the next accept can go ahead at once.
fn is_per_connection(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset, Interrupted};
    matches!(error.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset | Interrupted)
}

/// A connection slot for a new connection: a free one, or the slot of the
/// connection that has waited longest, which is closed for it.
async fn admit(shared: &Shared) -> Option<OwnedSemaphorePermit> {
    if let Ok(permit) = Arc::clone(&shared.connections).try_acquire_owned() {
        return Some(permit);
    }
    if !shared.displace_one() {
        return None;
    }
    shared.displaced.hit(|count| {
        warn!(shared.logger, "connection limit reached: closing connections with nothing in flight to admit new ones";
            "max_connections" => shared.limits.max_connections, "occurrences" => count);
    });
    tokio::time::timeout(DISPLACE_WAIT, Arc::clone(&shared.connections).acquire_owned()).await.ok()?.ok()
}

fn refuse(shared: &Shared, stream: TcpStream, addr: SocketAddr, refusal: &[u8]) {
    shared.refused.hit(|count| {
        warn!(shared.logger, "connection limit reached and every connection is busy: refusing connections";
            "max_connections" => shared.limits.max_connections, "peer" => %addr, "occurrences" => count);
    });
    // The socket buffer of a new connection is empty: a non-blocking write of a
    // few bytes completes, and a short one only shortens the courtesy.
    if let Ok(mut stream) = stream.into_std() {
        let _ = std::io::Write::write(&mut stream, refusal);
    }
}

fn http_builder(limits: &Limits, http1: bool) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if !http1 {
        builder = builder.http2_only();
    }
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.first_request_timeout)
        .max_buf_size(MAX_HEADER_BYTES as usize * 4)
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams_per_connection)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_send_buf_size(SEND_BUFFER_BYTES)
        .max_header_list_size(MAX_HEADER_BYTES);
    builder
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One accepted connection: in its listener's registry from its acceptance (so it
/// can be displaced before its task first runs) until dropped.
struct Connection {
    shared: Arc<Shared>,
    id: u64,
    signal: Arc<Signal>,
    addr: SocketAddr,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared.unregister(self.id);
    }
}

impl Connection {
    fn accepted(shared: &Arc<Shared>, addr: SocketAddr) -> Self {
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let signal = Arc::new(Signal::default());
        shared.register(id, Arc::clone(&signal));
        Self { shared: Arc::clone(shared), id, signal, addr }
    }

    async fn run<S, B>(
        self,
        stream: TcpStream,
        tls: Option<Arc<rustls::ServerConfig>>,
        builder: auto::Builder<TokioExecutor>,
        (service, overloaded): (S, fn(String) -> http::Response<B>),
        _permit: OwnedSemaphorePermit,
    ) where
        S: Serves<B>,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // Small responses (acknowledgements) must not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_RETRIES);
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        let limits = &self.shared.limits;
        let first_request_deadline = Instant::now() + limits.first_request_timeout;
        let (io, subject, names, certified): (Box<dyn Io>, String, Vec<String>, bool) = match tls {
            Some(tls) => {
                let handshake = tokio_rustls::TlsAcceptor::from(tls).accept(stream);
                let handshake = tokio::time::timeout_at(first_request_deadline, handshake);
                tokio::select! {
                    done = handshake => match done {
                        Ok(Ok(stream)) => {
                            self.shared.handshaken(self.id);
                            let chain = stream.get_ref().1.peer_certificates();
                            let (subject, names) = (subject_of_chain(chain), names_of_chain(chain));
                            let certified = chain.is_some_and(|chain| !chain.is_empty());
                            (Box::new(stream), subject, names, certified)
                        }
                        Ok(Err(error)) => {
                            self.shared.handshake_failed.hit(|count| {
                                debug!(self.shared.logger, "tls handshake failed";
                                    "peer" => %self.addr, "error" => %error, "occurrences" => count);
                            });
                            return;
                        }
                        Err(_) => return,
                    },
                    () = self.signal.raised(false) => return, // displaced or stopping
                }
            }
            None => (Box::new(stream), ANONYMOUS.to_owned(), Vec::new(), false),
        };
        let peer = Peer {
            addr: self.addr,
            subject: subject.into(),
            names: names.into(),
            certified,
            conn: Arc::new(ConnHandle {
                id: self.id,
                shared: Arc::clone(&self.shared),
                request_bytes: Arc::new(Semaphore::new(limits.connection_request_buffer_bytes)),
            }),
            agent: false,
        };
        let service = TowerToHyperService::new(Tracked { inner: service, overloaded, peer });
        let connection = builder.serve_connection(TokioIo::new(io), service).into_owned();
        let mut connection = std::pin::pin!(connection);
        // Since when the connection has been told to close (GOAWAY, `Connection:
        // close`): it may take [`CLOSE_GRACE`] after its last call to flush.
        let mut closing: Option<Instant> = None;
        loop {
            // Calls starting and ending do not wake this task (that would cost two
            // wake-ups a call): it looks at the connection's state when its timer
            // fires, and on displacement or stop. It never sleeps longer than the
            // idle timeout, so it looks again before a connection that went idle
            // meanwhile is due to close.
            let waiting = self.shared.waiting(self.id);
            let stopping = self.signal.stopping();
            let pending = matches!(waiting, Some((Phase::Pending | Phase::Handshaken, _)));
            if self.signal.displaced() || (stopping && pending) {
                return; // nothing was ever answered here: close at once
            }
            if stopping && closing.is_none() {
                connection.as_mut().graceful_shutdown();
                closing = Some(Instant::now());
            }
            let now = Instant::now();
            let (check_at, expired) = match (waiting, closing) {
                // Busy: look again later.
                (None, Some(_)) => (now + CLOSE_GRACE, false),
                (None, None) => (now + limits.idle_timeout, false),
                (Some((phase, since)), closing) => {
                    let deadline = match (phase, closing) {
                        (_, Some(closing)) => since.max(closing) + CLOSE_GRACE,
                        (Phase::Pending | Phase::Handshaken, None) => first_request_deadline,
                        (Phase::Idle, None) => since + limits.idle_timeout,
                    };
                    (deadline.min(now + limits.idle_timeout), now >= deadline)
                }
            };
            if expired {
                if pending || closing.is_some() {
                    return;
                }
                // Idle too long: tell the client (GOAWAY), then close.
                connection.as_mut().graceful_shutdown();
                closing = Some(now);
                continue;
            }
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        debug!(self.shared.logger, "connection ended with an error"; "peer" => %self.addr, "error" => %error);
                    }
                    return;
                }
                () = self.signal.raised(stopping) => {}
                () = tokio::time::sleep_until(check_at) => {}
            }
        }
    }
}

/// The service of a listener on one connection, with the call limit and the
/// in-flight accounting that tells the connection it is busy.
struct Tracked<S, B> {
    inner: S,
    overloaded: fn(String) -> http::Response<B>,
    peer: Peer,
}

impl<S: Clone, B> Clone for Tracked<S, B> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), overloaded: self.overloaded, peer: self.peer.clone() }
    }
}

/// Marks a call in progress on its connection until dropped (with the response
/// body, or the call's future if it never produced one).
#[derive(Debug)]
struct InFlight {
    conn: Arc<ConnHandle>,
    /// Counted in `Shared::calls` (or `Shared::peer_calls`, for an agent's).
    counted: bool,
    agent: bool,
}

impl InFlight {
    fn counter(&self) -> &AtomicUsize {
        if self.agent { &self.conn.shared.peer_calls } else { &self.conn.shared.calls }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.counted {
            self.counter().fetch_sub(1, Ordering::AcqRel);
        }
        self.conn.shared.call_ended(self.conn.id);
    }
}

impl<S, B> tower::Service<http::Request<Incoming>> for Tracked<S, B>
where
    S: Serves<B>,
    B: Send + 'static,
{
    type Response = http::Response<TrackedBody<B>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Incoming>) -> Self::Future {
        let conn = Arc::clone(&self.peer.conn);
        conn.shared.call_started(conn.id);
        let limits = &conn.shared.limits;
        let agent =
            limits.peer_path_prefix.as_deref().is_some_and(|prefix| request.uri().path().starts_with(prefix));
        let limit = if agent { limits.peer_calls } else { limits.max_concurrent_calls };
        let mut in_flight = InFlight { conn: Arc::clone(&conn), counted: false, agent };
        in_flight.counted = in_flight.counter().fetch_add(1, Ordering::AcqRel) < limit;
        if !in_flight.counted {
            in_flight.counter().fetch_sub(1, Ordering::AcqRel);
            let response = (self.overloaded)(if agent {
                format!("server overloaded: {limit} agent-to-agent calls in progress")
            } else {
                format!("server overloaded: {limit} calls in progress (max-concurrent-calls)")
            });
            return Box::pin(std::future::ready(Ok(
                response.map(|body| TrackedBody { body, _in_flight: in_flight })
            )));
        }
        request.extensions_mut().insert(Peer { agent, ..self.peer.clone() });
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(request).await?;
            Ok(response.map(|body| TrackedBody { body, _in_flight: in_flight }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its call counted as in flight until it ends.
    pub struct TrackedBody<B> {
        #[pin]
        body: B,
        _in_flight: InFlight,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A budget of the default sizes, for unit tests of its users.
#[cfg(test)]
pub(crate) fn test_budget() -> RequestBudget {
    let limits = Limits::default();
    RequestBudget {
        connection: Arc::new(Semaphore::new(limits.connection_request_buffer_bytes)),
        connection_bytes: limits.connection_request_buffer_bytes,
        global: Arc::new(Semaphore::new(limits.request_buffer_bytes)),
        global_bytes: limits.request_buffer_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        Shared::new(Limits::default(), Logger::root(slog::Discard, slog::o!()))
    }

    #[tokio::test(start_paused = true)]
    async fn displacement_takes_pending_connections_first_then_the_longest_idle() {
        let shared = shared();
        for id in 0..5 {
            shared.register(id, Arc::new(Signal::default()));
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        // 0 and 1 served a request (1 first); 2 is busy; 3 finished its TLS
        // handshake, 4 (younger) did not.
        shared.handshaken(3);
        shared.call_started(2);
        shared.call_started(1);
        shared.call_ended(1);
        tokio::time::advance(Duration::from_millis(1)).await;
        shared.call_started(0);
        shared.call_ended(0);
        let displaced = |shared: &Shared| {
            if !shared.displace_one() {
                return None;
            }
            let id = (0..5).find(|id| {
                shared.registry().connections.get(id).is_some_and(|state| state.signal.displaced())
            });
            id.inspect(|&id| shared.unregister(id))
        };
        assert_eq!(displaced(&shared), Some(4), "still in its handshake first");
        assert_eq!(displaced(&shared), Some(3), "then past it, without a request");
        assert_eq!(displaced(&shared), None, "an answer may still be on its way out of 0 and 1");
        tokio::time::advance(CLOSE_GRACE).await;
        assert_eq!(displaced(&shared), Some(1), "then the longest idle");
        assert_eq!(displaced(&shared), Some(0));
        assert_eq!(displaced(&shared), None, "a busy connection is never displaced");
        shared.call_ended(2);
        tokio::time::advance(CLOSE_GRACE).await;
        assert_eq!(displaced(&shared), Some(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_warning_counts_what_it_stood_for() {
        let throttle = Throttle::default();
        let mut logged = Vec::new();
        for _ in 0..5 {
            throttle.hit(|count| logged.push(count));
        }
        tokio::time::advance(WARNING_PERIOD).await;
        throttle.hit(|count| logged.push(count));
        assert_eq!(logged, vec![1, 5]);
    }
}
