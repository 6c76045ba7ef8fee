//! The running agent: one value that owns every task, with one shutdown path.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use proglog_discovery::{Config as DiscoveryConfig, Discovery};
use proglog_raft::{Catalog, CommitLog, Logs, Member, RaftConfig, RaftLog};
use proglog_server::{Authorizer, Limits, PeerTransport, RpcObserver, ServerConfig};
use slog::{Logger, error, info, warn};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{AgentConfig, HostPort};
use crate::http::{self, HttpState};
use crate::membership;
use crate::metrics::Metrics;

/// Why the agent failed to start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The configuration breaks a rule.
    #[error("config: {0}")]
    Config(#[from] crate::ConfigError),
    /// The trace exporter could not be set up.
    #[error("otlp-endpoint {0}")]
    Traces(String),
    /// The log could not be opened or closed.
    #[error("log: {0}")]
    Log(#[from] proglog_log::Error),
    /// The log service failed.
    #[error("log service: {0}")]
    LogService(#[from] proglog_raft::LogError),
    /// The gRPC server failed to start or serve.
    #[error("rpc server: {0}")]
    Server(#[from] proglog_server::ServerError),
    /// The peer TLS files are unusable.
    #[error("peer tls: {0}")]
    PeerTls(#[from] proglog_tls::Error),
    /// Gossip discovery could not start.
    #[error("discovery: {0}")]
    Discovery(#[from] proglog_discovery::Error),
    /// The gossip key file is unusable.
    #[error("gossip-key-file {path}: {reason}")]
    GossipKey {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A task panicked or was cancelled.
    #[error("task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A running proglog node.
#[derive(Debug)]
pub struct Agent {
    logger: Logger,
    log: Arc<RaftLog>,
    /// Every log of this node (the default one is `log`).
    logs: Arc<Logs>,
    transport: PeerTransport,
    discovery: Arc<Discovery>,
    membership: JoinHandle<()>,
    election_timeout: Duration,
    rpc_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    rpc: JoinHandle<Result<(), proglog_server::ServerError>>,
    http: Option<JoinHandle<()>>,
    traces: Option<crate::traces::Traces>,
}

/// Connections the kernel completes and queues for `accept` (capped by
/// `net.core.somaxconn`). std's default, 128, overflows under a burst of connects
/// before the accept loop drains it, and the clients that overflow wait a second
/// for their SYN to be retried.
const LISTEN_BACKLOG: u32 = 4096;

fn bind(addr: SocketAddr) -> Result<TcpListener, AgentError> {
    let error = |source| AgentError::Bind { addr, source };
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(error)?;
    socket.set_reuseaddr(true).map_err(error)?;
    socket.bind(addr).map_err(error)?;
    socket.listen(LISTEN_BACKLOG).map_err(error)
}

impl Agent {
    /// Opens the log and starts serving. Returns once every listener is bound
    /// (so a caller can connect at once); serving goes on in background tasks
    /// until [`Agent::shutdown`].
    pub async fn start(config: AgentConfig, logger: Logger) -> Result<Self, AgentError> {
        config.validate()?;
        let logger = logger.new(slog::o!("node" => config.node_name.clone()));
        let authorizer: Arc<dyn Authorizer> = proglog_server::authorizer_from_files(
            config.serving.acl_model_file.as_deref(),
            config.serving.acl_policy_file.as_deref(),
            &logger,
        )
        .await?;
        let tls = config.serving.server_tls();
        let peer_tls = config.serving.peer_tls()?;
        // Reports a bad certificate before anything is written.
        // The HTTP port lets clients without a certificate connect, for the
        // health probes only (a kubelet sends none; SPEC §4).
        let http_tls = tls
            .as_ref()
            .map(|tls| tls.server_config_allowing_anonymous(&[b"h2", b"http/1.1"]))
            .transpose()?;
        let certificates_required =
            tls.as_ref().is_some_and(proglog_server::TlsFiles::requires_client_certificates);
        let bind_ip = resolve_bind(&config).await?;
        let rpc_bind = SocketAddr::new(bind_ip, config.rpc_port);
        let rpc_listener = bind(rpc_bind)?;
        let rpc_addr =
            rpc_listener.local_addr().map_err(|source| AgentError::Bind { addr: rpc_bind, source })?;
        let http_listener = match config.http_addr.0 {
            Some(addr) => Some(bind(addr)?),
            None => None,
        };
        let http_addr = match &http_listener {
            Some(listener) => {
                Some(listener.local_addr().map_err(|source| AgentError::Bind { addr: rpc_addr, source })?)
            }
            None => None,
        };

        // Gossip's socket too, before anything is written: its address is part
        // of this node's description in the configuration.
        let gossip_bind = SocketAddr::new(bind_ip, config.bind_addr.port);
        let gossip_socket = tokio::net::UdpSocket::bind(gossip_bind)
            .await
            .map_err(|source| proglog_discovery::Error::Bind { addr: gossip_bind, source })?;
        let gossip_addr = gossip_socket
            .local_addr()
            .map_err(|source| proglog_discovery::Error::Bind { addr: gossip_bind, source })?;
        // What others dial: the advertised host (a name survives a pod's new
        // IP) with the ports bound.
        let advertised = config.advertised_host();
        let (rpc_advertised, gossip_advertised) =
            (HostPort::join(advertised, rpc_addr.port()), HostPort::join(advertised, gossip_addr.port()));
        let gossip_target = if bind_ip.is_unspecified() {
            Some(resolve_advertised(&gossip_advertised, &logger).await?)
        } else {
            None
        };

        // The exporter before the log: spans of recovery and of the first calls
        // are kept, and a bad endpoint is reported before anything is written.
        let traces = match &config.otlp_endpoint {
            Some(collector) => Some(crate::traces::Traces::start(
                collector,
                &config.collector_roots(),
                config.trace_sample_ratio,
                &config.node_name,
                &logger,
            )?),
            None => None,
        };
        let log_dir = config.data_dir.join("log");
        // Opening may scan a segment and fsync: off the runtime's workers.
        let (dir, log_config) = (log_dir.clone(), config.log.record_log_config());
        let log = tokio::task::spawn_blocking(move || proglog_log::Log::open(&dir, log_config)).await??;
        report_recovery(&logger, &log);
        let (max_connections, http_max_connections) = connection_caps(&config, &log_dir, &logger);
        // Always the replicated log: a single node is a one-member cluster.
        let member =
            Member::new(config.node_name.clone(), rpc_advertised.clone()).with_gossip_addr(gossip_advertised);
        let transport = PeerTransport::new(peer_tls, tokio::runtime::Handle::current(), logger.clone());
        let recorder = crate::metrics::recorder();
        let raft_config = RaftConfig {
            bootstrap: config.bootstrap(),
            settings: config.log.clone(),
            metrics: crate::metrics::raft_metrics(&recorder),
            logger: logger.clone(),
            ..RaftConfig::new(member, config.data_dir.clone())
        };
        let network = Arc::new(transport.clone());
        let logs = tokio::task::spawn_blocking(move || {
            let log = Arc::new(RaftLog::open(raft_config.clone(), log, Arc::new(network.as_ref().clone()))?);
            network.bind(&log);
            // The named logs (SPEC §11), each its own Raft group, on the same transport.
            Logs::open(log, raft_config, network)
        })
        .await??;
        logs.start();
        let log = Arc::clone(logs.default_log());
        let identity = log.identity();
        info!(logger, "this node"; "member_id" => identity.member_id,
            "cluster_id" => identity.cluster_id.map(|id| id.to_string()).unwrap_or_default());

        // Gossip starts with the servers: what it tells the leader, peers dial on
        // the RPC port, which is already bound. It looks for the cluster through
        // the join addresses and the members this node last knew (so that a node
        // restarted without join addresses, or removed by its own leave, finds
        // its cluster again).
        let mut seeds: Vec<String> = config.join_addrs().map(ToString::to_string).collect();
        for member in log.members().iter().filter(|member| member.id != identity.member_id) {
            if !member.gossip_addr.is_empty() && !seeds.contains(&member.gossip_addr) {
                seeds.push(member.gossip_addr.clone());
            }
        }
        let (discovery, events) = Discovery::start_on(
            gossip_socket,
            DiscoveryConfig {
                name: config.node_name.clone(),
                member_id: identity.member_id,
                cluster_id: identity.cluster_id.map_or(0, proglog_raft::ClusterId::get),
                bind_addr: gossip_bind,
                rpc_addr: rpc_advertised.clone(),
                advertise_addr: gossip_target,
                start_join_addrs: seeds,
                key: gossip_key(config.gossip_key_file.as_deref())?,
                logger: logger.clone(),
            },
        )?;
        let discovery = Arc::new(discovery);
        let (stop, stopped) = watch::channel(false);
        let dropped_spans = traces.as_ref().map(crate::traces::Traces::dropped);
        let metrics =
            Metrics::new(recorder, Arc::clone(log.rejections()), Arc::clone(&discovery), dropped_spans);
        let observer = RpcObserver::new(logger.clone(), Some(metrics.recorder()));
        let limits = PeerTransport::reserve(Limits {
            max_connections,
            max_concurrent_calls: config.serving.max_concurrent_calls,
            idle_timeout: config.serving.idle_timeout,
            ..Limits::for_requests_of(usize::try_from(config.log.max_record_bytes).unwrap_or(usize::MAX))
        });
        let server_config = ServerConfig {
            tls,
            max_record_bytes: config.log.max_record_bytes,
            limits,
            observer: Some(observer),
            logger: logger.clone(),
            extra_services: vec![transport.service()],
            auto_create_logs: config.auto_create_logs,
        };
        let mut rpc_stopped = stopped.clone();
        let served: Arc<dyn Catalog> = logs.clone();
        let rpc = tokio::spawn(proglog_server::serve_logs(
            rpc_listener,
            Arc::clone(&served),
            Arc::clone(&authorizer),
            server_config,
            async move {
                let _ = rpc_stopped.wait_for(|stop| *stop).await;
            },
        ));
        let http = http_listener.map(|listener| {
            let state = HttpState {
                logs: served,
                auto_create_logs: config.auto_create_logs,
                authorizer,
                metrics,
                max_record_bytes: config.log.max_record_bytes,
                certificates_required,
            };
            let limits = http::limits(&state, http_max_connections, config.serving.idle_timeout);
            let mut stopped = stopped;
            let shutdown = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            tokio::spawn(http::serve(listener, Arc::new(state), http_tls, limits, shutdown, logger.clone()))
        });
        let membership = tokio::spawn(membership::run(
            Arc::clone(&log),
            Arc::clone(&discovery),
            transport.clone(),
            events,
            stop.subscribe(),
            logger.clone(),
        ));
        info!(logger, "serving"; "rpc_addr" => %rpc_addr, "http_addr" => http_addr.map(|addr| addr.to_string()).unwrap_or_default(),
            "gossip_addr" => %discovery.local_addr(), "tls" => config.serving.server_tls_cert_file.is_some(), "fsync" => ?config.log.fsync);
        Ok(Self {
            logger,
            log,
            logs,
            transport,
            discovery,
            membership,
            election_timeout: config.log.raft_election_timeout,
            rpc_addr,
            http_addr,
            stop,
            rpc,
            http,
            traces,
        })
    }

    /// The address the gRPC service listens on.
    pub fn rpc_addr(&self) -> SocketAddr {
        self.rpc_addr
    }

    /// The address the HTTP API listens on, if enabled.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The log this agent serves: its node of the replicated log (join and
    /// leave other nodes through it).
    pub fn log(&self) -> Arc<RaftLog> {
        Arc::clone(&self.log)
    }

    /// Every log this agent serves: the default log and the named logs.
    pub fn logs(&self) -> Arc<Logs> {
        Arc::clone(&self.logs)
    }

    /// Resolves with the reason once one of this node's logs (the default log
    /// or a named one) has stopped for good (its Raft, fsync or apply path
    /// failed): the node can no longer do its job. It already reports not ready and NOT_SERVING; the caller should
    /// then [`Agent::abort`] and exit non-zero, so that a supervisor restarts it.
    pub fn failed(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let logs = Arc::clone(&self.logs);
        async move { logs.failed().await }
    }

    /// Stops a node whose log failed (see [`Agent::failed`]): it does not leave
    /// the cluster (a failure is not a leave); the servers stop within
    /// [`ABORT_GRACE`], and the log is closed as far as it still can be.
    pub async fn abort(self, reason: &str) {
        error!(self.logger, "the replicated log stopped: this node can no longer serve; stopping"; "reason" => reason);
        let deadline = tokio::time::Instant::now() + ABORT_GRACE;
        let _ = self.stop.send(true);
        self.membership.abort();
        self.transport.shutdown();
        self.discovery.stop();
        let http = async {
            if let Some(http) = self.http {
                let _ = within(deadline, http, &self.logger, "http").await;
            }
        };
        let _ = tokio::join!(within(deadline, self.rpc, &self.logger, "rpc"), http);
        let (log, logs) = (Arc::clone(&self.log), Arc::clone(&self.logs));
        let _ = tokio::task::spawn_blocking(move || {
            let _ = logs.close();
            log.close()
        })
        .await;
    }

    /// Stops accepting, finishes in-flight requests (for at most
    /// [`SHUTDOWN_GRACE`] in all: connections still busy then are dropped), ends
    /// streams, then syncs and closes the log. Connections with nothing in flight
    /// close at once.
    pub async fn shutdown(self) -> Result<(), AgentError> {
        info!(self.logger, "shutting down");
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        self.leave_cluster().await;
        let _ = self.stop.send(true);
        self.membership.abort();
        // Peers' streams would hold the graceful shutdown open.
        self.transport.shutdown();
        let http = async {
            match self.http {
                Some(http) => within(deadline, http, &self.logger, "http").await.map(|_| ()),
                None => Ok(()),
            }
        };
        let (served, http) = tokio::join!(within(deadline, self.rpc, &self.logger, "rpc"), http);
        let (log, logs) = (Arc::clone(&self.log), Arc::clone(&self.logs));
        let closed = tokio::task::spawn_blocking(move || logs.close().and(log.close())).await?;
        if let Some(traces) = self.traces {
            traces.shutdown(deadline.saturating_duration_since(tokio::time::Instant::now())).await;
        }
        served?.transpose()?;
        http?;
        closed?;
        info!(self.logger, "stopped");
        Ok(())
    }
}

impl Agent {
    /// Leaves the cluster gracefully: a leader hands leadership over first, then
    /// gossip announces the leave and the (new) leader removes this node from the
    /// configuration; each step waits a bounded time. A node alone in its
    /// cluster stays its only voter. A voter whose removal would leave the
    /// others without a live majority does not leave (they could never add it
    /// back): it stops as a failure would, stays a member, and says so.
    async fn leave_cluster(&self) {
        let me = self.log.member().id;
        let others = self.log.members().iter().any(|member| member.id != me);
        let voters = self.log.voters();
        if others && voters.contains(&me) {
            let remaining: Vec<u64> = voters.into_iter().filter(|voter| *voter != me).collect();
            let live: HashSet<u64> = self.discovery.members().iter().map(|node| node.member_id).collect();
            let alive = remaining.iter().filter(|voter| live.contains(voter)).count();
            if alive * 2 <= remaining.len() {
                warn!(self.logger, "not leaving the cluster: without this node the other voters would lack a live majority; \
                    it stops as a failure would and stays a member (start it again to restore the majority)";
                    "voters_left" => remaining.len(), "voters_up" => alive);
                self.discovery.stop();
                return;
            }
        }
        if others && self.log.status().is_leader {
            let _ = self.log.leave(me).await; // hands leadership over
            let handed = async {
                let mut status = self.log.watch_status();
                let _ = status.wait_for(|status| !status.is_leader && status.leader.is_some()).await;
            };
            let _ = tokio::time::timeout(self.election_timeout * 2, handed).await;
        }
        self.discovery.leave().await;
        if others {
            let removed = async {
                while self.log.members().iter().any(|member| member.id == me) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            // A removed node may never hear that its removal committed: bounded.
            if tokio::time::timeout(self.election_timeout, removed).await.is_err() {
                info!(self.logger, "left gossip; the leader removes this node from the cluster");
            }
        }
    }
}

/// Resolves the start-join addresses (host:port).
/// The address to bind: `bind-addr`'s host, resolved if it is a name (then
/// checked as an IP would have been: plaintext off loopback needs `--insecure`).
async fn resolve_bind(config: &AgentConfig) -> Result<std::net::IpAddr, AgentError> {
    if let Some(ip) = config.bind_addr.ip() {
        return Ok(ip);
    }
    let host = config.bind_addr.host.as_str();
    let unresolved = |reason: String| {
        AgentError::Config(crate::ConfigError {
            key: "bind-addr".into(),
            reason: format!("{host}: {reason}"),
        })
    };
    let ip = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|error| unresolved(error.to_string()))?
        .next()
        .ok_or_else(|| unresolved("resolves to no address".into()))?
        .ip();
    config.check_plaintext("bind-addr", ip)?;
    Ok(ip)
}

/// How long a node bound to an unspecified address waits for its advertised
/// name to resolve (a pod's DNS record appears once the pod is scheduled).
const ADVERTISED_NAME_WAIT: Duration = Duration::from_secs(60);

/// The address `advertised` (`host:port`) resolves to, retrying until it does.
async fn resolve_advertised(advertised: &str, logger: &Logger) -> Result<SocketAddr, AgentError> {
    let deadline = tokio::time::Instant::now() + ADVERTISED_NAME_WAIT;
    loop {
        let reason = match tokio::net::lookup_host(advertised).await {
            Ok(mut addrs) => match addrs.next() {
                Some(addr) => return Ok(addr),
                None => "resolves to no address".to_owned(),
            },
            Err(error) => error.to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(AgentError::Config(crate::ConfigError {
                key: "advertise-addr".into(),
                reason: format!("{advertised} did not resolve within {ADVERTISED_NAME_WAIT:?}: {reason}"),
            }));
        }
        warn!(logger, "the advertised address does not resolve yet; retrying"; "advertise_addr" => advertised, "reason" => reason);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The gossip key: the file's bytes, without leading or trailing whitespace.
fn gossip_key(path: Option<&std::path::Path>) -> Result<Option<Vec<u8>>, AgentError> {
    let Some(path) = path else { return Ok(None) };
    let error = |reason: String| AgentError::GossipKey { path: path.to_path_buf(), reason };
    let bytes = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    let key = bytes.trim_ascii();
    if key.len() < 16 {
        return Err(error(format!("holds {} bytes; a key needs at least 16", key.len())));
    }
    Ok(Some(key.to_vec()))
}

/// How long shutdown waits, in all, for in-flight requests to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How long [`Agent::abort`] lets calls in progress finish: they cannot
/// succeed, and a supervisor should restart the node at once.
pub const ABORT_GRACE: Duration = Duration::from_secs(1);

/// Waits for a serving task to wind down; at `deadline` aborts it (dropping its
/// connections). `None` when it had to be aborted.
async fn within<T>(
    deadline: tokio::time::Instant,
    mut task: JoinHandle<T>,
    logger: &Logger,
    what: &'static str,
) -> Result<Option<T>, tokio::task::JoinError> {
    match tokio::time::timeout_at(deadline, &mut task).await {
        Ok(result) => result.map(Some),
        Err(_) => {
            warn!(logger, "calls still in progress at the shutdown deadline; closing their connections"; "listener" => what);
            task.abort();
            match task.await {
                Err(error) if error.is_cancelled() => Ok(None),
                other => other.map(Some),
            }
        }
    }
}

/// Says what opening the log found, as loudly as it deserves: records lost to
/// damage are an error naming the file and offsets; a torn tail cut after a crash
/// is a warning.
fn report_recovery(logger: &Logger, log: &proglog_log::Log) {
    let recovery = log.recovery();
    let store = recovery.truncated_store.as_ref().map(|path| path.display().to_string()).unwrap_or_default();
    if let Some(lost) = &recovery.lost_offsets {
        error!(logger, "log damaged: records that were durable before a clean shutdown are gone from the data log; their Raft entries are cut from this node's log (in a cluster the leader sends them again; a one-member cluster has lost them)";
            "file" => &store, "lost_offsets" => format!("{}..{}", lost.start, lost.end),
            "records_lost" => lost.end - lost.start, "bytes_cut" => recovery.truncated_bytes);
    } else if recovery.truncated_bytes > 0 {
        warn!(logger, "cut a torn tail left by an unclean shutdown (records never acknowledged as durable)";
            "file" => &store, "bytes_cut" => recovery.truncated_bytes);
    }
    for path in &recovery.removed_files {
        info!(logger, "removed an index left by an interrupted segment removal"; "file" => %path.display());
    }
    for path in &recovery.ignored_files {
        warn!(logger, "a file in the log directory is not part of the log; left alone"; "file" => %path.display());
    }
    info!(logger, "log opened";
        "dir" => %log.dir().display(), "lowest_offset" => log.lowest_offset(), "next_offset" => log.next_offset(),
        "clean_shutdown" => recovery.clean_shutdown, "rebuilt_indexes" => recovery.rebuilt_indexes.len());
}

/// File descriptors kept for everything but client connections (the log's
/// segment files on top of these, counted at start).
const RESERVED_DESCRIPTORS: u64 = 256;

/// The connection caps of the RPC and HTTP ports, lowered (in proportion) when
/// the process's file descriptor limit cannot hold them, so that accepting never
/// fails for want of a descriptor.
fn connection_caps(config: &AgentConfig, log_dir: &std::path::Path, logger: &Logger) -> (usize, usize) {
    let serving = &config.serving;
    let http = if config.http_addr.0.is_some() { serving.http_max_connections } else { 0 };
    let wanted = (serving.max_connections + http) as u64;
    let log_files = std::fs::read_dir(log_dir).map(Iterator::count).unwrap_or(0) as u64;
    let nofile = descriptor_limit();
    let available = nofile.saturating_sub(RESERVED_DESCRIPTORS + log_files);
    if wanted <= available {
        return (serving.max_connections, serving.http_max_connections);
    }
    let scale = |cap: usize| ((cap as u64 * available / wanted) as usize).max(1);
    let caps = (scale(serving.max_connections), scale(serving.http_max_connections));
    warn!(logger, "the file descriptor limit cannot hold the configured connections: lowering the caps";
        "nofile" => nofile, "max_connections" => caps.0, "http_max_connections" => caps.1);
    caps
}

/// The soft limit on open file descriptors.
fn descriptor_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 { limit.rlim_cur } else { 1024 }
}
