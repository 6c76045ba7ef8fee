//! Tracing benchmark (issue #16): what tracing every request costs the agent
//! users run, against the same agent with tracing off, in the same run.
//!
//! ```text
//! cargo bench --bench traces              # 3 repetitions (cargo xtask bench traces)
//! cargo bench --bench traces -- --quick   # 1 repetition, shorter runs
//! ```
//!
//! Progress goes to stderr; stdout gets Markdown for BENCHMARKS.md. Run without
//! `--bench` (as `cargo test --all-targets` does) it is only a smoke run.
//!
//! **Setup.** One `proglog-agent` process (the release build) per run, with its
//! defaults (`--fsync always`, a one-member cluster), plaintext on 127.0.0.1, its
//! data dir under `PROGLOG_BENCH_DIR` (default: the system temp dir). Two
//! configurations, interleaved per repetition (the first alternating):
//! - *off*: no `--otlp-endpoint` (what runs by default);
//! - *traced*: `--otlp-endpoint` at a collector in this process (an OTLP/gRPC
//!   server that counts and discards what it receives) and
//!   `--trace-sample-ratio 1`: every call is traced, with its commit and fsync spans.
//!
//! The clients run in this process on a two-worker tokio runtime, speaking raw
//! `log.v1` (no trace context of their own: the ratio decides). Values are 1 KiB.
//! Workloads per run: unary Produce with 1 producer and with 8 (sequential calls
//! for a fixed time; records/s and latency p50/p99), and ProduceStream with 8
//! producers (up to 256 requests in flight each).
//!
//! Goal (issue #16): traced ≥ 0.90× off on unary produce, ≥ 0.97× on streams.

#![allow(clippy::unwrap_used)] // a benchmark fails loudly

#[path = "../crates/proglog-log/benches/support/mod.rs"]
mod bench_support;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use bench_support::{Invocation, human, rate, stats};
use bytes::Bytes;
use proglog_api::v1::log_client::LogClient;
use proglog_api::v1::{ProduceRequest, Record};
use support::Agent;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const VALUE_BYTES: usize = 1024;
const WINDOW: usize = 256;

struct Mode {
    name: &'static str,
    repetitions: usize,
    unary: Duration,
    stream_records: usize,
}

fn mode() -> Mode {
    match Invocation::from_args() {
        Invocation { bench: false, .. } => {
            Mode { name: "smoke", repetitions: 1, unary: Duration::from_millis(200), stream_records: 2_000 }
        }
        Invocation { quick: true, .. } => {
            Mode { name: "quick", repetitions: 1, unary: Duration::from_secs(1), stream_records: 40_000 }
        }
        Invocation { quick: false, .. } => {
            Mode { name: "full", repetitions: 3, unary: Duration::from_secs(3), stream_records: 160_000 }
        }
    }
}

/// One run's figures: unary ×1 (rate, p50 µs, p99 µs), unary ×8 rate, stream ×8 rate.
#[derive(Clone, Copy, Debug, Default)]
struct Figures {
    unary1: f64,
    p50_us: f64,
    p99_us: f64,
    unary8: f64,
    stream8: f64,
}

fn value() -> Bytes {
    Bytes::from(vec![7u8; VALUE_BYTES])
}

fn request() -> ProduceRequest {
    ProduceRequest { record: Some(Record { value: value(), ..Record::default() }), ..Default::default() }
}

/// `producers` sequential unary producers for `duration`: records/s and every
/// call's latency in µs.
async fn unary(channels: &[Channel], producers: usize, duration: Duration) -> (f64, Vec<f64>) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..producers {
        let mut client = LogClient::new(channels[i % channels.len()].clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while started.elapsed() < duration {
                let call = Instant::now();
                client.produce(request()).await.unwrap();
                latencies.push(call.elapsed().as_secs_f64() * 1e6);
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    (rate(latencies.len() as u64, started.elapsed()), latencies)
}

async fn stream(channels: &[Channel], producers: usize, records: usize) -> f64 {
    let per_producer = records / producers;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..producers {
        let mut client = LogClient::new(channels[i % channels.len()].clone());
        tasks.push(tokio::spawn(async move {
            let (tx, rx) = mpsc::channel(WINDOW);
            let mut responses = client.produce_stream(ReceiverStream::new(rx)).await.unwrap().into_inner();
            let (mut sent, mut answered) = (0, 0);
            while answered < per_producer {
                while sent < per_producer && sent - answered < WINDOW {
                    tx.send(request()).await.unwrap();
                    sent += 1;
                }
                responses.message().await.unwrap().unwrap();
                answered += 1;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    rate((per_producer * producers) as u64, started.elapsed())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

async fn run_once(mode: &Mode, data: &std::path::Path, collector: Option<std::net::SocketAddr>) -> Figures {
    let endpoint = collector.map(|addr| format!("http://{addr}"));
    let mut args = Vec::new();
    if let Some(endpoint) = &endpoint {
        args.extend(["--otlp-endpoint", endpoint.as_str(), "--trace-sample-ratio", "1"]);
    }
    let agent = Agent::start(data, &args);
    let addr = format!("http://{}", agent.rpc);
    let mut channels = Vec::new();
    for _ in 0..8 {
        channels.push(Channel::from_shared(addr.clone()).unwrap().connect().await.unwrap());
    }
    let (unary1, mut latencies) = unary(&channels[..1], 1, mode.unary).await;
    latencies.sort_by(f64::total_cmp);
    let (unary8, _) = unary(&channels, 8, mode.unary).await;
    let stream8 = stream(&channels, 8, mode.stream_records).await;
    assert!(agent.terminate().await.success());
    Figures {
        unary1,
        p50_us: percentile(&latencies, 0.5),
        p99_us: percentile(&latencies, 0.99),
        unary8,
        stream8,
    }
}

async fn run(mode: &Mode) {
    let (sink, collector) = support::otlp::Collector::start(false).await;
    let base = std::env::var_os("PROGLOG_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let mut off = Vec::new();
    let mut traced = Vec::new();
    for rep in 0..mode.repetitions {
        let dir = bench_support::tempdir_in(&base, "proglog-bench-traces").unwrap();
        let order = if rep % 2 == 0 { [false, true] } else { [true, false] };
        for tracing in order {
            let data = dir.path().join(if tracing { "traced" } else { "off" });
            let figures = run_once(mode, &data, tracing.then_some(collector)).await;
            eprintln!(
                "[{} rep {}/{}] {:<6} unary×1 {} (p50 {:.0} µs, p99 {:.0} µs), unary×8 {}, stream×8 {}",
                mode.name,
                rep + 1,
                mode.repetitions,
                if tracing { "traced" } else { "off" },
                human(figures.unary1),
                figures.p50_us,
                figures.p99_us,
                human(figures.unary8),
                human(figures.stream8)
            );
            if tracing { traced.push(figures) } else { off.push(figures) }
        }
    }
    let spans = sink.count();
    let median =
        |figures: &[Figures], f: fn(&Figures) -> f64| stats(&figures.iter().map(f).collect::<Vec<_>>()).0;
    println!("| workload | off | traced (ratio 1.0) | traced/off | goal |");
    println!("|---|---:|---:|---:|---|");
    /// A row: its name, the figure it shows, and whether higher is better.
    type Column = fn(&Figures) -> f64;
    let rows: [(&str, Column, bool, &str); 5] = [
        ("unary Produce ×1 (rec/s)", |f| f.unary1, true, "≥ 0.90"),
        ("unary Produce ×8 (rec/s)", |f| f.unary8, true, "≥ 0.90"),
        ("ProduceStream ×8 (rec/s)", |f| f.stream8, true, "≥ 0.97"),
        ("unary ×1 p50 (µs)", |f| f.p50_us, false, "info"),
        ("unary ×1 p99 (µs)", |f| f.p99_us, false, "info"),
    ];
    for (name, f, rate, goal) in rows {
        let (a, b) = (median(&off, f), median(&traced, f));
        let shown = |value: f64| if rate { human(value) } else { format!("{value:.0}") };
        let unit = if rate { "×" } else { "× the time" };
        println!("| {name} | {} | {} | {:.2}{unit} | {goal} |", shown(a), shown(b), b / a);
    }
    println!();
    println!(
        "{} repetitions ({}), medians; the collector received {spans} spans from the traced runs.",
        mode.repetitions, mode.name
    );
}

fn main() {
    let mode = mode();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(run(&mode));
}
