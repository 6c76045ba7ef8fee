//! Black-box clusters: real `proglog-agent` processes on loopback forming a
//! cluster by gossip, with mutual TLS, the ACL and a gossip key (issue #9).
//! Conditions are waited on with generous deadlines; nothing here asserts timing.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use proglog_api::v1::{
    CommitOffsetRequest, ConsumeRequest, FetchOffsetRequest, GetOffsetsRequest, InitProducerRequest,
    ProduceRequest,
};
use support::cluster::{self, DEADLINE, produce_through, servers, wait_for_record, wait_for_servers};
use support::{Agent, Pki};

/// Starts node `name` of the cluster, joining through `seed` (a gossip address).
fn start(pki: &Pki, data: &Path, name: &str, seed: Option<&Agent>) -> Agent {
    cluster::start(pki, data, name, seed, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_form_a_cluster_by_gossip_and_survive_failures() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let mut agents: BTreeMap<&str, Agent> = BTreeMap::new();
    agents.insert("node-0", start(&pki, data.path(), "node-0", None));
    for name in ["node-1", "node-2"] {
        let agent = start(&pki, data.path(), name, agents.get("node-0"));
        agents.insert(name, agent);
    }
    let all = ["node-0", "node-1", "node-2"];
    // Every member votes (learners are promoted once caught up).
    agents["node-0"].wait_for_voters(3, DEADLINE);
    let leader = wait_for_servers(&pki, &agents["node-0"], &all).await;
    for agent in agents.values() {
        wait_for_servers(&pki, agent, &all).await;
    }

    // Produce on the leader; consume on both followers; offset + 1 is out of range.
    let now_ms =
        || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let before = now_ms();
    let offset = produce_through(&pki, &agents[leader.as_str()], "first").await;
    let after = now_ms();
    // A linearizable read (SPEC §11) sees it at once, on every node, with the
    // timestamp the leader gave it.
    for agent in agents.values() {
        let mut client = pki.grpc(agent.rpc, "root");
        let read = client.consume(ConsumeRequest { offset, linearizable: true }).await.unwrap();
        let record = read.into_inner().record.unwrap();
        assert_eq!(record.value, "first");
        assert!(
            (before..=after).contains(&record.timestamp_ms),
            "{} not in {before}..={after}",
            record.timestamp_ms
        );
        let path = format!("/records/{offset}?linearizable=true");
        let (status, body) = pki.https(agent.http(), Some("root"), "GET", &path, None).unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(&format!("\"offset\":{offset}")), "{body}");
    }
    // Consumer positions (SPEC §11): committed on the leader (a follower names
    // it), read linearizably anywhere.
    for (name, agent) in &agents {
        let mut client = pki.grpc(agent.rpc, "root");
        let commit = CommitOffsetRequest { group: "billing".into(), offset: offset + 1 };
        let answer = client.commit_offset(commit).await;
        if *name == leader.as_str() {
            answer.unwrap();
        } else {
            let refused = answer.unwrap_err();
            assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
            assert!(refused.message().contains("not the leader"), "{refused:?}");
        }
    }
    for agent in agents.values() {
        let mut client = pki.grpc(agent.rpc, "root");
        let fetched = client.fetch_offset(FetchOffsetRequest { group: "billing".into() }).await.unwrap();
        assert_eq!((fetched.get_ref().found, fetched.get_ref().offset), (true, offset + 1));
        let none = client.fetch_offset(FetchOffsetRequest { group: "nobody".into() }).await.unwrap();
        assert!(!none.get_ref().found);
    }
    for agent in agents.values() {
        wait_for_record(&pki, agent, offset, "first").await;
        let mut client = pki.grpc(agent.rpc, "root");
        let missing =
            client.consume(ConsumeRequest { offset: offset + 1, ..Default::default() }).await.unwrap_err();
        assert_eq!(missing.code(), tonic::Code::OutOfRange);
    }

    // A forged gossip datagram changes nothing.
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(b"\x50\x00not a member", agents["node-0"].gossip).await.unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, metrics) = pki.https(agents["node-0"].http(), Some("root"), "GET", "/metrics", None).unwrap();
        let rejected = metrics.lines().find_map(|line| line.strip_prefix("proglog_gossip_rejected_total "));
        if rejected.is_some_and(|count| count.trim().parse::<f64>().is_ok_and(|count| count >= 1.0)) {
            break;
        }
        assert!(Instant::now() < deadline, "the forged datagram was not counted: {metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // An idempotent producer (SPEC §11) appends through the leader…
    let mut client = pki.grpc(agents[leader.as_str()].rpc, "root");
    let producer_id = client.init_producer(InitProducerRequest {}).await.unwrap().into_inner().producer_id;
    let idempotent = |value: &str| ProduceRequest { producer_id, sequence: 0, ..support::produce(value) };
    let stored = client.produce(idempotent("once")).await.unwrap().into_inner().offset;
    assert_eq!(stored, offset + 1);

    // kill -9 the leader: the survivors elect another and serve produces
    // (through either: a follower forwards).
    let killed = leader.clone();
    agents.remove(killed.as_str()).unwrap().kill();
    let survivors: Vec<&str> = all.iter().copied().filter(|name| *name != killed).collect();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let servers = servers(&pki, &agents[survivors[0]]).await;
        if servers.iter().any(|s| s.is_leader && s.id != killed) {
            break;
        }
        assert!(Instant::now() < deadline, "no new leader: {servers:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // …and its retry after the kill, through a survivor, finds the record
    // where it is: nothing is stored twice.
    let mut client = pki.grpc(agents[survivors[0]].rpc, "root");
    let deadline = Instant::now() + DEADLINE;
    let again = loop {
        match client.produce(idempotent("once")).await {
            Ok(response) => break response.into_inner().offset,
            Err(status) => assert!(Instant::now() < deadline, "the retry failed: {status:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(again, stored);
    let gap = client.produce(ProduceRequest { sequence: 5, ..idempotent("gap") }).await.unwrap_err();
    assert_eq!(gap.code(), tonic::Code::FailedPrecondition, "{gap:?}");
    let second = produce_through(&pki, &agents[survivors[1]], "second").await;
    assert_eq!(second, offset + 2);

    // The killed node restarts with its name and data (on new ports) and catches up.
    let name: &'static str = all.iter().copied().find(|name| *name == killed).unwrap();
    let restarted = start(&pki, data.path(), name, agents.get(survivors[0]));
    wait_for_record(&pki, &restarted, second, "second").await;
    agents.insert(name, restarted);
    for agent in agents.values() {
        wait_for_servers(&pki, agent, &all).await;
    }

    // SIGTERM a follower: it leaves, and the others stop listing it.
    let leader = wait_for_servers(&pki, &agents["node-0"], &all).await;
    let follower: &str = all.iter().copied().find(|name| *name != leader).unwrap();
    let status = agents.remove(follower).unwrap().terminate().await;
    assert!(status.success(), "{status:?}");
    let remaining: Vec<&str> = all.iter().copied().filter(|name| *name != follower).collect();
    for agent in agents.values() {
        wait_for_servers(&pki, agent, &remaining).await;
    }

    // A fourth node started later joins and catches up.
    let fourth = start(&pki, data.path(), "node-3", agents.values().next());
    wait_for_record(&pki, &fourth, second, "second").await;
    let mut with_fourth = remaining.clone();
    with_fourth.push("node-3");
    with_fourth.sort_unstable();
    wait_for_servers(&pki, &fourth, &with_fourth).await;
    agents.insert("node-3", fourth);

    // The node that left starts again with its data: it joins as a member again.
    let third = produce_through(&pki, &agents["node-3"], "third").await;
    let back = start(&pki, data.path(), follower, agents.values().next());
    wait_for_record(&pki, &back, third, "third").await;
    agents.insert(follower, back);
    let mut everyone: Vec<&str> = agents.keys().copied().collect();
    everyone.sort_unstable();
    for agent in agents.values() {
        wait_for_servers(&pki, agent, &everyone).await;
    }

    for agent in agents.into_values() {
        assert!(agent.terminate().await.success());
    }
}

/// Every metric has its `# HELP`, and the replication and disk figures an
/// operator watches are there: each follower's lag on the leader, the fsync
/// histogram, apply lag, forwarded appends, leader changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_an_operator_how_replication_and_the_disk_are_doing() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let agents = cluster::form(&pki, data.path(), 3);
    let names = ["node-0", "node-1", "node-2"];
    let leader = wait_for_servers(&pki, &agents[0], &names).await;
    let (leader_agent, follower) = {
        let position = names.iter().position(|name| *name == leader).unwrap();
        (&agents[position], &agents[(position + 1) % 3])
    };
    let offset = produce_through(&pki, follower, "through a follower").await;
    for agent in &agents {
        wait_for_record(&pki, agent, offset, "through a follower").await;
    }
    cluster::wait_for_metric(&pki, follower, "proglog_forwarded_appends_total", 1.0).await;
    cluster::wait_for_metric(&pki, leader_agent, "proglog_fsync_duration_seconds_count", 1.0).await;
    cluster::wait_for_metric(&pki, leader_agent, "proglog_raft_leader_changes_total", 1.0).await;
    let (_, text) = pki.https(leader_agent.http(), Some("root"), "GET", "/metrics", None).unwrap();
    for follower in names.iter().filter(|name| **name != leader) {
        let sample = format!("proglog_raft_follower_lag_entries{{follower=\"{follower}\"}} ");
        assert!(text.contains(&sample), "no lag for {follower}: {text}");
    }
    assert!(text.contains("proglog_raft_apply_lag_entries 0"), "{text}");
    // Every family is described.
    for family in text.lines().filter_map(|line| line.strip_prefix("# TYPE ")) {
        let name = family.split(' ').next().unwrap();
        assert!(text.contains(&format!("# HELP {name} ")), "{name} has no HELP: {text}");
    }
    for agent in agents {
        assert!(agent.terminate().await.success());
    }
}

/// Agents reached by name (as pods by their stable DNS names): each advertises
/// `localhost`, the second joins through `localhost:<port>` before the first
/// runs at all (it keeps resolving and retrying until a member answers), and
/// GetServers, the Raft configuration and forwarding use the names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_reached_by_name_join_before_their_seed_exists_and_advertise_names() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let first = cluster::Addresses::free();
    let seed = first.gossip.replace("127.0.0.1", "localhost");
    let by_name = ["--advertise-addr", "localhost"];
    let second = cluster::start(
        &pki,
        data.path(),
        "node-1",
        None,
        &[&["--start-join-addrs", seed.as_str()], &by_name[..]].concat(),
    );
    let first = cluster::start_at(&pki, data.path(), "node-0", &first, &[], &by_name);
    let agents = [first, second];
    let leader = wait_for_servers(&pki, &agents[1], &["node-0", "node-1"]).await;
    assert_eq!(leader, "node-0");
    for server in servers(&pki, &agents[1]).await {
        assert!(server.rpc_addr.starts_with("localhost:"), "{server:?} is not advertised by name");
    }
    // node-1 forwards to the leader it dials by name (TLS checks the name).
    let offset = produce_through(&pki, &agents[1], "by name").await;
    wait_for_record(&pki, &agents[0], offset, "by name").await;
    for agent in agents {
        assert!(agent.terminate().await.success());
    }
}

/// A call on log `log` (SPEC §11: the name travels in `proglog-log` metadata).
fn on_log<T>(log: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("proglog-log", log.parse().unwrap());
    request.set_timeout(Duration::from_secs(10));
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_logs_on_a_three_node_cluster_are_created_used_listed_and_deleted() {
    use proglog_api::v1::{CreateLogRequest, DeleteLogRequest, GetServersRequest, ListLogsRequest};
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let agents = cluster::form(&pki, data.path(), 3);
    let all = ["node-0", "node-1", "node-2"];
    for agent in &agents {
        wait_for_servers(&pki, agent, &all).await;
    }
    let default_leader = wait_for_servers(&pki, &agents[0], &all).await;
    let follower = agents.iter().zip(all).find(|(_, name)| *name != default_leader).unwrap().0;
    let mut client = pki.grpc(follower.rpc, "root");
    // Created through a follower; again: ALREADY_EXISTS; bad names refused.
    let create = |name: &str| CreateLogRequest { name: name.into(), retention_bytes: 0, retention_ms: 0 };
    client.create_log(create("orders")).await.unwrap();
    let again = client.create_log(create("orders")).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::AlreadyExists, "{again:?}");
    for bad in ["Orders", "a/b", &"x".repeat(129)] {
        let refused = client.create_log(create(bad)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{bad}: {refused:?}");
    }
    let bad_header = client.get_offsets(on_log("no spaces", GetOffsetsRequest {})).await.unwrap_err();
    assert_eq!(bad_header.code(), tonic::Code::InvalidArgument, "{bad_header:?}");
    // Its own offsets and servers, through any node.
    let deadline = Instant::now() + DEADLINE;
    let offset = loop {
        match client.produce(on_log("orders", support::produce("o-0"))).await {
            Ok(response) => break response.into_inner().offset,
            Err(status) => assert!(Instant::now() < deadline, "{status:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(offset, 0, "a named log starts at 0");
    let servers = client.get_servers(on_log("orders", GetServersRequest {})).await.unwrap().into_inner();
    assert_eq!(servers.servers.len(), 3, "{servers:?}");
    for agent in &agents {
        let mut client = pki.grpc(agent.rpc, "root");
        let request = on_log("orders", ConsumeRequest { offset: 0, linearizable: true });
        assert_eq!(client.consume(request).await.unwrap().into_inner().record.unwrap().value, "o-0");
        // The default log is untouched by it.
        let offsets = client.get_offsets(GetOffsetsRequest {}).await.unwrap().into_inner();
        assert_eq!(offsets.next, 0, "{offsets:?}");
        let path = "/logs/orders/records/0";
        let (code, body) = pki.https(agent.http(), Some("root"), "GET", path, None).unwrap();
        assert_eq!(code, 200, "{body}");
    }
    // A first produce creates a log (--auto-create-logs, the default), over HTTP too.
    client.produce(on_log("auto", support::produce("a-0"))).await.unwrap();
    let (code, body) = pki
        .https(
            follower.http(),
            Some("root"),
            "POST",
            "/logs/web/records",
            Some(r#"{"record":{"value":"aGk="}}"#),
        )
        .unwrap();
    assert_eq!((code, body.as_str()), (200, r#"{"offset":0}"#));
    let listed = client.list_logs(ListLogsRequest {}).await.unwrap().into_inner().logs;
    let names: Vec<&str> = listed.iter().map(|log| log.name.as_str()).collect();
    assert_eq!(names, ["", "auto", "orders", "web"]);
    assert_eq!((listed[2].lowest, listed[2].next), (0, 1), "{listed:?}");
    let lowest = cluster::metric(&pki, follower, r#"proglog_log_highest_offset{log="orders"}"#);
    assert_eq!(lowest, Some(0.0));
    // Without `admin`, no log is created or deleted (nobody may do anything).
    let mut nobody = pki.grpc(follower.rpc, "nobody");
    let denied = nobody.create_log(create("mine")).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("admin"), "{denied:?}");
    // Deleted: gone from every node, with its files; unknown: NOT_FOUND.
    client.delete_log(DeleteLogRequest { name: "orders".into() }).await.unwrap();
    for (agent, name) in agents.iter().zip(all) {
        let deadline = Instant::now() + DEADLINE;
        let mut client = pki.grpc(agent.rpc, "root");
        loop {
            let status = client.get_offsets(on_log("orders", GetOffsetsRequest {})).await;
            let gone = std::fs::read_dir(data.path().join(name).join("logs"))
                .unwrap()
                .filter_map(Result::ok)
                .all(|entry| !entry.file_name().to_string_lossy().starts_with("orders@"));
            if status.as_ref().is_err_and(|status| status.code() == tonic::Code::NotFound) && gone {
                break;
            }
            assert!(Instant::now() < deadline, "{name} still holds orders: {status:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Its gauges leave /metrics too.
    let deadline = Instant::now() + DEADLINE;
    while cluster::metric(&pki, follower, r#"proglog_log_highest_offset{log="orders"}"#).is_some() {
        assert!(Instant::now() < deadline, "a deleted log's gauges stay in /metrics");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(cluster::metric(&pki, follower, r#"proglog_log_highest_offset{log="auto"}"#).is_some());
    let missing = client.delete_log(DeleteLogRequest { name: "orders".into() }).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_s_name_is_its_acl_object_and_only_an_admin_s_first_produce_creates_a_log() {
    use proglog_api::v1::CreateLogRequest;
    let pki = Pki::new();
    // `nobody` may produce to and consume the logs named orders*, nothing else
    // (the keyMatch model of `cargo xtask certs`).
    let policy = "p, root, *, produce\np, root, *, consume\np, root, *, replicate\np, root, *, admin\n\
                  p, nobody, orders*, produce\np, nobody, orders*, consume\n";
    std::fs::write(pki.path("policy.csv"), policy).unwrap();
    let data = tempfile::tempdir().unwrap();
    let agent = cluster::start(&pki, data.path(), "node-0", None, &["--auto-create-logs", "false"]);
    let mut root = pki.grpc(agent.rpc, "root");
    for name in ["orders-eu", "billing"] {
        let request = CreateLogRequest { name: name.into(), retention_bytes: 0, retention_ms: 0 };
        root.create_log(request).await.unwrap();
    }
    let missing = root.produce(on_log("nope", support::produce("x"))).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
    let mut nobody = pki.grpc(agent.rpc, "nobody");
    let offset =
        nobody.produce(on_log("orders-eu", support::produce("o"))).await.unwrap().into_inner().offset;
    assert_eq!(offset, 0);
    for (log, object) in [("billing", "billing"), ("", "*")] {
        let request = match log {
            "" => tonic::Request::new(support::produce("x")),
            log => on_log(log, support::produce("x")),
        };
        let denied = nobody.produce(request).await.unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
        assert_eq!(denied.message(), format!("nobody not permitted to produce to {object}"));
    }
    // Positions are per log.
    let commit = CommitOffsetRequest { group: "g".into(), offset: 1 };
    nobody.commit_offset(on_log("orders-eu", commit)).await.unwrap();
    let request = on_log("orders-eu", FetchOffsetRequest { group: "g".into() });
    let fetched = nobody.fetch_offset(request).await.unwrap().into_inner();
    assert_eq!((fetched.offset, fetched.found), (1, true));
    let default = root.fetch_offset(FetchOffsetRequest { group: "g".into() }).await.unwrap().into_inner();
    assert!(!default.found, "the default log's group g committed nothing");
    // Over HTTP: the same object, a bad name 400, an unknown log 404.
    let get = |client, path: &str| pki.https(agent.http(), Some(client), "GET", path, None).unwrap().0;
    assert_eq!(get("nobody", "/logs/orders-eu/records/0"), 200);
    assert_eq!(get("nobody", "/logs/billing/records/0"), 403);
    assert_eq!(get("root", "/logs/Bad/records/0"), 400);
    assert_eq!(get("root", "/logs/nope/records/0"), 404);
    let post = pki.https(
        agent.http(),
        Some("root"),
        "POST",
        "/logs/nope/records",
        Some(r#"{"record":{"value":"aGk="}}"#),
    );
    assert_eq!(post.unwrap().0, 404, "not created without --auto-create-logs");
    assert!(agent.terminate().await.success());

    // With it (the default), a first produce creates a log only for a caller
    // that may administer it: `nobody` may produce to orders*, not create them.
    let agent = cluster::start(&pki, data.path(), "node-1", None, &[]);
    let mut nobody = pki.grpc(agent.rpc, "nobody");
    let denied = nobody.produce(on_log("orders-new", support::produce("x"))).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    assert_eq!(denied.message(), "nobody not permitted to admin to orders-new");
    let body = Some(r#"{"record":{"value":"aGk="}}"#);
    let post = pki.https(agent.http(), Some("nobody"), "POST", "/logs/orders-new/records", body).unwrap();
    assert_eq!(post.0, 403, "{post:?}");
    let mut root = pki.grpc(agent.rpc, "root");
    root.produce(on_log("orders-new", support::produce("x"))).await.unwrap();
    let offset =
        nobody.produce(on_log("orders-new", support::produce("y"))).await.unwrap().into_inner().offset;
    assert_eq!(offset, 1, "created, it takes nobody's produces");
    assert!(agent.terminate().await.success());
}
