//! An OTLP/gRPC trace collector on loopback, for the tests and benchmarks of
//! traces: it keeps what it receives (with the node that sent it), or only
//! counts it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;

use super::cluster::DEADLINE;

/// A span as received, with the node (`service.instance.id`) that sent it.
#[derive(Clone, Debug)]
pub struct Received {
    pub node: String,
    pub span: Span,
}

impl Received {
    pub fn attribute(&self, key: &str) -> Option<Value> {
        self.span.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.clone()?.value)
    }
}

#[derive(Clone, Default)]
pub struct Collector {
    keep: bool,
    received: Arc<Mutex<Vec<Received>>>,
    count: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans.resource.unwrap_or_default();
            let node = resource
                .attributes
                .iter()
                .find(|kv| kv.key == "service.instance.id")
                .and_then(|kv| match kv.value.clone()?.value? {
                    Value::StringValue(name) => Some(name),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                self.count.fetch_add(scope.spans.len() as u64, Ordering::Relaxed);
                if self.keep {
                    let spans = scope.spans.into_iter().map(|span| Received { node: node.clone(), span });
                    self.received.lock().unwrap().extend(spans);
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Collector {
    /// Serves on `127.0.0.1:0`, keeping the spans it receives if `keep`.
    pub async fn start(keep: bool) -> (Self, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let collector = Self { keep, ..Self::default() };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (collector, addr)
    }

    /// Every span kept so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Spans received so far, kept or not.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The spans kept of trace `trace_id`.
    pub fn of_trace(&self, trace_id: &[u8]) -> Vec<Received> {
        self.received().into_iter().filter(|received| received.span.trace_id == trace_id).collect()
    }

    /// Waits until trace `trace_id` holds spans named `names` (at least), and
    /// returns it.
    pub async fn wait_for(&self, trace_id: &[u8], names: &[&str]) -> Vec<Received> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let spans = self.of_trace(trace_id);
            if names.iter().all(|name| spans.iter().any(|received| received.span.name == *name)) {
                return spans;
            }
            let seen: Vec<_> = spans.iter().map(|r| (&r.node, &r.span.name)).collect();
            assert!(Instant::now() < deadline, "trace has {seen:?}, wanted {names:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
