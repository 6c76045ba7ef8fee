//! The HTTP API (SPEC §4): the book's chapter-1 JSON endpoints, `/records`,
//! `/metrics`, `/healthz`, `/readyz` — behind the same TLS, client certificates
//! and ACL as the gRPC port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Extension, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use proglog_server::{
    ANONYMOUS, Authorizer, CommitLog, LocalLog, LogError, OBJECT_WILDCARD, TlsFiles, action,
};
use serde::{Deserialize, Serialize};
use slog::{Logger, debug, warn};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::metrics::Metrics;

/// A TLS handshake that has not finished by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once, at most; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 1024;

/// What the handlers share.
pub(crate) struct HttpState {
    pub(crate) log: Arc<LocalLog>,
    pub(crate) authorizer: Arc<dyn Authorizer>,
    pub(crate) metrics: Metrics,
    pub(crate) max_record_bytes: u64,
}

/// The caller's identity on this connection (client certificate CN).
#[derive(Clone, Debug)]
struct Subject(String);

/// An error answered as `{"error": "..."}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<LogError> for ApiError {
    fn from(error: LogError) -> Self {
        let status = match &error {
            LogError::OutOfRange { .. } => StatusCode::NOT_FOUND,
            LogError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            LogError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self(status, error.to_string())
    }
}

#[derive(Deserialize)]
struct RecordIn {
    value: String,
}

#[derive(Deserialize)]
struct ProduceIn {
    record: RecordIn,
}

#[derive(Deserialize)]
struct ConsumeIn {
    offset: u64,
}

#[derive(Serialize)]
struct RecordOut {
    value: String,
    offset: u64,
}

fn authorize(state: &HttpState, subject: &Subject, action: &str) -> Result<(), ApiError> {
    if state.authorizer.is_allowed(&subject.0, OBJECT_WILDCARD, action) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("{} not permitted to {action} to {OBJECT_WILDCARD}", subject.0),
        ))
    }
}

/// Request bodies are JSON whatever their content type (`curl -d` sends a form type).
fn json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|error| ApiError(StatusCode::BAD_REQUEST, format!("bad JSON body: {error}")))
}

async fn produce(
    State(state): State<Arc<HttpState>>,
    Extension(subject): Extension<Subject>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&state, &subject, action::PRODUCE)?;
    let request: ProduceIn = json(&body)?;
    let value = BASE64
        .decode(request.record.value.as_bytes())
        .map_err(|error| ApiError(StatusCode::BAD_REQUEST, format!("record value is not base64: {error}")))?;
    proglog_server::check_record_size(value.len(), state.max_record_bytes)?;
    let offset = state.log.append(vec![Bytes::from(value)]).await?.await?;
    Ok(axum::Json(serde_json::json!({ "offset": offset })))
}

async fn consume_at(
    state: &HttpState,
    subject: &Subject,
    offset: u64,
) -> Result<impl IntoResponse + use<>, ApiError> {
    authorize(state, subject, action::CONSUME)?;
    let record = state.log.read(offset).await?;
    let record = RecordOut { value: BASE64.encode(&record.value), offset: record.offset };
    Ok(axum::Json(serde_json::json!({ "record": record })))
}

/// The book's `GET /` with a JSON body `{"offset": N}`.
async fn consume_body(
    State(state): State<Arc<HttpState>>,
    Extension(subject): Extension<Subject>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let request: ConsumeIn = json(&body)?;
    consume_at(&state, &subject, request.offset).await
}

async fn consume_path(
    State(state): State<Arc<HttpState>>,
    Extension(subject): Extension<Subject>,
    Path(offset): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let offset = offset
        .parse()
        .map_err(|_| ApiError(StatusCode::BAD_REQUEST, format!("{offset:?} is not an offset")))?;
    consume_at(&state, &subject, offset).await
}

async fn metrics(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    let text = state.metrics.render(state.log.log());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text)
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "serving" }))
}

/// A single node is its own leader and applies what it commits as it commits.
async fn readyz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ready" }))
}

fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/", post(produce).get(consume_body))
        .route("/records", post(produce))
        .route("/records/{offset}", get(consume_path))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// rustls config for the HTTP port from the same files as the gRPC port.
pub(crate) fn tls_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read_err =
        |path: &std::path::Path, error: rustls::pki_types::pem::Error| format!("{}: {error}", path.display());
    let certs = CertificateDer::pem_file_iter(&files.cert_file)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|error| read_err(&files.cert_file, error))?;
    let key =
        PrivateKeyDer::from_pem_file(&files.key_file).map_err(|error| read_err(&files.key_file, error))?;
    let builder = rustls::ServerConfig::builder();
    let builder = match &files.ca_file {
        Some(ca_file) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca_file).map_err(|error| read_err(ca_file, error))? {
                roots
                    .add(cert.map_err(|error| read_err(ca_file, error))?)
                    .map_err(|error| format!("{}: {error}", ca_file.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|error| format!("{}: {error}", ca_file.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|error| error.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Serves until `stop` turns true, then lets open connections finish their
/// requests and returns once all are closed.
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<HttpState>,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut stop: watch::Receiver<bool>,
    logger: Logger,
) {
    let router = router(state);
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            accepted = listener.accept(), if connections.len() < MAX_CONNECTIONS => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = stopped(&mut stop) => break,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(logger, "http accept failed"; "error" => %error);
                continue;
            }
        };
        let (router, tls, mut stop, logger) = (router.clone(), tls.clone(), stop.clone(), logger.clone());
        connections.spawn(async move {
            let (io, subject): (Box<dyn Io>, String) = match tls {
                Some(tls) => {
                    let handshake = tokio_rustls::TlsAcceptor::from(tls).accept(tcp);
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                        Ok(Ok(stream)) => {
                            let subject =
                                proglog_server::subject_of_chain(stream.get_ref().1.peer_certificates());
                            (Box::new(stream), subject)
                        }
                        Ok(Err(error)) => {
                            debug!(logger, "http tls handshake failed"; "peer" => %peer, "error" => %error);
                            return;
                        }
                        Err(_) => return,
                    }
                }
                None => (Box::new(tcp), ANONYMOUS.to_owned()),
            };
            serve_connection(io, router.layer(Extension(Subject(subject))), peer, &mut stop, &logger).await;
        });
    }
    while connections.join_next().await.is_some() {}
}

/// Resolves once `stop` is true (holding no borrow of it afterwards).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

async fn serve_connection(
    io: Box<dyn Io>,
    router: Router,
    peer: SocketAddr,
    stop: &mut watch::Receiver<bool>,
    logger: &Logger,
) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(router));
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stopped(stop) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        debug!(logger, "http connection ended with an error"; "peer" => %peer, "error" => %error);
    }
}
