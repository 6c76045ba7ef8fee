//! In-process clusters of the replicated log over a [`ChannelNetwork`]: the
//! book's multiple-nodes test plus rejoin, failover and snapshot catch-up.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proglog_raft::{
    Append, ChannelNetwork, CommitLog, LogError, Logs, Member, RaftConfig, RaftLog, Refusal, Settings,
};

/// Generous: clusters share two cores with the rest of the suite.
const DEADLINE: Duration = Duration::from_secs(20);

/// Keeps the messages nodes log, to check what happened inside.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<String>>>);

impl slog::Drain for Captured {
    type Ok = ();
    type Err = slog::Never;
    fn log(&self, record: &slog::Record<'_>, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        let mut line = record.msg().to_string();
        let mut serializer = KeyValues(&mut line);
        let _ = slog::KV::serialize(values, record, &mut serializer);
        let _ = slog::KV::serialize(&record.kv(), record, &mut serializer);
        if let Ok(mut lines) = self.0.lock() {
            lines.push(line);
        }
        Ok(())
    }
}

struct KeyValues<'a>(&'a mut String);

impl slog::Serializer for KeyValues<'_> {
    fn emit_arguments(&mut self, key: slog::Key, value: &std::fmt::Arguments<'_>) -> slog::Result {
        self.0.push_str(&format!(" {key}={value}"));
        Ok(())
    }
}

impl Captured {
    fn contains(&self, text: &str, node: &str) -> bool {
        let node = format!("node={node}");
        self.0.lock().is_ok_and(|lines| lines.iter().any(|line| line.contains(text) && line.contains(&node)))
    }
}

struct Cluster {
    network: Arc<ChannelNetwork>,
    logs: Captured,
    dir: tempfile::TempDir,
    nodes: BTreeMap<String, Arc<RaftLog>>,
    /// Each running node's logs (its default log is in `nodes`).
    hosts: BTreeMap<String, Arc<Logs>>,
    compact_entries: u64,
    /// Node settings beyond the test timings (segment sizes, retention).
    settings: Settings,
}

impl Cluster {
    fn new() -> Self {
        Self {
            network: ChannelNetwork::new(),
            logs: Captured::default(),
            dir: tempfile::tempdir().expect("temp dir"),
            nodes: BTreeMap::new(),
            hosts: BTreeMap::new(),
            compact_entries: 16_384,
            settings: Settings::default(),
        }
    }

    fn config(&self, name: &str, bootstrap: bool) -> RaftConfig {
        let member = Member::new(name, format!("{name}.invalid:8400"));
        let mut config = RaftConfig::new(member, self.dir.path().join(name));
        config.settings = self.settings.clone();
        config.bootstrap = bootstrap;
        config.settings.raft_heartbeat_interval = Duration::from_millis(20);
        config.settings.raft_election_timeout = Duration::from_millis(200);
        config.compact_entries = self.compact_entries;
        config.trailing_entries = 4;
        config.logger =
            slog::Logger::root(slog::Fuse(self.logs.clone()), slog::o!("node" => name.to_owned()));
        config
    }

    async fn start(&mut self, name: &str, bootstrap: bool) -> Arc<RaftLog> {
        let config = self.config(name, bootstrap);
        let transport = self.network.transport(name);
        let network = Arc::clone(&self.network);
        let host = tokio::task::spawn_blocking(move || {
            let records =
                proglog_log::Log::open(config.data_dir.join("log"), config.settings.record_log_config())?;
            let log = Arc::new(RaftLog::open(config.clone(), records, transport)?);
            network.attach(&log);
            Logs::open(log, config, network)
        })
        .await
        .expect("joined")
        .expect("opens");
        host.start();
        let log = Arc::clone(host.default_log());
        self.nodes.insert(name.to_owned(), Arc::clone(&log));
        self.hosts.insert(name.to_owned(), host);
        log
    }

    async fn stop(&mut self, name: &str) {
        self.network.detach(name);
        let log = self.nodes.remove(name).expect("running");
        // Honest traffic passes the gate: nothing refused, ever.
        let refused: Vec<_> =
            log.rejections().snapshot().into_iter().filter(|(_, count)| *count > 0).collect();
        assert!(refused.is_empty(), "{name} refused honest messages: {refused:?}");
        let host = self.hosts.remove(name).expect("running");
        for (log_name, named) in host.all() {
            let refused: Vec<_> =
                named.rejections().snapshot().into_iter().filter(|(_, count)| *count > 0).collect();
            assert!(refused.is_empty(), "{name} refused honest messages of log {log_name:?}: {refused:?}");
        }
        tokio::task::spawn_blocking(move || {
            host.close()?;
            log.close()
        })
        .await
        .expect("joined")
        .expect("closes");
    }

    /// Starts node-0 as a one-member cluster and joins the others through it.
    async fn form(&mut self, size: usize) {
        let first = self.start("node-0", true).await;
        first.wait_for_leader(DEADLINE).await.expect("a leader");
        for i in 1..size {
            let name = format!("node-{i}");
            self.start(&name, false).await;
            self.join(&name).await;
        }
        for node in self.nodes.values() {
            wait_until(|| node.status().voters == size).await;
        }
    }

    /// Adds `name` through the leader.
    async fn join(&self, name: &str) {
        let member = self.nodes[name].member().clone();
        self.change(|leader| {
            let member = member.clone();
            async move { leader.join(member).await }
        })
        .await;
    }

    /// Removes member `id` through the leader.
    async fn leave(&self, id: u64) {
        self.change(|leader| async move { leader.leave(id).await }).await;
    }

    /// A membership change through the current leader, retried (as the agent's
    /// membership loop does) while leadership moves, the previous change (a
    /// learner's promotion) is still in progress or a new leader has not yet
    /// heard from the voters that would remain.
    async fn change<F: Future<Output = Result<(), LogError>>>(&self, change: impl Fn(Arc<RaftLog>) -> F) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            match change(self.leader().await).await {
                Ok(()) => return,
                Err(
                    LogError::NotLeader { .. } | LogError::Refused { reason: Refusal::ChangeInProgress, .. },
                ) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(error) => panic!("membership change failed: {error}"),
            }
        }
    }

    async fn leader(&self) -> Arc<RaftLog> {
        let mut found = None;
        wait_until(|| {
            found = self.nodes.values().find(|node| node.status().is_leader).cloned();
            found.is_some()
        })
        .await;
        found.expect("a leader")
    }

    async fn append(&self, values: &[&str]) -> u64 {
        let leader = self.leader().await;
        let values = values.iter().map(|v| Bytes::copy_from_slice(v.as_bytes())).collect();
        leader.append(Append::new(values)).await.expect("queued").await.expect("committed")
    }
}

async fn wait_until(mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "condition not met within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_committed(node: &RaftLog, next: u64) {
    let mut committed = node.committed();
    tokio::time::timeout(DEADLINE, committed.wait_for(|c| *c >= next)).await.expect("in time").expect("open");
}

async fn values(node: &RaftLog, from: u64, to: u64) -> Vec<String> {
    let mut out = Vec::new();
    for offset in from..to {
        let record = node.read(offset).await.expect("reads");
        assert_eq!(record.offset, offset);
        out.push(String::from_utf8(record.value.to_vec()).expect("utf-8"));
    }
    out
}

/// The Raft term each record in `from..to` carries.
async fn terms(node: &RaftLog, from: u64, to: u64) -> Vec<u64> {
    let mut out = Vec::new();
    for offset in from..to {
        out.push(node.read(offset).await.expect("reads").term);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_and_membership_changes_take_effect() {
    let mut cluster = Cluster::new();
    cluster.form(3).await;

    assert_eq!(cluster.append(&["first"]).await, 0);
    assert_eq!(cluster.append(&["second", "third"]).await, 1);
    for node in cluster.nodes.values() {
        wait_committed(node, 3).await;
        assert_eq!(values(node, 0, 3).await, ["first", "second", "third"]);
        assert!(matches!(node.read(3).await, Err(LogError::OutOfRange { offset: 3 })));
    }
    let servers = cluster.nodes["node-2"].servers().await.expect("servers");
    assert_eq!(servers.len(), 3, "{servers:?}");
    assert_eq!(servers.iter().filter(|s| s.is_leader).count(), 1, "{servers:?}");

    // A follower forwards appends to the leader, in order.
    let follower = cluster.nodes.values().find(|n| !n.status().is_leader).cloned().expect("a follower");
    let first = follower.append(Append::new(vec![Bytes::from_static(b"forwarded")])).await.expect("queued");
    let second =
        follower.append(Append::new(vec![Bytes::from_static(b"forwarded too")])).await.expect("queued");
    assert_eq!((first.await.expect("committed"), second.await.expect("committed")), (3, 4));

    // Leave: the removed node receives nothing new, the others do.
    let leaving = if cluster.leader().await.member().name == "node-1" { "node-2" } else { "node-1" };
    let id = cluster.nodes[leaving].member().id;
    cluster.leave(id).await;
    for node in cluster.nodes.values().filter(|n| n.member().name != leaving) {
        wait_until(|| node.status().members == 2).await;
    }
    assert_eq!(cluster.append(&["fourth"]).await, 5);
    for node in cluster.nodes.values().filter(|n| n.member().name != leaving) {
        wait_committed(node, 6).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(*cluster.nodes[leaving].committed().borrow(), 5, "the removed node got a new record");

    // Rejoin (after a restart with the same name and data): it catches up.
    cluster.stop(leaving).await;
    cluster.start(leaving, false).await;
    cluster.join(leaving).await;
    wait_committed(&cluster.nodes[leaving], 6).await;
    assert_eq!(
        values(&cluster.nodes[leaving], 0, 6).await,
        ["first", "second", "third", "forwarded", "forwarded too", "fourth"]
    );
    for node in cluster.nodes.values() {
        wait_until(|| node.status().members == 3 && node.status().leader.is_some()).await;
    }
    for name in cluster.nodes.keys().cloned().collect::<Vec<_>>() {
        cluster.stop(&name).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_takes_over_and_a_restarted_node_recovers() {
    let mut cluster = Cluster::new();
    cluster.form(3).await;
    cluster.append(&["a", "b"]).await;
    let old = cluster.leader().await.member().name.clone();
    let first_term = cluster.leader().await.status().term;
    cluster.stop(&old).await;
    // The survivors elect a leader and keep appending.
    assert_eq!(cluster.append(&["c"]).await, 2);
    let second_term = cluster.leader().await.status().term;
    assert!(second_term > first_term);
    cluster.start(&old, false).await;
    wait_committed(&cluster.nodes[&old], 3).await;
    assert_eq!(values(&cluster.nodes[&old], 0, 3).await, ["a", "b", "c"]);
    // Each record carries the term of the leader that committed it, on every
    // node, the restarted one included.
    for node in cluster.nodes.values() {
        assert_eq!(terms(node, 0, 3).await, [first_term, first_term, second_term]);
    }
    for name in cluster.nodes.keys().cloned().collect::<Vec<_>>() {
        cluster.stop(&name).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_steps_down_and_acknowledges_nothing() {
    let mut cluster = Cluster::new();
    cluster.form(3).await;
    cluster.append(&["before"]).await;
    let old = cluster.leader().await;
    cluster.network.isolate(&old.member().name);
    let pending = old.append(Append::new(vec![Bytes::from_static(b"lost")])).await.expect("queued");
    // The isolated leader steps down (check-quorum) and the others elect one.
    wait_until(|| !old.status().is_leader).await;
    let outcome = tokio::time::timeout(Duration::from_millis(500), pending).await;
    assert!(!matches!(outcome, Ok(Ok(_))), "an isolated leader acknowledged: {outcome:?}");
    let others: Vec<_> = cluster.nodes.values().filter(|n| n.member() != old.member()).cloned().collect();
    wait_until(|| others.iter().any(|n| n.status().is_leader)).await;
    let leader = others.iter().find(|n| n.status().is_leader).expect("leader");
    let offset = leader
        .append(Append::new(vec![Bytes::from_static(b"after")]))
        .await
        .expect("queued")
        .await
        .expect("committed");
    assert_eq!(offset, 1);
    cluster.network.heal();
    wait_committed(&old, 2).await;
    assert_eq!(values(&old, 0, 2).await, ["before", "after"]);
    for name in cluster.nodes.keys().cloned().collect::<Vec<_>>() {
        cluster.stop(&name).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_the_compacted_entries_catches_up_from_a_snapshot() {
    let mut cluster = Cluster::new();
    cluster.compact_entries = 8;
    cluster.form(3).await;
    let leader_name = cluster.leader().await.member().name.clone();
    let lagging = cluster.nodes.keys().find(|n| **n != leader_name).cloned().expect("a follower");
    cluster.stop(&lagging).await;
    // More than one fetch chunk (1 MiB) of records, over many entries.
    let value = "v".repeat(64 << 10);
    for _ in 0..40 {
        cluster.append(&[value.as_str()]).await;
    }
    cluster.start(&lagging, false).await;
    wait_committed(&cluster.nodes[&lagging], 40).await;
    assert_eq!(values(&cluster.nodes[&lagging], 39, 40).await, [value]);
    let (status, leader) = (cluster.nodes[&lagging].status(), cluster.leader().await.status());
    wait_until(|| cluster.nodes[&lagging].status().applied_index >= leader.commit_index).await;
    assert!(status.lowest_offset <= 39, "{status:?}");
    assert!(cluster.logs.contains("snapshot records fetched", &lagging), "caught up without a snapshot");
    // The snapshot carried the terms of the records it covers, and a restart
    // after compaction keeps them.
    let expected = terms(&*cluster.leader().await, 0, 40).await;
    assert!(expected.iter().all(|term| *term > 0), "{expected:?}");
    assert_eq!(terms(&cluster.nodes[&lagging], 0, 40).await, expected);
    cluster.stop(&leader_name).await;
    cluster.start(&leader_name, false).await;
    wait_committed(&cluster.nodes[&leader_name], 40).await;
    assert_eq!(terms(&cluster.nodes[&leader_name], 0, 40).await, expected);
    for name in cluster.nodes.keys().cloned().collect::<Vec<_>>() {
        cluster.stop(&name).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_from_before_replication_becomes_a_one_member_cluster() {
    let dir = tempfile::tempdir().expect("temp dir");
    let records =
        proglog_log::Log::open(dir.path().join("log"), proglog_log::Config::default()).expect("opens");
    records.append_batch(&[b"old 0".as_slice(), b"old 1"]).expect("appends");
    records.close().expect("closes");
    let network = ChannelNetwork::new();
    let open = |bootstrap: bool| {
        let member = Member::new("node-0", "node-0.invalid:8400");
        let config = RaftConfig { bootstrap, ..RaftConfig::new(member, dir.path()) };
        let records = proglog_log::Log::open(dir.path().join("log"), proglog_log::Config::default())?;
        RaftLog::open(config, records, network.transport("node-0"))
    };
    // Joining a cluster with records from elsewhere is refused...
    let refused = open(false).expect_err("refused");
    assert!(refused.to_string().contains("--bootstrap"), "{refused}");
    // ...bootstrapping keeps them and appends after them.
    let log = Arc::new(open(true).expect("opens"));
    network.attach(&log);
    let offset = log
        .append(Append::new(vec![Bytes::from_static(b"new")]))
        .await
        .expect("queued")
        .await
        .expect("committed");
    assert_eq!(offset, 2);
    assert_eq!(values(&log, 0, 3).await, ["old 0", "old 1", "new"]);
    // A node joining it fetches the old records with the snapshot.
    let joiner_dir = tempfile::tempdir().expect("temp dir");
    let member = Member::new("node-1", "node-1.invalid:8400");
    let config = RaftConfig { bootstrap: false, ..RaftConfig::new(member.clone(), joiner_dir.path()) };
    let records =
        proglog_log::Log::open(joiner_dir.path().join("log"), proglog_log::Config::default()).expect("opens");
    let joiner = Arc::new(RaftLog::open(config, records, network.transport("node-1")).expect("opens"));
    network.attach(&joiner);
    log.join(joiner.member().clone()).await.expect("joins");
    wait_committed(&joiner, 3).await;
    assert_eq!(values(&joiner, 0, 3).await, ["old 0", "old 1", "new"]);
    joiner.close().expect("closes");
    log.close().expect("closes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_hands_over_before_leaving_and_the_last_voter_stays() {
    let mut cluster = Cluster::new();
    cluster.form(3).await;
    let leader = cluster.leader().await;
    let (name, id) = (leader.member().name.clone(), leader.member().id);
    // Asked to remove itself, a leader hands leadership over first.
    let refused = leader.leave(id).await;
    assert!(
        matches!(refused, Err(LogError::Refused { reason: Refusal::LeadershipTransfer, .. })),
        "{refused:?}"
    );
    wait_until(|| cluster.nodes.values().any(|n| n.status().is_leader && n.member().name != name)).await;
    cluster.leave(id).await;
    let survivors: Vec<_> = cluster.nodes.values().filter(|n| n.member().name != name).cloned().collect();
    for node in &survivors {
        wait_until(|| node.status().voters == 2).await;
    }
    assert_eq!(cluster.append(&["after"]).await, 0);
    // Down to one voter, it cannot leave.
    let second = survivors.iter().find(|n| !n.status().is_leader).expect("a follower").member().id;
    cluster.leave(second).await;
    let last = cluster.leader().await;
    wait_until(|| last.status().voters == 1).await;
    let refused = last.leave(last.member().id).await;
    assert!(matches!(refused, Err(LogError::InvalidArgument(_))), "{refused:?}");
    assert_eq!(cluster.append(&["still"]).await, 1);
    for name in cluster.nodes.keys().cloned().collect::<Vec<_>>() {
        cluster.stop(&name).await;
    }
}

/// A data dir as a node from before member and cluster ids left it: Raft
/// metadata naming `members` by FNV-1a ids of their names, a snapshot point at
/// index 5 (term 2) covering `records` records.
fn legacy_data_dir(dir: &std::path::Path, members: &[&str], records: u64) {
    let log = proglog_log::Log::open(dir.join("log"), proglog_log::Config::default()).expect("opens");
    for i in 0..records {
        log.append(format!("old {i}").as_bytes()).expect("appends");
    }
    log.close().expect("closes");
    let described: Vec<serde_json::Value> = members
        .iter()
        .map(|member| {
            serde_json::json!({"id": proglog_raft::node_id(member), "name": member, "rpc_addr": format!("{member}.invalid:8400")})
        })
        .collect();
    let voters: Vec<u64> = members.iter().map(|member| proglog_raft::node_id(member)).collect();
    let meta = serde_json::json!({
        "term": 2, "vote": 0, "commit": 5,
        "conf": {"voters": voters, "learners": [], "voters_outgoing": [], "learners_next": [], "auto_leave": false},
        "conf_index": 5, "members": described,
        "snapshot": {"index": 5, "term": 2, "end_offset": records},
        "fetching": null,
    });
    std::fs::create_dir_all(dir.join("raft")).expect("creates");
    std::fs::write(dir.join("raft").join("meta.json"), meta.to_string()).expect("writes");
}

/// Data dirs from before member and cluster ids open in place: each node keeps
/// the id its cluster knows it by, the node started with `bootstrap` mints the
/// cluster's id, the other learns it on first contact, and the records stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dirs_from_before_cluster_ids_upgrade_in_place() {
    let mut cluster = Cluster::new();
    for name in ["node-0", "node-1"] {
        legacy_data_dir(&cluster.dir.path().join(name), &["node-0", "node-1"], 3);
    }
    let first = cluster.start("node-0", true).await;
    let second = cluster.start("node-1", false).await;
    assert_eq!(first.member().id, proglog_raft::node_id("node-0"));
    assert_eq!(second.member().id, proglog_raft::node_id("node-1"));
    let minted = first.identity().cluster_id.expect("the bootstrapped node minted the cluster id");
    let offset = cluster.append(&["new"]).await;
    assert_eq!(offset, 3);
    wait_until(|| second.identity().cluster_id == Some(minted)).await;
    wait_committed(&second, 4).await;
    assert_eq!(values(&second, 0, 4).await, ["old 0", "old 1", "old 2", "new"]);
    for name in ["node-0", "node-1"] {
        cluster.stop(name).await;
    }
    // Reopened, they keep both ids.
    let first = cluster.start("node-0", true).await;
    assert_eq!(
        (first.member().id, first.identity().cluster_id),
        (proglog_raft::node_id("node-0"), Some(minted))
    );
    cluster.stop("node-0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linearizable_read_sees_every_acknowledged_record_or_fails_on_a_cut_off_node() {
    let mut cluster = Cluster::new();
    cluster.form(3).await;
    let leader = cluster.leader().await;
    let followers: Vec<_> = cluster.nodes.values().filter(|n| !n.status().is_leader).cloned().collect();
    for round in 0..20u64 {
        let offset = cluster.append(&["acknowledged"]).await;
        assert_eq!(offset, round);
        // Acknowledged by the leader: a linearizable read anywhere sees it at once.
        for node in followers.iter().chain([&leader]) {
            node.linearize().await.expect("a read index");
            assert!(*node.committed().borrow() > offset, "{} misses {offset}", node.member().name);
            assert_eq!(node.read(offset).await.expect("reads").value, "acknowledged");
        }
    }
    // A follower cut off from the leader cannot confirm a read index: it says so
    // in time rather than serving what it has.
    let cut = followers[0].member().name.clone();
    cluster.network.isolate(&cut);
    let refused = followers[0].linearize().await;
    assert!(matches!(refused, Err(LogError::Unavailable(_) | LogError::NotLeader { .. })), "{refused:?}");
    cluster.network.heal();
    // Back in touch, it reads linearizably again.
    let offset = cluster.append(&["after the heal"]).await;
    wait_until(|| followers[0].status().leader.is_some()).await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while let Err(error) = followers[0].linearize().await {
        assert!(tokio::time::Instant::now() < deadline, "no read index after the heal: {error}");
    }
    assert_eq!(followers[0].read(offset).await.expect("reads").value, "after the heal");
    for name in cluster.nodes.keys().cloned().collect::<Vec<_>>() {
        cluster.stop(&name).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_positions_are_replicated_survive_restarts_and_reach_a_late_joiner() {
    let mut cluster = Cluster::new();
    cluster.compact_entries = 8;
    cluster.form(2).await;
    let end = cluster.append(&["a", "b", "c"]).await + 3;
    let leader = cluster.leader().await;
    leader.commit_offset("billing", 2).await.expect("commits");
    leader.commit_offset("audit", end).await.expect("commits");
    // A follower refuses (the client goes to the leader), naming the leader.
    let follower = cluster.nodes.values().find(|n| !n.status().is_leader).cloned().expect("a follower");
    let refused = follower.commit_offset("billing", 3).await;
    assert!(matches!(refused, Err(LogError::NotLeader { leader: Some(_) })), "{refused:?}");
    // Bad names and offsets past the log are refused before anything is proposed.
    let bad = leader.commit_offset("no spaces", 1).await;
    assert!(matches!(bad, Err(LogError::InvalidArgument(_))), "{bad:?}");
    let past = leader.commit_offset("billing", end + 1).await;
    assert!(matches!(past, Err(LogError::OutOfRange { .. })), "{past:?}");
    // Read anywhere, linearizably.
    for node in cluster.nodes.values() {
        assert_eq!(node.fetch_offset("billing").await.expect("fetches"), Some(2));
        assert_eq!(node.fetch_offset("audit").await.expect("fetches"), Some(end));
        assert_eq!(node.fetch_offset("nobody").await.expect("fetches"), None);
    }
    // Enough entries for compaction (the commands leave the metadata; their
    // state is saved), then a restart of every node.
    for round in 0..12u64 {
        cluster.append(&["more"]).await;
        cluster.leader().await.commit_offset("billing", 3 + round).await.expect("commits");
    }
    for name in cluster.nodes.keys().cloned().collect::<Vec<_>>() {
        cluster.stop(&name).await;
    }
    cluster.start("node-0", false).await;
    cluster.start("node-1", false).await;
    for node in cluster.nodes.values() {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let position = loop {
            match node.fetch_offset("billing").await {
                Ok(position) => break position,
                Err(error) => assert!(tokio::time::Instant::now() < deadline, "no read index: {error}"),
            }
        };
        assert_eq!(position, Some(14));
    }
    // A node joining now gets the positions with its snapshot.
    cluster.start("node-2", false).await;
    cluster.join("node-2").await;
    wait_until(|| cluster.nodes["node-2"].status().voters == 3).await;
    let late = Arc::clone(&cluster.nodes["node-2"]);
    let saved = cluster.dir.path().join("node-2").join("raft").join("state.json");
    assert!(saved.exists(), "node-2 caught up by snapshot, which saves the positions it carries");
    assert_eq!(late.fetch_offset("billing").await.expect("fetches"), Some(14));
    assert_eq!(late.fetch_offset("audit").await.expect("fetches"), Some(end));
    for name in cluster.nodes.keys().cloned().collect::<Vec<_>>() {
        cluster.stop(&name).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_cuts_the_same_lowest_offset_on_every_node_and_it_survives_restarts() {
    let mut cluster = Cluster::new();
    cluster.compact_entries = 8;
    cluster.settings.segment_max_store_bytes = 2 << 10;
    cluster.settings.retention_bytes = 4 << 10;
    cluster.form(2).await;
    let value = "r".repeat(200);
    for _ in 0..60 {
        cluster.append(&[&value]).await;
    }
    // The leader cut (whole segments, keeping at least 4 KiB); every node holds
    // the same lowest offset, and nothing below it is served.
    let mut lowest = 0;
    wait_until(|| {
        let lows: Vec<u64> = cluster.nodes.values().map(|n| n.lowest_offset()).collect();
        lowest = lows[0];
        lowest > 0 && lows.iter().all(|low| *low == lowest)
    })
    .await;
    assert!(lowest < 60, "records after the cut stay: {lowest}");
    for node in cluster.nodes.values() {
        assert!(matches!(node.read(lowest - 1).await, Err(LogError::OutOfRange { .. })));
        assert!(matches!(node.read_batch(0, 1 << 20).await, Err(LogError::OutOfRange { .. })));
        assert_eq!(node.read(lowest).await.expect("kept").value, value.as_str());
        assert_eq!(node.status().lowest_offset, lowest);
    }
    // Held at least 4 KiB: the newest records are all there.
    assert_eq!(values(&cluster.nodes["node-0"], 55, 60).await.len(), 5);
    // A restart keeps the cut; a node joining later starts at it.
    for name in cluster.nodes.keys().cloned().collect::<Vec<_>>() {
        cluster.stop(&name).await;
    }
    cluster.start("node-0", false).await;
    cluster.start("node-1", false).await;
    cluster.start("node-2", false).await;
    cluster.join("node-2").await;
    let late = Arc::clone(&cluster.nodes["node-2"]);
    wait_committed(&late, 60).await;
    for node in cluster.nodes.values() {
        assert!(node.lowest_offset() >= lowest, "{} serves below the cut", node.member().name);
        assert!(matches!(node.read(lowest - 1).await, Err(LogError::OutOfRange { .. })));
    }
    assert_eq!(late.read(59).await.expect("reads").value, value.as_str());
    for name in cluster.nodes.keys().cloned().collect::<Vec<_>>() {
        cluster.stop(&name).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_append_is_stored_once_across_retries_leader_changes_and_restarts() {
    let mut cluster = Cluster::new();
    cluster.compact_entries = 8;
    cluster.form(3).await;
    let producer = cluster.leader().await.init_producer().await.expect("an id");
    assert_ne!(producer, 0);
    let send = |node: Arc<RaftLog>, sequence: u64, values: &'static [&'static str]| async move {
        let values = values.iter().map(|v| Bytes::from_static(v.as_bytes())).collect();
        node.append(Append::new(values).with_producer(producer, sequence)).await?.await
    };
    let leader = cluster.leader().await;
    let first = send(Arc::clone(&leader), 0, &["a", "b"]).await.expect("appended");
    assert_eq!(first, 0);
    // A retry (same sequence): the original offset, nothing appended.
    assert_eq!(send(Arc::clone(&leader), 0, &["a", "b"]).await.expect("deduplicated"), 0);
    assert_eq!(send(Arc::clone(&leader), 1, &["b"]).await.expect("deduplicated"), 1);
    // Through a follower (forwarded), the next sequence, then its retry.
    let follower = cluster.nodes.values().find(|n| !n.status().is_leader).cloned().expect("a follower");
    assert_eq!(send(Arc::clone(&follower), 2, &["c"]).await.expect("appended"), 2);
    assert_eq!(send(Arc::clone(&follower), 2, &["c"]).await.expect("deduplicated"), 2);
    // A gap is refused, and appends nothing.
    let gap = send(Arc::clone(&leader), 5, &["x"]).await;
    assert!(matches!(gap, Err(LogError::OutOfOrderSequence(_))), "{gap:?}");
    // A plain append in between does not disturb the producer.
    assert_eq!(cluster.append(&["plain"]).await, 3);
    // The leader goes: the new one knows the producer's batches.
    let old = leader.member().name.clone();
    cluster.stop(&old).await;
    let leader = cluster.leader().await;
    assert_eq!(send(Arc::clone(&leader), 2, &["c"]).await.expect("deduplicated"), 2);
    assert_eq!(send(Arc::clone(&leader), 3, &["d"]).await.expect("appended"), 4);
    // Enough entries to compact (the state is saved), then every node restarts.
    for _ in 0..12 {
        cluster.append(&["more"]).await;
    }
    cluster.start(&old, false).await;
    wait_committed(&cluster.nodes[&old], 17).await;
    for name in cluster.nodes.keys().cloned().collect::<Vec<_>>() {
        cluster.stop(&name).await;
    }
    for name in ["node-0", "node-1", "node-2"] {
        cluster.start(name, false).await;
    }
    let leader = cluster.leader().await;
    assert_eq!(send(Arc::clone(&leader), 3, &["d"]).await.expect("deduplicated"), 4);
    assert_eq!(send(Arc::clone(&leader), 0, &["a", "b"]).await.expect("deduplicated"), 0);
    assert_eq!(send(Arc::clone(&leader), 4, &["e"]).await.expect("appended"), 17);
    let all = values(&leader, 0, 18).await;
    for value in ["a", "b", "c", "d", "e"] {
        assert_eq!(all.iter().filter(|v| *v == value).count(), 1, "{value} stored once: {all:?}");
    }
    for name in cluster.nodes.keys().cloned().collect::<Vec<_>>() {
        cluster.stop(&name).await;
    }
}

/// The leader of log `name` among the running nodes.
async fn named_leader(cluster: &Cluster, name: &str) -> Arc<RaftLog> {
    let mut found = None;
    wait_until(|| {
        found =
            cluster.hosts.values().filter_map(|host| host.get(name).ok()).find(|log| log.status().is_leader);
        found.is_some()
    })
    .await;
    found.expect("a leader")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_logs_are_groups_of_their_own_created_deleted_and_followed_by_every_node() {
    let mut cluster = Cluster::new();
    cluster.form(3).await;
    cluster.append(&["default"]).await;
    // Created through a follower (forwarded to the default log's leader).
    let follower =
        cluster.nodes.values().find(|n| !n.status().is_leader).expect("a follower").member().name.clone();
    let host = Arc::clone(&cluster.hosts[&follower]);
    host.create("orders", 0, 0).await.expect("created");
    let exists = host.create("orders", 0, 0).await;
    assert!(matches!(exists, Err(LogError::AlreadyExists(_))), "{exists:?}");
    for bad in ["", "Orders", "a/b"] {
        assert!(matches!(host.create(bad, 0, 0).await, Err(LogError::InvalidArgument(_))), "{bad:?}");
    }
    assert!(matches!(host.get("nope"), Err(LogError::NotFound(_))));
    for host in cluster.hosts.values() {
        wait_until(|| host.get("orders").is_ok()).await;
    }
    // Its own offsets, its own leader; every node holds its records.
    let leader = named_leader(&cluster, "orders").await;
    let first = leader.append(Append::one("o-0")).await.expect("queued").await.expect("committed");
    assert_eq!(first, 0, "a named log starts at offset 0");
    for host in cluster.hosts.values() {
        let orders = host.get("orders").expect("open");
        wait_committed(&orders, 1).await;
        assert_eq!(values(&orders, 0, 1).await, ["o-0"]);
        assert_eq!(host.list().iter().map(|info| info.name.as_str()).collect::<Vec<_>>(), ["", "orders"]);
    }
    assert_eq!(*cluster.nodes["node-0"].committed().borrow(), 1, "the default log is untouched");

    // A node joining the cluster joins every log; a restarted one reopens it.
    cluster.start("node-3", false).await;
    cluster.join("node-3").await;
    let late = cluster.hosts["node-3"].clone();
    wait_until(|| late.get("orders").is_ok_and(|orders| orders.status().voters == 4)).await;
    wait_committed(&late.get("orders").expect("open"), 1).await;
    cluster.stop("node-1").await;
    let leader = named_leader(&cluster, "orders").await;
    leader.append(Append::one("o-1")).await.expect("queued").await.expect("committed");
    cluster.start("node-1", false).await;
    let orders = cluster.hosts["node-1"].get("orders").expect("reopened");
    wait_committed(&orders, 2).await;
    assert_eq!(values(&orders, 0, 2).await, ["o-0", "o-1"]);

    // Deleted: gone from every node, its files too; created again, it is new.
    let dirs = |cluster: &Cluster| -> usize {
        let root = cluster.dir.path();
        cluster
            .nodes
            .keys()
            .filter_map(|name| std::fs::read_dir(root.join(name).join("logs")).ok())
            .map(Iterator::count)
            .sum()
    };
    assert_eq!(dirs(&cluster), 4);
    cluster.hosts["node-2"].delete("orders").await.expect("deleted");
    for host in cluster.hosts.values() {
        wait_until(|| host.get("orders").is_err()).await;
    }
    wait_until(|| dirs(&cluster) == 0).await;
    let missing = cluster.hosts["node-2"].delete("orders").await;
    assert!(matches!(missing, Err(LogError::NotFound(_))), "{missing:?}");
    cluster.hosts["node-0"].create("orders", 0, 0).await.expect("created again");
    let leader = named_leader(&cluster, "orders").await;
    assert_eq!(leader.append(Append::one("new")).await.expect("queued").await.expect("committed"), 0);
    for name in cluster.nodes.keys().cloned().collect::<Vec<_>>() {
        cluster.stop(&name).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_named_log_keeps_its_own_retention_and_idempotent_producers() {
    let mut cluster = Cluster::new();
    cluster.settings.segment_max_store_bytes = 2 << 10;
    cluster.form(3).await;
    let host = Arc::clone(&cluster.hosts["node-0"]);
    host.create("short", 4 << 10, 0).await.expect("created");
    host.create("all", 0, 0).await.expect("created");
    let value = "r".repeat(200);
    for name in ["short", "all"] {
        let leader = named_leader(&cluster, name).await;
        let producer = leader.init_producer().await.expect("an id");
        for sequence in 0..60 {
            let append = Append::one(value.clone()).with_producer(producer, sequence);
            let offset = leader.append(append).await.expect("queued").await.expect("committed");
            assert_eq!(offset, sequence, "{name}");
        }
        // A retry of an old sequence: its original offset, nothing appended.
        let retry = Append::one(value.clone()).with_producer(producer, 10);
        assert_eq!(leader.append(retry).await.expect("queued").await.expect("deduplicated"), 10);
    }
    // `short` is cut the same on every node; `all` keeps everything.
    let mut lowest = 0;
    wait_until(|| {
        let lows: Vec<u64> =
            cluster.hosts.values().map(|host| host.get("short").expect("open").lowest_offset()).collect();
        lowest = lows[0];
        lowest > 0 && lows.iter().all(|low| *low == lowest)
    })
    .await;
    assert!(lowest < 60, "{lowest}");
    for host in cluster.hosts.values() {
        let short = host.get("short").expect("open");
        assert!(matches!(short.read(lowest - 1).await, Err(LogError::OutOfRange { .. })));
        let all = host.get("all").expect("open");
        wait_committed(&all, 60).await;
        assert_eq!((all.lowest_offset(), all.read(0).await.expect("kept").value), (0, value.clone().into()));
        let listed = host.list();
        assert_eq!(
            listed.iter().find(|info| info.name == "short").map(|info| info.retention_bytes),
            Some(4 << 10)
        );
    }
    for name in cluster.nodes.keys().cloned().collect::<Vec<_>>() {
        cluster.stop(&name).await;
    }
}
