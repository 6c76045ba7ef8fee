//! The agent's Prometheus metrics (SPEC §7): the RPC layer records into this
//! recorder; the log gauges and gossip's rejected-datagram count are read at
//! each scrape. Nothing is installed globally.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{Key, Label, Recorder};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use proglog_raft::LogStatus;

/// Latency buckets of `proglog_rpc_duration_seconds`, from 100 µs to 10 s.
const DURATION_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The recorder and its renderer.
#[derive(Clone)]
pub(crate) struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    /// Gossip datagrams dropped as unauthentic or stale (kept by discovery).
    gossip_rejected: Arc<AtomicU64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub(crate) fn new(gossip_rejected: Arc<AtomicU64>) -> Self {
        let builder = PrometheusBuilder::new();
        let builder = builder
            .set_buckets_for_metric(
                Matcher::Full(proglog_server::RPC_DURATION_SECONDS.into()),
                DURATION_BUCKETS,
            )
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = Arc::new(builder.build_recorder());
        let handle = recorder.handle();
        Self { recorder, handle, gossip_rejected }
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
        let metadata = metrics::Metadata::new(module_path!(), metrics::Level::INFO, None);
        self.recorder
            .register_counter(
                &Key::from_parts("proglog_gossip_rejected_total", Vec::<Label>::new()),
                &metadata,
            )
            .absolute(self.gossip_rejected.load(Ordering::Relaxed));
        self.handle.render()
    }
}
