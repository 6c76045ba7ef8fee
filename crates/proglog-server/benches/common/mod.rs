//! Helpers shared by `proglog-server`'s benchmarks (`server`, `cluster`, `logs`): the
//! command line and environment, runtimes, the value pool, the ProduceStream
//! client, and a `LocalLog` served as the agent serves it. Generic helpers
//! (medians, rates, temp dirs) come from `proglog-log`'s bench support, included
//! here by path.

#![allow(dead_code)] // each bench uses its own subset

pub mod null;
pub mod peers;
#[path = "../../../proglog-log/benches/support/mod.rs"]
pub mod support;

use std::collections::VecDeque;
use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use proglog_api::v1::log_client::LogClient;
use proglog_api::v1::{InitProducerRequest, ProduceRequest, Record};
use proglog_raft::{CommitLog, Fsync, LocalLog};
use proglog_server::{AllowAll, ServerConfig};
use tempfile::TempDir;
use tokio::runtime::Runtime;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

pub use self::support::Invocation;
use self::support::XorShift;

/// Counts a node's fsyncs of its Raft entries: each is one observation of its
/// fsync histogram.
#[derive(Default)]
pub struct FsyncCount(pub std::sync::atomic::AtomicU64);

impl metrics::HistogramFn for FsyncCount {
    fn record(&self, _seconds: f64) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// User and system CPU time of this process so far.
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given; zeroed is a valid rusage.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Requests each ProduceStream producer keeps in flight, at most.
pub const WINDOW: usize = 256;
/// Distinct values cycled through by the producers (and the null ConsumeStream).
pub const POOL: usize = 256;
pub const MAX_RECORD_BYTES: u64 = 1 << 20;

/// The variable `name` parsed, `None` when unset.
pub fn env_parse<T: std::str::FromStr>(name: &str) -> Result<Option<T>>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    match std::env::var(name) {
        Ok(v) => Ok(Some(v.trim().parse().with_context(|| format!("{name}={v:?}"))?)),
        Err(_) => Ok(None),
    }
}

/// `PROGLOG_BENCH_DIR` (default the system temp dir), created if missing.
pub fn base_dir_from_env() -> Result<PathBuf> {
    let base_dir = match std::env::var_os("PROGLOG_BENCH_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::temp_dir(),
    };
    fs::create_dir_all(&base_dir).with_context(|| format!("creating {}", base_dir.display()))?;
    Ok(base_dir)
}

/// Worker threads of the server and client runtimes:
/// `PROGLOG_BENCH_SERVER_THREADS` and `PROGLOG_BENCH_CLIENT_THREADS` (default 2 each).
pub fn runtime_threads_from_env() -> Result<(usize, usize)> {
    let server: usize = env_parse("PROGLOG_BENCH_SERVER_THREADS")?.unwrap_or(2).max(1);
    let client: usize = env_parse("PROGLOG_BENCH_CLIENT_THREADS")?.unwrap_or(2).max(1);
    Ok((server, client))
}

/// "2 CPUs (model), Linux release" for the table's header.
/// The report's heading, and the warning a smoke run's figures deserve.
pub fn print_title(title: &str, mode: &str) {
    println!("## {title} ({mode} mode)");
    println!();
    if mode.starts_with("smoke") {
        println!("Smoke run only (possibly a debug build): the figures mean nothing.");
        println!();
    }
}

pub fn machine() -> String {
    format!(
        "{} CPUs ({}), Linux {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model().unwrap_or_else(|| "unknown CPU".to_string()),
        fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "?".into(), |s| s.trim().to_string()),
    )
}

fn cpu_model() -> Option<String> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = cpuinfo.lines().find(|line| line.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

pub fn runtime(name: &str, threads: usize) -> Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .with_context(|| format!("building the {name} runtime"))
}

// ---------------------------------------------------------------- values

pub fn value_pool(size: usize) -> Arc<Vec<Bytes>> {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ size as u64);
    Arc::new((0..POOL).map(|_| (0..size).map(|_| rng.next() as u8).collect::<Vec<u8>>().into()).collect())
}

pub fn produce_request(pool: &[Bytes], i: usize) -> ProduceRequest {
    ProduceRequest {
        record: Some(Record { value: pool[i % pool.len()].clone(), ..Default::default() }),
        ..Default::default()
    }
}

/// Sorts `nanos` and returns (p50, p99) in microseconds.
pub fn percentiles_us(nanos: &mut [u64]) -> (f64, f64) {
    if nanos.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    nanos.sort_unstable();
    let at = |q: f64| nanos[((nanos.len() - 1) as f64 * q).round() as usize] as f64 / 1e3;
    (at(0.50), at(0.99))
}

// ---------------------------------------------------------------- servers

/// A listener on 127.0.0.1:0, registered with `rt`.
pub fn listen(rt: &Runtime) -> Result<tokio::net::TcpListener> {
    let _runtime = rt.enter();
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    Ok(socket.listen(1024)?)
}

/// A server running on the server runtime.
pub struct Running {
    pub addr: SocketAddr,
    pub stop: oneshot::Sender<()>,
    pub task: JoinHandle<Result<()>>,
    /// proglog only: the log (closed and checked on stop) and its directory.
    pub log: Option<(Arc<LocalLog>, TempDir)>,
}

/// `serve` over a `LocalLog` with `fsync` in `dir`, as the agent starts it: on a
/// bound listener, `AllowAll`, max-record-bytes 1 MiB, the default limits.
pub fn start_local(dir: TempDir, rt: &Runtime, fsync: Fsync) -> Result<Running> {
    let log = proglog_log::Log::open(dir.path(), proglog_log::Config::default())?;
    let listener = listen(rt)?;
    let addr = listener.local_addr()?;
    let log = Arc::new(LocalLog::new(log, fsync, "bench", addr.to_string())?);
    let (stop, stopped) = oneshot::channel::<()>();
    let config = ServerConfig { max_record_bytes: MAX_RECORD_BYTES, ..ServerConfig::default() };
    let serving = proglog_server::serve(listener, log.clone(), Arc::new(AllowAll), config, async {
        let _ = stopped.await;
    });
    let task = rt.spawn(async move { serving.await.context("proglog server") });
    Ok(Running { addr, stop, task, log: Some((log, dir)) })
}

impl Running {
    /// Stops the server; for proglog, closes the log and checks it holds exactly
    /// the `acked` records.
    pub fn stop(self, rt: &Runtime, acked: u64) -> Result<()> {
        let _ = self.stop.send(());
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), self.task).await })
            .context("the server did not stop within 30 s")???;
        if let Some((log, dir)) = self.log {
            let held = log.status().highest_offset.map_or(0, |highest| highest + 1);
            log.close()?;
            ensure!(held == acked, "the log holds {held} records, {acked} were acknowledged");
            dir.close()?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- clients

pub async fn connect(addr: SocketAddr) -> Result<LogClient<Channel>> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))?.connect().await?;
    Ok(LogClient::new(channel))
}

/// `producers` channels, each issuing sequential Produce calls until `duration`
/// has passed.
pub async fn unary(
    addr: SocketAddr,
    producers: usize,
    pool: Arc<Vec<Bytes>>,
    duration: Duration,
) -> Result<Produced> {
    let mut clients = Vec::with_capacity(producers);
    for _ in 0..producers {
        clients.push(connect(addr).await?);
    }
    calls(clients, duration, move |mut client, i| {
        let request = produce_request(&pool, i);
        async move {
            client.produce(request).await?;
            Ok(client)
        }
    })
    .await
}

/// One task per client, each making one call at a time (`call(client, i)`,
/// which hands the client back; `i` numbers the calls of all clients apart)
/// until `duration` has passed; the latency of every call.
pub async fn calls<C, F, Fut>(clients: Vec<C>, duration: Duration, call: F) -> Result<Produced>
where
    C: Send + 'static,
    F: Fn(C, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<C>> + Send,
{
    let producers = clients.len();
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<JoinHandle<Result<Vec<u64>>>> = clients
        .into_iter()
        .enumerate()
        .map(|(producer, mut client)| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(1 << 16);
                let mut i = producer;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    client = call(client, i).await?;
                    latencies.push(t.elapsed().as_nanos() as u64);
                    i += producers;
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = start.elapsed();
    Ok(Produced { acked: latencies.len() as u64, elapsed, latencies })
}

/// The disk's own limit for one writer: appends of `block` bytes to a file in
/// `dir`, each followed by `fdatasync`, until `duration` has passed (what
/// `fsync always` costs at least, per acknowledgement of one producer).
pub fn fdatasync_loop(dir: &std::path::Path, block: usize, duration: Duration) -> Result<Produced> {
    use std::io::Write as _;
    let path = dir.join("fdatasync-reference");
    let mut file = fs::OpenOptions::new().create(true).truncate(true).write(true).open(&path)?;
    let data = vec![0x5a_u8; block];
    let start = Instant::now();
    let mut latencies = Vec::with_capacity(1 << 14);
    while start.elapsed() < duration {
        let t = Instant::now();
        file.write_all(&data)?;
        file.sync_data()?;
        latencies.push(t.elapsed().as_nanos() as u64);
    }
    let elapsed = start.elapsed();
    drop(file);
    fs::remove_file(&path)?;
    Ok(Produced { acked: latencies.len() as u64, elapsed, latencies })
}

/// Where one producer of a [`produce_stream`] sends: a server, and the log
/// (SPEC §11; empty: the default log).
#[derive(Clone, Debug)]
pub struct Destination {
    pub addr: SocketAddr,
    pub log: String,
}

impl Destination {
    /// `producers` producers, all to the default log at `addr`.
    pub fn default_log(addr: SocketAddr, producers: usize) -> Vec<Self> {
        vec![Self { addr, log: String::new() }; producers]
    }

    /// A call naming this target's log in its metadata.
    fn on_log<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Ok(log) = self.log.parse() {
            request.metadata_mut().insert(proglog_server::LOG_METADATA, log);
        }
        request
    }
}

/// What a [`produce_stream`] or [`unary`] run did.
pub struct Produced {
    /// Records acknowledged, over all producers.
    pub acked: u64,
    /// From the start until the last response.
    pub elapsed: Duration,
    /// Per acknowledged record, nanoseconds from handing its request to the stream
    /// (or the call) to receiving its response (streams: only when asked for;
    /// unordered).
    pub latencies: Vec<u64>,
}

/// One ProduceStream per destination, each over its own channel, together producing
/// `total` records (or fewer, if `cap` passes first: then they stop sending and
/// drain), each keeping at most `WINDOW` requests unanswered. Checks every
/// producer gets one response per request, with increasing offsets. With
/// `latencies`, each producer keeps a FIFO of its requests' send instants
/// (responses on a stream come back in request order) and times every record.
pub async fn produce_stream(
    destinations: Vec<Destination>,
    pool: Arc<Vec<Bytes>>,
    total: u64,
    cap: Duration,
    latencies: bool,
    idempotent: bool,
) -> Result<Produced> {
    let producers = destinations.len();
    let mut clients = Vec::with_capacity(producers);
    for destination in destinations {
        let mut client = connect(destination.addr).await?;
        // Each stream its own idempotent producer (SPEC §11), if asked: every
        // request carries it and the record's sequence.
        let producer_id = match idempotent {
            true => {
                client
                    .init_producer(destination.on_log(InitProducerRequest {}))
                    .await?
                    .into_inner()
                    .producer_id
            }
            false => 0,
        };
        clients.push((client, producer_id, destination));
    }
    let start = Instant::now();
    let deadline = start + cap;
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(producer, (mut client, producer_id, destination))| {
            let pool = Arc::clone(&pool);
            let count = total / producers as u64 + u64::from((producer as u64) < total % producers as u64);
            tokio::spawn(async move {
                let window = Arc::new(Semaphore::new(WINDOW));
                // Send instants of the requests not answered yet: at most WINDOW, as
                // an instant is pushed under a window permit and popped before the
                // permit is given back. The lock is never held across an await.
                let sent_at: Option<Arc<Mutex<VecDeque<Instant>>>> =
                    latencies.then(|| Arc::new(Mutex::new(VecDeque::with_capacity(WINDOW))));
                let (tx, rx) = mpsc::channel(WINDOW);
                let sender_window = Arc::clone(&window);
                let sender_sent_at = sent_at.clone();
                let sender = tokio::spawn(async move {
                    let mut sent = 0u64;
                    for i in 0..count as usize {
                        sender_window.acquire().await?.forget();
                        if Instant::now() >= deadline {
                            break;
                        }
                        if let Some(sent_at) = &sender_sent_at {
                            let mut sent_at = sent_at.lock().unwrap_or_else(|e| e.into_inner());
                            assert!(sent_at.len() < WINDOW, "more requests in flight than the window");
                            sent_at.push_back(Instant::now());
                        }
                        let request = ProduceRequest {
                            producer_id,
                            sequence: i as u64,
                            ..produce_request(&pool, producer + i * producers)
                        };
                        if tx.send(request).await.is_err() {
                            break; // the call failed: the reader reports why
                        }
                        sent += 1;
                    }
                    anyhow::Ok(sent)
                });
                let mut responses =
                    client.produce_stream(destination.on_log(ReceiverStream::new(rx))).await?.into_inner();
                let (mut got, mut last) = (0u64, None);
                let mut nanos = Vec::with_capacity(if latencies { count as usize } else { 0 });
                while let Some(response) = responses.message().await? {
                    if let Some(sent_at) = &sent_at {
                        let sent = sent_at.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                        nanos.push(sent.context("a response to no request")?.elapsed().as_nanos() as u64);
                    }
                    window.add_permits(1);
                    ensure!(last.is_none_or(|last| response.offset > last), "offsets out of order");
                    last = Some(response.offset);
                    got += 1;
                }
                let sent = sender.await??;
                ensure!(got == sent, "producer {producer}: {got} responses to {sent} requests");
                anyhow::Ok((got, nanos))
            })
        })
        .collect();
    let mut produced = Produced { acked: 0, elapsed: Duration::ZERO, latencies: Vec::new() };
    for task in tasks {
        let (acked, nanos) = task.await??;
        produced.acked += acked;
        produced.latencies.extend(nanos);
    }
    produced.elapsed = start.elapsed();
    Ok(produced)
}
