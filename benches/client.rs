//! Client benchmark (issue #10): what the leader-aware client costs and gains
//! against calling one server directly, on a real three-agent cluster, in the
//! same run; then how soon its produces land again after the leader is killed.
//!
//! ```text
//! cargo bench --bench client              # 6 repetitions (cargo xtask bench client)
//! cargo bench --bench client -- --quick   # 2 repetitions of 10k records
//! ```
//!
//! Progress goes to stderr; stdout gets Markdown for BENCHMARKS.md. Run without
//! `--bench` (as `cargo test --all-targets` does) it is only a smoke run.
//!
//! **Setup.** Three `proglog-agent` processes (the release build), plaintext on
//! 127.0.0.1, `--fsync never`, default Raft timings, forming a cluster by
//! gossip; data dirs under `PROGLOG_BENCH_DIR` (default: `/dev/shm`, else the
//! system temp dir). What is measured is the client's CPU: a disk's writeback
//! stalls would swamp it (on this machine they made runs vary twofold). The clients run in this process on a two-worker tokio
//! runtime. Values are 1 KiB.
//!
//! **Produce** (per repetition, interleaved, the first target alternating): 4
//! produce streams with the same records each, all over one HTTP/2 connection
//! to the leader:
//! - *direct*: raw `log.v1` ProduceStream calls to the leader, up to 1024
//!   requests in flight each (the client's window);
//! - *client*: `Client::produce_stream` through a `proglog://` address.
//!
//! **Consume** (per repetition, interleaved): 2 readers each read the first N
//! records with ConsumeStream:
//! - *one server*: both on the same follower, raw;
//! - *client*: two `Client::subscribe` subscriptions, which the picker spreads
//!   over the two followers.
//!
//! **Failover**: a client produce stream sends a value every millisecond; the
//! leader is killed (SIGKILL). Measured from the kill: when a survivor first
//! reports a new leader (GetServers polled every 10 ms), and when the stream's
//! first value after the kill is acknowledged.
//!
//! Targets (issue #10): client produce ≥ 0.95× direct (overhead ≤ 5 %);
//! produces acknowledged within 2 s of the new leader's election.

#![allow(clippy::unwrap_used)] // a benchmark fails loudly

#[path = "../crates/proglog-log/benches/support/mod.rs"]
mod bench_support;
#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use bench_support::{Invocation, rate, stats};
use bytes::Bytes;
use proglog_api::v1::log_client::LogClient;
use proglog_api::v1::{ConsumeRequest, GetServersRequest, ProduceRequest, Record};
use proglog_client::{Call, Client, Options};
use support::Agent;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const VALUE_BYTES: usize = 1024;
const PRODUCERS: usize = 4;
const READERS: usize = 2;
const WINDOW: usize = 1024;

struct Mode {
    name: &'static str,
    repetitions: usize,
    /// Records per produce target and repetition (split over the producers).
    records: usize,
}

fn mode() -> Mode {
    match bench_support::Invocation::from_args() {
        Invocation { bench: false, .. } => Mode { name: "smoke", repetitions: 1, records: 2_000 },
        Invocation { quick: true, .. } => Mode { name: "quick", repetitions: 2, records: 10_000 },
        Invocation { quick: false, .. } => Mode { name: "full", repetitions: 6, records: 50_000 },
    }
}

fn main() {
    let mode = mode();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(run(&mode));
}

fn start(data: &Path, name: &str, seed: Option<&Agent>) -> Agent {
    let seed = seed.map(|seed| seed.gossip.to_string());
    let mut args = vec!["--node-name", name, "--fsync", "never"];
    if let Some(seed) = &seed {
        args.extend(["--start-join-addrs", seed.as_str()]);
    }
    Agent::start(&data.join(name), &args)
}

fn values() -> Vec<Bytes> {
    (0..256u32).map(|i| Bytes::from(vec![i as u8; VALUE_BYTES])).collect()
}

async fn channel(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

async fn produce_direct(leader: &Channel, per_producer: usize, pool: &[Bytes]) -> f64 {
    let started = Instant::now();
    let mut producers = Vec::new();
    for _ in 0..PRODUCERS {
        let mut client = LogClient::new(leader.clone());
        let pool = pool.to_vec();
        producers.push(tokio::spawn(async move {
            let (tx, rx) = mpsc::channel(WINDOW);
            let requests = ReceiverStream::new(rx);
            let mut responses = client.produce_stream(requests).await.unwrap().into_inner();
            let (mut sent, mut answered, mut last) = (0, 0, None);
            // Up to WINDOW requests in flight: the channel's capacity.
            while answered < per_producer {
                while sent < per_producer && sent - answered < WINDOW {
                    let value = pool[sent % pool.len()].clone();
                    let request = ProduceRequest {
                        record: Some(Record { value, ..Record::default() }),
                        ..Default::default()
                    };
                    tx.send(request).await.unwrap();
                    sent += 1;
                }
                let offset = responses.message().await.unwrap().unwrap().offset;
                assert!(last.is_none_or(|last| offset > last), "offsets increase");
                last = Some(offset);
                answered += 1;
            }
        }));
    }
    for producer in producers {
        producer.await.unwrap();
    }
    rate((PRODUCERS * per_producer) as u64, started.elapsed())
}

async fn produce_client(client: &Client, per_producer: usize, pool: &[Bytes]) -> f64 {
    let started = Instant::now();
    let mut producers = Vec::new();
    for _ in 0..PRODUCERS {
        let values: Vec<Bytes> = (0..per_producer).map(|i| pool[i % pool.len()].clone()).collect();
        let client = client.clone();
        producers.push(tokio::spawn(async move {
            let mut stream = client.produce_stream(tokio_stream::iter(values));
            let mut answered = 0;
            while let Some(result) = stream.next().await {
                result.unwrap();
                answered += 1;
            }
            assert_eq!(answered, per_producer);
        }));
    }
    for producer in producers {
        producer.await.unwrap();
    }
    rate((PRODUCERS * per_producer) as u64, started.elapsed())
}

async fn consume_one_server(follower: &Channel, records: u64) -> f64 {
    let started = Instant::now();
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let mut client = LogClient::new(follower.clone()).max_decoding_message_size(usize::MAX);
        readers.push(tokio::spawn(async move {
            let mut stream = client
                .consume_stream(ConsumeRequest { offset: 0, ..Default::default() })
                .await
                .unwrap()
                .into_inner();
            for offset in 0..records {
                assert_eq!(stream.message().await.unwrap().unwrap().record.unwrap().offset, offset);
            }
        }));
    }
    for reader in readers {
        reader.await.unwrap();
    }
    rate(READERS as u64 * records, started.elapsed())
}

async fn consume_client(client: &Client, records: u64) -> (f64, Vec<String>) {
    let started = Instant::now();
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let mut subscription = client.subscribe(0);
        readers.push(tokio::spawn(async move {
            for offset in 0..records {
                assert_eq!(subscription.next().await.unwrap().offset, offset);
            }
            subscription.server().unwrap_or_default().to_owned()
        }));
    }
    let mut servers = Vec::new();
    for reader in readers {
        servers.push(reader.await.unwrap());
    }
    (rate(READERS as u64 * records, started.elapsed()), servers)
}

/// Kills the leader under a trickling client produce stream; returns (kill →
/// new leader seen, kill → first acknowledgement after the kill, values of
/// unknown outcome).
async fn failover(agents: &mut Vec<Agent>, client: &Client) -> (Duration, Duration, usize) {
    let leader = client.address_for(Call::Produce).unwrap();
    // When each value was handed to the stream; results come back in order.
    let sent_at = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
    let (tx, rx) = mpsc::channel(16);
    let times = std::sync::Arc::clone(&sent_at);
    let feeder = tokio::spawn(async move {
        loop {
            times.lock().unwrap().push_back(Instant::now());
            if tx.send(Bytes::from_static(b"failover")).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let mut stream = client.produce_stream(ReceiverStream::new(rx));
    let sent = || sent_at.lock().unwrap().pop_front().unwrap();
    for _ in 0..200 {
        stream.next().await.unwrap().unwrap();
        sent();
    }
    let survivors: Vec<String> = agents
        .iter()
        .filter(|agent| agent.rpc.to_string() != leader)
        .map(|agent| agent.rpc.to_string())
        .collect();
    let killed = Instant::now();
    Agent::kill_serving(agents, &leader);
    let watcher = tokio::spawn(async move {
        loop {
            for survivor in &survivors {
                let Ok(channel) = Channel::from_shared(format!("http://{survivor}")).unwrap().connect().await
                else {
                    continue;
                };
                let answer = LogClient::new(channel).get_servers(GetServersRequest {}).await;
                let servers = answer.map(|response| response.into_inner().servers).unwrap_or_default();
                if servers.iter().any(|server| server.is_leader && server.rpc_addr != leader) {
                    return killed.elapsed();
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    // The first value sent after the kill that is acknowledged: the new leader has it.
    let mut unknown = 0;
    let acknowledged = loop {
        let result = stream.next().await.unwrap();
        match result {
            Ok(_) if sent() > killed => break killed.elapsed(),
            Ok(_) => {}
            Err(proglog_client::Error::OutcomeUnknown { .. }) => {
                sent();
                unknown += 1;
            }
            Err(other) => panic!("{other}"),
        }
    };
    let elected = watcher.await.unwrap();
    feeder.abort();
    (elected, acknowledged, unknown)
}

/// `median (min–max)` of `figures`, two decimals.
fn spread(figures: &[f64]) -> String {
    let (median, min, max) = stats(figures);
    if figures.len() == 1 { format!("{median:.2}") } else { format!("{median:.2} ({min:.2}–{max:.2})") }
}

async fn run(mode: &Mode) {
    // In memory by default: what is measured is the client's CPU, not the disk.
    let shm = Path::new("/dev/shm");
    let default = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
    let base = std::env::var_os("PROGLOG_BENCH_DIR").map_or(default, Into::into);
    let data = tempfile::tempdir_in(base).unwrap();
    eprintln!("starting three agents in {}", data.path().display());
    let first = start(data.path(), "node-0", None);
    let second = start(data.path(), "node-1", Some(&first));
    let third = start(data.path(), "node-2", Some(&first));
    first.wait_for_voters(3, Duration::from_secs(60));
    let mut agents = vec![first, second, third];
    let seeds: Vec<String> = agents.iter().map(|agent| agent.rpc.to_string()).collect();
    let client =
        Client::connect(&format!("proglog://{}", seeds.join(",")), Options::default()).await.unwrap();
    let leader_addr = client.address_for(Call::Produce).unwrap();
    let follower_addr = seeds.iter().find(|addr| **addr != leader_addr).unwrap().clone();
    let (leader, follower) = (channel(&leader_addr).await, channel(&follower_addr).await);
    let pool = values();
    let per_producer = mode.records / PRODUCERS;
    let readable = mode.records as u64;

    let (mut direct, mut through, mut one, mut spread_over) = (vec![], vec![], vec![], vec![]);
    for repetition in 1..=mode.repetitions {
        eprintln!("repetition {repetition}/{}: produce", mode.repetitions);
        // Which target goes first alternates: the disk slows down as the logs grow.
        if repetition % 2 == 1 {
            direct.push(produce_direct(&leader, per_producer, &pool).await);
            through.push(produce_client(&client, per_producer, &pool).await);
        } else {
            through.push(produce_client(&client, per_producer, &pool).await);
            direct.push(produce_direct(&leader, per_producer, &pool).await);
        }
        // Every follower has what is read before the clock starts.
        while client.offsets().await.unwrap().next < readable {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        eprintln!("repetition {repetition}/{}: consume", mode.repetitions);
        one.push(consume_one_server(&follower, readable).await);
        let (rate, servers) = consume_client(&client, readable).await;
        assert_ne!(servers[0], servers[1], "the subscriptions read from both followers");
        assert!(!servers.contains(&leader_addr), "the subscriptions read from followers");
        spread_over.push(rate);
    }
    eprintln!("failover");
    let (elected, acknowledged, unknown) = failover(&mut agents, &client).await;

    let ratio = |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(a, b)| a / b).collect() };
    let thousands = |figures: &[f64]| -> Vec<f64> { figures.iter().map(|figure| figure / 1000.0).collect() };
    let produce_ratio = ratio(&through, &direct);
    let after_election = acknowledged.saturating_sub(elected);
    println!("## Client ({} mode)", mode.name);
    println!();
    if mode.name == "smoke" {
        println!("Smoke run only (possibly a debug build): the figures mean nothing.");
        println!();
    }
    println!(
        "3 agents, {} × 1 KiB records per produce target, {} repetition(s); figures: median (min–max).",
        mode.records, mode.repetitions
    );
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    println!("| produce direct to the leader, k rec/s | {} |", spread(&thousands(&direct)));
    println!("| produce through the client, k rec/s | {} |", spread(&thousands(&through)));
    println!("| **client / direct** (target ≥ 0.95) | {} |", spread(&produce_ratio));
    println!("| consume, 2 readers on one follower, k rec/s | {} |", spread(&thousands(&one)));
    println!(
        "| consume, 2 client subscriptions over 2 followers, k rec/s | {} |",
        spread(&thousands(&spread_over))
    );
    println!("| **client spread / one server** | {} |", spread(&ratio(&spread_over, &one)));
    println!("| failover: kill → new leader seen | {} ms |", elected.as_millis());
    println!("| failover: kill → first produce acknowledged | {} ms |", acknowledged.as_millis());
    println!(
        "| **failover: new leader → first produce acknowledged** (target ≤ 2000 ms) | {} ms ({unknown} of unknown outcome) |",
        after_election.as_millis()
    );
    println!();
    for agent in agents {
        assert!(agent.terminate().await.success());
    }
}
