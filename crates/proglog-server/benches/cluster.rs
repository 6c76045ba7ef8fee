//! Replicated-log benchmark: the `log.v1` service over the Raft-replicated log
//! (`RaftLog`) of one and of three nodes, against the single-node `LocalLog`, the
//! disk's and the RPC's own limits, and two replicated peers (NATS JetStream R3,
//! a three-member etcd), in the same run; then the time a three-node cluster
//! takes to acknowledge a Produce again after its leader is killed.
//!
//! ```text
//! cargo bench -p proglog-server --bench cluster              # 3 repetitions (cargo xtask bench cluster)
//! cargo bench -p proglog-server --bench cluster -- --quick   # 1 repetition, 10x fewer records
//! ```
//!
//! Environment: `PROGLOG_BENCH_QUICK=1` (same as `--quick`), `PROGLOG_BENCH_RECORDS`
//! (records per throughput run, default 100000 full / a tenth of it quick),
//! `PROGLOG_BENCH_SECONDS` (time cap of each throughput run, default 30 full / 10
//! quick), `PROGLOG_BENCH_SERVER_THREADS` and `PROGLOG_BENCH_CLIENT_THREADS` (tokio
//! worker threads of each runtime, default 2 and 2), `PROGLOG_BENCH_DIR` (where
//! the temporary data dirs go, default the system temp dir; it must not be tmpfs
//! for the figures to mean anything), `PROGLOG_BENCH_LOG` (set: the nodes log at
//! info level to stderr).
//!
//! Progress goes to stderr; stdout gets Markdown tables for BENCHMARKS.md. Run
//! without `--bench` (as `cargo test --all-targets` does) it only does a tiny smoke
//! run (every target, a few hundred records, one failover).
//!
//! **Setup.** As in the `server` bench: servers and clients live in this process
//! on two tokio multi-thread runtimes (`bench-server`, `bench-client`, two workers
//! each), plaintext h2c on 127.0.0.1, `AllowAll`, max-record-bytes 1 MiB, `serve`
//! on a bound listener with the default limits. Every node of a cluster runs on
//! the one server runtime (so every target gets the same threads, plus its own
//! log threads), and each is assembled as the agent assembles it: a listener on
//! `127.0.0.1:0`, a `PeerTransport` (plaintext) on the server runtime, its record
//! log in `<dir>/log`, `RaftLog::open` with fsync `always` and the default Raft
//! timings (100 ms heartbeat, 1 s election timeout, randomised up to 2 s), and the
//! transport's internal Raft service mounted on the same port. Every target runs
//! on fresh data dirs.
//!
//! **Workload** (per target and repetition): 8 producers, each a ProduceStream
//! over its own tonic channel (its own TCP connection, connected before the clock
//! starts) with up to 256 requests in flight, 1 KiB values, fsync `always`, until
//! the run's records are acknowledged or the time cap has passed. records/s =
//! records acknowledged / time until the last response. Commit latency is per
//! record: from handing the request to its stream to receiving its response (each
//! producer keeps a FIFO of send instants; responses come back in request order).
//! With 2048 records in flight it is mostly queueing: about 2048 / records/s.
//! Then unary Produce calls, for `PROGLOG_BENCH_UNARY_SECONDS` (default 3 full, 1
//! quick) each: from 1 producer, then from 8 (each its own connection, one call at
//! a time), latency per call. Each repetition starts with the limits: the disk's
//! (one writer appending 4 KiB blocks to a file in the same directory, each
//! followed by `fdatasync`, for as long as a unary run) and the RPC's (unary calls
//! from one producer to a `log.v1` service that stores nothing, tonic alone).
//! For the streams, the CPU time this process spent per second of the run (every
//! node and client live in it) says how many of the machine's cores were busy.
//!
//! **Targets**, interleaved per repetition in this order:
//!
//! 1. `LocalLog`, fsync `always`, served as the `server` bench serves it: the
//!    single-node, non-replicated baseline (one fsync per merged batch).
//! 2. A one-member cluster: a `RaftLog` bootstrapped alone (every append is a Raft
//!    entry whose records are written once, in the data log, and fsynced before
//!    they are applied).
//!    Then, on a fresh one, the stream workload and one producer's unary calls
//!    again as idempotent producers (SPEC §11: each stream, and the unary
//!    caller, its own producer; every record carries its sequence).
//! 3. A three-node cluster: node-0 bootstrapped, node-1 and node-2 joined through
//!    the leader one at a time (each promoted to voter before the next joins);
//!    the producers send to the leader. Afterwards every node must hold every
//!    acknowledged record. Then unary Consume calls to a follower, from 1 and
//!    from 8 readers, local and linearizable (SPEC §11: ReadIndex), for as long
//!    as a unary run each.
//! 4. Failover, on that cluster: the leader is killed — its transport shut down
//!    (from then on it sends nothing to its peers), its server aborted (every
//!    connection dropped at once, as when a process dies), its log closed — and a
//!    client retries a unary Produce every 10 ms, alternating between the two
//!    survivors (connected before the kill; a follower forwards to the leader it
//!    knows). Measured: from the kill until the first Produce acknowledged, and
//!    until a survivor reports itself leader of a newer term.
//! 5. A three-node cluster with fsync `never`: the stream workload only (the
//!    durability NATS gives: acknowledged once written on a majority).
//! 6. NATS JetStream (Debian's `nats-server`): three servers routed to each other
//!    on 127.0.0.1, JetStream file storage, a stream of three replicas; 8
//!    connections (spread over the servers) publishing the run's records with up
//!    to 256 unacknowledged each, latency from `PUB` to JetStream's ack.
//! 7. etcd (Debian's `etcd-server`), three members on 127.0.0.1, its defaults:
//!    sequential puts (a new key each, the same values) to the leader from 1 and
//!    from 8 connections for as long as a unary run.
//!
//! The peers run only with `--bench`: found on `PATH`, or installed with apt-get
//! when running as root (`PROGLOG_BENCH_NO_INSTALL` forbids it), else skipped with
//! the reason in the report (see `common/peers.rs`).
//!
//! Correctness, checked on every run: each producer gets one response per request
//! with increasing offsets; the log (every node's, for the cluster) holds exactly
//! the acknowledged records; after the failover the first acknowledged offset is
//! past every record acknowledged before the kill and the new leader holds no
//! more records than were acknowledged or attempted.
//!
//! Targets (issue #18): one-member ≥ 0.9× `LocalLog` on every workload; three
//! nodes ≥ 0.6× one member on streams; one producer's unary p50 ≤ 1.3× the bare
//! fdatasync's and its rate ≥ 0.8× the fdatasync loop's; ≥ 4 records per fsync
//! with 8 unary producers (group commit); three nodes with fsync `never` ≥ 2×
//! NATS JetStream R3 on streams; three nodes ≥ 2× etcd's puts on unary calls;
//! failover < 2 s.

mod common;
use common::peers;
use common::support::{filesystem_of, human, mb_per_s, rate, spread, stats};
use common::{
    Destination, FsyncCount, Invocation, MAX_RECORD_BYTES, WINDOW, base_dir_from_env, connect, cpu_seconds,
    env_parse, fdatasync_loop, listen, machine, percentiles_us, produce_request, produce_stream, runtime,
    runtime_threads_from_env, start_local, unary, value_pool,
};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use proglog_api::v1::log_client::LogClient;
use proglog_api::v1::{ConsumeRequest, InitProducerRequest, ProduceRequest};
use proglog_raft::{CommitLog, Fsync, Member, RaftConfig, RaftLog, RaftMetrics};
use proglog_server::{AllowAll, PeerTls, PeerTransport, ServerConfig, ServerError};
use tempfile::TempDir;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

const PRODUCERS: usize = 8;
const VALUE_BYTES: usize = 1024;
const CLUSTER_NODES: usize = 3;
/// Targets of issue #18.
/// Idempotent produce against plain (issue #19).
const IDEMPOTENT_VS_PLAIN: f64 = 0.95;
const ONE_MEMBER_VS_LOCAL: f64 = 0.9;
const THREE_NODES_VS_ONE_MEMBER: f64 = 0.6;
const UNARY_P50_VS_FDATASYNC: f64 = 1.3;
const UNARY_RATE_VS_FDATASYNC: f64 = 0.8;
const RECORDS_PER_FSYNC_UNARY8: f64 = 4.0;
const THREE_NODES_VS_NATS: f64 = 2.0;
const THREE_NODES_VS_ETCD: f64 = 2.0;
const FAILOVER_LIMIT: Duration = Duration::from_secs(2);
/// The fdatasync reference's block: a page, what one small record costs the disk.
const FDATASYNC_BLOCK: usize = 4096;
/// Longest wait for anything that should happen: a leader, a voter, caught-up
/// followers, a server stopping, a Produce acknowledged after the failover.
const DEADLINE: Duration = Duration::from_secs(30);
/// Between two conditions checks, and between two failover probes.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// A failover probe unanswered for this long is abandoned (its outcome unknown).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

fn main() -> Result<()> {
    let settings = Settings::from_env()?;
    settings.print_header();
    let server_rt = runtime("bench-server", settings.server_threads)?;
    let client_rt = runtime("bench-client", settings.client_threads)?;
    let bench = Bench {
        settings: &settings,
        server_rt: &server_rt,
        client_rt: &client_rt,
        pool: value_pool(VALUE_BYTES),
    };
    let mut results = Results {
        nats: Peer::find(&settings, "nats-server", "nats-server"),
        etcd: Peer::find(&settings, "etcd", "etcd-server"),
        ..Results::default()
    };
    let started = Instant::now();
    for rep in 1..=settings.reps {
        let tag = format!("[rep {rep}/{}]", settings.reps);
        let fdatasync = bench.fdatasync()?;
        eprintln!("{tag} fdatasync   {}", progress(&fdatasync));
        results.fdatasync.push(fdatasync);
        let null = bench.null()?;
        eprintln!("{tag} null RPC    {}", progress(&null));
        results.null.push(null);
        let local = bench.local()?;
        eprintln!("{tag} LocalLog    {}", progress_run(&local));
        results.local.push(local);
        let (one, idempotent) = bench.one_member()?;
        eprintln!("{tag} one-member  {}", progress_run(&one));
        eprintln!(
            "{tag} one-member, idempotent  stream x{PRODUCERS}: {}; unary x1: {}",
            progress(&idempotent.stream),
            progress(&idempotent.unary1)
        );
        results.one_member.push(one);
        results.idempotent.push(idempotent);
        let (three, reads, failover) = bench.three_nodes()?;
        eprintln!("{tag} 3-node      {}", progress_run(&three));
        eprintln!(
            "{tag} 3-node reads from a follower  local x1: {}; linearizable x1: {}; local x{PRODUCERS}: {}; linearizable x{PRODUCERS}: {}",
            progress(&reads.local1),
            progress(&reads.linearizable1),
            progress(&reads.local8),
            progress(&reads.linearizable8)
        );
        results.reads.push(reads);
        eprintln!(
            "{tag} failover    first ack after {:.0} ms (leader elected after {:.0} ms; {} probe(s), via {})",
            ms(failover.acked),
            ms(failover.elected),
            failover.probes,
            failover.via
        );
        results.three_nodes.push(three);
        results.failovers.push(failover);
        let never = bench.three_nodes_never()?;
        eprintln!("{tag} 3-node, fsync never  stream x{PRODUCERS}: {}", progress(&never));
        results.three_never.push(never);
        results.nats.measure(&tag, |binary| bench.nats(binary), progress);
        results.etcd.measure(
            &tag,
            |binary| bench.etcd(binary),
            |(one, eight)| format!("put x1: {}; put x{PRODUCERS}: {}", progress(one), progress(eight)),
        );
    }
    results.print();
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
    /// Records per throughput run (split between the producers).
    records: u64,
    /// Time cap of each throughput run.
    cap: Duration,
    /// Duration of each unary run and of the fdatasync reference.
    unary: Duration,
    server_threads: usize,
    client_threads: usize,
    base_dir: PathBuf,
    /// Nodes log to stderr (`PROGLOG_BENCH_LOG`).
    log: bool,
}

impl Settings {
    fn from_env() -> Result<Self> {
        let Invocation { bench, quick } = Invocation::from_args();
        let records: u64 = env_parse("PROGLOG_BENCH_RECORDS")?.unwrap_or(100_000);
        let seconds: Option<f64> = env_parse("PROGLOG_BENCH_SECONDS")?;
        let (server_threads, client_threads) = runtime_threads_from_env()?;
        let base_dir = base_dir_from_env()?;
        let log = std::env::var_os("PROGLOG_BENCH_LOG").is_some();
        let cap = |default: f64| Duration::from_secs_f64(seconds.unwrap_or(default));
        let unary_seconds: Option<f64> = env_parse("PROGLOG_BENCH_UNARY_SECONDS")?;
        let unary = |default: f64| Duration::from_secs_f64(unary_seconds.unwrap_or(default));
        let (mode, reps, records, cap, unary) = if !bench {
            // `cargo test --all-targets` runs benches without `--bench`: just check they work.
            ("smoke (no --bench)", 1, 400, Duration::from_secs(30), Duration::from_millis(100))
        } else if quick {
            ("quick", 1, (records / 10).max(WINDOW as u64), cap(10.0), unary(1.0))
        } else {
            ("full", 3, records.max(WINDOW as u64), cap(30.0), unary(3.0))
        };
        Ok(Self { mode, reps, records, cap, unary, server_threads, client_threads, base_dir, log })
    }

    fn tempdir(&self) -> Result<TempDir> {
        common::support::tempdir_in(&self.base_dir, "proglog-cluster-bench-")
    }

    fn print_header(&self) {
        let fs = filesystem_of(&self.base_dir).unwrap_or_else(|| "unknown".to_string());
        common::print_title("proglog replicated-log benchmark", self.mode);
        println!(
            "{} repetition(s), interleaved (LocalLog, one-member, 3-node + failover, ...); median \
             [min..max]; a ratio is that of the medians (range of the per-repetition ratios). MB = \
             10^6 payload bytes. Machine: {}; data in `{}` ({fs}). Loopback 127.0.0.1, plaintext h2c, \
             `AllowAll`, max-record-bytes 1 MiB, fsync `always` everywhere. Servers (every node) and \
             clients in one process on separate tokio runtimes: server {} worker(s) (+ each log's \
             own thread: LocalLog's writer, a Raft thread per node), client {} worker(s). Raft: \
             default timings (heartbeat 100 ms, election timeout 1 s, randomised up to 2 s), \
             plaintext `PeerTransport`. Workload: {PRODUCERS} producers, each a ProduceStream on its \
             own connection with up to {WINDOW} requests in flight, {VALUE_BYTES} B values, {} \
             records per run (split between the producers) or {:.0} s, whichever comes first; then \
             unary Produce calls for {:.1} s from 1 and from {PRODUCERS} producers (each its own \
             connection, one call at a time), latency per call. Reference: one writer appending \
             {FDATASYNC_BLOCK} B blocks to a file in the same directory, each followed by \
             fdatasync, for as long.",
            self.reps,
            machine(),
            self.base_dir.display(),
            self.server_threads,
            self.client_threads,
            self.records,
            self.cap.as_secs_f64(),
            self.unary.as_secs_f64(),
        );
        if fs.starts_with("tmpfs") {
            eprintln!("WARNING: {} is on tmpfs: fdatasync is free there", self.base_dir.display());
        }
        println!();
    }
}

// ---------------------------------------------------------------- nodes

/// One node of a replicated log, assembled as the agent assembles it.
struct Node {
    addr: SocketAddr,
    transport: PeerTransport,
    log: Arc<RaftLog>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ServerError>>,
    fsyncs: Arc<FsyncCount>,
}

impl Node {
    /// Starts node `name` with its data under `dir`, serving on the server runtime.
    fn start(bench: &Bench<'_>, name: &str, dir: &Path, bootstrap: bool, fsync: Fsync) -> Result<Self> {
        let rt = bench.server_rt;
        let listener = listen(rt)?;
        let addr = listener.local_addr()?;
        let member = Member::new(name, addr.to_string());
        let logger = bench.logger(name);
        let transport = PeerTransport::new(PeerTls::Plaintext, rt.handle().clone(), logger.clone());
        let records = proglog_log::Log::open(dir.join("log"), proglog_log::Config::default())?;
        let fsyncs = Arc::new(FsyncCount::default());
        let metrics = RaftMetrics {
            fsync_seconds: metrics::Histogram::from_arc(fsyncs.clone()),
            ..RaftMetrics::default()
        };
        let mut config = RaftConfig { bootstrap, logger, metrics, ..RaftConfig::new(member, dir) };
        config.settings.fsync = fsync;
        // Blocks on disk: called on the main thread, never on a runtime worker.
        let log = Arc::new(RaftLog::open(config, records, Arc::new(transport.clone()))?);
        transport.bind(&log);
        let (stop, stopped) = oneshot::channel::<()>();
        let config = ServerConfig {
            max_record_bytes: MAX_RECORD_BYTES,
            extra_services: vec![transport.service()],
            ..ServerConfig::default()
        };
        let task =
            rt.spawn(proglog_server::serve(listener, log.clone(), Arc::new(AllowAll), config, async {
                let _ = stopped.await;
            }));
        Ok(Self { addr, transport, log, stop, task, fsyncs })
    }

    fn name(&self) -> &str {
        &self.log.member().name
    }

    /// Records held: the highest offset + 1.
    fn held(&self) -> u64 {
        self.log.status().highest_offset.map_or(0, |highest| highest + 1)
    }

    /// The orderly shutdown (as the agent's): peers' streams end, the server
    /// finishes its calls, the log closes.
    fn stop(self, rt: &Runtime) -> Result<()> {
        self.transport.shutdown();
        let _ = self.stop.send(());
        rt.block_on(async { tokio::time::timeout(DEADLINE, self.task).await })
            .with_context(|| format!("the server did not stop within {DEADLINE:?}"))???;
        Ok(self.log.close()?)
    }
}

/// Waits (on the calling thread, not a runtime worker) until `condition` holds.
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        ensure!(Instant::now() < deadline, "not within {DEADLINE:?}: {what}");
        std::thread::sleep(POLL_INTERVAL);
    }
    Ok(())
}

// ---------------------------------------------------------------- measurements

/// One throughput run.
#[derive(Clone, Copy)]
struct Figure {
    rate: f64,
    acked: u64,
    p50_us: f64,
    p99_us: f64,
    /// Replicated only: fsyncs of the leader's Raft entries during the run
    /// (group commit: each covers every entry written before it started).
    fsyncs: Option<u64>,
    /// Streams to our logs: CPU seconds this process (clients and every node)
    /// spent per second of the run, i.e. cores kept busy.
    cores: Option<f64>,
}

impl Figure {
    fn of_calls(mut run: common::Produced, fsyncs: Option<u64>) -> Self {
        let (p50_us, p99_us) = percentiles_us(&mut run.latencies);
        Self { rate: rate(run.acked, run.elapsed), acked: run.acked, p50_us, p99_us, fsyncs, cores: None }
    }
}

/// One target's workloads, in one repetition.
#[derive(Clone, Copy)]
struct Run {
    stream: Figure,
    unary1: Figure,
    unary8: Figure,
}

impl Run {
    fn acked(&self) -> u64 {
        self.stream.acked + self.unary1.acked + self.unary8.acked
    }
}

/// The one-member workloads as idempotent producers (SPEC §11).
#[derive(Clone, Copy)]
struct Idempotent {
    stream: Figure,
    unary1: Figure,
}

/// Unary Consume calls to a follower of the 3-node cluster, local and
/// linearizable, from 1 and from 8 readers.
#[derive(Clone, Copy)]
struct Reads {
    local1: Figure,
    linearizable1: Figure,
    local8: Figure,
    linearizable8: Figure,
}

/// One failover.
struct Failover {
    /// From the kill until the first Produce acknowledged by a survivor.
    acked: Duration,
    /// From the kill until a survivor reported itself leader of a newer term.
    elected: Duration,
    /// Produce attempts until then (the last one succeeded).
    probes: u64,
    /// The survivor that acknowledged it.
    via: String,
}

struct Bench<'a> {
    settings: &'a Settings,
    server_rt: &'a Runtime,
    client_rt: &'a Runtime,
    pool: Arc<Vec<Bytes>>,
}

impl Bench<'_> {
    fn logger(&self, name: &str) -> slog::Logger {
        use slog::Drain;
        if !self.settings.log {
            return slog::Logger::root(slog::Discard, slog::o!());
        }
        let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
        let drain = slog::LevelFilter::new(slog_term::FullFormat::new(decorator).build(), slog::Level::Info);
        slog::Logger::root(drain.fuse(), slog::o!("n" => name.to_owned()))
    }

    /// The workload against `addr`, latencies included (each stream an
    /// idempotent producer, if `idempotent`).
    fn produce_as(&self, addr: SocketAddr, idempotent: bool) -> Result<Figure> {
        let settings = self.settings;
        let pool = Arc::clone(&self.pool);
        let cpu = cpu_seconds();
        let mut run = self.client_rt.block_on(produce_stream(
            Destination::default_log(addr, PRODUCERS),
            pool,
            settings.records,
            settings.cap,
            true,
            idempotent,
        ))?;
        let cores = (cpu_seconds() - cpu) / run.elapsed.as_secs_f64();
        let (p50_us, p99_us) = percentiles_us(&mut run.latencies);
        let rate = rate(run.acked, run.elapsed);
        Ok(Figure { rate, acked: run.acked, p50_us, p99_us, fsyncs: None, cores: Some(cores) })
    }

    /// The workload against `addr`, latencies included.
    fn produce(&self, addr: SocketAddr) -> Result<Figure> {
        self.produce_as(addr, false)
    }

    /// Unary Produce calls from one idempotent producer against `addr`.
    fn unary_idempotent(&self, addr: SocketAddr) -> Result<Figure> {
        let pool = Arc::clone(&self.pool);
        let run = self.client_rt.block_on(async {
            let mut client = connect(addr).await?;
            let producer_id = client.init_producer(InitProducerRequest {}).await?.into_inner().producer_id;
            common::calls(vec![(client, 0u64)], self.settings.unary, move |(mut client, sequence), i| {
                let request = ProduceRequest { producer_id, sequence, ..produce_request(&pool, i) };
                async move {
                    client.produce(request).await?;
                    Ok((client, sequence + 1))
                }
            })
            .await
        })?;
        Ok(Figure::of_calls(run, None))
    }

    /// Unary Produce calls from `producers` producers against `addr`.
    fn unary(&self, addr: SocketAddr, producers: usize) -> Result<common::Produced> {
        self.client_rt.block_on(unary(addr, producers, Arc::clone(&self.pool), self.settings.unary))
    }

    /// The disk's own limit, measured where the logs are.
    fn fdatasync(&self) -> Result<Figure> {
        let dir = self.settings.tempdir()?;
        let run = fdatasync_loop(dir.path(), FDATASYNC_BLOCK, self.settings.unary)?;
        dir.close()?;
        Ok(Figure::of_calls(run, None))
    }

    /// The RPC alone: unary Produce calls from one producer to a service that
    /// stores nothing.
    fn null(&self) -> Result<Figure> {
        let server = common::null::start_null(self.server_rt, Arc::clone(&self.pool))?;
        let run = self.unary(server.addr, 1)?;
        server.stop(self.server_rt, run.acked)?;
        Ok(Figure::of_calls(run, None))
    }

    fn local(&self) -> Result<Run> {
        let server = start_local(self.settings.tempdir()?, self.server_rt, Fsync::Always)?;
        let stream = self.produce(server.addr)?;
        let unary1 = Figure::of_calls(self.unary(server.addr, 1)?, None);
        let unary8 = Figure::of_calls(self.unary(server.addr, PRODUCERS)?, None);
        let run = Run { stream, unary1, unary8 };
        server.stop(self.server_rt, run.acked())?;
        Ok(run)
    }

    /// The workloads against `nodes[leader]`; then every node must hold exactly
    /// the acknowledged records.
    fn replicated_run(&self, nodes: &[Node], leader: usize) -> Result<Run> {
        let (addr, fsyncs) = (nodes[leader].addr, &nodes[leader].fsyncs);
        let synced = || fsyncs.0.load(Ordering::Relaxed);
        let before = synced();
        let mut stream = self.produce(addr)?;
        stream.fsyncs = Some(synced() - before);
        let before = synced();
        let unary1 = self.unary(addr, 1)?;
        let unary1 = Figure::of_calls(unary1, Some(synced() - before));
        let before = synced();
        let unary8 = self.unary(addr, PRODUCERS)?;
        let unary8 = Figure::of_calls(unary8, Some(synced() - before));
        let run = Run { stream, unary1, unary8 };
        let acked = run.acked();
        for node in nodes {
            // A node's status is refreshed after its Raft round: it may trail the
            // last acknowledgement by a moment, and a follower learns the commit
            // with the next message from the leader.
            wait_until(&format!("{} holds the {acked} acknowledged records", node.name()), || {
                node.held() >= acked
            })?;
            ensure!(
                node.held() == acked,
                "{} holds {} records, {acked} were acknowledged",
                node.name(),
                node.held()
            );
        }
        Ok(run)
    }

    /// A one-member cluster: the workloads, then the stream and one producer's
    /// unary calls again as idempotent producers (on fresh data dirs, like for like).
    fn one_member(&self) -> Result<(Run, Idempotent)> {
        let dir = self.settings.tempdir()?;
        let node = Node::start(self, "node-0", &dir.path().join("node-0"), true, Fsync::Always)?;
        self.server_rt.block_on(node.log.wait_for_leader(DEADLINE))?;
        let nodes = [node];
        let run = self.replicated_run(&nodes, 0)?;
        let [node] = nodes;
        node.stop(self.server_rt)?;
        dir.close()?;
        let dir = self.settings.tempdir()?;
        let node = Node::start(self, "node-0", &dir.path().join("node-0"), true, Fsync::Always)?;
        self.server_rt.block_on(node.log.wait_for_leader(DEADLINE))?;
        let idempotent = Idempotent {
            stream: self.produce_as(node.addr, true)?,
            unary1: self.unary_idempotent(node.addr)?,
        };
        node.stop(self.server_rt)?;
        dir.close()?;
        Ok((run, idempotent))
    }

    /// Forms the cluster: node-0 bootstrapped, the others joined one at a time.
    fn form(&self, dir: &Path, fsync: Fsync) -> Result<Vec<Node>> {
        let first = Node::start(self, "node-0", &dir.join("node-0"), true, fsync)?;
        self.server_rt.block_on(first.log.wait_for_leader(DEADLINE))?;
        let mut nodes = vec![first];
        for i in 1..CLUSTER_NODES {
            let name = format!("node-{i}");
            let node = Node::start(self, &name, &dir.join(&name), false, fsync)?;
            let leader = &nodes[leader_of(&nodes)?];
            self.server_rt.block_on(leader.log.join(node.log.member().clone()))?;
            // Promoted once caught up; one membership change at a time.
            wait_until(&format!("{name} votes"), || leader.log.status().voters == i + 1)?;
            nodes.push(node);
        }
        for node in &nodes {
            wait_until(&format!("{} sees {CLUSTER_NODES} voters", node.name()), || {
                node.log.status().voters == CLUSTER_NODES
            })?;
        }
        Ok(nodes)
    }

    fn three_nodes(&self) -> Result<(Run, Reads, Failover)> {
        let dir = self.settings.tempdir()?;
        let mut nodes = self.form(dir.path(), Fsync::Always)?;
        let leader = leader_of(&nodes)?;
        let run = self.replicated_run(&nodes, leader)?;
        let follower = nodes[(leader + 1) % nodes.len()].addr;
        let reads = Reads {
            local1: self.consume(follower, 1, false, run.acked())?,
            linearizable1: self.consume(follower, 1, true, run.acked())?,
            local8: self.consume(follower, PRODUCERS, false, run.acked())?,
            linearizable8: self.consume(follower, PRODUCERS, true, run.acked())?,
        };
        let failover = self.failover(&mut nodes, run.acked())?;
        for node in nodes {
            node.stop(self.server_rt)?;
        }
        dir.close()?;
        Ok((run, reads, failover))
    }

    /// Unary Consume calls from `readers` readers against `addr`, each of an
    /// offset below `held`, local or linearizable.
    fn consume(&self, addr: SocketAddr, readers: usize, linearizable: bool, held: u64) -> Result<Figure> {
        let run = self.client_rt.block_on(async {
            let mut clients = Vec::with_capacity(readers);
            for _ in 0..readers {
                clients.push(connect(addr).await?);
            }
            common::calls(clients, self.settings.unary, move |mut client, i| async move {
                let offset = (i as u64).wrapping_mul(7919) % held.max(1);
                client.consume(ConsumeRequest { offset, linearizable }).await?;
                Ok(client)
            })
            .await
        })?;
        Ok(Figure::of_calls(run, None))
    }

    /// The stream workload on a three-node cluster with fsync `never` (the
    /// durability NATS JetStream gives by default: acknowledged once written).
    fn three_nodes_never(&self) -> Result<Figure> {
        let dir = self.settings.tempdir()?;
        let nodes = self.form(dir.path(), Fsync::Never)?;
        let stream = self.produce(nodes[leader_of(&nodes)?].addr)?;
        for node in &nodes {
            wait_until(&format!("{} holds the {} acknowledged records", node.name(), stream.acked), || {
                node.held() >= stream.acked
            })?;
        }
        for node in nodes {
            node.stop(self.server_rt)?;
        }
        dir.close()?;
        Ok(stream)
    }

    /// NATS JetStream, three servers, a stream of three replicas: the stream
    /// workload's shape (8 producers, 256 in flight each, the run's records).
    fn nats(&self, binary: &Path) -> Result<Figure> {
        let dir = self.settings.tempdir()?;
        let settings = self.settings;
        let mut run = self.client_rt.block_on(async {
            let cluster = peers::NatsCluster::start(binary, dir.path()).await?;
            cluster.publish(PRODUCERS, Arc::clone(&self.pool), settings.records, settings.cap).await
        })?;
        dir.close()?;
        let (p50_us, p99_us) = percentiles_us(&mut run.latencies);
        Ok(Figure {
            rate: rate(run.acked, run.elapsed),
            acked: run.acked,
            p50_us,
            p99_us,
            fsyncs: None,
            cores: None,
        })
    }

    /// A three-member etcd: sequential puts to its leader from 1 and from 8
    /// producers, like the unary workloads.
    fn etcd(&self, binary: &Path) -> Result<(Figure, Figure)> {
        let dir = self.settings.tempdir()?;
        let (one, eight) = self.client_rt.block_on(async {
            let cluster = peers::EtcdCluster::start(binary, dir.path()).await?;
            let one = cluster.put(1, Arc::clone(&self.pool), self.settings.unary).await?;
            let eight = cluster.put(PRODUCERS, Arc::clone(&self.pool), self.settings.unary).await?;
            anyhow::Ok((one, eight))
        })?;
        dir.close()?;
        Ok((Figure::of_calls(one, None), Figure::of_calls(eight, None)))
    }

    /// Kills the leader of `nodes` (removing it) while a client probes the
    /// survivors, which hold `acked` records.
    fn failover(&self, nodes: &mut Vec<Node>, acked: u64) -> Result<Failover> {
        let old = nodes.remove(leader_of(nodes)?);
        let old_term = old.log.status().term;
        let survivors: Vec<(String, Arc<RaftLog>)> =
            nodes.iter().map(|node| (node.name().to_owned(), Arc::clone(&node.log))).collect();
        let clients = self.client_rt.block_on(async {
            let mut clients = Vec::new();
            for node in nodes.iter() {
                clients.push((node.name().to_owned(), connect(node.addr).await?));
            }
            anyhow::Ok(clients)
        })?;

        let killed = Instant::now();
        // From here the old leader sends nothing to its peers…
        old.transport.shutdown();
        let probe = self.client_rt.spawn(probe(clients, Arc::clone(&self.pool), killed));
        let elected = self.client_rt.spawn(elected(survivors, old_term, killed));
        // …and its connections drop at once, as when its process dies.
        old.task.abort();
        match self.server_rt.block_on(old.task) {
            Err(error) if error.is_cancelled() => {}
            other => bail!("the killed leader's server ended on its own: {other:?}"),
        }
        old.log.close()?;
        let (elected, new_leader) = self.client_rt.block_on(elected)??;
        let (acked_after, offset, probes, via) = self.client_rt.block_on(probe)??;

        // Every record acknowledged before the kill is still below the new one;
        // nothing was added but what the probes asked for.
        ensure!(offset >= acked, "the first Produce after the failover got offset {offset}, below {acked}");
        let leader = nodes.iter().find(|node| node.name() == new_leader).context("the new leader is gone")?;
        wait_until(&format!("{new_leader} holds offset {offset}"), || leader.held() > offset)?;
        let held = leader.held();
        ensure!(
            held <= acked + probes,
            "{new_leader} holds {held} records: {acked} acknowledged before the kill, {probes} probe(s) since"
        );
        Ok(Failover { acked: acked_after, elected, probes, via })
    }
}

/// The index of the node that leads (exactly one must).
fn leader_of(nodes: &[Node]) -> Result<usize> {
    let mut found = None;
    wait_until("one node leads", || {
        let leaders: Vec<usize> = (0..nodes.len()).filter(|&i| nodes[i].log.status().is_leader).collect();
        found = (leaders.len() == 1).then(|| leaders[0]);
        found.is_some()
    })?;
    found.context("no leader")
}

/// Produce requests, one at a time, alternating between `clients`, every
/// [`POLL_INTERVAL`] until one is acknowledged: (time since `killed`, its offset,
/// attempts, which survivor answered).
async fn probe(
    mut clients: Vec<(String, LogClient<Channel>)>,
    pool: Arc<Vec<Bytes>>,
    killed: Instant,
) -> Result<(Duration, u64, u64, String)> {
    let survivors = clients.len();
    let mut attempts = 0u64;
    loop {
        let (name, client) = &mut clients[attempts as usize % survivors];
        let request = produce_request(&pool, attempts as usize);
        attempts += 1;
        let error = match tokio::time::timeout(PROBE_TIMEOUT, client.produce(request)).await {
            Ok(Ok(response)) => {
                return Ok((killed.elapsed(), response.into_inner().offset, attempts, name.clone()));
            }
            Ok(Err(status)) => format!("{name}: {:?} {}", status.code(), status.message()),
            Err(_) => format!("{name}: no answer within {PROBE_TIMEOUT:?}"),
        };
        ensure!(
            killed.elapsed() < DEADLINE,
            "no survivor acknowledged a Produce within {DEADLINE:?} of the kill (last: {error})"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Polls the survivors until one leads a term after `old_term`: (time since
/// `killed`, its name).
async fn elected(
    survivors: Vec<(String, Arc<RaftLog>)>,
    old_term: u64,
    killed: Instant,
) -> Result<(Duration, String)> {
    loop {
        for (name, log) in &survivors {
            let status = log.status();
            if status.is_leader && status.term > old_term {
                return Ok((killed.elapsed(), name.clone()));
            }
        }
        ensure!(killed.elapsed() < DEADLINE, "no survivor became leader within {DEADLINE:?} of the kill");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

// ---------------------------------------------------------------- output

#[derive(Default)]
struct Results {
    fdatasync: Vec<Figure>,
    null: Vec<Figure>,
    local: Vec<Run>,
    one_member: Vec<Run>,
    idempotent: Vec<Idempotent>,
    three_nodes: Vec<Run>,
    reads: Vec<Reads>,
    failovers: Vec<Failover>,
    three_never: Vec<Figure>,
    nats: Peer<Figure>,
    /// Puts from 1 and from 8 producers.
    etcd: Peer<(Figure, Figure)>,
}

/// A peer's server and its figures per repetition, or why it was not measured.
struct Peer<T> {
    /// The server binary and its version.
    binary: Option<(PathBuf, String)>,
    figures: Vec<T>,
    /// Why it was skipped, or how a run failed (then no figures count).
    skipped: Option<String>,
}

impl<T> Default for Peer<T> {
    fn default() -> Self {
        Self { binary: None, figures: Vec::new(), skipped: None }
    }
}

impl<T> Peer<T> {
    fn find(settings: &Settings, binary: &str, package: &str) -> Self {
        let found = if settings.mode.starts_with("smoke") {
            Err("peers are measured with `--bench` only".to_owned())
        } else {
            peers::find_or_install(binary, package)
        };
        match found {
            Ok(path) => {
                let version = std::process::Command::new(&path)
                    .arg("--version")
                    .output()
                    .map(|out| {
                        String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").trim().to_owned()
                    })
                    .unwrap_or_default();
                Self { binary: Some((path, version)), figures: Vec::new(), skipped: None }
            }
            Err(reason) => {
                eprintln!("skipping {binary}: {reason}");
                Self { binary: None, figures: Vec::new(), skipped: Some(reason) }
            }
        }
    }

    /// Runs the peer (unless skipped or failed before); a failure is reported,
    /// and the peer is measured no more.
    fn measure(&mut self, tag: &str, run: impl FnOnce(&Path) -> Result<T>, show: impl Fn(&T) -> String) {
        let Some((binary, _)) = self.binary.as_ref().filter(|_| self.skipped.is_none()) else { return };
        let name = binary.file_name().map_or_else(String::new, |name| name.to_string_lossy().into_owned());
        match run(binary) {
            Ok(figure) => {
                eprintln!("{tag} {name}  {}", show(&figure));
                self.figures.push(figure);
            }
            Err(error) => {
                eprintln!("{tag} {name} failed: {error:#}");
                self.skipped = Some(format!("a run failed: {error:#}"));
                self.figures.clear();
            }
        }
    }

    /// The figures, when every repetition measured them.
    fn measured(&self) -> Option<&[T]> {
        (self.skipped.is_none() && !self.figures.is_empty()).then_some(self.figures.as_slice())
    }

    fn version(&self) -> &str {
        self.binary.as_ref().map_or("", |(_, version)| version.as_str())
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn progress(figure: &Figure) -> String {
    let fsyncs = figure.fsyncs.map_or(String::new(), |fsyncs| {
        format!(", {:.1} records/fsync", figure.acked as f64 / fsyncs.max(1) as f64)
    });
    format!(
        "{} rec/s ({} acked), latency p50 {:.1} ms, p99 {:.1} ms{fsyncs}",
        human(figure.rate),
        human(figure.acked as f64),
        figure.p50_us / 1e3,
        figure.p99_us / 1e3
    )
}

fn progress_run(run: &Run) -> String {
    format!(
        "stream x{PRODUCERS}: {}; unary x1: {}; unary x{PRODUCERS}: {}",
        progress(&run.stream),
        progress(&run.unary1),
        progress(&run.unary8)
    )
}

fn median(figures: &[Figure], f: impl Fn(&Figure) -> f64) -> f64 {
    stats(&figures.iter().map(f).collect::<Vec<_>>()).0
}

fn pass(ok: bool) -> &'static str {
    if ok { "pass" } else { "**FAIL**" }
}

/// "0.85× (0.80–0.90)": the ratio of the medians, and the range of the
/// per-repetition ratios (each repetition ran both back to back).
fn ratio_text(ours: &[Figure], base: &[Figure]) -> (f64, String) {
    let ratio = median(ours, |f| f.rate) / median(base, |f| f.rate);
    let paired: Vec<f64> = ours.iter().zip(base).map(|(ours, base)| ours.rate / base.rate).collect();
    let (_, low, high) = stats(&paired);
    let text = if paired.len() > 1 {
        format!("{ratio:.2}× ({low:.2}–{high:.2})")
    } else {
        format!("{ratio:.2}×")
    };
    (ratio, text)
}

impl Results {
    fn print(&self) {
        println!("| target | workload | nodes | rec/s | MB/s | latency p50 / p99 | details |");
        println!("|---|---|---:|---:|---:|---:|---|");
        let rates = |figures: &[Figure]| figures.iter().map(|f| f.rate).collect::<Vec<f64>>();
        println!(
            "| bare `write` + `fdatasync`, {FDATASYNC_BLOCK} B (the disk's limit) | 1 writer | – | {} | – | {:.2} / {:.2} ms | ops/s, not records |",
            spread(&rates(&self.fdatasync)),
            median(&self.fdatasync, |f| f.p50_us) / 1e3,
            median(&self.fdatasync, |f| f.p99_us) / 1e3,
        );
        println!(
            "| null `log.v1` service (stores nothing) | unary x1 | – | {} | – | {:.2} / {:.2} ms | the RPC alone |",
            spread(&rates(&self.null)),
            median(&self.null, |f| f.p50_us) / 1e3,
            median(&self.null, |f| f.p99_us) / 1e3,
        );
        let targets: [(&str, usize, &[Run]); 3] = [
            ("`LocalLog` (not replicated)", 1, &self.local),
            ("one-member `RaftLog`", 1, &self.one_member),
            ("3-node `RaftLog`, to the leader", CLUSTER_NODES, &self.three_nodes),
        ];
        for (name, nodes, runs) in targets {
            for (workload, figures) in workloads(runs) {
                let mut details = format!(
                    "records acked per run (median): {}",
                    human(median(&figures, |f| f.acked as f64))
                );
                if figures.iter().all(|f| f.cores.is_some()) {
                    details.push_str(&format!(
                        "; CPU busy (this process: every node and client): {:.2} cores (median)",
                        median(&figures, |f| f.cores.unwrap_or(0.0))
                    ));
                }
                if figures.iter().all(|f| f.fsyncs.is_some()) {
                    details.push_str(&format!(
                        "; {:.1} records per fsync of the leader's entries (median)",
                        median(&figures, records_per_fsync)
                    ));
                }
                println!(
                    "| {name} | {workload} | {nodes} | {} | {} | {:.2} / {:.2} ms | {details} |",
                    spread(&rates(&figures)),
                    mb_per_s(&rates(&figures), VALUE_BYTES),
                    median(&figures, |f| f.p50_us) / 1e3,
                    median(&figures, |f| f.p99_us) / 1e3,
                );
            }
        }
        let row = |name: &str, workload: &str, figures: &[Figure], details: &str| {
            println!(
                "| {name} | {workload} | 3 | {} | {} | {:.2} / {:.2} ms | {details} |",
                spread(&rates(figures)),
                mb_per_s(&rates(figures), VALUE_BYTES),
                median(figures, |f| f.p50_us) / 1e3,
                median(figures, |f| f.p99_us) / 1e3,
            );
        };
        row(
            "3-node `RaftLog` fsync `never`, to the leader",
            &format!("ProduceStream x{PRODUCERS}"),
            &self.three_never,
            &format!(
                "acknowledged once written on a majority (no fsync); CPU busy (this process): {:.2} cores (median)",
                median(&self.three_never, |f| f.cores.unwrap_or(0.0))
            ),
        );
        let idempotent = |f: fn(&Idempotent) -> Figure| self.idempotent.iter().map(f).collect::<Vec<_>>();
        for (workload, figures) in [
            (format!("ProduceStream x{PRODUCERS}"), idempotent(|i| i.stream)),
            ("unary x1".to_owned(), idempotent(|i| i.unary1)),
        ] {
            println!(
                "| one-member `RaftLog`, idempotent producers | {workload} | 1 | {} | {} | {:.2} / {:.2} ms | each stream (or the unary caller) its own producer; every record carries its sequence |",
                spread(&rates(&figures)),
                mb_per_s(&rates(&figures), VALUE_BYTES),
                median(&figures, |f| f.p50_us) / 1e3,
                median(&figures, |f| f.p99_us) / 1e3,
            );
        }
        let reads = |f: fn(&Reads) -> Figure| self.reads.iter().map(f).collect::<Vec<_>>();
        for (workload, figures, details) in [
            ("Consume x1, local", reads(|r| r.local1), "what the follower has applied"),
            (
                "Consume x1, linearizable",
                reads(|r| r.linearizable1),
                "ReadIndex: a heartbeat round of the leader first",
            ),
            ("Consume x8, local", reads(|r| r.local8), "what the follower has applied"),
            (
                "Consume x8, linearizable",
                reads(|r| r.linearizable8),
                "ReadIndex: a heartbeat round of the leader first",
            ),
        ] {
            row("3-node `RaftLog`, from a follower", workload, &figures, details);
        }
        let skipped = |peer: &str, reason: &Option<String>| {
            println!(
                "| {peer} | – | 3 | skipped | – | – | {} |",
                reason.as_deref().unwrap_or("not measured")
            );
        };
        match self.nats.measured() {
            Some(nats) => row(
                &format!("NATS JetStream R3 ({}), file storage", self.nats.version()),
                &format!("publish x{PRODUCERS}, {WINDOW} in flight each"),
                nats,
                "acknowledged once written on a majority (its default sync: every 2 min)",
            ),
            None => skipped("NATS JetStream R3", &self.nats.skipped),
        }
        match self.etcd.measured() {
            Some(etcd) => {
                let name = format!("etcd, 3 members ({})", self.etcd.version());
                let fsynced = "acknowledged once fdatasynced on a majority";
                row(&name, "put x1", &etcd.iter().map(|(one, _)| *one).collect::<Vec<_>>(), fsynced);
                row(
                    &name,
                    &format!("put x{PRODUCERS}"),
                    &etcd.iter().map(|(_, eight)| *eight).collect::<Vec<_>>(),
                    fsynced,
                );
            }
            None => skipped("etcd, 3 members", &self.etcd.skipped),
        }
        println!();

        println!("| comparison | measured | target | verdict | details |");
        println!("|---|---:|---|---|---|");
        for ((workload, one), (_, local)) in
            workloads(&self.one_member).into_iter().zip(workloads(&self.local))
        {
            let (ratio, text) = ratio_text(&one, &local);
            println!(
                "| one-member / `LocalLog`, {workload} | {text} | ≥ {ONE_MEMBER_VS_LOCAL}× | {} | what Raft costs on one node |",
                pass(ratio >= ONE_MEMBER_VS_LOCAL)
            );
        }
        let stream = |runs: &[Run]| runs.iter().map(|run| run.stream).collect::<Vec<_>>();
        let (three_vs_one, text) = ratio_text(&stream(&self.three_nodes), &stream(&self.one_member));
        println!(
            "| 3-node / one-member, {} | {text} | ≥ {THREE_NODES_VS_ONE_MEMBER}× | {} | what replication to two followers costs |",
            workloads(&self.one_member)[0].0,
            pass(three_vs_one >= THREE_NODES_VS_ONE_MEMBER)
        );
        let unary1: Vec<Figure> = self.one_member.iter().map(|run| run.unary1).collect();
        let p50 = median(&unary1, |f| f.p50_us) / median(&self.fdatasync, |f| f.p50_us);
        println!(
            "| one-member unary x1 p50 / bare fdatasync p50 | {p50:.2}× | ≤ {UNARY_P50_VS_FDATASYNC}× | {} | {:.2} ms vs {:.2} ms |",
            pass(p50 <= UNARY_P50_VS_FDATASYNC),
            median(&unary1, |f| f.p50_us) / 1e3,
            median(&self.fdatasync, |f| f.p50_us) / 1e3,
        );
        let floor = median(&self.null, |f| f.p50_us) + median(&self.fdatasync, |f| f.p50_us);
        println!(
            "| one-member unary x1 p50 / (null RPC p50 + bare fdatasync p50) | {:.2}× | – | – | what is left above the RPC and the one fdatasync: {:.2} ms |",
            median(&unary1, |f| f.p50_us) / floor,
            (median(&unary1, |f| f.p50_us) - floor) / 1e3,
        );
        let (rate, text) = ratio_text(&unary1, &self.fdatasync);
        println!(
            "| one-member unary x1 rec/s / bare fdatasync ops/s | {text} | ≥ {UNARY_RATE_VS_FDATASYNC}× | {} | one producer against the disk's limit |",
            pass(rate >= UNARY_RATE_VS_FDATASYNC)
        );
        let unary8: Vec<Figure> = self.one_member.iter().map(|run| run.unary8).collect();
        let per_fsync = median(&unary8, records_per_fsync);
        println!(
            "| one-member unary x{PRODUCERS}: records per fsync | {per_fsync:.1} | ≥ {RECORDS_PER_FSYNC_UNARY8} | {} | group commit across producers |",
            pass(per_fsync >= RECORDS_PER_FSYNC_UNARY8)
        );
        if let Some(nats) = self.nats.measured() {
            let (ratio, text) = ratio_text(&self.three_never, nats);
            let (_, always) = ratio_text(&stream(&self.three_nodes), nats);
            println!(
                "| 3-node fsync `never` / NATS JetStream R3, streams | {text} | ≥ {THREE_NODES_VS_NATS}× | {} | like durability (page cache on a majority); fsync `always`: {always} |",
                pass(ratio >= THREE_NODES_VS_NATS)
            );
        }
        if let Some(etcd) = self.etcd.measured() {
            let puts = |f: fn(&(Figure, Figure)) -> Figure| etcd.iter().map(f).collect::<Vec<_>>();
            let three = |f: fn(&Run) -> Figure| self.three_nodes.iter().map(f).collect::<Vec<_>>();
            for (workload, ours, theirs) in [
                ("unary x1 / put x1", three(|run| run.unary1), puts(|(one, _)| *one)),
                ("unary x8 / put x8", three(|run| run.unary8), puts(|(_, eight)| *eight)),
            ] {
                let (ratio, text) = ratio_text(&ours, &theirs);
                println!(
                    "| 3-node / etcd 3 members, {workload} | {text} | ≥ {THREE_NODES_VS_ETCD}× | {} | both fdatasync before acknowledging |",
                    pass(ratio >= THREE_NODES_VS_ETCD)
                );
            }
        }
        let plain = |f: fn(&Run) -> Figure| self.one_member.iter().map(f).collect::<Vec<_>>();
        for (workload, ours, base) in [
            (format!("ProduceStream x{PRODUCERS}"), idempotent(|i| i.stream), plain(|r| r.stream)),
            ("unary x1".to_owned(), idempotent(|i| i.unary1), plain(|r| r.unary1)),
        ] {
            let (ratio, text) = ratio_text(&ours, &base);
            println!(
                "| one-member idempotent / plain, {workload} | {text} | ≥ {IDEMPOTENT_VS_PLAIN}× | {} | what exactly-once produce costs |",
                pass(ratio >= IDEMPOTENT_VS_PLAIN)
            );
        }
        for (readers, linearizable, local) in [
            (1, reads(|r| r.linearizable1), reads(|r| r.local1)),
            (PRODUCERS, reads(|r| r.linearizable8), reads(|r| r.local8)),
        ] {
            let (_, text) = ratio_text(&linearizable, &local);
            println!(
                "| follower Consume x{readers}: linearizable / local | {text} | – | – | p50 {:.2} ms vs {:.2} ms |",
                median(&linearizable, |f| f.p50_us) / 1e3,
                median(&local, |f| f.p50_us) / 1e3,
            );
        }
        let acked: Vec<f64> = self.failovers.iter().map(|f| ms(f.acked)).collect();
        let elected: Vec<f64> = self.failovers.iter().map(|f| ms(f.elected)).collect();
        let probes: Vec<f64> = self.failovers.iter().map(|f| f.probes as f64).collect();
        let each: Vec<String> = self.failovers.iter().map(|f| format!("{:.0}", ms(f.acked))).collect();
        println!(
            "| failover: leader killed → first Produce acknowledged by a survivor | {} | < {} s | {} | per repetition: {} ms; a survivor led a newer term after {} ms (median); probes per failover (median): {:.0} |",
            ms_spread(&acked),
            FAILOVER_LIMIT.as_secs(),
            pass(self.failovers.iter().all(|f| f.acked < FAILOVER_LIMIT)),
            each.join(", "),
            stats(&elected).0.round(),
            stats(&probes).0,
        );
        println!();
        println!("The failover verdict requires every repetition under the limit.");
    }
}

/// A target's figures per workload, in table order.
fn workloads(runs: &[Run]) -> [(String, Vec<Figure>); 3] {
    let of = |f: fn(&Run) -> Figure| runs.iter().map(f).collect::<Vec<_>>();
    [
        (format!("ProduceStream x{PRODUCERS}"), of(|run| run.stream)),
        ("unary x1".to_owned(), of(|run| run.unary1)),
        (format!("unary x{PRODUCERS}"), of(|run| run.unary8)),
    ]
}

fn records_per_fsync(figure: &Figure) -> f64 {
    figure.acked as f64 / figure.fsyncs.unwrap_or(1).max(1) as f64
}

/// Milliseconds as "1234 ms [1100..1800]".
fn ms_spread(values: &[f64]) -> String {
    let (median, low, high) = stats(values);
    if values.len() > 1 { format!("{median:.0} ms [{low:.0}..{high:.0}]") } else { format!("{median:.0} ms") }
}
