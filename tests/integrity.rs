//! Cluster integrity (issue #15), tried from outside on real agents with mutual
//! TLS, the ACL and a gossip key: what a compromised or buggy peer sends, what an
//! operator does by mistake, and what goes wrong on a node's own disk must never
//! stop the cluster nor merge foreign history. Numbered as the scenarios of the
//! issue.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use proglog_api::internal::v1::ForwardRequest;
use proglog_raft::{RaftMessage, RaftMessageType};
use support::cluster::{self, Addresses, DEADLINE, Peer};
use support::{Agent, Pki, Rlimits};

/// A Raft message of `kind` from member `from` to member `to`.
fn message(kind: RaftMessageType, from: u64, to: u64, term: u64) -> RaftMessage {
    let mut message = RaftMessage { from, to, term, ..RaftMessage::default() };
    message.set_msg_type(kind);
    message
}

/// Every agent still runs, the cluster has one leader, and a record produced
/// through each agent is readable on every agent.
async fn cluster_serves(pki: &Pki, agents: &mut [Agent]) {
    for agent in agents.iter_mut() {
        assert!(agent.child.try_wait().unwrap().is_none(), "agent {} exited", agent.rpc);
    }
    let names: Vec<String> = (0..agents.len()).map(|i| format!("node-{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    for (i, agent) in agents.iter().enumerate() {
        cluster::wait_for_servers(pki, agent, &names).await;
        let value = format!("after the attack, through node-{i}");
        let offset = cluster::produce_through(pki, agent, &value).await;
        for reader in agents.iter() {
            cluster::wait_for_record(pki, reader, offset, &value).await;
        }
    }
}

/// Scenario 2: one message with term 2^64−1 to each node. raft-rs would wrap
/// `term + 1` to 0 at its next campaign and panic, and the term would be in every
/// node's hard state for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_term_no_node_can_hold_is_dropped_by_every_node() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let mut agents = cluster::form(&pki, data.path(), 3);
    let ids = cluster::member_ids(data.path(), "node-0");
    for to in 0..3 {
        let from = (to + 1) % 3;
        let (from_name, to_name) = (format!("node-{from}"), format!("node-{to}"));
        let sender = cluster::identity(data.path(), &from_name, &agents[from].rpc.to_string());
        let mut peer = Peer::new(&pki, &agents[to], sender);
        let heartbeat = message(RaftMessageType::MsgHeartbeat, ids[&from_name], ids[&to_name], u64::MAX);
        let _ = peer.send(&[heartbeat]).await;
    }
    cluster_serves(&pki, &mut agents).await;
    for agent in &agents {
        cluster::wait_for_metric(&pki, agent, "proglog_peer_rejected_total{reason=\"term\"}", 1.0).await;
        let term = cluster::metric(&pki, agent, "proglog_raft_term").unwrap();
        assert!(term < 1e6, "the forged term was taken: {term}");
    }
}

/// Scenario 5: a heartbeat whose commit index is beyond the receiver's log
/// (raft-rs's `commit_to` is fatal there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_beyond_the_receivers_log_is_dropped() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let mut agents = cluster::form(&pki, data.path(), 3);
    let ids = cluster::member_ids(data.path(), "node-0");
    let leader = cluster::wait_for_servers(&pki, &agents[0], &["node-0", "node-1", "node-2"]).await;
    let leader_index: usize = leader.trim_start_matches("node-").parse().unwrap();
    for to in (0..3).filter(|to| *to != leader_index) {
        let to_name = format!("node-{to}");
        let term = cluster::metric(&pki, &agents[to], "proglog_raft_term").unwrap() as u64;
        let sender = cluster::identity(data.path(), &leader, &agents[leader_index].rpc.to_string());
        let mut peer = Peer::new(&pki, &agents[to], sender);
        let mut heartbeat = message(RaftMessageType::MsgHeartbeat, ids[&leader], ids[&to_name], term);
        heartbeat.commit = 1_000_000_000_000;
        let _ = peer.send(&[heartbeat]).await;
    }
    cluster_serves(&pki, &mut agents).await;
    for to in (0..3).filter(|to| *to != leader_index) {
        let rejected = "proglog_peer_rejected_total{reason=\"commit\"}";
        cluster::wait_for_metric(&pki, &agents[to], rejected, 1.0).await;
    }
}

/// Scenario 3: a value above `--max-record-bytes` forwarded by a peer is
/// refused like a client's, before it is proposed (a committed entry that
/// cannot be applied would stop every node, at every restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_value_above_the_limit_is_refused_before_it_is_proposed() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let mut agents = cluster::form(&pki, data.path(), 3);
    let leader = cluster::wait_for_servers(&pki, &agents[0], &["node-0", "node-1", "node-2"]).await;
    let leader_index: usize = leader.trim_start_matches("node-").parse().unwrap();
    let follower = (leader_index + 1) % 3;
    let name = format!("node-{follower}");
    let sender = cluster::identity(data.path(), &name, &agents[follower].rpc.to_string());
    let mut peer = Peer::new(&pki, &agents[leader_index], sender);
    let oversized = vec![7u8; (1 << 20) + 1];
    let request = peer.request(tokio_stream::iter([ForwardRequest {
        values: vec![oversized.into()],
        ..Default::default()
    }]));
    let call = peer.client.forward(request);
    let answer = match tokio::time::timeout(DEADLINE, call).await.unwrap() {
        Ok(response) => {
            let mut responses = response.into_inner();
            match tokio::time::timeout(DEADLINE, responses.message()).await.unwrap() {
                Ok(Some(response)) => tonic::Code::from_i32(response.code),
                Ok(None) => tonic::Code::Ok,
                Err(status) => status.code(),
            }
        }
        Err(status) => status.code(),
    };
    assert_eq!(answer, tonic::Code::InvalidArgument);
    cluster_serves(&pki, &mut agents).await;
}

/// Scenario 3, with honest clients: nodes configured with different
/// `--max-record-bytes`. The limit is enforced where a record is proposed; a
/// committed record always applies, on a node with a lower limit too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_record_applies_on_a_node_with_a_lower_limit() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let larger = ["--max-record-bytes", "2097152"];
    let first = cluster::start(&pki, data.path(), "node-0", None, &larger);
    let second = cluster::start(&pki, data.path(), "node-1", Some(&first), &larger);
    let third = cluster::start(&pki, data.path(), "node-2", Some(&first), &[]);
    first.wait_for_voters(3, DEADLINE);
    let mut agents = vec![first, second, third];
    let leader = cluster::wait_for_servers(&pki, &agents[0], &["node-0", "node-1", "node-2"]).await;
    assert_ne!(leader, "node-2", "the node with the lower limit leads: it would refuse the record");
    let value = "x".repeat(3 << 19); // 1.5 MiB
    let offset = cluster::produce_through(&pki, &agents[0], &value).await;
    cluster::wait_for_record(&pki, &agents[2], offset, &value).await;
    cluster_serves(&pki, &mut agents).await;
}

/// Scenario 7: a node whose Raft thread stopped (here: its files cannot grow)
/// must not go on looking healthy. It reports not ready at once and exits
/// non-zero with the reason in its last log line, so a supervisor restarts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_replication_stopped_exits_with_the_reason() {
    replication_stops_on_one_node("").await;
}

/// The same for a named log's group: the node cannot do its job either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_named_log_stopped_exits_with_the_reason() {
    replication_stops_on_one_node("big").await;
}

/// node-2's files cannot grow past 2 MiB; records produced to `log` (created
/// by the first produce when named) grow them until its replication of that
/// log fails: it exits non-zero, its last line the reason, and the others go on.
async fn replication_stops_on_one_node(log: &str) {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let first = cluster::start(&pki, data.path(), "node-0", None, &[]);
    let second = cluster::start(&pki, data.path(), "node-1", Some(&first), &[]);
    let limits = Rlimits { fsize: Some(2 << 20), ..Rlimits::default() };
    let mut third = cluster::start_limited(&pki, data.path(), "node-2", Some(&first), &[], limits);
    first.wait_for_voters(3, DEADLINE);
    let agents = [first, second];
    // Enough to grow node-2's files past 2 MiB.
    let value = "v".repeat(64 << 10);
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = third.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the node whose files cannot grow still runs");
        cluster::produce_to(&pki, &agents[0], log, &value).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(!status.success(), "{status:?}");
    let lines: Vec<String> = third.log.try_iter().collect();
    let last = lines.last().cloned().unwrap_or_default();
    assert!(last.contains("File too large"), "the last log line does not give the reason: {last}");
    if !log.is_empty() {
        assert!(last.contains(&format!("log \\\"{log}\\\"")), "the last line names the log: {last}");
    }
    // The two others go on.
    let offset = cluster::produce_to(&pki, &agents[1], log, "still serving").await;
    cluster::wait_for_record_in(&pki, &agents[0], log, offset, "still serving").await;
}

/// Three members at fixed addresses (node-0 without join addresses, as pod 0
/// of a StatefulSet), all voting.
async fn fixed_cluster(pki: &Pki, data: &std::path::Path) -> (Vec<Addresses>, Vec<Agent>) {
    fixed_cluster_with(pki, data, &[]).await
}

/// [`fixed_cluster`], each member with `extra` flags.
async fn fixed_cluster_with(
    pki: &Pki,
    data: &std::path::Path,
    extra: &[&str],
) -> (Vec<Addresses>, Vec<Agent>) {
    let addresses: Vec<Addresses> = (0..3).map(|_| Addresses::free()).collect();
    let agents: Vec<Agent> = (0..3).map(|i| restart_with(pki, data, &addresses, i, extra)).collect();
    let refs: Vec<&Agent> = agents.iter().collect();
    cluster::wait_for_voters(pki, &refs, &["node-0", "node-1", "node-2"]).await;
    (addresses, agents)
}

/// Starts member `i` of [`fixed_cluster`] (again), with the flags it had.
fn restart(pki: &Pki, data: &std::path::Path, addresses: &[Addresses], i: usize) -> Agent {
    restart_with(pki, data, addresses, i, &[])
}

fn restart_with(
    pki: &Pki,
    data: &std::path::Path,
    addresses: &[Addresses],
    i: usize,
    extra: &[&str],
) -> Agent {
    let seeds: Vec<&str> = if i == 0 { vec![] } else { vec![addresses[0].gossip.as_str()] };
    cluster::start_at(pki, data, &format!("node-{i}"), &addresses[i], &seeds, extra)
}

/// Produces through every member in turn until stopped; returns what was
/// acknowledged (offset → value).
fn load(pki: &Pki, agents: &[Agent]) -> (tokio::task::JoinHandle<BTreeMap<u64, String>>, Arc<AtomicBool>) {
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = agents.iter().map(|agent| pki.grpc(agent.rpc, "root")).collect();
    let stopping = Arc::clone(&stop);
    let task = tokio::spawn(async move {
        let mut acked = BTreeMap::new();
        for i in 0.. {
            if stopping.load(Ordering::Relaxed) {
                break;
            }
            let mut client = clients[i % clients.len()].clone();
            let value = format!("load-{i}");
            let mut request = tonic::Request::new(support::produce(&value));
            request.set_timeout(Duration::from_secs(2));
            if let Ok(response) = client.produce(request).await {
                acked.insert(response.into_inner().offset, value);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        acked
    });
    (task, stop)
}

/// Every acknowledged record is on every member.
async fn holds(pki: &Pki, agents: &[Agent], acked: &BTreeMap<u64, String>) {
    for agent in agents {
        for (offset, value) in acked {
            cluster::wait_for_record(pki, agent, *offset, value).await;
        }
    }
}

/// Scenario 1: SIGTERM each node in turn (pod 0 first, which has no join
/// addresses) and start it again with the same flags and data, under load: the
/// cluster keeps serving, every node rejoins, and it ends with three voters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_ends_with_every_node_a_voter() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let (addresses, mut agents) = fixed_cluster(&pki, data.path()).await;
    let (producer, stop) = load(&pki, &agents);
    for i in [0, 2, 1] {
        let agent = agents.remove(i);
        assert!(agent.terminate().await.success());
        agents.insert(i, restart(&pki, data.path(), &addresses, i));
        let refs: Vec<&Agent> = agents.iter().collect();
        cluster::wait_for_voters(&pki, &refs, &["node-0", "node-1", "node-2"]).await;
    }
    stop.store(true, Ordering::Relaxed);
    let acked = producer.await.unwrap();
    assert!(acked.len() > 10, "the cluster did not keep serving: {} acknowledged", acked.len());
    holds(&pki, &agents, &acked).await;
    for agent in agents {
        assert!(agent.terminate().await.success());
    }
}

/// Scenario 1, the other half: pod 0 restarted after kill -9 without join
/// addresses finds its cluster (through the members it last knew), so its
/// later graceful leave is heard and it is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_without_join_addresses_is_in_gossip_and_its_leave_is_heard() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let (addresses, mut agents) = fixed_cluster(&pki, data.path()).await;
    agents.remove(0).kill();
    for agent in &agents {
        while agent.log.try_recv().is_ok() {}
    }
    agents.insert(0, restart(&pki, data.path(), &addresses, 0));
    // The others hear it in gossip again: a member joined. Both of them, the leader
    // among them: a leave from a node the leader never saw come back is not one it
    // acts on (it stays a failed member, which is the safe side).
    for agent in &agents[1..] {
        agent.wait_for_line(&["member joined", "node-0"]);
    }
    // And it hears them: a voter that sees too few of the others alive does not
    // leave (it stops as a failure would), which is not what this test is about.
    let mut unseen = vec!["node-1", "node-2"];
    while !unseen.is_empty() {
        let line = agents[0].wait_for_line(&["member joined"]);
        unseen.retain(|name| !line.contains(&format!("\"member\":\"{name}\"")));
    }
    assert!(agents.remove(0).terminate().await.success());
    for agent in &agents {
        cluster::wait_for_servers(&pki, agent, &["node-1", "node-2"]).await;
    }
}

/// Scenario 4: a node holding another cluster's data, started with join
/// addresses pointing at ours, is refused — never merged: our nodes neither
/// add it nor take it as leader, and serve only our records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_cluster_is_refused_not_merged() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let foreign_data = tempfile::tempdir().unwrap();
    // Another cluster, with records of its own.
    let foreign = cluster::start(&pki, foreign_data.path(), "node-3", None, &[]);
    for i in 0..5 {
        cluster::produce_through(&pki, &foreign, &format!("foreign-{i}")).await;
    }
    assert!(foreign.terminate().await.success());
    let mut agents = cluster::form(&pki, data.path(), 3);
    let ours = cluster::produce_through(&pki, &agents[0], "ours").await;
    let foreign = cluster::start(&pki, foreign_data.path(), "node-3", Some(&agents[0]), &[]);
    let rejected = "proglog_peer_rejected_total{reason=\"cluster_id\"}";
    // Gossip has time to spread, and the leader's membership loop two rounds.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for agent in &agents {
        let servers = cluster::servers(&pki, agent).await;
        assert!(servers.iter().all(|server| server.id != "node-3"), "merged: {servers:?}");
        cluster::wait_for_record(&pki, agent, ours, "ours").await;
    }
    cluster::wait_for_servers(&pki, &foreign, &["node-3"]).await;
    cluster::wait_for_metric(&pki, &agents[0], rejected, 1.0).await;
    cluster_serves(&pki, &mut agents).await;
}

/// Scenario 6: a follower killed and restarted with an empty data dir (a
/// replaced disk, same name) comes back as a new member: its old identity is
/// removed, the new one added and promoted; no node stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_data_comes_back_as_a_new_member() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let (addresses, mut agents) = fixed_cluster(&pki, data.path()).await;
    let mut acked = BTreeMap::new();
    for i in 0..40 {
        let value = format!("before-{i}");
        acked.insert(cluster::produce_through(&pki, &agents[0], &value).await, value);
    }
    let old_id = cluster::member_ids(data.path(), "node-0")["node-2"];
    agents.remove(2).kill();
    std::fs::remove_dir_all(data.path().join("node-2")).unwrap();
    agents.insert(2, restart(&pki, data.path(), &addresses, 2));
    holds(&pki, &agents, &acked).await;
    let refs: Vec<&Agent> = agents.iter().collect();
    cluster::wait_for_voters(&pki, &refs, &["node-0", "node-1", "node-2"]).await;
    cluster_serves(&pki, &mut agents).await;
    let new_id = cluster::identity(data.path(), "node-2", "").member_id;
    assert_ne!(old_id, new_id, "it came back under its old identity");
    let ids = cluster::member_ids(data.path(), "node-0");
    assert_eq!(ids.get("node-2"), Some(&new_id), "{ids:?}");
}

/// Scenario 8: a second agent claiming a live member's name (it holds the
/// gossip key and a `replicate` certificate) is refused while the member
/// lives: the member keeps its address and its vote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_claiming_a_live_members_name_is_refused() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let impostor_data = tempfile::tempdir().unwrap();
    let mut agents = cluster::form(&pki, data.path(), 3);
    let before = cluster::servers(&pki, &agents[0]).await;
    let impostor = cluster::start(&pki, impostor_data.path(), "node-1", Some(&agents[0]), &[]);
    // Gossip has time to spread, and the leader's membership loop two rounds.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let address = |servers: &[proglog_api::v1::Server]| {
        servers.iter().find(|server| server.id == "node-1").map(|server| server.rpc_addr.clone())
    };
    assert_ne!(address(&before), Some(impostor.rpc.to_string()));
    for agent in &agents {
        assert_eq!(
            address(&cluster::servers(&pki, agent).await),
            address(&before),
            "the impostor took the name"
        );
    }
    let refused = "proglog_peer_rejected_total{reason=\"name_conflict\"}";
    let deadline = Instant::now() + DEADLINE;
    while agents.iter().all(|agent| cluster::metric(&pki, agent, refused).unwrap_or(0.0) < 1.0) {
        assert!(Instant::now() < deadline, "the impostor was never refused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster_serves(&pki, &mut agents).await;
}

/// The RPC address `servers` give for node `name`.
fn address_of(servers: &[proglog_api::v1::Server], name: &str) -> Option<String> {
    servers.iter().find(|server| server.id == name).map(|server| server.rpc_addr.clone())
}

/// Scenario 9: a node's leave notice captured from its previous run (here: by
/// a listener the node took for a seed) and replayed does not turn a later
/// kill -9 of that node into a removal (SPEC §3: a failed node stays).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_leave_notice_does_not_remove_a_failed_node() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let (addresses, mut agents) = fixed_cluster(&pki, data.path()).await;
    // node-2 also takes the eavesdropper for a seed, so it sends it its leave.
    let eavesdropper = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let spy = eavesdropper.local_addr().unwrap().to_string();
    let seeds = [addresses[0].gossip.as_str(), spy.as_str()];
    assert!(agents.remove(2).terminate().await.success());
    agents.insert(2, cluster::start_at(&pki, data.path(), "node-2", &addresses[2], &seeds, &[]));
    let refs: Vec<&Agent> = agents.iter().collect();
    cluster::wait_for_voters(&pki, &refs, &["node-0", "node-1", "node-2"]).await;
    assert!(agents.remove(2).terminate().await.success());
    // The last datagram it sent the eavesdropper: its leave notice.
    let mut notice = Vec::new();
    let mut buf = vec![0u8; 1500];
    while let Ok(Ok(length)) =
        tokio::time::timeout(Duration::from_millis(500), eavesdropper.recv(&mut buf)).await
    {
        notice = buf[..length].to_vec();
    }
    assert!(!notice.is_empty(), "node-2 sent the eavesdropper nothing");
    for agent in &agents {
        cluster::wait_for_servers(&pki, agent, &["node-0", "node-1"]).await;
    }
    // It comes back as a member, then the notice is replayed, then it dies.
    agents.insert(2, cluster::start_at(&pki, data.path(), "node-2", &addresses[2], &seeds, &[]));
    let refs: Vec<&Agent> = agents.iter().collect();
    cluster::wait_for_voters(&pki, &refs, &["node-0", "node-1", "node-2"]).await;
    for at in &addresses[..2] {
        eavesdropper.send_to(&notice, &at.gossip).await.unwrap();
    }
    while agents[0].log.try_recv().is_ok() {}
    agents.remove(2).kill();
    agents[0].wait_for_line(&["member failed", "node-2"]);
    // Two reconciliation rounds: a failed node is not removed.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for agent in &agents {
        cluster::wait_for_servers(&pki, agent, &["node-0", "node-1", "node-2"]).await;
        cluster::wait_for_metric(&pki, agent, "proglog_peer_rejected_total{reason=\"leave\"}", 1.0).await;
    }
}

/// Holds every client call slot of `agent` still free (consume streams waiting
/// at the tail at `offset`, which the ACL allows root).
async fn hold_calls(
    pki: &Pki,
    agent: &Agent,
    offset: u64,
    held: &mut Vec<tonic::Streaming<proglog_api::v1::ConsumeResponse>>,
) {
    let client = pki.grpc(agent.rpc, "root");
    let request = || proglog_api::v1::ConsumeRequest { offset, ..Default::default() };
    while let Ok(Ok(stream)) =
        tokio::time::timeout(Duration::from_secs(2), client.clone().consume_stream(request())).await
    {
        held.push(stream.into_inner());
    }
}

/// Scenario 10: clients holding every call slot (here: consume streams waiting
/// at the tail, allowed by the ACL) do not starve replication — agent-to-agent
/// calls have budgets of their own. A follower restarted meanwhile still
/// catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_holding_every_call_slot_do_not_starve_replication() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let calls = ["--max-concurrent-calls", "16"];
    let (addresses, mut agents) = fixed_cluster_with(&pki, data.path(), &calls).await;
    let leader = cluster::wait_for_servers(&pki, &agents[0], &["node-0", "node-1", "node-2"]).await;
    let follower = (0..3).find(|i| format!("node-{i}") != leader).unwrap();
    let tail = cluster::produce_through(&pki, &agents[0], "before").await + 1_000;
    let mut held: Vec<Vec<_>> = vec![Vec::new(), Vec::new(), Vec::new()];
    for (agent, held) in agents.iter().zip(&mut held) {
        hold_calls(&pki, agent, tail, held).await;
    }
    // The follower dies; the slots its calls held on the others are taken by
    // clients too; it restarts: its calls to the others must open again.
    agents[follower].signal(libc::SIGKILL);
    held[follower].clear();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in (0..3).filter(|i| *i != follower) {
        hold_calls(&pki, &agents[i], tail, &mut held[i]).await;
    }
    assert!(
        held.iter().filter(|streams| streams.len() >= 12).count() == 2,
        "streams held: {:?}",
        held.iter().map(Vec::len).collect::<Vec<_>>()
    );
    agents[follower] = restart_with(&pki, data.path(), &addresses, follower, &calls);
    // A client's produce needs a slot too: free one on the node it goes to.
    let through = (follower + 1) % 3;
    let mut client = pki.grpc(agents[through].rpc, "root");
    let deadline = Instant::now() + DEADLINE;
    let offset = loop {
        let mut request = tonic::Request::new(support::produce("after"));
        request.set_timeout(Duration::from_secs(5));
        match client.produce(request).await {
            Ok(response) => break response.into_inner().offset,
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                held[through].pop();
            }
            Err(status) => {
                assert!(Instant::now() < deadline, "the cluster stopped serving: {status:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let restarted = &agents[follower];
    let deadline = Instant::now() + DEADLINE;
    loop {
        let highest = cluster::metric(&pki, restarted, "proglog_log_highest_offset").unwrap_or(-1.0);
        if highest >= offset as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted follower never caught up (at {highest}, want {offset})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(held);
}

/// `--peer-tls-require-node-name`: each node's certificate names it. The
/// cluster forms; a caller holding a certificate allowed to replicate but
/// naming no node cannot speak for a member; and an agent with a valid
/// certificate of another node, claiming the name of a member that died, does
/// not replace it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_node_names_required_a_certificate_must_name_its_node() {
    let pki = Pki::with_nodes(&["node-0", "node-1", "node-2", "node-3"]);
    let data = tempfile::tempdir().unwrap();
    let timing = ["--raft-heartbeat-interval", "50ms", "--raft-election-timeout", "500ms"];
    let first = pki.start_named_member(data.path(), "node-0", "node-0", &timing);
    let seed = first.gossip.to_string();
    let mut joining = timing.to_vec();
    joining.extend(["--start-join-addrs", seed.as_str()]);
    let mut agents = vec![first];
    for name in ["node-1", "node-2"] {
        agents.push(pki.start_named_member(data.path(), name, name, &joining));
    }
    let refs: Vec<&Agent> = agents.iter().collect();
    cluster::wait_for_voters(&pki, &refs, &["node-0", "node-1", "node-2"]).await;
    let node_name = "proglog_peer_rejected_total{reason=\"node_name\"}";
    // root may replicate, but its certificate names no node.
    let ids = cluster::member_ids(data.path(), "node-0");
    let sender = cluster::identity(data.path(), "node-1", &agents[1].rpc.to_string());
    let mut peer = Peer::new(&pki, &agents[0], sender);
    let heartbeat = message(RaftMessageType::MsgHeartbeat, ids["node-1"], ids["node-0"], 1);
    let refused = peer.send(&[heartbeat]).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    cluster::wait_for_metric(&pki, &agents[0], node_name, 1.0).await;
    // node-1 dies; node-3's certificate comes back under node-1's name.
    let before = cluster::servers(&pki, &agents[0]).await;
    agents.remove(1).kill();
    let impostor_data = tempfile::tempdir().unwrap();
    let impostor = pki.start_named_member(impostor_data.path(), "node-1", "node-3", &joining);
    let deadline = Instant::now() + DEADLINE;
    let refusals = |agents: &[Agent]| -> f64 {
        agents.iter().map(|agent| cluster::metric(&pki, agent, node_name).unwrap_or(0.0)).sum()
    };
    while refusals(&agents) < 2.0 {
        assert!(Instant::now() < deadline, "the impostor was never refused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for agent in &agents {
        let servers = cluster::servers(&pki, agent).await;
        assert_eq!(
            address_of(&servers, "node-1"),
            address_of(&before, "node-1"),
            "node-1 was replaced: {servers:?}"
        );
    }
    drop(impostor);
}
