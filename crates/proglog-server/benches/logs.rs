//! Named logs (SPEC §11, issue #19): what 1, 10 and 100 named logs cost a
//! three-node cluster — one Raft group each — and what they serve, in the same
//! run.
//!
//! ```text
//! cargo bench -p proglog-server --bench logs              # 1, 10 and 100 logs (cargo xtask bench logs)
//! cargo bench -p proglog-server --bench logs -- --quick   # the same, 10x fewer records
//! ```
//!
//! Environment: `PROGLOG_BENCH_RECORDS` (records per throughput run, default
//! 100000 full / a tenth quick), `PROGLOG_BENCH_DIR` (where the data dirs go; not
//! tmpfs). Run without `--bench` (as `cargo test --all-targets` does) it only
//! does a smoke run (1 and 3 logs, a few hundred records).
//!
//! **Setup.** Three nodes in this process, each assembled as the agent assembles
//! it: a `PeerTransport` (plaintext), the default log's `RaftLog` (fsync
//! `always`, default Raft timings) hosted by `Logs`, served by `serve_logs` on
//! `127.0.0.1:0` with the internal Raft service; node-0 bootstrapped, the others
//! joined through it. Then N named logs are created through node-0 (each a Raft
//! group of the three nodes) and every one has elected its leader. Servers run
//! on a two-worker runtime, clients on another.
//!
//! **Measured**, for N = 1, 10, 100 on fresh data dirs:
//! - at rest, over 3 s: the process's threads and resident memory (against the
//!   cluster before the logs were created), fsyncs per second, CPU cores busy;
//! - load: 8 producers, producer *i* a ProduceStream to log *i* mod N at that
//!   log's leader, up to 256 requests in flight each, 1 KiB values: records/s
//!   over all logs and per-record p50/p99;
//! - failover: the node leading the most logs is killed (its transport shut
//!   down, its server aborted, its logs closed); the time until every log has a
//!   leader again among the survivors, and until a produce to each succeeds.

mod common;
use common::support::{human, rate};
use common::{
    Destination, FsyncCount, Invocation, MAX_RECORD_BYTES, base_dir_from_env, connect, cpu_seconds,
    env_parse, listen, percentiles_us, produce_request, produce_stream, runtime, value_pool,
};

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use proglog_raft::{CommitLog, Fsync, Logs, Member, RaftConfig, RaftLog, RaftMetrics};
use proglog_server::{AllowAll, PeerTls, PeerTransport, ServerConfig, ServerError};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const PRODUCERS: usize = 8;
const VALUE_BYTES: usize = 1024;
const NODES: usize = 3;
const DEADLINE: Duration = Duration::from_secs(60);

struct Node {
    addr: SocketAddr,
    transport: PeerTransport,
    logs: Arc<Logs>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ServerError>>,
    /// Every group's fsyncs: the named logs' groups share the default log's metrics.
    fsyncs: Arc<FsyncCount>,
}

impl Node {
    fn start(rt: &Runtime, name: &str, dir: &Path, bootstrap: bool) -> Result<Self> {
        let listener = listen(rt)?;
        let addr = listener.local_addr()?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let transport = PeerTransport::new(PeerTls::Plaintext, rt.handle().clone(), logger.clone());
        let fsyncs = Arc::new(FsyncCount::default());
        let metrics = RaftMetrics {
            fsync_seconds: metrics::Histogram::from_arc(fsyncs.clone()),
            ..RaftMetrics::default()
        };
        let mut config = RaftConfig {
            bootstrap,
            logger,
            metrics,
            ..RaftConfig::new(Member::new(name, addr.to_string()), dir)
        };
        config.settings.fsync = Fsync::Always;
        let records = proglog_log::Log::open(dir.join("log"), config.settings.record_log_config())?;
        let network = Arc::new(transport.clone());
        let log = Arc::new(RaftLog::open(config.clone(), records, Arc::new(transport.clone()))?);
        transport.bind(&log);
        let logs = Logs::open(log, config, network)?;
        let _runtime = rt.enter();
        logs.start();
        let (stop, stopped) = oneshot::channel::<()>();
        let server_config = ServerConfig {
            max_record_bytes: MAX_RECORD_BYTES,
            extra_services: vec![transport.service()],
            ..ServerConfig::default()
        };
        let task = rt.spawn(proglog_server::serve_logs(
            listener,
            logs.clone(),
            Arc::new(AllowAll),
            server_config,
            async {
                let _ = stopped.await;
            },
        ));
        Ok(Self { addr, transport, logs, stop, task, fsyncs })
    }

    fn close(logs: &Logs) -> Result<()> {
        logs.close()?;
        Ok(logs.default_log().close()?)
    }

    fn stop(self, rt: &Runtime) -> Result<()> {
        self.transport.shutdown();
        let _ = self.stop.send(());
        rt.block_on(async { tokio::time::timeout(DEADLINE, self.task).await })
            .context("the server did not stop in time")???;
        Self::close(&self.logs)
    }

    /// Kills the node as its process dying would.
    fn kill(self, rt: &Runtime) -> Result<()> {
        self.transport.shutdown();
        self.task.abort();
        let _ = rt.block_on(self.task);
        Self::close(&self.logs)
    }

    /// The named logs this node leads.
    fn leads(&self) -> usize {
        self.logs.all().iter().skip(1).filter(|(_, log)| log.status().is_leader).count()
    }
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        ensure!(Instant::now() < deadline, "not within {DEADLINE:?}: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// `(threads, resident bytes)` of this process.
fn process() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("Threads:"), field("VmRSS:") * 1024)
}

fn name(i: usize) -> String {
    format!("log-{i}")
}

struct Figures {
    logs: usize,
    threads_per_log: f64,
    rss_per_log: f64,
    rest_fsyncs_per_s: f64,
    rest_cores: f64,
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    load_fsyncs_per_s: f64,
    failover_leaders_ms: f64,
    failover_produce_ms: f64,
}

struct Bench {
    server_rt: Runtime,
    client_rt: Runtime,
    records: u64,
    /// How long the cluster is watched at rest.
    at_rest: Duration,
    base: std::path::PathBuf,
}

impl Bench {
    fn fsyncs(nodes: &[Node]) -> u64 {
        nodes.iter().map(|node| node.fsyncs.0.load(Ordering::Relaxed)).sum()
    }

    /// The address of the node leading log `log` (empty: the default log).
    fn leader(nodes: &[Node], log: &str) -> Option<SocketAddr> {
        nodes.iter().find(|node| node.logs.get(log).is_ok_and(|l| l.status().is_leader)).map(|node| node.addr)
    }

    fn run(&self, count: usize) -> Result<Figures> {
        let dir = common::support::tempdir_in(&self.base, "proglog-logs-bench-")?;
        let mut nodes = vec![Node::start(&self.server_rt, "node-0", &dir.path().join("node-0"), true)?];
        wait_until("node-0 leads", || nodes[0].logs.default_log().status().is_leader)?;
        for i in 1..NODES {
            let name = format!("node-{i}");
            let node = Node::start(&self.server_rt, &name, &dir.path().join(&name), false)?;
            let member = node.logs.default_log().member().clone();
            self.server_rt.block_on(nodes[0].logs.default_log().join(member))?;
            wait_until(&format!("{name} votes"), || nodes[0].logs.default_log().status().voters == i + 1)?;
            nodes.push(node);
        }
        let (threads, rss) = process();
        for i in 0..count {
            self.server_rt.block_on(nodes[0].logs.create(&name(i), 0, 0))?;
        }
        for i in 0..count {
            wait_until(&format!("{} has a leader and {NODES} voters", name(i)), || {
                Self::leader(&nodes, &name(i)).is_some()
                    && nodes
                        .iter()
                        .all(|node| node.logs.get(&name(i)).is_ok_and(|l| l.status().voters == NODES))
            })?;
        }
        // At rest.
        let (fsyncs, cpu, started) = (Self::fsyncs(&nodes), cpu_seconds(), Instant::now());
        std::thread::sleep(self.at_rest);
        let elapsed = started.elapsed().as_secs_f64();
        let rest_fsyncs_per_s = (Self::fsyncs(&nodes) - fsyncs) as f64 / elapsed;
        let rest_cores = (cpu_seconds() - cpu) / elapsed;
        let (threads_now, rss_now) = process();
        // Load: producer i to log i mod N, at its leader.
        let destinations = (0..PRODUCERS)
            .map(|i| {
                let log = name(i % count);
                let addr = Self::leader(&nodes, &log).context("a log without a leader")?;
                Ok(Destination { addr, log })
            })
            .collect::<Result<Vec<_>>>()?;
        let fsyncs = Self::fsyncs(&nodes);
        let mut run = self.client_rt.block_on(produce_stream(
            destinations,
            value_pool(VALUE_BYTES),
            self.records,
            DEADLINE,
            true,
            false,
        ))?;
        let load_fsyncs_per_s = (Self::fsyncs(&nodes) - fsyncs) as f64 / run.elapsed.as_secs_f64();
        let (p50_us, p99_us) = percentiles_us(&mut run.latencies);
        // Failover: the node leading the most logs goes.
        let victim = (0..nodes.len()).max_by_key(|i| nodes[*i].leads()).context("no nodes")?;
        let victim = nodes.remove(victim);
        let killed = Instant::now();
        victim.kill(&self.server_rt)?;
        wait_until("every log has a leader again", || {
            (0..count).all(|i| Self::leader(&nodes, &name(i)).is_some())
        })?;
        let failover_leaders_ms = killed.elapsed().as_secs_f64() * 1e3;
        let pool = value_pool(VALUE_BYTES);
        for i in 0..count {
            let log = name(i);
            let produced = self.client_rt.block_on(async {
                let deadline = Instant::now() + DEADLINE;
                loop {
                    let addr = Self::leader(&nodes, &log).context("no leader")?;
                    let mut client = connect(addr).await?;
                    let mut request = tonic::Request::new(produce_request(&pool, i));
                    request.metadata_mut().insert(proglog_server::LOG_METADATA, log.parse()?);
                    match client.produce(request).await {
                        Ok(_) => return anyhow::Ok(()),
                        Err(_) if Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(10)).await
                        }
                        Err(status) => return Err(status.into()),
                    }
                }
            });
            produced?;
        }
        let failover_produce_ms = killed.elapsed().as_secs_f64() * 1e3;
        for node in nodes {
            node.stop(&self.server_rt)?;
        }
        dir.close()?;
        Ok(Figures {
            logs: count,
            threads_per_log: threads_now.saturating_sub(threads) as f64 / count as f64,
            rss_per_log: rss_now.saturating_sub(rss) as f64 / count as f64,
            rest_fsyncs_per_s,
            rest_cores,
            rate: rate(run.acked, run.elapsed),
            p50_ms: p50_us / 1e3,
            p99_ms: p99_us / 1e3,
            load_fsyncs_per_s,
            failover_leaders_ms,
            failover_produce_ms,
        })
    }
}

fn main() -> Result<()> {
    let Invocation { bench, quick } = Invocation::from_args();
    let records: u64 = env_parse("PROGLOG_BENCH_RECORDS")?.unwrap_or(100_000);
    let (mode, counts, records, at_rest): (&str, &[usize], u64, f64) = match (bench, quick) {
        (false, _) => ("smoke (no --bench)", &[1, 3], 400, 0.3),
        (true, true) => ("quick", &[1, 10, 100], records / 10, 3.0),
        (true, false) => ("full", &[1, 10, 100], records, 3.0),
    };
    let bench = Bench {
        server_rt: runtime("bench-server", 2)?,
        client_rt: runtime("bench-client", 2)?,
        records: records.max(PRODUCERS as u64),
        at_rest: Duration::from_secs_f64(at_rest),
        base: base_dir_from_env()?,
    };
    common::print_title("proglog named-logs benchmark", mode);
    println!(
        "Three nodes in one process (fsync `always`, default Raft timings), N named logs each a Raft group \
         of the three; {PRODUCERS} ProduceStreams, producer i to log i mod N at its leader, {VALUE_BYTES} B \
         values, {records} records per run. Per log: threads and resident memory the process gained over \
         the cluster before the logs. At rest: over {:.0} s. Failover: the node leading the most logs killed; \
         until every log has a leader, and until a produce to each succeeds.",
        bench.at_rest.as_secs_f64()
    );
    println!();
    println!(
        "| logs | threads/log | memory/log | fsyncs/s at rest | cores at rest | records/s | p50 | p99 | fsyncs/s under load | failover: leaders | failover: a produce to each |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut base_rate = None;
    for &count in counts {
        let figures = bench.run(count)?;
        let ratio = base_rate.map_or(String::new(), |base: f64| format!(" ({:.2}×)", figures.rate / base));
        base_rate.get_or_insert(figures.rate);
        println!(
            "| {} | {:.2} | {} KiB | {:.0} | {:.2} | {}{ratio} | {:.1} ms | {:.1} ms | {:.0} | {:.0} ms | {:.0} ms |",
            figures.logs,
            figures.threads_per_log,
            (figures.rss_per_log / 1024.0).round(),
            figures.rest_fsyncs_per_s,
            figures.rest_cores,
            human(figures.rate),
            figures.p50_ms,
            figures.p99_ms,
            figures.load_fsyncs_per_s,
            figures.failover_leaders_ms,
            figures.failover_produce_ms,
        );
    }
    Ok(())
}
