//! Traces (SPEC §9): the OpenTelemetry SDK and its OTLP/gRPC exporter, which
//! only the agent links. The libraries below create spans through the
//! `opentelemetry` API, which records nothing until [`Traces::start`] installs
//! a provider.
//!
//! A collector that is down, slow or wrong never slows serving: finished spans
//! go into a bounded queue ([`QUEUE_SPANS`]) that a task exports in batches,
//! each within [`EXPORT_TIMEOUT`]; a span that finds the queue full, or whose
//! batch fails, is dropped and counted (`proglog_trace_spans_dropped_total`),
//! with a warning at most every [`WARNING_PERIOD`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, Span, SpanData, SpanExporter, SpanProcessor};
use slog::{Logger, warn};
use tokio::sync::{mpsc, watch};

/// Finished spans waiting for export, at most.
pub const QUEUE_SPANS: usize = 4096;
/// Spans sent to the collector in one request, at most.
const EXPORT_BATCH: usize = 512;
/// How long spans wait for more to fill a batch.
const EXPORT_INTERVAL: Duration = Duration::from_millis(500);
/// One export may take this long; then its spans are dropped.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// At most one warning about dropped spans per this period.
pub const WARNING_PERIOD: Duration = Duration::from_secs(10);

/// Where the collector is: `http://host:port` or `https://host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collector {
    /// `host:port`.
    pub address: String,
    /// Dialled with TLS.
    pub tls: bool,
}

impl std::str::FromStr for Collector {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(rest) = text.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = text.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!("{text:?} is not an http:// or https:// URL"));
        };
        let address = rest.strip_suffix('/').unwrap_or(rest);
        let valid = address
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !valid || address.contains('/') {
            return Err(format!(
                "{text:?} must name host:port and nothing else (e.g. http://127.0.0.1:4317)"
            ));
        }
        Ok(Self { address: address.to_owned(), tls })
    }
}

impl std::fmt::Display for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", if self.tls { "https" } else { "http" }, self.address)
    }
}

/// The installed provider and its export task.
pub(crate) struct Traces {
    provider: SdkTracerProvider,
    dropped: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
    exporting: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traces").field("dropped", &self.dropped).finish_non_exhaustive()
    }
}

/// What the provider hands finished spans to: the bounded queue.
#[derive(Debug)]
struct ExportQueue {
    spans: mpsc::Sender<SpanData>,
    dropped: Arc<AtomicU64>,
}

impl SpanProcessor for ExportQueue {
    fn on_start(&self, _span: &mut Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if self.spans.try_send(span).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

impl Traces {
    /// Installs the global tracer provider and the W3C trace-context
    /// propagator, exporting to `collector` (TLS trusting `roots`, when it is
    /// `https`); `ratio` of the requests without a sampled parent start a trace.
    /// Must run inside the tokio runtime (the exporter's channel lives there).
    pub(crate) fn start(
        collector: &Collector,
        roots: &[std::path::PathBuf],
        ratio: f64,
        node_name: &str,
        logger: &Logger,
    ) -> Result<Self, crate::AgentError> {
        let failed = |error: proglog_tls::Error| crate::AgentError::Traces(format!("{collector}: {error}"));
        let connector = if collector.tls {
            let config = proglog_tls::client_config(roots, None, &[b"h2"]).map_err(failed)?;
            let host =
                collector.address.rsplit_once(':').map_or(collector.address.as_str(), |(host, _)| host);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            proglog_tls::Connector::tls(config, host).map_err(failed)?
        } else {
            proglog_tls::Connector::plaintext()
        };
        let endpoint =
            connector.endpoint(&collector.address).map_err(failed)?.connect_timeout(EXPORT_TIMEOUT);
        let channel = connector.connect_lazy(&endpoint);
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_channel(channel)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|error| crate::AgentError::Traces(error.to_string()))?;
        let resource = opentelemetry_sdk::Resource::builder_empty()
            .with_service_name("proglog-agent")
            .with_attribute(KeyValue::new("service.instance.id", node_name.to_owned()))
            .build();
        exporter.set_resource(&resource);
        let (spans, queue) = mpsc::channel(QUEUE_SPANS);
        let dropped = Arc::new(AtomicU64::new(0));
        let provider = SdkTracerProvider::builder()
            .with_span_processor(ExportQueue { spans, dropped: Arc::clone(&dropped) })
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))))
            .with_resource(resource)
            .build();
        opentelemetry::global::set_tracer_provider(provider.clone());
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let (stop, stopped) = watch::channel(false);
        let exporting = tokio::spawn(export(
            queue,
            exporter,
            Arc::clone(&dropped),
            stopped,
            collector.clone(),
            logger.clone(),
        ));
        Ok(Self { provider, dropped, stop, exporting })
    }

    /// Spans dropped so far (queue full, or their export failed).
    pub(crate) fn dropped(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.dropped)
    }

    /// Exports what is queued, within `grace`, then stops.
    pub(crate) async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(true);
        let mut exporting = self.exporting;
        if tokio::time::timeout(grace, &mut exporting).await.is_err() {
            exporting.abort();
        }
        let _ = self.provider.shutdown_with_timeout(Duration::ZERO);
    }
}

/// Sends queued spans in batches until stopped; then sends what is left once.
async fn export(
    mut queue: mpsc::Receiver<SpanData>,
    exporter: opentelemetry_otlp::SpanExporter,
    dropped: Arc<AtomicU64>,
    mut stopped: watch::Receiver<bool>,
    collector: Collector,
    logger: Logger,
) {
    let mut warned: Option<Instant> = None;
    let mut reported = 0;
    loop {
        let mut batch = Vec::new();
        let stopping = tokio::select! {
            span = queue.recv() => match span {
                Some(span) => { batch.push(span); false }
                None => true,
            },
            _ = stopped.wait_for(|stop| *stop) => true,
        };
        let deadline = tokio::time::Instant::now() + EXPORT_INTERVAL;
        while batch.len() < EXPORT_BATCH {
            let next = if stopping {
                queue.try_recv().ok()
            } else {
                tokio::select! {
                    span = queue.recv() => span,
                    () = tokio::time::sleep_until(deadline) => None,
                    _ = stopped.wait_for(|stop| *stop) => None,
                }
            };
            let Some(span) = next else { break };
            batch.push(span);
        }
        if !batch.is_empty() {
            let count = batch.len() as u64;
            let failure = match tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(batch)).await {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(error.to_string()),
                Err(_) => Some(format!("no answer within {EXPORT_TIMEOUT:?}")),
            };
            if let Some(failure) = failure {
                dropped.fetch_add(count, Ordering::Relaxed);
                if warned.is_none_or(|at| at.elapsed() >= WARNING_PERIOD) {
                    warned = Some(Instant::now());
                    let total = dropped.load(Ordering::Relaxed);
                    warn!(logger, "trace spans dropped: the collector did not take them";
                        "collector" => %collector, "error" => failure, "dropped_since_last_warning" => total - reported);
                    reported = total;
                }
            }
        }
        if stopping && queue.is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_collector_is_an_http_or_https_url_naming_host_and_port() {
        let parsed: Collector = "http://127.0.0.1:4317".parse().expect("parses");
        assert_eq!(parsed, Collector { address: "127.0.0.1:4317".into(), tls: false });
        let parsed: Collector = "https://collector.example:4317/".parse().expect("parses");
        assert_eq!(parsed, Collector { address: "collector.example:4317".into(), tls: true });
        for bad in
            ["127.0.0.1:4317", "http://", "http://host", "http://host:port", "grpc://h:1", "http://h:1/v1"]
        {
            assert!(bad.parse::<Collector>().is_err(), "{bad}");
        }
    }
}
