//! Clusters of real agents with mutual TLS, the ACL and a gossip key: starting
//! members, waiting on what they report, and speaking to them as another agent
//! (a peer holding the `replicate` identity) would.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use proglog_api::internal::v1::Batch;
use proglog_api::internal::v1::raft_client::RaftClient;
use proglog_api::v1::{ConsumeRequest, GetServersRequest, Server};
use proglog_raft::{ClusterId, PeerId};

use super::{Agent, Pki, Rlimits, produce};

/// Generous: clusters share two cores with the rest of the suite.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Starts cluster member `name` (data under `data`), joining through `seed` (its
/// gossip address), with fast Raft timing and `extra` flags.
pub fn start(pki: &Pki, data: &Path, name: &str, seed: Option<&Agent>, extra: &[&str]) -> Agent {
    start_limited(pki, data, name, seed, extra, Rlimits::default())
}

/// [`start`] under resource `limits`.
pub fn start_limited(
    pki: &Pki,
    data: &Path,
    name: &str,
    seed: Option<&Agent>,
    extra: &[&str],
    limits: Rlimits,
) -> Agent {
    let seed = seed.map(|seed| seed.gossip.to_string());
    let mut args = vec!["--raft-heartbeat-interval", "50ms", "--raft-election-timeout", "500ms"];
    if let Some(seed) = &seed {
        args.extend(["--start-join-addrs", seed.as_str()]);
    }
    args.extend_from_slice(extra);
    pki.start_member_limited(None, data, name, &args, limits)
}

/// `node-0` bootstrapped, `node-1`.. joined through it, every one a voter.
pub fn form(pki: &Pki, data: &Path, size: usize) -> Vec<Agent> {
    let first = start(pki, data, "node-0", None, &[]);
    let mut agents = vec![first];
    for i in 1..size {
        let agent = start(pki, data, &format!("node-{i}"), Some(&agents[0]), &[]);
        agents.push(agent);
    }
    agents[0].wait_for_voters(size, DEADLINE);
    agents
}

/// The servers `agent` reports (empty while it cannot answer).
pub async fn servers(pki: &Pki, agent: &Agent) -> Vec<Server> {
    let mut client = pki.grpc(agent.rpc, "root");
    let request = tonic::Request::new(GetServersRequest {});
    match tokio::time::timeout(Duration::from_secs(2), client.get_servers(request)).await {
        Ok(Ok(response)) => response.into_inner().servers,
        _ => Vec::new(),
    }
}

/// Waits until `agent` reports exactly `names` with one leader; returns the leader.
pub async fn wait_for_servers(pki: &Pki, agent: &Agent, names: &[&str]) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let servers = servers(pki, agent).await;
        let mut listed: Vec<&str> = servers.iter().map(|s| s.id.as_str()).collect();
        listed.sort_unstable();
        let leaders: Vec<&Server> = servers.iter().filter(|s| s.is_leader).collect();
        if listed == names && leaders.len() == 1 {
            return leaders[0].id.clone();
        }
        assert!(Instant::now() < deadline, "servers {servers:?}, wanted {names:?} with one leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Produces `value` through `agent`, retrying while the cluster elects a leader.
pub async fn produce_through(pki: &Pki, agent: &Agent, value: &str) -> u64 {
    produce_to(pki, agent, "", value).await
}

/// [`produce_through`] to log `log` (SPEC §11; empty: the default log).
pub async fn produce_to(pki: &Pki, agent: &Agent, log: &str, value: &str) -> u64 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut client = pki.grpc(agent.rpc, "root");
        let mut request = tonic::Request::new(produce(value));
        request.set_timeout(Duration::from_secs(5));
        if !log.is_empty() {
            request.metadata_mut().insert("proglog-log", log.parse().unwrap());
        }
        match client.produce(request).await {
            Ok(response) => return response.into_inner().offset,
            Err(status) => {
                assert!(Instant::now() < deadline, "produce through {} failed: {status:?}", agent.rpc);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Waits until `agent` holds `value` at `offset`.
pub async fn wait_for_record(pki: &Pki, agent: &Agent, offset: u64, value: &str) {
    wait_for_record_in(pki, agent, "", offset, value).await;
}

/// [`wait_for_record`] in log `log` (empty: the default log).
pub async fn wait_for_record_in(pki: &Pki, agent: &Agent, log: &str, offset: u64, value: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut client = pki.grpc(agent.rpc, "root");
        let mut request = tonic::Request::new(ConsumeRequest { offset, ..Default::default() });
        if !log.is_empty() {
            request.metadata_mut().insert("proglog-log", log.parse().unwrap());
        }
        if let Ok(response) = client.consume(request).await {
            assert_eq!(response.into_inner().record.unwrap().value, value.as_bytes());
            return;
        }
        assert!(Instant::now() < deadline, "{} never held offset {offset} of {log:?}", agent.rpc);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the sample `name` (with its labels, e.g.
/// `proglog_peer_rejected_total{reason="term"}`) on `agent`'s `/metrics`.
pub fn metric(pki: &Pki, agent: &Agent, name: &str) -> Option<f64> {
    let (_, metrics) = pki.https(agent.http(), Some("root"), "GET", "/metrics", None)?;
    let prefix = format!("{name} ");
    metrics.lines().find_map(|line| line.strip_prefix(&prefix)).and_then(|value| value.trim().parse().ok())
}

/// Waits until `metric` on `agent` reaches `at_least`.
pub async fn wait_for_metric(pki: &Pki, agent: &Agent, name: &str, at_least: f64) {
    let deadline = Instant::now() + DEADLINE;
    while metric(pki, agent, name).is_none_or(|value| value < at_least) {
        assert!(Instant::now() < deadline, "{name} never reached {at_least} on {}", agent.rpc);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a member's data dir says of its cluster (`raft/meta.json`): the Raft id
/// of every member by name.
pub fn member_ids(data: &Path, name: &str) -> BTreeMap<String, u64> {
    meta(data, name)["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|member| (member["name"].as_str().unwrap().to_owned(), member["id"].as_u64().unwrap()))
        .collect()
}

/// Member `name` as its data dir says (its id, its cluster's), reached at `rpc_addr`.
pub fn identity(data: &Path, name: &str, rpc_addr: &str) -> PeerId {
    let meta = meta(data, name);
    PeerId {
        name: name.to_owned(),
        member_id: meta["member_id"].as_u64().unwrap(),
        cluster_id: meta["cluster_id"].as_str().map(|id| id.parse::<ClusterId>().unwrap()),
        rpc_addr: rpc_addr.to_owned(),
    }
}

fn meta(data: &Path, name: &str) -> serde_json::Value {
    let meta = std::fs::read(data.join(name).join("raft").join("meta.json")).unwrap();
    serde_json::from_slice(&meta).unwrap()
}

/// Talks to `agent` on the agent-to-agent service as `sender` would, with the
/// root certificate (which the ACL lets replicate).
pub struct Peer {
    pub client: RaftClient<tonic::transport::Channel>,
    pub sender: PeerId,
}

impl Peer {
    pub fn new(pki: &Pki, agent: &Agent, sender: PeerId) -> Self {
        Self { client: RaftClient::new(pki.channel(agent.rpc, "root")), sender }
    }

    /// A call's request, naming the sender as agents do.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let metadata = request.metadata_mut();
        let cluster_id = self.sender.cluster_id.map(|id| id.to_string()).unwrap_or_default();
        for (key, value) in [
            ("proglog-node-name", self.sender.name.clone()),
            ("proglog-member-id", self.sender.member_id.to_string()),
            ("proglog-rpc-addr", self.sender.rpc_addr.clone()),
            ("proglog-cluster-id", cluster_id),
        ] {
            if !value.is_empty() {
                metadata.insert(key, value.parse().unwrap());
            }
        }
        request
    }

    /// Sends `messages` in one batch on one `Messages` call, and ends it.
    pub async fn send(&mut self, messages: &[proglog_raft::RaftMessage]) -> Result<(), tonic::Status> {
        let messages = messages.iter().map(|m| proglog_raft::encode_message(m).unwrap()).collect();
        let request = self.request(tokio_stream::iter([Batch { messages, group: None }]));
        let call = self.client.messages(request);
        tokio::time::timeout(Duration::from_secs(10), call).await.expect("answered in time").map(|_| ())
    }
}

/// Fixed loopback addresses for a member, so that it comes back where it was
/// after a restart (as a pod's stable name does): gossip, RPC and HTTP ports
/// the OS says are free now.
#[derive(Clone, Debug)]
pub struct Addresses {
    pub gossip: String,
    pub rpc_port: String,
    pub http: String,
}

impl Addresses {
    pub fn free() -> Self {
        let port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let gossip = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Self {
            gossip: format!("127.0.0.1:{gossip}"),
            rpc_port: port().to_string(),
            http: format!("127.0.0.1:{}", port()),
        }
    }

    /// The flags that put an agent there.
    pub fn flags(&self) -> Vec<&str> {
        vec!["--bind-addr", &self.gossip, "--rpc-port", &self.rpc_port, "--http-addr", &self.http]
    }
}

/// A member at fixed `addresses` (see [`Addresses`]), joining through `seeds`
/// (gossip addresses; none: it bootstraps if it has no data).
pub fn start_at(
    pki: &Pki,
    data: &Path,
    name: &str,
    addresses: &Addresses,
    seeds: &[&str],
    extra: &[&str],
) -> Agent {
    let seeds = seeds.join(",");
    let mut args = addresses.flags();
    if !seeds.is_empty() {
        args.extend(["--start-join-addrs", seeds.as_str()]);
    }
    args.extend_from_slice(extra);
    start(pki, data, name, None, &args)
}

/// Waits until `agent` reports exactly `names` with one leader, and every one
/// of them votes (per the leader's metrics: members and voters).
pub async fn wait_for_voters(pki: &Pki, agents: &[&Agent], names: &[&str]) {
    let deadline = Instant::now() + DEADLINE;
    for agent in agents {
        wait_for_servers(pki, agent, names).await;
    }
    loop {
        // (Builds from before `proglog_raft_voters` report members only.)
        let voting = agents.iter().all(|agent| {
            metric(pki, agent, "proglog_raft_voters")
                .or_else(|| metric(pki, agent, "proglog_cluster_members"))
                .is_some_and(|voters| voters as usize == names.len())
        });
        if voting {
            return;
        }
        if Instant::now() >= deadline {
            // What each agent said meanwhile about membership: why it did not converge.
            let said: Vec<String> = agents
                .iter()
                .map(|agent| {
                    let lines: Vec<String> = agent
                        .log
                        .try_iter()
                        .filter(|line| {
                            ["member", "cluster", "leader", "refused"].iter().any(|w| line.contains(w))
                        })
                        .collect();
                    format!("{}:\n{}", agent.rpc, lines[lines.len().saturating_sub(30)..].join("\n"))
                })
                .collect();
            panic!(
                "not every member of {names:?} votes within {DEADLINE:?}; membership lines:\n{}",
                said.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
