//! The replicated log over its real transport: nodes of one process, each served
//! by `serve` on 127.0.0.1 with mutual TLS and the casbin ACL, talking through
//! [`PeerTransport`] as agents do. A filter in front of each transport cuts a
//! node off from its peers (not from clients) to test isolation.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{MODEL, Pki, client_as, tls_channel};
use proglog_api::internal::v1::raft_client::RaftClient;
use proglog_api::internal::v1::{Batch, FetchRequest};
use proglog_api::v1::{ConsumeRequest, GetServersRequest, ProduceRequest, Record};
use proglog_raft::{
    Append, CommitLog, FetchSink, LogError, Member, PendingAppend, RaftConfig, RaftLog, RaftMessage,
    Transport,
};
use proglog_server::{Acl, PeerTls, PeerTransport, ServerConfig};
use tokio::sync::oneshot;
use tonic::Code;

const DEADLINE: Duration = Duration::from_secs(30);
const POLICY: &str = "p, root, *, produce\np, root, *, consume\np, peer, *, replicate\n";

/// Node ids cut off from every peer.
type Isolated = Arc<Mutex<HashSet<u64>>>;

/// A transport that drops everything to or from an isolated node.
struct Filtered {
    /// This node's id, once its log is open.
    me: std::sync::OnceLock<u64>,
    inner: PeerTransport,
    isolated: Isolated,
}

impl Filtered {
    fn cut(&self, other: u64) -> bool {
        let isolated = self.isolated.lock().unwrap();
        self.me.get().is_some_and(|me| isolated.contains(me)) || isolated.contains(&other)
    }
}

impl Transport for Filtered {
    fn set_members(&self, members: &[Member]) {
        self.inner.set_members(members);
    }

    fn send(&self, to: u64, messages: Vec<RaftMessage>) {
        if !self.cut(to) {
            self.inner.send(to, messages);
        }
    }

    fn fetch(&self, from: u64, start: u64, end: u64, sink: FetchSink) {
        if self.cut(from) {
            sink.fail("cut off");
        } else {
            self.inner.fetch(from, start, end, sink);
        }
    }

    fn forward(&self, to: u64, append: Append) -> PendingAppend {
        if self.cut(to) {
            return Box::pin(async { Err(LogError::Unavailable("cut off".into())) });
        }
        self.inner.forward(to, append)
    }

    fn command(&self, to: u64, command: Vec<u8>) -> proglog_raft::PendingCommand {
        if self.cut(to) {
            return Box::pin(async { Err(LogError::Unavailable("cut off".into())) });
        }
        self.inner.command(to, command)
    }
}

struct Node {
    addr: std::net::SocketAddr,
    transport: PeerTransport,
    log: Arc<RaftLog>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), proglog_server::ServerError>>,
}

struct Cluster {
    pki: Pki,
    acl: Arc<Acl>,
    data: tempfile::TempDir,
    isolated: Isolated,
    nodes: BTreeMap<String, Node>,
    compact_entries: u64,
}

impl Cluster {
    async fn new() -> Self {
        let pki = Pki::new();
        let acl =
            Acl::from_files(&pki.write("model.conf", MODEL), &pki.write("policy.csv", POLICY)).await.unwrap();
        Self {
            pki,
            acl: Arc::new(acl),
            data: tempfile::tempdir().unwrap(),
            isolated: Isolated::default(),
            nodes: BTreeMap::new(),
            compact_entries: 16_384,
        }
    }

    fn peer_tls(&self) -> PeerTls {
        let peer = self.pki.ca.client_cert("peer").unwrap();
        let identity = proglog_tls::Identity::new(
            self.pki.write("peer.pem", &peer.cert_pem),
            self.pki.write("peer-key.pem", &peer.key_pem),
        );
        let ca = self.pki.write("peer-ca.pem", &self.pki.ca.cert_pem());
        PeerTls::Tls(proglog_tls::client_config(&[ca], Some(&identity), &[b"h2"]).unwrap())
    }

    async fn start(&mut self, name: &str, bootstrap: bool) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let member = Member::new(name, addr.to_string());
        let logger = if std::env::var_os("DEBUG_LOG").is_some() {
            let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
            slog::Logger::root(
                slog::Fuse(slog_term::FullFormat::new(decorator).build()),
                slog::o!("n" => name.to_owned()),
            )
        } else {
            slog::Logger::root(slog::Discard, slog::o!())
        };
        let transport =
            PeerTransport::new(self.peer_tls(), tokio::runtime::Handle::current(), logger.clone());
        let filtered = Arc::new(Filtered {
            me: std::sync::OnceLock::new(),
            inner: transport.clone(),
            isolated: Arc::clone(&self.isolated),
        });
        let config = RaftConfig {
            bootstrap,
            settings: proglog_raft::Settings {
                raft_heartbeat_interval: Duration::from_millis(50),
                raft_election_timeout: Duration::from_millis(500),
                ..proglog_raft::Settings::default()
            },
            compact_entries: self.compact_entries,
            trailing_entries: 4,
            logger,
            ..RaftConfig::new(member, self.data.path().join(name))
        };
        let opened = Arc::clone(&filtered);
        let log = tokio::task::spawn_blocking(move || {
            let records =
                proglog_log::Log::open(config.data_dir.join("log"), proglog_log::Config::default())?;
            RaftLog::open(config, records, opened)
        })
        .await
        .unwrap()
        .unwrap();
        let log = Arc::new(log);
        let _ = filtered.me.set(log.member().id);
        transport.bind(&log);
        let server_config = ServerConfig {
            tls: Some(self.pki.tls_files(true)),
            extra_services: vec![transport.service()],
            ..ServerConfig::default()
        };
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(proglog_server::serve(
            listener,
            log.clone(),
            self.acl.clone(),
            server_config,
            async {
                let _ = stopped.await;
            },
        ));
        self.nodes.insert(name.to_owned(), Node { addr, transport, log, stop, task });
    }

    async fn stop(&mut self, name: &str) {
        let node = self.nodes.remove(name).unwrap();
        node.transport.shutdown();
        let _ = node.stop.send(());
        node.task.await.unwrap().unwrap();
        tokio::task::spawn_blocking(move || node.log.close()).await.unwrap().unwrap();
    }

    async fn form(&mut self, size: usize) {
        self.start("node-0", true).await;
        self.nodes["node-0"].log.wait_for_leader(DEADLINE).await.unwrap();
        for i in 1..size {
            let name = format!("node-{i}");
            self.start(&name, false).await;
            let member = self.nodes[&name].log.member().clone();
            self.leader().await.1.join(member).await.unwrap();
            // Promoted once caught up: one membership change at a time.
            let (_, leader) = self.leader().await;
            wait_until(|| leader.status().voters == i + 1).await;
        }
        for node in self.nodes.values() {
            wait_until(|| node.log.status().voters == size).await;
        }
    }

    /// The leader, once every running node that knows a leader names it.
    async fn leader(&self) -> (String, Arc<RaftLog>) {
        let mut found = None;
        wait_until(|| {
            found = self
                .nodes
                .iter()
                .find(|(_, n)| n.log.status().is_leader)
                .map(|(k, n)| (k.clone(), n.log.clone()));
            let name = found.as_ref().map(|(name, _)| name.clone());
            name.is_some()
                && self.nodes.values().all(|n| n.log.status().leader.is_none_or(|l| Some(l.id) == name))
        })
        .await;
        found.unwrap()
    }

    fn follower(&self, leader: &str) -> String {
        self.nodes.keys().find(|name| *name != leader).unwrap().clone()
    }

    fn client(&self, name: &str) -> proglog_api::v1::log_client::LogClient<tonic::transport::Channel> {
        client_as(&self.pki, self.nodes[name].addr, "root")
    }

    async fn shutdown(mut self) {
        for name in self.nodes.keys().cloned().collect::<Vec<_>>() {
            self.stop(&name).await;
        }
    }
}

async fn wait_until(mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "condition not met within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn produce(value: &str) -> ProduceRequest {
    ProduceRequest {
        record: Some(Record { value: value.to_owned().into(), ..Default::default() }),
        ..Default::default()
    }
}

async fn wait_committed(log: &RaftLog, next: u64) {
    let mut committed = log.committed();
    tokio::time::timeout(DEADLINE, committed.wait_for(|c| *c >= next)).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_forward_produces_and_a_new_leader_takes_over() {
    let mut cluster = Cluster::new().await;
    cluster.form(3).await;
    let (leader, _) = cluster.leader().await;
    let follower = cluster.follower(&leader);
    let mut client = cluster.client(&follower);

    // Produce and ProduceStream sent to a follower are forwarded, in order.
    assert_eq!(client.produce(produce("one")).await.unwrap().into_inner().offset, 0);
    let requests = tokio_stream::iter(["two", "three", "four"].map(produce));
    let mut responses = client.produce_stream(requests).await.unwrap().into_inner();
    let mut offsets = Vec::new();
    while let Some(response) = responses.message().await.unwrap() {
        offsets.push(response.offset);
    }
    assert_eq!(offsets, [1, 2, 3]);
    for node in cluster.nodes.values() {
        wait_committed(&node.log, 4).await;
    }
    let record = client
        .consume(ConsumeRequest { offset: 3, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .record
        .unwrap();
    assert_eq!(record.value, "four");

    // Every node answers GetServers with the three servers and the one leader.
    let servers = client.get_servers(GetServersRequest {}).await.unwrap().into_inner().servers;
    assert_eq!(servers.len(), 3);
    let leaders: Vec<_> = servers.iter().filter(|s| s.is_leader).map(|s| s.id.clone()).collect();
    assert_eq!(leaders, std::slice::from_ref(&leader));
    assert_eq!(
        servers.iter().find(|s| s.id == follower).unwrap().rpc_addr,
        cluster.nodes[&follower].addr.to_string()
    );

    // The leader goes away: the others elect one and appends go on.
    let dropped = Instant::now();
    cluster.stop(&leader).await;
    let (new_leader, _) = cluster.leader().await;
    println!("new leader after {:?}", dropped.elapsed());
    assert_ne!(new_leader, leader);
    let mut client = cluster.client(&cluster.follower(&new_leader));
    assert_eq!(client.produce(produce("five")).await.unwrap().into_inner().offset, 4);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_steps_down_and_acknowledges_nothing() {
    let mut cluster = Cluster::new().await;
    cluster.form(3).await;
    let (old, old_log) = cluster.leader().await;
    let mut client = cluster.client(&old);
    client.produce(produce("before")).await.unwrap();

    cluster.isolated.lock().unwrap().insert(old_log.member().id);
    // Still reachable by clients, but nothing it is asked is acknowledged.
    let mut request = tonic::Request::new(produce("lost"));
    request.set_timeout(Duration::from_secs(2));
    let refused = client.produce(request).await.unwrap_err();
    assert!(
        matches!(refused.code(), Code::DeadlineExceeded | Code::Unavailable | Code::Cancelled),
        "{refused:?}"
    );
    wait_until(|| !old_log.status().is_leader).await;
    let others: Vec<_> =
        cluster.nodes.iter().filter(|(name, _)| **name != old).map(|(_, n)| n.log.clone()).collect();
    wait_until(|| others.iter().any(|log| log.status().is_leader)).await;
    let survivor = cluster.nodes.keys().find(|name| **name != old).unwrap().clone();
    let offset = cluster.client(&survivor).produce(produce("after")).await.unwrap().into_inner().offset;
    assert_eq!(offset, 1);

    cluster.isolated.lock().unwrap().clear();
    wait_committed(&old_log, 2).await;
    for node in cluster.nodes.values() {
        wait_committed(&node.log, 2).await;
        let values: Vec<_> =
            node.log.read_batch(0, 1 << 20).await.unwrap().into_iter().map(|r| r.value).collect();
        assert_eq!(values, ["before", "after"], "every log agrees, and the isolated append is gone");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_catches_up_through_a_snapshot_larger_than_a_chunk() {
    let mut cluster = Cluster::new().await;
    cluster.compact_entries = 8;
    cluster.form(3).await;
    let (leader, leader_log) = cluster.leader().await;
    let lagging = cluster.follower(&leader);
    let lagging_last = cluster.nodes[&lagging].log.status().commit_index;
    cluster.stop(&lagging).await;
    let value = "v".repeat(64 << 10);
    for _ in 0..40 {
        leader_log.append(Append::new(vec![Bytes::from(value.clone())])).await.unwrap().await.unwrap();
    }
    // The leader no longer holds the entries the lagging node lacks.
    let meta = std::fs::read_to_string(cluster.data.path().join(&leader).join("raft/meta.json")).unwrap();
    let snapshot: serde_json::Value = serde_json::from_str(&meta).unwrap();
    assert!(snapshot["snapshot"]["index"].as_u64().unwrap() > lagging_last, "{meta}");

    // Back at another address (a new port): joining again updates it.
    cluster.start(&lagging, false).await;
    let member = cluster.nodes[&lagging].log.member().clone();
    leader_log.join(member).await.unwrap();
    let lagging_log = cluster.nodes[&lagging].log.clone();
    wait_committed(&lagging_log, 40).await;
    assert_eq!(lagging_log.read(39).await.unwrap().value, value);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_without_replicate_cannot_call_the_internal_service() {
    let mut cluster = Cluster::new().await;
    cluster.form(1).await;
    let addr = cluster.nodes["node-0"].addr;
    let root = cluster.pki.ca.client_cert("root").unwrap();
    let mut client = RaftClient::new(tls_channel(&cluster.pki, addr, Some(&root)));
    let denied = client.fetch(FetchRequest { start: 0, end: 10, group: None }).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert_eq!(denied.message(), "root not permitted to replicate to *");
    let batches = tokio_stream::iter([Batch::default()]);
    let denied = client.messages(batches).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    cluster.shutdown().await;
}

/// Keeps every finished span (the SDK's own test exporter needs features this
/// crate does not otherwise build).
#[derive(Clone, Debug, Default)]
struct KeptSpans(Arc<std::sync::Mutex<Vec<opentelemetry_sdk::trace::SpanData>>>);

impl opentelemetry_sdk::trace::SpanProcessor for KeptSpans {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}
    fn on_end(&self, span: opentelemetry_sdk::trace::SpanData) {
        self.0.lock().unwrap().push(span);
    }
    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}

/// In process, with the SDK: a produce through a follower is one trace across
/// both nodes — the follower's server span, its forwarding client span, the
/// leader's server span, the leader's commit and the fsync it waited for, each
/// the child of the one before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_produce_through_a_follower_is_one_trace_across_both_nodes() {
    use opentelemetry::trace::{SpanId, TraceId};
    let kept = KeptSpans::default();
    // Only callers' sampled traces: the other tests of this binary record nothing.
    let sampler = opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
        opentelemetry_sdk::trace::Sampler::AlwaysOff,
    ));
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_span_processor(kept.clone())
        .with_sampler(sampler)
        .build();
    opentelemetry::global::set_tracer_provider(provider);
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );

    let mut cluster = Cluster::new().await;
    cluster.form(3).await;
    let (leader, _) = cluster.leader().await;
    let follower = cluster.follower(&leader);
    let (trace, caller) = (0x5a5a_u128 << 64 | 0x1234, 0x77_u64);
    let mut request = tonic::Request::new(produce("traced"));
    let parent = format!("00-{trace:032x}-{caller:016x}-01");
    request.metadata_mut().insert("traceparent", parent.parse().unwrap());
    cluster.client(&follower).produce(request).await.unwrap();

    let trace_id = TraceId::from_bytes(trace.to_be_bytes());
    let mut spans = Vec::new();
    wait_until(|| {
        spans = kept
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.span_context.trace_id() == trace_id)
            .cloned()
            .collect();
        spans.iter().any(|s| s.name == "raft.fsync") && spans.iter().any(|s| s.name == "log.v1.Log/Produce")
    })
    .await;
    let one = |name: &str, kind: opentelemetry::trace::SpanKind| {
        let found: Vec<_> = spans.iter().filter(|s| s.name == name && s.span_kind == kind).collect();
        assert_eq!(found.len(), 1, "{name} {kind:?} in {spans:#?}");
        found[0].clone()
    };
    use opentelemetry::trace::SpanKind::{Client, Internal, Server};
    let produce_span = one("log.v1.Log/Produce", Server);
    assert_eq!(produce_span.parent_span_id, SpanId::from_bytes(caller.to_be_bytes()));
    let client_hop = one("proglog.internal.v1.Raft/Forward", Client);
    assert_eq!(client_hop.parent_span_id, produce_span.span_context.span_id());
    let server_hop = one("proglog.internal.v1.Raft/Forward", Server);
    assert_eq!(server_hop.parent_span_id, client_hop.span_context.span_id());
    let commit = one("raft.commit", Internal);
    assert_eq!(commit.parent_span_id, server_hop.span_context.span_id());
    let fsync = one("raft.fsync", Internal);
    assert_eq!(fsync.parent_span_id, commit.span_context.span_id());
    cluster.shutdown().await;
}
