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
/// Buckets of `proglog_fsync_duration_seconds`, from 50 µs to 1 s.
const FSYNC_BUCKETS: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0];

/// Every metric the agent exports, with its `# HELP` text (what an alert on
/// it means is in ARCHITECTURE.md, "Metrics").
const DESCRIPTIONS: &[(&str, &str)] = &[
    (proglog_server::RPC_REQUESTS_TOTAL, "gRPC calls finished, by method and status code"),
    (
        proglog_server::RPC_DURATION_SECONDS,
        "Time from a gRPC call's arrival to the end of its response, by method",
    ),
    ("proglog_log_lowest_offset", "Lowest offset this node still holds"),
    ("proglog_log_highest_offset", "Highest committed offset this node holds (-1 while the log is empty)"),
    ("proglog_log_bytes", "Bytes of this node's data log (records and Raft entries) on disk"),
    ("proglog_raft_is_leader", "1 while this node leads the cluster, else 0"),
    ("proglog_raft_term", "This node's Raft term"),
    ("proglog_raft_commit_index", "Index of the last Raft entry this node knows committed"),
    (
        "proglog_raft_applied_index",
        "Index of the last Raft entry applied on this node (its records readable)",
    ),
    ("proglog_raft_apply_lag_entries", "Committed Raft entries this node has not applied yet"),
    ("proglog_raft_follower_lag_entries", "On the leader: Raft entries each follower lacks, by follower"),
    (
        "proglog_raft_leader_changes_total",
        "Leaders this node saw take over (elections that ended with a new leader)",
    ),
    (
        "proglog_raft_snapshot_fetches_total",
        "Snapshot record fetches this node started (it was too far behind)",
    ),
    ("proglog_forwarded_appends_total", "Appends this node forwarded to the leader"),
    ("proglog_fsync_duration_seconds", "Time each fsync of the Raft entries took"),
    ("proglog_cluster_members", "Members of the cluster (voters and learners)"),
    ("proglog_raft_voters", "Members of the cluster that vote"),
    ("proglog_gossip_rejected_total", "Gossip datagrams refused (bad key, malformed, oversized)"),
    ("proglog_peer_rejected_total", "Peer messages and calls refused before Raft saw them, by reason"),
    (
        "proglog_trace_spans_dropped_total",
        "Trace spans dropped: the export queue was full or the collector failed",
    ),
];

/// How long a gauge no render has set stays in the output.
const GAUGE_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The agent's recorder, its histograms' buckets set and every metric
/// described; make it before the log, whose [`proglog_raft::RaftMetrics`]
/// record into it.
pub(crate) fn recorder() -> Arc<PrometheusRecorder> {
    // Every gauge is set as `/metrics` renders, so one not set for this long
    // belongs to what is gone (a deleted log, a follower no longer followed):
    // it leaves the output.
    let builder =
        PrometheusBuilder::new().idle_timeout(metrics_util::MetricKindMask::GAUGE, Some(GAUGE_IDLE_TIMEOUT));
    let bucketed = builder
        .set_buckets_for_metric(Matcher::Full(proglog_server::RPC_DURATION_SECONDS.into()), DURATION_BUCKETS)
        .and_then(|builder| {
            builder
                .set_buckets_for_metric(Matcher::Full("proglog_fsync_duration_seconds".into()), FSYNC_BUCKETS)
        });
    let recorder = Arc::new(bucketed.unwrap_or_else(|_| PrometheusBuilder::new()).build_recorder());
    for (name, help) in DESCRIPTIONS {
        let (name, help) = (metrics::KeyName::from_const_str(name), metrics::SharedString::const_str(help));
        // Prometheus has one HELP per name whatever its type: describing it
        // once, as a counter, serves every type.
        recorder.describe_counter(name, None, help);
    }
    recorder
}

/// Handles of the Raft metrics in `recorder`, for the log to record into.
pub(crate) fn raft_metrics(recorder: &PrometheusRecorder) -> proglog_raft::RaftMetrics {
    let metadata = metrics::Metadata::new(module_path!(), metrics::Level::INFO, None);
    let key = |name: &'static str| Key::from_static_name(name);
    proglog_raft::RaftMetrics {
        fsync_seconds: recorder.register_histogram(&key("proglog_fsync_duration_seconds"), &metadata),
        leader_changes: recorder.register_counter(&key("proglog_raft_leader_changes_total"), &metadata),
        snapshot_fetches: recorder.register_counter(&key("proglog_raft_snapshot_fetches_total"), &metadata),
        forwarded_appends: recorder.register_counter(&key("proglog_forwarded_appends_total"), &metadata),
    }
}

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
        recorder: Arc<PrometheusRecorder>,
        peer_rejected: Arc<Rejections>,
        discovery: Arc<Discovery>,
        dropped_spans: Option<Arc<AtomicU64>>,
    ) -> Self {
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

    /// A named log's gauges, labelled `log` (SPEC §11): where it stands on
    /// this node, as the default log's unlabelled ones say for it.
    fn log_gauges(&self, name: &str, status: &LogStatus) {
        let metadata = metrics::Metadata::new(module_path!(), metrics::Level::INFO, None);
        let highest = status.highest_offset.map_or(-1.0, |offset| offset as f64);
        let gauges = [
            ("proglog_log_lowest_offset", status.lowest_offset as f64),
            ("proglog_log_highest_offset", highest),
            ("proglog_log_bytes", status.bytes as f64),
            ("proglog_raft_is_leader", if status.is_leader { 1.0 } else { 0.0 }),
            ("proglog_raft_term", status.term as f64),
            ("proglog_raft_commit_index", status.commit_index as f64),
            ("proglog_raft_applied_index", status.applied_index as f64),
            ("proglog_raft_voters", status.voters as f64),
        ];
        for (metric, value) in gauges {
            let key = Key::from_parts(metric, vec![Label::new("log", name.to_owned())]);
            self.recorder.register_gauge(&key, &metadata).set(value);
        }
    }

    /// The Prometheus text, with the default log's gauges as `status` has them
    /// and each named log's, labelled.
    pub(crate) fn render(&self, status: &LogStatus, named: &[proglog_raft::LogInfo]) -> String {
        let metadata = metrics::Metadata::new(module_path!(), metrics::Level::INFO, None);
        for info in named.iter().filter(|info| !info.name.is_empty()) {
            self.log_gauges(&info.name, &info.status);
        }
        self.gauge("proglog_log_lowest_offset", status.lowest_offset as f64);
        // -1 while the log is empty: "no highest offset".
        self.gauge("proglog_log_highest_offset", status.highest_offset.map_or(-1.0, |offset| offset as f64));
        self.gauge("proglog_log_bytes", status.bytes as f64);
        self.gauge("proglog_raft_is_leader", if status.is_leader { 1.0 } else { 0.0 });
        self.gauge("proglog_raft_term", status.term as f64);
        self.gauge("proglog_raft_commit_index", status.commit_index as f64);
        self.gauge("proglog_raft_applied_index", status.applied_index as f64);
        self.gauge(
            "proglog_raft_apply_lag_entries",
            status.commit_index.saturating_sub(status.applied_index) as f64,
        );
        for (follower, lag) in &status.follower_lag {
            let key = Key::from_parts(
                "proglog_raft_follower_lag_entries",
                vec![Label::new("follower", follower.clone())],
            );
            self.recorder.register_gauge(&key, &metadata).set(*lag as f64);
        }
        self.gauge("proglog_cluster_members", status.members as f64);
        self.gauge("proglog_raft_voters", status.voters as f64);
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
