//! The running agent: one value that owns every task, with one shutdown path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use proglog_server::{Authorizer, Fsync, LocalLog, RpcObserver, ServerConfig};
use slog::{Logger, info, warn};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{AgentConfig, FsyncPolicy};
use crate::http::{self, HttpState};
use crate::metrics::Metrics;

/// Why the agent failed to start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The log could not be opened or closed.
    #[error("log: {0}")]
    Log(#[from] proglog_log::Error),
    /// The log service failed.
    #[error("log service: {0}")]
    LogService(#[from] proglog_server::LogError),
    /// The gRPC server failed to start or serve.
    #[error("rpc server: {0}")]
    Server(#[from] proglog_server::ServerError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP port's TLS files are unusable.
    #[error("http tls: {0}")]
    HttpTls(String),
    /// A task panicked or was cancelled.
    #[error("task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A running proglog node.
#[derive(Debug)]
pub struct Agent {
    logger: Logger,
    log: Arc<LocalLog>,
    rpc_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    rpc: JoinHandle<Result<(), proglog_server::ServerError>>,
    http: Option<JoinHandle<()>>,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, AgentError> {
    TcpListener::bind(addr).await.map_err(|source| AgentError::Bind { addr, source })
}

impl Agent {
    /// Opens the log and starts serving. Returns once every listener is bound
    /// (so a caller can connect at once); serving goes on in background tasks
    /// until [`Agent::shutdown`].
    pub async fn start(config: AgentConfig, logger: Logger) -> Result<Self, AgentError> {
        let logger = logger.new(slog::o!("node" => config.node_name.clone()));
        let authorizer: Arc<dyn Authorizer> = proglog_server::authorizer_from_files(
            config.acl_model_file.as_deref(),
            config.acl_policy_file.as_deref(),
            &logger,
        )
        .await?;
        let tls = config.server_tls();
        let http_tls = match &tls {
            Some(tls) => {
                tls.load()?; // report a bad certificate before anything is written
                Some(http::tls_config(tls).map_err(AgentError::HttpTls)?)
            }
            None => None,
        };
        let rpc_listener = bind(config.rpc_addr()).await?;
        let rpc_addr = rpc_listener
            .local_addr()
            .map_err(|source| AgentError::Bind { addr: config.rpc_addr(), source })?;
        let http_listener = match config.http_addr {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let http_addr = match &http_listener {
            Some(listener) => {
                Some(listener.local_addr().map_err(|source| AgentError::Bind { addr: rpc_addr, source })?)
            }
            None => None,
        };

        let log_dir = config.data_dir.join("log");
        let log = proglog_log::Log::open(&log_dir, config.log_config())?;
        let recovery = log.recovery();
        info!(logger, "log opened";
            "dir" => %log_dir.display(), "lowest_offset" => log.lowest_offset(), "next_offset" => log.next_offset(),
            "clean_shutdown" => recovery.clean_shutdown, "truncated_bytes" => recovery.truncated_bytes);
        let fsync = match config.fsync {
            FsyncPolicy::Always => Fsync::Always,
            FsyncPolicy::Never => Fsync::Never,
        };
        let log = Arc::new(LocalLog::new(log, fsync, config.node_name.clone(), rpc_addr.to_string())?);

        let (stop, stopped) = watch::channel(false);
        let metrics = Metrics::new();
        let observer = RpcObserver::new(logger.clone(), Some(metrics.recorder()));
        let server_config =
            ServerConfig { tls, max_record_bytes: config.max_record_bytes, observer: Some(observer) };
        let mut rpc_stopped = stopped.clone();
        let rpc = tokio::spawn(proglog_server::serve(
            rpc_listener,
            Arc::clone(&log),
            Arc::clone(&authorizer),
            server_config,
            async move {
                let _ = rpc_stopped.wait_for(|stop| *stop).await;
            },
        ));
        let http = http_listener.map(|listener| {
            let state = HttpState {
                log: Arc::clone(&log),
                authorizer,
                metrics,
                max_record_bytes: config.max_record_bytes,
            };
            tokio::spawn(http::serve(listener, Arc::new(state), http_tls, stopped, logger.clone()))
        });
        info!(logger, "serving"; "rpc_addr" => %rpc_addr, "http_addr" => http_addr.map(|addr| addr.to_string()).unwrap_or_default(),
            "tls" => config.server_tls_cert_file.is_some(), "fsync" => ?config.fsync);
        Ok(Self { logger, log, rpc_addr, http_addr, stop, rpc, http })
    }

    /// The address the gRPC service listens on.
    pub fn rpc_addr(&self) -> SocketAddr {
        self.rpc_addr
    }

    /// The address the HTTP API listens on, if enabled.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The log this agent serves.
    pub fn log(&self) -> &Arc<LocalLog> {
        &self.log
    }

    /// Stops accepting, finishes in-flight requests (for at most
    /// [`SHUTDOWN_GRACE`]: connections still busy then are dropped), ends streams,
    /// then syncs and closes the log.
    pub async fn shutdown(self) -> Result<(), AgentError> {
        info!(self.logger, "shutting down");
        let _ = self.stop.send(true);
        let served = within_grace(self.rpc, &self.logger, "rpc").await;
        let http = match self.http {
            Some(http) => within_grace(http, &self.logger, "http").await.map(|_| ()),
            None => Ok(()),
        };
        let closed = self.log.close();
        served?.transpose()?;
        http?;
        closed?;
        info!(self.logger, "stopped");
        Ok(())
    }
}

/// How long shutdown waits for in-flight requests and for clients to hang up.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Waits for a serving task to wind down; after the grace period aborts it
/// (dropping its connections). `None` when it had to be aborted.
async fn within_grace<T>(
    mut task: JoinHandle<T>,
    logger: &Logger,
    what: &'static str,
) -> Result<Option<T>, tokio::task::JoinError> {
    match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
        Ok(result) => result.map(Some),
        Err(_) => {
            warn!(logger, "connections still open after the grace period; closing them"; "listener" => what);
            task.abort();
            match task.await {
                Err(error) if error.is_cancelled() => Ok(None),
                other => other.map(Some),
            }
        }
    }
}
