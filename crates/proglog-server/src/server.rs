//! Assembling and running the gRPC server: TLS, the log service, health,
//! reflection, graceful shutdown.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use proglog_api::v1::log_server::LogServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::auth::Authorizer;
use crate::observe::{ObserveLayer, RpcObserver};
use crate::service::LogService;
use crate::{CommitLog, ServerError};

/// Server TLS material (SPEC §2): PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain.
    pub cert_file: PathBuf,
    /// The server's private key.
    pub key_file: PathBuf,
    /// With a CA, clients must present a certificate it signed (mutual TLS).
    pub ca_file: Option<PathBuf>,
}

/// How to serve.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// TLS, or plaintext when `None`.
    pub tls: Option<TlsFiles>,
    /// Largest record value accepted (`max-record-bytes`).
    pub max_record_bytes: u64,
    /// Where each call is logged and counted; `None` observes nothing.
    pub observer: Option<RpcObserver>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self { tls: None, max_record_bytes: 1 << 20, observer: None }
    }
}

fn read_pem(path: &Path) -> Result<Vec<u8>, ServerError> {
    let bytes = std::fs::read(path).map_err(|source| ServerError::ReadFile { path: path.into(), source })?;
    if !bytes.windows(11).any(|window| window == b"-----BEGIN ") {
        return Err(ServerError::BadPem { path: path.into(), reason: "holds no PEM block" });
    }
    Ok(bytes)
}

impl TlsFiles {
    /// Reads the files into tonic's TLS config; a missing or non-PEM file is an
    /// error naming it.
    pub fn load(&self) -> Result<ServerTlsConfig, ServerError> {
        let identity = Identity::from_pem(read_pem(&self.cert_file)?, read_pem(&self.key_file)?);
        let mut tls = ServerTlsConfig::new().identity(identity);
        if let Some(ca_file) = &self.ca_file {
            tls = tls.client_ca_root(Certificate::from_pem(read_pem(ca_file)?));
        }
        Ok(tls)
    }
}

/// The decode limit: above `max_record_bytes`, so an oversized record reaches the
/// service and gets our `INVALID_ARGUMENT` rather than a transport error.
fn decode_limit(max_record_bytes: u64) -> usize {
    usize::try_from(max_record_bytes.saturating_mul(2).saturating_add(64 << 10)).unwrap_or(usize::MAX)
}

/// Serves `log` on `listener` until `shutdown` resolves: then stops accepting,
/// ends the open streams, finishes in-flight requests and returns.
///
/// Registers `log.v1.Log`, `grpc.health.v1.Health` (serving for `""` and
/// `"log.v1.Log"`) and server reflection (v1 and v1alpha).
pub async fn serve<L: CommitLog>(
    listener: TcpListener,
    log: Arc<L>,
    authorizer: Arc<dyn Authorizer>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    if config.max_record_bytes == 0 {
        return Err(ServerError::Config("max-record-bytes must be positive".into()));
    }
    let observer = config
        .observer
        .unwrap_or_else(|| RpcObserver::new(slog::Logger::root(slog::Discard, slog::o!()), None));
    let mut builder = Server::builder();
    if let Some(tls) = &config.tls {
        builder = builder.tls_config(tls.load()?)?;
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let limit = decode_limit(config.max_record_bytes);
    let service = LogServer::new(LogService::new(log, authorizer, config.max_record_bytes, stop_rx))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", tonic_health::ServingStatus::Serving).await;
    health.set_serving::<LogServer<LogService<L>>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proglog_api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proglog_api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let stopping = async move {
        shutdown.await;
        health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        let _ = stop_tx.send(true);
    };
    builder
        .layer(ObserveLayer::new(observer))
        .add_service(service)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        // Small responses (ProduceStream acks) must not wait for Nagle's algorithm.
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), stopping)
        .await?;
    Ok(())
}
