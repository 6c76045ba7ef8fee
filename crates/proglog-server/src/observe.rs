//! Observability of every RPC, in one tower layer rather than in each handler:
//! a debug log line (method, subject, offset, duration, code, and the trace),
//! the Prometheus metrics `proglog_rpc_requests_total{method,code}` and
//! `proglog_rpc_duration_seconds{method}` (SPEC §7), and for `log.v1.Log` calls
//! an OpenTelemetry server span (SPEC §9), a child of the caller's W3C trace
//! context, current while the handler runs (so what it appends carries it).
//!
//! A call ends when its response body ends (for streams, when the stream does),
//! or when the body is dropped early (the client went away: `CANCELLED`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame};
use metrics::{Key, Label, Recorder};
use metrics_exporter_prometheus::PrometheusRecorder;
use opentelemetry::trace::{FutureExt, SpanKind, TraceContextExt, Tracer};
use opentelemetry::{KeyValue, global};
use slog::{Logger, debug};
use tonic::Code;

use crate::auth::ANONYMOUS;
use crate::listener::Peer;

/// Name of the request counter.
pub const RPC_REQUESTS_TOTAL: &str = "proglog_rpc_requests_total";
/// Name of the latency histogram.
pub const RPC_DURATION_SECONDS: &str = "proglog_rpc_duration_seconds";

/// Where a handler notes the offset a call concerns (set through the request's
/// extensions, so it is known for failed calls too).
#[derive(Clone, Debug, Default)]
pub(crate) struct OffsetSlot(Arc<std::sync::OnceLock<u64>>);

impl OffsetSlot {
    /// Notes `offset` on the call that carries `extensions` (if observed).
    pub(crate) fn note(extensions: &http::Extensions, offset: u64) {
        if let Some(slot) = extensions.get::<OffsetSlot>() {
            let _ = slot.0.set(offset);
        }
    }
}

/// Where observations go.
#[derive(Clone)]
pub struct RpcObserver {
    logger: Logger,
    recorder: Option<Arc<PrometheusRecorder>>,
}

impl std::fmt::Debug for RpcObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcObserver").field("metrics", &self.recorder.is_some()).finish()
    }
}

impl RpcObserver {
    /// Logs each call at debug level to `logger`; counts it in `recorder` if given
    /// (the agent renders that recorder at `/metrics`).
    pub fn new(logger: Logger, recorder: Option<Arc<PrometheusRecorder>>) -> Self {
        Self { logger, recorder }
    }

    fn finish(&self, call: &Call, code: Code) {
        let elapsed = call.started.elapsed();
        let code_name = code_name(code);
        let span = call.trace.span();
        let traced = span.span_context().clone();
        debug!(self.logger, "rpc";
            "method" => &call.method, "subject" => &call.subject, "offset" => call.offset,
            "duration_us" => elapsed.as_micros() as u64, "code" => code_name,
            "trace_id" => traced.is_valid().then(|| traced.trace_id().to_string()),
            "span_id" => traced.is_valid().then(|| traced.span_id().to_string()));
        if traced.is_valid() {
            span.set_attribute(KeyValue::new("rpc.grpc.status_code", code as i64));
            if code != Code::Ok {
                span.set_status(opentelemetry::trace::Status::error(code_name));
            }
            span.end();
        }
        if let Some(recorder) = &self.recorder {
            let metadata = metrics::Metadata::new(module_path!(), metrics::Level::INFO, None);
            let labels = vec![Label::new("method", call.method.clone()), Label::new("code", code_name)];
            recorder.register_counter(&Key::from_parts(RPC_REQUESTS_TOTAL, labels), &metadata).increment(1);
            let labels = vec![Label::new("method", call.method.clone())];
            recorder
                .register_histogram(&Key::from_parts(RPC_DURATION_SECONDS, labels), &metadata)
                .record(elapsed.as_secs_f64());
        }
    }
}

/// gRPC's canonical code names, as label values.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    Some(Code::from(value))
}

/// The tower layer to put in front of the gRPC routes.
#[derive(Clone, Debug)]
pub struct ObserveLayer {
    observer: RpcObserver,
}

impl ObserveLayer {
    pub(crate) fn new(observer: RpcObserver) -> Self {
        Self { observer }
    }
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner, observer: self.observer.clone() }
    }
}

/// The service the layer wraps around the routes.
#[derive(Clone, Debug)]
pub struct Observe<S> {
    inner: S,
    observer: RpcObserver,
}

/// What is known of a call while it runs.
#[derive(Debug)]
struct Call {
    method: String,
    subject: String,
    offset: Option<u64>,
    started: Instant,
    /// The call's server span, if it is traced.
    trace: opentelemetry::Context,
}

/// The gRPC service whose calls are traced (agent-to-agent traffic is traced
/// by the hops it carries, not by its long-lived streams).
const TRACED_SERVICE: &str = "log.v1.Log";

/// A server span for a call of `service`/`method`, the child of the trace
/// context in `headers` (a sampled parent is always followed).
pub(crate) fn server_span(headers: &http::HeaderMap, service: &str, method: &str) -> opentelemetry::Context {
    let parent = global::get_text_map_propagator(|propagator| {
        propagator.extract(&opentelemetry_http::HeaderExtractor(headers))
    });
    let tracer = global::tracer("proglog-server");
    let span = tracer
        .span_builder(format!("{service}/{method}"))
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", service.to_owned()),
            KeyValue::new("rpc.method", method.to_owned()),
        ])
        .start_with_context(&tracer, &parent);
    parent.with_span(span)
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Observe<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = http::Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        // The clone that was polled ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let observer = self.observer.clone();
        let method = request.uri().path().rsplit('/').next().unwrap_or_default().to_owned();
        let subject = Peer::of(request.extensions()).map_or(ANONYMOUS, Peer::subject).to_owned();
        let slot = OffsetSlot::default();
        request.extensions_mut().insert(slot.clone());
        let started = Instant::now();
        let traced =
            request.uri().path().strip_prefix('/').and_then(|path| path.strip_prefix(TRACED_SERVICE));
        let trace = if traced.is_some_and(|rest| rest.starts_with('/')) {
            server_span(request.headers(), TRACED_SERVICE, &method)
        } else {
            opentelemetry::Context::new()
        };
        let context = trace.clone();
        Box::pin(
            async move {
                let response = inner.call(request).await?;
                let offset = slot.0.get().copied();
                let call = Call { method, subject, offset, started, trace };
                // A "trailers-only" response (an error) has its status in the headers.
                let code = grpc_status(response.headers());
                Ok(response.map(|body| ObservedBody { body, observer: Some(observer), call, code }))
            }
            .with_context(context),
        )
    }
}

pin_project_lite::pin_project! {
    /// A response body that reports its call when it ends.
    pub struct ObservedBody<B> {
        #[pin]
        body: B,
        observer: Option<RpcObserver>,
        call: Call,
        code: Option<Code>,
    }

    impl<B> PinnedDrop for ObservedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(observer) = this.observer.take() {
                observer.finish(this.call, this.code.unwrap_or(Code::Cancelled));
            }
        }
    }
}

impl<B> ObservedBody<B> {
    /// A body of a call that is not observed (refused before it reached the routes).
    pub(crate) fn unobserved(body: B) -> Self {
        let call = Call {
            method: String::new(),
            subject: String::new(),
            offset: None,
            started: Instant::now(),
            trace: opentelemetry::Context::new(),
        };
        Self { body, observer: None, call, code: None }
    }
}

impl<B: Body> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    *this.code = Some(code);
                }
            }
            Poll::Ready(Some(Err(_))) => *this.code = Some(this.code.unwrap_or(Code::Internal)),
            Poll::Ready(None) => {
                if let Some(observer) = this.observer.take() {
                    observer.finish(this.call, this.code.unwrap_or(Code::Ok));
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
