//! The HTTP API (SPEC §4): the book's chapter-1 JSON endpoints, `/records`,
//! `/metrics`, `/healthz`, `/readyz` — behind the same TLS, client certificates
//! and ACL as the gRPC port. `/logs/{name}/records[/{offset}]` are the same
//! calls on a named log (SPEC §11; its name is the ACL object).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use proglog_raft::{Append, Catalog, LogError};
use proglog_server::{Authorizer, BodyError, Limits, Listener, Peer, action, object_of};
use serde::{Deserialize, Serialize};
use slog::Logger;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// Calls in progress at once on the HTTP port.
const MAX_CONCURRENT_CALLS: usize = 512;
/// HTTP/2 streams per connection on the HTTP port.
const MAX_STREAMS_PER_CONNECTION: u32 = 32;
/// Largest body of a request that carries no record (`GET /` with an offset).
const SMALL_BODY_BYTES: usize = 4 << 10;
/// JSON around a record's base64 value in a produce body.
const JSON_OVERHEAD_BYTES: usize = 1 << 10;

/// Written to a plaintext connection refused at the connection cap.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
    content-length: 36\r\nconnection: close\r\n\r\n{\"error\":\"connection limit reached\"}";

/// What the handlers share.
pub(crate) struct HttpState {
    pub(crate) logs: Arc<dyn Catalog>,
    /// A produce to a log that does not exist creates it.
    pub(crate) auto_create_logs: bool,
    pub(crate) authorizer: Arc<dyn Authorizer>,
    pub(crate) metrics: Metrics,
    pub(crate) max_record_bytes: u64,
    /// Clients need a certificate for everything but the health probes (the
    /// TLS handshake lets them in without one, for the probes).
    pub(crate) certificates_required: bool,
}

impl HttpState {
    /// The largest produce body: a record of `max-record-bytes` in base64, in JSON.
    fn max_produce_body_bytes(&self) -> usize {
        let max = usize::try_from(self.max_record_bytes).unwrap_or(usize::MAX);
        max.div_ceil(3).saturating_mul(4).saturating_add(JSON_OVERHEAD_BYTES)
    }
}

/// The HTTP port's bounds, given the connection cap and the idle timeout.
pub(crate) fn limits(state: &HttpState, max_connections: usize, idle_timeout: std::time::Duration) -> Limits {
    Limits {
        max_connections,
        max_concurrent_calls: MAX_CONCURRENT_CALLS,
        max_streams_per_connection: MAX_STREAMS_PER_CONNECTION,
        idle_timeout,
        ..Limits::for_requests_of(state.max_produce_body_bytes())
    }
}

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
            LogError::Unavailable(_) | LogError::NotLeader { .. } | LogError::Refused { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            LogError::ResourceExhausted(_) => StatusCode::TOO_MANY_REQUESTS,
            LogError::Unimplemented(_) => StatusCode::NOT_IMPLEMENTED,
            LogError::NotFound(_) => StatusCode::NOT_FOUND,
            LogError::AlreadyExists(_) => StatusCode::CONFLICT,
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
    /// A linearizable read (SPEC §11), as `ConsumeRequest.linearizable`.
    #[serde(default)]
    linearizable: bool,
}

#[derive(Serialize)]
struct RecordOut {
    value: String,
    offset: u64,
}

/// Refuses a caller that may not do `action` to log `log` (a bad name: 400).
fn authorize(state: &HttpState, peer: &Peer, action: &str, log: &str) -> Result<(), ApiError> {
    proglog_raft::check_log_name(log)?;
    let object = object_of(log);
    if state.authorizer.is_allowed(peer.subject(), object, action) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("{} not permitted to {action} to {object}", peer.subject()),
        ))
    }
}

impl From<BodyError> for ApiError {
    fn from(error: BodyError) -> Self {
        let status = match error {
            BodyError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            BodyError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            BodyError::TooLarge { .. } | BodyError::Read(_) => StatusCode::BAD_REQUEST,
        };
        Self(status, error.to_string())
    }
}

/// Request bodies are JSON whatever their content type (`curl -d` sends a form type).
fn json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|error| ApiError(StatusCode::BAD_REQUEST, format!("bad JSON body: {error}")))
}

async fn produce(
    state: State<Arc<HttpState>>,
    peer: Extension<Peer>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    produce_to(state, peer, String::new(), body).await
}

async fn produce_named(
    state: State<Arc<HttpState>>,
    peer: Extension<Peer>,
    Path(log): Path<String>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    produce_to(state, peer, log, body).await
}

async fn produce_to(
    State(state): State<Arc<HttpState>>,
    Extension(peer): Extension<Peer>,
    log: String,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&state, &peer, action::PRODUCE, &log)?;
    // Read only now that the caller is authorized: a denied caller's body is
    // never read. Too large a body is named by the record size it implies.
    let body = peer.read_body(body, state.max_produce_body_bytes()).await.map_err(|error| match error {
        BodyError::TooLarge { bytes, max_bytes } => {
            let size = bytes.map_or_else(|| format!("more than {max_bytes}"), |bytes| bytes.to_string());
            let max = state.max_record_bytes;
            let message = format!(
                "request body of {size} bytes holds a record value larger than max-record-bytes ({max} bytes)"
            );
            ApiError(StatusCode::BAD_REQUEST, message)
        }
        other => other.into(),
    })?;
    let request: ProduceIn = json(&body)?;
    let value = BASE64
        .decode(request.record.value.as_bytes())
        .map_err(|error| ApiError(StatusCode::BAD_REQUEST, format!("record value is not base64: {error}")))?;
    proglog_raft::check_record_size(value.len(), state.max_record_bytes)?;
    let log = match state.logs.get(&log) {
        // Created by its first produce, for a caller that may create it (as gRPC).
        Err(LogError::NotFound(_)) if state.auto_create_logs => {
            authorize(&state, &peer, action::ADMIN, &log)?;
            state.logs.get_or_create(&log).await?
        }
        found => found?,
    };
    let offset = log.append(Append::one(value)).await?.await?;
    Ok(axum::Json(serde_json::json!({ "offset": offset })))
}

async fn consume_at(
    state: &HttpState,
    log: &str,
    offset: u64,
    linearizable: bool,
) -> Result<impl IntoResponse + use<>, ApiError> {
    let log = state.logs.get(log)?;
    if linearizable {
        log.linearize().await?;
    }
    let record = log.read(offset).await?;
    let record = RecordOut { value: BASE64.encode(&record.value), offset: record.offset };
    Ok(axum::Json(serde_json::json!({ "record": record })))
}

/// The book's `GET /` with a JSON body `{"offset": N}`.
async fn consume_body(
    State(state): State<Arc<HttpState>>,
    Extension(peer): Extension<Peer>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&state, &peer, action::CONSUME, "")?;
    let request: ConsumeIn = json(&peer.read_body(body, SMALL_BODY_BYTES).await?)?;
    consume_at(&state, "", request.offset, request.linearizable).await
}

async fn consume_path(
    state: State<Arc<HttpState>>,
    peer: Extension<Peer>,
    Path(offset): Path<String>,
    query: RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    consume_from(state, peer, String::new(), offset, query).await
}

async fn consume_named(
    state: State<Arc<HttpState>>,
    peer: Extension<Peer>,
    Path((log, offset)): Path<(String, String)>,
    query: RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    consume_from(state, peer, log, offset, query).await
}

async fn consume_from(
    State(state): State<Arc<HttpState>>,
    Extension(peer): Extension<Peer>,
    log: String,
    offset: String,
    RawQuery(query): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&state, &peer, action::CONSUME, &log)?;
    let offset = offset
        .parse()
        .map_err(|_| ApiError(StatusCode::BAD_REQUEST, format!("{offset:?} is not an offset")))?;
    consume_at(&state, &log, offset, linearizable(query.as_deref())?).await
}

/// The `linearizable` parameter of a query string: `true`/`false` (or `1`/`0`;
/// alone, it means `true`); absent: `false`. Any other parameter is refused.
fn linearizable(query: Option<&str>) -> Result<bool, ApiError> {
    let mut linearizable = false;
    for pair in query.unwrap_or_default().split('&').filter(|pair| !pair.is_empty()) {
        let bad = || ApiError(StatusCode::BAD_REQUEST, format!("unknown query parameter {pair:?}"));
        linearizable = match pair.split_once('=').unwrap_or((pair, "true")) {
            ("linearizable", "true" | "1") => true,
            ("linearizable", "false" | "0") => false,
            _ => return Err(bad()),
        };
    }
    Ok(linearizable)
}

async fn metrics(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    let logs = state.logs.list();
    let default = logs.first().map(|info| info.status.clone()).unwrap_or_default();
    let text = state.metrics.render(&default, &logs);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text)
}

/// Serving, unless the log stopped for good (then 503 with the reason).
async fn healthz(State(state): State<Arc<HttpState>>) -> Response {
    match default_status(&state).failure {
        None => axum::Json(serde_json::json!({ "status": "serving" })).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "status": "failed", "reason": reason })),
        )
            .into_response(),
    }
}

fn default_status(state: &HttpState) -> proglog_raft::LogStatus {
    state.logs.get("").map(|log| log.status()).unwrap_or_default()
}

/// Ready (SPEC §4) when the node knows a leader and has applied the committed
/// log — the default log's, and no named log here has stopped for good. Named
/// logs without a leader yet (an election, a log just created) do not make
/// the node unready: they are listed under `logs_not_ready`.
async fn readyz(State(state): State<Arc<HttpState>>) -> Response {
    let logs = state.logs.list();
    let status = logs.first().map(|info| info.status.clone()).unwrap_or_default();
    let failed = logs.iter().skip(1).any(|info| info.status.failure.is_some());
    let unready: Vec<_> = logs
        .iter()
        .skip(1)
        .filter(|info| !info.status.is_ready())
        .map(|info| {
            serde_json::json!({
                "log": info.name,
                "leader": info.status.leader.as_ref().map(|leader| &leader.id),
                "failure": info.status.failure,
            })
        })
        .collect();
    let ready = status.is_ready() && !failed;
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not ready" },
        "leader": status.leader.as_ref().map(|leader| &leader.id),
        "commit_index": status.commit_index,
        "applied_index": status.applied_index,
        "failure": status.failure,
        "logs": logs.len(),
        "logs_not_ready": unready,
    });
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(body)).into_response()
}

/// Traces a call of the record API (SPEC §9): a server span named for its
/// method and `route`, a child of the caller's W3C trace context (headers),
/// current while the handler runs, ended with the response's status.
async fn traced(
    State(route): State<&'static str>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use opentelemetry::trace::{FutureExt, SpanKind, Status, TraceContextExt, Tracer};
    let headers = opentelemetry_http::HeaderExtractor(request.headers());
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&headers));
    let method = request.method().as_str().to_owned();
    let tracer = opentelemetry::global::tracer("proglog-agent");
    let span = tracer
        .span_builder(format!("{method} {route}"))
        .with_kind(SpanKind::Server)
        .with_attributes([
            opentelemetry::KeyValue::new("http.request.method", method),
            opentelemetry::KeyValue::new("http.route", route),
        ])
        .start_with_context(&tracer, &parent);
    let context = parent.with_span(span);
    let response = next.run(request).with_context(context.clone()).await;
    let span = context.span();
    let status = response.status();
    span.set_attribute(opentelemetry::KeyValue::new("http.response.status_code", i64::from(status.as_u16())));
    if status.is_server_error() {
        span.set_status(Status::error(status.to_string()));
    }
    span.end();
    response
}

/// Answers a client without a certificate `401`, where certificates are
/// required: it reached the port only for the probes (SPEC §4).
async fn certified(
    State(state): State<Arc<HttpState>>,
    Extension(peer): Extension<Peer>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if state.certificates_required && !peer.has_certificate() {
        return ApiError(
            StatusCode::UNAUTHORIZED,
            "a client certificate is required (only /healthz and /readyz answer without one)".into(),
        )
        .into_response();
    }
    next.run(request).await
}

fn router(state: Arc<HttpState>) -> Router {
    let traced = |route| axum::middleware::from_fn_with_state(route, traced);
    let identified = Router::new()
        .route("/", post(produce).get(consume_body).layer(traced("/")))
        .route("/records", post(produce).layer(traced("/records")))
        .route("/records/{offset}", get(consume_path).layer(traced("/records/{offset}")))
        .route("/logs/{name}/records", post(produce_named).layer(traced("/logs/{name}/records")))
        .route(
            "/logs/{name}/records/{offset}",
            get(consume_named).layer(traced("/logs/{name}/records/{offset}")),
        )
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such path".into()) })
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), certified));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(identified)
        .with_state(state)
}

fn overloaded(message: String) -> Response {
    ApiError(StatusCode::SERVICE_UNAVAILABLE, message).into_response()
}

/// Serves the HTTP API on `tcp` until `shutdown` resolves, then lets calls in
/// progress finish and returns once every connection is closed.
pub(crate) async fn serve(
    tcp: TcpListener,
    state: Arc<HttpState>,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
    logger: Logger,
) {
    let listener = Listener { name: "http", tcp, tls, limits, http1: true, refusal: REFUSAL, overloaded };
    listener.serve(router(state), shutdown, logger).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_complete_http_response() {
        let text = std::str::from_utf8(REFUSAL).unwrap_or_default();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        assert!(serde_json::from_str::<serde_json::Value>(body).is_ok(), "{body}");
    }

    #[test]
    fn the_query_names_a_linearizable_read_or_is_refused() {
        assert!(!linearizable(None).unwrap_or(true));
        assert!(!linearizable(Some("")).unwrap_or(true));
        assert!(linearizable(Some("linearizable")).unwrap_or(false));
        assert!(linearizable(Some("linearizable=true")).unwrap_or(false));
        assert!(linearizable(Some("linearizable=1")).unwrap_or(false));
        assert!(!linearizable(Some("linearizable=false")).unwrap_or(true));
        for bad in ["linearizable=yes", "offset=3", "linearizable=true&x"] {
            let error = linearizable(Some(bad)).err().map(|error| error.0);
            assert_eq!(error, Some(StatusCode::BAD_REQUEST), "{bad}");
        }
    }
}
