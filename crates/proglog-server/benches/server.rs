//! gRPC benchmark: the `log.v1` service (`proglog_server::serve` over `LocalLog`)
//! against a *null* `log.v1` service with no storage, over loopback, in the same run.
//!
//! ```text
//! cargo bench -p proglog-server --bench server              # 3 repetitions (cargo xtask bench server)
//! cargo bench -p proglog-server --bench server -- --quick   # 1 repetition, shorter runs (smoke check)
//! ```
//!
//! Environment: `PROGLOG_BENCH_QUICK=1` (same as `--quick`), `PROGLOG_BENCH_RECORDS`
//! (records per ProduceStream and ConsumeStream run, default 200000 full / a tenth
//! of it quick), `PROGLOG_BENCH_SECONDS` (duration of each unary run, default 3 full
//! / 1 quick), `PROGLOG_BENCH_STREAM_SECONDS` (time cap of each ProduceStream run,
//! default 2 full / 1 quick), `PROGLOG_BENCH_SERVER_THREADS` and
//! `PROGLOG_BENCH_CLIENT_THREADS` (tokio worker threads of each runtime, default 2
//! and 2), `PROGLOG_BENCH_DIR` (where the temporary logs go,
//! default the system temp dir; it must not be tmpfs for the `always` figures to
//! mean anything).
//!
//! Progress goes to stderr; stdout gets a Markdown table for BENCHMARKS.md. Run
//! without `--bench` (as `cargo test --all-targets` does) it only does a tiny smoke
//! run.
//!
//! **Setup.** Server and clients live in this process on two separate tokio
//! multi-thread runtimes (`bench-server`, `bench-client`), so that client work is
//! never scheduled on the server's workers (the OS still shares the CPUs between
//! them, as on a one-box deployment with a local client). Two workers each: on
//! this 2-CPU machine the server may use every CPU, as a deployed server would.
//! Every client task is spawned onto the client runtime; the main thread only waits
//! for them (`block_on`) and starts and stops servers. Every server listens on its
//! own `127.0.0.1:0` listener, plaintext, `AllowAll`, `max_record_bytes` 1 MiB.
//! proglog is started as the agent starts it: `serve` on a bound `TcpListener`
//! (its own bounded accept loop, `TCP_NODELAY` on accepted sockets, the default
//! limits). Each client is a
//! separate tonic `Channel` (its own TCP connection, with `TCP_NODELAY` as tonic's
//! client sets it), connected before the clock starts.
//!
//! **Peer.** The *null* server implements the same generated `log_server::Log`
//! trait without any storage: `Produce` returns a counter, `ProduceStream` maps
//! each request to a counter (no task, no channel), `ConsumeStream` sends
//! pre-built values of the same size with increasing offsets, as fast as tonic
//! pulls them, until the client goes away; `Consume` and `GetServers` are trivial.
//! It is the transport ceiling: tonic, hyper, h2 and prost on this machine, driven
//! by the same client code. It accepts through tonic's `TcpIncoming` with
//! `TCP_NODELAY` (what a tonic server that binds its own address does by default)
//! and has no health, reflection or observe layer. It is started once per value
//! size and repetition, between the two proglog runs (`never`, null, `always`,
//! then the next repetition), and its figures are shown in both fsync rows.
//!
//! **Workloads**, per value size, fsync policy and repetition, each proglog run on
//! a fresh log in a fresh temp dir:
//!
//! 1. `unary Produce`: 1 and 8 producers (8 channels), each issuing sequential
//!    calls for a fixed duration; records/s and call latency p50/p99.
//! 2. `ProduceStream`: 1 and 8 producers, each with up to 256 requests in flight
//!    (a semaphore of 256 permits: the sender takes one per request, the response
//!    reader gives one back per response), until the run's records are acknowledged
//!    or the time cap has passed (then the senders stop and the streams drain);
//!    records/s = records acknowledged / time until the last response.
//! 3. `ConsumeStream` from offset 0 over the records written by (1) and (2): read
//!    the run's records (or as many as were acknowledged, if fewer), check every
//!    offset and size, then drop the stream (it follows the tail forever).
//!
//! Targets: unary ≥ 0.8× null with `never` (`always` is shown for information);
//! ProduceStream at 1 KiB ≥ 2× NATS JetStream's 144k rec/s with `never` and ≥ 1×
//! with `always`; ConsumeStream at 1 KiB ≥ 2× NATS's 203k rec/s. The NATS figures
//! are a reference measured on this machine earlier, not in this run.

mod common;
use common::null::start_null;
use common::support::{filesystem_of, human, mb_per_s, rate, spread, stats};
use common::{
    Destination, Invocation, WINDOW, base_dir_from_env, connect, env_parse, machine, percentiles_us,
    produce_stream, runtime, runtime_threads_from_env, start_local, unary, value_pool,
};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use proglog_api::v1::ConsumeRequest;
use proglog_raft::Fsync;
use tempfile::TempDir;
use tokio::runtime::Runtime;

const VALUE_SIZES: [usize; 2] = [256, 1024];
const PRODUCERS: [usize; 2] = [1, 8];
/// NATS JetStream on this machine, 1 KiB messages, measured earlier (not in this run).
const NATS_PUBLISH: f64 = 144_000.0;
const NATS_CONSUME: f64 = 203_000.0;
const FSYNCS: [Fsync; 2] = [Fsync::Never, Fsync::Always];

fn main() -> Result<()> {
    let settings = Settings::from_env()?;
    settings.print_header();
    let server_rt = runtime("bench-server", settings.server_threads)?;
    let client_rt = runtime("bench-client", settings.client_threads)?;
    let bench = Bench { settings: &settings, server_rt: &server_rt, client_rt: &client_rt };
    let started = Instant::now();
    let mut rows = Vec::new();
    for size in VALUE_SIZES {
        rows.extend(bench.size(size)?);
    }
    print_table(&rows);
    println!();
    println!(
        "\\* NATS JetStream reference figures (144k rec/s publish, 203k rec/s consume, 1 KiB \
         messages) were measured on this machine earlier, not in this run; they apply to the \
         1 KiB rows only. Null figures are measured once per value size and repetition and shown \
         in both fsync rows."
    );
    println!();
    println!("Total wall time {:.0} s.", started.elapsed().as_secs_f64());
    drop(client_rt);
    server_rt.shutdown_timeout(Duration::from_secs(5));
    Ok(())
}

// ---------------------------------------------------------------- settings

struct Settings {
    mode: &'static str,
    reps: usize,
    /// Records per ProduceStream run (split between the producers) and per ConsumeStream run.
    records: u64,
    /// Duration of each unary run.
    unary: Duration,
    /// Time cap of each ProduceStream run.
    stream_cap: Duration,
    server_threads: usize,
    client_threads: usize,
    base_dir: PathBuf,
}

impl Settings {
    fn from_env() -> Result<Self> {
        let Invocation { bench, quick } = Invocation::from_args();
        let records: u64 = env_parse("PROGLOG_BENCH_RECORDS")?.unwrap_or(200_000);
        let seconds: Option<f64> = env_parse("PROGLOG_BENCH_SECONDS")?;
        let stream_seconds: Option<f64> = env_parse("PROGLOG_BENCH_STREAM_SECONDS")?;
        let (server_threads, client_threads) = runtime_threads_from_env()?;
        let base_dir = base_dir_from_env()?;
        let secs = |value: Option<f64>, default: f64| Duration::from_secs_f64(value.unwrap_or(default));
        let (mode, reps, records, unary, stream_cap) = if !bench {
            // `cargo test --all-targets` runs benches without `--bench`: just check they work.
            ("smoke (no --bench)", 1, 1_000, Duration::from_millis(100), Duration::from_secs(10))
        } else if quick {
            ("quick", 1, (records / 10).max(WINDOW as u64), secs(seconds, 1.0), secs(stream_seconds, 1.0))
        } else {
            ("full", 3, records.max(WINDOW as u64), secs(seconds, 3.0), secs(stream_seconds, 2.0))
        };
        Ok(Self { mode, reps, records, unary, stream_cap, server_threads, client_threads, base_dir })
    }

    fn tempdir(&self) -> Result<TempDir> {
        common::support::tempdir_in(&self.base_dir, "proglog-server-bench-")
    }

    fn print_header(&self) {
        let fs = filesystem_of(&self.base_dir).unwrap_or_else(|| "unknown".to_string());
        common::print_title("proglog-server gRPC benchmark", self.mode);
        println!(
            "{} repetition(s), interleaved (proglog `never`, null, proglog `always`, ...); median \
             [min..max]; proglog/null is the ratio of the medians (range of the per-repetition \
             ratios). MB = 10^6 payload bytes. Machine: {}; logs in `{}` ({fs}). \
             Loopback 127.0.0.1, plaintext h2c, `AllowAll`, max-record-bytes 1 MiB. Server and \
             clients in one process on separate tokio runtimes: server {} worker(s) (+ proglog's \
             writer thread and tokio's blocking pool), client {} worker(s). Unary runs {:.1} s each; \
             ProduceStream {} records per run (split between the producers, window {WINDOW} per \
             producer) or {:.1} s, whichever comes first; ConsumeStream {} records from offset 0 \
             (fewer if fewer were written). proglog: `serve` on a bound listener (its bounded accept \
             loop, TCP_NODELAY, default limits); null: tonic's `TcpIncoming` with TCP_NODELAY.",
            self.reps,
            machine(),
            self.base_dir.display(),
            self.server_threads,
            self.client_threads,
            self.unary.as_secs_f64(),
            self.records,
            self.stream_cap.as_secs_f64(),
            self.records,
        );
        if fs.starts_with("tmpfs") {
            eprintln!("WARNING: {} is on tmpfs: fdatasync is free there", self.base_dir.display());
        }
        println!();
    }
}

// ---------------------------------------------------------------- helpers

fn fsync_name(fsync: Fsync) -> &'static str {
    match fsync {
        Fsync::Never => "never",
        Fsync::Always => "always",
    }
}

// ---------------------------------------------------------------- clients

/// A ConsumeStream from offset 0: reads `n` records, checking offsets and sizes.
async fn consume_stream(addr: SocketAddr, size: usize, n: u64) -> Result<Duration> {
    let mut client = connect(addr).await?;
    let start = Instant::now();
    let mut stream =
        client.consume_stream(ConsumeRequest { offset: 0, ..Default::default() }).await?.into_inner();
    for expected in 0..n {
        let record = stream.message().await?.context("the stream ended")?.record.context("no record")?;
        ensure!(
            record.offset == expected && record.value.len() == size,
            "read offset {} ({} bytes), expected {expected} ({size} bytes)",
            record.offset,
            record.value.len()
        );
    }
    let elapsed = start.elapsed();
    drop(stream);
    Ok(elapsed)
}

/// One measurement: rate, records, and call latency for unary runs.
#[derive(Clone, Copy)]
struct Figure {
    rate: f64,
    records: u64,
    p50_us: f64,
    p99_us: f64,
}

impl Figure {
    fn new(records: u64, elapsed: Duration) -> Self {
        Self { rate: rate(records, elapsed), records, p50_us: f64::NAN, p99_us: f64::NAN }
    }
}

/// The workloads of one server run, in `WORKLOADS` order.
const WORKLOADS: [(&str, usize); 5] = [
    ("unary Produce", 1),
    ("unary Produce", 8),
    ("ProduceStream", 1),
    ("ProduceStream", 8),
    ("ConsumeStream from 0", 1),
];

/// Runs every workload against the server at `addr`; returns the figures and the
/// number of records acknowledged.
fn suite(
    bench: &Bench<'_>,
    addr: SocketAddr,
    size: usize,
    pool: &Arc<Vec<Bytes>>,
) -> Result<(Vec<Figure>, u64)> {
    let settings = bench.settings;
    bench.client_rt.block_on(async {
        let mut figures = Vec::new();
        let mut acked = 0;
        for producers in PRODUCERS {
            let mut run = unary(addr, producers, Arc::clone(pool), settings.unary).await?;
            let (p50_us, p99_us) = percentiles_us(&mut run.latencies);
            figures.push(Figure { p50_us, p99_us, ..Figure::new(run.acked, run.elapsed) });
            acked += run.acked;
        }
        for producers in PRODUCERS {
            let run = produce_stream(
                Destination::default_log(addr, producers),
                Arc::clone(pool),
                settings.records,
                settings.stream_cap,
                false,
                false,
            )
            .await?;
            figures.push(Figure::new(run.acked, run.elapsed));
            acked += run.acked;
        }
        let records = settings.records.min(acked);
        // Spawned like the producers, so it runs on a client worker, not on the main thread.
        let elapsed = tokio::spawn(consume_stream(addr, size, records)).await??;
        figures.push(Figure::new(records, elapsed));
        Ok((figures, acked))
    })
}

// ---------------------------------------------------------------- driver

#[derive(Clone, Copy)]
enum Target {
    /// median(ours) / median(null) at least this.
    Null(f64),
    /// median(ours) at least `factor` × the NATS reference figure `nats`.
    Nats { factor: f64, nats: f64 },
    /// Printed for information.
    Info(&'static str),
}

/// Results of one workload at one value size and fsync policy over all repetitions.
struct Row {
    workload: &'static str,
    producers: usize,
    size: usize,
    fsync: Fsync,
    target: Target,
    ours: Vec<Figure>,
    null: Vec<Figure>,
}

struct Bench<'a> {
    settings: &'a Settings,
    server_rt: &'a Runtime,
    client_rt: &'a Runtime,
}

impl Bench<'_> {
    fn size(&self, size: usize) -> Result<Vec<Row>> {
        let pool = value_pool(size);
        let mut rows = Vec::new();
        for fsync in FSYNCS {
            for (workload, producers) in WORKLOADS {
                let target = match (workload, fsync, size) {
                    ("unary Produce", Fsync::Never, _) => Target::Null(0.8),
                    ("unary Produce", Fsync::Always, _) => Target::Info("info (target applies to `never`)"),
                    ("ProduceStream", Fsync::Never, 1024) => Target::Nats { factor: 2.0, nats: NATS_PUBLISH },
                    ("ProduceStream", Fsync::Always, 1024) => {
                        Target::Nats { factor: 1.0, nats: NATS_PUBLISH }
                    }
                    (_, _, 1024) => Target::Nats { factor: 2.0, nats: NATS_CONSUME },
                    _ => Target::Info("–"),
                };
                rows.push(Row { workload, producers, size, fsync, target, ours: vec![], null: vec![] });
            }
        }
        for rep in 1..=self.settings.reps {
            let tag = format!("[{size} B, rep {rep}/{}]", self.settings.reps);
            let mut ours = Vec::new();
            let mut null = Vec::new();
            for (i, fsync) in FSYNCS.into_iter().enumerate() {
                if i == 1 {
                    // Between the two proglog runs.
                    let server = start_null(self.server_rt, Arc::clone(&pool))?;
                    let (figures, _) = suite(self, server.addr, size, &pool)?;
                    server.stop(self.server_rt, 0)?;
                    eprintln!("{tag} null   {}", progress(&figures));
                    null = figures;
                }
                let server = start_local(self.settings.tempdir()?, self.server_rt, fsync)?;
                let (figures, acked) = suite(self, server.addr, size, &pool)?;
                server.stop(self.server_rt, acked)?;
                eprintln!("{tag} {:<6} {}", fsync_name(fsync), progress(&figures));
                ours.push(figures);
            }
            for (f, figures) in ours.iter().enumerate() {
                for (w, figure) in figures.iter().enumerate() {
                    let row = &mut rows[f * WORKLOADS.len() + w];
                    row.ours.push(*figure);
                    row.null.push(null[w]);
                }
            }
        }
        Ok(rows)
    }
}

fn progress(figures: &[Figure]) -> String {
    let names = ["unary×1", "unary×8", "stream×1", "stream×8", "consume"];
    let mut text: Vec<String> =
        names.iter().zip(figures).map(|(name, figure)| format!("{name} {}", human(figure.rate))).collect();
    text.push(format!("(unary×1 p50 {:.0} µs)", figures[0].p50_us));
    text.join(", ")
}

// ---------------------------------------------------------------- output

fn details(row: &Row) -> String {
    let median =
        |figures: &[Figure], f: fn(&Figure) -> f64| stats(&figures.iter().map(f).collect::<Vec<_>>()).0;
    let records = |figures: &[Figure]| human(median(figures, |f| f.records as f64));
    match row.workload {
        "unary Produce" => format!(
            "latency p50/p99: proglog {:.0}/{:.0} µs, null {:.0}/{:.0} µs",
            median(&row.ours, |f| f.p50_us),
            median(&row.ours, |f| f.p99_us),
            median(&row.null, |f| f.p50_us),
            median(&row.null, |f| f.p99_us),
        ),
        "ProduceStream" => format!(
            "window {WINDOW} per producer; records acked per run (median): proglog {}, null {}",
            records(&row.ours),
            records(&row.null)
        ),
        _ => format!(
            "records read per run (median): proglog {}, null {}; then the stream is dropped",
            records(&row.ours),
            records(&row.null)
        ),
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "| workload | producers | value | fsync | proglog rec/s | proglog MB/s | null rec/s | null MB/s | \
         proglog/null | target | details |"
    );
    println!("|---|---:|---:|---|---:|---:|---:|---:|---:|---|---|");
    for row in rows {
        let ours: Vec<f64> = row.ours.iter().map(|f| f.rate).collect();
        let null: Vec<f64> = row.null.iter().map(|f| f.rate).collect();
        let ratio = stats(&ours).0 / stats(&null).0;
        // Each repetition ran both back to back: their ratios show the noise.
        let paired: Vec<f64> = ours.iter().zip(&null).map(|(ours, null)| ours / null).collect();
        let (_, low, high) = stats(&paired);
        let ratio_text = if paired.len() > 1 {
            format!("{ratio:.2}× ({low:.2}–{high:.2})")
        } else {
            format!("{ratio:.2}×")
        };
        let pass = |ok: bool| if ok { "pass" } else { "**FAIL**" };
        let verdict = match row.target {
            Target::Null(target) => format!("≥ {target}× null: {}", pass(ratio >= target)),
            Target::Nats { factor, nats } => {
                let goal = factor * nats;
                format!(
                    "≥ {:.0}k rec/s ({factor}× NATS {:.0}k\\*): {}",
                    goal / 1e3,
                    nats / 1e3,
                    pass(stats(&ours).0 >= goal)
                )
            }
            Target::Info(text) => text.to_string(),
        };
        let size =
            if row.size >= 1024 { format!("{} KiB", row.size / 1024) } else { format!("{} B", row.size) };
        let producers = if row.workload.starts_with("Consume") {
            "1 consumer".to_string()
        } else {
            row.producers.to_string()
        };
        println!(
            "| {} | {producers} | {size} | {} | {} | {} | {} | {} | {ratio_text} | {verdict} | {} |",
            row.workload,
            fsync_name(row.fsync),
            spread(&ours),
            mb_per_s(&ours, row.size),
            spread(&null),
            mb_per_s(&null, row.size),
            details(row),
        );
    }
}
