//! The CLI's root span, when tracing is configured the standard way
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, an `http://` OTLP/gRPC collector): each
//! command runs in a span `proglog <command>`, whose context every call carries
//! (the agents' spans join that trace), and is exported when it ends.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opentelemetry::trace::{FutureExt, SpanKind, Status, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, Span, SpanData, SpanExporter, SpanProcessor};

/// Spans kept for the export at the end, at most.
const MAX_SPANS: usize = 1024;
/// The export at the end waits this long for the collector, at most.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Finished spans, kept until the command ends (a CLI makes few).
#[derive(Debug, Default, Clone)]
struct Kept(Arc<Mutex<Vec<SpanData>>>);

impl SpanProcessor for Kept {
    fn on_start(&self, _span: &mut Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        let mut spans = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if spans.len() < MAX_SPANS {
            spans.push(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Runs `command` (named `name`) in a root span if `OTEL_EXPORTER_OTLP_ENDPOINT`
/// is set, then exports the span; a collector that cannot be reached costs a
/// warning on stderr, never the command's outcome.
pub(crate) async fn traced<T>(
    name: &str,
    command: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_none() {
        return command.await;
    }
    let mut exporter = match opentelemetry_otlp::SpanExporter::builder().with_tonic().build() {
        Ok(exporter) => exporter,
        Err(error) => {
            eprintln!("proglog: tracing off: {error}");
            return command.await;
        }
    };
    let resource = opentelemetry_sdk::Resource::builder_empty().with_service_name("proglog").build();
    exporter.set_resource(&resource);
    let kept = Kept::default();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(kept.clone())
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(resource)
        .build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let tracer = provider.tracer("proglog");
    let span = tracer.span_builder(format!("proglog {name}")).with_kind(SpanKind::Client).start(&tracer);
    let context = opentelemetry::Context::current_with_span(span);
    let result = command.with_context(context.clone()).await;
    if let Err(error) = &result {
        context.span().set_status(Status::error(format!("{error:#}")));
    }
    context.span().end();
    let spans = std::mem::take(&mut *kept.0.lock().unwrap_or_else(PoisonError::into_inner));
    match tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(spans)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => eprintln!("proglog: the trace was not exported: {error}"),
        Err(_) => eprintln!("proglog: the trace was not exported: no answer within {EXPORT_TIMEOUT:?}"),
    }
    result
}
