//! The agent's Prometheus metrics (SPEC §7): the RPC layer records into this
//! recorder; the log gauges, gossip's rejected-datagram count and the
//! refused peer messages are read at each scrape. Nothing is installed globally.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{Key, Label, Recorder};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use proglog_discovery::Discovery;
use proglog_raft::{LogStatus, Reason, Rejections};

/// Latency buckets of `proglog_rpc_duration_seconds`, from 100 µs to 10 s.
const DURATION_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The recorder and its renderer.
#[derive(Clone)]
pub(crate) struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    /// Peer messages and calls refused, by reason: by the node's gate and its
    /// transport, and by gossip (other clusters' nodes, replayed leaves).
    peer_rejected: Arc<Rejections>,
    discovery: Arc<Discovery>,
    /// Trace spans dropped (queue full, export failed), when tracing is on.
    dropped_spans: Option<Arc<AtomicU64>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub(crate) fn new(
        peer_rejected: Arc<Rejections>,
        discovery: Arc<Discovery>,
        dropped_spans: Option<Arc<AtomicU64>>,
    ) -> Self {
        let builder = PrometheusBuilder::new();
        let builder = builder
            .set_buckets_for_metric(
                Matcher::Full(proglog_server::RPC_DURATION_SECONDS.into()),
                DURATION_BUCKETS,
            )
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = Arc::new(builder.build_recorder());
        let handle = recorder.handle();
        Self { recorder, handle, peer_rejected, discovery, dropped_spans }
    }

    pub(crate) fn recorder(&self) -> Arc<PrometheusRecorder> {
        Arc::clone(&self.recorder)
    }

    fn gauge(&self, name: &'static str, value: f64) {
        let metadata = metrics::Metadata::new(module_path!(), metrics::Level::INFO, None);
        self.recorder.register_gauge(&Key::from_parts(name, Vec::<Label>::new()), &metadata).set(value);
    }

    /// The Prometheus text, with the log's gauges as `status` has them.
    pub(crate) fn render(&self, status: &LogStatus) -> String {
        self.gauge("proglog_log_lowest_offset", status.lowest_offset as f64);
        // -1 while the log is empty: "no highest offset".
        self.gauge("proglog_log_highest_offset", status.highest_offset.map_or(-1.0, |offset| offset as f64));
        self.gauge("proglog_log_bytes", status.bytes as f64);
        self.gauge("proglog_raft_is_leader", if status.is_leader { 1.0 } else { 0.0 });
        self.gauge("proglog_raft_term", status.term as f64);
        self.gauge("proglog_raft_commit_index", status.commit_index as f64);
        self.gauge("proglog_raft_applied_index", status.applied_index as f64);
        self.gauge("proglog_cluster_members", status.members as f64);
        self.gauge("proglog_raft_voters", status.voters as f64);
        let metadata = metrics::Metadata::new(module_path!(), metrics::Level::INFO, None);
        self.recorder
            .register_counter(
                &Key::from_parts("proglog_gossip_rejected_total", Vec::<Label>::new()),
                &metadata,
            )
            .absolute(self.discovery.rejected());
        if let Some(dropped) = &self.dropped_spans {
            let key = Key::from_parts("proglog_trace_spans_dropped_total", Vec::<Label>::new());
            self.recorder.register_counter(&key, &metadata).absolute(dropped.load(Ordering::Relaxed));
        }
        for (reason, count) in self.peer_rejected.snapshot() {
            let gossip = match reason {
                Reason::ClusterId => self.discovery.foreign(),
                Reason::Leave => self.discovery.stale_leaves(),
                _ => 0,
            };
            let key =
                Key::from_parts("proglog_peer_rejected_total", vec![Label::new("reason", reason.as_str())]);
            self.recorder.register_counter(&key, &metadata).absolute(count + gossip);
        }
        self.handle.render()
    }
}
