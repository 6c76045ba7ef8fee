//! Gossip on loopback: the book's membership test (three members see each other
//! join and one leave, by name), plus failure detection and forged datagrams.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::BTreeSet;
use std::time::Duration;

use proglog_discovery::{Config, Discovery, Event};
use tokio::sync::mpsc;

const DEADLINE: Duration = Duration::from_secs(30);
const KEY: &[u8] = b"a shared secret for the test cluster";

async fn start(name: &str, seeds: &[&Discovery], key: &[u8]) -> (Discovery, mpsc::Receiver<Event>) {
    start_in(CLUSTER, name, seeds, key).await
}

const CLUSTER: u128 = 0x1234;

/// A member of cluster `cluster_id` (0: none yet); its member id derives from its name.
async fn start_in(
    cluster_id: u128,
    name: &str,
    seeds: &[&Discovery],
    key: &[u8],
) -> (Discovery, mpsc::Receiver<Event>) {
    let config = Config {
        name: name.to_owned(),
        member_id: member_id(name),
        cluster_id,
        bind_addr: "127.0.0.1:0".parse().unwrap(),
        rpc_addr: format!("{name}.rpc:8400"),
        start_join_addrs: seeds.iter().map(|seed| seed.local_addr().to_string()).collect(),
        advertise_addr: None,
        key: Some(key.to_vec()),
        logger: slog::Logger::root(slog::Discard, slog::o!()),
    };
    Discovery::start(config).await.unwrap()
}

fn member_id(name: &str) -> u64 {
    name.bytes().fold(7, |id, byte| id * 31 + u64::from(byte))
}

/// Waits for events until `done` says the collected ones are enough.
async fn collect(events: &mut mpsc::Receiver<Event>, seen: &mut Vec<Event>, done: impl Fn(&[Event]) -> bool) {
    tokio::time::timeout(DEADLINE, async {
        while !done(seen) {
            seen.push(events.recv().await.unwrap());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("events so far: {seen:?}"));
}

fn joined(events: &[Event]) -> BTreeSet<String> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::Joined(node) => Some(node.name.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_see_joins_a_leave_by_name_and_a_failure() {
    let (first, mut first_events) = start("node-0", &[], KEY).await;
    let (second, _second_events) = start("node-1", &[&first], KEY).await;
    let (third, _third_events) = start("node-2", &[&first], KEY).await;
    let mut seen = Vec::new();
    collect(&mut first_events, &mut seen, |seen| joined(seen).len() == 2).await;
    assert_eq!(joined(&seen), BTreeSet::from(["node-1".to_owned(), "node-2".to_owned()]));
    assert!(seen.iter().any(|event| matches!(event, Event::Joined(node)
        if node.name == "node-1" && node.rpc_addr == "node-1.rpc:8400" && node.member_id == member_id("node-1")
            && node.cluster_id == CLUSTER)));

    // A graceful leave is told apart from a failure.
    second.leave().await;
    collect(&mut first_events, &mut seen, |seen| seen.iter().any(|e| matches!(e, Event::Left { .. }))).await;
    assert!(
        seen.contains(&Event::Left { name: "node-1".into(), member_id: member_id("node-1") }),
        "{seen:?}"
    );
    drop(third); // stops answering without a word
    collect(&mut first_events, &mut seen, |seen| seen.iter().any(|e| matches!(e, Event::Failed { .. })))
        .await;
    assert!(
        seen.contains(&Event::Failed { name: "node-2".into(), member_id: member_id("node-2") }),
        "{seen:?}"
    );
    assert!(first.members().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_without_the_key_change_nothing() {
    let (first, mut first_events) = start("node-0", &[], KEY).await;
    // A node with another key cannot join...
    let (intruder, _intruder_events) = start("intruder", &[&first], b"not the key").await;
    // ...nor can raw datagrams, replayed or forged.
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for datagram in [&b"\x50\x00garbage"[..], &[0u8; 1400][..], b""] {
        socket.send_to(datagram, first.local_addr()).await.unwrap();
    }
    let (member, _member_events) = start("node-1", &[&first], KEY).await;
    let mut seen = Vec::new();
    collect(&mut first_events, &mut seen, |seen| !joined(seen).is_empty()).await;
    tokio::time::timeout(DEADLINE, async {
        while first.rejected() < 4 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(joined(&seen), BTreeSet::from(["node-1".to_owned()]), "{seen:?}");
    let names: BTreeSet<String> = first.members().into_iter().map(|node| node.name).collect();
    assert_eq!(names, BTreeSet::from(["node-1".to_owned()]));
    drop((intruder, member));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_cluster_is_refused_and_a_new_node_is_not() {
    let (first, mut first_events) = start("node-0", &[], KEY).await;
    // Another cluster's node, with the key, joining through ours: refused.
    let (foreign, mut foreign_events) = start_in(0x9999, "node-9", &[&first], KEY).await;
    // A new node (no cluster yet) joins.
    let (fresh, _fresh_events) = start_in(0, "node-1", &[&first], KEY).await;
    let mut seen = Vec::new();
    collect(&mut first_events, &mut seen, |seen| !joined(seen).is_empty()).await;
    tokio::time::timeout(DEADLINE, async {
        while first.foreign() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(joined(&seen), BTreeSet::from(["node-1".to_owned()]), "{seen:?}");
    assert!(first.members().iter().all(|node| node.name != "node-9"));
    // Neither side learned of the other.
    assert!(foreign_events.try_recv().is_err());
    drop((foreign, fresh));
}
