//! Partitions of real agents, each in a network namespace this test creates
//! (root and `ip` needed; it says it skipped elsewhere). A bridge in the test's
//! namespace joins them and carries the test's clients; a node is cut off from
//! its peers (not from clients) by blackhole routes inside its namespace.
//!
//! While producers run: the leader is cut off, then healed; a follower is
//! paused (SIGSTOP), then resumed. Checked: no acknowledged record is lost, no
//! node crashes, every log agrees at the end, the majority elects a working
//! leader, and the cut-off leader acknowledges nothing while cut off.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proglog_api::v1::{ConsumeRequest, GetServersRequest};
use support::{Agent, Pki, produce};

const DEADLINE: Duration = Duration::from_secs(60);
const NODES: usize = 3;

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The namespaces, the bridge and the links; removed on drop.
struct Network {
    tag: String,
}

impl Network {
    fn namespace(&self, node: usize) -> String {
        format!("{}n{node}", self.tag)
    }

    fn address(node: usize) -> String {
        format!("10.77.0.{}", node + 1)
    }

    /// Builds it, or `None` where this machine cannot (not root, no `ip`).
    fn create() -> Option<Self> {
        if !support::root::is_root() || !support::root::have("ip", "iproute2") {
            return None;
        }
        let network = Self { tag: format!("plg{}", std::process::id() % 100_000) };
        let bridge = format!("{}br", network.tag);
        let ok = ip(&["link", "add", &bridge, "type", "bridge"])
            && ip(&["addr", "add", "10.77.0.254/24", "dev", &bridge])
            && ip(&["link", "set", &bridge, "up"]);
        if !ok {
            return None;
        }
        for node in 0..NODES {
            let ns = network.namespace(node);
            let (outer, inner) = (format!("{}v{node}", network.tag), format!("{}i{node}", network.tag));
            let address = format!("{}/24", Self::address(node));
            let ok = ip(&["netns", "add", &ns])
                && ip(&["link", "add", &outer, "type", "veth", "peer", "name", &inner])
                && ip(&["link", "set", &outer, "master", &bridge])
                && ip(&["link", "set", &outer, "up"])
                && ip(&["link", "set", &inner, "netns", &ns])
                && ip(&["-n", &ns, "addr", "add", &address, "dev", &inner])
                && ip(&["-n", &ns, "link", "set", &inner, "up"])
                && ip(&["-n", &ns, "link", "set", "lo", "up"]);
            if !ok {
                return None;
            }
        }
        Some(network)
    }

    /// Cuts `node` off from every other node (clients still reach it).
    fn isolate(&self, node: usize, cut: bool) {
        for other in (0..NODES).filter(|other| *other != node) {
            let route = format!("{}/32", Self::address(other));
            let verb = if cut { "add" } else { "del" };
            assert!(ip(&["-n", &self.namespace(node), "route", verb, "blackhole", &route]));
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for node in 0..NODES {
            ip(&["netns", "del", &self.namespace(node)]);
        }
        ip(&["link", "del", &format!("{}br", self.tag)]);
    }
}

async fn leader_of(pki: &Pki, agent: &Agent) -> Option<String> {
    let mut client = pki.grpc(agent.rpc, "root");
    let request = tonic::Request::new(GetServersRequest {});
    let servers =
        tokio::time::timeout(Duration::from_secs(1), client.get_servers(request)).await.ok()?.ok()?;
    servers.into_inner().servers.into_iter().find(|server| server.is_leader).map(|server| server.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_and_pauses_lose_nothing_acknowledged() {
    let Some(network) = Network::create() else {
        return support::root::cannot_run("needs root and iproute2 to create network namespaces");
    };
    let addresses: Vec<String> = (0..NODES).map(Network::address).collect();
    let pki = Pki::with_sans(&addresses.iter().map(String::as_str).collect::<Vec<_>>());
    let data = tempfile::tempdir().unwrap();
    let mut agents: Vec<Agent> = Vec::new();
    for node in 0..NODES {
        let name = format!("node-{node}");
        let bind = format!("{}:8401", addresses[node]);
        let seed = format!("{}:8401", addresses[0]);
        let mut args = vec![
            "--bind-addr",
            &bind,
            "--rpc-port",
            "8400",
            "--http-addr",
            "",
            "--raft-heartbeat-interval",
            "100ms",
            "--raft-election-timeout",
            "1s",
        ];
        if node > 0 {
            args.extend(["--start-join-addrs", &seed]);
        }
        let agent = pki.start_member(Some(&network.namespace(node)), data.path(), &name, &args);
        agents.push(agent);
    }
    // Wait for the three to agree on a leader (node-0, bootstrapped, leads at first).
    let deadline = Instant::now() + DEADLINE;
    let leader = loop {
        let mut leaders = Vec::new();
        for agent in &agents {
            leaders.push(leader_of(&pki, agent).await);
        }
        let servers = {
            let mut client = pki.grpc(agents[0].rpc, "root");
            client.get_servers(GetServersRequest {}).await.map(|r| r.into_inner().servers.len()).unwrap_or(0)
        };
        if servers == NODES && leaders.iter().all(|l| l.is_some() && *l == leaders[0]) {
            let name = leaders[0].clone().unwrap();
            break name.trim_start_matches("node-").parse::<usize>().unwrap();
        }
        assert!(Instant::now() < deadline, "no agreed leader: {leaders:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The whole cluster votes (learners are promoted once caught up).
    agents[0].wait_for_voters(NODES, DEADLINE);

    // Producers: one per node, each producing through its node with a deadline.
    let acked: Arc<Mutex<BTreeMap<u64, String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut producers = Vec::new();
    for (node, agent) in agents.iter().enumerate() {
        let (mut client, acked, stop) = (pki.grpc(agent.rpc, "root"), Arc::clone(&acked), Arc::clone(&stop));
        producers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let value = format!("n{node}-{i}");
                i += 1;
                let mut request = tonic::Request::new(produce(&value));
                request.set_timeout(Duration::from_secs(2));
                if let Ok(response) = client.produce(request).await {
                    acked.lock().unwrap().insert(response.into_inner().offset, value);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Cut the leader off from its peers.
    network.isolate(leader, true);
    let cut = Instant::now();
    let majority: Vec<usize> = (0..NODES).filter(|node| *node != leader).collect();
    let new_leader = loop {
        if let Some(name) = leader_of(&pki, &agents[majority[0]]).await
            && name != format!("node-{leader}")
        {
            break name;
        }
        assert!(cut.elapsed() < DEADLINE, "the majority elected no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("the majority elected {new_leader} {:?} after the cut", cut.elapsed());
    // While cut off, the old leader acknowledges nothing.
    let mut isolated = pki.grpc(agents[leader].rpc, "root");
    for _ in 0..3 {
        let mut request = tonic::Request::new(produce("while cut off"));
        request.set_timeout(Duration::from_secs(2));
        assert!(isolated.produce(request).await.is_err(), "the cut-off leader acknowledged a produce");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    network.isolate(leader, false);

    // Pause a follower of the new leader, then resume it.
    let paused = majority.iter().copied().find(|node| format!("node-{node}") != new_leader).unwrap();
    agents[paused].signal(libc::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(3)).await;
    agents[paused].signal(libc::SIGCONT);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for producer in producers {
        producer.await.unwrap();
    }

    // No node crashed; every node holds every acknowledged record, and all agree.
    let acked = acked.lock().unwrap().clone();
    assert!(!acked.is_empty());
    let end = acked.keys().last().copied().unwrap() + 1;
    let mut logs = Vec::new();
    for agent in &mut agents {
        assert!(agent.child.try_wait().unwrap().is_none(), "an agent exited");
        let mut client = pki.grpc(agent.rpc, "root");
        let mut log = Vec::new();
        for offset in 0..end {
            let deadline = Instant::now() + DEADLINE;
            let value = loop {
                match client.consume(ConsumeRequest { offset, ..Default::default() }).await {
                    Ok(response) => break response.into_inner().record.unwrap().value,
                    Err(status) => {
                        assert!(Instant::now() < deadline, "offset {offset} missing: {status:?}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            };
            log.push(String::from_utf8(value.to_vec()).unwrap());
        }
        for (offset, value) in &acked {
            assert_eq!(&log[*offset as usize], value, "acknowledged record at {offset} lost or changed");
        }
        logs.push(log);
    }
    assert!(logs.windows(2).all(|pair| pair[0] == pair[1]), "the logs disagree");
    for agent in agents {
        assert!(agent.terminate().await.success());
    }
    drop(network);
}
