//! The leader-aware client against real agents (issue #10): through a
//! `proglog://` address, produces land on the leader and consumes are spread
//! over the followers — checked on the servers' own metrics, not by trusting
//! the picker.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::time::Duration;

use proglog_client::{Client, Options};
use support::{Agent, http};

const DEADLINE: Duration = Duration::from_secs(60);

fn start(data: &std::path::Path, name: &str, seed: Option<&Agent>) -> Agent {
    let seed = seed.map(|seed| seed.gossip.to_string());
    let mut args =
        vec!["--node-name", name, "--raft-heartbeat-interval", "50ms", "--raft-election-timeout", "500ms"];
    if let Some(seed) = &seed {
        args.extend(["--start-join-addrs", seed.as_str()]);
    }
    Agent::start(&data.join(name), &args)
}

/// Three agents voting together, and a client seeded with all of them.
async fn cluster(data: &std::path::Path) -> (Vec<Agent>, Client) {
    let first = start(data, "node-0", None);
    let second = start(data, "node-1", Some(&first));
    let third = start(data, "node-2", Some(&first));
    first.wait_for_voters(3, DEADLINE);
    let agents = vec![first, second, third];
    let seeds: Vec<String> = agents.iter().map(|agent| agent.rpc.to_string()).collect();
    let client =
        Client::connect(&format!("proglog://{}", seeds.join(",")), Options::default()).await.unwrap();
    (agents, client)
}

/// `proglog_rpc_requests_total{method=..,code="OK"}` on `agent`.
fn calls(agent: &Agent, method: &str) -> u64 {
    let (_, metrics) = http(agent.http(), "GET", "/metrics", None);
    let prefix = format!("proglog_rpc_requests_total{{method=\"{method}\",code=\"OK\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |count| count.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produces_go_to_the_leader_and_consumes_to_the_followers() {
    let data = tempfile::tempdir().unwrap();
    let first = start(data.path(), "node-0", None);
    let second = start(data.path(), "node-1", Some(&first));
    let third = start(data.path(), "node-2", Some(&first));
    first.wait_for_voters(3, DEADLINE);
    let agents = [&first, &second, &third];

    // Seeded with a follower: the client still finds the leader.
    let client = Client::connect(&format!("proglog://{}", third.rpc), Options::default()).await.unwrap();
    let servers = client.servers().await.unwrap();
    let leader = servers.iter().find(|s| s.is_leader).unwrap().rpc_addr.clone();
    for i in 0..10 {
        assert_eq!(client.produce(format!("record {i}")).await.unwrap(), i);
    }
    for i in 0..10 {
        assert_eq!(client.consume(i).await.unwrap().value, format!("record {i}").as_bytes());
    }
    for agent in agents {
        let (produces, consumes) = (calls(agent, "Produce"), calls(agent, "Consume"));
        if agent.rpc.to_string() == leader {
            assert_eq!((produces, consumes), (10, 0), "the leader");
        } else {
            assert_eq!((produces, consumes), (0, 5), "a follower, every other consume");
        }
    }
    for agent in [first, second, third] {
        assert!(agent.terminate().await.success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produces_continue_on_the_new_leader_when_the_leader_dies() {
    let data = tempfile::tempdir().unwrap();
    let (mut agents, client) = cluster(data.path()).await;

    let mut acked = Vec::new();
    let mut unknown = Vec::new();
    for i in 0..40 {
        if i == 20 {
            // kill -9 the leader between two produces: the caller does nothing.
            let servers = client.servers().await.unwrap();
            let leader = servers.iter().find(|s| s.is_leader).unwrap().rpc_addr.clone();
            Agent::kill_serving(&mut agents, &leader);
        }
        let value = format!("record {i}");
        match client.produce(value.clone()).await {
            Ok(offset) => acked.push((offset, value)),
            Err(error) => unknown.push(error.to_string()),
        }
    }
    // At most the produce racing the kill may end with an unknown outcome.
    assert!(unknown.len() <= 1, "{unknown:?}");
    assert!(acked.len() >= 39);
    for (offset, value) in &acked {
        assert_eq!(client.consume(*offset).await.unwrap().value, value.as_bytes(), "offset {offset}");
    }
    for agent in agents {
        assert!(agent.terminate().await.success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_produce_stream_goes_on_on_the_new_leader_when_the_leader_dies() {
    let data = tempfile::tempdir().unwrap();
    let (mut agents, client) = cluster(data.path()).await;
    let seeds: Vec<String> = agents.iter().map(|agent| agent.rpc.to_string()).collect();
    let leader = client.address_for(proglog_client::Call::Produce).unwrap();

    // Values trickle in; the caller only reads results.
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let feeder = tokio::spawn(async move {
        for i in 0..400 {
            tx.send(format!("record {i}")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let mut stream = client.produce_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut results = Vec::new();
    while let Some(result) = stream.next().await {
        results.push(result);
        if results.len() == 100 {
            Agent::kill_serving(&mut agents, &leader);
        }
    }
    feeder.await.unwrap();

    // Exactly once (the default): what was in flight when the leader died was
    // sent again, as the same sequences of the stream's producer, and stored once.
    assert_eq!(results.len(), 400, "one result per value");
    for (i, result) in results.iter().enumerate() {
        let offset = result.as_ref().unwrap_or_else(|error| panic!("value {i}: {error}"));
        let record = client.consume(*offset).await.unwrap();
        assert_eq!(record.value, format!("record {i}").as_bytes(), "offset {offset}");
    }
    let end = client.offsets().await.unwrap().next;
    let mut stored = std::collections::HashMap::new();
    for offset in 0..end {
        let value = client.consume(offset).await.unwrap().value;
        *stored.entry(value).or_insert(0) += 1;
    }
    assert!(stored.values().all(|count| *count == 1), "a value stored twice");
    assert_eq!(stored.len(), 400);
    assert_ne!(client.address_for(proglog_client::Call::Produce).unwrap(), leader);

    // The CLI does the same with only a proglog:// address.
    let addr = format!("proglog://{}", seeds.join(","));
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_proglog"))
            .args(["--addr", &addr])
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let offset: u64 = cli(&["produce", "after the failover"]).trim().parse().unwrap();
    let printed = cli(&["consume", "--offset", &offset.to_string()]);
    assert_eq!(printed, "after the failover\n");
    assert_eq!(cli(&["consume"]).lines().count() as u64, offset + 1, "from the lowest offset to the end");
    for agent in agents {
        assert!(agent.terminate().await.success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_survives_the_loss_of_its_server() {
    let data = tempfile::tempdir().unwrap();
    let (mut agents, client) = cluster(data.path()).await;
    for i in 0..10 {
        client.produce(format!("record {i}")).await.unwrap();
    }
    let mut subscription = client.subscribe(0);
    let mut delivered = Vec::new();
    for _ in 0..5 {
        delivered.push(subscription.next().await.unwrap().offset);
    }
    // The server it reads from dies (a follower: consumes go there).
    let serving = subscription.server().unwrap().to_owned();
    Agent::kill_serving(&mut agents, &serving);
    for i in 10..15 {
        client.produce(format!("record {i}")).await.unwrap();
    }
    for _ in 5..15 {
        let record = subscription.next().await.unwrap();
        assert_eq!(record.value, format!("record {}", record.offset).as_bytes());
        delivered.push(record.offset);
    }
    assert_eq!(delivered, (0..15).collect::<Vec<u64>>(), "no gap, no duplicate");
    assert_ne!(subscription.server(), Some(serving.as_str()));
    for agent in agents {
        assert!(agent.terminate().await.success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_log_goes_on_through_its_leader_s_kill_and_comes_back_new_after_a_delete() {
    let data = tempfile::tempdir().unwrap();
    let (mut agents, client) = cluster(data.path()).await;
    client.create_log("orders", proglog_client::LogOptions::default()).await.unwrap();
    let orders = client.log("orders").unwrap();
    let mut stored = Vec::new();
    for i in 0..40 {
        if i == 20 {
            // kill -9 the named log's own leader (which may not lead the
            // default log): its client carries on, each record stored once.
            let leader = orders.servers().await.unwrap().into_iter().find(|s| s.is_leader).unwrap().rpc_addr;
            Agent::kill_serving(&mut agents, &leader);
        }
        stored.push((orders.produce(format!("o-{i}")).await.unwrap(), format!("o-{i}")));
    }
    let offsets: Vec<u64> = stored.iter().map(|(offset, _)| *offset).collect();
    assert_eq!(offsets, (0..40).collect::<Vec<_>>(), "each record once, in order");
    for (offset, value) in &stored {
        assert_eq!(orders.consume_linearizable(*offset).await.unwrap().value, value.as_bytes());
    }
    assert_eq!(client.offsets().await.unwrap().next, 0, "the default log holds none of them");
    // Deleted and created again: another log, from offset 0, holding nothing old.
    client.delete_log("orders").await.unwrap();
    client.create_log("orders", proglog_client::LogOptions::default()).await.unwrap();
    let again = client.log("orders").unwrap();
    let deadline = std::time::Instant::now() + DEADLINE;
    let offset = loop {
        match again.produce("new").await {
            Ok(offset) => break offset,
            Err(error) => assert!(std::time::Instant::now() < deadline, "{error}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(offset, 0);
    assert_eq!(again.offsets().await.unwrap().next, 1);
    for agent in agents {
        assert!(agent.terminate().await.success());
    }
}
